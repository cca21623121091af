/* auth.h - who may connect, publish and subscribe.
 *
 * The broker asks three questions through this interface. Two backends
 * answer: the device registry (a device id and its secret, or an API token
 * as the password; see registry/registry.h) and anonymous access and/or a
 * password file with an optional mosquitto-style ACL file. Every call is
 * thread-safe and non-blocking on the hot path: registry credentials are one
 * SHA-256 away, password-file hashes are verified once and the result
 * cached. */
#ifndef THZ_AUTH_H
#define THZ_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/err.h"
#include "registry/registry.h"

typedef struct auth auth;

/* Loads password-file and acl-file named in cfg (either may be empty). */
thz_err auth_open(const thz_config *cfg, auth **out);
/* Re-reads both files (SIGHUP). On error the old rules stay in force. */
thz_err auth_reload(auth *a, const thz_config *cfg);
void auth_close(auth *a);

/* Makes the registry the first backend asked (before serving; r outlives a). */
void auth_set_registry(auth *a, registry *r);

/* Who a connected client is. */
typedef struct auth_identity {
    int64_t tenant;      /* REG_DEFAULT_TENANT for anonymous and password-file users */
    reg_dev *dev;        /* a registry device, held until auth_identity_clear */
    reg_role token_role; /* 0, or the role of the API token given as password */
} auth_identity;
void auth_identity_clear(auth_identity *id);

/* Decides a CONNECT. username may be NULL (none given); password may be NULL.
 * THZ_OK: allowed, and *id (when id is not NULL) says who it is. THZ_EBADAUTH:
 * unknown user or wrong password, or no credentials and anonymous access is
 * off. THZ_EDENIED: not authorized. */
thz_err auth_connect(auth *a, const char *client_id, const char *username, const uint8_t *password,
                     size_t password_len, auth_identity *id);
/* auth_connect without the slow part: THZ_EAGAIN when the answer needs a
 * password hash to be computed (a user not verified recently, or a wrong
 * password), which an I/O thread must not do itself; it then calls
 * auth_connect from a worker thread. */
thz_err auth_connect_quick(auth *a, const char *client_id, const char *username,
                           const uint8_t *password, size_t password_len, auth_identity *id);

/* [fast] Decides a CONNECT that gave no password over TLS with a client
 * certificate (fp: SHA-256 of its DER): THZ_OK and *id when the certificate
 * is bound to an enabled device (registry.h, reg_cert_auth) and username, if
 * given, is that device's id; else THZ_EBADAUTH with why saying what failed. */
thz_err auth_connect_cert(auth *a, const uint8_t fp[32], const char *username, auth_identity *id,
                          char *why, size_t whylen);

/* An API token given as an HTTP bearer token: THZ_OK and *id (its tenant and
 * role), or THZ_EBADAUTH. Non-blocking. */
thz_err auth_bearer(auth *a, const char *token, auth_identity *id);

/* Topic checks for a connected client, on topics as the client names them
 * (no tenant prefix). A registry device may use its own topics and what its
 * groups grant; an API token may subscribe to anything in its tenant and, as
 * operator or admin, publish. Otherwise (id NULL or a password-file or
 * anonymous identity; username NULL for anonymous): without an ACL file
 * everything is allowed; ACL patterns may use %u (username) and %c (client
 * id), as in mosquitto's acl_file. */
bool auth_can_publish(auth *a, const auth_identity *id, const char *client_id, const char *username,
                      const char *topic);
bool auth_can_subscribe(auth *a, const auth_identity *id, const char *client_id,
                        const char *username, const char *filter);
/* True when checks can deny this identity at all, so callers can skip
 * per-message checks. */
bool auth_has_acl(auth *a, const auth_identity *id);

/* Produces a password-file line "username:$pbkdf2-sha256$ITER$SALT$HASH"
 * (base64 salt and hash) into out. Used by `thinghz passwd`. */
thz_err auth_hash_password(const char *username, const char *password, char *out, size_t outlen);

/* PBKDF2 iterations auth_hash_password uses; files may say anything in
 * 1..AUTH_MAX_ITERATIONS (more is refused so a file cannot stall a CONNECT). */
#define AUTH_DEFAULT_ITERATIONS 100000
#define AUTH_MAX_ITERATIONS     1000000

/* auth_hash_password with an explicit iteration count (tests use small ones). */
thz_err auth_hash_password_iter(const char *username, const char *password, unsigned iterations,
                                char *out, size_t outlen);

#endif
