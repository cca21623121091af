/* tsdb_block.c - immutable block files: one (tenant, time window) of points,
 * one timestamp column per device shared by its series, column encodings
 * from codec.h, per-series aggregates and 1-minute rollups, a footer index.
 *
 * File DIR/blocks/t<tenant>.w<window start>.s<seq>.blk, written to .tmp,
 * fsynced, renamed, directory fsynced; never modified after. All integers
 * little endian. Sections are framed [u32 CRC-32C of len+payload][u32 len]
 * [payload].
 *
 *   header   "THZB" u32 version (1)
 *   device sections, one per device:
 *            u32 npts, u32 nser, u32 tslen, timestamp column (the sorted
 *            union of the device's series' timestamps), then per series:
 *            u64 id, u8 type, u8 flags (1: presence bitmap follows, bit i =
 *            the series has a point at the i-th timestamp), [bitmap],
 *            u32 count, u32 vlen, value column (count values)
 *   rollup sections, one per numeric series: u32 ncells, u8 mode, u8 k,
 *            then 8 columns each as u32 len + bytes: first_ts, last_ts (ts),
 *            count (i64), then mode 0: sum, min, max, first, last (f64) of
 *            each 1-minute cell; mode 1 (every value a multiple of 10^-k):
 *            i64 columns of scaled integers, each relative to what the
 *            decoder has: last, first - previous cell's last, max -
 *            max(first, last), min(first, last) - min, sum - count * min
 *   footer   u32 version, i64 tenant, i64 window, u64 seq, i64 min_ts,
 *            i64 max_ts, u32 n, then 14 codec columns of n values each
 *            (u32 len + bytes), the entries sorted by id: id, section
 *            offset, section len, type, count (i64); sum, min, max, first,
 *            last (f64); first_ts, last_ts (ts); rollup offset, rollup len
 *            (i64; len 0: none)
 *   trailer  u64 footer offset, u32 footer len, "THZb"
 *
 * A block with whole-block aggregates answers a bin containing the whole
 * block; the 1-hour rollup of a series is its footer entry (windows are 1
 * hour), the 1-minute rollup its rollup section. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/crc32c.h"
#include "core/log.h"
#include "tsdb/codec.h"
#include "tsdb/tsdb_int.h"

#define BLK_VERSION  1
#define FOOTER_COLS  14
#define FOOTER_FIXED 48

static thz_err put_u32(thz_buf *b, uint32_t v)
{
    uint8_t x[4];
    tsdb_put32(x, v);
    return thz_buf_append(b, x, 4);
}

static thz_err put_u64(thz_buf *b, uint64_t v)
{
    uint8_t x[8];
    tsdb_put64(x, v);
    return thz_buf_append(b, x, 8);
}

/* Frames sec (payload) at the end of out. */
static thz_err frame(thz_buf *out, const thz_buf *sec)
{
    return tsdb_wal_frame(out, sec);
}

static double num(tsdb_type t, uint64_t v)
{
    double d;
    switch (t) {
    case TSDB_FLOAT: memcpy(&d, &v, 8); return d;
    case TSDB_INT: return (double)(int64_t)v;
    default: return v ? 1.0 : 0.0;
    }
}

static void agg_add(tsdb_agg *a, int64_t ts, double d)
{
    if (!a->count) {
        *a = (tsdb_agg){1, d, d, d, d, d, ts, ts};
        return;
    }
    a->count++;
    a->sum += d;
    if (d < a->min) a->min = d;
    if (d > a->max) a->max = d;
    if (ts < a->first_ts) {
        a->first_ts = ts;
        a->first = d;
    }
    if (ts >= a->last_ts) {
        a->last_ts = ts;
        a->last = d;
    }
}

