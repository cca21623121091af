/* registry.c - opening and closing the registry, the mirror's tenants and
 * tokens, and the people side: login, sessions, API tokens, tenants, users. */
#include "registry/reg_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <argon2.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "core/log.h"

/* OWASP's argon2id settings: t=2, m=19 MiB, p=1. */
#define ARGON_T    2
#define ARGON_M    19456
#define ARGON_P    1
#define ARGON_SALT 16
#define ARGON_HASH 32

/* ---------------------------------------------------------------- helpers */

bool reg__id_valid(const char *z)
{
    size_t n = 0;
    for (; z[n]; n++) {
        char c = z[n];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return false;
        if (n >= REG_ID_MAX) return false;
    }
    return n >= 1;
}

thz_err reg__field_str(const cJSON *body, const char *name, size_t max, bool req, const char **out,
                       char *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, name);
    *out = NULL;
    if (v == NULL || (!req && cJSON_IsNull(v))) {
        if (!req) return THZ_OK;
        reg__err(err, "field '%s' is required", name);
        return THZ_EINVAL;
    }
    if (!cJSON_IsString(v) || strlen(v->valuestring) > max || (req && !v->valuestring[0])) {
        reg__err(err, "field '%s' must be a string of %s..%zu characters", name, req ? "1" : "0",
                 max);
        return THZ_EINVAL;
    }
    *out = v->valuestring;
    return THZ_OK;
}

static const char *role_name(reg_role r)
{
    return r == REG_ADMIN ? "admin" : r == REG_OPERATOR ? "operator" : "viewer";
}

static int role_parse(const char *z)
{
    if (z == NULL) return 0;
    if (strcmp(z, "admin") == 0) return REG_ADMIN;
    if (strcmp(z, "operator") == 0) return REG_OPERATOR;
    if (strcmp(z, "viewer") == 0) return REG_VIEWER;
    return 0;
}

static thz_err field_role(const cJSON *body, bool req, int *out, char *err)
{
    const char *z;
    *out = 0;
    thz_err e = reg__field_str(body, "role", 16, req, &z, err);
    if (e != THZ_OK) return e;
    if (z == NULL) return THZ_OK;
    if ((*out = role_parse(z)) == 0) {
        reg__err(err, "field 'role' must be \"admin\", \"operator\" or \"viewer\"");
        return THZ_EINVAL;
    }
    return THZ_OK;
}

static thz_err field_email(const cJSON *body, const char *name, const char **out, char *err)
{
    thz_err e = reg__field_str(body, name, REG_EMAIL_MAX, true, out, err);
    if (e == THZ_OK && (strchr(*out, '@') == NULL || strpbrk(*out, " \t\r\n") != NULL)) {
        reg__err(err, "field '%s' must be an email address of at most %d characters", name,
                 REG_EMAIL_MAX);
        e = THZ_EINVAL;
    }
    return e;
}

static thz_err field_password(const cJSON *body, const char *name, bool req, const char **out,
                              char *err)
{
    thz_err e = reg__field_str(body, name, REG_PASSWORD_MAX, req, out, err);
    if (e == THZ_OK && *out != NULL && strlen(*out) < REG_PASSWORD_MIN) {
        reg__err(err, "field '%s' must be a string of %d..%d characters", name, REG_PASSWORD_MIN,
                 REG_PASSWORD_MAX);
        e = THZ_EINVAL;
    }
    return e;
}

/* argon2id of password into a new string (caller frees), or NULL. */
static char *hash_password(const char *pw)
{
    uint8_t salt[ARGON_SALT];
    if (RAND_bytes(salt, sizeof salt) != 1) return NULL;
    size_t n = argon2_encodedlen(ARGON_T, ARGON_M, ARGON_P, ARGON_SALT, ARGON_HASH, Argon2_id);
    char *z = malloc(n);
    if (z == NULL) return NULL;
    if (argon2id_hash_encoded(ARGON_T, ARGON_M, ARGON_P, pw, strlen(pw), salt, sizeof salt,
                              ARGON_HASH, z, n) != ARGON2_OK) {
        free(z);
        return NULL;
    }
    return z;
}

reg_tenant *reg__tenant(registry *r, int64_t id)
{
    return hmap_get(&r->tenants, &id, sizeof id);
}

thz_err reg__tenant_add(registry *r, int64_t id)
{
    if (reg__tenant(r, id)) return THZ_OK;
    reg_tenant *t = calloc(1, sizeof *t);
    if (t == NULL) return THZ_ENOMEM;
    t->id = id;
    thz_err e = hmap_put(&r->tenants, &t->id, sizeof t->id, t, NULL);
    if (e != THZ_OK) free(t);
    return e;
}

/* ---------------------------------------------------------------- tokens in the mirror */

static void tok_free(reg_tok *t)
{
    if (t) OPENSSL_cleanse(t->hash, sizeof t->hash);
    free(t);
}

/* Under the write lock. */
static thz_err tok_add(registry *r, const uint8_t hash[REG_HASH_LEN], int64_t id, int64_t tenant,
                       int64_t user, reg_role role, bool api, int64_t expiresAt, int64_t lastUsed)
{
    reg_tok *t = calloc(1, sizeof *t);
    if (t == NULL) return THZ_ENOMEM;
    memcpy(t->hash, hash, REG_HASH_LEN);
    t->id = id;
    t->tenant = tenant;
    t->user = user;
    t->role = role;
    t->api = api;
    t->expiresAt = expiresAt;
    atomic_store(&t->lastUsed, lastUsed);
    if (hmap_put(&r->tokens, t->hash, REG_HASH_LEN, t, NULL) != THZ_OK) {
        free(t);
        return THZ_ENOMEM;
    }
    if (hmap_put(&r->tokById, &t->id, sizeof t->id, t, NULL) != THZ_OK) {
        hmap_del(&r->tokens, t->hash, REG_HASH_LEN);
        free(t);
        return THZ_ENOMEM;
    }
    return THZ_OK;
}

