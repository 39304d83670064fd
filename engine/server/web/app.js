// shiphat's web page: one ES module, no framework, no build step.
//
// Rules kept throughout:
// - Server text only ever reaches the page through textContent (the `h` helper); never
//   innerHTML, so a run input or log line cannot inject markup.
// - The CSP forbids inline styles, so looks come from classes in app.css; the few computed
//   values (chart coordinates) are SVG attributes, which the CSP allows.
// - Every view returns nothing but registers what it opened (EventSources, timers) with
//   `onLeave`, and the router closes them on the next navigation: a stale stream must never
//   write into the page of another route.
// - Focus is never left on <body>: a view that replaces the element with focus moves it to
//   its main heading (see `route`), and a live refresh puts it back where it was.
// - Live views are not aria-live: a screen reader would read a whole table on every change.
//   What changed is said once, in words, through `announce`.

'use strict';

// ---------------------------------------------------------------------------------------
// Small DOM helpers

const SVG_NS = 'http://www.w3.org/2000/svg';

// h('a', {href: '#/runs', class: 'x', dataset: {testid: 'y'}, onclick: fn}, 'text', child…)
// Strings become text nodes, so callers can pass server data without thinking about escaping.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  applyAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  applyAttrs(el, attrs);
  append(el, children);
  return el;
}

function applyAttrs(el, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) { if (dv !== null && dv !== undefined) el.dataset[dk] = dv; }
    else if (k === 'testid') el.dataset.testid = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else if (k === 'value' && 'value' in el) el.value = v;
    else if (k === 'checked' || k === 'disabled' || k === 'required' || k === 'open' || k === 'hidden' || k === 'selected') el[k] = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// replaceChildren that, like h, skips null/false children instead of printing "null".
function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const $ = (sel, root = document) => root.querySelector(sel);

// Says `text` through the page's one polite status region (index.html), for screen readers.
// Cleared first, so the same words said twice are read twice.
function announce(text) {
  const box = $('#announcer');
  if (!box || !text) return;
  box.textContent = '';
  requestAnimationFrame(() => { box.textContent = text; });
}

// Re-renders a live part of the page and puts the focus back on the same control (same id,
// or a link to the same place) if it was inside: a refresh must not throw the reader out.
function keepingFocus(box, render) {
  const had = document.activeElement;
  let again = null;
  if (had && had !== box && box.contains(had)) {
    if (had.id) again = `#${CSS.escape(had.id)}`;
    else if (had.getAttribute('href')) again = `a[href="${CSS.escape(had.getAttribute('href'))}"]`;
  }
  render();
  if (again && !box.contains(document.activeElement)) $(again, box)?.focus({ preventScroll: true });
}

// Moves the focus to the view's main heading when the last action took it away (the button
// pressed is gone with the old view): keyboard and screen reader users land on the new page.
function focusHeadingIfLost(root) {
  const at = document.activeElement;
  if (at && at !== document.body && at.isConnected) return;
  const heading = $('h1', root);
  if (!heading) return;
  heading.setAttribute('tabindex', '-1');
  heading.focus({ preventScroll: true });
}

// ---------------------------------------------------------------------------------------
// Formatting

const RUN_STATUSES = ['queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled', 'interrupted'];
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const STATUS_ICON = {
  succeeded: '✓', failed: '✗', running: '●', queued: '…', pending: '○', skipped: '–',
  cancelled: '⊘', interrupted: '!', waiting: '‖',
};

function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '';
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec.toFixed(sec < 10 ? 1 : 0)} s`;
  const m = Math.floor(sec / 60), rs = Math.floor(sec % 60);
  if (m < 60) return `${m}m ${rs}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

function fmtAbsolute(ms) {
  if (!ms) return '';
  return new Date(ms).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

function fmtRelative(ms) {
  if (!ms) return '';
  const d = Date.now() - ms;
  const abs = Math.abs(d), sec = Math.round(abs / 1000);
  let txt;
  if (sec < 10) return 'just now';
  if (sec < 60) txt = `${sec} s`;
  else if (sec < 3600) txt = `${Math.round(sec / 60)} min`;
  else if (sec < 86400) txt = `${Math.round(sec / 3600)} h`;
  else txt = `${Math.round(sec / 86400)} d`;
  return d >= 0 ? `${txt} ago` : `in ${txt}`;
}

// A relative time that keeps itself fresh (see the ticker) with the absolute time as title.
function timeEl(ms, iso) {
  if (!ms && iso) ms = Date.parse(iso);
  if (!ms) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: new Date(ms).toISOString(), title: fmtAbsolute(ms), dataset: { rel: String(ms) } }, fmtRelative(ms));
}

// A duration that ticks while `since` is set and the thing is still going.
function liveDuration(sinceMs) {
  return h('span', { class: 'timer', dataset: { since: String(sinceMs) } }, fmtDuration(Date.now() - sinceMs));
}

function badge(status, extra) {
  return h('span', { class: ['badge', `st-${status}`], dataset: { status }, ...extra },
    h('span', { class: 'icon', 'aria-hidden': 'true' }, STATUS_ICON[status] || '•'), ' ', status);
}

function compactJson(v) {
  if (typeof v === 'string') return v;
  try { return JSON.stringify(v); } catch { return String(v); }
}

// Nested outputs read better indented; the cell keeps line breaks and wraps long lines.
function prettyJson(v) {
  if (v !== null && typeof v === 'object') {
    try { return JSON.stringify(v, null, 2); } catch { return String(v); }
  }
  return compactJson(v);
}

function runDuration(run) {
  if (run.duration_ms !== null && run.duration_ms !== undefined) return fmtDuration(run.duration_ms);
  if (run.started_ms && run.finished_ms) return fmtDuration(run.finished_ms - run.started_ms);
  return '';
}

// One interval for every live clock on the page: relative times and running timers.
setInterval(() => {
  const now = Date.now();
  for (const el of document.querySelectorAll('[data-since]')) el.textContent = fmtDuration(now - Number(el.dataset.since));
}, 250);
setInterval(() => {
  for (const el of document.querySelectorAll('[data-rel]')) el.textContent = fmtRelative(Number(el.dataset.rel));
}, 15000);

// ---------------------------------------------------------------------------------------
// Session and API

const state = {
  session: null,      // {principal, roles, patterns, csrf}
  workflows: null,    // cached GET /workflows answer
  returnTo: null,     // where to go after signing in
};

const role = {
  has(r) { return !!state.session && state.session.roles.includes(r); },
  get canDeploy() { return this.has('deployer') || this.has('admin'); },
  get isAdmin() { return this.has('admin'); },
  canCancel(run) {
    if (this.isAdmin) return true;
    return this.has('deployer') && run.principal === state.session.principal;
  },
  get label() {
    const rs = state.session ? state.session.roles : [];
    return ['admin', 'deployer', 'viewer'].find((r) => rs.includes(r)) || rs[0] || '';
  },
};

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.field = this.body.field || null;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') {
    if (state.session && state.session.csrf) headers['X-CSRF-Token'] = state.session.csrf;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin' });
  } catch (e) {
    throw new ApiError(0, { error: `cannot reach the server: ${e.message}` });
  }
  let data = null;
  const text = await res.text();
  // A success that is not JSON (the handbook's Markdown) is the caller's text; errors are JSON.
  if (res.ok && text && !(res.headers.get('content-type') || '').includes('json')) return text;
  if (text) { try { data = JSON.parse(text); } catch { data = { error: text.trim() }; } }
  // The session ended (expired, signed out elsewhere): anything further would fail too.
  // Signing in is handled by its own caller, which shows the 401 as a wrong token.
  if (res.status === 401 && path !== '/api/v1/session') {
    signedOut();
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

function signedOut() {
  state.session = null;
  state.workflows = null;
  renderTopbar();
  if (!location.hash.startsWith('#/signin')) {
    state.returnTo = location.hash;
    location.hash = '#/signin';
  }
}

async function loadWorkflows(force) {
  if (!state.workflows || force) state.workflows = (await api('GET', '/api/v1/workflows')).workflows || [];
  return state.workflows;
}

// The live feed of run changes, shared by every view that wants it; each subscription is
// debounced on its own so a burst of step events costs one refetch.
function subscribeRuns(fn, delay = 400) {
  let timer = null, last = 0, ids = new Set();
  const es = new EventSource('/api/v1/events');
  const fire = () => { timer = null; last = Date.now(); const batch = ids; ids = new Set(); fn(batch); };
  es.addEventListener('run', (ev) => {
    try { ids.add(JSON.parse(ev.data).run); } catch { /* a malformed message still means "something changed" */ }
    if (timer) return;
    timer = setTimeout(fire, Math.max(0, delay - (Date.now() - last)));
  });
  onLeave(() => { es.close(); clearTimeout(timer); });
  return es;
}

// ---------------------------------------------------------------------------------------
// Router

let leaveFns = [];
function onLeave(fn) { leaveFns.push(fn); }
let renderSeq = 0;

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/runs';
  const [path, query] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || '') };
}

async function route() {
  for (const fn of leaveFns) { try { fn(); } catch { /* already closed */ } }
  leaveFns = [];
  const seq = ++renderSeq;
  const { parts, params } = parseHash();
  const main = $('#main');
  const view = parts[0] || 'runs';

  if (!state.session && view !== 'signin') {
    state.returnTo = location.hash;
    location.hash = '#/signin';
    return;
  }
  if (state.session && view === 'signin') { location.hash = '#/runs'; return; }

  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === view) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  // Each view builds into a fresh container that replaces the old one only if no later
  // navigation happened meanwhile (slow fetches must not overwrite a newer page).
  const root = h('div', { class: 'view' });
  const show = () => { if (seq === renderSeq) main.replaceChildren(root); return seq === renderSeq; };
  const alive = () => seq === renderSeq;
  try {
    if (view === 'signin') viewSignin(root, show);
    else if (view === 'runs' && parts[1]) await viewRun(root, show, alive, parts[1]);
    else if (view === 'runs') await viewRuns(root, show, params);
    else if (view === 'deploy') await viewDeploy(root, show, parts[1]);
    else if (view === 'workflows' && parts[1]) await viewHandbook(root, show, parts[1]);
    else if (view === 'environments') await viewEnvironments(root, show, alive);
    else { root.append(h('h1', null, 'Not found'), h('p', null, h('a', { href: '#/runs' }, 'Back to runs'))); show(); }
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    root.replaceChildren(h('h1', null, 'Something went wrong'), h('p', { class: 'error', role: 'alert' }, e.message));
    show();
  }
  if (alive()) focusHeadingIfLost(root);
}

