/* gen.c - the data set of the time-series benchmark (bench/tsdb/run), and
 * its loader: 1,000 devices x 4 float fields (temperature, humidity,
 * pressure, battery) at 1 Hz, each a random walk in steps of 0.01..0.05
 * rounded to 0.01, as InfluxDB line protocol in batches of 5,000 lines,
 * either printed or POSTed over HTTP/1.1 keep-alive connections.
 *
 *   gen lines [opts]                     line protocol on stdout
 *   gen load HOST PORT PATH [opts]       POSTs the batches; prints one JSON line
 *     -n POINTS      field values in all (default 10,000,000; 4 per line)
 *     -d DEVICES     default 1000
 *     -s START_NS    time of the first second (default: now - the data's span,
 *                    so that the data ends now); give the same to every target
 *     -b LINES       lines per batch (default 5000)
 *     -c CONNS       connections (default 4)
 *     -t TOKEN       sends "Authorization: Bearer TOKEN"
 *
 * The data depends only on (-n, -d, -s, -b): every target gets the same. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NFIELDS 4
static const char *const field_names[NFIELDS] = {"temperature", "humidity", "pressure", "battery"};

static int64_t opt_points = 10000000, opt_devices = 1000, opt_start = 0, opt_batch = 5000;
static int opt_conns = 4;
static const char *opt_token, *opt_host, *opt_port, *opt_path;

/* ---- the data ----------------------------------------------------------- */

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Values in hundredths, so that the walk and its printing are exact. */
static int64_t *walk;
static int64_t lines_total, lines_done;

static void data_init(void)
{
    static const int64_t base[NFIELDS] = {2000, 5000, 101300, 8000};
    static const int64_t spread[NFIELDS] = {1000, 2000, 2000, 2000};
    walk = malloc((size_t)opt_devices * NFIELDS * sizeof *walk);
    for (int64_t d = 0; d < opt_devices; d++)
        for (int f = 0; f < NFIELDS; f++)
            walk[d * NFIELDS + f] =
                base[f] - spread[f] / 2 + (int64_t)(rnd() % (uint64_t)spread[f]);
    lines_total = opt_points / NFIELDS;
    if (!opt_start) {
        int64_t secs = (lines_total + opt_devices - 1) / opt_devices;
        opt_start = ((int64_t)time(NULL) - secs) * 1000000000ll;
    }
}

static char *put_i64(char *p, int64_t v)
{
    char tmp[24];
    int n = 0;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do tmp[n++] = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0) *p++ = '-';
    while (n) *p++ = tmp[--n];
    return p;
}

static char *put_hundredths(char *p, int64_t v)
{
    if (v < 0) {
        *p++ = '-';
        v = -v;
    }
    p = put_i64(p, v / 100);
    *p++ = '.';
    *p++ = (char)('0' + (v % 100) / 10);
    *p++ = (char)('0' + v % 10);
    return p;
}

/* The next batch (lines in time order, device by device within a second)
 * into buf; returns its length, 0 at the end. Not thread-safe. */
static size_t next_batch(char *buf)
{
    char *p = buf;
    for (int64_t k = 0; k < opt_batch && lines_done < lines_total; k++, lines_done++) {
        int64_t d = lines_done % opt_devices, sec = lines_done / opt_devices;
        memcpy(p, "telemetry,device=d", 18);
        p += 18;
        char id[24];
        int n = snprintf(id, sizeof id, "%04" PRId64, d);
        memcpy(p, id, (size_t)n);
        p += n;
        for (int f = 0; f < NFIELDS; f++) {
            int64_t *w = &walk[d * NFIELDS + f];
            int64_t step = 1 + (int64_t)(rnd() % 5);
            *w += rnd() & 1 ? step : -step;
            *p++ = f ? ',' : ' ';
            size_t fl = strlen(field_names[f]);
            memcpy(p, field_names[f], fl);
            p += fl;
            *p++ = '=';
            p = put_hundredths(p, *w);
        }
        *p++ = ' ';
        p = put_i64(p, opt_start + sec * 1000000000ll);
        *p++ = '\n';
    }
    return (size_t)(p - buf);
}

/* Bytes a batch can take at most. */
static size_t batch_cap(void)
{
    return (size_t)opt_batch * (64 + NFIELDS * 40);
}

/* ---- the loader: one producer, opt_conns senders ------------------------- */

