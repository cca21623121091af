/* test_json.c - unit tests of the telemetry JSON scanner (src/ingest/json.c):
 * types, flattening, timestamps in every form, batches, duplicates, escapes,
 * limits and errors with their byte offsets. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ingest/ingest.h"

#define NOW 1000

typedef struct res {
    ingest_batch b;
    tsdb_point pts[16];
    char buf[256];
    char err[INGEST_ERR_LEN];
    thz_err rc;
} res;

static res *parse(const char *s)
{
    static res r;
    ingest_batch_free(&r.b);
    memset(&r, 0, sizeof r);
    ingest_batch_init(&r.b, r.pts, 16, r.buf, sizeof r.buf);
    r.rc = ingest_json_parse(&r.b, "dev1", 4, (const uint8_t *)s, strlen(s), NOW, r.err);
    return &r;
}

static const tsdb_point *find(res *r, const char *metric)
{
    for (size_t i = 0; i < r->b.n; i++)
        if (r->b.pts[i].metric_len == strlen(metric) &&
            memcmp(r->b.pts[i].metric, metric, r->b.pts[i].metric_len) == 0)
            return &r->b.pts[i];
    return NULL;
}

static void expect_err(const char *in, const char *substr)
{
    res *r = parse(in);
    if (r->rc != THZ_EINVAL || !strstr(r->err, substr))
        fail_msg("input %s: rc %d err '%s', expected '%s'", in, r->rc, r->err, substr);
}

static void test_types(void **st)
{
    res *r = parse("{\"t\":21,\"u\":21.5,\"b\":true,\"c\":false,\"s\":\"hi\",\"n\":null}");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 5);
    const tsdb_point *p = find(r, "t");
    assert_non_null(p);
    assert_int_equal(p->v.type, TSDB_FLOAT); /* integers are float64 too */
    assert_true(p->v.u.f == 21.0);
    assert_int_equal(p->ts, NOW);
    assert_int_equal(p->device_len, 4);
    assert_memory_equal(p->device, "dev1", 4);
    assert_true(find(r, "u")->v.u.f == 21.5);
    assert_int_equal(find(r, "b")->v.type, TSDB_BOOL);
    assert_true(find(r, "b")->v.u.b);
    assert_false(find(r, "c")->v.u.b);
    p = find(r, "s");
    assert_int_equal(p->v.type, TSDB_STRING);
    assert_int_equal(p->v.u.s.n, 2);
    assert_memory_equal(p->v.u.s.p, "hi", 2);
    assert_null(find(r, "n")); /* null: skipped */
    assert_null(p->tags);
}

static void test_numbers(void **st)
{
    const char *nums[] = {"0",
                          "-0",
                          "1",
                          "0.1",
                          "3.14159",
                          "-2.5e-3",
                          "1E+2",
                          "1e308",
                          "5e-324",
                          "123456789012345678901234567890",
                          "0.30000000000000004",
                          "9007199254740993",
                          "1.7976931348623157e308",
                          "0.000001234"};
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) {
        char in[128];
        snprintf(in, sizeof in, "{\"x\":%s}", nums[i]);
        res *r = parse(in);
        assert_int_equal(r->rc, THZ_OK);
        double want = strtod(nums[i], NULL);
        assert_memory_equal(&r->b.pts[0].v.u.f, &want, sizeof want); /* bit-exact as strtod */
    }
    expect_err("{\"x\":01}", "byte 5: leading zero");
    expect_err("{\"x\":1.}", "byte 5: a digit must follow the decimal point");
    expect_err("{\"x\":.5}", "byte 5: unexpected '.'");
    expect_err("{\"x\":1e}", "digit must follow the exponent");
    expect_err("{\"x\":-}", "digit after '-'");
    expect_err("{\"x\":+1}", "unexpected '+'");
    expect_err("{\"x\":1e400}", "out of range");
    expect_err("{\"x\":NaN}", "unexpected 'N'");
    expect_err("{\"x\":1.5.5}", "expected ',' or '}'");
    char big[200] = "{\"x\":1";
    for (int i = 0; i < 70; i++) strcat(big, "0");
    strcat(big, "}");
    expect_err(big, "longer than 63");
}

static void test_flatten(void **st)
{
    res *r = parse("{\"env\":{\"temp\":1,\"deep\":{\"er\":{\"x\":true}}},\"top\":2,\"e\":{}}");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 3);
    assert_non_null(find(r, "env.temp"));
    assert_non_null(find(r, "env.deep.er.x"));
    assert_non_null(find(r, "top"));
    /* nested "ts" is an ordinary field */
    r = parse("{\"a\":{\"ts\":5}}");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(find(r, "a.ts")->ts, NOW);
}

