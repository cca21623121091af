"""test_faults.py - fault tolerance: kill -9 during QoS 1 ingest, a full disk,
corrupt files, and abusive clients while a well-behaved probe keeps working.

Every test is bounded and loopback only. The disk-full test mounts a small
tmpfs on the data dir (root only; skipped with the reason otherwise) and
always unmounts it."""

import json
import os
import random
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
import requests

import mqttraw as r
from apiclient import Api, admin_api, expect, new_device
from clients import V311, V5, PahoClient, unique, wait_until
from conftest import IS_MOSQUITTO, Broker
from test_session import _offline_check, _offline_setup

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="thinghz fault behaviour")


def sql(api, q):
    return expect(api.post("/query", {"sql": q}), 200).json()


def stored_values(api, dev, metric="n"):
    res = sql(api, "SELECT %s FROM telemetry WHERE device = '%s'" % (metric, dev))
    return [row[0] for row in res["rows"]]


# ---------------------------------------------------------------- kill -9


class Publisher(threading.Thread):
    """A paho QoS 1 publisher of devices/{dev}/telemetry at full rate (up to
    `window` unacknowledged messages); records the values the broker
    acknowledged (PUBACK received, paho's on_publish)."""

    def __init__(self, port, dev, version, t0):
        super().__init__(daemon=True)
        self.dev, self.t0 = dev, t0
        self.c = mqtt.Client(unique("pub"), protocol=version)
        self.c.max_inflight_messages_set(50)
        self.mid_value = {}
        self.acked_mids = []
        self.c.on_publish = lambda c, u, mid: self.acked_mids.append(mid)
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        self.stop = threading.Event()

    def run(self):
        k = 0
        while not self.stop.is_set() and k < 30000:
            if k - len(self.acked_mids) >= 100:  # bound the client's own queue
                time.sleep(0.001)
                continue
            body = json.dumps({"ts": self.t0 + k, "n": k})
            info = self.c.publish("devices/%s/telemetry" % self.dev, body, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                break
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                break
            self.mid_value[info.mid] = k
            k += 1

    def acked(self):
        return {self.mid_value[m] for m in list(self.acked_mids) if m in self.mid_value}

    def close(self):
        self.stop.set()
        self.join(5)
        self.c.loop_stop()


def test_kill9_during_qos1_ingest_loses_no_acknowledged_point(broker_factory):
    b = broker_factory(fsync="always")
    admin = admin_api(b)
    # persistent sessions with queued QoS 1 messages (3.1.1 and v5), and
    # retained messages, set up before the crash
    sessions = [(v,) + _offline_setup(b, v) for v in (4, 5)]
    retained = {"faults/ret/%d" % i: b"keep-%d" % i for i in range(5)}
    p = PahoClient(b)
    for t, v in retained.items():
        p.publish(t, v, qos=1, retain=True)
    p.disconnect()

    t0 = int(time.time()) * 1000 - 3_600_000
    pubs = [Publisher(b.port, unique("k9"), V5 if i % 2 else V311, t0) for i in range(4)]
    for x in pubs:
        x.start()
    assert wait_until(lambda: all(len(x.acked_mids) > 200 for x in pubs), 20), \
        "publishers did not get going: %r" % [len(x.acked_mids) for x in pubs]
    b.kill9(pause=0)  # mid-stream: the publishers are still sending
    for x in pubs:
        x.close()
    b.start()

    total = 0
    for x in pubs:
        acked = x.acked()
        total += len(acked)
        got = set(stored_values(admin, x.dev))
        missing = acked - got
        assert not missing, "%s: %d acknowledged points lost, e.g. %r" % (
            x.dev, len(missing), sorted(missing)[:10])
    assert total > 800
    for v, cid, topic in sessions:
        _offline_check(b, v, cid, topic)
    s = PahoClient(b)
    s.subscribe("faults/ret/#", qos=1)
    got = {m.topic: m.payload for m in s.get_n(len(retained))}
    assert got == retained
    s.disconnect()


# ---------------------------------------------------------------- disk full


@pytest.fixture
def tmpfs_broker(request, tmp_path):
    """start(size_mb, **opts) -> Broker whose data dir is a fresh tmpfs."""
    mounted, brokers = [], []
    request.node._thz_brokers = brokers

    def start(size_mb, **opts):
        bk = Broker(tmp_path / "full", opts)
        r_ = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % size_mb, "tmpfs",
                             str(bk.data_dir)], capture_output=True, text=True)
        if r_.returncode != 0:
            pytest.skip("cannot mount a tmpfs for the data dir (needs root): %s"
                        % r_.stderr.strip())
        mounted.append(bk.data_dir)
        brokers.append(bk)
        return bk.start()

    yield start
    try:
        for bk in brokers:
            if bk.running:
                assert bk.stop(check=False) == 0, "exit code %r after SIGTERM" % bk.exit_codes
    finally:
        for d in mounted:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(path):
    """Writes a filler file until the file system is full; returns its path."""
    f = path / "filler"
    with open(f, "wb", buffering=0) as out:
        for chunk in (1 << 20, 1 << 16, 4096, 512, 1):
            buf = b"\0" * chunk
            while True:
                try:
                    if out.write(buf) != chunk:
                        break
                except OSError:
                    break
    return f


