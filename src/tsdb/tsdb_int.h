/* tsdb_int.h - private structures of the time-series engine, shared by
 * tsdb.c (write/read paths, threads), tsdb_wal.c (log and replay),
 * tsdb_index.c (series index and postings) and tsdb_block.c (block files).
 *
 * Lock order (outer first): db->cut (rwlock: writers read-lock it across
 * their WAL append and head append; the cutter write-locks it for the few
 * microseconds it takes to mark a WAL boundary and detach every head) ->
 * db->idx (rwlock: series map, postings, tenants) -> db->wal.mu -> a head
 * stripe lock -> db->blk_mu (block list). db->maint serializes the
 * background jobs (cut, compaction, retention, backup) among themselves. */
#ifndef THZ_TSDB_INT_H
#define THZ_TSDB_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/hmap.h"
#include "tsdb/tsdb.h"

#define TSDB_MOD "tsdb"

#define TSDB_WINDOW_NS     (3600ll * 1000000000ll) /* block time window: 1 hour */
#define TSDB_GRACE_NS      (600ll * 1000000000ll)  /* a window is cut 10 min after it ends */
#define TSDB_MINUTE_NS     (60ll * 1000000000ll)
#define TSDB_LATE_CUT_NS   (60ll * 1000000000ll) /* late points are cut at most once a minute */
#define TSDB_SEGMENT_BYTES ((uint64_t)64 << 20)  /* WAL segment rotation */
#define TSDB_WAL_BACKLOG   ((size_t)256 << 20)   /* unwritten WAL bytes before EQUOTA */
#define TSDB_HEAD_MAX      ((uint64_t)32 << 20)  /* head points before a forced full cut */
/* Points of one device in one block (a 1-hour window) that a reader
 * accepts: twice what one forced cut can write, so a compacted window of two
 * full cuts still reads; a corrupt count above it is refused before it
 * becomes an allocation. */
#define TSDB_BLOCK_MAX_DEVICE_POINTS ((uint32_t)1 << 26)
#define TSDB_BATCH                   4096                /* points per read callback */
#define TSDB_NSTRIPE                 64                  /* head lock stripes */
#define TSDB_REC_MAX                 ((uint32_t)1 << 30) /* largest WAL/index record accepted */

/* ---- little endian ---- */
static inline void tsdb_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void tsdb_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t tsdb_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t tsdb_get64(const uint8_t *p)
{
    return (uint64_t)tsdb_get32(p) | (uint64_t)tsdb_get32(p + 4) << 32;
}
static inline int64_t tsdb_floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}
/* ts rounded down to a multiple of unit; INT64_MIN when that multiple is
 * below it (the first, partial unit: timestamps are any int64). */
static inline int64_t tsdb_floor_to(int64_t ts, int64_t unit)
{
    int64_t r;
    return __builtin_mul_overflow(tsdb_floor_div(ts, unit), unit, &r) ? INT64_MIN : r;
}
static inline int64_t tsdb_window_of(int64_t ts)
{
    return tsdb_floor_to(ts, TSDB_WINDOW_NS);
}

/* A head value: the 8 bytes of a double, an int64, a bool, or for strings
 * (offset << 32 | length) into the series' string bytes. */
typedef struct tsdb_run {
    int64_t *ts;
    uint64_t *v;
    uint32_t n, cap;
    thz_buf str; /* string bytes of a string series */
} tsdb_run;

/* A head cell: the aggregates of one series' head points in one minute,
 * kept at write time so tsdb_aggregate answers whole minutes of the head
 * without reading its points. dirty: a point arrived at or between the
 * cell's first and last timestamps, so the cell may count a replaced
 * duplicate; it is not used (its points are read instead) until the next
 * rebuild (cuts). */
typedef struct tsdb_cell {
    int64_t m; /* minute start */
    tsdb_agg a;
    bool dirty;
} tsdb_cell;