static void test_timestamps(void **st)
{
    struct {
        const char *ts;
        int64_t want;
    } ok[] = {
        {"1700000000000", 1700000000000000000LL},
        {"1700000000000.5", 1700000000000500000LL},
        {"1700000000000.123456", 1700000000000123456LL},
        {"1700000000000.1234567", 1700000000000123456LL}, /* below a ns: dropped */
        {"1.7e12", 1700000000000000000LL},
        {"0", 0},
        {"-1000", -1000000000LL},
        {"\"2023-11-14T22:13:20Z\"", 1700000000000000000LL},
        {"\"2023-11-14T22:13:20.123456789Z\"", 1700000000123456789LL},
        {"\"2023-11-14T22:13:20.1Z\"", 1700000000100000000LL},
        {"\"2023-11-14t22:13:20.5z\"", 1700000000500000000LL},
        {"\"2023-11-14 22:13:20Z\"", 1700000000000000000LL},
        {"\"2023-11-15T00:13:20+02:00\"", 1700000000000000000LL},
        {"\"2023-11-14T16:43:20.000000001-05:30\"", 1700000000000000001LL},
        {"\"2024-02-29T00:00:00Z\"", 1709164800000000000LL},
        {"\"1970-01-01T00:00:00Z\"", 0},
        {"\"1969-12-31T23:59:59.999999999Z\"", -1},
        {"null", NOW},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        char in[128];
        snprintf(in, sizeof in, "{\"v\":1,\"ts\":%s}", ok[i].ts);
        res *r = parse(in);
        if (r->rc) fail_msg("%s: %s", in, r->err);
        if (r->b.pts[0].ts != ok[i].want)
            fail_msg("%s: %lld, want %lld", in, (long long)r->b.pts[0].ts, (long long)ok[i].want);
        assert_int_equal(r->b.n, 1); /* ts is not a metric */
    }
    expect_err("{\"ts\":\"2023-02-29T00:00:00Z\"}", "no such date");
    expect_err("{\"ts\":\"2023-11-14T22:13:20\"}", "needs Z or an offset");
    expect_err("{\"ts\":\"2023-11-14T22:13:20.1234567891Z\"}", "more than 9 fractional");
    expect_err("{\"ts\":\"2023-11-14T24:00:00Z\"}", "out of range");
    expect_err("{\"ts\":\"2023-11-14T22:13:20+2:00\"}", "byte 6: ts:");
    expect_err("{\"ts\":\"yesterday\"}", "ts:");
    expect_err("{\"ts\":true}", "ts must be epoch milliseconds");
    expect_err("{\"ts\":{}}", "ts must be");
    expect_err("{\"ts\":1e20}", "ts: timestamp out of range");
    expect_err("{\"ts\":\"2263-01-01T00:00:00Z\"}", "out of range");
}

static void test_batch(void **st)
{
    res *r = parse(" [ {\"a\":1,\"ts\":1}, {\"a\":2,\"ts\":2} ,{\"b\":\"x\"}] ");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 3);
    assert_int_equal(r->b.pts[0].ts, 1000000);
    assert_int_equal(r->b.pts[1].ts, 2000000);
    assert_int_equal(r->b.pts[2].ts, NOW);
    r = parse("[]");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 0);
    expect_err("[{\"a\":1},2]", "byte 9: telemetry must be a JSON object");
    expect_err("[{\"a\":1},]", "byte 9:");
    expect_err("[{\"a\":1}", "unexpected end of input");
    expect_err("5", "must be a JSON object");
    /* growth past the stack arrays */
    char big[40000] = "[";
    for (int i = 0; i < 1000; i++)
        snprintf(big + strlen(big), sizeof big - strlen(big), "%s{\"k%d\":{\"n\":%d}}",
                 i ? "," : "", i, i);
    strcat(big, "]");
    r = parse(big);
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 1000);
    assert_true(find(r, "k999.n")->v.u.f == 999);
}

