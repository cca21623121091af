/* test_codec.c - unit tests for the MQTT codec: spec byte vectors, encode/decode
 * round trips of every packet type, and every malformed input we could name. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "mqtt/codec.h"

#define S(lit) ((mqtt_span){(const uint8_t *)(lit), sizeof(lit) - 1})

/* Decodes the literal bytes as connection version `ver` and asserts the error. */
#define EXPECT(ver, err, ...)                                                                      \
    do {                                                                                           \
        const uint8_t b_[] = {__VA_ARGS__};                                                        \
        mqtt_packet pk_;                                                                           \
        assert_int_equal(mqtt_decode(b_, sizeof b_, (ver), &pk_), (err));                          \
    } while (0)

static void assert_span(mqtt_span s, const char *want)
{
    assert_int_equal(s.n, strlen(want));
    if (s.n) assert_memory_equal(s.p, want, s.n);
}

/* Decodes b->p[0..b->len) after checking mqtt_frame agrees on the length. */
static thz_err decode_buf(const thz_buf *b, uint8_t ver, mqtt_packet *pk)
{
    size_t len = 0;
    assert_int_equal(mqtt_frame(b->p, b->len, 0, &len), THZ_OK);
    assert_int_equal(len, b->len);
    return mqtt_decode(b->p, b->len, ver, pk);
}

/* ---- framing ------------------------------------------------------------ */

static void frame_incomplete(void **state)
{
    const uint8_t p[] = {0x30, 0x83, 0x01}; /* remaining length 131, no body */
    size_t len = 0;
    assert_int_equal(mqtt_frame(p, 0, 0, &len), THZ_EAGAIN);
    assert_int_equal(mqtt_frame(p, 1, 0, &len), THZ_EAGAIN);
    assert_int_equal(mqtt_frame(p, 2, 0, &len), THZ_EAGAIN); /* length incomplete */
    assert_int_equal(mqtt_frame(p, 3, 0, &len), THZ_EAGAIN);
    assert_int_equal(len, 3 + 131);
    const uint8_t ping[] = {0xC0, 0x00, 0xD0};
    assert_int_equal(mqtt_frame(ping, sizeof ping, 0, &len), THZ_OK);
    assert_int_equal(len, 2);
}

static void frame_varint_boundaries(void **state)
{
    static const struct {
        uint8_t b[5];
        size_t nb;
        uint32_t rl;
    } v[] = {
        {{0x00}, 1, 0},
        {{0x7F}, 1, 127},
        {{0x80, 0x01}, 2, 128},
        {{0xFF, 0x7F}, 2, 16383},
        {{0x80, 0x80, 0x01}, 3, 16384},
        {{0xFF, 0xFF, 0x7F}, 3, 2097151},
        {{0x80, 0x80, 0x80, 0x01}, 4, 2097152},
        {{0xFF, 0xFF, 0xFF, 0x7F}, 4, 268435455},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint8_t p[6] = {0x30};
        memcpy(p + 1, v[i].b, v[i].nb);
        size_t len = 0;
        thz_err want = v[i].rl == 0 ? THZ_OK : THZ_EAGAIN;
        assert_int_equal(mqtt_frame(p, 1 + v[i].nb, 0, &len), want);
        assert_int_equal(len, 1 + v[i].nb + v[i].rl);
    }
}

static void frame_five_byte_length_malformed(void **state)
{
    const uint8_t p[] = {0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F};
    size_t len = 0;
    assert_int_equal(mqtt_frame(p, sizeof p, 0, &len), THZ_EMALFORMED);
    /* The fourth continuation bit alone already condemns it. */
    assert_int_equal(mqtt_frame(p, 5, 0, &len), THZ_EMALFORMED);
    EXPECT(4, THZ_EMALFORMED, 0xC0, 0x80, 0x80, 0x80, 0x80, 0x00);
}

static void frame_too_big(void **state)
{
    const uint8_t p[] = {0x30, 0x80, 0x01}; /* 131 bytes total, body missing */
    size_t len = 0;
    assert_int_equal(mqtt_frame(p, sizeof p, 100, &len), THZ_ETOOBIG);
    assert_int_equal(len, 131);
    assert_int_equal(mqtt_frame(p, sizeof p, 131, &len), THZ_EAGAIN);
    assert_int_equal(mqtt_frame(p, sizeof p, 0, &len), THZ_EAGAIN);
}

/* ---- spec byte vectors -------------------------------------------------- */

static void spec_connect_v311(void **state)
{
    /* 3.1.1 section 3.1.2.10 example: user name, password, clean session,
     * keep alive 10; plus client id "c", user "u", password "pw". */
    const uint8_t p[] = {0x10, 0x14, 0x00, 0x04, 'M',  'Q',  'T', 'T',  0x04, 0xC2, 0x00,
                         0x0A, 0x00, 0x01, 'c',  0x00, 0x01, 'u', 0x00, 0x02, 'p',  'w'};
    mqtt_packet pk;
    assert_int_equal(mqtt_decode(p, sizeof p, 0, &pk), THZ_OK);
    assert_int_equal(pk.type, MQTT_CONNECT);
    const mqtt_connect *c = &pk.u.connect;
    assert_int_equal(c->version, MQTT_V311);
    assert_true(c->clean_start);
    assert_false(c->will_flag);
    assert_int_equal(c->keep_alive, 10);
    assert_span(c->client_id, "c");
    assert_true(c->has_username && c->has_password);
    assert_span(c->username, "u");
    assert_span(c->password, "pw");
    assert_int_equal(c->props.have, 0);
}

static void spec_connect_v31(void **state)
{
    EXPECT(0, THZ_OK, 0x10, 0x11, 0x00, 0x06, 'M', 'Q', 'I', 's', 'd', 'p', 0x03, 0x02, 0x00, 0x3C,
           0x00, 0x03, 'a', 'b', 'c');
    const uint8_t p[] = {0x10, 0x11, 0x00, 0x06, 'M',  'Q',  'I', 's', 'd', 'p',
                         0x03, 0x02, 0x00, 0x3C, 0x00, 0x03, 'a', 'b', 'c'};
    mqtt_packet pk;
    assert_int_equal(mqtt_decode(p, sizeof p, 0, &pk), THZ_OK);
    assert_int_equal(pk.u.connect.version, MQTT_V31);
    assert_int_equal(pk.u.connect.keep_alive, 60);
}

static void spec_connect_v5_props(void **state)
{
    /* v5 CONNECT: session expiry 0x78, receive max 20, user property k=v. */
    const uint8_t p[] = {0x10, 0x1D, 0x00, 0x04, 'M',  'Q',  'T',  'T',  0x05, 0x02, 0x00,
                         0x3C, 0x0F, 0x11, 0x00, 0x00, 0x00, 0x78, 0x21, 0x00, 0x14, 0x26,
                         0x00, 0x01, 'k',  0x00, 0x01, 'v',  0x00, 0x01, 'x'};
    mqtt_packet pk;
    assert_int_equal(mqtt_decode(p, sizeof p, 0, &pk), THZ_OK);
    const mqtt_props *pr = &pk.u.connect.props;
    assert_int_equal(pk.u.connect.version, MQTT_V5);
    assert_true(MQTT_HAS(pr, MQTT_P_SESSION_EXPIRY));
    assert_int_equal(pr->session_expiry, 0x78);
    assert_int_equal(pr->receive_max, 20);
    assert_int_equal(pr->n_user, 1);
    assert_int_equal(pr->raw.n, 15);
    assert_ptr_equal(pr->raw.p, p + 13);
    assert_span(pk.u.connect.client_id, "x");
}

static void spec_publish_qos1(void **state)
{
    const uint8_t p[] = {0x32, 0x09, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x0A, 'h', 'i'};
    mqtt_packet pk;
    assert_int_equal(mqtt_decode(p, sizeof p, 4, &pk), THZ_OK);
    assert_int_equal(pk.type, MQTT_PUBLISH);
    assert_int_equal(pk.u.publish.qos, 1);
    assert_int_equal(pk.u.publish.id, 10);
    assert_span(pk.u.publish.topic, "a/b");
    assert_span(pk.u.publish.payload, "hi");
    /* The same bytes as v5 read 'h' as a property length: overrun. */
    assert_int_equal(mqtt_decode(p, sizeof p, 5, &pk), THZ_EMALFORMED);
}

/* ---- fixed header ------------------------------------------------------- */

