/* tsdb.c - the engine behind tsdb.h: open/close, the write path (index
 * lookup, WAL append, head append), the read paths (head + blocks merged
 * window by window), the cut of the head into blocks with its checkpoint,
 * and the background thread (cuts, compaction, retention), backup, stats.
 *
 * Layout under opts->dir: wal/ (tsdb_wal.c), index (tsdb_index.c),
 * blocks/ (tsdb_block.c), retention (text, "tenant seconds [metric]" per
 * line, rewritten whole through a temp file on every change).
 *
 * Head. Each series keeps its unflushed points in arrays in write order
 * (out-of-order points included) under one of TSDB_NSTRIPE stripe locks;
 * readers copy what they need and sort it, so duplicates resolve to the
 * last write. A cut (background when the head holds points older than the
 * window before max_ts - grace; tsdb_flush for everything) write-locks
 * db->cut for a moment to mark a WAL rotation and detach every head into
 * "frozen" runs, then without locks sorts them, writes one block per
 * (tenant, window) and publishes it, puts back the points it keeps (newer
 * than the cut) at the front of the heads, writes the index, then a
 * checkpoint file with those kept points, and deletes the WAL segments the
 * checkpoint covers. Readers see head, frozen and blocks throughout; the
 * merge gives priority head > frozen > newer block > older block. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/fs.h"
#include "core/log.h"
#include "metrics/metrics.h"
#include "tsdb/tsdb_int.h"

#define ERR(...) (err ? (void)snprintf(err, TSDB_ERR_LEN, __VA_ARGS__) : (void)0)

static int64_t wall_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000000ll + t.tv_nsec;
}

static thz_err mkdir_p(const char *d)
{
    return thz_mkdir_p(d, 0755) != 0 ? THZ_EIO : THZ_OK;
}

/* ---- head ---- */

static thz_err run_grow(tsdb_run *r, uint32_t need)
{
    if (need <= r->cap) return THZ_OK;
    uint32_t nc = r->cap ? r->cap : 16;
    while (nc < need) nc *= 2;
    int64_t *nt = realloc(r->ts, (size_t)nc * sizeof *nt);
    if (!nt) return THZ_ENOMEM;
    r->ts = nt;
    uint64_t *nv = realloc(r->v, (size_t)nc * sizeof *nv);
    if (!nv) return THZ_ENOMEM;
    r->v = nv;
    r->cap = nc;
    return THZ_OK;
}

static void atomic_min(_Atomic int64_t *a, int64_t v)
{
    int64_t cur = atomic_load(a);
    while (v < cur && !atomic_compare_exchange_weak(a, &cur, v)) {
    }
}

static void atomic_max(_Atomic int64_t *a, int64_t v)
{
    int64_t cur = atomic_load(a);
    while (v > cur && !atomic_compare_exchange_weak(a, &cur, v)) {
    }
}

static void lvc_set(tsdb_ser *s, int64_t ts, uint64_t v, const char *str, uint32_t slen)
{
    if (s->lvc_ok && ts < s->lvc_ts) return;
    if (s->type == TSDB_STRING) {
        char *n = realloc(s->lvc_s, slen ? slen : 1);
        if (!n) return;
        if (slen) memcpy(n, str, slen);
        s->lvc_s = n;
        s->lvc_slen = slen;
    }
    s->lvc_ok = true;
    s->lvc_ts = ts;
    s->lvc_v = v;
}

static double as_double(tsdb_type t, uint64_t v)
{
    double d;
    switch (t) {
    case TSDB_FLOAT: memcpy(&d, &v, 8); return d;
    case TSDB_INT: return (double)(int64_t)v;
    default: return v ? 1.0 : 0.0;
    }
}

/* The cell of minute m (created empty when missing), or NULL (ENOMEM). */
static tsdb_cell *cell_get(tsdb_ser *s, int64_t m)
{
    uint32_t n = s->ncells, i;
    if (n && s->cells[n - 1].m == m) return &s->cells[n - 1];
    if (!n || s->cells[n - 1].m < m) {
        i = n;
    } else {
        uint32_t lo = 0, hi = n; /* first cell with .m >= m */
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (s->cells[mid].m < m)
                lo = mid + 1;
            else
                hi = mid;
        }
        i = lo;
        if (i < n && s->cells[i].m == m) return &s->cells[i];
    }
    if (n == s->capcells) {
        uint32_t nc = s->capcells ? s->capcells * 2 : 8;
        tsdb_cell *c = realloc(s->cells, (size_t)nc * sizeof *c);
        if (!c) return NULL;
        s->cells = c;
        s->capcells = nc;
    }
    if (i < n) memmove(&s->cells[i + 1], &s->cells[i], (size_t)(n - i) * sizeof *s->cells);
    s->cells[i] = (tsdb_cell){.m = m};
    s->ncells = n + 1;
    return &s->cells[i];
}

/* Folds the value d at ts into cell c. fresh: ts is known not to be in the
 * head yet (else one inside the cell's span may replace a point: the cell
 * turns dirty, and its aggregate is recomputed from the points when read). */
static inline void cell_fold(tsdb_cell *c, int64_t ts, double d, bool fresh)
{
    tsdb_agg *a = &c->a;
    if (!a->count) {
        *a = (tsdb_agg){1, d, d, d, d, d, ts, ts};
        return;
    }
    if (c->dirty) return;
    if (!fresh && ts >= a->first_ts && ts <= a->last_ts) {
        c->dirty = true; /* maybe a duplicate timestamp (the last write wins) */
        return;
    }
    a->count++;
    a->sum += d;
    if (d < a->min) a->min = d;
    if (d > a->max) a->max = d;
    if (ts < a->first_ts) {
        a->first_ts = ts;
        a->first = d;
    } else if (ts > a->last_ts) {
        a->last_ts = ts;
        a->last = d;
    }
}

/* Accounts one head point in its cell. fresh: its timestamp is known not to
 * be in the head yet (else one inside the cell's span may replace a point:
 * the cell turns dirty). */
static void cell_add(tsdb_ser *s, int64_t ts, uint64_t v, bool fresh)
{
    if (s->type == TSDB_STRING || !s->cells_ok) return;
    tsdb_cell *c = cell_get(s, tsdb_floor_to(ts, TSDB_MINUTE_NS));
    if (!c) {
        s->cells_ok = false; /* until the next rebuild */
        return;
    }
    cell_fold(c, ts, as_double(s->type, v), fresh);
}

