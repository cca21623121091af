/* server.c - HTTP/1.1 connections on the I/O threads: read into the thread's
 * buffer, parse with http_parse, dispatch in request order, coalesce the
 * output of a batch and flush it at batch end, enforce the timeouts, and
 * close gracefully (flush, FIN, drain briefly) after an error. A connection
 * whose request was answered 101 becomes a WebSocket (ws.c) that shares the
 * output path, back-pressure and closing. On the HTTPS listener, TLS
 * (net_tls.h) sits between the socket and the rest: ciphertext in, the
 * plaintext parsed as usual; the output sealed just before it is written. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "http/http_int.h"
#include "net/net.h"
#include "net/net_tls.h"

#define LINGER_MS 2000  /* after an error response: read and discard this long */
#define DRAIN_MS  10000 /* a closing connection whose output does not drain */

typedef struct hworker hworker;

typedef struct hconn {
    uv_tcp_t *tcp;
    hworker *w; /* gone after the thread stops: use idx for posting */
    int idx;
    http_parser ps;
    thz_buf in;   /* input not yet parsed while processing is stopped */
    thz_buf out;  /* output of this batch */
    thz_buf wbuf; /* output handed to uv_write */
    uv_write_t *wreq;
    http_request *pending; /* answered asynchronously (HTTP_PENDING) */
    http_ws *ws;           /* after a 101: the connection is a WebSocket */
    net_tls *tls;          /* HTTPS: TLS state, owned; NULL on plain HTTP */
    int refs;              /* the handle + one per pending request */
    bool ws_paused;        /* the WebSocket's user stopped reading (http_ws_reading) */
    int move_to;           /* http_ws_move asked for this thread (move_fn set) */
    void (*move_fn)(http_ws *ws, void *arg);
    void *move_arg;
    bool reading, writing, dirty, closed;
    bool throttled; /* stopped: too much unsent output */
    bool draining;  /* no more requests: flush, then linger, then close */
    bool lingering; /* FIN sent; discarding input until EOF or LINGER_MS */
    bool in_req;    /* bytes of an unfinished request were read */
    uint64_t req_start_ms, idle_since_ms, drain_start_ms, accepted_ms;
    struct hconn *prev, *next;
    char peer[56]; /* "address:port", filled when first asked for */
} hconn;

struct hworker {
    int idx;
    uv_loop_t *loop;
    uv_timer_t tick;
    hconn *conns;
    uint32_t nconns;
    hconn **dirty;
    uint32_t ndirty, dcap;
    uint8_t rbuf[65536];
};

static hworker *W[NET_MAX_THREADS];

/* Counters per I/O thread, written by that thread only (a relaxed load and
 * store, no locked instruction), summed by http_get_stats. Static so that
 * they outlive the threads. */
typedef struct hstats {
    _Alignas(64) uint64_t conns, conns_total, refused, ws, ws_total, responses[6];
    uint64_t bytes_in, bytes_out;
} hstats;
static hstats S[NET_MAX_THREADS];

#define HSTAT_ADD(field, n)                                                                        \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (uint64_t)(n),        \
                     __ATOMIC_RELAXED)

static void count_response(int idx, int status)
{
    int k = status >= 100 && status < 600 ? status / 100 : 0;
    HSTAT_ADD(S[idx].responses[k], 1);
}

void http_get_stats(http_stats *st)
{
    memset(st, 0, sizeof *st);
    for (int i = 0; i < NET_MAX_THREADS; i++) {
        hstats *h = &S[i];
        st->connections += __atomic_load_n(&h->conns, __ATOMIC_RELAXED);
        st->connections_total += __atomic_load_n(&h->conns_total, __ATOMIC_RELAXED);
        st->connections_refused += __atomic_load_n(&h->refused, __ATOMIC_RELAXED);
        st->websockets += __atomic_load_n(&h->ws, __ATOMIC_RELAXED);
        st->websockets_total += __atomic_load_n(&h->ws_total, __ATOMIC_RELAXED);
        for (int k = 0; k < 6; k++)
            st->responses[k] += __atomic_load_n(&h->responses[k], __ATOMIC_RELAXED);
        st->bytes_in += __atomic_load_n(&h->bytes_in, __ATOMIC_RELAXED);
        st->bytes_out += __atomic_load_n(&h->bytes_out, __ATOMIC_RELAXED);
    }
}

