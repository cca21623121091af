/* net_tls.c - TLS over memory BIOs (see net_tls.h): the server contexts, the
 * development CA, and the per-connection byte transformation. */
#include "net/net_tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "core/fs.h"
#include "core/log.h"
#include "core/pki.h"

#define DEV_CA_DAYS    3650
#define DEV_CERT_DAYS  825 /* what browsers accept for a server certificate */
#define DEV_RENEW_DAYS 30  /* a dev certificate this close to expiry is replaced */
#define TLS_ERR_MAX    160

struct net_tls {
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    char err[TLS_ERR_MAX];
};

static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static SSL_CTX *ctxs[NET_TLS_KINDS]; /* current contexts; each SSL holds its own ref */

/* ---- helpers ---- */

/* OpenSSL's error queue as one line (and cleared). */
static void ssl_errstr(char *out, size_t outlen, const char *fallback)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, out, outlen);
    else
        snprintf(out, outlen, "%s", fallback);
    ERR_clear_error();
}

/* ---- the development CA ---- */

/* The development CA and its server certificate (pki.h does the X.509). */
static const pki_cert_spec dev_ca_spec = {.org = "thinghz",
                                          .cn = "thinghz development CA",
                                          .backdate_s = 3600,
                                          .days = DEV_CA_DAYS,
                                          .ca = true};
static const pki_cert_spec dev_server_spec = {.org = "thinghz",
                                              .cn = "localhost",
                                              .backdate_s = 3600,
                                              .days = DEV_CERT_DAYS,
                                              .usage = "critical,digitalSignature,keyEncipherment",
                                              .ext_use = "serverAuth",
                                              .san = "IP:127.0.0.1,IP:::1,DNS:localhost"};

/* True if x was signed by ca's key and stays valid for DEV_RENEW_DAYS. */
static bool cert_current(X509 *x, X509 *ca)
{
    EVP_PKEY *capub = X509_get0_pubkey(ca);
    if (!capub || X509_verify(x, capub) != 1) return false;
    time_t soon = time(NULL) + (time_t)DEV_RENEW_DAYS * 86400;
    return X509_cmp_time(X509_get0_notAfter(x), &soon) > 0;
}

/* Creates (or reuses) DATA_DIR/tls/{ca.pem,ca.key,server.pem,server.key} and
 * writes the paths of the server's into cert/key. */
