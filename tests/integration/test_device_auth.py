"""test_device_auth.py - devices created over the REST API connect to the
broker with username = device id and password = the secret it was given;
wrong, rotated, disabled and deleted credentials are refused, and a live
connection is dropped when its credentials are revoked.

Also: per-device ACLs and group policies, API tokens as MQTT credentials
with their roles, tenant isolation inside the broker, and AWS IoT presence
events."""

import json
import time

import pytest

import requests

from clients import V5, V311, PahoClient, unique, wait_until
from conftest import IS_MOSQUITTO
from apiclient import api_token, expect, new_device

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="mosquitto has no device registry")

BAD_AUTH_V5 = 0x86
BAD_AUTH_V311 = 4   # "bad user name or password"
NOT_AUTH_V311 = 5   # "not authorized"


@pytest.fixture
def daemon(closed):
    """The admin fixture's daemon here is the closed one (conftest.py)."""
    return closed


def refused_v5(b, user, password):
    c = PahoClient(b, version=V5, username=user, password=password, expect_rc=None)
    rc = c.connack["rc"]
    c.close()
    return rc


def accepted(b, user, password, version=V5):
    c = PahoClient(b, version=version, username=user, password=password, expect_rc=None)
    ok = c.connack["rc"] == 0
    c.close()
    return ok


def test_secret_connects_and_wrong_secret_is_refused(closed, admin):
    d = expect(admin.post("/devices", {"id": unique("dev")}), 201).json()
    assert accepted(closed, d["id"], d["secret"])
    assert accepted(closed, d["id"], d["secret"], version=V311)
    assert refused_v5(closed, d["id"], d["secret"][:-1] + "x") == BAD_AUTH_V5
    c = PahoClient(closed, version=V311, username=d["id"], password="wrong", expect_rc=None)
    assert c.connack["rc"] in (BAD_AUTH_V311, NOT_AUTH_V311)
    c.close()
    # another device's secret is not this device's
    e = expect(admin.post("/devices", {"id": unique("dev")}), 201).json()
    assert refused_v5(closed, d["id"], e["secret"]) == BAD_AUTH_V5


def test_rotate_refuses_the_old_secret_and_drops_the_connection(closed, admin):
    d = expect(admin.post("/devices", {"id": unique("dev")}), 201).json()
    live = PahoClient(closed, version=V5, username=d["id"], password=d["secret"])
    new = expect(admin.post("/devices/%s/rotate" % d["id"]), 200).json()["secret"]
    assert live.wait_disconnected() == 0x98  # administrative action
    live.close()
    assert refused_v5(closed, d["id"], d["secret"]) == BAD_AUTH_V5
    assert accepted(closed, d["id"], new)


def test_disabled_and_deleted_devices_are_refused(closed, admin):
    d = expect(admin.post("/devices", {"id": unique("dev")}), 201).json()
    live = PahoClient(closed, version=V5, username=d["id"], password=d["secret"])
    expect(admin.post("/devices/%s/disable" % d["id"]), 200)
    assert live.wait_disconnected() == 0x98
    live.close()
    assert not accepted(closed, d["id"], d["secret"])
    expect(admin.post("/devices/%s/enable" % d["id"]), 200)
    live = PahoClient(closed, version=V5, username=d["id"], password=d["secret"])
    expect(admin.delete("/devices/" + d["id"]), 204)
    assert live.wait_disconnected() == 0x98
    live.close()
    assert not accepted(closed, d["id"], d["secret"])


def test_presence_shows_in_the_api(closed, admin):
    d = expect(admin.post("/devices", {"id": unique("dev")}), 201).json()
    c = PahoClient(closed, version=V5, username=d["id"], password=d["secret"])
    assert wait_until(lambda: admin.get("/devices/" + d["id"]).json()["online"] is True)
    assert d["id"] in [x["id"] for x in admin.get("/devices", params={"online": "true"})
                       .json()["items"]]
    assert admin.get("/fleet").json()["online"] == 1
    c.disconnect()
    c.close()
    assert wait_until(lambda: admin.get("/devices/" + d["id"]).json()["online"] is False)


def test_secret_survives_a_restart(closed, admin):
    d = expect(admin.post("/devices", {"id": unique("dev")}), 201).json()
    c = PahoClient(closed, username=d["id"], password=d["secret"])
    c.publish("devices/%s/telemetry" % d["id"], b"1", qos=1)
    c.disconnect()
    time.sleep(0.3)
    closed.restart()
    assert accepted(closed, d["id"], d["secret"])
    expect(admin.get("/auth/whoami"), 200)  # tokens outlive a restart
    j = expect(admin.get("/devices/" + d["id"]), 200).json()
    assert j["online"] is False and j["last_seen"]


