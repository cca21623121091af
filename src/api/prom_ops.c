/* prom_ops.c - the Prometheus-compatible HTTP API under /prometheus/api/v1/
 * (query, query_range, series, labels, label/{name}/values, metadata,
 * status/buildinfo) over src/promql, for Grafana's Prometheus data source
 * and promtool. Its own middleware, because Prometheus clients differ from
 * the REST API's: parameters come as a query string or a form body,
 * credentials as a bearer token or HTTP Basic email:password (cached for
 * 60 s, argon2id being slow), and errors in Prometheus' shape. Queries run
 * on libuv's worker pool. */
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "api/api_int.h"
#include "core/base64.h"
#include "core/hmap.h"
#include "core/version.h"
#include "metrics/metrics.h"
#include "net/net.h"
#include "promql/promql.h"
#include "query/query.h"

#define PROM_MAX_PARAMS  128 /* form fields of one request */
#define PROM_MAX_MATCH   64  /* match[] selectors */
#define PROM_CACHE_SLOTS 256 /* Basic credentials remembered */
#define PROM_CACHE_MS    60000
#define PROM_MAX_VALUES  100000 /* label values or series answered (limit= may lower it) */

static registry *R;

typedef enum prom_op {
    OP_QUERY = 1,
    OP_QUERY_RANGE,
    OP_SERIES,
    OP_LABELS,
    OP_LABEL_VALUES,
    OP_METADATA,
    OP_BUILDINFO,
    OP_EXEMPLARS, /* thinghz stores no exemplars: always an empty list */
    OP_RULES      /* nor recording or alerting rules: no groups */
} prom_op;

typedef struct prom_call {
    uv_work_t work;
    http_request *req;
    prom_op op;
    reg_principal p;
    bool basic; /* the credentials still need the password check */
    char email[256];
    char *password; /* malloc'd, cleansed and freed with the call */
    uint8_t pwhash[32];
    /* the decoded parameters (one buffer, pairs of NUL-terminated strings) */
    char *pbuf;
    const char *key[PROM_MAX_PARAMS], *val[PROM_MAX_PARAMS];
    int np;
    /* the answer */
    int status;
    bool unauth;
    thz_buf out;
} prom_call;

/* ---- the Basic credentials cache ---- */

typedef struct cache_slot {
    char email[256];
    uint8_t pwhash[32];
    reg_principal p;
    int64_t expires; /* ms, monotonic; 0: empty */
} cache_slot;

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static cache_slot cache[PROM_CACHE_SLOTS];

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool cache_get(const char *email, const uint8_t h[32], reg_principal *p)
{
    int64_t now = mono_ms();
    bool hit = false;
    pthread_mutex_lock(&cache_mu);
    for (int i = 0; i < PROM_CACHE_SLOTS; i++) {
        cache_slot *s = &cache[i];
        if (s->expires > now && strcmp(s->email, email) == 0 &&
            CRYPTO_memcmp(s->pwhash, h, 32) == 0) {
            *p = s->p;
            hit = true;
            break;
        }
    }
    pthread_mutex_unlock(&cache_mu);
    return hit;
}

static void cache_put(const char *email, const uint8_t h[32], const reg_principal *p)
{
    int64_t now = mono_ms();
    pthread_mutex_lock(&cache_mu);
    /* the same email's slot, else an expired one, else the oldest */
    int pick = 0;
    for (int i = 0; i < PROM_CACHE_SLOTS; i++) {
        if (strcmp(cache[i].email, email) == 0) {
            pick = i;
            break;
        }
        if (cache[i].expires < cache[pick].expires) pick = i;
    }
    cache_slot *s = &cache[pick];
    snprintf(s->email, sizeof s->email, "%s", email);
    memcpy(s->pwhash, h, 32);
    s->p = *p;
    s->expires = now + PROM_CACHE_MS;
    pthread_mutex_unlock(&cache_mu);
}

/* ---- responses ---- */

static void put(prom_call *c, const char *s)
{
    thz_buf_append(&c->out, s, strlen(s));
}

static const char *etype_name(promql_ekind k)
{
    switch (k) {
    case PROMQL_ERR_PARSE: return "bad_data";
    case PROMQL_ERR_EXEC:
    case PROMQL_ERR_LIMIT: return "execution";
    case PROMQL_ERR_TIMEOUT: return "timeout";
    default: return "internal";
    }
}