static void remaining_length_mismatch(void **state)
{
    EXPECT(4, THZ_EMALFORMED, 0xC0, 0x01);                        /* overrun */
    EXPECT(4, THZ_EMALFORMED, 0x40, 0x02, 0x00, 0x01, 0x00);      /* trailing */
    EXPECT(4, THZ_EMALFORMED, 0x40, 0x03, 0x00, 0x01, 0x00);      /* 3.1.1 PUBACK is 2 */
    EXPECT(4, THZ_EMALFORMED, 0xC0);                              /* no length */
    EXPECT(4, THZ_EMALFORMED, 0x30, 0x01, 0x00);                  /* topic length cut */
    EXPECT(4, THZ_EMALFORMED, 0x30, 0x04, 0x00, 0x05, 'a', 'b');  /* topic overruns */
    EXPECT(4, THZ_EMALFORMED, 0x32, 0x04, 0x00, 0x01, 'a', 0x00); /* id cut */
    /* A PUBLISH payload runs to the end of the packet, so only the fixed
     * header can tell that bytes follow the declared length. */
    EXPECT(4, THZ_EMALFORMED, 0x30, 0x03, 0x00, 0x01, 'a', 'x');
    EXPECT(4, THZ_EMALFORMED, 0x30, 0x05, 0x00, 0x01, 'a', 'x');
}

static void reserved_packet_types(void **state)
{
    EXPECT(4, THZ_EMALFORMED, 0x00, 0x00);
    EXPECT(4, THZ_EMALFORMED, 0xF0, 0x00); /* AUTH before 5.0 */
    EXPECT(0, THZ_EMALFORMED, 0xF0, 0x00);
    EXPECT(5, THZ_OK, 0xF0, 0x00);
}

static void wrong_fixed_flags(void **state)
{
    EXPECT(4, THZ_EMALFORMED, 0x60, 0x02, 0x00, 0x01); /* PUBREL needs 0010 */
    EXPECT(4, THZ_OK, 0x62, 0x02, 0x00, 0x01);
    EXPECT(4, THZ_EMALFORMED, 0x42, 0x02, 0x00, 0x01); /* PUBACK 0000 */
    EXPECT(4, THZ_EMALFORMED, 0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x00);
    EXPECT(4, THZ_EMALFORMED, 0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, 'a');
    EXPECT(4, THZ_EMALFORMED, 0xC1, 0x00);
    EXPECT(4, THZ_EMALFORMED, 0xE8, 0x00);
    EXPECT(4, THZ_EMALFORMED, 0x11, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x00,
           0x00, 0x00);
}

static void ping_and_disconnect_v3_must_be_empty(void **state)
{
    EXPECT(4, THZ_OK, 0xC0, 0x00);
    EXPECT(4, THZ_OK, 0xD0, 0x00);
    EXPECT(4, THZ_EMALFORMED, 0xC0, 0x01, 0x00);
    EXPECT(4, THZ_EMALFORMED, 0xD0, 0x01, 0x00);
    EXPECT(4, THZ_EMALFORMED, 0xE0, 0x01, 0x00);
    EXPECT(5, THZ_EMALFORMED, 0xC0, 0x01, 0x00);
}

/* ---- PUBLISH ------------------------------------------------------------ */

static void publish_qos3_malformed(void **state)
{
    EXPECT(4, THZ_EMALFORMED, 0x36, 0x05, 0x00, 0x01, 'a', 0x00, 0x01);
    EXPECT(5, THZ_EMALFORMED, 0x36, 0x06, 0x00, 0x01, 'a', 0x00, 0x01, 0x00);
}

static void publish_dup_qos0(void **state)
{
    EXPECT(4, THZ_EPROTO, 0x38, 0x03, 0x00, 0x01, 'a');
    EXPECT(5, THZ_EPROTO, 0x38, 0x04, 0x00, 0x01, 'a', 0x00);
    EXPECT(4, THZ_OK, 0x3A, 0x05, 0x00, 0x01, 'a', 0x00, 0x01);
}

static void publish_packet_id_zero(void **state)
{
    EXPECT(4, THZ_EPROTO, 0x32, 0x05, 0x00, 0x01, 'a', 0x00, 0x00);
    EXPECT(5, THZ_EPROTO, 0x34, 0x06, 0x00, 0x01, 'a', 0x00, 0x00, 0x00);
}

static void publish_topic_bad_utf8(void **state)
{
    EXPECT(4, THZ_EMALFORMED, 0x30, 0x03, 0x00, 0x01, 0xFF);
    EXPECT(4, THZ_EMALFORMED, 0x30, 0x04, 0x00, 0x02, 'a', 0x00);        /* U+0000 */
    EXPECT(4, THZ_EMALFORMED, 0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80); /* U+D800 */
    EXPECT(4, THZ_EMALFORMED, 0x30, 0x04, 0x00, 0x02, 0xC0, 0x80);       /* overlong NUL */
    EXPECT(4, THZ_OK, 0x30, 0x05, 0x00, 0x03, 0xE2, 0x82, 0xAC);         /* euro sign */
}

static void publish_empty_topic_and_payload(void **state)
{
    mqtt_packet pk;
    const uint8_t v5[] = {0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07};
    assert_int_equal(mqtt_decode(v5, sizeof v5, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.publish.topic.n, 0);
    assert_int_equal(pk.u.publish.props.topic_alias, 7);
    assert_int_equal(pk.u.publish.payload.n, 0);
    const uint8_t v3[] = {0x31, 0x02, 0x00, 0x00};
    assert_int_equal(mqtt_decode(v3, sizeof v3, 4, &pk), THZ_OK);
    assert_true(pk.u.publish.retain);
    assert_int_equal(pk.u.publish.topic.n, 0);
}

static void publish_v5_property_rules(void **state)
{
    /* Topic alias 0 decodes: the broker answers it with DISCONNECT 0x94
     * (Topic Alias invalid, section 3.3.4), not 0x82. */
    {
        const uint8_t p[] = {0x30, 0x07, 0x00, 0x01, 'a', 0x03, 0x23, 0x00, 0x00};
        mqtt_packet pk;
        assert_int_equal(mqtt_decode(p, sizeof p, 5, &pk), THZ_OK);
        assert_true(MQTT_HAS(&pk.u.publish.props, MQTT_P_TOPIC_ALIAS));
        assert_int_equal(pk.u.publish.props.topic_alias, 0);
    }
    /* payload format 2 */
    EXPECT(5, THZ_EPROTO, 0x30, 0x06, 0x00, 0x01, 'a', 0x02, 0x01, 0x02);
    EXPECT(5, THZ_OK, 0x30, 0x06, 0x00, 0x01, 'a', 0x02, 0x01, 0x01);
    /* duplicate message expiry */
    EXPECT(5, THZ_EPROTO, 0x30, 0x0E, 0x00, 0x01, 'a', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2);
    /* session expiry is not a PUBLISH property */
    EXPECT(5, THZ_EMALFORMED, 0x30, 0x09, 0x00, 0x01, 'a', 0x05, 0x11, 0, 0, 0, 1);
    /* unknown identifier 0x05 and a multi-byte identifier */
    EXPECT(5, THZ_EMALFORMED, 0x30, 0x06, 0x00, 0x01, 'a', 0x02, 0x05, 0x00);
    EXPECT(5, THZ_EMALFORMED, 0x30, 0x07, 0x00, 0x01, 'a', 0x03, 0x81, 0x01, 0x00);
    /* property length beyond the packet */
    EXPECT(5, THZ_EMALFORMED, 0x30, 0x06, 0x00, 0x01, 'a', 0x09, 0x01, 0x01);
    /* property value beyond the property block */
    EXPECT(5, THZ_EMALFORMED, 0x30, 0x08, 0x00, 0x01, 'a', 0x02, 0x23, 0x00, 0x01, 'x');
    /* content type with bad UTF-8 */
    EXPECT(5, THZ_EMALFORMED, 0x30, 0x08, 0x00, 0x01, 'a', 0x04, 0x03, 0x00, 0x01, 0x80);
    /* user property value with U+0000 */
    EXPECT(5, THZ_EMALFORMED, 0x30, 0x0B, 0x00, 0x01, 'a', 0x07, 0x26, 0x00, 0x01, 'k', 0x00, 0x01,
           0x00);
    /* five-byte subscription identifier */
    EXPECT(5, THZ_EMALFORMED, 0x30, 0x0A, 0x00, 0x01, 'a', 0x06, 0x0B, 0xFF, 0xFF, 0xFF, 0xFF,
           0x01);
    /* property length varint itself is malformed */
    EXPECT(5, THZ_EMALFORMED, 0x30, 0x07, 0x00, 0x01, 'a', 0xFF, 0xFF, 0xFF, 0xFF);
}

static void publish_multiple_sub_ids(void **state)
{
    const uint8_t p[] = {0x30, 0x0C, 0x00, 0x01, 'a', 0x05, 0x0B,
                         0x05, 0x0B, 0x80, 0x01, 'p', 'a',  'y'};
    mqtt_packet pk;
    assert_int_equal(mqtt_decode(p, sizeof p, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.publish.props.n_sub_ids, 2);
    assert_int_equal(pk.u.publish.props.sub_id, 5);
    assert_span(pk.u.publish.payload, "pay");
    /* Subscription identifier 0 is a protocol error everywhere. */
    EXPECT(5, THZ_EPROTO, 0x30, 0x06, 0x00, 0x01, 'a', 0x02, 0x0B, 0x00);
}

static void version0_reads_as_v311(void **state)
{
    /* Before CONNECT a PUBLISH has no property block: 0x02 is payload. */
    const uint8_t p[] = {0x30, 0x06, 0x00, 0x01, 'a', 0x02, 0x01, 0x01};
    mqtt_packet pk;
    assert_int_equal(mqtt_decode(p, sizeof p, 0, &pk), THZ_OK);
    assert_int_equal(pk.u.publish.payload.n, 3);
    assert_int_equal(mqtt_decode(p, sizeof p, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.publish.payload.n, 0);
    assert_int_equal(pk.u.publish.props.payload_format, 1);
}

/* ---- CONNECT ------------------------------------------------------------ */

static void connect_unknown_protocol(void **state)
{
    mqtt_packet pk;
    const uint8_t lvl6[] = {0x10, 0x0D, 0x00, 0x04, 'M',  'Q',  'T', 'T',
                            0x06, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00};
    assert_int_equal(mqtt_decode(lvl6, sizeof lvl6, 0, &pk), THZ_EVERSION);
    assert_int_equal(pk.type, MQTT_CONNECT);
    assert_int_equal(pk.u.connect.version, 6);
    /* "MQTT" with level 3 and "MQIsdp" with level 4 are both wrong. */
    EXPECT(0, THZ_EVERSION, 0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x03, 0x02, 0x00, 0x00,
           0x00, 0x00);
    EXPECT(0, THZ_EVERSION, 0x10, 0x0E, 0x00, 0x06, 'M', 'Q', 'I', 's', 'd', 'p', 0x04, 0x02, 0x00,
           0x00, 0x00, 0x00);
    EXPECT(0, THZ_EVERSION, 0x10, 0x0C, 0x00, 0x04, 'H', 'T', 'T', 'P', 0x04, 0x02, 0x00, 0x00,
           0x00, 0x00);
    /* Cut short before the level: cannot even tell. */
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x05, 0x00, 0x04, 'M', 'Q', 'T');
}

static void connect_reserved_flag(void **state)
{
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x03, 0x00, 0x00,
           0x00, 0x00);
}

static void connect_will_flags(void **state)
{
    /* will QoS 3 with will flag */
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x11, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x1E, 0x00, 0x00,
           0x00, 0x00, 0x00, 0x01, 't', 0x00, 0x00);
    /* will QoS 1 without will flag */
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x0A, 0x00, 0x00,
           0x00, 0x00);
    /* will retain without will flag */
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x22, 0x00, 0x00,
           0x00, 0x00);
    /* will flag set but will topic missing */
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x06, 0x00, 0x00,
           0x00, 0x00);
    /* will topic with bad UTF-8 */
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x11, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x06, 0x00, 0x00,
           0x00, 0x00, 0x00, 0x01, 0xFE, 0x00, 0x00);
    EXPECT(0, THZ_OK, 0x10, 0x11, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x36, 0x00, 0x00, 0x00,
           0x00, 0x00, 0x01, 't', 0x00, 0x00);
}

