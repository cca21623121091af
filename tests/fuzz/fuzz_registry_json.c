/* fuzz_registry_json.c - libFuzzer target for the registry's request-body
 * validation: the input, parsed as JSON, is the body of device create and
 * update, group create and update, token create and user create, on one
 * registry opened in a temp dir; whatever it creates is deleted again, and
 * the ACL is asked about topics while a fuzzed group exists.
 *
 * User create runs against a tenant that does not exist, which the registry
 * checks after validating and before hashing, so argon2id (tens of
 * milliseconds per call) never runs; login is left out for the same reason. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "registry/registry.h"

static registry *R;
static reg_dev *Fixed; /* "fixed", a device that lives for the whole run */
static char Dir[64];

static void cleanup(void)
{
    reg_dev_release(Fixed);
    reg_close(R);
    if (Dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", Dir);
        if (system(cmd) != 0) return;
    }
}

static void init(void)
{
    thz_log_level = -1;
    strcpy(Dir, "/tmp/thz_fuzz_reg_XXXXXX");
    if (mkdtemp(Dir) == NULL) abort();
    setenv("THINGHZ_ADMIN_EMAIL", "fuzz@localhost", 1);
    setenv("THINGHZ_ADMIN_PASSWORD", "fuzz password", 1);
    char err[REG_ERR_LEN];
    if (reg_open(Dir, &R, err) != THZ_OK) abort();
    atexit(cleanup);
    cJSON *b = cJSON_Parse("{\"id\":\"fixed\",\"tags\":{\"site\":\"a\"}}"), *out;
    if (reg_device_create(R, 1, b, &out, err) != THZ_OK) abort();
    const char *secret = cJSON_GetObjectItem(out, "secret")->valuestring;
    reg_identity id;
    if (reg_mqtt_auth(R, "fixed", (const uint8_t *)secret, strlen(secret), &id) != THZ_OK) abort();
    Fixed = id.dev;
    cJSON_Delete(b);
    cJSON_Delete(out);
}

/* The err buffer must hold a terminated string whenever a call fails. */
static void check(thz_err e, const char *err, cJSON *out)
{
    if (e != THZ_OK && memchr(err, '\0', REG_ERR_LEN) == NULL) abort();
    if (e == THZ_OK && out == NULL) abort();
}

static const char *id_of(const cJSON *o)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "id");
    if (!cJSON_IsString(v)) abort(); /* created objects always have their id */
    return v->valuestring;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (R == NULL) init();
    cJSON *j = cJSON_ParseWithLength((const char *)data, size);
    if (j == NULL) return 0;
    char err[REG_ERR_LEN] = "";
    cJSON *out = NULL;
    thz_err e;

    /* Devices. */
    e = reg_device_create(R, 1, j, &out, err);
    check(e, err, out);
    if (e == THZ_OK) {
        char id[REG_ID_MAX + 1];
        snprintf(id, sizeof id, "%s", id_of(out));
        cJSON_Delete(out);
        out = NULL;
        e = reg_device_update(R, 1, id, j, &out, err);
        check(e, err, out);
        cJSON_Delete(out);
        out = NULL;
        if (reg_device_get(R, 1, id, &out) != THZ_OK) abort();
        cJSON_Delete(out);
        out = NULL;
        if (reg_device_delete(R, 1, id) != THZ_OK) abort();
    }
    e = reg_device_update(R, 1, "fixed", j, &out, err);
    check(e, err, out);
    cJSON_Delete(out);
    out = NULL;

    /* Groups, and the ACL while the group exists. */
    e = reg_group_create(R, 1, j, &out, err);
    check(e, err, out);
    if (e == THZ_OK) {
        char id[REG_ID_MAX + 1];
        snprintf(id, sizeof id, "%s", id_of(out));
        cJSON_Delete(out);
        out = NULL;
        (void)reg_group_add(R, 1, id, "fixed");
        static const char *const topics[] = {
            "devices/fixed/x", "a/b", "sites/a/fixed", "#", "+/+", "$aws/things/fixed/shadow", "a"};
        for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
            (void)reg_dev_can_publish(R, Fixed, topics[i]);
            (void)reg_dev_can_subscribe(R, Fixed, topics[i]);
        }
        e = reg_group_update(R, 1, id, j, &out, err);
        check(e, err, out);
        cJSON_Delete(out);
        out = NULL;
        cJSON *list;
        if (reg_device_list(R, 1, NULL, id, -1, 10, NULL, &list, err) != THZ_OK) abort();
        cJSON_Delete(list);
        if (reg_group_delete(R, 1, id) != THZ_OK) abort();
    }

    /* Tokens: validated, created, revoked. */
    reg_principal p = {.tenant = 1, .user = 1, .token = 0, .role = REG_OPERATOR};
    e = reg_token_create(R, &p, j, &out, err);
    check(e, err, out);
    if (e == THZ_OK) {
        int64_t id = (int64_t)cJSON_GetObjectItem(out, "id")->valuedouble;
        if (reg_token_revoke(R, &p, id) != THZ_OK) abort();
        cJSON_Delete(out);
        out = NULL;
    }

    /* Users: validation only (tenant 999 does not exist). */
    e = reg_user_create(R, 999, j, &out, err);
    if (e == THZ_OK) abort();
    check(e, err, NULL);

    /* String fields of the input as list parameters. */
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "tag");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "cursor");
    cJSON *list;
    if (reg_device_list(R, 1, cJSON_IsString(s) ? s->valuestring : NULL, NULL, -1, 5,
                        cJSON_IsString(c) ? c->valuestring : NULL, &list, err) == THZ_OK)
        cJSON_Delete(list);
    cJSON_Delete(j);
    return 0;
}
