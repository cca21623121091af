/* test_cors_gzip.c - unit tests for the pure parts of CORS (origin lists,
 * preflights, the headers added to responses) and gzip (Accept-Encoding
 * q-values, compressible types, the compression itself), without sockets. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "http/http_int.h"

/* Parses one request from s. */
static http_request *req_of(const char *s)
{
    http_parser ps;
    http_parser_init(&ps);
    size_t used;
    http_request *r = NULL;
    assert_int_equal(http_parse(&ps, (const uint8_t *)s, strlen(s), &used, &r), THZ_OK);
    http_parser_free(&ps);
    return r;
}

static void test_list_tokens(void **state)
{
    assert_true(http_list_has("keep-alive, Upgrade", "upgrade"));
    assert_true(http_list_has(" ,, upgrade ,", "UPGRADE"));
    assert_false(http_list_has("upgraded", "upgrade"));
    assert_false(http_list_has("", "upgrade"));
    assert_false(http_list_has(NULL, "upgrade"));
    const char *l = "a, ,b ,  c", *it;
    size_t n;
    int k = 0;
    while (http_list_next(&l, &it, &n)) k++;
    assert_int_equal(k, 3);
}

static void test_origin_match(void **state)
{
    const char *list = "https://app.example.com, http://localhost:3000";
    assert_int_equal(http_cors_match(list, "https://app.example.com"), 1);
    assert_int_equal(http_cors_match(list, "HTTPS://APP.EXAMPLE.COM"), 1);
    assert_int_equal(http_cors_match(list, "http://localhost:3000"), 1);
    assert_int_equal(http_cors_match(list, "http://localhost:300"), 0);
    assert_int_equal(http_cors_match(list, "http://localhost:30000"), 0);
    assert_int_equal(http_cors_match(list, "https://app.example.com.evil.io"), 0);
    assert_int_equal(http_cors_match(list, "https://app.example.co"), 0);
    assert_int_equal(http_cors_match(list, "null"), 0);
    assert_int_equal(http_cors_match(list, ""), 0);
    assert_int_equal(http_cors_match(list, NULL), 0);
    assert_int_equal(http_cors_match("*", "https://x.y"), 2);
    assert_int_equal(http_cors_match("", "https://x.y"), 0);
}

static void test_preflight(void **state)
{
    http_cors_set("https://a.example");
    http_request *r = req_of("OPTIONS /x HTTP/1.1\r\nOrigin: https://a.example\r\n"
                             "Access-Control-Request-Method: PUT\r\n"
                             "Access-Control-Request-Headers: x-one, Content-Type, bad(\r\n\r\n");
    assert_true(http_cors_preflight(r));
    assert_int_equal(r->res.status, 204);
    size_t n;
    const char *v = http_res_find_header(&r->res, "access-control-allow-headers", &n);
    assert_non_null(v);
    assert_int_equal(n, strlen("Authorization, Content-Type, x-one"));
    assert_memory_equal(v, "Authorization, Content-Type, x-one", n);
    http_cors_finish(r);
    v = http_res_find_header(&r->res, "vary", &n);
    assert_non_null(v);
    assert_memory_equal(v, "Origin", n);
    http_request_free(r);

    r = req_of("OPTIONS /x HTTP/1.1\r\nOrigin: https://b.example\r\n"
               "Access-Control-Request-Method: PUT\r\n\r\n");
    assert_true(http_cors_preflight(r));
    assert_int_equal(r->res.status, 403);
    assert_null(http_res_find_header(&r->res, "access-control-allow-origin", NULL));
    http_request_free(r);

    /* not a preflight: no Access-Control-Request-Method */
    r = req_of("OPTIONS /x HTTP/1.1\r\nOrigin: https://a.example\r\n\r\n");
    assert_false(http_cors_preflight(r));
    http_request_free(r);

    /* off: nothing happens */
    http_cors_set("");
    r = req_of("OPTIONS /x HTTP/1.1\r\nOrigin: https://a.example\r\n"
               "Access-Control-Request-Method: PUT\r\n\r\n");
    assert_false(http_cors_preflight(r));
    http_cors_finish(r);
    assert_int_equal(r->res.headers.len, 0);
    http_request_free(r);
}

static void test_cors_simple(void **state)
{
    http_cors_set("https://a.example");
    http_request *r = req_of("GET /x HTTP/1.1\r\nOrigin: https://a.example\r\n\r\n");
    http_cors_finish(r);
    size_t n;
    const char *v = http_res_find_header(&r->res, "access-control-allow-origin", &n);
    assert_non_null(v);
    assert_memory_equal(v, "https://a.example", n);
    assert_non_null(http_res_find_header(&r->res, "access-control-allow-credentials", NULL));
    http_request_free(r);
    http_cors_set("*");
    r = req_of("GET /x HTTP/1.1\r\nOrigin: https://b.example\r\n\r\n");
    http_cors_finish(r);
    v = http_res_find_header(&r->res, "access-control-allow-origin", &n);
    assert_memory_equal(v, "*", n);
    assert_null(http_res_find_header(&r->res, "access-control-allow-credentials", NULL));
    assert_null(http_res_find_header(&r->res, "vary", NULL));
    http_request_free(r);
    http_cors_set("");
}