function setTitle(t) { document.title = t ? `${t} · shiphat` : 'shiphat'; }

function renderTopbar() {
  const signed = !!state.session;
  $('.nav').hidden = !signed;
  $('.user').hidden = !signed;
  // Viewers cannot start runs: no Deploy link at all rather than a page that says no.
  $('[data-nav="deploy"]').hidden = !role.canDeploy;
  if (signed) $('.who').replaceChildren(h('strong', null, state.session.principal), ' ', h('span', { class: 'role', dataset: { testid: 'role' } }, role.label));
}

// ---------------------------------------------------------------------------------------
// Sign-in

function viewSignin(root, show) {
  setTitle('Sign in');
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'current-password', required: true, spellcheck: 'false', testid: 'token', 'aria-describedby': 'token-help' });
  const err = h('p', { class: 'error', role: 'alert', testid: 'signin-error', hidden: true });
  const button = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'signin-submit' }, 'Sign in');
  const form = h('form', { class: 'card signin', testid: 'signin-form', novalidate: true },
    h('h1', null, 'Sign in to shiphat'),
    h('div', { class: 'field' },
      h('label', { for: 'token' }, 'Token'),
      input,
      h('p', { class: 'help', id: 'token-help' }, 'An API token from ', h('code', null, 'shiphat token create'), '. It is exchanged for a session cookie and not stored by the page.')),
    err, button);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    const token = input.value.trim();
    if (!token) { err.textContent = 'Enter a token.'; err.hidden = false; input.focus(); return; }
    button.disabled = true;
    try {
      state.session = await api('POST', '/api/v1/session', { token });
      renderTopbar();
      const back = state.returnTo && !state.returnTo.startsWith('#/signin') ? state.returnTo : '#/runs';
      state.returnTo = null;
      location.hash = back;
    } catch (e) {
      err.textContent = e.status === 401 ? (e.body.error || 'That token is not valid.') : e.message;
      err.hidden = false;
      input.select();
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  root.append(form);
  show();
  input.focus();
}

async function signOut() {
  try { await api('DELETE', '/api/v1/session'); } catch { /* signed out either way */ }
  state.returnTo = null;
  signedOut();
}

// ---------------------------------------------------------------------------------------
// Runs list

async function viewRuns(root, show, params) {
  setTitle('Runs');
  const wf = params.get('workflow') || '';
  const st = params.get('status') || '';
  const forMe = params.get('for_me') === '1';
  const before = params.get('before') || '';
  const filterQs = (cursor) => {
    const q = new URLSearchParams();
    if (wf) q.set('workflow', wf);
    if (st) q.set('status', st);
    if (forMe) q.set('for_me', '1');
    if (cursor) q.set('before', cursor);
    const qs = q.toString();
    return qs ? `?${qs}` : '';
  };
  const workflows = await loadWorkflows();

  // Filters live in the hash so a filtered list can be linked and Back works. They apply when
  // the form is submitted (the button, or Enter), never on change: arrowing through a select
  // must not load another page under the reader (WCAG 3.2.2).
  const setFilter = (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (wfSel.value) q.set('workflow', wfSel.value);
    if (stSel.value) q.set('status', stSel.value);
    if (mine.checked) q.set('for_me', '1');
    const qs = q.toString();
    location.hash = `#/runs${qs ? `?${qs}` : ''}`;
  };
  // Runs waiting at an approval this person may give.
  const mine = h('input', { type: 'checkbox', id: 'filter-for-me', name: 'for_me', checked: forMe, testid: 'filter-for-me' });
  const wfSel = h('select', { id: 'filter-workflow', name: 'workflow', testid: 'filter-workflow' },
    h('option', { value: '' }, 'All workflows'),
    workflows.map((w) => h('option', { value: w.name, selected: w.name === wf }, w.name)));
  const stSel = h('select', { id: 'filter-status', name: 'status', testid: 'filter-status' },
    h('option', { value: '' }, 'All statuses'),
    RUN_STATUSES.map((x) => h('option', { value: x, selected: x === st }, x)));
  const listBox = h('div', { class: 'table-box' });

  root.append(
    h('div', { class: 'page-head' },
      h('h1', null, 'Runs'),
      role.canDeploy ? h('a', { class: 'btn btn-primary', href: '#/deploy', testid: 'deploy-button' }, 'Deploy') : null),
    h('form', { class: 'filters', 'aria-label': 'Filter runs', onsubmit: setFilter },
      h('div', { class: 'field inline' }, h('label', { for: 'filter-workflow' }, 'Workflow'), wfSel),
      h('div', { class: 'field inline' }, h('label', { for: 'filter-status' }, 'Status'), stSel),
      h('div', { class: 'field check for-me' }, mine, h('label', { for: 'filter-for-me' }, 'Waiting for you')),
      h('div', { class: 'field inline apply' }, h('button', { type: 'submit', class: 'btn', testid: 'filter-apply' }, 'Show runs'))),
    listBox);

  // The statuses last shown, to announce what a refresh changed rather than the whole list.
  let shown = null;
  const load = async () => {
    const q = new URLSearchParams({ limit: '50' });
    if (wf) q.set('workflow', wf);
    if (st) q.set('status', st);
    if (forMe) q.set('for_me', 'true');
    if (before) q.set('before', before);
    const data = await api('GET', `/api/v1/runs?${q}`);
    const runs = data.runs || [];
    const pager = [];
    if (before) pager.push(h('a', { href: `#/runs${filterQs('')}` }, '← Newest'));
    if (data.next) pager.push(h('a', { href: `#/runs${filterQs(data.next)}`, testid: 'runs-older' }, 'Older runs →'));
    keepingFocus(listBox, () => fill(listBox, runsTable(runs), pager.length ? h('p', { class: 'pager' }, pager) : null));
    listBox.dataset.loaded = 'true';
    if (shown) announce(runChanges(shown, runs));
    shown = new Map(runs.map((r) => [r.id, r.status]));
  };
  await load();
  show();
  // Live updates on the newest page; an older page is history and keeps still.
  if (!before) subscribeRuns(() => load().catch(() => { /* the next event retries */ }));
}

// What a refresh of the runs list changed, in words: "deploy run ID succeeded".
function runChanges(shown, runs) {
  const said = [];
  for (const r of runs) {
    const was = shown.get(r.id);
    if (was === r.status) continue;
    said.push(`${r.workflow} run ${r.id} ${was === undefined && r.status !== 'queued' ? `started, ${r.status}` : r.status}`);
  }
  return said.join('. ');
}

function runsTable(runs) {
  if (!runs.length) return h('p', { class: 'empty', testid: 'runs-empty' }, 'No runs here.');
  const th = (t, cls) => h('th', { scope: 'col', class: cls }, t);
  return h('table', { class: 'runs stack', testid: 'runs-table' },
    h('thead', null, h('tr', null, th('Workflow'), th('Environment'), th('Who'), th('When'), th('Status'), th('Duration', 'num'))),
    h('tbody', null, runs.map((r) => h('tr', { testid: 'run-row', dataset: { runId: r.id, status: r.status } },
      h('td', { 'data-label': 'Workflow', class: 'ellipsis' }, h('a', { href: `#/runs/${encodeURIComponent(r.id)}`, title: r.id }, r.workflow), r.dry_run ? h('span', { class: 'tag' }, 'dry run') : null),
      h('td', { 'data-label': 'Environment', class: 'ellipsis' }, r.environment || h('span', { class: 'muted' }, '—')),
      h('td', { 'data-label': 'Who', class: 'ellipsis' }, r.principal || '—'),
      h('td', { 'data-label': 'When' }, timeEl(r.created_ms, r.created_at)),
      h('td', { 'data-label': 'Status' }, badge(r.status), r.status === 'queued' && r.queue_position ? h('span', { class: 'muted small' }, ` #${r.queue_position}`) : null),
      h('td', { 'data-label': 'Duration', class: 'num' }, (r.status === 'running' || r.status === 'waiting') && r.started_ms ? liveDuration(r.started_ms) : runDuration(r))))));
}

// ---------------------------------------------------------------------------------------
// Run page

const SECTIONS = [['steps', 'Steps'], ['on_failure', 'On failure'], ['finally', 'Finally']];

// The page's model of a run: the GET answer, then every event of the run's stream applied
// on top. Steps are keyed by id and keep the plan's order.
function stepFromPlan(p) {
  return {
    id: p.id, name: p.name || p.id, section: p.section || 'steps', uses: p.uses || null,
    status: 'pending', attempts: 0, started_ms: null, finished_ms: null, duration_ms: null,
    summary: null, outputs: null, error: null, continued: false, logs: [],
  };
}

function buildModel(run) {
  const steps = new Map();
  for (const p of run.plan || []) steps.set(p.id, stepFromPlan(p));
  for (const st of run.steps || []) {
    const base = steps.get(st.id) || stepFromPlan({ id: st.id, name: st.name, section: st.section });
    steps.set(st.id, { ...base, ...st, name: base.name, logs: st.logs || [] });
  }
  // A failed step starts expanded: its error, logs and charts are why anyone opens the page.
  const open = new Set([...steps.values()].filter((st) => st.status === 'failed').map((st) => st.id));
  return { run, steps, runLogs: run.logs || [], open, closed: new Set(), dom: new Map() };
}

