"""The Prometheus-compatible query API (/prometheus/api/v1/...): known points
written with the line protocol (and MQTT telemetry), then instant and range
queries, every function, aggregations with by/without, matchers including
regexes, arithmetic, series/labels/label values, errors with positions, and
auth (bearer, Basic email:password, wrong password, tenant isolation), with
expected values computed by hand. Debian's promtool is the real client for
instant, range, series and labels queries (Basic auth from the URL: promtool
2.42 has no --http.config.file)."""

import json
import subprocess
import urllib.parse

import pytest
import requests

from apiclient import Api, admin_api, expect, write_lines
from clients import PahoClient, unique
from conftest import IS_MOSQUITTO

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="mosquitto has no Prometheus API")

T0 = 1795687200  # 2026-11-26T10:00:00Z, seconds
PROMTOOL = "/usr/bin/promtool"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One daemon with the data set below for the whole module (the
    broker_factory fixture is per test; this starts its own Broker)."""
    from conftest import Broker
    b = Broker(tmp_path_factory.mktemp("prom"), {})
    b.start()
    admin = admin_api(b)
    lines = []
    for i in range(13):
        t = T0 + i * 10
        # gauges: d1 10+i, d2 20+i (site a), d3 30+3i (site b)
        lines.append("telemetry,device=d1,site=a temp=%d %d" % (10 + i, t))
        lines.append("telemetry,device=d2,site=a temp=%d %d" % (20 + i, t))
        lines.append("telemetry,device=d3,site=b temp=%d %d" % (30 + 3 * i, t))
        # a counter on d1 that resets between i=6 (60) and i=7 (5)
        cnt = 10 * i if i <= 6 else 5 + 10 * (i - 7)
        lines.append("telemetry,device=d1,site=a cnt=%di %d" % (cnt, t))
        # a bool and a string series on d1
        lines.append("telemetry,device=d1,site=a door=%s,fw=\"1.%d\" %d"
                     % ("true" if i % 2 == 0 else "false", i, t))
    write_lines(admin, lines, "s")
    yield b, admin
    assert b.stop(check=False) == 0


def url(b, path=""):
    return "http://127.0.0.1:%d/prometheus/api/v1%s" % (b.http_port, path)


def basic(b):
    return (b.admin_email, b.admin_password)


def pq(env, query, t=T0 + 120, status=200, method="GET", **params):
    b, _ = env
    params = dict(params, query=query)
    if t is not None:
        params["time"] = t
    if method == "GET":
        r = requests.get(url(b, "/query"), params=params, auth=basic(b), timeout=10)
    else:
        r = requests.post(url(b, "/query"), data=params, auth=basic(b), timeout=10)
    assert r.status_code == status, (query, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def vec(env, query, **kw):
    """An instant query's vector as {frozenset(labels): value}."""
    j = pq(env, query, **kw)
    assert j["status"] == "success", j
    assert j["data"]["resultType"] == "vector", j
    out = {}
    for s in j["data"]["result"]:
        assert isinstance(s["value"][1], str)
        out[frozenset(s["metric"].items())] = float(s["value"][1])
    return out


def L(**kw):
    return frozenset(kw.items())


def one(env, query, **kw):
    v = vec(env, query, **kw)
    assert len(v) == 1, (query, v)
    return next(iter(v.values()))


# ---- selectors and lookback ----

def test_instant_selector_values_labels_and_timestamp(env):
    j = pq(env, "temp")
    res = j["data"]["result"]
    assert all(s["value"][0] == T0 + 120 for s in res)
    assert vec(env, "temp") == {
        L(__name__="temp", device="d1", site="a"): 22,
        L(__name__="temp", device="d2", site="a"): 32,
        L(__name__="temp", device="d3", site="b"): 66,
    }
    # fractional evaluation time: float seconds with millisecond precision
    j = pq(env, "temp{device=\"d1\"}", t="%d.25" % (T0 + 125))
    assert j["data"]["result"][0]["value"] == [T0 + 125.25, "22"]


