// First paint of the dashboard, measured cold in Chromium (the "first paint ≤ 1 s with 30 days
// of data at 1-minute granularity" acceptance point of the dashboard issue; the figures and
// how the data was built are in docs/benchmarks.md, "Dashboard (issue 4)").
//
//   node tests/browser/first_paint.mjs [--runs 10] [--ranges 24h,1h,7d,30d] [--json out.json]
//
// Environment: VEDETTA_URL (default http://127.0.0.1:8080), VEDETTA_API_KEY (stored in the
// page's localStorage before it loads, so no key form is involved), CHROMIUM (default
// /usr/bin/chromium). Uses playwright-core with the system's Chromium, never a download.
//
// Every run is a new browser context (its own empty HTTP cache) with the cache also disabled
// through the DevTools protocol, loading `/#range=<r>` (no hash for the default 24h). The
// browser process itself stays up between runs: what is timed is the page, not Chromium's
// start. All times are milliseconds since navigation start (`performance.timeOrigin`),
// measured inside the page:
//
//   fcp      first-contentful-paint (PerformanceObserver 'paint'): the skeleton is on screen
//   tiles    every `#tiles [data-kpi]` tile has a non-empty data-value (numbers shown)
//   chart    the chart's current-period line is drawn
//   tables   every breakdown table of the view has its rows (no loading row left)
//   deltas   every tile shows its change against the previous period (needs /v1/kpis)
//
// and, to tell the server's share from the page's:
//
//   app      app.js has run and created its first EventSource (the primary stream)
//   sse      the primary stream's first `kpis` event reached the page (the server's answer
//            to the view's query; `sse − app` adds the browser's connection set-up)
//   prev     the previous-period /v1/kpis fetch finished (Resource Timing responseEnd)
//   req, hdr, msg   DevTools network events of the primary stream, ms after the document's
//            request: request sent, response headers in, first `kpis` event in from the
//            server (so `msg − req` is the server's share with the transfer, `tiles − msg`
//            the page's parsing and rendering)
//
// Prints one line per run and, per range, the median and max of each figure.

import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { chromium } from 'playwright-core';

const BASE = (process.env.VEDETTA_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const API_KEY = process.env.VEDETTA_API_KEY || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}
const RUNS = Number(option('runs', '10'));
const RANGES = option('ranges', '24h,1h,7d,30d').split(',');
const JSON_OUT = option('json', '');
const TIMEOUT_MS = Number(option('timeout', '20000'));
const FIGURES = ['fcp', 'tiles', 'chart', 'tables', 'deltas', 'app', 'req', 'hdr', 'msg', 'sse', 'prev'];

// Installed before any page script: records paint entries, the moments the page reaches each
// state (checked on every DOM mutation), and the first `kpis` event of every EventSource.
function instrument() {
  const vm = { fcp: null, tiles: null, chart: null, tables: null, deltas: null, app: null, streams: [] };
  window.__vm = vm;
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) if (entry.name === 'first-contentful-paint') vm.fcp = entry.startTime;
  }).observe({ type: 'paint', buffered: true });

  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      if (vm.app == null) vm.app = performance.now();
      const record = { url: String(url), opened: performance.now(), open: null, first: null, events: 0 };
      vm.streams.push(record);
      // Registered before the page's own listeners, so they run first.
      this.addEventListener('open', () => { if (record.open == null) record.open = performance.now(); });
      this.addEventListener('kpis', () => { record.events += 1; if (record.first == null) record.first = performance.now(); });
    }
  };

  const check = () => {
    const now = performance.now();
    const tiles = [...document.querySelectorAll('#tiles [data-kpi]')];
    if (vm.tiles == null && tiles.length && tiles.every((t) => (t.getAttribute('data-value') || '') !== '')) vm.tiles = now;
    if (vm.deltas == null && tiles.length && tiles.every((t) => t.querySelector('.delta[data-value]'))) vm.deltas = now;
    if (vm.chart == null && document.querySelector('#chart svg path.line.current')) vm.chart = now;
    const tables = [...document.querySelectorAll('#breakdowns table[data-table]')];
    if (vm.tables == null && tables.length &&
        tables.every((t) => t.tBodies[0] && t.tBodies[0].rows.length > 0 && !t.querySelector('tr.loading-row'))) {
      vm.tables = now;
      vm.tableNames = tables.map((t) => `${t.dataset.table}:${t.tBodies[0].rows.length}`);
    }
  };
  new MutationObserver(check).observe(document, { subtree: true, childList: true, attributes: true });
}

