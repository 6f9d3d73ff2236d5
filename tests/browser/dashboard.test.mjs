// Browser test of the dashboard served by `vedetta serve` at `/`.
//
// Runs with Node's test runner and playwright-core driving the system's Chromium (never a
// downloaded browser):
//
//   npm install --prefix tests/browser
//   VEDETTA_URL=http://127.0.0.1:8080 node --test tests/browser/dashboard.test.mjs
//
// Environment: VEDETTA_URL (default http://127.0.0.1:8080), VEDETTA_API_KEY (when the
// server has keys: the test then also goes through the page's key form), ARTIFACTS_DIR
// (screenshots; default `artifacts/` at the repository root), CHROMIUM (default
// /usr/bin/chromium).
//
// The server should be quiet (no `--demo` traffic): the test posts its own events, under a
// campaign name unique to the run, and compares what the page shows with `/v1/kpis`.
// Numbers are compared through the `data-value` attributes the page promises, never by
// parsing locale formatting; money to the cent.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const BASE = (process.env.VEDETTA_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const API_KEY = process.env.VEDETTA_API_KEY || '';
// By default `artifacts/` at the repository root (ignored by git), wherever the test runs from.
const ARTIFACTS = process.env.ARTIFACTS_DIR
  ? path.resolve(process.env.ARTIFACTS_DIR)
  : fileURLToPath(new URL('../../artifacts/', import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

// The dashboard's default view is the last 24 hours per hour.
const DEFAULT_RANGE = { granularity: '1h', last: '24h' };
const CHANNEL = 'social';
const RUN = `bt-${Date.now().toString(36)}`;
// A comma in a campaign name (ad platforms allow it): drilling into it must still filter
// exactly (filter values escape it as `\,`).
const CAMPAIGN_A = `${RUN}-a, saldi`;
const CAMPAIGN_B = `${RUN}-b`;
// No spend is ever recorded for it: its spend and CPA are unknown, shown "—", never €0.00.
const SPENDLESS_CHANNEL = 'direct';
const TILE_KPIS = ['sessions', 'conversions', 'conversion_rate', 'revenue', 'aov', 'spend', 'cpa', 'flagged'];
const MONEY = new Set(['revenue', 'aov', 'spend', 'cpa']);

let browser;
let desktop; // { context, page, errors, requests }

// ------------------------------------------------------------------ helpers

async function api(pathname, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (API_KEY) headers.authorization = `Bearer ${API_KEY}`;
  let response;
  try {
    response = await fetch(`${BASE}${pathname}`, { ...init, headers });
  } catch (error) {
    throw new Error(`Vedetta is not reachable at ${BASE} (${error.cause?.code || error.message}); start \`vedetta serve\` and set VEDETTA_URL`);
  }
  const text = await response.text();
  if (!response.ok) throw new Error(`${init.method || 'GET'} ${pathname} answered ${response.status}: ${text}`);
  return JSON.parse(text);
}

// Filter values as the API reads them: comma-separated, a comma inside a value escaped.
const filterValue = (value) => String(value).replace(/\\/g, '\\\\').replace(/,/g, '\\,');
const kpis = (params) => {
  const query = { ...DEFAULT_RANGE, ...params };
  for (const dimension of ['channel', 'campaign', 'device', 'region']) {
    if (query[dimension] != null) query[dimension] = filterValue(query[dimension]);
  }
  return api(`/v1/kpis?${new URLSearchParams(query)}`);
};

function postJson(pathname, body) {
  return api(pathname, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
}

async function until(what, check, timeoutMs = 10_000, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last.ok) return last;
    if (Date.now() > deadline) assert.fail(`${what}, not within ${timeoutMs} ms: ${last.why}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

// A page's value matches the API's: counts and ratios exactly, money to the cent, null as "null".
function sameValue(kpi, shown, expected) {
  if (shown == null) return false;
  if (expected == null) return shown === 'null';
  if (shown === 'null') return false;
  const value = Number(shown);
  if (MONEY.has(kpi)) return Math.round(value * 100) === Math.round(expected * 100);
  return Math.abs(value - expected) <= 1e-9 * Math.max(1, Math.abs(expected));
}

function tileValues(page) {
  return page.$$eval('#tiles [data-kpi]', (tiles) => Object.fromEntries(tiles.map((t) => [t.dataset.kpi, t.getAttribute('data-value')])));
}

// The tiles equal the totals of /v1/kpis for the same query (the page follows the stream,
// so a change may take a second to show: retried until they agree).
async function assertTilesMatch(page, params, label) {
  await until(`${label}: tiles equal /v1/kpis totals`, async () => {
    const [answer, shown] = await Promise.all([kpis(params), tileValues(page)]);
    const wrong = TILE_KPIS.filter((k) => !sameValue(k, shown[k], answer.totals[k]))
      .map((k) => `${k}: page ${shown[k]}, API ${answer.totals[k]}`);
    return { ok: wrong.length === 0, why: wrong.join('; ') };
  });
}

async function openPage(options) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  const errors = [];
  const requests = [];
  page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
  page.on('console', (message) => { if (message.type() === 'error' && !/401|Unauthorized/.test(message.text())) errors.push(`console: ${message.text()}`); });
  page.on('request', (request) => requests.push({ url: request.url(), at: Date.now() }));
  return { context, page, errors, requests };
}

async function enterKeyIfAsked(page) {
  if (!API_KEY) return;
  await page.waitForSelector('#auth-key', { state: 'visible', timeout: 5_000 });
  await page.fill('#auth-key', API_KEY);
  await page.click('#auth-form button[type="submit"]');
}

const streamsSince = (requests, at) => requests.filter((r) => r.at >= at && new URL(r.url).pathname === '/v1/stream').length;
const kpiFetchesSince = (requests, at) => requests.filter((r) => r.at >= at && new URL(r.url).pathname === '/v1/kpis').length;

// ------------------------------------------------------------------ setup

before(async () => {
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  } catch (error) {
    throw new Error(`cannot launch Chromium at ${CHROMIUM}: ${error.message.split('\n')[0]}\n` +
      'Install it (apt-get install -y chromium) or point CHROMIUM at a Chromium binary; this test never downloads a browser.');
  }
  await mkdir(ARTIFACTS, { recursive: true });

  // Two converting users on two campaigns of one channel, and some spend, so that the
  // channel's tiles, campaign table and CPA have something to show.
  const now = Date.now();
  const at = (msAgo) => new Date(now - msAgo).toISOString();
  const visit = (user, campaign, value) => [
    { udid: `${RUN}-${user}`, type: 'page_view', ts: at(20_000), channel: CHANNEL, campaign, device: 'mobile', region: 'Lombardia' },
    { udid: `${RUN}-${user}`, type: 'purchase', ts: at(10_000), value, currency: 'EUR', channel: CHANNEL, campaign, device: 'mobile', region: 'Lombardia' },
  ];
  // And a purchase typed into the address bar: `direct`, which has no spend records.
  const direct = { udid: `${RUN}-u3`, type: 'purchase', ts: at(10_000), value: 15, currency: 'EUR', channel: SPENDLESS_CHANNEL, device: 'desktop', region: 'Lazio' };
  const intake = await postJson('/v1/events', [...visit('u1', CAMPAIGN_A, 40.5), ...visit('u2', CAMPAIGN_B, 19.99), direct]);
  assert.equal(intake.accepted, 5, `seed events refused: ${JSON.stringify(intake)}`);
  await postJson('/v1/costs', { ts: at(5_000), channel: CHANNEL, campaign: CAMPAIGN_A, amount: 7.25, currency: 'EUR', source: 'browser_test' });
  await until('the seeded events reach /v1/kpis', async () => {
    const answer = await kpis({ group_by: 'campaign', channel: CHANNEL });
    const campaigns = new Set(answer.rows.filter((r) => r.conversions > 0).map((r) => r.campaign));
    return { ok: campaigns.has(CAMPAIGN_A) && campaigns.has(CAMPAIGN_B), why: `campaigns with conversions: ${[...campaigns].join(', ')}` };
  });
});

after(async () => {
  if (browser) await browser.close();
});

// ------------------------------------------------------------------ tests

test('the overview tiles show the numbers of /v1/kpis', { timeout: 60_000 }, async (t) => {
  desktop = await openPage({ viewport: { width: 1280, height: 800 }, locale: 'en-GB' });
  const { page, requests } = desktop;
  const started = Date.now();
  await page.goto(`${BASE}/`);
  assert.equal(await page.locator('#tiles [data-kpi]').count(), TILE_KPIS.length, 'the skeleton has every tile');
  await enterKeyIfAsked(page);
  const authorized = Date.now(); // streams refused with 401 before the key was entered do not count
  await page.waitForSelector('#tiles [data-kpi="conversions"][data-value]', { timeout: 5_000 });
  const filledMs = Date.now() - started;
  t.diagnostic(`tiles filled ${filledMs} ms after navigation`);
  assert.ok(filledMs < 3_000, `the tiles took ${filledMs} ms to fill`);

  await assertTilesMatch(page, {}, 'overview');
  await page.waitForSelector(`#breakdowns tr[data-channel="${CHANNEL}"]`);
  assert.ok(streamsSince(requests, authorized) <= 3, `the overview opened ${streamsSince(requests, authorized)} streams, at most 3 expected`);
  await page.waitForSelector('#tiles [data-kpi="conversions"] .delta[data-value]', { timeout: 5_000 });
  await page.waitForSelector('#dq [data-dq="lag"][data-value]', { timeout: 5_000 });
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-overview-desktop.png') }); // the 1280×800 viewport
});

test('clicking a channel drills into it', { timeout: 60_000 }, async () => {
  const { page, requests } = desktop;
  const clicked = Date.now();
  await page.click(`#breakdowns tr[data-channel="${CHANNEL}"]`);
  await page.waitForSelector(`[data-breadcrumb="channel"][data-value="${CHANNEL}"]`, { timeout: 5_000 });
  assert.ok(await page.isVisible('a[data-breadcrumb="all"]'), 'the "All channels" crumb leads back');
  assert.match(page.url(), new RegExp(`channel=${CHANNEL}`));

  await assertTilesMatch(page, { channel: CHANNEL }, `channel ${CHANNEL}`);
  const expected = await kpis({ group_by: 'campaign', channel: CHANNEL });
  const expectedCampaigns = [...new Set(expected.rows.map((r) => r.campaign))].sort();
  const shown = await until('the campaign table lists the channel\'s campaigns', async () => {
    const names = await page.$$eval('table[data-table="campaign"] tbody tr[data-campaign]', (rows) => rows.map((r) => r.dataset.campaign));
    const sorted = [...names].sort();
    const ok = expectedCampaigns.length > 200
      ? names.length === 200 && names.includes(CAMPAIGN_A) && names.includes(CAMPAIGN_B)
      : JSON.stringify(sorted) === JSON.stringify(expectedCampaigns);
    return { ok, why: `page [${sorted.join(', ')}], API [${expectedCampaigns.join(', ')}]`, names };
  });
  assert.ok(shown.names.includes(CAMPAIGN_A) && shown.names.includes(CAMPAIGN_B), 'the seeded campaigns are listed');
  assert.equal(await page.locator('#breakdowns tr[data-channel]').count(), 0, 'no channel table inside a channel');
  await page.waitForSelector('table[data-table="device"] tbody tr[data-device="mobile"]');
  await page.waitForSelector('table[data-table="region"] tbody tr[data-region="IT-25"]');
  const regionName = await page.textContent('table[data-table="region"] tbody tr[data-region="IT-25"] th');
  assert.match(regionName, /Lombardia/, 'region rows show region_name');
  assert.ok(streamsSince(requests, clicked) <= 3, `the drill-down opened ${streamsSince(requests, clicked)} streams, at most 3 expected`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-drilldown-desktop.png'), fullPage: true });
});

test('clicking a campaign drills further, crumbs lead back', { timeout: 60_000 }, async () => {
  const { page } = desktop;
  await page.click(`table[data-table="campaign"] tr[data-campaign="${CAMPAIGN_A}"]`);
  await page.waitForSelector(`[data-breadcrumb="campaign"][data-value="${CAMPAIGN_A}"]`, { timeout: 5_000 });
  await assertTilesMatch(page, { channel: CHANNEL, campaign: CAMPAIGN_A }, `campaign ${CAMPAIGN_A}`);
  assert.equal(await page.locator('table[data-table="campaign"]').count(), 0, 'no campaign table inside a campaign');

  await page.click('a[data-breadcrumb="channel"]');
  await page.waitForSelector(`table[data-table="campaign"] tr[data-campaign="${CAMPAIGN_B}"]`, { timeout: 5_000 });
  await page.click('a[data-breadcrumb="all"]');
  await page.waitForSelector(`#breakdowns tr[data-channel="${CHANNEL}"]`, { timeout: 5_000 });
  assert.equal(await page.locator('[data-breadcrumb="channel"]').count(), 0, 'back at all channels');
  await assertTilesMatch(page, {}, 'overview again');
});

test('a new purchase shows up live, without reloading or refetching', { timeout: 60_000 }, async (t) => {
  const { page, requests } = desktop;
  await assertTilesMatch(page, {}, 'before the purchase');
  const before = await tileValues(page);
  await page.evaluate(() => { window.__sameDocument = true; });
  const posted = Date.now();
  const intake = await postJson('/v1/events', {
    udid: `${RUN}-live`, type: 'purchase', ts: new Date().toISOString(), value: 12.34, currency: 'EUR',
    channel: CHANNEL, campaign: CAMPAIGN_A, device: 'desktop', region: 'Lazio',
  });
  assert.equal(intake.accepted, 1, `purchase refused: ${JSON.stringify(intake)}`);
  const expected = Number(before.conversions) + 1;
  await page.waitForFunction((n) => Number(document.querySelector('#tiles [data-kpi="conversions"]').getAttribute('data-value')) >= n,
    expected, { timeout: 5_000 }).catch(() => assert.fail(`the conversions tile did not reach ${expected} within 5 s of the purchase`));
  t.diagnostic(`conversions tile updated ${Date.now() - posted} ms after the purchase was posted`);
  const afterValues = await tileValues(page);
  assert.equal(Number(afterValues.conversions), expected, 'the conversions tile increased by one');
  assert.equal(Math.round(Number(afterValues.revenue) * 100), Math.round((Number(before.revenue) + 12.34) * 100), 'revenue grew by the purchase value');
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');
  // The comparison with the previous period may be refreshed once a minute, no more.
  assert.ok(kpiFetchesSince(requests, posted) <= 1, `${kpiFetchesSince(requests, posted)} /v1/kpis fetches after a stream update`);
  await assertTilesMatch(page, {}, 'after the purchase');
});

// Issue 9: unknown spend is not zero spend.
test('spend and CPA without spend records show "—", not €0.00, in tables and tiles', { timeout: 60_000 }, async () => {
  const { page } = desktop;
  const cells = (selector) => page.$$eval(`${selector} td[data-kpi="spend"], ${selector} td[data-kpi="cpa"]`,
    (tds) => tds.map((td) => [td.dataset.kpi, td.getAttribute('data-value'), td.textContent.trim()]));
  const dash = [['spend', 'null', '—'], ['cpa', 'null', '—']];
  const overview = await kpis({ group_by: 'channel', rollup: 'range' });
  const directRow = overview.rows.find((r) => r.channel === SPENDLESS_CHANNEL);
  assert.ok(directRow && directRow.conversions > 0, `the API has a ${SPENDLESS_CHANNEL} row with conversions`);
  assert.deepEqual([directRow.spend, directRow.cpa], [null, null], 'the API answers null for a channel without spend records');
  await page.waitForSelector(`#breakdowns tr[data-channel="${SPENDLESS_CHANNEL}"]`, { timeout: 5_000 });
  assert.deepEqual(await cells(`#breakdowns tr[data-channel="${SPENDLESS_CHANNEL}"]`), dash, 'the channel table');

  // Its own tiles, drilled down.
  await page.click(`#breakdowns tr[data-channel="${SPENDLESS_CHANNEL}"]`);
  await page.waitForSelector(`[data-breadcrumb="channel"][data-value="${SPENDLESS_CHANNEL}"]`, { timeout: 5_000 });
  await assertTilesMatch(page, { channel: SPENDLESS_CHANNEL }, `channel ${SPENDLESS_CHANNEL}`);
  for (const kpi of ['spend', 'cpa']) {
    const tile = page.locator(`#tiles [data-kpi="${kpi}"]`);
    assert.equal(await tile.getAttribute('data-value'), 'null', `${kpi} tile value`);
    assert.equal((await tile.locator('.value').textContent()).trim(), '—', `${kpi} tile text`);
  }

  // A campaign without spend records beside one with them, in one channel's table.
  await page.click('a[data-breadcrumb="all"]');
  await page.click(`#breakdowns tr[data-channel="${CHANNEL}"]`);
  const row = (campaign) => `table[data-table="campaign"] tr[data-campaign="${campaign.replace(/"/g, '\\"')}"]`;
  await page.waitForSelector(row(CAMPAIGN_B), { timeout: 5_000 });
  assert.deepEqual(await cells(row(CAMPAIGN_B)), dash, 'a campaign without spend records');
  const paid = await cells(row(CAMPAIGN_A));
  assert.equal(Number(paid[0][1]), 7.25, `the campaign with spend shows it: ${JSON.stringify(paid)}`);
  await page.click('a[data-breadcrumb="all"]');
  await page.waitForSelector(`#breakdowns tr[data-channel="${CHANNEL}"]`, { timeout: 5_000 });
});

test('the attribution model in force is named, with a link to what it means', { timeout: 30_000 }, async () => {
  const { page } = desktop;
  const { attribution } = await kpis({});
  assert.ok(attribution && attribution.model, `the API names the model: ${JSON.stringify(attribution)}`);
  const note = page.locator('#attribution');
  await note.waitFor({ state: 'visible', timeout: 5_000 });
  assert.equal(await note.getAttribute('data-model'), attribution.model);
  assert.equal(Number(await note.getAttribute('data-lookback-days')), attribution.lookback_days);
  const text = (await note.textContent()).replace(/\s+/g, ' ').trim();
  if (attribution.model === 'last_non_direct' && attribution.lookback_days === 30) {
    assert.match(text, /^Attribution: last non-direct, 30 days/, text);
  }
  const href = await page.getAttribute('#attribution-link', 'href');
  const linked = await fetch(new URL(href, BASE));
  assert.equal(linked.status, 200, `${href} answers`);
  assert.match(await linked.text(), /\n## Attribution\n/, `${href} is the semantics`);
});

test('a phone gets the same dashboard, in Italian, without sideways scrolling', { timeout: 60_000 }, async () => {
  const phone = await openPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: 'it-IT' });
  try {
    const { page } = phone;
    if (API_KEY) await page.addInitScript((key) => localStorage.setItem('vedetta.apiKey', key), API_KEY);
    await page.goto(`${BASE}/`);
    await page.waitForSelector('#tiles [data-kpi="revenue"][data-value]', { timeout: 5_000 });
    await assertTilesMatch(page, {}, 'phone');
    assert.equal((await page.textContent('[data-breadcrumb="all"]')).trim(), 'Tutti i canali');
    await page.waitForSelector('#attribution:not([hidden])', { timeout: 5_000 });
    assert.match(await page.textContent('#attribution'), /^Attribuzione: /, 'the attribution note in Italian');
    const revenue = (await page.textContent('#tiles [data-kpi="revenue"] .value')).trim();
    assert.match(revenue, /^\d{1,3}(\.\d{3})*,\d{2}\s€$/u, `revenue in Italian format, got ${JSON.stringify(revenue)}`);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than the phone`);
    await page.waitForSelector('#chart svg path.line.current');
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-phone.png') }); // the 390×844 viewport
    assert.deepEqual(phone.errors, [], 'no script errors on the phone');
  } finally {
    await phone.context.close();
  }
  assert.deepEqual(desktop.errors, [], 'no script errors on the desktop');
});