static void test_accept_q(void **state)
{
    assert_int_equal(http_accept_q("gzip", "gzip"), 1000);
    assert_int_equal(http_accept_q("GZip", "gzip"), 1000);
    assert_int_equal(http_accept_q("x-gzip", "gzip"), 1000);
    assert_int_equal(http_accept_q("deflate, gzip;q=0.5", "gzip"), 500);
    assert_int_equal(http_accept_q("gzip;q=0", "gzip"), 0);
    assert_int_equal(http_accept_q("gzip;q=0.000", "gzip"), 0);
    assert_int_equal(http_accept_q("gzip; Q=0.123", "gzip"), 123);
    assert_int_equal(http_accept_q("gzip ;q=1.000", "gzip"), 1000);
    assert_int_equal(http_accept_q("gzip;q=1.001", "gzip"), 0);  /* invalid: ignored */
    assert_int_equal(http_accept_q("gzip;q=0.1234", "gzip"), 0); /* 4 decimals */
    assert_int_equal(http_accept_q("gzip;q=", "gzip"), 0);
    assert_int_equal(http_accept_q("gzip;q=.5", "gzip"), 0);
    assert_int_equal(http_accept_q("*", "gzip"), 1000);
    assert_int_equal(http_accept_q("*;q=0.2", "gzip"), 200);
    assert_int_equal(http_accept_q("gzip;q=0, *", "gzip"), 0); /* explicit wins */
    assert_int_equal(http_accept_q("br, *;q=0", "gzip"), 0);
    assert_int_equal(http_accept_q("identity", "gzip"), 0);
    assert_int_equal(http_accept_q("gzipx, xgzip", "gzip"), 0);
    assert_int_equal(http_accept_q("", "gzip"), 0);
    assert_int_equal(http_accept_q(NULL, "gzip"), 0);
    assert_int_equal(http_accept_q("gzip;level=9;q=0.7", "gzip"), 700);
    assert_int_equal(http_accept_q("gzip;q=0.3, gzip;q=0.9", "gzip"), 900);
    assert_int_equal(http_accept_q(",,, gzip ,", "gzip"), 1000);
}

static void test_gzip_types(void **state)
{
#define T(s) http_gzip_type(s, strlen(s))
    assert_true(T("text/plain"));
    assert_true(T("text/html; charset=utf-8"));
    assert_true(T("Application/JSON"));
    assert_true(T("application/json;charset=utf-8"));
    assert_true(T("application/javascript"));
    assert_true(T("image/svg+xml"));
    assert_false(T("text/"));
    assert_false(T("application/jsonx"));
    assert_false(T("application/octet-stream"));
    assert_false(T("image/png"));
    assert_false(T(""));
#undef T
}

static void test_gzip_roundtrip(void **state)
{
    char body[5000];
    for (size_t i = 0; i < sizeof body; i++) body[i] = "abcdefgh\n"[i % 9];
    http_request *r = req_of("GET /x HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n");
    http_res_header(&r->res, "Content-Type", "text/plain");
    http_res_body(&r->res, body, sizeof body);
    http_gzip_finish(r);
    assert_non_null(http_res_find_header(&r->res, "content-encoding", NULL));
    assert_true(r->res.body.len < sizeof body);
    assert_int_equal(r->res.body.p[0], 0x1f);
    assert_int_equal(r->res.body.p[1], 0x8b);
    char out[6000];
    z_stream z = {0};
    assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
    z.next_in = r->res.body.p;
    z.avail_in = (uInt)r->res.body.len;
    z.next_out = (Bytef *)out;
    z.avail_out = sizeof out;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    assert_int_equal(z.total_out, sizeof body);
    assert_memory_equal(out, body, sizeof body);
    inflateEnd(&z);
    /* the same input gives the same bytes (HEAD's Content-Length is GET's) */
    thz_buf again = {0};
    assert_int_equal(http_gzip((const uint8_t *)body, sizeof body, &again), THZ_OK);
    assert_int_equal(again.len, r->res.body.len);
    assert_memory_equal(again.p, r->res.body.p, again.len);
    thz_buf_free(&again);
    http_request_free(r);

    /* 204, small, or no Accept-Encoding: untouched */
    r = req_of("GET /x HTTP/1.1\r\n\r\n");
    http_res_header(&r->res, "Content-Type", "text/plain");
    http_res_body(&r->res, body, sizeof body);
    http_gzip_finish(r);
    assert_null(http_res_find_header(&r->res, "content-encoding", NULL));
    assert_non_null(http_res_find_header(&r->res, "vary", NULL));
    assert_int_equal(r->res.body.len, sizeof body);
    http_request_free(r);
    r = req_of("GET /x HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n");
    http_res_header(&r->res, "Content-Type", "text/plain");
    http_res_body(&r->res, body, 1023);
    http_gzip_finish(r);
    assert_int_equal(r->res.body.len, 1023);
    assert_int_equal(r->res.headers.len, strlen("Content-Type: text/plain\r\n"));
    http_request_free(r);
    http_gzip_thread_end();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_tokens),    cmocka_unit_test(test_origin_match),
        cmocka_unit_test(test_preflight),      cmocka_unit_test(test_cors_simple),
        cmocka_unit_test(test_accept_q),       cmocka_unit_test(test_gzip_types),
        cmocka_unit_test(test_gzip_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
