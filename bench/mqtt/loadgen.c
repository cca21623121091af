/* loadgen.c - a pipelined, epoll-based MQTT 3.1.1/5 load generator for the thinghz benchmark.
 * It measures delivered throughput, loss, duplicates, reordering and latency, or holds many
 * idle connections so that the caller can measure a broker's memory per connection.
 *
 * Standalone on purpose (no dependency on src/; only ../common/bench_common.h, shared with
 * bench/scale/fleet.c): it must be able to benchmark any broker,
 * including a thinghz that does not build. Build: gcc -O2 -pthread -o loadgen loadgen.c
 *
 * Design in one paragraph: each worker thread owns an epoll set and a slice of the
 * connections. Reads are large (256 KiB per call) and parse every complete packet in the
 * buffer; writes flush a whole bounded output buffer in one write(), so the cost per message
 * is a memcpy of a prebuilt PUBLISH plus a few stores. Publishers stamp each payload with a
 * CLOCK_MONOTONIC send time, a per-publisher sequence number and the publisher index;
 * subscribers keep one bitmap per (subscriber, publisher) stream, which counts every
 * duplicate and every late (out-of-order) message exactly and lets loss be computed as
 * expected - unique deliveries. The main thread only coordinates phases and samples the
 * broker's CPU time (/proc/PID/stat) at the edges of the measured window.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "../common/bench_common.h"

/* ---- options ------------------------------------------------------------------------------ */

struct lg_opts {
    const char *zHost;
    int port;
    int nPubs, nSubs;
    bool shared; /* --topic-mode shared: one topic, every subscriber gets every message */
    int qos;
    double duration; /* measured window, seconds */
    double warmup;   /* publishing before the window, not measured */
    double rate;     /* total offered msgs/s; 0 = saturation */
    int size;        /* payload bytes */
    int inflight;    /* QoS 1 window of unacknowledged PUBLISH per publisher */
    int version;     /* 4 = MQTT 3.1.1, 5 = MQTT 5 */
    int nThreads;
    int nIdle; /* > 0 selects idle mode */
    bool idleSub;
    double hold;
    double drain;    /* stop draining after this long without a new delivery */
    double drainMax; /* and never drain longer than this */
    double connectTimeout;
    int brokerPid;
    int outBuf, inBuf; /* per data connection, bytes */
    int coalesceUs;    /* saturation: pause before polling when a round read little */
    bool json;
};

static struct lg_opts g_opt = {
    .zHost = "127.0.0.1",
    .port = 1883,
    .nPubs = 1,
    .nSubs = 1,
    .qos = 0,
    .duration = 5,
    .warmup = 1,
    .size = 64,
    .inflight = 1000,
    .version = 4,
    .nThreads = 1,
    .hold = 2,
    .drain = 2,
    .drainMax = 60,
    .connectTimeout = 120,
    .outBuf = 128 * 1024,
    .inBuf = 256 * 1024,
    .coalesceUs = 200,
};

/* ---- small helpers ------------------------------------------------------------------------ */

#define LG_NS 1000000000ull
/* The payload header: send time, sequence number, publisher index. The rest is filler. */
#define LG_PAYLOAD_MIN 20
#define LG_MAX_SEQ     (1ull << 36) /* a sequence beyond this is corruption, not a long run */

static uint64_t lg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * LG_NS + (uint64_t)ts.tv_nsec;
}

static void lg_die(const char *zFmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void lg_die(const char *zFmt, ...)
{
    va_list ap;
    va_start(ap, zFmt);
    fputs("loadgen: error: ", stderr);
    vfprintf(stderr, zFmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *lg_calloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) lg_die("out of memory (%zu x %zu bytes)", n, sz);
    return p;
}

static void lg_sleep_until(uint64_t t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / LG_NS), .tv_nsec = (long)(t % LG_NS)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* ---- latency histogram (the buckets: ../common/bench_common.h) ------------------------- */

static uint64_t hist_percentile(const uint64_t *pHist, uint64_t nTotal, double q)
{
    if (nTotal == 0) return 0;
    uint64_t want = (uint64_t)(q * (double)nTotal + 0.999999);
    if (want < 1) want = 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        acc += pHist[i];
        if (acc >= want) return hist_value(i);
    }
    return hist_value(H_BUCKETS - 1);
}

/* ---- connections and threads -------------------------------------------------------------- */

enum lg_role { LG_PUB, LG_SUB, LG_IDLE };
enum lg_state { CS_NEW, CS_CONNECTING, CS_CONNACK, CS_SUBACK, CS_READY };

/* What one subscriber has seen from one publisher. bits[] has one bit per sequence number. */
struct lg_stream {
    uint64_t *aBits;
    uint64_t nWords;
    uint64_t next; /* highest sequence seen + 1 */
};

struct lg_thread;

struct lg_conn {
    int fd;
    enum lg_role role;
    enum lg_state state;
    int idx;         /* index within its role */
    uint32_t events; /* what is registered with epoll now */
    struct lg_thread *pTh;
    char zId[32];
    char zTopic[64]; /* publish topic (pubs) or subscription filter (subs, idle) */

    uint8_t *pIn;
    size_t nIn, nInCap;
    uint8_t *pOut;
    size_t iOut, nOut, nOutCap; /* pending bytes are pOut[iOut..nOut) */

    /* publisher */
    uint8_t *pTmpl; /* a complete PUBLISH packet; copied per message */
    size_t nTmpl, iPid, iPay;
    uint64_t seq, nRateSent;
    uint64_t nPublished, nPublishedWin;
    uint32_t nInflight;
    uint16_t nextPid;
    uint64_t *aPidUsed; /* 65536 bits */

    /* subscriber */
    struct lg_stream *aStream; /* one per publisher */
};

struct lg_thread {
    int id;
    pthread_t tid;
    int ep, tfd;
    struct lg_conn **apConn;
    int nConn;
    struct lg_conn **apPub;
    int nPub;
    int nOpened, nPending, nReady; /* setup progress */
    bool kicked, stopped;

    uint64_t *aHist;
    uint64_t nLat, latMax;
    uint64_t nDelivered, nDeliveredWin, nDup, nOoo, nPubackErr, nGrantDowngrade;

    _Atomic uint64_t aDelivered, aExpected, aInflight; /* for the coordinator */
    _Atomic int aReady;
};

enum { PH_SETUP, PH_RUN, PH_DONE };
static _Atomic int g_phase = PH_SETUP;
static uint64_t g_tStart, g_tMeas, g_tStop; /* written before g_phase becomes PH_RUN */
static char g_zRun[16];
static struct sockaddr_in g_addr;
static struct lg_thread *g_aTh;
static struct lg_conn *g_aConn;
static int g_nConn;
static int *g_aSubsPerTopic; /* indexed by publisher: how many subscribers get its messages */

#define LG_COALESCE_BYTES   (16 * 1024)
#define MAX_PENDING_CONNECT 256 /* handshakes in flight per thread, to spare the accept queue */

