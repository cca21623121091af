/* live.c - the live WebSocket GET /api/v1/ws/live: authentication by the
 * first message, device and fleet subscriptions, and the fan-out of
 * telemetry, message and presence events from whatever thread produced them
 * to the sockets' I/O threads, plus the fleet frames every LIVE_FLEET_MS.
 *
 * Threads. A socket (struct sock) is created, used and freed on its
 * connection's I/O thread only. The subscription index (G.mu, a rwlock) maps
 * (tenant, device) and tenants to sockets; observers on other threads read
 * it under the read lock, which keeps every socket they see alive (a socket
 * leaves the index under the write lock before it is freed). They never
 * touch the WebSocket: they post a task carrying the socket's id and a
 * reference-counted frame to its thread (net_post), where the id is looked
 * up again, so a socket closed meanwhile simply drops the frame. */
#include "live/live_int.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hmap.h"
#include "core/log.h"
#include "http/http.h"
#include "mqtt/mqtt.h"
#include "net/net.h"
#include "query/query.h"

registry *live__reg;
static tsdb *DB;

/* A frame: one JSON text shared by every socket it goes to. */
typedef struct frame {
    atomic_int refs;
    size_t n;
    char s[];
} frame;

typedef struct fleet_ent {
    uint64_t msgs;
    int64_t last_seen;
    bool online, moving; /* moving: the last frame gave it a nonzero rate */
    uint64_t gen;
    char id[];
} fleet_ent;

typedef struct sock {
    uint64_t id;
    int thread;
    http_ws *ws; /* valid on the thread only */
    int64_t tenant;
    reg_role role;
    bool authed, closing;
    int64_t opened_ms;
    char *subs[LIVE_SUBS_PER_SOCKET];
    int nsubs;
    bool fleet, fleet_first;
    int64_t fleet_next_ms, fleet_prev_ms;
    hmap fleet_prev; /* device id -> fleet_ent */
    uint64_t fleet_gen;
    _Atomic size_t pending;   /* bytes posted to the thread, not yet sent */
    _Atomic uint64_t dropped; /* frames dropped since the last one sent */
    struct sock *next;        /* the thread's list */
} sock;

/* A list of sockets (an index entry). */
typedef struct sockv {
    sock **v;
    size_t n, cap;
    size_t klen;
    char key[]; /* tenant (8 bytes) [+ device id] */
} sockv;

static struct {
    pthread_rwlock_t mu;
    hmap devs;    /* tenant + device id -> sockv of subscribers */
    hmap tenants; /* tenant -> sockv of the tenant's authenticated sockets */
    _Atomic size_t ndev_subs;
    _Atomic uint64_t next_id;
    atomic_int nsockets;
} G = {.mu = PTHREAD_RWLOCK_INITIALIZER};

/* Per I/O thread: its sockets and its timer. */
static struct {
    sock *head;
    uv_timer_t timer;
} T[NET_MAX_THREADS];

/* ---- frames ---- */

static frame *frame_new(const cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    if (!s) return NULL;
    size_t n = strlen(s);
    frame *f = malloc(sizeof *f + n + 1);
    if (f) {
        atomic_init(&f->refs, 1);
        f->n = n;
        memcpy(f->s, s, n + 1);
    }
    cJSON_free(s);
    return f;
}

static void frame_unref(frame *f)
{
    if (f && atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1) free(f);
}

/* Sends text on s (its thread), within the socket's budget; a frame that
 * does not fit is dropped and counted, and the next one that goes out
 * carries "dropped": N. */
static void sock_send(sock *s, const char *p, size_t n)
{
    if (s->closing) return;
    if (http_ws_unsent(s->ws) + n > LIVE_SOCKET_BUDGET) {
        atomic_fetch_add_explicit(&s->dropped, 1, memory_order_relaxed);
        return;
    }
    uint64_t d = atomic_exchange_explicit(&s->dropped, 0, memory_order_relaxed);
    thz_err rc;
    if (d && n > 1 && p[0] == '{') {
        char head[48];
        int hl = snprintf(head, sizeof head, "{\"dropped\":%llu%s", (unsigned long long)d,
                          n > 2 ? "," : "");
        char *b = malloc((size_t)hl + n);
        if (!b) return;
        memcpy(b, head, (size_t)hl);
        memcpy(b + hl, p + 1, n - 1);
        rc = http_ws_send(s->ws, HTTP_WS_TEXT, b, (size_t)hl + n - 1);
        free(b);
    } else {
        rc = http_ws_send(s->ws, HTTP_WS_TEXT, p, n);
    }
    if (rc == THZ_EQUOTA || rc == THZ_ENOMEM)
        atomic_fetch_add_explicit(&s->dropped, d + 1, memory_order_relaxed);
}

