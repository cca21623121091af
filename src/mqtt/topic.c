/* topic.c - topic name and filter rules, and the subscription trie.
 *
 * The trie has one node per topic level. Children are kept sorted so that a
 * node with thousands of children (devices/{id}/...) is a binary search;
 * '+' and '#' children hang off dedicated pointers so matching never
 * searches for them. The trie is shared by all threads under B.trie_lock
 * (see trie_read_begin in broker.c: readers keep it for a batch, SUBSCRIBE
 * and UNSUBSCRIBE take it for writing). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt/mqtt_int.h"
#include "mqtt/topic.h"

bool topic_name_valid(const char *t, size_t n)
{
    if (n == 0 || n > 65535) return false;
    return memchr(t, '+', n) == NULL && memchr(t, '#', n) == NULL;
}

bool topic_filter_valid(const char *f, size_t n)
{
    if (n == 0 || n > 65535) return false;
    for (size_t i = 0; i < n; i++) {
        if (f[i] == '+') {
            /* '+' must occupy a whole level. */
            if ((i > 0 && f[i - 1] != '/') || (i + 1 < n && f[i + 1] != '/')) return false;
        } else if (f[i] == '#') {
            /* '#' must be the last character and a whole level. */
            if (i + 1 != n || (i > 0 && f[i - 1] != '/')) return false;
        }
    }
    return true;
}

bool topic_share_parse(const char *f, size_t n, const char **group, size_t *glen,
                       const char **filter, size_t *flen, bool *bad)
{
    *bad = false;
    if (n < 7 || memcmp(f, "$share/", 7) != 0) return false;
    const char *g = f + 7;
    const char *slash = memchr(g, '/', n - 7);
    if (!slash || slash == g) {
        *bad = true;
        return true;
    }
    *group = g;
    *glen = (size_t)(slash - g);
    if (memchr(g, '+', *glen) || memchr(g, '#', *glen)) *bad = true;
    *filter = slash + 1;
    *flen = n - (size_t)(slash + 1 - f);
    if (*flen == 0 || !topic_filter_valid(*filter, *flen)) *bad = true;
    return true;
}

size_t topic_tenant_prefix(int64_t tenant, char out[TOPIC_TENANT_PREFIX_MAX])
{
    if (tenant == 1) {
        out[0] = 0;
        return 0;
    }
    return (size_t)snprintf(out, TOPIC_TENANT_PREFIX_MAX, "$t/%lld/", (long long)tenant);
}

size_t topic_tenant_base(const char *t, size_t n)
{
    if (n < 5 || memcmp(t, "$t/", 3) != 0) return 0;
    const char *slash = memchr(t + 3, '/', n - 3);
    return slash ? (size_t)(slash - t) + 1 : 0;
}

bool topic_reserved(const char *t, size_t n)
{
    return n >= 3 && memcmp(t, "$t/", 3) == 0;
}

bool topic_matches(const char *f, size_t fl, const char *t, size_t tl)
{
    size_t fb = topic_tenant_base(f, fl), tb = topic_tenant_base(t, tl);
    if (fb || tb) {
        /* one tenant's filter, one tenant's topic: match below the prefix */
        if (fb != tb || memcmp(f, t, fb) != 0) return false;
        f += fb, fl -= fb, t += tb, tl -= tb;
    }
    /* Wildcards at the first level do not match topics starting with '$'. */
    if (tl > 0 && t[0] == '$' && fl > 0 && (f[0] == '+' || f[0] == '#')) return false;
    size_t i = 0, j = 0;
    while (i < fl) {
        if (f[i] == '#') return true;
        if (f[i] == '+') {
            while (j < tl && t[j] != '/') j++;
            i++;
        } else {
            while (i < fl && j < tl && f[i] != '/' && t[j] != '/') {
                if (f[i] != t[j]) return false;
                i++, j++;
            }
            if (i < fl && f[i] != '/') return false;
            if (j < tl && t[j] != '/') return false;
        }
        if (i == fl) return j == tl;
        /* f[i] == '/' */
        if (j == tl) {
            /* "a/#" matches "a": the filter's next level must be '#' alone */
            return i + 2 == fl && f[i + 1] == '#';
        }
        i++, j++;
    }
    return j == tl;
}

/* One level of a filter: [p, p + n). */
typedef struct level {
    const char *p;
    size_t n;
} level;

/* Splits off the next level of *z; returns false past the end. *z is NULL
 * after the last level ("a/" has levels "a" and ""). */
