/* query_ops.c - the time-series routes of the REST API: POST /query (SQL,
 * JSON or CSV), GET /devices/{id}/telemetry and GET /devices/{id}/latest.
 * They run on libuv's worker pool (never API_FAST): reads may touch disk. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api/api_int.h"
#include "query/query.h"

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static bool wants_csv(api_call *c)
{
    const char *a = http_req_header(c->req, "accept");
    return a && strcasestr(a, "text/csv") != NULL;
}

/* A query error: 400 invalid_query with the position, 400 query_too_large
 * for a budget; other failures go through api_error. */
static void query_error(api_call *c, thz_err rc, const q_error *e)
{
    if (rc != THZ_EINVAL && rc != THZ_ETOOBIG) {
        c->rc = rc;
        snprintf(c->err, sizeof c->err, "%.190s", e->msg);
        return;
    }
    cJSON *o = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(o, "error");
    if (!err ||
        !cJSON_AddStringToObject(err, "code",
                                 rc == THZ_EINVAL ? "invalid_query" : "query_too_large") ||
        !cJSON_AddStringToObject(err, "message", e->msg) ||
        (e->pos >= 0 && !cJSON_AddNumberToObject(err, "position", e->pos))) {
        cJSON_Delete(o);
        c->rc = THZ_ENOMEM;
        return;
    }
    c->out = o;
    c->status = 400;
    c->rc = THZ_OK;
}

static bool have_db(api_call *c)
{
    if (query_db()) return true;
    c->rc = THZ_EUNSUPPORTED;
    snprintf(c->err, sizeof c->err, "the time-series engine is not running");
    return false;
}

void op_query(api_call *c)
{
    cJSON *sql = cJSON_GetObjectItemCaseSensitive(c->body, "sql");
    if (!cJSON_IsString(sql)) {
        c->rc = THZ_EINVAL;
        snprintf(c->err, sizeof c->err, "the body needs \"sql\": a string");
        return;
    }
    if (!have_db(c)) return;
    q_result *r;
    q_error e;
    thz_err rc =
        query_run(query_db(), c->p.tenant, sql->valuestring, strlen(sql->valuestring), 0, &r, &e);
    if (rc) {
        query_error(c, rc, &e);
        return;
    }
    thz_buf b = {0};
    bool csv = wants_csv(c);
    rc = csv ? q_result_csv(r, &b) : q_result_json(r, &b);
    q_result_free(r);
    if (rc || thz_buf_append(&b, "", 1)) {
        thz_buf_free(&b);
        c->rc = THZ_ENOMEM;
        return;
    }
    c->raw = (char *)b.p;
    c->nraw = b.len - 1;
    c->raw_owned = true;
    c->raw_type = csv ? "text/csv; charset=utf-8" : "application/json";
    c->status = 200;
}

/* ---- per device ---- */

typedef struct dev_series {
    uint64_t ids[256];
    const char *metrics[256];
    size_t n;
} dev_series;

static bool dev_fn(void *ctx, const tsdb_series *s)
{
    dev_series *d = ctx;
    if (d->n < 256) {
        d->ids[d->n] = s->id;
        d->metrics[d->n++] = s->metric;
    }
    return true;
}

/* 404 unless the device is registered or has data. */
static bool device_known(api_call *c, const char *id, dev_series *d)
{
    tsdb_matcher m = {"device", TSDB_EQ, id};
    thz_err rc = tsdb_series_select(query_db(), c->p.tenant, &m, 1, dev_fn, d);
    if (rc && rc != THZ_ENOTFOUND) {
        c->rc = rc;
        return false;
    }
    if (d->n) return true;
    cJSON *dev = NULL;
    rc = reg_device_get(c->r, c->p.tenant, id, &dev);
    cJSON_Delete(dev);
    if (rc) {
        c->rc = rc;
        if (rc == THZ_ENOTFOUND) snprintf(c->err, sizeof c->err, "no device '%s'", id);
        return false;
    }
    return true;
}

