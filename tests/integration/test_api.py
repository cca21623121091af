"""test_api.py - the REST API of the registry against the real daemon: login,
tokens, tenants, users, devices, groups, fleet and openapi.json; roles,
tenant isolation, the JSON error shape, bad bodies, pagination, filters and
persistence across a restart."""

import json
import threading
import time

import pytest

from apiclient import Api, code, expect
from clients import unique
from conftest import IS_MOSQUITTO

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="mosquitto has no REST API")

MAX_BODY = 1024 * 1024

# Every route of the daemon, as the OpenAPI document must list it.
EXPECTED_ROUTES = {
    ("get", "/api/v1/health"),
    ("get", "/api/v1/broker/stats"),
    ("post", "/api/v1/topics/{topic}"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/auth/whoami"),
    ("get", "/api/v1/tokens"),
    ("post", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{id}"),
    ("get", "/api/v1/tenants"),
    ("post", "/api/v1/tenants"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("patch", "/api/v1/users/{id}"),
    ("delete", "/api/v1/users/{id}"),
    ("get", "/api/v1/devices"),
    ("post", "/api/v1/devices"),
    ("get", "/api/v1/devices/{id}"),
    ("patch", "/api/v1/devices/{id}"),
    ("delete", "/api/v1/devices/{id}"),
    ("post", "/api/v1/devices/{id}/rotate"),
    ("post", "/api/v1/devices/{id}/disable"),
    ("post", "/api/v1/devices/{id}/enable"),
    ("get", "/api/v1/fleet"),
    ("get", "/api/v1/groups"),
    ("post", "/api/v1/groups"),
    ("get", "/api/v1/groups/{id}"),
    ("patch", "/api/v1/groups/{id}"),
    ("delete", "/api/v1/groups/{id}"),
    ("put", "/api/v1/groups/{id}/devices/{device}"),
    ("delete", "/api/v1/groups/{id}/devices/{device}"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/devices/{id}/telemetry"),
    ("get", "/api/v1/devices/{id}/latest"),
    ("post", "/api/v1/query"),
    ("get", "/api/v1/retention"),
    ("put", "/api/v1/retention"),
    ("post", "/api/v1/admin/backup"),
    # the live web dashboard (test_webapi.py)
    ("get", "/api/v1/devices/{id}/events"),
    ("get", "/api/v1/devices/{id}/messages"),
    ("get", "/api/v1/fleet/sparklines"),
    ("get", "/api/v1/dashboards"),
    ("post", "/api/v1/dashboards"),
    ("get", "/api/v1/dashboards/{id}"),
    ("put", "/api/v1/dashboards/{id}"),
    ("delete", "/api/v1/dashboards/{id}"),
}
# device certificates and CAs (mutual TLS; test_mtls.py)
EXPECTED_ROUTES |= {
    ("get", "/api/v1/ca"), ("get", "/api/v1/cas"), ("post", "/api/v1/cas"),
    ("delete", "/api/v1/cas/{id}"),
    ("post", "/api/v1/devices/{id}/certificates"),
    ("get", "/api/v1/devices/{id}/certificates"),
    ("delete", "/api/v1/devices/{id}/certificates/{fingerprint}"),
}

# The routes that need a token, with a concrete path.
AUTHED = [
    ("POST", "/auth/logout"), ("GET", "/auth/whoami"),
    ("GET", "/tokens"), ("POST", "/tokens"), ("DELETE", "/tokens/1"),
    ("GET", "/tenants"), ("POST", "/tenants"),
    ("GET", "/users"), ("POST", "/users"), ("PATCH", "/users/1"), ("DELETE", "/users/1"),
    ("GET", "/devices"), ("POST", "/devices"), ("GET", "/devices/d1"), ("PATCH", "/devices/d1"),
    ("DELETE", "/devices/d1"), ("POST", "/devices/d1/rotate"), ("POST", "/devices/d1/disable"),
    ("POST", "/devices/d1/enable"), ("GET", "/fleet"),
    ("GET", "/groups"), ("POST", "/groups"), ("GET", "/groups/g1"), ("PATCH", "/groups/g1"),
    ("DELETE", "/groups/g1"), ("PUT", "/groups/g1/devices/d1"), ("DELETE", "/groups/g1/devices/d1"),
]


def make_user(admin, role, password="password-123"):
    email = "%s@example.com" % unique(role)
    r = expect(admin.post("/users", {"email": email, "password": password, "role": role}), 201)
    u = r.json()
    assert u["email"] == email and u["role"] == role and "password" not in u
    assert not any("hash" in k for k in u)
    return u, admin.login(email, password)


def make_device(api, dev_id=None, **fields):
    body = {"id": dev_id or unique("dev")}
    body.update(fields)
    return expect(api.post("/devices", body), 201).json()


# ---- the document ----


def test_openapi_describes_exactly_every_route(daemon):
    api = Api(daemon)
    r = expect(api.get("/openapi.json"), 200)
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.0")
    found = {(m, p) for p, item in doc["paths"].items() for m in item
             if m in ("get", "post", "put", "patch", "delete")}
    assert found == EXPECTED_ROUTES
    # Every documented route exists: a path without parameters never answers
    # 404/405 for its documented method (401, 400... are fine).
    for m, p in found:
        if "{" in p or (m, p) in (("post", "/api/v1/auth/logout"),):
            continue
        resp = api.s.request(m.upper(), "http://127.0.0.1:%d%s" % (daemon.http_port, p),
                             timeout=10)
        assert resp.status_code not in (404, 405), (m, p, resp.status_code)
    # Every $ref resolves.
    text = json.dumps(doc)
    for name in {s.split('"')[0] for s in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert name in doc["components"]["schemas"], name


# ---- authentication ----


def test_login_and_whoami(daemon):
    api = Api(daemon)
    r = expect(api.post("/auth/login", {"email": daemon.admin_email,
                                        "password": daemon.admin_password}), 200)
    j = r.json()
    assert j["token"] and j["expires_at"] and j["user"]["email"] == daemon.admin_email
    who = expect(Api(daemon, j["token"]).get("/auth/whoami"), 200).json()
    assert who["user"]["email"] == daemon.admin_email
    assert who["role"] == "admin"
    assert "tenant" in who


def test_login_refusals(daemon):
    api = Api(daemon)
    expect(api.post("/auth/login", {"email": daemon.admin_email, "password": "wrong-pass"}),
           401, "unauthorized")
    expect(api.post("/auth/login", {"email": "nobody@example.com", "password": "whatever1"}),
           401, "unauthorized")
    expect(api.post("/auth/login", {"email": daemon.admin_email}), 400, "invalid_request")
    expect(api.post("/auth/login", {"email": 5, "password": daemon.admin_password}), 400,
           "invalid_request")
    # bodies that are not JSON objects
    r = expect(api.call("POST", "/auth/login", data=b'{"email": ',
                        headers={"Content-Type": "application/json"}), 400, "invalid_json")
    assert "byte" in r.json()["error"]["message"]
    expect(api.call("POST", "/auth/login", data=b'["a"]'), 400, "invalid_json")
    expect(api.call("POST", "/auth/login", data=b""), 400, "invalid_json")
    expect(api.call("POST", "/auth/login", data=b'{"email":"a"} trailing'), 400, "invalid_json")
    expect(api.call("POST", "/auth/login", data=b"[" * 100 + b"]" * 100), 400, "invalid_json")
    # a wrong media type, while a missing one is accepted (above)
    expect(api.call("POST", "/auth/login", data=b"<html></html>",
                    headers={"Content-Type": "text/html"}), 415, "unsupported_media_type")
    expect(api.call("POST", "/auth/login", data=b"{}",
                    headers={"Content-Type": "multipart/form-data; boundary=x"}), 415,
           "unsupported_media_type")
    # curl -d's default type is taken as JSON; a form body then fails to parse
    expect(api.call("POST", "/auth/login", data=b"email=a&password=b",
                    headers={"Content-Type": "application/x-www-form-urlencoded"}), 400,
           "invalid_json")
    r = expect(api.call("POST", "/auth/login",
                        data=json.dumps({"email": daemon.admin_email,
                                         "password": daemon.admin_password}),
                        headers={"Content-Type": "application/x-www-form-urlencoded"}), 200)
    r = expect(api.call("POST", "/auth/login",
                        data=json.dumps({"email": daemon.admin_email,
                                         "password": daemon.admin_password}),
                        headers={"Content-Type": "application/json; charset=utf-8"}), 200)
    assert r.json()["token"]


def test_every_route_needs_a_token(daemon, admin):
    api = Api(daemon)
    for method, path in AUTHED:
        r = expect(api.call(method, path, body={} if method in ("POST", "PATCH") else None),
                   401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer"), (method, path)
        expect(api.call(method, path, token="not-a-token"), 401, "unauthorized")
        r = expect(api.call(method, path, headers={"Authorization": "Basic YTpi"}), 401,
                   "unauthorized")
    # the same token works when given
    expect(admin.get("/auth/whoami"), 200)


def test_logout_kills_the_token(admin):
    expect(admin.get("/devices"), 200)
    expect(admin.post("/auth/logout"), 204)
    expect(admin.get("/devices"), 401, "unauthorized")
    expect(admin.post("/auth/logout"), 401, "unauthorized")


# ---- API tokens ----


def test_token_create_list_use_revoke(daemon, admin):
    r = expect(admin.post("/tokens", {"name": "ci"}), 201)
    t = r.json()
    assert t["token"] and t["name"] == "ci" and t["role"] == "admin" and t["id"]
    ci = Api(daemon, t["token"])
    assert expect(ci.get("/auth/whoami"), 200).json()["user"]["email"] == daemon.admin_email
    items = expect(admin.get("/tokens"), 200).json()["items"]
    mine = [x for x in items if x["id"] == t["id"]]
    assert len(mine) == 1 and "token" not in mine[0]
    expect(admin.delete("/tokens/%d" % t["id"]), 204)
    expect(ci.get("/auth/whoami"), 401, "unauthorized")
    expect(admin.delete("/tokens/%d" % t["id"]), 404, "not_found")
    expect(admin.delete("/tokens/999999"), 404, "not_found")
    expect(admin.delete("/tokens/abc"), 400, "invalid_request")
    expect(admin.post("/tokens", {}), 400, "invalid_request")
    expect(admin.post("/tokens", {"name": 7}), 400, "invalid_request")
    expect(admin.post("/tokens", {"name": "x", "expires_in_s": "soon"}), 400, "invalid_request")
    expect(admin.post("/tokens", {"name": "x", "role": "emperor"}), 400, "invalid_request")


def test_token_expires(daemon, admin):
    t = expect(admin.post("/tokens", {"name": "short", "expires_in_s": 1}), 201).json()
    short = Api(daemon, t["token"])
    expect(short.get("/devices"), 200)
    time.sleep(1.6)
    expect(short.get("/devices"), 401, "unauthorized")


def test_token_role_is_capped_and_scoped(daemon, admin):
    # an admin may mint a viewer token: it reads but does not write
    t = expect(admin.post("/tokens", {"name": "ro", "role": "viewer"}), 201).json()
    assert t["role"] == "viewer"
    ro = Api(daemon, t["token"])
    expect(ro.get("/devices"), 200)
    expect(ro.post("/devices", {"id": unique("d")}), 403, "forbidden")
    expect(ro.get("/tenants"), 403, "forbidden")  # a superuser's viewer token
    # a viewer may not mint an admin token
    _, viewer = make_user(admin, "viewer")
    r = viewer.post("/tokens", {"name": "up", "role": "admin"})
    assert r.status_code in (400, 403), r.text
    assert code(r) in ("invalid_request", "forbidden")
    vt = expect(viewer.post("/tokens", {"name": "own"}), 201).json()
    assert vt["role"] == "viewer"
    # the viewer sees only its own tokens; the admin sees the tenant's
    v_ids = {x["id"] for x in expect(viewer.get("/tokens"), 200).json()["items"]}
    assert vt["id"] in v_ids and t["id"] not in v_ids
    a_ids = {x["id"] for x in expect(admin.get("/tokens"), 200).json()["items"]}
    assert vt["id"] in a_ids
    # ...and may revoke it, while the viewer may not revoke the admin's
    expect(viewer.delete("/tokens/%d" % t["id"]), 404, "not_found")
    expect(admin.delete("/tokens/%d" % vt["id"]), 204)
    expect(Api(daemon, vt["token"]).get("/devices"), 401)


# ---- tenants ----


def test_tenants_superuser_only(daemon, admin):
    tenants = expect(admin.get("/tenants"), 200).json()["items"]
    assert len(tenants) == 1
    name = unique("acme")
    t = expect(admin.post("/tenants", {"name": name, "admin_email": "boss@acme.example",
                                       "admin_password": "acme-password"}), 201).json()
    assert t["name"] == name and t["id"] != tenants[0]["id"]
    assert t["id"] in {x["id"] for x in expect(admin.get("/tenants"), 200).json()["items"]}
    boss = Api(daemon).login("boss@acme.example", "acme-password")
    assert expect(boss.get("/auth/whoami"), 200).json()["role"] == "admin"
    expect(boss.get("/tenants"), 403, "forbidden")
    expect(boss.post("/tenants", {"name": "x", "admin_email": "x@x.example",
                                  "admin_password": "xxxxxxxx"}), 403, "forbidden")
    _, op = make_user(admin, "operator")
    expect(op.get("/tenants"), 403, "forbidden")
    expect(admin.post("/tenants", {"name": "y"}), 400, "invalid_request")
    expect(admin.post("/tenants", {"name": "z", "admin_email": "boss@acme.example",
                                   "admin_password": "zzzzzzzz"}), 409, "conflict")


def test_other_tenant_sees_nothing(daemon, admin):
    dev = make_device(admin, tags={"site": "a"})
    grp = expect(admin.post("/groups", {"id": unique("g")}), 201).json()
    expect(admin.post("/tenants", {"name": unique("t2"), "admin_email": "t2@example.com",
                                   "admin_password": "t2-password"}), 201)
    t2 = Api(daemon).login("t2@example.com", "t2-password")
    path = "/devices/" + dev["id"]
    expect(t2.get(path), 404, "not_found")
    expect(t2.patch(path, {"name": "stolen"}), 404, "not_found")
    expect(t2.post(path + "/rotate"), 404, "not_found")
    expect(t2.post(path + "/disable"), 404, "not_found")
    expect(t2.delete(path), 404, "not_found")
    expect(t2.get("/groups/" + grp["id"]), 404, "not_found")
    expect(t2.put("/groups/%s/devices/%s" % (grp["id"], dev["id"])), 404, "not_found")
    assert expect(t2.get("/devices"), 200).json()["items"] == []
    assert expect(t2.get("/fleet"), 200).json()["devices"] == 0
    assert all(u["email"] != daemon.admin_email
               for u in expect(t2.get("/users"), 200).json()["items"])
    admin_id = expect(admin.get("/auth/whoami"), 200).json()["user"]["id"]
    expect(t2.patch("/users/%d" % admin_id, {"disabled": True}), 404, "not_found")
    expect(t2.delete("/users/%d" % admin_id), 404, "not_found")
    # untouched in tenant 1
    d = expect(admin.get(path), 200).json()
    assert d["name"] == dev["name"] and d["enabled"] is True


# ---- users and roles ----


def test_users_crud(daemon, admin):
    u, _ = make_user(admin, "viewer")
    emails = {x["email"] for x in expect(admin.get("/users"), 200).json()["items"]}
    assert {u["email"], daemon.admin_email} <= emails
    expect(admin.post("/users", {"email": u["email"], "password": "password-123",
                                 "role": "viewer"}), 409, "conflict")
    expect(admin.post("/users", {"email": "short@example.com", "password": "short",
                                 "role": "viewer"}), 400, "invalid_request")
    expect(admin.post("/users", {"email": "r@example.com", "password": "password-123",
                                 "role": "god"}), 400, "invalid_request")
    expect(admin.post("/users", {"password": "password-123", "role": "viewer"}), 400,
           "invalid_request")
    p = expect(admin.patch("/users/%d" % u["id"], {"role": "operator"}), 200).json()
    assert p["role"] == "operator"
    expect(admin.patch("/users/%d" % u["id"], {"role": 3}), 400, "invalid_request")
    expect(admin.patch("/users/999999", {"role": "viewer"}), 404, "not_found")
    expect(admin.patch("/users/x", {"role": "viewer"}), 400, "invalid_request")
    expect(admin.patch("/users/%d" % u["id"], data=b"{nope"), 400, "invalid_json")
    expect(admin.delete("/users/%d" % u["id"]), 204)
    expect(admin.delete("/users/%d" % u["id"]), 404, "not_found")
    expect(Api(daemon).post("/auth/login", {"email": u["email"], "password": "password-123"}),
           401, "unauthorized")


def test_disabling_a_user_revokes_its_tokens(daemon, admin):
    u, op = make_user(admin, "operator")
    expect(op.get("/devices"), 200)
    assert expect(admin.patch("/users/%d" % u["id"], {"disabled": True}), 200).json()["disabled"]
    expect(op.get("/devices"), 401, "unauthorized")
    expect(Api(daemon).post("/auth/login", {"email": u["email"], "password": "password-123"}),
           401, "unauthorized")
    expect(admin.patch("/users/%d" % u["id"], {"disabled": False, "password": "new-password"}),
           200)
    Api(daemon).login(u["email"], "new-password")


def test_roles(daemon, admin):
    dev = make_device(admin)
    grp = expect(admin.post("/groups", {"id": unique("g")}), 201).json()
    _, viewer = make_user(admin, "viewer")
    _, op = make_user(admin, "operator")
    path = "/devices/" + dev["id"]
    # viewers read the tenant...
    for p in ("/devices", path, "/fleet", "/groups", "/groups/" + grp["id"], "/auth/whoami",
              "/tokens"):
        expect(viewer.get(p), 200)
    # ...but write nothing and see no users
    expect(viewer.get("/users"), 403, "forbidden")
    expect(viewer.post("/devices", {"id": unique("d")}), 403, "forbidden")
    expect(viewer.patch(path, {"name": "x"}), 403, "forbidden")
    expect(viewer.delete(path), 403, "forbidden")
    expect(viewer.post(path + "/rotate"), 403, "forbidden")
    expect(viewer.post(path + "/disable"), 403, "forbidden")
    expect(viewer.post("/groups", {"id": unique("g")}), 403, "forbidden")
    expect(viewer.put("/groups/%s/devices/%s" % (grp["id"], dev["id"])), 403, "forbidden")
    expect(viewer.delete("/groups/" + grp["id"]), 403, "forbidden")
    # operators write devices and groups, not users or tenants
    d2 = make_device(op)
    expect(op.patch("/devices/" + d2["id"], {"name": "by-op"}), 200)
    expect(op.put("/groups/%s/devices/%s" % (grp["id"], d2["id"])), 204)
    expect(op.get("/users"), 403, "forbidden")
    expect(op.post("/users", {"email": "e@example.com", "password": "password-123",
                              "role": "admin"}), 403, "forbidden")
    expect(op.patch("/users/1", {"role": "admin"}), 403, "forbidden")
    expect(op.delete("/users/1"), 403, "forbidden")
    expect(op.post("/tenants", {"name": "n", "admin_email": "n@n.example",
                                "admin_password": "nnnnnnnn"}), 403, "forbidden")
    expect(op.delete("/devices/" + d2["id"]), 204)
    # nothing the viewer tried happened
    d = expect(admin.get(path), 200).json()
    assert d["name"] != "x" and d["enabled"] is True


# ---- devices ----


def test_device_crud(daemon, admin):
    did = unique("dev")
    d = make_device(admin, did, name="Pump 1", type="pump", tags={"site": "a", "floor": "2"},
                    attributes={"fw": "1.2", "n": 3})
    assert d["id"] == did and d["secret"] and len(d["secret"]) >= 32
    assert d["tags"] == {"site": "a", "floor": "2"} and d["enabled"] is True
    g = expect(admin.get("/devices/" + did), 200).json()
    assert "secret" not in g and g["name"] == "Pump 1" and g["online"] is False
    assert g["attributes"] == {"fw": "1.2", "n": 3}
    # HEAD answers like GET without a body
    h = admin.s.head(admin.base + "/devices/" + did,
                     headers={"Authorization": "Bearer " + admin.token}, timeout=10)
    assert h.status_code == 200 and h.content == b""
    expect(admin.post("/devices", {"id": did}), 409, "conflict")
    expect(admin.post("/devices", {"name": "no id"}), 400, "invalid_request")
    expect(admin.post("/devices", {"id": "bad id/with space"}), 400, "invalid_request")
    expect(admin.post("/devices", {"id": "x" * 129}), 400, "invalid_request")
    expect(admin.post("/devices", {"id": unique("d"), "tags": ["a"]}), 400, "invalid_request")
    expect(admin.post("/devices", {"id": unique("d"), "tags": {"k": 1}}), 400, "invalid_request")
    expect(admin.post("/devices", {"id": unique("d"), "enabled": "yes"}), 400, "invalid_request")
    expect(admin.post("/devices", {"id": unique("d"), "groups": ["no-such-group"]}), 400)
    r = expect(admin.post("/devices", {"id": 12}), 400, "invalid_request")
    assert "id" in r.json()["error"]["message"]
    p = expect(admin.patch("/devices/" + did, {"name": "Pump 2", "tags": {"site": "b"}}),
               200).json()
    assert p["name"] == "Pump 2" and p["tags"] == {"site": "b"} and p["type"] == "pump"
    expect(admin.patch("/devices/" + did, {"name": 3}), 400, "invalid_request")
    expect(admin.patch("/devices/" + did, data=b"[]"), 400, "invalid_json")
    expect(admin.patch("/devices/nope", {"name": "x"}), 404, "not_found")
    expect(admin.get("/devices/nope"), 404, "not_found")
    expect(admin.post("/devices/nope/rotate"), 404, "not_found")
    expect(admin.post("/devices/nope/enable"), 404, "not_found")
    # rotate, disable, enable
    rot = expect(admin.post("/devices/%s/rotate" % did), 200).json()
    assert rot["id"] == did and rot["secret"] and rot["secret"] != d["secret"]
    assert expect(admin.post("/devices/%s/disable" % did), 200).json()["enabled"] is False
    assert expect(admin.get("/devices/" + did), 200).json()["enabled"] is False
    assert expect(admin.post("/devices/%s/enable" % did), 200).json()["enabled"] is True
    expect(admin.delete("/devices/" + did), 204)
    expect(admin.get("/devices/" + did), 404, "not_found")
    expect(admin.delete("/devices/" + did), 404, "not_found")


def test_oversized_bodies_are_413(daemon, admin):
    big = {"id": unique("d"), "name": "x" * (MAX_BODY + 10)}
    r = admin.post("/devices", big)
    assert r.status_code == 413
    assert code(r) == "body_too_large", r.text
    # the daemon still serves
    expect(admin.get("/devices"), 200)


def test_unknown_method_is_405(admin):
    r = expect(admin.put("/devices"), 405, "method_not_allowed")
    allow = {m.strip() for m in r.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allow
    r = expect(admin.call("POST", "/devices/x"), 405)
    assert {"GET", "PATCH", "DELETE"} <= {m.strip() for m in r.headers["allow"].split(",")}
    expect(admin.get("/no-such-thing"), 404, "not_found")


def test_fleet_counts(admin):
    before = expect(admin.get("/fleet"), 200).json()
    for _ in range(3):
        make_device(admin)
    after = expect(admin.get("/fleet"), 200).json()
    assert after["devices"] == before["devices"] + 3
    assert after["offline"] == before["offline"] + 3 and after["online"] == before["online"]
    for k in ("messages_in_per_s", "messages_out_per_s"):
        assert isinstance(after[k], (int, float))


def test_pagination_walks_every_device_once(admin):
    ids = sorted("page-%03d" % i for i in range(25))
    for i in ids:
        make_device(admin, i)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        j = expect(admin.get("/devices", params=params), 200).json()
        assert len(j["items"]) <= 7
        seen += [d["id"] for d in j["items"]]
        pages += 1
        cursor = j["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert seen == ids and pages == 4
    all_ = expect(admin.get("/devices"), 200).json()
    assert [d["id"] for d in all_["items"]] == ids and all_["next_cursor"] is None
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": "abc"}, {"limit": ""},
                {"online": "maybe"}):
        expect(admin.get("/devices", params=bad), 400, "invalid_request")
    one = expect(admin.get("/devices", params={"limit": 1000}), 200).json()
    assert len(one["items"]) == 25


def test_device_filters(admin):
    a = make_device(admin, "flt-a", tags={"site": "north", "kind": "pump"})
    b = make_device(admin, "flt-b", tags={"site": "south", "kind": "pump"})
    c = make_device(admin, "flt-c", tags={"site": "north"})

    def ids(**params):
        return [d["id"] for d in expect(admin.get("/devices", params=params), 200).json()["items"]]

    assert ids(tag="site=north") == [a["id"], c["id"]]
    assert ids(tag="kind") == [a["id"], b["id"]]
    assert ids(tag="site=east") == []
    g = expect(admin.post("/groups", {"id": "flt-g"}), 201).json()
    expect(admin.put("/groups/%s/devices/%s" % (g["id"], b["id"])), 204)
    assert ids(group="flt-g") == [b["id"]]
    assert ids(group="flt-g", tag="site=north") == []
    assert ids(online="false") == [a["id"], b["id"], c["id"]]
    assert ids(online="true") == []
    # a dynamic group: every device whose tags match its query
    expect(admin.post("/groups", {"id": "flt-dyn", "query": {"site": "north"}}), 201)
    assert ids(group="flt-dyn") == [a["id"], c["id"]]


# ---- groups ----


def test_groups_crud_and_membership(admin):
    gid = unique("grp")
    g = expect(admin.post("/groups", {"id": gid, "name": "Pumps",
                                      "policy": {"publish": ["plant/${device}/#"],
                                                 "subscribe": ["plant/cmd/#"]}}), 201).json()
    assert g["id"] == gid and g["name"] == "Pumps" and g["devices"] == []
    assert g["policy"]["publish"] == ["plant/${device}/#"]
    assert gid in {x["id"] for x in expect(admin.get("/groups"), 200).json()["items"]}
    expect(admin.post("/groups", {"id": gid}), 409, "conflict")
    expect(admin.post("/groups", {"name": "no id"}), 400, "invalid_request")
    expect(admin.post("/groups", {"id": unique("g"), "policy": {"publish": "x"}}), 400,
           "invalid_request")
    expect(admin.post("/groups", {"id": unique("g"), "query": {"site": 1}}), 400,
           "invalid_request")
    d = make_device(admin)
    expect(admin.put("/groups/%s/devices/%s" % (gid, d["id"])), 204)
    assert expect(admin.get("/groups/" + gid), 200).json()["devices"] == [d["id"]]
    assert gid in expect(admin.get("/devices/" + d["id"]), 200).json()["groups"]
    expect(admin.put("/groups/%s/devices/nope" % gid), 404, "not_found")
    expect(admin.put("/groups/nope/devices/%s" % d["id"]), 404, "not_found")
    p = expect(admin.patch("/groups/" + gid, {"name": "Big pumps"}), 200).json()
    assert p["name"] == "Big pumps" and p["devices"] == [d["id"]]
    expect(admin.patch("/groups/" + gid, {"name": []}), 400, "invalid_request")
    expect(admin.patch("/groups/nope", {"name": "x"}), 404, "not_found")
    expect(admin.delete("/groups/%s/devices/%s" % (gid, d["id"])), 204)
    assert expect(admin.get("/groups/" + gid), 200).json()["devices"] == []
    expect(admin.delete("/groups/" + gid), 204)
    expect(admin.get("/groups/" + gid), 404, "not_found")
    expect(admin.delete("/groups/" + gid), 404, "not_found")


# ---- concurrency and persistence ----


def test_concurrent_slow_requests(daemon, admin):
    """Logins hash with argon2 on the worker pool: many at once all answer,
    and a fast request on the same daemon is not held up behind them."""
    results = []

    def login():
        r = Api(daemon).post("/auth/login", {"email": daemon.admin_email,
                                             "password": daemon.admin_password})
        results.append(r.status_code)

    threads = [threading.Thread(target=login) for _ in range(8)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    expect(admin.get("/fleet"), 200)
    fast = time.monotonic() - t0
    for t in threads:
        t.join(20)
    assert results == [200] * 8
    assert fast < 1.0


def test_restart_keeps_everything(daemon, admin):
    u, _ = make_user(admin, "operator")
    d = make_device(admin, "keep-1", tags={"site": "x"})
    expect(admin.post("/groups", {"id": "keep-g"}), 201)
    expect(admin.put("/groups/keep-g/devices/keep-1"), 204)
    tok = expect(admin.post("/tokens", {"name": "keep"}), 201).json()
    revoked = expect(admin.post("/tokens", {"name": "gone"}), 201).json()
    expect(admin.delete("/tokens/%d" % revoked["id"]), 204)
    daemon.restart()
    kept = Api(daemon, tok["token"])
    g = expect(kept.get("/devices/keep-1"), 200).json()
    assert g["tags"] == {"site": "x"} and g["groups"] == ["keep-g"]
    assert expect(kept.get("/groups/keep-g"), 200).json()["devices"] == ["keep-1"]
    expect(Api(daemon, revoked["token"]).get("/devices"), 401, "unauthorized")
    expect(admin.get("/devices"), 200)  # the login session survives too
    Api(daemon).login(u["email"], "password-123")
    # the first-start admin is not created twice, nor its password reset
    assert len(expect(kept.get("/tenants"), 200).json()["items"]) == 1
    assert d["secret"]