/* First index of the sorted head with ts >= t. */
static uint32_t head_lower(const tsdb_run *r, int64_t t)
{
    uint32_t lo = 0, hi = r->n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (r->ts[mid] < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Recomputes the cell of minute m from the (sorted) head. */
static void cell_recompute(tsdb_ser *s, int64_t m)
{
    if (!s->cells_ok) return;
    tsdb_cell *c = cell_get(s, m);
    if (!c) {
        s->cells_ok = false;
        return;
    }
    const tsdb_run *r = &s->head;
    c->a = (tsdb_agg){0};
    c->dirty = false;
    int64_t e = m + TSDB_MINUTE_NS;
    for (uint32_t i = head_lower(r, m); i < r->n && r->ts[i] < e; i++)
        cell_add(s, r->ts[i], r->v[i], true);
}

#define HEAD_SHIFT_MAX 256 /* an out-of-order point moves at most this many */

/* A numeric point into a sorted head at its place: false when it is too far
 * back (append it instead). Caller checked ts <= the newest head point. */
static bool head_insert(tsdb_ser *s, int64_t ts, uint64_t v)
{
    tsdb_run *r = &s->head;
    uint32_t lim = r->n > HEAD_SHIFT_MAX ? r->n - HEAD_SHIFT_MAX : 0, i = r->n;
    while (i > lim && r->ts[i - 1] > ts) i--;
    if (i > 0 && r->ts[i - 1] == ts) { /* the last write wins */
        r->v[i - 1] = v;
        cell_recompute(s, tsdb_floor_to(ts, TSDB_MINUTE_NS));
        return true;
    }
    if (i == lim && i > 0 && r->ts[i - 1] > ts) return false;
    memmove(r->ts + i + 1, r->ts + i, (size_t)(r->n - i) * sizeof *r->ts);
    memmove(r->v + i + 1, r->v + i, (size_t)(r->n - i) * sizeof *r->v);
    r->ts[i] = ts;
    r->v[i] = v;
    r->n++;
    cell_add(s, ts, v, true);
    return true;
}

void tsdb_cells_rebuild(tsdb_ser *s)
{
    s->ncells = 0;
    s->cells_ok = true;
    s->head_sorted = true;
    for (uint32_t i = 0; i < s->head.n; i++) {
        if (i && s->head.ts[i] <= s->head.ts[i - 1]) s->head_sorted = false;
        cell_add(s, s->head.ts[i], s->head.v[i], s->head_sorted);
    }
}

thz_err tsdb_head_append(tsdb *db, tsdb_ser *s, int64_t ts, uint64_t v, const char *str,
                         uint32_t slen)
{
    tsdb_run *r = &s->head;
    if (r->n == r->cap && run_grow(r, r->n + 1)) return THZ_ENOMEM;
    uint64_t hv = v;
    if (s->type == TSDB_STRING) {
        if (r->str.len > UINT32_MAX - slen) return THZ_ETOOBIG;
        hv = (uint64_t)r->str.len << 32 | slen;
        if (thz_buf_append(&r->str, str, slen)) return THZ_ENOMEM;
    }
    if (s->type != TSDB_STRING && s->head_sorted && r->n && ts <= r->ts[r->n - 1] &&
        head_insert(s, ts, v)) {
        /* kept sorted and free of duplicates */
    } else {
        if (r->n && ts <= r->ts[r->n - 1]) s->head_sorted = false;
        r->ts[r->n] = ts;
        r->v[r->n] = hv;
        r->n++;
        cell_add(s, ts, v, s->head_sorted);
    }
    lvc_set(s, ts, v, str, slen);
    return THZ_OK;
}

void tsdb_head_append_run(tsdb *db, tsdb_ser *s, const tsdb_rpt *p, size_t n)
{
    tsdb_run *r = &s->head;
    bool fast = s->type != TSDB_STRING && n <= UINT32_MAX - r->n &&
                run_grow(r, r->n + (uint32_t)n) == THZ_OK && (!r->n || p[0].ts > r->ts[r->n - 1]);
    for (size_t i = 1; i < n && fast; i++) fast = p[i].ts > p[i - 1].ts;
    if (!fast) {
        for (size_t i = 0; i < n; i++) tsdb_head_append(db, s, p[i].ts, p[i].v, NULL, 0);
        return;
    }
    /* Strictly increasing and newer than the head: plain appends (the
     * head's sortedness is unchanged), each point fresh in its cell; the
     * last-value cache ends at the last point as it would point by point. */
    for (size_t i = 0; i < n; i++) {
        r->ts[r->n + i] = p[i].ts;
        r->v[r->n + i] = p[i].v;
    }
    r->n += (uint32_t)n;
    if (!s->head_sorted || !s->cells_ok) {
        for (size_t i = 0; i < n; i++) cell_add(s, p[i].ts, p[i].v, s->head_sorted);
    } else {
        /* cell_add(fresh) for each point, the cell looked up once a minute */
        tsdb_cell *c = NULL;
        int64_t m = 0;
        for (size_t i = 0; i < n; i++) {
            int64_t ts = p[i].ts;
            if (!c || (uint64_t)ts - (uint64_t)m >= (uint64_t)TSDB_MINUTE_NS) {
                m = tsdb_floor_to(ts, TSDB_MINUTE_NS);
                if (!(c = cell_get(s, m))) {
                    s->cells_ok = false; /* until the next rebuild */
                    break;
                }
            }
            cell_fold(c, ts, as_double(s->type, p[i].v), true);
        }
    }
    if (n) lvc_set(s, p[n - 1].ts, p[n - 1].v, NULL, 0);
}

void tsdb_head_note(tsdb *db, size_t n, int64_t min_ts, int64_t max_ts)
{
    atomic_fetch_add(&db->head_points, n);
    atomic_max(&db->max_ts, max_ts);
    atomic_min(&db->head_min_ts, min_ts);
}

/* ---- write ---- */

static uint64_t value_bits(const tsdb_value *v)
{
    uint64_t b = 0;
    switch (v->type) {
    case TSDB_FLOAT: memcpy(&b, &v->u.f, 8); break;
    case TSDB_INT: b = (uint64_t)v->u.i; break;
    case TSDB_BOOL: b = v->u.b ? 1 : 0; break;
    default: break;
    }
    return b;
}

static size_t point_wal_len(const tsdb_point *p)
{
    switch (p->v.type) {
    case TSDB_BOOL: return 17 + 1;
    case TSDB_STRING: return 17 + 4 + p->v.u.s.n;
    default: return 17 + 8;
    }
}

static bool same_key(const tsdb_point *a, const tsdb_point *b)
{
    return a->device_len == b->device_len && a->metric_len == b->metric_len &&
           a->tags_len == b->tags_len && !memcmp(a->device, b->device, a->device_len) &&
           !memcmp(a->metric, b->metric, a->metric_len) &&
           (!a->tags_len || !memcmp(a->tags, b->tags, a->tags_len));
}

/* Resolves every point's series; returns how many are missing. */
static size_t resolve(tsdb *db, int64_t tenant, const tsdb_point *pts, size_t n, tsdb_ser **ser)
{
    size_t missing = 0;
    for (size_t i = 0; i < n; i++) {
        /* Consecutive points of one series (a device's batch) skip the hash. */
        if (i && ser[i - 1] && same_key(&pts[i], &pts[i - 1]))
            ser[i] = ser[i - 1];
        else
            ser[i] = tsdb_idx_find(db, tenant, &pts[i]);
        if (!ser[i]) missing++;
    }
    return missing;
}

thz_err tsdb_write(tsdb *db, int64_t tenant, const tsdb_point *pts, size_t n, tsdb_done_fn done,
                   void *ctx, char err[TSDB_ERR_LEN])
{
    if (err) err[0] = 0;
    if (!db || (n && !pts)) return THZ_EINVAL;
    size_t wal_len = 0;
    for (size_t i = 0; i < n; i++) {
        const tsdb_point *p = &pts[i];
        const char *why = NULL;
        if (!p->device || p->device_len < 1 || p->device_len > 128)
            why = "device must be 1..128 bytes";
        else if (!p->metric || p->metric_len < 1 || p->metric_len > 256)
            why = "metric must be 1..256 bytes";
        else if (p->tags_len > 4096 ||
                 (p->tags_len && (!p->tags || memchr(p->tags, 0, p->tags_len))))
            why = "bad tag set";
        else if (memchr(p->device, 0, p->device_len) || memchr(p->metric, 0, p->metric_len))
            why = "NUL byte in device or metric";
        else if (p->v.type < TSDB_FLOAT || p->v.type > TSDB_STRING)
            why = "bad value type";
        else if (p->v.type == TSDB_STRING && (p->v.u.s.n > 65536 || (p->v.u.s.n && !p->v.u.s.p)))
            why = "string value longer than 64 KiB";
        if (why) {
            ERR("point %zu: %s", i, why);
            atomic_fetch_add(&db->points_rejected, n);
            metrics_tsdb_rejected(METRICS_REJECT_INVALID, n);
            return THZ_EINVAL;
        }
        wal_len += point_wal_len(p);
        if (wal_len > TSDB_REC_MAX / 2) {
            ERR("too many points in one write (at point %zu)", i);
            atomic_fetch_add(&db->points_rejected, n);
            metrics_tsdb_rejected(METRICS_REJECT_TOO_BIG, n);
            return THZ_ETOOBIG;
        }
    }
    if (n == 0) {
        if (done) done(ctx, THZ_OK);
        return THZ_OK;
    }
    tsdb_ser *stack[64], **ser = n <= 64 ? stack : malloc(n * sizeof *ser);
    if (!ser) return THZ_ENOMEM;
    thz_err rc = THZ_OK;
    pthread_rwlock_rdlock(&db->cut);
    pthread_rwlock_rdlock(&db->idx);
    size_t missing = resolve(db, tenant, pts, n, ser);
    if (missing) {
        pthread_rwlock_unlock(&db->idx);
        pthread_rwlock_wrlock(&db->idx);
        missing = resolve(db, tenant, pts, n, ser);
    }
    /* Validate types and the quota before creating anything. */
    size_t fresh = 0;
    bool backlog = false;
    for (size_t i = 0; i < n && !rc; i++) {
        if (ser[i]) {
            if (ser[i]->type != pts[i].v.type) {
                ERR("point %zu: type conflict: series %s/%s is %s", i, ser[i]->device,
                    ser[i]->metric,
                    ser[i]->type == TSDB_FLOAT  ? "float"
                    : ser[i]->type == TSDB_INT  ? "int"
                    : ser[i]->type == TSDB_BOOL ? "bool"
                                                : "string");
                rc = THZ_EINVAL;
            }
            continue;
        }
        size_t j = 0;
        for (; j < i; j++)
            if (!ser[j] && same_key(&pts[i], &pts[j])) break;
        if (j < i) {
            if (pts[j].v.type != pts[i].v.type) {
                ERR("point %zu: type conflict with point %zu of the same new series", i, j);
                rc = THZ_EINVAL;
            }
        } else {
            fresh++;
        }
    }
    if (!rc && fresh && db->o.max_series_per_tenant) {
        tsdb_tenant *t = tsdb_tenant_get(db, tenant, false);
        uint64_t have = t ? t->nseries : 0;
        if (have + fresh > db->o.max_series_per_tenant) {
            ERR("series limit of tenant reached (%" PRIu64 ")", db->o.max_series_per_tenant);
            rc = THZ_EQUOTA;
        }
    }
    if (!rc) {
        pthread_mutex_lock(&db->wal.mu);
        if (db->wal.failed) {
            /* the disk is full (or failing): refuse now rather than pile
             * up points that cannot be made durable; the WAL thread keeps
             * retrying and clears this when a write succeeds */
            ERR("the write-ahead log cannot be written: %s", thz_strerror(db->wal.fail_rc));
            rc = db->wal.fail_rc ? db->wal.fail_rc : THZ_EIO;
        } else if (db->wal.cur.len > TSDB_WAL_BACKLOG) {
            ERR("WAL backlog full (disk too slow)");
            rc = THZ_EQUOTA;
            backlog = true;
        }
        pthread_mutex_unlock(&db->wal.mu);
    }
    if (!rc && missing) {
        thz_buf def = {0};
        for (size_t i = 0; i < n && !rc; i++) {
            if (ser[i]) continue;
            tsdb_ser *s = tsdb_idx_find(db, tenant, &pts[i]);
            if (!s) {
                rc = tsdb_idx_add(db, tenant, pts[i].device, pts[i].device_len, pts[i].metric,
                                  pts[i].metric_len, pts[i].tags, pts[i].tags_len, pts[i].v.type, 0,
                                  &s);
                if (rc) break;
                /* The definition enters the WAL before anyone can use the id. */
                def.len = 0;
                uint8_t k = 'S';
                uint8_t *rec;
                if ((rc = thz_buf_append(&def, &k, 1)) || (rc = tsdb_ser_def_encode(s, &def)))
                    break;
                pthread_mutex_lock(&db->wal.mu);
                rc = tsdb_wal_reserve(db, def.len, &rec);
                if (!rc) {
                    memcpy(rec + 8, def.p, def.len);
                    tsdb_wal_commit(db, rec, def.len);
                }
                pthread_mutex_unlock(&db->wal.mu);
            }
            ser[i] = s;
        }
        thz_buf_free(&def);
    }
    pthread_rwlock_unlock(&db->idx);
    if (rc) goto out;

    pthread_mutex_lock(&db->wal.mu);
    uint8_t *rec;
    rc = tsdb_wal_reserve(db, wal_len, &rec);
    if (!rc && done && db->o.fsync == TSDB_FSYNC_ALWAYS && db->wal.ndones == db->wal.cap_dones) {
        size_t nc = db->wal.cap_dones ? db->wal.cap_dones * 2 : 256;
        tsdb_done *nd = realloc(db->wal.dones, nc * sizeof *nd);
        if (!nd)
            rc = THZ_ENOMEM;
        else {
            db->wal.dones = nd;
            db->wal.cap_dones = nc;
        }
    }
    if (!rc) {
        uint8_t *p = rec + 8;
        for (size_t i = 0; i < n; i++) {
            const tsdb_value *v = &pts[i].v;
            p[0] = 'P';
            tsdb_put64(p + 1, ser[i]->id);
            tsdb_put64(p + 9, (uint64_t)pts[i].ts);
            p += 17;
            switch (v->type) {
            case TSDB_BOOL: *p++ = v->u.b ? 1 : 0; break;
            case TSDB_STRING:
                tsdb_put32(p, v->u.s.n);
                if (v->u.s.n) memcpy(p + 4, v->u.s.p, v->u.s.n);
                p += 4 + v->u.s.n;
                break;
            default: tsdb_put64(p, value_bits(v)); p += 8;
            }
        }
        tsdb_wal_commit(db, rec, wal_len);
        if (done && db->o.fsync == TSDB_FSYNC_ALWAYS)
            db->wal.dones[db->wal.ndones++] = (tsdb_done){done, ctx};
    }
    pthread_mutex_unlock(&db->wal.mu);
    if (rc) goto out;

    pthread_mutex_t *held = NULL;
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (size_t i = 0; i < n; i++) {
        if (pts[i].ts < lo) lo = pts[i].ts;
        if (pts[i].ts > hi) hi = pts[i].ts;
        pthread_mutex_t *m = tsdb_stripe(db, ser[i]);
        if (m != held) {
            if (held) pthread_mutex_unlock(held);
            pthread_mutex_lock(m);
            held = m;
        }
        const tsdb_value *v = &pts[i].v;
        if (tsdb_head_append(db, ser[i], pts[i].ts, value_bits(v),
                             v->type == TSDB_STRING ? v->u.s.p : NULL,
                             v->type == TSDB_STRING ? v->u.s.n : 0))
            log_error(TSDB_MOD, "out of memory appending to the head (the point is in the WAL)");
    }
    if (held) pthread_mutex_unlock(held);
    /* Shared counters once per call, not per point (cache-line traffic). */
    tsdb_head_note(db, n, lo, hi);
out:
    pthread_rwlock_unlock(&db->cut);
    if (ser != stack) free(ser);
    if (rc) {
        atomic_fetch_add(&db->points_rejected, n);
        metrics_tsdb_rejected(backlog ? METRICS_REJECT_WAL_BACKLOG : metrics_reject_of(rc, false),
                              n);
        return rc;
    }
    atomic_fetch_add(&db->points_written, n);
    tsdb_write_fn obs = atomic_load_explicit(&db->on_write, memory_order_acquire);
    if (obs) obs(atomic_load_explicit(&db->on_write_ctx, memory_order_relaxed), tenant, pts, n);
    metrics_tsdb_written(tenant, n);
    if (done && db->o.fsync == TSDB_FSYNC_EVERYSEC) done(ctx, THZ_OK);
    if (atomic_load(&db->head_points) > TSDB_HEAD_MAX) pthread_cond_signal(&db->bg_cv);
    return THZ_OK;
}

void tsdb_on_write(tsdb *db, tsdb_write_fn fn, void *ctx)
{
    if (fn) atomic_store_explicit(&db->on_write_ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&db->on_write, fn, memory_order_release);
}

/* ---- reading: head snapshot + blocks, merged per window ---- */

typedef struct mpt {
    int64_t ts;
    uint64_t v;
    uint64_t ord; /* priority: higher wins among equal timestamps */
} mpt;

static int mpt_cmp(const void *a, const void *b)
{
    const mpt *x = a, *y = b;
    if (x->ts != y->ts) return x->ts < y->ts ? -1 : 1;
    return x->ord < y->ord ? -1 : x->ord > y->ord;
}

typedef struct scan_ops {
    /* Points of one window, sorted and deduplicated; strings index arena. */
    bool (*points)(void *ctx, const int64_t *ts, const uint64_t *v, size_t n, const thz_buf *arena);
    /* A window whose only source is one block: true when handled without
     * decoding (aggregates from headers/rollups). May be NULL. */
    bool (*whole)(void *ctx, const tsdb_block *b, const tsdb_bentry *e);
    /* Aggregates only (may be NULL): the bin a head cell with points from
     * first to last can be merged into whole (-1: read its points), and the
     * merge. */
    long (*cell_bin)(void *ctx, int64_t first, int64_t last);
    void (*cell)(void *ctx, long bin, const tsdb_agg *a);
    void *ctx;
} scan_ops;

static void run_copy(const tsdb_run *r, int64_t t0, int64_t t1, mpt **out, size_t *n, size_t *cap,
                     thz_buf *arena, bool is_str, uint64_t ord_base)
{
    for (uint32_t i = 0; i < r->n; i++) {
        if (r->ts[i] < t0 || r->ts[i] >= t1) continue;
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 256;
            mpt *np = realloc(*out, nc * sizeof *np);
            if (!np) return;
            *out = np;
            *cap = nc;
        }
        uint64_t v = r->v[i];
        if (is_str) {
            uint32_t len = (uint32_t)v;
            uint64_t off = arena->len;
            if (thz_buf_append(arena, r->str.p + (v >> 32), len)) return;
            v = off << 32 | len;
        }
        (*out)[(*n)++] = (mpt){r->ts[i], v, ord_base + i};
    }
}

#define ORD_HEAD   (3ull << 62)
#define ORD_FROZEN (2ull << 62)

/* References the blocks holding s in [t0, t1) (sorted by window, seq);
 * returns the publish generation they were listed at. Caller holds blk_mu. */
static uint64_t list_blocks(tsdb *db, tsdb_ser *s, int64_t t0, int64_t t1, tsdb_block ***blp,
                            const tsdb_bentry ***bep, size_t *nbp, bool *okp)
{
    tsdb_block **bl = NULL;
    const tsdb_bentry **be = NULL;
    size_t nb = 0;
    if (db->nblocks) {
        bl = malloc(db->nblocks * sizeof *bl);
        be = malloc(db->nblocks * sizeof *be);
    }
    for (size_t i = 0; bl && be && i < db->nblocks; i++) {
        tsdb_block *b = db->blocks[i];
        if (b->tenant != s->tenant || b->max_ts < t0 || b->min_ts >= t1) continue;
        const tsdb_bentry *e = tsdb_block_find(b, s->id);
        if (!e || e->last_ts < t0 || e->first_ts >= t1) continue;
        atomic_fetch_add(&b->refs, 1);
        bl[nb] = b;
        be[nb++] = e;
    }
    *blp = bl;
    *bep = be;
    *nbp = nb;
    if (okp) *okp = !db->nblocks || (bl && be);
    return db->blk_gen;
}

static bool mpt_push(mpt **out, size_t *n, size_t *cap, mpt m)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        mpt *np = realloc(*out, nc * sizeof *np);
        if (!np) return false;
        *out = np;
        *cap = nc;
    }
    (*out)[(*n)++] = m;
    return true;
}

