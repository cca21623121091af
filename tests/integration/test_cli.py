"""test_cli.py - the `thinghz` administration commands (src/cli/) run as
subprocesses against a real daemon: login and the stored token, tables and
--json, device secrets that work for MQTT CONNECT, errors and exit codes,
offline mode on a stopped daemon's data dir, backup and restore.

Every command runs with HOME in the test's tmp dir, THINGHZ_URL pointing at
the daemon's HTTP port and THINGHZ_PASSWORD = the test admin's password."""

import json
import os
import stat
import subprocess

import pytest

from clients import V311, V5, PahoClient, unique
from conftest import IS_MOSQUITTO, THINGHZ_BIN

pytestmark = pytest.mark.skipif(IS_MOSQUITTO, reason="the CLI talks to thinghz's REST API")


class Cli:
    """Runs `thinghz ARGS` for one daemon; returns CompletedProcess."""

    def __init__(self, b, home):
        self.b = b
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("THINGHZ_")}
        self.env.update(HOME=str(home), THINGHZ_URL="http://127.0.0.1:%d" % b.http_port,
                        THINGHZ_PASSWORD=b.admin_password)

    def run(self, *args, env=None, check=None, timeout=30):
        e = dict(self.env, **(env or {}))
        r = subprocess.run([THINGHZ_BIN, *map(str, args)], capture_output=True, text=True,
                           timeout=timeout, env=e, stdin=subprocess.DEVNULL)
        if check is not None:
            assert r.returncode == check, "thinghz %s: exit %d, want %d\nstdout:%s\nstderr:%s" % (
                " ".join(map(str, args)), r.returncode, check, r.stdout, r.stderr)
        return r

    def ok(self, *args, **kw):
        return self.run(*args, check=0, **kw)

    def json(self, *args):
        return json.loads(self.ok(*args, "--json").stdout)

    def login(self):
        self.ok("login", "--email", self.b.admin_email)
        return self


def secret_of(out):
    lines = [l for l in out.splitlines() if l.startswith("secret: ")]
    assert len(lines) == 1, out
    return lines[0].split(" ", 1)[1].strip()


def table(out):
    """The rows of an aligned table as lists of cells (split on 2+ spaces)."""
    import re
    lines = [l for l in out.splitlines() if l.strip()]
    return [re.split(r"\s{2,}", l.strip()) for l in lines]


def connack_rc(b, user, password, version=V311):
    c = PahoClient(b, version=version, username=user, password=password, expect_rc=None)
    rc = c.connack["rc"]
    c.close()
    return rc


@pytest.fixture
def daemon(broker_factory):
    return broker_factory(allow_anonymous=False)


@pytest.fixture
def cli(daemon, tmp_path):
    return Cli(daemon, tmp_path / "home").login()


def test_login_stores_a_private_token_and_whoami(daemon, tmp_path):
    c = Cli(daemon, tmp_path / "home")
    r = c.ok("login", "--email", daemon.admin_email)
    assert "logged in as %s" % daemon.admin_email in r.stdout
    tok = tmp_path / "home" / ".config" / "thinghz" / "token"
    assert stat.S_IMODE(tok.stat().st_mode) == 0o600
    assert tok.read_text().strip().startswith("thz_") or len(tok.read_text().strip()) > 16
    assert daemon.admin_email in c.ok("whoami").stdout
    who = c.json("whoami")
    assert who["user"]["email"] == daemon.admin_email
    # THINGHZ_TOKEN wins over the file
    bad = c.run("whoami", env={"THINGHZ_TOKEN": "thz_not-a-token"})
    assert bad.returncode == 1 and bad.stderr.strip()
    # logout revokes the token and removes the file
    c.ok("logout")
    assert not tok.exists()
    assert c.run("whoami").returncode == 1


def test_login_errors(daemon, tmp_path):
    c = Cli(daemon, tmp_path / "home")
    r = c.run("login", "--email", daemon.admin_email, env={"THINGHZ_PASSWORD": "wrong-password"})
    assert r.returncode == 1
    assert "wrong email or password" in r.stderr
    # no password from anywhere and no terminal: a usage error, not a hang
    env = dict(c.env)
    del env["THINGHZ_PASSWORD"]
    r = subprocess.run([THINGHZ_BIN, "login", "--email", "x@y"], capture_output=True, text=True,
                       env=env, stdin=subprocess.DEVNULL, timeout=10, start_new_session=True)
    assert r.returncode == 2, r.stderr
    # not logged in at all
    r = c.run("device", "list")
    assert r.returncode == 1 and "login" in r.stderr
    # nobody listening
    r = c.run("whoami", "--url", "http://127.0.0.1:1")
    assert r.returncode == 1 and "cannot reach" in r.stderr


