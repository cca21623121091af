/* test_http.c - unit tests for the HTTP request parser (pipelining, chunked
 * bodies, limits, malformed input, Expect) and the router (path parameters,
 * percent-decoding, 404/405, HEAD) on byte strings, without sockets. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_int.h"

/* Parses all of s (optionally one byte at a time) and returns up to max
 * requests; *rc gets the last result. */
static int parse_all(http_parser *ps, const char *s, size_t n, bool bytewise, http_request **reqs,
                     int max, thz_err *rc)
{
    int k = 0;
    size_t off = 0;
    *rc = THZ_EAGAIN;
    while (off < n) {
        size_t chunk = bytewise ? 1 : n - off, used = 0;
        http_request *r = NULL;
        *rc = http_parse(ps, (const uint8_t *)s + off, chunk, &used, &r);
        off += used;
        if (*rc == THZ_OK) {
            assert_true(k < max);
            reqs[k++] = r;
            continue;
        }
        if (*rc != THZ_EAGAIN) break;
        assert_int_equal(used, chunk);
    }
    return k;
}

static void free_all(http_request **reqs, int n)
{
    for (int i = 0; i < n; i++) http_request_free(reqs[i]);
}

static void test_simple_get(void **state)
{
    http_parser ps;
    http_parser_init(&ps);
    const char *s = "GET /api/v1/health?x=1&y=a%20b HTTP/1.1\r\nHost: h\r\nX-Empty:\r\n\r\n";
    http_request *r[2];
    thz_err rc;
    assert_int_equal(parse_all(&ps, s, strlen(s), false, r, 2, &rc), 1);
    assert_int_equal(r[0]->method, HTTP_GET);
    assert_string_equal(http_req_path(r[0]), "/api/v1/health");
    assert_string_equal(http_req_header(r[0], "HOST"), "h");
    assert_string_equal(http_req_header(r[0], "x-empty"), "");
    assert_null(http_req_header(r[0], "nope"));
    char v[16];
    assert_int_equal(http_req_query(r[0], "y", v, sizeof v), 1);
    assert_string_equal(v, "a b");
    assert_int_equal(http_req_query(r[0], "z", v, sizeof v), 0);
    assert_int_equal(http_req_query(r[0], "y", v, 2), -1);
    assert_true(r[0]->keep_alive);
    free_all(r, 1);
    http_parser_free(&ps);
}

static void test_pipelined(void **state)
{
    const char *s = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                    "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                    "GET /c HTTP/1.0\r\n\r\n";
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        http_parser ps;
        http_parser_init(&ps);
        http_request *r[4];
        thz_err rc;
        int n = parse_all(&ps, s, strlen(s), bytewise, r, 4, &rc);
        assert_int_equal(n, 3);
        assert_string_equal(http_req_path(r[0]), "/a");
        assert_string_equal(http_req_path(r[1]), "/b");
        size_t len;
        assert_memory_equal(http_req_body(r[1], &len), "hello", 5);
        assert_int_equal(len, 5);
        assert_string_equal(http_req_path(r[2]), "/c");
        assert_true(r[0]->keep_alive && r[1]->keep_alive);
        assert_false(r[2]->keep_alive); /* HTTP/1.0 without keep-alive */
        free_all(r, n);
        http_parser_free(&ps);
    }
}

static void test_http10_keepalive_and_close(void **state)
{
    const char *s = "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                    "GET /b HTTP/1.1\r\nConnection: close\r\n\r\n";
    http_parser ps;
    http_parser_init(&ps);
    http_request *r[2];
    thz_err rc;
    assert_int_equal(parse_all(&ps, s, strlen(s), false, r, 2, &rc), 2);
    assert_true(r[0]->keep_alive);
    assert_false(r[1]->keep_alive);
    thz_buf out = {0};
    assert_int_equal(http_serialize(r[0], r[0]->keep_alive, &out), THZ_OK);
    assert_non_null(memmem(out.p, out.len, "Connection: keep-alive\r\n", 24));
    out.len = 0;
    assert_int_equal(http_serialize(r[1], false, &out), THZ_OK);
    assert_non_null(memmem(out.p, out.len, "Connection: close\r\n", 19));
    thz_buf_free(&out);
    free_all(r, 2);
    http_parser_free(&ps);
}

