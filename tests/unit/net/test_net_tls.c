/* test_net_tls.c - unit tests for net_tls: the development CA, a handshake
 * driven byte by byte against an OpenSSL client over memory BIOs (no
 * socket), ALPN, data both ways, TLS 1.0 refused, garbage refused, reload. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "core/config.h"
#include "net/net_tls.h"

static char dir[64];
static thz_config cfg;

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/thz_test_tls_XXXXXX");
    assert_non_null(mkdtemp(dir));
    config_defaults(&cfg);
    snprintf(cfg.data_dir, sizeof cfg.data_dir, "%s", dir);
    snprintf(cfg.mqtts_listen, sizeof cfg.mqtts_listen, "127.0.0.1:0");
    assert_int_equal(net_tls_setup(&cfg), THZ_OK);
    assert_true(net_tls_enabled());
    return 0;
}

static int teardown(void **state)
{
    net_tls_cleanup();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

/* A client SSL over memory BIOs trusting DATA_DIR/tls/ca.pem. */
typedef struct client {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *in, *out; /* in: what the server sent; out: what the client sends */
} client;

static void client_new(client *c, const char *alpn, size_t alpnlen, int maxver)
{
    char ca[128];
    snprintf(ca, sizeof ca, "%s/tls/ca.pem", dir);
    c->ctx = SSL_CTX_new(TLS_client_method());
    assert_int_equal(SSL_CTX_load_verify_locations(c->ctx, ca, NULL), 1);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    if (maxver) {
        SSL_CTX_set_min_proto_version(c->ctx, maxver);
        SSL_CTX_set_max_proto_version(c->ctx, maxver);
        SSL_CTX_set_security_level(c->ctx, 0);
        SSL_CTX_set_cipher_list(c->ctx, "DEFAULT@SECLEVEL=0");
    }
    c->ssl = SSL_new(c->ctx);
    c->in = BIO_new(BIO_s_mem());
    c->out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(c->in, -1);
    SSL_set_bio(c->ssl, c->in, c->out);
    SSL_set_connect_state(c->ssl);
    SSL_set1_host(c->ssl, "localhost");
    if (alpn) SSL_set_alpn_protos(c->ssl, (const unsigned char *)alpn, (unsigned)alpnlen);
}

static void client_free(client *c)
{
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
}

/* Moves bytes both ways until neither side has anything to say; returns the
 * last server status. Plaintext the server decrypted is appended to got. */
static thz_err pump(client *c, net_tls *t, thz_buf *got)
{
    thz_err rc = THZ_OK;
    for (int round = 0; round < 20; round++) {
        SSL_do_handshake(c->ssl);
        ERR_clear_error();
        uint8_t buf[65536];
        int n = BIO_read(c->out, buf, sizeof buf);
        uint8_t plain[65536];
        size_t k = 0;
        rc = net_tls_input(t, buf, n > 0 ? (size_t)n : 0, plain, sizeof plain, &k);
        while (rc == THZ_OK && k) {
            thz_buf_append(got, plain, k);
            rc = net_tls_input(t, NULL, 0, plain, sizeof plain, &k);
        }
        thz_buf out = {0};
        thz_err src = net_tls_seal(t, &out);
        assert_int_equal(src, THZ_OK);
        if (out.len) BIO_write(c->in, out.p, (int)out.len);
        bool quiet = n <= 0 && out.len == 0;
        thz_buf_free(&out);
        if (rc != THZ_OK || quiet) break;
    }
    return rc;
}

static void test_dev_ca_files(void **state)
{
    const char *names[] = {"ca.pem", "ca.key", "server.pem", "server.key"};
    for (int i = 0; i < 4; i++) {
        char p[128];
        snprintf(p, sizeof p, "%s/tls/%s", dir, names[i]);
        assert_int_equal(access(p, R_OK), 0);
    }
}

static void test_handshake_alpn_and_data(void **state)
{
    client c;
    client_new(&c, "\x04mqtt", 5, 0);
    net_tls *t = NULL;
    assert_int_equal(net_tls_new(NET_TLS_MQTT, &t), THZ_OK);
    thz_buf got = {0};
    assert_int_equal(pump(&c, t, &got), THZ_OK);
    assert_true(net_tls_established(t));
    assert_int_equal(SSL_get_verify_result(c.ssl), X509_V_OK); /* SAN localhost, our CA */
    char alpn[32];
    assert_string_equal(net_tls_alpn(t, alpn, sizeof alpn), "mqtt");
    assert_string_equal(net_tls_version(t), "TLSv1.3");
    /* client -> server */
    assert_int_equal(SSL_write(c.ssl, "\x10hello", 6), 6);
    assert_int_equal(pump(&c, t, &got), THZ_OK);
    assert_int_equal(got.len, 6);
    assert_memory_equal(got.p, "\x10hello", 6);
    /* server -> client, larger than a record */
    thz_buf out = {0};
    for (int i = 0; i < 40000; i++) thz_buf_append(&out, "x", 1);
    assert_int_equal(net_tls_seal(t, &out), THZ_OK);
    assert_true(out.len > 40000);
    BIO_write(c.in, out.p, (int)out.len);
    thz_buf_free(&out);
    size_t total = 0;
    char rb[16384];
    int r;
    while ((r = SSL_read(c.ssl, rb, sizeof rb)) > 0) total += (size_t)r;
    assert_int_equal(total, 40000);
    /* the peer's close_notify */
    SSL_shutdown(c.ssl);
    uint8_t buf[4096], plain[256];
    int n = BIO_read(c.out, buf, sizeof buf);
    size_t k;
    assert_int_equal(net_tls_input(t, buf, (size_t)n, plain, sizeof plain, &k), THZ_EAGAIN);
    thz_buf_free(&got);
    net_tls_free(t);
    client_free(&c);
}

