/* plan.c - the planner: resolves the query's names against the tenant's
 * catalog (metric names and tag keys of its series), splits WHERE into
 * conjuncts and pushes what it can into the engine (the time range into
 * the t0/t1 of every read, device and tag equality and IN into
 * tsdb_series_select matchers, other device/tag conditions into a filter
 * per series), collects the aggregates and bin functions, and decides
 * whether the aggregates can come from tsdb_aggregate/tsdb_last (block
 * headers and rollups) instead of decoded points. */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "query/plan.h"

int64_t q_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

bool q_expr_eq(const q_expr *a, const q_expr *b)
{
    if (a == b) return true;
    if (!a || !b || a->kind != b->kind || a->op != b->op || a->neg != b->neg ||
        a->nargs != b->nargs)
        return false;
    switch (a->kind) {
    case Q_NUM:
    case Q_BOOL:
        if (a->num != b->num) return false;
        break;
    case Q_TIME:
    case Q_INTERVAL:
        if (a->ns != b->ns) return false;
        break;
    case Q_STR:
    case Q_COL:
    case Q_CALL:
        if (strcmp(a->str, b->str) != 0) return false;
        break;
    default: break;
    }
    for (int i = 0; i < a->nargs; i++)
        if (!q_expr_eq(a->args[i], b->args[i])) return false;
    return true;
}

/* ---- the catalog ---- */

static bool cat_add(qx *x, hmap *m, const char *s, size_t n)
{
    if (hmap_get(m, s, n)) return true;
    char *k = q_strndup(&x->ar, s, n);
    if (!k || hmap_put(m, k, n, k, NULL) != THZ_OK) {
        qx_fail(x, THZ_ENOMEM, -1, "out of memory");
        return false;
    }
    return true;
}

static bool cat_label(void *ctx, bool metric, const char *name, size_t len)
{
    qx *x = ctx;
    return cat_add(x, metric ? &x->cat_metrics : &x->cat_tags, name, len);
}

static const char *cat_find(hmap *m, const char *name)
{
    const char *k = hmap_get(m, name, strlen(name));
    if (k) return k;
    /* unquoted names are lower-cased: match a metric "Temp" case-insensitively
     * when that is unambiguous */
    const char *found = NULL;
    size_t pos = 0;
    hmap_entry *e = NULL;
    while ((e = hmap_next(m, &pos, e)))
        if (strcasecmp(e->val, name) == 0) {
            if (found) return NULL;
            found = e->val;
        }
    return found;
}

static int slot_of(qx *x, char **arr, int *n, const char *name)
{
    for (int i = 0; i < *n; i++)
        if (strcmp(arr[i], name) == 0) return i;
    if (*n >= Q_MAX_COLS) return -1;
    arr[*n] = (char *)name;
    return (*n)++;
}

/* ---- binding names ---- */

