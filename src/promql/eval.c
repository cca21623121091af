/* eval.c - the PromQL evaluator: every node of the AST is evaluated once for
 * all steps of the query (a series is a label set plus one value per step),
 * selectors read each matching series' points once for the whole range, and
 * budgets (series, samples, time) end a query with a clear error. Prometheus'
 * semantics: 5-minute lookback for instant vectors, left-open range windows
 * (t - range, t], rate/increase extrapolation with counter resets, and
 * __name__ dropped by functions, aggregations and arithmetic. */
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/hmap.h"
#include "promql/promql.h"
#include "query/query.h"

/* ---- label sets: "name\0value\0..." sorted by name, one allocation ---- */

typedef struct lset {
    char *p;
    uint32_t len;
    uint16_t n;
} lset;

typedef struct lpair {
    const char *name, *value;
} lpair;

static int lpair_cmp(const void *a, const void *b)
{
    return strcmp(((const lpair *)a)->name, ((const lpair *)b)->name);
}

/* Builds a label set from n pairs (sorted here; duplicates keep the first). */
static thz_err lset_make(lpair *v, size_t n, lset *out)
{
    if (n > 1) qsort(v, n, sizeof *v, lpair_cmp);
    size_t len = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && strcmp(v[i].name, v[i - 1].name) == 0) continue;
        len += strlen(v[i].name) + strlen(v[i].value) + 2;
        k++;
    }
    char *p = malloc(len ? len : 1);
    if (!p) return THZ_ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && strcmp(v[i].name, v[i - 1].name) == 0) continue;
        size_t a = strlen(v[i].name) + 1, b = strlen(v[i].value) + 1;
        memcpy(p + o, v[i].name, a);
        memcpy(p + o + a, v[i].value, b);
        o += a + b;
    }
    out->p = p;
    out->len = (uint32_t)len;
    out->n = (uint16_t)k;
    return THZ_OK;
}

/* The pairs of l into v (capacity l->n). Pointers into l. */
static size_t lset_pairs(const lset *l, lpair *v)
{
    size_t o = 0;
    for (uint16_t i = 0; i < l->n; i++) {
        v[i].name = l->p + o;
        o += strlen(l->p + o) + 1;
        v[i].value = l->p + o;
        o += strlen(l->p + o) + 1;
    }
    return l->n;
}

static const char *lset_get(const lset *l, const char *name)
{
    size_t o = 0;
    for (uint16_t i = 0; i < l->n; i++) {
        const char *k = l->p + o;
        o += strlen(k) + 1;
        const char *v = l->p + o;
        o += strlen(v) + 1;
        if (strcmp(k, name) == 0) return v;
    }
    return NULL;
}

/* A copy of l keeping (keep) or dropping (!keep) the listed names;
 * drop_name also drops __name__. */
static thz_err lset_filter(const lset *l, char *const *names, int nn, bool keep, bool drop_name,
                           lset *out)
{
    lpair *v = malloc((l->n + 1) * sizeof *v), *w = malloc((l->n + 1) * sizeof *w);
    if (!v || !w) {
        free(v);
        free(w);
        return THZ_ENOMEM;
    }
    size_t n = lset_pairs(l, v), k = 0;
    for (size_t i = 0; i < n; i++) {
        bool listed = false;
        for (int j = 0; j < nn; j++)
            if (strcmp(v[i].name, names[j]) == 0) listed = true;
        if (listed != keep) continue;
        if (drop_name && strcmp(v[i].name, "__name__") == 0) continue;
        w[k++] = v[i];
    }
    thz_err rc = lset_make(w, k, out);
    free(v);
    free(w);
    return rc;
}

/* Labels of a tsdb series: __name__, device and its tags (unescaped). */
static thz_err lset_of_series(const tsdb_series *s, lset *out)
{
    size_t tl = strlen(s->tags);
    char *t = malloc(tl + 1);
    lpair *v = malloc((tl / 2 + 3) * sizeof *v);
    if (!t || !v) {
        free(t);
        free(v);
        return THZ_ENOMEM;
    }
    size_t n = 0;
    v[n++] = (lpair){"__name__", s->metric};
    v[n++] = (lpair){"device", s->device};
    /* "k1=v1,k2=v2" with '\' escaping ',', '=' and '\': unescape in place. */
    size_t o = 0;
    const char *q = s->tags;
    while (*q) {
        const char *k = t + o;
        while (*q && *q != '=') {
            if (*q == '\\' && q[1]) q++;
            t[o++] = *q++;
        }
        t[o++] = 0;
        if (*q == '=') q++;
        const char *val = t + o;
        while (*q && *q != ',') {
            if (*q == '\\' && q[1]) q++;
            t[o++] = *q++;
        }
        t[o++] = 0;
        if (*q == ',') q++;
        if (strcmp(k, "__name__") && strcmp(k, "device")) v[n++] = (lpair){k, val};
    }
    /* the built-ins first in v, so lset_make's "keep the first" hides tags */
    thz_err rc = lset_make(v, n, out);
    free(t);
    free(v);
    return rc;
}

/* ---- values ---- */

typedef struct vser {
    lset l;
    double *v;
    uint8_t *has; /* per step */
} vser;

typedef struct mser { /* raw points of a range vector (instant queries only) */
    lset l;
    int64_t *ts;
    double *v;
    size_t n;
} mser;

typedef struct val {
    promql_type type;
    double *sc; /* SCALAR: per step */
    vser *s;    /* VECTOR */
    size_t ns;
    mser *m; /* MATRIX */
    size_t nm;
} val;

