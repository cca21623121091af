// mqttjs.mjs - MQTT.js (npm `mqtt`, its browser bundle dist/mqtt.min.js) in
// headless chromium against the daemon's MQTT over WebSockets
// (tests/integration/test_browser_mqtt.py runs it; docs/TLS.md).
//
// Reads a JSON config from argv[2]:
//   {http, https, device, secret, other, payload_ws, payload_wss, temp}
// http/https: the daemon's ports; device/secret: the device the page connects
// as; other: another device of the tenant (its topics are denied to ours);
// payload_*: what the Python side publishes with mosquitto_pub when it reads
// "READY ws" / "READY wss"; temp: the value the page publishes as telemetry.
//
// Prints one "STEP <name> ok|FAIL <detail>" line per step, "READY <ws|wss>"
// when the page is subscribed to devices/<device>/commands and waits (5 s)
// for payload_<ws|wss> there, "ALL OK" or "FAILED <n>", and exits 0 or 1.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { launch, steps } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
// The browser bundle (a global `mqtt`); not in the package's exports map.
const MQTT_JS = fileURLToPath(new URL('node_modules/mqtt/dist/mqtt.min.js', import.meta.url));
const CMD = `devices/${cfg.device}/commands`;
const WAIT_MS = 5000;
const { step, failed } = steps();

// ignoreHTTPSErrors: the daemon's development certificate is signed by its
// own CA (DATA_DIR/tls/ca.pem), which chromium does not know.
const { ctx, page, close } = await launch({ ignoreHTTPSErrors: true });
page.setDefaultTimeout(10000);
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));

// The daemon's pages carry a Content-Security-Policy (script-src 'self' and a
// hash; connect-src 'self'), which refuses addScriptTag({path}) (an inline
// script). Rather than turning CSP off (bypassCSP would lift connect-src too),
// the bundle is served as if it were one of the daemon's own files: playwright
// answers this path on both origins, and the page keeps its real CSP.
const BUNDLE_PATH = '/__test__/mqtt.min.js';
const bundle = readFileSync(MQTT_JS);
await ctx.route((u) => u.pathname === BUNDLE_PATH, (route) =>
  route.fulfill({ status: 200, contentType: 'application/javascript', body: bundle }));

// Opens a page on origin, loads MQTT.js into it and connects to url as the
// device. In the page: window.client, window.received = [{topic, hex}].
async function connect(p, origin, url) {
  await p.goto(origin + '/');
  await p.addScriptTag({ url: origin + BUNDLE_PATH });
  return p.evaluate(([url, id, secret]) => new Promise((resolve, reject) => {
    window.received = [];
    const c = mqtt.connect(url, {
      clientId: id, username: id, password: secret, protocolVersion: 4, clean: true,
      reconnectPeriod: 0, connectTimeout: 5000,
    });
    window.client = c;
    c.on('message', (topic, payload) => {
      window.received.push({ topic, hex: Array.from(payload, (b) => b.toString(16).padStart(2, '0')).join('') });
    });
    c.once('connect', (connack) => resolve(`connack rc ${connack.returnCode}, ws protocol ${c.stream.socket ? c.stream.socket.protocol : '?'}`));
    c.once('error', (e) => reject(new Error('connect: ' + e.message)));
    c.once('close', () => reject(new Error('closed before CONNACK')));
  }), [url, cfg.device, cfg.secret]);
}

// SUBSCRIBE from the page; resolves with {granted: the SUBACK's return codes,
// err: MQTT.js's error message if it reported one}. MQTT.js 5 reports a
// failure code (0x80) as an error carrying the SUBACK packet.
const subscribe = (p, filter, qos) => p.evaluate(([filter, qos]) => new Promise((resolve) => {
  window.client.subscribe(filter, { qos }, (err, granted, suback) => {
    const codes = suback ? Array.from(suback.granted) : (granted || []).map((g) => g.qos);
    resolve(err ? { err: err.message, granted: codes } : { granted: codes });
  });
}), [filter, qos]);

// Says READY, then waits for exactly `payload` on CMD.
async function receive(p, name, payload) {
  const want = Buffer.from(payload, 'utf8').toString('hex');
  console.log(`READY ${name}`);
  const t0 = Date.now();
  await p.waitForFunction(([topic, want]) => window.received.some((m) => m.topic === topic && m.hex === want),
    [CMD, want], { timeout: WAIT_MS }).catch(async () => {
    const got = await p.evaluate(() => window.received);
    throw new Error(`no ${JSON.stringify(payload)} on ${CMD} within ${WAIT_MS} ms; got ${JSON.stringify(got)}`);
  });
  return `${Date.now() - t0} ms after READY`;
}

const end = (p) => p.evaluate(() => new Promise((resolve) => window.client.end(false, {}, resolve)));

try {
  const base = `http://127.0.0.1:${cfg.http}`;
  const tls = `https://127.0.0.1:${cfg.https}`;
  let up = await step('ws_connect', () => connect(page, base, `ws://127.0.0.1:${cfg.http}/mqtt`));
  if (up) {
    await step('ws_subscribe', async () => {
      const r = await subscribe(page, CMD, 1);
      if (r.err || r.granted[0] !== 1) throw new Error(JSON.stringify(r));
      return `granted ${r.granted}`;
    });
    await step('ws_receive', () => receive(page, 'ws', cfg.payload_ws));
    await step('publish_telemetry', async () => {
      const topic = `devices/${cfg.device}/telemetry`;
      const r = await page.evaluate(([topic, body]) => new Promise((resolve) => {
        window.client.publish(topic, body, { qos: 1 }, (err) => resolve(err ? err.message : null));
      }), [topic, JSON.stringify({ temp: cfg.temp })]);
      if (r) throw new Error(r);
      return `PUBACK for ${topic}`;
    });
    await step('denied_subscribe', async () => {
      const r = await subscribe(page, `devices/${cfg.other}/commands`, 1);
      if (!(r.err && r.granted.length === 1 && r.granted[0] === 128)) {
        throw new Error(`expected SUBACK 128 as an error, got ${JSON.stringify(r)}`);
      }
      const still = await page.evaluate(() => window.client.connected);
      if (!still) throw new Error('the connection closed after the denied SUBSCRIBE');
      return `SUBACK ${r.granted[0]} (${r.err})`;
    });
    await step('ws_end', () => end(page));
  }

  const p2 = await ctx.newPage();
  p2.on('pageerror', (e) => pageErrors.push(e.message));
  up = await step('wss_connect', () => connect(p2, tls, `wss://127.0.0.1:${cfg.https}/mqtt`));
  if (up) {
    await step('wss_subscribe', async () => {
      const r = await subscribe(p2, CMD, 0);
      if (r.err || r.granted[0] !== 0) throw new Error(JSON.stringify(r));
      return `granted ${r.granted}`;
    });
    await step('wss_receive', () => receive(p2, 'wss', cfg.payload_wss));
    await step('wss_end', () => end(p2));
  }
  await step('no_page_errors', async () => {
    if (pageErrors.length) throw new Error(pageErrors.join(' | '));
  });
} finally {
  await close();
}
console.log(failed() ? `FAILED ${failed()}` : 'ALL OK');
process.exit(failed() ? 1 : 0);
