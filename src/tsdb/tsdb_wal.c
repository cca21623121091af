/* tsdb_wal.c - the write-ahead log of tsdb: group commit, segments,
 * checkpoints and replay.
 *
 * Files in DIR/wal/: segments SSSSSSSSSSSSSSSS.wal (16 hex digits, the
 * sequence) and at most one checkpoint ckpt.SSSSSSSSSSSSSSSS holding, in the
 * same record format, the head points that were still in memory when
 * segments <= S were retired (points of windows not yet cut to blocks).
 *
 * Record: [u32 CRC-32C of the next 4 + len bytes][u32 len][payload]. The
 * payload is a sequence of entries:
 *   'S' series definition (tsdb_index.c) - precedes the first point of a
 *       new series, so replay rebuilds the index even when DIR/index lags;
 *   'P' u64 series id, i64 ts, value: 8 bytes (float bits, int), 1 byte
 *       (bool), or u32 length + bytes (string); the type is the series'.
 * One tsdb_write is one record (its new-series definitions go in records
 * of their own, appended while the index lock is held, so they always
 * precede any use by another writer).
 *
 * Group commit. Writers append encoded records to wal.cur under wal.mu and
 * queue their done callbacks; the WAL thread swaps cur with a spare buffer,
 * write()s it, fdatasync()s it (ALWAYS: every batch; EVERYSEC: at most once
 * a second, and done was already called by tsdb_write) and then calls the
 * done callbacks of every write in the batch. A checkpoint asks for a
 * rotation at the current end of cur (tsdb_wal_mark_rotation), so the
 * segments <= S hold exactly the points that the cut detached.
 *
 * Replay on open: the checkpoint, then every segment after it in order.
 * Each file is read to its first bad record (bad CRC or torn), truncated
 * there with a warning, and replay goes on with the next file. A record
 * whose CRC verifies but that does not parse is skipped with a warning, as
 * is the rest of a record after a point of an unknown series. New writes go
 * to a fresh segment. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/crc32c.h"
#include "core/log.h"
#include "metrics/metrics.h"
#include "tsdb/tsdb_int.h"

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void seg_path(const tsdb *db, uint64_t seq, char *out, size_t cap)
{
    snprintf(out, cap, "%s/wal/%016" PRIx64 ".wal", db->dir, seq);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

thz_err tsdb_wal_frame(thz_buf *out, const thz_buf *payload)
{
    if (thz_buf_reserve(out, 8 + payload->len)) return THZ_ENOMEM;
    uint8_t *p = out->p + out->len;
    tsdb_put32(p + 4, (uint32_t)payload->len);
    if (payload->len) memcpy(p + 8, payload->p, payload->len);
    tsdb_put32(p, thz_crc32c(0, p + 4, 4 + payload->len));
    out->len += 8 + payload->len;
    return THZ_OK;
}

thz_err tsdb_wal_reserve(tsdb *db, size_t payload, uint8_t **p)
{
    if (payload > TSDB_REC_MAX) return THZ_ETOOBIG;
    if (thz_buf_reserve(&db->wal.cur, 8 + payload)) return THZ_ENOMEM;
    *p = db->wal.cur.p + db->wal.cur.len;
    return THZ_OK;
}

void tsdb_wal_commit(tsdb *db, uint8_t *rec, size_t payload)
{
    tsdb_put32(rec + 4, (uint32_t)payload);
    tsdb_put32(rec, thz_crc32c(0, rec + 4, 4 + payload));
    db->wal.cur.len += 8 + payload;
    db->wal.appended += 8 + payload;
    /* Wake the WAL thread only when it sleeps and there is a reason:
     * ALWAYS (someone waits for the fsync) or a large buffer; EVERYSEC
     * otherwise relies on the thread's 10 ms tick. */
    if (db->wal.idle &&
        (db->o.fsync == TSDB_FSYNC_ALWAYS || db->wal.cur.len >= ((size_t)1 << 20))) {
        db->wal.idle = false;
        pthread_cond_signal(&db->wal.cv);
    }
}

