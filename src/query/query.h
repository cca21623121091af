/* query.h - the SQL query layer of thinghz: a subset of Amazon Timestream's
 * SQL over one wide table per tenant, planned onto the tsdb read API.
 *
 * The table. `telemetry` (any FROM name is accepted with a database prefix
 * "db"."telemetry"; only telemetry exists) has the columns `time` (timestamp,
 * ns), `device` (string), every tag key (string) and one column per metric
 * name (nested JSON fields arrive as dotted names: quote them, "env.temp").
 * A row is (device, tag set, time) with the metric values present then.
 * The narrow Timestream form works too (one row per point: measure_name,
 * measure_value::double/::bigint/::varchar/::boolean), not mixed with
 * metric columns in one query.
 *
 * Layers: q_parse (pure: text -> AST with byte positions, no tsdb needed),
 * query_run (plans and executes against a tsdb, result rows in memory with
 * hard caps), and the result writers (JSON, CSV). The grammar is in
 * docs/API.md ("SQL queries"). */
#ifndef THZ_QUERY_H
#define THZ_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/err.h"
#include "tsdb/tsdb.h"

/* Budgets (constants for now; each is a clear error when hit). */
#define QUERY_MAX_SQL       65536       /* bytes of SQL text */
#define QUERY_TIME_LIMIT_MS 10000       /* wall time of one query */
#define QUERY_MAX_ROWS      1000000     /* result rows, and groups of an aggregate */
#define QUERY_MAX_POINTS    50000000ull /* points decoded by one query */
#define QUERY_MAX_BINS      1000000     /* bins of one bin() range */
#define QUERY_MAX_DEPTH     64          /* nesting of expressions */
#define QUERY_PCT_SAMPLE    65536       /* values kept per approx_percentile */

/* Replaces the time, row and point budgets for every later query (0: the
 * default constant). For tests and a future config setting. */
void query_set_limits(int64_t time_ms, int64_t max_rows, uint64_t max_points);

#define QUERY_MSG_LEN 256

/* An error of parsing, planning or execution. pos is the byte offset in
 * the SQL text it refers to, or -1 (a limit, an engine failure). */
typedef struct q_error {
    int pos;
    char msg[QUERY_MSG_LEN]; /* ends with " at position N" when pos >= 0 */
    bool limit;              /* a budget was hit (time, rows, points) */
} q_error;

/* ---- the AST ---- */

typedef enum q_kind {
    Q_NUM = 1,  /* num */
    Q_STR,      /* str: a string literal (a time when compared with time) */
    Q_TIME,     /* ns: TIMESTAMP '...' */
    Q_INTERVAL, /* ns: 1h, 30s, 100ms, INTERVAL '5' MINUTE */
    Q_BOOL,     /* num 0/1 */
    Q_NULL,
    Q_COL,     /* str: column name (unquoted: lower-cased) */
    Q_STAR,    /* * in SELECT * and count(*) */
    Q_CALL,    /* str: function name (lower-cased), args */
    Q_BINOP,   /* op, args[0], args[1] */
    Q_NEG,     /* -args[0] */
    Q_NOT,     /* NOT args[0] */
    Q_IN,      /* args[0] IN (args[1..]); neg: NOT IN */
    Q_BETWEEN, /* args[0] BETWEEN args[1] AND args[2]; neg: NOT BETWEEN */
    Q_ISNULL   /* args[0] IS NULL; neg: IS NOT NULL */
} q_kind;

typedef enum q_op {
    Q_ADD = 1,
    Q_SUB,
    Q_MUL,
    Q_DIV,
    Q_MOD,
    Q_EQ,
    Q_NE,
    Q_LT,
    Q_LE,
    Q_GT,
    Q_GE,
    Q_AND,
    Q_OR
} q_op;

typedef struct q_expr q_expr;
struct q_expr {
    q_kind kind;
    q_op op;
    int pos;  /* byte offset of the expression's first token */
    bool neg; /* NOT IN / NOT BETWEEN / IS NOT NULL */
    double num;
    int64_t ns;
    char *str;
    q_expr **args;
    int nargs;
    int rk;  /* planner: what the node resolved to (exec.c) */
    int ref; /* planner: slot of that column / aggregate / group key */
};

