/* export.c - `thinghz export`: telemetry out of a running daemon through
 * POST /api/v1/query (the narrow SQL form, one row per point), device by
 * device in time chunks so that memory stays bounded, as CSV
 * (time,device,metric,value) or InfluxDB line protocol. A chunk that holds
 * more than EXP_ROWS points is halved and asked again. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli_int.h"

#define EXP_ROWS         100000                 /* most rows one chunk query may return */
#define EXP_CHUNK_NS     (86400 * 1000000000ll) /* first chunk: one day */
#define EXP_MIN_CHUNK_NS 1000000ll              /* never split below a millisecond */
#define EXP_MAX_LIST     256                    /* --device / --metric values */

/* ---- pure helpers (unit-tested in tests/unit/cli) ---- */

/* Days since the epoch of a proleptic Gregorian date (no time zone). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

bool cli_export_parse_time(const char *z, int64_t *ns)
{
    if (!z || !*z) return false;
    size_t n = strlen(z);
    if (strspn(z, "0123456789") == n) { /* epoch milliseconds, as the telemetry route */
        if (n > 15) return false;
        *ns = strtoll(z, NULL, 10) * 1000000;
        return true;
    }
    int y, mo, d, h = 0, mi = 0, s = 0, k = 0;
    if (sscanf(z, "%4d-%2d-%2d%n", &y, &mo, &d, &k) != 3 || k != 10) return false;
    const char *p = z + 10;
    int64_t frac = 0;
    if (*p == 'T' || *p == ' ') {
        if (sscanf(p + 1, "%2d:%2d:%2d%n", &h, &mi, &s, &k) != 3 || k != 8) return false;
        p += 9;
        if (*p == '.') {
            int digits = 0;
            for (p++; *p >= '0' && *p <= '9'; p++, digits++)
                if (digits < 9) frac = frac * 10 + (*p - '0');
            if (!digits) return false;
            for (; digits < 9; digits++) frac *= 10;
        }
    }
    int64_t off = 0;
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &k) != 2 || k != 5) return false;
        off = (*p == '+' ? 1 : -1) * (oh * 3600 + om * 60);
        p += 6;
    }
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return false;
    int64_t secs =
        days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + s - off;
    *ns = secs * 1000000000 + frac;
    return true;
}

/* The shortest %g form that reads back as v (Python's repr without ".0"). */
static void fmt_double(char *buf, size_t n, double v)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

static void lp_escape(FILE *f, const char *s, const char *special)
{
    for (; *s; s++) {
        if (strchr(special, *s)) fputc('\\', f);
        fputc(*s, f);
    }
}

static void csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

int cli_export_write(FILE *f, cli_exp_format fmt, const char *zTime, int64_t ns, const char *zDev,
                     const char *zMetric, cli_exp_kind kind, const cJSON *v)
{
    char num[64];
    const char *zVal = num;
    switch (kind) {
    case CLI_EXP_FLOAT:
        if (!cJSON_IsNumber(v)) return -1;
        fmt_double(num, sizeof num, v->valuedouble);
        break;
    case CLI_EXP_INT:
        if (!cJSON_IsNumber(v)) return -1;
        snprintf(num, sizeof num, "%.0f%s", v->valuedouble, fmt == CLI_EXP_LP ? "i" : "");
        break;
    case CLI_EXP_BOOL:
        if (!cJSON_IsBool(v)) return -1;
        zVal = cJSON_IsTrue(v) ? "true" : "false";
        break;
    case CLI_EXP_STRING:
        if (!cJSON_IsString(v)) return -1;
        zVal = v->valuestring;
        break;
    }
    if (fmt == CLI_EXP_CSV) {
        csv_field(f, zTime);
        fputc(',', f);
        csv_field(f, zDev);
        fputc(',', f);
        csv_field(f, zMetric);
        fputc(',', f);
        csv_field(f, zVal);
        fputc('\n', f);
    } else {
        fputs("telemetry,device=", f);
        lp_escape(f, zDev, ", =\\");
        fputc(' ', f);
        lp_escape(f, zMetric, ", =\\");
        fputc('=', f);
        if (kind == CLI_EXP_STRING) {
            fputc('"', f);
            lp_escape(f, zVal, "\"\\");
            fputc('"', f);
        } else {
            fputs(zVal, f);
        }
        fprintf(f, " %lld\n", (long long)ns);
    }
    return ferror(f) ? -1 : 0;
}

