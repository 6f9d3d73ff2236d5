#!/usr/bin/env node
// Checks the Grafana dashboards and provisioning files in deploy/ and the Prometheus config.
//
//   npm ci --prefix tests/grafana      # once: @grafana/schema, typescript, yaml (pinned)
//   node tests/grafana/check.mjs       # every dashboard in deploy/grafana/dashboards/
//   node tests/grafana/check.mjs FILE.json …   # given dashboards only (provisioning too)
//
// 1. Schema: each dashboard JSON is written into a TypeScript file as a literal assigned to
//    Grafana's `Dashboard` type (@grafana/schema), each panel's options and custom field
//    config to its plugin's types, each query to the Prometheus query type, and compiled with
//    `tsc --strict --noEmit`. Literal types are kept (no JSON widening) and excess-property
//    checks catch misspelled keys. Errors are reported with their JSON path.
// 2. Structure, which the types cannot express: unique panel ids, grid positions inside the
//    24-column grid without overlaps, every variable referenced is defined and every defined
//    one is used, the datasource variable drives every panel and query, every KPI query
//    filters by $channel (and $device where the metric has a device), multi-value variables
//    matched with =~, metric names that /metrics exposes (read from the Rust source), valid
//    and fitting units (currency for money, percentunit for rates, time for latencies).
// 3. Provisioning YAML (dashboards provider, Prometheus datasource) and
//    deploy/prometheus/prometheus.yml: parsed and checked for what the dashboard relies on;
//    `promtool check config` as well when promtool is installed.
//
// Exits 1 with one line per problem; prints "N passed, N failed" last.

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const rel = (p) => (p.startsWith(root + "/") ? relative(root, p) : p);

const paths = {
  dashboards: join(root, "deploy/grafana/dashboards"),
  provider: join(root, "deploy/grafana/provisioning/dashboards/vedetta.yml"),
  datasources: join(root, "deploy/grafana/provisioning/datasources/prometheus.yml"),
  prometheus: join(root, "deploy/prometheus/prometheus.yml"),
  metricsSource: join(root, "crates/vedetta/src/server/metrics.rs"),
  // Metric names are also named once in telemetry.rs (metrics.rs then uses the constant).
  telemetrySource: join(root, "crates/vedetta/src/telemetry.rs"),
  senderSource: join(root, "crates/vedetta/src/watch/sender.rs"),
  tsc: join(here, "node_modules/typescript/bin/tsc"),
  schemaPkg: join(here, "node_modules/@grafana/schema/package.json"),
  gen: join(here, ".gen"),
};

for (const p of [paths.tsc, paths.schemaPkg, join(here, "node_modules/yaml/package.json")]) {
  if (!existsSync(p)) {
    console.error(`missing ${rel(p)}: run \`npm ci --prefix tests/grafana\` first`);
    process.exit(2);
  }
}
const { parse: parseYaml } = await import("yaml");
const schemaVersionOfPackage = JSON.parse(readFileSync(paths.schemaPkg, "utf8")).version;
const { defaultDashboard } = await import(
  "@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen"
);
const latestSchemaVersion = defaultDashboard.schemaVersion;

// ---------------------------------------------------------------------------------------
// Results

const results = [];
function check(name, fn) {
  const problems = [];
  try {
    fn((msg) => problems.push(msg));
  } catch (e) {
    problems.push(`check crashed: ${e.stack ?? e}`);
  }
  results.push({ name, problems });
  if (problems.length === 0) {
    console.log(`ok    ${name}`);
  } else {
    console.log(`FAIL  ${name}`);
    for (const p of problems) console.log(`        ${p.replaceAll("\n", "\n        ")}`);
  }
}

// ---------------------------------------------------------------------------------------
// Grafana knowledge the types do not carry

