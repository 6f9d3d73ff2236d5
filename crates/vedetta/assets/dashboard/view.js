// The dashboard's view as a URL: which range or time window it shows, which filters, which
// chart metric. Pure functions, no DOM: app.js keeps the view in the URL hash
// (`#range=7d&channel=social&campaign=x`) and alerts link to it with a query string.
//
// What this file promises (alert notifications and tests/browser/alerts.test.mjs rely on it):
// - A link of the form `/?channel=social&campaign=saldi&device=mobile&region=IT-25&from=…&to=…`
//   — what an alert's notice carries as its `drilldown` (vedetta-core watch::evaluate) and
//   what Slack and e-mail messages point at — opens the dashboard filtered to exactly those
//   values, over exactly the windows that start in [from, to). `from` and `to` are RFC 3339
//   or epoch milliseconds, as the API reads them. The page moves the query into its hash.
// - Every parameter is client text and is only ever used as a value: a filter the API
//   escapes, a time that must parse. An unparsable or reversed window is ignored (the
//   default range is shown), never guessed.
'use strict';

(() => {
  // The range picker. The granularity follows the range: about 24 to 720 points a chart.
  // `last=` is every window that overlaps [now − span, now] (docs/semantics.md, "Query
  // ranges"): "24h" is the hour 24 hours ago (partial), the 23 after it and the current one,
  // so the chart covers the whole span its label names.
  const RANGES = {
    '1h': { last: '60m', granularity: '1m', spanMs: 3_600_000 },
    '24h': { last: '24h', granularity: '1h', spanMs: 86_400_000 },
    '7d': { last: '7d', granularity: '1h', spanMs: 7 * 86_400_000 },
    '30d': { last: '30d', granularity: '1d', spanMs: 30 * 86_400_000 },
  };
  const DEFAULT_RANGE = '24h';
  const DIMENSIONS = ['channel', 'campaign', 'device', 'region'];
  // A link names at most this long a window: beyond it, day windows would be thousands of
  // points. An alert's window is minutes to days.
  const MAX_WINDOW_MS = 400 * 86_400_000;

  // RFC 3339 (as the server writes it, with or without fractions, Z or an offset) or epoch
  // milliseconds. Date.parse alone would also take "March 7" and guess.
  const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/i;
  function parseTime(text) {
    if (text == null) return null;
    if (/^-?\d{1,16}$/.test(text)) return Number(text);
    if (!RFC3339.test(text)) return null;
    const ms = Date.parse(text.toUpperCase());
    return Number.isFinite(ms) ? ms : null;
  }

  // The granularity of a window: about 6 to 500 points.
  function granularityFor(spanMs) {
    if (spanMs <= 6 * 3_600_000) return '1m';
    if (spanMs <= 21 * 86_400_000) return '1h';
    return '1d';
  }

  // The view a URL's parameters describe. `metrics` lists the chart metrics a view may name.
  function parse(params, metrics) {
    const range = Object.hasOwn(RANGES, params.get('range')) ? params.get('range') : DEFAULT_RANGE;
    const view = { range, window: null, metric: metrics.includes(params.get('metric')) ? params.get('metric') : metrics[0] };
    for (const dim of DIMENSIONS) view[dim] = params.get(dim) || null;
    const from = parseTime(params.get('from'));
    const to = parseTime(params.get('to'));
    if (from != null && to != null && from < to && to - from <= MAX_WINDOW_MS) view.window = { from, to };
    return view;
  }

  // The hash of a view (parameters at their defaults left out).
  function serialize(view, defaultMetric) {
    const params = new URLSearchParams();
    if (!view.window && view.range !== DEFAULT_RANGE) params.set('range', view.range);
    for (const dim of DIMENSIONS) if (view[dim]) params.set(dim, view[dim]);
    if (view.window) {
      params.set('from', new Date(view.window.from).toISOString());
      params.set('to', new Date(view.window.to).toISOString());
    }
    if (view.metric !== defaultMetric) params.set('metric', view.metric);
    return params.toString();
  }

  // A query string that names a view (an alert's drill-down link): the hash that shows it,
  // or null when the query names none of the view's parameters.
  function hashFromQuery(search, metrics) {
    const params = new URLSearchParams(search);
    if (![...DIMENSIONS, 'from', 'to', 'range', 'metric'].some((name) => params.has(name))) return null;
    return serialize(parse(params, metrics), metrics[0]);
  }

  // What the API is asked for a view: a preset range (`last=`) or the window (`from`/`to`).
  function rangeOf(view) {
    if (view.window) {
      const spanMs = view.window.to - view.window.from;
      return {
        key: 'window', granularity: granularityFor(spanMs), spanMs,
        params: { from: new Date(view.window.from).toISOString(), to: new Date(view.window.to).toISOString() },
      };
    }
    const range = RANGES[view.range];
    return { key: view.range, granularity: range.granularity, spanMs: range.spanMs, params: { last: range.last } };
  }

  // Two views show the same data (only the chart metric may differ).
  const sameData = (a, b) => a.range === b.range && DIMENSIONS.every((dim) => a[dim] === b[dim]) &&
    (a.window === b.window || (a.window && b.window && a.window.from === b.window.from && a.window.to === b.window.to));

  window.VedettaView = { RANGES, DEFAULT_RANGE, DIMENSIONS, parse, serialize, hashFromQuery, rangeOf, sameData, parseTime, granularityFor };
})();
