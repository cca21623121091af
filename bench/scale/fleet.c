/* fleet.c - one slice of a device fleet for bench/scale/run: N MQTT 3.1.1 connections, each a
 * registered device (client id = user name = its id, password = its secret), bound to one
 * 127.0.0.x source address, each publishing one JSON telemetry message per second at QoS 1
 * (the N devices spread evenly over the second), reconnecting by itself when the broker goes
 * away. Or, with --probe, one device that subscribes to its own topic and measures the round
 * trip of a message every 100 ms.
 *
 * Standalone on purpose (no dependency on src/; only ../common/bench_common.h, shared with
 * bench/mqtt/loadgen.c), single-threaded, epoll. The orchestrator
 * (bench/scale/run) drives it with signals and reads JSON lines from its stdout:
 *   {"ev":"ready",...}       every connection has its CONNACK (and, probe, its SUBACK)
 *   SIGUSR1                  start publishing for --seconds, then wait for the PUBACKs
 *   {"ev":"published",...}   sent, acknowledged, PUBACK latency histogram (or probe round trips)
 *   {"ev":"down",...}        the first connection lost after "ready"
 *   {"ev":"allup",...}       every connection is back (CONNACK 0) after a loss
 *   SIGTERM                  DISCONNECT everything, print {"ev":"final",...}, exit
 * Times in events are CLOCK_REALTIME seconds, so that the orchestrator can compare them with
 * its own clock. Build: gcc -O2 -o fleet fleet.c; `fleet --help` lists the flags.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../common/bench_common.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define NS        1000000000ull
#define MS        1000000ull
#define IN_CAP    1024 /* CONNACK, SUBACK, PUBACK, PINGRESP; the probe's echoes are ~60 B */
#define OUT_CAP   2048 /* what a full socket leaves pending; at 1 msg/s it stays empty */
#define RING      16   /* send times of the last PUBLISHes, for the PUBACK latency */
#define KEEPALIVE 60

/* ---- options ------------------------------------------------------------------------------ */

static struct {
    const char *zHost, *zBind, *zCreds;
    int port, first, count;
    double seconds, jitter, retryMin, retryMax, drain, connectTimeout;
    int maxPending, qos;
    bool probe;
    double probeInterval;
    double phase; /* offset of this slice's schedule, as a fraction of one device's slot */
} g_opt = {
    .zHost = "127.0.0.1",
    .port = 1883,
    .count = 1,
    .seconds = 300,
    .jitter = 1.0,
    .retryMin = 0.25,
    .retryMax = 1.0,
    .drain = 30,
    .connectTimeout = 300,
    .maxPending = 1024,
    .qos = 1,
    .probeInterval = 0.1,
};

/* ---- helpers -------------------------------------------------------------------------------- */

static uint64_t now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static double now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *zFmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *zFmt, ...)
{
    va_list ap;
    va_start(ap, zFmt);
    fputs("fleet: error: ", stderr);
    vfprintf(stderr, zFmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static uint64_t rnd_state = 88172645463325252ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

/* A uniform delay in [lo, hi] seconds, in ns. */
static uint64_t rnd_delay(double lo, double hi)
{
    double f = (double)(rnd() % 1000001) / 1e6;
    return (uint64_t)((lo + (hi - lo) * f) * 1e9);
}

/* ---- latency histogram (the buckets: ../common/bench_common.h) ------------------------- */

static uint64_t g_hist[H_BUCKETS];

/* Prints the histogram (values in µs) as [[upper_bound_us, count], ...]. */
static void hist_print(void)
{
    printf("[");
    bool first = true;
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        if (!g_hist[i]) continue;
        printf("%s[%" PRIu64 ",%" PRIu64 "]", first ? "" : ",", hist_value(i), g_hist[i]);
        first = false;
    }
    printf("]");
}

/* ---- connections ------------------------------------------------------------------------ */

enum cstate { C_DOWN, C_CONNECTING, C_CONNACK, C_SUBACK, C_UP };

struct fconn {
    int fd;
    enum cstate state;
    uint32_t events;
    char *zId, *zSecret;
    uint64_t tRetry;  /* C_DOWN: when to try again */
    uint64_t tLastTx; /* for PINGREQ while not publishing */
    uint16_t nextPid;
    uint16_t ringPid[RING];
    uint64_t ringT[RING];
    uint32_t nInflight;
    uint64_t nSeq;
    uint8_t in[IN_CAP];
    size_t nIn;
    uint8_t *pOut; /* allocated on the first short write */
    size_t nOut;
};

static struct fconn *g_aConn;
static int g_nConn;
static int g_ep;
static struct sockaddr_in g_dst, g_src;
static bool g_bind;

/* Counters reported at the end. */
static uint64_t g_connack[256];
static uint64_t g_nConnectErr, g_nRefused, g_nClosedEarly, g_nLost, g_nConnects, g_nSubFail;
static uint64_t g_nSent, g_nAcked, g_nSkippedDown, g_nSkippedFull, g_nEchoes;
static int g_nUp, g_nPending, g_nDown;
static bool g_everReady, g_anyDown;

static volatile sig_atomic_t g_sigRun, g_sigStop;
static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        g_sigRun = 1;
    else
        g_sigStop = 1;
}

