/* codec.c - MQTT 3.1, 3.1.1 and 5.0 framing, decoding and encoding.
 *
 * Decoding never allocates: every string and binary field is a span into the
 * caller's bytes. Encoders size the packet first, reserve once, then write. */
#include "mqtt/codec.h"

#include <string.h>

#define TRY(x)                                                                                     \
    do {                                                                                           \
        thz_err rc_ = (x);                                                                         \
        if (rc_) return rc_;                                                                       \
    } while (0)

#define MQTT_MAX_PROP_ID 0x2A
#define BIT64(id)        ((uint64_t)1 << (id))

/* ---- reading ------------------------------------------------------------ */

/* A cursor over validated-as-we-go input; p never passes end. */
typedef struct rd {
    const uint8_t *p;
    const uint8_t *end;
} rd;

static inline size_t rd_left(const rd *r)
{
    return (size_t)(r->end - r->p);
}

static inline thz_err rd_u8(rd *r, uint8_t *v)
{
    if (r->p >= r->end) return THZ_EMALFORMED;
    *v = *r->p++;
    return THZ_OK;
}

static inline thz_err rd_u16(rd *r, uint16_t *v)
{
    if (rd_left(r) < 2) return THZ_EMALFORMED;
    *v = (uint16_t)(r->p[0] << 8 | r->p[1]);
    r->p += 2;
    return THZ_OK;
}

static inline thz_err rd_u32(rd *r, uint32_t *v)
{
    if (rd_left(r) < 4) return THZ_EMALFORMED;
    *v = (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 | (uint32_t)r->p[2] << 8 | r->p[3];
    r->p += 4;
    return THZ_OK;
}

/* Variable Byte Integer (section 1.5.5): at most four bytes. */
static inline thz_err rd_varint(rd *r, uint32_t *v)
{
    uint32_t val = 0;
    for (int i = 0; i < 4; i++) {
        if (r->p >= r->end) return THZ_EMALFORMED;
        uint8_t c = *r->p++;
        val |= (uint32_t)(c & 0x7F) << (7 * i);
        if (!(c & 0x80)) {
            *v = val;
            return THZ_OK;
        }
    }
    return THZ_EMALFORMED;
}

/* Two-byte length then that many bytes. */
static inline thz_err rd_bin(rd *r, mqtt_span *s)
{
    uint16_t n;
    TRY(rd_u16(r, &n));
    if (rd_left(r) < n) return THZ_EMALFORMED;
    s->p = r->p;
    s->n = n;
    r->p += n;
    return THZ_OK;
}

static inline thz_err rd_str(rd *r, mqtt_span *s)
{
    TRY(rd_bin(r, s));
    return mqtt_utf8_valid(s->p, s->n) ? THZ_OK : THZ_EMALFORMED;
}

/* ---- UTF-8 -------------------------------------------------------------- */

#define ONES64 0x0101010101010101ull
#define HIGH64 0x8080808080808080ull

bool mqtt_utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        /* ASCII fast path: eight bytes at a time while none has its high bit
         * set and none is zero (the classic has-zero-byte test). */
        while (i + 8 <= n) {
            uint64_t v;
            memcpy(&v, p + i, 8);
            if ((v | ((v - ONES64) & ~v)) & HIGH64) break;
            i += 8;
        }
        if (i >= n) break;
        uint8_t c = p[i];
        if (c < 0x80) {
            if (c == 0) return false;
            i++;
            continue;
        }
        if (c < 0xC2) return false; /* stray continuation or overlong 2-byte */
        if (c < 0xE0) {
            if (i + 1 >= n || (p[i + 1] & 0xC0) != 0x80) return false;
            i += 2;
            continue;
        }
        if (c < 0xF0) {
            if (i + 2 >= n) return false;
            uint8_t c1 = p[i + 1];
            if ((c1 & 0xC0) != 0x80 || (p[i + 2] & 0xC0) != 0x80) return false;
            if (c == 0xE0 && c1 < 0xA0) return false;  /* overlong */
            if (c == 0xED && c1 >= 0xA0) return false; /* U+D800..U+DFFF */
            i += 3;
            continue;
        }
        if (c < 0xF5) {
            if (i + 3 >= n) return false;
            uint8_t c1 = p[i + 1];
            if ((c1 & 0xC0) != 0x80 || (p[i + 2] & 0xC0) != 0x80 || (p[i + 3] & 0xC0) != 0x80)
                return false;
            if (c == 0xF0 && c1 < 0x90) return false;  /* overlong */
            if (c == 0xF4 && c1 >= 0x90) return false; /* above U+10FFFF */
            i += 4;
            continue;
        }
        return false;
    }
    return true;
}

/* ---- properties --------------------------------------------------------- */

enum ptype { PT_NONE, PT_BYTE, PT_U16, PT_U32, PT_VARINT, PT_STR, PT_BIN, PT_PAIR };

/* Where a property may appear: bit t for packet type t, bit 0 for the will
 * properties of a CONNECT (table in section 2.2.2.2). */
#define WILL   (1u << 0)
#define T(t)   (1u << MQTT_##t)
#define ACKS   (T(PUBACK) | T(PUBREC) | T(PUBREL) | T(PUBCOMP))
#define ALLPKT 0xFFFEu

#define OFF(f) ((uint16_t)offsetof(mqtt_props, f))

