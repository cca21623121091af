/* parse.c - the SQL parser of the query layer: a hand-written lexer and
 * recursive-descent parser from text to the AST of query.h. Pure (no I/O,
 * no clock, no tsdb); every node carries the byte offset where it starts,
 * and every error names the offset where parsing stopped. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "query/query.h"
#include "query/query_int.h"

/* ---- the arena ---- */

struct q_arena {
    q_arena *next;
    size_t used, cap;
    max_align_t data[];
};

void *q_alloc(q_arena **a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!*a || (*a)->used + n > (*a)->cap) {
        size_t cap = n > 8192 ? n : 8192;
        q_arena *b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = *a;
        b->used = 0;
        b->cap = cap;
        *a = b;
    }
    void *p = (char *)(*a)->data + (*a)->used;
    (*a)->used += n;
    memset(p, 0, n);
    return p;
}

char *q_strndup(q_arena **a, const char *s, size_t n)
{
    char *p = q_alloc(a, n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void q_arena_free(q_arena *a)
{
    while (a) {
        q_arena *n = a->next;
        free(a);
        a = n;
    }
}

void q_free(q_query *q)
{
    if (q) q_arena_free(q->arena); /* q itself lives in the arena */
}

void q_seterr(q_error *err, int pos, const char *fmt, ...)
{
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->pos = pos;
    if (pos >= 0 && n >= 0 && (size_t)n < sizeof err->msg)
        snprintf(err->msg + n, sizeof err->msg - n, " at position %d", pos);
}

/* ---- time literals ---- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool digits(const char *s, size_t n, size_t at, int k, int *v)
{
    if (at + k > n) return false;
    int x = 0;
    for (int i = 0; i < k; i++) {
        if (!isdigit((unsigned char)s[at + i])) return false;
        x = x * 10 + (s[at + i] - '0');
    }
    *v = x;
    return true;
}

bool q_time_parse(const char *s, size_t n, int64_t *ns)
{
    while (n && s[n - 1] == ' ') n--;
    while (n && *s == ' ') s++, n--;
    int y, mo, d, h = 0, mi = 0, se = 0;
    if (!digits(s, n, 0, 4, &y) || n < 10 || s[4] != '-' || !digits(s, n, 5, 2, &mo) ||
        s[7] != '-' || !digits(s, n, 8, 2, &d))
        return false;
    if (mo < 1 || mo > 12 || d < 1 || d > 31) return false;
    if (y < 1678 || y > 2261) return false; /* int64 nanoseconds span 1677..2262 */
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (d > mdays[mo - 1]) return false;
    if (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return false;
    size_t i = 10;
    int64_t frac = 0;
    int64_t off = 0;
    if (i < n) {
        if (s[i] != ' ' && s[i] != 'T' && s[i] != 't') return false;
        i++;
        if (!digits(s, n, i, 2, &h) || i + 2 >= n || s[i + 2] != ':' ||
            !digits(s, n, i + 3, 2, &mi))
            return false;
        i += 5;
        if (i < n && s[i] == ':') {
            if (!digits(s, n, i + 1, 2, &se)) return false;
            i += 3;
            if (i < n && s[i] == '.') {
                i++;
                int k = 0;
                int64_t scale = 100000000;
                while (i < n && isdigit((unsigned char)s[i])) {
                    if (k < 9) frac += (s[i] - '0') * scale, scale /= 10;
                    k++, i++;
                }
                if (k == 0) return false;
            }
        }
        if (h > 23 || mi > 59 || se > 60) return false;
        if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
            i++;
        } else if (i < n && (s[i] == '+' || s[i] == '-')) {
            int oh, om;
            if (!digits(s, n, i + 1, 2, &oh) || i + 3 >= n || s[i + 3] != ':' ||
                !digits(s, n, i + 4, 2, &om) || oh > 23 || om > 59)
                return false;
            off = (int64_t)(oh * 60 + om) * 60 * (s[i] == '+' ? 1 : -1);
            i += 6;
        }
        if (i != n) return false;
    }
    int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    int64_t secs = days * 86400 + h * 3600 + mi * 60 + se - off;
    *ns = secs * 1000000000 + frac;
    return true;
}

size_t q_time_format(int64_t ns, char *out)
{
    int64_t secs = ns / 1000000000, frac = ns % 1000000000;
    if (frac < 0) frac += 1000000000, secs--;
    int64_t days = secs / 86400, rem = secs % 86400;
    if (rem < 0) rem += 86400, days--;
    /* civil_from_days */
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    int n = snprintf(out, 40, "%04lld-%02u-%02uT%02d:%02d:%02d", (long long)y, m, d,
                     (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60));
    if (frac) {
        char f[16];
        snprintf(f, sizeof f, "%09lld", (long long)frac);
        int k = 9;
        while (k > 0 && f[k - 1] == '0') k--;
        f[k] = 0;
        n += snprintf(out + n, 40 - n, ".%s", f);
    }
    out[n++] = 'Z';
    out[n] = 0;
    return (size_t)n;
}

/* ---- the lexer ---- */

typedef enum tok_t {
    T_EOF,
    T_IDENT,  /* unquoted identifier or keyword */
    T_QIDENT, /* "quoted" */
    T_STRING, /* 'string' */
    T_NUMBER,
    T_INTERVAL, /* 5m */
    T_OP        /* punctuation: s holds it */
} tok_t;

typedef struct tok {
    tok_t t;
    int pos;
    const char *s; /* raw text */
    size_t n;
    char *val; /* decoded (strings, quoted identifiers, lower-cased idents) */
    double num;
    int64_t ns;
} tok;

typedef struct parser {
    const char *sql;
    size_t len;
    size_t at;
    tok cur;
    q_arena *arena;
    q_error *err;
    int depth;
    bool failed;
    bool nomem;
} parser;

static void fail(parser *p, int pos, const char *fmt, ...)
{
    if (p->failed) return;
    p->failed = true;
    va_list ap;
    va_start(ap, fmt);
    char m[QUERY_MSG_LEN];
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    q_seterr(p->err, pos, "%s", m);
}

static void *palloc(parser *p, size_t n)
{
    void *r = q_alloc(&p->arena, n);
    if (!r && !p->failed) {
        p->nomem = true;
        fail(p, -1, "out of memory");
    }
    return r;
}

static int64_t unit_ns(const char *u, size_t n)
{
    static const struct {
        const char *u;
        int64_t ns;
    } units[] = {{"ns", 1},
                 {"us", 1000},
                 {"ms", 1000000},
                 {"s", 1000000000LL},
                 {"m", 60000000000LL},
                 {"h", 3600000000000LL},
                 {"d", 86400000000000LL},
                 {"w", 604800000000000LL},
                 {"nanosecond", 1},
                 {"microsecond", 1000},
                 {"millisecond", 1000000},
                 {"second", 1000000000LL},
                 {"minute", 60000000000LL},
                 {"hour", 3600000000000LL},
                 {"day", 86400000000000LL},
                 {"week", 604800000000000LL}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        size_t l = strlen(units[i].u);
        if (n == l && strncasecmp(u, units[i].u, n) == 0) return units[i].ns;
        /* plural of the long names: minutes, hours... */
        if (l > 2 && n == l + 1 && strncasecmp(u, units[i].u, l) == 0 &&
            (u[l] == 's' || u[l] == 'S'))
            return units[i].ns;
    }
    return 0;
}

int64_t q_interval_ns(const char *s, size_t n)
{
    size_t k = 0;
    int64_t v = 0;
    while (k < n && k <= 12 && isdigit((unsigned char)s[k])) v = v * 10 + (s[k++] - '0');
    if (!k || k > 12 || n - k < 1 || n - k > 2) return 0;
    int64_t u = unit_ns(s + k, n - k);
    if (!u || v <= 0 || v > INT64_MAX / u) return 0;
    return v * u;
}

static void next(parser *p)
{
    const char *s = p->sql;
    size_t n = p->len, i = p->at;
    for (;;) {
        while (i < n && isspace((unsigned char)s[i])) i++;
        if (i + 1 < n && s[i] == '-' && s[i + 1] == '-') {
            while (i < n && s[i] != '\n') i++;
            continue;
        }
        if (i + 1 < n && s[i] == '/' && s[i + 1] == '*') {
            size_t st = i;
            i += 2;
            while (i + 1 < n && !(s[i] == '*' && s[i + 1] == '/')) i++;
            if (i + 1 >= n) {
                fail(p, (int)st, "unterminated comment");
                p->cur.t = T_EOF;
                p->cur.pos = (int)n;
                return;
            }
            i += 2;
            continue;
        }
        break;
    }
    tok *t = &p->cur;
    memset(t, 0, sizeof *t);
    t->pos = (int)i;
    t->s = s + i;
    if (i >= n) {
        t->t = T_EOF;
        p->at = i;
        return;
    }
    unsigned char c = (unsigned char)s[i];
    if (c == 0) {
        fail(p, (int)i, "unexpected NUL byte");
        t->t = T_EOF;
        return;
    }
    if (isalpha(c) || c == '_') {
        size_t st = i;
        while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '$')) i++;
        t->t = T_IDENT;
        t->n = i - st;
        t->val = palloc(p, t->n + 1);
        if (t->val)
            for (size_t k = 0; k < t->n; k++) t->val[k] = (char)tolower((unsigned char)s[st + k]);
    } else if (c == '"' || c == '\'' || c == '`') {
        char q = (char)c;
        size_t st = i++;
        char *v = palloc(p, n - st + 1);
        size_t k = 0;
        for (;;) {
            if (i >= n) {
                fail(p, (int)st,
                     c == '\'' ? "unterminated string" : "unterminated quoted identifier");
                t->t = T_EOF;
                p->at = n;
                return;
            }
            if (s[i] == q) {
                if (i + 1 < n && s[i + 1] == q) {
                    if (v) v[k++] = q;
                    i += 2;
                    continue;
                }
                i++;
                break;
            }
            if (s[i] == 0) {
                fail(p, (int)i, "unexpected NUL byte");
                t->t = T_EOF;
                return;
            }
            if (v) v[k++] = s[i];
            i++;
        }
        if (v) v[k] = 0;
        t->val = v;
        t->n = i - st;
        t->t = c == '\'' ? T_STRING : T_QIDENT;
        if (t->t == T_QIDENT && k == 0) fail(p, (int)st, "empty quoted identifier");
    } else if (isdigit(c) || (c == '.' && i + 1 < n && isdigit((unsigned char)s[i + 1]))) {
        size_t st = i;
        while (i < n && isdigit((unsigned char)s[i])) i++;
        if (i < n && s[i] == '.') {
            i++;
            while (i < n && isdigit((unsigned char)s[i])) i++;
        }
        if (i < n && (s[i] == 'e' || s[i] == 'E') && i + 1 < n &&
            (isdigit((unsigned char)s[i + 1]) || ((s[i + 1] == '+' || s[i + 1] == '-') &&
                                                  i + 2 < n && isdigit((unsigned char)s[i + 2])))) {
            i += 2;
            while (i < n && isdigit((unsigned char)s[i])) i++;
        }
        char buf[64];
        size_t l = i - st;
        if (l >= sizeof buf) {
            fail(p, (int)st, "number too long");
            t->t = T_EOF;
            return;
        }
        memcpy(buf, s + st, l);
        buf[l] = 0;
        t->num = strtod(buf, NULL);
        t->t = T_NUMBER;
        if (i < n && (isalpha((unsigned char)s[i]) || s[i] == '_')) {
            size_t us = i;
            while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '_')) i++;
            int64_t u = unit_ns(s + us, i - us);
            if (!u || i - us > 2) {
                fail(p, (int)us, "unknown interval unit '%.*s' (use ns, us, ms, s, m, h, d or w)",
                     (int)(i - us > 32 ? 32 : i - us), s + us);
                t->t = T_EOF;
                return;
            }
            double v = t->num * (double)u;
            if (!(v < 9.2e18)) {
                fail(p, (int)st, "interval out of range");
                t->t = T_EOF;
                return;
            }
            t->ns = (int64_t)llround(v);
            t->t = T_INTERVAL;
        }
        t->n = i - st;
    } else {
        static const char *ops2[] = {"<=", ">=", "<>", "!=", "::", "||"};
        t->t = T_OP;
        t->n = 1;
        for (size_t k = 0; k < sizeof ops2 / sizeof ops2[0]; k++)
            if (i + 1 < n && s[i] == ops2[k][0] && s[i + 1] == ops2[k][1]) t->n = 2;
        if (t->n == 1 && !strchr(",()*+-/%=<>.;", c)) {
            if (c >= 0x20 && c < 0x7f)
                fail(p, (int)i, "unexpected character '%c'", c);
            else
                fail(p, (int)i, "unexpected byte 0x%02x", c);
            t->t = T_EOF;
            return;
        }
        i += t->n;
    }
    p->at = i;
}

