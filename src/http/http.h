/* http.h - the HTTP/1.1 server of thinghz: connections on the same I/O
 * threads and loops as MQTT, requests parsed by llhttp, a router with path
 * parameters, and a response builder whose reply may come from another thread.
 *
 * Lifecycle: net_init, mqtt_start, then http_start (registers the routes of
 * the built-in API, the listener and the thread hooks), then net_start. The
 * net on_stop hook closes every HTTP connection at shutdown. */
#ifndef THZ_HTTP_H
#define THZ_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "auth/auth.h"
#include "core/config.h"
#include "core/err.h"

/* Limits. Not settings yet: they become config entries when a later slice
 * needs to tune them. Every one is answered with a JSON error, see below. */
#define HTTP_MAX_HEADER_BYTES     (16 * 1024)   /* request line + headers: 431 */
#define HTTP_MAX_HEADERS          100           /* header fields: 431 */
#define HTTP_MAX_URL              8192          /* request target: 414 */
#define HTTP_MAX_BODY             (1024 * 1024) /* decoded body: 413 */
#define HTTP_REQUEST_TIMEOUT_MS   30000 /* first byte to last byte of a request: 408, close */
#define HTTP_IDLE_TIMEOUT_MS      60000 /* keep-alive connection with no request: closed */
#define HTTP_MAX_CONNS_PER_THREAD 4096  /* more are answered 503 and closed */
#define HTTP_MAX_OUTBUF           (4 * 1024 * 1024) /* unsent output before reading pauses */
#define HTTP_MAX_PARAMS           4                 /* path parameters per route */

/* The environment variable THINGHZ_HTTP_REQUEST_TIMEOUT_MS overrides the
 * request timeout (tests use it to check slow clients are dropped quickly). */

/* Starts the HTTP side: registers the built-in API routes (health, broker
 * stats, publish), and when cfg->http_listen is non-empty the listeners and
 * thread hooks. cfg and a must outlive the daemon's I/O threads. */
thz_err http_start(const thz_config *cfg, auth *a);

/* Counters of the server since start, and what is open now (for /metrics). */
typedef struct http_stats {
    uint64_t connections;         /* open now, WebSockets included */
    uint64_t connections_total;   /* accepted */
    uint64_t connections_refused; /* answered 503 at HTTP_MAX_CONNS_PER_THREAD */
    uint64_t websockets;          /* open now */
    uint64_t websockets_total;    /* upgraded */
    uint64_t responses[6];        /* by status class: [1] 1xx .. [5] 5xx, [0] other */
    uint64_t bytes_in, bytes_out;
} http_stats;
/* Sums the I/O threads' counters (relaxed reads, callable from any thread). */
void http_get_stats(http_stats *st);

/* ---- requests ---- */

typedef struct http_request http_request;

/* The method as llhttp numbers it (llhttp_method_t: HTTP_GET, HTTP_POST...). */
int http_req_method(const http_request *req);
/* The path (before '?'), raw (not percent-decoded), NUL-terminated. Owned by
 * the request; valid until the request is answered. */
const char *http_req_path(const http_request *req);
/* The first value of header `name` (case-insensitive), NUL-terminated, or
 * NULL. Owned by the request, valid until it is answered. */
const char *http_req_header(const http_request *req, const char *name);
/* The value of query parameter `name`, percent-decoded into out (NUL-
 * terminated). Returns 1 if found, 0 if absent (out untouched), -1 if the
 * value does not fit in outlen or has a bad escape. */
int http_req_query(const http_request *req, const char *name, char *out, size_t outlen);
/* The raw query string (after '?', not decoded; "" when none), for
 * parameters that repeat (match[]=...&match[]=...). Owned by the request. */
const char *http_req_query_string(const http_request *req);
/* The path parameter `name` of the matched route ({name} or {name...}),
 * percent-decoded and NUL-terminated, or NULL. Owned by the request. */
const char *http_req_param(const http_request *req, const char *name);
/* The weight (0..1000) the request's Accept-Encoding gives content coding
 * `coding` (RFC 9110 section 12.5.3; "gzip" also matches "x-gzip"): 0 when
 * not acceptable or the header is absent. */
