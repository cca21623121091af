/* promql.h - a subset of PromQL over the tsdb read API, for the
 * Prometheus-compatible query API (/prometheus/api/v1/..., src/api/prom_ops.c)
 * that lets Grafana's Prometheus data source and promtool read thinghz.
 *
 * Series and labels. Every tsdb series is one Prometheus series with the
 * labels __name__ = the metric (telemetry field name, e.g. "env.temp"),
 * device = the device id, and one label per tag of the series. A tag named
 * "__name__" or "device" is hidden by the built-in label. Float and int
 * series are read as floats, bool series as 0/1; string series are skipped.
 *
 * The subset (docs/API.md, "Prometheus API"): number literals (decimal,
 * hex, exponent, Inf, NaN), vector selectors `metric{l="v", l!="v",
 * l=~"re", l!~"re"}` (metric names may contain '.', an extension; regexes
 * are POSIX extended, anchored), range selectors `[5m]`, `offset`, the
 * functions rate, increase and avg_, min_, max_, sum_, count_, last_over_time,
 * the aggregations sum, avg, min, max, count with by/without (before or
 * after the argument), + - * / % ^ between scalars, vectors and scalars,
 * and vectors with identical label sets (one-to-one), unary minus and
 * parentheses.
 *
 * Layers: promql_parse (pure: text -> AST with byte positions), and
 * promql_eval (runs an AST against a tsdb for one tenant at one time or over
 * a range of steps, everything in memory under the budgets below), and
 * promql_result_json (the "data" object of Prometheus' answers). */
#ifndef THZ_PROMQL_H
#define THZ_PROMQL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/err.h"
#include "tsdb/tsdb.h"

/* Budgets; each is a clear error when hit. */
#define PROMQL_MAX_QUERY     16384          /* bytes of query text */
#define PROMQL_MAX_DEPTH     64             /* nesting of expressions */
#define PROMQL_MAX_REGEX     8192           /* bytes of one regex */
#define PROMQL_MAX_SERIES    100000         /* series one query selects (all selectors) */
#define PROMQL_MAX_SAMPLES   20000000ull    /* points read into memory + result values */
#define PROMQL_MAX_STEPS     11000          /* points per series of a range query */
#define PROMQL_LOOKBACK_NS   300000000000LL /* instant vectors: newest sample in (t-5m, t] */
#define PROMQL_TIME_LIMIT_MS 10000          /* default and upper bound of a query's timeout */

#define PROMQL_MSG_LEN 256

typedef enum promql_ekind {
    PROMQL_ERR_PARSE = 1, /* the text is not in the grammar: bad_data */
    PROMQL_ERR_EXEC,      /* valid but cannot run (bad regex, many-to-many...): execution */
    PROMQL_ERR_LIMIT,     /* a budget was hit: execution */
    PROMQL_ERR_TIMEOUT,   /* the time limit: timeout */
    PROMQL_ERR_INTERNAL   /* out of memory, an engine error: internal */
} promql_ekind;

/* An error. pos is the byte offset in the query it refers to, or -1. msg
 * starts with "LINE:COL: parse error: " for parse errors, as Prometheus'. */
typedef struct promql_error {
    promql_ekind kind;
    int pos;
    char msg[PROMQL_MSG_LEN];
} promql_error;

/* ---- the AST ---- */

typedef enum promql_kind {
    PROMQL_NUM = 1, /* num */
    PROMQL_STR,     /* str (only as a parse result: strings are not evaluated) */
    PROMQL_SEL,     /* name, m/nm, range_ns (0: instant vector), offset_ns */
    PROMQL_CALL,    /* func(arg) */
    PROMQL_AGG,     /* agg [by|without (grouping)] (arg) */
    PROMQL_BIN,     /* lhs op rhs */
    PROMQL_NEG      /* -arg */
} promql_kind;

typedef enum promql_type {
    PROMQL_SCALAR = 1,
    PROMQL_VECTOR, /* instant vector */
    PROMQL_MATRIX, /* range vector */
    PROMQL_STRING
} promql_type;

typedef enum promql_op {
    PROMQL_ADD = 1,
    PROMQL_SUB,
    PROMQL_MUL,
    PROMQL_DIV,
    PROMQL_MOD,
    PROMQL_POW
} promql_op;