async function viewRun(root, show, alive, id) {
  const model = buildModel(await api('GET', `/api/v1/runs/${encodeURIComponent(id)}`));
  setTitle(`${model.run.workflow} ${model.run.id}`);
  const headBox = h('div');
  const approvalBox = h('div');
  const stepsBox = h('div', { class: 'timeline-box' });
  const runLogsBox = h('div');
  const whyBox = h('div');
  root.append(headBox, approvalBox, whyBox, stepsBox, runLogsBox);

  // The "Why" panel: the run's account, read again (at most once per WHY_DELAY) whenever
  // the run changes, since each change may add to it.
  let whyShown = null, whyTimer = null, whyAsked = 0;
  const refreshWhy = () => {
    if (whyTimer) return;
    whyTimer = setTimeout(async () => {
      whyTimer = null;
      const asked = ++whyAsked;
      let answer;
      try { answer = await api('GET', `/api/v1/runs/${encodeURIComponent(model.run.id)}/why`); } catch { return; }
      if (!alive() || asked !== whyAsked) return;
      const key = JSON.stringify(answer.lines);
      if (key === whyShown) return;
      whyShown = key;
      keepingFocus(whyBox, () => fill(whyBox, whyPanel(answer.lines)));
    }, whyShown === null ? 0 : WHY_DELAY);
  };
  onLeave(() => clearTimeout(whyTimer));

  // The run's status is announced when it changes, not on every redraw of the header.
  let said = model.run.status;
  // The approval panel is drawn again only when what it shows changed, so a comment being
  // typed is not wiped by a refresh of the header.
  let approvalShown = null;
  const renderApproval = () => {
    const open = waitingAt(model);
    const key = JSON.stringify([model.run.status, open && [open.step, open.votes.length, open.you_may_approve, open.you_may_reject], open && evidenceOf(model).length]);
    if (key === approvalShown) return;
    approvalShown = key;
    keepingFocus(approvalBox, () => fill(approvalBox, approvalPanel(model, decide)));
    // The step that asks reads `waiting` while it does.
    const asking = open && model.steps.get(open.step);
    if (asking) redrawStep(model, asking);
  };
  const renderHead = () => {
    keepingFocus(headBox, () => headBox.replaceChildren(runHeader(model, cancel, resume)));
    renderApproval();
    refreshWhy();
    if (model.run.status !== said) {
      said = model.run.status;
      const rb = rollbackState(model);
      announce(`run ${model.run.id} ${said}${rb ? `, ${rb}` : ''}`);
    }
  };
  const renderAll = () => {
    renderHead();
    stepsBox.replaceChildren(timeline(model));
    runLogsBox.replaceChildren(runLogsPanel(model));
  };

  // POSTs `/runs/ID/<action>` for a header button, then shows the run's new state.
  const act = (action, pending) => async (btn, msg) => {
    btn.disabled = true;
    try {
      await api('POST', `/api/v1/runs/${encodeURIComponent(model.run.id)}/${action}`);
      msg.textContent = pending;
      refreshHead().catch(() => {});
    } catch (e) { msg.textContent = e.message; btn.disabled = false; }
  };
  const cancelNow = act('cancel', 'Cancelling…');
  const cancel = (btn, msg) => confirm(`Cancel run ${model.run.id}?`) && cancelNow(btn, msg);
  // An interrupted run (the daemon stopped mid-run) goes on from its step in flight.
  const resume = act('resume', 'Resuming…');
  // Approves or rejects the approval the run waits at, with the comment typed.
  const decide = async (approval, decision, buttons, comment, msg) => {
    for (const b of buttons) b.disabled = true;
    try {
      const answer = await api('POST', `/api/v1/runs/${encodeURIComponent(model.run.id)}/approvals`,
        { step: approval.step, decision, comment: comment.value.trim() });
      const said = decision === 'approve' ? 'Approved' : 'Rejected';
      const left = answer.outcome ? '' : `; ${answer.votes.filter((v) => v.decision === 'approve').length} of ${answer.required} approvals, it still waits`;
      msg.textContent = `${said}${left}.`;
      announce(`${said} ${approval.step_name}${left}`);
      refreshHead().catch(() => {});
    } catch (e) {
      msg.textContent = e.message;
      for (const b of buttons) b.disabled = false;
    }
  };

  // The header (status, queue position, detail) comes from GET: cheap, and it covers what the
  // event stream does not say, e.g. a queued run's position or a cancel before it started.
  let stream = null;
  // Refreshes may overlap (a feed notice, a step's end); only the newest one's answer is
  // applied, or a slow answer from before a change would undo it (a run shown `running`
  // again after it started to wait, with nothing left to say otherwise).
  let headAsked = 0;
  const refreshHead = async () => {
    const asked = ++headAsked;
    const fresh = await api('GET', `/api/v1/runs/${encodeURIComponent(model.run.id)}`);
    if (!alive() || asked !== headAsked) return;
    const wasTerminal = TERMINAL.has(model.run.status);
    // A slow answer from before the end must not bring an ended run back to life.
    if (wasTerminal && !TERMINAL.has(fresh.status)) return;
    if (TERMINAL.has(fresh.status) && !wasTerminal) {
      // Finished: the stored record is now complete, so rebuild everything from it.
      if (stream) { stream.close(); stream = null; }
      const { open, closed } = model;
      const next = buildModel(fresh);
      for (const id of next.open) if (!closed.has(id)) open.add(id);
      Object.assign(model, next, { open, closed });
      renderAll();
      return;
    }
    const { steps, plan, logs, ...head } = fresh;
    Object.assign(model.run, head);
    renderHead();
  };

  // An approval may ask between the page's first read and its subscription to the feed, and
  // then no notice comes to say so. While an approval step runs and the run does not say it
  // waits yet, the page reads the run again every second (at most a minute).
  let askPoll = null;
  const watchAsking = () => {
    if (askPoll) return;
    let tries = 0;
    const tick = () => {
      askPoll = null;
      const asking = [...model.steps.values()].some((st) => st.uses === 'approval' && st.status === 'running');
      if (!alive() || !asking || model.run.status !== 'running' || ++tries > 60) return;
      refreshHead().catch(() => {});
      askPoll = setTimeout(tick, 1000);
    };
    askPoll = setTimeout(tick, 300);
  };
  onLeave(() => clearTimeout(askPoll));

  renderAll();
  show();
  if (TERMINAL.has(model.run.status)) return;
  watchAsking();

  subscribeRuns((ids) => {
    // Any run's change can move a queued run up the line; otherwise only ours matters.
    if (model.run.status === 'queued' || ids.has(model.run.id)) refreshHead().catch(() => {});
  }, 500);

  stream = new EventSource(`/api/v1/runs/${encodeURIComponent(model.run.id)}/events`);
  onLeave(() => { if (stream) stream.close(); });
  stream.onmessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch { return; }
    applyEvent(model, ev, renderAll, renderHead, () => refreshHead().catch(() => {}));
    if (ev.event === 'step_started') watchAsking();
    if (ev.event === 'step_finished' || ev.event === 'step_started') refreshWhy();
    if (ev.event === 'run_finished') {
      stream.close();
      stream = null;
      refreshHead().catch(() => {});
    }
  };
}

// Applies one event of docs/events.md. The stream replays the stored events first, so
// `run_started` resets the steps: the page then shows exactly what the stream says, without
// doubling the log lines the GET already returned.
function applyEvent(model, ev, renderAll, renderHead, refreshHead) {
  const t = ev.time ? Date.parse(ev.time) : Date.now();
  const stepOf = (id, name, section) => {
    let st = model.steps.get(id);
    if (!st) { st = stepFromPlan({ id, name, section }); model.steps.set(id, st); }
    return st;
  };
  switch (ev.event) {
    case 'run_started': {
      const plan = ev.steps && ev.steps.length ? ev.steps : [...model.steps.values()];
      const fresh = new Map();
      for (const p of plan) fresh.set(p.id, stepFromPlan({ ...p, uses: (model.steps.get(p.id) || {}).uses }));
      model.steps = fresh;
      model.runLogs = [];
      if (model.run.status === 'queued') { model.run.status = 'running'; model.run.started_ms = t; }
      if (!model.run.started_ms) model.run.started_ms = t;
      renderAll();
      break;
    }
    case 'step_started': {
      const st = stepOf(ev.step, ev.name, ev.section);
      Object.assign(st, { status: 'running', attempts: ev.attempt || 1, started_ms: t, finished_ms: null, duration_ms: null, error: null });
      if (model.run.status === 'queued') { model.run.status = 'running'; renderHead(); }
      if (st.section === 'on_failure') refreshHead(); // now rolling back
      redrawStep(model, st);
      break;
    }
    case 'log': {
      const line = { level: ev.level, source: ev.source, message: ev.message, time: ev.time };
      if (!ev.step) { model.runLogs.push(line); appendRunLog(model, line); break; }
      const st = stepOf(ev.step, ev.step, 'steps');
      st.logs.push(line);
      appendLog(model, st, line);
      break;
    }
    case 'step_finished': {
      const st = stepOf(ev.step, ev.name, ev.section);
      Object.assign(st, {
        status: ev.status, attempts: ev.attempts, duration_ms: ev.duration_ms, summary: ev.summary,
        outputs: ev.outputs, error: ev.error, continued: ev.continued, finished_ms: t,
      });
      if (st.status === 'failed' && !model.closed.has(st.id)) model.open.add(st.id);
      redrawStep(model, st);
      // The server says whether it rolled back, or that the run no longer waits.
      if (st.section === 'on_failure' || model.run.status === 'waiting') refreshHead();
      break;
    }
    case 'run_finished': {
      Object.assign(model.run, { status: ev.status, duration_ms: ev.duration_ms, finished_ms: t });
      renderAll(); // steps that never started now read "not run" rather than "pending"
      break;
    }
    default: break; // fields and events may be added later: ignore what we do not know
  }
}

