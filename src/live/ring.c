/* ring.c - the last LIVE_RING_SLOTS messages of every registered device, in
 * memory: one ring per device with its own small lock and fixed slots whose
 * buffers are reused, so a busy device allocates nothing once warm. Fed by
 * the broker's publish observer on the routing thread; read by
 * GET /devices/{id}/messages. Also the payload-to-JSON rule both share. */
#include "live/live_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "core/hmap.h"

typedef struct slot {
    int64_t ms;
    uint32_t size; /* the payload's real size */
    uint32_t plen; /* bytes kept (<= LIVE_PAYLOAD_MAX) */
    uint16_t tlen; /* topic bytes kept */
    uint8_t qos;
    bool retain;
    char *buf; /* topic then payload; reused */
    uint32_t cap;
} slot;

typedef struct ring {
    pthread_mutex_t mu;
    uint64_t n; /* messages ever written; the newest is at (n - 1) % SLOTS */
    slot s[LIVE_RING_SLOTS];
    size_t klen;
    char key[]; /* tenant (8 bytes) then the device id */
} ring;

static pthread_rwlock_t rings_mu = PTHREAD_RWLOCK_INITIALIZER;
static hmap rings;
static _Atomic size_t ring_bytes; /* slot buffers of every ring */

int64_t live__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void live__fmt_ms(int64_t ms, char *out)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static size_t make_key(char *key, int64_t tenant, const char *id, size_t idlen)
{
    memcpy(key, &tenant, 8);
    memcpy(key + 8, id, idlen);
    return 8 + idlen;
}

bool live__topic_device(const char *t, size_t n, const char **id, size_t *idlen)
{
    static const char a[] = "devices/", b[] = "$aws/things/";
    size_t pl;
    if (n > sizeof a - 1 && memcmp(t, a, sizeof a - 1) == 0)
        pl = sizeof a - 1;
    else if (n > sizeof b - 1 && memcmp(t, b, sizeof b - 1) == 0)
        pl = sizeof b - 1;
    else
        return false;
    const char *s = t + pl, *e = memchr(s, '/', n - pl);
    size_t l = e ? (size_t)(e - s) : n - pl;
    if (l == 0 || l > REG_ID_MAX) return false;
    *id = s;
    *idlen = l;
    return true;
}

/* The ring of (tenant, id), created for a registered device; NULL else. */
static ring *ring_get(int64_t tenant, const char *id, size_t idlen)
{
    char key[8 + REG_ID_MAX];
    size_t kl = make_key(key, tenant, id, idlen);
    pthread_rwlock_rdlock(&rings_mu);
    ring *g = hmap_get(&rings, key, kl);
    pthread_rwlock_unlock(&rings_mu);
    if (g || !live__reg || !reg_device_exists(live__reg, tenant, id, idlen)) return g;
    pthread_rwlock_wrlock(&rings_mu);
    g = hmap_get(&rings, key, kl);
    if (!g && (g = calloc(1, sizeof *g + kl))) {
        pthread_mutex_init(&g->mu, NULL);
        memcpy(g->key, key, kl);
        g->klen = kl;
        if (hmap_put(&rings, g->key, kl, g, NULL) != THZ_OK) {
            pthread_mutex_destroy(&g->mu);
            free(g);
            g = NULL;
        }
    }
    pthread_rwlock_unlock(&rings_mu);
    return g;
}

static void ring_store(ring *g, int64_t ms, const char *topic, size_t tl, const uint8_t *p,
                       size_t n, size_t size, int qos, bool retain)
{
    if (tl > LIVE_TOPIC_MAX) tl = LIVE_TOPIC_MAX;
    pthread_mutex_lock(&g->mu);
    slot *s = &g->s[g->n % LIVE_RING_SLOTS];
    size_t need = tl + n;
    if (need > s->cap) {
        /* Grow only within the budget; past it the message keeps what fits
         * in the slot's buffer (marked truncated, as a long payload is). */
        size_t c = need < 256 ? 256 : need;
        char *b = NULL;
        if (atomic_load_explicit(&ring_bytes, memory_order_relaxed) + (c - s->cap) <=
                LIVE_RING_BUDGET &&
            (b = realloc(s->buf, c))) {
            atomic_fetch_add_explicit(&ring_bytes, c - s->cap, memory_order_relaxed);
            s->buf = b;
            s->cap = (uint32_t)c;
        }
        if (tl > s->cap) tl = s->cap;
        if (tl + n > s->cap) n = s->cap - tl;
    }
    if (tl) memcpy(s->buf, topic, tl);
    if (n) memcpy(s->buf + tl, p, n);
    s->ms = ms;
    s->size = (uint32_t)size;
    s->plen = (uint32_t)n;
    s->tlen = (uint16_t)tl;
    s->qos = (uint8_t)qos;
    s->retain = retain;
    g->n++;
    pthread_mutex_unlock(&g->mu);
}