/* RFC 3339 or epoch milliseconds. */
static bool parse_time(const char *s, int64_t *ns)
{
    if (!*s) return false;
    bool dig = true;
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p) && !(p == s && *p == '-')) dig = false;
    if (dig) {
        if (strlen(s) > 15) return false;
        *ns = strtoll(s, NULL, 10) * 1000000;
        return true;
    }
    return q_time_parse(s, strlen(s), ns);
}

static void sql_quote(thz_buf *b, const char *s, char q)
{
    thz_buf_append(b, &q, 1);
    for (; *s; s++) {
        if (*s == q) thz_buf_append(b, &q, 1);
        thz_buf_append(b, s, 1);
    }
    thz_buf_append(b, &q, 1);
}

static void bad(api_call *c, const char *msg)
{
    c->rc = THZ_EINVAL;
    snprintf(c->err, sizeof c->err, "%.190s", msg);
}

/* The points of one metric as [[time, value], ...] through SQL. */
static cJSON *metric_points(api_call *c, const char *id, const char *metric, int64_t from,
                            int64_t to, const char *step, const char *agg, bool *ok)
{
    thz_buf b = {0};
    char t[128];
    if (step) {
        snprintf(t, sizeof t, "SELECT bin(time, %s), %s(", step, agg);
        thz_buf_append(&b, t, strlen(t));
        sql_quote(&b, metric, '"');
        thz_buf_append(&b, ")", 1);
    } else {
        const char *s = "SELECT time, ";
        thz_buf_append(&b, s, strlen(s));
        sql_quote(&b, metric, '"');
    }
    const char *s = " FROM telemetry WHERE device = ";
    thz_buf_append(&b, s, strlen(s));
    sql_quote(&b, id, '\'');
    snprintf(t, sizeof t, " AND time >= from_nanoseconds(%lld) AND time < from_nanoseconds(%lld)",
             (long long)from, (long long)to);
    thz_buf_append(&b, t, strlen(t));
    if (!step) {
        s = " AND ";
        thz_buf_append(&b, s, strlen(s));
        sql_quote(&b, metric, '"');
        s = " IS NOT NULL ORDER BY 1";
    } else {
        s = " GROUP BY 1 ORDER BY 1";
    }
    thz_buf_append(&b, s, strlen(s));
    q_result *r = NULL;
    q_error e;
    thz_err rc = query_run(query_db(), c->p.tenant, (const char *)b.p, b.len, 0, &r, &e);
    thz_buf_free(&b);
    cJSON *pts = cJSON_CreateArray();
    *ok = true;
    if (rc == THZ_EINVAL && strstr(e.msg, "does not exist")) return pts; /* no such metric */
    if (rc) {
        *ok = false;
        cJSON_Delete(pts);
        if (rc == THZ_EINVAL || rc == THZ_ETOOBIG)
            bad(c, e.msg);
        else
            c->rc = rc;
        return NULL;
    }
    for (size_t i = 0; i < q_result_nrows(r) && pts; i++) {
        const q_val *row = q_result_row(r, i);
        cJSON *p = cJSON_CreateArray();
        q_time_format(row[0].u.ns, t);
        cJSON_AddItemToArray(p, cJSON_CreateString(t));
        switch (row[1].t) {
        case QV_NUM:
            cJSON_AddItemToArray(p, isfinite(row[1].u.f) ? cJSON_CreateNumber(row[1].u.f)
                                                         : cJSON_CreateNull());
            break;
        case QV_BOOL: cJSON_AddItemToArray(p, cJSON_CreateBool(row[1].u.b)); break;
        case QV_STR: cJSON_AddItemToArray(p, cJSON_CreateString(row[1].u.s.p)); break;
        default: cJSON_AddItemToArray(p, cJSON_CreateNull());
        }
        cJSON_AddItemToArray(pts, p);
    }
    q_result_free(r);
    return pts;
}