def test_device_add_list_show_and_json(cli):
    r = cli.ok("device", "add", "sensor-1", "--name", "Sensor one", "--type", "thermo",
               "--tag", "site=lab", "--tag", "floor=2")
    assert "shown only now" in r.stdout
    secret_of(r.stdout)
    cli.ok("device", "add", "sensor-2", "--type", "thermo")
    rows = table(cli.ok("device", "list").stdout)
    assert rows[0] == ["ID", "NAME", "TYPE", "ONLINE", "LAST SEEN"]
    assert rows[1][:4] == ["sensor-1", "Sensor one", "thermo", "no"]
    assert rows[2][0] == "sensor-2"
    # --json prints the API's JSON unchanged
    j = cli.json("device", "list")
    assert [d["id"] for d in j["items"]] == ["sensor-1", "sensor-2"]
    assert j["next_cursor"] is None
    assert j["items"][0]["tags"] == {"site": "lab", "floor": "2"}
    assert "secret" not in j["items"][0]
    # filters
    assert [r[0] for r in table(cli.ok("device", "list", "--tag", "site=lab").stdout)[1:]] == [
        "sensor-1"]
    assert len(table(cli.ok("device", "list", "--online").stdout)) == 1  # header only
    # show
    out = cli.ok("device", "show", "sensor-1").stdout
    assert "name:" in out and "Sensor one" in out and "site=lab" in out
    assert cli.json("device", "show", "sensor-1")["type"] == "thermo"
    # a table follows every page; --json prints one page
    for i in range(5):
        cli.ok("device", "add", "page-%d" % i)
    assert len(table(cli.ok("device", "list", "--tag", "x", "--limit", "2").stdout)) == 1
    page = cli.json("device", "list", "--limit", "2")
    assert len(page["items"]) == 2 and page["next_cursor"]
    nxt = cli.json("device", "list", "--limit", "2", "--cursor", page["next_cursor"])
    assert nxt["items"][0]["id"] > page["items"][1]["id"]
    assert len(table(cli.ok("device", "list").stdout)) == 1 + 7
    # disable / enable / rm
    assert "disabled" in cli.ok("device", "disable", "sensor-2").stdout
    assert cli.json("device", "show", "sensor-2")["enabled"] is False
    cli.ok("device", "enable", "sensor-2")
    assert cli.json("device", "show", "sensor-2")["enabled"] is True
    cli.ok("device", "rm", "sensor-2")
    r = cli.run("device", "show", "sensor-2")
    assert r.returncode == 1 and r.stderr.strip()


def test_device_secret_works_for_mqtt_and_rotate_replaces_it(daemon, cli):
    dev = unique("dev")
    secret = secret_of(cli.ok("device", "add", dev).stdout)
    assert connack_rc(daemon, dev, secret) == 0
    assert connack_rc(daemon, dev, secret, version=V5) == 0
    assert connack_rc(daemon, dev, secret[:-1] + ("x" if secret[-1] != "x" else "y")) != 0
    r = cli.ok("device", "rotate", dev)
    assert "shown only now" in r.stdout
    new = secret_of(r.stdout)
    assert new != secret
    assert connack_rc(daemon, dev, secret) != 0
    assert connack_rc(daemon, dev, new) == 0
    # --json add returns the API's object, secret included
    j = cli.json("device", "add", dev + "-j")
    assert connack_rc(daemon, j["id"], j["secret"]) == 0


def test_errors_print_the_api_message_and_exit_nonzero(cli):
    cli.ok("device", "add", "dup")
    r = cli.run("device", "add", "dup")
    assert r.returncode == 1
    assert "exists" in r.stderr and "409" in r.stderr
    r = cli.run("device", "add", "bad id with spaces")
    assert r.returncode == 1 and r.stderr.strip()
    r = cli.run("device", "show", "nope")
    assert r.returncode == 1 and "404" in r.stderr
    r = cli.run("user", "add", "not-an-email", "--password", "short")
    assert r.returncode == 1 and r.stderr.strip()
    # usage errors exit 2
    for args in (["device"], ["device", "frobnicate"], ["device", "add"], ["device", "show"],
                 ["token", "revoke", "abc"], ["user", "set-role", "x"], ["restore", "d"],
                 ["device", "list", "--limit", "0"], ["login", "--bogus"]):
        r = cli.run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.strip()


