/* live_int.h - private to src/live: what ring.c (the message rings, fed by
 * the broker's publish observer) and live.c (the WebSocket fan-out) share. */
#ifndef THZ_LIVE_INT_H
#define THZ_LIVE_INT_H

#include "live/live.h"

extern registry *live__reg;

/* Formats ms since the epoch as RFC 3339 with milliseconds into out (>= 64). */
void live__fmt_ms(int64_t ms, char *out);
int64_t live__now_ms(void);

/* ring.c: the broker's publish observer (stores into the device's ring,
 * then hands the message to live__on_message). */
void live__observe_publish(void *ctx, int64_t tenant, const char *topic, size_t topic_len,
                           const uint8_t *payload, size_t len, int qos, bool retain);
/* The device id a tenant-local topic belongs to (devices/{id}[/...] or
 * $aws/things/{id}[/...]), or false. */
bool live__topic_device(const char *topic, size_t n, const char **id, size_t *idlen);

/* live.c: a message on device id's topics (payload already cut to at most
 * LIVE_PAYLOAD_MAX bytes, size is the original). Sends message frames to the
 * device's subscribers; costs one atomic load when nobody subscribes. */
void live__on_message(int64_t tenant, const char *id, size_t idlen, int64_t ms, const char *topic,
                      size_t topic_len, const uint8_t *payload, size_t n, size_t size, int qos,
                      bool retain);

#endif
