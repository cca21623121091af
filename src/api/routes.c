/* routes.c - the operations of the REST API, one per route, and the table
 * that binds them to methods, paths, roles and flags. Each operation makes
 * one registry call (two for the enable/disable conveniences); api.c does
 * the rest. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

/* Lists come back from the registry as arrays; the API wraps them as
 * {"items": [...]} like the device list, so fields can be added later. */
static cJSON *wrap_items(cJSON *arr)
{
    if (!cJSON_IsArray(arr)) return arr;
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        cJSON_Delete(arr);
        return NULL;
    }
    cJSON_AddItemToObject(o, "items", arr);
    return o;
}

static void done(api_call *c, thz_err rc, int status)
{
    c->rc = rc;
    c->status = status;
    if (rc == THZ_OK && status != 204 && !c->out) c->rc = THZ_ENOMEM;
}

static void done_list(api_call *c, thz_err rc)
{
    if (rc == THZ_OK) c->out = wrap_items(c->out);
    done(c, rc, 200);
}

static const char *param(api_call *c, const char *name)
{
    return http_req_param(c->req, name);
}

/* An integer {id}: false (and a 400) when it is not one. */
static bool int_param(api_call *c, int64_t *id)
{
    if (api_param_int(c->req, "id", id)) return true;
    c->rc = THZ_EINVAL;
    snprintf(c->err, sizeof c->err, "the id in the path must be a positive integer");
    return false;
}

/* ---- auth and tokens ---- */

static void op_login(api_call *c)
{
    done(c, reg_login(c->r, c->body, &c->out, c->err), 200);
    if (c->rc == THZ_EBADAUTH) snprintf(c->err, sizeof c->err, "wrong email or password");
}

static void op_logout(api_call *c)
{
    done(c, reg_logout(c->r, &c->p), 204);
}

static void op_whoami(api_call *c)
{
    done(c, reg_whoami(c->r, &c->p, &c->out), 200);
}

static void op_token_list(api_call *c)
{
    done_list(c, reg_token_list(c->r, &c->p, &c->out));
}

static void op_token_create(api_call *c)
{
    done(c, reg_token_create(c->r, &c->p, c->body, &c->out, c->err), 201);
}

static void op_token_revoke(api_call *c)
{
    int64_t id;
    if (int_param(c, &id)) done(c, reg_token_revoke(c->r, &c->p, id), 204);
}

/* ---- tenants ---- */

static void op_tenant_list(api_call *c)
{
    done_list(c, reg_tenant_list(c->r, &c->out));
}

static void op_tenant_create(api_call *c)
{
    done(c, reg_tenant_create(c->r, c->body, &c->out, c->err), 201);
}

/* ---- users ---- */

static void op_user_list(api_call *c)
{
    done_list(c, reg_user_list(c->r, c->p.tenant, &c->out));
}

static void op_user_create(api_call *c)
{
    done(c, reg_user_create(c->r, c->p.tenant, c->body, &c->out, c->err), 201);
}

static void op_user_update(api_call *c)
{
    int64_t id;
    if (int_param(c, &id))
        done(c, reg_user_update(c->r, c->p.tenant, id, c->body, &c->out, c->err), 200);
}

static void op_user_delete(api_call *c)
{
    int64_t id;
    if (int_param(c, &id)) done(c, reg_user_delete(c->r, c->p.tenant, id), 204);
}

/* ---- devices ---- */

/* GET /devices?tag=k=v&group=g&online=true|false&limit=N&cursor=C */
static void op_device_list(api_call *c)
{
    char tag[512], group[REG_ID_MAX + 1], online[8], limit[16], cursor[512];
    const char *bad = NULL;
    int has_tag = http_req_query(c->req, "tag", tag, sizeof tag);
    int has_group = http_req_query(c->req, "group", group, sizeof group);
    int has_online = http_req_query(c->req, "online", online, sizeof online);
    int has_limit = http_req_query(c->req, "limit", limit, sizeof limit);
    int has_cursor = http_req_query(c->req, "cursor", cursor, sizeof cursor);
    int on = -1, lim = 100;
    if (has_tag < 0)
        bad = "tag is too long or badly encoded";
    else if (has_group < 0)
        bad = "group is too long or badly encoded";
    else if (has_cursor < 0)
        bad = "cursor is too long or badly encoded";
    else if (has_online < 0)
        bad = "online must be true or false";
    else if (has_online && strcmp(online, "true") == 0)
        on = 1;
    else if (has_online && strcmp(online, "false") == 0)
        on = 0;
    else if (has_online)
        bad = "online must be true or false";
    if (!bad && has_limit) {
        char *end;
        long v = has_limit > 0 ? strtol(limit, &end, 10) : 0;
        if (has_limit < 0 || !*limit || *end || v < 1 || v > 1000)
            bad = "limit must be 1..1000";
        else
            lim = (int)v;
    }
    if (bad) {
        c->rc = THZ_EINVAL;
        snprintf(c->err, sizeof c->err, "%s", bad);
        return;
    }
    done(c,
         reg_device_list(c->r, c->p.tenant, has_tag > 0 ? tag : NULL, has_group > 0 ? group : NULL,
                         on, lim, has_cursor > 0 ? cursor : NULL, &c->out, c->err),
         200);
}