static const char *role_name(enum lg_role r)
{
    return r == LG_PUB ? "publisher" : r == LG_SUB ? "subscriber" : "idle";
}

static void conn_die(struct lg_conn *c, const char *zWhat) __attribute__((noreturn));
static void conn_die(struct lg_conn *c, const char *zWhat)
{
    lg_die("%s %d (%s): %s", role_name(c->role), c->idx, c->zId, zWhat);
}

static void conn_set_events(struct lg_conn *c, uint32_t ev)
{
    if (ev == c->events) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(c->pTh->ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
        lg_die("epoll_ctl: %s", strerror(errno));
    c->events = ev;
}

/* Appends n bytes to the output buffer; the caller guarantees they fit. */
static uint8_t *conn_out_reserve(struct lg_conn *c, size_t n)
{
    if (c->nOut + n > c->nOutCap && c->iOut > 0) {
        memmove(c->pOut, c->pOut + c->iOut, c->nOut - c->iOut);
        c->nOut -= c->iOut;
        c->iOut = 0;
    }
    if (c->nOut + n > c->nOutCap) conn_die(c, "output buffer overflow");
    uint8_t *p = c->pOut + c->nOut;
    c->nOut += n;
    return p;
}

/* One write() of everything pending. A short write means the socket is full: EPOLLOUT will
 * tell us when to continue, so a second write() in a row would only return EAGAIN. */
static void conn_flush(struct lg_conn *c)
{
    while (c->nOut > c->iOut) {
        ssize_t n = write(c->fd, c->pOut + c->iOut, c->nOut - c->iOut);
        if (n > 0) {
            c->iOut += (size_t)n;
            if (c->iOut == c->nOut) c->iOut = c->nOut = 0;
            return;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        char zMsg[128];
        snprintf(zMsg, sizeof zMsg, "write: %s", n < 0 ? strerror(errno) : "wrote 0 bytes");
        conn_die(c, zMsg);
    }
}

static void send_connect(struct lg_conn *c)
{
    size_t nId = strlen(c->zId);
    size_t nProps = g_opt.version == 5 ? 3 : 0; /* Receive Maximum 65535 */
    size_t rl = 10 + (g_opt.version == 5 ? 1 + nProps : 0) + 2 + nId;
    uint8_t *p = conn_out_reserve(c, 5 + rl), *p0 = p;
    *p++ = 0x10;
    p += put_varint(p, rl);
    memcpy(p, "\0\4MQTT", 6);
    p += 6;
    *p++ = (uint8_t)g_opt.version;
    *p++ = 0x02; /* clean session, no will, no credentials */
    put16(p, 60);
    p += 2;
    if (g_opt.version == 5) {
        *p++ = (uint8_t)nProps;
        *p++ = 0x21;
        put16(p, 65535);
        p += 2;
    }
    put16(p, (unsigned)nId);
    memcpy(p + 2, c->zId, nId);
    p += 2 + nId;
    c->nOut -= (size_t)((p0 + 5 + rl) - p); /* give back the unused varint bytes */
}

static void send_subscribe(struct lg_conn *c, int qos)
{
    size_t nTopic = strlen(c->zTopic);
    size_t rl = 2 + (g_opt.version == 5 ? 1 : 0) + 2 + nTopic + 1;
    uint8_t *p = conn_out_reserve(c, 5 + rl), *p0 = p;
    *p++ = 0x82;
    p += put_varint(p, rl);
    put16(p, 1);
    p += 2;
    if (g_opt.version == 5) *p++ = 0;
    put16(p, (unsigned)nTopic);
    memcpy(p + 2, c->zTopic, nTopic);
    p += 2 + nTopic;
    *p++ = (uint8_t)qos;
    c->nOut -= (size_t)((p0 + 5 + rl) - p);
}

/* Builds the PUBLISH template that pub_fill() copies for every message. */
static void pub_build_template(struct lg_conn *c)
{
    size_t nTopic = strlen(c->zTopic);
    size_t rl =
        2 + nTopic + (g_opt.qos ? 2 : 0) + (g_opt.version == 5 ? 1 : 0) + (size_t)g_opt.size;
    c->pTmpl = lg_calloc(1, 5 + rl);
    uint8_t *p = c->pTmpl;
    *p++ = (uint8_t)(0x30 | (g_opt.qos << 1));
    p += put_varint(p, rl);
    put16(p, (unsigned)nTopic);
    memcpy(p + 2, c->zTopic, nTopic);
    p += 2 + nTopic;
    if (g_opt.qos) {
        c->iPid = (size_t)(p - c->pTmpl);
        p += 2;
    }
    if (g_opt.version == 5) *p++ = 0;
    c->iPay = (size_t)(p - c->pTmpl);
    memset(p + LG_PAYLOAD_MIN, 'x', (size_t)g_opt.size - LG_PAYLOAD_MIN);
    uint32_t idx = (uint32_t)c->idx;
    memcpy(p + 16, &idx, 4);
    p += g_opt.size;
    c->nTmpl = (size_t)(p - c->pTmpl);
}

static uint16_t pub_alloc_pid(struct lg_conn *c)
{
    for (;;) {
        uint16_t id = c->nextPid++;
        if (c->nextPid == 0) c->nextPid = 1;
        if (!(c->aPidUsed[id >> 6] & (1ull << (id & 63)))) {
            c->aPidUsed[id >> 6] |= 1ull << (id & 63);
            return id;
        }
    }
}

/* Appends up to nBudget PUBLISH packets, bounded by free buffer space and the QoS 1 window. */
static void pub_fill(struct lg_conn *c, uint64_t nBudget, uint64_t now)
{
    if (c->iOut > 0 && c->nOutCap - c->nOut < c->nTmpl) {
        memmove(c->pOut, c->pOut + c->iOut, c->nOut - c->iOut);
        c->nOut -= c->iOut;
        c->iOut = 0;
    }
    uint64_t n = (c->nOutCap - c->nOut) / c->nTmpl;
    if (n > nBudget) n = nBudget;
    if (g_opt.qos && n > (uint64_t)g_opt.inflight - c->nInflight)
        n = (uint64_t)g_opt.inflight - c->nInflight;
    if (n == 0) return;
    uint8_t *p = c->pOut + c->nOut;
    for (uint64_t i = 0; i < n; i++) {
        memcpy(p, c->pTmpl, c->nTmpl);
        if (g_opt.qos) put16(p + c->iPid, pub_alloc_pid(c));
        memcpy(p + c->iPay, &now, 8);
        memcpy(p + c->iPay + 8, &c->seq, 8);
        c->seq++;
        p += c->nTmpl;
    }
    c->nOut += n * c->nTmpl;
    c->nInflight += g_opt.qos ? (uint32_t)n : 0;
    c->nPublished += n;
    if (now >= g_tMeas && now < g_tStop) c->nPublishedWin += n;
}

/* Is this publisher still supposed to offer load at time now? */
static bool pub_active(uint64_t now)
{
    return atomic_load_explicit(&g_phase, memory_order_acquire) == PH_RUN && now < g_tStop;
}

/* Generates what is due, writes, and registers for EPOLLOUT only if there is a reason to. */
static void pub_service(struct lg_conn *c, uint64_t now)
{
    bool active = pub_active(now);
    if (active) {
        uint64_t nBudget = UINT64_MAX;
        if (g_opt.rate > 0 && now < g_tStart) {
            nBudget = 0;
        } else if (g_opt.rate > 0) {
            /* Publisher i of P sends its share of floor(elapsed * rate); the offsets spread
             * the publishers' messages evenly over time. */
            unsigned __int128 total =
                (unsigned __int128)(now - g_tStart) * (uint64_t)g_opt.rate / LG_NS;
            uint64_t due =
                (uint64_t)((total + (unsigned)(g_opt.nPubs - 1 - c->idx)) / (unsigned)g_opt.nPubs);
            nBudget = due > c->nRateSent ? due - c->nRateSent : 0;
        }
        uint64_t before = c->nPublished;
        pub_fill(c, nBudget, now);
        c->nRateSent += c->nPublished - before;
    }
    conn_flush(c);
    bool wantOut =
        c->nOut > c->iOut ||
        (active && g_opt.rate == 0 && (g_opt.qos == 0 || c->nInflight < (uint32_t)g_opt.inflight));
    conn_set_events(c, EPOLLIN | (wantOut ? EPOLLOUT : 0));
}

/* Records one delivered PUBLISH on subscriber c. */
static void sub_record(struct lg_conn *c, const uint8_t *pPay, size_t nPay, uint64_t now)
{
    struct lg_thread *th = c->pTh;
    if (nPay < LG_PAYLOAD_MIN) conn_die(c, "delivered payload shorter than the stamp");
    uint64_t ts, seq;
    uint32_t pub;
    memcpy(&ts, pPay, 8);
    memcpy(&seq, pPay + 8, 8);
    memcpy(&pub, pPay + 16, 4);
    if (pub >= (uint32_t)g_opt.nPubs || seq >= LG_MAX_SEQ)
        conn_die(c, "corrupt payload (publisher index or sequence out of range)");
    struct lg_stream *st = &c->aStream[pub];
    uint64_t w = seq >> 6;
    if (w >= st->nWords) {
        uint64_t n = st->nWords ? st->nWords * 2 : 4096;
        while (n <= w) n *= 2;
        uint64_t *a = realloc(st->aBits, n * 8);
        if (!a) lg_die("out of memory for the sequence bitmap");
        memset(a + st->nWords, 0, (n - st->nWords) * 8);
        st->aBits = a;
        st->nWords = n;
    }
    uint64_t bit = 1ull << (seq & 63);
    if (st->aBits[w] & bit) {
        th->nDup++;
        return;
    }
    st->aBits[w] |= bit;
    if (seq < st->next)
        th->nOoo++;
    else
        st->next = seq + 1;
    th->nDelivered++;
    if (now >= g_tMeas && now < g_tStop) {
        th->nDeliveredWin++;
        uint64_t lat = now > ts ? now - ts : 0;
        th->aHist[hist_index(lat)]++;
        th->nLat++;
        if (lat > th->latMax) th->latMax = lat;
    }
}

static void conn_became_ready(struct lg_conn *c)
{
    c->state = CS_READY;
    c->pTh->nReady++;
    c->pTh->nPending--;
    atomic_store_explicit(&c->pTh->aReady, c->pTh->nReady, memory_order_release);
}

/* Handles one complete packet p[0..n) (fixed header included; rl bytes of body at pBody). */
static void conn_packet(struct lg_conn *c, const uint8_t *p, const uint8_t *pBody, size_t rl,
                        uint64_t now)
{
    char zMsg[160];
    switch (p[0] >> 4) {
    case 2: /* CONNACK */
        if (c->state != CS_CONNACK || rl < 2) conn_die(c, "unexpected CONNACK");
        if (pBody[1] != 0) {
            snprintf(zMsg, sizeof zMsg, "CONNACK refused, return/reason code 0x%02x", pBody[1]);
            conn_die(c, zMsg);
        }
        if (c->role == LG_SUB || (c->role == LG_IDLE && g_opt.idleSub)) {
            send_subscribe(c, c->role == LG_SUB ? g_opt.qos : 0);
            c->state = CS_SUBACK;
        } else {
            conn_became_ready(c);
        }
        break;
    case 9: { /* SUBACK */
        if (c->state != CS_SUBACK || rl < 3) conn_die(c, "unexpected SUBACK");
        size_t i = 2;
        if (g_opt.version == 5) {
            size_t nProps;
            int k = get_varint(pBody + 2, rl - 2, &nProps);
            if (k <= 0 || 2 + (size_t)k + nProps >= rl) conn_die(c, "malformed SUBACK");
            i += (size_t)k + nProps;
        }
        uint8_t code = pBody[i];
        if (code >= 0x80) {
            snprintf(zMsg, sizeof zMsg, "SUBACK failure code 0x%02x for '%s'", code, c->zTopic);
            conn_die(c, zMsg);
        }
        if (c->role == LG_SUB && code < g_opt.qos) c->pTh->nGrantDowngrade++;
        conn_became_ready(c);
        break;
    }
    case 3: { /* PUBLISH */
        int qos = (p[0] >> 1) & 3;
        if (rl < 2) conn_die(c, "malformed PUBLISH");
        size_t i = 2 + (((size_t)pBody[0] << 8) | pBody[1]);
        uint16_t pid = 0;
        if (qos == 3) conn_die(c, "PUBLISH with QoS 3");
        if (qos > 0) {
            if (i + 2 > rl) conn_die(c, "malformed PUBLISH");
            pid = (uint16_t)((pBody[i] << 8) | pBody[i + 1]);
            i += 2;
        }
        if (g_opt.version == 5) {
            size_t nProps;
            int k = i < rl ? get_varint(pBody + i, rl - i, &nProps) : 0;
            if (k <= 0) conn_die(c, "malformed PUBLISH properties");
            i += (size_t)k + nProps;
        }
        if (i > rl) conn_die(c, "malformed PUBLISH");
        if (c->role != LG_SUB) conn_die(c, "unexpected PUBLISH on a non-subscriber");
        sub_record(c, pBody + i, rl - i, now);
        if (qos == 1) {
            uint8_t *q = conn_out_reserve(c, 4);
            q[0] = 0x40;
            q[1] = 2;
            put16(q + 2, pid);
        } else if (qos == 2) {
            conn_die(c, "QoS 2 delivery, but loadgen never subscribes with QoS 2");
        }
        break;
    }
    case 4: { /* PUBACK */
        if (c->role != LG_PUB || rl < 2) conn_die(c, "unexpected PUBACK");
        uint16_t pid = (uint16_t)((pBody[0] << 8) | pBody[1]);
        uint64_t bit = 1ull << (pid & 63);
        if (!(c->aPidUsed[pid >> 6] & bit)) conn_die(c, "PUBACK for a packet id not in flight");
        c->aPidUsed[pid >> 6] &= ~bit;
        c->nInflight--;
        /* MQTT 5 "no matching subscribers" (0x10) is a success; >= 0x80 is a refusal. */
        if (rl > 2 && pBody[2] >= 0x80) c->pTh->nPubackErr++;
        break;
    }
    case 13: /* PINGRESP */ break;
    case 14: /* DISCONNECT (MQTT 5) */
        snprintf(zMsg, sizeof zMsg, "broker sent DISCONNECT, reason code 0x%02x",
                 rl > 0 ? pBody[0] : 0);
        conn_die(c, zMsg);
    default: snprintf(zMsg, sizeof zMsg, "unexpected packet type %d", p[0] >> 4); conn_die(c, zMsg);
    }
}

/* Parses every complete packet in the input buffer and keeps the partial tail. */
static void conn_parse(struct lg_conn *c, uint64_t now)
{
    size_t i = 0;
    while (c->nIn - i >= 2) {
        size_t rl;
        int k = get_varint(c->pIn + i + 1, c->nIn - i - 1, &rl);
        if (k < 0) conn_die(c, "malformed remaining length");
        if (k == 0) break;
        size_t nPkt = 1 + (size_t)k + rl;
        if (nPkt > c->nInCap) conn_die(c, "packet larger than the input buffer");
        if (c->nIn - i < nPkt) break;
        conn_packet(c, c->pIn + i, c->pIn + i + 1 + k, rl, now);
        i += nPkt;
    }
    if (i > 0) {
        memmove(c->pIn, c->pIn + i, c->nIn - i);
        c->nIn -= i;
    }
}

/* One large read, then parse. Returns the number of bytes read (0 on EAGAIN). */
static size_t conn_read(struct lg_conn *c, uint64_t now)
{
    ssize_t n = read(c->fd, c->pIn + c->nIn, c->nInCap - c->nIn);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
        char zMsg[128];
        snprintf(zMsg, sizeof zMsg, "read: %s", strerror(errno));
        conn_die(c, zMsg);
    }
    if (n == 0) conn_die(c, "the broker closed the connection");
    c->nIn += (size_t)n;
    conn_parse(c, now);
    return (size_t)n;
}

static void conn_open(struct lg_thread *th, struct lg_conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) lg_die("socket: %s (raise the open files limit?)", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&g_addr, sizeof g_addr) < 0 && errno != EINPROGRESS) {
        char zMsg[128];
        snprintf(zMsg, sizeof zMsg, "connect: %s", strerror(errno));
        conn_die(c, zMsg);
    }
    c->state = CS_CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(th->ep, EPOLL_CTL_ADD, c->fd, &e) < 0) lg_die("epoll_ctl: %s", strerror(errno));
    th->nOpened++;
    th->nPending++;
}