static bool next_level(const char **z, level *out)
{
    if (*z == NULL) return false;
    const char *slash = strchr(*z, '/');
    out->p = *z;
    out->n = slash ? (size_t)(slash - *z) : strlen(*z);
    *z = slash ? slash + 1 : NULL;
    return true;
}

static bool is_lvl(const level *l, char c)
{
    return l->n == 1 && l->p[0] == c;
}

static bool lvl_eq(const level *a, const level *b)
{
    return a->n == b->n && memcmp(a->p, b->p, a->n) == 0;
}

/* Does acl filter A cover request R: is every topic that R matches also
 * matched by A? With R a plain topic this is ordinary MQTT matching. */
bool topic_filter_covers(const char *acl, const char *req)
{
    /* Wildcards at the first level never match topics starting with '$'. */
    if (req[0] == '$' && (acl[0] == '+' || acl[0] == '#')) return false;
    level a, r;
    for (;;) {
        bool ha = next_level(&acl, &a), hr = next_level(&req, &r);
        if (ha && is_lvl(&a, '#')) return true; /* "x/#" also covers "x" */
        if (!ha || !hr) return ha == hr;
        if (is_lvl(&r, '#')) return false;
        if (is_lvl(&a, '+')) continue;
        if (is_lvl(&r, '+') || !lvl_eq(&a, &r)) return false;
    }
}

/* Could some topic match both filters? Used for deny entries, so that a
 * subscription that would receive any denied topic is refused. */
bool topic_filters_overlap(const char *x, const char *y)
{
    bool xw = x[0] == '+' || x[0] == '#', yw = y[0] == '+' || y[0] == '#';
    if ((x[0] == '$' && yw) || (y[0] == '$' && xw)) return false;
    level a, b;
    for (;;) {
        bool ha = next_level(&x, &a), hb = next_level(&y, &b);
        if ((ha && is_lvl(&a, '#')) || (hb && is_lvl(&b, '#'))) return true;
        if (!ha || !hb) return ha == hb;
        if (is_lvl(&a, '+') || is_lvl(&b, '+')) continue;
        if (!lvl_eq(&a, &b)) return false;
    }
}

/* ---- trie ---- */

static int seg_cmp(const tnode *k, const char *s, size_t n)
{
    if (k->seglen != n) return k->seglen < n ? -1 : 1;
    return memcmp(k->seg, s, n);
}

static tnode *kid_find(const tnode *p, const char *s, size_t n, uint32_t *pos)
{
    uint32_t lo = 0, hi = p->nkids;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        int c = seg_cmp(p->kids[mid], s, n);
        if (c == 0) {
            if (pos) *pos = mid;
            return p->kids[mid];
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (pos) *pos = lo;
    return NULL;
}

static tnode *node_new(tnode *parent, const char *s, size_t n)
{
    /* the level's text lives in the same allocation as the node */
    tnode *k = calloc(1, sizeof *k + n + 1);
    if (!k) return NULL;
    memcpy(k->seg, s, n);
    k->seglen = (uint32_t)n;
    k->parent = parent;
    return k;
}

static tnode *kid_get(tnode *p, const char *s, size_t n)
{
    if (n == 1 && s[0] == '+') {
        if (!p->plus) p->plus = node_new(p, s, n);
        return p->plus;
    }
    if (n == 1 && s[0] == '#') {
        if (!p->hash) p->hash = node_new(p, s, n);
        return p->hash;
    }
    uint32_t pos;
    tnode *k = kid_find(p, s, n, &pos);
    if (k) return k;
    if (p->nkids == p->kcap) {
        uint32_t cap = p->kcap ? p->kcap * 2 : 1;
        tnode **kids = realloc(p->kids, cap * sizeof *kids);
        if (!kids) return NULL;
        p->kids = kids;
        p->kcap = cap;
    }
    k = node_new(p, s, n);
    if (!k) return NULL;
    memmove(p->kids + pos + 1, p->kids + pos, (p->nkids - pos) * sizeof *p->kids);
    p->kids[pos] = k;
    p->nkids++;
    return k;
}

static tnode *node_find(tnode *root, const char *f, size_t fl, bool create)
{
    tnode *n = root;
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < fl && f[j] != '/') j++;
        const char *s = f + i;
        size_t len = j - i;
        tnode *k;
        if (create) {
            k = kid_get(n, s, len);
        } else if (len == 1 && s[0] == '+') {
            k = n->plus;
        } else if (len == 1 && s[0] == '#') {
            k = n->hash;
        } else {
            k = kid_find(n, s, len, NULL);
        }
        if (!k) return NULL;
        n = k;
        if (j >= fl) return n;
        i = j + 1;
    }
}