static int etype_status(const char *type)
{
    if (strcmp(type, "bad_data") == 0) return 400;
    if (strcmp(type, "execution") == 0) return 422;
    if (strcmp(type, "timeout") == 0 || strcmp(type, "unavailable") == 0) return 503;
    if (strcmp(type, "unauthorized") == 0) return 401;
    if (strcmp(type, "forbidden") == 0) return 403;
    return 500;
}

static void error_out(prom_call *c, const char *type, const char *msg)
{
    c->out.len = 0;
    c->status = etype_status(type);
    put(c, "{\"status\":\"error\",\"errorType\":\"");
    put(c, type);
    put(c, "\",\"error\":");
    promql_json_str(&c->out, msg, strlen(msg));
    put(c, "}");
}

static void bad_param(prom_call *c, const char *name, const char *why)
{
    char m[400];
    snprintf(m, sizeof m, "invalid parameter \"%s\": %s", name, why);
    error_out(c, "bad_data", m);
}

static void reply(http_request *req, prom_call *c)
{
    http_response *res = http_req_response(req);
    if (c->unauth) http_res_header(res, "WWW-Authenticate", "Basic realm=\"thinghz\"");
    if (c->out.len == 0 && !c->status) error_out(c, "internal", "out of memory");
    http_res_status(res, c->status ? c->status : 200);
    if (http_res_header(res, "Content-Type", "application/json") ||
        http_res_body(res, c->out.p, c->out.len))
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
}

static void call_free(prom_call *c)
{
    if (c->password) {
        OPENSSL_cleanse(c->password, strlen(c->password));
        free(c->password);
    }
    free(c->pbuf);
    thz_buf_free(&c->out);
    free(c);
}

/* ---- parameters ---- */

static int hexv(int ch)
{
    return isdigit(ch) ? ch - '0' : isxdigit(ch) ? tolower(ch) - 'a' + 10 : -1;
}

/* Decodes one form component (%XX, '+' as space) in place; false on a bad
 * escape or a NUL byte. */
static bool form_decode(char *s, size_t n, size_t *outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '+') {
            ch = ' ';
        } else if (ch == '%') {
            if (i + 2 >= n) return false;
            int a = hexv((unsigned char)s[i + 1]), b = hexv((unsigned char)s[i + 2]);
            if (a < 0 || b < 0) return false;
            ch = (char)(a * 16 + b);
            if (ch == 0) return false;
            i += 2;
        }
        s[o++] = ch;
    }
    s[o] = 0;
    *outlen = o;
    return true;
}

/* Splits "a=b&c=d" (at p, n bytes, copied into the call's buffer) into the
 * parameter table. */
static bool form_parse(prom_call *c, char *buf, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && buf[j] != '&') j++;
        if (j > i) {
            if (c->np == PROM_MAX_PARAMS) return false;
            buf[j] = 0;
            char *eq = memchr(buf + i, '=', j - i);
            char *k = buf + i, *v = eq ? eq + 1 : buf + j;
            size_t kl, vl;
            if (eq) *eq = 0;
            if (!form_decode(k, strlen(k), &kl) || !form_decode(v, strlen(v), &vl)) return false;
            c->key[c->np] = k;
            c->val[c->np++] = v;
        }
        i = j + 1;
    }
    return true;
}

static const char *param(prom_call *c, const char *name)
{
    for (int i = 0; i < c->np; i++)
        if (strcmp(c->key[i], name) == 0) return c->val[i];
    return NULL;
}

static bool form_body(http_request *req)
{
    const char *ct = http_req_header(req, "content-type");
    return ct && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0;
}

/* Collects the query string and a form body into c; false (c answered) on
 * malformed input. */
