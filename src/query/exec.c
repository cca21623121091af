/* exec.c - the executor: expression evaluation, the series of the query
 * grouped into entities (device + tag set), raw rows merged by time from
 * decoded points, aggregation (from tsdb_aggregate/tsdb_last on the fast
 * path, from points otherwise), gap filling and bin functions, ORDER BY,
 * LIMIT, and the budgets (time, rows, points). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics/metrics.h"
#include "query/plan.h"

/* the budgets in force (query_set_limits) */
static _Atomic int64_t lim_time_ms = QUERY_TIME_LIMIT_MS;
static _Atomic int64_t lim_rows = QUERY_MAX_ROWS;
static _Atomic uint64_t lim_points = QUERY_MAX_POINTS;

void query_set_limits(int64_t time_ms, int64_t max_rows, uint64_t max_points)
{
    lim_time_ms = time_ms > 0 ? time_ms : QUERY_TIME_LIMIT_MS;
    lim_rows = max_rows > 0 ? max_rows : QUERY_MAX_ROWS;
    lim_points = max_points > 0 ? max_points : QUERY_MAX_POINTS;
}

void qx_fail(qx *x, thz_err rc, int pos, const char *fmt, ...)
{
    if (x->rc) return;
    x->rc = rc;
    char m[QUERY_MSG_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    q_seterr(x->err, pos, "%s", m);
}

static bool budget(qx *x)
{
    if (x->rc) return false;
    if ((++x->checks & 63) == 0 && q_mono_ns() > x->deadline) {
        x->err->limit = true;
        qx_fail(x, THZ_ETOOBIG, -1, "the query ran longer than its limit of %lld ms",
                (long long)lim_time_ms);
        return false;
    }
    return true;
}

/* ---- values ---- */

static q_val vnull(void)
{
    return (q_val){.t = QV_NULL};
}
static q_val vnum(double f)
{
    return (q_val){.t = QV_NUM, .u.f = f};
}
static q_val vtime(int64_t ns)
{
    return (q_val){.t = QV_TIME, .u.ns = ns};
}
static q_val vbool(bool b)
{
    return (q_val){.t = QV_BOOL, .u.b = b};
}
static q_val vstr(const char *s)
{
    return (q_val){.t = QV_STR, .u.s = {s, (uint32_t)strlen(s)}};
}

static const char *tname(q_vtype t)
{
    switch (t) {
    case QV_NULL: return "NULL";
    case QV_NUM: return "a number";
    case QV_STR: return "a string";
    case QV_TIME: return "a timestamp";
    case QV_BOOL: return "a boolean";
    case QV_INTERVAL: return "an interval";
    }
    return "?";
}

bool qx_truthy(q_val v)
{
    return (v.t == QV_BOOL && v.u.b) || (v.t == QV_NUM && v.u.f != 0);
}

static bool numeric(q_val v, double *f)
{
    if (v.t == QV_NUM)
        *f = v.u.f;
    else if (v.t == QV_BOOL)
        *f = v.u.b;
    else
        return false;
    return true;
}

static q_val copy_val(q_arena **a, q_val v)
{
    if (v.t == QV_STR) {
        char *s = q_strndup(a, v.u.s.p, v.u.s.n);
        if (!s) return vnull();
        v.u.s.p = s;
    }
    return v;
}

/* -1, 0, 1; *ok false when the types do not compare */
static int compare(qx *x, q_val a, q_val b, int pos, bool *ok)
{
    *ok = true;
    double fa, fb;
    if (a.t == QV_TIME && b.t == QV_STR) {
        int64_t t;
        if (!q_time_parse(b.u.s.p, b.u.s.n, &t)) {
            qx_fail(x, THZ_EINVAL, pos, "'%s' is not a timestamp", b.u.s.p);
            *ok = false;
            return 0;
        }
        b = vtime(t);
    } else if (a.t == QV_STR && b.t == QV_TIME) {
        int r = compare(x, b, a, pos, ok);
        return -r;
    }
    if (numeric(a, &fa) && numeric(b, &fb)) return fa < fb ? -1 : fa > fb ? 1 : 0;
    if (a.t == QV_STR && b.t == QV_STR) {
        int r = strcmp(a.u.s.p, b.u.s.p);
        return r < 0 ? -1 : r > 0;
    }
    if ((a.t == QV_TIME && b.t == QV_TIME) || (a.t == QV_INTERVAL && b.t == QV_INTERVAL))
        return a.u.ns < b.u.ns ? -1 : a.u.ns > b.u.ns;
    qx_fail(x, THZ_EINVAL, pos, "cannot compare %s with %s", tname(a.t), tname(b.t));
    *ok = false;
    return 0;
}

static int64_t floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

static q_val arith(qx *x, q_op op, q_val a, q_val b, int pos)
{
    if (a.t == QV_NULL || b.t == QV_NULL) return vnull();
    double fa, fb;
    if (numeric(a, &fa) && numeric(b, &fb)) {
        switch (op) {
        case Q_ADD: return vnum(fa + fb);
        case Q_SUB: return vnum(fa - fb);
        case Q_MUL: return vnum(fa * fb);
        case Q_DIV: return fb == 0 ? vnull() : vnum(fa / fb);
        case Q_MOD: return fb == 0 ? vnull() : vnum(fmod(fa, fb));
        default: break;
        }
    }
    int64_t r = 0;
    bool tt = (a.t == QV_TIME || a.t == QV_INTERVAL) && (b.t == QV_TIME || b.t == QV_INTERVAL);
    if (tt && (op == Q_ADD || op == Q_SUB) &&
        (op == Q_ADD ? __builtin_add_overflow(a.u.ns, b.u.ns, &r)
                     : __builtin_sub_overflow(a.u.ns, b.u.ns, &r))) {
        qx_fail(x, THZ_EINVAL, pos, "time arithmetic out of range");
        return vnull();
    }
    if (a.t == QV_TIME && b.t == QV_INTERVAL && (op == Q_ADD || op == Q_SUB)) return vtime(r);
    if (a.t == QV_INTERVAL && b.t == QV_TIME && op == Q_ADD) return vtime(r);
    if (a.t == QV_TIME && b.t == QV_TIME && op == Q_SUB)
        return (q_val){.t = QV_INTERVAL, .u.ns = r};
    if (a.t == QV_INTERVAL && b.t == QV_INTERVAL && (op == Q_ADD || op == Q_SUB))
        return (q_val){.t = QV_INTERVAL, .u.ns = r};
    if (a.t == QV_INTERVAL && numeric(b, &fb) && (op == Q_MUL || (op == Q_DIV && fb != 0)) &&
        fabs(op == Q_MUL ? a.u.ns * fb : a.u.ns / fb) < 9.2e18)
        return (q_val){.t = QV_INTERVAL,
                       .u.ns = (int64_t)llround(op == Q_MUL ? a.u.ns * fb : a.u.ns / fb)};
    if (numeric(a, &fa) && b.t == QV_INTERVAL && op == Q_MUL && fabs(b.u.ns * fa) < 9.2e18)
        return (q_val){.t = QV_INTERVAL, .u.ns = (int64_t)llround(b.u.ns * fa)};
    static const char *ops = "?+-*/%";
    qx_fail(x, THZ_EINVAL, pos, "cannot apply '%c' to %s and %s", op <= Q_MOD ? ops[op] : '?',
            tname(a.t), tname(b.t));
    return vnull();
}

/* ---- aggregate results ---- */

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static q_val agg_value(qx *x, int i, agg_st *s)
{
    switch (x->aggs[i].fn) {
    case A_COUNT:
    case A_COUNTSTAR: return vnum((double)s->n);
    case A_AVG: return s->n ? vnum(s->sum / (double)s->n) : vnull();
    case A_SUM: return s->n ? vnum(s->sum) : vnull();
    case A_MIN: return !s->n ? vnull() : s->is_time ? vtime(s->tmin) : vnum(s->min);
    case A_MAX: return !s->n ? vnull() : s->is_time ? vtime(s->tmax) : vnum(s->max);
    case A_FIRST: return s->n ? s->first : vnull();
    case A_LAST: return s->n ? s->last : vnull();
    case A_STDDEV: return s->n >= 2 ? vnum(sqrt(s->m2 / (double)(s->n - 1))) : vnull();
    case A_STDDEV_POP: return s->n >= 1 ? vnum(sqrt(s->m2 / (double)s->n)) : vnull();
    case A_PCT: {
        if (!s->ns) return vnull();
        if (!s->sorted) qsort(s->smp, s->ns, sizeof(double), cmp_dbl), s->sorted = true;
        /* nearest rank */
        double r = ceil(x->aggs[i].p * s->ns);
        size_t k = r < 1 ? 0 : (size_t)r - 1;
        if (k >= s->ns) k = s->ns - 1;
        return vnum(s->smp[k]);
    }
    }
    return vnull();
}

/* ---- evaluation ---- */

static q_val call(qx *x, const q_expr *e, rowctx *rc)
{
    const char *f = e->str;
    q_val a[16];
    int n = e->nargs < 16 ? e->nargs : 16;
    for (int i = 0; i < n; i++) {
        a[i] = qx_eval(x, e->args[i], rc);
        if (x->rc) return vnull();
    }
    double v, w;
    if (strcmp(f, "now") == 0) return vtime(x->now);
    if (strcmp(f, "coalesce") == 0) {
        for (int i = 0; i < n; i++)
            if (a[i].t != QV_NULL) return a[i];
        return vnull();
    }
    for (int i = 0; i < n; i++)
        if (a[i].t == QV_NULL) return vnull();
    if (strcmp(f, "ago") == 0) {
        int64_t t;
        if (a[0].t != QV_INTERVAL || __builtin_sub_overflow(x->now, a[0].u.ns, &t)) goto bad;
        return vtime(t);
    }
    if (strcmp(f, "bin") == 0) {
        int64_t t;
        if (a[0].t != QV_TIME || a[1].t != QV_INTERVAL || a[1].u.ns <= 0 ||
            __builtin_mul_overflow(floordiv(a[0].u.ns, a[1].u.ns), a[1].u.ns, &t))
            goto bad;
        return vtime(t);
    }
    if (strcmp(f, "from_milliseconds") == 0 || strcmp(f, "from_nanoseconds") == 0 ||
        strcmp(f, "from_unixtime") == 0) {
        if (!numeric(a[0], &v)) goto bad;
        double m = f[5] == 'm' ? 1e6 : f[5] == 'n' ? 1 : 1e9;
        if (!(fabs(v * m) < 9.2e18)) goto bad;
        return vtime((int64_t)llround(v * m));
    }
    if (strcmp(f, "from_iso8601_timestamp") == 0) {
        int64_t t;
        if (a[0].t != QV_STR || !q_time_parse(a[0].u.s.p, a[0].u.s.n, &t)) goto bad;
        return vtime(t);
    }
    if (strncmp(f, "to_", 3) == 0) {
        if (a[0].t != QV_TIME) goto bad;
        double m = f[3] == 'm' ? 1e6 : f[3] == 'n' ? 1 : 1e9;
        return vnum(m == 1 ? (double)a[0].u.ns : (double)a[0].u.ns / m);
    }
    if (!numeric(a[0], &v)) goto bad;
    if (strcmp(f, "abs") == 0) return vnum(fabs(v));
    if (strcmp(f, "floor") == 0) return vnum(floor(v));
    if (strcmp(f, "ceil") == 0 || strcmp(f, "ceiling") == 0) return vnum(ceil(v));
    if (strcmp(f, "sqrt") == 0) return v < 0 ? vnull() : vnum(sqrt(v));
    if (strcmp(f, "ln") == 0) return v <= 0 ? vnull() : vnum(log(v));
    if (strcmp(f, "log10") == 0) return v <= 0 ? vnull() : vnum(log10(v));
    if (strcmp(f, "exp") == 0) return vnum(exp(v));
    if (strcmp(f, "round") == 0) {
        if (n == 1) return vnum(round(v));
        if (!numeric(a[1], &w)) goto bad;
        double m = pow(10, w);
        return vnum(round(v * m) / m);
    }
    if (strcmp(f, "power") == 0 || strcmp(f, "pow") == 0) {
        if (!numeric(a[1], &w)) goto bad;
        return vnum(pow(v, w));
    }
bad:
    qx_fail(x, THZ_EINVAL, e->pos, "%s cannot take %s", f, n ? tname(a[0].t) : "no arguments");
    if (n > 1 && a[0].t != QV_NULL)
        q_seterr(x->err, e->pos, "%s cannot take (%s, %s)", f, tname(a[0].t), tname(a[1].t));
    return vnull();
}

q_val qx_eval(qx *x, const q_expr *e, rowctx *rc)
{
    if (x->rc) return vnull();
    switch (e->rk) {
    case RK_GROUP:
        if (rc->g) return rc->g->keys[e->ref];
        break;
    case RK_AGG:
        if (rc->g) return agg_value(x, e->ref, &rc->g->st[e->ref]);
        break;
    case RK_POST:
        if (rc->g) return rc->g->post[e->ref];
        break;
    default: break;
    }
    switch (e->kind) {
    case Q_NUM: return vnum(e->num);
    case Q_STR: return vstr(e->str);
    case Q_TIME: return vtime(e->ns);
    case Q_INTERVAL: return (q_val){.t = QV_INTERVAL, .u.ns = e->ns};
    case Q_BOOL: return vbool(e->num != 0);
    case Q_NULL: return vnull();
    case Q_STAR: return vnull();
    case Q_COL:
        if (!rc->e && !rc->mv) {
            qx_fail(x, THZ_EINVAL, e->pos, "column '%s' is not allowed here", e->str);
            return vnull();
        }
        switch (e->rk) {
        case RK_TIME: return rc->mv ? vtime(rc->t) : vnull();
        case RK_DEVICE: return rc->e ? vstr(rc->e->device) : vnull();
        case RK_TAG: return rc->e ? rc->e->tagv[e->ref] : vnull();
        case RK_METRIC: return rc->mv ? rc->mv[e->ref] : vnull();
        case RK_MNAME: return rc->e && rc->e->metric ? vstr(rc->e->metric) : vnull();
        case RK_MVAL: return rc->mv && rc->e && (int)rc->e->type[0] == e->ref ? rc->mv[0] : vnull();
        default: return vnull();
        }
    case Q_CALL: return call(x, e, rc);
    case Q_NEG: {
        q_val a = qx_eval(x, e->args[0], rc);
        if (a.t == QV_NULL) return a;
        if (a.t == QV_NUM) return vnum(-a.u.f);
        if (a.t == QV_INTERVAL) return (q_val){.t = QV_INTERVAL, .u.ns = -a.u.ns};
        qx_fail(x, THZ_EINVAL, e->pos, "cannot negate %s", tname(a.t));
        return vnull();
    }
    case Q_NOT: {
        q_val a = qx_eval(x, e->args[0], rc);
        if (a.t == QV_NULL) return a;
        return vbool(!qx_truthy(a));
    }
    case Q_ISNULL: {
        q_val a = qx_eval(x, e->args[0], rc);
        return vbool((a.t == QV_NULL) != e->neg);
    }
    case Q_IN: {
        q_val a = qx_eval(x, e->args[0], rc);
        if (a.t == QV_NULL) return a;
        bool null = false;
        for (int i = 1; i < e->nargs; i++) {
            q_val b = qx_eval(x, e->args[i], rc);
            if (b.t == QV_NULL) {
                null = true;
                continue;
            }
            bool ok;
            int c = compare(x, a, b, e->args[i]->pos, &ok);
            if (!ok) return vnull();
            if (c == 0) return vbool(!e->neg);
        }
        return null ? vnull() : vbool(e->neg);
    }
    case Q_BETWEEN: {
        q_val a = qx_eval(x, e->args[0], rc), lo = qx_eval(x, e->args[1], rc),
              hi = qx_eval(x, e->args[2], rc);
        if (a.t == QV_NULL || lo.t == QV_NULL || hi.t == QV_NULL) return vnull();
        bool ok1, ok2;
        int c1 = compare(x, a, lo, e->pos, &ok1), c2 = compare(x, a, hi, e->pos, &ok2);
        if (!ok1 || !ok2) return vnull();
        return vbool((c1 >= 0 && c2 <= 0) != e->neg);
    }
    case Q_BINOP: {
        if (e->op == Q_AND || e->op == Q_OR) {
            q_val a = qx_eval(x, e->args[0], rc);
            if (a.t != QV_NULL && qx_truthy(a) == (e->op == Q_OR)) return vbool(e->op == Q_OR);
            q_val b = qx_eval(x, e->args[1], rc);
            if (b.t != QV_NULL && qx_truthy(b) == (e->op == Q_OR)) return vbool(e->op == Q_OR);
            if (a.t == QV_NULL || b.t == QV_NULL) return vnull();
            return vbool(e->op == Q_AND);
        }
        q_val a = qx_eval(x, e->args[0], rc), b = qx_eval(x, e->args[1], rc);
        if (x->rc) return vnull();
        if (e->op <= Q_MOD) return arith(x, e->op, a, b, e->pos);
        if (a.t == QV_NULL || b.t == QV_NULL) return vnull();
        bool ok;
        int c = compare(x, a, b, e->pos, &ok);
        if (!ok) return vnull();
        switch (e->op) {
        case Q_EQ: return vbool(c == 0);
        case Q_NE: return vbool(c != 0);
        case Q_LT: return vbool(c < 0);
        case Q_LE: return vbool(c <= 0);
        case Q_GT: return vbool(c > 0);
        case Q_GE: return vbool(c >= 0);
        default: return vnull();
        }
    }
    }
    return vnull();
}

/* ---- entities: the series of the query, by device and tag set ---- */

static const char *unescape(qx *x, const char *s, size_t n)
{
    char *o = q_alloc(&x->ar, n + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) i++;
        o[k++] = s[i];
    }
    o[k] = 0;
    return o;
}

