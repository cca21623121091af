/* certs.c - device certificates for mutual TLS (see registry.h): the tenant
 * CAs (key files under DATA_DIR/tls/tenants/), registered customer CAs,
 * issuing, CSR signing and binding of certificates, revocation, and the
 * broker's [fast] lookup by fingerprint. OpenSSL does every parse. */
#include "registry/reg_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/fs.h"
#include "core/log.h"
#include "core/pki.h"

#define CA_DAYS 7300 /* 20 years: longer than any device certificate it signs */

typedef struct reg_cert {
    uint8_t fp[REG_FP_LEN]; /* key of registry.certs */
    int64_t tenant, caId;   /* caId 0: the tenant CA */
    char *zDev;
    int64_t notBefore, notAfter; /* ms */
    bool revoked;
} reg_cert;

typedef struct reg_ca {
    int64_t id; /* key of registry.cas */
    int64_t tenant;
} reg_ca;

/* ---- small helpers ---- */

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = 0;
}

static bool unhex(const char *z, uint8_t out[REG_FP_LEN])
{
    if (z == NULL || strlen(z) != 2 * REG_FP_LEN) return false;
    for (size_t i = 0; i < REG_FP_LEN; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char c = z[2 * i + k];
            int x = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (x < 0) return false;
            v = v * 16 + x;
        }
        out[i] = (uint8_t)v;
    }
    return true;
}

static bool cert_fp(X509 *x, uint8_t fp[REG_FP_LEN])
{
    unsigned n = 0;
    return X509_digest(x, EVP_sha256(), fp, &n) == 1 && n == REG_FP_LEN;
}

static int64_t asn1_ms(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
    return (int64_t)timegm(&tm) * 1000;
}

static void name_text(const X509_NAME *n, char *out, size_t len)
{
    out[0] = 0;
    BIO *b = BIO_new(BIO_s_mem());
    if (!b) return;
    if (X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253) >= 0) {
        int k = BIO_read(b, out, (int)len - 1);
        out[k > 0 ? k : 0] = 0;
    }
    BIO_free(b);
}

/* The first certificate of a PEM text; the rest (a chain) into *more when
 * more is not NULL (the caller frees it with sk_X509_pop_free). */
static X509 *pem_certs(const char *z, STACK_OF(X509) * *more)
{
    BIO *b = BIO_new_mem_buf(z, -1);
    if (!b) return NULL;
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    if (x && more) {
        *more = sk_X509_new_null();
        X509 *y;
        while (*more && sk_X509_num(*more) < 8 && (y = PEM_read_bio_X509(b, NULL, NULL, NULL)))
            sk_X509_push(*more, y);
    }
    BIO_free(b);
    ERR_clear_error();
    return x;
}

/* The string field name of body (<= REG_PEM_MAX) or NULL. */
static thz_err pem_field(const cJSON *body, const char *name, const char **out, char *err)
{
    return reg__field_str(body, name, REG_PEM_MAX, false, out, err);
}

/* ---- the tenant CA ---- */

/* Loads, or on first use creates, the tenant's CA key and certificate.
 * Under dbMu, so two requests never create two CAs. */
static thz_err tenant_ca(registry *r, int64_t tenant, X509 **cax, EVP_PKEY **cak, char *err)
{
    char dir[4200], kp[4300], cp[4300];
    snprintf(dir, sizeof dir, "%s/tls/tenants/%lld", r->zDir, (long long)tenant);
    snprintf(kp, sizeof kp, "%s/ca.key", dir);
    snprintf(cp, sizeof cp, "%s/ca.pem", dir);
    thz_err e = pki_pair_load(cp, kp, cak, cax);
    ERR_clear_error();
    if (e == THZ_OK) return THZ_OK;
    if (e != THZ_ENOTFOUND) {
        log_error("registry", "the CA of tenant %lld in %s does not load (key and certificate)",
                  (long long)tenant, dir);
        reg__err(err, "the tenant CA in the data directory is damaged (see the log)");
        return THZ_EIO;
    }
    if (thz_mkdir_p(dir, 0700) != 0) {
        log_error("registry", "cannot create %s: %s", dir, strerror(errno));
        return THZ_EIO;
    }
    char cn[96];
    snprintf(cn, sizeof cn, "thinghz tenant %lld device CA", (long long)tenant);
    pki_cert_spec spec = {.cn = cn, .backdate_s = 300, .days = CA_DAYS, .ca = true};
    if (pki_issue_files(&spec, NULL, NULL, cp, kp, cak, cax) != THZ_OK) {
        log_error("registry", "cannot create the CA of tenant %lld in %s", (long long)tenant, dir);
        return THZ_EIO;
    }
    log_info("registry", "created the device CA of tenant %lld (%s)", (long long)tenant, cp);
    return THZ_OK;
}