thz_err tsdb_wal_put_point(thz_buf *out, const tsdb_ser *s, int64_t ts, uint64_t v,
                           const thz_buf *str)
{
    uint32_t sl = s->type == TSDB_STRING ? (uint32_t)v : 0;
    if (thz_buf_reserve(out, 1 + 16 + 8 + sl)) return THZ_ENOMEM;
    uint8_t *p = out->p + out->len;
    p[0] = 'P';
    tsdb_put64(p + 1, s->id);
    tsdb_put64(p + 9, (uint64_t)ts);
    size_t o = 17;
    switch (s->type) {
    case TSDB_BOOL: p[o++] = (uint8_t)(v != 0); break;
    case TSDB_STRING:
        tsdb_put32(p + o, sl);
        if (sl) memcpy(p + o + 4, str->p + (v >> 32), sl);
        o += 4 + sl;
        break;
    default: tsdb_put64(p + o, v); o += 8;
    }
    out->len += o;
    return THZ_OK;
}

/* ---- replay ----
 *
 * Replay runs inside tsdb_open, before any other thread of the engine: it
 * takes no head locks. It works in batches of up to RP_BATCH points, in
 * two passes. The parse pass checks CRCs, creates the series of 'S'
 * entries at once (so later points find them) and decodes 'P' entries into
 * a flat array (series id, ts, value), taking each point's type from a
 * small per-id byte array rather than from the series structure. The apply
 * pass groups the batch by series with a stable counting sort on the dense
 * ids and appends each series' points in log order, its head grown once.
 * So each series' structure, head arrays and cells are touched once per
 * batch instead of once per point: the log interleaves every series (a
 * device's message is one record), which made a point-by-point replay
 * cache-miss bound. Per series the result is that of appending the points
 * one by one in log order, which is all the head depends on. */

#define RP_BATCH ((size_t)1 << 21) /* points per apply pass (2 x 48 MiB) */

typedef struct rp_str {
    const char *p; /* into the file's buffer, which outlives the batch */
    uint32_t n;
} rp_str;

typedef struct replay {
    tsdb *db;
    tsdb_rpt *pts, *tmp; /* cap each; cap 0: no memory, points go one by one */
    size_t n, cap;
    rp_str *strs;
    size_t nstr, capstr;
    uint8_t *type; /* series type by id; 0: not looked up yet */
    size_t ntype;
    uint32_t *cnt; /* counting sort */
    size_t ncnt;
    uint64_t max_id;
    int64_t min_ts, max_ts;
} replay;

size_t tsdb__replay_batch;

static void rp_init(replay *r, tsdb *db)
{
    memset(r, 0, sizeof *r);
    r->db = db;
    r->min_ts = INT64_MAX;
    r->max_ts = INT64_MIN;
}

/* Sizes the batch for a file of bytes (kept across the files of an open,
 * so its pages are faulted in once). */
static void rp_size(replay *r, size_t bytes)
{
    size_t cap = bytes / 18 + 1; /* the smallest point entry is 18 bytes */
    size_t max = tsdb__replay_batch ? tsdb__replay_batch : RP_BATCH;
    if (cap > max) cap = max;
    if (cap <= r->cap) return;
    free(r->pts);
    free(r->tmp);
    r->pts = malloc(cap * sizeof *r->pts);
    r->tmp = malloc(cap * sizeof *r->tmp);
    r->cap = r->pts && r->tmp ? cap : 0;
}

static void rp_free(replay *r)
{
    free(r->pts);
    free(r->tmp);
    free(r->strs);
    free(r->type);
    free(r->cnt);
}

/* The type of series id, 0 when there is none (yet). */
static uint8_t rp_type(replay *r, uint64_t id)
{
    if (id < r->ntype && r->type[id]) return r->type[id];
    tsdb *db = r->db;
    tsdb_ser *s = id < db->cap_id ? db->by_id[id] : NULL;
    if (!s) return 0; /* not cached: a later 'S' entry may define it */
    if (id >= r->ntype) {
        size_t nn = r->ntype ? r->ntype : 1024;
        while (nn <= id) nn *= 2; /* id < cap_id: bounded by the index */
        uint8_t *t = realloc(r->type, nn);
        if (!t) return (uint8_t)s->type;
        memset(t + r->ntype, 0, nn - r->ntype);
        r->type = t;
        r->ntype = nn;
    }
    r->type[id] = (uint8_t)s->type;
    return (uint8_t)s->type;
}

