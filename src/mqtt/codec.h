/* codec.h - MQTT 3.1, 3.1.1 and 5.0 packet framing, decoding and encoding.
 *
 * Pure functions of (const uint8_t *, size_t): no sockets, no allocation on
 * decode. Decoded strings and binary fields are spans that point into the
 * caller's packet bytes and stay valid only as long as those bytes do. */
#ifndef THZ_MQTT_CODEC_H
#define THZ_MQTT_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/err.h"

enum mqtt_version { MQTT_V31 = 3, MQTT_V311 = 4, MQTT_V5 = 5 };

enum mqtt_type {
    MQTT_CONNECT = 1,
    MQTT_CONNACK = 2,
    MQTT_PUBLISH = 3,
    MQTT_PUBACK = 4,
    MQTT_PUBREC = 5,
    MQTT_PUBREL = 6,
    MQTT_PUBCOMP = 7,
    MQTT_SUBSCRIBE = 8,
    MQTT_SUBACK = 9,
    MQTT_UNSUBSCRIBE = 10,
    MQTT_UNSUBACK = 11,
    MQTT_PINGREQ = 12,
    MQTT_PINGRESP = 13,
    MQTT_DISCONNECT = 14,
    MQTT_AUTH = 15
};

/* MQTT 5.0 property identifiers (section 2.2.2.2). */
enum mqtt_prop_id {
    MQTT_P_PAYLOAD_FORMAT = 0x01,
    MQTT_P_MESSAGE_EXPIRY = 0x02,
    MQTT_P_CONTENT_TYPE = 0x03,
    MQTT_P_RESPONSE_TOPIC = 0x08,
    MQTT_P_CORRELATION_DATA = 0x09,
    MQTT_P_SUB_ID = 0x0B,
    MQTT_P_SESSION_EXPIRY = 0x11,
    MQTT_P_ASSIGNED_CLIENT_ID = 0x12,
    MQTT_P_SERVER_KEEP_ALIVE = 0x13,
    MQTT_P_AUTH_METHOD = 0x15,
    MQTT_P_AUTH_DATA = 0x16,
    MQTT_P_REQ_PROBLEM_INFO = 0x17,
    MQTT_P_WILL_DELAY = 0x18,
    MQTT_P_REQ_RESPONSE_INFO = 0x19,
    MQTT_P_RESPONSE_INFO = 0x1A,
    MQTT_P_SERVER_REF = 0x1C,
    MQTT_P_REASON_STRING = 0x1F,
    MQTT_P_RECEIVE_MAX = 0x21,
    MQTT_P_TOPIC_ALIAS_MAX = 0x22,
    MQTT_P_TOPIC_ALIAS = 0x23,
    MQTT_P_MAX_QOS = 0x24,
    MQTT_P_RETAIN_AVAILABLE = 0x25,
    MQTT_P_USER_PROPERTY = 0x26,
    MQTT_P_MAX_PACKET_SIZE = 0x27,
    MQTT_P_WILDCARD_SUB_AVAILABLE = 0x28,
    MQTT_P_SUB_ID_AVAILABLE = 0x29,
    MQTT_P_SHARED_SUB_AVAILABLE = 0x2A
};

#define MQTT_HAS(props, id) (((props)->have >> (id)) & 1u)
#define MQTT_SET(props, id) ((props)->have |= (uint64_t)1 << (id))

