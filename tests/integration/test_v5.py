"""test_v5.py - MQTT 5.0 features: topic aliases, message expiry, flow control
(receive maximum, maximum packet size), property pass-through and
subscription identifiers."""

import time

import pytest

import mqttraw as r
from clients import V5, PacketTypes, PahoClient, props, unique
from conftest import skip_on_mosquitto


def raw(broker, **kw):
    c = r.RawClient(broker.port, version=5)
    c.connect(unique(), **kw)
    return c


def publishes(c, timeout=0.6):
    return [p for p in c.recv_all(timeout) if p.type == r.PUBLISH]


# ------------------------------------------------------------------ topic aliases

def test_topic_alias_client_to_server(broker):
    topic = unique("alias")
    sub = raw(broker)
    sub.subscribe([(topic, 1)])
    pub = raw(broker)
    pub.publish(topic, b"first", qos=1, props=[(r.TOPIC_ALIAS, 1)])
    pub.publish("", b"second", qos=1, props=[(r.TOPIC_ALIAS, 1)])
    pub.publish("", b"third", qos=0, props=[(r.TOPIC_ALIAS, 1)])
    got = [sub.recv_publish() for _ in range(3)]
    assert [(p.topic, p.payload) for p in got] == [(topic, b"first"), (topic, b"second"),
                                                   (topic, b"third")]
    # Aliases are per connection and remappable.
    other = unique("alias2")
    sub.subscribe([(other, 1)])
    pub.publish(other, b"remap", qos=1, props=[(r.TOPIC_ALIAS, 1)])
    pub.publish("", b"remapped", qos=1, props=[(r.TOPIC_ALIAS, 1)])
    got = [sub.recv_publish() for _ in range(2)]
    assert [(p.topic, p.payload) for p in got] == [(other, b"remap"), (other, b"remapped")]
    sub.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("alias", [0, 3])
def test_topic_alias_out_of_range_disconnects(broker_factory, alias):
    b = broker_factory(topic_alias_maximum=2)
    c = r.RawClient(b.port, version=5)
    ack = c.connect(unique())
    assert ack.props.get(r.TOPIC_ALIAS_MAXIMUM) == 2
    c.send(r.publish(unique("a"), b"x", qos=1, pid=1, version=5,
                     props=[(r.TOPIC_ALIAS, alias)]))
    got = c.wait_closed(3)
    assert [p.type for p in got if p.type != r.PUBACK] == [r.DISCONNECT], got
    # > maximum is 0x94 by name; alias 0 is forbidden outright (3.3.2.3.4), and
    # a broker may call that Topic Alias invalid, Protocol Error or Malformed.
    assert got[-1].rc == 0x94 if alias else got[-1].rc in (0x94, 0x82, 0x81), got
    assert [p for p in got if p.type == r.PUBACK] == []


def test_unknown_topic_alias_is_protocol_error(broker):
    c = raw(broker)
    c.send(r.publish("", b"x", qos=1, pid=1, version=5, props=[(r.TOPIC_ALIAS, 1)]))
    got = c.wait_closed(3)
    assert got and got[-1].type == r.DISCONNECT and got[-1].rc in (0x82, 0x94), got


def test_topic_alias_server_to_client(broker):
    """The client allows 2 aliases; whatever aliases the broker chooses, every
    message must resolve to its real topic and no alias may exceed 2."""
    base = unique("salias")
    topics = ["%s/%d" % (base, i) for i in range(3)]
    c = raw(broker, props=[(r.TOPIC_ALIAS_MAXIMUM, 2)])
    c.subscribe([(base + "/#", 1)])
    pub = raw(broker)
    sent = []
    for rnd in range(4):
        for t in topics:
            pub.publish(t, t.encode() + b"|%d" % rnd, qos=1)
            sent.append(t)
    aliases, resolved = {}, []
    for _ in sent:
        p = c.recv_publish()
        alias = p.props.get(r.TOPIC_ALIAS)
        if alias is not None:
            assert 1 <= alias <= 2, "alias %d above the client's maximum 2" % alias
            if p.topic:
                aliases[alias] = p.topic
            else:
                assert alias in aliases, "alias %d used before it was set" % alias
        else:
            assert p.topic, "empty topic without alias"
        topic = p.topic or aliases[alias]
        assert p.payload.split(b"|")[0] == topic.encode(), (topic, p.payload)
        resolved.append(topic)
    assert resolved == sent
    c.disconnect()
    pub.disconnect()


