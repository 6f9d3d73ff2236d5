#!/usr/bin/env node
// Runs every query of the dashboards against a live Prometheus that scrapes Vedetta, the
// way Grafana would send them: variables substituted (All, then one channel and device
// taken from the channel/device variable queries). Reports PromQL errors and queries that
// return nothing. No dependencies beyond Node.
//
//   node tests/grafana/live.mjs [--prometheus http://localhost:9090] [--allow-empty REGEX] [FILE.json …]
//
// Some panels are empty by nature on a quiet instance (no spend records, no rejected
// records): --allow-empty takes a regex of panel titles whose emptiness is only reported.

import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const args = process.argv.slice(2);
let prometheus = "http://localhost:9090";
let allowEmpty = null;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--prometheus") prometheus = args[++i];
  else if (args[i] === "--allow-empty") allowEmpty = new RegExp(args[++i]);
  else files.push(resolve(args[i]));
}
if (files.length === 0) {
  const dir = join(root, "deploy/grafana/dashboards");
  for (const f of readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) files.push(join(dir, f));
}

async function api(path, params) {
  const url = `${prometheus}/api/v1/${path}?${new URLSearchParams(params)}`;
  const response = await fetch(url);
  const body = await response.json().catch(() => ({ status: "error", error: `HTTP ${response.status}` }));
  if (body.status !== "success") throw new Error(body.error ?? JSON.stringify(body));
  return body.data;
}

/** label_values(metric{…}, label) as Grafana's Prometheus datasource resolves it. */
async function labelValues(query, scope) {
  const m = query.match(/^label_values\((.*),\s*(\w+)\)$/);
  if (!m) throw new Error(`unsupported variable query ${query}`);
  return api(`label/${m[2]}/values`, { "match[]": interpolate(m[1], scope) });
}

function interpolate(expr, scope) {
  return expr
    .replace(/\$__rate_interval\b|\$\{__rate_interval\}/g, "20s")
    .replace(/\$__interval\b|\$\{__interval\}/g, "5s")
    .replace(/\$__range\b|\$\{__range\}/g, "1h")
    .replace(/\$\{(\w+)(?::[^}]*)?\}|\$(\w+)/g, (all, a, b) => scope[a ?? b] ?? all);
}

const escapeRegex = (s) => s.replace(/[\\^$.|?*+()[\]{}]/g, "\\$&");

let failed = 0;
let passed = 0;
const now = Date.now() / 1000;
for (const file of files) {
  const dashboard = JSON.parse(readFileSync(file, "utf8"));
  const vars = dashboard.templating?.list ?? [];
  // Scopes: everything (All), then the first channel and device the variables offer.
  const all = {};
  for (const v of vars) if (v.type === "query") all[v.name] = v.allValue ?? ".*";
  const one = { ...all };
  for (const v of vars.filter((v) => v.type === "query")) {
    const query = typeof v.query === "string" ? v.query : v.query?.query;
    try {
      const values = await labelValues(query, one);
      console.log(`variable ${v.name}: ${values.length} values (${values.slice(0, 8).join(", ")}${values.length > 8 ? ", …" : ""})`);
      if (values.length === 0) throw new Error("no values");
      one[v.name] = escapeRegex(values.find((x) => x !== "(other)") ?? values[0]);
      passed++;
    } catch (e) {
      console.log(`FAIL  variable ${v.name}: ${e.message}`);
      failed++;
    }
  }
  const panels = (dashboard.panels ?? []).flatMap((p) => [p, ...(p.type === "row" ? (p.panels ?? []) : [])]);
  for (const panel of panels.filter((p) => p.type !== "row")) {
    for (const target of panel.targets ?? []) {
      for (const [name, scope] of [["all", all], [Object.values(one).join("/"), one]]) {
        const expr = interpolate(target.expr, scope);
        const label = `${relative(root, file)} "${panel.title}" ${target.refId} [${name}]`;
        try {
          const data = target.instant
            ? await api("query", { query: expr, time: now })
            : await api("query_range", { query: expr, start: now - 300, end: now, step: 15 });
          const n = data.result.length;
          if (n === 0 && !(allowEmpty && allowEmpty.test(panel.title))) {
            console.log(`FAIL  ${label}: no data\n        ${expr.replaceAll("\n", " ")}`);
            failed++;
          } else {
            console.log(`ok    ${label}: ${n} series${n === 0 ? " (empty, allowed)" : ""}`);
            passed++;
          }
        } catch (e) {
          console.log(`FAIL  ${label}: ${e.message}\n        ${expr.replaceAll("\n", " ")}`);
          failed++;
        }
      }
    }
  }
}
console.log(`\n${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