/* Handles what epoll reported for c; returns the number of bytes read. */
static size_t conn_event(struct lg_conn *c, uint32_t ev, uint64_t now)
{
    size_t nRead = 0;
    if (c->state == CS_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            char zMsg[128];
            snprintf(zMsg, sizeof zMsg, "connect to %s:%d: %s", g_opt.zHost, g_opt.port,
                     strerror(err));
            conn_die(c, zMsg);
        }
        send_connect(c);
        c->state = CS_CONNACK;
        conn_flush(c);
        conn_set_events(c, EPOLLIN | (c->nOut > c->iOut ? EPOLLOUT : 0));
        return 0;
    }
    if (ev & EPOLLIN) {
        /* Backpressure: a subscriber whose PUBACKs cannot drain stops reading. */
        if (c->nOut - c->iOut <= c->nOutCap / 2) nRead = conn_read(c, now);
    } else if (ev & (EPOLLERR | EPOLLHUP)) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        char zMsg[128];
        snprintf(zMsg, sizeof zMsg, "connection error: %s",
                 err ? strerror(err) : "hang-up by the broker");
        conn_die(c, zMsg);
    }
    if (c->role == LG_PUB && c->state == CS_READY) {
        pub_service(c, now);
        return nRead;
    }
    conn_flush(c);
    bool pending = c->nOut > c->iOut;
    bool readable = c->nOut - c->iOut <= c->nOutCap / 2;
    conn_set_events(c, (readable ? EPOLLIN : 0) | (pending ? EPOLLOUT : 0));
    return nRead;
}