// Whether the run was rolled back is the server's to say (`rollback` of GET /api/v1/runs/ID,
// decided by `Rollback::of`); the page only words it.
const ROLLBACK = { rolling_back: 'rolling back', rolled_back: 'rolled back', failed: 'rollback failed' };

function rollbackState(model) {
  return ROLLBACK[model.run.rollback] || null;
}

function runHeader(model, cancel, resume) {
  const r = model.run;
  const running = r.status === 'running' || r.status === 'waiting';
  const fact = (label, value, testid) => h('div', { class: 'fact' }, h('dt', null, label), h('dd', { testid }, value));
  const rb = rollbackState(model);
  const msg = h('span', { class: 'muted small', role: 'status' });
  const canCancel = !TERMINAL.has(r.status) && role.canCancel(r);
  const cancelBtn = canCancel ? h('button', { type: 'button', class: 'btn btn-danger', testid: 'cancel-run' }, 'Cancel run') : null;
  if (cancelBtn) cancelBtn.addEventListener('click', () => cancel(cancelBtn, msg));
  // Resuming takes the same right as cancelling: one's own run, or an admin.
  const resumeBtn = r.status === 'interrupted' && role.canCancel(r)
    ? h('button', { type: 'button', class: 'btn', testid: 'resume-run' }, 'Resume run') : null;
  if (resumeBtn) resumeBtn.addEventListener('click', () => resume(resumeBtn, msg));

  let why = null;
  if (r.status === 'queued') {
    why = h('p', { class: 'notice', testid: 'queued-reason' },
      r.waiting_on
        ? ['Queued behind run ', h('a', { href: `#/runs/${encodeURIComponent(r.waiting_on)}`, class: 'run-id' }, r.waiting_on), r.queue_position ? ` (position ${r.queue_position})` : '']
        : ['Queued', r.queue_position ? ` (position ${r.queue_position})` : '', r.concurrency_key ? ` for ${r.concurrency_key}` : '']);
  }
  return h('section', { class: 'run-head card', 'aria-labelledby': 'run-title' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/runs' }, '← Runs')),
    h('div', { class: 'page-head' },
      h('h1', { id: 'run-title', class: 'ellipsis', tabindex: '-1' }, r.workflow, r.environment ? h('span', { class: 'muted' }, ` → ${r.environment}`) : null),
      h('div', { class: 'head-badges' },
        badge(r.status, { testid: 'run-status' }),
        rb ? h('span', { class: ['tag', rb === 'rolled back' ? 'tag-warn' : 'tag-bad'], testid: 'rolled-back' }, `↩ ${rb}`) : null,
        r.dry_run ? h('span', { class: 'tag' }, 'dry run') : null,
        resumeBtn, cancelBtn, msg)),
    why,
    r.detail ? h('p', { class: 'detail', testid: 'run-detail' }, r.detail) : null,
    h('dl', { class: 'facts' },
      h('div', { class: 'fact wide' }, h('dt', null, 'Run'), h('dd', null, h('code', { class: 'run-id', testid: 'run-id' }, r.id))),
      fact('Environment', r.environment || '—'),
      fact('Who', r.principal || '—'),
      fact('From', SOURCE[r.source] || 'not recorded', 'run-source'),
      fact('Workflow', handbookLink(r.workflow, 'run-handbook', `${r.workflow}'s handbook`)),
      fact('Started', r.started_ms ? timeEl(r.started_ms) : (r.status === 'queued' ? 'not yet' : '—')),
      fact('Duration', running && r.started_ms ? liveDuration(r.started_ms) : (runDuration(r) || '—'), 'run-duration')),
    inputsList(r.inputs));
}

// Where a run was started from (`source` of GET /api/v1/runs/ID); a run recorded before the
// daemon kept it has none.
const SOURCE = { api: 'the API', web: 'the web page', slack: 'Slack', cli: 'the CLI' };

// How long the "Why" panel waits after a change before it reads the account again: a burst
// of step events costs one read.
const WHY_DELAY = 300;

// The run's account, one line each (GET /api/v1/runs/ID/why), with its code spans.
function whyPanel(lines) {
  return h('section', { class: 'card why', 'aria-labelledby': 'why-title', testid: 'why-panel' },
    h('h2', { id: 'why-title' }, 'Why'),
    h('ul', { class: 'why-lines' }, lines.map((line) => h('li', null, inline(line)))));
}

function handbookLink(workflow, testid, text = 'Handbook') {
  return h('a', { href: `#/workflows/${encodeURIComponent(workflow)}`, class: 'handbook-link', testid }, text);
}

// The approval a run waits at, if it waits.
function waitingAt(model) {
  if (model.run.status !== 'waiting') return null;
  return (model.run.approvals || []).find((a) => !a.outcome) || null;
}

// What the person deciding should look at: the measurements of the steps that measured.
function evidenceOf(model) {
  return [...model.steps.values()].filter((st) => st.outputs && Array.isArray(st.outputs.measurements) && st.outputs.measurements.length);
}

// The question a waiting run asks: its message, who may decide, until when, the votes so
// far, the evidence, and Approve / Reject for whoever may.
function approvalPanel(model, decide) {
  const a = waitingAt(model);
  if (!a) return null;
  const approved = a.votes.filter((v) => v.decision === 'approve').length;
  const who = [...a.roles.map((r) => `role ${r}`), ...a.principals].join(' or ') || 'anyone who may run the workflow';
  const fact = (label, value, testid) => h('div', { class: 'fact' }, h('dt', null, label), h('dd', { testid }, value));
  const comment = h('textarea', { id: 'approval-comment', name: 'comment', rows: '2', maxlength: '2000', testid: 'approval-comment' });
  const msg = h('p', { class: 'muted small', testid: 'approval-said' });
  const buttons = [];
  const button = (decision, text, cls) => {
    const b = h('button', { type: 'button', class: ['btn', cls], testid: `approval-${decision}` }, text);
    b.addEventListener('click', () => decide(a, decision, buttons, comment, msg));
    buttons.push(b);
    return b;
  };
  if (a.you_may_approve) button('approve', 'Approve', 'btn-primary');
  if (a.you_may_reject) button('reject', 'Reject', 'btn-danger');
  const mine = state.session && a.votes.some((v) => v.principal === state.session.principal);
  let whyNot = null;
  if (mine) whyNot = 'You have decided on it; it waits for the others.';
  else if (!a.you_may_approve && a.you_may_reject) whyNot = 'You started this run, so another person must approve it; you may still reject it.';
  else if (!buttons.length) whyNot = `Only ${who} may decide.`;
  const evidence = evidenceOf(model);
  return h('section', { class: 'card approval', 'aria-labelledby': 'approval-title', testid: 'approval-panel', dataset: { step: a.step } },
    h('h2', { id: 'approval-title' }, `Waiting for approval: ${a.step_name}`),
    h('p', { class: 'approval-text', testid: 'approval-text' }, a.message),
    h('dl', { class: 'facts' },
      fact('Who may decide', who, 'approval-who'),
      fact('Approvals', `${approved} of ${a.required}`, 'approval-count'),
      fact('Waiting since', timeEl(a.since_ms)),
      fact('No answer counts as rejected', timeEl(a.deadline_ms), 'approval-deadline')),
    a.votes.length ? h('ul', { class: 'votes', testid: 'approval-votes' }, a.votes.map((v) =>
      h('li', null, `${v.decision === 'approve' ? 'Approved' : 'Rejected'} by ${v.principal}`, v.comment ? `: “${v.comment}”` : ''))) : null,
    evidence.length ? h('div', { class: 'evidence', testid: 'approval-evidence' }, h('h3', null, 'Evidence'), evidence.map((st) => metricsCharts(st.outputs))) : null,
    buttons.length
      ? h('form', { class: 'approval-form', onsubmit: (ev) => ev.preventDefault() },
        h('div', { class: 'field' }, h('label', { for: 'approval-comment' }, 'Comment (optional)'), comment),
        h('div', { class: 'actions' }, buttons), msg)
      : null,
    whyNot ? h('p', { class: 'notice', testid: 'approval-why-not' }, whyNot) : null);
}

function inputsList(inputs) {
  const keys = Object.keys(inputs || {});
  if (!keys.length) return null;
  return h('details', { class: 'inputs' }, h('summary', null, `Inputs (${keys.length})`),
    kvTable(inputs));
}

function kvTable(obj, skip = new Set()) {
  return h('table', { class: 'kv' }, h('tbody', null, Object.entries(obj).filter(([k]) => !skip.has(k)).map(([k, v]) =>
    h('tr', null, h('th', { scope: 'row' }, k), h('td', null, h('code', { class: 'break' }, prettyJson(v)))))));
}

function timeline(model) {
  const wrap = h('div', { class: 'timeline' });
  const steps = [...model.steps.values()];
  if (!steps.length) wrap.append(h('p', { class: 'empty' }, model.run.status === 'queued' ? 'Waiting to start.' : 'No steps recorded.'));
  for (const [section, title] of SECTIONS) {
    const list = steps.filter((st) => st.section === section);
    if (!list.length) continue;
    const ol = h('ol', { class: 'steps', dataset: { section } });
    for (const st of list) ol.append(stepEl(model, st));
    wrap.append(h('section', { class: ['section', `sec-${section}`], testid: `section-${section}` },
      h('h2', null, title, section === 'on_failure' ? h('span', { class: 'muted small' }, ' — runs when a step fails, e.g. the rollback') : null), ol));
  }
  return wrap;
}

function redrawStep(model, st) {
  const old = model.dom.get(st.id);
  const fresh = stepEl(model, st);
  if (old && old.root.isConnected) old.root.replaceWith(fresh);
  else $('.timeline-box') && $('.timeline-box').replaceChildren(timeline(model));
}

function stepEl(model, st) {
  const terminal = TERMINAL.has(model.run.status) || model.run.status === 'interrupted';
  const asking = st.status === 'running' && waitingAt(model)?.step === st.id;
  const status = st.status === 'pending' && terminal ? 'not-run' : (asking ? 'waiting' : st.status);
  const timing = st.status === 'running' && st.started_ms ? liveDuration(st.started_ms) : fmtDuration(st.duration_ms);
  const logsPre = h('div', { class: 'logs', role: 'log', 'aria-label': `Logs of ${st.name}`, tabindex: '0' });
  for (const line of st.logs) logsPre.append(logLine(line));
  const hasBody = st.status !== 'pending';
  // The summary line stays visible while collapsed: status and the one-line answer (the
  // error if there is one) are what most people want; logs and outputs are one click away.
  const glance = st.error ? st.error.message : st.summary;
  const details = h('details', { class: 'step-body', open: model.open.has(st.id) },
    h('summary', null,
      h('span', { class: 'step-row' },
        h('span', { class: 'step-title' },
          h('span', { class: 'step-name' }, st.name),
          st.name !== st.id ? h('code', { class: 'step-id' }, st.id) : null,
          st.attempts > 1 ? h('span', { class: 'tag' }, `attempt ${st.attempts}`) : null,
          st.continued ? h('span', { class: 'tag tag-warn' }, 'continued') : null),
        h('span', { class: 'step-time' }, timing)),
      h('span', { class: 'step-glance' },
        h('span', { class: ['step-status', `st-${status}`] }, status),
        glance ? h('span', { class: 'glance-summary ellipsis', title: glance }, glance) : null)),
    h('div', { class: 'step-detail' },
      // A failed step's summary is its error message; say it once, with the error's kind.
      st.summary && st.summary !== st.error?.message ? h('p', { class: 'summary' }, st.summary) : null,
      st.error ? h('p', { class: 'error step-error', testid: `step-error-${st.id}` }, h('strong', null, st.error.kind), ': ', st.error.message) : null,
      h('h3', null, 'Logs'), st.logs.length || st.status === 'running' ? logsPre : h('p', { class: 'muted small' }, 'No log lines.'),
      outputsEl(st)));
  details.addEventListener('toggle', () => {
    if (details.open) { model.open.add(st.id); model.closed.delete(st.id); } else { model.open.delete(st.id); model.closed.add(st.id); }
  });
  const li = h('li', { class: ['step', `st-${status}`], testid: `step-${st.id}`, dataset: { status: st.status, stepId: st.id } },
    h('span', { class: 'dot', 'aria-hidden': 'true' }, STATUS_ICON[status] || '○'),
    h('div', { class: 'step-main' },
      hasBody ? details : h('div', { class: 'step-pending' }, h('span', { class: 'step-name' }, st.name), h('span', { class: 'muted small' }, status === 'not-run' ? 'not run' : 'pending'))));
  model.dom.set(st.id, { root: li, logs: logsPre });
  return li;
}

function logLine(line) {
  return h('div', { class: ['line', `lv-${line.level}`] },
    line.time ? h('span', { class: 'lt' }, (line.time.split('T')[1] || '').slice(0, 12)) : null,
    line.level && line.level !== 'info' ? h('span', { class: 'll' }, line.level) : null,
    h('span', { class: 'lm' }, line.message));
}

function appendLog(model, st, line) {
  const dom = model.dom.get(st.id);
  if (!dom || !dom.root.isConnected) return;
  if (!dom.logs.isConnected) { redrawStep(model, st); return; }
  // Follow the tail only if the reader is already at the bottom; never yank them away.
  const box = dom.logs;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
  box.append(logLine(line));
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function runLogsPanel(model) {
  const box = h('div', { class: 'logs', role: 'log', tabindex: '0', testid: 'run-logs' });
  for (const line of model.runLogs) box.append(logLine(line));
  model.runLogsBox = box;
  return h('details', { class: 'card run-logs', hidden: !model.runLogs.length }, h('summary', null, 'Run log'), box);
}

function appendRunLog(model, line) {
  if (!model.runLogsBox) return;
  model.runLogsBox.closest('details').hidden = false;
  model.runLogsBox.append(logLine(line));
}

function outputsEl(st) {
  const o = st.outputs;
  if (!o || typeof o !== 'object' || !Object.keys(o).length) return null;
  const parts = [h('h3', null, 'Outputs')];
  const skip = new Set();
  if (Array.isArray(o.measurements)) {
    skip.add('measurements');
    parts.push(metricsCharts(o));
  }
  parts.push(kvTable(o, skip));
  if (skip.has('measurements')) parts.push(h('p', { class: 'muted small' }, `measurements: ${o.measurements.length} (charted above)`));
  return h('div', { class: 'outputs' }, parts);
}

// ---------------------------------------------------------------------------------------
// Metric charts (metrics-verifier outputs): one SVG per metric, value over time.

const FAILING = new Set(['Failed', 'Error', 'Inconclusive']);

function metricsCharts(outputs) {
  const byMetric = new Map();
  for (const m of outputs.measurements) {
    if (!m || typeof m !== 'object') continue;
    const name = String(m.metric ?? 'metric');
    if (!byMetric.has(name)) byMetric.set(name, []);
    byMetric.get(name).push(m);
  }
  const info = (outputs.metrics && typeof outputs.metrics === 'object') ? outputs.metrics : {};
  return h('div', { class: 'charts' }, [...byMetric].map(([name, ms]) => metricChart(name, ms, info[name] || {})));
}

function fmtNum(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return String(v);
  if (v === 0) return '0';
  const a = Math.abs(v);
  return (a >= 1e5 || a < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(3)));
}

// Round axis steps (1, 2, 2.5, 5 × 10^n) so the grid reads 0, 0.02, 0.04… not 0.0223.
function niceStep(span, count) {
  const raw = span / count, mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
}

function metricChart(name, ms, info) {
  // The chart is drawn for the width it will roughly get: a 640-unit drawing squeezed onto a
  // phone would shrink its labels to nothing.
  const W = Math.round(Math.max(320, Math.min(640, (document.documentElement.clientWidth || 640) - 90)));
  const H = 220, L = 56, R = 16, T = 14, B = 30;
  const pts = ms.map((m, i) => ({ m, t: Date.parse(m.time) || i, v: typeof m.value === 'number' && Number.isFinite(m.value) ? m.value : null }));
  const th = info.threshold && typeof info.threshold.value === 'number' ? info.threshold : null;

  const vals = pts.filter((p) => p.v !== null).map((p) => p.v);
  if (th) vals.push(th.value);
  let lo = vals.length ? Math.min(...vals) : 0, hi = vals.length ? Math.max(...vals) : 1;
  if (lo >= 0 && lo <= hi * 0.5) lo = 0; // ratios and counts read best from zero
  if (hi === lo) { hi += Math.abs(hi) * 0.1 || 1; lo -= lo === 0 ? 0 : Math.abs(lo) * 0.1; }
  const tick = niceStep(hi - lo, 4);
  lo = Math.floor(lo / tick) * tick;
  hi = Math.ceil((hi + (hi - lo) * 0.05) / tick) * tick;
  let t0 = Math.min(...pts.map((p) => p.t)), t1 = Math.max(...pts.map((p) => p.t));
  if (t1 === t0) { t0 -= 1000; t1 += 1000; }
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const r2 = (n) => Math.round(n * 100) / 100;

  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img', 'aria-label': `${name} over time` });
  // Grid and axis labels.
  for (let v = lo; v <= hi + tick / 2; v += tick) {
    const yy = r2(y(v));
    svg.append(s('line', { x1: L, x2: W - R, y1: yy, y2: yy, class: 'grid' }),
      s('text', { x: L - 6, y: yy + 4, class: 'axis', 'text-anchor': 'end' }, fmtNum(Number(v.toPrecision(6)))));
  }
  // Measurements seconds apart need milliseconds to tell the two ends of the axis apart.
  const clock = (t) => new Date(t).toISOString().slice(11, t1 - t0 < 60000 ? 23 : 19);
  svg.append(s('text', { x: L, y: H - 8, class: 'axis' }, clock(t0)),
    s('text', { x: W - R, y: H - 8, class: 'axis', 'text-anchor': 'end' }, clock(t1)));

  if (th) {
    const yy = r2(y(th.value));
    svg.append(s('line', { x1: L, x2: W - R, y1: yy, y2: yy, class: 'threshold', testid: `threshold-${name}` }),
      s('text', { x: W - R - 4, y: yy - 5, class: 'axis threshold-label', 'text-anchor': 'end' }, `${th.op || ''} ${fmtNum(th.value)}`));
  }
  const line = pts.filter((p) => p.v !== null).map((p) => `${r2(x(p.t))},${r2(y(p.v))}`).join(' ');
  if (line) svg.append(s('polyline', { points: line, class: 'series' }));

  for (const p of pts) {
    const bad = FAILING.has(p.m.outcome);
    // A measurement without a value (an Error) sits on the bottom axis: it still happened.
    const cx = r2(x(p.t)), cy = r2(p.v === null ? H - B : y(p.v));
    const tip = s('title', null, `${clock(p.t)}  ${p.v === null ? 'no value' : fmtNum(p.v)} → ${p.m.outcome || '?'}${p.m.error ? `: ${p.m.error}` : ''}`);
    const el = bad
      ? s('path', { d: `M${cx - 5},${cy - 5}L${cx + 5},${cy + 5}M${cx + 5},${cy - 5}L${cx - 5},${cy + 5}`, class: 'point failing', dataset: { outcome: p.m.outcome } }, tip)
      : s('circle', { cx, cy, r: 4, class: 'point ok', dataset: { outcome: p.m.outcome } }, tip);
    svg.append(el);
  }

  const swatch = (...kids) => s('svg', { viewBox: '0 0 24 12', width: 24, height: 12, 'aria-hidden': 'true' }, ...kids);
  const legend = h('ul', { class: 'legend' },
    h('li', null, swatch(s('line', { x1: 0, x2: 24, y1: 6, y2: 6, class: 'series' }), s('circle', { cx: 12, cy: 6, r: 3.5, class: 'point ok' })), ` ${name}`),
    th ? h('li', null, swatch(s('line', { x1: 0, x2: 24, y1: 6, y2: 6, class: 'threshold' })), ` threshold (${th.op || ''} ${fmtNum(th.value)})`) : null,
    pts.some((p) => FAILING.has(p.m.outcome)) ? h('li', null, swatch(s('path', { d: 'M8,2L16,10M16,2L8,10', class: 'point failing' })), ' failing measurement') : null);

  const verdict = info.verdict || null;
  return h('figure', { class: 'chart', testid: `chart-${name}` },
    h('figcaption', null,
      h('strong', { class: 'break' }, name),
      verdict ? h('span', { class: ['tag', verdict === 'Successful' ? 'tag-good' : 'tag-bad'], testid: `verdict-${name}` }, verdict) : null,
      info.success_condition ? h('span', { class: 'muted small' }, ' success when ', h('code', null, info.success_condition)) : null),
    h('div', { class: 'chart-frame' }, svg), legend);
}

// ---------------------------------------------------------------------------------------
// Deploy

async function viewDeploy(root, show, name) {
  setTitle('Deploy');
  if (!role.canDeploy) {
    root.append(h('h1', null, 'Deploy'), h('p', { class: 'notice' }, `Your role (${role.label}) may read runs but not start them.`));
    show();
    return;
  }
  const workflows = await loadWorkflows(true);
  if (!name) {
    root.append(h('h1', null, 'Deploy'), h('p', { class: 'muted' }, 'Pick a workflow.'),
      workflows.length ? h('ul', { class: 'wf-list' }, workflows.map((w) => h('li', { class: 'wf-item' },
        h('a', { class: 'card wf-card', href: `#/deploy/${encodeURIComponent(w.name)}`, testid: `workflow-${w.name}` },
          h('strong', { class: 'break' }, w.name), w.description ? h('span', { class: 'muted' }, w.description) : null,
          loadingNote(w)),
        // Beside the card, not inside it: a link inside a link is neither valid nor reachable.
        handbookLink(w.name, `handbook-${w.name}`))))
        : h('p', { class: 'empty' }, 'No workflows are in service.'));
    show();
    return;
  }
  const wf = workflows.find((w) => w.name === name);
  if (!wf) {
    root.append(h('h1', null, 'Deploy'), h('p', { class: 'error' }, `No workflow named ${name} is in service.`), h('a', { href: '#/deploy' }, 'All workflows'));
    show();
    return;
  }
  root.append(deployForm(wf));
  show();
  const first = root.querySelector('input, select');
  if (first) first.focus();
}

// Where a workflow's plugins stand on the daemon, when its runs would not start at once: a
// first compile of a large plugin takes seconds, and a run asked meanwhile waits for it.
function loadingNote(w) {
  if (!w.status || w.status === 'ready') return null;
  const mb = (bytes) => bytes >= 1e6 ? `${Math.round(bytes / 1e6)} MB` : `${Math.round(bytes / 1e3)} KB`;
  const plugins = (w.compiling || []).map((p) => `${p.file} (${mb(p.bytes)})`).join(', ');
  const what = plugins ? `compiling ${plugins}` : 'loading its plugins';
  return h('span', { class: 'muted', testid: `workflow-${w.name}-loading` }, `${what}; runs wait until it is ready`);
}

function inputControl(inp) {
  const id = `in-${inp.name}`;
  const type = inp.type;
  const common = { id, name: inp.name, testid: `input-${inp.name}`, 'aria-describedby': `${id}-help ${id}-err` };
  if (type && typeof type === 'object' && Array.isArray(type.choice)) {
    const sel = h('select', { ...common, required: inp.required },
      // A required choice without default starts empty so nobody deploys the first option by accident.
      inp.default === undefined || inp.default === null ? h('option', { value: '' }, inp.required ? 'Choose…' : '(none)') : null,
      type.choice.map((c) => h('option', { value: String(c), selected: String(c) === String(inp.default) }, String(c))));
    return sel;
  }
  if (type === 'bool') return h('input', { ...common, type: 'checkbox', checked: inp.default === true || inp.default === 'true' });
  // A text field, not type=number: a number field hands the script an empty value for "1e",
  // which would quietly become the server's default. Here the page reads what was typed,
  // checks it and says what is wrong (readInputs).
  if (type === 'number') return h('input', { ...common, type: 'text', inputmode: 'decimal', required: inp.required, value: inp.default ?? '', autocomplete: 'off', spellcheck: 'false' });
  return h('input', { ...common, type: 'text', required: inp.required, value: inp.default ?? '', autocomplete: 'off', spellcheck: 'false' });
}

// A number as a person writes one; Number() alone would also take "0x10" and " ".
const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

function readInputs(wf, form) {
  const out = {};
  const errors = [];
  for (const inp of wf.inputs || []) {
    const el = form.elements[inp.name];
    if (!el) continue;
    if (inp.type === 'bool') { out[inp.name] = el.checked; continue; }
    const raw = el.value.trim();
    if (raw === '') {
      if (inp.required) errors.push([inp.name, 'Required.']);
      continue; // leave it out: the server applies the default
    }
    if (inp.type === 'number') {
      const n = NUMBER.test(raw) ? Number(raw) : NaN;
      if (!Number.isFinite(n)) { errors.push([inp.name, `“${raw}” is not a number. Write it with digits, like 3, 0.5 or 1e3.`]); continue; }
      out[inp.name] = n;
    } else out[inp.name] = raw;
  }
  return { inputs: out, errors };
}

// A concurrency key as it will be for the inputs on the form now: `deploy-${{ inputs.environment }}`
// reads `deploy-staging`. A key with any other expression is described, never shown raw.
const INPUT_REF = /\$\{\{\s*inputs\.([A-Za-z_][A-Za-z0-9_-]*)\s*\}\}/g;

function keyPreview(template, wf, form) {
  const known = new Map((wf.inputs || []).map((inp) => [inp.name, inp]));
  const text = template.replace(INPUT_REF, (whole, name) => {
    const inp = known.get(name);
    const el = form.elements[name];
    if (!inp || !el) return whole;
    if (inp.type === 'bool') return String(el.checked);
    const v = el.value.trim() || (inp.default ?? '');
    return v === '' ? `‹${name}›` : String(v);
  });
  return text.includes('${{') ? null : text;
}

function confirmText(wf, inputs) {
  const rel = inputs.release ?? inputs.version ?? inputs.ref ?? inputs.tag;
  const env = inputs.environment ?? inputs.env;
  if (rel !== undefined && env !== undefined) return `Deploy release ${rel} to ${env}?`;
  if (rel !== undefined) return `Deploy release ${rel} with ${wf.name}?`;
  return `Run ${wf.name}?`;
}

function deployForm(wf) {
  const form = h('form', { class: 'card deploy-form', testid: 'deploy-form', novalidate: true });
  const formErr = h('div', { class: 'form-error', role: 'alert', testid: 'deploy-error', hidden: true });
  const fields = (wf.inputs || []).map((inp) => {
    const ctl = inputControl(inp);
    const isBool = inp.type === 'bool';
    const label = h('label', { for: ctl.id }, inp.name, inp.required ? h('span', { class: 'req', 'aria-hidden': 'true' }, ' *') : null,
      inp.required ? h('span', { class: 'sr-only' }, ' (required)') : null);
    const hasDefault = inp.default !== undefined && inp.default !== null && !isBool;
    const help = h('p', { class: 'help', id: `${ctl.id}-help` }, inp.description || '',
      hasDefault ? h('span', { class: 'default' }, `${inp.description ? ' · ' : ''}default ${compactJson(inp.default)}`) : null);
    const err = h('p', { class: 'field-error', id: `${ctl.id}-err`, testid: `error-${inp.name}`, hidden: true });
    return h('div', { class: ['field', isBool && 'check'], dataset: { field: inp.name } }, isBool ? [ctl, label] : [label, ctl], help, err);
  });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'deploy-submit' }, 'Review deploy');
  // A modal dialog: the rest of the page is inert while it is open, Tab cycles inside it,
  // Escape cancels, and the focus goes back to the button that opened it.
  const confirmBox = h('dialog', { class: 'confirm', testid: 'confirm-panel', 'aria-labelledby': 'confirm-q' });
  confirmBox.addEventListener('keydown', (k) => {
    if (k.key !== 'Tab') return;
    const stops = [...confirmBox.querySelectorAll('button:not([disabled]), [href], [tabindex]:not([tabindex="-1"]), summary')];
    if (!stops.length) return;
    const first = stops[0], last = stops[stops.length - 1];
    if (k.shiftKey && document.activeElement === first) { k.preventDefault(); last.focus(); }
    else if (!k.shiftKey && document.activeElement === last) { k.preventDefault(); first.focus(); }
  });
  confirmBox.addEventListener('close', () => { if (form.isConnected) submit.focus(); });

  const clearErrors = () => {
    formErr.hidden = true;
    formErr.replaceChildren();
    for (const e of form.querySelectorAll('.field-error')) { e.hidden = true; e.textContent = ''; }
    for (const e of form.querySelectorAll('[aria-invalid]')) e.removeAttribute('aria-invalid');
  };
  const fieldError = (name, message) => {
    const box = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
    if (!box) return false;
    const e = box.querySelector('.field-error');
    e.textContent = message;
    e.hidden = false;
    box.querySelector('input, select').setAttribute('aria-invalid', 'true');
    return true;
  };
  const showError = (e) => {
    if (e.field && fieldError(e.field, e.message)) { form.elements[e.field]?.focus(); return; }
    const refused = e.status === 409 && e.body.lock ? 'Refused: locked. '
      : e.status === 409 && e.body.window ? 'Refused: outside the deploy window. '
        : e.status === 403 ? 'Not allowed. ' : 'Refused. ';
    const parts = [h('p', null, h('strong', null, refused), e.message)];
    const lock = e.body && e.body.lock;
    if (lock) parts.push(lockFacts(lock));
    const closed = e.body && e.body.window;
    if (closed) parts.push(windowFacts(closed));
    formErr.replaceChildren(...parts);
    formErr.hidden = false;
    formErr.scrollIntoView({ block: 'nearest' });
  };

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    clearErrors();
    const { inputs, errors } = readInputs(wf, form);
    if (errors.length) {
      for (const [n, m] of errors) fieldError(n, m);
      form.elements[errors[0][0]]?.focus();
      return;
    }
    // Confirm step: say in words what is about to happen, with every input listed.
    const go = h('button', { type: 'button', class: 'btn btn-primary', testid: 'confirm-deploy' }, 'Deploy');
    const back = h('button', { type: 'button', class: 'btn', testid: 'confirm-cancel' }, 'Back');
    fill(confirmBox,
      h('p', { class: 'confirm-q', id: 'confirm-q' }, confirmText(wf, inputs)),
      Object.keys(inputs).length ? kvTable(inputs) : null,
      h('div', { class: 'actions' }, go, back));
    const close = () => { if (confirmBox.open) confirmBox.close(); };
    back.addEventListener('click', close);
    go.addEventListener('click', async () => {
      go.disabled = true; back.disabled = true;
      go.textContent = 'Starting…';
      try {
        const res = await api('POST', '/api/v1/runs', { workflow: wf.name, inputs });
        close();
        location.hash = `#/runs/${encodeURIComponent(res.id)}`;
      } catch (e) {
        if (e.status === 401) return;
        close();
        showError(e);
      }
    });
    confirmBox.showModal();
    go.focus();
  });

  // The concurrency key, worked out from the inputs as they are typed (keyPreview).
  const key = wf.concurrency ? h('span', { testid: 'concurrency-key' }) : null;
  const concurrency = key ? h('p', { class: 'muted small' }, 'One run at a time per ', key, wf.concurrency.queue === false ? '; a busy key refuses new runs.' : '; others wait in line.') : null;
  append(form, [
    h('p', { class: 'crumbs' }, h('a', { href: '#/deploy' }, '← Workflows')),
    h('h1', { class: 'break' }, `Deploy: ${wf.name}`),
    wf.description ? h('p', { class: 'muted' }, wf.description) : null,
    loadingNote(wf),
    concurrency,
    fields, formErr, h('div', { class: 'actions' }, submit), confirmBox]);
  if (key) {
    const update = () => {
      const text = keyPreview(wf.concurrency.key, wf, form);
      key.textContent = text ?? 'a key worked out from the inputs when the run starts';
      key.classList.toggle('mono', text !== null);
    };
    form.addEventListener('input', update);
    form.addEventListener('change', update);
    update();
  }
  return form;
}

