/* http.c - the InfluxDB-compatible write endpoints: POST /write (1.x) and
 * POST /api/v2/write (2.x), answered 204 once the points are durable.
 *
 * These routes are registered with http_route directly, not through the API
 * table of src/api: the API middleware takes Bearer tokens and JSON bodies
 * only and answers from a synchronous operation, while these take raw line
 * protocol, four token schemes (Bearer, Token, Basic, ?p=) and reply from
 * the engine's done callback on another thread. Teaching the API table all
 * three would touch every route's path for two; here it is ~60 lines that
 * reuse the same pieces (reg_token_check, http_res_error's error shape). */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <llhttp.h>
#include <stdlib.h>
#include <zlib.h>

#include "core/base64.h"
#include "core/log.h"
#include "http/http.h"
#include "ingest/ingest.h"

static tsdb *DB;
static registry *R;

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* The token of the request: "Authorization: Bearer T" or "Token T" (InfluxDB
 * 2 clients), "Basic base64(user:T)" or "?p=T" (InfluxDB 1 clients). */
static bool find_token(http_request *req, char *tok, size_t len)
{
    const char *h = http_req_header(req, "authorization");
    if (h) {
        while (*h == ' ') h++;
        const char *t = NULL;
        if (!strncasecmp(h, "Bearer ", 7))
            t = h + 7;
        else if (!strncasecmp(h, "Token ", 6))
            t = h + 6;
        if (t) {
            while (*t == ' ') t++;
            if (!*t || strlen(t) >= len) return false;
            strcpy(tok, t);
            return true;
        }
        if (!strncasecmp(h, "Basic ", 6)) {
            char dec[1024];
            const char *b = h + 6;
            while (*b == ' ') b++;
            long n = thz_b64_decode(b, strlen(b), (uint8_t *)dec, sizeof dec - 1);
            if (n < 0) return false;
            dec[n] = 0;
            const char *colon = strchr(dec, ':');
            if (!colon || !colon[1] || strlen(colon + 1) >= len) return false;
            strcpy(tok, colon + 1);
            return true;
        }
        return false;
    }
    return http_req_query(req, "p", tok, len) == 1 && tok[0];
}

/* A gzip request body (Content-Encoding: gzip, what Telegraf's influxdb_v2
 * output and the InfluxDB client libraries send by default) inflated into a
 * malloc'd buffer of at most INGEST_MAX_INFLATED bytes. Returns 0, or the
 * HTTP status to answer (400 corrupt, 413 too large, 503 no memory). */
#define INGEST_MAX_INFLATED (8 * 1024 * 1024)
static int gunzip(const uint8_t *in, size_t n, uint8_t **out, size_t *outlen)
{
    z_stream z = {0};
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return 503;
    size_t cap = n * 4 + 1024, len = 0;
    if (cap > INGEST_MAX_INFLATED) cap = INGEST_MAX_INFLATED;
    uint8_t *buf = malloc(cap);
    int status = buf ? 0 : 503;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    while (!status) {
        if (len == cap) {
            if (cap >= INGEST_MAX_INFLATED) {
                status = 413;
                break;
            }
            size_t nc = cap * 2 > INGEST_MAX_INFLATED ? INGEST_MAX_INFLATED : cap * 2;
            uint8_t *nb = realloc(buf, nc);
            if (!nb) {
                status = 503;
                break;
            }
            buf = nb;
            cap = nc;
        }
        z.next_out = buf + len;
        z.avail_out = (uInt)(cap - len);
        int zr = inflate(&z, Z_NO_FLUSH);
        len = cap - z.avail_out;
        if (zr == Z_STREAM_END) break;
        if (zr != Z_OK && !(zr == Z_BUF_ERROR && len == cap)) status = 400;
    }
    inflateEnd(&z);
    if (status) {
        free(buf);
        return status;
    }
    *out = buf;
    *outlen = len;
    return 0;
}

static void write_done(void *ctx, thz_err rc)
{
    http_request *req = ctx;
    http_response *res = http_req_response(req);
    if (rc == THZ_OK) {
        http_res_status(res, 204);
    } else if (rc == THZ_ENOSPC) { /* the engine logged it (rate limited) */
        http_res_error(res, 507, "insufficient_storage",
                       "the disk is full: the points could not be made durable; retry when "
                       "space returns");
    } else {
        log_error("ingest", "write not durable: %s", thz_strerror(rc));
        http_res_error(res, 500, "internal", "the points could not be made durable (logged)");
    }
    http_reply(req);
}