/* Under the write lock. */
static void tok_del(registry *r, int64_t id)
{
    reg_tok *t = hmap_del(&r->tokById, &id, sizeof id);
    if (t == NULL) return;
    hmap_del(&r->tokens, t->hash, REG_HASH_LEN);
    tok_free(t);
}

/* Under the write lock: drops every token of user (or of tenant when user is 0). */
static void tok_del_where(registry *r, int64_t tenant, int64_t user)
{
    size_t pos = 0, n = 0, cap = 0;
    int64_t *ids = NULL;
    for (hmap_entry *e = hmap_next(&r->tokById, &pos, NULL); e;
         e = hmap_next(&r->tokById, &pos, e)) {
        reg_tok *t = e->val;
        if (t->tenant != tenant || (user && t->user != user)) continue;
        if (n == cap) {
            size_t c = cap ? cap * 2 : 16;
            int64_t *p = realloc(ids, c * sizeof *p);
            if (p == NULL) break; /* the rest stays until restart; logged */
            ids = p;
            cap = c;
        }
        ids[n++] = t->id;
    }
    for (size_t i = 0; i < n; i++) tok_del(r, ids[i]);
    free(ids);
}

void reg__sweep_tokens(registry *r)
{
    int64_t now = reg__now_ms();
    int64_t ids[256];
    size_t n = 0, pos = 0;
    pthread_rwlock_rdlock(&r->lock);
    for (hmap_entry *e = hmap_next(&r->tokById, &pos, NULL); e && n < 256;
         e = hmap_next(&r->tokById, &pos, e)) {
        reg_tok *t = e->val;
        if (t->expiresAt <= now) ids[n++] = t->id;
    }
    pthread_rwlock_unlock(&r->lock);
    if (n == 0) return;
    /* Expired tokens are refused anyway; this only gives their memory back
     * (at most 256 per tick, so the write lock is held briefly). */
    pthread_rwlock_wrlock(&r->lock);
    for (size_t i = 0; i < n; i++) tok_del(r, ids[i]);
    pthread_rwlock_unlock(&r->lock);
}

static thz_err load_tokens(registry *r, char *err)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(
        r->db,
        "SELECT t.hash, t.id, t.tenant_id, t.user_id, t.role, t.kind, t.expires_at,"
        " t.last_used_at FROM tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.revoked = 0 AND u.disabled = 0 AND (t.expires_at IS NULL OR t.expires_at > ?)",
        -1, &st, NULL);
    if (rc != SQLITE_OK) {
        reg__err(err, "loading tokens: %s", sqlite3_errmsg(r->db));
        return reg__sql_err(r->db, rc, "loading tokens");
    }
    sqlite3_bind_int64(st, 1, reg__now_ms());
    thz_err e = THZ_OK;
    while (e == THZ_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_bytes(st, 0) != REG_HASH_LEN) continue;
        int64_t exp =
            sqlite3_column_type(st, 6) == SQLITE_NULL ? REG_NEVER : sqlite3_column_int64(st, 6);
        e = tok_add(r, sqlite3_column_blob(st, 0), sqlite3_column_int64(st, 1),
                    sqlite3_column_int64(st, 2), sqlite3_column_int64(st, 3),
                    role_parse((const char *)sqlite3_column_text(st, 4)),
                    strcmp((const char *)sqlite3_column_text(st, 5), "api") == 0, exp,
                    sqlite3_column_int64(st, 7));
    }
    if (e == THZ_OK && rc != SQLITE_DONE) {
        e = reg__sql_err(r->db, rc, "loading tokens");
        reg__err(err, "loading tokens: %s", sqlite3_errmsg(r->db));
    }
    sqlite3_finalize(st);
    return e;
}

/* ---------------------------------------------------------------- users in SQL */

/* Inserts a user (password already hashed); under dbMu, inside the caller's
 * transaction or autocommit. */
static thz_err insert_user(registry *r, int64_t tenant, const char *email, const char *hash,
                           reg_role role, int64_t now, int64_t *id)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "INSERT INTO users(tenant_id, email, password_hash, role,"
                                " created_at) VALUES (?,?,?,?,?)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "insert user");
    sqlite3_bind_int64(st, 1, tenant);
    sqlite3_bind_text(st, 2, email, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, hash, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, role_name(role), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, now);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return reg__sql_err(r->db, sqlite3_extended_errcode(r->db), "insert user");
    *id = sqlite3_last_insert_rowid(r->db);
    return THZ_OK;
}

static cJSON *user_json(int64_t id, const char *email, const char *role, bool disabled,
                        int64_t created)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)id);
    cJSON_AddStringToObject(o, "email", email);
    cJSON_AddStringToObject(o, "role", role);
    cJSON_AddBoolToObject(o, "disabled", disabled);
    cJSON_AddItemToObject(o, "created_at", reg__time_json(created));
    return o;
}