static bool bind_col(qx *x, q_expr *e)
{
    const char *name = e->str;
    size_t tl = x->q->table ? strlen(x->q->table) : 0;
    if (tl && strncmp(name, x->q->table, tl) == 0 && name[tl] == '.' && name[tl + 1])
        name += tl + 1;
    if (strcmp(name, "time") == 0) {
        e->rk = RK_TIME;
        return true;
    }
    if (strcmp(name, "device") == 0 || strcmp(name, "device_id") == 0) {
        e->rk = RK_DEVICE;
        return true;
    }
    if (strcmp(name, "measure_name") == 0 || strncmp(name, "measure_value", 13) == 0) {
        static const struct {
            const char *n;
            tsdb_type t;
        } mv[] = {{"measure_value::double", TSDB_FLOAT},
                  {"measure_value::bigint", TSDB_INT},
                  {"measure_value::varchar", TSDB_STRING},
                  {"measure_value::boolean", TSDB_BOOL}};
        e->rk = 0;
        if (strcmp(name, "measure_name") == 0) e->rk = RK_MNAME;
        for (int i = 0; i < 4; i++)
            if (strcmp(name, mv[i].n) == 0) e->rk = RK_MVAL, e->ref = (int)mv[i].t;
        if (!e->rk) {
            qx_fail(x, THZ_EINVAL, e->pos,
                    "unknown column '%s' (measure_value::double, ::bigint, ::varchar or ::boolean)",
                    name);
            return false;
        }
        if (x->wide_pos >= 0) {
            qx_fail(x, THZ_EINVAL, e->pos,
                    "the narrow form (measure_name, measure_value::...) cannot be mixed with "
                    "metric columns (first used at position %d)",
                    x->wide_pos);
            return false;
        }
        if (x->narrow_pos < 0) x->narrow_pos = e->pos;
        x->narrow = true;
        return true;
    }
    const char *m = cat_find(&x->cat_metrics, name);
    if (m && x->narrow_pos >= 0) {
        qx_fail(x, THZ_EINVAL, e->pos,
                "metric columns cannot be mixed with the narrow form (measure_name, first used at "
                "position %d)",
                x->narrow_pos);
        return false;
    }
    if (m) {
        if (x->wide_pos < 0) x->wide_pos = e->pos;
        int s = slot_of(x, x->metrics, &x->nmetrics, m);
        if (s < 0) {
            qx_fail(x, THZ_EINVAL, e->pos, "too many columns");
            return false;
        }
        e->rk = RK_METRIC;
        e->ref = s;
        return true;
    }
    const char *t = cat_find(&x->cat_tags, name);
    if (t) {
        int s = slot_of(x, x->tags, &x->ntags, t);
        if (s < 0) {
            qx_fail(x, THZ_EINVAL, e->pos, "too many columns");
            return false;
        }
        e->rk = RK_TAG;
        e->ref = s;
        return true;
    }
    qx_fail(x, THZ_EINVAL, e->pos,
            "column '%s' does not exist (no metric or tag of that name has data; quote names "
            "with dots or capitals: \"env.temp\")",
            e->str);
    return false;
}

typedef struct fn_info {
    const char *name;
    int min, max;
    int agg;  /* A_* + 1 */
    int post; /* P_* + 1 */
} fn_info;

static const fn_info fns[] = {
    {"avg", 1, 1, A_AVG + 1, 0},
    {"min", 1, 1, A_MIN + 1, 0},
    {"max", 1, 1, A_MAX + 1, 0},
    {"sum", 1, 1, A_SUM + 1, 0},
    {"count", 1, 1, A_COUNT + 1, 0},
    {"first", 1, 1, A_FIRST + 1, 0},
    {"last", 1, 1, A_LAST + 1, 0},
    {"stddev", 1, 1, A_STDDEV + 1, 0},
    {"stddev_samp", 1, 1, A_STDDEV + 1, 0},
    {"stddev_pop", 1, 1, A_STDDEV_POP + 1, 0},
    {"approx_percentile", 2, 2, A_PCT + 1, 0},
    {"interpolate_linear", 1, 1, 0, P_LINEAR + 1},
    {"locf", 1, 1, 0, P_LOCF + 1},
    {"derivative", 1, 2, 0, P_DERIV + 1},
    {"rate", 1, 1, 0, P_RATE + 1},
    {"bin", 2, 2, 0, 0},
    {"ago", 1, 1, 0, 0},
    {"now", 0, 0, 0, 0},
    {"from_milliseconds", 1, 1, 0, 0},
    {"from_nanoseconds", 1, 1, 0, 0},
    {"from_unixtime", 1, 1, 0, 0},
    {"from_iso8601_timestamp", 1, 1, 0, 0},
    {"to_milliseconds", 1, 1, 0, 0},
    {"to_nanoseconds", 1, 1, 0, 0},
    {"to_unixtime", 1, 1, 0, 0},
    {"abs", 1, 1, 0, 0},
    {"round", 1, 2, 0, 0},
    {"floor", 1, 1, 0, 0},
    {"ceil", 1, 1, 0, 0},
    {"ceiling", 1, 1, 0, 0},
    {"sqrt", 1, 1, 0, 0},
    {"ln", 1, 1, 0, 0},
    {"log10", 1, 1, 0, 0},
    {"exp", 1, 1, 0, 0},
    {"power", 2, 2, 0, 0},
    {"pow", 2, 2, 0, 0},
    {"coalesce", 1, 16, 0, 0},
    {NULL, 0, 0, 0, 0},
};

static const fn_info *fn_find(const char *name)
{
    for (const fn_info *f = fns; f->name; f++)
        if (strcmp(f->name, name) == 0) return f;
    return NULL;
}

