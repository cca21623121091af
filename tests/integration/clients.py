"""clients.py - real MQTT clients for the integration tests, with bounded waits.

PahoClient wraps paho-mqtt 1.6.1 (3.1.1 and 5.0): connect/subscribe/publish
block until the broker acknowledged, received messages go to a queue, and
every wait has a timeout. mosquitto_pub / mosquitto_sub run the command-line
clients as subprocesses, also with timeouts.
"""

import queue
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
WAIT = 5.0


def unique(prefix="t"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def wait_until(pred, timeout=WAIT, interval=0.02):
    """Polls pred until it is true; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def props(packet_type, **kw):
    """Properties(packet_type) with attributes set, e.g.
    props(PacketTypes.PUBLISH, MessageExpiryInterval=10)."""
    p = Properties(packet_type)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


class PahoClient:
    """A connected paho client. version is V311 or V5."""

    def __init__(self, broker, client_id=None, version=V5, clean=True, keepalive=60,
                 username=None, password=None, will=None, properties=None,
                 expect_rc=0, connect=True, transport="tcp", port=None, ca=None,
                 ws_path="/mqtt"):
        """transport "websockets" speaks MQTT over WebSocket at ws_path; ca
        (a CA file) turns TLS on; port overrides the broker's MQTT port."""
        self.broker = broker
        self.port = port or (broker if isinstance(broker, int) else broker.port)
        self.version = version
        self.client_id = unique("paho") if client_id is None else client_id
        if version == V5:
            self.c = mqtt.Client(self.client_id, protocol=V5, transport=transport)
        else:
            self.c = mqtt.Client(self.client_id, clean_session=clean, protocol=V311,
                                 transport=transport)
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path)
        if ca is not None:
            self.c.tls_set(ca_certs=str(ca))
        self.clean = clean
        self.keepalive = keepalive
        self.connect_props = properties
        self.messages = queue.Queue()
        self.cond = threading.Condition()
        self.subacks = {}
        self.unsubacks = {}
        self.connack = None
        self.disconnects = []
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_disconnect = self._on_disconnect
        if username is not None:
            self.c.username_pw_set(username, password)
        if will is not None:
            self.c.will_set(will["topic"], will.get("payload"), will.get("qos", 0),
                            will.get("retain", False), will.get("props"))
        if connect:
            self.connect(expect_rc)

    # -- callbacks (paho's network thread)
    def _on_connect(self, client, userdata, flags, rc, properties=None):
        with self.cond:
            code = rc.value if hasattr(rc, "value") else rc
            self.connack = {"flags": flags, "rc": code, "props": properties}
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _on_subscribe(self, client, userdata, mid, granted, properties=None):
        with self.cond:
            codes = [g.value if hasattr(g, "value") else g for g in granted]
            self.subacks[mid] = codes
            self.cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, properties=None, reasons=None):
        with self.cond:
            if isinstance(reasons, list):
                codes = [r.value if hasattr(r, "value") else r for r in reasons]
            elif reasons is not None:
                codes = [reasons.value if hasattr(reasons, "value") else reasons]
            else:
                codes = []
            self.unsubacks[mid] = codes
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, rc, properties=None):
        # Never let paho reconnect on its own: a test decides when to connect.
        client._thread_terminate = True
        with self.cond:
            self.disconnects.append(rc.value if hasattr(rc, "value") else rc)
            self.cond.notify_all()

    def _wait(self, pred, timeout, what):
        with self.cond:
            ok = self.cond.wait_for(pred, timeout)
        assert ok, "timed out after %.1fs waiting for %s" % (timeout, what)

    # -- operations
    def connect(self, expect_rc=0, timeout=WAIT):
        self.connack = None
        kw = {}
        if self.version == V5:
            kw["clean_start"] = self.clean
            kw["properties"] = self.connect_props
        self.c.connect("127.0.0.1", self.port, self.keepalive, **kw)
        self.c.loop_start()
        self._wait(lambda: self.connack is not None, timeout, "CONNACK")
        if expect_rc is not None:
            assert self.connack["rc"] == expect_rc, "CONNACK %r, expected rc %r" % (
                self.connack, expect_rc)
        return self.connack

    @property
    def session_present(self):
        return bool(self.connack["flags"].get("session present"))

    def subscribe(self, topic, qos=0, options=None, properties=None, timeout=WAIT):
        """Returns the list of SUBACK codes. For v5, options is a SubscribeOptions
        or a dict of its keyword arguments."""
        if isinstance(options, dict):
            options = SubscribeOptions(**options)
        if self.version == V5:
            if isinstance(topic, list):
                rc, mid = self.c.subscribe(topic, properties=properties)
            else:
                if options is None:
                    options = SubscribeOptions(qos=qos)
                rc, mid = self.c.subscribe(topic, options=options, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, "subscribe failed: %d" % rc
        self._wait(lambda: mid in self.subacks, timeout, "SUBACK")
        return self.subacks[mid]

    def unsubscribe(self, topic, timeout=WAIT):
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        self._wait(lambda: mid in self.unsubacks, timeout, "UNSUBACK")
        return self.unsubacks[mid]

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None, wait=True,
                timeout=WAIT):
        info = self.c.publish(topic, payload, qos, retain, properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, "publish failed: %d" % info.rc
        if wait:
            info.wait_for_publish(timeout)
            assert info.is_published(), "publish of %r not acknowledged in %.1fs" % (
                topic, timeout)
        return info

    def get(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no message within %.1fs" % timeout) from None

    def get_n(self, n, timeout=WAIT):
        """Exactly-n collection: waits (in total at most timeout) for n messages."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                out.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError("got %d of %d messages within %.1fs: %r" % (
                    len(out), n, timeout, [(m.topic, m.payload[:40]) for m in out])) from None
        return out

    def drain(self, timeout=0.5):
        """Every message arriving within timeout."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                out.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return out

    def expect_none(self, timeout=0.5):
        got = self.drain(timeout)
        assert not got, "unexpected messages: %r" % [(m.topic, m.payload[:40]) for m in got]

    def wait_disconnected(self, timeout=WAIT):
        self._wait(lambda: self.disconnects, timeout, "disconnect")
        return self.disconnects[0]

    def disconnect(self, reasoncode=None, properties=None):
        try:
            if reasoncode is not None:
                from paho.mqtt.reasoncodes import ReasonCodes
                rcobj = ReasonCodes(PacketTypes.DISCONNECT, identifier=reasoncode)
                self.c.disconnect(rcobj, properties)
            else:
                self.c.disconnect()
        finally:
            self.stop_loop()

    def stop_loop(self):
        self.c.loop_stop()

    def close(self):
        """Best-effort cleanup."""
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.stop_loop()


# ---------------------------------------------------------------- mosquitto CLI

def mosquitto_pub(port, topic, message, qos=0, version="mqttv5", retain=False, extra=(),
                  timeout=10):
    cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", version, "-t", topic,
           "-m", message, "-q", str(qos)]
    if retain:
        cmd.append("-r")
    cmd += list(extra)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, "mosquitto_pub failed (%d): %s%s" % (r.returncode, r.stdout,
                                                                   r.stderr)
    return r


class MosquittoSub:
    """mosquitto_sub in the background. Prints "MSG <qos> <retain> <topic> <payload>"
    per message. start() returns once the SUBACK was received."""

    def __init__(self, port, topic, count, qos=0, version="mqttv5", timeout=10, extra=()):
        self.cmd = ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", version,
                    "-t", topic, "-q", str(qos), "-C", str(count), "-W", str(timeout),
                    "-d", "-F", "MSG %q %r %t %p"] + list(extra)
        self.timeout = timeout
        self.lines = queue.Queue()
        self.out = []

    def start(self):
        self.p = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.p.kill()
                raise AssertionError("mosquitto_sub did not subscribe: %r" % self.out)
            if "SUBACK" in line:
                return self

    def _read(self):
        for line in self.p.stdout:
            self.out.append(line.rstrip("\n"))
            self.lines.put(line)

    def finish(self):
        """Waits for exit; returns [(qos, retain, topic, payload)]."""
        try:
            self.p.wait(self.timeout + 5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)
        self.reader.join(5)
        msgs = []
        for line in self.out:
            if line.startswith("MSG "):
                _, q, r, t, payload = (line.split(" ", 4) + [""])[:5]
                msgs.append((int(q), int(r), t, payload))
        return msgs