typedef struct cell_use {
    long bin;
    tsdb_agg a;
} cell_use;

static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

static bool win_listed(tsdb_block *const *bl, size_t nb, int64_t win)
{
    for (size_t i = 0; i < nb; i++)
        if (bl[i]->win == win) return true;
    return false;
}

/* Sorts a numeric head and drops replaced duplicates (the last write wins),
 * then rebuilds its cells: after out-of-order points too far back to be put
 * in place. Caller holds the stripe lock. */
static bool head_normalize(tsdb_ser *s)
{
    tsdb_run *r = &s->head;
    mpt *m = malloc((r->n ? r->n : 1) * sizeof *m);
    if (!m) return false;
    for (uint32_t i = 0; i < r->n; i++) m[i] = (mpt){r->ts[i], r->v[i], i};
    if (r->n > 1) qsort(m, r->n, sizeof *m, mpt_cmp);
    uint32_t o = 0;
    for (uint32_t i = 0; i < r->n; i++) {
        if (o && r->ts[o - 1] == m[i].ts) {
            r->v[o - 1] = m[i].v;
        } else {
            r->ts[o] = m[i].ts;
            r->v[o++] = m[i].v;
        }
    }
    r->n = o;
    free(m);
    tsdb_cells_rebuild(s);
    return true;
}

/* Aggregates over the head from its cells (caller holds the stripe lock, the
 * series is numeric, its head sorted, frozen empty, the cells whole): the cells
 * whose points all lie in [t0, t1) and in one bin (ops->cell_bin), clean, in a window no
 * listed block holds go to *cu; the head points of every other minute in
 * range to *h. false: out of memory. */
static bool head_cells(tsdb_ser *s, int64_t t0, int64_t t1, const scan_ops *ops,
                       tsdb_block *const *bl, size_t nb, cell_use **cu, size_t *ncu, mpt **h,
                       size_t *nh, size_t *caph)
{
    const tsdb_run *r = &s->head;
    size_t capcu = 0;
    uint32_t c0 = 0;
    /* the cells overlapping the range: from the first with m + 1 min > t0 */
    {
        uint32_t lo = 0, hi = s->ncells;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (sat_add(s->cells[mid].m, TSDB_MINUTE_NS) <= t0)
                lo = mid + 1;
            else
                hi = mid;
        }
        c0 = lo;
    }
    uint32_t c1 = c0;
    while (c1 < s->ncells && s->cells[c1].m < t1) c1++;
    int64_t lastwin = INT64_MIN;
    bool lastlisted = false;
    for (uint32_t i = c0; i < c1; i++) {
        const tsdb_cell *c = &s->cells[i];
        if (!c->a.count) continue;
        long bin = -1;
        int64_t cend = sat_add(c->m, TSDB_MINUTE_NS);
        /* every point of the cell in range (the minute may not be: the
         * current one ends after now) */
        if (!c->dirty && c->a.first_ts >= t0 && c->a.last_ts < t1) {
            int64_t w = tsdb_window_of(c->m);
            if (w != lastwin) {
                lastwin = w;
                lastlisted = win_listed(bl, nb, w);
            }
            if (!lastlisted) bin = ops->cell_bin(ops->ctx, c->a.first_ts, c->a.last_ts);
        }
        if (bin >= 0) {
            if (*ncu == capcu) {
                size_t nc = capcu ? capcu * 2 : 64;
                cell_use *n2 = realloc(*cu, nc * sizeof *n2);
                if (!n2) return false;
                *cu = n2;
                capcu = nc;
            }
            (*cu)[(*ncu)++] = (cell_use){bin, c->a};
            continue;
        }
        int64_t a = c->m < t0 ? t0 : c->m;
        int64_t b = cend > t1 ? t1 : cend;
        for (uint32_t k = head_lower(r, a); k < r->n && r->ts[k] < b; k++)
            if (!mpt_push(h, nh, caph, (mpt){r->ts[k], r->v[k], ORD_HEAD + k})) return false;
    }
    return true;
}

