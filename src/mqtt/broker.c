/* broker.c - the broker's shared state and message flow: sessions, routing
 * of a published message to every matching session (on any thread),
 * outbound QoS 1/2 windows and queues, retained messages, wills, the state
 * log (persistence) and the $SYS statistics. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "net/net.h"
#include "mqtt/mqtt_int.h"

broker B;

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t wall_s(void)
{
    return (int64_t)time(NULL);
}

/* ---- messages ---- */

msg *msg_new(const char *topic, size_t tlen, const void *payload, size_t plen, const void *props,
             size_t prlen, uint8_t qos, bool retain, int64_t expires_at)
{
    msg *m = malloc(sizeof *m + tlen + 1 + prlen + plen);
    if (!m) return NULL;
    atomic_init(&m->refs, 1);
    m->home = (int16_t)net_self();
    m->qos = qos;
    m->retain = retain;
    m->expires_at = expires_at;
    m->origin = NULL;
    m->topic_len = (uint32_t)tlen;
    m->payload_len = (uint32_t)plen;
    m->props_len = (uint32_t)prlen;
    m->topic = m->data;
    memcpy(m->topic, topic, tlen);
    m->topic[tlen] = 0;
    m->props = (uint8_t *)m->data + tlen + 1;
    if (prlen) memcpy(m->props, props, prlen);
    m->payload = m->props + prlen;
    if (plen) memcpy(m->payload, payload, plen);
    return m;
}

/* A message is usually allocated by the publisher's thread and released by a
 * subscriber's. Freeing it there would make both threads fight over the
 * allocator arena of the first (a profile of 1 -> 1 across threads showed a
 * quarter of the CPU in malloc, free and their lock), so the releasing thread
 * collects such messages and hands them home once per batch, where free()
 * is a cheap thread-local one. */
void msg_unref(msg *m)
{
    if (!m || atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1) return;
    int self = net_self();
    if (m->home < 0 || self < 0 || m->home == self) {
        free(m);
        return;
    }
    worker *w = B.w[self];
    int h = m->home;
    if (w->gbn[h] == w->gbcap[h]) {
        uint32_t cap = w->gbcap[h] ? w->gbcap[h] * 2 : 256;
        msg **a = realloc(w->gb[h], cap * sizeof *a);
        if (!a) {
            free(m);
            return;
        }
        w->gb[h] = a;
        w->gbcap[h] = cap;
    }
    w->gb[h][w->gbn[h]++] = m;
}

typedef struct mbatch {
    uint32_t n;
    msg *m[];
} mbatch;

static void free_batch_task(int thread, void *arg)
{
    mbatch *b = arg;
    for (uint32_t i = 0; i < b->n; i++) free(b->m[i]);
    free(b);
}

/* Sends the messages collected by msg_unref to their home threads. */
static void garbage_flush(worker *w)
{
    for (int t = 0; t < B.nthreads; t++) {
        uint32_t n = w->gbn[t];
        if (!n) continue;
        w->gbn[t] = 0;
        mbatch *b = malloc(sizeof *b + n * sizeof(msg *));
        if (!b) {
            for (uint32_t i = 0; i < n; i++) free(w->gb[t][i]);
            continue;
        }
        b->n = n;
        memcpy(b->m, w->gb[t], n * sizeof(msg *));
        net_post(t, free_batch_task, b);
    }
}

/* ---- sessions ---- */

