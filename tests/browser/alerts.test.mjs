// Browser test of alerting in the dashboard: the banner of firing alerts, its drill-down,
// the link form notifications carry, and the alerts page with its silences.
//
// Runs with Node's test runner and playwright-core driving the system's Chromium, against a
// server whose rules include (crates/vedetta/tests/browser.rs starts one):
//
//   [[alerts.rules]]
//   name = "cpa_high"  expr = "cpa > 20"  over = "1m"  group_by = ["channel", "campaign"]
//   severity = "critical"
//
//   VEDETTA_URL=http://127.0.0.1:8080 node --test tests/browser/alerts.test.mjs
//
// The test makes the rule fire itself: 30 € of spend and one purchase (CPA 30) in a minute
// ten minutes ago, under a campaign name unique to the run, then an event 66 s later in
// event time so that the watermark passes the minute. The campaign name is hostile on
// purpose: a comma (escaped in API filters), markup (must stay text) and a right-to-left
// override (must stay isolated).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const BASE = (process.env.VEDETTA_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const API_KEY = process.env.VEDETTA_API_KEY || '';
const ARTIFACTS = process.env.ARTIFACTS_DIR
  ? path.resolve(process.env.ARTIFACTS_DIR)
  : fileURLToPath(new URL('../../artifacts/', import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const RULE = 'cpa_high';
const RUN = `at-${Date.now().toString(36)}`;
const CHANNEL = 'social';
const CAMPAIGN = `${RUN}, saldi <b>x</b> \u202Einverno`;
const GROUP = { campaign: CAMPAIGN, channel: CHANNEL };

let browser;
let minute; // the start of the minute the rule fires on (epoch ms)

// ------------------------------------------------------------------ helpers

async function call(pathname, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (API_KEY) headers.authorization = `Bearer ${API_KEY}`;
  const response = await fetch(`${BASE}${pathname}`, { ...init, headers });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}
async function api(pathname, init) {
  const { status, body } = await call(pathname, init);
  if (status >= 300) throw new Error(`${init?.method || 'GET'} ${pathname} answered ${status}: ${JSON.stringify(body)}`);
  return body;
}
const postJson = (pathname, body) => api(pathname, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const filterValue = (value) => String(value).replace(/\\/g, '\\\\').replace(/,/g, '\\,');

async function until(what, check, timeoutMs = 15_000, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last.ok) return last;
    if (Date.now() > deadline) assert.fail(`${what}, not within ${timeoutMs} ms: ${last.why}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

const sameGroup = (a, b) => JSON.stringify(Object.entries(a || {}).sort()) === JSON.stringify(Object.entries(b || {}).sort());
const ourAlert = (answer) => (answer.firing || []).find((a) => a.rule === RULE && sameGroup(a.group, GROUP));

async function openPage(options) {
  const context = await browser.newContext(options);
  if (API_KEY) await context.addInitScript((key) => localStorage.setItem('vedetta.apiKey', key), API_KEY);
  const page = await context.newPage();
  const errors = [];
  const requests = [];
  page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
  // Failed requests are judged by their answers below (the form's refused silence is one
  // the test asks for), every other console error counts.
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) errors.push(`console: ${message.text()}`);
  });
  page.on('response', (response) => {
    const url = new URL(response.url());
    const refusedOnPurpose = response.status() === 400 && url.pathname === '/v1/silences';
    if (response.status() >= 400 && !refusedOnPurpose) errors.push(`${response.status()} from ${url.pathname}${url.search}`);
  });
  page.on('request', (request) => requests.push({ url: new URL(request.url()), at: Date.now() }));
  // Markup in a name would make an element: the test watches for one anywhere.
  await page.addInitScript(() => {
    new MutationObserver((records) => {
      for (const r of records) for (const n of r.addedNodes) if (n.nodeName === 'B') window.__injected = true;
    }).observe(document, { childList: true, subtree: true });
  });
  return { context, page, errors, requests };
}

// The tiles equal /v1/kpis totals for the query a view should make.
async function assertTilesMatch(page, params, label) {
  return until(`${label}: tiles equal /v1/kpis totals`, async () => {
    const query = new URLSearchParams(params);
    const [answer, shown] = await Promise.all([
      api(`/v1/kpis?${query}`),
      page.$$eval('#tiles [data-kpi]', (tiles) => Object.fromEntries(tiles.map((t) => [t.dataset.kpi, t.getAttribute('data-value')]))),
    ]);
    const wrong = ['sessions', 'conversions', 'revenue', 'spend', 'cpa'].filter((k) => {
      const want = answer.totals[k];
      if (want == null) return shown[k] !== 'null';
      return shown[k] == null || Math.round(Number(shown[k]) * 100) !== Math.round(want * 100);
    }).map((k) => `${k}: page ${shown[k]}, API ${answer.totals[k]}`);
    return { ok: wrong.length === 0, why: wrong.join('; '), answer };
  });
}

// The view in the page's hash.
const hashParams = (page) => page.evaluate(() => Object.fromEntries(new URLSearchParams(location.hash.slice(1))));

// ------------------------------------------------------------------ setup

before(async () => {
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  } catch (error) {
    throw new Error(`cannot launch Chromium at ${CHROMIUM}: ${error.message.split('\n')[0]}`);
  }
  await mkdir(ARTIFACTS, { recursive: true });
  const rules = await api('/v1/rules');
  assert.ok(rules.rules.some((r) => r.name === RULE && r.expr === 'cpa > 20'),
    `the server must run the rule ${RULE} (see the header of this file): ${JSON.stringify(rules.rules)}`);

  // A minute the evaluator has not judged yet (a later correction to a judged minute never
  // fires), so that the test can run again against the same server.
  const { evaluated_through: through } = await api('/v1/alerts?limit=0');
  minute = Math.max((Math.floor(Date.now() / 60_000) - 10) * 60_000, through ? Date.parse(through) : 0);
  assert.ok(minute + 66_000 < Date.now(), `the server has judged minutes up to ${through}: run this test on a quiet server`);
  await postJson('/v1/costs', { ts: minute + 1_000, channel: CHANNEL, campaign: CAMPAIGN, amount: 30, currency: 'EUR', source: 'browser_test' });
  const intake = await postJson('/v1/events', [
    { udid: `${RUN}-anna`, type: 'page_view', ts: minute + 2_000, channel: CHANNEL, campaign: CAMPAIGN, device: 'mobile' },
    { udid: `${RUN}-anna`, type: 'purchase', ts: minute + 3_000, value: 40, currency: 'EUR', order_id: `${RUN}-1` },
    // 66 s later in event time: the watermark passes the minute's end.
    { udid: `${RUN}-bruno`, type: 'page_view', ts: minute + 66_000, channel: 'direct' },
  ]);
  assert.equal(intake.accepted, 3, `events refused: ${JSON.stringify(intake)}`);
  await until('the rule fires on the posted minute', async () => {
    const answer = await api('/v1/alerts?limit=0');
    return { ok: Boolean(ourAlert(answer)), why: JSON.stringify(answer.firing) };
  }, 30_000);
});

after(async () => {
  if (browser) await browser.close();
});

// ------------------------------------------------------------------ tests

let desktop;

test('the dashboard shows the firing alert in a banner, in its severity, as text', { timeout: 60_000 }, async () => {
  desktop = await openPage({ viewport: { width: 1280, height: 800 }, locale: 'en-GB' });
  const { page } = desktop;
  await page.goto(`${BASE}/`);
  const link = page.locator('#alert-banner a[data-alert]').filter({ has: page.locator(`bdi:text-is(${JSON.stringify(CAMPAIGN)})`) });
  await link.first().waitFor({ timeout: 10_000 });
  assert.equal(await link.count(), 1, 'one banner entry for the alert');
  assert.equal(await link.getAttribute('data-rule'), RULE);
  assert.equal(await link.getAttribute('data-severity'), 'critical');
  assert.deepEqual(JSON.parse(await link.getAttribute('data-group')), GROUP);
  const text = (await link.textContent()).replace(/\s+/g, ' ');
  assert.match(text, /Critical/, text);
  assert.match(text, /€30\.00/, `the value as money: ${text}`);
  assert.match(text, /since \d{2}:\d{2}|since \w{3}/, `since when: ${text}`);
  assert.ok(text.includes(CAMPAIGN.replace(/\s+/g, ' ')), `the campaign name, verbatim: ${text}`);
  // The hostile name: its markup is text, its override isolated.
  assert.equal(await page.evaluate(() => Boolean(window.__injected)), false, 'no element was made from a name');
  const isolated = await link.locator(`bdi:text-is(${JSON.stringify(CAMPAIGN)})`).evaluate((node) => getComputedStyle(node).unicodeBidi);
  assert.equal(isolated, 'isolate');
  const colour = await page.locator('#alert-banner').evaluate((node) => node.dataset.severity);
  assert.equal(colour, 'critical', 'the banner takes the worst severity');
  await page.screenshot({ path: path.join(ARTIFACTS, 'alerts-banner.png') });
});

test('the banner refreshes by polling once every few seconds, no more', { timeout: 30_000 }, async () => {
  const { page, requests } = desktop;
  const started = Date.now();
  await page.waitForTimeout(11_000);
  const polls = requests.filter((r) => r.at >= started && r.url.pathname === '/v1/alerts').length;
  assert.ok(polls >= 1 && polls <= 3, `${polls} /v1/alerts requests in 11 s (one per 5 s expected)`);
});

test('clicking the alert opens the dashboard filtered to its group and window', { timeout: 60_000 }, async () => {
  const { page } = desktop;
  const alert = ourAlert(await api('/v1/alerts?limit=0'));
  await page.evaluate(() => { window.__sameDocument = true; });
  const link = page.locator('#alert-banner a[data-alert]').filter({ has: page.locator(`bdi:text-is(${JSON.stringify(CAMPAIGN)})`) });
  await link.click();
  await page.waitForSelector(`[data-breadcrumb="campaign"][data-value="${CAMPAIGN.replace(/["\\]/g, '\\$&')}"]`, { timeout: 5_000 });
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'opened in the page, without a reload');
  const view = await hashParams(page);
  assert.equal(view.channel, CHANNEL);
  assert.equal(view.campaign, CAMPAIGN);
  // The window: from the start of the first window that met the condition (the rule's
  // `over`, 1m, before `since`) to the last minute evaluated.
  assert.equal(Date.parse(view.from), Date.parse(alert.since) - 60_000);
  // (`to` is what the banner's last poll saw: never before the alert, never past now's.)
  const through = Date.parse((await api('/v1/alerts?limit=0')).evaluated_through);
  assert.ok(Date.parse(view.to) >= Date.parse(alert.since) && Date.parse(view.to) <= through,
    `to ${view.to}: between since ${alert.since} and evaluated_through ${new Date(through).toISOString()}`);
  assert.equal(await page.locator('[data-filter="window"]').count(), 1, 'the window is shown as a filter');
  const { answer } = await assertTilesMatch(page, {
    granularity: '1m', from: view.from, to: view.to, channel: CHANNEL, campaign: filterValue(CAMPAIGN),
  }, 'the alert\'s drill-down');
  assert.equal(answer.totals.cpa, 30, 'the drill-down shows the CPA that fired the alert');
  assert.equal(await page.locator('#ranges [aria-pressed="true"]').count(), 0, 'no preset range is pressed');
  await page.screenshot({ path: path.join(ARTIFACTS, 'alerts-drilldown.png'), fullPage: true });

  // Removing the window returns to the default range, filters kept.
  await page.click('[data-filter="window"] a[data-clear]');
  await until('the window is removed', async () => {
    const v = await hashParams(page);
    return { ok: !v.from && !v.to && v.campaign === CAMPAIGN, why: JSON.stringify(v) };
  });
});

