"""abuse.py - abusive MQTT/HTTP clients and a well-behaved probe, shared by
tests/integration/test_faults.py (functional: the probe keeps working) and
bench/faults/run (measured: the probe's p99 round trip, idle vs abused).

Every abuse is a context manager that starts its load on enter (in its own
threads) and stops it and releases its sockets on exit; all are bounded."""

import os
import random
import select
import socket
import threading
import time
import uuid

import paho.mqtt.client as mqtt

import mqttraw as r


def _uid(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


class Probe:
    """A paho v5 client that publishes to its own topic at QoS 1 and waits
    for the message to come back: one round trip per rtt() call."""

    def __init__(self, port):
        self.topic = _uid("probe")
        self.cv = threading.Condition()
        self.got = set()
        self.c = mqtt.Client(_uid("probe"), protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        sub_done = threading.Event()
        self.c.on_subscribe = lambda *a, **k: sub_done.set()
        self.c.subscribe(self.topic, qos=1)
        if not sub_done.wait(5):
            raise RuntimeError("probe: no SUBACK")
        self.n = 0

    def _on_message(self, client, userdata, msg):
        with self.cv:
            self.got.add(msg.payload)
            self.cv.notify_all()

    def rtt(self, timeout=10.0):
        """Seconds for one round trip; None when it did not come back."""
        self.n += 1
        payload = b"%d" % self.n
        t = time.monotonic()
        self.c.publish(self.topic, payload, qos=1)
        with self.cv:
            ok = self.cv.wait_for(lambda: payload in self.got, timeout)
            self.got.discard(payload)
        return time.monotonic() - t if ok else None

    def sample(self, seconds, pause=0.02):
        """Round trips for `seconds`; a lost one is recorded as None."""
        out, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            out.append(self.rtt())
            time.sleep(pause)
        return out

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def p99(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else float("inf")


class _Load:
    """Runs fn(stop_event) in `threads` threads between enter and exit."""

    threads = 1

    def __enter__(self):
        self.stop = threading.Event()
        self.errors = []
        self.ts = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for t in self.ts:
            t.start()
        return self

    def _run(self):
        try:
            self.run(self.stop)
        except Exception as e:  # reported by the caller, never silent
            self.errors.append(repr(e))

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.ts:
            t.join(10)
        self.cleanup()

    def cleanup(self):
        pass


class HalfConnects:
    """n connections that send the first bytes of a CONNECT and stall.
    closed_count() says how many the broker has closed (read EOF/RST)."""

    def __init__(self, port, n=1000):
        self.port, self.n = port, n

    def __enter__(self):
        self.socks = []
        head = r.connect(_uid("half"))[:6]  # fixed header + part of the name
        for _ in range(self.n):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(head)
            s.setblocking(False)
            self.socks.append(s)
        return self

    def closed_count(self):
        closed = 0
        for s in self.socks:
            try:
                if s.recv(64) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        return closed

    def __exit__(self, *exc):
        for s in self.socks:
            s.close()


class RandomBytes(_Load):
    """Connections to port that send random bytes until closed, over and over."""

    threads = 2

    def __init__(self, port, size=4096):
        self.port, self.size = port, size
        self.sent = 0

    def run(self, stop):
        rnd = random.Random()
        while not stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                s.sendall(os.urandom(rnd.randint(1, self.size)))
                self.sent += 1
                s.settimeout(2)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
                s.close()
            except OSError:
                time.sleep(0.01)


class ConnectFlood(_Load):
    """CONNECT, CONNACK, close as fast as possible from several threads."""

    threads = 3

    def __init__(self, port):
        self.port = port
        self.count = 0

    def run(self, stop):
        while not stop.is_set():
            try:
                c = r.RawClient(self.port, version=4, timeout=5)
                c.connect(_uid("flood"))
                c.abort()
                self.count += 1
            except Exception:
                time.sleep(0.01)


class BusyWildcard(_Load):
    """n subscribers to '#' (QoS 0, reading) and a publisher at full rate."""

    def __init__(self, port, n=20):
        self.port, self.n = port, n
        self.published = 0

    def __enter__(self):
        self.subs = []
        for _ in range(self.n):
            c = mqtt.Client(_uid("wild"), protocol=mqtt.MQTTv311)
            c.connect("127.0.0.1", self.port, 30)
            c.subscribe("#", qos=0)
            c.loop_start()
            self.subs.append(c)
        return super().__enter__()

    def run(self, stop):
        c = r.RawClient(self.port, version=4)
        c.connect(_uid("busy"))
        pkt = r.publish("busy/topic", b"x" * 100, qos=0)
        while not stop.is_set():
            c.send(pkt * 50)
            self.published += 50
        c.disconnect()

    def cleanup(self):
        for c in self.subs:
            c.disconnect()
            c.loop_stop()


class FastPublisher(_Load):
    """A publisher far faster than its subscribers: QoS 1 subscribers that
    never read their socket, and one publisher sending QoS 0 and QoS 1 at
    full rate (reading its acknowledgements)."""

    def __init__(self, port, n=5):
        self.port, self.n = port, n
        self.published = 0

    def __enter__(self):
        self.topic = _uid("flood")
        self.subs = []
        for _ in range(self.n):
            c = r.RawClient(self.port, version=4)
            c.connect(_uid("slow"))
            c.subscribe([(self.topic, 1)])
            self.subs.append(c)  # never read again
        return super().__enter__()

    def run(self, stop):
        c = r.RawClient(self.port, version=4)
        c.connect(_uid("fast"))
        q0 = r.publish(self.topic, b"y" * 200, qos=0)
        pid = 0
        while not stop.is_set():
            batch = [q0] * 20
            pid = pid % 65000 + 1
            batch.append(r.publish(self.topic, b"z" * 200, qos=1, pid=pid))
            try:
                c.sock.sendall(b"".join(batch))
            except OSError:
                break
            self.published += 21
            # drain PUBACKs without waiting for them (back-pressure may pause us)
            while select.select([c.sock], [], [], 0)[0]:
                try:
                    if not c.sock.recv(65536):
                        return
                except OSError:
                    return
        c.close()

    def cleanup(self):
        for c in self.subs:
            c.close()


def raise_nofile(n=8192):
    """Raises this process's soft open-file limit (children inherit it)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


__all__ = ["Probe", "p99", "HalfConnects", "RandomBytes", "ConnectFlood", "BusyWildcard",
           "FastPublisher", "raise_nofile"]
