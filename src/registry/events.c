/* events.c - the connection history of devices: presence changes queued in
 * memory by the broker's threads, written in batches to device_events by the
 * background thread (the newest REG_EVENTS_KEPT per device kept), read by
 * reg_device_events; and the presence observer. */
#include "registry/reg_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

/* Queued events beyond this are dropped (oldest first) until the background
 * thread catches up: a reconnect storm cannot grow the queue without bound. */
#define EV_QUEUE_MAX 20000

typedef struct reg_event {
    int64_t tenant, at;
    bool online;
    char *zDevice, *zAddr, *zProto, *zClientId, *zReason;
} reg_event;

static void ev_free(reg_event *e)
{
    free(e->zDevice);
    free(e->zAddr);
    free(e->zProto);
    free(e->zClientId);
    free(e->zReason);
}

static const char *proto_name(int v)
{
    return v == 3 ? "MQTT 3.1" : v == 4 ? "MQTT 3.1.1" : v == 5 ? "MQTT 5.0" : NULL;
}

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

void reg_on_presence(registry *r, reg_presence_fn fn, void *ctx)
{
    pthread_mutex_lock(&r->evMu);
    r->onPresence = fn;
    r->presenceCtx = ctx;
    pthread_mutex_unlock(&r->evMu);
}

void reg__event(registry *r, reg_dev *d, bool online, int64_t at, const char *address,
                int protocol_version, const char *client_id, const char *reason)
{
    const char *proto = proto_name(protocol_version);
    reg_event e = {.tenant = d->tenant,
                   .at = at,
                   .online = online,
                   .zDevice = strdup(d->zId),
                   .zAddr = dup_or_null(address),
                   .zProto = dup_or_null(proto),
                   .zClientId = client_id && *client_id ? strndup(client_id, 256) : NULL,
                   .zReason = online ? NULL : dup_or_null(reason)};
    pthread_mutex_lock(&r->evMu);
    reg_presence_fn fn = r->onPresence;
    void *ctx = r->presenceCtx;
    if (e.zDevice && r->nEv == r->capEv && r->capEv < EV_QUEUE_MAX) {
        size_t c = r->capEv ? r->capEv * 2 : 64;
        if (c > EV_QUEUE_MAX) c = EV_QUEUE_MAX;
        reg_event *p = realloc(r->ev, c * sizeof *p);
        if (p) {
            r->ev = p;
            r->capEv = c;
        }
    }
    if (e.zDevice && r->nEv == r->capEv && r->nEv > 0) {
        /* full: the oldest queued event goes */
        ev_free(&r->ev[0]);
        memmove(r->ev, r->ev + 1, (r->nEv - 1) * sizeof *r->ev);
        r->nEv--;
        log_warn("registry", "connection event queue full; the oldest event was dropped");
    }
    bool queued = false;
    if (e.zDevice && r->nEv < r->capEv) {
        r->ev[r->nEv++] = e;
        queued = true;
    }
    pthread_mutex_unlock(&r->evMu);
    if (fn) {
        reg_presence_event pe = {.tenant = d->tenant,
                                 .device = d->zId,
                                 .online = online,
                                 .time_ms = at,
                                 .address = address && *address ? address : NULL,
                                 .protocol = proto,
                                 .client_id = client_id && *client_id ? client_id : NULL,
                                 .reason = online ? NULL : reason};
        fn(&pe, ctx);
    }
    if (!queued) ev_free(&e);
}

