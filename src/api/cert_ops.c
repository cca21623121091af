/* cert_ops.c - the REST operations of mutual TLS: the tenant CA, registered
 * customer CAs and device certificates (registry.h does the work). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

static void finish(api_call *c, thz_err rc, int status, bool list)
{
    if (rc == THZ_OK && list && cJSON_IsArray(c->out)) {
        cJSON *o = cJSON_CreateObject();
        if (o)
            cJSON_AddItemToObject(o, "items", c->out);
        else
            cJSON_Delete(c->out);
        c->out = o;
    }
    c->rc = rc;
    c->status = status;
    if (rc == THZ_OK && status != 204 && !c->out) c->rc = THZ_ENOMEM;
}

void op_ca_get(api_call *c)
{
    finish(c, reg_ca_get(c->r, c->p.tenant, &c->out, c->err), 200, false);
}

void op_ca_list(api_call *c)
{
    finish(c, reg_ca_list(c->r, c->p.tenant, &c->out), 200, true);
}

void op_ca_register(api_call *c)
{
    finish(c, reg_ca_register(c->r, c->p.tenant, c->body, &c->out, c->err), 201, false);
}

void op_ca_delete(api_call *c)
{
    int64_t id;
    if (!api_param_int(c->req, "id", &id)) {
        c->rc = THZ_EINVAL;
        snprintf(c->err, sizeof c->err, "the id in the path must be a positive integer");
        return;
    }
    finish(c, reg_ca_delete(c->r, c->p.tenant, id), 204, false);
}

void op_cert_create(api_call *c)
{
    finish(
        c,
        reg_cert_create(c->r, c->p.tenant, http_req_param(c->req, "id"), c->body, &c->out, c->err),
        201, false);
}

void op_cert_list(api_call *c)
{
    finish(c, reg_cert_list(c->r, c->p.tenant, http_req_param(c->req, "id"), &c->out), 200, true);
}

void op_cert_revoke(api_call *c)
{
    finish(c,
           reg_cert_revoke(c->r, c->p.tenant, http_req_param(c->req, "id"),
                           http_req_param(c->req, "fingerprint")),
           204, false);
}
