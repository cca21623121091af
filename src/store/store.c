/* store.c - the durable key/value state log behind store.h: append-only
 * segment files of CRC-32C-checked records, replayed on open, flushed by the
 * caller and by a background thread that also compacts closed segments.
 *
 * On-disk format (all integers little endian):
 *
 *   File  DIR/NAME.NNNNNNNN.log, NNNNNNNN the segment sequence number
 *         (8 digits, zero padded; more digits past 99999999).
 *
 *   Segment header, 20 bytes:
 *     0  4  magic "THZS"
 *     4  4  u32 format version (1)
 *     8  8  u64 base: the lowest sequence number whose records this segment
 *           contains. A fresh segment has base == its own sequence; a
 *           segment written by compaction of segments A..B is named B and
 *           has base A.base, which tells replay that any file with a
 *           sequence in [base, B) is superseded (see "Crash safety" below).
 *    16  4  u32 CRC-32C of bytes 0..16
 *
 *   Record, repeated to the end of the file:
 *     u32      CRC-32C of every byte of the record after this field
 *     u8       type: 1 put, 2 delete
 *     varint   klen (LEB128, at most 5 bytes, fits in 32 bits)
 *     varint   vlen (puts only)
 *     klen     key bytes
 *     vlen     value bytes (puts only)
 *
 * Replay. Segments are replayed in sequence order into a hash map whose
 * entries point straight into read-only mappings of the files, so no
 * allocation ever depends on a length read from disk. A record that does
 * not decode starts a resync: a forward byte-by-byte search for the next
 * record whose CRC verifies, bounded by a CRC work budget per segment.
 * What cannot be resynced is dropped: in the last segment by ftruncate at
 * the last good record (the torn tail of a crash), elsewhere by skipping
 * the rest of the file; both with a warning giving the byte count.
 *
 * Active segment. After replay the last segment is reopened for appending
 * when its header is good and it is below segment_bytes (after truncating
 * any torn tail), so restarts do not leave a trail of tiny segments;
 * otherwise a new segment with the next sequence number is created.
 *
 * Locking. `mu` guards the pending buffer, the live-key map, the list of
 * closed segments and the statistics; it is held only for memory
 * operations. `wmu` serializes flushes (the write, fdatasync and rotation
 * of the active segment) so that concurrent flushes keep record order.
 * Lock order: wmu before mu. Compaction takes neither while it reads and
 * writes files, only mu for the final bookkeeping, so writers never wait
 * for it.
 *
 * Crash safety of compaction. The closed segments c1 < ... < cm (always ALL
 * closed segments, so nothing older than c1.base survives) are replayed into
 * a map and their live puts written to NAME.<cm>.tmp with header base =
 * c1.base; the file is fsynced, renamed over NAME.<cm>.log, the directory
 * fsynced, then c1..c(m-1) unlinked. A crash
 *   - before the rename leaves the originals plus a .tmp that open deletes;
 *   - around the rename leaves either the old cm (same state) or the new
 *     one, whose content is durable because it was fsynced before rename;
 *   - after the rename but before (some of) the unlinks leaves c1..c(m-1)
 *     next to the new cm. Replaying them would be wrong: the new cm holds
 *     no tombstones, so a key put in c2 and deleted in cm would come back.
 *     That is what the header's base is for: open ignores and deletes every
 *     segment whose sequence lies in [cm.base, cm), and only then replays.
 * Because the compacted segment replaces every older segment at once, its
 * tombstones are unnecessary and all of them are dropped. Newer segments
 * (the active one, and any rotated during compaction) are replayed after
 * it and override it, exactly as they overrode c1..cm. */
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/crc32c.h"
#include "core/log.h"

#define MOD "store"

enum {
    SEG_HDR_LEN = 20,
    SEG_VERSION = 1,
    REC_PUT = 1,
    REC_DEL = 2,
    REC_MAX_HDR = 4 + 1 + 5 + 5,
};

#define DEF_SEGMENT_BYTES   (64ull << 20)
#define DEF_MAX_KEY         (64u << 10)
#define DEF_MAX_VALUE       (256u << 20)
#define PENDING_MAX         ((size_t)64 << 20) /* buffered bytes before puts get EQUOTA */
#define WBUF_KEEP           ((size_t)4 << 20)  /* larger write buffers are freed after use */
#define COMPACT_DIRECT      (64u << 10)        /* values this large bypass the staging buffer */
#define COMPACT_STAGE       ((size_t)1 << 20)
#define COMPACT_BACKOFF_SEC 60
#define ERR_LOG_EVERY_SEC   10

/* ---- little-endian helpers ---------------------------------------------- */

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* The checksum itself lives in core/crc32c.c, shared with tsdb. */
uint32_t store_crc32c(uint32_t crc, const void *p, size_t n)
{
    return thz_crc32c(crc, p, n);
}

/* ---- record encoding ---------------------------------------------------- */

