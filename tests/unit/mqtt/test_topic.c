/* test_topic.c - unit tests for the MQTT topic rules (names, filters, $share
 * parsing and matching, spec section 4.7) and for the subscription trie. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mqtt/mqtt_int.h"

#define NAME_OK(lit)    assert_true(topic_name_valid((lit), strlen(lit)))
#define NAME_BAD(lit)   assert_false(topic_name_valid((lit), strlen(lit)))
#define FILTER_OK(lit)  assert_true(topic_filter_valid((lit), strlen(lit)))
#define FILTER_BAD(lit) assert_false(topic_filter_valid((lit), strlen(lit)))
#define MATCH(f, t)     assert_true(topic_matches((f), strlen(f), (t), strlen(t)))
#define NO_MATCH(f, t)  assert_false(topic_matches((f), strlen(f), (t), strlen(t)))

/* ---- fixtures ----------------------------------------------------------- */

/* A fake session as trie_match sees it: only refs and conn are read. */
static session *sess_new(void)
{
    session *s = calloc(1, sizeof(session) + 16);
    assert_non_null(s);
    atomic_init(&s->refs, 1);
    return s;
}

static unsigned refs(session *s)
{
    return atomic_load(&s->refs);
}

static tnode *root_new(void)
{
    tnode *r = calloc(1, sizeof(tnode));
    assert_non_null(r);
    return r;
}

static bool root_empty(const tnode *r)
{
    return r->nkids == 0 && r->plus == NULL && r->hash == NULL && r->nsubs == 0 && r->ngroups == 0;
}

static void add(tnode *r, const char *f, session *s)
{
    bool existed = true;
    assert_int_equal(trie_add(r, f, strlen(f), NULL, 0, s, 0, 0, &existed), THZ_OK);
    assert_false(existed);
}

static void add_shared(tnode *r, const char *g, const char *f, session *s)
{
    bool existed = true;
    assert_int_equal(trie_add(r, f, strlen(f), g, strlen(g), s, 0, 0, &existed), THZ_OK);
    assert_false(existed);
}

static void del(tnode *r, const char *f, session *s)
{
    assert_true(trie_remove(r, f, strlen(f), NULL, 0, s));
}

static void del_shared(tnode *r, const char *g, const char *f, session *s)
{
    assert_true(trie_remove(r, f, strlen(f), g, strlen(g), s));
}

/* Runs trie_match on topic with an emptied match list, then gives back the
 * session references it took (checking one was taken per match). The
 * matches stay readable in w->mt[0..w->nmt). */
static uint32_t run_match(tnode *r, worker *w, const char *topic)
{
    w->nmt = 0;
    trie_match(r, topic, strlen(topic), w);
    for (uint32_t i = 0; i < w->nmt; i++) {
        assert_true(refs(w->mt[i].s) >= 2);
        atomic_fetch_sub(&w->mt[i].s->refs, 1);
    }
    return w->nmt;
}

/* How many times s is among the last match's results. */
static uint32_t hits(const worker *w, const session *s)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < w->nmt; i++) n += w->mt[i].s == s;
    return n;
}

static worker *worker_new(void)
{
    worker *w = calloc(1, sizeof(worker));
    assert_non_null(w);
    return w;
}

static void worker_free(worker *w)
{
    free(w->mt);
    free(w->ms);
    free(w);
}

/* ---- names and filters -------------------------------------------------- */

static void name_valid(void **state)
{
    NAME_OK("a");
    NAME_OK("/");
    NAME_OK("a/b");
    NAME_OK("a//b");
    NAME_OK("a/");
    NAME_OK(" ");
    NAME_OK("$SYS/broker/uptime");
    NAME_OK("sport/tennis/player1");
    NAME_BAD("");
    NAME_BAD("+");
    NAME_BAD("#");
    NAME_BAD("a/+");
    NAME_BAD("a/#");
    NAME_BAD("a+b");
    NAME_BAD("sport#");
}

static void name_length(void **state)
{
    char *t = malloc(65536);
    assert_non_null(t);
    memset(t, 'x', 65536);
    assert_true(topic_name_valid(t, 65535));
    assert_false(topic_name_valid(t, 65536));
    assert_true(topic_name_valid(t, 1));
    assert_false(topic_name_valid(t, 0));
    free(t);
}