session *session_ref(session *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void session_unref(session *s)
{
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
    for (uint32_t i = 0; i < s->nfilters; i++) free(s->filters[i]);
    free(s->filters);
    free(s->inf);
    free(s->q);
    free(s->ids_out);
    free(s->ids_in);
    free(s);
}

static void off_list_add(worker *w, session *s)
{
    if (s->on_off_list) return;
    s->off_prev = NULL;
    s->off_next = w->offline;
    if (w->offline) w->offline->off_prev = s;
    w->offline = s;
    s->on_off_list = true;
}

void off_list_del(worker *w, session *s)
{
    if (!s->on_off_list) return;
    if (s->off_prev)
        s->off_prev->off_next = s->off_next;
    else
        w->offline = s->off_next;
    if (s->off_next) s->off_next->off_prev = s->off_prev;
    s->on_off_list = false;
}

/* Store keys: 's' cid | 'u' cid 0 gen(8) filter | 'm' cid 0 gen(8) seq(8) |
 * 'r' topic; gen and seq big-endian. gen names the session instance, so that
 * a session replaced by a clean start (whose cleanup may run later, on
 * another thread) can never touch the records of its successor. */
static void put_be64(uint8_t *p, uint64_t v);

static size_t key_make(uint8_t *k, char kind, const session *s, const void *rest, size_t rlen)
{
    k[0] = (uint8_t)kind;
    memcpy(k + 1, s->cid, s->cidlen);
    size_t n = 1 + s->cidlen;
    if (kind != 's') {
        k[n++] = 0;
        put_be64(k + n, s->gen);
        n += 8;
        memcpy(k + n, rest, rlen);
        n += rlen;
    }
    return n;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) p[7 - i] = (uint8_t)(v >> (i * 8));
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

/* A failing state log fails for every message: say so once a second. */
static void store_warn(const char *what, thz_err rc)
{
    static _Atomic int64_t last;
    int64_t now = now_ms(), prev = atomic_load_explicit(&last, memory_order_relaxed);
    if (now - prev < 1000 || !atomic_compare_exchange_strong(&last, &prev, now)) return;
    log_warn("mqtt", "state log %s failed: %s", what, thz_strerror(rc));
}

static void store_put_checked(const void *k, size_t kl, const void *v, size_t vl)
{
    thz_err rc = store_put(B.st, k, kl, v, vl);
    if (rc) store_warn("put", rc);
    worker *w = net_self() >= 0 ? B.w[net_self()] : NULL;
    if (w) w->store_dirty = true;
}

static void store_del_checked(const void *k, size_t kl)
{
    thz_err rc = store_del(B.st, k, kl);
    if (rc) store_warn("delete", rc);
    worker *w = net_self() >= 0 ? B.w[net_self()] : NULL;
    if (w) w->store_dirty = true;
}

/* The 's' record belongs to the session the table holds for its client id;
 * it is written and deleted under sess_lock so that a replaced session and
 * its successor keep their order in the log. */
static void session_record_locked(session *s, bool del, int64_t disconnected)
{
    uint8_t k[1 + 65536];
    size_t kl = key_make(k, 's', s, NULL, 0);
    if (del) {
        store_del_checked(k, kl);
        return;
    }
    uint8_t v[21];
    v[0] = s->version;
    memcpy(v + 1, &s->expiry, 4);
    memcpy(v + 5, &disconnected, 8);
    memcpy(v + 13, &s->gen, 8);
    store_put_checked(k, kl, v, sizeof v);
}

void session_persist(session *s, int64_t disconnected)
{
    if (!s->persistent) return;
    pthread_mutex_lock(&B.sess_lock);
    if (hmap_get(&B.sessions, s->cid, s->cidlen) == s)
        session_record_locked(s, false, disconnected);
    pthread_mutex_unlock(&B.sess_lock);
}

void session_unpersist(session *s)
{
    for (uint32_t i = 0; i < s->nfilters; i++)
        session_sub_persist(s, s->filters[i], strlen(s->filters[i]), 0, 0, true);
    pthread_mutex_lock(&B.sess_lock);
    if (hmap_get(&B.sessions, s->cid, s->cidlen) == s) session_record_locked(s, true, 0);
    pthread_mutex_unlock(&B.sess_lock);
}

void session_record_delete_locked(const char *cid, size_t cidlen)
{
    uint8_t k[1 + 65536];
    k[0] = 's';
    memcpy(k + 1, cid, cidlen);
    store_del_checked(k, 1 + cidlen);
}

void session_sub_persist(session *s, const char *f, size_t fl, uint8_t opts, uint32_t id, bool del)
{
    if (!s->persistent) return;
    uint8_t *k = malloc(10 + s->cidlen + fl);
    if (!k) return;
    size_t kl = key_make(k, 'u', s, f, fl);
    if (del) {
        store_del_checked(k, kl);
    } else {
        uint8_t v[5];
        v[0] = opts;
        memcpy(v + 1, &id, 4);
        store_put_checked(k, kl, v, sizeof v);
    }
    free(k);
}

/* Message record: qos, retain, nsub, subids[nsub], expires_at(8), tlen(4),
 * topic, prlen(4), props, payload. */
static void delivery_persist(const delivery *d)
{
    const msg *m = d->m;
    size_t vl = 3 + 4u * d->nsub + 8 + 4 + m->topic_len + 4 + m->props_len + m->payload_len;
    uint8_t *v = malloc(vl);
    uint8_t kb[1 + 65535 + 1 + 16];
    if (!v) return;
    uint8_t *p = v;
    *p++ = d->qos;
    *p++ = d->retain;
    *p++ = d->nsub;
    memcpy(p, d->subids, 4u * d->nsub);
    p += 4u * d->nsub;
    memcpy(p, &m->expires_at, 8);
    p += 8;
    memcpy(p, &m->topic_len, 4);
    p += 4;
    memcpy(p, m->topic, m->topic_len);
    p += m->topic_len;
    memcpy(p, &m->props_len, 4);
    p += 4;
    memcpy(p, m->props, m->props_len);
    p += m->props_len;
    memcpy(p, m->payload, m->payload_len);
    uint8_t seq[8];
    put_be64(seq, d->seq);
    size_t kl = key_make(kb, 'm', d->s, seq, 8);
    store_put_checked(kb, kl, v, vl);
    free(v);
}

static void delivery_unpersist(const delivery *d)
{
    if (!d->seq) return;
    uint8_t kb[1 + 65535 + 1 + 16];
    uint8_t seq[8];
    put_be64(seq, d->seq);
    size_t kl = key_make(kb, 'm', d->s, seq, 8);
    store_del_checked(kb, kl);
}

/* Releases what a delivery holds (its message and session references). */
static void delivery_drop(worker *w, delivery *d, bool count)
{
    if (count && w) STAT_ADD(w->dropped, 1);
    delivery_unpersist(d);
    msg_unref(d->m);
    session_unref(d->s);
}

bool session_has_filter(const session *s, const char *f, size_t fl)
{
    for (uint32_t i = 0; i < s->nfilters; i++)
        if (strlen(s->filters[i]) == fl && memcmp(s->filters[i], f, fl) == 0) return true;
    return false;
}

thz_err session_add_filter(session *s, const char *f, size_t fl)
{
    for (uint32_t i = 0; i < s->nfilters; i++)
        if (strlen(s->filters[i]) == fl && memcmp(s->filters[i], f, fl) == 0) return THZ_OK;
    if (s->nfilters == s->fcap) {
        uint32_t cap = s->fcap ? s->fcap * 2 : 1;
        char **a = realloc(s->filters, cap * sizeof *a);
        if (!a) return THZ_ENOMEM;
        s->filters = a;
        s->fcap = cap;
    }
    s->filters[s->nfilters] = strndup(f, fl);
    if (!s->filters[s->nfilters]) return THZ_ENOMEM;
    s->nfilters++;
    return THZ_OK;
}

void session_remove_filter(session *s, const char *f, size_t fl)
{
    for (uint32_t i = 0; i < s->nfilters; i++)
        if (strlen(s->filters[i]) == fl && memcmp(s->filters[i], f, fl) == 0) {
            free(s->filters[i]);
            s->filters[i] = s->filters[--s->nfilters];
            return;
        }
}

/* Readers hold the trie's read lock from their first routed message to the
 * end of their batch (one lock round trip per batch, not per message). A
 * thread about to write must first drop its own read lock; the lock prefers
 * writers, so a writer waits at most one batch of each reader. */
void trie_read_begin(worker *w)
{
    if (w->trie_rd) return;
    pthread_rwlock_rdlock(&B.trie_lock);
    w->trie_rd = true;
}

static void trie_read_end(worker *w)
{
    if (!w->trie_rd) return;
    w->trie_rd = false;
    pthread_rwlock_unlock(&B.trie_lock);
}

void trie_write_lock(void)
{
    int self = net_self();
    if (self >= 0) trie_read_end(B.w[self]);
    pthread_rwlock_wrlock(&B.trie_lock);
}

void trie_write_unlock(void)
{
    pthread_rwlock_unlock(&B.trie_lock);
}

static void unsubscribe_all(session *s)
{
    trie_write_lock();
    for (uint32_t i = 0; i < s->nfilters; i++) {
        const char *f = s->filters[i], *g = NULL, *rf = f;
        size_t fl = strlen(f), gl = 0, rfl = fl;
        bool bad;
        if (!topic_share_parse(f, fl, &g, &gl, &rf, &rfl, &bad)) g = NULL, rf = f, rfl = fl;
        if (trie_remove(B.root, rf, rfl, g, gl, s))
            __atomic_sub_fetch(&B.nsubs, 1, __ATOMIC_RELAXED);
    }
    trie_write_unlock();
}

static void queue_clear(worker *w, session *s)
{
    while (s->q_len) {
        delivery *d = &s->q[s->q_head];
        s->q_head = (s->q_head + 1) % s->q_cap;
        s->q_len--;
        delivery_unpersist(d);
        msg_unref(d->m);
        session_unref(d->s);
    }
    for (uint32_t k = 0; k < s->inf_len; k++) {
        inflight *f = &s->inf[(s->inf_head + k) % s->inf_cap];
        if (f->state == INF_FREE) continue;
        delivery_unpersist(&f->d);
        msg_unref(f->d.m);
        session_unref(f->d.s);
        f->state = INF_FREE;
    }
    s->inf_len = s->inf_used = 0;
    if (s->ids_out) memset(s->ids_out, 0, 8192);
}

/* Ends a session for good (on its home thread): subscriptions, queue and
 * stored state go; the will (if still pending) is published. */
void session_end(worker *w, session *s)
{
    if (s->dead) return;
    pthread_mutex_lock(&B.sess_lock);
    if (hmap_del_if(&B.sessions, s->cid, s->cidlen, s) && s->persistent)
        session_record_locked(s, true, 0);
    pthread_mutex_unlock(&B.sess_lock);
    s->dead = true;
    if (s->will && s->will_at_ms) will_publish(w, s);
    msg_unref(s->will);
    s->will = NULL;
    unsubscribe_all(s);
    if (s->persistent)
        for (uint32_t i = 0; i < s->nfilters; i++)
            session_sub_persist(s, s->filters[i], strlen(s->filters[i]), 0, 0, true);
    queue_clear(w, s);
    off_list_del(w, s);
    session_unref(s); /* the table's reference */
}

void will_publish(worker *w, session *s)
{
    msg *m = s->will;
    s->will = NULL;
    s->will_at_ms = 0;
    if (!m) return;
    /* the session held the only reference: the message is still ours to set */
    if (s->will_expiry) m->expires_at = wall_s() + s->will_expiry - 1;
    if (m->retain) retained_set(m);
    uint32_t n;
    route(w, m, NULL, &n);
    msg_unref(m);
}

void session_went_offline(worker *w, session *s, bool publish_will)
{
    s->conn = NULL;
    if (publish_will && s->will) {
        uint32_t delay = s->will_delay;
        if (!s->persistent || delay == 0) {
            will_publish(w, s);
        } else {
            if (s->expiry != UINT32_MAX && s->expiry < delay) delay = s->expiry;
            s->will_at_ms = now_ms() + (int64_t)delay * 1000;
        }
    } else if (!publish_will) {
        msg_unref(s->will);
        s->will = NULL;
    }
    if (!s->persistent || s->expiry == 0) {
        session_end(w, s);
        return;
    }
    s->expires_at_ms = s->expiry == UINT32_MAX ? 0 : now_ms() + (int64_t)s->expiry * 1000;
    session_persist(s, wall_s());
    off_list_add(w, s);
}

/* ---- outbound flow: window, queue, acks ---- */

static bool id_used(const session *s, uint16_t id)
{
    return s->ids_out[id >> 3] & (1u << (id & 7));
}

static void id_set(session *s, uint16_t id, bool on)
{
    if (on)
        s->ids_out[id >> 3] |= (uint8_t)(1u << (id & 7));
    else
        s->ids_out[id >> 3] &= (uint8_t) ~(1u << (id & 7));
}

static uint32_t window(const session *s)
{
    uint32_t lim = atomic_load_explicit(&B.max_inflight, memory_order_relaxed);
    if (s->conn && s->conn->recv_max_out && s->conn->recv_max_out < lim)
        lim = s->conn->recv_max_out;
    return lim;
}

/* Sends d now as a new in-flight message; returns false if it was dropped. */
static bool send_new(worker *w, session *s, delivery *d)
{
    conn *c = s->conn;
    if (d->qos == 0) {
        bool ok = conn_send_publish(c, d, 0, false);
        msg_unref(d->m);
        session_unref(d->s);
        return ok;
    }
    if (!s->ids_out && !(s->ids_out = calloc(1, 8192))) {
        delivery_drop(w, d, true);
        return false;
    }
    uint16_t id;
    do {
        id = ++s->next_id;
        if (id == 0) id = s->next_id = 1;
    } while (id_used(s, id));
    if (s->inf_len == s->inf_cap) {
        /* grow the ring, unrolling it */
        uint32_t cap = s->inf_cap ? s->inf_cap * 2 : 8;
        inflight *a = malloc(cap * sizeof *a);
        if (!a) {
            delivery_drop(w, d, true);
            return false;
        }
        for (uint32_t k = 0; k < s->inf_len; k++) a[k] = s->inf[(s->inf_head + k) % s->inf_cap];
        free(s->inf);
        s->inf = a;
        s->inf_cap = cap;
        s->inf_head = 0;
    }
    if (!conn_send_publish(c, d, id, false)) {
        /* too large for this client or expired: acts as if completed */
        delivery_drop(w, d, false);
        return false;
    }
    inflight *f = &s->inf[(s->inf_head + s->inf_len) % s->inf_cap];
    f->d = *d;
    f->id = id;
    f->state = d->qos == 1 ? INF_WAIT_ACK : INF_WAIT_REC;
    s->inf_len++;
    s->inf_used++;
    id_set(s, id, true);
    return true;
}

static void queue_push(worker *w, session *s, delivery *d)
{
    uint32_t maxq = atomic_load_explicit(&B.max_queued, memory_order_relaxed);
    /* While the session is online, back-pressure pauses publishers once the
     * queue is half full; what is already on its way from other threads may
     * still arrive: up to INBOX_HIGH in this thread's inbox, plus one read's
     * worth of messages (INBOX_BURST) from each thread that crossed the mark
     * in the same instant. An online queue gets that much headroom rather
     * than dropping it; the bound stays finite. */
    uint32_t bound = s->conn && LIMIT(backpressure) != THZ_BACKPRESSURE_OFF
                         ? maxq + INBOX_HIGH + (uint32_t)B.nthreads * INBOX_BURST
                         : maxq;
    if (s->q_len >= bound) {
        /* Overflow policy: the newest message is dropped and counted. */
        if (w) STAT_ADD(w->drops[MQTT_DROP_QUEUE_FULL], 1);
        delivery_drop(w, d, true);
        return;
    }
    if (s->q_len == s->q_cap) {
        uint32_t cap = s->q_cap ? s->q_cap * 2 : 8;
        delivery *a = malloc(cap * sizeof *a);
        if (!a) {
            delivery_drop(w, d, true);
            return;
        }
        for (uint32_t k = 0; k < s->q_len; k++) a[k] = s->q[(s->q_head + k) % s->q_cap];
        free(s->q);
        s->q = a;
        s->q_cap = cap;
        s->q_head = 0;
    }
    s->q[(s->q_head + s->q_len) % s->q_cap] = *d;
    s->q_len++;
}

/* Is c's socket so far behind that QoS 1/2 messages should wait in the
 * session queue (bounded, counted for back-pressure) rather than be encoded
 * into its output (which only --max-inflight would bound)? */
static bool outbuf_full(const conn *c)
{
    return c->out.len + c->wbuf.len > LIMIT(max_outbuf);
}

/* Moves queued messages into the window while it has room. */
void session_pump(worker *w, session *s)
{
    if (!s->conn || s->conn->state != CONN_ACTIVE) return;
    uint32_t lim = window(s);
    while (s->q_len && s->inf_used < lim && !outbuf_full(s->conn)) {
        delivery d = s->q[s->q_head];
        s->q_head = (s->q_head + 1) % s->q_cap;
        s->q_len--;
        if (d.m->expires_at && d.m->expires_at <= wall_s()) {
            delivery_drop(w, &d, false);
            continue;
        }
        send_new(w, s, &d);
    }
}

/* Delivers d to its session on the session's home thread (the caller). */
void deliver(worker *w, delivery *d)
{
    session *s = d->s;
    if (s->dead) {
        delivery_drop(w, d, false);
        return;
    }
    conn *c = s->conn;
    if (c && c->state == CONN_ACTIVE) {
        if (d->qos == 0 || (s->q_len == 0 && s->inf_used < window(s) && !outbuf_full(c)))
            send_new(w, s, d);
        else
            queue_push(w, s, d);
        conn_pressure(c);
        return;
    }
    if (d->qos > 0 && s->persistent) {
        queue_push(w, s, d);
        return;
    }
    delivery_drop(w, d, false);
}

/* Ends an in-flight entry (acknowledged, or dropped as if delivered) and
 * keeps the ring short: leading free slots are popped, and when free slots
 * in the middle (a client acknowledging out of order, or never the oldest)
 * outnumber the used ones, the ring is compacted, so it stays O(window). */
static void inflight_complete(session *s, inflight *f)
{
    delivery_unpersist(&f->d);
    msg_unref(f->d.m);
    session_unref(f->d.s);
    f->state = INF_FREE;
    id_set(s, f->id, false);
    s->inf_used--;
    while (s->inf_len && s->inf[s->inf_head].state == INF_FREE) {
        s->inf_head = (s->inf_head + 1) % s->inf_cap;
        s->inf_len--;
    }
    if (s->inf_len > 2 * s->inf_used + 16) {
        uint32_t n = 0;
        for (uint32_t k = 0; k < s->inf_len; k++) {
            inflight *e = &s->inf[(s->inf_head + k) % s->inf_cap];
            if (e->state != INF_FREE) s->inf[(s->inf_head + n++) % s->inf_cap] = *e;
        }
        s->inf_len = n;
    }
}

/* Handles PUBACK (type PUBACK), PUBREC, PUBCOMP for outbound id. */
bool inflight_ack(worker *w, session *s, uint16_t id, uint8_t type)
{
    for (uint32_t k = 0; k < s->inf_len; k++) {
        inflight *f = &s->inf[(s->inf_head + k) % s->inf_cap];
        if (f->state == INF_FREE || f->id != id) continue;
        if (type == MQTT_PUBREC) {
            if (f->state != INF_WAIT_REC) return f->state == INF_WAIT_COMP;
            f->state = INF_WAIT_COMP;
            return true;
        }
        if ((type == MQTT_PUBACK && f->state != INF_WAIT_ACK) ||
            (type == MQTT_PUBCOMP && f->state != INF_WAIT_COMP))
            return false;
        inflight_complete(s, f);
        session_pump(w, s);
        return true;
    }
    return false;
}

/* After a reconnect: resend the whole window (PUBLISH with DUP, or PUBREL).
 * A message the new connection cannot take (expired meanwhile, larger than
 * its Maximum Packet Size) is completed as if delivered, freeing its slot. */
void session_resend(worker *w, session *s)
{
    uint16_t *gone = NULL;
    uint32_t ngone = 0;
    for (uint32_t k = 0; k < s->inf_len; k++) {
        inflight *f = &s->inf[(s->inf_head + k) % s->inf_cap];
        if (f->state == INF_WAIT_ACK || f->state == INF_WAIT_REC) {
            if (conn_send_publish(s->conn, &f->d, f->id, true)) continue;
            if (!gone && !(gone = malloc(s->inf_len * sizeof *gone))) continue;
            gone[ngone++] = f->id;
        } else if (f->state == INF_WAIT_COMP) {
            conn_send_pubrel(s->conn, f->id);
        }
    }
    /* completed after the walk, which completing would reorder */
    for (uint32_t i = 0; i < ngone; i++)
        for (uint32_t k = 0; k < s->inf_len; k++) {
            inflight *f = &s->inf[(s->inf_head + k) % s->inf_cap];
            if (f->state != INF_FREE && f->id == gone[i]) {
                inflight_complete(s, f);
                break;
            }
        }
    free(gone);
    session_pump(w, s);
}

/* ---- routing ---- */

static int match_cmp(const void *a, const void *b)
{
    const match *x = a, *y = b;
    return x->s < y->s ? -1 : x->s > y->s;
}

static void outbox_push(worker *w, int t, const delivery *d)
{
    if (w->outn[t] == w->outcap[t]) {
        uint32_t cap = w->outcap[t] ? w->outcap[t] * 2 : 256;
        delivery *a = realloc(w->out[t], cap * sizeof *a);
        if (!a) {
            delivery tmp = *d;
            delivery_drop(w, &tmp, true);
            return;
        }
        w->out[t] = a;
        w->outcap[t] = cap;
    }
    w->out[t][w->outn[t]++] = *d;
}

typedef struct dbatch {
    uint32_t n;
    delivery d[];
} dbatch;

static void inbox_check(worker *w, uint32_t left)
{
    if (left < INBOX_LOW && atomic_load(&w->inbox_congested) &&
        atomic_exchange(&w->inbox_congested, false))
        congestion_release(w);
}

static void deliver_batch_task(int thread, void *arg)
{
    dbatch *b = arg;
    worker *w = thread >= 0 && net_self() == thread ? B.w[thread] : NULL;
    for (uint32_t i = 0; i < b->n; i++) {
        if (w) {
            deliver(w, &b->d[i]);
        } else {
            /* the thread has stopped (shutdown): a persisted message stays in
             * the log for the next start */
            msg_unref(b->d[i].m);
            session_unref(b->d[i].s);
        }
    }
    if (w) inbox_check(w, atomic_fetch_sub(&w->inbox, b->n) - b->n);
    free(b);
}

/* Hands every delivery batched for other threads to them: one task (and at
 * most one wakeup) per target thread per batch of work. */
static void outbox_flush(worker *w)
{
    for (int t = 0; t < B.nthreads; t++) {
        uint32_t n = w->outn[t];
        if (!n) continue;
        dbatch *b = malloc(sizeof *b + n * sizeof(delivery));
        if (!b) {
            for (uint32_t i = 0; i < n; i++) delivery_drop(w, &w->out[t][i], true);
        } else {
            b->n = n;
            memcpy(b->d, w->out[t], n * sizeof(delivery));
            /* A thread that falls behind on deliveries counts as a congested
             * consumer, so that publishers cannot outrun it without bound. */
            worker *to = B.w[t];
            if (atomic_fetch_add(&to->inbox, n) + n > INBOX_HIGH &&
                !atomic_exchange(&to->inbox_congested, true))
                atomic_fetch_add(&B.congested, 1);
            net_post(t, deliver_batch_task, b);
        }
        w->outn[t] = 0;
    }
}

static mqtt_publish_fn pub_observer;
static void *pub_observer_ctx;

void mqtt_on_publish(mqtt_publish_fn fn, void *ctx)
{
    pub_observer_ctx = ctx;
    pub_observer = fn;
}

/* Tells the publish observer about m: tenant from the topic's prefix. */
static void observe_publish(const msg *m)
{
    size_t base = topic_tenant_base(m->topic, m->topic_len);
    int64_t tenant = base ? strtoll(m->topic + 3, NULL, 10) : REG_DEFAULT_TENANT;
    pub_observer(pub_observer_ctx, tenant, m->topic + base, m->topic_len - base, m->payload,
                 m->payload_len, m->qos, m->retain);
}

/* Routes m (which the caller keeps its own reference to) to every matching
 * session. origin is the publishing session (No Local), or NULL. */
void route(worker *w, msg *m, const session *origin, uint32_t *nmatched)
{
    if (pub_observer) observe_publish(m);
    w->nmt = 0;
    trie_read_begin(w);
    trie_match(B.root, m->topic, m->topic_len, w);
    uint32_t n = w->nmt;
    *nmatched = n;
    if (!n) return;
    match *mt = w->mt;
    if (n > 1) qsort(mt, n, sizeof *mt, match_cmp);
    atomic_fetch_add_explicit(&m->refs, n, memory_order_relaxed);
    uint32_t i = 0;
    while (i < n) {
        session *s = mt[i].s;
        delivery d = {.s = s, .m = m, .seq = 0, .qos = 0, .retain = 0, .nsub = 0};
        bool any = false;
        uint32_t j = i;
        for (; j < n && mt[j].s == s; j++) {
            uint8_t o = mt[j].opts;
            bool shared = o & 0x80;
            if (!shared && (o & MQTT_SUBOPT_NO_LOCAL) && origin == s) continue;
            any = true;
            uint8_t q = MQTT_SUBOPT_QOS(o) < m->qos ? MQTT_SUBOPT_QOS(o) : m->qos;
            if (q > d.qos) d.qos = q;
            if (o & MQTT_SUBOPT_RETAIN_AS_PUB) d.retain |= m->retain;
            if (mt[j].id && d.nsub < MAX_SUBIDS) d.subids[d.nsub++] = mt[j].id;
        }
        /* one reference per match was taken; keep one for the delivery */
        for (uint32_t k = i + 1; k < j; k++) {
            session_unref(mt[k].s);
            msg_unref(m);
        }
        if (!any) {
            session_unref(s);
            msg_unref(m);
            *nmatched -= 1;
        } else {
            if (d.qos > 0 && s->persistent) {
                /* Persisted on the publisher's thread, before the PUBACK
                 * that acknowledges the publish is flushed. */
                d.seq = atomic_fetch_add_explicit(&s->seq, 1, memory_order_relaxed) + 1;
                delivery_persist(&d);
            }
            /* Back-pressure reaches the publishers of congested consumers:
             * under --backpressure queued only with messages that wait in
             * a queue (QoS 1/2), so that a consumer behind on QoS 0 never
             * slows anyone down (its QoS 0 is dropped at --max-outbuf). */
            uint32_t bp = LIMIT(backpressure);
            bool inbox_full =
                s->home != w->idx &&
                atomic_load_explicit(&B.w[s->home]->inbox_congested, memory_order_relaxed);
            if (bp != THZ_BACKPRESSURE_OFF && (d.qos > 0 || bp == THZ_BACKPRESSURE_ALL) &&
                (inbox_full || atomic_load_explicit(&s->congested, memory_order_relaxed)))
                w->hit_congested = true;
            if (s->home == w->idx) {
                deliver(w, &d);
            } else if (inbox_full && (d.qos == 0 || bp == THZ_BACKPRESSURE_OFF) &&
                       atomic_load_explicit(&B.w[s->home]->inbox, memory_order_relaxed) +
                               w->outn[s->home] >
                           INBOX_HARD) {
                /* that thread is far behind and nothing pauses this
                 * publisher: bound its inbox */
                STAT_ADD(w->drops[MQTT_DROP_INBOX_FULL], 1);
                delivery_drop(w, &d, true);
            } else {
                outbox_push(w, s->home, &d);
            }
        }
        i = j;
    }
    STAT_ADD(w->msgs_out, *nmatched);
}

/* What one retained message costs: the message and its map entry. */
static uint64_t retained_size(const msg *m)
{
    return sizeof(hmap_entry) + sizeof *m + m->topic_len + 1 + m->props_len + m->payload_len;
}

/* ---- retained messages ---- */

bool retained_set(msg *m)
{
    size_t kl = 1 + m->topic_len;
    size_t vl = m->payload_len ? 13 + m->props_len + m->payload_len : 0;
    uint8_t *k = malloc(kl + vl);
    if (!k) return false;
    k[0] = 'r';
    memcpy(k + 1, m->topic, m->topic_len);
    uint8_t *v = k + kl;
    if (vl) {
        v[0] = m->qos;
        memcpy(v + 1, &m->expires_at, 8);
        memcpy(v + 9, &m->props_len, 4);
        memcpy(v + 13, m->props, m->props_len);
        memcpy(v + 13 + m->props_len, m->payload, m->payload_len);
    }
    msg *old = NULL;
    bool ok = true;
    /* The log record is appended under the same lock as the map changes, so
     * that two threads setting one topic leave them in the same order. */
    pthread_rwlock_wrlock(&B.ret_lock);
    if (!vl) {
        old = hmap_del(&B.retained, m->topic, m->topic_len);
        if (old) retained_tenant_add(m->topic, m->topic_len, -1, false);
        store_del_checked(k, kl);
    } else if (!hmap_get(&B.retained, m->topic, m->topic_len) &&
               !retained_tenant_add(m->topic, m->topic_len, 1, true)) {
        /* a new topic past max-retained-per-tenant: not retained (the
         * message is still delivered live) */
        ok = false;
    } else if (hmap_put(&B.retained, m->topic, m->topic_len, msg_ref(m), (void **)&old) == THZ_OK) {
        store_put_checked(k, kl, v, vl);
        B.retained_bytes += retained_size(m);
    } else {
        msg_unref(m);
        if (!old) retained_tenant_add(m->topic, m->topic_len, -1, false);
        ok = false;
    }
    if (old) B.retained_bytes -= retained_size(old);
    pthread_rwlock_unlock(&B.ret_lock);
    msg_unref(old);
    free(k);
    return ok;
}

/* Sends the retained messages matching a new subscription to s. */
void retained_deliver(worker *w, session *s, const char *f, size_t fl, uint8_t opts, uint32_t subid)
{
    msg **found = NULL;
    size_t n = 0, cap = 0;
    int64_t now = wall_s();
    pthread_rwlock_rdlock(&B.ret_lock);
    bool wild = memchr(f, '+', fl) || memchr(f, '#', fl);
    if (!wild) {
        msg *m = hmap_get(&B.retained, f, fl);
        if (m && (found = malloc(sizeof *found))) found[n++] = msg_ref(m);
    } else {
        size_t pos = 0;
        for (hmap_entry *e = hmap_next(&B.retained, &pos, NULL); e;
             e = hmap_next(&B.retained, &pos, e)) {
            msg *m = e->val;
            if (!topic_matches(f, fl, m->topic, m->topic_len)) continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                msg **a = realloc(found, cap * sizeof *a);
                if (!a) break;
                found = a;
            }
            found[n++] = msg_ref(m);
        }
    }
    pthread_rwlock_unlock(&B.ret_lock);
    for (size_t i = 0; i < n; i++) {
        msg *m = found[i];
        if (m->expires_at && m->expires_at <= now) {
            msg_unref(m);
            continue;
        }
        delivery d = {.s = session_ref(s), .m = m, .retain = 1};
        d.qos = MQTT_SUBOPT_QOS(opts) < m->qos ? MQTT_SUBOPT_QOS(opts) : m->qos;
        if (subid) d.subids[d.nsub++] = subid;
        if (d.qos > 0 && s->persistent) {
            d.seq = atomic_fetch_add_explicit(&s->seq, 1, memory_order_relaxed) + 1;
            delivery_persist(&d);
        }
        deliver(w, &d);
        STAT_ADD(w->msgs_out, 1);
    }
    free(found);
}