static bool is_op(parser *p, const char *op)
{
    return p->cur.t == T_OP && p->cur.n == strlen(op) && memcmp(p->cur.s, op, p->cur.n) == 0;
}

static bool is_kw(parser *p, const char *kw)
{
    return p->cur.t == T_IDENT && p->cur.val && strcmp(p->cur.val, kw) == 0;
}

static bool accept_op(parser *p, const char *op)
{
    if (!is_op(p, op)) return false;
    next(p);
    return true;
}

static bool accept_kw(parser *p, const char *kw)
{
    if (!is_kw(p, kw)) return false;
    next(p);
    return true;
}

static const char *tok_desc(parser *p, char *buf, size_t n)
{
    if (p->cur.t == T_EOF) return "the end of the query";
    snprintf(buf, n, "'%.*s'", (int)(p->cur.n > 40 ? 40 : p->cur.n), p->cur.s);
    return buf;
}

static void expected(parser *p, const char *what)
{
    char b[64];
    fail(p, p->cur.pos, "expected %s but found %s", what, tok_desc(p, b, sizeof b));
}

static bool expect_op(parser *p, const char *op)
{
    if (accept_op(p, op)) return true;
    char w[16];
    snprintf(w, sizeof w, "'%s'", op);
    expected(p, w);
    return false;
}