static bool ent_fn(void *ctx, const tsdb_series *s)
{
    qx *x = ctx;
    if (!budget(x)) return false;
    int slot = -1;
    if (x->narrow)
        slot = 0;
    else
        for (int i = 0; i < x->nmetrics; i++)
            if (strcmp(x->metrics[i], s->metric) == 0) slot = i;
    if (slot < 0) {
        if (!x->all_metrics) return true;
        /* every metric of the entity counts as a column (count(*), SELECT *) */
        char *name = q_strndup(&x->ar, s->metric, strlen(s->metric));
        if (!name || x->nmetrics >= Q_MAX_COLS) {
            qx_fail(x, name ? THZ_ETOOBIG : THZ_ENOMEM, -1, "too many metrics");
            return false;
        }
        slot = x->nmetrics++; /* sid arrays have room for Q_MAX_COLS */
        x->metrics[slot] = name;
    }
    size_t dl = strlen(s->device), tl = strlen(s->tags);
    char key[2048];
    if (dl + tl + 2 > sizeof key) return true;
    memcpy(key, s->device, dl);
    key[dl] = 0;
    memcpy(key + dl + 1, s->tags, tl);
    if (x->narrow) { /* one entity per series */
        size_t ml = strlen(s->metric);
        if (dl + tl + ml + 3 > sizeof key) return true;
        key[dl + 1 + tl] = 0;
        memcpy(key + dl + 2 + tl, s->metric, ml);
        tl += ml + 1;
    }
    entity *en = hmap_get(&x->ent_map, key, dl + 1 + tl);
    if (!en) {
        en = q_alloc(&x->ar, sizeof *en);
        char *k = en ? q_strndup(&x->ar, key, dl + 1 + tl) : NULL;
        if (en) {
            en->device = s->device;
            en->tags = s->tags;
            en->metric = x->narrow ? s->metric : NULL;
            en->tagv = q_alloc(&x->ar, sizeof(q_val) * (x->ntags ? x->ntags : 1));
            /* the slots: the metrics named, or any metric met (SELECT *, count(*)) */
            size_t ns = x->all_metrics ? Q_MAX_COLS : (size_t)(x->nmetrics ? x->nmetrics : 1);
            en->sid = q_alloc(&x->ar, sizeof(uint64_t) * ns);
            en->type = q_alloc(&x->ar, sizeof(tsdb_type) * ns);
        }
        if (!en || !k || !en->tagv || !en->sid || !en->type ||
            hmap_put(&x->ent_map, k, dl + 1 + tl, en, NULL) != THZ_OK) {
            qx_fail(x, THZ_ENOMEM, -1, "out of memory");
            return false;
        }
        /* tag values */
        const char *p = s->tags;
        while (*p) {
            const char *k0 = p;
            while (*p && *p != '=') p += (*p == '\\' && p[1]) ? 2 : 1;
            size_t kl = (size_t)(p - k0);
            if (*p == '=') p++;
            const char *v0 = p;
            while (*p && *p != ',') p += (*p == '\\' && p[1]) ? 2 : 1;
            for (int i = 0; i < x->ntags; i++)
                if (strlen(x->tags[i]) == kl && memcmp(x->tags[i], k0, kl) == 0) {
                    const char *v = unescape(x, v0, (size_t)(p - v0));
                    if (v) en->tagv[i] = vstr(v);
                }
            if (*p == ',') p++;
        }
        /* filters on device and tags */
        rowctx rc = {.e = en};
        for (int i = 0; i < x->nconj; i++)
            if (x->conj_class[i] == 1) {
                q_val v = qx_eval(x, x->conj[i], &rc);
                if (x->rc) return false;
                if (!qx_truthy(v)) {
                    en->device = NULL; /* excluded */
                    break;
                }
            }
        if (en->device) {
            if (x->nents == x->ecap) {
                size_t nc = x->ecap ? x->ecap * 2 : 64;
                entity **ne = realloc(x->ents, nc * sizeof *ne);
                if (!ne) {
                    qx_fail(x, THZ_ENOMEM, -1, "out of memory");
                    return false;
                }
                x->ents = ne;
                x->ecap = nc;
            }
            x->ents[x->nents++] = en;
        }
    }
    en->sid[slot] = s->id;
    en->type[slot] = s->type;
    return true;
}