function lockFacts(lock) {
  return h('dl', { class: 'facts lock-facts', testid: 'lock-facts' },
    h('div', { class: 'fact' }, h('dt', null, 'Locked by'), h('dd', { testid: 'lock-owner' }, lock.owner || '—')),
    h('div', { class: 'fact' }, h('dt', null, 'Reason'), h('dd', { class: 'break', testid: 'lock-reason' }, lock.reason || '—')),
    h('div', { class: 'fact' }, h('dt', null, 'Since'), h('dd', null, timeEl(null, lock.created_at))),
    lock.expires_at ? h('div', { class: 'fact' }, h('dt', null, 'Expires'), h('dd', null, timeEl(null, lock.expires_at))) : null);
}

// ---------------------------------------------------------------------------------------
// Environments

async function viewEnvironments(root, show, alive) {
  setTitle('Environments');
  const list = h('div', { class: 'envs' });
  root.append(h('h1', null, 'Environments'), list);
  // Lock forms survive live refreshes (same node reused) so typing is never wiped out.
  const forms = new Map();
  // What each environment runs, to announce a change of release rather than every card.
  let shown = null;
  const load = async () => {
    const data = await api('GET', '/api/v1/environments');
    if (!alive()) return;
    const envs = data.environments || [];
    keepingFocus(list, () => list.replaceChildren(...(envs.length ? envs.map((e) => envCard(e, forms, load)) : [h('p', { class: 'empty' }, 'Nothing has been deployed yet.')])));
    const now = new Map(envs.map((e) => [e.key, e.current ? String(e.current.release ?? e.current.id) : '']));
    if (shown) {
      announce([...now].filter(([k, v]) => v && shown.get(k) !== v).map(([k, v]) => `${k} now runs ${v}`).join('. '));
    }
    shown = now;
  };
  await load();
  show();
  subscribeRuns(() => load().catch(() => {}), 500);
}

