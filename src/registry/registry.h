/* registry.h - tenants, users, API tokens, devices, groups and device
 * credentials (the part of thinghz that replaces DynamoDB and IoT Core's
 * registry), kept in SQLite (WAL mode) at DATA_DIR/registry.db, plus an
 * in-memory mirror of what the hot paths read (token and device-secret
 * lookups, device records, presence).
 *
 * Threads. Every function is thread-safe. Functions marked [fast] touch only
 * memory (a read lock, a SHA-256 of a short string) and may run on an I/O
 * thread. All others run SQL or hash a password with argon2id: call them from
 * a worker thread (uv_queue_work), never from an I/O thread. Writes go to
 * SQLite first and update the mirror after the commit, so a [fast] read never
 * sees an object the database does not have.
 *
 * Objects cross this interface as cJSON: the registry owns the JSON shape of
 * its objects (documented in docs/API.md and the OpenAPI file) and validates
 * request bodies: unknown fields are ignored; a wrong type, a missing required
 * field or an out-of-range value is THZ_EINVAL with err naming the field.
 * Every *out is a new cJSON the caller deletes; it is set only on THZ_OK.
 *
 * Errors: THZ_EINVAL (bad input; err says what), THZ_ENOTFOUND (no such
 * object *in this tenant*: another tenant's objects are never visible),
 * THZ_EEXIST (id or email taken), THZ_EBADAUTH (login or token refused),
 * THZ_EDENIED (the role may not do this), THZ_EQUOTA (a limit), THZ_EIO /
 * THZ_ECORRUPT (database trouble, logged). */
#ifndef THZ_REGISTRY_H
#define THZ_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "core/err.h"

#define REG_ERR_LEN 200 /* size of the err buffers below */
#define REG_DEFAULT_TENANT                                                                         \
    1                  /* created on first start; password-file and anonymous clients live here */
#define REG_ID_MAX 128 /* device, group ids: 1..128 bytes of [A-Za-z0-9_.:-] */

typedef struct registry registry;

typedef enum reg_role { REG_VIEWER = 1, REG_OPERATOR = 2, REG_ADMIN = 3 } reg_role;

/* Who is calling, from a bearer token. */
typedef struct reg_principal {
    int64_t tenant;
    int64_t user;
    int64_t token;  /* the id of the token (login session or API token) */
    reg_role role;  /* the token's role: never above its user's */
    bool superuser; /* an admin of the default tenant: may manage tenants */
} reg_principal;

/* ---- lifecycle ---- */

/* Opens (creating) DATA_DIR/registry.db in WAL mode and runs the schema
 * migrations not yet applied (each in a transaction; the applied version is
 * kept in PRAGMA user_version). On the first start it creates the default
 * tenant and an admin user: email from THINGHZ_ADMIN_EMAIL (else
 * "admin@localhost"), password from THINGHZ_ADMIN_PASSWORD, else a random one
 * printed once to stderr. There is never a default password. Then loads the
 * mirror. Starts one background thread that persists presence and token
 * last-used times every few seconds. */
thz_err reg_open(const char *data_dir, registry **out, char err[REG_ERR_LEN]);
/* Persists presence, stops the thread, closes the database. */
void reg_close(registry *r);

/* An online, consistent copy of the database into DIR/registry.db (SQLite's
 * backup API), callable while the daemon serves. */
thz_err reg_backup(registry *r, const char *dir, char err[REG_ERR_LEN]);
/* Offline forms for the CLI: back up a stopped daemon's data dir, and restore
 * DIR/registry.db into a data dir (refused while a daemon holds it). */
thz_err reg_backup_offline(const char *data_dir, const char *dir, char err[REG_ERR_LEN]);
thz_err reg_restore_offline(const char *data_dir, const char *dir, char err[REG_ERR_LEN]);

/* What the registry holds, for /metrics. Walks the mirror under its read
 * lock (O(devices)); callable from any thread. */
typedef struct reg_stats {
    uint64_t tenants, devices, devices_online, groups, tokens;
    uint64_t mirror_bytes; /* memory of the in-memory mirror (estimate) */
} reg_stats;
void reg_get_stats(registry *r, reg_stats *st);

