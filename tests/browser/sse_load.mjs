// What serving the dashboard's live streams costs the server (the "serving SSE to 100 clients
// costs ≤ 5% of one core" acceptance point of the dashboard issue; figures and commands in
// docs/benchmarks.md, "Dashboard (issue 4)").
//
//   node tests/browser/sse_load.mjs --pid <server pid> [--clients 100] [--views overview]
//        [--seconds 60] [--warmup 10] [--ramp 5] [--load-pid <generator pid>] [--previous]
//        [--no-rollup] [--no-deltas] [--probe]
//
// Opens `--clients` simulated dashboards against VEDETTA_URL (default http://127.0.0.1:8080).
// Each one opens the streams of a view the way the page does, one HTTP/1.1 connection per
// stream (EventSource), the table streams after the primary one has answered:
//
//   --views overview   3 streams: granularity=1h&last=24h&group_by=channel, then …device and
//                      …region with rollup=range (the default view; the channel stream also
//                      feeds tiles and chart)
//   --views channel    1 stream: the overview's primary stream only
//   --views 1h | 7d | 30d   the overview of that range (3 streams)
//
// As the page, streams take deltas after their first answer (`deltas=true`) and only the
// primary one has `status` events; --no-deltas makes every push the whole answer, with
// status on every stream (the server before deltas).
//
// With --previous each client also fetches the previous-period /v1/kpis once a minute, as
// the page does. Clients connect over --ramp seconds; after --warmup seconds the CPU time of
// the server process (utime + stime from /proc/<pid>/stat) is sampled, and again --seconds
// later; so are the load generator's (--load-pid) and this script's own. `--clients 0` gives
// the baseline. Every event of every stream is parsed and counted, per client, to show the
// clients were live during the window (events per client per second, min / median / max).
//
// The cost of serving SSE is (server CPU with clients − server CPU without) as % of one core.
//
// With --probe, the "within 1 s of a KPI change" point is measured too: one more stream on
// the primary view parses its answers, and every 1.5–2.5 s (at random, so that the
// purchases land at every phase of the push cycle) of the measured window a purchase on a
// channel of its own is posted; the latency is from sending the POST to receiving the first
// `kpis` event that counts it (intake, processing, the push gap and the wire).

import http from 'node:http';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

const BASE = new URL((process.env.VEDETTA_URL || 'http://127.0.0.1:8080').replace(/\/+$/, ''));
const API_KEY = process.env.VEDETTA_API_KEY || '';

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] && !process.argv[i + 1].startsWith('--') ? process.argv[i + 1] : fallback;
}
const flag = (name) => process.argv.includes(`--${name}`);
const CLIENTS = Number(option('clients', '100'));
const VIEWS = option('views', 'overview');
const SECONDS = Number(option('seconds', '60'));
const WARMUP = Number(option('warmup', '10'));
const RAMP = Number(option('ramp', '5'));
const PID = option('pid', '');
const LOAD_PID = option('load-pid', '');
const PREVIOUS = flag('previous');
const PROBE = flag('probe');
if (!PID) {
  console.error('--pid <server pid> is required (the process whose CPU time is measured)');
  process.exit(2);
}

const RANGES = { '1h': ['1m', '60m', 3_600_000], '24h': ['1h', '24h', 86_400_000], '7d': ['1h', '7d', 7 * 86_400_000], '30d': ['1d', '30d', 30 * 86_400_000] };
function viewStreams() {
  const range = ['1h', '7d', '30d'].includes(VIEWS) ? VIEWS : '24h';
  const [granularity, last] = RANGES[range];
  const dims = VIEWS === 'channel' ? ['channel'] : ['channel', 'device', 'region'];
  // As the page: the table streams ask for one row per group (`rollup=range`); --no-rollup
  // for a server older than that parameter.
  const rollup = (i) => (i > 0 && !flag('no-rollup') ? { rollup: 'range' } : {});
  // As the page: only the primary stream carries `status` events.
  const status = (i) => (i > 0 && !flag('no-deltas') ? { status: 'false' } : {});
  const deltas = flag('no-deltas') ? {} : { deltas: 'true' };
  return { range, streams: dims.map((d, i) => new URLSearchParams({ granularity, last, group_by: d, ...rollup(i), ...status(i), ...deltas }).toString()) };
}
const VIEW = viewStreams();

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());
// utime and stime (fields 14 and 15 of /proc/<pid>/stat), in seconds.
function cpuTimes(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from the 3rd on
  return { user: Number(fields[11]) / CLK_TCK, system: Number(fields[12]) / CLK_TCK };
}
function cpuSeconds(pid) {
  const { user, system } = cpuTimes(pid);
  return user + system;
}
// All CPUs of the machine, busy time (everything but idle and iowait), to show how much of
// the machine the other processes took during the window.
function machineBusySeconds() {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = cpu;
  return (user + nice + system + irq + softirq + steal) / CLK_TCK;
}
const ownCpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };

// ---------------------------------------------------------------- one EventSource-like stream

class Stream {
  constructor(client, query, onKpisData = null) {
    this.client = client;
    this.query = query;
    this.onKpisData = onKpisData;
    this.counts = { kpis: 0, status: 0, other: 0 }; // `kpis` counts kpis-delta too
    this.bytes = 0;
    this.firstKpisMs = null;
    this.errors = 0;
    this.closed = false;
  }

  open(onFirstKpis) {
    const started = performance.now();
    const headers = { accept: 'text/event-stream', 'cache-control': 'no-cache' };
    if (API_KEY) headers.authorization = `Bearer ${API_KEY}`;
    this.request = http.get({ host: BASE.hostname, port: BASE.port || 80, path: `/v1/stream?${this.query}`, headers, agent: false }, (response) => {
      if (response.statusCode !== 200) { this.errors += 1; response.resume(); return; }
      response.setEncoding('utf8');
      let buffer = '';
      let event = 'message';
      let hasData = false;
      let data = '';
      response.on('data', (chunk) => {
        this.bytes += Buffer.byteLength(chunk);
        buffer += chunk;
        let newline;
        while ((newline = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, newline).replace(/\r$/, '');
          buffer = buffer.slice(newline + 1);
          if (line === '') { // dispatch
            if (hasData) {
              const kind = event === 'kpis-delta' ? 'kpis' : event in this.counts ? event : 'other';
              this.counts[kind] += 1;
              if (kind === 'kpis' && this.firstKpisMs == null) {
                this.firstKpisMs = performance.now() - started;
                if (onFirstKpis) onFirstKpis();
              }
              if (kind === 'kpis' && this.onKpisData) this.onKpisData(JSON.parse(data));
            }
            event = 'message';
            hasData = false;
            data = '';
          } else if (line.startsWith('event:')) {
            event = line.slice(6).trim();
          } else if (line.startsWith('data:')) {
            hasData = true; // the clients' payloads are not parsed: counting is enough
            if (this.onKpisData) data += (data ? '\n' : '') + line.slice(5).replace(/^ /, '');
          }
        }
      });
      response.on('end', () => { if (!this.closed) this.errors += 1; });
    });
    this.request.on('error', () => { if (!this.closed) this.errors += 1; });
  }

  close() {
    this.closed = true;
    if (this.request) this.request.destroy();
  }
}

// ---------------------------------------------------------------- one simulated dashboard

class Client {
  constructor(id) {
    this.id = id;
    this.streams = VIEW.streams.map((q) => new Stream(this, q));
    this.previousFetches = 0;
    this.previousErrors = 0;
  }

  open() {
    const [primary, ...others] = this.streams;
    let opened = false;
    const openOthers = () => { if (!opened) { opened = true; for (const s of others) s.open(); } };
    primary.open(openOthers);
    setTimeout(openOthers, 500); // as the page: the tables follow the primary, or after 0.5 s
    if (PREVIOUS) {
      const fetchPrevious = () => this.fetchPrevious();
      fetchPrevious();
      this.previousTimer = setInterval(fetchPrevious, 60_000);
    }
  }