/* The user row id of tenant as JSON, or NULL; under dbMu. */
static cJSON *user_get_json(registry *r, int64_t tenant, int64_t id)
{
    sqlite3_stmt *st;
    cJSON *o = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT email, role, disabled, created_at FROM users"
                           " WHERE id = ? AND tenant_id = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return NULL;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, tenant);
    if (sqlite3_step(st) == SQLITE_ROW)
        o = user_json(id, (const char *)sqlite3_column_text(st, 0),
                      (const char *)sqlite3_column_text(st, 1), sqlite3_column_int(st, 2) != 0,
                      sqlite3_column_int64(st, 3));
    sqlite3_finalize(st);
    return o;
}

static cJSON *tenant_get_json(registry *r, int64_t id)
{
    sqlite3_stmt *st;
    cJSON *o = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT name, created_at FROM tenants WHERE id = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return NULL;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) {
        o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "id", (double)id);
        cJSON_AddStringToObject(o, "name", (const char *)sqlite3_column_text(st, 0));
        cJSON_AddItemToObject(o, "created_at", reg__time_json(sqlite3_column_int64(st, 1)));
    }
    sqlite3_finalize(st);
    return o;
}

/* ---------------------------------------------------------------- lifecycle */

/* First start: the default tenant and its admin. Under dbMu. */
static thz_err bootstrap(registry *r, char *err)
{
    sqlite3_stmt *st;
    int n = 0;
    if (sqlite3_prepare_v2(r->db, "SELECT count(*) FROM tenants", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    if (n > 0) return THZ_OK;

    const char *email = getenv("THINGHZ_ADMIN_EMAIL");
    const char *pw = getenv("THINGHZ_ADMIN_PASSWORD");
    char gen[21];
    bool generated = false;
    if (email == NULL || !*email) email = "admin@localhost";
    if (strlen(email) > REG_EMAIL_MAX || strchr(email, '@') == NULL) {
        reg__err(err, "THINGHZ_ADMIN_EMAIL is not an email address");
        return THZ_EINVAL;
    }
    if (pw == NULL || !*pw) {
        if (reg__random_password(gen, 20) != THZ_OK) return THZ_EIO;
        pw = gen;
        generated = true;
    } else if (strlen(pw) < REG_PASSWORD_MIN || strlen(pw) > REG_PASSWORD_MAX) {
        reg__err(err, "THINGHZ_ADMIN_PASSWORD must have %d..%d characters", REG_PASSWORD_MIN,
                 REG_PASSWORD_MAX);
        return THZ_EINVAL;
    }
    char *hash = hash_password(pw);
    if (hash == NULL) {
        reg__err(err, "cannot hash the admin password");
        return THZ_ENOMEM;
    }
    int64_t now = reg__now_ms(), uid;
    thz_err e = reg__exec(r->db, "BEGIN IMMEDIATE");
    if (e == THZ_OK) {
        char sql[128];
        snprintf(sql, sizeof sql,
                 "INSERT INTO tenants(id, name, created_at) VALUES (%d, 'default', %lld)",
                 REG_DEFAULT_TENANT, (long long)now);
        e = reg__exec(r->db, sql);
    }
    if (e == THZ_OK) e = insert_user(r, REG_DEFAULT_TENANT, email, hash, REG_ADMIN, now, &uid);
    if (e == THZ_OK) e = reg__exec(r->db, "COMMIT");
    free(hash);
    if (e != THZ_OK) {
        reg__exec(r->db, "ROLLBACK");
        reg__err(err, "cannot create the default tenant: %s", thz_strerror(e));
        OPENSSL_cleanse(gen, sizeof gen);
        return e;
    }
    if (generated)
        fprintf(stderr, "thinghz: created admin %s with password %s (shown once)\n", email, gen);
    else
        log_info("registry", "created admin %s (password from THINGHZ_ADMIN_PASSWORD)", email);
    OPENSSL_cleanse(gen, sizeof gen);
    return THZ_OK;
}

static thz_err load_tenants(registry *r, char *err)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db, "SELECT id FROM tenants", -1, &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "loading tenants");
    thz_err e = THZ_OK;
    while (e == THZ_OK && (rc = sqlite3_step(st)) == SQLITE_ROW)
        e = reg__tenant_add(r, sqlite3_column_int64(st, 0));
    sqlite3_finalize(st);
    if (e != THZ_OK) reg__err(err, "loading tenants: %s", thz_strerror(e));
    return e;
}

static void mirror_free(registry *r)
{
    size_t pos = 0;
    for (hmap_entry *e = hmap_next(&r->tokById, &pos, NULL); e; e = hmap_next(&r->tokById, &pos, e))
        tok_free(e->val);
    hmap_free(&r->tokById);
    hmap_free(&r->tokens);
    hmap_free(&r->secrets);
    reg__certs_free(r);
    pos = 0;
    for (hmap_entry *e = hmap_next(&r->tenants, &pos, NULL); e; e = hmap_next(&r->tenants, &pos, e))
        reg__tenant_free(e->val);
    hmap_free(&r->tenants);
}