/* Reason codes (MQTT 5.0 section 2.4) used by the broker. */
enum mqtt_reason {
    MQTT_RC_SUCCESS = 0x00,
    MQTT_RC_GRANTED_QOS1 = 0x01,
    MQTT_RC_GRANTED_QOS2 = 0x02,
    MQTT_RC_DISCONNECT_WITH_WILL = 0x04,
    MQTT_RC_NO_MATCHING_SUBSCRIBERS = 0x10,
    MQTT_RC_NO_SUBSCRIPTION_EXISTED = 0x11,
    MQTT_RC_CONTINUE_AUTH = 0x18,
    MQTT_RC_REAUTHENTICATE = 0x19,
    MQTT_RC_UNSPECIFIED = 0x80,
    MQTT_RC_MALFORMED = 0x81,
    MQTT_RC_PROTOCOL_ERROR = 0x82,
    MQTT_RC_IMPL_SPECIFIC = 0x83,
    MQTT_RC_UNSUPPORTED_VERSION = 0x84,
    MQTT_RC_CLIENT_ID_INVALID = 0x85,
    MQTT_RC_BAD_USER_OR_PASSWORD = 0x86,
    MQTT_RC_NOT_AUTHORIZED = 0x87,
    MQTT_RC_SERVER_UNAVAILABLE = 0x88,
    MQTT_RC_SERVER_BUSY = 0x89,
    MQTT_RC_BANNED = 0x8A,
    MQTT_RC_SERVER_SHUTTING_DOWN = 0x8B,
    MQTT_RC_BAD_AUTH_METHOD = 0x8C,
    MQTT_RC_KEEP_ALIVE_TIMEOUT = 0x8D,
    MQTT_RC_SESSION_TAKEN_OVER = 0x8E,
    MQTT_RC_TOPIC_FILTER_INVALID = 0x8F,
    MQTT_RC_TOPIC_NAME_INVALID = 0x90,
    MQTT_RC_PACKET_ID_IN_USE = 0x91,
    MQTT_RC_PACKET_ID_NOT_FOUND = 0x92,
    MQTT_RC_RECEIVE_MAX_EXCEEDED = 0x93,
    MQTT_RC_TOPIC_ALIAS_INVALID = 0x94,
    MQTT_RC_PACKET_TOO_LARGE = 0x95,
    MQTT_RC_MESSAGE_RATE_TOO_HIGH = 0x96,
    MQTT_RC_QUOTA_EXCEEDED = 0x97,
    MQTT_RC_ADMIN_ACTION = 0x98,
    MQTT_RC_PAYLOAD_FORMAT_INVALID = 0x99,
    MQTT_RC_RETAIN_NOT_SUPPORTED = 0x9A,
    MQTT_RC_QOS_NOT_SUPPORTED = 0x9B,
    MQTT_RC_USE_ANOTHER_SERVER = 0x9C,
    MQTT_RC_SERVER_MOVED = 0x9D,
    MQTT_RC_SHARED_SUB_NOT_SUPPORTED = 0x9E,
    MQTT_RC_CONNECTION_RATE_EXCEEDED = 0x9F,
    MQTT_RC_MAX_CONNECT_TIME = 0xA0,
    MQTT_RC_SUB_IDS_NOT_SUPPORTED = 0xA1,
    MQTT_RC_WILDCARD_SUBS_NOT_SUPPORTED = 0xA2
};

/* MQTT 3.1.1 CONNACK return codes. */
enum mqtt_v3_connack {
    MQTT_V3_ACCEPTED = 0,
    MQTT_V3_BAD_VERSION = 1,
    MQTT_V3_ID_REJECTED = 2,
    MQTT_V3_SERVER_UNAVAILABLE = 3,
    MQTT_V3_BAD_USER_OR_PASSWORD = 4,
    MQTT_V3_NOT_AUTHORIZED = 5
};

/* Bounds the codec enforces on every peer. */
#define MQTT_MAX_REMAINING 268435455u /* largest Variable Byte Integer */
#define MQTT_MAX_SUB_ID    268435455u

typedef struct mqtt_span {
    const uint8_t *p;
    uint32_t n;
} mqtt_span;

/* Properties of one packet. `have` has bit (1 << id) set for every property
 * present. Decoding fills the typed fields, `raw` (the whole property block as
 * received, without its length prefix) and `n_user` (user property count).
 * Encoding writes every typed field whose bit is set (except USER_PROPERTY and
 * SUB_ID), then `sub_ids` (one SUB_ID property each), then `extra` verbatim:
 * already-encoded properties such as forwarded user properties. Encoders of
 * MQTT 3.x packets ignore properties altogether. */
typedef struct mqtt_props {
    uint64_t have;
    uint8_t payload_format;
    uint8_t req_problem_info;
    uint8_t req_response_info;
    uint8_t max_qos;
    uint8_t retain_available;
    uint8_t wildcard_sub_available;
    uint8_t sub_id_available;
    uint8_t shared_sub_available;
    uint16_t server_keep_alive;
    uint16_t receive_max;
    uint16_t topic_alias_max;
    uint16_t topic_alias;
    uint32_t message_expiry;
    uint32_t session_expiry;
    uint32_t will_delay;
    uint32_t max_packet_size;
    uint32_t sub_id; /* decode: the first SUB_ID; n_sub_ids counts them all */
    uint32_t n_sub_ids;
    uint32_t n_user;
    mqtt_span content_type;
    mqtt_span response_topic;
    mqtt_span correlation_data;
    mqtt_span assigned_client_id;
    mqtt_span auth_method;
    mqtt_span auth_data;
    mqtt_span response_info;
    mqtt_span server_ref;
    mqtt_span reason_string;
    mqtt_span raw;
    /* encode only */
    const uint32_t *sub_ids;
    mqtt_span extra;
} mqtt_props;