static cJSON *ca_json(X509 *x, const char *pem)
{
    uint8_t fp[REG_FP_LEN];
    char fph[2 * REG_FP_LEN + 1], subj[512], t[64];
    cJSON *o = cJSON_CreateObject();
    if (!o || !cert_fp(x, fp)) {
        cJSON_Delete(o);
        return NULL;
    }
    hex(fp, REG_FP_LEN, fph);
    name_text(X509_get_subject_name(x), subj, sizeof subj);
    cJSON_AddStringToObject(o, "fingerprint", fph);
    cJSON_AddStringToObject(o, "subject", subj);
    reg__fmt_time(asn1_ms(X509_get0_notBefore(x)), t);
    cJSON_AddStringToObject(o, "not_before", t);
    reg__fmt_time(asn1_ms(X509_get0_notAfter(x)), t);
    cJSON_AddStringToObject(o, "not_after", t);
    cJSON_AddStringToObject(o, "certificate_pem", pem);
    return o;
}

thz_err reg_ca_get(registry *r, int64_t tenant, cJSON **out, char err[REG_ERR_LEN])
{
    X509 *x;
    EVP_PKEY *k;
    pthread_mutex_lock(&r->dbMu);
    thz_err e = tenant_ca(r, tenant, &x, &k, err);
    pthread_mutex_unlock(&r->dbMu);
    if (e) return e;
    char *pem = pki_cert_pem(x);
    cJSON *o = pem ? ca_json(x, pem) : NULL;
    free(pem);
    X509_free(x);
    EVP_PKEY_free(k);
    if (!o) return THZ_ENOMEM;
    *out = o;
    return THZ_OK;
}

/* ---- registered CAs ---- */

/* A tenant_cas row (CA_COLS) as an object; a row_json_fn, r and now unused. */
static cJSON *ca_row_json(registry *r, sqlite3_stmt *st, int64_t now)
{
    /* id, fingerprint, subject, certificate_pem, not_before, not_after, created_at */
    char t[64];
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "id", (double)sqlite3_column_int64(st, 0));
    cJSON_AddStringToObject(o, "fingerprint", (const char *)sqlite3_column_text(st, 1));
    cJSON_AddStringToObject(o, "subject", (const char *)sqlite3_column_text(st, 2));
    reg__fmt_time(sqlite3_column_int64(st, 4), t);
    cJSON_AddStringToObject(o, "not_before", t);
    reg__fmt_time(sqlite3_column_int64(st, 5), t);
    cJSON_AddStringToObject(o, "not_after", t);
    reg__fmt_time(sqlite3_column_int64(st, 6), t);
    cJSON_AddStringToObject(o, "created_at", t);
    cJSON_AddStringToObject(o, "certificate_pem", (const char *)sqlite3_column_text(st, 3));
    return o;
}

#define CA_COLS "id, fingerprint, subject, certificate_pem, not_before, not_after, created_at"

static thz_err ca_count(registry *r, int64_t tenant, int *n)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db, "SELECT count(*) FROM tenant_cas WHERE tenant_id = ?", -1,
                                &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "count CAs");
    sqlite3_bind_int64(st, 1, tenant);
    rc = sqlite3_step(st);
    *n = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? THZ_OK : reg__sql_err(r->db, rc, "count CAs");
}