static void connect_password_without_username(void **state)
{
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x0E, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x42, 0x00, 0x00,
           0x00, 0x00, 0x00, 0x00);
    EXPECT(0, THZ_OK, 0x10, 0x0F, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x42, 0x00, 0x00, 0x00,
           0x00, 0x00, 0x00, 0x00);
}

static void connect_trailing_and_missing_fields(void **state)
{
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x0D, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x00,
           0x00, 0x00, 0xAA);
    /* username flag but no username */
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x82, 0x00, 0x00,
           0x00, 0x00);
    /* client id with a surrogate */
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x0F, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x00,
           0x00, 0x03, 0xED, 0xBF, 0xBF);
    /* username with bad UTF-8 */
    EXPECT(0, THZ_EMALFORMED, 0x10, 0x0F, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x82, 0x00, 0x00,
           0x00, 0x00, 0x00, 0x01, 0xC3);
}

/* Builds a v5 CONNECT around the property bytes and returns its decode result. */
static thz_err connect_v5_with(const uint8_t *props, uint8_t n)
{
    uint8_t p[64] = {
        0x10, (uint8_t)(13 + n), 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x00, n};
    memcpy(p + 13, props, n);
    p[13 + n] = 0x00;
    p[14 + n] = 0x00;
    mqtt_packet pk;
    return mqtt_decode(p, 15u + n, 0, &pk);
}

static void connect_v5_property_values(void **state)
{
    assert_int_equal(connect_v5_with((const uint8_t[]){0x21, 0x00, 0x00}, 3), THZ_EPROTO);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x21, 0x00, 0x01}, 3), THZ_OK);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x27, 0, 0, 0, 0}, 5), THZ_EPROTO);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x27, 0, 0, 1, 0}, 5), THZ_OK);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x17, 0x02}, 2), THZ_EPROTO);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x19, 0x02}, 2), THZ_EPROTO);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x19, 0x01, 0x17, 0x00}, 4), THZ_OK);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x22, 0x00, 0x00}, 3), THZ_OK);
}

static void connect_v5_auth_data_needs_method(void **state)
{
    assert_int_equal(connect_v5_with((const uint8_t[]){0x16, 0x00, 0x01, 'd'}, 4), THZ_EPROTO);
    assert_int_equal(
        connect_v5_with((const uint8_t[]){0x15, 0x00, 0x01, 'm', 0x16, 0x00, 0x01, 'd'}, 8),
        THZ_OK);
}

static void connect_v5_duplicate_property(void **state)
{
    assert_int_equal(connect_v5_with((const uint8_t[]){0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2}, 10),
                     THZ_EPROTO);
    assert_int_equal(
        connect_v5_with((const uint8_t[]){0x26, 0, 1, 'a', 0, 0, 0x26, 0, 1, 'a', 0, 0}, 12),
        THZ_OK);
}

static void connect_v5_property_not_allowed(void **state)
{
    assert_int_equal(connect_v5_with((const uint8_t[]){0x23, 0x00, 0x01}, 3), THZ_EMALFORMED);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x18, 0, 0, 0, 1}, 5), THZ_EMALFORMED);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x24, 0x01}, 2), THZ_EMALFORMED);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x00, 0x01}, 2), THZ_EMALFORMED);
    assert_int_equal(connect_v5_with((const uint8_t[]){0x7F, 0x01}, 2), THZ_EMALFORMED);
    /* truncated u32 value */
    assert_int_equal(connect_v5_with((const uint8_t[]){0x11, 0, 0}, 3), THZ_EMALFORMED);
}

static void connect_v5_will_properties(void **state)
{
    /* Will delay is allowed among will properties only. */
    const uint8_t ok[] = {0x10, 0x19, 0x00, 0x04, 'M',  'Q',  'T',  'T',  0x05,
                          0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x18, 0x00,
                          0x00, 0x00, 0x09, 0x00, 0x01, 't',  0x00, 0x01, 'p'};
    mqtt_packet pk;
    assert_int_equal(mqtt_decode(ok, sizeof ok, 0, &pk), THZ_OK);
    assert_true(pk.u.connect.will_flag);
    assert_int_equal(pk.u.connect.will_props.will_delay, 9);
    assert_int_equal(pk.u.connect.will_props.raw.n, 5);
    assert_span(pk.u.connect.will_topic, "t");
    assert_span(pk.u.connect.will_payload, "p");
    uint8_t bad[sizeof ok];
    memcpy(bad, ok, sizeof ok);
    bad[16] = 0x21; /* receive maximum is not a will property */
    assert_int_equal(mqtt_decode(bad, sizeof bad, 0, &pk), THZ_EMALFORMED);
    memcpy(bad, ok, sizeof ok);
    bad[16] = 0x23; /* nor is topic alias */
    assert_int_equal(mqtt_decode(bad, sizeof bad, 0, &pk), THZ_EMALFORMED);
}

