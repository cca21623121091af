/* fuzz_line_protocol.c - libFuzzer target for the line-protocol parser
 * (src/ingest/lp.c). On any input: no crash, no leak; a refusal names a line
 * and column inside the input; every point it makes has a device of 1..128
 * bytes, a metric of 1..256 and the request's timestamp rules. Each point
 * without tags is then written back as line protocol (measurement
 * "telemetry", escaped as the syntax says) and parsed again: it must come
 * back identical (escapes and value types round-trip). */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/ingest.h"

static size_t put_escaped(char *o, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ',' || s[i] == '=' || s[i] == ' ' || s[i] == '\\') o[k++] = '\\';
        o[k++] = s[i];
    }
    return k;
}

static void roundtrip(const tsdb_point *p)
{
    size_t cap = 64 + 2 * (p->device_len + p->metric_len) +
                 (p->v.type == TSDB_STRING ? 2 * (size_t)p->v.u.s.n : 0);
    char *line = malloc(cap);
    if (!line) return;
    size_t l = (size_t)sprintf(line, "telemetry,device=");
    l += put_escaped(line + l, p->device, p->device_len);
    line[l++] = ' ';
    l += put_escaped(line + l, p->metric, p->metric_len);
    line[l++] = '=';
    switch (p->v.type) {
    case TSDB_FLOAT: l += (size_t)sprintf(line + l, "%.17g", p->v.u.f); break;
    case TSDB_INT: l += (size_t)sprintf(line + l, "%" PRId64 "i", p->v.u.i); break;
    case TSDB_BOOL: line[l++] = p->v.u.b ? 't' : 'f'; break;
    case TSDB_STRING:
        line[l++] = '"';
        for (uint32_t i = 0; i < p->v.u.s.n; i++) {
            if (p->v.u.s.p[i] == '"' || p->v.u.s.p[i] == '\\') line[l++] = '\\';
            line[l++] = p->v.u.s.p[i];
        }
        line[l++] = '"';
        break;
    }
    l += (size_t)sprintf(line + l, " %" PRId64, p->ts);

    tsdb_point pts[2];
    char buf[64], err[INGEST_ERR_LEN];
    ingest_batch b;
    ingest_batch_init(&b, pts, 2, buf, sizeof buf);
    if (ingest_lp_parse(&b, (const uint8_t *)line, l, 1, 0, err) != THZ_OK) {
        fprintf(stderr, "round trip refused: %s\n%.*s\n", err, (int)l, line);
        abort();
    }
    const tsdb_point *q = &b.pts[0];
    bool same = b.n == 1 && q->device_len == p->device_len &&
                !memcmp(q->device, p->device, p->device_len) && q->metric_len == p->metric_len &&
                !memcmp(q->metric, p->metric, p->metric_len) && q->tags_len == 0 &&
                q->ts == p->ts && q->v.type == p->v.type;
    if (same) {
        switch (p->v.type) {
        case TSDB_FLOAT: same = memcmp(&q->v.u.f, &p->v.u.f, sizeof(double)) == 0; break;
        case TSDB_INT: same = q->v.u.i == p->v.u.i; break;
        case TSDB_BOOL: same = q->v.u.b == p->v.u.b; break;
        case TSDB_STRING:
            same = q->v.u.s.n == p->v.u.s.n && !memcmp(q->v.u.s.p, p->v.u.s.p, p->v.u.s.n);
            break;
        }
    }
    if (!same) {
        fprintf(stderr, "round trip differs:\n%.*s\n", (int)l, line);
        abort();
    }
    ingest_batch_free(&b);
    free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 18) return 0;
    /* the first byte picks the precision */
    static const int64_t mults[] = {1, 1000, 1000000, 1000000000, 60000000000LL, 3600000000000LL};
    int64_t mult = size ? mults[data[0] % 6] : 1;
    tsdb_point pts[4];
    char buf[32], err[INGEST_ERR_LEN];
    ingest_batch b;
    ingest_batch_init(&b, pts, 4, buf, sizeof buf);
    thz_err rc = ingest_lp_parse(&b, data, size, mult, 123, err);
    if (rc == THZ_EINVAL) {
        if (strncmp(err, "line ", 5) != 0 || b.err_off > size) {
            fprintf(stderr, "bad error: %s\n", err);
            abort();
        }
    } else if (rc == THZ_OK) {
        for (size_t i = 0; i < b.n; i++) {
            const tsdb_point *p = &b.pts[i];
            if (p->device_len < 1 || p->device_len > 128 || p->metric_len < 1 ||
                p->metric_len > INGEST_MAX_NAME || (p->tags_len && !p->tags) ||
                p->v.type < TSDB_FLOAT || p->v.type > TSDB_STRING)
                abort();
            if (p->ts != 123 && p->ts % mult != 0) abort();
            if (!p->tags_len) roundtrip(p);
        }
    }
    ingest_batch_free(&b);
    return 0;
}