thz_err reg_ca_register(registry *r, int64_t tenant, const cJSON *body, cJSON **out,
                        char err[REG_ERR_LEN])
{
    *out = NULL;
    const char *z;
    thz_err e = reg__field_str(body, "certificate_pem", REG_PEM_MAX, true, &z, err);
    if (e) return e;
    X509 *x = pem_certs(z, NULL);
    if (!x) {
        reg__err(err, "certificate_pem: not a PEM certificate");
        return THZ_EINVAL;
    }
    if (X509_check_ca(x) < 1) {
        X509_free(x);
        reg__err(err, "certificate_pem: not a CA certificate (basicConstraints CA:TRUE)");
        return THZ_EINVAL;
    }
    uint8_t fp[REG_FP_LEN];
    char fph[2 * REG_FP_LEN + 1], subj[512];
    char *pem = pki_cert_pem(x);
    if (!pem || !cert_fp(x, fp)) {
        free(pem);
        X509_free(x);
        return THZ_ENOMEM;
    }
    hex(fp, REG_FP_LEN, fph);
    name_text(X509_get_subject_name(x), subj, sizeof subj);
    int64_t nb = asn1_ms(X509_get0_notBefore(x)), na = asn1_ms(X509_get0_notAfter(x));
    X509_free(x);
    reg_ca *ca = calloc(1, sizeof *ca);
    pthread_mutex_lock(&r->dbMu);
    int n = 0;
    e = ca ? ca_count(r, tenant, &n) : THZ_ENOMEM;
    if (e == THZ_OK && n >= REG_CAS_MAX) {
        reg__err(err, "a tenant may register at most %d CAs", REG_CAS_MAX);
        e = THZ_EQUOTA;
    }
    sqlite3_stmt *st = NULL;
    if (e == THZ_OK) {
        int rc = sqlite3_prepare_v2(r->db,
                                    "INSERT INTO tenant_cas(tenant_id, fingerprint, subject,"
                                    " certificate_pem, not_before, not_after, created_at)"
                                    " VALUES(?,?,?,?,?,?,?) RETURNING " CA_COLS,
                                    -1, &st, NULL);
        if (rc != SQLITE_OK) {
            e = reg__sql_err(r->db, rc, "register CA");
        } else {
            sqlite3_bind_int64(st, 1, tenant);
            sqlite3_bind_text(st, 2, fph, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, subj, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 4, pem, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 5, nb);
            sqlite3_bind_int64(st, 6, na);
            sqlite3_bind_int64(st, 7, reg__now_ms());
            rc = sqlite3_step(st);
            if (rc == SQLITE_ROW) {
                *out = ca_row_json(r, st, 0);
                ca->id = sqlite3_column_int64(st, 0);
                ca->tenant = tenant;
                if (!*out) e = THZ_ENOMEM;
            } else if (sqlite3_extended_errcode(r->db) == SQLITE_CONSTRAINT_UNIQUE) {
                reg__err(err, "this CA is already registered");
                e = THZ_EEXIST;
            } else {
                e = reg__sql_err(r->db, rc, "register CA");
            }
            sqlite3_finalize(st);
        }
    }
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        if (hmap_put(&r->cas, &ca->id, sizeof ca->id, ca, NULL) != THZ_OK) e = THZ_ENOMEM;
        pthread_rwlock_unlock(&r->lock);
        if (e == THZ_OK) ca = NULL;
    }
    pthread_mutex_unlock(&r->dbMu);
    free(ca);
    free(pem);
    if (e && *out) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    return e;
}

/* Makes a row object of a statement's current row (the read lock held). */
typedef cJSON *(*row_json_fn)(registry *r, sqlite3_stmt *st, int64_t now);

/* Steps st (prepared and bound) to its end and finalizes it: every row as
 * row made it, in a new array *out (the caller's). Under dbMu; takes the
 * read lock for row. what names the query in an SQL error. */
static thz_err rows_json(registry *r, sqlite3_stmt *st, row_json_fn row, const char *what,
                         cJSON **out)
{
    cJSON *a = cJSON_CreateArray();
    thz_err e = a ? THZ_OK : THZ_ENOMEM;
    int rc = SQLITE_DONE;
    int64_t now = reg__now_ms();
    pthread_rwlock_rdlock(&r->lock);
    while (e == THZ_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *o = row(r, st, now);
        if (o)
            cJSON_AddItemToArray(a, o);
        else
            e = THZ_ENOMEM;
    }
    pthread_rwlock_unlock(&r->lock);
    if (e == THZ_OK && rc != SQLITE_DONE) e = reg__sql_err(r->db, rc, what);
    sqlite3_finalize(st);
    if (e) {
        cJSON_Delete(a);
        return e;
    }
    *out = a;
    return THZ_OK;
}

thz_err reg_ca_list(registry *r, int64_t tenant, cJSON **out)
{
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(
        r->db, "SELECT " CA_COLS " FROM tenant_cas WHERE tenant_id = ? ORDER BY id", -1, &st, NULL);
    thz_err e;
    if (rc != SQLITE_OK) {
        e = reg__sql_err(r->db, rc, "list CAs");
    } else {
        sqlite3_bind_int64(st, 1, tenant);
        e = rows_json(r, st, ca_row_json, "list CAs", out);
    }
    pthread_mutex_unlock(&r->dbMu);
    return e;
}

typedef struct fired {
    uint8_t fp[REG_FP_LEN];
    int64_t tenant;
    char *zDev;
} fired;

static void fire(registry *r, fired *f, size_t n)
{
    pthread_rwlock_rdlock(&r->lock);
    reg_cert_revoke_fn fn = r->onCertRevoke;
    void *ctx = r->certRevokeCtx;
    pthread_rwlock_unlock(&r->lock);
    for (size_t i = 0; i < n; i++) {
        if (fn) fn(f[i].tenant, f[i].zDev, f[i].fp, ctx);
        free(f[i].zDev);
    }
    free(f);
}