static const struct pinfo {
    uint8_t type;
    uint16_t allow;
    uint16_t off; /* of the typed field; unused for PT_VARINT and PT_PAIR */
} pinfo[MQTT_MAX_PROP_ID + 1] = {
    [MQTT_P_PAYLOAD_FORMAT] = {PT_BYTE, T(PUBLISH) | WILL, OFF(payload_format)},
    [MQTT_P_MESSAGE_EXPIRY] = {PT_U32, T(PUBLISH) | WILL, OFF(message_expiry)},
    [MQTT_P_CONTENT_TYPE] = {PT_STR, T(PUBLISH) | WILL, OFF(content_type)},
    [MQTT_P_RESPONSE_TOPIC] = {PT_STR, T(PUBLISH) | WILL, OFF(response_topic)},
    [MQTT_P_CORRELATION_DATA] = {PT_BIN, T(PUBLISH) | WILL, OFF(correlation_data)},
    [MQTT_P_SUB_ID] = {PT_VARINT, T(PUBLISH) | T(SUBSCRIBE), 0},
    [MQTT_P_SESSION_EXPIRY] = {PT_U32, T(CONNECT) | T(CONNACK) | T(DISCONNECT),
                               OFF(session_expiry)},
    [MQTT_P_ASSIGNED_CLIENT_ID] = {PT_STR, T(CONNACK), OFF(assigned_client_id)},
    [MQTT_P_SERVER_KEEP_ALIVE] = {PT_U16, T(CONNACK), OFF(server_keep_alive)},
    [MQTT_P_AUTH_METHOD] = {PT_STR, T(CONNECT) | T(CONNACK) | T(AUTH), OFF(auth_method)},
    [MQTT_P_AUTH_DATA] = {PT_BIN, T(CONNECT) | T(CONNACK) | T(AUTH), OFF(auth_data)},
    [MQTT_P_REQ_PROBLEM_INFO] = {PT_BYTE, T(CONNECT), OFF(req_problem_info)},
    [MQTT_P_WILL_DELAY] = {PT_U32, WILL, OFF(will_delay)},
    [MQTT_P_REQ_RESPONSE_INFO] = {PT_BYTE, T(CONNECT), OFF(req_response_info)},
    [MQTT_P_RESPONSE_INFO] = {PT_STR, T(CONNACK), OFF(response_info)},
    [MQTT_P_SERVER_REF] = {PT_STR, T(CONNACK) | T(DISCONNECT), OFF(server_ref)},
    [MQTT_P_REASON_STRING] = {PT_STR,
                              T(CONNACK) | ACKS | T(SUBACK) | T(UNSUBACK) | T(DISCONNECT) | T(AUTH),
                              OFF(reason_string)},
    [MQTT_P_RECEIVE_MAX] = {PT_U16, T(CONNECT) | T(CONNACK), OFF(receive_max)},
    [MQTT_P_TOPIC_ALIAS_MAX] = {PT_U16, T(CONNECT) | T(CONNACK), OFF(topic_alias_max)},
    [MQTT_P_TOPIC_ALIAS] = {PT_U16, T(PUBLISH), OFF(topic_alias)},
    [MQTT_P_MAX_QOS] = {PT_BYTE, T(CONNACK), OFF(max_qos)},
    [MQTT_P_RETAIN_AVAILABLE] = {PT_BYTE, T(CONNACK), OFF(retain_available)},
    [MQTT_P_USER_PROPERTY] = {PT_PAIR, ALLPKT | WILL, 0},
    [MQTT_P_MAX_PACKET_SIZE] = {PT_U32, T(CONNECT) | T(CONNACK), OFF(max_packet_size)},
    [MQTT_P_WILDCARD_SUB_AVAILABLE] = {PT_BYTE, T(CONNACK), OFF(wildcard_sub_available)},
    [MQTT_P_SUB_ID_AVAILABLE] = {PT_BYTE, T(CONNACK), OFF(sub_id_available)},
    [MQTT_P_SHARED_SUB_AVAILABLE] = {PT_BYTE, T(CONNACK), OFF(shared_sub_available)},
};

/* Reads a property block (length varint then properties) for packet type
 * `ptype` (0: will properties). Always leaves *pr initialized. */
