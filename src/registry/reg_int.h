/* reg_int.h - private to src/registry: the in-memory mirror's structures and
 * the helpers the registry's files share. Nothing outside the folder includes it.
 *
 * Locks, always taken in this order and never the other way round:
 *   registry.dbMu   the one sqlite3 connection (and every write: writers hold
 *                   it from their first SQL statement until the mirror is
 *                   updated, so the mirror equals the database while it is held)
 *   registry.lock   rwlock over the mirror (maps, device records, groups)
 *   reg_dev.pmu     one device's presence
 * Fast paths take only registry.lock (read) and pmu. */
#ifndef THZ_REG_INT_H
#define THZ_REG_INT_H

#include "registry/registry.h"

#include <pthread.h>
#include <stdatomic.h>

#include <sqlite3.h>

#include "core/hmap.h"

#define REG_HASH_LEN      32 /* SHA-256 */
#define REG_TOKEN_PREFIX  "thz_"
#define REG_SECRET_TEXT   44 /* 43 base64url characters + NUL */
#define REG_TOKEN_TEXT    (4 + REG_SECRET_TEXT)
#define REG_NAME_MAX      256
#define REG_TAGS_MAX      64
#define REG_TAG_KEY_MAX   128
#define REG_TAG_VALUE_MAX 256
#define REG_ATTRS_MAX     16384
#define REG_EMAIL_MAX     254
#define REG_PASSWORD_MIN  8
#define REG_PASSWORD_MAX  1024
#define REG_FILTERS_MAX   64   /* per policy direction */
#define REG_FILTER_MAX    1024 /* bytes of one policy filter */
#define REG_GROUPS_MAX    64   /* static groups per device */
#define REG_SESSION_MS    (24 * 3600 * 1000LL)
#define REG_NEVER         INT64_MAX

enum { CNT_MSGS_IN, CNT_MSGS_OUT, CNT_BYTES_IN, CNT_BYTES_OUT, CNT_N };

struct reg_dev {
    atomic_int refs; /* the mirror holds one while the device exists */
    int64_t tenant;
    char *zId; /* immutable */

    /* Guarded by registry.lock. */
    char *zName, *zType;
    cJSON *tags;   /* object of strings */
    cJSON *attrs;  /* object */
    cJSON *groups; /* array of static group ids, sorted */
    bool enabled;
    bool deleted;                 /* removed from the mirror; only the broker holds it */
    uint8_t secret[REG_HASH_LEN]; /* SHA-256 of the secret text; key of registry.secrets */
    int64_t createdAt, updatedAt; /* ms since the epoch */

    /* Presence, guarded by pmu. */
    pthread_mutex_t pmu;
    bool online;
    uint64_t connVersion;             /* what the latest connect returned */
    bool dirty;                       /* changed since the background thread last wrote it */
    int64_t connectedSince, lastSeen; /* ms; lastSeen is the disconnect time, 0 never */
    char zAddr[64];
    int protocolVersion, keepAlive;
    char *zReason;
    char *zClientId; /* of the latest connection */
    uint64_t version;
    uint64_t telemetryErrors;  /* payloads the ingest refused, since start */
    char *zTelemetryError;     /* the last refusal's message */
    uint64_t persisted[CNT_N]; /* totals as last written */

    /* Counters, relaxed atomics: since connect, and the totals before it. */
    _Atomic uint64_t live[CNT_N];
    _Atomic uint64_t base[CNT_N];
};

typedef struct reg_group {
    char *zId, *zName;
    cJSON *query;  /* object of tag -> value, or NULL: no dynamic membership */
    cJSON *policy; /* {"publish":[...],"subscribe":[...]}, always both arrays */
    int64_t createdAt;
} reg_group;

typedef struct reg_tenant {
    int64_t id;       /* key of registry.tenants */
    hmap devs;        /* id -> reg_dev */
    reg_dev **sorted; /* by id, for listing */
    size_t nDev, capDev;
    reg_group **groups; /* by id */
    size_t nGroup, capGroup;
    /* Rates sampled by the background thread. */
    _Atomic double inRate, outRate;
    uint64_t prevIn, prevOut; /* background thread only */
    int64_t prevMs;
} reg_tenant;

typedef struct reg_tok {
    uint8_t hash[REG_HASH_LEN]; /* key of registry.tokens */
    int64_t id;                 /* key of registry.tokById */
    int64_t tenant, user, expiresAt;
    reg_role role;
    bool api;
    _Atomic int64_t lastUsed;
    atomic_bool usedDirty;
} reg_tok;

struct registry {
    char *zDir;
    int lockFd; /* flock on DATA_DIR/registry.lock: one daemon per data dir */

    pthread_mutex_t dbMu;
    sqlite3 *db;
    sqlite3_stmt *stPresence, *stTokUsed; /* the background thread's, under dbMu */
    char *zDummyHash;                     /* verified for unknown emails, so they cost the same */

