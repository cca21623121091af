/* test_registry.c - unit tests for the registry: schema and reopen, the first
 * admin, login and tokens, devices and their MQTT credentials, tenant
 * isolation, listing, groups and the ACL, presence, backup and restore, and
 * input validation. Each test runs on a fresh data dir. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "registry/registry.h"

#define ADMIN    "root@example.com"
#define ADMIN_PW "correct horse battery"

typedef struct fixture {
    char dir[64];
    registry *r;
    char err[REG_ERR_LEN];
} fixture;

static int revokes;
static char revoked[REG_ID_MAX + 1];

static void on_revoke(int64_t tenant, const char *id, void *ctx)
{
    (void)tenant;
    (void)ctx;
    revokes++;
    snprintf(revoked, sizeof revoked, "%s", id);
}

static void rm_rf(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void open_reg(fixture *fx)
{
    fx->err[0] = '\0';
    thz_err e = reg_open(fx->dir, &fx->r, fx->err);
    if (e != THZ_OK) fprintf(stderr, "reg_open: %s\n", fx->err);
    assert_int_equal(e, THZ_OK);
    reg_on_revoke(fx->r, on_revoke, NULL);
}

static void reopen(fixture *fx)
{
    reg_close(fx->r);
    fx->r = NULL;
    open_reg(fx);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    strcpy(fx->dir, "/tmp/thz_test_reg_XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    setenv("THINGHZ_ADMIN_EMAIL", ADMIN, 1);
    setenv("THINGHZ_ADMIN_PASSWORD", ADMIN_PW, 1);
    open_reg(fx);
    revokes = 0;
    revoked[0] = '\0';
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    reg_close(fx->r);
    rm_rf(fx->dir);
    free(fx);
    return 0;
}

static cJSON *J(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    return j;
}

static const char *S(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double N(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

static thz_err login(fixture *fx, const char *email, const char *pw, char *token)
{
    char body[256];
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", email, pw);
    cJSON *b = J(body), *out = NULL;
    thz_err e = reg_login(fx->r, b, &out, fx->err);
    cJSON_Delete(b);
    if (e == THZ_OK) {
        assert_non_null(S(out, "token"));
        if (token) strcpy(token, S(out, "token"));
        assert_non_null(S(out, "expires_at"));
        cJSON_Delete(out);
    }
    return e;
}

static thz_err dev_create(fixture *fx, int64_t tenant, const char *body, char *secret)
{
    cJSON *b = J(body), *out = NULL;
    fx->err[0] = '\0';
    thz_err e = reg_device_create(fx->r, tenant, b, &out, fx->err);
    cJSON_Delete(b);
    if (e == THZ_OK) {
        assert_non_null(S(out, "secret"));
        if (secret) strcpy(secret, S(out, "secret"));
        cJSON_Delete(out);
    }
    return e;
}

static thz_err dev_update(fixture *fx, int64_t tenant, const char *id, const char *body)
{
    cJSON *b = J(body), *out = NULL;
    fx->err[0] = '\0';
    thz_err e = reg_device_update(fx->r, tenant, id, b, &out, fx->err);
    cJSON_Delete(b);
    cJSON_Delete(out);
    return e;
}

static thz_err group_create(fixture *fx, int64_t tenant, const char *body)
{
    cJSON *b = J(body), *out = NULL;
    fx->err[0] = '\0';
    thz_err e = reg_group_create(fx->r, tenant, b, &out, fx->err);
    cJSON_Delete(b);
    cJSON_Delete(out);
    return e;
}

static thz_err mqtt(fixture *fx, const char *user, const char *pw, reg_identity *id)
{
    memset(id, 0, sizeof *id);
    return reg_mqtt_auth(fx->r, user, (const uint8_t *)pw, strlen(pw), id);
}

/* ---------------------------------------------------------------- tests */

static void test_reopen_keeps_data_admin_once(void **state)
{
    fixture *fx = *state;
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"keep-me\",\"name\":\"K\"}", NULL), THZ_OK);
    /* A second start with other credentials creates no second admin. */
    setenv("THINGHZ_ADMIN_EMAIL", "other@example.com", 1);
    setenv("THINGHZ_ADMIN_PASSWORD", "another password", 1);
    reopen(fx);
    cJSON *out;
    assert_int_equal(reg_device_get(fx->r, 1, "keep-me", &out), THZ_OK);
    assert_string_equal(S(out, "name"), "K");
    cJSON_Delete(out);
    assert_int_equal(reg_user_list(fx->r, 1, &out), THZ_OK);
    assert_int_equal(cJSON_GetArraySize(out), 1);
    assert_string_equal(S(cJSON_GetArrayItem(out, 0), "email"), ADMIN);
    assert_string_equal(S(cJSON_GetArrayItem(out, 0), "role"), "admin");
    assert_null(cJSON_GetObjectItem(cJSON_GetArrayItem(out, 0), "password_hash"));
    cJSON_Delete(out);
    assert_int_equal(login(fx, ADMIN, ADMIN_PW, NULL), THZ_OK);
    assert_int_equal(login(fx, "other@example.com", "another password", NULL), THZ_EBADAUTH);
    assert_int_equal(reg_tenant_list(fx->r, &out), THZ_OK);
    assert_int_equal(cJSON_GetArraySize(out), 1);
    assert_int_equal((int)N(cJSON_GetArrayItem(out, 0), "id"), REG_DEFAULT_TENANT);
    assert_string_equal(S(cJSON_GetArrayItem(out, 0), "name"), "default");
    cJSON_Delete(out);
}

