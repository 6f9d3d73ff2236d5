// The live stream's delta protocol (`/v1/stream?deltas=true`) and the page's code that
// applies it (crates/vedetta/assets/dashboard/kpi-delta.js).
//
//   VEDETTA_URL=http://127.0.0.1:8080 node --test stream.test.mjs
//
// The unit tests need no server. The live test (run by crates/vedetta/tests/browser.rs
// against a real server) watches one view twice at once, with and without deltas: both
// connections get the same frames, so every delta applied to the answer before it must
// give exactly the whole answer the other connection received under the same event id.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';

const source = readFileSync(fileURLToPath(new URL('../../crates/vedetta/assets/dashboard/kpi-delta.js', import.meta.url)), 'utf8');
const sandbox = {};
sandbox.globalThis = sandbox;
vm.runInNewContext(source, sandbox);
const { apply } = sandbox.VedettaKpiDelta;
// Objects made in the sandbox have its prototypes; compare them as plain JSON.
const plain = (value) => JSON.parse(JSON.stringify(value));

const row = (window_start, channel, conversions) => ({ window_start, window_end: `${window_start}+1`, channel, conversions });
const totals = (conversions) => ({ conversions });

test('upserts replace and add rows, removals drop them, order is the server\'s', () => {
  const before = {
    granularity: '1m', from: 'F0', to: 'T0', group_by: ['channel'],
    rows: [row('2026-01-01T10:00:00.000Z', 'email', 1), row('2026-01-01T10:00:00.000Z', 'search', 2), row('2026-01-01T10:01:00.000Z', 'email', 3)],
    totals: totals(6),
  };
  const frozen = JSON.stringify(before);
  const delta = {
    base: 7, granularity: '1m', time_zone: 'Europe/Rome', from: 'F1', to: 'T1', group_by: ['channel'], totals: totals(9),
    upsert: [row('2026-01-01T10:02:00.000Z', 'affiliate', 4), row('2026-01-01T10:01:00.000Z', 'email', 5)],
    remove: [{ window_start: '2026-01-01T10:00:00.000Z', channel: 'email' }, { window_start: '2026-01-01T10:00:00.000Z', channel: 'search' }],
  };
  assert.deepEqual(plain(apply(before, delta, false)), {
    granularity: '1m', time_zone: 'Europe/Rome', from: 'F1', to: 'T1', group_by: ['channel'],
    rows: [row('2026-01-01T10:01:00.000Z', 'email', 5), row('2026-01-01T10:02:00.000Z', 'affiliate', 4)],
    totals: totals(9),
  });
  assert.equal(JSON.stringify(before), frozen, 'the answer it was applied to is left as it was');
});

test('the attribution of the whole answer carries over: deltas do not repeat it', () => {
  const attribution = { model: 'last_non_direct', lookback_days: 30 };
  const before = { granularity: '1h', from: 'F0', to: 'T0', group_by: [], rows: [], totals: totals(0), attribution };
  const delta = { base: 1, granularity: '1h', from: 'F1', to: 'T1', group_by: [], totals: totals(1), upsert: [], remove: [] };
  assert.deepEqual(plain(apply(before, delta, false)).attribution, attribution);
});

test('a rollup answer keys rows by dimensions only and gives each the new range', () => {
  const before = {
    granularity: '1h', from: 'F0', to: 'T0', group_by: ['region'],
    rows: [{ window_start: 'F0', window_end: 'T0', region: 'IT-25', conversions: 1 }, { window_start: 'F0', window_end: 'T0', region: 'IT-62', conversions: 2 }],
    totals: totals(3),
  };
  const delta = {
    base: 1, granularity: '1h', from: 'F1', to: 'T1', group_by: ['region'], totals: totals(4),
    upsert: [{ window_start: 'F1', window_end: 'T1', region: 'IT-25', conversions: 2 }], remove: [],
  };
  assert.deepEqual(plain(apply(before, delta, true)).rows, [
    { window_start: 'F1', window_end: 'T1', region: 'IT-25', conversions: 2 },
    { window_start: 'F1', window_end: 'T1', region: 'IT-62', conversions: 2 },
  ]);
});

test('rows sort by window, then by each grouped dimension in code-point order', () => {
  const r = (channel, campaign) => ({ window_start: 'W', channel, campaign });
  const delta = {
    base: 1, granularity: '1h', from: 'F', to: 'T', group_by: ['channel', 'campaign'], totals: {}, remove: [],
    upsert: [r('search', 'b'), r('email', 'z'), r('search', 'a'), r('search', '\u{1F600}'), r('search', '\uFFFD')],
  };
  const empty = { granularity: '1h', from: 'F', to: 'T', group_by: ['channel', 'campaign'], rows: [], totals: {} };
  assert.deepEqual(plain(apply(empty, delta, false)).rows.map((x) => `${x.channel}/${x.campaign}`),
    ['email/z', 'search/a', 'search/b', 'search/\uFFFD', 'search/\u{1F600}']);
});