def telemetry(c, dev, k, t0):
    """Publishes one point at QoS 1; the PUBACK (rc 0x10, no subscribers,
    is success too)."""
    return c.publish("devices/%s/telemetry" % dev, json.dumps({"ts": t0 + k, "n": k}).encode(),
                     qos=1)


def lp_write(b, token, body, path="/write"):
    return requests.post("http://127.0.0.1:%d%s?precision=ms" % (b.http_port, path), data=body,
                         headers={"Authorization": "Bearer " + token}, timeout=10)


def test_disk_full_refuses_writes_clearly_and_resumes(tmpfs_broker):
    b = tmpfs_broker(24, fsync="always")
    admin = admin_api(b)
    t0 = int(time.time()) * 1000 - 600_000
    dev = unique("full")
    c = r.RawClient(b.port, version=5)
    c.connect(unique("c"))
    for k in range(50):
        assert telemetry(c, dev, k, t0).rc < 0x80
    stored_before = set(range(50))
    tok = expect(admin.post("/tokens", {"name": "w"}), 201).json()["token"]

    filler = fill(b.data_dir)
    # v5: the WAL cannot take the points: PUBACK 0x97 (quota exceeded). The
    # last page of the segment may still have room for a few records.
    refused, k = None, 50
    for k in range(50, 2050):
        ack = telemetry(c, dev, k, t0)
        if ack.rc >= 0x80:
            refused = ack
            break
        stored_before.add(k)
    assert refused is not None and refused.rc == 0x97, refused
    # while full, every further publish is refused at once, also 0x97
    for j in range(3):
        assert telemetry(c, dev, 10_000 + j, t0).rc == 0x97
    # 3.1.1 has no negative acknowledgement: the connection is closed
    # without a PUBACK, so the client sends the message again later
    c4 = r.RawClient(b.port, version=4)
    c4.connect(unique("c4"))
    c4.send(r.publish("devices/%s/telemetry" % dev, b'{"n": 1}', qos=1, pid=7))
    assert not [x for x in c4.wait_closed(5) if x.type == r.PUBACK]

    # the line-protocol endpoints: 507 with the JSON error body
    for path in ("/write", "/api/v2/write"):
        resp = lp_write(b, tok, "m,device=%s n=1i %d" % (dev, t0), path)
        assert resp.status_code == 507, resp.text
        assert resp.json()["error"]["code"] == "insufficient_storage"
    # the REST API: a registry write that cannot get space is 507 too
    # (SQLite may still fill pages of its WAL file first)
    statuses = []
    for i in range(400):
        resp = admin.post("/devices", {"id": unique("nd")})
        statuses.append(resp.status_code)
        if resp.status_code != 201:
            break
    assert statuses[-1] == 507, statuses[-5:]
    assert resp.json()["error"]["code"] == "insufficient_storage"
    # the broker state log: retained messages still work from memory
    p = r.RawClient(b.port, version=5)
    p.connect(unique("p"))
    assert p.publish("full/ret", b"x", qos=1, retain=True).rc in (0, 0x10)
    assert b.running
    # reads still work, and nothing stored was damaged
    assert set(stored_values(admin, dev)) >= stored_before

    # space returns: ingest resumes by itself, no restart
    filler.unlink()
    ok_k = []

    def accepted():
        k2 = 20_000 + len(ok_k) + 1000 * len(ok_k)
        if telemetry(c, dev, k2, t0).rc < 0x80:
            ok_k.append(k2)
            return True
        time.sleep(0.05)
        return False

    assert wait_until(accepted, 5), "ingest did not resume after the filler was deleted"
    for j in range(20):
        assert telemetry(c, dev, 30_000 + j, t0).rc < 0x80
    expect(admin.post("/devices", {"id": unique("nd")}), 201)
    assert lp_write(b, tok, "m,device=%s n=1i %d" % (dev, t0)).status_code == 204
    got = set(stored_values(admin, dev))
    assert got >= stored_before | set(ok_k) | set(range(30_000, 30_020))
    c.disconnect()
    p.disconnect()

    log = b.log_text()
    assert "No space left on device" in log
    assert "writes succeed again" in log
    # rate limited: the WAL's failure is not logged per refused message
    assert log.count("new points are refused") <= 3
    # the segment was cut back after the short write: a restart replays it
    # without a torn record, and every stored point is still there
    b.stop()
    b.start()
    assert "torn record" not in b.log_text()
    assert set(stored_values(admin, dev)) >= stored_before | set(range(30_000, 30_020))


