"""The broker uses the registry: devices connect with their secrets, API
tokens connect as apps, per-device ACLs, tenant isolation inside the broker,
AWS IoT presence events, revocation. Real clients: paho and mosquitto_sub
over MQTT, python3-requests over HTTP."""

import json
import time

import pytest
import requests

from clients import V311, V5, PahoClient, unique, wait_until
from conftest import skip_on_mosquitto

pytestmark = pytest.mark.usefixtures("thinghz_only")


@pytest.fixture
def thinghz_only():
    skip_on_mosquitto("the registry is thinghz's")


class Api:
    """A logged-in REST client for one daemon."""

    def __init__(self, broker, token=None, email=None, password=None):
        self.base = "http://127.0.0.1:%d/api/v1" % broker.http_port
        if token is None:
            r = requests.post(self.base + "/auth/login", timeout=10,
                              json={"email": email or broker.admin_email,
                                    "password": password or broker.admin_password})
            assert r.status_code == 200, r.text
            token = r.json()["token"]
        self.token = token
        self.h = {"Authorization": "Bearer " + token}

    def call(self, method, path, expect=None, **kw):
        r = requests.request(method, self.base + path, headers=self.h, timeout=10, **kw)
        if expect is not None:
            assert r.status_code == expect, "%s %s: %d %s" % (method, path, r.status_code, r.text)
        return r

    def api_token(self, **fields):
        """A new API token (login sessions do not connect over MQTT)."""
        body = {"name": unique("tok")}
        body.update(fields)
        return self.call("POST", "/tokens", 201, json=body).json()

    def device(self, dev_id=None, **fields):
        body = {"id": dev_id or unique("dev")}
        body.update(fields)
        return self.call("POST", "/devices", 201, json=body).json()


@pytest.fixture
def daemon(broker_factory):
    # No anonymous access: every client here proves who it is.
    return broker_factory(allow_anonymous=False)


def device_client(b, dev, version=V5, client_id=None, expect_rc=0, **kw):
    return PahoClient(b, client_id=client_id or dev["id"], version=version,
                      username=dev["id"], password=dev["secret"], expect_rc=expect_rc, **kw)


def test_device_connects_with_its_secret_only(daemon):
    api = Api(daemon)
    dev = api.device(name="pump")
    for v in (V5, V311):
        c = device_client(daemon, dev, version=v)
        c.disconnect()
    # wrong secret: 0x86 (v5) / 4 (3.1.1: bad user name or password)
    bad = dict(dev, secret=dev["secret"][:-2] + "xx")
    device_client(daemon, bad, expect_rc=0x86).close()
    device_client(daemon, bad, version=V311, expect_rc=4).close()
    # another device's id with this secret
    other = api.device()
    device_client(daemon, dict(other, secret=dev["secret"]), expect_rc=0x86).close()


def test_rotate_disconnects_and_refuses_the_old_secret(daemon):
    api = Api(daemon)
    dev = api.device()
    c = device_client(daemon, dev)
    new = api.call("POST", "/devices/%s/rotate" % dev["id"], 200).json()
    assert new["secret"] != dev["secret"]
    assert c.wait_disconnected() == 0x98  # administrative action
    c.stop_loop()
    device_client(daemon, dev, expect_rc=0x86).close()
    device_client(daemon, dict(dev, secret=new["secret"])).disconnect()


def test_disable_and_delete_revoke(daemon):
    api = Api(daemon)
    dev = api.device()
    c = device_client(daemon, dev)
    api.call("PATCH", "/devices/" + dev["id"], 200, json={"enabled": False})
    assert c.wait_disconnected() == 0x98
    c.stop_loop()
    device_client(daemon, dev, expect_rc=0x86).close()
    api.call("PATCH", "/devices/" + dev["id"], 200, json={"enabled": True})
    c = device_client(daemon, dev)
    api.call("DELETE", "/devices/" + dev["id"], 204)
    assert c.wait_disconnected() == 0x98
    c.stop_loop()
    device_client(daemon, dev, expect_rc=0x86).close()