typedef struct mqtt_connect {
    uint8_t version; /* MQTT_V31, MQTT_V311 or MQTT_V5 */
    bool clean_start;
    bool will_flag;
    uint8_t will_qos;
    bool will_retain;
    bool has_username;
    bool has_password;
    uint16_t keep_alive;
    mqtt_span client_id;
    mqtt_span will_topic;
    mqtt_span will_payload;
    mqtt_span username;
    mqtt_span password;
    mqtt_props props;
    mqtt_props will_props;
} mqtt_connect;

typedef struct mqtt_connack {
    bool session_present;
    uint8_t reason; /* v5 reason code or 3.1.1 return code */
    mqtt_props props;
} mqtt_connack;

typedef struct mqtt_publish {
    uint8_t qos;
    bool retain;
    bool dup;
    uint16_t id; /* 0 for QoS 0 */
    mqtt_span topic;
    mqtt_span payload;
    mqtt_props props;
} mqtt_publish;

/* PUBACK, PUBREC, PUBREL, PUBCOMP. */
typedef struct mqtt_ack {
    uint16_t id;
    uint8_t reason;
    mqtt_props props;
} mqtt_ack;

/* SUBSCRIBE and UNSUBSCRIBE: `list` is the validated payload; walk it with
 * mqtt_sub_next / mqtt_unsub_next. `count` is the number of entries. */
typedef struct mqtt_subscribe {
    uint16_t id;
    uint32_t count;
    mqtt_span list;
    mqtt_props props;
} mqtt_subscribe;

/* SUBACK and UNSUBACK: one reason code per entry (UNSUBACK 3.1.1: none). */
typedef struct mqtt_suback {
    uint16_t id;
    mqtt_span codes;
    mqtt_props props;
} mqtt_suback;

/* DISCONNECT and AUTH. */
typedef struct mqtt_reasoned {
    uint8_t reason;
    mqtt_props props;
} mqtt_reasoned;

typedef struct mqtt_packet {
    uint8_t type;  /* enum mqtt_type */
    uint8_t flags; /* low nibble of the fixed header */
    union {
        mqtt_connect connect;
        mqtt_connack connack;
        mqtt_publish publish;
        mqtt_ack ack;
        mqtt_subscribe subscribe; /* SUBSCRIBE and UNSUBSCRIBE */
        mqtt_suback suback;       /* SUBACK and UNSUBACK */
        mqtt_reasoned reasoned;   /* DISCONNECT and AUTH */
    } u;
} mqtt_packet;

/* Subscription options byte (SUBSCRIBE payload, v5 section 3.8.3.1). */
#define MQTT_SUBOPT_QOS(o)             ((o)&3u)
#define MQTT_SUBOPT_NO_LOCAL           0x04u
#define MQTT_SUBOPT_RETAIN_AS_PUB      0x08u
#define MQTT_SUBOPT_RETAIN_HANDLING(o) (((o) >> 4) & 3u)

/* Finds the packet at the start of p[0..n). THZ_OK: a whole packet of
 * *pkt_len bytes is there. THZ_EAGAIN: need more bytes. THZ_EMALFORMED: bad
 * remaining-length encoding. THZ_ETOOBIG: the packet's total size exceeds
 * max_size (*pkt_len still says how big it claims to be). */
thz_err mqtt_frame(const uint8_t *p, size_t n, uint32_t max_size, size_t *pkt_len);