/* Called (on the registry's caller thread) when a device's credentials stop
 * being valid: rotated, disabled or deleted. The broker disconnects it. */
typedef void (*reg_revoke_fn)(int64_t tenant, const char *device_id, void *ctx);
void reg_on_revoke(registry *r, reg_revoke_fn fn, void *ctx);

/* ---- sessions and tokens ---- */

/* {"email","password"} → {"token","expires_at","user":{...}}. A login token
 * lasts 24 h and has the user's role. THZ_EBADAUTH for a wrong password, an
 * unknown or disabled user (same answer, same time spent). */
thz_err reg_login(registry *r, const cJSON *body, cJSON **out, char err[REG_ERR_LEN]);
/* Checks email and password without creating a session (HTTP Basic on the
 * Prometheus API): the principal has token 0 and the user's role. Slow
 * (argon2id): run it on a worker thread. THZ_EBADAUTH as reg_login. */
thz_err reg_password_check(registry *r, const char *email, const char *password, reg_principal *p);
/* [fast] Resolves a bearer token. THZ_EBADAUTH when unknown, expired, revoked
 * or its user disabled. Records the last-used time (persisted later). */
thz_err reg_token_check(registry *r, const char *token, reg_principal *p);
/* Revokes the calling token (logout). */
thz_err reg_logout(registry *r, const reg_principal *p);
/* The calling user and tenant: {"user":{...},"tenant":{...},"role"}. */
thz_err reg_whoami(registry *r, const reg_principal *p, cJSON **out);
/* API tokens of the calling user. create: {"name", "expires_in_s"?,
 * "role"? (<= caller's)} → {"id","name","token" (shown once),"role",
 * "expires_at","created_at"}. list: [{... without "token", "last_used_at"}].
 * An admin sees and revokes every token of the tenant. */
thz_err reg_token_create(registry *r, const reg_principal *p, const cJSON *body, cJSON **out,
                         char err[REG_ERR_LEN]);
thz_err reg_token_list(registry *r, const reg_principal *p, cJSON **out);
thz_err reg_token_revoke(registry *r, const reg_principal *p, int64_t id);

/* ---- tenants (superuser) ---- */

/* {"name","admin_email","admin_password"} → {"id","name","created_at"}. */
thz_err reg_tenant_create(registry *r, const cJSON *body, cJSON **out, char err[REG_ERR_LEN]);
thz_err reg_tenant_list(registry *r, cJSON **out);

/* ---- users (admin of the tenant) ---- */

/* {"email","password" (>= 8 chars),"role"} → user object
 * {"id","email","role","disabled","created_at"} (never a hash). */
thz_err reg_user_create(registry *r, int64_t tenant, const cJSON *body, cJSON **out,
                        char err[REG_ERR_LEN]);
thz_err reg_user_list(registry *r, int64_t tenant, cJSON **out);
/* {"role"?, "disabled"?, "password"?}. Disabling a user revokes its tokens. */
thz_err reg_user_update(registry *r, int64_t tenant, int64_t id, const cJSON *body, cJSON **out,
                        char err[REG_ERR_LEN]);
thz_err reg_user_delete(registry *r, int64_t tenant, int64_t id);

/* ---- devices ---- */

/* {"id","name"?,"type"?,"tags"? (object of strings),"attributes"? (object),
 * "groups"? (array of group ids),"enabled"?} → the device object plus
 * "secret" (shown only here and by rotate). The device object:
 * {"id","name","type","tags","attributes","groups","enabled","created_at",
 *  "updated_at", presence fields (see reg_device_get)}. */
thz_err reg_device_create(registry *r, int64_t tenant, const cJSON *body, cJSON **out,
                          char err[REG_ERR_LEN]);
/* [fast] The device object with its presence: "online" (bool),
 * "connected_since", "last_seen" (RFC 3339 or null), "client_address",
 * "protocol_version", "keep_alive", "messages_in","messages_out","bytes_in",
 * "bytes_out" (since connect), "messages_in_total", ..., "bytes_out_total",
 * "last_disconnect_reason". */
thz_err reg_device_get(registry *r, int64_t tenant, const char *id, cJSON **out);
/* [fast] Lists devices by id order: tag "k=v" or "k" (NULL: any), group id
 * (NULL: any; static or dynamic membership), online (-1 any, 0, 1); at most
 * limit (1..1000) after cursor (NULL: from the start). out:
 * {"items":[...],"next_cursor": string or null}. */