static void *thread_main(void *pArg)
{
    struct lg_thread *th = pArg;
    struct epoll_event aEv[512];
    bool coalesce = g_opt.rate == 0 && g_opt.coalesceUs > 0 && !g_opt.nIdle;
    size_t nRead = 0;
    for (;;) {
        int phase = atomic_load_explicit(&g_phase, memory_order_acquire);
        if (phase == PH_DONE) break;
        while (th->nOpened < th->nConn && th->nPending < MAX_PENDING_CONNECT)
            conn_open(th, th->apConn[th->nOpened]);

        uint64_t now = lg_now();
        if (phase == PH_RUN && !th->kicked) {
            th->kicked = true;
            for (int i = 0; i < th->nPub; i++) pub_service(th->apPub[i], now);
        }
        if (phase == PH_RUN && !th->stopped && now >= g_tStop) {
            /* Stop offering load; keep flushing what is buffered. */
            th->stopped = true;
            for (int i = 0; i < th->nPub; i++) pub_service(th->apPub[i], now);
        }

        /* Coalescing (saturation only): when the last round moved little data, let more
         * accumulate before polling again. A subscriber blocked in epoll_wait makes the broker
         * pay a cross-CPU wake-up per write, and tiny reads make the kernel send a window
         * update per read; both would be charged to the broker, not to the load. */
        if (coalesce && nRead < LG_COALESCE_BYTES && phase == PH_RUN) usleep(g_opt.coalesceUs);
        nRead = 0;
        int n = epoll_wait(th->ep, aEv, 512, 5);
        if (n < 0) {
            if (errno == EINTR) continue;
            lg_die("epoll_wait: %s", strerror(errno));
        }
        now = lg_now();
        for (int i = 0; i < n; i++) {
            struct lg_conn *c = aEv[i].data.ptr;
            if (!c) { /* the rate timer */
                uint64_t nExp;
                if (read(th->tfd, &nExp, 8) < 0 && errno != EAGAIN)
                    lg_die("timerfd read: %s", strerror(errno));
                for (int j = 0; j < th->nPub; j++) pub_service(th->apPub[j], now);
                continue;
            }
            nRead += conn_event(c, aEv[i].events, now);
        }
        uint64_t nExp = 0, nInfl = 0;
        for (int i = 0; i < th->nPub; i++) {
            struct lg_conn *c = th->apPub[i];
            nExp += c->nPublished * (uint64_t)g_aSubsPerTopic[c->idx];
            nInfl += c->nInflight;
        }
        atomic_store_explicit(&th->aDelivered, th->nDelivered, memory_order_relaxed);
        atomic_store_explicit(&th->aExpected, nExp, memory_order_relaxed);
        atomic_store_explicit(&th->aInflight, nInfl, memory_order_relaxed);
    }
    /* Best effort: a clean DISCONNECT so brokers do not log an error per client. */
    static const uint8_t aDisc[2] = {0xe0, 0};
    for (int i = 0; i < th->nConn; i++) {
        struct lg_conn *c = th->apConn[i];
        if (c->fd >= 0) {
            if (c->state == CS_READY && write(c->fd, aDisc, 2) < 0) { /* ignored */
            }
            close(c->fd);
        }
    }
    return NULL;
}