static void set_events(struct fconn *c, uint32_t ev)
{
    if (ev == c->events) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &e) < 0) die("epoll_ctl: %s", strerror(errno));
    c->events = ev;
}

static void conn_down(struct fconn *c, uint64_t now, bool failedAttempt);

/* Writes p[0..n) after whatever is pending; keeps what the socket does not take. Returns
 * false if the connection broke or the pending buffer is full (nothing queued then). */
static bool conn_write(struct fconn *c, const uint8_t *p, size_t n, uint64_t now)
{
    if (c->nOut == 0) {
        ssize_t w = write(c->fd, p, n);
        if (w == (ssize_t)n) {
            c->tLastTx = now;
            return true;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_down(c, now, c->state != C_UP);
            return false;
        }
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        }
    }
    if (c->nOut + n > OUT_CAP) return false;
    if (!c->pOut && !(c->pOut = malloc(OUT_CAP))) die("out of memory");
    memcpy(c->pOut + c->nOut, p, n);
    c->nOut += n;
    c->tLastTx = now;
    set_events(c, EPOLLIN | EPOLLOUT);
    return true;
}

static void conn_flush(struct fconn *c, uint64_t now)
{
    if (!c->nOut) return;
    ssize_t w = write(c->fd, c->pOut, c->nOut);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) conn_down(c, now, false);
        return;
    }
    memmove(c->pOut, c->pOut + w, c->nOut - (size_t)w);
    c->nOut -= (size_t)w;
    if (!c->nOut) set_events(c, EPOLLIN);
}

static void conn_start(struct fconn *c, uint64_t now)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (g_bind) {
        /* The port is chosen at connect() from the whole 4-tuple, not reserved by bind(). */
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (struct sockaddr *)&g_src, sizeof g_src) < 0)
            die("bind %s: %s", g_opt.zBind, strerror(errno));
    }
    g_nPending++;
    g_nDown--;
    g_nConnects++;
    c->nIn = c->nOut = 0;
    c->nInflight = 0;
    c->state = C_CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &e) < 0) die("epoll_ctl: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&g_dst, sizeof g_dst) < 0 && errno != EINPROGRESS) {
        if (errno == ECONNREFUSED)
            g_nRefused++;
        else
            g_nConnectErr++;
        conn_down(c, now, true);
    }
}

/* Closes c and schedules its next attempt: after a loss of an established connection within
 * --jitter seconds (a fleet reconnecting after a restart), after a failed attempt within
 * [--retry-min, --retry-max]. */