static void op_device_create(api_call *c)
{
    done(c, reg_device_create(c->r, c->p.tenant, c->body, &c->out, c->err), 201);
}

static void op_device_get(api_call *c)
{
    done(c, reg_device_get(c->r, c->p.tenant, param(c, "id"), &c->out), 200);
}

static void op_device_update(api_call *c)
{
    done(c, reg_device_update(c->r, c->p.tenant, param(c, "id"), c->body, &c->out, c->err), 200);
}

static void op_device_delete(api_call *c)
{
    done(c, reg_device_delete(c->r, c->p.tenant, param(c, "id")), 204);
}

static void op_device_rotate(api_call *c)
{
    done(c, reg_device_rotate(c->r, c->p.tenant, param(c, "id"), &c->out), 200);
}

static void set_enabled(api_call *c, bool on)
{
    cJSON *b = cJSON_CreateObject();
    if (!b || !cJSON_AddBoolToObject(b, "enabled", on)) {
        cJSON_Delete(b);
        c->rc = THZ_ENOMEM;
        return;
    }
    done(c, reg_device_update(c->r, c->p.tenant, param(c, "id"), b, &c->out, c->err), 200);
    cJSON_Delete(b);
}

static void op_device_disable(api_call *c)
{
    set_enabled(c, false);
}

static void op_device_enable(api_call *c)
{
    set_enabled(c, true);
}

static void op_fleet(api_call *c)
{
    done(c, reg_fleet_summary(c->r, c->p.tenant, &c->out), 200);
}

/* ---- groups ---- */

static void op_group_list(api_call *c)
{
    done_list(c, reg_group_list(c->r, c->p.tenant, &c->out));
}

static void op_group_create(api_call *c)
{
    done(c, reg_group_create(c->r, c->p.tenant, c->body, &c->out, c->err), 201);
}

static void op_group_get(api_call *c)
{
    done(c, reg_group_get(c->r, c->p.tenant, param(c, "id"), &c->out), 200);
}

static void op_group_update(api_call *c)
{
    done(c, reg_group_update(c->r, c->p.tenant, param(c, "id"), c->body, &c->out, c->err), 200);
}

static void op_group_delete(api_call *c)
{
    done(c, reg_group_delete(c->r, c->p.tenant, param(c, "id")), 204);
}

static void op_group_add(api_call *c)
{
    done(c, reg_group_add(c->r, c->p.tenant, param(c, "id"), param(c, "device")), 204);
}

static void op_group_remove(api_call *c)
{
    done(c, reg_group_remove(c->r, c->p.tenant, param(c, "id"), param(c, "device")), 204);
}

/* ---- the document ---- */

static void op_openapi(api_call *c)
{
    c->raw = (char *)api_openapi_json(&c->nraw);
    c->status = 200;
}

/* Longer patterns with the same prefix need no ordering: the router matches
 * whole paths. Roles: viewers read, operators write devices and groups,
 * admins manage users and their tenant's retention; superusers manage
 * tenants and back up the daemon; tokens are per user (the registry scopes
 * them). */