/* ---- broker process sampling ------------------------------------------------------------- */

/* utime + stime of the process, in seconds, or -1 if it cannot be read. */
static double proc_cpu_s(int pid)
{
    if (pid <= 0) return -1;
    char zPath[64], zBuf[1024];
    snprintf(zPath, sizeof zPath, "/proc/%d/stat", pid);
    FILE *f = fopen(zPath, "r");
    if (!f) return -1;
    size_t n = fread(zBuf, 1, sizeof zBuf - 1, f);
    fclose(f);
    zBuf[n] = 0;
    char *p = strrchr(zBuf, ')'); /* the command name may contain spaces */
    if (!p) return -1;
    unsigned long long ut = 0, st = 0;
    /* After ')' come fields 3 (state) .. ; utime and stime are fields 14 and 15. */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kib(int pid)
{
    if (pid <= 0) return -1;
    char zPath[64], zLine[256];
    snprintf(zPath, sizeof zPath, "/proc/%d/status", pid);
    FILE *f = fopen(zPath, "r");
    if (!f) return -1;
    long kib = -1;
    while (fgets(zLine, sizeof zLine, f))
        if (sscanf(zLine, "VmRSS: %ld kB", &kib) == 1) break;
    fclose(f);
    return kib;
}

/* CPU-seconds the whole machine spent busy (everything but idle and iowait), or -1. Minus the
 * broker's and our own CPU this tells how much other load disturbed the measurement. */
static double machine_busy_s(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    unsigned long long a[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &a[0], &a[1], &a[2], &a[3],
                   &a[4], &a[5], &a[6], &a[7]);
    fclose(f);
    if (n < 8) return -1;
    unsigned long long busy = a[0] + a[1] + a[2] + a[5] + a[6] + a[7];
    return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ---- setup, coordination, report ---------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: loadgen [options]\n"
        "MQTT load generator: saturation throughput, fixed-rate latency, or idle connections.\n"
        "\n"
        "Connection:\n"
        "  --host ADDR          broker IPv4 address or name (127.0.0.1)\n"
        "  --port N             broker port (1883)\n"
        "  --mqtt-version 4|5   4 = MQTT 3.1.1 (default), 5 = MQTT 5\n"
        "  --threads N          worker threads, each with its own epoll set (1)\n"
        "\n"
        "Traffic mode (the default):\n"
        "  --pubs P             publisher connections (1)\n"
        "  --subs S             subscriber connections (1)\n"
        "  --topic-mode M       distinct: publisher i publishes to bench/RUN/i and subscriber j\n"
        "                       subscribes bench/RUN/(j mod P);  shared: one topic for all\n"
        "                       publishers, every subscriber gets every message (fan-out)\n"
        "  --qos 0|1            publish and subscribe QoS (0)\n"
        "  --size BYTES         payload size, >= %d (64). The payload carries the send time\n"
        "                       (CLOCK_MONOTONIC ns), a per-publisher sequence number and the\n"
        "                       publisher index\n"
        "  --duration S         measured window in seconds (5)\n"
        "  --warmup S           publishing before the window, not measured (1)\n"
        "  --rate R             offered load in msgs/s over all publishers, paced by a timerfd;\n"
        "                       0 = saturation: publish as fast as the broker accepts, with a\n"
        "                       bounded output buffer per connection (0)\n"
        "  --inflight N         QoS 1 window of unacknowledged PUBLISH per publisher (1000)\n"
        "  --drain S            after publishing stops, wait for deliveries until none arrived\n"
        "                       for S seconds (2), at most --drain-max S (60)\n"
        "  --out-buf BYTES      output buffer per data connection (131072)\n"
        "  --in-buf BYTES       input buffer per data connection (262144)\n"
        "  --coalesce US        saturation only: when a polling round read under 16 KiB, sleep\n"
        "                       US microseconds before polling again, so that data arrives in\n"
        "                       batches as it would at a busy consumer (200; 0 = off)\n"
        "\n"
        "Idle mode:\n"
        "  --idle N             open N connections (CONNECT, wait for every CONNACK), hold them\n"
        "                       for --hold S seconds (2), then exit\n"
        "  --idle-sub           also SUBSCRIBE one distinct filter per idle connection\n"
        "\n"
        "Both modes:\n"
        "  --broker-pid PID     sample the broker's utime+stime (/proc/PID/stat) at the edges of\n"
        "                       the measured window, and in idle mode its VmRSS before connecting\n"
        "                       and at the end of the hold\n"
        "  --connect-timeout S  give up if the connections are not all set up in S seconds (120)\n"
        "  --json               print one JSON object on one line instead of text\n"
        "\n"
        "Traffic results: published, delivered (unique), expected = sum over publishers of\n"
        "published x subscribers of its topic, lost = expected - delivered, duplicates,\n"
        "out_of_order (arrived after a higher sequence number from the same publisher),\n"
        "deliver_rate (deliveries/s in the window), latency percentiles in microseconds over the\n"
        "deliveries received in the window. Exit status 0 when the run completed (even with\n"
        "loss), 1 on any error: refused connection, CONNACK/SUBACK failure, broker closing a\n"
        "connection, protocol violation.\n",
        LG_PAYLOAD_MIN);
}

static double parse_num(const char *zOpt, const char *z, double lo, double hi)
{
    char *e;
    double v = strtod(z, &e);
    if (e == z || *e || v < lo || v > hi)
        lg_die("%s: '%s' is not a number in [%g, %g]", zOpt, z, lo, hi);
    return v;
}