  fetchPrevious() {
    const [granularity, , spanMs] = RANGES[VIEW.range];
    const to = Date.now() - spanMs;
    const params = new URLSearchParams({ granularity, from: new Date(to - spanMs).toISOString(), to: new Date(to).toISOString() });
    const headers = API_KEY ? { authorization: `Bearer ${API_KEY}` } : {};
    http.get({ host: BASE.hostname, port: BASE.port || 80, path: `/v1/kpis?${params}`, headers }, (response) => {
      response.resume();
      response.on('end', () => { if (response.statusCode === 200) this.previousFetches += 1; else this.previousErrors += 1; });
    }).on('error', () => { this.previousErrors += 1; });
  }

  events() { return this.streams.reduce((n, s) => n + s.counts.kpis + s.counts.status, 0); }

  close() {
    clearInterval(this.previousTimer);
    for (const s of this.streams) s.close();
  }
}

// ---------------------------------------------------------------- the run

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
function stats(values) {
  if (!values.length) return 'n/a';
  const sorted = [...values].sort((a, b) => a - b);
  const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  return `min ${sorted[0].toFixed(2)}  median ${q(0.5).toFixed(2)}  max ${sorted.at(-1).toFixed(2)}`;
}
async function serverStreamClients() {
  const headers = API_KEY ? { authorization: `Bearer ${API_KEY}` } : {};
  const status = await (await fetch(new URL('/v1/status', BASE), { headers })).json();
  return status;
}

// ---------------------------------------------------------------- the latency probe

class Probe {
  constructor() {
    this.channel = `sse-probe-${process.pid}-${Date.now()}`;
    this.sent = []; // performance.now() when the n-th purchase was sent
    this.latencies = [];
    this.errors = 0;
    // Whole answers: the probe reads every push's rows (same view, so the same frames).
    const query = new URLSearchParams(VIEW.streams[0]);
    query.delete('deltas');
    this.stream = new Stream(null, query.toString(), (answer) => this.seen(answer));
  }

  seen(answer) {
    const counted = answer.rows.filter((r) => r.channel === this.channel).reduce((n, r) => n + r.conversions, 0);
    while (this.latencies.length < Math.min(counted, this.sent.length)) {
      this.latencies.push(performance.now() - this.sent[this.latencies.length]);
    }
  }

  async post() {
    const event = { udid: `${this.channel}-${this.sent.length}`, type: 'purchase', ts: new Date().toISOString(), value: 1, currency: 'EUR', channel: this.channel };
    const headers = { 'content-type': 'application/json' };
    if (API_KEY) headers.authorization = `Bearer ${API_KEY}`;
    this.sent.push(performance.now());
    try {
      const response = await fetch(new URL('/v1/events', BASE), { method: 'POST', headers, body: JSON.stringify(event) });
      if (response.status !== 200) this.errors += 1;
      await response.arrayBuffer();
    } catch { this.errors += 1; }
  }
}
const probe = PROBE ? new Probe() : null;

const clients = Array.from({ length: CLIENTS }, (_, i) => new Client(i));
console.log(`# ${BASE.origin}: ${CLIENTS} clients × ${CLIENTS ? VIEW.streams.length : 0} streams (${VIEWS}, ${VIEW.streams.join(' | ')})` +
  `${PREVIOUS ? ', + previous-period /v1/kpis once a minute' : ''}; ramp ${RAMP} s, warm-up ${WARMUP} s, measured ${SECONDS} s; server pid ${PID}` +
  `${LOAD_PID ? `, load generator pid ${LOAD_PID}` : ''}; CLK_TCK ${CLK_TCK}`);
for (let i = 0; i < clients.length; i += 1) {
  clients[i].open();
  await sleep((RAMP * 1000) / Math.max(1, clients.length));
}
if (probe) probe.stream.open();
await sleep(WARMUP * 1000);