def test_no_server_aliases_without_client_maximum(broker):
    topic = unique("noalias")
    c = raw(broker)
    c.subscribe([(topic, 1)])
    pub = raw(broker)
    for i in range(5):
        pub.publish(topic, b"%d" % i, qos=1)
    for i in range(5):
        p = c.recv_publish()
        assert p.topic == topic and r.TOPIC_ALIAS not in p.props
    c.disconnect()
    pub.disconnect()


def test_paho_with_topic_alias_maximum_receives_messages(broker):
    """paho 1.6.1 does not resolve inbound aliases itself, so the check is
    that every message arrives and either names its topic or carries an alias."""
    topic = unique("pahoalias")
    sub = PahoClient(broker, version=V5,
                     properties=props(PacketTypes.CONNECT, TopicAliasMaximum=5))
    sub.subscribe(topic, 1)
    pub = PahoClient(broker, version=V5)
    for i in range(5):
        pub.publish(topic, b"%d" % i, qos=1)
    msgs = sub.get_n(5)
    assert [m.payload for m in msgs] == [b"%d" % i for i in range(5)]
    for m in msgs:
        assert m.topic == topic or getattr(m.properties, "TopicAlias", None)
    pub.disconnect()
    sub.disconnect()


# ------------------------------------------------------------------ message expiry

def test_message_expiry_while_offline(broker):
    cid, topic = unique("exp"), unique("expiry")
    c = r.RawClient(broker.port, version=5)
    c.connect(cid, props=[(r.SESSION_EXPIRY, 60)])
    c.subscribe([(topic, 1)])
    c.disconnect()
    pub = raw(broker)
    pub.publish(topic, b"short", qos=1, props=[(r.MESSAGE_EXPIRY, 1)])
    pub.publish(topic, b"long", qos=1, props=[(r.MESSAGE_EXPIRY, 10)])
    pub.publish(topic, b"forever", qos=1)
    time.sleep(2.2)
    c = r.RawClient(broker.port, version=5)
    assert c.connect(cid, clean=False, props=[(r.SESSION_EXPIRY, 60)]).session_present
    got = [c.recv_publish(), c.recv_publish()] + publishes(c, 0.5)
    assert [p.payload for p in got] == [b"long", b"forever"]
    remaining = got[0].props.get(r.MESSAGE_EXPIRY)
    assert remaining is not None and 1 <= remaining <= 9, \
        "expiry must be decremented by the time queued, got %r" % remaining
    assert r.MESSAGE_EXPIRY not in got[1].props
    c.disconnect()
    pub.disconnect()


def test_message_expiry_forwarded_live(broker):
    topic = unique("expiry")
    c = raw(broker)
    c.subscribe([(topic, 1)])
    pub = raw(broker)
    pub.publish(topic, b"x", qos=1, props=[(r.MESSAGE_EXPIRY, 30)])
    p = c.recv_publish()
    assert 1 <= p.props.get(r.MESSAGE_EXPIRY, 0) <= 30
    c.disconnect()
    pub.disconnect()


def test_retained_message_expiry(broker):
    topic = unique("retexp")
    pub = raw(broker)
    pub.publish(topic, b"soon-gone", qos=1, retain=True, props=[(r.MESSAGE_EXPIRY, 1)])
    time.sleep(2.2)
    c = raw(broker)
    c.subscribe([(topic, 1)])
    assert publishes(c) == [], "expired retained message delivered"
    c.disconnect()
    pub.disconnect()


# ------------------------------------------------------------------ flow control

def test_client_receive_maximum_respected(broker):
    skip_on_mosquitto("2.0.11 has 3 messages in flight after the first PUBACK")
    topic = unique("rxmax")
    c = raw(broker, props=[(r.RECEIVE_MAXIMUM, 2)])
    c.subscribe([(topic, 1)])
    pub = raw(broker)
    for i in range(6):
        pub.publish(topic, b"%d" % i, qos=1)
    first = publishes(c, 1.0)
    assert [p.payload for p in first] == [b"0", b"1"], \
        "broker exceeded the client's receive maximum 2: %r" % first
    c.ack(first[0])
    more = publishes(c, 0.8)
    assert [p.payload for p in more] == [b"2"]
    for p in [first[1]] + more:
        c.ack(p)
    rest = []
    deadline = time.monotonic() + 5
    while len(rest) < 3 and time.monotonic() < deadline:
        p = c.recv_publish(timeout=2)
        rest.append(p.payload)
    assert rest == [b"3", b"4", b"5"]
    c.disconnect()
    pub.disconnect()