function runLink(run, text) {
  return h('a', { href: `#/runs/${encodeURIComponent(run.id)}` }, text || run.id);
}

function envCard(env, forms, reload) {
  const cur = env.current;
  const title = env.environment || env.key;
  const current = cur
    ? h('div', { class: 'current' },
      h('span', { class: 'label' }, 'Deployed now'),
      h('span', { class: 'release break', testid: 'env-current-release' }, cur.release ?? '(no release input)'),
      h('span', { class: 'muted small' }, 'by ', cur.principal || '—', ', ', timeEl(cur.finished_ms || cur.created_ms, cur.finished_at || cur.created_at), ' · ', runLink(cur, 'run')))
    : h('div', { class: 'current none' }, h('span', { class: 'label' }, 'Deployed now'), h('span', { class: 'muted', testid: 'env-current-release' }, 'nothing yet'));

  const activity = [];
  if (env.active) activity.push(h('p', { testid: 'env-active' }, badge('running'), ' ', env.active.release ? `release ${env.active.release} ` : '', 'by ', env.active.principal || '—', ' · ', runLink(env.active, 'watch')));
  if (env.queued) activity.push(h('p', { class: 'muted', testid: 'env-queued' }, `${env.queued} queued`));

  const deploys = env.deploys || [];
  const hist = deploys.length ? h('div', { class: 'table-box' }, h('table', { class: 'deploys stack', testid: 'env-deploys' },
    h('caption', { class: 'sr-only' }, `Last deploys of ${env.key}`),
    h('thead', null, h('tr', null, ['Status', 'Release', 'Who', 'When', 'Run'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', null, deploys.map((d) => h('tr', { testid: 'deploy-row', dataset: { runId: d.id, status: d.status, release: d.release ?? '', rolledBack: d.rolled_back ? 'true' : 'false' } },
      h('td', { 'data-label': 'Status' }, badge(d.status), d.rolled_back ? h('span', { class: 'tag tag-warn', testid: 'rolled-back' }, '↩ rolled back') : null),
      h('td', { 'data-label': 'Release', class: 'ellipsis' }, d.release ?? '—'),
      h('td', { 'data-label': 'Who', class: 'ellipsis' }, d.principal || '—'),
      h('td', { 'data-label': 'When' }, timeEl(d.created_ms, d.created_at)),
      h('td', { 'data-label': 'Run' }, runLink(d, 'details')))))))
    : h('p', { class: 'muted small' }, 'No deploys yet.');

  return h('section', { class: 'card env', testid: `env-${env.key}`, dataset: { key: env.key }, 'aria-labelledby': `env-h-${env.key}` },
    h('div', { class: 'page-head' },
      h('h2', { id: `env-h-${env.key}`, class: 'break' }, title, h('span', { class: 'muted small' }, ` ${env.workflow} · `, h('code', null, env.key))),
      env.lock ? h('span', { class: 'tag tag-bad' }, 'locked') : null,
      env.window && !env.window.open ? h('span', { class: 'tag tag-bad', testid: 'window-closed' }, 'closed') : null),
    current, activity,
    env.window ? h('div', { class: env.window.open ? 'window' : 'window notice', testid: 'window-info' }, windowFacts(env.window)) : null,
    lockSection(env, forms, reload),
    h('h3', null, 'Last deploys'), hist);
}