static thz_err props_decode(rd *r, unsigned ptype, mqtt_props *pr)
{
    memset(pr, 0, sizeof *pr);
    uint32_t len;
    TRY(rd_varint(r, &len));
    if (len > rd_left(r)) return THZ_EMALFORMED;
    rd q = {r->p, r->p + len};
    pr->raw.p = r->p;
    pr->raw.n = len;
    r->p += len;

    const unsigned allow_bit = 1u << ptype;
    uint8_t *base = (uint8_t *)pr;
    while (q.p < q.end) {
        uint8_t id = *q.p++;
        /* Identifiers are Variable Byte Integers that all fit one byte today;
         * a multi-byte one is unknown (or non-minimal), hence malformed. */
        if (id > MQTT_MAX_PROP_ID || !(pinfo[id].allow & allow_bit)) return THZ_EMALFORMED;
        const struct pinfo *pi = &pinfo[id];
        if ((pr->have & BIT64(id)) && id != MQTT_P_USER_PROPERTY &&
            !(id == MQTT_P_SUB_ID && ptype == MQTT_PUBLISH))
            return THZ_EPROTO;
        pr->have |= BIT64(id);
        switch (pi->type) {
        case PT_BYTE: {
            uint8_t v;
            TRY(rd_u8(&q, &v));
            /* Every byte property is a 0/1 flag except Maximum QoS, which
             * is also 0 or 1 (a server never advertises 2). */
            if (v > 1) return THZ_EPROTO;
            base[pi->off] = v;
            break;
        }
        case PT_U16: {
            uint16_t v;
            TRY(rd_u16(&q, &v));
            /* Topic Alias 0 decodes: the broker answers it with 0x94 (MQTT-3.3.2-8). */
            if (v == 0 && id == MQTT_P_RECEIVE_MAX) return THZ_EPROTO;
            memcpy(base + pi->off, &v, sizeof v);
            break;
        }
        case PT_U32: {
            uint32_t v;
            TRY(rd_u32(&q, &v));
            if (v == 0 && id == MQTT_P_MAX_PACKET_SIZE) return THZ_EPROTO;
            memcpy(base + pi->off, &v, sizeof v);
            break;
        }
        case PT_VARINT: { /* only SUB_ID */
            uint32_t v;
            TRY(rd_varint(&q, &v));
            if (v == 0) return THZ_EPROTO;
            if (pr->n_sub_ids++ == 0) pr->sub_id = v;
            break;
        }
        case PT_STR: {
            mqtt_span s;
            TRY(rd_str(&q, &s));
            memcpy(base + pi->off, &s, sizeof s);
            break;
        }
        case PT_BIN: {
            mqtt_span s;
            TRY(rd_bin(&q, &s));
            memcpy(base + pi->off, &s, sizeof s);
            break;
        }
        case PT_PAIR: {
            mqtt_span k, v;
            TRY(rd_str(&q, &k));
            TRY(rd_str(&q, &v));
            pr->n_user++;
            break;
        }
        default: return THZ_EMALFORMED;
        }
    }
    if (MQTT_HAS(pr, MQTT_P_AUTH_DATA) && !MQTT_HAS(pr, MQTT_P_AUTH_METHOD)) return THZ_EPROTO;
    return THZ_OK;
}

static void props_none(mqtt_props *pr, const uint8_t *at)
{
    memset(pr, 0, sizeof *pr);
    pr->raw.p = at;
}

size_t mqtt_props_forwardable(const mqtt_props *props, uint8_t *out)
{
    /* raw was validated by mqtt_decode; the bounds checks below only keep a
     * caller's hand-built props from reading past the block. */
    if (!props->raw.p) return 0;
    const uint8_t *p = props->raw.p, *end = p + props->raw.n;
    size_t w = 0;
    while (p < end) {
        uint8_t id = *p;
        const uint8_t *q = p + 1;
        size_t need;
        if (id > MQTT_MAX_PROP_ID) break;
        switch (pinfo[id].type) {
        case PT_BYTE: need = 1; break;
        case PT_U16: need = 2; break;
        case PT_U32: need = 4; break;
        case PT_VARINT:
            need = 0;
            do {
                if (q + need >= end) return w;
            } while ((q[need++] & 0x80) && need < 4);
            break;
        case PT_STR:
        case PT_BIN:
            if (end - q < 2) return w;
            need = 2 + (size_t)(q[0] << 8 | q[1]);
            break;
        case PT_PAIR: {
            if (end - q < 2) return w;
            size_t k = 2 + (size_t)(q[0] << 8 | q[1]);
            if ((size_t)(end - q) < k + 2) return w;
            need = k + 2 + (size_t)(q[k] << 8 | q[k + 1]);
            break;
        }
        default: return w;
        }
        if ((size_t)(end - q) < need) break;
        const uint8_t *next = q + need;
        if (id == MQTT_P_PAYLOAD_FORMAT || id == MQTT_P_CONTENT_TYPE ||
            id == MQTT_P_RESPONSE_TOPIC || id == MQTT_P_CORRELATION_DATA ||
            id == MQTT_P_USER_PROPERTY) {
            memcpy(out + w, p, (size_t)(next - p));
            w += (size_t)(next - p);
        }
        p = next;
    }
    return w;
}

/* ---- decoding ----------------------------------------------------------- */

thz_err mqtt_frame(const uint8_t *p, size_t n, uint32_t max_size, size_t *pkt_len)
{
    uint32_t rl = 0;
    size_t i = 1;
    for (;; i++) {
        if (i >= n) return THZ_EAGAIN;
        uint8_t c = p[i];
        rl |= (uint32_t)(c & 0x7F) << (7 * (i - 1));
        if (!(c & 0x80)) break;
        if (i == 4) return THZ_EMALFORMED;
    }
    size_t total = i + 1 + (size_t)rl;
    *pkt_len = total;
    if (max_size && total > max_size) return THZ_ETOOBIG;
    if (n < total) return THZ_EAGAIN;
    return THZ_OK;
}