static void test_https_alpn_and_no_alpn(void **state)
{
    client c;
    client_new(&c, "\x02h2\x08http/1.1", 12, 0);
    net_tls *t = NULL;
    assert_int_equal(net_tls_new(NET_TLS_HTTPS, &t), THZ_OK);
    thz_buf got = {0};
    assert_int_equal(pump(&c, t, &got), THZ_OK);
    char alpn[32];
    assert_string_equal(net_tls_alpn(t, alpn, sizeof alpn), "http/1.1");
    net_tls_free(t);
    client_free(&c);
    /* nothing in common: the handshake goes on without ALPN */
    client_new(&c, "\x04imap", 5, 0);
    assert_int_equal(net_tls_new(NET_TLS_MQTT, &t), THZ_OK);
    assert_int_equal(pump(&c, t, &got), THZ_OK);
    assert_true(net_tls_established(t));
    assert_string_equal(net_tls_alpn(t, alpn, sizeof alpn), "");
    thz_buf_free(&got);
    net_tls_free(t);
    client_free(&c);
}

static void test_tls10_and_garbage_refused(void **state)
{
    client c;
    client_new(&c, NULL, 0, TLS1_VERSION);
    net_tls *t = NULL;
    assert_int_equal(net_tls_new(NET_TLS_MQTT, &t), THZ_OK);
    thz_buf got = {0};
    assert_int_equal(pump(&c, t, &got), THZ_EPROTO);
    assert_false(net_tls_established(t));
    assert_non_null(strstr(net_tls_error(t), "unsupported protocol"));
    net_tls_free(t);
    client_free(&c);

    assert_int_equal(net_tls_new(NET_TLS_MQTT, &t), THZ_OK);
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    uint8_t plain[256];
    size_t k = 0;
    assert_int_equal(net_tls_input(t, (const uint8_t *)http, strlen(http), plain, sizeof plain, &k),
                     THZ_EPROTO);
    assert_int_equal(k, 0);
    /* plaintext output before a handshake is refused, never sent in clear */
    thz_buf out = {0};
    thz_buf_append(&out, "x", 1);
    assert_int_equal(net_tls_seal(t, &out), THZ_EPROTO);
    thz_buf_free(&out);
    thz_buf_free(&got);
    net_tls_free(t);
}

static void test_reload_keeps_the_ca_and_bad_files_keep_the_context(void **state)
{
    /* a second setup reuses the CA: clients keep their ca.pem */
    char p[128];
    snprintf(p, sizeof p, "%s/tls/ca.pem", dir);
    FILE *f = fopen(p, "r");
    char before[4096] = "", after[4096] = "";
    assert_true(fread(before, 1, sizeof before - 1, f) > 0);
    fclose(f);
    assert_int_equal(net_tls_reload(&cfg), THZ_OK);
    f = fopen(p, "r");
    assert_true(fread(after, 1, sizeof after - 1, f) > 0);
    fclose(f);
    assert_string_equal(before, after);
    /* missing files: an error, and the current context still serves */
    thz_config bad = cfg;
    snprintf(bad.tls_cert, sizeof bad.tls_cert, "%s/missing.pem", dir);
    snprintf(bad.tls_key, sizeof bad.tls_key, "%s/missing.key", dir);
    assert_int_not_equal(net_tls_reload(&bad), THZ_OK);
    client c;
    client_new(&c, NULL, 0, 0);
    net_tls *t = NULL;
    assert_int_equal(net_tls_new(NET_TLS_MQTT, &t), THZ_OK);
    thz_buf got = {0};
    assert_int_equal(pump(&c, t, &got), THZ_OK);
    assert_true(net_tls_established(t));
    net_tls_free(t);
    client_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dev_ca_files),
        cmocka_unit_test(test_handshake_alpn_and_data),
        cmocka_unit_test(test_https_alpn_and_no_alpn),
        cmocka_unit_test(test_tls10_and_garbage_refused),
        cmocka_unit_test(test_reload_keeps_the_ca_and_bad_files_keep_the_context),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