/* ---- SQL ---- */

typedef struct sql_buf {
    char *z;
    size_t n, cap;
    bool oom;
} sql_buf;

static void sql_add(sql_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sql_add(sql_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->oom || k < 0) return;
    if (b->n + (size_t)k + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 1024) + (size_t)k;
        char *z = realloc(b->z, cap);
        if (!z) {
            b->oom = true;
            return;
        }
        b->z = z;
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->z + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

/* A SQL string literal ('' escapes a quote). */
static void sql_str(sql_buf *b, const char *s)
{
    sql_add(b, "'");
    for (const char *q; (q = strchr(s, '\'')); s = q + 1) sql_add(b, "%.*s''", (int)(q - s), s);
    sql_add(b, "%s'", s);
}

static void sql_in(sql_buf *b, const char *col, char **v, int n)
{
    if (!n) return;
    sql_add(b, " AND %s IN (", col);
    for (int i = 0; i < n; i++) {
        if (i) sql_add(b, ", ");
        sql_str(b, v[i]);
    }
    sql_add(b, ")");
}

static void sql_ts(sql_buf *b, const char *op, int64_t ns)
{
    time_t s = (time_t)(ns >= 0 ? ns / 1000000000 : (ns - 999999999) / 1000000000);
    int64_t frac = ns - (int64_t)s * 1000000000;
    struct tm tm;
    gmtime_r(&s, &tm);
    sql_add(b, " AND time %s TIMESTAMP '%04d-%02d-%02d %02d:%02d:%02d.%09lldZ'", op,
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
            (long long)frac);
}

/* ---- the command ---- */

typedef struct exp_state {
    cli_ctx *c;
    FILE *out;
    cli_exp_format fmt;
    char *devs[EXP_MAX_LIST], *metrics[EXP_MAX_LIST];
    int ndev, nmetric;
    int64_t from, to; /* [from, to) */
    uint64_t points;
    int done, total;
    bool tty;
    struct timespec t0, last_draw;
} exp_state;

static double since(const struct timespec *a)
{
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a->tv_sec) + (double)(b.tv_nsec - a->tv_nsec) / 1e9;
}

static void progress(exp_state *s, bool force)
{
    if (!s->tty || (!force && since(&s->last_draw) < 0.1)) return;
    clock_gettime(CLOCK_MONOTONIC, &s->last_draw);
    double el = since(&s->t0);
    int w = 30, fill = s->total ? s->done * w / s->total : w;
    fprintf(stderr, "\r[%.*s%*s] %d/%d devices, %llu points, %.0f points/s ", fill,
            "==============================", w - fill, "", s->done, s->total,
            (unsigned long long)s->points, el > 0 ? (double)s->points / el : 0.0);
    fflush(stderr);
}

/* Runs sql; *rows is the result's rows (owned by r). 1: too many rows
 * (the chunk must be split), 0: ok, -1: failed (printed). */
static int run_sql(exp_state *s, const char *sql, cli_resp *r, const cJSON **rows)
{
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "sql", sql);
    int rc = cli_http(s->c, "POST", "/api/v1/query", body, true, 120, r);
    cJSON_Delete(body);
    if (rc != CLI_OK) return -1;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(r->json, "error");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
    if (r->status == 400 && cJSON_IsString(code) && !strcmp(code->valuestring, "query_too_large"))
        return 1;
    *rows = cJSON_GetObjectItemCaseSensitive(r->json, "rows");
    if (r->status != 200 || !cJSON_IsArray(*rows)) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
        fprintf(stderr, "%sthinghz: export: %s (HTTP %ld)\n", s->tty ? "\n" : "",
                cJSON_IsString(m) ? m->valuestring : "the query failed", r->status);
        return -1;
    }
    return cJSON_GetArraySize(*rows) > EXP_ROWS ? 1 : 0;
}

