/* expose.c - GET /metrics: who may read it (metrics-auth), and the
 * collectors that turn the stats the modules keep (broker, HTTP server,
 * time-series engine, registry, the process itself) into families at scrape
 * time. Rendering runs on libuv's worker pool, never on an I/O thread: it
 * walks the registry mirror and the series table, which can take
 * milliseconds on a large daemon. */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <llhttp.h>
#include <uv.h>

#include "core/log.h"
#include "core/version.h"
#include "http/http.h"
#include "metrics/metrics.h"
#include "mqtt/mqtt.h"
#include "net/net.h"
#include "registry/registry.h"
#include "tsdb/tsdb.h"

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

static const thz_config *CFG;
static registry *REG;
static tsdb *DB;
static double start_wall; /* unix seconds at metrics_start */

/* ---- small writers for the collectors ---- */

typedef struct w {
    thz_buf *out;
    thz_err rc;
} w;

static void family(w *x, const char *name, const char *help, metrics_type t)
{
    if (!x->rc) x->rc = metrics_write_family(x->out, name, help, t);
}

static void sample(w *x, const char *name, const char *lname, const char *lval, uint64_t v)
{
    metrics_label l = {lname, lval};
    if (!x->rc) x->rc = metrics_write_sample_u64(x->out, name, NULL, &l, lname ? 1 : 0, v);
}

static void one(w *x, const char *name, const char *help, metrics_type t, uint64_t v)
{
    family(x, name, help, t);
    sample(x, name, NULL, NULL, v);
}

static void one_f(w *x, const char *name, const char *help, metrics_type t, double v)
{
    family(x, name, help, t);
    if (!x->rc) x->rc = metrics_write_sample(x->out, name, NULL, NULL, 0, v);
}

/* ---- collectors ---- */

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, res = 0;
    if (!f) return 0;
    if (fscanf(f, "%llu %llu", &size, &res) != 2) res = 0;
    fclose(f);
    return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE);
}

static uint64_t open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 0;
    uint64_t n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n ? n - 1 : 0; /* the directory's own descriptor */
}

static void collect_process(w *x)
{
    family(x, "thinghz_build_info", "Always 1; the labels say which build is running.",
           METRICS_GAUGE);
    sample(x, "thinghz_build_info", "version", THINGHZ_VERSION, 1);
    one_f(x, "thinghz_process_start_time_seconds", "When the daemon started, unix seconds.",
          METRICS_GAUGE, start_wall);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double up = (double)now.tv_sec + (double)now.tv_nsec / 1e9 - start_wall;
    one_f(x, "thinghz_uptime_seconds", "Seconds since the daemon started.", METRICS_GAUGE,
          up > 0 ? up : 0);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    one_f(x, "thinghz_process_cpu_seconds_total", "User and system CPU time of the daemon.",
          METRICS_COUNTER, cpu);
    one(x, "thinghz_process_resident_memory_bytes",
        "Resident memory of the whole process (/proc/self/statm); includes every subsystem of "
        "thinghz_memory_bytes.",
        METRICS_GAUGE, rss_bytes());
    one(x, "thinghz_process_open_fds", "Open file descriptors (sockets, files).", METRICS_GAUGE,
        open_fds());
    one(x, "thinghz_io_threads", "I/O threads (each one libuv loop).", METRICS_GAUGE,
        (uint64_t)net_threads());
}

static void collect_mqtt(w *x, const mqtt_stats *m)
{
    one(x, "thinghz_mqtt_connections", "MQTT clients connected now (CONNECT accepted).",
        METRICS_GAUGE, m->clients_connected);
    one(x, "thinghz_mqtt_connections_accepted_total", "MQTT CONNECTs accepted.", METRICS_COUNTER,
        m->connects_accepted);
    family(x, "thinghz_mqtt_connections_refused_total", "MQTT CONNECTs refused, by reason.",
           METRICS_COUNTER);
    for (int k = 0; k < MQTT_REFUSE_N; k++)
        sample(x, "thinghz_mqtt_connections_refused_total", "reason", mqtt_refuse_name(k),
               m->connects_refused[k]);
    one(x, "thinghz_mqtt_sessions", "MQTT sessions (online and persistent offline ones).",
        METRICS_GAUGE, m->sessions);
    one(x, "thinghz_mqtt_subscriptions", "MQTT subscriptions.", METRICS_GAUGE, m->subscriptions);
    one(x, "thinghz_mqtt_retained_messages", "Retained MQTT messages.", METRICS_GAUGE, m->retained);
    one(x, "thinghz_mqtt_messages_received_total", "PUBLISH packets received from clients.",
        METRICS_COUNTER, m->msgs_received);
    one(x, "thinghz_mqtt_messages_sent_total", "PUBLISH packets delivered to subscribers.",
        METRICS_COUNTER, m->msgs_sent);
    one(x, "thinghz_mqtt_received_bytes_total", "Bytes read from MQTT clients.", METRICS_COUNTER,
        m->bytes_received);
    one(x, "thinghz_mqtt_sent_bytes_total", "Bytes written to MQTT clients.", METRICS_COUNTER,
        m->bytes_sent);
    family(x, "thinghz_mqtt_messages_dropped_total",
           "Messages dropped instead of delivered, by reason.", METRICS_COUNTER);
    for (int k = 0; k < MQTT_DROP_N; k++)
        sample(x, "thinghz_mqtt_messages_dropped_total", "reason", mqtt_drop_name(k), m->drops[k]);
    family(x, "thinghz_mqtt_acl_denied_total",
           "PUBLISH packets and subscription filters refused by the ACL or device policies.",
           METRICS_COUNTER);
    sample(x, "thinghz_mqtt_acl_denied_total", "action", "publish", m->denied_publish);
    sample(x, "thinghz_mqtt_acl_denied_total", "action", "subscribe", m->denied_subscribe);
    family(x, "thinghz_mqtt_limit_hits_total",
           "Times a client ran into a configured limit, by limit (docs/OPERATIONS.md).",
           METRICS_COUNTER);
    for (int k = 0; k < MQTT_LIMIT_N; k++)
        sample(x, "thinghz_mqtt_limit_hits_total", "limit", mqtt_limit_name(k), m->limits[k]);
    one(x, "thinghz_mqtt_queued_messages",
        "Messages waiting in session queues (sampled every 250 ms).", METRICS_GAUGE,
        m->queued_messages);
    one(x, "thinghz_mqtt_inflight_messages",
        "QoS 1/2 messages sent and not yet acknowledged (sampled every 250 ms).", METRICS_GAUGE,
        m->inflight_messages);
    one(x, "thinghz_mqtt_outbound_pending_bytes",
        "Encoded MQTT output the sockets have not taken yet (sampled every 250 ms).", METRICS_GAUGE,
        m->outbuf_bytes);
}