static void test_generated_admin_password(void **state)
{
    fixture *fx = *state;
    char dir[64];
    strcpy(dir, "/tmp/thz_test_reg_gen_XXXXXX");
    assert_non_null(mkdtemp(dir));
    unsetenv("THINGHZ_ADMIN_EMAIL");
    unsetenv("THINGHZ_ADMIN_PASSWORD");
    registry *r2;
    assert_int_equal(reg_open(dir, &r2, fx->err), THZ_OK);
    /* No default password: the obvious guesses are refused. */
    static const char *const guesses[] = {"admin", "password", "admin@localhost", ""};
    for (int i = 0; i < 4; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"email\":\"admin@localhost\",\"password\":\"%s\"}",
                 guesses[i]);
        cJSON *b = J(body), *out = NULL;
        thz_err e = reg_login(r2, b, &out, fx->err);
        assert_true(e == THZ_EBADAUTH || e == THZ_EINVAL);
        cJSON_Delete(b);
    }
    cJSON *users;
    assert_int_equal(reg_user_list(r2, 1, &users), THZ_OK);
    assert_string_equal(S(cJSON_GetArrayItem(users, 0), "email"), "admin@localhost");
    cJSON_Delete(users);
    /* A second daemon on the same data dir is refused. */
    registry *r3 = NULL;
    assert_int_not_equal(reg_open(dir, &r3, fx->err), THZ_OK);
    reg_close(r2);
    rm_rf(dir);
}

static void test_login(void **state)
{
    fixture *fx = *state;
    char tok[128];
    assert_int_equal(login(fx, ADMIN, ADMIN_PW, tok), THZ_OK);
    assert_memory_equal(tok, "thz_", 4);
    assert_int_equal(strlen(tok), 4 + 43);
    assert_int_equal(login(fx, "ROOT@example.com", ADMIN_PW, NULL), THZ_OK); /* case-insensitive */
    assert_int_equal(login(fx, ADMIN, "wrong password", NULL), THZ_EBADAUTH);
    assert_int_equal(login(fx, "nobody@example.com", ADMIN_PW, NULL), THZ_EBADAUTH);
    cJSON *b = J("{\"email\":\"" ADMIN "\"}"), *out;
    assert_int_equal(reg_login(fx->r, b, &out, fx->err), THZ_EINVAL);
    assert_non_null(strstr(fx->err, "'password'"));
    cJSON_Delete(b);
}

static void test_tokens(void **state)
{
    fixture *fx = *state;
    char tok[128];
    reg_principal p;
    assert_int_equal(login(fx, ADMIN, ADMIN_PW, tok), THZ_OK);
    assert_int_equal(reg_token_check(fx->r, tok, &p), THZ_OK);
    assert_int_equal(p.tenant, 1);
    assert_int_equal(p.role, REG_ADMIN);
    assert_true(p.superuser);
    tok[10] ^= 1;
    reg_principal q;
    assert_int_equal(reg_token_check(fx->r, tok, &q), THZ_EBADAUTH);
    assert_int_equal(reg_token_check(fx->r, "", &q), THZ_EBADAUTH);
    tok[10] ^= 1;

    cJSON *whoami;
    assert_int_equal(reg_whoami(fx->r, &p, &whoami), THZ_OK);
    assert_string_equal(S(cJSON_GetObjectItem(whoami, "user"), "email"), ADMIN);
    assert_string_equal(S(cJSON_GetObjectItem(whoami, "tenant"), "name"), "default");
    cJSON_Delete(whoami);

    /* An API token: shown once, listed without it, usable for MQTT. */
    cJSON *b = J("{\"name\":\"ci\",\"role\":\"operator\"}"), *out;
    assert_int_equal(reg_token_create(fx->r, &p, b, &out, fx->err), THZ_OK);
    cJSON_Delete(b);
    char api[128];
    strcpy(api, S(out, "token"));
    int64_t apiId = (int64_t)N(out, "id");
    cJSON_Delete(out);
    reg_principal pa;
    assert_int_equal(reg_token_check(fx->r, api, &pa), THZ_OK);
    assert_int_equal(pa.role, REG_OPERATOR);
    assert_false(pa.superuser);
    reg_identity id;
    assert_int_equal(mqtt(fx, "anyone", api, &id), THZ_OK);
    assert_null(id.dev);
    assert_int_equal(id.role, REG_OPERATOR);
    assert_int_equal(reg_token_list(fx->r, &p, &out), THZ_OK);
    assert_int_equal(cJSON_GetArraySize(out), 1);
    assert_null(cJSON_GetObjectItem(cJSON_GetArrayItem(out, 0), "token"));
    assert_non_null(S(cJSON_GetArrayItem(out, 0), "last_used_at"));
    cJSON_Delete(out);

    /* An operator may not mint an admin token. */
    b = J("{\"name\":\"up\",\"role\":\"admin\"}");
    assert_int_equal(reg_token_create(fx->r, &pa, b, &out, fx->err), THZ_EDENIED);
    cJSON_Delete(b);

    /* Expiry. */
    b = J("{\"name\":\"short\",\"expires_in_s\":1}");
    assert_int_equal(reg_token_create(fx->r, &p, b, &out, fx->err), THZ_OK);
    cJSON_Delete(b);
    char shortTok[128];
    strcpy(shortTok, S(out, "token"));
    cJSON_Delete(out);
    assert_int_equal(reg_token_check(fx->r, shortTok, &q), THZ_OK);
    usleep(1100 * 1000);
    assert_int_equal(reg_token_check(fx->r, shortTok, &q), THZ_EBADAUTH);
    b = J("{\"name\":\"bad\",\"expires_in_s\":-5}");
    assert_int_equal(reg_token_create(fx->r, &p, b, &out, fx->err), THZ_EINVAL);
    assert_non_null(strstr(fx->err, "'expires_in_s'"));
    cJSON_Delete(b);

    /* Revoke, and it stays revoked after a restart. */
    assert_int_equal(reg_token_revoke(fx->r, &p, apiId), THZ_OK);
    assert_int_equal(reg_token_check(fx->r, api, &q), THZ_EBADAUTH);
    assert_int_equal(mqtt(fx, "anyone", api, &id), THZ_EBADAUTH);
    assert_int_equal(reg_token_revoke(fx->r, &p, apiId), THZ_ENOTFOUND);

    /* Logout. */
    reopen(fx);
    assert_int_equal(reg_token_check(fx->r, api, &q), THZ_EBADAUTH);
    assert_int_equal(reg_token_check(fx->r, tok, &q), THZ_OK); /* sessions survive a restart */
    assert_int_equal(reg_logout(fx->r, &p), THZ_OK);
    assert_int_equal(reg_token_check(fx->r, tok, &q), THZ_EBADAUTH);
}