static size_t varint_len(uint32_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t varint_put(uint8_t *p, uint32_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* Decodes a varint of at most 5 bytes that fits in 32 bits. */
static thz_err varint_get(const uint8_t *p, size_t n, uint32_t *v, size_t *used)
{
    uint32_t r = 0;
    for (size_t i = 0; i < 5; i++) {
        if (i >= n) return THZ_EAGAIN;
        uint8_t b = p[i];
        if (i == 4 && b > 0x0f) return THZ_ECORRUPT;
        r |= (uint32_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = r;
            *used = i + 1;
            return THZ_OK;
        }
    }
    return THZ_ECORRUPT;
}

static uint64_t rec_size(uint32_t klen, uint32_t vlen, int is_delete)
{
    return 5 + varint_len(klen) + (is_delete ? 0 : varint_len(vlen) + (uint64_t)vlen) + klen;
}

/* Writes the record header (CRC included) for key/val into h; returns its
 * length. The key and value bytes follow it on disk. */
static size_t rec_header(uint8_t *h, int type, const void *key, uint32_t klen, const void *val,
                         uint32_t vlen)
{
    size_t n = 4;
    h[n++] = (uint8_t)type;
    n += varint_put(h + n, klen);
    if (type == REC_PUT) n += varint_put(h + n, vlen);
    uint32_t crc = store_crc32c(0, h + 4, n - 4);
    crc = store_crc32c(crc, key, klen);
    if (type == REC_PUT) crc = store_crc32c(crc, val, vlen);
    store_le32(h, crc);
    return n;
}

/* Parses the fixed part of a record without checking its CRC. */
static thz_err rec_parse(const uint8_t *p, size_t n, uint32_t *klen, uint32_t *vlen, int *is_del,
                         size_t *hdr_len, size_t *total)
{
    if (n < 5) return THZ_EAGAIN;
    uint8_t type = p[4];
    if (type != REC_PUT && type != REC_DEL) return THZ_ECORRUPT;
    size_t off = 5, used;
    thz_err rc = varint_get(p + off, n - off, klen, &used);
    if (rc) return rc;
    off += used;
    *vlen = 0;
    if (type == REC_PUT) {
        rc = varint_get(p + off, n - off, vlen, &used);
        if (rc) return rc;
        off += used;
    }
    /* 64-bit arithmetic: lengths come from the input and may be huge. */
    uint64_t t = (uint64_t)off + *klen + *vlen;
    if (t > n) return THZ_EAGAIN;
    *is_del = type == REC_DEL;
    *hdr_len = off;
    *total = (size_t)t;
    return THZ_OK;
}

thz_err store_record_decode(const uint8_t *p, size_t n, size_t *rec_len, const uint8_t **key,
                            size_t *klen, const uint8_t **val, size_t *vlen, int *is_delete)
{
    if (!p && n) return THZ_EINVAL;
    uint32_t k, v;
    int del;
    size_t hdr, total;
    thz_err rc = rec_parse(p, n, &k, &v, &del, &hdr, &total);
    if (rc) return rc;
    if (store_crc32c(0, p + 4, total - 4) != load_le32(p)) return THZ_ECORRUPT;
    if (rec_len) *rec_len = total;
    if (key) *key = p + hdr;
    if (klen) *klen = k;
    if (val) *val = del ? NULL : p + hdr + k;
    if (vlen) *vlen = v;
    if (is_delete) *is_delete = del;
    return THZ_OK;
}

/* ---- hash map ------------------------------------------------------------
 * Open addressing with linear probing and backward-shift deletion. Used for
 * replay (key and val point into file mappings) and for the live-key map
 * that gives exact statistics (key owned by the map, val unused). The seed
 * is random per store so that keys chosen by peers cannot be aimed at one
 * probe chain of a known layout. */

typedef struct kv_slot {
    const uint8_t *key;
    const uint8_t *val;
    uint32_t klen;
    uint32_t vlen;
    uint32_t hash;
    uint32_t used;
} kv_slot;

typedef struct kv_map {
    kv_slot *slots;
    size_t cap; /* a power of two, or 0 */
    size_t n;
    uint64_t seed;
} kv_map;

static uint32_t kv_hash(const kv_map *m, const uint8_t *k, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ m->seed;
    for (size_t i = 0; i < n; i++) h = (h ^ k[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (uint32_t)h;
}

static kv_slot *kv_find(const kv_map *m, const uint8_t *k, uint32_t klen, uint32_t h)
{
    if (!m->cap) return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        kv_slot *sl = &m->slots[i];
        if (!sl->used) return NULL;
        if (sl->hash == h && sl->klen == klen && (klen == 0 || memcmp(sl->key, k, klen) == 0))
            return sl;
    }
}

static thz_err kv_grow(kv_map *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    if (ncap > SIZE_MAX / sizeof(kv_slot)) return THZ_ENOMEM;
    kv_slot *ns = calloc(ncap, sizeof *ns);
    if (!ns) return THZ_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].used) continue;
        size_t j = m->slots[i].hash & (ncap - 1);
        while (ns[j].used) j = (j + 1) & (ncap - 1);
        ns[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return THZ_OK;
}

/* Returns the slot for key, inserting an empty one (key set, *created = 1)
 * when absent; NULL when out of memory. */
static kv_slot *kv_upsert(kv_map *m, const uint8_t *k, uint32_t klen, uint32_t h, int *created)
{
    kv_slot *sl = kv_find(m, k, klen, h);
    *created = 0;
    if (sl) return sl;
    if ((m->n + 1) * 10 > m->cap * 7 && kv_grow(m)) return NULL;
    size_t mask = m->cap - 1, i = h & mask;
    while (m->slots[i].used) i = (i + 1) & mask;
    sl = &m->slots[i];
    memset(sl, 0, sizeof *sl);
    sl->key = k;
    sl->klen = klen;
    sl->hash = h;
    sl->used = 1;
    m->n++;
    *created = 1;
    return sl;
}

static void kv_remove(kv_map *m, kv_slot *sl)
{
    size_t mask = m->cap - 1, i = (size_t)(sl - m->slots);
    m->slots[i].used = 0;
    m->n--;
    /* Backward shift: pull later members of the probe chain into the hole. */
    for (size_t j = (i + 1) & mask; m->slots[j].used; j = (j + 1) & mask) {
        size_t home = m->slots[j].hash & mask;
        /* Move j into i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays) continue;
        m->slots[i] = m->slots[j];
        m->slots[j].used = 0;
        i = j;
    }
}

/* Frees the map; with owned_keys, the key copies too. */
static void kv_free(kv_map *m, bool owned_keys)
{
    if (owned_keys)
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].used) free((void *)m->slots[i].key);
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

/* ---- the store ---------------------------------------------------------- */

typedef struct seg_meta {
    uint64_t seq;
    uint64_t base;
    uint64_t size;
} seg_meta;

struct store {
    char *dir;  /* owned */
    char *name; /* owned */
    store_options opt;
    int dir_fd;
    int lock_fd;

    pthread_mutex_t mu; /* see "Locking" at the top */
    thz_buf buf;        /* encoded records not yet handed to a flush */
    size_t stuck;       /* bytes of wbuf that a failed write left behind */
    bool quota_logged;
    kv_map live; /* key -> value size, keys owned */
    uint64_t live_bytes;
    uint64_t live_rec_bytes; /* encoded size of the live records: compaction trigger */
    seg_meta *closed;        /* closed segments by ascending seq */
    size_t nclosed, closed_cap;
    uint64_t active_seq, active_base, active_size;
    uint64_t compactions;
    bool stop, compact_req;
    pthread_cond_t cv;

    pthread_mutex_t wmu; /* everything below: the flushing side */
    int fd;              /* active segment, O_APPEND */
    thz_buf wbuf;        /* records being written; a failed write leaves the rest here */
    bool dirty;          /* written since the last fdatasync */
    int64_t werr_logged; /* rate limit for repeated write/rotate errors */
    bool write_failing;  /* the last write failed: log when writes recover */

    /* Owned by the background thread. */
    pthread_t thread;
    bool thread_started;
    int64_t compact_not_before;
};

static int64_t mono_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static void seg_name(char *out, size_t len, const char *name, uint64_t seq, const char *ext)
{
    snprintf(out, len, "%s.%08" PRIu64 ".%s", name, seq, ext);
}

static int write_all(int fd, const uint8_t *p, size_t n, size_t *done)
{
    size_t d = 0;
    while (d < n) {
        size_t chunk = n - d > (1u << 30) ? (1u << 30) : n - d;
        ssize_t w = write(fd, p + d, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            *done = d;
            return errno;
        }
        if (w == 0) {
            *done = d;
            return EIO;
        }
        d += (size_t)w;
    }
    *done = d;
    return 0;
}

static void seg_header(uint8_t h[SEG_HDR_LEN], uint64_t base)
{
    memcpy(h, "THZS", 4);
    store_le32(h + 4, SEG_VERSION);
    store_le64(h + 8, base);
    store_le32(h + 16, store_crc32c(0, h, 16));
}

enum { HDR_OK, HDR_BAD, HDR_NEWER };

static int seg_header_check(const uint8_t h[SEG_HDR_LEN], uint64_t seq, uint64_t *base)
{
    if (memcmp(h, "THZS", 4) != 0 || store_crc32c(0, h, 16) != load_le32(h + 16)) return HDR_BAD;
    if (load_le32(h + 4) != SEG_VERSION) return HDR_NEWER;
    *base = load_le64(h + 8);
    return *base <= seq ? HDR_OK : HDR_BAD;
}

/* Creates segment seq with its header; returns the fd or -1 (errno set). */
static int seg_create(store *s, uint64_t seq, uint64_t base, const char *ext, int flags)
{
    char fname[512];
    seg_name(fname, sizeof fname, s->name, seq, ext);
    int fd = openat(s->dir_fd, fname, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644);
    if (fd < 0) return -1;
    uint8_t h[SEG_HDR_LEN];
    seg_header(h, base);
    size_t done;
    int e = write_all(fd, h, sizeof h, &done);
    if (e) {
        close(fd);
        unlinkat(s->dir_fd, fname, 0);
        errno = e;
        return -1;
    }
    return fd;
}

/* Logs a recurring I/O error at most every ERR_LOG_EVERY_SEC. Caller holds wmu. */
static bool werr_should_log(store *s)
{
    int64_t now = mono_sec();
    if (s->werr_logged && now - s->werr_logged < ERR_LOG_EVERY_SEC) return false;
    s->werr_logged = now;
    return true;
}

/* ---- scanning segments (open and compaction) ---------------------------- */

typedef struct scan_ctx {
    store *s;
    kv_map *map;
    const char *fname;
    const char *what; /* "replay" or "compaction", for the warnings */
} scan_ctx;

/* Applies the verified record at p[0..n) to the replay map. */
static thz_err scan_apply(scan_ctx *c, const uint8_t *p, size_t n)
{
    uint32_t klen, vlen;
    int del, created;
    size_t hdr, total;
    rec_parse(p, n, &klen, &vlen, &del, &hdr, &total);
    const uint8_t *key = p + hdr;
    uint32_t h = kv_hash(c->map, key, klen);
    if (del) {
        kv_slot *sl = kv_find(c->map, key, klen, h);
        if (sl) kv_remove(c->map, sl);
        return THZ_OK;
    }
    kv_slot *sl = kv_upsert(c->map, key, klen, h, &created);
    if (!sl) return THZ_ENOMEM;
    sl->val = key + klen;
    sl->vlen = vlen;
    return THZ_OK;
}

/* Looks for the next verifiable record in p[from..n), spending at most
 * *budget bytes of CRC work on candidates. Returns its offset or n. */
static size_t scan_resync(const store *s, const uint8_t *p, size_t n, size_t from, uint64_t *budget)
{
    for (size_t o = from; o + 5 <= n; o++) {
        uint32_t klen, vlen;
        int del;
        size_t hdr, total;
        if (rec_parse(p + o, n - o, &klen, &vlen, &del, &hdr, &total)) continue;
        /* The configured bounds only filter candidates here: a real record
         * of the past may exceed them if they were lowered since. */
        if (klen > s->opt.max_key || vlen > s->opt.max_value) continue;
        if (*budget < total) return n;
        *budget -= total;
        if (store_crc32c(0, p + o + 4, total - 4) == load_le32(p + o)) return o;
    }
    return n;
}

/* Applies every record of p[from..n) to c->map. *good_end receives the end
 * of the last good record, which is n unless the tail had to be dropped. */
static thz_err scan_segment(scan_ctx *c, const uint8_t *p, size_t n, size_t from, size_t *good_end)
{
    size_t off = from;
    /* Bounds the CRC work of resyncing: a file of garbage costs at most
     * ~10x its size to scan, plus a fixed allowance for small files. */
    uint64_t budget = (64u << 20) + 8 * (uint64_t)n;
    while (off < n) {
        size_t len;
        thz_err rc = store_record_decode(p + off, n - off, &len, NULL, NULL, NULL, NULL, NULL);
        if (rc == THZ_OK) {
            rc = scan_apply(c, p + off, len);
            if (rc) return rc;
            off += len;
            continue;
        }
        size_t next = scan_resync(c->s, p, n, off + 1, &budget);
        if (next >= n) break;
        log_warn(MOD, "%s: %s/%s: skipped %zu corrupt bytes at offset %zu", c->what, c->s->dir,
                 c->fname, next - off, off);
        off = next;
    }
    *good_end = off;
    return THZ_OK;
}

/* ---- open --------------------------------------------------------------- */

typedef struct seg_file {
    uint64_t seq, base, size;
    int hdr;
    bool skip; /* superseded by a compacted segment, or too short to hold records */
    int fd;
    const uint8_t *map;
    size_t good_end;
} seg_file;

static int seg_file_cmp(const void *a, const void *b)
{
    const seg_file *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Parses "NAME.<digits>.<ext>"; returns true with *seq on a match. */
static bool parse_seg_name(const char *fname, const char *name, const char *ext, uint64_t *seq)
{
    size_t nl = strlen(name);
    if (strncmp(fname, name, nl) != 0 || fname[nl] != '.') return false;
    const char *p = fname + nl + 1;
    uint64_t v = 0;
    size_t digits = 0;
    while (*p >= '0' && *p <= '9') {
        if (++digits > 18) return false;
        v = v * 10 + (uint64_t)(*p++ - '0');
    }
    if (digits < 8 || *p != '.' || strcmp(p + 1, ext) != 0) return false;
    *seq = v;
    return true;
}

static int mkdir_p(const char *path)
{
    char tmp[THZ_PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof tmp) return ENAMETOOLONG;
    memcpy(tmp, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (tmp[i] != '/' && tmp[i] != '\0') continue;
        char saved = tmp[i];
        tmp[i] = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return errno;
        tmp[i] = saved;
    }
    return 0;
}

/* Lists the segments, deletes leftover .tmp files. *out is malloc'd. */
static thz_err list_segments(store *s, seg_file **out, size_t *count)
{
    int dfd = openat(s->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        log_error(MOD, "cannot list %s: %s", s->dir, strerror(errno));
        if (dfd >= 0) close(dfd);
        return THZ_EIO;
    }
    seg_file *v = NULL;
    size_t n = 0, cap = 0;
    thz_err rc = THZ_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        uint64_t seq;
        if (parse_seg_name(e->d_name, s->name, "tmp", &seq)) {
            log_info(MOD, "removing %s/%s left by an interrupted compaction", s->dir, e->d_name);
            unlinkat(s->dir_fd, e->d_name, 0);
            continue;
        }
        if (!parse_seg_name(e->d_name, s->name, "log", &seq)) continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            seg_file *nv = realloc(v, ncap * sizeof *nv);
            if (!nv) {
                rc = THZ_ENOMEM;
                break;
            }
            v = nv;
            cap = ncap;
        }
        memset(&v[n], 0, sizeof v[n]);
        v[n].seq = seq;
        v[n].fd = -1;
        n++;
    }
    closedir(d);
    if (rc) {
        free(v);
        return rc;
    }
    if (n) qsort(v, n, sizeof *v, seg_file_cmp);
    *out = v;
    *count = n;
    return THZ_OK;
}

static void segs_release(seg_file *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i].map) munmap((void *)v[i].map, v[i].size);
        if (v[i].fd >= 0) close(v[i].fd);
    }
    free(v);
}

