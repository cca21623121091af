/* mqtt_int.h - private structures shared by the broker's files:
 * topic.c (validation and the subscription trie), broker.c (sessions,
 * routing, retained messages, persistence, wills, $SYS) and conn.c (the
 * connections and one handler per packet type). */
#ifndef THZ_MQTT_INT_H
#define THZ_MQTT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "auth/auth.h"
#include "core/buf.h"
#include "core/config.h"
#include "core/hmap.h"
#include "mqtt/codec.h"
#include "mqtt/mqtt.h"
#include "mqtt/topic.h"
#include "store/store.h"
#include "tsdb/tsdb.h"

#define MAX_SUBIDS 4 /* subscription identifiers carried per delivery */

struct session;
struct conn;
struct worker;
struct net_tls;
struct http_ws;

/* An immutable published message shared by every delivery of it. All of it
 * lives in one allocation; refs counts deliveries, queues and the retained
 * store holding it. */
typedef struct msg {
    atomic_uint refs;
    uint8_t qos;
    bool retain;
    int16_t home;       /* I/O thread that allocated it (-1: none); freed there */
    int64_t expires_at; /* wall-clock seconds; 0 = never */
    const void *origin; /* publishing session, for No Local; never dereferenced */
    uint32_t topic_len;
    uint32_t payload_len;
    uint32_t props_len; /* forwardable v5 properties, already encoded */
    char *topic;        /* NUL-terminated */
    uint8_t *props;
    uint8_t *payload;
    char data[];
} msg;

msg *msg_new(const char *topic, size_t tlen, const void *payload, size_t plen, const void *props,
             size_t prlen, uint8_t qos, bool retain, int64_t expires_at);
static inline msg *msg_ref(msg *m)
{
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}
void msg_unref(msg *m);

/* One subscriber of a trie node. */
typedef struct sub {
    struct session *s;
    uint8_t opts; /* subscription options byte */
    uint32_t id;  /* subscription identifier, 0 = none */
} sub;

typedef struct share_group {
    char *name; /* namelen bytes (may hold any byte), NUL-terminated */
    uint32_t namelen;
    sub *m;
    uint32_t n, cap;
    atomic_uint rr;
} share_group;

typedef struct tnode {
    struct tnode *parent;
    uint32_t seglen;
    struct tnode **kids; /* sorted by (seglen, seg); excludes '+' and '#' */
    uint32_t nkids, kcap;
    struct tnode *plus, *hash;
    sub *subs;
    uint32_t nsubs, scap;
    share_group *groups;
    uint32_t ngroups;
    char seg[]; /* this level's text, NUL-terminated */
} tnode;

/* A frame of the trie walk: a node and where its next level starts. */
typedef struct mframe {
    struct tnode *n;
    size_t i;
} mframe;

/* A match collected while the trie is read-locked. */
typedef struct match {
    struct session *s;
    uint8_t opts;
    uint32_t id;
} match;

/* A message on its way to one session (queued, or crossing threads). */
typedef struct delivery {
    struct session *s;
    msg *m;
    uint64_t seq; /* persistence sequence, 0 = not persisted */
    uint8_t qos;
    uint8_t retain;
    uint8_t nsub;
    uint32_t subids[MAX_SUBIDS];
} delivery;

enum { INF_FREE = 0, INF_WAIT_ACK, INF_WAIT_REC, INF_WAIT_COMP };

typedef struct inflight {
    delivery d;
    uint16_t id;
    uint8_t state;
} inflight;

/* A client's session. It lives on one home I/O thread for its whole life;
 * a connection resuming it is moved to that thread, so session state is only
 * ever touched by its home thread (except refs and the atomics). */