static bool node_empty(const tnode *n)
{
    return !n->nkids && !n->plus && !n->hash && !n->nsubs && !n->ngroups;
}

static void node_free_one(tnode *n)
{
    free(n->kids);
    free(n->subs);
    free(n->groups);
    free(n);
}

/* Removes empty nodes from n up towards the root. */
static void prune(tnode *root, tnode *n)
{
    while (n != root && node_empty(n)) {
        tnode *p = n->parent;
        if (p->plus == n) {
            p->plus = NULL;
        } else if (p->hash == n) {
            p->hash = NULL;
        } else {
            uint32_t pos;
            if (kid_find(p, n->seg, n->seglen, &pos) == n) {
                memmove(p->kids + pos, p->kids + pos + 1, (p->nkids - pos - 1) * sizeof *p->kids);
                p->nkids--;
            }
        }
        node_free_one(n);
        n = p;
    }
}

static thz_err subs_put(sub **arr, uint32_t *n, uint32_t *cap, session *s, uint8_t opts,
                        uint32_t id, bool *existed)
{
    for (uint32_t i = 0; i < *n; i++)
        if ((*arr)[i].s == s) {
            (*arr)[i].opts = opts;
            (*arr)[i].id = id;
            *existed = true;
            return THZ_OK;
        }
    if (*n == *cap) {
        uint32_t c = *cap ? *cap * 2 : 1;
        sub *a = realloc(*arr, c * sizeof *a);
        if (!a) return THZ_ENOMEM;
        *arr = a;
        *cap = c;
    }
    (*arr)[(*n)++] = (sub){s, opts, id};
    *existed = false;
    return THZ_OK;
}

static bool subs_del(sub *arr, uint32_t *n, session *s)
{
    for (uint32_t i = 0; i < *n; i++)
        if (arr[i].s == s) {
            arr[i] = arr[--*n];
            return true;
        }
    return false;
}

static share_group *group_find(tnode *n, const char *g, size_t gl)
{
    for (uint32_t i = 0; i < n->ngroups; i++)
        if (n->groups[i].namelen == gl && memcmp(n->groups[i].name, g, gl) == 0)
            return &n->groups[i];
    return NULL;
}

static void group_drop(tnode *n, share_group *grp)
{
    free(grp->name);
    free(grp->m);
    *grp = n->groups[--n->ngroups];
}

thz_err trie_add(tnode *root, const char *f, size_t fl, const char *g, size_t gl, session *s,
                 uint8_t opts, uint32_t id, bool *existed)
{
    tnode *n = node_find(root, f, fl, true);
    if (!n) return THZ_ENOMEM;
    if (!g) return subs_put(&n->subs, &n->nsubs, &n->scap, s, opts, id, existed);
    share_group *grp = group_find(n, g, gl);
    if (!grp) {
        share_group *a = realloc(n->groups, (n->ngroups + 1) * sizeof *a);
        if (!a) return THZ_ENOMEM;
        n->groups = a;
        grp = &a[n->ngroups];
        memset(grp, 0, sizeof *grp);
        grp->name = malloc(gl + 1);
        if (!grp->name) return THZ_ENOMEM;
        memcpy(grp->name, g, gl);
        grp->name[gl] = 0;
        grp->namelen = (uint32_t)gl;
        n->ngroups++;
    }
    thz_err rc = subs_put(&grp->m, &grp->n, &grp->cap, s, opts, id, existed);
    if (rc && grp->n == 0) group_drop(n, grp); /* never leave an empty group */
    return rc;
}

bool trie_remove(tnode *root, const char *f, size_t fl, const char *g, size_t gl, session *s)
{
    tnode *n = node_find(root, f, fl, false);
    if (!n) return false;
    bool found = false;
    if (!g) {
        found = subs_del(n->subs, &n->nsubs, s);
    } else {
        share_group *grp = group_find(n, g, gl);
        if (grp) {
            found = subs_del(grp->m, &grp->n, s);
            if (grp->n == 0) group_drop(n, grp);
        }
    }
    prune(root, n);
    return found;
}