/* Reads every header, marks what replay must skip, and unlinks it. */
static thz_err segs_inspect(store *s, seg_file *v, size_t n)
{
    char fname[512];
    for (size_t i = 0; i < n; i++) {
        seg_name(fname, sizeof fname, s->name, v[i].seq, "log");
        /* Short-lived fds: a directory of many segments must not exhaust them. */
        int fd = openat(s->dir_fd, fname, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            log_error(MOD, "cannot open %s/%s: %s", s->dir, fname, strerror(errno));
            if (fd >= 0) close(fd);
            return THZ_EIO;
        }
        v[i].size = (uint64_t)st.st_size;
        v[i].base = v[i].seq;
        uint8_t h[SEG_HDR_LEN];
        ssize_t got = v[i].size < SEG_HDR_LEN ? 0 : pread(fd, h, sizeof h, 0);
        close(fd);
        if (v[i].size < SEG_HDR_LEN) {
            v[i].hdr = HDR_BAD;
            continue;
        }
        if (got != (ssize_t)sizeof h) {
            log_error(MOD, "cannot read %s/%s: %s", s->dir, fname, strerror(errno));
            return THZ_EIO;
        }
        v[i].hdr = seg_header_check(h, v[i].seq, &v[i].base);
        if (v[i].hdr == HDR_NEWER) {
            log_error(MOD, "%s/%s has format version %" PRIu32 ", newer than this build's %d",
                      s->dir, fname, load_le32(h + 4), SEG_VERSION);
            return THZ_EUNSUPPORTED;
        }
        if (v[i].hdr == HDR_BAD) {
            v[i].base = v[i].seq;
            log_warn(MOD, "%s/%s: bad segment header, scanning it for records", s->dir, fname);
        }
    }
    bool removed = false;
    for (size_t i = 0; i < n; i++) {
        bool superseded = false;
        for (size_t j = i + 1; j < n && !superseded; j++)
            superseded = v[j].hdr == HDR_OK && v[j].base <= v[i].seq;
        bool too_short = v[i].size < SEG_HDR_LEN;
        if (!superseded && !too_short) continue;
        v[i].skip = true;
        seg_name(fname, sizeof fname, s->name, v[i].seq, "log");
        if (superseded)
            log_info(MOD, "removing %s/%s, superseded by a compacted segment", s->dir, fname);
        else
            log_warn(MOD, "removing %s/%s: %" PRIu64 " bytes, too short to hold records", s->dir,
                     fname, v[i].size);
        if (unlinkat(s->dir_fd, fname, 0) != 0)
            log_warn(MOD, "cannot remove %s/%s: %s", s->dir, fname, strerror(errno));
        removed = true;
    }
    if (removed) fsync(s->dir_fd);
    return THZ_OK;
}