/* Writes the points of dev in [t0, t1): CLI_OK or CLI_FAIL. */
static int export_range(exp_state *s, const char *dev, int64_t t0, int64_t t1)
{
    int64_t chunk = EXP_CHUNK_NS;
    for (int64_t a = t0; a < t1;) {
        int64_t b = t1 - a > chunk ? a + chunk : t1;
        sql_buf q = {0};
        sql_add(&q,
                "SELECT time, measure_name, measure_value::double, measure_value::bigint, "
                "measure_value::boolean, measure_value::varchar FROM telemetry WHERE device = ");
        sql_str(&q, dev);
        sql_in(&q, "measure_name", s->metrics, s->nmetric);
        sql_ts(&q, ">=", a);
        sql_ts(&q, "<", b);
        sql_add(&q, " ORDER BY time, measure_name LIMIT %d", EXP_ROWS + 1);
        if (q.oom) {
            free(q.z);
            fprintf(stderr, "thinghz: export: out of memory\n");
            return CLI_FAIL;
        }
        cli_resp r;
        const cJSON *rows = NULL;
        int k = run_sql(s, q.z, &r, &rows);
        free(q.z);
        if (k == 1 && b - a > EXP_MIN_CHUNK_NS) { /* too many: halve and ask again */
            cli_resp_free(&r);
            chunk = (b - a) / 2;
            continue;
        }
        if (k != 0) {
            if (k == 1)
                fprintf(stderr, "thinghz: export: more than %d points of %s in one millisecond\n",
                        EXP_ROWS, dev);
            cli_resp_free(&r);
            return CLI_FAIL;
        }
        const cJSON *row;
        cJSON_ArrayForEach(row, rows)
        {
            const cJSON *t = cJSON_GetArrayItem(row, 0), *m = cJSON_GetArrayItem(row, 1);
            int64_t ns;
            if (!cJSON_IsString(t) || !cJSON_IsString(m) ||
                !cli_export_parse_time(t->valuestring, &ns))
                continue;
            for (int kind = 0; kind < 4; kind++) {
                const cJSON *v = cJSON_GetArrayItem(row, 2 + kind);
                if (!v || cJSON_IsNull(v)) continue;
                if (cli_export_write(s->out, s->fmt == CLI_EXP_CSV ? CLI_EXP_CSV : CLI_EXP_LP,
                                     t->valuestring, ns, dev, m->valuestring, (cli_exp_kind)kind,
                                     v) != 0) {
                    fprintf(stderr, "thinghz: export: write failed: %s\n", strerror(errno));
                    cli_resp_free(&r);
                    return CLI_FAIL;
                }
                s->points++;
                break;
            }
        }
        int got = cJSON_GetArraySize(rows);
        cli_resp_free(&r);
        progress(s, false);
        a = b;
        /* Sparse data: widen the chunk again (bounded by the row check). */
        if (got < EXP_ROWS / 4 && chunk < EXP_CHUNK_NS * 64) chunk *= 2;
    }
    return CLI_OK;
}

static const char *const export_usage =
    "usage: thinghz export [--device ID]... [--metric M]... [--from T] [--to T]\n"
    "                      [--format csv|lp] [--output FILE]\n"
    "  T: RFC 3339 (2026-11-26T10:00:00Z), a date (2026-11-26) or epoch milliseconds";

