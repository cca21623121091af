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

/* A publish observer: called for every message the broker accepts for
 * routing (client PUBLISH, will, internal publish), before it is matched,
 * on the routing thread (an I/O thread): tenant, the tenant-local topic
 * (not NUL-terminated), payload, QoS and retain flag, valid during the call
 * only. It must be quick and must not block or publish (it runs under the
 * broker's routing locks): check the topic first, copy what it keeps. One
 * observer; set it before net_start. */
typedef void (*mqtt_publish_fn)(void *ctx, int64_t tenant, const char *topic, size_t topic_len,
                                const uint8_t *payload, size_t len, int qos, bool retain);
void mqtt_on_publish(mqtt_publish_fn fn, void *ctx);
/* Why a CONNECT was refused (CONNACK reason codes, grouped). */
enum {
    MQTT_REFUSE_BAD_CREDENTIALS,     /* 0x86 */
    MQTT_REFUSE_NOT_AUTHORIZED,      /* 0x87 (also a will the ACL denies) */
    MQTT_REFUSE_CLIENT_ID,           /* 0x85 */
    MQTT_REFUSE_SERVER_BUSY,         /* 0x89: max-connections */
    MQTT_REFUSE_UNSUPPORTED_VERSION, /* 0x84 */
    MQTT_REFUSE_MALFORMED,           /* 0x81, 0x82 */
    MQTT_REFUSE_QUOTA,               /* 0x97: max-connections-per-tenant */
    MQTT_REFUSE_RATE,                /* 0x9F: max-connect-rate of the source address */
    MQTT_REFUSE_OTHER,               /* anything else (auth method, server unavailable...) */
    MQTT_REFUSE_N
};
/* Why a message was dropped instead of delivered. */
enum {
    MQTT_DROP_QUEUE_FULL,    /* session queue at max-queued-messages */
    MQTT_DROP_QOS0_OUTBUF,   /* QoS 0 to a socket over max-outbuf */
    MQTT_DROP_SLOW_CONSUMER, /* queue discarded with a client disconnected as too slow */
    MQTT_DROP_PUBLISH_RATE,  /* over max-publish-rate with publish-rate-action = drop */
    MQTT_DROP_INBOX_FULL,    /* QoS 0 to an I/O thread that is far behind on deliveries */
    MQTT_DROP_OTHER,         /* out of memory */
    MQTT_DROP_N
};
/* Limits a client ran into (each also has its own reply; docs/OPERATIONS.md). */
enum {
    MQTT_LIMIT_TENANT_CONNECTIONS, /* max-connections-per-tenant */
    MQTT_LIMIT_CONNECT_RATE,       /* max-connect-rate */
    MQTT_LIMIT_PUBLISH_RATE,       /* max-publish-rate */
    MQTT_LIMIT_SUBSCRIPTIONS,      /* max-subscriptions */
    MQTT_LIMIT_TOPIC_LENGTH,       /* max-topic-length */
    MQTT_LIMIT_TOPIC_LEVELS,       /* max-topic-levels */
    MQTT_LIMIT_RETAINED,           /* max-retained-per-tenant */
    MQTT_LIMIT_PAYLOAD_SIZE,       /* max-payload-size */
    MQTT_LIMIT_SLOW_CONSUMER,      /* slow-consumer-timeout */
    MQTT_LIMIT_N
};
/* "bad_credentials", ... / "queue_full", ... / "publish_rate", ...: label
 * values for the above. */
const char *mqtt_refuse_name(int reason);
const char *mqtt_drop_name(int reason);
const char *mqtt_limit_name(int limit);

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
    /* For /metrics (metrics/expose.c). Counters since start: */
    uint64_t connects_accepted;                /* CONNECTs answered with success */
    uint64_t connects_refused[MQTT_REFUSE_N];  /* CONNACK refusals by reason */
    uint64_t drops[MQTT_DROP_N];               /* msgs_dropped by reason */
    uint64_t denied_publish, denied_subscribe; /* refused by the ACL / device policy */
    uint64_t limits[MQTT_LIMIT_N];             /* limits hit, by limit */
    /* Gauges, sampled by each I/O thread every 250 ms: */
    uint64_t queued_messages;   /* waiting in session queues (online and offline) */
    uint64_t inflight_messages; /* sent QoS 1/2, not yet acknowledged */
    uint64_t outbuf_bytes;      /* encoded output not yet taken by the sockets */
    uint64_t session_bytes;     /* sessions, connections and their buffers (estimate) */
    uint64_t retained_bytes;    /* retained messages (estimate) */
} mqtt_stats;
void mqtt_get_stats(mqtt_stats *st);

#endif
