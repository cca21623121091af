/* api.c - the REST API's middleware: bearer-token authentication, roles,
 * request bodies (content type, JSON depth and syntax), the hand-off of slow
 * registry calls to libuv's worker pool, and the one mapping from registry
 * errors to HTTP statuses and error codes. The operations are in routes.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "api/api_int.h"
#include "core/log.h"
#include "metrics/metrics.h"
#include "net/net.h"

static registry *R;

/* ---- errors ---- */

void api_error(http_response *res, thz_err rc, const char *msg)
{
    bool has = msg && *msg;
    switch (rc) {
    case THZ_EINVAL:
        http_res_error(res, 400, "invalid_request", has ? msg : "the request is not valid");
        break;
    case THZ_ENOTFOUND: http_res_error(res, 404, "not_found", has ? msg : "no such object"); break;
    case THZ_EEXIST:
        http_res_error(res, 409, "conflict", has ? msg : "the object already exists");
        break;
    case THZ_EBADAUTH:
        http_res_error(res, 401, "unauthorized",
                       has ? msg : "missing, invalid or expired credentials");
        http_res_header(res, "WWW-Authenticate", "Bearer realm=\"thinghz\"");
        break;
    case THZ_EDENIED:
        http_res_error(res, 403, "forbidden", has ? msg : "your role may not do this");
        break;
    /* A quota is a hard limit (devices per tenant...): retrying later does
     * not help, so it is 403 rather than 429, which is kept for rates. */
    case THZ_EQUOTA:
        http_res_error(res, 403, "quota_exceeded", has ? msg : "a limit was reached");
        break;
    case THZ_ERATE:
        http_res_error(res, 429, "rate_limited", has ? msg : "too many requests");
        break;
    case THZ_ENOMEM:
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
        break;
    case THZ_ENOSPC:
        http_res_error(res, 507, "insufficient_storage",
                       "the server's disk is full; nothing was changed, retry when space returns");
        break;
    default:
        log_error("api", "internal error: %s%s%s", thz_strerror(rc), has ? ": " : "",
                  has ? msg : "");
        http_res_error(res, 500, "internal", "internal error (logged)");
        break;
    }
}

bool api_param_int(const http_request *req, const char *name, int64_t *out)
{
    const char *s = http_req_param(req, name);
    if (!s || *s < '0' || *s > '9' || strlen(s) > 19) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v <= 0) return false;
    *out = v;
    return true;
}

/* ---- request bodies ---- */

/* Only JSON is accepted, leniently: a missing Content-Type, and the
 * x-www-form-urlencoded that `curl -d` sends by default, are taken as JSON
 * (the body must still parse); a clearly different type (text/html,
 * multipart/form-data...) is refused with 415. */
static bool content_type_ok(const char *ct)
{
    if (!ct) return true;
    while (*ct == ' ') ct++;
    size_t n = strcspn(ct, "; \t");
    if (n == 16 && strncasecmp(ct, "application/json", 16) == 0) return true;
    if (n == 33 && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0) return true;
    /* application/merge-patch+json and other +json types */
    return n > 17 && strncasecmp(ct + n - 5, "+json", 5) == 0 &&
           strncasecmp(ct, "application/", 12) == 0;
}

/* The deepest nesting of arrays and objects in s[0..n), strings skipped. */
static int json_depth(const char *s, size_t n)
{
    int d = 0, max = 0;
    bool str = false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                str = false;
        } else if (ch == '"') {
            str = true;
        } else if (ch == '{' || ch == '[') {
            if (++d > max) max = d;
        } else if (ch == '}' || ch == ']') {
            d--;
        }
    }
    return max;
}

