/* presence.c - what the broker holds of a connected device (reference
 * counted reg_dev), its presence and traffic counters, the background thread
 * that persists presence and token last-used times, and the fleet summary. */
#include "registry/reg_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"

#define PERSIST_MS 2000

/* ---------------------------------------------------------------- reg_dev */

reg_dev *reg__dev_new(int64_t tenant, const char *id)
{
    reg_dev *d = calloc(1, sizeof *d);
    if (d == NULL) return NULL;
    if ((d->zId = strdup(id)) == NULL) {
        free(d);
        return NULL;
    }
    atomic_init(&d->refs, 1);
    d->tenant = tenant;
    pthread_mutex_init(&d->pmu, NULL);
    return d;
}

void reg__dev_retain(reg_dev *d)
{
    atomic_fetch_add_explicit(&d->refs, 1, memory_order_relaxed);
}

void reg_dev_release(reg_dev *d)
{
    if (d == NULL || atomic_fetch_sub_explicit(&d->refs, 1, memory_order_acq_rel) != 1) return;
    free(d->zId);
    free(d->zName);
    free(d->zType);
    cJSON_Delete(d->tags);
    cJSON_Delete(d->attrs);
    cJSON_Delete(d->groups);
    free(d->zReason);
    free(d->zClientId);
    free(d->zTelemetryError);
    pthread_mutex_destroy(&d->pmu);
    free(d);
}

static void totals(reg_dev *d, uint64_t out[CNT_N])
{
    for (int i = 0; i < CNT_N; i++)
        out[i] = atomic_load_explicit(&d->base[i], memory_order_relaxed) +
                 atomic_load_explicit(&d->live[i], memory_order_relaxed);
}

void reg__presence_json(reg_dev *d, cJSON *o)
{
    static const char *const live[CNT_N] = {"messages_in", "messages_out", "bytes_in", "bytes_out"};
    static const char *const tot[CNT_N] = {"messages_in_total", "messages_out_total",
                                           "bytes_in_total", "bytes_out_total"};
    pthread_mutex_lock(&d->pmu);
    bool on = d->online;
    cJSON_AddBoolToObject(o, "online", on);
    cJSON_AddItemToObject(o, "connected_since", reg__time_json(on ? d->connectedSince : 0));
    cJSON_AddItemToObject(o, "last_seen", reg__time_json(on ? reg__now_ms() : d->lastSeen));
    if (on) {
        cJSON_AddStringToObject(o, "client_address", d->zAddr);
        cJSON_AddNumberToObject(o, "protocol_version", d->protocolVersion);
        cJSON_AddNumberToObject(o, "keep_alive", d->keepAlive);
    } else {
        cJSON_AddNullToObject(o, "client_address");
        cJSON_AddNullToObject(o, "protocol_version");
        cJSON_AddNullToObject(o, "keep_alive");
    }
    uint64_t t[CNT_N];
    totals(d, t);
    for (int i = 0; i < CNT_N; i++)
        cJSON_AddNumberToObject(o, live[i],
                                (double)atomic_load_explicit(&d->live[i], memory_order_relaxed));
    for (int i = 0; i < CNT_N; i++) cJSON_AddNumberToObject(o, tot[i], (double)t[i]);
    if (d->zReason)
        cJSON_AddStringToObject(o, "last_disconnect_reason", d->zReason);
    else
        cJSON_AddNullToObject(o, "last_disconnect_reason");
    cJSON_AddNumberToObject(o, "presence_version", (double)d->version);
    cJSON_AddNumberToObject(o, "telemetry_errors", (double)d->telemetryErrors);
    if (d->zTelemetryError)
        cJSON_AddStringToObject(o, "last_telemetry_error", d->zTelemetryError);
    else
        cJSON_AddNullToObject(o, "last_telemetry_error");
    pthread_mutex_unlock(&d->pmu);
}

/* ---------------------------------------------------------------- presence */

