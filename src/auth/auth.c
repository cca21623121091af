/* auth.c - password file (PBKDF2-SHA256) and mosquitto-style ACL file behind
 * the auth.h questions, with an immutable rule set swapped on reload. */
#include "auth/auth.h"
#include "core/base64.h"
#include "mqtt/topic.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "core/log.h"

#define PW_PREFIX     "$pbkdf2-sha256$"
#define PW_SALT_LEN   16 /* what we generate */
#define PW_SALT_MAX   64 /* what we accept from a file */
#define PW_HASH_LEN   32
#define AUTH_LINE_MAX 4096
#define CACHE_SLOTS   1024 /* bounded: a reconnect storm cannot grow it */
#define AUTH_KEY_LEN  32

enum { ACC_READ = 1, ACC_WRITE = 2, ACC_DENY = 4 };

typedef struct pw_user {
    char *zName;
    unsigned line; /* where it was read; orders duplicates */
    unsigned iterations;
    size_t nSalt;
    uint8_t salt[PW_SALT_MAX];
    uint8_t hash[PW_HASH_LEN];
} pw_user;

typedef struct acl_entry {
    char *zTopic;  /* an MQTT filter; for patterns may hold %u / %c */
    int access;    /* ACC_* bits; ACC_DENY alone for deny */
    bool hasSubst; /* pattern mentions %u or %c */
} acl_entry;

typedef struct acl_list {
    acl_entry *a;
    size_t n, cap;
} acl_list;

typedef struct acl_user {
    char *zName;
    acl_list list;
} acl_user;

/* One loaded rule set. Never modified after it is published, so readers
 * need the lock only to keep it alive, not to see it change. */
typedef struct rules {
    bool allowAnon;
    bool hasPasswd; /* a password file is configured and was read */
    pw_user *users; /* sorted by name */
    size_t nUsers;
    bool hasAcl;
    acl_list anon;      /* topic lines before any `user` line */
    acl_list pattern;   /* pattern lines, for everyone */
    acl_user *aclUsers; /* sorted by name */
    size_t nAclUsers;
} rules;

typedef struct cache_slot {
    uint64_t gen; /* 0 = empty; otherwise the rule generation it was verified under */
    uint8_t digest[32];
} cache_slot;

struct auth {
    pthread_rwlock_t lock; /* guards cur and gen */
    rules *cur;
    uint64_t gen; /* bumped with every swap, so older verifications never hit */
    pthread_mutex_t cacheLock;
    cache_slot cache[CACHE_SLOTS];
    /* The cache keys on HMAC(key, user, password) rather than a plain
     * SHA-256 so that a memory dump does not hand out cheap-to-crack hashes. */
    uint8_t key[AUTH_KEY_LEN];
    registry *reg; /* asked first when set */
};

/* ---------------------------------------------------------------- rules */

static void acl_list_free(acl_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->a[i].zTopic);
    free(l->a);
}

static void rules_free(rules *r)
{
    if (r == NULL) return;
    for (size_t i = 0; i < r->nUsers; i++) {
        free(r->users[i].zName);
        OPENSSL_cleanse(&r->users[i], sizeof r->users[i]);
    }
    free(r->users);
    acl_list_free(&r->anon);
    acl_list_free(&r->pattern);
    for (size_t i = 0; i < r->nAclUsers; i++) {
        free(r->aclUsers[i].zName);
        acl_list_free(&r->aclUsers[i].list);
    }
    free(r->aclUsers);
    free(r);
}

static thz_err acl_list_add(acl_list *l, const char *topic, int access)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        acl_entry *a = realloc(l->a, cap * sizeof *a);
        if (a == NULL) return THZ_ENOMEM;
        l->a = a;
        l->cap = cap;
    }
    char *z = strdup(topic);
    if (z == NULL) return THZ_ENOMEM;
    l->a[l->n++] = (acl_entry){z, access, strstr(z, "%u") != NULL || strstr(z, "%c") != NULL};
    return THZ_OK;
}

/* Reads one line of at most AUTH_LINE_MAX bytes into buf (without the
 * newline and a trailing \r). Returns 1 for a line, 0 at EOF, -1 for a line
 * that is too long or holds a NUL byte (the rest of it is consumed). */