static const char *const reserved[] = {
    "select", "from",   "where",     "group",    "by",   "order",   "asc",   "desc",     "limit",
    "as",     "and",    "or",        "not",      "in",   "between", "is",    "null",     "true",
    "false",  "having", "timestamp", "interval", "on",   "join",    "union", "distinct", "case",
    "when",   "then",   "else",      "end",      "with", "offset",  NULL};

static bool is_reserved(const char *s)
{
    for (int i = 0; reserved[i]; i++)
        if (strcmp(s, reserved[i]) == 0) return true;
    return false;
}

/* ---- expressions ---- */

static q_expr *node(parser *p, q_kind k, int pos)
{
    q_expr *e = palloc(p, sizeof *e);
    if (!e) return NULL;
    e->kind = k;
    e->pos = pos;
    return e;
}

static q_expr *node_args(parser *p, q_kind k, int pos, int n)
{
    q_expr *e = node(p, k, pos);
    if (!e) return NULL;
    e->args = palloc(p, sizeof(q_expr *) * (n ? n : 1));
    if (!e->args) return NULL;
    e->nargs = n;
    return e;
}

static q_expr *parse_expr(parser *p);

/* ( expr, ... ) after the '(' has been consumed; star allowed as the only
 * argument when star is true. Returns the list in *out. */
