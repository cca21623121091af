"""test_regressions.py - regression tests for broker defects found in review.

Each test replays one reviewer reproduction (scripts kept in /tmp/rv/ at the
time) and asserts the correct behaviour:

1. resuming paused publishers re-entrantly inside routing mixed up topics and
   corrupted the heap;
2. a clean-start reconnect handled on another thread deleted the new
   session's stored records (lost after kill -9);
3. a client that never reads but floods PINGREQ / QoS 1 PUBLISH grew the
   broker's memory without bound;
4. a healthy client that both publishes and subscribes was paused, its acks
   were not read and it was disconnected as a slow consumer (0x97);
5. an outbound topic alias was recorded for a PUBLISH that was then dropped
   (too big for the client), so a later PUBLISH used an unknown alias;
6. the in-flight slot of a message that expired while its session was offline
   was never freed, so nothing more was delivered;
7. Will Message Expiry was counted from CONNECT instead of publication;
8. a graceful stop extended the expiry of offline sessions.

Every wait is bounded; everything runs on loopback.
"""

import select
import socket
import threading
import time

import pytest

import mqttraw as r
from clients import unique
from conftest import skip_on_mosquitto


def raw(broker, cid=None, version=5, timeout=5.0, **kw):
    c = r.RawClient(broker.port, version=version, timeout=timeout)
    c.connect(cid or unique("c"), **kw)
    return c


def wire_size(p):
    """Size on the wire of a received packet."""
    return 1 + len(r.varint(len(p.body))) + len(p.body)


def collect_until(c, pred, deadline, ack=True):
    """Packets from c until pred(list of packets so far) or the deadline
    (PUBLISHes acknowledged as they come). Stops on close."""
    out = []
    while not pred(out):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            p = c.recv(min(left, 0.5))
        except TimeoutError:
            continue
        except r.Closed:
            break
        out.append(p)
        if ack and p.type == r.PUBLISH and p.qos:
            c.ack(p)
    return out


def vmrss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def round_trip(broker, topic, timeout=5.0):
    """A fresh subscriber and publisher on topic: the message arrives."""
    sub = raw(broker, unique("rt-sub"))
    sub.subscribe([(topic, 1)])
    pub = raw(broker, unique("rt-pub"))
    pub.publish(topic, b"ping", qos=1, timeout=timeout)
    m = sub.recv_publish(timeout=timeout)
    assert (m.topic, m.payload) == (topic, b"ping")
    sub.disconnect()
    pub.disconnect()


# ------------------------------------------------------------------ 1