uint64_t reg_presence_connect(registry *r, reg_dev *d, const reg_conn_info *ci)
{
    char *cid = ci && ci->client_id ? strndup(ci->client_id, 256) : NULL;
    pthread_mutex_lock(&d->pmu);
    /* The counters since connect start again; what they held moves into the totals. */
    for (int i = 0; i < CNT_N; i++) {
        uint64_t v = atomic_exchange_explicit(&d->live[i], 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&d->base[i], v, memory_order_relaxed);
    }
    d->online = true;
    d->connectedSince = reg__now_ms();
    snprintf(d->zAddr, sizeof d->zAddr, "%s", ci && ci->address ? ci->address : "");
    d->protocolVersion = ci ? ci->protocol_version : 0;
    d->keepAlive = ci ? ci->keep_alive : 0;
    uint64_t v = d->connVersion = ++d->version;
    d->dirty = true;
    free(d->zClientId);
    d->zClientId = cid;
    int64_t at = d->connectedSince;
    pthread_mutex_unlock(&d->pmu);
    if (r)
        reg__event(r, d, true, at, ci ? ci->address : NULL, ci ? ci->protocol_version : 0,
                   ci ? ci->client_id : NULL, NULL);
    return v;
}

uint64_t reg_presence_disconnect(registry *r, reg_dev *d, uint64_t version, const char *reason)
{
    char *z = strdup(reason ? reason : "");
    uint64_t v = 0;
    char addr[64], cid[260] = "";
    int pv = 0;
    int64_t at = 0;
    pthread_mutex_lock(&d->pmu);
    /* A takeover connects the new connection before the old one closes: the
     * old close names an older version and changes nothing. */
    if (d->online && version == d->connVersion) {
        d->online = false;
        d->lastSeen = reg__now_ms();
        free(d->zReason);
        d->zReason = z;
        z = NULL;
        v = ++d->version;
        d->dirty = true;
        memcpy(addr, d->zAddr, sizeof addr);
        snprintf(cid, sizeof cid, "%s", d->zClientId ? d->zClientId : "");
        pv = d->protocolVersion;
        at = d->lastSeen;
    }
    pthread_mutex_unlock(&d->pmu);
    free(z);
    if (v && r) reg__event(r, d, false, at, addr, pv, cid[0] ? cid : NULL, reason);
    return v;
}

void reg_presence_count(reg_dev *d, uint64_t msgs_in, uint64_t bytes_in, uint64_t msgs_out,
                        uint64_t bytes_out)
{
    atomic_fetch_add_explicit(&d->live[CNT_MSGS_IN], msgs_in, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->live[CNT_BYTES_IN], bytes_in, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->live[CNT_MSGS_OUT], msgs_out, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->live[CNT_BYTES_OUT], bytes_out, memory_order_relaxed);
}

/* ---------------------------------------------------------------- persisting */

typedef struct pres_row {
    int64_t tenant;
    char *zId, *zReason;
    int64_t lastSeen, connectedSince;
    uint64_t tot[CNT_N];
    uint64_t version;
} pres_row;

typedef struct used_row {
    int64_t id, at;
} used_row;

