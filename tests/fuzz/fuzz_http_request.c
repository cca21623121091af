/* fuzz_http_request.c - libFuzzer target for the HTTP request parser and
 * router: the input is fed to http_parse whole and split at a point chosen
 * by its first byte; every complete request is dispatched to a small route
 * table (with a WebSocket route and CORS on), finished (gzip, CORS) and
 * serialized. Both feeds must yield the same requests. */
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
    /* big enough to be gzipped when the request accepts it */
    http_res_header(res, "Content-Type", "text/plain");
    for (int i = 0; i < 64; i++) http_res_body(res, "0123456789abcdef0123456789abcdef", 32);
    return HTTP_DONE;
}

static const http_ws_handler ws_h = {NULL, NULL, NULL};

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
                http_finish_response(r);
                /* a 101 only comes from the WebSocket route, for an upgrade */
                if (r->res.status == 101 && (!r->ws_route || !r->upgrade)) abort();
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
        http_route_ws("/ws", "echo, mqtt", &ws_h, NULL);
        http_cors_set("https://a.example, http://b.example:8080");
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