async function oneRun(browser, range) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-GB' });
  try {
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (error) => errors.push(error.message));
    const cdp = await context.newCDPSession(page);
    // The network's view of the same load (DevTools timestamps, relative to the document's
    // request): when the primary stream was requested, answered (headers), and when its
    // first `kpis` event arrived from the server, before the page's script handled it.
    const net = { doc: null, req: null, hdr: null, msg: null, primaryId: null };
    cdp.on('Network.requestWillBeSent', (e) => {
      const path = new URL(e.request.url).pathname;
      if (net.doc == null && e.type === 'Document') net.doc = e.timestamp;
      if (path === '/v1/stream' && net.primaryId == null) { net.primaryId = e.requestId; net.req = e.timestamp; }
    });
    cdp.on('Network.responseReceived', (e) => { if (e.requestId === net.primaryId && net.hdr == null) net.hdr = e.timestamp; });
    cdp.on('Network.eventSourceMessageReceived', (e) => {
      if (e.requestId === net.primaryId && e.eventName === 'kpis' && net.msg == null) net.msg = e.timestamp;
    });
    await cdp.send('Network.enable');
    await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
    if (API_KEY) await page.addInitScript((key) => localStorage.setItem('vedetta.apiKey', key), API_KEY);
    await page.addInitScript(instrument);
    const url = range === '24h' ? `${BASE}/` : `${BASE}/#range=${range}`;
    await page.goto(url, { waitUntil: 'commit' });
    let timedOut = false;
    await page.waitForFunction(() => {
      const vm = window.__vm;
      return vm && vm.fcp != null && vm.tiles != null && vm.chart != null && vm.tables != null && vm.deltas != null;
    }, null, { timeout: TIMEOUT_MS, polling: 50 }).catch(() => { timedOut = true; });
    const since = (t) => (t == null || net.doc == null ? null : (t - net.doc) * 1000);
    const run = await page.evaluate(([timedOut, errors]) => {
      const vm = window.__vm;
      const primary = vm.streams[0];
      const previous = performance.getEntriesByType('resource').find((e) => new URL(e.name).pathname === '/v1/kpis');
      const nav = performance.getEntriesByType('navigation')[0];
      return {
        fcp: vm.fcp, tiles: vm.tiles, chart: vm.chart, tables: vm.tables, deltas: vm.deltas, app: vm.app,
        sse: primary && primary.first, prev: previous ? previous.responseEnd : null,
        html: nav ? nav.responseEnd : null, domContentLoaded: nav ? nav.domContentLoadedEventStart : null,
        assets: performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname.startsWith('/assets/'))
          .map((e) => ({ path: new URL(e.name).pathname, start: e.startTime, end: e.responseEnd })),
        tableRows: vm.tableNames || null,
        streams: vm.streams.map((s) => ({ query: new URL(s.url, location.href).search, opened: s.opened, first: s.first })),
        timedOut, errors,
      };
    }, [timedOut, errors]);
    return { ...run, req: since(net.req), hdr: since(net.hdr), msg: since(net.msg) };
  } finally {
    await context.close();
  }
}

// How busy the whole machine was (all CPUs, from /proc/stat, in clock ticks): the browser,
// the server and anything else running, as % of one core. Linux only; null elsewhere.
function busyTicks() {
  try {
    const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const [user, nice, system, , , irq, softirq, steal] = cpu;
    return user + nice + system + irq + softirq + steal;
  } catch { return null; }
}
const CLK_TCK = 100; // USER_HZ on Linux

const round = (ms) => (ms == null ? null : Math.round(ms));
function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
const results = {};
try {
  console.log(`# ${BASE}, Chromium ${browser.version()}, ${RUNS} cold runs per range, ms since navigation start`);
  // One unmeasured load first, so that the first measured run does not include the browser's
  // own first-use costs (profile, fonts).
  await oneRun(browser, '24h');
  const busy = {};
  for (const range of RANGES) {
    results[range] = [];
    const started = { at: performance.now(), ticks: busyTicks() };
    for (let i = 0; i < RUNS; i += 1) {
      const run = await oneRun(browser, range);
      results[range].push(run);
      const figures = FIGURES.map((k) => `${k} ${round(run[k]) ?? '—'}`).join('  ');
      console.log(`${range.padStart(3)} run ${String(i + 1).padStart(2)}: ${figures}` +
        `${run.timedOut ? '  TIMED OUT' : ''}${run.errors.length ? `  errors: ${run.errors.join('; ')}` : ''}`);
    }
    const ticks = busyTicks();
    busy[range] = ticks == null ? null : (100 * (ticks - started.ticks) / CLK_TCK) / ((performance.now() - started.at) / 1000);
  }
  console.log('\nrange  figure   median     max   (n)');
  for (const range of RANGES) {
    for (const key of FIGURES) {
      const values = results[range].map((r) => r[key]).filter((v) => v != null);
      if (!values.length) { console.log(`${range.padStart(5)}  ${key.padEnd(6)}        —       —   (0)`); continue; }
      console.log(`${range.padStart(5)}  ${key.padEnd(6)} ${String(round(median(values))).padStart(7)} ${String(round(Math.max(...values))).padStart(7)}   (${values.length})`);
    }
    if (busy[range] != null) console.log(`${range.padStart(5)}  machine busy while measuring: ${busy[range].toFixed(0)} % of one core (all processes)`);
    const rows = results[range].at(-1).tableRows;
    if (rows) console.log(`${range.padStart(5)}  table rows (last run): ${rows.join(', ')}`);
  }
  if (JSON_OUT) await writeFile(JSON_OUT, JSON.stringify({ base: BASE, runs: RUNS, busy, results }, null, 2));
} finally {
  await browser.close();
}
