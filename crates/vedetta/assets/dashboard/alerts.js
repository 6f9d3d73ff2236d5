// The alerts page (`/alerts`): firing and pending alerts with their drill-downs, active
// silences, a form to create one ("silence this" on an alert fills in its labels) and a
// button to end one, and the history, newest first.
//
// It polls `GET /v1/alerts` every POLL_MS while visible. The form is never rebuilt by a poll
// (what is being typed stays); the tables are. Errors of the API are shown as it words them
// (a 400 names the field). Language and API key are the dashboard's (same storage keys).
'use strict';

(() => {
  const A = window.VedettaAlerts;
  const { el, bdi } = A;
  const POLL_MS = 5_000;
  const HISTORY_LIMIT = 200;

  const storage = {
    get(key) { try { return localStorage.getItem(key); } catch { return null; } },
    set(key, value) { try { value == null ? localStorage.removeItem(key) : localStorage.setItem(key, value); } catch { /* private mode */ } },
  };
  const state = {
    lang: storage.get('vedetta.lang') || ((navigator.language || '').toLowerCase().startsWith('it') ? 'it' : 'en'),
    apiKey: storage.get('vedetta.apiKey') || '',
    answer: null,
    authOpen: false,
    timer: 0,
    inFlight: false,
  };
  const rules = new A.RuleBook();
  let t = A.words(state.lang);

  // ------------------------------------------------------------------ polling

  async function poll() {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, POLL_MS);
    if (state.inFlight || document.hidden || state.authOpen) return;
    state.inFlight = true;
    try {
      const answer = await A.api(`/v1/alerts?limit=${HISTORY_LIMIT}`, { apiKey: state.apiKey });
      answer.inbox = (await A.api('/v1/inbox?limit=50', { apiKey: state.apiKey })).inbox;
      const names = [...answer.firing, ...answer.pending, ...answer.history].map((a) => a.rule);
      await rules.ensure(names, state.apiKey);
      state.answer = answer;
      hideBanner();
      render();
      document.getElementById('updated').textContent = t('updated', { time: new Date().toLocaleTimeString(A.locale(state.lang)) });
    } catch (error) {
      if (error.status === 401) showAuth();
      else showBanner(t('error', { message: error.message }));
    } finally {
      state.inFlight = false;
    }
  }
  document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });

  // ------------------------------------------------------------------ rendering

  function renderStatic() {
    document.documentElement.lang = state.lang;
    document.title = `Vedetta · ${t('title')}`;
    for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
    const toggle = document.getElementById('lang-toggle');
    const other = state.lang === 'it' ? 'en' : 'it';
    toggle.textContent = other.toUpperCase();
    toggle.lang = other;
    toggle.title = A.WORDS[other].language;
    for (const row of document.querySelectorAll('#matchers .matcher')) labelMatcher(row);
  }

  function render() {
    const answer = state.answer;
    if (!answer) return;
    const evaluated = document.getElementById('evaluated');
    evaluated.textContent = answer.evaluated_through
      ? t('evaluatedThrough', { time: A.timeText(answer.evaluated_through, state.lang) }) : t('notEvaluated');
    renderAlerts('firing', answer.firing, 'noFiring');
    renderAlerts('pending', answer.pending, 'noPending');
    renderSilences(answer.silences);
    renderHistory(answer.history);
    renderInbox(answer.inbox || []);
    const health = document.querySelector('.health');
    health.dataset.level = answer.firing.some((a) => a.severity === 'critical') ? 'bad' : answer.firing.length ? 'warn' : 'ok';
  }

  const head = (...keys) => el('thead', {}, el('tr', {}, ...keys.map((key) => el('th', { scope: 'col', text: t(`col.${key}`) }))));
  const emptyRow = (columns, key) => el('tr', { class: 'empty' }, el('td', { colspan: String(columns), text: t(key) }));
  const severityBadge = (value) => {
    const severity = A.severityOf(value);
    return el('span', { class: 'badge', 'data-severity': severity, text: t(`severity.${severity}`) });
  };

  function renderAlerts(id, alerts, emptyKey) {
    const table = document.getElementById(id);
    const columns = ['severity', 'rule', 'group', 'value', 'since', 'condition', 'actions'];
    const rows = alerts.map((alert) => {
      const order = rules.groupBy(alert.rule);
      const href = A.drilldownHref(alert.group, A.activeWindow(alert, rules.overMs(alert.rule), state.answer.evaluated_through), order);
      return el('tr', { 'data-alert': id, 'data-rule': alert.rule, 'data-group': JSON.stringify(alert.group || {}), 'data-severity': A.severityOf(alert.severity) },
        el('td', {}, severityBadge(alert.severity)),
        el('th', { scope: 'row' }, bdi(alert.rule)),
        el('td', { class: 'group' }, ...A.groupNodes(alert.group, t, order)),
        el('td', { class: 'num', 'data-value': alert.value == null ? 'null' : String(alert.value), text: A.valueText(alert.value, alert.expr, state.lang) }),
        el('td', { text: A.timeText(alert.since, state.lang), title: alert.since }),
        el('td', {}, el('code', {}, bdi(alert.expr ?? '—'))),
        el('td', { class: 'actions' },
          el('a', { href, 'data-drill': '', text: t('drill') }),
          el('button', { type: 'button', class: 'secondary', 'data-silence-this': '', text: t('silenceThis') })));
    });
    table.replaceChildren(head(...columns), el('tbody', {}, ...(rows.length ? rows : [emptyRow(columns.length, emptyKey)])));
  }

  function renderSilences(silences) {
    const table = document.getElementById('silences');
    const columns = ['matchers', 'ends', 'by', 'comment', 'actions'];
    const rows = silences.map((silence) => el('tr', { 'data-silence': '', 'data-id': silence.id },
      el('td', { class: 'matchers-cell' }, ...silence.matchers.flatMap((m, i) => [
        i ? ', ' : null, el('span', { class: 'matcher-text' }, bdi(m.name), ' = ', bdi(m.value))]).filter((n) => n != null)),
      el('td', { text: A.timeText(silence.ends_at, state.lang), title: silence.ends_at }),
      el('td', {}, bdi(silence.created_by || '—')),
      el('td', { class: 'comment' }, bdi(silence.comment || '—')),
      el('td', { class: 'actions' }, el('button', { type: 'button', class: 'danger', 'data-delete': '', text: t('deleteSilence') }))));
    table.replaceChildren(head(...columns), el('tbody', {}, ...(rows.length ? rows : [emptyRow(columns.length, 'noSilences')])));
  }

  function renderHistory(history) {
    const table = document.getElementById('history');
    const columns = ['at', 'event', 'rule', 'group', 'value', 'actions'];
    const rows = history.map((entry) => {
      const kind = (/^[a-z]+/.exec(String(entry.event || '')) || [''])[0];
      const order = rules.groupBy(entry.rule);
      const href = A.drilldownHref(entry.group, A.historyWindow(entry, rules.overMs(entry.rule)), order);
      const rule = rules.rules.get(entry.rule);
      return el('tr', { 'data-history': '', 'data-event': entry.event, 'data-rule': entry.rule, 'data-kind': kind },
        el('td', { text: A.timeText(entry.at, state.lang), title: entry.at }),
        el('td', { class: 'event' }, A.eventText(entry.event, t)),
        el('th', { scope: 'row' }, bdi(entry.rule)),
        el('td', { class: 'group' }, ...A.groupNodes(entry.group, t, order)),
        el('td', { class: 'num', text: A.valueText(entry.value, rule && rule.expr, state.lang) }),
        el('td', { class: 'actions' }, el('a', { href, 'data-drill': '', text: t('drill') })));
    });
    table.replaceChildren(head(...columns), el('tbody', {}, ...(rows.length ? rows : [emptyRow(columns.length, 'noHistory')])));
  }

  /** A trigger's push kept by an inbox: the trigger, how many users, their products. */
  function pushRow(item) {
    const push = item.notification.push;
    const products = [...new Set(push.events.flatMap((e) => e.product_ids && e.product_ids.length ? e.product_ids : (e.product_id ? [e.product_id] : [])))];
    const parts = [t('pushUsers').replace('{trigger}', push.trigger).replace('{n}', String(push.events.length))];
    if (push.segment) parts.push(push.segment);
    if (push.signal) parts.push(t(`signal.${push.signal.signal}`));
    if (products.length) parts.push(t('pushProducts').replace('{list}', products.slice(0, 5).join(', ') + (products.length > 5 ? '…' : '')));
    return el('tr', { 'data-inbox': '', 'data-push': push.trigger },
      el('td', { text: A.timeText(item.delivered_at, state.lang), title: item.delivered_at }),
      el('td', {}, bdi(item.notification.destination)),
      el('td', { class: 'event' }, el('span', { text: t('event.push') })),
      el('td', { class: 'message' }, bdi(parts.join(' · '))),
      el('td', { class: 'actions' }));
  }

  /** What `inbox` destinations received: one row per notice, its message as sent. */
  function renderInbox(inbox) {
    const table = document.getElementById('inbox');
    const columns = ['delivered', 'destination', 'event', 'message', 'actions'];
    const rows = inbox.flatMap((item) => item.notification.push ? [pushRow(item)] : item.notification.notices.map((notice) =>
      el('tr', { 'data-inbox': '', 'data-rule': notice.rule, 'data-status': notice.status },
        el('td', { text: A.timeText(item.delivered_at, state.lang), title: item.delivered_at }),
        el('td', {}, bdi(item.notification.destination)),
        el('td', { class: 'event' }, A.eventText(notice.status, t)),
        el('td', { class: 'message' }, bdi(notice.summary)),
        el('td', { class: 'actions' }, el('a', { href: notice.drilldown, 'data-drill': '', text: t('drill') })))));
    table.replaceChildren(head(...columns), el('tbody', {}, ...(rows.length ? rows : [emptyRow(columns.length, 'noInbox')])));
  }

  // ------------------------------------------------------------------ the silence form

  function labelMatcher(row) {
    for (const option of row.querySelector('select').options) option.textContent = t(`label.${option.value}`);
    row.querySelector('select').setAttribute('aria-label', t('label'));
    row.querySelector('input').setAttribute('aria-label', t('value'));
    row.querySelector('input').placeholder = t('value');
    row.querySelector('button').textContent = t('removeMatcher');
  }
  function addMatcher(name = 'rule', value = '') {
    const select = el('select', { name: 'matcher-name' }, ...A.MATCHER_NAMES.map((n) => el('option', { value: n })));
    select.value = name;
    const row = el('div', { class: 'matcher' }, select,
      el('input', { name: 'matcher-value', maxlength: '256', required: true, value }),
      el('button', { type: 'button', class: 'secondary', 'data-remove-matcher': '' }));
    // `value` as an attribute is the default; the property is what the form submits.
    row.querySelector('input').value = value;
    labelMatcher(row);
    document.getElementById('matchers').append(row);
    return row;
  }
  function setMatchers(pairs) {
    document.getElementById('matchers').replaceChildren();
    for (const [name, value] of pairs.length ? pairs : [['rule', '']]) addMatcher(name, value);
  }

  // "Silence this": the alert's rule and its group's labels.
  function silenceThis(row) {
    const group = JSON.parse(row.dataset.group || '{}');
    const pairs = [['rule', row.dataset.rule], ...A.groupPairs(group, rules.groupBy(row.dataset.rule)).filter(([name]) => A.MATCHER_NAMES.includes(name))];
    setMatchers(pairs);
    hideFormMessages();
    const form = document.getElementById('silence-form');
    form.scrollIntoView({ block: 'nearest' });
    document.getElementById('silence-duration').focus();
  }

  function hideFormMessages() {
    document.getElementById('silence-error').hidden = true;
    document.getElementById('silence-ok').hidden = true;
  }
  function formMessage(id, text) {
    hideFormMessages();
    const node = document.getElementById(id);
    node.textContent = text;
    node.hidden = false;
  }

  async function submitSilence(event) {
    event.preventDefault();
    const matchers = [...document.querySelectorAll('#matchers .matcher')].map((row) => ({
      name: row.querySelector('select').value, value: row.querySelector('input').value.trim(),
    }));
    const createdBy = document.getElementById('silence-created-by').value.trim();
    const body = {
      matchers,
      duration: document.getElementById('silence-duration').value.trim(),
      comment: document.getElementById('silence-comment').value.trim(),
      created_by: createdBy,
    };
    const button = document.getElementById('silence-submit');
    button.disabled = true;
    try {
      await A.api('/v1/silences', { method: 'POST', body, apiKey: state.apiKey });
      storage.set('vedetta.user', createdBy || null);
      setMatchers([]);
      document.getElementById('silence-comment').value = '';
      formMessage('silence-ok', t('created'));
      poll();
    } catch (error) {
      if (error.status === 401) showAuth();
      else formMessage('silence-error', error.status === 400 ? error.message : t('error', { message: error.message }));
    } finally {
      button.disabled = false;
    }
  }

  async function deleteSilence(row) {
    const button = row.querySelector('button[data-delete]');
    button.disabled = true;
    try {
      await A.api(`/v1/silences/${encodeURIComponent(row.dataset.id)}`, { method: 'DELETE', apiKey: state.apiKey });
      row.remove();
      formMessage('silence-ok', t('deleted'));
    } catch (error) {
      button.disabled = false;
      if (error.status === 401) showAuth();
      else showBanner(t('error', { message: error.message }));
    }
    poll();
  }

  // ------------------------------------------------------------------ chrome

  function showBanner(text) {
    const banner = document.getElementById('banner');
    banner.textContent = text;
    banner.hidden = false;
  }
  function hideBanner() { document.getElementById('banner').hidden = true; }

  function showAuth() {
    const wrongKey = Boolean(state.apiKey);
    state.authOpen = true;
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
    poll();
  });

  document.addEventListener('click', (event) => {
    const target = event.target;
    if (target.closest('#lang-toggle')) {
      state.lang = state.lang === 'it' ? 'en' : 'it';
      storage.set('vedetta.lang', state.lang);
      t = A.words(state.lang);
      renderStatic();
      render();
      return;
    }
    const silence = target.closest('button[data-silence-this]');
    if (silence) { silenceThis(silence.closest('tr[data-alert]')); return; }
    const remove = target.closest('button[data-delete]');
    if (remove) { deleteSilence(remove.closest('tr[data-silence]')); return; }
    const removeMatcher = target.closest('button[data-remove-matcher]');
    if (removeMatcher) {
      removeMatcher.closest('.matcher').remove();
      if (!document.querySelector('#matchers .matcher')) addMatcher();
      return;
    }
    if (target.closest('#add-matcher') && document.querySelectorAll('#matchers .matcher').length < 10) addMatcher('channel');
  });
  document.getElementById('silence-form').addEventListener('submit', submitSilence);

  document.getElementById('silence-created-by').value = storage.get('vedetta.user') || '';
  setMatchers([]);
  renderStatic();
  poll();
})();