static int read_line(FILE *f, char *buf, size_t *len)
{
    size_t n = 0;
    int c;
    bool bad = false;
    while ((c = getc(f)) != EOF && c != '\n') {
        if (c == '\0' || n >= AUTH_LINE_MAX)
            bad = true;
        else
            buf[n++] = (char)c;
    }
    if (c == EOF && n == 0 && !bad) return 0;
    if (n > 0 && buf[n - 1] == '\r') n--;
    buf[n] = '\0';
    *len = n;
    return bad ? -1 : 1;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
    return s;
}

/* Decodes canonical base64 of at most max bytes. */
static bool b64_decode(const char *z, size_t zlen, uint8_t *out, size_t max, size_t *outlen)
{
    long n = zlen ? thz_b64_decode(z, zlen, out, max) : -1;
    if (n < 0) return false;
    *outlen = (size_t)n;
    return true;
}

static bool parse_uint(const char *z, size_t n, unsigned long max, unsigned long *out)
{
    if (n == 0 || n > 10) return false;
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)z[i])) return false;
        v = v * 10 + (unsigned long)(z[i] - '0');
    }
    if (v > max) return false;
    *out = v;
    return true;
}

/* Parses "user:$pbkdf2-sha256$ITER$SALT$HASH" in place into u. */
static const char *parse_pw_line(char *line, pw_user *u)
{
    char *colon = strchr(line, ':');
    if (colon == NULL || colon == line) return "expected user:hash";
    *colon = '\0';
    const char *h = colon + 1;
    if (strncmp(h, PW_PREFIX, strlen(PW_PREFIX)) != 0) return "unknown hash type";
    h += strlen(PW_PREFIX);
    const char *d1 = strchr(h, '$');
    if (d1 == NULL) return "missing salt";
    const char *d2 = strchr(d1 + 1, '$');
    if (d2 == NULL) return "missing hash";
    unsigned long iter;
    if (!parse_uint(h, (size_t)(d1 - h), AUTH_MAX_ITERATIONS, &iter) || iter == 0)
        return "bad iteration count";
    if (!b64_decode(d1 + 1, (size_t)(d2 - d1 - 1), u->salt, PW_SALT_MAX, &u->nSalt) ||
        u->nSalt == 0)
        return "bad salt";
    size_t nHash;
    if (!b64_decode(d2 + 1, strlen(d2 + 1), u->hash, PW_HASH_LEN, &nHash) || nHash != PW_HASH_LEN)
        return "bad hash";
    u->iterations = (unsigned)iter;
    u->zName = line;
    return NULL;
}

static int pw_user_cmp(const void *a, const void *b)
{
    return strcmp(((const pw_user *)a)->zName, ((const pw_user *)b)->zName);
}

/* By name, then by line, so the first line of a duplicated user sorts first
 * even though qsort is not stable. */
