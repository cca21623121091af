/* connect.c - MQTT CONNECT-rate load generator for bench/registry/run: many concurrent
 * clients, each authenticating as a device (username = device id, password = its secret),
 * waiting for CONNACK, sending DISCONNECT and waiting for the broker to close, then starting
 * over with its next device, as fast as the broker lets it.
 *
 * Standalone on purpose (no dependency on src/), like bench/mqtt/loadgen.c, so that it can
 * measure mosquitto as well as thinghz. Build: gcc -O2 -pthread -o connect connect.c
 *
 * Each worker thread owns an epoll set and a slice of the slots. Slot i uses devices
 * i, i + C, i + 2C, ... (C = concurrent connections), so no two live connections ever share a
 * client id (that would be a session takeover, a different cost). Credentials come from a
 * file of "ID SECRET" lines. A CONNACK with a non-zero return code is an error: the run stops
 * and exits 1, since a refused login would otherwise look like a very fast one. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CRED 256 /* bytes of an id or a secret */

typedef struct cred {
    char zId[MAX_CRED], zSecret[MAX_CRED];
} cred;

enum { S_CONNECTING, S_CONNACK, S_CLOSING };

typedef struct slot {
    int fd, state, idx; /* idx: this slot's number among all slots */
    long next;          /* the next device for this slot: idx + k*C */
    uint64_t t0;        /* CONNECT sent (ns) */
    unsigned char in[64];
    int nIn;
} slot;

typedef struct worker {
    pthread_t th;
    int ep, first, n; /* slots [first, first+n) */
    uint64_t done, lat_sum_ns, lat_max_ns;
    uint64_t *lat; /* CONNECT -> CONNACK samples in the window (ns) */
    size_t nLat, capLat;
} worker;

static struct {
    const char *zHost, *zCreds;
    int port, conns, threads;
    double dur, warm;
} g_opt = {"127.0.0.1", NULL, 1883, 50, 1, 5, 1};

static cred *g_creds;
static long g_nCreds;
static slot *g_slots;
static struct sockaddr_in g_addr;
static atomic_int g_phase; /* 0 warm-up, 1 measuring, 2 stop */
static atomic_int g_failed;
static char g_zErr[512];
static pthread_mutex_t g_errLock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fail(const char *zMsg, const char *zId)
{
    pthread_mutex_lock(&g_errLock);
    if (!atomic_load(&g_failed))
        snprintf(g_zErr, sizeof g_zErr, "%s (device %s)", zMsg, zId ? zId : "-");
    atomic_store(&g_failed, 1);
    pthread_mutex_unlock(&g_errLock);
}

static size_t put_str(unsigned char *p, const char *s)
{
    size_t n = strlen(s);
    p[0] = (unsigned char)(n >> 8);
    p[1] = (unsigned char)n;
    memcpy(p + 2, s, n);
    return n + 2;
}

/* MQTT 3.1.1 CONNECT, clean session, keep alive 60, client id = username = device id. */
static size_t build_connect(unsigned char *buf, const cred *c)
{
    unsigned char body[4 * MAX_CRED + 32];
    size_t n = 0;
    n += put_str(body + n, "MQTT");
    body[n++] = 4;    /* protocol level 3.1.1 */
    body[n++] = 0xC2; /* username, password, clean session */
    body[n++] = 0;
    body[n++] = 60;
    n += put_str(body + n, c->zId);
    n += put_str(body + n, c->zId);
    n += put_str(body + n, c->zSecret);
    size_t h = 0;
    buf[h++] = 0x10;
    size_t rl = n;
    do {
        unsigned char b = rl & 0x7F;
        rl >>= 7;
        buf[h++] = b | (rl ? 0x80 : 0);
    } while (rl);
    memcpy(buf + h, body, n);
    return h + n;
}

static void slot_start(worker *w, slot *s)
{
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        fail("socket failed", NULL);
        return;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->state = S_CONNECTING;
    s->nIn = 0;
    if (connect(s->fd, (struct sockaddr *)&g_addr, sizeof g_addr) < 0 && errno != EINPROGRESS) {
        fail(strerror(errno), NULL);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.ptr = s};
    epoll_ctl(w->ep, EPOLL_CTL_ADD, s->fd, &ev);
}