static void conn_down(struct fconn *c, uint64_t now, bool failedAttempt)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    if (c->state == C_UP) {
        g_nUp--;
        g_nLost++;
        if (g_everReady && !g_anyDown) {
            g_anyDown = true;
            printf("{\"ev\":\"down\",\"t\":%.6f,\"up\":%d}\n", now_real(), g_nUp);
        }
    } else if (c->state != C_DOWN) {
        g_nPending--;
    }
    if (c->state != C_DOWN) g_nDown++;
    c->state = C_DOWN;
    c->nOut = c->nIn = 0;
    c->tRetry = now + (failedAttempt ? rnd_delay(g_opt.retryMin, g_opt.retryMax)
                                     : rnd_delay(0, g_opt.jitter));
}

static void send_connect(struct fconn *c, uint64_t now)
{
    uint8_t b[512], *p = b;
    size_t nId = strlen(c->zId), nPw = strlen(c->zSecret);
    size_t rl = 10 + 2 + nId + 2 + nId + 2 + nPw;
    *p++ = 0x10;
    p += put_varint(p, rl);
    memcpy(p, "\0\4MQTT\4", 7);
    p += 7;
    *p++ = 0xc2; /* user name, password, clean session */
    *p++ = 0;
    *p++ = KEEPALIVE;
    p += put_str(p, c->zId, nId);
    p += put_str(p, c->zId, nId);
    p += put_str(p, c->zSecret, nPw);
    conn_write(c, b, (size_t)(p - b), now);
}

static void send_subscribe(struct fconn *c, uint64_t now)
{
    char zTopic[160];
    int n = snprintf(zTopic, sizeof zTopic, "devices/%s/echo", c->zId);
    uint8_t b[200], *p = b;
    *p++ = 0x82;
    p += put_varint(p, (size_t)(2 + 2 + n + 1));
    *p++ = 0;
    *p++ = 1;
    p += put_str(p, zTopic, (size_t)n);
    *p++ = 1;
    conn_write(c, b, (size_t)(p - b), now);
}

static uint16_t next_pid(struct fconn *c)
{
    if (++c->nextPid == 0) c->nextPid = 1;
    return c->nextPid;
}

/* One PUBLISH: a telemetry reading, or the probe's stamped echo. */
static void send_publish(struct fconn *c, uint64_t now)
{
    char zTopic[160], zBody[200];
    int nTopic, nBody;
    if (g_opt.probe) {
        nTopic = snprintf(zTopic, sizeof zTopic, "devices/%s/echo", c->zId);
        nBody = snprintf(zBody, sizeof zBody, "%" PRIu64, now);
    } else {
        uint64_t k = c->nSeq + (uint64_t)(c - g_aConn);
        nTopic = snprintf(zTopic, sizeof zTopic, "devices/%s/telemetry", c->zId);
        nBody = snprintf(zBody, sizeof zBody,
                         "{\"ts\":%.0f,\"temperature\":%.2f,\"humidity\":%.2f,"
                         "\"pressure\":%.2f,\"battery\":%.2f}",
                         now_real() * 1000.0, 20 + (double)(k % 500) / 100,
                         40 + (double)(k % 300) / 100, 1000 + (double)(k % 700) / 100,
                         90 - (double)(k % 900) / 100);
    }
    uint8_t b[512], *p = b;
    size_t rl = 2 + (size_t)nTopic + (g_opt.qos ? 2 : 0) + (size_t)nBody;
    *p++ = (uint8_t)(0x30 | (g_opt.qos << 1));
    p += put_varint(p, rl);
    p += put_str(p, zTopic, (size_t)nTopic);
    uint16_t pid = 0;
    if (g_opt.qos) {
        pid = next_pid(c);
        *p++ = (uint8_t)(pid >> 8);
        *p++ = (uint8_t)pid;
    }
    memcpy(p, zBody, (size_t)nBody);
    p += nBody;
    if (!conn_write(c, b, (size_t)(p - b), now)) {
        if (c->state == C_UP)
            g_nSkippedFull++;
        else
            g_nSkippedDown++;
        return;
    }
    c->nSeq++;
    g_nSent++;
    if (g_opt.qos) {
        c->ringPid[pid % RING] = pid;
        c->ringT[pid % RING] = now;
        c->nInflight++;
    } else {
        g_nAcked++;
    }
}

