"""test_metrics.py - GET /metrics: the exposition passes `promtool check
metrics`, its counters move with real traffic (mosquitto_pub, line protocol
writes, SQL queries, a refused CONNECT, an ACL denial) and the metrics-auth
setting decides who may read it."""

import gzip
import re
import subprocess

import pytest
import requests

import mqttraw as r
from apiclient import Api, admin_api, api_token, expect, new_device, write_lines
from clients import unique, wait_until
from conftest import IS_MOSQUITTO

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="thinghz's own metrics")

PROMTOOL = "/usr/bin/promtool"
CTYPE = "text/plain; version=0.0.4; charset=utf-8"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def url(b):
    return "http://127.0.0.1:%d/metrics" % b.http_port


def scrape(b, **kw):
    res = requests.get(url(b), timeout=10, **kw)
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == CTYPE
    return res.text


def promtool_ok(text):
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        "promtool check metrics: rc %d\n%s%s" % (p.returncode, p.stdout, p.stderr)


def parse(text):
    """{(name, frozenset of label pairs): value} and the TYPE of each family."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, t = line.split(" ")
            types[name] = t
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types


def val(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_exposition_is_valid_and_counters_move(daemon, admin):
    before_text = scrape(daemon)
    promtool_ok(before_text)
    s0, types = parse(before_text)
    for name, t in [("thinghz_mqtt_messages_received_total", "counter"),
                    ("thinghz_mqtt_connections", "gauge"),
                    ("thinghz_tsdb_wal_fsync_duration_seconds", "histogram"),
                    ("thinghz_query_duration_seconds", "histogram"),
                    ("thinghz_memory_bytes", "gauge"),
                    ("thinghz_http_requests_total", "counter"),
                    ("thinghz_build_info", "gauge")]:
        assert types.get(name) == t, (name, types.get(name))
    assert val(s0, "thinghz_process_resident_memory_bytes") > 1 << 20
    assert val(s0, "thinghz_process_start_time_seconds") > 1.6e9

    # MQTT traffic: N messages from one mosquitto_pub (one per stdin line)
    n = 50
    p = subprocess.run(["mosquitto_pub", "-p", str(daemon.port), "-h", "127.0.0.1", "-q", "1",
                        "-t", "m/" + unique(), "-l"], input="".join("msg %d\n" % i for i in range(n)),
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr

    # a refused CONNECT: 3.1.1, empty client id, persistent session
    c = r.RawClient(daemon.port, version=4)
    assert c.connect("", clean=False, expect_rc=None).rc == 2

    # telemetry through the line protocol: points of tenant 1 and WAL fsyncs
    pts = 30
    write_lines(admin, ["telemetry,device=m1 v=%d %d" % (i, 1795687200 * 10**9 + i * 10**9)
                        for i in range(pts)])
    # a payload the parser refuses
    res = requests.post("http://127.0.0.1:%d/write" % daemon.http_port, data=b"not line protocol",
                        headers={"Authorization": "Bearer " + admin.token}, timeout=10)
    assert res.status_code == 400, res.text

    # an SQL query and a PromQL query
    expect(admin.post("/query", {"sql": "SELECT count(v) FROM telemetry"}), 200)
    res = requests.get("http://127.0.0.1:%d/prometheus/api/v1/query" % daemon.http_port,
                       params={"query": "sum(v)"},
                       headers={"Authorization": "Bearer " + admin.token}, timeout=10)
    assert res.status_code == 200 and res.json()["status"] == "success", res.text

    # Gauges of MQTT queues are sampled every 250 ms; counters are immediate.
    text = scrape(daemon, headers={"Accept-Encoding": "identity"})
    promtool_ok(text)
    s1, _ = parse(text)
    assert val(s1, "thinghz_mqtt_messages_received_total") >= \
        val(s0, "thinghz_mqtt_messages_received_total") + n
    assert val(s1, "thinghz_mqtt_received_bytes_total") >= \
        val(s0, "thinghz_mqtt_received_bytes_total") + n * 5
    assert val(s1, "thinghz_mqtt_connections_accepted_total") >= \
        val(s0, "thinghz_mqtt_connections_accepted_total") + 1
    assert val(s1, "thinghz_mqtt_connections_refused_total", reason="client_id_invalid") == \
        val(s0, "thinghz_mqtt_connections_refused_total", reason="client_id_invalid") + 1
    assert val(s1, "thinghz_tsdb_points_written_total", tenant="1") == \
        val(s0, "thinghz_tsdb_points_written_total", tenant="1") + pts
    assert val(s1, "thinghz_telemetry_rejected_total", reason="parse") == \
        val(s0, "thinghz_telemetry_rejected_total", reason="parse") + 1
    f0 = val(s0, "thinghz_tsdb_wal_fsync_duration_seconds_count")
    f1 = val(s1, "thinghz_tsdb_wal_fsync_duration_seconds_count")
    assert f1 > f0  # fsync = always: the 204 came after at least one fdatasync
    assert val(s1, "thinghz_tsdb_wal_fsync_duration_seconds_bucket", le="+Inf") == f1
    assert val(s1, "thinghz_tsdb_wal_fsyncs_total") >= f1
    assert val(s1, "thinghz_tsdb_wal_written_bytes_total") > 0
    assert val(s1, "thinghz_query_duration_seconds_count", kind="sql") == \
        val(s0, "thinghz_query_duration_seconds_count", kind="sql") + 1
    assert val(s1, "thinghz_query_duration_seconds_sum", kind="sql") > 0
    assert val(s1, "thinghz_query_duration_seconds_count", kind="promql") == \
        val(s0, "thinghz_query_duration_seconds_count", kind="promql") + 1
    assert val(s1, "thinghz_http_requests_total", code="2xx") >= \
        val(s0, "thinghz_http_requests_total", code="2xx") + 3
    assert val(s1, "thinghz_http_requests_total", code="4xx") >= \
        val(s0, "thinghz_http_requests_total", code="4xx") + 1
    assert val(s1, "thinghz_memory_bytes", subsystem="tsdb_head") > 0
    assert val(s1, "thinghz_memory_bytes", subsystem="registry") > 0
    assert val(s1, "thinghz_tsdb_series") >= 1
    # the scrape itself ran on the worker pool and is counted as running
    assert val(s1, "thinghz_worker_pool_requests", state="running") >= 1


def test_drops_denials_and_queues(broker_factory, tmp_path):
    """A device publishing outside its namespace is denied; a persistent
    session that is offline queues messages, then drops past its bound."""
    b = broker_factory(max_queued_messages=5)
    admin = admin_api(b)
    dev = new_device(admin)
    s0, _ = parse(scrape(b))
    c = r.RawClient(b.port, version=5)
    assert c.connect(dev["id"], username=dev["id"], password=dev["secret"].encode()).rc == 0
    c.send(r.publish("elsewhere/x", b"no", qos=1, pid=1, version=5))
    ack = c.recv_type(r.PUBACK)
    assert ack.rc == 0x87
    # a persistent session that goes offline with a subscription
    sub = r.RawClient(b.port, version=4)
    cid = unique("q")
    assert sub.connect(cid, clean=False).rc == 0
    sub.send(r.subscribe(1, [("qd/#", 1)]))
    sub.recv_type(r.SUBACK)
    sub.send(r.disconnect())
    sub.wait_closed()
    pub = r.RawClient(b.port, version=4)
    assert pub.connect(unique(), clean=True).rc == 0
    for i in range(8):
        pub.send(r.publish("qd/t", b"m%d" % i, qos=1, pid=i + 1))
        pub.recv_type(r.PUBACK)

    def moved():
        s, _ = parse(scrape(b))
        return s if val(s, "thinghz_mqtt_queued_messages") >= 5 else None
    s1 = wait_until(moved)
    assert s1, "queued messages gauge did not reach 5"
    assert val(s1, "thinghz_mqtt_acl_denied_total", action="publish") == \
        val(s0, "thinghz_mqtt_acl_denied_total", action="publish") + 1
    assert val(s1, "thinghz_mqtt_messages_dropped_total", reason="queue_full") == \
        val(s0, "thinghz_mqtt_messages_dropped_total", reason="queue_full") + 3
    assert val(s1, "thinghz_memory_bytes", subsystem="mqtt_sessions") > 0
    assert val(s1, "thinghz_registry_devices") == 1
    promtool_ok(scrape(b))


def test_gzip_and_head(daemon):
    res = requests.get(url(daemon), headers={"Accept-Encoding": "gzip"}, timeout=10, stream=True)
    assert res.status_code == 200
    assert res.headers["content-encoding"] == "gzip"
    assert res.headers["content-type"] == CTYPE
    body = gzip.decompress(res.raw.read())
    assert b"# TYPE thinghz_uptime_seconds gauge" in body
    h = requests.head(url(daemon), timeout=10)
    assert h.status_code == 200 and h.headers["content-type"] == CTYPE and not h.content


def test_auth_loopback_default_and_none(broker_factory):
    b = broker_factory()  # metrics-auth = loopback: 127.0.0.1 needs no token
    assert requests.get(url(b), timeout=10).status_code == 200
    b2 = broker_factory(metrics_auth="none")
    assert requests.get(url(b2), timeout=10).status_code == 200


def test_auth_token(broker_factory):
    b = broker_factory(metrics_auth="token")
    res = requests.get(url(b), timeout=10)
    assert res.status_code == 401
    assert res.headers["www-authenticate"].startswith("Bearer")
    assert res.json()["error"]["code"] == "unauthorized"
    res = requests.get(url(b), headers={"Authorization": "Bearer thz_nonsense"}, timeout=10)
    assert res.status_code == 401
    admin = admin_api(b)
    viewer = api_token(admin, role="viewer")["token"]
    text = scrape(b, headers={"Authorization": "Bearer " + viewer})
    promtool_ok(text)
    # a customer tenant's admin does not see the whole daemon
    expect(admin.post("/tenants", {"name": unique("t2"), "admin_email": "t2m@example.com",
                                   "admin_password": "t2-password"}), 201)
    t2 = Api(b).login("t2m@example.com", "t2-password")
    res = requests.get(url(b), headers={"Authorization": "Bearer " + t2.token}, timeout=10)
    assert res.status_code == 403 and res.json()["error"]["code"] == "forbidden"


def test_bad_setting_refused(tmp_path):
    from conftest import run_cli
    res = run_cli("serve", "--metrics-auth", "sometimes", "--data-dir", tmp_path / "d")
    assert res.returncode == 2 and "metrics-auth" in res.stderr