static thz_err dev_ca(const char *data_dir, char *cert, char *key, size_t len)
{
    char dir[THZ_PATH_MAX + 8], ca_pem[THZ_PATH_MAX + 16], ca_key[THZ_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/tls", data_dir);
    snprintf(ca_pem, sizeof ca_pem, "%s/ca.pem", dir);
    snprintf(ca_key, sizeof ca_key, "%s/ca.key", dir);
    snprintf(cert, len, "%s/server.pem", dir);
    snprintf(key, len, "%s/server.key", dir);
    if (thz_mkdir_p(dir, 0755) != 0) {
        log_error("tls", "cannot create %s: %s", dir, strerror(errno));
        return THZ_EIO;
    }
    thz_err rc = THZ_EIO;
    EVP_PKEY *cak = NULL, *sk = NULL;
    X509 *cax = NULL, *sx = NULL;
    bool made_ca = false;
    /* a CA missing or damaged is made anew, and so is its certificate */
    if (pki_pair_load(ca_pem, ca_key, &cak, &cax) != THZ_OK) {
        if (pki_issue_files(&dev_ca_spec, NULL, NULL, ca_pem, ca_key, &cak, &cax)) {
            log_error("tls", "cannot create the development CA in %s", dir);
            goto out;
        }
        made_ca = true;
    }
    if (pki_pair_load(cert, key, &sk, &sx) != THZ_OK || made_ca || !cert_current(sx, cax)) {
        EVP_PKEY_free(sk);
        X509_free(sx);
        sk = NULL;
        sx = NULL;
        /* server.pem carries the chain (leaf, then the CA) */
        if (pki_issue_files(&dev_server_spec, cax, cak, cert, key, &sk, &sx)) {
            log_error("tls", "cannot create the development server certificate in %s", dir);
            goto out;
        }
        log_warn("tls",
                 "no tls-cert configured: %s a development CA (%s, give it to clients as their CA "
                 "file) and a certificate for 127.0.0.1 and localhost signed by it (%s); not for "
                 "production",
                 made_ca ? "generated" : "reusing", ca_pem, cert);
    } else {
        log_warn("tls",
                 "no tls-cert configured: using the development CA %s and its certificate %s for "
                 "127.0.0.1 and localhost; not for production",
                 ca_pem, cert);
    }
    rc = THZ_OK;
out:
    EVP_PKEY_free(cak);
    EVP_PKEY_free(sk);
    X509_free(cax);
    X509_free(sx);
    ERR_clear_error();
    return rc;
}

/* ---- contexts ---- */

static int alpn_select(SSL *s, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    /* Wire format: length-prefixed names, in our order of preference. AWS
     * IoT devices on port 443 ask for x-amzn-mqtt-ca. */
    static const unsigned char mqtt[] = "\x04mqtt\x0ex-amzn-mqtt-ca";
    static const unsigned char http[] = "\x08http/1.1";
    bool is_mqtt = (uintptr_t)arg == NET_TLS_MQTT;
    const unsigned char *ours = is_mqtt ? mqtt : http;
    unsigned int ourlen = is_mqtt ? sizeof mqtt - 1 : sizeof http - 1;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, ours, ourlen, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no common protocol: go on without ALPN */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Client certificates are asked for on the MQTT listener but never judged
 * here: any certificate (or none) completes the handshake, which still
 * proves the client holds the certificate's private key (CertificateVerify).
 * Whether the certificate identifies a device is decided at CONNECT from its
 * fingerprint (registry.h, reg_cert_auth), so that a password client and a
 * certificate of an unknown CA both get an MQTT answer, not a TLS alert. */
static int client_cert_accept(int preverify, X509_STORE_CTX *x)
{
    (void)preverify;
    (void)x;
    return 1;
}

static SSL_CTX *ctx_build(const thz_config *cfg, net_tls_kind kind, const char *cert,
                          const char *key)
{
    char why[TLS_ERR_MAX];
    const char *what = "create a context";
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    if (!c) goto fail;
    SSL_CTX_set_min_proto_version(c, cfg->tls_min_version == THZ_TLS_1_3 ? TLS1_3_VERSION
                                                                         : TLS1_2_VERSION);
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_COMPRESSION);
    /* An idle connection holds no record buffers (thousands of devices). */
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
    what = "tls-ciphers";
    if (cfg->tls_ciphers[0] && SSL_CTX_set_cipher_list(c, cfg->tls_ciphers) != 1) goto fail;
    what = "tls-ciphersuites";
    if (cfg->tls_ciphersuites[0] && SSL_CTX_set_ciphersuites(c, cfg->tls_ciphersuites) != 1)
        goto fail;
    what = cert;
    if (SSL_CTX_use_certificate_chain_file(c, cert) != 1) goto fail;
    what = key;
    if (SSL_CTX_use_PrivateKey_file(c, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(c) != 1)
        goto fail;
    /* Resumption by stateless tickets only (TLS 1.2 and 1.3): no server-side
     * cache shared, and locked, by every I/O thread. The ticket keys belong
     * to the context, so they are the same on every thread and change with a
     * reload. */
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(c, 1);
    static const unsigned char sid_ctx[] = "thinghz";
    SSL_CTX_set_session_id_context(c, sid_ctx, sizeof sid_ctx - 1);
    SSL_CTX_set_alpn_select_cb(c, alpn_select, (void *)(uintptr_t)kind);
    if (kind == NET_TLS_MQTT)
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, client_cert_accept);
    return c;
fail:
    ssl_errstr(why, sizeof why, "failed");
    log_error("tls", "%s: %s", what, why);
    SSL_CTX_free(c);
    return NULL;
}

static bool setup_done;

static thz_err build_all(const thz_config *cfg)
{
    char cert[THZ_PATH_MAX + 32], key[THZ_PATH_MAX + 32];
    if (cfg->tls_cert[0]) {
        snprintf(cert, sizeof cert, "%s", cfg->tls_cert);
        snprintf(key, sizeof key, "%s", cfg->tls_key);
    } else if (dev_ca(cfg->data_dir, cert, key, sizeof cert) != THZ_OK) {
        return THZ_EIO;
    }
    SSL_CTX *fresh[NET_TLS_KINDS] = {0};
    for (int k = 0; k < NET_TLS_KINDS; k++) {
        fresh[k] = ctx_build(cfg, (net_tls_kind)k, cert, key);
        if (!fresh[k]) {
            for (int j = 0; j < k; j++) SSL_CTX_free(fresh[j]);
            return THZ_EINVAL;
        }
    }
    pthread_mutex_lock(&ctx_lock);
    for (int k = 0; k < NET_TLS_KINDS; k++) {
        SSL_CTX *old = ctxs[k];
        ctxs[k] = fresh[k];
        fresh[k] = old;
    }
    pthread_mutex_unlock(&ctx_lock);
    /* connections still using an old context hold their own reference */
    for (int k = 0; k < NET_TLS_KINDS; k++) SSL_CTX_free(fresh[k]);
    log_info("tls", "certificate %s loaded", cert);
    return THZ_OK;
}

thz_err net_tls_setup(const thz_config *cfg)
{
    if (!cfg->mqtts_listen[0] && !cfg->https_listen[0]) return THZ_OK;
    thz_err rc = build_all(cfg);
    if (rc == THZ_OK) setup_done = true;
    return rc;
}

thz_err net_tls_reload(const thz_config *cfg)
{
    if (!setup_done) return THZ_OK;
    thz_err rc = build_all(cfg);
    if (rc) log_warn("tls", "reload failed: the previous certificate stays in use");
    return rc;
}

void net_tls_cleanup(void)
{
    pthread_mutex_lock(&ctx_lock);
    for (int k = 0; k < NET_TLS_KINDS; k++) {
        SSL_CTX_free(ctxs[k]);
        ctxs[k] = NULL;
    }
    pthread_mutex_unlock(&ctx_lock);
    setup_done = false;
}

bool net_tls_enabled(void)
{
    return setup_done;
}

/* ---- connections ---- */

thz_err net_tls_new(net_tls_kind kind, net_tls **out)
{
    net_tls *t = calloc(1, sizeof *t);
    if (!t) return THZ_ENOMEM;
    pthread_mutex_lock(&ctx_lock);
    t->ssl = ctxs[kind] ? SSL_new(ctxs[kind]) : NULL;
    pthread_mutex_unlock(&ctx_lock);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return THZ_ENOMEM;
    }
    /* an empty read BIO means "more later", not end of stream */
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_accept_state(t->ssl);
    *out = t;
    return THZ_OK;
}