/* ---- downsampled reads straight from the engine (points=, agg=minmax,
 * sparklines): tsdb_aggregate_from uses block headers and rollups, so a
 * month of 1 Hz data costs a few thousand cells, not millions of points ---- */

#define MAX_BINS 10000

typedef struct metric_series {
    uint64_t ids[64];
    size_t n;
    const char *metric;
} metric_series;

static bool metric_series_fn(void *ctx, const tsdb_series *s)
{
    metric_series *m = ctx;
    if (s->type != TSDB_STRING && m->n < 64) m->ids[m->n++] = s->id;
    return true;
}

/* Aggregates every numeric series of (device, metric) into nbins bins of
 * step from t0 (all tag sets merged). out has nbins cells. */
static thz_err agg_metric(int64_t tenant, const char *id, const char *metric, int64_t t0,
                          int64_t t1, int64_t step, size_t nbins, tsdb_agg *out)
{
    memset(out, 0, nbins * sizeof *out);
    metric_series ms = {.metric = metric};
    tsdb_matcher m[2] = {{"device", TSDB_EQ, id}, {"metric", TSDB_EQ, metric}};
    thz_err rc = tsdb_series_select(query_db(), tenant, m, 2, metric_series_fn, &ms);
    if (rc && rc != THZ_ENOTFOUND) return rc;
    if (ms.n == 0) return THZ_OK;
    tsdb_agg *tmp = ms.n > 1 ? malloc(nbins * sizeof *tmp) : NULL;
    if (ms.n > 1 && !tmp) return THZ_ENOMEM;
    for (size_t k = 0; k < ms.n; k++) {
        tsdb_agg *dst = k == 0 ? out : tmp;
        rc = tsdb_aggregate_from(query_db(), tenant, ms.ids[k], t0, t1, t0, step, dst, nbins);
        if (rc == THZ_EINVAL) { /* a string series: nothing to aggregate */
            if (k == 0) memset(out, 0, nbins * sizeof *out);
            continue;
        }
        if (rc) break;
        if (k == 0) continue;
        for (size_t i = 0; i < nbins; i++) {
            tsdb_agg *a = &out[i], *b = &tmp[i];
            if (!b->count) continue;
            if (!a->count) {
                *a = *b;
                continue;
            }
            a->count += b->count;
            a->sum += b->sum;
            if (b->min < a->min) a->min = b->min;
            if (b->max > a->max) a->max = b->max;
            if (b->first_ts < a->first_ts) a->first_ts = b->first_ts, a->first = b->first;
            if (b->last_ts >= a->last_ts) a->last_ts = b->last_ts, a->last = b->last;
        }
    }
    free(tmp);
    return rc == THZ_EINVAL ? THZ_OK : rc;
}