def test_resume_inside_routing_keeps_topics_apart(broker_factory):
    """A congested QoS 2 consumer drains through PUBREC error codes and
    publishes in the same segment: the publishers resumed by that must not be
    processed inside the routing of its PUBLISH."""
    skip_on_mosquitto("thinghz back-pressure")
    b = broker_factory(threads=1, max_queued_messages=8)
    ta, tz = unique("ra"), unique("rz")
    # C: Receive Maximum 1, so everything past the first message queues.
    C = raw(b, "C", props={r.RECEIVE_MAXIMUM: 1})
    C.subscribe([(ta, 2)])
    zs = []
    for i in range(100):
        c = raw(b, "z%d" % i)
        c.subscribe([(tz, 0)])
        zs.append(c)
    As = []
    for i in range(50):
        c = raw(b, "a%d" % i)
        c.subscribe([(ta, 0)])
        As.append(c)
    w = raw(b, "warm")
    w.publish(tz, b"warm")
    time.sleep(0.3)
    # 6 messages for C: 1 in flight, 5 queued > 8/2, so C is congested and
    # the publisher paused.
    p0 = raw(b, "p0")
    for _ in range(6):
        p0.publish(ta, b"fill", qos=2, wait=False)
    first = C.recv_type(r.PUBLISH, timeout=5)
    time.sleep(0.3)
    # P is paused between its two PUBLISHes.
    P = raw(b, "P")
    P.send(r.publish(tz + "2", b"first", version=5) + r.publish(tz, b"SECOND", version=5))
    time.sleep(0.3)
    # C refuses its in-flight messages one after the other (each PUBREC
    # error frees the slot for the next queued one, draining C's queue, which
    # resumes the paused publishers) and publishes in the same segment.
    C.send(b"".join(r.pubrec(first.pid + k, 5, 0x80) for k in range(5))
           + r.publish(ta, b"from-C", version=5))

    deadline = time.monotonic() + 3.0
    wrong = []
    missing_second = []

    def has_second(ps):
        return any(p.type == r.PUBLISH and p.payload == b"SECOND" for p in ps)

    for i, c in enumerate(zs):
        got = collect_until(c, has_second, max(deadline, time.monotonic() + 0.02))
        got += c.recv_all(0.01)
        pubs = [p for p in got if p.type == r.PUBLISH]
        wrong += [("z%d" % i, p.topic, bytes(p.payload)) for p in pubs if p.topic != tz]
        if not has_second(pubs):
            missing_second.append("z%d" % i)
    for i, c in enumerate(As):
        pubs = [p for p in c.recv_all(0.02) if p.type == r.PUBLISH]
        wrong += [("a%d" % i, p.topic, bytes(p.payload)) for p in pubs if p.topic != ta]
    assert not wrong, "subscribers got messages of topics they never subscribed to: %r" % (
        wrong[:10],)
    assert b.running, "broker died (exit %r)" % b.proc.returncode
    assert not missing_second, "paused publisher P not resumed: no SECOND for %r" % (
        missing_second[:10],)
    # Guard for the scenario itself: the five refusals drained C's queue, so
    # the sixth message is now in flight to C.
    c_pubs = [bytes(p.payload) for p in C.recv_all(0.3) if p.type == r.PUBLISH]
    assert b"fill" in c_pubs, "C's queue was not drained by its PUBREC errors: %r" % c_pubs

    # The heap corruption showed when these connections went away.
    for c in zs + As + [C, w, p0, P]:
        c.close()
    time.sleep(0.5)
    assert b.running, "broker died after clients closed (exit %r)" % b.proc.returncode
    round_trip(b, unique("after"))
    b.stop()  # asserts exit code 0


# ------------------------------------------------------------------ 2

def test_clean_start_reconnect_on_other_thread_keeps_new_session(broker_factory):
    """A clean-start reconnect discards the old session; when it is handled
    on another I/O thread, the old session's deletion must not delete the
    new session's stored records.

    The new sessions stay connected until the kill -9: a DISCONNECT before it
    rewrites the session's records and hides the loss. Their messages are
    unacknowledged (Receive Maximum 1: one in flight, one queued) and must
    come back after the restart."""
    skip_on_mosquitto("thinghz I/O threads")
    b = broker_factory(threads=4)
    n = 12  # with 4 threads, most reconnects land on another thread
    exp = {r.SESSION_EXPIRY: 600}
    props = {r.SESSION_EXPIRY: 600, r.RECEIVE_MAXIMUM: 1}
    ids = [unique("k%d" % i) for i in range(n)]
    keep = []
    for i, cid in enumerate(ids):
        c = raw(b, cid, clean=False, props=exp)
        c.subscribe([("old/%d" % i, 1)])
        c.disconnect()
        time.sleep(0.05)
        c = r.RawClient(b.port, version=5)
        ack = c.connect(cid, clean=True, props=props)
        assert not ack.session_present
        c.subscribe([("new/%d" % i, 1)])
        keep.append(c)  # stays connected, never reads again
    pub = raw(b, unique("pub"))
    for i in range(n):
        pub.publish("old/%d" % i, b"stale%d" % i, qos=1)
        for k in range(2):
            pub.publish("new/%d" % i, b"q%d-%d" % (i, k), qos=1)
    pub.disconnect()
    time.sleep(0.3)
    b.restart(kill=True)  # SIGKILL after 0.5 s
    for c in keep:
        c.close()

    clients, problems = [], []
    for i, cid in enumerate(ids):
        c = r.RawClient(b.port, version=5)
        ack = c.connect(cid, clean=False, props=exp)
        if not ack.session_present:
            problems.append("%s: session_present=0 after restart" % cid)
        clients.append(c)
    deadline = time.monotonic() + 4.0
    for i, c in enumerate(clients):
        got = collect_until(c, lambda ps: sum(p.type == r.PUBLISH for p in ps) >= 2,
                            max(deadline, time.monotonic() + 0.05))
        pays = [bytes(p.payload) for p in got if p.type == r.PUBLISH]
        if pays != [b"q%d-0" % i, b"q%d-1" % i]:
            problems.append("%s: messages after restart %r" % (ids[i], pays))
    # The new subscription is live; the discarded one is not.
    pub = raw(b, unique("pub"))
    for i in range(n):
        pub.publish("old/%d" % i, b"stale-live", qos=1)
        pub.publish("new/%d" % i, b"live%d" % i, qos=1)
    deadline = time.monotonic() + 4.0
    for i, c in enumerate(clients):
        got = collect_until(c, lambda ps: any(p.type == r.PUBLISH and p.payload.startswith(b"live")
                                              for p in ps),
                            max(deadline, time.monotonic() + 0.05))
        got += c.recv_all(0.01)
        pays = [bytes(p.payload) for p in got if p.type == r.PUBLISH]
        if pays != [b"live%d" % i]:
            problems.append("%s: live messages %r" % (ids[i], pays))
        c.disconnect()
    pub.disconnect()
    assert not problems, "%d of %d sessions broken:\n%s" % (
        len({p.split(":")[0] for p in problems}), n, "\n".join(problems))


