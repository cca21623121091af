/* devices.c - devices and groups: validation of their JSON bodies, SQL, the
 * mirror's per-tenant tables, listing, and the broker's questions (MQTT
 * credentials and the publish/subscribe ACL). */
#include "registry/reg_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "mqtt/topic.h"

#define ID_RULE "a string of 1..128 characters [A-Za-z0-9_.:-]"

/* ---------------------------------------------------------------- sorted tables */

/* Index of the first element whose id is > key (after) or >= key. */
static size_t dev_bound(reg_dev *const *a, size_t n, const char *key, bool after)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(a[mid]->zId, key);
        if (c < 0 || (after && c == 0))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t group_bound(reg_group *const *a, size_t n, const char *key)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(a[mid]->zId, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static reg_group *group_find(const reg_tenant *t, const char *id)
{
    size_t i = group_bound(t->groups, t->nGroup, id);
    return i < t->nGroup && strcmp(t->groups[i]->zId, id) == 0 ? t->groups[i] : NULL;
}

static reg_dev *dev_find(registry *r, int64_t tenant, const char *id)
{
    reg_tenant *t = reg__tenant(r, tenant);
    return t ? hmap_get(&t->devs, id, strlen(id)) : NULL;
}

reg_dev *reg__dev_find(registry *r, int64_t tenant, const char *id)
{
    return dev_find(r, tenant, id);
}

static thz_err grow(void **a, size_t *cap, size_t n, size_t size)
{
    if (n < *cap) return THZ_OK;
    size_t c = *cap ? *cap * 2 : 16;
    void *p = realloc(*a, c * size);
    if (p == NULL) return THZ_ENOMEM;
    *a = p;
    *cap = c;
    return THZ_OK;
}

/* Under the write lock. Takes the caller's reference to d on success. */
static thz_err tenant_dev_add(registry *r, reg_tenant *t, reg_dev *d)
{
    if (grow((void **)&t->sorted, &t->capDev, t->nDev, sizeof *t->sorted) != THZ_OK)
        return THZ_ENOMEM;
    if (hmap_put(&t->devs, d->zId, strlen(d->zId), d, NULL) != THZ_OK) return THZ_ENOMEM;
    if (hmap_put(&r->secrets, d->secret, REG_HASH_LEN, d, NULL) != THZ_OK) {
        hmap_del(&t->devs, d->zId, strlen(d->zId));
        return THZ_ENOMEM;
    }
    size_t i = dev_bound(t->sorted, t->nDev, d->zId, false);
    memmove(t->sorted + i + 1, t->sorted + i, (t->nDev - i) * sizeof *t->sorted);
    t->sorted[i] = d;
    t->nDev++;
    return THZ_OK;
}

/* Under the write lock. Returns the mirror's reference for the caller to release. */
static reg_dev *tenant_dev_del(registry *r, reg_tenant *t, const char *id)
{
    reg_dev *d = hmap_del(&t->devs, id, strlen(id));
    if (d == NULL) return NULL;
    hmap_del_if(&r->secrets, d->secret, REG_HASH_LEN, d);
    size_t i = dev_bound(t->sorted, t->nDev, id, false);
    if (i < t->nDev && t->sorted[i] == d) {
        memmove(t->sorted + i, t->sorted + i + 1, (t->nDev - i - 1) * sizeof *t->sorted);
        t->nDev--;
    }
    d->deleted = true;
    return d;
}

static void group_free(reg_group *g)
{
    if (g == NULL) return;
    free(g->zId);
    free(g->zName);
    cJSON_Delete(g->query);
    cJSON_Delete(g->policy);
    free(g);
}

void reg__tenant_free(reg_tenant *t)
{
    for (size_t i = 0; i < t->nDev; i++) {
        t->sorted[i]->deleted = true;
        reg_dev_release(t->sorted[i]);
    }
    for (size_t i = 0; i < t->nGroup; i++) group_free(t->groups[i]);
    free(t->sorted);
    free(t->groups);
    hmap_free(&t->devs);
    free(t);
}

/* ---------------------------------------------------------------- membership and JSON */

static bool str_in_array(const cJSON *a, const char *z)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, a) if (cJSON_IsString(e) && strcmp(e->valuestring, z) == 0) return true;
    return false;
}

/* Under registry.lock. A query needs at least one pair: an empty one would
 * silently put every device of the tenant under the group's policy. */
static bool in_group(const reg_dev *d, const reg_group *g)
{
    if (str_in_array(d->groups, g->zId)) return true;
    if (g->query == NULL || g->query->child == NULL) return false;
    const cJSON *q;
    cJSON_ArrayForEach(q, g->query)
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(d->tags, q->string);
        if (!cJSON_IsString(q) || !cJSON_IsString(v) || strcmp(v->valuestring, q->valuestring))
            return false;
    }
    return true;
}

cJSON *reg__dev_json(const reg_dev *d)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", d->zId);
    cJSON_AddStringToObject(o, "name", d->zName);
    cJSON_AddStringToObject(o, "type", d->zType);
    cJSON_AddItemToObject(o, "tags", cJSON_Duplicate(d->tags, true));
    cJSON_AddItemToObject(o, "attributes", cJSON_Duplicate(d->attrs, true));
    cJSON_AddItemToObject(o, "groups", cJSON_Duplicate(d->groups, true));
    cJSON_AddBoolToObject(o, "enabled", d->enabled);
    cJSON_AddItemToObject(o, "created_at", reg__time_json(d->createdAt));
    cJSON_AddItemToObject(o, "updated_at", reg__time_json(d->updatedAt));
    reg__presence_json((reg_dev *)d, o);
    return o;
}

/* Under registry.lock. */
static cJSON *group_json(const reg_tenant *t, const reg_group *g)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", g->zId);
    cJSON_AddStringToObject(o, "name", g->zName);
    cJSON_AddItemToObject(o, "query",
                          g->query ? cJSON_Duplicate(g->query, true) : cJSON_CreateNull());
    cJSON_AddItemToObject(o, "policy", cJSON_Duplicate(g->policy, true));
    cJSON_AddItemToObject(o, "created_at", reg__time_json(g->createdAt));
    cJSON *a = cJSON_AddArrayToObject(o, "devices");
    for (size_t i = 0; i < t->nDev; i++)
        if (str_in_array(t->sorted[i]->groups, g->zId))
            cJSON_AddItemToArray(a, cJSON_CreateString(t->sorted[i]->zId));
    return o;
}

