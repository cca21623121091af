/* parse.c - the PromQL parser: a pure function of the query text that builds
 * the AST of promql.h with byte positions and types, and refuses anything
 * outside the subset with a Prometheus-style "LINE:COL: parse error: ..." */
#include <ctype.h>
#include <regex.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "promql/promql.h"

#define MAX_DURATION_NS (100LL * 365 * 86400 * 1000000000LL) /* 100 years */
#define MAX_GROUPING    64                                   /* labels in by/without */
#define MAX_MATCHERS    64                                   /* matchers of one selector */

typedef enum tkind {
    T_EOF = 1,
    T_NUM,
    T_DUR,
    T_IDENT,
    T_STR,
    T_LPAREN,
    T_RPAREN,
    T_LBRACE,
    T_RBRACE,
    T_LBRACK,
    T_RBRACK,
    T_COMMA,
    T_COLON,
    T_AT,
    T_ASSIGN, /* = */
    T_NEQ,    /* != */
    T_RE,     /* =~ */
    T_NRE,    /* !~ */
    T_EQL,    /* == */
    T_LT,
    T_GT,
    T_LTE,
    T_GTE,
    T_ADD,
    T_SUB,
    T_MUL,
    T_DIV,
    T_MOD,
    T_POW
} tkind;

typedef struct tok {
    tkind k;
    size_t pos, len;
    double num;
    int64_t ns;
} tok;

typedef struct parser {
    const char *s;
    size_t n, i;
    tok t;
    int depth;
    bool failed;
    promql_error *err;
} parser;

/* ---- errors ---- */