// ---------------------------------------------------------------- against a server

const BASE = process.env.VEDETTA_URL ? new URL(process.env.VEDETTA_URL.replace(/\/+$/, '')) : null;
const API_KEY = process.env.VEDETTA_API_KEY || '';

// A raw SSE connection that keeps every event: { id, event, data, bytes }.
function openStream(query) {
  const events = [];
  const headers = { accept: 'text/event-stream' };
  if (API_KEY) headers.authorization = `Bearer ${API_KEY}`;
  const request = http.get({ host: BASE.hostname, port: BASE.port, path: `/v1/stream?${query}`, headers, agent: false }, (response) => {
    assert.equal(response.statusCode, 200, `stream ${query}: HTTP ${response.statusCode}`);
    response.setEncoding('utf8');
    let buffer = '';
    let current = { id: null, event: 'message', data: [] };
    let lastId = null;
    response.on('data', (chunk) => {
      buffer += chunk;
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line === '') {
          if (current.data.length) {
            if (current.id != null) lastId = current.id;
            const data = current.data.join('\n');
            events.push({ id: lastId, event: current.event, data: JSON.parse(data), bytes: Buffer.byteLength(data) });
          }
          current = { id: null, event: 'message', data: [] };
        } else if (line.startsWith('id:')) current.id = line.slice(3).trim();
        else if (line.startsWith('event:')) current.event = line.slice(6).trim();
        else if (line.startsWith('data:')) current.data.push(line.slice(5).replace(/^ /, ''));
      }
    });
  });
  request.on('error', () => {});
  return { events, close: () => request.destroy() };
}

async function post(path, body) {
  const headers = { 'content-type': 'application/json' };
  if (API_KEY) headers.authorization = `Bearer ${API_KEY}`;
  const response = await fetch(new URL(path, BASE), { method: 'POST', headers, body: JSON.stringify(body) });
  assert.equal(response.status, 200, `${path}: HTTP ${response.status} ${await response.text()}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test('every delta, applied to the answer before it, gives the whole answer of the same frame', { skip: !BASE && 'VEDETTA_URL is not set', timeout: 60_000 }, async () => {
  const views = [
    { query: 'granularity=1m&last=5m&group_by=channel', rollup: false },
    { query: 'granularity=1m&last=5m&group_by=channel,device', rollup: false },
    { query: 'granularity=1h&last=24h&group_by=region&rollup=range', rollup: true },
  ];
  const streams = views.map((view) => ({ ...view, whole: openStream(view.query), deltas: openStream(`${view.query}&deltas=true`) }));
  const run = `stream-test-${Date.now()}`;
  const devices = ['mobile', 'desktop', 'tablet'];
  const regions = ['Lombardia', 'Lazio', 'Sicilia', 'Veneto'];
  // Purchases over the last four minutes, in a few channels, regions and devices, for 8 s.
  const until = Date.now() + 8_000;
  for (let i = 0; Date.now() < until; i += 1) {
    await post('/v1/events', {
      udid: `${run}-${i}`, type: 'purchase', ts: new Date(Date.now() - (i % 4) * 60_000).toISOString(), value: 10 + i, currency: 'EUR',
      channel: `${run}-${i % 3}`, device: devices[i % 3], region: regions[i % 4],
    });
    await sleep(150);
  }
  await sleep(1_500);
  let checked = 0;
  let deltaBytes = 0;
  let wholeBytes = 0;
  for (const stream of streams) {
    stream.whole.close();
    stream.deltas.close();
    const whole = new Map(stream.whole.events.filter((e) => e.event === 'kpis').map((e) => [e.id, e]));
    const received = stream.deltas.events.filter((e) => e.event === 'kpis' || e.event === 'kpis-delta');
    assert.equal(received[0]?.event, 'kpis', `${stream.query}: a stream starts with the whole answer`);
    assert.ok(received.length >= 5, `${stream.query}: only ${received.length} answers in 9.5 s`);
    let answer = null;
    let answerId = null;
    for (const event of received) {
      if (event.event === 'kpis') {
        answer = event.data;
      } else {
        assert.equal(String(event.data.base), answerId, `${stream.query}: delta ${event.id} is based on ${event.data.base}, the stream was at ${answerId}`);
        answer = plain(apply(answer, event.data, stream.rollup));
        const expected = whole.get(event.id);
        if (expected) {
          assert.deepEqual(answer, expected.data, `${stream.query}: frame ${event.id}`);
          checked += 1;
          deltaBytes += event.bytes;
          wholeBytes += expected.bytes;
        }
      }
      answerId = event.id;
    }
  }
  assert.ok(checked >= 10, `only ${checked} deltas could be checked against a whole answer`);
  assert.ok(deltaBytes < wholeBytes / 2, `deltas (${deltaBytes} B) are not much smaller than whole answers (${wholeBytes} B)`);
  console.log(`# ${checked} deltas equal the whole answers of their frames; ${deltaBytes} B of deltas for ${wholeBytes} B of whole answers`);
});