static void parse_args(int argc, char **argv)
{
    enum {
        O_HOST = 256,
        O_PORT,
        O_PUBS,
        O_SUBS,
        O_TMODE,
        O_QOS,
        O_SIZE,
        O_DUR,
        O_WARM,
        O_RATE,
        O_INFL,
        O_VER,
        O_THR,
        O_IDLE,
        O_IDLESUB,
        O_HOLD,
        O_DRAIN,
        O_DRAINMAX,
        O_PID,
        O_CTO,
        O_OUTBUF,
        O_INBUF,
        O_COAL,
        O_JSON,
        O_HELP
    };
    static const struct option aOpt[] = {
        {"host", 1, 0, O_HOST},        {"port", 1, 0, O_PORT},
        {"pubs", 1, 0, O_PUBS},        {"subs", 1, 0, O_SUBS},
        {"topic-mode", 1, 0, O_TMODE}, {"qos", 1, 0, O_QOS},
        {"size", 1, 0, O_SIZE},        {"duration", 1, 0, O_DUR},
        {"warmup", 1, 0, O_WARM},      {"rate", 1, 0, O_RATE},
        {"inflight", 1, 0, O_INFL},    {"mqtt-version", 1, 0, O_VER},
        {"threads", 1, 0, O_THR},      {"idle", 1, 0, O_IDLE},
        {"idle-sub", 0, 0, O_IDLESUB}, {"hold", 1, 0, O_HOLD},
        {"drain", 1, 0, O_DRAIN},      {"drain-max", 1, 0, O_DRAINMAX},
        {"broker-pid", 1, 0, O_PID},   {"connect-timeout", 1, 0, O_CTO},
        {"out-buf", 1, 0, O_OUTBUF},   {"in-buf", 1, 0, O_INBUF},
        {"coalesce", 1, 0, O_COAL},    {"json", 0, 0, O_JSON},
        {"help", 0, 0, O_HELP},        {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "h", aOpt, NULL)) != -1) {
        const char *z = aOpt[0].name; /* replaced below for messages */
        for (const struct option *p = aOpt; p->name; p++)
            if (p->val == o) z = p->name;
        switch (o) {
        case O_HOST: g_opt.zHost = optarg; break;
        case O_PORT: g_opt.port = (int)parse_num(z, optarg, 1, 65535); break;
        case O_PUBS: g_opt.nPubs = (int)parse_num(z, optarg, 0, 100000); break;
        case O_SUBS: g_opt.nSubs = (int)parse_num(z, optarg, 0, 100000); break;
        case O_TMODE:
            if (!strcmp(optarg, "shared") || !strcmp(optarg, "fanout"))
                g_opt.shared = true;
            else if (!strcmp(optarg, "distinct"))
                g_opt.shared = false;
            else
                lg_die("--topic-mode: distinct or shared");
            break;
        case O_QOS: g_opt.qos = (int)parse_num(z, optarg, 0, 1); break;
        case O_SIZE: g_opt.size = (int)parse_num(z, optarg, LG_PAYLOAD_MIN, 65536); break;
        case O_DUR: g_opt.duration = parse_num(z, optarg, 0.01, 86400); break;
        case O_WARM: g_opt.warmup = parse_num(z, optarg, 0, 86400); break;
        case O_RATE: g_opt.rate = parse_num(z, optarg, 0, 1e9); break;
        case O_INFL: g_opt.inflight = (int)parse_num(z, optarg, 1, 60000); break;
        case O_VER: g_opt.version = (int)parse_num(z, optarg, 4, 5); break;
        case O_THR: g_opt.nThreads = (int)parse_num(z, optarg, 1, 256); break;
        case O_IDLE: g_opt.nIdle = (int)parse_num(z, optarg, 1, 1000000); break;
        case O_IDLESUB: g_opt.idleSub = true; break;
        case O_HOLD: g_opt.hold = parse_num(z, optarg, 0, 86400); break;
        case O_DRAIN: g_opt.drain = parse_num(z, optarg, 0.01, 3600); break;
        case O_DRAINMAX: g_opt.drainMax = parse_num(z, optarg, 0.01, 3600); break;
        case O_PID: g_opt.brokerPid = (int)parse_num(z, optarg, 1, 1e9); break;
        case O_CTO: g_opt.connectTimeout = parse_num(z, optarg, 0.1, 86400); break;
        case O_OUTBUF: g_opt.outBuf = (int)parse_num(z, optarg, 1024, 1 << 28); break;
        case O_INBUF: g_opt.inBuf = (int)parse_num(z, optarg, 1024, 1 << 28); break;
        case O_COAL: g_opt.coalesceUs = (int)parse_num(z, optarg, 0, 100000); break;
        case O_JSON: g_opt.json = true; break;
        case 'h':
        case O_HELP: usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) lg_die("unexpected argument '%s' (see --help)", argv[optind]);
    if (!g_opt.nIdle && (g_opt.nPubs < 1 || g_opt.nSubs < 1))
        lg_die("traffic mode needs --pubs >= 1 and --subs >= 1");
    /* Buffers must hold at least a few whole packets. */
    size_t nPkt = (size_t)g_opt.size + 200;
    if ((size_t)g_opt.outBuf < 2 * nPkt) g_opt.outBuf = (int)(2 * nPkt);
    if ((size_t)g_opt.inBuf < 2 * nPkt) g_opt.inBuf = (int)(2 * nPkt);
}

static void resolve_host(void)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(g_opt.zHost, NULL, &hints, &res);
    if (rc) lg_die("cannot resolve %s: %s", g_opt.zHost, gai_strerror(rc));
    memcpy(&g_addr, res->ai_addr, sizeof g_addr);
    g_addr.sin_port = htons((uint16_t)g_opt.port);
    freeaddrinfo(res);
}

static void raise_nofile(size_t nNeed)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < nNeed + 32)
        lg_die("need %zu open files but the limit is %llu", nNeed + 32,
               (unsigned long long)rl.rlim_cur);
}

static void setup_conns(void)
{
    bool idle = g_opt.nIdle > 0;
    g_nConn = idle ? g_opt.nIdle : g_opt.nSubs + g_opt.nPubs;
    raise_nofile((size_t)g_nConn + 2 * (size_t)g_opt.nThreads);
    g_aConn = lg_calloc((size_t)g_nConn, sizeof *g_aConn);
    g_aTh = lg_calloc((size_t)g_opt.nThreads, sizeof *g_aTh);
    if (!idle) g_aSubsPerTopic = lg_calloc((size_t)g_opt.nPubs, sizeof(int));

    for (int t = 0; t < g_opt.nThreads; t++) {
        struct lg_thread *th = &g_aTh[t];
        th->id = t;
        th->tfd = -1;
        th->ep = epoll_create1(EPOLL_CLOEXEC);
        if (th->ep < 0) lg_die("epoll_create1: %s", strerror(errno));
        th->apConn = lg_calloc((size_t)g_nConn / (size_t)g_opt.nThreads + 1, sizeof(void *));
        th->apPub = lg_calloc((size_t)g_opt.nPubs / (size_t)g_opt.nThreads + 1, sizeof(void *));
        th->aHist = lg_calloc(H_BUCKETS, sizeof(uint64_t));
    }
    /* Subscribers come first so that they are set up (SUBACK received) before anything is
     * published; publishing starts only once every connection is ready anyway. */
    for (int k = 0; k < g_nConn; k++) {
        struct lg_conn *c = &g_aConn[k];
        struct lg_thread *th = &g_aTh[k % g_opt.nThreads];
        c->fd = -1;
        c->pTh = th;
        th->apConn[th->nConn++] = c;
        size_t nIn = (size_t)g_opt.inBuf, nOut = (size_t)g_opt.outBuf;
        if (idle) {
            c->role = LG_IDLE;
            c->idx = k;
            snprintf(c->zId, sizeof c->zId, "lg%s-i%d", g_zRun, k);
            snprintf(c->zTopic, sizeof c->zTopic, "idle/%s/%d", g_zRun, k);
            nIn = nOut = 512;
        } else if (k < g_opt.nSubs) {
            c->role = LG_SUB;
            c->idx = k;
            snprintf(c->zId, sizeof c->zId, "lg%s-s%d", g_zRun, k);
            if (g_opt.shared) {
                snprintf(c->zTopic, sizeof c->zTopic, "bench/%s/all", g_zRun);
                for (int i = 0; i < g_opt.nPubs; i++) g_aSubsPerTopic[i]++;
            } else {
                snprintf(c->zTopic, sizeof c->zTopic, "bench/%s/%d", g_zRun, k % g_opt.nPubs);
                g_aSubsPerTopic[k % g_opt.nPubs]++;
            }
            c->aStream = lg_calloc((size_t)g_opt.nPubs, sizeof *c->aStream);
        } else {
            c->role = LG_PUB;
            c->idx = k - g_opt.nSubs;
            snprintf(c->zId, sizeof c->zId, "lg%s-p%d", g_zRun, c->idx);
            if (g_opt.shared)
                snprintf(c->zTopic, sizeof c->zTopic, "bench/%s/all", g_zRun);
            else
                snprintf(c->zTopic, sizeof c->zTopic, "bench/%s/%d", g_zRun, c->idx);
            c->nextPid = 1;
            c->aPidUsed = lg_calloc(65536 / 64, 8);
            pub_build_template(c);
            th->apPub[th->nPub++] = c;
        }
        c->pIn = lg_calloc(1, nIn);
        c->nInCap = nIn;
        c->pOut = lg_calloc(1, nOut);
        c->nOutCap = nOut;
    }
    if (!idle && g_opt.rate > 0) {
        /* One tick per message up to 50k ticks/s; beyond that several messages per tick. */
        double period = 1e9 / g_opt.rate;
        if (period < 20000) period = 20000;
        for (int t = 0; t < g_opt.nThreads; t++) {
            struct lg_thread *th = &g_aTh[t];
            if (th->nPub == 0) continue;
            th->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
            if (th->tfd < 0) lg_die("timerfd_create: %s", strerror(errno));
            struct epoll_event e = {.events = EPOLLIN, .data.ptr = NULL};
            if (epoll_ctl(th->ep, EPOLL_CTL_ADD, th->tfd, &e) < 0)
                lg_die("epoll_ctl: %s", strerror(errno));
        }
    }
}