test('a notification\'s drill-down link (/?channel=…&campaign=…&from=…&to=…) opens that view', { timeout: 60_000 }, async () => {
  const { page } = desktop;
  // Built as vedetta-core's notice() does: each value percent-encoded, %20 for a space.
  const percent = (text) => [...new TextEncoder().encode(text)].map((b) =>
    (/[A-Za-z0-9\-_.~]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('');
  const from = new Date(minute).toISOString();
  const to = new Date(minute + 60_000).toISOString();
  await page.goto(`${BASE}/?channel=${percent(CHANNEL)}&campaign=${percent(CAMPAIGN)}&from=${percent(from)}&to=${percent(to)}`);
  await page.waitForSelector('#tiles [data-kpi="cpa"][data-value]', { timeout: 10_000 });
  assert.equal(await page.evaluate(() => location.search), '', 'the query moved into the hash');
  const view = await hashParams(page);
  assert.deepEqual([view.channel, view.campaign, view.from, view.to], [CHANNEL, CAMPAIGN, from, to]);
  const { answer } = await assertTilesMatch(page, { granularity: '1m', from, to, channel: CHANNEL, campaign: filterValue(CAMPAIGN) }, 'the notice link');
  assert.equal(answer.totals.conversions, 1);

  // Device and region too, and a campaign without a channel (a rule grouped by campaign only).
  await page.goto(`${BASE}/?campaign=${percent(CAMPAIGN)}&device=mobile&from=${minute}&to=${minute + 120_000}`);
  await page.waitForSelector('[data-filter="device"][data-value="mobile"]', { timeout: 10_000 });
  await assertTilesMatch(page, {
    granularity: '1m', from: new Date(minute).toISOString(), to: new Date(minute + 120_000).toISOString(),
    campaign: filterValue(CAMPAIGN), device: 'mobile',
  }, 'campaign and device');
  assert.equal(await page.locator('table[data-table="device"]').count(), 0, 'no device table inside one device');

  // A forged window (reversed, or not a time) is ignored: the default range, never a guess.
  await page.goto(`${BASE}/?channel=${CHANNEL}&from=${percent(to)}&to=${percent(from)}`);
  await page.waitForSelector(`[data-breadcrumb="channel"][data-value="${CHANNEL}"]`, { timeout: 10_000 });
  assert.equal(await page.locator('[data-filter="window"]').count(), 0);
  assert.equal(await page.locator('#ranges [data-range="24h"][aria-pressed="true"]').count(), 1);
});

test('the alerts page lists the alert, silences it from a click, shows a refusal, deletes it', { timeout: 90_000 }, async () => {
  const { page } = desktop;
  await page.goto(`${BASE}/alerts`);
  const row = page.locator('table#firing tr[data-alert]').filter({ has: page.locator(`bdi:text-is(${JSON.stringify(CAMPAIGN)})`) });
  await row.waitFor({ timeout: 10_000 });
  assert.equal(await row.getAttribute('data-rule'), RULE);
  assert.equal(await row.getAttribute('data-severity'), 'critical');
  const drill = new URL(await row.locator('a[data-drill]').getAttribute('href'), BASE);
  assert.equal(drill.pathname, '/');
  assert.equal(drill.searchParams.get('campaign'), CAMPAIGN, 'the drill-down link carries the group');
  const history = page.locator('table#history tr[data-history][data-event="firing"]').filter({ has: page.locator(`bdi:text-is(${JSON.stringify(CAMPAIGN)})`) });
  assert.ok(await history.count() >= 1, 'the history lists the firing');

  // "Silence this" fills in the alert's labels.
  await row.locator('button[data-silence-this]').click();
  const matchers = await page.$$eval('#matchers .matcher', (rows) => rows.map((r) => [r.querySelector('select').value, r.querySelector('input').value]));
  assert.deepEqual(matchers.sort(), [['campaign', CAMPAIGN], ['channel', CHANNEL], ['rule', RULE]].sort());

  // A bad duration: the server's 400 names the field, on the form.
  await page.fill('#silence-duration', 'forever');
  await page.click('#silence-submit');
  await page.waitForSelector('#silence-error:not([hidden])', { timeout: 5_000 });
  assert.match(await page.textContent('#silence-error'), /duration/);

  const comment = `${RUN} promo <i>day</i>`;
  await page.fill('#silence-duration', '2h');
  await page.fill('#silence-comment', comment);
  await page.fill('#silence-created-by', 'anna');
  await page.click('#silence-submit');
  await page.waitForSelector('#silence-ok:not([hidden])', { timeout: 5_000 });
  assert.ok(await page.isHidden('#silence-error'));

  // It is in the API, as made in the page.
  const { silence } = await until('the silence is listed by /v1/alerts', async () => {
    const answer = await api('/v1/alerts?limit=0');
    const found = answer.silences.find((s) => s.comment === comment);
    return { ok: Boolean(found), why: JSON.stringify(answer.silences), silence: found };
  });
  assert.equal(silence.created_by, 'anna');
  assert.deepEqual(silence.matchers.map((m) => [m.name, m.value]).sort(), [['campaign', CAMPAIGN], ['channel', CHANNEL], ['rule', RULE]].sort());
  const hours = (Date.parse(silence.ends_at) - Date.parse(silence.starts_at)) / 3_600_000;
  assert.equal(hours, 2);

  const silenceRow = page.locator(`table#silences tr[data-silence][data-id="${silence.id}"]`);
  await silenceRow.waitFor({ timeout: 10_000 });
  assert.ok((await silenceRow.textContent()).includes(comment), 'the comment, as text');
  assert.equal(await page.evaluate(() => Boolean(window.__injected)), false, 'no element was made from client text');
  await page.screenshot({ path: path.join(ARTIFACTS, 'alerts-page.png'), fullPage: true });

  await silenceRow.locator('button[data-delete]').click();
  await silenceRow.waitFor({ state: 'detached', timeout: 10_000 });
  const after = await api('/v1/alerts?limit=0');
  assert.equal(after.silences.some((s) => s.id === silence.id), false, 'deleted in the API');
  assert.equal((await call(`/v1/silences/${silence.id}`, { method: 'DELETE' })).status, 404, 'and gone for good');
});

test('the banner and the alerts page speak Italian', { timeout: 60_000 }, async () => {
  const phone = await openPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, locale: 'it-IT' });
  try {
    const { page } = phone;
    await page.goto(`${BASE}/`);
    const link = page.locator('#alert-banner a[data-alert]').filter({ has: page.locator(`bdi:text-is(${JSON.stringify(CAMPAIGN)})`) });
    await link.waitFor({ timeout: 10_000 });
    const text = (await link.textContent()).replace(/\s+/g, ' ');
    assert.match(text, /Critico/, text);
    assert.match(text, /30,00\s€/u, `money in Italian: ${text}`);
    assert.match(await page.textContent('#alert-banner .title'), /allarm[ei] attiv[oi]/);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than the phone`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'alerts-banner-phone.png') });

    await page.click('#alert-banner a.all');
    await page.waitForURL(`${BASE}/alerts`);
    await page.waitForSelector('table#firing tr[data-alert]', { timeout: 10_000 });
    assert.equal((await page.textContent('#firing-title')).trim(), 'Attivi');
    assert.equal((await page.textContent('#silence-submit')).trim(), 'Crea il silenziamento');
    await page.click('#lang-toggle');
    assert.equal((await page.textContent('#firing-title')).trim(), 'Firing');
    assert.deepEqual(phone.errors, [], 'no script errors on the phone');
  } finally {
    await phone.context.close();
  }
  assert.deepEqual(desktop.errors, [], 'no script errors on the desktop');
});