/* Replays the segments into map, then hands every live key to fn. */
static thz_err segs_replay(store *s, seg_file *v, size_t n, kv_map *map, size_t last,
                           store_replay_fn fn, void *ctx)
{
    char fname[512];
    for (size_t i = 0; i < n; i++) {
        if (v[i].skip) continue;
        seg_name(fname, sizeof fname, s->name, v[i].seq, "log");
        /* Only the last segment stays open, to truncate its torn tail. */
        v[i].fd = openat(s->dir_fd, fname, (i == last ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        struct stat st;
        if (v[i].fd < 0 || fstat(v[i].fd, &st) != 0) {
            log_error(MOD, "cannot open %s/%s: %s", s->dir, fname, strerror(errno));
            return THZ_EIO;
        }
        /* The size read by segs_inspect is kept: nobody else appends (the lock). */
        if ((uint64_t)st.st_size < v[i].size) v[i].size = (uint64_t)st.st_size;
        void *m = v[i].size ? mmap(NULL, v[i].size, PROT_READ, MAP_PRIVATE, v[i].fd, 0) : NULL;
        if (m == MAP_FAILED || !m) {
            log_error(MOD, "cannot map %s/%s: %s", s->dir, fname, strerror(errno));
            return THZ_EIO;
        }
        v[i].map = m;
        if (i != last) {
            close(v[i].fd);
            v[i].fd = -1;
        }
        scan_ctx c = {s, map, fname, "replay"};
        thz_err rc = scan_segment(&c, v[i].map, v[i].size, SEG_HDR_LEN, &v[i].good_end);
        if (rc) return rc;
        if (v[i].good_end < v[i].size && i != last)
            log_warn(MOD, "%s/%s: dropped the last %" PRIu64 " bytes: no valid record found",
                     s->dir, fname, v[i].size - v[i].good_end);
    }
    if (fn)
        for (size_t i = 0; i < map->cap; i++) {
            kv_slot *sl = &map->slots[i];
            if (sl->used) fn(ctx, sl->key, sl->klen, sl->val, sl->vlen);
        }
    return THZ_OK;
}

/* Turns the replay map into the live-key map by copying the keys out of
 * the mappings, and computes the statistics. */
static thz_err live_from_replay(store *s, kv_map *map)
{
    for (size_t i = 0; i < map->cap; i++) {
        kv_slot *sl = &map->slots[i];
        if (!sl->used) continue;
        uint8_t *k = malloc(sl->klen ? sl->klen : 1);
        if (!k) {
            for (size_t j = 0; j < i; j++)
                if (map->slots[j].used) free((void *)map->slots[j].key);
            return THZ_ENOMEM;
        }
        if (sl->klen) memcpy(k, sl->key, sl->klen);
        sl->key = k;
        sl->val = NULL;
        s->live_bytes += (uint64_t)sl->klen + sl->vlen;
        s->live_rec_bytes += rec_size(sl->klen, sl->vlen, 0);
    }
    s->live = *map;
    memset(map, 0, sizeof *map);
    return THZ_OK;
}

/* Truncates the torn tail of the last segment and opens the active one. */
static thz_err open_active(store *s, seg_file *v, size_t n, size_t last)
{
    char fname[512];
    uint64_t max_seq = n ? v[n - 1].seq : 0;
    bool append = false;
    if (last < n) {
        seg_file *l = &v[last];
        seg_name(fname, sizeof fname, s->name, l->seq, "log");
        bool tail_ok = true;
        if (l->good_end < l->size) {
            log_warn(MOD, "%s/%s: torn or corrupt tail, dropped %" PRIu64 " bytes", s->dir, fname,
                     l->size - l->good_end);
            if (ftruncate(l->fd, (off_t)l->good_end) != 0 || fdatasync(l->fd) != 0) {
                log_error(MOD, "cannot truncate %s/%s: %s", s->dir, fname, strerror(errno));
                tail_ok = false;
            } else {
                l->size = l->good_end;
            }
        }
        append = tail_ok && l->hdr == HDR_OK && l->size < s->opt.segment_bytes;
    }
    /* Every remaining segment but the active one is closed. */
    for (size_t i = 0; i < n; i++) {
        if (v[i].skip || (append && i == last)) continue;
        if (s->nclosed == s->closed_cap) {
            size_t ncap = s->closed_cap ? s->closed_cap * 2 : 16;
            seg_meta *nc = realloc(s->closed, ncap * sizeof *nc);
            if (!nc) return THZ_ENOMEM;
            s->closed = nc;
            s->closed_cap = ncap;
        }
        s->closed[s->nclosed++] = (seg_meta){v[i].seq, v[i].base, v[i].size};
    }
    if (append) {
        seg_file *l = &v[last];
        seg_name(fname, sizeof fname, s->name, l->seq, "log");
        s->fd = openat(s->dir_fd, fname, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (s->fd < 0) {
            log_error(MOD, "cannot open %s/%s: %s", s->dir, fname, strerror(errno));
            return THZ_EIO;
        }
        s->active_seq = l->seq;
        s->active_base = l->base;
        s->active_size = l->size;
        return THZ_OK;
    }
    s->active_seq = s->active_base = max_seq + 1;
    s->fd = seg_create(s, s->active_seq, s->active_base, "log", O_EXCL | O_APPEND);
    if (s->fd < 0) {
        seg_name(fname, sizeof fname, s->name, s->active_seq, "log");
        log_error(MOD, "cannot create %s/%s: %s", s->dir, fname, strerror(errno));
        return THZ_EIO;
    }
    s->active_size = SEG_HDR_LEN;
    fsync(s->dir_fd);
    return THZ_OK;
}

static void *store_thread(void *arg);

static void store_free(store *s)
{
    if (s->fd >= 0) close(s->fd);
    if (s->dir_fd >= 0) close(s->dir_fd);
    if (s->lock_fd >= 0) close(s->lock_fd);
    kv_free(&s->live, true);
    thz_buf_free(&s->buf);
    thz_buf_free(&s->wbuf);
    free(s->closed);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->wmu);
    pthread_cond_destroy(&s->cv);
    free(s->dir);
    free(s->name);
    free(s);
}

static uint64_t random_seed(void)
{
    uint64_t v = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &v, sizeof v) != (ssize_t)sizeof v) v = 0;
        close(fd);
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return v ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
}

