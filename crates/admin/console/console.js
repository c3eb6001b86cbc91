// The Pillarbox console: a page per part of the service, each made from the admin API's answers
// (/api/v1, described at /api/v1/openapi.json). Plain DOM, no framework and no build step; no
// HTML is ever made from strings (the page's policy forbids it), so nothing a user or a mail
// client typed can become markup.
'use strict';

(() => {
  const TOKEN_KEY = 'pillarbox.console.token';
  const PENDING_KEY = 'pillarbox.console.sign-in';
  const main = document.getElementById('main');
  const statusBox = document.getElementById('status');
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  let me = null;
  let refresh = null;
  let rendering = 0;

  // ---------------------------------------------------------------------------------------
  // Building the page

  /** An element with attributes (`on...` are listeners) and children (strings become text). */
  function h(tag, attrs, ...children) {
    return build(document.createElement(tag), attrs, children);
  }

  /** The same for SVG. */
  function s(tag, attrs, ...children) {
    return build(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, children);
  }

  function build(el, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  let ids = 0;
  function uid(prefix) {
    ids += 1;
    return `${prefix}-${ids}`;
  }

  /** Say something to everyone, screen readers included. */
  let announced = null;
  function announce(text) {
    statusBox.textContent = '';
    clearTimeout(announced);
    // A fresh text node, so that the same message twice is still read out; gone after a while.
    setTimeout(() => { statusBox.textContent = text; }, 50);
    announced = setTimeout(() => { statusBox.textContent = ''; }, 8000);
  }

  /** A labelled input with an optional hint. */
  function field(label, input, hint) {
    const id = input.id || uid('f');
    input.id = id;
    let hintEl = null;
    if (hint) {
      hintEl = h('p', { class: 'hint', id: `${id}-hint` }, hint);
      input.setAttribute('aria-describedby', hintEl.id);
    }
    return h('div', { class: input.type === 'checkbox' ? 'field check' : 'field' },
      input.type === 'checkbox' ? [input, h('label', { for: id }, label)] : [h('label', { for: id }, label), input],
      hintEl);
  }

  /**
   * A form whose submit runs `action` (which returns what to announce). Errors are shown in
   * the form, in an alert; the form is busy while the request runs.
   */
  function form(title, children, submitLabel, action, extraButtons) {
    const error = h('p', { class: 'error', role: 'alert' });
    const submit = h('button', { type: 'submit' }, submitLabel);
    const headingId = uid('form');
    const f = h('form', { class: 'card', 'aria-labelledby': headingId, novalidate: true },
      h('h2', { id: headingId }, title),
      children,
      h('div', { class: 'buttons' }, submit, extraButtons || []),
      error);
    f.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      await busy(f, error, () => action(f));
    });
    return f;
  }

  async function busy(f, error, work) {
    error.textContent = '';
    f.setAttribute('aria-busy', 'true');
    for (const b of f.querySelectorAll('button')) b.disabled = true;
    try {
      const said = await work();
      if (said) announce(said);
    } catch (e) {
      error.textContent = e.message;
    } finally {
      f.removeAttribute('aria-busy');
      for (const b of f.querySelectorAll('button')) b.disabled = false;
    }
  }

  /** A table in a scrolling region that a keyboard can reach. */
  function table(caption, headers, rows) {
    const t = h('table', {},
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows));
    return h('div', { class: 'scroll', role: 'region', 'aria-label': caption, tabindex: '0' }, t);
  }

  function row(cells) {
    return h('tr', {}, cells.map((c, i) => (i === 0 ? h('th', { scope: 'row' }, c) : h('td', {}, c))));
  }

  function definitions(pairs) {
    return h('dl', { class: 'facts' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  }

  function link(href, text, attrs) {
    return h('a', { href, ...attrs }, text);
  }

  // ---------------------------------------------------------------------------------------
  // Values

  const UNITS = { '': 1, B: 1, K: 1e3, KB: 1e3, M: 1e6, MB: 1e6, G: 1e9, GB: 1e9, T: 1e12, TB: 1e12,
    KIB: 1024, MIB: 1024 ** 2, GIB: 1024 ** 3, TIB: 1024 ** 4 };

  /** `2GB`, `500 MB`, `1GiB`, `4096`: octets, as the configuration reads sizes. */
  function parseSize(text) {
    const m = text.trim().match(/^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/);
    const unit = m && UNITS[m[2].toUpperCase()];
    if (!unit) throw new Error(`"${text}" is not a size (examples: 2GB, 500MB, 1GiB, 4096)`);
    return Math.round(Number(m[1]) * unit);
  }

  function size(n) {
    if (n === null || n === undefined) return 'no limit';
    if (n < 1000) return `${n} B`;
    const units = ['KB', 'MB', 'GB', 'TB'];
    let v = n;
    let u = -1;
    while (v >= 1000 && u < units.length - 1) { v /= 1000; u += 1; }
    return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`;
  }

  function count(n, one, many) {
    return `${n.toLocaleString()} ${n === 1 ? one : many}`;
  }

  function when(secs) {
    return new Date(secs * 1000).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
  }

  function clock(secs) {
    return new Date(secs * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function ago(secs) {
    const d = Math.max(0, Math.round(Date.now() / 1000 - secs));
    if (d < 60) return `${d} s ago`;
    if (d < 3600) return `${Math.round(d / 60)} min ago`;
    return `${(d / 3600).toFixed(1)} h ago`;
  }

  function retention(expire) {
    if (expire === null || expire === undefined) return 'default';
    if (expire === 'never') return 'kept';
    if (expire === '0') return 'deleted after the session';
    return `${expire} days after download`;
  }

  /** A retention typed by a person: days, `never`, or empty for the default. */
  function parseRetention(text) {
    const t = text.trim().toLowerCase();
    if (t === '' || t === 'default') return null;
    if (t === 'never') return 'never';
    if (/^\d+$/.test(t)) return Number(t);
    throw new Error(`"${text}" is not a retention: give a number of days, never, or leave it empty`);
  }

  function names(text) {
    return text.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
  }

  // ---------------------------------------------------------------------------------------
  // The API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(method, path, body, contentType) {
    const headers = { Accept: 'application/json' };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = contentType || 'application/json';
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(`/api/v1${path}`, init);
    } catch (e) {
      throw new ApiError(0, `The server cannot be reached (${e.message}).`);
    }
    const text = r.status === 204 ? '' : await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!r.ok) {
      const detail = (data && (data.detail || data.title)) || r.statusText || `error ${r.status}`;
      // Signed in, a refused token (revoked, expired) ends the sign-in; while signing in, the
      // form says why.
      if (r.status === 401 && me) signOut(`Signed out: ${detail}`);
      throw new ApiError(r.status, sentence(detail));
    }
    return data;
  }

  /** The server's words as a sentence: a capital first, a full stop last. */
  function sentence(t) {
    const x = String(t);
    const capital = x.charAt(0).toUpperCase() + x.slice(1);
    return /[.!?]$/.test(capital) ? capital : `${capital}.`;
  }

  const may = {
    admin: () => me.scopes.includes('admin'),
    readAll: () => me.scopes.includes('admin') || me.scopes.includes('read'),
    change: () => me.scopes.includes('admin') || me.scopes.some((x) => x.startsWith('domain:')),
  };

  // ---------------------------------------------------------------------------------------
  // Signing in and out

  function signOut(why) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    nav.hidden = true;
    who.hidden = true;
    // Back to the start without a navigation (whose render would hide the reason).
    if (location.hash && location.hash !== '#/') history.replaceState(null, '', '/#/');
    signIn(why);
  }

  function signIn(why) {
    const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', required: true, spellcheck: 'false' });
    const f = form('Your token', [
      field('Admin token', input,
        'Made on the server with: pillarbox admin token create NAME. An access token of the identity provider with the admin claim works too.'),
    ], 'Sign in', async () => {
      const t = input.value.trim();
      if (!t) throw new Error('Paste a token first.');
      sessionStorage.setItem(TOKEN_KEY, t);
      try {
        me = await api('GET', '/me');
      } catch (e) {
        sessionStorage.removeItem(TOKEN_KEY);
        throw e;
      }
      input.value = '';
      await render(true);
      return `Signed in as ${me.actor}.`;
    });
    const provider = h('div', { id: 'provider' });
    const page = [h('h1', { tabindex: '-1' }, 'Sign in'), why ? h('p', { class: 'notice', role: 'alert' }, why) : null, provider, f];
    main.replaceChildren(...page.filter(Boolean));
    document.title = 'Sign in · Pillarbox';
    input.focus();
    offerProvider(provider);
  }

  /** The identity provider's sign-in, when the server offers it. */
  async function offerProvider(place) {
    let info;
    try {
      info = (await api('GET', '/console/sign-in')).provider;
    } catch (e) {
      place.replaceChildren(h('p', { class: 'notice' }, `Signing in through the identity provider is not possible now: ${e.message}`));
      return;
    }
    if (!info) return; // tokens only
    const error = h('p', { class: 'error', role: 'alert' });
    const button = h('button', { type: 'button' }, `Sign in at ${new URL(info.issuer).host}`);
    button.addEventListener('click', async () => {
      try {
        await toProvider(info);
      } catch (e) {
        error.textContent = `The sign-in cannot start: ${e.message}`;
      }
    });
    place.replaceChildren(h('section', { class: 'card', 'aria-labelledby': 'provider-h' },
      h('h2', { id: 'provider-h' }, 'With your organisation\'s account'),
      h('p', {}, 'Your account there must be one of the service\'s administrators.'),
      h('div', { class: 'buttons' }, button), error));
  }

  function base64url(bytes) {
    let text = '';
    for (const b of bytes) text += String.fromCharCode(b);
    return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  /** Off to the provider's sign-in: the code flow with PKCE (S256) and a state, kept by this tab. */
  async function toProvider(info) {
    const verifier = base64url(crypto.getRandomValues(new Uint8Array(32)));
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
    const state = base64url(crypto.getRandomValues(new Uint8Array(16)));
    const redirect = `${location.origin}/`;
    sessionStorage.setItem(PENDING_KEY, JSON.stringify({ verifier, state, redirect, issuer: info.issuer, hash: location.hash }));
    const u = new URL(info.authorization_endpoint);
    for (const [k, v] of Object.entries({
      response_type: 'code',
      client_id: info.client_id,
      redirect_uri: redirect,
      scope: info.scope,
      state,
      code_challenge: base64url(new Uint8Array(digest)),
      code_challenge_method: 'S256',
    })) u.searchParams.set(k, v);
    location.assign(u.toString());
  }

  /**
   * Back from the provider with `?code=...&state=...` (or `?error=...`): check the state (and
   * the issuer, RFC 9207), have the server redeem the code, and sign in with the access token.
   * Returns whether the address was such a return.
   */
  async function backFromProvider() {
    const q = new URLSearchParams(location.search);
    if (!q.has('code') && !q.has('error')) return false;
    const pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) || 'null');
    sessionStorage.removeItem(PENDING_KEY);
    // The code leaves the address bar (and the history) at once.
    history.replaceState(null, '', `/${(pending && pending.hash) || '#/'}`);
    if (q.has('error')) {
      signIn(`The identity provider did not sign you in: ${q.get('error_description') || q.get('error')}.`);
      return true;
    }
    if (!pending || pending.state !== q.get('state')) {
      signIn('That sign-in was not started by this tab; sign in again.');
      return true;
    }
    if (q.has('iss') && q.get('iss') !== pending.issuer) {
      signIn(`The answer came from ${q.get('iss')}, not from the identity provider this tab went to; sign in again.`);
      return true;
    }
    try {
      const t = await api('POST', '/console/token', { code: q.get('code'), code_verifier: pending.verifier, redirect_uri: pending.redirect });
      sessionStorage.setItem(TOKEN_KEY, t.access_token);
      me = await api('GET', '/me');
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      me = null;
      signIn(e.message);
      return true;
    }
    await render(true);
    announce(`Signed in as ${me.actor}.`);
    return true;
  }

  function showWho() {
    document.getElementById('actor').textContent = `${me.actor} (${me.scopes.join(', ')})`;
    who.hidden = false;
    nav.hidden = false;
  }

  // ---------------------------------------------------------------------------------------
  // Pages

  /** What a page builds: its title and its parts. */
  class View {
    constructor() {
      this.parts = [];
      this.heading = 'Pillarbox';
    }

    title(t) {
      this.heading = t;
    }

    add(...nodes) {
      this.parts.push(...nodes);
    }
  }

  async function overview(v) {
    v.title('Overview');
    const [health, activity] = await Promise.all([
      may.readAll() ? api('GET', '/health') : null,
      may.readAll() ? api('GET', `/activity?minutes=${graphMinutes}`) : null,
    ]);
    if (!health) {
      v.add(h('p', {}, 'This token is limited to its domains: see ', link('#/users', 'their users'), ' and ', link('#/sessions', 'sessions'), '.'));
      return;
    }
    const state = health.status === 'ok' ? 'All parts are working.' : 'Some part is failing: see below.';
    v.add(h('section', { 'aria-labelledby': 'health-h' },
      h('h2', { id: 'health-h' }, 'Health'),
      h('p', { class: health.status === 'ok' ? 'ok' : 'bad' }, state),
      definitions([
        ['Version', health.version],
        ['Node', health.node],
        ['User directory', health.directory.ok ? 'answering' : `failing: ${health.directory.error}`],
        ['Domains', health.domains.ok ? 'readable' : `failing: ${health.domains.error}`],
        ['Live sessions', health.sessions === null ? 'unknown' : link('#/sessions', String(health.sessions))],
      ]),
      table('Listeners', ['Serves', 'Address'], health.listeners.map((l) => row([l.kind, l.address]))),
      health.certificates.length
        ? table('Certificates', ['Names', 'Expires', 'Days left'], health.certificates.map((c) => row([
          c.names.join(', '), when(c.not_after),
          h('span', { class: c.days_left < 14 ? 'bad' : '' }, String(c.days_left)),
        ])))
        : null,
      h('h3', {}, 'Recent warnings and errors'),
      health.recent_errors.length
        ? h('ul', { class: 'errors' }, health.recent_errors.map((e) => h('li', {}, h('time', {}, when(e.at)), ' ', e.message)))
        : h('p', {}, 'None logged since the server started.')));
    v.add(activitySection(activity));
    refresh = setInterval(async () => {
      const section = document.getElementById('activity');
      if (!section || section.contains(document.activeElement)) return;
      try {
        section.replaceWith(activitySection(await api('GET', `/activity?minutes=${graphMinutes}`)));
      } catch (_) { /* shown at the next navigation */ }
    }, 30000);
  }

  let graphMinutes = 180;
  const SERIES = [
    ['sessions', 'POP3 sessions', 'session', 'sessions'],
    ['logins', 'Logins', 'login', 'logins'],
    ['failed_logins', 'Failed logins', 'failed login', 'failed logins'],
    ['deliveries', 'Deliveries', 'delivery', 'deliveries'],
    ['quota_refusals', 'Quota refusals', 'quota refusal', 'quota refusals'],
  ];

  function activitySection(a) {
    const hours = graphMinutes / 60;
    const choose = h('select', { id: 'range', onchange: async (ev) => {
      graphMinutes = Number(ev.target.value);
      await redrawActivity('range');
    } }, [60, 180, 360].map((m) => h('option', { value: m, selected: m === graphMinutes }, `${m / 60} hour${m > 60 ? 's' : ''}`)));
    const refreshButton = h('button', { type: 'button', class: 'quiet', onclick: async () => {
      if (await redrawActivity('activity-refresh')) announce('Graphs brought up to date.');
    }, id: 'activity-refresh' }, 'Refresh');
    return h('section', { id: 'activity', 'aria-labelledby': 'activity-h' },
      h('h2', { id: 'activity-h' }, `The last ${hours} hour${hours > 1 ? 's' : ''}, per minute`),
      h('p', { class: 'hint' }, `Counted by node ${a.node} since it started; each node counts its own.`),
      h('div', { class: 'toolbar' }, field('Show', choose), refreshButton),
      h('div', { class: 'graphs' }, SERIES.map(([key, label, one, many]) => graph(a, key, label, one, many))));
  }

  /** The graphs again, the focus back on the control `focusId`; whether it worked (else said). */
  async function redrawActivity(focusId) {
    try {
      const fresh = activitySection(await api('GET', `/activity?minutes=${graphMinutes}`));
      document.getElementById('activity').replaceWith(fresh);
      document.getElementById(focusId).focus();
      return true;
    } catch (e) {
      announce(`The graphs cannot be brought up to date: ${e.message}`);
      return false;
    }
  }

  /** A bar per minute, with a summary for screen readers and the figures in a table. */
  function graph(a, key, label, one, many) {
    const values = a.series[key] || [];
    const total = values.reduce((x, y) => x + y, 0);
    const peak = Math.max(0, ...values);
    const W = 720;
    const H = 120;
    const barW = W / Math.max(values.length, 1);
    const scale = peak > 0 ? (H - 14) / peak : 0;
    const bars = [];
    values.forEach((n, i) => {
      if (n > 0) {
        const bh = Math.max(2, n * scale);
        bars.push(s('rect', { x: (i * barW).toFixed(2), y: (H - bh).toFixed(2), width: Math.max(barW - 0.5, 1).toFixed(2), height: bh.toFixed(2) }));
      }
    });
    const peakAt = values.indexOf(peak);
    const summary = total === 0
      ? `${label}: none in this time.`
      : `${label}: ${count(total, one, many)} in this time, at most ${peak} a minute (at ${clock(a.start + peakAt * 60)}).`;
    const captionId = uid('g');
    const busyMinutes = values.map((n, i) => [n, i]).filter(([n]) => n > 0);
    return h('figure', { class: 'graph', 'data-series': key, 'data-total': total },
      h('figcaption', { id: captionId }, h('strong', {}, label), h('span', { class: 'total' }, count(total, one, many))),
      s('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': summary, class: `chart ${key}` },
        s('line', { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: 'axis' }),
        bars),
      h('div', { class: 'axis-labels', 'aria-hidden': 'true' },
        h('span', {}, clock(a.start)), h('span', {}, peak > 0 ? `peak ${peak}/min` : ''), h('span', {}, 'now')),
      busyMinutes.length
        ? h('details', {}, h('summary', {}, `${label}, minute by minute`),
          table(`${label} per minute`, ['Minute', 'Count'], busyMinutes.map(([n, i]) => row([clock(a.start + i * 60), String(n)]))))
        : null);
  }

  async function users(v, params) {
    v.title('Users');
    const search = params.get('search') || '';
    const domain = params.get('domain') || '';
    const offset = Number(params.get('offset') || 0);
    const limit = 50;
    const q = new URLSearchParams({ offset: String(offset), limit: String(limit) });
    if (search) q.set('search', search);
    if (domain) q.set('domain', domain);
    const [page, known] = await Promise.all([api('GET', `/users?${q}`), api('GET', '/domains').catch(() => [])]);

    const searchInput = h('input', { type: 'search', name: 'search', value: search, autocomplete: 'off' });
    const domainSelect = h('select', { name: 'domain' },
      h('option', { value: '' }, 'All domains'),
      known.map((d) => h('option', { value: d.name, selected: d.name === domain }, d.name)));
    const find = h('form', { role: 'search', class: 'toolbar', 'aria-label': 'Users' },
      field('Name contains', searchInput),
      known.length ? field('Domain', domainSelect) : null,
      h('button', { type: 'submit' }, 'Search'));
    find.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      if (searchInput.value.trim()) p.set('search', searchInput.value.trim());
      if (domainSelect.value) p.set('domain', domainSelect.value);
      go(`#/users${p.toString() ? `?${p}` : ''}`);
    });
    v.add(find);

    const first = page.total === 0 ? 0 : offset + 1;
    const last = offset + page.users.length;
    const what = search || domain ? 'matching' : 'in all';
    v.add(h('p', { class: 'count' }, page.total === 0 ? 'No users match.' : `Users ${first} to ${last} of ${page.total} ${what}.`));
    if (page.users.length) {
      v.add(table('Users', ['Name', 'Domain', 'Logins', 'Quota', 'Retention'], page.users.map((u) => row([
        link(`#/users/${encodeURIComponent(u.name)}`, u.name),
        u.domain || '',
        u.enabled ? 'enabled' : h('span', { class: 'bad' }, 'disabled'),
        u.quota_bytes !== null ? size(u.quota_bytes) : 'default',
        retention(u.expire),
      ]))));
    }
    const pager = [];
    const at = (o) => {
      const p = new URLSearchParams(params);
      p.set('offset', String(o));
      return `#/users?${p}`;
    };
    if (offset > 0) pager.push(link(at(Math.max(0, offset - limit)), 'Previous page'));
    if (last < page.total) pager.push(link(at(offset + limit), 'Next page'));
    if (pager.length) v.add(h('nav', { class: 'pager', 'aria-label': 'Pages of users' }, pager));

    if (may.change()) v.add(addUserForm());
  }

  function addUserForm() {
    const name = h('input', { type: 'text', name: 'name', autocomplete: 'off', required: true, spellcheck: 'false' });
    const password = h('input', { type: 'password', name: 'password', autocomplete: 'new-password' });
    const generate = h('input', { type: 'checkbox', name: 'generate' });
    const result = h('div', { class: 'result' });
    generate.addEventListener('change', () => { password.disabled = generate.checked; });
    const f = form('Add a user', [
      field('Name', name, 'alice, or alice@example.com for a user of a domain'),
      field('Password', password, 'It must pass the server\'s strength check.'),
      field('Generate a strong password instead', generate),
      result,
    ], 'Add user', async () => {
      const body = { name: name.value.trim() };
      if (generate.checked) body.generate = true;
      else body.password = password.value;
      const made = await api('POST', '/users', body);
      password.value = '';
      result.replaceChildren(h('p', {}, 'Added ', link(`#/users/${encodeURIComponent(made.name)}`, made.name), '.'),
        made.generated_password ? secretShown(made.generated_password) : null);
      return `Added ${made.name}.`;
    });
    return f;
  }

  /** A generated password, shown this once. */
  function secretShown(secret) {
    return h('div', { class: 'secret' },
      h('p', {}, 'The password (shown only now; give it to the user over a safe channel):'),
      h('output', { class: 'password' }, secret));
  }

  async function user(v, params, name) {
    v.title(name);
    const path = `/users/${encodeURIComponent(name)}`;
    const [u, usage] = await Promise.all([api('GET', path), api('GET', `${path}/usage`)]);
    v.add(h('p', {}, link(u.domain ? `#/users?domain=${encodeURIComponent(u.domain)}` : '#/users', u.domain ? `All users of ${u.domain}` : 'All users')));
    v.add(definitions([
      ['Domain', u.domain ? link(`#/domains/${encodeURIComponent(u.domain)}`, u.domain) : 'none (the local one)'],
      ['Logins', u.enabled ? 'enabled' : h('span', { class: 'bad' }, 'disabled')],
      ['APOP', u.apop ? 'possible' : 'not set up'],
      ['Own quota', u.quota_bytes !== null || u.quota_messages !== null
        ? `${u.quota_bytes !== null ? size(u.quota_bytes) : 'no size limit'}, ${u.quota_messages !== null ? count(u.quota_messages, 'message', 'messages') : 'any number of messages'}`
        : 'none: the domain\'s or the server\'s applies'],
      ['Retention', retention(u.expire)],
      ['Login delay', u.login_delay === null ? 'default' : `${u.login_delay} s`],
    ]));
    v.add(usageSection(usage));
    if (!may.change()) return;

    const again = () => render(false);
    const bytes = h('input', { type: 'text', name: 'bytes', inputmode: 'text', value: u.quota_bytes !== null ? String(u.quota_bytes) : '', autocomplete: 'off' });
    const messages = h('input', { type: 'text', name: 'messages', inputmode: 'numeric', value: u.quota_messages !== null ? String(u.quota_messages) : '', autocomplete: 'off' });
    const clear = h('button', { type: 'button', class: 'quiet' }, 'Use the default quota');
    const quota = form('Quota', [
      field('Size limit', bytes, 'e.g. 2GB, 500MB, 1GiB; 0 for no limit; empty leaves it as it is.'),
      field('Message limit', messages, '0 for no limit; empty leaves it as it is.'),
    ], 'Save quota', async () => {
      const body = {};
      if (bytes.value.trim()) body.bytes = parseSize(bytes.value);
      if (messages.value.trim()) {
        if (!/^\d+$/.test(messages.value.trim())) throw new Error('The message limit is a whole number.');
        body.messages = Number(messages.value.trim());
      }
      if (!Object.keys(body).length) throw new Error('Give a size limit or a message limit.');
      await api('PUT', `${path}/quota`, body);
      await again();
      return `Quota of ${name} saved.`;
    }, clear);
    clear.addEventListener('click', () => busy(quota, quota.querySelector('.error'), async () => {
      await api('DELETE', `${path}/quota`);
      await again();
      return `${name} has the default quota again.`;
    }));
    v.add(quota);

    const days = h('input', { type: 'text', name: 'expire', value: u.expire === null ? '' : u.expire, autocomplete: 'off' });
    v.add(form('Retention', [field('Keep downloaded mail', days, 'Days after the first download (0: until the session ends), never, or empty for the default.')],
      'Save retention', async () => {
        await api('PUT', `${path}/retention`, { expire: parseRetention(days.value) });
        await again();
        return `Retention of ${name} saved.`;
      }));

    const delay = h('input', { type: 'text', name: 'seconds', inputmode: 'numeric', value: u.login_delay === null ? '' : String(u.login_delay), autocomplete: 'off' });
    v.add(form('Login delay', [field('Seconds between logins', delay, 'Empty for the default.')], 'Save login delay', async () => {
      const t = delay.value.trim();
      if (t && !/^\d+$/.test(t)) throw new Error('The login delay is a whole number of seconds.');
      await api('PUT', `${path}/login-delay`, { seconds: t ? Number(t) : null });
      await again();
      return `Login delay of ${name} saved.`;
    }));

    v.add(form('Logins', [h('p', {}, u.enabled
      ? 'Disabling refuses this user\'s logins; mail is still delivered.'
      : 'Logins are refused; mail is still delivered.')],
    u.enabled ? 'Disable logins' : 'Enable logins', async () => {
      await api('PUT', `${path}/enabled`, { enabled: !u.enabled });
      await again();
      return `${name}'s logins are ${u.enabled ? 'disabled' : 'enabled'}.`;
    }));

    const pw = h('input', { type: 'password', name: 'password', autocomplete: 'new-password' });
    const pwResult = h('div', { class: 'result' });
    const gen = h('button', { type: 'button', class: 'quiet' }, 'Generate one');
    const pwForm = form('Password', [field('New password', pw, 'It must pass the server\'s strength check.'), pwResult],
      'Set password', async () => {
        if (!pw.value) throw new Error('Type a password, or generate one.');
        await api('PUT', `${path}/password`, { password: pw.value });
        pw.value = '';
        pwResult.replaceChildren();
        return `Password of ${name} changed.`;
      }, gen);
    gen.addEventListener('click', () => busy(pwForm, pwForm.querySelector('.error'), async () => {
      const made = await api('PUT', `${path}/password`, { generate: true });
      pwResult.replaceChildren(secretShown(made.generated_password));
      return `A new password was generated for ${name}.`;
    }));
    v.add(pwForm);

    v.add(dangerForm(`Delete ${name}`, `The user is removed; their maildrop is kept on disk (or in the database) until removed by hand.`,
      `Delete ${name}`, async () => {
        const gone = await api('DELETE', path);
        go('#/users');
        return `Deleted ${gone.name}; the maildrop is kept at ${gone.maildrop_kept}.`;
      }));
  }

  /** A destructive action: asks once more before doing it. */
  function dangerForm(title, warning, label, action) {
    const confirmBox = h('div', { class: 'confirm', hidden: true });
    const ask = h('button', { type: 'button', class: 'danger' }, `${label}…`);
    const f = form(title, [h('p', {}, warning), confirmBox], '', action);
    const submit = f.querySelector('button[type=submit]');
    submit.remove();
    const cancel = h('button', { type: 'button', class: 'quiet' }, 'Cancel');
    confirmBox.append(h('p', { class: 'bad' }, 'This cannot be undone.'), h('div', { class: 'buttons' },
      h('button', { type: 'submit', class: 'danger' }, `Yes, ${label.charAt(0).toLowerCase()}${label.slice(1)}`), cancel));
    f.querySelector(':scope > .buttons').append(ask);
    ask.addEventListener('click', () => {
      confirmBox.hidden = false;
      ask.hidden = true;
      confirmBox.querySelector('button[type=submit]').focus();
    });
    cancel.addEventListener('click', () => {
      confirmBox.hidden = true;
      ask.hidden = false;
      ask.focus();
    });
    return f;
  }

  function usageSection(usage) {
    const parts = [h('h2', { id: 'usage-h' }, 'Mail stored'),
      h('p', {}, `${count(usage.messages, 'message', 'messages')}, ${size(usage.bytes)}.`)];
    if (usage.quota_bytes) {
      const pct = Math.min(100, Math.round((usage.bytes / usage.quota_bytes) * 100));
      const id = uid('m');
      parts.push(h('div', { class: 'field' }, h('label', { for: id }, `Storage used: ${pct}% of ${size(usage.quota_bytes)}`),
        h('meter', { id, min: 0, max: usage.quota_bytes, value: usage.bytes, high: usage.quota_bytes * 0.9, optimum: 0 })));
    } else {
      parts.push(h('p', { class: 'hint' }, 'No size limit applies.'));
    }
    if (usage.quota_messages) parts.push(h('p', {}, `At most ${count(usage.quota_messages, 'message', 'messages')}.`));
    return h('section', { 'aria-labelledby': 'usage-h' }, parts);
  }

  async function domains(v) {
    v.title('Domains');
    const list = await api('GET', '/domains');
    if (!list.length) v.add(h('p', {}, 'No domains: every user is a user of this server alone.'));
    else {
      v.add(table('Domains', ['Domain', 'Users', 'POP3', 'Quota', 'Retention', 'Aliases', 'Server names'], list.map((d) => row([
        link(`#/domains/${encodeURIComponent(d.name)}`, d.name),
        link(`#/users?domain=${encodeURIComponent(d.name)}`, String(d.users), { 'aria-label': `${count(d.users, 'user', 'users')} of ${d.name}` }),
        d.pop3 ? 'on' : h('span', { class: 'bad' }, 'off'),
        d.quota_bytes !== null ? size(d.quota_bytes) : 'default',
        retention(d.expire),
        d.aliases.join(', '),
        d.names.join(', '),
      ]))));
    }
    if (!may.admin()) return;
    const name = h('input', { type: 'text', name: 'name', autocomplete: 'off', required: true, spellcheck: 'false' });
    const quota = h('input', { type: 'text', name: 'quota', autocomplete: 'off' });
    const days = h('input', { type: 'text', name: 'expire', autocomplete: 'off' });
    const aliases = h('input', { type: 'text', name: 'aliases', autocomplete: 'off', spellcheck: 'false' });
    const servers = h('input', { type: 'text', name: 'names', autocomplete: 'off', spellcheck: 'false' });
    v.add(form('Add a domain', [
      field('Domain', name, 'e.g. example.com'),
      field('Quota per user', quota, 'e.g. 2GB; empty for the server\'s'),
      field('Retention', days, 'Days after download, never, or empty for the server\'s'),
      field('Aliases', aliases, 'Other domains whose mail goes to these users, separated by commas'),
      field('Server names', servers, 'Names whose TLS connections log in to this domain, e.g. pop.example.com'),
    ], 'Add domain', async () => {
      const body = { name: name.value.trim(), aliases: names(aliases.value), names: names(servers.value) };
      if (quota.value.trim()) body.quota_bytes = parseSize(quota.value);
      const r = parseRetention(days.value);
      if (r !== null) body.expire = r;
      const made = await api('POST', '/domains', body);
      go(`#/domains/${encodeURIComponent(made.name)}`);
      return `Added ${made.name}.`;
    }));
  }

  async function domain(v, params, name) {
    v.title(name);
    const path = `/domains/${encodeURIComponent(name)}`;
    const d = await api('GET', path);
    v.add(h('p', {}, link('#/domains', 'All domains'), ' · ', link(`#/users?domain=${encodeURIComponent(d.name)}`, `Its ${count(d.users, 'user', 'users')}`)));
    v.add(definitions([
      ['POP3', d.pop3 ? 'on' : 'off: logins are refused, mail is still delivered'],
      ['Quota per user', d.quota_bytes !== null ? size(d.quota_bytes) : 'the server\'s'],
      ['Messages per user', d.quota_messages !== null ? String(d.quota_messages) : 'the server\'s limit'],
      ['Retention', retention(d.expire)],
      ['Aliases', d.aliases.join(', ') || 'none'],
      ['Server names', d.names.join(', ') || 'none'],
      ['Kept in', d.registered ? 'the domain registry' : 'the configuration file'],
    ]));
    if (!may.change()) return;
    const pop3 = h('input', { type: 'checkbox', name: 'pop3', checked: d.pop3 });
    const quota = h('input', { type: 'text', name: 'quota', value: d.quota_bytes !== null ? String(d.quota_bytes) : '', autocomplete: 'off' });
    const days = h('input', { type: 'text', name: 'expire', value: d.expire === null ? '' : d.expire, autocomplete: 'off' });
    const fields = [
      field('Users may log in over POP3', pop3),
      field('Quota per user', quota, 'e.g. 2GB; empty for the server\'s'),
      field('Retention', days, 'Days after download, never, or empty for the server\'s'),
    ];
    let aliases = null;
    let servers = null;
    if (may.admin()) {
      aliases = h('input', { type: 'text', name: 'aliases', value: d.aliases.join(', '), autocomplete: 'off', spellcheck: 'false' });
      servers = h('input', { type: 'text', name: 'names', value: d.names.join(', '), autocomplete: 'off', spellcheck: 'false' });
      fields.push(field('Aliases', aliases, 'Separated by commas'), field('Server names', servers, 'Separated by commas'));
    }
    v.add(form('Settings', fields, 'Save settings', async () => {
      const patch = {
        pop3: pop3.checked,
        quota_bytes: quota.value.trim() ? parseSize(quota.value) : null,
        expire: parseRetention(days.value),
      };
      if (aliases) patch.aliases = names(aliases.value);
      if (servers) patch.names = names(servers.value);
      await api('PATCH', path, patch, 'application/merge-patch+json');
      await render(false);
      return `Settings of ${name} saved.`;
    }));
    if (may.admin() && d.registered) {
      v.add(dangerForm(`Delete ${name}`, 'A domain that still has users cannot be deleted.', `Delete ${name}`, async () => {
        await api('DELETE', path);
        go('#/domains');
        return `Deleted ${name}.`;
      }));
    }
  }

  async function sessions(v) {
    v.title('Live sessions');
    const list = await api('GET', '/sessions');
    const reload = h('button', { type: 'button', class: 'quiet', id: 'sessions-refresh', onclick: async () => {
      await render(false);
      document.getElementById('sessions-refresh').focus();
      announce('Sessions brought up to date.');
    } }, 'Refresh');
    v.add(h('div', { class: 'toolbar' }, h('p', { class: 'count' }, list.length ? `${count(list.length, 'session', 'sessions')} open.` : 'No POP3 session is open.'), reload));
    if (!list.length) return;
    v.add(table('Live sessions', ['User', 'Client', 'TLS', 'Login', 'Started', 'Node', 'Action'], list.map((x) => row([
      link(`#/users/${encodeURIComponent(x.user)}`, x.user),
      x.client,
      x.tls ? 'yes' : h('span', { class: 'bad' }, 'no'),
      x.mechanism,
      h('time', { title: when(x.started_at) }, ago(x.started_at)),
      x.node,
      may.change() ? h('button', { type: 'button', class: 'danger small', 'aria-label': `End ${x.user}'s session from ${x.client}`, onclick: async (ev) => {
        ev.target.disabled = true;
        try {
          await api('DELETE', `/sessions/${encodeURIComponent(x.id)}`);
          announce(`Ended ${x.user}'s session; nothing it marked for deletion was deleted.`);
        } catch (e) {
          announce(e.message);
        }
        await render(false);
      } }, 'End') : '',
    ]))));
  }

  async function storage(v) {
    v.title('Storage');
    const st = await api('GET', '/storage?limit=25');
    v.add(h('p', {}, `${count(st.users, 'user', 'users')} store ${size(st.bytes)} in ${count(st.messages, 'message', 'messages')}.`));
    if (!st.largest.length) return;
    const largest = Math.max(1, st.largest[0].bytes);
    v.add(table('The users storing the most', ['User', 'Stored', 'Messages', 'Quota', 'Share'], st.largest.map((u) => {
      const fill = h('span', { class: 'fill' });
      fill.style.width = `${((u.bytes / largest) * 100).toFixed(1)}%`;
      const use = u.quota_bytes ? `${Math.round((u.bytes / u.quota_bytes) * 100)}% of the quota` : '';
      return row([
        link(`#/users/${encodeURIComponent(u.name)}`, u.name),
        size(u.bytes),
        String(u.messages),
        u.quota_bytes ? size(u.quota_bytes) : 'none',
        h('span', { class: 'share' }, h('span', { class: 'bar', 'aria-hidden': 'true' }, fill), use),
      ]);
    })));
  }

  async function audit(v) {
    v.title('Audit log');
    v.add(h('p', { class: 'hint' }, 'Every change made through the API or this console, newest first.'));
    const body = h('tbody');
    const more = h('button', { type: 'button', class: 'quiet' }, 'Older entries');
    let before = null;
    const load = async () => {
      const entries = await api('GET', `/audit?limit=50${before ? `&before=${before}` : ''}`);
      for (const e of entries) {
        body.append(row([h('time', {}, when(e.at)), e.actor, e.action, e.target, e.client, e.outcome]));
        before = e.id;
      }
      more.hidden = entries.length < 50;
      return entries.length;
    };
    const t = table('Changes', ['When', 'Who', 'What', 'Of', 'From', 'Outcome'], []);
    t.querySelector('tbody').replaceWith(body);
    more.addEventListener('click', async () => {
      const n = await load();
      announce(`${count(n, 'older entry', 'older entries')} added.`);
    });
    if (await load() === 0) v.add(h('p', {}, 'Nothing has been changed yet.'));
    else v.add(t, more);
  }

  function notFound(v) {
    v.title('Not found');
    v.add(h('p', {}, 'The console has no such page. ', link('#/', 'Go to the overview.')));
  }

  // ---------------------------------------------------------------------------------------
  // Navigation

  const ROUTES = [
    [/^\/$/, overview],
    [/^\/users$/, users],
    [/^\/users\/([^/]+)$/, user],
    [/^\/domains$/, domains],
    [/^\/domains\/([^/]+)$/, domain],
    [/^\/sessions$/, sessions],
    [/^\/storage$/, storage],
    [/^\/audit$/, audit],
  ];

  function go(hash) {
    if (location.hash === hash) render(true);
    else location.hash = hash;
  }

  function markNav(path) {
    const section = `/${path.split('/')[1]}`;
    for (const a of nav.querySelectorAll('a')) {
      const target = a.getAttribute('href').slice(1);
      if (target === section || (target === '/' && section === '/')) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  /** Show the page the address names; `moved`: a new page, whose heading gets the focus. */
  async function render(moved) {
    clearInterval(refresh);
    refresh = null;
    if (!token()) {
      signIn();
      return;
    }
    const mine = ++rendering;
    main.setAttribute('aria-busy', 'true');
    try {
      if (!me) {
        me = await api('GET', '/me');
      }
      showWho();
      const raw = location.hash.slice(1) || '/';
      const [path, query] = raw.split('?');
      const params = new URLSearchParams(query || '');
      let page = notFound;
      let args = [];
      for (const [re, fn] of ROUTES) {
        const m = path.match(re);
        if (m) {
          page = fn;
          args = m.slice(1).map(decodeURIComponent);
          break;
        }
      }
      markNav(path);
      const v = new View();
      try {
        await page(v, params, ...args);
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) return;
        v.add(h('p', { class: 'notice', role: 'alert' }, e.message));
      }
      if (mine !== rendering) return;
      const heading = h('h1', { tabindex: '-1' }, v.heading);
      main.replaceChildren(heading, ...v.parts);
      document.title = `${v.heading} · Pillarbox`;
      if (moved) heading.focus();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        // The token kept by this tab is no longer accepted.
        signOut(`Signed out: ${e.message}`);
      } else if (mine === rendering) {
        main.replaceChildren(h('h1', { tabindex: '-1' }, 'Pillarbox'), h('p', { class: 'notice', role: 'alert' }, e.message));
      }
    } finally {
      if (mine === rendering) main.removeAttribute('aria-busy');
    }
  }

  document.getElementById('signout').addEventListener('click', () => {
    signOut('Signed out. The token is forgotten by this tab.');
  });
  document.getElementById('skip').addEventListener('click', (ev) => {
    ev.preventDefault();
    const heading = main.querySelector('h1');
    (heading || main).focus();
  });
  window.addEventListener('hashchange', () => render(true));
  backFromProvider().then((handled) => {
    if (!handled) render(false);
  });
})();