/* Binds columns and checks calls. allow_agg: aggregates may appear (the
 * SELECT list, HAVING, ORDER BY); inside an aggregate they may not. */
static bool bind_expr(qx *x, q_expr *e, bool allow_agg, bool in_agg)
{
    if (!e) return true;
    if (e->kind == Q_COL) return bind_col(x, e);
    if (e->kind == Q_STAR) {
        qx_fail(x, THZ_EINVAL, e->pos, "'*' is only allowed alone in SELECT or in count(*)");
        return false;
    }
    if (e->kind == Q_CALL) {
        const fn_info *f = fn_find(e->str);
        if (!f) {
            qx_fail(x, THZ_EINVAL, e->pos, "unknown function '%s'", e->str);
            return false;
        }
        if (e->nargs < f->min || e->nargs > f->max) {
            qx_fail(x, THZ_EINVAL, e->pos, "%s takes %d%s%d argument%s, not %d", e->str, f->min,
                    f->max > f->min ? " to " : "", f->max > f->min ? f->max : f->min,
                    f->max == 1 && f->min == 1 ? "" : "s", e->nargs);
            if (f->max == f->min) /* "takes 1 argument" reads better */
                q_seterr(x->err, e->pos, "%s takes %d argument%s, not %d", e->str, f->min,
                         f->min == 1 ? "" : "s", e->nargs);
            return false;
        }
        if (f->agg || f->post) {
            if (!allow_agg) {
                qx_fail(x, THZ_EINVAL, e->pos,
                        "%s is not allowed here (only in SELECT, HAVING and ORDER BY)", e->str);
                return false;
            }
            if (in_agg && f->agg) {
                qx_fail(x, THZ_EINVAL, e->pos, "aggregates cannot be nested");
                return false;
            }
            if (in_agg && f->post) {
                qx_fail(x, THZ_EINVAL, e->pos, "%s cannot be inside an aggregate", e->str);
                return false;
            }
            x->is_agg = true;
        }
        if (f->agg == A_COUNT + 1 && e->nargs == 1 && e->args[0]->kind == Q_STAR) return true;
        for (int i = 0; i < e->nargs; i++)
            if (!bind_expr(x, e->args[i], allow_agg, in_agg || f->agg)) return false;
        return true;
    }
    for (int i = 0; i < e->nargs; i++)
        if (!bind_expr(x, e->args[i], allow_agg, in_agg)) return false;
    return true;
}

static bool has_rk(const q_expr *e, int rk)
{
    if (!e) return false;
    if (e->kind == Q_COL && e->rk == rk) return true;
    for (int i = 0; i < e->nargs; i++)
        if (has_rk(e->args[i], rk)) return true;
    return false;
}

static bool is_const(const q_expr *e)
{
    if (!e) return true;
    if (e->kind == Q_COL || e->kind == Q_STAR) return false;
    if (e->kind == Q_CALL && fn_find(e->str) && (fn_find(e->str)->agg || fn_find(e->str)->post))
        return false;
    for (int i = 0; i < e->nargs; i++)
        if (!is_const(e->args[i])) return false;
    return true;
}

/* Only device and tag columns (and constants). */
static bool series_level(const q_expr *e)
{
    if (!e) return true;
    if (e->kind == Q_COL) return e->rk == RK_DEVICE || e->rk == RK_TAG || e->rk == RK_MNAME;
    if (e->kind == Q_CALL) {
        const fn_info *f = fn_find(e->str);
        if (!f || f->agg || f->post) return false;
    }
    for (int i = 0; i < e->nargs; i++)
        if (!series_level(e->args[i])) return false;
    return true;
}

/* ---- WHERE ---- */

static void split_and(qx *x, q_expr *e)
{
    if (!e || x->rc) return;
    if (e->kind == Q_BINOP && e->op == Q_AND) {
        split_and(x, e->args[0]);
        split_and(x, e->args[1]);
        return;
    }
    if (x->nconj >= Q_MAX_CONJ) {
        qx_fail(x, THZ_EINVAL, e->pos, "too many AND conditions");
        return;
    }
    x->conj[x->nconj++] = e;
}

