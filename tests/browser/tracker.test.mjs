// Browser test of the tracker: a page served from another origin (this test's own HTTP
// server, on PAGE_PORT) loads /v1/tracker.js from Vedetta with a site key, as a shop would.
//
//   VEDETTA_URL=http://127.0.0.1:8080 PAGE_PORT=8081 SITE_KEY=pub_test node --test tests/browser/tracker.test.mjs
//
// Vedetta must list http://127.0.0.1:PAGE_PORT (and not http://localhost:PAGE_PORT) as the
// site's origin; crates/vedetta/tests/browser_tracker.rs starts one so and then checks what
// arrived (channels, campaigns, consent) through the API and the log.
//
// - with consent: a landing page view with UTM parameters, a single-page navigation and a
//   purchase, all from one stored id;
// - consent refused: a page view, and nothing stored in the browser;
// - a page on an origin the site does not list: nothing accepted.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { chromium } from 'playwright-core';

const BASE = (process.env.VEDETTA_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const PAGE_PORT = Number(process.env.PAGE_PORT || 8081);
const SITE = process.env.SITE_KEY || 'pub_test';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let browser;
let pages;

// The shop: every path serves the same page; `consent=yes|no` says what the visitor chose.
function shopPage(url) {
  const consent = new URL(url, 'http://x').searchParams.get('consent') === 'yes';
  return `<!doctype html><html><head><title>Bottega</title>
<script>
  window.vedetta = window.vedetta || function () { (vedetta.q = vedetta.q || []).push(arguments); };
  vedetta('consent', { analytics: ${consent}, marketing: ${consent} });
</script>
<script defer src="${BASE}/v1/tracker.js" data-site="${SITE}"></script>
</head><body>
<button id="product" onclick="history.pushState({}, '', '/shop/product/42')">Prodotto</button>
<button id="buy" onclick="vedetta('track', 'purchase', {value: 89.5, currency: 'EUR', order_id: 'ord-tracker-1', product_id: 'p-42', colour: 'rosso'})">Compra</button>
</body></html>`;
}

async function logEnd() {
  const response = await fetch(`${BASE}/v1/status`);
  assert.equal(response.status, 200);
  return (await response.json()).log_end_offset;
}

async function waitForLog(atLeast, what) {
  const deadline = Date.now() + 15000;
  for (;;) {
    const end = await logEnd();
    if (end >= atLeast) return end;
    if (Date.now() > deadline) assert.fail(`${what}: the log holds ${end} records, expected ${atLeast}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  pages = http.createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    response.end(shopPage(request.url));
  });
  await new Promise((resolve) => pages.listen(PAGE_PORT, '127.0.0.1', resolve));
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await new Promise((resolve) => pages?.close(resolve));
});

test('with consent: landing page view with UTM, an SPA navigation and a purchase arrive under one stored id', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const start = await logEnd();
  await page.goto(`http://127.0.0.1:${PAGE_PORT}/shop/?utm_source=google&utm_medium=cpc&utm_campaign=tracker_brand&consent=yes`);
  await page.waitForFunction(() => window.__vedetta === true);
  await waitForLog(start + 1, 'the landing page view');
  await page.click('#product');
  await page.click('#buy');
  await waitForLog(start + 3, 'the navigation and the purchase');
  const id = await page.evaluate(() => localStorage.getItem('vedetta_id'));
  assert.ok(id && id.length >= 16, `a first-party id is stored with consent, got ${id}`);
  assert.equal(page.url(), `http://127.0.0.1:${PAGE_PORT}/shop/product/42`);
  await context.close();
});

test('consent refused: the page view arrives, and no id is stored in the browser', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const start = await logEnd();
  await page.goto(`http://127.0.0.1:${PAGE_PORT}/shop/?utm_source=newsletter&utm_medium=email&utm_campaign=tracker_cookieless&consent=no`);
  await page.waitForFunction(() => window.__vedetta === true);
  await waitForLog(start + 1, 'the cookieless page view');
  const stored = await page.evaluate(() => ({ local: Object.keys(localStorage), cookies: document.cookie }));
  assert.deepEqual(stored.local, [], 'nothing in localStorage');
  assert.equal(stored.cookies, '', 'no cookie');
  assert.deepEqual(await context.cookies(), []);
  await context.close();
});

test('a page on an origin the site does not list is refused', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const refused = [];
  page.on('response', (response) => {
    if (response.url().startsWith(`${BASE}/v1/events`)) refused.push(response.status());
  });
  const start = await logEnd();
  // localhost and 127.0.0.1 are different origins: only the second is the site's.
  await page.goto(`http://localhost:${PAGE_PORT}/shop/?utm_campaign=tracker_forbidden&consent=yes`);
  await page.waitForFunction(() => window.__vedetta === true);
  await page.click('#buy');
  // The tracker batches for a second; give it three.
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(await logEnd(), start, 'nothing of the foreign page was stored');
  // Beacons may or may not surface as page responses; when they do, they are 403s.
  for (const status of refused) assert.equal(status, 403);
  await context.close();
});