struct promql_result {
    val v;
    int64_t start, step;
    size_t nsteps;
    bool range;
};

static void val_free(val *v)
{
    free(v->sc);
    for (size_t i = 0; i < v->ns; i++) {
        free(v->s[i].l.p);
        free(v->s[i].v);
        free(v->s[i].has);
    }
    free(v->s);
    for (size_t i = 0; i < v->nm; i++) {
        free(v->m[i].l.p);
        free(v->m[i].ts);
        free(v->m[i].v);
    }
    free(v->m);
    memset(v, 0, sizeof *v);
}

void promql_result_free(promql_result *r)
{
    if (!r) return;
    val_free(&r->v);
    free(r);
}

/* ---- the evaluation context ---- */

typedef struct ev {
    tsdb *db;
    int64_t tenant;
    int64_t start, step; /* ns */
    size_t nsteps;
    struct timespec deadline;
    uint64_t samples; /* held: step values and raw points in memory */
    uint64_t decoded; /* points read from the engine */
    size_t series;
    bool range;
    promql_error *err;
} ev;

static thz_err fail(ev *e, promql_ekind kind, thz_err rc, const char *fmt, ...)
{
    e->err->kind = kind;
    e->err->pos = -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err->msg, sizeof e->err->msg, fmt, ap);
    va_end(ap);
    return rc;
}

static thz_err oom(ev *e)
{
    return fail(e, PROMQL_ERR_INTERNAL, THZ_ENOMEM, "out of memory");
}

static bool past_deadline(const ev *e)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > e->deadline.tv_sec ||
           (now.tv_sec == e->deadline.tv_sec && now.tv_nsec > e->deadline.tv_nsec);
}

static thz_err check_time(ev *e)
{
    if (past_deadline(e))
        return fail(e, PROMQL_ERR_TIMEOUT, THZ_ETOOBIG, "query timed out in expression evaluation");
    return THZ_OK;
}

static thz_err take_samples(ev *e, uint64_t n)
{
    e->samples += n;
    if (e->samples > PROMQL_MAX_SAMPLES)
        return fail(e, PROMQL_ERR_LIMIT, THZ_ETOOBIG,
                    "query processing would load too many samples into memory in query "
                    "execution (limit %llu)",
                    (unsigned long long)PROMQL_MAX_SAMPLES);
    return THZ_OK;
}

static int64_t step_time(const ev *e, size_t k)
{
    return e->start + (int64_t)k * e->step;
}

/* A vector series with step arrays allocated (zero: absent everywhere). */
static thz_err vser_alloc(ev *e, vser *s)
{
    thz_err rc = take_samples(e, e->nsteps);
    if (rc) return rc;
    s->v = malloc(e->nsteps * sizeof *s->v);
    s->has = calloc(e->nsteps, 1);
    if (!s->v || !s->has) return oom(e);
    return THZ_OK;
}

static thz_err vec_push(ev *e, val *v, size_t *cap, vser **out)
{
    if (v->ns == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        vser *ns = realloc(v->s, nc * sizeof *ns);
        if (!ns) return oom(e);
        v->s = ns;
        *cap = nc;
    }
    *out = &v->s[v->ns++];
    memset(*out, 0, sizeof **out);
    return THZ_OK;
}

/* ---- selecting and reading series ---- */

typedef struct sel_ctx {
    ev *e;
    const promql_expr *sel;
    tsdb_series *v;
    size_t n, cap;
    thz_err rc;
    bool strings; /* keep string series (for /series) */
} sel_ctx;

static bool sel_fn(void *ctx, const tsdb_series *s)
{
    sel_ctx *c = ctx;
    if (s->type == TSDB_STRING && !c->strings) return true;
    if (c->e->series + c->n >= PROMQL_MAX_SERIES) {
        c->rc = fail(c->e, PROMQL_ERR_LIMIT, THZ_ETOOBIG, "the query selects more than %d series",
                     PROMQL_MAX_SERIES);
        return false;
    }
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 64;
        tsdb_series *nv = realloc(c->v, nc * sizeof *nv);
        if (!nv) {
            c->rc = oom(c->e);
            return false;
        }
        c->v = nv;
        c->cap = nc;
    }
    c->v[c->n++] = *s;
    return true;
}

/* Does l satisfy the matchers the engine was not given (label "metric",
 * which the engine reads as the metric name rather than a tag)? */
static bool post_match(const promql_expr *sel, const lset *l, regex_t *re)
{
    for (int i = 0; i < sel->nm; i++) {
        const promql_matcher *m = &sel->m[i];
        if (strcmp(m->label, "metric") != 0) continue;
        const char *v = lset_get(l, "metric");
        if (!v) v = "";
        bool ok;
        switch (m->op) {
        case TSDB_EQ: ok = strcmp(v, m->value) == 0; break;
        case TSDB_NE: ok = strcmp(v, m->value) != 0; break;
        case TSDB_RE: ok = regexec(&re[i], v, 0, NULL, 0) == 0; break;
        default: ok = regexec(&re[i], v, 0, NULL, 0) != 0; break;
        }
        if (!ok) return false;
    }
    return true;
}

/* The series matching sel, with their label sets (filtered by post_match).
 * *ls and c->v are parallel arrays of c->n entries; the caller frees both. */