def test_device_acl_own_topics_and_group_policy(daemon):
    api = Api(daemon)
    d1, d2 = api.device(), api.device()
    c = device_client(daemon, d1)
    own = "devices/%s/telemetry" % d1["id"]
    assert c.subscribe("devices/%s/#" % d1["id"], qos=1) == [1]
    assert c.subscribe("$aws/things/%s/shadow/#" % d1["id"], qos=1) == [1]
    assert c.subscribe("devices/%s/#" % d2["id"], qos=1) == [0x87]
    assert c.subscribe("#", qos=1) == [0x87]
    info = c.publish(own, b"21.5", qos=1)
    assert info.rc == 0
    assert c.get().topic == own
    # someone else's topic: PUBACK 0x87, the message goes nowhere
    watcher = PahoClient(daemon, username="app", password=api.api_token()["token"])
    watcher.subscribe("devices/#", qos=1)
    c.publish("devices/%s/telemetry" % d2["id"], b"x", qos=1)
    watcher.expect_none(0.5)
    # 3.1.1 has no negative PUBACK: the device is disconnected
    c3 = device_client(daemon, d1, version=V311, client_id=unique("c3"))
    c3.publish("devices/%s/telemetry" % d2["id"], b"x", qos=1, wait=False)
    c3.wait_disconnected()
    c3.stop_loop()
    # a group policy grants more
    gid = unique("g")
    api.call("POST", "/groups", 201, json={
        "id": gid, "policy": {"subscribe": ["fleet/cmd/#"], "publish": ["fleet/up/${device}"]}})
    api.call("PUT", "/groups/%s/devices/%s" % (gid, d1["id"]), 204)
    assert c.subscribe("fleet/cmd/#", qos=1) == [1]
    c.publish("fleet/up/" + d1["id"], b"ok", qos=1)
    assert watcher.subscribe("fleet/#", qos=1) == [1]
    c.publish("fleet/up/" + d1["id"], b"again", qos=1)
    assert watcher.get().payload == b"again"
    c2 = device_client(daemon, d2, client_id=unique("d2"))
    assert c2.subscribe("fleet/cmd/#", qos=1) == [0x87]
    for x in (c, c2, watcher):
        x.disconnect()


def test_tokens_connect_with_their_roles(daemon):
    api = Api(daemon)
    viewer_email = unique("viewer") + "@example.com"
    api.call("POST", "/users", 201,
             json={"email": viewer_email, "password": "viewer-password", "role": "viewer"})
    viewer = Api(daemon, email=viewer_email, password="viewer-password")
    # a login session is not an MQTT credential; an API token is
    PahoClient(daemon, username="dashboard", password=viewer.token, expect_rc=0x86).close()
    v = PahoClient(daemon, username="dashboard", password=viewer.api_token()["token"])
    assert v.subscribe("#", qos=1) == [1]
    info = v.c.publish("apps/x", b"1", qos=1)
    info.wait_for_publish(5)
    tok = api.api_token()
    admin = PahoClient(daemon, username="ops", password=tok["token"])
    admin.publish("apps/y", b"2", qos=1)
    got = v.get()
    assert (got.topic, got.payload) == ("apps/y", b"2")  # the viewer's own publish was denied
    v.expect_none(0.3)
    # a wrong token is no password
    PahoClient(daemon, username="x", password="thz_not-a-token", expect_rc=0x86).close()
    # a revoked token no longer connects
    api.call("DELETE", "/tokens/%s" % tok["id"], 204)
    PahoClient(daemon, username="x", password=tok["token"], expect_rc=0x86).close()
    v.disconnect()
    admin.disconnect()


def new_tenant(api, daemon):
    email = unique("t2admin") + "@example.com"
    api.call("POST", "/tenants", 201, json={"name": unique("tenant"), "admin_email": email,
                                            "admin_password": "tenant-two-password"})
    return Api(daemon, email=email, password="tenant-two-password")


