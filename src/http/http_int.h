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
    bool upgrade;    /* an Upgrade/CONNECT request: answered, then closed */
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
    void *conn; /* server.c: the connection (NULL in tests) */
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

/* api_broker.c: registers /api/v1/health, /api/v1/broker/stats and
 * /api/v1/topics/{topic...}. a may be NULL only in unit tests that do not
 * publish. */
void http_api_register(auth *a);

#endif
