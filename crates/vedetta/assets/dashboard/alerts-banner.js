// The dashboard's banner of firing alerts: rule, group, value, since, in the severity's
// colour; each one a link to its drill-down (the dashboard filtered to the alert's group and
// window, view.js), and a link to the alerts page.
//
// Cheap by design: one `GET /v1/alerts?limit=0` (no history read) every POLL_MS while the
// tab is visible, none while it is hidden or the key form is open; `/v1/rules` only when an
// alert names a rule not seen before. app.js starts it and re-renders it on a language change.
//
// Attributes tests/browser/alerts.test.mjs relies on: `#alert-banner[data-count]`, one
// `a[data-alert]` per firing alert with `data-rule`, `data-severity` and `data-group` (the
// group as JSON), its `href` the drill-down link.
'use strict';

(() => {
  const A = window.VedettaAlerts;
  const POLL_MS = 5_000;
  const MOST_SHOWN = 5;
  const rules = new A.RuleBook();
  let options = null;
  let answer = null;
  let timer = 0;
  let inFlight = false;

  function start(given) {
    options = given;
    document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
    poll();
  }

  async function poll() {
    clearTimeout(timer);
    timer = setTimeout(poll, POLL_MS);
    if (inFlight || document.hidden || options.paused()) return;
    inFlight = true;
    try {
      const next = await A.api('/v1/alerts?limit=0', { apiKey: options.apiKey() });
      await rules.ensure((next.firing || []).map((alert) => alert.rule), options.apiKey());
      answer = next;
      render();
    } catch {
      // The dashboard's own requests report an unreachable server or a missing key; the
      // banner keeps what it last knew.
    } finally {
      inFlight = false;
    }
  }

  // Critical first, then the longest firing.
  const RANK = { critical: 0, warning: 1, info: 2, unknown: 3 };
  function render() {
    const banner = document.getElementById('alert-banner');
    if (!banner || !answer || !options) return;
    const t = A.words(options.lang());
    const lang = options.lang();
    const firing = [...(answer.firing || [])].sort((a, b) =>
      RANK[A.severityOf(a.severity)] - RANK[A.severityOf(b.severity)] || String(a.since).localeCompare(String(b.since)));
    banner.dataset.count = String(firing.length);
    if (!firing.length) { banner.hidden = true; banner.replaceChildren(); return; }
    const worst = A.severityOf(firing[0].severity);
    banner.dataset.severity = worst;
    const items = firing.slice(0, MOST_SHOWN).map((alert) => {
      const severity = A.severityOf(alert.severity);
      const order = rules.groupBy(alert.rule);
      const href = A.drilldownHref(alert.group, A.activeWindow(alert, rules.overMs(alert.rule), answer.evaluated_through), order);
      return A.el('li', {}, A.el('a', {
        href, 'data-alert': '', 'data-rule': alert.rule, 'data-severity': severity, 'data-group': JSON.stringify(alert.group || {}),
        title: t('banner.open', { rule: alert.rule }),
      },
      A.el('span', { class: 'badge', 'data-severity': severity, text: t(`severity.${severity}`) }),
      A.bdi(alert.rule, { class: 'rule' }),
      A.el('span', { class: 'group' }, ...A.groupNodes(alert.group, t, order)),
      A.el('span', { class: 'value', 'data-value': alert.value == null ? 'null' : String(alert.value), text: A.valueText(alert.value, alert.expr, lang) }),
      A.el('span', { class: 'since', text: t('since', { time: A.timeText(alert.since, lang) }) })));
    });
    const more = firing.length - MOST_SHOWN;
    banner.replaceChildren(
      A.el('strong', { class: 'title', text: firing.length === 1 ? t('banner.one') : t('banner.many', { n: firing.length }) }),
      A.el('ul', {}, ...items),
      A.el('a', { class: 'all', href: '/alerts', text: more > 0 ? `${t('banner.more', { n: more })} · ${t('banner.all')}` : t('banner.all') }),
    );
    banner.hidden = false;
  }

  window.VedettaAlertBanner = { start, render };
})();