static bool params_load(prom_call *c)
{
    const char *q = http_req_query_string(c->req);
    size_t ql = strlen(q), bl = 0;
    const uint8_t *body = NULL;
    if (http_req_method(c->req) == HTTP_POST && form_body(c->req))
        body = http_req_body(c->req, &bl);
    c->pbuf = malloc(ql + bl + 2);
    if (!c->pbuf) {
        error_out(c, "internal", "out of memory");
        return false;
    }
    memcpy(c->pbuf, q, ql);
    c->pbuf[ql] = '&';
    if (bl) memcpy(c->pbuf + ql + 1, body, bl);
    c->pbuf[ql + 1 + bl] = 0;
    if (memchr(c->pbuf, 0, ql + 1 + bl) || !form_parse(c, c->pbuf, ql + 1 + bl)) {
        error_out(c, "bad_data", "malformed parameters (bad percent-encoding, or too many)");
        return false;
    }
    return true;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A time parameter: float Unix seconds or RFC 3339, rounded to the
 * millisecond as Prometheus does. */
static bool parse_time(const char *s, int64_t *ns)
{
    if (!*s) return false;
    char *end;
    double v = strtod(s, &end);
    if (!*end && isfinite(v)) {
        if (fabs(v) > 9.2e9) return false;
        *ns = (int64_t)llround(v * 1000) * 1000000;
        return true;
    }
    if (!q_time_parse(s, strlen(s), ns)) return false;
    *ns = *ns / 1000000 * 1000000;
    return true;
}

/* A time parameter with a default; false (c answered) when malformed. */
static bool time_param(prom_call *c, const char *name, int64_t def, bool required, int64_t *ns)
{
    const char *s = param(c, name);
    if (!s || !*s) {
        if (required) {
            bad_param(c, name, "missing");
            return false;
        }
        *ns = def;
        return true;
    }
    if (!parse_time(s, ns)) {
        char why[200];
        snprintf(why, sizeof why, "cannot parse \"%.100s\" to a valid timestamp", s);
        bad_param(c, name, why);
        return false;
    }
    return true;
}

/* ---- the operations (worker thread) ---- */

static bool have_db(prom_call *c)
{
    if (query_db()) return true;
    error_out(c, "unavailable", "the time-series engine is not running");
    return false;
}

static void run_query(prom_call *c, bool range)
{
    const char *q = param(c, "query");
    if (!q) {
        bad_param(c, "query", "missing");
        return;
    }
    int64_t start, end, step = 0, timeout_ms = 0;
    if (range) {
        if (!time_param(c, "start", 0, true, &start) || !time_param(c, "end", 0, true, &end))
            return;
        const char *st = param(c, "step");
        if (!st) {
            bad_param(c, "step", "missing");
            return;
        }
        if (!promql_duration(st, strlen(st), &step) || step <= 0) {
            bad_param(c, "step",
                      "zero or negative query resolution step widths are not accepted. Try a "
                      "positive integer");
            return;
        }
        step = step / 1000000 * 1000000;
        if (step <= 0) step = 1000000;
        if (end < start) {
            bad_param(c, "end", "end timestamp must not be before start time");
            return;
        }
        if ((end - start) / step + 1 > PROMQL_MAX_STEPS) {
            error_out(c, "bad_data",
                      "exceeded maximum resolution of 11,000 points per timeseries. Try "
                      "decreasing the query resolution (?step=XX)");
            return;
        }
    } else {
        if (!time_param(c, "time", now_ns() / 1000000 * 1000000, false, &start)) return;
        end = start;
    }
    const char *to = param(c, "timeout");
    if (to && *to) {
        int64_t ns;
        if (!promql_duration(to, strlen(to), &ns)) {
            bad_param(c, "timeout", "not a duration");
            return;
        }
        timeout_ms = ns / 1000000;
        if (timeout_ms <= 0) timeout_ms = 1;
    }
    promql_expr *e;
    promql_error err;
    thz_err rc = promql_parse(q, strlen(q), &e, &err);
    if (rc) {
        if (rc == THZ_ENOMEM)
            error_out(c, "internal", "out of memory");
        else
            bad_param(c, "query", err.msg);
        return;
    }
    if (!have_db(c)) {
        promql_free(e);
        return;
    }
    promql_result *r;
    double t0 = metrics_now();
    rc = promql_eval(query_db(), c->p.tenant, e, start, end, step, range, timeout_ms, &r, &err);
    metrics_observe_query("promql", metrics_now() - t0);
    promql_free(e);
    if (rc) {
        error_out(c, etype_name(err.kind), err.msg);
        return;
    }
    put(c, "{\"status\":\"success\",\"data\":");
    thz_err jr = promql_result_json(r, &c->out);
    promql_result_free(r);
    put(c, "}");
    if (jr) error_out(c, "internal", "out of memory");
    c->status = 200;
}

/* Parses every match[] into selectors; false (c answered) when one is not a
 * vector selector. */
static bool matchers(prom_call *c, promql_expr **sel, int *n, bool required)
{
    *n = 0;
    for (int i = 0; i < c->np; i++) {
        if (strcmp(c->key[i], "match[]") != 0) continue;
        if (*n == PROM_MAX_MATCH) {
            bad_param(c, "match[]", "too many selectors");
            return false;
        }
        promql_error err;
        promql_expr *e;
        if (promql_parse(c->val[i], strlen(c->val[i]), &e, &err)) {
            bad_param(c, "match[]", err.msg);
            return false;
        }
        if (e->kind != PROMQL_SEL || e->type != PROMQL_VECTOR) {
            promql_free(e);
            bad_param(c, "match[]", "must be a vector selector");
            return false;
        }
        sel[(*n)++] = e;
    }
    if (required && *n == 0) {
        error_out(c, "bad_data", "no match[] parameter provided");
        return false;
    }
    return true;
}

static long limit_param(prom_call *c)
{
    const char *s = param(c, "limit");
    if (!s || !*s) return PROM_MAX_VALUES;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 0) return -1;
    return v == 0 || v > PROM_MAX_VALUES ? PROM_MAX_VALUES : v;
}

