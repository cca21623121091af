/* web.c - serves the embedded web app: `/` is index.html (never cached
 * without revalidation), `/static/VERSION/PATH` the app's files (cached for
 * a year: a new build has a new VERSION). Every file carries a strong ETag
 * (If-None-Match answers 304) and, for text, a gzip made at build time, so
 * nothing is compressed per request. */
#include <stdio.h>
#include <string.h>

#include <llhttp.h>

#include "http/http.h"
#include "web/web_int.h"

#define CACHE_IMMUTABLE  "public, max-age=31536000, immutable"
#define CACHE_REVALIDATE "no-cache"

const char *web_version(void)
{
    return web_build_version;
}

const web_file *web_find(const char *path)
{
    if (!*path) path = "index.html";
    for (size_t i = 0; i < web_nfiles; i++)
        if (strcmp(web_files[i].path, path) == 0) return &web_files[i];
    return NULL;
}

/* Compares the entity tags of an If-None-Match list, one at a time:
 * [W/]"opaque" separated by commas and optional whitespace. */
bool web_etag_match(const char *inm, const char *etag)
{
    if (!inm) return false;
    size_t el = strlen(etag);
    const char *p = inm;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) return false;
        if (*p == '*') return true;
        if (p[0] == 'W' && p[1] == '/') p += 2;
        if (*p != '"') return false; /* malformed: no match, send the file */
        const char *q = strchr(p + 1, '"');
        if (!q) return false;
        size_t n = (size_t)(q - p) + 1;
        if (n == el && memcmp(p, etag, n) == 0) return true;
        p = q + 1;
    }
}

/* The tag of the gzip representation: "TAG" -> "TAG.gz" (a different
 * representation needs a different strong tag). */
static void gz_etag(const char *etag, char *out, size_t outlen)
{
    size_t n = strlen(etag);
    snprintf(out, outlen, "%.*s.gz\"", (int)(n > 1 ? n - 1 : 0), etag);
}

static http_result serve(http_request *req, http_response *res, const web_file *f,
                         const char *cache)
{
    bool has_gz = f->gz != f->gz_end;
    bool use_gz = has_gz && http_req_accept_q(req, "gzip") > 0;
    char gtag[96];
    gz_etag(f->etag, gtag, sizeof gtag);
    const char *tag = use_gz ? gtag : f->etag;
    const char *inm = http_req_header(req, "if-none-match");
    /* Either representation's tag revalidates: the bytes behind both are
     * the same file. */
    bool fresh = web_etag_match(inm, f->etag) || (has_gz && web_etag_match(inm, gtag));
    thz_err rc = http_res_header(res, "ETag", tag);
    if (!rc) rc = http_res_header(res, "Cache-Control", cache);
    if (!rc) rc = http_res_header(res, "X-Content-Type-Options", "nosniff");
    if (!rc && strcmp(f->path, "index.html") == 0) {
        rc = http_res_header(res, "Content-Security-Policy", web_index_csp);
        if (!rc) rc = http_res_header(res, "Referrer-Policy", "no-referrer");
    }
    /* The server adds Vary itself when it compresses; it does not when we
     * already did (Content-Encoding set) or for a 304. */
    if (!rc && has_gz && (use_gz || fresh)) rc = http_res_header(res, "Vary", "Accept-Encoding");
    if (!rc && fresh) {
        http_res_status(res, 304);
        return HTTP_DONE;
    }
    if (!rc) rc = http_res_header(res, "Content-Type", f->type);
    if (!rc && use_gz) rc = http_res_header(res, "Content-Encoding", "gzip");
    if (!rc) {
        const unsigned char *b = use_gz ? f->gz : f->data, *e = use_gz ? f->gz_end : f->data_end;
        rc = http_res_body(res, b, (size_t)(e - b));
    }
    if (rc) {
        http_res_error(res, 503, "out_of_memory", "cannot build the response");
        return HTTP_DONE;
    }
    http_res_status(res, 200);
    return HTTP_DONE;
}

static http_result get_index(http_request *req, http_response *res, void *ctx)
{
    const web_file *f = web_find("");
    if (!f) {
        http_res_error(res, 404, "not_found", "the web app is not built into this binary");
        return HTTP_DONE;
    }
    return serve(req, res, f, CACHE_REVALIDATE);
}

static http_result get_static(http_request *req, http_response *res, void *ctx)
{
    const char *p = http_req_param(req, "path");
    const char *slash = p ? strchr(p, '/') : NULL;
    const web_file *f = slash ? web_find(slash + 1) : NULL;
    if (!f || strcmp(f->path, "index.html") == 0) {
        http_res_error(res, 404, "not_found", "no such resource");
        return HTTP_DONE;
    }
    /* A page of an older build asking for its files gets today's, which
     * must then not be cached as if they were the old version's. */
    size_t vl = (size_t)(slash - p);
    bool current = vl == strlen(web_build_version) && memcmp(p, web_build_version, vl) == 0;
    return serve(req, res, f, current ? CACHE_IMMUTABLE : CACHE_REVALIDATE);
}

thz_err web_start(void)
{
    thz_err rc = http_route(HTTP_GET, "/", get_index, NULL);
    if (!rc) rc = http_route(HTTP_GET, "/static/{path...}", get_static, NULL);
    return rc;
}