static int parse_list(parser *p, q_expr ***out, bool star)
{
    q_expr *tmp[256];
    int n = 0;
    if (accept_op(p, ")")) {
        *out = NULL;
        return 0;
    }
    if (star && is_op(p, "*")) {
        tmp[n++] = node(p, Q_STAR, p->cur.pos);
        next(p);
    } else {
        for (;;) {
            if (n >= 256) {
                fail(p, p->cur.pos, "too many items in a list (at most 256)");
                return -1;
            }
            q_expr *e = parse_expr(p);
            if (p->failed) return -1;
            tmp[n++] = e;
            if (!accept_op(p, ",")) break;
        }
    }
    if (!expect_op(p, ")")) return -1;
    *out = palloc(p, sizeof(q_expr *) * (n ? n : 1));
    if (!*out) return -1;
    memcpy(*out, tmp, sizeof(q_expr *) * n);
    return n;
}

static q_expr *parse_primary(parser *p)
{
    tok t = p->cur;
    switch (t.t) {
    case T_NUMBER: {
        q_expr *e = node(p, Q_NUM, t.pos);
        if (e) e->num = t.num;
        next(p);
        return e;
    }
    case T_INTERVAL: {
        q_expr *e = node(p, Q_INTERVAL, t.pos);
        if (e) e->ns = t.ns;
        next(p);
        return e;
    }
    case T_STRING: {
        q_expr *e = node(p, Q_STR, t.pos);
        if (e) e->str = t.val;
        next(p);
        return e;
    }
    case T_QIDENT: {
        q_expr *e = node(p, Q_COL, t.pos);
        if (e) e->str = t.val;
        next(p);
        return e;
    }
    case T_OP:
        if (accept_op(p, "(")) {
            q_expr *e = parse_expr(p);
            if (p->failed) return NULL;
            if (!expect_op(p, ")")) return NULL;
            return e;
        }
        expected(p, "an expression");
        return NULL;
    case T_EOF: expected(p, "an expression"); return NULL;
    case T_IDENT: break;
    }
    /* identifiers and keywords */
    if (accept_kw(p, "null")) return node(p, Q_NULL, t.pos);
    if (is_kw(p, "true") || is_kw(p, "false")) {
        q_expr *e = node(p, Q_BOOL, t.pos);
        if (e) e->num = is_kw(p, "true");
        next(p);
        return e;
    }
    if (accept_kw(p, "timestamp")) {
        if (p->cur.t != T_STRING) {
            expected(p, "a string after TIMESTAMP");
            return NULL;
        }
        q_expr *e = node(p, Q_TIME, t.pos);
        if (e && !q_time_parse(p->cur.val, strlen(p->cur.val), &e->ns)) {
            fail(p, p->cur.pos, "not a timestamp (use 'YYYY-MM-DD hh:mm:ss[.fff]')");
            return NULL;
        }
        next(p);
        return e;
    }
    if (accept_kw(p, "interval")) {
        /* INTERVAL '5' MINUTE, INTERVAL '5m', INTERVAL '5 minutes' */
        if (p->cur.t != T_STRING) {
            expected(p, "a string after INTERVAL");
            return NULL;
        }
        const char *v = p->cur.val;
        int spos = p->cur.pos;
        char *end;
        errno = 0;
        double num = strtod(v, &end);
        if (end == v || errno || !isfinite(num)) {
            fail(p, spos, "not an interval");
            return NULL;
        }
        while (*end == ' ') end++;
        next(p);
        int64_t u = 0;
        if (*end) {
            u = unit_ns(end, strlen(end));
        } else if (p->cur.t == T_IDENT) {
            u = unit_ns(p->cur.val, strlen(p->cur.val));
            if (u) next(p);
        }
        if (!u) {
            fail(p, *end ? spos : p->cur.pos,
                 "expected an interval unit (SECOND, MINUTE, HOUR, DAY...)");
            return NULL;
        }
        double ns = num * (double)u;
        if (!(fabs(ns) < 9.2e18)) {
            fail(p, spos, "interval out of range");
            return NULL;
        }
        q_expr *e = node(p, Q_INTERVAL, t.pos);
        if (e) e->ns = (int64_t)llround(ns);
        return e;
    }
    if (is_reserved(t.val)) {
        char b[64];
        fail(p, t.pos, "expected an expression but found the keyword %s", tok_desc(p, b, sizeof b));
        return NULL;
    }
    next(p);
    if (accept_op(p, "(")) {
        q_expr *e = node(p, Q_CALL, t.pos);
        if (!e) return NULL;
        e->str = t.val;
        int n = parse_list(p, &e->args, true);
        if (n < 0) return NULL;
        e->nargs = n;
        return e;
    }
    /* a column: name, name::type (Timestream's measure_value::double) or
     * a dotted name (telemetry.temperature, env.temp). */
    char buf[1024];
    size_t bl = snprintf(buf, sizeof buf, "%s", t.val);
    while (is_op(p, "::") || is_op(p, ".")) {
        bool dc = is_op(p, "::");
        next(p);
        if (p->cur.t != T_IDENT && p->cur.t != T_QIDENT) {
            expected(p, "a name");
            return NULL;
        }
        if (bl + strlen(p->cur.val) + 3 >= sizeof buf) {
            fail(p, t.pos, "name too long");
            return NULL;
        }
        bl += snprintf(buf + bl, sizeof buf - bl, "%s%s", dc ? "::" : ".", p->cur.val);
        next(p);
    }
    q_expr *e = node(p, Q_COL, t.pos);
    if (e) e->str = q_strndup(&p->arena, buf, bl);
    return e;
}