static thz_err scan(tsdb *db, tsdb_ser *s, int64_t t0, int64_t t1, const scan_ops *ops)
{
    if (t0 >= t1) return THZ_OK;
    bool is_str = s->type == TSDB_STRING;
    mpt *h = NULL;
    size_t nh = 0, caph = 0;
    thz_buf harena = {0};
    tsdb_block **bl = NULL;
    const tsdb_bentry **be = NULL;
    size_t nb = 0;
    if (ops->cell_bin && !is_str) {
        /* Aggregates from the head cells. The blocks are listed first (the
         * cells of a window a block holds cannot be used: its points and the
         * head's are merged point by point); a publish between the listing
         * and the head snapshot could have moved head points into a block
         * not listed, so the generation is checked after. */
        cell_use *cu = NULL;
        size_t ncu = 0;
        pthread_rwlock_rdlock(&db->blk_mu);
        bool listed;
        uint64_t gen = list_blocks(db, s, t0, t1, &bl, &be, &nb, &listed);
        pthread_rwlock_unlock(&db->blk_mu);
        bool ok = false, mem = true;
        pthread_mutex_lock(tsdb_stripe(db, s));
        if (s->frozen.n == 0 && !s->head_sorted) head_normalize(s);
        if (s->frozen.n == 0 && s->cells_ok && s->head_sorted && listed) {
            ok = true;
            mem = head_cells(s, t0, t1, ops, bl, nb, &cu, &ncu, &h, &nh, &caph);
        }
        pthread_mutex_unlock(tsdb_stripe(db, s));
        if (ok) {
            pthread_rwlock_rdlock(&db->blk_mu);
            if (db->blk_gen != gen) ok = false;
            pthread_rwlock_unlock(&db->blk_mu);
        }
        if (ok && !mem) {
            for (size_t i = 0; i < nb; i++) tsdb_block_unref(bl[i]);
            free(bl);
            free(be);
            free(cu);
            free(h);
            return THZ_ENOMEM;
        }
        if (ok) {
            for (size_t i = 0; i < ncu; i++) ops->cell(ops->ctx, cu[i].bin, &cu[i].a);
            free(cu);
            goto have;
        }
        /* not usable: read every point */
        free(cu);
        for (size_t i = 0; i < nb; i++) tsdb_block_unref(bl[i]);
        free(bl);
        free(be);
        bl = NULL;
        be = NULL;
        nb = 0;
        nh = 0;
    }
    /* The head and frozen points in range, copied under the stripe lock. */
    pthread_mutex_lock(tsdb_stripe(db, s));
    run_copy(&s->frozen, t0, t1, &h, &nh, &caph, &harena, is_str, ORD_FROZEN);
    run_copy(&s->head, t0, t1, &h, &nh, &caph, &harena, is_str, ORD_HEAD);
    pthread_mutex_unlock(tsdb_stripe(db, s));
    /* The blocks holding the series in range, referenced. */
    pthread_rwlock_rdlock(&db->blk_mu);
    list_blocks(db, s, t0, t1, &bl, &be, &nb, NULL);
    pthread_rwlock_unlock(&db->blk_mu);
have:
    if (nh > 1) qsort(h, nh, sizeof *h, mpt_cmp);

    thz_err rc = THZ_OK;
    size_t hi = 0, bi = 0;
    mpt *w = NULL;
    size_t capw = 0;
    thz_buf arena = {0};
    int64_t *ots = NULL;
    uint64_t *ov = NULL;
    bool go = true;
    while (go && (hi < nh || bi < nb)) {
        int64_t win = INT64_MAX;
        if (bi < nb) win = bl[bi]->win;
        if (hi < nh && tsdb_window_of(h[hi].ts) < win) win = tsdb_window_of(h[hi].ts);
        size_t bj = bi, hj = hi;
        while (bj < nb && bl[bj]->win == win) bj++;
        while (hj < nh && tsdb_window_of(h[hj].ts) == win) hj++;
        if (bj - bi == 1 && hj == hi && ops->whole && ops->whole(ops->ctx, bl[bi], be[bi])) {
            bi = bj;
            continue;
        }
        size_t nw = 0;
        arena.len = 0;
        for (size_t k = bi; k < bj && !rc; k++) {
            int64_t *ts;
            uint64_t *v;
            size_t n;
            size_t abase = arena.len;
            rc = tsdb_block_read(bl[k], be[k], &ts, &v, &n, &arena);
            if (rc == THZ_ECORRUPT) {
                /* a damaged section loses its points, not the query: the
                 * rest of the block and every other block still serve */
                log_warn(TSDB_MOD, "%s: series %" PRIu64 ": corrupt section skipped", bl[k]->path,
                         s->id);
                rc = THZ_OK;
                continue;
            }
            if (rc) {
                log_error(TSDB_MOD, "%s: series %" PRIu64 ": %s", bl[k]->path, s->id,
                          thz_strerror(rc));
                break;
            }
            (void)abase;
            if (nw + n > capw) {
                size_t nc = capw ? capw : 1024;
                while (nc < nw + n) nc *= 2;
                mpt *nwp = realloc(w, nc * sizeof *nwp);
                if (!nwp)
                    rc = THZ_ENOMEM;
                else {
                    w = nwp;
                    capw = nc;
                }
            }
            for (size_t i = 0; !rc && i < n; i++)
                if (ts[i] >= t0 && ts[i] < t1)
                    w[nw++] = (mpt){ts[i], v[i], ((uint64_t)(k - bi) << 40) + i};
            free(ts);
            free(v);
        }
        if (rc) break;
        if (nw + (hj - hi) > capw) {
            size_t nc = capw ? capw : 1024;
            while (nc < nw + (hj - hi)) nc *= 2;
            mpt *nwp = realloc(w, nc * sizeof *nwp);
            if (!nwp) {
                rc = THZ_ENOMEM;
                break;
            }
            w = nwp;
            capw = nc;
        }
        for (size_t i = hi; i < hj; i++) {
            mpt m = h[i];
            if (is_str) {
                uint32_t len = (uint32_t)m.v;
                uint64_t off = arena.len;
                if (thz_buf_append(&arena, harena.p + (m.v >> 32), len)) {
                    rc = THZ_ENOMEM;
                    break;
                }
                m.v = off << 32 | len;
            }
            w[nw++] = m;
        }
        if (rc) break;
        if (nw > 1) qsort(w, nw, sizeof *w, mpt_cmp);
        /* Keep the last of every run of equal timestamps. */
        size_t o = 0;
        for (size_t i = 0; i < nw; i++) {
            if (o && w[o - 1].ts == w[i].ts)
                w[o - 1] = w[i];
            else
                w[o++] = w[i];
        }
        if (!ots) {
            ots = malloc(TSDB_BATCH * sizeof *ots);
            ov = malloc(TSDB_BATCH * sizeof *ov);
            if (!ots || !ov) {
                rc = THZ_ENOMEM;
                break;
            }
        }
        for (size_t i = 0; i < o && go; i += TSDB_BATCH) {
            size_t m = o - i < TSDB_BATCH ? o - i : TSDB_BATCH;
            for (size_t k = 0; k < m; k++) {
                ots[k] = w[i + k].ts;
                ov[k] = w[i + k].v;
            }
            go = ops->points(ops->ctx, ots, ov, m, &arena);
        }
        bi = bj;
        hi = hj;
    }
    for (size_t i = 0; i < nb; i++) tsdb_block_unref(bl[i]);
    free(bl);
    free(be);
    free(h);
    free(w);
    free(ots);
    free(ov);
    thz_buf_free(&arena);
    thz_buf_free(&harena);
    return rc;
}

typedef struct read_ctx {
    tsdb_type type;
    tsdb_points_fn fn;
    void *ctx;
    tsdb_value *vals;
} read_ctx;

static void to_value(tsdb_type type, uint64_t v, const thz_buf *arena, tsdb_value *out)
{
    out->type = type;
    switch (type) {
    case TSDB_FLOAT: memcpy(&out->u.f, &v, 8); break;
    case TSDB_INT: out->u.i = (int64_t)v; break;
    case TSDB_BOOL: out->u.b = v != 0; break;
    default:
        out->u.s.p = arena && arena->p ? (const char *)arena->p + (v >> 32) : "";
        out->u.s.n = (uint32_t)v;
    }
}

static bool read_points(void *ctx, const int64_t *ts, const uint64_t *v, size_t n,
                        const thz_buf *arena)
{
    read_ctx *c = ctx;
    for (size_t i = 0; i < n; i++) to_value(c->type, v[i], arena, &c->vals[i]);
    return c->fn(c->ctx, ts, c->vals, n);
}

thz_err tsdb_read(tsdb *db, int64_t tenant, uint64_t series, int64_t t0, int64_t t1,
                  tsdb_points_fn fn, void *ctx)
{
    if (!db || !fn) return THZ_EINVAL;
    tsdb_ser *s = tsdb_ser_get(db, tenant, series);
    if (!s) return THZ_ENOTFOUND;
    read_ctx rc = {s->type, fn, ctx, malloc(TSDB_BATCH * sizeof(tsdb_value))};
    if (!rc.vals) return THZ_ENOMEM;
    scan_ops ops = {read_points, NULL, NULL, NULL, &rc};
    thz_err r = scan(db, s, t0, t1, &ops);
    free(rc.vals);
    return r;
}

/* ---- aggregate ---- */

typedef struct agg_ctx {
    tsdb *db;
    tsdb_type type;
    int64_t t0, t1, step;
    int64_t origin; /* bin i starts at origin + i * step; origin <= t0 */
    tsdb_agg *out;
    size_t nbins;
    uint64_t decoded; /* points decoded (tests check the rollups are used) */
} agg_ctx;

/* The bin of ts, or -1 outside [t0, t1) or past the last bin. */
static long bin_of(const agg_ctx *c, int64_t ts)
{
    if (ts < c->t0 || ts >= c->t1) return -1;
    if (c->step <= 0) return 0;
    uint64_t b = ((uint64_t)ts - (uint64_t)c->origin) / (uint64_t)c->step;
    return b < c->nbins ? (long)b : -1;
}

static void agg_merge(tsdb_agg *a, const tsdb_agg *x)
{
    if (!x->count) return;
    if (!a->count) {
        *a = *x;
        return;
    }
    a->count += x->count;
    a->sum += x->sum;
    if (x->min < a->min) a->min = x->min;
    if (x->max > a->max) a->max = x->max;
    if (x->first_ts < a->first_ts) {
        a->first_ts = x->first_ts;
        a->first = x->first;
    }
    if (x->last_ts >= a->last_ts) {
        a->last_ts = x->last_ts;
        a->last = x->last;
    }
}

static bool agg_points(void *ctx, const int64_t *ts, const uint64_t *v, size_t n,
                       const thz_buf *arena)
{
    agg_ctx *c = ctx;
    c->decoded += n;
    atomic_fetch_add(&c->db->agg_decoded, n);
    for (size_t i = 0; i < n; i++) {
        long b = bin_of(c, ts[i]);
        if (b < 0) continue;
        double d = as_double(c->type, v[i]);
        tsdb_agg x = {1, d, d, d, d, d, ts[i], ts[i]};
        agg_merge(&c->out[b], &x);
    }
    return true;
}

static bool agg_whole(void *ctx, const tsdb_block *b, const tsdb_bentry *e)
{
    agg_ctx *c = ctx;
    long b0 = bin_of(c, e->first_ts), b1 = bin_of(c, e->last_ts);
    if (b0 >= 0 && b0 == b1) {
        tsdb_agg x = {e->count, e->sum, e->min, e->max, e->first, e->last, e->first_ts, e->last_ts};
        agg_merge(&c->out[b0], &x);
        return true;
    }
    if (!e->roll_len) return false;
    tsdb_agg *cells;
    int64_t *starts;
    size_t n;
    if (tsdb_block_rollup(b, e, &cells, &starts, &n)) return false;
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        long x0 = bin_of(c, cells[i].first_ts), x1 = bin_of(c, cells[i].last_ts);
        /* A cell that straddles a bin or the range edge needs the points. */
        if (x0 != x1 || (x0 < 0 && (cells[i].last_ts >= c->t0 && cells[i].first_ts < c->t1)))
            ok = false;
    }
    for (size_t i = 0; i < n && ok; i++) {
        long x0 = bin_of(c, cells[i].first_ts);
        if (x0 >= 0) agg_merge(&c->out[x0], &cells[i]);
    }
    free(cells);
    free(starts);
    return ok;
}

