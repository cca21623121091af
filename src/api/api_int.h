/* api_int.h - private to src/api/: the route table, the per-request call
 * that carries a request to a registry call and back, and the helpers the
 * route operations share. */
#ifndef THZ_API_INT_H
#define THZ_API_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <llhttp.h>
#include <uv.h>

#include "http/http.h"
#include "registry/registry.h"

#define API_JSON_MAX_DEPTH 32 /* nesting of a request body: deeper is 400 */

/* Route flags. */
enum {
    API_NOAUTH = 1,   /* no bearer token needed (login, openapi.json) */
    API_BODY = 2,     /* the body must be a JSON object (parsed into call->body) */
    API_FAST = 4,     /* the operation only makes [fast] registry calls: answered inline */
    API_SUPER = 8,    /* the caller must be a superuser (tenants, backup) */
    API_BODY_OPT = 16 /* like API_BODY, but an empty body is allowed (call->body NULL) */
};

typedef struct api_call api_call;
/* A route's operation. Runs on a worker thread (or inline for API_FAST);
 * sets call->rc and, on success, call->out and call->status. */
typedef void (*api_op_fn)(api_call *c);

typedef struct api_route {
    int method;          /* llhttp method number */
    const char *pattern; /* as http_route takes it, and as the OpenAPI paths name it */
    unsigned flags;
    reg_role role; /* the least role allowed (ignored with API_NOAUTH) */
    api_op_fn op;
} api_route;

/* One request on its way through the API. Owned by the handler until the
 * reply; freed by api.c after http_reply. */
struct api_call {
    uv_work_t work;
    http_request *req; /* pending while the op runs; read-only for the op */
    const api_route *route;
    registry *r;
    reg_principal p; /* the caller (zero for API_NOAUTH) */
    cJSON *body;     /* the parsed body (API_BODY), owned by the call */
    thz_err rc;
    int estatus;           /* an API-level error (bad body): status... */
    const char *ecode;     /* ...and code (static), with err as the message */
    char err[REG_ERR_LEN]; /* message for THZ_EINVAL and friends */
    int status;            /* success status: 200, 201 or 204 */
    cJSON *out;            /* the success body (NULL for 204), owned by the call */
    char *raw;             /* a prebuilt body instead of out (openapi.json); not owned... */
    size_t nraw;
    bool raw_owned;       /* ...unless this is set (malloc'd, freed with the call) */
    const char *raw_type; /* Content-Type of raw (static); NULL: application/json */
};

/* routes.c: the table of every API route, terminated by {0}. */
extern const api_route api_routes[];

/* query_ops.c: the time-series routes (SQL, telemetry, latest). */
void op_query(api_call *c);
void op_device_telemetry(api_call *c);
void op_device_latest(api_call *c);

/* query_ops.c: sparklines of the fleet view. */
void op_fleet_sparklines(api_call *c);

/* live_ops.c: connection history, recent messages, dashboards. */
void op_device_events(api_call *c);
void op_device_messages(api_call *c);
void op_dashboard_list(api_call *c);
void op_dashboard_create(api_call *c);
void op_dashboard_get(api_call *c);
void op_dashboard_update(api_call *c);
void op_dashboard_delete(api_call *c);

/* admin_ops.c: retention and backup. */
void op_retention_get(api_call *c);
void op_retention_put(api_call *c);
void op_backup(api_call *c);

/* prom_ops.c: registers the Prometheus-compatible routes under
 * /prometheus/api/v1/ (their own middleware: bearer or Basic, form
 * parameters, Prometheus' error shape). */
thz_err api_prom_start(registry *r);
/* cert_ops.c: device certificates and CAs (mutual TLS). */
void op_ca_get(api_call *c);
void op_ca_list(api_call *c);
void op_ca_register(api_call *c);
void op_ca_delete(api_call *c);
void op_cert_create(api_call *c);
void op_cert_list(api_call *c);
void op_cert_revoke(api_call *c);

/* openapi.c: the embedded OpenAPI document (NUL-terminated) and its length. */
const char *api_openapi_json(size_t *len);

/* api.c: maps a registry error to the API's status and error code, and
 * writes the error response. msg may be NULL or empty (a default is used). */
void api_error(http_response *res, thz_err rc, const char *msg);

/* Parses an integer id path parameter ("1".."2^63-1"); false if malformed. */
bool api_param_int(const http_request *req, const char *name, int64_t *out);

#endif