/* Parses the request body into c->body, or sets c->estatus and a message. */
static void parse_body(api_call *c)
{
    size_t len;
    const char *b = (const char *)http_req_body(c->req, &len);
    if (len == 0) {
        c->estatus = 400;
        c->ecode = "invalid_json";
        snprintf(c->err, sizeof c->err, "the request needs a JSON object as its body");
        return;
    }
    if (memchr(b, 0, len)) {
        c->estatus = 400;
        c->ecode = "invalid_json";
        snprintf(c->err, sizeof c->err, "the body contains a NUL byte");
        return;
    }
    if (json_depth(b, len) > API_JSON_MAX_DEPTH) {
        c->estatus = 400;
        c->ecode = "invalid_json";
        snprintf(c->err, sizeof c->err, "the body is nested deeper than %d levels",
                 API_JSON_MAX_DEPTH);
        return;
    }
    const char *end = NULL;
    /* len + 1: the server keeps a NUL after the body, and cJSON wants to see
     * it to refuse trailing garbage. */
    cJSON *j = cJSON_ParseWithLengthOpts(b, len + 1, &end, 1);
    if (!j) {
        size_t off = end && end >= b && end <= b + len ? (size_t)(end - b) : 0;
        int line = 1, col = 1;
        for (size_t i = 0; i < off; i++) {
            if (b[i] == '\n')
                line++, col = 1;
            else
                col++;
        }
        c->estatus = 400;
        c->ecode = "invalid_json";
        snprintf(c->err, sizeof c->err,
                 "the body is not valid JSON (error at byte %zu, line %d, column %d)", off, line,
                 col);
        return;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        c->estatus = 400;
        c->ecode = "invalid_json";
        snprintf(c->err, sizeof c->err, "the body must be a JSON object");
        return;
    }
    c->body = j;
}

/* ---- the call: inline or on the worker pool ---- */

static void call_free(api_call *c)
{
    cJSON_Delete(c->body);
    cJSON_Delete(c->out);
    if (c->raw_owned) free(c->raw);
    free(c);
}

/* Runs the operation (and parses the body first when the route has one). */
static void call_run(api_call *c)
{
    size_t blen = 0;
    if ((c->route->flags & API_BODY_OPT) && (http_req_body(c->req, &blen), blen == 0)) {
        /* an optional body left out */
    } else if (c->route->flags & (API_BODY | API_BODY_OPT)) {
        parse_body(c);
        if (c->estatus) return;
    }
    c->route->op(c);
}

/* Writes the outcome of c into res. */
static void call_finish(api_call *c, http_response *res)
{
    if (c->estatus) {
        http_res_error(res, c->estatus, c->ecode, c->err);
        return;
    }
    if (c->rc) {
        api_error(res, c->rc, c->err);
        return;
    }
    if (c->raw) {
        http_res_status(res, c->status);
        if (http_res_header(res, "Content-Type", c->raw_type ? c->raw_type : "application/json") ||
            http_res_body(res, c->raw, c->nraw))
            http_res_error(res, 503, "out_of_memory", "the server is out of memory");
        return;
    }
    if (!c->out) {
        http_res_status(res, c->status ? c->status : 204);
        return;
    }
    if (http_res_json(res, c->status ? c->status : 200, c->out) != THZ_OK)
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
}

static void work_run(uv_work_t *w)
{
    metrics_pool_started();
    call_run(w->data);
}

static void work_done(uv_work_t *w, int status)
{
    api_call *c = w->data;
    http_response *res = http_req_response(c->req);
    metrics_pool_finished();
    if (status != 0)
        http_res_error(res, 503, "unavailable", "the request was cancelled");
    else
        call_finish(c, res);
    http_reply(c->req);
    call_free(c);
}

/* ---- the handler of every route ---- */

static http_result unauthorized(http_response *res, const char *msg, bool bad_token)
{
    http_res_error(res, 401, "unauthorized", msg);
    http_res_header(res, "WWW-Authenticate",
                    bad_token ? "Bearer realm=\"thinghz\", error=\"invalid_token\""
                              : "Bearer realm=\"thinghz\"");
    return HTTP_DONE;
}

static const char *role_name(reg_role r)
{
    return r == REG_ADMIN ? "admin" : r == REG_OPERATOR ? "operator" : "viewer";
}

