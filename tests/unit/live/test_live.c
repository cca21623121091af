/* test_live.c - the pure pieces of the live module: the client message
 * parser of the live WebSocket, the payload-as-JSON rule shared by
 * /messages and message frames, and the device a topic belongs to. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "live/live_int.h"

static live_cmd cmd;

static thz_err parse(const char *s, const char **err)
{
    return live_parse_cmd((const uint8_t *)s, strlen(s), &cmd, err);
}

static void test_parse_ok(void **st)
{
    const char *err;
    assert_int_equal(parse("{\"op\":\"auth\",\"token\":\"thz_abc\"}", &err), THZ_OK);
    assert_int_equal(cmd.op, LIVE_OP_AUTH);
    assert_string_equal(cmd.token, "thz_abc");
    assert_int_equal(parse("{\"op\":\"subscribe\",\"device\":\"pump-1\"}", &err), THZ_OK);
    assert_int_equal(cmd.op, LIVE_OP_SUBSCRIBE);
    assert_string_equal(cmd.device, "pump-1");
    assert_false(cmd.fleet);
    assert_int_equal(parse("{\"op\":\"unsubscribe\",\"fleet\":true}", &err), THZ_OK);
    assert_int_equal(cmd.op, LIVE_OP_UNSUBSCRIBE);
    assert_true(cmd.fleet);
    assert_null(cmd.device);
    assert_int_equal(parse("{\"op\":\"ping\",\"extra\":[1,2]}", &err), THZ_OK);
    assert_int_equal(cmd.op, LIVE_OP_PING);
}

static void test_parse_errors(void **st)
{
    const char *bad[] = {
        "",
        "[]",
        "{\"op\":1}",
        "{\"op\":\"dance\"}",
        "{\"op\":\"auth\"}",
        "{\"op\":\"auth\",\"token\":\"\"}",
        "{\"op\":\"subscribe\"}",
        "{\"op\":\"subscribe\",\"device\":\"a/b\"}",
        "{\"op\":\"subscribe\",\"device\":\"\"}",
        "{\"op\":\"subscribe\",\"fleet\":false}",
        "{\"op\":\"subscribe\",\"device\":\"a\",\"fleet\":true}",
        "{\"op\":\"ping\"} trailing",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *err = NULL;
        assert_int_equal(parse(bad[i], &err), THZ_EINVAL);
        assert_non_null(err);
    }
    char id[200];
    memset(id, 'a', sizeof id);
    id[sizeof id - 1] = 0;
    char msg[300];
    snprintf(msg, sizeof msg, "{\"op\":\"subscribe\",\"device\":\"%s\"}", id);
    const char *err;
    assert_int_equal(parse(msg, &err), THZ_EINVAL); /* ids are at most 128 bytes */
    char *big = malloc(LIVE_CLIENT_MAX + 100);
    memset(big, ' ', LIVE_CLIENT_MAX + 99);
    memcpy(big, "{\"op\":\"ping\"}", 13);
    big[LIVE_CLIENT_MAX + 99] = 0;
    assert_int_equal(parse(big, &err), THZ_EINVAL);
    free(big);
    assert_int_equal(live_parse_cmd((const uint8_t *)"{\"op\":\"ping\"}\0", 14, &cmd, &err),
                     THZ_EINVAL);
}

static char *payload(const char *p, size_t n, bool cut)
{
    cJSON *o = cJSON_CreateObject();
    live_payload_json(o, (const uint8_t *)p, n, cut);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static void check_payload(const char *p, size_t n, bool cut, const char *want)
{
    char *s = payload(p, n, cut);
    assert_string_equal(s, want);
    cJSON_free(s);
}

static void test_payload_json(void **st)
{
    check_payload("hello", 5, false, "{\"payload\":\"hello\"}");
    check_payload("", 0, false, "{\"payload\":\"\"}");
    check_payload("\xc3\xa9t\xc3\xa9", 5, false, "{\"payload\":\"\xc3\xa9t\xc3\xa9\"}");
    /* NUL bytes, stray continuation bytes, overlong forms, surrogates: binary */
    check_payload("a\0b", 3, false, "{\"payload\":null,\"payload_base64\":\"YQBi\"}");
    check_payload("\x80", 1, false, "{\"payload\":null,\"payload_base64\":\"gA==\"}");
    check_payload("\xc0\xaf", 2, false, "{\"payload\":null,\"payload_base64\":\"wK8=\"}");
    check_payload("\xed\xa0\x80", 3, false, "{\"payload\":null,\"payload_base64\":\"7aCA\"}");
    /* a truncated payload may end inside a sequence: cut there */
    check_payload("ab\xc3", 3, true, "{\"payload\":\"ab\"}");
    check_payload("ab\xc3", 3, false, "{\"payload\":null,\"payload_base64\":\"YWLD\"}");
    check_payload("ab\xf0\x9f\x98", 5, true, "{\"payload\":\"ab\"}");
}

static void test_topic_device(void **st)
{
    const char *id;
    size_t n;
    assert_true(live__topic_device("devices/p1/telemetry", 20, &id, &n));
    assert_int_equal(n, 2);
    assert_memory_equal(id, "p1", 2);
    assert_true(live__topic_device("devices/p1", 10, &id, &n));
    assert_int_equal(n, 2);
    assert_true(live__topic_device("$aws/things/t-9/shadow/update", 29, &id, &n));
    assert_int_equal(n, 3);
    assert_memory_equal(id, "t-9", 3);
    assert_false(live__topic_device("devices/", 8, &id, &n));
    assert_false(live__topic_device("devices//x", 10, &id, &n));
    assert_false(live__topic_device("device/p1/x", 11, &id, &n));
    assert_false(live__topic_device("$aws/thing/p1", 13, &id, &n));
}

static void test_fmt_ms(void **st)
{
    char t[64];
    live__fmt_ms(1795687200123LL, t);
    assert_string_equal(t, "2026-11-26T10:00:00.123Z");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok),     cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_payload_json), cmocka_unit_test(test_topic_device),
        cmocka_unit_test(test_fmt_ms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