static void test_users(void **state)
{
    fixture *fx = *state;
    cJSON *b = J("{\"email\":\"v@example.com\",\"password\":\"viewerpass\",\"role\":\"viewer\"}");
    cJSON *out;
    assert_int_equal(reg_user_create(fx->r, 1, b, &out, fx->err), THZ_OK);
    int64_t uid = (int64_t)N(out, "id");
    assert_null(cJSON_GetObjectItem(out, "password"));
    assert_null(cJSON_GetObjectItem(out, "password_hash"));
    cJSON_Delete(out);
    assert_int_equal(reg_user_create(fx->r, 1, b, &out, fx->err), THZ_EEXIST);
    cJSON_Delete(b);
    char tok[128];
    reg_principal p;
    assert_int_equal(login(fx, "v@example.com", "viewerpass", tok), THZ_OK);
    assert_int_equal(reg_token_check(fx->r, tok, &p), THZ_OK);
    assert_int_equal(p.role, REG_VIEWER);
    assert_false(p.superuser);
    /* Disabling revokes the sessions and refuses logins. */
    b = J("{\"disabled\":true}");
    assert_int_equal(reg_user_update(fx->r, 1, uid, b, &out, fx->err), THZ_OK);
    cJSON_Delete(out);
    cJSON_Delete(b);
    assert_int_equal(reg_token_check(fx->r, tok, &p), THZ_EBADAUTH);
    assert_int_equal(login(fx, "v@example.com", "viewerpass", NULL), THZ_EBADAUTH);
    b = J("{\"disabled\":false,\"password\":\"newviewerpass\"}");
    assert_int_equal(reg_user_update(fx->r, 1, uid, b, &out, fx->err), THZ_OK);
    cJSON_Delete(out);
    cJSON_Delete(b);
    assert_int_equal(login(fx, "v@example.com", "viewerpass", NULL), THZ_EBADAUTH);
    assert_int_equal(login(fx, "v@example.com", "newviewerpass", NULL), THZ_OK);
    /* Another tenant's user is not found. */
    b = J("{\"role\":\"admin\"}");
    assert_int_equal(reg_user_update(fx->r, 2, uid, b, &out, fx->err), THZ_ENOTFOUND);
    cJSON_Delete(b);
    assert_int_equal(reg_user_delete(fx->r, 2, uid), THZ_ENOTFOUND);
    assert_int_equal(reg_user_delete(fx->r, 1, uid), THZ_OK);
    assert_int_equal(login(fx, "v@example.com", "newviewerpass", NULL), THZ_EBADAUTH);
}

static void test_device_credentials(void **state)
{
    fixture *fx = *state;
    char secret[128];
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"sensor-1\"}", secret), THZ_OK);
    assert_int_equal(strlen(secret), 43);
    reg_identity id;
    assert_int_equal(mqtt(fx, "sensor-1", secret, &id), THZ_OK);
    assert_non_null(id.dev);
    assert_int_equal(id.tenant, 1);
    assert_string_equal(reg_dev_id(id.dev), "sensor-1");
    assert_int_equal(reg_dev_tenant(id.dev), 1);
    reg_dev_release(id.dev);
    assert_int_equal(mqtt(fx, "sensor-1", "not the secret", &id), THZ_EBADAUTH);
    assert_int_equal(mqtt(fx, "sensor-2", secret, &id), THZ_EBADAUTH);
    assert_int_equal(mqtt(fx, NULL, secret, &id), THZ_EBADAUTH);

    /* Rotate: the old secret stops at once, the new one works. */
    cJSON *out;
    assert_int_equal(reg_device_rotate(fx->r, 1, "sensor-1", &out), THZ_OK);
    char fresh[128];
    strcpy(fresh, S(out, "secret"));
    cJSON_Delete(out);
    assert_int_equal(revokes, 1);
    assert_string_equal(revoked, "sensor-1");
    assert_int_equal(mqtt(fx, "sensor-1", secret, &id), THZ_EBADAUTH);
    assert_int_equal(mqtt(fx, "sensor-1", fresh, &id), THZ_OK);
    reg_dev *held = id.dev; /* the broker holds it across the deletion below */

    /* Disabled: refused, and revoked. */
    assert_int_equal(dev_update(fx, 1, "sensor-1", "{\"enabled\":false}"), THZ_OK);
    assert_int_equal(revokes, 2);
    assert_int_equal(mqtt(fx, "sensor-1", fresh, &id), THZ_EBADAUTH);
    assert_false(reg_dev_can_publish(fx->r, held, "devices/sensor-1/x"));
    assert_int_equal(dev_update(fx, 1, "sensor-1", "{\"enabled\":true}"), THZ_OK);
    assert_int_equal(revokes, 2);
    /* The secret survives a restart (only its hash is stored). */
    reg_dev_release(held);
    reopen(fx);
    assert_int_equal(mqtt(fx, "sensor-1", fresh, &id), THZ_OK);
    held = id.dev;
    assert_true(reg_dev_can_publish(fx->r, held, "devices/sensor-1/x"));

    assert_int_equal(reg_device_delete(fx->r, 1, "sensor-1"), THZ_OK);
    assert_int_equal(revokes, 3);
    assert_string_equal(revoked, "sensor-1");
    assert_int_equal(mqtt(fx, "sensor-1", fresh, &id), THZ_EBADAUTH);
    assert_int_equal(reg_device_get(fx->r, 1, "sensor-1", &out), THZ_ENOTFOUND);
    assert_int_equal(reg_device_delete(fx->r, 1, "sensor-1"), THZ_ENOTFOUND);
    /* Still valid memory: */
    assert_string_equal(reg_dev_id(held), "sensor-1");
    assert_false(reg_dev_can_publish(fx->r, held, "devices/sensor-1/x"));
    reg_presence_count(held, 1, 1, 1, 1);
    reg_dev_release(held);
}

