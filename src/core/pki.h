/* pki.h - the few X.509 operations the daemon does itself, over OpenSSL 3:
 * EC P-256 keys, certificates made and signed by a CA of ours, PEM files and
 * PEM text. Two users: the development CA and its server certificate
 * (net/net_tls.c) and the tenant device CAs and device certificates
 * (registry/certs.c). Every function may leave OpenSSL's error queue
 * non-empty; callers clear it (ERR_clear_error) when they are done. */
#ifndef THZ_PKI_H
#define THZ_PKI_H

#include <stdbool.h>
#include <sys/types.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "core/err.h"

/* What pki_cert_make puts into a certificate besides the key and issuer. */
typedef struct pki_cert_spec {
    const char *org;     /* O= of the subject (before CN=), or NULL for none */
    const char *cn;      /* CN= of the subject, UTF-8 */
    long backdate_s;     /* notBefore = now - backdate_s (clocks of peers differ) */
    long days;           /* notAfter = now + days */
    bool ca;             /* CA:TRUE,pathlen:0 with keyCertSign,cRLSign; the fields below unused */
    const char *usage;   /* a leaf's keyUsage, e.g. "critical,digitalSignature" */
    const char *ext_use; /* a leaf's extendedKeyUsage, e.g. "serverAuth" */
    const char *san;     /* a leaf's subjectAltName ("IP:127.0.0.1,DNS:localhost"), or NULL */
} pki_cert_spec;

/* A new EC P-256 key pair, or NULL. The caller frees it (EVP_PKEY_free). */
EVP_PKEY *pki_key_ec_p256(void);

/* A version 3 certificate for the public key of pub, described by s, with a
 * random positive 128-bit serial, a subjectKeyIdentifier and (a leaf) an
 * authorityKeyIdentifier, signed with SHA-256 by signer. issuer is the CA
 * certificate whose subject becomes the issuer name, or NULL for a
 * self-signed certificate (then signer is pub's own private key). Borrows
 * every argument; returns a new certificate the caller frees (X509_free), or
 * NULL. */
X509 *pki_cert_make(const pki_cert_spec *s, EVP_PKEY *pub, X509 *issuer, EVP_PKEY *signer);

/* The private key, or the first certificate, of the PEM file at path into
 * *out (the caller frees it). THZ_ENOTFOUND when the file cannot be opened,
 * THZ_ECORRUPT when it holds no such PEM block; *out is NULL then. */
thz_err pki_key_load(const char *path, EVP_PKEY **out);
thz_err pki_cert_load(const char *path, X509 **out);

/* Writes key (if not NULL), then cert and chain (each if not NULL) as PEM
 * into path, atomically (path.tmp, fsync, rename), created with mode.
 * THZ_EIO if anything fails (nothing is left behind then). */
thz_err pki_pem_write(const char *path, mode_t mode, EVP_PKEY *key, X509 *cert, X509 *chain);

/* The key pair of key_path and its certificate of cert_path (the first one
 * there) into *key and *cert, the caller's. THZ_ENOTFOUND when key_path
 * cannot be opened; THZ_ECORRUPT when the key or the certificate does not
 * load or the certificate is not the key's. *key and *cert are NULL then. */
thz_err pki_pair_load(const char *cert_path, const char *key_path, EVP_PKEY **key, X509 **cert);

/* A new P-256 key and its certificate (pki_cert_make, signed by issuer_key;
 * self-signed when issuer is NULL) written as files: cert_path (0644) holds
 * the certificate followed by issuer (its chain) when there is one, then
 * key_path (0600) the key, so that a key file never stands without its
 * certificate. *key and *cert are then the caller's. THZ_ENOMEM, or THZ_EIO
 * when a file cannot be written (nothing is left at cert_path then). */
thz_err pki_issue_files(const pki_cert_spec *s, X509 *issuer, EVP_PKEY *issuer_key,
                        const char *cert_path, const char *key_path, EVP_PKEY **key, X509 **cert);

/* x, or the private key k, as PEM text: a NUL-terminated string the caller
 * frees (free); NULL when out of memory. The key's text is secret: the
 * caller wipes it (OPENSSL_cleanse) before freeing it. */
char *pki_cert_pem(X509 *x);
char *pki_key_pem(EVP_PKEY *k);

#endif
