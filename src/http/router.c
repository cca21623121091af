/* router.c - routes with path parameters, the response builder and the one
 * place where a response becomes bytes (status line, Date, Server,
 * Content-Length, Connection). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http/http_int.h"

#define MAX_ROUTES 128 /* api, ingest, web, prometheus... (64 was nearly full) */
#define MAX_SEGS   16

typedef struct seg {
    const char *s; /* literal text, or the parameter name */
    size_t n;
    enum { SEG_LIT, SEG_PARAM, SEG_REST } kind;
} seg;

typedef struct route {
    int method;
    const char *pattern;
    seg segs[MAX_SEGS];
    int nseg;
    http_handler_fn fn;
    void *ctx;
} route;

static route routes[MAX_ROUTES];
static int nroutes;

void http_routes_reset(void)
{
    nroutes = 0;
}

thz_err http_route(int method, const char *pattern, http_handler_fn fn, void *ctx)
{
    if (nroutes == MAX_ROUTES || pattern[0] != '/') return THZ_EINVAL;
    route *r = &routes[nroutes];
    memset(r, 0, sizeof *r);
    r->method = method;
    r->pattern = pattern;
    r->fn = fn;
    r->ctx = ctx;
    int nparam = 0;
    const char *p = pattern + 1;
    while (*p) {
        if (r->nseg == MAX_SEGS) return THZ_EINVAL;
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        seg *s = &r->segs[r->nseg++];
        s->kind = SEG_LIT;
        s->s = p;
        s->n = n;
        if (n >= 2 && p[0] == '{' && p[n - 1] == '}') {
            if (++nparam > HTTP_MAX_PARAMS) return THZ_EINVAL;
            s->kind = SEG_PARAM;
            s->s = p + 1;
            s->n = n - 2;
            if (s->n > 3 && memcmp(p + n - 4, "...", 3) == 0) {
                if (e) return THZ_EINVAL; /* {rest...} only last */
                s->kind = SEG_REST;
                s->n -= 3;
            }
        }
        if (!e) break;
        p = e + 1;
        if (!*p) return THZ_EINVAL; /* no trailing slash in patterns */
    }
    nroutes++;
    return THZ_OK;
}

/* Matches path against r; on success fills req's parameters (decoded).
 * Returns 1 match, 0 no match, -1 bad percent-encoding in a parameter. */
static int match(const route *r, const char *path, http_request *req)
{
    if (*path != '/') return 0;
    const char *p = path + 1;
    struct {
        const char *s;
        size_t n;
    } vals[HTTP_MAX_PARAMS];
    int nv = 0;
    for (int i = 0; i < r->nseg; i++) {
        const seg *s = &r->segs[i];
        if (s->kind == SEG_REST) {
            if (!*p) return 0; /* the rest must not be empty */
            vals[nv].s = p;
            vals[nv++].n = strlen(p);
            p += strlen(p);
            break;
        }
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (s->kind == SEG_LIT) {
            if (n != s->n || memcmp(p, s->s, n) != 0) return 0;
        } else {
            if (n == 0) return 0;
            vals[nv].s = p;
            vals[nv++].n = n;
        }
        p += n;
        if (i + 1 < r->nseg) {
            if (*p != '/') return 0;
            p++;
        }
    }
    if (*p) return 0;
    if (!req) return 1;
    for (int i = 0, k = 0; i < r->nseg; i++) {
        if (r->segs[i].kind == SEG_LIT) continue;
        char *v = malloc(vals[k].n + 1);
        if (!v) return -1;
        /* the name points into the pattern (see http_req_param) */
        req->pname[req->nparam] = r->segs[i].s;
        req->pval[req->nparam++] = v;
        if (http_pct_decode(vals[k].s, vals[k].n, v, false) < 0) return -1;
        k++;
    }
    return 1;
}

http_result http_dispatch(http_request *req)
{
    http_response *res = &req->res;
    if (http_cors_preflight(req)) return HTTP_DONE; /* any path, before routing */
    const char *path = http_req_path(req);
    int m = req->method == HTTP_HEAD ? HTTP_GET : req->method;
    char allow[128] = "";
    size_t al = 0;
    for (int i = 0; i < nroutes; i++) {
        route *r = &routes[i];
        if (!match(r, path, NULL)) continue;
        if (r->method == m) {
            int rc = match(r, path, req);
            if (rc < 0) {
                http_res_error(res, 400, "bad_path", "the path has an invalid percent-encoding");
                return HTTP_DONE;
            }
            return r->fn(req, res, r->ctx);
        }
        const char *name = llhttp_method_name((llhttp_method_t)r->method);
        if (!strstr(allow, name) && al + strlen(name) + 8 < sizeof allow) {
            al += (size_t)snprintf(allow + al, sizeof allow - al, "%s%s", al ? ", " : "", name);
            if (r->method == HTTP_GET)
                al += (size_t)snprintf(allow + al, sizeof allow - al, ", HEAD");
        }
    }
    if (al) {
        http_res_error(res, 405, "method_not_allowed",
                       "the method is not allowed for this resource");
        http_res_header(res, "Allow", allow);
    } else {
        http_res_error(res, 404, "not_found", "no such resource");
    }
    return HTTP_DONE;
}

