/* test_pki.c - the shared X.509 helper: a self-signed CA and a leaf it
 * signs verify as a chain with the extensions asked for; PEM files and PEM
 * text round-trip; a missing file and a damaged one are told apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/fs.h"
#include "core/pki.h"

static const pki_cert_spec ca_spec = {
    .org = "thinghz", .cn = "test CA", .backdate_s = 300, .days = 30, .ca = true};
static const pki_cert_spec leaf_spec = {.cn = "dev-1",
                                        .backdate_s = 300,
                                        .days = 10,
                                        .usage = "critical,digitalSignature",
                                        .ext_use = "clientAuth",
                                        .san = "DNS:localhost"};

static void test_chain(void **state)
{
    EVP_PKEY *cak = pki_key_ec_p256(), *k = pki_key_ec_p256();
    assert_non_null(cak);
    assert_non_null(k);
    X509 *ca = pki_cert_make(&ca_spec, cak, NULL, cak);
    X509 *x = pki_cert_make(&leaf_spec, k, ca, cak);
    assert_non_null(ca);
    assert_non_null(x);
    assert_int_equal(X509_check_ca(ca), 1);
    assert_int_equal(X509_check_ca(x), 0);
    assert_int_equal(X509_verify(ca, cak), 1);
    assert_int_equal(X509_verify(x, cak), 1);
    assert_int_equal(X509_check_issued(ca, x), X509_V_OK);
    assert_int_equal(X509_check_purpose(x, X509_PURPOSE_SSL_CLIENT, 0), 1);
    assert_int_not_equal(X509_check_purpose(x, X509_PURPOSE_SSL_SERVER, 0), 1);
    assert_int_equal(X509_check_host(x, "localhost", 0, 0, NULL), 1);
    char *subj = X509_NAME_oneline(X509_get_subject_name(ca), NULL, 0);
    assert_string_equal(subj, "/O=thinghz/CN=test CA");
    OPENSSL_free(subj);
    subj = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
    assert_string_equal(subj, "/CN=dev-1");
    OPENSSL_free(subj);
    /* validity: backdated, and days ahead */
    time_t now = time(NULL), t = now - 200;
    assert_true(X509_cmp_time(X509_get0_notBefore(x), &t) < 0);
    t = now + 9 * 86400;
    assert_true(X509_cmp_time(X509_get0_notAfter(x), &t) > 0);
    t = now + 11 * 86400;
    assert_true(X509_cmp_time(X509_get0_notAfter(x), &t) < 0);
    /* two certificates never share a serial */
    X509 *y = pki_cert_make(&leaf_spec, k, ca, cak);
    assert_int_not_equal(ASN1_INTEGER_cmp(X509_get0_serialNumber(x), X509_get0_serialNumber(y)), 0);
    X509_free(y);
    X509_free(x);
    X509_free(ca);
    EVP_PKEY_free(k);
    EVP_PKEY_free(cak);
}

static void test_pem(void **state)
{
    char dir[64], path[128];
    snprintf(dir, sizeof dir, "/tmp/thz_test_pki_XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/a/b", dir);
    assert_int_equal(thz_mkdir_p(path, 0700), 0);
    assert_int_equal(thz_mkdir_p(path, 0700), 0); /* exists: fine */
    EVP_PKEY *k = pki_key_ec_p256();
    X509 *x = pki_cert_make(&ca_spec, k, NULL, k);
    snprintf(path, sizeof path, "%s/a/b/ca.pem", dir);
    assert_int_equal(pki_pem_write(path, 0600, k, x, x), THZ_OK);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    EVP_PKEY *k2;
    X509 *x2;
    assert_int_equal(pki_key_load(path, &k2), THZ_OK);
    assert_int_equal(pki_cert_load(path, &x2), THZ_OK);
    assert_int_equal(EVP_PKEY_eq(k, k2), 1);
    assert_int_equal(X509_cmp(x, x2), 0);
    EVP_PKEY_free(k2);
    X509_free(x2);
    char *z = pki_cert_pem(x), *kz = pki_key_pem(k);
    assert_non_null(strstr(z, "-----BEGIN CERTIFICATE-----"));
    assert_non_null(strstr(kz, "-----BEGIN PRIVATE KEY-----"));
    free(z);
    free(kz);
    snprintf(path, sizeof path, "%s/missing.pem", dir);
    assert_int_equal(pki_key_load(path, &k2), THZ_ENOTFOUND);
    assert_null(k2);
    snprintf(path, sizeof path, "%s/bad.pem", dir);
    FILE *f = fopen(path, "w");
    fputs("not a key\n", f);
    fclose(f);
    assert_int_equal(pki_cert_load(path, &x2), THZ_ECORRUPT);
    assert_null(x2);
    /* a leaf as files: the certificate carries its chain; the key matches */
    char cpath[128], kpath[128];
    snprintf(cpath, sizeof cpath, "%s/leaf.pem", dir);
    snprintf(kpath, sizeof kpath, "%s/leaf.key", dir);
    EVP_PKEY *lk = NULL;
    X509 *lx = NULL;
    assert_int_equal(pki_issue_files(&leaf_spec, x, k, cpath, kpath, &lk, &lx), THZ_OK);
    assert_int_equal(X509_verify(lx, k), 1);
    assert_int_equal(pki_key_load(kpath, &k2), THZ_OK);
    assert_int_equal(X509_check_private_key(lx, k2), 1);
    EVP_PKEY_free(k2);
    f = fopen(cpath, "r");
    X509 *c1 = PEM_read_X509(f, NULL, NULL, NULL), *c2 = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_int_equal(X509_cmp(c1, lx), 0);
    assert_int_equal(X509_cmp(c2, x), 0);
    X509_free(c1);
    X509_free(c2);
    /* the pair loads; a certificate that is not the key's does not */
    EVP_PKEY *pk;
    X509 *px;
    assert_int_equal(pki_pair_load(cpath, kpath, &pk, &px), THZ_OK);
    assert_int_equal(X509_cmp(px, lx), 0);
    EVP_PKEY_free(pk);
    X509_free(px);
    snprintf(path, sizeof path, "%s/a/b/ca.pem", dir);
    assert_int_equal(pki_pair_load(path, kpath, &pk, &px), THZ_ECORRUPT);
    assert_null(pk);
    assert_null(px);
    snprintf(path, sizeof path, "%s/none.key", dir);
    assert_int_equal(pki_pair_load(cpath, path, &pk, &px), THZ_ENOTFOUND);
    assert_null(px);
    X509_free(lx);
    EVP_PKEY_free(lk);
    /* a key that cannot be written leaves no certificate behind */
    snprintf(kpath, sizeof kpath, "%s/nodir/leaf.key", dir);
    snprintf(cpath, sizeof cpath, "%s/leaf2.pem", dir);
    lk = NULL;
    assert_int_equal(pki_issue_files(&leaf_spec, x, k, cpath, kpath, &lk, &lx), THZ_EIO);
    assert_null(lk);
    assert_int_not_equal(access(cpath, F_OK), 0);
    X509_free(x);
    EVP_PKEY_free(k);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_chain), cmocka_unit_test(test_pem)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