static void test_tenant_isolation(void **state)
{
    fixture *fx = *state;
    cJSON *b = J("{\"name\":\"acme\",\"admin_email\":\"boss@acme.test\","
                 "\"admin_password\":\"acme secret\"}");
    cJSON *out;
    assert_int_equal(reg_tenant_create(fx->r, b, &out, fx->err), THZ_OK);
    int64_t t2 = (int64_t)N(out, "id");
    assert_int_equal(t2, 2);
    cJSON_Delete(out);
    assert_int_equal(reg_tenant_create(fx->r, b, &out, fx->err), THZ_EEXIST);
    cJSON_Delete(b);

    char secret[128], tok[128];
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"shared-id\",\"name\":\"one\"}", secret), THZ_OK);
    assert_int_equal(reg_device_get(fx->r, t2, "shared-id", &out), THZ_ENOTFOUND);
    assert_int_equal(dev_update(fx, t2, "shared-id", "{\"name\":\"x\"}"), THZ_ENOTFOUND);
    assert_int_equal(reg_device_rotate(fx->r, t2, "shared-id", &out), THZ_ENOTFOUND);
    assert_int_equal(reg_device_delete(fx->r, t2, "shared-id"), THZ_ENOTFOUND);
    /* The same id is free in tenant 2. */
    assert_int_equal(dev_create(fx, t2, "{\"id\":\"shared-id\",\"name\":\"two\"}", NULL), THZ_OK);
    assert_int_equal(reg_device_get(fx->r, 1, "shared-id", &out), THZ_OK);
    assert_string_equal(S(out, "name"), "one");
    cJSON_Delete(out);
    assert_int_equal(reg_device_list(fx->r, t2, NULL, NULL, -1, 100, NULL, &out, fx->err), THZ_OK);
    cJSON *items = cJSON_GetObjectItem(out, "items");
    assert_int_equal(cJSON_GetArraySize(items), 1);
    assert_string_equal(S(cJSON_GetArrayItem(items, 0), "name"), "two");
    cJSON_Delete(out);
    /* Groups too. */
    assert_int_equal(group_create(fx, 1, "{\"id\":\"g\"}"), THZ_OK);
    assert_int_equal(reg_group_get(fx->r, t2, "g", &out), THZ_ENOTFOUND);
    assert_int_equal(reg_group_add(fx->r, t2, "g", "shared-id"), THZ_ENOTFOUND);
    assert_int_equal(reg_group_delete(fx->r, t2, "g"), THZ_ENOTFOUND);

    /* The tenant's admin logs in to tenant 2, not superuser. */
    reg_principal p;
    assert_int_equal(login(fx, "boss@acme.test", "acme secret", tok), THZ_OK);
    assert_int_equal(reg_token_check(fx->r, tok, &p), THZ_OK);
    assert_int_equal(p.tenant, t2);
    assert_int_equal(p.role, REG_ADMIN);
    assert_false(p.superuser);
    /* Emails are unique across tenants. */
    b = J("{\"email\":\"" ADMIN "\",\"password\":\"whatever1\",\"role\":\"viewer\"}");
    assert_int_equal(reg_user_create(fx->r, t2, b, &out, fx->err), THZ_EEXIST);
    cJSON_Delete(b);
    /* Unknown tenant. */
    assert_int_equal(dev_create(fx, 99, "{\"id\":\"x\"}", NULL), THZ_ENOTFOUND);
}

/* Collects every id of a listing, following the cursor. */
static int list_all(fixture *fx, const char *tag, const char *group, int online, int limit,
                    char ids[][16], int max)
{
    int n = 0;
    char cursor[REG_ID_MAX + 1] = "";
    for (int pages = 0; pages < 100; pages++) {
        cJSON *out;
        assert_int_equal(reg_device_list(fx->r, 1, tag, group, online, limit,
                                         cursor[0] ? cursor : NULL, &out, fx->err),
                         THZ_OK);
        cJSON *items = cJSON_GetObjectItem(out, "items"), *it;
        assert_true(cJSON_GetArraySize(items) <= limit);
        cJSON_ArrayForEach(it, items)
        {
            assert_true(n < max);
            strcpy(ids[n++], S(it, "id"));
        }
        const char *next = S(out, "next_cursor");
        if (next == NULL) {
            assert_true(cJSON_IsNull(cJSON_GetObjectItem(out, "next_cursor")));
            cJSON_Delete(out);
            return n;
        }
        assert_string_equal(next, ids[n - 1]);
        strcpy(cursor, next);
        cJSON_Delete(out);
    }
    fail_msg("the cursor never ended");
    return n;
}

