"""test_session.py - persistent sessions: subscriptions and queued messages kept
across reconnects and broker restarts, expiry, queue bounds and redelivery of
unacknowledged messages."""

import time

import pytest

import mqttraw as r
from clients import V311, PahoClient, unique
from conftest import skip_on_mosquitto


def connect(broker, cid, version=4, clean=False, expiry=None, **kw):
    c = r.RawClient(broker.port, version=version)
    props = [(r.SESSION_EXPIRY, expiry)] if expiry is not None else None
    ack = c.connect(cid, clean=clean, props=props, **kw)
    return c, ack


def publisher(broker, version=4):
    c = r.RawClient(broker.port, version=version)
    c.connect(unique("pub"))
    return c


def publishes(c, timeout=0.8):
    return [p for p in c.recv_all(timeout) if p.type == r.PUBLISH]


def drain_ack(c, n, timeout=5.0):
    """Receives and acknowledges n PUBLISHes, then checks nothing more comes."""
    got = [c.recv_publish(timeout=timeout) for _ in range(n)]
    extra = publishes(c, 0.5)
    for p in extra:
        c.ack(p)
    return got + extra


def test_v311_persistent_session_keeps_subscriptions_and_queues(broker):
    cid, topic = unique("s"), unique("sess")
    c, ack = connect(broker, cid)
    assert not ack.session_present
    c.subscribe([(topic, 1)])
    c.disconnect()
    pub = publisher(broker)
    for i in range(3):
        pub.publish(topic, b"off%d" % i, qos=1)
    c, ack = connect(broker, cid)
    assert ack.session_present
    got = drain_ack(c, 3)
    assert [p.payload for p in got] == [b"off0", b"off1", b"off2"]
    assert all(p.qos == 1 for p in got)
    # The subscription is live again without resubscribing.
    pub.publish(topic, b"online", qos=1)
    assert c.recv_publish().payload == b"online"
    c.disconnect()
    pub.disconnect()


def test_v311_paho_persistent_session(broker):
    cid, topic = unique("ps"), unique("sess")
    c = PahoClient(broker, client_id=cid, version=V311, clean=False)
    c.subscribe(topic, 1)
    c.disconnect()
    pub = PahoClient(broker, version=V311)
    pub.publish(topic, b"queued", qos=1)
    c = PahoClient(broker, client_id=cid, version=V311, clean=False)
    assert c.session_present
    assert c.get().payload == b"queued"
    c.disconnect()
    pub.disconnect()


def test_v311_clean_session_discards(broker):
    cid, topic = unique("s"), unique("sess")
    c, _ = connect(broker, cid, clean=False)
    c.subscribe([(topic, 1)])
    c.disconnect()
    pub = publisher(broker)
    pub.publish(topic, b"lost", qos=1)
    c, ack = connect(broker, cid, clean=True)
    assert not ack.session_present
    assert publishes(c) == []
    c.disconnect()
    # The old session is gone for good, not just hidden for one connection.
    pub.publish(topic, b"lost2", qos=1)
    c, ack = connect(broker, cid, clean=False)
    assert not ack.session_present
    assert publishes(c) == []
    c.disconnect()
    pub.disconnect()


def test_v5_session_expiry_keeps_then_expires(broker):
    cid, topic = unique("s5"), unique("sess")
    c, ack = connect(broker, cid, version=5, clean=True, expiry=1)
    c.subscribe([(topic, 1)])
    c.disconnect()
    pub = publisher(broker)
    pub.publish(topic, b"kept", qos=1)
    # Within the interval: the session and its queue are there.
    c, ack = connect(broker, cid, version=5, expiry=1)
    assert ack.session_present
    assert [p.payload for p in drain_ack(c, 1)] == [b"kept"]
    c.disconnect()
    pub.publish(topic, b"expired-with-session", qos=1)
    time.sleep(2.5)
    c, ack = connect(broker, cid, version=5, expiry=1)
    assert not ack.session_present, "session outlived its 1 s expiry"
    assert publishes(c) == []
    c.disconnect()
    pub.disconnect()


def test_v5_session_expiry_zero_ends_at_disconnect(broker):
    cid, topic = unique("s5"), unique("sess")
    c, _ = connect(broker, cid, version=5, clean=False)  # no expiry property = 0
    c.subscribe([(topic, 1)])
    c.disconnect()
    c, ack = connect(broker, cid, version=5, clean=False)
    assert not ack.session_present
    c.disconnect()


def test_v5_clean_start_discards_existing_session(broker):
    cid, topic = unique("s5"), unique("sess")
    c, _ = connect(broker, cid, version=5, expiry=60)
    c.subscribe([(topic, 1)])
    c.disconnect()
    c, ack = connect(broker, cid, version=5, clean=True, expiry=60)
    assert not ack.session_present
    pub = publisher(broker)
    pub.publish(topic, b"x", qos=1)
    assert publishes(c) == [], "subscription survived a clean start"
    c.disconnect()
    pub.disconnect()


def test_v5_session_expiry_set_to_zero_on_disconnect(broker):
    cid, topic = unique("s5"), unique("sess")
    c, _ = connect(broker, cid, version=5, expiry=60)
    c.subscribe([(topic, 1)])
    c.disconnect(props=[(r.SESSION_EXPIRY, 0)])
    c, ack = connect(broker, cid, version=5, expiry=60)
    assert not ack.session_present
    c.disconnect()


