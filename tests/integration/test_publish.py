"""test_publish.py - PUBLISH at QoS 0/1/2 in both directions and both versions."""

import pytest

import mqttraw as r
from clients import V311, V5, MosquittoSub, PahoClient, mosquitto_pub, unique

VERSIONS = {"v311": V311, "v5": V5}


@pytest.mark.parametrize("vname", ["v311", "v5"])
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_paho_pubsub_qos(broker, vname, pub_qos, sub_qos):
    """Delivered QoS is min(publish QoS, subscription QoS)."""
    version = VERSIONS[vname]
    topic = unique("pub/%s/%d%d" % (vname, pub_qos, sub_qos))
    sub = PahoClient(broker, version=version)
    assert sub.subscribe(topic, sub_qos) == [sub_qos]
    pub = PahoClient(broker, version=version)
    for i in range(3):
        pub.publish(topic, b"m%d" % i, qos=pub_qos)
    msgs = sub.get_n(3)
    assert [m.payload for m in msgs] == [b"m0", b"m1", b"m2"]
    assert all(m.topic == topic for m in msgs)
    assert all(m.qos == min(pub_qos, sub_qos) for m in msgs)
    assert all(not m.retain for m in msgs)
    sub.expect_none(0.3)
    pub.disconnect()
    sub.disconnect()


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_clients_pubsub(broker, version, qos):
    topic = unique("cli/%d" % qos)
    sub = MosquittoSub(broker.port, topic, count=2, qos=qos, version=version, timeout=8).start()
    mosquitto_pub(broker.port, topic, "hello-1", qos=qos, version=version)
    mosquitto_pub(broker.port, topic, "hello-2", qos=qos, version=version)
    msgs = sub.finish()
    assert [(m[0], m[2], m[3]) for m in msgs] == [(qos, topic, "hello-1"), (qos, topic, "hello-2")]


def test_mosquitto_pub_to_paho_v5_and_back(broker):
    """Cross-client: mosquitto_pub (3.1.1) -> paho v5, paho v3.1.1 -> mosquitto_sub (v5)."""
    t1, t2 = unique("x1"), unique("x2")
    p = PahoClient(broker, version=V5)
    p.subscribe(t1, 1)
    mosquitto_pub(broker.port, t1, "from-cli", qos=1, version="mqttv311")
    m = p.get()
    assert (m.topic, m.payload, m.qos) == (t1, b"from-cli", 1)
    sub = MosquittoSub(broker.port, t2, count=1, qos=2, version="mqttv5").start()
    q = PahoClient(broker, version=V311)
    q.publish(t2, b"from-paho", qos=2)
    assert [(x[0], x[2], x[3]) for x in sub.finish()] == [(2, t2, "from-paho")]
    p.disconnect()
    q.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_raw_qos_downgrade(broker, version):
    topic = unique("down")
    s0 = r.RawClient(broker.port, version=version)
    s0.connect(unique())
    assert s0.subscribe([(topic, 0)]).codes == [0]
    s1 = r.RawClient(broker.port, version=version)
    s1.connect(unique())
    assert s1.subscribe([(topic, 1)]).codes == [1]
    pub = r.RawClient(broker.port, version=version)
    pub.connect(unique())
    comp = pub.publish(topic, b"two", qos=2)
    assert comp.type == r.PUBCOMP and comp.rc == 0
    m0 = s0.recv_publish()
    assert (m0.qos, m0.pid, m0.payload) == (0, None, b"two")
    m1 = s1.recv_publish()
    assert m1.qos == 1 and m1.pid and m1.payload == b"two"
    for c in (s0, s1, pub):
        c.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_outbound_handshake(broker, version):
    topic = unique("q2out")
    sub = r.RawClient(broker.port, version=version)
    sub.connect(unique())
    sub.subscribe([(topic, 2)])
    pub = r.RawClient(broker.port, version=version)
    pub.connect(unique())
    pub.publish(topic, b"x", qos=2)
    p = sub.recv_type(r.PUBLISH)
    assert p.qos == 2 and p.pid
    sub.send(r.pubrec(p.pid, version))
    rel = sub.recv_type(r.PUBREL)
    assert rel.pid == p.pid and rel.flags == 2
    sub.send(r.pubcomp(p.pid, version))
    # Handshake done: nothing is resent.
    assert [x for x in sub.recv_all(0.5) if x.type == r.PUBLISH] == []
    sub.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_duplicate_publish_before_pubrel_delivered_once(broker, version):
    topic = unique("q2dup")
    sub = r.RawClient(broker.port, version=version)
    sub.connect(unique())
    sub.subscribe([(topic, 2)])
    pub = r.RawClient(broker.port, version=version)
    pub.connect(unique())
    pub.send(r.publish(topic, b"once", qos=2, pid=7, version=version))
    rec = pub.recv_type(r.PUBREC)
    assert rec.pid == 7
    # The client lost the PUBREC and resends with DUP, same packet id.
    pub.send(r.publish(topic, b"once", qos=2, pid=7, dup=True, version=version))
    rec2 = pub.recv_type(r.PUBREC)
    assert rec2.pid == 7
    pub.send(r.pubrel(7, version))
    assert pub.recv_type(r.PUBCOMP).pid == 7
    got = [sub.recv_publish()]
    got += [p for p in sub.recv_all(0.7) if p.type == r.PUBLISH]
    assert [p.payload for p in got] == [b"once"], got
    # After PUBCOMP the id is free again: a new message with id 7 is new.
    pub.send(r.publish(topic, b"again", qos=2, pid=7, version=version))
    assert pub.recv_type(r.PUBREC).pid == 7
    pub.send(r.pubrel(7, version))
    assert pub.recv_type(r.PUBCOMP).pid == 7
    assert sub.recv_publish().payload == b"again"
    sub.disconnect()
    pub.disconnect()