static thz_err select_series(ev *e, const promql_expr *sel, bool strings, sel_ctx *c, lset **ls)
{
    memset(c, 0, sizeof *c);
    c->e = e;
    c->strings = strings;
    c->sel = sel;
    *ls = NULL;
    tsdb_matcher m[64];
    size_t nm = 0;
    regex_t re[64];
    bool has_re[64] = {0};
    thz_err rc = THZ_OK;
    for (int i = 0; sel && i < sel->nm && i < 64; i++) {
        const promql_matcher *pm = &sel->m[i];
        if (strcmp(pm->label, "metric") == 0) {
            if (pm->op == TSDB_RE || pm->op == TSDB_NRE) {
                size_t vl = strlen(pm->value);
                char *pat = malloc(vl + 5);
                if (!pat) return oom(e);
                snprintf(pat, vl + 5, "^(%s)$", pm->value);
                int r = regcomp(&re[i], pat, REG_EXTENDED | REG_NOSUB);
                free(pat);
                if (r) {
                    rc = fail(e, PROMQL_ERR_EXEC, THZ_EINVAL,
                              "invalid regular expression \"%.100s\"", pm->value);
                    goto out;
                }
                has_re[i] = true;
            }
            continue;
        }
        m[nm].label = strcmp(pm->label, "__name__") == 0 ? "metric" : pm->label;
        m[nm].op = pm->op;
        m[nm].value = pm->value;
        nm++;
    }
    rc = tsdb_series_select(e->db, e->tenant, m, nm, sel_fn, c);
    if (c->rc) {
        rc = c->rc;
        goto out;
    }
    if (rc == THZ_EINVAL) {
        rc = fail(e, PROMQL_ERR_EXEC, rc, "invalid regular expression in a selector");
        goto out;
    }
    if (rc == THZ_ENOTFOUND) rc = THZ_OK;
    if (rc) {
        rc = fail(e, PROMQL_ERR_INTERNAL, rc, "reading the series index: %s", thz_strerror(rc));
        goto out;
    }
    *ls = calloc(c->n ? c->n : 1, sizeof **ls);
    if (!*ls) {
        rc = oom(e);
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++) {
        lset l;
        if (lset_of_series(&c->v[i], &l)) {
            rc = oom(e);
            c->n = k;
            goto out;
        }
        if (sel && !post_match(sel, &l, re)) {
            free(l.p);
            continue;
        }
        c->v[k] = c->v[i];
        (*ls)[k++] = l;
    }
    c->n = k;
    e->series += k;
out:
    for (int i = 0; i < 64; i++)
        if (has_re[i]) regfree(&re[i]);
    return rc;
}

typedef struct pts {
    int64_t *ts;
    double *v;
    size_t n, cap;
    ev *e;
    thz_err rc;
    unsigned batches;
} pts;

static bool read_fn(void *ctx, const int64_t *ts, const tsdb_value *v, size_t n)
{
    pts *p = ctx;
    if ((p->rc = take_samples(p->e, n))) return false;
    p->e->decoded += n;
    if (p->e->decoded > QUERY_MAX_POINTS) {
        p->rc = fail(p->e, PROMQL_ERR_LIMIT, THZ_ETOOBIG,
                     "the query would decode more than %llu points",
                     (unsigned long long)QUERY_MAX_POINTS);
        return false;
    }
    if ((++p->batches & 15) == 0 && (p->rc = check_time(p->e))) return false;
    if (p->n + n > p->cap) {
        size_t nc = p->cap ? p->cap : 1024;
        while (nc < p->n + n) nc *= 2;
        int64_t *nt = realloc(p->ts, nc * sizeof *nt);
        if (nt) p->ts = nt;
        double *nv = realloc(p->v, nc * sizeof *nv);
        if (nv) p->v = nv;
        if (!nt || !nv) {
            p->rc = oom(p->e);
            return false;
        }
        p->cap = nc;
    }
    for (size_t i = 0; i < n; i++) {
        double x;
        switch (v[i].type) {
        case TSDB_FLOAT: x = v[i].u.f; break;
        case TSDB_INT: x = (double)v[i].u.i; break;
        case TSDB_BOOL: x = v[i].u.b ? 1 : 0; break;
        default: continue;
        }
        p->ts[p->n] = ts[i];
        p->v[p->n++] = x;
    }
    return true;
}

/* Reads series id over [t0, t1] into p (reset first). Held samples are
 * released by the caller with give_back. */
static thz_err read_points(ev *e, uint64_t id, int64_t t0, int64_t t1, pts *p)
{
    p->n = 0;
    p->e = e;
    p->rc = THZ_OK;
    if (t1 < t0) return THZ_OK;
    thz_err rc = tsdb_read(e->db, e->tenant, id, t0, t1 == INT64_MAX ? t1 : t1 + 1, read_fn, p);
    if (p->rc) return p->rc;
    if (rc == THZ_ENOTFOUND) return THZ_OK; /* dropped meanwhile */
    if (rc) return fail(e, PROMQL_ERR_INTERNAL, rc, "reading a series: %s", thz_strerror(rc));
    return THZ_OK;
}

static void give_back(ev *e, pts *p)
{
    e->samples -= p->n <= e->samples ? p->n : e->samples;
}

/* ---- selectors and range functions ---- */

static int64_t sat_sub(int64_t a, int64_t b)
{
    if (b > 0 && a < INT64_MIN + b) return INT64_MIN;
    if (b < 0 && a > INT64_MAX + b) return INT64_MAX;
    return a - b;
}

/* Prometheus' extrapolatedRate: the increase over the window, corrected for
 * counter resets, extrapolated to the window's edges (at most half an
 * average interval past the first and last samples, never below zero). */