thz_err reg_open(const char *data_dir, registry **out, char err[REG_ERR_LEN])
{
    registry *r = calloc(1, sizeof *r);
    if (r == NULL) return THZ_ENOMEM;
    r->lockFd = -1;
    pthread_mutex_init(&r->dbMu, NULL);
    pthread_rwlock_init(&r->lock, NULL);
    pthread_mutex_init(&r->bgMu, NULL);
    pthread_mutex_init(&r->persistMu, NULL);
    pthread_mutex_init(&r->evMu, NULL);
    pthread_cond_init(&r->bgCond, NULL);
    thz_err e = THZ_OK;
    char path[4200];
    snprintf(path, sizeof path, "%s/registry.db", data_dir);
    if ((r->zDir = strdup(data_dir)) == NULL) e = THZ_ENOMEM;
    if (e == THZ_OK && (r->lockFd = reg__lock_dir(data_dir, err)) < 0) e = THZ_EIO;
    if (e == THZ_OK)
        e = reg__db_open(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &r->db, err);
    if (e == THZ_OK) e = reg__migrate(r->db, err);
    if (e == THZ_OK) e = bootstrap(r, err);
    if (e == THZ_OK) {
        /* The dummy hash for unknown emails: same parameters as real ones. */
        char pw[21];
        reg__random_password(pw, 20);
        if ((r->zDummyHash = hash_password(pw)) == NULL) {
            reg__err(err, "argon2id failed");
            e = THZ_ENOMEM;
        }
    }
    if (e == THZ_OK) e = load_tenants(r, err);
    if (e == THZ_OK) e = load_tokens(r, err);
    if (e == THZ_OK) e = reg__load_devices(r, err);
    if (e == THZ_OK) e = reg__load_certs(r, err);
    if (e == THZ_OK) {
        int rc = sqlite3_prepare_v3(
            r->db,
            "UPDATE devices SET last_seen = ?, connected_since = ?, last_disconnect_reason = ?,"
            " msgs_in = ?, msgs_out = ?, bytes_in = ?, bytes_out = ?, presence_version = ?"
            " WHERE tenant_id = ? AND id = ?",
            -1, SQLITE_PREPARE_PERSISTENT, &r->stPresence, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_prepare_v3(r->db, "UPDATE tokens SET last_used_at = ? WHERE id = ?", -1,
                                    SQLITE_PREPARE_PERSISTENT, &r->stTokUsed, NULL);
        if (rc != SQLITE_OK) {
            reg__err(err, "preparing statements: %s", sqlite3_errmsg(r->db));
            e = THZ_EIO;
        }
    }
    if (e == THZ_OK) e = reg__bg_start(r);
    if (e != THZ_OK) {
        if (err && !err[0]) reg__err(err, "%s", thz_strerror(e));
        reg_close(r);
        return e;
    }
    *out = r;
    return THZ_OK;
}

void reg_close(registry *r)
{
    if (r == NULL) return;
    reg__bg_stop(r); /* persists a last time */
    sqlite3_finalize(r->stPresence);
    sqlite3_finalize(r->stTokUsed);
    if (r->db && sqlite3_close(r->db) != SQLITE_OK)
        log_error("registry", "closing registry.db: %s", sqlite3_errmsg(r->db));
    mirror_free(r);
    if (r->lockFd >= 0) close(r->lockFd);
    free(r->zDummyHash);
    free(r->zDir);
    pthread_mutex_destroy(&r->dbMu);
    pthread_rwlock_destroy(&r->lock);
    pthread_mutex_destroy(&r->bgMu);
    pthread_mutex_destroy(&r->persistMu);
    reg__events_free(r);
    pthread_mutex_destroy(&r->evMu);
    pthread_cond_destroy(&r->bgCond);
    free(r);
}

void reg_on_revoke(registry *r, reg_revoke_fn fn, void *ctx)
{
    pthread_rwlock_wrlock(&r->lock);
    r->onRevoke = fn;
    r->revokeCtx = ctx;
    pthread_rwlock_unlock(&r->lock);
}

/* ---------------------------------------------------------------- tokens */

/* Creates a token row and its mirror entry; under dbMu. text receives the token. */
static thz_err token_insert(registry *r, int64_t tenant, int64_t user, const char *name, bool api,
                            reg_role role, int64_t expiresAt, char *text, int64_t *id,
                            int64_t *created)
{
    uint8_t hash[REG_HASH_LEN];
    if (reg__new_secret(REG_TOKEN_PREFIX, text, hash) != THZ_OK) return THZ_EIO;
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "INSERT INTO tokens(tenant_id, user_id, name, kind, hash, role,"
                                " expires_at, created_at) VALUES (?,?,?,?,?,?,?,?)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "insert token");
    *created = reg__now_ms();
    sqlite3_bind_int64(st, 1, tenant);
    sqlite3_bind_int64(st, 2, user);
    sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, api ? "api" : "session", -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 5, hash, REG_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, role_name(role), -1, SQLITE_STATIC);
    if (expiresAt == REG_NEVER)
        sqlite3_bind_null(st, 7);
    else
        sqlite3_bind_int64(st, 7, expiresAt);
    sqlite3_bind_int64(st, 8, *created);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return reg__sql_err(r->db, sqlite3_extended_errcode(r->db), "insert token");
    *id = sqlite3_last_insert_rowid(r->db);
    pthread_rwlock_wrlock(&r->lock);
    thz_err e = tok_add(r, hash, *id, tenant, user, role, api, expiresAt, 0);
    pthread_rwlock_unlock(&r->lock);
    if (e != THZ_OK) {
        /* Not in the mirror means not usable: take it out of the database too. */
        char sql[64];
        snprintf(sql, sizeof sql, "DELETE FROM tokens WHERE id = %lld", (long long)*id);
        reg__exec(r->db, sql);
    }
    return e;
}

/* Verifies email and password (argon2id, outside the lock; unknown emails
 * against the dummy hash so they take as long). THZ_EBADAUTH for a wrong
 * password or an unknown or disabled user. */
