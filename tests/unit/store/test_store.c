/* test_store.c - unit tests of the state log (src/store): replay, rotation,
 * compaction and its crash windows, torn and corrupt files, bounds,
 * concurrency and a kill -9 style crash. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"
#include "store/store.h"

/* ---- helpers ------------------------------------------------------------ */

typedef struct entry {
    char *key;
    size_t klen;
    uint8_t *val;
    size_t vlen;
} entry;

/* What a replay handed us; every key must come exactly once. */
typedef struct coll {
    entry *e;
    size_t n, cap;
} coll;

static entry *coll_find(const coll *c, const void *key, size_t klen)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].klen == klen && memcmp(c->e[i].key, key, klen) == 0) return &c->e[i];
    return NULL;
}

static void coll_add(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    coll *c = ctx;
    assert_null(coll_find(c, key, klen));
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 64;
        c->e = realloc(c->e, c->cap * sizeof *c->e);
        assert_non_null(c->e);
    }
    entry *e = &c->e[c->n++];
    e->key = malloc(klen + 1);
    e->val = malloc(vlen + 1);
    assert_true(e->key && e->val);
    memcpy(e->key, key, klen);
    e->key[klen] = 0;
    if (vlen) memcpy(e->val, val, vlen);
    e->klen = klen;
    e->vlen = vlen;
}

static void coll_free(coll *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->e[i].key);
        free(c->e[i].val);
    }
    free(c->e);
    memset(c, 0, sizeof *c);
}

static void expect_val(const coll *c, const char *key, const char *val)
{
    entry *e = coll_find(c, key, strlen(key));
    if (!val) {
        assert_null(e);
        return;
    }
    assert_non_null(e);
    assert_int_equal(e->vlen, strlen(val));
    assert_memory_equal(e->val, val, e->vlen);
}

static char *make_dir(void)
{
    char *d = strdup("/tmp/thz-store-XXXXXX");
    assert_non_null(d);
    assert_non_null(mkdtemp(d));
    return d;
}

static void remove_dir(char *d)
{
    DIR *dp = opendir(d);
    if (dp) {
        struct dirent *e;
        char p[1024];
        while ((e = readdir(dp))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", d, e->d_name);
            unlink(p);
        }
        closedir(dp);
    }
    rmdir(d);
    free(d);
}

static store *reopen(const char *dir, const store_options *opt, coll *c)
{
    store *s = NULL;
    coll_free(c);
    assert_int_equal(store_open(dir, "state", opt, coll_add, c, &s), THZ_OK);
    assert_non_null(s);
    return s;
}

/* Sequence numbers of the segment files, ascending; returns the count. */
static size_t list_seqs(const char *dir, uint64_t *seqs, size_t max)
{
    DIR *dp = opendir(dir);
    assert_non_null(dp);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        unsigned long long seq;
        char ext[8];
        if (sscanf(e->d_name, "state.%llu.%3s", &seq, ext) == 2 && !strcmp(ext, "log") && n < max)
            seqs[n++] = seq;
    }
    closedir(dp);
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && seqs[j - 1] > seqs[j]; j--) {
            uint64_t t = seqs[j];
            seqs[j] = seqs[j - 1];
            seqs[j - 1] = t;
        }
    return n;
}