static void filter_valid(void **state)
{
    FILTER_OK("a");
    FILTER_OK("a/b");
    FILTER_OK("a/+/b");
    FILTER_OK("#");
    FILTER_OK("+");
    FILTER_OK("/+");
    FILTER_OK("+/");
    FILTER_OK("a/#");
    FILTER_OK("+/+");
    FILTER_OK("+/#");
    FILTER_OK("/#");
    FILTER_OK("/");
    FILTER_OK("a//b");
    FILTER_OK("sport/tennis/player1/#");
    FILTER_OK("sport/+/player1");
    FILTER_OK("$SYS/#");
    FILTER_BAD("");
    FILTER_BAD("a+");
    FILTER_BAD("+a");
    FILTER_BAD("a/b+");
    FILTER_BAD("a/+b/c");
    FILTER_BAD("++");
    FILTER_BAD("a#");
    FILTER_BAD("#a");
    FILTER_BAD("a/#/b");
    FILTER_BAD("#/");
    FILTER_BAD("##");
    FILTER_BAD("a/b#");
    FILTER_BAD("sport/tennis#");
    FILTER_BAD("sport/tennis/#/ranking");
}

static void filter_length(void **state)
{
    char *f = malloc(65536);
    assert_non_null(f);
    memset(f, 'x', 65536);
    f[65533] = '/';
    f[65534] = '#';
    assert_true(topic_filter_valid(f, 65535));
    f[65535] = 'y';
    assert_false(topic_filter_valid(f, 65536));
    free(f);
}

/* ---- $share ------------------------------------------------------------- */

static void share_ok(const char *in, const char *group, const char *filter)
{
    const char *g = NULL, *f = NULL;
    size_t gl = 0, fl = 0;
    bool bad = true;
    assert_true(topic_share_parse(in, strlen(in), &g, &gl, &f, &fl, &bad));
    assert_false(bad);
    assert_int_equal(gl, strlen(group));
    assert_memory_equal(g, group, gl);
    assert_int_equal(fl, strlen(filter));
    assert_memory_equal(f, filter, fl);
}

static void share_bad(const char *in)
{
    const char *g = NULL, *f = NULL;
    size_t gl = 0, fl = 0;
    bool bad = false;
    assert_true(topic_share_parse(in, strlen(in), &g, &gl, &f, &fl, &bad));
    assert_true(bad);
}

static void share_not(const char *in)
{
    const char *g = NULL, *f = NULL;
    size_t gl = 0, fl = 0;
    bool bad = true;
    assert_false(topic_share_parse(in, strlen(in), &g, &gl, &f, &fl, &bad));
    assert_false(bad);
}

static void share_parse(void **state)
{
    share_ok("$share/g/a", "g", "a");
    share_ok("$share/group/a/b/c", "group", "a/b/c");
    share_ok("$share/g/#", "g", "#");
    share_ok("$share/g/+", "g", "+");
    share_ok("$share/g/+/x/#", "g", "+/x/#");
    share_ok("$share/g//", "g", "/");
    share_ok("$share/g/$SYS/#", "g", "$SYS/#");
    share_ok("$share/$share/x", "$share", "x");
    share_bad("$share/");
    share_bad("$share//x");
    share_bad("$share/g");
    share_bad("$share/g/");
    share_bad("$share/g+/x");
    share_bad("$share/+/x");
    share_bad("$share/g#/x");
    share_bad("$share/#/x");
    share_bad("$share/g/a#");
    share_bad("$share/g/a/#/b");
    share_bad("$share/g/a+");
    share_not("a/b");
    share_not("#");
    share_not("$share");
    share_not("$shar/g/x");
    share_not("$sharex/g/x");
    share_not("$SHARE/g/x");
    share_not("$SYS/#");
    share_not("x/$share/g/x");
}

/* ---- topic_matches ------------------------------------------------------ */

static void matches_spec(void **state)
{
    /* 4.7.1.2 multi-level wildcard */
    MATCH("sport/tennis/player1/#", "sport/tennis/player1");
    MATCH("sport/tennis/player1/#", "sport/tennis/player1/ranking");
    MATCH("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon");
    MATCH("sport/#", "sport");
    MATCH("#", "sport");
    MATCH("#", "sport/tennis/player1");
    NO_MATCH("sport/tennis/player1/#", "sport/tennis/player2");
    NO_MATCH("sport/tennis/player1/#", "sport/tennis");
    /* 4.7.1.3 single-level wildcard */
    MATCH("sport/tennis/+", "sport/tennis/player1");
    MATCH("sport/tennis/+", "sport/tennis/player2");
    NO_MATCH("sport/tennis/+", "sport/tennis/player1/ranking");
    MATCH("sport/+", "sport/");
    NO_MATCH("sport/+", "sport");
    MATCH("+/+", "/finance");
    MATCH("/+", "/finance");
    NO_MATCH("+", "/finance");
    MATCH("+/tennis/#", "sport/tennis/player1");
    MATCH("+/tennis/#", "sport/tennis");
    /* 4.7.2 topics beginning with $ */
    NO_MATCH("#", "$SYS/monitor/Clients");
    NO_MATCH("+/monitor/Clients", "$SYS/monitor/Clients");
    NO_MATCH("+", "$SYS");
    NO_MATCH("+/#", "$SYS/x");
    MATCH("$SYS/#", "$SYS/monitor/Clients");
    MATCH("$SYS/#", "$SYS");
    MATCH("$SYS/monitor/+", "$SYS/monitor/Clients");
    MATCH("$SYS/+/Clients", "$SYS/monitor/Clients");
    /* '$' is only special at the start of the topic */
    MATCH("+/$SYS", "a/$SYS");
    MATCH("a/#", "a/$x");
    MATCH("+", "a$");
    /* 4.7.3 topic names and filters are case sensitive and exact */
    NO_MATCH("ACCOUNTS", "Accounts");
    NO_MATCH("a", "a ");
    NO_MATCH("a", "ab");
    NO_MATCH("ab", "a");
    NO_MATCH("a/b", "a");
    NO_MATCH("a", "a/b");
    MATCH("a/b", "a/b");
}