def test_lookback_is_five_minutes(env):
    # the newest sample is at T0+120: still visible at T0+419, gone at T0+420
    assert one(env, "temp{device=\"d1\"}", t=T0 + 419) == 22
    assert vec(env, "temp{device=\"d1\"}", t=T0 + 420) == {}
    # between samples the older one answers
    assert one(env, "temp{device=\"d1\"}", t=T0 + 15) == 11
    assert vec(env, "temp", t=T0 - 1) == {}


def test_matchers(env):
    assert {dict(k)["device"] for k in vec(env, "temp{device!=\"d1\"}")} == {"d2", "d3"}
    assert {dict(k)["device"] for k in vec(env, "temp{device=~\"d[12]\"}")} == {"d1", "d2"}
    assert {dict(k)["device"] for k in vec(env, "temp{device!~\"d1|d2\"}")} == {"d3"}
    assert {dict(k)["device"] for k in vec(env, "{__name__=\"temp\", site=\"b\"}")} == {"d3"}
    assert {dict(k)["__name__"] for k in vec(env, "{device=\"d1\"}")} == {"temp", "cnt", "door"}
    assert {dict(k)["__name__"] for k in vec(env, "{__name__=~\"te.*|cnt\", device=\"d1\"}")} \
        == {"temp", "cnt"}
    assert vec(env, "temp{device=\"nope\"}") == {}
    # a bool series reads as 0/1; i=12 is even: true
    assert one(env, "door") == 1
    assert one(env, "door", t=T0 + 110) == 0
    # string series are skipped
    assert vec(env, "fw") == {}


def test_offset(env):
    assert one(env, "temp{device=\"d1\"} offset 1m") == 16
    assert one(env, "avg_over_time(temp{device=\"d1\"}[1m] offset 1m)") == 13.5


# ---- range functions (window (t - range, t]) ----

def test_over_time_functions(env):
    # window (T0+60, T0+120]: d1's samples 17..22
    q = "%s(temp{device=\"d1\"}[1m])"
    assert one(env, q % "avg_over_time") == pytest.approx(19.5)
    assert one(env, q % "min_over_time") == 17
    assert one(env, q % "max_over_time") == 22
    assert one(env, q % "sum_over_time") == 117
    assert one(env, q % "count_over_time") == 6
    assert one(env, q % "last_over_time") == 22
    assert one(env, "sum_over_time(door[2m])") == 6  # i=2,4,...,12 within (T0, T0+120]
    # functions drop __name__, last_over_time keeps it
    assert vec(env, "max_over_time(temp{device=\"d3\"}[1m])") == {L(device="d3", site="b"): 66}
    assert vec(env, "last_over_time(temp{device=\"d3\"}[1m])") == \
        {L(__name__="temp", device="d3", site="b"): 66}


def test_rate_and_increase_extrapolate_and_handle_resets(env):
    # (T0+60, T0+120]: 5,15,...,55 - no reset inside; 50 over 50 s of samples,
    # extrapolated to the start by the counter's zero point (5 s before the
    # first sample, < 1.1 x 10 s): 50 * 55/50 = 55
    assert one(env, "increase(cnt[1m])") == pytest.approx(55)
    assert one(env, "rate(cnt[1m])") == pytest.approx(55 / 60)
    # (T0, T0+120]: 10..60 then 5..55: 45 + the reset's 60 = 105 over 110 s of
    # samples, 10 s to the window start (< 11 s), zero point further away:
    # 105 * 120/110
    assert one(env, "increase(cnt[2m])") == pytest.approx(105 * 120 / 110)
    assert one(env, "rate(cnt[2m])") == pytest.approx(105 / 110)
    # a gauge's rate is still a counter's (Prometheus does not know better):
    # temp d1 over (T0+60, T0+120] = 17..22: 5 over 50 s, first sample 10 s
    # after the window start (< 11 s: extrapolated fully), zero point far
    assert one(env, "increase(temp{device=\"d1\"}[1m])") == pytest.approx(5 * 60 / 50)
    # fewer than two samples: no value
    assert vec(env, "rate(cnt[5s])") == {}