static void seg_path(char *out, size_t len, const char *dir, uint64_t seq)
{
    snprintf(out, len, "%s/state.%08" PRIu64 ".log", dir, seq);
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Asks for a compaction and waits (bounded) until one more has finished. */
static void compact_and_wait(store *s)
{
    store_stats st;
    store_get_stats(s, &st);
    uint64_t before = st.compactions;
    store_compact_async(s);
    for (int i = 0; i < 1000; i++) {
        store_get_stats(s, &st);
        if (st.compactions > before) return;
        sleep_ms(10);
    }
    fail_msg("compaction did not finish within 10 s");
}

static void put_str(store *s, const char *k, const char *v)
{
    assert_int_equal(store_put(s, k, strlen(k), v, strlen(v)), THZ_OK);
}

/* ---- tests -------------------------------------------------------------- */

static void test_crc_and_decode(void **state)
{
    /* The standard CRC-32C check value. */
    assert_int_equal(store_crc32c(0, "123456789", 9), 0xe3069283u);
    assert_int_equal(store_crc32c(store_crc32c(0, "1234", 4), "56789", 5), 0xe3069283u);
    uint8_t big[1000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 7);
    uint32_t whole = store_crc32c(0, big, sizeof big);
    assert_int_equal(store_crc32c(store_crc32c(0, big, 333), big + 333, 667), whole);

    /* A hand-built put record: crc, type 1, klen 3, vlen 2, "abc", "xy". */
    uint8_t r[12] = {0, 0, 0, 0, 1, 3, 2, 'a', 'b', 'c', 'x', 'y'};
    uint32_t crc = store_crc32c(0, r + 4, sizeof r - 4);
    for (int i = 0; i < 4; i++) r[i] = (uint8_t)(crc >> (8 * i));
    size_t len, klen, vlen;
    const uint8_t *key, *val;
    int del;
    assert_int_equal(store_record_decode(r, sizeof r, &len, &key, &klen, &val, &vlen, &del),
                     THZ_OK);
    assert_int_equal(len, sizeof r);
    assert_int_equal(klen, 3);
    assert_memory_equal(key, "abc", 3);
    assert_int_equal(vlen, 2);
    assert_memory_equal(val, "xy", 2);
    assert_int_equal(del, 0);
    for (size_t n = 0; n < sizeof r; n++)
        assert_int_equal(store_record_decode(r, n, &len, &key, &klen, &val, &vlen, &del),
                         THZ_EAGAIN);
    r[9] ^= 1;
    assert_int_equal(store_record_decode(r, sizeof r, &len, &key, &klen, &val, &vlen, &del),
                     THZ_ECORRUPT);
    r[9] ^= 1;
    r[4] = 3; /* unknown type */
    assert_int_equal(store_record_decode(r, sizeof r, &len, &key, &klen, &val, &vlen, &del),
                     THZ_ECORRUPT);

    /* A delete: crc, type 2, klen 1, "z". */
    uint8_t d[7] = {0, 0, 0, 0, 2, 1, 'z'};
    crc = store_crc32c(0, d + 4, 3);
    for (int i = 0; i < 4; i++) d[i] = (uint8_t)(crc >> (8 * i));
    assert_int_equal(store_record_decode(d, sizeof d, &len, &key, &klen, &val, &vlen, &del),
                     THZ_OK);
    assert_int_equal(del, 1);
    assert_null(val);
    assert_int_equal(len, 7);

    /* An overlong varint claiming more than 32 bits is corrupt, not a 4 GB read. */
    uint8_t o[16] = {0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x7f, 0};
    assert_int_equal(store_record_decode(o, sizeof o, &len, &key, &klen, &val, &vlen, &del),
                     THZ_ECORRUPT);
    /* A 4 GB claim that fits in 32 bits is just "incomplete". */
    uint8_t g[16] = {0, 0, 0, 0, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f};
    assert_int_equal(store_record_decode(g, sizeof g, &len, &key, &klen, &val, &vlen, &del),
                     THZ_EAGAIN);
}

static void test_roundtrip(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store *s = reopen(dir, NULL, &c);
    assert_int_equal(c.n, 0);
    put_str(s, "a", "1");
    put_str(s, "b", "22");
    assert_int_equal(store_put(s, "", 0, NULL, 0), THZ_OK); /* empty key and value */
    put_str(s, "gone", "x");
    assert_int_equal(store_del(s, "gone", 4), THZ_OK);
    assert_int_equal(store_flush(s), THZ_OK);
    assert_int_equal(store_flush(s), THZ_OK); /* nothing buffered */
    store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.live_keys, 3);
    assert_int_equal(st.live_bytes, 2 + 3);
    assert_int_equal(st.segments, 1);
    store_close(s);

    s = reopen(dir, NULL, &c);
    assert_int_equal(c.n, 3);
    expect_val(&c, "a", "1");
    expect_val(&c, "b", "22");
    expect_val(&c, "", "");
    expect_val(&c, "gone", NULL);
    store_get_stats(s, &st);
    assert_int_equal(st.live_keys, 3);
    assert_int_equal(st.live_bytes, 5);
    /* Reopening appends to the last segment instead of starting another. */
    assert_int_equal(st.segments, 1);
    store_close(s);

    /* A second handle on the same log is refused while the first is open. */
    s = reopen(dir, NULL, &c);
    store *s2 = NULL;
    assert_int_equal(store_open(dir, "state", NULL, NULL, NULL, &s2), THZ_EIO);
    assert_null(s2);
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

static void test_overwrite(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store *s = reopen(dir, NULL, &c);
    put_str(s, "k", "first value");
    assert_int_equal(store_flush(s), THZ_OK);
    put_str(s, "k", "2nd");
    put_str(s, "other", "o");
    store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.live_keys, 2);
    assert_int_equal(st.live_bytes, 1 + 3 + 5 + 1);
    store_close(s); /* close flushes */

    s = reopen(dir, NULL, &c);
    assert_int_equal(c.n, 2);
    expect_val(&c, "k", "2nd");
    put_str(s, "k", "third");
    store_close(s);
    s = reopen(dir, NULL, &c);
    expect_val(&c, "k", "third");
    expect_val(&c, "other", "o");
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

static void test_delete(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store *s = reopen(dir, NULL, &c);
    put_str(s, "x", "1");
    put_str(s, "y", "2");
    store_close(s);

    s = reopen(dir, NULL, &c);
    assert_int_equal(store_del(s, "x", 1), THZ_OK);
    assert_int_equal(store_del(s, "never", 5), THZ_OK); /* absent: a no-op */
    store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.live_keys, 1);
    assert_int_equal(st.live_bytes, 2);
    store_close(s);

    s = reopen(dir, NULL, &c);
    assert_int_equal(c.n, 1);
    expect_val(&c, "x", NULL);
    expect_val(&c, "y", "2");
    /* Delete then put again. */
    assert_int_equal(store_del(s, "y", 1), THZ_OK);
    put_str(s, "y", "back");
    store_close(s);
    s = reopen(dir, NULL, &c);
    assert_int_equal(c.n, 1);
    expect_val(&c, "y", "back");
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

static void test_rotation_many_keys(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store_options opt = {.segment_bytes = 4096};
    store *s = reopen(dir, &opt, &c);
    char k[32], v[128];
    enum { N = 3000 };
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof k, "key-%05d", i);
        snprintf(v, sizeof v, "value-%d-%0*d", i, i % 60, 0);
        put_str(s, k, v);
        if (i % 50 == 49) assert_int_equal(store_flush(s), THZ_OK);
    }
    assert_int_equal(store_flush(s), THZ_OK);
    store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.live_keys, N);
    assert_true(st.segments > 10);
    uint64_t seqs[4096];
    assert_int_equal(list_seqs(dir, seqs, 4096), st.segments);
    store_close(s);

    s = reopen(dir, &opt, &c);
    assert_int_equal(c.n, N);
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof k, "key-%05d", i);
        snprintf(v, sizeof v, "value-%d-%0*d", i, i % 60, 0);
        expect_val(&c, k, v);
    }
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