static void conn_up(struct fconn *c, uint64_t now)
{
    c->state = C_UP;
    g_nPending--;
    g_nUp++;
    if (g_anyDown && g_nUp == g_nConn) {
        g_anyDown = false;
        printf("{\"ev\":\"allup\",\"t\":%.6f}\n", now_real());
    }
    (void)now;
}

static void on_packet(struct fconn *c, const uint8_t *pBody, uint8_t type, size_t rl, uint64_t now)
{
    switch (type >> 4) {
    case 2: /* CONNACK */
        if (c->state != C_CONNACK || rl < 2) die("%s: unexpected CONNACK", c->zId);
        g_connack[pBody[1]]++;
        if (pBody[1] != 0) {
            c->state = C_CONNACK;
            conn_down(c, now, true);
            return;
        }
        if (g_opt.probe) {
            send_subscribe(c, now);
            c->state = C_SUBACK;
        } else {
            conn_up(c, now);
        }
        break;
    case 9: /* SUBACK */
        if (c->state != C_SUBACK || rl < 3) die("%s: unexpected SUBACK", c->zId);
        if (pBody[2] >= 0x80) g_nSubFail++;
        conn_up(c, now);
        break;
    case 4: { /* PUBACK */
        if (rl < 2) die("%s: short PUBACK", c->zId);
        uint16_t pid = (uint16_t)((pBody[0] << 8) | pBody[1]);
        if (c->nInflight) c->nInflight--;
        g_nAcked++;
        if (!g_opt.probe && c->ringPid[pid % RING] == pid && c->ringT[pid % RING]) {
            uint64_t lat = (now - c->ringT[pid % RING]) / 1000;
            g_hist[hist_index(lat)]++;
            c->ringT[pid % RING] = 0;
        }
        break;
    }
    case 3: { /* PUBLISH: the probe's echo */
        int qos = (type >> 1) & 3;
        if (rl < 2) die("%s: short PUBLISH", c->zId);
        size_t i = 2 + (((size_t)pBody[0] << 8) | pBody[1]);
        uint16_t pid = 0;
        if (qos) {
            if (i + 2 > rl) die("%s: short PUBLISH", c->zId);
            pid = (uint16_t)((pBody[i] << 8) | pBody[i + 1]);
            i += 2;
        }
        if (i > rl) die("%s: malformed PUBLISH", c->zId);
        char zNum[32];
        size_t n = rl - i < sizeof zNum - 1 ? rl - i : sizeof zNum - 1;
        memcpy(zNum, pBody + i, n);
        zNum[n] = 0;
        uint64_t t = strtoull(zNum, NULL, 10);
        if (t && t <= now) {
            g_hist[hist_index((now - t) / 1000)]++;
            g_nEchoes++;
        }
        if (qos == 1) {
            uint8_t ack[4] = {0x40, 2, (uint8_t)(pid >> 8), (uint8_t)pid};
            conn_write(c, ack, 4, now);
        }
        break;
    }
    case 13: /* PINGRESP */ break;
    default: die("%s: unexpected packet type %d", c->zId, type >> 4);
    }
}

static void conn_read(struct fconn *c, uint64_t now)
{
    for (;;) {
        ssize_t n = read(c->fd, c->in + c->nIn, IN_CAP - c->nIn);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
        }
        if (n <= 0) {
            if (c->state == C_CONNACK) g_nClosedEarly++;
            conn_down(c, now, c->state != C_UP);
            return;
        }
        c->nIn += (size_t)n;
        size_t i = 0;
        while (c->nIn - i >= 2) {
            size_t rl = 0;
            int nLen = get_varint(c->in + i + 1, c->nIn - i - 1, &rl);
            if (nLen < 0) die("%s: malformed remaining length", c->zId);
            if (nLen == 0) break;
            size_t k = (size_t)nLen;
            if (1 + k + rl > IN_CAP) die("%s: packet of %zu bytes", c->zId, rl);
            if (c->nIn - i < 1 + k + rl) break;
            on_packet(c, c->in + i + 1 + k, c->in[i], rl, now);
            if (c->fd < 0) return;
            i += 1 + k + rl;
        }
        memmove(c->in, c->in + i, c->nIn - i);
        c->nIn -= i;
        if ((size_t)n < IN_CAP) return;
    }
}