/* A constant as a time: TIMESTAMP, a string, now()/ago() arithmetic. */
static bool const_time(qx *x, const q_expr *e, int64_t *ns)
{
    rowctx rc = {0};
    q_val v = qx_eval(x, e, &rc);
    if (x->rc) return false;
    if (v.t == QV_TIME) {
        *ns = v.u.ns;
        return true;
    }
    if (v.t == QV_STR) {
        if (q_time_parse(v.u.s.p, v.u.s.n, ns)) return true;
        qx_fail(x, THZ_EINVAL, e->pos, "'%s' is not a timestamp (use 'YYYY-MM-DD hh:mm:ss[.fff]')",
                v.u.s.p);
        return false;
    }
    qx_fail(x, THZ_EINVAL, e->pos,
            "time must be compared with a timestamp (TIMESTAMP '...', "
            "ago(1h), now(), a 'YYYY-MM-DD hh:mm:ss' string)");
    return false;
}

static void narrow(qx *x, int64_t lo, int64_t hi)
{
    if (lo > x->t0) x->t0 = lo;
    if (hi < x->t1) x->t1 = hi;
}

static bool is_timecol(const q_expr *e)
{
    return e && e->kind == Q_COL && e->rk == RK_TIME;
}

/* time OP const, const OP time, time BETWEEN c AND c: narrows [t0, t1). */
static bool push_time(qx *x, q_expr *c)
{
    if (c->kind == Q_BETWEEN && !c->neg && is_timecol(c->args[0]) && is_const(c->args[1]) &&
        is_const(c->args[2])) {
        int64_t lo, hi;
        if (!const_time(x, c->args[1], &lo) || !const_time(x, c->args[2], &hi)) return false;
        narrow(x, lo, hi == INT64_MAX ? hi : hi + 1);
        return true;
    }
    if (c->kind != Q_BINOP || c->op < Q_EQ || c->op > Q_GE || c->op == Q_NE) return false;
    q_op op = c->op;
    q_expr *k;
    if (is_timecol(c->args[0]) && is_const(c->args[1])) {
        k = c->args[1];
    } else if (is_timecol(c->args[1]) && is_const(c->args[0])) {
        k = c->args[0];
        op = op == Q_LT ? Q_GT : op == Q_LE ? Q_GE : op == Q_GT ? Q_LT : op == Q_GE ? Q_LE : op;
    } else {
        return false;
    }
    int64_t v;
    if (!const_time(x, k, &v)) return false;
    switch (op) {
    case Q_EQ: narrow(x, v, v == INT64_MAX ? v : v + 1); break;
    case Q_LT: narrow(x, INT64_MIN, v); break;
    case Q_LE: narrow(x, INT64_MIN, v == INT64_MAX ? v : v + 1); break;
    case Q_GT: narrow(x, v == INT64_MAX ? v : v + 1, INT64_MAX); break;
    case Q_GE: narrow(x, v, INT64_MAX); break;
    default: return false;
    }
    return true;
}

static const char *label_of(qx *x, const q_expr *e)
{
    if (e->kind != Q_COL) return NULL;
    if (e->rk == RK_DEVICE) return "device";
    if (e->rk == RK_TAG) return x->tags[e->ref];
    if (e->rk == RK_MNAME) return "metric";
    return NULL;
}

/* A regex that matches exactly s (POSIX ERE). */
static bool re_quote(thz_buf *b, const char *s)
{
    for (; *s; s++) {
        if (strchr(".[]{}()\\*+?^$|", *s) && thz_buf_append(b, "\\", 1)) return false;
        if (thz_buf_append(b, s, 1)) return false;
    }
    return true;
}

