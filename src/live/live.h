/* live.h - what the live web dashboard sees as it happens: the recent raw
 * messages of every device (an in-memory ring per device), and the live
 * WebSocket GET /api/v1/ws/live that pushes telemetry, messages, presence
 * and fleet frames to browsers (protocol in docs/API.md).
 *
 * It observes the other modules through their public hooks and is called by
 * none of them: mqtt_on_publish (the rings and message frames), tsdb_on_write
 * (telemetry frames from every ingest path; armed only while some socket
 * subscribes to a device), reg_on_presence (presence frames), and
 * reg_fleet_counters (fleet frames every LIVE_FLEET_MS).
 *
 * Lifecycle: after http_start and mqtt_set_registry, before net_start:
 * live_start. Nothing to stop: the HTTP server closes the sockets at
 * shutdown and the rings live as long as the process. */
#ifndef THZ_LIVE_H
#define THZ_LIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "core/err.h"
#include "registry/registry.h"
#include "tsdb/tsdb.h"

#define LIVE_RING_SLOTS      100                /* messages kept per device */
#define LIVE_PAYLOAD_MAX     2048               /* payload bytes kept per message */
#define LIVE_TOPIC_MAX       1024               /* topic bytes kept per message */
#define LIVE_RING_BUDGET     (64 * 1024 * 1024) /* bytes of all kept messages together */
#define LIVE_MAX_SOCKETS     1024               /* live sockets of the whole daemon */
#define LIVE_TENANT_SOCKETS  64                 /* live sockets per tenant */
#define LIVE_SUBS_PER_SOCKET 64                 /* device subscriptions per socket */
#define LIVE_SOCKET_BUDGET   (1024 * 1024)      /* unsent bytes per socket before drops */
#define LIVE_AUTH_MS         10000              /* time to authenticate */
#define LIVE_FLEET_MS        2000               /* fleet frame period */
#define LIVE_CLIENT_MAX      4096               /* bytes of one client message */

/* Registers the observers, the WebSocket route and the I/O thread hooks.
 * r and db (db may be NULL: no telemetry frames) outlive the I/O threads. */
thz_err live_start(registry *r, tsdb *db);

/* [fast, any thread] The last messages on device id's topics (devices/{id}/#
 * and $aws/things/{id}/#, tenant-local names) newest first, at most limit
 * (1..LIVE_RING_SLOTS): {"messages":[{"time","topic","qos","retain",
 * "payload" (UTF-8 text, or null),"payload_base64" (only when the payload is
 * not UTF-8 text),"size","truncated"}]}. A device with no message yet has
 * an empty list. *out is new; the caller deletes it. */
thz_err live_messages(int64_t tenant, const char *id, int limit, cJSON **out);

/* ---- pure pieces, exposed for the unit tests and the fuzzer ---- */

typedef enum live_op {
    LIVE_OP_AUTH = 1,
    LIVE_OP_SUBSCRIBE,
    LIVE_OP_UNSUBSCRIBE,
    LIVE_OP_PING
} live_op;

/* One client message. Strings point into buf (NUL-terminated). */
typedef struct live_cmd {
    live_op op;
    const char *token;  /* auth */
    const char *device; /* subscribe/unsubscribe a device, or NULL... */
    bool fleet;         /* ...for the fleet */
    char buf[LIVE_CLIENT_MAX + 1];
} live_cmd;

/* Parses one client message (a JSON object, at most LIVE_CLIENT_MAX bytes):
 * {"op":"auth","token":T} | {"op":"subscribe"|"unsubscribe","device":ID} |
 * {"op":"subscribe"|"unsubscribe","fleet":true} | {"op":"ping"}. Returns
 * THZ_OK, or THZ_EINVAL with a message for the client in err (static). */
thz_err live_parse_cmd(const uint8_t *p, size_t n, live_cmd *out, const char **err);

/* Adds a message's payload to o as the API shows it: "payload" (the text)
 * and no "payload_base64" when p[0..n) is UTF-8 without NUL bytes (an
 * incomplete sequence at the end is cut when cut is true: the payload was
 * truncated there); else "payload": null and "payload_base64". */
void live_payload_json(cJSON *o, const uint8_t *p, size_t n, bool cut);

#endif
