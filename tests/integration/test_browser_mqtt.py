"""MQTT.js (npm `mqtt`, its browser bundle) in headless chromium against MQTT
over WebSockets (docs/TLS.md): tests/browser/mqttjs.mjs opens a page on the
daemon's own origin, loads dist/mqtt.min.js into it and, as a device (user
name = device id, password = its secret):
- over ws://127.0.0.1:HTTP/mqtt subscribes to devices/<id>/commands and gets
  the exact payload mosquitto_pub (an operator API token) publishes there;
- publishes {"temp": N} to devices/<id>/telemetry, which an app's
  mosquitto_sub sees and the REST API then serves as the latest value;
- is refused another device's topic with SUBACK 0x80 (MQTT.js reports it as
  an error) and stays connected;
- over wss://127.0.0.1:HTTPS/mqtt (a page on the HTTPS origin, the dev CA
  ignored) gets mosquitto_pub's payload again."""

import json
import queue
import subprocess
import threading
import time

from apiclient import admin_api, api_token, expect, new_device
from clients import MosquittoSub, mosquitto_pub, unique, wait_until
from conftest import free_port, port_open
from nodebrowser import MARKS, ensure_node_modules, node_args

pytestmark = MARKS


def test_mqttjs_in_chromium(broker_factory):
    ensure_node_modules("playwright-core", "mqtt")
    https = free_port()
    b = broker_factory(allow_anonymous=False, https_listen="127.0.0.1:%d" % https)
    assert wait_until(lambda: port_open(https))
    admin = admin_api(b)
    dev, other = new_device(admin, unique("web")), new_device(admin, unique("other"))
    app = ["-u", "app", "-P", api_token(admin)["token"]]
    cmd_topic = "devices/%s/commands" % dev["id"]
    payloads = {"ws": "reboot ✓ " + unique("ws"), "wss": '{"cmd":"%s"}' % unique("wss")}
    temp = 17 + int(time.time()) % 10

    tele = MosquittoSub(b.port, "devices/%s/telemetry" % dev["id"], 1, qos=1,
                        extra=app + ["-i", unique("app")], timeout=60).start()
    cfg = {"http": b.http_port, "https": https, "device": dev["id"], "secret": dev["secret"],
           "other": other["id"], "payload_ws": payloads["ws"], "payload_wss": payloads["wss"],
           "temp": temp}
    args, kw = node_args("mqttjs.mjs", cfg)
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l.rstrip("\n")) for l in p.stdout] + [lines.put(None)],
                     daemon=True).start()
    out, published = [], []
    deadline = time.monotonic() + 120
    try:
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                break
            out.append(line)
            if line.startswith("READY "):
                name = line.split()[1]
                mosquitto_pub(b.port, cmd_topic, payloads[name], qos=1,
                              extra=app + ["-i", unique("pub")])
                published.append(name)
        rc = p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    err = p.stderr.read()
    text = "\n".join(out)
    print(text)
    assert published == ["ws", "wss"], text + err[-3000:]
    failed = [l for l in out if l.startswith("STEP ") and " FAIL " in l]
    assert rc == 0 and not failed and "ALL OK" in out, "\n".join(failed) + "\n" + err[-3000:]
    ok = {l.split()[1] for l in out if l.startswith("STEP ") and l.split()[2] == "ok"}
    assert {"ws_connect", "ws_subscribe", "ws_receive", "publish_telemetry", "denied_subscribe",
            "wss_connect", "wss_subscribe", "wss_receive"} <= ok, text

    # the browser's telemetry: seen by an app over MQTT and stored
    msgs = tele.finish()
    assert [(m[2], json.loads(m[3])) for m in msgs] == \
        [("devices/%s/telemetry" % dev["id"], {"temp": temp})], msgs
    latest = lambda: admin.get("/devices/%s/latest" % dev["id"]).json().get("metrics", {})
    assert wait_until(lambda: "temp" in latest()), latest()
    assert latest()["temp"]["value"] == temp
    expect(admin.get("/devices/%s/telemetry?metric=temp" % dev["id"]), 200)
