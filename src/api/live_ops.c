/* live_ops.c - the routes of the live web dashboard: a device's connection
 * history and recent raw messages, and the dashboards of a tenant. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "live/live.h"

static void bad(api_call *c, const char *msg)
{
    c->rc = THZ_EINVAL;
    snprintf(c->err, sizeof c->err, "%s", msg);
}

/* ?limit=N (1..max, default def); false (and a 400) when malformed. */
static bool limit_param(api_call *c, int def, int max, int *out)
{
    char v[16];
    int h = http_req_query(c->req, "limit", v, sizeof v);
    *out = def;
    if (h == 0) return true;
    char *end;
    long n = h > 0 ? strtol(v, &end, 10) : 0;
    if (h < 0 || !*v || *end || n < 1 || n > max) {
        c->rc = THZ_EINVAL;
        snprintf(c->err, sizeof c->err, "limit must be an integer from 1 to %d", max);
        return false;
    }
    *out = (int)n;
    return true;
}

static void not_found(api_call *c, const char *what, const char *id)
{
    c->rc = THZ_ENOTFOUND;
    snprintf(c->err, sizeof c->err, "no %s '%.128s'", what, id);
}

void op_device_events(api_call *c)
{
    const char *id = http_req_param(c->req, "id");
    int limit;
    if (!limit_param(c, 50, 500, &limit)) return;
    c->rc = reg_device_events(c->r, c->p.tenant, id, limit, &c->out);
    if (c->rc == THZ_ENOTFOUND) not_found(c, "device", id);
    c->status = 200;
}

void op_device_messages(api_call *c)
{
    const char *id = http_req_param(c->req, "id");
    int limit;
    if (!limit_param(c, 50, 100, &limit)) return;
    if (!reg_device_exists(c->r, c->p.tenant, id, strlen(id))) return not_found(c, "device", id);
    c->rc = live_messages(c->p.tenant, id, limit, &c->out);
    c->status = 200;
}

/* ---- dashboards ---- */

static bool dash_id(api_call *c, int64_t *id)
{
    if (api_param_int(c->req, "id", id)) return true;
    bad(c, "the id in the path must be a positive integer");
    return false;
}

void op_dashboard_list(api_call *c)
{
    c->rc = reg_dashboard_list(c->r, c->p.tenant, &c->out);
    c->status = 200;
}

void op_dashboard_create(api_call *c)
{
    c->rc = reg_dashboard_create(c->r, c->p.tenant, c->body, &c->out, c->err);
    c->status = 201;
}

void op_dashboard_get(api_call *c)
{
    int64_t id;
    if (!dash_id(c, &id)) return;
    c->rc = reg_dashboard_get(c->r, c->p.tenant, id, &c->out);
    if (c->rc == THZ_ENOTFOUND) not_found(c, "dashboard", http_req_param(c->req, "id"));
    c->status = 200;
}

void op_dashboard_update(api_call *c)
{
    int64_t id;
    if (!dash_id(c, &id)) return;
    c->rc = reg_dashboard_update(c->r, c->p.tenant, id, c->body, &c->out, c->err);
    if (c->rc == THZ_ENOTFOUND) not_found(c, "dashboard", http_req_param(c->req, "id"));
    c->status = 200;
}

void op_dashboard_delete(api_call *c)
{
    int64_t id;
    if (!dash_id(c, &id)) return;
    c->rc = reg_dashboard_delete(c->r, c->p.tenant, id);
    if (c->rc == THZ_ENOTFOUND) not_found(c, "dashboard", http_req_param(c->req, "id"));
    c->status = 204;
}