static int ent_cmp(const void *a, const void *b)
{
    const entity *x = *(entity *const *)a, *y = *(entity *const *)b;
    int c = strcmp(x->device, y->device);
    if (!c) c = strcmp(x->tags, y->tags);
    if (!c && x->metric && y->metric) c = strcmp(x->metric, y->metric);
    return c;
}

/* ---- reading points ---- */

typedef struct ptbuf {
    qx *x;
    int64_t *ts;
    q_val *v;
    size_t n, cap;
    q_arena *ar; /* strings */
} ptbuf;

static bool pt_fn(void *ctx, const int64_t *ts, const tsdb_value *v, size_t n)
{
    ptbuf *b = ctx;
    qx *x = b->x;
    if (!budget(x)) return false;
    x->points += n;
    if (x->points > lim_points) {
        x->err->limit = true;
        qx_fail(x, THZ_ETOOBIG, -1,
                "the query would read more than %llu points; narrow the time range",
                (unsigned long long)lim_points);
        return false;
    }
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 1024;
        while (nc < b->n + n) nc *= 2;
        int64_t *nt = realloc(b->ts, nc * sizeof *nt);
        if (nt) b->ts = nt;
        q_val *nv = realloc(b->v, nc * sizeof *nv);
        if (nv) b->v = nv;
        if (!nt || !nv) {
            qx_fail(x, THZ_ENOMEM, -1, "out of memory");
            return false;
        }
        b->cap = nc;
    }
    for (size_t i = 0; i < n; i++) {
        q_val q;
        switch (v[i].type) {
        case TSDB_FLOAT: q = vnum(v[i].u.f); break;
        case TSDB_INT: q = vnum((double)v[i].u.i); break;
        case TSDB_BOOL: q = vbool(v[i].u.b); break;
        case TSDB_STRING: {
            char *s = q_strndup(&b->ar, v[i].u.s.p, v[i].u.s.n);
            if (!s) {
                qx_fail(x, THZ_ENOMEM, -1, "out of memory");
                return false;
            }
            q = (q_val){.t = QV_STR, .u.s = {s, v[i].u.s.n}};
            break;
        }
        default: q = vnull();
        }
        b->ts[b->n] = ts[i];
        b->v[b->n++] = q;
    }
    return true;
}