thz_err reg_ca_delete(registry *r, int64_t tenant, int64_t id)
{
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    thz_err e;
    int rc = sqlite3_prepare_v2(r->db, "DELETE FROM tenant_cas WHERE tenant_id = ? AND id = ?", -1,
                                &st, NULL);
    if (rc != SQLITE_OK) {
        e = reg__sql_err(r->db, rc, "delete CA");
    } else {
        sqlite3_bind_int64(st, 1, tenant);
        sqlite3_bind_int64(st, 2, id);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
        e = rc == SQLITE_DONE ? THZ_OK : reg__sql_err(r->db, rc, "delete CA");
    }
    if (e == THZ_OK && sqlite3_changes(r->db) == 0) e = THZ_ENOTFOUND;
    fired *f = NULL;
    size_t nf = 0;
    if (e == THZ_OK) {
        /* The certificates it anchored stay bound (listed with status
         * "ca_deleted") but no longer connect. */
        pthread_rwlock_wrlock(&r->lock);
        free(hmap_del(&r->cas, &id, sizeof id));
        size_t pos = 0, cap = 0;
        for (hmap_entry *he = hmap_next(&r->certs, &pos, NULL); he;
             he = hmap_next(&r->certs, &pos, he)) {
            reg_cert *c = he->val;
            if (c->tenant != tenant || c->caId != id || c->revoked) continue;
            if (nf == cap) {
                cap = cap ? cap * 2 : 8;
                fired *g = realloc(f, cap * sizeof *f);
                if (!g) break;
                f = g;
            }
            memcpy(f[nf].fp, c->fp, REG_FP_LEN);
            f[nf].tenant = tenant;
            if ((f[nf].zDev = strdup(c->zDev))) nf++;
        }
        pthread_rwlock_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->dbMu);
    fire(r, f, nf);
    return e;
}

/* ---- device certificates ---- */

static const char *status_of(registry *r, int64_t caId, int64_t nb, int64_t na, bool revoked,
                             int64_t now)
{
    if (revoked) return "revoked";
    if (caId && !hmap_get(&r->cas, &caId, sizeof caId)) return "ca_deleted";
    if (now < nb) return "not_yet_valid";
    if (now > na) return "expired";
    return "active";
}

#define CERT_COLS                                                                                  \
    "fingerprint, device_id, subject, issuer, source, ca_id, not_before, not_after, created_at,"   \
    " revoked_at, certificate_pem"

/* The certificate object of a device_certs row (CERT_COLS); rdlock held. */
static cJSON *cert_row_json(registry *r, sqlite3_stmt *st, int64_t now)
{
    char t[64];
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    int64_t caId = sqlite3_column_int64(st, 5), nb = sqlite3_column_int64(st, 6),
            na = sqlite3_column_int64(st, 7);
    bool revoked = sqlite3_column_type(st, 9) != SQLITE_NULL;
    cJSON_AddStringToObject(o, "fingerprint", (const char *)sqlite3_column_text(st, 0));
    cJSON_AddStringToObject(o, "device_id", (const char *)sqlite3_column_text(st, 1));
    cJSON_AddStringToObject(o, "subject", (const char *)sqlite3_column_text(st, 2));
    cJSON_AddStringToObject(o, "issuer", (const char *)sqlite3_column_text(st, 3));
    cJSON_AddStringToObject(o, "source", (const char *)sqlite3_column_text(st, 4));
    if (caId)
        cJSON_AddNumberToObject(o, "ca_id", (double)caId);
    else
        cJSON_AddNullToObject(o, "ca_id");
    reg__fmt_time(nb, t);
    cJSON_AddStringToObject(o, "not_before", t);
    reg__fmt_time(na, t);
    cJSON_AddStringToObject(o, "not_after", t);
    reg__fmt_time(sqlite3_column_int64(st, 8), t);
    cJSON_AddStringToObject(o, "created_at", t);
    cJSON_AddItemToObject(o, "revoked_at", reg__time_json(sqlite3_column_int64(st, 9)));
    cJSON_AddStringToObject(o, "status", status_of(r, caId, nb, na, revoked, now));
    cJSON_AddStringToObject(o, "certificate_pem", (const char *)sqlite3_column_text(st, 10));
    return o;
}

/* Verifies that x chains (through the certificates in more) to the tenant
 * CA or one of its registered CAs, validity periods aside (checked at every
 * CONNECT). *caId: 0 for the tenant CA, else the registered CA's id; *anchor:
 * the anchoring CA certificate (caller frees). Under dbMu. */