static void matches_empty_levels(void **state)
{
    MATCH("a//b", "a//b");
    NO_MATCH("a//b", "a/b");
    NO_MATCH("a/b", "a//b");
    MATCH("a/+/b", "a//b");
    MATCH("+/+/+", "//");
    NO_MATCH("+/+", "//");
    MATCH("/", "/");
    NO_MATCH("/", "a");
    MATCH("+/+", "/");
    MATCH("#", "/");
    MATCH("/#", "/");
    MATCH("/#", "/a");
    NO_MATCH("/#", "a");
    /* a trailing slash is one more, empty, level */
    MATCH("a/", "a/");
    NO_MATCH("a/", "a");
    NO_MATCH("a", "a/");
    MATCH("a/+", "a/");
    MATCH("a/#", "a/");
    MATCH("a/#", "a");
    MATCH("a/+/#", "a/");
    NO_MATCH("a/+/#", "a");
    MATCH("+/#", "a");
    NO_MATCH("+/+/#", "a");
}

/* ---- trie --------------------------------------------------------------- */

static void trie_literal(void **state)
{
    tnode *r = root_new();
    worker *w = worker_new();
    session *s = sess_new();
    add(r, "a/b", s);
    assert_int_equal(run_match(r, w, "a/b"), 1);
    assert_ptr_equal(w->mt[0].s, s);
    assert_int_equal(run_match(r, w, "a/c"), 0);
    assert_int_equal(run_match(r, w, "a"), 0);
    assert_int_equal(run_match(r, w, "a/b/c"), 0);
    assert_int_equal(run_match(r, w, "a/b/"), 0);
    assert_int_equal(refs(s), 1);
    del(r, "a/b", s);
    assert_true(root_empty(r));
    trie_free(r);
    worker_free(w);
    free(s);
}

/* trie_match takes one reference per match and keeps options and ids. */
static void trie_refs_and_options(void **state)
{
    tnode *r = root_new();
    worker *w = worker_new();
    session *s = sess_new();
    bool ex;
    assert_int_equal(trie_add(r, "x/+", 3, NULL, 0, s, 0x21, 7, &ex), THZ_OK);
    assert_int_equal(trie_add(r, "x/#", 3, NULL, 0, s, 0x02, 9, &ex), THZ_OK);
    w->nmt = 0;
    trie_match(r, "x/y", 3, w);
    assert_int_equal(w->nmt, 2);
    assert_int_equal(refs(s), 3);
    bool seen_plus = false, seen_hash = false;
    for (uint32_t i = 0; i < w->nmt; i++) {
        assert_ptr_equal(w->mt[i].s, s);
        if (w->mt[i].id == 7) seen_plus = w->mt[i].opts == 0x21;
        if (w->mt[i].id == 9) seen_hash = w->mt[i].opts == 0x02;
    }
    assert_true(seen_plus && seen_hash);
    /* trie_match appends: a second call keeps the first results */
    trie_match(r, "x/z", 3, w);
    assert_int_equal(w->nmt, 4);
    assert_int_equal(refs(s), 5);
    atomic_store(&s->refs, 1);
    trie_free(r);
    worker_free(w);
    free(s);
}

