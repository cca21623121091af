/* net_tls.h - TLS for the I/O threads: OpenSSL 3 over memory BIOs, so that
 * encryption is a byte transformation the protocol code (mqtt/conn.c,
 * http/server.c) applies between its socket and its parser, on its own loop,
 * with no extra thread and no blocking.
 *
 * Contexts: one server SSL_CTX per listener kind (MQTT: ALPN "mqtt";
 * HTTPS: ALPN "http/1.1"), built by net_tls_setup from the tls-* settings,
 * or from a development CA generated in DATA_DIR/tls when no certificate is
 * configured. net_tls_reload (SIGHUP) builds new contexts and swaps them in:
 * new connections use the new certificate, existing ones keep the context
 * they started with (each SSL holds a reference to its SSL_CTX).
 *
 * A net_tls belongs to one connection and is used by one thread at a time
 * (it may move with its connection to another thread). */
#ifndef THZ_NET_TLS_H
#define THZ_NET_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/err.h"

typedef enum net_tls_kind { NET_TLS_MQTT = 0, NET_TLS_HTTPS = 1, NET_TLS_KINDS } net_tls_kind;

/* How long a TLS handshake may take before the connection is closed (the
 * MQTT side also bounds it by connect-timeout). */
#define NET_TLS_HANDSHAKE_MS 10000

/* Builds the server contexts (main thread, before net_start) when a TLS
 * listener is configured: loads tls-cert/tls-key, or creates (first start) or
 * reuses the development CA in DATA_DIR/tls and a server certificate for
 * 127.0.0.1 and localhost signed by it, and says so in the log. cfg is read
 * during the call only. */
thz_err net_tls_setup(const thz_config *cfg);
/* Rebuilds the contexts from cfg (SIGHUP, main thread). On error the old
 * contexts stay and the error is logged. No-op when TLS is not set up. */
thz_err net_tls_reload(const thz_config *cfg);
/* Frees the contexts (after net_shutdown). */
void net_tls_cleanup(void);
/* True once net_tls_setup built the contexts. */
bool net_tls_enabled(void);

typedef struct net_tls net_tls;

/* A server-side TLS state for one accepted connection, from the current
 * context of kind. The caller owns *out and frees it with net_tls_free. */
thz_err net_tls_new(net_tls_kind kind, net_tls **out);
void net_tls_free(net_tls *t);

/* Feeds n bytes of ciphertext received from the peer (copied), runs the
 * handshake as far as they allow and decrypts into dst[0..cap): *got bytes of
 * plaintext (0: nothing more for now). Call with n = 0 again until *got is 0
 * to drain what is buffered. THZ_EPROTO: the peer is not speaking TLS or the
 * handshake failed (net_tls_error says why); the connection should close
 * after sending what net_tls_seal still yields (an alert). THZ_EAGAIN: the
 * peer closed TLS (close_notify). */
thz_err net_tls_input(net_tls *t, const uint8_t *p, size_t n, uint8_t *dst, size_t cap,
                      size_t *got);
/* Encrypts the plaintext in buf and replaces it with every byte of
 * ciphertext due to the peer (handshake records, tickets, alerts, then the
 * data), in order. buf may be empty. Plaintext before the handshake finished
 * is an error (THZ_EPROTO): the server never speaks first. */
thz_err net_tls_seal(net_tls *t, thz_buf *buf);
/* True while ciphertext is waiting for net_tls_seal (after input). */
bool net_tls_want_write(const net_tls *t);
/* True once the handshake completed. */
bool net_tls_established(const net_tls *t);
/* Queues a close_notify alert (sent by the next net_tls_seal). */
void net_tls_close_notify(net_tls *t);
/* The last failure's text (OpenSSL's reason), for logs; owned by t. */
const char *net_tls_error(const net_tls *t);
/* The negotiated protocol version ("TLSv1.3") and ALPN ("" for none). */
const char *net_tls_version(const net_tls *t);
const char *net_tls_alpn(const net_tls *t, char *out, size_t outlen);
/* The client certificate the peer presented (MQTT listener only, which asks
 * for one without requiring it): true and its SHA-256 fingerprint (of the
 * DER) in fp, and its subject ("/CN=...") in subject when not NULL; false
 * when it presented none. The handshake proved the peer holds its key; the
 * chain is judged by the caller (see reg_cert_auth). */
bool net_tls_peer_cert(const net_tls *t, uint8_t fp[32], char *subject, size_t sublen);

#endif