static thz_err chain_check(registry *r, int64_t tenant, X509 *cax, X509 *x, STACK_OF(X509) * more,
                           int64_t *caId, X509 **anchor, char *err)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    STACK_OF(X509) *cas = sk_X509_new_null();
    int64_t *ids = NULL;
    thz_err e = THZ_OK;
    if (!store || !ctx || !cas || X509_STORE_add_cert(store, cax) != 1) e = THZ_ENOMEM;
    sqlite3_stmt *st = NULL;
    if (e == THZ_OK &&
        sqlite3_prepare_v2(r->db, "SELECT id, certificate_pem FROM tenant_cas WHERE tenant_id = ?",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, tenant);
        int n = 0;
        ids = calloc(REG_CAS_MAX + 1, sizeof *ids);
        while (ids && n < REG_CAS_MAX && sqlite3_step(st) == SQLITE_ROW) {
            X509 *c = pem_certs((const char *)sqlite3_column_text(st, 1), NULL);
            if (!c) continue;
            X509_STORE_add_cert(store, c);
            sk_X509_push(cas, c);
            ids[n++] = sqlite3_column_int64(st, 0);
        }
    }
    sqlite3_finalize(st);
    if (e == THZ_OK && !ids) e = THZ_ENOMEM;
    if (e == THZ_OK) {
        /* PARTIAL_CHAIN: a registered intermediate CA is a trust anchor by
         * itself; NO_CHECK_TIME: validity is checked at every CONNECT. */
        X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN | X509_V_FLAG_NO_CHECK_TIME |
                                        X509_V_FLAG_X509_STRICT);
        X509_STORE_set_purpose(store, X509_PURPOSE_SSL_CLIENT);
        if (X509_STORE_CTX_init(ctx, store, x, more) != 1) {
            e = THZ_ENOMEM;
        } else if (X509_verify_cert(ctx) != 1) {
            reg__err(err,
                     "certificate_pem: does not chain to the tenant CA or a registered CA (%s)",
                     X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
            e = THZ_EINVAL;
        } else {
            STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(ctx);
            X509 *top = sk_X509_value(chain, sk_X509_num(chain) - 1);
            *caId = -1;
            if (X509_cmp(top, cax) == 0) *caId = 0;
            for (int i = 0; *caId < 0 && i < sk_X509_num(cas); i++)
                if (X509_cmp(top, sk_X509_value(cas, i)) == 0) *caId = ids[i];
            if (*caId < 0) {
                /* the anchor is an intermediate of a registered CA's chain */
                for (int k = sk_X509_num(chain) - 1; *caId < 0 && k >= 1; k--)
                    for (int i = 0; *caId < 0 && i < sk_X509_num(cas); i++)
                        if (X509_cmp(sk_X509_value(chain, k), sk_X509_value(cas, i)) == 0)
                            *caId = ids[i];
            }
            if (*caId < 0) {
                reg__err(err, "certificate_pem: its chain ends at an unknown CA");
                e = THZ_EINVAL;
            } else if (X509_up_ref(top) == 1) {
                *anchor = top;
            }
        }
    }
    ERR_clear_error();
    free(ids);
    sk_X509_pop_free(cas, X509_free);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return e;
}

static thz_err dev_check(registry *r, int64_t tenant, const char *id, int *active)
{
    pthread_rwlock_rdlock(&r->lock);
    reg_dev *d = id ? reg__dev_find(r, tenant, id) : NULL;
    int n = 0;
    if (d) {
        size_t pos = 0;
        for (hmap_entry *he = hmap_next(&r->certs, &pos, NULL); he;
             he = hmap_next(&r->certs, &pos, he)) {
            reg_cert *c = he->val;
            if (!c->revoked && c->tenant == tenant && strcmp(c->zDev, id) == 0) n++;
        }
    }
    pthread_rwlock_unlock(&r->lock);
    *active = n;
    return d ? THZ_OK : THZ_ENOTFOUND;
}

/* A key the server accepts in a CSR: EC (a named curve OpenSSL knows) or
 * RSA of 2048 bits or more. */
static bool key_ok(EVP_PKEY *k)
{
    int t = EVP_PKEY_get_base_id(k);
    if (t == EVP_PKEY_EC) return true;
    if (t == EVP_PKEY_RSA) return EVP_PKEY_get_bits(k) >= 2048;
    return t == EVP_PKEY_ED25519;
}