/* device/tag = 'v', IN ('a', 'b'), != 'v': matchers for tsdb_series_select. */
static void push_matcher(qx *x, q_expr *c)
{
    if (x->nm >= Q_MAX_MATCH) return;
    rowctx rc = {0};
    if (c->kind == Q_BINOP && (c->op == Q_EQ || c->op == Q_NE)) {
        q_expr *col = c->args[0], *k = c->args[1];
        if (!label_of(x, col)) col = c->args[1], k = c->args[0];
        const char *label = label_of(x, col);
        if (!label || !is_const(k)) return;
        q_val v = qx_eval(x, k, &rc);
        if (x->rc || v.t != QV_STR) return;
        if (c->op == Q_NE && col->rk == RK_TAG) return; /* NULL != 'x' is not true in SQL */
        x->m[x->nm++] = (tsdb_matcher){label, c->op == Q_EQ ? TSDB_EQ : TSDB_NE, v.u.s.p};
        return;
    }
    if (c->kind == Q_IN && !c->neg && label_of(x, c->args[0])) {
        thz_buf b = {0};
        for (int i = 1; i < c->nargs; i++) {
            if (!is_const(c->args[i])) goto out;
            q_val v = qx_eval(x, c->args[i], &rc);
            if (x->rc || v.t != QV_STR) goto out;
            if ((i > 1 && thz_buf_append(&b, "|", 1)) || !re_quote(&b, v.u.s.p)) goto out;
        }
        if (c->nargs == 2) {
            q_val v = qx_eval(x, c->args[1], &rc);
            x->m[x->nm++] = (tsdb_matcher){label_of(x, c->args[0]), TSDB_EQ, v.u.s.p};
        } else {
            char *re = q_strndup(&x->ar, (const char *)b.p, b.len);
            if (re) x->m[x->nm++] = (tsdb_matcher){label_of(x, c->args[0]), TSDB_RE, re};
        }
    out:
        thz_buf_free(&b);
    }
}

/* ---- aggregates and group keys ---- */

/* Marks the parts of e that are group keys, registers aggregates and bin
 * functions; a bare column outside both is an error. */
static bool bind_group(qx *x, q_expr *e)
{
    if (!e) return true;
    for (int i = 0; i < x->ngroup; i++)
        if (q_expr_eq(e, x->group[i]) && e->kind != Q_NUM && e->kind != Q_STR) {
            e->rk = RK_GROUP;
            e->ref = i;
            return true;
        }
    if (e->kind == Q_CALL) {
        const fn_info *f = fn_find(e->str);
        if (f && f->agg) {
            for (int i = 0; i < x->naggs; i++)
                if (q_expr_eq(x->aggs[i].node, e)) {
                    e->rk = RK_AGG;
                    e->ref = i;
                    return true;
                }
            if (x->naggs >= Q_MAX_AGGS) {
                qx_fail(x, THZ_EINVAL, e->pos, "too many aggregates (at most %d)", Q_MAX_AGGS);
                return false;
            }
            agg_def *a = &x->aggs[x->naggs];
            a->fn = f->agg - 1;
            a->node = e;
            a->arg = e->args[0];
            if (a->fn == A_COUNT && a->arg->kind == Q_STAR) {
                a->fn = A_COUNTSTAR;
                a->arg = NULL;
                x->all_metrics = true;
            }
            if (a->fn == A_PCT) {
                rowctx rc = {0};
                q_val p = is_const(e->args[1]) ? qx_eval(x, e->args[1], &rc) : (q_val){0};
                if (x->rc) return false;
                if (p.t != QV_NUM || !(p.u.f >= 0 && p.u.f <= 1)) {
                    qx_fail(x, THZ_EINVAL, e->args[1]->pos,
                            "the percentile must be a constant between 0 and 1");
                    return false;
                }
                a->p = p.u.f;
            }
            e->rk = RK_AGG;
            e->ref = x->naggs++;
            return true;
        }
        if (f && f->post) {
            if (x->bin_key < 0) {
                qx_fail(x, THZ_EINVAL, e->pos, "%s needs GROUP BY bin(time, ...)", e->str);
                return false;
            }
            if (!bind_group(x, e->args[0])) return false;
            if (x->nposts >= Q_MAX_POSTS) {
                qx_fail(x, THZ_EINVAL, e->pos, "too many bin functions");
                return false;
            }
            post_def *p = &x->posts[x->nposts];
            p->fn = f->post - 1;
            p->arg = e->args[0];
            p->node = e;
            p->unit = 1000000000;
            if (p->fn == P_DERIV && e->nargs == 2) {
                rowctx rc = {0};
                q_val u = is_const(e->args[1]) ? qx_eval(x, e->args[1], &rc) : (q_val){0};
                if (x->rc) return false;
                if (u.t != QV_INTERVAL || u.u.ns <= 0) {
                    qx_fail(x, THZ_EINVAL, e->args[1]->pos,
                            "derivative's unit must be a positive interval (1s, 1m...)");
                    return false;
                }
                p->unit = u.u.ns;
            }
            if (p->fn == P_LINEAR || p->fn == P_LOCF) x->gapfill = true;
            e->rk = RK_POST;
            e->ref = x->nposts++;
            return true;
        }
    }
    if (e->kind == Q_COL) {
        qx_fail(x, THZ_EINVAL, e->pos, "column '%s' must be in GROUP BY or inside an aggregate",
                e->str);
        return false;
    }
    for (int i = 0; i < e->nargs; i++)
        if (!bind_group(x, e->args[i])) return false;
    return true;
}

