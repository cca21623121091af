"""test_http_cors_gzip.py - CORS for the origins of --cors-origins (simple
requests and preflights) and gzip of text responses (Accept-Encoding with
q-values, types, sizes, HEAD), against the real daemon."""

import gzip
import json

import pytest
import requests

from conftest import IS_MOSQUITTO
from test_http import Raw, error_code, url

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="mosquitto has no HTTP API")

APP = "https://app.example.com"
DEV = "http://localhost:3000"


def test_cors_off_by_default(broker):
    r = requests.get(url(broker, "/api/v1/health"), headers={"Origin": APP})
    assert r.status_code == 200
    assert not [h for h in r.headers if h.lower().startswith("access-control")]
    # without cors-origins a preflight is just an OPTIONS the API does not route
    r = requests.options(url(broker, "/api/v1/health"),
                         headers={"Origin": APP, "Access-Control-Request-Method": "GET"})
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers


def test_cors_listed_origins(broker_factory):
    b = broker_factory(cors_origins="%s, %s" % (APP, DEV))
    r = requests.get(url(b, "/api/v1/health"), headers={"Origin": APP})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == APP
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in r.headers["Vary"]
    # origins compare case-insensitively
    r = requests.get(url(b, "/api/v1/health"), headers={"Origin": "HTTP://LOCALHOST:3000"})
    assert r.headers["Access-Control-Allow-Origin"] == "HTTP://LOCALHOST:3000"
    # errors carry the headers too (the browser must be able to read them)
    r = requests.get(url(b, "/nope"), headers={"Origin": DEV})
    assert r.status_code == 404 and r.headers["Access-Control-Allow-Origin"] == DEV
    # a disallowed origin (another port, a prefix) gets none
    for bad in ("http://localhost:3001", "https://app.example.com.evil.io", "null"):
        r = requests.get(url(b, "/api/v1/health"), headers={"Origin": bad})
        assert r.status_code == 200
        assert "Access-Control-Allow-Origin" not in r.headers
        assert "Access-Control-Allow-Credentials" not in r.headers
        assert "Origin" in r.headers["Vary"]
    # no Origin: not a CORS request, but the answer still varies on it
    r = requests.get(url(b, "/api/v1/health"))
    assert "Access-Control-Allow-Origin" not in r.headers and "Origin" in r.headers["Vary"]