/* ---- restoring state from the log ---- */

typedef struct loaded {
    uint8_t *k, *v;
    size_t kl, vl;
} loaded;

typedef struct loadset {
    loaded *a;
    size_t n, cap;
} loadset;

static void on_replay(void *ctx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl)
{
    loadset *ls = ctx;
    if (ls->n == ls->cap) {
        size_t cap = ls->cap ? ls->cap * 2 : 256;
        loaded *a = realloc(ls->a, cap * sizeof *a);
        if (!a) return;
        ls->a = a;
        ls->cap = cap;
    }
    loaded *l = &ls->a[ls->n];
    l->k = malloc(kl);
    l->v = malloc(vl ? vl : 1);
    if (!l->k || !l->v) {
        free(l->k);
        free(l->v);
        return;
    }
    memcpy(l->k, k, kl);
    memcpy(l->v, v, vl);
    l->kl = kl;
    l->vl = vl;
    ls->n++;
}

static int loaded_cmp(const void *a, const void *b)
{
    const loaded *x = a, *y = b;
    /* 's' < 'u' < 'm' processing order is handled by passes; within a
     * kind, byte order sorts messages of a session by sequence. */
    size_t n = x->kl < y->kl ? x->kl : y->kl;
    int c = memcmp(x->k, y->k, n);
    return c ? c : (x->kl < y->kl ? -1 : x->kl > y->kl);
}