static thz_err password_verify(registry *r, const char *email, const char *pw, int64_t *uidOut,
                               int64_t *tenantOut, int *roleOut)
{
    int64_t uid = 0, tenant = 0;
    int role = 0;
    bool disabled = true;
    char *hash = NULL;
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "SELECT id, tenant_id, password_hash, role, disabled FROM users"
                                " WHERE email = ?",
                                -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, email, -1, SQLITE_STATIC);
        if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            uid = sqlite3_column_int64(st, 0);
            tenant = sqlite3_column_int64(st, 1);
            hash = strdup((const char *)sqlite3_column_text(st, 2));
            role = role_parse((const char *)sqlite3_column_text(st, 3));
            disabled = sqlite3_column_int(st, 4) != 0;
        } else if (rc == SQLITE_DONE) {
            rc = SQLITE_OK;
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&r->dbMu);
    if (rc != SQLITE_OK && rc != SQLITE_ROW) {
        free(hash);
        return reg__sql_err(r->db, rc, "login");
    }

    /* Outside the lock: argon2 takes tens of milliseconds. Unknown emails
     * verify against the dummy hash so they take as long as known ones. */
    bool ok = argon2id_verify(hash ? hash : r->zDummyHash, pw, strlen(pw)) == ARGON2_OK;
    free(hash);
    if (!ok || uid == 0 || disabled || role == 0) return THZ_EBADAUTH;
    *uidOut = uid;
    *tenantOut = tenant;
    *roleOut = role;
    return THZ_OK;
}

thz_err reg_password_check(registry *r, const char *email, const char *password, reg_principal *p)
{
    if (!email || !password || strlen(email) > REG_EMAIL_MAX || strlen(password) > REG_PASSWORD_MAX)
        return THZ_EBADAUTH;
    int64_t uid, tenant;
    int role;
    thz_err e = password_verify(r, email, password, &uid, &tenant, &role);
    if (e != THZ_OK) return e;
    p->tenant = tenant;
    p->user = uid;
    p->token = 0;
    p->role = (reg_role)role;
    p->superuser = tenant == REG_DEFAULT_TENANT && role == REG_ADMIN;
    return THZ_OK;
}

thz_err reg_login(registry *r, const cJSON *body, cJSON **out, char err[REG_ERR_LEN])
{
    const char *email, *pw;
    thz_err e = reg__field_str(body, "email", REG_EMAIL_MAX, true, &email, err);
    if (e == THZ_OK) e = reg__field_str(body, "password", REG_PASSWORD_MAX, true, &pw, err);
    if (e != THZ_OK) return e;

    int64_t uid, tenant;
    int role;
    e = password_verify(r, email, pw, &uid, &tenant, &role);
    if (e == THZ_EBADAUTH) {
        reg__err(err, "wrong email or password");
        return THZ_EBADAUTH;
    }
    if (e != THZ_OK) return e;

    char text[REG_TOKEN_TEXT];
    int64_t id, created, expires = reg__now_ms() + REG_SESSION_MS;
    pthread_mutex_lock(&r->dbMu);
    e = token_insert(r, tenant, uid, "login", false, (reg_role)role, expires, text, &id, &created);
    cJSON *user = e == THZ_OK ? user_get_json(r, tenant, uid) : NULL;
    pthread_mutex_unlock(&r->dbMu);
    if (e != THZ_OK) return e;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "token", text);
    cJSON_AddItemToObject(o, "expires_at", reg__time_json(expires));
    cJSON_AddItemToObject(o, "user", user ? user : cJSON_CreateNull());
    OPENSSL_cleanse(text, sizeof text);
    *out = o;
    return THZ_OK;
}

thz_err reg_token_check(registry *r, const char *token, reg_principal *p)
{
    if (token == NULL || strncmp(token, REG_TOKEN_PREFIX, 4) != 0) return THZ_EBADAUTH;
    size_t n = strlen(token);
    if (n != REG_TOKEN_TEXT - 1) return THZ_EBADAUTH;
    uint8_t hash[REG_HASH_LEN];
    reg__sha256(token, n, hash);
    int64_t now = reg__now_ms();
    thz_err e = THZ_EBADAUTH;
    pthread_rwlock_rdlock(&r->lock);
    reg_tok *t = hmap_get(&r->tokens, hash, REG_HASH_LEN);
    if (t && t->expiresAt > now) {
        p->tenant = t->tenant;
        p->user = t->user;
        p->token = t->id;
        p->role = t->role;
        p->superuser = t->tenant == REG_DEFAULT_TENANT && t->role == REG_ADMIN;
        atomic_store_explicit(&t->lastUsed, now, memory_order_relaxed);
        atomic_store_explicit(&t->usedDirty, true, memory_order_relaxed);
        e = THZ_OK;
    }
    pthread_rwlock_unlock(&r->lock);
    return e;
}

/* Revokes token id of tenant (of user, unless user is 0). Under dbMu. */
static thz_err token_revoke_locked(registry *r, int64_t tenant, int64_t user, int64_t id)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "UPDATE tokens SET revoked = 1 WHERE id = ? AND tenant_id = ?"
                                " AND (? = 0 OR user_id = ?) AND revoked = 0",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "revoke token");
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, tenant);
    sqlite3_bind_int64(st, 3, user);
    sqlite3_bind_int64(st, 4, user);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return reg__sql_err(r->db, rc, "revoke token");
    if (sqlite3_changes(r->db) == 0) return THZ_ENOTFOUND;
    pthread_rwlock_wrlock(&r->lock);
    tok_del(r, id);
    pthread_rwlock_unlock(&r->lock);
    return THZ_OK;
}

thz_err reg_logout(registry *r, const reg_principal *p)
{
    pthread_mutex_lock(&r->dbMu);
    thz_err e = token_revoke_locked(r, p->tenant, p->user, p->token);
    pthread_mutex_unlock(&r->dbMu);
    return e;
}