static void test_list(void **state)
{
    fixture *fx = *state;
    /* Created out of order; listed in id order. */
    for (int k = 0; k < 25; k++) {
        int i = (k * 7) % 25;
        char body[128];
        snprintf(body, sizeof body, "{\"id\":\"d%02d\",\"tags\":{\"parity\":\"%s\"%s}}", i,
                 i % 2 ? "odd" : "even", i % 5 == 0 ? ",\"five\":\"yes\"" : "");
        assert_int_equal(dev_create(fx, 1, body, NULL), THZ_OK);
    }
    char ids[64][16];
    int n = list_all(fx, NULL, NULL, -1, 10, ids, 64);
    assert_int_equal(n, 25);
    for (int i = 0; i < 25; i++) {
        char want[16];
        snprintf(want, sizeof want, "d%02d", i);
        assert_string_equal(ids[i], want);
    }
    /* Exactly one page: no cursor. */
    assert_int_equal(list_all(fx, NULL, NULL, -1, 25, ids, 64), 25);
    assert_int_equal(list_all(fx, "parity=even", NULL, -1, 4, ids, 64), 13);
    for (int i = 0; i < 13; i++) assert_int_equal(atoi(ids[i] + 1) % 2, 0);
    assert_int_equal(list_all(fx, "parity=odd", NULL, -1, 1000, ids, 64), 12);
    assert_int_equal(list_all(fx, "five", NULL, -1, 2, ids, 64), 5);
    assert_int_equal(list_all(fx, "five=no", NULL, -1, 2, ids, 64), 0);
    assert_int_equal(list_all(fx, "nope", NULL, -1, 2, ids, 64), 0);

    /* Online filter. */
    char secret[128];
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"live\"}", secret), THZ_OK);
    reg_identity id;
    assert_int_equal(mqtt(fx, "live", secret, &id), THZ_OK);
    reg_conn_info ci = {"cid", "10.0.0.1:5555", 5, 30};
    uint64_t v = reg_presence_connect(fx->r, id.dev, &ci);
    assert_int_equal(list_all(fx, NULL, NULL, 1, 10, ids, 64), 1);
    assert_string_equal(ids[0], "live");
    assert_int_equal(list_all(fx, NULL, NULL, 0, 10, ids, 64), 25);
    cJSON *out;
    assert_int_equal(reg_fleet_summary(fx->r, 1, &out), THZ_OK);
    assert_int_equal((int)N(out, "devices"), 26);
    assert_int_equal((int)N(out, "online"), 1);
    assert_int_equal((int)N(out, "offline"), 25);
    N(out, "messages_in_per_s");
    N(out, "messages_out_per_s");
    cJSON_Delete(out);
    reg_presence_disconnect(fx->r, id.dev, v, "normal");
    reg_dev_release(id.dev);
    assert_int_equal(list_all(fx, NULL, NULL, 1, 10, ids, 64), 0);

    /* Parameters. */
    assert_int_equal(reg_device_list(fx->r, 1, NULL, NULL, -1, 0, NULL, &out, fx->err), THZ_EINVAL);
    assert_non_null(strstr(fx->err, "'limit'"));
    assert_int_equal(reg_device_list(fx->r, 1, NULL, NULL, -1, 1001, NULL, &out, fx->err),
                     THZ_EINVAL);
    assert_int_equal(reg_device_list(fx->r, 1, "=x", NULL, -1, 10, NULL, &out, fx->err),
                     THZ_EINVAL);
    assert_non_null(strstr(fx->err, "'tag'"));
    assert_int_equal(reg_device_list(fx->r, 1, "", NULL, -1, 10, NULL, &out, fx->err), THZ_EINVAL);
    assert_int_equal(reg_device_list(fx->r, 1, NULL, "bad group", -1, 10, NULL, &out, fx->err),
                     THZ_EINVAL);
}

static void test_groups_acl(void **state)
{
    fixture *fx = *state;
    char secret[128];
    assert_int_equal(
        dev_create(fx, 1, "{\"id\":\"s1\",\"tags\":{\"site\":\"a\",\"kind\":\"t\"}}", secret),
        THZ_OK);
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"s2\",\"tags\":{\"site\":\"b\"}}", NULL), THZ_OK);
    assert_int_equal(group_create(fx, 1,
                                  "{\"id\":\"site-a\",\"query\":{\"site\":\"a\"},"
                                  "\"policy\":{\"publish\":[\"sites/a/${device}/#\"],"
                                  "\"subscribe\":[\"sites/a/#\"]}}"),
                     THZ_OK);
    assert_int_equal(group_create(fx, 1, "{\"id\":\"site-a\"}"), THZ_EEXIST);
    assert_int_equal(group_create(fx, 1, "{\"id\":\"static\",\"policy\":{\"publish\":[\"st/#\"]}}"),
                     THZ_OK);
    /* An empty query is no dynamic membership. */
    assert_int_equal(group_create(fx, 1,
                                  "{\"id\":\"all\",\"query\":{},"
                                  "\"policy\":{\"publish\":[\"#\"]}}"),
                     THZ_OK);
    reg_identity id;
    assert_int_equal(mqtt(fx, "s1", secret, &id), THZ_OK);
    reg_dev *d = id.dev;
    registry *r = fx->r;

    assert_true(reg_dev_can_publish(r, d, "devices/s1/telemetry"));
    assert_true(reg_dev_can_publish(r, d, "devices/s1"));
    assert_true(reg_dev_can_publish(r, d, "$aws/things/s1/shadow/update"));
    assert_true(reg_dev_can_subscribe(r, d, "devices/s1/cmd/+"));
    assert_false(reg_dev_can_publish(r, d, "devices/s2/telemetry"));
    assert_false(reg_dev_can_subscribe(r, d, "devices/+/telemetry"));
    assert_false(reg_dev_can_subscribe(r, d, "#"));
    /* Dynamic membership by tag, with ${device}. */
    assert_true(reg_dev_can_publish(r, d, "sites/a/s1/temp"));
    assert_false(reg_dev_can_publish(r, d, "sites/a/s2/temp"));
    assert_true(reg_dev_can_subscribe(r, d, "sites/a/+/temp"));
    assert_false(reg_dev_can_subscribe(r, d, "sites/#"));
    assert_false(reg_dev_can_publish(r, d, "st/x"));
    char ids[8][16];
    assert_int_equal(list_all(fx, NULL, "site-a", -1, 10, ids, 8), 1);
    assert_string_equal(ids[0], "s1");

    /* Tags change: membership follows. */
    assert_int_equal(dev_update(fx, 1, "s1", "{\"tags\":{\"site\":\"b\"}}"), THZ_OK);
    assert_false(reg_dev_can_publish(r, d, "sites/a/s1/temp"));
    assert_int_equal(list_all(fx, NULL, "site-a", -1, 10, ids, 8), 0);

    /* Static membership. */
    assert_int_equal(reg_group_add(r, 1, "static", "s1"), THZ_OK);
    assert_int_equal(reg_group_add(r, 1, "static", "s1"), THZ_EEXIST);
    assert_int_equal(reg_group_add(r, 1, "nope", "s1"), THZ_ENOTFOUND);
    assert_int_equal(reg_group_add(r, 1, "static", "nope"), THZ_ENOTFOUND);
    assert_true(reg_dev_can_publish(r, d, "st/x"));
    cJSON *out;
    assert_int_equal(reg_group_get(r, 1, "static", &out), THZ_OK);
    cJSON *devs = cJSON_GetObjectItem(out, "devices");
    assert_int_equal(cJSON_GetArraySize(devs), 1);
    assert_string_equal(cJSON_GetArrayItem(devs, 0)->valuestring, "s1");
    cJSON_Delete(out);
    assert_int_equal(reg_device_get(r, 1, "s1", &out), THZ_OK);
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(out, "groups"), 0)->valuestring,
                        "static");
    cJSON_Delete(out);
    /* It survives a restart (the broker's reference outlives the old mirror). */
    reopen(fx);
    r = fx->r;
    reg_dev_release(d);
    assert_int_equal(mqtt(fx, "s1", secret, &id), THZ_OK);
    d = id.dev;
    assert_true(reg_dev_can_publish(r, d, "st/x"));
    assert_int_equal(reg_group_remove(r, 1, "static", "s1"), THZ_OK);
    assert_int_equal(reg_group_remove(r, 1, "static", "s1"), THZ_ENOTFOUND);
    assert_false(reg_dev_can_publish(r, d, "st/x"));
    /* Set through the device, then the group goes away. */
    assert_int_equal(dev_update(fx, 1, "s1", "{\"groups\":[\"static\"]}"), THZ_OK);
    assert_true(reg_dev_can_publish(r, d, "st/x"));
    assert_int_equal(reg_group_delete(r, 1, "static"), THZ_OK);
    assert_false(reg_dev_can_publish(r, d, "st/x"));
    assert_int_equal(reg_device_get(r, 1, "s1", &out), THZ_OK);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(out, "groups")), 0);
    cJSON_Delete(out);
    /* Group update replaces the policy. */
    cJSON *b = J("{\"query\":{\"site\":\"b\"},\"policy\":{\"publish\":[\"b/${device}\"]}}");
    assert_int_equal(reg_group_update(r, 1, "site-a", b, &out, fx->err), THZ_OK);
    cJSON_Delete(b);
    cJSON_Delete(out);
    assert_true(reg_dev_can_publish(r, d, "b/s1"));
    assert_false(reg_dev_can_subscribe(r, d, "sites/a/+/temp"));
    assert_int_equal(reg_group_list(r, 1, &out), THZ_OK);
    assert_int_equal(cJSON_GetArraySize(out), 2);
    cJSON_Delete(out);
    reg_dev_release(d);
}