static session *session_new(const char *cid, size_t cidlen, int home)
{
    session *s = calloc(1, sizeof *s + cidlen + 1);
    if (!s) return NULL;
    memcpy(s->cid, cid, cidlen);
    s->cid[cidlen] = 0;
    s->cidlen = (uint32_t)cidlen;
    s->gen = atomic_fetch_add(&B.next_gen, 1);
    s->home = home;
    atomic_init(&s->refs, 1);
    atomic_init(&s->seq, 0);
    return s;
}

/* Creates a session and enters it in the table (caller holds sess_lock). */
session *session_create_locked(const char *cid, size_t cidlen, int home)
{
    session *s = session_new(cid, cidlen, home);
    if (!s) return NULL;
    if (hmap_put(&B.sessions, s->cid, s->cidlen, s, NULL) != THZ_OK) {
        session_unref(s);
        return NULL;
    }
    return s;
}

static void restore(loadset *ls)
{
    if (ls->n) qsort(ls->a, ls->n, sizeof *ls->a, loaded_cmp);
    int64_t now = wall_s();
    size_t nsess = 0, nsub = 0, nmsg = 0, nret = 0, orphans = 0;
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < ls->n; i++) {
            loaded *l = &ls->a[i];
            char kind = (char)l->k[0];
            if (pass == 0 && kind == 'r' && l->vl >= 13) {
                int64_t exp;
                uint32_t prl;
                memcpy(&exp, l->v + 1, 8);
                memcpy(&prl, l->v + 9, 4);
                if (prl > l->vl - 13 || (exp && exp <= now)) continue;
                msg *m = msg_new((char *)l->k + 1, l->kl - 1, l->v + 13 + prl, l->vl - 13 - prl,
                                 l->v + 13, prl, l->v[0], true, exp);
                if (m && hmap_put(&B.retained, m->topic, m->topic_len, m, NULL) == THZ_OK) {
                    B.retained_bytes += retained_size(m);
                    /* restored ones all count, even past a lowered limit */
                    retained_tenant_add(m->topic, m->topic_len, 1, false);
                    nret++;
                }
            } else if (pass == 0 && kind == 's' && l->vl == 21) {
                uint32_t exp;
                int64_t disc;
                uint64_t gen;
                memcpy(&exp, l->v + 1, 4);
                memcpy(&disc, l->v + 5, 8);
                memcpy(&gen, l->v + 13, 8);
                int64_t gone = disc ? now - disc : 0;
                if (exp != UINT32_MAX && gone >= (int64_t)exp) {
                    store_del(B.st, l->k, l->kl);
                    continue;
                }
                size_t cl = l->kl - 1;
                int home = (int)(hmap_hash(l->k + 1, cl) % (uint64_t)B.nthreads);
                session *s = session_create_locked((char *)l->k + 1, cl, home);
                if (!s) continue;
                s->persistent = true;
                s->gen = gen;
                if (gen >= atomic_load(&B.next_gen)) atomic_store(&B.next_gen, gen + 1);
                s->version = l->v[0];
                s->expiry = exp;
                s->expires_at_ms = exp == UINT32_MAX ? 0 : now_ms() + ((int64_t)exp - gone) * 1000;
                nsess++;
            } else if (pass > 0 && (kind == 'u' || kind == 'm')) {
                const uint8_t *z = memchr(l->k + 1, 0, l->kl - 1);
                if (!z) continue;
                size_t cl = (size_t)(z - l->k - 1);
                session *s = hmap_get(&B.sessions, l->k + 1, cl);
                size_t rl = l->kl - cl - 2;
                if ((kind == 'u') != (pass == 1)) continue; /* 'u' in pass 1, 'm' in pass 2 */
                if (!s || rl < 8 || get_be64(z + 1) != s->gen) {
                    /* left by a session that ended or was replaced */
                    store_del(B.st, l->k, l->kl);
                    orphans++;
                    continue;
                }
                const char *rest = (const char *)z + 9;
                rl -= 8;
                if (pass == 1 && kind == 'u' && l->vl == 5) {
                    uint32_t id;
                    memcpy(&id, l->v + 1, 4);
                    const char *g = NULL, *f = rest;
                    size_t gl = 0, fl = rl;
                    bool bad, ex;
                    if (!topic_share_parse(rest, rl, &g, &gl, &f, &fl, &bad)) g = NULL;
                    if (trie_add(B.root, f, fl, g, gl, s, l->v[0], id, &ex) == THZ_OK) {
                        session_add_filter(s, rest, rl);
                        if (!ex) __atomic_add_fetch(&B.nsubs, 1, __ATOMIC_RELAXED);
                        nsub++;
                    }
                } else if (pass == 2 && kind == 'm' && rl == 8 && l->vl >= 3) {
                    const uint8_t *p = l->v, *end = l->v + l->vl;
                    delivery d = {.s = s, .qos = p[0], .retain = p[1], .nsub = p[2]};
                    p += 3;
                    uint32_t tl, prl;
                    if (d.nsub > MAX_SUBIDS || (size_t)(end - p) < 4u * d.nsub + 16) continue;
                    memcpy(d.subids, p, 4u * d.nsub);
                    p += 4u * d.nsub;
                    int64_t exp;
                    memcpy(&exp, p, 8);
                    memcpy(&tl, p + 8, 4);
                    p += 12;
                    if (tl > (size_t)(end - p) || (size_t)(end - p) - tl < 4) continue;
                    const char *topic = (const char *)p;
                    p += tl;
                    memcpy(&prl, p, 4);
                    p += 4;
                    if (prl > (size_t)(end - p)) continue;
                    msg *m = msg_new(topic, tl, p + prl, (size_t)(end - p) - prl, p, prl, d.qos,
                                     d.retain, exp);
                    if (!m) continue;
                    d.m = m;
                    d.seq = get_be64((const uint8_t *)rest);
                    if (d.seq > atomic_load(&s->seq)) atomic_store(&s->seq, d.seq);
                    session_ref(s);
                    /* restored messages are queued in sequence order; the
                     * in-flight ones among them are sent again on connect */
                    uint32_t maxq = atomic_load(&B.max_queued);
                    if (s->q_len >= maxq) {
                        delivery_drop(NULL, &d, false);
                        continue;
                    }
                    if (s->q_len == s->q_cap) {
                        uint32_t cap = s->q_cap ? s->q_cap * 2 : 8;
                        delivery *a = realloc(s->q, cap * sizeof *a);
                        if (!a) {
                            delivery_drop(NULL, &d, false);
                            continue;
                        }
                        s->q = a;
                        s->q_cap = cap;
                    }
                    s->q[s->q_len++] = d;
                    nmsg++;
                }
            }
        }
    }
    for (size_t i = 0; i < ls->n; i++) {
        free(ls->a[i].k);
        free(ls->a[i].v);
    }
    free(ls->a);
    if (nsess || nret)
        log_info("mqtt",
                 "restored %zu sessions, %zu subscriptions, %zu queued messages, %zu "
                 "retained messages (%zu orphan records dropped)",
                 nsess, nsub, nmsg, nret, orphans);
}

