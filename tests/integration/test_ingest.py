"""test_ingest.py - the InfluxDB-compatible write endpoints against the real
daemon: POST /write (1.x) and POST /api/v2/write (2.x) take line protocol,
answer 204 once durable, and the points read back through the REST API;
bad lines are 400 with the line number and nothing of the batch is kept;
401 without a token, 403 for a viewer; tenants do not see each other."""

import base64
import time

import requests

from apiclient import Api, admin_api
from clients import unique


def base(b):
    return "http://127.0.0.1:%d" % b.http_port


def write(b, body, path="/api/v2/write", token=None, scheme="Token", params=None, headers=None):
    h = dict(headers or {})
    if token and scheme:
        h["Authorization"] = "%s %s" % (scheme, token)
    return requests.post(base(b) + path, data=body, headers=h, params=params, timeout=10)


def latest(api, device):
    r = api.get("/devices/%s/latest" % device)
    assert r.status_code == 200, r.text
    return r.json()["metrics"]


def start(broker_factory):
    b = broker_factory()
    admin = admin_api(b)
    return b, admin


def test_v2_write_and_read_back(broker_factory):
    b, admin = start(broker_factory)
    dev = unique("lp")
    body = ("weather,device=%s,site=roof temp=21.5,hum=40i,ok=true,note=\"a \\\"q\\\"\" 1700000000000000000\n"
            "# a comment\n\n"
            "telemetry,device=%s volts=3.3 1700000001000000000\n" % (dev, dev))
    r = write(b, body, token=admin.token, params={"org": "x", "bucket": "y"})
    assert r.status_code == 204, r.text
    m = latest(admin, dev)
    assert m["weather.temp"]["value"] == 21.5
    assert m["weather.hum"]["value"] == 40
    assert m["weather.ok"]["value"] is True
    assert m["weather.note"]["value"] == 'a "q"'
    assert m["volts"]["value"] == 3.3  # measurement telemetry: the bare field key
    assert m["volts"]["time"].startswith("2023-11-14T22:13:21")


