// ui.mjs - the browser test of the web app (tests/integration/test_browser.py
// runs it): playwright-core driving Debian's chromium against a running daemon.
// Reads a JSON config from argv[2]: {base, email, password, device, secret,
// mqtt_port, viewer_email, viewer_password, out}. Prints one line per step,
// "STEP <name> ok|FAIL <detail>", "FIRST_LOAD_BYTES <n>", "SCREENSHOT <path>",
// and exits 1 if a step failed. Steps that need the routes of
// docs/../live-protocol (WebSocket live, dashboards) say so in their name.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { launch, steps } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const { step, failed } = steps();
const shot = async (page, name) => {
  const p = join(cfg.out, name + '.png');
  await page.screenshot({ path: p, fullPage: true });
  console.log(`SCREENSHOT ${p}`);
};

const { ctx, page, close } = await launch({ viewport: { width: 1280, height: 900 } });
page.setDefaultTimeout(10000);
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));
page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
let token = null, dashUrl = null;

try {
  await step('login_page', async () => {
    await page.goto(cfg.base + '/');
    await page.getByLabel('Email').waitFor();
    await page.getByLabel('Password').waitFor();
    await shot(page, '01-login');
  });
  await step('login', async () => {
    await page.getByLabel('Email').fill(cfg.email);
    await page.getByLabel('Password').fill(cfg.password);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.locator('#fleet-table').waitFor();
    token = await page.evaluate(() => sessionStorage.getItem('thz.token'));
    if (!token) throw new Error('no token in sessionStorage');
  });
  await step('fleet_lists_devices', async () => {
    await page.locator(`#fleet-table tr[data-device="${cfg.device}"]`).waitFor();
    const n = await page.locator('#fleet-table tbody tr').count();
    const total = await page.locator('[data-count="total"]').textContent();
    await shot(page, '02-fleet');
    return `${n} rows, total ${total}`;
  });
  await step('device_page', async () => {
    await page.locator(`#fleet-table a:text-is("${cfg.device}")`).click();
    await page.waitForURL(/#\/devices\//);
    await page.locator('#latest tr[data-metric="temp"]').waitFor();
    await page.locator('.chart[data-metric="temp"] canvas').waitFor();
    // The canvas can be drawn before the telemetry answer arrives (slow under
    // the sanitizer builds): wait for the points, then check them.
    await page.waitForFunction(() => Number(document.querySelector(
      '.chart[data-metric="temp"] .plot')?.getAttribute('data-points')) > 0, null,
      { timeout: 15000 }).catch(() => {});
    const pts = Number(await page.locator('.chart[data-metric="temp"] .plot').getAttribute('data-points'));
    if (!(pts > 0)) throw new Error('the temp chart has no points');
    await shot(page, '03-device');
    return `${pts} points`;
  });
  await step('live_update_within_1s', async () => {
    // Wait for the live socket, then publish one value over MQTT.
    await page.locator('header .who [role=status]:text-is("● live")').waitFor({ timeout: 5000 });
    await page.waitForTimeout(300); // the subscribe frame is sent after ready
    const plot = page.locator('.chart[data-metric="temp"] .plot');
    const before = Number(await plot.getAttribute('data-points'));
    const value = 4242.5;
    const t0 = Date.now();
    const r = spawnSync('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(cfg.mqtt_port), '-u', cfg.device, '-P', cfg.secret,
      '-t', `devices/${cfg.device}/telemetry`, '-q', '1', '-m', JSON.stringify({ temp: value })], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error('mosquitto_pub: ' + r.stderr);
    await page.locator('#latest tr[data-metric="temp"] td[data-value]:text-is("4242.5")').waitFor({ timeout: 1000 });
    await page.waitForFunction(([b]) => Number(document.querySelector('.chart[data-metric="temp"] .plot').dataset.points) > b, [before], { timeout: Math.max(1, 1000 - (Date.now() - t0)) });
    const ms = Date.now() - t0;
    if (ms > 1000) throw new Error(`took ${ms} ms`);
    await shot(page, '04-device-live');
    return `updated ${ms} ms after the publish`;
  });
  await step('dashboard_two_panels_saved', async () => {
    await page.goto(cfg.base + '/#/dashboards');
    await page.getByRole('button', { name: 'New dashboard' }).click();
    await page.getByLabel('Title').fill('Browser test');
    await page.getByRole('button', { name: 'Create' }).click();
    await page.waitForURL(/#\/dashboards\/[^/?]+\?edit/);
    await page.getByLabel('Device (${device})').fill(cfg.device);
    await page.getByLabel('Device (${device})').press('Tab');
    for (const [title, type] of [['Temperature', 'timeseries'], ['Temperature now', 'stat']]) {
      await page.getByRole('button', { name: 'Add panel' }).click();
      const dlg = page.locator('dialog[open]');
      await dlg.getByLabel('Title').fill(title);
      await dlg.getByLabel('Type').selectOption(type);
      await dlg.getByLabel('Metric', { exact: true }).fill('temp');
      await dlg.getByRole('button', { name: 'Save panel' }).click();
      await dlg.waitFor({ state: 'detached' });
    }
    await page.getByRole('button', { name: 'Save', exact: true }).click();
    await page.locator('[role=status]:text("Saved.")').waitFor();
    dashUrl = page.url().replace(/\?edit$/, '');
    await page.goto(dashUrl);
    await page.reload();
    await page.locator('#dash [data-panel]').nth(1).waitFor();
    const titles = await page.locator('#dash [data-panel] h3 span').allTextContents();
    if (titles.join('|') !== 'Temperature|Temperature now') throw new Error('panels after reload: ' + titles.join('|'));
    await page.locator('#dash [data-type="timeseries"] canvas').waitFor();
    await page.locator('#dash [data-type="stat"] .stat').waitFor();
    await shot(page, '05-dashboard');
    return 'panels: ' + titles.join(', ');
  });
  await step('first_load_under_300KB', async () => {
    // A new tab with the cache disabled, logged in through sessionStorage; every
    // byte on the wire (headers included, gzip as sent) until the page is idle.
    const p2 = await ctx.newPage();
    const cdp = await p2.context().newCDPSession(p2);
    await cdp.send('Network.enable');
    await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
    let bytes = 0;
    cdp.on('Network.loadingFinished', (e) => { bytes += e.encodedDataLength; });
    await p2.addInitScript((t) => sessionStorage.setItem('thz.token', t), token);
    const url = dashUrl || cfg.base + '/#/dashboards';
    await p2.goto(url, { waitUntil: 'networkidle' });
    await p2.locator(dashUrl ? '#dash' : 'h1').waitFor();
    await p2.waitForLoadState('networkidle');
    console.log(`FIRST_LOAD_BYTES ${bytes} ${url}`);
    await p2.close();
    if (bytes >= 300 * 1024) throw new Error(`${bytes} bytes`);
    return `${bytes} bytes`;
  });
  await step('responsive_375px', async () => {
    await page.setViewportSize({ width: 375, height: 800 });
    await page.goto(cfg.base + '/#/fleet');
    await page.locator('#fleet-table').waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
    await shot(page, '06-fleet-375');
    if (overflow > 1) throw new Error(`the page is ${overflow}px wider than the screen`);
    await page.setViewportSize({ width: 1280, height: 900 });
  });
  await step('keyboard_login_focus', async () => {
    // Tab order on the login page of a fresh session: email, password, button.
    const p3 = await ctx.newPage();
    await p3.goto(cfg.base + '/');
    await p3.evaluate(() => sessionStorage.clear());
    await p3.reload();
    await p3.getByLabel('Email').waitFor();
    const order = [];
    for (let i = 0; i < 3; i++) { order.push(await p3.evaluate(() => document.activeElement?.id || document.activeElement?.textContent)); await p3.keyboard.press('Tab'); }
    await p3.close();
    if (order.join(',') !== 'email,password,Log in') throw new Error('focus order ' + order.join(','));
  });
  if (cfg.viewer_email) await step('viewer_sees_no_edit_buttons', async () => {
    const p4 = await ctx.newPage();
    await p4.goto(cfg.base + '/');
    await p4.evaluate(() => sessionStorage.clear());
    await p4.reload();
    await p4.getByLabel('Email').fill(cfg.viewer_email);
    await p4.getByLabel('Password').fill(cfg.viewer_password);
    await p4.getByRole('button', { name: 'Log in' }).click();
    await p4.locator('#fleet-table').waitFor();
    await p4.goto(cfg.base + '/#/manage/devices');
    await p4.locator(`#manage-devices tr[data-device="${cfg.device}"]`).waitFor();
    const n = await p4.getByRole('button', { name: /New device|Delete|Rotate/ }).count();
    const role = await p4.locator('[data-role]').textContent();
    await p4.close();
    if (role !== 'viewer' || n) throw new Error(`role ${role}, ${n} edit buttons`);
  });
  await step('no_page_errors', async () => {
    // A missing new route (404 of a fetch or the WebSocket) logs a console
    // error in chromium; only script errors count here.
    const js = pageErrors.filter((e) => !/Failed to load resource|WebSocket connection/.test(e));
    if (js.length) throw new Error(js.join(' | '));
  });
} finally {
  await close();
}
console.log(failed() ? `FAILED ${failed()}` : 'ALL OK');
process.exit(failed() ? 1 : 0);