static void rp_one(tsdb *db, uint64_t id, int64_t ts, uint64_t v, const char *str, uint32_t sl)
{
    tsdb_head_append(db, db->by_id[id], ts, v, str, sl);
    tsdb_head_note(db, 1, ts, ts);
}

/* The apply pass: the batch's points into the heads, series by series. */
static void rp_apply(replay *r)
{
    if (!r->n) return;
    tsdb *db = r->db;
    size_t nid = (size_t)r->max_id + 2;
    if (nid > r->ncnt) {
        uint32_t *c = realloc(r->cnt, nid * sizeof *c);
        if (c) {
            r->cnt = c;
            r->ncnt = nid;
        }
    }
    const tsdb_rpt *in = r->pts;
    if (nid <= r->ncnt) { /* stable counting sort by id into tmp */
        uint32_t *cnt = r->cnt;
        memset(cnt, 0, nid * sizeof *cnt);
        for (size_t i = 0; i < r->n; i++) cnt[r->pts[i].id + 1]++;
        for (size_t k = 1; k < nid; k++) cnt[k] += cnt[k - 1];
        /* the scatter's stores go to up to one place per series: fetch
         * the line a few points ahead */
        for (size_t i = 0; i < r->n; i++) {
            if (i + 8 < r->n) __builtin_prefetch(&r->tmp[cnt[r->pts[i + 8].id]], 1);
            r->tmp[cnt[r->pts[i].id]++] = r->pts[i];
        }
        in = r->tmp;
    }
    /* (without the sort, groups are runs of one series in log order: the
     * same result, only slower) */
    size_t i = 0;
    while (i < r->n) {
        uint64_t id = in[i].id;
        size_t j = i + 1;
        while (j < r->n && in[j].id == id) j++;
        if (j < r->n) { /* the next series' head end, where its points go */
            const tsdb_ser *nx = db->by_id[in[j].id];
            if (nx->head.n) {
                __builtin_prefetch(&nx->head.ts[nx->head.n - 1]);
                __builtin_prefetch(&nx->head.v[nx->head.n], 1);
            }
            if (nx->ncells) __builtin_prefetch(&nx->cells[nx->ncells - 1], 1);
        }
        tsdb_ser *s = db->by_id[id];
        if (s->type == TSDB_STRING) {
            for (size_t k = i; k < j; k++) {
                const rp_str *st = &r->strs[in[k].v];
                tsdb_head_append(db, s, in[k].ts, 0, st->p, st->n);
            }
        } else {
            tsdb_head_append_run(db, s, in + i, j - i);
        }
        i = j;
    }
    tsdb_head_note(db, r->n, r->min_ts, r->max_ts);
    r->n = 0;
    r->nstr = 0;
    r->max_id = 0;
    r->min_ts = INT64_MAX;
    r->max_ts = INT64_MIN;
}

static void rp_add(replay *r, uint64_t id, int64_t ts, uint64_t v, const char *str, uint32_t sl,
                   uint8_t type)
{
    if (r->n == r->cap) rp_apply(r);
    if (type == TSDB_STRING) {
        if (r->nstr == r->capstr) {
            size_t nc = r->capstr ? r->capstr * 2 : 1024;
            rp_str *ns = realloc(r->strs, nc * sizeof *ns);
            if (ns) {
                r->strs = ns;
                r->capstr = nc;
            }
        }
        if (r->nstr == r->capstr)
            r->cap = 0; /* no memory: one by one from here */
        else {
            r->strs[r->nstr] = (rp_str){str, sl};
            v = r->nstr++;
        }
    }
    if (!r->cap) {
        rp_apply(r); /* what is batched goes first: a series' order is kept */
        rp_one(r->db, id, ts, v, str, sl);
        return;
    }
    r->pts[r->n++] = (tsdb_rpt){id, ts, v};
    if (id > r->max_id) r->max_id = id;
    if (ts < r->min_ts) r->min_ts = ts;
    if (ts > r->max_ts) r->max_ts = ts;
}