static cJSON *num(double v)
{
    return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

/* The bins as [[time, value], ...] (or [time, min, max, avg] for minmax);
 * empty bins are left out. */
static cJSON *bins_json(const tsdb_agg *b, size_t nbins, int64_t t0, int64_t step, const char *agg)
{
    cJSON *pts = cJSON_CreateArray();
    for (size_t i = 0; i < nbins && pts; i++) {
        const tsdb_agg *a = &b[i];
        if (!a->count) continue;
        cJSON *p = cJSON_CreateArray();
        char t[48];
        q_time_format(t0 + (int64_t)i * step, t);
        cJSON_AddItemToArray(p, cJSON_CreateString(t));
        double avg = a->sum / (double)a->count;
        if (strcmp(agg, "minmax") == 0) {
            cJSON_AddItemToArray(p, num(a->min));
            cJSON_AddItemToArray(p, num(a->max));
            cJSON_AddItemToArray(p, num(avg));
        } else {
            double v = strcmp(agg, "min") == 0     ? a->min
                       : strcmp(agg, "max") == 0   ? a->max
                       : strcmp(agg, "sum") == 0   ? a->sum
                       : strcmp(agg, "count") == 0 ? (double)a->count
                       : strcmp(agg, "first") == 0 ? a->first
                       : strcmp(agg, "last") == 0  ? a->last
                                                   : avg;
            cJSON_AddItemToArray(p, num(v));
        }
        cJSON_AddItemToArray(pts, p);
    }
    return pts;
}

void op_device_telemetry(api_call *c)
{
    const char *id = http_req_param(c->req, "id");
    char metric[1024], from[64], to[64], step[32], agg[16];
    int hm = http_req_query(c->req, "metric", metric, sizeof metric);
    int hf = http_req_query(c->req, "from", from, sizeof from);
    int ht = http_req_query(c->req, "to", to, sizeof to);
    int hs = http_req_query(c->req, "step", step, sizeof step);
    int ha = http_req_query(c->req, "agg", agg, sizeof agg);
    char points[16];
    int hp = http_req_query(c->req, "points", points, sizeof points);
    if (hm <= 0 || !*metric) return bad(c, "metric is required (metric=name, several: metric=a,b)");
    if (hf < 0 || ht < 0 || hs < 0 || ha < 0 || hp < 0)
        return bad(c, "a query parameter is too long or badly encoded");
    long npoints = 0;
    if (hp > 0) {
        char *end;
        npoints = strtol(points, &end, 10);
        if (!*points || *end || npoints < 1 || npoints > MAX_BINS)
            return bad(c, "points must be an integer from 1 to 10000");
    }
    bool minmax = ha > 0 && strcmp(agg, "minmax") == 0;
    if (!have_db(c)) return;
    int64_t now = now_ns(), t0 = now - 3600000000000LL, t1 = now + 1;
    if (hf > 0 && !parse_time(from, &t0))
        return bad(c, "from must be RFC 3339 or epoch milliseconds");
    if (ht > 0 && !parse_time(to, &t1)) return bad(c, "to must be RFC 3339 or epoch milliseconds");
    if (t1 <= t0) return bad(c, "to must be after from");
    /* step goes into the SQL as an interval literal: only one passes */
    if (hs > 0 && !q_interval_ns(step, strlen(step)))
        return bad(c, "step must be an interval such as 30s, 5m, 1h or 1d");
    if (ha > 0 && !minmax &&
        !(strcmp(agg, "avg") == 0 || strcmp(agg, "min") == 0 || strcmp(agg, "max") == 0 ||
          strcmp(agg, "sum") == 0 || strcmp(agg, "count") == 0 || strcmp(agg, "first") == 0 ||
          strcmp(agg, "last") == 0))
        return bad(c, "agg must be avg, min, max, sum, count, first, last or minmax");
    /* Downsampled from the engine: points= (step chosen so that at most
     * that many bins cover the range) or minmax (with step=). */
    int64_t dstep = 0;
    size_t nbins = 0;
    if (npoints > 0) {
        dstep = (t1 - t0 + npoints - 1) / npoints;
        if (dstep < 1) dstep = 1;
    } else if (minmax) {
        if (hs <= 0) return bad(c, "agg=minmax needs points= or step=");
        dstep = q_interval_ns(step, strlen(step));
    }
    if (dstep) {
        nbins = (size_t)((t1 - t0 + dstep - 1) / dstep);
        if (nbins > MAX_BINS) return bad(c, "step is too small for the range (at most 10000 bins)");
    }
    dev_series d = {0};
    if (!device_known(c, id, &d)) return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "device", id);
    cJSON *series = NULL;
    int nmetrics = 1;
    for (char *p = metric; *p; p++) nmetrics += *p == ',';
    if (nmetrics > 1) series = cJSON_AddArrayToObject(o, "series");
    char *save = NULL;
    for (char *m = strtok_r(metric, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
        bool ok = true;
        cJSON *pts;
        if (dstep) {
            tsdb_agg *b = malloc(nbins * sizeof *b);
            thz_err rc = b ? agg_metric(c->p.tenant, id, m, t0, t1, dstep, nbins, b) : THZ_ENOMEM;
            pts = rc ? NULL : bins_json(b, nbins, t0, dstep, ha > 0 ? agg : "avg");
            free(b);
            if (rc) {
                c->rc = rc;
                ok = false;
            }
        } else {
            pts = metric_points(c, id, m, t0, t1, hs > 0 ? step : NULL, ha > 0 ? agg : "avg", &ok);
        }
        if (!ok) {
            cJSON_Delete(o);
            return;
        }
        if (series) {
            cJSON *s = cJSON_CreateObject();
            cJSON_AddStringToObject(s, "metric", m);
            cJSON_AddItemToObject(s, "points", pts);
            cJSON_AddItemToArray(series, s);
        } else {
            cJSON_AddStringToObject(o, "metric", m);
            cJSON_AddItemToObject(o, "points", pts);
        }
    }
    c->out = o;
    c->status = 200;
    c->rc = THZ_OK;
}

typedef struct last_v {
    bool got;
    int64_t ts;
    tsdb_value v;
    char s[1024];
} last_v;

static bool lastv_fn(void *ctx, const int64_t *ts, const tsdb_value *v, size_t n)
{
    last_v *l = ctx;
    if (!n) return true;
    l->got = true;
    l->ts = ts[0];
    l->v = v[0];
    if (v[0].type == TSDB_STRING) {
        size_t k = v[0].u.s.n < sizeof l->s - 1 ? v[0].u.s.n : sizeof l->s - 1;
        memcpy(l->s, v[0].u.s.p, k);
        l->s[k] = 0;
    }
    return false;
}

void op_device_latest(api_call *c)
{
    const char *id = http_req_param(c->req, "id");
    if (!have_db(c)) return;
    dev_series d = {0};
    if (!device_known(c, id, &d)) return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "device", id);
    cJSON *ms = cJSON_AddObjectToObject(o, "metrics");
    for (size_t i = 0; i < d.n; i++) {
        last_v l = {0};
        thz_err rc = tsdb_last(query_db(), c->p.tenant, d.ids[i], lastv_fn, &l);
        if (rc || !l.got) continue;
        /* several tag sets of one metric: the newest point wins */
        cJSON *prev = cJSON_GetObjectItemCaseSensitive(ms, d.metrics[i]);
        if (prev) {
            char t[48];
            q_time_format(l.ts, t);
            cJSON *pt = cJSON_GetObjectItemCaseSensitive(prev, "time");
            if (pt && strcmp(pt->valuestring, t) >= 0) continue;
            cJSON_DeleteItemFromObjectCaseSensitive(ms, d.metrics[i]);
        }
        cJSON *e = cJSON_AddObjectToObject(ms, d.metrics[i]);
        char t[48];
        q_time_format(l.ts, t);
        cJSON_AddStringToObject(e, "time", t);
        switch (l.v.type) {
        case TSDB_FLOAT:
            if (isfinite(l.v.u.f))
                cJSON_AddNumberToObject(e, "value", l.v.u.f);
            else
                cJSON_AddNullToObject(e, "value");
            break;
        case TSDB_INT: cJSON_AddNumberToObject(e, "value", (double)l.v.u.i); break;
        case TSDB_BOOL: cJSON_AddBoolToObject(e, "value", l.v.u.b); break;
        case TSDB_STRING: cJSON_AddStringToObject(e, "value", l.s); break;
        }
    }
    c->out = o;
    c->status = 200;
    c->rc = THZ_OK;
}