def test_server_receive_maximum_enforced(broker_factory):
    """More unacknowledged inbound QoS 2 messages than the broker's Receive
    Maximum is a protocol violation: DISCONNECT 0x93."""
    skip_on_mosquitto("2.0.11 answers the excess PUBLISH with PUBREC 0x97, not DISCONNECT 0x93")
    b = broker_factory(receive_maximum=2)
    c = r.RawClient(b.port, version=5)
    assert c.connect(unique()).props.get(r.RECEIVE_MAXIMUM) == 2
    topic = unique("srxmax")
    for pid in (1, 2):
        c.send(r.publish(topic, b"x", qos=2, pid=pid, version=5))
        assert c.recv_type(r.PUBREC).pid == pid
    c.send(r.publish(topic, b"x", qos=2, pid=3, version=5))  # no PUBREL sent
    got = c.wait_closed(3)
    assert got and got[-1].type == r.DISCONNECT and got[-1].rc == 0x93, got


def test_client_maximum_packet_size_respected(broker):
    topic = unique("cmax")
    c = raw(broker, props=[(r.MAXIMUM_PACKET_SIZE, 200)])
    c.subscribe([(topic, 1)])
    pub = raw(broker)
    pub.publish(topic, b"small-1", qos=1)
    pub.publish(topic, b"B" * 500, qos=1)
    pub.publish(topic, b"small-2", qos=1)
    got = [c.recv_publish(), c.recv_publish()] + publishes(c, 0.5)
    assert [p.payload for p in got] == [b"small-1", b"small-2"]
    c.disconnect()
    pub.disconnect()


def test_server_maximum_packet_size_enforced(broker_factory):
    b = broker_factory(max_packet_size=1024)
    c = r.RawClient(b.port, version=5)
    assert c.connect(unique()).props.get(r.MAXIMUM_PACKET_SIZE) == 1024
    c.send(r.publish(unique("big"), b"x" * 2000, qos=1, pid=1, version=5))
    got = c.wait_closed(3)
    assert [p.type for p in got] == [r.DISCONNECT], got
    assert got[0].rc == 0x95
    # Just under the limit is fine, and the broker keeps serving.
    ok = r.RawClient(b.port, version=5)
    ok.connect(unique())
    topic = unique("fits")
    ok.subscribe([(topic, 1)])
    ok.publish(topic, b"y" * 900, qos=1)
    assert ok.recv_publish().payload == b"y" * 900
    ok.disconnect()


def test_server_maximum_packet_size_v311(broker_factory):
    b = broker_factory(max_packet_size=1024)
    c = r.RawClient(b.port, version=4)
    c.connect(unique())
    c.send(r.publish(unique("big"), b"x" * 2000, qos=1, pid=1))
    assert [p.type for p in c.wait_closed(3)] == []


# ------------------------------------------------------------------ pass-through

def test_publish_properties_passed_through(broker):
    topic = unique("pprops")
    user = [("z", "1"), ("a", "2"), ("z", "3"), ("", "empty-name"), ("k", "")]
    sent = [(r.PAYLOAD_FORMAT, 1), (r.CONTENT_TYPE, "text/x-test; charset=utf-8"),
            (r.RESPONSE_TOPIC, "resp/" + topic), (r.CORRELATION_DATA, b"\x00\xffcorr")]
    sent += [(r.USER_PROPERTY, u) for u in user]
    c = raw(broker)
    c.subscribe([(topic, 2)])
    pub = raw(broker)
    for qos in (0, 1, 2):
        pub.publish(topic, b"payload-%d" % qos, qos=qos, props=sent)
        p = c.recv_publish()
        assert p.payload == b"payload-%d" % qos
        assert p.props.get(r.PAYLOAD_FORMAT) == 1
        assert p.props.get(r.CONTENT_TYPE) == "text/x-test; charset=utf-8"
        assert p.props.get(r.RESPONSE_TOPIC) == "resp/" + topic
        assert p.props.get(r.CORRELATION_DATA) == b"\x00\xffcorr"
        assert p.props.get(r.USER_PROPERTY) == user, "user properties reordered or lost"
    c.disconnect()
    pub.disconnect()


