/* conn.c - MQTT connections: socket I/O on the owning thread (one large read
 * parses many packets, one write flushes many) and one handler per packet
 * type, dispatched from a single switch. Errors become reason codes only
 * through mqtt_reason_from_err (codec.c). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>

#include "core/log.h"
#include "http/http.h"
#include "ingest/ingest.h"
#include "metrics/metrics.h"
#include "net/net.h"
#include "net/net_tls.h"
#include "mqtt/mqtt_int.h"

static atomic_uint n_conns;

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void conn_flush_once(conn *c);
static void read_budget(conn *c, size_t n);
static void read_stop(conn *c);
static void read_start(conn *c);
static void tls_read(conn *c, const uint8_t *p, size_t n);
static void ws_flush(conn *c);
static void transport_close(conn *c);
static void mws_detach(http_ws *ws);
static void conn_migrate_ws(conn *c, int target, const uint8_t *p, size_t n);

static void conn_free(conn *c)
{
    net_tls_free(c->tls);
    thz_buf_free(&c->in);
    thz_buf_free(&c->out);
    thz_buf_free(&c->wbuf);
    if (c->alias_in) {
        for (uint32_t i = 0; i <= B.cfg->topic_alias_maximum; i++) free(c->alias_in[i]);
        free(c->alias_in);
    }
    if (c->alias_out) {
        size_t pos = 0;
        for (hmap_entry *e = hmap_next(c->alias_out, &pos, NULL); e;
             e = hmap_next(c->alias_out, &pos, e))
            free((void *)e->key);
        hmap_free(c->alias_out);
        free(c->alias_out);
    }
    free(c->username);
    free(c->acks);
    auth_identity_clear(&c->id);
    auth_identity_clear(&c->auth_id);
    free(c);
}

/* ---- tenants ---- */

/* The broker's name for a client's topic name (filter false) or filter: its
 * tenant prefix in front (after "$share/G/" for a shared subscription). The
 * default tenant's names are used as they are; otherwise the result is a
 * malloc'd copy left in *heap (NULL when out of memory). *n is updated. */
static const char *tenant_name(const conn *c, const char *t, size_t *n, bool filter, char **heap)
{
    *heap = NULL;
    if (!c->tplen) return t;
    const char *g, *rf;
    size_t gl, rfl, pre = 0;
    bool bad;
    if (filter && topic_share_parse(t, *n, &g, &gl, &rf, &rfl, &bad)) pre = (size_t)(rf - t);
    char *o = malloc(*n + c->tplen + 1);
    if (!o) return NULL;
    memcpy(o, t, pre);
    memcpy(o + pre, c->tprefix, c->tplen);
    memcpy(o + pre + c->tplen, t + pre, *n - pre);
    *n += c->tplen;
    o[*n] = 0;
    *heap = o;
    return o;
}

/* May this client publish to topic (as it named it)? */
static bool may_publish(conn *c, const char *topic, size_t tl)
{
    /* $SYS/ belongs to the broker (MQTT 4.7.2), "$t/" to tenants (topic.h) */
    bool sys = tl >= 4 && memcmp(topic, "$SYS", 4) == 0 && (tl == 4 || topic[4] == '/');
    if (sys || topic_reserved(topic, tl)) return false;
    if (!auth_has_acl(B.auth, &c->id)) return true;
    /* checked on every PUBLISH of a device: no allocation for usual topics */
    char stack[256];
    char *t = tl < sizeof stack ? stack : malloc(tl + 1);
    if (!t) return false;
    memcpy(t, topic, tl);
    t[tl] = 0;
    bool ok = auth_can_publish(B.auth, &c->id, c->s ? c->s->cid + c->tplen : NULL, c->username, t);
    if (t != stack) free(t);
    return ok;
}

static void on_closed(uv_handle_t *h)
{
    conn *c = h->data;
    free(h);
    atomic_fetch_sub(&n_conns, 1);
    /* a password check still running on a worker, or a tsdb write whose
     * durability is not reported yet, holds c: the last of them frees it */
    c->tcp = NULL;
    conn_release(c);
}

void conn_release(conn *c)
{
    if (!c->tcp && !c->ws_hold && !c->authing && !c->durable_pending) conn_free(c);
}

void conn_mark_dirty(conn *c)
{
    if (c->dirty) return;
    worker *w = c->w;
    if (w->ndirty == w->dcap) {
        uint32_t cap = w->dcap ? w->dcap * 2 : 64;
        conn **a = realloc(w->dirty, cap * sizeof *a);
        if (!a) return; /* flushed by the next read or tick */
        w->dirty = a;
        w->dcap = cap;
    }
    w->dirty[w->ndirty++] = c;
    c->dirty = true;
}

static void resume_task(int thread, void *arg)
{
    if (thread >= 0 && net_self() == thread) worker_resume(B.w[thread]);
}

void congestion_release(worker *w)
{
    if (atomic_fetch_sub(&B.congested, 1) != 1) return;
    /* the last congested consumer caught up: wake every thread with paused
     * publishers */
    for (int t = 0; t < B.nthreads; t++)
        if (atomic_load_explicit(&B.w[t]->paused_n, memory_order_relaxed))
            /* Always a task, even for this thread: this runs deep inside
             * routing (deliver -> conn_pressure), where processing another
             * connection's input would re-enter route(). */
            net_post(t, resume_task, NULL);
}

static void uncongest(conn *c)
{
    c->congested = false;
    if (c->s) atomic_store_explicit(&c->s->congested, false, memory_order_relaxed);
    congestion_release(c->w);
}

void conn_pressure(conn *c)
{
    if (c->state != CONN_ACTIVE) return;
    size_t out = c->out.len + c->wbuf.len;
    uint32_t q = c->s ? c->s->q_len : 0;
    uint32_t maxo = atomic_load_explicit(&B.max_outbuf, memory_order_relaxed);
    uint32_t maxq = atomic_load_explicit(&B.max_queued, memory_order_relaxed);
    /* Behind: the slow-consumer clock runs (on_tick). */
    if (!c->behind && (out > maxo / 2 || (maxq && q > maxq / 2))) {
        c->behind = true;
        c->behind_ms = now_ms();
    } else if (c->behind && out <= maxo / 8 && q <= maxq / 8) {
        c->behind = false;
    }
    /* Congested: its publishers pause (docs/ARCHITECTURE.md, Back-pressure).
     * Under --backpressure queued only a queue filling up counts: output
     * over the bound is QoS 0 (dropped there) or QoS 1/2 in the window. */
    uint32_t bp = LIMIT(backpressure);
    if (!c->congested) {
        if (bp == THZ_BACKPRESSURE_OFF) return;
        if ((bp == THZ_BACKPRESSURE_ALL && out > maxo / 2) || (maxq && q > maxq / 2)) {
            c->congested = true;
            if (c->s) atomic_store_explicit(&c->s->congested, true, memory_order_relaxed);
            atomic_fetch_add(&B.congested, 1);
            /* A paused publisher that is now behind as a consumer must be
             * read again, or its acknowledgements never drain its queue. */
            if (c->paused) net_post(c->w->idx, resume_task, NULL);
        }
    } else if ((bp != THZ_BACKPRESSURE_ALL || out <= maxo / 8) && q <= maxq / 8) {
        uncongest(c);
    }
}

static void pause_reading(conn *c)
{
    worker *w = c->w;
    if (w->npaused == w->pcap) {
        uint32_t cap = w->pcap ? w->pcap * 2 : 16;
        conn **a = realloc(w->paused, cap * sizeof *a);
        if (!a) return; /* keep reading: bounded by the drop policy instead */
        w->paused = a;
        w->pcap = cap;
    }
    w->paused[w->npaused++] = c;
    atomic_store_explicit(&w->paused_n, w->npaused, memory_order_relaxed);
    c->paused = true;
    read_stop(c);
}

/* Removes c from one of its worker's unordered connection lists. */
static void list_remove(conn **a, uint32_t *n, const conn *c)
{
    for (uint32_t i = 0; i < *n; i++)
        if (a[i] == c) {
            a[i] = a[--*n];
            return;
        }
}

static void unpause_remove(conn *c)
{
    worker *w = c->w;
    list_remove(w->paused, &w->npaused, c);
    atomic_store_explicit(&w->paused_n, w->npaused, memory_order_relaxed);
    c->paused = false;
}

static void on_write(uv_write_t *req, int status)
{
    conn *c = req->data;
    free(req);
    c->wreq = NULL;
    c->writing = false;
    c->wbuf.len = 0;
    if (c->state == CONN_CLOSING) return; /* cancelled by uv_close */
    if (status < 0) {
        conn_close(c, -1);
    } else {
        if (c->behind) c->progress_ms = (int64_t)uv_now(c->w->loop);
        conn_flush(c);
        if (c->congested || c->behind) conn_pressure(c);
    }
    /* closing may have published a will: finish it like any other batch */
    net_batch_end(c->w->idx);
}

/* A client that does not read what we send (acknowledgements, PINGRESP,
 * SUBACK...) is not read either until it catches up, so that it cannot make
 * us buffer without bound. */
static void throttle_check(conn *c)
{
    size_t pending = c->out.len + c->wbuf.len;
    uint32_t maxo = atomic_load_explicit(&B.max_outbuf, memory_order_relaxed);
    if (!c->throttled && pending > maxo) {
        c->throttled = true;
        read_stop(c);
    } else if (c->throttled && pending <= maxo / 2) {
        c->throttled = false;
        if (!c->paused && !c->yielded && !c->authing) read_start(c);
    }
}

void conn_flush(conn *c)
{
    if (c->state == CONN_CLOSING) return;
    conn_flush_once(c);
    if (c->state == CONN_CLOSING) return;
    throttle_check(c);
    /* QoS 1/2 held in the queue while the socket was full (session_pump) */
    if (c->s && c->s->q_len && c->state == CONN_ACTIVE &&
        c->out.len + c->wbuf.len <= LIMIT(max_outbuf) / 2)
        session_pump(c->w, c->s);
}

static void conn_flush_once(conn *c)
{
    if (c->ws) {
        ws_flush(c);
        return;
    }
    if (c->writing || (c->out.len == 0 && !(c->tls && net_tls_want_write(c->tls)))) return;
    /* TLS: the plaintext becomes the ciphertext due (with any handshake
     * records before it), and goes the same way. */
    if (c->tls && net_tls_seal(c->tls, &c->out) != THZ_OK) {
        conn_close(c, -1);
        return;
    }
    if (c->out.len == 0) return;
    uv_buf_t b = uv_buf_init((char *)c->out.p, (unsigned)c->out.len);
    int n = uv_try_write((uv_stream_t *)c->tcp, &b, 1);
    if (n == UV_EAGAIN) n = 0;
    if (n < 0) {
        conn_close(c, -1);
        return;
    }
    STAT_ADD(c->w->bytes_out, (uint64_t)n);
    c->n_bytes_out += (uint64_t)n;
    if (n > 0 && c->behind) c->progress_ms = (int64_t)uv_now(c->w->loop);
    if ((size_t)n == c->out.len) {
        /* Idle connections hold no output memory. */
        thz_buf_free(&c->out);
        return;
    }
    /* The socket is full: hand the rest to libuv and collect new output in
     * c->out meanwhile. */
    thz_buf t = c->wbuf;
    c->wbuf = c->out;
    c->out = t;
    c->out.len = 0;
    thz_buf_consume(&c->wbuf, (size_t)n);
    STAT_ADD(c->w->bytes_out, c->wbuf.len);
    c->n_bytes_out += c->wbuf.len;
    c->wreq = malloc(sizeof *c->wreq);
    if (!c->wreq) {
        conn_close(c, -1);
        return;
    }
    c->writing = true;
    c->wreq->data = c;
    b = uv_buf_init((char *)c->wbuf.p, (unsigned)c->wbuf.len);
    if (uv_write(c->wreq, (uv_stream_t *)c->tcp, &b, 1, on_write) != 0) {
        free(c->wreq);
        c->wreq = NULL;
        c->writing = false;
        conn_close(c, -1);
    }
}

