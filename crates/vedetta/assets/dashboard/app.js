// The Vedetta dashboard: KPI tiles, a time-series chart, drill-down tables and a
// data-quality panel, kept live by server-sent events.
//
// Plain browser JavaScript: no build step, no framework, no CDN, so that `vedetta serve`
// embeds this file as it is and the page works without the internet. The chart is our own
// small SVG code (no charting library).
//
// What this page promises (tests/browser/dashboard.test.mjs relies on it):
// - Every KPI number shown carries the raw API value in `data-value` ("null" when the API
//   says null, so "—" is shown); tiles carry `data-kpi`, table cells too. Spend is null
//   where no spend record contributes (unknown spend is not zero spend): "—", never €0.00.
// - `#attribution` names the model the answer was computed under (`data-model`,
//   `data-lookback-days`, from the answer's `attribution`) and links to the semantics. Rows carry
//   `data-channel`, `data-campaign`, `data-device` or `data-region` with the raw value;
//   crumbs `data-breadcrumb` (all, channel, campaign); range buttons `data-range`. The
//   chart's svg counts its windows (`data-windows`) and those with sessions
//   (`data-windows-with-sessions`). `#demo-loading` shows `serve --demo`'s history load.
// - The view lives in the URL hash (`#range=24h&channel=social&campaign=x`), so a view can
//   be bookmarked and the browser's back button leaves a drill-down. An alert's link
//   (`/?channel=…&campaign=…&device=…&region=…&from=…&to=…`, view.js) opens the same view
//   filtered to the alert's group and window; crumbs `data-filter` name each filter and a
//   `data-clear` link removes it.
// - Load on the server is bounded: at most three EventSource streams are open, one per
//   distinct live query of the view (tiles + chart + first table share one), and they are
//   closed on every view change. After a stream's first answer the server sends only what
//   changed (`deltas=true`, applied by kpi-delta.js). `/v1/kpis` is fetched only for the
//   previous-period comparison: once per view change, then at most once a minute. Stream
//   events never trigger fetches.
'use strict';