/* ---------------------------------------------------------------- validation */

static thz_err field_id(const cJSON *body, const char **out, char *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "id");
    if (!cJSON_IsString(v) || !reg__id_valid(v->valuestring)) {
        reg__err(err, "field 'id' must be " ID_RULE);
        return THZ_EINVAL;
    }
    *out = v->valuestring;
    return THZ_OK;
}

/* An object of at most REG_TAGS_MAX string values with distinct keys; a copy
 * into *out (NULL when absent or null). */
static thz_err field_string_map(const cJSON *body, const char *name, cJSON **out, char *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, name);
    *out = NULL;
    if (v == NULL || cJSON_IsNull(v)) return THZ_OK;
    if (!cJSON_IsObject(v)) goto bad;
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (++n > REG_TAGS_MAX || !cJSON_IsString(e) || e->string == NULL || !e->string[0] ||
            strlen(e->string) > REG_TAG_KEY_MAX || strlen(e->valuestring) > REG_TAG_VALUE_MAX ||
            strchr(e->string, '=') != NULL)
            goto bad;
        for (const cJSON *f = v->child; f != e; f = f->next)
            if (strcmp(f->string, e->string) == 0) goto bad;
    }
    if ((*out = cJSON_Duplicate(v, true)) == NULL) return THZ_ENOMEM;
    return THZ_OK;
bad:
    reg__err(err,
             "field '%s' must be an object of at most %d distinct keys (1..%d characters, no '=')"
             " with string values (at most %d characters)",
             name, REG_TAGS_MAX, REG_TAG_KEY_MAX, REG_TAG_VALUE_MAX);
    return THZ_EINVAL;
}

static int cmp_json_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* An array of distinct group ids, returned sorted (NULL when absent). */
static thz_err field_groups(const cJSON *body, cJSON **out, char *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "groups");
    *out = NULL;
    if (v == NULL || cJSON_IsNull(v)) return THZ_OK;
    int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (n < 0 || n > REG_GROUPS_MAX) goto bad;
    const char *ids[REG_GROUPS_MAX];
    int k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsString(e) || !reg__id_valid(e->valuestring)) goto bad;
        ids[k++] = e->valuestring;
    }
    if (k > 1) qsort(ids, (size_t)k, sizeof *ids, cmp_json_str);
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < k; i++)
        if (i == 0 || strcmp(ids[i], ids[i - 1]) != 0)
            cJSON_AddItemToArray(a, cJSON_CreateString(ids[i]));
    *out = a;
    return THZ_OK;
bad:
    reg__err(err, "field 'groups' must be an array of at most %d group ids (" ID_RULE ")",
             REG_GROUPS_MAX);
    return THZ_EINVAL;
}

typedef struct dev_body {
    const char *id, *name, *type;
    cJSON *tags, *attrs, *groups; /* owned copies, NULL when absent */
    char *zTags, *zAttrs;         /* their serializations */
    int enabled;                  /* -1 absent */
} dev_body;

static void dev_body_free(dev_body *b)
{
    cJSON_Delete(b->tags);
    cJSON_Delete(b->attrs);
    cJSON_Delete(b->groups);
    free(b->zTags);
    free(b->zAttrs);
}

static thz_err dev_body_parse(const cJSON *body, bool create, dev_body *b, char *err)
{
    memset(b, 0, sizeof *b);
    b->enabled = -1;
    if (!cJSON_IsObject(body)) {
        reg__err(err, "the body must be a JSON object");
        return THZ_EINVAL;
    }
    thz_err e = create ? field_id(body, &b->id, err) : THZ_OK;
    if (e == THZ_OK) e = reg__field_str(body, "name", REG_NAME_MAX, false, &b->name, err);
    if (e == THZ_OK) e = reg__field_str(body, "type", REG_NAME_MAX, false, &b->type, err);
    if (e == THZ_OK) e = field_string_map(body, "tags", &b->tags, err);
    if (e == THZ_OK) e = field_groups(body, &b->groups, err);
    if (e == THZ_OK) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "attributes");
        if (v && !cJSON_IsNull(v)) {
            if (!cJSON_IsObject(v)) {
                reg__err(err, "field 'attributes' must be an object");
                e = THZ_EINVAL;
            } else if ((b->zAttrs = cJSON_PrintUnformatted(v)) == NULL ||
                       (b->attrs = cJSON_Duplicate(v, true)) == NULL) {
                e = THZ_ENOMEM;
            } else if (strlen(b->zAttrs) > REG_ATTRS_MAX) {
                reg__err(err, "field 'attributes' must serialize to at most %d bytes",
                         REG_ATTRS_MAX);
                e = THZ_EINVAL;
            }
        }
    }
    if (e == THZ_OK) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "enabled");
        if (v && !cJSON_IsNull(v)) {
            if (!cJSON_IsBool(v)) {
                reg__err(err, "field 'enabled' must be a boolean");
                e = THZ_EINVAL;
            } else {
                b->enabled = cJSON_IsTrue(v);
            }
        }
    }
    if (e == THZ_OK && b->tags && (b->zTags = cJSON_PrintUnformatted(b->tags)) == NULL)
        e = THZ_ENOMEM;
    if (e != THZ_OK) dev_body_free(b);
    return e;
}

/* Under registry.lock: every group named exists in t. */
static thz_err groups_exist(const reg_tenant *t, const cJSON *groups, char *err)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, groups) if (group_find(t, e->valuestring) == NULL)
    {
        reg__err(err, "field 'groups': no group '%s'", e->valuestring);
        return THZ_EINVAL;
    }
    return THZ_OK;
}

/* ---------------------------------------------------------------- loading */

static cJSON *parse_or_empty(const unsigned char *z, bool array)
{
    cJSON *v = z ? cJSON_Parse((const char *)z) : NULL;
    if (v == NULL) v = array ? cJSON_CreateArray() : cJSON_CreateObject();
    return v;
}

static char *dup_text(const unsigned char *z)
{
    return strdup(z ? (const char *)z : "");
}

