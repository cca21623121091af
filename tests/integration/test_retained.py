"""test_retained.py - the retained message store: set, replace, delete,
delivery on subscribe and persistence across restarts."""

import pytest

import mqttraw as r
from clients import MosquittoSub, mosquitto_pub, unique
from conftest import skip_on_mosquitto


def raw(broker, version=4):
    c = r.RawClient(broker.port, version=version)
    c.connect(unique())
    return c


def retained_for(broker, topic_filter, qos=1, timeout=0.6, version=4):
    """Subscribes a fresh client and returns [(topic, payload, retain, qos)]."""
    c = raw(broker, version)
    c.subscribe([(topic_filter, qos)])
    out = []
    for p in c.recv_all(timeout):
        if p.type == r.PUBLISH:
            c.ack(p)
            out.append((p.topic, p.payload, p.retain, p.qos))
    c.disconnect()
    return out


def test_retained_delivered_on_subscribe_with_flag(broker):
    topic = unique("ret")
    pub = raw(broker)
    pub.publish(topic, b"v1", qos=1, retain=True)
    assert retained_for(broker, topic) == [(topic, b"v1", True, 1)]
    pub.disconnect()


def test_retained_replace(broker):
    topic = unique("ret")
    pub = raw(broker)
    pub.publish(topic, b"v1", qos=1, retain=True)
    pub.publish(topic, b"v2", qos=1, retain=True)
    assert [m[1] for m in retained_for(broker, topic)] == [b"v2"]
    pub.disconnect()


def test_retained_delete_with_empty_payload(broker):
    topic = unique("ret")
    pub = raw(broker)
    pub.publish(topic, b"v1", qos=1, retain=True)
    assert len(retained_for(broker, topic)) == 1
    pub.publish(topic, b"", qos=1, retain=True)
    assert retained_for(broker, topic) == []
    pub.disconnect()


def test_live_message_to_existing_subscriber_has_retain_clear(broker):
    """3.1.1 3.3.1.3: a retained PUBLISH forwarded to an established
    subscription goes out with RETAIN=0."""
    topic = unique("ret")
    sub = raw(broker)
    sub.subscribe([(topic, 1)])
    pub = raw(broker)
    pub.publish(topic, b"live", qos=1, retain=True)
    m = sub.recv_publish()
    assert m.payload == b"live" and not m.retain
    sub.disconnect()
    pub.disconnect()


def test_non_retained_publish_keeps_retained_value(broker):
    topic = unique("ret")
    pub = raw(broker)
    pub.publish(topic, b"kept", qos=1, retain=True)
    pub.publish(topic, b"transient", qos=1, retain=False)
    assert [m[1] for m in retained_for(broker, topic)] == [b"kept"]
    pub.disconnect()


def test_retained_wildcard_subscribe_gets_all(broker):
    base = unique("retw")
    pub = raw(broker)
    for i in range(5):
        pub.publish("%s/%d" % (base, i), b"%d" % i, qos=1, retain=True)
    got = retained_for(broker, base + "/+")
    assert sorted((t, p) for t, p, _, _ in got) == [("%s/%d" % (base, i), b"%d" % i)
                                                    for i in range(5)]
    assert all(ret for _, _, ret, _ in got)
    pub.disconnect()


def test_retained_qos_is_min_of_stored_and_subscription(broker):
    topic = unique("retq")
    pub = raw(broker)
    pub.publish(topic, b"q2", qos=2, retain=True)
    assert [m[3] for m in retained_for(broker, topic, qos=1)] == [1]
    assert [m[3] for m in retained_for(broker, topic, qos=2)] == [2]
    assert [m[3] for m in retained_for(broker, topic, qos=0)] == [0]
    pub.publish(topic, b"q0", qos=0, retain=True)
    # QoS 0 has no acknowledgement: wait for it through a subscriber.
    assert [(m[1], m[3]) for m in retained_for(broker, topic, qos=2)] == [(b"q0", 0)]
    pub.disconnect()


def test_retained_v5_properties_kept(broker):
    topic = unique("retp")
    pub = raw(broker, 5)
    props = [(r.CONTENT_TYPE, "text/plain"), (r.USER_PROPERTY, ("k", "v")),
             (r.PAYLOAD_FORMAT, 1)]
    pub.publish(topic, b"hello", qos=1, retain=True, props=props)
    c = raw(broker, 5)
    c.subscribe([(topic, 1)])
    m = c.recv_publish()
    assert m.retain and m.payload == b"hello"
    assert m.props.get(r.CONTENT_TYPE) == "text/plain"
    assert m.props.get(r.USER_PROPERTY) == [("k", "v")]
    assert m.props.get(r.PAYLOAD_FORMAT) == 1
    c.disconnect()
    pub.disconnect()


def test_retained_with_mosquitto_clients(broker):
    topic = unique("retcli")
    mosquitto_pub(broker.port, topic, "cli-retained", qos=1, retain=True)
    sub = MosquittoSub(broker.port, topic, count=1, qos=1, timeout=5).start()
    assert sub.finish() == [(1, 1, topic, "cli-retained")]


def _populate(broker):
    base = unique("persist")
    pub = raw(broker)
    pub.publish(base + "/a", b"A", qos=1, retain=True)
    pub.publish(base + "/b", b"B1", qos=1, retain=True)
    pub.publish(base + "/b", b"B2", qos=1, retain=True)
    pub.publish(base + "/c", b"C", qos=1, retain=True)
    pub.publish(base + "/c", b"", qos=1, retain=True)  # deleted
    pub.disconnect()
    return base


def _check(broker, base):
    got = sorted((t, p) for t, p, ret, _ in retained_for(broker, base + "/#") if ret)
    assert got == [(base + "/a", b"A"), (base + "/b", b"B2")]


def test_retained_persist_across_sigterm_restart(broker):
    base = _populate(broker)
    broker.restart()
    _check(broker, base)
    # And a second restart with nothing changed in between.
    broker.restart()
    _check(broker, base)


def test_retained_persist_across_kill9(broker):
    skip_on_mosquitto("mosquitto only persists at shutdown/autosave")
    base = _populate(broker)
    broker.restart(kill=True)
    _check(broker, base)
