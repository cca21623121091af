"""conftest.py - starts the daemon under test for the MQTT integration tests.

`broker_factory(**opts)` starts `thinghz serve` on a free loopback port with a
fresh data dir, waits until the port accepts, and on teardown sends SIGTERM
and asserts a clean exit (code 0 within 5 s). Its log (stderr) is attached to
the report of a failing test. A Broker can be stopped, killed with SIGKILL and
restarted on the same port and data dir.

THINGHZ_BIN selects the binary (default: build/thinghz at the repo root).
THINGHZ_TEST_PEER=mosquitto runs the suite against Debian's mosquitto instead;
that exists only to check the tests themselves while the broker is written.
"""

import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
THINGHZ_BIN = os.environ.get("THINGHZ_BIN") or str(REPO / "build" / "thinghz")
PEER = os.environ.get("THINGHZ_TEST_PEER", "")
IS_MOSQUITTO = PEER == "mosquitto"
MOSQUITTO_BIN = os.environ.get("MOSQUITTO_BIN", "/usr/sbin/mosquitto")

START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
LOG_TAIL_LINES = 300


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_open(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def skip_on_mosquitto(reason):
    """For tests of thinghz-only behaviour, or of a spec point mosquitto 2.0.11
    is known not to follow. The skip happens only under THINGHZ_TEST_PEER."""
    if IS_MOSQUITTO:
        pytest.skip("mosquitto peer: " + reason)


def run_cli(*args, timeout=10, **kw):
    """Runs the thinghz binary with args (not under the daemon fixture)."""
    return subprocess.run([THINGHZ_BIN, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def make_password_file(path, users):
    """Writes users ({name: password}) into a password file with
    `thinghz passwd` (mosquitto_passwd under the mosquitto peer)."""
    path = Path(path)
    for name, pw in users.items():
        if IS_MOSQUITTO:
            cmd = ["mosquitto_passwd", "-b", str(path), name, pw]
            if not path.exists():
                cmd.insert(1, "-c")
        else:
            cmd = [THINGHZ_BIN, "passwd", str(path), name, pw]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, "%s failed: %s%s" % (cmd, r.stdout, r.stderr)
    return path


_HELP_CACHE = []


def _thinghz_has_flag(flag):
    if not _HELP_CACHE:
        try:
            r = subprocess.run([THINGHZ_BIN, "--help"], capture_output=True, text=True,
                               timeout=10)
            _HELP_CACHE.append(r.stdout + r.stderr)
        except OSError:
            _HELP_CACHE.append("")
    return flag in _HELP_CACHE[0]


# Option name -> mosquitto.conf directive (None: no equivalent; ignored).
_MOSQ_GLOBAL = {
    "sys_interval": "sys_interval",
    "max_queued_messages": "max_queued_messages",
    "max_packet_size": "max_packet_size",
    "max_keepalive": "max_keepalive",
    "max_inflight": "max_inflight_messages",
    "password_file": "password_file",
    "acl_file": "acl_file",
}
_MOSQ_LISTENER = {
    "topic_alias_maximum": "max_topic_alias",
    "max_connections": "max_connections",
}


class Broker:
    """One daemon under test. opts are the serve flags with '_' for '-'
    (allow_anonymous=True is the default; args=[...] appends raw flags)."""

    def __init__(self, workdir, opts):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.dir / "broker.log"
        self.opts = {"allow_anonymous": True, "log_level": "debug"}
        self.opts.update(opts)
        self.port = free_port()
        # The HTTP port (test_http.py); fixed for the broker's life so that
        # it survives restarts. Unused when http_listen is given in opts.
        self.http_port = free_port()
        while self.http_port == self.port:  # two free_port calls may agree
            self.http_port = free_port()
        self.host = "127.0.0.1"
        # The first start of an empty data dir creates the admin from these.
        self.admin_email = "admin@example.com"
        self.admin_password = "admin-test-password"
        self.env = dict(os.environ, THINGHZ_ADMIN_EMAIL=self.admin_email,
                        THINGHZ_ADMIN_PASSWORD=self.admin_password)
        self.proc = None
        self.exit_codes = []

    # -- command line
    def command(self):
        if IS_MOSQUITTO:
            return [MOSQUITTO_BIN, "-c", str(self._mosquitto_conf())]
        cmd = [THINGHZ_BIN, "serve", "--data-dir", str(self.data_dir),
               "--mqtt-listen", "%s:%d" % (self.host, self.port)]
        for k, v in self.opts.items():
            if k == "args":
                continue
            flag = "--" + k.replace("_", "-")
            if v is True:
                cmd.append(flag)
            elif v is False or v is None:
                continue
            else:
                cmd += [flag, str(v)]
        if "http_listen" not in self.opts and _thinghz_has_flag("--http-listen"):
            # Keep a later HTTP listener off the fixed default port so that
            # test brokers never collide with each other or a running daemon.
            cmd += ["--http-listen", "127.0.0.1:%d" % self.http_port]
        cmd += [str(a) for a in self.opts.get("args", [])]
        return cmd

    def _mosquitto_conf(self):
        conf = self.dir / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            "allow_anonymous %s" % ("true" if self.opts.get("allow_anonymous") else "false"),
            "persistence true",
            "persistence_location %s/" % self.data_dir,
            "log_dest stderr",
            "log_type all",
            "autosave_interval 1800",
            "user %s" % pwd.getpwuid(os.getuid()).pw_name,
        ]
        for k, d in _MOSQ_GLOBAL.items():
            if self.opts.get(k) is not None:
                lines.append("%s %s" % (d, self.opts[k]))
        # mosquitto advertises max_inflight_messages as its Receive Maximum.
        if self.opts.get("receive_maximum") is not None and self.opts.get("max_inflight") is None:
            lines.append("max_inflight_messages %s" % self.opts["receive_maximum"])
        lines.append("listener %d %s" % (self.port, self.host))
        for k, d in _MOSQ_LISTENER.items():
            if self.opts.get(k) is not None:
                lines.append("%s %s" % (d, self.opts[k]))
        conf.write_text("\n".join(lines) + "\n")
        return conf

    # -- lifecycle
    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if not IS_MOSQUITTO and not os.access(THINGHZ_BIN, os.X_OK):
            pytest.fail("%s does not exist; build it with `make` (or set THINGHZ_BIN)"
                        % THINGHZ_BIN)
        with open(self.log_path, "ab") as log:
            log.write(("==== start: %s\n" % " ".join(self.command())).encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, env=self.env)
        if wait:
            deadline = time.monotonic() + START_TIMEOUT
            # The HTTP listener opens just after the MQTT one; a test that
            # connects to it at once (slower under ASan) must not race it.
            ports = [self.port]
            if (not IS_MOSQUITTO and "http_listen" not in self.opts
                    and _thinghz_has_flag("--http-listen")):
                ports.append(self.http_port)
            while not all(port_open(p) for p in ports):
                if self.proc.poll() is not None:
                    pytest.fail("broker exited with %d during start-up:\n%s"
                                % (self.proc.returncode, self.log_tail()))
                if time.monotonic() > deadline:
                    pytest.fail("broker did not accept on port %d within %.0fs:\n%s"
                                % (self.port, START_TIMEOUT, self.log_tail()))
                time.sleep(0.02)
        return self

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=STOP_TIMEOUT, check=True):
        """SIGTERM, wait up to timeout; returns the exit code. With check,
        asserts it exited 0 in time (SIGKILLs it otherwise)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.exit_codes.append("timeout")
                if check:
                    pytest.fail("broker did not exit within %.0fs of SIGTERM" % timeout)
                return None
        rc = self.proc.returncode
        self.exit_codes.append(rc)
        if check:
            assert rc == 0, "broker exited with %r after SIGTERM" % rc
        return rc

    def kill9(self, pause=0.5):
        """SIGKILL after a short pause (lets the state log be written)."""
        time.sleep(pause)
        self.proc.kill()
        self.proc.wait(5)
        self.exit_codes.append("killed")

    def restart(self, kill=False):
        if kill:
            self.kill9()
        else:
            self.stop()
        return self.start()

    def log_tail(self, n=LOG_TAIL_LINES):
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, b in enumerate(getattr(item, "_thz_brokers", [])):
            rep.sections.append(("broker %d log (%s)" % (i, b.log_path), b.log_tail()))


@pytest.fixture
def broker_factory(request, tmp_path):
    """Returns start(**opts) -> Broker (already accepting)."""
    brokers = []
    request.node._thz_brokers = brokers

    def start(**opts):
        b = Broker(tmp_path / ("broker%d" % len(brokers)), opts)
        brokers.append(b)
        return b.start()

    yield start
    errors = []
    for b in brokers:
        if b.running:
            rc = b.stop(check=False)
            if rc != 0:
                errors.append("broker on port %d: exit code %r after SIGTERM (want 0 within %ds)"
                              % (b.port, b.exit_codes[-1], STOP_TIMEOUT))
    if errors:
        pytest.fail("; ".join(errors))


@pytest.fixture
def broker(broker_factory):
    """A broker with default settings (anonymous allowed)."""
    return broker_factory()


@pytest.fixture
def daemon(broker_factory):
    """The REST API tests' daemon: default settings (anonymous allowed). A test
    file whose admin needs another daemon overrides this fixture."""
    return broker_factory()


@pytest.fixture
def closed(broker_factory):
    """A daemon without anonymous access, so only credentials get in."""
    return broker_factory(allow_anonymous=False)


@pytest.fixture
def admin(daemon):
    """An Api logged in as daemon's admin."""
    from apiclient import admin_api
    return admin_api(daemon)
