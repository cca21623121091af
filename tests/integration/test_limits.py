"""test_limits.py - the limits and fairness settings (docs/OPERATIONS.md
"Limits"): each one hit by real clients (paho v5 for reason codes,
mosquitto_pub and paho for 3.1.1), answered with the protocol's own error,
counted in /metrics (thinghz_mqtt_limit_hits_total) and logged, while
clients within the limits are unaffected."""

import re
import subprocess
import threading
import time

import requests

import mqttraw as r
from clients import V5, V311, PahoClient, mosquitto_pub, unique, wait_until
from conftest import skip_on_mosquitto


def limit_hits(b, limit):
    text = requests.get("http://127.0.0.1:%d/metrics" % b.http_port, timeout=5).text
    m = re.search(r'^thinghz_mqtt_limit_hits_total\{limit="%s"\} (\d+)' % limit, text, re.M)
    return int(m.group(1)) if m else None


def metric(b, name, label, value):
    text = requests.get("http://127.0.0.1:%d/metrics" % b.http_port, timeout=5).text
    m = re.search(r'^%s\{%s="%s"\} (\d+)' % (name, label, value), text, re.M)
    return int(m.group(1)) if m else None


def test_connections_per_tenant(broker_factory):
    skip_on_mosquitto("thinghz limits")
    b = broker_factory(max_connections_per_tenant=2)
    a1, a2 = PahoClient(b), PahoClient(b, version=V311)
    # the third client of the (default) tenant: v5 0x97 quota exceeded
    c = PahoClient(b, expect_rc=None)
    assert c.connack["rc"] == 0x97
    c.close()
    # 3.1.1 has no such code: 3 server unavailable
    p = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(b.port), "-V", "mqttv311",
                        "-t", "x", "-m", "y"], capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and "unavailable" in (p.stdout + p.stderr).lower()
    # a slot that frees up is usable again; the connected ones kept working
    a2.disconnect()
    assert wait_until(lambda: PahoClient(b, expect_rc=None).connack["rc"] == 0, timeout=5)
    t = unique("lim/t")
    a1.subscribe(t, 1)
    a1.publish(t, b"ok", qos=1)
    assert a1.get().payload == b"ok"
    assert limit_hits(b, "tenant_connections") >= 2
    assert metric(b, "thinghz_mqtt_connections_refused_total", "reason", "quota_exceeded") >= 2
    assert "limit tenant_connections" in b.log_text()


def test_connect_rate_per_address(broker_factory):
    skip_on_mosquitto("thinghz limits")
    b = broker_factory(max_connect_rate=2, connect_burst=3)
    codes = []
    for _ in range(6):
        c = PahoClient(b, expect_rc=None)
        codes.append(c.connack["rc"])
        c.close()
    # the burst passes, then 0x9F connection rate exceeded
    assert codes[:3] == [0, 0, 0] and 0x9F in codes[3:], codes
    raw = r.RawClient(b.port, version=4)
    raw.send(r.connect(unique("v3")))
    assert raw.recv(5).rc == 3  # 3.1.1: server unavailable
    # the bucket refills at 2/s
    time.sleep(1.2)
    PahoClient(b).close()
    assert limit_hits(b, "connect_rate") >= 2
    assert metric(b, "thinghz_mqtt_connections_refused_total", "reason", "connection_rate") >= 2


def test_publish_rate_disconnect_and_drop(broker_factory):
    skip_on_mosquitto("thinghz limits")
    b = broker_factory(max_publish_rate=5, publish_burst=5)
    t = unique("lim/rate")
    sub = PahoClient(b)
    sub.subscribe(t, 1)
    # within the rate: all delivered
    calm = PahoClient(b)
    for i in range(4):
        calm.publish(t, b"c%d" % i, qos=1)
    assert len(sub.get_n(4)) == 4
    # a burst far over it: v5 DISCONNECT 0x96 message rate too high
    fast = r.RawClient(b.port, version=5)
    fast.connect(unique("fast"))
    fast.send(b"".join(r.publish(t, b"f", qos=0, version=5) for _ in range(50)))
    pkts = fast.recv_all(3)
    assert fast.closed
    assert [p.rc for p in pkts if p.type == r.DISCONNECT] == [0x96]
    assert limit_hits(b, "publish_rate") >= 1
    # the calm client is still connected and served
    calm.publish(t, b"after", qos=1)
    got = [m.payload for m in sub.drain(1.0)]
    assert b"after" in got

    # publish-rate-action drop: the excess is dropped and counted, v5 QoS 1
    # gets PUBACK 0x97, and the connection stays
    b2 = broker_factory(max_publish_rate=5, publish_burst=5, publish_rate_action="drop")
    c = r.RawClient(b2.port, version=5)
    c.connect(unique("drop"))
    rcs = [c.publish(unique("lim/d"), b"x", qos=1).rc for _ in range(12)]
    assert rcs[:5] == [0x10] * 5 and 0x97 in rcs[5:], rcs  # 0x10: no subscribers
    assert not c.is_closed(0.3)
    assert metric(b2, "thinghz_mqtt_messages_dropped_total", "reason", "publish_rate") >= 1