thz_err reg_token_revoke(registry *r, const reg_principal *p, int64_t id)
{
    pthread_mutex_lock(&r->dbMu);
    thz_err e = token_revoke_locked(r, p->tenant, p->role == REG_ADMIN ? 0 : p->user, id);
    pthread_mutex_unlock(&r->dbMu);
    return e;
}

thz_err reg_whoami(registry *r, const reg_principal *p, cJSON **out)
{
    pthread_mutex_lock(&r->dbMu);
    cJSON *user = user_get_json(r, p->tenant, p->user);
    cJSON *tenant = tenant_get_json(r, p->tenant);
    pthread_mutex_unlock(&r->dbMu);
    if (user == NULL || tenant == NULL) {
        cJSON_Delete(user);
        cJSON_Delete(tenant);
        return THZ_ENOTFOUND;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "user", user);
    cJSON_AddItemToObject(o, "tenant", tenant);
    cJSON_AddStringToObject(o, "role", role_name(p->role));
    cJSON_AddBoolToObject(o, "superuser", p->superuser);
    *out = o;
    return THZ_OK;
}

thz_err reg_token_create(registry *r, const reg_principal *p, const cJSON *body, cJSON **out,
                         char err[REG_ERR_LEN])
{
    const char *name;
    int role;
    thz_err e = reg__field_str(body, "name", REG_NAME_MAX, true, &name, err);
    if (e == THZ_OK) e = field_role(body, false, &role, err);
    if (e != THZ_OK) return e;
    if (role == 0) role = (int)p->role;
    if (role > (int)p->role) {
        reg__err(err, "field 'role' must not exceed the caller's role (%s)", role_name(p->role));
        return THZ_EDENIED;
    }
    int64_t expires = REG_NEVER;
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(body, "expires_in_s");
    if (ex && !cJSON_IsNull(ex)) {
        /* Ten years at most; the double is range-checked before the cast. */
        if (!cJSON_IsNumber(ex) || !(ex->valuedouble >= 1 && ex->valuedouble <= 315360000.0)) {
            reg__err(err, "field 'expires_in_s' must be a number of seconds 1..315360000");
            return THZ_EINVAL;
        }
        expires = reg__now_ms() + (int64_t)ex->valuedouble * 1000;
    }
    char text[REG_TOKEN_TEXT];
    int64_t id, created;
    pthread_mutex_lock(&r->dbMu);
    e = token_insert(r, p->tenant, p->user, name, true, (reg_role)role, expires, text, &id,
                     &created);
    pthread_mutex_unlock(&r->dbMu);
    if (e != THZ_OK) return e;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)id);
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "token", text);
    cJSON_AddStringToObject(o, "role", role_name((reg_role)role));
    cJSON_AddItemToObject(o, "expires_at", reg__time_json(expires));
    cJSON_AddItemToObject(o, "created_at", reg__time_json(created));
    OPENSSL_cleanse(text, sizeof text);
    *out = o;
    return THZ_OK;
}

thz_err reg_token_list(registry *r, const reg_principal *p, cJSON **out)
{
    cJSON *a = cJSON_CreateArray();
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "SELECT id, name, role, expires_at, created_at, last_used_at,"
                                " user_id FROM tokens WHERE tenant_id = ? AND kind = 'api'"
                                " AND revoked = 0 AND (? = 0 OR user_id = ?) ORDER BY id",
                                -1, &st, NULL);
    if (rc == SQLITE_OK) {
        int64_t self = p->role == REG_ADMIN ? 0 : p->user;
        sqlite3_bind_int64(st, 1, p->tenant);
        sqlite3_bind_int64(st, 2, self);
        sqlite3_bind_int64(st, 3, self);
        pthread_rwlock_rdlock(&r->lock);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            int64_t id = sqlite3_column_int64(st, 0);
            int64_t used = sqlite3_column_int64(st, 5);
            reg_tok *t = hmap_get(&r->tokById, &id, sizeof id);
            if (t) used = atomic_load_explicit(&t->lastUsed, memory_order_relaxed);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "id", (double)id);
            cJSON_AddStringToObject(o, "name", (const char *)sqlite3_column_text(st, 1));
            cJSON_AddStringToObject(o, "role", (const char *)sqlite3_column_text(st, 2));
            cJSON_AddNumberToObject(o, "user_id", (double)sqlite3_column_int64(st, 6));
            cJSON_AddItemToObject(o, "expires_at", reg__time_json(sqlite3_column_int64(st, 3)));
            cJSON_AddItemToObject(o, "created_at", reg__time_json(sqlite3_column_int64(st, 4)));
            cJSON_AddItemToObject(o, "last_used_at", reg__time_json(used));
            cJSON_AddItemToArray(a, o);
        }
        pthread_rwlock_unlock(&r->lock);
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&r->dbMu);
    if (rc != SQLITE_DONE) {
        cJSON_Delete(a);
        return reg__sql_err(r->db, rc, "list tokens");
    }
    *out = a;
    return THZ_OK;
}

/* ---------------------------------------------------------------- tenants */