void live__observe_publish(void *ctx, int64_t tenant, const char *topic, size_t topic_len,
                           const uint8_t *payload, size_t len, int qos, bool retain)
{
    const char *id;
    size_t idlen;
    if (!live__topic_device(topic, topic_len, &id, &idlen)) return;
    int64_t ms = live__now_ms();
    size_t kept = len < LIVE_PAYLOAD_MAX ? len : LIVE_PAYLOAD_MAX;
    ring *g = ring_get(tenant, id, idlen);
    if (!g) return; /* not a registered device: nothing kept, nobody to tell */
    ring_store(g, ms, topic, topic_len, payload, kept, len, qos, retain);
    live__on_message(tenant, id, idlen, ms, topic, topic_len, payload, kept, len, qos, retain);
}

/* ---- payloads as JSON ---- */

/* The length of the valid UTF-8 prefix of p[0..n) without NUL bytes; *tail
 * is set when what follows is only an incomplete sequence at the very end. */
static size_t utf8_prefix(const uint8_t *p, size_t n, bool *tail)
{
    size_t i = 0;
    *tail = false;
    while (i < n) {
        uint8_t c = p[i];
        size_t k;
        uint32_t min, cp;
        if (c == 0) return i;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, min = 0x80, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, min = 0x800, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return i;
        }
        size_t j = 1;
        for (; j <= k && i + j < n; j++) {
            if ((p[i + j] & 0xC0) != 0x80) return i;
            cp = cp << 6 | (p[i + j] & 0x3F);
        }
        if (j <= k) { /* ran out of input inside the sequence */
            *tail = true;
            return i;
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += k + 1;
    }
    return i;
}

void live_payload_json(cJSON *o, const uint8_t *p, size_t n, bool cut)
{
    bool tail;
    size_t ok = utf8_prefix(p, n, &tail);
    if (ok == n || (cut && tail)) {
        char stack[LIVE_PAYLOAD_MAX + 1], *z = ok < sizeof stack ? stack : malloc(ok + 1);
        if (z) {
            memcpy(z, p, ok);
            z[ok] = 0;
            cJSON_AddStringToObject(o, "payload", z);
            if (z != stack) free(z);
            return;
        }
    }
    cJSON_AddNullToObject(o, "payload");
    size_t bl = 4 * ((n + 2) / 3) + 1;
    char stack[4 * ((LIVE_PAYLOAD_MAX + 2) / 3) + 1], *b = bl <= sizeof stack ? stack : malloc(bl);
    if (!b) return;
    EVP_EncodeBlock((unsigned char *)b, p, (int)n);
    cJSON_AddStringToObject(o, "payload_base64", b);
    if (b != stack) free(b);
}

/* ---- reading ---- */

thz_err live_messages(int64_t tenant, const char *id, int limit, cJSON **out)
{
    if (limit < 1) limit = 1;
    if (limit > LIVE_RING_SLOTS) limit = LIVE_RING_SLOTS;
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "messages");
    if (!arr) {
        cJSON_Delete(o);
        return THZ_ENOMEM;
    }
    size_t idlen = strlen(id);
    char key[8 + REG_ID_MAX];
    ring *g = NULL;
    if (idlen >= 1 && idlen <= REG_ID_MAX) {
        size_t kl = make_key(key, tenant, id, idlen);
        pthread_rwlock_rdlock(&rings_mu);
        g = hmap_get(&rings, key, kl);
        pthread_rwlock_unlock(&rings_mu);
    }
    if (g) {
        pthread_mutex_lock(&g->mu);
        uint64_t have = g->n < LIVE_RING_SLOTS ? g->n : LIVE_RING_SLOTS;
        for (uint64_t k = 0; k < have && k < (uint64_t)limit; k++) {
            const slot *s = &g->s[(g->n - 1 - k) % LIVE_RING_SLOTS];
            cJSON *m = cJSON_CreateObject();
            if (!m) break;
            char t[64];
            live__fmt_ms(s->ms, t);
            cJSON_AddStringToObject(m, "time", t);
            char topic[LIVE_TOPIC_MAX + 1];
            memcpy(topic, s->buf, s->tlen);
            topic[s->tlen] = 0;
            cJSON_AddStringToObject(m, "topic", topic);
            cJSON_AddNumberToObject(m, "qos", s->qos);
            cJSON_AddBoolToObject(m, "retain", s->retain);
            bool trunc = s->plen < s->size;
            live_payload_json(m, (const uint8_t *)s->buf + s->tlen, s->plen, trunc);
            cJSON_AddNumberToObject(m, "size", s->size);
            cJSON_AddBoolToObject(m, "truncated", trunc);
            cJSON_AddItemToArray(arr, m);
        }
        pthread_mutex_unlock(&g->mu);
    }
    *out = o;
    return THZ_OK;
}
