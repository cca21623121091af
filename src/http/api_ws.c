/* api_ws.c - GET /api/v1/ws/echo: a diagnostic WebSocket that sends every
 * text and binary message back unchanged (like websocket.org's echo
 * service), for checking that WebSockets get through proxies and load
 * balancers to thinghz. It needs no credentials and keeps no state. */
#include "http/http_int.h"

static void echo_message(http_ws *ws, int opcode, const uint8_t *p, size_t n, void *ctx)
{
    thz_err rc = http_ws_send(ws, opcode, p, n);
    /* A client that sends faster than it reads is told to come back later. */
    if (rc == THZ_EQUOTA)
        http_ws_close(ws, 1013, "the echo is not being read");
    else if (rc != THZ_OK && rc != THZ_EPROTO)
        http_ws_close(ws, 1011, "cannot echo");
}

void http_api_ws_register(void)
{
    static const http_ws_handler echo = {NULL, echo_message, NULL};
    /* "echo" is optional: clients that ask for it get it confirmed. */
    http_route_ws("/api/v1/ws/echo", "echo", &echo, NULL);
}
