/* cors.c - Cross-Origin Resource Sharing for the origins of the cors-origins
 * setting: answers preflights (OPTIONS with Access-Control-Request-Method)
 * before routing and adds Access-Control-Allow-* to the responses of allowed
 * origins. Also the header-list helpers (comma-separated tokens) that CORS,
 * gzip and the WebSocket handshake share. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http/http_int.h"

#define CORS_MAX_AGE           "600" /* seconds browsers may cache a preflight (Chrome caps at 7200) */
#define CORS_METHODS           "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
#define CORS_HEADERS           "Authorization, Content-Type"
#define CORS_MAX_ALLOW_HEADERS 1024 /* requested header names echoed, in bytes */

/* Set once before the I/O threads start, read-only afterwards. */
static const char *origins = "";

void http_cors_set(const char *list)
{
    origins = list ? list : "";
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

bool http_list_next(const char **pp, const char **item, size_t *n)
{
    const char *p = *pp;
    for (;;) {
        while (is_ows(*p) || *p == ',') p++;
        if (!*p) return false;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *end = e;
        while (end > p && is_ows(end[-1])) end--;
        *pp = e;
        if (end == p) {
            p = e;
            continue;
        }
        *item = p;
        *n = (size_t)(end - p);
        return true;
    }
}

bool http_list_has(const char *list, const char *token)
{
    if (!list) return false;
    size_t tl = strlen(token), n;
    const char *it;
    while (http_list_next(&list, &it, &n))
        if (n == tl && strncasecmp(it, token, n) == 0) return true;
    return false;
}

bool http_req_header_has(const http_request *req, const char *name, const char *token)
{
    for (uint32_t i = 0; i < req->nhdr; i++) {
        if (!req->hoff[i][1]) continue;
        const char *hn = (const char *)req->hdr.p + req->hoff[i][0];
        if (strcasecmp(hn, name) == 0 &&
            http_list_has((const char *)req->hdr.p + req->hoff[i][1], token))
            return true;
    }
    return false;
}

int http_cors_match(const char *list, const char *origin)
{
    if (!list || !list[0] || !origin || !origin[0]) return 0;
    if (strcmp(list, "*") == 0) return 2;
    size_t ol = strlen(origin), n;
    const char *it;
    while (http_list_next(&list, &it, &n))
        if (n == ol && strncasecmp(it, origin, n) == 0) return 1;
    return 0;
}

bool http_cors_enabled(void)
{
    return origins[0] != 0;
}

int http_cors_allowed(const http_request *req)
{
    return http_cors_match(origins, http_req_header(req, "origin"));
}

/* The ACAO (and ACAC) headers for an allowed origin. */
static void allow_origin(http_response *res, const char *origin, int m)
{
    http_res_header(res, "Access-Control-Allow-Origin", m == 2 ? "*" : origin);
    if (m == 1) http_res_header(res, "Access-Control-Allow-Credentials", "true");
}

static bool is_token(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 32 || c >= 127 || strchr("\"(),/:;<=>?@[\\]{}", c)) return false;
    }
    return n > 0;
}

bool http_cors_preflight(http_request *req)
{
    if (!http_cors_enabled() || req->method != HTTP_OPTIONS) return false;
    const char *origin = http_req_header(req, "origin");
    if (!origin || !http_req_header(req, "access-control-request-method")) return false;
    http_response *res = &req->res;
    int m = http_cors_match(origins, origin);
    if (!m) {
        http_res_error(res, 403, "origin_not_allowed",
                       "this origin may not call the API (see cors-origins)");
        return true;
    }
    char allow[sizeof CORS_HEADERS + CORS_MAX_ALLOW_HEADERS] = CORS_HEADERS;
    size_t al = strlen(allow), n;
    const char *list = http_req_header(req, "access-control-request-headers"), *it;
    while (list && http_list_next(&list, &it, &n)) {
        if (!is_token(it, n) || al + n + 3 > sizeof allow) continue;
        if ((n == 13 && strncasecmp(it, "authorization", n) == 0) ||
            (n == 12 && strncasecmp(it, "content-type", n) == 0))
            continue;
        al += (size_t)snprintf(allow + al, sizeof allow - al, ", %.*s", (int)n, it);
    }
    http_res_status(res, 204);
    allow_origin(res, origin, m);
    http_res_header(res, "Access-Control-Allow-Methods", CORS_METHODS);
    http_res_header(res, "Access-Control-Allow-Headers", allow);
    http_res_header(res, "Access-Control-Max-Age", CORS_MAX_AGE);
    return true;
}

void http_cors_finish(http_request *req)
{
    if (!http_cors_enabled() || req->res.status == 101) return;
    http_response *res = &req->res;
    bool wild = strcmp(origins, "*") == 0;
    /* With a list, the answer depends on Origin; with "*" it does not, and
     * every response carries the same header so caches need no Vary. */
    if (!wild) http_res_header(res, "Vary", "Origin");
    if (http_res_find_header(res, "access-control-allow-origin", NULL)) return; /* a preflight */
    const char *origin = http_req_header(req, "origin");
    if (wild) {
        allow_origin(res, origin, 2);
        return;
    }
    int m = http_cors_match(origins, origin);
    if (m) allow_origin(res, origin, m);
}