static void fail_at(parser *p, size_t pos, const char *fmt, ...)
{
    if (p->failed) return;
    p->failed = true;
    int line = 1, col = 1;
    for (size_t i = 0; i < pos && i < p->n; i++) {
        if (p->s[i] == '\n')
            line++, col = 1;
        else
            col++;
    }
    char m[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    p->err->kind = PROMQL_ERR_PARSE;
    p->err->pos = (int)pos;
    snprintf(p->err->msg, sizeof p->err->msg, "%d:%d: parse error: %s", line, col, m);
}

/* A printable description of the current token for "unexpected ..." errors. */
static void tok_desc(parser *p, char *out, size_t cap)
{
    switch (p->t.k) {
    case T_EOF: snprintf(out, cap, "end of input"); return;
    case T_STR: snprintf(out, cap, "string"); return;
    case T_NUM:
        snprintf(out, cap, "number \"%.*s\"", (int)(p->t.len > 40 ? 40 : p->t.len),
                 p->s + p->t.pos);
        return;
    case T_DUR:
        snprintf(out, cap, "duration \"%.*s\"", (int)(p->t.len > 40 ? 40 : p->t.len),
                 p->s + p->t.pos);
        return;
    case T_IDENT:
        snprintf(out, cap, "identifier \"%.*s\"", (int)(p->t.len > 40 ? 40 : p->t.len),
                 p->s + p->t.pos);
        return;
    default: snprintf(out, cap, "\"%.*s\"", (int)p->t.len, p->s + p->t.pos); return;
    }
}

static void unexpected(parser *p, const char *want)
{
    char d[80];
    tok_desc(p, d, sizeof d);
    if (want)
        fail_at(p, p->t.pos, "unexpected %s, expected %s", d, want);
    else
        fail_at(p, p->t.pos, "unexpected %s", d);
}

/* ---- the lexer ---- */

static bool id_start(int c)
{
    return isalpha(c) || c == '_' || c == ':';
}

static bool id_char(int c)
{
    return isalnum(c) || c == '_' || c == ':' || c == '.';
}

/* Reads a duration ("1h30m", "250ms") at s[i..n): its end in *end and value
 * in *ns; false when there is none or it overflows the bound. */
static bool lex_duration(const char *s, size_t n, size_t i, size_t *end, int64_t *ns)
{
    int64_t total = 0;
    size_t j = i;
    bool any = false;
    while (j < n && isdigit((unsigned char)s[j])) {
        int64_t v = 0;
        while (j < n && isdigit((unsigned char)s[j])) {
            if (v > MAX_DURATION_NS / 10) return false;
            v = v * 10 + (s[j] - '0');
            j++;
        }
        int64_t unit;
        if (j + 1 < n && s[j] == 'm' && s[j + 1] == 's')
            unit = 1000000LL, j += 2;
        else if (j < n && s[j] == 's')
            unit = 1000000000LL, j++;
        else if (j < n && s[j] == 'm')
            unit = 60LL * 1000000000LL, j++;
        else if (j < n && s[j] == 'h')
            unit = 3600LL * 1000000000LL, j++;
        else if (j < n && s[j] == 'd')
            unit = 86400LL * 1000000000LL, j++;
        else if (j < n && s[j] == 'w')
            unit = 7 * 86400LL * 1000000000LL, j++;
        else if (j < n && s[j] == 'y')
            unit = 365 * 86400LL * 1000000000LL, j++;
        else
            return false;
        if (v > MAX_DURATION_NS / unit) return false;
        total += v * unit;
        if (total > MAX_DURATION_NS) return false;
        any = true;
    }
    if (!any || (j < n && s[j] != ':' && id_char((unsigned char)s[j]))) return false;
    *end = j;
    *ns = total;
    return true;
}

/* Scans the next token into p->t. */
static void next(parser *p)
{
    const char *s = p->s;
    size_t n = p->n, i = p->i;
    for (;;) {
        while (i < n && isspace((unsigned char)s[i])) i++;
        if (i < n && s[i] == '#') { /* a comment to the end of the line */
            while (i < n && s[i] != '\n') i++;
            continue;
        }
        break;
    }
    tok t = {.k = T_EOF, .pos = i, .len = 0};
    if (i >= n) {
        p->t = t;
        p->i = i;
        return;
    }
    unsigned char c = (unsigned char)s[i];
    unsigned char c2 = i + 1 < n ? (unsigned char)s[i + 1] : 0;
    size_t j = i + 1;
    if (isdigit(c) || (c == '.' && isdigit(c2))) {
        size_t dend;
        int64_t ns;
        if (isdigit(c) && lex_duration(s, n, i, &dend, &ns)) {
            t.k = T_DUR;
            t.ns = ns;
            j = dend;
        } else {
            /* a number: hex, or decimal with fraction and exponent */
            j = i;
            if (c == '0' && (c2 == 'x' || c2 == 'X')) {
                j += 2;
                while (j < n && isxdigit((unsigned char)s[j])) j++;
            } else {
                while (j < n && isdigit((unsigned char)s[j])) j++;
                if (j < n && s[j] == '.') {
                    j++;
                    while (j < n && isdigit((unsigned char)s[j])) j++;
                }
                if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                    size_t k = j + 1;
                    if (k < n && (s[k] == '+' || s[k] == '-')) k++;
                    if (k < n && isdigit((unsigned char)s[k])) {
                        j = k;
                        while (j < n && isdigit((unsigned char)s[j])) j++;
                    }
                }
            }
            char buf[64];
            if (j - i >= sizeof buf || (j < n && id_char((unsigned char)s[j]))) {
                while (j < n && id_char((unsigned char)s[j])) j++;
                fail_at(p, i, "bad number or duration \"%.*s\"", (int)(j - i > 40 ? 40 : j - i),
                        s + i);
                t.k = T_EOF;
            } else {
                memcpy(buf, s + i, j - i);
                buf[j - i] = 0;
                char *end;
                t.num = strtod(buf, &end);
                if (*end) {
                    fail_at(p, i, "bad number \"%s\"", buf);
                    t.k = T_EOF;
                } else {
                    t.k = T_NUM;
                }
            }
        }
    } else if (id_start(c)) {
        while (j < n && id_char((unsigned char)s[j])) j++;
        t.k = T_IDENT;
        if ((j - i == 3 && strncasecmp(s + i, "inf", 3) == 0) ||
            (j - i == 3 && strncasecmp(s + i, "nan", 3) == 0)) {
            t.k = T_NUM;
            t.num = tolower(c) == 'i' ? INFINITY : NAN;
        }
    } else if (c == '"' || c == '\'' || c == '`') {
        while (j < n && (unsigned char)s[j] != c) {
            if (c != '`' && s[j] == '\\') j++;
            if (c != '`' && j < n && s[j] == '\n') break;
            j++;
        }
        if (j >= n || (unsigned char)s[j] != c) {
            fail_at(p, i, "unterminated quoted string");
            t.k = T_EOF;
        } else {
            j++;
            t.k = T_STR;
        }
    } else {
        switch (c) {
        case '(': t.k = T_LPAREN; break;
        case ')': t.k = T_RPAREN; break;
        case '{': t.k = T_LBRACE; break;
        case '}': t.k = T_RBRACE; break;
        case '[': t.k = T_LBRACK; break;
        case ']': t.k = T_RBRACK; break;
        case ',': t.k = T_COMMA; break;
        case ':': t.k = T_COLON; break;
        case '@': t.k = T_AT; break;
        case '+': t.k = T_ADD; break;
        case '-': t.k = T_SUB; break;
        case '*': t.k = T_MUL; break;
        case '/': t.k = T_DIV; break;
        case '%': t.k = T_MOD; break;
        case '^': t.k = T_POW; break;
        case '=':
            if (c2 == '=')
                t.k = T_EQL, j++;
            else if (c2 == '~')
                t.k = T_RE, j++;
            else
                t.k = T_ASSIGN;
            break;
        case '!':
            if (c2 == '=')
                t.k = T_NEQ, j++;
            else if (c2 == '~')
                t.k = T_NRE, j++;
            else {
                fail_at(p, i, "unexpected character '!'");
                t.k = T_EOF;
            }
            break;
        case '<':
            if (c2 == '=') j++;
            t.k = c2 == '=' ? T_LTE : T_LT;
            break;
        case '>':
            if (c2 == '=') j++;
            t.k = c2 == '=' ? T_GTE : T_GT;
            break;
        default:
            if (c >= 0x20 && c < 0x7f)
                fail_at(p, i, "unexpected character '%c'", c);
            else
                fail_at(p, i, "unexpected byte 0x%02x", c);
            t.k = T_EOF;
            break;
        }
    }
    t.len = j - i;
    p->t = t;
    p->i = j;
}

static bool is_ident(parser *p, const char *word)
{
    size_t wl = strlen(word);
    return p->t.k == T_IDENT && p->t.len == wl && strncasecmp(p->s + p->t.pos, word, wl) == 0;
}

static char *tok_text(parser *p)
{
    char *z = malloc(p->t.len + 1);
    if (!z) {
        fail_at(p, p->t.pos, "out of memory");
        p->err->kind = PROMQL_ERR_INTERNAL;
        return NULL;
    }
    memcpy(z, p->s + p->t.pos, p->t.len);
    z[p->t.len] = 0;
    return z;
}