typedef struct tsdb_ser {
    uint64_t id;
    int64_t tenant;
    tsdb_type type;
    char *device, *metric, *tags; /* NUL-terminated, inside key */
    uint32_t dlen, mlen, tlen;
    uint8_t *key; /* index key: tenant(8) device \0 metric \0 tags */
    size_t klen;
    bool persisted;  /* in the index file */
    uint32_t stripe; /* its head lock: by device, so a device's series share one */
    /* Under the stripe lock of the series (db->stripe[stripe]): */
    tsdb_run head;    /* appended by writers, write order */
    tsdb_run frozen;  /* detached by a cut, readable until its blocks are published */
    tsdb_cell *cells; /* numeric series: head cells, sorted by minute */
    uint32_t ncells, capcells;
    bool cells_ok;    /* the cells cover every head point (false after ENOMEM) */
    bool head_sorted; /* head timestamps strictly increase in write order */
    bool lvc_ok;      /* last-value cache */
    int64_t lvc_ts;
    uint64_t lvc_v;
    char *lvc_s;
    uint32_t lvc_slen;
    int64_t blk_last_ts; /* newest point of this series in any block (INT64_MIN: none) */
} tsdb_ser;

typedef struct tsdb_ids {
    uint64_t *v;
    size_t n, cap;
} tsdb_ids;

typedef struct tsdb_tenant {
    int64_t id;
    uint64_t nseries;
    tsdb_ids all;        /* every series id, ascending */
    hmap postings;       /* "d\0device" | "m\0metric" | "t\0k=v" -> tsdb_ids* */
    hmap labels;         /* "m\0metric" | "k\0tag key" -> the key (malloc'd) */
    int64_t retention_s; /* -1: the default */
    hmap metric_ret;     /* metric -> int64_t* seconds */
} tsdb_tenant;

/* One immutable block file; refcounted so readers keep it past compaction. */
typedef struct tsdb_bentry {
    uint64_t id;
    uint64_t sec_off; /* device section offset in the file */
    uint32_t sec_len;
    uint8_t type;
    uint64_t count;
    double sum, min, max, first, last;
    int64_t first_ts, last_ts;
    uint64_t roll_off; /* 1-minute rollup section (0: none) */
    uint32_t roll_len;
} tsdb_bentry;

typedef struct tsdb_block {
    _Atomic int refs;
    int fd;
    char *path;
    int64_t tenant;
    int64_t win;  /* window start */
    uint64_t seq; /* higher wins on duplicate timestamps */
    int64_t min_ts, max_ts;
    uint64_t bytes;
    tsdb_bentry *e; /* sorted by id */
    size_t ne;
    bool dead; /* unlink when the last reference goes */
} tsdb_block;

typedef struct tsdb_done {
    tsdb_done_fn fn;
    void *ctx;
} tsdb_done;

typedef struct tsdb_wal {
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* wakes the WAL thread */
    pthread_cond_t cv_done; /* wakes flushers waiting for a sequence to be durable */
    thz_buf cur;            /* records not yet handed to the WAL thread */
    tsdb_done *dones;
    size_t ndones, cap_dones;
    uint64_t appended; /* bytes ever appended to cur */
    uint64_t durable;  /* bytes ever written (and fsynced under ALWAYS) */
    size_t rot_at;     /* >0: cur[0..rot_at) goes to the segment before a forced rotation */
    bool rot_req;
    uint64_t rot_done_seq; /* the segment closed by the last forced rotation */
    uint64_t rot_gen, rot_gen_done;
    bool stop;
    bool failed;     /* the last write or sync failed; retry holds what waits */
    thz_err fail_rc; /* its error (THZ_ENOSPC when the disk is full) */
    bool idle;       /* the WAL thread waits on cv */
    bool ticked;     /* its 10 ms tick passed (EVERYSEC) */
    /* Owned by the WAL thread: */
    int fd;
    uint64_t seq; /* current segment */
    uint64_t seg_bytes;
    uint64_t first_seq; /* oldest segment on disk */
    thz_buf spare;
    thz_buf retry; /* bytes a failed write left, written before anything newer */
    tsdb_done *spare_dones;
    size_t cap_spare;
    pthread_t thr;
    bool thr_started;
    int64_t last_sync_ms;
} tsdb_wal;

