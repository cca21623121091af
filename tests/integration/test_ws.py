"""test_ws.py - WebSocket upgrade (RFC 6455) on the HTTP listener, through
the diagnostic echo endpoint GET /api/v1/ws/echo, with a real client
(python3-websocket) and raw sockets for the handshakes it would refuse to
send."""

import base64
import hashlib
import os
import socket
import struct
import time

import pytest
import requests
import websocket

from conftest import IS_MOSQUITTO
from test_http import Raw, error_code, url

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="mosquitto has no HTTP API")

PATH = "/api/v1/ws/echo"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def ws_url(b):
    return "ws://127.0.0.1:%d%s" % (b.http_port, PATH)


def connect(b, **kw):
    return websocket.create_connection(ws_url(b), timeout=10, **kw)


def recv_close(ws):
    """Reads frames until the close frame; returns (code, reason)."""
    while True:
        op, frame = ws.recv_data_frame(control_frame=True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data
            return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None, data[2:]


def handshake(b, headers, method="GET", version="HTTP/1.1"):
    c = Raw(b)
    lines = ["%s %s %s" % (method, PATH, version), "Host: x"] + headers
    c.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    st, h, body = c.response()
    return c, st, h, body


GOOD = ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: " + KEY]


def test_handshake_accepted(broker):
    c, st, h, body = handshake(broker, GOOD)
    assert st == 101
    assert h["upgrade"].lower() == "websocket" and h["connection"].lower() == "upgrade"
    # RFC 6455 section 1.3's example
    assert h["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert "content-length" not in h and "sec-websocket-protocol" not in h
    c.close()
    # tokens are case-insensitive and Connection may list others
    c, st, h, _ = handshake(broker, ["Upgrade: WebSocket", "Connection: keep-alive, upgrade",
                                     "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: " + KEY])
    assert st == 101
    c.close()


def test_subprotocol_negotiation(broker):
    ws = connect(broker, subprotocols=["chat", "echo"])
    assert ws.getsubprotocol() == "echo"
    ws.close()
    # none supported: accepted without one (the client decides)
    c, st, h, _ = handshake(broker, GOOD + ["Sec-WebSocket-Protocol: chat, mqtt"])
    assert st == 101 and "sec-websocket-protocol" not in h
    c.close()


def test_echo_text_and_binary(broker):
    ws = connect(broker)
    ws.send("hello, wörld")
    assert ws.recv() == "hello, wörld"
    ws.send_binary(b"\x00\x01\xff")
    assert ws.recv() == b"\x00\x01\xff"
    ws.send("")
    assert ws.recv() == ""
    big = os.urandom(200 * 1024)
    ws.send_binary(big)
    assert ws.recv() == big
    text = "x" * (300 * 1024)
    ws.send(text)
    assert ws.recv() == text
    ws.close()


def test_fragmented_message(broker):
    ws = connect(broker)
    A = websocket.ABNF
    ws.send_frame(A.create_frame("frag1-", A.OPCODE_TEXT, 0))
    ws.ping(b"between fragments")  # control frames may interleave
    ws.send_frame(A.create_frame("frag2-", A.OPCODE_CONT, 0))
    ws.send_frame(A.create_frame("end", A.OPCODE_CONT, 1))
    op, frame = ws.recv_data_frame(control_frame=True)
    assert op == A.OPCODE_PONG and frame.data == b"between fragments"
    assert ws.recv() == "frag1-frag2-end"
    ws.send_frame(A.create_frame(b"\x01" * 70000, A.OPCODE_BINARY, 0))
    ws.send_frame(A.create_frame(b"\x02" * 70000, A.OPCODE_CONT, 1))
    assert ws.recv() == b"\x01" * 70000 + b"\x02" * 70000
    ws.close()


def test_ping_pong(broker):
    ws = connect(broker)
    ws.ping(b"are you there")
    op, frame = ws.recv_data_frame(control_frame=True)
    assert op == websocket.ABNF.OPCODE_PONG and frame.data == b"are you there"
    ws.close()


def test_close_handshake(broker):
    ws = connect(broker)
    ws.send_close(status=4001, reason=b"bye now")
    code, reason = recv_close(ws)
    assert code == 4001
    # then the server closes the TCP connection
    ws.sock.settimeout(5)
    assert ws.sock.recv(16) == b""
    ws.shutdown()
    ws = connect(broker)
    ws.send_close(status=1000)
    assert recv_close(ws)[0] == 1000
    ws.shutdown()


def test_oversize_message_1009(broker):
    ws = connect(broker)
    ws.send_binary(b"x" * (1024 * 1024 + 1))
    assert recv_close(ws)[0] == 1009
    ws.shutdown()
    # also when the fragments only add up to too much
    ws = connect(broker)
    A = websocket.ABNF
    ws.send_frame(A.create_frame(b"y" * (700 * 1024), A.OPCODE_BINARY, 0))
    ws.send_frame(A.create_frame(b"y" * (700 * 1024), A.OPCODE_CONT, 1))
    assert recv_close(ws)[0] == 1009
    ws.shutdown()
    # exactly the limit is fine
    ws = connect(broker)
    m = os.urandom(1024 * 1024)
    ws.send_binary(m)
    assert ws.recv() == m
    ws.close()


def test_invalid_utf8_1007(broker):
    ws = connect(broker)
    ws.send_frame(websocket.ABNF.create_frame(b"\xc3\x28", websocket.ABNF.OPCODE_TEXT, 1))
    assert recv_close(ws)[0] == 1007
    ws.shutdown()


def test_unmasked_frame_is_protocol_error(broker):
    c, st, _, _ = handshake(broker, GOOD)
    assert st == 101
    c.send(b"\x81\x02hi")  # a client frame must be masked
    c.s.settimeout(5)
    data = c.buf
    while len(data) < 4:
        d = c.s.recv(64)
        if not d:
            break
        data += d
    assert data[0] == 0x88 and struct.unpack("!H", data[2:4])[0] == 1002
    c.close()


@pytest.mark.parametrize("headers,method,version,status,code", [
    ([h for h in GOOD if not h.startswith("Sec-WebSocket-Key")], "GET", "HTTP/1.1", 400,
     "bad_handshake"),
    ([h for h in GOOD if "Key" not in h] + ["Sec-WebSocket-Key: c2hvcnQ="], "GET", "HTTP/1.1",
     400, "bad_handshake"),
    ([h for h in GOOD if "Key" not in h] + ["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAAAAA="],
     "GET", "HTTP/1.1", 400, "bad_handshake"),
    ([h for h in GOOD if "Version" not in h] + ["Sec-WebSocket-Version: 12"], "GET", "HTTP/1.1",
     426, "unsupported_websocket_version"),
    ([h for h in GOOD if "Version" not in h], "GET", "HTTP/1.1", 426,
     "unsupported_websocket_version"),
    ([h for h in GOOD if not h.startswith("Upgrade")], "GET", "HTTP/1.1", 426,
     "upgrade_required"),
    ([h for h in GOOD if not h.startswith("Connection")], "GET", "HTTP/1.1", 400,
     "bad_handshake"),
    (GOOD, "GET", "HTTP/1.0", 400, "bad_handshake"),
    (GOOD, "POST", "HTTP/1.1", 405, "method_not_allowed"),
])
def test_bad_handshakes(broker, headers, method, version, status, code):
    c, st, h, body = handshake(broker, headers, method=method, version=version)
    assert st == status and error_code(body) == code
    if status == 426 and "version" in code:
        assert h["sec-websocket-version"] == "13"
    c.close()
    # the server keeps serving
    assert requests.get(url(broker, "/api/v1/health")).status_code == 200


def test_plain_get_and_post(broker):
    r = requests.get(url(broker, PATH))
    assert r.status_code == 426 and r.headers["Upgrade"] == "websocket"
    assert error_code(r.content) == "upgrade_required"
    r = requests.post(url(broker, PATH), data=b"x")
    assert r.status_code == 405 and error_code(r.content) == "method_not_allowed"


def test_frames_in_the_handshake_packet(broker):
    """Bytes after the request head belong to the WebSocket (llhttp's
    upgrade): a client that sends a frame right behind its handshake."""
    s = socket.create_connection(("127.0.0.1", broker.http_port), timeout=5)
    frame = websocket.ABNF.create_frame("early bird", websocket.ABNF.OPCODE_TEXT, 1).format()
    s.sendall(("\r\n".join(["GET %s HTTP/1.1" % PATH, "Host: x"] + GOOD) + "\r\n\r\n").encode()
              + frame)
    data = b""
    while b"early bird" not in data:
        d = s.recv(4096)
        assert d, data
        data += d
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert rest == b"\x81\x0aearly bird"
    s.close()


def test_pipelined_then_upgrade(broker):
    """An HTTP request pipelined before the handshake is answered first."""
    c = Raw(broker)
    c.send(b"GET /api/v1/health HTTP/1.1\r\n\r\n" +
           ("\r\n".join(["GET %s HTTP/1.1" % PATH] + GOOD) + "\r\n\r\n").encode())
    assert c.response()[0] == 200
    assert c.response()[0] == 101
    c.close()


def test_origin_checked_when_cors_configured(broker_factory):
    b = broker_factory(cors_origins="https://app.example.com")
    ws = connect(b, origin="https://app.example.com")
    ws.send("ok")
    assert ws.recv() == "ok"
    ws.close()
    c, st, h, body = handshake(b, GOOD + ["Origin: https://evil.example"])
    assert st == 403 and error_code(body) == "origin_not_allowed"
    c.close()
    # no Origin (not a browser): allowed
    c, st, _, _ = handshake(b, GOOD)
    assert st == 101
    c.close()


def test_slow_reader_backpressure(broker):
    """A client that sends but does not read: the server stops reading
    instead of buffering without bound, and stays responsive."""
    s = socket.create_connection(("127.0.0.1", broker.http_port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(("\r\n".join(["GET %s HTTP/1.1" % PATH] + GOOD) + "\r\n\r\n").encode())
    s.setblocking(False)
    payload = os.urandom(512 * 1024)
    frame = websocket.ABNF.create_frame(payload, websocket.ABNF.OPCODE_BINARY, 1).format()
    sent = 0
    blocked_since = None
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            sent += s.send(frame[sent % len(frame):])
            blocked_since = None
        except BlockingIOError:
            if blocked_since is None:
                blocked_since = time.time()
            elif time.time() - blocked_since > 1.0:
                break  # the server stopped reading: both directions are full
            time.sleep(0.02)
    assert blocked_since is not None, "the server kept reading for 20 s"
    assert sent < 32 * 1024 * 1024, sent
    assert requests.get(url(broker, "/api/v1/health"), timeout=5).status_code == 200
    s.close()
    assert requests.get(url(broker, "/api/v1/health"), timeout=5).status_code == 200


def test_many_clients(broker):
    clients = [connect(broker) for _ in range(50)]
    for i, ws in enumerate(clients):
        ws.send("client %d" % i)
    for i, ws in enumerate(clients):
        assert ws.recv() == "client %d" % i
    for ws in clients:
        ws.close()


def test_accept_key_formula():
    """The expected value the tests use, from the RFC's formula."""
    guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    want = base64.b64encode(hashlib.sha1((KEY + guid).encode()).digest()).decode()
    assert want == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
