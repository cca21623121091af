/* db.c - the registry's SQLite side: connection settings, the versioned
 * schema migrations, online and offline backup and restore; plus the small
 * helpers (time, hashing, random secrets) the registry's files share. */
#include "registry/reg_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "core/log.h"

/* The schema, one script per version. PRAGMA user_version holds how many
 * have been applied; each runs in its own transaction. Append only: a
 * released script is never edited, a change is a new script. Times are
 * INTEGER milliseconds since the epoch (UTC). */
static const char *const migrations[] = {
    /* 1: the initial schema. */
    "CREATE TABLE tenants("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  created_at INTEGER NOT NULL);"
    /* Email is unique across tenants, so a login by email is unambiguous. */
    "CREATE TABLE users("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,"
    "  email TEXT NOT NULL UNIQUE COLLATE NOCASE,"
    "  password_hash TEXT NOT NULL,"
    "  role TEXT NOT NULL CHECK(role IN ('admin','operator','viewer')),"
    "  disabled INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL);"
    "CREATE INDEX users_tenant ON users(tenant_id);"
    "CREATE TABLE tokens("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,"
    "  user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
    "  name TEXT NOT NULL,"
    "  kind TEXT NOT NULL CHECK(kind IN ('session','api')),"
    "  hash BLOB NOT NULL UNIQUE,"
    "  role TEXT NOT NULL CHECK(role IN ('admin','operator','viewer')),"
    "  expires_at INTEGER,"
    "  revoked INTEGER NOT NULL DEFAULT 0,"
    "  last_used_at INTEGER,"
    "  created_at INTEGER NOT NULL);"
    "CREATE INDEX tokens_user ON tokens(user_id);"
    "CREATE TABLE devices("
    "  tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,"
    "  id TEXT NOT NULL,"
    "  name TEXT NOT NULL DEFAULT '',"
    "  type TEXT NOT NULL DEFAULT '',"
    "  tags TEXT NOT NULL DEFAULT '{}',"
    "  attributes TEXT NOT NULL DEFAULT '{}',"
    "  enabled INTEGER NOT NULL DEFAULT 1,"
    "  secret_hash BLOB NOT NULL UNIQUE,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  last_seen INTEGER,"
    "  connected_since INTEGER,"
    "  last_disconnect_reason TEXT,"
    "  msgs_in INTEGER NOT NULL DEFAULT 0,"
    "  msgs_out INTEGER NOT NULL DEFAULT 0,"
    "  bytes_in INTEGER NOT NULL DEFAULT 0,"
    "  bytes_out INTEGER NOT NULL DEFAULT 0,"
    "  presence_version INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY(tenant_id, id)) WITHOUT ROWID;"
    "CREATE TABLE \"groups\"("
    "  tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,"
    "  id TEXT NOT NULL,"
    "  name TEXT NOT NULL DEFAULT '',"
    "  query TEXT,"
    "  policy TEXT NOT NULL DEFAULT '{\"publish\":[],\"subscribe\":[]}',"
    "  created_at INTEGER NOT NULL,"
    "  PRIMARY KEY(tenant_id, id)) WITHOUT ROWID;"
    "CREATE TABLE group_members("
    "  tenant_id INTEGER NOT NULL,"
    "  group_id TEXT NOT NULL,"
    "  device_id TEXT NOT NULL,"
    "  PRIMARY KEY(tenant_id, group_id, device_id),"
    "  FOREIGN KEY(tenant_id, group_id) REFERENCES \"groups\"(tenant_id, id) ON DELETE CASCADE,"
    "  FOREIGN KEY(tenant_id, device_id) REFERENCES devices(tenant_id, id) ON DELETE CASCADE"
    ") WITHOUT ROWID;"
    "CREATE INDEX group_members_device ON group_members(tenant_id, device_id);",
    /* 2: connection history (the last 200 per device, trimmed by the
     * background thread) and the web dashboards. */
    "CREATE TABLE device_events("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id INTEGER NOT NULL,"
    "  device_id TEXT NOT NULL,"
    "  time INTEGER NOT NULL,"
    "  type TEXT NOT NULL CHECK(type IN ('connected','disconnected')),"
    "  address TEXT,"
    "  protocol TEXT,"
    "  client_id TEXT,"
    "  reason TEXT,"
    "  FOREIGN KEY(tenant_id, device_id) REFERENCES devices(tenant_id, id) ON DELETE CASCADE);"
    "CREATE INDEX device_events_device ON device_events(tenant_id, device_id, id);"
    "CREATE TABLE dashboards("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,"
    "  title TEXT NOT NULL,"
    "  definition TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL);"
    "CREATE INDEX dashboards_tenant ON dashboards(tenant_id);",
    /* 3: device certificates (mutual TLS) and registered customer CAs. The
     * tenant CA's key is a file (DATA_DIR/tls/tenants/N/ca.key), not a row. */
    "CREATE TABLE tenant_cas("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,"
    "  fingerprint TEXT NOT NULL,"
    "  subject TEXT NOT NULL,"
    "  certificate_pem TEXT NOT NULL,"
    "  not_before INTEGER NOT NULL,"
    "  not_after INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  UNIQUE(tenant_id, fingerprint));"
    "CREATE TABLE device_certs("
    "  fingerprint TEXT PRIMARY KEY,"
    "  tenant_id INTEGER NOT NULL,"
    "  device_id TEXT NOT NULL,"
    "  ca_id INTEGER NOT NULL DEFAULT 0," /* 0: the tenant CA */
    "  source TEXT NOT NULL CHECK(source IN ('created','csr','registered')),"
    "  subject TEXT NOT NULL,"
    "  issuer TEXT NOT NULL,"
    "  certificate_pem TEXT NOT NULL,"
    "  not_before INTEGER NOT NULL,"
    "  not_after INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  revoked_at INTEGER,"
    "  FOREIGN KEY(tenant_id, device_id) REFERENCES devices(tenant_id, id) ON DELETE CASCADE);"
    "CREATE INDEX device_certs_device ON device_certs(tenant_id, device_id);",
};
#define N_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