static long agg_cell_bin(void *ctx, int64_t first, int64_t last)
{
    agg_ctx *c = ctx;
    long b0 = bin_of(c, first), b1 = bin_of(c, last);
    return b0 >= 0 && b0 == b1 ? b0 : -1;
}

static void agg_cell(void *ctx, long bin, const tsdb_agg *a)
{
    agg_ctx *c = ctx;
    agg_merge(&c->out[bin], a);
}

thz_err tsdb_aggregate_from(tsdb *db, int64_t tenant, uint64_t series, int64_t t0, int64_t t1,
                            int64_t origin, int64_t step, tsdb_agg *out, size_t nbins)
{
    if (!db || !out || nbins == 0 || step < 0 || (step && origin > t0)) return THZ_EINVAL;
    tsdb_ser *s = tsdb_ser_get(db, tenant, series);
    if (!s) return THZ_ENOTFOUND;
    if (s->type == TSDB_STRING) return THZ_EINVAL;
    memset(out, 0, nbins * sizeof *out);
    agg_ctx c = {db, s->type, t0, t1, step, step ? origin : t0, out, step ? nbins : 1, 0};
    /* Only the bins asked for are scanned. */
    int64_t span, end = t1;
    if (step && !__builtin_mul_overflow(step, (int64_t)nbins, &span) &&
        !__builtin_add_overflow(c.origin, span, &end) && end > t1)
        end = t1;
    scan_ops ops = {agg_points, agg_whole, agg_cell_bin, agg_cell, &c};
    return scan(db, s, t0, end, &ops);
}

thz_err tsdb_aggregate(tsdb *db, int64_t tenant, uint64_t series, int64_t t0, int64_t t1,
                       int64_t step, tsdb_agg *out, size_t nbins)
{
    return tsdb_aggregate_from(db, tenant, series, t0, t1, t0, step, out, nbins);
}

int64_t tsdb_max_ts(tsdb *db)
{
    int64_t m = atomic_load(&db->max_ts);
    pthread_rwlock_rdlock(&db->blk_mu);
    for (size_t i = 0; i < db->nblocks; i++)
        if (db->blocks[i]->max_ts > m) m = db->blocks[i]->max_ts;
    pthread_rwlock_unlock(&db->blk_mu);
    return m;
}

/* ---- last ---- */

typedef struct last_ctx {
    tsdb_type type;
    int64_t ts;
    uint64_t v;
    char *s;
    uint32_t sl;
    bool got;
} last_ctx;

static bool last_points(void *ctx, const int64_t *ts, const uint64_t *v, size_t n,
                        const thz_buf *arena)
{
    last_ctx *c = ctx;
    if (!n) return true;
    c->got = true;
    c->ts = ts[n - 1];
    c->v = v[n - 1];
    if (c->type == TSDB_STRING) {
        free(c->s);
        c->sl = (uint32_t)c->v;
        c->s = malloc(c->sl ? c->sl : 1);
        if (c->s && c->sl) memcpy(c->s, arena->p + (c->v >> 32), c->sl);
    }
    return true;
}

thz_err tsdb_last(tsdb *db, int64_t tenant, uint64_t series, tsdb_points_fn fn, void *ctx)
{
    if (!db || !fn) return THZ_EINVAL;
    tsdb_ser *s = tsdb_ser_get(db, tenant, series);
    if (!s) return THZ_ENOTFOUND;
    last_ctx c = {.type = s->type};
    pthread_mutex_lock(tsdb_stripe(db, s));
    bool cached = s->lvc_ok && s->lvc_ts >= s->blk_last_ts;
    int64_t blk_last = s->blk_last_ts;
    if (cached) {
        c.got = true;
        c.ts = s->lvc_ts;
        c.v = s->lvc_v;
        c.sl = s->lvc_slen;
        if (s->type == TSDB_STRING) {
            c.s = malloc(c.sl ? c.sl : 1);
            if (c.s && c.sl) memcpy(c.s, s->lvc_s, c.sl);
        }
    }
    pthread_mutex_unlock(tsdb_stripe(db, s));
    if (!cached && blk_last != INT64_MIN) {
        scan_ops ops = {last_points, NULL, NULL, NULL, &c};
        thz_err rc = scan(db, s, blk_last, blk_last + 1, &ops);
        if (rc) {
            free(c.s);
            return rc;
        }
        if (c.got) {
            pthread_mutex_lock(tsdb_stripe(db, s));
            if (!s->lvc_ok || s->lvc_ts <= c.ts) lvc_set(s, c.ts, c.v, c.s, c.sl);
            pthread_mutex_unlock(tsdb_stripe(db, s));
        }
    }
    if (c.got) {
        tsdb_value v;
        v.type = s->type;
        if (s->type == TSDB_STRING) {
            v.u.s.p = c.s ? c.s : "";
            v.u.s.n = c.s ? c.sl : 0;
        } else {
            to_value(s->type, c.v, NULL, &v);
        }
        fn(ctx, &c.ts, &v, 1);
    }
    free(c.s);
    return THZ_OK;
}

/* ---- the cut: head -> blocks, checkpoint ---- */

typedef struct cut_ser {
    tsdb_ser *s;
    int64_t *ts; /* sorted, deduplicated */
    uint64_t *v;
    size_t n;
} cut_ser;

static int cut_cmp(const void *a, const void *b)
{
    const cut_ser *x = a, *y = b;
    if (x->s->tenant != y->s->tenant) return x->s->tenant < y->s->tenant ? -1 : 1;
    int c = strcmp(x->s->device, y->s->device);
    if (c) return c;
    return x->s->id < y->s->id ? -1 : x->s->id > y->s->id;
}