// A deploy window's state (`WindowView`): open or closed, why, when that changes (in the
// reader's time and in the window's own zone) and the weekly windows that apply.
function windowFacts(w) {
  // All but the state take a whole row: a reason, a time in its zone and the windows are long.
  const fact = (label, value, testid, row = false) => h('div', { class: row ? 'fact row' : 'fact' }, h('dt', null, label), h('dd', { class: 'break', testid }, value));
  const next = w.next_change_at
    ? h('span', null, timeEl(null, w.next_change_at), w.next_change_local ? h('span', { class: 'muted small' }, ` (${w.next_change_local})`) : null)
    : null;
  return h('dl', { class: 'facts window-facts', testid: 'window-facts' },
    fact('Deploy window', w.open ? 'open' : 'closed', 'window-state'),
    w.reason ? fact('Why', w.reason, 'window-reason', true) : null,
    next ? fact(w.open ? 'Closes' : 'Opens', next, 'window-next', true) : null,
    w.windows && w.windows.length ? fact('Windows', h('ul', { class: 'rules' }, w.windows.map((rule) => h('li', null, rule))), 'window-rules', true) : null);
}

function lockSection(env, forms, reload) {
  const wrap = h('div', { class: 'lock-section' });
  if (env.lock) {
    wrap.append(h('div', { class: 'lock notice', testid: 'lock-info' }, lockFacts(env.lock)));
    if (role.isAdmin) {
      const msg = h('p', { class: 'field-error', role: 'alert', hidden: true });
      const btn = h('button', { type: 'button', class: 'btn', testid: `unlock-${env.key}` }, 'Unlock');
      btn.addEventListener('click', async () => {
        btn.disabled = true;
        try { await api('DELETE', `/api/v1/locks/${encodeURIComponent(env.key)}`); forms.delete(env.key); await reload(); }
        catch (e) { msg.textContent = e.message; msg.hidden = false; btn.disabled = false; }
      });
      wrap.append(h('div', { class: 'actions' }, btn), msg);
    }
    return wrap;
  }
  if (!role.isAdmin) return wrap;
  let form = forms.get(env.key);
  if (!form) { form = lockForm(env, forms, reload); forms.set(env.key, form); }
  wrap.append(form);
  return wrap;
}

