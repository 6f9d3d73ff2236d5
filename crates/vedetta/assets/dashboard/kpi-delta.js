// Applies a `kpis-delta` event of `/v1/stream?deltas=true` to the answer it follows.
//
// The server sends a view's whole `/v1/kpis` answer once, then only what changed: the
// header (from, to, totals; not `attribution`, which the whole answer gave), the rows
// that are new or changed (`upsert`) and the identities of the rows that are gone
// (`remove`: `window_start` and the grouped dimensions). A row is identified by its window
// and grouped dimensions; in a `rollup=range` answer, whose one window is the whole range
// and slides with it, by its dimensions only (and every row takes the answer's range as its
// window). The result is the answer the server would give now,
// rows in the server's order (window, then dimensions in `group_by` order).
//
// A pure function in a file of its own, so that Node tests it without a browser
// (tests/browser/stream.test.mjs, which also checks it against a real server).
'use strict';

(() => {
  function rowKey(row, groupBy, rollup) {
    const parts = groupBy.map((dimension) => row[dimension] ?? '');
    if (!rollup) parts.unshift(row.window_start);
    return JSON.stringify(parts);
  }

  // Strings by UTF-8 byte order, as the server sorts them (code-point order; JavaScript's
  // `<` compares UTF-16 code units, which differs above U+FFFF).
  function compareText(a, b) {
    const x = Array.from(a);
    const y = Array.from(b);
    for (let i = 0; i < Math.min(x.length, y.length); i += 1) {
      const d = x[i].codePointAt(0) - y[i].codePointAt(0);
      if (d !== 0) return d;
    }
    return x.length - y.length;
  }

  function apply(answer, delta, rollup) {
    const groupBy = delta.group_by;
    const rows = new Map(answer.rows.map((row) => [rowKey(row, groupBy, rollup), row]));
    for (const gone of delta.remove) rows.delete(rowKey(gone, groupBy, rollup));
    for (const row of delta.upsert) rows.set(rowKey(row, groupBy, rollup), row);
    let merged = [...rows.values()];
    if (rollup) merged = merged.map((row) => ({ ...row, window_start: delta.from, window_end: delta.to }));
    merged.sort((a, b) => {
      const byWindow = rollup ? 0 : compareText(a.window_start, b.window_start);
      if (byWindow !== 0) return byWindow;
      for (const dimension of groupBy) {
        const d = compareText(a[dimension] ?? '', b[dimension] ?? '');
        if (d !== 0) return d;
      }
      return 0;
    });
    return {
      granularity: delta.granularity,
      time_zone: delta.time_zone,
      // Not in a delta: fixed for the life of the server (a new model needs a restart,
      // which ends the stream), so the base answer's holds.
      attribution: delta.attribution ?? answer.attribution,
      from: delta.from,
      to: delta.to,
      group_by: groupBy,
      rows: merged,
      totals: delta.totals,
    };
  }

  globalThis.VedettaKpiDelta = { apply };
})();