static thz_err decode_connect(rd *r, mqtt_connect *c)
{
    memset(c, 0, sizeof *c);
    mqtt_span name;
    uint8_t level, flags;
    TRY(rd_bin(r, &name));
    TRY(rd_u8(r, &level));
    c->version = level;
    if (name.n == 4 && memcmp(name.p, "MQTT", 4) == 0) {
        if (level != MQTT_V311 && level != MQTT_V5) return THZ_EVERSION;
    } else if (name.n == 6 && memcmp(name.p, "MQIsdp", 6) == 0) {
        if (level != MQTT_V31) return THZ_EVERSION;
    } else {
        return THZ_EVERSION;
    }
    const bool v5 = level == MQTT_V5;
    TRY(rd_u8(r, &flags));
    TRY(rd_u16(r, &c->keep_alive));
    if (flags & 0x01) return THZ_EMALFORMED;
    c->clean_start = flags & 0x02;
    c->will_flag = flags & 0x04;
    c->will_qos = (flags >> 3) & 3;
    c->will_retain = flags & 0x20;
    c->has_password = flags & 0x40;
    c->has_username = flags & 0x80;
    if (c->will_qos == 3) return THZ_EMALFORMED;
    if (!c->will_flag && (c->will_qos || c->will_retain)) return THZ_EMALFORMED;
    /* 3.1.1 [MQTT-3.1.2-22]; MQTT 5 allows a password alone and MQTT 3.1 is
     * silent, so only 3.1.1 rejects it. */
    if (level == MQTT_V311 && c->has_password && !c->has_username) return THZ_EMALFORMED;

    if (v5)
        TRY(props_decode(r, MQTT_CONNECT, &c->props));
    else
        props_none(&c->props, r->p);
    TRY(rd_str(r, &c->client_id));
    if (c->will_flag) {
        if (v5)
            TRY(props_decode(r, 0, &c->will_props));
        else
            props_none(&c->will_props, r->p);
        TRY(rd_str(r, &c->will_topic));
        TRY(rd_bin(r, &c->will_payload));
    } else {
        props_none(&c->will_props, NULL);
    }
    if (c->has_username) TRY(rd_str(r, &c->username));
    if (c->has_password) TRY(rd_bin(r, &c->password));
    return rd_left(r) ? THZ_EMALFORMED : THZ_OK;
}

static thz_err decode_connack(rd *r, bool v5, mqtt_connack *c)
{
    uint8_t flags;
    TRY(rd_u8(r, &flags));
    TRY(rd_u8(r, &c->reason));
    if (flags & 0xFE) return THZ_EMALFORMED;
    c->session_present = flags & 1;
    /* A v5 client may get a 3.1.1-style two-byte CONNACK from a server that
     * refuses the version; read it as having no properties. */
    if (v5 && rd_left(r))
        TRY(props_decode(r, MQTT_CONNACK, &c->props));
    else
        props_none(&c->props, r->p);
    return rd_left(r) ? THZ_EMALFORMED : THZ_OK;
}

static thz_err decode_publish(rd *r, uint8_t flags, bool v5, mqtt_publish *pub)
{
    pub->retain = flags & 1;
    pub->qos = (flags >> 1) & 3;
    pub->dup = flags & 8;
    if (pub->qos == 3) return THZ_EMALFORMED;
    /* [MQTT-3.3.1-2]: DUP must be 0 at QoS 0. Not a reserved bit, so a
     * protocol violation rather than a wire-format one. */
    if (pub->dup && pub->qos == 0) return THZ_EPROTO;
    TRY(rd_str(r, &pub->topic));
    pub->id = 0;
    if (pub->qos) {
        TRY(rd_u16(r, &pub->id));
        if (pub->id == 0) return THZ_EPROTO;
    }
    if (v5)
        TRY(props_decode(r, MQTT_PUBLISH, &pub->props));
    else
        props_none(&pub->props, r->p);
    pub->payload.p = r->p;
    pub->payload.n = (uint32_t)rd_left(r);
    return THZ_OK;
}

static thz_err decode_ack(rd *r, uint8_t type, bool v5, mqtt_ack *a)
{
    TRY(rd_u16(r, &a->id));
    if (a->id == 0) return THZ_EPROTO;
    a->reason = 0;
    if (v5 && rd_left(r)) {
        TRY(rd_u8(r, &a->reason));
        if (rd_left(r)) {
            TRY(props_decode(r, type, &a->props));
            return rd_left(r) ? THZ_EMALFORMED : THZ_OK;
        }
    }
    props_none(&a->props, r->p);
    return rd_left(r) ? THZ_EMALFORMED : THZ_OK;
}

static thz_err decode_subscribe(rd *r, uint8_t type, uint8_t ver, mqtt_subscribe *s)
{
    TRY(rd_u16(r, &s->id));
    if (s->id == 0) return THZ_EPROTO;
    if (ver == MQTT_V5)
        TRY(props_decode(r, type, &s->props));
    else
        props_none(&s->props, r->p);
    s->list.p = r->p;
    s->list.n = (uint32_t)rd_left(r);
    s->count = 0;
    const uint8_t bad_opts = ver == MQTT_V5 ? 0xC0 : 0xFC;
    while (rd_left(r)) {
        mqtt_span f;
        TRY(rd_str(r, &f));
        if (type == MQTT_SUBSCRIBE) {
            uint8_t o;
            TRY(rd_u8(r, &o));
            if ((o & bad_opts) || MQTT_SUBOPT_QOS(o) == 3) return THZ_EMALFORMED;
            if (MQTT_SUBOPT_RETAIN_HANDLING(o) == 3) return THZ_EPROTO;
        }
        s->count++;
    }
    /* [MQTT-3.8.3-3], [MQTT-3.10.3-2]: at least one entry. */
    return s->count ? THZ_OK : THZ_EPROTO;
}

static thz_err decode_suback(rd *r, uint8_t type, bool v5, mqtt_suback *s)
{
    TRY(rd_u16(r, &s->id));
    if (s->id == 0) return THZ_EPROTO;
    if (v5)
        TRY(props_decode(r, type, &s->props));
    else
        props_none(&s->props, r->p);
    s->codes.p = r->p;
    s->codes.n = (uint32_t)rd_left(r);
    if (type == MQTT_UNSUBACK && !v5) return s->codes.n ? THZ_EMALFORMED : THZ_OK;
    return s->codes.n ? THZ_OK : THZ_EPROTO;
}

/* DISCONNECT and AUTH: remaining length 0 means reason 0, 1 means no
 * properties (sections 3.14.2.1 and 3.15.2.1). */