def test_cors_preflight(broker_factory):
    b = broker_factory(cors_origins=APP)
    # any path, even one without a route
    for path in ("/api/v1/topics/a/b", "/whatever"):
        r = requests.options(url(b, path), headers={
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, X-Requested-With,x-trace-id"})
        assert r.status_code == 204, r.text
        assert r.content == b"" and "Content-Length" not in r.headers
        h = r.headers
        assert h["Access-Control-Allow-Origin"] == APP
        assert h["Access-Control-Allow-Credentials"] == "true"
        methods = [m.strip() for m in h["Access-Control-Allow-Methods"].split(",")]
        assert methods == ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        allowed = [x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")]
        assert allowed == ["authorization", "content-type", "x-requested-with", "x-trace-id"]
        assert int(h["Access-Control-Max-Age"]) > 0
    # a disallowed origin: 403 with the API's error shape, no CORS headers
    r = requests.options(url(b, "/api/v1/health"), headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert r.status_code == 403 and error_code(r.content) == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in r.headers
    # an OPTIONS that is not a preflight still goes to the router
    r = requests.options(url(b, "/api/v1/health"), headers={"Origin": APP})
    assert r.status_code == 405 and r.headers["Access-Control-Allow-Origin"] == APP
    # keep-alive continues after a preflight
    c = Raw(b)
    c.send(b"OPTIONS /api/v1/health HTTP/1.1\r\nOrigin: " + APP.encode() +
           b"\r\nAccess-Control-Request-Method: GET\r\n\r\n"
           b"GET /api/v1/health HTTP/1.1\r\nOrigin: " + APP.encode() + b"\r\n\r\n")
    assert c.response()[0] == 204
    st, h, body = c.response()
    assert st == 200 and h["access-control-allow-origin"] == APP
    c.close()


def test_cors_wildcard(broker_factory):
    b = broker_factory(cors_origins="*")
    r = requests.get(url(b, "/api/v1/health"), headers={"Origin": "https://any.where"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers
    r = requests.options(url(b, "/x"), headers={"Origin": "https://any.where",
                                                 "Access-Control-Request-Method": "DELETE"})
    assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_cors_origins_validated(broker_factory, tmp_path):
    import subprocess
    from conftest import THINGHZ_BIN
    for bad in ("https://a.example/path", "*, https://a.example", "a.example", "https://a b"):
        p = subprocess.run([THINGHZ_BIN, "serve", "--cors-origins", bad, "--data-dir",
                            str(tmp_path)], capture_output=True, text=True, timeout=10)
        assert p.returncode != 0 and "cors-origins" in p.stderr, (bad, p.stderr)


@pytest.fixture
def blob_broker(broker_factory, monkeypatch):
    monkeypatch.setenv("THINGHZ_HTTP_TEST_ROUTES", "1")
    return broker_factory()


def blob(b, n, accept="gzip", typ=None, enc=None, method="GET"):
    q = "/api/v1/_test/blob?n=%d" % n
    if typ:
        q += "&type=" + requests.utils.quote(typ, safe="")
    if enc:
        q += "&enc=" + enc
    c = Raw(b)
    hdr = "" if accept is None else "Accept-Encoding: %s\r\n" % accept
    c.send(("%s %s HTTP/1.1\r\n%s\r\n" % (method, q, hdr)).encode())
    st, h, body = c.response(head=method == "HEAD")
    c.close()
    assert st == 200
    return h, body


def test_gzip_text(blob_broker):
    b = blob_broker
    h, body = blob(b, 5000)
    assert h["content-encoding"] == "gzip" and "Accept-Encoding" in h["vary"]
    plain = gzip.decompress(body)
    assert len(plain) == 5000 and plain.startswith(b"thinghz says hello")
    assert int(h["content-length"]) == len(body) < 5000
    # requests decodes it transparently
    r = requests.get(url(b, "/api/v1/_test/blob?n=3000"))
    assert r.headers["Content-Encoding"] == "gzip" and len(r.content) == 3000
    for typ in ("application/json", "application/json; charset=utf-8", "text/html",
                "application/javascript", "image/svg+xml", "TEXT/CSS"):
        h, body = blob(b, 2000, typ=typ)
        assert h.get("content-encoding") == "gzip", typ
        assert len(gzip.decompress(body)) == 2000


def test_gzip_skipped(blob_broker):
    b = blob_broker
    # too small
    h, body = blob(b, 1023)
    assert "content-encoding" not in h and len(body) == 1023
    h, body = blob(b, 1024)
    assert h["content-encoding"] == "gzip"
    # not a text type
    for typ in ("application/octet-stream", "image/png", "application/jsonx"):
        h, body = blob(b, 4000, typ=typ)
        assert "content-encoding" not in h and len(body) == 4000, typ
        assert "vary" not in h
    # the handler already encoded it
    h, body = blob(b, 4000, enc="br")
    assert h["content-encoding"] == "br" and len(body) == 4000
    # no Accept-Encoding: identity, but the response varies on it
    h, body = blob(b, 4000, accept=None)
    assert "content-encoding" not in h and "Accept-Encoding" in h["vary"]


@pytest.mark.parametrize("accept,want", [
    ("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True), ("x-gzip", True),
    ("gzip;q=0", False), ("gzip; q=0.000", False), ("*", True), ("*;q=0", False),
    ("br, *;q=0.1", True), ("gzip;q=0, *", False), ("identity", False), ("br, deflate", False),
    ("", False), ("gzip;q=1.0", True), ("gzip;q=0.001", True), ("gzip;q=2", False),
    ("gzip;q=abc", False), ("gzip;level=1;q=0", False), (" gzip ; q=0.8 ", True),
])
def test_gzip_accept_encoding(blob_broker, accept, want):
    h, body = blob(blob_broker, 2000, accept=accept)
    assert (h.get("content-encoding") == "gzip") == want
    assert len(gzip.decompress(body) if want else body) == 2000


def test_gzip_head_matches_get(blob_broker):
    b = blob_broker
    hg, body = blob(b, 6000)
    hh, hbody = blob(b, 6000, method="HEAD")
    assert hbody == b""
    for k in ("content-length", "content-encoding", "vary", "content-type"):
        assert hh[k] == hg[k], k


def test_gzip_and_cors_together(broker_factory, monkeypatch):
    monkeypatch.setenv("THINGHZ_HTTP_TEST_ROUTES", "1")
    b = broker_factory(cors_origins=APP)
    r = requests.get(url(b, "/api/v1/_test/blob?n=4000&type=application/json"),
                     headers={"Origin": APP, "Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip"
    assert r.headers["Access-Control-Allow-Origin"] == APP
    vary = [v.strip() for v in r.headers["Vary"].split(",")]
    assert "Origin" in vary and "Accept-Encoding" in vary
    # a small JSON response (health) is not compressed
    r = requests.get(url(b, "/api/v1/health"), headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in r.headers and json.loads(r.content)["status"] == "ok"
