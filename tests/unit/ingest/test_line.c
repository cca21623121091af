/* test_line.c - unit tests of the line-protocol parser (src/ingest/lp.c):
 * every element's syntax and escapes, value types, timestamps and
 * precisions, the mapping to device/metric/tags, comments, and errors with
 * line and column. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"
#include "ingest/ingest.h"

#define HTTP_BODY_LIMIT_FOR_TEST HTTP_MAX_BODY

#define NOW 777

typedef struct res {
    ingest_batch b;
    tsdb_point pts[8];
    char buf[128];
    char err[INGEST_ERR_LEN];
    thz_err rc;
} res;

static res *parse_m(const char *s, int64_t mult)
{
    static res r;
    ingest_batch_free(&r.b);
    memset(&r, 0, sizeof r);
    ingest_batch_init(&r.b, r.pts, 8, r.buf, sizeof r.buf);
    r.rc = ingest_lp_parse(&r.b, (const uint8_t *)s, strlen(s), mult, NOW, r.err);
    return &r;
}

static res *parse(const char *s)
{
    return parse_m(s, 1);
}

static bool eq(const char *p, size_t n, const char *want)
{
    return n == strlen(want) && memcmp(p, want, n) == 0;
}

#define assert_str(p, n, want)                                                                     \
    do {                                                                                           \
        if (!eq((p), (n), (want))) fail_msg("got '%.*s', want '%s'", (int)(n), (p), (want));       \
    } while (0)

static void expect_err(const char *in, const char *substr)
{
    res *r = parse(in);
    if (r->rc != THZ_EINVAL || !strstr(r->err, substr))
        fail_msg("input %s: rc %d err '%s', expected '%s'", in, r->rc, r->err, substr);
}

static void test_basic(void **st)
{
    res *r = parse("cpu,host=h1,region=eu usage=0.5,n=3i,ok=t,msg=\"hi\" 1700000000000000000\n");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 4);
    tsdb_point *p = &r->b.pts[0];
    assert_str(p->device, p->device_len, "h1"); /* host: the device */
    assert_str(p->metric, p->metric_len, "cpu.usage");
    assert_str(p->tags, p->tags_len, "region=eu"); /* host is not a tag then */
    assert_int_equal(p->ts, 1700000000000000000LL);
    assert_int_equal(p->v.type, TSDB_FLOAT);
    assert_true(p->v.u.f == 0.5);
    assert_int_equal(r->b.pts[1].v.type, TSDB_INT);
    assert_int_equal(r->b.pts[1].v.u.i, 3);
    assert_int_equal(r->b.pts[2].v.type, TSDB_BOOL);
    assert_int_equal(r->b.pts[3].v.type, TSDB_STRING);
    assert_str(r->b.pts[3].v.u.s.p, r->b.pts[3].v.u.s.n, "hi");
    for (int i = 0; i < 4; i++) assert_int_equal(r->b.pts[i].ts, 1700000000000000000LL);
}

static void test_mapping(void **st)
{
    /* device tag wins over host; host stays a tag */
    res *r = parse("m,host=h,device=d,b=2,a=1 f=1");
    assert_int_equal(r->rc, THZ_OK);
    tsdb_point *p = &r->b.pts[0];
    assert_str(p->device, p->device_len, "d");
    assert_str(p->tags, p->tags_len, "a=1,b=2,host=h"); /* canonical: sorted */
    assert_int_equal(p->ts, NOW);
    /* no device or host: the measurement */
    r = parse("weather temp=1");
    p = &r->b.pts[0];
    assert_str(p->device, p->device_len, "weather");
    assert_str(p->metric, p->metric_len, "weather.temp");
    assert_int_equal(p->tags_len, 0);
    /* measurement telemetry: the metric is the field key (same series as MQTT JSON) */
    r = parse("telemetry,device=d1 temp=21.5,hum=40");
    assert_int_equal(r->rc, THZ_OK);
    assert_str(r->b.pts[0].metric, r->b.pts[0].metric_len, "temp");
    assert_str(r->b.pts[1].metric, r->b.pts[1].metric_len, "hum");
    assert_str(r->b.pts[1].device, r->b.pts[1].device_len, "d1");
    /* the tag-set cache across lines keeps every line right */
    r = parse(
        "m,device=a,x=1 f=1 1\nm,device=a,x=1 f=2 2\nm,device=b,x=1 f=3 3\nm,device=a,x=1 f=4 4");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 4);
    assert_str(r->b.pts[2].device, r->b.pts[2].device_len, "b");
    assert_str(r->b.pts[3].device, r->b.pts[3].device_len, "a");
    assert_str(r->b.pts[3].tags, r->b.pts[3].tags_len, "x=1");
    assert_int_equal(r->b.pts[3].ts, 4);
}