static void conn_event(struct fconn *c, uint32_t ev, uint64_t now)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            if (err == ECONNREFUSED)
                g_nRefused++;
            else
                g_nConnectErr++;
            conn_down(c, now, true);
            return;
        }
        c->state = C_CONNACK;
        set_events(c, EPOLLIN);
        send_connect(c, now);
        return;
    }
    if (ev & EPOLLOUT) conn_flush(c, now);
    if (c->fd >= 0 && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) conn_read(c, now);
}

/* ---- setup and the main loop ------------------------------------------------------------- */

static void load_creds(void)
{
    FILE *f = fopen(g_opt.zCreds, "r");
    if (!f) die("%s: %s", g_opt.zCreds, strerror(errno));
    g_aConn = calloc((size_t)g_opt.count, sizeof *g_aConn);
    if (!g_aConn) die("out of memory");
    char zLine[512];
    int line = 0;
    while (g_nConn < g_opt.count && fgets(zLine, sizeof zLine, f)) {
        if (line++ < g_opt.first) continue;
        char zId[200], zSecret[200];
        if (sscanf(zLine, "%199s %199s", zId, zSecret) != 2)
            die("%s: bad line %d", g_opt.zCreds, line);
        struct fconn *c = &g_aConn[g_nConn++];
        c->fd = -1;
        c->zId = strdup(zId);
        c->zSecret = strdup(zSecret);
    }
    fclose(f);
    if (g_nConn < g_opt.count)
        die("%s holds only %d devices from line %d", g_opt.zCreds, g_nConn, g_opt.first + 1);
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: fleet --creds FILE [--first K] [--count N] [options]\n"
        "N devices (lines K+1..K+N of FILE: \"id secret\") connect to the broker, report\n"
        "ready, publish one JSON telemetry message per second each on SIGUSR1 for --seconds,\n"
        "reconnect whenever the broker goes away, and stop on SIGTERM. JSON lines on stdout.\n"
        "  --host ADDR --port N     broker (127.0.0.1:1883)\n"
        "  --bind ADDR              source address of every connection (e.g. 127.0.0.2)\n"
        "  --qos 0|1                (1)\n"
        "  --seconds S              publishing time after SIGUSR1 (300)\n"
        "  --phase F                offset of this slice's schedule, fraction of a slot (0)\n"
        "  --drain S                wait at most S s for the last PUBACKs (30)\n"
        "  --jitter S               reconnect within [0, S] s after losing a connection (1)\n"
        "  --retry-min S --retry-max S  retry a failed attempt after [min, max] s (0.25, 1)\n"
        "  --max-pending N          handshakes in flight at once (1024)\n"
        "  --connect-timeout S      give up if not all ready within S s (300)\n"
        "  --probe                  one device subscribed to devices/ID/echo that publishes\n"
        "                           there every --probe-interval s (0.1); reports round trips\n");
}