static thz_err load_groups(registry *r)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "SELECT tenant_id, id, name, query, policy, created_at"
                                " FROM \"groups\" ORDER BY tenant_id, id",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "loading groups");
    thz_err e = THZ_OK;
    while (e == THZ_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        reg_tenant *t = reg__tenant(r, sqlite3_column_int64(st, 0));
        if (t == NULL) continue;
        reg_group *g = calloc(1, sizeof *g);
        if (g == NULL || grow((void **)&t->groups, &t->capGroup, t->nGroup, sizeof *t->groups)) {
            free(g);
            e = THZ_ENOMEM;
            break;
        }
        g->zId = dup_text(sqlite3_column_text(st, 1));
        g->zName = dup_text(sqlite3_column_text(st, 2));
        g->query = sqlite3_column_type(st, 3) == SQLITE_NULL
                       ? NULL
                       : cJSON_Parse((const char *)sqlite3_column_text(st, 3));
        g->policy = parse_or_empty(sqlite3_column_text(st, 4), false);
        g->createdAt = sqlite3_column_int64(st, 5);
        t->groups[t->nGroup++] = g;
    }
    sqlite3_finalize(st);
    return e != THZ_OK ? e : rc == SQLITE_DONE ? THZ_OK : reg__sql_err(r->db, rc, "loading groups");
}

thz_err reg__load_devices(registry *r, char *err)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(
        r->db,
        "SELECT tenant_id, id, name, type, tags, attributes, enabled, secret_hash, created_at,"
        " updated_at, last_seen, last_disconnect_reason, msgs_in, msgs_out, bytes_in,"
        " bytes_out, presence_version FROM devices ORDER BY tenant_id, id",
        -1, &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "loading devices");
    thz_err e = THZ_OK;
    while (e == THZ_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        reg_tenant *t = reg__tenant(r, sqlite3_column_int64(st, 0));
        if (t == NULL || sqlite3_column_bytes(st, 7) != REG_HASH_LEN) continue;
        reg_dev *d = reg__dev_new(t->id, (const char *)sqlite3_column_text(st, 1));
        if (d == NULL) {
            e = THZ_ENOMEM;
            break;
        }
        d->zName = dup_text(sqlite3_column_text(st, 2));
        d->zType = dup_text(sqlite3_column_text(st, 3));
        d->tags = parse_or_empty(sqlite3_column_text(st, 4), false);
        d->attrs = parse_or_empty(sqlite3_column_text(st, 5), false);
        d->groups = cJSON_CreateArray();
        d->enabled = sqlite3_column_int(st, 6) != 0;
        memcpy(d->secret, sqlite3_column_blob(st, 7), REG_HASH_LEN);
        d->createdAt = sqlite3_column_int64(st, 8);
        d->updatedAt = sqlite3_column_int64(st, 9);
        d->lastSeen = sqlite3_column_int64(st, 10);
        if (sqlite3_column_type(st, 11) != SQLITE_NULL)
            d->zReason = dup_text(sqlite3_column_text(st, 11));
        for (int i = 0; i < CNT_N; i++) {
            d->persisted[i] = (uint64_t)sqlite3_column_int64(st, 12 + i);
            atomic_store(&d->base[i], d->persisted[i]);
        }
        d->version = (uint64_t)sqlite3_column_int64(st, 16);
        if (!d->zName || !d->zType || !d->tags || !d->attrs || !d->groups ||
            tenant_dev_add(r, t, d) != THZ_OK) {
            reg_dev_release(d);
            e = THZ_ENOMEM;
        }
    }
    sqlite3_finalize(st);
    if (e == THZ_OK && rc != SQLITE_DONE) e = reg__sql_err(r->db, rc, "loading devices");
    if (e == THZ_OK) e = load_groups(r);
    if (e == THZ_OK) {
        rc = sqlite3_prepare_v2(r->db,
                                "SELECT tenant_id, device_id, group_id FROM group_members"
                                " ORDER BY tenant_id, device_id, group_id",
                                -1, &st, NULL);
        if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "loading group members");
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            reg_dev *d =
                dev_find(r, sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1));
            if (d)
                cJSON_AddItemToArray(d->groups,
                                     cJSON_CreateString((const char *)sqlite3_column_text(st, 2)));
        }
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE) e = reg__sql_err(r->db, rc, "loading group members");
    }
    if (e != THZ_OK) reg__err(err, "loading devices: %s", thz_strerror(e));
    return e;
}

/* ---------------------------------------------------------------- device SQL */

static thz_err step_done(registry *r, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? THZ_OK : reg__sql_err(r->db, sqlite3_extended_errcode(r->db), what);
}

/* Replaces the static groups of a device; under dbMu in a transaction. */
static thz_err set_members(registry *r, int64_t tenant, const char *id, const cJSON *groups)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(
        r->db, "DELETE FROM group_members WHERE tenant_id = ? AND device_id = ?", -1, &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "set groups");
    sqlite3_bind_int64(st, 1, tenant);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    thz_err e = step_done(r, st, "set groups");
    const cJSON *g;
    cJSON_ArrayForEach(g, groups)
    {
        if (e != THZ_OK) break;
        rc = sqlite3_prepare_v2(r->db,
                                "INSERT INTO group_members(tenant_id, group_id, device_id)"
                                " VALUES (?,?,?)",
                                -1, &st, NULL);
        if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "set groups");
        sqlite3_bind_int64(st, 1, tenant);
        sqlite3_bind_text(st, 2, g->valuestring, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
        e = step_done(r, st, "set groups");
    }
    return e;
}

static void fire_revoke(registry *r, int64_t tenant, const char *id)
{
    pthread_rwlock_rdlock(&r->lock);
    reg_revoke_fn fn = r->onRevoke;
    void *ctx = r->revokeCtx;
    pthread_rwlock_unlock(&r->lock);
    if (fn) fn(tenant, id, ctx);
}

static void rollback(registry *r)
{
    sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
}

