// Browser test of the triggers page (`/triggers`): the numbers it shows per trigger and per
// destination equal `GET /v1/triggers`, and it speaks Italian and English.
//
// Runs with Node's test runner and playwright-core driving the system's Chromium, against a
// server configured with (crates/vedetta/tests/browser.rs starts one):
//
//   [[triggers]] name = "feed"  kind = "conversion_feed"  notify = ["crm-down"]
//   [[triggers]] name = "vip"   kind = "tag"  tag = "VIP"  on = "purchase_over"  min_value = 200
//                notify = ["crm-down"]
//   [[alerts.destinations]] name = "crm-down"  kind = "webhook"  format = "seed"
//                interval = "1s"  url = a closed local port (every delivery fails: the
//                outbox holds what the triggers queued)
//
//   VEDETTA_URL=http://127.0.0.1:8080 node --test tests/browser/triggers.test.mjs
//
// The test makes the triggers fire itself: three purchases with marketing consent (one over
// 200 €) and one without, by users unique to the run, in the last minute.

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

const RUN = `tr-${Date.now().toString(36)}`;
const DESTINATION = 'crm-down';
const TRIGGER_FIELDS = ['firings_last_hour', 'firings_last_day', 'users_sent', 'signals', 'withheld_no_consent',
  'delivery_failures'];

let browser;
let before_; // /v1/triggers before the test's events

async function api(pathname, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (API_KEY) headers.authorization = `Bearer ${API_KEY}`;
  const response = await fetch(`${BASE}${pathname}`, { ...init, headers });
  const text = await response.text();
  if (response.status >= 300) throw new Error(`${init.method || 'GET'} ${pathname} answered ${response.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}

async function until(what, check, timeoutMs = 20_000, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last.ok) return last;
    if (Date.now() > deadline) assert.fail(`${what}, not within ${timeoutMs} ms: ${last.why}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

const trigger = (answer, name) => answer.triggers.find((t) => t.name === name);
const destination = (answer, name) => answer.destinations.find((d) => d.destination === name);

before(async () => {
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  } catch (error) {
    throw new Error(`cannot launch Chromium at ${CHROMIUM}: ${error.message.split('\n')[0]}`);
  }
  await mkdir(ARTIFACTS, { recursive: true });
  before_ = await api('/v1/triggers');
  assert.ok(trigger(before_, 'feed') && trigger(before_, 'vip') && destination(before_, DESTINATION),
    `the server must run the triggers and destination in the header of this file: ${JSON.stringify(before_)}`);

  const ts = Date.now() - 30_000;
  const purchase = (who, value, marketing) => ({
    udid: `${RUN}-${who}`, type: 'purchase', ts, value, currency: 'EUR', order_id: `${RUN}-${who}`,
    channel: 'email', campaign: `${RUN}-newsletter`, consent: { marketing },
  });
  const intake = await api('/v1/events', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify([purchase('anna', 40, true), purchase('bruno', 60, true), purchase('carla', 250, true),
      purchase('dario', 80, false)]),
  });
  assert.equal(intake.accepted, 4, `events refused: ${JSON.stringify(intake)}`);

  // Three users sent and one withheld by the feed, one by the vip tag; their pushes
  // flushed into the outbox, where they wait (the destination is down).
  await until('the triggers fire and their pushes wait in the outbox', async () => {
    const answer = await api('/v1/triggers');
    const feed = trigger(answer, 'feed');
    const vip = trigger(answer, 'vip');
    const was = (name, field) => trigger(before_, name)[field];
    const ok = feed.users_sent - was('feed', 'users_sent') === 3
      && feed.withheld_no_consent - was('feed', 'withheld_no_consent') === 1
      && vip.users_sent - was('vip', 'users_sent') === 1
      && answer.pending === 0
      && destination(answer, DESTINATION).depth >= 1
      && destination(answer, DESTINATION).head_attempts >= 1;
    return { ok, why: JSON.stringify(answer) };
  }, 30_000);
});

after(async () => {
  if (browser) await browser.close();
});

