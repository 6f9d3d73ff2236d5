// The triggers page (`/triggers`): per trigger, its firings in the last hour and day (event
// time), users sent, segment signals, users withheld for lack of consent, and the failed
// delivery attempts of its pushes with the last error; per
// destination, its outbox depth, the age of its oldest message and the head's attempts and
// last error; the trigger consumer's failures and last error; per trigger and destination,
// requests delivered, failed attempts, dead letters and the last error (stored: a restart
// keeps them); the newest firings with their outcome at each destination
// (`GET /v1/triggers/firings`).
//
// It polls `GET /v1/triggers` every POLL_MS while visible. Trigger and destination names and
// errors are client or remote text: only ever put in as text nodes (A.el / A.bdi). Language
// and API key are the dashboard's (same storage keys).
'use strict';

(() => {
  const A = window.VedettaAlerts;
  const { el, bdi } = A;
  const POLL_MS = 3_000;
  const FIRINGS_SHOWN = 20;

  const WORDS = {
    en: {
      title: 'Triggers', dashboard: 'Dashboard', alerts: 'Alerts', triggers: 'Triggers', destinations: 'Destinations',
      consumerFailures: 'Consumer failures', lastError: 'Last error', none: '—',
      noTriggers: 'No trigger is configured.', noDestinations: 'No destination is configured.',
      'col.trigger': 'Trigger', 'col.kind': 'Kind', 'col.hour': 'Firings (1 h)', 'col.day': 'Firings (24 h)',
      'col.users': 'Users sent', 'col.signals': 'Signals', 'col.withheld': 'Withheld (no consent)',
      'col.failures': 'Failed deliveries', 'col.lastError': 'Last delivery error',
      'col.destination': 'Destination', 'col.depth': 'Waiting', 'col.oldest': 'Oldest waiting',
      'col.attempts': 'Failed attempts (head)', 'col.error': 'Last error',
      deliveries: 'Deliveries per destination', firings: 'Latest firings',
      'col.delivered': 'Delivered', 'col.failedAttempts': 'Failed attempts', 'col.dead': 'Dead letters',
      'col.who': 'User or signal', 'col.at': 'Event time', 'col.outcomes': 'Outcome per destination',
      noDeliveries: 'No trigger notifies a destination.', noFirings: 'No firing yet.',
      'signal.firing': 'signal: firing', 'signal.recovered': 'signal: recovered',
      'state.pending': 'waiting for its batch', 'state.queued': 'in the outbox', 'state.delivered': 'delivered',
      'state.dry_run': 'dry run (not sent)', 'state.dead': 'dead letter', 'state.unknown': 'unknown',
      atLeast: 'at least {n}', updated: 'Updated {time}', error: 'The server answered: {message}',
      reloadError: 'The triggers file was not reloaded: {message}',
      authNeeded: 'This page needs an API key.', authWrong: 'The key was not accepted.', apiKey: 'API key',
      open: 'Open', language: 'English',
    },
    it: {
      title: 'Trigger', dashboard: 'Cruscotto', alerts: 'Allarmi', triggers: 'Trigger', destinations: 'Destinazioni',
      consumerFailures: 'Errori del consumatore', lastError: 'Ultimo errore', none: '—',
      noTriggers: 'Nessun trigger configurato.', noDestinations: 'Nessuna destinazione configurata.',
      'col.trigger': 'Trigger', 'col.kind': 'Tipo', 'col.hour': 'Scatti (1 h)', 'col.day': 'Scatti (24 h)',
      'col.users': 'Utenti inviati', 'col.signals': 'Segnali', 'col.withheld': 'Trattenuti (senza consenso)',
      'col.failures': 'Consegne fallite', 'col.lastError': 'Ultimo errore di consegna',
      'col.destination': 'Destinazione', 'col.depth': 'In attesa', 'col.oldest': 'Il più vecchio in attesa',
      'col.attempts': 'Tentativi falliti (primo)', 'col.error': 'Ultimo errore',
      deliveries: 'Consegne per destinazione', firings: 'Ultimi scatti',
      'col.delivered': 'Consegnate', 'col.failedAttempts': 'Tentativi falliti', 'col.dead': 'Scartate (dead letter)',
      'col.who': 'Utente o segnale', 'col.at': 'Ora dell\'evento', 'col.outcomes': 'Esito per destinazione',
      noDeliveries: 'Nessun trigger notifica una destinazione.', noFirings: 'Ancora nessuno scatto.',
      'signal.firing': 'segnale: attivo', 'signal.recovered': 'segnale: rientrato',
      'state.pending': 'in attesa del lotto', 'state.queued': 'nella coda di uscita', 'state.delivered': 'consegnato',
      'state.dry_run': 'prova (non inviato)', 'state.dead': 'scartato', 'state.unknown': 'sconosciuto',
      atLeast: 'almeno {n}', updated: 'Aggiornato alle {time}', error: 'Il server ha risposto: {message}',
      reloadError: 'Il file dei trigger non è stato ricaricato: {message}',
      authNeeded: 'Questa pagina richiede una chiave API.', authWrong: 'La chiave non è stata accettata.',
      apiKey: 'Chiave API', open: 'Apri', language: 'Italiano',
    },
  };

  const storage = {
    get(key) { try { return localStorage.getItem(key); } catch { return null; } },
    set(key, value) { try { value == null ? localStorage.removeItem(key) : localStorage.setItem(key, value); } catch { /* private mode */ } },
  };
  const state = {
    lang: storage.get('vedetta.lang') || ((navigator.language || '').toLowerCase().startsWith('it') ? 'it' : 'en'),
    apiKey: storage.get('vedetta.apiKey') || '',
    answer: null,
    firings: null,
    authOpen: false,
    timer: 0,
    inFlight: false,
  };
  const words = (lang) => (key, vars) => {
    let text = (WORDS[lang] || WORDS.en)[key] ?? WORDS.en[key] ?? key;
    if (vars) for (const [name, value] of Object.entries(vars)) text = text.replace(`{${name}}`, value);
    return text;
  };
  let t = words(state.lang);

  async function poll() {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, POLL_MS);
    if (state.inFlight || document.hidden || state.authOpen) return;
    state.inFlight = true;
    try {
      const [answer, firings] = await Promise.all([
        A.api('/v1/triggers', { apiKey: state.apiKey }),
        A.api(`/v1/triggers/firings?limit=${FIRINGS_SHOWN}`, { apiKey: state.apiKey }),
      ]);
      state.answer = answer;
      state.firings = firings;
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

  const number = (n) => new Intl.NumberFormat(A.locale(state.lang)).format(n);
  // An age in seconds as the largest whole units (`2 h 5 min`, `40 s`).
  function age(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (seconds < 1) return '< 1 s';
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }
  const cell = (field, value, text) => el('td', { 'data-field': field, 'data-value': String(value) }, text);
  const header = (...keys) => el('thead', {}, el('tr', {}, ...keys.map((k) => el('th', { scope: 'col', text: t(k) }))));

  function renderStatic() {
    document.documentElement.lang = state.lang;
    document.title = `Vedetta · ${t('title')}`;
    for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
    const toggle = document.getElementById('lang-toggle');
    const other = state.lang === 'it' ? 'en' : 'it';
    toggle.textContent = other.toUpperCase();
    toggle.lang = other;
    toggle.title = WORDS[other].language;
  }

  function render() {
    const answer = state.answer;
    if (!answer) return;
    if (answer.reload_error) showBanner(t('reloadError', { message: answer.reload_error }));
    else hideBanner();
    document.getElementById('consumer-failures').textContent = number(answer.failures);
    document.getElementById('consumer-error').textContent = answer.last_error || t('none');
    const capped = answer.firing_counts_capped;
    const fired = (n) => (capped ? t('atLeast', { n: number(n) }) : number(n));
    const triggers = document.getElementById('triggers');
    triggers.replaceChildren(header('col.trigger', 'col.kind', 'col.hour', 'col.day', 'col.users', 'col.signals', 'col.withheld', 'col.failures', 'col.lastError'));
    const body = el('tbody');
    for (const tr of answer.triggers) {
      body.append(el('tr', { 'data-trigger': tr.name },
        el('th', { scope: 'row' }, bdi(tr.name)),
        el('td', { text: tr.kind }),
        cell('firings_last_hour', tr.firings_last_hour, fired(tr.firings_last_hour)),
        cell('firings_last_day', tr.firings_last_day, fired(tr.firings_last_day)),
        cell('users_sent', tr.users_sent, number(tr.users_sent)),
        cell('signals', tr.signals, number(tr.signals)),
        cell('withheld_no_consent', tr.withheld_no_consent, number(tr.withheld_no_consent)),
        cell('delivery_failures', tr.delivery_failures, number(tr.delivery_failures)),
        el('td', { 'data-field-text': 'last_delivery_error' }, bdi(tr.last_delivery_error || t('none')))));
    }
    if (!answer.triggers.length) body.append(el('tr', {}, el('td', { colspan: '9', class: 'muted', text: t('noTriggers') })));
    triggers.append(body);

    const destinations = document.getElementById('destinations');
    destinations.replaceChildren(header('col.destination', 'col.depth', 'col.oldest', 'col.attempts', 'col.error'));
    const rows = el('tbody');
    for (const d of answer.destinations) {
      rows.append(el('tr', { 'data-destination': d.destination },
        el('th', { scope: 'row' }, bdi(d.destination)),
        cell('depth', d.depth, d.depth_capped ? t('atLeast', { n: number(d.depth) }) : number(d.depth)),
        cell('oldest_age_seconds', d.oldest_age_seconds, d.depth ? age(d.oldest_age_seconds) : t('none')),
        cell('head_attempts', d.head_attempts, number(d.head_attempts)),
        el('td', { 'data-field': 'head_last_error' }, bdi(d.head_last_error || t('none')))));
    }
    if (!answer.destinations.length) rows.append(el('tr', {}, el('td', { colspan: '5', class: 'muted', text: t('noDestinations') })));
    destinations.append(rows);

    const deliveries = document.getElementById('deliveries');
    deliveries.replaceChildren(header('col.trigger', 'col.destination', 'col.delivered', 'col.failedAttempts', 'col.dead', 'col.error'));
    const split = el('tbody');
    for (const tr of answer.triggers) {
      for (const d of tr.deliveries || []) {
        split.append(el('tr', { 'data-delivery-trigger': tr.name, 'data-delivery-destination': d.destination },
          el('th', { scope: 'row' }, bdi(tr.name)),
          el('td', {}, bdi(d.destination)),
          cell('delivered', d.delivered, number(d.delivered)),
          cell('failed_attempts', d.failed_attempts, number(d.failed_attempts)),
          cell('dead', d.dead, number(d.dead)),
          el('td', { 'data-field-text': 'last_error' }, bdi(d.last_error || t('none')))));
      }
    }
    if (!split.children.length) split.append(el('tr', {}, el('td', { colspan: '6', class: 'muted', text: t('noDeliveries') })));
    deliveries.append(split);

    const firings = document.getElementById('firings');
    firings.replaceChildren(header('col.trigger', 'col.who', 'col.at', 'col.outcomes'));
    const recent = el('tbody');
    for (const f of (state.firings && state.firings.firings) || []) {
      const who = f.what === 'signal' ? t(`signal.${f.signal}`) : (f.user || '').slice(0, 16);
      const outcomes = el('td', { 'data-field': 'outcomes' });
      for (const o of f.outcomes || []) {
        outcomes.append(el('div', { 'data-outcome-destination': o.destination, 'data-state': o.state },
          bdi(o.destination), ': ', t(`state.${o.state}`), o.error ? ' — ' : null, o.error ? bdi(o.error) : null));
      }
      recent.append(el('tr', { 'data-firing-trigger': f.trigger },
        el('th', { scope: 'row' }, bdi(f.trigger)),
        el('td', { 'data-field': 'who', title: f.user || '' }, bdi(who)),
        el('td', { 'data-field': 'at', text: f.at ? new Date(f.at).toLocaleString(A.locale(state.lang)) : t('none') }),
        outcomes));
    }
    if (!recent.children.length) recent.append(el('tr', {}, el('td', { colspan: '4', class: 'muted', text: t('noFirings') })));
    firings.append(recent);
  }

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
  document.getElementById('lang-toggle').addEventListener('click', () => {
    state.lang = state.lang === 'it' ? 'en' : 'it';
    storage.set('vedetta.lang', state.lang);
    t = words(state.lang);
    renderStatic();
    render();
  });

  renderStatic();
  poll();
})();