/* ---- per-thread lifecycle, ticks and $SYS ---- */

static void sys_publish(worker *w)
{
    mqtt_stats st;
    mqtt_get_stats(&st);
    struct {
        const char *t;
        uint64_t v;
    } items[] = {
        {"$SYS/broker/clients/connected", st.clients_connected},
        {"$SYS/broker/clients/total", st.sessions},
        {"$SYS/broker/subscriptions/count", st.subscriptions},
        {"$SYS/broker/retained messages/count", st.retained},
        {"$SYS/broker/messages/received", st.msgs_received},
        {"$SYS/broker/messages/sent", st.msgs_sent},
        {"$SYS/broker/messages/dropped", st.msgs_dropped},
        {"$SYS/broker/bytes/received", st.bytes_received},
        {"$SYS/broker/bytes/sent", st.bytes_sent},
        {"$SYS/broker/uptime", st.uptime_s},
    };
    for (size_t i = 0; i < sizeof items / sizeof *items; i++) {
        char v[64];
        int n = i == sizeof items / sizeof *items - 1
                    ? snprintf(v, sizeof v, "%llu seconds", (unsigned long long)items[i].v)
                    : snprintf(v, sizeof v, "%llu", (unsigned long long)items[i].v);
        msg *m = msg_new(items[i].t, strlen(items[i].t), v, (size_t)n, NULL, 0, 0, true, 0);
        if (!m) continue;
        retained_set(m);
        uint32_t nm;
        route(w, m, NULL, &nm);
        msg_unref(m);
    }
}

