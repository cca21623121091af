/* fuzz_sql.c - libFuzzer target for the SQL parser (src/query/parse.c):
 * any input either parses, and then prints back as SQL that parses again
 * to the same printed form, or fails with THZ_EINVAL and an error position
 * inside the input; never a crash, a leak or a hang. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "query/query.h"

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
    return 0;
}