static bool extrapolated(const int64_t *ts, const double *v, size_t n, int64_t rs, int64_t re,
                         bool counter, bool rate, int64_t range, double *out)
{
    if (n < 2) return false;
    double result = v[n - 1] - v[0];
    if (counter) {
        double last = v[0];
        for (size_t i = 1; i < n; i++) {
            if (v[i] < last) result += last;
            last = v[i];
        }
    }
    double to_start = (double)(ts[0] - rs) / 1e9;
    double to_end = (double)(re - ts[n - 1]) / 1e9;
    double sampled = (double)(ts[n - 1] - ts[0]) / 1e9;
    double avg = sampled / (double)(n - 1);
    if (counter && result > 0 && v[0] >= 0) {
        double to_zero = sampled * (v[0] / result);
        if (to_zero < to_start) to_start = to_zero;
    }
    double thresh = avg * 1.1, interval = sampled;
    interval += to_start < thresh ? to_start : avg / 2;
    interval += to_end < thresh ? to_end : avg / 2;
    if (sampled <= 0) return false;
    result *= interval / sampled;
    if (rate) result /= (double)range / 1e9;
    *out = result;
    return true;
}

/* The value of a range function over the points v[lo..hi) in (rs, re]. */
static bool range_fn(promql_func f, const int64_t *ts, const double *v, size_t lo, size_t hi,
                     int64_t rs, int64_t re, int64_t range, double *out)
{
    size_t n = hi - lo;
    if (n == 0) return false;
    switch (f) {
    case PROMQL_RATE: return extrapolated(ts + lo, v + lo, n, rs, re, true, true, range, out);
    case PROMQL_INCREASE: return extrapolated(ts + lo, v + lo, n, rs, re, true, false, range, out);
    case PROMQL_COUNT_OT: *out = (double)n; return true;
    case PROMQL_LAST_OT: *out = v[hi - 1]; return true;
    case PROMQL_MIN_OT:
    case PROMQL_MAX_OT: {
        double m = v[lo];
        for (size_t i = lo + 1; i < hi; i++) {
            bool better = f == PROMQL_MIN_OT ? v[i] < m : v[i] > m;
            if (better || isnan(m)) m = v[i];
        }
        *out = m;
        return true;
    }
    default: { /* sum, avg: Kahan summation, as Prometheus */
        double s = 0, c = 0;
        for (size_t i = lo; i < hi; i++) {
            double y = v[i] - c, t = s + y;
            c = (t - s) - y;
            s = t;
        }
        *out = f == PROMQL_AVG_OT ? s / (double)n : s;
        return true;
    }
    }
}

/* An instant selector (call NULL) or a range function over a range
 * selector: one output series per matching series. */
static thz_err eval_select(ev *e, const promql_expr *sel, const promql_expr *call, val *out)
{
    out->type = PROMQL_VECTOR;
    sel_ctx c;
    lset *ls = NULL;
    thz_err rc = select_series(e, sel, false, &c, &ls);
    int64_t width = call ? sel->range_ns : PROMQL_LOOKBACK_NS;
    int64_t first = sat_sub(sat_sub(e->start, sel->offset_ns), width);
    int64_t last = sat_sub(step_time(e, e->nsteps - 1), sel->offset_ns);
    pts p = {0};
    size_t cap = 0, i = 0;
    for (; !rc && i < c.n; i++) {
        if ((rc = read_points(e, c.v[i].id, first, last, &p))) break;
        if (p.n == 0) {
            give_back(e, &p);
            continue;
        }
        vser *s;
        if ((rc = vec_push(e, out, &cap, &s))) break;
        s->l = ls[i];
        ls[i].p = NULL;
        if (call && call->func != PROMQL_LAST_OT) {
            lset l2;
            if (lset_filter(&s->l, NULL, 0, false, true, &l2)) {
                rc = oom(e);
                break;
            }
            free(s->l.p);
            s->l = l2;
        }
        if ((rc = vser_alloc(e, s))) break;
        size_t lo = 0, hi = 0;
        for (size_t k = 0; k < e->nsteps; k++) {
            int64_t t = sat_sub(step_time(e, k), sel->offset_ns), ws = sat_sub(t, width);
            while (hi < p.n && p.ts[hi] <= t) hi++;
            while (lo < hi && p.ts[lo] <= ws) lo++;
            if (!call) {
                if (hi > lo) {
                    s->v[k] = p.v[hi - 1];
                    s->has[k] = 1;
                }
            } else if (range_fn(call->func, p.ts, p.v, lo, hi, ws, t, width, &s->v[k])) {
                s->has[k] = 1;
            }
        }
        give_back(e, &p);
        if ((rc = check_time(e))) break;
    }
    free(p.ts);
    free(p.v);
    for (size_t j = 0; j < c.n; j++) free(ls[j].p);
    free(ls);
    free(c.v);
    return rc;
}

/* A range selector at the top of an instant query: the raw points. */
static thz_err eval_matrix(ev *e, const promql_expr *sel, val *out)
{
    out->type = PROMQL_MATRIX;
    sel_ctx c;
    lset *ls = NULL;
    thz_err rc = select_series(e, sel, false, &c, &ls);
    int64_t t = sat_sub(e->start, sel->offset_ns);
    size_t cap = 0;
    for (size_t i = 0; !rc && i < c.n; i++) {
        pts p = {0};
        if ((rc = read_points(e, c.v[i].id, sat_sub(t, sel->range_ns - 1), t, &p))) {
            free(p.ts);
            free(p.v);
            break;
        }
        if (p.n == 0) {
            free(p.ts);
            free(p.v);
            continue;
        }
        if (out->nm == cap) {
            size_t nc = cap ? cap * 2 : 16;
            mser *nm = realloc(out->m, nc * sizeof *nm);
            if (!nm) {
                free(p.ts);
                free(p.v);
                rc = oom(e);
                break;
            }
            out->m = nm;
            cap = nc;
        }
        out->m[out->nm++] = (mser){ls[i], p.ts, p.v, p.n};
        ls[i].p = NULL;
    }
    for (size_t j = 0; j < c.n; j++) free(ls[j].p);
    free(ls);
    free(c.v);
    return rc;
}