/* A Reason String for a v5 CONNACK refusal or server DISCONNECT, which the
 * spec lets a server send whatever Request Problem Information says. The
 * returned properties point at static text. */
static const mqtt_props *reason_props(uint8_t reason)
{
    static __thread mqtt_props p;
    const char *t;
    switch (reason) {
    case MQTT_RC_MALFORMED: t = "malformed packet"; break;
    case MQTT_RC_PROTOCOL_ERROR: t = "protocol error"; break;
    case MQTT_RC_UNSUPPORTED_VERSION: t = "unsupported protocol version"; break;
    case MQTT_RC_CLIENT_ID_INVALID: t = "client identifier not valid"; break;
    case MQTT_RC_BAD_USER_OR_PASSWORD: t = "bad user name or password"; break;
    case MQTT_RC_NOT_AUTHORIZED: t = "not authorized"; break;
    case MQTT_RC_SERVER_UNAVAILABLE: t = "server unavailable"; break;
    case MQTT_RC_SERVER_BUSY: t = "too many connections"; break;
    case MQTT_RC_SERVER_SHUTTING_DOWN: t = "server shutting down"; break;
    case MQTT_RC_BAD_AUTH_METHOD: t = "no enhanced authentication method is supported"; break;
    case MQTT_RC_KEEP_ALIVE_TIMEOUT: t = "keep alive timeout"; break;
    case MQTT_RC_SESSION_TAKEN_OVER: t = "session taken over by a new connection"; break;
    case MQTT_RC_TOPIC_NAME_INVALID: t = "topic name invalid"; break;
    case MQTT_RC_RECEIVE_MAX_EXCEEDED: t = "receive maximum exceeded"; break;
    case MQTT_RC_TOPIC_ALIAS_INVALID: t = "topic alias invalid"; break;
    case MQTT_RC_PACKET_TOO_LARGE: t = "packet too large"; break;
    case MQTT_RC_QUOTA_EXCEEDED:
        t = "quota exceeded (tenant connections, or not reading: slow consumer)";
        break;
    case MQTT_RC_MESSAGE_RATE_TOO_HIGH: t = "message rate too high"; break;
    case MQTT_RC_CONNECTION_RATE_EXCEEDED: t = "connection rate exceeded"; break;
    case MQTT_RC_RETAIN_NOT_SUPPORTED: t = "retain not supported"; break;
    case MQTT_RC_ADMIN_ACTION: t = "the credentials were revoked"; break;
    default: return NULL;
    }
    memset(&p, 0, sizeof p);
    MQTT_SET(&p, MQTT_P_REASON_STRING);
    p.reason_string = (mqtt_span){(const uint8_t *)t, (uint32_t)strlen(t)};
    return &p;
}

/* Closes c. reason >= 0: a v5 client gets DISCONNECT with that reason first. */
/* ---- presence: AWS IoT's lifecycle events, for registry devices ---- */

/* AWS IoT's disconnectReason for a close with MQTT reason code `reason`. */
static const char *gone_reason(const conn *c, int reason)
{
    if (c->gone) return c->gone;
    switch (reason) {
    case -1: return "CONNECTION_LOST";
    case MQTT_RC_KEEP_ALIVE_TIMEOUT: return "MQTT_KEEP_ALIVE_TIMEOUT";
    case MQTT_RC_SESSION_TAKEN_OVER: return "DUPLICATE_CLIENTID";
    case MQTT_RC_SERVER_SHUTTING_DOWN: return "SERVER_INITIATED_DISCONNECT";
    case MQTT_RC_ADMIN_ACTION: return "API_INITIATED_DISCONNECT";
    case MQTT_RC_QUOTA_EXCEEDED: return "THROTTLED";
    case MQTT_RC_NOT_AUTHORIZED: return "FORBIDDEN_ACCESS";
    default: return "CLIENT_ERROR";
    }
}

/* Publishes $aws/events/presence/{connected|disconnected}/{clientId} in the
 * client's tenant (reason NULL for connected). */
static void presence_event(conn *c, const session *s, const char *reason)
{
    const char *ucid = s->cid + c->tplen;
    if (strpbrk(ucid, "#+")) return; /* as AWS IoT: no events for such ids */
    char host[64];
    snprintf(host, sizeof host, "%s", c->peer);
    char *colon = strrchr(host, ':');
    if (colon) *colon = 0;
    char sid[40];
    uint64_t h = 1469598103934665603ull; /* FNV-1a of the id, then the instance */
    for (const char *p = s->cid; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    snprintf(sid, sizeof sid, "%016llx%016llx", (unsigned long long)h, (unsigned long long)s->gen);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "clientId", ucid);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    cJSON_AddNumberToObject(j, "timestamp", (double)now.tv_sec * 1000 + now.tv_nsec / 1000000);
    cJSON_AddStringToObject(j, "eventType", reason ? "disconnected" : "connected");
    cJSON_AddStringToObject(j, "sessionIdentifier", sid);
    cJSON_AddStringToObject(j, "principalIdentifier", reg_dev_id(c->id.dev));
    if (reason) {
        cJSON_AddBoolToObject(j, "clientInitiatedDisconnect",
                              strcmp(reason, "CLIENT_INITIATED_DISCONNECT") == 0);
        cJSON_AddStringToObject(j, "disconnectReason", reason);
    } else {
        cJSON_AddStringToObject(j, "ipAddress", host);
    }
    cJSON_AddNumberToObject(j, "versionNumber", (double)c->pres_version);
    char *body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    size_t tl = (size_t)c->tplen + 40 + strlen(ucid);
    char *topic = malloc(tl);
    if (body && topic) {
        snprintf(topic, tl, "%s$aws/events/presence/%s/%s", c->tprefix,
                 reason ? "disconnected" : "connected", ucid);
        publish_later(topic, body, strlen(body), 1);
    }
    free(topic);
    cJSON_free(body);
}

static void presence_connected(conn *c, int protocol_version)
{
    reg_conn_info ci = {.client_id = c->s->cid + c->tplen,
                        .address = c->peer,
                        .protocol_version = protocol_version,
                        .keep_alive = c->keepalive};
    c->pres_version = reg_presence_connect(B.reg, c->id.dev, &ci);
    presence_event(c, c->s, NULL);
}

void conn_count_flush(conn *c)
{
    if (!c->id.dev) return;
    if (c->n_msgs_in | c->n_bytes_in | c->n_msgs_out | c->n_bytes_out)
        reg_presence_count(c->id.dev, c->n_msgs_in, c->n_bytes_in, c->n_msgs_out, c->n_bytes_out);
    c->n_msgs_in = c->n_bytes_in = c->n_msgs_out = c->n_bytes_out = 0;
}

void conn_close(conn *c, int reason)
{
    if (c->state == CONN_CLOSING) return;
    worker *w = c->w;
    bool active = c->state == CONN_ACTIVE;
    c->state = CONN_CLOSING;
    if (active && reason >= 0 && c->version == MQTT_V5)
        /* no Reason String where it could push the DISCONNECT past the
         * client's Maximum Packet Size */
        mqtt_encode_reasoned(&c->out, MQTT_V5, MQTT_DISCONNECT, (uint8_t)reason,
                             c->max_packet_out >= 128 ? reason_props((uint8_t)reason) : NULL);
    if (c->ws) {
        ws_flush(c); /* queued in the WebSocket: it is sent before the close */
    } else if (c->tcp && !c->writing) {
        if (c->tls) {
            /* the DISCONNECT first (no plaintext is accepted after the
             * close_notify), then the close_notify; an alert after a failed
             * handshake */
            thz_buf alert = {0};
            if (net_tls_seal(c->tls, &c->out) != THZ_OK) c->out.len = 0;
            net_tls_close_notify(c->tls);
            if (net_tls_seal(c->tls, &alert) == THZ_OK && alert.len &&
                thz_buf_append(&c->out, alert.p, alert.len) != THZ_OK)
                c->out.len = 0;
            thz_buf_free(&alert);
        }
        /* Best effort, once: what the socket takes now (a CONNACK refusal,
         * the DISCONNECT) is all the peer gets. */
        if (c->out.len) {
            uv_buf_t b = uv_buf_init((char *)c->out.p, (unsigned)c->out.len);
            int n = uv_try_write((uv_stream_t *)c->tcp, &b, 1);
            if (n > 0) STAT_ADD(w->bytes_out, (uint64_t)n);
        }
    }
    if (c->dirty) {
        /* freed by the close callback: must not stay on the flush list */
        list_remove(w->dirty, &w->ndirty, c);
        c->dirty = false;
    }
    if (c->congested) uncongest(c);
    if (c->tenant_counted) {
        tenant_conn_release(c->tprefix, c->tplen);
        c->tenant_counted = false;
    }
    if (c->paused) unpause_remove(c);
    if (c->yielded) {
        list_remove(w->yield, &w->nyield, c);
        c->yielded = false;
    }
    if (c->prev)
        c->prev->next = c->next;
    else if (w->conns == c)
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (active) STAT_ADD(w->n_clients, -1);
    session *s = c->s;
    if (active && c->id.dev && s) {
        conn_count_flush(c);
        const char *why = gone_reason(c, reason);
        reg_presence_disconnect(B.reg, c->id.dev, c->pres_version, why);
        presence_event(c, s, why);
    }
    c->s = NULL;
    if (s) {
        if (s->conn == c)
            session_went_offline(w, s, c->will_publish && !atomic_load(&B.shutting_down));
        session_unref(s);
    }
    transport_close(c);
}

/* Fails the connection for a decode or protocol error. */
static void conn_fail(conn *c, thz_err rc)
{
    log_debug("mqtt", "client %s (%s): %s", c->s ? c->s->cid : "-", c->peer, thz_strerror(rc));
    conn_close(c, c->state == CONN_ACTIVE ? mqtt_reason_from_err(rc) : -1);
}

static conn *conn_new(worker *w, uv_tcp_t *tcp)
{
    conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->tcp = tcp;
    if (tcp) tcp->data = c;
    c->w = w;
    c->accepted_ms = c->last_rx_ms = now_ms();
    c->will_publish = true;
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    atomic_fetch_add(&n_conns, 1);
    if (tcp) net_peer_name(tcp, c->peer, sizeof c->peer);
    return c;
}

/* ---- sending ---- */