typedef struct slot {
    char *buf;
    size_t len;
} slot;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv_full = PTHREAD_COND_INITIALIZER, cv_empty = PTHREAD_COND_INITIALIZER;
static slot *queue;
static size_t qcap, qhead, qlen;
static int produced_all;
static int64_t sent_lines, errors;
static char first_error[512];

static void *producer(void *arg)
{
    (void)arg;
    for (;;) {
        char *buf = malloc(batch_cap());
        size_t len = next_batch(buf);
        pthread_mutex_lock(&mu);
        if (!len) {
            produced_all = 1;
            pthread_cond_broadcast(&cv_full);
            pthread_mutex_unlock(&mu);
            free(buf);
            return NULL;
        }
        while (qlen == qcap) pthread_cond_wait(&cv_empty, &mu);
        queue[(qhead + qlen++) % qcap] = (slot){buf, len};
        pthread_cond_signal(&cv_full);
        pthread_mutex_unlock(&mu);
    }
}

static int take(slot *s)
{
    pthread_mutex_lock(&mu);
    while (!qlen && !produced_all) pthread_cond_wait(&cv_full, &mu);
    if (!qlen) {
        pthread_mutex_unlock(&mu);
        return 0;
    }
    *s = queue[qhead];
    qhead = (qhead + 1) % qcap;
    qlen--;
    pthread_cond_signal(&cv_empty);
    pthread_mutex_unlock(&mu);
    return 1;
}

static int dial(void)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(opt_host, opt_port, &hints, &ai)) return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen)) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one response; returns the status (0 on a broken connection) and
 * sets *close_after. The body is kept (truncated) in body. */