/* ---- label-set collisions ---- */

/* After __name__ was dropped, series may share a label set: Prometheus
 * merges those that never have a value at the same step and refuses the
 * rest. */
static thz_err merge_same_labels(ev *e, val *v)
{
    if (v->type != PROMQL_VECTOR || v->ns < 2) return THZ_OK;
    hmap m = {0};
    thz_err rc = THZ_OK;
    size_t k = 0;
    for (size_t i = 0; i < v->ns; i++) {
        vser *s = &v->s[i];
        vser *prev = hmap_get(&m, s->l.p, s->l.len);
        if (!prev) {
            v->s[k] = *s;
            if (hmap_put(&m, v->s[k].l.p, v->s[k].l.len, (void *)(uintptr_t)(k + 1), NULL)) {
                rc = oom(e);
                k++;
                for (size_t j = i + 1; j < v->ns; j++) v->s[k++] = v->s[j];
                break;
            }
            k++;
            continue;
        }
        vser *d = &v->s[(uintptr_t)prev - 1];
        for (size_t t = 0; t < e->nsteps; t++) {
            if (!s->has[t]) continue;
            if (d->has[t]) {
                rc = fail(e, PROMQL_ERR_EXEC, THZ_EINVAL,
                          "vector cannot contain metrics with the same labelset");
                break;
            }
            d->has[t] = 1;
            d->v[t] = s->v[t];
        }
        free(s->l.p);
        free(s->v);
        free(s->has);
        e->samples -= e->nsteps;
        if (rc) {
            for (size_t j = i + 1; j < v->ns; j++) v->s[k++] = v->s[j];
            break;
        }
    }
    v->ns = k;
    hmap_free(&m);
    return rc;
}

/* ---- aggregation ---- */

typedef struct group {
    vser s;
    double *cnt;
} group;

static thz_err eval_agg(ev *e, const promql_expr *x, val *in, val *out)
{
    out->type = PROMQL_VECTOR;
    hmap m = {0};
    group *g = NULL;
    size_t ng = 0, cap = 0;
    thz_err rc = THZ_OK;
    for (size_t i = 0; i < in->ns && !rc; i++) {
        vser *s = &in->s[i];
        lset key;
        if (lset_filter(&s->l, x->grouping, x->ngrouping, !x->without, x->without, &key)) {
            rc = oom(e);
            break;
        }
        uintptr_t gi = (uintptr_t)hmap_get(&m, key.p, key.len);
        if (!gi) {
            if (ng == cap) {
                size_t nc = cap ? cap * 2 : 16;
                group *n2 = realloc(g, nc * sizeof *n2);
                if (!n2) {
                    free(key.p);
                    rc = oom(e);
                    break;
                }
                g = n2;
                cap = nc;
            }
            group *ng_ = &g[ng++];
            memset(ng_, 0, sizeof *ng_);
            ng_->s.l = key;
            if ((rc = vser_alloc(e, &ng_->s))) break;
            if (!(ng_->cnt = calloc(e->nsteps, sizeof *ng_->cnt))) {
                rc = oom(e);
                break;
            }
            if (hmap_put(&m, key.p, key.len, (void *)(uintptr_t)ng, NULL)) {
                rc = oom(e);
                break;
            }
            gi = ng;
        } else {
            free(key.p);
        }
        group *gr = &g[gi - 1];
        for (size_t t = 0; t < e->nsteps; t++) {
            if (!s->has[t]) continue;
            double x0 = s->v[t], *acc = &gr->s.v[t];
            if (!gr->s.has[t]) {
                gr->s.has[t] = 1;
                gr->cnt[t] = 1;
                *acc = x->agg == PROMQL_COUNT ? 1 : x0;
                continue;
            }
            gr->cnt[t]++;
            switch (x->agg) {
            case PROMQL_SUM:
            case PROMQL_AVG: *acc += x0; break;
            case PROMQL_COUNT: *acc += 1; break;
            case PROMQL_MIN:
                if (x0 < *acc || isnan(*acc)) *acc = x0;
                break;
            case PROMQL_MAX:
                if (x0 > *acc || isnan(*acc)) *acc = x0;
                break;
            }
        }
    }
    hmap_free(&m);
    out->s = calloc(ng ? ng : 1, sizeof *out->s);
    if (!out->s && !rc) rc = oom(e);
    for (size_t i = 0; i < ng; i++) {
        if (x->agg == PROMQL_AVG && g[i].s.has)
            for (size_t t = 0; t < e->nsteps; t++)
                if (g[i].s.has[t]) g[i].s.v[t] /= g[i].cnt[t];
        free(g[i].cnt);
        if (out->s)
            out->s[out->ns++] = g[i].s;
        else {
            free(g[i].s.l.p);
            free(g[i].s.v);
            free(g[i].s.has);
        }
    }
    free(g);
    return rc;
}

/* ---- arithmetic ---- */

static double arith(promql_op op, double a, double b)
{
    switch (op) {
    case PROMQL_ADD: return a + b;
    case PROMQL_SUB: return a - b;
    case PROMQL_MUL: return a * b;
    case PROMQL_DIV: return a / b;
    case PROMQL_MOD: return fmod(a, b);
    default: return pow(a, b);
    }
}

