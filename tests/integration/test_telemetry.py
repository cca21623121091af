"""The telemetry path end to end: devices publish JSON to
devices/{id}/telemetry over MQTT (paho), the points land in the tsdb and
come back through the REST API; QoS 1 acknowledgements mean durable (fsync
always): after kill -9 every acknowledged point is there. Malformed payloads
are reported on devices/{id}/errors and in the device's health, and never
stop ingest."""

import json
import re
import time

import pytest
import requests

from apiclient import api_token, expect, new_device
from clients import V311, V5, PahoClient, unique, wait_until
from conftest import IS_MOSQUITTO

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="mosquitto stores no telemetry")


def latest(api, dev):
    r = api.get("/devices/%s/latest" % dev)
    return r.json().get("metrics", {}) if r.status_code == 200 else {}


def sql(api, q):
    return expect(api.post("/query", {"sql": q}), 200).json()


def test_json_telemetry_is_stored_and_queryable(daemon, admin):
    dev = unique("d")
    c = PahoClient(daemon, version=V5)
    t0 = int(time.time()) * 1000 - 10_000
    for i in range(10):
        body = {"ts": t0 + i * 1000, "temperature": 20 + i / 4, "env": {"humidity": 40 + i},
                "door": i % 2 == 0, "mode": "auto"}
        c.publish("devices/%s/telemetry" % dev, json.dumps(body), qos=1)
    c.disconnect()
    m = latest(admin, dev)
    assert m["temperature"]["value"] == pytest.approx(22.25)
    assert m["env.humidity"]["value"] == pytest.approx(49)
    assert m["door"]["value"] is False
    assert m["mode"]["value"] == "auto"
    res = sql(admin, "SELECT count(temperature), avg(temperature), max(\"env.humidity\") "
                     "FROM telemetry WHERE device = '%s'" % dev)
    row = res["rows"][0]
    assert row[0] == 10
    assert row[1] == pytest.approx(sum(20 + i / 4 for i in range(10)) / 10)
    assert row[2] == pytest.approx(49)


def test_batch_and_arrival_time(daemon, admin):
    dev = unique("d")
    c = PahoClient(daemon, version=V311)
    before = time.time()
    c.publish("devices/%s/telemetry" % dev, json.dumps([{"v": 1}, {"v": 2, "ts": 1000}]), qos=1)
    c.disconnect()
    m = latest(admin, dev)
    # the one without ts got the arrival time, which is the newest
    assert m["v"]["value"] == 1
    res = sql(admin, "SELECT count(v) FROM telemetry WHERE device = '%s'" % dev)
    assert res["rows"][0][0] == 2
    assert before - 5 < time.time()


def test_malformed_payloads_are_reported_and_ingest_goes_on(daemon, admin):
    dev = new_device(admin)
    tok = api_token(admin)["token"]
    watch = PahoClient(daemon, username="w", password=tok)
    assert watch.subscribe("devices/%s/errors" % dev["id"], qos=1) == [1]
    c = PahoClient(daemon, username=dev["id"], password=dev["secret"])
    topic = "devices/%s/telemetry" % dev["id"]
    c.publish(topic, b"{not json", qos=1)
    err = json.loads(watch.get().payload)
    assert err["code"] == "invalid_telemetry" and err["error"]
    c.publish(topic, json.dumps({"t": 5}), qos=1)
    assert latest(admin, dev["id"])["t"]["value"] == 5
    d = expect(admin.get("/devices/" + dev["id"]), 200).json()
    assert d["telemetry_errors"] == 1 and d["last_telemetry_error"]
    c.disconnect()
    watch.disconnect()


def test_tenants_keep_their_telemetry(daemon, admin):
    email = unique("t2") + "@example.com"
    expect(admin.post("/tenants", {"name": unique("tenant"), "admin_email": email,
                                   "admin_password": "tenant-two-password"}), 201)
    other = admin.login(email, "tenant-two-password")
    d1, d2 = new_device(admin, "same-id"), new_device(other, "same-id")
    for d, v in ((d1, 1), (d2, 2)):
        c = PahoClient(daemon, username=d["id"], password=d["secret"])
        c.publish("devices/same-id/telemetry", json.dumps({"x": v}), qos=1)
        c.disconnect()
    assert latest(admin, "same-id")["x"]["value"] == 1
    assert latest(other, "same-id")["x"]["value"] == 2


def test_acknowledged_points_survive_kill9(daemon, admin):
    dev = unique("d")
    c = PahoClient(daemon, version=V5)
    acked = 0
    t0 = int(time.time()) * 1000 - 1_000_000
    for i in range(300):
        c.publish("devices/%s/telemetry" % dev, json.dumps({"ts": t0 + i, "n": i}), qos=1)
        acked += 1
    c.stop_loop()
    daemon.kill9(pause=0)
    daemon.start()
    res = sql(admin, "SELECT count(n), max(n) FROM telemetry WHERE device = '%s'" % dev)
    assert res["rows"][0][0] == acked
    assert res["rows"][0][1] == acked - 1


def last_run_log(daemon):
    """The daemon's log since its latest start."""
    return daemon.log_text().rsplit("==== start:", 1)[-1]


def head_points(daemon):
    text = requests.get("http://127.0.0.1:%d/metrics" % daemon.http_port, timeout=10).text
    m = re.search(r"^thinghz_tsdb_head_points (\S+)$", text, re.M)
    assert m, "no thinghz_tsdb_head_points in /metrics"
    return float(m.group(1))


def publish_n(daemon, dev, k0, n, t0):
    c = PahoClient(daemon, version=V5)
    for i in range(k0, k0 + n):
        c.publish("devices/%s/telemetry" % dev, json.dumps({"ts": t0 + i, "n": i}), qos=1)
    c.stop_loop()


def count_max(api, dev):
    res = sql(api, "SELECT count(n), max(n) FROM telemetry WHERE device = '%s'" % dev)
    return res["rows"][0][0], res["rows"][0][1]


def test_clean_restart_writes_the_head_to_blocks(daemon, admin):
    """SIGTERM writes the head to blocks: the next start replays no WAL
    (its head is empty) and the points are read from blocks; a kill -9
    afterwards replays what it left, and everything is still there."""
    dev = unique("d")
    t0 = int(time.time()) * 1000 - 1_000_000
    publish_n(daemon, dev, 0, 300, t0)
    assert head_points(daemon) >= 300
    blocks = daemon.data_dir / "tsdb" / "blocks"
    before = set(blocks.glob("*.blk"))
    daemon.stop()  # asserts exit 0 within 5 s
    log = last_run_log(daemon)
    m = re.search(r"writing (\d+) points of the head to blocks", log)
    assert m and int(m.group(1)) >= 300, log[-2000:]
    assert "head written to blocks" in log
    assert set(blocks.glob("*.blk")) - before, "no new block file"
    daemon.start()
    assert "WAL replay: 0 points" in last_run_log(daemon)
    assert head_points(daemon) == 0
    assert count_max(admin, dev) == (300, 299)
    # kill -9 now: the points since the restart come back from the WAL
    publish_n(daemon, dev, 300, 200, t0)
    daemon.kill9(pause=0)
    daemon.start()
    m = re.search(r"WAL replay: (\d+) points", last_run_log(daemon))
    assert m and int(m.group(1)) >= 200
    assert head_points(daemon) >= 200
    assert count_max(admin, dev) == (500, 499)
    # and a clean restart after the crash writes those out too
    daemon.stop()
    daemon.start()
    assert "WAL replay: 0 points" in last_run_log(daemon)
    assert head_points(daemon) == 0
    assert count_max(admin, dev) == (500, 499)
