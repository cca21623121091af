"""test_subscribe.py - SUBSCRIBE / UNSUBSCRIBE, v5 subscription options and
topic matching."""

import pytest

import mqttraw as r
from clients import V5, PahoClient, unique
from conftest import skip_on_mosquitto


def raw(broker, version=5, **kw):
    c = r.RawClient(broker.port, version=version)
    c.connect(unique(), **kw)
    return c


def publishes(c, timeout=0.6):
    return [p for p in c.recv_all(timeout) if p.type == r.PUBLISH]


# ------------------------------------------------------------------ options

def test_v5_no_local(broker):
    topic = unique("nolocal")
    a = raw(broker)
    a.subscribe([(topic, r.sub_options(qos=1, no_local=True))])
    b = raw(broker)
    b.subscribe([(topic, 1)])
    a.publish(topic, b"from-a", qos=1)
    assert b.recv_publish().payload == b"from-a"
    assert publishes(a) == [], "no-local subscriber got its own message"
    # Messages from others still reach it.
    b.publish(topic, b"from-b", qos=1)
    assert a.recv_publish().payload == b"from-b"
    a.disconnect()
    b.disconnect()


def test_v5_without_no_local_receives_own(broker):
    topic = unique("local")
    a = raw(broker)
    a.subscribe([(topic, 1)])
    a.publish(topic, b"mine", qos=1)
    assert a.recv_publish().payload == b"mine"
    a.disconnect()


def test_v5_retain_as_published(broker):
    topic = unique("rap")
    rap = raw(broker)
    rap.subscribe([(topic, r.sub_options(qos=1, retain_as_published=True))])
    plain = raw(broker)
    plain.subscribe([(topic, 1)])
    pub = raw(broker)
    pub.publish(topic, b"live-retained", qos=1, retain=True)
    m1 = rap.recv_publish()
    m2 = plain.recv_publish()
    assert m1.payload == m2.payload == b"live-retained"
    assert m1.retain, "retain-as-published subscriber must see RETAIN=1"
    assert not m2.retain, "plain subscriber must see RETAIN=0 on a live message"
    pub.publish(topic, b"", qos=1, retain=True)  # clear
    for c in (rap, plain, pub):
        c.disconnect()


@pytest.mark.parametrize("handling,first,again", [(0, True, True), (1, True, False),
                                                  (2, False, False)])
def test_v5_retain_handling(broker, handling, first, again):
    """0: send retained at every subscribe; 1: only if the subscription is new;
    2: never."""
    topic = unique("rh%d" % handling)
    pub = raw(broker)
    pub.publish(topic, b"kept", qos=1, retain=True)
    c = raw(broker)
    opts = r.sub_options(qos=1, retain_handling=handling)
    c.subscribe([(topic, opts)])
    got = publishes(c)
    assert [(p.payload, p.retain) for p in got] == ([(b"kept", True)] if first else [])
    for p in got:
        c.ack(p)
    c.subscribe([(topic, opts)])  # subscription exists now
    got = publishes(c)
    assert [(p.payload, p.retain) for p in got] == ([(b"kept", True)] if again else [])
    for p in got:
        c.ack(p)
    # Live messages flow whatever the retain handling.
    pub.publish(topic, b"live", qos=1)
    assert c.recv_publish().payload == b"live"
    c.disconnect()
    pub.disconnect()


# ------------------------------------------------------------------ subscribe / unsubscribe

@pytest.mark.parametrize("version", [4, 5])
def test_subscribe_many_filters_granted_in_order(broker, version):
    c = raw(broker, version)
    base = unique("multi")
    ack = c.subscribe([(base + "/a", 0), (base + "/b", 1), (base + "/c", 2)])
    assert ack.codes == [0, 1, 2]
    c.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_unsubscribe_stops_delivery(broker, version):
    topic = unique("unsub")
    c = raw(broker, version)
    c.subscribe([(topic, 1)])
    pub = raw(broker, version)
    pub.publish(topic, b"1", qos=1)
    assert c.recv_publish().payload == b"1"
    ack = c.unsubscribe([topic])
    if version == 5:
        assert ack.codes == [0x00]
    else:
        assert ack.codes == []
    pub.publish(topic, b"2", qos=1)
    assert publishes(c) == []
    c.disconnect()
    pub.disconnect()


def test_v5_unsuback_no_subscription_existed(broker):
    c = raw(broker)
    topic = unique("had")
    c.subscribe([(topic, 0)])
    ack = c.unsubscribe([unique("never"), topic])
    assert ack.codes == [0x11, 0x00]
    c.disconnect()


