/* limits.c - the broker's fairness limits that span connections: CONNECT
 * rate per source address (token buckets in a bounded table), counts per
 * tenant (connections, retained topics), and the rate-limited log line and
 * counter every limit hit gets. The per-message checks live where the
 * packets are handled (conn.c); docs/OPERATIONS.md "Limits" lists them all. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "mqtt/mqtt_int.h"

/* ---- limit hits: counter and a log line at most every LOG_EVERY_MS ---- */

#define LOG_EVERY_MS 10000

static _Atomic int64_t last_log_ms[MQTT_LIMIT_N];
static atomic_uint suppressed[MQTT_LIMIT_N];

void limit_hit(worker *w, int lim, const char *fmt, ...)
{
    if (w) STAT_ADD(w->limits[lim], 1);
    if (THZ_LOG_WARN > thz_log_level) return;
    int64_t now = now_ms(), last = atomic_load_explicit(&last_log_ms[lim], memory_order_relaxed);
    /* one thread wins the slot; the others only count what they hid */
    if ((last && now - last < LOG_EVERY_MS) ||
        !atomic_compare_exchange_strong(&last_log_ms[lim], &last, now)) {
        atomic_fetch_add_explicit(&suppressed[lim], 1, memory_order_relaxed);
        return;
    }
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    unsigned more = atomic_exchange_explicit(&suppressed[lim], 0, memory_order_relaxed);
    if (more)
        log_warn("mqtt", "%s (limit %s; %u more since the last such line)", line,
                 mqtt_limit_name(lim), more);
    else
        log_warn("mqtt", "%s (limit %s)", line, mqtt_limit_name(lim));
}

uint32_t topic_levels(const char *t, size_t n)
{
    uint32_t k = 1;
    for (const char *p = t, *end = t + n; (p = memchr(p, '/', (size_t)(end - p))) != NULL; p++) k++;
    return k;
}

/* ---- CONNECT rate per source address ----
 * A set-associative table of token buckets: RATE_SETS sets of RATE_WAYS
 * addresses. An address not in its set takes the slot seen least recently,
 * so the table never grows; an evicted address starts again with a full
 * bucket, which only matters to someone cycling through thousands of
 * addresses, who could open as many sockets anyway. */

#define RATE_SETS 1024
#define RATE_WAYS 4

typedef struct rate_slot {
    char host[48]; /* empty: free */
    double tokens;
    int64_t last_ms;
} rate_slot;

static rate_slot rate_tab[RATE_SETS][RATE_WAYS];
static pthread_mutex_t rate_lock = PTHREAD_MUTEX_INITIALIZER;

bool connect_rate_take(const char *peer)
{
    uint32_t rate = LIMIT(connect_rate);
    if (!rate || !peer[0]) return true;
    double burst = LIMIT(connect_burst);
    /* the address without its port: "1.2.3.4:5" or "[::1]:5" */
    const char *colon = strrchr(peer, ':');
    size_t hl = colon ? (size_t)(colon - peer) : strlen(peer);
    if (hl >= sizeof rate_tab[0][0].host) hl = sizeof rate_tab[0][0].host - 1;
    uint64_t h = hmap_hash(peer, hl);
    rate_slot *set = rate_tab[h % RATE_SETS];
    int64_t now = now_ms();
    bool ok;
    pthread_mutex_lock(&rate_lock);
    rate_slot *e = NULL, *oldest = &set[0];
    for (int i = 0; i < RATE_WAYS; i++) {
        if (strlen(set[i].host) == hl && memcmp(set[i].host, peer, hl) == 0) {
            e = &set[i];
            break;
        }
        if (set[i].last_ms < oldest->last_ms) oldest = &set[i];
    }
    if (!e) {
        e = oldest;
        memcpy(e->host, peer, hl);
        e->host[hl] = 0;
        e->tokens = burst;
        e->last_ms = now;
    }
    e->tokens += (double)(now - e->last_ms) * rate / 1000.0;
    if (e->tokens > burst) e->tokens = burst;
    e->last_ms = now;
    ok = e->tokens >= 1.0;
    if (ok) e->tokens -= 1.0;
    pthread_mutex_unlock(&rate_lock);
    return ok;
}

/* ---- counts per tenant, keyed by the tenant's topic prefix ("" for the
 * default tenant; topic.h) ---- */

typedef struct tcount {
    uint32_t n;
    uint32_t klen;
    char key[];
} tcount;

/* Adds delta to key's count unless that would pass max (0 = no maximum;
 * delta < 0 always applies). Returns false when refused or out of memory. */
static bool tcount_add(hmap *m, const char *key, size_t klen, int delta, uint32_t max)
{
    tcount *t = hmap_get(m, key, klen);
    if (delta > 0) {
        if (max && t && t->n + (uint32_t)delta > max) return false;
        if (!t) {
            if (max && (uint32_t)delta > max) return false;
            t = calloc(1, sizeof *t + klen + 1);
            if (!t) return false;
            memcpy(t->key, key, klen);
            t->klen = (uint32_t)klen;
            if (hmap_put(m, t->key, klen, t, NULL) != THZ_OK) {
                free(t);
                return false;
            }
        }
        t->n += (uint32_t)delta;
        return true;
    }
    if (!t) return true;
    t->n = t->n > (uint32_t)-delta ? t->n - (uint32_t)-delta : 0;
    if (t->n == 0) {
        hmap_del(m, key, klen);
        free(t);
    }
    return true;
}

static hmap tenant_conns;
static pthread_mutex_t tconn_lock = PTHREAD_MUTEX_INITIALIZER;

bool tenant_conn_acquire(const char *prefix, size_t plen)
{
    pthread_mutex_lock(&tconn_lock);
    bool ok = tcount_add(&tenant_conns, prefix, plen, 1, LIMIT(tenant_connections));
    pthread_mutex_unlock(&tconn_lock);
    return ok;
}

void tenant_conn_release(const char *prefix, size_t plen)
{
    pthread_mutex_lock(&tconn_lock);
    tcount_add(&tenant_conns, prefix, plen, -1, 0);
    pthread_mutex_unlock(&tconn_lock);
}

static hmap tenant_retained; /* under B.ret_lock */

bool retained_tenant_add(const char *topic, size_t tlen, int delta, bool limited)
{
    size_t base = topic_tenant_base(topic, tlen);
    return tcount_add(&tenant_retained, topic, base, delta, limited ? LIMIT(tenant_retained) : 0);
}

static void tcount_free(hmap *m)
{
    size_t pos = 0;
    for (hmap_entry *e = hmap_next(m, &pos, NULL); e; e = hmap_next(m, &pos, e)) free(e->val);
    hmap_free(m);
}

void limits_free(void)
{
    pthread_mutex_lock(&tconn_lock);
    tcount_free(&tenant_conns);
    pthread_mutex_unlock(&tconn_lock);
    tcount_free(&tenant_retained);
}