function lockForm(env, forms, reload) {
  const id = `lock-${env.key}`;
  const reason = h('input', { id: `${id}-reason`, name: 'reason', type: 'text', required: true, testid: 'lock-reason-input', autocomplete: 'off' });
  const expires = h('input', { id: `${id}-exp`, name: 'expires_in', type: 'text', placeholder: 'e.g. 2h', testid: 'lock-expires-input', autocomplete: 'off', 'aria-describedby': `${id}-exp-help` });
  const err = h('p', { class: 'field-error', role: 'alert', hidden: true, testid: 'lock-error' });
  const btn = h('button', { type: 'submit', class: 'btn', testid: 'lock-submit' }, 'Lock');
  const form = h('form', { class: 'lock-form', testid: `lock-form-${env.key}`, novalidate: true },
    h('h3', null, 'Lock this environment'),
    h('div', { class: 'row' },
      h('div', { class: 'field grow' }, h('label', { for: reason.id }, 'Reason'), reason),
      h('div', { class: 'field' }, h('label', { for: expires.id }, 'Expires in (optional)'), expires,
        h('p', { class: 'help', id: `${id}-exp-help` }, 'Like 30m, 2h, 1day.')),
      h('div', { class: 'field end' }, btn)),
    err);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    if (!reason.value.trim()) { err.textContent = 'Give a reason: it is shown to everyone the lock refuses.'; err.hidden = false; reason.focus(); return; }
    const body = { reason: reason.value.trim() };
    if (expires.value.trim()) body.expires_in = expires.value.trim();
    btn.disabled = true;
    try {
      await api('PUT', `/api/v1/locks/${encodeURIComponent(env.key)}`, body);
      forms.delete(env.key);
      await reload();
    } catch (e) {
      err.textContent = e.message; err.hidden = false;
      (e.field === 'expires_in' ? expires : reason).focus();
    } finally { btn.disabled = false; }
  });
  return form;
}

// ---------------------------------------------------------------------------------------
// Handbook: a workflow's handbook (what `shiphat explain` prints) and its grant history

async function viewHandbook(root, show, name) {
  const path = `/api/v1/workflows/${encodeURIComponent(name)}`;
  const [markdown, history] = await Promise.all([api('GET', `${path}/handbook`), api('GET', `${path}/grants`)]);
  setTitle(`${name} handbook`);
  root.append(
    h('p', { class: 'crumbs' }, role.canDeploy ? h('a', { href: `#/deploy/${encodeURIComponent(name)}` }, `Deploy ${name}`) : h('a', { href: '#/runs' }, '← Runs')),
    h('h1', { class: 'break' }, `Handbook: ${name}`),
    h('article', { class: 'card handbook', testid: 'handbook', 'aria-label': `${name} handbook` }, markdownBlocks(markdown)),
    h('section', { class: 'card grants', 'aria-labelledby': 'grants-title', testid: 'grant-history' },
      h('h2', { id: 'grants-title' }, 'Grant history'),
      history.changes.length
        ? h('ol', { class: 'grant-changes' }, history.changes.map((c) => h('li', { testid: 'grant-change' },
          h('p', null, timeEl(c.at_ms, c.at), ' ',
            h('span', { class: ['tag', c.widened ? 'tag-warn' : 'tag-good'] }, c.widened ? 'widened' : 'narrowed'),
            ' ', h('code', { class: 'break' }, c.file)),
          h('ul', null, c.steps.map((line) => h('li', null, inline(line)))))))
        : h('p', { class: 'muted' }, 'No reload has changed what its steps may reach since the daemon began to keep its audit log.')));
  show();
}

// Markdown, as handbook.rs and why() write it, into DOM nodes: headings, paragraphs, ordered
// and bulleted lists nested by indentation, block quotes, tables, and inline code and bold.
// Nothing else is recognised, and every piece of text becomes a text node: the handbook holds
// plugins' own descriptions, and no HTML in them can become markup. The page's one h1 is the
// view's, so `#` is an h2 here.
const BLOCK_START = /^(#{1,6} |\||>|- |\d+\. )/;

function markdownBlocks(text) {
  return blocks(text.replace(/\r\n?/g, '\n').split('\n'));
}

function blocks(lines) {
  const out = [];
  let i = 0;
  const blank = (l) => !l.trim();
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (blank(line)) { i++; continue; }
    if ((m = /^(#{1,6}) (.*)$/.exec(line))) {
      out.push(h(`h${Math.min(m[1].length + 1, 6)}`, null, inline(m[2])));
      i++;
    } else if (line.startsWith('|')) {
      const rows = [];
      while (i < lines.length && lines[i].startsWith('|')) rows.push(lines[i++]);
      out.push(table(rows));
    } else if (line.startsWith('>')) {
      const quoted = [];
      while (i < lines.length && lines[i].startsWith('>')) quoted.push(lines[i++].replace(/^> ?/, ''));
      out.push(h('blockquote', null, blocks(quoted)));
    } else if ((m = /^(\d+)\. |^- /.exec(line))) {
      const ordered = m[0] !== '- ';
      const marker = ordered ? /^(\d+)\. (.*)$/ : /^- ()(.*)$/;
      const items = [];
      while (i < lines.length) {
        const item = marker.exec(lines[i]);
        if (!item) break;
        const indent = ' '.repeat(lines[i].length - item[2].length);
        const body = [item[2]];
        i++;
        // The item goes on while lines are indented past its marker; a blank line only when
        // an indented line follows it.
        while (i < lines.length) {
          if (lines[i].startsWith(indent)) { body.push(lines[i++].slice(indent.length)); continue; }
          let j = i;
          while (j < lines.length && blank(lines[j])) j++;
          if (j > i && j < lines.length && lines[j].startsWith(indent)) { for (; i < j; i++) body.push(''); continue; }
          break;
        }
        items.push(body);
        let j = i;
        while (j < lines.length && blank(lines[j])) j++;
        if (j < lines.length && marker.test(lines[j])) i = j;
      }
      out.push(h(ordered ? 'ol' : 'ul', ordered ? { start: m[1] } : null,
        items.map((body) => h('li', null, body.length === 1 ? inline(body[0]) : blocks(body)))));
    } else {
      const para = [];
      while (i < lines.length && !blank(lines[i]) && (para.length === 0 || !BLOCK_START.test(lines[i]))) para.push(lines[i++].trim());
      out.push(h('p', null, inline(para.join(' '))));
    }
  }
  return out;
}

// A Markdown table: the first row is the header, the second the `|---|` line; `\|` is a `|`
// inside a cell.
function table(rows) {
  const cells = (row) => row.trim().replace(/^\|/, '').replace(/(?<!\\)\|$/, '').split(/(?<!\\)\|/).map((c) => c.trim());
  const body = rows.slice(1).filter((r) => !/^\|(\s*:?-+:?\s*\|)+\s*$/.test(r));
  return h('div', { class: 'table-box' }, h('table', { class: 'md-table' },
    h('thead', null, h('tr', null, cells(rows[0]).map((c) => h('th', { scope: 'col' }, inline(c))))),
    h('tbody', null, body.map((r) => h('tr', null, cells(r).map((c) => h('td', null, inline(c))))))));
}

// Inline Markdown: `code`, **bold**, and `\|`, a `|` that a table cell escapes (the one
// escape handbook.rs writes). A backtick or `**` without its closing one is text.
function inline(text) {
  const out = [];
  let plain = '';
  const flush = () => { if (plain) { out.push(plain); plain = ''; } };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '`') {
      const end = text.indexOf('`', i + 1);
      if (end > i) { flush(); out.push(h('code', null, text.slice(i + 1, end))); i = end + 1; continue; }
    } else if (c === '*' && text[i + 1] === '*') {
      const end = closingBold(text, i + 2);
      if (end > i + 2) { flush(); out.push(h('strong', null, inline(text.slice(i + 2, end)))); i = end + 2; continue; }
    } else if (c === '\\' && text[i + 1] === '|') {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    plain += c;
    i++;
  }
  flush();
  return out;
}

// Where the `**` that closes a bold run opening before `from` is, skipping code spans (a
// title such as **Check QA (`qa`)** holds one); -1 when none does.
function closingBold(text, from) {
  for (let i = from; i < text.length; i++) {
    if (text[i] === '`') {
      const end = text.indexOf('`', i + 1);
      if (end > i) { i = end; continue; }
    }
    if (text[i] === '*' && text[i + 1] === '*') return i;
  }
  return -1;
}

// ---------------------------------------------------------------------------------------
// Start-up

async function start() {
  $('[data-testid="signout"]').addEventListener('click', signOut);
  // The skip link must not change the hash: that is the router's.
  $('.skip').addEventListener('click', (e) => { e.preventDefault(); $('#main').focus(); });
  try {
    state.session = await api('GET', '/api/v1/session');
  } catch (e) {
    state.session = null;
    if (e.status !== 401) {
      $('#main').replaceChildren(h('p', { class: 'error', role: 'alert' }, `Cannot reach shiphat: ${e.message}`));
    }
  }
  renderTopbar();
  window.addEventListener('hashchange', route);
  route();
}

start();