/* A sorted set of strings (label names or values, series as JSON). */
typedef struct strset {
    hmap m;
    char **v;
    size_t n, cap;
    bool full, oom;
    const char *want; /* label values: the label's name */
} strset;

static void strset_add(strset *s, const char *z, size_t n)
{
    if (s->full || s->oom || hmap_get(&s->m, z, n)) return;
    if (s->n >= PROM_MAX_VALUES) {
        s->full = true;
        return;
    }
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        char **nv = realloc(s->v, nc * sizeof *nv);
        if (!nv) {
            s->oom = true;
            return;
        }
        s->v = nv;
        s->cap = nc;
    }
    char *d = malloc(n + 1);
    if (!d) {
        s->oom = true;
        return;
    }
    memcpy(d, z, n);
    d[n] = 0;
    if (hmap_put(&s->m, d, n, d, NULL)) {
        free(d);
        s->oom = true;
        return;
    }
    s->v[s->n++] = d;
}

static void strset_free(strset *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    hmap_free(&s->m);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* {"status":"success","data":[...]} of strings (quoted) or raw JSON. */
static void strset_answer(prom_call *c, strset *s, bool quote, long limit)
{
    if (s->oom) {
        error_out(c, "internal", "out of memory");
        return;
    }
    if (s->n) qsort(s->v, s->n, sizeof *s->v, str_cmp);
    put(c, "{\"status\":\"success\",\"data\":[");
    for (size_t i = 0; i < s->n && (long)i < limit; i++) {
        if (i) put(c, ",");
        if (quote)
            promql_json_str(&c->out, s->v[i], strlen(s->v[i]));
        else
            put(c, s->v[i]);
    }
    put(c, "]");
    if (s->full || (long)s->n > limit) put(c, ",\"warnings\":[\"results truncated due to limit\"]");
    put(c, "}");
    c->status = 200;
}

static bool series_json_fn(void *ctx, const char *const *names, const char *const *values, size_t n)
{
    strset *s = ctx;
    thz_buf b = {0};
    thz_buf_append(&b, "{", 1);
    for (size_t i = 0; i < n; i++) {
        if (i) thz_buf_append(&b, ",", 1);
        promql_json_str(&b, names[i], strlen(names[i]));
        thz_buf_append(&b, ":", 1);
        promql_json_str(&b, values[i], strlen(values[i]));
    }
    thz_buf_append(&b, "}", 1);
    if (b.p)
        strset_add(s, (const char *)b.p, b.len);
    else
        s->oom = true;
    thz_buf_free(&b);
    return !s->full && !s->oom;
}

static bool names_fn(void *ctx, const char *const *names, const char *const *values, size_t n)
{
    strset *s = ctx;
    for (size_t i = 0; i < n; i++) strset_add(s, names[i], strlen(names[i]));
    return !s->full && !s->oom;
}

static bool values_fn(void *ctx, const char *const *names, const char *const *values, size_t n)
{
    strset *s = ctx;
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], s->want) == 0) strset_add(s, values[i], strlen(values[i]));
    return !s->full && !s->oom;
}

static bool tsdb_label_cb(void *ctx, bool metric, const char *name, size_t len)
{
    strset *s = ctx;
    if (s->want) { /* __name__ values: the metric names */
        if (metric) strset_add(s, name, len);
        return !s->full && !s->oom;
    }
    if (metric) return true;
    /* tag keys come escaped as in the canonical tag set */
    char buf[300];
    size_t o = 0;
    for (size_t i = 0; i < len && o < sizeof buf; i++) {
        if (name[i] == '\\' && i + 1 < len) i++;
        buf[o++] = name[i];
    }
    strset_add(s, buf, o);
    return !s->full && !s->oom;
}