static void trie_wildcards(void **state)
{
    static const char *const filters[] = {
        "sport/tennis/player1/#",
        "sport/tennis/+",
        "sport/#",
        "+/+",
        "/+",
        "+",
        "#",
        "+/tennis/#",
        "a//b",
        "a/+/b",
        "a/",
        "a/+",
        "a/#",
        "/",
    };
    enum { NF = sizeof filters / sizeof *filters };
    tnode *r = root_new();
    worker *w = worker_new();
    session *s[NF];
    for (int i = 0; i < NF; i++) {
        s[i] = sess_new();
        add(r, filters[i], s[i]);
    }
    struct {
        const char *topic;
        const char *want[NF + 1];
    } cases[] = {
        {"sport/tennis/player1",
         {"sport/tennis/player1/#", "sport/tennis/+", "sport/#", "#", "+/tennis/#"}},
        {"sport/tennis/player1/ranking", {"sport/tennis/player1/#", "sport/#", "#", "+/tennis/#"}},
        {"sport", {"sport/#", "+", "#"}},
        {"sport/", {"sport/#", "+/+", "#"}},
        {"/finance", {"+/+", "/+", "#"}},
        {"/", {"+/+", "/+", "#", "/"}},
        {"a", {"+", "#", "a/#"}},
        {"a/", {"+/+", "#", "a/", "a/+", "a/#"}},
        {"a//b", {"#", "a//b", "a/+/b", "a/#"}},
        {"a/x/b", {"#", "a/+/b", "a/#"}},
        {"a/b", {"+/+", "#", "a/+", "a/#"}},
        {"x/tennis", {"+/+", "#", "+/tennis/#"}},
        {"$SYS/monitor/Clients", {NULL}},
        {"$SYS", {NULL}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        uint32_t want = 0;
        while (cases[c].want[want]) want++;
        uint32_t got = run_match(r, w, cases[c].topic);
        for (int i = 0; i < NF; i++) {
            bool in = false;
            for (uint32_t k = 0; k < want; k++) in |= strcmp(cases[c].want[k], filters[i]) == 0;
            if (hits(w, s[i]) != (in ? 1u : 0u))
                fail_msg("topic \"%s\", filter \"%s\": %u hits, want %d", cases[c].topic,
                         filters[i], hits(w, s[i]), in);
            /* the brute-force rule agrees with the table */
            assert_int_equal(topic_matches(filters[i], strlen(filters[i]), cases[c].topic,
                                           strlen(cases[c].topic)),
                             in);
        }
        assert_int_equal(got, want);
    }
    for (int i = 0; i < NF; i++) {
        assert_int_equal(refs(s[i]), 1);
        del(r, filters[i], s[i]);
        free(s[i]);
    }
    assert_true(root_empty(r));
    trie_free(r);
    worker_free(w);
}

static void trie_dollar(void **state)
{
    tnode *r = root_new();
    worker *w = worker_new();
    session *all = sess_new(), *plus = sess_new(), *sys = sess_new(), *mon = sess_new();
    session *clients = sess_new();
    add(r, "#", all);
    add(r, "+/monitor/Clients", plus);
    add(r, "$SYS/#", sys);
    add(r, "$SYS/monitor/+", mon);
    add(r, "+/monitor/Clients", clients);
    assert_int_equal(run_match(r, w, "$SYS/monitor/Clients"), 2);
    assert_int_equal(hits(w, sys), 1);
    assert_int_equal(hits(w, mon), 1);
    assert_int_equal(run_match(r, w, "$SYS"), 1);
    assert_int_equal(hits(w, sys), 1);
    assert_int_equal(run_match(r, w, "x/monitor/Clients"), 3);
    assert_int_equal(hits(w, all), 1);
    assert_int_equal(hits(w, plus), 1);
    assert_int_equal(hits(w, clients), 1);
    /* shared subscriptions follow the same rule */
    session *g = sess_new();
    add_shared(r, "grp", "#", g);
    assert_int_equal(run_match(r, w, "$SYS/x"), 1);
    assert_int_equal(hits(w, sys), 1);
    assert_int_equal(run_match(r, w, "y"), 2);
    assert_int_equal(hits(w, g), 1);
    del_shared(r, "grp", "#", g);
    del(r, "#", all);
    del(r, "+/monitor/Clients", plus);
    del(r, "$SYS/#", sys);
    del(r, "$SYS/monitor/+", mon);
    del(r, "+/monitor/Clients", clients);
    assert_true(root_empty(r));
    trie_free(r);
    worker_free(w);
    free(all), free(plus), free(sys), free(mon), free(clients), free(g);
}

/* Tenant namespaces (topic.h): a tenant's names carry "$t/N/"; nothing of
 * the default tenant reaches them, and the '$' rule holds below the prefix. */
static void tenant_prefixes(void **state)
{
    char p[TOPIC_TENANT_PREFIX_MAX];
    assert_int_equal(topic_tenant_prefix(1, p), 0);
    assert_string_equal(p, "");
    assert_int_equal(topic_tenant_prefix(42, p), 6);
    assert_string_equal(p, "$t/42/");
    assert_int_equal(topic_tenant_base("$t/42/a/b", 9), 6);
    assert_int_equal(topic_tenant_base("$t/42", 5), 0);
    assert_int_equal(topic_tenant_base("$SYS/x", 6), 0);
    assert_int_equal(topic_tenant_base("a/$t/2/", 7), 0);
    assert_true(topic_reserved("$t/", 3));
    assert_true(topic_reserved("$t/2/#", 6));
    assert_false(topic_reserved("$t", 2));
    assert_false(topic_reserved("$tx/1", 5));
    /* topic_matches */
    assert_true(topic_matches("$t/2/a/#", 8, "$t/2/a/b", 8));
    assert_true(topic_matches("$t/2/#", 6, "$t/2/x", 6));
    assert_false(topic_matches("$t/2/#", 6, "$t/3/x", 6));
    assert_false(topic_matches("#", 1, "$t/2/x", 6));
    assert_false(topic_matches("+/+/x", 5, "$t/2/x", 6));
    assert_false(topic_matches("$t/2/#", 6, "$t/2/$aws/events/x", 18));
    assert_false(topic_matches("$t/2/+/events/x", 15, "$t/2/$aws/events/x", 18));
    assert_true(topic_matches("$t/2/$aws/#", 11, "$t/2/$aws/events/x", 18));
}

static void trie_tenants(void **state)
{
    tnode *r = root_new();
    worker *w = worker_new();
    session *all = sess_new(), *t2all = sess_new(), *t3all = sess_new(), *t2aws = sess_new();
    session *t2plus = sess_new(), *g = sess_new();
    add(r, "#", all);
    add(r, "$t/2/#", t2all);
    add(r, "$t/3/#", t3all);
    add(r, "$t/2/$aws/#", t2aws);
    add(r, "$t/2/+/events/x", t2plus);
    add_shared(r, "grp", "$t/2/#", g);
    assert_int_equal(run_match(r, w, "a/b"), 1);
    assert_int_equal(hits(w, all), 1);
    assert_int_equal(run_match(r, w, "$t/2/a/b"), 2);
    assert_int_equal(hits(w, t2all), 1);
    assert_int_equal(hits(w, g), 1);
    assert_int_equal(run_match(r, w, "$t/3/a"), 1);
    assert_int_equal(hits(w, t3all), 1);
    /* '$' at the tenant's first level: only filters naming it match */
    assert_int_equal(run_match(r, w, "$t/2/$aws/events/x"), 1);
    assert_int_equal(hits(w, t2aws), 1);
    assert_int_equal(run_match(r, w, "$t/2/a/events/x"), 3);
    assert_int_equal(hits(w, t2plus), 1);
    del_shared(r, "grp", "$t/2/#", g);
    del(r, "#", all);
    del(r, "$t/2/#", t2all);
    del(r, "$t/3/#", t3all);
    del(r, "$t/2/$aws/#", t2aws);
    del(r, "$t/2/+/events/x", t2plus);
    assert_true(root_empty(r));
    trie_free(r);
    worker_free(w);
    free(all), free(t2all), free(t3all), free(t2aws), free(t2plus), free(g);
}

static void trie_shared(void **state)
{
    tnode *r = root_new();
    worker *w = worker_new();
    session *g[3], *h = sess_new(), *plain = sess_new();
    for (int i = 0; i < 3; i++) {
        g[i] = sess_new();
        add_shared(r, "g", "a/+", g[i]);
    }
    add_shared(r, "h", "a/+", h);
    add(r, "a/+", plain);
    /* each match picks exactly one member per group, round robin */
    uint32_t picked[3] = {0};
    for (int round = 0; round < 6; round++) {
        assert_int_equal(run_match(r, w, "a/x"), 3);
        assert_int_equal(hits(w, h), 1);
        assert_int_equal(hits(w, plain), 1);
        uint32_t n = 0;
        for (int i = 0; i < 3; i++) {
            n += hits(w, g[i]);
            picked[i] += hits(w, g[i]);
        }
        assert_int_equal(n, 1);
        for (uint32_t i = 0; i < w->nmt; i++) {
            /* shared deliveries are marked so that No Local is not applied */
            if (w->mt[i].s == plain)
                assert_int_equal(w->mt[i].opts & 0x80, 0);
            else
                assert_int_equal(w->mt[i].opts & 0x80, 0x80);
        }
    }
    for (int i = 0; i < 3; i++) assert_int_equal(picked[i], 2);
    /* a connected member is preferred (conn is only tested, never read) */
    g[1]->conn = (conn *)(uintptr_t)1;
    for (int round = 0; round < 4; round++) {
        assert_int_equal(run_match(r, w, "a/y"), 3);
        assert_int_equal(hits(w, g[1]), 1);
    }
    g[1]->conn = NULL;
    assert_int_equal(run_match(r, w, "b/x"), 0);
    /* removing from a group the session is not in, or from a missing group */
    assert_false(trie_remove(r, "a/+", 3, "g", 1, h));
    assert_false(trie_remove(r, "a/+", 3, "zz", 2, g[0]));
    assert_false(trie_remove(r, "a/+", 3, NULL, 0, g[0]));
    /* the group shrinks and still delivers once */
    del_shared(r, "g", "a/+", g[0]);
    del_shared(r, "g", "a/+", g[2]);
    for (int round = 0; round < 3; round++) {
        assert_int_equal(run_match(r, w, "a/x"), 3);
        assert_int_equal(hits(w, g[1]), 1);
    }
    del_shared(r, "g", "a/+", g[1]);
    assert_int_equal(r->kids[0]->plus->ngroups, 1);
    assert_int_equal(run_match(r, w, "a/x"), 2);
    del_shared(r, "h", "a/+", h);
    del(r, "a/+", plain);
    assert_true(root_empty(r));
    trie_free(r);
    worker_free(w);
    for (int i = 0; i < 3; i++) free(g[i]);
    free(h), free(plain);
}

/* The same session in a group and with a plain subscription to the same
 * filter, and in two groups of different names: each counts on its own. */
static void trie_shared_and_plain(void **state)
{
    tnode *r = root_new();
    worker *w = worker_new();
    session *s = sess_new();
    add(r, "t", s);
    add_shared(r, "g1", "t", s);
    add_shared(r, "g2", "t", s);
    /* names are compared by length too: "g" is not "g1" */
    add_shared(r, "g", "t", s);
    assert_int_equal(run_match(r, w, "t"), 4);
    assert_int_equal(r->kids[0]->ngroups, 3);
    del_shared(r, "g1", "t", s);
    assert_int_equal(run_match(r, w, "t"), 3);
    del(r, "t", s);
    assert_int_equal(run_match(r, w, "t"), 2);
    del_shared(r, "g", "t", s);
    del_shared(r, "g2", "t", s);
    assert_int_equal(run_match(r, w, "t"), 0);
    assert_true(root_empty(r));
    trie_free(r);
    worker_free(w);
    free(s);
}

static void trie_readd_replaces(void **state)
{
    tnode *r = root_new();
    worker *w = worker_new();
    session *s = sess_new();
    bool ex = true;
    assert_int_equal(trie_add(r, "a/#", 3, NULL, 0, s, 1, 5, &ex), THZ_OK);
    assert_false(ex);
    assert_int_equal(trie_add(r, "a/#", 3, NULL, 0, s, 2, 7, &ex), THZ_OK);
    assert_true(ex);
    assert_int_equal(run_match(r, w, "a/b"), 1);
    assert_int_equal(w->mt[0].opts, 2);
    assert_int_equal(w->mt[0].id, 7);
    ex = true;
    assert_int_equal(trie_add(r, "a/#", 3, "g", 1, s, 1, 3, &ex), THZ_OK);
    assert_false(ex);
    assert_int_equal(trie_add(r, "a/#", 3, "g", 1, s, 0, 4, &ex), THZ_OK);
    assert_true(ex);
    assert_int_equal(run_match(r, w, "a/b"), 2);
    for (uint32_t i = 0; i < w->nmt; i++) {
        if (w->mt[i].opts & 0x80) {
            assert_int_equal(w->mt[i].opts, 0x80);
            assert_int_equal(w->mt[i].id, 4);
        }
    }
    /* one remove undoes any number of adds */
    del(r, "a/#", s);
    assert_false(trie_remove(r, "a/#", 3, NULL, 0, s));
    del_shared(r, "g", "a/#", s);
    assert_false(trie_remove(r, "a/#", 3, "g", 1, s));
    assert_true(root_empty(r));
    trie_free(r);
    worker_free(w);
    free(s);
}

static void trie_remove_prunes(void **state)
{
    tnode *r = root_new();
    worker *w = worker_new();
    session *a = sess_new(), *b = sess_new();
    add(r, "a/b/c", a);
    add(r, "a/b", b);
    add(r, "a/+/#", a);
    add(r, "#", b);
    add(r, "+", a);
    add(r, "a//", b);
    /* removing what is not there changes nothing */
    assert_false(trie_remove(r, "a/b/c", 5, NULL, 0, b));
    assert_false(trie_remove(r, "a/b/c/d", 7, NULL, 0, a));
    assert_false(trie_remove(r, "a", 1, NULL, 0, a));
    assert_false(trie_remove(r, "x/y", 3, NULL, 0, a));
    assert_false(trie_remove(r, "a/b/+", 5, NULL, 0, a));
    assert_false(trie_remove(r, "a/b/c", 5, "g", 1, a));
    assert_int_equal(run_match(r, w, "a/b/c"), 3);
    /* an interior node with a subscriber survives its child's removal */
    del(r, "a/b/c", a);
    assert_int_equal(r->nkids, 1);
    tnode *na = r->kids[0];
    assert_int_equal(na->nkids, 2); /* "" and "b" */
    tnode *nb = na->kids[1];
    assert_string_equal(nb->seg, "b");
    assert_int_equal(nb->nkids, 0);
    assert_int_equal(nb->nsubs, 1);
    assert_int_equal(run_match(r, w, "a/b"), 3); /* a/b, a/+/#, # */
    del(r, "a/b", b);
    assert_int_equal(na->nkids, 1);
    assert_string_equal(na->kids[0]->seg, "");
    del(r, "a//", b);
    assert_int_equal(na->nkids, 0);
    assert_non_null(na->plus);
    del(r, "a/+/#", a);
    /* "a" has nothing left under it and no subscriber: gone */
    assert_int_equal(r->nkids, 0);
    assert_non_null(r->hash);
    assert_non_null(r->plus);
    del(r, "#", b);
    assert_null(r->hash);
    del(r, "+", a);
    assert_true(root_empty(r));
    assert_int_equal(run_match(r, w, "a/b/c"), 0);
    trie_free(r);
    worker_free(w);
    free(a), free(b);
}

/* trie_free releases a trie that still has subscribers and groups. */
static void trie_free_populated(void **state)
{
    tnode *r = root_new();
    session *s = sess_new();
    add(r, "a/b/c", s);
    add(r, "a/+/#", s);
    add(r, "#", s);
    add_shared(r, "g", "a/b", s);
    add_shared(r, "h", "+/+", s);
    trie_free(r);
    trie_free(NULL);
    free(s);
}

static void trie_many_children(void **state)
{
    enum { N = 10000 };
    tnode *r = root_new();
    worker *w = worker_new();
    session **s = calloc(N, sizeof *s);
    assert_non_null(s);
    char f[64];
    /* inserted in an order that is neither sorted nor reverse sorted */
    for (int k = 0; k < N; k++) {
        int i = (int)(((unsigned)k * 7919u) % N);
        s[i] = sess_new();
        snprintf(f, sizeof f, "devices/%d/telemetry", i);
        add(r, f, s[i]);
    }
    assert_int_equal(r->nkids, 1);
    tnode *dev = r->kids[0];
    assert_int_equal(dev->nkids, N);
    /* kept sorted by (length, bytes) */
    for (uint32_t k = 1; k < dev->nkids; k++) {
        const tnode *x = dev->kids[k - 1], *y = dev->kids[k];
        assert_true(x->seglen < y->seglen ||
                    (x->seglen == y->seglen && memcmp(x->seg, y->seg, x->seglen) < 0));
    }
    for (int i = 0; i < N; i++) {
        snprintf(f, sizeof f, "devices/%d/telemetry", i);
        assert_int_equal(run_match(r, w, f), 1);
        assert_ptr_equal(w->mt[0].s, s[i]);
    }
    assert_int_equal(run_match(r, w, "devices/10000/telemetry"), 0);
    assert_int_equal(run_match(r, w, "devices/-1/telemetry"), 0);
    assert_int_equal(run_match(r, w, "devices/1/telemetr"), 0);
    assert_int_equal(run_match(r, w, "devices//telemetry"), 0);
    /* remove the odd ones, then the even ones */
    for (int pass = 1; pass >= 0; pass--) {
        for (int i = pass; i < N; i += 2) {
            snprintf(f, sizeof f, "devices/%d/telemetry", i);
            del(r, f, s[i]);
            assert_int_equal(run_match(r, w, f), 0);
        }
        if (pass == 1) {
            assert_int_equal(dev->nkids, N / 2);
            for (int i = 0; i < N; i += 2) {
                snprintf(f, sizeof f, "devices/%d/telemetry", i);
                assert_int_equal(run_match(r, w, f), 1);
                assert_ptr_equal(w->mt[0].s, s[i]);
            }
        }
    }
    assert_true(root_empty(r));
    for (int i = 0; i < N; i++) {
        assert_int_equal(refs(s[i]), 1);
        free(s[i]);
    }
    free(s);
    trie_free(r);
    worker_free(w);
}

/* Every filter against every topic: the trie agrees with topic_matches. */
static void trie_agrees_with_topic_matches(void **state)
{
    static const char *const filters[] = {
        "#",     "+",    "+/+",    "+/#",    "/+",     "/#",   "/",     "a",
        "a/",    "a/#",  "a/+",    "a/b",    "a/+/#",  "a//b", "a/+/b", "+/b",
        "+/+/+", "$SYS", "$SYS/#", "$SYS/+", "+/$SYS", "//",   "b/#",   "a/b/c",
    };
    static const char *const topics[] = {
        "a",    "a/",     "/",     "//",     "a/b", "a//b", "a/b/c", "a/x/b", "b",   "/a",
        "$SYS", "$SYS/x", "$SYS/", "x/$SYS", "b/",  "a/b/", "$",     "a/$",   "///", "/a/b",
    };
    enum { NF = sizeof filters / sizeof *filters, NT = sizeof topics / sizeof *topics };
    tnode *r = root_new();
    worker *w = worker_new();
    session *s[NF];
    for (int i = 0; i < NF; i++) {
        s[i] = sess_new();
        add(r, filters[i], s[i]);
    }
    for (int t = 0; t < NT; t++) {
        run_match(r, w, topics[t]);
        for (int i = 0; i < NF; i++) {
            bool want = topic_matches(filters[i], strlen(filters[i]), topics[t], strlen(topics[t]));
            if (hits(w, s[i]) != (want ? 1u : 0u))
                fail_msg("topic \"%s\", filter \"%s\": trie %u, topic_matches %d", topics[t],
                         filters[i], hits(w, s[i]), want);
        }
    }
    for (int i = 0; i < NF; i++) {
        del(r, filters[i], s[i]);
        free(s[i]);
    }
    assert_true(root_empty(r));
    trie_free(r);
    worker_free(w);
}

/* The deepest legal topic: 65535 slashes are 65536 empty levels, a valid
 * name and a valid filter that any client may send. */
static void *deep_levels_thread(void *arg)
{
    enum { N = 65535 };
    (void)arg;
    char *t = malloc(N);
    tnode *r = calloc(1, sizeof(tnode));
    session *s = calloc(1, sizeof(session) + 16);
    worker *w = calloc(1, sizeof(worker));
    if (!t || !r || !s || !w) _exit(2);
    memset(t, '/', N);
    atomic_init(&s->refs, 1);
    bool ex;
    if (!topic_filter_valid(t, N) || !topic_name_valid(t, N)) _exit(3);
    if (trie_add(r, t, N, NULL, 0, s, 0, 0, &ex) != THZ_OK) _exit(4);
    trie_match(r, t, N, w);
    if (w->nmt != 1) _exit(5);
    if (!trie_remove(r, t, N, NULL, 0, s)) _exit(6);
    if (!root_empty(r)) _exit(7);
    if (trie_add(r, t, N, NULL, 0, s, 0, 0, &ex) != THZ_OK) _exit(8);
    trie_free(r);
    free(w->mt), free(w->ms), free(w), free(s), free(t);
    return NULL;
}

/* Stack use must not grow with a peer-chosen topic depth. match_rec() and
 * free_rec() recurse once per level: at -O2 the 65536 levels above take more
 * than 5 MiB of stack (most of the 8 MiB a broker thread gets by
 * default), and under ASan free_rec() overflows 8 MiB. Run on a 2 MiB
 * stack in a child process so that an overflow fails this test cleanly. */
static void trie_deep_levels(void **state)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        pthread_attr_t a;
        pthread_t th;
        pthread_attr_init(&a);
        pthread_attr_setstacksize(&a, 2u << 20);
        if (pthread_create(&th, &a, deep_levels_thread, NULL) != 0) _exit(1);
        pthread_join(th, NULL);
        _exit(0);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (WIFSIGNALED(st))
        fail_msg("65536-level topic killed the thread (signal %d): trie recursion depth "
                 "follows topic depth",
                 WTERMSIG(st));
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* Group names are compared by length, not as C strings: a name holding a
 * NUL byte (which the decoder never passes today) must still be one group. */
static void trie_group_name_with_nul(void **state)
{
    tnode *r = root_new();
    session *s = sess_new();
    bool ex = true;
    assert_int_equal(trie_add(r, "t", 1, "a\0b", 3, s, 0, 0, &ex), THZ_OK);
    assert_false(ex);
    assert_int_equal(trie_add(r, "t", 1, "a\0b", 3, s, 0, 0, &ex), THZ_OK);
    assert_true(ex);
    assert_int_equal(r->kids[0]->ngroups, 1);
    assert_true(trie_remove(r, "t", 1, "a\0b", 3, s));
    assert_true(root_empty(r));
    trie_free(r);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(name_valid),
        cmocka_unit_test(name_length),
        cmocka_unit_test(filter_valid),
        cmocka_unit_test(filter_length),
        cmocka_unit_test(share_parse),
        cmocka_unit_test(matches_spec),
        cmocka_unit_test(matches_empty_levels),
        cmocka_unit_test(trie_literal),
        cmocka_unit_test(trie_refs_and_options),
        cmocka_unit_test(trie_wildcards),
        cmocka_unit_test(trie_dollar),
        cmocka_unit_test(trie_shared),
        cmocka_unit_test(trie_shared_and_plain),
        cmocka_unit_test(trie_readd_replaces),
        cmocka_unit_test(trie_remove_prunes),
        cmocka_unit_test(trie_free_populated),
        cmocka_unit_test(trie_many_children),
        cmocka_unit_test(trie_agrees_with_topic_matches),
        cmocka_unit_test(trie_deep_levels),
        cmocka_unit_test(trie_group_name_with_nul),
        cmocka_unit_test(tenant_prefixes),
        cmocka_unit_test(trie_tenants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