thz_err reg_cert_create(registry *r, int64_t tenant, const char *id, const cJSON *body, cJSON **out,
                        char err[REG_ERR_LEN])
{
    *out = NULL;
    const char *csrz = NULL, *certz = NULL;
    long days = REG_CERT_DAYS;
    thz_err e = THZ_OK;
    if (body) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "validity_days");
        if (v) {
            if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > REG_CERT_DAYS_MAX ||
                v->valuedouble != (double)(long)v->valuedouble) {
                reg__err(err, "validity_days: must be an integer in 1..%d", REG_CERT_DAYS_MAX);
                return THZ_EINVAL;
            }
            days = (long)v->valuedouble;
        }
        if ((e = pem_field(body, "csr_pem", &csrz, err)) ||
            (e = pem_field(body, "certificate_pem", &certz, err)))
            return e;
        if (csrz && certz) {
            reg__err(err, "give csr_pem or certificate_pem, not both");
            return THZ_EINVAL;
        }
    }
    const char *source = certz ? "registered" : csrz ? "csr" : "created";
    /* Parse what the caller sent before taking any lock. */
    X509_REQ *req = NULL;
    X509 *x = NULL, *cax = NULL, *anchor = NULL;
    STACK_OF(X509) *more = NULL;
    EVP_PKEY *key = NULL, *cak = NULL;
    char *keyz = NULL, *pem = NULL, *capem = NULL;
    if (csrz) {
        BIO *b = BIO_new_mem_buf(csrz, -1);
        req = b ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        key = req ? X509_REQ_get_pubkey(req) : NULL;
        if (!req || !key) {
            reg__err(err, "csr_pem: not a PEM certificate request");
            e = THZ_EINVAL;
        } else if (X509_REQ_verify(req, key) != 1) {
            reg__err(err, "csr_pem: the request's signature does not verify");
            e = THZ_EINVAL;
        } else if (!key_ok(key)) {
            reg__err(err, "csr_pem: the key must be EC, Ed25519 or RSA of 2048 bits or more");
            e = THZ_EINVAL;
        }
    } else if (certz) {
        x = pem_certs(certz, &more);
        if (!x) {
            reg__err(err, "certificate_pem: not a PEM certificate");
            e = THZ_EINVAL;
        } else if (X509_check_ca(x) >= 1) {
            reg__err(err, "certificate_pem: a CA certificate cannot be a device certificate");
            e = THZ_EINVAL;
        }
    } else {
        key = pki_key_ec_p256();
        keyz = key ? pki_key_pem(key) : NULL;
        if (!keyz) e = THZ_ENOMEM;
    }
    ERR_clear_error();
    if (e) goto out;

    pthread_mutex_lock(&r->dbMu);
    int active = 0;
    int64_t caId = 0;
    e = dev_check(r, tenant, id, &active);
    if (e == THZ_OK && active >= REG_CERTS_MAX) {
        reg__err(err, "a device may have at most %d active certificates", REG_CERTS_MAX);
        e = THZ_EQUOTA;
    }
    if (e == THZ_OK) e = tenant_ca(r, tenant, &cax, &cak, err);
    if (e == THZ_OK && !x) {
        pki_cert_spec spec = {.cn = id,
                              .backdate_s = 300,
                              .days = days,
                              .usage = "critical,digitalSignature",
                              .ext_use = "clientAuth"};
        x = pki_cert_make(&spec, key, cax, cak);
        if (!x) e = THZ_ENOMEM;
    }
    if (e == THZ_OK && certz) {
        e = chain_check(r, tenant, cax, x, more, &caId, &anchor, err);
        if (e == THZ_EINVAL)
            log_info("registry", "certificate for device %s of tenant %lld refused: %s", id,
                     (long long)tenant, err);
    }
    uint8_t fp[REG_FP_LEN];
    char fph[2 * REG_FP_LEN + 1], subj[512], iss[512];
    int64_t nb = 0, na = 0, now = reg__now_ms();
    reg_cert *c = NULL;
    if (e == THZ_OK) {
        pem = pki_cert_pem(x);
        capem = pki_cert_pem(anchor ? anchor : cax);
        c = calloc(1, sizeof *c);
        if (!pem || !capem || !c || !(c->zDev = strdup(id)) || !cert_fp(x, fp)) e = THZ_ENOMEM;
    }
    if (e == THZ_OK) {
        hex(fp, REG_FP_LEN, fph);
        name_text(X509_get_subject_name(x), subj, sizeof subj);
        name_text(X509_get_issuer_name(x), iss, sizeof iss);
        nb = asn1_ms(X509_get0_notBefore(x));
        na = asn1_ms(X509_get0_notAfter(x));
        sqlite3_stmt *st;
        int rc = sqlite3_prepare_v2(
            r->db,
            "INSERT INTO device_certs(fingerprint, tenant_id, device_id, ca_id, source, subject,"
            " issuer, certificate_pem, not_before, not_after, created_at)"
            " VALUES(?,?,?,?,?,?,?,?,?,?,?) RETURNING " CERT_COLS,
            -1, &st, NULL);
        if (rc != SQLITE_OK) {
            e = reg__sql_err(r->db, rc, "bind certificate");
        } else {
            sqlite3_bind_text(st, 1, fph, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, tenant);
            sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 4, caId);
            sqlite3_bind_text(st, 5, source, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 6, subj, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 7, iss, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 8, pem, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 9, nb);
            sqlite3_bind_int64(st, 10, na);
            sqlite3_bind_int64(st, 11, now);
            rc = sqlite3_step(st);
            if (rc == SQLITE_ROW) {
                pthread_rwlock_rdlock(&r->lock);
                *out = cert_row_json(r, st, now);
                pthread_rwlock_unlock(&r->lock);
                if (!*out) e = THZ_ENOMEM;
            } else if (sqlite3_extended_errcode(r->db) == SQLITE_CONSTRAINT_PRIMARYKEY ||
                       sqlite3_extended_errcode(r->db) == SQLITE_CONSTRAINT_UNIQUE) {
                reg__err(err, "this certificate is already bound");
                e = THZ_EEXIST;
            } else {
                e = reg__sql_err(r->db, rc, "bind certificate");
            }
            sqlite3_finalize(st);
        }
    }
    if (e == THZ_OK) {
        memcpy(c->fp, fp, REG_FP_LEN);
        c->tenant = tenant;
        c->caId = caId;
        c->notBefore = nb;
        c->notAfter = na;
        pthread_rwlock_wrlock(&r->lock);
        if (hmap_put(&r->certs, c->fp, REG_FP_LEN, c, NULL) != THZ_OK) e = THZ_ENOMEM;
        pthread_rwlock_unlock(&r->lock);
        if (e == THZ_OK) c = NULL;
    }
    pthread_mutex_unlock(&r->dbMu);
    if (c) free(c->zDev);
    free(c);
    if (e == THZ_OK) {
        cJSON_AddStringToObject(*out, "ca_pem", capem);
        if (keyz) cJSON_AddStringToObject(*out, "private_key_pem", keyz);
        log_info("registry", "certificate %s bound to device %s of tenant %lld (%s)", fph, id,
                 (long long)tenant, source);
    } else if (*out) {
        cJSON_Delete(*out);
        *out = NULL;
    }