thz_err reg_device_create(registry *r, int64_t tenant, const cJSON *body, cJSON **out,
                          char err[REG_ERR_LEN])
{
    dev_body b;
    thz_err e = dev_body_parse(body, true, &b, err);
    if (e != THZ_OK) return e;
    char secret[REG_SECRET_TEXT];
    reg_dev *d = reg__dev_new(tenant, b.id);
    if (d == NULL) {
        dev_body_free(&b);
        return THZ_ENOMEM;
    }
    d->zName = strdup(b.name ? b.name : "");
    d->zType = strdup(b.type ? b.type : "");
    d->tags = b.tags ? b.tags : cJSON_CreateObject();
    d->attrs = b.attrs ? b.attrs : cJSON_CreateObject();
    d->groups = b.groups ? b.groups : cJSON_CreateArray();
    b.tags = b.attrs = b.groups = NULL;
    d->enabled = b.enabled != 0;
    d->createdAt = d->updatedAt = reg__now_ms();
    if (!d->zName || !d->zType || !d->tags || !d->attrs || !d->groups ||
        reg__new_secret("", secret, d->secret) != THZ_OK)
        e = THZ_ENOMEM;

    pthread_mutex_lock(&r->dbMu);
    reg_tenant *t = NULL;
    if (e == THZ_OK) {
        pthread_rwlock_rdlock(&r->lock);
        t = reg__tenant(r, tenant);
        if (t == NULL)
            e = THZ_ENOTFOUND;
        else if (hmap_get(&t->devs, b.id, strlen(b.id))) {
            reg__err(err, "a device with id '%s' exists", b.id);
            e = THZ_EEXIST;
        } else {
            e = groups_exist(t, d->groups, err);
        }
        pthread_rwlock_unlock(&r->lock);
    }
    if (e == THZ_OK) e = reg__exec(r->db, "BEGIN IMMEDIATE");
    if (e == THZ_OK) {
        sqlite3_stmt *st;
        int rc = sqlite3_prepare_v2(r->db,
                                    "INSERT INTO devices(tenant_id, id, name, type, tags,"
                                    " attributes, enabled, secret_hash, created_at, updated_at)"
                                    " VALUES (?,?,?,?,?,?,?,?,?,?)",
                                    -1, &st, NULL);
        if (rc != SQLITE_OK) {
            e = reg__sql_err(r->db, rc, "insert device");
        } else {
            sqlite3_bind_int64(st, 1, tenant);
            sqlite3_bind_text(st, 2, d->zId, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, d->zName, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 4, d->zType, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 5, b.zTags ? b.zTags : "{}", -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 6, b.zAttrs ? b.zAttrs : "{}", -1, SQLITE_STATIC);
            sqlite3_bind_int(st, 7, d->enabled);
            sqlite3_bind_blob(st, 8, d->secret, REG_HASH_LEN, SQLITE_STATIC);
            sqlite3_bind_int64(st, 9, d->createdAt);
            sqlite3_bind_int64(st, 10, d->updatedAt);
            e = step_done(r, st, "insert device");
        }
        if (e == THZ_OK) e = set_members(r, tenant, d->zId, d->groups);
        if (e == THZ_OK) e = reg__exec(r->db, "COMMIT");
        if (e != THZ_OK) rollback(r);
    }
    cJSON *o = NULL;
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        e = tenant_dev_add(r, t, d);
        if (e == THZ_OK) {
            o = reg__dev_json(d);
            cJSON_AddStringToObject(o, "secret", secret);
        }
        pthread_rwlock_unlock(&r->lock);
        if (e != THZ_OK) {
            /* Not in the mirror: take it out of the database again. */
            sqlite3_stmt *st;
            if (sqlite3_prepare_v2(r->db, "DELETE FROM devices WHERE tenant_id = ? AND id = ?", -1,
                                   &st, NULL) == SQLITE_OK) {
                sqlite3_bind_int64(st, 1, tenant);
                sqlite3_bind_text(st, 2, d->zId, -1, SQLITE_STATIC);
                step_done(r, st, "undo insert device");
            }
        }
    }
    pthread_mutex_unlock(&r->dbMu);
    if (e != THZ_OK) reg_dev_release(d);
    dev_body_free(&b);
    memset(secret, 0, sizeof secret);
    if (e == THZ_OK) *out = o;
    return e;
}

thz_err reg_device_get(registry *r, int64_t tenant, const char *id, cJSON **out)
{
    pthread_rwlock_rdlock(&r->lock);
    reg_dev *d = id ? dev_find(r, tenant, id) : NULL;
    cJSON *o = d ? reg__dev_json(d) : NULL;
    pthread_rwlock_unlock(&r->lock);
    if (o == NULL) return THZ_ENOTFOUND;
    *out = o;
    return THZ_OK;
}

void reg_telemetry_error(registry *r, int64_t tenant, const char *id, size_t idlen, const char *msg)
{
    char key[REG_ID_MAX + 1];
    if (idlen > REG_ID_MAX) return;
    memcpy(key, id, idlen);
    key[idlen] = 0;
    char *z = strdup(msg);
    pthread_rwlock_rdlock(&r->lock);
    reg_dev *d = dev_find(r, tenant, key);
    if (d) {
        pthread_mutex_lock(&d->pmu);
        d->telemetryErrors++;
        if (z) {
            free(d->zTelemetryError);
            d->zTelemetryError = z;
            z = NULL;
        }
        pthread_mutex_unlock(&d->pmu);
    }
    pthread_rwlock_unlock(&r->lock);
    free(z);
}

static bool dev_online(reg_dev *d)
{
    pthread_mutex_lock(&d->pmu);
    bool on = d->online;
    pthread_mutex_unlock(&d->pmu);
    return on;
}

thz_err reg_device_list(registry *r, int64_t tenant, const char *tag, const char *group, int online,
                        int limit, const char *cursor, cJSON **out, char err[REG_ERR_LEN])
{
    if (limit < 1 || limit > 1000) {
        reg__err(err, "parameter 'limit' must be an integer 1..1000");
        return THZ_EINVAL;
    }
    if (online < -1 || online > 1) {
        reg__err(err, "parameter 'online' must be true or false");
        return THZ_EINVAL;
    }
    char key[REG_TAG_KEY_MAX + 1];
    const char *val = NULL;
    if (tag) {
        const char *eq = strchr(tag, '=');
        size_t n = eq ? (size_t)(eq - tag) : strlen(tag);
        if (n == 0 || n > REG_TAG_KEY_MAX) {
            reg__err(err, "parameter 'tag' must be \"key=value\" or \"key\"");
            return THZ_EINVAL;
        }
        memcpy(key, tag, n);
        key[n] = '\0';
        val = eq ? eq + 1 : NULL;
    }
    if (group && !reg__id_valid(group)) {
        reg__err(err, "parameter 'group' must be " ID_RULE);
        return THZ_EINVAL;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *items = cJSON_AddArrayToObject(o, "items");
    const char *next = NULL, *last = NULL;
    pthread_rwlock_rdlock(&r->lock);
    reg_tenant *t = reg__tenant(r, tenant);
    const reg_group *g = t && group ? group_find(t, group) : NULL;
    if (t && (group == NULL || g)) {
        int n = 0;
        for (size_t i = cursor ? dev_bound(t->sorted, t->nDev, cursor, true) : 0; i < t->nDev;
             i++) {
            reg_dev *d = t->sorted[i];
            if (tag) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(d->tags, key);
                if (!cJSON_IsString(v) || (val && strcmp(v->valuestring, val) != 0)) continue;
            }
            if (g && !in_group(d, g)) continue;
            if (online >= 0 && dev_online(d) != (online == 1)) continue;
            if (n == limit) {
                /* Another match exists: the next page starts after the last
                 * id returned (the ids in between did not match). */
                next = last;
                break;
            }
            cJSON_AddItemToArray(items, reg__dev_json(d));
            last = d->zId;
            n++;
        }
    }
    cJSON_AddItemToObject(o, "next_cursor", next ? cJSON_CreateString(next) : cJSON_CreateNull());
    pthread_rwlock_unlock(&r->lock);
    *out = o;
    return THZ_OK;
}