thz_err http_req_peer(const http_request *req, struct sockaddr_storage *out)
{
    const hconn *c = req->conn;
    if (!c || !c->tcp) return THZ_EINVAL;
    int len = (int)sizeof *out;
    memset(out, 0, sizeof *out);
    return uv_tcp_getpeername(c->tcp, (struct sockaddr *)out, &len) == 0 ? THZ_OK : THZ_EIO;
}
static uint64_t request_timeout_ms = HTTP_REQUEST_TIMEOUT_MS;

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void process(hconn *c, const uint8_t *p, size_t n);
static void ws_after(hconn *c);
static void ws_move_now(hconn *c);

static uint64_t now_ms(hconn *c)
{
    return uv_now(c->w->loop);
}

static void conn_unref(hconn *c)
{
    if (--c->refs > 0) return;
    http_parser_free(&c->ps);
    net_tls_free(c->tls);
    thz_buf_free(&c->in);
    thz_buf_free(&c->out);
    thz_buf_free(&c->wbuf);
    free(c);
}

static void on_closed(uv_handle_t *h)
{
    hconn *c = h->data;
    free(h);
    conn_unref(c);
}

static void conn_close(hconn *c)
{
    if (c->closed) return;
    hworker *w = c->w;
    c->closed = true;
    if (c->dirty) {
        for (uint32_t i = 0; i < w->ndirty; i++)
            if (w->dirty[i] == c) {
                w->dirty[i] = w->dirty[--w->ndirty];
                break;
            }
        c->dirty = false;
    }
    if (c->prev)
        c->prev->next = c->next;
    else if (w->conns == c)
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    w->nconns--;
    HSTAT_ADD(S[c->idx].conns, -1);
    if (c->ws) HSTAT_ADD(S[c->idx].ws, -1);
    http_ws_free(c->ws); /* on_close, if the close handshake did not happen */
    c->ws = NULL;
    uv_read_stop((uv_stream_t *)c->tcp);
    uv_close((uv_handle_t *)c->tcp, on_closed);
}

static void mark_dirty(hconn *c)
{
    if (c->dirty || c->closed) return;
    hworker *w = c->w;
    if (w->ndirty == w->dcap) {
        uint32_t cap = w->dcap ? w->dcap * 2 : 64;
        hconn **a = realloc(w->dirty, cap * sizeof *a);
        if (!a) return; /* flushed by the next write completion or tick */
        w->dirty = a;
        w->dcap = cap;
    }
    w->dirty[w->ndirty++] = c;
    c->dirty = true;
}

/* Reads when there is room for more work: not waiting for an async reply,
 * not holding too much output, not closing (except to drain while lingering). */
static void update_reading(hconn *c)
{
    if (c->closed) return;
    bool want = c->lingering || (!c->pending && !c->throttled && !c->draining && !c->ws_paused);
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read) == 0) c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)c->tcp);
        c->reading = false;
    }
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    hconn *c = req->data;
    free(req);
    if (c->closed) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    c->lingering = true;
    c->drain_start_ms = now_ms(c);
    update_reading(c);
}

/* All output is out and no more requests will be read: send FIN and read
 * (discarding) for a moment, so that a client still sending a body gets our
 * error response instead of a reset. */
static void start_linger(hconn *c)
{
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req) {
        conn_close(c);
        return;
    }
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)c->tcp, on_shutdown) != 0) {
        free(req);
        conn_close(c);
    }
}

static void flush(hconn *c);

static void on_write(uv_write_t *req, int status)
{
    hconn *c = req->data;
    free(req);
    c->wreq = NULL;
    c->writing = false;
    c->wbuf.len = 0;
    if (c->closed) return; /* cancelled by uv_close */
    if (status < 0) {
        conn_close(c);
        return;
    }
    c->idle_since_ms = now_ms(c);
    if (c->ws && !c->draining) ws_after(c); /* frames wslay still holds */
    flush(c);
    net_batch_end(c->w->idx);
}

/* Resumes processing when the connection may take more work: parses what
 * waited in c->in, then reads again. */
