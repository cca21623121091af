/* ingest.h - the ingest path of the time-series engine: device telemetry JSON
 * (the MQTT hot path: devices/{id}/telemetry) and InfluxDB line protocol
 * (POST /write, POST /api/v2/write) turned into tsdb points.
 *
 * Two layers:
 *  - pure parsers (ingest_json_parse, ingest_lp_parse) that fill an
 *    ingest_batch: no I/O, no engine, testable and fuzzable alone;
 *  - ingest_telemetry / ingest_line_protocol, which parse and then hand the
 *    whole batch to tsdb_write (all or nothing: a malformed payload writes
 *    nothing).
 *
 * Telemetry JSON. A JSON object whose fields become metrics of the device:
 * numbers -> float64 (always: 21 and 21.5 are the same series type),
 * true/false -> bool, strings -> string, null -> skipped, arrays -> the
 * payload is refused (naming the field). Nested objects flatten to dotted
 * names ({"env":{"temp":1}} -> "env.temp"). The top-level field "ts" is the
 * timestamp: epoch milliseconds as a number (fractions allowed, down to the
 * nanosecond) or an RFC 3339 string (up to 9 fractional digits, Z or +-hh:mm);
 * absent or null: now_ns. A JSON array of such objects is a batch. Duplicate
 * names in one object (also after flattening: {"a.b":1,"a":{"b":2}}) -> the
 * last one wins, as if the object were a map; a null that comes last removes
 * the field. Limits: depth 16, 1,000 fields per object, 10,000 points per
 * payload, field names 1..256 bytes without NUL.
 *
 * The scanner is strict RFC 8259 (see json.c for where it is stricter than
 * cJSON, which the differential fuzz target tests/fuzz/fuzz_telemetry_json.c
 * checks it against).
 *
 * Line protocol: see lp.c and docs/INGEST.md for the syntax and the mapping
 * to series (device = tag "device", else tag "host", else the measurement;
 * metric = field key for measurement "telemetry", else "measurement.field";
 * the other tags are the series' tags). */
#ifndef THZ_INGEST_H
#define THZ_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "registry/registry.h"
#include "tsdb/tsdb.h"

#define INGEST_ERR_LEN       256
#define INGEST_MAX_DEPTH     16     /* nesting of objects in a telemetry payload */
#define INGEST_MAX_FIELDS    1000   /* members of one object */
#define INGEST_MAX_POINTS    10000  /* points per telemetry payload */
#define INGEST_MAX_NAME      256    /* metric (flattened field) name, bytes */
#define INGEST_LP_MAX_POINTS 200000 /* points per line-protocol request (1 MiB body) */

/* What went wrong, for tests and the differential fuzz target. */
enum {
    INGEST_E_NONE = 0,
    INGEST_E_SYNTAX,   /* not JSON / not line protocol */
    INGEST_E_NUMBER,   /* a JSON number cJSON would read but RFC 8259 does not allow
                          (leading zero, "1.", too long for the bounded copy, overflow to inf) */
    INGEST_E_STRICT,   /* raw control character or invalid UTF-8 (cJSON accepts both) */
    INGEST_E_NULNAME,  /* a field name with \u0000 (cJSON cuts the name there) */
    INGEST_E_UHEX,     /* a \u escape without four hex digits (cJSON reads \u0000) */
    INGEST_E_SEMANTIC, /* valid JSON that is not valid telemetry: array field, limits,
                          bad ts, empty or too long name, batch element not an object */
    INGEST_E_NOMEM
};

typedef struct ingest_chunk ingest_chunk;

/* The points of one parsed payload and the bytes they point to (decoded
 * strings, flattened names, canonical tag sets) that are not in the input.
 * Points may also point into the input: keep it alive as long as the batch.
 * Starts on caller-provided (stack) storage; grows onto the heap only when
 * that is full. */
typedef struct ingest_batch {
    tsdb_point *pts;
    size_t n, cap;
    tsdb_point *stack_pts; /* the initial array (not freed) */
    char *buf;             /* current chunk of the arena */
    size_t used, size;
    ingest_chunk *chunks; /* heap chunks, freed by ingest_batch_free */
    int err_class;        /* INGEST_E_* of the last error */
    size_t err_off;       /* byte offset of the last error */
} ingest_batch;

void ingest_batch_init(ingest_batch *b, tsdb_point *pts, size_t cap, char *buf, size_t buflen);
void ingest_batch_reset(ingest_batch *b); /* keeps the heap chunks' memory */
void ingest_batch_free(ingest_batch *b);

/* Parses a telemetry payload of device into b (appending). THZ_EINVAL with
 * err "byte N: what" when malformed (b->n is then unspecified: reset it),
 * THZ_ENOMEM. */
thz_err ingest_json_parse(ingest_batch *b, const char *device, size_t dlen, const uint8_t *p,
                          size_t n, int64_t now_ns, char err[INGEST_ERR_LEN]);

/* Parses a line-protocol body into b. mult: nanoseconds per timestamp unit
 * (1 ns, 1000 us, 1000000 ms, 1000000000 s, 60e9 m, 3600e9 h). THZ_EINVAL
 * with err "line L, column C: what". */
thz_err ingest_lp_parse(ingest_batch *b, const uint8_t *p, size_t n, int64_t mult, int64_t now_ns,
                        char err[INGEST_ERR_LEN]);

/* An RFC 3339 time -> ns since the epoch; NULL, or what is wrong. */
const char *ingest_rfc3339(const uint8_t *p, size_t n, int64_t *out);

/* The multiplier of a precision name (n ns u us ms s m h; v2 only allows
 * ns us ms s), or 0 when unknown. NULL/"" is ns. */
int64_t ingest_precision(const char *name, bool v2);

/* Parse and tsdb_write (all or nothing; done as tsdb_write calls it, not
 * called on error). precision_ns_multiplier is int64_t, not int: v1's m and
 * h (60e9, 3600e9) do not fit an int. Zero allocations for payloads up to 64 points. */
thz_err ingest_telemetry(tsdb *db, int64_t tenant, const char *device, size_t dlen,
                         const uint8_t *payload, size_t n, int64_t now_ns, tsdb_done_fn done,
                         void *ctx, char err[INGEST_ERR_LEN]);
thz_err ingest_line_protocol(tsdb *db, int64_t tenant, const uint8_t *body, size_t n,
                             int64_t precision_ns_multiplier, int64_t now_ns, tsdb_done_fn done,
                             void *ctx, char err[INGEST_ERR_LEN]);

/* Registers POST /write and POST /api/v2/write with the HTTP server (after
 * http_start, before net_start). db and r must outlive the I/O threads. db
 * may be NULL: the routes then answer 503. */
thz_err ingest_start(tsdb *db, registry *r);

#endif