/* vector op scalar (or scalar op vector when swap): in place on the vector. */
static thz_err vec_scalar(ev *e, promql_op op, val *vec, const double *sc, bool swap)
{
    for (size_t i = 0; i < vec->ns; i++) {
        vser *s = &vec->s[i];
        for (size_t t = 0; t < e->nsteps; t++)
            if (s->has[t]) s->v[t] = swap ? arith(op, sc[t], s->v[t]) : arith(op, s->v[t], sc[t]);
        lset l2;
        if (lset_filter(&s->l, NULL, 0, false, true, &l2)) return oom(e);
        free(s->l.p);
        s->l = l2;
    }
    return merge_same_labels(e, vec);
}

/* vector op vector, one-to-one on the label sets without __name__. */
static thz_err vec_vec(ev *e, promql_op op, val *l, val *r, val *out)
{
    out->type = PROMQL_VECTOR;
    thz_err rc = THZ_OK;
    /* drop names; same-label series on one side merge or fail as Prometheus
     * refuses duplicate match groups */
    for (int side = 0; side < 2 && !rc; side++) {
        val *v = side ? r : l;
        for (size_t i = 0; i < v->ns && !rc; i++) {
            lset l2;
            if (lset_filter(&v->s[i].l, NULL, 0, false, true, &l2)) {
                rc = oom(e);
                break;
            }
            free(v->s[i].l.p);
            v->s[i].l = l2;
        }
        if (!rc && (rc = merge_same_labels(e, v)))
            snprintf(e->err->msg, sizeof e->err->msg,
                     "found duplicate series for the match group on the %s hand-side of the "
                     "operation; many-to-many matching is not supported",
                     side ? "right" : "left");
    }
    if (rc) return rc;
    hmap m = {0};
    for (size_t i = 0; i < r->ns && !rc; i++)
        if (hmap_put(&m, r->s[i].l.p, r->s[i].l.len, &r->s[i], NULL)) rc = oom(e);
    size_t cap = 0;
    for (size_t i = 0; i < l->ns && !rc; i++) {
        vser *a = &l->s[i], *b = hmap_get(&m, a->l.p, a->l.len);
        if (!b) continue;
        bool any = false;
        for (size_t t = 0; t < e->nsteps; t++) {
            if (a->has[t] && b->has[t]) {
                a->v[t] = arith(op, a->v[t], b->v[t]);
                any = true;
            } else {
                a->has[t] = 0;
            }
        }
        if (!any) continue;
        vser *s;
        if ((rc = vec_push(e, out, &cap, &s))) break;
        *s = *a;
        memset(a, 0, sizeof *a);
    }
    hmap_free(&m);
    return rc;
}

static thz_err eval(ev *e, const promql_expr *x, val *out);

static thz_err scalar_alloc(ev *e, val *v)
{
    v->type = PROMQL_SCALAR;
    if (!(v->sc = malloc(e->nsteps * sizeof *v->sc))) return oom(e);
    return THZ_OK;
}

static thz_err eval_bin(ev *e, const promql_expr *x, val *out)
{
    val l = {0}, r = {0};
    thz_err rc = eval(e, x->lhs, &l);
    if (!rc) rc = eval(e, x->rhs, &r);
    if (rc) goto out;
    if (l.type == PROMQL_SCALAR && r.type == PROMQL_SCALAR) {
        for (size_t t = 0; t < e->nsteps; t++) l.sc[t] = arith(x->op, l.sc[t], r.sc[t]);
        *out = l;
        memset(&l, 0, sizeof l);
    } else if (l.type == PROMQL_VECTOR && r.type == PROMQL_SCALAR) {
        rc = vec_scalar(e, x->op, &l, r.sc, false);
        *out = l;
        memset(&l, 0, sizeof l);
    } else if (l.type == PROMQL_SCALAR && r.type == PROMQL_VECTOR) {
        rc = vec_scalar(e, x->op, &r, l.sc, true);
        *out = r;
        memset(&r, 0, sizeof r);
    } else {
        rc = vec_vec(e, x->op, &l, &r, out);
    }
out:
    val_free(&l);
    val_free(&r);
    return rc;
}

static thz_err eval(ev *e, const promql_expr *x, val *out)
{
    memset(out, 0, sizeof *out);
    thz_err rc = check_time(e);
    if (rc) return rc;
    switch (x->kind) {
    case PROMQL_NUM:
        if ((rc = scalar_alloc(e, out))) return rc;
        for (size_t t = 0; t < e->nsteps; t++) out->sc[t] = x->num;
        return THZ_OK;
    case PROMQL_STR:
        return fail(e, PROMQL_ERR_EXEC, THZ_EINVAL, "string literals cannot be evaluated here");
    case PROMQL_SEL:
        if (x->type == PROMQL_MATRIX) {
            if (e->range || e->nsteps != 1)
                return fail(e, PROMQL_ERR_PARSE, THZ_EINVAL,
                            "invalid expression type \"range vector\" for range query, must be "
                            "Scalar or instant Vector");
            rc = eval_matrix(e, x, out);
        } else {
            rc = eval_select(e, x, NULL, out);
        }
        break;
    case PROMQL_CALL: rc = eval_select(e, x->lhs, x, out); break;
    case PROMQL_AGG: {
        val in = {0};
        rc = eval(e, x->lhs, &in);
        if (!rc) rc = eval_agg(e, x, &in, out);
        val_free(&in);
        break;
    }
    case PROMQL_BIN: rc = eval_bin(e, x, out); break;
    case PROMQL_NEG: {
        rc = eval(e, x->lhs, out);
        if (rc) break;
        if (out->type == PROMQL_SCALAR) {
            for (size_t t = 0; t < e->nsteps; t++) out->sc[t] = -out->sc[t];
        } else {
            double *m1 = malloc(e->nsteps * sizeof *m1);
            if (!m1) {
                rc = oom(e);
                break;
            }
            for (size_t t = 0; t < e->nsteps; t++) m1[t] = -1;
            rc = vec_scalar(e, PROMQL_MUL, out, m1, false);
            free(m1);
        }
        break;
    }
    }
    if (rc) val_free(out);
    return rc;
}

