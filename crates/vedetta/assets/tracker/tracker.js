/* Vedetta tracker: docs/sources.md. <script defer src="https://vedetta.example/v1/tracker.js" data-site="KEY"></script>
   Sends a page_view on load and on single-page navigations; vedetta('track', type, {value, currency, product_id, order_id, ...})
   sends anything else; vedetta('consent', {analytics, marketing}) sets consent. Until analytics consent is given no id is
   stored: the server derives a daily-rotating one from the truncated address and the user agent. */
(function (w, d) {
  'use strict';
  var script = d.currentScript;
  if (!script || w.__vedetta) return;
  w.__vedetta = true;
  var nav = w.navigator, loc = w.location, store;
  try { store = w.localStorage; } catch (e) { store = null; }
  var site = script.getAttribute('data-site') || '';
  var endpoint = new URL(script.src, d.baseURI).origin + '/v1/events?site=' + encodeURIComponent(site);
  var dnt = script.getAttribute('data-dnt') === 'respect' &&
    (nav.doNotTrack === '1' || w.doNotTrack === '1' || nav.globalPrivacyControl === true);
  var ID = 'vedetta_id', MKT = 'vedetta_mkt';
  var KNOWN = { value: 1, currency: 1, product_id: 1, order_id: 1, event_id: 1 };
  var queue = [], timer = 0, lastPage = '', first = true;

  function get(k) { try { return store && store.getItem(k); } catch (e) { return null; } }
  function set(k, v) { try { if (store) { if (v === null) store.removeItem(k); else store.setItem(k, v); } } catch (e) { /* full or blocked */ } }
  function rid() {
    if (w.crypto && w.crypto.randomUUID) return w.crypto.randomUUID();
    var s = ''; for (var i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16); return s;
  }

  var granted = script.getAttribute('data-consent') === 'granted';
  var id = get(ID);
  var marketing = get(MKT) === '1';
  if (granted && !id) { id = rid(); set(ID, id); }

  function consent(c) {
    c = c || {};
    if (c.analytics) {
      if (!id) { id = rid(); set(ID, id); }
    } else {
      id = null; set(ID, null); set(MKT, null);
    }
    marketing = !!(c.analytics && c.marketing);
    if (id) set(MKT, marketing ? '1' : '0');
  }

  function flush() {
    clearTimeout(timer); timer = 0;
    if (!queue.length) return;
    var body = JSON.stringify(queue.splice(0, 100));
    var url = endpoint + '&st=' + Date.now();
    var sent = false;
    try { sent = !!(nav.sendBeacon && nav.sendBeacon(url, body)); } catch (e) { sent = false; }
    if (!sent && w.fetch) {
      w.fetch(url, { method: 'POST', body: body, keepalive: true, credentials: 'omit', mode: 'cors',
        headers: { 'Content-Type': 'text/plain' } }).catch(function () {});
    }
    if (queue.length) flush();
  }

  function send(type, props) {
    if (dnt || !site) return;
    var e = { type: String(type), ts: Date.now(), event_id: rid(), page: loc.origin + loc.pathname };
    if (id) { e.udid = id; e.consent = { analytics: true, marketing: marketing }; }
    else e.consent = { analytics: false, marketing: false };
    var extra = null;
    for (var k in props || {}) {
      if (!Object.prototype.hasOwnProperty.call(props, k) || props[k] === undefined) continue;
      if (KNOWN[k]) e[k] = props[k]; else (extra = extra || {})[k] = props[k];
    }
    if (extra) e.properties = extra;
    if (type === 'page_view') {
      var q = new URLSearchParams(loc.search);
      ['utm_source', 'utm_medium', 'utm_campaign', 'utm_content', 'utm_term', 'gclid', 'fbclid'].forEach(function (p) {
        var v = q.get(p); if (v) e[p] = v.slice(0, 500);
      });
      if (first && d.referrer) {
        try { if (new URL(d.referrer).host !== loc.host) e.referrer = d.referrer.slice(0, 2000); } catch (x) { /* not a URL */ }
      }
      first = false;
    }
    queue.push(e);
    if (queue.length >= 50) flush(); else if (!timer) timer = setTimeout(flush, 1000);
  }

  function pageView() {
    var page = loc.pathname + loc.search;
    if (page === lastPage) return;
    lastPage = page;
    send('page_view');
  }

  function api(command, a, b) {
    if (command === 'track') send(a, b);
    else if (command === 'consent') consent(a);
    else if (command === 'page') { lastPage = ''; pageView(); }
  }

  var pending = (w.vedetta && w.vedetta.q) || [];
  w.vedetta = function () { api.apply(null, arguments); };
  for (var i = 0; i < pending.length; i++) api.apply(null, pending[i]);

  var push = w.history.pushState;
  w.history.pushState = function () { var r = push.apply(this, arguments); pageView(); return r; };
  w.addEventListener('popstate', pageView);
  w.addEventListener('pagehide', flush);
  d.addEventListener('visibilitychange', function () { if (d.visibilityState === 'hidden') flush(); });
  pageView();
})(window, document);