/* A GROUP BY or ORDER BY item naming an output column: ordinal or alias. */
static int out_ref(qx *x, const q_expr *e)
{
    if (e->kind == Q_NUM) {
        if (e->num != floor(e->num) || e->num < 1 || e->num > x->nitems) {
            qx_fail(x, THZ_EINVAL, e->pos, "there is no column %g in the SELECT list (1..%d)",
                    e->num, x->nitems);
            return -2;
        }
        return (int)e->num - 1;
    }
    if (e->kind == Q_COL)
        for (int i = 0; i < x->nitems; i++)
            if (x->items[i].alias && strcasecmp(x->items[i].alias, e->str) == 0) return i;
    return -1;
}

static bool bin_of(qx *x, const q_expr *g, int64_t *w)
{
    if (g->kind != Q_CALL || strcmp(g->str, "bin") != 0 || !is_timecol(g->args[0])) return false;
    rowctx rc = {0};
    q_val v = is_const(g->args[1]) ? qx_eval(x, g->args[1], &rc) : (q_val){0};
    if (x->rc) return false;
    if (v.t != QV_INTERVAL || v.u.ns <= 0) return false;
    *w = v.u.ns;
    return true;
}

/* SELECT * expands to time, device, every tag key, every metric. */
static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static q_expr *mkcol(qx *x, const char *name, int rk, int ref, int pos)
{
    q_expr *e = q_alloc(&x->ar, sizeof *e);
    if (!e) return NULL;
    e->kind = Q_COL;
    e->str = (char *)name;
    e->rk = rk;
    e->ref = ref;
    e->pos = pos;
    return e;
}

static bool expand_star(qx *x)
{
    int n = 0;
    for (int i = 0; i < x->q->nitems; i++) n += x->q->items[i].e->kind == Q_STAR;
    if (!n) {
        x->items = x->q->items;
        x->nitems = x->q->nitems;
        return true;
    }
    char **tk = calloc(x->cat_tags.n + 1, sizeof *tk),
         **mk = calloc(x->cat_metrics.n + 1, sizeof *mk);
    size_t nt = 0, nmk = 0, pos = 0;
    hmap_entry *e = NULL;
    if (!tk || !mk) goto nomem;
    while ((e = hmap_next(&x->cat_tags, &pos, e))) tk[nt++] = e->val;
    pos = 0;
    e = NULL;
    while ((e = hmap_next(&x->cat_metrics, &pos, e))) mk[nmk++] = e->val;
    if (nt > 1) qsort(tk, nt, sizeof *tk, cmp_str);
    if (nmk > 1) qsort(mk, nmk, sizeof *mk, cmp_str);
    size_t total = x->q->nitems - n + n * (2 + nt + nmk);
    if (total > Q_MAX_COLS) {
        free(tk);
        free(mk);
        qx_fail(x, THZ_EINVAL, x->q->items[0].pos, "SELECT * would have %zu columns (at most %d)",
                total, Q_MAX_COLS);
        return false;
    }
    x->items = q_alloc(&x->ar, sizeof(q_item) * total);
    if (!x->items) goto nomem;
    for (int i = 0; i < x->q->nitems; i++) {
        q_item *it = &x->q->items[i];
        if (it->e->kind != Q_STAR) {
            x->items[x->nitems++] = *it;
            continue;
        }
        x->items[x->nitems++] = (q_item){mkcol(x, "time", RK_TIME, 0, it->pos), NULL, it->pos};
        x->items[x->nitems++] = (q_item){mkcol(x, "device", RK_DEVICE, 0, it->pos), NULL, it->pos};
        for (size_t k = 0; k < nt; k++)
            x->items[x->nitems++] =
                (q_item){mkcol(x, tk[k], RK_TAG, slot_of(x, x->tags, &x->ntags, tk[k]), it->pos),
                         NULL, it->pos};
        for (size_t k = 0; k < nmk; k++)
            x->items[x->nitems++] = (q_item){
                mkcol(x, mk[k], RK_METRIC, slot_of(x, x->metrics, &x->nmetrics, mk[k]), it->pos),
                NULL, it->pos};
    }
    free(tk);
    free(mk);
    for (int i = 0; i < x->nitems; i++)
        if (!x->items[i].e) goto nomem2;
    x->all_metrics = true;
    return true;
nomem:
    free(tk);
    free(mk);
nomem2:
    qx_fail(x, THZ_ENOMEM, -1, "out of memory");
    return false;
}