/* The parse pass over one record payload; false when it does not parse
 * (the points before the bad entry are kept, as they always were). */
static bool replay_payload(replay *r, const uint8_t *p, size_t n)
{
    tsdb *db = r->db;
    size_t o = 0;
    while (o < n) {
        uint8_t kind = p[o++];
        if (kind == 'S') {
            uint64_t id;
            int64_t tenant;
            uint8_t type;
            const char *d, *m, *t;
            uint32_t dl, ml, tl;
            size_t used =
                tsdb_ser_def_decode(p + o, n - o, &id, &tenant, &type, &d, &dl, &m, &ml, &t, &tl);
            if (!used) return false;
            tsdb_ser *s;
            pthread_rwlock_wrlock(&db->idx);
            tsdb_point probe = {.device = d,
                                .device_len = dl,
                                .metric = m,
                                .metric_len = ml,
                                .tags = t,
                                .tags_len = tl};
            if (!tsdb_idx_find(db, tenant, &probe)) {
                thz_err rc = tsdb_idx_add(db, tenant, d, dl, m, ml, t, tl, type, id, &s);
                if (rc && rc != THZ_EEXIST)
                    log_warn(TSDB_MOD, "replay: series %" PRIu64 ": %s", id, thz_strerror(rc));
            }
            pthread_rwlock_unlock(&db->idx);
            o += used;
        } else if (kind == 'P') {
            if (n - o < 16) return false;
            uint64_t id = tsdb_get64(p + o);
            int64_t ts = (int64_t)tsdb_get64(p + o + 8);
            o += 16;
            uint8_t type = rp_type(r, id);
            /* The type of an unknown series is unknown, and so is the
             * entry's length: the rest of the record cannot be parsed. */
            if (!type) {
                log_warn(TSDB_MOD,
                         "replay: point of unknown series %" PRIu64 ", rest of the record skipped",
                         id);
                return true;
            }
            uint64_t v = 0;
            const char *str = NULL;
            uint32_t sl = 0;
            switch (type) {
            case TSDB_BOOL:
                if (n - o < 1) return false;
                v = p[o++] != 0;
                break;
            case TSDB_STRING:
                if (n - o < 4) return false;
                sl = tsdb_get32(p + o);
                if (n - o - 4 < sl) return false;
                str = (const char *)p + o + 4;
                o += 4 + sl;
                break;
            default:
                if (n - o < 8) return false;
                v = tsdb_get64(p + o);
                o += 8;
            }
            rp_add(r, id, ts, v, str, sl, type);
        } else {
            return false;
        }
    }
    return true;
}

/* Replays one file's bytes; returns the length of the good prefix. */
static size_t replay_buf(replay *r, const uint8_t *p, size_t n)
{
    rp_size(r, n);
    size_t off = 0;
    while (n - off >= 8) {
        uint32_t crc = tsdb_get32(p + off), len = tsdb_get32(p + off + 4);
        if (len > TSDB_REC_MAX || len > n - off - 8) break;
        if (thz_crc32c(0, p + off + 4, 4 + (size_t)len) != crc) break;
        /* A record whose CRC verifies was written whole: one that does not
         * parse is skipped (a bug or a newer format), the log goes on. */
        if (!replay_payload(r, p + off + 8, len))
            log_warn(TSDB_MOD, "replay: record at byte %zu does not parse, skipped", off);
        off += 8 + (size_t)len;
    }
    rp_apply(r); /* before the caller frees p: strings point into it */
    return off;
}

size_t tsdb_wal_replay_buf(tsdb *db, const uint8_t *p, size_t n)
{
    replay r;
    rp_init(&r, db);
    size_t off = replay_buf(&r, p, n);
    rp_free(&r);
    return off;
}

/* Replays a file, truncating it after its last good record. buf is kept
 * across files (grown as needed). */