static int i64_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int blk_cmp(const void *a, const void *b)
{
    const tsdb_block *x = *(tsdb_block *const *)a, *y = *(tsdb_block *const *)b;
    if (x->win != y->win) return x->win < y->win ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void blocks_publish(tsdb *db, tsdb_block **add, size_t nadd, tsdb_block **drop, size_t ndrop)
{
    pthread_rwlock_wrlock(&db->blk_mu);
    db->blk_gen++;
    size_t o = 0;
    for (size_t i = 0; i < db->nblocks; i++) {
        bool gone = false;
        for (size_t k = 0; k < ndrop; k++)
            if (db->blocks[i] == drop[k]) gone = true;
        if (gone) {
            db->blocks[i]->dead = true;
            unlink(db->blocks[i]->path); /* readers keep their descriptor */
            tsdb_block_unref(db->blocks[i]);
        } else {
            db->blocks[o++] = db->blocks[i];
        }
    }
    db->nblocks = o;
    if (db->nblocks + nadd > db->cap_blocks) {
        size_t nc = db->cap_blocks ? db->cap_blocks : 64;
        while (nc < db->nblocks + nadd) nc *= 2;
        tsdb_block **nb = realloc(db->blocks, nc * sizeof *nb);
        if (!nb) {
            pthread_rwlock_unlock(&db->blk_mu);
            log_error(TSDB_MOD, "out of memory publishing blocks");
            return;
        }
        db->blocks = nb;
        db->cap_blocks = nc;
    }
    for (size_t i = 0; i < nadd; i++) db->blocks[db->nblocks++] = add[i];
    if (db->nblocks > 1) qsort(db->blocks, db->nblocks, sizeof *db->blocks, blk_cmp);
    pthread_rwlock_unlock(&db->blk_mu);
}

static uint64_t next_seq(tsdb *db)
{
    pthread_rwlock_wrlock(&db->blk_mu);
    uint64_t s = db->next_seq++;
    pthread_rwlock_unlock(&db->blk_mu);
    return s;
}

/* Writes the blocks of cs[0..n) (sorted by tenant, device) for points < end. */
static thz_err write_blocks(tsdb *db, cut_ser *cs, size_t n, int64_t end)
{
    thz_err rc = THZ_OK;
    size_t i = 0;
    while (i < n && !rc) {
        size_t j = i;
        while (j < n && cs[j].s->tenant == cs[i].s->tenant) j++;
        /* The windows this tenant has points in. */
        int64_t *wins = NULL;
        size_t nw = 0, capw = 0;
        for (size_t k = i; k < j; k++) {
            int64_t last = INT64_MIN;
            for (size_t p = 0; p < cs[k].n && cs[k].ts[p] < end; p++) {
                int64_t w = tsdb_window_of(cs[k].ts[p]);
                if (w == last) continue;
                last = w;
                if (nw == capw) {
                    capw = capw ? capw * 2 : 16;
                    int64_t *nwp = realloc(wins, capw * sizeof *nwp);
                    if (!nwp) {
                        free(wins);
                        return THZ_ENOMEM;
                    }
                    wins = nwp;
                }
                wins[nw++] = w;
            }
        }
        if (nw) qsort(wins, nw, sizeof *wins, i64_cmp);
        tsdb_bser *bs = malloc((j - i) * sizeof *bs);
        size_t *pos = calloc(j - i, sizeof *pos);
        if (!bs || !pos) rc = THZ_ENOMEM;
        for (size_t wi = 0; wi < nw && !rc; wi++) {
            if (wi && wins[wi] == wins[wi - 1]) continue;
            int64_t w = wins[wi], we = w + TSDB_WINDOW_NS;
            size_t nb = 0;
            for (size_t k = i; k < j; k++) {
                size_t p = pos[k - i];
                while (p < cs[k].n && cs[k].ts[p] < w) p++;
                size_t q = p;
                while (q < cs[k].n && cs[k].ts[q] < we && cs[k].ts[q] < end) q++;
                pos[k - i] = q;
                if (q == p) continue;
                bs[nb++] =
                    (tsdb_bser){cs[k].s, cs[k].ts + p, cs[k].v + p, cs[k].s->frozen.str.p, q - p};
            }
            tsdb_block *b;
            rc = tsdb_block_write(db, cs[i].s->tenant, w, next_seq(db), bs, nb, &b);
            if (rc) break;
            blocks_publish(db, &b, 1, NULL, 0);
            for (size_t k = 0; k < nb; k++) {
                tsdb_ser *s = bs[k].s;
                pthread_mutex_lock(tsdb_stripe(db, s));
                if (bs[k].ts[bs[k].n - 1] > s->blk_last_ts) s->blk_last_ts = bs[k].ts[bs[k].n - 1];
                pthread_mutex_unlock(tsdb_stripe(db, s));
            }
        }
        free(bs);
        free(pos);
        free(wins);
        i = j;
    }
    return rc;
}

/* Sorts and deduplicates a frozen run into fresh arrays. */
static thz_err sort_run(const tsdb_run *r, cut_ser *out)
{
    mpt *m = malloc((r->n ? r->n : 1) * sizeof *m);
    out->ts = malloc((r->n ? r->n : 1) * sizeof *out->ts);
    out->v = malloc((r->n ? r->n : 1) * sizeof *out->v);
    if (!m || !out->ts || !out->v) {
        free(m);
        return THZ_ENOMEM;
    }
    bool sorted = true; /* the usual case: numeric heads are kept sorted */
    for (uint32_t i = 1; i < r->n && sorted; i++) sorted = r->ts[i] > r->ts[i - 1];
    if (sorted) {
        if (r->n) {
            memcpy(out->ts, r->ts, r->n * sizeof *r->ts);
            memcpy(out->v, r->v, r->n * sizeof *r->v);
        }
        out->n = r->n;
        free(m);
        return THZ_OK;
    }
    for (uint32_t i = 0; i < r->n; i++) m[i] = (mpt){r->ts[i], r->v[i], i};
    if (r->n) qsort(m, r->n, sizeof *m, mpt_cmp);
    size_t o = 0;
    for (uint32_t i = 0; i < r->n; i++) {
        if (o && out->ts[o - 1] == m[i].ts)
            out->v[o - 1] = m[i].v;
        else {
            out->ts[o] = m[i].ts;
            out->v[o++] = m[i].v;
        }
    }
    out->n = o;
    free(m);
    return THZ_OK;
}

/* Cuts the head: points < end go to blocks, the rest stay. Caller holds maint. */
static thz_err cut(tsdb *db, int64_t end)
{
    cut_ser *cs = NULL;
    size_t n = 0;
    pthread_rwlock_wrlock(&db->cut);
    pthread_mutex_lock(&db->wal.mu);
    uint64_t gen = tsdb_wal_mark_rotation(db);
    pthread_mutex_unlock(&db->wal.mu);
    pthread_rwlock_rdlock(&db->idx);
    size_t cap = 0;
    for (uint64_t id = 1; id < db->next_id; id++) {
        tsdb_ser *s = db->by_id[id];
        if (!s) continue;
        pthread_mutex_lock(tsdb_stripe(db, s));
        if (s->head.n) {
            if (n == cap) {
                cap = cap ? cap * 2 : 1024;
                cut_ser *nc = realloc(cs, cap * sizeof *nc);
                if (!nc) {
                    pthread_mutex_unlock(tsdb_stripe(db, s));
                    break; /* the rest stays in the head for the next cut */
                }
                cs = nc;
            }
            s->frozen = s->head;
            memset(&s->head, 0, sizeof s->head);
            s->ncells = 0; /* the frozen points are read as points */
            s->cells_ok = true;
            s->head_sorted = true;
            cs[n++] = (cut_ser){s, NULL, NULL, 0};
        }
        pthread_mutex_unlock(tsdb_stripe(db, s));
    }
    pthread_rwlock_unlock(&db->idx);
    atomic_store(&db->head_points, 0);
    atomic_store(&db->head_min_ts, INT64_MAX);
    pthread_rwlock_unlock(&db->cut);

    uint64_t closed = tsdb_wal_wait_rot(db, gen);
    /* closed 0: the WAL could not write up to the rotation (disk full): the
     * segments do not hold exactly these points, so no block is cut now */
    thz_err rc = closed ? THZ_OK : db->wal.fail_rc ? db->wal.fail_rc : THZ_EIO;
    for (size_t i = 0; i < n && !rc; i++) rc = sort_run(&cs[i].s->frozen, &cs[i]);
    if (!rc && n) {
        if (n > 1) qsort(cs, n, sizeof *cs, cut_cmp);
        rc = write_blocks(db, cs, n, end);
    }
    /* Put back what stays in the head (newer than end, or everything when
     * writing failed), ahead of what writers appended meanwhile. */
    thz_buf ck = {0}, payload = {0};
    for (size_t i = 0; i < n; i++) {
        tsdb_ser *s = cs[i].s;
        size_t from = 0;
        if (!rc)
            while (from < cs[i].n && cs[i].ts[from] < end) from++;
        size_t keep = cs[i].n - from;
        pthread_mutex_lock(tsdb_stripe(db, s));
        if (keep) {
            tsdb_run nr = {0};
            if (run_grow(&nr, (uint32_t)(keep + s->head.n)) == THZ_OK) {
                for (size_t k = from; k < cs[i].n; k++) {
                    uint64_t v = cs[i].v[k];
                    if (s->type == TSDB_STRING) {
                        uint32_t len = (uint32_t)v;
                        uint64_t off = nr.str.len;
                        thz_buf_append(&nr.str, s->frozen.str.p + (v >> 32), len);
                        v = off << 32 | len;
                    }
                    nr.ts[nr.n] = cs[i].ts[k];
                    nr.v[nr.n++] = v;
                    atomic_min(&db->head_min_ts, cs[i].ts[k]);
                    if (!rc) {
                        if (payload.len > (1u << 20)) {
                            tsdb_wal_frame(&ck, &payload);
                            payload.len = 0;
                        }
                        tsdb_wal_put_point(&payload, s, cs[i].ts[k], v, &nr.str);
                    }
                }
                for (uint32_t k = 0; k < s->head.n; k++) {
                    uint64_t v = s->head.v[k];
                    if (s->type == TSDB_STRING) {
                        uint32_t len = (uint32_t)v;
                        uint64_t off = nr.str.len;
                        thz_buf_append(&nr.str, s->head.str.p + (v >> 32), len);
                        v = off << 32 | len;
                    }
                    nr.ts[nr.n] = s->head.ts[k];
                    nr.v[nr.n++] = v;
                }
                free(s->head.ts);
                free(s->head.v);
                thz_buf_free(&s->head.str);
                s->head = nr;
                tsdb_cells_rebuild(s);
                atomic_fetch_add(&db->head_points, keep);
            } else {
                log_error(TSDB_MOD, "out of memory keeping %zu head points", keep);
            }
        }
        free(s->frozen.ts);
        free(s->frozen.v);
        thz_buf_free(&s->frozen.str);
        memset(&s->frozen, 0, sizeof s->frozen);
        pthread_mutex_unlock(tsdb_stripe(db, s));
        free(cs[i].ts);
        free(cs[i].v);
    }
    free(cs);
    if (payload.len) tsdb_wal_frame(&ck, &payload);
    thz_buf_free(&payload);
    /* The WAL segments <= closed are retired only when blocks, index and
     * checkpoint are durable; on failure they stay and replay redoes it. */
    if (!rc) rc = tsdb_idx_persist(db);
    if (!rc) rc = tsdb_wal_checkpoint(db, closed, &ck);
    thz_buf_free(&ck);
    if (rc) log_error(TSDB_MOD, "cut failed: %s (the WAL keeps the data)", thz_strerror(rc));
    return rc;
}

thz_err tsdb_flush(tsdb *db)
{
    if (!db) return THZ_EINVAL;
    pthread_mutex_lock(&db->maint);
    thz_err rc = cut(db, INT64_MAX);
    pthread_mutex_unlock(&db->maint);
    return rc;
}

/* ---- retention ---- */

static thz_err retention_save(tsdb *db)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/retention", db->dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return THZ_EIO;
    pthread_rwlock_rdlock(&db->idx);
    size_t pos = 0;
    hmap_entry *e = NULL;
    while ((e = hmap_next(&db->tenants, &pos, e))) {
        tsdb_tenant *t = e->val;
        if (t->retention_s >= 0) fprintf(f, "%" PRId64 " %" PRId64 "\n", t->id, t->retention_s);
        size_t p2 = 0;
        hmap_entry *e2 = NULL;
        while ((e2 = hmap_next(&t->metric_ret, &p2, e2)))
            fprintf(f, "%" PRId64 " %" PRId64 " %.*s\n", t->id, *(int64_t *)e2->val, (int)e2->klen,
                    (const char *)e2->key);
    }
    pthread_rwlock_unlock(&db->idx);
    bool ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) < 0) {
        unlink(tmp);
        return THZ_EIO;
    }
    return THZ_OK;
}

static thz_err retention_apply(tsdb *db, int64_t tenant, const char *metric, int64_t seconds)
{
    tsdb_tenant *t = tsdb_tenant_get(db, tenant, true);
    if (!t) return THZ_ENOMEM;
    if (!metric) {
        t->retention_s = seconds;
        return THZ_OK;
    }
    size_t ml = strlen(metric);
    int64_t *v = hmap_get(&t->metric_ret, metric, ml);
    if (v) {
        *v = seconds;
        return THZ_OK;
    }
    /* The key lives after the value. */
    v = malloc(sizeof *v + ml);
    if (!v) return THZ_ENOMEM;
    *v = seconds;
    memcpy(v + 1, metric, ml);
    if (hmap_put(&t->metric_ret, v + 1, ml, v, NULL)) {
        free(v);
        return THZ_ENOMEM;
    }
    return THZ_OK;
}

static void retention_load(tsdb *db)
{
    char path[4096], line[512];
    snprintf(path, sizeof path, "%s/retention", db->dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        int64_t t, s;
        char m[300] = "";
        int k = sscanf(line, "%" SCNd64 " %" SCNd64 " %299s", &t, &s, m);
        if (k < 2) continue;
        retention_apply(db, t, k == 3 ? m : NULL, s);
    }
    fclose(f);
}

thz_err tsdb_set_retention(tsdb *db, int64_t tenant, const char *metric, int64_t seconds)
{
    if (!db || seconds < 0 ||
        (metric && (!metric[0] || strlen(metric) > 256 || strpbrk(metric, " \t\r\n"))))
        return THZ_EINVAL;
    pthread_rwlock_wrlock(&db->idx);
    thz_err rc = retention_apply(db, tenant, metric, seconds);
    pthread_rwlock_unlock(&db->idx);
    if (!rc) rc = retention_save(db);
    if (!rc) pthread_cond_signal(&db->bg_cv);
    return rc;
}

thz_err tsdb_get_retention(tsdb *db, int64_t tenant, tsdb_retention_fn fn, void *ctx)
{
    if (!db || !fn) return THZ_EINVAL;
    pthread_rwlock_rdlock(&db->idx);
    tsdb_tenant *t = tsdb_tenant_get(db, tenant, false);
    bool own = t && t->retention_s >= 0;
    fn(ctx, NULL, 0, own ? t->retention_s : db->o.retention_s, own);
    size_t pos = 0;
    hmap_entry *e = NULL;
    while (t && (e = hmap_next(&t->metric_ret, &pos, e)))
        fn(ctx, (const char *)e->key, e->klen, *(int64_t *)e->val, true);
    pthread_rwlock_unlock(&db->idx);
    return THZ_OK;
}