static void test_compaction(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store_options opt = {.segment_bytes = 2048, .fsync = THZ_FSYNC_EVERYSEC};
    store *s = reopen(dir, &opt, &c);
    char k[32], v[64];
    enum { KEYS = 200, ROUNDS = 10 };
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < KEYS; i++) {
            snprintf(k, sizeof k, "key-%d", i);
            snprintf(v, sizeof v, "round-%d-key-%d", r, i);
            put_str(s, k, v);
        }
        assert_int_equal(store_flush(s), THZ_OK);
    }
    for (int i = 0; i < KEYS; i += 2) {
        snprintf(k, sizeof k, "key-%d", i);
        assert_int_equal(store_del(s, k, strlen(k)), THZ_OK);
    }
    assert_int_equal(store_flush(s), THZ_OK);
    store_stats before, after;
    store_get_stats(s, &before);
    assert_true(before.segments > 5);

    compact_and_wait(s);
    store_get_stats(s, &after);
    assert_true(after.disk_bytes < before.disk_bytes / 3);
    assert_true(after.segments <= 3);
    assert_int_equal(after.live_keys, KEYS / 2);
    uint64_t seqs[64];
    assert_int_equal(list_seqs(dir, seqs, 64), after.segments);
    /* Writes keep working during and after compaction. */
    put_str(s, "late", "yes");
    store_close(s);

    s = reopen(dir, &opt, &c);
    assert_int_equal(c.n, KEYS / 2 + 1);
    for (int i = 0; i < KEYS; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        snprintf(v, sizeof v, "round-%d-key-%d", ROUNDS - 1, i);
        expect_val(&c, k, i % 2 ? v : NULL);
    }
    expect_val(&c, "late", "yes");
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_true(in && out);
    char b[4096];
    size_t n;
    while ((n = fread(b, 1, sizeof b, in)) > 0) assert_int_equal(fwrite(b, 1, n, out), n);
    fclose(in);
    fclose(out);
}

