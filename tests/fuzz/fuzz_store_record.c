/* fuzz_store_record.c - libFuzzer target for the state log (src/store):
 * walks store_record_decode over the input, then stores the input as a
 * segment file and opens it twice. The opens must succeed, and the second
 * (after the first truncated any torn tail and appended a probe record)
 * must replay exactly what the first did, plus the probe. */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "store/store.h"

/* tmpfs when there is one: the store fsyncs, and a disk makes that slow. */
static char dir[64];

static const char probe_key[] = "\xff\xfe fuzz probe key \xfe\xff";
static const char probe_val[] = "probe value";

/* An order-independent digest of a replay, without the probe key. */
typedef struct digest {
    uint64_t sum, xor, count;
    int probe_seen;
    int probe_ok;
} digest;

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void on_replay(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    digest *d = ctx;
    if (klen == sizeof probe_key - 1 && !memcmp(key, probe_key, klen)) {
        d->probe_seen++;
        d->probe_ok = vlen == sizeof probe_val - 1 && !memcmp(val, probe_val, vlen);
        return;
    }
    uint64_t h = fnv(0xcbf29ce484222325ull, key, klen);
    h = fnv(h ^ klen, val, vlen) ^ vlen;
    d->sum += h;
    d->xor ^= h * 0x9e3779b97f4a7c15ull;
    d->count++;
}

static void clean_dir(void)
{
    DIR *dp = opendir(dir);
    if (!dp) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(dp))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(dp);
}

static void remove_dir(void)
{
    clean_dir();
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    thz_log_level = -1; /* corrupt input is the point: keep the warnings quiet */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/thz-fuzz-store-XXXXXX", base);
    if (!mkdtemp(dir)) abort();
    atexit(remove_dir);
    return 0;
}

static void walk(const uint8_t *data, size_t size, size_t start)
{
    volatile uint8_t sink = 0;
    size_t off = start;
    while (off < size) {
        size_t len, klen, vlen;
        const uint8_t *key, *val;
        int del;
        thz_err rc =
            store_record_decode(data + off, size - off, &len, &key, &klen, &val, &vlen, &del);
        if (rc != THZ_OK) {
            if (rc != THZ_EAGAIN && rc != THZ_ECORRUPT) abort();
            off++;
            continue;
        }
        if (len < 5 || len > size - off) abort();
        if (key < data + off || key + klen > data + off + len) abort();
        if (del ? val != NULL || vlen != 0 : val != key + klen || val + vlen != data + off + len)
            abort();
        for (size_t i = 0; i < klen; i++) sink ^= key[i];
        for (size_t i = 0; i < vlen; i++) sink ^= val[i];
        off += len;
    }
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    walk(data, size, 0);
    walk(data, size, 20); /* where records start after a segment header */

    clean_dir();
    char path[512];
    snprintf(path, sizeof path, "%s/state.00000001.log", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) abort();
    if (size && write(fd, data, size) != (ssize_t)size) abort();
    close(fd);

    store_options opt = {.segment_bytes = 4096};
    digest d1 = {0}, d2 = {0};
    store *s = NULL;
    thz_err rc = store_open(dir, "state", &opt, on_replay, &d1, &s);
    /* The only refusal allowed: a header of a newer format version. */
    if (rc == THZ_EUNSUPPORTED && size >= 20 && !memcmp(data, "THZS", 4) &&
        (data[4] != 1 || data[5] || data[6] || data[7]))
        return 0;
    if (rc != THZ_OK || !s) abort();
    if (d1.probe_seen > 1) abort();
    if (store_put(s, probe_key, sizeof probe_key - 1, probe_val, sizeof probe_val - 1) != THZ_OK)
        abort();
    store_close(s);

    s = NULL;
    if (store_open(dir, "state", &opt, on_replay, &d2, &s) != THZ_OK || !s) abort();
    store_close(s);
    if (d2.count != d1.count || d2.sum != d1.sum || d2.xor != d1.xor) abort();
    if (d2.probe_seen != 1 || !d2.probe_ok) abort();
    return 0;
}