static void connack_flags_reserved(void **state)
{
    EXPECT(4, THZ_OK, 0x20, 0x02, 0x01, 0x00);
    EXPECT(4, THZ_EMALFORMED, 0x20, 0x02, 0x02, 0x00);
    EXPECT(4, THZ_EMALFORMED, 0x20, 0x03, 0x00, 0x00, 0x00);
    EXPECT(5, THZ_OK, 0x20, 0x03, 0x00, 0x00, 0x00);
    EXPECT(5, THZ_EPROTO, 0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02); /* max QoS 2 */
    EXPECT(5, THZ_EMALFORMED, 0x20, 0x05, 0x00, 0x00, 0x02, 0x17, 0x01);
}

/* ---- SUBSCRIBE / UNSUBSCRIBE -------------------------------------------- */

static void subscribe_empty(void **state)
{
    EXPECT(4, THZ_EPROTO, 0x82, 0x02, 0x00, 0x01);
    EXPECT(5, THZ_EPROTO, 0x82, 0x03, 0x00, 0x01, 0x00);
    EXPECT(4, THZ_EPROTO, 0xA2, 0x02, 0x00, 0x01);
    EXPECT(5, THZ_EPROTO, 0xA2, 0x03, 0x00, 0x01, 0x00);
}

static void subscribe_packet_id_zero(void **state)
{
    EXPECT(4, THZ_EPROTO, 0x82, 0x06, 0x00, 0x00, 0x00, 0x01, 'a', 0x00);
    EXPECT(4, THZ_EPROTO, 0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, 'a');
    EXPECT(4, THZ_EPROTO, 0x40, 0x02, 0x00, 0x00);
    EXPECT(4, THZ_EPROTO, 0x90, 0x03, 0x00, 0x00, 0x00);
}

static void subscribe_options_reserved_bits(void **state)
{
    EXPECT(4, THZ_EMALFORMED, 0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x04);
    EXPECT(4, THZ_EMALFORMED, 0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x80);
    EXPECT(4, THZ_EMALFORMED, 0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x03); /* QoS 3 */
    EXPECT(4, THZ_OK, 0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x02);
    EXPECT(5, THZ_OK, 0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x2E);
    EXPECT(5, THZ_EMALFORMED, 0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x40);
    EXPECT(5, THZ_EMALFORMED, 0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x83);
    EXPECT(5, THZ_EMALFORMED, 0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x03);
    EXPECT(5, THZ_EPROTO, 0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x30);
    /* options byte missing */
    EXPECT(4, THZ_EMALFORMED, 0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 'a');
}

static void subscribe_filter_utf8(void **state)
{
    EXPECT(4, THZ_EMALFORMED, 0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00);
    EXPECT(4, THZ_EMALFORMED, 0xA2, 0x05, 0x00, 0x01, 0x00, 0x01, 0xC1);
}

static void subscribe_sub_id_rules(void **state)
{
    EXPECT(5, THZ_OK, 0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x01, 0x00, 0x01, 'a', 0x00);
    EXPECT(5, THZ_EPROTO, 0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, 'a', 0x00);
    EXPECT(5, THZ_EPROTO, 0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, 'a',
           0x00);
    /* no subscription identifier in UNSUBSCRIBE */
    EXPECT(5, THZ_EMALFORMED, 0xA2, 0x08, 0x00, 0x01, 0x02, 0x0B, 0x01, 0x00, 0x01, 'a');
}

static void subscribe_iterate(void **state)
{
    const uint8_t p[] = {0x82, 0x0C, 0x00, 0x07, 0x00, 0x01, 'a',
                         0x01, 0x00, 0x03, 'b',  '/',  '#',  0x02};
    mqtt_packet pk;
    assert_int_equal(mqtt_decode(p, sizeof p, 4, &pk), THZ_OK);
    const mqtt_subscribe *s = &pk.u.subscribe;
    assert_int_equal(s->id, 7);
    assert_int_equal(s->count, 2);
    mqtt_span it = s->list, f;
    uint8_t o;
    assert_true(mqtt_sub_next(&it, &f, &o));
    assert_span(f, "a");
    assert_int_equal(o, 1);
    assert_true(mqtt_sub_next(&it, &f, &o));
    assert_span(f, "b/#");
    assert_int_equal(o, 2);
    assert_false(mqtt_sub_next(&it, &f, &o));
}

static void subscribe_iterate_empty_filter(void **state)
{
    const uint8_t p[] = {0x82, 0x05, 0x00, 0x07, 0x00, 0x00, 0x01};
    mqtt_packet pk;
    assert_int_equal(mqtt_decode(p, sizeof p, 4, &pk), THZ_OK);
    mqtt_span it = pk.u.subscribe.list, f;
    uint8_t o;
    assert_true(mqtt_sub_next(&it, &f, &o));
    assert_int_equal(f.n, 0);
    assert_false(mqtt_sub_next(&it, &f, &o));
}

/* ---- acks, DISCONNECT, AUTH --------------------------------------------- */

