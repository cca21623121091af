"""test_query.py - the SQL query endpoint and the per-device telemetry routes
against the real daemon: points are written through the ingest path
(POST /write?precision=ns, line protocol) and read back exactly; CSV output,
errors with their position, roles and tenant isolation."""

import csv
import io

import pytest

from apiclient import Api, expect, write_lines
from clients import unique

T0 = 1795687200 * 10**9  # 2026-11-26T10:00:00Z
S = 10**9


def write(api, lines):
    write_lines(api, lines, "ns")


def q(api, sql, status=200, **kw):
    return expect(api.post("/query", {"sql": sql}, **kw), status)


def sample(d, i):
    return round(20 + d * 1.5 + (i % 13) * 0.25, 3)


@pytest.fixture
def data(admin):
    lines = []
    for d, (dev, site) in enumerate([("d1", "a"), ("d2", "a"), ("d3", "b")]):
        for i in range(120):  # every 30 s for an hour
            lines.append("telemetry,device=%s,site=%s temperature=%r,count=%di %d"
                         % (dev, site, sample(d, i), i, T0 + i * 30 * S))
    write(admin, lines)
    return admin


def test_avg_per_bin_and_max_per_device(data):
    r = q(data, "SELECT bin(time, 15m) AS b, avg(temperature) AS t FROM telemetry "
                "WHERE device = 'd1' AND time >= '2026-11-26 10:00:00' "
                "AND time < '2026-11-26 11:00:00' GROUP BY 1 ORDER BY 1").json()
    assert r["columns"] == ["b", "t"]
    assert [row[0] for row in r["rows"]] == ["2026-11-26T10:%02d:00Z" % m for m in (0, 15, 30, 45)]
    for k, row in enumerate(r["rows"]):
        vals = [sample(0, i) for i in range(k * 30, k * 30 + 30)]
        assert row[1] == pytest.approx(sum(vals) / len(vals), rel=1e-12)
    r = q(data, "SELECT device, max(temperature), last(count) FROM telemetry "
                "GROUP BY device ORDER BY device").json()
    assert r["rows"] == [[dev, max(sample(d, i) for i in range(120)), 119]
                         for d, dev in enumerate(["d1", "d2", "d3"])]
    r = q(data, "SELECT site, count(*) FROM telemetry WHERE device IN ('d1', 'd3') "
                "AND temperature BETWEEN 20 AND 22 GROUP BY site ORDER BY site").json()
    want = {"a": sum(1 for i in range(120) if 20 <= sample(0, i) <= 22),
            "b": sum(1 for i in range(120) if 20 <= sample(2, i) <= 22)}
    assert r["rows"] == [[k, v] for k, v in sorted(want.items()) if v]


def test_raw_rows_order_limit_and_csv(data):
    r = q(data, "SELECT time, device, temperature FROM telemetry "
                "ORDER BY temperature DESC, time, device LIMIT 4").json()
    pts = sorted(((-sample(d, i), T0 + i * 30 * S, dev) for d, dev in
                  enumerate(["d1", "d2", "d3"]) for i in range(120)))[:4]
    assert [row[2] for row in r["rows"]] == [-p[0] for p in pts]
    assert [row[1] for row in r["rows"]] == [p[2] for p in pts]
    resp = q(data, "SELECT time, device AS \"dev,ice\", temperature FROM telemetry "
                   "WHERE device = 'd2' ORDER BY time LIMIT 2", headers={"Accept": "text/csv"})
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["time", "dev,ice", "temperature"]
    assert rows[1] == ["2026-11-26T10:00:00Z", "d2", repr(sample(1, 0))]
    assert rows[2] == ["2026-11-26T10:00:30Z", "d2", repr(sample(1, 1))]
    assert resp.text.endswith("\r\n") and '"dev,ice"' in resp.text