/* A crash after compaction renamed its output but before it unlinked the
 * segments it replaced: those must not come back, or the key deleted in a
 * later segment (whose tombstone compaction dropped) would be resurrected. */
static void test_compaction_crash_window(void **state)
{
    char *dir = make_dir();
    char *bak = make_dir();
    coll c = {0};
    store_options opt = {.segment_bytes = 512};
    store *s = reopen(dir, &opt, &c);
    char k[32], v[64];
    put_str(s, "zombie", "must stay dead");
    assert_int_equal(store_flush(s), THZ_OK);
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "fill-%d", i);
        snprintf(v, sizeof v, "filler value %d", i);
        put_str(s, k, v);
        if (i == 50) assert_int_equal(store_del(s, "zombie", 6), THZ_OK);
        assert_int_equal(store_flush(s), THZ_OK);
    }
    store_close(s);

    uint64_t seqs[256], seqs2[256];
    size_t n = list_seqs(dir, seqs, 256);
    assert_true(n > 4);
    char p[1024], q[1024];
    for (size_t i = 0; i < n; i++) {
        seg_path(p, sizeof p, dir, seqs[i]);
        seg_path(q, sizeof q, bak, seqs[i]);
        copy_file(p, q);
    }

    s = reopen(dir, &opt, &c);
    compact_and_wait(s);
    store_close(s);
    size_t n2 = list_seqs(dir, seqs2, 256);
    assert_true(n2 < n);

    /* Put back the segments the compaction unlinked. */
    size_t restored = 0;
    for (size_t i = 0; i < n; i++) {
        seg_path(p, sizeof p, dir, seqs[i]);
        if (access(p, F_OK) == 0) continue;
        seg_path(q, sizeof q, bak, seqs[i]);
        copy_file(q, p);
        restored++;
    }
    assert_true(restored > 0);
    /* And a half-written compaction output, as if a later one crashed. */
    snprintf(p, sizeof p, "%s/state.%08" PRIu64 ".tmp", dir, seqs2[0]);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs("THZS half written", f);
    fclose(f);

    s = reopen(dir, &opt, &c);
    expect_val(&c, "zombie", NULL);
    assert_int_equal(c.n, 100);
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "fill-%d", i);
        snprintf(v, sizeof v, "filler value %d", i);
        expect_val(&c, k, v);
    }
    store_close(s);
    /* Open removed the superseded segments and the .tmp. */
    assert_int_equal(list_seqs(dir, seqs, 256), n2);
    assert_int_not_equal(access(p, F_OK), 0);
    coll_free(&c);
    remove_dir(dir);
    remove_dir(bak);
}