def test_request_response_with_paho(broker):
    req_topic, resp_topic = unique("req"), unique("resp")
    server = PahoClient(broker, version=V5)
    server.subscribe(req_topic, 1)
    client = PahoClient(broker, version=V5)
    client.subscribe(resp_topic, 1)
    client.publish(req_topic, b"ping", qos=1, properties=props(
        PacketTypes.PUBLISH, ResponseTopic=resp_topic, CorrelationData=b"id-42",
        UserProperty=[("trace", "abc")]))
    req = server.get()
    assert req.properties.ResponseTopic == resp_topic
    assert req.properties.CorrelationData == b"id-42"
    assert req.properties.UserProperty == [("trace", "abc")]
    server.publish(req.properties.ResponseTopic, b"pong", qos=1, properties=props(
        PacketTypes.PUBLISH, CorrelationData=req.properties.CorrelationData))
    resp = client.get()
    assert resp.payload == b"pong" and resp.properties.CorrelationData == b"id-42"
    server.disconnect()
    client.disconnect()


def test_subscription_identifiers(broker):
    base = unique("subid")
    c = raw(broker)
    c.subscribe([(base + "/#", 1)], props=[(r.SUBSCRIPTION_ID, 5)])
    c.subscribe([(base + "/+", 1)], props=[(r.SUBSCRIPTION_ID, 700)])
    c.subscribe([(base + "/x", 1)])  # no identifier
    pub = raw(broker)
    pub.publish(base + "/x", b"m", qos=1)
    got = [c.recv_publish()] + publishes(c)
    for p in got:
        c.ack(p)
    ids = [i for p in got for i in p.props.get(r.SUBSCRIPTION_ID, [])]
    assert sorted(ids) == [5, 700], got
    # A topic only the first filter matches carries only its id.
    pub.publish(base + "/deep/er", b"n", qos=1)
    p = c.recv_publish()
    assert p.props.get(r.SUBSCRIPTION_ID) == [5]
    assert publishes(c, 0.4) == []
    c.disconnect()
    pub.disconnect()


def test_subscription_identifier_on_retained(broker):
    topic = unique("subidret")
    pub = raw(broker)
    pub.publish(topic, b"r", qos=1, retain=True)
    c = raw(broker)
    c.subscribe([(topic, 1)], props=[(r.SUBSCRIPTION_ID, 42)])
    p = c.recv_publish()
    assert p.retain and p.props.get(r.SUBSCRIPTION_ID) == [42]
    c.disconnect()
    pub.disconnect()


def test_v5_puback_reason_success_and_reason_string_optional(broker):
    c = raw(broker, props=[(r.REQUEST_PROBLEM_INFO, 1)])
    ack = c.publish(unique("rs"), b"x", qos=1)
    assert ack.rc in (0x00, 0x10)
    if r.REASON_STRING in ack.props:
        assert isinstance(ack.props[r.REASON_STRING], str)
    c.disconnect()


def test_reason_strings_on_refusal_and_disconnect(broker_factory):
    """v5: a refused CONNECT and a server DISCONNECT say why in a Reason
    String (allowed on CONNACK and DISCONNECT whatever Request Problem
    Information says)."""
    skip_on_mosquitto("thinghz reason strings")
    b = broker_factory(allow_anonymous=False)
    c = r.RawClient(b.port, version=5)
    ack = c.connect(unique("refused"), expect_rc=None)
    assert ack.rc in (0x86, 0x87)
    assert ack.props.get(r.REASON_STRING), ack
    c.close()
    b2 = broker_factory()
    c = r.RawClient(b2.port, version=5)
    c.connect(unique("ka"), keepalive=1)
    pkts = c.recv_all(4)
    disc = [p for p in pkts if p.type == r.DISCONNECT]
    assert disc and disc[0].rc == 0x8D
    assert disc[0].props.get(r.REASON_STRING) == "keep alive timeout"