# ------------------------------------------------------------------ 3

GROWTH_LIMIT_KB = 48 * 1024


def _flood_chunk(kind):
    if kind == "pingreq":
        return r.pingreq() * 32768
    # QoS 1 PUBLISHes to a topic nobody subscribed to: each one is answered
    # with a PUBACK the client never reads.
    # (7 bytes in, 4 bytes out each.)
    return b"".join(r.publish("n", b"", qos=1, pid=k + 1) for k in range(8192))


@pytest.mark.parametrize("kind", ["pingreq", "qos1_no_subscriber"])
def test_non_reading_flooder_keeps_memory_bounded(broker_factory, kind):
    skip_on_mosquitto("thinghz memory bound")
    b = broker_factory(threads=1)
    pid = b.proc.pid
    rss0 = vmrss_kb(pid)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", b.port))
    s.sendall(r.connect(unique("flood"), version=4))
    connack = s.recv(4)
    assert connack[:1] == b"\x20", connack
    s.setblocking(False)
    chunk = memoryview(_flood_chunk(kind))
    stop = threading.Event()
    stats = {"sent": 0, "closed": False}

    def flood():
        # A cyclic stream of whole packets: the offset wraps at the chunk
        # end, so partial sends never corrupt the packet framing.
        off = 0
        end = time.monotonic() + 3.5
        while not stop.is_set() and time.monotonic() < end:
            _, wr, _ = select.select([], [s], [], 0.2)
            if not wr:
                continue
            try:
                k = s.send(chunk[off:])
            except BlockingIOError:
                continue
            except OSError:
                stats["closed"] = True
                return
            stats["sent"] += k
            off = (off + k) % len(chunk)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    peak = rss0
    served = None
    start = time.monotonic()
    try:
        while t.is_alive() and time.monotonic() - start < 5:
            peak = max(peak, vmrss_kb(pid))
            if served is None and time.monotonic() - start > 1.5:
                # Other clients are still served while the flood goes on.
                round_trip(b, unique("other"))
                served = time.monotonic() - start
            time.sleep(0.1)
        peak = max(peak, vmrss_kb(pid))
    finally:
        stop.set()
        t.join(2)
    s.close()
    assert served is not None, "flood ended before other clients could be checked"
    # A correct broker stops reading (or drops the client) once the replies
    # it cannot send reach max-outbuf (8 MiB by default): a few MiB of
    # growth. Unbounded, the growth was 70-500 MB within the 3.5 s here.
    assert peak - rss0 < GROWTH_LIMIT_KB, (
        "broker VmRSS grew from %d kB to %d kB while a non-reading client sent %.1f MB of %s"
        % (rss0, peak, stats["sent"] / 1e6, kind))
    assert b.running
    round_trip(b, unique("after"))