static void test_torn_tail(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store *s = reopen(dir, NULL, &c);
    char k[32], v[64];
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        snprintf(v, sizeof v, "value-%d", i);
        put_str(s, k, v);
    }
    assert_int_equal(store_flush(s), THZ_OK);
    store_stats st;
    store_get_stats(s, &st);
    store_close(s);

    uint64_t seqs[8];
    assert_int_equal(list_seqs(dir, seqs, 8), 1);
    char p[1024];
    seg_path(p, sizeof p, dir, seqs[0]);
    off_t full = file_size(p);
    assert_int_equal(full, (off_t)st.disk_bytes);
    /* Tear the last record ("key-99"/"value-99": 4+1+1+1+6+8 bytes) and
     * append garbage, as a crash in the middle of a write might. */
    assert_int_equal(truncate(p, full - 3), 0);
    FILE *f = fopen(p, "ab");
    assert_non_null(f);
    fputs("\x01garbage after the torn record", f);
    fclose(f);

    s = reopen(dir, NULL, &c);
    assert_int_equal(c.n, 99);
    for (int i = 0; i < 99; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        snprintf(v, sizeof v, "value-%d", i);
        expect_val(&c, k, v);
    }
    expect_val(&c, "key-99", NULL);
    /* Truncated at the last good record, and appended to afterwards. */
    assert_int_equal(file_size(p), full - 21);
    put_str(s, "after", "crash");
    store_close(s);

    s = reopen(dir, NULL, &c);
    assert_int_equal(c.n, 100);
    expect_val(&c, "after", "crash");
    expect_val(&c, "key-98", "value-98");
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

static void test_flipped_byte(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store_options opt = {.segment_bytes = 4096};
    store *s = reopen(dir, &opt, &c);
    char k[32], v[64];
    enum { N = 1000 };
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        snprintf(v, sizeof v, "value-%d-xxxxxxxxxxxxxxxxxxxxxxxx", i);
        put_str(s, k, v);
        if (i % 10 == 9) assert_int_equal(store_flush(s), THZ_OK);
    }
    store_close(s);

    uint64_t seqs[256];
    size_t n = list_seqs(dir, seqs, 256);
    assert_true(n > 3);
    char p[1024];
    /* Damage two closed segments: a payload byte in one, a length byte
     * region in the other (whatever sits at those offsets). */
    for (size_t t = 0; t < 2; t++) {
        seg_path(p, sizeof p, dir, seqs[t + 1]);
        off_t size = file_size(p);
        int fd = open(p, O_RDWR);
        assert_true(fd >= 0);
        off_t at = t ? size / 2 : size / 3;
        uint8_t b;
        assert_int_equal(pread(fd, &b, 1, at), 1);
        b ^= 0x5a;
        assert_int_equal(pwrite(fd, &b, 1, at), 1);
        close(fd);
    }
    off_t size_before = file_size(p);

    s = reopen(dir, &opt, &c);
    /* One record lost per flipped byte, every other one survives. */
    assert_int_equal(c.n, N - 2);
    int missing = 0;
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        snprintf(v, sizeof v, "value-%d-xxxxxxxxxxxxxxxxxxxxxxxx", i);
        entry *e = coll_find(&c, k, strlen(k));
        if (!e) {
            missing++;
            continue;
        }
        assert_int_equal(e->vlen, strlen(v));
        assert_memory_equal(e->val, v, e->vlen);
    }
    assert_int_equal(missing, 2);
    /* A closed segment is never truncated. */
    assert_int_equal(file_size(p), size_before);
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

static void test_bad_header_and_version(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store *s = reopen(dir, NULL, &c);
    put_str(s, "a", "1");
    store_close(s);
    uint64_t seqs[8];
    assert_int_equal(list_seqs(dir, seqs, 8), 1);
    char p[1024];
    seg_path(p, sizeof p, dir, seqs[0]);
    uint8_t hdr[20];
    int fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, hdr, 20, 0), 20);

    /* A damaged header: records are still found, a new segment is used. */
    uint8_t bad = hdr[9] ^ 0xff;
    assert_int_equal(pwrite(fd, &bad, 1, 9), 1);
    s = reopen(dir, NULL, &c);
    expect_val(&c, "a", "1");
    store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.segments, 2);
    store_close(s);

    /* A newer format version (with a valid CRC) is refused, not rewritten. */
    hdr[4] = 2;
    uint32_t crc = store_crc32c(0, hdr, 16);
    for (int i = 0; i < 4; i++) hdr[16 + i] = (uint8_t)(crc >> (8 * i));
    assert_int_equal(pwrite(fd, hdr, 20, 0), 20);
    close(fd);
    s = NULL;
    assert_int_equal(store_open(dir, "state", NULL, NULL, NULL, &s), THZ_EUNSUPPORTED);
    assert_null(s);

    /* A zero-length segment (crash right after creating it) is removed. */
    unlink(p);
    seg_path(p, sizeof p, dir, 77);
    fd = open(p, O_CREAT | O_WRONLY, 0644);
    close(fd);
    s = reopen(dir, NULL, &c);
    assert_int_not_equal(access(p, F_OK), 0);
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