/* Calls row() for every row of entity en in time order: the metric values
 * present at each timestamp. */
typedef bool (*row_fn)(qx *x, rowctx *rc);

static bool entity_rows(qx *x, entity *en, row_fn row)
{
    int nm = x->nmetrics;
    ptbuf *b = calloc(nm ? nm : 1, sizeof *b);
    size_t *at = calloc(nm ? nm : 1, sizeof *at);
    q_val *mv = calloc(nm ? nm : 1, sizeof *mv);
    bool ok = b && at && mv;
    if (!ok) qx_fail(x, THZ_ENOMEM, -1, "out of memory");
    for (int i = 0; ok && i < nm; i++) {
        b[i].x = x;
        if (!en->sid[i]) continue;
        thz_err rc = tsdb_read(x->db, x->tenant, en->sid[i], x->t0, x->t1, pt_fn, &b[i]);
        if (x->rc)
            ok = false;
        else if (rc && rc != THZ_ENOTFOUND) {
            qx_fail(x, rc, -1, "reading a series failed: %s", thz_strerror(rc));
            ok = false;
        }
    }
    while (ok) {
        int64_t t = INT64_MAX;
        bool any = false;
        for (int i = 0; i < nm; i++)
            if (at[i] < b[i].n && (!any || b[i].ts[at[i]] < t)) t = b[i].ts[at[i]], any = true;
        if (!any) break;
        for (int i = 0; i < nm; i++) {
            if (at[i] < b[i].n && b[i].ts[at[i]] == t)
                mv[i] = b[i].v[at[i]++];
            else
                mv[i] = vnull();
        }
        rowctx rc = {.t = t, .e = en, .mv = mv};
        bool keep = true;
        for (int i = 0; i < x->nconj && keep; i++)
            if (x->conj_class[i] == 0) {
                q_val v = qx_eval(x, x->conj[i], &rc);
                keep = qx_truthy(v);
            }
        if (x->rc || (keep && !row(x, &rc)) || !budget(x)) break;
    }
    for (int i = 0; b && i < nm; i++) {
        free(b[i].ts);
        free(b[i].v);
        q_arena_free(b[i].ar);
    }
    free(b);
    free(at);
    free(mv);
    return !x->rc;
}