(() => {
  // ---------------------------------------------------------------- configuration

  // The ranges, the filters and their URL form live in view.js.
  const View = window.VedettaView;
  const { DEFAULT_RANGE } = View;
  // 1d windows are calendar days of the server's time zone (23 or 25 h on DST days).
  const WINDOW_MS = { '1m': 60_000, '1h': 3_600_000, '1d': 86_400_000 };
  const PREVIOUS_REFRESH_MS = 60_000;
  const MAX_TABLE_ROWS = 200;

  // kind: how to format; better: which direction of change is good news.
  const KPIS = {
    sessions: { kind: 'int', better: 'up' },
    converting_sessions: { kind: 'int', better: 'up' },
    conversions: { kind: 'int', better: 'up' },
    conversion_rate: { kind: 'pct', better: 'up' },
    revenue: { kind: 'money', better: 'up' },
    aov: { kind: 'money', better: 'up' },
    spend: { kind: 'money', better: 'none' },
    cpa: { kind: 'money', better: 'down' },
    flagged: { kind: 'int', better: 'down' },
    duplicates: { kind: 'int', better: 'down' },
    late: { kind: 'int', better: 'down' },
  };
  const TILE_KPIS = ['sessions', 'conversions', 'conversion_rate', 'revenue', 'aov', 'spend', 'cpa', 'flagged'];
  const CHART_METRICS = ['conversions', 'revenue', 'spend', 'sessions', 'conversion_rate', 'cpa', 'aov'];
  // Spend exists per channel and campaign only: device and region tables leave it out.
  const TABLE_COLUMNS = {
    channel: ['sessions', 'conversions', 'conversion_rate', 'revenue', 'aov', 'spend', 'cpa', 'flagged'],
    campaign: ['sessions', 'conversions', 'conversion_rate', 'revenue', 'aov', 'spend', 'cpa', 'flagged'],
    device: ['sessions', 'conversions', 'conversion_rate', 'revenue', 'aov', 'flagged'],
    region: ['sessions', 'conversions', 'conversion_rate', 'revenue', 'aov', 'flagged'],
  };

  // ---------------------------------------------------------------- words

  const WORDS = {
    en: {
      allChannels: 'All channels', range: 'Time range', chartTitle: 'Over time', dqTitle: 'Data quality',
      'kpi.sessions': 'Sessions', 'kpi.converting_sessions': 'Converting sessions', 'kpi.conversions': 'Conversions',
      'kpi.conversion_rate': 'Conversion rate', 'kpi.revenue': 'Revenue', 'kpi.aov': 'AOV', 'kpi.spend': 'Spend',
      'kpi.cpa': 'CPA', 'kpi.flagged': 'Flagged', 'kpi.duplicates': 'Duplicates', 'kpi.late': 'Late',
      'hint.aov': 'Average order value', 'hint.cpa': 'Cost per acquisition: spend / conversions',
      'hint.flagged': 'Checkouts and purchases flagged by a sequence rule, kept out of revenue',
      'dim.channel': 'Channel', 'dim.campaign': 'Campaign', 'dim.device': 'Device', 'dim.region': 'Region',
      'by.channel': 'By channel', 'by.campaign': 'By campaign', 'by.device': 'By device', 'by.region': 'By region',
      'range.1h': 'last hour, per minute', 'range.24h': 'last 24 hours, per hour', 'range.7d': 'last 7 days, per hour',
      'range.30d': 'last 30 days, per day',
      'rangeShort.1h': '1h', 'rangeShort.24h': '24h', 'rangeShort.7d': '7d', 'rangeShort.30d': '30d',
      vsPrevious: 'vs previous period', previous: 'Previous period', noData: 'No data in this range',
      more: '{n} more not shown', 'live.live': 'Live', 'live.connecting': 'Connecting…',
      'live.reconnecting': 'Reconnecting…', 'live.offline': 'Offline', 'live.paused': 'Paused',
      updated: 'Updated {time}', authNeeded: 'This dashboard needs an API key.',
      authWrong: 'The key was not accepted.', apiKey: 'API key', open: 'Open',
      'dq.duplicates': 'Duplicates', 'dq.flagged': 'Flagged events', 'dq.late': 'Late events',
      'dq.rejected': 'Rejected events', 'dq.lag': 'Processing lag', 'dq.latency': 'End-to-end latency',
      'dq.watermark': 'Watermark age',
      'dqSub.duplicates': '{rate} of events in range', 'dqSub.flagged': '{rate} of conversions, kept out of revenue',
      'dqSub.late': 'counted after their window closed', 'dqSub.rejected': '{rate} of intake since start',
      'dqSub.lag': 'events logged, not yet processed', 'dqSub.latency': 'p50 {p50} · p99 {p99} · last 5 min',
      'dqSub.watermark': 'event time complete up to {time}', 'dqSub.none': 'no data yet',
      processorError: 'Processing error: {message}', recovering: 'The pipeline is recovering from its log.',
      demoLoading: 'Loading the demo’s month of history: {percent} %. The numbers grow as it arrives; live traffic follows.',
      demoFailed: 'The demo’s history stopped loading ({message}); restart the server to continue it.',
      watermark: 'watermark', unknown: 'Unknown', language: 'English',
      'channel.direct': 'Direct', 'channel.organic': 'Organic search', 'channel.paid_search': 'Paid search',
      'channel.social': 'Social', 'channel.email': 'Email', 'channel.display': 'Display',
      'channel.affiliate': 'Affiliate', 'channel.referral': 'Referral',
      'device.mobile': 'Mobile', 'device.tablet': 'Tablet', 'device.desktop': 'Desktop', 'device.other': 'Other',
      'device.unknown': 'Unknown', error: 'The server answered: {message}',
      attribution: 'Attribution: {model}, {lookback}', attributionMore: 'what this means',
      'model.last_non_direct': 'last non-direct', 'model.session': 'session', 'model.first_touch': 'first touch',
      'range.window': '{from} – {to}', clearFilter: 'Remove this filter', window: 'Window', alerts: 'Alerts', triggers: 'Triggers',
    },
    it: {
      allChannels: 'Tutti i canali', range: 'Intervallo di tempo', chartTitle: 'Andamento', dqTitle: 'Qualità dei dati',
      'kpi.sessions': 'Sessioni', 'kpi.converting_sessions': 'Sessioni con conversione', 'kpi.conversions': 'Conversioni',
      'kpi.conversion_rate': 'Tasso di conversione', 'kpi.revenue': 'Ricavi', 'kpi.aov': 'Scontrino medio',
      'kpi.spend': 'Spesa', 'kpi.cpa': 'CPA', 'kpi.flagged': 'Segnalati', 'kpi.duplicates': 'Duplicati',
      'kpi.late': 'In ritardo',
      'hint.aov': 'Valore medio dell’ordine (AOV)', 'hint.cpa': 'Costo per acquisizione: spesa / conversioni',
      'hint.flagged': 'Checkout e acquisti segnalati da una regola di sequenza, esclusi dai ricavi',
      'dim.channel': 'Canale', 'dim.campaign': 'Campagna', 'dim.device': 'Dispositivo', 'dim.region': 'Regione',
      'by.channel': 'Per canale', 'by.campaign': 'Per campagna', 'by.device': 'Per dispositivo', 'by.region': 'Per regione',
      'range.1h': 'ultima ora, per minuto', 'range.24h': 'ultime 24 ore, per ora', 'range.7d': 'ultimi 7 giorni, per ora',
      'range.30d': 'ultimi 30 giorni, per giorno',
      'rangeShort.1h': '1h', 'rangeShort.24h': '24h', 'rangeShort.7d': '7g', 'rangeShort.30d': '30g',
      vsPrevious: 'vs periodo precedente', previous: 'Periodo precedente',
      noData: 'Nessun dato in questo intervallo', more: 'altre {n} non mostrate', 'live.live': 'In diretta',
      'live.connecting': 'Connessione…', 'live.reconnecting': 'Riconnessione…', 'live.offline': 'Non in linea',
      'live.paused': 'In pausa', updated: 'Aggiornato alle {time}', authNeeded: 'Questa dashboard richiede una chiave API.',
      authWrong: 'La chiave non è stata accettata.', apiKey: 'Chiave API', open: 'Apri',
      'dq.duplicates': 'Duplicati', 'dq.flagged': 'Eventi segnalati', 'dq.late': 'Eventi in ritardo',
      'dq.rejected': 'Eventi rifiutati', 'dq.lag': 'Arretrato di elaborazione', 'dq.latency': 'Latenza end-to-end',
      'dq.watermark': 'Età del watermark',
      'dqSub.duplicates': '{rate} degli eventi nell’intervallo', 'dqSub.flagged': '{rate} delle conversioni, esclusi dai ricavi',
      'dqSub.late': 'contati dopo la chiusura della finestra', 'dqSub.rejected': '{rate} degli arrivi dall’avvio',
      'dqSub.lag': 'eventi registrati, non ancora elaborati', 'dqSub.latency': 'p50 {p50} · p99 {p99} · ultimi 5 min',
      'dqSub.watermark': 'dati completi fino alle {time}', 'dqSub.none': 'ancora nessun dato',
      processorError: 'Errore di elaborazione: {message}', recovering: 'La pipeline si sta ripristinando dal log.',
      demoLoading: 'Caricamento del mese di storico della demo: {percent} %. I numeri crescono man mano; poi arriva il traffico dal vivo.',
      demoFailed: 'Il caricamento dello storico della demo si è fermato ({message}); riavvia il server per continuarlo.',
      watermark: 'watermark', unknown: 'Sconosciuta', language: 'Italiano',
      'channel.direct': 'Diretto', 'channel.organic': 'Ricerca organica', 'channel.paid_search': 'Ricerca a pagamento',
      'channel.social': 'Social', 'channel.email': 'Email', 'channel.display': 'Display',
      'channel.affiliate': 'Affiliazione', 'channel.referral': 'Referral',
      'device.mobile': 'Smartphone', 'device.tablet': 'Tablet', 'device.desktop': 'Desktop', 'device.other': 'Altro',
      'device.unknown': 'Sconosciuto', error: 'Il server ha risposto: {message}',
      attribution: 'Attribuzione: {model}, {lookback}', attributionMore: 'che cosa significa',
      'model.last_non_direct': 'ultimo non diretto', 'model.session': 'sessione', 'model.first_touch': 'primo contatto',
      'range.window': '{from} – {to}', clearFilter: 'Togli questo filtro', window: 'Finestra', alerts: 'Allarmi', triggers: 'Trigger',
    },
  };

  // ---------------------------------------------------------------- state

  const storage = {
    get(key) { try { return localStorage.getItem(key); } catch { return null; } },
    set(key, value) { try { value == null ? localStorage.removeItem(key) : localStorage.setItem(key, value); } catch { /* private mode */ } },
  };

  const state = {
    lang: storage.get('vedetta.lang') || ((navigator.language || '').toLowerCase().startsWith('it') ? 'it' : 'en'),
    apiKey: storage.get('vedetta.apiKey') || '',
    view: { range: DEFAULT_RANGE, window: null, channel: null, campaign: null, device: null, region: null, metric: 'conversions' },
    // Bumped on every view change: answers for an older view are dropped.
    generation: 0,
    primary: null, // the /v1/kpis answer of the primary stream (tiles, chart, first table)
    previous: null, // the previous period's answer (group_by none)
    previousRequestedAt: 0,
    tables: {}, // dimension → last answer
    status: null,
    streams: [],
    sort: {}, // dimension → { key, desc }
    authOpen: false,
    hiddenTimer: 0,
  };

  // ---------------------------------------------------------------- formatting

  const t = (key, vars) => {
    let text = WORDS[state.lang][key] ?? WORDS.en[key] ?? key;
    if (vars) for (const [name, value] of Object.entries(vars)) text = text.replace(`{${name}}`, value);
    return text;
  };
  const locale = () => (state.lang === 'it' ? 'it-IT' : ((navigator.language || '').startsWith('en') ? navigator.language : 'en-GB'));

  // `useGrouping: 'always'`: Italian CLDR data would otherwise print 1234,56 € without the
  // thousands separator.
  let formatters = null;
  function makeFormatters() {
    const l = locale();
    const nf = (options) => new Intl.NumberFormat(l, { useGrouping: 'always', ...options });
    formatters = {
      int: nf({ maximumFractionDigits: 0 }),
      money: nf({ style: 'currency', currency: 'EUR' }),
      pct: nf({ style: 'percent', minimumFractionDigits: 2, maximumFractionDigits: 2 }),
      delta: nf({ style: 'percent', maximumFractionDigits: 1 }),
      compact: new Intl.NumberFormat(l, { notation: 'compact', maximumFractionDigits: 1 }),
      compactMoney: new Intl.NumberFormat(l, { style: 'currency', currency: 'EUR', notation: 'compact', maximumFractionDigits: 1 }),
      ms: nf({ style: 'unit', unit: 'millisecond', maximumFractionDigits: 0 }),
      time: new Intl.DateTimeFormat(l, { hour: '2-digit', minute: '2-digit' }),
      timeSeconds: new Intl.DateTimeFormat(l, { hour: '2-digit', minute: '2-digit', second: '2-digit' }),
      day: new Intl.DateTimeFormat(l, { day: 'numeric', month: 'short' }),
      dayHour: new Intl.DateTimeFormat(l, { weekday: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' }),
      weekday: new Intl.DateTimeFormat(l, { weekday: 'short', day: 'numeric' }),
      dayFull: new Intl.DateTimeFormat(l, { weekday: 'short', day: 'numeric', month: 'short' }),
    };
  }

  function format(kind, value) {
    if (value == null || Number.isNaN(value)) return '—';
    return formatters[kind].format(value);
  }
  function formatCompact(kind, value) {
    if (kind === 'money') return formatters.compactMoney.format(value);
    if (kind === 'pct') return formatters.delta.format(value);
    return formatters.compact.format(value);
  }
  function formatDuration(ms) {
    if (ms == null) return '—';
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172_800) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86_400)} d`;
  }
  // The raw value for data-value: what the API said, "null" for null.
  const raw = (value) => (value == null ? 'null' : String(value));
  const dimLabel = (dim, value, row) => {
    if (dim === 'region') return value === 'unknown' ? t('unknown') : (row && row.region_name) || value;
    if (dim === 'channel' || dim === 'device') {
      const key = `${dim}.${value}`;
      return WORDS[state.lang][key] ?? WORDS.en[key] ?? value;
    }
    return value;
  };

  // ---------------------------------------------------------------- sums of rows

  // Rows are summed exactly: money in integer micro-units, as the pipeline keeps it.
  // Spend is known once a row with spend records (a non-null spend) is added: rows without
  // any (organic, direct, a window with no spend report) are unknown, not zero, and leave
  // the sum as it is, as the server sums its own rows. A sum of such rows only is unknown.
  function emptySum() {
    return { sessions: 0, converting_sessions: 0, conversions: 0, revenueMicros: 0, spendMicros: 0, spendKnown: false,
      flagged: 0, duplicates: 0, late: 0, events: 0 };
  }
  function addRow(sum, row) {
    sum.sessions += row.sessions;
    sum.converting_sessions += row.converting_sessions;
    sum.conversions += row.conversions;
    sum.revenueMicros += Math.round(row.revenue * 1e6);
    if (row.spend != null) {
      sum.spendKnown = true;
      sum.spendMicros += Math.round(row.spend * 1e6);
    }
    sum.flagged += row.flagged;
    sum.duplicates += row.duplicates;
    sum.late += row.late;
    for (const n of Object.values(row.events || {})) sum.events += n;
    return sum;
  }
  const ratio = (numerator, denominator) => (denominator ? numerator / denominator : null);
  function kpisOf(sum) {
    const revenue = sum.revenueMicros / 1e6;
    const spend = sum.spendKnown ? sum.spendMicros / 1e6 : null;
    return {
      sessions: sum.sessions, converting_sessions: sum.converting_sessions,
      conversion_rate: ratio(sum.converting_sessions, sum.sessions), conversions: sum.conversions, revenue,
      aov: ratio(revenue, sum.conversions), spend, cpa: spend == null ? null : ratio(spend, sum.conversions),
      flagged: sum.flagged, duplicates: sum.duplicates, late: sum.late, events: sum.events,
    };
  }
  const eventCount = (kpis) => Object.values(kpis.events || {}).reduce((a, b) => a + b, 0);

  // ---------------------------------------------------------------- the view

  function readHash() {
    return View.parse(new URLSearchParams(location.hash.replace(/^#/, '')), CHART_METRICS);
  }
  function navigate(change) {
    const hash = View.serialize({ ...state.view, ...change }, CHART_METRICS[0]);
    if (hash === location.hash.replace(/^#/, '')) return;
    location.hash = hash; // → hashchange → applyView
  }
  // An alert's link names its view in the query string (`/?channel=…&from=…&to=…`): the page
  // moves it into the hash, where every view lives, so that navigating on from it works.
  function adoptQueryView() {
    const hash = View.hashFromQuery(location.search, CHART_METRICS);
    if (hash != null) history.replaceState(null, '', `${location.pathname}#${hash}`);
  }

  // What a view shows and which live queries feed it. The primary query groups by the
  // first table's dimension (channel, then campaign; none for one campaign), so its rows
  // summed per window draw the chart and its totals fill the tiles: one stream, not three.
  // A filter value as the API reads it: values are comma-separated, so a comma inside one
  // (campaign names may have them) is escaped as `\,`, and a backslash as `\\`.
  const filterValue = (value) => value.replace(/\\/g, '\\\\').replace(/,/g, '\\,');
  // A filtered device or region has no table of its own (it would be one row).
  function planOf(view) {
    const filters = {};
    for (const dim of View.DIMENSIONS) if (view[dim]) filters[dim] = filterValue(view[dim]);
    const primaryDim = !view.channel ? 'channel' : !view.campaign ? 'campaign' : null;
    const tables = [primaryDim, view.device ? null : 'device', view.region ? null : 'region'].filter(Boolean);
    return { filters, primaryDim, tables };
  }
  function baseParams(view, plan) {
    const range = View.rangeOf(view);
    return { granularity: range.granularity, ...range.params, ...plan.filters };
  }
  // "last 24 hours, per hour", or the window an alert link names.
  function rangeLabel(view) {
    const range = View.rangeOf(view);
    if (range.key !== 'window') return t(`range.${range.key}`);
    const fmt = range.spanMs < 86_400_000 ? formatters.dayHour : formatters.dayFull;
    return t('range.window', { from: fmt.format(new Date(view.window.from)), to: fmt.format(new Date(view.window.to)) });
  }

  function applyView() {
    const previousView = state.view;
    const view = readHash();
    const sameData = state.streams.length > 0 && View.sameData(previousView, view);
    state.view = view;
    if (sameData) { // only the chart metric changed
      renderMetrics();
      renderChart();
      return;
    }
    state.generation += 1;
    closeStreams();
    state.primary = null;
    state.previous = null;
    state.tables = {};
    state.previousRequestedAt = 0; // fetched when the first answer tells the period
    // A drill-down clicked far down the page: show its tiles.
    if (View.DIMENSIONS.some((dim) => previousView[dim] !== view[dim])) window.scrollTo(0, 0);
    renderStatic();
    renderTiles();
    renderChart();
    if (state.authOpen) return;
    openStreams();
  }

  // ---------------------------------------------------------------- API

  class AuthError extends Error {}

  async function apiGet(path) {
    const headers = state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
    const response = await fetch(path, { headers, cache: 'no-store' });
    if (response.status === 401) {
      showAuth();
      throw new AuthError('unauthorized');
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `HTTP ${response.status}`);
    }
    return response.json();
  }

  // The previous period of equal length: the windows starting in [from − span, from), where
  // `from` is the start of the current period as the server computed it (a window start,
  // since `last=` covers whole windows). Day windows are calendar days: 30 of them around a
  // daylight-saving change are 30 × 24 h ± 1 h, so for 1d the start is taken an hour early
  // (the server counts the windows that start at or after it; the day before starts 23 h
  // earlier still). Fetched after the first live answer (the tiles come first), then at most
  // once a minute.
  async function fetchPrevious(currentFromMs) {
    const generation = state.generation;
    const view = state.view;
    const plan = planOf(view);
    const range = View.rangeOf(view);
    state.previousRequestedAt = Date.now();
    const params = new URLSearchParams({
      granularity: range.granularity,
      from: new Date(currentFromMs - range.spanMs - (range.granularity === '1d' ? 3_600_000 : 0)).toISOString(),
      to: new Date(currentFromMs).toISOString(),
      ...plan.filters,
    });
    try {
      const answer = await apiGet(`/v1/kpis?${params}`);
      if (generation !== state.generation) return;
      state.previous = answer;
      renderTiles();
      renderChart();
    } catch (error) {
      if (!(error instanceof AuthError)) showBanner(t('error', { message: error.message }));
    }
  }

  // ---------------------------------------------------------------- live streams

  // One EventSource. The browser reconnects by itself after a dropped connection; it gives
  // up (readyState CLOSED) on an HTTP error such as 401. After three failures in a row, or
  // when it gave up, we close it and reopen it ourselves after an exponential backoff with
  // jitter, so that many dashboards do not reconnect in step after a server restart.
  class LiveStream {
    constructor(params, handlers) {
      this.params = params;
      this.handlers = handlers;
      this.failures = 0;
      this.received = false;
      this.closed = false;
      this.source = null;
      this.retryTimer = 0;
    }

    open() {
      if (this.closed) return;
      // After the first answer the server sends only what changed (`kpis-delta`); the
      // stream keeps the answer and applies each delta to it (kpi-delta.js).
      const params = new URLSearchParams({ ...this.params, deltas: 'true' });
      if (state.apiKey) params.set('access_token', state.apiKey); // EventSource cannot send headers
      const source = new EventSource(`/v1/stream?${params}`);
      this.source = source;
      this.answer = null;
      source.addEventListener('open', () => { this.failures = 0; updateLive(); });
      source.addEventListener('kpis', (event) => this.onAnswer(source, JSON.parse(event.data), event.lastEventId));
      source.addEventListener('kpis-delta', (event) => {
        const delta = JSON.parse(event.data);
        if (!this.answer || String(delta.base) !== this.answerId) {
          // Cannot happen with this server (a delta follows the frame it was computed from
          // on the same connection); reconnecting, a second later, gets the whole answer.
          source.close();
          this.retryTimer = setTimeout(() => this.open(), 1000);
          return;
        }
        this.onAnswer(source, window.VedettaKpiDelta.apply(this.answer, delta, this.params.rollup === 'range'), event.lastEventId);
      });
      source.addEventListener('status', (event) => this.handlers.status && this.handlers.status(JSON.parse(event.data)));
      // The view's query failed on the server; the stream stays open and recovers by itself
      // (the server retries at the next push). The banner stays while any stream is failing.
      source.addEventListener('query-error', (event) => {
        let message = event.data;
        try { message = JSON.parse(event.data).error || message; } catch { /* not JSON */ }
        this.queryError = message;
        showBanner(t('error', { message }));
      });
      source.addEventListener('error', () => this.failed(source));
    }

    onAnswer(source, answer, id) {
      if (source !== this.source) return;
      this.failures = 0;
      this.received = true;
      if (this.queryError) {
        this.queryError = null;
        if (!state.streams.some((stream) => stream.queryError)) hideBanner();
      }
      this.answer = answer;
      this.answerId = id;
      this.handlers.kpis(answer);
      markUpdated();
    }

    failed(source) {
      if (this.closed || source !== this.source) return;
      this.failures += 1;
      const gaveUp = source.readyState === EventSource.CLOSED;
      if (gaveUp || this.failures >= 3) {
        source.close();
        const delay = Math.min(15_000, 1000 * 2 ** Math.min(this.failures, 4)) * (0.5 + Math.random() / 2);
        this.retryTimer = setTimeout(() => this.open(), delay);
        if (gaveUp) checkAuth();
      }
      updateLive();
    }

    close() {
      this.closed = true;
      clearTimeout(this.retryTimer);
      if (this.source) this.source.close();
    }
  }

  function openStreams() {
    const view = state.view;
    const plan = planOf(view);
    const generation = state.generation;
    const base = baseParams(view, plan);
    const current = (handler) => (answer) => { if (generation === state.generation) handler(answer); };
    const primaryParams = plan.primaryDim ? { ...base, group_by: plan.primaryDim } : base;
    state.streams = [new LiveStream(primaryParams, {
      kpis: current(onPrimary),
      status: current((status) => { state.status = status; renderQuality(); }),
    })];
    for (const dim of plan.tables) {
      if (dim === plan.primaryDim) continue;
      // Tables need one row per group, not per window: the server sums the range.
      state.streams.push(new LiveStream({ ...base, group_by: dim, rollup: 'range', status: 'false' }, {
        kpis: current((answer) => { state.tables[dim] = answer; renderTable(dim); }),
      }));
    }
    // The tiles come first: the table streams open once the primary one has answered (or
    // after half a second), so that they do not compete with it for the server.
    const [primary, ...others] = state.streams;
    let othersOpened = false;
    const openOthers = () => {
      if (othersOpened || generation !== state.generation) return;
      othersOpened = true;
      for (const stream of others) stream.open();
    };
    const primaryKpis = primary.handlers.kpis;
    primary.handlers.kpis = (answer) => { primaryKpis(answer); openOthers(); };
    primary.open();
    setTimeout(openOthers, 500);
    updateLive();
  }
  function closeStreams() {
    for (const stream of state.streams) stream.close();
    state.streams = [];
    updateLive();
  }

  function onPrimary(answer) {
    state.primary = answer;
    renderAttribution();
    const plan = planOf(state.view);
    if (plan.primaryDim) {
      state.tables[plan.primaryDim] = answer;
      renderTable(plan.primaryDim);
    }
    renderTiles();
    renderChart();
    renderQuality();
    if (!state.streams.some((stream) => stream.queryError)) hideBanner();
    if (Date.now() - state.previousRequestedAt >= PREVIOUS_REFRESH_MS) fetchPrevious(Date.parse(answer.from));
  }

  let authCheck = null;
  function checkAuth() {
    if (authCheck || state.authOpen) return;
    authCheck = apiGet('/v1/status').then(
      (status) => { state.status = status; renderQuality(); },
      (error) => { if (!(error instanceof AuthError)) showBanner(t('error', { message: error.message })); },
    ).finally(() => { authCheck = null; });
  }

  // A tab in the background for a minute closes its streams; coming back reopens them.
  document.addEventListener('visibilitychange', () => {
    clearTimeout(state.hiddenTimer);
    if (document.hidden) {
      state.hiddenTimer = setTimeout(() => { closeStreams(); updateLive('paused'); }, 60_000);
    } else if (state.streams.length === 0 && !state.authOpen) {
      state.generation += 1;
      state.previousRequestedAt = 0;
      openStreams();
    }
  });

  // ---------------------------------------------------------------- auth

  function showAuth() {
    const wrongKey = Boolean(state.apiKey);
    state.authOpen = true;
    closeStreams();
    if (wrongKey) { state.apiKey = ''; storage.set('vedetta.apiKey', null); }
    document.getElementById('auth').hidden = false;
    document.getElementById('auth-error').hidden = !wrongKey;
    document.getElementById('auth-key').focus();
  }
  document.getElementById('auth-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const key = document.getElementById('auth-key').value.trim();
    if (!key) return;
    state.apiKey = key;
    storage.set('vedetta.apiKey', key);
    state.authOpen = false;
    document.getElementById('auth').hidden = true;
    document.getElementById('auth-key').value = '';
    state.streams = [];
    state.view = { ...state.view, range: null }; // force a full reload of the view
    applyView();
  });

  // ---------------------------------------------------------------- rendering: chrome

  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'text') node.textContent = value;
      else node.setAttribute(name, value === true ? '' : value);
    }
    node.append(...children.filter((c) => c != null));
    return node;
  };

  function renderStatic() {
    document.documentElement.lang = state.lang;
    for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll('[data-i18n-aria]')) node.setAttribute('aria-label', t(node.dataset.i18nAria));
    const toggle = document.getElementById('lang-toggle');
    const other = state.lang === 'it' ? 'en' : 'it';
    toggle.textContent = other.toUpperCase();
    toggle.lang = other;
    toggle.title = WORDS[other].language;
    for (const button of document.querySelectorAll('[data-range]')) {
      const key = button.dataset.range;
      button.textContent = t(`rangeShort.${key}`);
      button.title = t(`range.${key}`);
      button.setAttribute('aria-pressed', String(!state.view.window && key === state.view.range));
    }
    for (const kpi of ['aov', 'cpa', 'flagged']) {
      document.querySelector(`#tiles [data-kpi="${kpi}"] h2`).title = t(`hint.${kpi}`);
    }
    renderBreadcrumbs();
    renderMetrics();
    renderTableCards();
    renderQuality();
    updateLive();
  }

  // All channels › channel › campaign, then a chip per other filter (device, region, the
  // window of an alert link), each with a link that removes it.
  function renderBreadcrumbs() {
    const { channel, campaign, device, region, window: timeWindow } = state.view;
    const nav = document.getElementById('breadcrumbs');
    const crumb = (level, label, value, current) => (current
      ? el('span', { 'data-breadcrumb': level, 'data-value': value, 'aria-current': 'page', text: label })
      : el('a', { href: '#', 'data-breadcrumb': level, 'data-value': value, text: label }));
    const sep = () => el('span', { class: 'sep', 'aria-hidden': 'true', text: '›' });
    const parts = [crumb('all', t('allChannels'), null, !channel && !campaign)];
    if (channel) parts.push(sep(), crumb('channel', dimLabel('channel', channel), channel, !campaign));
    if (campaign) parts.push(sep(), crumb('campaign', campaign, campaign, true));
    const chip = (name, label, value) => el('span', { class: 'chip', 'data-filter': name, 'data-value': value },
      el('span', { class: 'chip-label', text: `${t(name === 'window' ? 'window' : `dim.${name}`)}: ` }),
      el('span', { class: 'chip-value', text: label }),
      el('a', { href: '#', 'data-clear': name, title: t('clearFilter'), 'aria-label': t('clearFilter'), text: '×' }));
    if (device) parts.push(chip('device', dimLabel('device', device), device));
    if (region) parts.push(chip('region', dimLabel('region', region), region));
    if (timeWindow) parts.push(chip('window', rangeLabel(state.view), `${new Date(timeWindow.from).toISOString()}/${new Date(timeWindow.to).toISOString()}`));
    nav.replaceChildren(...parts);
  }

  function renderMetrics() {
    const box = document.getElementById('metrics');
    box.setAttribute('aria-label', t('chartTitle'));
    box.replaceChildren(...CHART_METRICS.map((metric) => el('button', {
      type: 'button', 'data-metric': metric, 'aria-pressed': String(metric === state.view.metric), text: t(`kpi.${metric}`),
    })));
  }

  let liveOverride = null;
  function updateLive(override) {
    if (override !== undefined) liveOverride = override;
    if (state.streams.length) liveOverride = null;
    const node = document.getElementById('live');
    let live;
    if (liveOverride) live = liveOverride;
    else if (state.authOpen || !state.streams.length) live = 'offline';
    else if (state.streams.some((s) => s.failures > 0)) live = 'reconnecting';
    else if (state.streams.every((s) => s.received)) live = 'live';
    else live = 'connecting';
    node.dataset.state = live;
    node.lastElementChild.textContent = t(`live.${live}`);
  }
  function markUpdated() {
    updateLive();
    document.getElementById('updated').textContent = t('updated', { time: formatters.timeSeconds.format(new Date()) });
  }

  function showBanner(text) {
    const banner = document.getElementById('banner');
    banner.textContent = text;
    banner.hidden = false;
  }
  function hideBanner() { document.getElementById('banner').hidden = true; }

  // ---------------------------------------------------------------- rendering: attribution

  // "Attribution: last non-direct, 30 days", from the answer's `attribution` (the model and
  // lookback the server computed it under). A lookback that is not whole days is shown in
  // hours, or in days with decimals.
  function lookbackText(days) {
    const unit = (u, n, digits) => new Intl.NumberFormat(locale(), { style: 'unit', unit: u, unitDisplay: 'long', maximumFractionDigits: digits }).format(n);
    if (Number.isInteger(days)) return unit('day', days, 0);
    const hours = days * 24;
    if (Math.abs(hours - Math.round(hours)) < 1e-9) return unit('hour', Math.round(hours), 0);
    return unit('day', days, 2);
  }
  function renderAttribution() {
    const node = document.getElementById('attribution');
    const attribution = state.primary && state.primary.attribution;
    if (!attribution) { node.hidden = true; return; }
    const modelKey = `model.${attribution.model}`;
    const model = WORDS[state.lang][modelKey] ?? WORDS.en[modelKey] ?? attribution.model;
    node.dataset.model = attribution.model;
    node.dataset.lookbackDays = String(attribution.lookback_days);
    document.getElementById('attribution-text').textContent = t('attribution', { model, lookback: lookbackText(attribution.lookback_days) });
    node.hidden = false;
  }

  // ---------------------------------------------------------------- rendering: tiles

  function renderTiles() {
    const totals = state.primary && state.primary.totals;
    const previous = state.previous && state.previous.totals;
    for (const key of TILE_KPIS) {
      const tile = document.querySelector(`#tiles [data-kpi="${key}"]`);
      const valueNode = tile.querySelector('.value');
      const deltaNode = tile.querySelector('.delta');
      if (!totals) {
        tile.classList.add('loading');
        tile.removeAttribute('data-value');
        valueNode.textContent = '…';
        deltaNode.replaceChildren();
        continue;
      }
      const value = totals[key];
      const before = tile.getAttribute('data-value');
      tile.classList.remove('loading');
      tile.setAttribute('data-value', raw(value));
      valueNode.textContent = format(KPIS[key].kind, value);
      valueNode.title = valueNode.textContent; // in full, should a large number be cut
      if (before != null && before !== raw(value)) {
        tile.classList.remove('bump');
        void tile.offsetWidth; // restart the animation
        tile.classList.add('bump');
      }
      renderDelta(deltaNode, key, value, previous ? previous[key] : undefined);
    }
  }

  function renderDelta(node, key, value, previousValue) {
    if (previousValue === undefined) { node.replaceChildren(); node.removeAttribute('data-value'); return; }
    const change = value == null || previousValue == null || previousValue === 0 ? null : (value - previousValue) / Math.abs(previousValue);
    const { better, kind } = KPIS[key];
    let arrow = '';
    let tone = 'neutral';
    if (change != null && change !== 0) {
      arrow = change > 0 ? '▲' : '▼';
      if (better !== 'none') tone = (change > 0) === (better === 'up') ? 'good' : 'bad';
    }
    node.dataset.value = raw(change);
    node.dataset.previous = raw(previousValue);
    node.dataset.tone = tone;
    node.title = `${t('previous')}: ${format(kind, previousValue)}`;
    const text = change == null ? '—' : `${arrow} ${formatters.delta.format(Math.abs(change))}`.trim();
    node.replaceChildren(el('span', { class: 'change', text }), el('span', { class: 'vs', text: ` ${t('vsPrevious')}` }));
  }

  // ---------------------------------------------------------------- rendering: chart
  //
  // Our own small SVG line chart (no charting library): gridlines, time labels, the current
  // period as a line over an area, the previous period dashed, the watermark, a hover tip.

  // Windows with no data are missing from the answer: 1m and 1h windows are a regular grid
  // and are filled with zeros; 1d windows (calendar days, 23 to 25 h) are filled by
  // chaining from the windows that are present.
  function windowSeries(answer) {
    const byStart = new Map();
    for (const row of answer.rows) {
      const start = Date.parse(row.window_start);
      let entry = byStart.get(start);
      if (!entry) byStart.set(start, (entry = { start, end: Date.parse(row.window_end), sum: emptySum() }));
      addRow(entry.sum, row);
    }
    const from = Date.parse(answer.from);
    const to = Date.parse(answer.to);
    const step = WINDOW_MS[answer.granularity];
    const starts = [];
    if (answer.granularity !== '1d') {
      for (let s = Math.ceil(from / step) * step; s < to; s += step) starts.push(s);
    } else {
      const present = [...byStart.keys()].sort((a, b) => a - b);
      const anchor = present.length ? present[0] : from;
      for (let s = anchor - step; s >= from; s -= step) starts.unshift(s);
      for (let i = 0; i < present.length; i += 1) {
        starts.push(present[i]);
        const next = i + 1 < present.length ? present[i + 1] : to;
        for (let s = byStart.get(present[i]).end; s < next - step / 2; s += step) starts.push(s);
      }
      if (!present.length) for (let s = from; s < to; s += step) starts.push(s);
    }
    for (const start of byStart.keys()) if (!starts.includes(start)) starts.push(start);
    starts.sort((a, b) => a - b);
    return starts.map((start) => ({ start, kpis: kpisOf(byStart.has(start) ? byStart.get(start).sum : emptySum()) }));
  }

  const SVG = 'http://www.w3.org/2000/svg';
  const svg = (tag, attrs = {}) => {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  };

  // A round gridline step; whole numbers for counts.
  function niceStep(span, count, whole) {
    const rough = span / count;
    const magnitude = 10 ** Math.floor(Math.log10(rough));
    for (const m of [1, 2, 2.5, 5, 10]) {
      const step = m * magnitude;
      if (step >= rough && (!whole || Number.isInteger(step))) return step;
    }
    return Math.max(10 * magnitude, whole ? 1 : 0);
  }

  let chartWidth = 0;
  function renderChart() {
    const box = document.getElementById('chart');
    const legend = document.getElementById('chart-legend');
    const metric = state.view.metric;
    const { kind } = KPIS[metric];
    const answer = state.primary;
    const width = Math.max(280, box.clientWidth);
    chartWidth = width;
    const height = width < 560 ? 190 : 240;
    const margin = { top: 12, right: 12, bottom: 26, left: width < 560 ? 48 : 64 };
    const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' });
    root.setAttribute('aria-label', `${t(`kpi.${metric}`)}, ${rangeLabel(state.view)}`);
    if (!answer) {
      box.classList.add('loading');
      box.replaceChildren(root);
      legend.textContent = '';
      return;
    }
    box.classList.remove('loading');
    const series = windowSeries(answer);
    const points = series.map((w) => ({ t: w.start, v: w.kpis[metric] }));
    root.setAttribute('data-windows', String(series.length));
    root.setAttribute('data-windows-with-sessions', String(series.filter((w) => (w.kpis.sessions || 0) > 0).length));
    // The previous period, shifted onto the current one, as a dashed line.
    let previousPoints = [];
    if (state.previous && state.previous.granularity === answer.granularity) {
      const shift = Date.parse(answer.from) - Date.parse(state.previous.to);
      const span = Date.parse(state.previous.to) - Date.parse(state.previous.from);
      previousPoints = windowSeries(state.previous).map((w) => ({ t: w.start + span + shift, v: w.kpis[metric] }));
    }
    const x0 = points.length ? points[0].t : Date.parse(answer.from);
    const x1 = points.length > 1 ? points[points.length - 1].t : x0 + 1;
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const x = (ms) => margin.left + ((ms - x0) / (x1 - x0)) * plotW;
    const values = [...points, ...previousPoints.filter((p) => p.t >= x0 && p.t <= x1)].map((p) => p.v).filter((v) => v != null);
    const maxV = Math.max(0, ...values);
    const step = niceStep(maxV || 1, height < 200 ? 3 : 4, kind === 'int');
    const top = Math.max(step, Math.ceil(maxV / step) * step);
    const y = (v) => margin.top + plotH - (v / top) * plotH;

    for (let v = 0; v <= top + step / 2; v += step) {
      root.append(svg('line', { class: 'grid', x1: margin.left, x2: width - margin.right, y1: y(v), y2: y(v) }));
      const label = svg('text', { class: 'axis', x: margin.left - 6, y: y(v) + 4, 'text-anchor': 'end' });
      label.textContent = formatCompact(kind, v);
      root.append(label);
    }
    for (const tick of timeTicks(points, answer.granularity, plotW)) {
      const label = svg('text', { class: 'axis', x: x(tick.t), y: height - 8, 'text-anchor': 'middle' });
      label.textContent = tick.label;
      root.append(label, svg('line', { class: 'tick', x1: x(tick.t), x2: x(tick.t), y1: margin.top + plotH, y2: margin.top + plotH + 4 }));
    }
    const path = (pts) => {
      let d = '';
      let pen = false;
      for (const p of pts) {
        if (p.v == null || p.t < x0 || p.t > x1) { pen = false; continue; }
        d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
        pen = true;
      }
      return d;
    };
    if (previousPoints.length) root.append(svg('path', { class: 'line previous', d: path(previousPoints) }));
    // No area under a series with gaps (spend in windows without spend records is unknown).
    if (kind !== 'pct' && metric !== 'cpa' && metric !== 'aov' && points.length > 1 && points.every((p) => p.v != null)) {
      root.append(svg('path', { class: 'area', d: `${path(points)}L${x(x1)},${y(0)}L${x(x0)},${y(0)}Z` }));
    }
    root.append(svg('path', { class: 'line current', d: path(points) }));
    // A point with no known neighbour draws no line: a dot shows it.
    points.forEach((p, i) => {
      const alone = (i === 0 || points[i - 1].v == null) && (i === points.length - 1 || points[i + 1].v == null);
      if (p.v != null && alone) root.append(svg('circle', { class: 'dot', cx: x(p.t), cy: y(p.v), r: 3 }));
    });
    // Event time is complete up to the watermark: later windows may still grow.
    const watermark = state.status && state.status.watermark ? Date.parse(state.status.watermark) : null;
    if (watermark && watermark > x0 && watermark < x1) {
      root.append(svg('line', { class: 'watermark', x1: x(watermark), x2: x(watermark), y1: margin.top, y2: margin.top + plotH }));
    }
    const guide = svg('line', { class: 'guide', y1: margin.top, y2: margin.top + plotH, visibility: 'hidden' });
    const hit = svg('rect', { class: 'hit', x: margin.left, y: margin.top, width: plotW, height: plotH });
    root.append(guide, hit);
    const tip = el('div', { class: 'tip', hidden: true });
    box.replaceChildren(root, tip);

    const showTip = (event) => {
      if (!points.length) return;
      const bounds = root.getBoundingClientRect();
      const px = event.clientX - bounds.left;
      const at = x0 + ((px - margin.left) / plotW) * (x1 - x0);
      let nearest = points[0];
      for (const p of points) if (Math.abs(p.t - at) < Math.abs(nearest.t - at)) nearest = p;
      const previousPoint = previousPoints.find((p) => Math.abs(p.t - nearest.t) < WINDOW_MS[answer.granularity] / 2);
      guide.setAttribute('x1', x(nearest.t));
      guide.setAttribute('x2', x(nearest.t));
      guide.setAttribute('visibility', 'visible');
      tip.replaceChildren(
        el('strong', { text: windowLabel(nearest.t, answer.granularity) }),
        el('span', { text: `${t(`kpi.${metric}`)}: ${format(kind, nearest.v)}` }),
        previousPoint ? el('span', { class: 'muted', text: `${t('previous')}: ${format(kind, previousPoint.v)}` }) : null,
      );
      tip.hidden = false;
      const left = Math.min(Math.max(x(nearest.t) + 10, 0), width - tip.offsetWidth - 4);
      tip.style.left = `${x(nearest.t) + 10 + tip.offsetWidth > width ? x(nearest.t) - tip.offsetWidth - 10 : left}px`;
      tip.style.top = `${margin.top}px`;
    };
    hit.addEventListener('pointermove', showTip);
    hit.addEventListener('pointerdown', showTip);
    hit.addEventListener('pointerleave', () => { tip.hidden = true; guide.setAttribute('visibility', 'hidden'); });

    const total = answer.totals[metric];
    legend.replaceChildren(...[
      el('span', { class: 'key current' }), ` ${t(`kpi.${metric}`)} · ${rangeLabel(state.view)}: `,
      el('strong', { 'data-kpi': metric, 'data-value': raw(total), text: format(kind, total) }),
      previousPoints.length ? el('span', { class: 'key previous' }) : null,
      previousPoints.length ? ` ${t('previous')}` : null,
      watermark ? el('span', { class: 'key watermark' }) : null,
      watermark ? ` ${t('watermark')}` : null,
    ].filter((part) => part != null));
  }

  // A 1d window is labelled by its midpoint, which lies in the same calendar day whatever
  // the browser's time zone (the server's days follow its own zone, Europe/Rome by default).
  function windowLabel(start, granularity) {
    if (granularity === '1d') return formatters.dayFull.format(new Date(start + 12 * 3_600_000));
    if (granularity === '1h' && (state.view.window || state.view.range !== '24h')) return formatters.dayHour.format(new Date(start));
    return formatters.time.format(new Date(start));
  }

  function timeTicks(points, granularity, plotWidth) {
    const most = Math.max(2, Math.floor(plotWidth / 80));
    const ticks = [];
    if (granularity === '1d') {
      const every = Math.ceil(points.length / most);
      points.forEach((p, i) => { if ((points.length - 1 - i) % every === 0) ticks.push({ t: p.t, label: formatters.day.format(new Date(p.t + 12 * 3_600_000)) }); });
      return ticks;
    }
    const spanMinutes = points.length * (granularity === '1m' ? 1 : 60);
    // Beyond a day and a half, hours say too little: label days.
    const minutes = granularity === '1m' ? [1, 2, 5, 10, 15, 20, 30, 60]
      : spanMinutes > 2160 ? [1440, 2880, 4320] : [60, 120, 180, 240, 360, 720, 1440];
    const every = minutes.find((m) => spanMinutes / m <= most) || minutes[minutes.length - 1];
    for (const p of points) {
      const d = new Date(p.t);
      const minuteOfDay = d.getHours() * 60 + d.getMinutes();
      if (every >= 1440) {
        const day = Math.floor((p.t - d.getTimezoneOffset() * 60_000) / 86_400_000); // local day number
        if (minuteOfDay === 0 && day % (every / 1440) === 0) ticks.push({ t: p.t, label: formatters.weekday.format(d) });
      } else if (minuteOfDay % every === 0) {
        ticks.push({ t: p.t, label: formatters.time.format(d) });
      }
    }
    return ticks;
  }

  // ---------------------------------------------------------------- rendering: tables

  function renderTableCards() {
    const plan = planOf(state.view);
    const box = document.getElementById('breakdowns');
    box.replaceChildren(...plan.tables.map((dim) => {
      const drillable = (dim === 'channel' && !state.view.channel) || (dim === 'campaign' && !state.view.campaign);
      const head = el('tr', {}, el('th', { scope: 'col', text: t(`dim.${dim}`) }),
        ...TABLE_COLUMNS[dim].map((key) => el('th', { scope: 'col', class: 'num', 'data-sort': key, tabindex: '0', text: t(`kpi.${key}`) })));
      const table = el('table', { 'data-table': dim, class: drillable ? 'drillable' : null },
        el('thead', {}, head), el('tbody', {}, el('tr', { class: 'loading-row' }, el('td', { colspan: String(TABLE_COLUMNS[dim].length + 1), text: '…' }))));
      return el('section', { class: 'card table-card', 'data-breakdown': dim },
        el('h2', { text: t(`by.${dim}`) }), el('div', { class: 'scroll' }, table));
    }));
    for (const dim of plan.tables) if (state.tables[dim]) renderTable(dim);
  }

  function renderTable(dim) {
    const answer = state.tables[dim];
    const table = document.querySelector(`table[data-table="${dim}"]`);
    if (!answer || !table) return;
    const groups = new Map();
    for (const row of answer.rows) {
      const value = row[dim];
      let group = groups.get(value);
      if (!group) groups.set(value, (group = { value, row, sum: emptySum() }));
      addRow(group.sum, row);
    }
    const sort = state.sort[dim] || { key: 'conversions', desc: true };
    const entries = [...groups.values()].map((g) => ({ ...g, kpis: kpisOf(g.sum) }));
    entries.sort((a, b) => {
      const av = a.kpis[sort.key] ?? -Infinity;
      const bv = b.kpis[sort.key] ?? -Infinity;
      return (sort.desc ? bv - av : av - bv) || (b.kpis.revenue - a.kpis.revenue) || String(a.value).localeCompare(String(b.value));
    });
    const columns = TABLE_COLUMNS[dim];
    const maxConversions = Math.max(1, ...entries.map((e) => e.kpis.conversions));
    const drillable = table.classList.contains('drillable');
    const body = entries.slice(0, MAX_TABLE_ROWS).map((entry) => {
      // The share bar's width goes through the CSSOM: the page's CSP forbids style attributes.
      const share = el('span', { class: 'share' });
      share.style.setProperty('--share', (entry.kpis.conversions / maxConversions).toFixed(3));
      const name = el('th', { scope: 'row' }, el('span', { class: 'name', text: dimLabel(dim, entry.value, entry.row) }), share);
      if (dim === 'region' && entry.value !== 'unknown') name.title = entry.value;
      return el('tr', { [`data-${dim}`]: entry.value, tabindex: drillable ? '0' : null, role: drillable ? 'link' : null },
        name, ...columns.map((key) => el('td', {
          class: `num${key === 'flagged' && entry.kpis.flagged > 0 ? ' warn' : ''}`,
          'data-kpi': key, 'data-value': raw(entry.kpis[key]), text: format(KPIS[key].kind, entry.kpis[key]),
        })));
    });
    if (!entries.length) body.push(el('tr', { class: 'empty' }, el('td', { colspan: String(columns.length + 1), text: t('noData') })));
    if (entries.length > MAX_TABLE_ROWS) {
      body.push(el('tr', { class: 'empty' }, el('td', { colspan: String(columns.length + 1), text: t('more', { n: entries.length - MAX_TABLE_ROWS }) })));
    }
    // Rows are rebuilt on every update: keep the keyboard focus on the same row.
    const focused = table.contains(document.activeElement) ? document.activeElement.getAttribute(`data-${dim}`) : null;
    table.tBodies[0].replaceChildren(...body);
    if (focused != null) {
      const again = [...table.tBodies[0].rows].find((row) => row.getAttribute(`data-${dim}`) === focused);
      if (again) again.focus({ preventScroll: true });
    }
    for (const th of table.tHead.querySelectorAll('[data-sort]')) {
      th.setAttribute('aria-sort', th.dataset.sort === sort.key ? (sort.desc ? 'descending' : 'ascending') : 'none');
    }
  }

  // ---------------------------------------------------------------- rendering: data quality

  // Thresholds for "something is wrong": warn, then bad.
  const LEVELS = {
    duplicateRate: [0.05, 0.2], flaggedRate: [0.02, 0.1], lateRate: [0.01, 0.05], rejectedRate: [0.01, 0.1],
    lag: [1_000, 100_000], latencyP99: [2_000, 10_000], watermarkAgeMs: [300_000, 3_600_000],
  };
  const level = (value, [warn, bad]) => (value == null ? 'unknown' : value >= bad ? 'bad' : value >= warn ? 'warn' : 'ok');

  function qualityItems() {
    const totals = state.primary && state.primary.totals;
    const status = state.status;
    const items = [];
    const pct = (v) => format('pct', v);
    if (totals) {
      const events = eventCount(totals);
      const duplicateRate = ratio(totals.duplicates, events + totals.duplicates);
      const flaggedRate = ratio(totals.flagged, totals.conversions + totals.flagged);
      items.push({ key: 'duplicates', value: totals.duplicates, text: format('int', totals.duplicates),
        sub: t('dqSub.duplicates', { rate: pct(duplicateRate ?? 0) }), level: level(duplicateRate ?? 0, LEVELS.duplicateRate), rate: duplicateRate });
      items.push({ key: 'flagged', value: totals.flagged, text: format('int', totals.flagged),
        sub: t('dqSub.flagged', { rate: pct(flaggedRate ?? 0) }), level: level(flaggedRate ?? 0, LEVELS.flaggedRate) });
      items.push({ key: 'late', value: totals.late, text: format('int', totals.late), sub: t('dqSub.late'),
        level: level(ratio(totals.late, events) ?? 0, LEVELS.lateRate) });
    }
    if (status) {
      const rejectedRate = ratio(status.events_rejected, (status.events_accepted || 0) + (status.events_rejected || 0));
      items.push({ key: 'rejected', value: status.events_rejected, text: format('int', status.events_rejected),
        sub: t('dqSub.rejected', { rate: pct(rejectedRate ?? 0) }), level: level(rejectedRate ?? 0, LEVELS.rejectedRate) });
      items.push({ key: 'lag', value: status.lag_events, text: format('int', status.lag_events), sub: t('dqSub.lag'),
        level: level(status.lag_events, LEVELS.lag) });
      const latency = status.latency_ms || {};
      items.push({ key: 'latency', value: latency.p99 ?? null, text: latency.p99 == null ? '—' : format('ms', latency.p99),
        sub: t('dqSub.latency', { p50: format('ms', latency.p50), p99: format('ms', latency.p99) }),
        level: level(latency.p99 ?? null, LEVELS.latencyP99) });
      const watermark = status.watermark ? Date.parse(status.watermark) : null;
      const age = watermark == null ? null : Math.max(0, Date.now() - watermark);
      items.push({ key: 'watermark', value: age, text: formatDuration(age),
        sub: watermark == null ? t('dqSub.none') : t('dqSub.watermark', { time: formatters.timeSeconds.format(new Date(watermark)) }),
        level: level(age, LEVELS.watermarkAgeMs) });
    }
    return items;
  }

  function renderQuality() {
    const grid = document.getElementById('dq');
    const items = qualityItems();
    const order = ['duplicates', 'flagged', 'late', 'rejected', 'lag', 'latency', 'watermark'];
    grid.replaceChildren(...order.map((key) => {
      const item = items.find((i) => i.key === key);
      return el('div', { class: 'dq-item', 'data-dq': key, 'data-value': item ? raw(item.value) : null, 'data-level': item ? item.level : 'unknown' },
        el('span', { class: 'dq-label', text: t(`dq.${key}`) }),
        el('span', { class: 'dq-value', text: item ? item.text : '…' }),
        el('span', { class: 'dq-sub', text: item ? item.sub : '' }));
    }));
    renderDemo(state.status);
    const error = document.getElementById('dq-error');
    const status = state.status;
    const problem = status && (status.processor_error ? t('processorError', { message: status.processor_error })
      : status.processor_recovering ? t('recovering') : null);
    error.hidden = !problem;
    error.textContent = problem || '';
    const levels = items.map((i) => i.level);
    const worst = problem ? 'bad' : ['bad', 'warn', 'ok'].find((l) => levels.includes(l)) || 'unknown';
    document.getElementById('health').dataset.level = worst;
  }

  /** `serve --demo`: a line with the history's load progress while it loads. */
  function renderDemo(status) {
    const demo = status && status.demo;
    const line = document.getElementById('demo-loading');
    const loading = demo && (demo.phase === 'loading' || demo.phase === 'failed');
    line.hidden = !loading;
    if (!loading) return;
    line.dataset.phase = demo.phase;
    const bar = document.getElementById('demo-loading-bar');
    bar.value = demo.progress || 0;
    document.getElementById('demo-loading-text').textContent = demo.phase === 'failed'
      ? t('demoFailed', { message: demo.error || '' })
      : t('demoLoading', { percent: Math.floor((demo.progress || 0) * 100) });
  }

  // ---------------------------------------------------------------- events

  document.addEventListener('click', (event) => {
    const target = event.target;
    const crumb = target.closest('a[data-breadcrumb]');
    if (crumb) {
      event.preventDefault();
      if (crumb.dataset.breadcrumb === 'all') navigate({ channel: null, campaign: null });
      else if (crumb.dataset.breadcrumb === 'channel') navigate({ campaign: null });
      return;
    }
    const range = target.closest('[data-range]');
    if (range) { navigate({ range: range.dataset.range, window: null }); return; }
    // An alert's drill-down opens in this page, without a reload (a middle click or a
    // modifier still opens the link itself elsewhere).
    const alertLink = target.closest('a[data-alert]');
    if (alertLink && event.button === 0 && !event.metaKey && !event.ctrlKey && !event.shiftKey && !event.altKey) {
      const hash = View.hashFromQuery(new URL(alertLink.href).search, CHART_METRICS);
      if (hash != null) { event.preventDefault(); location.hash = hash; }
      return;
    }
    const clear = target.closest('a[data-clear]');
    if (clear) {
      event.preventDefault();
      navigate(clear.dataset.clear === 'window' ? { window: null } : { [clear.dataset.clear]: null });
      return;
    }
    const metric = target.closest('[data-metric]');
    if (metric) { navigate({ metric: metric.dataset.metric }); return; }
    const sort = target.closest('th[data-sort]');
    if (sort) { sortBy(sort); return; }
    if (target.closest('#lang-toggle')) { setLanguage(state.lang === 'it' ? 'en' : 'it'); return; }
    drillFrom(target);
  });
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' && event.key !== ' ') return;
    const sort = event.target.closest && event.target.closest('th[data-sort]');
    if (sort) { event.preventDefault(); sortBy(sort); return; }
    if (event.target.closest && event.target.closest('table.drillable tr')) { event.preventDefault(); drillFrom(event.target); }
  });

  function drillFrom(target) {
    const row = target.closest('table.drillable tbody tr');
    if (!row) return;
    // The campaign filter stays: a campaign opened from an alert, then one of its channels.
    if (row.dataset.channel != null) navigate({ channel: row.dataset.channel });
    else if (row.dataset.campaign != null) navigate({ campaign: row.dataset.campaign });
  }

  function sortBy(th) {
    const dim = th.closest('table').dataset.table;
    const current = state.sort[dim] || { key: 'conversions', desc: true };
    state.sort[dim] = { key: th.dataset.sort, desc: current.key === th.dataset.sort ? !current.desc : true };
    renderTable(dim);
  }

  function setLanguage(lang) {
    state.lang = lang;
    storage.set('vedetta.lang', lang);
    makeFormatters();
    renderStatic();
    renderTiles();
    renderChart();
    renderAttribution();
    if (window.VedettaAlertBanner) window.VedettaAlertBanner.render();
  }

  window.addEventListener('hashchange', applyView);
  // Charts are drawn for their width: redraw when it changes (phone rotation, resize).
  new ResizeObserver(() => {
    const width = document.getElementById('chart').clientWidth;
    if (width && Math.abs(width - chartWidth) > 2) renderChart();
  }).observe(document.getElementById('chart'));
  // The watermark age moves with the clock, not only with the stream.
  setInterval(() => { if (state.status) renderQuality(); }, 5_000);

  makeFormatters();
  adoptQueryView();
  applyView();
  // Firing alerts in a banner (alerts-banner.js), in the page's language and with its key.
  if (window.VedettaAlertBanner) {
    window.VedettaAlertBanner.start({ lang: () => state.lang, apiKey: () => state.apiKey, paused: () => state.authOpen });
  }
})();