/* Decodes one whole packet p[0..n) as returned by mqtt_frame. `version` is
 * the connection's protocol version (0 before CONNECT: any packet then
 * decodes as v3.1.1 except CONNECT, which carries its own). Validates
 * everything the specs make a decoder's job: fixed-header flags, reserved
 * bits, lengths, UTF-8 well-formedness (no U+0000, no surrogates), property
 * identifiers allowed for the packet type and not duplicated, QoS 3, packet
 * id 0, empty SUBSCRIBE. Wildcard placement in filters and topic names is
 * not checked here (see topic.h). Errors: THZ_EMALFORMED, THZ_EPROTO,
 * THZ_EVERSION (CONNECT protocol name/level). */
thz_err mqtt_decode(const uint8_t *p, size_t n, uint8_t version, mqtt_packet *out);

/* Iterates a decoded SUBSCRIBE: returns true and advances *it while entries
 * remain. Start with *it = sub->list. */
bool mqtt_sub_next(mqtt_span *it, mqtt_span *filter, uint8_t *options);
/* Iterates a decoded UNSUBSCRIBE. */
bool mqtt_unsub_next(mqtt_span *it, mqtt_span *filter);

/* Checks UTF-8 as MQTT requires for strings: well-formed, no U+0000,
 * no UTF-16 surrogates (U+D800..U+DFFF). */
bool mqtt_utf8_valid(const uint8_t *p, size_t n);

/* Copies from a decoded PUBLISH's (or will's) props->raw the properties that
 * a server forwards unchanged: payload format indicator, content type,
 * response topic, correlation data and user properties, in their order.
 * `out` must hold raw.n bytes; returns the number of bytes written. */
size_t mqtt_props_forwardable(const mqtt_props *props, uint8_t *out);

/* Encoders append one whole packet to b. `version` picks the wire format.
 * They return THZ_OK, THZ_ENOMEM, or THZ_EINVAL (and append nothing) when
 * the packet cannot be represented: a string or binary field over 65535
 * bytes, a remaining length over MQTT_MAX_REMAINING, a wrong `type`. */
thz_err mqtt_encode_connect(thz_buf *b, const mqtt_connect *c);
/* `reason` is a v5 reason code; for 3.x it goes through mqtt_v3_connack_code
 * (which passes 3.1.1 return codes 1..5 through unchanged). */
thz_err mqtt_encode_connack(thz_buf *b, uint8_t version, bool session_present, uint8_t reason,
                            const mqtt_props *props);
thz_err mqtt_encode_publish(thz_buf *b, uint8_t version, const mqtt_publish *pub);
/* type is MQTT_PUBACK, PUBREC, PUBREL or PUBCOMP. v5 omits the reason code
 * and properties when reason is 0 and there are no properties. */
thz_err mqtt_encode_ack(thz_buf *b, uint8_t version, uint8_t type, uint16_t id, uint8_t reason,
                        const mqtt_props *props);
/* Client side, for tests and the benchmark: one filter per call. */
thz_err mqtt_encode_subscribe(thz_buf *b, uint8_t version, uint16_t id, const mqtt_span *filters,
                              const uint8_t *options, size_t count, const mqtt_props *props);
thz_err mqtt_encode_unsubscribe(thz_buf *b, uint8_t version, uint16_t id, const mqtt_span *filters,
                                size_t count, const mqtt_props *props);
/* type is MQTT_SUBACK or MQTT_UNSUBACK (3.1.1 UNSUBACK carries no codes). */
thz_err mqtt_encode_suback(thz_buf *b, uint8_t version, uint8_t type, uint16_t id,
                           const uint8_t *codes, size_t count, const mqtt_props *props);
/* type is MQTT_PINGREQ or MQTT_PINGRESP. */
thz_err mqtt_encode_ping(thz_buf *b, uint8_t type);
/* type is MQTT_DISCONNECT or MQTT_AUTH (v5 only; 3.1.1 DISCONNECT is empty). */
thz_err mqtt_encode_reasoned(thz_buf *b, uint8_t version, uint8_t type, uint8_t reason,
                             const mqtt_props *props);

/* Size in bytes of the encoded PUBLISH, to check a peer's maximum packet size
 * before encoding; SIZE_MAX when mqtt_encode_publish would fail THZ_EINVAL. */
size_t mqtt_publish_size(uint8_t version, const mqtt_publish *pub);

/* The one place thz_err becomes a v5 reason code. */
uint8_t mqtt_reason_from_err(thz_err e);
/* The 3.1.1 CONNACK return code for a CONNACK reason (v5 code in). */
uint8_t mqtt_v3_connack_code(uint8_t v5_reason);

#endif