static thz_err replay_file(tsdb *db, replay *rp, thz_buf *buf, const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return THZ_EIO;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return THZ_EIO;
    }
    size_t sz = (size_t)st.st_size;
    if (thz_buf_reserve(buf, sz ? sz : 1)) {
        close(fd);
        return THZ_ENOMEM;
    }
    uint8_t *data = buf->p;
    size_t got = 0;
    while (got < sz) {
        ssize_t r = pread(fd, data + got, sz - got, (off_t)got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    size_t good = replay_buf(rp, data, got);
    if (good != sz) {
        log_warn(TSDB_MOD, "%s: bad or torn record at byte %zu, truncating %zu bytes", path, good,
                 sz - good);
        if (ftruncate(fd, (off_t)good) < 0 || fsync(fd) < 0)
            log_warn(TSDB_MOD, "truncate %s: %s", path, strerror(errno));
    }
    close(fd);
    return THZ_OK;
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Lists segment and checkpoint sequences in DIR/wal. */
static thz_err list_wal(tsdb *db, uint64_t **segs, size_t *nseg, uint64_t **ckpts, size_t *nck)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/wal", db->dir);
    DIR *d = opendir(path);
    if (!d) return THZ_EIO;
    struct dirent *e;
    size_t cs = 0, cc = 0;
    *segs = NULL;
    *ckpts = NULL;
    *nseg = *nck = 0;
    while ((e = readdir(d))) {
        uint64_t seq;
        char tail[8];
        int is_seg =
            sscanf(e->d_name, "%16" SCNx64 ".wa%1[l]", &seq, tail) == 2 && strlen(e->d_name) == 20;
        int is_ck = !is_seg && strncmp(e->d_name, "ckpt.", 5) == 0 && strlen(e->d_name) == 21 &&
                    sscanf(e->d_name + 5, "%16" SCNx64, &seq) == 1;
        if (!is_seg && !is_ck) {
            if (strstr(e->d_name, ".tmp")) {
                char p2[4400];
                snprintf(p2, sizeof p2, "%s/%s", path, e->d_name);
                unlink(p2);
            }
            continue;
        }
        uint64_t **arr = is_seg ? segs : ckpts;
        size_t *n = is_seg ? nseg : nck, *cap = is_seg ? &cs : &cc;
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 16;
            uint64_t *na = realloc(*arr, *cap * sizeof *na);
            if (!na) {
                closedir(d);
                return THZ_ENOMEM;
            }
            *arr = na;
        }
        (*arr)[(*n)++] = seq;
    }
    closedir(d);
    if (*nseg) qsort(*segs, *nseg, sizeof **segs, u64_cmp);
    if (*nck) qsort(*ckpts, *nck, sizeof **ckpts, u64_cmp);
    return THZ_OK;
}

