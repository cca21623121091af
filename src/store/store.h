/* store.h - a durable key/value state log: append-only segment files with a
 * CRC per record, replayed on open, compacted in a background thread.
 *
 * The broker keeps its state (retained messages, persistent sessions, their
 * subscriptions, queued and in-flight messages) here. Writers append put and
 * delete records; nothing is ever rewritten in place, so a crash, even
 * kill -9, leaves at worst a torn last record, which replay drops. */
#ifndef THZ_STORE_H
#define THZ_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

typedef struct store store;

typedef struct store_options {
    int fsync;              /* THZ_FSYNC_NEVER, _EVERYSEC or _ALWAYS (core/config.h) */
    uint64_t segment_bytes; /* rotate the active segment past this size (0: 64 MiB) */
    uint32_t max_key;       /* largest key accepted (0: 64 KiB) */
    uint32_t max_value;     /* largest value accepted (0: 256 MiB) */
} store_options;

/* Called by store_open once per live key after replaying every segment
 * (puts and deletes applied, order unspecified). key and val are owned by
 * the store and valid only during the call. */
typedef void (*store_replay_fn)(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                                size_t vlen);

/* Opens (creating if needed) the store named `name` in directory `dir`
 * (files `dir/name.NNNNNNNN.log`), replays it through fn and starts the
 * background thread (fsync everysec, compaction). A torn or corrupt tail is
 * truncated at the last good record with a warning; a corrupt record in the
 * middle of a closed segment is skipped up to the next good one with a
 * warning. *out is freed with store_close. */
thz_err store_open(const char *dir, const char *name, const store_options *opt, store_replay_fn fn,
                   void *ctx, store **out);

/* Append a put or a delete. Thread-safe. Records are buffered in memory
 * until store_flush; a record larger than the bounds gets THZ_ETOOBIG. */
thz_err store_put(store *s, const void *key, size_t klen, const void *val, size_t vlen);
thz_err store_del(store *s, const void *key, size_t klen);

/* Writes every buffered record to the active segment with one write(2)
 * (so it survives kill -9), and fsyncs it when fsync is ALWAYS. Thread-safe;
 * cheap when nothing is buffered. */
thz_err store_flush(store *s);

/* Asks the background thread to compact now (tests); returns at once. */
void store_compact_async(store *s);

/* Statistics for $SYS and tests. */
typedef struct store_stats {
    uint64_t live_keys;
    uint64_t live_bytes; /* sum of key+value sizes of the live keys */
    uint64_t disk_bytes; /* total size of all segment files */
    uint64_t segments;
    uint64_t compactions;
} store_stats;
void store_get_stats(store *s, store_stats *st);

/* Flushes, fsyncs, stops the background thread and frees s. */
void store_close(store *s);

/* Decodes one record at p[0..n) (exposed for the fuzz target and tests):
 * THZ_OK with *rec_len, key/val spans (val NULL for a delete);
 * THZ_EAGAIN when truncated; THZ_ECORRUPT when the CRC or header is bad. */
thz_err store_record_decode(const uint8_t *p, size_t n, size_t *rec_len, const uint8_t **key,
                            size_t *klen, const uint8_t **val, size_t *vlen, int *is_delete);

/* CRC-32C (Castagnoli) of p[0..n), continuing from crc (0 to start); the
 * checksum of records and segment headers, exposed for tests. */
uint32_t store_crc32c(uint32_t crc, const void *p, size_t n);

#endif