test('the triggers page shows the numbers of /v1/triggers, in English and Italian', async () => {
  const context = await browser.newContext({ locale: 'en-GB' });
  if (API_KEY) await context.addInitScript((key) => localStorage.setItem('vedetta.apiKey', key), API_KEY);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
  page.on('console', (message) => { if (message.type() === 'error') errors.push(`console: ${message.text()}`); });
  page.on('response', (response) => { if (response.status() >= 400) errors.push(`${response.status()} from ${response.url()}`); });

  // The dashboard links to the page.
  await page.goto(`${BASE}/`);
  await page.click('#triggers-link');
  await page.waitForURL(`${BASE}/triggers`);
  await page.waitForSelector('tr[data-trigger="feed"] td[data-field="users_sent"]');
  assert.equal(await page.textContent('h1'), 'Triggers');

  // Per trigger, every number equals the API's (fetched around the page's own poll; they
  // do not move now that the test's events are counted).
  await until('the trigger table equals /v1/triggers', async () => {
    const answer = await api('/v1/triggers');
    const shown = await page.$$eval('tr[data-trigger]', (rows) => rows.map((row) => [row.dataset.trigger,
      Object.fromEntries([...row.querySelectorAll('td[data-field]')].map((td) => [td.dataset.field, Number(td.dataset.value)]))]));
    const want = answer.triggers.map((t) => [t.name, Object.fromEntries(TRIGGER_FIELDS.map((f) => [f, t[f]]))]);
    return { ok: JSON.stringify(shown) === JSON.stringify(want), why: `page ${JSON.stringify(shown)}, API ${JSON.stringify(want)}` };
  });
  const answer = await api('/v1/triggers');
  const feed = trigger(answer, 'feed');
  // The firing history records the users sent (not the withheld one): three in the last
  // hour and day, by event time.
  const was = trigger(before_, 'feed');
  assert.equal(feed.firings_last_hour - was.firings_last_hour, 3, JSON.stringify(feed));
  assert.equal(feed.firings_last_day - was.firings_last_day, 3, JSON.stringify(feed));
  assert.equal(trigger(answer, 'vip').firings_last_hour - trigger(before_, 'vip').firings_last_hour, 1);

  // Per destination: the depth equals the API's, the oldest message's age is the API's
  // within the time between the two reads, and the head's error is shown.
  await until('the destination table equals /v1/triggers', async () => {
    const api_ = destination(await api('/v1/triggers'), DESTINATION);
    const row = await page.$eval(`tr[data-destination="${DESTINATION}"]`, (tr) => Object.fromEntries(
      [...tr.querySelectorAll('td[data-field]')].map((td) => [td.dataset.field, td.dataset.value ?? td.textContent])));
    const ok = Number(row.depth) === api_.depth && api_.depth >= 1
      && Math.abs(Number(row.oldest_age_seconds) - api_.oldest_age_seconds) <= 5
      && Number(row.oldest_age_seconds) > 0;
    return { ok, why: `page ${JSON.stringify(row)}, API ${JSON.stringify(api_)}` };
  });
  const error = await page.textContent(`tr[data-destination="${DESTINATION}"] td[data-field="head_last_error"]`);
  assert.ok(error.length > 1, `the head's last error is shown: ${error}`);
  // The failed deliveries of the feed's pushes, with the error the destination's head shows.
  await until('the feed shows its failed deliveries', async () => {
    const shown = await page.textContent('tr[data-trigger="feed"] td[data-field-text="last_delivery_error"]');
    const feedNow = trigger(await api('/v1/triggers'), 'feed');
    const ok = feedNow.delivery_failures >= 1 && typeof feedNow.last_delivery_error === 'string'
      && shown === feedNow.last_delivery_error;
    return { ok, why: `page ${shown}, API ${JSON.stringify(feedNow)}` };
  });
  // Per trigger and destination (stored numbers): the page's equal the API's.
  await until('the deliveries table equals /v1/triggers', async () => {
    const answer_ = await api('/v1/triggers');
    const want = answer_.triggers.flatMap((t) => (t.deliveries || []).map((d) => [t.name, d.destination, d.delivered, d.failed_attempts, d.dead]));
    const shown = await page.$$eval('tr[data-delivery-trigger]', (rows) => rows.map((row) => [row.dataset.deliveryTrigger,
      row.dataset.deliveryDestination,
      ...['delivered', 'failed_attempts', 'dead'].map((f) => Number(row.querySelector(`td[data-field="${f}"]`).dataset.value))]));
    const feedRow = want.find((row) => row[0] === 'feed' && row[1] === DESTINATION);
    const ok = JSON.stringify(shown) === JSON.stringify(want) && feedRow && feedRow[3] >= 1;
    return { ok, why: `page ${JSON.stringify(shown)}, API ${JSON.stringify(want)}` };
  });
  // The latest firings, each with its outcome at the destination: still in the outbox
  // (the destination's port is closed), as /v1/triggers/firings says.
  await until('the firings table shows each outcome', async () => {
    const listed = (await api('/v1/triggers/firings?limit=20')).firings;
    const want = listed.map((f) => [f.trigger, f.outcomes.map((o) => [o.destination, o.state])]);
    const shown = await page.$$eval('tr[data-firing-trigger]', (rows) => rows.map((row) => [row.dataset.firingTrigger,
      [...row.querySelectorAll('[data-outcome-destination]')].map((d) => [d.dataset.outcomeDestination, d.dataset.state])]));
    const ok = JSON.stringify(shown) === JSON.stringify(want)
      && want.some(([name, outcomes]) => name === 'feed' && outcomes.length === 1 && outcomes[0][1] === 'queued');
    return { ok, why: `page ${JSON.stringify(shown)}, API ${JSON.stringify(want)}` };
  });
  assert.ok((await page.textContent('#firings')).includes('in the outbox'));
  await page.screenshot({ path: path.join(ARTIFACTS, 'triggers-page.png'), fullPage: true });

  // Italian, and back.
  await page.click('#lang-toggle');
  assert.equal(await page.textContent('h1'), 'Trigger');
  assert.equal(await page.getAttribute('html', 'lang'), 'it');
  const headers = await page.$$eval('#triggers th[scope="col"]', (ths) => ths.map((th) => th.textContent));
  assert.ok(headers.includes('Utenti inviati'), JSON.stringify(headers));
  await page.click('#lang-toggle');
  assert.equal(await page.textContent('h1'), 'Triggers');

  assert.deepEqual(errors, []);
  await context.close();
});