typedef struct session {
    atomic_uint refs;
    uint32_t cidlen;
    uint64_t gen; /* instance number: part of its state-log keys */
    int home;
    bool dead;              /* removed from the table: drop deliveries */
    atomic_bool persistent; /* survives disconnect (and restart); read by other threads */
    atomic_bool congested;  /* its connection is a congested consumer: routing to it pauses
                               the publisher (read by other threads; see --backpressure) */
    uint8_t version;
    uint32_t expiry; /* session expiry interval, s; UINT32_MAX = never */
    struct conn *conn;
    int64_t expires_at_ms; /* offline: monotonic ms deadline, 0 = never */
    /* subscriptions, for cleanup and persistence */
    char **filters;
    uint32_t nfilters, fcap;
    /* outbound QoS 1/2 window, in send order (a ring) */
    inflight *inf;
    uint32_t inf_head, inf_len, inf_cap, inf_used;
    uint16_t next_id;
    uint8_t *ids_out; /* bitmap of packet ids in use outbound (8 KiB, lazily) */
    /* queued deliveries (a ring), bounded by max-queued-messages */
    delivery *q;
    uint32_t q_head, q_len, q_cap;
    /* inbound QoS 2 packet ids awaiting PUBREL (bitmap, lazily) */
    uint8_t *ids_in;
    uint32_t n_in;
    /* will */
    msg *will;
    uint32_t will_delay;
    int64_t will_expiry; /* will's message expiry interval + 1, 0 = none */
    int64_t will_at_ms;  /* monotonic ms when a delayed will is due, 0 = none */
    atomic_ullong seq;
    struct session *off_next, *off_prev; /* worker's offline list */
    bool on_off_list;
    char cid[]; /* client identifier, NUL-terminated, in the same allocation */
} session;

session *session_ref(session *s);
/* Takes s off its worker's list of offline sessions (home thread only). */
void off_list_del(struct worker *w, session *s);
void session_unref(session *s);

/* One connection, owned by its thread. */
typedef struct conn {
    uv_tcp_t *tcp;       /* owned; freed in the close callback; NULL over a WebSocket */
    struct net_tls *tls; /* owned: TLS between tcp and the parser (mqtts), or NULL */
    struct http_ws *ws;  /* MQTT over WebSocket: the transport instead of tcp, or NULL */
    bool ws_hold;        /* a WebSocket connection not yet released (ws_release_task) */
    struct worker *w;
    session *s;
    char *username;
    auth_identity id;                      /* tenant, registry device or API token (auth.h) */
    char tprefix[TOPIC_TENANT_PREFIX_MAX]; /* its tenant's topic prefix (topic.h) */
    uint8_t tplen;
    uint64_t pres_version; /* presence events' versionNumber (registry devices) */
    const char *gone;      /* the disconnectReason of its presence event, when known */
    /* Acknowledgements in order: a telemetry PUBACK/PUBREC waits for the
     * tsdb's fsync, and every acknowledgement after it waits its turn. */
    struct ack_entry *acks;
    uint32_t nacks, acks_cap;
    uint32_t ack_seq;         /* numbers the entries */
    uint32_t durable_pending; /* tsdb writes whose done has not come back: c stays */
    /* traffic not yet added to its registry device's counters (at each tick) */
    uint64_t n_msgs_in, n_bytes_in, n_msgs_out, n_bytes_out;
    uint8_t version;
    uint8_t state; /* CONN_NEW, CONN_ACTIVE, CONN_CLOSING */
    bool dirty;
    bool writing;
    bool will_publish; /* publish the will when closing */
    bool paused;       /* reading stopped: back-pressure from slow consumers */
    bool throttled;    /* reading stopped: our output to it is over max-outbuf */
    bool authing;      /* its password is being checked on a worker thread */
    bool yielded;      /* read its budget this loop tick; resumes next iteration */
    uint64_t budget_ms;
    uint32_t budget_used;
    bool auth_done; /* ... and auth_result, auth_id are the answer */
    thz_err auth_result;
    auth_identity auth_id;
    bool congested;      /* counted in B.congested: publishers of its messages pause */
    bool behind;         /* output or queue over half its bound (slow-consumer-timeout runs) */
    bool tenant_counted; /* holds one of its tenant's max-connections-per-tenant */
    bool limits_checked; /* its CONNECT passed max-connect-rate (not again after auth) */
    int64_t behind_ms;   /* when it fell behind */
    int64_t progress_ms; /* while behind: when the socket last took bytes or an ack came */
    double pub_tokens;   /* max-publish-rate token bucket */
    double bp_tokens;    /* backpressure-exempt-rate token bucket */
    int64_t bp_ms;       /* ... last refilled (loop time) */
    int64_t pub_ms;      /* ... last refilled (loop time) */
    uint16_t keepalive;
    int64_t last_rx_ms;
    int64_t accepted_ms;
    thz_buf in, out, wbuf;
    uv_write_t *wreq; /* allocated only while a write is pending (socket full) */
    uint32_t max_packet_out;
    uint16_t recv_max_out;
    uint16_t alias_max_out;
    uint16_t alias_next_out;
    char **alias_in;
    hmap *alias_out;
    struct conn *prev, *next;
    char peer[56]; /* "[v6 address]:port" */
    /* Authenticated by its TLS client certificate (mutual TLS): its
     * fingerprint, so that revoking the certificate closes this connection. */
    bool by_cert;
    uint8_t cert_fp[32];
} conn;

