"""test_tls.py - MQTT over TLS (--mqtts-listen) and HTTPS (--https-listen):
the development CA written to DATA_DIR/tls/ca.pem, real clients (mosquitto,
paho, openssl s_client, requests) verifying against it, ALPN, TLS versions,
session resumption, certificate reload on SIGHUP, hostile bytes on the TLS
ports, device and token credentials over TLS, and plain-text listeners
switched off."""

import os
import signal
import socket
import ssl
import subprocess
import time

import pytest
import requests

from clients import V5, V311, MosquittoSub, PahoClient, mosquitto_pub, unique, wait_until
from conftest import IS_MOSQUITTO, Broker, free_port, port_open
from apiclient import admin_api, api_token, new_device

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="thinghz listeners and dev CA")


def tls_opts(**kw):
    kw.setdefault("mqtts_listen", "127.0.0.1:%d" % free_port())
    kw.setdefault("https_listen", "127.0.0.1:%d" % free_port())
    return kw


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


class TlsBroker:
    """A started broker with both TLS listeners and its CA file."""

    def __init__(self, b):
        self.b = b
        self.mqtts = port_of(b.opts["mqtts_listen"])
        self.https = port_of(b.opts["https_listen"])
        self.ca = b.data_dir / "tls" / "ca.pem"
        assert wait_until(lambda: port_open(self.mqtts) and port_open(self.https))

    def url(self, path):
        return "https://127.0.0.1:%d/api/v1%s" % (self.https, path)


@pytest.fixture
def tb(broker_factory):
    return TlsBroker(broker_factory(**tls_opts()))


def s_client(port, *args, stdin=b"", timeout=10):
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, *args],
                       input=stdin, capture_output=True, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def make_cert(d, name, cn="localhost"):
    """A self-signed EC certificate for 127.0.0.1 and localhost (openssl CLI)."""
    cert, key = d / (name + ".pem"), d / (name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=" + cn,
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=20)
    return cert, key


def peer_cert_der(port, ca):
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return t.getpeercert(binary_form=True)


def test_dev_ca_is_written_and_certifies_localhost_and_loopback(tb):
    assert tb.ca.exists()
    assert "development CA" in tb.b.log_text()
    for host in ("localhost", "127.0.0.1"):
        ctx = ssl.create_default_context(cafile=str(tb.ca))
        with socket.create_connection(("127.0.0.1", tb.mqtts), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname=host) as t:
                san = t.getpeercert()["subjectAltName"]
                assert ("DNS", "localhost") in san and ("IP Address", "127.0.0.1") in san
    # a restart reuses the CA, so clients keep their ca.pem
    before = tb.ca.read_bytes()
    tb.b.restart()
    assert wait_until(lambda: port_open(tb.mqtts))
    assert tb.ca.read_bytes() == before
    peer_cert_der(tb.mqtts, tb.ca)


def test_mosquitto_round_trip_qos1_and_retained(tb):
    ca = ["--cafile", str(tb.ca)]
    t = unique("tls")
    mosquitto_pub(tb.mqtts, t + "/kept", "retained-1", qos=1, retain=True, extra=ca)
    sub = MosquittoSub(tb.mqtts, t + "/#", 2, qos=1, extra=ca).start()
    mosquitto_pub(tb.mqtts, t + "/live", "hello over tls", qos=1, extra=ca)
    msgs = sorted(sub.finish(), key=lambda m: m[2])
    assert msgs == [(1, 1, t + "/kept", "retained-1"), (1, 0, t + "/live", "hello over tls")]
    # TLS and TCP clients share one broker
    sub = MosquittoSub(tb.b.port, t + "/x", 1, qos=1).start()
    mosquitto_pub(tb.mqtts, t + "/x", "tls to tcp", qos=1, extra=ca)
    assert sub.finish() == [(1, 0, t + "/x", "tls to tcp")]


def test_alpn(tb):
    rc, out = s_client(tb.mqtts, "-alpn", "mqtt", "-CAfile", str(tb.ca))
    assert "ALPN protocol: mqtt" in out and "Verify return code: 0 (ok)" in out, out
    rc, out = s_client(tb.https, "-alpn", "h2,http/1.1", "-CAfile", str(tb.ca))
    assert "ALPN protocol: http/1.1" in out, out
    # a client offering nothing we speak still connects, without ALPN
    rc, out = s_client(tb.mqtts, "-alpn", "imap", "-CAfile", str(tb.ca))
    assert "No ALPN negotiated" in out and "Verify return code: 0 (ok)" in out, out


