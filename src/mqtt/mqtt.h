/* mqtt.h - the MQTT 3.1.1/5.0 broker: the device gateway of thinghz.
 *
 * Lifecycle: net_init, then mqtt_start (opens the broker state log in the
 * data dir, restores retained messages and persistent sessions, registers the
 * listener and thread hooks), then net_start. To stop: net_shutdown (closes
 * every connection with DISCONNECT 0x8B), then mqtt_stop (flushes state). */
#ifndef THZ_MQTT_H
#define THZ_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/auth.h"
#include "core/config.h"
#include "core/err.h"
#include "registry/registry.h"
#include "tsdb/tsdb.h"

/* cfg and a must outlive the broker (until mqtt_stop returns). */
thz_err mqtt_start(const thz_config *cfg, auth *a);
/* Applies reloadable settings (limits, log level already applied by caller). */
void mqtt_reload(const thz_config *cfg);
void mqtt_stop(void);
/* Devices and API tokens of the registry may connect (before net_start; r
 * outlives the broker). Their connections send presence events and end when
 * their credentials are revoked. */
void mqtt_set_registry(registry *r);
/* Telemetry published to devices/{id}/telemetry is stored in db (before
 * net_start; db outlives the broker): a QoS 1/2 acknowledgement leaves once
 * it is durable under the fsync policy. */
void mqtt_set_tsdb(tsdb *db);
/* Serves MQTT over WebSocket at /mqtt on the HTTP and HTTPS listeners
 * (subprotocols "mqtt" and "mqttv3.1", binary frames): registers the route
 * (after mqtt_start, before net_start). */
void mqtt_ws_register(void);

/* Publishes a message as the broker itself (no session), from any thread.
 * topic is the broker's name: a tenant's topics carry its prefix (topic.h). */
thz_err mqtt_publish_internal(const char *topic, const void *payload, size_t len, int qos,
                              bool retain);

typedef struct mqtt_stats {
    uint64_t clients_connected;
    uint64_t sessions;
    uint64_t subscriptions;
    uint64_t retained;
    uint64_t msgs_received;
    uint64_t msgs_sent;
    uint64_t bytes_received;
    uint64_t bytes_sent;
    uint64_t msgs_dropped;
    uint64_t uptime_s;
} mqtt_stats;
void mqtt_get_stats(mqtt_stats *st);

#endif
