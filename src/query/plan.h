/* plan.h - private to src/query/: the state of one query from planning to
 * its result (plan.c binds and plans, exec.c runs, result.c writes). */
#ifndef THZ_QUERY_PLAN_H
#define THZ_QUERY_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "core/hmap.h"
#include "query/query.h"
#include "query/query_int.h"

/* What a node resolved to (q_expr.rk). */
/* RK_MNAME, RK_MVAL: the narrow form's measure_name and measure_value::TYPE
 * (ref: the tsdb_type the column shows). */
enum {
    RK_NONE = 0,
    RK_TIME,
    RK_DEVICE,
    RK_TAG,
    RK_METRIC,
    RK_AGG,
    RK_GROUP,
    RK_POST,
    RK_MNAME,
    RK_MVAL
};

/* Aggregates. */
enum {
    A_AVG,
    A_MIN,
    A_MAX,
    A_SUM,
    A_COUNT,
    A_COUNTSTAR,
    A_FIRST,
    A_LAST,
    A_STDDEV,
    A_STDDEV_POP,
    A_PCT
};
/* Functions over the bins of a group, after aggregation. */
enum { P_LINEAR, P_LOCF, P_DERIV, P_RATE };

#define Q_MAX_AGGS  64
#define Q_MAX_POSTS 32
#define Q_MAX_CONJ  128
#define Q_MAX_MATCH 32
#define Q_MAX_COLS  1024

typedef struct agg_def {
    int fn;
    q_expr *arg; /* NULL for count(*) */
    double p;    /* approx_percentile */
    q_expr *node;
} agg_def;

typedef struct post_def {
    int fn;
    q_expr *arg;
    int64_t unit; /* derivative's unit (ns) */
    q_expr *node;
} post_def;

typedef struct agg_st {
    uint64_t n;
    double sum, min, max, mean, m2;
    int64_t tmin, tmax;
    bool is_time;
    q_val first, last;
    int64_t fts, lts;
    double *smp;
    uint32_t ns, cap;
    uint64_t seen;
    bool sorted;
} agg_st;

typedef struct group {
    q_val *keys; /* ngroup */
    agg_st *st;  /* naggs */
    q_val *post; /* nposts */
    bool filled; /* made by gap filling */
    char *hkey;
    size_t hlen;
} group;

typedef struct entity {
    const char *device;
    const char *metric; /* narrow form only */
    const char *tags;
    q_val *tagv;   /* ntags, NULL values for missing tags */
    uint64_t *sid; /* nmetrics; 0: no such series */
    tsdb_type *type;
} entity;

struct q_result {
    size_t ncols; /* visible columns */
    size_t width; /* ncols + hidden sort keys */
    char **cols;
    q_val *vals; /* nrows * width */
    size_t nrows, cap;
    q_arena *ar;      /* strings of the values and names */
    const char *path; /* the executor that ran */
};

typedef struct qx {
    tsdb *db;
    int64_t tenant;
    q_query *q;
    q_error *err;
    thz_err rc; /* first failure; err filled */
    int64_t now;
    int64_t deadline; /* monotonic ns */
    q_arena *ar;      /* lives as long as the query */

    /* catalog: every metric name and tag key of the tenant */
    hmap cat_metrics, cat_tags;
    /* the columns the query uses */
    char *metrics[Q_MAX_COLS];
    int nmetrics;
    char *tags[Q_MAX_COLS];
    int ntags;
    hmap slot_metrics; /* name -> slot + 1 */

    /* the output */
    q_item *items;
    int nitems;

    /* WHERE, split at top-level ANDs */
    q_expr *conj[Q_MAX_CONJ];
    int conj_class[Q_MAX_CONJ]; /* 0: per row, 1: per series (device/tags), 2: time, pushed */
    int nconj;
    int64_t t0, t1; /* [t0, t1) */
    tsdb_matcher m[Q_MAX_MATCH];
    int nm;

    bool is_agg;
    agg_def aggs[Q_MAX_AGGS];
    int naggs;
    post_def posts[Q_MAX_POSTS];
    int nposts;
    q_expr **group; /* GROUP BY, ordinals and aliases replaced */
    int ngroup;
    int bin_key; /* index of the bin(time, w) group key, -1 */
    int64_t bin_w;
    bool gapfill;             /* interpolate_linear / locf present */
    bool all_metrics;         /* rows need every metric (count(*), SELECT *, none named) */
    bool narrow;              /* the narrow form: one row per point, entities per series */
    int narrow_pos, wide_pos; /* where each form was first used (-1) */

    /* ORDER BY: each is an output column (ordinal/alias) or a hidden key */
    int order_col[256];
    bool order_desc[256];
    q_expr *order_hidden[256];
    int norder;

    bool fast;        /* aggregates from tsdb_aggregate / tsdb_last */
    const char *path; /* which executor ran, for tests: "raw", "agg-points", "agg-fast" */

    /* execution */
    entity **ents;
    size_t nents, ecap;
    hmap ent_map;
    hmap groups;
    group **gv;
    size_t ng, gcap;
    group *lastg; /* the group of the previous row (agg_row) */
    uint64_t points;
    uint64_t checks;
    q_result *res;
} qx;

/* plan.c */
thz_err qx_plan(qx *x);
bool q_expr_eq(const q_expr *a, const q_expr *b);
int64_t q_mono_ns(void);

/* exec.c */
typedef struct rowctx {
    int64_t t;
    entity *e;
    q_val *mv; /* metric values by slot */
    group *g;  /* group mode */
} rowctx;
q_val qx_eval(qx *x, const q_expr *e, rowctx *rc);
bool qx_truthy(q_val v);
thz_err qx_exec(qx *x);
void qx_fail(qx *x, thz_err rc, int pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
