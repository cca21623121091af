/* fuzz_ws_frame.c - libFuzzer target for the WebSocket frame path: the
 * input (after its first byte, which picks the read sizes) is the byte
 * stream a client sends after the handshake, fed through http_ws_input to
 * wslay with an echo handler and an in-memory connection whose output is
 * drained after every read; ticks run the ping, idle and close timers. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_int.h"

static thz_buf wire;

static thz_err mem_write(void *conn, const void *p, size_t n)
{
    return thz_buf_append(&wire, p, n);
}

static size_t mem_unsent(void *conn)
{
    return wire.len;
}

static const http_ws_io mem_io = {mem_write, mem_unsent, NULL, NULL, NULL};

static int closes;

static void on_message(http_ws *ws, int op, const uint8_t *p, size_t n, void *ctx)
{
    if (op != HTTP_WS_TEXT && op != HTTP_WS_BINARY) abort();
    if (op == HTTP_WS_TEXT && !http_utf8_ok(p, n)) abort();
    if (n > HTTP_WS_MAX_MESSAGE) abort();
    http_ws_send(ws, op, p, n);
}

static void on_close(http_ws *ws, uint16_t code, void *ctx)
{
    closes++;
}

static const http_ws_handler echo = {NULL, on_message, on_close};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    if (n == 0) return 0;
    size_t step = (size_t)data[0] % 32 + 1; /* 1..32 bytes per read, 32 = all */
    data++;
    n--;
    http_ws *ws;
    closes = 0;
    wire.len = 0;
    if (http_ws_new(&echo, NULL, "", &mem_io, NULL, 0, 1, &ws) != THZ_OK) return 0;
    uint64_t now = 1;
    for (size_t off = 0; off < n;) {
        size_t k = step == 32 ? n - off : step;
        if (k > n - off) k = n - off;
        http_ws_input(ws, data + off, k, now);
        off += k;
        wire.len = 0; /* the socket took it */
        http_ws_flush(ws);
        if (http_ws_done(ws)) break;
        now += 100;
    }
    http_ws_tick(ws, now + HTTP_WS_PING_MS + 1);
    http_ws_tick(ws, now + HTTP_WS_IDLE_TIMEOUT_MS + 1);
    http_ws_tick(ws, now + HTTP_WS_IDLE_TIMEOUT_MS + HTTP_WS_CLOSE_TIMEOUT_MS + 2);
    if (!http_ws_done(ws)) abort(); /* the timers always end it */
    http_ws_free(ws);
    if (closes != 1) abort(); /* on_close exactly once */
    if (wire.cap > 64 * 1024 * 1024) abort();
    return 0;
}