static void collect_http(w *x)
{
    http_stats h;
    http_get_stats(&h);
    one(x, "thinghz_http_connections", "HTTP connections open now, WebSockets included.",
        METRICS_GAUGE, h.connections);
    one(x, "thinghz_http_connections_accepted_total", "HTTP connections accepted.", METRICS_COUNTER,
        h.connections_total);
    one(x, "thinghz_http_connections_refused_total",
        "HTTP connections answered 503 because an I/O thread was at its connection limit.",
        METRICS_COUNTER, h.connections_refused);
    family(x, "thinghz_http_requests_total", "HTTP responses sent, by status class.",
           METRICS_COUNTER);
    static const char *const cls[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int k = 1; k <= 6; k++)
        sample(x, "thinghz_http_requests_total", "code", cls[k % 6], h.responses[k % 6]);
    one(x, "thinghz_http_received_bytes_total", "Bytes read from HTTP clients.", METRICS_COUNTER,
        h.bytes_in);
    one(x, "thinghz_http_sent_bytes_total", "Bytes written to HTTP clients.", METRICS_COUNTER,
        h.bytes_out);
    one(x, "thinghz_websocket_connections", "WebSocket connections open now.", METRICS_GAUGE,
        h.websockets);
    one(x, "thinghz_websocket_connections_total", "WebSocket connections opened (101 sent).",
        METRICS_COUNTER, h.websockets_total);
}

static void collect_tsdb(w *x, const tsdb_stats *t)
{
    one(x, "thinghz_tsdb_series", "Time series in the engine.", METRICS_GAUGE, t->series);
    one(x, "thinghz_tsdb_head_points", "Points in memory, not yet cut into blocks.", METRICS_GAUGE,
        t->head_points);
    one(x, "thinghz_tsdb_blocks", "Block files.", METRICS_GAUGE, t->blocks);
    one(x, "thinghz_tsdb_disk_bytes", "Bytes on disk: blocks, index and WAL.", METRICS_GAUGE,
        t->disk_bytes);
    one(x, "thinghz_tsdb_wal_disk_bytes", "Bytes of WAL segments on disk.", METRICS_GAUGE,
        t->wal_bytes);
    one(x, "thinghz_tsdb_wal_written_bytes_total", "Bytes the WAL thread wrote.", METRICS_COUNTER,
        t->wal_written_bytes);
    one(x, "thinghz_tsdb_wal_pending_bytes",
        "WAL bytes appended and not yet written (and, under fsync always, not yet synced): the "
        "WAL queue depth.",
        METRICS_GAUGE, t->wal_pending_bytes);
    one(x, "thinghz_tsdb_wal_fsyncs_total", "fdatasync calls on the WAL.", METRICS_COUNTER,
        t->fsyncs);
}

static void collect_registry(w *x, const reg_stats *r)
{
    one(x, "thinghz_registry_tenants", "Tenants.", METRICS_GAUGE, r->tenants);
    one(x, "thinghz_registry_devices", "Registered devices.", METRICS_GAUGE, r->devices);
    one(x, "thinghz_registry_devices_online", "Registered devices connected now.", METRICS_GAUGE,
        r->devices_online);
    one(x, "thinghz_registry_groups", "Device groups.", METRICS_GAUGE, r->groups);
    one(x, "thinghz_registry_tokens", "Live login sessions and API tokens.", METRICS_GAUGE,
        r->tokens);
}