static void test_duplicates(void **st)
{
    res *r = parse("{\"a\":1,\"b\":2,\"a\":3}");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 2);
    assert_true(find(r, "a")->v.u.f == 3);
    r = parse("{\"a\":1,\"a\":null}"); /* a null that comes last removes */
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 0);
    r = parse("{\"a.b\":1,\"a\":{\"b\":\"two\"}}"); /* collision after flattening */
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 1);
    assert_int_equal(find(r, "a.b")->v.type, TSDB_STRING);
    r = parse("{\"ts\":1,\"ts\":2,\"x\":0}");
    assert_int_equal(r->b.pts[0].ts, 2000000);
    /* many fields: the hashed path */
    char big[20000] = "{";
    for (int i = 0; i < 500; i++)
        snprintf(big + strlen(big), 40, "%s\"f%d\":%d", i ? "," : "", i % 100, i);
    strcat(big, "}");
    r = parse(big);
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 100);
    assert_true(find(r, "f7")->v.u.f == 407);
}

static void test_escapes(void **st)
{
    res *r = parse("{\"s\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\u20ac\\ud83d\\ude00\","
                   "\"k\\u00e9y\":1,\"raw\":\"\xc3\xa9\xe2\x82\xac\"}");
    assert_int_equal(r->rc, THZ_OK);
    const tsdb_point *p = find(r, "s");
    const char want[] = "a\"b\\c/d\b\f\n\r\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    assert_int_equal(p->v.u.s.n, sizeof want - 1);
    assert_memory_equal(p->v.u.s.p, want, sizeof want - 1);
    assert_non_null(find(r, "k\xc3\xa9y"));
    assert_int_equal(find(r, "raw")->v.u.s.n, 5);
    r = parse("{\"s\":\"a\\u0000b\"}"); /* NUL in a value is kept */
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(find(r, "s")->v.u.s.n, 3);
    expect_err("{\"s\":\"\\x\"}", "byte 6: bad escape");
    expect_err("{\"s\":\"\\u12g4\"}", "bad \\u escape");
    expect_err("{\"s\":\"\\udc00\"}", "lone low surrogate");
    expect_err("{\"s\":\"\\ud800x\"}", "not followed by a low surrogate");
    expect_err("{\"s\":\"\\ud800\\u0041\"}", "not followed by a low surrogate");
    expect_err("{\"s\":\"a\nb\"}", "byte 7: raw control character");
    expect_err("{\"s\":\"\xc3\"}", "invalid UTF-8");
    expect_err("{\"s\":\"\xed\xa0\x80\"}", "invalid UTF-8"); /* encoded surrogate */
    expect_err("{\"s\":\"\xc0\xaf\"}", "invalid UTF-8");     /* overlong */
    expect_err("{\"s\":\"abc}", "byte 5: unterminated string");
    expect_err("{\"a\\u0000\":1}", "contains \\u0000");
}

static void test_syntax(void **st)
{
    assert_int_equal(parse("\xef\xbb\xbf {\"a\":1}\r\n\t ")->rc, THZ_OK); /* BOM, whitespace */
    assert_int_equal(parse("{}")->rc, THZ_OK);
    expect_err("", "byte 0: unexpected end of input");
    expect_err("{", "byte 1: unexpected end of input, expected a field name");
    expect_err("{\"a\" 1}", "byte 5: unexpected '1', expected ':'");
    expect_err("{\"a\":1,}", "byte 7:");
    expect_err("{\"a\":1}x", "byte 7: unexpected 'x', expected the end of the payload");
    expect_err("{\"a\":1}{}", "byte 7:");
    expect_err("{a:1}", "byte 1: unexpected 'a', expected a field name");
    expect_err("{\"a\":tru}", "byte 5:");
    expect_err("{\"a\":1\x0c}", "control character 0x0c");
    expect_err("{\"a\":[1,2]}", "byte 5: field \"a\": arrays are not supported");
    expect_err("{\"x\":{\"a\":[]}}", "field \"x.a\": arrays");
    expect_err("{\"\":1}", "empty field name");
    expect_err("{'a':1}", "unexpected '''");
}

