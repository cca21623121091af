/* fuzz_promql.c - libFuzzer target for the PromQL parser (src/promql/parse.c)
 * and the evaluator behind it: any input either parses, and then prints back
 * as PromQL that parses again to the same printed form, and evaluates (as an
 * instant and as a range query) against a small tsdb (opened once in a
 * temporary directory: three devices, tags, float/int/bool/string metrics,
 * a counter with resets) with a result or a clean error; or it fails with
 * THZ_EINVAL and an error position inside the input. Never a crash, a leak
 * or a hang (a 200 ms query timeout here). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "promql/promql.h"

#define T0 (1795687200LL * 1000000000)

static tsdb *db;

static void db_init(void)
{
    static char dir[] = "/tmp/fuzz-promql-XXXXXX";
    if (!mkdtemp(dir)) abort();
    tsdb_options o = {.dir = dir, .fsync = TSDB_FSYNC_EVERYSEC};
    char err[TSDB_ERR_LEN];
    if (tsdb_open(&o, &db, err) != THZ_OK) abort();
    static const char *devs[] = {"d1", "d2", "d3"}, *tags[] = {"site=a", "site=a,zone=z", ""};
    for (int d = 0; d < 3; d++)
        for (int i = 0; i < 120; i++) {
            int64_t t = T0 + i * 15000000000LL;
            tsdb_point p[4] = {
                {devs[d],
                 2,
                 "temp",
                 4,
                 tags[d],
                 strlen(tags[d]),
                 t,
                 {.type = TSDB_FLOAT, .u.f = 20 + (i % 17) * 0.5 - d}},
                {devs[d],
                 2,
                 "env.count",
                 9,
                 tags[d],
                 strlen(tags[d]),
                 t,
                 {.type = TSDB_INT, .u.i = i % 50}},
                {devs[d],
                 2,
                 "on",
                 2,
                 tags[d],
                 strlen(tags[d]),
                 t,
                 {.type = TSDB_BOOL, .u.b = i & 1}},
                {devs[d],
                 2,
                 "state",
                 5,
                 tags[d],
                 strlen(tags[d]),
                 t,
                 {.type = TSDB_STRING, .u.s = {i & 1 ? "idle" : "run", i & 1 ? 4 : 3}}},
            };
            if (tsdb_write(db, 1, p, 4, NULL, NULL, err) != THZ_OK) abort();
        }
}

static void run(const promql_expr *e, int64_t start, int64_t end, int64_t step, bool range)
{
    promql_result *r = NULL;
    promql_error err;
    thz_err rc = promql_eval(db, 1, e, start, end, step, range, 200, &r, &err);
    if (rc == THZ_OK) {
        thz_buf j = {0};
        if (!r || promql_result_json(r, &j) != THZ_OK) abort();
        thz_buf_free(&j);
        promql_result_free(r);
    } else {
        if (r) abort();
        if (rc != THZ_EINVAL && rc != THZ_ETOOBIG && rc != THZ_ENOMEM) abort();
        if (!err.msg[0]) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!db) db_init();
    promql_expr *e = NULL;
    promql_error err;
    thz_err rc = promql_parse((const char *)data, size, &e, &err);
    if (rc != THZ_OK) {
        if (rc != THZ_EINVAL && rc != THZ_ENOMEM) abort();
        if (e || !err.msg[0]) abort();
        if (err.pos > (int)size) abort();
        return 0;
    }
    /* round trip: print, parse, print the same */
    thz_buf a = {0};
    if (promql_format(e, &a) != THZ_OK) abort();
    promql_expr *e2 = NULL;
    rc = promql_parse((const char *)a.p, a.len, &e2, &err);
    if (rc == THZ_OK) {
        thz_buf b = {0};
        if (promql_format(e2, &b) != THZ_OK) abort();
        if (b.len != a.len || memcmp(a.p, b.p, a.len) != 0) abort();
        if (e2->type != e->type) abort();
        thz_buf_free(&b);
        promql_free(e2);
    } else if (!strstr(err.msg, "nested deeper") && !strstr(err.msg, "longer than")) {
        /* printing adds parentheses, which may pass the depth or size bound;
         * anything else means the printer and the parser disagree */
        abort();
    }
    thz_buf_free(&a);
    run(e, T0 + 1200LL * 1000000000, T0 + 1200LL * 1000000000, 0, false);
    run(e, T0, T0 + 1800LL * 1000000000, 60LL * 1000000000, true);
    promql_free(e);
    return 0;
}