static void slot_next(worker *w, slot *s)
{
    epoll_ctl(w->ep, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    s->fd = -1;
    s->next += g_opt.conns;
    if (s->next >= g_nCreds) s->next = s->idx;
    if (atomic_load(&g_phase) < 2) slot_start(w, s);
}

static void on_event(worker *w, slot *s, uint32_t events)
{
    const cred *c = &g_creds[s->next];
    if (s->state == S_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            fail(strerror(err), c->zId);
            return;
        }
        if (!(events & EPOLLOUT)) return;
        unsigned char buf[4 * MAX_CRED + 64];
        size_t n = build_connect(buf, c);
        s->t0 = now_ns();
        if (write(s->fd, buf, n) != (ssize_t)n) {
            fail("short write of CONNECT", c->zId);
            return;
        }
        s->state = S_CONNACK;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};
        epoll_ctl(w->ep, EPOLL_CTL_MOD, s->fd, &ev);
        return;
    }
    ssize_t r = read(s->fd, s->in + s->nIn, sizeof s->in - (size_t)s->nIn);
    if (s->state == S_CLOSING) {
        /* After DISCONNECT the broker closes; EOF (or a reset) ends the cycle. */
        if (r == 0 || (r < 0 && errno != EAGAIN)) slot_next(w, s);
        return;
    }
    if (r <= 0) {
        if (r < 0 && errno == EAGAIN) return;
        fail(r == 0 ? "the broker closed the connection before CONNACK" : strerror(errno), c->zId);
        return;
    }
    s->nIn += (int)r;
    if (s->nIn < 4) return;
    if (s->in[0] != 0x20 || s->in[1] != 2) {
        fail("not a CONNACK", c->zId);
        return;
    }
    if (s->in[3] != 0) {
        char z[64];
        snprintf(z, sizeof z, "CONNACK return code %d", s->in[3]);
        fail(z, c->zId);
        return;
    }
    uint64_t lat = now_ns() - s->t0;
    static const unsigned char disc[2] = {0xE0, 0};
    if (write(s->fd, disc, 2) != 2) {
        fail("short write of DISCONNECT", c->zId);
        return;
    }
    if (atomic_load(&g_phase) == 1) {
        w->done++;
        w->lat_sum_ns += lat;
        if (lat > w->lat_max_ns) w->lat_max_ns = lat;
        if (w->nLat == w->capLat) {
            w->capLat = w->capLat ? 2 * w->capLat : 65536;
            w->lat = realloc(w->lat, w->capLat * sizeof *w->lat);
            if (!w->lat) {
                fail("out of memory", NULL);
                return;
            }
        }
        w->lat[w->nLat++] = lat;
    }
    s->state = S_CLOSING;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < w->n; i++) slot_start(w, &g_slots[w->first + i]);
    struct epoll_event evs[256];
    while (atomic_load(&g_phase) < 2 && !atomic_load(&g_failed)) {
        int n = epoll_wait(w->ep, evs, 256, 100);
        for (int i = 0; i < n; i++) on_event(w, evs[i].data.ptr, evs[i].events);
    }
    for (int i = 0; i < w->n; i++)
        if (g_slots[w->first + i].fd >= 0) close(g_slots[w->first + i].fd);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: connect --creds FILE [--host H] [--port P] [--connections C] [--threads T]\n"
            "               [--duration S] [--warmup S]\n\n"
            "CONNECT/CONNACK/DISCONNECT cycles as fast as the broker allows, C at a time, each\n"
            "as a device from FILE (\"ID SECRET\" lines; at least C of them). Prints one JSON\n"
            "line: connects_per_s, CONNECT->CONNACK latency p50/p99/max in ms. Exit 1 on any\n"
            "error (refused connection, CONNACK return code != 0).\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"host", 1, 0, 'h'},    {"port", 1, 0, 'p'},     {"connections", 1, 0, 'c'},
        {"threads", 1, 0, 't'}, {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'},
        {"creds", 1, 0, 'f'},   {"help", 0, 0, 'H'},     {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': g_opt.zHost = optarg; break;
        case 'p': g_opt.port = atoi(optarg); break;
        case 'c': g_opt.conns = atoi(optarg); break;
        case 't': g_opt.threads = atoi(optarg); break;
        case 'd': g_opt.dur = atof(optarg); break;
        case 'w': g_opt.warm = atof(optarg); break;
        case 'f': g_opt.zCreds = optarg; break;
        case 'H': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!g_opt.zCreds || g_opt.conns < 1 || g_opt.threads < 1 || g_opt.dur <= 0) {
        usage(stderr);
        return 2;
    }
    FILE *f = fopen(g_opt.zCreds, "r");
    if (!f) {
        perror(g_opt.zCreds);
        return 1;
    }
    char line[2 * MAX_CRED + 8];
    long cap = 0;
    while (fgets(line, sizeof line, f)) {
        cred c;
        if (sscanf(line, "%255s %255s", c.zId, c.zSecret) != 2) continue;
        if (g_nCreds == cap) {
            cap = cap ? 2 * cap : 1024;
            g_creds = realloc(g_creds, (size_t)cap * sizeof *g_creds);
        }
        g_creds[g_nCreds++] = c;
    }
    fclose(f);
    if (g_nCreds < g_opt.conns) {
        fprintf(stderr, "connect: %ld devices in %s, need at least --connections %d\n", g_nCreds,
                g_opt.zCreds, g_opt.conns);
        return 2;
    }
    if (g_opt.threads > g_opt.conns) g_opt.threads = g_opt.conns;
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)g_opt.port);
    if (inet_pton(AF_INET, g_opt.zHost, &g_addr.sin_addr) != 1) {
        fprintf(stderr, "connect: --host must be an IPv4 address\n");
        return 2;
    }
    g_slots = calloc((size_t)g_opt.conns, sizeof *g_slots);
    worker *ws = calloc((size_t)g_opt.threads, sizeof *ws);
    for (int i = 0; i < g_opt.conns; i++) g_slots[i] = (slot){.fd = -1, .idx = i, .next = i};
    for (int t = 0, first = 0; t < g_opt.threads; t++) {
        ws[t].first = first;
        ws[t].n = g_opt.conns / g_opt.threads + (t < g_opt.conns % g_opt.threads);
        first += ws[t].n;
        ws[t].ep = epoll_create1(EPOLL_CLOEXEC);
        pthread_create(&ws[t].th, NULL, worker_main, &ws[t]);
    }
    struct timespec ts = {(time_t)g_opt.warm, (long)((g_opt.warm - (long)g_opt.warm) * 1e9)};
    nanosleep(&ts, NULL);
    atomic_store(&g_phase, 1);
    uint64_t t0 = now_ns();
    while (!atomic_load(&g_failed) && now_ns() - t0 < (uint64_t)(g_opt.dur * 1e9)) {
        struct timespec step = {0, 20000000};
        nanosleep(&step, NULL);
    }
    uint64_t t1 = now_ns();
    atomic_store(&g_phase, 2);
    uint64_t done = 0, maxNs = 0;
    size_t nLat = 0;
    for (int t = 0; t < g_opt.threads; t++) {
        pthread_join(ws[t].th, NULL);
        done += ws[t].done;
        nLat += ws[t].nLat;
        if (ws[t].lat_max_ns > maxNs) maxNs = ws[t].lat_max_ns;
    }
    if (atomic_load(&g_failed)) {
        fprintf(stderr, "connect: %s\n", g_zErr);
        printf("{\"status\":\"error\",\"error\":\"%s\"}\n", g_zErr);
        return 1;
    }
    uint64_t *all = malloc((nLat + 1) * sizeof *all);
    size_t k = 0;
    for (int t = 0; t < g_opt.threads; t++)
        for (size_t i = 0; i < ws[t].nLat; i++) all[k++] = ws[t].lat[i];
    qsort(all, nLat, sizeof *all, cmp_u64);
    double secs = (double)(t1 - t0) / 1e9;
    double p50 = nLat ? (double)all[nLat / 2] / 1e6 : 0;
    double p99 = nLat ? (double)all[(nLat * 99) / 100] / 1e6 : 0;
    printf("{\"status\":\"ok\",\"connections\":%d,\"threads\":%d,\"devices\":%ld,"
           "\"seconds\":%.3f,\"connects\":%llu,\"connects_per_s\":%.1f,"
           "\"connack_p50_ms\":%.3f,\"connack_p99_ms\":%.3f,\"connack_max_ms\":%.3f}\n",
           g_opt.conns, g_opt.threads, g_nCreds, secs, (unsigned long long)done,
           (double)done / secs, p50, p99, (double)maxNs / 1e6);
    return 0;
}