thz_err reg_device_list(registry *r, int64_t tenant, const char *tag, const char *group, int online,
                        int limit, const char *cursor, cJSON **out, char err[REG_ERR_LEN]);
/* {"name"?,"type"?,"tags"?,"attributes"?,"groups"?,"enabled"?}: fields given
 * replace the stored ones. Disabling revokes (see reg_on_revoke). */
thz_err reg_device_update(registry *r, int64_t tenant, const char *id, const cJSON *body,
                          cJSON **out, char err[REG_ERR_LEN]);
thz_err reg_device_delete(registry *r, int64_t tenant, const char *id);
/* A new secret; the old one stops working at once. out: {"id","secret"}. */
thz_err reg_device_rotate(registry *r, int64_t tenant, const char *id, cJSON **out);
/* [fast] {"devices","online","offline","messages_in_per_s","messages_out_per_s"}. */
thz_err reg_fleet_summary(registry *r, int64_t tenant, cJSON **out);

/* ---- groups ---- */

/* {"id","name"?,"query"? (object of tag → value: dynamic membership, every
 * pair must match), "policy"? {"publish":[filters],"subscribe":[filters]}}
 * → {"id","name","query","policy","devices":[ids of static members]}.
 * Policy filters may use ${device} for the member's id. */
thz_err reg_group_create(registry *r, int64_t tenant, const cJSON *body, cJSON **out,
                         char err[REG_ERR_LEN]);
thz_err reg_group_get(registry *r, int64_t tenant, const char *id, cJSON **out);
thz_err reg_group_list(registry *r, int64_t tenant, cJSON **out);
thz_err reg_group_update(registry *r, int64_t tenant, const char *id, const cJSON *body,
                         cJSON **out, char err[REG_ERR_LEN]);
thz_err reg_group_delete(registry *r, int64_t tenant, const char *id);
/* Static membership. */
thz_err reg_group_add(registry *r, int64_t tenant, const char *group, const char *device);
thz_err reg_group_remove(registry *r, int64_t tenant, const char *group, const char *device);

/* ---- the broker's side ---- */

/* A device as the broker holds it while connected: reference counted, so a
 * device deleted meanwhile stays valid memory until released. */
typedef struct reg_dev reg_dev;

/* What a CONNECT's credentials resolved to. */
typedef struct reg_identity {
    int64_t tenant;
    reg_dev *dev;  /* a device (release with reg_dev_release), or NULL */
    reg_role role; /* for an API token (dev NULL): its role */
} reg_identity;

/* [fast] username = device id, password = its secret; or any username and
 * password = an API token. THZ_EBADAUTH when neither matches or the device is
 * disabled. A secret is 32 random bytes, so one SHA-256 checks it. */
thz_err reg_mqtt_auth(registry *r, const char *username, const uint8_t *password, size_t plen,
                      reg_identity *out);
void reg_dev_release(reg_dev *d);
const char *reg_dev_id(const reg_dev *d);
int64_t reg_dev_tenant(const reg_dev *d);
/* [fast] May device d publish to topic / subscribe to filter? Own topics
 * (devices/{id}/#, $aws/things/{id}/#) plus its groups' policies. */
bool reg_dev_can_publish(registry *r, reg_dev *d, const char *topic);
bool reg_dev_can_subscribe(registry *r, reg_dev *d, const char *filter);

/* [fast] Presence, kept in memory and persisted by the background thread.
 * connect returns the connection's version number, which grows per device
 * (and across restarts) so consumers can order events; disconnect takes it
 * back and is ignored (returns 0) when a newer connection of the device came
 * meanwhile (a takeover: the old connection's close comes after the new
 * connect), else returns the disconnect event's own version, one above any
 * earlier event of the device (never equal to the connect's, so a consumer
 * that keeps the highest version seen orders connect before disconnect).
 * The broker's presence events carry the connect's version in both events,
 * as AWS IoT's do; the registry's own ordering uses the returned ones. */