/* The unescaped contents of the current string token (malloc'd). */
static char *tok_string(parser *p)
{
    const char *s = p->s + p->t.pos;
    size_t n = p->t.len;
    char q = s[0];
    char *z = malloc(n);
    if (!z) {
        fail_at(p, p->t.pos, "out of memory");
        p->err->kind = PROMQL_ERR_INTERNAL;
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 1; i + 1 < n; i++) {
        char c = s[i];
        if (q == '`' || c != '\\') {
            if (c == 0) goto bad_nul;
            z[o++] = c;
            continue;
        }
        char e = s[++i];
        switch (e) {
        case 'a': z[o++] = '\a'; break;
        case 'b': z[o++] = '\b'; break;
        case 'f': z[o++] = '\f'; break;
        case 'n': z[o++] = '\n'; break;
        case 'r': z[o++] = '\r'; break;
        case 't': z[o++] = '\t'; break;
        case 'v': z[o++] = '\v'; break;
        case '\\': z[o++] = '\\'; break;
        case '"': z[o++] = '"'; break;
        case '\'': z[o++] = '\''; break;
        case 'x': {
            unsigned v = 0;
            for (int k = 0; k < 2; k++) {
                if (i + 2 >= n) goto bad; /* s[n - 1] is the closing quote */
                char h = s[i + 1];
                if (!isxdigit((unsigned char)h)) goto bad;
                v = v * 16 +
                    (unsigned)(isdigit((unsigned char)h) ? h - '0' : (tolower(h) - 'a' + 10));
                i++;
            }
            if (v == 0) goto bad_nul;
            z[o++] = (char)v;
            break;
        }
        default: goto bad;
        }
    }
    z[o] = 0;
    return z;
bad:
    free(z);
    fail_at(p, p->t.pos, "invalid escape sequence in string");
    return NULL;
bad_nul:
    free(z);
    fail_at(p, p->t.pos, "strings may not contain NUL bytes");
    return NULL;
}

/* ---- nodes ---- */

static promql_expr *node(parser *p, promql_kind k, size_t pos)
{
    promql_expr *e = calloc(1, sizeof *e);
    if (!e) {
        fail_at(p, pos, "out of memory");
        p->err->kind = PROMQL_ERR_INTERNAL;
        return NULL;
    }
    e->kind = k;
    e->pos = (int)pos;
    e->depth = 1;
    return e;
}

void promql_free(promql_expr *e)
{
    if (!e) return;
    promql_free(e->lhs);
    promql_free(e->rhs);
    for (int i = 0; i < e->nm; i++) {
        free(e->m[i].label);
        free(e->m[i].value);
    }
    free(e->m);
    for (int i = 0; i < e->ngrouping; i++) free(e->grouping[i]);
    free(e->grouping);
    free(e->str);
    free(e);
}

static const char *type_name(promql_type t)
{
    switch (t) {
    case PROMQL_SCALAR: return "scalar";
    case PROMQL_VECTOR: return "instant vector";
    case PROMQL_MATRIX: return "range vector";
    default: return "string";
    }
}

/* Sets e's depth from its children; false (and an error) past the bound. */
static bool set_depth(parser *p, promql_expr *e)
{
    int d = 0;
    if (e->lhs && e->lhs->depth > d) d = e->lhs->depth;
    if (e->rhs && e->rhs->depth > d) d = e->rhs->depth;
    e->depth = d + 1;
    if (e->depth > PROMQL_MAX_DEPTH) {
        fail_at(p, (size_t)e->pos, "the expression is nested deeper than %d levels",
                PROMQL_MAX_DEPTH);
        return false;
    }
    return true;
}

/* ---- the grammar ---- */

static promql_expr *parse_expr(parser *p);
static promql_expr *parse_unary(parser *p);

static bool enter(parser *p)
{
    if (++p->depth > PROMQL_MAX_DEPTH) {
        fail_at(p, p->t.pos, "the expression is nested deeper than %d levels", PROMQL_MAX_DEPTH);
        return false;
    }
    return true;
}

static const char *const unsupported_funcs[] = {"abs",
                                                "absent",
                                                "absent_over_time",
                                                "ceil",
                                                "changes",
                                                "clamp",
                                                "clamp_max",
                                                "clamp_min",
                                                "day_of_month",
                                                "day_of_week",
                                                "day_of_year",
                                                "days_in_month",
                                                "delta",
                                                "deriv",
                                                "exp",
                                                "floor",
                                                "histogram_quantile",
                                                "holt_winters",
                                                "hour",
                                                "idelta",
                                                "irate",
                                                "label_join",
                                                "label_replace",
                                                "ln",
                                                "log2",
                                                "log10",
                                                "minute",
                                                "month",
                                                "predict_linear",
                                                "quantile_over_time",
                                                "resets",
                                                "round",
                                                "scalar",
                                                "sgn",
                                                "sort",
                                                "sort_desc",
                                                "sqrt",
                                                "stddev_over_time",
                                                "stdvar_over_time",
                                                "time",
                                                "timestamp",
                                                "vector",
                                                "year",
                                                "present_over_time",
                                                "mad_over_time",
                                                "acos",
                                                "asin",
                                                "atan",
                                                "cos",
                                                "sin",
                                                "tan",
                                                "deg",
                                                "rad",
                                                "pi",
                                                "double_exponential_smoothing",
                                                "info",
                                                "sort_by_label",
                                                "sort_by_label_desc",
                                                "stddev",
                                                "stdvar",
                                                "topk",
                                                "bottomk",
                                                "quantile",
                                                "count_values",
                                                "group",
                                                "limitk",
                                                "limit_ratio",
                                                NULL};