typedef enum promql_func {
    PROMQL_RATE = 1,
    PROMQL_INCREASE,
    PROMQL_AVG_OT,
    PROMQL_MIN_OT,
    PROMQL_MAX_OT,
    PROMQL_SUM_OT,
    PROMQL_COUNT_OT,
    PROMQL_LAST_OT
} promql_func;

typedef enum promql_agg {
    PROMQL_SUM = 1,
    PROMQL_AVG,
    PROMQL_MIN,
    PROMQL_MAX,
    PROMQL_COUNT
} promql_agg;

/* One label matcher; a selector's metric name is an EQ matcher on __name__. */
typedef struct promql_matcher {
    char *label; /* NUL-terminated */
    tsdb_match_op op;
    char *value; /* NUL-terminated, unescaped */
    int pos;
} promql_matcher;

typedef struct promql_expr promql_expr;
struct promql_expr {
    promql_kind kind;
    promql_type type; /* what it evaluates to */
    int pos;          /* byte offset of its first token */
    double num;
    char *str;
    promql_matcher *m; /* SEL: matchers, the name's first */
    int nm;
    int64_t range_ns, offset_ns; /* SEL */
    promql_func func;            /* CALL */
    promql_agg agg;              /* AGG */
    char **grouping;             /* AGG: label names */
    int ngrouping;
    bool without;           /* AGG: without (...) rather than by (...) */
    promql_op op;           /* BIN */
    promql_expr *lhs, *rhs; /* BIN: both; CALL, AGG, NEG: lhs is the argument */
    int depth;              /* height of the tree below and including this node */
};

/* Parses len bytes of PromQL. On success *out is a tree the caller frees
 * with promql_free. THZ_EINVAL with err filled (kind PROMQL_ERR_PARSE) for
 * anything outside the subset, THZ_ENOMEM. Pure: no engine, no clock. */
thz_err promql_parse(const char *q, size_t len, promql_expr **out, promql_error *err);
void promql_free(promql_expr *e);

/* Parses a duration ("5m", "1h30m", "250ms") or a float of seconds
 * ("15", "0.5") into ns; false if neither or not positive-or-zero. */
bool promql_duration(const char *s, size_t n, int64_t *ns);

/* Prints e back as PromQL (tests, the fuzz target's round trip). */
thz_err promql_format(const promql_expr *e, thz_buf *b);

/* ---- evaluation ---- */

typedef struct promql_result promql_result;

/* Evaluates e for tenant at the steps start, start+step, ... <= end (ns;
 * an instant query is start == end, step 0). range is true for
 * query_range: a range vector there is an error, and every result is a
 * matrix. timeout_ms bounds the wall time (0 or above the limit:
 * PROMQL_TIME_LIMIT_MS). On error *out is NULL and err says why (its kind
 * is the Prometheus errorType). */
thz_err promql_eval(tsdb *db, int64_t tenant, const promql_expr *e, int64_t start, int64_t end,
                    int64_t step, bool range, int64_t timeout_ms, promql_result **out,
                    promql_error *err);
void promql_result_free(promql_result *r);

/* Appends Prometheus' "data" object of a query answer:
 * {"resultType":"vector"|"matrix"|"scalar","result":...}; values as
 * strings, timestamps as float seconds (ms precision). */
thz_err promql_result_json(const promql_result *r, thz_buf *b);

/* ---- series and labels (the /series, /labels, /label/X/values routes) ---- */

/* Calls fn for every series of tenant matched by the vector selector sel
 * (a PROMQL_SEL; NULL: every series) with its labels as n name/value pairs
 * sorted by name (owned by the callee, valid during the call only); fn
 * returns false to stop. String series are included. */
typedef bool (*promql_labels_fn)(void *ctx, const char *const *names, const char *const *values,
                                 size_t n);
thz_err promql_series(tsdb *db, int64_t tenant, const promql_expr *sel, promql_labels_fn fn,
                      void *ctx, promql_error *err);

/* Appends s as a JSON string (quotes and escapes) to b. */
thz_err promql_json_str(thz_buf *b, const char *s, size_t n);

#endif