/* Encodes the value column of one series. */
static thz_err encode_values(const tsdb_bser *s, thz_buf *out)
{
    size_t n = s->n;
    thz_err rc = THZ_ENOMEM;
    switch (s->s->type) {
    case TSDB_FLOAT: {
        double *d = malloc(n * sizeof *d);
        if (!d) return THZ_ENOMEM;
        memcpy(d, s->v, n * sizeof *d);
        rc = codec_f64_encode(d, n, out);
        free(d);
        break;
    }
    case TSDB_INT: rc = codec_i64_encode((const int64_t *)s->v, n, out); break;
    case TSDB_BOOL: {
        bool *b = malloc(n ? n : 1);
        if (!b) return THZ_ENOMEM;
        for (size_t i = 0; i < n; i++) b[i] = s->v[i] != 0;
        rc = codec_bool_encode(b, n, out);
        free(b);
        break;
    }
    case TSDB_STRING: {
        const char **p = malloc((n ? n : 1) * sizeof *p);
        uint32_t *l = malloc((n ? n : 1) * sizeof *l);
        if (p && l) {
            for (size_t i = 0; i < n; i++) {
                l[i] = (uint32_t)s->v[i];
                p[i] = l[i] ? (const char *)s->str + (s->v[i] >> 32) : NULL;
            }
            rc = codec_str_encode(p, l, n, out);
        }
        free(p);
        free(l);
        break;
    }
    }
    return rc;
}

/* The smallest k (0..6) such that every value is an integer multiple of
 * 10^-k (small enough to sum exactly in int64), or -1. */
static int decimal_digits(const tsdb_bser *s)
{
    static const double p10[] = {1, 10, 100, 1e3, 1e4, 1e5, 1e6};
    if (s->s->type != TSDB_FLOAT) return -1;
    int k = 0;
    for (size_t i = 0; i < s->n; i++) {
        double v = num(TSDB_FLOAT, s->v[i]);
        for (;;) {
            double x = v * p10[k];
            if (fabs(x) < 1e12 && x == nearbyint(x) && nearbyint(x) / p10[k] == v) break;
            if (++k > 6) return -1;
        }
    }
    return k;
}

/* Sums of decimal data are computed exactly in integers and converted
 * once: the result is the double nearest the true sum, which stays
 * decimal, so the rollup's sum column gets the decimal encoding (a float
 * running sum drifts off the decimal grid and falls back to Gorilla, about
 * ten times larger). */
static void exact_sums(const tsdb_bser *s, int k, tsdb_agg *cells, size_t nc, tsdb_agg *whole)
{
    static const double p10[] = {1, 10, 100, 1e3, 1e4, 1e5, 1e6};
    int64_t tot = 0, cell = 0;
    size_t c = 0;
    int64_t cur = INT64_MIN;
    for (size_t i = 0; i < s->n; i++) {
        int64_t m = tsdb_floor_div(s->ts[i], TSDB_MINUTE_NS);
        if (i && m != cur) {
            if (cells && c < nc) cells[c].sum = (double)cell / p10[k];
            c++;
            cell = 0;
        }
        cur = m;
        int64_t x = (int64_t)nearbyint(num(TSDB_FLOAT, s->v[i]) * p10[k]);
        cell += x;
        tot += x;
    }
    if (cells && s->n && c < nc) cells[c].sum = (double)cell / p10[k];
    if (whole) whole->sum = (double)tot / p10[k];
}

