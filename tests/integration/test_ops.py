"""test_ops.py - the operations side of the time-series engine against the
real daemon: the retention API and its effect, backup through the API and
the CLI then restore into a fresh data dir, `thinghz export` as CSV and line
protocol with exact content, and the errors of these routes."""

import os
import subprocess
import time

import pytest

from apiclient import admin_api, expect, write_lines
from conftest import IS_MOSQUITTO, THINGHZ_BIN

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="thinghz's own REST API and CLI")

S = 10**9
T0 = 1795687200  # 2026-11-26T10:00:00Z, in seconds


def write_s(api, lines):
    write_lines(api, lines, "s")


def q(api, sql):
    return expect(api.post("/query", {"sql": sql}), 200).json()["rows"]


def cli(b, *args, check=0, home=None):
    home = home or b.dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("THINGHZ_")}
    env.update(HOME=str(home), THINGHZ_URL="http://127.0.0.1:%d" % b.http_port,
               THINGHZ_PASSWORD=b.admin_password)
    r = subprocess.run([THINGHZ_BIN, *map(str, args)], capture_output=True, text=True, timeout=60,
                       env=env, stdin=subprocess.DEVNULL)
    if check is not None:
        assert r.returncode == check, "thinghz %s: exit %d\n%s\n%s" % (
            " ".join(map(str, args)), r.returncode, r.stdout, r.stderr)
    return r


def cli_login(b, home=None):
    cli(b, "login", "--email", b.admin_email, home=home)


# ---- retention ----

def test_retention_round_trip_and_effect(daemon, admin):
    r = expect(admin.get("/retention"), 200).json()
    assert r == {"days": 0, "seconds": 0, "default": True, "metrics": []}
    now = int(time.time())
    old = now - 30 * 86400
    write_s(admin, ["telemetry,device=r1 t=1 %d" % old, "telemetry,device=r1 t=2 %d" % (old + 60),
                    "telemetry,device=r1 t=3 %d" % (now - 60)])
    assert len(q(admin, "SELECT time, t FROM telemetry WHERE device = 'r1'")) == 3
    r = expect(admin.put("/retention", body={"days": 1}), 200).json()
    assert r == {"days": 1, "seconds": 86400, "default": False, "metrics": []}
    r = expect(admin.put("/retention", body={"metric": "hum", "days": 7}), 200).json()
    assert r["metrics"] == [{"metric": "hum", "days": 7, "seconds": 7 * 86400}]
    # The engine's background thread cuts the old window into a block and
    # drops it (retention runs every 10 s); the new point stays.
    deadline = time.time() + 30
    while time.time() < deadline:
        rows = q(admin, "SELECT t FROM telemetry WHERE device = 'r1' ORDER BY time")
        if rows == [[3]]:
            break
        time.sleep(0.5)
    assert rows == [[3]]
    # persisted across a restart
    daemon.restart()
    admin = admin_api(daemon)
    r = expect(admin.get("/retention"), 200).json()
    assert r == {"days": 1, "seconds": 86400, "default": False,
                 "metrics": [{"metric": "hum", "days": 7, "seconds": 7 * 86400}]}
    assert q(admin, "SELECT t FROM telemetry WHERE device = 'r1' ORDER BY time") == [[3]]
    # back to forever
    r = expect(admin.put("/retention", body={"days": 0}), 200).json()
    assert r["days"] == 0 and r["default"] is False


def test_retention_default_from_the_setting(broker_factory):
    b = broker_factory(retention_days=30)
    a = admin_api(b)
    assert expect(a.get("/retention"), 200).json() == {
        "days": 30, "seconds": 30 * 86400, "default": True, "metrics": []}


def test_retention_errors_and_roles(daemon, admin):
    for body in ({}, {"days": -1}, {"days": 1.5}, {"days": "1"}, {"days": 40000},
                 {"days": 1, "metric": ""}, {"days": 1, "metric": "a b"}, {"days": 1, "metric": 3}):
        expect(admin.put("/retention", body=body), 400, "invalid_request")
    viewer = admin.login(*new_user(admin, "viewer"))
    expect(viewer.get("/retention"), 403, "forbidden")
    expect(viewer.put("/retention", body={"days": 1}), 403, "forbidden")


def new_user(admin, role):
    email = "%s-%d@example.com" % (role, time.monotonic_ns())
    expect(admin.post("/users", {"email": email, "password": "a-long-password", "role": role}), 201)
    return email, "a-long-password"


# ---- backup and restore ----

