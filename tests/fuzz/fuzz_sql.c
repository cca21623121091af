/* fuzz_sql.c - libFuzzer target for the SQL parser (src/query/parse.c) and
 * the planner/executor behind it: any input either parses, and then prints
 * back as SQL that parses again to the same printed form, and runs against
 * a small tsdb (opened once in a temporary directory: three devices, tags,
 * float/int/bool/string metrics) with a result or a clean error; or it fails
 * with THZ_EINVAL and an error position inside the input. Never a crash, a
 * leak or a hang (the query budgets are small here). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "query/query.h"

static tsdb *db;

static void db_init(void)
{
    static char dir[] = "/tmp/fuzz-sql-XXXXXX";
    if (!mkdtemp(dir)) abort();
    tsdb_options o = {.dir = dir, .fsync = TSDB_FSYNC_EVERYSEC};
    char err[TSDB_ERR_LEN];
    if (tsdb_open(&o, &db, err) != THZ_OK) abort();
    int64_t t0 = 1795687200LL * 1000000000;
    static const char *devs[] = {"d1", "d2", "d3"}, *tags[] = {"site=a", "site=a,zone=z", ""};
    for (int d = 0; d < 3; d++)
        for (int i = 0; i < 200; i++) {
            tsdb_point p[4] = {
                {devs[d],
                 2,
                 "temperature",
                 11,
                 tags[d],
                 strlen(tags[d]),
                 t0 + i * 15000000000LL,
                 {.type = TSDB_FLOAT, .u.f = 20 + (i % 17) * 0.5 - d}},
                {devs[d],
                 2,
                 "env.count",
                 9,
                 tags[d],
                 strlen(tags[d]),
                 t0 + i * 30000000000LL,
                 {.type = TSDB_INT, .u.i = i}},
                {devs[d],
                 2,
                 "on",
                 2,
                 tags[d],
                 strlen(tags[d]),
                 t0 + i * 60000000000LL,
                 {.type = TSDB_BOOL, .u.b = i & 1}},
                {devs[d],
                 2,
                 "state",
                 5,
                 tags[d],
                 strlen(tags[d]),
                 t0 + i * 90000000000LL,
                 {.type = TSDB_STRING, .u.s = {i & 1 ? "idle" : "run", i & 1 ? 4 : 3}}},
            };
            if (tsdb_write(db, 1, p, 4, NULL, NULL, err) != THZ_OK) abort();
        }
    query_set_limits(200, 5000, 200000);
}

static void print_items(const q_query *q, thz_buf *b)
{
    for (int i = 0; i < q->nitems; i++) {
        q_expr_sql(q->items[i].e, b);
        thz_buf_append(b, ",", 1);
    }
    if (q->where) q_expr_sql(q->where, b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!db) db_init();
    q_query *q = NULL;
    q_error e;
    thz_err rc = q_parse((const char *)data, size, &q, &e);
    if (rc != THZ_OK) {
        if (rc != THZ_EINVAL && rc != THZ_ENOMEM) abort();
        if (q) abort();
        if (e.pos > (int)size) abort();
        return 0;
    }
    /* round trip: SELECT <items> FROM t WHERE <where> */
    thz_buf a = {0}, s = {0};
    print_items(q, &a);
    thz_buf_append(&s, "SELECT ", 7);
    for (int i = 0; i < q->nitems; i++) {
        if (i) thz_buf_append(&s, ", ", 2);
        q_expr_sql(q->items[i].e, &s);
    }
    thz_buf_append(&s, " FROM t", 7);
    if (q->where) {
        thz_buf_append(&s, " WHERE ", 7);
        q_expr_sql(q->where, &s);
    }
    q_query *q2 = NULL;
    if (q_parse((const char *)s.p, s.len, &q2, &e) == THZ_OK) {
        thz_buf b2 = {0};
        print_items(q2, &b2);
        if (b2.len != a.len || memcmp(b2.p, a.p, a.len) != 0) abort();
        thz_buf_free(&b2);
        q_free(q2);
    }
    thz_buf_free(&a);
    thz_buf_free(&s);
    q_free(q);
    /* and run it */
    q_result *r = NULL;
    rc = query_run(db, 1, (const char *)data, size, 1795700000LL * 1000000000, &r, &e);
    if (rc == THZ_OK) {
        thz_buf j = {0}, c = {0};
        if (q_result_json(r, &j) != THZ_OK || q_result_csv(r, &c) != THZ_OK) abort();
        thz_buf_free(&j);
        thz_buf_free(&c);
        q_result_free(r);
    } else {
        if (r) abort();
        if (rc != THZ_EINVAL && rc != THZ_ETOOBIG && rc != THZ_ENOMEM) abort();
        if (e.pos > (int)size) abort();
    }
    return 0;
}