def test_users_tokens_groups(daemon, cli):
    r = cli.ok("user", "add", "ops@example.com", "--role", "operator", "--password",
               "ops-password-1")
    assert "ops@example.com" in r.stdout
    rows = table(cli.ok("user", "list").stdout)
    assert rows[0][:3] == ["ID", "EMAIL", "ROLE"]
    assert ["ops@example.com", "operator"] in [r[1:3] for r in rows[1:]]
    cli.ok("user", "set-role", "ops@example.com", "viewer")
    users = {u["email"]: u for u in cli.json("user", "list")["items"]}
    assert users["ops@example.com"]["role"] == "viewer"
    # the new user can log in with the CLI (another HOME)
    other = Cli(daemon, cli.home.parent / "home2")
    other.ok("login", "--email", "ops@example.com", env={"THINGHZ_PASSWORD": "ops-password-1"})
    r = other.run("device", "add", "viewer-cannot")
    assert r.returncode == 1 and "403" in r.stderr
    cli.ok("user", "rm", "ops@example.com")
    assert "ops@example.com" not in cli.ok("user", "list").stdout

    # tokens: create, use through THINGHZ_TOKEN, list, revoke
    r = cli.ok("token", "create", "ci", "--expires", "3600")
    tok = [l.split(" ", 1)[1] for l in r.stdout.splitlines() if l.startswith("token: ")][0]
    assert "shown only now" in r.stdout
    assert daemon.admin_email in cli.ok("whoami", env={"THINGHZ_TOKEN": tok}).stdout
    toks = cli.json("token", "list")["items"]
    tid = [t["id"] for t in toks if t["name"] == "ci"][0]
    assert "ci" in cli.ok("token", "list").stdout
    cli.ok("token", "revoke", tid)
    assert cli.run("whoami", env={"THINGHZ_TOKEN": tok}).returncode == 1

    # groups: static members and a query
    cli.ok("device", "add", "g-dev-1", "--tag", "site=paris")
    cli.ok("device", "add", "g-dev-2")
    cli.ok("group", "add", "paris", "--name", "Paris", "--query", "site=paris")
    cli.ok("group", "add", "static")
    cli.ok("group", "add-device", "static", "g-dev-2")
    rows = table(cli.ok("group", "list").stdout)
    assert rows[0] == ["ID", "NAME", "QUERY", "DEVICES"]
    assert ["static", "g-dev-2"] in [[r[0], r[-1]] for r in rows[1:]]
    assert [d["id"] for d in cli.json("device", "list", "--group", "paris")["items"]] == [
        "g-dev-1"]
    assert [d["id"] for d in cli.json("device", "list", "--group", "static")["items"]] == [
        "g-dev-2"]
    cli.ok("group", "rm-device", "static", "g-dev-2")
    assert cli.json("group", "show", "static")["devices"] == []
    cli.ok("group", "rm", "static")
    assert cli.run("group", "show", "static").returncode == 1
    assert cli.json("fleet")["devices"] == 2


def test_offline_mode_on_a_stopped_daemon(daemon, cli):
    cli.ok("device", "add", "online-made")
    daemon.stop()
    dd = str(daemon.data_dir)
    r = cli.ok("device", "add", "offline-made", "--name", "Off", "--tag", "k=v", "--data-dir", dd)
    assert "offline" in r.stdout
    secret = secret_of(r.stdout)
    rows = table(cli.ok("device", "list", "--data-dir", dd).stdout)
    assert [r[0] for r in rows[1:]] == ["offline-made", "online-made"]
    assert [d["id"] for d in cli.json("device", "list", "--data-dir", dd)["items"]] == [
        "offline-made", "online-made"]
    cli.ok("user", "add", "off@example.com", "--password", "offline-pass-1", "--role", "admin",
           "--data-dir", dd)
    assert "off@example.com" in cli.ok("user", "list", "--data-dir", dd).stdout
    cli.ok("device", "add", "gone", "--data-dir", dd)
    cli.ok("device", "rm", "gone", "--data-dir", dd)
    # without --data-dir and no daemon: an error, not offline mode
    r = cli.run("device", "list")
    assert r.returncode == 1 and "cannot reach" in r.stderr
    # the daemon started again knows what was done offline
    daemon.start()
    assert [d["id"] for d in cli.json("device", "list")["items"]] == ["offline-made",
                                                                     "online-made"]
    assert connack_rc(daemon, "offline-made", secret) == 0
    other = Cli(daemon, cli.home.parent / "home-off")
    other.ok("login", "--email", "off@example.com", env={"THINGHZ_PASSWORD": "offline-pass-1"})


def test_backup_then_restore_into_a_fresh_data_dir(broker_factory, daemon, cli, tmp_path):
    secret = secret_of(cli.ok("device", "add", "kept", "--tag", "a=b").stdout)
    live = tmp_path / "backup-live"
    # the daemon runs and has the backup route: it writes the backup itself
    r = cli.ok("backup", live)
    assert "backed up" in r.stdout
    assert (live / "registry.db").stat().st_size > 0 and (live / "tsdb").is_dir()
    cli.ok("device", "add", "after-backup")
    daemon.stop()
    cold = tmp_path / "backup-cold"
    cli.ok("backup", cold, "--data-dir", daemon.data_dir)

    # a second daemon, stopped, gets the live backup restored into its data dir
    b2 = broker_factory(allow_anonymous=False)
    b2.stop()
    c2 = Cli(b2, tmp_path / "home-b2")
    r = c2.ok("restore", live, "--data-dir", b2.data_dir)
    assert "restored" in r.stdout
    b2.start()
    c2.login()
    ids = [d["id"] for d in c2.json("device", "list")["items"]]
    assert ids == ["kept"]
    assert c2.json("device", "show", "kept")["tags"] == {"a": "b"}
    assert connack_rc(b2, "kept", secret) == 0
    # restore refuses while a daemon holds the data dir
    r = c2.run("restore", cold, "--data-dir", b2.data_dir)
    assert r.returncode == 1 and r.stderr.strip()
    b2.stop()
    c2.ok("restore", cold, "--data-dir", b2.data_dir)
    b2.start()
    # the token c2 holds was made after the live backup: the cold one does not know it
    assert c2.run("device", "list").returncode == 1
    c2.login()
    assert [d["id"] for d in c2.json("device", "list")["items"]] == ["after-backup", "kept"]