static void test_limits(void **st)
{
    char deep[400] = "";
    for (int i = 0; i < 16; i++) strcat(deep, "{\"a\":");
    strcat(deep, "1");
    for (int i = 0; i < 16; i++) strcat(deep, "}");
    assert_int_equal(parse(deep)->rc, THZ_OK); /* 16 levels */
    char deeper[400] = "{\"b\":";
    strcat(deeper, deep);
    strcat(deeper, "}");
    expect_err(deeper, "nested deeper than 16");

    size_t cap = 30000;
    char *s = malloc(cap);
    strcpy(s, "{");
    for (int i = 0; i < 1001; i++) snprintf(s + strlen(s), 32, "%s\"f%d\":1", i ? "," : "", i);
    strcat(s, "}");
    expect_err(s, "more than 1000 fields");
    free(s);

    cap = 300000;
    s = malloc(cap);
    strcpy(s, "[");
    size_t l = 1;
    for (int i = 0; i < 10001; i++)
        l += (size_t)snprintf(s + l, cap - l, "%s{\"a\":1}", i ? "," : "");
    strcat(s, "]");
    expect_err(s, "more than 10000 points");
    s[strlen(s) - 9] = ']'; /* 10,000: allowed */
    s[strlen(s) - 8] = 0;
    assert_int_equal(parse(s)->rc, THZ_OK);
    assert_int_equal(parse(s)->b.n, 10000);
    free(s);

    char name[400] = "{\"";
    for (int i = 0; i < 257; i++) strcat(name, "n");
    strcat(name, "\":1}");
    expect_err(name, "longer than 256");
    name[strlen(name) - 5] = 0; /* 256 */
    strcat(name, "\":1}");
    assert_int_equal(parse(name)->rc, THZ_OK);
}

static void test_err_class(void **st)
{
    assert_int_equal(parse("{\"a\":01}")->b.err_class, INGEST_E_NUMBER);
    assert_int_equal(parse("{\"a\":\"\x01\"}")->b.err_class, INGEST_E_STRICT);
    assert_int_equal(parse("{\"a\":[]}")->b.err_class, INGEST_E_SEMANTIC);
    assert_int_equal(parse("{\"a\" 1}")->b.err_class, INGEST_E_SYNTAX);
    assert_int_equal(parse("{\"a\":1 x")->b.err_off, 7);
}

/* ---- ingest_telemetry end to end, on a real engine ---- */

static _Atomic int Done;
static void on_done(void *ctx, thz_err rc)
{
    (void)ctx;
    if (rc == THZ_OK) Done++;
}

static bool count_fn(void *ctx, const tsdb_series *s)
{
    (*(int *)ctx)++;
    return true;
}

static bool last_fn(void *ctx, const int64_t *ts, const tsdb_value *v, size_t n)
{
    *(double *)ctx = v[0].u.f;
    return false;
}

static void test_telemetry_engine(void **st)
{
    char dir[] = "/tmp/thz_ingest_XXXXXX";
    assert_non_null(mkdtemp(dir));
    tsdb_options o = {.dir = dir, .fsync = TSDB_FSYNC_ALWAYS};
    tsdb *db;
    char terr[TSDB_ERR_LEN];
    assert_int_equal(tsdb_open(&o, &db, terr), THZ_OK);
    char err[INGEST_ERR_LEN];
    const char *p = "{\"temp\":21.5,\"env\":{\"hum\":40},\"ok\":true,\"ts\":1700000000000}";
    assert_int_equal(
        ingest_telemetry(db, 1, "d1", 2, (const uint8_t *)p, strlen(p), 5, on_done, NULL, err),
        THZ_OK);
    /* malformed: nothing written, done not called */
    const char *bad = "{\"temp\":22,\"x\":[1]}";
    assert_int_equal(
        ingest_telemetry(db, 1, "d1", 2, (const uint8_t *)bad, strlen(bad), 5, on_done, NULL, err),
        THZ_EINVAL);
    assert_non_null(strstr(err, "arrays"));
    /* a type conflict with the stored series: refused by the engine, whole payload */
    const char *conf = "{\"other\":1,\"temp\":\"hot\"}";
    assert_int_equal(ingest_telemetry(db, 1, "d1", 2, (const uint8_t *)conf, strlen(conf), 5,
                                      on_done, NULL, err),
                     THZ_EINVAL);
    for (int i = 0; i < 200 && Done < 1; i++) usleep(10000);
    assert_int_equal(Done, 1);
    int n = 0;
    assert_int_equal(tsdb_series_select(db, 1, NULL, 0, count_fn, &n), THZ_OK);
    assert_int_equal(n, 3); /* temp, env.hum, ok: nothing of the refused payloads */
    tsdb_matcher m[2] = {{"device", TSDB_EQ, "d1"}, {"metric", TSDB_EQ, "env.hum"}};
    tsdb_series_select(db, 1, m, 2, count_fn, &n);
    assert_int_equal(n, 4);
    tsdb_close(db);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    (void)last_fn;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_flatten),
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_err_class),
        cmocka_unit_test(test_telemetry_engine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
