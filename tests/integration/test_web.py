"""The web app's HTTP side (src/web): GET / is the login page, the files under
/static/VERSION/ have the right types, strong ETags answered with 304, gzip
made at build time, and cache headers that let a browser keep versioned files
for a year but always revalidate index.html."""

import re

import pytest
import requests

from conftest import IS_MOSQUITTO

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="thinghz only")


@pytest.fixture
def base(broker_factory):
    b = broker_factory()
    return "http://127.0.0.1:%d" % b.http_port


def assets(base):
    """index.html and the /static/ URLs it references."""
    r = requests.get(base + "/", timeout=5)
    urls = re.findall(r'(?:href|src)="(/static/[^"]+)"', r.text)
    urls += re.findall(r'"(/static/[^"]+)"', r.text)  # the import map
    return r, sorted(set(urls))


def test_root_is_the_login_page(base):
    r, urls = assets(base)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert "script-src 'self' 'sha256-" in r.headers["content-security-policy"]
    # a login form that works without the scripts having run
    assert 'type="email"' in r.text and 'type="password"' in r.text and "Log in" in r.text
    assert '<script type="importmap">' in r.text
    for name in ("app/main.js", "app/style.css", "vendor/preact.js", "vendor/htm.js", "vendor/uplot.js"):
        assert any(u.endswith(name) for u in urls), (name, urls)
    head = requests.head(base + "/", timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == r.headers["etag"]


def test_content_types_and_cache(base):
    _, urls = assets(base)
    want = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    for u in urls:
        r = requests.get(base + u, timeout=5)
        assert r.status_code == 200, u
        assert r.headers["content-type"] == want[u[u.rindex("."):]], u
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable", u
        assert r.headers["x-content-type-options"] == "nosniff"
        assert len(r.content) > 0
    # The same file under another version (a page of an older build) is
    # served but not cached as immutable.
    js = next(u for u in urls if u.endswith("/app/main.js"))
    other = re.sub(r"^/static/[^/]+/", "/static/0ld/", js)
    r = requests.get(base + other, timeout=5)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
    for bad in ("/static/x", "/static/%s/nope.js" % js.split("/")[2], "/static/%s/index.html" % js.split("/")[2]):
        r = requests.get(base + bad, timeout=5)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", bad


def test_gzip_is_precompressed_and_negotiated(base):
    _, urls = assets(base)
    u = base + next(u for u in urls if u.endswith("/vendor/uplot.js"))
    plain = requests.get(u, headers={"Accept-Encoding": "identity"}, timeout=5)
    assert "content-encoding" not in plain.headers
    raw = requests.get(u, headers={"Accept-Encoding": "gzip"}, timeout=5, stream=True)
    body = raw.raw.read(decode_content=False)
    assert raw.headers["content-encoding"] == "gzip" and raw.headers["vary"] == "Accept-Encoding"
    assert body[:2] == b"\x1f\x8b" and len(body) < len(plain.content) / 2
    import gzip
    assert gzip.decompress(body) == plain.content
    # the two representations have different strong tags
    assert raw.headers["etag"] != plain.headers["etag"]
    assert raw.headers["etag"].startswith('"') and plain.headers["etag"].startswith('"')


def test_etag_revalidation(base):
    r, urls = assets(base)
    tag = r.headers["etag"]
    for inm in (tag, "W/" + tag, '"nope", ' + tag, "*"):
        n = requests.get(base + "/", headers={"If-None-Match": inm}, timeout=5)
        assert n.status_code == 304, inm
        assert n.content == b"" and n.headers["etag"] == tag
        assert n.headers["cache-control"] == "no-cache"
    assert requests.get(base + "/", headers={"If-None-Match": '"other"'}, timeout=5).status_code == 200
    # a gzip tag revalidates too (either representation: same file)
    u = base + urls[0]
    g = requests.get(u, headers={"Accept-Encoding": "gzip"}, timeout=5)
    n = requests.get(u, headers={"Accept-Encoding": "gzip", "If-None-Match": g.headers["etag"]}, timeout=5)
    assert n.status_code == 304 and n.headers["etag"] == g.headers["etag"]
    n = requests.get(u, headers={"Accept-Encoding": "identity", "If-None-Match": g.headers["etag"]}, timeout=5)
    assert n.status_code == 304


def test_api_routes_are_not_shadowed(base):
    assert requests.get(base + "/api/v1/health", timeout=5).json()["status"] == "ok"
    r = requests.post(base + "/", timeout=5)
    assert r.status_code == 405 and "GET" in r.headers["allow"]
