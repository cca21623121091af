/* dashboards.c - the web dashboards of a tenant: a title and an opaque JSON
 * definition (the web UI's panels, variables and time range), stored as
 * text in the dashboards table. Only SQL: nothing is mirrored in memory. */
#include "registry/reg_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Validates body into a title (borrowed) and the printed definition (the
 * caller frees it). */
static thz_err parse_body(const cJSON *body, const char **title, char **def, char *err)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(body, "title");
    if (!cJSON_IsString(t)) {
        reg__err(err, "title is required: a string of 1..%d characters", REG_DASHBOARD_TITLE_MAX);
        return THZ_EINVAL;
    }
    /* characters, not bytes: count UTF-8 lead bytes */
    size_t chars = 0;
    for (const unsigned char *p = (const unsigned char *)t->valuestring; *p; p++)
        chars += (*p & 0xC0) != 0x80;
    if (chars < 1 || chars > REG_DASHBOARD_TITLE_MAX) {
        reg__err(err, "title must be 1..%d characters", REG_DASHBOARD_TITLE_MAX);
        return THZ_EINVAL;
    }
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(body, "definition");
    if (!cJSON_IsObject(d)) {
        reg__err(err, "definition is required: a JSON object");
        return THZ_EINVAL;
    }
    char *s = cJSON_PrintUnformatted(d);
    if (!s) return THZ_ENOMEM;
    if (strlen(s) > REG_DASHBOARD_DEF_MAX) {
        cJSON_free(s);
        reg__err(err, "definition is larger than %d KiB", REG_DASHBOARD_DEF_MAX / 1024);
        return THZ_EINVAL;
    }
    *title = t->valuestring;
    *def = s;
    return THZ_OK;
}

/* The object of the row the statement is on: id, title, definition?,
 * created_at, updated_at (columns in that order; definition only when full). */
static cJSON *row_json(sqlite3_stmt *st, bool full)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    int k = 0;
    cJSON_AddNumberToObject(o, "id", (double)sqlite3_column_int64(st, k++));
    cJSON_AddStringToObject(o, "title", (const char *)sqlite3_column_text(st, k++));
    if (full) {
        const char *def = (const char *)sqlite3_column_text(st, k++);
        cJSON *d = def ? cJSON_Parse(def) : NULL;
        cJSON_AddItemToObject(o, "definition", d ? d : cJSON_CreateObject());
    }
    cJSON_AddItemToObject(o, "created_at", reg__time_json(sqlite3_column_int64(st, k++)));
    cJSON_AddItemToObject(o, "updated_at", reg__time_json(sqlite3_column_int64(st, k++)));
    return o;
}

thz_err reg_dashboard_list(registry *r, int64_t tenant, cJSON **out)
{
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "SELECT id, title, created_at, updated_at FROM dashboards"
                                " WHERE tenant_id = ? ORDER BY id",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        thz_err e = reg__sql_err(r->db, rc, "list dashboards");
        pthread_mutex_unlock(&r->dbMu);
        return e;
    }
    sqlite3_bind_int64(st, 1, tenant);
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "dashboards");
    thz_err e = arr ? THZ_OK : THZ_ENOMEM;
    while (e == THZ_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *d = row_json(st, false);
        if (!d)
            e = THZ_ENOMEM;
        else
            cJSON_AddItemToArray(arr, d);
    }
    if (e == THZ_OK && rc != SQLITE_DONE) e = reg__sql_err(r->db, rc, "list dashboards");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&r->dbMu);
    if (e) {
        cJSON_Delete(o);
        return e;
    }
    *out = o;
    return THZ_OK;
}

/* Reads one dashboard; the caller holds dbMu. */
static thz_err get_locked(registry *r, int64_t tenant, int64_t id, cJSON **out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "SELECT id, title, definition, created_at, updated_at"
                                " FROM dashboards WHERE tenant_id = ? AND id = ?",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "get dashboard");
    sqlite3_bind_int64(st, 1, tenant);
    sqlite3_bind_int64(st, 2, id);
    thz_err e = THZ_OK;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = row_json(st, true);
        if (!*out) e = THZ_ENOMEM;
    } else {
        e = rc == SQLITE_DONE ? THZ_ENOTFOUND : reg__sql_err(r->db, rc, "get dashboard");
    }
    sqlite3_finalize(st);
    return e;
}