static http_result handle_write(http_request *req, http_response *res, bool v2)
{
    char tok[512];
    if (!find_token(req, tok, sizeof tok)) {
        http_res_error(res, 401, "unauthorized",
                       "this request needs a token: 'Authorization: Token T' or 'Bearer T', "
                       "Basic auth with the token as password, or ?p=T");
        http_res_header(res, "WWW-Authenticate", "Bearer realm=\"thinghz\"");
        return HTTP_DONE;
    }
    reg_principal p;
    if (reg_token_check(R, tok, &p) != THZ_OK) {
        http_res_error(res, 401, "unauthorized", "the token is invalid, expired or revoked");
        http_res_header(res, "WWW-Authenticate",
                        "Bearer realm=\"thinghz\", error=\"invalid_token\"");
        return HTTP_DONE;
    }
    if (p.role < REG_OPERATOR) {
        http_res_error(res, 403, "forbidden",
                       "writing needs the operator role; the token has viewer");
        return HTTP_DONE;
    }
    char prec[16] = "";
    int q = http_req_query(req, "precision", prec, sizeof prec);
    int64_t mult = q == 1 ? ingest_precision(prec, v2) : q == 0 ? 1 : 0;
    if (!mult) {
        http_res_error(res, 400, "invalid_precision",
                       v2 ? "precision must be ns, us, ms or s"
                          : "precision must be n, ns, u, us, ms, s, m or h");
        return HTTP_DONE;
    }
    if (!DB) {
        http_res_error(res, 503, "unavailable", "the time-series engine is not open");
        return HTTP_DONE;
    }
    size_t n;
    const uint8_t *body = http_req_body(req, &n);
    uint8_t *inflated = NULL;
    const char *enc = http_req_header(req, "content-encoding");
    if (enc && strcasecmp(enc, "identity") != 0) {
        if (strcasecmp(enc, "gzip") != 0) {
            http_res_error(res, 415, "unsupported_media_type",
                           "Content-Encoding must be gzip or identity");
            return HTTP_DONE;
        }
        int st = gunzip(body, n, &inflated, &n);
        if (st) {
            http_res_error(res, st,
                           st == 400   ? "invalid_gzip"
                           : st == 413 ? "body_too_large"
                                       : "out_of_memory",
                           st == 400   ? "the gzip body does not inflate"
                           : st == 413 ? "the inflated body is larger than 8 MiB"
                                       : "the server is out of memory");
            return HTTP_DONE;
        }
        body = inflated;
    }
    char err[INGEST_ERR_LEN] = "";
    /* tsdb_write copies the points before it returns: the body (and the
     * inflated copy) may go once ingest_line_protocol has returned */
    thz_err rc = ingest_line_protocol(DB, p.tenant, body, n, mult, now_ns(), write_done, req, err);
    free(inflated);
    switch (rc) {
    case THZ_OK: return HTTP_PENDING; /* write_done replies */
    case THZ_EINVAL: http_res_error(res, 400, "invalid_line_protocol", err); break;
    case THZ_EQUOTA: http_res_error(res, 403, "quota_exceeded", err); break;
    case THZ_ENOMEM:
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
        break;
    case THZ_ENOSPC: http_res_error(res, 507, "insufficient_storage", err); break;
    default:
        log_error("ingest", "write failed: %s: %s", thz_strerror(rc), err);
        http_res_error(res, 500, "internal", "internal error (logged)");
        break;
    }
    return HTTP_DONE;
}

static http_result handle_v1(http_request *req, http_response *res, void *ctx)
{
    return handle_write(req, res, false);
}

static http_result handle_v2(http_request *req, http_response *res, void *ctx)
{
    return handle_write(req, res, true);
}

thz_err ingest_start(tsdb *db, registry *r)
{
    DB = db;
    R = r;
    thz_err rc = http_route(HTTP_POST, "/write", handle_v1, NULL);
    if (!rc) rc = http_route(HTTP_POST, "/api/v2/write", handle_v2, NULL);
    if (rc) log_error("ingest", "cannot register the write routes: %s", thz_strerror(rc));
    return rc;
}