enum { CONN_NEW = 0, CONN_ACTIVE, CONN_CLOSING };

typedef struct ack_entry {
    uint32_t seq;
    uint16_t id;
    uint8_t type, reason;
    bool ready;
} ack_entry;

/* Per-thread broker state. */
typedef struct worker {
    int idx;
    uv_loop_t *loop;
    uv_timer_t tick;
    conn *conns;
    uint32_t nconns;
    conn **dirty;
    uint32_t ndirty, dcap;
    delivery **out; /* per target thread: batch being built */
    uint32_t *outn, *outcap;
    msg ***gb; /* per home thread: messages to free there (see msg_unref) */
    uint32_t *gbn, *gbcap;
    match *mt;
    uint32_t nmt, mtcap;
    mframe *ms; /* trie walk stack */
    uint32_t msn, mscap;
    session *offline;
    bool store_dirty;
    bool trie_rd;      /* holds B.trie_lock for reading until the batch ends */
    uv_prepare_t prep; /* resumes yielded connections each loop iteration */
    conn **yield;
    uint32_t nyield, ycap;
    conn **paused; /* publishers paused by back-pressure */
    uint32_t npaused, pcap;
    atomic_uint paused_n; /* npaused, readable by other threads */
    atomic_uint inbox;    /* deliveries posted to this thread, not yet handled */
    atomic_bool inbox_congested;
    bool hit_congested; /* the message just routed went to a congested consumer */
    /* counters, written by this thread only (STAT_ADD), read relaxed by $SYS */
    uint64_t n_clients, msgs_in, msgs_out, bytes_in, bytes_out, dropped;
    uint64_t connects, refused[MQTT_REFUSE_N], drops[MQTT_DROP_N], denied_pub, denied_sub;
    uint64_t limits[MQTT_LIMIT_N];
    /* gauges, recomputed by this thread's tick (mqtt_get_stats) */
    uint64_t g_queued, g_inflight, g_outbuf, g_sess_bytes;
    uint8_t rbuf[65536];
} worker;

/* Adds to a worker counter: one writer, so a relaxed load and store (no
 * locked instruction) are enough for readers on other threads. */
#define STAT_ADD(field, n)                                                                         \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (uint64_t)(n),        \
                     __ATOMIC_RELAXED)

#define LIMIT(name) atomic_load_explicit(&B.name, memory_order_relaxed)