/* Memory a session holds besides the messages (shared, counted as retained
 * or not at all): its struct, rings, bitmaps and filters. */
static uint64_t session_bytes(const session *s)
{
    uint64_t b = sizeof *s + s->cidlen + 1 + (uint64_t)s->q_cap * sizeof(delivery) +
                 (uint64_t)s->inf_cap * sizeof(inflight) + (uint64_t)s->fcap * sizeof(char *);
    if (s->ids_out) b += 8192;
    if (s->ids_in) b += 8192;
    return b;
}

/* Samples this thread's queue depths and memory for mqtt_get_stats. */
static void worker_gauges(worker *w)
{
    uint64_t queued = 0, inflight_n = 0, outbuf = 0, bytes = 0;
    for (conn *c = w->conns; c; c = c->next) {
        outbuf += c->out.len + c->wbuf.len;
        bytes += sizeof *c + c->in.cap + c->out.cap + c->wbuf.cap;
        if (c->s && c->s->conn == c) {
            queued += c->s->q_len;
            inflight_n += c->s->inf_len;
            bytes += session_bytes(c->s);
        }
    }
    for (session *s = w->offline; s; s = s->off_next) {
        queued += s->q_len;
        inflight_n += s->inf_len;
        bytes += session_bytes(s);
    }
    __atomic_store_n(&w->g_queued, queued, __ATOMIC_RELAXED);
    __atomic_store_n(&w->g_inflight, inflight_n, __ATOMIC_RELAXED);
    __atomic_store_n(&w->g_outbuf, outbuf, __ATOMIC_RELAXED);
    __atomic_store_n(&w->g_sess_bytes, bytes, __ATOMIC_RELAXED);
}

static void on_tick(uv_timer_t *t)
{
    worker *w = t->data;
    int64_t now = now_ms();
    /* keep alive (1.5x) and CONNECT timeout */
    inbox_check(w, atomic_load(&w->inbox));
    if (w->npaused && atomic_load(&B.congested) == 0) worker_resume(w);
    for (conn *c = w->conns, *next; c; c = next) {
        next = c->next;
        conn_count_flush(c);
        if (c->ws && c->out.len) conn_mark_dirty(c); /* a WebSocket that refused output */
        if (c->behind && now - (c->progress_ms > c->behind_ms ? c->progress_ms : c->behind_ms) >
                             (int64_t)LIMIT(slow_consumer_timeout) * 1000) {
            /* A consumer that stays stuck (behind, and taking nothing)
             * holds memory, and under back-pressure its publishers. */
            limit_hit(w, MQTT_LIMIT_SLOW_CONSUMER, "client %s: disconnected, not reading for %u s",
                      c->s ? c->s->cid : c->peer, LIMIT(slow_consumer_timeout));
            STAT_ADD(w->dropped, c->s ? c->s->q_len : 0);
            STAT_ADD(w->drops[MQTT_DROP_SLOW_CONSUMER], c->s ? c->s->q_len : 0);
            conn_close(c, MQTT_RC_QUOTA_EXCEEDED);
            continue;
        }
        if (c->paused) {
            c->last_rx_ms = now; /* not reading is our choice, not the client's silence */
            continue;
        }
        if (c->state == CONN_NEW) {
            /* a client whose CONNECT waits for its password check did its part */
            if (!c->authing && now - c->accepted_ms > (int64_t)B.cfg->connect_timeout * 1000)
                conn_close(c, -1);
        } else if (c->state == CONN_ACTIVE && c->keepalive &&
                   now - c->last_rx_ms > (int64_t)c->keepalive * 1500) {
            log_info("mqtt", "client %s: keep alive expired", c->s ? c->s->cid : "?");
            conn_close(c, MQTT_RC_KEEP_ALIVE_TIMEOUT);
        }
    }
    worker_gauges(w);
    /* delayed wills and session expiry */
    for (session *s = w->offline, *next; s; s = next) {
        next = s->off_next;
        if (s->will && s->will_at_ms && now >= s->will_at_ms) will_publish(w, s);
        if (s->expires_at_ms && now >= s->expires_at_ms) {
            log_debug("mqtt", "session %s expired", s->cid);
            session_end(w, s);
        }
    }
    static __thread int64_t last_sys;
    uint32_t iv = LIMIT(sys_interval);
    if (w->idx == 0 && iv && now - last_sys >= (int64_t)iv * 1000) {
        last_sys = now;
        sys_publish(w);
    }
    net_batch_end(w->idx);
}

static void on_prepare(uv_prepare_t *p)
{
    worker *w = p->data;
    if (w->nyield) worker_yield_resume(w);
}

static void worker_start(int idx, uv_loop_t *loop, void *ctx)
{
    worker *w = B.w[idx];
    w->loop = loop;
    uv_timer_init(loop, &w->tick);
    w->tick.data = w;
    uv_timer_start(&w->tick, on_tick, 250, 250);
    uv_prepare_init(loop, &w->prep);
    w->prep.data = w;
    uv_prepare_start(&w->prep, on_prepare);
    /* restored sessions homed here start offline */
    pthread_mutex_lock(&B.sess_lock);
    size_t pos = 0;
    for (hmap_entry *e = hmap_next(&B.sessions, &pos, NULL); e;
         e = hmap_next(&B.sessions, &pos, e)) {
        session *s = e->val;
        if (s->home == idx) off_list_add(w, s);
    }
    pthread_mutex_unlock(&B.sess_lock);
}