out:
    if (keyz) OPENSSL_cleanse(keyz, strlen(keyz));
    free(keyz);
    free(pem);
    free(capem);
    X509_REQ_free(req);
    X509_free(x);
    X509_free(cax);
    X509_free(anchor);
    sk_X509_pop_free(more, X509_free);
    EVP_PKEY_free(key);
    EVP_PKEY_free(cak);
    ERR_clear_error();
    return e;
}

thz_err reg_cert_list(registry *r, int64_t tenant, const char *id, cJSON **out)
{
    pthread_mutex_lock(&r->dbMu);
    int active;
    thz_err e = dev_check(r, tenant, id, &active);
    if (e == THZ_OK) {
        sqlite3_stmt *st;
        int rc = sqlite3_prepare_v2(r->db,
                                    "SELECT " CERT_COLS " FROM device_certs WHERE tenant_id = ? AND"
                                    " device_id = ? ORDER BY created_at, fingerprint",
                                    -1, &st, NULL);
        if (rc != SQLITE_OK) {
            e = reg__sql_err(r->db, rc, "list certificates");
        } else {
            sqlite3_bind_int64(st, 1, tenant);
            sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
            e = rows_json(r, st, cert_row_json, "list certificates", out);
        }
    }
    pthread_mutex_unlock(&r->dbMu);
    return e;
}