static int func_of(const char *z)
{
    static const char *const names[] = {
        "rate",          "increase",      "avg_over_time",   "min_over_time",
        "max_over_time", "sum_over_time", "count_over_time", "last_over_time"};
    for (int i = 0; i < 8; i++)
        if (strcmp(z, names[i]) == 0) return i + 1;
    return 0;
}

static int agg_of(const char *z)
{
    static const char *const names[] = {"sum", "avg", "min", "max", "count"};
    for (int i = 0; i < 5; i++)
        if (strcmp(z, names[i]) == 0) return i + 1;
    return 0;
}

/* A label name: an identifier (keywords included) or a quoted string. */
static char *parse_label_name(parser *p)
{
    if (p->t.k == T_IDENT) {
        char *z = tok_text(p);
        if (z) next(p);
        return z;
    }
    if (p->t.k == T_STR) {
        char *z = tok_string(p);
        if (z && !*z) {
            fail_at(p, p->t.pos, "a label name may not be empty");
            free(z);
            return NULL;
        }
        if (z) next(p);
        return z;
    }
    unexpected(p, "label name");
    return NULL;
}

/* by (a, b) / without (a, b): the list into e. */
static bool parse_grouping(parser *p, promql_expr *e)
{
    if (e->grouping || e->without) {
        fail_at(p, p->t.pos, "an aggregation has only one by or without clause");
        return false;
    }
    e->without = is_ident(p, "without");
    next(p);
    if (p->t.k != T_LPAREN) {
        unexpected(p, "\"(\"");
        return false;
    }
    next(p);
    e->grouping = calloc(MAX_GROUPING, sizeof *e->grouping);
    if (!e->grouping) {
        fail_at(p, p->t.pos, "out of memory");
        return false;
    }
    while (p->t.k != T_RPAREN) {
        if (e->ngrouping == MAX_GROUPING) {
            fail_at(p, p->t.pos, "more than %d labels in by/without", MAX_GROUPING);
            return false;
        }
        char *z = parse_label_name(p);
        if (!z) return false;
        e->grouping[e->ngrouping++] = z;
        if (p->t.k == T_COMMA)
            next(p);
        else if (p->t.k != T_RPAREN) {
            unexpected(p, "\",\" or \")\"");
            return false;
        }
    }
    next(p);
    return true;
}

/* Whether m matches the empty string (a missing label); for regexes also
 * whether the regex compiles, since a bad one is a parse error. Regexes are
 * POSIX extended, anchored as the engine anchors them. glibc compiles a
 * bounded repetition into copies of its operand, so counts are capped. */
static int matches_empty(parser *p, const promql_matcher *m)
{
    switch (m->op) {
    case TSDB_EQ: return m->value[0] == 0;
    case TSDB_NE: return m->value[0] != 0;
    default: break;
    }
    size_t vl = strlen(m->value);
    if (vl > PROMQL_MAX_REGEX) {
        fail_at(p, (size_t)m->pos, "a regex is longer than %d bytes", PROMQL_MAX_REGEX);
        return -1;
    }
    int reps = 0;
    for (size_t i = 0; i < vl; i++) {
        if (m->value[i] == '\\') {
            i++;
            continue;
        }
        if (m->value[i] != '{' || i + 1 >= vl || !isdigit((unsigned char)m->value[i + 1])) continue;
        long v = 0, cur = 0; /* the largest count in {n,m} */
        for (size_t k = i + 1;
             k < vl && (isdigit((unsigned char)m->value[k]) || m->value[k] == ','); k++) {
            if (m->value[k] == ',') {
                cur = 0;
                continue;
            }
            if (cur <= 1000) cur = cur * 10 + (m->value[k] - '0');
            if (cur > v) v = cur;
        }
        /* also "{" with no digits ("a{,5}") is left to regcomp, which refuses it */
        /* glibc copies the whole operand per count: bound count x length */
        if (v > 1000 || ++reps > 1 || (size_t)v * vl > 20000) {
            fail_at(p, (size_t)m->pos,
                    "a regex may have one bounded repetition {n,m}, with count x regex length "
                    "up to 20000");
            return -1;
        }
    }
    char *pat = malloc(vl + 5);
    if (!pat) {
        fail_at(p, (size_t)m->pos, "out of memory");
        return -1;
    }
    snprintf(pat, vl + 5, "^(%s)$", m->value);
    regex_t re;
    int r = regcomp(&re, pat, REG_EXTENDED | REG_NOSUB);
    free(pat);
    if (r) {
        char msg[100];
        regerror(r, &re, msg, sizeof msg);
        fail_at(p, (size_t)m->pos, "invalid regular expression \"%.60s\": %s", m->value, msg);
        return -1;
    }
    bool empty = regexec(&re, "", 0, NULL, 0) == 0;
    regfree(&re);
    return m->op == TSDB_RE ? empty : !empty;
}

static bool add_matcher(parser *p, promql_expr *e, char *label, tsdb_match_op op, char *value,
                        size_t pos)
{
    if (e->nm == MAX_MATCHERS) {
        fail_at(p, pos, "more than %d matchers in one selector", MAX_MATCHERS);
        free(label);
        free(value);
        return false;
    }
    if (!e->m && !(e->m = calloc(MAX_MATCHERS, sizeof *e->m))) {
        fail_at(p, pos, "out of memory");
        free(label);
        free(value);
        return false;
    }
    e->m[e->nm++] = (promql_matcher){label, op, value, (int)pos};
    return true;
}

