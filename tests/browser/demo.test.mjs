// Browser test of `vedetta serve --demo` once its month of history is loaded (issue 11):
// what a newcomer sees in the 30-day view. Run by `crates/vedetta/tests/browser.rs`
// (`demo_dashboard`) against a demo server whose history is loaded.
//
// Environment: VEDETTA_URL, ARTIFACTS_DIR, CHROMIUM, as dashboard.test.mjs.
//
// Checks, through the page's promised attributes (never by parsing formatted numbers):
// - the 30-day chart has sessions on at least 28 of its days;
// - the overall CPA tile is between €10 and €60;
// - the region table's "unknown" row holds under 5 % of the sessions;
// - organic search shows "—" for CPA (it has no spend to know of).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const BASE = (process.env.VEDETTA_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const ARTIFACTS = process.env.ARTIFACTS_DIR
  ? path.resolve(process.env.ARTIFACTS_DIR)
  : fileURLToPath(new URL('../../artifacts/', import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let browser;
let page;

before(async () => {
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  } catch (error) {
    throw new Error(`cannot launch Chromium at ${CHROMIUM}: ${error.message.split('\n')[0]}`);
  }
  await mkdir(ARTIFACTS, { recursive: true });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-GB' });
  page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  await page.goto(`${BASE}/#range=30d`);
  await page.waitForSelector('#chart svg[data-windows-with-sessions]', { timeout: 15_000 });
  await page.waitForSelector('#tiles [data-kpi="cpa"][data-value]', { timeout: 15_000 });
  await page.waitForSelector('table[data-table="region"] tr[data-region]', { timeout: 15_000 });
  await page.waitForSelector('table[data-table="channel"] tr[data-channel="organic"]', { timeout: 15_000 });
  assert.deepEqual(errors, [], 'the page ran without errors');
});

after(async () => {
  if (browser) await browser.close();
});

test('the 30-day view has data on at least 28 days', async (t) => {
  const chart = page.locator('#chart svg');
  const windows = Number(await chart.getAttribute('data-windows'));
  const withSessions = Number(await chart.getAttribute('data-windows-with-sessions'));
  t.diagnostic(`${withSessions} of ${windows} days have sessions`);
  assert.ok(withSessions >= 28, `${withSessions} days with sessions of ${windows}`);
  assert.equal(await page.locator('#demo-loading').isHidden(), true, 'no loading line once loaded');
  await page.screenshot({ path: path.join(ARTIFACTS, 'demo-30d-desktop.png') });
});

test('the overall CPA is a believable one', async (t) => {
  const cpa = Number(await page.locator('#tiles [data-kpi="cpa"]').getAttribute('data-value'));
  t.diagnostic(`overall CPA €${cpa.toFixed(2)}`);
  assert.ok(cpa >= 10 && cpa <= 60, `overall CPA €${cpa}, expected €10–60`);
});

test('fewer than 5% of the sessions are in an unknown region', async (t) => {
  const rows = await page.$$eval('table[data-table="region"] tr[data-region]', (trs) => trs.map((tr) => ({
    region: tr.dataset.region,
    sessions: Number(tr.querySelector('[data-kpi="sessions"]').getAttribute('data-value')),
  })));
  const total = rows.reduce((sum, r) => sum + r.sessions, 0);
  const unknown = rows.filter((r) => r.region === 'unknown').reduce((sum, r) => sum + r.sessions, 0);
  t.diagnostic(`${rows.length} regions, ${unknown} of ${total} sessions unknown`);
  assert.ok(total > 0, 'the region table has sessions');
  assert.ok(rows.length >= 15, `only ${rows.length} regions`);
  assert.ok(unknown / total < 0.05, `${unknown} of ${total} sessions in an unknown region`);
});

test('organic search has no CPA: "—", not €0.00', async () => {
  const cell = page.locator('table[data-table="channel"] tr[data-channel="organic"] [data-kpi="cpa"]');
  assert.equal(await cell.getAttribute('data-value'), 'null');
  assert.equal((await cell.textContent()).trim(), '—');
});