thz_err reg_device_update(registry *r, int64_t tenant, const char *id, const cJSON *body,
                          cJSON **out, char err[REG_ERR_LEN])
{
    dev_body b;
    thz_err e = dev_body_parse(body, false, &b, err);
    if (e != THZ_OK) return e;
    char *zName = NULL, *zType = NULL;
    bool revoke = false;
    cJSON *o = NULL;
    pthread_mutex_lock(&r->dbMu);
    /* Holding dbMu, the mirror equals the database: read the current record
     * from it to fill the fields not given. */
    pthread_rwlock_rdlock(&r->lock);
    reg_dev *d = id ? dev_find(r, tenant, id) : NULL;
    if (d == NULL)
        e = THZ_ENOTFOUND;
    else if (b.groups)
        e = groups_exist(reg__tenant(r, tenant), b.groups, err);
    if (e == THZ_OK) {
        zName = strdup(b.name ? b.name : d->zName);
        zType = strdup(b.type ? b.type : d->zType);
        if (!b.zTags) b.zTags = cJSON_PrintUnformatted(d->tags);
        if (!b.zAttrs) b.zAttrs = cJSON_PrintUnformatted(d->attrs);
        if (b.enabled < 0) b.enabled = d->enabled;
        revoke = d->enabled && !b.enabled;
        if (!zName || !zType || !b.zTags || !b.zAttrs) e = THZ_ENOMEM;
    }
    pthread_rwlock_unlock(&r->lock);
    int64_t now = reg__now_ms();
    if (e == THZ_OK) e = reg__exec(r->db, "BEGIN IMMEDIATE");
    if (e == THZ_OK) {
        sqlite3_stmt *st;
        int rc = sqlite3_prepare_v2(r->db,
                                    "UPDATE devices SET name = ?, type = ?, tags = ?,"
                                    " attributes = ?, enabled = ?, updated_at = ?"
                                    " WHERE tenant_id = ? AND id = ?",
                                    -1, &st, NULL);
        if (rc != SQLITE_OK) {
            e = reg__sql_err(r->db, rc, "update device");
        } else {
            sqlite3_bind_text(st, 1, zName, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, zType, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, b.zTags, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 4, b.zAttrs, -1, SQLITE_STATIC);
            sqlite3_bind_int(st, 5, b.enabled);
            sqlite3_bind_int64(st, 6, now);
            sqlite3_bind_int64(st, 7, tenant);
            sqlite3_bind_text(st, 8, id, -1, SQLITE_STATIC);
            e = step_done(r, st, "update device");
        }
        if (e == THZ_OK && b.groups) e = set_members(r, tenant, id, b.groups);
        if (e == THZ_OK) e = reg__exec(r->db, "COMMIT");
        if (e != THZ_OK) rollback(r);
    }
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        char *z;
        z = d->zName, d->zName = zName, zName = z;
        z = d->zType, d->zType = zType, zType = z;
        cJSON *j;
        if (b.tags) j = d->tags, d->tags = b.tags, b.tags = j;
        if (b.attrs) j = d->attrs, d->attrs = b.attrs, b.attrs = j;
        if (b.groups) j = d->groups, d->groups = b.groups, b.groups = j;
        d->enabled = b.enabled;
        d->updatedAt = now;
        o = reg__dev_json(d);
        pthread_rwlock_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->dbMu);
    free(zName);
    free(zType);
    dev_body_free(&b);
    if (e != THZ_OK) return e;
    if (revoke) fire_revoke(r, tenant, id);
    *out = o;
    return THZ_OK;
}

thz_err reg_device_delete(registry *r, int64_t tenant, const char *id)
{
    if (id == NULL) return THZ_ENOTFOUND;
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    thz_err e;
    int rc = sqlite3_prepare_v2(r->db, "DELETE FROM devices WHERE tenant_id = ? AND id = ?", -1,
                                &st, NULL);
    if (rc != SQLITE_OK) {
        e = reg__sql_err(r->db, rc, "delete device");
    } else {
        sqlite3_bind_int64(st, 1, tenant);
        sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
        e = step_done(r, st, "delete device");
    }
    if (e == THZ_OK && sqlite3_changes(r->db) == 0) e = THZ_ENOTFOUND;
    reg_dev *d = NULL;
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        reg_tenant *t = reg__tenant(r, tenant);
        d = t ? tenant_dev_del(r, t, id) : NULL;
        reg__certs_forget_device(r, tenant, id);
        pthread_rwlock_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->dbMu);
    if (e == THZ_OK) fire_revoke(r, tenant, id);
    reg_dev_release(d);
    return e;
}

thz_err reg_device_rotate(registry *r, int64_t tenant, const char *id, cJSON **out)
{
    char secret[REG_SECRET_TEXT];
    uint8_t hash[REG_HASH_LEN];
    if (reg__new_secret("", secret, hash) != THZ_OK) return THZ_EIO;
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    thz_err e;
    int rc = sqlite3_prepare_v2(r->db,
                                "UPDATE devices SET secret_hash = ?, updated_at = ?"
                                " WHERE tenant_id = ? AND id = ?",
                                -1, &st, NULL);
    if (rc != SQLITE_OK || id == NULL) {
        sqlite3_finalize(st);
        e = id ? reg__sql_err(r->db, rc, "rotate") : THZ_ENOTFOUND;
    } else {
        sqlite3_bind_blob(st, 1, hash, REG_HASH_LEN, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, reg__now_ms());
        sqlite3_bind_int64(st, 3, tenant);
        sqlite3_bind_text(st, 4, id, -1, SQLITE_STATIC);
        e = step_done(r, st, "rotate");
    }
    if (e == THZ_OK && sqlite3_changes(r->db) == 0) e = THZ_ENOTFOUND;
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        reg_dev *d = dev_find(r, tenant, id);
        if (d) {
            hmap_del_if(&r->secrets, d->secret, REG_HASH_LEN, d);
            memcpy(d->secret, hash, REG_HASH_LEN);
            /* hmap_put only fails growing, and the entry just removed left room. */
            if (hmap_put(&r->secrets, d->secret, REG_HASH_LEN, d, NULL) != THZ_OK)
                log_error("registry", "device %s: new secret not usable until restart", id);
        }
        pthread_rwlock_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->dbMu);
    if (e != THZ_OK) return e;
    fire_revoke(r, tenant, id);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "secret", secret);
    memset(secret, 0, sizeof secret);
    *out = o;
    return THZ_OK;
}