thz_err reg_tenant_create(registry *r, const cJSON *body, cJSON **out, char err[REG_ERR_LEN])
{
    const char *name, *email, *pw;
    thz_err e = reg__field_str(body, "name", REG_NAME_MAX, true, &name, err);
    if (e == THZ_OK) e = field_email(body, "admin_email", &email, err);
    if (e == THZ_OK) e = field_password(body, "admin_password", true, &pw, err);
    if (e != THZ_OK) return e;
    char *hash = hash_password(pw);
    if (hash == NULL) return THZ_ENOMEM;
    int64_t now = reg__now_ms(), id = 0, uid;
    pthread_mutex_lock(&r->dbMu);
    e = reg__exec(r->db, "BEGIN IMMEDIATE");
    if (e == THZ_OK) {
        sqlite3_stmt *st;
        int rc = sqlite3_prepare_v2(r->db, "INSERT INTO tenants(name, created_at) VALUES (?,?)", -1,
                                    &st, NULL);
        if (rc == SQLITE_OK) {
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, now);
            rc = sqlite3_step(st);
            sqlite3_finalize(st);
        }
        if (rc != SQLITE_DONE)
            e = reg__sql_err(r->db, sqlite3_extended_errcode(r->db), "insert tenant");
        if (e == THZ_EEXIST) reg__err(err, "a tenant named '%s' exists", name);
        id = sqlite3_last_insert_rowid(r->db);
    }
    if (e == THZ_OK) {
        e = insert_user(r, id, email, hash, REG_ADMIN, now, &uid);
        if (e == THZ_EEXIST) reg__err(err, "field 'admin_email': a user with this email exists");
    }
    if (e == THZ_OK) e = reg__exec(r->db, "COMMIT");
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        e = reg__tenant_add(r, id);
        pthread_rwlock_unlock(&r->lock);
    } else {
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    }
    cJSON *o = e == THZ_OK ? tenant_get_json(r, id) : NULL;
    pthread_mutex_unlock(&r->dbMu);
    free(hash);
    if (e == THZ_OK && o == NULL) e = THZ_ENOMEM;
    if (e == THZ_OK) *out = o;
    return e;
}

thz_err reg_tenant_list(registry *r, cJSON **out)
{
    cJSON *a = cJSON_CreateArray();
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db, "SELECT id, name, created_at FROM tenants ORDER BY id", -1,
                                &st, NULL);
    if (rc == SQLITE_OK) {
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "id", (double)sqlite3_column_int64(st, 0));
            cJSON_AddStringToObject(o, "name", (const char *)sqlite3_column_text(st, 1));
            cJSON_AddItemToObject(o, "created_at", reg__time_json(sqlite3_column_int64(st, 2)));
            cJSON_AddItemToArray(a, o);
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&r->dbMu);
    if (rc != SQLITE_DONE) {
        cJSON_Delete(a);
        return reg__sql_err(r->db, rc, "list tenants");
    }
    *out = a;
    return THZ_OK;
}

/* ---------------------------------------------------------------- users */

thz_err reg_user_create(registry *r, int64_t tenant, const cJSON *body, cJSON **out,
                        char err[REG_ERR_LEN])
{
    const char *email, *pw;
    int role;
    thz_err e = field_email(body, "email", &email, err);
    if (e == THZ_OK) e = field_password(body, "password", true, &pw, err);
    if (e == THZ_OK) e = field_role(body, true, &role, err);
    if (e != THZ_OK) return e;
    pthread_rwlock_rdlock(&r->lock);
    bool known = reg__tenant(r, tenant) != NULL;
    pthread_rwlock_unlock(&r->lock);
    if (!known) return THZ_ENOTFOUND;
    char *hash = hash_password(pw);
    if (hash == NULL) return THZ_ENOMEM;
    int64_t id;
    pthread_mutex_lock(&r->dbMu);
    e = insert_user(r, tenant, email, hash, (reg_role)role, reg__now_ms(), &id);
    cJSON *o = e == THZ_OK ? user_get_json(r, tenant, id) : NULL;
    pthread_mutex_unlock(&r->dbMu);
    free(hash);
    if (e == THZ_EEXIST) reg__err(err, "field 'email': a user with this email exists");
    if (e == THZ_OK && o == NULL) e = THZ_ENOMEM;
    if (e == THZ_OK) *out = o;
    return e;
}

thz_err reg_user_list(registry *r, int64_t tenant, cJSON **out)
{
    cJSON *a = cJSON_CreateArray();
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db,
                                "SELECT id, email, role, disabled, created_at FROM users"
                                " WHERE tenant_id = ? ORDER BY id",
                                -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, tenant);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            cJSON_AddItemToArray(
                a, user_json(sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1),
                             (const char *)sqlite3_column_text(st, 2),
                             sqlite3_column_int(st, 3) != 0, sqlite3_column_int64(st, 4)));
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&r->dbMu);
    if (rc != SQLITE_DONE) {
        cJSON_Delete(a);
        return reg__sql_err(r->db, rc, "list users");
    }
    *out = a;
    return THZ_OK;
}

static thz_err run_user_sql(registry *r, const char *sql, int64_t a, int64_t b, const char *text)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, sql);
    int i = 1;
    if (text) sqlite3_bind_text(st, i++, text, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, i++, a);
    sqlite3_bind_int64(st, i, b);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? THZ_OK : reg__sql_err(r->db, sqlite3_extended_errcode(r->db), sql);
}