/* A vector selector; p->t is the metric name, '{' or (name already taken) '{'. */
static promql_expr *parse_selector(parser *p, char *name, size_t pos)
{
    promql_expr *e = node(p, PROMQL_SEL, pos);
    if (!e) {
        free(name);
        return NULL;
    }
    e->type = PROMQL_VECTOR;
    bool named = name != NULL;
    if (name) {
        char *l = strdup("__name__");
        if (!l) {
            free(name);
            fail_at(p, pos, "out of memory");
            goto err;
        }
        if (!add_matcher(p, e, l, TSDB_EQ, name, pos)) goto err;
    }
    if (p->t.k == T_LBRACE) {
        next(p);
        while (p->t.k != T_RBRACE) {
            size_t mpos = p->t.pos;
            /* Prometheus 3: a lone quoted string is the metric name. */
            if (p->t.k == T_STR) {
                size_t save_i = p->i;
                tok save_t = p->t;
                next(p);
                bool lone = p->t.k == T_COMMA || p->t.k == T_RBRACE;
                p->i = save_i;
                p->t = save_t;
                if (lone) {
                    if (named) {
                        fail_at(p, mpos, "metric name must not be set twice");
                        goto err;
                    }
                    char *v = tok_string(p);
                    char *l = v ? strdup("__name__") : NULL;
                    if (!v || !l) {
                        free(v);
                        fail_at(p, mpos, "out of memory");
                        goto err;
                    }
                    if (!add_matcher(p, e, l, TSDB_EQ, v, mpos)) goto err;
                    named = true;
                    next(p);
                    goto sep;
                }
            }
            char *label = parse_label_name(p);
            if (!label) goto err;
            tsdb_match_op op;
            switch (p->t.k) {
            case T_ASSIGN: op = TSDB_EQ; break;
            case T_NEQ: op = TSDB_NE; break;
            case T_RE: op = TSDB_RE; break;
            case T_NRE: op = TSDB_NRE; break;
            default:
                free(label);
                unexpected(p, "one of \"=\", \"!=\", \"=~\", \"!~\"");
                goto err;
            }
            next(p);
            if (p->t.k != T_STR) {
                free(label);
                unexpected(p, "a quoted label value");
                goto err;
            }
            char *value = tok_string(p);
            if (!value) {
                free(label);
                goto err;
            }
            if (strcmp(label, "__name__") == 0 && op == TSDB_EQ) {
                if (named) {
                    free(label);
                    free(value);
                    fail_at(p, mpos, "metric name must not be set twice");
                    goto err;
                }
                named = true;
            }
            if (!add_matcher(p, e, label, op, value, mpos)) goto err;
            next(p);
        sep:
            if (p->t.k == T_COMMA)
                next(p);
            else if (p->t.k != T_RBRACE) {
                unexpected(p, "\",\" or \"}\"");
                goto err;
            }
        }
        next(p);
    }
    bool nonempty = false;
    for (int i = 0; i < e->nm; i++) {
        int r = matches_empty(p, &e->m[i]);
        if (r < 0) goto err;
        if (!r) nonempty = true;
    }
    if (!nonempty) {
        fail_at(p, pos, "vector selector must contain at least one non-empty matcher");
        goto err;
    }
    return e;
err:
    promql_free(e);
    return NULL;
}