static void collect_all(thz_buf *out, void *ctx)
{
    w x = {out, THZ_OK};
    mqtt_stats m;
    mqtt_get_stats(&m);
    tsdb_stats t = {0};
    if (DB) tsdb_get_stats(DB, &t);
    reg_stats r = {0};
    if (REG) reg_get_stats(REG, &r);
    collect_process(&x);
    family(&x, "thinghz_memory_bytes",
           "Memory held by a subsystem (estimates from the structures' sizes).", METRICS_GAUGE);
    sample(&x, "thinghz_memory_bytes", "subsystem", "tsdb_head", t.head_bytes);
    sample(&x, "thinghz_memory_bytes", "subsystem", "registry", r.mirror_bytes);
    sample(&x, "thinghz_memory_bytes", "subsystem", "mqtt_retained", m.retained_bytes);
    sample(&x, "thinghz_memory_bytes", "subsystem", "mqtt_sessions", m.session_bytes);
    collect_mqtt(&x, &m);
    collect_http(&x);
    if (DB) collect_tsdb(&x, &t);
    if (REG) collect_registry(&x, &r);
    if (x.rc) log_warn("metrics", "rendering: %s", thz_strerror(x.rc));
}

/* ---- GET /metrics ---- */

static bool peer_is_loopback(const http_request *req)
{
    struct sockaddr_storage ss;
    if (http_req_peer(req, &ss) != THZ_OK) return false;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)&ss)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a)) return true;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return false;
}

/* True when req may read the metrics; otherwise res holds the 401. */
static bool allowed(const http_request *req, http_response *res)
{
    int mode = CFG ? CFG->metrics_auth : THZ_METRICS_AUTH_LOOPBACK;
    if (mode == THZ_METRICS_AUTH_NONE) return true;
    if (mode == THZ_METRICS_AUTH_LOOPBACK && peer_is_loopback(req)) return true;
    const char *h = http_req_header(req, "authorization");
    reg_principal p;
    if (h && strncasecmp(h, "Bearer ", 7) == 0) {
        const char *t = h + 7;
        while (*t == ' ') t++;
        if (*t && REG && reg_token_check(REG, t, &p) == THZ_OK) {
            /* The metrics are the whole daemon's (every tenant's ingest):
             * only the operators, the default tenant's users, may read them. */
            if (p.tenant == REG_DEFAULT_TENANT) return true;
            http_res_error(res, 403, "forbidden",
                           "/metrics is for tokens of the default (operators') tenant");
            return false;
        }
        /* the error first: it resets the headers */
        http_res_error(res, 401, "unauthorized", "the token is invalid, expired or revoked");
        http_res_header(res, "WWW-Authenticate",
                        "Bearer realm=\"thinghz\", error=\"invalid_token\"");
        return false;
    }
    http_res_error(res, 401, "unauthorized",
                   "/metrics needs an 'Authorization: Bearer TOKEN' header from this address");
    http_res_header(res, "WWW-Authenticate", "Bearer realm=\"thinghz\"");
    return false;
}

typedef struct scrape {
    uv_work_t work;
    http_request *req;
    thz_err rc;
} scrape;

static void fill(http_request *req)
{
    http_response *res = http_req_response(req);
    thz_buf b = {0};
    thz_err rc = metrics_render(&b);
    if (!rc) {
        http_res_status(res, 200);
        rc = http_res_header(res, "Content-Type", CONTENT_TYPE);
        if (!rc) rc = http_res_header(res, "Cache-Control", "no-store");
        if (!rc) rc = http_res_body(res, b.p, b.len);
    }
    if (rc) http_res_error(res, 503, "out_of_memory", "the server is out of memory");
    thz_buf_free(&b);
}

static void scrape_run(uv_work_t *wk)
{
    metrics_pool_started();
    scrape *s = wk->data;
    fill(s->req);
}

static void scrape_done(uv_work_t *wk, int status)
{
    scrape *s = wk->data;
    metrics_pool_finished();
    if (status != 0)
        http_res_error(http_req_response(s->req), 503, "unavailable", "the scrape was cancelled");
    http_reply(s->req);
    free(s);
}

static http_result get_metrics(http_request *req, http_response *res, void *ctx)
{
    if (!allowed(req, res)) return HTTP_DONE;
    scrape *s = calloc(1, sizeof *s);
    if (!s) {
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
        return HTTP_DONE;
    }
    s->req = req;
    s->work.data = s;
    if (uv_queue_work(net_loop(net_self()), &s->work, scrape_run, scrape_done) != 0) {
        free(s);
        fill(req); /* no pool: answer here rather than not at all */
        return HTTP_DONE;
    }
    metrics_pool_queued();
    return HTTP_PENDING;
}

thz_err metrics_start(const thz_config *cfg, struct registry *r, struct tsdb *db)
{
    CFG = cfg;
    REG = r;
    DB = db;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    start_wall = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    thz_err rc = metrics_add_collector(collect_all, NULL);
    if (!rc) rc = http_route(HTTP_GET, "/metrics", get_metrics, NULL);
    return rc;
}