static q_expr *parse_unary(parser *p)
{
    int pos = p->cur.pos;
    if (++p->depth > QUERY_MAX_DEPTH) {
        fail(p, pos, "expression nested too deeply (at most %d levels)", QUERY_MAX_DEPTH);
        return NULL;
    }
    q_expr *r;
    if (accept_op(p, "-")) {
        q_expr *a = parse_unary(p);
        if (p->failed) return NULL;
        if (a && (a->kind == Q_NUM || a->kind == Q_INTERVAL)) {
            a->num = -a->num;
            a->ns = -a->ns;
            a->pos = pos;
            r = a;
        } else {
            r = node_args(p, Q_NEG, pos, 1);
            if (r) r->args[0] = a;
        }
    } else if (accept_op(p, "+")) {
        r = parse_unary(p);
    } else {
        r = parse_primary(p);
    }
    p->depth--;
    return r;
}

static q_expr *binop(parser *p, q_op op, int pos, q_expr *l, q_expr *r)
{
    q_expr *e = node_args(p, Q_BINOP, pos, 2);
    if (!e) return NULL;
    e->op = op;
    e->args[0] = l;
    e->args[1] = r;
    return e;
}

static q_expr *parse_mul(parser *p)
{
    q_expr *l = parse_unary(p);
    while (!p->failed) {
        q_op op = is_op(p, "*") ? Q_MUL : is_op(p, "/") ? Q_DIV : is_op(p, "%") ? Q_MOD : 0;
        if (!op) break;
        next(p);
        q_expr *r = parse_unary(p);
        if (p->failed) return NULL;
        l = binop(p, op, l->pos, l, r);
    }
    return p->failed ? NULL : l;
}

static q_expr *parse_add(parser *p)
{
    q_expr *l = parse_mul(p);
    while (!p->failed) {
        q_op op = is_op(p, "+") ? Q_ADD : is_op(p, "-") ? Q_SUB : 0;
        if (!op) break;
        next(p);
        q_expr *r = parse_mul(p);
        if (p->failed) return NULL;
        l = binop(p, op, l->pos, l, r);
    }
    return p->failed ? NULL : l;
}

