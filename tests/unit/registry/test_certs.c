/* test_certs.c - unit tests for device certificates in the registry: the
 * tenant CA file, issuing and the [fast] lookup by fingerprint, the mirror
 * reloaded on reopen, revocation and its callback, device deletion, tenant
 * isolation and the per-device bound. Each test runs on a fresh data dir. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry/registry.h"

typedef struct fixture {
    char dir[64];
    registry *r;
    char err[REG_ERR_LEN];
} fixture;

static int fired;
static uint8_t fired_fp[REG_FP_LEN];

static void on_cert_revoke(int64_t tenant, const char *id, const uint8_t fp[REG_FP_LEN], void *ctx)
{
    (void)tenant, (void)id, (void)ctx;
    fired++;
    memcpy(fired_fp, fp, REG_FP_LEN);
}

static void open_reg(fixture *fx)
{
    assert_int_equal(reg_open(fx->dir, &fx->r, fx->err), THZ_OK);
    reg_on_cert_revoke(fx->r, on_cert_revoke, NULL);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    strcpy(fx->dir, "/tmp/thz_test_certs_XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    setenv("THINGHZ_ADMIN_EMAIL", "root@example.com", 1);
    setenv("THINGHZ_ADMIN_PASSWORD", "correct horse battery", 1);
    open_reg(fx);
    fired = 0;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    reg_close(fx->r);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx);
    return 0;
}

static void device(fixture *fx, int64_t tenant, const char *id)
{
    char text[256];
    snprintf(text, sizeof text, "{\"id\":\"%s\"}", id);
    cJSON *b = cJSON_Parse(text), *out = NULL;
    assert_int_equal(reg_device_create(fx->r, tenant, b, &out, fx->err), THZ_OK);
    cJSON_Delete(b);
    cJSON_Delete(out);
}

/* Issues a certificate for id; its fingerprint (hex and bytes). */
static void issue(fixture *fx, int64_t tenant, const char *id, char hex[65], uint8_t fp[32])
{
    cJSON *out = NULL;
    assert_int_equal(reg_cert_create(fx->r, tenant, id, NULL, &out, fx->err), THZ_OK);
    const char *f = cJSON_GetObjectItem(out, "fingerprint")->valuestring;
    assert_int_equal(strlen(f), 64);
    assert_non_null(
        strstr(cJSON_GetObjectItem(out, "private_key_pem")->valuestring, "PRIVATE KEY"));
    strcpy(hex, f);
    for (int i = 0; i < 32; i++) {
        unsigned v;
        sscanf(f + 2 * i, "%2x", &v);
        fp[i] = (uint8_t)v;
    }
    cJSON_Delete(out);
}

static void test_issue_auth_revoke(void **state)
{
    fixture *fx = *state;
    device(fx, 1, "d1");
    char hex[65];
    uint8_t fp[32];
    issue(fx, 1, "d1", hex, fp);
    char key[200];
    snprintf(key, sizeof key, "%s/tls/tenants/1/ca.key", fx->dir);
    struct stat st;
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    reg_identity id;
    char why[REG_ERR_LEN];
    assert_int_equal(reg_cert_auth(fx->r, fp, &id, why), THZ_OK);
    assert_string_equal(reg_dev_id(id.dev), "d1");
    assert_int_equal(id.tenant, 1);
    reg_dev_release(id.dev);

    /* the mirror comes back from the database */
    reg_close(fx->r);
    open_reg(fx);
    assert_int_equal(reg_cert_auth(fx->r, fp, &id, why), THZ_OK);
    reg_dev_release(id.dev);

    uint8_t other[32] = {1};
    assert_int_equal(reg_cert_auth(fx->r, other, &id, why), THZ_EBADAUTH);
    assert_non_null(strstr(why, "not bound"));

    assert_int_equal(reg_cert_revoke(fx->r, 1, "d1", hex), THZ_OK);
    assert_int_equal(fired, 1);
    assert_memory_equal(fired_fp, fp, 32);
    assert_int_equal(reg_cert_auth(fx->r, fp, &id, why), THZ_EBADAUTH);
    assert_non_null(strstr(why, "revoked"));
    assert_int_equal(reg_cert_revoke(fx->r, 1, "d1", hex), THZ_ENOTFOUND);

    cJSON *list = NULL;
    assert_int_equal(reg_cert_list(fx->r, 1, "d1", &list), THZ_OK);
    assert_int_equal(cJSON_GetArraySize(list), 1);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "status")->valuestring,
                        "revoked");
    assert_null(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "private_key_pem"));
    cJSON_Delete(list);
}

static void test_delete_isolation_bound(void **state)
{
    fixture *fx = *state;
    device(fx, 1, "d2");
    char hex[65];
    uint8_t fp[32];
    issue(fx, 1, "d2", hex, fp);
    /* another tenant neither sees nor revokes it */
    cJSON *b = cJSON_Parse("{\"name\":\"t2\",\"admin_email\":\"a@t2.io\","
                           "\"admin_password\":\"password123\"}"),
          *out = NULL;
    assert_int_equal(reg_tenant_create(fx->r, b, &out, fx->err), THZ_OK);
    int64_t t2 = (int64_t)cJSON_GetObjectItem(out, "id")->valuedouble;
    cJSON_Delete(b);
    cJSON_Delete(out);
    assert_int_equal(reg_cert_revoke(fx->r, t2, "d2", hex), THZ_ENOTFOUND);
    assert_int_equal(reg_cert_list(fx->r, t2, "d2", &out), THZ_ENOTFOUND);
    /* deleting the device and making it again does not revive the binding */
    assert_int_equal(reg_device_delete(fx->r, 1, "d2"), THZ_OK);
    device(fx, 1, "d2");
    reg_identity id;
    char why[REG_ERR_LEN];
    assert_int_equal(reg_cert_auth(fx->r, fp, &id, why), THZ_EBADAUTH);
    /* at most REG_CERTS_MAX active certificates per device */
    for (int i = 0; i < REG_CERTS_MAX; i++) issue(fx, 1, "d2", hex, fp);
    assert_int_equal(reg_cert_create(fx->r, 1, "d2", NULL, &out, fx->err), THZ_EQUOTA);
    /* a CA certificate cannot be bound as a device certificate */
    assert_int_equal(reg_ca_get(fx->r, 1, &out, fx->err), THZ_OK);
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "certificate_pem",
                            cJSON_GetObjectItem(out, "certificate_pem")->valuestring);
    cJSON_Delete(out);
    assert_int_equal(reg_cert_revoke(fx->r, 1, "d2", hex), THZ_OK);
    assert_int_equal(reg_cert_create(fx->r, 1, "d2", body, &out, fx->err), THZ_EINVAL);
    cJSON_Delete(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_issue_auth_revoke, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_isolation_bound, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