# ---------------------------------------------------------------- corrupt files


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_truncated_wal_segment_keeps_the_records_before_the_cut(broker_factory):
    b = broker_factory(fsync="always")
    admin = admin_api(b)
    dev = unique("wal")
    t0 = int(time.time()) * 1000 - 600_000
    c = r.RawClient(b.port, version=5)
    c.connect(unique("c"))
    for k in range(100):
        assert telemetry(c, dev, k, t0).rc < 0x80
    c.close()
    b.kill9(pause=0)
    segs = sorted((b.data_dir / "tsdb" / "wal").glob("*.wal"), key=lambda p: p.stat().st_size)
    seg = segs[-1]
    size = seg.stat().st_size
    assert size > 1000
    with open(seg, "r+b") as f:
        f.truncate(size - 20)  # mid-record: the last record is torn
    b.start()
    assert "bad or torn record" in b.log_text()
    got = set(stored_values(admin, dev))
    assert got == set(range(99)), sorted(set(range(100)) - got)
    # and the engine goes on taking points
    c = r.RawClient(b.port, version=5)
    c.connect(unique("c"))
    assert telemetry(c, dev, 500, t0).rc < 0x80
    assert 500 in stored_values(admin, dev)
    c.close()


def blocks_of(b):
    return sorted((b.data_dir / "tsdb" / "blocks").glob("*.blk"))


