"""test_webapi.py - the server side of the live web dashboard against the real
daemon: downsampled telemetry (points=, agg=minmax), connection history,
the recent-messages ring, fleet sparklines, dashboards (roles, tenants,
bodies, import/export) and the live WebSocket /api/v1/ws/live driven by
python3-websocket, paho and mosquitto_pub."""

import base64
import json
import struct
import time

import pytest
import websocket

from apiclient import expect, new_device, write_lines
from clients import PahoClient, V311, V5, mosquitto_pub, unique, wait_until
from conftest import IS_MOSQUITTO

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="mosquitto has no HTTP API")

S = 10**9
T0 = 1795687200 * S  # 2026-11-26T10:00:00Z


@pytest.fixture
def daemon(closed):
    """The admin fixture's daemon here is the closed one (conftest.py)."""
    return closed


def user_api(admin, role):
    email = unique(role) + "@example.com"
    expect(admin.post("/users", {"email": email, "password": "password-" + role,
                                 "role": role}), 201)
    return admin.login(email, "password-" + role)


def new_tenant(api):
    email = unique("t2admin") + "@example.com"
    expect(api.post("/tenants", {"name": unique("tenant"), "admin_email": email,
                                 "admin_password": "tenant-two-password"}), 201)
    return api.login(email, "tenant-two-password")


def device_client(b, dev, version=V5, client_id=None, **kw):
    return PahoClient(b, client_id=client_id or dev["id"], version=version,
                      username=dev["id"], password=dev["secret"], **kw)


# ---------------------------------------------------------------- telemetry