thz_err store_open(const char *dir, const char *name, const store_options *opt, store_replay_fn fn,
                   void *ctx, store **out)
{
    if (!dir || !name || !out || !*dir || !*name || strchr(name, '/') || strlen(name) > 200)
        return THZ_EINVAL;
    *out = NULL;
    store *s = calloc(1, sizeof *s);
    if (!s) return THZ_ENOMEM;
    s->fd = s->dir_fd = s->lock_fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->wmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (opt) s->opt = *opt;
    if (!s->opt.segment_bytes) s->opt.segment_bytes = DEF_SEGMENT_BYTES;
    if (!s->opt.max_key) s->opt.max_key = DEF_MAX_KEY;
    if (!s->opt.max_value) s->opt.max_value = DEF_MAX_VALUE;
    s->dir = strdup(dir);
    s->name = strdup(name);
    s->live.seed = random_seed();
    if (!s->dir || !s->name) {
        store_free(s);
        return THZ_ENOMEM;
    }

    int e = mkdir_p(dir);
    if (e) {
        log_error(MOD, "cannot create %s: %s", dir, strerror(e));
        store_free(s);
        return THZ_EIO;
    }
    s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0) {
        log_error(MOD, "cannot open %s: %s", dir, strerror(errno));
        store_free(s);
        return THZ_EIO;
    }
    /* One process (and one store handle) per log: two appenders would
     * interleave records and compact under each other. */
    char fname[512];
    snprintf(fname, sizeof fname, "%s.lock", name);
    s->lock_fd = openat(s->dir_fd, fname, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        log_error(MOD, "cannot lock %s/%s: %s", dir, fname,
                  errno == EWOULDBLOCK ? "in use by another store" : strerror(errno));
        store_free(s);
        return THZ_EIO;
    }

    seg_file *v = NULL;
    size_t n = 0;
    kv_map map = {.seed = s->live.seed};
    thz_err rc = list_segments(s, &v, &n);
    if (rc == THZ_OK) rc = segs_inspect(s, v, n);
    size_t last = n;
    for (size_t i = 0; i < n; i++)
        if (!v[i].skip) last = i;
    if (rc == THZ_OK) rc = segs_replay(s, v, n, &map, last, fn, ctx);
    if (rc == THZ_OK) rc = live_from_replay(s, &map);
    kv_free(&map, false);
    /* Unmap before truncating so that no mapping spans a vanished page. */
    for (size_t i = 0; rc == THZ_OK && i < n; i++) {
        if (v[i].map) munmap((void *)v[i].map, v[i].size);
        v[i].map = NULL;
    }
    if (rc == THZ_OK) rc = open_active(s, v, n, last);
    segs_release(v, n);
    if (rc) {
        store_free(s);
        return rc;
    }

    /* The thread must not take the daemon's signals. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    e = pthread_create(&s->thread, NULL, store_thread, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) {
        log_error(MOD, "cannot start the store thread: %s", strerror(e));
        store_free(s);
        return THZ_ENOMEM;
    }
    s->thread_started = true;
    log_info(MOD, "opened %s/%s: %" PRIu64 " live keys, %zu segments", dir, name, s->live.n,
             s->nclosed + 1);
    *out = s;
    return THZ_OK;
}

/* ---- writers ------------------------------------------------------------ */

