/* fuzz_topic.c - differential libFuzzer target for the subscription trie: what
 * trie_match returns must equal brute force over topic_matches, through
 * adds, re-adds and removes; removing everything must leave the trie empty.
 *
 * Input: lines. The first byte minus '0' (mod 32) is K; the rest of the first
 * line is ignored. The next K lines are topic filters (plain, or
 * "$share/group/filter"), kept when the validators accept them; every later
 * line is a topic name, kept when topic_name_valid accepts it. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt/mqtt_int.h"
#include "mqtt/topic.h"

#define MAX_FILTERS 64
#define MAX_TOPICS  64

typedef struct fsub {
    const char *f, *g; /* filter and group (NULL: not shared), inside the input */
    size_t fl, gl;
    session *s;
    bool live;  /* still in the trie */
    int leader; /* index of the first live member of this one's group */
} fsub;

static fsub subs[MAX_FILTERS];
static uint32_t hit[MAX_FILTERS];

static session *sess_new(int idx)
{
    session *s = calloc(1, sizeof(session) + 16);
    if (!s) abort();
    atomic_init(&s->refs, 1);
    s->home = idx; /* which fsub this is; trie_match never reads it */
    /* collect() prefers connected group members; conn is only tested */
    if (idx % 3 == 1) s->conn = (conn *)(uintptr_t)1;
    return s;
}

static bool same_group(const fsub *a, const fsub *b)
{
    return a->g && b->g && a->fl == b->fl && a->gl == b->gl && memcmp(a->f, b->f, a->fl) == 0 &&
           memcmp(a->g, b->g, a->gl) == 0;
}

/* A filter the broker could hold: outside the reserved "$t/" namespace, or
 * inside it with a literal tenant id ("$t/42/...", never "$t/+/..." or
 * "$t/#": wildcards never choose the tenant). */
static bool tenant_filter_ok(const char *f, size_t fl)
{
    if (!topic_reserved(f, fl)) return true;
    size_t base = topic_tenant_base(f, fl);
    if (base < 5) return false;
    for (size_t i = 3; i + 1 < base; i++)
        if (f[i] < '0' || f[i] > '9') return false;
    return true;
}

/* Checks one topic against every live subscription. */
static void check_topic(tnode *root, worker *w, const char *t, size_t tl, int nsubs)
{
    w->nmt = 0;
    trie_match(root, t, tl, w);
    memset(hit, 0, sizeof hit);
    for (uint32_t i = 0; i < w->nmt; i++) {
        session *s = w->mt[i].s;
        int idx = s->home;
        if (idx < 0 || idx >= nsubs || subs[idx].s != s || !subs[idx].live) abort();
        /* one reference taken per match: the fuzzer's own plus this one */
        if (atomic_load(&s->refs) < 2) abort();
        atomic_fetch_sub(&s->refs, 1);
        bool shared = (w->mt[i].opts & 0x80) != 0;
        if (shared != (subs[idx].g != NULL)) abort();
        hit[subs[idx].leader]++;
    }
    for (int i = 0; i < nsubs; i++) {
        if (!subs[i].live || subs[i].leader != i) {
            /* removed, or a group member counted on its group's leader */
            if (hit[i] != 0) abort();
            continue;
        }
        bool want = topic_matches(subs[i].f, subs[i].fl, t, tl);
        /* the ACL's filter-covers-filter must agree with plain matching when
         * the covered "filter" is a topic name (C strings: no NUL inside).
         * ACLs see the names clients give, never the broker's "$t/N/" ones
         * (topic_reserved), whose tenant rules only topic_matches knows. */
        if (!memchr(subs[i].f, 0, subs[i].fl) && !memchr(t, 0, tl) &&
            !topic_reserved(subs[i].f, subs[i].fl) && !topic_reserved(t, tl)) {
            char *fz = strndup(subs[i].f, subs[i].fl), *tz = strndup(t, tl);
            if (fz && tz && topic_filter_covers(fz, tz) != want) abort();
            free(fz);
            free(tz);
        }
        /* a plain subscription, or exactly one member of a group */
        if (hit[i] != (want ? 1u : 0u)) abort();
    }
    for (int i = 0; i < nsubs; i++)
        if (atomic_load(&subs[i].s->refs) != 1) abort();
}