static void v5_ack_short_forms(void **state)
{
    mqtt_packet pk;
    const uint8_t two[] = {0x40, 0x02, 0x12, 0x34};
    assert_int_equal(mqtt_decode(two, sizeof two, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.ack.id, 0x1234);
    assert_int_equal(pk.u.ack.reason, 0);
    assert_int_equal(pk.u.ack.props.raw.n, 0);
    const uint8_t three[] = {0x50, 0x03, 0x00, 0x01, 0x10};
    assert_int_equal(mqtt_decode(three, sizeof three, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.ack.reason, 0x10);
    const uint8_t full[] = {0x62, 0x08, 0x00, 0x01, 0x92, 0x04, 0x1F, 0x00, 0x01, 'x'};
    assert_int_equal(mqtt_decode(full, sizeof full, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.ack.reason, 0x92);
    assert_span(pk.u.ack.props.reason_string, "x");
    EXPECT(5, THZ_EMALFORMED, 0x70, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00); /* trailing */
    EXPECT(5, THZ_EMALFORMED, 0x70, 0x05, 0x00, 0x01, 0x00, 0x03, 0x00); /* overrun */
    EXPECT(5, THZ_EMALFORMED, 0x40, 0x07, 0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01);
    EXPECT(5, THZ_EMALFORMED, 0x40, 0x01, 0x00);
}

static void v5_disconnect_and_auth_forms(void **state)
{
    mqtt_packet pk;
    const uint8_t zero[] = {0xE0, 0x00};
    assert_int_equal(mqtt_decode(zero, sizeof zero, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.reasoned.reason, 0);
    const uint8_t one[] = {0xE0, 0x01, 0x04};
    assert_int_equal(mqtt_decode(one, sizeof one, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.reasoned.reason, 4);
    const uint8_t full[] = {0xE0, 0x07, 0x8B, 0x05, 0x11, 0x00, 0x00, 0x00, 0x05};
    assert_int_equal(mqtt_decode(full, sizeof full, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.reasoned.props.session_expiry, 5);
    const uint8_t auth[] = {0xF0, 0x06, 0x18, 0x04, 0x15, 0x00, 0x01, 'm'};
    assert_int_equal(mqtt_decode(auth, sizeof auth, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.reasoned.reason, 0x18);
    assert_span(pk.u.reasoned.props.auth_method, "m");
    /* auth method is not a DISCONNECT property; session expiry not AUTH */
    EXPECT(5, THZ_EMALFORMED, 0xE0, 0x06, 0x00, 0x04, 0x15, 0x00, 0x01, 'm');
    EXPECT(5, THZ_EMALFORMED, 0xF0, 0x07, 0x18, 0x05, 0x11, 0x00, 0x00, 0x00, 0x05);
    EXPECT(5, THZ_EMALFORMED, 0xE1, 0x00);
}

static void suback_codes(void **state)
{
    EXPECT(4, THZ_OK, 0x90, 0x03, 0x00, 0x01, 0x80);
    EXPECT(4, THZ_EPROTO, 0x90, 0x02, 0x00, 0x01);
    EXPECT(5, THZ_EPROTO, 0x90, 0x03, 0x00, 0x01, 0x00);
    EXPECT(4, THZ_OK, 0xB0, 0x02, 0x00, 0x01);
    EXPECT(4, THZ_EMALFORMED, 0xB0, 0x03, 0x00, 0x01, 0x00);
    EXPECT(5, THZ_OK, 0xB0, 0x04, 0x00, 0x01, 0x00, 0x11);
}

/* ---- UTF-8 -------------------------------------------------------------- */

static void utf8_table(void **state)
{
    static const struct {
        const char *s;
        size_t n;
        bool ok;
    } v[] = {
        {"", 0, true},
        {"plain ascii that is longer than eight bytes", 43, true},
        {"\xC2\x80", 2, true},
        {"\xDF\xBF", 2, true},
        {"\xE0\xA0\x80", 3, true},
        {"\xEF\xBF\xBF", 3, true}, /* U+FFFF: a non-character, but allowed */
        {"\xF0\x90\x80\x80", 4, true},
        {"\xF4\x8F\xBF\xBF", 4, true},
        {"\xED\x9F\xBF", 3, true}, /* U+D7FF */
        {"\xEE\x80\x80", 3, true}, /* U+E000 */
        {"\x00", 1, false},
        {"abcdefgh\x00", 9, false}, /* NUL after the fast path */
        {"abc\x00"
         "efghij",
         10, false}, /* NUL inside a fast-path word */
        {"\xC0\x80", 2, false},
        {"\xC1\xBF", 2, false},
        {"\x80", 1, false},
        {"\xC2", 1, false},
        {"\xC2\x41", 2, false},
        {"\xE0\x9F\xBF", 3, false},
        {"\xED\xA0\x80", 3, false},
        {"\xED\xBF\xBF", 3, false},
        {"\xE1\x80", 2, false},
        {"\xF0\x8F\xBF\xBF", 4, false},
        {"\xF4\x90\x80\x80", 4, false},
        {"\xF5\x80\x80\x80", 4, false},
        {"\xFF", 1, false},
        {"\xF0\x90\x80", 3, false},
        {"abcdefgh\xE2\x82\xAC"
         "abcdefgh",
         19, true},
        {"abcdefgh\xE2\x82", 10, false},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        if (mqtt_utf8_valid((const uint8_t *)v[i].s, v[i].n) != v[i].ok)
            fail_msg("utf8 case %zu", i);
    }
}

/* ---- round trips -------------------------------------------------------- */

static const uint8_t user_kv[] = {0x26, 0x00, 0x01, 'k', 0x00, 0x02, 'v', '1'};

static void rt_connect_v311_and_v31(void **state)
{
    for (uint8_t ver = 3; ver <= 4; ver++) {
        mqtt_connect c = {0};
        c.version = ver;
        c.clean_start = true;
        c.keep_alive = 300;
        c.client_id = S("client-1");
        c.will_flag = true;
        c.will_qos = 2;
        c.will_retain = true;
        c.will_topic = S("dev/1/status");
        c.will_payload = S("offline");
        c.has_username = c.has_password = true;
        c.username = S("user");
        c.password = S("p\x00ss");
        MQTT_SET(&c.props, MQTT_P_RECEIVE_MAX); /* ignored by 3.x */
        c.props.receive_max = 5;
        thz_buf b = {0};
        assert_int_equal(mqtt_encode_connect(&b, &c), THZ_OK);
        mqtt_packet pk;
        assert_int_equal(decode_buf(&b, 0, &pk), THZ_OK);
        const mqtt_connect *d = &pk.u.connect;
        assert_int_equal(d->version, ver);
        assert_true(d->clean_start && d->will_flag && d->will_retain);
        assert_int_equal(d->will_qos, 2);
        assert_int_equal(d->keep_alive, 300);
        assert_span(d->client_id, "client-1");
        assert_span(d->will_topic, "dev/1/status");
        assert_span(d->will_payload, "offline");
        assert_span(d->username, "user");
        assert_int_equal(d->password.n, 4);
        assert_int_equal(d->props.have, 0);
        thz_buf_free(&b);
    }
}

static void rt_connect_v5_all_props(void **state)
{
    mqtt_connect c = {0};
    c.version = MQTT_V5;
    c.keep_alive = 15;
    c.client_id = S("");
    mqtt_props *p = &c.props;
    MQTT_SET(p, MQTT_P_SESSION_EXPIRY);
    p->session_expiry = 0xFFFFFFFF;
    MQTT_SET(p, MQTT_P_RECEIVE_MAX);
    p->receive_max = 100;
    MQTT_SET(p, MQTT_P_MAX_PACKET_SIZE);
    p->max_packet_size = 1 << 20;
    MQTT_SET(p, MQTT_P_TOPIC_ALIAS_MAX);
    p->topic_alias_max = 10;
    MQTT_SET(p, MQTT_P_REQ_RESPONSE_INFO);
    p->req_response_info = 1;
    MQTT_SET(p, MQTT_P_REQ_PROBLEM_INFO);
    p->req_problem_info = 0;
    MQTT_SET(p, MQTT_P_AUTH_METHOD);
    p->auth_method = S("SCRAM-SHA-1");
    MQTT_SET(p, MQTT_P_AUTH_DATA);
    p->auth_data = S("\x01\x02");
    p->extra = (mqtt_span){user_kv, sizeof user_kv};
    c.will_flag = true;
    c.will_qos = 1;
    c.will_topic = S("w");
    c.will_payload = S("");
    mqtt_props *w = &c.will_props;
    MQTT_SET(w, MQTT_P_WILL_DELAY);
    w->will_delay = 30;
    MQTT_SET(w, MQTT_P_PAYLOAD_FORMAT);
    w->payload_format = 1;
    MQTT_SET(w, MQTT_P_MESSAGE_EXPIRY);
    w->message_expiry = 60;
    MQTT_SET(w, MQTT_P_CONTENT_TYPE);
    w->content_type = S("text/plain");
    MQTT_SET(w, MQTT_P_RESPONSE_TOPIC);
    w->response_topic = S("r/t");
    MQTT_SET(w, MQTT_P_CORRELATION_DATA);
    w->correlation_data = S("cd");
    c.has_password = true; /* v5 allows a password alone */
    c.password = S("secret");
    thz_buf b = {0};
    assert_int_equal(mqtt_encode_connect(&b, &c), THZ_OK);
    mqtt_packet pk;
    assert_int_equal(decode_buf(&b, 0, &pk), THZ_OK);
    const mqtt_connect *d = &pk.u.connect;
    assert_int_equal(d->version, MQTT_V5);
    assert_int_equal(d->props.session_expiry, 0xFFFFFFFF);
    assert_int_equal(d->props.receive_max, 100);
    assert_int_equal(d->props.max_packet_size, 1 << 20);
    assert_int_equal(d->props.topic_alias_max, 10);
    assert_int_equal(d->props.req_response_info, 1);
    assert_true(MQTT_HAS(&d->props, MQTT_P_REQ_PROBLEM_INFO));
    assert_int_equal(d->props.req_problem_info, 0);
    assert_span(d->props.auth_method, "SCRAM-SHA-1");
    assert_int_equal(d->props.auth_data.n, 2);
    assert_int_equal(d->props.n_user, 1);
    assert_int_equal(d->props.have, p->have | ((uint64_t)1 << MQTT_P_USER_PROPERTY));
    assert_int_equal(d->will_props.will_delay, 30);
    assert_int_equal(d->will_props.payload_format, 1);
    assert_int_equal(d->will_props.message_expiry, 60);
    assert_span(d->will_props.content_type, "text/plain");
    assert_span(d->will_props.response_topic, "r/t");
    assert_span(d->will_props.correlation_data, "cd");
    assert_int_equal(d->will_props.have, w->have);
    assert_false(d->has_username);
    assert_span(d->password, "secret");
    assert_int_equal(d->client_id.n, 0);
    thz_buf_free(&b);
}

static void rt_connack(void **state)
{
    thz_buf b = {0};
    mqtt_packet pk;
    assert_int_equal(mqtt_encode_connack(&b, 4, true, MQTT_RC_SUCCESS, NULL), THZ_OK);
    assert_int_equal(b.len, 4);
    assert_int_equal(decode_buf(&b, 4, &pk), THZ_OK);
    assert_true(pk.u.connack.session_present);
    b.len = 0;
    /* v5 codes are translated for 3.1.1, 3.1.1 codes pass through. */
    assert_int_equal(mqtt_encode_connack(&b, 4, false, MQTT_RC_NOT_AUTHORIZED, NULL), THZ_OK);
    assert_int_equal(b.p[3], MQTT_V3_NOT_AUTHORIZED);
    b.len = 0;
    assert_int_equal(mqtt_encode_connack(&b, 3, false, MQTT_V3_ID_REJECTED, NULL), THZ_OK);
    assert_int_equal(b.p[3], MQTT_V3_ID_REJECTED);
    b.len = 0;

    mqtt_props p = {0};
    MQTT_SET(&p, MQTT_P_ASSIGNED_CLIENT_ID);
    p.assigned_client_id = S("auto-1");
    MQTT_SET(&p, MQTT_P_SERVER_KEEP_ALIVE);
    p.server_keep_alive = 120;
    MQTT_SET(&p, MQTT_P_MAX_QOS);
    p.max_qos = 1;
    MQTT_SET(&p, MQTT_P_RETAIN_AVAILABLE);
    MQTT_SET(&p, MQTT_P_WILDCARD_SUB_AVAILABLE);
    p.wildcard_sub_available = 1;
    MQTT_SET(&p, MQTT_P_SUB_ID_AVAILABLE);
    p.sub_id_available = 1;
    MQTT_SET(&p, MQTT_P_SHARED_SUB_AVAILABLE);
    MQTT_SET(&p, MQTT_P_TOPIC_ALIAS_MAX);
    p.topic_alias_max = 16;
    MQTT_SET(&p, MQTT_P_RECEIVE_MAX);
    p.receive_max = 65535;
    MQTT_SET(&p, MQTT_P_MAX_PACKET_SIZE);
    p.max_packet_size = 65536;
    MQTT_SET(&p, MQTT_P_RESPONSE_INFO);
    p.response_info = S("resp/");
    MQTT_SET(&p, MQTT_P_SERVER_REF);
    p.server_ref = S("other:1883");
    MQTT_SET(&p, MQTT_P_REASON_STRING);
    p.reason_string = S("ok");
    MQTT_SET(&p, MQTT_P_SESSION_EXPIRY);
    p.session_expiry = 7;
    assert_int_equal(mqtt_encode_connack(&b, 5, false, MQTT_RC_SUCCESS, &p), THZ_OK);
    assert_int_equal(decode_buf(&b, 5, &pk), THZ_OK);
    const mqtt_props *d = &pk.u.connack.props;
    assert_int_equal(d->have, p.have);
    assert_span(d->assigned_client_id, "auto-1");
    assert_int_equal(d->server_keep_alive, 120);
    assert_int_equal(d->max_qos, 1);
    assert_int_equal(d->retain_available, 0);
    assert_int_equal(d->wildcard_sub_available, 1);
    assert_int_equal(d->sub_id_available, 1);
    assert_int_equal(d->topic_alias_max, 16);
    assert_int_equal(d->receive_max, 65535);
    assert_int_equal(d->max_packet_size, 65536);
    assert_span(d->response_info, "resp/");
    assert_span(d->server_ref, "other:1883");
    assert_span(d->reason_string, "ok");
    assert_int_equal(d->session_expiry, 7);
    thz_buf_free(&b);
}

static void rt_publish(void **state)
{
    for (uint8_t ver = 3; ver <= 5; ver++) {
        for (uint8_t qos = 0; qos <= 2; qos++) {
            mqtt_publish pub = {0};
            pub.qos = qos;
            pub.retain = qos == 1;
            pub.dup = qos == 2;
            pub.id = qos ? 0xFFFF : 0;
            pub.topic = S("sensors/temp/1");
            pub.payload = S("{\"t\":21.5}");
            uint32_t ids[] = {1, 127, 128, MQTT_MAX_SUB_ID};
            if (ver == 5) {
                MQTT_SET(&pub.props, MQTT_P_PAYLOAD_FORMAT);
                pub.props.payload_format = 1;
                MQTT_SET(&pub.props, MQTT_P_MESSAGE_EXPIRY);
                pub.props.message_expiry = 3600;
                MQTT_SET(&pub.props, MQTT_P_TOPIC_ALIAS);
                pub.props.topic_alias = 3;
                MQTT_SET(&pub.props, MQTT_P_RESPONSE_TOPIC);
                pub.props.response_topic = S("reply/1");
                MQTT_SET(&pub.props, MQTT_P_CORRELATION_DATA);
                pub.props.correlation_data = S("\x00\x01");
                pub.props.sub_ids = ids;
                pub.props.n_sub_ids = 4;
                pub.props.extra = (mqtt_span){user_kv, sizeof user_kv};
            }
            thz_buf b = {0};
            assert_int_equal(mqtt_encode_publish(&b, ver, &pub), THZ_OK);
            assert_int_equal(mqtt_publish_size(ver, &pub), b.len);
            mqtt_packet pk;
            assert_int_equal(decode_buf(&b, ver, &pk), THZ_OK);
            const mqtt_publish *d = &pk.u.publish;
            assert_int_equal(d->qos, qos);
            assert_int_equal(d->retain, pub.retain);
            assert_int_equal(d->dup, pub.dup);
            assert_int_equal(d->id, pub.id);
            assert_span(d->topic, "sensors/temp/1");
            assert_span(d->payload, "{\"t\":21.5}");
            if (ver == 5) {
                assert_int_equal(d->props.n_sub_ids, 4);
                assert_int_equal(d->props.sub_id, 1);
                assert_int_equal(d->props.message_expiry, 3600);
                assert_int_equal(d->props.topic_alias, 3);
                assert_span(d->props.response_topic, "reply/1");
                assert_int_equal(d->props.n_user, 1);
            } else {
                assert_int_equal(d->props.have, 0);
            }
            thz_buf_free(&b);
        }
    }
}

static void publish_size_large_payload(void **state)
{
    static uint8_t big[200000];
    mqtt_publish pub = {0};
    pub.topic = S("t");
    pub.payload = (mqtt_span){big, sizeof big};
    thz_buf b = {0};
    assert_int_equal(mqtt_encode_publish(&b, 5, &pub), THZ_OK);
    assert_int_equal(mqtt_publish_size(5, &pub), b.len);
    assert_int_equal(b.len, 1 + 3 + 3 + 1 + sizeof big);
    mqtt_packet pk;
    assert_int_equal(decode_buf(&b, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.publish.payload.n, sizeof big);
    thz_buf_free(&b);
}

static void props_forwardable_filters(void **state)
{
    mqtt_publish pub = {0};
    pub.topic = S("t");
    MQTT_SET(&pub.props, MQTT_P_PAYLOAD_FORMAT);
    pub.props.payload_format = 1;
    MQTT_SET(&pub.props, MQTT_P_MESSAGE_EXPIRY); /* not forwarded verbatim */
    pub.props.message_expiry = 10;
    MQTT_SET(&pub.props, MQTT_P_CONTENT_TYPE);
    pub.props.content_type = S("ct");
    MQTT_SET(&pub.props, MQTT_P_TOPIC_ALIAS); /* not forwarded */
    pub.props.topic_alias = 1;
    uint32_t ids[] = {200};
    pub.props.sub_ids = ids; /* not forwarded */
    pub.props.n_sub_ids = 1;
    pub.props.extra = (mqtt_span){user_kv, sizeof user_kv};
    thz_buf b = {0};
    assert_int_equal(mqtt_encode_publish(&b, 5, &pub), THZ_OK);
    mqtt_packet pk;
    assert_int_equal(decode_buf(&b, 5, &pk), THZ_OK);
    uint8_t out[64];
    size_t n = mqtt_props_forwardable(&pk.u.publish.props, out);
    const uint8_t want[] = {0x01, 0x01, 0x03, 0x00, 0x02, 'c', 't', 0x26,
                            0x00, 0x01, 'k',  0x00, 0x02, 'v', '1'};
    assert_int_equal(n, sizeof want);
    assert_memory_equal(out, want, sizeof want);
    mqtt_props none = {0};
    assert_int_equal(mqtt_props_forwardable(&none, out), 0);
    thz_buf_free(&b);
}

static void rt_acks(void **state)
{
    static const uint8_t types[] = {MQTT_PUBACK, MQTT_PUBREC, MQTT_PUBREL, MQTT_PUBCOMP};
    for (size_t i = 0; i < 4; i++) {
        thz_buf b = {0};
        mqtt_packet pk;
        assert_int_equal(mqtt_encode_ack(&b, 4, types[i], 42, 0x10, NULL), THZ_OK);
        assert_int_equal(b.len, 4);
        assert_int_equal(decode_buf(&b, 4, &pk), THZ_OK);
        assert_int_equal(pk.type, types[i]);
        assert_int_equal(pk.u.ack.id, 42);
        assert_int_equal(pk.u.ack.reason, 0);
        b.len = 0;
        /* v5 success with no properties is the two-byte form */
        assert_int_equal(mqtt_encode_ack(&b, 5, types[i], 43, 0, NULL), THZ_OK);
        assert_int_equal(b.len, 4);
        b.len = 0;
        assert_int_equal(mqtt_encode_ack(&b, 5, types[i], 44, 0x80, NULL), THZ_OK);
        assert_int_equal(b.len, 5);
        assert_int_equal(decode_buf(&b, 5, &pk), THZ_OK);
        assert_int_equal(pk.u.ack.reason, 0x80);
        b.len = 0;
        mqtt_props p = {0};
        MQTT_SET(&p, MQTT_P_REASON_STRING);
        p.reason_string = S("quota");
        p.extra = (mqtt_span){user_kv, sizeof user_kv};
        assert_int_equal(mqtt_encode_ack(&b, 5, types[i], 45, 0x97, &p), THZ_OK);
        assert_int_equal(decode_buf(&b, 5, &pk), THZ_OK);
        assert_int_equal(pk.type, types[i]);
        assert_int_equal(pk.u.ack.id, 45);
        assert_int_equal(pk.u.ack.reason, 0x97);
        assert_span(pk.u.ack.props.reason_string, "quota");
        assert_int_equal(pk.u.ack.props.n_user, 1);
        b.len = 0;
        /* Success with only properties still carries the reason byte. */
        assert_int_equal(mqtt_encode_ack(&b, 5, types[i], 46, 0, &p), THZ_OK);
        assert_int_equal(decode_buf(&b, 5, &pk), THZ_OK);
        assert_int_equal(pk.u.ack.reason, 0);
        assert_int_equal(pk.u.ack.props.n_user, 1);
        thz_buf_free(&b);
    }
}

static void rt_subscribe_unsubscribe(void **state)
{
    const mqtt_span filters[] = {S("a/+/c"), S("#"), S("$share/g/x")};
    const uint8_t opts5[] = {0x00, 0x2E, 0x11};
    const uint8_t opts3[] = {0x00, 0x01, 0x02};
    for (uint8_t ver = 4; ver <= 5; ver++) {
        thz_buf b = {0};
        mqtt_packet pk;
        mqtt_props p = {0};
        uint32_t id[] = {99};
        p.sub_ids = id;
        p.n_sub_ids = 1;
        p.extra = (mqtt_span){user_kv, sizeof user_kv};
        const uint8_t *opts = ver == 5 ? opts5 : opts3;
        assert_int_equal(mqtt_encode_subscribe(&b, ver, 9, filters, opts, 3, &p), THZ_OK);
        assert_int_equal(b.p[0], 0x82);
        assert_int_equal(decode_buf(&b, ver, &pk), THZ_OK);
        assert_int_equal(pk.type, MQTT_SUBSCRIBE);
        assert_int_equal(pk.u.subscribe.id, 9);
        assert_int_equal(pk.u.subscribe.count, 3);
        if (ver == 5) {
            assert_int_equal(pk.u.subscribe.props.sub_id, 99);
            assert_int_equal(pk.u.subscribe.props.n_user, 1);
        }
        mqtt_span it = pk.u.subscribe.list, f;
        uint8_t o;
        for (size_t i = 0; i < 3; i++) {
            assert_true(mqtt_sub_next(&it, &f, &o));
            assert_int_equal(f.n, filters[i].n);
            assert_memory_equal(f.p, filters[i].p, f.n);
            assert_int_equal(o, opts[i]);
        }
        assert_false(mqtt_sub_next(&it, &f, &o));
        b.len = 0;
        p.sub_ids = NULL; /* not allowed in UNSUBSCRIBE */
        assert_int_equal(mqtt_encode_unsubscribe(&b, ver, 10, filters, 3, &p), THZ_OK);
        assert_int_equal(b.p[0], 0xA2);
        assert_int_equal(decode_buf(&b, ver, &pk), THZ_OK);
        assert_int_equal(pk.type, MQTT_UNSUBSCRIBE);
        assert_int_equal(pk.u.subscribe.count, 3);
        it = pk.u.subscribe.list;
        for (size_t i = 0; i < 3; i++) {
            assert_true(mqtt_unsub_next(&it, &f));
            assert_int_equal(f.n, filters[i].n);
        }
        assert_false(mqtt_unsub_next(&it, &f));
        thz_buf_free(&b);
    }
}

static void rt_suback_unsuback(void **state)
{
    const uint8_t codes[] = {0x00, 0x01, 0x80};
    thz_buf b = {0};
    mqtt_packet pk;
    assert_int_equal(mqtt_encode_suback(&b, 4, MQTT_SUBACK, 5, codes, 3, NULL), THZ_OK);
    assert_int_equal(decode_buf(&b, 4, &pk), THZ_OK);
    assert_int_equal(pk.u.suback.id, 5);
    assert_int_equal(pk.u.suback.codes.n, 3);
    assert_memory_equal(pk.u.suback.codes.p, codes, 3);
    b.len = 0;
    assert_int_equal(mqtt_encode_suback(&b, 4, MQTT_UNSUBACK, 6, codes, 3, NULL), THZ_OK);
    assert_int_equal(b.len, 4);
    assert_int_equal(decode_buf(&b, 4, &pk), THZ_OK);
    assert_int_equal(pk.u.suback.codes.n, 0);
    b.len = 0;
    mqtt_props p = {0};
    MQTT_SET(&p, MQTT_P_REASON_STRING);
    p.reason_string = S("r");
    assert_int_equal(mqtt_encode_suback(&b, 5, MQTT_UNSUBACK, 7, codes, 2, &p), THZ_OK);
    assert_int_equal(decode_buf(&b, 5, &pk), THZ_OK);
    assert_int_equal(pk.type, MQTT_UNSUBACK);
    assert_int_equal(pk.u.suback.codes.n, 2);
    assert_span(pk.u.suback.props.reason_string, "r");
    b.len = 0;
    assert_int_equal(mqtt_encode_suback(&b, 5, MQTT_PUBACK, 7, codes, 2, &p), THZ_EINVAL);
    assert_int_equal(b.len, 0);
    thz_buf_free(&b);
}

static void rt_ping_disconnect_auth(void **state)
{
    thz_buf b = {0};
    mqtt_packet pk;
    assert_int_equal(mqtt_encode_ping(&b, MQTT_PINGREQ), THZ_OK);
    assert_int_equal(mqtt_encode_ping(&b, MQTT_PINGRESP), THZ_OK);
    const uint8_t want[] = {0xC0, 0x00, 0xD0, 0x00};
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.p, want, 4);
    assert_int_equal(mqtt_encode_ping(&b, MQTT_CONNECT), THZ_EINVAL);
    b.len = 0;
    assert_int_equal(mqtt_encode_reasoned(&b, 4, MQTT_DISCONNECT, 0x8E, NULL), THZ_OK);
    assert_int_equal(b.len, 2);
    assert_int_equal(mqtt_encode_reasoned(&b, 4, MQTT_AUTH, 0, NULL), THZ_EINVAL);
    b.len = 0;
    assert_int_equal(mqtt_encode_reasoned(&b, 5, MQTT_DISCONNECT, 0, NULL), THZ_OK);
    assert_int_equal(b.len, 2);
    b.len = 0;
    assert_int_equal(mqtt_encode_reasoned(&b, 5, MQTT_DISCONNECT, 0x8E, NULL), THZ_OK);
    assert_int_equal(b.len, 3);
    assert_int_equal(decode_buf(&b, 5, &pk), THZ_OK);
    assert_int_equal(pk.u.reasoned.reason, 0x8E);
    b.len = 0;
    mqtt_props p = {0};
    MQTT_SET(&p, MQTT_P_SERVER_REF);
    p.server_ref = S("elsewhere");
    assert_int_equal(mqtt_encode_reasoned(&b, 5, MQTT_DISCONNECT, 0x9C, &p), THZ_OK);
    assert_int_equal(decode_buf(&b, 5, &pk), THZ_OK);
    assert_span(pk.u.reasoned.props.server_ref, "elsewhere");
    b.len = 0;
    mqtt_props a = {0};
    MQTT_SET(&a, MQTT_P_AUTH_METHOD);
    a.auth_method = S("m");
    MQTT_SET(&a, MQTT_P_AUTH_DATA);
    a.auth_data = S("d");
    assert_int_equal(mqtt_encode_reasoned(&b, 5, MQTT_AUTH, 0x18, &a), THZ_OK);
    assert_int_equal(decode_buf(&b, 5, &pk), THZ_OK);
    assert_int_equal(pk.type, MQTT_AUTH);
    assert_int_equal(pk.u.reasoned.reason, 0x18);
    assert_span(pk.u.reasoned.props.auth_data, "d");
    thz_buf_free(&b);
}

static void encode_decoded_props_is_safe(void **state)
{
    /* Re-encoding a decoded props struct: n_sub_ids is set but sub_ids is
     * NULL, and the user-property bit has no extra bytes. */
    const uint8_t p[] = {0x30, 0x0F, 0x00, 0x01, 'a',  0x09, 0x0B, 0x05, 0x26,
                         0x00, 0x01, 'k',  0x00, 0x01, 'v',  'x',  'y'};
    mqtt_packet pk;
    assert_int_equal(mqtt_decode(p, sizeof p, 5, &pk), THZ_OK);
    thz_buf b = {0};
    assert_int_equal(mqtt_encode_publish(&b, 5, &pk.u.publish), THZ_OK);
    const uint8_t want[] = {0x30, 0x06, 0x00, 0x01, 'a', 0x00, 'x', 'y'};
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.p, want, sizeof want);
    thz_buf_free(&b);
}

static void encode_rejects_unrepresentable(void **state)
{
    static uint8_t long_topic[70000];
    memset(long_topic, 'a', sizeof long_topic);
    mqtt_publish pub = {0};
    pub.topic = (mqtt_span){long_topic, sizeof long_topic};
    thz_buf b = {0};
    assert_int_equal(mqtt_encode_publish(&b, 4, &pub), THZ_EINVAL);
    assert_int_equal(b.len, 0);
    assert_int_equal(mqtt_publish_size(4, &pub), SIZE_MAX);
    pub.topic = S("t");
    uint32_t ids[] = {MQTT_MAX_SUB_ID + 1};
    pub.props.sub_ids = ids;
    pub.props.n_sub_ids = 1;
    assert_int_equal(mqtt_encode_publish(&b, 5, &pub), THZ_EINVAL);
    assert_int_equal(mqtt_encode_publish(&b, 4, &pub), THZ_OK); /* 3.x ignores props */
    b.len = 0;
    mqtt_props p = {0};
    MQTT_SET(&p, MQTT_P_REASON_STRING);
    p.reason_string = (mqtt_span){long_topic, sizeof long_topic};
    assert_int_equal(mqtt_encode_ack(&b, 5, MQTT_PUBACK, 1, 0x80, &p), THZ_EINVAL);
    assert_int_equal(mqtt_encode_ack(&b, 5, MQTT_CONNACK, 1, 0, NULL), THZ_EINVAL);
    assert_int_equal(b.len, 0);
    thz_buf_free(&b);
}

static void reason_mapping(void **state)
{
    assert_int_equal(mqtt_reason_from_err(THZ_OK), 0x00);
    assert_int_equal(mqtt_reason_from_err(THZ_EMALFORMED), 0x81);
    assert_int_equal(mqtt_reason_from_err(THZ_EPROTO), 0x82);
    assert_int_equal(mqtt_reason_from_err(THZ_EUNSUPPORTED), 0x83);
    assert_int_equal(mqtt_reason_from_err(THZ_EVERSION), 0x84);
    assert_int_equal(mqtt_reason_from_err(THZ_EBADID), 0x85);
    assert_int_equal(mqtt_reason_from_err(THZ_EBADAUTH), 0x86);
    assert_int_equal(mqtt_reason_from_err(THZ_EDENIED), 0x87);
    assert_int_equal(mqtt_reason_from_err(THZ_EFILTER), 0x8F);
    assert_int_equal(mqtt_reason_from_err(THZ_ETOPIC), 0x90);
    assert_int_equal(mqtt_reason_from_err(THZ_ETOOBIG), 0x95);
    assert_int_equal(mqtt_reason_from_err(THZ_ERATE), 0x96);
    assert_int_equal(mqtt_reason_from_err(THZ_EQUOTA), 0x97);
    assert_int_equal(mqtt_reason_from_err(THZ_EIO), 0x80);
    assert_int_equal(mqtt_reason_from_err(THZ_ENOMEM), 0x80);

    assert_int_equal(mqtt_v3_connack_code(0x00), 0);
    assert_int_equal(mqtt_v3_connack_code(0x84), 1);
    assert_int_equal(mqtt_v3_connack_code(0x85), 2);
    assert_int_equal(mqtt_v3_connack_code(0x88), 3);
    assert_int_equal(mqtt_v3_connack_code(0x89), 3);
    assert_int_equal(mqtt_v3_connack_code(0x86), 4);
    assert_int_equal(mqtt_v3_connack_code(0x8C), 4);
    assert_int_equal(mqtt_v3_connack_code(0x87), 5);
    assert_int_equal(mqtt_v3_connack_code(0x8A), 5);
    assert_int_equal(mqtt_v3_connack_code(0x80), 3);
    assert_int_equal(mqtt_v3_connack_code(0x97), 3);
    for (uint8_t c = 1; c <= 5; c++) assert_int_equal(mqtt_v3_connack_code(c), c);
}

/* Regression (fuzz_mqtt_packet, UBSan): a 3.1.1 CONNECT decodes with empty
 * properties whose raw span is NULL; forwarding them must not do pointer
 * arithmetic on NULL. */
static void forwardable_of_v311_props(void **state)
{
    static const uint8_t pkt[] = {0x10, 0x0c, 0x00, 0x04, 'M',  'Q',  'T',
                                  'T',  0x04, 0x00, 0x00, 0x00, 0x00, 0x00};
    mqtt_packet p;
    assert_int_equal(mqtt_decode(pkt, sizeof pkt, 0, &p), THZ_OK);
    uint8_t out[8];
    assert_int_equal(mqtt_props_forwardable(&p.u.connect.will_props, out), 0);
    mqtt_props zero = {0};
    assert_int_equal(mqtt_props_forwardable(&zero, out), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(frame_incomplete),
        cmocka_unit_test(frame_varint_boundaries),
        cmocka_unit_test(frame_five_byte_length_malformed),
        cmocka_unit_test(frame_too_big),
        cmocka_unit_test(spec_connect_v311),
        cmocka_unit_test(spec_connect_v31),
        cmocka_unit_test(spec_connect_v5_props),
        cmocka_unit_test(spec_publish_qos1),
        cmocka_unit_test(remaining_length_mismatch),
        cmocka_unit_test(reserved_packet_types),
        cmocka_unit_test(wrong_fixed_flags),
        cmocka_unit_test(ping_and_disconnect_v3_must_be_empty),
        cmocka_unit_test(publish_qos3_malformed),
        cmocka_unit_test(publish_dup_qos0),
        cmocka_unit_test(publish_packet_id_zero),
        cmocka_unit_test(publish_topic_bad_utf8),
        cmocka_unit_test(publish_empty_topic_and_payload),
        cmocka_unit_test(publish_v5_property_rules),
        cmocka_unit_test(publish_multiple_sub_ids),
        cmocka_unit_test(version0_reads_as_v311),
        cmocka_unit_test(connect_unknown_protocol),
        cmocka_unit_test(connect_reserved_flag),
        cmocka_unit_test(connect_will_flags),
        cmocka_unit_test(connect_password_without_username),
        cmocka_unit_test(connect_trailing_and_missing_fields),
        cmocka_unit_test(connect_v5_property_values),
        cmocka_unit_test(connect_v5_auth_data_needs_method),
        cmocka_unit_test(connect_v5_duplicate_property),
        cmocka_unit_test(connect_v5_property_not_allowed),
        cmocka_unit_test(connect_v5_will_properties),
        cmocka_unit_test(connack_flags_reserved),
        cmocka_unit_test(subscribe_empty),
        cmocka_unit_test(subscribe_packet_id_zero),
        cmocka_unit_test(subscribe_options_reserved_bits),
        cmocka_unit_test(subscribe_filter_utf8),
        cmocka_unit_test(subscribe_sub_id_rules),
        cmocka_unit_test(subscribe_iterate),
        cmocka_unit_test(subscribe_iterate_empty_filter),
        cmocka_unit_test(v5_ack_short_forms),
        cmocka_unit_test(v5_disconnect_and_auth_forms),
        cmocka_unit_test(suback_codes),
        cmocka_unit_test(utf8_table),
        cmocka_unit_test(rt_connect_v311_and_v31),
        cmocka_unit_test(rt_connect_v5_all_props),
        cmocka_unit_test(rt_connack),
        cmocka_unit_test(rt_publish),
        cmocka_unit_test(publish_size_large_payload),
        cmocka_unit_test(props_forwardable_filters),
        cmocka_unit_test(rt_acks),
        cmocka_unit_test(rt_subscribe_unsubscribe),
        cmocka_unit_test(rt_suback_unsuback),
        cmocka_unit_test(rt_ping_disconnect_auth),
        cmocka_unit_test(encode_decoded_props_is_safe),
        cmocka_unit_test(encode_rejects_unrepresentable),
        cmocka_unit_test(reason_mapping),
        cmocka_unit_test(forwardable_of_v311_props),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