static promql_expr *parse_primary(parser *p)
{
    size_t pos = p->t.pos;
    switch (p->t.k) {
    case T_NUM: {
        promql_expr *e = node(p, PROMQL_NUM, pos);
        if (!e) return NULL;
        e->type = PROMQL_SCALAR;
        e->num = p->t.num;
        next(p);
        return e;
    }
    case T_STR: {
        promql_expr *e = node(p, PROMQL_STR, pos);
        if (!e) return NULL;
        e->type = PROMQL_STRING;
        if (!(e->str = tok_string(p))) {
            promql_free(e);
            return NULL;
        }
        next(p);
        return e;
    }
    case T_LPAREN: {
        if (!enter(p)) return NULL;
        next(p);
        promql_expr *e = parse_expr(p);
        if (!e) return NULL;
        if (p->t.k != T_RPAREN) {
            unexpected(p, "\")\"");
            promql_free(e);
            return NULL;
        }
        next(p);
        p->depth--;
        return e;
    }
    case T_LBRACE: return parse_selector(p, NULL, pos);
    case T_IDENT: break;
    default: unexpected(p, "an expression"); return NULL;
    }
    char *name = tok_text(p);
    if (!name) return NULL;
    next(p);
    int agg = agg_of(name);
    if (agg && (p->t.k == T_LPAREN || is_ident(p, "by") || is_ident(p, "without"))) {
        free(name);
        promql_expr *e = node(p, PROMQL_AGG, pos);
        if (!e) return NULL;
        e->agg = (promql_agg)agg;
        e->type = PROMQL_VECTOR;
        if (p->t.k == T_IDENT && !parse_grouping(p, e)) goto agg_err;
        if (p->t.k != T_LPAREN) {
            unexpected(p, "\"(\"");
            goto agg_err;
        }
        if (!enter(p)) goto agg_err;
        next(p);
        size_t apos = p->t.pos;
        if (!(e->lhs = parse_expr(p))) goto agg_err;
        if (p->t.k == T_COMMA) {
            fail_at(p, p->t.pos, "%s takes exactly one argument",
                    agg == 1   ? "sum"
                    : agg == 2 ? "avg"
                    : agg == 3 ? "min"
                    : agg == 4 ? "max"
                               : "count");
            goto agg_err;
        }
        if (p->t.k != T_RPAREN) {
            unexpected(p, "\")\"");
            goto agg_err;
        }
        next(p);
        p->depth--;
        if (e->lhs->type != PROMQL_VECTOR) {
            fail_at(p, apos, "expected type instant vector in aggregation expression, got %s",
                    type_name(e->lhs->type));
            goto agg_err;
        }
        if ((is_ident(p, "by") || is_ident(p, "without")) && !parse_grouping(p, e)) goto agg_err;
        if (!set_depth(p, e)) goto agg_err;
        return e;
    agg_err:
        promql_free(e);
        return NULL;
    }
    if (p->t.k == T_LPAREN) {
        int f = func_of(name);
        if (!f) {
            for (int i = 0; unsupported_funcs[i]; i++)
                if (strcmp(name, unsupported_funcs[i]) == 0) {
                    fail_at(p, pos, "function \"%s\" is not supported by thinghz", name);
                    free(name);
                    return NULL;
                }
            fail_at(p, pos, "unknown function with name \"%.60s\"", name);
            free(name);
            return NULL;
        }
        promql_expr *e = node(p, PROMQL_CALL, pos);
        if (!e) {
            free(name);
            return NULL;
        }
        e->func = (promql_func)f;
        e->type = PROMQL_VECTOR;
        if (!enter(p)) goto call_err;
        next(p);
        size_t apos = p->t.pos;
        if (p->t.k == T_RPAREN) {
            fail_at(p, apos, "expected 1 argument(s) in call to \"%s\", got 0", name);
            goto call_err;
        }
        if (!(e->lhs = parse_expr(p))) goto call_err;
        if (p->t.k == T_COMMA) {
            fail_at(p, p->t.pos, "expected 1 argument(s) in call to \"%s\", got more", name);
            goto call_err;
        }
        if (p->t.k != T_RPAREN) {
            unexpected(p, "\")\"");
            goto call_err;
        }
        next(p);
        p->depth--;
        if (e->lhs->type != PROMQL_MATRIX) {
            fail_at(p, apos, "expected type range vector in call to function \"%s\", got %s", name,
                    type_name(e->lhs->type));
            goto call_err;
        }
        free(name);
        if (!set_depth(p, e)) {
            promql_free(e);
            return NULL;
        }
        return e;
    call_err:
        free(name);
        promql_free(e);
        return NULL;
    }
    return parse_selector(p, name, pos);
}

/* primary, then [range] and offset on selectors. */
static promql_expr *parse_postfix(parser *p)
{
    promql_expr *e = parse_primary(p);
    if (!e) return NULL;
    for (;;) {
        if (p->t.k == T_LBRACK) {
            if (e->kind != PROMQL_SEL || e->type != PROMQL_VECTOR || e->offset_ns) {
                fail_at(p, p->t.pos,
                        "ranges only allowed for vector selectors (subqueries are not supported)");
                goto err;
            }
            next(p);
            if (p->t.k != T_DUR) {
                unexpected(p, "a duration");
                goto err;
            }
            if (p->t.ns <= 0) {
                fail_at(p, p->t.pos, "the range must be positive");
                goto err;
            }
            e->range_ns = p->t.ns;
            next(p);
            if (p->t.k == T_COLON || (p->t.k == T_IDENT && p->s[p->t.pos] == ':')) {
                fail_at(p, p->t.pos, "subqueries are not supported by thinghz");
                goto err;
            }
            if (p->t.k != T_RBRACK) {
                unexpected(p, "\"]\"");
                goto err;
            }
            next(p);
            e->type = PROMQL_MATRIX;
        } else if (is_ident(p, "offset")) {
            if (e->kind != PROMQL_SEL || e->offset_ns) {
                fail_at(p, p->t.pos,
                        "offset modifier must be preceded by an instant vector selector or range "
                        "vector selector");
                goto err;
            }
            next(p);
            bool neg = false;
            if (p->t.k == T_SUB || p->t.k == T_ADD) {
                neg = p->t.k == T_SUB;
                next(p);
            }
            if (p->t.k != T_DUR) {
                unexpected(p, "a duration");
                goto err;
            }
            e->offset_ns = neg ? -p->t.ns : p->t.ns;
            if (e->offset_ns == 0) e->offset_ns = 0;
            next(p);
        } else if (p->t.k == T_AT) {
            fail_at(p, p->t.pos, "the @ modifier is not supported by thinghz");
            goto err;
        } else {
            return e;
        }
    }
err:
    promql_free(e);
    return NULL;
}

static promql_expr *binary(parser *p, promql_op op, size_t pos, promql_expr *l, promql_expr *r)
{
    promql_expr *e = node(p, PROMQL_BIN, pos);
    if (!e) {
        promql_free(l);
        promql_free(r);
        return NULL;
    }
    e->op = op;
    e->lhs = l;
    e->rhs = r;
    e->pos = l->pos;
    if ((l->type != PROMQL_SCALAR && l->type != PROMQL_VECTOR) ||
        (r->type != PROMQL_SCALAR && r->type != PROMQL_VECTOR)) {
        fail_at(p, pos, "binary expression must contain only scalar and instant vector types");
        promql_free(e);
        return NULL;
    }
    e->type = l->type == PROMQL_VECTOR || r->type == PROMQL_VECTOR ? PROMQL_VECTOR : PROMQL_SCALAR;
    if (!set_depth(p, e)) {
        promql_free(e);
        return NULL;
    }
    return e;
}