/* ---------------------------------------------------------------- groups */

typedef struct group_body {
    const char *id, *name;
    cJSON *query, *policy; /* owned, NULL when absent */
    bool hasQuery;         /* given, possibly as null (clears it) */
    char *zQuery, *zPolicy;
} group_body;

static void group_body_free(group_body *b)
{
    cJSON_Delete(b->query);
    cJSON_Delete(b->policy);
    free(b->zQuery);
    free(b->zPolicy);
}

static thz_err field_filters(const cJSON *pol, const char *name, cJSON *out, char *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(pol, name);
    cJSON *a = cJSON_AddArrayToObject(out, name);
    if (v == NULL || cJSON_IsNull(v)) return THZ_OK;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > REG_FILTERS_MAX) goto bad;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsString(e) || strlen(e->valuestring) > REG_FILTER_MAX ||
            !topic_filter_valid(e->valuestring, strlen(e->valuestring)))
            goto bad;
        cJSON_AddItemToArray(a, cJSON_CreateString(e->valuestring));
    }
    return THZ_OK;
bad:
    reg__err(err, "field 'policy.%s' must be an array of at most %d MQTT topic filters", name,
             REG_FILTERS_MAX);
    return THZ_EINVAL;
}

static thz_err group_body_parse(const cJSON *body, bool create, group_body *b, char *err)
{
    memset(b, 0, sizeof *b);
    if (!cJSON_IsObject(body)) {
        reg__err(err, "the body must be a JSON object");
        return THZ_EINVAL;
    }
    thz_err e = create ? field_id(body, &b->id, err) : THZ_OK;
    if (e == THZ_OK) e = reg__field_str(body, "name", REG_NAME_MAX, false, &b->name, err);
    if (e == THZ_OK) {
        b->hasQuery = cJSON_GetObjectItemCaseSensitive(body, "query") != NULL;
        e = field_string_map(body, "query", &b->query, err);
        if (e == THZ_OK && b->query && (b->zQuery = cJSON_PrintUnformatted(b->query)) == NULL)
            e = THZ_ENOMEM;
    }
    const cJSON *pol = cJSON_GetObjectItemCaseSensitive(body, "policy");
    if (e == THZ_OK && pol && !cJSON_IsNull(pol)) {
        if (!cJSON_IsObject(pol)) {
            reg__err(err,
                     "field 'policy' must be an object {\"publish\":[...],\"subscribe\":[...]}");
            e = THZ_EINVAL;
        } else {
            b->policy = cJSON_CreateObject();
            e = field_filters(pol, "publish", b->policy, err);
            if (e == THZ_OK) e = field_filters(pol, "subscribe", b->policy, err);
            if (e == THZ_OK && (b->zPolicy = cJSON_PrintUnformatted(b->policy)) == NULL)
                e = THZ_ENOMEM;
        }
    }
    if (e != THZ_OK) group_body_free(b);
    return e;
}

thz_err reg_group_create(registry *r, int64_t tenant, const cJSON *body, cJSON **out,
                         char err[REG_ERR_LEN])
{
    group_body b;
    thz_err e = group_body_parse(body, true, &b, err);
    if (e != THZ_OK) return e;
    reg_group *g = calloc(1, sizeof *g);
    if (g == NULL) {
        group_body_free(&b);
        return THZ_ENOMEM;
    }
    g->zId = strdup(b.id);
    g->zName = strdup(b.name ? b.name : "");
    g->query = b.query;
    g->policy = b.policy ? b.policy : cJSON_Parse("{\"publish\":[],\"subscribe\":[]}");
    b.query = b.policy = NULL;
    g->createdAt = reg__now_ms();
    if (!g->zId || !g->zName || !g->policy) e = THZ_ENOMEM;
    char *zPolicy = e == THZ_OK ? cJSON_PrintUnformatted(g->policy) : NULL;
    if (zPolicy == NULL) e = THZ_ENOMEM;

    cJSON *o = NULL;
    pthread_mutex_lock(&r->dbMu);
    reg_tenant *t = NULL;
    if (e == THZ_OK) {
        pthread_rwlock_rdlock(&r->lock);
        t = reg__tenant(r, tenant);
        if (t == NULL) {
            e = THZ_ENOTFOUND;
        } else if (group_find(t, g->zId)) {
            reg__err(err, "a group with id '%s' exists", g->zId);
            e = THZ_EEXIST;
        }
        pthread_rwlock_unlock(&r->lock);
    }
    if (e == THZ_OK) {
        sqlite3_stmt *st;
        int rc = sqlite3_prepare_v2(r->db,
                                    "INSERT INTO \"groups\"(tenant_id, id, name, query, policy,"
                                    " created_at) VALUES (?,?,?,?,?,?)",
                                    -1, &st, NULL);
        if (rc != SQLITE_OK) {
            e = reg__sql_err(r->db, rc, "insert group");
        } else {
            sqlite3_bind_int64(st, 1, tenant);
            sqlite3_bind_text(st, 2, g->zId, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, g->zName, -1, SQLITE_STATIC);
            if (b.zQuery)
                sqlite3_bind_text(st, 4, b.zQuery, -1, SQLITE_STATIC);
            else
                sqlite3_bind_null(st, 4);
            sqlite3_bind_text(st, 5, zPolicy, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 6, g->createdAt);
            e = step_done(r, st, "insert group");
        }
    }
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        e = grow((void **)&t->groups, &t->capGroup, t->nGroup, sizeof *t->groups);
        if (e == THZ_OK) {
            size_t i = group_bound(t->groups, t->nGroup, g->zId);
            memmove(t->groups + i + 1, t->groups + i, (t->nGroup - i) * sizeof *t->groups);
            t->groups[i] = g;
            t->nGroup++;
            o = group_json(t, g);
            g = NULL;
        }
        pthread_rwlock_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->dbMu);
    group_free(g);
    free(zPolicy);
    group_body_free(&b);
    if (e == THZ_OK) *out = o;
    return e;
}