/* Global broker state (broker.c). */
typedef struct broker {
    const thz_config *cfg;
    auth *auth;
    registry *reg; /* presence and revocations of registry devices, or NULL */
    tsdb *db;      /* telemetry of devices/{id}/telemetry is stored here, or NULL */
    store *st;
    int nthreads;
    worker **w;
    pthread_rwlock_t trie_lock;
    tnode *root;
    uint64_t nsubs;
    pthread_mutex_t sess_lock;
    hmap sessions;
    pthread_rwlock_t ret_lock;
    hmap retained;
    uint64_t retained_bytes; /* under ret_lock: what the retained messages take */
    int64_t started_ms;
    atomic_int congested;      /* consumers over their high-water mark */
    atomic_bool shutting_down; /* wills are not published while stopping */
    atomic_ullong next_gen;    /* next session instance number */
    /* The settings SIGHUP may change, copied by mqtt_reload: I/O threads
     * read these (LIMIT), never the live config the main thread rewrites. */
    _Atomic uint32_t max_queued, max_inflight, max_outbuf, max_packet, max_keepalive,
        max_session_expiry, max_connections, slow_consumer_timeout, sys_interval;
    /* limits and fairness (limits.c, conn.c) */
    _Atomic uint32_t tenant_connections, connect_rate, connect_burst, publish_rate, publish_burst,
        publish_rate_action, max_subscriptions, max_topic_len, max_topic_levels, tenant_retained,
        max_payload, backpressure, bp_exempt;
} broker;

extern broker B;

int64_t now_ms(void);
int64_t wall_s(void);

/* topic.c (the topic rules themselves are public: mqtt/topic.h) */
/* Splits "$share/group/filter": returns true and the parts if shared; false
 * when not shared. *bad set when it starts with $share/ but is malformed. */
bool topic_share_parse(const char *f, size_t n, const char **group, size_t *glen,
                       const char **filter, size_t *flen, bool *bad);
/* Trie (caller holds B.trie_lock: write for add/remove, read for match).
 * trie_read_begin takes the read lock for the rest of the thread's batch;
 * trie_write_lock first drops the calling I/O thread's read lock. */
void trie_read_begin(struct worker *w);
void trie_write_lock(void);
void trie_write_unlock(void);
thz_err trie_add(tnode *root, const char *filter, size_t flen, const char *group, size_t glen,
                 session *s, uint8_t opts, uint32_t id, bool *existed);
bool trie_remove(tnode *root, const char *filter, size_t flen, const char *group, size_t glen,
                 session *s);
/* Appends the matches of topic to w->mt, taking a session ref for each. */
void trie_match(tnode *root, const char *topic, size_t tlen, worker *w);
void trie_free(tnode *root);

/* limits.c */
/* Counts a limit hit on w (may be NULL) and logs fmt at warn level, at most
 * once per 10 s per limit (with how many lines were held back). */
void limit_hit(worker *w, int lim, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Takes one CONNECT from peer's address bucket ("host:port", the port is
 * ignored); false when over max-connect-rate. Any thread. */
bool connect_rate_take(const char *peer);
/* One more connection of the tenant with this topic prefix; false when at
 * max-connections-per-tenant. Any thread. */
bool tenant_conn_acquire(const char *prefix, size_t plen);
void tenant_conn_release(const char *prefix, size_t plen);
/* Adds delta to the retained topics of topic's tenant; with limited, refuses
 * (false) to pass max-retained-per-tenant. Caller holds B.ret_lock. */
bool retained_tenant_add(const char *topic, size_t tlen, int delta, bool limited);
void limits_free(void);
/* Takes one token from a bucket of rate per second holding at most burst;
 * now in ms. False when empty. */
static inline bool tbucket_take(double *tokens, int64_t *last, uint32_t rate, uint32_t burst,
                                int64_t now)
{
    if (*last == 0) {
        *tokens = burst;
        *last = now;
    }
    *tokens += (double)(now - *last) * rate / 1000.0;
    if (*tokens > burst) *tokens = burst;
    *last = now;
    if (*tokens < 1.0) return false;
    *tokens -= 1.0;
    return true;
}
/* Levels of a topic or filter: one more than its '/'. */
uint32_t topic_levels(const char *t, size_t n);

/* broker.c, called by conn.c */
void route(worker *w, msg *m, const session *origin, uint32_t *nmatched);
/* Sets (or with an empty payload clears) a retained message; false when a
 * new topic was refused by max-retained-per-tenant (or memory). */