static void test_escapes(void **st)
{
    res *r = parse("my\\ meas\\,x=y,t\\ k\\=\\,=v\\ a\\=l\\,\\\\ f\\ k\\=\\,=\"q\\\"s\\\\t\\n\" 5");
    if (r->rc) fail_msg("%s", r->err);
    tsdb_point *p = &r->b.pts[0];
    assert_str(p->device, p->device_len, "my meas,x=y"); /* '=' is literal in a measurement */
    assert_str(p->metric, p->metric_len, "my meas,x=y.f k=,");
    /* the canonical form escapes ',' '=' '\' again */
    assert_str(p->tags, p->tags_len, "t k\\=\\,=v a\\=l\\,\\\\");
    assert_str(p->v.u.s.p, p->v.u.s.n, "q\"s\\t\\n"); /* other backslashes are kept */
    /* a backslash before anything else is literal */
    r = parse("a\\b,t=x\\y f\\z=1");
    assert_int_equal(r->rc, THZ_OK);
    assert_str(r->b.pts[0].metric, r->b.pts[0].metric_len, "a\\b.f\\z");
    assert_str(r->b.pts[0].tags, r->b.pts[0].tags_len, "t=x\\\\y");
    /* a string may hold commas, spaces, '=' and newlines */
    r = parse("m s=\"a, b=c\nd\" 9\nm t=1 10");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 2);
    assert_str(r->b.pts[0].v.u.s.p, r->b.pts[0].v.u.s.n, "a, b=c\nd");
    assert_int_equal(r->b.pts[1].ts, 10);
    r = parse("m s=\"\"");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.pts[0].v.u.s.n, 0);
}

static void test_values(void **st)
{
    const char *trues[] = {"t", "T", "true", "True", "TRUE"};
    const char *falses[] = {"f", "F", "false", "False", "FALSE"};
    char in[64];
    for (int i = 0; i < 5; i++) {
        snprintf(in, sizeof in, "m b=%s", trues[i]);
        res *r = parse(in);
        assert_int_equal(r->rc, THZ_OK);
        assert_true(r->b.pts[0].v.u.b);
        snprintf(in, sizeof in, "m b=%s", falses[i]);
        r = parse(in);
        assert_int_equal(r->rc, THZ_OK);
        assert_false(r->b.pts[0].v.u.b);
    }
    const char *floats[] = {"1", "-1.5", "1e10", "1.5E-3", ".5", "-0", "1.", "+2", "1e+5"};
    for (size_t i = 0; i < sizeof floats / sizeof *floats; i++) {
        snprintf(in, sizeof in, "m v=%s", floats[i]);
        res *r = parse(in);
        if (r->rc) fail_msg("%s: %s", in, r->err);
        assert_int_equal(r->b.pts[0].v.type, TSDB_FLOAT);
        assert_true(r->b.pts[0].v.u.f == strtod(floats[i], NULL));
    }
    /* decimals (the fast path) and long ones (strtod) give strtod's double, bit for bit */
    srand(11);
    for (int i = 0; i < 20000; i++) {
        char num[40];
        int ip = rand() % 100000, nf = rand() % 17;
        int o = snprintf(num, sizeof num, "%s%d", rand() % 2 ? "-" : "", i % 3 ? ip : rand());
        if (nf) num[o++] = '.';
        for (int k = 0; k < nf - 1; k++) num[o++] = (char)('0' + rand() % 10);
        num[o] = 0;
        snprintf(in, sizeof in, "m v=%s", num);
        res *r = parse(in);
        if (r->rc) fail_msg("%s: %s", in, r->err);
        double want = strtod(num, NULL);
        if (memcmp(&r->b.pts[0].v.u.f, &want, 8))
            fail_msg("%s: %.17g want %.17g", num, r->b.pts[0].v.u.f, want);
    }
    res *r = parse("m a=-9223372036854775808i,b=9223372036854775807i,c=0u,d=9223372036854775807u");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.pts[0].v.u.i, INT64_MIN);
    assert_int_equal(r->b.pts[1].v.u.i, INT64_MAX);
    assert_int_equal(r->b.pts[2].v.type, TSDB_INT);
    assert_int_equal(r->b.pts[3].v.u.i, INT64_MAX);
    expect_err("m a=9223372036854775808i", "line 1, column 5: integer out of range");
    expect_err("m a=18446744073709551616u", "out of range");
    expect_err("m a=9223372036854775808u", "unsigned value above");
    expect_err("m a=-1u", "cannot be negative");
    expect_err("m a=1.5i", "invalid integer");
    expect_err("m a=i", "invalid field value 'i'");
    expect_err("m a=tru", "column 5: invalid field value 'tru'");
    expect_err("m a=1e", "invalid field value");
    expect_err("m a=1e400", "float out of range");
    expect_err("m a=nan", "invalid field value");
    expect_err("m a=\"open", "unterminated string");
    expect_err("m a=", "missing field value");
    expect_err("m a=,b=1", "column 5: missing field value");
}