static q_expr *parse_cmp(parser *p)
{
    q_expr *l = parse_add(p);
    if (p->failed) return NULL;
    q_op op = is_op(p, "=")                        ? Q_EQ
              : (is_op(p, "!=") || is_op(p, "<>")) ? Q_NE
              : is_op(p, "<")                      ? Q_LT
              : is_op(p, "<=")                     ? Q_LE
              : is_op(p, ">")                      ? Q_GT
              : is_op(p, ">=")                     ? Q_GE
                                                   : 0;
    if (op) {
        next(p);
        q_expr *r = parse_add(p);
        if (p->failed) return NULL;
        return binop(p, op, l->pos, l, r);
    }
    if (accept_kw(p, "is")) {
        bool neg = accept_kw(p, "not");
        if (!accept_kw(p, "null")) {
            expected(p, "NULL");
            return NULL;
        }
        q_expr *e = node_args(p, Q_ISNULL, l->pos, 1);
        if (!e) return NULL;
        e->args[0] = l;
        e->neg = neg;
        return e;
    }
    bool neg = false;
    if (is_kw(p, "not")) {
        /* NOT IN / NOT BETWEEN: look one token ahead */
        size_t save_at = p->at;
        tok save = p->cur;
        next(p);
        if (!is_kw(p, "in") && !is_kw(p, "between")) {
            p->at = save_at;
            p->cur = save;
            return l;
        }
        neg = true;
    }
    if (accept_kw(p, "in")) {
        if (!expect_op(p, "(")) return NULL;
        q_expr **items;
        int pos = p->cur.pos;
        int n = parse_list(p, &items, false);
        if (n < 0) return NULL;
        if (n == 0) {
            fail(p, pos, "IN needs at least one value");
            return NULL;
        }
        q_expr *e = node_args(p, Q_IN, l->pos, n + 1);
        if (!e) return NULL;
        e->neg = neg;
        e->args[0] = l;
        memcpy(e->args + 1, items, sizeof(q_expr *) * n);
        return e;
    }
    if (accept_kw(p, "between")) {
        q_expr *lo = parse_add(p);
        if (p->failed) return NULL;
        if (!accept_kw(p, "and")) {
            expected(p, "AND of BETWEEN");
            return NULL;
        }
        q_expr *hi = parse_add(p);
        if (p->failed) return NULL;
        q_expr *e = node_args(p, Q_BETWEEN, l->pos, 3);
        if (!e) return NULL;
        e->neg = neg;
        e->args[0] = l;
        e->args[1] = lo;
        e->args[2] = hi;
        return e;
    }
    return l;
}

static q_expr *parse_not(parser *p)
{
    int pos = p->cur.pos;
    if (accept_kw(p, "not")) {
        if (++p->depth > QUERY_MAX_DEPTH) {
            fail(p, pos, "expression nested too deeply (at most %d levels)", QUERY_MAX_DEPTH);
            return NULL;
        }
        q_expr *a = parse_not(p);
        p->depth--;
        if (p->failed) return NULL;
        q_expr *e = node_args(p, Q_NOT, pos, 1);
        if (e) e->args[0] = a;
        return e;
    }
    return parse_cmp(p);
}

static q_expr *parse_and(parser *p)
{
    q_expr *l = parse_not(p);
    while (!p->failed && accept_kw(p, "and")) {
        q_expr *r = parse_not(p);
        if (p->failed) return NULL;
        l = binop(p, Q_AND, l->pos, l, r);
    }
    return p->failed ? NULL : l;
}

static q_expr *parse_expr(parser *p)
{
    if (++p->depth > QUERY_MAX_DEPTH) {
        fail(p, p->cur.pos, "expression nested too deeply (at most %d levels)", QUERY_MAX_DEPTH);
        return NULL;
    }
    q_expr *l = parse_and(p);
    while (!p->failed && accept_kw(p, "or")) {
        q_expr *r = parse_and(p);
        if (p->failed) return NULL;
        l = binop(p, Q_OR, l->pos, l, r);
    }
    p->depth--;
    return p->failed ? NULL : l;
}

/* ---- the statement ---- */

static char *parse_alias(parser *p)
{
    bool as = accept_kw(p, "as");
    if (p->cur.t == T_QIDENT || (p->cur.t == T_IDENT && !is_reserved(p->cur.val))) {
        char *a = p->cur.val;
        next(p);
        return a;
    }
    if (p->cur.t == T_STRING && as) { /* AS 'name' is common enough */
        char *a = p->cur.val;
        next(p);
        return a;
    }
    if (as) expected(p, "a name after AS");
    return NULL;
}

static int parse_exprs(parser *p, q_expr ***out)
{
    q_expr *tmp[256];
    int n = 0;
    for (;;) {
        if (n >= 256) {
            fail(p, p->cur.pos, "too many items (at most 256)");
            return -1;
        }
        tmp[n++] = parse_expr(p);
        if (p->failed) return -1;
        if (!accept_op(p, ",")) break;
    }
    *out = palloc(p, sizeof(q_expr *) * n);
    if (!*out) return -1;
    memcpy(*out, tmp, sizeof(q_expr *) * n);
    return n;
}