static void worker_stop(int idx, uv_loop_t *loop, void *ctx)
{
    worker *w = B.w[idx];
    atomic_store(&B.shutting_down, true);
    uv_timer_stop(&w->tick);
    uv_close((uv_handle_t *)&w->tick, NULL);
    uv_prepare_stop(&w->prep);
    uv_close((uv_handle_t *)&w->prep, NULL);
    while (w->conns) conn_close(w->conns, MQTT_RC_SERVER_SHUTTING_DOWN);
    outbox_flush(w);
    garbage_flush(w);
    store_flush(B.st);
}

/* End of a batch of work on a thread: state log first (so that it is on
 * disk before the acknowledgements leave), then cross-thread deliveries,
 * then every socket with pending output. */
static void batch_end(int idx, void *ctx)
{
    worker *w = B.w[idx];
    /* Flushing can close a connection (write error), whose will is then
     * routed, which makes more work of every kind: go round until quiet. */
    for (int round = 0; round < 16; round++) {
        trie_read_end(w);
        if (w->store_dirty) {
            w->store_dirty = false;
            thz_err rc = store_flush(B.st);
            if (rc) store_warn("flush", rc);
        }
        outbox_flush(w);
        garbage_flush(w);
        if (!w->ndirty) break;
        while (w->ndirty) {
            conn *c = w->dirty[--w->ndirty];
            c->dirty = false;
            conn_flush(c);
            conn_pressure(c);
        }
    }
}

