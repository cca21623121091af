"""apiclient.py - a small REST client for the thinghz API under test
(python3-requests), shared by the API, device-auth and CLI tests."""

import json

import requests

from clients import unique

V1 = "/api/v1"


class Api:
    """A REST client for one daemon, optionally holding a bearer token."""

    def __init__(self, b, token=None):
        self.b = b
        self.base = "http://127.0.0.1:%d%s" % (b.http_port, V1)
        self.token = token
        self.s = requests.Session()

    def call(self, method, path, body=None, token=..., headers=None, data=None, params=None):
        h = dict(headers or {})
        tok = self.token if token is ... else token
        if tok:
            h["Authorization"] = "Bearer " + tok
        if body is not None:
            data = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        return self.s.request(method, self.base + path, data=data, headers=h, params=params,
                              timeout=10)

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body, **kw)

    def patch(self, path, body=None, **kw):
        return self.call("PATCH", path, body, **kw)

    def put(self, path, **kw):
        return self.call("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.call("DELETE", path, **kw)

    def login(self, email, password):
        r = self.post("/auth/login", {"email": email, "password": password}, token=None)
        assert r.status_code == 200, r.text
        return Api(self.b, r.json()["token"])


def admin_api(b):
    """An Api logged in as the admin account daemon b was started with."""
    return Api(b).login(b.admin_email, b.admin_password)


def code(r):
    """The error code of an API error response, checking its shape."""
    j = r.json()
    assert set(j) == {"error"} and set(j["error"]) == {"code", "message"}, j
    assert r.headers["content-type"].startswith("application/json")
    return j["error"]["code"]


def expect(r, status, err=None):
    assert r.status_code == status, "%s %s -> %d %s" % (
        r.request.method, r.request.url, r.status_code, r.text)
    if err is not None:
        assert code(r) == err, r.text
    return r


def api_token(api, **fields):
    """A new API token of api's user (login sessions do not connect over MQTT)."""
    body = {"name": unique("tok")}
    body.update(fields)
    return expect(api.post("/tokens", body), 201).json()


def new_device(api, dev_id=None, **fields):
    """Creates a device; the result carries its secret."""
    body = {"id": dev_id or unique("dev")}
    body.update(fields)
    return expect(api.post("/devices", body), 201).json()


def write_lines(api, lines, precision="ns"):
    """Writes InfluxDB line protocol through POST /write; asserts the 204
    (sent once the points are durable)."""
    r = api.s.post("http://127.0.0.1:%d/write?precision=%s" % (api.b.http_port, precision),
                   data="\n".join(lines).encode(),
                   headers={"Authorization": "Bearer " + api.token}, timeout=10)
    assert r.status_code == 204, r.text