def test_subscriptions_topic_length_and_levels(broker_factory):
    skip_on_mosquitto("thinghz limits")
    b = broker_factory(max_subscriptions=3, max_topic_length=64, max_topic_levels=4)
    c = PahoClient(b)
    base = unique("s")
    codes = c.subscribe([(base + "/%d" % i, 1) for i in range(5)])
    assert codes == [1, 1, 1, 0x97, 0x97]
    # re-subscribing to a filter it holds is not a new subscription
    assert c.subscribe(base + "/0", 0) == [0]
    # filters: too long, too deep -> 0x8F
    c2 = PahoClient(b)
    assert c2.subscribe([("a" * 65, 0), ("a/b/c/d/e", 0), ("a/b/c/d", 0)]) == [0x8F, 0x8F, 0]
    # 3.1.1 SUBACK failure 0x80
    v3 = PahoClient(b, version=V311)
    assert v3.subscribe("x/" * 10 + "y", 0) == [0x80]
    # publish: v5 QoS 1 PUBACK 0x90, connection stays; QoS 0 DISCONNECT 0x90
    raw = r.RawClient(b.port, version=5)
    raw.connect(unique("deep"))
    assert raw.publish("a/b/c/d/e", b"x", qos=1).rc == 0x90
    assert raw.publish("l" * 65, b"x", qos=1).rc == 0x90
    assert raw.publish("a/b/c/d", b"x", qos=1).rc == 0  # within limits (c2 matches)
    raw.send(r.publish("a/b/c/d/e/f", b"x", qos=0, version=5))
    pkts = raw.recv_all(2)
    assert [p.rc for p in pkts if p.type == r.DISCONNECT] == [0x90] and raw.closed
    # 3.1.1: the connection is closed
    v3raw = r.RawClient(b.port, version=4)
    v3raw.connect(unique("v3"))
    v3raw.send(r.publish("a/b/c/d/e", b"x", qos=1, pid=1))
    assert v3raw.is_closed(3)
    assert limit_hits(b, "subscriptions") >= 2
    assert limit_hits(b, "topic_length") >= 2
    assert limit_hits(b, "topic_levels") >= 3


def test_retained_per_tenant(broker_factory):
    skip_on_mosquitto("thinghz limits")
    b = broker_factory(max_retained_per_tenant=2)
    base = unique("ret")
    c = r.RawClient(b.port, version=5)
    c.connect(unique("r"))
    live = PahoClient(b)
    live.subscribe(base + "/#", 1)
    assert c.publish(base + "/1", b"a", qos=1, retain=True).rc == 0
    assert c.publish(base + "/2", b"b", qos=1, retain=True).rc == 0
    # a third retained topic is refused (0x97) but still delivered live
    assert c.publish(base + "/3", b"c", qos=1, retain=True).rc == 0x97
    # replacing an existing one is fine
    assert c.publish(base + "/1", b"a2", qos=1, retain=True).rc == 0
    got = sorted(m.payload for m in live.get_n(4))
    assert got == [b"a", b"a2", b"b", b"c"]
    late = PahoClient(b)
    late.subscribe(base + "/#", 1)
    retained = sorted((m.topic, m.payload) for m in late.drain(1.0))
    assert retained == [(base + "/1", b"a2"), (base + "/2", b"b")]
    # clearing one frees a slot (3.1.1 via mosquitto_pub)
    mosquitto_pub(b.port, base + "/2", "", retain=True, version="mqttv311")
    assert c.publish(base + "/3", b"c2", qos=1, retain=True).rc == 0
    assert limit_hits(b, "retained") >= 1