static void test_chunked(void **state)
{
    const char *s = "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                    "GET /next HTTP/1.1\r\n\r\n";
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        http_parser ps;
        http_parser_init(&ps);
        http_request *r[2];
        thz_err rc;
        assert_int_equal(parse_all(&ps, s, strlen(s), bytewise, r, 2, &rc), 2);
        size_t len;
        const uint8_t *b = http_req_body(r[0], &len);
        assert_int_equal(len, 11);
        assert_string_equal((const char *)b, "hello world");
        assert_null(http_req_header(r[0], "x-trailer")); /* trailers are not kept */
        assert_string_equal(http_req_path(r[1]), "/next");
        free_all(r, 2);
        http_parser_free(&ps);
    }
}

static int expect_error(const char *s, size_t n, int status)
{
    http_parser ps;
    http_parser_init(&ps);
    http_request *r[4];
    thz_err rc;
    int k = parse_all(&ps, s, n, false, r, 4, &rc);
    free_all(r, k);
    assert_true(rc != THZ_OK && rc != THZ_EAGAIN);
    assert_int_equal(ps.err_status, status);
    assert_non_null(ps.err_code);
    /* a failed parser stays failed */
    size_t used;
    http_request *x;
    assert_int_not_equal(http_parse(&ps, (const uint8_t *)"GET / HTTP/1.1\r\n\r\n", 18, &used, &x),
                         THZ_OK);
    http_parser_free(&ps);
    return k;
}

static void test_limits(void **state)
{
    size_t cap = 2 * HTTP_MAX_BODY;
    char *s = malloc(cap);
    /* header section too large */
    int n = snprintf(s, cap, "GET / HTTP/1.1\r\nX-Big: ");
    memset(s + n, 'a', HTTP_MAX_HEADER_BYTES);
    n += HTTP_MAX_HEADER_BYTES;
    n += snprintf(s + n, cap - (size_t)n, "\r\n\r\n");
    expect_error(s, (size_t)n, 431);
    /* too many headers */
    n = snprintf(s, cap, "GET / HTTP/1.1\r\n");
    for (int i = 0; i <= HTTP_MAX_HEADERS; i++)
        n += snprintf(s + n, cap - (size_t)n, "X-H%d: v\r\n", i);
    n += snprintf(s + n, cap - (size_t)n, "\r\n");
    expect_error(s, (size_t)n, 431);
    /* exactly the maximum number is fine */
    n = snprintf(s, cap, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < HTTP_MAX_HEADERS; i++)
        n += snprintf(s + n, cap - (size_t)n, "X-H%d: v\r\n", i);
    n += snprintf(s + n, cap - (size_t)n, "\r\n");
    http_parser ps;
    http_parser_init(&ps);
    http_request *r[1];
    thz_err rc;
    assert_int_equal(parse_all(&ps, s, (size_t)n, false, r, 1, &rc), 1);
    assert_int_equal(r[0]->nhdr, HTTP_MAX_HEADERS);
    free_all(r, 1);
    http_parser_free(&ps);
    /* URL too long */
    n = snprintf(s, cap, "GET /");
    memset(s + n, 'u', HTTP_MAX_URL);
    n += HTTP_MAX_URL;
    n += snprintf(s + n, cap - (size_t)n, " HTTP/1.1\r\n\r\n");
    expect_error(s, (size_t)n, 414);
    /* announced body too large: refused before any body byte */
    n = snprintf(s, cap, "POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n", HTTP_MAX_BODY + 1);
    expect_error(s, (size_t)n, 413);
    /* chunked body growing past the limit */
    n = snprintf(s, cap, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 20; i++) {
        n += snprintf(s + n, cap - (size_t)n, "10000\r\n");
        memset(s + n, 'b', 0x10000);
        n += 0x10000;
        n += snprintf(s + n, cap - (size_t)n, "\r\n");
    }
    expect_error(s, (size_t)n, 413);
    free(s);
}

static void test_bad_requests(void **state)
{
    static const char *bad[] = {
        "garbage\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
        "GET / HTTP/1.1\r\nBad{Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        print_message("bad request %zu\n", i);
        expect_error(bad[i], strlen(bad[i]), 400);
    }
}