void reg__err(char *err, const char *fmt, ...)
{
    if (err == NULL) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, REG_ERR_LEN, fmt, ap);
    va_end(ap);
}

int64_t reg__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void reg__fmt_time(int64_t ms, char *out)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

cJSON *reg__time_json(int64_t ms)
{
    if (ms <= 0 || ms == REG_NEVER) return cJSON_CreateNull();
    char buf[64];
    reg__fmt_time(ms, buf);
    return cJSON_CreateString(buf);
}

void reg__sha256(const void *p, size_t n, uint8_t out[REG_HASH_LEN])
{
    SHA256(p, n, out);
}

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

thz_err reg__new_secret(const char *prefix, char *out, uint8_t hash[REG_HASH_LEN])
{
    uint8_t raw[33] = {0}; /* 32 random bytes; one zero byte pads the last group */
    if (RAND_bytes(raw, 32) != 1) return THZ_EIO;
    size_t n = strlen(prefix);
    memcpy(out, prefix, n);
    for (size_t i = 0; i < 33; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        out[n++] = b64url[v >> 18 & 63];
        out[n++] = b64url[v >> 12 & 63];
        out[n++] = b64url[v >> 6 & 63];
        out[n++] = b64url[v & 63];
    }
    n -= 1; /* 32 bytes are 43 characters without padding */
    out[n] = '\0';
    reg__sha256(out, n, hash);
    return THZ_OK;
}

thz_err reg__random_password(char *out, size_t n)
{
    uint8_t raw[64];
    if (n > sizeof raw || RAND_bytes(raw, (int)n) != 1) return THZ_EIO;
    for (size_t i = 0; i < n; i++) out[i] = b64url[raw[i] & 63]; /* 64 symbols: no bias */
    out[n] = '\0';
    return THZ_OK;
}

thz_err reg__sql_err(sqlite3 *db, int rc, const char *what)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW: return THZ_OK;
    case SQLITE_CONSTRAINT:
        if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) return THZ_ENOTFOUND;
        if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) return THZ_EEXIST;
        return THZ_EINVAL;
    case SQLITE_NOMEM: return THZ_ENOMEM;
    case SQLITE_FULL: /* the disk is full: a distinct, retryable failure */
        log_error("registry", "%s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        return THZ_ENOSPC;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        log_error("registry", "%s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        return THZ_ECORRUPT;
    default:
        log_error("registry", "%s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        /* SQLite reports a write that hit a full disk as SQLITE_IOERR_WRITE
         * (or _FSYNC...) with errno ENOSPC, not always as SQLITE_FULL */
        return db && (rc & 0xff) == SQLITE_IOERR ? thz_err_from_errno(sqlite3_system_errno(db))
                                                 : THZ_EIO;
    }
}