thz_err reg_dashboard_get(registry *r, int64_t tenant, int64_t id, cJSON **out)
{
    pthread_mutex_lock(&r->dbMu);
    thz_err e = get_locked(r, tenant, id, out);
    pthread_mutex_unlock(&r->dbMu);
    return e;
}

thz_err reg_dashboard_create(registry *r, int64_t tenant, const cJSON *body, cJSON **out,
                             char err[REG_ERR_LEN])
{
    const char *title;
    char *def;
    thz_err e = parse_body(body, &title, &def, err);
    if (e) return e;
    int64_t now = reg__now_ms();
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(r->db, "SELECT count(*) FROM dashboards WHERE tenant_id = ?", -1,
                                &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, tenant);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW && sqlite3_column_int64(st, 0) >= REG_DASHBOARDS_MAX) {
            e = THZ_EQUOTA;
            reg__err(err, "a tenant may have at most %d dashboards", REG_DASHBOARDS_MAX);
        } else if (rc != SQLITE_ROW) {
            e = reg__sql_err(r->db, rc, "count dashboards");
        }
    } else {
        e = reg__sql_err(r->db, rc, "count dashboards");
    }
    sqlite3_finalize(st);
    st = NULL;
    if (e == THZ_OK) {
        rc = sqlite3_prepare_v2(r->db,
                                "INSERT INTO dashboards(tenant_id, title, definition, created_at,"
                                " updated_at) VALUES(?, ?, ?, ?, ?)",
                                -1, &st, NULL);
        if (rc == SQLITE_OK) {
            sqlite3_bind_int64(st, 1, tenant);
            sqlite3_bind_text(st, 2, title, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, def, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 4, now);
            sqlite3_bind_int64(st, 5, now);
            rc = sqlite3_step(st);
        }
        e = rc == SQLITE_DONE ? THZ_OK : reg__sql_err(r->db, rc, "create dashboard");
        sqlite3_finalize(st);
    }
    if (e == THZ_OK) e = get_locked(r, tenant, sqlite3_last_insert_rowid(r->db), out);
    pthread_mutex_unlock(&r->dbMu);
    cJSON_free(def);
    return e;
}

thz_err reg_dashboard_update(registry *r, int64_t tenant, int64_t id, const cJSON *body,
                             cJSON **out, char err[REG_ERR_LEN])
{
    const char *title;
    char *def;
    thz_err e = parse_body(body, &title, &def, err);
    if (e) return e;
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "UPDATE dashboards SET title = ?, definition = ?, updated_at = ?"
                                " WHERE tenant_id = ? AND id = ?",
                                -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, title, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, def, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, reg__now_ms());
        sqlite3_bind_int64(st, 4, tenant);
        sqlite3_bind_int64(st, 5, id);
        rc = sqlite3_step(st);
    }
    e = rc == SQLITE_DONE ? THZ_OK : reg__sql_err(r->db, rc, "update dashboard");
    sqlite3_finalize(st);
    if (e == THZ_OK && sqlite3_changes(r->db) == 0) e = THZ_ENOTFOUND;
    if (e == THZ_OK) e = get_locked(r, tenant, id, out);
    pthread_mutex_unlock(&r->dbMu);
    cJSON_free(def);
    return e;
}

thz_err reg_dashboard_delete(registry *r, int64_t tenant, int64_t id)
{
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db, "DELETE FROM dashboards WHERE tenant_id = ? AND id = ?", -1,
                                &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, tenant);
        sqlite3_bind_int64(st, 2, id);
        rc = sqlite3_step(st);
    }
    thz_err e = rc == SQLITE_DONE ? THZ_OK : reg__sql_err(r->db, rc, "delete dashboard");
    sqlite3_finalize(st);
    if (e == THZ_OK && sqlite3_changes(r->db) == 0) e = THZ_ENOTFOUND;
    pthread_mutex_unlock(&r->dbMu);
    return e;
}