int cli_cmd_export(cli_ctx *c, int argc, char **argv)
{
    static exp_state st;
    exp_state *s = &st;
    s->c = c;
    s->fmt = CLI_EXP_CSV;
    s->from = INT64_MIN;
    s->to = INT64_MAX;
    const char *zOut = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return cli_usage_error("export: %s needs a value\n%s", a, export_usage);
        i++;
        if (!strcmp(a, "--device") && s->ndev < EXP_MAX_LIST)
            s->devs[s->ndev++] = (char *)v;
        else if (!strcmp(a, "--metric") && s->nmetric < EXP_MAX_LIST)
            s->metrics[s->nmetric++] = (char *)v;
        else if (!strcmp(a, "--from") && cli_export_parse_time(v, &s->from))
            ;
        else if (!strcmp(a, "--to") && cli_export_parse_time(v, &s->to))
            ;
        else if (!strcmp(a, "--format") && (!strcmp(v, "csv") || !strcmp(v, "lp")))
            s->fmt = v[0] == 'c' ? CLI_EXP_CSV : CLI_EXP_LP;
        else if (!strcmp(a, "--output"))
            zOut = v;
        else
            return cli_usage_error("export: bad argument '%s %s'\n%s", a, v, export_usage);
    }
    if (s->from >= s->to) return cli_usage_error("export: --from must be before --to");
    s->tty = isatty(STDERR_FILENO);
    clock_gettime(CLOCK_MONOTONIC, &s->t0);

    /* The devices with data in the range, and their first and last points. */
    sql_buf q = {0};
    sql_add(&q, "SELECT device, min(time), max(time) FROM telemetry WHERE true");
    sql_in(&q, "device", s->devs, s->ndev);
    sql_in(&q, "measure_name", s->metrics, s->nmetric);
    if (s->from != INT64_MIN) sql_ts(&q, ">=", s->from);
    if (s->to != INT64_MAX) sql_ts(&q, "<", s->to);
    sql_add(&q, " GROUP BY device ORDER BY device");
    cli_resp r;
    const cJSON *rows = NULL;
    int k = q.oom ? -1 : run_sql(s, q.z, &r, &rows);
    free(q.z);
    if (k != 0) {
        if (k == 1) fprintf(stderr, "thinghz: export: too many devices to list in one query\n");
        if (k != -1 || !q.oom) cli_resp_free(&r);
        return CLI_FAIL;
    }
    s->out = stdout;
    if (zOut && !(s->out = fopen(zOut, "w"))) {
        fprintf(stderr, "thinghz: %s: %s\n", zOut, strerror(errno));
        cli_resp_free(&r);
        return CLI_FAIL;
    }
    if (s->fmt == CLI_EXP_CSV) fputs("time,device,metric,value\n", s->out);
    s->total = cJSON_GetArraySize(rows);
    int rc = CLI_OK;
    const cJSON *row;
    cJSON_ArrayForEach(row, rows)
    {
        const cJSON *d = cJSON_GetArrayItem(row, 0), *lo = cJSON_GetArrayItem(row, 1),
                    *hi = cJSON_GetArrayItem(row, 2);
        int64_t t0, t1;
        if (!cJSON_IsString(d) || !cJSON_IsString(lo) || !cJSON_IsString(hi) ||
            !cli_export_parse_time(lo->valuestring, &t0) ||
            !cli_export_parse_time(hi->valuestring, &t1)) {
            s->done++;
            continue;
        }
        if ((rc = export_range(s, d->valuestring, t0, t1 + 1)) != CLI_OK) break;
        s->done++;
        progress(s, false);
    }
    cli_resp_free(&r);
    progress(s, true);
    if (s->tty) fputc('\n', stderr);
    if (fflush(s->out) != 0 || (zOut && fclose(s->out) != 0)) {
        fprintf(stderr, "thinghz: %s: %s\n", zOut ? zOut : "stdout", strerror(errno));
        rc = CLI_FAIL;
    }
    double el = since(&s->t0);
    fprintf(stderr, "%s %llu points of %d/%d devices in %.1f s (%.0f points/s)%s%s\n",
            rc == CLI_OK ? "exported" : "export failed after", (unsigned long long)s->points,
            s->done, s->total, el, el > 0 ? (double)s->points / el : 0.0, zOut ? " to " : "",
            zOut ? zOut : "");
    return rc;
}