def test_damaged_blocks_are_skipped_and_the_rest_served(broker_factory):
    b = broker_factory()
    admin = admin_api(b)
    hour = 3_600_000
    now = int(time.time()) * 1000
    base = (now // hour - 6) * hour  # three whole old windows: one block each
    c = r.RawClient(b.port, version=5)
    c.connect(unique("c"))
    devs = ["blk-a", "blk-b"]
    for w in range(3):
        for dev in devs:
            body = json.dumps([{"ts": base + w * hour + k * 1000, "n": w * 100 + k}
                               for k in range(50)])
            assert c.publish("devices/%s/telemetry" % dev, body.encode(), qos=1).rc < 0x80
    assert telemetry(c, "blk-now", 0, now).rc < 0x80  # moves time on: old windows cut
    c.close()
    assert wait_until(lambda: len(blocks_of(b)) >= 3, 10), blocks_of(b)
    b.stop()
    blks = blocks_of(b)
    # block 0: a byte of the footer (checked when the daemon opens it);
    # block 1: a byte in the middle of its first data section (checked on read)
    flip(blks[0], blks[0].stat().st_size - 30)
    flip(blks[1], 40)
    b.start()
    log = b.log_text()
    assert "set aside as .bad" in log and blks[0].name in log
    assert (blks[0].parent / (blks[0].name + ".bad")).exists()
    got = {dev: set(stored_values(admin, dev)) for dev in devs}
    # window 2 is intact for both devices; window 0 is gone (set aside)
    for dev in devs:
        assert set(range(200, 250)) <= got[dev], dev
        assert not (set(range(0, 50)) & got[dev]), dev
    # the damaged section of window 1 lost its points, the daemon said so
    assert "corrupt section skipped" in b.log_text()
    # (the first section is blk-a's; blk-b's section of the window serves)
    assert set(range(100, 150)) <= got["blk-b"]
    assert not (set(range(100, 150)) & got["blk-a"])
    expect(admin.get("/devices"), 200)


def test_damaged_state_log_record_is_skipped(broker_factory):
    b = broker_factory()
    p = PahoClient(b)
    for i in range(20):
        p.publish("st/%02d" % i, b"value-%02d" % i, qos=1, retain=True)
    p.disconnect()
    b.stop()
    seg = sorted((b.data_dir / "mqtt").glob("state.*.log"))[-1]
    data = seg.read_bytes()
    pos = data.index(b"value-10")
    flip(seg, pos)
    b.start()
    assert "skipped" in b.log_text() and "corrupt" in b.log_text()
    s = PahoClient(b)
    s.subscribe("st/#", qos=1)
    got = {m.topic: m.payload for m in s.drain(1.5)} if hasattr(s, "drain") else {}
    s.disconnect()
    assert "st/10" not in got
    assert {t for t in got} >= {"st/%02d" % i for i in range(20) if i != 10}


def sqlite_pages_with(path, needle, page_size=4096):
    """The pages of an SQLite file holding needle (the table's and the
    primary-key index's)."""
    data = path.read_bytes()
    pages, pos = set(), data.find(needle)
    while pos >= 0:
        pages.add(pos // page_size)
        pos = data.find(needle, pos + 1)
    return sorted(pages), page_size


def test_damaged_registry_page_does_not_crash(broker_factory):
    b = broker_factory()
    admin = admin_api(b)
    ids = ["regdev-%03d" % i for i in range(200)]
    for i in ids:
        new_device(admin, i)
    b.stop()  # the last connection's close checkpoints the SQLite WAL
    db = b.data_dir / "registry.db"
    pages, ps = sqlite_pages_with(db, b"regdev-150")
    assert pages and 0 not in pages
    with open(db, "r+b") as f:  # scribble over the pages' b-tree headers
        for page in pages:
            f.seek(page * ps)
            f.write(b"\xee" * 64)
    # A registry whose pages SQLite reports damaged at start: the daemon
    # does not crash and does not serve half a registry; it exits 1 with a
    # message naming the file and the restore command (docs/OPERATIONS.md).
    b.start(wait=False)
    assert b.proc.wait(10) == 1
    b.exit_codes.append(1)
    log = b.log_text()
    assert "registry.db is damaged" in log and "thinghz restore" in log, log[-2000:]
    # once the damaged file is replaced (here removed: a fresh registry), it serves
    db.unlink()
    for extra in ("registry.db-wal", "registry.db-shm"):
        (b.data_dir / extra).unlink(missing_ok=True)
    b.start()
    expect(Api(b).get("/health"), 200)


# ---------------------------------------------------------------- abusive clients

import abuse  # noqa: E402

PROBE_BOUND = 2.0  # s: generous; performance targets live in bench/faults


def probe_ok(probe, seconds):
    rtts = probe.sample(seconds)
    assert rtts and None not in rtts, "probe lost a round trip: %r" % rtts
    assert max(rtts) < PROBE_BOUND, "probe round trip %.2fs" % max(rtts)
    return rtts


def test_abusive_clients_leave_a_probe_working(broker_factory):
    abuse.raise_nofile(4096)  # the daemon inherits it: 1,000 stalled sockets
    # a small output bound keeps each back-pressure pause short: the probe
    # publishes into topics the "#" subscribers also read, so it is paused
    # with every other publisher while they catch up
    b = broker_factory(connect_timeout=1, log_level="info", sys_interval=1, max_outbuf=65536)
    probe = abuse.Probe(b.port)
    try:
        probe_ok(probe, 0.5)
        # 1,000 connections that send half a CONNECT and stall: the probe
        # works meanwhile, and the CONNECT timeout closes every one of them
        with abuse.HalfConnects(b.port, 1000) as half:
            probe_ok(probe, 1.0)
            assert wait_until(lambda: half.closed_count() == half.n, 10), \
                "%d of %d stalled connections still open" % (half.n - half.closed_count(), half.n)
        # random bytes on the MQTT and HTTP ports
        with abuse.RandomBytes(b.port) as rm, abuse.RandomBytes(b.http_port) as rh:
            probe_ok(probe, 2.0)
        assert rm.sent > 5 and rh.sent > 5 and not rm.errors + rh.errors
        # a CONNECT flood
        with abuse.ConnectFlood(b.port) as fl:
            probe_ok(probe, 2.0)
        assert fl.count > 50 and not fl.errors
        # subscriptions to '#' on a busy broker
        with abuse.BusyWildcard(b.port, 5) as bw:
            probe_ok(probe, 2.0)
        assert bw.published > 1000 and not bw.errors
        # a publisher far faster than its (non-reading) subscribers
        with abuse.FastPublisher(b.port, 5) as fp:
            probe_ok(probe, 3.0)
        assert fp.published > 1000 and not fp.errors
        probe_ok(probe, 0.5)
    finally:
        probe.close()
    assert b.running
    expect(requests.get("http://127.0.0.1:%d/api/v1/health" % b.http_port, timeout=5), 200)
