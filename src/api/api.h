/* api.h - the REST API of the registry (/api/v1/auth, tokens, tenants, users,
 * devices, fleet, groups, openapi.json) on top of the HTTP server. */
#ifndef THZ_API_H
#define THZ_API_H

#include "core/err.h"
#include "registry/registry.h"

/* Registers every route of the API with http_route; call after http_start
 * and before net_start. r must stay open until net_shutdown has returned
 * (requests in flight on libuv's worker pool still use it until then).
 * Fails (THZ_ECORRUPT, logged) if the embedded OpenAPI document does not
 * parse or does not describe one of the routes. */
thz_err api_start(registry *r);

#endif