/* Drops whole blocks past their tenant's retention. Caller holds maint. */
static void retention_run(tsdb *db)
{
    int64_t now = wall_ns();
    tsdb_block **drop = NULL;
    size_t nd = 0;
    pthread_rwlock_rdlock(&db->idx);
    pthread_rwlock_rdlock(&db->blk_mu);
    if (db->nblocks) drop = malloc(db->nblocks * sizeof *drop);
    for (size_t i = 0; drop && i < db->nblocks; i++) {
        tsdb_block *b = db->blocks[i];
        tsdb_tenant *t = tsdb_tenant_get(db, b->tenant, false);
        int64_t r = t && t->retention_s >= 0 ? t->retention_s : db->o.retention_s;
        bool expired = r > 0 && b->max_ts < now - r * 1000000000ll;
        /* A block is dropped under a metric's retention when every series
         * in it belongs to metrics whose retention has passed. */
        if (!expired && t && t->metric_ret.n && b->ne) {
            expired = true;
            for (size_t k = 0; k < b->ne && expired; k++) {
                tsdb_ser *s = b->e[k].id < db->cap_id ? db->by_id[b->e[k].id] : NULL;
                int64_t *mr = s ? hmap_get(&t->metric_ret, s->metric, s->mlen) : NULL;
                int64_t rr = mr ? *mr : r;
                if (!(rr > 0 && b->e[k].last_ts < now - rr * 1000000000ll)) expired = false;
            }
        }
        if (expired) drop[nd++] = b;
    }
    pthread_rwlock_unlock(&db->blk_mu);
    pthread_rwlock_unlock(&db->idx);
    if (nd) {
        log_info(TSDB_MOD, "retention: dropping %zu blocks", nd);
        blocks_publish(db, NULL, 0, drop, nd);
    }
    free(drop);
}

/* The data's "now" for cuts and compaction: the newest timestamp written,
 * but never past the wall clock plus a window, so that one device with a
 * clock in the future cannot make every point look old and force a cut a
 * second. (Data entirely in the past, as in tests and benchmarks, is cut
 * by its own time.) */
static int64_t data_now(tsdb *db)
{
    int64_t m = atomic_load(&db->max_ts), lim = wall_ns() + TSDB_WINDOW_NS;
    return m < lim ? m : lim;
}

/* ---- compaction: the blocks of one (tenant, window) into one ---- */

static thz_err compact_one(tsdb *db, tsdb_block **in, size_t nin)
{
    /* Series ids of all inputs, merged: read every series through the
     * inputs only, newest block winning on equal timestamps. */
    uint64_t *ids = NULL;
    size_t nid = 0, capid = 0;
    for (size_t k = 0; k < nin; k++)
        for (size_t i = 0; i < in[k]->ne; i++) {
            if (nid == capid) {
                capid = capid ? capid * 2 : 256;
                uint64_t *ni = realloc(ids, capid * sizeof *ni);
                if (!ni) {
                    free(ids);
                    return THZ_ENOMEM;
                }
                ids = ni;
            }
            ids[nid++] = in[k]->e[i].id;
        }
    if (nid) qsort(ids, nid, sizeof *ids, i64_cmp);
    size_t u = 0;
    for (size_t i = 0; i < nid; i++)
        if (!u || ids[u - 1] != ids[i]) ids[u++] = ids[i];
    nid = u;
    cut_ser *cs = calloc(nid ? nid : 1, sizeof *cs);
    thz_buf *arenas = calloc(nid ? nid : 1, sizeof *arenas);
    thz_err rc = cs && arenas ? THZ_OK : THZ_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < nid && !rc; i++) {
        tsdb_ser *s = NULL;
        pthread_rwlock_rdlock(&db->idx);
        if (ids[i] < db->cap_id) s = db->by_id[ids[i]];
        pthread_rwlock_unlock(&db->idx);
        if (!s) continue;
        mpt *m = NULL;
        size_t nm = 0;
        for (size_t k = 0; k < nin && !rc; k++) {
            const tsdb_bentry *e = tsdb_block_find(in[k], s->id);
            if (!e) continue;
            int64_t *ts;
            uint64_t *v;
            size_t cnt;
            rc = tsdb_block_read(in[k], e, &ts, &v, &cnt, &arenas[n]);
            if (rc == THZ_ECORRUPT) { /* lost already; the merged block goes without it */
                log_warn(TSDB_MOD, "compaction: %s: series %" PRIu64 ": corrupt section skipped",
                         in[k]->path, s->id);
                rc = THZ_OK;
                continue;
            }
            if (rc) break;
            mpt *nm2 = realloc(m, (nm + cnt + 1) * sizeof *m);
            if (!nm2)
                rc = THZ_ENOMEM;
            else {
                m = nm2;
                for (size_t p = 0; p < cnt; p++) m[nm++] = (mpt){ts[p], v[p], (k << 40) + p};
            }
            free(ts);
            free(v);
        }
        if (!rc) {
            if (nm) qsort(m, nm, sizeof *m, mpt_cmp);
            cs[n].s = s;
            cs[n].ts = malloc((nm + 1) * sizeof(int64_t));
            cs[n].v = malloc((nm + 1) * sizeof(uint64_t));
            if (!cs[n].ts || !cs[n].v) rc = THZ_ENOMEM;
            size_t o = 0;
            for (size_t p = 0; !rc && p < nm; p++) {
                if (o && cs[n].ts[o - 1] == m[p].ts)
                    cs[n].v[o - 1] = m[p].v;
                else {
                    cs[n].ts[o] = m[p].ts;
                    cs[n].v[o++] = m[p].v;
                }
            }
            cs[n].n = o;
            n++;
        }
        free(m);
    }
    if (!rc) {
        /* Sort by device, carrying each series' arena along. */
        tsdb_bser *bs = malloc((n ? n : 1) * sizeof *bs);
        size_t *order = malloc((n ? n : 1) * sizeof *order);
        if (!bs || !order)
            rc = THZ_ENOMEM;
        else {
            for (size_t i = 0; i < n; i++) order[i] = i;
            /* insertion sort by (device, id): compaction is rare and n small per window */
            for (size_t i = 1; i < n; i++) {
                size_t x = order[i], j = i;
                while (j && cut_cmp(&cs[order[j - 1]], &cs[x]) > 0) {
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = x;
            }
            size_t nb = 0;
            for (size_t i = 0; i < n; i++) {
                cut_ser *c = &cs[order[i]];
                if (c->n) bs[nb++] = (tsdb_bser){c->s, c->ts, c->v, arenas[order[i]].p, c->n};
            }
            tsdb_block *b;
            rc = tsdb_block_write(db, in[0]->tenant, in[0]->win, next_seq(db), bs, nb, &b);
            if (!rc) blocks_publish(db, &b, 1, in, nin);
        }
        free(bs);
        free(order);
    }
    for (size_t i = 0; i < n; i++) {
        free(cs[i].ts);
        free(cs[i].v);
    }
    for (size_t i = 0; i < nid && arenas; i++) thz_buf_free(&arenas[i]);
    free(arenas);
    free(cs);
    free(ids);
    return rc;
}

static void compact_upto(tsdb *db, int64_t horizon);

/* Compacts windows with more than one block, once the window is closed. */
static void compact_run(tsdb *db)
{
    int64_t dn = data_now(db);
    if (dn < INT64_MIN + TSDB_GRACE_NS + TSDB_WINDOW_NS) return; /* no data */
    compact_upto(db, dn - TSDB_GRACE_NS - TSDB_WINDOW_NS);
}

static void compact_all(tsdb *db)
{
    compact_upto(db, INT64_MAX);
}

static void compact_upto(tsdb *db, int64_t horizon)
{
    for (;;) {
        tsdb_block **in = NULL;
        size_t nin = 0;
        pthread_rwlock_rdlock(&db->blk_mu);
        for (size_t i = 0; i < db->nblocks && !nin; i++) {
            size_t j = i;
            while (j < db->nblocks && db->blocks[j]->win == db->blocks[i]->win) j++;
            /* blocks are sorted by window: within one window, group by tenant */
            for (size_t a = i; a < j && !nin; a++) {
                size_t cnt = 0;
                for (size_t c = i; c < j; c++)
                    if (db->blocks[c]->tenant == db->blocks[a]->tenant) cnt++;
                if (cnt < 2 || db->blocks[a]->win >= horizon) continue;
                in = malloc(cnt * sizeof *in);
                if (!in) break;
                for (size_t c = i; c < j; c++)
                    if (db->blocks[c]->tenant == db->blocks[a]->tenant) {
                        atomic_fetch_add(&db->blocks[c]->refs, 1);
                        in[nin++] = db->blocks[c];
                    }
            }
            i = j - 1;
        }
        pthread_rwlock_unlock(&db->blk_mu);
        if (!nin) {
            free(in);
            return;
        }
        thz_err rc = compact_one(db, in, nin);
        for (size_t i = 0; i < nin; i++) tsdb_block_unref(in[i]);
        free(in);
        if (rc) {
            log_error(TSDB_MOD, "compaction failed: %s", thz_strerror(rc));
            return;
        }
    }
}

/* ---- background thread ---- */

static void *bg_main(void *arg)
{
    tsdb *db = arg;
    int64_t last_ret = 0, last_end = INT64_MIN, last_cut = 0;
    pthread_mutex_lock(&db->bg_mu);
    while (!db->bg_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&db->bg_cv, &db->bg_mu, &ts);
        if (db->bg_stop) break;
        pthread_mutex_unlock(&db->bg_mu);
        pthread_mutex_lock(&db->maint);
        /* no data yet (max_ts is INT64_MIN): nothing is due, and no overflow */
        int64_t dn = data_now(db);
        int64_t end = dn < INT64_MIN + TSDB_GRACE_NS + TSDB_WINDOW_NS
                          ? INT64_MIN
                          : tsdb_window_of(dn - TSDB_GRACE_NS);
        int64_t now = wall_ns();
        /* A cut costs O(head) (it sorts and checkpoints what stays), so the
         * late points of windows already cut (same end as the last cut)
         * wait up to TSDB_LATE_CUT_NS and go out together as side blocks;
         * a newly closed window is cut at once. */
        if (atomic_load(&db->head_points) > TSDB_HEAD_MAX) {
            cut(db, INT64_MAX);
            last_cut = now;
        } else if (atomic_load(&db->head_min_ts) < end &&
                   (end != last_end || now - last_cut >= TSDB_LATE_CUT_NS)) {
            cut(db, end);
            last_end = end;
            last_cut = now;
        }
        compact_run(db);
        if (now - last_ret > 10ll * 1000000000ll) {
            retention_run(db);
            last_ret = now;
        }
        pthread_mutex_unlock(&db->maint);
        pthread_mutex_lock(&db->bg_mu);
    }
    pthread_mutex_unlock(&db->bg_mu);
    return NULL;
}

void tsdb__maintain(tsdb *db)
{
    pthread_mutex_lock(&db->maint);
    compact_all(db);
    retention_run(db);
    pthread_mutex_unlock(&db->maint);
}

uint64_t tsdb__agg_decoded(tsdb *db)
{
    return atomic_load(&db->agg_decoded);
}

/* ---- open / close ---- */