static thz_err open_segment(tsdb *db, uint64_t seq)
{
    char path[4096];
    seg_path(db, seq, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        log_error(TSDB_MOD, "open %s: %s", path, strerror(e));
        errno = e;
        return thz_err_from_errno(e);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/wal", db->dir);
    fsync_dir(dir);
    db->wal.fd = fd;
    db->wal.seq = seq;
    db->wal.seg_bytes = 0;
    return THZ_OK;
}

thz_err tsdb_wal_open(tsdb *db)
{
    uint64_t *segs, *ck;
    size_t ns, nc;
    thz_err rc = list_wal(db, &segs, &ns, &ck, &nc);
    if (rc) return rc;
    char path[4096];
    uint64_t base = 0;
    int64_t t0 = now_ms();
    uint64_t pts0 = atomic_load(&db->head_points);
    replay rp;
    rp_init(&rp, db);
    thz_buf buf = {0};
    if (nc) {
        base = ck[nc - 1];
        db->ckpt_seq = base;
        snprintf(path, sizeof path, "%s/wal/ckpt.%016" PRIx64, db->dir, base);
        replay_file(db, &rp, &buf, path);
        for (size_t i = 0; i + 1 < nc; i++) {
            snprintf(path, sizeof path, "%s/wal/ckpt.%016" PRIx64, db->dir, ck[i]);
            unlink(path);
        }
    }
    uint64_t last = base;
    db->wal.first_seq = 0;
    for (size_t i = 0; i < ns; i++) {
        seg_path(db, segs[i], path, sizeof path);
        if (nc && segs[i] <= base) {
            unlink(path); /* retired by the checkpoint; a crash left it behind */
            continue;
        }
        if (!db->wal.first_seq) db->wal.first_seq = segs[i];
        replay_file(db, &rp, &buf, path);
        last = segs[i];
    }
    free(segs);
    free(ck);
    rp_free(&rp);
    thz_buf_free(&buf);
    uint64_t bytes = 0;
    tsdb_wal_sizes(db, &bytes);
    log_info(TSDB_MOD, "WAL replay: %" PRIu64 " points (%.1f MB of WAL) in %.2f s",
             atomic_load(&db->head_points) - pts0, (double)bytes / 1e6,
             (double)(now_ms() - t0) / 1e3);
    rc = open_segment(db, last + 1);
    if (!db->wal.first_seq) db->wal.first_seq = last + 1;
    return rc;
}

/* ---- the WAL thread ---- */

/* Returns 0 or the errno of the failing write. */
static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return errno;
        if (w == 0) return EIO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Appends n bytes to the current segment. A short write (the disk filled
 * up mid-record) is cut off again, so the segment always ends with a whole
 * record and the bytes can be written again later. Returns 0 or errno. */
static int seg_write(tsdb *db, const uint8_t *p, size_t n)
{
    if (!n) return 0;
    int e = write_all(db->wal.fd, p, n);
    if (e) {
        if (ftruncate(db->wal.fd, (off_t)db->wal.seg_bytes) < 0)
            log_error(TSDB_MOD, "WAL: cannot cut a short write back: %s", strerror(errno));
        return e;
    }
    db->wal.seg_bytes += n;
    return 0;
}

static int do_sync(tsdb *db)
{
    double t0 = metrics_now();
    if (fdatasync(db->wal.fd) < 0) return errno;
    metrics_wal_fsync(metrics_now() - t0);
    atomic_fetch_add(&db->fsyncs, 1);
    db->wal.last_sync_ms = now_ms();
    return 0;
}

/* Closes the current segment (synced) and opens the next; on failure the
 * current segment stays open and in use. Returns 0 or errno. */
static int rotate(tsdb *db)
{
    int e = do_sync(db);
    if (e) return e;
    int old = db->wal.fd;
    uint64_t seq = db->wal.seq, bytes = db->wal.seg_bytes;
    if (open_segment(db, seq + 1) != THZ_OK) {
        e = errno ? errno : EIO;
        db->wal.fd = old;
        db->wal.seq = seq;
        db->wal.seg_bytes = bytes;
        return e;
    }
    close(old);
    return 0;
}

/* Writes one batch: src[0..rot_at) (when rot), the rotation, the rest.
 * *written is how much of src is in the log; *closed the segment the
 * rotation closed (0: it did not happen). Returns 0 or errno. */
static int write_batch(tsdb *db, const uint8_t *src, size_t len, bool rot, size_t rot_at,
                       size_t *written, uint64_t *closed)
{
    *written = 0;
    *closed = 0;
    if (rot) {
        int e = seg_write(db, src, rot_at);
        if (e) return e;
        *written = rot_at;
        uint64_t seq = db->wal.seq;
        if ((e = rotate(db))) return e;
        *closed = seq;
    }
    /* nothing after the rotation point: no pointer arithmetic on an
     * empty (possibly NULL) buffer */
    int e = len > *written ? seg_write(db, src + *written, len - *written) : 0;
    if (!e) *written = len;
    return e;
}

/* Failure handling. A write or sync that fails (typically ENOSPC) leaves
 * the unwritten bytes in w->retry, in order, ahead of everything appended
 * later; the segment is cut back to its last whole record. While retry
 * holds bytes the WAL is "failing": tsdb_write refuses new points with the
 * error (so nothing unbounded piles up and callers learn it at once), the
 * done callbacks of the failed batch get it too, and the thread tries again
 * every TSDB_WAL_RETRY_MS. The first success clears it: ingest resumes by
 * itself when space returns. The bytes of the failed batch are written
 * then (their points are in the head already, and their series definitions
 * must precede later points), so a point refused with ENOSPC under fsync
 * always may still be stored once space returns: storing it twice is
 * harmless (last write of a timestamp wins). */
#define TSDB_WAL_RETRY_MS 100

static void *wal_main(void *arg)
{
    tsdb *db = arg;
    tsdb_wal *w = &db->wal;
    bool dirty = false; /* written but not synced (EVERYSEC) */
    int64_t fail_ms = 0, fail_logged_ms = 0;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        for (;;) {
            if (w->stop || w->rot_req) break;
            if (w->failed && now_ms() - fail_ms >= TSDB_WAL_RETRY_MS) break;
            if (dirty && now_ms() - w->last_sync_ms >= 1000) break;
            if (w->cur.len &&
                (db->o.fsync == TSDB_FSYNC_ALWAYS || w->ticked || w->cur.len >= ((size_t)1 << 20)))
                break;
            /* ALWAYS: sleep until signalled; EVERYSEC: write every 10 ms,
             * so kill -9 loses at most that (the fsync is once a second). */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += db->o.fsync == TSDB_FSYNC_ALWAYS ? 100000000 : 10000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            w->idle = true;
            w->ticked = pthread_cond_timedwait(&w->cv, &w->mu, &ts) != 0 || w->ticked;
            w->idle = false;
        }
        w->ticked = false;
        /* stopping while failing: what cannot be written stays in the
         * head's memory only (logged); do not wait for the disk forever */
        if (w->stop && w->cur.len == 0 && !w->rot_req && (!w->failed || !w->retry.len)) break;
        thz_buf b = w->cur;
        w->cur = w->spare;
        w->cur.len = 0;
        w->spare = b;
        tsdb_done *dn = w->dones;
        size_t nd = w->ndones, capd = w->cap_dones;
        w->dones = w->spare_dones;
        w->cap_dones = w->cap_spare;
        w->ndones = 0;
        w->spare_dones = dn;
        w->cap_spare = capd;
        bool rot = w->rot_req;
        size_t rot_at = w->rot_at;
        uint64_t gen = w->rot_gen;
        bool stopping = w->stop, was_failed = w->failed;
        w->rot_req = false;
        pthread_mutex_unlock(&w->mu);

        /* The bytes a failed batch left come first. */
        const uint8_t *src = b.p;
        size_t len = b.len;
        int e = 0;
        if (w->retry.len) {
            rot_at += w->retry.len;
            if (b.len && thz_buf_append(&w->retry, b.p, b.len)) e = ENOMEM;
            src = w->retry.p;
            len = w->retry.len;
        }
        size_t written = 0;
        uint64_t closed = 0;
        if (!e) e = write_batch(db, src, len, rot, rot_at, &written, &closed);
        if (written) dirty = true;
        if (!e && dirty &&
            (db->o.fsync == TSDB_FSYNC_ALWAYS || stopping || was_failed ||
             now_ms() - w->last_sync_ms >= 1000)) {
            e = do_sync(db);
            if (!e) dirty = false;
        }
        if (!e && w->seg_bytes >= TSDB_SEGMENT_BYTES) rotate(db); /* retried next batch */
        thz_err rc = e ? thz_err_from_errno(e) : THZ_OK;
        if (e == ENOMEM) rc = THZ_ENOMEM;
        /* keep what is not in the log yet, in order */
        if (src == w->retry.p && len) {
            thz_buf_consume(&w->retry, written);
        } else if (written < len && e != ENOMEM) {
            if (thz_buf_append(&w->retry, src + written, len - written)) {
                log_error(TSDB_MOD, "WAL: out of memory keeping %zu unwritten bytes; lost",
                          len - written);
            }
        }
        if (e) {
            fail_ms = now_ms();
            if (!was_failed || fail_ms - fail_logged_ms >= 10000) {
                log_error(TSDB_MOD,
                          "WAL %s/wal: %s; %zu bytes wait, new points are refused until it "
                          "succeeds (retrying every %d ms)",
                          db->dir, strerror(e), w->retry.len, TSDB_WAL_RETRY_MS);
                fail_logged_ms = fail_ms;
            }
        } else if (was_failed) {
            log_info(TSDB_MOD, "WAL %s/wal: writes succeed again; points are accepted", db->dir);
        }
        if (db->o.fsync == TSDB_FSYNC_ALWAYS)
            for (size_t i = 0; i < nd; i++) dn[i].fn(dn[i].ctx, rc);
        if (b.cap > ((size_t)8 << 20)) thz_buf_free(&w->spare);
        if (!w->retry.len && w->retry.cap > ((size_t)8 << 20)) thz_buf_free(&w->retry);
        pthread_mutex_lock(&w->mu);
        w->failed = e != 0;
        w->fail_rc = rc;
        w->durable += b.len;
        if (rot) {
            w->rot_done_seq = closed; /* 0: the rotation failed, the cut gives up */
            w->rot_gen_done = gen;
        }
        pthread_cond_broadcast(&w->cv_done);
        if (stopping && e) break;
    }
    if (dirty) do_sync(db);
    if (w->retry.len)
        log_error(TSDB_MOD, "WAL %s/wal: stopping with %zu unwritten bytes (disk full?)", db->dir,
                  w->retry.len);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

thz_err tsdb_wal_start(tsdb *db)
{
    db->wal.last_sync_ms = now_ms();
    if (pthread_create(&db->wal.thr, NULL, wal_main, db)) return THZ_ENOMEM;
    db->wal.thr_started = true;
    return THZ_OK;
}

void tsdb_wal_stop(tsdb *db)
{
    tsdb_wal *w = &db->wal;
    if (w->thr_started) {
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thr, NULL);
        w->thr_started = false;
    }
    if (w->fd >= 0) close(w->fd);
    w->fd = -1;
    thz_buf_free(&w->cur);
    thz_buf_free(&w->spare);
    thz_buf_free(&w->retry);
    free(w->dones);
    free(w->spare_dones);
    w->dones = w->spare_dones = NULL;
}