struct tsdb {
    char *dir;
    tsdb_options o;
    pthread_rwlock_t cut;
    pthread_rwlock_t idx;
    hmap series;      /* key -> tsdb_ser* */
    tsdb_ser **by_id; /* index = id */
    size_t cap_id;
    uint64_t next_id;
    hmap tenants;           /* int64 -> tsdb_tenant* */
    int idx_fd;             /* index file, appended at checkpoints */
    uint64_t idx_persisted; /* series ids <= this are in the index file */
    pthread_mutex_t stripe[TSDB_NSTRIPE];
    tsdb_wal wal;
    pthread_rwlock_t blk_mu;
    tsdb_block **blocks; /* sorted by (win, seq) */
    uint64_t blk_gen;    /* bumped by every publish (under blk_mu) */
    size_t nblocks, cap_blocks;
    uint64_t next_seq;
    pthread_mutex_t maint; /* one background job at a time */
    pthread_mutex_t bg_mu;
    pthread_cond_t bg_cv;
    bool bg_stop;
    pthread_t bg;
    bool bg_started;
    _Atomic int64_t max_ts;
    _Atomic int64_t head_min_ts;
    _Atomic uint64_t head_points;
    _Atomic uint64_t points_written, points_rejected, fsyncs;
    _Atomic uint64_t agg_decoded;    /* points tsdb_aggregate decoded (tests) */
    _Atomic(tsdb_write_fn) on_write; /* tsdb_on_write */
    void *_Atomic on_write_ctx;
    uint64_t ckpt_seq; /* segments <= this are covered by the checkpoint */
};

/* ---- tsdb_index.c ---- */
thz_err tsdb_idx_load(tsdb *db);
/* Looks up (tenant, point's device/metric/tags); NULL when absent. Caller holds idx. */
tsdb_ser *tsdb_idx_find(tsdb *db, int64_t tenant, const tsdb_point *p);
/* Creates a series with the given id (0: the next one); caller holds idx for writing. */
thz_err tsdb_idx_add(tsdb *db, int64_t tenant, const char *dev, size_t dlen, const char *met,
                     size_t mlen, const char *tags, size_t tlen, tsdb_type type, uint64_t id,
                     tsdb_ser **out);
tsdb_tenant *tsdb_tenant_get(tsdb *db, int64_t tenant, bool create);
/* Appends every series not yet persisted to the index file and fsyncs it. */
thz_err tsdb_idx_persist(tsdb *db);
/* Encodes a series definition (the payload shared by index and WAL records). */
thz_err tsdb_ser_def_encode(const tsdb_ser *s, thz_buf *out);
/* Decodes one; returns bytes used or 0 when malformed. */
size_t tsdb_ser_def_decode(const uint8_t *p, size_t n, uint64_t *id, int64_t *tenant, uint8_t *type,
                           const char **dev, uint32_t *dlen, const char **met, uint32_t *mlen,
                           const char **tags, uint32_t *tlen);
tsdb_ser *tsdb_ser_get(tsdb *db, int64_t tenant, uint64_t id); /* takes idx */
void tsdb_idx_free(tsdb *db);

/* ---- tsdb_wal.c ---- */
thz_err tsdb_wal_open(tsdb *db);  /* replays checkpoint + segments, opens a new segment */
thz_err tsdb_wal_start(tsdb *db); /* starts the WAL thread */
void tsdb_wal_stop(tsdb *db);     /* writes everything, fsyncs, joins */
/* Appends one record built by fill into cur; caller holds wal.mu. */
thz_err tsdb_wal_reserve(tsdb *db, size_t payload, uint8_t **p);
void tsdb_wal_commit(tsdb *db, uint8_t *rec, size_t payload);
/* Forces a rotation at the current end of cur (caller holds cut for writing
 * and wal.mu); returns a generation to wait on with tsdb_wal_wait_rot. */