def test_payload_size(broker_factory):
    skip_on_mosquitto("thinghz limits")
    b = broker_factory(max_payload_size=100)
    t = unique("pl")
    sub = PahoClient(b)
    sub.subscribe(t, 1)
    c = r.RawClient(b.port, version=5)
    c.connect(unique("p"))
    assert c.publish(t, b"x" * 101, qos=1).rc == 0x97
    assert c.publish(t, b"x" * 100, qos=1).rc == 0
    assert sub.get().payload == b"x" * 100
    sub.expect_none(0.3)
    c.send(r.publish(t, b"x" * 200, qos=0, version=5))
    pkts = c.recv_all(2)
    assert [p.rc for p in pkts if p.type == r.DISCONNECT] == [0x95] and c.closed
    # 3.1.1 (mosquitto_pub): closed, nothing delivered
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(b.port), "-V", "mqttv311",
                    "-t", t, "-m", "y" * 500, "-q", "1"], capture_output=True, timeout=10)
    sub.expect_none(0.3)
    assert limit_hits(b, "payload_size") >= 3


def test_low_rate_publisher_is_not_paused_by_a_stuck_consumer(broker_factory):
    """Default back-pressure: a stuck '#' subscriber pauses a saturating
    publisher, but a publisher under backpressure-exempt-rate (100/s) whose
    messages also reach the stuck subscriber keeps its normal round trip."""
    skip_on_mosquitto("thinghz back-pressure")
    b = broker_factory(max_outbuf=8192, slow_consumer_timeout=30)
    stuck = r.RawClient(b.port, version=4)
    stuck.connect(unique("stuck"))
    stuck.subscribe([("#", 0)])  # never reads again
    fast = r.RawClient(b.port, version=4)
    fast.connect(unique("fast"))
    fast.send(r.publish(unique("flood"), b"x" * 200, qos=0) * 20000)
    probe = PahoClient(b)
    t = unique("probe")
    probe.subscribe(t, 1)
    worst = 0
    for i in range(20):
        start = time.monotonic()
        probe.publish(t, b"%d" % i, qos=1)
        assert probe.get(5).payload == b"%d" % i
        worst = max(worst, time.monotonic() - start)
        time.sleep(0.03)
    assert worst < 1.0, worst
    assert metric(b, "thinghz_mqtt_messages_dropped_total", "reason", "qos0_outbuf") > 0


def test_slow_qos0_consumer_never_pauses_a_publisher(broker_factory):
    """--backpressure queued: a subscriber that does not read its QoS 0
    messages costs only its own messages (dropped at max-outbuf, counted);
    even a saturating publisher is never paused and the other subscriber
    gets everything."""
    skip_on_mosquitto("thinghz back-pressure")
    b = broker_factory(max_outbuf=8192, slow_consumer_timeout=30, backpressure="queued")
    t = unique("bp/q0")
    stuck = r.RawClient(b.port, version=4)
    stuck.connect(unique("stuck"))
    stuck.subscribe([(t, 0)])  # never reads again
    good = r.RawClient(b.port, version=4, timeout=30)
    good.connect(unique("good"))
    good.subscribe([(t, 1)])
    n = 20000
    got = []

    def read_good():
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            try:
                good.recv_publish(timeout=10)
            except (TimeoutError, r.Closed):
                return
            got.append(1)

    reader = threading.Thread(target=read_good, daemon=True)
    reader.start()
    pub = r.RawClient(b.port, version=4, timeout=30)
    pub.connect(unique("pub"))
    start = time.monotonic()
    pub.send(b"".join(r.publish(t, b"%08d" % i + b"x" * 200, qos=1, pid=i % 65535 + 1)
                      for i in range(n)))
    acks = 0
    while acks < n:
        pub.recv_type(r.PUBACK, timeout=15)
        acks += 1
    took = time.monotonic() - start
    reader.join(30)
    assert len(got) == n
    assert metric(b, "thinghz_mqtt_messages_dropped_total", "reason", "qos0_outbuf") > 0
    # nothing held the publisher back: 20,000 acknowledgements come at once
    assert took < 10, took