static void mt_push(worker *w, session *s, uint8_t opts, uint32_t id)
{
    if (w->nmt == w->mtcap) {
        uint32_t cap = w->mtcap ? w->mtcap * 2 : 64;
        match *a = realloc(w->mt, cap * sizeof *a);
        if (!a) return; /* dropped: counted by the caller as not matched */
        w->mt = a;
        w->mtcap = cap;
    }
    w->mt[w->nmt++] = (match){session_ref(s), opts, id};
}

static void collect(tnode *n, worker *w)
{
    for (uint32_t i = 0; i < n->nsubs; i++)
        mt_push(w, n->subs[i].s, n->subs[i].opts, n->subs[i].id);
    for (uint32_t g = 0; g < n->ngroups; g++) {
        share_group *grp = &n->groups[g];
        if (grp->n == 0) continue;
        /* Round-robin, preferring a member that is connected right now
         * (s->conn is read racily: it is a hint, never dereferenced). */
        uint32_t start = atomic_fetch_add_explicit(&grp->rr, 1, memory_order_relaxed);
        sub *pick = &grp->m[start % grp->n];
        for (uint32_t k = 0; k < grp->n; k++) {
            sub *c = &grp->m[(start + k) % grp->n];
            if (__atomic_load_n(&c->s->conn, __ATOMIC_RELAXED)) {
                pick = c;
                break;
            }
        }
        mt_push(w, pick->s, pick->opts | 0x80 /* shared: No Local does not apply */, pick->id);
    }
}

/* Matching walks the trie with an explicit stack (a client chooses how many
 * levels a topic has: up to 65536, too deep to recurse on a thread stack).
 * Each frame is a node and the offset in the topic of the level to match
 * below it. */
static bool mstack_push(worker *w, tnode *n, size_t i)
{
    if (w->msn == w->mscap) {
        uint32_t cap = w->mscap ? w->mscap * 2 : 32;
        mframe *a = realloc(w->ms, cap * sizeof *a);
        if (!a) return false;
        w->ms = a;
        w->mscap = cap;
    }
    w->ms[w->msn++] = (mframe){n, i};
    return true;
}

/* Collects node k reached by the topic's last level, and its '#' child
 * ("a/#" also matches "a"). */
static void collect_last(tnode *k, worker *w)
{
    collect(k, w);
    if (k->hash) collect(k->hash, w);
}

void trie_match(tnode *root, const char *t, size_t tl, worker *w)
{
    /* Wildcards at the first level do not match topics starting with '$',
     * nor (for a tenant's topic) at the first level after its prefix. */
    bool dollar = tl > 0 && t[0] == '$';
    size_t base = topic_tenant_base(t, tl);
    bool udollar = base && base < tl && t[base] == '$';
    w->msn = 0;
    mstack_push(w, root, 0);
    while (w->msn) {
        mframe fr = w->ms[--w->msn];
        tnode *n = fr.n;
        size_t i = fr.i, j = i;
        while (j < tl && t[j] != '/') j++;
        bool wild = !((dollar && n == root) || (udollar && i == base));
        if (n->hash && wild) collect(n->hash, w);
        tnode *k = kid_find(n, t + i, j - i, NULL);
        if (k) {
            if (j >= tl)
                collect_last(k, w);
            else
                mstack_push(w, k, j + 1);
        }
        if (n->plus && wild) {
            if (j >= tl)
                collect_last(n->plus, w);
            else
                mstack_push(w, n->plus, j + 1);
        }
    }
}

/* Frees the whole trie, root included, without recursion. */
void trie_free(tnode *root)
{
    if (!root) return;
    tnode **st = NULL;
    size_t n = 0, cap = 0;
    tnode *cur = root;
    while (cur) {
        size_t need = n + cur->nkids + 2;
        if (need > cap) {
            size_t c = cap ? cap * 2 : 64;
            while (c < need) c *= 2;
            tnode **a = realloc(st, c * sizeof *a);
            if (!a) break; /* out of memory at shutdown: leak the rest */
            st = a;
            cap = c;
        }
        for (uint32_t i = 0; i < cur->nkids; i++) st[n++] = cur->kids[i];
        if (cur->plus) st[n++] = cur->plus;
        if (cur->hash) st[n++] = cur->hash;
        for (uint32_t g = 0; g < cur->ngroups; g++) {
            free(cur->groups[g].name);
            free(cur->groups[g].m);
        }
        free(cur->kids);
        free(cur->subs);
        free(cur->groups);
        free(cur);
        cur = n ? st[--n] : NULL;
    }
    free(st);
}