static thz_err decode_reasoned(rd *r, uint8_t type, bool v5, mqtt_reasoned *d)
{
    d->reason = 0;
    if (v5 && rd_left(r)) {
        TRY(rd_u8(r, &d->reason));
        if (rd_left(r)) {
            TRY(props_decode(r, type, &d->props));
            return rd_left(r) ? THZ_EMALFORMED : THZ_OK;
        }
    }
    props_none(&d->props, r->p);
    return rd_left(r) ? THZ_EMALFORMED : THZ_OK;
}

/* Required low nibble per packet type; 0xFF: PUBLISH, checked separately. */
static const uint8_t fixed_flags[16] = {
    [MQTT_PUBLISH] = 0xFF,
    [MQTT_PUBREL] = 2,
    [MQTT_SUBSCRIBE] = 2,
    [MQTT_UNSUBSCRIBE] = 2,
};

thz_err mqtt_decode(const uint8_t *p, size_t n, uint8_t version, mqtt_packet *out)
{
    if (n < 2) return THZ_EMALFORMED;
    const uint8_t type = p[0] >> 4, flags = p[0] & 0x0F;
    out->type = type;
    out->flags = flags;
    rd r = {p + 1, p + n};
    uint32_t rl;
    TRY(rd_varint(&r, &rl));
    if (rl != rd_left(&r)) return THZ_EMALFORMED;
    if (fixed_flags[type] != 0xFF && flags != fixed_flags[type]) return THZ_EMALFORMED;

    /* Before CONNECT everything but CONNECT reads as 3.1.1. */
    const uint8_t ver = version == MQTT_V5 || version == MQTT_V31 ? version : MQTT_V311;
    const bool v5 = ver == MQTT_V5;
    switch (type) {
    case MQTT_CONNECT: return decode_connect(&r, &out->u.connect);
    case MQTT_CONNACK: return decode_connack(&r, v5, &out->u.connack);
    case MQTT_PUBLISH: return decode_publish(&r, flags, v5, &out->u.publish);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP: return decode_ack(&r, type, v5, &out->u.ack);
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE: return decode_subscribe(&r, type, ver, &out->u.subscribe);
    case MQTT_SUBACK:
    case MQTT_UNSUBACK: return decode_suback(&r, type, v5, &out->u.suback);
    case MQTT_PINGREQ:
    case MQTT_PINGRESP: return rl ? THZ_EMALFORMED : THZ_OK;
    case MQTT_DISCONNECT: return decode_reasoned(&r, type, v5, &out->u.reasoned);
    case MQTT_AUTH:
        if (!v5) return THZ_EMALFORMED; /* type 15 is reserved before 5.0 */
        return decode_reasoned(&r, type, v5, &out->u.reasoned);
    default: return THZ_EMALFORMED; /* type 0 is reserved */
    }
}

bool mqtt_sub_next(mqtt_span *it, mqtt_span *filter, uint8_t *options)
{
    if (it->n < 3) return false;
    uint32_t len = (uint32_t)(it->p[0] << 8 | it->p[1]);
    if (it->n < 3 + len) return false;
    filter->p = it->p + 2;
    filter->n = len;
    *options = it->p[2 + len];
    it->p += 3 + len;
    it->n -= 3 + len;
    return true;
}

bool mqtt_unsub_next(mqtt_span *it, mqtt_span *filter)
{
    if (it->n < 2) return false;
    uint32_t len = (uint32_t)(it->p[0] << 8 | it->p[1]);
    if (it->n < 2 + len) return false;
    filter->p = it->p + 2;
    filter->n = len;
    it->p += 2 + len;
    it->n -= 2 + len;
    return true;
}

/* ---- encoding ----------------------------------------------------------- */

/* Encoders compute sizes into size_t with this marker for "cannot be
 * encoded"; every sum saturates towards it. */
#define BAD_SIZE SIZE_MAX