bool retained_set(msg *m);
/* Does the session already hold this filter (the broker's name of it)? */
bool session_has_filter(const session *s, const char *f, size_t fl);
void retained_deliver(worker *w, session *s, const char *filter, size_t flen, uint8_t opts,
                      uint32_t subid);
void deliver(worker *w, delivery *d);
void session_pump(worker *w, session *s);
void session_resend(worker *w, session *s);
void session_end(worker *w, session *s);
/* Creates a session homed on thread `home` and enters it in the session
 * table; the caller holds B.sess_lock. The table owns the returned ref. */
session *session_create_locked(const char *cid, size_t cidlen, int home);
void session_went_offline(worker *w, session *s, bool publish_will);
void session_persist(session *s, int64_t disconnected);
/* Deletes a session's stored subscriptions and its record (it stops being
 * persistent). */
void session_unpersist(session *s);
/* Deletes the record of client id cid; the caller holds B.sess_lock and has
 * just removed that client's session from the table. */
void session_record_delete_locked(const char *cid, size_t cidlen);
void session_sub_persist(session *s, const char *filter, size_t flen, uint8_t opts, uint32_t id,
                         bool del);
thz_err session_add_filter(session *s, const char *filter, size_t flen);
void session_remove_filter(session *s, const char *filter, size_t flen);
bool inflight_ack(worker *w, session *s, uint16_t id, uint8_t type);
void will_publish(worker *w, session *s);

/* conn.c */
void conn_accept(int thread, uv_tcp_t *tcp, void *ctx);
/* The same for the mqtts listener: TLS first. */
void conn_accept_tls(int thread, uv_tcp_t *tcp, void *ctx);
/* Takes over a connection moved from another thread: its socket fd, its TLS
 * state (or NULL; owned from now on) and the plaintext bytes it had read but
 * not processed. */
void conn_adopt(worker *w, int fd, struct net_tls *tls, const uint8_t *bytes, size_t n,
                const char *peer);
void conn_mark_dirty(conn *c);
void conn_flush(conn *c);
void conn_close(conn *c, int reason);
/* Frees c once it is closed and nothing else (a password check, a tsdb
 * write awaiting its fsync) holds it. */
void conn_release(conn *c);
/* Adds c's traffic since the last call to its registry device's counters. */
void conn_count_flush(conn *c);
/* Publishes as the broker from a task queued on the calling I/O thread (or
 * thread 0), never from inside the caller's own work. */
thz_err publish_later(const char *topic, const void *payload, size_t len, int qos);
/* Encodes a PUBLISH of d to c (assigning an id for QoS > 0 is the caller's
 * job: id). Returns false if dropped (too big for the client, expired). */
bool conn_send_publish(conn *c, const delivery *d, uint16_t id, bool dup);
void conn_send_pubrel(conn *c, uint16_t id);
/* Re-evaluates whether c is a congested consumer (output or queue above the
 * high-water mark; clear below the low-water mark). While any consumer is
 * congested, connections that publish stop being read (TCP back-pressure),
 * so that saturation loses nothing and memory stays bounded. */
void conn_pressure(conn *c);
/* Drops one unit of congestion; the last one resumes paused publishers. */
void congestion_release(worker *w);
#define INBOX_HIGH 16384 /* cross-thread deliveries pending before publishers pause */
#define INBOX_LOW  4096
/* Past this many, QoS 0 deliveries to that thread are dropped (counted):
 * with --backpressure queued they do not pause their publishers. */
#define INBOX_HARD INBOX_HIGH
/* Messages one 64 KiB read can carry (a 7-byte QoS 1 PUBLISH is the least). */
#define INBOX_BURST (65536 / 7)
/* Resumes this worker's paused publishers once no consumer is congested. */
void worker_resume(worker *w);
/* Restarts reading on connections that used their read budget last tick. */
void worker_yield_resume(worker *w);

#endif