static void resume(hconn *c)
{
    if (c->closed || c->pending || c->draining) return;
    if (c->ws) {
        ws_after(c);
        return;
    }
    if (c->throttled) {
        if (c->out.len + c->wbuf.len > HTTP_MAX_OUTBUF / 2) return;
        c->throttled = false;
    }
    if (c->in.len) {
        thz_buf t = c->in;
        memset(&c->in, 0, sizeof c->in);
        if (!c->in_req) {
            c->in_req = true;
            c->req_start_ms = now_ms(c);
        }
        process(c, t.p, t.len);
        thz_buf_free(&t);
    }
    update_reading(c);
}

/* TLS: the plaintext output becomes the ciphertext due (handshake records
 * first). False when the connection had to close. */
static bool seal(hconn *c)
{
    if (!c->tls || net_tls_seal(c->tls, &c->out) == THZ_OK) return true;
    conn_close(c);
    return false;
}

static void flush(hconn *c)
{
    if (c->closed) return;
    if (!c->writing && (c->out.len || (c->tls && net_tls_want_write(c->tls)))) {
        if (!seal(c)) return;
    }
    if (!c->writing && c->out.len) {
        HSTAT_ADD(S[c->idx].bytes_out, c->out.len);
        uv_buf_t b = uv_buf_init((char *)c->out.p, (unsigned)c->out.len);
        int n = uv_try_write((uv_stream_t *)c->tcp, &b, 1);
        if (n == UV_EAGAIN) n = 0;
        if (n < 0) {
            conn_close(c);
            return;
        }
        if ((size_t)n == c->out.len) {
            thz_buf_free(&c->out); /* idle connections hold no output memory */
        } else {
            /* The socket is full: hand the rest to libuv, collect new output
             * in c->out meanwhile. */
            thz_buf t = c->wbuf;
            c->wbuf = c->out;
            c->out = t;
            c->out.len = 0;
            thz_buf_consume(&c->wbuf, (size_t)n);
            c->wreq = malloc(sizeof *c->wreq);
            if (!c->wreq) {
                conn_close(c);
                return;
            }
            c->writing = true;
            c->wreq->data = c;
            b = uv_buf_init((char *)c->wbuf.p, (unsigned)c->wbuf.len);
            if (uv_write(c->wreq, (uv_stream_t *)c->tcp, &b, 1, on_write) != 0) {
                free(c->wreq);
                c->wreq = NULL;
                c->writing = false;
                conn_close(c);
                return;
            }
        }
    }
    if (c->draining && !c->lingering && !c->writing && c->out.len == 0) {
        if (!c->drain_start_ms) { /* only once: start_linger is asynchronous */
            c->drain_start_ms = now_ms(c);
            if (c->tls) {
                /* close_notify after the last data, best effort */
                net_tls_close_notify(c->tls);
                if (net_tls_seal(c->tls, &c->out) == THZ_OK && c->out.len) {
                    uv_buf_t b = uv_buf_init((char *)c->out.p, (unsigned)c->out.len);
                    uv_try_write((uv_stream_t *)c->tcp, &b, 1);
                }
                thz_buf_free(&c->out);
            }
            start_linger(c);
        }
        return;
    }
    if (c->throttled) resume(c);
}

/* No further request is read: what is queued goes out, then the close. */
static void begin_drain(hconn *c)
{
    c->draining = true;
    c->in_req = false;
    thz_buf_free(&c->in);
    update_reading(c);
    mark_dirty(c);
}

static void send_error(hconn *c, int status, const char *code, const char *msg)
{
    count_response(c->idx, status);
    if (http_serialize_error(status, code, msg, &c->out) != THZ_OK) {
        conn_close(c);
        return;
    }
    begin_drain(c);
}

/* Sends req's response (in order: nothing else is in flight) and frees req. */
static const http_ws_io ws_io;

static void finish(hconn *c, http_request *req)
{
    bool ka = req->keep_alive;
    http_finish_response(req);
    count_response(c->idx, req->res.status);
    thz_err rc = http_serialize(req, ka, &c->out);
    if (!rc && req->ws_route && req->res.status == 101) {
        rc = http_ws_open(req, &ws_io, c, c->idx, now_ms(c), &c->ws);
        if (!rc) {
            HSTAT_ADD(S[c->idx].ws, 1);
            HSTAT_ADD(S[c->idx].ws_total, 1);
        }
    }
    http_request_free(req);
    if (rc) {
        conn_close(c);
        return;
    }
    mark_dirty(c);
    if (c->ws) {
        c->in_req = false;
        ws_after(c);
    } else if (!ka) {
        begin_drain(c);
    }
}