# ------------------------------------------------------------------ 4

def test_publishing_subscriber_that_acks_is_not_stalled(broker_factory):
    """x is paused as a publisher while another consumer is congested, then
    becomes behind as a consumer itself: its PUBACKs must still be read, so it
    is never disconnected as a slow consumer and gets its messages."""
    skip_on_mosquitto("thinghz back-pressure")
    sct = 3
    b = broker_factory(threads=1, max_queued_messages=8, slow_consumer_timeout=sct)
    ta, tb = unique("bpa"), unique("bpb")
    s1 = raw(b, "s1", props={r.RECEIVE_MAXIMUM: 1})
    s1.subscribe([(ta, 1)])
    p = raw(b, "p")
    for _ in range(8):  # s1 never acks: its queue exceeds 8/2, it is congested
        p.publish(ta, b"x", qos=1, wait=False)
    x = raw(b, "x", props={r.RECEIVE_MAXIMUM: 1})
    x.subscribe([(tb, 1)])
    x.publish(unique("c"), b"hello", qos=0)  # x is paused now (s1 congested)
    t0 = time.monotonic()
    qs = []
    for i in range(7):
        q = raw(b, "q%d" % i)
        q.publish(tb, b"to-x-%d" % i, qos=1, wait=False)
        qs.append(q)
    got, disc, s1_gone = [], [], False
    closed = False
    # x reads and acknowledges everything promptly; s1 goes away after 0.5 s.
    deadline = t0 + sct + 2.5
    while time.monotonic() < deadline:
        if not s1_gone and time.monotonic() - t0 > 0.5:
            s1.close()
            s1_gone = True
        try:
            pk = x.recv(0.1)
        except TimeoutError:
            continue
        except r.Closed:
            closed = True
            break
        if pk.type == r.PUBLISH:
            x.ack(pk)
            got.append(bytes(pk.payload))
        elif pk.type == r.DISCONNECT:
            disc.append(pk.rc)
    assert not disc and not closed, (
        "x disconnected after %.1fs (DISCONNECT %r), got %r"
        % (time.monotonic() - t0, ["0x%02x" % rc for rc in disc], got))
    assert sorted(got) == sorted(b"to-x-%d" % i for i in range(7)), got
    # Still connected and served.
    x.send(r.pingreq())
    assert x.recv_type(r.PINGRESP, timeout=3).type == r.PINGRESP
    for c in qs + [p, x]:
        c.close()


# ------------------------------------------------------------------ 5

def test_topic_alias_not_recorded_for_dropped_publish(broker):
    topic = unique("al")
    sub = raw(broker, unique("sub"),
              props={r.TOPIC_ALIAS_MAXIMUM: 10, r.MAXIMUM_PACKET_SIZE: 200})
    sub.subscribe([(topic, 0)])
    pub = raw(broker, unique("pub"))
    pub.publish(topic, b"x" * 500)  # too big for sub: must be dropped
    pub.publish(topic, b"small")
    pub.publish(topic, b"small2")
    pkts = [p for p in sub.recv_all(1.0) if p.type == r.PUBLISH]
    known, bad, effective = {}, [], []
    for p in pkts:
        assert wire_size(p) <= 200, "PUBLISH of %d bytes exceeds Maximum Packet Size 200" % (
            wire_size(p))
        alias = p.props.get(r.TOPIC_ALIAS)
        if p.topic:
            if alias is not None:
                known[alias] = p.topic
            effective.append((p.topic, bytes(p.payload)))
        else:
            if alias not in known:
                bad.append(p)
            effective.append((known.get(alias), bytes(p.payload)))
    assert not bad, "PUBLISH with an empty topic and an alias never sent with a topic: %r" % bad
    assert effective == [(topic, b"small"), (topic, b"small2")], effective
    sub.disconnect()
    pub.disconnect()