    pthread_rwlock_t lock;
    hmap tenants; /* id -> reg_tenant */
    hmap tokens;  /* SHA-256 -> reg_tok */
    hmap tokById; /* id -> reg_tok */
    hmap secrets; /* SHA-256 -> reg_dev */
    reg_revoke_fn onRevoke;
    void *revokeCtx;
    hmap certs; /* fingerprint -> reg_cert (certs.c) */
    hmap cas;   /* registered CA id (int64) -> reg_ca */
    reg_cert_revoke_fn onCertRevoke;
    void *certRevokeCtx;

    /* Connection events waiting for the background thread (events.c). */
    pthread_mutex_t evMu;
    struct reg_event *ev;
    size_t nEv, capEv;
    reg_presence_fn onPresence;
    void *presenceCtx;

    pthread_mutex_t persistMu; /* one persister at a time */
    pthread_t bg;
    bool bgStarted;
    pthread_mutex_t bgMu;
    pthread_cond_t bgCond;
    bool bgStop;
};

/* ---- db.c: SQLite, time, randomness ---- */

int64_t reg__now_ms(void);
/* "2026-11-26T19:00:00.123Z"; out has room for 64 bytes. */
void reg__fmt_time(int64_t ms, char *out);
/* A JSON string for ms, or JSON null when ms is 0. */
cJSON *reg__time_json(int64_t ms);
void reg__sha256(const void *p, size_t n, uint8_t out[REG_HASH_LEN]);
/* prefix + base64url (no padding) of 32 random bytes into out (REG_TOKEN_TEXT
 * bytes at least); its SHA-256 into hash. */
thz_err reg__new_secret(const char *prefix, char *out, uint8_t hash[REG_HASH_LEN]);
/* n random characters of the base64url alphabet, NUL-terminated. */
thz_err reg__random_password(char *out, size_t n);
/* Opens path with the connection settings (WAL, foreign keys, busy timeout). */
thz_err reg__db_open(const char *path, int flags, sqlite3 **db, char *err);
/* Applies the migrations not yet applied. */
thz_err reg__migrate(sqlite3 *db, char *err);
/* Maps an SQLite result to a thz_err, logging unexpected ones with what. */
thz_err reg__sql_err(sqlite3 *db, int rc, const char *what);
thz_err reg__exec(sqlite3 *db, const char *sql);
/* flock(LOCK_EX|LOCK_NB) on DATA_DIR/registry.lock; returns the fd or -1. */
int reg__lock_dir(const char *dataDir, char *err);
void reg__err(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- registry.c: validation helpers ---- */

bool reg__id_valid(const char *z);
/* Validates body's optional string field name (<= max bytes; required when
 * req) into *out (borrowed from body; NULL when absent). */
thz_err reg__field_str(const cJSON *body, const char *name, size_t max, bool req, const char **out,
                       char *err);
/* Drops expired tokens from the mirror; the background thread calls it. */
void reg__sweep_tokens(registry *r);
/* Lookup under registry.lock. */
reg_tenant *reg__tenant(registry *r, int64_t id);
thz_err reg__tenant_add(registry *r, int64_t id);

/* ---- devices.c: devices and groups ---- */

thz_err reg__load_devices(registry *r, char *err);
void reg__tenant_free(reg_tenant *t);
/* The device object (with presence); under registry.lock. */
cJSON *reg__dev_json(const reg_dev *d);

/* Lookup under registry.lock. */
reg_dev *reg__dev_find(registry *r, int64_t tenant, const char *id);

/* ---- certs.c: device certificates ---- */

thz_err reg__load_certs(registry *r, char *err);
void reg__certs_free(registry *r);
/* Drops device id's certificates from the mirror (its rows went with it by
 * ON DELETE CASCADE); under registry.lock (write). */
void reg__certs_forget_device(registry *r, int64_t tenant, const char *id);

/* ---- events.c: connection history ---- */

/* Queues a connection event of d (called by presence.c, no lock held) and
 * tells the presence observer. */
void reg__event(registry *r, reg_dev *d, bool online, int64_t at, const char *address,
                int protocol_version, const char *client_id, const char *reason);
/* Writes the queued events (background thread, reg_device_events, close). */
void reg__persist_events(registry *r);
void reg__events_free(registry *r);

/* ---- presence.c: reg_dev lifetime, presence, the background thread ---- */

reg_dev *reg__dev_new(int64_t tenant, const char *id);
void reg__dev_retain(reg_dev *d);
/* Adds the presence fields to obj. */
void reg__presence_json(reg_dev *d, cJSON *obj);
thz_err reg__bg_start(registry *r);
void reg__bg_stop(registry *r);
/* Writes dirty presence and token last-used times now. */
void reg__persist(registry *r);

#endif