/* Appends a record under mu, keeping the live map and statistics exact. */
static thz_err append_record(store *s, int type, const uint8_t *key, uint32_t klen,
                             const uint8_t *val, uint32_t vlen)
{
    uint8_t h[REC_MAX_HDR];
    /* The CRC is computed before taking the lock. */
    size_t hl = rec_header(h, type, key, klen, val, vlen);
    size_t total = hl + klen + (type == REC_PUT ? vlen : 0);
    thz_err rc = THZ_OK;

    pthread_mutex_lock(&s->mu);
    uint32_t hash = kv_hash(&s->live, key, klen);
    kv_slot *sl = kv_find(&s->live, key, klen, hash);
    if (type == REC_DEL && !sl) goto out; /* nothing to delete: no tombstone needed */
    size_t pending = s->buf.len + s->stuck;
    if (pending && pending + total > PENDING_MAX) {
        if (!s->quota_logged)
            log_error(MOD, "%s: %zu bytes wait for the disk; refusing new records", s->name,
                      pending);
        s->quota_logged = true;
        rc = THZ_EQUOTA;
        goto out;
    }
    rc = thz_buf_reserve(&s->buf, total);
    if (rc) goto out;
    if (type == REC_PUT) {
        if (!sl) {
            uint8_t *copy = malloc(klen ? klen : 1);
            int created;
            if (copy) memcpy(copy, key, klen);
            if (!copy || !(sl = kv_upsert(&s->live, copy, klen, hash, &created))) {
                free(copy);
                rc = THZ_ENOMEM;
                goto out;
            }
        } else {
            s->live_bytes -= (uint64_t)sl->klen + sl->vlen;
            s->live_rec_bytes -= rec_size(sl->klen, sl->vlen, 0);
        }
        sl->vlen = vlen;
        s->live_bytes += (uint64_t)klen + vlen;
        s->live_rec_bytes += rec_size(klen, vlen, 0);
    } else {
        s->live_bytes -= (uint64_t)sl->klen + sl->vlen;
        s->live_rec_bytes -= rec_size(sl->klen, sl->vlen, 0);
        free((void *)sl->key);
        kv_remove(&s->live, sl);
    }
    uint8_t *p = s->buf.p + s->buf.len;
    memcpy(p, h, hl);
    if (klen) memcpy(p + hl, key, klen);
    if (type == REC_PUT && vlen) memcpy(p + hl + klen, val, vlen);
    s->buf.len += total;
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

thz_err store_put(store *s, const void *key, size_t klen, const void *val, size_t vlen)
{
    if (!s || (!key && klen) || (!val && vlen)) return THZ_EINVAL;
    if (klen > s->opt.max_key || vlen > s->opt.max_value) return THZ_ETOOBIG;
    return append_record(s, REC_PUT, key, (uint32_t)klen, val, (uint32_t)vlen);
}

thz_err store_del(store *s, const void *key, size_t klen)
{
    if (!s || (!key && klen)) return THZ_EINVAL;
    if (klen > s->opt.max_key) return THZ_ETOOBIG;
    return append_record(s, REC_DEL, key, (uint32_t)klen, NULL, 0);
}

/* Closes the active segment and starts the next one. Caller holds wmu. A
 * failure is logged and leaves the old segment active: rotation is retried
 * at the next flush. */
static void rotate(store *s)
{
    char fname[512];
    pthread_mutex_lock(&s->mu);
    if (s->nclosed == s->closed_cap) {
        size_t ncap = s->closed_cap ? s->closed_cap * 2 : 16;
        seg_meta *nc = realloc(s->closed, ncap * sizeof *nc);
        if (nc) {
            s->closed = nc;
            s->closed_cap = ncap;
        }
    }
    bool room = s->nclosed < s->closed_cap;
    uint64_t seq = s->active_seq + 1;
    pthread_mutex_unlock(&s->mu);
    if (!room) return;
    if (s->opt.fsync != THZ_FSYNC_NEVER && s->dirty) {
        if (fdatasync(s->fd) == 0) s->dirty = false;
    }
    int fd = seg_create(s, seq, seq, "log", O_EXCL | O_APPEND);
    if (fd < 0) {
        if (werr_should_log(s)) {
            seg_name(fname, sizeof fname, s->name, seq, "log");
            log_error(MOD, "cannot create %s/%s: %s; still appending to the current segment",
                      s->dir, fname, strerror(errno));
        }
        return;
    }
    if (s->opt.fsync != THZ_FSYNC_NEVER) fsync(s->dir_fd);
    pthread_mutex_lock(&s->mu);
    s->closed[s->nclosed++] = (seg_meta){s->active_seq, s->active_base, s->active_size};
    s->active_seq = s->active_base = seq;
    s->active_size = SEG_HDR_LEN;
    pthread_mutex_unlock(&s->mu);
    close(s->fd);
    s->fd = fd;
    s->dirty = false;
}

/* Writes the pending records; with sync, fdatasyncs them. Takes wmu. */
static thz_err flush_records(store *s, bool sync)
{
    thz_err rc = THZ_OK;
    pthread_mutex_lock(&s->wmu);
    /* Pass 0 writes what a failed write left behind (or the pending
     * records); pass 1 then the records queued meanwhile. */
    for (int pass = 0; pass < 2; pass++) {
        if (s->wbuf.len == 0) {
            pthread_mutex_lock(&s->mu);
            thz_buf t = s->buf;
            s->buf = s->wbuf;
            s->wbuf = t;
            pthread_mutex_unlock(&s->mu);
            if (s->wbuf.len == 0) break;
        }
        size_t done = 0;
        int e = write_all(s->fd, s->wbuf.p, s->wbuf.len, &done);
        thz_buf_consume(&s->wbuf, done);
        if (done) s->dirty = true;
        if (!e && s->wbuf.cap > WBUF_KEEP) thz_buf_free(&s->wbuf);
        pthread_mutex_lock(&s->mu);
        s->active_size += done;
        s->stuck = s->wbuf.len;
        if (!e && s->buf.len == 0) s->quota_logged = false;
        pthread_mutex_unlock(&s->mu);
        if (e) {
            if (werr_should_log(s))
                log_error(MOD,
                          "write to %s/%s.%08" PRIu64 ".log failed: %s; %zu bytes kept for "
                          "retry",
                          s->dir, s->name, s->active_seq, strerror(e), s->wbuf.len);
            s->write_failing = true;
            rc = thz_err_from_errno(e);
            break;
        }
        if (s->write_failing) {
            log_info(MOD, "writes to %s/%s succeed again", s->dir, s->name);
            s->write_failing = false;
            s->werr_logged = 0;
        }
    }
    if (rc == THZ_OK && s->dirty && (sync || s->opt.fsync == THZ_FSYNC_ALWAYS)) {
        if (fdatasync(s->fd) != 0) {
            log_error(MOD, "fdatasync %s/%s: %s", s->dir, s->name, strerror(errno));
            rc = THZ_EIO;
        } else {
            s->dirty = false;
        }
    }
    if (rc == THZ_OK && s->active_size >= s->opt.segment_bytes) rotate(s);
    pthread_mutex_unlock(&s->wmu);
    return rc;
}

thz_err store_flush(store *s)
{
    if (!s) return THZ_EINVAL;
    return flush_records(s, false);
}

void store_compact_async(store *s)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->compact_req = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void store_get_stats(store *s, store_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    st->live_keys = s->live.n;
    st->live_bytes = s->live_bytes;
    st->disk_bytes = s->active_size;
    for (size_t i = 0; i < s->nclosed; i++) st->disk_bytes += s->closed[i].size;
    st->segments = s->nclosed + 1;
    st->compactions = s->compactions;
    pthread_mutex_unlock(&s->mu);
}

/* ---- compaction (background thread only) -------------------------------- */

typedef struct compact_out {
    int fd;
    thz_buf stage;
    uint64_t size;
    int err;
} compact_out;

static void cout_drain(compact_out *o)
{
    if (o->err || o->stage.len == 0) return;
    size_t done;
    o->err = write_all(o->fd, o->stage.p, o->stage.len, &done);
    o->size += done;
    o->stage.len = 0;
}

static void cout_append(compact_out *o, const void *p, size_t n)
{
    if (o->err) return;
    if (n >= COMPACT_DIRECT) {
        cout_drain(o);
        size_t done;
        if (!o->err) o->err = write_all(o->fd, p, n, &done);
        o->size += n;
        return;
    }
    if (o->stage.len + n > COMPACT_STAGE) cout_drain(o);
    if (!o->err && thz_buf_append(&o->stage, p, n)) o->err = ENOMEM;
}

/* Compacts the closed segments snap[0..n) into one; see "Crash safety". */
static void compact(store *s, const seg_meta *snap, size_t n)
{
    char fname[512], tname[512];
    const uint8_t **maps = calloc(n, sizeof *maps);
    uint64_t *sizes = calloc(n, sizeof *sizes);
    kv_map map = {.seed = s->live.seed};
    compact_out o = {.fd = -1};
    uint64_t last = snap[n - 1].seq;
    bool ok = false;
    seg_name(tname, sizeof tname, s->name, last, "tmp");
    if (!maps || !sizes) goto done;

    for (size_t i = 0; i < n; i++) {
        seg_name(fname, sizeof fname, s->name, snap[i].seq, "log");
        int fd = openat(s->dir_fd, fname, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            log_error(MOD, "compaction: cannot open %s/%s: %s", s->dir, fname, strerror(errno));
            if (fd >= 0) close(fd);
            goto done;
        }
        sizes[i] = (uint64_t)st.st_size;
        if (sizes[i] > SEG_HDR_LEN) {
            void *m = mmap(NULL, sizes[i], PROT_READ, MAP_PRIVATE, fd, 0);
            maps[i] = m == MAP_FAILED ? NULL : m;
        }
        close(fd);
        if (sizes[i] > SEG_HDR_LEN && !maps[i]) {
            log_error(MOD, "compaction: cannot map %s/%s: %s", s->dir, fname, strerror(errno));
            goto done;
        }
        if (!maps[i]) continue;
        scan_ctx c = {s, &map, fname, "compaction"};
        size_t good_end;
        if (scan_segment(&c, maps[i], sizes[i], SEG_HDR_LEN, &good_end)) {
            log_error(MOD, "compaction: out of memory");
            goto done;
        }
    }

    o.fd = seg_create(s, last, snap[0].base, "tmp", O_TRUNC);
    if (o.fd < 0) {
        log_error(MOD, "compaction: cannot create %s/%s: %s", s->dir, tname, strerror(errno));
        goto done;
    }
    o.size = SEG_HDR_LEN;
    for (size_t i = 0; i < map.cap && !o.err; i++) {
        kv_slot *sl = &map.slots[i];
        if (!sl->used) continue;
        uint8_t h[REC_MAX_HDR];
        size_t hl = rec_header(h, REC_PUT, sl->key, sl->klen, sl->val, sl->vlen);
        cout_append(&o, h, hl);
        cout_append(&o, sl->key, sl->klen);
        cout_append(&o, sl->val, sl->vlen);
    }
    cout_drain(&o);
    if (!o.err && fsync(o.fd) != 0) o.err = errno;
    if (close(o.fd) != 0 && !o.err) o.err = errno;
    o.fd = -1;
    if (o.err) {
        log_error(MOD, "compaction: writing %s/%s: %s", s->dir, tname, strerror(o.err));
        goto done;
    }
    seg_name(fname, sizeof fname, s->name, last, "log");
    if (renameat(s->dir_fd, tname, s->dir_fd, fname) != 0) {
        log_error(MOD, "compaction: rename %s/%s: %s", s->dir, tname, strerror(errno));
        goto done;
    }
    /* The commit point is behind us: from here a crash replays the new
     * segment and ignores the ones it supersedes. */
    fsync(s->dir_fd);
    ok = true;

    uint64_t before = 0;
    for (size_t i = 0; i < n; i++) before += sizes[i];
    pthread_mutex_lock(&s->mu);
    size_t w = 0;
    for (size_t i = 0; i < s->nclosed; i++) {
        seg_meta *c = &s->closed[i];
        if (c->seq < last && c->seq >= snap[0].seq) continue;
        if (c->seq == last) *c = (seg_meta){last, snap[0].base, o.size};
        s->closed[w++] = *c;
    }
    s->nclosed = w;
    s->compactions++;
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i + 1 < n; i++) {
        seg_name(fname, sizeof fname, s->name, snap[i].seq, "log");
        if (unlinkat(s->dir_fd, fname, 0) != 0)
            log_warn(MOD, "compaction: cannot remove %s/%s: %s", s->dir, fname, strerror(errno));
    }
    fsync(s->dir_fd);
    log_info(MOD, "compacted %zu segments of %s/%s: %" PRIu64 " -> %" PRIu64 " bytes, %zu keys", n,
             s->dir, s->name, before, o.size, map.n);

done:
    if (o.fd >= 0) close(o.fd);
    if (!ok) {
        unlinkat(s->dir_fd, tname, 0);
        s->compact_not_before = mono_sec() + COMPACT_BACKOFF_SEC;
    }
    thz_buf_free(&o.stage);
    kv_free(&map, false);
    for (size_t i = 0; maps && i < n; i++)
        if (maps[i]) munmap((void *)maps[i], sizes[i]);
    free(maps);
    free(sizes);
}