int http_req_accept_q(const http_request *req, const char *coding);
/* The address of the client that sent req (IPv4 or IPv6) into *out; valid
 * while the handler runs on the connection's thread. THZ_EINVAL for a request
 * without a connection (unit tests), THZ_EIO if the socket has none. */
struct sockaddr_storage;
thz_err http_req_peer(const http_request *req, struct sockaddr_storage *out);
/* The decoded body (chunked already joined); *len gets its length. Owned by
 * the request. The bytes are followed by a NUL that is not counted. */
const uint8_t *http_req_body(const http_request *req, size_t *len);

/* ---- responses ---- */

/* The response of a request; lives inside the request. */
typedef struct http_response http_response;

void http_res_status(http_response *res, int status);
/* Adds a header line; name and value are copied. Content-Length, Date,
 * Server and Connection are written by the server, never by handlers. */
thz_err http_res_header(http_response *res, const char *name, const char *value);
/* Appends n bytes to the body (copied). */
thz_err http_res_body(http_response *res, const void *p, size_t n);
/* Sets status, Content-Type: application/json and j printed (unformatted) as
 * the body. j stays owned by the caller. */
thz_err http_res_json(http_response *res, int status, const cJSON *j);
/* The error shape of the whole API: status and
 * {"error": {"code": code, "message": message}}. Strings are copied. */
void http_res_error(http_response *res, int status, const char *code, const char *message);

/* ---- routes and handlers ---- */

typedef enum http_result {
    HTTP_DONE,   /* the response is complete; the server sends it */
    HTTP_PENDING /* the handler keeps req and calls http_reply later */
} http_result;

/* Runs on the connection's I/O thread and must not block. res belongs to
 * req. On HTTP_PENDING the handler (or whoever it hands req to, on any thread)
 * owns req until it calls http_reply(req) exactly once; the I/O thread does
 * not touch req meanwhile and reads no further request of that connection, so
 * responses stay in request order. */
typedef http_result (*http_handler_fn)(http_request *req, http_response *res, void *ctx);

/* Registers a route (before net_start; not thread-safe). method is an
 * llhttp method number. pattern is a path of literal segments, `{name}`
 * (one segment) and, only last, `{name...}` (the rest of the path, slashes
 * included). pattern must stay valid for the process lifetime (a literal). A
 * GET route also answers HEAD (body omitted). */
thz_err http_route(int method, const char *pattern, http_handler_fn fn, void *ctx);

/* Completes a request whose handler returned HTTP_PENDING; callable from any
 * thread. Fill http_req_response(req) first. The response is sent by the
 * connection's thread (or dropped if the client is gone), and req is freed:
 * it must not be used after this call. */
void http_reply(http_request *req);
/* The response of req (for handlers that answer later). */
http_response *http_req_response(http_request *req);

/* ---- WebSocket (RFC 6455) ----
 *
 * A WebSocket route answers the opening handshake of GET requests on its
 * pattern (validated as RFC 6455 section 4.2 says; failures are JSON errors:
 * 426 without `Upgrade: websocket` or with a version other than 13, 400 for
 * other malformed handshakes, 403 for an Origin that cors-origins does not
 * allow when it is set, 405 for other methods). After the 101 the connection
 * is a WebSocket: frames are parsed by wslay, pings are answered with pongs,
 * fragmented messages are joined, and the handler sees whole messages.
 *
 * Threads: every callback runs on the connection's I/O thread, and every
 * http_ws_* function must be called there too (inside a callback, or from a
 * task posted with net_post(http_ws_thread(ws), ...)). A ws pointer is valid
 * from on_open until on_close returns; whoever keeps it elsewhere must
 * forget it in on_close (and a task posted from another thread must look it
 * up by an id it owns, not trust a stale pointer).
 *
 * Timeouts: a connection from which nothing (not even a pong) was received
 * for HTTP_WS_PING_MS is pinged; after HTTP_WS_IDLE_TIMEOUT_MS of silence it
 * is closed with 1001. A close handshake the peer does not finish within
 * HTTP_WS_CLOSE_TIMEOUT_MS ends with the TCP connection closed. */