def test_points_downsamples_to_at_most_n_points(closed, admin):
    dev = unique("dev")
    write_lines(admin, ["telemetry,device=%s v=%d %d" % (dev, i, T0 + i * S) for i in range(1000)])
    base = "/devices/%s/telemetry?metric=v&from=%d&to=%d" % (dev, T0 // 10**6,
                                                             (T0 + 1000 * S) // 10**6)
    pts = expect(admin.get(base + "&points=10"), 200).json()["points"]
    assert len(pts) == 10
    # bin k holds the values 100k .. 100k+99: their average
    assert [p[1] for p in pts] == [100 * k + 49.5 for k in range(10)]
    assert pts[0][0] == "2026-11-26T10:00:00Z" and pts[1][0] == "2026-11-26T10:01:40Z"
    # a point count that does not divide the range: still at most N points
    assert len(expect(admin.get(base + "&points=7"), 200).json()["points"]) <= 7
    mx = expect(admin.get(base + "&points=4&agg=max"), 200).json()["points"]
    assert [p[1] for p in mx] == [249, 499, 749, 999]
    mm = expect(admin.get(base + "&points=2&agg=minmax"), 200).json()["points"]
    assert mm == [["2026-11-26T10:00:00Z", 0, 499, 249.5],
                  ["2026-11-26T10:08:20Z", 500, 999, 749.5]]
    mm = expect(admin.get(base + "&step=500s&agg=minmax"), 200).json()["points"]
    assert [p[1:] for p in mm] == [[0, 499, 249.5], [500, 999, 749.5]]
    # several metrics keep the series shape
    j = expect(admin.get(base.replace("metric=v", "metric=v,w") + "&points=5"), 200).json()
    assert [s["metric"] for s in j["series"]] == ["v", "w"]
    assert len(j["series"][0]["points"]) == 5 and j["series"][1]["points"] == []
    for bad in ("&points=0", "&points=10001", "&points=x", "&agg=minmax", "&agg=median"):
        expect(admin.get(base + bad), 400, "invalid_request")


def test_points_over_thirty_days_of_one_hertz(closed, admin):
    """A month at 1 Hz as written in a few large writes of 1-minute blocks of
    points is too slow to write here; one point a minute over 30 days still
    checks the range arithmetic and the bin alignment."""
    dev = unique("dev")
    n = 30 * 24 * 60
    lines = ["telemetry,device=%s v=%d %d" % (dev, i % 100, T0 + i * 60 * S) for i in range(n)]
    for k in range(0, n, 5000):
        write_lines(admin, lines[k:k + 5000])
    t0 = time.monotonic()
    r = expect(admin.get("/devices/%s/telemetry?metric=v&from=%d&to=%d&points=1000&agg=minmax"
                         % (dev, T0 // 10**6, (T0 + n * 60 * S) // 10**6)), 200).json()
    assert time.monotonic() - t0 < 5
    assert len(r["points"]) == 1000
    assert all(p[1] <= p[3] <= p[2] for p in r["points"])


# ---------------------------------------------------------------- events


def test_connection_events_newest_first_and_persisted(closed, admin):
    d = new_device(admin)
    c = device_client(closed, d, version=V311, client_id="cid-" + d["id"])
    c.disconnect()
    mosquitto_pub(closed.port, "devices/%s/x" % d["id"], "1",
                  extra=["-u", d["id"], "-P", d["secret"], "-i", "pub-" + d["id"]])

    def events():
        return expect(admin.get("/devices/%s/events" % d["id"]), 200).json()["events"]

    assert wait_until(lambda: len(events()) == 4)
    ev = events()
    assert [e["type"] for e in ev] == ["disconnected", "connected", "disconnected", "connected"]
    assert ev[3]["client_id"] == "cid-" + d["id"] and ev[3]["protocol"] == "MQTT 3.1.1"
    assert ev[1]["client_id"] == "pub-" + d["id"] and ev[1]["protocol"] == "MQTT 5.0"
    assert ev[3]["address"].startswith("127.0.0.1:")
    assert "reason" not in ev[1] and ev[0]["reason"] == "CLIENT_INITIATED_DISCONNECT"
    assert ev[0]["time"] >= ev[1]["time"] >= ev[2]["time"] >= ev[3]["time"]
    assert len(expect(admin.get("/devices/%s/events?limit=1" % d["id"]), 200).json()
               ["events"]) == 1
    closed.restart()
    assert expect(admin.get("/devices/%s/events" % d["id"]), 200).json()["events"] == ev
    expect(admin.get("/devices/%s/events?limit=0" % d["id"]), 400, "invalid_request")
    expect(admin.get("/devices/%s/events?limit=501" % d["id"]), 400, "invalid_request")
    expect(admin.get("/devices/nope/events"), 404, "not_found")
    expect(new_tenant(admin).get("/devices/%s/events" % d["id"]), 404, "not_found")
    expect(admin.get("/devices/%s/events" % d["id"], token=None), 401)


def test_connection_events_keep_the_last_200(closed, admin):
    d = new_device(admin)
    for _ in range(105):
        c = device_client(closed, d, version=V311)
        c.disconnect()
    time.sleep(0.2)
    ev = expect(admin.get("/devices/%s/events?limit=500" % d["id"]), 200).json()["events"]
    assert len(ev) == 200 and ev[0]["type"] == "disconnected"


# ---------------------------------------------------------------- messages


def test_messages_ring_order_truncation_and_binary(closed, admin):
    d = new_device(admin)
    c = device_client(closed, d)
    c.publish("devices/%s/a" % d["id"], b"first", qos=1)
    c.publish("$aws/things/%s/shadow/update" % d["id"], b'{"state":{}}', qos=1, retain=False)
    c.publish("devices/%s/big" % d["id"], "é".encode() * 1500, qos=0)  # 3000 bytes
    c.publish("devices/%s/bin" % d["id"], b"\x00\xff\xfe binary", qos=1, retain=True)
    c.publish("devices/other-device/x", b"not mine", qos=1)
    wait_until(lambda: len(admin.get("/devices/%s/messages" % d["id"]).json()["messages"]) == 4)
    m = expect(admin.get("/devices/%s/messages" % d["id"]), 200).json()["messages"]
    assert [x["topic"] for x in m] == ["devices/%s/bin" % d["id"], "devices/%s/big" % d["id"],
                                       "$aws/things/%s/shadow/update" % d["id"],
                                       "devices/%s/a" % d["id"]]
    assert m[0]["payload"] is None and base64.b64decode(m[0]["payload_base64"]) == \
        b"\x00\xff\xfe binary"
    assert m[0]["retain"] is True and m[0]["qos"] == 1 and m[0]["truncated"] is False
    assert m[1]["size"] == 3000 and m[1]["truncated"] is True and m[1]["qos"] == 0
    assert m[1]["payload"] == "é" * 1024 and "payload_base64" not in m[1]
    assert m[3]["payload"] == "first" and m[3]["size"] == 5
    assert m[0]["time"] >= m[3]["time"]
    two = expect(admin.get("/devices/%s/messages?limit=2" % d["id"]), 200).json()["messages"]
    assert two == m[:2]
    # the ring keeps the last 100
    for i in range(105):
        c.publish("devices/%s/n" % d["id"], str(i).encode(), qos=0, wait=False)
    c.publish("devices/%s/n" % d["id"], b"last", qos=1)
    m = expect(admin.get("/devices/%s/messages?limit=100" % d["id"]), 200).json()["messages"]
    assert len(m) == 100 and m[0]["payload"] == "last" and m[1]["payload"] == "104"
    expect(admin.get("/devices/%s/messages?limit=101" % d["id"]), 400, "invalid_request")
    expect(admin.get("/devices/nope/messages"), 404, "not_found")
    expect(new_tenant(admin).get("/devices/%s/messages" % d["id"]), 404, "not_found")
    c.close()


# ---------------------------------------------------------------- sparklines


def test_sparklines_main_metric_attribute_and_default(closed, admin):
    a = new_device(admin)
    b = new_device(admin, attributes={"main_metric": "b_metric"})
    c = new_device(admin)
    now = time.time_ns()
    lines = []
    for i in range(10):
        t = now - (600 - i * 60) * S
        lines += ["telemetry,device=%s b_metric=%d,a_metric=%d,aa_str=\"x\" %d" % (a["id"], i, 100 + i, t),
                  "telemetry,device=%s b_metric=%d,a_metric=%d %d" % (b["id"], 10 * i, i, t)]
    write_lines(admin, lines)
    ids = ",".join([a["id"], b["id"], c["id"], "unknown-device"])
    j = expect(admin.get("/fleet/sparklines?ids=%s&minutes=15&points=15" % ids), 200).json()
    devs = j["devices"]
    assert set(devs) == {a["id"], b["id"], c["id"]}
    assert devs[a["id"]]["metric"] == "a_metric"
    assert [p[1] for p in devs[a["id"]]["points"]] == [100 + i for i in range(10)]
    assert devs[b["id"]]["metric"] == "b_metric"
    assert [p[1] for p in devs[b["id"]]["points"]] == [10 * i for i in range(10)]
    assert devs[c["id"]] == {"metric": None, "points": []}
    assert len(expect(admin.get("/fleet/sparklines?ids=%s&minutes=15&points=3" % a["id"]),
                      200).json()["devices"][a["id"]]["points"]) <= 3
    expect(admin.get("/fleet/sparklines?ids=" + ",".join("d%d" % i for i in range(201))), 400)
    expect(admin.get("/fleet/sparklines"), 400)
    expect(admin.get("/fleet/sparklines?ids=a&points=0"), 400)
    assert new_tenant(admin).get("/fleet/sparklines?ids=" + a["id"]).json() == {"devices": {}}


# ---------------------------------------------------------------- dashboards

DEF = {"time": {"from": "now-1h", "to": "now"}, "refresh": "5s",
       "variables": {"device": "pump-1"},
       "panels": [{"id": "p1", "type": "timeseries", "title": "T", "x": 0, "y": 0, "w": 6,
                   "h": 4, "query": {"device": "${device}", "metric": "temp", "agg": "avg"},
                   "unit": "°C", "thresholds": [{"value": 30, "color": "orange"}]}]}


def test_dashboards_crud_import_export(closed, admin):
    d = expect(admin.post("/dashboards", {"title": "Pumps", "definition": DEF}), 201).json()
    assert d["title"] == "Pumps" and d["definition"] == DEF and d["created_at"]
    lst = expect(admin.get("/dashboards"), 200).json()["dashboards"]
    assert lst == [{"id": d["id"], "title": "Pumps", "created_at": d["created_at"],
                    "updated_at": d["updated_at"]}]
    exported = expect(admin.get("/dashboards/%d" % d["id"]), 200).json()
    assert exported == d
    d2 = dict(DEF, refresh="off")
    u = expect(admin.put("/dashboards/%d" % d["id"], body={"title": "Pumps 2",
                                                          "definition": d2}), 200).json()
    assert u["title"] == "Pumps 2" and u["definition"] == d2 and u["id"] == d["id"]
    # import: the exported document posted back as is
    imp = expect(admin.post("/dashboards", exported), 201).json()
    assert imp["id"] != d["id"] and imp["definition"] == DEF and imp["title"] == "Pumps"
    expect(admin.delete("/dashboards/%d" % d["id"]), 204)
    expect(admin.get("/dashboards/%d" % d["id"]), 404, "not_found")
    expect(admin.delete("/dashboards/%d" % d["id"]), 404, "not_found")
    expect(admin.put("/dashboards/%d" % d["id"], body={"title": "x", "definition": {}}), 404)
    assert [x["id"] for x in admin.get("/dashboards").json()["dashboards"]] == [imp["id"]]
    expect(admin.get("/dashboards/abc"), 400)


def test_dashboards_roles_tenants_and_bad_bodies(closed, admin):
    d = expect(admin.post("/dashboards", {"title": "A", "definition": {}}), 201).json()
    viewer = user_api(admin, "viewer")
    expect(viewer.post("/dashboards", {"title": "V", "definition": {}}), 403, "forbidden")
    expect(viewer.put("/dashboards/%d" % d["id"], body={"title": "V", "definition": {}}), 403)
    expect(viewer.delete("/dashboards/%d" % d["id"]), 403)
    assert expect(viewer.get("/dashboards/%d" % d["id"]), 200).json()["title"] == "A"
    op = user_api(admin, "operator")
    expect(op.post("/dashboards", {"title": "O", "definition": {}}), 201)
    other = new_tenant(admin)
    expect(other.get("/dashboards/%d" % d["id"]), 404, "not_found")
    expect(other.delete("/dashboards/%d" % d["id"]), 404, "not_found")
    assert other.get("/dashboards").json() == {"dashboards": []}
    for body in ({"definition": {}}, {"title": "", "definition": {}},
                 {"title": "x" * 201, "definition": {}}, {"title": "x"},
                 {"title": "x", "definition": []}, {"title": 5, "definition": {}},
                 {"title": "x", "definition": {"big": "y" * (256 * 1024)}}):
        expect(admin.post("/dashboards", body), 400, "invalid_request")
    assert expect(admin.post("/dashboards", {"title": "é" * 200, "definition": {}}), 201)
    expect(admin.post("/dashboards", data="{not json", headers={"Content-Type":
                                                               "application/json"}), 400)
    expect(admin.get("/dashboards", token=None), 401)


# ---------------------------------------------------------------- live WebSocket


class Live:
    """A live socket: frames as dicts, bounded waits."""

    def __init__(self, b, token=None):
        self.ws = websocket.create_connection("ws://127.0.0.1:%d/api/v1/ws/live" % b.http_port,
                                              timeout=5)
        if token:
            self.send(op="auth", token=token)
            r = self.next("ready")
            assert r["tenant"] >= 1

    def send(self, **kw):
        self.ws.send(json.dumps(kw))

    def recv(self, timeout=2.0):
        self.ws.settimeout(timeout)
        return json.loads(self.ws.recv())

    def next(self, type_, timeout=2.0, pred=lambda f: True):
        """The next frame of type_ (and pred) within timeout; others skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no %s frame within %.1f s" % (type_, timeout)
            f = self.recv(left)
            if f.get("type") == type_ and pred(f):
                return f

    def none(self, type_, within=0.7, pred=lambda f: True):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                f = self.recv(max(0.05, deadline - time.monotonic()))
            except websocket.WebSocketTimeoutException:
                return
            assert not (f.get("type") == type_ and pred(f)), f

    def subscribe(self, **kw):
        self.send(op="subscribe", **kw)
        self.next("subscribed")

    def close_code(self, timeout=12):
        self.ws.settimeout(timeout)
        while True:
            op, frame = self.ws.recv_data_frame(control_frame=True)
            if op == websocket.ABNF.OPCODE_CLOSE:
                return struct.unpack("!H", frame.data[:2])[0]

    def close(self):
        self.ws.close()


def test_live_needs_auth(closed, admin):
    w = Live(closed)
    w.send(op="subscribe", device="x")
    assert w.recv()["type"] == "error"
    assert w.close_code() == 1008
    w = Live(closed)
    w.send(op="auth", token="thz_wrong")
    assert w.recv()["type"] == "error"
    assert w.close_code() == 1008
    w = Live(closed)
    w.ws.send("not json")
    assert w.recv()["type"] == "error"
    assert w.close_code() == 1008
    viewer = user_api(admin, "viewer")
    w = Live(closed)
    w.send(op="auth", token=viewer.token)
    r = w.recv()
    assert r == {"type": "ready", "tenant": 1, "role": "viewer"}
    w.send(op="ping")
    assert w.recv() == {"type": "pong"}
    w.send(op="auth", token=viewer.token)
    assert w.recv()["type"] == "error"  # already authenticated: not fatal
    w.send(op="ping")
    assert w.recv() == {"type": "pong"}
    for i in range(64):
        w.send(op="subscribe", device="d%d" % i)
        assert w.recv() == {"type": "subscribed", "device": "d%d" % i}
    w.send(op="subscribe", device="d64")
    assert w.recv()["type"] == "error"
    w.send(op="unsubscribe", device="d0")
    assert w.recv()["type"] == "unsubscribed"
    w.subscribe(device="d64")
    w.close()


def test_live_auth_timeout(closed):
    w = Live(closed)
    t0 = time.monotonic()
    assert w.close_code(timeout=15) == 1008
    assert 9 <= time.monotonic() - t0 < 13


def test_live_telemetry_messages_presence(closed, admin):
    d = new_device(admin)
    other = new_device(admin)
    w = Live(closed, admin.token)
    w.subscribe(device=d["id"])
    t0 = time.monotonic()
    mosquitto_pub(closed.port, "devices/%s/telemetry" % d["id"], '{"temp":21.5,"ok":true}',
                  qos=1, extra=["-u", d["id"], "-P", d["secret"], "-i", "live-" + d["id"]])
    pres = w.next("presence", timeout=1)
    assert pres["device"] == d["id"] and pres["online"] is True
    assert pres["client_id"] == "live-" + d["id"] and pres["protocol"] == "MQTT 5.0"
    f = w.next("telemetry", timeout=1)
    assert time.monotonic() - t0 < 1.5
    assert f["device"] == d["id"] and f["metrics"] == {"temp": 21.5, "ok": True}
    m = w.next("message", timeout=1)
    assert m["topic"] == "devices/%s/telemetry" % d["id"] and m["qos"] == 1
    assert json.loads(m["payload"]) == {"temp": 21.5, "ok": True} and m["truncated"] is False
    pres = w.next("presence", timeout=2, pred=lambda x: x["online"] is False)
    assert pres["device"] == d["id"] and pres["reason"] == "CLIENT_INITIATED_DISCONNECT"
    # binary payloads come base64-encoded, as in /messages
    c = device_client(closed, d)
    w.next("presence", pred=lambda x: x["online"])
    c.publish("devices/%s/raw" % d["id"], b"\xff\x00", qos=1)
    m = w.next("message")
    assert m["payload"] is None and base64.b64decode(m["payload_base64"]) == b"\xff\x00"
    # line protocol produces telemetry frames too, grouped per timestamp
    now = time.time_ns()
    write_lines(admin, ["telemetry,device=%s a=1,b=2i %d" % (d["id"], now),
                        "telemetry,device=%s c=\"s\" %d" % (d["id"], now),
                        "telemetry,device=%s a=5 %d" % (d["id"], now + S),
                        "telemetry,device=%s a=9 %d" % (other["id"], now)])
    f = w.next("telemetry", timeout=1)
    assert f["metrics"] == {"a": 1, "b": 2, "c": "s"}
    f = w.next("telemetry", timeout=1)
    assert f["metrics"] == {"a": 5}
    # another device's data never arrives
    w.none("telemetry", within=0.3)
    w.send(op="unsubscribe", device=d["id"])
    w.next("unsubscribed")
    c.publish("devices/%s/telemetry" % d["id"], b'{"temp":1}', qos=1)
    write_lines(admin, ["telemetry,device=%s a=7 %d" % (d["id"], now + 2 * S)])
    w.none("telemetry")
    w.none("message", within=0.1)
    c.close()
    w.close()


def test_live_tenants_are_isolated(closed, admin):
    d = new_device(admin)
    other = new_tenant(admin)
    w = Live(closed, other.token)
    w.subscribe(device=d["id"])
    w.subscribe(fleet=True)
    write_lines(admin, ["telemetry,device=%s a=1 %d" % (d["id"], time.time_ns())])
    c = device_client(closed, d)
    c.publish("devices/%s/x" % d["id"], b"1", qos=1)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            f = w.recv(0.2)
        except websocket.WebSocketTimeoutException:
            continue
        assert f["type"] == "fleet" and d["id"] not in f["devices"], f
    c.close()
    w.close()


def test_live_fleet_frames(closed, admin):
    a = new_device(admin)
    b = new_device(admin)
    w = Live(closed, admin.token)
    w.subscribe(fleet=True)
    first = w.next("fleet", timeout=3)
    assert first["total"] == 2 and first["online"] == 0
    assert set(first["devices"]) == {a["id"], b["id"]}
    assert first["devices"][a["id"]] == {"rate": 0, "last_seen": None, "online": False}
    c = device_client(closed, a)
    p = w.next("presence", timeout=2)
    assert p["device"] == a["id"] and p["online"] is True
    # about 20 messages a second for 2.5 s
    for _ in range(50):
        c.publish("devices/%s/x" % a["id"], b"1", qos=0, wait=False)
        time.sleep(0.05)
    f = w.next("fleet", timeout=3, pred=lambda x: x["devices"].get(a["id"], {}).get("rate", 0) > 0)
    assert f["online"] == 1 and f["total"] == 2
    assert b["id"] not in f["devices"]  # unchanged devices are left out
    assert 3 <= f["devices"][a["id"]]["rate"] <= 40
    assert f["devices"][a["id"]]["online"] is True
    c.disconnect()
    p = w.next("presence", pred=lambda x: x["online"] is False)
    assert p["device"] == a["id"] and p["reason"] == "CLIENT_INITIATED_DISCONNECT"
    f = w.next("fleet", timeout=3, pred=lambda x: a["id"] in x["devices"]
               and x["devices"][a["id"]]["online"] is False)
    assert f["online"] == 0
    w.send(op="unsubscribe", fleet=True)
    w.next("unsubscribed")
    w.none("fleet", within=2.5)
    w.close()
