"""test_sys.py - the $SYS/broker/... statistics topics."""

import time

import mqttraw as r
from clients import unique

TOPICS = ["$SYS/broker/clients/connected", "$SYS/broker/messages/received",
          "$SYS/broker/messages/sent", "$SYS/broker/bytes/received",
          "$SYS/broker/bytes/sent", "$SYS/broker/uptime"]


def number(payload):
    """First integer in a payload ("42" or mosquitto's "42 seconds")."""
    return int(payload.decode().split()[0])


def sys_client(broker):
    c = r.RawClient(broker.port, version=4)
    c.connect(unique("sys"), keepalive=0)
    c.subscribe([("$SYS/broker/#", 0)])
    return c


def latest(c, topics, timeout):
    """Collects $SYS updates for up to timeout s; returns {topic: last payload}
    as soon as every topic in topics was seen at least once after the call."""
    seen = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            p = c.recv(max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            break
        if p.type == r.PUBLISH:
            seen[p.topic] = p.payload
            if all(t in seen for t in topics):
                break
    return seen


def wait_value(c, topic, pred, timeout=4.0):
    """Reads updates of topic until pred(value) holds; returns the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            p = c.recv(max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            break
        if p.type == r.PUBLISH and p.topic == topic:
            value = number(p.payload)
            if pred(value):
                return value
    return value


def test_sys_topics_published(broker_factory):
    b = broker_factory(sys_interval=1)
    c = sys_client(b)
    seen = latest(c, TOPICS, 3.5)
    missing = [t for t in TOPICS if t not in seen]
    assert not missing, "not published within 3.5 s: %s" % missing
    for t in TOPICS:
        assert number(seen[t]) >= 0
    # The first value may be a retained one from before this client connected.
    assert wait_value(c, "$SYS/broker/clients/connected", lambda v: v >= 1) >= 1
    c.disconnect()


def test_sys_topics_retained(broker_factory):
    b = broker_factory(sys_interval=1)
    first = sys_client(b)
    assert latest(first, TOPICS, 3.5).keys() >= set(TOPICS)
    first.disconnect()
    late = r.RawClient(b.port, version=4)
    late.connect(unique())
    late.subscribe([("$SYS/broker/uptime", 0)])
    p = late.recv_type(r.PUBLISH, timeout=0.8)  # immediately, not after the next tick
    assert p.retain and p.topic == "$SYS/broker/uptime"
    late.disconnect()


def test_sys_clients_connected_tracks_clients(broker_factory):
    b = broker_factory(sys_interval=1)
    c = sys_client(b)
    t = "$SYS/broker/clients/connected"
    base = wait_value(c, t, lambda v: v >= 1)
    assert base is not None
    extra = []
    for _ in range(3):
        e = r.RawClient(b.port, version=5)
        e.connect(unique("extra"))
        extra.append(e)
    v = wait_value(c, t, lambda v: v >= base + 3)
    assert v == base + 3, "clients/connected %r, want %d" % (v, base + 3)
    for e in extra:
        e.disconnect()
    v = wait_value(c, t, lambda v: v == base)
    assert v == base, "clients/connected %r after disconnects, want %d" % (v, base)
    c.disconnect()


def test_sys_message_and_byte_counters_grow(broker_factory):
    b = broker_factory(sys_interval=1)
    c = sys_client(b)
    before = {k: number(v) for k, v in latest(c, TOPICS, 3.5).items() if k in TOPICS}
    topic = unique("count")
    sub = r.RawClient(b.port, version=4)
    sub.connect(unique())
    sub.subscribe([(topic, 1)])
    pub = r.RawClient(b.port, version=4)
    pub.connect(unique())
    for _ in range(20):
        pub.publish(topic, b"z" * 1000, qos=1)
    for _ in range(20):
        sub.recv_publish()
    rec = wait_value(c, "$SYS/broker/messages/received",
                     lambda v: v >= before["$SYS/broker/messages/received"] + 20)
    assert rec >= before["$SYS/broker/messages/received"] + 20
    after = {k: number(v) for k, v in latest(c, TOPICS, 3.5).items() if k in TOPICS}
    assert after["$SYS/broker/messages/sent"] >= before["$SYS/broker/messages/sent"] + 20
    assert after["$SYS/broker/bytes/received"] >= before["$SYS/broker/bytes/received"] + 20000
    assert after["$SYS/broker/bytes/sent"] >= before["$SYS/broker/bytes/sent"] + 20000
    assert after["$SYS/broker/uptime"] >= before["$SYS/broker/uptime"]
    for x in (c, sub, pub):
        x.disconnect()


def test_sys_uptime_advances(broker_factory):
    b = broker_factory(sys_interval=1)
    c = sys_client(b)
    t = "$SYS/broker/uptime"
    u0 = wait_value(c, t, lambda v: True)
    u1 = wait_value(c, t, lambda v: v >= u0 + 1, timeout=4)
    assert u0 is not None and u1 is not None and u1 >= u0 + 1
    c.disconnect()


def test_sys_interval_zero_disables(broker_factory):
    b = broker_factory(sys_interval=0)
    c = sys_client(b)
    got = [p for p in c.recv_all(1.5) if p.type == r.PUBLISH]
    assert got == []
    c.disconnect()


def test_clients_cannot_publish_into_sys(broker_factory):
    """A client PUBLISH to $SYS/... must not reach $SYS subscribers nor
    overwrite the broker's values (the broker may drop or refuse it). MQTT
    4.7.2 reserves $ topics for the server; this is hardening (mosquitto does
    the same) rather than a MUST of the spec."""
    b = broker_factory(sys_interval=1)
    c = sys_client(b)
    assert latest(c, TOPICS, 3.5).keys() >= set(TOPICS)
    evil = r.RawClient(b.port, version=4)
    evil.connect(unique())
    try:
        evil.publish("$SYS/broker/uptime", b"-1 hacked", qos=1, retain=True)
    except r.Closed:
        pass
    seen = latest(c, ["$SYS/broker/uptime"], 2.5)
    assert b"hacked" not in seen.get("$SYS/broker/uptime", b"")
    c.disconnect()
