// lib.mjs - what the browser tests share: launching Debian's chromium through
// playwright-core with a fresh profile, and the "STEP <name> ok|FAIL" lines
// the pytest side (tests/integration/test_browser*.py) parses.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
  '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync'];

// launch(options) -> {ctx, page, close}. options go to
// launchPersistentContext (viewport, ignoreHTTPSErrors, ...). The profile is
// our own fresh user-data-dir; close() closes chromium and removes it.
export async function launch(options = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'thz-chromium-'));
  let ctx;
  try {
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
      args: CHROMIUM_ARGS, ...options,
    });
  } catch (e) {
    rmSync(profile, { recursive: true, force: true });
    throw e;
  }
  const page = ctx.pages()[0] || await ctx.newPage();
  const close = async () => {
    await ctx.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { ctx, page, close };
}

// steps() -> {step, failed}. step(name, fn) runs fn, prints
// "STEP <name> ok <ms>ms [detail]" (detail: fn's result) or
// "STEP <name> FAIL <first line of the error>", and returns whether it passed.
// failed() is the number of failed steps so far.
export function steps() {
  let failed = 0;
  const step = async (name, fn) => {
    const t0 = Date.now();
    try {
      const detail = await fn();
      console.log(`STEP ${name} ok ${Date.now() - t0}ms${detail ? ' ' + detail : ''}`);
      return true;
    } catch (e) {
      failed++;
      console.log(`STEP ${name} FAIL ${String(e.message || e).split('\n')[0]}`);
      return false;
    }
  };
  return { step, failed: () => failed };
}