def test_packet_ids_distinct_while_in_flight(broker):
    topic = unique("pids")
    sub = r.RawClient(broker.port, version=4)
    sub.connect(unique())
    sub.subscribe([(topic, 1)])
    pub = r.RawClient(broker.port, version=4)
    pub.connect(unique())
    for i in range(10):
        pub.publish(topic, b"%d" % i, qos=1)
    got = [sub.recv_publish(ack=False) for _ in range(10)]
    pids = [p.pid for p in got]
    assert all(1 <= x <= 65535 for x in pids)
    assert len(set(pids)) == 10, pids
    assert [p.payload for p in got] == [b"%d" % i for i in range(10)]
    for p in got:
        sub.ack(p)
    sub.disconnect()
    pub.disconnect()


def test_puback_carries_publisher_packet_id(broker):
    pub = r.RawClient(broker.port, version=4)
    pub.connect(unique())
    for pid in (1, 300, 65535):
        ack = pub.publish(unique("noone"), b"x", qos=1, pid=pid)
        assert ack.pid == pid
    pub.disconnect()


def test_v5_puback_without_subscribers_is_success(broker):
    pub = r.RawClient(broker.port, version=5)
    pub.connect(unique())
    ack = pub.publish(unique("nobody"), b"x", qos=1)
    assert ack.rc in (0x00, 0x10), ack  # success / no matching subscribers
    pub.disconnect()


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 200000])
def test_payload_sizes_and_binary_intact(broker, size):
    """Remaining-length boundaries (1/2/3-byte varints) and binary payloads."""
    topic = unique("size")
    payload = bytes((i * 7 + 3) % 256 for i in range(size))
    sub = r.RawClient(broker.port, version=5)
    sub.connect(unique())
    sub.subscribe([(topic, 1)])
    pub = r.RawClient(broker.port, version=5)
    pub.connect(unique())
    pub.publish(topic, payload, qos=1)
    m = sub.recv_publish()
    assert m.topic == topic and m.payload == payload
    sub.disconnect()
    pub.disconnect()


def test_message_order_1000_qos1(broker):
    topic = unique("order")
    sub = PahoClient(broker, version=V311)
    sub.subscribe(topic, 1)
    pub = PahoClient(broker, version=V311)
    infos = [pub.publish(topic, b"%d" % i, qos=1, wait=False) for i in range(1000)]
    for info in infos:
        info.wait_for_publish(10)
    msgs = sub.get_n(1000, timeout=10)
    assert [int(m.payload) for m in msgs] == list(range(1000))
    pub.disconnect()
    sub.disconnect()


def test_unicode_topic_delivered(broker):
    topic = unique("größe/温度")
    sub = PahoClient(broker, version=V5)
    sub.subscribe(topic, 1)
    pub = PahoClient(broker, version=V5)
    pub.publish(topic, "ü".encode(), qos=1)
    m = sub.get()
    assert m.topic == topic and m.payload == "ü".encode()
    pub.disconnect()
    sub.disconnect()