def test_v1_write_auth_schemes_and_precision(broker_factory):
    b, admin = start(broker_factory)
    dev = unique("v1")
    # ?p= (InfluxDB 1 clients), precision=s
    r = write(b, "cpu,host=%s usage=1 1700000000" % dev, path="/write", scheme=None,
              params={"db": "any", "u": "me", "p": admin.token, "precision": "s"})
    assert r.status_code == 204, r.text
    assert latest(admin, dev)["cpu.usage"]["time"].startswith("2023-11-14T22:13:20")
    # Basic with the token as password, precision=ms
    basic = base64.b64encode(("me:" + admin.token).encode()).decode()
    r = write(b, "cpu,host=%s usage=2 1700000005000" % dev, path="/write", scheme="Basic",
              token=basic, params={"precision": "ms"})
    assert r.status_code == 204, r.text
    assert latest(admin, dev)["cpu.usage"]["value"] == 2
    # Bearer, precision h (v1 only)
    r = write(b, "cpu,host=%s usage=3 472223" % dev, path="/write", scheme="Bearer",
              token=admin.token, params={"precision": "h"})
    assert r.status_code == 204, r.text
    assert latest(admin, dev)["cpu.usage"]["value"] == 3
    # v2 refuses v1-only precisions
    r = write(b, "cpu,host=%s usage=4 1" % dev, token=admin.token, params={"precision": "h"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_precision"
    # no timestamp: now
    r = write(b, "cpu,host=%s usage=5" % dev, token=admin.token)
    assert r.status_code == 204
    m = latest(admin, dev)["cpu.usage"]
    assert m["value"] == 5 and m["time"].startswith(time.strftime("%Y-", time.gmtime()))


def test_bad_line_is_400_with_line_number_and_writes_nothing(broker_factory):
    b, admin = start(broker_factory)
    dev = unique("bad")
    body = ("m,device=%s a=1 1\n"
            "m,device=%s a=2 2\n"
            "m,device=%s a= 3\n" % (dev, dev, dev))
    r = write(b, body, token=admin.token)
    assert r.status_code == 400
    j = r.json()
    assert j["error"]["code"] == "invalid_line_protocol"
    assert j["error"]["message"].startswith("line 3, column ")
    assert "missing field value" in j["error"]["message"]
    # all or nothing: the good lines were not written
    assert admin.get("/devices/%s/latest" % dev).status_code == 404
    for bad in ["m", "m,t v=1", "m v=tru", "m v=1 12x", "m v=\"open"]:
        r = write(b, bad, token=admin.token)
        assert r.status_code == 400, bad
        assert r.json()["error"]["message"].startswith("line 1, column"), r.text


def test_type_conflict_is_400(broker_factory):
    b, admin = start(broker_factory)
    dev = unique("ty")
    assert write(b, "m,device=%s v=1 1" % dev, token=admin.token).status_code == 204
    r = write(b, "m,device=%s v=\"s\" 2" % dev, token=admin.token)
    assert r.status_code == 400, r.text


def test_auth_401_403(broker_factory):
    b, admin = start(broker_factory)
    for path in ["/write", "/api/v2/write"]:
        r = write(b, "m v=1", path=path)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        r = write(b, "m v=1", path=path, token="not-a-token")
        assert r.status_code == 401
    viewer = admin.post("/tokens", {"name": unique("v"), "role": "viewer"})
    assert viewer.status_code == 201, viewer.text
    tok = viewer.json()["token"]
    r = write(b, "m v=1", token=tok)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    op = admin.post("/tokens", {"name": unique("o"), "role": "operator"})
    assert op.status_code == 201, op.text
    assert write(b, "m v=1", token=op.json()["token"]).status_code == 204


def test_tenant_isolation(broker_factory):
    b, admin = start(broker_factory)
    r = admin.post("/tenants", {"name": unique("t2"), "admin_email": "t2@example.com",
                                "admin_password": "t2-password"})
    assert r.status_code == 201, r.text
    t2 = Api(b).login("t2@example.com", "t2-password")
    dev = unique("iso")
    assert write(b, "m,device=%s secret=42 1" % dev, token=admin.token).status_code == 204
    assert t2.get("/devices/%s/latest" % dev).status_code == 404
    assert write(b, "m,device=%s secret=7 2" % dev, token=t2.token).status_code == 204
    assert latest(t2, dev)["m.secret"]["value"] == 7
    assert latest(admin, dev)["m.secret"]["value"] == 42


def test_large_batch(broker_factory):
    b, admin = start(broker_factory)
    lines = ["sensors,device=dev%03d,site=plant-7 temp=%d.25,hum=%di,ok=t %d"
             % (i % 100, i, i, 1700000000000000000 + i) for i in range(5000)]
    body = "\n".join(lines) + "\n"
    assert 300000 < len(body) < 1024 * 1024
    r = write(b, body, token=admin.token)
    assert r.status_code == 204, r.text[:300]
    m = latest(admin, "dev099")
    assert m["sensors.temp"]["value"] == 4999.25
    assert m["sensors.hum"]["value"] == 4999


def test_fsync_always_204_means_durable(broker_factory):
    """Under fsync always, 204 comes after the group-commit fsync: the points
    survive a kill -9 right after the reply."""
    b = broker_factory(fsync="always")
    admin = admin_api(b)
    dev = unique("dur")
    r = write(b, "m,device=%s v=1.5 1700000000000000000\nm,device=%s w=2i 1700000000000000000"
              % (dev, dev), token=admin.token)
    assert r.status_code == 204, r.text
    b.kill9(pause=0)
    b.start()
    admin = admin_api(b)
    m = latest(admin, dev)
    assert m["m.v"]["value"] == 1.5 and m["m.w"]["value"] == 2


def test_gzip_body(broker_factory):
    """Telegraf's influxdb_v2 output and the InfluxDB client libraries gzip
    their bodies by default."""
    import gzip
    b, admin = start(broker_factory)
    dev = unique("gz")
    body = gzip.compress(("m,device=%s v=%d %d\n" % (dev, 7, 1) * 3).encode())
    r = write(b, body, token=admin.token, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 204, r.text
    assert latest(admin, dev)["m.v"]["value"] == 7
    r = write(b, b"not gzip", token=admin.token, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_gzip"
    r = write(b, "m v=1", token=admin.token, headers={"Content-Encoding": "br"})
    assert r.status_code == 415
    bomb = gzip.compress(b"#" * (9 * 1024 * 1024))
    r = write(b, bomb, token=admin.token, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413