/* ---- result rows ---- */

static q_val *res_row(qx *x)
{
    q_result *r = x->res;
    if ((int64_t)r->nrows >= lim_rows) {
        x->err->limit = true;
        qx_fail(x, THZ_ETOOBIG, -1,
                "the result has more than %lld rows; add a LIMIT or narrow the query",
                (long long)lim_rows);
        return NULL;
    }
    if (r->nrows == r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 256;
        q_val *nv = realloc(r->vals, nc * r->width * sizeof *nv);
        if (!nv) {
            qx_fail(x, THZ_ENOMEM, -1, "out of memory");
            return NULL;
        }
        r->vals = nv;
        r->cap = nc;
    }
    return &r->vals[r->nrows++ * r->width];
}

static bool emit(qx *x, rowctx *rc)
{
    q_val *o = res_row(x);
    if (!o) return false;
    size_t w = x->res->ncols;
    for (int i = 0; i < x->nitems; i++) o[i] = copy_val(&x->res->ar, qx_eval(x, x->items[i].e, rc));
    for (int i = 0; i < x->norder; i++)
        o[w + i] = x->order_hidden[i] ? copy_val(&x->res->ar, qx_eval(x, x->order_hidden[i], rc))
                                      : vnull();
    return !x->rc;
}

static bool raw_row(qx *x, rowctx *rc)
{
    if (!emit(x, rc)) return false;
    /* without ORDER BY the rows come in entity and time order: LIMIT stops */
    if (x->q->limit >= 0 && !x->norder && (int64_t)x->res->nrows >= x->q->limit) return false;
    return true;
}

/* ---- groups ---- */

static void key_bytes(thz_buf *b, q_val v)
{
    uint8_t t = (uint8_t)v.t;
    thz_buf_append(b, &t, 1);
    switch (v.t) {
    case QV_NUM: thz_buf_append(b, &v.u.f, 8); break;
    case QV_BOOL: thz_buf_append(b, &v.u.b, 1); break;
    case QV_TIME:
    case QV_INTERVAL: thz_buf_append(b, &v.u.ns, 8); break;
    case QV_STR: thz_buf_append(b, v.u.s.p, v.u.s.n + 1); break;
    default: break;
    }
}

static group *group_get(qx *x, q_val *keys)
{
    thz_buf b = {0};
    for (int i = 0; i < x->ngroup; i++) key_bytes(&b, keys[i]);
    if (!b.p && thz_buf_append(&b, "", 1)) {
        qx_fail(x, THZ_ENOMEM, -1, "out of memory");
        return NULL;
    }
    group *g = hmap_get(&x->groups, b.p, b.len);
    if (g) {
        thz_buf_free(&b);
        return g;
    }
    if ((int64_t)x->ng >= lim_rows) {
        thz_buf_free(&b);
        x->err->limit = true;
        qx_fail(x, THZ_ETOOBIG, -1, "the query has more than %lld groups", (long long)lim_rows);
        return NULL;
    }
    g = q_alloc(&x->ar, sizeof *g);
    if (g) {
        g->keys = q_alloc(&x->ar, sizeof(q_val) * (x->ngroup ? x->ngroup : 1));
        g->st = q_alloc(&x->ar, sizeof(agg_st) * (x->naggs ? x->naggs : 1));
        g->post = q_alloc(&x->ar, sizeof(q_val) * (x->nposts ? x->nposts : 1));
        g->hkey = q_strndup(&x->ar, (const char *)b.p, b.len);
        g->hlen = b.len;
    }
    thz_buf_free(&b);
    if (!g || !g->keys || !g->st || !g->post || !g->hkey) {
        qx_fail(x, THZ_ENOMEM, -1, "out of memory");
        return NULL;
    }
    for (int i = 0; i < x->ngroup; i++) g->keys[i] = copy_val(&x->ar, keys[i]);
    if (x->ng == x->gcap) {
        size_t nc = x->gcap ? x->gcap * 2 : 64;
        group **ng = realloc(x->gv, nc * sizeof *ng);
        if (!ng) {
            qx_fail(x, THZ_ENOMEM, -1, "out of memory");
            return NULL;
        }
        x->gv = ng;
        x->gcap = nc;
    }
    if (hmap_put(&x->groups, g->hkey, g->hlen, g, NULL) != THZ_OK) {
        qx_fail(x, THZ_ENOMEM, -1, "out of memory");
        return NULL;
    }
    x->gv[x->ng++] = g;
    return g;
}

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