static void arm_timers(void)
{
    if (g_opt.rate <= 0) return;
    double period = 1e9 / g_opt.rate;
    if (period < 20000) period = 20000;
    uint64_t p = (uint64_t)period;
    struct itimerspec its = {
        .it_value = {.tv_sec = (time_t)(g_tStart / LG_NS), .tv_nsec = (long)(g_tStart % LG_NS)},
        .it_interval = {.tv_sec = (time_t)(p / LG_NS), .tv_nsec = (long)(p % LG_NS)},
    };
    for (int t = 0; t < g_opt.nThreads; t++)
        if (g_aTh[t].tfd >= 0 && timerfd_settime(g_aTh[t].tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
            lg_die("timerfd_settime: %s", strerror(errno));
}

/* Waits until every connection of every thread is ready; returns the setup time in s. */
static double wait_ready(uint64_t t0)
{
    for (;;) {
        int n = 0;
        for (int t = 0; t < g_opt.nThreads; t++)
            n += atomic_load_explicit(&g_aTh[t].aReady, memory_order_acquire);
        if (n == g_nConn) return (double)(lg_now() - t0) / 1e9;
        if (lg_now() - t0 > (uint64_t)(g_opt.connectTimeout * 1e9))
            lg_die("only %d of %d connections were set up within %g s", n, g_nConn,
                   g_opt.connectTimeout);
        usleep(2000);
    }
}

static void run_threads(void)
{
    for (int t = 0; t < g_opt.nThreads; t++)
        if (pthread_create(&g_aTh[t].tid, NULL, thread_main, &g_aTh[t]))
            lg_die("pthread_create failed");
}

static void join_threads(void)
{
    atomic_store_explicit(&g_phase, PH_DONE, memory_order_release);
    for (int t = 0; t < g_opt.nThreads; t++) pthread_join(g_aTh[t].tid, NULL);
}

static int run_idle(void)
{
    long rssBefore = proc_rss_kib(g_opt.brokerPid);
    uint64_t t0 = lg_now();
    run_threads();
    double setup = wait_ready(t0);
    if (!g_opt.json)
        fprintf(stderr, "loadgen: %d idle connections ready in %.2f s, holding %.1f s\n", g_nConn,
                setup, g_opt.hold);
    lg_sleep_until(lg_now() + (uint64_t)(g_opt.hold * 1e9));
    long rssAfter = proc_rss_kib(g_opt.brokerPid);
    join_threads();
    double perConn =
        rssBefore >= 0 && rssAfter >= 0 ? (double)(rssAfter - rssBefore) / g_nConn : -1;
    if (g_opt.json) {
        printf("{\"mode\":\"idle\",\"connections\":%d,\"subscribed\":%s,\"mqtt_version\":%d,"
               "\"setup_s\":%.3f,\"hold_s\":%.3f,\"broker_pid\":%d,\"rss_before_kib\":%ld,"
               "\"rss_after_kib\":%ld,\"rss_per_conn_kib\":%.3f}\n",
               g_nConn, g_opt.idleSub ? "true" : "false", g_opt.version, setup, g_opt.hold,
               g_opt.brokerPid, rssBefore, rssAfter, perConn);
    } else {
        printf("idle connections   %d%s, set up in %.2f s\n", g_nConn,
               g_opt.idleSub ? " (one subscription each)" : "", setup);
        if (g_opt.brokerPid)
            printf("broker RSS         %ld KiB -> %ld KiB = %.2f KiB per connection\n", rssBefore,
                   rssAfter, perConn);
    }
    return 0;
}

static int run_traffic(void)
{
    uint64_t t0 = lg_now();
    run_threads();
    double setup = wait_ready(t0);

    g_tStart = lg_now();
    g_tMeas = g_tStart + (uint64_t)(g_opt.warmup * 1e9);
    g_tStop = g_tMeas + (uint64_t)(g_opt.duration * 1e9);
    arm_timers();
    atomic_store_explicit(&g_phase, PH_RUN, memory_order_release);

    lg_sleep_until(g_tMeas);
    double cpuB0 = proc_cpu_s(g_opt.brokerPid), cpuS0 = self_cpu_s(), cpuM0 = machine_busy_s();
    lg_sleep_until(g_tStop);
    double cpuB1 = proc_cpu_s(g_opt.brokerPid), cpuS1 = self_cpu_s(), cpuM1 = machine_busy_s();

    /* Drain: every delivery that is still on its way is counted, until the expected count is
     * reached or nothing arrived for --drain seconds. */
    uint64_t tLast = lg_now(), lastDelivered = UINT64_MAX;
    for (;;) {
        uint64_t nDel = 0, nExp = 0, nInfl = 0;
        for (int t = 0; t < g_opt.nThreads; t++) {
            nDel += atomic_load_explicit(&g_aTh[t].aDelivered, memory_order_relaxed);
            nExp += atomic_load_explicit(&g_aTh[t].aExpected, memory_order_relaxed);
            nInfl += atomic_load_explicit(&g_aTh[t].aInflight, memory_order_relaxed);
        }
        uint64_t now = lg_now();
        if (nDel >= nExp && nInfl == 0 && now > g_tStop + 20000000) break;
        if (nDel != lastDelivered) {
            lastDelivered = nDel;
            tLast = now;
        }
        if (now - tLast > (uint64_t)(g_opt.drain * 1e9)) break;
        if (now - g_tStop > (uint64_t)(g_opt.drainMax * 1e9)) break;
        usleep(5000);
    }
    double drain = (double)(lg_now() - g_tStop) / 1e9;
    join_threads();

    uint64_t nPub = 0, nPubWin = 0, nExp = 0, nUnacked = 0;
    for (int k = 0; k < g_nConn; k++) {
        struct lg_conn *c = &g_aConn[k];
        if (c->role != LG_PUB) continue;
        nPub += c->nPublished;
        nPubWin += c->nPublishedWin;
        nExp += c->nPublished * (uint64_t)g_aSubsPerTopic[c->idx];
        nUnacked += c->nInflight;
    }
    uint64_t nDel = 0, nDelWin = 0, nDup = 0, nOoo = 0, nLat = 0, latMax = 0, nPubackErr = 0,
             nDown = 0;
    uint64_t *aHist = lg_calloc(H_BUCKETS, sizeof(uint64_t));
    for (int t = 0; t < g_opt.nThreads; t++) {
        struct lg_thread *th = &g_aTh[t];
        nDel += th->nDelivered;
        nDelWin += th->nDeliveredWin;
        nDup += th->nDup;
        nOoo += th->nOoo;
        nLat += th->nLat;
        nPubackErr += th->nPubackErr;
        nDown += th->nGrantDowngrade;
        if (th->latMax > latMax) latMax = th->latMax;
        for (unsigned i = 0; i < H_BUCKETS; i++) aHist[i] += th->aHist[i];
    }
    uint64_t nLost = nExp > nDel ? nExp - nDel : 0;
    double win = (double)(g_tStop - g_tMeas) / 1e9;
    double pubRate = (double)nPubWin / win, delRate = (double)nDelWin / win;
    double p50 = (double)hist_percentile(aHist, nLat, 0.50) / 1e3;
    double p99 = (double)hist_percentile(aHist, nLat, 0.99) / 1e3;
    double p999 = (double)hist_percentile(aHist, nLat, 0.999) / 1e3;
    double lmax = (double)latMax / 1e3;
    /* A bucket's upper bound can exceed the largest sample in it. */
    if (p50 > lmax) p50 = lmax;
    if (p99 > lmax) p99 = lmax;
    if (p999 > lmax) p999 = lmax;
    double cpuB = cpuB0 >= 0 && cpuB1 >= 0 ? cpuB1 - cpuB0 : -1;
    double cpuPerM = cpuB >= 0 && nDelWin > 0 ? cpuB / ((double)nDelWin / 1e6) : -1;
    double cpuSelf = cpuS1 - cpuS0;
    double cpuMachine = cpuM0 >= 0 && cpuM1 >= 0 ? cpuM1 - cpuM0 : -1;

    if (nDown)
        fprintf(stderr, "loadgen: warning: %" PRIu64 " subscriptions granted a lower QoS\n", nDown);
    if (g_opt.json) {
        printf("{\"mode\":\"traffic\",\"mqtt_version\":%d,\"pubs\":%d,\"subs\":%d,"
               "\"topic_mode\":\"%s\",\"qos\":%d,\"size\":%d,\"rate\":%.0f,\"inflight\":%d,"
               "\"threads\":%d,\"warmup_s\":%.3f,\"window_s\":%.3f,\"setup_s\":%.3f,"
               "\"drain_s\":%.3f,\"published\":%" PRIu64 ",\"published_window\":%" PRIu64
               ",\"expected\":%" PRIu64 ",\"delivered\":%" PRIu64 ",\"delivered_window\":%" PRIu64
               ",\"lost\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"out_of_order\":%" PRIu64
               ",\"unacked\":%" PRIu64 ",\"puback_errors\":%" PRIu64 ",\"qos_downgrades\":%" PRIu64
               ",\"pub_rate\":%.1f,\"deliver_rate\":%.1f,\"lat_samples\":%" PRIu64
               ",\"lat_p50_us\":%.1f,\"lat_p99_us\":%.1f,\"lat_p999_us\":%.1f,\"lat_max_us\":%.1f,"
               "\"broker_pid\":%d,\"broker_cpu_s\":%.3f,\"broker_cpu_s_per_m\":%.4f,"
               "\"loadgen_cpu_s\":%.3f,\"machine_cpu_s\":%.3f,\"coalesce_us\":%d}\n",
               g_opt.version, g_opt.nPubs, g_opt.nSubs, g_opt.shared ? "shared" : "distinct",
               g_opt.qos, g_opt.size, g_opt.rate, g_opt.inflight, g_opt.nThreads, g_opt.warmup, win,
               setup, drain, nPub, nPubWin, nExp, nDel, nDelWin, nLost, nDup, nOoo, nUnacked,
               nPubackErr, nDown, pubRate, delRate, nLat, p50, p99, p999, lmax, g_opt.brokerPid,
               cpuB, cpuPerM, cpuSelf, cpuMachine, g_opt.coalesceUs);
    } else {
        printf("setup              %d connections in %.2f s\n", g_nConn, setup);
        printf("window             %.2f s (after %.2f s warm-up), drain %.2f s\n", win,
               g_opt.warmup, drain);
        printf("published          %" PRIu64 " (%.0f msgs/s in the window)\n", nPub, pubRate);
        printf("delivered          %" PRIu64 " of %" PRIu64
               " expected (%.0f msgs/s in the window)\n",
               nDel, nExp, delRate);
        printf("lost               %" PRIu64 "\n", nLost);
        printf("duplicates         %" PRIu64 "\n", nDup);
        printf("out of order       %" PRIu64 "\n", nOoo);
        if (g_opt.qos) printf("unacked at end     %" PRIu64 "\n", nUnacked);
        printf("latency us         p50 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  (%" PRIu64
               " samples)\n",
               p50, p99, p999, lmax, nLat);
        if (g_opt.brokerPid)
            printf("broker CPU         %.2f s in the window = %.3f CPU-s per million deliveries\n",
                   cpuB, cpuPerM);
        printf("loadgen CPU        %.2f s in the window (whole machine busy %.2f s of %.2f)\n",
               cpuSelf, cpuMachine, win * (double)sysconf(_SC_NPROCESSORS_ONLN));
    }
    return 0;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_zRun, sizeof g_zRun, "%08x",
             (unsigned)(lg_now() ^ ((uint64_t)getpid() << 16) ^ (uint64_t)time(NULL)));
    resolve_host();
    setup_conns();
    int rc = g_opt.nIdle ? run_idle() : run_traffic();
    fflush(stdout);
    return rc;
}