/* ---- WebSocket connections ---- */

static thz_err ws_write(void *conn, const void *p, size_t n)
{
    hconn *c = conn;
    if (c->closed || c->draining) return THZ_EPROTO;
    mark_dirty(c);
    return thz_buf_append(&c->out, p, n);
}

static size_t ws_unsent(void *conn)
{
    hconn *c = conn;
    return c->out.len + c->wbuf.len;
}

static void ws_set_reading(void *conn, bool on)
{
    hconn *c = conn;
    if (c->ws_paused == !on) return;
    c->ws_paused = !on;
    update_reading(c);
}

static const char *conn_peer(void *conn)
{
    hconn *c = conn;
    if (c->peer[0] || c->closed) return c->peer;
    if (!net_peer_name(c->tcp, c->peer, sizeof c->peer)) snprintf(c->peer, sizeof c->peer, "?:0");
    return c->peer;
}

static thz_err ws_move(void *conn, int target, void (*fn)(http_ws *ws, void *arg), void *arg)
{
    hconn *c = conn;
    if (c->closed || c->draining || c->move_fn || target < 0 || target >= net_threads())
        return THZ_EINVAL;
    c->move_to = target;
    c->move_fn = fn;
    c->move_arg = arg;
    return THZ_OK;
}

static const http_ws_io ws_io = {ws_write, ws_unsent, ws_set_reading, conn_peer, ws_move};

/* A WebSocket connection on its way to another thread: the socket (a
 * duplicate of the descriptor), its TLS state, the WebSocket with its parser
 * state, and output not yet written. */
typedef struct ws_moving {
    int fd;
    net_tls *tls;
    http_ws *ws;
    thz_buf out;
    bool ws_paused;
    void (*fn)(http_ws *ws, void *arg);
    void *arg;
} ws_moving;

static hconn *conn_new(hworker *w, uv_tcp_t *tcp, int thread);
static void tls_in(hconn *c, const uint8_t *p, size_t n);

static void ws_moved_task(int thread, void *arg)
{
    ws_moving *mv = arg;
    hworker *w = thread >= 0 && net_self() == thread ? W[thread] : NULL;
    uv_tcp_t *tcp = w ? malloc(sizeof *tcp) : NULL;
    if (tcp) {
        uv_tcp_init(w->loop, tcp);
        if (uv_tcp_open(tcp, mv->fd) != 0) {
            uv_close((uv_handle_t *)tcp, (uv_close_cb)free);
            tcp = NULL;
        }
    }
    hconn *c = tcp ? conn_new(w, tcp, thread) : NULL;
    if (!c) {
        /* the loop is gone (shutdown) or out of memory: the WebSocket ends */
        if (tcp)
            uv_close((uv_handle_t *)tcp, (uv_close_cb)free);
        else
            close(mv->fd);
        http_ws_free(mv->ws);
        net_tls_free(mv->tls);
        thz_buf_free(&mv->out);
        free(mv);
        return;
    }
    c->tls = mv->tls;
    c->ws = mv->ws;
    c->out = mv->out;
    c->ws_paused = mv->ws_paused;
    http_ws_rebind(c->ws, c, thread, now_ms(c));
    mv->fn(c->ws, mv->arg);
    free(mv);
    if (c->tls) tls_in(c, NULL, 0); /* what TLS held back */
    if (!c->closed) {
        mark_dirty(c);
        ws_after(c);
    }
    net_batch_end(thread);
}

/* Performs a move asked for with http_ws_move, once the input being
 * processed is done and no write is in flight (on_write comes back here). */