thz_err reg_group_get(registry *r, int64_t tenant, const char *id, cJSON **out)
{
    cJSON *o = NULL;
    pthread_rwlock_rdlock(&r->lock);
    reg_tenant *t = reg__tenant(r, tenant);
    reg_group *g = t && id ? group_find(t, id) : NULL;
    if (g) o = group_json(t, g);
    pthread_rwlock_unlock(&r->lock);
    if (o == NULL) return THZ_ENOTFOUND;
    *out = o;
    return THZ_OK;
}

thz_err reg_group_list(registry *r, int64_t tenant, cJSON **out)
{
    cJSON *a = cJSON_CreateArray();
    pthread_rwlock_rdlock(&r->lock);
    reg_tenant *t = reg__tenant(r, tenant);
    for (size_t i = 0; t && i < t->nGroup; i++)
        cJSON_AddItemToArray(a, group_json(t, t->groups[i]));
    pthread_rwlock_unlock(&r->lock);
    *out = a;
    return THZ_OK;
}

thz_err reg_group_update(registry *r, int64_t tenant, const char *id, const cJSON *body,
                         cJSON **out, char err[REG_ERR_LEN])
{
    group_body b;
    thz_err e = group_body_parse(body, false, &b, err);
    if (e != THZ_OK) return e;
    char *zName = NULL, *zPolicy = NULL, *zQuery = NULL;
    cJSON *o = NULL;
    pthread_mutex_lock(&r->dbMu);
    pthread_rwlock_rdlock(&r->lock);
    reg_tenant *t = reg__tenant(r, tenant);
    reg_group *g = t && id ? group_find(t, id) : NULL;
    if (g == NULL) {
        e = THZ_ENOTFOUND;
    } else {
        zName = strdup(b.name ? b.name : g->zName);
        zPolicy = b.zPolicy ? strdup(b.zPolicy) : cJSON_PrintUnformatted(g->policy);
        if (b.hasQuery)
            zQuery = b.zQuery ? strdup(b.zQuery) : NULL;
        else if (g->query)
            zQuery = cJSON_PrintUnformatted(g->query);
        bool wantQuery = b.hasQuery ? b.zQuery != NULL : g->query != NULL;
        if (!zName || !zPolicy || (wantQuery && zQuery == NULL)) e = THZ_ENOMEM;
    }
    pthread_rwlock_unlock(&r->lock);
    if (e == THZ_OK) {
        sqlite3_stmt *st;
        int rc = sqlite3_prepare_v2(r->db,
                                    "UPDATE \"groups\" SET name = ?, query = ?, policy = ?"
                                    " WHERE tenant_id = ? AND id = ?",
                                    -1, &st, NULL);
        if (rc != SQLITE_OK) {
            e = reg__sql_err(r->db, rc, "update group");
        } else {
            sqlite3_bind_text(st, 1, zName, -1, SQLITE_STATIC);
            if (zQuery)
                sqlite3_bind_text(st, 2, zQuery, -1, SQLITE_STATIC);
            else
                sqlite3_bind_null(st, 2);
            sqlite3_bind_text(st, 3, zPolicy, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 4, tenant);
            sqlite3_bind_text(st, 5, id, -1, SQLITE_STATIC);
            e = step_done(r, st, "update group");
        }
    }
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        char *z = g->zName;
        g->zName = zName;
        zName = z;
        if (b.hasQuery) {
            cJSON_Delete(g->query);
            g->query = b.query;
            b.query = NULL;
        }
        if (b.policy) {
            cJSON_Delete(g->policy);
            g->policy = b.policy;
            b.policy = NULL;
        }
        o = group_json(t, g);
        pthread_rwlock_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->dbMu);
    free(zName);
    free(zPolicy);
    free(zQuery);
    group_body_free(&b);
    if (e == THZ_OK) *out = o;
    return e;
}

/* Under the write lock: removes group id from d's static groups. */
static void dev_groups_remove(reg_dev *d, const char *id)
{
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, d->groups)
    {
        if (strcmp(e->valuestring, id) == 0) {
            cJSON_DeleteItemFromArray(d->groups, i);
            return;
        }
        i++;
    }
}

thz_err reg_group_delete(registry *r, int64_t tenant, const char *id)
{
    if (id == NULL) return THZ_ENOTFOUND;
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    thz_err e;
    /* group_members rows go with it (ON DELETE CASCADE). */
    int rc = sqlite3_prepare_v2(r->db, "DELETE FROM \"groups\" WHERE tenant_id = ? AND id = ?", -1,
                                &st, NULL);
    if (rc != SQLITE_OK) {
        e = reg__sql_err(r->db, rc, "delete group");
    } else {
        sqlite3_bind_int64(st, 1, tenant);
        sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
        e = step_done(r, st, "delete group");
    }
    if (e == THZ_OK && sqlite3_changes(r->db) == 0) e = THZ_ENOTFOUND;
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        reg_tenant *t = reg__tenant(r, tenant);
        size_t i = t ? group_bound(t->groups, t->nGroup, id) : 0;
        if (t && i < t->nGroup && strcmp(t->groups[i]->zId, id) == 0) {
            group_free(t->groups[i]);
            memmove(t->groups + i, t->groups + i + 1, (t->nGroup - i - 1) * sizeof *t->groups);
            t->nGroup--;
            for (size_t k = 0; k < t->nDev; k++) dev_groups_remove(t->sorted[k], id);
        }
        pthread_rwlock_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->dbMu);
    return e;
}