def test_backup_errors(daemon, admin, tmp_path):
    expect(admin.post("/admin/backup", {"dir": "relative/dir"}), 400, "invalid_request")
    expect(admin.post("/admin/backup", {}), 400, "invalid_request")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    r = expect(admin.post("/admin/backup", {"dir": str(full)}), 400, "invalid_request")
    assert "not empty" in r.json()["error"]["message"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    expect(admin.post("/admin/backup", {"dir": str(afile)}), 400, "invalid_request")
    viewer = admin.login(*new_user(admin, "viewer"))
    expect(viewer.post("/admin/backup", {"dir": str(tmp_path / "v")}), 403, "forbidden")
    # an admin of another tenant is not a superuser
    t = expect(admin.post("/tenants", {"name": "other", "admin_email": "o@example.com",
                                       "admin_password": "other-password-1"}), 201).json()
    assert t
    other = admin.login("o@example.com", "other-password-1")
    expect(other.post("/admin/backup", {"dir": str(tmp_path / "o")}), 403, "forbidden")
    assert not (tmp_path / "v").exists() and not (tmp_path / "o").exists()


def seed(admin):
    expect(admin.post("/devices", {"id": "bk-1", "tags": {"site": "x"}}), 201)
    write_s(admin, ["telemetry,device=bk-1 temp=21.5 %d" % T0,
                    "telemetry,device=bk-1 temp=22.5 %d" % (T0 + 60)])


def check_restored(b):
    a = admin_api(b)
    assert expect(a.get("/devices/bk-1"), 200).json()["tags"] == {"site": "x"}
    assert q(a, "SELECT temp FROM telemetry WHERE device = 'bk-1' ORDER BY time") == [[21.5],
                                                                                      [22.5]]


def restore_into_fresh(broker_factory, src, home):
    b2 = broker_factory()
    b2.stop()
    r = cli(b2, "restore", src, "--data-dir", b2.data_dir, home=home)
    assert "time-series" in r.stdout
    b2.start()
    return b2


def test_backup_via_api_then_restore(broker_factory, daemon, admin, tmp_path):
    seed(admin)
    dest = tmp_path / "bk-api"
    r = expect(admin.post("/admin/backup", {"dir": str(dest)}), 200).json()
    assert r["dir"] == str(dest) and r["registry"] is True
    assert r["tsdb"]["series"] == 1 and r["tsdb"]["bytes"] > 0
    assert (dest / "registry.db").is_file() and (dest / "tsdb" / "index").is_file()
    # written after the backup: not in it
    write_s(admin, ["telemetry,device=bk-1 temp=99 %d" % (T0 + 120)])
    # an empty existing dir is fine too
    empty = tmp_path / "bk-empty"
    empty.mkdir()
    expect(admin.post("/admin/backup", {"dir": str(empty)}), 200)
    b2 = restore_into_fresh(broker_factory, dest, tmp_path / "h2")
    check_restored(b2)


def test_backup_via_cli_online_and_offline_then_restore(broker_factory, daemon, admin, tmp_path):
    seed(admin)
    cli_login(daemon)
    online = tmp_path / "bk-cli"
    r = cli(daemon, "backup", online)
    assert "backed up" in r.stdout and (online / "tsdb").is_dir()
    daemon.stop()
    offline = tmp_path / "bk-off"
    r = cli(daemon, "backup", offline, "--data-dir", daemon.data_dir)
    assert "daemon not running" in r.stdout
    assert (offline / "registry.db").is_file() and (offline / "tsdb" / "index").is_file()
    for src in (online, offline):
        b2 = restore_into_fresh(broker_factory, src, tmp_path / ("h-" + src.name))
        check_restored(b2)
        # restore is refused while the daemon holds the data dir; its data stays
        r = cli(b2, "restore", src, "--data-dir", b2.data_dir, check=1,
                home=tmp_path / ("h-" + src.name))
        assert "in use" in r.stderr
        assert not (b2.data_dir / "tsdb.restore").exists()
        check_restored(b2)
        b2.stop()


# ---- export ----

EXPORT_LINES = [
    'telemetry,device=ex-1 temp=21.5,count=3i %d' % T0,
    'telemetry,device=ex-1 temp=22 %d' % (T0 + 60),
    'telemetry,device=ex-2 on=true,note="a, \\"b\\"" %d' % (T0 + 30),
    'telemetry,device=ex-2 temp=-1.25 %d' % (T0 + 86400 * 3),
]


def test_export_csv_and_lp(daemon, admin, tmp_path):
    write_s(admin, EXPORT_LINES)
    cli_login(daemon)
    out = tmp_path / "all.csv"
    r = cli(daemon, "export", "--output", out)
    assert "exported 6 points of 2/2 devices" in r.stderr
    assert out.read_text() == (
        "time,device,metric,value\n"
        "2026-11-26T10:00:00Z,ex-1,count,3\n"
        "2026-11-26T10:00:00Z,ex-1,temp,21.5\n"
        "2026-11-26T10:01:00Z,ex-1,temp,22\n"
        '2026-11-26T10:00:30Z,ex-2,note,"a, ""b"""\n'
        "2026-11-26T10:00:30Z,ex-2,on,true\n"
        "2026-11-29T10:00:00Z,ex-2,temp,-1.25\n")
    r = cli(daemon, "export", "--format", "lp", "--device", "ex-2", "--device", "ex-1")
    assert r.stdout == (
        "telemetry,device=ex-1 count=3i %d\n" % (T0 * S) +
        "telemetry,device=ex-1 temp=21.5 %d\n" % (T0 * S) +
        "telemetry,device=ex-1 temp=22 %d\n" % ((T0 + 60) * S) +
        'telemetry,device=ex-2 note="a, \\"b\\"" %d\n' % ((T0 + 30) * S) +
        "telemetry,device=ex-2 on=true %d\n" % ((T0 + 30) * S) +
        "telemetry,device=ex-2 temp=-1.25 %d\n" % ((T0 + 86400 * 3) * S))
    # filters: metric and time range
    r = cli(daemon, "export", "--metric", "temp", "--from", "2026-11-26T10:00:30Z",
            "--to", "2026-11-27")
    assert r.stdout == "time,device,metric,value\n2026-11-26T10:01:00Z,ex-1,temp,22\n"
    assert "exported 1 points of 1/1 devices" in r.stderr


def test_export_errors(daemon, admin):
    cli_login(daemon)
    r = cli(daemon, "export", "--format", "xml", check=2)
    assert "usage" in r.stderr
    cli(daemon, "export", "--from", "yesterday", check=2)
    cli(daemon, "export", "--from", "2026-11-27", "--to", "2026-11-26", check=2)
    r = cli(daemon, "export", check=1, home=daemon.dir / "home-nobody")  # no token
    assert r.stderr.strip()