def test_v5_max_session_expiry_caps_request(broker_factory):
    skip_on_mosquitto("no max-session-expiry setting")
    b = broker_factory(max_session_expiry=1)
    cid = unique("cap")
    c, ack = connect(b, cid, version=5, expiry=3600)
    assert ack.props.get(r.SESSION_EXPIRY) == 1
    c.subscribe([("cap/" + cid, 1)])
    c.disconnect()
    time.sleep(2.5)
    c, ack = connect(b, cid, version=5, expiry=3600)
    assert not ack.session_present
    c.disconnect()


def _offline_setup(broker, version):
    cid, topic = unique("rs"), unique("restart")
    c, _ = connect(broker, cid, version=version, expiry=3600 if version == 5 else None)
    c.subscribe([(topic, 1)])
    c.disconnect()
    pub = publisher(broker)
    for i in range(5):
        pub.publish(topic, b"q%d" % i, qos=1)
    pub.disconnect()
    return cid, topic


def _offline_check(broker, version, cid, topic):
    c, ack = connect(broker, cid, version=version, expiry=3600 if version == 5 else None)
    assert ack.session_present, "session lost across restart"
    got = drain_ack(c, 5)
    assert [p.payload for p in got] == [b"q%d" % i for i in range(5)]
    pub = publisher(broker)
    pub.publish(topic, b"after", qos=1)
    assert c.recv_publish().payload == b"after", "subscription lost across restart"
    c.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_session_and_queue_survive_sigterm_restart(broker, version):
    cid, topic = _offline_setup(broker, version)
    broker.restart()
    _offline_check(broker, version, cid, topic)


@pytest.mark.parametrize("version", [4, 5])
def test_session_and_queue_survive_kill9(broker, version):
    skip_on_mosquitto("mosquitto only persists at shutdown/autosave")
    cid, topic = _offline_setup(broker, version)
    broker.restart(kill=True)
    _offline_check(broker, version, cid, topic)


def test_queue_bound_drops_newest(broker_factory):
    n = 10
    b = broker_factory(max_queued_messages=n)
    cid, topic = unique("qb"), unique("bound")
    c, _ = connect(b, cid)
    c.subscribe([(topic, 1)])
    c.disconnect()
    pub = publisher(b)
    for i in range(n + 5):
        pub.publish(topic, b"%d" % i, qos=1)
    c, ack = connect(b, cid)
    assert ack.session_present
    got = drain_ack(c, n)
    assert [int(p.payload) for p in got] == list(range(n))
    c.disconnect()
    pub.disconnect()
    assert b.running


@pytest.mark.parametrize("version", [4, 5])
def test_unacked_qos1_resent_with_dup_on_reconnect(broker, version):
    cid, topic = unique("dup"), unique("inflight")
    exp = 3600 if version == 5 else None
    c, _ = connect(broker, cid, version=version, expiry=exp)
    c.subscribe([(topic, 1)])
    pub = publisher(broker)
    pub.publish(topic, b"unacked", qos=1)
    first = c.recv_publish(ack=False)
    assert not first.dup
    c.abort()
    time.sleep(0.2)
    c, ack = connect(broker, cid, version=version, expiry=exp)
    assert ack.session_present
    again = c.recv_publish(timeout=3)
    assert again.payload == b"unacked"
    assert again.dup, "resent PUBLISH must have DUP=1"
    assert again.pid == first.pid, "resent PUBLISH must keep its packet id"
    assert publishes(c, 0.5) == [], "acknowledged message delivered again"
    c.disconnect()
    pub.disconnect()


def test_qos2_pubrel_resent_on_reconnect(broker):
    cid, topic = unique("rel"), unique("inflight2")
    c, _ = connect(broker, cid)
    c.subscribe([(topic, 2)])
    pub = publisher(broker)
    pub.publish(topic, b"two", qos=2)
    p = c.recv_type(r.PUBLISH)
    c.send(r.pubrec(p.pid))
    assert c.recv_type(r.PUBREL).pid == p.pid
    c.abort()  # no PUBCOMP
    time.sleep(0.2)
    c, ack = connect(broker, cid)
    assert ack.session_present
    rel = c.recv(3)
    assert rel.type == r.PUBREL and rel.pid == p.pid, rel
    c.send(r.pubcomp(p.pid))
    assert publishes(c, 0.5) == [], "QoS 2 message delivered a second time"
    c.disconnect()
    pub.disconnect()


def test_v5_offline_qos0_not_required_but_qos1_kept(broker):
    """QoS 1 messages published while a v5 session is offline arrive in order
    after QoS 0 ones may have been dropped (queueing QoS 0 is optional)."""
    cid, topic = unique("mix"), unique("mix")
    c, _ = connect(broker, cid, version=5, expiry=60)
    c.subscribe([(topic, 1)])
    c.disconnect()
    pub = publisher(broker)
    pub.publish(topic, b"a", qos=1)
    pub.publish(topic, b"b", qos=0)
    pub.publish(topic, b"c", qos=1)
    time.sleep(0.2)
    c, _ = connect(broker, cid, version=5, expiry=60)
    got = [p.payload for p in drain_ack(c, 2)]
    assert [x for x in got if x != b"b"] == [b"a", b"c"]
    c.disconnect()
    pub.disconnect()
