/* gzip.c - response compression: Accept-Encoding negotiation (q-values per
 * RFC 9110 section 12.5.3) and gzip of text-like bodies with zlib, applied to
 * every response by the server just before it is serialized. */
#include <string.h>
#include <strings.h>

#include <zlib.h>

#include "http/http_int.h"

#define GZIP_MIN_BYTES 1024 /* smaller bodies gain too little to pay the CPU */
#define GZIP_LEVEL     5    /* most of level 9's ratio at a third of its cost */

/* Parses a qvalue ("0", "0.5", "1.000") into thousandths; -1 if invalid. */
static int parse_q(const char *s, size_t n)
{
    if (n == 0 || (s[0] != '0' && s[0] != '1')) return -1;
    int v = (s[0] - '0') * 1000;
    if (n == 1) return v;
    if (s[1] != '.' || n > 5) return -1;
    int scale = 100;
    for (size_t i = 2; i < n; i++, scale /= 10) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v += (s[i] - '0') * scale;
    }
    return v > 1000 ? -1 : v;
}

int http_accept_q(const char *accept, const char *coding)
{
    if (!accept) return 0;
    int q_coding = -1, q_star = -1;
    size_t cl = strlen(coding), n;
    const char *it;
    while (http_list_next(&accept, &it, &n)) {
        /* it[0..n) = coding *( OWS ";" OWS name "=" value ) */
        const char *semi = memchr(it, ';', n);
        size_t nl = semi ? (size_t)(semi - it) : n, cn = nl;
        while (cn && (it[cn - 1] == ' ' || it[cn - 1] == '\t')) cn--;
        int q = 1000;
        size_t i = nl;
        while (semi && i < n) {
            /* at a ';': one parameter up to the next ';' or the end */
            size_t b = i + 1, e = b;
            while (e < n && it[e] != ';') e++;
            while (b < e && (it[b] == ' ' || it[b] == '\t')) b++;
            size_t v = e;
            while (v > b && (it[v - 1] == ' ' || it[v - 1] == '\t')) v--;
            if (v - b >= 2 && (it[b] == 'q' || it[b] == 'Q') && it[b + 1] == '=') {
                q = parse_q(it + b + 2, v - b - 2);
                if (q < 0) break; /* an invalid weight: the element is ignored */
            }
            i = e;
        }
        if (q < 0) continue;
        if ((cn == cl && strncasecmp(it, coding, cn) == 0) ||
            (strcasecmp(coding, "gzip") == 0 && cn == 6 && strncasecmp(it, "x-gzip", 6) == 0)) {
            if (q > q_coding) q_coding = q;
        } else if (cn == 1 && it[0] == '*') {
            if (q > q_star) q_star = q;
        }
    }
    if (q_coding >= 0) return q_coding;
    return q_star >= 0 ? q_star : 0;
}

int http_req_accept_q(const http_request *req, const char *coding)
{
    return http_accept_q(http_req_header(req, "accept-encoding"), coding);
}

bool http_gzip_type(const char *ctype, size_t n)
{
    size_t m = 0;
    while (m < n && ctype[m] != ';' && ctype[m] != ' ' && ctype[m] != '\t') m++;
    static const char *const types[] = {"application/json", "application/javascript",
                                        "image/svg+xml"};
    if (m > 5 && strncasecmp(ctype, "text/", 5) == 0) return true;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (m == strlen(types[i]) && strncasecmp(ctype, types[i], m) == 0) return true;
    return false;
}

/* One deflate state per thread, reset between responses: deflateInit2
 * allocates about 256 KiB, too much to do per response. Freed by
 * http_gzip_thread_end. */
static __thread z_stream zs;
static __thread bool zs_ready;

void http_gzip_thread_end(void)
{
    if (zs_ready) deflateEnd(&zs);
    zs_ready = false;
}

thz_err http_gzip(const uint8_t *in, size_t n, thz_buf *out)
{
    if (!zs_ready) {
        memset(&zs, 0, sizeof zs);
        /* windowBits 15 + 16: a gzip wrapper (mtime 0, so output is
         * deterministic and HEAD gets GET's Content-Length) */
        if (deflateInit2(&zs, GZIP_LEVEL, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            return THZ_ENOMEM;
        zs_ready = true;
    } else if (deflateReset(&zs) != Z_OK) {
        return THZ_EIO;
    }
    uLong bound = deflateBound(&zs, (uLong)n);
    thz_err rc = thz_buf_reserve(out, bound);
    if (rc) return rc;
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)n;
    zs.next_out = out->p + out->len;
    zs.avail_out = (uInt)bound;
    int z = deflate(&zs, Z_FINISH);
    if (z != Z_STREAM_END) return THZ_EIO;
    out->len += bound - zs.avail_out;
    return THZ_OK;
}

void http_gzip_finish(http_request *req)
{
    http_response *res = &req->res;
    int s = res->status;
    if (s == 204 || s == 304 || s < 200 || res->body.len < GZIP_MIN_BYTES) return;
    if (http_res_find_header(res, "content-encoding", NULL)) return;
    size_t tl;
    const char *ct = http_res_find_header(res, "content-type", &tl);
    if (!ct || !http_gzip_type(ct, tl)) return;
    /* The representation depends on Accept-Encoding whether or not this
     * client gets it compressed. */
    if (http_res_header(res, "Vary", "Accept-Encoding")) return;
    if (http_accept_q(http_req_header(req, "accept-encoding"), "gzip") == 0) return;
    /* HEAD is compressed too, so that its Content-Length and
     * Content-Encoding are exactly what GET sends (the body is dropped). */
    thz_buf z = {0};
    if (http_gzip(res->body.p, res->body.len, &z) != THZ_OK) {
        thz_buf_free(&z); /* sent uncompressed */
        return;
    }
    if (http_res_header(res, "Content-Encoding", "gzip") != THZ_OK) {
        thz_buf_free(&z);
        return;
    }
    thz_buf_free(&res->body);
    res->body = z;
}