static void send_json(sock *s, const cJSON *j)
{
    char *t = cJSON_PrintUnformatted(j);
    if (t) sock_send(s, t, strlen(t));
    cJSON_free(t);
}

static void send_error(sock *s, const char *msg)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "error");
    cJSON_AddStringToObject(j, "message", msg);
    send_json(s, j);
    cJSON_Delete(j);
}

static sock *thread_find(int thread, uint64_t id)
{
    for (sock *s = T[thread].head; s; s = s->next)
        if (s->id == id) return s;
    return NULL;
}

typedef struct post {
    uint64_t id;
    frame *f;
} post;

static void deliver_task(int thread, void *arg)
{
    post *t = arg;
    sock *s = thread >= 0 ? thread_find(thread, t->id) : NULL;
    if (s) {
        atomic_fetch_sub_explicit(&s->pending, t->f->n, memory_order_relaxed);
        sock_send(s, t->f->s, t->f->n);
    }
    frame_unref(t->f);
    free(t);
}

/* Hands f to s's thread (any thread; G.mu held, so s is alive). */
static void enqueue(sock *s, frame *f)
{
    size_t p = atomic_load_explicit(&s->pending, memory_order_relaxed);
    if (p + f->n > LIVE_SOCKET_BUDGET) {
        atomic_fetch_add_explicit(&s->dropped, 1, memory_order_relaxed);
        return;
    }
    post *t = malloc(sizeof *t);
    if (!t) {
        atomic_fetch_add_explicit(&s->dropped, 1, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&s->pending, f->n, memory_order_relaxed);
    atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
    t->id = s->id;
    t->f = f;
    net_post(s->thread, deliver_task, t);
}

/* ---- the index ---- */

static size_t dev_key(char *key, int64_t tenant, const char *id, size_t idlen)
{
    memcpy(key, &tenant, 8);
    memcpy(key + 8, id, idlen);
    return 8 + idlen;
}

static sockv *sockv_get(hmap *m, const char *key, size_t kl, bool create)
{
    sockv *v = hmap_get(m, key, kl);
    if (v || !create) return v;
    if (!(v = calloc(1, sizeof *v + kl))) return NULL;
    memcpy(v->key, key, kl);
    v->klen = kl;
    if (hmap_put(m, v->key, kl, v, NULL) != THZ_OK) {
        free(v);
        return NULL;
    }
    return v;
}

static bool sockv_add(sockv *v, sock *s)
{
    if (v->n == v->cap) {
        size_t c = v->cap ? v->cap * 2 : 4;
        sock **p = realloc(v->v, c * sizeof *p);
        if (!p) return false;
        v->v = p;
        v->cap = c;
    }
    v->v[v->n++] = s;
    return true;
}

/* Removes s; frees v (and its map entry) when it becomes empty. */
static void sockv_del(hmap *m, sockv *v, sock *s)
{
    for (size_t i = 0; i < v->n; i++)
        if (v->v[i] == s) {
            v->v[i] = v->v[--v->n];
            break;
        }
    if (v->n == 0) {
        hmap_del(m, v->key, v->klen);
        free(v->v);
        free(v);
    }
}

static void on_write(void *ctx, int64_t tenant, const tsdb_point *pts, size_t n);

/* Adjusts the count of device subscriptions (G.mu held for writing) and
 * arms or disarms the engine's write observer at the edges. */
static void dev_subs_add(long d)
{
    size_t before = atomic_fetch_add(&G.ndev_subs, (size_t)d);
    size_t after = before + (size_t)d;
    if (!DB) return;
    if (before == 0 && after > 0) tsdb_on_write(DB, on_write, NULL);
    if (before > 0 && after == 0) tsdb_on_write(DB, NULL, NULL);
}

/* ---- events from other modules ---- */

static void add_value(cJSON *o, const char *name, const tsdb_value *v)
{
    if (cJSON_GetObjectItemCaseSensitive(o, name)) return; /* another tag set: first wins */
    switch (v->type) {
    case TSDB_FLOAT:
        if (isfinite(v->u.f))
            cJSON_AddNumberToObject(o, name, v->u.f);
        else
            cJSON_AddNullToObject(o, name);
        break;
    case TSDB_INT: cJSON_AddNumberToObject(o, name, (double)v->u.i); break;
    case TSDB_BOOL: cJSON_AddBoolToObject(o, name, v->u.b); break;
    case TSDB_STRING: {
        char *z = strndup(v->u.s.p ? v->u.s.p : "", v->u.s.n);
        if (z) cJSON_AddStringToObject(o, name, z);
        free(z);
        break;
    }
    }
}

#define MAX_GROUPS 64

typedef struct tgroup {
    sockv *v;
    const char *dev;
    size_t dl;
    int64_t ts;
    cJSON *j, *metrics;
} tgroup;

static void groups_flush(tgroup *g, size_t *ng)
{
    for (size_t i = 0; i < *ng; i++) {
        frame *f = frame_new(g[i].j);
        cJSON_Delete(g[i].j);
        if (!f) continue;
        for (size_t k = 0; k < g[i].v->n; k++) enqueue(g[i].v->v[k], f);
        frame_unref(f);
    }
    *ng = 0;
}

/* The engine's write observer (armed while some socket subscribes to a
 * device): one telemetry frame per (device, timestamp) of the write. */
static void on_write(void *ctx, int64_t tenant, const tsdb_point *pts, size_t n)
{
    if (atomic_load_explicit(&G.ndev_subs, memory_order_relaxed) == 0) return;
    tgroup g[MAX_GROUPS];
    size_t ng = 0;
    char key[8 + 128];
    const char *ldev = NULL;
    size_t ldl = 0;
    sockv *lv = NULL;
    pthread_rwlock_rdlock(&G.mu);
    for (size_t i = 0; i < n; i++) {
        const tsdb_point *p = &pts[i];
        if (p->device_len > 128) continue;
        if (!(ldev && ldl == p->device_len && memcmp(ldev, p->device, ldl) == 0)) {
            ldev = p->device;
            ldl = p->device_len;
            lv = hmap_get(&G.devs, key, dev_key(key, tenant, p->device, p->device_len));
        }
        if (!lv) continue;
        size_t k = 0;
        for (; k < ng; k++)
            if (g[k].v == lv && g[k].ts == p->ts) break;
        if (k == ng) {
            if (ng == MAX_GROUPS) groups_flush(g, &ng), k = 0;
            cJSON *j = cJSON_CreateObject();
            if (!j) continue;
            char t[48], dev[129];
            memcpy(dev, p->device, p->device_len);
            dev[p->device_len] = 0;
            q_time_format(p->ts, t);
            cJSON_AddStringToObject(j, "type", "telemetry");
            cJSON_AddStringToObject(j, "device", dev);
            cJSON_AddStringToObject(j, "time", t);
            g[k] = (tgroup){lv,    p->device, p->device_len,
                            p->ts, j,         cJSON_AddObjectToObject(j, "metrics")};
            ng++;
        }
        char metric[257];
        memcpy(metric, p->metric, p->metric_len);
        metric[p->metric_len] = 0;
        add_value(g[k].metrics, metric, &p->v);
    }
    groups_flush(g, &ng);
    pthread_rwlock_unlock(&G.mu);
}

void live__on_message(int64_t tenant, const char *id, size_t idlen, int64_t ms, const char *topic,
                      size_t topic_len, const uint8_t *payload, size_t n, size_t size, int qos,
                      bool retain)
{
    if (atomic_load_explicit(&G.ndev_subs, memory_order_relaxed) == 0) return;
    char key[8 + REG_ID_MAX];
    pthread_rwlock_rdlock(&G.mu);
    sockv *v = hmap_get(&G.devs, key, dev_key(key, tenant, id, idlen));
    if (v) {
        cJSON *j = cJSON_CreateObject();
        char t[64], dev[REG_ID_MAX + 1];
        memcpy(dev, id, idlen);
        dev[idlen] = 0;
        live__fmt_ms(ms, t);
        cJSON_AddStringToObject(j, "type", "message");
        cJSON_AddStringToObject(j, "device", dev);
        cJSON_AddStringToObject(j, "time", t);
        size_t tl = topic_len < LIVE_TOPIC_MAX ? topic_len : LIVE_TOPIC_MAX;
        char *tz = strndup(topic, tl);
        cJSON_AddStringToObject(j, "topic", tz ? tz : "");
        free(tz);
        cJSON_AddNumberToObject(j, "qos", qos);
        cJSON_AddBoolToObject(j, "retain", retain);
        live_payload_json(j, payload, n, n < size);
        cJSON_AddNumberToObject(j, "size", (double)size);
        cJSON_AddBoolToObject(j, "truncated", n < size);
        frame *f = frame_new(j);
        cJSON_Delete(j);
        if (f) {
            for (size_t k = 0; k < v->n; k++) enqueue(v->v[k], f);
            frame_unref(f);
        }
    }
    pthread_rwlock_unlock(&G.mu);
}

static bool sock_has_sub(const sock *s, const char *dev)
{
    for (int i = 0; i < s->nsubs; i++)
        if (strcmp(s->subs[i], dev) == 0) return true;
    return false;
}

/* The registry's presence observer (a broker I/O thread). */
static void on_presence(const reg_presence_event *ev, void *ctx)
{
    char key[8 + REG_ID_MAX];
    size_t idlen = strlen(ev->device);
    if (idlen > REG_ID_MAX) return;
    pthread_rwlock_rdlock(&G.mu);
    sockv *dv = hmap_get(&G.devs, key, dev_key(key, ev->tenant, ev->device, idlen));
    sockv *tv = hmap_get(&G.tenants, &ev->tenant, 8);
    bool fleet = false;
    for (size_t i = 0; tv && i < tv->n && !fleet; i++) fleet = tv->v[i]->fleet;
    if (dv || fleet) {
        cJSON *j = cJSON_CreateObject();
        char t[64];
        live__fmt_ms(ev->time_ms, t);
        cJSON_AddStringToObject(j, "type", "presence");
        cJSON_AddStringToObject(j, "device", ev->device);
        cJSON_AddBoolToObject(j, "online", ev->online);
        cJSON_AddStringToObject(j, "time", t);
        cJSON_AddStringToObject(j, "event", ev->online ? "connected" : "disconnected");
        if (ev->address) cJSON_AddStringToObject(j, "address", ev->address);
        if (ev->protocol) cJSON_AddStringToObject(j, "protocol", ev->protocol);
        if (ev->client_id) cJSON_AddStringToObject(j, "client_id", ev->client_id);
        if (ev->reason) cJSON_AddStringToObject(j, "reason", ev->reason);
        frame *f = frame_new(j);
        cJSON_Delete(j);
        if (f) {
            for (size_t k = 0; dv && k < dv->n; k++) enqueue(dv->v[k], f);
            /* fleet subscribers that do not already have it as a device's */
            for (size_t k = 0; tv && k < tv->n; k++)
                if (tv->v[k]->fleet && !(dv && sock_has_sub(tv->v[k], ev->device)))
                    enqueue(tv->v[k], f);
            frame_unref(f);
        }
    }
    pthread_rwlock_unlock(&G.mu);
}

/* ---- fleet frames (the socket's thread) ---- */

typedef struct fleet_ctx {
    sock *s;
    cJSON *devs;
    int64_t now;
    double dt;
    size_t online, total, changed;
} fleet_ctx;

static void fleet_fn(void *ctx, const reg_dev_counters *c)
{
    fleet_ctx *x = ctx;
    sock *s = x->s;
    x->total++;
    x->online += c->online;
    size_t il = strlen(c->id);
    fleet_ent *e = hmap_get(&s->fleet_prev, c->id, il);
    bool fresh = !e;
    if (fresh) {
        if (!(e = calloc(1, sizeof *e + il + 1))) return;
        memcpy(e->id, c->id, il + 1);
        if (hmap_put(&s->fleet_prev, e->id, il, e, NULL) != THZ_OK) {
            free(e);
            return;
        }
    }
    e->gen = s->fleet_gen;
    uint64_t dm = c->msgs_in >= e->msgs ? c->msgs_in - e->msgs : 0;
    bool changed = fresh || s->fleet_first || dm || e->online != c->online ||
                   (!c->online && e->last_seen != c->last_seen_ms) || e->moving;
    double rate = fresh || s->fleet_first || x->dt <= 0 ? 0 : (double)dm / x->dt;
    e->msgs = c->msgs_in;
    e->online = c->online;
    e->last_seen = c->last_seen_ms;
    e->moving = rate > 0;
    if (!changed) return;
    x->changed++;
    cJSON *d = cJSON_AddObjectToObject(x->devs, c->id);
    if (!d) return;
    cJSON_AddNumberToObject(d, "rate", round(rate * 1000) / 1000);
    if (c->last_seen_ms > 0) {
        char t[64];
        live__fmt_ms(c->last_seen_ms, t);
        cJSON_AddStringToObject(d, "last_seen", t);
    } else {
        cJSON_AddNullToObject(d, "last_seen");
    }
    cJSON_AddBoolToObject(d, "online", c->online);
}

static void fleet_frame(sock *s, int64_t now)
{
    fleet_ctx x = {.s = s, .now = now};
    x.dt = s->fleet_prev_ms ? (double)(now - s->fleet_prev_ms) / 1000.0 : 0;
    s->fleet_gen++;
    cJSON *j = cJSON_CreateObject();
    char t[64];
    live__fmt_ms(now, t);
    cJSON_AddStringToObject(j, "type", "fleet");
    cJSON_AddStringToObject(j, "time", t);
    x.devs = cJSON_CreateObject();
    reg_fleet_counters(live__reg, s->tenant, fleet_fn, &x);
    cJSON_AddNumberToObject(j, "online", (double)x.online);
    cJSON_AddNumberToObject(j, "total", (double)x.total);
    cJSON_AddItemToObject(j, "devices", x.devs);
    send_json(s, j);
    cJSON_Delete(j);
    /* Forget devices deleted since the last frame (collected first: the
     * map must not change while it is iterated). */
    if (s->fleet_prev.n > x.total) {
        fleet_ent **gone = malloc((s->fleet_prev.n - x.total) * sizeof *gone);
        size_t ng = 0, pos = 0, cap = s->fleet_prev.n - x.total;
        for (hmap_entry *e = hmap_next(&s->fleet_prev, &pos, NULL); e && gone;
             e = hmap_next(&s->fleet_prev, &pos, e)) {
            fleet_ent *fe = e->val;
            if (fe->gen != s->fleet_gen && ng < cap) gone[ng++] = fe;
        }
        for (size_t i = 0; i < ng; i++) {
            hmap_del(&s->fleet_prev, gone[i]->id, strlen(gone[i]->id));
            free(gone[i]);
        }
        free(gone);
    }
    s->fleet_first = false;
    s->fleet_prev_ms = now;
    s->fleet_next_ms = now + LIVE_FLEET_MS;
}

static void fleet_clear(sock *s)
{
    size_t pos = 0;
    for (hmap_entry *e = hmap_next(&s->fleet_prev, &pos, NULL); e;
         e = hmap_next(&s->fleet_prev, &pos, e))
        free(e->val);
    hmap_free(&s->fleet_prev);
    memset(&s->fleet_prev, 0, sizeof s->fleet_prev);
}

static void on_tick(uv_timer_t *t)
{
    int thread = (int)(intptr_t)t->data;
    int64_t now = live__now_ms();
    for (sock *s = T[thread].head; s; s = s->next) {
        if (s->closing) continue;
        if (!s->authed && now - s->opened_ms > LIVE_AUTH_MS) {
            send_error(s, "no auth message within 10 s");
            http_ws_close(s->ws, 1008, "authentication timeout");
            s->closing = true;
        } else if (s->fleet && now >= s->fleet_next_ms) {
            fleet_frame(s, now);
        }
    }
    net_batch_end(thread);
}

static void thread_start(int thread, uv_loop_t *loop, void *ctx)
{
    uv_timer_init(loop, &T[thread].timer);
    T[thread].timer.data = (void *)(intptr_t)thread;
    uv_timer_start(&T[thread].timer, on_tick, 250, 250);
}

static void thread_stop(int thread, uv_loop_t *loop, void *ctx)
{
    uv_timer_stop(&T[thread].timer);
    uv_close((uv_handle_t *)&T[thread].timer, NULL);
}

/* ---- the WebSocket ---- */

static void ws_open(http_ws *ws, void *ctx)
{
    sock *s = calloc(1, sizeof *s);
    if (!s) {
        http_ws_close(ws, 1011, "out of memory");
        return;
    }
    s->id = atomic_fetch_add(&G.next_id, 1) + 1;
    s->thread = http_ws_thread(ws);
    s->ws = ws;
    s->opened_ms = live__now_ms();
    s->next = T[s->thread].head;
    T[s->thread].head = s;
    http_ws_set_user(ws, s);
    if (atomic_fetch_add(&G.nsockets, 1) >= LIVE_MAX_SOCKETS) {
        send_error(s, "too many live sockets");
        http_ws_close(ws, 1013, "too many live sockets");
        s->closing = true;
    }
}

static void unsubscribe_dev(sock *s, int i)
{
    char key[8 + REG_ID_MAX];
    size_t kl = dev_key(key, s->tenant, s->subs[i], strlen(s->subs[i]));
    sockv *v = hmap_get(&G.devs, key, kl);
    if (v) sockv_del(&G.devs, v, s);
    free(s->subs[i]);
    s->subs[i] = s->subs[--s->nsubs];
    dev_subs_add(-1);
}

static void do_auth(sock *s, const char *token)
{
    reg_principal p;
    if (reg_token_check(live__reg, token, &p) != THZ_OK) {
        send_error(s, "the token is invalid, expired or revoked");
        http_ws_close(s->ws, 1008, "authentication failed");
        s->closing = true;
        return;
    }
    pthread_rwlock_wrlock(&G.mu);
    sockv *tv = sockv_get(&G.tenants, (const char *)&p.tenant, 8, true);
    bool ok = tv && tv->n < LIVE_TENANT_SOCKETS;
    if (ok) {
        s->tenant = p.tenant;
        ok = sockv_add(tv, s);
        if (!ok && tv->n == 0) sockv_del(&G.tenants, tv, s);
    }
    pthread_rwlock_unlock(&G.mu);
    if (!ok) {
        send_error(s, "too many live sockets for this tenant");
        http_ws_close(s->ws, 1008, "too many live sockets");
        s->closing = true;
        return;
    }
    s->authed = true;
    s->role = p.role;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "ready");
    cJSON_AddNumberToObject(j, "tenant", (double)p.tenant);
    cJSON_AddStringToObject(j, "role",
                            p.role == REG_ADMIN      ? "admin"
                            : p.role == REG_OPERATOR ? "operator"
                                                     : "viewer");
    send_json(s, j);
    cJSON_Delete(j);
}