static thz_err blocks_load(tsdb *db)
{
    char dir[4096], path[4400];
    snprintf(dir, sizeof dir, "%s/blocks", db->dir);
    DIR *d = opendir(dir);
    if (!d) return THZ_EIO;
    struct dirent *e;
    thz_err rc = THZ_OK;
    while ((e = readdir(d)) && !rc) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t nl = strlen(e->d_name);
        if (nl < 4 || strcmp(e->d_name + nl - 4, ".blk") != 0) {
            if (strstr(e->d_name, ".tmp")) unlink(path);
            continue;
        }
        tsdb_block *b;
        thz_err r = tsdb_block_load(path, &b);
        if (r) {
            log_warn(TSDB_MOD, "%s: %s; set aside as .bad", path, thz_strerror(r));
            char bad[4500];
            snprintf(bad, sizeof bad, "%s.bad", path);
            rename(path, bad);
            continue;
        }
        if (b->seq >= db->next_seq) db->next_seq = b->seq + 1;
        blocks_publish(db, &b, 1, NULL, 0);
    }
    closedir(d);
    /* Series' newest block points, for tsdb_last. */
    for (size_t i = 0; i < db->nblocks; i++) {
        tsdb_block *b = db->blocks[i];
        for (size_t k = 0; k < b->ne; k++) {
            uint64_t id = b->e[k].id;
            if (id < db->cap_id && db->by_id[id] && db->by_id[id]->blk_last_ts < b->e[k].last_ts)
                db->by_id[id]->blk_last_ts = b->e[k].last_ts;
        }
    }
    return rc;
}

thz_err tsdb_open(const tsdb_options *o, tsdb **out, char err[TSDB_ERR_LEN])
{
    if (err) err[0] = 0;
    if (!o || !o->dir || !out || o->retention_s < 0) {
        ERR("bad options");
        return THZ_EINVAL;
    }
    tsdb *db = calloc(1, sizeof *db);
    if (!db) return THZ_ENOMEM;
    db->o = *o;
    db->dir = strdup(o->dir);
    db->next_id = 1;
    db->next_seq = 1;
    db->wal.fd = -1;
    db->idx_fd = -1;
    atomic_store(&db->max_ts, INT64_MIN);
    atomic_store(&db->head_min_ts, INT64_MAX);
    /* Writer-preferring: a cut must not starve behind a steady stream of
     * tsdb_write calls (none of which takes the lock recursively). */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&db->cut, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_rwlock_init(&db->idx, NULL);
    pthread_rwlock_init(&db->blk_mu, NULL);
    for (int i = 0; i < TSDB_NSTRIPE; i++) pthread_mutex_init(&db->stripe[i], NULL);
    pthread_mutex_init(&db->wal.mu, NULL);
    pthread_cond_init(&db->wal.cv, NULL);
    pthread_cond_init(&db->wal.cv_done, NULL);
    pthread_mutex_init(&db->maint, NULL);
    pthread_mutex_init(&db->bg_mu, NULL);
    pthread_cond_init(&db->bg_cv, NULL);
    *out = NULL;
    char p[4200];
    thz_err rc = db->dir ? THZ_OK : THZ_ENOMEM;
    if (!rc) rc = mkdir_p(db->dir);
    snprintf(p, sizeof p, "%s/wal", o->dir);
    if (!rc) rc = mkdir_p(p);
    snprintf(p, sizeof p, "%s/blocks", o->dir);
    if (!rc) rc = mkdir_p(p);
    if (rc) ERR("cannot create %s: %s", o->dir, strerror(errno));
    if (!rc && (rc = tsdb_idx_load(db))) ERR("index: %s", thz_strerror(rc));
    if (!rc) retention_load(db);
    if (!rc && (rc = blocks_load(db))) ERR("blocks: %s", thz_strerror(rc));
    if (!rc && (rc = tsdb_wal_open(db))) ERR("WAL: %s", thz_strerror(rc));
    if (!rc && (rc = tsdb_wal_start(db))) ERR("cannot start the WAL thread");
    if (!rc) {
        if (pthread_create(&db->bg, NULL, bg_main, db)) {
            ERR("cannot start the background thread");
            rc = THZ_ENOMEM;
        } else {
            db->bg_started = true;
        }
    }
    if (rc) {
        tsdb_close(db);
        return rc;
    }
    *out = db;
    return THZ_OK;
}

void tsdb_close(tsdb *db)
{
    if (!db) return;
    if (db->bg_started) {
        pthread_mutex_lock(&db->bg_mu);
        db->bg_stop = true;
        pthread_cond_signal(&db->bg_cv);
        pthread_mutex_unlock(&db->bg_mu);
        pthread_join(db->bg, NULL);
    }
    /* A clean close writes the whole head to blocks and checkpoints the
     * WAL (as tsdb_flush), so the next open replays (almost) nothing. Not
     * after a failed open (the threads never ran). Bounded: the head holds
     * at most about TSDB_HEAD_MAX points (a forced cut past it). On failure
     * the WAL keeps the points and the next open replays them. */
    if (db->bg_started && db->wal.thr_started) {
        uint64_t n = atomic_load(&db->head_points);
        if (n) {
            log_info(TSDB_MOD, "writing %" PRIu64 " points of the head to blocks", n);
            int64_t t0 = wall_ns();
            pthread_mutex_lock(&db->maint);
            thz_err rc = cut(db, INT64_MAX);
            pthread_mutex_unlock(&db->maint);
            if (rc)
                log_warn(TSDB_MOD,
                         "closing: writing the head failed (%s); the WAL keeps it, the next "
                         "start replays it",
                         thz_strerror(rc));
            else
                log_info(TSDB_MOD, "head written to blocks in %.2f s, WAL checkpointed",
                         (double)(wall_ns() - t0) / 1e9);
        }
    }
    tsdb_wal_stop(db);
    for (size_t i = 0; i < db->nblocks; i++) tsdb_block_unref(db->blocks[i]);
    free(db->blocks);
    tsdb_idx_free(db);
    pthread_rwlock_destroy(&db->cut);
    pthread_rwlock_destroy(&db->idx);
    pthread_rwlock_destroy(&db->blk_mu);
    for (int i = 0; i < TSDB_NSTRIPE; i++) pthread_mutex_destroy(&db->stripe[i]);
    pthread_mutex_destroy(&db->wal.mu);
    pthread_cond_destroy(&db->wal.cv);
    pthread_cond_destroy(&db->wal.cv_done);
    pthread_mutex_destroy(&db->maint);
    pthread_mutex_destroy(&db->bg_mu);
    pthread_cond_destroy(&db->bg_cv);
    free(db->dir);
    free(db);
}

/* ---- backup, stats ---- */

static thz_err copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0) return errno == ENOENT ? THZ_OK : THZ_EIO;
    int outfd = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (outfd < 0) {
        close(in);
        return THZ_EIO;
    }
    char buf[65536];
    ssize_t r;
    thz_err rc = THZ_OK;
    while ((r = read(in, buf, sizeof buf)) > 0)
        if (write(outfd, buf, (size_t)r) != r) {
            rc = THZ_EIO;
            break;
        }
    if (r < 0 || fsync(outfd) < 0) rc = THZ_EIO;
    close(in);
    close(outfd);
    return rc;
}

thz_err tsdb_backup(tsdb *db, const char *dir, char err[TSDB_ERR_LEN])
{
    if (err) err[0] = 0;
    if (!db || !dir) return THZ_EINVAL;
    if (mkdir_p(dir)) {
        ERR("cannot create %s: %s", dir, strerror(errno));
        return THZ_EIO;
    }
    DIR *d = opendir(dir);
    if (!d) return THZ_EIO;
    struct dirent *e;
    bool empty = true;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = false;
    closedir(d);
    if (!empty) {
        ERR("%s is not empty", dir);
        return THZ_EEXIST;
    }
    /* Flush, then copy while no background job changes the files: blocks
     * are immutable (hard links), index/retention/WAL are copied; the WAL
     * holds whatever was written since the flush (a torn tail is fine). */
    pthread_mutex_lock(&db->maint);
    thz_err rc = cut(db, INT64_MAX);
    char from[4400], to[4400];
    snprintf(to, sizeof to, "%s/blocks", dir);
    if (!rc) rc = mkdir_p(to);
    snprintf(to, sizeof to, "%s/wal", dir);
    if (!rc) rc = mkdir_p(to);
    pthread_rwlock_rdlock(&db->blk_mu);
    for (size_t i = 0; i < db->nblocks && !rc; i++) {
        const char *base = strrchr(db->blocks[i]->path, '/');
        snprintf(to, sizeof to, "%s/blocks%s", dir, base);
        if (link(db->blocks[i]->path, to) < 0) rc = copy_file(db->blocks[i]->path, to);
    }
    pthread_rwlock_unlock(&db->blk_mu);
    const char *files[] = {"index", "retention"};
    for (int i = 0; i < 2 && !rc; i++) {
        snprintf(from, sizeof from, "%s/%s", db->dir, files[i]);
        snprintf(to, sizeof to, "%s/%s", dir, files[i]);
        rc = copy_file(from, to);
    }
    snprintf(from, sizeof from, "%s/wal", db->dir);
    d = rc ? NULL : opendir(from);
    while (d && (e = readdir(d)) && !rc) {
        if (e->d_name[0] == '.' || strstr(e->d_name, ".tmp")) continue;
        char f2[4700], t2[4700];
        snprintf(f2, sizeof f2, "%s/%s", from, e->d_name);
        snprintf(t2, sizeof t2, "%s/wal/%s", dir, e->d_name);
        rc = copy_file(f2, t2);
    }
    if (d) closedir(d);
    pthread_mutex_unlock(&db->maint);
    if (rc) ERR("backup to %s failed: %s", dir, thz_strerror(rc));
    return rc;
}

void tsdb_get_stats(tsdb *db, tsdb_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!db) return;
    pthread_rwlock_rdlock(&db->idx);
    for (uint64_t id = 1; id < db->next_id; id++)
        if (db->by_id[id]) st->series++;
    pthread_rwlock_unlock(&db->idx);
    st->points_written = atomic_load(&db->points_written);
    st->points_rejected = atomic_load(&db->points_rejected);
    st->head_points = atomic_load(&db->head_points);
    st->fsyncs = atomic_load(&db->fsyncs);
    pthread_rwlock_rdlock(&db->blk_mu);
    st->blocks = db->nblocks;
    for (size_t i = 0; i < db->nblocks; i++) st->disk_bytes += db->blocks[i]->bytes;
    pthread_rwlock_unlock(&db->blk_mu);
    tsdb_wal_sizes(db, &st->wal_bytes);
    pthread_mutex_lock(&db->wal.mu);
    st->wal_written_bytes = db->wal.durable;
    st->wal_pending_bytes = db->wal.appended - db->wal.durable;
    pthread_mutex_unlock(&db->wal.mu);
    /* 16 bytes a point (timestamp, value) plus the series' own memory */
    st->head_bytes = st->head_points * 16 + st->series * (sizeof(tsdb_ser) + 64);
    struct stat s;
    char p[4200];
    snprintf(p, sizeof p, "%s/index", db->dir);
    if (stat(p, &s) == 0) st->disk_bytes += (uint64_t)s.st_size;
    st->disk_bytes += st->wal_bytes;
}