static int pw_user_cmp_line(const void *a, const void *b)
{
    const pw_user *x = a, *y = b;
    int c = strcmp(x->zName, y->zName);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

static int acl_user_cmp(const void *a, const void *b)
{
    return strcmp(((const acl_user *)a)->zName, ((const acl_user *)b)->zName);
}

/* Opens a rules file and a line buffer for it (AUTH_LINE_MAX + 1 bytes);
 * the caller frees *line and closes *f. setting names the file in errors. */
static thz_err open_rules_file(const char *setting, const char *path, FILE **f, char **line)
{
    *f = fopen(path, "r");
    if (*f == NULL) {
        log_error("auth", "%s %s: %s", setting, path, strerror(errno));
        return THZ_EIO;
    }
    *line = malloc(AUTH_LINE_MAX + 1);
    if (*line == NULL) {
        fclose(*f);
        return THZ_ENOMEM;
    }
    return THZ_OK;
}

static thz_err load_passwords(rules *r, const char *path)
{
    FILE *f = NULL;
    char *line = NULL;
    thz_err orc = open_rules_file("password-file", path, &f, &line);
    if (orc) return orc;
    thz_err rc = THZ_OK;
    size_t cap = 0, len;
    unsigned lineno = 0;
    int got;
    while ((got = read_line(f, line, &len)) != 0) {
        lineno++;
        if (got < 0) {
            log_warn("auth", "%s:%u: line too long or has a NUL byte; skipped", path, lineno);
            continue;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#') continue;
        pw_user u = {0};
        const char *why = parse_pw_line(s, &u);
        if (why != NULL) {
            /* A bad line only ever locks its user out, so skipping is safe. */
            log_warn("auth", "%s:%u: %s; line skipped", path, lineno, why);
            continue;
        }
        if (r->nUsers == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            pw_user *nu = realloc(r->users, ncap * sizeof *nu);
            if (nu == NULL) {
                rc = THZ_ENOMEM;
                break;
            }
            r->users = nu;
            cap = ncap;
        }
        u.zName = strdup(u.zName);
        if (u.zName == NULL) {
            rc = THZ_ENOMEM;
            break;
        }
        u.line = lineno;
        r->users[r->nUsers++] = u;
        OPENSSL_cleanse(&u, sizeof u);
    }
    if (rc == THZ_OK && ferror(f)) rc = THZ_EIO;
    OPENSSL_cleanse(line, AUTH_LINE_MAX + 1);
    free(line);
    fclose(f);
    if (rc != THZ_OK) return rc;
    /* Sort by name and keep the first line of a duplicated user, so the
     * file reads top-down like the ACL file. */
    if (r->nUsers > 1) {
        if (r->nUsers > 1) qsort(r->users, r->nUsers, sizeof *r->users, pw_user_cmp_line);
        size_t w = 1;
        for (size_t i = 1; i < r->nUsers; i++) {
            if (strcmp(r->users[i].zName, r->users[w - 1].zName) == 0) {
                log_warn("auth", "%s: user '%s' appears more than once; one entry ignored", path,
                         r->users[i].zName);
                free(r->users[i].zName);
                continue;
            }
            r->users[w++] = r->users[i];
        }
        r->nUsers = w;
    }
    r->hasPasswd = true;
    return THZ_OK;
}

static acl_user *acl_user_get(rules *r, const char *name, size_t *cap)
{
    for (size_t i = 0; i < r->nAclUsers; i++)
        if (strcmp(r->aclUsers[i].zName, name) == 0) return &r->aclUsers[i];
    if (r->nAclUsers == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        acl_user *nu = realloc(r->aclUsers, ncap * sizeof *nu);
        if (nu == NULL) return NULL;
        r->aclUsers = nu;
        *cap = ncap;
    }
    char *z = strdup(name);
    if (z == NULL) return NULL;
    r->aclUsers[r->nAclUsers] = (acl_user){z, {0}};
    return &r->aclUsers[r->nAclUsers++];
}

/* Parses "[read|write|readwrite|deny] TOPIC" after a topic/pattern keyword. */
static const char *parse_acl_rule(char *rest, int *access, char **topic)
{
    static const struct {
        const char *z;
        int access;
    } kinds[] = {{"read", ACC_READ},
                 {"write", ACC_WRITE},
                 {"readwrite", ACC_READ | ACC_WRITE},
                 {"deny", ACC_DENY}};
    *access = ACC_READ | ACC_WRITE;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        size_t n = strlen(kinds[i].z);
        if (strncmp(rest, kinds[i].z, n) == 0 && (rest[n] == ' ' || rest[n] == '\t')) {
            *access = kinds[i].access;
            rest = trim(rest + n);
            break;
        }
    }
    if (*rest == '\0') return "missing topic";
    if (!topic_filter_valid(rest, strlen(rest))) return "invalid topic filter";
    *topic = rest;
    return NULL;
}

static thz_err load_acl(rules *r, const char *path)
{
    FILE *f = NULL;
    char *line = NULL;
    thz_err orc = open_rules_file("acl-file", path, &f, &line);
    if (orc) return orc;
    thz_err rc = THZ_OK;
    size_t ucap = 0, len;
    unsigned lineno = 0;
    int got;
    acl_list *section = &r->anon;
    const char *why = NULL;
    /* Unlike the password file, a bad ACL line fails the whole load: skipping
     * a `deny` line would silently grant access. */
    while (rc == THZ_OK && (got = read_line(f, line, &len)) != 0) {
        lineno++;
        if (got < 0) {
            why = "line too long or has a NUL byte";
            break;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#') continue;
        char *sp = s + strcspn(s, " \t");
        char *rest = trim(sp);
        size_t kw = (size_t)(sp - s);
        int access;
        char *topic;
        if (kw == 4 && strncmp(s, "user", 4) == 0) {
            if (*rest == '\0') {
                why = "missing user name";
                break;
            }
            acl_user *u = acl_user_get(r, rest, &ucap);
            if (u == NULL) {
                rc = THZ_ENOMEM;
                break;
            }
            section = &u->list;
        } else if (kw == 5 && strncmp(s, "topic", 5) == 0) {
            if ((why = parse_acl_rule(rest, &access, &topic)) != NULL) break;
            rc = acl_list_add(section, topic, access);
        } else if (kw == 7 && strncmp(s, "pattern", 7) == 0) {
            if ((why = parse_acl_rule(rest, &access, &topic)) != NULL) break;
            rc = acl_list_add(&r->pattern, topic, access);
        } else {
            why = "expected user, topic or pattern";
            break;
        }
    }
    if (rc == THZ_OK && why == NULL && ferror(f)) rc = THZ_EIO;
    free(line);
    fclose(f);
    if (why != NULL) {
        log_error("auth", "%s:%u: %s", path, lineno, why);
        return THZ_EINVAL;
    }
    if (rc != THZ_OK) return rc;
    if (r->nAclUsers > 1) qsort(r->aclUsers, r->nAclUsers, sizeof *r->aclUsers, acl_user_cmp);
    r->hasAcl = true;
    return THZ_OK;
}

static thz_err rules_load(const thz_config *cfg, rules **out)
{
    rules *r = calloc(1, sizeof *r);
    if (r == NULL) return THZ_ENOMEM;
    r->allowAnon = cfg->allow_anonymous;
    thz_err rc = THZ_OK;
    if (cfg->password_file[0] != '\0') rc = load_passwords(r, cfg->password_file);
    if (rc == THZ_OK && cfg->acl_file[0] != '\0') rc = load_acl(r, cfg->acl_file);
    if (rc != THZ_OK) {
        rules_free(r);
        return rc;
    }
    *out = r;
    return THZ_OK;
}

/* ---------------------------------------------------------------- life cycle */

thz_err auth_open(const thz_config *cfg, auth **out)
{
    *out = NULL;
    auth *a = calloc(1, sizeof *a);
    if (a == NULL) return THZ_ENOMEM;
    if (RAND_bytes(a->key, sizeof a->key) != 1) {
        free(a);
        return THZ_EIO;
    }
    thz_err rc = rules_load(cfg, &a->cur);
    if (rc != THZ_OK) {
        OPENSSL_cleanse(a, sizeof *a);
        free(a);
        return rc;
    }
    pthread_rwlock_init(&a->lock, NULL);
    pthread_mutex_init(&a->cacheLock, NULL);
    a->gen = 1;
    log_info("auth", "%zu users, %s, anonymous %s", a->cur->nUsers,
             a->cur->hasAcl ? "ACL loaded" : "no ACL", a->cur->allowAnon ? "allowed" : "refused");
    *out = a;
    return THZ_OK;
}

thz_err auth_reload(auth *a, const thz_config *cfg)
{
    rules *r;
    thz_err rc = rules_load(cfg, &r);
    if (rc != THZ_OK) {
        log_error("auth", "reload failed (%s); the previous rules stay in force", thz_strerror(rc));
        return rc;
    }
    pthread_rwlock_wrlock(&a->lock);
    rules *old = a->cur;
    a->cur = r;
    a->gen++;
    pthread_rwlock_unlock(&a->lock);
    /* No reader can hold old now: they all take the read lock to use it. */
    rules_free(old);
    pthread_mutex_lock(&a->cacheLock);
    OPENSSL_cleanse(a->cache, sizeof a->cache);
    pthread_mutex_unlock(&a->cacheLock);
    log_info("auth", "reloaded: %zu users, %s, anonymous %s", r->nUsers,
             r->hasAcl ? "ACL loaded" : "no ACL", r->allowAnon ? "allowed" : "refused");
    return THZ_OK;
}

void auth_close(auth *a)
{
    if (a == NULL) return;
    rules_free(a->cur);
    pthread_rwlock_destroy(&a->lock);
    pthread_mutex_destroy(&a->cacheLock);
    OPENSSL_cleanse(a, sizeof *a);
    free(a);
}

/* ---------------------------------------------------------------- passwords */

static bool pbkdf2(const uint8_t *pw, size_t pwlen, const uint8_t *salt, size_t nSalt,
                   unsigned iterations, uint8_t out[PW_HASH_LEN])
{
    static const char empty = 0;
    if (pwlen > INT32_MAX) return false;
    return PKCS5_PBKDF2_HMAC(pw ? (const char *)pw : &empty, (int)pwlen, salt, (int)nSalt,
                             (int)iterations, EVP_sha256(), PW_HASH_LEN, out) == 1;
}

static thz_err auth_check(auth *a, const char *client_id, const char *username,
                          const uint8_t *password, size_t password_len, bool may_block)
{
    if (client_id == NULL) client_id = ""; /* only used in log lines */
    pthread_rwlock_rdlock(&a->lock);
    const rules *r = a->cur;
    if (username == NULL || !r->hasPasswd) {
        /* Without a password file a user name is only a label, as in
         * mosquitto with allow_anonymous and no password_file. */
        bool ok = r->allowAnon;
        pthread_rwlock_unlock(&a->lock);
        if (!ok) log_debug("auth", "client '%s' refused: anonymous access is off", client_id);
        return ok ? THZ_OK : THZ_EBADAUTH;
    }
    pw_user key = {.zName = (char *)username};
    const pw_user *found =
        r->nUsers == 0 ? NULL : bsearch(&key, r->users, r->nUsers, sizeof *r->users, pw_user_cmp);
    if (found == NULL || password == NULL) {
        pthread_rwlock_unlock(&a->lock);
        log_debug("auth", "client '%s' refused: %s", client_id,
                  found ? "no password" : "unknown user");
        return THZ_EBADAUTH;
    }
    /* Copy what verification needs, so PBKDF2 runs without the lock and a
     * reload is never held up behind it. */
    pw_user u = *found;
    uint64_t gen = a->gen;
    pthread_rwlock_unlock(&a->lock);

    uint8_t digest[32];
    unsigned dlen = sizeof digest;
    /* digest = HMAC(key, username NUL password): the cache key. */
    uint8_t *msg = malloc(strlen(username) + 1 + password_len);
    if (msg == NULL) {
        OPENSSL_cleanse(&u, sizeof u);
        return THZ_ENOMEM;
    }
    size_t ulen = strlen(username) + 1;
    memcpy(msg, username, ulen);
    if (password_len) memcpy(msg + ulen, password, password_len);
    bool hm =
        HMAC(EVP_sha256(), a->key, sizeof a->key, msg, ulen + password_len, digest, &dlen) != NULL;
    OPENSSL_cleanse(msg, ulen + password_len);
    free(msg);
    cache_slot *slot = &a->cache[(digest[0] | (size_t)digest[1] << 8) % CACHE_SLOTS];
    if (hm) {
        pthread_mutex_lock(&a->cacheLock);
        bool hit = slot->gen == gen && CRYPTO_memcmp(slot->digest, digest, sizeof digest) == 0;
        pthread_mutex_unlock(&a->cacheLock);
        if (hit) {
            OPENSSL_cleanse(&u, sizeof u);
            return THZ_OK;
        }
    }

    if (!may_block) {
        /* the caller moves the slow part off its thread and asks again */
        OPENSSL_cleanse(&u, sizeof u);
        return THZ_EAGAIN;
    }
    uint8_t calc[PW_HASH_LEN];
    bool ok = pbkdf2(password, password_len, u.salt, u.nSalt, u.iterations, calc) &&
              CRYPTO_memcmp(calc, u.hash, PW_HASH_LEN) == 0;
    OPENSSL_cleanse(calc, sizeof calc);
    OPENSSL_cleanse(&u, sizeof u);
    if (!ok) {
        log_debug("auth", "client '%s' refused: wrong password for '%s'", client_id, username);
        return THZ_EBADAUTH;
    }
    if (hm) {
        /* Only successes are cached; reading gen under the rule lock and
         * checking it here keeps a verification against old rules out. */
        pthread_rwlock_rdlock(&a->lock);
        pthread_mutex_lock(&a->cacheLock);
        if (a->gen == gen) {
            slot->gen = gen;
            memcpy(slot->digest, digest, sizeof digest);
        }
        pthread_mutex_unlock(&a->cacheLock);
        pthread_rwlock_unlock(&a->lock);
    }
    return THZ_OK;
}

void auth_set_registry(auth *a, registry *r)
{
    a->reg = r;
}

void auth_identity_clear(auth_identity *id)
{
    if (id->dev) reg_dev_release(id->dev);
    *id = (auth_identity){.tenant = REG_DEFAULT_TENANT};
}

/* The registry first (a device secret or an API token is one SHA-256 away),
 * then the password file. */
static thz_err connect_check(auth *a, const char *client_id, const char *username,
                             const uint8_t *password, size_t password_len, auth_identity *id,
                             bool slow)
{
    if (id) *id = (auth_identity){.tenant = REG_DEFAULT_TENANT};
    if (a->reg && password && password_len) {
        reg_identity ri;
        if (reg_mqtt_auth(a->reg, username ? username : "", password, password_len, &ri) ==
            THZ_OK) {
            if (!id) {
                if (ri.dev) reg_dev_release(ri.dev);
                return THZ_OK;
            }
            id->tenant = ri.tenant;
            id->dev = ri.dev;
            id->token_role = ri.dev ? 0 : ri.role;
            return THZ_OK;
        }
    }
    return auth_check(a, client_id, username, password, password_len, slow);
}

thz_err auth_connect_cert(auth *a, const uint8_t fp[32], const char *username, auth_identity *id,
                          char *why, size_t whylen)
{
    *id = (auth_identity){.tenant = REG_DEFAULT_TENANT};
    char err[REG_ERR_LEN] = "";
    reg_identity ri;
    if (!a->reg) {
        snprintf(why, whylen, "client certificates need the device registry");
        return THZ_EBADAUTH;
    }
    if (reg_cert_auth(a->reg, fp, &ri, err) != THZ_OK) {
        snprintf(why, whylen, "%s", err);
        return THZ_EBADAUTH;
    }
    /* As with a device secret, a user name, when given, is the device id. */
    if (username && username[0] && strcmp(username, reg_dev_id(ri.dev)) != 0) {
        snprintf(why, whylen, "client certificate of device %s, but user name '%s'",
                 reg_dev_id(ri.dev), username);
        reg_dev_release(ri.dev);
        return THZ_EBADAUTH;
    }
    id->tenant = ri.tenant;
    id->dev = ri.dev;
    return THZ_OK;
}

thz_err auth_bearer(auth *a, const char *token, auth_identity *id)
{
    *id = (auth_identity){.tenant = REG_DEFAULT_TENANT};
    reg_principal p;
    if (!a->reg || reg_token_check(a->reg, token, &p) != THZ_OK) return THZ_EBADAUTH;
    id->tenant = p.tenant;
    id->token_role = p.role;
    return THZ_OK;
}

thz_err auth_connect(auth *a, const char *client_id, const char *username, const uint8_t *password,
                     size_t password_len, auth_identity *id)
{
    return connect_check(a, client_id, username, password, password_len, id, true);
}

thz_err auth_connect_quick(auth *a, const char *client_id, const char *username,
                           const uint8_t *password, size_t password_len, auth_identity *id)
{
    return connect_check(a, client_id, username, password, password_len, id, false);
}

thz_err auth_hash_password_iter(const char *username, const char *password, unsigned iterations,
                                char *out, size_t outlen)
{
    if (username[0] == '\0' || strpbrk(username, ":\r\n") != NULL || iterations == 0 ||
        iterations > AUTH_MAX_ITERATIONS || isspace((unsigned char)username[0]) ||
        username[0] == '#')
        return THZ_EINVAL;
    uint8_t salt[PW_SALT_LEN], hash[PW_HASH_LEN];
    if (RAND_bytes(salt, sizeof salt) != 1) return THZ_EIO;
    if (!pbkdf2((const uint8_t *)password, strlen(password), salt, sizeof salt, iterations, hash))
        return THZ_EIO;
    char salt64[4 * ((PW_SALT_LEN + 2) / 3) + 1], hash64[4 * ((PW_HASH_LEN + 2) / 3) + 1];
    EVP_EncodeBlock((unsigned char *)salt64, salt, sizeof salt);
    EVP_EncodeBlock((unsigned char *)hash64, hash, sizeof hash);
    int n = snprintf(out, outlen, "%s:" PW_PREFIX "%u$%s$%s", username, iterations, salt64, hash64);
    OPENSSL_cleanse(hash, sizeof hash);
    if (n < 0 || (size_t)n >= outlen) return THZ_ETOOBIG;
    return THZ_OK;
}

thz_err auth_hash_password(const char *username, const char *password, char *out, size_t outlen)
{
    return auth_hash_password_iter(username, password, AUTH_DEFAULT_ITERATIONS, out, outlen);
}

/* ---------------------------------------------------------------- ACL */

/* Substitution values must not add levels or wildcards, or client id "#"
 * would turn "devices/%c/#" into a grant for every device. */
static bool subst_ok(const char *z)
{
    return z != NULL && z[0] != '\0' && strpbrk(z, "/+#") == NULL;
}

/* Expands %u and %c in pattern into buf (or a malloc'd buffer when long;
 * *heap is set then). Returns NULL when the pattern cannot apply. */
static char *expand(const char *pattern, const char *user, const char *cid, char *buf, size_t cap,
                    char **heap)
{
    size_t need = 1;
    for (const char *p = pattern; *p; p++) {
        if (p[0] == '%' && (p[1] == 'u' || p[1] == 'c')) {
            const char *v = p[1] == 'u' ? user : cid;
            if (!subst_ok(v)) return NULL;
            need += strlen(v);
            p++;
        } else {
            need++;
        }
    }
    char *out = buf;
    *heap = NULL;
    if (need > cap) {
        out = *heap = malloc(need);
        if (out == NULL) return NULL;
    }
    char *w = out;
    for (const char *p = pattern; *p; p++) {
        if (p[0] == '%' && (p[1] == 'u' || p[1] == 'c')) {
            const char *v = p[1] == 'u' ? user : cid;
            size_t n = strlen(v);
            memcpy(w, v, n);
            w += n;
            p++;
        } else {
            *w++ = *p;
        }
    }
    *w = '\0';
    return out;
}

typedef struct check {
    const char *zReq; /* topic (publish) or filter (subscribe) */
    int need;         /* ACC_READ or ACC_WRITE */
    bool denied, allowed;
} check;

static void check_entry(check *c, const char *topic, int access)
{
    if (access & ACC_DENY) {
        bool hit = c->need == ACC_WRITE ? topic_filter_covers(topic, c->zReq)
                                        : topic_filters_overlap(topic, c->zReq);
        if (hit) c->denied = true;
    } else if ((access & c->need) && !c->allowed && topic_filter_covers(topic, c->zReq)) {
        c->allowed = true;
    }
}

static void check_list(check *c, const acl_list *l, const char *user, const char *cid,
                       bool patterns)
{
    char buf[512];
    for (size_t i = 0; i < l->n && !c->denied; i++) {
        const acl_entry *e = &l->a[i];
        if (!patterns || !e->hasSubst) {
            check_entry(c, e->zTopic, e->access);
            continue;
        }
        char *heap = NULL;
        const char *t = expand(e->zTopic, user, cid, buf, sizeof buf, &heap);
        if (t != NULL) check_entry(c, t, e->access);
        free(heap);
    }
}

static bool acl_check(auth *a, const char *cid, const char *user, const char *req, int need)
{
    pthread_rwlock_rdlock(&a->lock);
    const rules *r = a->cur;
    bool ok = true;
    if (r->hasAcl) {
        check c = {req, need, false, false};
        const acl_list *own = &r->anon;
        if (user != NULL) {
            /* bsearch may not be given a NULL array, even an empty one. */
            acl_user key = {.zName = (char *)user};
            const acl_user *u = r->nAclUsers == 0 ? NULL
                                                  : bsearch(&key, r->aclUsers, r->nAclUsers,
                                                            sizeof *r->aclUsers, acl_user_cmp);
            own = u ? &u->list : NULL;
        }
        if (own != NULL) check_list(&c, own, user, cid, false);
        check_list(&c, &r->pattern, user, cid, true);
        ok = c.allowed && !c.denied;
    }
    pthread_rwlock_unlock(&a->lock);
    return ok;
}

bool auth_can_publish(auth *a, const auth_identity *id, const char *client_id, const char *username,
                      const char *topic)
{
    if (id && id->dev) return reg_dev_can_publish(a->reg, id->dev, topic);
    if (id && id->token_role) return id->token_role >= REG_OPERATOR;
    return acl_check(a, client_id, username, topic, ACC_WRITE);
}

bool auth_can_subscribe(auth *a, const auth_identity *id, const char *client_id,
                        const char *username, const char *filter)
{
    if (id && id->dev) return reg_dev_can_subscribe(a->reg, id->dev, filter);
    if (id && id->token_role) return true;
    return acl_check(a, client_id, username, filter, ACC_READ);
}

bool auth_has_acl(auth *a, const auth_identity *id)
{
    if (id && (id->dev || id->token_role)) return true;
    pthread_rwlock_rdlock(&a->lock);
    bool has = a->cur->hasAcl;
    pthread_rwlock_unlock(&a->lock);
    return has;
}