bool conn_send_publish(conn *c, const delivery *d, uint16_t id, bool dup)
{
    const msg *m = d->m;
    uint16_t new_alias = 0;
    mqtt_publish pub = {.qos = d->qos, .retain = d->retain, .dup = dup, .id = id};
    /* the client knows its topics without its tenant's prefix (topic.h) */
    size_t base = c->tplen ? topic_tenant_base(m->topic, m->topic_len) : 0;
    pub.topic = (mqtt_span){(const uint8_t *)m->topic + base, m->topic_len - (uint32_t)base};
    pub.payload = (mqtt_span){m->payload, m->payload_len};
    if (c->version == MQTT_V5) {
        mqtt_props *pr = &pub.props;
        if (m->expires_at) {
            int64_t left = m->expires_at - wall_s();
            if (left <= 0) return false;
            MQTT_SET(pr, MQTT_P_MESSAGE_EXPIRY);
            pr->message_expiry = (uint32_t)left;
        }
        pr->sub_ids = d->subids;
        pr->n_sub_ids = d->nsub;
        pr->extra = (mqtt_span){m->props, m->props_len};
        if (c->alias_max_out) {
            if (!c->alias_out) c->alias_out = calloc(1, sizeof *c->alias_out);
            uintptr_t a =
                c->alias_out ? (uintptr_t)hmap_get(c->alias_out, m->topic, m->topic_len) : 0;
            if (a) {
                pub.topic.n = 0;
                MQTT_SET(pr, MQTT_P_TOPIC_ALIAS);
                pr->topic_alias = (uint16_t)a;
            } else if (c->alias_out && c->alias_next_out < c->alias_max_out) {
                /* a new alias, sent with the topic; recorded only once the
                 * packet is really encoded (below) */
                new_alias = (uint16_t)(c->alias_next_out + 1);
                MQTT_SET(pr, MQTT_P_TOPIC_ALIAS);
                pr->topic_alias = new_alias;
            }
        }
    }
    if (c->max_packet_out != UINT32_MAX && mqtt_publish_size(c->version, &pub) > c->max_packet_out)
        return false;
    if (d->qos == 0 &&
        c->out.len + c->wbuf.len > atomic_load_explicit(&B.max_outbuf, memory_order_relaxed)) {
        STAT_ADD(c->w->dropped, 1);
        STAT_ADD(c->w->drops[MQTT_DROP_QOS0_OUTBUF], 1);
        return false;
    }
    if (mqtt_encode_publish(&c->out, c->version, &pub) != THZ_OK) return false;
    c->n_msgs_out++;
    if (new_alias) {
        /* If this fails the alias number is simply given to the next new
         * topic, which re-maps it on the client: still correct. */
        char *key = strndup(m->topic, m->topic_len);
        if (key &&
            hmap_put(c->alias_out, key, m->topic_len, (void *)(uintptr_t)new_alias, NULL) == THZ_OK)
            c->alias_next_out++;
        else
            free(key);
    }
    conn_mark_dirty(c);
    return true;
}

void conn_send_pubrel(conn *c, uint16_t id)
{
    mqtt_encode_ack(&c->out, c->version, MQTT_PUBREL, id, 0, NULL);
    conn_mark_dirty(c);
}

/* Queues an acknowledgement behind those still waiting (ready false: it
 * waits itself, for ack_ready). Returns its number, 0 when out of memory. */
static uint32_t ack_push(conn *c, uint8_t type, uint16_t id, uint8_t reason, bool ready)
{
    if (c->nacks == c->acks_cap) {
        uint32_t cap = c->acks_cap ? c->acks_cap * 2 : 8;
        ack_entry *a = realloc(c->acks, cap * sizeof *a);
        if (!a) return 0;
        c->acks = a;
        c->acks_cap = cap;
    }
    uint32_t seq = ++c->ack_seq ? c->ack_seq : ++c->ack_seq;
    c->acks[c->nacks++] = (ack_entry){seq, id, type, reason, ready};
    return seq;
}

/* Sends the acknowledgements at the head of the queue that are ready. */
static void ack_drain(conn *c)
{
    uint32_t i = 0;
    for (; i < c->nacks && c->acks[i].ready; i++)
        mqtt_encode_ack(&c->out, c->version, c->acks[i].type, c->acks[i].id, c->acks[i].reason,
                        NULL);
    if (!i) return;
    memmove(c->acks, c->acks + i, (c->nacks - i) * sizeof *c->acks);
    c->nacks -= i;
    conn_mark_dirty(c);
}

static void send_ack(conn *c, uint8_t type, uint16_t id, uint8_t reason)
{
    if (c->nacks && ack_push(c, type, id, reason, true)) return; /* in order */
    mqtt_encode_ack(&c->out, c->version, type, id, reason, NULL);
    conn_mark_dirty(c);
}

/* ---- telemetry: devices/{id}/telemetry goes into the tsdb ---- */

/* The {id} of devices/{id}/telemetry, as the client named the topic. */
static bool telemetry_topic(const char *t, size_t tl, const char **dev, size_t *dl)
{
    static const char pre[] = "devices/", suf[] = "/telemetry";
    size_t pl = sizeof pre - 1, sl = sizeof suf - 1;
    if (tl <= pl + sl || memcmp(t, pre, pl) != 0 || memcmp(t + tl - sl, suf, sl) != 0) return false;
    *dev = t + pl;
    *dl = tl - pl - sl;
    return !memchr(*dev, '/', *dl);
}

typedef struct durable {
    conn *c;
    int thread;
    uint32_t seq;
    thz_err rc;
} durable;

static void durable_task(int thread, void *arg)
{
    durable *d = arg;
    conn *c = d->c;
    c->durable_pending--;
    if ((c->tcp || c->ws) && c->state == CONN_ACTIVE) {
        for (uint32_t i = 0; i < c->nacks; i++) {
            if (c->acks[i].seq != d->seq) continue;
            c->acks[i].ready = true;
            if (d->rc) c->acks[i].reason = mqtt_reason_from_err(d->rc); /* ENOSPC: 0x97 */
            break;
        }
        if (d->rc && c->version != MQTT_V5) {
            /* 3.1.1 has no negative acknowledgement: the client resends */
            conn_close(c, -1);
        } else {
            ack_drain(c);
        }
        if (thread >= 0) net_batch_end(thread);
    }
    conn_release(c);
    free(d);
}

/* The tsdb's done callback (its WAL thread): back to the connection's. */
static void durable_done(void *ctx, thz_err rc)
{
    durable *d = ctx;
    d->rc = rc;
    net_post(d->thread, durable_task, d);
}

/* Stores a telemetry payload of device dev (its client's name). Returns the
 * durable record whose done is awaited (qos > 0 under fsync always), else
 * NULL. A payload the ingest refuses is reported on devices/{id}/errors and
 * counted in the device's health; the message is routed all the same.
 * *stored is set to a storage failure (the disk is full: THZ_ENOSPC, or
 * THZ_EIO), which the acknowledgement reports; else left alone. */
static durable *telemetry_store(conn *c, const char *dev, size_t dl, const mqtt_publish *pb,
                                thz_err *stored)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t now_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    durable *d = NULL;
    if (pb->qos > 0 && B.cfg->fsync == THZ_FSYNC_ALWAYS && (d = malloc(sizeof *d))) {
        d->c = c;
        d->thread = c->w->idx;
        d->seq = 0;
    }
    char err[INGEST_ERR_LEN];
    thz_err rc = ingest_telemetry(B.db, c->id.tenant, dev, dl, pb->payload.p, pb->payload.n, now_ns,
                                  d ? durable_done : NULL, d, err);
    if (rc == THZ_OK) {
        if (d) c->durable_pending++;
        return d;
    }
    free(d);
    if (rc == THZ_ENOSPC || rc == THZ_EIO) { /* the engine logged it (rate limited) */
        *stored = rc;
        return NULL;
    }
    log_debug("mqtt", "client %s: telemetry of %.*s refused: %s", c->s->cid, (int)dl, dev, err);
    if (B.reg) reg_telemetry_error(B.reg, c->id.tenant, dev, dl, err);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "error", err);
    cJSON_AddStringToObject(j, "code", rc == THZ_EQUOTA ? "series_limit" : "invalid_telemetry");
    cJSON_AddNumberToObject(j, "timestamp", (double)(now_ns / 1000000));
    char *body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    size_t tl = (size_t)c->tplen + dl + 16;
    char *topic = malloc(tl);
    if (body && topic) {
        snprintf(topic, tl, "%sdevices/%.*s/errors", c->tprefix, (int)dl, dev);
        publish_later(topic, body, strlen(body), 0);
    }
    free(topic);
    cJSON_free(body);
    return NULL;
}

/* ---- CONNECT ---- */

static int refuse_class(uint8_t reason)
{
    switch (reason) {
    case MQTT_RC_BAD_USER_OR_PASSWORD: return MQTT_REFUSE_BAD_CREDENTIALS;
    case MQTT_RC_NOT_AUTHORIZED: return MQTT_REFUSE_NOT_AUTHORIZED;
    case MQTT_RC_CLIENT_ID_INVALID: return MQTT_REFUSE_CLIENT_ID;
    case MQTT_RC_SERVER_BUSY: return MQTT_REFUSE_SERVER_BUSY;
    case MQTT_RC_QUOTA_EXCEEDED: return MQTT_REFUSE_QUOTA;
    case MQTT_RC_CONNECTION_RATE_EXCEEDED: return MQTT_REFUSE_RATE;
    case MQTT_RC_UNSUPPORTED_VERSION: return MQTT_REFUSE_UNSUPPORTED_VERSION;
    case MQTT_RC_MALFORMED:
    case MQTT_RC_PROTOCOL_ERROR: return MQTT_REFUSE_MALFORMED;
    default: return MQTT_REFUSE_OTHER;
    }
}

static void connack_refuse(conn *c, uint8_t version, uint8_t reason)
{
    STAT_ADD(c->w->refused[refuse_class(reason)], 1);
    if (version == MQTT_V5)
        mqtt_encode_connack(&c->out, MQTT_V5, false, reason, reason_props(reason));
    else
        mqtt_encode_connack(&c->out, MQTT_V311, false, mqtt_v3_connack_code(reason), NULL);
    c->version = version;
    conn_flush(c);
    conn_close(c, -1);
}

static char *span_dup(mqtt_span s)
{
    char *p = malloc(s.n + 1);
    if (p) {
        memcpy(p, s.p, s.n);
        p[s.n] = 0;
    }
    return p;
}

typedef struct migration {
    int fd;
    net_tls *tls;
    size_t n;
    char peer[64];
    uint8_t bytes[];
} migration;

static void adopt_task(int thread, void *arg)
{
    migration *mg = arg;
    if (thread >= 0 && net_self() == thread) {
        conn_adopt(B.w[thread], mg->fd, mg->tls, mg->bytes, mg->n, mg->peer);
    } else {
        close(mg->fd);
        net_tls_free(mg->tls);
    }
    free(mg);
}

/* Moves c (whose unprocessed input starts with its CONNECT at p) to the
 * thread that owns the session it resumes. */