thz_err reg__exec(sqlite3 *db, const char *sql)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? THZ_OK : reg__sql_err(db, sqlite3_extended_errcode(db), sql);
}

thz_err reg__db_open(const char *path, int flags, sqlite3 **out, char *err)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        reg__err(err, "cannot open %s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return THZ_EIO;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 5000);
    /* WAL: readers never block the writer. synchronous=NORMAL in WAL mode
     * syncs the WAL at each checkpoint, not at each commit: a power loss may
     * forget the last commits but never corrupts the database, which is the
     * trade SQLite documents for WAL and the one we take for a registry
     * whose writes are human-paced and whose presence is rewritten anyway. */
    const char *pragmas = (flags & SQLITE_OPEN_READONLY)
                              ? "PRAGMA foreign_keys=ON;"
                              : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                                "PRAGMA foreign_keys=ON;";
    rc = sqlite3_exec(db, pragmas, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        reg__err(err, "%s: %s", path, sqlite3_errmsg(db));
        thz_err e = reg__sql_err(db, sqlite3_extended_errcode(db), path);
        sqlite3_close(db);
        return e;
    }
    *out = db;
    return THZ_OK;
}

static int user_version(sqlite3 *db)
{
    sqlite3_stmt *st;
    int v = -1;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK) return -1;
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return v;
}

thz_err reg__migrate(sqlite3 *db, char *err)
{
    int v = user_version(db);
    if (v < 0) {
        reg__err(err, "cannot read the schema version: %s", sqlite3_errmsg(db));
        return THZ_ECORRUPT;
    }
    if (v > N_MIGRATIONS) {
        reg__err(err, "registry.db has schema version %d, newer than this thinghz (%d)", v,
                 N_MIGRATIONS);
        return THZ_EUNSUPPORTED;
    }
    for (; v < N_MIGRATIONS; v++) {
        char setv[48];
        snprintf(setv, sizeof setv, "PRAGMA user_version=%d;", v + 1);
        thz_err e = reg__exec(db, "BEGIN IMMEDIATE");
        if (e == THZ_OK) e = reg__exec(db, migrations[v]);
        if (e == THZ_OK) e = reg__exec(db, setv);
        if (e == THZ_OK) e = reg__exec(db, "COMMIT");
        if (e != THZ_OK) {
            reg__err(err, "schema migration %d failed: %s", v + 1, sqlite3_errmsg(db));
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return e;
        }
        log_info("registry", "applied schema migration %d", v + 1);
    }
    return THZ_OK;
}

int reg__lock_dir(const char *dataDir, char *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/registry.lock", dataDir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        reg__err(err, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        reg__err(err, "%s is in use by a running thinghz (%s)", dataDir, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* mkdir -p, mode 0700. */
static thz_err make_dirs(const char *dir, char *err)
{
    char path[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof path) {
        reg__err(err, "bad directory name");
        return THZ_EINVAL;
    }
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0') continue;
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            reg__err(err, "cannot create %s: %s", path, strerror(errno));
            return THZ_EIO;
        }
        path[i] = c;
    }
    return THZ_OK;
}

/* Copies src into a fresh database at dstPath (written to a temporary name
 * and renamed, so a failed backup never leaves a half file under the name). */