static void test_presence(void **state)
{
    fixture *fx = *state;
    char secret[128];
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"p1\"}", secret), THZ_OK);
    cJSON *out;
    assert_int_equal(reg_device_get(fx->r, 1, "p1", &out), THZ_OK);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(out, "online")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(out, "last_seen")));
    cJSON_Delete(out);

    reg_identity id;
    assert_int_equal(mqtt(fx, "p1", secret, &id), THZ_OK);
    reg_conn_info ci = {"cid", "192.0.2.7:40000", 4, 60};
    uint64_t v1 = reg_presence_connect(fx->r, id.dev, &ci);
    assert_true(v1 >= 1);
    reg_presence_count(id.dev, 3, 300, 2, 20);
    assert_int_equal(reg_device_get(fx->r, 1, "p1", &out), THZ_OK);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(out, "online")));
    assert_string_equal(S(out, "client_address"), "192.0.2.7:40000");
    assert_int_equal((int)N(out, "protocol_version"), 4);
    assert_int_equal((int)N(out, "keep_alive"), 60);
    assert_int_equal((int)N(out, "messages_in"), 3);
    assert_int_equal((int)N(out, "bytes_out_total"), 20);
    const char *cs = S(out, "connected_since");
    assert_non_null(cs);
    assert_int_equal(strlen(cs), 24); /* 2026-11-26T19:00:00.123Z */
    assert_int_equal(cs[23], 'Z');
    assert_int_equal(cs[19], '.');
    cJSON_Delete(out);

    /* A takeover: the new connection comes before the old one closes. */
    uint64_t v2 = reg_presence_connect(fx->r, id.dev, &ci);
    assert_true(v2 > v1);
    assert_int_equal(reg_presence_disconnect(fx->r, id.dev, v1, "taken over"), 0);
    assert_int_equal(reg_device_get(fx->r, 1, "p1", &out), THZ_OK);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(out, "online")));
    assert_int_equal((int)N(out, "messages_in"), 0);       /* since this connect */
    assert_int_equal((int)N(out, "messages_in_total"), 3); /* all along */
    cJSON_Delete(out);
    reg_presence_count(id.dev, 1, 10, 0, 0);
    uint64_t v3 = reg_presence_disconnect(fx->r, id.dev, v2, "keep alive timeout");
    assert_true(v3 > v2);
    assert_int_equal(reg_device_get(fx->r, 1, "p1", &out), THZ_OK);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(out, "online")));
    assert_non_null(S(out, "last_seen"));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(out, "connected_since")));
    assert_string_equal(S(out, "last_disconnect_reason"), "keep alive timeout");
    cJSON_Delete(out);
    reg_dev_release(id.dev);

    /* Versions and totals survive a restart. */
    reopen(fx);
    assert_int_equal(reg_device_get(fx->r, 1, "p1", &out), THZ_OK);
    assert_int_equal((int)N(out, "messages_in_total"), 4);
    assert_int_equal((int)N(out, "bytes_in_total"), 310);
    assert_string_equal(S(out, "last_disconnect_reason"), "keep alive timeout");
    assert_non_null(S(out, "last_seen"));
    cJSON_Delete(out);
    assert_int_equal(mqtt(fx, "p1", secret, &id), THZ_OK);
    uint64_t v4 = reg_presence_connect(fx->r, id.dev, &ci);
    assert_true(v4 > v3);
    reg_dev_release(id.dev);
}

