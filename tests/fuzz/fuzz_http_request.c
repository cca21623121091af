/* fuzz_http_request.c - libFuzzer target for the HTTP request parser and
 * router: the input is fed to http_parse whole and split at a point chosen
 * by its first byte; every complete request is dispatched to a small route
 * table and serialized. Both feeds must yield the same requests. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_int.h"

static http_result h_ok(http_request *req, http_response *res, void *ctx)
{
    const char *p = http_req_param(req, "rest");
    char q[16];
    http_req_query(req, "qos", q, sizeof q);
    http_req_header(req, "authorization");
    if (p) http_res_body(res, p, strlen(p));
    return HTTP_DONE;
}

/* Runs the parser over data split in two at cut; returns a digest of the
 * requests (count and total body/path bytes) and the final status. */
static uint64_t run(const uint8_t *data, size_t n, size_t cut, int *status)
{
    http_parser ps;
    http_parser_init(&ps);
    uint64_t digest = 0;
    size_t off = 0;
    thz_buf out = {0};
    *status = 0;
    for (int part = 0; part < 2; part++) {
        size_t end = part == 0 ? cut : n;
        while (off < end) {
            size_t used = 0;
            http_request *r = NULL;
            thz_err rc = http_parse(&ps, data + off, end - off, &used, &r);
            if (used > end - off) abort();
            off += used;
            if (rc == THZ_OK) {
                digest = digest * 31 + 1 + r->body.len * 7 + strlen(http_req_path(r));
                http_dispatch(r);
                out.len = 0;
                http_serialize(r, r->keep_alive, &out);
                http_request_free(r);
                continue;
            }
            if (rc == THZ_EAGAIN) {
                if (off != end) abort();
                break;
            }
            *status = ps.err_status;
            off = n;
            part = 2;
            break;
        }
    }
    thz_buf_free(&out);
    http_parser_free(&ps);
    return digest;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    static int init;
    if (!init) {
        http_route(HTTP_GET, "/api/v1/health", h_ok, NULL);
        http_route(HTTP_POST, "/api/v1/topics/{rest...}", h_ok, NULL);
        http_route(HTTP_GET, "/d/{id}/f/{rest...}", h_ok, NULL);
        init = 1;
    }
    if (n == 0) return 0;
    size_t cut = n > 1 ? data[0] % n : 0;
    int s1, s2;
    uint64_t d1 = run(data, n, n, &s1);
    uint64_t d2 = run(data, n, cut, &s2);
    /* splitting the input must not change what is parsed */
    if (d1 != d2 || s1 != s2) abort();
    return 0;
}