/* After an operator: modifiers we do not support get a clear error. */
static bool no_modifiers(parser *p)
{
    static const char *const mods[] = {"bool", "on", "ignoring", "group_left", "group_right"};
    for (int i = 0; i < 5; i++)
        if (is_ident(p, mods[i])) {
            fail_at(p, p->t.pos,
                    "the %s modifier is not supported by thinghz (vector matching is one-to-one "
                    "on identical label sets)",
                    mods[i]);
            return false;
        }
    return true;
}

static promql_expr *parse_pow(parser *p)
{
    promql_expr *l = parse_postfix(p);
    if (!l) return NULL;
    if (p->t.k != T_POW) return l;
    size_t pos = p->t.pos;
    next(p);
    if (!no_modifiers(p) || !enter(p)) {
        promql_free(l);
        return NULL;
    }
    promql_expr *r = parse_unary(p); /* right-associative: 2^3^2 = 2^9 */
    p->depth--;
    if (!r) {
        promql_free(l);
        return NULL;
    }
    return binary(p, PROMQL_POW, pos, l, r);
}

static promql_expr *parse_unary(parser *p)
{
    if (p->t.k != T_SUB && p->t.k != T_ADD) return parse_pow(p);
    size_t pos = p->t.pos;
    bool neg = p->t.k == T_SUB;
    if (!enter(p)) return NULL;
    next(p);
    promql_expr *a = parse_unary(p);
    p->depth--;
    if (!a) return NULL;
    if (a->type != PROMQL_SCALAR && a->type != PROMQL_VECTOR) {
        fail_at(p, pos,
                "unary expression only allowed on expressions of type scalar or instant "
                "vector, got %s",
                type_name(a->type));
        promql_free(a);
        return NULL;
    }
    if (!neg) return a;
    promql_expr *e = node(p, PROMQL_NEG, pos);
    if (!e) {
        promql_free(a);
        return NULL;
    }
    e->lhs = a;
    e->type = a->type;
    if (!set_depth(p, e)) {
        promql_free(e);
        return NULL;
    }
    return e;
}

static promql_expr *parse_mul(parser *p)
{
    promql_expr *l = parse_unary(p);
    while (l && (p->t.k == T_MUL || p->t.k == T_DIV || p->t.k == T_MOD)) {
        promql_op op = p->t.k == T_MUL ? PROMQL_MUL : p->t.k == T_DIV ? PROMQL_DIV : PROMQL_MOD;
        size_t pos = p->t.pos;
        next(p);
        if (!no_modifiers(p)) {
            promql_free(l);
            return NULL;
        }
        promql_expr *r = parse_unary(p);
        if (!r) {
            promql_free(l);
            return NULL;
        }
        l = binary(p, op, pos, l, r);
    }
    return l;
}

static promql_expr *parse_expr(parser *p)
{
    promql_expr *l = parse_mul(p);
    while (l && (p->t.k == T_ADD || p->t.k == T_SUB)) {
        promql_op op = p->t.k == T_ADD ? PROMQL_ADD : PROMQL_SUB;
        size_t pos = p->t.pos;
        next(p);
        if (!no_modifiers(p)) {
            promql_free(l);
            return NULL;
        }
        promql_expr *r = parse_mul(p);
        if (!r) {
            promql_free(l);
            return NULL;
        }
        l = binary(p, op, pos, l, r);
    }
    if (!l) return NULL;
    switch (p->t.k) {
    case T_EQL:
    case T_NEQ:
    case T_LT:
    case T_GT:
    case T_LTE:
    case T_GTE:
        fail_at(p, p->t.pos, "comparison operators are not supported by thinghz");
        promql_free(l);
        return NULL;
    default: break;
    }
    if (is_ident(p, "and") || is_ident(p, "or") || is_ident(p, "unless") || is_ident(p, "atan2")) {
        fail_at(p, p->t.pos, "the operator \"%.*s\" is not supported by thinghz", (int)p->t.len,
                p->s + p->t.pos);
        promql_free(l);
        return NULL;
    }
    return l;
}

thz_err promql_parse(const char *q, size_t len, promql_expr **out, promql_error *err)
{
    *out = NULL;
    memset(err, 0, sizeof *err);
    err->pos = -1;
    parser p = {.s = q, .n = len, .err = err};
    if (len > PROMQL_MAX_QUERY) {
        err->kind = PROMQL_ERR_PARSE;
        snprintf(err->msg, sizeof err->msg, "the query is longer than %d bytes", PROMQL_MAX_QUERY);
        return THZ_EINVAL;
    }
    next(&p);
    if (p.t.k == T_EOF && !p.failed) {
        fail_at(&p, 0, "no expression found in input");
        return THZ_EINVAL;
    }
    promql_expr *e = p.failed ? NULL : parse_expr(&p);
    if (e && !p.failed && p.t.k != T_EOF) {
        if (p.t.k == T_DUR)
            unexpected(&p, NULL);
        else
            unexpected(&p, "an operator or end of input");
    }
    if (p.failed || !e) {
        promql_free(e);
        if (!p.failed) fail_at(&p, p.t.pos, "cannot parse the query");
        return err->kind == PROMQL_ERR_INTERNAL ? THZ_ENOMEM : THZ_EINVAL;
    }
    *out = e;
    return THZ_OK;
}

