/* ws.c - WebSocket (RFC 6455) on HTTP connections: the opening handshake as
 * a route handler, then frames through wslay's event API with in-memory
 * callbacks (bytes in from the connection's reads, frames out into its output
 * buffer), limits, timeouts and the close handshake. The socket side stays in
 * server.c; this file never touches a socket, so the fuzzer can drive it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <wslay/wslay.h>

#include "core/base64.h"
#include "http/http_int.h"

#define WS_GUID      "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_PROTO_MAX 64 /* longest subprotocol name we echo */

typedef struct ws_route {
    const char *subprotocols;
    http_ws_handler h;
    void *ctx;
} ws_route;

static ws_route ws_routes[HTTP_WS_MAX_ROUTES];
static int nws_routes;

struct http_ws {
    wslay_event_context_ptr ev;
    http_ws_handler h;
    void *ctx, *user;
    const http_ws_io *io;
    void *conn;
    int thread;
    const uint8_t *in; /* the bytes being fed (http_ws_input) */
    size_t nin;
    size_t queued; /* bytes queued in wslay, not yet given to io->write (approximate) */
    uint64_t now_ms, last_in_ms, close_sent_ms;
    bool pinged, closing, failed, closed_cb;
    char proto[WS_PROTO_MAX + 1];
};

/* ---- pure helpers ---- */

void http_ws_accept_key(const char *key, char out[29])
{
    char buf[128];
    int n = snprintf(buf, sizeof buf, "%.*s%s", 64, key, WS_GUID);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(buf, (size_t)n, md, &mdlen, EVP_sha1(), NULL);
    EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen); /* 20 bytes: 28 chars + NUL */
}

bool http_ws_key_ok(const char *key)
{
    /* the base64 of 16 bytes: 24 characters */
    uint8_t raw[16];
    return key && strlen(key) == 24 && thz_b64_decode(key, 24, raw, sizeof raw) == 16;
}

bool http_utf8_ok(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i < len) return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

/* ---- the handshake (a route handler) ---- */

static http_result handshake(http_request *req, http_response *res, void *ctx)
{
    const ws_route *rt = ctx;
    if (!http_req_header_has(req, "upgrade", "websocket")) {
        http_res_error(res, 426, "upgrade_required", "this resource speaks WebSocket only");
        http_res_header(res, "Upgrade", "websocket");
        return HTTP_DONE;
    }
    const char *why = NULL;
    if (req->method != HTTP_GET)
        why = "a WebSocket handshake is a GET request";
    else if (req->major != 1 || req->minor < 1)
        why = "a WebSocket handshake needs HTTP/1.1";
    else if (!req->upgrade || !http_req_header_has(req, "connection", "upgrade"))
        why = "a WebSocket handshake needs Connection: Upgrade";
    if (why) {
        http_res_error(res, 400, "bad_handshake", why);
        return HTTP_DONE;
    }
    const char *ver = http_req_header(req, "sec-websocket-version");
    if (!ver || strcmp(ver, "13") != 0) {
        http_res_error(res, 426, "unsupported_websocket_version",
                       "only WebSocket version 13 is supported");
        http_res_header(res, "Sec-WebSocket-Version", "13");
        return HTTP_DONE;
    }
    const char *key = http_req_header(req, "sec-websocket-key");
    if (!http_ws_key_ok(key)) {
        http_res_error(res, 400, "bad_handshake",
                       "Sec-WebSocket-Key must be the base64 of 16 bytes");
        return HTTP_DONE;
    }
    /* Browsers do not apply CORS to WebSockets; when origins are configured
     * the same list decides who may open one. */
    if (http_cors_enabled() && http_req_header(req, "origin") && !http_cors_allowed(req)) {
        http_res_error(res, 403, "origin_not_allowed",
                       "this origin may not open WebSockets (see cors-origins)");
        return HTTP_DONE;
    }
    char proto[WS_PROTO_MAX + 1] = "";
    const char *offered = http_req_header(req, "sec-websocket-protocol"), *it;
    size_t n;
    while (rt->subprotocols && offered && !proto[0] && http_list_next(&offered, &it, &n)) {
        if (n > WS_PROTO_MAX) continue;
        memcpy(proto, it, n);
        proto[n] = 0;
        if (!http_list_has(rt->subprotocols, proto)) proto[0] = 0;
    }
    char accept[29];
    http_ws_accept_key(key, accept);
    http_res_status(res, 101);
    thz_err rc = http_res_header(res, "Upgrade", "websocket");
    if (!rc) rc = http_res_header(res, "Sec-WebSocket-Accept", accept);
    if (!rc && proto[0]) rc = http_res_header(res, "Sec-WebSocket-Protocol", proto);
    if (rc) {
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
        return HTTP_DONE;
    }
    req->ws_route = rt;
    return HTTP_DONE;
}

