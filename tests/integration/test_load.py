"""test_load.py - many concurrent clients and multi-threaded delivery (loopback,
bounded sizes so the suite stays fast)."""

import threading

import pytest

import mqttraw as r
from clients import V311, V5, PahoClient, unique

N_CLIENTS = 200


def test_200_concurrent_raw_clients_ring(broker):
    """200 clients each subscribe to their own topic and a common one; each
    publishes to its neighbour's topic; then one broadcast reaches all."""
    base = unique("ring")
    clients = []
    for i in range(N_CLIENTS):
        c = r.RawClient(broker.port, version=5 if i % 2 else 4)
        c.connect(unique("c%d" % i))
        c.subscribe([("%s/%d" % (base, i), 1), (base + "/all", 0)])
        clients.append(c)
    for i, c in enumerate(clients):
        c.publish("%s/%d" % (base, (i + 1) % N_CLIENTS), b"from-%d" % i, qos=1)
    for i, c in enumerate(clients):
        m = c.recv_publish(timeout=5)
        assert (m.topic, m.payload) == ("%s/%d" % (base, i),
                                        b"from-%d" % ((i - 1) % N_CLIENTS))
    clients[0].publish(base + "/all", b"broadcast", qos=1)
    for c in clients:
        m = c.recv_publish(timeout=5)
        assert (m.topic, m.payload) == (base + "/all", b"broadcast")
    for c in clients:
        c.disconnect()
    assert broker.running


def test_200_paho_clients_connect_concurrently(broker):
    """200 paho clients connect from threads at once; each then receives a
    message addressed to it."""
    base = unique("paho200")
    clients, errors = [None] * N_CLIENTS, []

    def start(i):
        try:
            c = PahoClient(broker, version=V5 if i % 2 else V311)
            c.subscribe("%s/%d" % (base, i), 1)
            clients[i] = c
        except Exception as e:  # reported below with its index
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    try:
        assert not errors, errors[:5]
        assert all(clients), "some clients did not finish connecting"
        pub = r.RawClient(broker.port, version=4)
        pub.connect(unique())
        for i in range(N_CLIENTS):
            pub.publish("%s/%d" % (base, i), b"to-%d" % i, qos=1)
        for i, c in enumerate(clients):
            m = c.get(timeout=5)
            assert m.payload == b"to-%d" % i
        pub.disconnect()
    finally:
        for c in clients:
            if c is not None:
                c.close()


def test_fan_in_many_publishers_order_per_publisher(broker):
    topic = unique("fanin")
    sub = r.RawClient(broker.port, version=5)
    sub.connect(unique())
    sub.subscribe([(topic + "/#", 1)])
    pubs = []
    for i in range(50):
        p = r.RawClient(broker.port, version=4)
        p.connect(unique())
        pubs.append(p)
    for k in range(20):
        for i, p in enumerate(pubs):
            p.publish("%s/%d" % (topic, i), b"%d" % k, qos=1, wait=False)
    for p in pubs:
        for _ in range(20):
            p.recv_type(r.PUBACK, timeout=5)
    seen = {}
    for _ in range(50 * 20):
        m = sub.recv_publish(timeout=5)
        seen.setdefault(m.topic, []).append(int(m.payload))
    assert len(seen) == 50
    assert all(v == list(range(20)) for v in seen.values()), "per-publisher order broken"
    sub.disconnect()
    for p in pubs:
        p.disconnect()


@pytest.mark.parametrize("threads", [2])
def test_threads_cross_delivery(broker_factory, threads):
    """With several I/O threads, clients (spread over the threads) deliver to
    each other: 20 subscribers x 20 publishers x 10 messages."""
    b = broker_factory(threads=threads)
    base = unique("thr")
    subs = []
    for i in range(20):
        c = r.RawClient(b.port, version=5 if i % 2 else 4)
        c.connect(unique("s%d" % i))
        c.subscribe([(base + "/#", 1)])
        subs.append(c)
    pubs = []
    for i in range(20):
        c = r.RawClient(b.port, version=4 if i % 2 else 5)
        c.connect(unique("p%d" % i))
        pubs.append(c)
    for k in range(10):
        for i, p in enumerate(pubs):
            p.publish("%s/%d" % (base, i), b"%d" % k, qos=1, wait=False)
    for p in pubs:
        for _ in range(10):
            p.recv_type(r.PUBACK, timeout=5)
    for s in subs:
        seen = {}
        for _ in range(200):
            m = s.recv_publish(timeout=5)
            seen.setdefault(m.topic, []).append(int(m.payload))
        assert len(seen) == 20
        assert all(v == list(range(10)) for v in seen.values())
    for c in subs + pubs:
        c.disconnect()


def test_threads_shared_subscription_across_threads(broker_factory):
    b = broker_factory(threads=2)
    topic, group = unique("thrshare"), unique("g")
    members = []
    for _ in range(4):
        c = r.RawClient(b.port, version=5)
        c.connect(unique())
        c.subscribe([("$share/%s/%s" % (group, topic), 1)])
        members.append(c)
    pub = r.RawClient(b.port, version=5)
    pub.connect(unique())
    for i in range(100):
        pub.publish(topic, b"%d" % i, qos=1)
    got = []
    for c in members:
        got += [int(p.payload) for p in c.recv_publishes(1.0)]
    assert sorted(got) == list(range(100))
    for c in members + [pub]:
        c.disconnect()
