// What the alert banner (alerts-banner.js, on the dashboard) and the alerts page (alerts.js)
// share: their words in English and Italian, the API client, and how an alert becomes text
// and a drill-down link.
//
// Everything the API returns about an alert is client text or derived from it (rule names
// come from a rules file, group values are channel and campaign names from intake, comments
// from whoever made a silence): it is only ever put into the page as text nodes and
// attribute values (`el()` below), never as markup, and shown in `<bdi>` so that a
// right-to-left override inside a name cannot reorder what surrounds it.
'use strict';

(() => {
  const WORDS = {
    en: {
      'banner.one': '1 alert firing', 'banner.many': '{n} alerts firing', 'banner.more': '{n} more',
      'banner.all': 'All alerts', 'banner.open': 'Open the drill-down of {rule}', since: 'since {time}',
      'severity.critical': 'Critical', 'severity.warning': 'Warning', 'severity.info': 'Info', 'severity.unknown': '—',
      title: 'Alerts', dashboard: 'Dashboard', firing: 'Firing', pending: 'Pending', history: 'History',
      silences: 'Silences', newSilence: 'New silence', noFiring: 'No alert is firing.', noPending: 'No alert is pending.',
      noHistory: 'Nothing has happened yet.', noSilences: 'No silence is active.',
      'col.severity': 'Severity', 'col.rule': 'Rule', 'col.group': 'Group', 'col.value': 'Value', 'col.since': 'Since',
      'col.condition': 'Condition', 'col.at': 'At', 'col.event': 'Event', 'col.matchers': 'Matches',
      'col.ends': 'Ends', 'col.by': 'By', 'col.comment': 'Comment', 'col.actions': '',
      drill: 'Drill down', silenceThis: 'Silence this', deleteSilence: 'Delete', addMatcher: 'Add a label',
      removeMatcher: 'Remove', createSilence: 'Create the silence', label: 'Label', value: 'Value',
      duration: 'Duration', durationHint: 'from 1m to 90d, like 2h or 3d', comment: 'Comment', createdBy: 'Created by',
      everything: 'all traffic', evaluatedThrough: 'Evaluated through {time}', notEvaluated: 'Nothing evaluated yet',
      updated: 'Updated {time}', error: 'The server answered: {message}', created: 'Silence created.',
      deleted: 'Silence deleted.', 'event.pending': 'Pending', 'event.firing': 'Fired', 'event.resolved': 'Resolved',
      'event.silenced': 'silenced', 'event.inhibited': 'inhibited', authNeeded: 'This page needs an API key.',
      authWrong: 'The key was not accepted.', apiKey: 'API key', open: 'Open', language: 'English',
      'label.rule': 'Rule', 'label.severity': 'Severity', 'label.channel': 'Channel', 'label.campaign': 'Campaign',
      'label.device': 'Device', 'label.region': 'Region', 'label.alertname': 'Alert name',
      inbox: 'Inbox', noInbox: 'Nothing was delivered to an inbox destination.',
      'col.delivered': 'Delivered', 'col.destination': 'To', 'col.message': 'Message', 'event.revised': 'Revised',
      'event.push': 'Trigger push', pushUsers: '{trigger}: {n} user(s)', pushProducts: 'products {list}',
      'signal.firing': 'segment over threshold', 'signal.recovered': 'segment recovered',
    },
    it: {
      'banner.one': '1 allarme attivo', 'banner.many': '{n} allarmi attivi', 'banner.more': 'altri {n}',
      'banner.all': 'Tutti gli allarmi', 'banner.open': 'Apri il dettaglio di {rule}', since: 'dalle {time}',
      'severity.critical': 'Critico', 'severity.warning': 'Avviso', 'severity.info': 'Informazione', 'severity.unknown': '—',
      title: 'Allarmi', dashboard: 'Dashboard', firing: 'Attivi', pending: 'In attesa', history: 'Storico',
      silences: 'Silenziamenti', newSilence: 'Nuovo silenziamento', noFiring: 'Nessun allarme attivo.',
      noPending: 'Nessun allarme in attesa.', noHistory: 'Non è ancora successo nulla.',
      noSilences: 'Nessun silenziamento attivo.',
      'col.severity': 'Gravità', 'col.rule': 'Regola', 'col.group': 'Gruppo', 'col.value': 'Valore', 'col.since': 'Da',
      'col.condition': 'Condizione', 'col.at': 'Alle', 'col.event': 'Evento', 'col.matchers': 'Corrisponde a',
      'col.ends': 'Fino a', 'col.by': 'Da chi', 'col.comment': 'Commento', 'col.actions': '',
      drill: 'Dettaglio', silenceThis: 'Silenzia', deleteSilence: 'Elimina', addMatcher: 'Aggiungi un’etichetta',
      removeMatcher: 'Togli', createSilence: 'Crea il silenziamento', label: 'Etichetta', value: 'Valore',
      duration: 'Durata', durationHint: 'da 1m a 90d, come 2h o 3d', comment: 'Commento', createdBy: 'Creato da',
      everything: 'tutto il traffico', evaluatedThrough: 'Valutato fino alle {time}', notEvaluated: 'Ancora nulla di valutato',
      updated: 'Aggiornato alle {time}', error: 'Il server ha risposto: {message}', created: 'Silenziamento creato.',
      deleted: 'Silenziamento eliminato.', 'event.pending': 'In attesa', 'event.firing': 'Scattato',
      'event.resolved': 'Rientrato', 'event.silenced': 'silenziato', 'event.inhibited': 'inibito',
      authNeeded: 'Questa pagina richiede una chiave API.', authWrong: 'La chiave non è stata accettata.',
      apiKey: 'Chiave API', open: 'Apri', language: 'Italiano',
      'label.rule': 'Regola', 'label.severity': 'Gravità', 'label.channel': 'Canale', 'label.campaign': 'Campagna',
      'label.device': 'Dispositivo', 'label.region': 'Regione', 'label.alertname': 'Nome dell’allarme',
      inbox: 'Posta in arrivo', noInbox: 'Nessuna notifica consegnata a una destinazione inbox.',
      'col.delivered': 'Consegnata', 'col.destination': 'A', 'col.message': 'Messaggio', 'event.revised': 'Rivisto',
      'event.push': 'Push di un trigger', pushUsers: '{trigger}: {n} utenti', pushProducts: 'prodotti {list}',
      'signal.firing': 'segmento oltre la soglia', 'signal.recovered': 'segmento rientrato',
    },
  };
  const words = (lang) => (key, vars) => {
    let text = (WORDS[lang] || WORDS.en)[key] ?? WORDS.en[key] ?? key;
    if (vars) for (const [name, value] of Object.entries(vars)) text = text.replace(`{${name}}`, value);
    return text;
  };
  const locale = (lang) => (lang === 'it' ? 'it-IT' : ((navigator.language || '').startsWith('en') ? navigator.language : 'en-GB'));

  // The labels a silence may match (server/alerts.rs MATCHER_NAMES, `alertname` aside: it is
  // Alertmanager's name for `rule`).
  const MATCHER_NAMES = ['rule', 'severity', 'channel', 'campaign', 'device', 'region'];
  // The group dimensions the dashboard filters by (view.js): what a drill-down link carries.
  const DRILL_DIMENSIONS = ['channel', 'campaign', 'device', 'region'];
  const SEVERITIES = ['critical', 'warning', 'info'];
  const severityOf = (value) => (SEVERITIES.includes(value) ? value : 'unknown');
  // When a rule's window is unknown (the rule was removed since), an hour around the alert.
  const DEFAULT_OVER_MS = 3_600_000;

  // ------------------------------------------------------------------ DOM

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
  // Client text, isolated from the text around it.
  const bdi = (text, attrs = {}) => el('bdi', { ...attrs, text: String(text) });

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One request. A non-2xx answer throws ApiError with the server's `error` message (the
  // field it names), so a form can show why it was refused.
  async function api(path, { method = 'GET', body, apiKey } = {}) {
    const headers = {};
    if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
    } catch (error) {
      throw new ApiError(0, error.message);
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let value = null;
    try { value = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
    if (!response.ok) {
      const message = value && typeof value.error === 'string' ? value.error : `HTTP ${response.status}`;
      throw new ApiError(response.status, message);
    }
    return value;
  }

  // The rules in force, for their windows (`over`): fetched once, and again when an alert
  // names a rule it does not know (a reload added it), at most every 30 s.
  class RuleBook {
    constructor() {
      this.rules = new Map();
      this.fetchedAt = -Infinity;
      this.pending = null;
    }

    async ensure(names, apiKey) {
      const missing = names.some((name) => !this.rules.has(name));
      if (!missing || this.pending || Date.now() - this.fetchedAt < 30_000) return this.pending;
      this.fetchedAt = Date.now();
      this.pending = api('/v1/rules', { apiKey }).then((answer) => {
        this.rules = new Map((answer.rules || []).map((rule) => [rule.name, rule]));
      }, () => { /* the windows fall back to an hour; the next alert tries again */ }).finally(() => { this.pending = null; });
      return this.pending;
    }

    // The rule's group_by, to show a group's labels in the rule's order (the API's
    // objects come sorted by name).
    groupBy(name) {
      const rule = this.rules.get(name);
      return rule && Array.isArray(rule.group_by) ? rule.group_by : [];
    }

    overMs(name) {
      const rule = this.rules.get(name);
      return (rule && parseSpan(rule.over)) || DEFAULT_OVER_MS;
    }
  }

  // "90s", "10m", "2h", "7d" as the API writes spans.
  function parseSpan(text) {
    const match = /^(\d{1,9})(s|m|h|d)$/.exec(String(text || ''));
    if (!match) return null;
    return Number(match[1]) * { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2]];
  }

  // ------------------------------------------------------------------ alerts as text and links

  // The group as [name, value] pairs (`{}` for a rule without group_by: all traffic), in
  // `order` (the rule's group_by) where it names them.
  function groupPairs(group, order = []) {
    if (!group || typeof group !== 'object') return [];
    const rank = (name) => { const i = order.indexOf(name); return i < 0 ? order.length : i; };
    return Object.entries(group).map(([k, v]) => [k, String(v)]).sort((a, b) => rank(a[0]) - rank(b[0]));
  }

  // "channel: social · campaign: saldi", each part isolated.
  function groupNodes(group, t, order) {
    const pairs = groupPairs(group, order);
    if (!pairs.length) return [el('span', { class: 'muted', text: t('everything') })];
    const nodes = [];
    pairs.forEach(([name, value], i) => {
      if (i) nodes.push(' · ');
      const label = Object.hasOwn(WORDS.en, `label.${name}`) ? t(`label.${name}`) : name;
      nodes.push(el('span', { class: 'group-part', 'data-label': name }, bdi(label), ': ', bdi(value)));
    });
    return nodes;
  }

  // The measured value in the unit of what the condition measures: money for CPA, AOV,
  // revenue and spend, a percentage for the conversion rate, a plain number otherwise.
  const MONEY = new Set(['cpa', 'aov', 'revenue', 'spend']);
  function valueText(value, expr, lang) {
    if (value == null || !Number.isFinite(value)) return '—';
    const metric = (/^\s*([a-z_]+)\s*(?:[<>=!]|$)/.exec(String(expr || '')) || [])[1];
    const options = { useGrouping: 'always' };
    if (MONEY.has(metric)) Object.assign(options, { style: 'currency', currency: 'EUR' });
    else if (metric === 'conversion_rate') Object.assign(options, { style: 'percent', maximumFractionDigits: 2 });
    else options.maximumFractionDigits = 2;
    return new Intl.NumberFormat(locale(lang), options).format(value);
  }

  function timeText(iso, lang) {
    const ms = Date.parse(iso);
    if (!Number.isFinite(ms)) return '—';
    const sameDay = new Date(ms).toDateString() === new Date().toDateString();
    return new Intl.DateTimeFormat(locale(lang), sameDay
      ? { hour: '2-digit', minute: '2-digit' }
      : { weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' }).format(new Date(ms));
  }

  // The link the dashboard opens for a group and window, in the form of a notice's
  // `drilldown` (view.js reads it): the group's dimensions, then from and to.
  function drilldownHref(group, window, order) {
    const params = new URLSearchParams();
    for (const [name, value] of groupPairs(group, order)) if (DRILL_DIMENSIONS.includes(name)) params.append(name, value);
    params.set('from', new Date(window.from).toISOString());
    params.set('to', new Date(window.to).toISOString());
    return `/?${params}`;
  }

  // A firing or pending alert's window: from the start of the first window that met the
  // condition (`since` is that window's end) to the last minute evaluated, so the view
  // shows the whole time the alert has held.
  function activeWindow(alert, overMs, evaluatedThrough) {
    const since = Date.parse(alert.since);
    const through = Math.max(Date.parse(evaluatedThrough) || 0, Date.parse(alert.fired_at) || 0, since);
    return { from: since - overMs, to: through > since ? through : since };
  }

  // A history entry's window: the rule's window ending at the minute it was decided at, as
  // the notice sent then.
  function historyWindow(entry, overMs) {
    const at = Date.parse(entry.at);
    return { from: at - overMs, to: at };
  }

  // "firing (silenced)" → "Fired, silenced".
  function eventText(event, t) {
    const match = /^([a-z]+)(?: \(([a-z]+)\))?$/.exec(String(event || ''));
    if (!match) return String(event || '');
    const main = t(`event.${match[1]}`);
    return match[2] ? `${main}, ${t(`event.${match[2]}`)}` : main;
  }

  window.VedettaAlerts = {
    WORDS, words, locale, el, bdi, api, ApiError, RuleBook, parseSpan, MATCHER_NAMES, severityOf,
    groupPairs, groupNodes, valueText, timeText, drilldownHref, activeWindow, historyWindow, eventText,
  };
})();