static q_query *parse_select(parser *p)
{
    q_query *q = palloc(p, sizeof *q);
    if (!q) return NULL;
    q->limit = -1;
    if (!accept_kw(p, "select")) {
        expected(p, "SELECT");
        return NULL;
    }
    if (is_kw(p, "distinct")) {
        fail(p, p->cur.pos, "SELECT DISTINCT is not supported (use GROUP BY)");
        return NULL;
    }
    q_item tmp[256];
    int n = 0;
    for (;;) {
        if (n >= 256) {
            fail(p, p->cur.pos, "too many SELECT items (at most 256)");
            return NULL;
        }
        q_item *it = &tmp[n++];
        memset(it, 0, sizeof *it);
        it->pos = p->cur.pos;
        if (is_op(p, "*")) {
            it->e = node(p, Q_STAR, p->cur.pos);
            next(p);
        } else {
            it->e = parse_expr(p);
            if (p->failed) return NULL;
            it->alias = parse_alias(p);
            if (p->failed) return NULL;
        }
        if (!accept_op(p, ",")) break;
    }
    q->items = palloc(p, sizeof(q_item) * n);
    if (!q->items) return NULL;
    memcpy(q->items, tmp, sizeof(q_item) * n);
    q->nitems = n;
    if (!accept_kw(p, "from")) {
        expected(p, "',' or FROM");
        return NULL;
    }
    q->table_pos = p->cur.pos;
    for (;;) {
        if (p->cur.t != T_IDENT && p->cur.t != T_QIDENT) {
            expected(p, "a table name");
            return NULL;
        }
        if (p->cur.t == T_IDENT && is_reserved(p->cur.val)) {
            expected(p, "a table name");
            return NULL;
        }
        q->table = p->cur.val;
        next(p);
        if (!accept_op(p, ".")) break;
    }
    if (is_op(p, ",") || is_kw(p, "join")) {
        fail(p, p->cur.pos, "joins are not supported (one table: telemetry)");
        return NULL;
    }
    if (accept_kw(p, "where")) {
        q->where = parse_expr(p);
        if (p->failed) return NULL;
    }
    if (accept_kw(p, "group")) {
        if (!accept_kw(p, "by")) {
            expected(p, "BY");
            return NULL;
        }
        q->ngroup = parse_exprs(p, &q->group);
        if (p->failed) return NULL;
    }
    if (accept_kw(p, "having")) {
        q->having = parse_expr(p);
        if (p->failed) return NULL;
    }
    if (accept_kw(p, "order")) {
        if (!accept_kw(p, "by")) {
            expected(p, "BY");
            return NULL;
        }
        q_order ot[256];
        int k = 0;
        for (;;) {
            if (k >= 256) {
                fail(p, p->cur.pos, "too many ORDER BY items");
                return NULL;
            }
            ot[k].e = parse_expr(p);
            if (p->failed) return NULL;
            ot[k].desc = false;
            if (accept_kw(p, "desc"))
                ot[k].desc = true;
            else
                accept_kw(p, "asc");
            if (is_kw(p, "nulls")) {
                fail(p, p->cur.pos, "NULLS FIRST/LAST is not supported (NULLs sort last)");
                return NULL;
            }
            k++;
            if (!accept_op(p, ",")) break;
        }
        q->order = palloc(p, sizeof(q_order) * k);
        if (!q->order) return NULL;
        memcpy(q->order, ot, sizeof(q_order) * k);
        q->norder = k;
    }
    if (accept_kw(p, "limit")) {
        q->limit_pos = p->cur.pos;
        if (p->cur.t != T_NUMBER || p->cur.num != floor(p->cur.num) || p->cur.num < 0 ||
            p->cur.num > 1e15) {
            expected(p, "a whole number after LIMIT");
            return NULL;
        }
        q->limit = (int64_t)p->cur.num;
        next(p);
    }
    if (is_kw(p, "offset")) {
        fail(p, p->cur.pos, "OFFSET is not supported");
        return NULL;
    }
    accept_op(p, ";");
    if (p->cur.t != T_EOF) {
        char b[64];
        fail(p, p->cur.pos, "unexpected %s", tok_desc(p, b, sizeof b));
        return NULL;
    }
    return q;
}

thz_err q_parse(const char *sql, size_t len, q_query **out, q_error *err)
{
    *out = NULL;
    if (err) {
        err->pos = -1;
        err->msg[0] = 0;
        err->limit = false;
    }
    if (len > QUERY_MAX_SQL) {
        q_seterr(err, -1, "the query is longer than %d bytes", QUERY_MAX_SQL);
        return THZ_EINVAL;
    }
    parser p = {.sql = sql, .len = len, .err = err};
    next(&p);
    q_query *q = p.failed ? NULL : parse_select(&p);
    if (p.failed || !q) {
        if (!p.failed) fail(&p, p.cur.pos, "cannot parse");
        q_arena_free(p.arena);
        return p.nomem ? THZ_ENOMEM : THZ_EINVAL;
    }
    q->arena = p.arena;
    *out = q;
    return THZ_OK;
}