static thz_err encode_rollup(const tsdb_bser *s, thz_buf *sec)
{
    size_t nc = 0;
    tsdb_agg *cells = malloc(s->n * sizeof *cells);
    if (!cells) return THZ_ENOMEM;
    int64_t cur = INT64_MIN;
    for (size_t i = 0; i < s->n; i++) {
        int64_t m = tsdb_floor_div(s->ts[i], TSDB_MINUTE_NS);
        if (!nc || m != cur) {
            cur = m;
            memset(&cells[nc++], 0, sizeof *cells);
        }
        agg_add(&cells[nc - 1], s->ts[i], num(s->s->type, s->v[i]));
    }
    int k = decimal_digits(s);
    if (k >= 0) exact_sums(s, k, cells, nc, NULL);
    thz_err rc = put_u32(sec, (uint32_t)nc);
    uint8_t mode[2] = {k >= 0 ? 1 : 0, (uint8_t)(k >= 0 ? k : 0)};
    if (!rc) rc = thz_buf_append(sec, mode, 2);
    int64_t *iv = malloc((nc ? nc : 1) * sizeof *iv);
    double *dv = malloc((nc ? nc : 1) * sizeof *dv);
    if (!iv || !dv) rc = THZ_ENOMEM;
    static const double p10[] = {1, 10, 100, 1e3, 1e4, 1e5, 1e6};
    for (int col = 0; col < 8 && !rc; col++) {
        thz_buf c = {0};
        for (size_t i = 0; i < nc; i++) {
            const tsdb_agg *a = &cells[i];
            if (k >= 0 && col >= 3) {
                /* Decimal data: scaled integers, each column relative to
                 * what the decoder already has, so the numbers are small. */
                double sc = p10[k];
                int64_t last = (int64_t)nearbyint(a->last * sc);
                int64_t first = (int64_t)nearbyint(a->first * sc);
                int64_t mn = (int64_t)nearbyint(a->min * sc), mx = (int64_t)nearbyint(a->max * sc);
                int64_t prev = i ? (int64_t)nearbyint(cells[i - 1].last * sc) : last;
                int64_t hi = first > last ? first : last, lo = first < last ? first : last;
                switch (col) {
                case 3: iv[i] = last; break;
                case 4: iv[i] = first - prev; break;
                case 5: iv[i] = mx - hi; break;
                case 6: iv[i] = lo - mn; break;
                default: iv[i] = (int64_t)nearbyint(a->sum * sc) - (int64_t)a->count * mn;
                }
                continue;
            }
            switch (col) {
            case 0: iv[i] = a->first_ts; break;
            case 1: iv[i] = a->last_ts; break;
            case 2: iv[i] = (int64_t)a->count; break;
            case 3: dv[i] = a->sum; break;
            case 4: dv[i] = a->min; break;
            case 5: dv[i] = a->max; break;
            case 6: dv[i] = a->first; break;
            default: dv[i] = a->last;
            }
        }
        rc = col < 2              ? codec_ts_encode(iv, nc, &c)
             : col == 2 || k >= 0 ? codec_i64_encode(iv, nc, &c)
                                  : codec_f64_encode(dv, nc, &c);
        if (!rc) rc = put_u32(sec, (uint32_t)c.len);
        if (!rc) rc = thz_buf_append(sec, c.p, c.len);
        thz_buf_free(&c);
    }
    free(iv);
    free(dv);
    free(cells);
    return rc;
}

typedef struct wentry {
    uint64_t id;
    uint64_t off;
    uint32_t len;
    uint8_t type;
    tsdb_agg a;
    uint64_t roff;
    uint32_t rlen;
} wentry;