static void run_meta(prom_call *c)
{
    promql_expr *sel[PROM_MAX_MATCH];
    int nsel = 0;
    long limit = limit_param(c);
    if (limit < 0) {
        bad_param(c, "limit", "must be a non-negative integer");
        return;
    }
    int64_t t;
    if (!time_param(c, "start", 0, false, &t) || !time_param(c, "end", 0, false, &t)) return;
    if (!matchers(c, sel, &nsel, c->op == OP_SERIES)) return;
    if (!have_db(c)) goto out;
    strset s = {0};
    promql_error err = {0};
    thz_err rc = THZ_OK;
    const char *name = c->op == OP_LABEL_VALUES ? http_req_param(c->req, "name") : NULL;
    if (c->op == OP_LABEL_VALUES && (!name || !*name)) {
        bad_param(c, "name", "a label name is needed");
        goto out;
    }
    s.want = name;
    promql_labels_fn fn = c->op == OP_SERIES   ? series_json_fn
                          : c->op == OP_LABELS ? names_fn
                                               : values_fn;
    if (nsel == 0 && c->op == OP_LABELS) {
        /* every label name without listing every series: the index knows */
        rc = tsdb_labels(query_db(), c->p.tenant, tsdb_label_cb, &s);
        if (!rc && s.n) {
            strset_add(&s, "__name__", 8);
            strset_add(&s, "device", 6);
        } else if (!rc) {
            /* no tag keys: are there series at all? */
            strset probe = {.want = "x"};
            rc = tsdb_labels(query_db(), c->p.tenant, tsdb_label_cb, &probe);
            if (probe.n) {
                strset_add(&s, "__name__", 8);
                strset_add(&s, "device", 6);
            }
            strset_free(&probe);
        }
    } else if (nsel == 0 && name && strcmp(name, "__name__") == 0) {
        rc = tsdb_labels(query_db(), c->p.tenant, tsdb_label_cb, &s);
    } else if (nsel == 0) {
        rc = promql_series(query_db(), c->p.tenant, NULL, fn, &s, &err);
    } else {
        for (int i = 0; i < nsel && !rc && !s.full && !s.oom; i++)
            rc = promql_series(query_db(), c->p.tenant, sel[i], fn, &s, &err);
    }
    if (rc && err.msg[0])
        error_out(c, etype_name(err.kind), err.msg);
    else if (rc)
        error_out(c, "internal", thz_strerror(rc));
    else
        strset_answer(c, &s, c->op != OP_SERIES, limit);
    strset_free(&s);
out:
    for (int i = 0; i < nsel; i++) promql_free(sel[i]);
}

static void run_op(prom_call *c)
{
    switch (c->op) {
    case OP_QUERY: run_query(c, false); break;
    case OP_QUERY_RANGE: run_query(c, true); break;
    case OP_METADATA:
        put(c, "{\"status\":\"success\",\"data\":{}}");
        c->status = 200;
        break;
    case OP_EXEMPLARS:
        put(c, "{\"status\":\"success\",\"data\":[]}");
        c->status = 200;
        break;
    case OP_RULES:
        put(c, "{\"status\":\"success\",\"data\":{\"groups\":[]}}");
        c->status = 200;
        break;
    case OP_BUILDINFO:
        put(c,
            "{\"status\":\"success\",\"data\":{\"version\":\"2.42.0\",\"revision\":"
            "\"thinghz-" THINGHZ_VERSION
            "\",\"branch\":\"\",\"buildUser\":\"thinghz\",\"buildDate\":\"\",\"goVersion\":\"\"}}");
        c->status = 200;
        break;
    default: run_meta(c); break;
    }
}

static void work_run(uv_work_t *w)
{
    prom_call *c = w->data;
    metrics_pool_started();
    if (c->basic) {
        thz_err rc = reg_password_check(R, c->email, c->password, &c->p);
        if (rc == THZ_OK) {
            cache_put(c->email, c->pwhash, &c->p);
        } else {
            c->unauth = rc == THZ_EBADAUTH;
            error_out(c, rc == THZ_EBADAUTH ? "unauthorized" : "internal",
                      rc == THZ_EBADAUTH ? "wrong email or password" : thz_strerror(rc));
            return;
        }
    }
    if (!params_load(c)) return;
    run_op(c);
}