static void agg_add(qx *x, int ai, agg_st *s, q_val v, int64_t t)
{
    agg_def *a = &x->aggs[ai];
    if (a->fn == A_COUNTSTAR) {
        s->n++;
        return;
    }
    if (v.t == QV_NULL) return;
    double f = 0;
    bool num = numeric(v, &f);
    switch (a->fn) {
    case A_COUNT: s->n++; return;
    case A_FIRST:
        if (!s->n || t < s->fts) s->first = copy_val(&x->ar, v), s->fts = t;
        if (!s->n || t >= s->lts) s->lts = t;
        s->n++;
        return;
    case A_LAST:
        if (!s->n || t >= s->lts) s->last = copy_val(&x->ar, v), s->lts = t;
        s->n++;
        return;
    case A_MIN:
    case A_MAX:
        if (v.t == QV_TIME) {
            if (!s->n || v.u.ns < s->tmin) s->tmin = v.u.ns;
            if (!s->n || v.u.ns > s->tmax) s->tmax = v.u.ns;
            s->is_time = true;
            s->n++;
            return;
        }
        break;
    default: break;
    }
    if (!num) {
        qx_fail(x, THZ_EINVAL, a->node->pos, "%s needs numbers, not %s", a->node->str, tname(v.t));
        return;
    }
    if (!s->n || f < s->min) s->min = f;
    if (!s->n || f > s->max) s->max = f;
    s->n++;
    s->sum += f;
    double d = f - s->mean;
    s->mean += d / (double)s->n;
    s->m2 += d * (f - s->mean);
    if (a->fn == A_PCT) {
        /* reservoir sample: exact up to QUERY_PCT_SAMPLE values */
        s->seen++;
        if (s->ns < QUERY_PCT_SAMPLE) {
            if (s->ns == s->cap) {
                uint32_t nc = s->cap ? s->cap * 2 : 64;
                double *np = realloc(s->smp, nc * sizeof *np);
                if (!np) {
                    qx_fail(x, THZ_ENOMEM, -1, "out of memory");
                    return;
                }
                s->smp = np;
                s->cap = nc;
            }
            s->smp[s->ns++] = f;
        } else {
            uint64_t seed = s->seen * 0x9e3779b97f4a7c15ULL;
            uint64_t j = lcg(&seed) % s->seen;
            if (j < QUERY_PCT_SAMPLE) s->smp[j] = f;
        }
        s->sorted = false;
    }
}

static int val_cmp(q_val a, q_val b);

static bool agg_row(qx *x, rowctx *rc)
{
    q_val keys[256];
    for (int i = 0; i < x->ngroup; i++) {
        keys[i] = qx_eval(x, x->group[i], rc);
        if (x->rc) return false;
    }
    /* rows come in time order per entity: the group of the previous row is
     * usually this one's too (no key building, no hash lookup) */
    group *g = x->lastg;
    for (int i = 0; g && i < x->ngroup; i++)
        if (keys[i].t != g->keys[i].t || val_cmp(keys[i], g->keys[i]) != 0) g = NULL;
    if (!g) g = group_get(x, keys);
    if (!g) return false;
    x->lastg = g;
    for (int i = 0; i < x->naggs && !x->rc; i++) {
        q_val v = x->aggs[i].arg ? qx_eval(x, x->aggs[i].arg, rc) : vnull();
        agg_add(x, i, &g->st[i], v, rc->t);
    }
    return !x->rc;
}

/* merges an engine aggregate into a group's state */
static void agg_merge(qx *x, int ai, agg_st *s, const tsdb_agg *a)
{
    if (!a->count) return;
    int fn = x->aggs[ai].fn;
    if (fn == A_FIRST) {
        if (!s->n || a->first_ts < s->fts) s->first = vnum(a->first), s->fts = a->first_ts;
    } else if (fn == A_LAST) {
        if (!s->n || a->last_ts >= s->lts) s->last = vnum(a->last), s->lts = a->last_ts;
    }
    if (!s->n || a->min < s->min) s->min = a->min;
    if (!s->n || a->max > s->max) s->max = a->max;
    s->n += a->count;
    s->sum += a->sum;
}

typedef struct last_ctx {
    bool got;
    int64_t ts;
    double v;
    bool numeric;
} last_ctx;

static bool last_fn(void *ctx, const int64_t *ts, const tsdb_value *v, size_t n)
{
    last_ctx *l = ctx;
    if (!n) return true;
    l->got = true;
    l->ts = ts[0];
    l->numeric = true;
    switch (v[0].type) {
    case TSDB_FLOAT: l->v = v[0].u.f; break;
    case TSDB_INT: l->v = (double)v[0].u.i; break;
    case TSDB_BOOL: l->v = v[0].u.b; break;
    default: l->numeric = false;
    }
    return false;
}

/* The fast path for one entity and one metric slot. */
static bool fast_metric(qx *x, entity *en, int slot)
{
    uint64_t sid = en->sid[slot];
    if (!sid) return true;
    q_val keys[256];
    rowctx rc = {.e = en};
    for (int i = 0; i < x->ngroup; i++)
        if (i != x->bin_key) keys[i] = qx_eval(x, x->group[i], &rc);
    bool only_last = x->bin_key < 0;
    for (int i = 0; i < x->naggs; i++)
        if (x->aggs[i].arg->ref == slot && x->aggs[i].fn != A_LAST) only_last = false;
    if (only_last) {
        /* the last-value cache, when the newest point is in range */
        last_ctx l = {0};
        thz_err rc2 = tsdb_last(x->db, x->tenant, sid, last_fn, &l);
        if (rc2 && rc2 != THZ_ENOTFOUND) {
            qx_fail(x, rc2, -1, "tsdb_last failed: %s", thz_strerror(rc2));
            return false;
        }
        if (!l.got) return true;
        if (l.numeric && l.ts >= x->t0 && l.ts < x->t1) {
            group *g = group_get(x, keys);
            if (!g) return false;
            tsdb_agg a = {.count = 1,
                          .sum = l.v,
                          .min = l.v,
                          .max = l.v,
                          .first = l.v,
                          .last = l.v,
                          .first_ts = l.ts,
                          .last_ts = l.ts};
            for (int i = 0; i < x->naggs; i++)
                if (x->aggs[i].arg->ref == slot) agg_merge(x, i, &g->st[i], &a);
            return true;
        }
    }
    /* one call: the bins of bin(time, w) from the one holding t0, the first
     * and last cut by the range (the engine keeps only points in range) */
    int64_t origin = x->t0, step = 0;
    size_t n = 1;
    if (x->bin_key >= 0) {
        step = x->bin_w;
        origin = floordiv(x->t0, step) * step;
        n = (size_t)((floordiv(x->t1 - 1, step) * step - origin) / step) + 1;
    }
    tsdb_agg *out = calloc(n, sizeof *out);
    if (!out) {
        qx_fail(x, THZ_ENOMEM, -1, "out of memory");
        return false;
    }
    thz_err rc2 = tsdb_aggregate_from(x->db, x->tenant, sid, x->t0, x->t1, origin, step, out, n);
    if (rc2 && rc2 != THZ_ENOTFOUND) {
        free(out);
        qx_fail(x, rc2, -1, "tsdb_aggregate failed: %s", thz_strerror(rc2));
        return false;
    }
    for (size_t i = 0; !rc2 && i < n && !x->rc; i++) {
        if (!out[i].count) continue;
        if (x->bin_key >= 0) keys[x->bin_key] = vtime(origin + (int64_t)i * step);
        group *g = group_get(x, keys);
        if (!g) break;
        for (int a = 0; a < x->naggs; a++)
            if (x->aggs[a].arg->ref == slot) agg_merge(x, a, &g->st[a], &out[i]);
    }
    free(out);
    if (x->rc) return false;
    return budget(x);
}