typedef struct q_item {
    q_expr *e;
    char *alias; /* NULL when none */
    int pos;
} q_item;

typedef struct q_order {
    q_expr *e;
    bool desc;
} q_order;

typedef struct q_arena q_arena;

typedef struct q_query {
    q_item *items;
    int nitems;
    char *table; /* last part of the FROM name, lower-cased unless quoted */
    int table_pos;
    q_expr *where; /* NULL when none */
    q_expr **group;
    int ngroup;
    q_expr *having; /* parsed; planned as a filter on groups */
    q_order *order;
    int norder;
    int64_t limit; /* -1: none */
    int limit_pos;
    q_arena *arena; /* every node lives here */
} q_query;

/* Parses len bytes of SQL (one SELECT; a trailing ';' is fine). now_ns is
 * not needed: time functions stay calls until planning. THZ_EINVAL with err
 * filled for anything not in the grammar; THZ_ENOMEM. */
thz_err q_parse(const char *sql, size_t len, q_query **out, q_error *err);
void q_free(q_query *q);

/* Prints an expression back as SQL (tests, column names). */
void q_expr_sql(const q_expr *e, thz_buf *b);

/* ---- results ---- */

typedef enum q_vtype { QV_NULL = 0, QV_NUM, QV_STR, QV_TIME, QV_BOOL, QV_INTERVAL } q_vtype;

typedef struct q_val {
    q_vtype t;
    union {
        double f;
        int64_t ns;
        bool b;
        struct {
            const char *p; /* NUL-terminated, owned by the result (or query) */
            uint32_t n;
        } s;
    } u;
} q_val;

typedef struct q_result q_result;

/* Plans and runs sql for tenant. now_ns: the query's now() (0: the clock).
 * On error: THZ_EINVAL (parse or plan; err->pos set), THZ_ETOOBIG (a
 * budget, err->limit), THZ_ENOMEM, or the engine's error. */
thz_err query_run(tsdb *db, int64_t tenant, const char *sql, size_t len, int64_t now_ns,
                  q_result **out, q_error *err);

size_t q_result_ncols(const q_result *r);
const char *q_result_colname(const q_result *r, size_t col);
size_t q_result_nrows(const q_result *r);
const q_val *q_result_row(const q_result *r, size_t row); /* ncols values */
void q_result_free(q_result *r);
/* Which executor ran (tests, EXPLAIN-like logging): "raw" (rows from
 * decoded points), "agg-fast" (tsdb_aggregate / tsdb_last: block headers
 * and rollups), "agg-points" (aggregates over decoded points). */
const char *q_result_path(const q_result *r);

/* {"columns": [...], "rows": [[...], ...]}: times as RFC 3339 UTC strings
 * with fractional digits only when non-zero, NaN/Inf as null. */
thz_err q_result_json(const q_result *r, thz_buf *b);
/* CSV (RFC 4180): a header row, CRLF line ends, quoting where needed;
 * NULL is an empty field. */
thz_err q_result_csv(const q_result *r, thz_buf *b);

/* Formats ns as RFC 3339 ("2026-11-26T10:00:00Z", "...:00.5Z"). Returns the
 * length written into out (at least 40 bytes). */
size_t q_time_format(int64_t ns, char *out);
/* Parses "2026-11-26 10:00:00[.fff][Z|+hh:mm]", "2026-11-26T10:00:00Z" or
 * "2026-11-26" into ns since the epoch (UTC when no zone). */
bool q_time_parse(const char *s, size_t n, int64_t *ns);
/* An interval literal as the SQL dialect writes it without a fraction:
 * 1 to 12 digits then a unit of one or two letters (ns, us, ms, s, m, h, d,
 * w; any case), e.g. "30s", "5m", "1d". Its length in ns, or 0 when s[0..n)
 * is not one, is zero or does not fit in int64. */
int64_t q_interval_ns(const char *s, size_t n);

/* ---- the daemon's handle ---- */

/* Keeps the engine handle for the HTTP routes (src/api). */
thz_err query_start(tsdb *db);
tsdb *query_db(void);

#endif