static void parse_args(int argc, char **argv)
{
    static const struct option aOpt[] = {
        {"host", 1, 0, 'H'},
        {"port", 1, 0, 'p'},
        {"bind", 1, 0, 'b'},
        {"creds", 1, 0, 'c'},
        {"first", 1, 0, 'f'},
        {"count", 1, 0, 'n'},
        {"seconds", 1, 0, 's'},
        {"jitter", 1, 0, 'j'},
        {"retry-min", 1, 0, 'r'},
        {"retry-max", 1, 0, 'R'},
        {"drain", 1, 0, 'd'},
        {"max-pending", 1, 0, 'm'},
        {"qos", 1, 0, 'q'},
        {"probe", 0, 0, 'P'},
        {"probe-interval", 1, 0, 'i'},
        {"phase", 1, 0, 'F'},
        {"connect-timeout", 1, 0, 't'},
        {"help", 0, 0, 'h'},
        {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "h", aOpt, NULL)) != -1) {
        switch (o) {
        case 'H': g_opt.zHost = optarg; break;
        case 'p': g_opt.port = atoi(optarg); break;
        case 'b': g_opt.zBind = optarg; break;
        case 'c': g_opt.zCreds = optarg; break;
        case 'f': g_opt.first = atoi(optarg); break;
        case 'n': g_opt.count = atoi(optarg); break;
        case 's': g_opt.seconds = atof(optarg); break;
        case 'j': g_opt.jitter = atof(optarg); break;
        case 'r': g_opt.retryMin = atof(optarg); break;
        case 'R': g_opt.retryMax = atof(optarg); break;
        case 'd': g_opt.drain = atof(optarg); break;
        case 'm': g_opt.maxPending = atoi(optarg); break;
        case 'q': g_opt.qos = atoi(optarg) ? 1 : 0; break;
        case 'P': g_opt.probe = true; break;
        case 'i': g_opt.probeInterval = atof(optarg); break;
        case 'F': g_opt.phase = atof(optarg); break;
        case 't': g_opt.connectTimeout = atof(optarg); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (!g_opt.zCreds) die("--creds is required (see --help)");
    if (g_opt.count < 1 || g_opt.first < 0 || g_opt.seconds <= 0 || g_opt.maxPending < 1)
        die("bad --count, --first, --seconds or --max-pending");
    if (g_opt.probe) g_opt.count = 1;
    if (inet_pton(AF_INET, g_opt.zHost, &g_dst.sin_addr) != 1) die("--host: an IPv4 address");
    g_dst.sin_family = AF_INET;
    g_dst.sin_port = htons((uint16_t)g_opt.port);
    if (g_opt.zBind) {
        if (inet_pton(AF_INET, g_opt.zBind, &g_src.sin_addr) != 1) die("--bind: an IPv4 address");
        g_src.sin_family = AF_INET;
        g_bind = true;
    }
}

static void print_final(void)
{
    printf("{\"ev\":\"final\",\"t\":%.6f,\"devices\":%d,\"up\":%d,\"connects\":%" PRIu64
           ",\"connect_refused\":%" PRIu64 ",\"connect_errors\":%" PRIu64
           ",\"closed_before_connack\":%" PRIu64 ",\"lost\":%" PRIu64
           ",\"suback_failures\":%" PRIu64 ",\"connack\":{",
           now_real(), g_nConn, g_nUp, g_nConnects, g_nRefused, g_nConnectErr, g_nClosedEarly,
           g_nLost, g_nSubFail);
    bool first = true;
    for (int i = 0; i < 256; i++) {
        if (!g_connack[i]) continue;
        printf("%s\"%d\":%" PRIu64, first ? "" : ",", i, g_connack[i]);
        first = false;
    }
    printf("}}\n");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    rnd_state ^= (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ now_mono();
    load_creds();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)g_nConn + 16)
        die("%d connections need more than the open files limit %llu", g_nConn,
            (unsigned long long)rl.rlim_cur);
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) die("epoll_create1: %s", strerror(errno));

    uint64_t t0 = now_mono(), tRun = 0, tEnd = 0, nDue = 0, nTotal = 0, tNextScan = 0;
    uint64_t slot = 0; /* ns between two consecutive messages of this slice */
    bool running = false, published = false;
    int iScan = 0;
    struct epoll_event aEv[512];
    for (int i = 0; i < g_nConn; i++) g_aConn[i].tRetry = t0;
    g_nDown = g_nConn;

    while (!g_sigStop) {
        uint64_t now = now_mono();
        /* Connections to (re)open: a bounded number of handshakes at a time. */
        if (g_nDown > 0 && now >= tNextScan) {
            for (int k = 0; k < g_nConn && g_nPending < g_opt.maxPending; k++) {
                struct fconn *c = &g_aConn[iScan];
                iScan = (iScan + 1) % g_nConn;
                if (c->state == C_DOWN && now >= c->tRetry) conn_start(c, now);
            }
            tNextScan = now + 5 * MS;
        }
        if (!g_everReady && g_nUp == g_nConn) {
            g_everReady = true;
            printf("{\"ev\":\"ready\",\"t\":%.6f,\"devices\":%d,\"setup_s\":%.3f}\n", now_real(),
                   g_nConn, (double)(now - t0) / 1e9);
        }
        if (!g_everReady && now - t0 > (uint64_t)(g_opt.connectTimeout * 1e9))
            die("only %d of %d connections up after %.0f s", g_nUp, g_nConn, g_opt.connectTimeout);

        if (g_sigRun && !running && !published) {
            running = true;
            g_sigRun = 0;
            if (g_opt.probe) {
                slot = (uint64_t)(g_opt.probeInterval * 1e9);
                nTotal = (uint64_t)(g_opt.seconds / g_opt.probeInterval);
            } else {
                slot = NS / (uint64_t)g_nConn;
                nTotal = (uint64_t)(g_opt.seconds + 0.5) * (uint64_t)g_nConn;
            }
            tRun = now + (uint64_t)(g_opt.phase * (double)slot);
        }
        if (running) {
            /* Message m goes to device m mod N at tRun + m * slot: every device once a
             * second, the slice's devices spread evenly over the second. */
            if (now >= tRun) {
                uint64_t due = (now - tRun) / slot + 1;
                if (due > nTotal) due = nTotal;
                for (; nDue < due; nDue++) {
                    struct fconn *c = &g_aConn[nDue % (uint64_t)g_nConn];
                    if (c->state == C_UP)
                        send_publish(c, now);
                    else
                        g_nSkippedDown++;
                }
            }
            if (nDue == nTotal) {
                running = false;
                tEnd = now;
            }
        } else if (tEnd && !published) {
            uint64_t nInfl = 0;
            for (int i = 0; i < g_nConn; i++) nInfl += g_aConn[i].nInflight;
            bool echoesIn = !g_opt.probe || g_nEchoes >= g_nSent || now - tEnd > 2 * NS;
            if ((nInfl == 0 && echoesIn) || now - tEnd > (uint64_t)(g_opt.drain * 1e9)) {
                published = true;
                printf(
                    "{\"ev\":\"published\",\"t\":%.6f,\"devices\":%d,\"probe\":%s,\"sent\":%" PRIu64
                    ",\"acked\":%" PRIu64 ",\"unacked\":%" PRIu64 ",\"skipped_down\":%" PRIu64
                    ",\"skipped_full\":%" PRIu64 ",\"echoes\":%" PRIu64
                    ",\"publish_s\":%.3f,\"drain_s\":%.3f,\"hist_us\":",
                    now_real(), g_nConn, g_opt.probe ? "true" : "false", g_nSent, g_nAcked, nInfl,
                    g_nSkippedDown, g_nSkippedFull, g_nEchoes, (double)(tEnd - tRun) / 1e9,
                    (double)(now - tEnd) / 1e9);
                hist_print();
                printf("}\n");
            }
        } else if (g_everReady) {
            /* Holding: keep the sessions alive (PINGREQ at half the keep alive). */
            static int iPing;
            for (int k = 0; k < 64; k++) {
                struct fconn *c = &g_aConn[iPing];
                iPing = (iPing + 1) % g_nConn;
                if (c->state == C_UP && now - c->tLastTx > (uint64_t)KEEPALIVE * NS / 2) {
                    static const uint8_t ping[2] = {0xc0, 0};
                    conn_write(c, ping, 2, now);
                }
            }
        }

        int timeout = running ? 1 : 5;
        int n = epoll_wait(g_ep, aEv, 512, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait: %s", strerror(errno));
        }
        now = now_mono();
        for (int i = 0; i < n; i++) conn_event(aEv[i].data.ptr, aEv[i].events, now);
    }

    static const uint8_t disc[2] = {0xe0, 0};
    for (int i = 0; i < g_nConn; i++) {
        struct fconn *c = &g_aConn[i];
        if (c->fd < 0) continue;
        if (c->state == C_UP && write(c->fd, disc, 2) < 0) { /* best effort */
        }
        close(c->fd);
    }
    print_final();
    return 0;
}
