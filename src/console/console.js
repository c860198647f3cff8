// pinpost operator console: polls the admin JSON endpoints with the token kept in
// sessionStorage. Everything shown is set as text (never parsed as HTML).
'use strict';

(function () {
  const TOKEN_KEY = 'pinpost.console.token';
  const POLL_MS = 3000;
  const STATES = ['queued', 'sending', 'submitted', 'delivered', 'retry_wait', 'in_doubt',
    'failed', 'expired', 'cancelled'];
  let timer = null;
  let lookup = null;

  const $ = (id) => document.getElementById(id);

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  class Refused extends Error {}

  async function api(path) {
    const resp = await fetch(path, {
      headers: { Authorization: 'Bearer ' + token(), Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (resp.status === 401) {
      signOut('That token was not accepted.');
      throw new Refused('unauthorized');
    }
    if (resp.status === 403) {
      signOut('This console needs an admin token.');
      throw new Refused('forbidden');
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      throw new Error('HTTP ' + resp.status);
    }
    if (!resp.ok) {
      throw new Error(body && body.error ? body.error.message : 'HTTP ' + resp.status);
    }
    return body;
  }

  function cell(text, cls) {
    const td = document.createElement('td');
    td.textContent = text === null || text === undefined ? '' : String(text);
    if (cls) td.className = cls;
    return td;
  }

  function fill(tbody, rows, columns, emptyText) {
    const fresh = document.createElement('tbody');
    if (rows.length === 0) {
      const tr = document.createElement('tr');
      tr.className = 'empty';
      const td = cell(emptyText);
      td.colSpan = columns;
      tr.appendChild(td);
      fresh.appendChild(tr);
    }
    for (const tr of rows) fresh.appendChild(tr);
    tbody.replaceWith(fresh);
  }

  function time(t) {
    return t ? t.replace('T', ' ').replace(/\.\d+/, '') : '';
  }

  function deliveryRow(d) {
    const tr = document.createElement('tr');
    tr.dataset.id = d.id;
    tr.dataset.state = d.state;
    tr.appendChild(cell(d.id, 'id'));
    tr.appendChild(cell(d.msisdn));
    tr.appendChild(cell(d.state + (d.final ? '' : ' …'), 'state-' + d.state));
    tr.appendChild(cell(d.channel));
    tr.appendChild(cell(d.attempts));
    tr.appendChild(cell(time(d.created_at)));
    tr.appendChild(cell(time(d.updated_at)));
    tr.appendChild(cell(d.last_error, 'error-text'));
    return tr;
  }

  function renderOverview(o) {
    const rows = o.channels.map((c) => {
      const tr = document.createElement('tr');
      tr.dataset.channel = c.id;
      tr.appendChild(cell(c.id));
      tr.appendChild(cell(c.kind || ''));
      tr.appendChild(cell(c.up ? 'up' : 'down: ' + (c.reason || ''), c.up ? 'up' : 'down'));
      tr.appendChild(cell(c.waiting));
      tr.appendChild(cell(c.due));
      tr.appendChild(cell(c.states.sending || 0));
      tr.appendChild(cell(c.states.submitted || 0));
      tr.appendChild(cell(Number(c.tps).toFixed(1)));
      tr.appendChild(cell(c.throttles));
      return tr;
    });
    fill($('channels').tBodies[0], rows, 9, 'no channels');
    const head = document.createElement('tr');
    const body = document.createElement('tr');
    for (const s of STATES) {
      const th = document.createElement('th');
      th.textContent = s;
      head.appendChild(th);
      body.appendChild(cell(o.totals[s] || 0, 'state-' + s));
    }
    $('totals').tHead.replaceChildren(head);
    $('totals').tBodies[0].replaceChildren(body);
    $('updated').textContent = time(o.generated_at);
  }

  async function refreshLookup() {
    if (!lookup) return;
    const q = lookup;
    const param = /^[0-9a-f]{8}-[0-9a-f]{4}-/i.test(q) ? 'id' : 'msisdn';
    try {
      const r = await api('/v1/admin/deliveries?' + param + '=' + encodeURIComponent(q));
      if (q !== lookup) return;
      $('lookup-error').textContent = '';
      fill($('lookup').tBodies[0], r.deliveries.map(deliveryRow), 8, 'no deliveries found');
    } catch (e) {
      if (!(e instanceof Refused)) $('lookup-error').textContent = e.message;
    }
  }

  async function poll() {
    try {
      const [o, f] = await Promise.all([api('/v1/admin/overview'), api('/v1/admin/failures')]);
      renderOverview(o);
      fill($('failures').tBodies[0], f.failures.map(deliveryRow), 8, 'no failures');
      $('status').textContent = 'live';
      await refreshLookup();
    } catch (e) {
      if (e instanceof Refused) return;
      $('status').textContent = 'cannot reach pinpost: ' + e.message;
    }
    if (token()) timer = setTimeout(poll, POLL_MS);
  }

  function start() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('signout').hidden = false;
    $('status').textContent = 'connecting';
    clearTimeout(timer);
    poll();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(timer);
    timer = null;
    lookup = null;
    $('app').hidden = true;
    $('signout').hidden = true;
    $('login').hidden = false;
    $('status').textContent = 'signed out';
    $('login-error').textContent = message || '';
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      $('token').value = '';
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $('login-error').textContent = '';
      start();
    });
    $('lookup-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      lookup = $('lookup-q').value.trim() || null;
      refreshLookup();
    });
    $('signout').addEventListener('click', () => signOut(''));
    if (token()) start();
  });
})();