static void test_expect(void **state)
{
    http_parser ps;
    http_parser_init(&ps);
    const char *h = "POST /p HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
    size_t used;
    http_request *r = NULL;
    assert_int_equal(http_parse(&ps, (const uint8_t *)h, strlen(h), &used, &r), THZ_EAGAIN);
    assert_true(ps.want_continue);
    ps.want_continue = false;
    assert_int_equal(http_parse(&ps, (const uint8_t *)"abc", 3, &used, &r), THZ_OK);
    assert_int_equal(r->body.len, 3);
    http_request_free(r);
    /* headers and body in one piece: no 100 needed */
    const char *both = "POST /p HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\nx";
    assert_int_equal(http_parse(&ps, (const uint8_t *)both, strlen(both), &used, &r), THZ_OK);
    assert_false(ps.want_continue);
    http_request_free(r);
    http_parser_free(&ps);
    const char *odd = "POST /p HTTP/1.1\r\nContent-Length: 1\r\nExpect: something\r\n\r\n";
    expect_error(odd, strlen(odd), 417);
    char big[128];
    int n = snprintf(big, sizeof big,
                     "POST /p HTTP/1.1\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n",
                     HTTP_MAX_BODY + 1);
    expect_error(big, (size_t)n, 413);
}

/* ---- router ---- */

static http_result h_echo(http_request *req, http_response *res, void *ctx)
{
    const char *name = ctx;
    const char *v = http_req_param(req, name);
    http_res_status(res, 200);
    http_res_body(res, v ? v : "(none)", strlen(v ? v : "(none)"));
    return HTTP_DONE;
}

static http_result h_two(http_request *req, http_response *res, void *ctx)
{
    char b[128];
    int n = snprintf(b, sizeof b, "%s|%s", http_req_param(req, "id"), http_req_param(req, "rest"));
    http_res_body(res, b, (size_t)n);
    return HTTP_DONE;
}

static http_request *one(const char *s)
{
    http_parser ps;
    http_parser_init(&ps);
    size_t used;
    http_request *r = NULL;
    assert_int_equal(http_parse(&ps, (const uint8_t *)s, strlen(s), &used, &r), THZ_OK);
    http_parser_free(&ps);
    return r;
}

/* Dispatches one request; returns the status and copies the body to body. */
static int route(const char *s, char *body, size_t blen)
{
    http_request *r = one(s);
    assert_int_equal(http_dispatch(r), HTTP_DONE);
    int st = r->res.status;
    size_t n = r->res.body.len < blen - 1 ? r->res.body.len : blen - 1;
    memcpy(body, r->res.body.p ? (char *)r->res.body.p : "", n);
    body[n] = 0;
    http_request_free(r);
    return st;
}

static int setup_routes(void **state)
{
    http_routes_reset();
    assert_int_equal(http_route(HTTP_GET, "/api/v1/health", h_echo, "x"), THZ_OK);
    assert_int_equal(http_route(HTTP_POST, "/api/v1/topics/{topic...}", h_echo, "topic"), THZ_OK);
    assert_int_equal(http_route(HTTP_GET, "/api/v1/devices/{id}", h_echo, "id"), THZ_OK);
    assert_int_equal(http_route(HTTP_DELETE, "/api/v1/devices/{id}", h_echo, "id"), THZ_OK);
    assert_int_equal(http_route(HTTP_GET, "/x/{id}/files/{rest...}", h_two, NULL), THZ_OK);
    /* bad patterns */
    assert_int_not_equal(http_route(HTTP_GET, "/a/{r...}/b", h_echo, NULL), THZ_OK);
    assert_int_not_equal(http_route(HTTP_GET, "no-slash", h_echo, NULL), THZ_OK);
    return 0;
}