/* group order: the keys other than the bin first, then the bin */
static int val_cmp(q_val a, q_val b)
{
    if (a.t != b.t) return a.t == QV_NULL ? 1 : b.t == QV_NULL ? -1 : (int)a.t - (int)b.t;
    switch (a.t) {
    case QV_NUM: return a.u.f < b.u.f ? -1 : a.u.f > b.u.f;
    case QV_BOOL: return (int)a.u.b - (int)b.u.b;
    case QV_TIME:
    case QV_INTERVAL: return a.u.ns < b.u.ns ? -1 : a.u.ns > b.u.ns;
    case QV_STR: {
        int c = strcmp(a.u.s.p, b.u.s.p);
        return c < 0 ? -1 : c > 0;
    }
    default: return 0;
    }
}

static int part_cmp(const qx *sort_x, const group *a, const group *b)
{
    for (int i = 0; i < sort_x->ngroup; i++) {
        if (i == sort_x->bin_key) continue;
        int c = val_cmp(a->keys[i], b->keys[i]);
        if (c) return c;
    }
    return 0;
}

static int group_cmp(const void *pa, const void *pb, void *ctx)
{
    const qx *sort_x = ctx;
    const group *a = *(group *const *)pa, *b = *(group *const *)pb;
    int c = part_cmp(sort_x, a, b);
    if (c || sort_x->bin_key < 0) return c;
    return val_cmp(a->keys[sort_x->bin_key], b->keys[sort_x->bin_key]);
}

static bool gap_fill(qx *x)
{
    size_t n0 = x->ng;
    int bk = x->bin_key;
    int64_t w = x->bin_w;
    for (size_t s = 0; s < n0;) {
        size_t e = s + 1;
        while (e < n0 && part_cmp(x, x->gv[s], x->gv[e]) == 0) e++;
        int64_t lo = x->gv[s]->keys[bk].u.ns, hi = x->gv[e - 1]->keys[bk].u.ns;
        if (x->t0 != INT64_MIN) lo = floordiv(x->t0, w) * w;
        if (x->t1 != INT64_MAX) hi = floordiv(x->t1 - 1, w) * w;
        if ((double)(hi - lo) / (double)w > (double)lim_rows) {
            x->err->limit = true;
            qx_fail(x, THZ_ETOOBIG, -1, "gap filling would make more than %lld rows",
                    (long long)lim_rows);
            return false;
        }
        q_val keys[256];
        memcpy(keys, x->gv[s]->keys, sizeof(q_val) * x->ngroup);
        for (int64_t t = lo; t <= hi; t += w) {
            keys[bk] = vtime(t);
            size_t before = x->ng;
            group *g = group_get(x, keys);
            if (!g) return false;
            if (x->ng > before) g->filled = true;
            if (!budget(x)) return false;
        }
        s = e;
    }
    if (x->ng) qsort_r(x->gv, x->ng, sizeof *x->gv, group_cmp, x);
    return true;
}

static void run_posts(qx *x)
{
    for (int p = 0; p < x->nposts && !x->rc; p++) {
        post_def *pd = &x->posts[p];
        for (size_t s = 0; s < x->ng && !x->rc;) {
            size_t e = s + 1;
            while (e < x->ng && part_cmp(x, x->gv[s], x->gv[e]) == 0) e++;
            /* the inner values of the partition, in bin order */
            for (size_t i = s; i < e; i++) {
                rowctx rc = {.g = x->gv[i]};
                x->gv[i]->post[p] = qx_eval(x, pd->arg, &rc);
            }
            int64_t prev_t = 0;
            double prev = 0;
            bool have = false;
            q_val *tmp = malloc((e - s) * sizeof *tmp);
            if (!tmp) {
                qx_fail(x, THZ_ENOMEM, -1, "out of memory");
                return;
            }
            for (size_t i = s; i < e; i++) tmp[i - s] = x->gv[i]->post[p];
            for (size_t i = s; i < e; i++) {
                q_val v = tmp[i - s];
                int64_t t = x->gv[i]->keys[x->bin_key].u.ns;
                double f;
                bool isnum = numeric(v, &f);
                q_val out = v;
                switch (pd->fn) {
                case P_LOCF:
                    if (v.t == QV_NULL && have) out = vnum(prev);
                    break;
                case P_LINEAR:
                    if (v.t == QV_NULL && have) {
                        for (size_t j = i + 1; j < e; j++) {
                            double g2;
                            if (numeric(tmp[j - s], &g2)) {
                                int64_t t2 = x->gv[j]->keys[x->bin_key].u.ns;
                                out = vnum(prev + (g2 - prev) * (double)(t - prev_t) /
                                                      (double)(t2 - prev_t));
                                break;
                            }
                        }
                    }
                    break;
                case P_DERIV:
                case P_RATE:
                    out = vnull();
                    if (isnum && have && t > prev_t) {
                        double d = f - prev;
                        if (pd->fn == P_RATE && d < 0) d = f; /* a counter reset */
                        out = vnum(d / ((double)(t - prev_t) / (double)pd->unit));
                    }
                    break;
                }
                if (isnum) prev = f, prev_t = t, have = true;
                x->gv[i]->post[p] = out;
            }
            free(tmp);
            s = e;
        }
    }
}

/* ---- ORDER BY ---- */