/* Parameter names are stored as pointers into the pattern; compare up to the
 * closing brace or "...". */
const char *http_req_param(const http_request *req, const char *name)
{
    size_t nl = strlen(name);
    for (int i = 0; i < req->nparam; i++) {
        const char *pn = req->pname[i];
        if (pn && strncmp(pn, name, nl) == 0 && (pn[nl] == '}' || pn[nl] == '.'))
            return req->pval[i];
    }
    return NULL;
}

/* ---- response builder ---- */

void http_res_status(http_response *res, int status)
{
    res->status = status;
}

thz_err http_res_header(http_response *res, const char *name, const char *value)
{
    /* no header splitting through a value */
    if (strpbrk(name, "\r\n:") || strpbrk(value, "\r\n")) return THZ_EINVAL;
    thz_err rc = thz_buf_append(&res->headers, name, strlen(name));
    if (!rc) rc = thz_buf_append(&res->headers, ": ", 2);
    if (!rc) rc = thz_buf_append(&res->headers, value, strlen(value));
    if (!rc) rc = thz_buf_append(&res->headers, "\r\n", 2);
    return rc;
}

const char *http_res_find_header(const http_response *res, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    const char *p = (const char *)res->headers.p, *end = p + res->headers.len;
    while (p && p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol) break;
        if ((size_t)(eol - p) > nl + 1 && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            if (len) *len = (size_t)(eol - v);
            return v;
        }
        p = eol + 2;
    }
    return NULL;
}

void http_finish_response(http_request *req)
{
    http_gzip_finish(req);
    http_cors_finish(req);
}

thz_err http_res_body(http_response *res, const void *p, size_t n)
{
    return thz_buf_append(&res->body, p, n);
}

thz_err http_res_json(http_response *res, int status, const cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    if (!s) return THZ_ENOMEM;
    res->status = status;
    res->body.len = 0;
    thz_err rc = http_res_header(res, "Content-Type", "application/json");
    if (!rc) rc = thz_buf_append(&res->body, s, strlen(s));
    cJSON_free(s);
    return rc;
}

void http_res_error(http_response *res, int status, const char *code, const char *message)
{
    res->status = status;
    res->headers.len = 0;
    res->body.len = 0;
    cJSON *j = cJSON_CreateObject(), *e = cJSON_CreateObject();
    if (j && e) {
        cJSON_AddItemToObject(j, "error", e);
        cJSON_AddStringToObject(e, "code", code);
        cJSON_AddStringToObject(e, "message", message);
        if (http_res_json(res, status, j) == THZ_OK) {
            cJSON_Delete(j);
            return;
        }
    } else {
        cJSON_Delete(e);
    }
    cJSON_Delete(j);
    /* out of memory: a bodiless status still tells the client */
    res->headers.len = 0;
    res->body.len = 0;
}

/* ---- serialization ---- */

const char *http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

/* The Date header value, formatted once per second per thread. */
static const char *date_now(void)
{
    static __thread char buf[40];
    static __thread time_t at = -1;
    time_t now = time(NULL);
    if (now != at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        at = now;
    }
    return buf;
}

static thz_err serialize(int method, const http_response *res, bool keep_alive, bool http10,
                         thz_buf *out)
{
    int status = res->status >= 100 && res->status <= 999 ? res->status : 500;
    bool no_body = status == 204 || status == 304 || (status >= 100 && status < 200);
    char head[256];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nDate: %s\r\nServer: thinghz\r\n", status,
                     http_status_text(status), date_now());
    thz_err rc = thz_buf_append(out, head, (size_t)n);
    if (rc) return rc;
    if (!no_body) {
        n = snprintf(head, sizeof head, "Content-Length: %zu\r\n", res->body.len);
        if ((rc = thz_buf_append(out, head, (size_t)n))) return rc;
    }
    if (status == 101) {
        if ((rc = thz_buf_append(out, "Connection: Upgrade\r\n", 21))) return rc;
    } else if (!keep_alive) {
        if ((rc = thz_buf_append(out, "Connection: close\r\n", 19))) return rc;
    } else if (http10) {
        if ((rc = thz_buf_append(out, "Connection: keep-alive\r\n", 24))) return rc;
    }
    if (res->headers.len && (rc = thz_buf_append(out, res->headers.p, res->headers.len))) return rc;
    if ((rc = thz_buf_append(out, "\r\n", 2))) return rc;
    if (!no_body && method != HTTP_HEAD && res->body.len)
        rc = thz_buf_append(out, res->body.p, res->body.len);
    return rc;
}

thz_err http_serialize(const http_request *req, bool keep_alive, thz_buf *out)
{
    return serialize(req->method, &req->res, keep_alive, req->major == 1 && req->minor == 0, out);
}

thz_err http_serialize_error(int status, const char *code, const char *message, thz_buf *out)
{
    http_response res = {0};
    http_res_error(&res, status, code, message);
    thz_err rc = serialize(HTTP_GET, &res, false, false, out);
    thz_buf_free(&res.headers);
    thz_buf_free(&res.body);
    return rc;
}

http_response *http_req_response(http_request *req)
{
    return &req->res;
}