static int went_cmp(const void *a, const void *b)
{
    const wentry *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int fsync_dir(const char *path)
{
    char d[4096];
    snprintf(d, sizeof d, "%s", path);
    char *slash = strrchr(d, '/');
    if (slash) *slash = 0;
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

thz_err tsdb_block_write(tsdb *db, int64_t tenant, int64_t win, uint64_t seq, const tsdb_bser *ss,
                         size_t n, tsdb_block **out)
{
    thz_buf f = {0}, sec = {0}, col = {0};
    wentry *we = calloc(n ? n : 1, sizeof *we);
    int64_t *uts = NULL;
    uint8_t *bm = NULL;
    size_t capu = 0;
    thz_err rc = we ? THZ_OK : THZ_ENOMEM;
    int64_t min_ts = INT64_MAX, max_ts = INT64_MIN;
    size_t b_ts = 0, b_val = 0, b_roll = 0, npts = 0, footer_len = 0;
    if (!rc) rc = thz_buf_append(&f, "THZB", 4);
    if (!rc) rc = put_u32(&f, BLK_VERSION);
    size_t i = 0;
    while (i < n && !rc) {
        size_t j = i, total = 0;
        while (j < n && strcmp(ss[j].s->device, ss[i].s->device) == 0) total += ss[j++].n;
        /* The union of the device's timestamps (each series is sorted). */
        if (total > capu) {
            int64_t *nu = realloc(uts, total * sizeof *nu);
            if (!nu) {
                rc = THZ_ENOMEM;
                break;
            }
            uts = nu;
            capu = total;
        }
        size_t nu = 0;
        for (size_t k = i; k < j; k++) {
            if (nu == 0) {
                memcpy(uts, ss[k].ts, ss[k].n * sizeof *uts);
                nu = ss[k].n;
                continue;
            }
            /* merge uts[0..nu) with ss[k].ts into uts, from the back */
            size_t a = nu, b = ss[k].n, o = 0;
            int64_t *tmp = malloc((nu + b) * sizeof *tmp);
            if (!tmp) {
                rc = THZ_ENOMEM;
                break;
            }
            size_t x = 0, y = 0;
            while (x < a || y < b) {
                int64_t t;
                if (y >= b || (x < a && uts[x] <= ss[k].ts[y])) {
                    t = uts[x++];
                    if (y < b && ss[k].ts[y] == t) y++;
                } else {
                    t = ss[k].ts[y++];
                }
                tmp[o++] = t;
            }
            memcpy(uts, tmp, o * sizeof *uts);
            nu = o;
            free(tmp);
        }
        if (rc) break;
        if (nu && uts[0] < min_ts) min_ts = uts[0];
        if (nu && uts[nu - 1] > max_ts) max_ts = uts[nu - 1];
        sec.len = 0;
        col.len = 0;
        rc = codec_ts_encode(uts, nu, &col);
        b_ts += col.len;
        if (!rc) rc = put_u32(&sec, (uint32_t)nu);
        if (!rc) rc = put_u32(&sec, (uint32_t)(j - i));
        if (!rc) rc = put_u32(&sec, (uint32_t)col.len);
        if (!rc) rc = thz_buf_append(&sec, col.p, col.len);
        uint8_t *nbm = realloc(bm, (nu + 7) / 8 + 1);
        if (!nbm)
            rc = THZ_ENOMEM;
        else
            bm = nbm;
        for (size_t k = i; k < j && !rc; k++) {
            const tsdb_bser *s = &ss[k];
            rc = put_u64(&sec, s->s->id);
            uint8_t hdr[2] = {(uint8_t)s->s->type, s->n != nu};
            if (!rc) rc = thz_buf_append(&sec, hdr, 2);
            if (!rc && s->n != nu) {
                memset(bm, 0, (nu + 7) / 8);
                size_t y = 0;
                for (size_t x = 0; x < nu && y < s->n; x++)
                    if (uts[x] == s->ts[y]) {
                        bm[x / 8] |= (uint8_t)(1u << (x % 8));
                        y++;
                    }
                rc = thz_buf_append(&sec, bm, (nu + 7) / 8);
            }
            col.len = 0;
            if (!rc) rc = encode_values(s, &col);
            b_val += col.len;
            npts += s->n;
            if (!rc) rc = put_u32(&sec, (uint32_t)s->n);
            if (!rc) rc = put_u32(&sec, (uint32_t)col.len);
            if (!rc) rc = thz_buf_append(&sec, col.p, col.len);
            wentry *e = &we[k];
            e->id = s->s->id;
            e->type = (uint8_t)s->s->type;
            e->off = f.len;
            for (size_t p = 0; p < s->n; p++) {
                if (s->s->type == TSDB_STRING) {
                    if (!e->a.count) e->a.first_ts = s->ts[p];
                    e->a.count++;
                    e->a.last_ts = s->ts[p];
                } else {
                    agg_add(&e->a, s->ts[p], num(s->s->type, s->v[p]));
                }
            }
            int dk = decimal_digits(s);
            if (dk >= 0) exact_sums(s, dk, NULL, 0, &e->a);
        }
        if (!rc) {
            for (size_t k = i; k < j; k++) we[k].len = (uint32_t)(sec.len + 8);
            rc = frame(&f, &sec);
        }
        i = j;
    }
    for (size_t k = 0; k < n && !rc; k++) {
        if (ss[k].s->type == TSDB_STRING || !ss[k].n) continue;
        sec.len = 0;
        rc = encode_rollup(&ss[k], &sec);
        we[k].roff = f.len;
        we[k].rlen = (uint32_t)(sec.len + 8);
        b_roll += sec.len + 8;
        if (!rc) rc = frame(&f, &sec);
    }
    if (!rc) {
        if (n > 1) qsort(we, n, sizeof *we, went_cmp);
        sec.len = 0;
        rc = put_u32(&sec, BLK_VERSION);
        if (!rc) rc = put_u64(&sec, (uint64_t)tenant);
        if (!rc) rc = put_u64(&sec, (uint64_t)win);
        if (!rc) rc = put_u64(&sec, seq);
        if (!rc) rc = put_u64(&sec, (uint64_t)min_ts);
        if (!rc) rc = put_u64(&sec, (uint64_t)max_ts);
        if (!rc) rc = put_u32(&sec, (uint32_t)n);
        /* The entries as 14 codec columns (ids, offsets and counts are
         * near-regular, so this is a fraction of fixed-width entries). */
        int64_t *iv = malloc((n ? n : 1) * sizeof *iv);
        double *dv = malloc((n ? n : 1) * sizeof *dv);
        if (!iv || !dv) rc = THZ_ENOMEM;
        for (int c = 0; c < FOOTER_COLS && !rc; c++) {
            for (size_t k = 0; k < n; k++) {
                const wentry *e = &we[k];
                switch (c) {
                case 0: iv[k] = (int64_t)e->id; break;
                case 1: iv[k] = (int64_t)e->off; break;
                case 2: iv[k] = e->len; break;
                case 3: iv[k] = e->type; break;
                case 4: iv[k] = (int64_t)e->a.count; break;
                case 5: dv[k] = e->a.sum; break;
                case 6: dv[k] = e->a.min; break;
                case 7: dv[k] = e->a.max; break;
                case 8: dv[k] = e->a.first; break;
                case 9: dv[k] = e->a.last; break;
                case 10: iv[k] = e->a.first_ts; break;
                case 11: iv[k] = e->a.last_ts; break;
                case 12: iv[k] = (int64_t)e->roff; break;
                default: iv[k] = e->rlen;
                }
            }
            col.len = 0;
            rc = c >= 5 && c <= 9     ? codec_f64_encode(dv, n, &col)
                 : c == 10 || c == 11 ? codec_ts_encode(iv, n, &col)
                                      : codec_i64_encode(iv, n, &col);
            if (!rc) rc = put_u32(&sec, (uint32_t)col.len);
            if (!rc) rc = thz_buf_append(&sec, col.p, col.len);
        }
        free(iv);
        free(dv);
        footer_len = sec.len + 8;
        uint64_t foff = f.len;
        if (!rc) rc = frame(&f, &sec);
        if (!rc) rc = put_u64(&f, foff);
        if (!rc) rc = put_u32(&f, (uint32_t)(sec.len + 8));
        if (!rc) rc = thz_buf_append(&f, "THZb", 4);
    }
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/blocks/t%" PRId64 ".w%" PRId64 ".s%" PRIu64 ".blk", db->dir,
             tenant, win, seq);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!rc) {
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        bool ok = fd >= 0;
        size_t off = 0;
        while (ok && off < f.len) {
            ssize_t w = write(fd, f.p + off, f.len - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0)
                ok = false;
            else
                off += (size_t)w;
        }
        ok = ok && fdatasync(fd) == 0;
        if (fd >= 0) close(fd);
        ok = ok && rename(tmp, path) == 0 && fsync_dir(path) == 0;
        if (!ok) {
            int e = errno;
            log_error(TSDB_MOD, "write block %s: %s", path, strerror(e));
            unlink(tmp);
            rc = thz_err_from_errno(e);
        }
    }
    if (!rc)
        log_info(TSDB_MOD,
                 "block %s: %zu series, %zu points, %zu bytes (%.3f/point): timestamps %zu, "
                 "values %zu, rollups %zu, footer %zu",
                 path, n, npts, f.len, npts ? (double)f.len / (double)npts : 0.0, b_ts, b_val,
                 b_roll, footer_len);
    free(we);
    free(uts);
    free(bm);
    thz_buf_free(&f);
    thz_buf_free(&sec);
    thz_buf_free(&col);
    if (!rc) rc = tsdb_block_load(path, out);
    return rc;
}