static int order_cmp(const void *pa, const void *pb, void *ctx)
{
    const q_val *a = pa, *b = pb;
    qx *x = ctx;
    for (int i = 0; i < x->norder; i++) {
        size_t c = x->order_col[i] >= 0 ? (size_t)x->order_col[i] : x->res->ncols + i;
        int r = val_cmp(a[c], b[c]);
        /* NULLs last either way */
        if (r && a[c].t != QV_NULL && b[c].t != QV_NULL && x->order_desc[i]) r = -r;
        if (r) return r;
    }
    return 0;
}

/* ---- the run ---- */

thz_err qx_exec(qx *x)
{
    q_result *r = x->res;
    /* the series, grouped into entities */
    thz_err rc = tsdb_series_select(x->db, x->tenant, x->m, x->nm, ent_fn, x);
    if (x->rc) return x->rc;
    if (rc) {
        qx_fail(x, rc, rc == THZ_EINVAL ? 0 : -1, "cannot select the series: %s", thz_strerror(rc));
        return x->rc;
    }
    if (x->nents) qsort(x->ents, x->nents, sizeof *x->ents, ent_cmp);
    if (x->t0 >= x->t1) x->nents = 0; /* an empty time range */

    if (!x->is_agg) {
        x->path = "raw";
        for (size_t i = 0; i < x->nents && !x->rc; i++) {
            entity_rows(x, x->ents[i], raw_row);
            if (x->q->limit >= 0 && !x->norder && (int64_t)r->nrows >= x->q->limit) break;
        }
        if (x->rc) return x->rc;
    } else {
        if (x->fast) {
            /* a string series cannot be aggregated by the engine */
            for (size_t i = 0; i < x->nents; i++)
                for (int a = 0; a < x->naggs; a++) {
                    int s = x->aggs[a].arg->ref;
                    if (x->ents[i]->sid[s] && x->ents[i]->type[s] == TSDB_STRING) x->fast = false;
                }
        }
        x->path = x->fast ? "agg-fast" : "agg-points";
        for (size_t i = 0; i < x->nents && !x->rc; i++) {
            if (x->fast) {
                for (int s = 0; s < x->nmetrics && !x->rc; s++) {
                    bool used = false;
                    for (int a = 0; a < x->naggs; a++) used |= x->aggs[a].arg->ref == s;
                    if (used) fast_metric(x, x->ents[i], s);
                }
            } else {
                entity_rows(x, x->ents[i], agg_row);
            }
        }
        if (x->rc) return x->rc;
        /* an aggregate without GROUP BY has one row even over no data */
        if (x->ngroup == 0 && x->ng == 0 && !group_get(x, NULL)) return x->rc;
        if (x->ng) qsort_r(x->gv, x->ng, sizeof *x->gv, group_cmp, x);
        if (x->gapfill && x->ng && !gap_fill(x)) return x->rc;
        run_posts(x);
        for (size_t i = 0; i < x->ng && !x->rc; i++) {
            rowctx rc2 = {.g = x->gv[i]};
            if (x->q->having && !qx_truthy(qx_eval(x, x->q->having, &rc2))) continue;
            emit(x, &rc2);
        }
        if (x->rc) return x->rc;
    }
    if (x->norder) {
        if (r->nrows) qsort_r(r->vals, r->nrows, r->width * sizeof(q_val), order_cmp, x);
    }
    if (x->q->limit >= 0 && (int64_t)r->nrows > x->q->limit) r->nrows = (size_t)x->q->limit;
    return THZ_OK;
}

/* ---- the entry point ---- */

static char *colname(qx *x, const q_item *it)
{
    if (it->alias) return q_strndup(&x->res->ar, it->alias, strlen(it->alias));
    if (it->e->kind == Q_COL) return q_strndup(&x->res->ar, it->e->str, strlen(it->e->str));
    thz_buf b = {0};
    q_expr_sql(it->e, &b);
    char *s = q_strndup(&x->res->ar, b.p ? (const char *)b.p : "", b.len);
    thz_buf_free(&b);
    return s;
}

static thz_err run(tsdb *db, int64_t tenant, const char *sql, size_t len, int64_t now_ns,
                   q_result **out, q_error *err);

thz_err query_run(tsdb *db, int64_t tenant, const char *sql, size_t len, int64_t now_ns,
                  q_result **out, q_error *err)
{
    double t0 = metrics_now();
    thz_err rc = run(db, tenant, sql, len, now_ns, out, err);
    metrics_observe_query("sql", metrics_now() - t0);
    return rc;
}

static thz_err run(tsdb *db, int64_t tenant, const char *sql, size_t len, int64_t now_ns,
                   q_result **out, q_error *err)
{
    *out = NULL;
    q_query *q;
    thz_err rc = q_parse(sql, len, &q, err);
    if (rc) return rc;
    qx *x = calloc(1, sizeof *x);
    q_result *r = calloc(1, sizeof *r);
    if (!x || !r) {
        free(x);
        free(r);
        q_free(q);
        q_seterr(err, -1, "out of memory");
        return THZ_ENOMEM;
    }
    x->db = db;
    x->tenant = tenant;
    x->q = q;
    x->err = err;
    x->res = r;
    if (!now_ns) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        now_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    x->now = now_ns;
    x->deadline = q_mono_ns() + lim_time_ms * 1000000;
    rc = qx_plan(x);
    if (!rc) {
        r->ncols = (size_t)x->nitems;
        r->width = r->ncols + (size_t)x->norder;
        r->cols = q_alloc(&r->ar, sizeof(char *) * (r->ncols ? r->ncols : 1));
        for (int i = 0; r->cols && i < x->nitems; i++) r->cols[i] = colname(x, &x->items[i]);
        rc = r->cols ? qx_exec(x) : THZ_ENOMEM;
        r->path = x->path;
    }
    for (size_t i = 0; i < x->ng; i++)
        for (int a = 0; a < x->naggs; a++) free(x->gv[i]->st[a].smp);
    hmap_free(&x->cat_metrics);
    hmap_free(&x->cat_tags);
    hmap_free(&x->slot_metrics);
    hmap_free(&x->ent_map);
    hmap_free(&x->groups);
    free(x->ents);
    free(x->gv);
    q_arena_free(x->ar);
    free(x);
    q_free(q);
    if (rc) {
        q_result_free(r);
        return rc;
    }
    *out = r;
    return THZ_OK;
}
