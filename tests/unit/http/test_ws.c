/* test_ws.c - unit tests for the WebSocket side of the HTTP server: the
 * accept key (RFC 6455's example), key and UTF-8 checks, the parser's
 * upgrade split (bytes after the head are the WebSocket's), the handshake
 * route, and frames through wslay with an in-memory connection. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_int.h"

static void test_accept_key(void **state)
{
    char out[29];
    /* RFC 6455 section 1.3 */
    http_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_true(http_ws_key_ok("dGhlIHNhbXBsZSBub25jZQ=="));
    assert_true(http_ws_key_ok("AAAAAAAAAAAAAAAAAAAAAA=="));
    assert_false(http_ws_key_ok("AAAAAAAAAAAAAAAAAAAAAB==")); /* bits after byte 16 */
    assert_false(http_ws_key_ok("AAAAAAAAAAAAAAAAAAAAAAA=")); /* 17 bytes */
    assert_false(http_ws_key_ok("AAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    assert_false(http_ws_key_ok("c2hvcnQ="));
    assert_false(http_ws_key_ok("AAAAAAAAAAAAAAAAAAAA!A=="));
    assert_false(http_ws_key_ok(""));
    assert_false(http_ws_key_ok(NULL));
}

static void test_utf8(void **state)
{
#define U(s) http_utf8_ok((const uint8_t *)s, sizeof s - 1)
    assert_true(U(""));
    assert_true(U("plain"));
    assert_true(U("w\xc3\xb6rld \xe2\x82\xac \xf0\x9f\x98\x80"));
    assert_false(U("\xc3\x28"));
    assert_false(U("\xc0\xaf"));         /* overlong '/' */
    assert_false(U("\xe0\x80\xaf"));     /* overlong */
    assert_false(U("\xed\xa0\x80"));     /* surrogate */
    assert_false(U("\xf4\x90\x80\x80")); /* > U+10FFFF */
    assert_false(U("\xf0\x9f\x98"));     /* truncated */
    assert_false(U("\xff"));
#undef U
}

/* ---- an in-memory connection ---- */

static thz_buf wire;
static size_t limit_unsent = 0;

static thz_err mem_write(void *conn, const void *p, size_t n)
{
    return thz_buf_append(&wire, p, n);
}

static size_t mem_unsent(void *conn)
{
    return limit_unsent;
}

static const http_ws_io mem_io = {mem_write, mem_unsent, NULL, NULL, NULL};

static int opened, closed_code;

static void on_open(http_ws *ws, void *ctx)
{
    opened++;
}

static void on_message(http_ws *ws, int op, const uint8_t *p, size_t n, void *ctx)
{
    assert_int_equal(http_ws_send(ws, op, p, n), THZ_OK);
}

static void on_close(http_ws *ws, uint16_t code, void *ctx)
{
    closed_code = code;
}

static const http_ws_handler echo = {on_open, on_message, on_close};

/* A masked client frame. */
static size_t frame(uint8_t *out, int fin_op, const void *p, size_t n)
{
    static const uint8_t mask[4] = {1, 2, 3, 4};
    size_t o = 0;
    out[o++] = (uint8_t)fin_op;
    if (n < 126) {
        out[o++] = 0x80 | (uint8_t)n;
    } else {
        out[o++] = 0x80 | 126;
        out[o++] = (uint8_t)(n >> 8);
        out[o++] = (uint8_t)n;
    }
    memcpy(out + o, mask, 4);
    o += 4;
    for (size_t i = 0; i < n; i++) out[o + i] = ((const uint8_t *)p)[i] ^ mask[i % 4];
    return o + n;
}

static void test_upgrade_split_and_handshake(void **state)
{
    http_routes_reset();
    assert_int_equal(http_route_ws("/ws", "mqtt, echo", &echo, NULL), THZ_OK);
    uint8_t in[512];
    const char *head = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                       "Sec-WebSocket-Protocol: chat, echo\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    size_t hl = strlen(head);
    memcpy(in, head, hl);
    size_t n = hl + frame(in + hl, 0x81, "hi", 2);
    http_parser ps;
    http_parser_init(&ps);
    size_t used;
    http_request *r = NULL;
    assert_int_equal(http_parse(&ps, in, n, &used, &r), THZ_OK);
    assert_int_equal(used, hl); /* the frame is not HTTP */
    assert_true(r->upgrade);
    assert_false(r->keep_alive);
    /* the parser is done with this stream */
    size_t u2;
    http_request *r2 = NULL;
    assert_int_not_equal(http_parse(&ps, in + used, n - used, &u2, &r2), THZ_OK);
    http_parser_free(&ps);

    assert_int_equal(http_dispatch(r), HTTP_DONE);
    assert_int_equal(r->res.status, 101);
    assert_non_null(r->ws_route);
    size_t vl;
    const char *v = http_res_find_header(&r->res, "sec-websocket-accept", &vl);
    assert_memory_equal(v, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", vl);
    v = http_res_find_header(&r->res, "sec-websocket-protocol", &vl);
    assert_memory_equal(v, "echo", vl);
    thz_buf out = {0};
    assert_int_equal(http_serialize(r, r->keep_alive, &out), THZ_OK);
    assert_memory_equal(out.p, "HTTP/1.1 101 Switching Protocols\r\n", 34);
    assert_non_null(memmem(out.p, out.len, "Connection: Upgrade\r\n", 21));
    assert_null(memmem(out.p, out.len, "Content-Length", 14));
    thz_buf_free(&out);

    http_ws *ws;
    opened = 0;
    wire.len = 0;
    assert_int_equal(http_ws_open(r, &mem_io, NULL, 0, 0, &ws), THZ_OK);
    assert_int_equal(opened, 1);
    assert_string_equal(http_ws_subprotocol(ws), "echo");
    http_request_free(r);
    http_ws_input(ws, in + used, n - used, 1);
    assert_int_equal(wire.len, 4);
    assert_memory_equal(wire.p, "\x81\x02hi", 4);
    assert_false(http_ws_done(ws));
    http_ws_free(ws);
    assert_int_equal(closed_code, 1006);
    thz_buf_free(&wire);
    http_routes_reset();
}

static void test_handshake_errors(void **state)
{
    http_routes_reset();
    assert_int_equal(http_route_ws("/ws", NULL, &echo, NULL), THZ_OK);
    static const struct {
        const char *req;
        int status;
    } cases[] = {
        {"GET /ws HTTP/1.1\r\n\r\n", 426},
        {"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 12\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
         426},
        {"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n",
         400},
        {"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
         "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
         400},
        {"POST /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
         405},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        http_parser ps;
        http_parser_init(&ps);
        size_t used;
        http_request *r = NULL;
        assert_int_equal(
            http_parse(&ps, (const uint8_t *)cases[i].req, strlen(cases[i].req), &used, &r),
            THZ_OK);
        http_parser_free(&ps);
        http_dispatch(r);
        assert_int_equal(r->res.status, cases[i].status);
        assert_null(r->ws_route);
        http_request_free(r);
    }
    http_routes_reset();
}

static void test_frames(void **state)
{
    http_ws *ws;
    wire.len = 0;
    closed_code = 0;
    assert_int_equal(http_ws_new(&echo, NULL, "", &mem_io, NULL, 0, 0, &ws), THZ_OK);
    uint8_t in[2048];
    size_t n = 0;
    /* fragmented text with a ping in between, fed one byte at a time */
    n += frame(in + n, 0x01, "ab", 2);
    n += frame(in + n, 0x89, "p", 1);
    n += frame(in + n, 0x80, "cd", 2);
    for (size_t i = 0; i < n; i++) http_ws_input(ws, in + i, 1, 1);
    assert_int_equal(wire.len, 3 + 6);
    assert_memory_equal(wire.p,
                        "\x8a\x01p\x81\x04"
                        "abcd",
                        9);
    /* back-pressure: the connection holds too much, sends are refused */
    limit_unsent = HTTP_WS_MAX_UNSENT + 1;
    assert_int_equal(http_ws_send(ws, HTTP_WS_TEXT, "x", 1), THZ_EQUOTA);
    limit_unsent = 0;
    assert_int_equal(http_ws_send(ws, 7, "x", 1), THZ_EINVAL);
    /* invalid UTF-8 closes with 1007 */
    wire.len = 0;
    n = frame(in, 0x81, "\xc3\x28", 2);
    http_ws_input(ws, in, n, 2);
    assert_true(wire.len >= 4);
    assert_int_equal(wire.p[0], 0x88);
    assert_int_equal(wire.p[2] << 8 | wire.p[3], 1007);
    assert_int_equal(http_ws_send(ws, HTTP_WS_TEXT, "x", 1), THZ_EPROTO);
    assert_true(http_ws_done(ws));
    assert_int_equal(closed_code, 1007);
    http_ws_free(ws);

    /* the peer's close is answered with its code */
    wire.len = 0;
    assert_int_equal(http_ws_new(&echo, NULL, "", &mem_io, NULL, 0, 0, &ws), THZ_OK);
    n = frame(in, 0x88, "\x0f\xa1", 2);
    http_ws_input(ws, in, n, 1);
    assert_memory_equal(wire.p, "\x88\x02\x0f\xa1", 4);
    assert_true(http_ws_done(ws));
    assert_int_equal(closed_code, 4001);
    http_ws_free(ws);

    /* silence: ping, then close 1001, then done after the close timeout */
    wire.len = 0;
    assert_int_equal(http_ws_new(&echo, NULL, "", &mem_io, NULL, 0, 1, &ws), THZ_OK);
    http_ws_tick(ws, 2 + HTTP_WS_PING_MS);
    assert_memory_equal(wire.p, "\x89\x00", 2);
    http_ws_tick(ws, 2 + HTTP_WS_IDLE_TIMEOUT_MS);
    assert_int_equal(wire.p[2], 0x88);
    assert_false(http_ws_done(ws));
    http_ws_tick(ws, 3 + HTTP_WS_IDLE_TIMEOUT_MS + HTTP_WS_CLOSE_TIMEOUT_MS);
    assert_true(http_ws_done(ws));
    assert_int_equal(closed_code, 1001);
    http_ws_free(ws);
    thz_buf_free(&wire);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_upgrade_split_and_handshake),
        cmocka_unit_test(test_handshake_errors),
        cmocka_unit_test(test_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