void net_tls_free(net_tls *t)
{
    if (!t) return;
    SSL_free(t->ssl); /* frees the BIOs */
    free(t);
}

thz_err net_tls_input(net_tls *t, const uint8_t *p, size_t n, uint8_t *dst, size_t cap, size_t *got)
{
    *got = 0;
    /* SSL_get_error reads this thread's error queue: it must start clean */
    ERR_clear_error();
    if (n && BIO_write(t->rbio, p, (int)n) != (int)n) return THZ_ENOMEM;
    if (!SSL_is_init_finished(t->ssl)) {
        int r = SSL_do_handshake(t->ssl);
        if (r <= 0) {
            int e = SSL_get_error(t->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return THZ_OK;
            ssl_errstr(t->err, sizeof t->err, "handshake failed");
            return THZ_EPROTO;
        }
    }
    size_t g = 0;
    if (SSL_read_ex(t->ssl, dst, cap, &g) == 1) {
        *got = g;
        return THZ_OK;
    }
    int e = SSL_get_error(t->ssl, 0);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return THZ_OK;
    if (e == SSL_ERROR_ZERO_RETURN) return THZ_EAGAIN;
    ssl_errstr(t->err, sizeof t->err, "decryption failed");
    return THZ_EPROTO;
}

thz_err net_tls_seal(net_tls *t, thz_buf *buf)
{
    ERR_clear_error();
    if (buf->len) {
        if (!SSL_is_init_finished(t->ssl)) return THZ_EPROTO;
        size_t off = 0;
        while (off < buf->len) {
            size_t w = 0;
            if (SSL_write_ex(t->ssl, buf->p + off, buf->len - off, &w) != 1) {
                ssl_errstr(t->err, sizeof t->err, "encryption failed");
                return THZ_EIO;
            }
            off += w;
        }
    }
    size_t pend = BIO_ctrl_pending(t->wbio);
    buf->len = 0;
    if (!pend) return THZ_OK;
    if (thz_buf_reserve(buf, pend) != THZ_OK) return THZ_ENOMEM;
    int r = BIO_read(t->wbio, buf->p, (int)pend);
    if (r != (int)pend) return THZ_EIO;
    buf->len = pend;
    return THZ_OK;
}

bool net_tls_want_write(const net_tls *t)
{
    return BIO_ctrl_pending(t->wbio) > 0;
}

bool net_tls_established(const net_tls *t)
{
    return SSL_is_init_finished(t->ssl);
}

void net_tls_close_notify(net_tls *t)
{
    ERR_clear_error();
    if (SSL_is_init_finished(t->ssl)) SSL_shutdown(t->ssl);
    ERR_clear_error();
}

const char *net_tls_error(const net_tls *t)
{
    return t->err[0] ? t->err : "?";
}

const char *net_tls_version(const net_tls *t)
{
    return SSL_get_version(t->ssl);
}

const char *net_tls_alpn(const net_tls *t, char *out, size_t outlen)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    snprintf(out, outlen, "%.*s", (int)n, p ? (const char *)p : "");
    return out;
}

bool net_tls_peer_cert(const net_tls *t, uint8_t fp[32], char *subject, size_t sublen)
{
    X509 *x = SSL_get0_peer_certificate(t->ssl);
    if (subject && sublen) subject[0] = 0;
    if (!x) return false;
    unsigned n = 0;
    if (X509_digest(x, EVP_sha256(), fp, &n) != 1 || n != 32) {
        ERR_clear_error();
        return false;
    }
    if (subject && sublen) {
        char *z = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
        snprintf(subject, sublen, "%s", z ? z : "?");
        OPENSSL_free(z);
    }
    return true;
}