def device_client(b, dev, version=V5, client_id=None, expect_rc=0, **kw):
    return PahoClient(b, client_id=client_id or dev["id"], version=version,
                      username=dev["id"], password=dev["secret"], expect_rc=expect_rc, **kw)


def test_device_acl_own_topics_and_group_policy(closed, admin):
    api = admin
    d1, d2 = new_device(api), new_device(api)
    c = device_client(closed, d1)
    own = "devices/%s/telemetry" % d1["id"]
    assert c.subscribe("devices/%s/#" % d1["id"], qos=1) == [1]
    assert c.subscribe("$aws/things/%s/shadow/#" % d1["id"], qos=1) == [1]
    assert c.subscribe("devices/%s/#" % d2["id"], qos=1) == [0x87]
    assert c.subscribe("#", qos=1) == [0x87]
    info = c.publish(own, b"21.5", qos=1)
    assert info.rc == 0
    assert c.get().topic == own
    # someone else's topic: PUBACK 0x87, the message goes nowhere
    watcher = PahoClient(closed, username="app", password=api_token(api)["token"])
    watcher.subscribe("devices/#", qos=1)
    c.publish("devices/%s/telemetry" % d2["id"], b"x", qos=1)
    watcher.expect_none(0.5)
    # 3.1.1 has no negative PUBACK: the device is disconnected
    c3 = device_client(closed, d1, version=V311, client_id=unique("c3"))
    c3.publish("devices/%s/telemetry" % d2["id"], b"x", qos=1, wait=False)
    c3.wait_disconnected()
    c3.stop_loop()
    # a group policy grants more
    gid = unique("g")
    expect(api.post("/groups", {"id": gid, "policy": {"subscribe": ["fleet/cmd/#"],
                                                      "publish": ["fleet/up/${device}"]}}), 201)
    expect(api.put("/groups/%s/devices/%s" % (gid, d1["id"])), 204)
    assert c.subscribe("fleet/cmd/#", qos=1) == [1]
    c.publish("fleet/up/" + d1["id"], b"ok", qos=1)
    assert watcher.subscribe("fleet/#", qos=1) == [1]
    c.publish("fleet/up/" + d1["id"], b"again", qos=1)
    assert watcher.get().payload == b"again"
    c2 = device_client(closed, d2, client_id=unique("d2"))
    assert c2.subscribe("fleet/cmd/#", qos=1) == [0x87]
    for x in (c, c2, watcher):
        x.disconnect()


def test_tokens_connect_with_their_roles(closed, admin):
    api = admin
    viewer_email = unique("viewer") + "@example.com"
    expect(api.post("/users", {"email": viewer_email, "password": "viewer-password",
                               "role": "viewer"}), 201)
    viewer = api.login(viewer_email, "viewer-password")
    # a login session is not an MQTT credential; an API token is
    PahoClient(closed, username="dashboard", password=viewer.token, expect_rc=0x86).close()
    v = PahoClient(closed, username="dashboard", password=api_token(viewer)["token"])
    assert v.subscribe("#", qos=1) == [1]
    info = v.c.publish("apps/x", b"1", qos=1)
    info.wait_for_publish(5)
    tok = api_token(api)
    admin = PahoClient(closed, username="ops", password=tok["token"])
    admin.publish("apps/y", b"2", qos=1)
    got = v.get()
    assert (got.topic, got.payload) == ("apps/y", b"2")  # the viewer's own publish was denied
    v.expect_none(0.3)
    # a wrong token is no password
    PahoClient(closed, username="x", password="thz_not-a-token", expect_rc=0x86).close()
    # a revoked token no longer connects
    expect(api.delete("/tokens/%s" % tok["id"]), 204)
    PahoClient(closed, username="x", password=tok["token"], expect_rc=0x86).close()
    v.disconnect()
    admin.disconnect()


def new_tenant(api):
    email = unique("t2admin") + "@example.com"
    expect(api.post("/tenants", {"name": unique("tenant"), "admin_email": email,
                                 "admin_password": "tenant-two-password"}), 201)
    return api.login(email, "tenant-two-password")