uint64_t tsdb_wal_mark_rotation(tsdb *db)
{
    db->wal.rot_req = true;
    db->wal.rot_at = db->wal.cur.len;
    pthread_cond_signal(&db->wal.cv);
    return ++db->wal.rot_gen;
}

uint64_t tsdb_wal_wait_rot(tsdb *db, uint64_t gen)
{
    pthread_mutex_lock(&db->wal.mu);
    while (db->wal.rot_gen_done < gen) pthread_cond_wait(&db->wal.cv_done, &db->wal.mu);
    uint64_t s = db->wal.rot_done_seq;
    pthread_mutex_unlock(&db->wal.mu);
    return s;
}

thz_err tsdb_wal_checkpoint(tsdb *db, uint64_t seq, const thz_buf *records)
{
    char path[4200], tmp[4300], dir[4096];
    snprintf(dir, sizeof dir, "%s/wal", db->dir);
    snprintf(path, sizeof path, "%s/ckpt.%016" PRIx64, dir, seq);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return THZ_EIO;
    bool ok = (!records || !write_all(fd, records->p, records->len)) && fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, path) < 0 || fsync_dir(dir) < 0) {
        log_error(TSDB_MOD, "checkpoint %s: %s", path, strerror(errno));
        unlink(tmp);
        return THZ_EIO;
    }
    uint64_t *segs, *ck;
    size_t ns, nc;
    if (list_wal(db, &segs, &ns, &ck, &nc) == THZ_OK) {
        for (size_t i = 0; i < nc; i++)
            if (ck[i] < seq) {
                snprintf(path, sizeof path, "%s/ckpt.%016" PRIx64, dir, ck[i]);
                unlink(path);
            }
        for (size_t i = 0; i < ns; i++)
            if (segs[i] <= seq) {
                seg_path(db, segs[i], path, sizeof path);
                unlink(path);
            }
        free(segs);
        free(ck);
    }
    db->ckpt_seq = seq;
    return THZ_OK;
}

void tsdb_wal_sizes(tsdb *db, uint64_t *bytes)
{
    char dir[4096], p[4400];
    snprintf(dir, sizeof dir, "%s/wal", db->dir);
    *bytes = 0;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) == 0) *bytes += (uint64_t)st.st_size;
    }
    closedir(d);
}