static void ws_move_now(hconn *c)
{
    if (c->writing) return;
    http_ws_flush(c->ws); /* frames wslay holds go along in c->out */
    uv_os_fd_t fd;
    ws_moving *mv = calloc(1, sizeof *mv);
    if (!mv || uv_fileno((uv_handle_t *)c->tcp, &fd) != 0 ||
        (mv->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
        free(mv);
        c->move_fn = NULL;
        conn_close(c); /* on_close tells the user */
        return;
    }
    mv->tls = c->tls;
    mv->ws = c->ws;
    mv->out = c->out;
    mv->ws_paused = c->ws_paused;
    mv->fn = c->move_fn;
    mv->arg = c->move_arg;
    c->tls = NULL;
    c->ws = NULL;
    memset(&c->out, 0, sizeof c->out);
    c->move_fn = NULL;
    conn_close(c); /* this handle only; the descriptor lives on in mv->fd */
    net_post(c->move_to, ws_moved_task, mv);
}

/* After anything happened on a WebSocket: pull queued frames into the
 * output, close when the WebSocket is over, and read only while the output
 * (ours and wslay's queue) is under the limit, as for HTTP. */
static void ws_after(hconn *c)
{
    if (c->closed || c->draining) return;
    if (c->move_fn) {
        ws_move_now(c);
        return;
    }
    http_ws_flush(c->ws);
    if (http_ws_done(c->ws)) {
        begin_drain(c);
        return;
    }
    size_t unsent = c->out.len + c->wbuf.len + http_ws_queued(c->ws);
    if (unsent > HTTP_MAX_OUTBUF)
        c->throttled = true;
    else if (unsent <= HTTP_MAX_OUTBUF / 2)
        c->throttled = false;
    update_reading(c);
}

static void process(hconn *c, const uint8_t *p, size_t n)
{
    while (!c->closed && !c->draining) {
        if (c->pending || c->out.len + c->wbuf.len > HTTP_MAX_OUTBUF) {
            /* Keep the rest (at most one read) until the reply is sent or
             * the client has read enough of our output. */
            if (!c->pending) c->throttled = true;
            if (n && thz_buf_append(&c->in, p, n) != THZ_OK) conn_close(c);
            update_reading(c);
            return;
        }
        size_t used = 0;
        http_request *req = NULL;
        thz_err rc = http_parse(&c->ps, p, n, &used, &req);
        if (c->ps.want_continue) {
            c->ps.want_continue = false;
            thz_buf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
            mark_dirty(c);
        }
        p += used;
        n -= used;
        if (rc == THZ_EAGAIN) break;
        if (rc != THZ_OK) {
            log_debug("http", "thread %d: bad request: %d %s", c->w->idx, c->ps.err_status,
                      c->ps.err_msg);
            send_error(c, c->ps.err_status, c->ps.err_code, c->ps.err_msg);
            return;
        }
        req->conn = c;
        http_result r = http_dispatch(req);
        if (r == HTTP_PENDING) {
            c->pending = req;
            c->refs++;
            continue; /* stashes the rest and stops reading */
        }
        finish(c, req);
        if (c->ws) {
            /* the rest of this read is the WebSocket's */
            if (n && !c->closed && !c->draining) {
                http_ws_input(c->ws, p, n, now_ms(c));
                ws_after(c);
            }
            return;
        }
    }
    if (!c->ps.in_message && !c->pending) {
        c->in_req = false;
        c->idle_since_ms = now_ms(c);
    }
}

static void reply_task(int thread, void *arg)
{
    http_request *req = arg;
    hconn *c = req->conn;
    if (net_self() != thread || c->closed) {
        /* the client is gone (or the loop is): drop the response */
        http_request_free(req);
        conn_unref(c);
        return;
    }
    c->pending = NULL;
    c->refs--; /* the handle still holds one */
    c->idle_since_ms = now_ms(c);
    finish(c, req);
    resume(c);
}

void http_reply(http_request *req)
{
    hconn *c = req->conn;
    net_post(c->idx, reply_task, req);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    hconn *c = h->data;
    *buf = uv_buf_init((char *)c->w->rbuf, sizeof c->w->rbuf);
}

/* Plaintext from the peer (read, or decrypted). */
static void on_plain(hconn *c, const uint8_t *p, size_t n)
{
    if (c->lingering) return;
    if (c->ws) {
        if (!c->draining) {
            http_ws_input(c->ws, p, n, now_ms(c));
            ws_after(c);
        }
        return;
    }
    if (!c->in_req) {
        c->in_req = true;
        c->req_start_ms = now_ms(c);
    }
    process(c, p, n);
}

/* The end of the peer's stream (EOF, or its TLS close_notify): a half-closed
 * client still gets the answers already due. */
static void on_eof(hconn *c)
{
    if (!c->lingering && (c->out.len || c->writing))
        begin_drain(c);
    else
        conn_close(c);
}

/* HTTPS: ciphertext in; everything decryptable is decrypted and handled at
 * once, so nothing waits inside TLS (plaintext that cannot be processed yet
 * waits in c->in, as for HTTP). */
static void tls_in(hconn *c, const uint8_t *p, size_t n)
{
    while (!c->closed) {
        size_t got = 0;
        thz_err rc = net_tls_input(c->tls, p, n, c->w->rbuf, sizeof c->w->rbuf, &got);
        p = NULL;
        n = 0;
        if (rc == THZ_EAGAIN) {
            on_eof(c);
            return;
        }
        if (rc) {
            log_info("http", "%s: TLS: %s; closed", conn_peer(c), net_tls_error(c->tls));
            /* the alert, if OpenSSL made one, then the close */
            thz_buf_free(&c->out);
            if (net_tls_seal(c->tls, &c->out) == THZ_OK && c->out.len && !c->writing) {
                uv_buf_t b = uv_buf_init((char *)c->out.p, (unsigned)c->out.len);
                uv_try_write((uv_stream_t *)c->tcp, &b, 1);
            }
            conn_close(c);
            return;
        }
        if (net_tls_want_write(c->tls)) mark_dirty(c);
        if (got == 0) return;
        on_plain(c, c->w->rbuf, got);
        if (c->move_fn || !c->tls) return; /* moving (or moved): the rest goes along */
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    hconn *c = st->data;
    int idx = c->w->idx;
    if (nread > 0) HSTAT_ADD(S[idx].bytes_in, nread);
    if (nread < 0) {
        if (nread == UV_EOF)
            on_eof(c);
        else
            conn_close(c);
    } else if (nread > 0 && c->tls) {
        tls_in(c, (const uint8_t *)buf->base, (size_t)nread);
    } else if (nread > 0) {
        on_plain(c, (const uint8_t *)buf->base, (size_t)nread);
    }
    net_batch_end(idx);
}

/* Request and idle timeouts; closing connections that do not drain. */
static void on_tick(uv_timer_t *t)
{
    hworker *w = t->data;
    uint64_t now = uv_now(w->loop);
    for (hconn *c = w->conns, *next; c; c = next) {
        next = c->next;
        if (c->tls && !net_tls_established(c->tls) && !c->closed &&
            now - c->accepted_ms > NET_TLS_HANDSHAKE_MS) {
            log_info("http", "%s: TLS handshake timeout; closed", conn_peer(c));
            conn_close(c);
        } else if (c->lingering) {
            if (now - c->drain_start_ms > LINGER_MS) conn_close(c);
        } else if (c->draining) {
            if (c->drain_start_ms && now - c->drain_start_ms > DRAIN_MS) conn_close(c);
            if (!c->drain_start_ms && now - c->idle_since_ms > DRAIN_MS) conn_close(c);
        } else if (c->ws) {
            http_ws_tick(c->ws, now);
            ws_after(c);
        } else if (c->pending) {
            continue; /* the server's turn, not the client's */
        } else if (c->in_req && now - c->req_start_ms > request_timeout_ms) {
            log_debug("http", "thread %d: request timeout", w->idx);
            send_error(c, 408, "request_timeout", "the request was not completed in time");
        } else if (!c->in_req && now - c->idle_since_ms > HTTP_IDLE_TIMEOUT_MS) {
            conn_close(c);
        }
    }
    net_batch_end(w->idx);
}

/* ctx: NULL for HTTP, non-NULL for HTTPS. */
static void on_accept(int thread, uv_tcp_t *tcp, void *ctx)
{
    hworker *w = W[thread];
    if (!w || w->nconns >= HTTP_MAX_CONNS_PER_THREAD) {
        HSTAT_ADD(S[thread].refused, 1);
        thz_buf b = {0};
        /* (an HTTPS client cannot read a plain-text 503: it is just closed) */
        if (!ctx && http_serialize_error(503, "too_many_connections", "the server is at its limit",
                                         &b) == THZ_OK) {
            uv_buf_t ub = uv_buf_init((char *)b.p, (unsigned)b.len);
            uv_try_write((uv_stream_t *)tcp, &ub, 1);
        }
        thz_buf_free(&b);
        uv_close((uv_handle_t *)tcp, (uv_close_cb)free);
        return;
    }
    net_tls *tls = NULL;
    hconn *c = NULL;
    if ((ctx && net_tls_new(NET_TLS_HTTPS, &tls) != THZ_OK) || !(c = conn_new(w, tcp, thread))) {
        net_tls_free(tls);
        uv_close((uv_handle_t *)tcp, (uv_close_cb)free);
        return;
    }
    c->tls = tls;
    update_reading(c);
}

static hconn *conn_new(hworker *w, uv_tcp_t *tcp, int thread)
{
    hconn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->tcp = tcp;
    tcp->data = c;
    c->w = w;
    c->idx = thread;
    c->refs = 1;
    http_parser_init(&c->ps);
    c->idle_since_ms = c->accepted_ms = now_ms(c);
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    HSTAT_ADD(S[thread].conns, 1);
    HSTAT_ADD(S[thread].conns_total, 1);
    uv_tcp_nodelay(tcp, 1);
    return c;
}

static void on_batch_end(int thread, void *ctx)
{
    hworker *w = thread >= 0 ? W[thread] : NULL;
    if (!w) return;
    while (w->ndirty) {
        hconn *c = w->dirty[--w->ndirty];
        c->dirty = false;
        flush(c);
    }
}

static void on_thread_start(int thread, uv_loop_t *loop, void *ctx)
{
    hworker *w = calloc(1, sizeof *w);
    if (!w) {
        log_error("http", "thread %d: out of memory", thread);
        return;
    }
    w->idx = thread;
    w->loop = loop;
    uv_timer_init(loop, &w->tick);
    w->tick.data = w;
    uint64_t period = request_timeout_ms / 4 < 1000 ? request_timeout_ms / 4 : 1000;
    uv_timer_start(&w->tick, on_tick, period ? period : 1, period ? period : 1);
    W[thread] = w;
}

static void on_tick_closed(uv_handle_t *h)
{
    hworker *w = h->data;
    free(w->dirty);
    free(w);
}

static void on_thread_stop(int thread, uv_loop_t *loop, void *ctx)
{
    hworker *w = W[thread];
    if (!w) return;
    for (hconn *c = w->conns; c; c = c->next) {
        if (!c->ws || c->draining) continue;
        /* a best-effort 1001 before the socket closes */
        http_ws_close(c->ws, 1001, "server shutting down");
        if (c->tls && !c->writing && net_tls_seal(c->tls, &c->out) != THZ_OK) c->out.len = 0;
        if (!c->writing && c->out.len) {
            uv_buf_t b = uv_buf_init((char *)c->out.p, (unsigned)c->out.len);
            uv_try_write((uv_stream_t *)c->tcp, &b, 1);
        }
    }
    while (w->conns) conn_close(w->conns);
    W[thread] = NULL;
    http_gzip_thread_end();
    uv_close((uv_handle_t *)&w->tick, on_tick_closed);
}

thz_err http_start(const thz_config *cfg, auth *a)
{
    http_api_register(a);
    http_cors_set(cfg->cors_origins);
    if (!cfg->http_listen[0] && !cfg->https_listen[0]) return THZ_OK;
    const char *env = getenv("THINGHZ_HTTP_REQUEST_TIMEOUT_MS");
    if (env && atol(env) > 0) request_timeout_ms = (uint64_t)atol(env);
    net_on_thread(on_thread_start, on_thread_stop, NULL);
    net_on_batch_end(on_batch_end, NULL);
    thz_err rc = THZ_OK;
    if (cfg->http_listen[0]) {
        rc = net_listen(cfg->http_listen, on_accept, NULL);
        if (rc) log_error("http", "cannot listen on %s: %s", cfg->http_listen, thz_strerror(rc));
    }
    if (!rc && cfg->https_listen[0]) {
        /* any non-NULL ctx marks the HTTPS listener */
        rc = net_listen(cfg->https_listen, on_accept, (void *)&ws_io);
        if (rc) log_error("http", "cannot listen on %s: %s", cfg->https_listen, thz_strerror(rc));
    }
    return rc;
}