def test_tenants_never_see_each_other(closed, admin):
    api1 = admin
    api2 = new_tenant(api1)
    # the same device id in both tenants, connected at once with the same client id
    a = new_device(api1, "sensor-1")
    b = new_device(api2, "sensor-1")
    ca = device_client(closed, a)
    cb = device_client(closed, b)
    t1, t2 = api_token(api1)["token"], api_token(api2)["token"]
    w1 = PahoClient(closed, username="w1", password=t1)
    w2 = PahoClient(closed, username="w2", password=t2)
    for w in (w1, w2):
        assert w.subscribe("#", qos=1) == [1]
        assert w.subscribe("$aws/#", qos=1) == [1]
    ca.publish("devices/sensor-1/telemetry", b'{"t": 1}', qos=1)
    cb.publish("devices/sensor-1/telemetry", b'{"t": 2}', qos=1)
    assert [m.payload for m in w1.drain(0.7) if not m.topic.startswith("$aws")] == [b'{"t": 1}']
    assert [m.payload for m in w2.drain(0.7) if not m.topic.startswith("$aws")] == [b'{"t": 2}']
    # neither connection was taken over by the other
    assert not ca.disconnects and not cb.disconnects
    # the broker's namespace is not reachable by name
    assert w1.subscribe("$t/#", qos=1) == [0x87]
    PahoClient(closed, client_id="$t/2/sensor-1", username="w", password=t1,
               expect_rc=0x85).close()
    # retained messages stay in their tenant
    w2.publish("status/global", b"two", qos=1, retain=True)
    r1 = PahoClient(closed, username="r1", password=t1)
    r1.subscribe("status/#", qos=1)
    r1.expect_none(0.4)
    r2 = PahoClient(closed, username="r2", password=t2)
    r2.subscribe("status/#", qos=1)
    m = r2.get()
    assert (m.topic, m.payload, m.retain) == ("status/global", b"two", 1)
    # HTTP publish with a bearer token lands in the caller's tenant
    r = requests.post("http://127.0.0.1:%d/api/v1/topics/status/http?qos=1" % closed.http_port,
                      data=b"via-http", headers={"Authorization": "Bearer " + api2.token},
                      timeout=10)
    assert r.status_code == 200, r.text
    assert r2.get().payload == b"via-http"
    r1.expect_none(0.3)
    for c in (ca, cb, w1, w2, r1, r2):
        c.disconnect()


def presence_events(w, n, timeout=5):
    out = []
    for m in w.get_n(n, timeout):
        out.append((m.topic, json.loads(m.payload)))
    return out


def test_presence_events_and_device_health(closed, admin):
    api = admin
    dev = new_device(api)
    w = PahoClient(closed, username="watch", password=api_token(api)["token"])
    assert w.subscribe("$aws/events/presence/#", qos=1) == [1]
    assert expect(api.get("/devices/" + dev["id"]), 200).json()["online"] is False
    c = device_client(closed, dev, client_id="cid-" + dev["id"], keepalive=30)
    ev = presence_events(w, 1)
    topic, body = ev[0]
    assert topic == "$aws/events/presence/connected/cid-" + dev["id"]
    assert body["eventType"] == "connected"
    assert body["clientId"] == "cid-" + dev["id"]
    assert body["principalIdentifier"] == dev["id"]
    assert body["ipAddress"] == "127.0.0.1"
    assert abs(body["timestamp"] / 1000 - time.time()) < 60
    v1 = body["versionNumber"]
    d = expect(api.get("/devices/" + dev["id"]), 200).json()
    assert d["online"] is True and d["last_seen"]
    assert d["keep_alive"] == 30 and d["protocol_version"] == 5
    for i in range(5):
        c.publish("devices/%s/telemetry" % dev["id"], b"x" * 10, qos=1)
    c.disconnect()
    topic, body = presence_events(w, 1)[0]
    assert topic == "$aws/events/presence/disconnected/cid-" + dev["id"]
    assert body["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    assert body["clientInitiatedDisconnect"] is True
    assert body["versionNumber"] == v1  # a connection's two events share it
    d = wait_until(lambda: (lambda j: j if not j["online"] else None)(
        expect(api.get("/devices/" + dev["id"]), 200).json()))
    assert d and d["online"] is False
    assert d["last_disconnect_reason"] == "CLIENT_INITIATED_DISCONNECT"
    assert d["messages_in_total"] >= 5
    # a takeover: the new connection's version is higher, the old one's
    # disconnect (DUPLICATE_CLIENTID) does not make the device look offline
    c1 = device_client(closed, dev, client_id="cid-" + dev["id"])
    c2 = device_client(closed, dev, client_id="cid-" + dev["id"])
    evs = presence_events(w, 3)
    kinds = [(b["eventType"], b.get("disconnectReason"), b["versionNumber"]) for _, b in evs]
    conns = [k for k in kinds if k[0] == "connected"]
    gone = [k for k in kinds if k[0] == "disconnected"]
    assert len(conns) == 2 and conns[0][2] > v1 and conns[1][2] > conns[0][2]
    assert gone == [("disconnected", "DUPLICATE_CLIENTID", conns[0][2])]
    assert expect(api.get("/devices/" + dev["id"]), 200).json()["online"] is True
    c1.stop_loop()
    c2.disconnect()
    w.disconnect()