static http_result api_handle(http_request *req, http_response *res, void *ctx)
{
    const api_route *rt = ctx;
    reg_principal p = {0};
    if (!(rt->flags & API_NOAUTH)) {
        const char *h = http_req_header(req, "authorization");
        if (!h || strncasecmp(h, "Bearer ", 7) != 0)
            return unauthorized(res, "this request needs an 'Authorization: Bearer TOKEN' header",
                                false);
        const char *t = h + 7;
        while (*t == ' ') t++;
        if (!*t || reg_token_check(R, t, &p) != THZ_OK)
            return unauthorized(res, "the token is invalid, expired or revoked", true);
        /* A superuser's token must itself carry the admin role: a viewer
         * token of the superuser does not manage tenants. */
        if ((rt->flags & API_SUPER) && !(p.superuser && p.role == REG_ADMIN)) {
            http_res_error(res, 403, "forbidden",
                           "only an admin of the default tenant may do this");
            return HTTP_DONE;
        }
        if (p.role < rt->role) {
            char msg[128];
            snprintf(msg, sizeof msg, "this needs the %s role; the token has %s",
                     role_name(rt->role), role_name(p.role));
            http_res_error(res, 403, "forbidden", msg);
            return HTTP_DONE;
        }
    }
    if ((rt->flags & (API_BODY | API_BODY_OPT)) &&
        !content_type_ok(http_req_header(req, "content-type"))) {
        http_res_error(res, 415, "unsupported_media_type",
                       "the body must be JSON (Content-Type: application/json)");
        return HTTP_DONE;
    }
    api_call *c = calloc(1, sizeof *c);
    if (!c) {
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
        return HTTP_DONE;
    }
    c->req = req;
    c->route = rt;
    c->r = R;
    c->p = p;
    c->work.data = c;
    if (rt->flags & API_FAST) {
        call_run(c);
        call_finish(c, res);
        call_free(c);
        return HTTP_DONE;
    }
    if (uv_queue_work(net_loop(net_self()), &c->work, work_run, work_done) != 0) {
        call_free(c);
        http_res_error(res, 503, "unavailable", "cannot queue the request");
        return HTTP_DONE;
    }
    metrics_pool_queued();
    return HTTP_PENDING;
}

/* ---- start ---- */

static const char *method_key(int m)
{
    switch (m) {
    case HTTP_GET: return "get";
    case HTTP_POST: return "post";
    case HTTP_PUT: return "put";
    case HTTP_PATCH: return "patch";
    case HTTP_DELETE: return "delete";
    default: return "?";
    }
}

/* Every route of the table must be in the OpenAPI document. */
static thz_err check_openapi(void)
{
    size_t len;
    const char *s = api_openapi_json(&len);
    cJSON *doc = cJSON_ParseWithLength(s, len);
    cJSON *paths = cJSON_GetObjectItemCaseSensitive(doc, "paths");
    thz_err rc = THZ_OK;
    if (!cJSON_IsObject(paths)) {
        log_error("api", "the embedded openapi.json does not parse or has no paths");
        rc = THZ_ECORRUPT;
    }
    for (const api_route *rt = api_routes; !rc && rt->pattern; rt++) {
        cJSON *pi = cJSON_GetObjectItemCaseSensitive(paths, rt->pattern);
        if (!cJSON_GetObjectItemCaseSensitive(pi, method_key(rt->method))) {
            log_error("api", "openapi.json does not describe %s %s", method_key(rt->method),
                      rt->pattern);
            rc = THZ_ECORRUPT;
        }
    }
    cJSON_Delete(doc);
    return rc;
}

thz_err api_start(registry *r)
{
    R = r;
    thz_err rc = check_openapi();
    if (rc) return rc;
    for (const api_route *rt = api_routes; rt->pattern; rt++) {
        rc = http_route(rt->method, rt->pattern, api_handle, (void *)rt);
        if (rc) {
            log_error("api", "cannot register %s %s: %s", method_key(rt->method), rt->pattern,
                      thz_strerror(rc));
            return rc;
        }
    }
    /* The Prometheus API is outside /api/v1 and its OpenAPI check: it is
     * described in docs/API.md ("Prometheus API"). */
    return api_prom_start(r);
}