# ------------------------------------------------------------------ 6

def test_inflight_slot_freed_when_expired_resend_dropped(broker):
    cid, topic = unique("stk"), unique("q")
    props = {r.SESSION_EXPIRY: 600, r.RECEIVE_MAXIMUM: 1}
    s = raw(broker, cid, clean=True, props=props)
    s.subscribe([(topic, 1)])
    pub = raw(broker, unique("pq"))
    pub.publish(topic, b"m1", qos=1, props={r.MESSAGE_EXPIRY: 1})
    m = s.recv_publish(ack=False)
    assert m.payload == b"m1"
    s.sock.close()  # not acknowledged; the session goes offline
    time.sleep(2.5)  # m1 expires meanwhile
    for i in range(3):
        pub.publish(topic, b"n%d" % i, qos=1)
    s = r.RawClient(broker.port, version=5)
    ack = s.connect(cid, clean=False, props=props)
    assert ack.session_present
    got = collect_until(s, lambda ps: sum(p.type == r.PUBLISH and p.payload != b"m1"
                                          for p in ps) >= 3, time.monotonic() + 4.0)
    pays = [bytes(p.payload) for p in got if p.type == r.PUBLISH]
    # m1 may or may not be resent; the three later ones must come.
    assert [x for x in pays if x != b"m1"] == [b"n0", b"n1", b"n2"], (
        "after resuming, got %r (the expired m1 still holds the only in-flight slot?)" % pays)
    s.disconnect()
    pub.disconnect()


# ------------------------------------------------------------------ 7

def test_will_message_expiry_counts_from_publication(broker):
    topic = unique("will")
    sub = raw(broker, unique("wsub"))
    sub.subscribe([(topic, 0)])
    w = raw(broker, unique("wc"), keepalive=60,
            will={"topic": topic, "payload": b"gone", "props": {r.MESSAGE_EXPIRY: 2}})
    time.sleep(3)  # longer than the will's expiry, before it is published
    w.abort()
    got = [p for p in sub.recv_all(1.5) if p.type == r.PUBLISH]
    assert [(p.topic, bytes(p.payload)) for p in got] == [(topic, b"gone")], (
        "will with Message Expiry 2 s not delivered 3 s after CONNECT: %r" % got)
    exp = got[0].props.get(r.MESSAGE_EXPIRY)
    assert exp is not None and 1 <= exp <= 2, got[0].props
    sub.disconnect()


# ------------------------------------------------------------------ 8

def test_graceful_stop_does_not_extend_offline_session_expiry(broker_factory):
    b = broker_factory()
    short, long_ = unique("ex6"), unique("ex60")
    t0 = time.monotonic()
    for cid, e in ((short, 6), (long_, 60)):
        c = r.RawClient(b.port, version=5)
        ack = c.connect(cid, clean=True, props={r.SESSION_EXPIRY: e})
        assert not ack.session_present
        c.subscribe([(unique("sx"), 1)])
        c.disconnect()
    time.sleep(max(0.0, t0 + 4.0 - time.monotonic()))
    b.restart()  # SIGTERM (asserts exit 0) and start again
    time.sleep(max(0.0, t0 + 8.5 - time.monotonic()))
    c = r.RawClient(b.port, version=5)
    ack = c.connect(long_, clean=False, props={r.SESSION_EXPIRY: 60})
    # Control: offline sessions do survive a graceful restart.
    assert ack.session_present, "session with expiry 60 s lost across a graceful restart"
    c.disconnect()
    c = r.RawClient(b.port, version=5)
    ack = c.connect(short, clean=False, props={r.SESSION_EXPIRY: 6})
    assert not ack.session_present, (
        "session with expiry 6 s still present 8.5 s after its disconnect "
        "(graceful stop at +4 s extended it)")
    c.disconnect()