thz_err mqtt_start(const thz_config *cfg, auth *a)
{
    memset(&B, 0, sizeof B);
    B.cfg = cfg;
    B.auth = a;
    B.nthreads = net_threads();
    B.started_ms = now_ms();
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&B.trie_lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_rwlock_init(&B.ret_lock, NULL);
    pthread_mutex_init(&B.sess_lock, NULL);
    mqtt_reload(cfg);
    atomic_store(&B.next_gen, 1);
    B.root = calloc(1, sizeof *B.root);
    if (!B.root) return THZ_ENOMEM;
    B.w = calloc((size_t)B.nthreads, sizeof *B.w);
    if (!B.w) return THZ_ENOMEM;
    for (int i = 0; i < B.nthreads; i++) {
        worker *w = calloc(1, sizeof *w);
        if (!w) return THZ_ENOMEM;
        w->idx = i;
        w->out = calloc((size_t)B.nthreads, sizeof *w->out);
        w->outn = calloc((size_t)B.nthreads, sizeof *w->outn);
        w->outcap = calloc((size_t)B.nthreads, sizeof *w->outcap);
        w->gb = calloc((size_t)B.nthreads, sizeof *w->gb);
        w->gbn = calloc((size_t)B.nthreads, sizeof *w->gbn);
        w->gbcap = calloc((size_t)B.nthreads, sizeof *w->gbcap);
        if (!w->out || !w->outn || !w->outcap || !w->gb || !w->gbn || !w->gbcap) return THZ_ENOMEM;
        B.w[i] = w;
    }
    store_options so = {.fsync = cfg->state_fsync,
                        .segment_bytes = (uint64_t)cfg->store_segment_mb << 20};
    char dir[THZ_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/mqtt", cfg->data_dir);
    loadset ls = {0};
    thz_err rc = store_open(dir, "state", &so, on_replay, &ls, &B.st);
    if (rc) {
        log_error("mqtt", "cannot open the broker state in %s: %s", dir, thz_strerror(rc));
        return rc;
    }
    restore(&ls);
    net_on_thread(worker_start, worker_stop, NULL);
    net_on_batch_end(batch_end, NULL);
    if (cfg->mqtt_listen[0]) {
        rc = net_listen(cfg->mqtt_listen, conn_accept, NULL);
        if (rc) return rc;
    }
    if (cfg->mqtts_listen[0]) { /* TLS contexts: net_tls_setup, before */
        rc = net_listen(cfg->mqtts_listen, conn_accept_tls, NULL);
        if (rc) return rc;
    }
    return THZ_OK;
}

void mqtt_reload(const thz_config *cfg)
{
    atomic_store(&B.max_queued, cfg->max_queued_messages);
    atomic_store(&B.max_inflight, cfg->max_inflight);
    atomic_store(&B.max_outbuf, cfg->max_outbuf);
    atomic_store(&B.max_packet, cfg->max_packet_size);
    atomic_store(&B.max_keepalive, cfg->max_keepalive);
    atomic_store(&B.max_session_expiry, cfg->max_session_expiry);
    atomic_store(&B.max_connections, cfg->max_connections);
    atomic_store(&B.slow_consumer_timeout, cfg->slow_consumer_timeout);
    atomic_store(&B.sys_interval, cfg->sys_interval);
    atomic_store(&B.tenant_connections, cfg->max_connections_per_tenant);
    atomic_store(&B.connect_rate, cfg->max_connect_rate);
    atomic_store(&B.connect_burst, cfg->connect_burst);
    atomic_store(&B.publish_rate, cfg->max_publish_rate);
    atomic_store(&B.publish_burst, cfg->publish_burst);
    atomic_store(&B.publish_rate_action, (uint32_t)cfg->publish_rate_action);
    atomic_store(&B.max_subscriptions, cfg->max_subscriptions);
    atomic_store(&B.max_topic_len, cfg->max_topic_length);
    atomic_store(&B.max_topic_levels, cfg->max_topic_levels);
    atomic_store(&B.tenant_retained, cfg->max_retained_per_tenant);
    atomic_store(&B.max_payload, cfg->max_payload_size);
    atomic_store(&B.backpressure, (uint32_t)cfg->backpressure);
    atomic_store(&B.bp_exempt, cfg->backpressure_exempt_rate);
}

void mqtt_stop(void)
{
    /* Every session's record already holds its disconnection time (written
     * when it went offline, including by worker_stop), so that its expiry
     * keeps counting across the restart. */
    size_t pos = 0;
    store_close(B.st);
    B.st = NULL;
    /* Free everything: sessions (their queues), retained, trie. */
    pos = 0;
    for (hmap_entry *e = hmap_next(&B.sessions, &pos, NULL); e;
         e = hmap_next(&B.sessions, &pos, e)) {
        session *s = e->val;
        for (uint32_t k = 0; k < s->q_len; k++) {
            delivery *d = &s->q[(s->q_head + k) % s->q_cap];
            msg_unref(d->m);
            session_unref(d->s);
        }
        s->q_len = 0;
        for (uint32_t k = 0; k < s->inf_len; k++) {
            inflight *f = &s->inf[(s->inf_head + k) % s->inf_cap];
            if (f->state == INF_FREE) continue;
            msg_unref(f->d.m);
            session_unref(f->d.s);
        }
        s->inf_len = 0;
        msg_unref(s->will);
        s->will = NULL;
    }
    pos = 0;
    for (hmap_entry *e = hmap_next(&B.sessions, &pos, NULL); e; e = hmap_next(&B.sessions, &pos, e))
        session_unref(e->val);
    hmap_free(&B.sessions);
    pos = 0;
    for (hmap_entry *e = hmap_next(&B.retained, &pos, NULL); e; e = hmap_next(&B.retained, &pos, e))
        msg_unref(e->val);
    hmap_free(&B.retained);
    limits_free();
    trie_free(B.root);
    for (int i = 0; i < B.nthreads; i++) {
        worker *w = B.w[i];
        for (int t = 0; t < B.nthreads; t++) {
            free(w->out[t]);
            for (uint32_t k = 0; k < w->gbn[t]; k++) free(w->gb[t][k]);
            free(w->gb[t]);
        }
        free(w->gb);
        free(w->gbn);
        free(w->gbcap);
        free(w->out);
        free(w->outn);
        free(w->outcap);
        free(w->mt);
        free(w->ms);
        free(w->dirty);
        free(w->yield);
        free(w->paused);
        free(w);
    }
    free(B.w);
}

const char *mqtt_refuse_name(int reason)
{
    static const char *const n[MQTT_REFUSE_N] = {
        "bad_credentials", "not_authorized",      "client_id_invalid",
        "server_busy",     "unsupported_version", "malformed",
        "quota_exceeded",  "connection_rate",     "other"};
    return reason >= 0 && reason < MQTT_REFUSE_N ? n[reason] : "other";
}

const char *mqtt_drop_name(int reason)
{
    static const char *const n[MQTT_DROP_N] = {"queue_full",   "qos0_outbuf", "slow_consumer",
                                               "publish_rate", "inbox_full",  "other"};
    return reason >= 0 && reason < MQTT_DROP_N ? n[reason] : "other";
}

const char *mqtt_limit_name(int limit)
{
    static const char *const n[MQTT_LIMIT_N] = {
        "tenant_connections", "connect_rate", "publish_rate", "subscriptions", "topic_length",
        "topic_levels",       "retained",     "payload_size", "slow_consumer"};
    return limit >= 0 && limit < MQTT_LIMIT_N ? n[limit] : "other";
}

void mqtt_get_stats(mqtt_stats *st)
{
    memset(st, 0, sizeof *st);
    for (int i = 0; i < B.nthreads; i++) {
        worker *w = B.w[i];
        st->clients_connected += __atomic_load_n(&w->n_clients, __ATOMIC_RELAXED);
        st->msgs_received += __atomic_load_n(&w->msgs_in, __ATOMIC_RELAXED);
        st->msgs_sent += __atomic_load_n(&w->msgs_out, __ATOMIC_RELAXED);
        st->bytes_received += __atomic_load_n(&w->bytes_in, __ATOMIC_RELAXED);
        st->bytes_sent += __atomic_load_n(&w->bytes_out, __ATOMIC_RELAXED);
        st->msgs_dropped += __atomic_load_n(&w->dropped, __ATOMIC_RELAXED);
        st->connects_accepted += __atomic_load_n(&w->connects, __ATOMIC_RELAXED);
        for (int k = 0; k < MQTT_REFUSE_N; k++)
            st->connects_refused[k] += __atomic_load_n(&w->refused[k], __ATOMIC_RELAXED);
        for (int k = 0; k < MQTT_DROP_N; k++)
            st->drops[k] += __atomic_load_n(&w->drops[k], __ATOMIC_RELAXED);
        st->denied_publish += __atomic_load_n(&w->denied_pub, __ATOMIC_RELAXED);
        st->denied_subscribe += __atomic_load_n(&w->denied_sub, __ATOMIC_RELAXED);
        for (int k = 0; k < MQTT_LIMIT_N; k++)
            st->limits[k] += __atomic_load_n(&w->limits[k], __ATOMIC_RELAXED);
        st->queued_messages += __atomic_load_n(&w->g_queued, __ATOMIC_RELAXED);
        st->inflight_messages += __atomic_load_n(&w->g_inflight, __ATOMIC_RELAXED);
        st->outbuf_bytes += __atomic_load_n(&w->g_outbuf, __ATOMIC_RELAXED);
        st->session_bytes += __atomic_load_n(&w->g_sess_bytes, __ATOMIC_RELAXED);
    }
    /* what is not counted under a reason (out of memory) */
    uint64_t known = 0;
    for (int k = 0; k < MQTT_DROP_OTHER; k++) known += st->drops[k];
    st->drops[MQTT_DROP_OTHER] = st->msgs_dropped > known ? st->msgs_dropped - known : 0;
    pthread_mutex_lock(&B.sess_lock);
    st->sessions = B.sessions.n;
    pthread_mutex_unlock(&B.sess_lock);
    st->subscriptions = __atomic_load_n(&B.nsubs, __ATOMIC_RELAXED);
    pthread_rwlock_rdlock(&B.ret_lock);
    st->retained = B.retained.n;
    st->retained_bytes = B.retained_bytes;
    pthread_rwlock_unlock(&B.ret_lock);
    st->uptime_s = (uint64_t)((now_ms() - B.started_ms) / 1000);
}

static void publish_internal_task(int thread, void *arg)
{
    msg *m = arg;
    if (thread >= 0 && net_self() == thread) {
        worker *w = B.w[thread];
        if (m->retain) retained_set(m);
        uint32_t n;
        route(w, m, NULL, &n);
    }
    msg_unref(m);
}

static thz_err publish_internal(const char *topic, const void *payload, size_t len, int qos,
                                bool retain, bool later)
{
    size_t tl = strlen(topic);
    if (!topic_name_valid(topic, tl) || qos < 0 || qos > 2) return THZ_ETOPIC;
    msg *m = msg_new(topic, tl, payload, len, NULL, 0, (uint8_t)qos, retain, 0);
    if (!m) return THZ_ENOMEM;
    if (later) {
        /* routed from a clean stack, not from inside the caller's work */
        int self = net_self();
        net_post(self >= 0 ? self : 0, publish_internal_task, m);
        return THZ_OK;
    }
    int self = net_self();
    if (self >= 0) {
        publish_internal_task(self, m);
        net_batch_end(self);
    } else {
        net_post(0, publish_internal_task, m);
    }
    return THZ_OK;
}

thz_err mqtt_publish_internal(const char *topic, const void *payload, size_t len, int qos,
                              bool retain)
{
    return publish_internal(topic, payload, len, qos, retain, false);
}

thz_err publish_later(const char *topic, const void *payload, size_t len, int qos)
{
    return publish_internal(topic, payload, len, qos, false, true);
}

/* ---- the registry's revocations ---- */

typedef struct revocation {
    int64_t tenant;
    int pending; /* threads still to run it */
    char id[];
} revocation;

static void revoke_task(int thread, void *arg)
{
    revocation *rv = arg;
    if (thread >= 0 && net_self() == thread) {
        worker *w = B.w[thread];
        for (conn *c = w->conns, *next; c; c = next) {
            next = c->next;
            if (c->state == CONN_ACTIVE && c->id.dev && reg_dev_tenant(c->id.dev) == rv->tenant &&
                strcmp(reg_dev_id(c->id.dev), rv->id) == 0) {
                log_info("mqtt", "client %s: disconnected, its credentials were revoked",
                         c->s ? c->s->cid : c->peer);
                conn_close(c, MQTT_RC_ADMIN_ACTION);
            }
        }
        net_batch_end(thread);
    }
    if (__atomic_sub_fetch(&rv->pending, 1, __ATOMIC_ACQ_REL) == 0) free(rv);
}

/* A device's secret was rotated, or it was disabled or deleted: its
 * connections on every thread end with 0x98 (administrative action). */
static void on_revoke(int64_t tenant, const char *device_id, void *ctx)
{
    size_t n = strlen(device_id);
    revocation *rv = malloc(sizeof *rv + n + 1);
    if (!rv) return;
    rv->tenant = tenant;
    rv->pending = B.nthreads;
    memcpy(rv->id, device_id, n + 1);
    for (int i = 0; i < B.nthreads; i++) net_post(i, revoke_task, rv);
}

/* A device certificate was revoked (or its CA deleted): the connections
 * authenticated by it end with 0x98, on every thread; the device's other
 * connections (a secret, another certificate) stay. */
typedef struct cert_revocation {
    int64_t tenant;
    int pending;
    uint8_t fp[32];
} cert_revocation;

static void cert_revoke_task(int thread, void *arg)
{
    cert_revocation *rv = arg;
    if (thread >= 0 && net_self() == thread) {
        worker *w = B.w[thread];
        for (conn *c = w->conns, *next; c; c = next) {
            next = c->next;
            if (c->state == CONN_ACTIVE && c->by_cert && c->id.dev &&
                reg_dev_tenant(c->id.dev) == rv->tenant &&
                memcmp(c->cert_fp, rv->fp, sizeof rv->fp) == 0) {
                log_info("mqtt", "client %s: disconnected, its client certificate was revoked",
                         c->s ? c->s->cid : c->peer);
                conn_close(c, MQTT_RC_ADMIN_ACTION);
            }
        }
        net_batch_end(thread);
    }
    if (__atomic_sub_fetch(&rv->pending, 1, __ATOMIC_ACQ_REL) == 0) free(rv);
}

static void on_cert_revoke(int64_t tenant, const char *device_id, const uint8_t fp[32], void *ctx)
{
    (void)device_id;
    cert_revocation *rv = malloc(sizeof *rv);
    if (!rv) return;
    rv->tenant = tenant;
    rv->pending = B.nthreads;
    memcpy(rv->fp, fp, sizeof rv->fp);
    for (int i = 0; i < B.nthreads; i++) net_post(i, cert_revoke_task, rv);
}

void mqtt_set_registry(registry *r)
{
    B.reg = r;
    auth_set_registry(B.auth, r);
    reg_on_revoke(r, on_revoke, NULL);
    reg_on_cert_revoke(r, on_cert_revoke, NULL);
}

void mqtt_set_tsdb(tsdb *db)
{
    B.db = db;
}