/* Compacts when asked, or when the closed segments are mostly garbage. */
static void maybe_compact(store *s, bool asked)
{
    pthread_mutex_lock(&s->mu);
    uint64_t total = 0;
    for (size_t i = 0; i < s->nclosed; i++) total += s->closed[i].size;
    bool go = asked ? s->nclosed > 0
                    : s->nclosed >= 2 && total > 2 * s->live_rec_bytes &&
                          mono_sec() >= s->compact_not_before;
    seg_meta *snap = NULL;
    size_t n = s->nclosed;
    if (go && (snap = malloc(n * sizeof *snap))) memcpy(snap, s->closed, n * sizeof *snap);
    pthread_mutex_unlock(&s->mu);
    if (!snap) return;
    compact(s, snap, n);
    free(snap);
}

static void *store_thread(void *arg)
{
    store *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        if (!s->compact_req) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        if (s->stop) break;
        bool asked = s->compact_req;
        s->compact_req = false;
        pthread_mutex_unlock(&s->mu);
        /* Flushing every second bounds what a crash can lose in every
         * mode; EVERYSEC adds the fdatasync. Errors are logged inside. */
        flush_records(s, s->opt.fsync == THZ_FSYNC_EVERYSEC);
        maybe_compact(s, asked);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

void store_close(store *s)
{
    if (!s) return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    if (flush_records(s, true) != THZ_OK)
        log_error(MOD, "closing %s/%s: %zu buffered bytes could not be written", s->dir, s->name,
                  s->buf.len + s->wbuf.len);
    store_free(s);
}
