/* parse.c - the HTTP/1.1 request parser: llhttp does the grammar (methods,
 * versions, Content-Length vs chunked, header tokens, keep-alive rules); this
 * file collects each request into an http_request and enforces our limits.
 * Pure: bytes in, requests out, no socket behind it. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/http_int.h"

enum { ST_NONE, ST_FIELD, ST_FIELD_DONE, ST_VALUE_DONE };

static http_parser *PS(llhttp_t *p)
{
    return (http_parser *)p->data;
}

static int fail(llhttp_t *p, int status, const char *code, const char *msg)
{
    http_parser *ps = PS(p);
    ps->err_status = status;
    ps->err_code = code;
    ps->err_msg = msg;
    llhttp_set_error_reason(p, msg);
    return -1;
}

static int nomem(llhttp_t *p)
{
    return fail(p, 503, "out_of_memory", "the server is out of memory");
}

static int on_message_begin(llhttp_t *p)
{
    http_parser *ps = PS(p);
    http_request_free(ps->cur);
    ps->cur = calloc(1, sizeof *ps->cur);
    if (!ps->cur) return nomem(p);
    ps->cur->res.status = 200;
    ps->hbytes = 0;
    ps->state = ST_NONE;
    ps->in_message = true;
    ps->want_continue = false;
    return 0;
}

static int count(llhttp_t *p, size_t n)
{
    http_parser *ps = PS(p);
    ps->hbytes += n;
    if (ps->hbytes > HTTP_MAX_HEADER_BYTES)
        return fail(p, 431, "headers_too_large", "the request header section is too large");
    return 0;
}

static int on_span(llhttp_t *p, const char *at, size_t n)
{
    return count(p, n);
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    http_request *r = PS(p)->cur;
    if (r->url.len + n > HTTP_MAX_URL)
        return fail(p, 414, "uri_too_long", "the request target is too long");
    if (count(p, n)) return -1;
    return thz_buf_append(&r->url, at, n) ? nomem(p) : 0;
}

static int on_url_complete(llhttp_t *p)
{
    return thz_buf_append(&PS(p)->cur->url, "", 1) ? nomem(p) : 0;
}

/* Closes a header whose value never started (an empty value). */
static int end_value(llhttp_t *p)
{
    http_parser *ps = PS(p);
    if (ps->state != ST_FIELD_DONE) return 0;
    ps->state = ST_VALUE_DONE;
    return thz_buf_append(&ps->cur->hdr, "", 1) ? nomem(p) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    http_parser *ps = PS(p);
    http_request *r = ps->cur;
    if (count(p, n)) return -1;
    if (r->path) return 0; /* a trailer: counted, not kept */
    if (ps->state != ST_FIELD) {
        if (end_value(p)) return -1;
        if (r->nhdr == HTTP_MAX_HEADERS)
            return fail(p, 431, "too_many_headers", "the request has too many header fields");
        r->hoff[r->nhdr][0] = (uint32_t)r->hdr.len;
        r->hoff[r->nhdr][1] = 0;
        r->nhdr++;
        ps->state = ST_FIELD;
    }
    return thz_buf_append(&r->hdr, at, n) ? nomem(p) : 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    http_parser *ps = PS(p);
    http_request *r = ps->cur;
    if (r->path) return 0;
    if (thz_buf_append(&r->hdr, "", 1)) return nomem(p);
    r->hoff[r->nhdr - 1][1] = (uint32_t)r->hdr.len;
    ps->state = ST_FIELD_DONE;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    http_request *r = PS(p)->cur;
    if (count(p, n)) return -1;
    if (r->path) return 0;
    return thz_buf_append(&r->hdr, at, n) ? nomem(p) : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    http_parser *ps = PS(p);
    if (ps->cur->path) return 0;
    ps->state = ST_FIELD_DONE;
    return end_value(p);
}