static inline size_t varint_size(uint32_t v)
{
    return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

static inline uint8_t *put_u8(uint8_t *w, uint8_t v)
{
    *w = v;
    return w + 1;
}

static inline uint8_t *put_u16(uint8_t *w, uint16_t v)
{
    w[0] = (uint8_t)(v >> 8);
    w[1] = (uint8_t)v;
    return w + 2;
}

static inline uint8_t *put_u32(uint8_t *w, uint32_t v)
{
    w[0] = (uint8_t)(v >> 24);
    w[1] = (uint8_t)(v >> 16);
    w[2] = (uint8_t)(v >> 8);
    w[3] = (uint8_t)v;
    return w + 4;
}

static inline uint8_t *put_varint(uint8_t *w, uint32_t v)
{
    do {
        uint8_t c = v & 0x7F;
        v >>= 7;
        *w++ = v ? (uint8_t)(c | 0x80) : c;
    } while (v);
    return w;
}

static inline uint8_t *put_bin(uint8_t *w, mqtt_span s)
{
    w = put_u16(w, (uint16_t)s.n);
    if (s.n) memcpy(w, s.p, s.n);
    return w + s.n;
}

static inline uint8_t *put_raw(uint8_t *w, mqtt_span s)
{
    if (s.n) memcpy(w, s.p, s.n);
    return w + s.n;
}

/* Size of a length-prefixed field, BAD_SIZE if it does not fit 16 bits. */
static inline size_t bin_size(mqtt_span s)
{
    return s.n > 0xFFFF ? BAD_SIZE : 2 + (size_t)s.n;
}

static inline size_t add_size(size_t a, size_t b)
{
    return a == BAD_SIZE || b == BAD_SIZE ? BAD_SIZE : a + b;
}

#define TYPED_MASK (~(BIT64(MQTT_P_USER_PROPERTY) | BIT64(MQTT_P_SUB_ID) | 1u))

/* Size of the property block without its length prefix; BAD_SIZE when some
 * field cannot be encoded. */
static size_t props_size(const mqtt_props *pr)
{
    if (!pr) return 0;
    size_t n = 0;
    const uint8_t *base = (const uint8_t *)pr;
    /* Set bits in ascending order are the properties in identifier order. */
    for (uint64_t m = pr->have & TYPED_MASK; m; m &= m - 1) {
        unsigned id = (unsigned)__builtin_ctzll(m);
        if (id > MQTT_MAX_PROP_ID || pinfo[id].type == PT_NONE) continue;
        switch (pinfo[id].type) {
        case PT_BYTE: n += 2; break;
        case PT_U16: n += 3; break;
        case PT_U32: n += 5; break;
        default: {
            mqtt_span s;
            memcpy(&s, base + pinfo[id].off, sizeof s);
            n = add_size(n, add_size(1, bin_size(s)));
        }
        }
    }
    if (pr->sub_ids) {
        for (uint32_t i = 0; i < pr->n_sub_ids; i++) {
            if (pr->sub_ids[i] > MQTT_MAX_SUB_ID) return BAD_SIZE;
            n = add_size(n, 1 + varint_size(pr->sub_ids[i]));
        }
    }
    n = add_size(n, pr->extra.n);
    return n > MQTT_MAX_REMAINING ? BAD_SIZE : n;
}

/* Writes the property block of size `n` (from props_size) without prefix. */
static uint8_t *put_props(uint8_t *w, const mqtt_props *pr)
{
    if (!pr) return w;
    const uint8_t *base = (const uint8_t *)pr;
    for (uint64_t m = pr->have & TYPED_MASK; m; m &= m - 1) {
        unsigned id = (unsigned)__builtin_ctzll(m);
        if (id > MQTT_MAX_PROP_ID || pinfo[id].type == PT_NONE) continue;
        const uint8_t *f = base + pinfo[id].off;
        *w++ = (uint8_t)id;
        switch (pinfo[id].type) {
        case PT_BYTE: w = put_u8(w, *f); break;
        case PT_U16: {
            uint16_t v;
            memcpy(&v, f, sizeof v);
            w = put_u16(w, v);
            break;
        }
        case PT_U32: {
            uint32_t v;
            memcpy(&v, f, sizeof v);
            w = put_u32(w, v);
            break;
        }
        default: {
            mqtt_span s;
            memcpy(&s, f, sizeof s);
            w = put_bin(w, s);
        }
        }
    }
    if (pr->sub_ids) {
        for (uint32_t i = 0; i < pr->n_sub_ids; i++) {
            *w++ = MQTT_P_SUB_ID;
            w = put_varint(w, pr->sub_ids[i]);
        }
    }
    return put_raw(w, pr->extra);
}

/* Size of a property block with its length prefix. */
static inline size_t props_block_size(size_t body)
{
    return body == BAD_SIZE ? BAD_SIZE : varint_size((uint32_t)body) + body;
}

/* Reserves room for a packet of remaining length `rl` and writes its fixed
 * header; *w is where the variable header goes. */
static thz_err begin(thz_buf *b, uint8_t byte0, size_t rl, uint8_t **w)
{
    if (rl == BAD_SIZE || rl > MQTT_MAX_REMAINING) return THZ_EINVAL;
    size_t total = 1 + varint_size((uint32_t)rl) + rl;
    TRY(thz_buf_reserve(b, total));
    uint8_t *p = b->p + b->len;
    *p++ = byte0;
    *w = put_varint(p, (uint32_t)rl);
    return THZ_OK;
}

/* Commits what was written since begin(). */
static inline thz_err finish(thz_buf *b, uint8_t *w)
{
    b->len = (size_t)(w - b->p);
    return THZ_OK;
}

static inline uint8_t *put_prop_block(uint8_t *w, const mqtt_props *pr, size_t body)
{
    w = put_varint(w, (uint32_t)body);
    return put_props(w, pr);
}

thz_err mqtt_encode_connect(thz_buf *b, const mqtt_connect *c)
{
    const bool v5 = c->version == MQTT_V5;
    const bool v31 = c->version == MQTT_V31;
    size_t pb = 0, wpb = 0;
    size_t rl = (v31 ? 8 : 6) + 1 + 1 + 2; /* name, level, flags, keep alive */
    if (v5) {
        pb = props_size(&c->props);
        rl = add_size(rl, props_block_size(pb));
    }
    rl = add_size(rl, bin_size(c->client_id));
    if (c->will_flag) {
        if (v5) {
            wpb = props_size(&c->will_props);
            rl = add_size(rl, props_block_size(wpb));
        }
        rl = add_size(rl, bin_size(c->will_topic));
        rl = add_size(rl, bin_size(c->will_payload));
    }
    if (c->has_username) rl = add_size(rl, bin_size(c->username));
    if (c->has_password) rl = add_size(rl, bin_size(c->password));

    uint8_t *w;
    TRY(begin(b, MQTT_CONNECT << 4, rl, &w));
    if (v31) {
        w = put_u16(w, 6);
        memcpy(w, "MQIsdp", 6);
        w += 6;
    } else {
        w = put_u16(w, 4);
        memcpy(w, "MQTT", 4);
        w += 4;
    }
    *w++ = c->version;
    uint8_t flags = 0;
    if (c->clean_start) flags |= 0x02;
    if (c->will_flag) {
        flags |= 0x04 | (uint8_t)((c->will_qos & 3) << 3);
        if (c->will_retain) flags |= 0x20;
    }
    if (c->has_password) flags |= 0x40;
    if (c->has_username) flags |= 0x80;
    *w++ = flags;
    w = put_u16(w, c->keep_alive);
    if (v5) w = put_prop_block(w, &c->props, pb);
    w = put_bin(w, c->client_id);
    if (c->will_flag) {
        if (v5) w = put_prop_block(w, &c->will_props, wpb);
        w = put_bin(w, c->will_topic);
        w = put_bin(w, c->will_payload);
    }
    if (c->has_username) w = put_bin(w, c->username);
    if (c->has_password) w = put_bin(w, c->password);
    return finish(b, w);
}

thz_err mqtt_encode_connack(thz_buf *b, uint8_t version, bool session_present, uint8_t reason,
                            const mqtt_props *props)
{
    const bool v5 = version == MQTT_V5;
    size_t pb = v5 ? props_size(props) : 0;
    size_t rl = v5 ? add_size(2, props_block_size(pb)) : 2;
    uint8_t *w;
    TRY(begin(b, MQTT_CONNACK << 4, rl, &w));
    *w++ = session_present ? 1 : 0;
    *w++ = v5 ? reason : mqtt_v3_connack_code(reason);
    if (v5) w = put_prop_block(w, props, pb);
    return finish(b, w);
}

/* Remaining length of a PUBLISH, BAD_SIZE if it cannot be encoded. */
static size_t publish_rl(uint8_t version, const mqtt_publish *pub, size_t *pb)
{
    size_t rl = bin_size(pub->topic);
    if (pub->qos) rl = add_size(rl, 2);
    if (version == MQTT_V5) {
        *pb = props_size(&pub->props);
        rl = add_size(rl, props_block_size(*pb));
    }
    rl = add_size(rl, pub->payload.n);
    return rl == BAD_SIZE || rl > MQTT_MAX_REMAINING ? BAD_SIZE : rl;
}

size_t mqtt_publish_size(uint8_t version, const mqtt_publish *pub)
{
    size_t pb = 0;
    size_t rl = publish_rl(version, pub, &pb);
    if (rl == BAD_SIZE) return SIZE_MAX;
    return 1 + varint_size((uint32_t)rl) + rl;
}

thz_err mqtt_encode_publish(thz_buf *b, uint8_t version, const mqtt_publish *pub)
{
    size_t pb = 0;
    size_t rl = publish_rl(version, pub, &pb);
    uint8_t byte0 = (uint8_t)(MQTT_PUBLISH << 4 | (pub->qos & 3) << 1);
    if (pub->dup) byte0 |= 0x08;
    if (pub->retain) byte0 |= 0x01;
    uint8_t *w;
    TRY(begin(b, byte0, rl, &w));
    w = put_bin(w, pub->topic);
    if (pub->qos) w = put_u16(w, pub->id);
    if (version == MQTT_V5) w = put_prop_block(w, &pub->props, pb);
    w = put_raw(w, pub->payload);
    return finish(b, w);
}

/* First byte of a packet type with its mandatory flags. */
static inline uint8_t byte0_of(uint8_t type)
{
    uint8_t f = fixed_flags[type & 15];
    return (uint8_t)(type << 4 | (f == 0xFF ? 0 : f));
}

thz_err mqtt_encode_ack(thz_buf *b, uint8_t version, uint8_t type, uint16_t id, uint8_t reason,
                        const mqtt_props *props)
{
    if (type < MQTT_PUBACK || type > MQTT_PUBCOMP) return THZ_EINVAL;
    size_t pb = 0, rl = 2;
    if (version == MQTT_V5) {
        pb = props_size(props);
        if (pb) /* 3.4.2.2: property length may go when there are none */
            rl = add_size(3, props_block_size(pb));
        else if (reason)
            rl = 3;
    }
    uint8_t *w;
    TRY(begin(b, byte0_of(type), rl, &w));
    w = put_u16(w, id);
    if (rl > 2) *w++ = reason;
    if (rl > 3) w = put_prop_block(w, props, pb);
    return finish(b, w);
}

thz_err mqtt_encode_subscribe(thz_buf *b, uint8_t version, uint16_t id, const mqtt_span *filters,
                              const uint8_t *options, size_t count, const mqtt_props *props)
{
    const bool v5 = version == MQTT_V5;
    size_t pb = v5 ? props_size(props) : 0;
    size_t rl = v5 ? add_size(2, props_block_size(pb)) : 2;
    for (size_t i = 0; i < count; i++) rl = add_size(rl, add_size(bin_size(filters[i]), 1));
    uint8_t *w;
    TRY(begin(b, byte0_of(MQTT_SUBSCRIBE), rl, &w));
    w = put_u16(w, id);
    if (v5) w = put_prop_block(w, props, pb);
    for (size_t i = 0; i < count; i++) {
        w = put_bin(w, filters[i]);
        *w++ = options[i];
    }
    return finish(b, w);
}

thz_err mqtt_encode_unsubscribe(thz_buf *b, uint8_t version, uint16_t id, const mqtt_span *filters,
                                size_t count, const mqtt_props *props)
{
    const bool v5 = version == MQTT_V5;
    size_t pb = v5 ? props_size(props) : 0;
    size_t rl = v5 ? add_size(2, props_block_size(pb)) : 2;
    for (size_t i = 0; i < count; i++) rl = add_size(rl, bin_size(filters[i]));
    uint8_t *w;
    TRY(begin(b, byte0_of(MQTT_UNSUBSCRIBE), rl, &w));
    w = put_u16(w, id);
    if (v5) w = put_prop_block(w, props, pb);
    for (size_t i = 0; i < count; i++) w = put_bin(w, filters[i]);
    return finish(b, w);
}

thz_err mqtt_encode_suback(thz_buf *b, uint8_t version, uint8_t type, uint16_t id,
                           const uint8_t *codes, size_t count, const mqtt_props *props)
{
    if (type != MQTT_SUBACK && type != MQTT_UNSUBACK) return THZ_EINVAL;
    const bool v5 = version == MQTT_V5;
    if (type == MQTT_UNSUBACK && !v5) count = 0;
    size_t pb = v5 ? props_size(props) : 0;
    size_t rl = v5 ? add_size(2, props_block_size(pb)) : 2;
    rl = add_size(rl, count);
    uint8_t *w;
    TRY(begin(b, byte0_of(type), rl, &w));
    w = put_u16(w, id);
    if (v5) w = put_prop_block(w, props, pb);
    if (count) memcpy(w, codes, count);
    return finish(b, w + count);
}

thz_err mqtt_encode_ping(thz_buf *b, uint8_t type)
{
    if (type != MQTT_PINGREQ && type != MQTT_PINGRESP) return THZ_EINVAL;
    uint8_t *w;
    TRY(begin(b, byte0_of(type), 0, &w));
    return finish(b, w);
}

thz_err mqtt_encode_reasoned(thz_buf *b, uint8_t version, uint8_t type, uint8_t reason,
                             const mqtt_props *props)
{
    if (type != MQTT_DISCONNECT && type != MQTT_AUTH) return THZ_EINVAL;
    const bool v5 = version == MQTT_V5;
    if (type == MQTT_AUTH && !v5) return THZ_EINVAL;
    size_t pb = 0, rl = 0;
    if (v5) {
        pb = props_size(props);
        if (pb)
            rl = add_size(1, props_block_size(pb));
        else if (reason)
            rl = 1;
    }
    uint8_t *w;
    TRY(begin(b, byte0_of(type), rl, &w));
    if (rl > 0) *w++ = reason;
    if (rl > 1) w = put_prop_block(w, props, pb);
    return finish(b, w);
}

/* ---- reason codes ------------------------------------------------------- */

uint8_t mqtt_reason_from_err(thz_err e)
{
    switch (e) {
    case THZ_OK: return MQTT_RC_SUCCESS;
    case THZ_EMALFORMED: return MQTT_RC_MALFORMED;
    case THZ_EPROTO: return MQTT_RC_PROTOCOL_ERROR;
    case THZ_EVERSION: return MQTT_RC_UNSUPPORTED_VERSION;
    case THZ_EBADID: return MQTT_RC_CLIENT_ID_INVALID;
    case THZ_EBADAUTH: return MQTT_RC_BAD_USER_OR_PASSWORD;
    case THZ_EDENIED: return MQTT_RC_NOT_AUTHORIZED;
    case THZ_ETOPIC: return MQTT_RC_TOPIC_NAME_INVALID;
    case THZ_EFILTER: return MQTT_RC_TOPIC_FILTER_INVALID;
    case THZ_ETOOBIG: return MQTT_RC_PACKET_TOO_LARGE;
    case THZ_ERATE: return MQTT_RC_MESSAGE_RATE_TOO_HIGH;
    case THZ_EQUOTA: return MQTT_RC_QUOTA_EXCEEDED;
    case THZ_ENOSPC: return MQTT_RC_QUOTA_EXCEEDED; /* the disk's quota */
    case THZ_EUNSUPPORTED: return MQTT_RC_IMPL_SPECIFIC;
    default: return MQTT_RC_UNSPECIFIED;
    }
}

/* 3.1.1 has six CONNACK return codes; every v5 reason folds onto the one a
 * 3.1.1 client would act on the same way:
 *   0x00 -> 0 accepted
 *   0x84 unsupported version -> 1
 *   0x85 client id invalid -> 2
 *   0x86 bad user/password, 0x8C bad auth method -> 4 (credentials rejected)
 *   0x87 not authorized, 0x8A banned -> 5
 *   everything else (0x80-0x83 errors, 0x88 unavailable, 0x89 busy, 0x97
 *   quota, 0x9C/0x9D server moved, 0x9F rate...) -> 3 server unavailable,
 *   the one code that tells the client to retry later.
 * Values 1..5 are not v5 CONNACK reasons, so they pass through unchanged:
 * callers may hand in either form. */
uint8_t mqtt_v3_connack_code(uint8_t v5_reason)
{
    switch (v5_reason) {
    case MQTT_RC_SUCCESS: return MQTT_V3_ACCEPTED;
    case 1:
    case 2:
    case 3:
    case 4:
    case 5: return v5_reason;
    case MQTT_RC_UNSUPPORTED_VERSION: return MQTT_V3_BAD_VERSION;
    case MQTT_RC_CLIENT_ID_INVALID: return MQTT_V3_ID_REJECTED;
    case MQTT_RC_BAD_USER_OR_PASSWORD:
    case MQTT_RC_BAD_AUTH_METHOD: return MQTT_V3_BAD_USER_OR_PASSWORD;
    case MQTT_RC_NOT_AUTHORIZED:
    case MQTT_RC_BANNED: return MQTT_V3_NOT_AUTHORIZED;
    default: return MQTT_V3_SERVER_UNAVAILABLE;
    }
}