static void conn_migrate(conn *c, int target, const uint8_t *p, size_t n)
{
    uv_os_fd_t fd;
    migration *mg = malloc(sizeof *mg + n);
    /* F_DUPFD_CLOEXEC rather than dup(): the copy must not leak into a
     * child, and libuv closes descriptors with a raw close syscall that
     * ThreadSanitizer cannot see, so its dup() hook mistakes a recycled
     * descriptor number for a race with the previous owner's reads. */
    /* A write in progress (TLS records of the handshake, when the socket
     * was full) would be cut by closing this handle: such a rare client is
     * closed and reconnects instead. */
    if (!mg || !c->tcp || c->writing || uv_fileno((uv_handle_t *)c->tcp, &fd) != 0 ||
        (mg->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
        free(mg);
        conn_close(c, -1);
        return;
    }
    /* the TLS state (and whatever ciphertext it holds) moves along */
    mg->tls = c->tls;
    c->tls = NULL;
    mg->n = n;
    memcpy(mg->bytes, p, n);
    snprintf(mg->peer, sizeof mg->peer, "%s", c->peer);
    /* the descriptor lives on in mg->fd; this handle closes quietly */
    conn_close(c, -1);
    net_post(target, adopt_task, mg);
}

typedef struct kick {
    session *s;
    bool end;
} kick;

static void kick_task(int thread, void *arg)
{
    kick *k = arg;
    if (thread >= 0 && net_self() == thread) {
        worker *w = B.w[thread];
        if (k->s->conn) conn_close(k->s->conn, MQTT_RC_SESSION_TAKEN_OVER);
        if (k->end) session_end(w, k->s);
    }
    session_unref(k->s);
    free(k);
}

/* A password that needs hashing (PBKDF2, tens of milliseconds) is checked
 * on libuv's worker pool, never on the I/O thread: the connection stops
 * reading, its CONNECT and whatever followed it are kept, and when the answer
 * is back they are processed again with the answer in hand. */
typedef struct auth_work {
    uv_work_t req;
    conn *c;
    char *user;
    uint8_t *pass;
    size_t passlen;
    thz_err rc;
    auth_identity id;
    size_t n;
    uint8_t bytes[]; /* the CONNECT and the bytes behind it */
} auth_work;

static void auth_work_run(uv_work_t *req)
{
    auth_work *aw = req->data;
    metrics_pool_started();
    aw->rc = auth_connect(B.auth, aw->c->peer, aw->user, aw->pass, aw->passlen, &aw->id);
}

static size_t process(conn *c, const uint8_t *p, size_t n);

static void auth_work_done(uv_work_t *req, int status)
{
    auth_work *aw = req->data;
    conn *c = aw->c;
    metrics_pool_finished();
    c->authing = false;
    if (!c->tcp && !c->ws) {
        conn_release(c); /* closed while the check ran */
    } else if (c->state != CONN_CLOSING) {
        c->auth_done = true;
        c->auth_result = status == 0 ? aw->rc : THZ_EIO;
        c->auth_id = aw->id; /* moved: c releases it */
        aw->id = (auth_identity){0};
        const uint8_t *bp = aw->bytes;
        size_t bn = aw->n;
        thz_buf t = {0};
        if (c->in.len) {
            /* a WebSocket's messages that arrived during the check come
             * after the CONNECT (and go along if the connection moves) */
            if (thz_buf_append(&t, aw->bytes, aw->n) != THZ_OK ||
                thz_buf_append(&t, c->in.p, c->in.len) != THZ_OK)
                conn_close(c, -1);
            thz_buf_free(&c->in);
            bp = t.p;
            bn = t.len;
        }
        size_t used = c->state == CONN_CLOSING ? 0 : process(c, bp, bn);
        if (used != (size_t)-1 && c->state != CONN_CLOSING) {
            if (used < bn) thz_buf_append(&c->in, bp + used, bn - used);
            if (!c->paused && !c->throttled) read_start(c);
            /* what TLS held back while the check ran comes after those */
            if (c->tls) tls_read(c, NULL, 0);
        }
        thz_buf_free(&t);
        net_batch_end(c->w->idx);
    }
    if (aw->pass) OPENSSL_cleanse(aw->pass, aw->passlen);
    auth_identity_clear(&aw->id);
    free(aw->pass);
    free(aw->user);
    free(aw);
}

static void auth_suspend(conn *c, const char *user, const mqtt_connect *cn, const uint8_t *raw,
                         size_t n)
{
    auth_work *aw = calloc(1, sizeof *aw + n);
    if (!aw || (user && !(aw->user = strdup(user))) ||
        (cn->has_password && !(aw->pass = malloc(cn->password.n + 1)))) {
        if (aw) free(aw->user);
        free(aw);
        conn_close(c, -1);
        return;
    }
    aw->req.data = aw;
    aw->c = c;
    if (cn->has_password) {
        memcpy(aw->pass, cn->password.p, cn->password.n);
        aw->passlen = cn->password.n;
    }
    aw->n = n;
    memcpy(aw->bytes, raw, n);
    if (uv_queue_work(c->w->loop, &aw->req, auth_work_run, auth_work_done) != 0) {
        free(aw->pass);
        free(aw->user);
        free(aw);
        conn_close(c, -1);
        return;
    }
    metrics_pool_queued();
    c->authing = true;
    read_stop(c);
}

static bool will_allowed(conn *c, const char *ucid, const char *user, mqtt_span topic)
{
    char *wt = span_dup(topic);
    bool ok = wt && auth_can_publish(B.auth, &c->id, ucid, user, wt);
    free(wt);
    return ok;
}

/* Returns 1 when the connection was handed to another thread, 2 when it
 * waits for its password check. */
static int handle_connect(conn *c, const mqtt_packet *pkt, const uint8_t *raw, size_t rawn,
                          size_t rest)
{
    const mqtt_connect *cn = &pkt->u.connect;
    uint8_t ver = cn->version == MQTT_V31 ? MQTT_V311 : cn->version;
    const thz_config *cfg = B.cfg;
    uint32_t max_conns = LIMIT(max_connections);
    if (max_conns && atomic_load(&n_conns) > max_conns) {
        connack_refuse(c, ver, MQTT_RC_SERVER_BUSY);
        return 0;
    }
    if (!c->limits_checked) {
        /* before the password check: a CONNECT flood costs no hashing */
        c->limits_checked = true;
        if (!connect_rate_take(c->peer)) {
            limit_hit(c->w, MQTT_LIMIT_CONNECT_RATE, "refused a CONNECT from %s: over %u/s",
                      c->peer, LIMIT(connect_rate));
            connack_refuse(c, ver, MQTT_RC_CONNECTION_RATE_EXCEEDED);
            return 0;
        }
    }
    if (ver == MQTT_V5 && MQTT_HAS(&cn->props, MQTT_P_AUTH_METHOD)) {
        /* No enhanced authentication method is supported. */
        connack_refuse(c, ver, MQTT_RC_BAD_AUTH_METHOD);
        return 0;
    }
    char cid[65536 + 32];
    size_t cidlen = cn->client_id.n;
    bool assigned = false;
    if (cidlen == 0) {
        if (ver != MQTT_V5 && !cn->clean_start) {
            connack_refuse(c, ver, MQTT_RC_CLIENT_ID_INVALID);
            return 0;
        }
        uint8_t rnd[12];
        uv_random(NULL, NULL, rnd, sizeof rnd, 0, NULL);
        cidlen = (size_t)snprintf(cid, sizeof cid, "thz-");
        for (size_t i = 0; i < sizeof rnd; i++)
            cidlen += (size_t)snprintf(cid + cidlen, sizeof cid - cidlen, "%02x", rnd[i]);
        assigned = true;
    } else {
        memcpy(cid, cn->client_id.p, cidlen);
        cid[cidlen] = 0;
        if (topic_reserved(cid, cidlen)) {
            /* the form of other tenants' client ids inside the broker */
            connack_refuse(c, ver, MQTT_RC_CLIENT_ID_INVALID);
            return 0;
        }
    }
    char *user = cn->has_username ? span_dup(cn->username) : NULL;
    thz_err rc;
    auth_identity id = {0};
    uint8_t cert_fp[32];
    char subj[256];
    if (!c->auth_done && c->tls && !cn->has_password &&
        net_tls_peer_cert(c->tls, cert_fp, subj, sizeof subj)) {
        /* mutual TLS: the client certificate is the credential */
        char why[256];
        rc = auth_connect_cert(B.auth, cert_fp, user, &id, why, sizeof why);
        if (rc)
            log_info("mqtt", "refused client %s from %s: %s (subject %s)", cid, c->peer, why, subj);
        c->by_cert = rc == THZ_OK;
        memcpy(c->cert_fp, cert_fp, sizeof cert_fp);
    } else if (c->auth_done) {
        rc = c->auth_result; /* verified on a worker thread, see auth_suspend */
        id = c->auth_id;
        c->auth_id = (auth_identity){0};
    } else {
        rc = auth_connect_quick(B.auth, cid, user, cn->has_password ? cn->password.p : NULL,
                                cn->has_password ? cn->password.n : 0, &id);
        if (rc == THZ_EAGAIN) {
            auth_suspend(c, user, cn, raw, rawn + rest);
            free(user);
            return 2;
        }
    }
    if (rc) {
        log_info("mqtt", "refused client %s from %s: %s", cid, c->peer, thz_strerror(rc));
        free(user);
        connack_refuse(c, ver, mqtt_reason_from_err(rc));
        return 0;
    }
    /* From here c holds the identity (conn_free releases it), and the
     * session's client id carries the tenant prefix (topic.h). */
    auth_identity_clear(&c->id);
    c->id = id;
    c->tplen = (uint8_t)topic_tenant_prefix(id.tenant, c->tprefix);
    if (c->tplen) {
        memmove(cid + c->tplen, cid, cidlen + 1);
        memcpy(cid, c->tprefix, c->tplen);
        cidlen += c->tplen;
    }
    const char *ucid = cid + c->tplen; /* the client id as the client knows it */
    /* the will */
    msg *will = NULL;
    uint32_t will_delay = 0;
    int64_t will_expiry = 0;
    if (cn->will_flag) {
        uint8_t reason = 0;
        if (!topic_name_valid((const char *)cn->will_topic.p, cn->will_topic.n))
            reason = MQTT_RC_TOPIC_NAME_INVALID;
        else if (cn->will_retain && !cfg->retain_available)
            reason = MQTT_RC_RETAIN_NOT_SUPPORTED;
        if (!reason &&
            (topic_reserved((const char *)cn->will_topic.p, cn->will_topic.n) ||
             (auth_has_acl(B.auth, &c->id) && !will_allowed(c, ucid, user, cn->will_topic))))
            reason = MQTT_RC_NOT_AUTHORIZED;
        if (reason) {
            free(user);
            connack_refuse(c, ver, reason);
            return 0;
        }
        uint8_t fwd_stack[512];
        uint8_t *fwd =
            cn->will_props.raw.n <= sizeof fwd_stack ? fwd_stack : malloc(cn->will_props.raw.n);
        size_t fl = ver == MQTT_V5 && fwd ? mqtt_props_forwardable(&cn->will_props, fwd) : 0;
        /* the will's expiry interval starts when it is published (3.1.3.2.4) */
        if (MQTT_HAS(&cn->will_props, MQTT_P_MESSAGE_EXPIRY))
            will_expiry = (int64_t)cn->will_props.message_expiry + 1;
        size_t wtl = cn->will_topic.n;
        char *wheap;
        const char *wt = tenant_name(c, (const char *)cn->will_topic.p, &wtl, false, &wheap);
        will = wt ? msg_new(wt, wtl, cn->will_payload.p, cn->will_payload.n, fwd, fl, cn->will_qos,
                            cn->will_retain, 0)
                  : NULL;
        free(wheap);
        if (fwd != fwd_stack) free(fwd);
        if (MQTT_HAS(&cn->will_props, MQTT_P_WILL_DELAY)) will_delay = cn->will_props.will_delay;
    }
    /* session expiry */
    uint32_t expiry;
    if (ver == MQTT_V5)
        expiry = cn->props.session_expiry;
    else
        expiry = cn->clean_start ? 0 : UINT32_MAX;
    bool expiry_capped = false;
    if (expiry > LIMIT(max_session_expiry)) {
        expiry = LIMIT(max_session_expiry);
        expiry_capped = ver == MQTT_V5;
    }
    /* find, take over or create the session */
    worker *w = c->w;
    if (!tenant_conn_acquire(c->tprefix, c->tplen)) {
        limit_hit(w, MQTT_LIMIT_TENANT_CONNECTIONS,
                  "refused client %s from %s: its tenant has %u connections", ucid, c->peer,
                  LIMIT(tenant_connections));
        free(user);
        msg_unref(will);
        connack_refuse(c, ver, MQTT_RC_QUOTA_EXCEEDED);
        return 0;
    }
    c->tenant_counted = true;
    session *s, *old_kick = NULL;
    bool present = false;
    pthread_mutex_lock(&B.sess_lock);
    s = hmap_get(&B.sessions, cid, cidlen);
    /* Resuming a persistent session owned by another thread: the
     * connection moves there, so that a session is only ever touched by one
     * thread. A non-persistent session ends when its connection does, so
     * taking it over is a fresh start wherever it lives. */
    if (s && !cn->clean_start && s->persistent && s->home != w->idx) {
        int home = s->home;
        pthread_mutex_unlock(&B.sess_lock);
        free(user);
        msg_unref(will);
        /* counted again by the connection that takes over on that thread */
        tenant_conn_release(c->tprefix, c->tplen);
        c->tenant_counted = false;
        if (c->ws)
            conn_migrate_ws(c, home, raw, rawn + rest);
        else
            conn_migrate(c, home, raw, rawn + rest);
        return 1;
    }
    if (s && (cn->clean_start || !s->persistent)) {
        hmap_del(&B.sessions, cid, cidlen);
        /* the replaced session's record goes now, in order before any record
         * of its successor; its other records carry its own instance number */
        if (s->persistent) session_record_delete_locked(cid, cidlen);
        old_kick = s; /* the table's reference moves to the kick */
        s = NULL;
    }
    if (s) {
        present = true;
        session_ref(s);
    } else {
        s = session_create_locked(cid, cidlen, w->idx);
        if (s) session_ref(s);
    }
    pthread_mutex_unlock(&B.sess_lock);
    if (old_kick) {
        kick *k = malloc(sizeof *k);
        if (k) {
            k->s = session_ref(old_kick);
            k->end = true;
            if (old_kick->home == w->idx)
                kick_task(w->idx, k);
            else
                net_post(old_kick->home, kick_task, k);
        }
    }
    if (!s) {
        free(user);
        msg_unref(will);
        connack_refuse(c, ver, MQTT_RC_SERVER_UNAVAILABLE);
        return 0;
    }
    if (s->conn) conn_close(s->conn, MQTT_RC_SESSION_TAKEN_OVER); /* takeover, same thread */
    /* a new connection before the will delay passed: the old will is not sent */
    msg_unref(s->will);
    s->will = will;
    s->will_delay = will_delay;
    s->will_expiry = will_expiry;
    s->will_at_ms = 0;
    bool was_persistent = s->persistent;
    s->version = ver;
    s->expiry = expiry;
    s->persistent = expiry > 0;
    if (was_persistent && !s->persistent) session_unpersist(s);
    s->conn = c;
    s->expires_at_ms = 0;
    off_list_del(w, s);
    c->s = s;
    c->username = user;
    c->version = ver;
    c->keepalive = cn->keep_alive;
    c->recv_max_out = 65535;
    c->max_packet_out = UINT32_MAX;
    if (ver == MQTT_V5) {
        if (MQTT_HAS(&cn->props, MQTT_P_RECEIVE_MAX)) c->recv_max_out = cn->props.receive_max;
        if (MQTT_HAS(&cn->props, MQTT_P_MAX_PACKET_SIZE))
            c->max_packet_out = cn->props.max_packet_size;
        if (MQTT_HAS(&cn->props, MQTT_P_TOPIC_ALIAS_MAX))
            c->alias_max_out = cn->props.topic_alias_max;
    }
    /* CONNACK */
    mqtt_props p = {0};
    if (ver == MQTT_V5) {
        if (expiry_capped) MQTT_SET(&p, MQTT_P_SESSION_EXPIRY), p.session_expiry = expiry;
        MQTT_SET(&p, MQTT_P_RECEIVE_MAX);
        p.receive_max = (uint16_t)cfg->receive_maximum;
        MQTT_SET(&p, MQTT_P_MAX_PACKET_SIZE);
        p.max_packet_size = LIMIT(max_packet);
        MQTT_SET(&p, MQTT_P_TOPIC_ALIAS_MAX);
        p.topic_alias_max = (uint16_t)cfg->topic_alias_maximum;
        MQTT_SET(&p, MQTT_P_RETAIN_AVAILABLE);
        p.retain_available = cfg->retain_available;
        MQTT_SET(&p, MQTT_P_WILDCARD_SUB_AVAILABLE);
        p.wildcard_sub_available = 1;
        MQTT_SET(&p, MQTT_P_SUB_ID_AVAILABLE);
        p.sub_id_available = 1;
        MQTT_SET(&p, MQTT_P_SHARED_SUB_AVAILABLE);
        p.shared_sub_available = 1;
        if (assigned) {
            MQTT_SET(&p, MQTT_P_ASSIGNED_CLIENT_ID);
            p.assigned_client_id =
                (mqtt_span){(const uint8_t *)ucid, (uint32_t)(cidlen - c->tplen)};
        }
        uint32_t max_ka = LIMIT(max_keepalive);
        if (max_ka && (cn->keep_alive == 0 || cn->keep_alive > max_ka)) {
            c->keepalive = (uint16_t)max_ka;
            MQTT_SET(&p, MQTT_P_SERVER_KEEP_ALIVE);
            p.server_keep_alive = c->keepalive;
        }
        char info[80];
        if (MQTT_HAS(&cn->props, MQTT_P_REQ_RESPONSE_INFO) && cn->props.req_response_info) {
            int n = snprintf(info, sizeof info, "thinghz/response/");
            MQTT_SET(&p, MQTT_P_RESPONSE_INFO);
            p.response_info = (mqtt_span){(const uint8_t *)info, (uint32_t)n};
        }
        mqtt_encode_connack(&c->out, MQTT_V5, present, 0, &p);
    } else {
        uint32_t max_ka = LIMIT(max_keepalive);
        if (max_ka && cn->keep_alive > max_ka) c->keepalive = (uint16_t)max_ka;
        mqtt_encode_connack(&c->out, MQTT_V311, present, 0, NULL);
    }
    c->state = CONN_ACTIVE;
    STAT_ADD(w->n_clients, 1);
    STAT_ADD(w->connects, 1);
    conn_mark_dirty(c);
    if (s->persistent) session_persist(s, 0);
    log_debug("mqtt", "client %s connected from %s (v%d, keepalive %u, session %s)", cid, c->peer,
              cn->version, c->keepalive, present ? "resumed" : "new");
    if (c->id.dev) presence_connected(c, cn->version);
    if (present) session_resend(w, s);
    return 0;
}

/* ---- PUBLISH ---- */

/* The per-message limits of a PUBLISH (docs/OPERATIONS.md "Limits"): true
 * when it was refused (answered, or the connection closed). */
static bool publish_limited(conn *c, const mqtt_publish *pb, const char *topic, size_t tl)
{
    uint32_t rate = LIMIT(publish_rate);
    const char *cid = c->s->cid;
    if (rate && !tbucket_take(&c->pub_tokens, &c->pub_ms, rate, LIMIT(publish_burst),
                              (int64_t)uv_now(c->w->loop))) {
        bool drop = LIMIT(publish_rate_action) == THZ_RATE_DROP;
        limit_hit(c->w, MQTT_LIMIT_PUBLISH_RATE, "client %s: over %u PUBLISH/s, %s", cid, rate,
                  drop ? "dropped" : "disconnected");
        if (!drop) {
            conn_close(c, MQTT_RC_MESSAGE_RATE_TOO_HIGH);
            return true;
        }
        STAT_ADD(c->w->dropped, 1);
        STAT_ADD(c->w->drops[MQTT_DROP_PUBLISH_RATE], 1);
        /* 0x96 is not a PUBACK reason; 3.1.1 has no negative one at all */
        if (pb->qos)
            send_ack(c, pb->qos == 1 ? MQTT_PUBACK : MQTT_PUBREC, pb->id,
                     c->version == MQTT_V5 ? MQTT_RC_QUOTA_EXCEEDED : 0);
        return true;
    }
    int lim = -1;
    uint8_t ack = 0, disc = 0;
    uint32_t maxlev = LIMIT(max_topic_levels), maxpl = LIMIT(max_payload);
    if (tl > LIMIT(max_topic_len))
        lim = MQTT_LIMIT_TOPIC_LENGTH, ack = disc = MQTT_RC_TOPIC_NAME_INVALID;
    else if (maxlev && topic_levels(topic, tl) > maxlev)
        lim = MQTT_LIMIT_TOPIC_LEVELS, ack = disc = MQTT_RC_TOPIC_NAME_INVALID;
    else if (maxpl && pb->payload.n > maxpl)
        lim = MQTT_LIMIT_PAYLOAD_SIZE, ack = MQTT_RC_QUOTA_EXCEEDED,
        disc = MQTT_RC_PACKET_TOO_LARGE;
    if (lim < 0) return false;
    limit_hit(c->w, lim, "client %s: PUBLISH refused (topic %zu bytes, payload %u bytes)", cid, tl,
              pb->payload.n);
    /* v5 QoS 1/2: a negative acknowledgement, and the connection stays;
     * v5 QoS 0 can only be told by DISCONNECT; 3.1.1 has neither */
    if (c->version != MQTT_V5)
        conn_close(c, -1);
    else if (pb->qos == 0)
        conn_close(c, disc);
    else
        send_ack(c, pb->qos == 1 ? MQTT_PUBACK : MQTT_PUBREC, pb->id, ack);
    return true;
}

static void handle_publish(conn *c, const mqtt_packet *pkt)
{
    const mqtt_publish *pb = &pkt->u.publish;
    session *s = c->s;
    worker *w = c->w;
    const char *topic = (const char *)pb->topic.p;
    size_t tl = pb->topic.n;
    if (c->version == MQTT_V5 && MQTT_HAS(&pb->props, MQTT_P_TOPIC_ALIAS)) {
        uint16_t a = pb->props.topic_alias;
        if (a == 0 || a > B.cfg->topic_alias_maximum) {
            conn_close(c, MQTT_RC_TOPIC_ALIAS_INVALID);
            return;
        }
        if (!c->alias_in) {
            c->alias_in = calloc(B.cfg->topic_alias_maximum + 1u, sizeof *c->alias_in);
            if (!c->alias_in) {
                conn_close(c, MQTT_RC_UNSPECIFIED);
                return;
            }
        }
        if (tl == 0) {
            if (!c->alias_in[a]) {
                conn_close(c, MQTT_RC_PROTOCOL_ERROR);
                return;
            }
            topic = c->alias_in[a];
            tl = strlen(topic);
        } else {
            char *t = strndup(topic, tl);
            if (!t) return;
            free(c->alias_in[a]);
            c->alias_in[a] = t;
        }
    }
    if (!topic_name_valid(topic, tl)) {
        conn_fail(c, THZ_ETOPIC);
        return;
    }
    if (pb->retain && !B.cfg->retain_available) {
        conn_close(c, MQTT_RC_RETAIN_NOT_SUPPORTED);
        return;
    }
    STAT_ADD(w->msgs_in, 1);
    if (publish_limited(c, pb, topic, tl)) return;
    if (pb->qos == 2) {
        if (!s->ids_in && !(s->ids_in = calloc(1, 8192))) return;
        if (s->ids_in[pb->id >> 3] & (1u << (pb->id & 7))) {
            /* a duplicate of a message we already have: acknowledge again only */
            send_ack(c, MQTT_PUBREC, pb->id, 0);
            return;
        }
        if (s->n_in >= B.cfg->receive_maximum) {
            conn_close(c, MQTT_RC_RECEIVE_MAX_EXCEEDED);
            return;
        }
    }
    c->n_msgs_in++;
    if (topic[0] == '$' || auth_has_acl(B.auth, &c->id)) {
        if (!may_publish(c, topic, tl)) {
            log_debug("mqtt", "client %s: publish to '%.*s' denied", s->cid, (int)tl, topic);
            STAT_ADD(w->denied_pub, 1);
            if (c->version != MQTT_V5) {
                conn_close(c, -1);
            } else if (pb->qos == 1) {
                send_ack(c, MQTT_PUBACK, pb->id, MQTT_RC_NOT_AUTHORIZED);
            } else if (pb->qos == 2) {
                send_ack(c, MQTT_PUBREC, pb->id, MQTT_RC_NOT_AUTHORIZED);
            }
            return;
        }
    }
    /* forwardable properties: on the stack unless a peer sent many */
    uint8_t fwd_stack[512];
    uint8_t *fwd = pb->props.raw.n <= sizeof fwd_stack ? fwd_stack : malloc(pb->props.raw.n);
    if (!fwd) {
        conn_close(c, MQTT_RC_UNSPECIFIED);
        return;
    }
    size_t fl = c->version == MQTT_V5 ? mqtt_props_forwardable(&pb->props, fwd) : 0;
    int64_t exp = c->version == MQTT_V5 && MQTT_HAS(&pb->props, MQTT_P_MESSAGE_EXPIRY)
                      ? wall_s() + pb->props.message_expiry
                      : 0;
    const char *dev;
    size_t dl;
    thz_err stored = THZ_OK;
    durable *d = B.db && telemetry_topic(topic, tl, &dev, &dl)
                     ? telemetry_store(c, dev, dl, pb, &stored)
                     : NULL;
    char *theap;
    const char *it = tenant_name(c, topic, &tl, false, &theap);
    msg *m = it ? msg_new(it, tl, pb->payload.p, pb->payload.n, fwd, fl, pb->qos, pb->retain, exp)
                : NULL;
    free(theap);
    if (fwd != fwd_stack) free(fwd);
    if (!m) {
        conn_close(c, MQTT_RC_UNSPECIFIED);
        return;
    }
    m->origin = s;
    bool retained = !pb->retain || retained_set(m);
    if (!retained)
        limit_hit(w, MQTT_LIMIT_RETAINED, "client %s: retained message on a new topic refused",
                  s->cid);
    uint32_t matched = 0;
    route(w, m, s, &matched);
    msg_unref(m);
    /* not retained (max-retained-per-tenant), but delivered live */
    uint8_t rc = !retained ? MQTT_RC_QUOTA_EXCEEDED : matched ? 0 : MQTT_RC_NO_MATCHING_SUBSCRIBERS;
    if (stored && pb->qos > 0) {
        /* not stored (disk full): v5 says so in the acknowledgement (0x97);
         * 3.1.1 has no negative acknowledgement, so the connection closes
         * unacknowledged and the client sends the message again later */
        if (c->version != MQTT_V5) {
            conn_close(c, -1);
            return;
        }
        rc = mqtt_reason_from_err(stored);
    }
    if (pb->qos == 2) {
        s->ids_in[pb->id >> 3] |= (uint8_t)(1u << (pb->id & 7));
        s->n_in++;
    }
    if (pb->qos > 0) {
        uint8_t type = pb->qos == 1 ? MQTT_PUBACK : MQTT_PUBREC;
        /* a stored telemetry message is acknowledged once it is durable */
        if (!d || !(d->seq = ack_push(c, type, pb->id, rc, false))) send_ack(c, type, pb->id, rc);
    }
}

static void handle_pubrel(conn *c, uint16_t id)
{
    session *s = c->s;
    uint8_t rc = MQTT_RC_PACKET_ID_NOT_FOUND;
    if (s->ids_in && (s->ids_in[id >> 3] & (1u << (id & 7)))) {
        s->ids_in[id >> 3] &= (uint8_t) ~(1u << (id & 7));
        s->n_in--;
        rc = 0;
    }
    send_ack(c, MQTT_PUBCOMP, id, rc);
}

/* ---- SUBSCRIBE / UNSUBSCRIBE ---- */

static void handle_subscribe(conn *c, const mqtt_packet *pkt)
{
    const mqtt_subscribe *sb = &pkt->u.subscribe;
    session *s = c->s;
    bool v5 = c->version == MQTT_V5;
    uint32_t subid = v5 && MQTT_HAS(&sb->props, MQTT_P_SUB_ID) ? sb->props.sub_id : 0;
    uint8_t *codes = malloc(sb->count);
    uint8_t *send_retained = malloc(sb->count);
    if (!codes || !send_retained) {
        free(codes);
        free(send_retained);
        conn_close(c, MQTT_RC_UNSPECIFIED);
        return;
    }
    mqtt_span it = sb->list, fs;
    uint8_t opts;
    uint32_t i = 0;
    for (; mqtt_sub_next(&it, &fs, &opts); i++) {
        const char *f = (const char *)fs.p, *g = NULL, *rf = f;
        size_t fl = fs.n, gl = 0, rfl = fl;
        bool bad = false;
        bool shared = topic_share_parse(f, fl, &g, &gl, &rf, &rfl, &bad);
        send_retained[i] = 0;
        if (!shared) g = NULL;
        if (MQTT_SUBOPT_RETAIN_HANDLING(opts) == 3) {
            free(codes);
            free(send_retained);
            conn_fail(c, THZ_EPROTO);
            return;
        }
        if (shared && (opts & MQTT_SUBOPT_NO_LOCAL)) {
            free(codes);
            free(send_retained);
            conn_fail(c, THZ_EPROTO);
            return;
        }
        if (bad || (!shared && !topic_filter_valid(f, fl))) {
            codes[i] = v5 ? MQTT_RC_TOPIC_FILTER_INVALID : 0x80;
            continue;
        }
        uint32_t maxlev = LIMIT(max_topic_levels);
        if (rfl > LIMIT(max_topic_len) || (maxlev && topic_levels(rf, rfl) > maxlev)) {
            limit_hit(c->w,
                      rfl > LIMIT(max_topic_len) ? MQTT_LIMIT_TOPIC_LENGTH
                                                 : MQTT_LIMIT_TOPIC_LEVELS,
                      "client %s: filter of %zu bytes refused", s->cid, rfl);
            codes[i] = v5 ? MQTT_RC_TOPIC_FILTER_INVALID : 0x80;
            continue;
        }
        bool ok = !topic_reserved(rf, rfl);
        if (ok && auth_has_acl(B.auth, &c->id)) {
            char *fz = strndup(rf, rfl);
            ok = fz && auth_can_subscribe(B.auth, &c->id, s->cid + c->tplen, c->username, fz);
            free(fz);
        }
        if (!ok) {
            STAT_ADD(c->w->denied_sub, 1);
            codes[i] = v5 ? MQTT_RC_NOT_AUTHORIZED : 0x80;
            continue;
        }
        /* from here the broker's name of the filter (tenant prefix) */
        char *fheap;
        f = tenant_name(c, f, &fl, true, &fheap);
        if (!f) {
            codes[i] = v5 ? MQTT_RC_UNSPECIFIED : 0x80;
            continue;
        }
        if (!topic_share_parse(f, fl, &g, &gl, &rf, &rfl, &bad)) g = NULL, rf = f, rfl = fl;
        uint32_t maxs = LIMIT(max_subscriptions);
        if (maxs && s->nfilters >= maxs && !session_has_filter(s, f, fl)) {
            limit_hit(c->w, MQTT_LIMIT_SUBSCRIPTIONS, "client %s: over %u subscriptions", s->cid,
                      maxs);
            free(fheap);
            codes[i] = v5 ? MQTT_RC_QUOTA_EXCEEDED : 0x80;
            continue;
        }
        bool existed = false;
        trie_write_lock();
        thz_err rc = trie_add(B.root, rf, rfl, g, gl, s, opts & 0x3f, subid, &existed);
        if (rc == THZ_OK && !existed) __atomic_add_fetch(&B.nsubs, 1, __ATOMIC_RELAXED);
        trie_write_unlock();
        if (rc == THZ_OK && session_add_filter(s, f, fl) != THZ_OK) {
            /* the session must know every filter the trie holds for it */
            trie_write_lock();
            if (!existed && trie_remove(B.root, rf, rfl, g, gl, s))
                __atomic_sub_fetch(&B.nsubs, 1, __ATOMIC_RELAXED);
            trie_write_unlock();
            rc = THZ_ENOMEM;
        }
        if (rc != THZ_OK) {
            free(fheap);
            codes[i] = v5 ? MQTT_RC_UNSPECIFIED : 0x80;
            continue;
        }
        session_sub_persist(s, f, fl, opts & 0x3f, subid, false);
        free(fheap);
        codes[i] = MQTT_SUBOPT_QOS(opts);
        uint8_t rh = MQTT_SUBOPT_RETAIN_HANDLING(opts);
        send_retained[i] = !shared && (rh == 0 || (rh == 1 && !existed));
    }
    mqtt_encode_suback(&c->out, c->version, MQTT_SUBACK, sb->id, codes, sb->count, NULL);
    conn_mark_dirty(c);
    it = sb->list;
    for (i = 0; mqtt_sub_next(&it, &fs, &opts); i++) {
        if (!send_retained[i]) continue;
        size_t fl = fs.n;
        char *fheap;
        const char *f = tenant_name(c, (const char *)fs.p, &fl, true, &fheap);
        if (f) retained_deliver(c->w, s, f, fl, opts, subid);
        free(fheap);
    }
    free(codes);
    free(send_retained);
}

static void handle_unsubscribe(conn *c, const mqtt_packet *pkt)
{
    const mqtt_subscribe *sb = &pkt->u.subscribe;
    session *s = c->s;
    uint8_t *codes = malloc(sb->count);
    if (!codes) {
        conn_close(c, MQTT_RC_UNSPECIFIED);
        return;
    }
    mqtt_span it = sb->list, fs;
    for (uint32_t i = 0; mqtt_unsub_next(&it, &fs); i++) {
        size_t fl = fs.n, gl = 0, rfl;
        char *fheap;
        const char *f = tenant_name(c, (const char *)fs.p, &fl, true, &fheap), *g = NULL, *rf = f;
        rfl = fl;
        bool bad = !f;
        if (f && !topic_share_parse(f, fl, &g, &gl, &rf, &rfl, &bad)) g = NULL;
        trie_write_lock();
        bool found = !bad && trie_remove(B.root, rf, rfl, g, gl, s);
        if (found) __atomic_sub_fetch(&B.nsubs, 1, __ATOMIC_RELAXED);
        trie_write_unlock();
        if (found) {
            session_remove_filter(s, f, fl);
            session_sub_persist(s, f, fl, 0, 0, true);
        }
        free(fheap);
        codes[i] = found ? 0 : MQTT_RC_NO_SUBSCRIPTION_EXISTED;
    }
    mqtt_encode_suback(&c->out, c->version, MQTT_UNSUBACK, sb->id, codes, sb->count, NULL);
    conn_mark_dirty(c);
    free(codes);
}

static void handle_disconnect(conn *c, const mqtt_packet *pkt)
{
    session *s = c->s;
    if (c->version == MQTT_V5) {
        const mqtt_reasoned *d = &pkt->u.reasoned;
        if (MQTT_HAS(&d->props, MQTT_P_SESSION_EXPIRY)) {
            if (s->expiry == 0 && d->props.session_expiry != 0) {
                conn_fail(c, THZ_EPROTO);
                return;
            }
            uint32_t e = d->props.session_expiry;
            s->expiry = e > LIMIT(max_session_expiry) ? LIMIT(max_session_expiry) : e;
        }
        c->will_publish = d->reason == MQTT_RC_DISCONNECT_WITH_WILL;
    } else {
        c->will_publish = false;
    }
    c->gone = "CLIENT_INITIATED_DISCONNECT";
    conn_close(c, -1);
}

/* Returns 1 when c moved to another thread (stop processing its input). */
static int dispatch(conn *c, const mqtt_packet *pkt, const uint8_t *raw, size_t n, size_t rest)
{
    if (c->state == CONN_NEW) {
        if (pkt->type != MQTT_CONNECT) {
            conn_fail(c, THZ_EPROTO);
            return 0;
        }
        return handle_connect(c, pkt, raw, n, rest);
    }
    switch (pkt->type) {
    case MQTT_PUBLISH: handle_publish(c, pkt); break;
    case MQTT_PUBACK:
        if (inflight_ack(c->w, c->s, pkt->u.ack.id, MQTT_PUBACK) && c->behind)
            c->progress_ms = (int64_t)uv_now(c->w->loop);
        if (c->congested || c->behind) conn_pressure(c);
        break;
    case MQTT_PUBREC:
        if (inflight_ack(c->w, c->s, pkt->u.ack.id, MQTT_PUBREC)) {
            if (pkt->u.ack.reason >= 0x80)
                inflight_ack(c->w, c->s, pkt->u.ack.id, MQTT_PUBCOMP);
            else
                conn_send_pubrel(c, pkt->u.ack.id);
        } else if (pkt->u.ack.reason < 0x80) {
            send_ack(c, MQTT_PUBREL, pkt->u.ack.id, MQTT_RC_PACKET_ID_NOT_FOUND);
        }
        break;
    case MQTT_PUBREL: handle_pubrel(c, pkt->u.ack.id); break;
    case MQTT_PUBCOMP:
        if (inflight_ack(c->w, c->s, pkt->u.ack.id, MQTT_PUBCOMP) && c->behind)
            c->progress_ms = (int64_t)uv_now(c->w->loop);
        if (c->congested || c->behind) conn_pressure(c);
        break;
    case MQTT_SUBSCRIBE: handle_subscribe(c, pkt); break;
    case MQTT_UNSUBSCRIBE: handle_unsubscribe(c, pkt); break;
    case MQTT_PINGREQ:
        mqtt_encode_ping(&c->out, MQTT_PINGRESP);
        conn_mark_dirty(c);
        break;
    case MQTT_DISCONNECT: handle_disconnect(c, pkt); break;
    case MQTT_AUTH:
        /* no authentication method was agreed at CONNECT, so AUTH is out of place */
        conn_fail(c, THZ_EPROTO);
        break;
    default: conn_fail(c, THZ_EPROTO); break; /* a second CONNECT or a server-only packet */
    }
    return 0;
}

/* Parses and handles every whole packet in p[0..n). Returns the bytes used,
 * or (size_t)-1 when the connection moved to another thread. */
static size_t process(conn *c, const uint8_t *p, size_t n)
{
    size_t off = 0;
    if (c->state == CONN_NEW && n && p[0] != (MQTT_CONNECT << 4)) {
        /* Not MQTT at all (an HTTP request, a TLS hello, noise): do not wait
         * for the connect timeout to find out. */
        conn_close(c, -1);
        return 0;
    }
    while (off < n && c->state != CONN_CLOSING) {
        size_t plen;
        thz_err rc = mqtt_frame(p + off, n - off,
                                atomic_load_explicit(&B.max_packet, memory_order_relaxed), &plen);
        if (rc == THZ_EAGAIN) break;
        if (rc) {
            conn_fail(c, rc);
            break;
        }
        mqtt_packet pkt;
        rc = mqtt_decode(p + off, plen, c->state == CONN_NEW ? 0 : c->version, &pkt);
        if (rc) {
            if (c->state == CONN_NEW && rc == THZ_EVERSION) {
                connack_refuse(c, MQTT_V311, MQTT_RC_UNSUPPORTED_VERSION);
            } else if (c->state == CONN_NEW && pkt.type == MQTT_CONNECT &&
                       pkt.u.connect.version == MQTT_V5) {
                /* a malformed v5 CONNECT gets a CONNACK with the reason */
                connack_refuse(c, MQTT_V5, mqtt_reason_from_err(rc));
            } else {
                conn_fail(c, rc);
            }
            break;
        }
        c->w->hit_congested = false;
        if (dispatch(c, &pkt, p + off, plen, n - off - plen)) return (size_t)-1;
        off += plen;
        if (pkt.type == MQTT_PUBLISH && !c->congested && c->state == CONN_ACTIVE &&
            atomic_load_explicit(&B.congested, memory_order_relaxed) && c->w->hit_congested &&
            !tbucket_take(&c->bp_tokens, &c->bp_ms, LIMIT(bp_exempt), LIMIT(bp_exempt),
                          (int64_t)uv_now(c->w->loop))) {
            /* A consumer of this message is behind: stop reading this
             * publisher; what is already read waits in c->in. Publishers
             * whose messages go elsewhere keep going, and so do those under
             * --backpressure-exempt-rate (a probe client or a device must
             * not wait for someone else's slow subscriber). */
            pause_reading(c);
            break;
        }
    }
    return off;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    conn *c = h->data;
    if (c->in.len && !c->tls) {
        /* a partial packet is waiting: read behind it */
        if (thz_buf_reserve(&c->in, 65536) != THZ_OK) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        *buf = uv_buf_init((char *)c->in.p + c->in.len, (unsigned)(c->in.cap - c->in.len));
    } else {
        *buf = uv_buf_init((char *)c->w->rbuf, sizeof c->w->rbuf);
    }
}

/* Feeds freshly read bytes (at base, in the thread buffer or behind c->in). */
static void feed(conn *c, const uint8_t *base, size_t nread)
{
    const uint8_t *p;
    size_t n;
    bool in_own = c->in.len && base == c->in.p + c->in.len;
    if (in_own) {
        c->in.len += nread;
        p = c->in.p;
        n = c->in.len;
    } else {
        p = base;
        n = nread;
    }
    size_t used = process(c, p, n);
    if (used == (size_t)-1) {
        /* moved to another thread, or waiting for its password check with
         * every byte read so far kept aside */
        if (in_own && c->state != CONN_CLOSING) thz_buf_free(&c->in);
        return;
    }
    if (c->state == CONN_CLOSING) return;
    if (in_own) {
        thz_buf_consume(&c->in, used);
        if (c->in.len == 0) thz_buf_free(&c->in);
    } else if (used < n) {
        thz_buf_append(&c->in, p + used, n - used);
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = st->data;
    worker *w = c->w;
    if (nread < 0) {
        if (nread != UV_EOF)
            log_debug("mqtt", "client %s: read: %s", c->s ? c->s->cid : c->peer,
                      uv_strerror((int)nread));
        conn_close(c, -1);
    } else if (nread > 0) {
        STAT_ADD(w->bytes_in, (uint64_t)nread);
        c->n_bytes_in += (uint64_t)nread;
        c->last_rx_ms = now_ms();
        if (c->tls)
            tls_read(c, (const uint8_t *)buf->base, (size_t)nread);
        else
            feed(c, (const uint8_t *)buf->base, (size_t)nread);
        read_budget(c, (size_t)nread);
    }
    net_batch_end(w->idx);
}

/* Fairness: libuv keeps calling on_read for one socket while it has data (up
 * to 32 reads), so a client sending at line rate could hold its thread for
 * many milliseconds. Past READ_BUDGET bytes within one loop tick a
 * connection stops reading until the next loop iteration (worker_yield_resume,
 * from a prepare handle), letting every other connection have its turn. */
#define READ_BUDGET (512 * 1024)

static void read_budget(conn *c, size_t n)
{
    if (c->state != CONN_ACTIVE || c->paused || c->throttled || c->authing || c->yielded) return;
    uint64_t now = uv_now(c->w->loop);
    if (c->budget_ms != now) {
        c->budget_ms = now;
        c->budget_used = 0;
    }
    c->budget_used += n;
    if (c->budget_used <= READ_BUDGET) return;
    worker *w = c->w;
    if (w->nyield == w->ycap) {
        uint32_t cap = w->ycap ? w->ycap * 2 : 16;
        conn **a = realloc(w->yield, cap * sizeof *a);
        if (!a) return;
        w->yield = a;
        w->ycap = cap;
    }
    w->yield[w->nyield++] = c;
    c->yielded = true;
    c->budget_used = 0;
    read_stop(c);
}

void worker_yield_resume(worker *w)
{
    uint32_t n = w->nyield;
    w->nyield = 0;
    for (uint32_t i = 0; i < n; i++) {
        conn *c = w->yield[i];
        c->yielded = false;
        if (!c->paused && !c->throttled && !c->authing) read_start(c);
    }
}

void worker_resume(worker *w)
{
    bool all = atomic_load(&B.congested) == 0;
    /* Resuming may pause some again; work on a snapshot of the list. */
    uint32_t n = w->npaused;
    conn **list = malloc(n * sizeof *list);
    if (!list) return;
    memcpy(list, w->paused, n * sizeof *list);
    for (uint32_t i = 0; i < n; i++) {
        conn *c = list[i];
        if (!c->paused || c->state == CONN_CLOSING || !(all || c->congested)) continue;
        unpause_remove(c);
        c->last_rx_ms = now_ms();
        if (c->in.len) {
            size_t used = process(c, c->in.p, c->in.len);
            if (used == (size_t)-1 || c->state == CONN_CLOSING) continue;
            thz_buf_consume(&c->in, used);
            if (c->in.len == 0) thz_buf_free(&c->in);
        }
        if (!c->paused && !c->throttled && !c->yielded && !c->authing) read_start(c);
    }
    free(list);
    net_batch_end(w->idx);
}

/* ---- the byte transport: a TCP socket, TLS over one, or a WebSocket ---- */

static void read_stop(conn *c)
{
    if (c->tcp)
        uv_read_stop((uv_stream_t *)c->tcp);
    else if (c->ws)
        http_ws_reading(c->ws, false);
}

static void read_start(conn *c)
{
    if (c->tcp)
        uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read);
    else if (c->ws)
        http_ws_reading(c->ws, true);
}

/* Ciphertext in (p may be empty: drain what TLS holds), plaintext to the
 * parser. Everything decryptable is decrypted now, so nothing waits inside
 * TLS while the connection is paused (the plaintext waits in c->in, as
 * for TCP); only a password check or a move stops it, and those pick up
 * the rest (auth_work_done, conn_adopt). */
static void tls_read(conn *c, const uint8_t *p, size_t n)
{
    for (;;) {
        if (c->state == CONN_CLOSING || c->authing) return;
        uint8_t *dst = c->w->rbuf;
        size_t cap = sizeof c->w->rbuf;
        if (c->in.len) {
            /* behind the partial packet (or the input kept while paused) */
            if (thz_buf_reserve(&c->in, 16384 + 256) != THZ_OK) {
                conn_close(c, -1);
                return;
            }
            dst = c->in.p + c->in.len;
            cap = c->in.cap - c->in.len;
        }
        size_t got = 0;
        thz_err rc = net_tls_input(c->tls, p, n, dst, cap, &got);
        p = NULL;
        n = 0;
        if (rc == THZ_EAGAIN) { /* close_notify */
            conn_close(c, -1);
            return;
        }
        if (rc) {
            log_info("mqtt", "client %s: TLS: %s; closed", c->peer, net_tls_error(c->tls));
            conn_close(c, -1); /* sends the alert, if any */
            return;
        }
        if (net_tls_want_write(c->tls)) conn_mark_dirty(c);
        if (got == 0) return;
        if (c->paused) {
            /* keep it, in order, for worker_resume */
            if (dst == c->w->rbuf && thz_buf_append(&c->in, dst, got) != THZ_OK) {
                conn_close(c, -1);
                return;
            }
            if (dst != c->w->rbuf) c->in.len += got;
            continue;
        }
        feed(c, dst, got);
    }
}

static void ws_release_task(int thread, void *arg)
{
    conn *c = arg;
    c->ws_hold = false;
    conn_release(c);
}

/* The end of conn_close: the transport goes. */
static void transport_close(conn *c)
{
    if (c->tcp) {
        uv_read_stop((uv_stream_t *)c->tcp);
        uv_close((uv_handle_t *)c->tcp, on_closed);
        return;
    }
    if (c->ws) {
        /* The WebSocket forgets c now and closes after sending what is
         * queued (a CONNACK refusal, the DISCONNECT). */
        mws_detach(c->ws);
        http_ws_close(c->ws, 1000, NULL);
        c->ws = NULL;
    }
    /* c is freed later, never inside the caller's work (as for TCP) */
    if (c->ws_hold) net_post(c->w->idx, ws_release_task, c);
}

/* MQTT over WebSocket: the output goes as one binary message per flush
 * (a message may hold several packets, or part of one, as the MQTT spec
 * allows). A WebSocket whose peer does not read refuses more (THZ_EQUOTA):
 * the output stays in c->out, counted by back-pressure as unsent, and the
 * broker's tick retries it. */
static void ws_flush(conn *c)
{
    if (!c->ws || c->out.len == 0) return;
    thz_err rc = http_ws_send(c->ws, HTTP_WS_BINARY, c->out.p, c->out.len);
    if (rc == THZ_EQUOTA) return;
    if (rc) {
        if (c->state != CONN_CLOSING) conn_close(c, -1);
        return;
    }
    STAT_ADD(c->w->bytes_out, c->out.len);
    c->n_bytes_out += c->out.len;
    thz_buf_free(&c->out);
}

void conn_accept(int thread, uv_tcp_t *tcp, void *ctx)
{
    conn *c = conn_new(B.w[thread], tcp);
    if (!c) {
        uv_close((uv_handle_t *)tcp, (uv_close_cb)free);
        return;
    }
    uv_read_start((uv_stream_t *)tcp, on_alloc, on_read);
}

void conn_accept_tls(int thread, uv_tcp_t *tcp, void *ctx)
{
    conn *c = conn_new(B.w[thread], tcp);
    if (!c) {
        uv_close((uv_handle_t *)tcp, (uv_close_cb)free);
        return;
    }
    if (net_tls_new(NET_TLS_MQTT, &c->tls) != THZ_OK) {
        conn_close(c, -1);
        return;
    }
    uv_read_start((uv_stream_t *)tcp, on_alloc, on_read);
}

void conn_adopt(worker *w, int fd, net_tls *tls, const uint8_t *bytes, size_t n, const char *peer)
{
    uv_tcp_t *tcp = malloc(sizeof *tcp);
    if (!tcp) {
        close(fd);
        net_tls_free(tls);
        return;
    }
    uv_tcp_init(w->loop, tcp);
    if (uv_tcp_open(tcp, fd) != 0) {
        close(fd);
        net_tls_free(tls);
        uv_close((uv_handle_t *)tcp, (uv_close_cb)free);
        return;
    }
    conn *c = conn_new(w, tcp);
    if (!c) {
        net_tls_free(tls);
        uv_close((uv_handle_t *)tcp, (uv_close_cb)free);
        return;
    }
    c->tls = tls;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    uv_read_start((uv_stream_t *)tcp, on_alloc, on_read);
    /* process what arrived before the move as if it had just been read,
     * then what TLS still held (and send what it has to say) */
    feed(c, bytes, n);
    if (c->tls && c->state != CONN_CLOSING) {
        tls_read(c, NULL, 0);
        if (c->tls && net_tls_want_write(c->tls)) conn_mark_dirty(c);
    }
    net_batch_end(w->idx);
}

/* ---- MQTT over WebSocket: /mqtt on the HTTP and HTTPS listeners ---- */

/* The WebSocket's user pointer: its connection, or, while the connection
 * moves to another thread, the bytes that keep arriving meanwhile. Freed by
 * on_close. */
typedef struct mws {
    conn *c;       /* NULL: detached (closing) or moving */
    bool moving;   /* on its way to the session's home thread */
    thz_buf carry; /* moving: plaintext to process there, in order */
} mws;

static void mws_detach(http_ws *ws)
{
    mws *m = http_ws_user(ws);
    if (m) m->c = NULL;
}

static void mws_attach(http_ws *ws, mws *m, int thread)
{
    conn *c = thread >= 0 && thread < B.nthreads ? conn_new(B.w[thread], NULL) : NULL;
    if (!c) {
        http_ws_close(ws, 1011, "cannot accept a connection now");
        return;
    }
    c->ws = ws;
    c->ws_hold = true;
    snprintf(c->peer, sizeof c->peer, "%s", http_ws_peer(ws));
    m->c = c;
}

static void mws_open(http_ws *ws, void *ctx)
{
    mws *m = calloc(1, sizeof *m);
    if (!m) {
        http_ws_close(ws, 1011, "out of memory");
        return;
    }
    http_ws_set_user(ws, m);
    mws_attach(ws, m, http_ws_thread(ws));
}

/* On the session's home thread: the moved WebSocket gets a new connection,
 * which processes what was read before and during the move. */
static void mws_moved(http_ws *ws, void *arg)
{
    mws *m = arg;
    thz_buf carry = m->carry;
    memset(&m->carry, 0, sizeof m->carry);
    m->moving = false;
    mws_attach(ws, m, http_ws_thread(ws));
    if (m->c && carry.len) feed(m->c, carry.p, carry.len);
    thz_buf_free(&carry);
}

/* The WebSocket flavour of conn_migrate: the HTTP connection moves (socket,
 * TLS and WebSocket state), then a new connection on the target takes the
 * CONNECT and what followed it. */
static void conn_migrate_ws(conn *c, int target, const uint8_t *p, size_t n)
{
    http_ws *ws = c->ws;
    mws *m = http_ws_user(ws);
    if (!m || thz_buf_append(&m->carry, p, n) != THZ_OK) {
        conn_close(c, -1);
        return;
    }
    log_debug("mqtt",
              "client %s: its session lives on another thread; the WebSocket moves to "
              "thread %d",
              c->peer, target);
    m->c = NULL;
    m->moving = true;
    c->ws = NULL; /* c ends here; the WebSocket lives on */
    conn_close(c, -1);
    if (http_ws_move(ws, target, mws_moved, m) != THZ_OK) {
        m->moving = false;
        http_ws_close(ws, 1011, "cannot move the connection");
    }
}

static void mws_message(http_ws *ws, int opcode, const uint8_t *p, size_t n, void *ctx)
{
    mws *m = http_ws_user(ws);
    if (m && m->moving) {
        if (thz_buf_append(&m->carry, p, n) != THZ_OK) m->moving = false; /* drops it */
        return;
    }
    conn *c = m ? m->c : NULL;
    if (!c || c->state == CONN_CLOSING) return;
    if (opcode != HTTP_WS_BINARY) {
        /* MQTT over WebSocket is binary frames only (MQTT 5.0 6.0) */
        log_debug("mqtt", "client %s: a text WebSocket message; closed", c->peer);
        m->c = NULL;
        c->ws = NULL;
        http_ws_close(ws, 1003, "MQTT needs binary frames");
        conn_close(c, -1);
        return;
    }
    STAT_ADD(c->w->bytes_in, (uint64_t)n);
    c->n_bytes_in += (uint64_t)n;
    c->last_rx_ms = now_ms();
    if (c->paused || c->authing) {
        /* reading is stopped; what was read already waits, in order */
        if (thz_buf_append(&c->in, p, n) != THZ_OK) conn_close(c, -1);
        return;
    }
    if (c->in.len) {
        /* behind the partial packet: feed() finds it in place */
        if (thz_buf_reserve(&c->in, n) != THZ_OK) {
            conn_close(c, -1);
            return;
        }
        memcpy(c->in.p + c->in.len, p, n);
        feed(c, c->in.p + c->in.len, n);
    } else {
        feed(c, p, n);
    }
}

static void mws_close(http_ws *ws, uint16_t code, void *ctx)
{
    mws *m = http_ws_user(ws);
    if (!m) return;
    http_ws_set_user(ws, NULL);
    conn *c = m->c;
    thz_buf_free(&m->carry);
    free(m);
    if (!c) return;
    c->ws = NULL;      /* gone once this returns */
    conn_close(c, -1); /* not a DISCONNECT: the will goes out */
}

void mqtt_ws_register(void)
{
    static const http_ws_handler h = {mws_open, mws_message, mws_close};
    /* MQTT over WebSocket names its subprotocol "mqtt" (3.1.1 and 5.0);
     * MQTT 3.1 clients (and old Paho) say "mqttv3.1". */
    http_route_ws("/mqtt", "mqtt,mqttv3.1", &h, NULL);
}