static void ack(sock *s, const char *type, const char *device)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", type);
    if (device)
        cJSON_AddStringToObject(j, "device", device);
    else
        cJSON_AddBoolToObject(j, "fleet", true);
    send_json(s, j);
    cJSON_Delete(j);
}

static void do_subscribe(sock *s, const live_cmd *c)
{
    if (c->fleet) {
        if (!s->fleet) {
            pthread_rwlock_wrlock(&G.mu);
            s->fleet = true;
            pthread_rwlock_unlock(&G.mu);
            s->fleet_first = true;
            s->fleet_prev_ms = 0;
        }
        ack(s, "subscribed", NULL);
        /* the first frame (every device) at the next tick */
        s->fleet_next_ms = 0;
        return;
    }
    if (sock_has_sub(s, c->device)) {
        ack(s, "subscribed", c->device);
        return;
    }
    if (s->nsubs == LIVE_SUBS_PER_SOCKET) {
        send_error(s, "at most 64 device subscriptions per socket");
        return;
    }
    char *d = strdup(c->device);
    if (!d) return;
    char key[8 + REG_ID_MAX];
    size_t kl = dev_key(key, s->tenant, d, strlen(d));
    pthread_rwlock_wrlock(&G.mu);
    sockv *v = sockv_get(&G.devs, key, kl, true);
    bool ok = v && sockv_add(v, s);
    if (ok) {
        s->subs[s->nsubs++] = d;
        dev_subs_add(1);
    } else if (v && v->n == 0) {
        sockv_del(&G.devs, v, s);
    }
    pthread_rwlock_unlock(&G.mu);
    if (!ok) {
        free(d);
        send_error(s, "out of memory");
        return;
    }
    ack(s, "subscribed", c->device);
}