def test_tls_versions(tb):
    for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        rc, out = s_client(tb.mqtts, flag, "-CAfile", str(tb.ca))
        assert "New, " + name in out and "Verify return code: 0 (ok)" in out, out
    # TLS 1.0 (allowed on the client side for the test) is refused
    rc, out = s_client(tb.mqtts, "-tls1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert "Cipher is (NONE)" in out or rc != 0, out
    assert "protocol version" in out or "unsupported protocol" in out, out
    assert "unsupported protocol" in tb.b.log_text()


def test_wrong_ca_fails_verification(tb, tmp_path):
    other, _ = make_cert(tmp_path, "other")
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(tb.mqtts), "--cafile",
                        str(other), "-t", "x", "-m", "y"], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode != 0
    with pytest.raises(ssl.SSLCertVerificationError):
        peer_cert_der(tb.mqtts, other)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tb.url("/health"), verify=str(other), timeout=5)


def test_https_api(tb):
    r = requests.get(tb.url("/health"), verify=str(tb.ca), timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    s = requests.Session()
    v = str(tb.ca)  # per request: a Session's verify loses to REQUESTS_CA_BUNDLE
    r = s.post(tb.url("/auth/login"), json={"email": tb.b.admin_email,
                                             "password": tb.b.admin_password}, timeout=5,
               verify=v)
    assert r.status_code == 200, r.text
    tok = r.json()["token"]
    r = s.get(tb.url("/devices"), headers={"Authorization": "Bearer " + tok}, timeout=5,
              verify=v)
    assert r.status_code == 200, r.text
    # keep-alive: several requests on one TLS connection
    for _ in range(3):
        assert s.get(tb.url("/health"), timeout=5, verify=v).status_code == 200
    # plain HTTP on the HTTPS port is closed, not answered
    with socket.create_connection(("127.0.0.1", tb.https), timeout=5) as raw:
        raw.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" not in raw.recv(4096)


def test_session_resumption(tb, tmp_path):
    # TLS 1.3 tickets come after the handshake: s_client must stay until it
    # read them, so it sends a request and waits for the server to close.
    req = b"GET /api/v1/health HTTP/1.0\r\n\r\n"
    cases = [(tb.mqtts, "-tls1_2", b""), (tb.https, "-tls1_2", req), (tb.https, "-tls1_3", req)]
    for port, ver, stdin in cases:
        sess = tmp_path / ("sess%d%s.pem" % (port, ver))
        extra = ["-ign_eof"] if stdin else []
        s_client(port, ver, "-CAfile", str(tb.ca), "-sess_out", str(sess), *extra, stdin=stdin)
        assert sess.exists(), (port, ver)
        rc, out = s_client(port, ver, "-CAfile", str(tb.ca), "-sess_in", str(sess), *extra,
                           stdin=stdin)
        assert "Reused, TLSv1." in out, out
        if stdin:
            assert "200 OK" in out, out


def test_sighup_reloads_the_certificate(broker_factory, tmp_path):
    conf = tmp_path / "thinghz.conf"
    conf.write_text("# no tls-cert yet: the development CA\n")
    tb = TlsBroker(broker_factory(**tls_opts(args=["--config", str(conf)])))
    t = unique("reload")
    old = PahoClient(tb.b, port=tb.mqtts, ca=tb.ca, version=V311)
    old.subscribe(t, qos=1)
    old_der = peer_cert_der(tb.mqtts, tb.ca)
    cert, key = make_cert(tmp_path, "new")
    conf.write_text("tls-cert = %s\ntls-key = %s\n" % (cert, key))
    tb.b.signal(signal.SIGHUP)
    # new connections get the new certificate (and no longer verify with the old CA)
    assert wait_until(lambda: "reloaded" in tb.b.log_text())
    assert wait_until(lambda: _verifies(tb.mqtts, cert))
    assert peer_cert_der(tb.mqtts, cert) != old_der
    with pytest.raises(ssl.SSLCertVerificationError):
        peer_cert_der(tb.mqtts, tb.ca)
    assert requests.get(tb.url("/health"), verify=str(cert), timeout=5).status_code == 200
    # the connection made before the reload is still up and working
    mosquitto_pub(tb.mqtts, t, "after reload", qos=1, extra=["--cafile", str(cert)])
    assert old.get().payload == b"after reload"
    old.publish(t, b"from the old one", qos=1)
    assert old.get().payload == b"from the old one"
    old.close()
    # a broken certificate on reload keeps the current one
    conf.write_text("tls-cert = %s\ntls-key = %s\n" % (tmp_path / "missing.pem", key))
    tb.b.signal(signal.SIGHUP)
    assert wait_until(lambda: "previous certificate stays" in tb.b.log_text())
    assert _verifies(tb.mqtts, cert)


def _verifies(port, ca):
    try:
        peer_cert_der(port, ca)
        return True
    except ssl.SSLError:
        return False


def test_garbage_on_tls_ports_is_closed_and_hurts_nobody(tb):
    t = unique("garbage")
    good = PahoClient(tb.b, port=tb.mqtts, ca=tb.ca)
    good.subscribe(t, qos=1)
    payloads = [b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",  # plain MQTT CONNECT
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                os.urandom(3000),
                b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"]  # a broken ClientHello
    for port in (tb.mqtts, tb.https):
        for p in payloads:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(p)
                s.settimeout(5)
                try:
                    data = s.recv(4096)
                    # at most a TLS alert (record type 21), then the close
                    assert data == b"" or data[0] == 21, data[:20]
                    while data:
                        data = s.recv(4096)
                except ConnectionResetError:
                    pass
    assert "TLS:" in tb.b.log_text()
    good.publish(t, b"still fine", qos=1)
    assert good.get().payload == b"still fine"
    good.close()
    assert requests.get(tb.url("/health"), verify=str(tb.ca), timeout=5).status_code == 200


def test_silent_tls_client_is_bounded_by_the_connect_timeout(broker_factory):
    tb = TlsBroker(broker_factory(**tls_opts(connect_timeout=1)))
    with socket.create_connection(("127.0.0.1", tb.mqtts), timeout=5) as s:
        s.settimeout(5)
        t0 = time.monotonic()
        assert s.recv(10) == b""
        assert time.monotonic() - t0 < 4


def test_device_secret_and_token_over_tls(broker_factory):
    tb = TlsBroker(broker_factory(**tls_opts(allow_anonymous=False)))
    api = admin_api(tb.b)
    d = new_device(api)
    c = PahoClient(tb.b, port=tb.mqtts, ca=tb.ca, username=d["id"], password=d["secret"])
    own = "devices/%s/state" % d["id"]
    assert c.subscribe(own, qos=1) == [1]
    c.publish(own, b"on", qos=1)
    assert c.get().payload == b"on"
    c.close()
    bad = PahoClient(tb.b, port=tb.mqtts, ca=tb.ca, username=d["id"], password="wrong",
                     expect_rc=None)
    assert bad.connack["rc"] == 0x86
    bad.close()
    tok = api_token(api)["token"]
    app = PahoClient(tb.b, port=tb.mqtts, ca=tb.ca, username="app", password=tok,
                     version=V311)
    assert app.subscribe("devices/#", qos=1) == [1]
    app.close()


def test_plaintext_listeners_off(tmp_path):
    mqtts, https = free_port(), free_port()
    b = Broker(tmp_path / "b", {"mqtts_listen": "127.0.0.1:%d" % mqtts,
                                "https_listen": "127.0.0.1:%d" % https,
                                "args": ["--mqtt-listen", "", "--http-listen", ""]})
    b.start(wait=False)
    try:
        assert wait_until(lambda: port_open(mqtts) and port_open(https), timeout=10), b.log_tail()
        assert not port_open(b.port) and not port_open(b.http_port)
        assert wait_until(lambda: "MQTT on (off)" in b.log_text()), b.log_tail()
        assert "HTTP on (off)" in b.log_text()
        ca = b.data_dir / "tls" / "ca.pem"
        c = PahoClient(b, port=mqtts, ca=ca)
        c.subscribe("x/y", qos=1)
        c.publish("x/y", b"tls only", qos=1)
        assert c.get().payload == b"tls only"
        c.close()
        r = requests.get("https://localhost:%d/api/v1/health" % https, verify=str(ca), timeout=5)
        assert r.status_code == 200
    finally:
        assert b.stop() == 0