/* Label sets in a stable order (Prometheus sorts matrices by labels). */
static int lset_cmp(const lset *a, const lset *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->p, b->p, n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

static int vser_cmp(const void *a, const void *b)
{
    return lset_cmp(&((const vser *)a)->l, &((const vser *)b)->l);
}

static int mser_cmp(const void *a, const void *b)
{
    return lset_cmp(&((const mser *)a)->l, &((const mser *)b)->l);
}

thz_err promql_eval(tsdb *db, int64_t tenant, const promql_expr *x, int64_t start, int64_t end,
                    int64_t step, bool range, int64_t timeout_ms, promql_result **out,
                    promql_error *err)
{
    *out = NULL;
    memset(err, 0, sizeof *err);
    err->pos = -1;
    ev e = {.db = db, .tenant = tenant, .start = start, .step = step, .range = range, .err = err};
    if (end < start)
        return fail(&e, PROMQL_ERR_PARSE, THZ_EINVAL,
                    "end timestamp must not be before start time");
    if (range && step <= 0)
        return fail(&e, PROMQL_ERR_PARSE, THZ_EINVAL,
                    "zero or negative query resolution step widths are not accepted. Try a "
                    "positive integer");
    uint64_t nsteps = range ? (uint64_t)((end - start) / step) + 1 : 1;
    if (nsteps > PROMQL_MAX_STEPS)
        return fail(&e, PROMQL_ERR_PARSE, THZ_EINVAL,
                    "exceeded maximum resolution of %d points per timeseries. Try decreasing the "
                    "query resolution (?step=XX)",
                    PROMQL_MAX_STEPS);
    e.nsteps = (size_t)nsteps;
    if (!range) e.step = 0;
    if (timeout_ms <= 0 || timeout_ms > PROMQL_TIME_LIMIT_MS) timeout_ms = PROMQL_TIME_LIMIT_MS;
    clock_gettime(CLOCK_MONOTONIC, &e.deadline);
    e.deadline.tv_sec += timeout_ms / 1000;
    e.deadline.tv_nsec += (timeout_ms % 1000) * 1000000;
    if (e.deadline.tv_nsec >= 1000000000) {
        e.deadline.tv_sec++;
        e.deadline.tv_nsec -= 1000000000;
    }
    promql_result *r = calloc(1, sizeof *r);
    if (!r) return oom(&e);
    thz_err rc = eval(&e, x, &r->v);
    if (rc) {
        free(r);
        return rc;
    }
    r->start = start;
    r->step = e.step;
    r->nsteps = e.nsteps;
    r->range = range;
    if (r->v.ns) qsort(r->v.s, r->v.ns, sizeof *r->v.s, vser_cmp);
    if (r->v.nm) qsort(r->v.m, r->v.nm, sizeof *r->v.m, mser_cmp);
    *out = r;
    return THZ_OK;
}

/* ---- JSON ---- */

thz_err promql_json_str(thz_buf *b, const char *s, size_t n)
{
    thz_err rc = thz_buf_append(b, "\"", 1);
    for (size_t i = 0; !rc && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            rc = thz_buf_append(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            rc = thz_buf_append(b, esc, 6);
        } else {
            rc = thz_buf_append(b, &s[i], 1);
        }
    }
    return rc ? rc : thz_buf_append(b, "\"", 1);
}

static thz_err put(thz_buf *b, const char *s)
{
    return thz_buf_append(b, s, strlen(s));
}

/* A float as Go's strconv.FormatFloat(v, 'f', -1, 64): the shortest digits
 * that read back as v, never an exponent; NaN, +Inf, -Inf. */
static void fmt_float(double v, char *out, size_t cap)
{
    if (isnan(v)) {
        snprintf(out, cap, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    char e[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, v);
        if (strtod(e, NULL) == v) break;
    }
    /* e is "-d.ddde+XX": digits and exponent to plain decimal */
    char dig[24];
    int nd = 0, exp10;
    const char *q = e;
    bool neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') dig[nd++] = *q;
    exp10 = atoi(q + 1);
    while (nd > 1 && dig[nd - 1] == '0') nd--;
    size_t o = 0;
    if (neg && !(nd == 1 && dig[0] == '0')) out[o++] = '-';
    int point = exp10 + 1; /* digits before the decimal point */
    if (point <= 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -point && o < cap - 2; i++) out[o++] = '0';
        for (int i = 0; i < nd && o < cap - 1; i++) out[o++] = dig[i];
    } else {
        for (int i = 0; i < point && o < cap - 2; i++) out[o++] = i < nd ? dig[i] : '0';
        if (nd > point) {
            out[o++] = '.';
            for (int i = point; i < nd && o < cap - 1; i++) out[o++] = dig[i];
        }
    }
    out[o] = 0;
}

/* Seconds with millisecond precision, as a JSON number. */
static thz_err put_ts(thz_buf *b, int64_t ns)
{
    int64_t ms = ns >= 0 ? ns / 1000000 : -((-ns + 999999) / 1000000);
    int64_t sec = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
    int frac = (int)(ms - sec * 1000);
    char s[40];
    if (frac == 0) {
        snprintf(s, sizeof s, "%lld", (long long)sec);
    } else {
        snprintf(s, sizeof s, "%lld.%03d", (long long)sec, frac);
        size_t n = strlen(s);
        while (s[n - 1] == '0') s[--n] = 0;
    }
    return put(b, s);
}

static thz_err put_point(thz_buf *b, int64_t ns, double v)
{
    char f[400];
    fmt_float(v, f, sizeof f);
    thz_err rc = put(b, "[");
    if (!rc) rc = put_ts(b, ns);
    if (!rc) rc = put(b, ",\"");
    if (!rc) rc = put(b, f);
    return rc ? rc : put(b, "\"]");
}

static thz_err put_metric(thz_buf *b, const lset *l)
{
    thz_err rc = put(b, "{\"metric\":{");
    size_t o = 0;
    for (uint16_t i = 0; !rc && i < l->n; i++) {
        const char *k = l->p + o;
        o += strlen(k) + 1;
        const char *v = l->p + o;
        o += strlen(v) + 1;
        if (i) rc = put(b, ",");
        if (!rc) rc = promql_json_str(b, k, strlen(k));
        if (!rc) rc = put(b, ":");
        if (!rc) rc = promql_json_str(b, v, strlen(v));
    }
    return rc ? rc : put(b, "}");
}

thz_err promql_result_json(const promql_result *r, thz_buf *b)
{
    const val *v = &r->v;
    thz_err rc;
    if (v->type == PROMQL_SCALAR && !r->range) {
        rc = put(b, "{\"resultType\":\"scalar\",\"result\":");
        if (!rc) rc = put_point(b, r->start, v->sc[0]);
        return rc ? rc : put(b, "}");
    }
    if (v->type == PROMQL_MATRIX) {
        rc = put(b, "{\"resultType\":\"matrix\",\"result\":[");
        for (size_t i = 0; !rc && i < v->nm; i++) {
            if (i) rc = put(b, ",");
            if (!rc) rc = put_metric(b, &v->m[i].l);
            if (!rc) rc = put(b, ",\"values\":[");
            for (size_t j = 0; !rc && j < v->m[i].n; j++) {
                if (j) rc = put(b, ",");
                if (!rc) rc = put_point(b, v->m[i].ts[j], v->m[i].v[j]);
            }
            if (!rc) rc = put(b, "]}");
        }
        return rc ? rc : put(b, "]}");
    }
    if (!r->range) { /* an instant vector */
        rc = put(b, "{\"resultType\":\"vector\",\"result\":[");
        bool first = true;
        for (size_t i = 0; !rc && i < v->ns; i++) {
            if (!v->s[i].has[0]) continue;
            if (!first) rc = put(b, ",");
            first = false;
            if (!rc) rc = put_metric(b, &v->s[i].l);
            if (!rc) rc = put(b, ",\"value\":");
            if (!rc) rc = put_point(b, r->start, v->s[i].v[0]);
            if (!rc) rc = put(b, "}");
        }
        return rc ? rc : put(b, "]}");
    }
    /* a range query: a matrix of the steps where each series has a value */
    rc = put(b, "{\"resultType\":\"matrix\",\"result\":[");
    if (v->type == PROMQL_SCALAR) {
        if (!rc) rc = put(b, "{\"metric\":{},\"values\":[");
        for (size_t t = 0; !rc && t < r->nsteps; t++) {
            if (t) rc = put(b, ",");
            if (!rc) rc = put_point(b, r->start + (int64_t)t * r->step, v->sc[t]);
        }
        if (!rc) rc = put(b, "]}");
        return rc ? rc : put(b, "]}");
    }
    bool first = true;
    for (size_t i = 0; !rc && i < v->ns; i++) {
        const vser *s = &v->s[i];
        bool any = false;
        for (size_t t = 0; t < r->nsteps && !any; t++) any = s->has[t];
        if (!any) continue;
        if (!first) rc = put(b, ",");
        first = false;
        if (!rc) rc = put_metric(b, &s->l);
        if (!rc) rc = put(b, ",\"values\":[");
        bool f2 = true;
        for (size_t t = 0; !rc && t < r->nsteps; t++) {
            if (!s->has[t]) continue;
            if (!f2) rc = put(b, ",");
            f2 = false;
            if (!rc) rc = put_point(b, r->start + (int64_t)t * r->step, s->v[t]);
        }
        if (!rc) rc = put(b, "]}");
    }
    return rc ? rc : put(b, "]}");
}

/* ---- series for the metadata routes ---- */

thz_err promql_series(tsdb *db, int64_t tenant, const promql_expr *sel, promql_labels_fn fn,
                      void *ctx, promql_error *err)
{
    memset(err, 0, sizeof *err);
    err->pos = -1;
    ev e = {.db = db, .tenant = tenant, .err = err};
    sel_ctx c;
    lset *ls = NULL;
    /* select_series keeps string series only when asked */
    thz_err rc = select_series(&e, sel, true, &c, &ls);
    lpair v[300];
    const char *names[300], *vals[300];
    for (size_t i = 0; !rc && i < c.n; i++) {
        size_t n = ls[i].n > 300 ? 0 : lset_pairs(&ls[i], v);
        for (size_t j = 0; j < n; j++) {
            names[j] = v[j].name;
            vals[j] = v[j].value;
        }
        if (!fn(ctx, names, vals, n)) break;
    }
    for (size_t j = 0; j < c.n; j++) free(ls[j].p);
    free(ls);
    free(c.v);
    return rc;
}
