"""The web app in a real browser: tests/browser/ui.mjs (playwright-core driving
Debian's chromium) logs in, sees the fleet, opens a device, publishes a value
with mosquitto_pub and sees the chart and latest-values table update within a
second, builds a dashboard with two panels and finds it saved after a reload,
measures the first load of the dashboard page (< 300 KB on the wire), and
checks 375 px width, keyboard order and that a viewer gets no edit buttons.
Screenshots go to the test's tmp dir (the path is printed); each step reports
on its own line."""

import subprocess
import time

from apiclient import admin_api, expect, new_device, write_lines
from nodebrowser import MARKS, ensure_node_modules, node_args

pytestmark = MARKS


def test_browser_scenario(broker_factory, tmp_path):
    ensure_node_modules("playwright-core")
    b = broker_factory()
    admin = admin_api(b)
    dev = new_device(admin, "pump-1", name="Pump 1", tags={"site": "north"})
    new_device(admin, "pump-2", name="Pump 2", tags={"site": "south"})
    # an hour of history, one point a minute, so the chart has a line
    now = int(time.time())
    write_lines(admin, ["telemetry,device=pump-1 temp=%d %d" % (20 + i % 5, (now - 60 * i) * 10**9)
                        for i in range(60, 0, -1)])
    expect(admin.post("/users", {"email": "viewer@example.com", "password": "viewer-pass-1",
                                 "role": "viewer"}), 201)
    out = tmp_path / "screenshots"
    out.mkdir()
    cfg = {"base": "http://127.0.0.1:%d" % b.http_port, "email": b.admin_email,
           "password": b.admin_password, "device": "pump-1", "secret": dev["secret"],
           "mqtt_port": b.port, "viewer_email": "viewer@example.com",
           "viewer_password": "viewer-pass-1", "out": str(out)}
    args, kw = node_args("ui.mjs", cfg)
    r = subprocess.run(args, capture_output=True, text=True, timeout=240, **kw)
    print(r.stdout)
    print("screenshots in", out)
    steps = dict(line.split(" ", 2)[1:3] if line.count(" ") >= 2 else (line, "")
                 for line in r.stdout.splitlines() if line.startswith("STEP "))
    first = [line for line in r.stdout.splitlines() if line.startswith("FIRST_LOAD_BYTES ")]
    assert first, r.stdout + r.stderr
    assert int(first[0].split()[1]) < 300 * 1024, first
    assert len(list(out.glob("*.png"))) >= 4
    failed = [line for line in r.stdout.splitlines() if line.startswith("STEP ") and " FAIL " in line]
    assert r.returncode == 0 and not failed, "\n".join(failed) + "\n" + r.stderr[-3000:]
    assert "login" in steps and "fleet_lists_devices" in steps