def test_gap_filling(data):
    write(data, ["telemetry,device=g x=10 %d" % (T0 + 5 * S),
                 "telemetry,device=g x=40 %d" % (T0 + 185 * S)])
    r = q(data, "SELECT bin(time, 1m), interpolate_linear(avg(x)), locf(avg(x)) FROM telemetry "
                "WHERE device = 'g' AND time >= '2026-11-26 10:00:00' AND "
                "time < '2026-11-26 10:05:00' GROUP BY 1 ORDER BY 1").json()
    assert [row[1] for row in r["rows"]] == [10, 20, 30, 40, None]
    assert [row[2] for row in r["rows"]] == [10, 10, 10, 40, 40]


def test_errors_carry_the_position(data):
    r = q(data, "SELECT avg(temperature FROM telemetry", 400).json()
    assert r["error"]["code"] == "invalid_query"
    assert r["error"]["position"] == 23
    assert "at position 23" in r["error"]["message"]
    r = q(data, "SELECT nosuch FROM telemetry", 400).json()
    assert r["error"]["position"] == 7 and "nosuch" in r["error"]["message"]
    expect(data.post("/query", {"sql": 5}), 400, "invalid_request")
    expect(data.post("/query", {}), 400, "invalid_request")


def test_device_routes(data):
    r = expect(data.get("/devices/d1/telemetry", params={
        "metric": "temperature", "from": "2026-11-26T10:00:00Z", "to": "2026-11-26T10:01:00Z"}),
        200).json()
    assert r == {"device": "d1", "metric": "temperature",
                 "points": [["2026-11-26T10:00:00Z", sample(0, 0)],
                            ["2026-11-26T10:00:30Z", sample(0, 1)]]}
    r = expect(data.get("/devices/d1/telemetry", params={
        "metric": "temperature,count", "from": str(T0 // 10**6), "to": str(T0 // 10**6 + 3600000),
        "step": "30m", "agg": "max"}), 200).json()
    assert [s["metric"] for s in r["series"]] == ["temperature", "count"]
    assert r["series"][1]["points"] == [["2026-11-26T10:00:00Z", 59],
                                        ["2026-11-26T10:30:00Z", 119]]
    expect(data.get("/devices/d1/telemetry", params={"metric": "x", "agg": "median"}), 400,
           "invalid_request")
    expect(data.get("/devices/nosuch/telemetry", params={"metric": "x"}), 404, "not_found")
    r = expect(data.get("/devices/d3/latest"), 200).json()
    assert r["device"] == "d3"
    assert r["metrics"]["temperature"] == {"time": "2026-11-26T10:59:30Z", "value": sample(2, 119)}
    assert r["metrics"]["count"]["value"] == 119
    expect(data.get("/devices/nosuch/latest"), 404, "not_found")


def test_roles_and_tenants(daemon, data):
    email = "%s@example.com" % unique("viewer")
    expect(data.post("/users", {"email": email, "password": "password-123", "role": "viewer"}), 201)
    viewer = Api(daemon).login(email, "password-123")
    assert q(viewer, "SELECT count(temperature) FROM telemetry").json()["rows"] == [[360]]
    expect(Api(daemon).post("/query", {"sql": "SELECT 1 FROM telemetry"}, token=None), 401)
    expect(data.post("/tenants", {"name": unique("t2"), "admin_email": "t2q@example.com",
                                  "admin_password": "t2-password"}), 201)
    t2 = Api(daemon).login("t2q@example.com", "t2-password")
    r = q(t2, "SELECT temperature FROM telemetry", 400).json()
    assert "does not exist" in r["error"]["message"]
    assert q(t2, "SELECT count(*) FROM telemetry").json()["rows"] == [[0]]
    expect(t2.get("/devices/d1/latest"), 404, "not_found")
    expect(t2.get("/devices/d1/telemetry", params={"metric": "temperature"}), 404, "not_found")
    write(t2, ["telemetry,device=d1 temperature=99 %d" % T0])
    assert q(t2, "SELECT device, temperature FROM telemetry").json()["rows"] == [["d1", 99]]
    assert q(data, "SELECT max(temperature) FROM telemetry").json()["rows"][0][0] < 99
