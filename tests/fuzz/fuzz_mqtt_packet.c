/* fuzz_mqtt_packet.c - libFuzzer target for the MQTT codec: frames and decodes
 * the input as each protocol version, walks what decoded, and checks that
 * re-encoding a decoded PUBLISH or ack decodes back to the same fields. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt/codec.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static bool span_eq(mqtt_span a, mqtt_span b)
{
    return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

static void check_props_forwardable(const mqtt_props *pr)
{
    static uint8_t out[1 << 20];
    if (pr->raw.n > sizeof out) return;
    size_t n = mqtt_props_forwardable(pr, out);
    CHECK(n <= pr->raw.n);
}

/* Re-encodes a decoded PUBLISH with its forwardable properties and checks
 * that it decodes back with the same fields. */
static void roundtrip_publish(uint8_t ver, const mqtt_publish *pub)
{
    static uint8_t fwd[1 << 20];
    mqtt_publish cp = *pub;
    mqtt_props pr = {0};
    if (ver == MQTT_V5) {
        if (pub->props.raw.n > sizeof fwd) return;
        pr.extra.p = fwd;
        pr.extra.n = (uint32_t)mqtt_props_forwardable(&pub->props, fwd);
        pr.have =
            pub->props.have & ((1ull << MQTT_P_MESSAGE_EXPIRY) | (1ull << MQTT_P_TOPIC_ALIAS));
        pr.message_expiry = pub->props.message_expiry;
        pr.topic_alias = pub->props.topic_alias;
    }
    cp.props = pr;
    thz_buf b = {0};
    thz_err rc = mqtt_encode_publish(&b, ver, &cp);
    if (rc == THZ_ENOMEM) return;
    CHECK(rc == THZ_OK);
    CHECK(mqtt_publish_size(ver, &cp) == b.len);
    size_t len = 0;
    CHECK(mqtt_frame(b.p, b.len, 0, &len) == THZ_OK && len == b.len);
    mqtt_packet d;
    CHECK(mqtt_decode(b.p, b.len, ver, &d) == THZ_OK);
    CHECK(d.type == MQTT_PUBLISH);
    const mqtt_publish *q = &d.u.publish;
    CHECK(q->qos == pub->qos && q->retain == pub->retain && q->dup == pub->dup);
    CHECK(q->id == pub->id);
    CHECK(span_eq(q->topic, pub->topic));
    CHECK(span_eq(q->payload, pub->payload));
    if (ver == MQTT_V5) {
        const uint64_t keep = (1ull << MQTT_P_PAYLOAD_FORMAT) | (1ull << MQTT_P_MESSAGE_EXPIRY) |
                              (1ull << MQTT_P_CONTENT_TYPE) | (1ull << MQTT_P_RESPONSE_TOPIC) |
                              (1ull << MQTT_P_CORRELATION_DATA) | (1ull << MQTT_P_TOPIC_ALIAS) |
                              (1ull << MQTT_P_USER_PROPERTY);
        CHECK(q->props.have == (pub->props.have & keep));
        CHECK(q->props.n_user == pub->props.n_user);
        CHECK(q->props.message_expiry == pub->props.message_expiry);
        CHECK(q->props.payload_format == pub->props.payload_format);
        CHECK(span_eq(q->props.content_type, pub->props.content_type));
        CHECK(span_eq(q->props.response_topic, pub->props.response_topic));
        CHECK(span_eq(q->props.correlation_data, pub->props.correlation_data));
        CHECK(q->props.topic_alias == pub->props.topic_alias);
    }
    thz_buf_free(&b);
}

static void roundtrip_ack(uint8_t ver, uint8_t type, const mqtt_ack *a)
{
    mqtt_props pr = {0};
    if (ver == MQTT_V5) {
        pr.have = a->props.have & (1ull << MQTT_P_REASON_STRING);
        pr.reason_string = a->props.reason_string;
    }
    thz_buf b = {0};
    thz_err rc = mqtt_encode_ack(&b, ver, type, a->id, a->reason, &pr);
    if (rc == THZ_ENOMEM) return;
    CHECK(rc == THZ_OK);
    mqtt_packet d;
    CHECK(mqtt_decode(b.p, b.len, ver, &d) == THZ_OK);
    CHECK(d.type == type && d.u.ack.id == a->id);
    CHECK(d.u.ack.reason == (ver == MQTT_V5 ? a->reason : 0));
    if (ver == MQTT_V5) {
        CHECK(span_eq(d.u.ack.props.reason_string, a->props.reason_string));
        CHECK(MQTT_HAS(&d.u.ack.props, MQTT_P_REASON_STRING) ==
              MQTT_HAS(&a->props, MQTT_P_REASON_STRING));
    }
    thz_buf_free(&b);
}