static void bind_opt(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

void reg__persist_events(registry *r)
{
    pthread_mutex_lock(&r->persistMu);
    pthread_mutex_lock(&r->evMu);
    reg_event *ev = r->ev;
    size_t n = r->nEv;
    r->ev = NULL;
    r->nEv = r->capEv = 0;
    pthread_mutex_unlock(&r->evMu);
    if (n == 0) {
        pthread_mutex_unlock(&r->persistMu);
        return;
    }
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *ins = NULL, *trim = NULL;
    /* An event of a device deleted meanwhile is skipped, not an error. */
    int rc = sqlite3_prepare_v2(r->db,
                                "INSERT INTO device_events(tenant_id, device_id, time, type,"
                                " address, protocol, client_id, reason)"
                                " SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE EXISTS"
                                " (SELECT 1 FROM devices WHERE tenant_id = ?1 AND id = ?2)",
                                -1, &ins, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(r->db,
                                "DELETE FROM device_events WHERE tenant_id = ?1 AND device_id = ?2"
                                " AND id <= (SELECT id FROM device_events WHERE tenant_id = ?1"
                                " AND device_id = ?2 ORDER BY id DESC LIMIT 1 OFFSET ?3)",
                                -1, &trim, NULL);
    thz_err e = rc == SQLITE_OK ? reg__exec(r->db, "BEGIN IMMEDIATE")
                                : reg__sql_err(r->db, rc, "prepare device events");
    for (size_t i = 0; e == THZ_OK && i < n; i++) {
        reg_event *p = &ev[i];
        sqlite3_bind_int64(ins, 1, p->tenant);
        sqlite3_bind_text(ins, 2, p->zDevice, -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 3, p->at);
        sqlite3_bind_text(ins, 4, p->online ? "connected" : "disconnected", -1, SQLITE_STATIC);
        bind_opt(ins, 5, p->zAddr);
        bind_opt(ins, 6, p->zProto);
        bind_opt(ins, 7, p->zClientId);
        bind_opt(ins, 8, p->zReason);
        if (sqlite3_step(ins) != SQLITE_DONE)
            e = reg__sql_err(r->db, sqlite3_extended_errcode(r->db), "insert device event");
        sqlite3_reset(ins);
        /* Trim once per device of the batch: at its last event. */
        bool last = true;
        for (size_t j = i + 1; j < n && last; j++)
            if (ev[j].tenant == p->tenant && strcmp(ev[j].zDevice, p->zDevice) == 0) last = false;
        if (e == THZ_OK && last) {
            sqlite3_bind_int64(trim, 1, p->tenant);
            sqlite3_bind_text(trim, 2, p->zDevice, -1, SQLITE_STATIC);
            sqlite3_bind_int(trim, 3, REG_EVENTS_KEPT);
            if (sqlite3_step(trim) != SQLITE_DONE)
                e = reg__sql_err(r->db, sqlite3_extended_errcode(r->db), "trim device events");
            sqlite3_reset(trim);
        }
    }
    if (e == THZ_OK) e = reg__exec(r->db, "COMMIT");
    if (e != THZ_OK) {
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
        log_error("registry", "writing %zu connection events failed (%s); they are lost", n,
                  thz_strerror(e));
    }
    sqlite3_finalize(ins);
    sqlite3_finalize(trim);
    pthread_mutex_unlock(&r->dbMu);
    pthread_mutex_unlock(&r->persistMu);
    for (size_t i = 0; i < n; i++) ev_free(&ev[i]);
    free(ev);
}

void reg__events_free(registry *r)
{
    for (size_t i = 0; i < r->nEv; i++) ev_free(&r->ev[i]);
    free(r->ev);
    r->ev = NULL;
    r->nEv = r->capEv = 0;
}

static void add_col(cJSON *o, const char *name, sqlite3_stmt *st, int col)
{
    const unsigned char *s = sqlite3_column_text(st, col);
    if (s) cJSON_AddStringToObject(o, name, (const char *)s);
}

thz_err reg_device_events(registry *r, int64_t tenant, const char *id, int limit, cJSON **out)
{
    if (id == NULL) return THZ_ENOTFOUND;
    pthread_rwlock_rdlock(&r->lock);
    bool known = reg__dev_find(r, tenant, id) != NULL;
    pthread_rwlock_unlock(&r->lock);
    if (!known) return THZ_ENOTFOUND;
    if (limit < 1) limit = 1;
    if (limit > 500) limit = 500;
    reg__persist_events(r);
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "SELECT time, type, address, protocol, client_id, reason"
                                " FROM device_events WHERE tenant_id = ? AND device_id = ?"
                                " ORDER BY id DESC LIMIT ?",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        thz_err e = reg__sql_err(r->db, rc, "device events");
        pthread_mutex_unlock(&r->dbMu);
        return e;
    }
    sqlite3_bind_int64(st, 1, tenant);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, limit);
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "events");
    thz_err e = arr ? THZ_OK : THZ_ENOMEM;
    while (e == THZ_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *ev = cJSON_CreateObject();
        if (!ev) {
            e = THZ_ENOMEM;
            break;
        }
        cJSON_AddItemToObject(ev, "time", reg__time_json(sqlite3_column_int64(st, 0)));
        add_col(ev, "type", st, 1);
        add_col(ev, "address", st, 2);
        add_col(ev, "protocol", st, 3);
        add_col(ev, "client_id", st, 4);
        add_col(ev, "reason", st, 5);
        cJSON_AddItemToArray(arr, ev);
    }
    if (e == THZ_OK && rc != SQLITE_DONE) e = reg__sql_err(r->db, rc, "device events");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dbMu);
    if (e != THZ_OK) {
        cJSON_Delete(o);
        return e;
    }
    *out = o;
    return THZ_OK;
}
