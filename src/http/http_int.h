/* http_int.h - private to src/http/: the request and response structures,
 * the pure request parser (bytes in, requests out, no socket behind it), the
 * router's dispatch and the response serializer. */
#ifndef THZ_HTTP_INT_H
#define THZ_HTTP_INT_H

#include <llhttp.h>

#include "core/buf.h"
#include "http/http.h"

struct http_response {
    int status;
    thz_buf headers; /* "Name: value\r\n" lines */
    thz_buf body;
};

struct http_request {
    int method;
    uint8_t major, minor;
    bool keep_alive; /* llhttp_should_keep_alive: HTTP/1.0 and Connection rules */
    bool upgrade;    /* an Upgrade/CONNECT request: no HTTP follows it on the connection */
    thz_buf url;     /* request target, NUL-terminated */
    char *path;      /* inside url; '?' replaced by NUL */
    char *query;     /* inside url, after '?', or "" */
    thz_buf hdr;     /* "name\0value\0" for each header */
    uint32_t hoff[HTTP_MAX_HEADERS][2]; /* offsets of name and value in hdr */
    uint32_t nhdr;
    thz_buf body; /* NUL-terminated (not counted in len) */
    const char *pname[HTTP_MAX_PARAMS];
    char *pval[HTTP_MAX_PARAMS]; /* malloc'd, decoded */
    int nparam;
    http_response res;
    void *conn;                      /* server.c: the connection (NULL in tests) */
    const struct ws_route *ws_route; /* set with a 101: the WebSocket route accepted */
    struct http_request *next;
};

/* Frees req and everything it owns. NULL is fine. */
void http_request_free(http_request *req);

/* The incremental parser of one connection. */
typedef struct http_parser {
    llhttp_t p;
    http_request *cur; /* being parsed; owned by the parser */
    size_t hbytes;     /* request line + header bytes so far (limit) */
    int state;         /* which header part came last (private) */
    int err_status;    /* after an error: 400, 408, 413, 414, 417, 431 */
    const char *err_code, *err_msg;
    bool want_continue; /* Expect: 100-continue accepted for cur */
    bool in_message;    /* some byte of a request was seen and it is not complete */
    bool failed;
} http_parser;

void http_parser_init(http_parser *ps);
/* Frees the request being parsed, if any. */
void http_parser_free(http_parser *ps);

/* Parses data[0..n). Returns:
 * THZ_OK: a request is complete; *out gets it (the caller owns it and frees
 *   it with http_request_free) and *used how many bytes it took. Call again
 *   with the rest.
 * THZ_EAGAIN: all n bytes consumed (*used = n), no request complete yet.
 * THZ_EMALFORMED / THZ_ETOOBIG: the stream is bad; ps->err_status,
 *   err_code and err_msg say what to answer; the connection must close.
 * After each call, ps->want_continue says that the request being parsed
 * asked for 100-continue and its announced body is within limits (the caller
 * sends "100 Continue" and clears the flag). */
thz_err http_parse(http_parser *ps, const uint8_t *data, size_t n, size_t *used,
                   http_request **out);

/* Routes req: calls the handler or writes 404/405/400 into req->res. */
http_result http_dispatch(http_request *req);
/* Removes every route (tests). */
void http_routes_reset(void);

/* Appends the serialized response of req to out: status line, Date, Server,
 * Content-Length, Connection (close when !keep_alive), the handler's headers,
 * and the body unless the method is HEAD or the status has none. */
thz_err http_serialize(const http_request *req, bool keep_alive, thz_buf *out);
/* Appends a complete JSON error response (for errors before any request). */
thz_err http_serialize_error(int status, const char *code, const char *message, thz_buf *out);
/* The reason phrase of a status ("Not Found"); "Unknown" if none. */
const char *http_status_text(int status);

/* Percent-decodes s[0..n) into out (size >= n + 1), NUL-terminated; '+' is
 * kept unless plus_space. Returns the length, or -1 for a bad escape or an
 * encoded NUL. */
long http_pct_decode(const char *s, size_t n, char *out, bool plus_space);

/* The value of the first response header `name` (case-insensitive), not
 * NUL-terminated: *len gets its length (len may be NULL). Points into
 * res->headers; valid until the next header is added. NULL if absent. */
const char *http_res_find_header(const http_response *res, const char *name, size_t *len);
/* What every response goes through before http_serialize, whoever built it
 * (handler, router, async reply): gzip, then the CORS headers. */
void http_finish_response(http_request *req);

/* ---- header lists (cors.c) ---- */

/* Iterates a comma-separated list: sets *item and *n to the next non-empty
 * element with surrounding whitespace trimmed and advances *pp. Returns false
 * at the end. */
bool http_list_next(const char **pp, const char **item, size_t *n);
/* True if the list contains token (case-insensitive). list may be NULL. */
bool http_list_has(const char *list, const char *token);
/* True if any field line `name` of req contains token (Connection may be
 * sent as several lines). */
bool http_req_header_has(const http_request *req, const char *name, const char *token);

/* ---- CORS (cors.c) ---- */

/* Sets the cors-origins list (before the I/O threads start; the string must
 * outlive them). "" turns CORS off, "*" allows any origin. */