static void test_bounds(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store_options opt = {.max_key = 16, .max_value = 100};
    store *s = reopen(dir, &opt, &c);
    char big[200];
    memset(big, 'b', sizeof big);
    assert_int_equal(store_put(s, big, 16, big, 100), THZ_OK);
    assert_int_equal(store_put(s, big, 17, big, 1), THZ_ETOOBIG);
    assert_int_equal(store_put(s, big, 1, big, 101), THZ_ETOOBIG);
    assert_int_equal(store_del(s, big, 17), THZ_ETOOBIG);
    assert_int_equal(store_put(s, NULL, 1, big, 1), THZ_EINVAL);
    assert_int_equal(store_put(NULL, big, 1, big, 1), THZ_EINVAL);
    store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.live_keys, 1);
    store_close(s);
    s = reopen(dir, &opt, &c);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.e[0].klen, 16);
    assert_int_equal(c.e[0].vlen, 100);
    store_close(s);

    s = NULL;
    assert_int_equal(store_open(dir, "a/b", NULL, NULL, NULL, &s), THZ_EINVAL);
    assert_int_equal(store_open(dir, "", NULL, NULL, NULL, &s), THZ_EINVAL);
    coll_free(&c);
    remove_dir(dir);
}

/* Puts beyond the pending bound get EQUOTA while nothing is flushed. */
static void test_pending_quota(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store_options opt = {.max_value = 8u << 20};
    store *s = reopen(dir, &opt, &c);
    uint8_t *v = calloc(1, 8u << 20);
    assert_non_null(v);
    char k[16];
    int i, ok = 0;
    thz_err rc = THZ_OK;
    for (i = 0; i < 20 && rc == THZ_OK; i++) {
        snprintf(k, sizeof k, "big-%d", i);
        rc = store_put(s, k, strlen(k), v, 8u << 20);
        if (rc == THZ_OK) ok++;
    }
    /* The background thread may flush meanwhile; then nothing is refused. */
    if (rc != THZ_OK) {
        assert_int_equal(rc, THZ_EQUOTA);
        assert_true(ok >= 7);
    }
    assert_int_equal(store_flush(s), THZ_OK);
    assert_int_equal(store_put(s, "after", 5, v, 8u << 20), THZ_OK);
    store_close(s);
    free(v);
    s = reopen(dir, &opt, &c);
    assert_int_equal(c.n, (size_t)ok + 1);
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

/* A write that fails half way (here EFBIG from RLIMIT_FSIZE, standing in for
 * ENOSPC) returns EIO and keeps the unwritten bytes; a later flush finishes
 * them, so the file ends up with every record whole and in order. */
static void test_write_error_retry(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store *s = reopen(dir, NULL, &c);
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 4096;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    char k[32], v[128];
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        snprintf(v, sizeof v, "value-%d-%090d", i, 0);
        put_str(s, k, v);
    }
    assert_int_equal(store_flush(s), THZ_EIO);
    assert_int_equal(store_flush(s), THZ_EIO); /* still failing, still kept */
    put_str(s, "queued", "behind the failed ones");
    store_stats st;
    store_get_stats(s, &st);
    assert_true(st.disk_bytes <= 4096);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(store_flush(s), THZ_OK);
    store_close(s);

    s = reopen(dir, NULL, &c);
    assert_int_equal(c.n, 101);
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        snprintf(v, sizeof v, "value-%d-%090d", i, 0);
        expect_val(&c, k, v);
    }
    expect_val(&c, "queued", "behind the failed ones");
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

typedef struct writer {
    store *s;
    int id;
} writer;

enum { THREADS = 4, PER_THREAD = 2000 };