#define HTTP_WS_MAX_MESSAGE      (1024 * 1024)         /* inbound message (joined): close 1009 */
#define HTTP_WS_MAX_UNSENT       (2 * HTTP_MAX_OUTBUF) /* http_ws_send refuses above this */
#define HTTP_WS_PING_MS          30000                 /* silence before the server pings */
#define HTTP_WS_IDLE_TIMEOUT_MS  75000                 /* silence before the server closes (1001) */
#define HTTP_WS_CLOSE_TIMEOUT_MS 5000                  /* the peer's answer to our close frame */
#define HTTP_WS_MAX_ROUTES       16

enum { HTTP_WS_TEXT = 1, HTTP_WS_BINARY = 2 }; /* opcodes of data messages */

typedef struct http_ws http_ws;

/* Every member may be NULL. on_message gets a whole message (text is valid
 * UTF-8, checked before; invalid text closes the connection with 1007); p is
 * owned by the library and valid during the call only. on_close is called
 * exactly once per opened WebSocket, when it ends for any reason: code is the
 * peer's close code (1005 if its close frame had none), else the code we sent,
 * else 1006 (the connection dropped without a close handshake). */
typedef struct http_ws_handler {
    void (*on_open)(http_ws *ws, void *ctx);
    void (*on_message)(http_ws *ws, int opcode, const uint8_t *p, size_t n, void *ctx);
    void (*on_close)(http_ws *ws, uint16_t code, void *ctx);
} http_ws_handler;

/* Registers a WebSocket route (before net_start; not thread-safe) with the
 * same pattern syntax as http_route. subprotocols is a comma-separated list
 * of the subprotocols the route speaks, or NULL: the first of the client's
 * Sec-WebSocket-Protocol values that is in the list is chosen and echoed;
 * if none is, the handshake succeeds without one (RFC 6455 4.2.2) and the
 * client decides. pattern and subprotocols must stay valid for the process
 * lifetime (literals); *h is copied. */
thz_err http_route_ws(const char *pattern, const char *subprotocols, const http_ws_handler *h,
                      void *ctx);

/* Queues one message (opcode HTTP_WS_TEXT or HTTP_WS_BINARY; p copied).
 * Returns THZ_EQUOTA when more than HTTP_WS_MAX_UNSENT bytes already wait
 * for the peer (a slow reader: drop the message or close), THZ_EPROTO after
 * the close handshake began, THZ_EINVAL for another opcode. */
thz_err http_ws_send(http_ws *ws, int opcode, const void *p, size_t n);
/* Bytes queued by http_ws_send that the peer has not taken yet. */
size_t http_ws_unsent(const http_ws *ws);
/* Starts the close handshake with code (1000 normal, 1001 going away,
 * 1008 policy...) and an optional reason (at most 123 bytes, UTF-8; longer
 * is cut). Further sends fail; on_close follows when the peer answers or
 * the close timeout passes. */
void http_ws_close(http_ws *ws, uint16_t code, const char *reason);
/* An opaque pointer for the route's use; NULL until set. */
void http_ws_set_user(http_ws *ws, void *user);
void *http_ws_user(const http_ws *ws);
/* The negotiated subprotocol, or "" (owned by ws). */
const char *http_ws_subprotocol(const http_ws *ws);
/* The I/O thread of the connection (for net_post). */
int http_ws_thread(const http_ws *ws);
/* Stops (on false) or restarts reading from the peer, for a user that cannot
 * take more now (MQTT over WebSocket: back-pressure, a password check).
 * Messages already read may still arrive: at most one read's worth. */
void http_ws_reading(http_ws *ws, bool on);
/* The peer's "address:port" ("" if unknown); owned by ws. */
const char *http_ws_peer(const http_ws *ws);
/* Moves the WebSocket, its connection and socket to I/O thread target (MQTT
 * over WebSocket: a client resuming a session that lives on another thread,
 * see docs/ARCHITECTURE.md). Call it from a callback of ws. Messages already
 * read keep arriving on this thread until the current read is processed;
 * then nothing happens on this thread any more, and fn(ws, arg) runs on
 * target, from where ws belongs to target (http_ws_thread says so). If the
 * move cannot be done, on_close is called instead (on one thread or the
 * other). Returns THZ_EINVAL (a move is already pending, the connection is
 * closing, a bad target) without calling anything. */
thz_err http_ws_move(http_ws *ws, int target, void (*fn)(http_ws *ws, void *arg), void *arg);

#endif