// Unit ids from Grafana's value formats (packages/grafana-data/src/valueFormats/
// categories.ts): the categories a monitoring dashboard uses. Extend when a panel needs more.
const UNITS = new Set([
  // Misc
  "none", "string", "short", "sishort", "percent", "percentunit", "humidity", "dB", "hex0x",
  "hex", "sci", "locale", "pixel",
  // Currency
  "currencyUSD", "currencyGBP", "currencyEUR", "currencyJPY", "currencyRUB", "currencyUAH",
  "currencyBRL", "currencyDKK", "currencyISK", "currencyNOK", "currencySEK", "currencyCZK",
  "currencyCHF", "currencyPLN", "currencyBTC", "currencymBTC", "currencyμBTC", "currencyZAR",
  "currencyINR", "currencyKRW", "currencyIDR", "currencyPHP", "currencyVND", "currencyTRY",
  "currencyMYR", "currencyXPF", "currencyBGN", "currencyPYG", "currencyUYU", "currencyILS",
  // Data
  "bits", "bytes", "kbytes", "mbytes", "gbytes", "tbytes", "pbytes", "decbits", "decbytes",
  "deckbytes", "decmbytes", "decgbytes", "dectbytes", "decpbytes",
  // Data rate
  "pps", "bps", "Bps", "KBs", "Kbits", "MBs", "Mbits", "GBs", "Gbits", "binBps", "binbps",
  // Date & time
  "dateTimeAsIso", "dateTimeAsIsoNoDateIfToday", "dateTimeAsUS", "dateTimeAsUSNoDateIfToday",
  "dateTimeAsLocal", "dateTimeAsLocalNoDateIfToday", "dateTimeDefault", "dateTimeFromNow",
  "dateTimeAsSystem",
  // Time
  "hertz", "ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "dthms",
  "dtdhms", "timeticks", "clockms", "clocks",
  // Throughput
  "cps", "ops", "reqps", "rps", "wps", "iops", "eps", "mps", "recps", "rowsps", "cpm", "opm",
  "reqpm", "rpm", "wpm", "epm", "mpm", "recpm", "rowspm",
]);
const CUSTOM_UNIT = /^(suffix|prefix|time|si|count|currency|bool|bool_yes_no|bool_on_off):/;
const unitClass = (unit) =>
  unit.startsWith("currency")
    ? "currency"
    : ["percent", "percentunit"].includes(unit)
      ? "ratio"
      : ["ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "dthms", "dtdhms"].includes(unit)
        ? "time"
        : "other";

/** What a query computes, judged from its metrics: the unit class it needs, if any. */
function expectedClass(expr) {
  const money = /vedetta_kpi_(revenue|spend)\b/.test(expr);
  if (/_seconds(_bucket|_sum|_count)?\b/.test(expr)) return "time";
  if (/vedetta_kpi_converting_sessions\b/.test(expr) && expr.includes("/")) return "ratio";
  if (money) return "currency";
  return null;
}

// Grafana's own variables ($__interval, $__rate_interval, $__range, $__all, …) and the
// panel-level built-ins that may appear in titles and links.
const builtinVariable = (name) => name.startsWith("__") || name === "timeFilter";

// ---------------------------------------------------------------------------------------
// What /metrics exposes, read from its source (so a renamed metric breaks this check).

// Metrics that work in progress promises and the dashboard already shows, with their
// labels: issue 10 (alerts) adds alert states, outbox depth and age, and sends by destination
// to /metrics, in branches being merged. They are accepted by name while the source lacks
// them, and the check says so on every run; delete an entry once the source names it (the
// check then says that too).
// Metrics a panel may use before /metrics has them (none now: issue 10's are exposed).
const PROMISED_METRICS = {};

function exposedMetrics() {
  const source = [paths.metricsSource, paths.telemetrySource, paths.senderSource]
    .filter((p) => existsSync(p))
    .map((p) => readFileSync(p, "utf8"))
    .join("\n");
  const names = new Set(source.match(/vedetta_[a-z0-9_]+/g));
  for (const [, name] of source.matchAll(/family\(\s*"(vedetta_[a-z0-9_]+)",\s*"histogram"/g)) {
    for (const suffix of ["_bucket", "_sum", "_count"]) names.add(name + suffix);
  }
  const labels = new Set(["le"]);
  for (const [, label] of source.matchAll(/\(\s*"([a-z_]+)",\s*[&a-z"]/g)) labels.add(label);
  const promised = [];
  for (const [name, { labels: promisedLabels, by }] of Object.entries(PROMISED_METRICS)) {
    if (names.has(name)) {
      console.log(`note  ${name} is now in the /metrics source: remove it from PROMISED_METRICS in ${rel(fileURLToPath(import.meta.url))}`);
      continue;
    }
    promised.push(`${name} (${by})`);
    names.add(name);
    for (const l of promisedLabels) labels.add(l);
  }
  if (promised.length) console.log(`note  accepted as promised, not yet in the /metrics source:\n        ${promised.join("\n        ")}`);
  return { names, labels };
}

// ---------------------------------------------------------------------------------------
// 1. Type check against @grafana/schema

/**
 * Serialises a JSON value as a TypeScript literal, one property or element per line, each
 * line marked with its JSON path (see layout()).
 */
function literal(value, path, indent = "") {
  const inner = indent + "  ";
  const mark = (p, text) => `${inner}\u0000${p}\u0000${text}`;
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    const items = value.map((v, i) => mark(`${path}[${i}]`, literal(v, `${path}[${i}]`, inner)));
    return `[\n${items.join(",\n")}\n${indent}]`;
  }
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 0) return "{}";
    const items = keys.map((k) => {
      const p = !/^[A-Za-z_$][\w$]*$/.test(k) ? `${path}[${JSON.stringify(k)}]` : path ? `${path}.${k}` : k;
      return mark(p, `${JSON.stringify(k)}: ${literal(value[k], p, inner)}`);
    });
    return `{\n${items.join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}
/** Turns the marked text into source lines and a parallel list of JSON paths. */
function layout(marked, basePath) {
  const src = [];
  const where = [];
  let current = basePath;
  for (const raw of marked.split("\n")) {
    const m = raw.match(/^(\s*)\u0000([^\u0000]*)\u0000(.*)$/);
    if (m) {
      current = m[2];
      src.push(m[1] + m[3]);
    } else {
      src.push(raw);
    }
    where.push(current);
  }
  return { src, where };
}

const PANEL_KINDS = ["stat", "timeseries", "table", "bargauge", "gauge", "barchart", "piechart", "text"];

function allPanels(dashboard) {
  const out = [];
  (dashboard.panels ?? []).forEach((p, i) => {
    out.push({ panel: p, path: `panels[${i}]` });
    if (p && p.type === "row" && Array.isArray(p.panels)) {
      p.panels.forEach((q, j) => out.push({ panel: q, path: `panels[${i}].panels[${j}]` }));
    }
  });
  return out;
}

function typeCheck(file, dashboard, problem) {
  const name = basename(file, ".json").replace(/\W/g, "_");
  const src = [
    "// Generated by check.mjs from " + rel(file) + ": do not edit.",
    'import type { Dashboard, PanelOptions, PanelCustom, Target } from "../schema.js";',
    "",
  ];
  const where = src.map(() => "(header)");
  const emit = (decl, value, path) => {
    const { src: s, where: w } = layout(literal(value, path), path);
    s[0] = `${decl} = ${s[0]}`;
    s[s.length - 1] += ";";
    src.push(...s);
    where.push(...w);
  };
  emit("export const dashboard: Dashboard", dashboard, "");
  for (const { panel, path } of allPanels(dashboard)) {
    if (!panel || typeof panel !== "object" || panel.type === "row") continue;
    const v = `p_${path.replace(/\W+/g, "_")}`;
    if (!PANEL_KINDS.includes(panel.type)) {
      problem(`${rel(file)}: ${path}: panel type ${JSON.stringify(panel.type)} has no option types in schema.ts (known: ${PANEL_KINDS.join(", ")})`);
      continue;
    }
    if (panel.options !== undefined) emit(`export const ${v}_options: PanelOptions<"${panel.type}">`, panel.options, `${path}.options`);
    const custom = panel.fieldConfig?.defaults?.custom;
    if (custom !== undefined) emit(`export const ${v}_custom: PanelCustom<"${panel.type}">`, custom, `${path}.fieldConfig.defaults.custom`);
    if (panel.targets !== undefined) emit(`export const ${v}_targets: Target[]`, panel.targets, `${path}.targets`);
  }
  mkdirSync(paths.gen, { recursive: true });
  const out = join(paths.gen, `${name}.ts`);
  writeFileSync(out, src.join("\n") + "\n");
  const run = spawnSync(
    process.execPath,
    [
      paths.tsc,
      "--noEmit",
      "--strict",
      "--exactOptionalPropertyTypes",
      "--module", "nodenext",
      "--moduleResolution", "nodenext",
      "--target", "es2022",
      "--skipLibCheck",
      "--pretty", "false",
      out,
    ],
    { cwd: here, encoding: "utf8" },
  );
  if (run.status === 0) {
    rmSync(out);
    if (readdirSync(paths.gen).length === 0) rmSync(paths.gen, { recursive: true });
    return;
  }
  const text = (run.stdout + run.stderr).trim();
  if (!text) {
    problem(`tsc failed (status ${run.status}) without output`);
    return;
  }
  // "file(line,col): error TSnnnn: message" followed by indented elaboration lines.
  let last = null;
  for (const line of text.split("\n")) {
    const m = line.match(/^(.*?)\((\d+),(\d+)\): error (TS\d+): (.*)$/);
    if (m) {
      const at = Number(m[2]) - 1;
      const jsonPath = where[at] ?? "?";
      last = `${rel(file)}: ${jsonPath || "(root)"}: ${m[5]} [${m[4]}]\n  at ${rel(out)}:${m[2]}  ${(src[at] ?? "").trim().slice(0, 120)}`;
      problem(last);
    } else if (line.trim()) {
      problem(`  ${line.trim()}`);
    }
  }
}

// ---------------------------------------------------------------------------------------
// 2. Structure

function variableRefs(text) {
  const refs = [];
  const re = /\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)/g;
  for (const m of text.matchAll(re)) refs.push(m[1] ?? m[2] ?? m[3]);
  return refs;
}

/** The selectors `metric{…}` (or bare `metric`) of a PromQL expression. */
function selectors(expr) {
  const out = [];
  const re = /\b(vedetta_[a-z0-9_]+)\s*(\{([^}]*)\})?/g;
  for (const m of expr.matchAll(re)) out.push({ metric: m[1], matchers: m[3] ?? "" });
  return out;
}

function structure(file, dashboard, metrics, problem) {
  const at = (path, msg) => problem(`${rel(file)}: ${path}: ${msg}`);
  const vars = dashboard.templating?.list ?? [];

  if (typeof dashboard.uid !== "string" || !/^[A-Za-z0-9_-]{1,40}$/.test(dashboard.uid)) {
    at("uid", "must be 1–40 characters of A–Z a–z 0–9 _ -");
  }
  if (!dashboard.title) at("title", "missing");
  if (!(dashboard.schemaVersion >= 39 && dashboard.schemaVersion <= latestSchemaVersion)) {
    at("schemaVersion", `${dashboard.schemaVersion} is outside 39…${latestSchemaVersion} (the latest @grafana/schema ${schemaVersionOfPackage} knows)`);
  }

  // Variables.
  const byName = new Map();
  vars.forEach((v, i) => {
    if (byName.has(v.name)) at(`templating.list[${i}].name`, `variable ${v.name} is defined twice`);
    byName.set(v.name, { v, i });
  });
  const dsVars = vars.filter((v) => v.type === "datasource");
  if (dsVars.length !== 1 || dsVars[0].query !== "prometheus") {
    at("templating.list", "needs exactly one variable of type datasource with query \"prometheus\"");
  }
  const dsVar = dsVars[0]?.name ?? "datasource";
  const isDsRef = (uid) => uid === `$${dsVar}` || uid === `\${${dsVar}}`;
  const channel = byName.get("channel")?.v;
  if (!channel) {
    at("templating.list", "no `channel` variable");
  } else {
    const q = typeof channel.query === "string" ? channel.query : channel.query?.query;
    if (channel.type !== "query" || !/label_values\(\s*vedetta_kpi_sessions\s*,\s*channel\s*\)/.test(q ?? "")) {
      at(`templating.list[${byName.get("channel").i}]`, "channel must be a query variable on label_values(vedetta_kpi_sessions, channel)");
    }
    if (!channel.multi || !channel.includeAll) at(`templating.list[${byName.get("channel").i}]`, "channel must be multi-value with All");
  }
  vars.forEach((v, i) => {
    if (v.type === "query" && !isDsRef(v.datasource?.uid)) {
      at(`templating.list[${i}].datasource`, `query variable ${v.name} must use the \${${dsVar}} variable`);
    }
    const own = JSON.stringify(v.query ?? "");
    for (const ref of variableRefs(own)) {
      if (!builtinVariable(ref) && !byName.has(ref)) at(`templating.list[${i}].query`, `references undefined variable $${ref}`);
      if (ref === v.name) at(`templating.list[${i}].query`, `variable ${v.name} references itself`);
    }
  });

  // Panels.
  const ids = new Map();
  const titles = new Map();
  const used = new Set();
  const cells = [];
  for (const { panel, path } of allPanels(dashboard)) {
    if (!panel || typeof panel !== "object") {
      at(path, "not an object");
      continue;
    }
    const label = `${path} (${JSON.stringify(panel.title ?? "")})`;
    if (!Number.isInteger(panel.id)) at(label, "needs an integer id");
    else if (ids.has(panel.id)) at(label, `id ${panel.id} already used by ${ids.get(panel.id)}`);
    else ids.set(panel.id, path);

    const g = panel.gridPos;
    if (!g || ![g.x, g.y, g.w, g.h].every(Number.isInteger)) {
      at(label, "needs a gridPos with integer x, y, w, h");
    } else if (g.x < 0 || g.y < 0 || g.w < 1 || g.h < 1 || g.x + g.w > 24) {
      at(label, `gridPos ${JSON.stringify(g)} is outside the 24-column grid`);
    } else {
      for (const other of cells) {
        const o = other.g;
        if (g.x < o.x + o.w && o.x < g.x + g.w && g.y < o.y + o.h && o.y < g.y + g.h) {
          at(label, `gridPos overlaps ${other.label}`);
        }
      }
      if (!(panel.type === "row" && panel.collapsed)) cells.push({ g, label });
    }

    const text = JSON.stringify(panel);
    for (const ref of variableRefs(text)) {
      if (builtinVariable(ref)) continue;
      if (!byName.has(ref)) at(label, `references undefined variable $${ref}`);
      used.add(ref);
    }
    if (panel.type === "row") continue;
    if (!panel.title) at(label, "has no title");
    else if (titles.has(panel.title)) at(label, `title already used by ${titles.get(panel.title)}`);
    else titles.set(panel.title, path);

    if (!isDsRef(panel.datasource?.uid) || panel.datasource?.type !== "prometheus") {
      at(`${label}.datasource`, `must be { type: "prometheus", uid: "\${${dsVar}}" }`);
    }
    const targets = panel.targets ?? [];
    if (targets.length === 0 && panel.type !== "text") at(label, "has no queries");
    const refIds = new Set();
    const panelShowsSpend = targets.some((t) => /\bvedetta_kpi_spend\b/.test(t.expr ?? ""));
    targets.forEach((t, i) => {
      const tpath = `${label}.targets[${i}]`;
      if (!t.refId || refIds.has(t.refId)) at(tpath, `refId ${JSON.stringify(t.refId)} missing or repeated`);
      refIds.add(t.refId);
      if (t.datasource && (!isDsRef(t.datasource.uid) || t.datasource.type !== "prometheus")) {
        at(`${tpath}.datasource`, `must be { type: "prometheus", uid: "\${${dsVar}}" }`);
      }
      const expr = t.expr ?? "";
      if (!expr.trim()) {
        at(tpath, "empty expr");
        return;
      }
      let depth = 0;
      for (const c of expr) {
        depth += "([{".includes(c) ? 1 : ")]}".includes(c) ? -1 : 0;
        if (depth < 0) break;
      }
      if (depth !== 0) at(tpath, `unbalanced brackets in ${JSON.stringify(expr)}`);

      // Metric names and labels /metrics exposes.
      for (const { metric, matchers } of selectors(expr)) {
        if (!metrics.names.has(metric)) at(tpath, `metric ${metric} is not exposed by /metrics (${rel(paths.metricsSource)})`);
        for (const [, l] of matchers.matchAll(/(\w+)\s*(=~|!~|!=|=)/g)) {
          if (!metrics.labels.has(l)) at(tpath, `label ${l} is not one /metrics exposes`);
        }
      }
      for (const [, list] of expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)) {
        for (const l of list.split(",").map((s) => s.trim()).filter(Boolean)) {
          if (!metrics.labels.has(l)) at(tpath, `label ${l} in by/without is not one /metrics exposes`);
        }
      }
      // Multi-value variables need a regex matcher.
      for (const m of expr.matchAll(/(\w+)\s*(=|!=)\s*"[^"]*\$\{?(\w+)/g)) {
        const v = byName.get(m[3])?.v;
        if (v && (v.multi || v.includeAll)) at(tpath, `${m[1]}${m[2]}"$${m[3]}": a multi-value variable needs =~ (or !~)`);
      }
      // KPI drill-down: every today-KPI selector follows $channel. Spend has no device, so
      // a panel that shows spend ignores $device for all its numbers (CPA = spend of the
      // channel ÷ conversions of the channel); every other KPI panel follows $device.
      for (const s of selectors(expr).filter((s) => s.metric.startsWith("vedetta_kpi_"))) {
        if (!/\bchannel\s*=~\s*"\$(\{channel\}|channel\b)/.test(s.matchers)) {
          at(tpath, `${s.metric} must be filtered by channel=~"$channel" (drill-down)`);
        }
        if (!byName.has("device")) continue;
        const hasDevice = /\bdevice\s*(=~|=|!=|!~)/.test(s.matchers);
        if (s.metric === "vedetta_kpi_spend" && hasDevice) {
          at(tpath, "vedetta_kpi_spend has no device label: no device matcher on it");
        } else if (panelShowsSpend && hasDevice) {
          at(tpath, `${s.metric}: this panel shows spend, which has no device, so its numbers must not be filtered by device`);
        } else if (!panelShowsSpend && !/\bdevice\s*=~\s*"\$(\{device\}|device\b)/.test(s.matchers)) {
          at(tpath, `${s.metric} must be filtered by device=~"$device" (drill-down)`);
        }
      }
    });

    // Units: present, known, and fitting what each query computes.
    const defaults = panel.fieldConfig?.defaults;
    const unitAt = [];
    if (!defaults?.unit) at(`${label}.fieldConfig.defaults.unit`, "no unit");
    else unitAt.push([`${label}.fieldConfig.defaults.unit`, defaults.unit]);
    const overrides = panel.fieldConfig?.overrides ?? [];
    const overrideUnit = new Map();
    overrides.forEach((o, i) =>
      (o.properties ?? []).forEach((p, j) => {
        if (p.id !== "unit") return;
        unitAt.push([`${label}.fieldConfig.overrides[${i}].properties[${j}]`, p.value]);
        if (o.matcher?.id === "byName") overrideUnit.set(o.matcher.options, p.value);
        if (o.matcher?.id === "byFrameRefID") overrideUnit.set(`#${o.matcher.options}`, p.value);
      }),
    );
    for (const [p, unit] of unitAt) {
      if (typeof unit !== "string" || !(UNITS.has(unit) || CUSTOM_UNIT.test(unit))) at(p, `unknown unit ${JSON.stringify(unit)}`);
    }
    const renamed = (panel.transformations ?? []).find((t) => t.id === "organize")?.options?.renameByName ?? {};
    for (const t of targets) {
      const want = expectedClass(t.expr ?? "");
      if (!want) continue;
      const column = renamed[`Value #${t.refId}`];
      const unit = overrideUnit.get(`#${t.refId}`) ?? (column && overrideUnit.get(column)) ?? defaults?.unit;
      if (!unit || unitClass(unit) !== want) {
        at(`${label}.targets[${t.refId}]`, `computes a ${want} value but its unit is ${JSON.stringify(unit)}`);
      }
    }
    for (const [from] of Object.entries(renamed)) {
      const m = from.match(/^Value #(\w+)$/);
      if (m && !refIds.has(m[1])) at(label, `organize renames ${from}, but there is no query ${m[1]}`);
    }
  }
  for (const v of vars) {
    if (!used.has(v.name)) at(`templating.list`, `variable ${v.name} is defined but no panel uses it`);
  }
  if (!used.has(dsVar)) at("panels", `the datasource variable $${dsVar} is used by no panel`);

  // Money in one currency only.
  const currencies = new Set(
    [...JSON.stringify(dashboard).matchAll(/"(currency[A-Za-zμ]+)"/g)].map((m) => m[1]),
  );
  if (currencies.size > 1) at("panels", `mixes currencies: ${[...currencies].join(", ")}`);
}

// ---------------------------------------------------------------------------------------
// 3. Provisioning and Prometheus

function readYaml(file, problem) {
  if (!existsSync(file)) {
    problem(`${rel(file)}: missing`);
    return null;
  }
  try {
    return parseYaml(readFileSync(file, "utf8"), { strict: true, uniqueKeys: true });
  } catch (e) {
    problem(`${rel(file)}: not valid YAML: ${e.message}`);
    return null;
  }
}

function provisioning(dashboards, problem) {
  const provider = readYaml(paths.provider, problem);
  if (provider) {
    const at = (p, m) => problem(`${rel(paths.provider)}: ${p}: ${m}`);
    if (provider.apiVersion !== 1) at("apiVersion", "must be 1");
    const providers = provider.providers;
    if (!Array.isArray(providers) || providers.length === 0) at("providers", "needs at least one provider");
    (providers ?? []).forEach((p, i) => {
      const known = ["name", "orgId", "folder", "folderUid", "type", "disableDeletion", "editable", "updateIntervalSeconds", "allowUiUpdates", "options"];
      for (const k of Object.keys(p ?? {})) if (!known.includes(k)) at(`providers[${i}].${k}`, "unknown key");
      if (!p?.name) at(`providers[${i}].name`, "missing");
      if (p?.type !== "file") at(`providers[${i}].type`, "must be file");
      if (typeof p?.options?.path !== "string" || !p.options.path.startsWith("/")) at(`providers[${i}].options.path`, "needs an absolute path");
    });
  }

  const ds = readYaml(paths.datasources, problem);
  if (ds) {
    const at = (p, m) => problem(`${rel(paths.datasources)}: ${p}: ${m}`);
    if (ds.apiVersion !== 1) at("apiVersion", "must be 1");
    const list = Array.isArray(ds.datasources) ? ds.datasources : [];
    if (list.length === 0) at("datasources", "needs at least one datasource");
    list.forEach((d, i) => {
      const known = ["name", "type", "uid", "access", "url", "orgId", "isDefault", "editable", "jsonData", "secureJsonData", "version", "basicAuth", "basicAuthUser", "user", "database", "withCredentials"];
      for (const k of Object.keys(d ?? {})) if (!known.includes(k)) at(`datasources[${i}].${k}`, "unknown key");
      if (!d?.name) at(`datasources[${i}].name`, "missing");
      if (!/^https?:\/\/[^/]+/.test(d?.url ?? "")) at(`datasources[${i}].url`, "needs an http(s) URL");
      if (d?.access && !["proxy", "direct"].includes(d.access)) at(`datasources[${i}].access`, "must be proxy or direct");
      const scrape = scrapeInterval();
      if (d?.type === "prometheus" && scrape && d.jsonData?.timeInterval !== scrape) {
        at(`datasources[${i}].jsonData.timeInterval`, `is ${JSON.stringify(d.jsonData?.timeInterval)}, but Prometheus scrapes Vedetta every ${scrape} (${rel(paths.prometheus)}): $__rate_interval needs it`);
      }
    });
    // The dashboards' datasource variable defaults to a datasource provisioned here.
    const uids = new Set(list.filter((d) => d?.type === "prometheus").map((d) => d.uid));
    if (uids.size === 0) at("datasources", "no Prometheus datasource");
    for (const [file, dashboard] of dashboards) {
      for (const v of dashboard.templating?.list ?? []) {
        if (v.type === "datasource" && v.current?.value && !uids.has(v.current.value)) {
          problem(`${rel(file)}: variable ${v.name} defaults to datasource uid ${JSON.stringify(v.current.value)}, which ${rel(paths.datasources)} does not provision (${[...uids].join(", ")})`);
        }
      }
    }
  }
}

/** The vedetta job's scrape interval, as prometheus.yml says. */
function scrapeInterval() {
  try {
    const config = parseYaml(readFileSync(paths.prometheus, "utf8"));
    const job = (config?.scrape_configs ?? []).find((j) => j?.job_name === "vedetta");
    return job?.scrape_interval ?? config?.global?.scrape_interval ?? "1m";
  } catch {
    return null;
  }
}

function prometheusConfig(problem) {
  const config = readYaml(paths.prometheus, problem);
  if (!config) return;
  const at = (p, m) => problem(`${rel(paths.prometheus)}: ${p}: ${m}`);
  const jobs = Array.isArray(config.scrape_configs) ? config.scrape_configs : [];
  const job = jobs.find((j) => j?.job_name === "vedetta");
  if (!job) {
    at("scrape_configs", "no job_name: vedetta");
  } else {
    if ((job.metrics_path ?? "/metrics") !== "/metrics") at("vedetta.metrics_path", "must be /metrics");
    const interval = job.scrape_interval ?? config.global?.scrape_interval;
    if (interval !== "5s") at("vedetta.scrape_interval", `is ${JSON.stringify(interval)}, expected 5s`);
    const targets = (job.static_configs ?? []).flatMap((s) => s?.targets ?? []);
    if (!targets.includes("127.0.0.1:8080")) at("vedetta.static_configs", "no target 127.0.0.1:8080");
  }
  const promtool = spawnSync("promtool", ["check", "config", paths.prometheus], { encoding: "utf8" });
  if (promtool.error?.code === "ENOENT") {
    console.log(`      (promtool not installed: ${rel(paths.prometheus)} checked as YAML only)`);
  } else if (promtool.status !== 0) {
    at("promtool check config", (promtool.stdout + promtool.stderr).trim());
  }
}

// ---------------------------------------------------------------------------------------

const args = process.argv.slice(2);
const files = args.length
  ? args.map((a) => resolve(a))
  : readdirSync(paths.dashboards).filter((f) => f.endsWith(".json")).sort().map((f) => join(paths.dashboards, f));
if (files.length === 0) {
  console.error(`no dashboards in ${rel(paths.dashboards)}`);
  process.exit(2);
}

const dashboards = [];
const metrics = exposedMetrics();
console.log(`@grafana/schema ${schemaVersionOfPackage} (schemaVersion ${latestSchemaVersion}), typescript ${JSON.parse(readFileSync(join(here, "node_modules/typescript/package.json"), "utf8")).version}`);
for (const file of files) {
  let dashboard = null;
  check(`${rel(file)}: valid JSON`, (problem) => {
    try {
      dashboard = JSON.parse(readFileSync(file, "utf8"));
    } catch (e) {
      problem(`${rel(file)}: ${e.message}`);
    }
  });
  if (!dashboard) continue;
  dashboards.push([file, dashboard]);
  const n = allPanels(dashboard).length;
  check(`${rel(file)}: matches Grafana's Dashboard schema and panel/query types (tsc --strict, ${n} panels)`, (problem) =>
    typeCheck(file, dashboard, problem),
  );
  check(`${rel(file)}: structure, variables, drill-down, metrics and units`, (problem) =>
    structure(file, dashboard, metrics, problem),
  );
}
check("deploy/grafana/provisioning: dashboards provider and Prometheus datasource", (problem) =>
  provisioning(dashboards, problem),
);
check("deploy/prometheus/prometheus.yml: scrape config for Vedetta", prometheusConfig);

const failed = results.filter((r) => r.problems.length > 0).length;
console.log(`\n${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
