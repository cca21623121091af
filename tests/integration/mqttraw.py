"""mqttraw.py - a byte-level MQTT 3.1.1 / 5.0 client for the integration tests.

Real clients (paho, mosquitto_pub/sub) hide the wire: they never send a
malformed packet and they acknowledge on their own. The tests that check exact
reason codes, flow control or hostile input build packets here with struct and
read the broker's replies packet by packet. Every read is bounded by a timeout.
"""

import socket
import struct
import time

# Packet types.
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP = 8, 9, 10, 11, 12, 13
DISCONNECT, AUTH = 14, 15

TYPE_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

# v5 property identifiers and their wire types.
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUB_AVAILABLE = 0x28
SUB_ID_AVAILABLE = 0x29
SHARED_SUB_AVAILABLE = 0x2A

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PROP_TYPES = {
    PAYLOAD_FORMAT: _BYTE, MESSAGE_EXPIRY: _U32, CONTENT_TYPE: _STR, RESPONSE_TOPIC: _STR,
    CORRELATION_DATA: _BIN, SUBSCRIPTION_ID: _VARINT, SESSION_EXPIRY: _U32,
    ASSIGNED_CLIENT_ID: _STR, SERVER_KEEP_ALIVE: _U16, AUTH_METHOD: _STR, AUTH_DATA: _BIN,
    REQUEST_PROBLEM_INFO: _BYTE, WILL_DELAY: _U32, REQUEST_RESPONSE_INFO: _BYTE,
    RESPONSE_INFO: _STR, SERVER_REFERENCE: _STR, REASON_STRING: _STR,
    RECEIVE_MAXIMUM: _U16, TOPIC_ALIAS_MAXIMUM: _U16, TOPIC_ALIAS: _U16, MAXIMUM_QOS: _BYTE,
    RETAIN_AVAILABLE: _BYTE, USER_PROPERTY: _PAIR, MAXIMUM_PACKET_SIZE: _U32,
    WILDCARD_SUB_AVAILABLE: _BYTE, SUB_ID_AVAILABLE: _BYTE, SHARED_SUB_AVAILABLE: _BYTE,
}
# Properties that may appear more than once; parsed into lists.
_MULTI = {USER_PROPERTY, SUBSCRIPTION_ID}


class ProtocolError(Exception):
    """The broker sent something this helper cannot parse."""


# ---------------------------------------------------------------- encoding

def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def utf8(s):
    b = s if isinstance(s, (bytes, bytearray)) else s.encode("utf-8")
    return struct.pack("!H", len(b)) + bytes(b)


binary = utf8


def properties(props):
    """Encodes a v5 property list. props is a list of (id, value) pairs (order
    kept, duplicates allowed) or a dict; a USER_PROPERTY value is (name, value)."""
    if props is None:
        props = []
    if isinstance(props, dict):
        items = []
        for k, v in props.items():
            if k in _MULTI and isinstance(v, list):
                items.extend((k, x) for x in v)
            else:
                items.append((k, v))
        props = items
    body = bytearray()
    for pid, val in props:
        body += varint(pid)
        t = PROP_TYPES[pid]
        if t == _BYTE:
            body += struct.pack("!B", val)
        elif t == _U16:
            body += struct.pack("!H", val)
        elif t == _U32:
            body += struct.pack("!I", val)
        elif t == _VARINT:
            body += varint(val)
        elif t in (_STR, _BIN):
            body += utf8(val)
        elif t == _PAIR:
            body += utf8(val[0]) + utf8(val[1])
    return varint(len(body)) + bytes(body)


def packet(ptype, flags, body):
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + bytes(body)