/* Recomputes each live subscription's group leader. */
static void set_leaders(int nsubs)
{
    for (int i = 0; i < nsubs; i++) {
        subs[i].leader = i;
        if (!subs[i].g) continue;
        for (int j = 0; j < i; j++)
            if (subs[j].live && same_group(&subs[i], &subs[j])) {
                subs[i].leader = j;
                break;
            }
    }
}

static bool trie_empty(const tnode *r)
{
    return r->nkids == 0 && !r->plus && !r->hash && r->nsubs == 0 && r->ngroups == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    const char *p = (const char *)data, *end = p + size;
    int k = (uint8_t)(data[0] - '0') % 32;
    const char *nl = memchr(p, '\n', size);
    if (!nl) return 0;
    p = nl + 1;

    struct {
        const char *t;
        size_t n;
    } topics[MAX_TOPICS];
    int nsubs = 0, ntopics = 0;
    for (int line = 0; p <= end; line++) {
        nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t n = (size_t)(le - p);
        if (line < k) {
            const char *g = NULL, *f = p;
            size_t gl = 0, fl = n;
            bool bad = false;
            bool shared = topic_share_parse(p, n, &g, &gl, &f, &fl, &bad);
            /* MQTT strings cannot hold U+0000 (the codec rejects it) */
            bool ok = shared ? !bad && !memchr(g, '\0', gl) : topic_filter_valid(p, n);
            /* the broker builds "$t/N/..." filters itself, N a tenant id, and
             * refuses any other filter in that namespace (topic_reserved) */
            ok = ok && tenant_filter_ok(f, fl);
            if (ok && nsubs < MAX_FILTERS) {
                subs[nsubs] = (fsub){.f = f, .fl = fl, .g = shared ? g : NULL, .gl = gl};
                nsubs++;
            }
        } else if (topic_name_valid(p, n) && ntopics < MAX_TOPICS) {
            topics[ntopics].t = p;
            topics[ntopics].n = n;
            ntopics++;
        }
        if (!nl) break;
        p = nl + 1;
    }

    tnode *root = calloc(1, sizeof(tnode));
    worker *w = calloc(1, sizeof(worker));
    if (!root || !w) abort();
    for (int i = 0; i < nsubs; i++) {
        fsub *x = &subs[i];
        x->s = sess_new(i);
        bool ex = true;
        if (trie_add(root, x->f, x->fl, x->g, x->gl, x->s, 1, (uint32_t)i, &ex) != THZ_OK) abort();
        if (ex) abort();
        /* the same session on the same filter again replaces its options */
        if (trie_add(root, x->f, x->fl, x->g, x->gl, x->s, 2, (uint32_t)i + 1, &ex) != THZ_OK)
            abort();
        if (!ex) abort();
        x->live = true;
    }
    set_leaders(nsubs);
    for (int t = 0; t < ntopics; t++) {
        check_topic(root, w, topics[t].t, topics[t].n, nsubs);
        for (uint32_t i = 0; i < w->nmt; i++)
            if ((w->mt[i].opts & 0x7f) != 2 || w->mt[i].id != (uint32_t)w->mt[i].s->home + 1)
                abort();
    }

    /* Remove every other subscription (in reverse), check again, then the rest. */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = nsubs - 1; i >= 0; i--) {
            fsub *x = &subs[i];
            if (!x->live || (pass == 0 && i % 2 == 0)) continue;
            if (!trie_remove(root, x->f, x->fl, x->g, x->gl, x->s)) abort();
            x->live = false;
            if (trie_remove(root, x->f, x->fl, x->g, x->gl, x->s)) abort();
        }
        set_leaders(nsubs);
        if (pass == 0)
            for (int t = 0; t < ntopics; t++) check_topic(root, w, topics[t].t, topics[t].n, nsubs);
    }
    if (!trie_empty(root)) abort();
    for (int t = 0; t < ntopics; t++) {
        w->nmt = 0;
        trie_match(root, topics[t].t, topics[t].n, w);
        if (w->nmt != 0) abort();
    }

    trie_free(root);
    for (int i = 0; i < nsubs; i++) free(subs[i].s);
    free(w->mt);
    free(w->ms);
    free(w);
    return 0;
}