void http_cors_set(const char *list);
bool http_cors_enabled(void);
/* Pure: 0 if origin is not allowed by list (or either is empty), 1 if it is
 * listed, 2 if list is "*". Case-insensitive, exact otherwise. */
int http_cors_match(const char *list, const char *origin);
/* http_cors_match of req's Origin against the configured list. */
int http_cors_allowed(const http_request *req);
/* If CORS is on and req is a preflight (OPTIONS with Origin and
 * Access-Control-Request-Method), fills its response (204 with the
 * Access-Control-Allow-* headers, or 403 for an origin not allowed) and
 * returns true. */
bool http_cors_preflight(http_request *req);
/* Adds Access-Control-Allow-Origin (and -Credentials for a listed origin)
 * and Vary: Origin to a response when CORS is on. */
void http_cors_finish(http_request *req);

/* ---- gzip (gzip.c) ---- */

/* Pure: the weight (0..1000) that an Accept-Encoding value gives coding
 * ("gzip" also matches "x-gzip"); an explicit entry wins over "*"; absent
 * header or coding: 0. Elements with an invalid q are ignored. */
int http_accept_q(const char *accept, const char *coding);
/* True for a Content-Type worth compressing: text/ (any), application/json,
 * application/javascript, image/svg+xml (parameters ignored). */
bool http_gzip_type(const char *ctype, size_t n);
/* Appends the gzip of in[0..n) to out. Uses a per-thread deflate state. */
thz_err http_gzip(const uint8_t *in, size_t n, thz_buf *out);
/* Compresses req's response body when the client accepts gzip, the type is
 * textual, the body is >= 1 KiB, the status has a body and no
 * Content-Encoding is set; adds Content-Encoding and Vary. */
void http_gzip_finish(http_request *req);
/* Frees the calling thread's deflate state (thread stop; tests). */
void http_gzip_thread_end(void);

/* ---- WebSocket (ws.c) ---- */

/* Pure: Sec-WebSocket-Accept for key (base64(SHA-1(key + GUID))) into out
 * (29 bytes: 28 and a NUL). */
void http_ws_accept_key(const char *key, char out[29]);
/* Pure: true if key is the base64 of exactly 16 bytes (24 characters). */
bool http_ws_key_ok(const char *key);
/* Pure: true if p[0..n) is valid UTF-8 (no overlongs, surrogates, > U+10FFFF). */
bool http_utf8_ok(const uint8_t *p, size_t n);

/* How a WebSocket reaches its connection (server.c; a buffer in the fuzzer). */
typedef struct http_ws_io {
    /* Appends frame bytes to the connection's output. */
    thz_err (*write)(void *conn, const void *p, size_t n);
    /* Bytes of output not yet taken by the socket. */
    size_t (*unsent)(void *conn);
    /* Stops (false) or restarts reading the connection; may be NULL. */
    void (*set_reading)(void *conn, bool on);
    /* The peer's "address:port", owned by conn; may be NULL. */
    const char *(*peer)(void *conn);
    /* Asks for the connection to move to thread target (http_ws_move); may
     * be NULL (not supported). */
    thz_err (*move)(void *conn, int target, void (*fn)(http_ws *ws, void *arg), void *arg);
} http_ws_io;

/* After a move: ws now belongs to conn on thread. */
void http_ws_rebind(http_ws *ws, void *conn, int thread, uint64_t now_ms);

/* Creates the WebSocket of a connection whose 101 response to req (which
 * carries ws_route) was just serialized, and calls on_open. io must outlive
 * it. The caller owns *out and ends it with http_ws_free. */
thz_err http_ws_open(const http_request *req, const http_ws_io *io, void *conn, int thread,
                     uint64_t now_ms, http_ws **out);
/* The same without a request (the fuzzer): handler h with ctx, subprotocol
 * proto ("" for none). */
thz_err http_ws_new(const http_ws_handler *h, void *ctx, const char *proto, const http_ws_io *io,
                    void *conn, int thread, uint64_t now_ms, http_ws **out);
/* Feeds n bytes received from the peer (all are consumed) and writes what
 * became due (pongs, close frames, replies) within the output limit. */
void http_ws_input(http_ws *ws, const uint8_t *p, size_t n, uint64_t now_ms);
/* Moves queued frames to the output while it is under HTTP_MAX_OUTBUF
 * (after the socket drained some). */
void http_ws_flush(http_ws *ws);
/* Bytes queued in the WebSocket but not yet handed to io->write. */
size_t http_ws_queued(const http_ws *ws);
/* True when the WebSocket is over (close handshake complete, timed out or
 * failed): the caller flushes its output and closes the TCP connection.
 * on_close has been called by then. */
bool http_ws_done(http_ws *ws);
/* Pings, idle and close timeouts; call about once a second. */
void http_ws_tick(http_ws *ws, uint64_t now_ms);
/* Ends the WebSocket (calls on_close with 1006 if it was not called yet)
 * and frees it. NULL is fine. */
void http_ws_free(http_ws *ws);

/* api_ws.c: registers GET /api/v1/ws/echo. */
void http_api_ws_register(void);

/* api_broker.c: registers /api/v1/health, /api/v1/broker/stats and
 * /api/v1/topics/{topic...}. a may be NULL only in unit tests that do not
 * publish. */
void http_api_register(auth *a);

#endif
