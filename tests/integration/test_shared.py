"""test_shared.py - v5 shared subscriptions ($share/GROUP/FILTER)."""

import time

import mqttraw as r
from clients import unique
from conftest import skip_on_mosquitto

N = 30


def raw(broker, version=5):
    c = r.RawClient(broker.port, version=version)
    c.connect(unique())
    return c


def collect(c, timeout=1.0):
    """PUBLISHes arriving within timeout, acknowledged as they come (so that
    the broker's in-flight window never stalls delivery)."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            p = c.recv(max(0.001, deadline - time.monotonic()))
        except (TimeoutError, r.Closed):
            return out
        if p.type == r.PUBLISH:
            c.ack(p)
            out.append(p)


def publish_n(broker, topic, n=N, qos=1):
    pub = raw(broker)
    for i in range(n):
        pub.publish(topic, b"%d" % i, qos=qos)
    pub.disconnect()
    return [b"%d" % i for i in range(n)]


def test_shared_round_robin_between_members(broker):
    topic, group = unique("shared"), unique("g")
    a, b = raw(broker), raw(broker)
    assert a.subscribe([("$share/%s/%s" % (group, topic), 1)]).codes == [1]
    assert b.subscribe([("$share/%s/%s" % (group, topic), 1)]).codes == [1]
    sent = publish_n(broker, topic)
    ga, gb = collect(a), collect(b)
    pa, pb = [p.payload for p in ga], [p.payload for p in gb]
    assert pa and pb, "one member got nothing: a=%d b=%d" % (len(pa), len(pb))
    assert sorted(pa + pb, key=int) == sent, "lost or duplicated messages"
    assert not set(pa) & set(pb)
    # Each member sees its share in publish order.
    assert pa == sorted(pa, key=int) and pb == sorted(pb, key=int)
    assert all(p.topic == topic for p in ga + gb)
    a.disconnect()
    b.disconnect()


def test_shared_member_qos(broker):
    topic, group = unique("sharedq"), unique("g")
    a, b = raw(broker), raw(broker)
    a.subscribe([("$share/%s/%s" % (group, topic), 1)])
    b.subscribe([("$share/%s/%s" % (group, topic), 0)])
    sent = publish_n(broker, topic, qos=2)
    ga, gb = collect(a), collect(b)
    assert sorted([p.payload for p in ga + gb], key=int) == sent
    assert all(p.qos == 1 for p in ga)
    assert all(p.qos == 0 for p in gb)
    a.disconnect()
    b.disconnect()


def test_shared_groups_and_plain_subscribers_each_get_all(broker):
    topic = unique("sharedg")
    g1 = [raw(broker), raw(broker)]
    g2 = [raw(broker)]
    plain = raw(broker)
    for c in g1:
        c.subscribe([("$share/one/" + topic, 1)])
    g2[0].subscribe([("$share/two/" + topic, 1)])
    plain.subscribe([(topic, 1)])
    sent = publish_n(broker, topic)
    got1 = [p.payload for c in g1 for p in collect(c)]
    got2 = [p.payload for p in collect(g2[0])]
    gotp = [p.payload for p in collect(plain)]
    assert sorted(got1, key=int) == sent
    assert got2 == sent
    assert gotp == sent
    for c in g1 + g2 + [plain]:
        c.disconnect()


def test_shared_wildcard_filter(broker):
    base = unique("sharedw")
    a, b = raw(broker), raw(broker)
    a.subscribe([("$share/w/%s/+/data" % base, 1)])
    b.subscribe([("$share/w/%s/+/data" % base, 1)])
    pub = raw(broker)
    for i in range(10):
        pub.publish("%s/dev%d/data" % (base, i), b"%d" % i, qos=1)
    pub.publish("%s/dev0/other" % base, b"no", qos=1)
    got = collect(a) + collect(b)
    assert sorted(int(p.payload) for p in got) == list(range(10))
    a.disconnect()
    b.disconnect()
    pub.disconnect()


def test_shared_remaining_member_gets_everything(broker):
    topic, group = unique("sharedleave"), unique("g")
    a, b = raw(broker), raw(broker)
    a.subscribe([("$share/%s/%s" % (group, topic), 1)])
    b.subscribe([("$share/%s/%s" % (group, topic), 1)])
    b.disconnect()
    time.sleep(0.2)
    sent = publish_n(broker, topic, n=10)
    assert [p.payload for p in collect(a)] == sent
    a.disconnect()


def test_shared_unsubscribe(broker):
    topic, group = unique("sharedun"), unique("g")
    a, b = raw(broker), raw(broker)
    f = "$share/%s/%s" % (group, topic)
    a.subscribe([(f, 1)])
    b.subscribe([(f, 1)])
    assert a.unsubscribe([f]).codes == [0]
    sent = publish_n(broker, topic, n=10)
    assert collect(a, 0.5) == []
    assert [p.payload for p in collect(b)] == sent
    a.disconnect()
    b.disconnect()


def test_shared_no_local_is_refused(broker):
    """No Local on a shared subscription is a Protocol Error (MQTT-3.8.3-4)."""
    skip_on_mosquitto("2.0.11 grants No Local on shared subscriptions")
    c = raw(broker)
    opts = r.sub_options(qos=1, no_local=True)
    c.send(r.subscribe(1, [("$share/g/" + unique("nl"), opts)], 5))
    try:
        p = c.recv(3)
    except r.Closed:
        return
    if p.type == r.SUBACK:
        assert p.codes[0] >= 0x80, p
    else:
        assert p.type == r.DISCONNECT and p.rc == 0x82, p