def test_resubscribe_replaces_qos(broker):
    topic = unique("resub")
    c = raw(broker, 4)
    assert c.subscribe([(topic, 0)]).codes == [0]
    assert c.subscribe([(topic, 2)]).codes == [2]
    pub = raw(broker, 4)
    pub.publish(topic, b"x", qos=2)
    got = [c.recv_publish()] + publishes(c)
    assert [(p.payload, p.qos) for p in got] == [(b"x", 2)]
    c.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_overlapping_subscriptions(broker, version):
    """Two matching filters: the message arrives once or twice, and at least
    one copy carries the highest granted QoS (3.1.1 3.3.5, v5 3.3.4)."""
    base = unique("ovl")
    c = raw(broker, version)
    c.subscribe([(base + "/#", 0), (base + "/+", 2)])
    pub = raw(broker, version)
    pub.publish(base + "/x", b"o", qos=2)
    got = [c.recv_publish()] + publishes(c, 0.5)
    assert 1 <= len(got) <= 2, got
    assert all(p.payload == b"o" for p in got)
    assert max(p.qos for p in got) == 2
    c.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_invalid_filters_refused_in_suback(broker, version):
    skip_on_mosquitto("mosquitto closes the connection instead of a SUBACK failure code")
    fail = 0x8F if version == 5 else 0x80
    topic = unique("valid")
    c = raw(broker, version)
    ack = c.subscribe([(topic, 1), ("a/#/b", 1), ("a+", 0), ("#a", 0), ("a/b#", 0),
                       ("+a/b", 0)])
    assert ack.codes == [1, fail, fail, fail, fail, fail]
    # The valid filter in the same packet works.
    pub = raw(broker, version)
    pub.publish(topic, b"ok", qos=1)
    assert c.recv_publish().payload == b"ok"
    c.disconnect()
    pub.disconnect()


# ------------------------------------------------------------------ topic matching

MATCH_TOPICS = ["sport/tennis/player1", "sport/tennis/player1/ranking", "sport/tennis",
                "sport", "sport/", "/finance", "a//b", "Sport/tennis"]
MATCH_CASES = {
    "sport/tennis/+": {"sport/tennis/player1"},
    "sport/#": {"sport/tennis/player1", "sport/tennis/player1/ranking", "sport/tennis",
                "sport", "sport/"},
    "sport/+": {"sport/tennis", "sport/"},
    "+/+": {"sport/tennis", "sport/", "/finance", "Sport/tennis"},
    "/+": {"/finance"},
    "+": {"sport"},
    "a/+/b": {"a//b"},
    "#": set(MATCH_TOPICS),
    "+/tennis/#": {"sport/tennis/player1", "sport/tennis/player1/ranking", "sport/tennis",
                   "Sport/tennis"},
    "sport/tennis/player1": {"sport/tennis/player1"},
}


def test_topic_matching_table(broker):
    """MQTT 4.7 examples. Topics are prefixed per test run so that other
    traffic ($SYS aside) does not interfere; the prefix is a full level."""
    prefix = unique("m")
    subs = {}
    for f in MATCH_CASES:
        c = raw(broker, 4)
        c.subscribe([(prefix + "/" + f, 0)])
        subs[f] = c
    pub = raw(broker, 4)
    for t in MATCH_TOPICS:
        pub.publish(prefix + "/" + t, t.encode(), qos=1)
    for f, want in MATCH_CASES.items():
        got = {p.topic[len(prefix) + 1:] for p in publishes(subs[f], 0.4)}
        assert got == want, "filter %r" % f
    for c in list(subs.values()) + [pub]:
        c.disconnect()


def test_root_wildcards(broker):
    """Unprefixed `#` and `+/x` filters (real root level)."""
    t = unique("root")
    hash_ = raw(broker, 4)
    hash_.subscribe([("#", 0)])
    plus = raw(broker, 4)
    plus.subscribe([("+/" + "leaf", 0)])
    pub = raw(broker, 4)
    pub.publish(t + "/leaf", b"1", qos=1)
    assert any(p.topic == t + "/leaf" for p in publishes(hash_))
    assert [p.topic for p in publishes(plus)] == [t + "/leaf"]
    for c in (hash_, plus, pub):
        c.disconnect()


def test_dollar_topics_not_matched_by_first_level_wildcards(broker_factory):
    """$SYS topics (published by the broker) are not matched by `#` nor by a
    filter starting with `+` (MQTT 4.7.2)."""
    b = broker_factory(sys_interval=1)
    hash_ = raw(b, 4)
    hash_.subscribe([("#", 0)])
    plus = raw(b, 4)
    plus.subscribe([("+/broker/#", 0)])
    sys_ = raw(b, 4)
    sys_.subscribe([("$SYS/#", 0)])
    got_sys = publishes(sys_, 2.5)
    assert got_sys, "no $SYS messages within 2.5 s with sys-interval 1"
    assert all(p.topic.startswith("$SYS/") for p in got_sys)
    assert [p.topic for p in publishes(hash_, 0.1) if p.topic.startswith("$")] == []
    assert [p.topic for p in publishes(plus, 0.1)] == []
    for c in (hash_, plus, sys_):
        c.disconnect()


def test_paho_v5_subscribe_options(broker):
    """The same options through paho's SubscribeOptions."""
    topic = unique("pahoopt")
    a = PahoClient(broker, version=V5)
    assert a.subscribe(topic, options={"qos": 1, "noLocal": True}) == [1]
    a.publish(topic, b"self", qos=1)
    a.expect_none(0.5)
    a.disconnect()