# ---- aggregations ----

def test_aggregations(env):
    assert vec(env, "sum(temp)") == {L(): 22 + 32 + 66}
    assert one(env, "avg(temp)") == pytest.approx(40)
    assert one(env, "min(temp)") == 22
    assert one(env, "max(temp)") == 66
    assert one(env, "count(temp)") == 3
    assert vec(env, "sum by (site) (temp)") == {L(site="a"): 54, L(site="b"): 66}
    assert vec(env, "sum(temp) by (site)") == {L(site="a"): 54, L(site="b"): 66}
    assert vec(env, "count by (site) (temp)") == {L(site="a"): 2, L(site="b"): 1}
    assert vec(env, "max without (device) (temp)") == {L(site="a"): 32, L(site="b"): 66}
    assert vec(env, "avg(temp) without (device, site)") == {L(): pytest.approx(40)}
    assert vec(env, "sum by (__name__) ({device=\"d1\"})") == \
        {L(__name__="temp"): 22, L(__name__="cnt"): 55, L(__name__="door"): 1}
    assert vec(env, "sum by (nosuch) (temp)") == {L(): 120}
    assert vec(env, "sum by (site) (rate(cnt[1m]))") == {L(site="a"): pytest.approx(55 / 60)}


# ---- arithmetic ----

def test_scalar_arithmetic(env):
    for q, want in [("1 + 1", 2), ("(1 + 2) * 3", 9), ("2 ^ 3 ^ 2", 512), ("10 % 3", 1),
                    ("-2 ^ 2", -4), ("7 / 2", 3.5), ("0x10 - 1e1", 6)]:
        j = pq(env, q)
        assert j["data"]["resultType"] == "scalar", j
        assert j["data"]["result"][0] == T0 + 120
        assert float(j["data"]["result"][1]) == want, q
    j = pq(env, "1 / 0")
    assert j["data"]["result"][1] == "+Inf"


def test_vector_arithmetic(env):
    assert vec(env, "temp{device=\"d1\"} * 2 + 1") == {L(device="d1", site="a"): 45}
    assert vec(env, "100 - temp{device=\"d1\"}") == {L(device="d1", site="a"): 78}
    assert vec(env, "-temp{device=\"d1\"}") == {L(device="d1", site="a"): -22}
    assert vec(env, "temp - temp") == {
        L(device="d1", site="a"): 0, L(device="d2", site="a"): 0, L(device="d3", site="b"): 0}
    # one-to-one on identical label sets (without __name__)
    assert vec(env, "cnt / temp") == {L(device="d1", site="a"): 2.5}
    assert vec(env, "sum by (site) (temp) / count by (site) (temp)") == \
        {L(site="a"): 27, L(site="b"): 66}


# ---- range queries ----