typedef struct reg_conn_info {
    const char *client_id;
    const char *address;  /* "ip:port" */
    int protocol_version; /* 3, 4 or 5 */
    int keep_alive;
} reg_conn_info;
uint64_t reg_presence_connect(registry *r, reg_dev *d, const reg_conn_info *ci);
uint64_t reg_presence_disconnect(registry *r, reg_dev *d, uint64_t version, const char *reason);
/* [fast] A telemetry payload of device id (idlen bytes) was refused: counted
 * in its health ("telemetry_errors", "last_telemetry_error"; since start).
 * Unknown ids are ignored. */
void reg_telemetry_error(registry *r, int64_t tenant, const char *id, size_t idlen,
                         const char *msg);
/* [fast] Counters, relaxed atomics; call as traffic flows. */
void reg_presence_count(reg_dev *d, uint64_t msgs_in, uint64_t bytes_in, uint64_t msgs_out,
                        uint64_t bytes_out);

/* ---- connection history, presence observers, fleet counters ---- */

/* A presence change of a registry device, as reg_presence_connect and
 * reg_presence_disconnect record it. Strings are NUL-terminated and valid
 * during the call only; absent ones are NULL (reason is set on disconnect
 * only). */
typedef struct reg_presence_event {
    int64_t tenant;
    const char *device;
    bool online;     /* connected (true) or disconnected */
    int64_t time_ms; /* ms since the epoch */
    const char *address, *protocol, *client_id, *reason;
} reg_presence_event;
/* Called on the thread that recorded the change (a broker I/O thread),
 * outside every registry lock; it must be quick and must not block. One
 * observer; set it before the broker starts. */
typedef void (*reg_presence_fn)(const reg_presence_event *ev, void *ctx);
void reg_on_presence(registry *r, reg_presence_fn fn, void *ctx);

#define REG_EVENTS_KEPT 200 /* connection events kept per device */
/* The connection history of a device, newest first, at most limit (1..500):
 * {"events":[{"time","type":"connected"|"disconnected","address",
 * "protocol","client_id","reason"}]} (absent fields omitted). Events are
 * queued in memory and written in batches by the background thread; this
 * call writes the queue first, so it sees every recorded event. */
thz_err reg_device_events(registry *r, int64_t tenant, const char *id, int limit, cJSON **out);

/* [fast] Is id (idlen bytes, not NUL-terminated) a device of tenant? */
bool reg_device_exists(registry *r, int64_t tenant, const char *id, size_t idlen);

/* [fast] What the live fleet view shows of one device. */
typedef struct reg_dev_counters {
    const char *id; /* valid during the call */
    bool online;
    int64_t last_seen_ms; /* now when online; the disconnect time; 0 never */
    uint64_t msgs_in;     /* messages received from it, ever */
} reg_dev_counters;
/* [fast] Calls fn for every device of tenant in id order, under the
 * registry's read lock: fn must be quick and must not call the registry. */
typedef void (*reg_counters_fn)(void *ctx, const reg_dev_counters *c);
thz_err reg_fleet_counters(registry *r, int64_t tenant, reg_counters_fn fn, void *ctx);

/* ---- dashboards (per tenant) ---- */

#define REG_DASHBOARDS_MAX      1000         /* per tenant: THZ_EQUOTA past it */
#define REG_DASHBOARD_DEF_MAX   (256 * 1024) /* bytes of the printed definition */
#define REG_DASHBOARD_TITLE_MAX 200

/* {"dashboards":[{"id","title","created_at","updated_at"}]} by id. */
thz_err reg_dashboard_list(registry *r, int64_t tenant, cJSON **out);
/* The full object {"id","title","definition","created_at","updated_at"}. */
thz_err reg_dashboard_get(registry *r, int64_t tenant, int64_t id, cJSON **out);
/* body {"title": 1..200 chars, "definition": object <= 256 KiB}; other
 * fields (an exported dashboard's id, dates) are ignored. */
thz_err reg_dashboard_create(registry *r, int64_t tenant, const cJSON *body, cJSON **out,
                             char err[REG_ERR_LEN]);
thz_err reg_dashboard_update(registry *r, int64_t tenant, int64_t id, const cJSON *body,
                             cJSON **out, char err[REG_ERR_LEN]);
thz_err reg_dashboard_delete(registry *r, int64_t tenant, int64_t id);