static thz_err copy_db(sqlite3 *src, const char *dstPath, char *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", dstPath);
    unlink(tmp);
    sqlite3 *dst = NULL;
    int rc = sqlite3_open_v2(tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        reg__err(err, "cannot create %s: %s", tmp, dst ? sqlite3_errmsg(dst) : sqlite3_errstr(rc));
        sqlite3_close(dst);
        return THZ_EIO;
    }
    sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
    if (b == NULL) {
        reg__err(err, "backup: %s", sqlite3_errmsg(dst));
        sqlite3_close(dst);
        unlink(tmp);
        return THZ_EIO;
    }
    rc = sqlite3_backup_step(b, -1);
    sqlite3_backup_finish(b);
    if (rc != SQLITE_DONE) {
        reg__err(err, "backup: %s", sqlite3_errstr(rc));
        sqlite3_close(dst);
        unlink(tmp);
        return THZ_EIO;
    }
    /* The copy carries the source's WAL flag; fold everything into the one
     * file so the backup is a single self-contained registry.db. */
    sqlite3_exec(dst, "PRAGMA journal_mode=DELETE", NULL, NULL, NULL);
    if (sqlite3_close(dst) != SQLITE_OK || rename(tmp, dstPath) != 0) {
        reg__err(err, "cannot write %s: %s", dstPath, strerror(errno));
        unlink(tmp);
        return THZ_EIO;
    }
    return THZ_OK;
}

thz_err reg_backup(registry *r, const char *dir, char err[REG_ERR_LEN])
{
    thz_err e = make_dirs(dir, err);
    if (e != THZ_OK) return e;
    reg__persist(r); /* presence as of now goes into the copy */
    reg__persist_events(r);
    char path[4200];
    snprintf(path, sizeof path, "%s/registry.db", dir);
    pthread_mutex_lock(&r->dbMu);
    e = copy_db(r->db, path, err);
    pthread_mutex_unlock(&r->dbMu);
    if (e == THZ_OK) log_info("registry", "backed up to %s", path);
    return e;
}

thz_err reg_backup_offline(const char *data_dir, const char *dir, char err[REG_ERR_LEN])
{
    char src[4200], dst[4200];
    snprintf(src, sizeof src, "%s/registry.db", data_dir);
    snprintf(dst, sizeof dst, "%s/registry.db", dir);
    thz_err e = make_dirs(dir, err);
    if (e != THZ_OK) return e;
    sqlite3 *db;
    /* Read-write so a WAL left by a stopped daemon can be recovered. */
    e = reg__db_open(src, SQLITE_OPEN_READWRITE, &db, err);
    if (e != THZ_OK) return e;
    e = copy_db(db, dst, err);
    sqlite3_close(db);
    return e;
}

/* Restore replaces the data dir's database by DIR/registry.db. It takes the
 * same flock as a running daemon (reg_open), so it is refused while one holds
 * the data dir; and it copies through SQLite's backup API into the live file
 * rather than renaming over it, so a leftover -wal or -shm of the old
 * database can never be applied to the restored one. */
thz_err reg_restore_offline(const char *data_dir, const char *dir, char err[REG_ERR_LEN])
{
    char src[4200], dst[4200];
    snprintf(src, sizeof src, "%s/registry.db", dir);
    snprintf(dst, sizeof dst, "%s/registry.db", data_dir);
    thz_err e = make_dirs(data_dir, err);
    if (e != THZ_OK) return e;
    int fd = reg__lock_dir(data_dir, err);
    if (fd < 0) return THZ_EDENIED;
    sqlite3 *in = NULL, *out = NULL;
    e = reg__db_open(src, SQLITE_OPEN_READONLY, &in, err);
    if (e == THZ_OK) {
        int v = user_version(in);
        sqlite3_stmt *st = NULL;
        bool ok = false;
        if (sqlite3_prepare_v2(in, "PRAGMA quick_check", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            ok = strcmp((const char *)sqlite3_column_text(st, 0), "ok") == 0;
        sqlite3_finalize(st);
        if (!ok || v < 1 || v > N_MIGRATIONS) {
            reg__err(err, "%s is not a thinghz registry this version can restore", src);
            e = THZ_ECORRUPT;
        }
    }
    if (e == THZ_OK) e = reg__db_open(dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &out, err);
    if (e == THZ_OK) {
        sqlite3_backup *b = sqlite3_backup_init(out, "main", in, "main");
        int rc = b ? sqlite3_backup_step(b, -1) : sqlite3_errcode(out);
        if (b) sqlite3_backup_finish(b);
        if (rc != SQLITE_DONE) {
            reg__err(err, "restore: %s", sqlite3_errmsg(out));
            e = THZ_EIO;
        } else {
            sqlite3_exec(out, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
        }
    }
    sqlite3_close(in);
    sqlite3_close(out);
    close(fd);
    if (e == THZ_OK) log_info("registry", "restored %s from %s", dst, src);
    return e;
}
