/* pki.c - keys, certificates and PEM for the development CA and the tenant
 * device CAs (see pki.h). */
#include "core/pki.h"

#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

EVP_PKEY *pki_key_ec_p256(void)
{
    return EVP_EC_gen("P-256");
}

/* Adds extension nid = value to x; issuer (NULL: x itself) is what
 * authorityKeyIdentifier refers to. */
static bool add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!e) return false;
    bool ok = X509_add_ext(x, e, -1) == 1;
    X509_EXTENSION_free(e);
    return ok;
}

X509 *pki_cert_make(const pki_cert_spec *s, EVP_PKEY *pub, X509 *issuer, EVP_PKEY *signer)
{
    X509 *x = X509_new();
    if (!x) return NULL;
    uint8_t serial[16];
    BIGNUM *bn = NULL;
    bool ok = X509_set_version(x, 2) && RAND_bytes(serial, sizeof serial) == 1;
    if (ok) {
        serial[0] &= 0x7f; /* positive */
        bn = BN_bin2bn(serial, sizeof serial, NULL);
        ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    }
    BN_free(bn);
    ok = ok && X509_gmtime_adj(X509_getm_notBefore(x), -s->backdate_s) &&
         X509_time_adj_ex(X509_getm_notAfter(x), (int)s->days, 0, NULL) && X509_set_pubkey(x, pub);
    X509_NAME *n = X509_get_subject_name(x);
    if (ok && s->org)
        ok = X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)s->org, -1,
                                        -1, 0);
    ok = ok &&
         X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)s->cn, -1, -1,
                                    0) &&
         X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n) &&
         add_ext(x, issuer, NID_subject_key_identifier, "hash");
    if (s->ca) {
        ok = ok && add_ext(x, issuer, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
             add_ext(x, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        ok = ok && add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE") &&
             add_ext(x, issuer, NID_key_usage, s->usage) &&
             add_ext(x, issuer, NID_ext_key_usage, s->ext_use) &&
             (!s->san || add_ext(x, issuer, NID_subject_alt_name, s->san)) &&
             add_ext(x, issuer, NID_authority_key_identifier, "keyid:always");
    }
    ok = ok && X509_sign(x, signer, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(x);
        ERR_clear_error();
        return NULL;
    }
    return x;
}

thz_err pki_key_load(const char *path, EVP_PKEY **out)
{
    FILE *f = fopen(path, "r");
    *out = NULL;
    if (!f) return THZ_ENOTFOUND;
    *out = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return *out ? THZ_OK : THZ_ECORRUPT;
}

thz_err pki_cert_load(const char *path, X509 **out)
{
    FILE *f = fopen(path, "r");
    *out = NULL;
    if (!f) return THZ_ENOTFOUND;
    *out = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return *out ? THZ_OK : THZ_ECORRUPT;
}

thz_err pki_pair_load(const char *cert_path, const char *key_path, EVP_PKEY **key, X509 **cert)
{
    *cert = NULL;
    thz_err e = pki_key_load(key_path, key);
    if (e == THZ_ENOTFOUND) return e;
    pki_cert_load(cert_path, cert);
    if (*key && *cert && X509_check_private_key(*cert, *key) == 1) return THZ_OK;
    EVP_PKEY_free(*key);
    X509_free(*cert);
    *key = NULL;
    *cert = NULL;
    return THZ_ECORRUPT;
}

thz_err pki_pem_write(const char *path, mode_t mode, EVP_PKEY *key, X509 *cert, X509 *chain)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return THZ_EIO;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(tmp);
        return THZ_EIO;
    }
    int ok = 1;
    if (key) ok = ok && PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    if (cert) ok = ok && PEM_write_X509(f, cert);
    if (chain) ok = ok && PEM_write_X509(f, chain);
    ok = ok && fflush(f) == 0 && fsync(fd) == 0;
    if (fclose(f) != 0 || !ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return THZ_EIO;
    }
    return THZ_OK;
}

thz_err pki_issue_files(const pki_cert_spec *s, X509 *issuer, EVP_PKEY *issuer_key,
                        const char *cert_path, const char *key_path, EVP_PKEY **key, X509 **cert)
{
    EVP_PKEY *k = pki_key_ec_p256();
    X509 *x = k ? pki_cert_make(s, k, issuer, issuer ? issuer_key : k) : NULL;
    thz_err e = x ? pki_pem_write(cert_path, 0644, NULL, x, issuer) : THZ_ENOMEM;
    if (e == THZ_OK && (e = pki_pem_write(key_path, 0600, k, NULL, NULL)) != THZ_OK)
        unlink(cert_path);
    if (e) {
        X509_free(x);
        EVP_PKEY_free(k);
        return e;
    }
    *key = k;
    *cert = x;
    return THZ_OK;
}

/* What the memory BIO b holds, as a new string; wiped in b when secret. */
static char *bio_text(BIO *b, bool secret)
{
    char *p, *z;
    long n = BIO_get_mem_data(b, &p);
    if ((z = malloc((size_t)n + 1))) {
        memcpy(z, p, (size_t)n);
        z[n] = 0;
    }
    if (secret) OPENSSL_cleanse(p, (size_t)n);
    return z;
}

char *pki_cert_pem(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *z = b && PEM_write_bio_X509(b, x) ? bio_text(b, false) : NULL;
    BIO_free(b);
    return z;
}

char *pki_key_pem(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *z =
        b && PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) ? bio_text(b, true) : NULL;
    BIO_free(b);
    return z;
}