/* ---- device certificates: mutual TLS as AWS IoT does it (certs.c) ----
 *
 * Each tenant has a CA, created on first use: an EC P-256 key in
 * DATA_DIR/tls/tenants/<tenant>/ca.key (mode 0600, never in registry.db or
 * its backups) and its self-signed certificate beside it (ca.pem). Tenants
 * may also register their own CA certificates (never their keys). A device
 * certificate is bound to one device by its fingerprint (SHA-256 of the DER)
 * in the table device_certs and in the mirror, which answers the broker's
 * lookup at CONNECT. The chain is verified when a certificate is bound; at
 * CONNECT the binding, its validity period, the revocation flag and, for a
 * customer CA, that the CA is still registered are checked. */

#define REG_CERTS_MAX     16  /* active certificates per device: THZ_EQUOTA past it */
#define REG_CAS_MAX       32  /* registered CAs per tenant */
#define REG_CERT_DAYS     365 /* default validity of a certificate the server issues */
#define REG_CERT_DAYS_MAX 3650
#define REG_PEM_MAX       (32 * 1024) /* bytes of a PEM in a request body */
#define REG_FP_LEN        32          /* SHA-256 */

/* The tenant CA, created on first use: {"certificate_pem","fingerprint",
 * "subject","not_before","not_after"}. */
thz_err reg_ca_get(registry *r, int64_t tenant, cJSON **out, char err[REG_ERR_LEN]);
/* {"certificate_pem"}: a CA certificate (basicConstraints CA:TRUE) of the
 * tenant's own PKI → {"id","fingerprint","subject","not_before","not_after",
 * "created_at","certificate_pem"}. THZ_EEXIST when already registered. */
thz_err reg_ca_register(registry *r, int64_t tenant, const cJSON *body, cJSON **out,
                        char err[REG_ERR_LEN]);
thz_err reg_ca_list(registry *r, int64_t tenant, cJSON **out);
/* Deletes a registered CA: certificates bound through it stop connecting and
 * their live connections are closed (the cert-revoke callback). */
thz_err reg_ca_delete(registry *r, int64_t tenant, int64_t id);

/* Binds a certificate to device id. body may be NULL or {}: the server makes
 * a key pair (EC P-256) and a certificate signed by the tenant CA (CN = the
 * device id, "validity_days" 1..3650, default 365) and returns the private
 * key once ("private_key_pem"; never stored). {"csr_pem"}: signs the CSR's
 * key after checking the CSR's signature (the subject is replaced by CN =
 * device id). {"certificate_pem"}: binds a certificate that chains to the
 * tenant CA or one of its registered CAs. out: the certificate object
 * {"fingerprint","device_id","subject","issuer","source","ca_id","not_before",
 * "not_after","created_at","revoked_at","status","certificate_pem"} plus
 * "ca_pem" (and "private_key_pem"). */
thz_err reg_cert_create(registry *r, int64_t tenant, const char *id, const cJSON *body, cJSON **out,
                        char err[REG_ERR_LEN]);
/* The certificates of device id, revoked ones included. */
thz_err reg_cert_list(registry *r, int64_t tenant, const char *id, cJSON **out);
/* Revokes one (64 hex digits): refused from now on, and the cert-revoke
 * callback closes the connections that use it. */
thz_err reg_cert_revoke(registry *r, int64_t tenant, const char *id, const char *fingerprint);

/* [fast] The device a client certificate (fp: SHA-256 of its DER) is bound
 * to: THZ_OK and *out (dev retained), or THZ_EBADAUTH with why saying what
 * failed (unknown, revoked, expired, not yet valid, CA deleted, device
 * disabled). */
thz_err reg_cert_auth(registry *r, const uint8_t fp[REG_FP_LEN], reg_identity *out,
                      char why[REG_ERR_LEN]);
/* Called after a certificate stopped being valid (revoked, or its CA
 * deleted), outside registry locks. The broker closes its connections. */
typedef void (*reg_cert_revoke_fn)(int64_t tenant, const char *device_id,
                                   const uint8_t fp[REG_FP_LEN], void *ctx);
void reg_on_cert_revoke(registry *r, reg_cert_revoke_fn fn, void *ctx);

#endif