def test_range_query(env):
    b, _ = env
    r = requests.get(url(b, "/query_range"), auth=basic(b), timeout=10, params={
        "query": "temp{device=\"d1\"}", "start": T0, "end": T0 + 120, "step": "30s"})
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["resultType"] == "matrix"
    assert d["result"] == [{"metric": {"__name__": "temp", "device": "d1", "site": "a"},
                            "values": [[T0, "10"], [T0 + 30, "13"], [T0 + 60, "16"],
                                       [T0 + 90, "19"], [T0 + 120, "22"]]}]
    # POST form, RFC 3339 times, float step, an aggregation
    r = requests.post(url(b, "/query_range"), auth=basic(b), timeout=10, data={
        "query": "sum by (site) (temp)", "start": "2026-11-26T10:00:00Z",
        "end": "2026-11-26T10:01:00Z", "step": "60"})
    assert r.status_code == 200, r.text
    got = {s["metric"]["site"]: s["values"] for s in r.json()["data"]["result"]}
    assert got == {"a": [[T0, "30"], [T0 + 60, "42"]], "b": [[T0, "30"], [T0 + 60, "48"]]}
    # a scalar in a range query is a matrix with one unlabelled series
    r = requests.get(url(b, "/query_range"), auth=basic(b), timeout=10,
                     params={"query": "2 * 3", "start": T0, "end": T0 + 20, "step": 10})
    assert r.json()["data"] == {"resultType": "matrix", "result": [
        {"metric": {}, "values": [[T0, "6"], [T0 + 10, "6"], [T0 + 20, "6"]]}]}
    # a series with no value in the range is left out; steps outside are gaps
    r = requests.get(url(b, "/query_range"), auth=basic(b), timeout=10, params={
        "query": "rate(cnt[30s])", "start": T0 + 100, "end": T0 + 500, "step": 100})
    vals = r.json()["data"]["result"][0]["values"]
    assert [v[0] for v in vals] == [T0 + 100]


def test_instant_range_vector_is_a_matrix(env):
    j = pq(env, "temp{device=\"d1\"}[30s]")
    assert j["data"]["resultType"] == "matrix"
    assert j["data"]["result"][0]["values"] == [[T0 + 100, "20"], [T0 + 110, "21"],
                                                [T0 + 120, "22"]]


# ---- metadata ----

def test_series_labels_and_values(env):
    b, _ = env
    r = requests.get(url(b, "/series"), auth=basic(b), timeout=10,
                     params={"match[]": ["temp{site=\"a\"}", "fw"]})
    assert r.status_code == 200, r.text
    got = sorted(json.dumps(s, sort_keys=True) for s in r.json()["data"])
    assert got == sorted(json.dumps(s, sort_keys=True) for s in [
        {"__name__": "temp", "device": "d1", "site": "a"},
        {"__name__": "temp", "device": "d2", "site": "a"},
        {"__name__": "fw", "device": "d1", "site": "a"}])
    # POST with a form body; match[] is required
    r = requests.post(url(b, "/series"), auth=basic(b), timeout=10, data={"match[]": "cnt"})
    assert r.json()["data"] == [{"__name__": "cnt", "device": "d1", "site": "a"}]
    r = requests.get(url(b, "/series"), auth=basic(b), timeout=10)
    assert r.status_code == 400 and r.json()["errorType"] == "bad_data"

    def get(path, **params):
        r = requests.get(url(b, path), auth=basic(b), timeout=10, params=params)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "success"
        return r.json()["data"]

    assert get("/labels") == ["__name__", "device", "site"]
    assert get("/labels", **{"match[]": "cnt"}) == ["__name__", "device", "site"]
    assert get("/label/site/values") == ["a", "b"]
    assert get("/label/device/values") == ["d1", "d2", "d3"]
    assert get("/label/__name__/values") == ["cnt", "door", "fw", "temp"]
    assert get("/label/device/values", **{"match[]": "temp{site=\"b\"}"}) == ["d3"]
    assert get("/label/device/values", limit=2) == ["d1", "d2"]
    assert get("/label/nosuch/values") == []
    assert get("/status/buildinfo")["version"]
    assert get("/metadata") == {}
    assert get("/query_exemplars", query="temp", start="0", end="1") == []
    assert get("/rules") == {"groups": []}


# ---- errors ----