thz_err reg_user_update(registry *r, int64_t tenant, int64_t id, const cJSON *body, cJSON **out,
                        char err[REG_ERR_LEN])
{
    int role;
    const char *pw;
    thz_err e = field_role(body, false, &role, err);
    if (e == THZ_OK) e = field_password(body, "password", false, &pw, err);
    if (e != THZ_OK) return e;
    const cJSON *dis = cJSON_GetObjectItemCaseSensitive(body, "disabled");
    if (dis && !cJSON_IsBool(dis)) {
        reg__err(err, "field 'disabled' must be a boolean");
        return THZ_EINVAL;
    }
    char *hash = NULL;
    if (pw && (hash = hash_password(pw)) == NULL) return THZ_ENOMEM;

    pthread_mutex_lock(&r->dbMu);
    cJSON *cur = user_get_json(r, tenant, id);
    e = cur ? reg__exec(r->db, "BEGIN IMMEDIATE") : THZ_ENOTFOUND;
    cJSON_Delete(cur);
    if (e == THZ_OK && role)
        e = run_user_sql(r, "UPDATE users SET role = ? WHERE id = ? AND tenant_id = ?", id, tenant,
                         role_name((reg_role)role));
    /* A token never outranks its user. */
    if (e == THZ_OK && role)
        e = run_user_sql(r,
                         "UPDATE tokens SET role = ? WHERE user_id = ? AND tenant_id = ? AND"
                         " (role = 'admin' OR (role = 'operator' AND ?1 = 'viewer'))",
                         id, tenant, role_name((reg_role)role));
    if (e == THZ_OK && hash)
        e = run_user_sql(r, "UPDATE users SET password_hash = ? WHERE id = ? AND tenant_id = ?", id,
                         tenant, hash);
    bool disable = dis && cJSON_IsTrue(dis);
    if (e == THZ_OK && dis)
        e = run_user_sql(r,
                         disable ? "UPDATE users SET disabled = 1 WHERE id = ? AND tenant_id = ?"
                                 : "UPDATE users SET disabled = 0 WHERE id = ? AND tenant_id = ?",
                         id, tenant, NULL);
    if (e == THZ_OK && disable)
        e = run_user_sql(r, "UPDATE tokens SET revoked = 1 WHERE user_id = ? AND tenant_id = ?", id,
                         tenant, NULL);
    if (e == THZ_OK) e = reg__exec(r->db, "COMMIT");
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        if (disable) tok_del_where(r, tenant, id);
        if (role) {
            size_t pos = 0;
            for (hmap_entry *h = hmap_next(&r->tokById, &pos, NULL); h;
                 h = hmap_next(&r->tokById, &pos, h)) {
                reg_tok *t = h->val;
                if (t->user == id && (int)t->role > role) t->role = (reg_role)role;
            }
        }
        pthread_rwlock_unlock(&r->lock);
    } else if (e != THZ_ENOTFOUND) {
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    }
    cJSON *o = e == THZ_OK ? user_get_json(r, tenant, id) : NULL;
    pthread_mutex_unlock(&r->dbMu);
    free(hash);
    if (e == THZ_OK && o == NULL) e = THZ_ENOMEM;
    if (e == THZ_OK) *out = o;
    return e;
}

thz_err reg_user_delete(registry *r, int64_t tenant, int64_t id)
{
    pthread_mutex_lock(&r->dbMu);
    /* Tokens go with the user (ON DELETE CASCADE). */
    thz_err e =
        run_user_sql(r, "DELETE FROM users WHERE id = ? AND tenant_id = ?", id, tenant, NULL);
    if (e == THZ_OK && sqlite3_changes(r->db) == 0) e = THZ_ENOTFOUND;
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        tok_del_where(r, tenant, id);
        pthread_rwlock_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->dbMu);
    return e;
}

/* ---- stats ---- */

/* Memory of a cJSON tree: its nodes and their strings. */
static uint64_t json_bytes(const cJSON *j)
{
    uint64_t b = 0;
    for (; j; j = j->next) {
        b += sizeof *j;
        if (j->string) b += strlen(j->string) + 1;
        if (j->valuestring) b += strlen(j->valuestring) + 1;
        b += json_bytes(j->child);
    }
    return b;
}

static uint64_t map_bytes(const hmap *m)
{
    return m->nb * sizeof(hmap_entry *) + m->n * sizeof(hmap_entry);
}

void reg_get_stats(registry *r, reg_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!r) return;
    pthread_rwlock_rdlock(&r->lock);
    st->tenants = r->tenants.n;
    st->tokens = r->tokens.n;
    uint64_t b = map_bytes(&r->tenants) + map_bytes(&r->tokens) + map_bytes(&r->tokById) +
                 map_bytes(&r->secrets) + r->tokens.n * sizeof(reg_tok);
    size_t pos = 0;
    for (hmap_entry *e = hmap_next(&r->tenants, &pos, NULL); e;
         e = hmap_next(&r->tenants, &pos, e)) {
        const reg_tenant *t = e->val;
        st->devices += t->nDev;
        st->groups += t->nGroup;
        b += sizeof *t + map_bytes(&t->devs) + t->capDev * sizeof(reg_dev *) +
             t->capGroup * sizeof(reg_group *);
        for (size_t i = 0; i < t->nDev; i++) {
            reg_dev *d = t->sorted[i];
            b += sizeof *d + strlen(d->zId) + 1 + (d->zName ? strlen(d->zName) + 1 : 0) +
                 (d->zType ? strlen(d->zType) + 1 : 0) + json_bytes(d->tags) +
                 json_bytes(d->attrs) + json_bytes(d->groups);
            pthread_mutex_lock(&d->pmu);
            if (d->online) st->devices_online++;
            pthread_mutex_unlock(&d->pmu);
        }
        for (size_t i = 0; i < t->nGroup; i++) {
            const reg_group *g = t->groups[i];
            b += sizeof *g + strlen(g->zId) + 1 + (g->zName ? strlen(g->zName) + 1 : 0) +
                 json_bytes(g->query) + json_bytes(g->policy);
        }
    }
    pthread_rwlock_unlock(&r->lock);
    st->mirror_bytes = b;
}