static void *writer_main(void *arg)
{
    writer *w = arg;
    char k[32], v[64];
    for (int i = 0; i < PER_THREAD; i++) {
        snprintf(k, sizeof k, "t%d-%d", w->id, i);
        snprintf(v, sizeof v, "v%d-%d", w->id, i);
        if (store_put(w->s, k, strlen(k), v, strlen(v)) != THZ_OK) return (void *)1;
        /* Everybody also bangs on the same key and flushes now and then. */
        if (store_put(w->s, "shared", 6, v, strlen(v)) != THZ_OK) return (void *)1;
        if (i % 97 == 0 && store_flush(w->s) != THZ_OK) return (void *)1;
        if (i % 500 == 0) store_compact_async(w->s);
    }
    return NULL;
}

static void test_concurrent_puts(void **state)
{
    char *dir = make_dir();
    coll c = {0};
    store_options opt = {.segment_bytes = 16384};
    store *s = reopen(dir, &opt, &c);
    pthread_t t[THREADS];
    writer w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (writer){s, i};
        assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        assert_null(r);
    }
    store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.live_keys, THREADS * PER_THREAD + 1);
    store_close(s);

    s = reopen(dir, &opt, &c);
    assert_int_equal(c.n, THREADS * PER_THREAD + 1);
    char k[32], v[64];
    for (int id = 0; id < THREADS; id++)
        for (int i = 0; i < PER_THREAD; i += 7) {
            snprintf(k, sizeof k, "t%d-%d", id, i);
            snprintf(v, sizeof v, "v%d-%d", id, i);
            expect_val(&c, k, v);
        }
    entry *e = coll_find(&c, "shared", 6);
    assert_non_null(e);
    /* The last put of "shared" is one thread's final value. */
    bool last = false;
    for (int id = 0; id < THREADS; id++) {
        snprintf(v, sizeof v, "v%d-%d", id, PER_THREAD - 1);
        last |= e->vlen == strlen(v) && !memcmp(e->val, v, e->vlen);
    }
    assert_true(last);
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

/* kill -9: a child puts and flushes, then SIGKILLs itself without
 * store_close (no exit handlers, no leak checkers, like a real crash). */
static void test_crash_without_close(void **state)
{
    char *dir = make_dir();
    for (int fs = THZ_FSYNC_NEVER; fs <= THZ_FSYNC_ALWAYS; fs++) {
        store_options opt = {.fsync = fs, .segment_bytes = 8192};
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            store *s = NULL;
            if (store_open(dir, "state", &opt, NULL, NULL, &s) != THZ_OK) _exit(1);
            char k[32], v[64];
            for (int i = 0; i < 500; i++) {
                snprintf(k, sizeof k, "crash-%d-%d", fs, i);
                snprintf(v, sizeof v, "value-%d", i);
                if (store_put(s, k, strlen(k), v, strlen(v)) != THZ_OK) _exit(2);
                if (i % 100 == 99 && store_flush(s) != THZ_OK) _exit(3);
            }
            /* Not flushed: may or may not survive. */
            store_put(s, "unflushed", 9, "?", 1);
            raise(SIGKILL);
            _exit(4);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (WIFEXITED(status)) fail_msg("child exited with %d", WEXITSTATUS(status));
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    }
    coll c = {0};
    store *s = reopen(dir, NULL, &c);
    char k[32], v[64];
    for (int fs = THZ_FSYNC_NEVER; fs <= THZ_FSYNC_ALWAYS; fs++)
        for (int i = 0; i < 500; i++) {
            snprintf(k, sizeof k, "crash-%d-%d", fs, i);
            snprintf(v, sizeof v, "value-%d", i);
            expect_val(&c, k, v);
        }
    store_close(s);
    coll_free(&c);
    remove_dir(dir);
}

int main(void)
{
    thz_log_level = getenv("THZ_TEST_LOG") ? THZ_LOG_DEBUG : -1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc_and_decode),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_overwrite),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_rotation_many_keys),
        cmocka_unit_test(test_compaction),
        cmocka_unit_test(test_compaction_crash_window),
        cmocka_unit_test(test_torn_tail),
        cmocka_unit_test(test_flipped_byte),
        cmocka_unit_test(test_bad_header_and_version),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_pending_quota),
        cmocka_unit_test(test_write_error_retry),
        cmocka_unit_test(test_concurrent_puts),
        cmocka_unit_test(test_crash_without_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