/* ---- printing ---- */

static void put(thz_buf *b, const char *s)
{
    thz_buf_append(b, s, strlen(s));
}

static const char *op_str(q_op op)
{
    switch (op) {
    case Q_ADD: return "+";
    case Q_SUB: return "-";
    case Q_MUL: return "*";
    case Q_DIV: return "/";
    case Q_MOD: return "%";
    case Q_EQ: return "=";
    case Q_NE: return "!=";
    case Q_LT: return "<";
    case Q_LE: return "<=";
    case Q_GT: return ">";
    case Q_GE: return ">=";
    case Q_AND: return "AND";
    case Q_OR: return "OR";
    }
    return "?";
}

static void put_num(thz_buf *b, double v)
{
    char t[64];
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(t, sizeof t, "%lld", (long long)v);
    else {
        snprintf(t, sizeof t, "%.15g", v);
        if (strtod(t, NULL) != v) snprintf(t, sizeof t, "%.17g", v);
    }
    put(b, t);
}

static void put_interval(thz_buf *b, int64_t ns)
{
    static const struct {
        const char *u;
        int64_t ns;
    } u[] = {{"d", 86400000000000LL},
             {"h", 3600000000000LL},
             {"m", 60000000000LL},
             {"s", 1000000000LL},
             {"ms", 1000000},
             {"us", 1000},
             {"ns", 1}};
    char t[64];
    for (size_t i = 0; i < 7; i++)
        if (ns % u[i].ns == 0) {
            snprintf(t, sizeof t, "%lld%s", (long long)(ns / u[i].ns), u[i].u);
            put(b, t);
            return;
        }
}

static void put_quoted(thz_buf *b, const char *s, char q)
{
    thz_buf_append(b, &q, 1);
    for (; *s; s++) {
        if (*s == q) thz_buf_append(b, &q, 1);
        thz_buf_append(b, s, 1);
    }
    thz_buf_append(b, &q, 1);
}

void q_expr_sql(const q_expr *e, thz_buf *b)
{
    if (!e) {
        put(b, "?");
        return;
    }
    switch (e->kind) {
    case Q_NUM: put_num(b, e->num); break;
    case Q_STR: put_quoted(b, e->str, '\''); break;
    case Q_TIME: {
        char t[48];
        q_time_format(e->ns, t);
        put(b, "TIMESTAMP ");
        put_quoted(b, t, '\'');
        break;
    }
    case Q_INTERVAL: put_interval(b, e->ns); break;
    case Q_BOOL: put(b, e->num ? "true" : "false"); break;
    case Q_NULL: put(b, "NULL"); break;
    case Q_COL: {
        bool plain =
            (isalpha((unsigned char)e->str[0]) || e->str[0] == '_') && !is_reserved(e->str);
        for (const char *s = e->str; *s && plain; s++)
            if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_'))
                plain = false;
        if (plain)
            put(b, e->str);
        else
            put_quoted(b, e->str, '"');
        break;
    }
    case Q_STAR: put(b, "*"); break;
    case Q_CALL:
        put(b, e->str);
        put(b, "(");
        for (int i = 0; i < e->nargs; i++) {
            if (i) put(b, ", ");
            q_expr_sql(e->args[i], b);
        }
        put(b, ")");
        break;
    case Q_BINOP:
        put(b, "(");
        q_expr_sql(e->args[0], b);
        put(b, " ");
        put(b, op_str(e->op));
        put(b, " ");
        q_expr_sql(e->args[1], b);
        put(b, ")");
        break;
    case Q_NEG:
        put(b, "-");
        q_expr_sql(e->args[0], b);
        break;
    case Q_NOT:
        put(b, "NOT ");
        q_expr_sql(e->args[0], b);
        break;
    case Q_IN:
        put(b, "(");
        q_expr_sql(e->args[0], b);
        put(b, e->neg ? " NOT IN (" : " IN (");
        for (int i = 1; i < e->nargs; i++) {
            if (i > 1) put(b, ", ");
            q_expr_sql(e->args[i], b);
        }
        put(b, "))");
        break;
    case Q_BETWEEN:
        put(b, "(");
        q_expr_sql(e->args[0], b);
        put(b, e->neg ? " NOT BETWEEN " : " BETWEEN ");
        q_expr_sql(e->args[1], b);
        put(b, " AND ");
        q_expr_sql(e->args[2], b);
        put(b, ")");
        break;
    case Q_ISNULL:
        put(b, "(");
        q_expr_sql(e->args[0], b);
        put(b, e->neg ? " IS NOT NULL)" : " IS NULL)");
        break;
    }
}