static void test_router(void **state)
{
    char b[256];
    assert_int_equal(route("GET /api/v1/health HTTP/1.1\r\n\r\n", b, sizeof b), 200);
    assert_int_equal(route("POST /api/v1/topics/a/b%2Fc/%24d%20e HTTP/1.1\r\n\r\n", b, sizeof b),
                     200);
    assert_string_equal(b, "a/b/c/$d e");
    assert_int_equal(route("POST /api/v1/topics/x?qos=1 HTTP/1.1\r\n\r\n", b, sizeof b), 200);
    assert_string_equal(b, "x");
    /* the rest must not be empty */
    assert_int_equal(route("POST /api/v1/topics/ HTTP/1.1\r\n\r\n", b, sizeof b), 404);
    assert_int_equal(route("POST /api/v1/topics HTTP/1.1\r\n\r\n", b, sizeof b), 404);
    assert_int_equal(route("GET /api/v1/devices/d%31 HTTP/1.1\r\n\r\n", b, sizeof b), 200);
    assert_string_equal(b, "d1");
    assert_int_equal(route("DELETE /api/v1/devices/d1 HTTP/1.1\r\n\r\n", b, sizeof b), 200);
    /* {id} is one segment */
    assert_int_equal(route("GET /api/v1/devices/d1/x HTTP/1.1\r\n\r\n", b, sizeof b), 404);
    assert_int_equal(route("GET /x/7/files/a/b.txt HTTP/1.1\r\n\r\n", b, sizeof b), 200);
    assert_string_equal(b, "7|a/b.txt");
    /* unknown path: 404 JSON */
    assert_int_equal(route("GET /nope HTTP/1.1\r\n\r\n", b, sizeof b), 404);
    assert_non_null(strstr(b, "\"code\":\"not_found\""));
    assert_int_equal(route("GET / HTTP/1.1\r\n\r\n", b, sizeof b), 404);
    /* bad escapes and encoded NUL in a parameter: 400 */
    assert_int_equal(route("POST /api/v1/topics/a%zz HTTP/1.1\r\n\r\n", b, sizeof b), 400);
    assert_int_equal(route("POST /api/v1/topics/a%00b HTTP/1.1\r\n\r\n", b, sizeof b), 400);
    assert_int_equal(route("POST /api/v1/topics/a%4 HTTP/1.1\r\n\r\n", b, sizeof b), 400);
}

static void test_405_and_head(void **state)
{
    http_request *r = one("PUT /api/v1/devices/d1 HTTP/1.1\r\n\r\n");
    assert_int_equal(http_dispatch(r), HTTP_DONE);
    assert_int_equal(r->res.status, 405);
    thz_buf out = {0};
    assert_int_equal(http_serialize(r, true, &out), THZ_OK);
    assert_non_null(memmem(out.p, out.len, "Allow: GET, HEAD, DELETE\r\n", 26));
    assert_non_null(memmem(out.p, out.len, "\"method_not_allowed\"", 20));
    http_request_free(r);
    /* HEAD uses the GET route: headers with the real Content-Length, no body */
    r = one("HEAD /api/v1/devices/abc HTTP/1.1\r\n\r\n");
    assert_int_equal(http_dispatch(r), HTTP_DONE);
    assert_int_equal(r->res.status, 200);
    out.len = 0;
    assert_int_equal(http_serialize(r, true, &out), THZ_OK);
    assert_non_null(memmem(out.p, out.len, "Content-Length: 3\r\n", 19));
    assert_memory_equal(out.p + out.len - 4, "\r\n\r\n", 4);
    assert_non_null(memmem(out.p, out.len, "Server: thinghz\r\n", 17));
    assert_non_null(memmem(out.p, out.len, "Date: ", 6));
    http_request_free(r);
    thz_buf_free(&out);
}

static void test_response_builder(void **state)
{
    http_response res = {0};
    assert_int_not_equal(http_res_header(&res, "X-A", "evil\r\nInjected: 1"), THZ_OK);
    assert_int_not_equal(http_res_header(&res, "X:B", "v"), THZ_OK);
    assert_int_equal(http_res_header(&res, "X-A", "ok"), THZ_OK);
    http_res_error(&res, 413, "body_too_large", "too \"big\"");
    assert_int_equal(res.status, 413);
    assert_memory_equal(res.body.p,
                        "{\"error\":{\"code\":\"body_too_large\",\"message\":\"too \\\"big\\\"\"}}",
                        res.body.len);
    thz_buf_free(&res.headers);
    thz_buf_free(&res.body);
    thz_buf out = {0};
    assert_int_equal(http_serialize_error(400, "bad_request", "x", &out), THZ_OK);
    assert_memory_equal(out.p, "HTTP/1.1 400 Bad Request\r\n", 26);
    assert_non_null(memmem(out.p, out.len, "Connection: close\r\n", 19));
    thz_buf_free(&out);
    char d[16];
    assert_int_equal(http_pct_decode("a+b%41", 6, d, true), 4);
    assert_string_equal(d, "a bA");
    assert_int_equal(http_pct_decode("a+b", 3, d, false), 3);
    assert_string_equal(d, "a+b");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_http10_keepalive_and_close),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_expect),
        cmocka_unit_test_setup(test_router, setup_routes),
        cmocka_unit_test_setup(test_405_and_head, setup_routes),
        cmocka_unit_test(test_response_builder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