static int on_headers_complete(llhttp_t *p)
{
    http_parser *ps = PS(p);
    http_request *r = ps->cur;
    if (end_value(p)) return -1;
    if (r->url.len == 0 && thz_buf_append(&r->url, "", 1)) return nomem(p);
    r->path = (char *)r->url.p;
    char *q = strchr(r->path, '?');
    if (q) {
        *q = 0;
        r->query = q + 1;
    } else {
        r->query = r->path + strlen(r->path);
    }
    r->method = llhttp_get_method(p);
    r->major = llhttp_get_http_major(p);
    r->minor = llhttp_get_http_minor(p);
    r->upgrade = llhttp_get_upgrade(p) != 0;
    bool has_len = (p->flags & F_CONTENT_LENGTH) != 0;
    if (has_len && p->content_length > HTTP_MAX_BODY)
        return fail(p, 413, "body_too_large", "the request body is larger than 1 MiB");
    const char *expect = http_req_header(r, "expect");
    if (expect) {
        if (strcasecmp(expect, "100-continue") != 0 || r->major != 1 || r->minor < 1)
            return fail(p, 417, "expectation_failed", "only Expect: 100-continue is supported");
        ps->want_continue = true;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    http_request *r = PS(p)->cur;
    if (r->body.len + n > HTTP_MAX_BODY)
        return fail(p, 413, "body_too_large", "the request body is larger than 1 MiB");
    return thz_buf_append(&r->body, at, n) ? nomem(p) : 0;
}

static int on_message_complete(llhttp_t *p)
{
    http_parser *ps = PS(p);
    http_request *r = ps->cur;
    /* a NUL after the body, so text bodies can be used as strings */
    if (thz_buf_reserve(&r->body, 1)) return nomem(p);
    r->body.p[r->body.len] = 0;
    r->keep_alive = llhttp_should_keep_alive(p) && !r->upgrade;
    ps->in_message = false;
    ps->want_continue = false; /* the body is already here */
    return HPE_PAUSED;
}

static llhttp_settings_t parser_settings;
static pthread_once_t parser_settings_once = PTHREAD_ONCE_INIT;

static void settings_init(void)
{
    llhttp_settings_t *s = &parser_settings;
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_url_complete = on_url_complete;
    s->on_method = on_span;
    s->on_version = on_span;
    s->on_header_field = on_header_field;
    s->on_header_field_complete = on_header_field_complete;
    s->on_header_value = on_header_value;
    s->on_header_value_complete = on_header_value_complete;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}

/* Shared by every parser on every thread, filled exactly once. */
static const llhttp_settings_t *settings(void)
{
    pthread_once(&parser_settings_once, settings_init);
    return &parser_settings;
}

void http_parser_init(http_parser *ps)
{
    memset(ps, 0, sizeof *ps);
    llhttp_init(&ps->p, HTTP_REQUEST, settings());
    ps->p.data = ps;
}

void http_parser_free(http_parser *ps)
{
    http_request_free(ps->cur);
    ps->cur = NULL;
}

thz_err http_parse(http_parser *ps, const uint8_t *data, size_t n, size_t *used, http_request **out)
{
    *out = NULL;
    *used = 0;
    if (ps->failed) return THZ_EMALFORMED;
    if (n == 0) return THZ_EAGAIN;
    llhttp_errno_t e = llhttp_execute(&ps->p, (const char *)data, n);
    if (e == HPE_OK) {
        *used = n;
        return THZ_EAGAIN;
    }
    const char *pos = llhttp_get_error_pos(&ps->p);
    size_t at = pos && pos >= (const char *)data ? (size_t)(pos - (const char *)data) : n;
    if (at > n) at = n;
    if ((e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) && ps->cur && !ps->in_message) {
        *used = at;
        *out = ps->cur;
        ps->cur = NULL;
        if (!(*out)->upgrade) {
            llhttp_resume(&ps->p);
        } else {
            /* After an Upgrade (or CONNECT) request the stream is no longer
             * HTTP: the bytes from *used on belong to the new protocol if
             * the server switches (a WebSocket), else it answers and closes
             * (keep_alive is false). Either way this parser is done. */
            ps->failed = true;
            ps->err_status = 400;
            ps->err_code = "bad_request";
            ps->err_msg = "no HTTP after a protocol upgrade";
        }
        return THZ_OK;
    }
    *used = at;
    ps->failed = true;
    if (!ps->err_status) {
        ps->err_status = 400;
        ps->err_code = "bad_request";
        ps->err_msg = "the request is not valid HTTP/1.1";
    }
    http_request_free(ps->cur);
    ps->cur = NULL;
    ps->in_message = false;
    ps->want_continue = false;
    return ps->err_status == 413 || ps->err_status == 414 || ps->err_status == 431 ? THZ_ETOOBIG
                                                                                   : THZ_EMALFORMED;
}

void http_request_free(http_request *req)
{
    if (!req) return;
    thz_buf_free(&req->url);
    thz_buf_free(&req->hdr);
    thz_buf_free(&req->body);
    for (int i = 0; i < req->nparam; i++) free(req->pval[i]);
    thz_buf_free(&req->res.headers);
    thz_buf_free(&req->res.body);
    free(req);
}

/* ---- accessors (http.h) ---- */

int http_req_method(const http_request *req)
{
    return req->method;
}

const char *http_req_path(const http_request *req)
{
    return req->path ? req->path : "";
}

const char *http_req_header(const http_request *req, const char *name)
{
    for (uint32_t i = 0; i < req->nhdr; i++) {
        if (!req->hoff[i][1]) continue;
        const char *n = (const char *)req->hdr.p + req->hoff[i][0];
        if (strcasecmp(n, name) == 0) return (const char *)req->hdr.p + req->hoff[i][1];
    }
    return NULL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

long http_pct_decode(const char *s, size_t n, char *out, bool plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int h = hexval((unsigned char)s[i + 1]), l = hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0) return -1;
            c = (char)(h * 16 + l);
            if (c == 0) return -1;
            i += 2;
        } else if (c == '+' && plus_space) {
            c = ' ';
        }
        out[o++] = c;
    }
    out[o] = 0;
    return (long)o;
}

int http_req_query(const http_request *req, const char *name, char *out, size_t outlen)
{
    const char *q = req->query ? req->query : "";
    size_t nl = strlen(name);
    while (*q) {
        const char *end = strchr(q, '&');
        size_t len = end ? (size_t)(end - q) : strlen(q);
        const char *eq = memchr(q, '=', len);
        size_t kl = eq ? (size_t)(eq - q) : len;
        if (kl == nl && memcmp(q, name, nl) == 0) {
            const char *v = eq ? eq + 1 : q + len;
            size_t vl = (size_t)(q + len - v);
            if (vl + 1 > outlen) return -1;
            return http_pct_decode(v, vl, out, true) >= 0 ? 1 : -1;
        }
        q += len;
        if (*q == '&') q++;
    }
    return 0;
}

const char *http_req_query_string(const http_request *req)
{
    return req->query ? req->query : "";
}

const uint8_t *http_req_body(const http_request *req, size_t *len)
{
    *len = req->body.len;
    return req->body.p ? req->body.p : (const uint8_t *)"";
}