def test_tenants_never_see_each_other(daemon):
    api1 = Api(daemon)
    api2 = new_tenant(api1, daemon)
    # the same device id in both tenants, connected at once with the same client id
    a = api1.device("sensor-1")
    b = api2.device("sensor-1")
    ca = device_client(daemon, a)
    cb = device_client(daemon, b)
    t1, t2 = api1.api_token()["token"], api2.api_token()["token"]
    w1 = PahoClient(daemon, username="w1", password=t1)
    w2 = PahoClient(daemon, username="w2", password=t2)
    for w in (w1, w2):
        assert w.subscribe("#", qos=1) == [1]
        assert w.subscribe("$aws/#", qos=1) == [1]
    ca.publish("devices/sensor-1/telemetry", b"tenant-1", qos=1)
    cb.publish("devices/sensor-1/telemetry", b"tenant-2", qos=1)
    assert [m.payload for m in w1.drain(0.7) if not m.topic.startswith("$aws")] == [b"tenant-1"]
    assert [m.payload for m in w2.drain(0.7) if not m.topic.startswith("$aws")] == [b"tenant-2"]
    # neither connection was taken over by the other
    assert not ca.disconnects and not cb.disconnects
    # the broker's namespace is not reachable by name
    assert w1.subscribe("$t/#", qos=1) == [0x87]
    PahoClient(daemon, client_id="$t/2/sensor-1", username="w", password=t1,
               expect_rc=0x85).close()
    # retained messages stay in their tenant
    w2.publish("status/global", b"two", qos=1, retain=True)
    r1 = PahoClient(daemon, username="r1", password=t1)
    r1.subscribe("status/#", qos=1)
    r1.expect_none(0.4)
    r2 = PahoClient(daemon, username="r2", password=t2)
    r2.subscribe("status/#", qos=1)
    m = r2.get()
    assert (m.topic, m.payload, m.retain) == ("status/global", b"two", 1)
    # HTTP publish with a bearer token lands in the caller's tenant
    r = requests.post("http://127.0.0.1:%d/api/v1/topics/status/http?qos=1" % daemon.http_port,
                      data=b"via-http", headers=api2.h, timeout=10)
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


def test_presence_events_and_device_health(daemon):
    api = Api(daemon)
    dev = api.device()
    w = PahoClient(daemon, username="watch", password=api.api_token()["token"])
    assert w.subscribe("$aws/events/presence/#", qos=1) == [1]
    assert api.call("GET", "/devices/" + dev["id"], 200).json()["online"] is False
    c = device_client(daemon, dev, client_id="cid-" + dev["id"], keepalive=30)
    ev = presence_events(w, 1)
    topic, body = ev[0]
    assert topic == "$aws/events/presence/connected/cid-" + dev["id"]
    assert body["eventType"] == "connected"
    assert body["clientId"] == "cid-" + dev["id"]
    assert body["principalIdentifier"] == dev["id"]
    assert body["ipAddress"] == "127.0.0.1"
    assert abs(body["timestamp"] / 1000 - time.time()) < 60
    v1 = body["versionNumber"]
    d = api.call("GET", "/devices/" + dev["id"], 200).json()
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
        api.call("GET", "/devices/" + dev["id"], 200).json()))
    assert d and d["online"] is False
    assert d["last_disconnect_reason"] == "CLIENT_INITIATED_DISCONNECT"
    assert d["messages_in_total"] >= 5
    # a takeover: the new connection's version is higher, the old one's
    # disconnect (DUPLICATE_CLIENTID) does not make the device look offline
    c1 = device_client(daemon, dev, client_id="cid-" + dev["id"])
    c2 = device_client(daemon, dev, client_id="cid-" + dev["id"])
    evs = presence_events(w, 3)
    kinds = [(b["eventType"], b.get("disconnectReason"), b["versionNumber"]) for _, b in evs]
    conns = [k for k in kinds if k[0] == "connected"]
    gone = [k for k in kinds if k[0] == "disconnected"]
    assert len(conns) == 2 and conns[0][2] > v1 and conns[1][2] > conns[0][2]
    assert gone == [("disconnected", "DUPLICATE_CLIENTID", conns[0][2])]
    assert api.call("GET", "/devices/" + dev["id"], 200).json()["online"] is True
    c1.stop_loop()
    c2.disconnect()
    w.disconnect()


def test_registry_survives_restart(daemon):
    api = Api(daemon)
    dev = api.device()
    c = device_client(daemon, dev)
    c.publish("devices/%s/telemetry" % dev["id"], b"1", qos=1)
    c.disconnect()
    time.sleep(0.3)
    daemon.restart()
    device_client(daemon, dev).disconnect()
    api.call("GET", "/auth/whoami", 200)  # tokens outlive a restart
    api2 = Api(daemon)  # a new login; the admin is not created twice
    d = api2.call("GET", "/devices/" + dev["id"], 200).json()
    assert d["online"] is False and d["last_seen"]