uint64_t tsdb_wal_mark_rotation(tsdb *db);
uint64_t tsdb_wal_wait_rot(tsdb *db, uint64_t gen);
/* Deletes segments <= seq and older checkpoints; writes checkpoint file
 * ckpt.<seq> from the given records first (NULL: none). */
thz_err tsdb_wal_checkpoint(tsdb *db, uint64_t seq, const thz_buf *records);
/* Replays one buffer of records; returns the length of the good prefix.
 * Open only: it takes no head locks (no other thread runs yet). */
size_t tsdb_wal_replay_buf(tsdb *db, const uint8_t *p, size_t n);
void tsdb_wal_sizes(tsdb *db, uint64_t *bytes);
/* Encodes a points entry for s at ts/v into out (checkpoint records). */
thz_err tsdb_wal_put_point(thz_buf *out, const tsdb_ser *s, int64_t ts, uint64_t v,
                           const thz_buf *str);
thz_err tsdb_wal_frame(thz_buf *out, const thz_buf *payload);

/* ---- tsdb.c (used by replay) ---- */
/* Appends one point to s's head and the LVC; caller holds the stripe lock. */
thz_err tsdb_head_append(tsdb *db, tsdb_ser *s, int64_t ts, uint64_t v, const char *str,
                         uint32_t slen);
/* One numeric point of a replay batch (tsdb_wal.c). */
typedef struct tsdb_rpt {
    uint64_t id;
    int64_t ts;
    uint64_t v; /* value bits; string series: an index the replay knows */
} tsdb_rpt;
/* Appends n numeric points of s in log order, as n tsdb_head_append calls
 * would (the usual case, points newer than the head and increasing, in one
 * go); no locks: replay only. */
void tsdb_head_append_run(tsdb *db, tsdb_ser *s, const tsdb_rpt *p, size_t n);
/* Accounts n points appended to heads with timestamps in [min_ts, max_ts]. */
void tsdb_head_note(tsdb *db, size_t n, int64_t min_ts, int64_t max_ts);
/* Recomputes s's head cells from its head points; caller holds the stripe lock. */
void tsdb_cells_rebuild(tsdb_ser *s);
static inline pthread_mutex_t *tsdb_stripe(tsdb *db, const tsdb_ser *s)
{
    return &db->stripe[s->stripe];
}

/* ---- tsdb_block.c ---- */
/* One series' points for a block writer: sorted, deduplicated. */
typedef struct tsdb_bser {
    tsdb_ser *s;
    const int64_t *ts;
    const uint64_t *v;
    const uint8_t *str; /* string bytes base for string series */
    size_t n;
} tsdb_bser;
/* Writes a block of tenant for window win from ss (sorted by device) and
 * returns it loaded (refs 1). */
thz_err tsdb_block_write(tsdb *db, int64_t tenant, int64_t win, uint64_t seq, const tsdb_bser *ss,
                         size_t n, tsdb_block **out);
thz_err tsdb_block_load(const char *path, tsdb_block **out);
const tsdb_bentry *tsdb_block_find(const tsdb_block *b, uint64_t id);
/* Decodes the points of one series; ts/v malloc'd (caller frees); strings in arena. */
thz_err tsdb_block_read(const tsdb_block *b, const tsdb_bentry *e, int64_t **ts, uint64_t **v,
                        size_t *n, thz_buf *arena);
/* Decodes the 1-minute rollup cells of one series (malloc'd, caller frees). */
thz_err tsdb_block_rollup(const tsdb_block *b, const tsdb_bentry *e, tsdb_agg **cells,
                          int64_t **starts, size_t *n);
void tsdb_block_unref(tsdb_block *b);

/* Test hook: runs compaction (every window treated as closed) and retention now. */
void tsdb__maintain(tsdb *db);
/* Test hook: points per replay batch (0: the default, 2 M), so tests
 * reach batch boundaries with small logs. */
extern size_t tsdb__replay_batch;
/* Test hook: points tsdb_aggregate had to decode since open. */
uint64_t tsdb__agg_decoded(tsdb *db);

#endif