#define V REG_VIEWER
#define O REG_OPERATOR
#define A REG_ADMIN
const api_route api_routes[] = {
    {HTTP_POST, "/api/v1/auth/login", API_NOAUTH | API_BODY, V, op_login},
    {HTTP_POST, "/api/v1/auth/logout", 0, V, op_logout},
    {HTTP_GET, "/api/v1/auth/whoami", 0, V, op_whoami},

    {HTTP_GET, "/api/v1/tokens", 0, V, op_token_list},
    {HTTP_POST, "/api/v1/tokens", API_BODY, V, op_token_create},
    {HTTP_DELETE, "/api/v1/tokens/{id}", 0, V, op_token_revoke},

    {HTTP_GET, "/api/v1/tenants", API_SUPER, A, op_tenant_list},
    {HTTP_POST, "/api/v1/tenants", API_SUPER | API_BODY, A, op_tenant_create},

    {HTTP_GET, "/api/v1/users", 0, A, op_user_list},
    {HTTP_POST, "/api/v1/users", API_BODY, A, op_user_create},
    {HTTP_PATCH, "/api/v1/users/{id}", API_BODY, A, op_user_update},
    {HTTP_DELETE, "/api/v1/users/{id}", 0, A, op_user_delete},

    {HTTP_GET, "/api/v1/devices", API_FAST, V, op_device_list},
    {HTTP_POST, "/api/v1/devices", API_BODY, O, op_device_create},
    {HTTP_GET, "/api/v1/devices/{id}", API_FAST, V, op_device_get},
    {HTTP_PATCH, "/api/v1/devices/{id}", API_BODY, O, op_device_update},
    {HTTP_DELETE, "/api/v1/devices/{id}", 0, O, op_device_delete},
    {HTTP_POST, "/api/v1/devices/{id}/rotate", 0, O, op_device_rotate},
    {HTTP_POST, "/api/v1/devices/{id}/disable", 0, O, op_device_disable},
    {HTTP_POST, "/api/v1/devices/{id}/enable", 0, O, op_device_enable},

    {HTTP_GET, "/api/v1/devices/{id}/telemetry", 0, V, op_device_telemetry},
    {HTTP_GET, "/api/v1/devices/{id}/latest", 0, V, op_device_latest},
    {HTTP_POST, "/api/v1/query", API_BODY, V, op_query},

    {HTTP_GET, "/api/v1/fleet", API_FAST, V, op_fleet},

    {HTTP_GET, "/api/v1/groups", 0, V, op_group_list},
    {HTTP_POST, "/api/v1/groups", API_BODY, O, op_group_create},
    {HTTP_GET, "/api/v1/groups/{id}", 0, V, op_group_get},
    {HTTP_PATCH, "/api/v1/groups/{id}", API_BODY, O, op_group_update},
    {HTTP_DELETE, "/api/v1/groups/{id}", 0, O, op_group_delete},
    {HTTP_PUT, "/api/v1/groups/{id}/devices/{device}", 0, O, op_group_add},
    {HTTP_DELETE, "/api/v1/groups/{id}/devices/{device}", 0, O, op_group_remove},

    {HTTP_GET, "/api/v1/retention", 0, A, op_retention_get},
    {HTTP_PUT, "/api/v1/retention", API_BODY, A, op_retention_put},
    {HTTP_POST, "/api/v1/admin/backup", API_SUPER | API_BODY, A, op_backup},

    {HTTP_GET, "/api/v1/openapi.json", API_NOAUTH | API_FAST, V, op_openapi},
    /* the live web dashboard (live_ops.c, query_ops.c) */
    {HTTP_GET, "/api/v1/devices/{id}/events", 0, V, op_device_events},
    {HTTP_GET, "/api/v1/devices/{id}/messages", API_FAST, V, op_device_messages},
    {HTTP_GET, "/api/v1/fleet/sparklines", 0, V, op_fleet_sparklines},
    {HTTP_GET, "/api/v1/dashboards", 0, V, op_dashboard_list},
    {HTTP_POST, "/api/v1/dashboards", API_BODY, O, op_dashboard_create},
    {HTTP_GET, "/api/v1/dashboards/{id}", 0, V, op_dashboard_get},
    {HTTP_PUT, "/api/v1/dashboards/{id}", API_BODY, O, op_dashboard_update},
    {HTTP_DELETE, "/api/v1/dashboards/{id}", 0, O, op_dashboard_delete},
    /* device certificates and CAs: mutual TLS (cert_ops.c) */
    {HTTP_GET, "/api/v1/ca", 0, V, op_ca_get},
    {HTTP_GET, "/api/v1/cas", 0, V, op_ca_list},
    {HTTP_POST, "/api/v1/cas", API_BODY, A, op_ca_register},
    {HTTP_DELETE, "/api/v1/cas/{id}", 0, A, op_ca_delete},
    {HTTP_POST, "/api/v1/devices/{id}/certificates", API_BODY_OPT, O, op_cert_create},
    {HTTP_GET, "/api/v1/devices/{id}/certificates", 0, V, op_cert_list},
    {HTTP_DELETE, "/api/v1/devices/{id}/certificates/{fingerprint}", 0, O, op_cert_revoke},
    {0, NULL, 0, 0, NULL},
};