static void test_backup_restore(void **state)
{
    fixture *fx = *state;
    char secret[128];
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"b1\",\"tags\":{\"k\":\"v\"}}", secret), THZ_OK);
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"b2\"}", NULL), THZ_OK);
    char bk[128], bk2[128], dd[128];
    snprintf(bk, sizeof bk, "%s/backups/one", fx->dir);
    snprintf(bk2, sizeof bk2, "%s/backups/two", fx->dir);
    snprintf(dd, sizeof dd, "%s/restored", fx->dir);
    assert_int_equal(reg_backup(fx->r, bk, fx->err), THZ_OK);
    /* Changes after the backup are not in it. */
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"b3\"}", NULL), THZ_OK);
    /* Restore into a data dir a daemon holds is refused. */
    assert_int_equal(reg_restore_offline(fx->dir, bk, fx->err), THZ_EDENIED);

    assert_int_equal(reg_restore_offline(dd, bk, fx->err), THZ_OK);
    registry *r2;
    assert_int_equal(reg_open(dd, &r2, fx->err), THZ_OK);
    cJSON *out;
    assert_int_equal(reg_device_list(r2, 1, NULL, NULL, -1, 100, NULL, &out, fx->err), THZ_OK);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(out, "items")), 2);
    cJSON_Delete(out);
    assert_int_equal(reg_device_get(r2, 1, "b1", &out), THZ_OK);
    assert_string_equal(S(cJSON_GetObjectItem(out, "tags"), "k"), "v");
    cJSON_Delete(out);
    reg_identity id;
    assert_int_equal(reg_mqtt_auth(r2, "b1", (const uint8_t *)secret, strlen(secret), &id), THZ_OK);
    reg_dev_release(id.dev);
    reg_close(r2);

    /* Offline backup of a stopped daemon. */
    reg_close(fx->r);
    fx->r = NULL;
    assert_int_equal(reg_backup_offline(fx->dir, bk2, fx->err), THZ_OK);
    assert_int_equal(reg_restore_offline(dd, bk2, fx->err), THZ_OK);
    assert_int_equal(reg_open(dd, &r2, fx->err), THZ_OK);
    assert_int_equal(reg_device_get(r2, 1, "b3", &out), THZ_OK);
    cJSON_Delete(out);
    reg_close(r2);
    /* Nothing to restore from. */
    snprintf(bk2, sizeof bk2, "%s/empty", fx->dir);
    assert_int_not_equal(reg_restore_offline(dd, bk2, fx->err), THZ_OK);
    open_reg(fx);
}

static void expect_dev_einval(fixture *fx, const char *body, const char *field)
{
    assert_int_equal(dev_create(fx, 1, body, NULL), THZ_EINVAL);
    if (strstr(fx->err, field) == NULL) fail_msg("err '%s' does not name %s", fx->err, field);
}

static void test_validation(void **state)
{
    fixture *fx = *state;
    char body[20000];
    expect_dev_einval(fx, "{}", "'id'");
    expect_dev_einval(fx, "{\"id\":\"\"}", "'id'");
    expect_dev_einval(fx, "{\"id\":\"a b\"}", "'id'");
    expect_dev_einval(fx, "{\"id\":\"a/b\"}", "'id'");
    expect_dev_einval(fx, "{\"id\":7}", "'id'");
    assert_string_equal(fx->err,
                        "field 'id' must be a string of 1..128 characters [A-Za-z0-9_.:-]");
    char id[200];
    memset(id, 'x', 129);
    id[129] = '\0';
    snprintf(body, sizeof body, "{\"id\":\"%s\"}", id);
    expect_dev_einval(fx, body, "'id'");
    id[128] = '\0';
    snprintf(body, sizeof body, "{\"id\":\"%s\"}", id);
    assert_int_equal(dev_create(fx, 1, body, NULL), THZ_OK);
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"ok_.:-9\"}", NULL), THZ_OK);
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"ok_.:-9\"}", NULL), THZ_EEXIST);

    char name[300];
    memset(name, 'n', 257);
    name[257] = '\0';
    snprintf(body, sizeof body, "{\"id\":\"v1\",\"name\":\"%s\"}", name);
    expect_dev_einval(fx, body, "'name'");
    expect_dev_einval(fx, "{\"id\":\"v1\",\"type\":5}", "'type'");
    expect_dev_einval(fx, "{\"id\":\"v1\",\"tags\":{\"a\":1}}", "'tags'");
    expect_dev_einval(fx, "{\"id\":\"v1\",\"tags\":[\"a\"]}", "'tags'");
    int n = snprintf(body, sizeof body, "{\"id\":\"v1\",\"tags\":{");
    for (int i = 0; i < 65; i++)
        n += snprintf(body + n, sizeof body - n, "%s\"k%d\":\"v\"", i ? "," : "", i);
    snprintf(body + n, sizeof body - n, "}}");
    expect_dev_einval(fx, body, "'tags'");
    expect_dev_einval(fx, "{\"id\":\"v1\",\"attributes\":[1]}", "'attributes'");
    n = snprintf(body, sizeof body, "{\"id\":\"v1\",\"attributes\":{\"big\":\"");
    memset(body + n, 'a', 16400);
    snprintf(body + n + 16400, sizeof body - n - 16400, "\"}}");
    expect_dev_einval(fx, body, "'attributes'");
    expect_dev_einval(fx, "{\"id\":\"v1\",\"enabled\":\"yes\"}", "'enabled'");
    expect_dev_einval(fx, "{\"id\":\"v1\",\"groups\":[\"nope\"]}", "'groups'");
    expect_dev_einval(fx, "{\"id\":\"v1\",\"groups\":\"g\"}", "'groups'");
    /* Nested attributes are fine. */
    assert_int_equal(dev_create(fx, 1,
                                "{\"id\":\"v1\",\"attributes\":{\"a\":{\"b\":[1,2,null]}},"
                                "\"unknown\":true}",
                                NULL),
                     THZ_OK);
    assert_int_equal(dev_update(fx, 1, "v1", "{\"tags\":{\"x\":false}}"), THZ_EINVAL);
    assert_non_null(strstr(fx->err, "'tags'"));
    assert_int_equal(dev_update(fx, 1, "nope", "{\"name\":\"x\"}"), THZ_ENOTFOUND);

    /* Groups. */
    assert_int_equal(group_create(fx, 1, "{\"id\":\"g 1\"}"), THZ_EINVAL);
    assert_non_null(strstr(fx->err, "'id'"));
    assert_int_equal(group_create(fx, 1, "{\"id\":\"g1\",\"policy\":{\"publish\":[\"a/#/b\"]}}"),
                     THZ_EINVAL);
    assert_non_null(strstr(fx->err, "'policy.publish'"));
    assert_int_equal(group_create(fx, 1, "{\"id\":\"g1\",\"policy\":[]}"), THZ_EINVAL);
    assert_int_equal(group_create(fx, 1, "{\"id\":\"g1\",\"query\":{\"a\":[]}}"), THZ_EINVAL);
    assert_non_null(strstr(fx->err, "'query'"));

    /* Users. */
    static const struct {
        const char *body, *field;
    } users[] = {
        {"{\"email\":\"no-at\",\"password\":\"longenough\",\"role\":\"viewer\"}", "'email'"},
        {"{\"password\":\"longenough\",\"role\":\"viewer\"}", "'email'"},
        {"{\"email\":\"a@b\",\"password\":\"short\",\"role\":\"viewer\"}", "'password'"},
        {"{\"email\":\"a@b\",\"password\":\"longenough\",\"role\":\"root\"}", "'role'"},
        {"{\"email\":\"a@b\",\"password\":\"longenough\"}", "'role'"},
    };
    for (size_t i = 0; i < sizeof users / sizeof users[0]; i++) {
        cJSON *b = J(users[i].body), *out;
        assert_int_equal(reg_user_create(fx->r, 1, b, &out, fx->err), THZ_EINVAL);
        if (strstr(fx->err, users[i].field) == NULL)
            fail_msg("err '%s' does not name %s", fx->err, users[i].field);
        cJSON_Delete(b);
    }
}