static void work_done(uv_work_t *w, int status)
{
    prom_call *c = w->data;
    metrics_pool_finished();
    if (status != 0) error_out(c, "unavailable", "the request was cancelled");
    reply(c->req, c);
    http_reply(c->req);
    call_free(c);
}

/* ---- the handler (I/O thread) ---- */

static http_result deny(prom_call *c, http_response *res, const char *msg)
{
    c->unauth = true;
    error_out(c, "unauthorized", msg);
    reply(c->req, c);
    call_free(c);
    (void)res;
    return HTTP_DONE;
}

/* Resolves the credentials: a bearer token or a cached Basic pair at once;
 * an uncached Basic pair is checked on the worker (c->basic). */
static bool authenticate(prom_call *c, const char **why)
{
    const char *h = http_req_header(c->req, "authorization");
    *why = "this API needs 'Authorization: Bearer TOKEN' or HTTP Basic email:password";
    if (!h) return false;
    if (strncasecmp(h, "Bearer ", 7) == 0) {
        const char *t = h + 7;
        while (*t == ' ') t++;
        *why = "the token is invalid, expired or revoked";
        return *t && reg_token_check(R, t, &c->p) == THZ_OK;
    }
    if (strncasecmp(h, "Basic ", 6) != 0) return false;
    const char *b = h + 6;
    while (*b == ' ') b++;
    uint8_t dec[1300];
    *why = "malformed Basic credentials";
    long n = thz_b64_decode(b, strlen(b), dec, sizeof dec - 1);
    if (n <= 0) return false;
    dec[n] = 0;
    char *colon = memchr(dec, ':', (size_t)n);
    if (!colon || memchr(dec, 0, (size_t)n) || colon - (char *)dec >= (long)sizeof c->email)
        return false;
    *colon = 0;
    memcpy(c->email, dec, (size_t)(colon - (char *)dec) + 1);
    const char *pw = colon + 1;
    EVP_Digest(pw, strlen(pw), c->pwhash, NULL, EVP_sha256(), NULL);
    bool ok = cache_get(c->email, c->pwhash, &c->p);
    if (!ok) {
        c->password = strdup(pw);
        ok = c->password != NULL;
        c->basic = ok;
    }
    OPENSSL_cleanse(dec, sizeof dec);
    *why = "out of memory";
    return ok;
}

static http_result prom_handle(http_request *req, http_response *res, void *ctx)
{
    prom_call *c = calloc(1, sizeof *c);
    if (!c) {
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
        return HTTP_DONE;
    }
    c->req = req;
    c->op = (prom_op)(uintptr_t)ctx;
    c->work.data = c;
    const char *why;
    if (!authenticate(c, &why)) return deny(c, res, why);
    /* Basic principals were checked for their role on the worker; every
     * role (viewer and up) may read. */
    if (uv_queue_work(net_loop(net_self()), &c->work, work_run, work_done) != 0) {
        error_out(c, "unavailable", "cannot queue the request");
        reply(req, c);
        call_free(c);
        return HTTP_DONE;
    }
    metrics_pool_queued();
    return HTTP_PENDING;
}

static const struct {
    const char *path;
    prom_op op;
} prom_routes[] = {
    {"/prometheus/api/v1/query", OP_QUERY},
    {"/prometheus/api/v1/query_range", OP_QUERY_RANGE},
    {"/prometheus/api/v1/series", OP_SERIES},
    {"/prometheus/api/v1/labels", OP_LABELS},
    {"/prometheus/api/v1/label/{name}/values", OP_LABEL_VALUES},
    {"/prometheus/api/v1/metadata", OP_METADATA},
    {"/prometheus/api/v1/status/buildinfo", OP_BUILDINFO},
    {"/prometheus/api/v1/query_exemplars", OP_EXEMPLARS},
    {"/prometheus/api/v1/rules", OP_RULES},
};

thz_err api_prom_start(registry *r)
{
    R = r;
    for (size_t i = 0; i < sizeof prom_routes / sizeof prom_routes[0]; i++) {
        void *ctx = (void *)(uintptr_t)prom_routes[i].op;
        thz_err rc = http_route(HTTP_GET, prom_routes[i].path, prom_handle, ctx);
        if (!rc) rc = http_route(HTTP_POST, prom_routes[i].path, prom_handle, ctx);
        if (rc) return rc;
    }
    return THZ_OK;
}