def test_errors(env):
    b, _ = env
    j = pq(env, "sum(temp", status=400)
    assert j["status"] == "error" and j["errorType"] == "bad_data"
    assert "1:9: parse error" in j["error"], j
    j = pq(env, "temp{device=\"d1\"} +\n  ", status=400)
    assert "parse error" in j["error"]
    j = pq(env, "rate(temp)", status=400)
    assert "expected type range vector" in j["error"]
    j = pq(env, "{device=~\".*\"}", status=400)
    assert "non-empty matcher" in j["error"]
    j = pq(env, "temp{device=~\"(\"}", status=400)
    assert "regular expression" in j["error"]
    j = pq(env, "topk(1, temp)", status=400)
    assert "not supported" in j["error"]
    j = pq(env, "temp > 1", status=400)
    assert "not supported" in j["error"]
    # names collide once __name__ is dropped: Prometheus' execution error
    j = pq(env, "{device=\"d1\", __name__=~\"temp|cnt\"} * 1", status=422)
    assert j["errorType"] == "execution" and "same labelset" in j["error"]
    r = requests.get(url(b, "/query"), auth=basic(b), timeout=10)
    assert r.status_code == 400 and "query" in r.json()["error"]
    r = requests.get(url(b, "/query"), auth=basic(b), timeout=10,
                     params={"query": "1", "time": "yesterday"})
    assert r.status_code == 400 and "time" in r.json()["error"]

    def rng(**p):
        return requests.get(url(b, "/query_range"), auth=basic(b), timeout=10, params=p)
    r = rng(query="temp", start=T0, end=T0 + 10, step=0)
    assert r.status_code == 400 and r.json()["errorType"] == "bad_data"
    r = rng(query="temp", start=T0, end=T0 + 11000, step=1)  # 11,001 steps
    assert r.status_code == 400 and "11,000" in r.json()["error"]
    r = rng(query="temp", start=T0 + 10, end=T0, step=1)
    assert r.status_code == 400
    r = rng(query="temp[1m]", start=T0, end=T0 + 10, step=1)
    assert r.status_code == 400 and "range vector" in r.json()["error"]
    r = rng(query="temp", start=T0, end=T0 + 10)
    assert r.status_code == 400 and "step" in r.json()["error"]


# ---- auth and tenants ----

def test_auth(env):
    b, admin = env
    q = {"query": "count(temp)", "time": T0 + 120}
    r = requests.get(url(b, "/query"), params=q, timeout=10)
    assert r.status_code == 401
    assert r.json()["status"] == "error"
    assert r.headers["www-authenticate"] == 'Basic realm="thinghz"'
    r = requests.get(url(b, "/query"), params=q, timeout=10, auth=(b.admin_email, "wrong-pw"))
    assert r.status_code == 401 and r.json()["errorType"] == "unauthorized"
    r = requests.get(url(b, "/query"), params=q, timeout=10, auth=("nobody@x.y", "wrong-pw"))
    assert r.status_code == 401
    r = requests.get(url(b, "/query"), params=q, timeout=10,
                     headers={"Authorization": "Bearer thz_notatoken"})
    assert r.status_code == 401
    # the REST API's bearer tokens (a viewer's API token suffices)
    tok = expect(admin.post("/tokens", {"name": unique("t"), "role": "viewer"}), 201).json()
    r = requests.get(url(b, "/query"), params=q, timeout=10,
                     headers={"Authorization": "Bearer " + tok["token"]})
    assert r.status_code == 200 and r.json()["data"]["result"][0]["value"][1] == "3"
    # Basic twice: the second answer comes from the credentials cache
    for _ in range(2):
        r = requests.get(url(b, "/query"), params=q, timeout=10, auth=basic(b))
        assert r.status_code == 200 and r.json()["data"]["result"][0]["value"][1] == "3"
    # a cached password does not make another one valid
    r = requests.get(url(b, "/query"), params=q, timeout=10, auth=(b.admin_email, "wrong-pw2"))
    assert r.status_code == 401