static void test_fleet_rates(void **state)
{
    fixture *fx = *state;
    char secret[128];
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"busy\"}", secret), THZ_OK);
    reg_identity id;
    assert_int_equal(mqtt(fx, "busy", secret, &id), THZ_OK);
    reg_conn_info ci = {"c", "127.0.0.1:1", 5, 10};
    reg_presence_connect(fx->r, id.dev, &ci);
    /* The background thread samples the totals every 2 s. */
    for (int i = 0; i < 30; i++) {
        reg_presence_count(id.dev, 100, 1000, 50, 500);
        usleep(100 * 1000);
    }
    cJSON *out;
    assert_int_equal(reg_fleet_summary(fx->r, 1, &out), THZ_OK);
    assert_true(N(out, "messages_in_per_s") > 100);
    assert_true(N(out, "messages_out_per_s") > 50);
    assert_true(N(out, "messages_in_per_s") < 5000);
    assert_int_equal((int)N(out, "online"), 1);
    cJSON_Delete(out);
    assert_int_equal(reg_fleet_summary(fx->r, 42, &out), THZ_ENOTFOUND);
    reg_dev_release(id.dev);
}

typedef struct race {
    registry *r;
    reg_dev *held;
    char tok[128];
    atomic_int stop;
    atomic_int errors;
} race;

static void *race_reader(void *arg)
{
    race *rc = arg;
    reg_conn_info ci = {"c", "127.0.0.1:2", 4, 10};
    while (!atomic_load(&rc->stop)) {
        reg_principal p;
        if (reg_token_check(rc->r, rc->tok, &p) != THZ_OK) atomic_fetch_add(&rc->errors, 1);
        (void)reg_dev_can_publish(rc->r, rc->held, "devices/held/x");
        (void)reg_dev_can_subscribe(rc->r, rc->held, "grp/held/+");
        uint64_t v = reg_presence_connect(rc->r, rc->held, &ci);
        reg_presence_count(rc->held, 1, 10, 1, 10);
        reg_presence_disconnect(rc->r, rc->held, v, "race");
        cJSON *o;
        if (reg_device_get(rc->r, 1, "held", &o) == THZ_OK) cJSON_Delete(o);
        char err[REG_ERR_LEN];
        if (reg_device_list(rc->r, 1, "k", NULL, -1, 5, NULL, &o, err) == THZ_OK) cJSON_Delete(o);
        if (reg_fleet_summary(rc->r, 1, &o) == THZ_OK) cJSON_Delete(o);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    fixture *fx = *state;
    race rc = {.r = fx->r};
    char secret[128];
    assert_int_equal(login(fx, ADMIN, ADMIN_PW, rc.tok), THZ_OK);
    assert_int_equal(dev_create(fx, 1, "{\"id\":\"held\",\"tags\":{\"k\":\"v\"}}", secret), THZ_OK);
    reg_identity id;
    assert_int_equal(mqtt(fx, "held", secret, &id), THZ_OK);
    rc.held = id.dev;
    pthread_t th[3];
    for (int i = 0; i < 3; i++) assert_int_equal(pthread_create(&th[i], NULL, race_reader, &rc), 0);
    for (int i = 0; i < 30; i++) {
        char body[128], did[32];
        snprintf(did, sizeof did, "x%d", i);
        snprintf(body, sizeof body, "{\"id\":\"%s\",\"tags\":{\"k\":\"%d\"}}", did, i);
        assert_int_equal(dev_create(fx, 1, body, NULL), THZ_OK);
        assert_int_equal(group_create(fx, 1,
                                      "{\"id\":\"grp\",\"query\":{\"k\":\"v\"},"
                                      "\"policy\":{\"subscribe\":[\"grp/${device}/+\"]}}"),
                         THZ_OK);
        assert_int_equal(
            dev_update(fx, 1, "held",
                       i % 2 ? "{\"tags\":{\"k\":\"v\"}}" : "{\"tags\":{\"k\":\"w\"}}"),
            THZ_OK);
        cJSON *out;
        assert_int_equal(reg_device_rotate(fx->r, 1, "held", &out), THZ_OK);
        cJSON_Delete(out);
        assert_int_equal(reg_group_delete(fx->r, 1, "grp"), THZ_OK);
        assert_int_equal(reg_device_delete(fx->r, 1, did), THZ_OK);
        if (i == 20)
            assert_int_equal(reg_backup(fx->r, "/tmp/thz_test_reg_race_bk", fx->err), THZ_OK);
    }
    /* The broker's device is deleted while the readers still use it. */
    assert_int_equal(reg_device_delete(fx->r, 1, "held"), THZ_OK);
    usleep(20 * 1000);
    atomic_store(&rc.stop, 1);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&rc.errors), 0);
    rm_rf("/tmp/thz_test_reg_race_bk");
    assert_false(reg_dev_can_publish(fx->r, rc.held, "devices/held/x"));
    reg_dev_release(rc.held);
}

int main(void)
{
    thz_log_level = THZ_LOG_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reopen_keeps_data_admin_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_generated_admin_password, setup, teardown),
        cmocka_unit_test_setup_teardown(test_login, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_users, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_credentials, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_groups_acl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_presence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backup_restore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fleet_rates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