void reg__persist(registry *r)
{
    /* One persister at a time, so an older snapshot never overwrites a newer one. */
    pthread_mutex_lock(&r->persistMu);
    pres_row *rows = NULL;
    used_row *used = NULL;
    size_t nRows = 0, capRows = 0, nUsed = 0, capUsed = 0;
    int64_t now = reg__now_ms();

    pthread_rwlock_rdlock(&r->lock);
    size_t pos = 0;
    for (hmap_entry *e = hmap_next(&r->tenants, &pos, NULL); e;
         e = hmap_next(&r->tenants, &pos, e)) {
        reg_tenant *t = e->val;
        for (size_t i = 0; i < t->nDev; i++) {
            reg_dev *d = t->sorted[i];
            pthread_mutex_lock(&d->pmu);
            uint64_t tot[CNT_N];
            totals(d, tot);
            bool changed = d->dirty || memcmp(tot, d->persisted, sizeof tot) != 0;
            if (changed && nRows == capRows) {
                size_t c = capRows ? capRows * 2 : 64;
                pres_row *p = realloc(rows, c * sizeof *p);
                if (p) {
                    rows = p;
                    capRows = c;
                }
            }
            if (changed && nRows < capRows) {
                pres_row *p = &rows[nRows++];
                p->tenant = d->tenant;
                p->zId = strdup(d->zId);
                p->zReason = d->zReason ? strdup(d->zReason) : NULL;
                p->lastSeen = d->online ? now : d->lastSeen;
                p->connectedSince = d->online ? d->connectedSince : 0;
                memcpy(p->tot, tot, sizeof tot);
                p->version = d->version;
                memcpy(d->persisted, tot, sizeof tot);
                d->dirty = false;
            }
            pthread_mutex_unlock(&d->pmu);
        }
    }
    pos = 0;
    for (hmap_entry *e = hmap_next(&r->tokById, &pos, NULL); e;
         e = hmap_next(&r->tokById, &pos, e)) {
        reg_tok *t = e->val;
        if (!atomic_load_explicit(&t->usedDirty, memory_order_relaxed)) continue;
        if (nUsed == capUsed) {
            size_t c = capUsed ? capUsed * 2 : 64;
            used_row *p = realloc(used, c * sizeof *p);
            if (p == NULL) break;
            used = p;
            capUsed = c;
        }
        atomic_store_explicit(&t->usedDirty, false, memory_order_relaxed);
        used[nUsed++] = (used_row){t->id, atomic_load_explicit(&t->lastUsed, memory_order_relaxed)};
    }
    pthread_rwlock_unlock(&r->lock);

    if (nRows || nUsed) {
        pthread_mutex_lock(&r->dbMu);
        thz_err e = reg__exec(r->db, "BEGIN IMMEDIATE");
        for (size_t i = 0; e == THZ_OK && i < nRows; i++) {
            pres_row *p = &rows[i];
            if (p->zId == NULL) continue;
            sqlite3_stmt *st = r->stPresence;
            if (p->lastSeen)
                sqlite3_bind_int64(st, 1, p->lastSeen);
            else
                sqlite3_bind_null(st, 1);
            if (p->connectedSince)
                sqlite3_bind_int64(st, 2, p->connectedSince);
            else
                sqlite3_bind_null(st, 2);
            if (p->zReason)
                sqlite3_bind_text(st, 3, p->zReason, -1, SQLITE_STATIC);
            else
                sqlite3_bind_null(st, 3);
            for (int k = 0; k < CNT_N; k++) sqlite3_bind_int64(st, 4 + k, (int64_t)p->tot[k]);
            sqlite3_bind_int64(st, 8, (int64_t)p->version);
            sqlite3_bind_int64(st, 9, p->tenant);
            sqlite3_bind_text(st, 10, p->zId, -1, SQLITE_STATIC);
            if (sqlite3_step(st) != SQLITE_DONE)
                e = reg__sql_err(r->db, sqlite3_extended_errcode(r->db), "persist presence");
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
        }
        for (size_t i = 0; e == THZ_OK && i < nUsed; i++) {
            sqlite3_stmt *st = r->stTokUsed;
            sqlite3_bind_int64(st, 1, used[i].at);
            sqlite3_bind_int64(st, 2, used[i].id);
            if (sqlite3_step(st) != SQLITE_DONE)
                e = reg__sql_err(r->db, sqlite3_extended_errcode(r->db), "persist token use");
            sqlite3_reset(st);
        }
        if (e == THZ_OK) e = reg__exec(r->db, "COMMIT");
        if (e != THZ_OK) {
            sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
            log_error("registry", "persisting presence failed (%s); retried at the next change",
                      thz_strerror(e));
        }
        pthread_mutex_unlock(&r->dbMu);
    }
    for (size_t i = 0; i < nRows; i++) {
        free(rows[i].zId);
        free(rows[i].zReason);
    }
    free(rows);
    free(used);
    pthread_mutex_unlock(&r->persistMu);
}

/* Samples each tenant's message totals into rates; background thread only. */
static void sample_rates(registry *r)
{
    int64_t now = reg__now_ms();
    pthread_rwlock_rdlock(&r->lock);
    size_t pos = 0;
    for (hmap_entry *e = hmap_next(&r->tenants, &pos, NULL); e;
         e = hmap_next(&r->tenants, &pos, e)) {
        reg_tenant *t = e->val;
        uint64_t in = 0, out = 0;
        for (size_t i = 0; i < t->nDev; i++) {
            uint64_t tot[CNT_N];
            totals(t->sorted[i], tot);
            in += tot[CNT_MSGS_IN];
            out += tot[CNT_MSGS_OUT];
        }
        if (t->prevMs && now > t->prevMs) {
            double dt = (double)(now - t->prevMs) / 1000.0;
            /* A deleted device takes its totals along: never a negative rate. */
            atomic_store(&t->inRate, in >= t->prevIn ? (double)(in - t->prevIn) / dt : 0.0);
            atomic_store(&t->outRate, out >= t->prevOut ? (double)(out - t->prevOut) / dt : 0.0);
        }
        t->prevIn = in;
        t->prevOut = out;
        t->prevMs = now;
    }
    pthread_rwlock_unlock(&r->lock);
}