/* ---- GET /fleet/sparklines ---- */

typedef struct names {
    char *v[256];
    size_t n;
} names;

static bool numeric_metric_fn(void *ctx, const tsdb_series *s)
{
    names *m = ctx;
    if (s->type == TSDB_STRING || m->n == 256) return true;
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->v[i], s->metric) == 0) return true;
    m->v[m->n++] = (char *)s->metric;
    return true;
}

#define SPARK_MAX_IDS 200

void op_fleet_sparklines(api_call *c)
{
    static __thread char ids[HTTP_MAX_URL];
    char minutes[16], points[16];
    int hi = http_req_query(c->req, "ids", ids, sizeof ids);
    int hm = http_req_query(c->req, "minutes", minutes, sizeof minutes);
    int hp = http_req_query(c->req, "points", points, sizeof points);
    if (hi <= 0) return bad(c, "ids is required: device ids separated by commas");
    if (hm < 0 || hp < 0) return bad(c, "a query parameter is too long or badly encoded");
    long nmin = 60, npts = 30;
    char *end;
    if (hm > 0 && ((nmin = strtol(minutes, &end, 10)) < 1 || nmin > 43200 || *end || !*minutes))
        return bad(c, "minutes must be an integer from 1 to 43200");
    if (hp > 0 && ((npts = strtol(points, &end, 10)) < 1 || npts > 1000 || *end || !*points))
        return bad(c, "points must be an integer from 1 to 1000");
    size_t nids = 1;
    for (char *p = ids; *p; p++) nids += *p == ',';
    if (nids > SPARK_MAX_IDS) return bad(c, "at most 200 ids");
    if (!have_db(c)) return;
    int64_t t1 = now_ns() + 1, t0 = t1 - (int64_t)nmin * 60000000000LL;
    int64_t stepns = (t1 - t0 + npts - 1) / npts;
    size_t nbins = (size_t)((t1 - t0 + stepns - 1) / stepns);
    tsdb_agg *b = malloc(nbins * sizeof *b);
    cJSON *o = cJSON_CreateObject(), *devs = cJSON_AddObjectToObject(o, "devices");
    if (!b || !devs) {
        free(b);
        cJSON_Delete(o);
        c->rc = THZ_ENOMEM;
        return;
    }
    char *save = NULL;
    for (char *id = strtok_r(ids, ",", &save); id; id = strtok_r(NULL, ",", &save)) {
        if (cJSON_GetObjectItemCaseSensitive(devs, id)) continue;
        cJSON *dev = NULL;
        if (reg_device_get(c->r, c->p.tenant, id, &dev) != THZ_OK) continue; /* unknown: omitted */
        const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(dev, "attributes");
        const cJSON *mm = cJSON_GetObjectItemCaseSensitive(attrs, "main_metric");
        char metric[257] = "";
        if (cJSON_IsString(mm) && mm->valuestring[0]) {
            snprintf(metric, sizeof metric, "%s", mm->valuestring);
        } else {
            names nm = {0};
            tsdb_matcher m = {"device", TSDB_EQ, id};
            tsdb_series_select(query_db(), c->p.tenant, &m, 1, numeric_metric_fn, &nm);
            for (size_t i = 0; i < nm.n; i++)
                if (!metric[0] || strcmp(nm.v[i], metric) < 0)
                    snprintf(metric, sizeof metric, "%s", nm.v[i]);
        }
        cJSON_Delete(dev);
        cJSON *e = cJSON_AddObjectToObject(devs, id);
        if (!metric[0]) {
            cJSON_AddNullToObject(e, "metric");
            cJSON_AddArrayToObject(e, "points");
            continue;
        }
        cJSON_AddStringToObject(e, "metric", metric);
        thz_err rc = agg_metric(c->p.tenant, id, metric, t0, t1, stepns, nbins, b);
        cJSON *pts = rc ? cJSON_CreateArray() : bins_json(b, nbins, t0, stepns, "avg");
        cJSON_AddItemToObject(e, "points", pts);
    }
    free(b);
    c->out = o;
    c->status = 200;
    c->rc = THZ_OK;
}