static void test_timestamps(void **st)
{
    assert_int_equal(parse("m v=1 -5")->b.pts[0].ts, -5);
    assert_int_equal(parse_m("m v=1 1700000000", 1000000000)->b.pts[0].ts, 1700000000000000000LL);
    assert_int_equal(parse_m("m v=1 1700000000000", 1000000)->b.pts[0].ts, 1700000000000000000LL);
    assert_int_equal(parse_m("m v=1 2", 1000)->b.pts[0].ts, 2000);
    assert_int_equal(parse_m("m v=1 2", 60000000000LL)->b.pts[0].ts, 120000000000LL);
    assert_int_equal(parse_m("m v=1 1", 3600000000000LL)->b.pts[0].ts, 3600000000000LL);
    assert_int_equal(parse("m v=1   12  \r\n")->b.pts[0].ts, 12); /* extra blanks, CRLF */
    assert_int_equal(parse_m("m v=1 10000000000", 1000000000)->rc, THZ_EINVAL); /* overflow */
    expect_err("m v=1 12a", "column 7: invalid timestamp");
    expect_err("m v=1 1.5", "invalid timestamp");
    expect_err("m v=1 99999999999999999999", "timestamp out of range");
    expect_err("m v=1 1 2", "column 9: unexpected text after the timestamp");
    assert_int_equal(ingest_precision("ns", true), 1);
    assert_int_equal(ingest_precision("s", true), 1000000000);
    assert_int_equal(ingest_precision("h", true), 0);
    assert_int_equal(ingest_precision("h", false), 3600000000000LL);
    assert_int_equal(ingest_precision("n", false), 1);
    assert_int_equal(ingest_precision("u", false), 1000);
    assert_int_equal(ingest_precision("m", false), 60000000000LL);
    assert_int_equal(ingest_precision("x", false), 0);
    assert_int_equal(ingest_precision(NULL, true), 1);
}

static void test_comments_blank(void **st)
{
    res *r = parse("# a comment\n\n   \n  # indented comment\nm v=1 1\r\n\n# end");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 1);
    r = parse("");
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 0);
    r = parse("  m v=1"); /* leading blanks */
    assert_int_equal(r->rc, THZ_OK);
}

static void test_errors(void **st)
{
    expect_err("m v=1\nm v=1\nbad\n", "line 3, column 4: missing fields");
    expect_err("m", "line 1, column 2: missing fields");
    expect_err("m ", "missing fields");
    expect_err(",t=1 v=1", "column 1: missing measurement");
    expect_err("m,=1 v=1", "column 3: missing tag key");
    expect_err("m,t v=1", "column 4: missing '=' after tag key");
    expect_err("m,t= v=1", "column 5: missing tag value");
    expect_err("m,t=a=b v=1", "column 6: unescaped '='");
    expect_err("m,t=1,t=2 v=1", "column 7: duplicate tag key 't'");
    expect_err("m v", "missing '=' after field key");
    expect_err("m =1", "column 3: missing field key");
    expect_err("m v=1,", "missing field key");
    expect_err("m\tv=1 x", "invalid timestamp");
    expect_err("m x=\"a\nb\nc\" 1\nm v=\n", "line 4, column 5: missing field value");
    /* the error names the line; nothing of the request is kept */
    res *r = parse("a v=1\nb v=2\nc v=\"x\n");
    assert_int_equal(r->rc, THZ_EINVAL);
    assert_non_null(strstr(r->err, "line 3"));
    char dev[200] = "m,device=";
    for (int i = 0; i < 129; i++) strcat(dev, "d");
    strcat(dev, " v=1");
    expect_err(dev, "device name longer than 128");
    char met[400] = "m ";
    for (int i = 0; i < 256; i++) strcat(met, "f");
    strcat(met, "=1");
    expect_err(met, "metric name longer than 256");
}

static void test_large_batch(void **st)
{
    /* 5,000 lines (~400 KB, the size a Telegraf flush sends) in one request */
    size_t cap = 1 << 20, l = 0;
    char *s = malloc(cap);
    for (int i = 0; i < 5000; i++)
        l += (size_t)snprintf(
            s + l, cap - l,
            "sensors,device=dev%03d,site=plant-7,line=L%d temp=%d.25,hum=%di,ok=t %lld\n", i % 100,
            i % 3, i, i, 1700000000000000000LL + i);
    assert_true(l < HTTP_BODY_LIMIT_FOR_TEST);
    res *r = parse(s);
    assert_int_equal(r->rc, THZ_OK);
    assert_int_equal(r->b.n, 15000);
    tsdb_point *p = &r->b.pts[3 * 4999];
    assert_str(p->device, p->device_len, "dev099");
    assert_str(p->tags, p->tags_len, "line=L1,site=plant-7");
    assert_true(p->v.u.f == 4999.25);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),      cmocka_unit_test(test_mapping),
        cmocka_unit_test(test_escapes),    cmocka_unit_test(test_values),
        cmocka_unit_test(test_timestamps), cmocka_unit_test(test_comments_blank),
        cmocka_unit_test(test_errors),     cmocka_unit_test(test_large_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