bool promql_duration(const char *s, size_t n, int64_t *ns)
{
    size_t end;
    if (n && lex_duration(s, n, 0, &end, ns) && end == n) return true;
    char buf[64];
    if (n == 0 || n >= sizeof buf) return false;
    memcpy(buf, s, n);
    buf[n] = 0;
    char *e;
    double v = strtod(buf, &e);
    if (*e || !(v >= 0) || v > (double)MAX_DURATION_NS / 1e9) return false;
    *ns = (int64_t)llround(v * 1e9);
    return true;
}

/* ---- printing ---- */

static thz_err put(thz_buf *b, const char *s)
{
    return thz_buf_append(b, s, strlen(s));
}

static thz_err put_quoted(thz_buf *b, const char *s)
{
    thz_err rc = put(b, "\"");
    for (; !rc && *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, esc[2] = 0;
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", c);
        } else {
            esc[0] = (char)c, esc[1] = 0;
        }
        rc = put(b, esc);
    }
    return rc ? rc : put(b, "\"");
}

static thz_err put_dur(thz_buf *b, int64_t ns)
{
    char s[48];
    if (ns < 0) {
        if (put(b, "-")) return THZ_ENOMEM;
        ns = -ns;
    }
    if (ns == 0) return put(b, "0s");
    size_t o = 0;
    static const struct {
        int64_t u;
        const char *n;
    } units[] = {{365 * 86400LL * 1000000000LL, "y"},
                 {7 * 86400LL * 1000000000LL, "w"},
                 {86400LL * 1000000000LL, "d"},
                 {3600LL * 1000000000LL, "h"},
                 {60LL * 1000000000LL, "m"},
                 {1000000000LL, "s"},
                 {1000000LL, "ms"}};
    for (int i = 0; i < 7; i++)
        if (ns >= units[i].u) {
            o += (size_t)snprintf(s + o, sizeof s - o, "%lld%s", (long long)(ns / units[i].u),
                                  units[i].n);
            ns %= units[i].u;
        }
    /* below a millisecond: not representable in PromQL, rounded away */
    if (o == 0) return put(b, "0s");
    return put(b, s);
}

static const char *agg_names[] = {"", "sum", "avg", "min", "max", "count"};
static const char *func_names[] = {"",
                                   "rate",
                                   "increase",
                                   "avg_over_time",
                                   "min_over_time",
                                   "max_over_time",
                                   "sum_over_time",
                                   "count_over_time",
                                   "last_over_time"};

thz_err promql_format(const promql_expr *e, thz_buf *b)
{
    char s[64];
    thz_err rc = THZ_OK;
    switch (e->kind) {
    case PROMQL_NUM:
        if (isnan(e->num)) return put(b, "NaN");
        if (isinf(e->num)) return put(b, e->num > 0 ? "Inf" : "-Inf");
        snprintf(s, sizeof s, "%.17g", e->num);
        return put(b, s);
    case PROMQL_STR: return put_quoted(b, e->str);
    case PROMQL_SEL:
        rc = put(b, "{");
        for (int i = 0; !rc && i < e->nm; i++) {
            static const char *ops[] = {"=", "!=", "=~", "!~"};
            if (i) rc = put(b, ", ");
            if (!rc) rc = put_quoted(b, e->m[i].label);
            if (!rc) rc = put(b, ops[e->m[i].op]);
            if (!rc) rc = put_quoted(b, e->m[i].value);
        }
        if (!rc) rc = put(b, "}");
        if (!rc && e->range_ns) {
            rc = put(b, "[");
            if (!rc) rc = put_dur(b, e->range_ns);
            if (!rc) rc = put(b, "]");
        }
        if (!rc && e->offset_ns) {
            rc = put(b, " offset ");
            if (!rc) rc = put_dur(b, e->offset_ns);
        }
        return rc;
    case PROMQL_CALL:
        rc = put(b, func_names[e->func]);
        if (!rc) rc = put(b, "(");
        if (!rc) rc = promql_format(e->lhs, b);
        return rc ? rc : put(b, ")");
    case PROMQL_AGG:
        rc = put(b, agg_names[e->agg]);
        if (!rc && (e->ngrouping || e->without || e->grouping)) {
            rc = put(b, e->without ? " without (" : " by (");
            for (int i = 0; !rc && i < e->ngrouping; i++) {
                if (i) rc = put(b, ", ");
                if (!rc) rc = put_quoted(b, e->grouping[i]);
            }
            if (!rc) rc = put(b, ") ");
        }
        if (!rc) rc = put(b, "(");
        if (!rc) rc = promql_format(e->lhs, b);
        return rc ? rc : put(b, ")");
    case PROMQL_BIN: {
        static const char *ops[] = {"", " + ", " - ", " * ", " / ", " % ", " ^ "};
        rc = put(b, "(");
        if (!rc) rc = promql_format(e->lhs, b);
        if (!rc) rc = put(b, ops[e->op]);
        if (!rc) rc = promql_format(e->rhs, b);
        return rc ? rc : put(b, ")");
    }
    case PROMQL_NEG:
        rc = put(b, "-(");
        if (!rc) rc = promql_format(e->lhs, b);
        return rc ? rc : put(b, ")");
    }
    return THZ_EINVAL;
}