/* Reads and checks one framed section; *p malloc'd payload. */
static thz_err read_section(int fd, uint64_t off, uint32_t len, uint64_t fsize, uint8_t **p)
{
    if (len < 8 || off > fsize || len > fsize - off) return THZ_ECORRUPT;
    uint8_t *b = malloc(len);
    if (!b) return THZ_ENOMEM;
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, b + got, len - got, (off_t)(off + got));
        if (r <= 0) {
            free(b);
            return THZ_EIO;
        }
        got += (size_t)r;
    }
    if (tsdb_get32(b + 4) != len - 8 || thz_crc32c(0, b + 4, len - 4) != tsdb_get32(b)) {
        free(b);
        return THZ_ECORRUPT;
    }
    *p = b;
    return THZ_OK;
}

thz_err tsdb_block_load(const char *path, tsdb_block **out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return THZ_EIO;
    struct stat st;
    uint8_t tr[16];
    if (fstat(fd, &st) < 0 || st.st_size < 24 || pread(fd, tr, 16, st.st_size - 16) != 16 ||
        memcmp(tr + 12, "THZb", 4) != 0) {
        close(fd);
        return THZ_ECORRUPT;
    }
    uint64_t fsize = (uint64_t)st.st_size;
    uint8_t *f;
    thz_err rc = read_section(fd, tsdb_get64(tr), tsdb_get32(tr + 8), fsize, &f);
    if (rc) {
        close(fd);
        return rc;
    }
    const uint8_t *p = f + 8;
    size_t plen = tsdb_get32(tr + 8) - 8;
    uint32_t ne = plen >= FOOTER_FIXED ? tsdb_get32(p + 44) : 0;
    /* Each entry takes at least a bit somewhere: bound ne by the file. */
    if (plen < FOOTER_FIXED || tsdb_get32(p) != BLK_VERSION || ne > fsize) {
        free(f);
        close(fd);
        return THZ_ECORRUPT;
    }
    tsdb_block *b = calloc(1, sizeof *b);
    if (b) b->e = calloc(ne ? ne : 1, sizeof *b->e);
    if (b) b->path = strdup(path);
    int64_t *iv = malloc(((size_t)ne + 1) * sizeof *iv);
    double *dv = malloc(((size_t)ne + 1) * sizeof *dv);
    if (!b || !b->e || !b->path || !iv || !dv) {
        if (b) {
            free(b->e);
            free(b->path);
        }
        free(b);
        free(iv);
        free(dv);
        free(f);
        close(fd);
        return THZ_ENOMEM;
    }
    b->refs = 1;
    b->fd = fd;
    b->tenant = (int64_t)tsdb_get64(p + 4);
    b->win = (int64_t)tsdb_get64(p + 12);
    b->seq = tsdb_get64(p + 20);
    b->min_ts = (int64_t)tsdb_get64(p + 28);
    b->max_ts = (int64_t)tsdb_get64(p + 36);
    b->bytes = fsize;
    b->ne = ne;
    const uint8_t *q = p + FOOTER_FIXED, *end = p + plen;
    for (int c = 0; c < FOOTER_COLS && !rc; c++) {
        if (end - q < 4 || (size_t)(end - q - 4) < tsdb_get32(q)) {
            rc = THZ_ECORRUPT;
            break;
        }
        uint32_t l = tsdb_get32(q);
        q += 4;
        thz_err r = c >= 5 && c <= 9     ? codec_f64_decode(q, l, ne, dv)
                    : c == 10 || c == 11 ? codec_ts_decode(q, l, ne, iv)
                                         : codec_i64_decode(q, l, ne, iv);
        q += l;
        if (r) {
            rc = THZ_ECORRUPT;
            break;
        }
        for (uint32_t i = 0; i < ne; i++) {
            tsdb_bentry *e = &b->e[i];
            switch (c) {
            case 0: e->id = (uint64_t)iv[i]; break;
            case 1: e->sec_off = (uint64_t)iv[i]; break;
            case 2: e->sec_len = (uint32_t)iv[i]; break;
            case 3: e->type = (uint8_t)iv[i]; break;
            case 4: e->count = (uint64_t)iv[i]; break;
            case 5: e->sum = dv[i]; break;
            case 6: e->min = dv[i]; break;
            case 7: e->max = dv[i]; break;
            case 8: e->first = dv[i]; break;
            case 9: e->last = dv[i]; break;
            case 10: e->first_ts = iv[i]; break;
            case 11: e->last_ts = iv[i]; break;
            case 12: e->roll_off = (uint64_t)iv[i]; break;
            default: e->roll_len = (uint32_t)iv[i];
            }
        }
    }
    for (uint32_t i = 1; i < ne && !rc; i++)
        if (b->e[i].id <= b->e[i - 1].id) rc = THZ_ECORRUPT;
    free(iv);
    free(dv);
    free(f);
    if (rc) {
        b->refs = 1;
        tsdb_block_unref(b);
        return rc;
    }
    *out = b;
    return THZ_OK;
}