thz_err reg_group_add(registry *r, int64_t tenant, const char *group, const char *device)
{
    if (group == NULL || device == NULL) return THZ_ENOTFOUND;
    thz_err e = THZ_OK;
    pthread_mutex_lock(&r->dbMu);
    pthread_rwlock_rdlock(&r->lock);
    reg_tenant *t = reg__tenant(r, tenant);
    reg_dev *d = t ? hmap_get(&t->devs, device, strlen(device)) : NULL;
    if (d == NULL || group_find(t, group) == NULL)
        e = THZ_ENOTFOUND;
    else if (str_in_array(d->groups, group))
        e = THZ_EEXIST;
    else if (cJSON_GetArraySize(d->groups) >= REG_GROUPS_MAX)
        e = THZ_EQUOTA;
    pthread_rwlock_unlock(&r->lock);
    if (e == THZ_OK) {
        sqlite3_stmt *st;
        int rc = sqlite3_prepare_v2(r->db,
                                    "INSERT INTO group_members(tenant_id, group_id, device_id)"
                                    " VALUES (?,?,?)",
                                    -1, &st, NULL);
        if (rc != SQLITE_OK) {
            e = reg__sql_err(r->db, rc, "add member");
        } else {
            sqlite3_bind_int64(st, 1, tenant);
            sqlite3_bind_text(st, 2, group, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, device, -1, SQLITE_STATIC);
            e = step_done(r, st, "add member");
        }
    }
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        /* Kept sorted. */
        int i = 0;
        cJSON *it = d->groups->child;
        while (it && strcmp(it->valuestring, group) < 0) it = it->next, i++;
        cJSON *s = cJSON_CreateString(group);
        if (s == NULL || !cJSON_InsertItemInArray(d->groups, i, s)) {
            if (s && !cJSON_AddItemToArray(d->groups, s)) cJSON_Delete(s);
        }
        pthread_rwlock_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->dbMu);
    return e;
}

thz_err reg_group_remove(registry *r, int64_t tenant, const char *group, const char *device)
{
    if (group == NULL || device == NULL) return THZ_ENOTFOUND;
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    thz_err e;
    int rc = sqlite3_prepare_v2(r->db,
                                "DELETE FROM group_members WHERE tenant_id = ? AND group_id = ?"
                                " AND device_id = ?",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        e = reg__sql_err(r->db, rc, "remove member");
    } else {
        sqlite3_bind_int64(st, 1, tenant);
        sqlite3_bind_text(st, 2, group, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, device, -1, SQLITE_STATIC);
        e = step_done(r, st, "remove member");
    }
    if (e == THZ_OK && sqlite3_changes(r->db) == 0) e = THZ_ENOTFOUND;
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        reg_dev *d = dev_find(r, tenant, device);
        if (d) dev_groups_remove(d, group);
        pthread_rwlock_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->dbMu);
    return e;
}

/* ---------------------------------------------------------------- the broker's side */

thz_err reg_mqtt_auth(registry *r, const char *username, const uint8_t *password, size_t plen,
                      reg_identity *out)
{
    if (password == NULL || plen == 0 || plen > 1024) return THZ_EBADAUTH;
    uint8_t hash[REG_HASH_LEN];
    reg__sha256(password, plen, hash);
    int64_t now = reg__now_ms();
    thz_err e = THZ_EBADAUTH;
    pthread_rwlock_rdlock(&r->lock);
    reg_dev *d = hmap_get(&r->secrets, hash, REG_HASH_LEN);
    if (d) {
        if (username && strcmp(username, d->zId) == 0 && d->enabled && !d->deleted) {
            reg__dev_retain(d);
            *out = (reg_identity){.tenant = d->tenant, .dev = d, .role = REG_VIEWER};
            e = THZ_OK;
        }
    } else {
        reg_tok *t = hmap_get(&r->tokens, hash, REG_HASH_LEN);
        if (t && t->api && t->expiresAt > now) {
            atomic_store_explicit(&t->lastUsed, now, memory_order_relaxed);
            atomic_store_explicit(&t->usedDirty, true, memory_order_relaxed);
            *out = (reg_identity){.tenant = t->tenant, .dev = NULL, .role = t->role};
            e = THZ_OK;
        }
    }
    pthread_rwlock_unlock(&r->lock);
    return e;
}

const char *reg_dev_id(const reg_dev *d)
{
    return d->zId;
}

int64_t reg_dev_tenant(const reg_dev *d)
{
    return d->tenant;
}

/* Does policy filter f, with ${device} replaced by id, cover req? */
static bool policy_covers(const char *f, const char *id, const char *req)
{
    static const char var[] = "${device}";
    if (strstr(f, var) == NULL) return topic_filter_covers(f, req);
    /* REG_FILTER_MAX bytes with every 9 of them growing to REG_ID_MAX. */
    char buf[REG_FILTER_MAX + (REG_FILTER_MAX / 9 + 1) * REG_ID_MAX + 1];
    size_t n = 0, idlen = strlen(id);
    for (const char *p = f; *p;) {
        if (strncmp(p, var, sizeof var - 1) == 0) {
            if (n + idlen >= sizeof buf) return false;
            memcpy(buf + n, id, idlen);
            n += idlen;
            p += sizeof var - 1;
        } else {
            if (n + 1 >= sizeof buf) return false;
            buf[n++] = *p++;
        }
    }
    buf[n] = '\0';
    return topic_filter_covers(buf, req);
}

static bool acl_check(registry *r, reg_dev *d, const char *req, const char *dir)
{
    if (d == NULL || req == NULL) return false;
    bool ok = false;
    char own[REG_ID_MAX + 32];
    pthread_rwlock_rdlock(&r->lock);
    if (d->deleted || !d->enabled) goto out;
    snprintf(own, sizeof own, "devices/%s/#", d->zId);
    if ((ok = topic_filter_covers(own, req))) goto out;
    snprintf(own, sizeof own, "$aws/things/%s/#", d->zId);
    if ((ok = topic_filter_covers(own, req))) goto out;
    reg_tenant *t = reg__tenant(r, d->tenant);
    for (size_t i = 0; t && i < t->nGroup && !ok; i++) {
        const reg_group *g = t->groups[i];
        if (!in_group(d, g)) continue;
        const cJSON *f;
        cJSON_ArrayForEach(f, cJSON_GetObjectItemCaseSensitive(g->policy, dir))
        {
            if (cJSON_IsString(f) && policy_covers(f->valuestring, d->zId, req)) {
                ok = true;
                break;
            }
        }
    }
out:
    pthread_rwlock_unlock(&r->lock);
    return ok;
}

bool reg_dev_can_publish(registry *r, reg_dev *d, const char *topic)
{
    return acl_check(r, d, topic, "publish");
}

bool reg_dev_can_subscribe(registry *r, reg_dev *d, const char *filter)
{
    return acl_check(r, d, filter, "subscribe");
}