def connect(client_id="", version=4, clean=True, keepalive=60, username=None, password=None,
            will=None, props=None):
    """CONNECT. will is a dict: topic, payload, qos=0, retain=False, props=None."""
    flags = 0
    if clean:
        flags |= 0x02
    if will is not None:
        flags |= 0x04 | (will.get("qos", 0) << 3)
        if will.get("retain"):
            flags |= 0x20
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = utf8("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        body += properties(props)
    body += utf8(client_id)
    if will is not None:
        if version == 5:
            body += properties(will.get("props"))
        body += utf8(will["topic"]) + binary(will.get("payload", b""))
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += binary(password)
    return packet(CONNECT, 0, body)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None, version=4, props=None):
    if isinstance(payload, str):
        payload = payload.encode()
    flags = (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    body = utf8(topic)
    if qos:
        body += struct.pack("!H", pid if pid is not None else 1)
    if version == 5:
        body += properties(props)
    return packet(PUBLISH, flags, body + payload)


def _ack(ptype, flags, pid, version, rc, props):
    body = struct.pack("!H", pid)
    if version == 5 and (rc or props):
        body += bytes([rc])
        if props:
            body += properties(props)
    return packet(ptype, flags, body)


def puback(pid, version=4, rc=0, props=None):
    return _ack(PUBACK, 0, pid, version, rc, props)


def pubrec(pid, version=4, rc=0, props=None):
    return _ack(PUBREC, 0, pid, version, rc, props)


def pubrel(pid, version=4, rc=0, props=None):
    return _ack(PUBREL, 2, pid, version, rc, props)


def pubcomp(pid, version=4, rc=0, props=None):
    return _ack(PUBCOMP, 0, pid, version, rc, props)


def subscribe(pid, filters, version=4, props=None):
    """filters: list of (filter, options byte); for 3.1.1 options is the QoS."""
    body = struct.pack("!H", pid)
    if version == 5:
        body += properties(props)
    for f, opts in filters:
        body += utf8(f) + bytes([opts])
    return packet(SUBSCRIBE, 2, body)


def sub_options(qos=0, no_local=False, retain_as_published=False, retain_handling=0):
    return qos | (4 if no_local else 0) | (8 if retain_as_published else 0) | (retain_handling << 4)


def unsubscribe(pid, filters, version=4, props=None):
    body = struct.pack("!H", pid)
    if version == 5:
        body += properties(props)
    for f in filters:
        body += utf8(f)
    return packet(UNSUBSCRIBE, 2, body)


def pingreq():
    return packet(PINGREQ, 0, b"")


def disconnect(version=4, rc=0, props=None):
    if version == 5 and (rc or props):
        return packet(DISCONNECT, 0, bytes([rc]) + (properties(props) if props else b""))
    return packet(DISCONNECT, 0, b"")


# ---------------------------------------------------------------- decoding

def decode_varint(buf, pos):
    mult, val = 1, 0
    for i in range(4):
        if pos >= len(buf):
            raise ProtocolError("truncated varint")
        b = buf[pos]
        pos += 1
        val += (b & 0x7F) * mult
        if not b & 0x80:
            return val, pos
        mult *= 128
    raise ProtocolError("varint longer than 4 bytes")


def _str(buf, pos):
    (n,) = struct.unpack_from("!H", buf, pos)
    return bytes(buf[pos + 2:pos + 2 + n]), pos + 2 + n


def decode_properties(buf, pos):
    """Returns ({id: value or [values]}, new pos). Strings are str, binary bytes."""
    n, pos = decode_varint(buf, pos)
    end = pos + n
    out = {}
    while pos < end:
        pid, pos = decode_varint(buf, pos)
        t = PROP_TYPES.get(pid)
        if t is None:
            raise ProtocolError("unknown property 0x%02x" % pid)
        if t == _BYTE:
            val = buf[pos]
            pos += 1
        elif t == _U16:
            (val,) = struct.unpack_from("!H", buf, pos)
            pos += 2
        elif t == _U32:
            (val,) = struct.unpack_from("!I", buf, pos)
            pos += 4
        elif t == _VARINT:
            val, pos = decode_varint(buf, pos)
        elif t == _STR:
            raw, pos = _str(buf, pos)
            val = raw.decode("utf-8")
        elif t == _BIN:
            val, pos = _str(buf, pos)
        else:
            k, pos = _str(buf, pos)
            v, pos = _str(buf, pos)
            val = (k.decode(), v.decode())
        if pid in _MULTI:
            out.setdefault(pid, []).append(val)
        else:
            out[pid] = val
    return out, end


class Packet:
    """One received packet. Fields are filled in per type by parse()."""

    def __init__(self, ptype, flags, body, version):
        self.type = ptype
        self.flags = flags
        self.body = bytes(body)
        self.version = version
        self.props = {}
        self.rc = 0
        self.pid = None
        self.parse()

    def __repr__(self):
        extra = ""
        if self.type == PUBLISH:
            extra = " topic=%r qos=%d pid=%r dup=%d retain=%d len=%d" % (
                self.topic, self.qos, self.pid, self.dup, self.retain, len(self.payload))
        elif self.type in (CONNACK, DISCONNECT, PUBACK, PUBREC, PUBREL, PUBCOMP):
            extra = " rc=0x%02x" % self.rc
        elif self.type in (SUBACK, UNSUBACK):
            extra = " codes=%r" % (self.codes,)
        return "<%s%s props=%r>" % (TYPE_NAMES.get(self.type, self.type), extra, self.props)

    def parse(self):
        b, v5 = self.body, self.version == 5
        t = self.type
        if t == CONNACK:
            self.session_present = bool(b[0] & 1)
            self.rc = b[1]
            if v5 and len(b) > 2:
                self.props, _ = decode_properties(b, 2)
        elif t == PUBLISH:
            self.qos = (self.flags >> 1) & 3
            self.retain = bool(self.flags & 1)
            self.dup = bool(self.flags & 8)
            raw, pos = _str(b, 0)
            self.topic = raw.decode("utf-8")
            if self.qos:
                (self.pid,) = struct.unpack_from("!H", b, pos)
                pos += 2
            if v5:
                self.props, pos = decode_properties(b, pos)
            self.payload = b[pos:]
        elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            (self.pid,) = struct.unpack_from("!H", b, 0)
            if len(b) > 2:
                self.rc = b[2]
            if len(b) > 3:
                self.props, _ = decode_properties(b, 3)
        elif t in (SUBACK, UNSUBACK):
            (self.pid,) = struct.unpack_from("!H", b, 0)
            pos = 2
            if v5:
                self.props, pos = decode_properties(b, pos)
            self.codes = list(b[pos:])
        elif t == DISCONNECT:
            if len(b) >= 1:
                self.rc = b[0]
            if len(b) > 1:
                self.props, _ = decode_properties(b, 1)


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """One TCP connection to the broker. recv() returns whole packets; every
    call takes a timeout in seconds and raises TimeoutError when it expires."""

    def __init__(self, port, host="127.0.0.1", version=4, timeout=5.0):
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pending = []  # packets set aside by recv_type()
        self.closed = False
        self.next_pid = 1

    # -- sending
    def send(self, data):
        self.sock.sendall(data)

    def pid(self):
        p = self.next_pid
        self.next_pid = self.next_pid % 65535 + 1
        return p

    # -- receiving
    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no packet from broker")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no packet from broker")
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            raise Closed()
        self.buf += data

    def _try_parse(self):
        if len(self.buf) < 2:
            return None
        try:
            n, pos = decode_varint(self.buf, 1)
        except ProtocolError:
            if len(self.buf) < 5:
                return None
            raise
        if len(self.buf) < pos + n:
            return None
        first = self.buf[0]
        body = self.buf[pos:pos + n]
        del self.buf[:pos + n]
        return Packet(first >> 4, first & 0x0F, body, self.version)

    def recv(self, timeout=5.0):
        """Next packet; raises Closed when the broker closed the connection."""
        if self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            p = self._try_parse()
            if p is not None:
                return p
            if self.closed:
                raise Closed()
            self._fill(deadline)

    def recv_type(self, ptype, timeout=5.0):
        """The next packet of ptype. Packets of other types that arrive first
        are kept for later recv() calls (PINGRESP is dropped)."""
        for i, p in enumerate(self.pending):
            if p.type == ptype:
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        skipped = []
        try:
            while True:
                p = self._recv_wire(max(0.0, deadline - time.monotonic()))
                if p.type == ptype:
                    return p
                if p.type != PINGRESP:
                    skipped.append(p)
        finally:
            self.pending.extend(skipped)

    def _recv_wire(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            p = self._try_parse()
            if p is not None:
                return p
            if self.closed:
                raise Closed()
            self._fill(deadline)

    def recv_all(self, timeout):
        """Every packet that arrives within timeout (stops early on close)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                out.append(self.recv(max(0.001, deadline - time.monotonic())))
            except (TimeoutError, Closed):
                return out

    def wait_closed(self, timeout=5.0):
        """Reads until the broker closes the connection. Returns the packets
        received before the close; raises TimeoutError if it stays open."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                out.append(self.recv(max(0.001, deadline - time.monotonic())))
            except Closed:
                return out

    def is_closed(self, timeout=2.0):
        try:
            self.wait_closed(timeout)
            return True
        except TimeoutError:
            return False

    # -- conveniences
    def connect(self, client_id="", expect_rc=0, **kw):
        self.send(connect(client_id, version=self.version, **kw))
        ack = self.recv(5.0)
        assert ack.type == CONNACK, "expected CONNACK, got %r" % (ack,)
        if expect_rc is not None:
            assert ack.rc == expect_rc, "CONNACK rc 0x%02x, expected 0x%02x %r" % (
                ack.rc, expect_rc, ack)
        return ack

    def subscribe(self, filters, props=None, timeout=5.0):
        """filters: list of (filter, opts) or a single filter string (QoS 0).
        Returns the SUBACK."""
        if isinstance(filters, str):
            filters = [(filters, 0)]
        pid = self.pid()
        self.send(subscribe(pid, filters, self.version, props))
        ack = self.recv_type(SUBACK, timeout)
        assert ack.pid == pid
        return ack

    def unsubscribe(self, filters, timeout=5.0):
        pid = self.pid()
        self.send(unsubscribe(pid, filters, self.version))
        ack = self.recv_type(UNSUBACK, timeout)
        assert ack.pid == pid
        return ack

    def publish(self, topic, payload=b"", qos=0, retain=False, props=None, dup=False,
                pid=None, wait=True, timeout=5.0):
        """Publishes; for QoS 1/2 with wait=True completes the handshake and
        returns the PUBACK / PUBCOMP (PUBREC for a failed QoS 2)."""
        if qos and pid is None:
            pid = self.pid()
        self.send(publish(topic, payload, qos, retain, dup, pid, self.version, props))
        if not qos or not wait:
            return pid
        if qos == 1:
            return self.recv_type(PUBACK, timeout)
        rec = self.recv_type(PUBREC, timeout)
        if rec.rc >= 0x80:
            return rec
        self.send(pubrel(pid, self.version))
        return self.recv_type(PUBCOMP, timeout)

    def ack(self, p):
        """Acknowledges a received PUBLISH (QoS 1: PUBACK, QoS 2: full flow)."""
        if p.qos == 1:
            self.send(puback(p.pid, self.version))
        elif p.qos == 2:
            self.send(pubrec(p.pid, self.version))
            rel = self.recv_type(PUBREL, 5.0)
            self.send(pubcomp(rel.pid, self.version))

    def recv_publish(self, timeout=5.0, ack=True):
        p = self.recv_type(PUBLISH, timeout)
        if ack:
            self.ack(p)
        return p

    def recv_publishes(self, timeout, ack=True):
        """Every PUBLISH arriving within timeout, acknowledged as it comes
        (so the broker's in-flight window never stalls delivery)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                p = self.recv(max(0.001, deadline - time.monotonic()))
            except (TimeoutError, Closed):
                return out
            if p.type == PUBLISH:
                if ack:
                    self.ack(p)
                out.append(p)

    def disconnect(self, rc=0, props=None):
        try:
            self.send(disconnect(self.version, rc, props))
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Closes the socket with RST and no DISCONNECT (an abrupt close)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()
