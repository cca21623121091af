/* result.c - query results: accessors, the JSON and CSV writers, and the
 * daemon's engine handle for the HTTP routes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "query/plan.h"

static tsdb *DB;

thz_err query_start(tsdb *db)
{
    DB = db;
    return THZ_OK;
}

tsdb *query_db(void)
{
    return DB;
}

size_t q_result_ncols(const q_result *r)
{
    return r->ncols;
}
const char *q_result_colname(const q_result *r, size_t col)
{
    return col < r->ncols ? r->cols[col] : NULL;
}
size_t q_result_nrows(const q_result *r)
{
    return r->nrows;
}
const q_val *q_result_row(const q_result *r, size_t row)
{
    return row < r->nrows ? &r->vals[row * r->width] : NULL;
}
const char *q_result_path(const q_result *r)
{
    return r->path ? r->path : "";
}
void q_result_free(q_result *r)
{
    if (!r) return;
    free(r->vals);
    q_arena_free(r->ar);
    free(r);
}

static thz_err put(thz_buf *b, const char *s, size_t n)
{
    return thz_buf_append(b, s, n);
}

static thz_err json_str(thz_buf *b, const char *s, size_t n)
{
    thz_err rc = put(b, "\"", 1);
    for (size_t i = 0; i < n && !rc; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        if (c == '"' || c == '\\') {
            e[0] = '\\', e[1] = (char)c;
            rc = put(b, e, 2);
        } else if (c < 0x20) {
            snprintf(e, sizeof e, "\\u%04x", c);
            rc = put(b, e, 6);
        } else {
            rc = put(b, (const char *)&c, 1);
        }
    }
    return rc ? rc : put(b, "\"", 1);
}

static size_t fmt_num(double f, char *t)
{
    if (f == floor(f) && fabs(f) < 1e15) return (size_t)snprintf(t, 32, "%.0f", f == 0 ? 0.0 : f);
    int n = snprintf(t, 32, "%.15g", f);
    if (strtod(t, NULL) != f) n = snprintf(t, 32, "%.17g", f);
    return (size_t)n;
}

static thz_err json_val(thz_buf *b, const q_val *v)
{
    char t[48];
    size_t n;
    switch (v->t) {
    case QV_NUM:
        if (!isfinite(v->u.f)) return put(b, "null", 4);
        n = fmt_num(v->u.f, t);
        return put(b, t, n);
    case QV_STR: return json_str(b, v->u.s.p, v->u.s.n);
    case QV_TIME: n = q_time_format(v->u.ns, t); return json_str(b, t, n);
    case QV_BOOL: return v->u.b ? put(b, "true", 4) : put(b, "false", 5);
    case QV_INTERVAL: /* nanoseconds */
        n = (size_t)snprintf(t, sizeof t, "%lld", (long long)v->u.ns);
        return put(b, t, n);
    default: return put(b, "null", 4);
    }
}

thz_err q_result_json(const q_result *r, thz_buf *b)
{
    thz_err rc = put(b, "{\"columns\":[", 12);
    for (size_t c = 0; c < r->ncols && !rc; c++) {
        if (c) rc = put(b, ",", 1);
        if (!rc) rc = json_str(b, r->cols[c], strlen(r->cols[c]));
    }
    if (!rc) rc = put(b, "],\"rows\":[", 10);
    for (size_t i = 0; i < r->nrows && !rc; i++) {
        rc = put(b, i ? ",[" : "[", i ? 2 : 1);
        const q_val *row = q_result_row(r, i);
        for (size_t c = 0; c < r->ncols && !rc; c++) {
            if (c) rc = put(b, ",", 1);
            if (!rc) rc = json_val(b, &row[c]);
        }
        if (!rc) rc = put(b, "]", 1);
    }
    return rc ? rc : put(b, "]}", 2);
}

static thz_err csv_field(thz_buf *b, const char *s, size_t n)
{
    bool q = false;
    for (size_t i = 0; i < n; i++)
        if (s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n') q = true;
    if (!q) return put(b, s, n);
    thz_err rc = put(b, "\"", 1);
    for (size_t i = 0; i < n && !rc; i++) rc = s[i] == '"' ? put(b, "\"\"", 2) : put(b, s + i, 1);
    return rc ? rc : put(b, "\"", 1);
}

thz_err q_result_csv(const q_result *r, thz_buf *b)
{
    thz_err rc = THZ_OK;
    for (size_t c = 0; c < r->ncols && !rc; c++) {
        if (c) rc = put(b, ",", 1);
        if (!rc) rc = csv_field(b, r->cols[c], strlen(r->cols[c]));
    }
    if (!rc) rc = put(b, "\r\n", 2);
    for (size_t i = 0; i < r->nrows && !rc; i++) {
        const q_val *row = q_result_row(r, i);
        for (size_t c = 0; c < r->ncols && !rc; c++) {
            if (c) rc = put(b, ",", 1);
            if (rc) break;
            char t[48];
            size_t n;
            const q_val *v = &row[c];
            switch (v->t) {
            case QV_NUM:
                if (isfinite(v->u.f)) n = fmt_num(v->u.f, t), rc = put(b, t, n);
                break;
            case QV_STR: rc = csv_field(b, v->u.s.p, v->u.s.n); break;
            case QV_TIME: n = q_time_format(v->u.ns, t), rc = put(b, t, n); break;
            case QV_BOOL: rc = v->u.b ? put(b, "true", 4) : put(b, "false", 5); break;
            case QV_INTERVAL:
                n = (size_t)snprintf(t, sizeof t, "%lld", (long long)v->u.ns);
                rc = put(b, t, n);
                break;
            default: break;
            }
        }
        if (!rc) rc = put(b, "\r\n", 2);
    }
    return rc;
}
