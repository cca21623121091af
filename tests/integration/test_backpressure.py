"""test_backpressure.py - slow and stuck consumers: publishers are paused
rather than messages dropped, memory stays bounded, and a consumer that stays
stuck is disconnected so that publishers resume."""

import threading
import time

import mqttraw as r
from clients import unique
from conftest import skip_on_mosquitto



def pipelined_publisher(broker, topic, n, qos=1):
    """Sends n numbered QoS 1 PUBLISHes without waiting, and collects the
    PUBACK arrival times in a thread. Returns (client, thread, times)."""
    pub = r.RawClient(broker.port, version=4, timeout=30)
    pub.connect(unique("pub"))
    times = []

    def acks():
        while len(times) < n:
            try:
                pub.recv_type(r.PUBACK, timeout=15)
            except (TimeoutError, r.Closed):
                return
            times.append(time.monotonic())

    t = threading.Thread(target=acks, daemon=True)
    t.start()
    data = b"".join(r.publish(topic, b"%08d" % i, qos=qos, pid=(i % 65535) + 1)
                    for i in range(n))
    pub.send(data)
    return pub, t, times


def test_slow_consumer_loses_nothing(broker_factory):
    skip_on_mosquitto("thinghz back-pressure")
    # Queues far smaller than the burst: without back-pressure most of the
    # burst would overflow the subscriber's queue and be dropped.
    b = broker_factory(max_queued_messages=50, max_inflight=10, max_outbuf=8192)
    topic = unique("bp/slow")
    sub = r.RawClient(b.port, version=4, timeout=30)
    sub.connect(unique("sub"))
    sub.subscribe([(topic, 1)])
    # More than the queue bound plus the cross-thread headroom (16384), so
    # that without back-pressure thousands would be dropped.
    n = 20000
    pub, t, times = pipelined_publisher(b, topic, n)
    got = []
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        p = sub.recv_publish(timeout=10)
        got.append(int(p.payload))
        if len(got) % 500 == 0:
            time.sleep(0.01)  # a consumer slower than the publisher
    t.join(10)
    assert got == list(range(n)), "lost or reordered: %d of %d" % (len(got), n)
    assert len(times) == n
    pub.close()
    sub.close()


def test_stuck_consumer_is_disconnected_and_publishers_resume(broker_factory):
    skip_on_mosquitto("thinghz slow-consumer-timeout")
    b = broker_factory(max_queued_messages=20, max_inflight=5, max_outbuf=8192,
                       slow_consumer_timeout=1)
    topic = unique("bp/stuck")
    stuck = r.RawClient(b.port, version=5, timeout=30)
    stuck.connect(unique("stuck"))
    stuck.subscribe([(topic, 1)])  # and never reads or acknowledges again
    # More than one socket read's worth: a thread pauses a publisher between
    # reads, so the first read (up to 64 KiB) is always processed whole.
    n = 20000
    start = time.monotonic()
    pub, t, times = pipelined_publisher(b, topic, n)
    t.join(15)
    assert len(times) == n, "publisher got %d of %d PUBACKs" % (len(times), n)
    # The publisher was held back until the stuck consumer was dropped
    # (slow-consumer-timeout 1 s); without back-pressure every PUBACK would
    # arrive within milliseconds.
    assert times[-1] - start > 0.8
    # The stuck consumer was told why (v5 DISCONNECT 0x97) and closed.
    pkts = stuck.recv_all(5)
    assert stuck.closed
    disc = [p for p in pkts if p.type == r.DISCONNECT]
    assert disc and disc[-1].rc == 0x97
    pub.close()