static void *bg_main(void *arg)
{
    registry *r = arg;
    for (;;) {
        pthread_mutex_lock(&r->bgMu);
        if (!r->bgStop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += PERSIST_MS / 1000;
            while (!r->bgStop && pthread_cond_timedwait(&r->bgCond, &r->bgMu, &ts) != ETIMEDOUT)
                ;
        }
        bool stop = r->bgStop;
        pthread_mutex_unlock(&r->bgMu);
        if (stop) break;
        reg__persist(r);
        reg__persist_events(r);
        sample_rates(r);
        reg__sweep_tokens(r);
    }
    return NULL;
}

thz_err reg__bg_start(registry *r)
{
    sample_rates(r);
    if (pthread_create(&r->bg, NULL, bg_main, r) != 0) return THZ_EIO;
    r->bgStarted = true;
    return THZ_OK;
}

void reg__bg_stop(registry *r)
{
    if (r->bgStarted) {
        pthread_mutex_lock(&r->bgMu);
        r->bgStop = true;
        pthread_cond_signal(&r->bgCond);
        pthread_mutex_unlock(&r->bgMu);
        pthread_join(r->bg, NULL);
        r->bgStarted = false;
        reg__persist(r);
        reg__persist_events(r);
    }
}

/* ---------------------------------------------------------------- fleet */

bool reg_device_exists(registry *r, int64_t tenant, const char *id, size_t idlen)
{
    char key[REG_ID_MAX + 1];
    if (idlen == 0 || idlen > REG_ID_MAX) return false;
    memcpy(key, id, idlen);
    key[idlen] = 0;
    pthread_rwlock_rdlock(&r->lock);
    bool found = reg__dev_find(r, tenant, key) != NULL;
    pthread_rwlock_unlock(&r->lock);
    return found;
}

thz_err reg_fleet_counters(registry *r, int64_t tenant, reg_counters_fn fn, void *ctx)
{
    int64_t now = reg__now_ms();
    pthread_rwlock_rdlock(&r->lock);
    reg_tenant *t = reg__tenant(r, tenant);
    if (t == NULL) {
        pthread_rwlock_unlock(&r->lock);
        return THZ_ENOTFOUND;
    }
    for (size_t i = 0; i < t->nDev; i++) {
        reg_dev *d = t->sorted[i];
        uint64_t tot[CNT_N];
        totals(d, tot);
        reg_dev_counters c = {.id = d->zId, .msgs_in = tot[CNT_MSGS_IN]};
        pthread_mutex_lock(&d->pmu);
        c.online = d->online;
        c.last_seen_ms = d->online ? now : d->lastSeen;
        pthread_mutex_unlock(&d->pmu);
        fn(ctx, &c);
    }
    pthread_rwlock_unlock(&r->lock);
    return THZ_OK;
}

thz_err reg_fleet_summary(registry *r, int64_t tenant, cJSON **out)
{
    pthread_rwlock_rdlock(&r->lock);
    reg_tenant *t = reg__tenant(r, tenant);
    if (t == NULL) {
        pthread_rwlock_unlock(&r->lock);
        return THZ_ENOTFOUND;
    }
    size_t online = 0;
    for (size_t i = 0; i < t->nDev; i++) {
        pthread_mutex_lock(&t->sorted[i]->pmu);
        online += t->sorted[i]->online;
        pthread_mutex_unlock(&t->sorted[i]->pmu);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "devices", (double)t->nDev);
    cJSON_AddNumberToObject(o, "online", (double)online);
    cJSON_AddNumberToObject(o, "offline", (double)(t->nDev - online));
    cJSON_AddNumberToObject(o, "messages_in_per_s", atomic_load(&t->inRate));
    cJSON_AddNumberToObject(o, "messages_out_per_s", atomic_load(&t->outRate));
    pthread_rwlock_unlock(&r->lock);
    *out = o;
    return THZ_OK;
}
