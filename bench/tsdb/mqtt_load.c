/* mqtt_load.c - devices publishing JSON telemetry over MQTT 3.1.1 as fast as
 * the broker takes it, for bench/tsdb/mqtt_e2e: C connections, each a device
 * dNNNNN publishing {"ts":...,"temperature":...,"humidity":...,"pressure":...,
 * "battery":...} to devices/dNNNNN/telemetry, one timestamp per millisecond
 * step so every message is 4 distinct points. QoS 0, or QoS 1 with a window
 * of W unacknowledged PUBLISH per connection (PUBACKs counted: under
 * fsync always each one means durable). Standalone (no src/ dependency).
 *
 * usage: mqtt_load HOST PORT CONNS SECONDS QOS [WINDOW]
 * prints: sent=N acked=N seconds=S (acked = sent for QoS 0) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct lconn {
    int fd;
    int dev;
    uint64_t sent, acked;
    uint16_t next_id;
    int64_t ts_ms;
    uint8_t in[65536];
    size_t nin;
} lconn;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *m)
{
    perror(m);
    exit(1);
}

static size_t put_str(uint8_t *p, const char *s, size_t n)
{
    p[0] = (uint8_t)(n >> 8);
    p[1] = (uint8_t)n;
    memcpy(p + 2, s, n);
    return n + 2;
}

static size_t put_len(uint8_t *p, size_t n)
{
    size_t i = 0;
    do {
        uint8_t b = n & 0x7f;
        n >>= 7;
        p[i++] = (uint8_t)(b | (n ? 0x80 : 0));
    } while (n);
    return i;
}

static void full_write(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) die("write");
        p += w;
        n -= (size_t)w;
    }
}

/* Appends one PUBLISH of c's next reading to out. */
static size_t publish(lconn *c, int qos, uint8_t *out)
{
    char topic[64], body[192];
    size_t tl = (size_t)snprintf(topic, sizeof topic, "devices/d%05d/telemetry", c->dev);
    uint64_t k = c->sent;
    size_t bl = (size_t)snprintf(body, sizeof body,
                                 "{\"ts\":%lld,\"temperature\":%.2f,\"humidity\":%.2f,"
                                 "\"pressure\":%.2f,\"battery\":%.2f}",
                                 (long long)c->ts_ms++, 20 + (double)(k % 500) / 100,
                                 40 + (double)(k % 300) / 100, 1000 + (double)(k % 700) / 100,
                                 90 - (double)(k % 900) / 100);
    size_t rem = 2 + tl + (qos ? 2 : 0) + bl, n = 0;
    out[n++] = (uint8_t)(0x30 | (qos << 1));
    n += put_len(out + n, rem);
    n += put_str(out + n, topic, tl);
    if (qos) {
        if (++c->next_id == 0) c->next_id = 1;
        out[n++] = (uint8_t)(c->next_id >> 8);
        out[n++] = (uint8_t)c->next_id;
    }
    memcpy(out + n, body, bl);
    c->sent++;
    return n + bl;
}

/* Counts the PUBACKs in what arrived. */
static void drain(lconn *c)
{
    ssize_t r = read(c->fd, c->in + c->nin, sizeof c->in - c->nin);
    if (r <= 0) die("read (connection closed by the broker?)");
    c->nin += (size_t)r;
    size_t i = 0;
    while (c->nin - i >= 2) {
        size_t len = c->in[i + 1]; /* PUBACK / CONNACK: 2-byte bodies */
        if (c->nin - i < 2 + len) break;
        if ((c->in[i] & 0xf0) == 0x40) c->acked++;
        i += 2 + len;
    }
    memmove(c->in, c->in + i, c->nin - i);
    c->nin -= i;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: mqtt_load HOST PORT CONNS SECONDS QOS [WINDOW]\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nc = atoi(argv[3]), qos = atoi(argv[5]);
    double secs = atof(argv[4]);
    int window = argc > 6 ? atoi(argv[6]) : 64;
    lconn *cs = calloc((size_t)nc, sizeof *cs);
    struct pollfd *pf = calloc((size_t)nc, sizeof *pf);
    if (!cs || !pf) die("calloc");
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    int64_t start_ms = (int64_t)wall.tv_sec * 1000 - 3600 * 1000; /* an hour back: no collisions */
    for (int i = 0; i < nc; i++) {
        lconn *c = &cs[i];
        c->dev = i;
        c->ts_ms = start_ms;
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        inet_pton(AF_INET, host, &sa.sin_addr);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) die("connect");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        uint8_t p[128];
        char cid[32];
        size_t cl = (size_t)snprintf(cid, sizeof cid, "load-d%05d", i), n = 0;
        p[n++] = 0x10;
        n += put_len(p + n, 10 + 2 + cl);
        n += put_str(p + n, "MQTT", 4);
        p[n++] = 4;    /* 3.1.1 */
        p[n++] = 0x02; /* clean session */
        p[n++] = 0;
        p[n++] = 60;
        n += put_str(p + n, cid, cl);
        full_write(c->fd, p, n);
        uint8_t ack[4];
        if (read(c->fd, ack, 4) != 4 || ack[0] != 0x20 || ack[3] != 0) die("CONNACK");
        pf[i] = (struct pollfd){.fd = c->fd, .events = POLLOUT | (qos ? POLLIN : 0)};
    }
    static uint8_t out[256 * 64];
    double t0 = now_s(), end = t0 + secs;
    while (now_s() < end) {
        if (poll(pf, (nfds_t)nc, 100) < 0) die("poll");
        for (int i = 0; i < nc; i++) {
            lconn *c = &cs[i];
            if (pf[i].revents & POLLIN) drain(c);
            if (!(pf[i].revents & POLLOUT)) continue;
            size_t n = 0;
            for (int k = 0; k < 64; k++) {
                if (qos && c->sent - c->acked >= (uint64_t)window) break;
                n += publish(c, qos, out + n);
            }
            if (n) full_write(c->fd, out, n);
        }
    }
    double t1 = now_s();
    if (qos) { /* the acknowledgements of what was sent */
        double give_up = now_s() + 30;
        for (int i = 0; i < nc; i++)
            while (cs[i].acked < cs[i].sent && now_s() < give_up) drain(&cs[i]);
    }
    uint64_t sent = 0, acked = 0;
    for (int i = 0; i < nc; i++) {
        sent += cs[i].sent;
        acked += qos ? cs[i].acked : cs[i].sent;
        uint8_t d[2] = {0xe0, 0};
        full_write(cs[i].fd, d, 2);
        close(cs[i].fd);
    }
    printf("sent=%llu acked=%llu seconds=%.3f\n", (unsigned long long)sent,
           (unsigned long long)acked, t1 - t0);
    return 0;
}