const before = {
  at: performance.now(), machine: machineBusySeconds(), serverTimes: cpuTimes(PID), server: cpuSeconds(PID), load: LOAD_PID ? cpuSeconds(LOAD_PID) : null, self: ownCpu(),
  events: clients.map((c) => c.events()), perStream: clients.flatMap((c) => c.streams.map((s) => s.counts.kpis)),
  bytes: clients.reduce((n, c) => n + c.streams.reduce((m, s) => m + s.bytes, 0), 0),
  status: await serverStreamClients(),
};
// Random gaps, so that the purchases land at every phase of the push cycle.
let probeTimer = null;
const probeNext = () => { probeTimer = setTimeout(() => { probe.post(); probeNext(); }, 1500 + Math.random() * 1000); };
if (probe) probeNext();
await sleep(SECONDS * 1000);
clearTimeout(probeTimer);
const after = {
  at: performance.now(), machine: machineBusySeconds(), serverTimes: cpuTimes(PID), server: cpuSeconds(PID), load: LOAD_PID ? cpuSeconds(LOAD_PID) : null, self: ownCpu(),
  events: clients.map((c) => c.events()), perStream: clients.flatMap((c) => c.streams.map((s) => s.counts.kpis)),
  bytes: clients.reduce((n, c) => n + c.streams.reduce((m, s) => m + s.bytes, 0), 0),
  status: await serverStreamClients(),
};
for (const c of clients) c.close();
if (probe) {
  await sleep(3000); // the last purchases' pushes
  probe.stream.close();
  const missing = probe.sent.length - probe.latencies.length;
  console.log(`probe: ${probe.sent.length} purchases posted (errors ${probe.errors}); POST sent → first kpis event counting it (ms): ` +
    `${stats(probe.latencies)}; p90 ${probe.latencies.length ? [...probe.latencies].sort((a, b) => a - b)[Math.floor(0.9 * probe.latencies.length)].toFixed(0) : 'n/a'}; never seen: ${missing}`);
}

const wall = (after.at - before.at) / 1000;
const pct = (seconds) => `${((100 * seconds) / wall).toFixed(2)} % of one core (${seconds.toFixed(2)} s CPU in ${wall.toFixed(1)} s)`;
console.log(`server CPU:         ${pct(after.server - before.server)}; user ${(after.serverTimes.user - before.serverTimes.user).toFixed(2)} s, ` +
  `system ${(after.serverTimes.system - before.serverTimes.system).toFixed(2)} s`);
if (LOAD_PID) console.log(`load generator CPU: ${pct(after.load - before.load)}`);
console.log(`this script's CPU:  ${pct(after.self - before.self)}`);
const others = (after.machine - before.machine) - (after.server - before.server) - (after.self - before.self) - (LOAD_PID ? after.load - before.load : 0);
console.log(`machine busy:       ${pct(after.machine - before.machine)}; other processes: ${((100 * others) / wall).toFixed(1)} % of one core`);
const processed = after.status.processed_offset - before.status.processed_offset;
console.log(`server: stream_clients ${before.status.stream_clients} → ${after.status.stream_clients}; processed ${processed} records in the window ` +
  `(${(processed / wall).toFixed(0)}/s), lag at end ${after.status.lag_events}`);
if (CLIENTS) {
  const perClient = clients.map((c, i) => (after.events[i] - before.events[i]) / wall);
  const perStreamKpis = after.perStream.map((n, i) => (n - before.perStream[i]) / wall);
  const streams = clients.flatMap((c) => c.streams);
  const firstKpis = streams.map((s) => s.firstKpisMs).filter((v) => v != null);
  const dead = perStreamKpis.filter((r) => r === 0).length;
  console.log(`events per client per second (kpis + status, all its streams): ${stats(perClient)}`);
  console.log(`kpis events per stream per second: ${stats(perStreamKpis)}; streams without a kpis event in the window: ${dead} of ${streams.length}`);
  console.log(`received ${((after.bytes - before.bytes) / wall / 1e6).toFixed(2)} MB/s in all; connect → first kpis event (ms): ${stats(firstKpis)}`);
  console.log(`stream errors / unexpected ends: ${streams.reduce((n, s) => n + s.errors, 0)}` +
    `${PREVIOUS ? `; previous-period fetches ${clients.reduce((n, c) => n + c.previousFetches, 0)} (errors ${clients.reduce((n, c) => n + c.previousErrors, 0)})` : ''}`);
}
process.exit(0);