thz_err http_route_ws(const char *pattern, const char *subprotocols, const http_ws_handler *h,
                      void *ctx)
{
    if (nws_routes == HTTP_WS_MAX_ROUTES || !h) return THZ_EINVAL;
    ws_route *rt = &ws_routes[nws_routes];
    rt->subprotocols = subprotocols;
    rt->h = *h;
    rt->ctx = ctx;
    thz_err rc = http_route(HTTP_GET, pattern, handshake, rt);
    if (rc == THZ_OK) nws_routes++;
    return rc;
}

/* ---- wslay callbacks ---- */

static ssize_t recv_cb(wslay_event_context_ptr ev, uint8_t *buf, size_t len, int flags, void *ud)
{
    http_ws *ws = ud;
    if (ws->nin == 0) {
        wslay_event_set_error(ev, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < ws->nin ? len : ws->nin;
    memcpy(buf, ws->in, n);
    ws->in += n;
    ws->nin -= n;
    return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ev, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    http_ws *ws = ud;
    if (ws->io->unsent(ws->conn) > HTTP_MAX_OUTBUF) {
        wslay_event_set_error(ev, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (ws->io->write(ws->conn, data, len) != THZ_OK) {
        wslay_event_set_error(ev, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    ws->queued = ws->queued > len ? ws->queued - len : 0;
    return (ssize_t)len;
}

static void close_with(http_ws *ws, uint16_t code, const char *reason)
{
    if (ws->closing) return;
    ws->closing = true;
    ws->close_sent_ms = ws->now_ms;
    size_t n = reason ? strlen(reason) : 0;
    if (n > 123) n = 123; /* a control frame's payload is at most 125 bytes */
    if (wslay_event_queue_close(ws->ev, code, (const uint8_t *)reason, n) != 0) ws->failed = true;
}

static void on_msg_cb(wslay_event_context_ptr ev, const struct wslay_event_on_msg_recv_arg *arg,
                      void *ud)
{
    http_ws *ws = ud;
    if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        ws->closing = true; /* wslay answers with the same code */
        if (!ws->close_sent_ms) ws->close_sent_ms = ws->now_ms;
        return;
    }
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME) return;
    if (ws->closing) return; /* data after our close frame is dropped */
    if (arg->opcode == WSLAY_TEXT_FRAME && !http_utf8_ok(arg->msg, arg->msg_length)) {
        close_with(ws, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, "text is not valid UTF-8");
        wslay_event_shutdown_read(ev);
        return;
    }
    if (ws->h.on_message) ws->h.on_message(ws, arg->opcode, arg->msg, arg->msg_length, ws->ctx);
}

static const struct wslay_event_callbacks callbacks = {
    .recv_callback = recv_cb,
    .send_callback = send_cb,
    .on_msg_recv_callback = on_msg_cb,
};

/* ---- lifecycle ---- */

thz_err http_ws_new(const http_ws_handler *h, void *ctx, const char *proto, const http_ws_io *io,
                    void *conn, int thread, uint64_t now_ms, http_ws **out)
{
    *out = NULL;
    http_ws *ws = calloc(1, sizeof *ws);
    if (!ws) return THZ_ENOMEM;
    if (wslay_event_context_server_init(&ws->ev, &callbacks, ws) != 0) {
        free(ws);
        return THZ_ENOMEM;
    }
    wslay_event_config_set_max_recv_msg_length(ws->ev, HTTP_WS_MAX_MESSAGE);
    ws->h = *h;
    ws->ctx = ctx;
    ws->io = io;
    ws->conn = conn;
    ws->thread = thread;
    ws->now_ms = ws->last_in_ms = now_ms;
    snprintf(ws->proto, sizeof ws->proto, "%s", proto ? proto : "");
    *out = ws;
    if (ws->h.on_open) ws->h.on_open(ws, ws->ctx);
    http_ws_flush(ws);
    return THZ_OK;
}

thz_err http_ws_open(const http_request *req, const http_ws_io *io, void *conn, int thread,
                     uint64_t now_ms, http_ws **out)
{
    const ws_route *rt = req->ws_route;
    char proto[WS_PROTO_MAX + 1] = "";
    size_t n = 0;
    const char *p = http_res_find_header(&req->res, "sec-websocket-protocol", &n);
    if (p && n <= WS_PROTO_MAX) memcpy(proto, p, n), proto[n] = 0;
    return http_ws_new(&rt->h, rt->ctx, proto, io, conn, thread, now_ms, out);
}

static void call_on_close(http_ws *ws, uint16_t fallback)
{
    if (ws->closed_cb) return;
    ws->closed_cb = true;
    ws->closing = true;
    uint16_t code = fallback;
    if (wslay_event_get_close_received(ws->ev)) {
        code = wslay_event_get_status_code_received(ws->ev);
        if (code == 0 || code == WSLAY_CODE_NO_STATUS_RCVD) code = 1005;
    } else if (wslay_event_get_close_sent(ws->ev)) {
        code = wslay_event_get_status_code_sent(ws->ev);
    }
    if (ws->h.on_close) ws->h.on_close(ws, code, ws->ctx);
}

void http_ws_free(http_ws *ws)
{
    if (!ws) return;
    call_on_close(ws, WSLAY_CODE_ABNORMAL_CLOSURE);
    wslay_event_context_free(ws->ev);
    free(ws);
}

void http_ws_flush(http_ws *ws)
{
    if (ws->failed || !wslay_event_want_write(ws->ev)) return;
    if (wslay_event_send(ws->ev) != 0) ws->failed = true;
    if (wslay_event_get_queued_msg_count(ws->ev) == 0) ws->queued = 0; /* no drift */
}

void http_ws_input(http_ws *ws, const uint8_t *p, size_t n, uint64_t now_ms)
{
    ws->now_ms = now_ms;
    if (n) {
        ws->last_in_ms = now_ms;
        ws->pinged = false;
    }
    if (!ws->failed && wslay_event_want_read(ws->ev)) {
        ws->in = p;
        ws->nin = n;
        if (wslay_event_recv(ws->ev) != 0) ws->failed = true;
        ws->in = NULL;
        ws->nin = 0;
    }
    http_ws_flush(ws);
}

size_t http_ws_queued(const http_ws *ws)
{
    return ws->queued;
}

bool http_ws_done(http_ws *ws)
{
    bool done = ws->failed;
    if (!done && ws->closing && ws->close_sent_ms &&
        ws->now_ms - ws->close_sent_ms > HTTP_WS_CLOSE_TIMEOUT_MS)
        done = true;
    /* both directions finished: our close frame is out, the peer's is in
     * (or reading stopped after a protocol error or an oversized message) */
    if (!done && !wslay_event_want_read(ws->ev) && !wslay_event_want_write(ws->ev)) done = true;
    if (done) call_on_close(ws, WSLAY_CODE_ABNORMAL_CLOSURE);
    return done;
}

void http_ws_tick(http_ws *ws, uint64_t now_ms)
{
    ws->now_ms = now_ms;
    if (ws->closing || ws->failed) return;
    uint64_t quiet = now_ms - ws->last_in_ms;
    if (quiet > HTTP_WS_IDLE_TIMEOUT_MS) {
        close_with(ws, WSLAY_CODE_GOING_AWAY, "idle timeout");
    } else if (quiet > HTTP_WS_PING_MS && !ws->pinged) {
        struct wslay_event_msg m = {WSLAY_PING, NULL, 0};
        if (wslay_event_queue_msg(ws->ev, &m) != 0) ws->failed = true;
        ws->pinged = true;
    }
    http_ws_flush(ws);
}

/* ---- the public API (http.h) ---- */

thz_err http_ws_send(http_ws *ws, int opcode, const void *p, size_t n)
{
    if (opcode != HTTP_WS_TEXT && opcode != HTTP_WS_BINARY) return THZ_EINVAL;
    if (ws->closing || ws->failed || !wslay_event_get_write_enabled(ws->ev)) return THZ_EPROTO;
    if (ws->queued + ws->io->unsent(ws->conn) > HTTP_WS_MAX_UNSENT) return THZ_EQUOTA;
    struct wslay_event_msg m = {(uint8_t)opcode, p, n};
    int rc = wslay_event_queue_msg(ws->ev, &m);
    if (rc == WSLAY_ERR_NOMEM) return THZ_ENOMEM;
    if (rc != 0) return THZ_EPROTO;
    ws->queued += n + 10; /* payload and the largest frame header */
    http_ws_flush(ws);
    return THZ_OK;
}

size_t http_ws_unsent(const http_ws *ws)
{
    return ws->queued + ws->io->unsent(ws->conn);
}

void http_ws_close(http_ws *ws, uint16_t code, const char *reason)
{
    close_with(ws, code, reason);
    http_ws_flush(ws);
}

void http_ws_set_user(http_ws *ws, void *user)
{
    ws->user = user;
}

void *http_ws_user(const http_ws *ws)
{
    return ws->user;
}

const char *http_ws_subprotocol(const http_ws *ws)
{
    return ws->proto;
}

int http_ws_thread(const http_ws *ws)
{
    return ws->thread;
}

void http_ws_reading(http_ws *ws, bool on)
{
    if (ws->io->set_reading) ws->io->set_reading(ws->conn, on);
}

const char *http_ws_peer(const http_ws *ws)
{
    return ws->io->peer ? ws->io->peer(ws->conn) : "";
}

thz_err http_ws_move(http_ws *ws, int target, void (*fn)(http_ws *ws, void *arg), void *arg)
{
    if (!ws->io->move || ws->closing || ws->failed) return THZ_EINVAL;
    return ws->io->move(ws->conn, target, fn, arg);
}

void http_ws_rebind(http_ws *ws, void *conn, int thread, uint64_t now_ms)
{
    ws->conn = conn;
    ws->thread = thread;
    /* the new loop's clock */
    ws->now_ms = ws->last_in_ms = now_ms;
    if (ws->close_sent_ms) ws->close_sent_ms = now_ms;
}