thz_err reg_cert_revoke(registry *r, int64_t tenant, const char *id, const char *fingerprint)
{
    uint8_t fp[REG_FP_LEN];
    if (!id || !unhex(fingerprint, fp)) return THZ_ENOTFOUND;
    char fph[2 * REG_FP_LEN + 1];
    hex(fp, REG_FP_LEN, fph);
    pthread_mutex_lock(&r->dbMu);
    sqlite3_stmt *st;
    thz_err e;
    int rc = sqlite3_prepare_v2(r->db,
                                "UPDATE device_certs SET revoked_at = ? WHERE fingerprint = ? AND"
                                " tenant_id = ? AND device_id = ? AND revoked_at IS NULL",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        e = reg__sql_err(r->db, rc, "revoke certificate");
    } else {
        sqlite3_bind_int64(st, 1, reg__now_ms());
        sqlite3_bind_text(st, 2, fph, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, tenant);
        sqlite3_bind_text(st, 4, id, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
        e = rc == SQLITE_DONE ? THZ_OK : reg__sql_err(r->db, rc, "revoke certificate");
    }
    if (e == THZ_OK && sqlite3_changes(r->db) == 0) e = THZ_ENOTFOUND;
    fired *f = NULL;
    if (e == THZ_OK) {
        pthread_rwlock_wrlock(&r->lock);
        reg_cert *c = hmap_get(&r->certs, fp, REG_FP_LEN);
        if (c) c->revoked = true; /* kept, so the refusal's log line says why */
        pthread_rwlock_unlock(&r->lock);
        if ((f = malloc(sizeof *f))) {
            memcpy(f->fp, fp, REG_FP_LEN);
            f->tenant = tenant;
            f->zDev = strdup(id);
        }
    }
    pthread_mutex_unlock(&r->dbMu);
    if (e == THZ_OK) {
        log_info("registry", "certificate %s of device %s (tenant %lld) revoked", fph, id,
                 (long long)tenant);
        if (f && f->zDev)
            fire(r, f, 1);
        else if (f)
            free(f);
    }
    return e;
}

thz_err reg_cert_auth(registry *r, const uint8_t fp[REG_FP_LEN], reg_identity *out,
                      char why[REG_ERR_LEN])
{
    int64_t now = reg__now_ms();
    thz_err e = THZ_EBADAUTH;
    char t[64];
    pthread_rwlock_rdlock(&r->lock);
    reg_cert *c = hmap_get(&r->certs, fp, REG_FP_LEN);
    reg_dev *d = c ? reg__dev_find(r, c->tenant, c->zDev) : NULL;
    if (!c) {
        reg__err(why, "client certificate not bound to any device");
    } else if (c->revoked) {
        reg__err(why, "client certificate of device %s was revoked", c->zDev);
    } else if (now < c->notBefore) {
        reg__fmt_time(c->notBefore, t);
        reg__err(why, "client certificate of device %s is not valid before %s", c->zDev, t);
    } else if (now > c->notAfter) {
        reg__fmt_time(c->notAfter, t);
        reg__err(why, "client certificate of device %s expired at %s", c->zDev, t);
    } else if (c->caId && !hmap_get(&r->cas, &c->caId, sizeof c->caId)) {
        reg__err(why,
                 "client certificate of device %s: chain broken, its CA (id %lld) is no longer "
                 "registered",
                 c->zDev, (long long)c->caId);
    } else if (!d || d->deleted || !d->enabled) {
        reg__err(why, "client certificate of device %s: the device is disabled or gone", c->zDev);
    } else {
        reg__dev_retain(d);
        *out = (reg_identity){.tenant = d->tenant, .dev = d, .role = REG_VIEWER};
        e = THZ_OK;
    }
    pthread_rwlock_unlock(&r->lock);
    return e;
}

void reg_on_cert_revoke(registry *r, reg_cert_revoke_fn fn, void *ctx)
{
    pthread_rwlock_wrlock(&r->lock);
    r->onCertRevoke = fn;
    r->certRevokeCtx = ctx;
    pthread_rwlock_unlock(&r->lock);
}

/* ---- the mirror ---- */

thz_err reg__load_certs(registry *r, char *err)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(r->db, "SELECT id, tenant_id FROM tenant_cas", -1, &st, NULL);
    if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "loading CAs");
    thz_err e = THZ_OK;
    while (e == THZ_OK && sqlite3_step(st) == SQLITE_ROW) {
        reg_ca *ca = malloc(sizeof *ca);
        if (!ca) {
            e = THZ_ENOMEM;
            break;
        }
        ca->id = sqlite3_column_int64(st, 0);
        ca->tenant = sqlite3_column_int64(st, 1);
        if (hmap_put(&r->cas, &ca->id, sizeof ca->id, ca, NULL) != THZ_OK) {
            free(ca);
            e = THZ_ENOMEM;
        }
    }
    sqlite3_finalize(st);
    if (e == THZ_OK) {
        rc = sqlite3_prepare_v2(r->db,
                                "SELECT fingerprint, tenant_id, device_id, ca_id, not_before,"
                                " not_after, revoked_at IS NOT NULL FROM device_certs",
                                -1, &st, NULL);
        if (rc != SQLITE_OK) return reg__sql_err(r->db, rc, "loading certificates");
        while (e == THZ_OK && sqlite3_step(st) == SQLITE_ROW) {
            reg_cert *c = calloc(1, sizeof *c);
            if (!c || !(c->zDev = strdup((const char *)sqlite3_column_text(st, 2)))) {
                free(c);
                e = THZ_ENOMEM;
                break;
            }
            if (!unhex((const char *)sqlite3_column_text(st, 0), c->fp)) {
                free(c->zDev);
                free(c);
                continue;
            }
            c->tenant = sqlite3_column_int64(st, 1);
            c->caId = sqlite3_column_int64(st, 3);
            c->notBefore = sqlite3_column_int64(st, 4);
            c->notAfter = sqlite3_column_int64(st, 5);
            c->revoked = sqlite3_column_int(st, 6) != 0;
            if (hmap_put(&r->certs, c->fp, REG_FP_LEN, c, NULL) != THZ_OK) {
                free(c->zDev);
                free(c);
                e = THZ_ENOMEM;
            }
        }
        sqlite3_finalize(st);
    }
    if (e) reg__err(err, "loading certificates: %s", thz_strerror(e));
    return e;
}

void reg__certs_forget_device(registry *r, int64_t tenant, const char *id)
{
    for (;;) {
        size_t pos = 0;
        reg_cert *hit = NULL;
        for (hmap_entry *he = hmap_next(&r->certs, &pos, NULL); he && !hit;
             he = hmap_next(&r->certs, &pos, he)) {
            reg_cert *c = he->val;
            if (c->tenant == tenant && strcmp(c->zDev, id) == 0) hit = c;
        }
        if (!hit) return;
        hmap_del(&r->certs, hit->fp, REG_FP_LEN);
        free(hit->zDev);
        free(hit);
    }
}

void reg__certs_free(registry *r)
{
    size_t pos = 0;
    for (hmap_entry *he = hmap_next(&r->certs, &pos, NULL); he;
         he = hmap_next(&r->certs, &pos, he)) {
        reg_cert *c = he->val;
        free(c->zDev);
        free(c);
    }
    hmap_free(&r->certs);
    pos = 0;
    for (hmap_entry *he = hmap_next(&r->cas, &pos, NULL); he; he = hmap_next(&r->cas, &pos, he))
        free(he->val);
    hmap_free(&r->cas);
}