def test_tenants_are_isolated(env):
    b, admin = env
    name = unique("acme")
    email = "%s@acme.example" % name
    expect(admin.post("/tenants", {"name": name, "admin_email": email,
                                   "admin_password": "acme-password"}), 201)
    other = Api(b).login(email, "acme-password")
    write_lines(other, ["telemetry,device=x1,site=z temp=5 %d" % (T0 + 120)], "s")
    r = requests.get(url(b, "/query"), auth=(email, "acme-password"), timeout=10,
                     params={"query": "temp", "time": T0 + 120})
    assert [s["metric"]["device"] for s in r.json()["data"]["result"]] == ["x1"]
    r = requests.get(url(b, "/label/site/values"), auth=(email, "acme-password"), timeout=10)
    assert r.json()["data"] == ["z"]
    # and the first tenant does not see x1
    assert {dict(k)["device"] for k in vec(env, "temp")} == {"d1", "d2", "d3"}


# ---- MQTT telemetry, dotted metric names ----

def test_mqtt_telemetry_metric_names(env):
    b, _ = env
    dev = unique("m")
    c = PahoClient(b)
    t = (T0 + 200) * 1000
    c.publish("devices/%s/telemetry" % dev, json.dumps({"ts": t, "env": {"temp": 21.5}}), qos=1)
    c.disconnect()
    sel = "{__name__=\"env.temp\", device=\"%s\"}" % dev
    assert vec(env, sel, t=T0 + 200) == {L(__name__="env.temp", device=dev): 21.5}
    # thinghz extension: dotted names need no quoting
    assert one(env, "env.temp{device=\"%s\"} * 2" % dev, t=T0 + 200) == 43


# ---- promtool as the client ----

def promtool(env, *args):
    b, _ = env
    u = "http://%s:%s@127.0.0.1:%d/prometheus" % (urllib.parse.quote(b.admin_email, safe=""),
                                                   urllib.parse.quote(b.admin_password, safe=""),
                                                   b.http_port)
    argv = [PROMTOOL, "query"] + [a.replace("URL", u) for a in args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_promtool_instant(env):
    p = promtool(env, "instant", "--time=%d" % (T0 + 120), "URL", "sum by (site) (temp)")
    assert p.returncode == 0, p.stderr
    lines = sorted(p.stdout.strip().splitlines())
    assert lines == ['{site="a"} => 54 @[%d]' % (T0 + 120), '{site="b"} => 66 @[%d]' % (T0 + 120)]
    p = promtool(env, "instant", "-o", "json", "--time=%d" % (T0 + 120), "URL",
                 "rate(cnt[2m])")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert float(res[0]["value"][1]) == pytest.approx(105 / 110)
    # a parse error is reported as Prometheus' bad_data
    p = promtool(env, "instant", "URL", "sum(temp")
    assert p.returncode != 0 and "bad_data" in p.stderr and "parse error" in p.stderr


def test_promtool_range(env):
    p = promtool(env, "range", "--start=%d" % T0, "--end=%d" % (T0 + 60), "--step=30s", "URL",
                 "temp{device=\"d3\"}")
    assert p.returncode == 0, p.stderr
    out = p.stdout.split()
    # temp{device="d3", site="b"} => then one "value @[ts]" per step
    assert "30 @[%d]" % T0 in p.stdout
    assert "39 @[%d]" % (T0 + 30) in p.stdout
    assert "48 @[%d]" % (T0 + 60) in p.stdout
    assert 'device="d3"' in out[0] + out[1]


def test_promtool_series_and_labels(env):
    p = promtool(env, "series", "--match=temp{site=\"a\"}", "URL")
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.strip().splitlines()) == [
        '{__name__="temp", device="d1", site="a"}', '{__name__="temp", device="d2", site="a"}']
    p = promtool(env, "labels", "URL", "device")
    assert p.returncode == 0, p.stderr
    # d1..d3 and, when the MQTT test ran first, its device "m-..."
    assert p.stdout.split()[:3] == ["d1", "d2", "d3"]
    assert all(v.startswith("m-") for v in p.stdout.split()[3:])