static void do_unsubscribe(sock *s, const live_cmd *c)
{
    pthread_rwlock_wrlock(&G.mu);
    if (c->fleet) {
        s->fleet = false;
    } else {
        for (int i = 0; i < s->nsubs; i++)
            if (strcmp(s->subs[i], c->device) == 0) {
                unsubscribe_dev(s, i);
                break;
            }
    }
    pthread_rwlock_unlock(&G.mu);
    if (c->fleet) fleet_clear(s);
    ack(s, "unsubscribed", c->fleet ? NULL : c->device);
}

static void ws_message(http_ws *ws, int opcode, const uint8_t *p, size_t n, void *ctx)
{
    sock *s = http_ws_user(ws);
    if (!s || s->closing) return;
    static __thread live_cmd c;
    const char *err;
    if (opcode != HTTP_WS_TEXT || live_parse_cmd(p, n, &c, &err) != THZ_OK) {
        send_error(s, opcode != HTTP_WS_TEXT ? "messages must be text (JSON)" : err);
        if (!s->authed) {
            http_ws_close(ws, 1008, "authenticate first");
            s->closing = true;
        }
        return;
    }
    if (!s->authed) {
        if (c.op != LIVE_OP_AUTH) {
            send_error(s, "the first message must be {\"op\":\"auth\",\"token\":...}");
            http_ws_close(ws, 1008, "authenticate first");
            s->closing = true;
            return;
        }
        do_auth(s, c.token);
        return;
    }
    switch (c.op) {
    case LIVE_OP_AUTH: send_error(s, "already authenticated"); break;
    case LIVE_OP_SUBSCRIBE: do_subscribe(s, &c); break;
    case LIVE_OP_UNSUBSCRIBE: do_unsubscribe(s, &c); break;
    case LIVE_OP_PING: {
        static const char pong[] = "{\"type\":\"pong\"}";
        sock_send(s, pong, sizeof pong - 1);
        break;
    }
    }
}

static void ws_close(http_ws *ws, uint16_t code, void *ctx)
{
    sock *s = http_ws_user(ws);
    if (!s) return;
    pthread_rwlock_wrlock(&G.mu);
    while (s->nsubs) unsubscribe_dev(s, s->nsubs - 1);
    if (s->authed) {
        sockv *tv = hmap_get(&G.tenants, &s->tenant, 8);
        if (tv) sockv_del(&G.tenants, tv, s);
    }
    pthread_rwlock_unlock(&G.mu);
    atomic_fetch_sub(&G.nsockets, 1);
    sock **pp = &T[s->thread].head;
    while (*pp && *pp != s) pp = &(*pp)->next;
    if (*pp) *pp = s->next;
    fleet_clear(s);
    http_ws_set_user(ws, NULL);
    free(s);
}

thz_err live_start(registry *r, tsdb *db)
{
    live__reg = r;
    DB = db;
    mqtt_on_publish(live__observe_publish, NULL);
    reg_on_presence(r, on_presence, NULL);
    net_on_thread(thread_start, thread_stop, NULL);
    static const http_ws_handler h = {ws_open, ws_message, ws_close};
    return http_route_ws("/api/v1/ws/live", NULL, &h, NULL);
}