static void roundtrip_connect(const mqtt_connect *c)
{
    mqtt_connect cp = *c;
    /* Typed properties re-encode as they are; user properties do not. */
    cp.props.sub_ids = NULL;
    cp.will_props.sub_ids = NULL;
    thz_buf b = {0};
    thz_err rc = mqtt_encode_connect(&b, &cp);
    if (rc == THZ_ENOMEM) return;
    CHECK(rc == THZ_OK);
    mqtt_packet d;
    CHECK(mqtt_decode(b.p, b.len, 0, &d) == THZ_OK);
    const mqtt_connect *q = &d.u.connect;
    CHECK(q->version == c->version && q->keep_alive == c->keep_alive);
    CHECK(q->clean_start == c->clean_start && q->will_flag == c->will_flag);
    CHECK(q->will_qos == c->will_qos && q->will_retain == c->will_retain);
    CHECK(span_eq(q->client_id, c->client_id));
    CHECK(span_eq(q->username, c->username) && span_eq(q->password, c->password));
    CHECK(span_eq(q->will_topic, c->will_topic));
    CHECK(span_eq(q->will_payload, c->will_payload));
    const uint64_t user = 1ull << MQTT_P_USER_PROPERTY;
    CHECK((q->props.have | user) == (c->props.have | user));
    CHECK(q->props.session_expiry == c->props.session_expiry);
    CHECK(q->props.receive_max == c->props.receive_max);
    CHECK(span_eq(q->props.auth_method, c->props.auth_method));
    CHECK((q->will_props.have | user) == (c->will_props.have | user));
    thz_buf_free(&b);
}

static void walk(uint8_t ver, const mqtt_packet *pk)
{
    switch (pk->type) {
    case MQTT_CONNECT:
        check_props_forwardable(&pk->u.connect.will_props);
        roundtrip_connect(&pk->u.connect);
        break;
    case MQTT_PUBLISH:
        check_props_forwardable(&pk->u.publish.props);
        roundtrip_publish(ver, &pk->u.publish);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP: roundtrip_ack(ver, pk->type, &pk->u.ack); break;
    case MQTT_SUBSCRIBE: {
        mqtt_span it = pk->u.subscribe.list, f;
        uint8_t o;
        uint32_t n = 0;
        while (mqtt_sub_next(&it, &f, &o)) {
            CHECK(mqtt_utf8_valid(f.p, f.n));
            CHECK(MQTT_SUBOPT_QOS(o) != 3);
            n++;
        }
        CHECK(n == pk->u.subscribe.count && it.n == 0);
        break;
    }
    case MQTT_UNSUBSCRIBE: {
        mqtt_span it = pk->u.subscribe.list, f;
        uint32_t n = 0;
        while (mqtt_unsub_next(&it, &f)) n++;
        CHECK(n == pk->u.subscribe.count && it.n == 0);
        break;
    }
    default: break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t versions[] = {0, MQTT_V311, MQTT_V5};
    size_t len = 0;
    thz_err rc = mqtt_frame(data, size, 0, &len);
    if (rc != THZ_OK) return 0;
    CHECK(len <= size);
    size_t capped = 0;
    CHECK(mqtt_frame(data, size, (uint32_t)len, &capped) == THZ_OK && capped == len);
    if (len > 1) CHECK(mqtt_frame(data, size, (uint32_t)len - 1, &capped) == THZ_ETOOBIG);
    for (size_t i = 0; i < sizeof versions; i++) {
        mqtt_packet pk;
        uint8_t ver = versions[i];
        if (mqtt_decode(data, len, ver, &pk) != THZ_OK) continue;
        walk(ver == 0 ? MQTT_V311 : ver, &pk);
    }
    /* Also the whole input as a string. */
    (void)mqtt_utf8_valid(data, size);
    return 0;
}