const tsdb_bentry *tsdb_block_find(const tsdb_block *b, uint64_t id)
{
    size_t lo = 0, hi = b->ne;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (b->e[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < b->ne && b->e[lo].id == id ? &b->e[lo] : NULL;
}

#define NEED(k)                                                                                    \
    do {                                                                                           \
        if ((size_t)(end - q) < (size_t)(k)) goto corrupt;                                         \
    } while (0)

thz_err tsdb_block_read(const tsdb_block *b, const tsdb_bentry *e, int64_t **ots, uint64_t **ov,
                        size_t *on, thz_buf *arena)
{
    uint8_t *sec;
    struct stat st;
    if (fstat(b->fd, &st) < 0) return THZ_EIO;
    thz_err rc = read_section(b->fd, e->sec_off, e->sec_len, (uint64_t)st.st_size, &sec);
    if (rc) return rc;
    const uint8_t *q = sec + 8, *end = sec + e->sec_len;
    int64_t *uts = NULL, *ts = NULL;
    uint64_t *v = NULL;
    NEED(12);
    uint32_t nu = tsdb_get32(q), ns = tsdb_get32(q + 4), tl = tsdb_get32(q + 8);
    q += 12;
    NEED(tl);
    if (nu > TSDB_BLOCK_MAX_DEVICE_POINTS) goto corrupt;
    uts = malloc(((size_t)nu + 1) * sizeof *uts);
    if (!uts) goto nomem;
    if (codec_ts_decode(q, tl, nu, uts)) goto corrupt;
    q += tl;
    for (uint32_t k = 0; k < ns; k++) {
        NEED(10);
        uint64_t id = tsdb_get64(q);
        uint8_t type = q[8], flags = q[9];
        q += 10;
        const uint8_t *bmp = NULL;
        if (flags & 1) {
            NEED((nu + 7) / 8);
            bmp = q;
            q += (nu + 7) / 8;
        }
        NEED(8);
        uint32_t cnt = tsdb_get32(q), vl = tsdb_get32(q + 4);
        q += 8;
        NEED(vl);
        if (id != e->id) {
            q += vl;
            continue;
        }
        if (cnt > nu || (!bmp && cnt != nu)) goto corrupt;
        ts = malloc(((size_t)cnt + 1) * sizeof *ts);
        v = malloc(((size_t)cnt + 1) * sizeof *v);
        if (!ts || !v) goto nomem;
        if (bmp) {
            uint32_t y = 0;
            for (uint32_t x = 0; x < nu; x++)
                if (bmp[x / 8] >> (x % 8) & 1) {
                    if (y == cnt) goto corrupt;
                    ts[y++] = uts[x];
                }
            if (y != cnt) goto corrupt;
        } else {
            memcpy(ts, uts, (size_t)cnt * sizeof *ts);
        }
        switch (type) {
        case TSDB_FLOAT:
            if (codec_f64_decode(q, vl, cnt, (double *)v)) goto corrupt;
            break;
        case TSDB_INT:
            if (codec_i64_decode(q, vl, cnt, (int64_t *)v)) goto corrupt;
            break;
        case TSDB_BOOL: {
            bool *bb = malloc(cnt + 1);
            if (!bb) goto nomem;
            if (codec_bool_decode(q, vl, cnt, bb)) {
                free(bb);
                goto corrupt;
            }
            for (uint32_t x = 0; x < cnt; x++) v[x] = bb[x];
            free(bb);
            break;
        }
        case TSDB_STRING: {
            const char **sp = malloc(((size_t)cnt + 1) * sizeof *sp);
            uint32_t *sl = malloc(((size_t)cnt + 1) * sizeof *sl);
            if (!sp || !sl) {
                free(sp);
                free(sl);
                goto nomem;
            }
            if (codec_str_decode(q, vl, cnt, sp, sl, arena)) {
                free(sp);
                free(sl);
                goto corrupt;
            }
            for (uint32_t x = 0; x < cnt; x++)
                v[x] = (sl[x] ? (uint64_t)((const uint8_t *)sp[x] - arena->p) : 0) << 32 | sl[x];
            free(sp);
            free(sl);
            break;
        }
        default: goto corrupt;
        }
        free(uts);
        free(sec);
        *ots = ts;
        *ov = v;
        *on = cnt;
        return THZ_OK;
    }
corrupt:
    rc = THZ_ECORRUPT;
    goto fail;
nomem:
    rc = THZ_ENOMEM;
fail:
    free(uts);
    free(ts);
    free(v);
    free(sec);
    return rc;
}

thz_err tsdb_block_rollup(const tsdb_block *b, const tsdb_bentry *e, tsdb_agg **cells,
                          int64_t **starts, size_t *on)
{
    uint8_t *sec;
    struct stat st;
    if (!e->roll_len) return THZ_ENOTFOUND;
    if (fstat(b->fd, &st) < 0) return THZ_EIO;
    thz_err rc = read_section(b->fd, e->roll_off, e->roll_len, (uint64_t)st.st_size, &sec);
    if (rc) return rc;
    const uint8_t *q = sec + 8, *end = sec + e->roll_len;
    tsdb_agg *c = NULL;
    int64_t *iv = NULL;
    double *dv = NULL;
    NEED(6);
    uint32_t n = tsdb_get32(q);
    uint8_t mode = q[4], k = q[5];
    q += 6;
    /* a window holds at most one cell per minute (a corrupt count must not
     * turn into a huge allocation) */
    if (n > TSDB_WINDOW_NS / TSDB_MINUTE_NS || mode > 1 || k > 6) goto corrupt;
    static const double p10[] = {1, 10, 100, 1e3, 1e4, 1e5, 1e6};
    c = calloc((size_t)n + 1, sizeof *c);
    iv = malloc(((size_t)n + 1) * sizeof *iv);
    dv = malloc(((size_t)n + 1) * sizeof *dv);
    int64_t *sc = calloc(((size_t)n + 1) * 4, sizeof *sc); /* last, first, min, max scaled */
    if (!c || !iv || !dv || !sc) {
        free(sc);
        goto nomem;
    }
    for (int col = 0; col < 8; col++) {
        if ((size_t)(end - q) < 4) {
            free(sc);
            goto corrupt;
        }
        uint32_t l = tsdb_get32(q);
        q += 4;
        if ((size_t)(end - q) < l) {
            free(sc);
            goto corrupt;
        }
        thz_err r = col < 2                 ? codec_ts_decode(q, l, n, iv)
                    : col == 2 || mode == 1 ? codec_i64_decode(q, l, n, iv)
                                            : codec_f64_decode(q, l, n, dv);
        if (r) {
            free(sc);
            goto corrupt;
        }
        q += l;
        for (uint32_t i = 0; i < n; i++) {
            if (mode == 1 && col >= 3) {
                /* unsigned arithmetic: corrupt input must not overflow */
                int64_t *x = &sc[(size_t)i * 4];
                uint64_t u = (uint64_t)iv[i];
                switch (col) {
                case 3: x[0] = iv[i]; break;
                case 4: x[1] = (int64_t)(u + (uint64_t)(i ? sc[(size_t)(i - 1) * 4] : x[0])); break;
                case 5: x[3] = (int64_t)(u + (uint64_t)(x[1] > x[0] ? x[1] : x[0])); break;
                case 6: x[2] = (int64_t)((uint64_t)(x[1] < x[0] ? x[1] : x[0]) - u); break;
                default:
                    c[i].sum = (double)(int64_t)(u + c[i].count * (uint64_t)x[2]) / p10[k];
                    c[i].last = (double)x[0] / p10[k];
                    c[i].first = (double)x[1] / p10[k];
                    c[i].min = (double)x[2] / p10[k];
                    c[i].max = (double)x[3] / p10[k];
                }
                continue;
            }
            switch (col) {
            case 0: c[i].first_ts = iv[i]; break;
            case 1: c[i].last_ts = iv[i]; break;
            case 2: c[i].count = (uint64_t)iv[i]; break;
            case 3: c[i].sum = dv[i]; break;
            case 4: c[i].min = dv[i]; break;
            case 5: c[i].max = dv[i]; break;
            case 6: c[i].first = dv[i]; break;
            default: c[i].last = dv[i];
            }
        }
    }
    free(sc);
    free(dv);
    free(sec);
    for (uint32_t i = 0; i < n; i++) iv[i] = tsdb_floor_to(c[i].first_ts, TSDB_MINUTE_NS);
    *cells = c;
    *starts = iv;
    *on = n;
    return THZ_OK;
corrupt:
    rc = THZ_ECORRUPT;
    goto fail;
nomem:
    rc = THZ_ENOMEM;
fail:
    free(c);
    free(iv);
    free(dv);
    free(sec);
    return rc;
}

void tsdb_block_unref(tsdb_block *b)
{
    if (!b || atomic_fetch_sub(&b->refs, 1) != 1) return;
    close(b->fd);
    free(b->e);
    free(b->path);
    free(b);
}
