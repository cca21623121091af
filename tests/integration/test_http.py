"""test_http.py - the HTTP/1.1 server and its first endpoints against the real
daemon: keep-alive and pipelining, HEAD, JSON errors, 100-continue, chunked
uploads, limits, slow clients, and publishing over HTTP with Basic auth and
the ACL."""

import base64
import json
import socket
import time

import pytest
import requests

from clients import PahoClient, unique, wait_until
from conftest import IS_MOSQUITTO, make_password_file

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="mosquitto has no HTTP API")

MAX_BODY = 1024 * 1024


def url(b, path):
    return "http://127.0.0.1:%d%s" % (b.http_port, path)


class Raw:
    """A raw HTTP/1.1 client socket that reads responses one at a time."""

    def __init__(self, b, timeout=5.0):
        self.s = socket.create_connection(("127.0.0.1", b.http_port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def response(self, head=False):
        """Returns (status, {lower-case header: value}, body bytes)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        h, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = h.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = 0 if head or status in (100, 204, 304) else int(headers.get("content-length", 0))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed(self, timeout=5.0):
        """True when the server closes the connection within timeout."""
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def error_code(body):
    j = json.loads(body)
    assert set(j) == {"error"} and set(j["error"]) == {"code", "message"}, j
    return j["error"]["code"]


def test_health_and_stats_keepalive(broker):
    s = requests.Session()
    r = s.get(url(broker, "/api/v1/health"))
    assert r.status_code == 200
    j = r.json()
    assert j["status"] == "ok" and j["version"] == "0.1.0" and j["uptime_s"] >= 0
    assert r.headers["Server"] == "thinghz" and "Date" in r.headers
    assert r.headers["Content-Type"] == "application/json"
    c = PahoClient(broker)
    c.subscribe("stats/#")
    r = s.get(url(broker, "/api/v1/broker/stats"))
    assert r.status_code == 200
    st = r.json()
    for k in ("clients_connected", "sessions", "subscriptions", "retained", "messages_received",
              "messages_sent", "messages_dropped", "bytes_received", "bytes_sent", "uptime_s"):
        assert isinstance(st[k], int), k
    assert st["clients_connected"] >= 1 and st["subscriptions"] >= 1
    c.close()
    # one TCP connection served all of them
    sock = s.get_adapter("http://").poolmanager.connection_from_url(url(broker, "/"))
    assert sock.num_connections == 1
    s.close()


def test_pipelined_in_order(broker):
    c = Raw(broker)
    c.send(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /api/v1/broker/stats HTTP/1.1\r\nHost: x\r\n\r\n")
    st1, _, b1 = c.response()
    st2, _, b2 = c.response()
    st3, _, b3 = c.response()
    assert (st1, st2, st3) == (200, 404, 200)
    assert json.loads(b1)["status"] == "ok"
    assert error_code(b2) == "not_found"
    assert "sessions" in json.loads(b3)
    # still open for another request (keep-alive)
    c.send(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.response()[0] == 200
    c.close()


def test_head(broker):
    r = requests.get(url(broker, "/api/v1/health"))
    h = requests.head(url(broker, "/api/v1/health"))
    assert h.status_code == 200 and h.content == b""
    assert int(h.headers["Content-Length"]) == len(r.content)
    c = Raw(broker)
    c.send(b"HEAD /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\nGET /api/v1/health HTTP/1.1\r\n\r\n")
    st, hd, body = c.response(head=True)
    assert st == 200 and body == b"" and int(hd["content-length"]) > 0
    st, hd, body = c.response()
    assert st == 200 and json.loads(body)["status"] == "ok"
    c.close()


def test_404_405_json(broker):
    r = requests.get(url(broker, "/api/v1/nothing"))
    assert r.status_code == 404 and error_code(r.content) == "not_found"
    assert r.headers["Content-Type"] == "application/json"
    r = requests.delete(url(broker, "/api/v1/health"))
    assert r.status_code == 405 and error_code(r.content) == "method_not_allowed"
    assert r.headers["Allow"] == "GET, HEAD"
    r = requests.get(url(broker, "/api/v1/topics/a/b"))
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


def test_http10_and_connection_close(broker):
    c = Raw(broker)
    c.send(b"GET /api/v1/health HTTP/1.0\r\n\r\n")
    st, hd, _ = c.response()
    assert st == 200 and hd["connection"] == "close"
    assert c.closed()
    c = Raw(broker)
    c.send(b"GET /api/v1/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    st, hd, _ = c.response()
    assert st == 200 and hd["connection"] == "keep-alive"
    c.send(b"GET /api/v1/health HTTP/1.1\r\nConnection: close\r\n\r\n")
    st, hd, _ = c.response()
    assert st == 200 and hd["connection"] == "close"
    assert c.closed()


def test_expect_100_continue(broker):
    sub = PahoClient(broker)
    topic = unique("cont")
    sub.subscribe(topic)
    c = Raw(broker)
    c.send(("POST /api/v1/topics/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\n\r\n" % topic).encode())
    st, _, _ = c.response()
    assert st == 100
    c.send(b"hello")
    st, _, body = c.response()
    assert st == 200 and json.loads(body) == {"topic": topic, "qos": 0}
    assert sub.get().payload == b"hello"
    # too large: refused without reading the body
    c.send(("POST /api/v1/topics/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            "Expect: 100-continue\r\n\r\n" % (topic, MAX_BODY + 1)).encode())
    st, hd, body = c.response()
    assert st == 413 and error_code(body) == "body_too_large" and hd["connection"] == "close"
    assert c.closed()
    # an expectation we do not know
    c = Raw(broker)
    c.send(b"POST /api/v1/topics/x HTTP/1.1\r\nContent-Length: 1\r\nExpect: magic\r\n\r\nx")
    st, _, body = c.response()
    assert st == 417 and error_code(body) == "expectation_failed"
    sub.close()


def test_chunked_upload(broker):
    sub = PahoClient(broker)
    topic = unique("chunk")
    sub.subscribe(topic)
    c = Raw(broker)
    c.send(("POST /api/v1/topics/%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            % topic).encode())
    c.send(b"5\r\nhello\r\n")
    time.sleep(0.1)
    c.send(b"7\r\n, world\r\n0\r\n\r\n")
    st, _, body = c.response()
    assert st == 200 and json.loads(body)["topic"] == topic
    assert sub.get().payload == b"hello, world"
    # requests sends a generator body chunked
    r = requests.post(url(broker, "/api/v1/topics/" + topic), data=(p for p in [b"a", b"bc"]))
    assert r.status_code == 200
    assert sub.get().payload == b"abc"
    sub.close()


def test_body_too_large(broker):
    c = Raw(broker)
    c.send(b"POST /api/v1/topics/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
           % (MAX_BODY + 1))
    st, hd, body = c.response()
    assert st == 413 and error_code(body) == "body_too_large"
    assert c.closed()
    # chunked past the limit, with the body actually sent
    c = Raw(broker)
    c.send(b"POST /api/v1/topics/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
    try:
        for _ in range(MAX_BODY // 65536 + 2):
            c.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    st, _, body = c.response()
    assert st == 413 and error_code(body) == "body_too_large"
    # requests, with a plain oversized body
    try:
        r = requests.post(url(broker, "/api/v1/topics/big"), data=b"y" * (MAX_BODY + 10))
        assert r.status_code == 413
    except requests.exceptions.ConnectionError:
        pytest.fail("the 413 was lost to a connection reset")


def test_headers_too_large(broker):
    r = requests.get(url(broker, "/api/v1/health"), headers={"X-Big": "a" * 20000})
    assert r.status_code == 431 and error_code(r.content) == "headers_too_large"
    hs = {"X-H%d" % i: "v" for i in range(120)}
    r = requests.get(url(broker, "/api/v1/health"), headers=hs)
    assert r.status_code == 431 and error_code(r.content) == "too_many_headers"
    r = requests.get(url(broker, "/api/v1/" + "u" * 9000))
    assert r.status_code == 414 and error_code(r.content) == "uri_too_long"


def test_garbage_is_400(broker):
    c = Raw(broker)
    c.send(b"\x16\x03\x01 this is not http\r\n\r\n")
    st, hd, body = c.response()
    assert st == 400 and error_code(body) == "bad_request" and hd["connection"] == "close"
    assert c.closed()
    c = Raw(broker)
    c.send(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    st, _, body = c.response()
    assert st == 400
    # the server is fine
    assert requests.get(url(broker, "/api/v1/health")).status_code == 200


def test_slowloris_dropped(broker_factory, monkeypatch):
    monkeypatch.setenv("THINGHZ_HTTP_REQUEST_TIMEOUT_MS", "1500")
    b = broker_factory()
    c = Raw(b)
    start = time.monotonic()
    req = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    got = None
    for ch in req:
        try:
            c.send(bytes([ch]))
        except (BrokenPipeError, ConnectionResetError):
            break
        # meanwhile others are served
        assert requests.get(url(b, "/api/v1/health"), timeout=2).status_code == 200
        time.sleep(0.25)
        c.s.setblocking(False)
        try:
            d = c.s.recv(65536)
            c.buf += d
            if b"\r\n\r\n" in c.buf or not d:
                got = True
                break
        except BlockingIOError:
            pass
        finally:
            c.s.setblocking(True)
        if time.monotonic() - start > 10:
            break
    elapsed = time.monotonic() - start
    assert got, "slow client still connected after %.1fs" % elapsed
    assert elapsed < 5
    if c.buf:
        st, _, body = c.response()
        assert st == 408 and error_code(body) == "request_timeout"
    assert c.closed()


def test_publish_qos_retain(broker):
    topic = unique("pub")
    sub = PahoClient(broker)
    sub.subscribe(topic + "/#", qos=1)
    for qos in (0, 1):
        r = requests.post(url(broker, "/api/v1/topics/%s/q%d?qos=%d" % (topic, qos, qos)),
                          data=b"payload-%d" % qos)
        assert r.status_code == 200
        assert r.json() == {"topic": "%s/q%d" % (topic, qos), "qos": qos}
        m = sub.get()
        assert m.topic == "%s/q%d" % (topic, qos) and m.payload == b"payload-%d" % qos
        assert m.qos == qos
    # percent-encoded levels
    r = requests.post(url(broker, "/api/v1/topics/%s/a%%20b%%2Fc" % topic), data=b"x")
    assert r.status_code == 200 and r.json()["topic"] == topic + "/a b/c"
    assert sub.get().topic == topic + "/a b/c"
    r = requests.post(url(broker, "/api/v1/topics/%s/ret?retain=true&qos=1" % topic), data=b"kept")
    assert r.status_code == 200
    assert sub.get().payload == b"kept"
    sub.close()
    late = PahoClient(broker)
    late.subscribe(topic + "/ret", qos=1)
    m = late.get()
    assert m.payload == b"kept" and m.retain
    late.close()


def test_publish_bad_input(broker):
    for path, code in (("/api/v1/topics/a/%2B", "invalid_topic"),
                       ("/api/v1/topics/a/+", "invalid_topic"),
                       ("/api/v1/topics/a/%23", "invalid_topic"),
                       ("/api/v1/topics/x?qos=2", "invalid_qos"),
                       ("/api/v1/topics/x?qos=abc", "invalid_qos"),
                       ("/api/v1/topics/x?retain=maybe", "invalid_retain")):
        r = requests.post(url(broker, path), data=b"x")
        assert r.status_code == 400, path
        assert error_code(r.content) == code, path
    # requests would re-quote a bad escape: send it raw
    c = Raw(broker)
    c.send(b"POST /api/v1/topics/a%zz HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
    st, _, body = c.response()
    assert st == 400 and error_code(body) == "bad_path"
    c.close()
    r = requests.post(url(broker, "/api/v1/topics/"), data=b"x")
    assert r.status_code == 404


ACL = """\
user alice
topic write allowed/#
"""


@pytest.fixture
def auth_broker(broker_factory, tmp_path):
    pw = make_password_file(tmp_path / "passwd", {"alice": "alice-pw"})
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return broker_factory(allow_anonymous=False, password_file=pw, acl_file=acl)


def test_publish_auth(auth_broker):
    b = auth_broker
    u = url(b, "/api/v1/topics/allowed/x")
    r = requests.post(u, data=b"x")
    assert r.status_code == 401 and error_code(r.content) == "unauthorized"
    assert r.headers["WWW-Authenticate"] == 'Basic realm="thinghz"'
    r = requests.post(u, data=b"x", auth=("alice", "wrong"))
    assert r.status_code == 401
    r = requests.post(u, data=b"x", headers={"Authorization": "Basic !!!"})
    assert r.status_code == 401
    r = requests.post(u, data=b"x", headers={"Authorization": "Bearer abc"})
    assert r.status_code == 401
    sub = PahoClient(b, username="alice", password="alice-pw")
    # alice may only write, so watch with a raw HTTP publish's effect via stats
    before = requests.get(url(b, "/api/v1/broker/stats")).json()["messages_received"]
    r = requests.post(u, data=b"x", auth=("alice", "alice-pw"))
    assert r.status_code == 200 and r.json() == {"topic": "allowed/x", "qos": 0}
    r = requests.post(url(b, "/api/v1/topics/denied/x"), data=b"x", auth=("alice", "alice-pw"))
    assert r.status_code == 403 and error_code(r.content) == "forbidden"
    hdr = "Basic " + base64.b64encode(b"alice:alice-pw").decode()
    r = requests.post(u + "?qos=1", data=b"y", headers={"Authorization": hdr})
    assert r.status_code == 200
    sub.close()
    assert wait_until(lambda: requests.get(url(b, "/api/v1/broker/stats")).json()
                      ["messages_received"] >= before)


def test_async_reply_order(broker_factory, monkeypatch):
    """A handler answering from another thread (HTTP_PENDING + http_reply):
    pipelined responses stay in order; a client leaving first is harmless."""
    monkeypatch.setenv("THINGHZ_HTTP_TEST_ROUTES", "1")
    b = broker_factory()
    c = Raw(b)
    c.send(b"GET /api/v1/_test/async?ms=200 HTTP/1.1\r\n\r\n"
           b"GET /api/v1/health HTTP/1.1\r\n\r\n"
           b"GET /api/v1/_test/async?ms=10 HTTP/1.1\r\n\r\n"
           b"GET /nope HTTP/1.1\r\n\r\n")
    st, _, body = c.response()
    assert st == 200 and json.loads(body) == {"async": True}
    st, _, body = c.response()
    assert st == 200 and json.loads(body)["status"] == "ok"
    st, _, body = c.response()
    assert st == 200 and json.loads(body) == {"async": True}
    assert c.response()[0] == 404
    c.close()
    for _ in range(5):
        c = Raw(b)
        c.send(b"GET /api/v1/_test/async?ms=100 HTTP/1.1\r\n\r\n")
        c.close()
    time.sleep(0.3)
    assert requests.get(url(b, "/api/v1/health")).status_code == 200


def test_publish_password_checks_do_not_stall(broker_factory, tmp_path):
    """Basic credentials that need hashing are checked on worker threads
    (HTTP_PENDING): wrong passwords (never cached) arriving together do not
    hold up other requests on the one I/O thread, and each gets its 401."""
    if IS_MOSQUITTO:
        pytest.skip("thinghz HTTP API")
    pw = make_password_file(tmp_path / "passwd", {"alice": "alice-pw"})
    b = broker_factory(threads=1, password_file=pw)
    u = url(b, "/api/v1/topics/allowed/x")
    socks = []
    for i in range(24):
        s = socket.create_connection(("127.0.0.1", b.http_port), timeout=10)
        hdr = base64.b64encode(b"alice:wrong%d" % i).decode()
        s.sendall(("POST /api/v1/topics/allowed/x HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Basic %s\r\nContent-Length: 1\r\n\r\nx" % hdr).encode())
        socks.append(s)
    worst = 0.0
    with requests.Session() as sess:
        for _ in range(40):
            t0 = time.monotonic()
            assert sess.get(url(b, "/api/v1/health"), timeout=5).status_code == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.02)
    for s in socks:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, "connection closed without a response"
            data += chunk
        assert data.startswith(b"HTTP/1.1 401"), data[:40]
        s.close()
    assert worst < 0.2, "a health request took %.0f ms during password checks" % (worst * 1000)
    assert requests.post(u, data=b"x", auth=("alice", "alice-pw")).status_code == 200