/* ---- the plan ---- */

thz_err qx_plan(qx *x)
{
    q_query *q = x->q;
    x->t0 = INT64_MIN;
    x->t1 = INT64_MAX;
    x->bin_key = -1;
    x->narrow_pos = x->wide_pos = -1;
    if (q->table && strcmp(q->table, "telemetry") != 0) {
        qx_fail(x, THZ_EINVAL, q->table_pos, "unknown table '%s' (the table is telemetry)",
                q->table);
        return x->rc;
    }
    thz_err rc = tsdb_labels(x->db, x->tenant, cat_label, x);
    if (x->rc) return x->rc;
    if (rc) {
        qx_fail(x, rc, -1, "cannot list the series: %s", thz_strerror(rc));
        return x->rc;
    }
    if (!expand_star(x)) return x->rc;

    /* names */
    for (int i = 0; i < x->nitems; i++)
        if (x->items[i].e->rk == RK_NONE && !bind_expr(x, x->items[i].e, true, false)) return x->rc;
    if (!bind_expr(x, q->where, false, false)) return x->rc;
    if (q->having && !bind_expr(x, q->having, true, false)) return x->rc;

    /* GROUP BY: ordinals and aliases name SELECT items */
    if (q->ngroup) {
        x->is_agg = true;
        x->group = q_alloc(&x->ar, sizeof(q_expr *) * q->ngroup);
        if (!x->group) return qx_fail(x, THZ_ENOMEM, -1, "out of memory"), x->rc;
        for (int i = 0; i < q->ngroup; i++) {
            q_expr *g = q->group[i];
            int r = out_ref(x, g);
            if (r == -2) return x->rc;
            if (r >= 0) {
                /* a copy: the item's own node becomes a reference to the key */
                q_expr *cp = q_alloc(&x->ar, sizeof *cp);
                if (!cp) return qx_fail(x, THZ_ENOMEM, -1, "out of memory"), x->rc;
                *cp = *x->items[r].e;
                g = cp;
            } else if (g->kind == Q_NUM || g->kind == Q_STR) {
                qx_fail(x, THZ_EINVAL, g->pos, "GROUP BY a constant");
                return x->rc;
            } else if (!bind_expr(x, g, false, false)) {
                return x->rc;
            }
            if (g->kind == Q_CALL && fn_find(g->str) &&
                (fn_find(g->str)->agg || fn_find(g->str)->post)) {
                qx_fail(x, THZ_EINVAL, q->group[i]->pos, "GROUP BY an aggregate");
                return x->rc;
            }
            x->group[i] = g;
            int64_t w;
            if (bin_of(x, g, &w) && x->bin_key < 0) {
                x->bin_key = i;
                x->bin_w = w;
            }
            if (x->rc) return x->rc;
        }
        x->ngroup = q->ngroup;
    }

    /* ORDER BY */
    if (q->norder > 256)
        return qx_fail(x, THZ_EINVAL, q->order[256].e->pos, "too many ORDER BY items"), x->rc;
    for (int i = 0; i < q->norder; i++) {
        q_expr *o = q->order[i].e;
        int r = out_ref(x, o);
        if (r == -2) return x->rc;
        x->order_desc[i] = q->order[i].desc;
        x->order_col[i] = r;
        if (r < 0) {
            if (!bind_expr(x, o, true, false)) return x->rc;
            x->order_hidden[i] = o;
        }
    }
    x->norder = q->norder;

    /* aggregates: group keys, aggregates and bin functions in every
     * expression evaluated per group */
    if (x->is_agg) {
        for (int i = 0; i < x->nitems; i++)
            if (!bind_group(x, x->items[i].e)) return x->rc;
        if (q->having && !bind_group(x, q->having)) return x->rc;
        for (int i = 0; i < x->norder; i++)
            if (x->order_hidden[i] && !bind_group(x, x->order_hidden[i])) return x->rc;
    } else if (q->having) {
        qx_fail(x, THZ_EINVAL, q->having->pos, "HAVING needs GROUP BY or aggregates");
        return x->rc;
    }
    if (x->narrow) {
        if (x->all_metrics && x->nmetrics) {
            qx_fail(x, THZ_EINVAL, x->narrow_pos, "SELECT * cannot be mixed with the narrow form");
            return x->rc;
        }
        /* one value slot: each series is its own entity */
        x->all_metrics = false;
        x->nmetrics = 1;
        x->metrics[0] = "measure_value";
    } else if (x->nmetrics == 0) {
        x->all_metrics = true;
    }

    /* WHERE: the time range, matchers, filters per series and per row */
    split_and(x, q->where);
    for (int i = 0; i < x->nconj && !x->rc; i++) {
        q_expr *c = x->conj[i];
        if (has_rk(c, RK_TIME) && !has_rk(c, RK_METRIC) && push_time(x, c)) {
            x->conj_class[i] = 2;
        } else if (!x->rc && series_level(c)) {
            x->conj_class[i] = 1;
            push_matcher(x, c);
        } else {
            x->conj_class[i] = 0;
        }
    }
    if (x->rc) return x->rc;
    if (x->bin_key >= 0 && x->t0 != INT64_MIN && x->t1 == INT64_MAX) {
        /* time > ago(1h): nothing is newer than now or the newest point, so
         * the range ends there (bounded ranges take the aggregate fast path)
         * unless that makes too many bins (then the bins stay those with data) */
        int64_t hi = tsdb_max_ts(x->db);
        if (x->now > hi) hi = x->now;
        if (hi < INT64_MAX) hi++;
        if (hi <= x->t0 ||
            ((double)(hi - 1) / x->bin_w - (double)x->t0 / x->bin_w + 2 <= QUERY_MAX_BINS))
            x->t1 = hi;
    }
    if (x->bin_key >= 0 && x->t0 != INT64_MIN && x->t1 != INT64_MAX && x->t1 > x->t0) {
        /* bins in range: checked before anything is read */
        int64_t b0 = x->t0 / x->bin_w, b1 = (x->t1 - 1) / x->bin_w;
        if ((double)b1 - (double)b0 + 1 > QUERY_MAX_BINS) {
            x->err->limit = true;
            qx_fail(x, THZ_ETOOBIG, x->group[x->bin_key]->pos,
                    "the time range has more than %d bins of this width", QUERY_MAX_BINS);
            return x->rc;
        }
    }

    /* fast path: every aggregate is avg/min/max/sum/count/first/last of a
     * bare metric, group keys are bin(time)/device/tags, and WHERE is all
     * pushed (time range and device/tag conditions) */
    x->fast = x->is_agg && x->naggs > 0;
    for (int i = 0; i < x->naggs && x->fast; i++) {
        agg_def *a = &x->aggs[i];
        if (a->fn > A_LAST || a->fn == A_COUNTSTAR || !a->arg || a->arg->kind != Q_COL ||
            a->arg->rk != RK_METRIC)
            x->fast = false;
    }
    for (int i = 0; i < x->ngroup && x->fast; i++) {
        q_expr *g = x->group[i];
        if (i == x->bin_key) continue;
        if (!(g->kind == Q_COL && (g->rk == RK_DEVICE || g->rk == RK_TAG))) x->fast = false;
    }
    for (int i = 0; i < x->nconj && x->fast; i++)
        if (x->conj_class[i] == 0) x->fast = false;
    if (x->bin_key >= 0 && (x->t0 == INT64_MIN || x->t1 == INT64_MAX)) x->fast = false;
    return x->rc;
}