static int read_response(int fd, char *body, size_t bodycap, int *close_after)
{
    static __thread char buf[65536];
    static __thread size_t have;
    size_t hdr_end = 0;
    for (;;) {
        char *e = have ? memmem(buf, have, "\r\n\r\n", 4) : NULL;
        if (e) {
            hdr_end = (size_t)(e - buf) + 4;
            break;
        }
        if (have == sizeof buf) return 0;
        ssize_t r = recv(fd, buf + have, sizeof buf - have, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        have += (size_t)r;
    }
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) return 0;
    buf[hdr_end - 1] = 0;
    long clen = 0;
    int chunked = 0;
    *close_after = 0;
    for (char *l = strstr(buf, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
        char *h = l + 2;
        if (!strncasecmp(h, "content-length:", 15)) clen = strtol(h + 15, NULL, 10);
        if (!strncasecmp(h, "transfer-encoding:", 18) && strcasestr(h, "chunked") &&
            strcasestr(h, "chunked") < strstr(h, "\r\n"))
            chunked = 1;
        if (!strncasecmp(h, "connection:", 11) && strcasestr(h, "close") &&
            strcasestr(h, "close") < strstr(h, "\r\n"))
            *close_after = 1;
    }
    memmove(buf, buf + hdr_end, have - hdr_end);
    have -= hdr_end;
    size_t bl = 0;
    body[0] = 0;
    /* Chunked: read until the terminating 0-size chunk; keep what fits. */
    for (;;) {
        size_t need;
        if (chunked) {
            char *e;
            while (!(e = have ? memmem(buf, have, "\r\n", 2) : NULL)) {
                ssize_t r = recv(fd, buf + have, sizeof buf - have, 0);
                if (r <= 0) return 0;
                have += (size_t)r;
            }
            need = strtoul(buf, NULL, 16);
            size_t skip = (size_t)(e - buf) + 2;
            memmove(buf, buf + skip, have - skip);
            have -= skip;
            need += 2; /* the CRLF after the data */
            if (need == 2) {
                while (have < 2) {
                    ssize_t r = recv(fd, buf + have, sizeof buf - have, 0);
                    if (r <= 0) return 0;
                    have += (size_t)r;
                }
                memmove(buf, buf + 2, have - 2);
                have -= 2;
                break;
            }
        } else {
            need = (size_t)clen;
        }
        while (need) {
            if (!have) {
                ssize_t r = recv(fd, buf, sizeof buf, 0);
                if (r <= 0) return 0;
                have = (size_t)r;
            }
            size_t take_n = have < need ? have : need;
            size_t keep = take_n < bodycap - 1 - bl ? take_n : bodycap - 1 - bl;
            memcpy(body + bl, buf, keep);
            bl += keep;
            memmove(buf, buf + take_n, have - take_n);
            have -= take_n;
            need -= take_n;
        }
        if (!chunked) break;
    }
    body[bl] = 0;
    if (*close_after) have = 0;
    return status;
}

static void *sender(void *arg)
{
    (void)arg;
    int fd = -1;
    slot s;
    char hdr[1024], body[512];
    while (take(&s)) {
        int hl =
            snprintf(hdr, sizeof hdr,
                     "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n%s%s%s",
                     opt_path, opt_host, opt_port, s.len, opt_token ? "Authorization: Bearer " : "",
                     opt_token ? opt_token : "", opt_token ? "\r\n\r\n" : "\r\n");
        int status = 0, close_after = 0;
        for (int attempt = 0; attempt < 2 && !status; attempt++) {
            if (fd < 0) fd = dial();
            if (fd < 0) break;
            if (send_all(fd, hdr, (size_t)hl) || send_all(fd, s.buf, s.len) ||
                !(status = read_response(fd, body, sizeof body, &close_after))) {
                close(fd);
                fd = -1;
            }
        }
        if (close_after && fd >= 0) {
            close(fd);
            fd = -1;
        }
        int64_t nl = 0;
        for (size_t i = 0; i < s.len; i++) nl += s.buf[i] == '\n';
        pthread_mutex_lock(&mu);
        if (status >= 200 && status < 300) {
            sent_lines += nl;
        } else {
            errors++;
            if (!first_error[0])
                snprintf(first_error, sizeof first_error, "HTTP %d: %s", status,
                         status ? body : "connection failed");
        }
        pthread_mutex_unlock(&mu);
        free(s.buf);
    }
    if (fd >= 0) close(fd);
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static int load(void)
{
    qcap = (size_t)opt_conns * 2;
    queue = calloc(qcap, sizeof *queue);
    pthread_t prod, *snd = calloc((size_t)opt_conns, sizeof *snd);
    double t0 = now_s();
    pthread_create(&prod, NULL, producer, NULL);
    for (int i = 0; i < opt_conns; i++) pthread_create(&snd[i], NULL, sender, NULL);
    pthread_join(prod, NULL);
    for (int i = 0; i < opt_conns; i++) pthread_join(snd[i], NULL);
    double secs = now_s() - t0;
    int64_t points = sent_lines * NFIELDS;
    printf("{\"points\": %" PRId64 ", \"lines\": %" PRId64 ", \"seconds\": %.3f, "
           "\"points_per_s\": %.0f, \"errors\": %" PRId64 ", \"start_ns\": %" PRId64
           ", \"first_error\": ",
           points, sent_lines, secs, points / secs, errors, opt_start);
    json_str(first_error);
    printf("}\n");
    return errors ? 1 : 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: gen lines [-n POINTS] [-d DEVICES] [-s START_NS] [-b LINES]\n"
                    "       gen load HOST PORT PATH [-n POINTS] [-d DEVICES] [-s START_NS] "
                    "[-b LINES] [-c CONNS] [-t TOKEN]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage();
    int is_load = !strcmp(argv[1], "load");
    if (!is_load && strcmp(argv[1], "lines")) return usage();
    int i = 2;
    if (is_load) {
        if (argc < 5) return usage();
        opt_host = argv[2];
        opt_port = argv[3];
        opt_path = argv[4];
        i = 5;
    }
    for (; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        if (!strcmp(a, "-n"))
            opt_points = strtoll(v, NULL, 10);
        else if (!strcmp(a, "-d"))
            opt_devices = strtoll(v, NULL, 10);
        else if (!strcmp(a, "-s"))
            opt_start = strtoll(v, NULL, 10);
        else if (!strcmp(a, "-b"))
            opt_batch = strtoll(v, NULL, 10);
        else if (!strcmp(a, "-c"))
            opt_conns = atoi(v);
        else if (!strcmp(a, "-t"))
            opt_token = v;
        else
            return usage();
        i++;
    }
    if (opt_points < NFIELDS || opt_devices < 1 || opt_devices > 9999 || opt_batch < 1 ||
        opt_conns < 1)
        return usage();
    data_init();
    if (is_load) return load();
    char *buf = malloc(batch_cap());
    size_t len;
    while ((len = next_batch(buf))) fwrite(buf, 1, len, stdout);
    free(buf);
    return 0;
}
