'use strict';
// The keygate dashboard: one script over the Administration API, with the
// session cookie. The server enforces roles; this script only hides what the
// signed-in role cannot do. Everything the API returns reaches the page as
// text (textContent, attribute values, properties), never as markup, so no
// name or message can inject HTML.

const PAGE_SIZE = 25;
const enc = encodeURIComponent;
const $ = (id) => document.getElementById(id);
const main = $('main');

let session = null;
const can = { write: false, admin: false };
let charts = [];
// Learnt from every key shown in a list, so opening a key seldom needs a
// search to find the project its URL lives under.
const keyProjects = new Map();
const projectNames = new Map();

// ---------------------------------------------------------------- building blocks

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (typeof value === 'function') node.addEventListener(name.replace(/^on/, ''), value);
    else if (name === 'class') node.className = value;
    // Properties, not attributes: they hold the live state of a control.
    else if (name === 'value' || name === 'checked' || name === 'selected') node[name] = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  const kids = children.flat(Infinity).filter((c) => c != null && c !== false);
  node.append(...kids.map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

function qs(query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    for (const item of [].concat(value)) if (item != null && item !== '') params.append(name, item);
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

const failure = (message, status) => Object.assign(new Error(message), { status });

function signIn() {
  location.assign(`/ui/sign-in?next=${enc(location.pathname + location.search)}`);
}

async function api(path, { method = 'GET', query, body } = {}) {
  const headers = { accept: 'application/json' };
  if (method !== 'GET') headers['x-csrf-token'] = session ? session.csrf_token : '';
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(path + qs(query), {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    signIn();
    throw new Error('Your session has ended; taking you to sign-in.');
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw failure((data && data.error && data.error.message) || `${method} ${path} failed: HTTP ${response.status}.`, response.status);
  }
  return data;
}

// `view` is the page the error belongs to: a page left while its request
// was in flight must not put its error over the next one.
function showError(error, view) {
  if (view && !view.isConnected) return;
  $('error').textContent = error.message || String(error);
  $('error').hidden = false;
  $('error').scrollIntoView({ block: 'nearest' });
}

function notice(text) {
  $('notice').textContent = text;
}

function clearMessages() {
  $('error').hidden = true;
  $('error').textContent = '';
  notice('');
}

// aria-busy rather than `disabled`: disabling the focused button would throw
// keyboard focus back to the top of the page.
function busy(node, action) {
  return async (event) => {
    if (event) event.preventDefault();
    if (node.getAttribute('aria-busy')) return;
    clearMessages();
    node.setAttribute('aria-busy', 'true');
    try {
      await action();
    } catch (error) {
      showError(error);
    } finally {
      node.removeAttribute('aria-busy');
    }
  };
}

function button(label, action, props) {
  const node = el('button', { type: 'button', ...props }, label);
  node.addEventListener('click', busy(node, action));
  return node;
}

// A destructive action takes a second click in the page, not a browser
// dialog, so it stays reachable by keyboard and by the browser tests.
function confirmButton(label, action, props) {
  let armed = false;
  const node = button(label, async () => {
    if (armed) return action();
    armed = true;
    node.textContent = `Confirm: ${label.toLowerCase()}`;
    node.classList.add('armed');
  }, { ...props, class: 'danger' });
  return node;
}

// A button that opens a form below itself on demand, so pages start short.
function disclosure(label, id, make) {
  const slot = el('div', { class: 'disclosure' });
  const close = () => {
    slot.replaceChildren();
    toggle.setAttribute('aria-expanded', 'false');
  };
  const toggle = button(label, async () => {
    if (toggle.getAttribute('aria-expanded') === 'true') return close();
    slot.replaceChildren(await make(close));
    toggle.setAttribute('aria-expanded', 'true');
    const first = slot.querySelector('input, select');
    if (first) first.focus();
  }, { id, 'aria-expanded': 'false' });
  return [toggle, slot];
}

function heading(view, text) {
  const h1 = el('h1');
  retitle(h1, text);
  view.append(h1);
  return h1;
}

function retitle(h1, text) {
  h1.textContent = text;
  document.title = `${text} · keygate`;
}

const section = (title, ...content) => el('section', {}, el('h2', {}, title), ...content);
const toolbar = (...items) => el('div', { class: 'toolbar' }, ...items);
const badge = (text) => el('span', { class: `badge ${text}` }, text);
const card = (label, value) => el('div', { class: 'card' }, el('span', {}, label), el('strong', {}, value));

function table(columns, rows, empty = 'Nothing to show.') {
  const cols = columns.filter(Boolean);
  if (!rows.length) return el('p', { class: 'empty' }, empty);
  return el('div', { class: 'table-wrap' }, el('table', {},
    el('thead', {}, el('tr', {}, cols.map(([label]) => el('th', { scope: 'col' }, label)))),
    el('tbody', {}, rows.map((row) => el('tr', {}, cols.map(([, cell]) => el('td', {}, cell(row))))))));
}

function details(pairs) {
  return el('dl', { class: 'details' }, pairs.filter(Boolean).map(([term, value]) => [
    el('dt', {}, term),
    el('dd', {}, value == null || value === '' ? '—' : value),
  ]));
}

// A list paged by the server (`after`, `has_more`). The cursors already
// passed are kept, so "Previous" needs no `before` support from the API.
// `name` keeps the buttons' ids apart when a page has two lists.
function paged(fetchPage, render, name = 'page') {
  const box = el('div', { class: 'paged' });
  const cursors = [];
  let after = null;
  async function load() {
    const page = await fetchPage(after);
    box.replaceChildren(render(page.data), el('div', { class: 'pager' },
      cursors.length > 0 && button('Previous', () => {
        after = cursors.pop();
        return load();
      }, { id: `${name}-prev` }),
      page.has_more && button('Next', () => {
        cursors.push(after);
        after = page.last_id;
        return load();
      }, { id: `${name}-next` })));
  }
  return {
    box,
    load,
    reset() {
      after = null;
      cursors.length = 0;
      return load();
    },
  };
}

// ---------------------------------------------------------------- forms

const INPUT_TYPES = { number: 'number', money: 'number', date: 'date', email: 'email', search: 'search', checkbox: 'checkbox' };

function shown(f) {
  if (f.type === 'list') return f.value ? f.value.join(', ') : '';
  if (f.type === 'date') return f.value == null ? '' : localTime(Number(f.value)).slice(0, 10);
  return f.value == null ? '' : String(f.value);
}

function field(formId, f) {
  const id = f.id || `${formId}-${f.name}`;
  const input = f.type === 'select'
    ? el('select', { id, name: f.name }, f.options.map((option) => {
      const [value, label = value] = [].concat(option);
      return el('option', { value, selected: String(f.value ?? '') === value }, label);
    }))
    : el('input', {
      id,
      name: f.name,
      type: INPUT_TYPES[f.type] || 'text',
      value: f.type === 'checkbox' ? null : shown(f),
      checked: f.type === 'checkbox' && Boolean(f.value),
      required: f.required,
      placeholder: f.placeholder,
      min: f.min ?? (f.type === 'money' ? 0 : null),
      max: f.max,
      step: f.type === 'money' ? 'any' : null,
      list: f.suggestions && `${id}-options`,
      autocomplete: 'off',
    });
  return {
    input,
    node: el('div', { class: `field ${f.type || 'text'}` },
      el('label', { for: id }, f.label),
      input,
      f.suggestions && el('datalist', { id: `${id}-options` }, f.suggestions.map((s) => el('option', { value: s }))),
      f.hint && el('small', {}, f.hint)),
  };
}

// Empty means "not given" for every type, so a cleared optional field
// becomes null, which the API reads as "no limit" or "any".
function read(f, input) {
  if (f.type === 'checkbox') return input.checked;
  const raw = input.value.trim();
  if (raw === '') return null;
  if (f.type === 'number' || f.type === 'money') return Number(raw);
  if (f.type === 'list') return raw.split(/[\s,]+/).filter(Boolean);
  if (f.type === 'date') return fromDateInput(raw);
  return raw;
}

// `fields` may hold falsy entries, so a field can depend on the role inline.
// Inputs get `<form id>-<name>` ids unless a field names its own; the submit
// button is `<form id>-submit` unless `submit` is `{label, id, class}`.
function form(id, fields, submit, onSubmit) {
  const made = fields.filter(Boolean).map((f) => ({ f, ...field(id, f) }));
  const { label, ...props } = typeof submit === 'string' ? { label: submit } : submit;
  const node = el('form', { id, class: 'form' }, made.map((m) => m.node),
    el('div', { class: 'actions' }, el('button', { type: 'submit', id: `${id}-submit`, class: 'primary', ...props }, label)));
  const values = () => Object.fromEntries(made.map((m) => [m.f.name, read(m.f, m.input)]));
  node.addEventListener('submit', busy(node, () => onSubmit(values())));
  return node;
}

// Filters live in the address, so a reload or a shared link shows the same list.
function filterForm(id, fields, filters, list) {
  const node = bare(form(id, fields, 'Apply', async (values) => {
    Object.assign(filters, values);
    history.replaceState(null, '', location.pathname + qs(filters));
    await list.reset();
  }));
  node.addEventListener('change', (event) => {
    if (event.target.tagName === 'SELECT') node.requestSubmit();
  });
  return node;
}

// A form without the card around it, for filters and one-field actions.
function bare(node) {
  node.classList.add('bare');
  return node;
}

function setQuery(changes) {
  const params = new URLSearchParams(location.search);
  for (const [name, value] of Object.entries(changes)) {
    if (value == null || value === '') params.delete(name);
    else params.set(name, value);
  }
  go(location.pathname + qs(Object.fromEntries(params)), true);
}

// ---------------------------------------------------------------- formatting

const pad = (n) => String(n).padStart(2, '0');

function localTime(t) {
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

const when = (t) => (t == null ? null : el('time', { datetime: new Date(t * 1000).toISOString() }, localTime(t)));
const fromDateInput = (day) => Math.floor(new Date(`${day}T00:00`).getTime() / 1000);
const usd = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 4 });
const money = (v) => (v == null ? null : usd.format(v));
const count = (v) => (v == null ? null : Number(v).toLocaleString('en-US'));
const percent = (v) => (v == null ? null : `${Number(v).toFixed(1)} %`);
const joined = (items) => (items && items.length ? items.join(', ') : null);
const who = (x) => (x && typeof x === 'object' ? x.name || x.email || x.id : x);

const LIMITS = [
  ['max_requests_per_1_minute', 'requests/min'],
  ['max_tokens_per_1_minute', 'tokens/min'],
  ['max_requests_per_1_day', 'requests/day'],
  ['max_tokens_per_1_day', 'tokens/day'],
  ['max_concurrent_requests', 'concurrent'],
];

function limitsText(limits) {
  const set = LIMITS.filter(([name]) => limits && limits[name] != null);
  return set.length ? set.map(([name, label]) => `${count(limits[name])} ${label}`).join(', ') : 'none';
}

const limitFields = (limits) => LIMITS.map(([name, label]) =>
  ({ name, label: `Max ${label}`, type: 'number', min: 1, value: limits && limits[name] }));
// Every limit is sent, null included: the API reads null as "remove this limit".
const limitValues = (values) => Object.fromEntries(LIMITS.map(([name]) => [name, values[name]]));

function budgetText(target) {
  if (target.monthly_budget_usd == null) return 'none';
  return `${money(target.monthly_budget_usd)} a month, alert at ${target.budget_alert_percent ?? 80} %`;
}

// Denial labels (`Denial::kind` on the server) in plain words.
const REASONS = {
  missing_credential: 'No API key sent',
  malformed_authorization: 'Malformed Authorization header',
  malformed_key: 'Malformed key',
  unknown_key: 'Unknown key',
  wrong_secret: 'Wrong secret for a known key',
  revoked: 'Key revoked',
  suspended: 'Key suspended',
  expired: 'Key expired',
  rotated_out: 'Old secret used after its rotation grace',
  admin_key_on_data_plane: 'Admin key used for model calls',
  project_key_on_admin: 'Project key used on the Admin API',
  project_archived: 'Project archived',
  organization_mismatch: 'Wrong organization header',
  project_mismatch: 'Wrong project header',
  ip_not_allowed: 'Client address not allowed',
  missing_scope: 'Key lacks the permission',
  model_not_allowed: 'Model not allowed for the key',
  budget_exceeded: 'Monthly budget spent',
  limiter_unavailable: 'Rate limiter unavailable',
  rate_limited: 'Rate limit reached',
  failed_auth_throttled: 'Too many failed attempts from the address',
  unknown_deployment: 'Unknown deployment',
};
const reasonText = (reason) => REASONS[reason] || reason;

// ---------------------------------------------------------------- shared pieces

const keyLink = (id, name) => el('a', { href: `/ui/keys/${enc(id)}` }, name || id);
const projectLink = (id) => (id ? el('a', { href: `/ui/projects/${enc(id)}` }, projectNames.get(id) || id) : null);

function rememberProjects(page) {
  for (const p of page.data) projectNames.set(p.id, p.name);
  return page;
}

function rememberKeys(page) {
  for (const k of page.data) if (k.project_id) keyProjects.set(k.id, k.project_id);
  return page;
}

// The projects a form may offer: a member's own, else the first 100 active
// ones (enough for a select; the lists themselves page).
async function projectChoices() {
  if (session.role === 'member') return rememberProjects({ data: session.projects }).data;
  return rememberProjects(await api('/v1/organization/projects', { query: { limit: 100 } })).data;
}

const projectOptions = (projects) => projects.map((p) => [p.id, p.name]);

function keyStatus(key) {
  const expired = key.state === 'active' && key.expires_at != null && key.expires_at * 1000 <= Date.now();
  return expired ? 'expired' : key.state;
}

function ownerText(owner) {
  if (!owner) return null;
  if (owner.type === 'user') return `user ${owner.user.name} (${owner.user.email})`;
  return `service account ${owner.service_account.name}`;
}

function copyText(text, node) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  // Plain http on another host: the clipboard API is off, the old way still works.
  const range = document.createRange();
  range.selectNodeContents(node);
  getSelection().removeAllRanges();
  getSelection().addRange(range);
  if (!document.execCommand('copy')) throw new Error('Copying failed: select the key and copy it by hand.');
  return Promise.resolve();
}

// The one place a secret is ever put on the page; it is gone with the panel.
function showSecret(slot, secret) {
  const old = $('key-reveal');
  if (old) old.remove();
  const code = el('code', { id: 'key-value' }, secret);
  const copy = button('Copy', async () => {
    await copyText(secret, code);
    copy.textContent = 'Copied';
  }, { id: 'copy-key' });
  const panel = el('section', { id: 'key-reveal', class: 'reveal', 'aria-labelledby': 'key-reveal-title' },
    el('h2', { id: 'key-reveal-title' }, 'Your new secret key'),
    el('p', {}, 'Copy it now and keep it somewhere safe. It will not be shown again: keygate keeps only a hash of it.'),
    el('div', { class: 'secret' }, code, copy),
    button('Done, hide it', () => panel.remove(), { id: 'hide-key' }));
  slot.replaceChildren(panel);
  copy.focus();
}

function roleEditor(current, roles, save, id) {
  const select = el('select', { id, 'aria-label': 'Role' },
    roles.map((role) => el('option', { value: role, selected: role === current }, role)));
  return el('span', { class: 'inline' }, select, button('Save role', async () => {
    await save(select.value);
    notice(`Role changed to ${select.value}.`);
  }));
}

function chart(xs, series) {
  if (!window.uPlot) return el('p', { class: 'empty' }, 'The chart library did not load.');
  const box = el('div', { class: 'chart' });
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const axis = { stroke: color('--muted'), grid: { stroke: color('--border') }, ticks: { stroke: color('--border') } };
  const opts = {
    height: 260,
    scales: { x: { time: true } },
    series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: color(`--c${(i % 7) + 1}`), width: 2 }))],
    axes: [axis, { ...axis, size: 64 }],
  };
  // uPlot needs the box's laid-out width, known once the box is in the page.
  requestAnimationFrame(() => {
    if (!box.isConnected) return;
    charts.push(new window.uPlot({ ...opts, width: box.clientWidth }, [xs, ...series.map((s) => s.values)], box));
  });
  return box;
}

window.addEventListener('resize', () => {
  for (const u of charts) u.setSize({ width: u.root.parentNode.clientWidth, height: 260 });
});

const RANGES = { '24h': 86400, '7d': 7 * 86400, '30d': 30 * 86400 };

// `from` and `to` are unix seconds of local midnights, as date fields read them.
function rangeOf() {
  const params = new URLSearchParams(location.search);
  const now = Math.floor(Date.now() / 1000);
  if (params.get('range') === 'custom' && params.get('from') && params.get('to')) {
    const start = Number(params.get('from'));
    const end = Math.min(Number(params.get('to')) + 86400, now);
    return { key: 'custom', start, end, from: start, to: Number(params.get('to')) };
  }
  const key = RANGES[params.get('range')] ? params.get('range') : '24h';
  return { key, start: now - RANGES[key], end: now };
}

function rangePicker(range) {
  const picker = bare(form('range-form', [
    { name: 'range', id: 'range', label: 'Range', type: 'select', value: range.key, options: [
      ['24h', 'Last 24 hours'], ['7d', 'Last 7 days'], ['30d', 'Last 30 days'], ['custom', 'Dates…']] },
    { name: 'from', id: 'range-from', label: 'From', type: 'date', value: range.from },
    { name: 'to', id: 'range-to', label: 'To', type: 'date', value: range.to },
  ], 'Show', async (v) => {
    if (v.range !== 'custom') return setQuery({ range: v.range, from: null, to: null });
    if (v.from == null || v.to == null) throw new Error('Pick both dates.');
    // Keeps the usage page's bucket requests to a handful.
    if (v.to - v.from > 366 * 86400) throw new Error('Pick a range of at most 366 days.');
    return setQuery(v);
  }));
  picker.classList.add('range');
  picker.classList.toggle('custom', range.key === 'custom');
  picker.addEventListener('change', (event) => {
    if (event.target.id !== 'range') return;
    picker.classList.toggle('custom', event.target.value === 'custom');
    if (event.target.value !== 'custom') picker.requestSubmit();
  });
  return picker;
}

// ---------------------------------------------------------------- overview

async function pageOverview(view) {
  heading(view, 'Overview');
  const range = rangeOf();
  view.append(rangePicker(range));
  const o = await api('/v1/organization/overview', { query: { start_time: range.start, end_time: range.end } });
  for (const k of o.top_keys) keyProjects.set(k.api_key_id, k.project_id);
  // `requests` counts answered requests only; failed and denied ones come on top.
  const failures = o.failed_requests + o.denied_requests;
  const attempts = o.requests + failures;
  view.append(
    el('div', { class: 'cards' },
      card('Requests', count(o.requests)),
      card('Failed', count(o.failed_requests)),
      card('Denied', count(o.denied_requests)),
      card('Error rate', attempts ? percent((failures / attempts) * 100) : '—'),
      card('Active alerts', el('a', { href: '/ui/alerts' }, count(o.active_alerts)))),
    section('Requests over time', chart(o.series.map((s) => s.start_time), [
      { label: 'Requests', values: o.series.map((s) => s.requests) },
      { label: 'Failed', values: o.series.map((s) => s.failed_requests) },
      { label: 'Denied', values: o.series.map((s) => s.denied_requests) },
    ])),
    section('Denials by cause', table([
      ['Cause', (d) => reasonText(d.reason)],
      ['Requests', (d) => count(d.count)],
      ['Share', (d) => el('meter', { min: 0, max: o.denied_requests || 1, value: d.count, title: d.reason })],
    ], o.denials_by_reason, 'No refused requests in this range.')),
    section('Top keys', table([
      ['Key', (k) => keyLink(k.api_key_id, k.name)],
      ['Project', (k) => projectLink(k.project_id)],
      ['Requests', (k) => count(k.requests)],
      ['Input tokens', (k) => count(k.input_tokens)],
      ['Output tokens', (k) => count(k.output_tokens)],
      ['Cost', (k) => money(k.cost_usd)],
    ], o.top_keys, 'No traffic in this range.')),
    section('Budget burn', table([
      ['Budget of', (b) => (b.scope === 'key' ? keyLink(b.id, b.name) : el('a', { href: `/ui/projects/${enc(b.id)}` }, b.name))],
      ['Scope', (b) => b.scope],
      ['Spent this month', (b) => `${money(b.spent_usd)} of ${money(b.monthly_budget_usd)}`],
      ['Burn', (b) => [el('meter', { min: 0, max: 100, low: 60, high: 90, optimum: 0, value: Math.min(b.percent, 100) }), ' ', percent(b.percent)]],
    ], o.budgets, 'No budgets set.')));
}

// ---------------------------------------------------------------- keys

const PERMISSIONS = [['all', 'All'], ['read_only', 'Read only'], ['restricted', 'Restricted (scopes)']];
const STATUSES = ['active', 'suspended', 'revoked', 'expired'];

// What create and edit share: permissions, models, addresses, limits, budget.
function keyFields(key = {}) {
  return [
    { name: 'name', label: 'Name', required: true, value: key.name },
    { name: 'permissions', label: 'Permissions', type: 'select', options: PERMISSIONS, value: key.permissions },
    { name: 'scopes', label: 'Scopes', type: 'list', value: key.permissions === 'restricted' ? key.scopes : null,
      placeholder: 'api.model.request', hint: 'Restricted keys only; comma-separated.' },
    { name: 'models', label: 'Models', type: 'list', value: key.models, placeholder: 'gpt-4o-mini, gpt-4o*', hint: 'Empty: any model.' },
    { name: 'allowed_ips', label: 'Client addresses', type: 'list', value: key.allowed_ips, placeholder: '10.0.0.0/8', hint: 'Empty: anywhere.' },
    ...limitFields(key.rate_limits),
    { name: 'monthly_budget_usd', label: 'Monthly budget (USD)', type: 'money', value: key.monthly_budget_usd, hint: 'Empty: no budget.' },
    { name: 'budget_alert_percent', label: 'Alert at % of budget', type: 'number', min: 1, max: 100, value: key.budget_alert_percent },
  ];
}

function keyBody(v) {
  const body = {
    name: v.name,
    permissions: v.permissions,
    models: v.models,
    allowed_ips: v.allowed_ips || [],
    rate_limits: limitValues(v),
    monthly_budget_usd: v.monthly_budget_usd,
  };
  // The API refuses scopes on `all` and `read_only` keys.
  if (v.permissions === 'restricted') body.scopes = v.scopes || [];
  if (v.monthly_budget_usd != null && v.budget_alert_percent != null) body.budget_alert_percent = v.budget_alert_percent;
  return body;
}

const KEY_COLUMNS = [
  ['Name', (k) => keyLink(k.id, k.name)],
  ['Key', (k) => el('code', {}, k.redacted_value)],
  ['Prefix', (k) => k.prefix],
  ['Project', (k) => projectLink(k.project_id)],
  ['Permissions', (k) => (k.permissions === 'restricted' ? `restricted: ${joined(k.scopes)}` : k.permissions)],
  ['Models', (k) => joined(k.models) || 'any'],
  ['Limits', (k) => [limitsText(k.rate_limits), k.monthly_budget_usd != null && `; ${money(k.monthly_budget_usd)}/month`]],
  ['Last used', (k) => (k.last_used_at ? [when(k.last_used_at), k.last_used_ip && ` from ${k.last_used_ip}`] : 'never')],
  ['Status', (k) => badge(keyStatus(k))],
];

async function pageKeys(view) {
  heading(view, 'Keys');
  const projects = await projectChoices();
  const params = new URLSearchParams(location.search);
  const filters = Object.fromEntries(['q', 'prefix', 'project_id', 'status'].map((name) => [name, params.get(name)]));
  const keys = paged(
    async (after) => rememberKeys(await api('/v1/organization/api_keys', { query: { ...filters, after, limit: PAGE_SIZE } })),
    (rows) => table(KEY_COLUMNS, rows, 'No keys match.'),
  );
  const revealSlot = el('div');
  const [newKey, createSlot] = can.write ? disclosure('New key', 'new-key', (close) => form('create-key-form', [
    { name: 'project_id', label: 'Project', type: 'select', options: projectOptions(projects), value: filters.project_id },
    ...keyFields(),
    { name: 'prefix', label: 'Prefix', placeholder: 'sk-prod-', hint: 'Empty: the default prefix.' },
    { name: 'expires_at', label: 'Expires on', type: 'date', hint: 'Empty: never.' },
  ], 'Create key', async (v) => {
    if (!v.project_id) throw new Error('Pick a project first.');
    const body = { ...keyBody(v), prefix: v.prefix, expires_at: v.expires_at };
    const created = await api(`/v1/organization/projects/${enc(v.project_id)}/api_keys`, { method: 'POST', body });
    keyProjects.set(created.id, v.project_id);
    close();
    showSecret(revealSlot, created.value);
    await keys.reset();
  })) : [];
  view.append(toolbar(newKey), createSlot, revealSlot, filterForm('key-filters', [
    { name: 'q', id: 'key-search', label: 'Search', type: 'search', value: filters.q, placeholder: 'Name or key id' },
    { name: 'prefix', id: 'key-prefix', label: 'Prefix', value: filters.prefix, placeholder: 'sk-prod-' },
    { name: 'project_id', id: 'key-project', label: 'Project', type: 'select', value: filters.project_id,
      options: [['', 'All projects'], ...projectOptions(projects)] },
    { name: 'status', id: 'key-status', label: 'Status', type: 'select', value: filters.status, options: [['', 'Any status'], ...STATUSES] },
  ], filters, keys), keys.box);
  await keys.load();
}

// A key's URL holds only its id; the API wants its project too.
async function keyProject(id) {
  if (keyProjects.has(id)) return keyProjects.get(id);
  // Without a status the list may leave revoked keys out; look there second.
  for (const status of [null, 'revoked']) {
    const page = await api('/v1/organization/api_keys', { query: { q: id, status, limit: 100 } });
    const key = page.data.find((k) => k.id === id);
    if (key) return key.project_id;
  }
  throw failure(`Key ${id} not found.`, 404);
}

async function pageKey(view, id) {
  const h1 = heading(view, 'Key');
  const body = el('div');
  view.append(body);
  const projectId = await keyProject(id);
  const path = `/v1/organization/projects/${enc(projectId)}/api_keys/${enc(id)}`;
  const refetch = () => api(path, { query: { include_revoked: true } });

  function actions(key) {
    const grace = el('input', { id: 'rotate-grace', type: 'number', min: 0, max: 31536000, value: '86400' });
    const post = (action) => async () => draw(await api(`${path}/${action}`, { method: 'POST' }));
    return section('Actions',
      toolbar(
        el('label', { for: 'rotate-grace' }, 'Old secret keeps working for (seconds)'), grace,
        button('Rotate', async () => {
          const rotated = await api(`${path}/rotate`, { method: 'POST', body: { grace_period_seconds: Number(grace.value || 0) } });
          draw(rotated, rotated.value);
        }, { id: 'rotate-key' })),
      toolbar(key.state === 'suspended'
        ? button('Resume', post('resume'), { id: 'resume-key' })
        : button('Suspend', post('suspend'), { id: 'suspend-key' })),
      // The reason is required before the button does anything: revoking cannot be undone.
      bare(form('revoke-key-form', [
        { name: 'reason', id: 'revoke-reason', label: 'Reason for revoking', required: true, placeholder: 'Leaked in a public repository' },
      ], { label: 'Revoke', id: 'revoke-key', class: 'danger' }, async (v) => {
        await api(path, { method: 'DELETE', query: { reason: v.reason } });
        draw(await refetch());
        notice('Key revoked. Requests with it are refused from now on.');
      })));
  }

  function draw(key, secret) {
    retitle(h1, key.name);
    const live = key.state !== 'revoked';
    const slot = el('div');
    body.replaceChildren(slot,
      details([
        ['Id', el('code', {}, key.id)],
        ['Key', el('code', {}, key.redacted_value)],
        key.legacy && ['Format', el('span', { id: 'legacy-key' },
          'Legacy key (imported, no checksum): a mistyped copy cannot be caught offline. Rotate it to issue a checksummed key.')],
        ['Status', badge(keyStatus(key))],
        ['Project', projectLink(projectId)],
        ['Owner', ownerText(key.owner)],
        ['Prefix', key.prefix],
        ['Permissions', key.permissions],
        key.permissions === 'restricted' && ['Scopes', joined(key.scopes)],
        ['Models', joined(key.models) || 'any'],
        ['Client addresses', joined(key.allowed_ips) || 'anywhere'],
        ['Rate limits', limitsText(key.rate_limits)],
        ['Monthly budget', budgetText(key)],
        ['Created', when(key.created_at)],
        ['Expires', key.expires_at ? when(key.expires_at) : 'never'],
        ['Last used', key.last_used_at ? when(key.last_used_at) : 'never'],
        ['Last used from', key.last_used_ip && [key.last_used_ip, key.last_used_user_agent && ` (${key.last_used_user_agent})`]],
        key.rotated_at && ['Rotated', when(key.rotated_at)],
        key.previous_secret_expires_at && ['Previous secret works until', when(key.previous_secret_expires_at)],
        key.revoked_at && ['Revoked', when(key.revoked_at)],
        key.revoke_reason && ['Revoke reason', key.revoke_reason],
      ]),
      can.write && live && actions(key),
      can.write && live && section('Edit', form('edit-key-form', keyFields(key), 'Save changes', async (v) => {
        draw(await api(path, { method: 'POST', body: keyBody(v) }));
        notice('Saved. The change applies from the next request.');
      })));
    if (secret) showSecret(slot, secret);
  }

  draw(await refetch());
}

// ---------------------------------------------------------------- projects

async function pageProjects(view) {
  heading(view, 'Projects');
  const archived = new URLSearchParams(location.search).get('archived') === '1';
  const projects = paged(
    async (after) => rememberProjects(await api('/v1/organization/projects', {
      query: { after, limit: PAGE_SIZE, include_archived: archived ? 'true' : null },
    })),
    (rows) => table([
      ['Name', (p) => projectLink(p.id)],
      ['Id', (p) => el('code', {}, p.id)],
      ['Status', (p) => badge(p.status)],
      ['Models', (p) => joined(p.models) || 'any'],
      ['Budget', (p) => budgetText(p)],
      ['Created', (p) => when(p.created_at)],
      can.admin && ['', (p) => p.status === 'active' && confirmButton('Archive', async () => {
        await api(`/v1/organization/projects/${enc(p.id)}/archive`, { method: 'POST' });
        notice(`Project ${p.name} archived; its keys are refused from now on.`);
        await projects.load();
      }, { id: `archive-${p.id}` })],
    ], rows, 'No projects.'),
  );
  const [add, addSlot] = can.admin ? disclosure('New project', 'new-project', (close) => form('create-project-form', [
    { name: 'name', label: 'Name', required: true },
    { name: 'models', label: 'Models', type: 'list', hint: 'Empty: any model.' },
    { name: 'allowed_ips', label: 'Client addresses', type: 'list', hint: 'Empty: anywhere.' },
    { name: 'monthly_budget_usd', label: 'Monthly budget (USD)', type: 'money' },
  ], 'Create project', async (v) => {
    const created = await api('/v1/organization/projects', { method: 'POST', body: { ...v, allowed_ips: v.allowed_ips || [] } });
    close();
    notice(`Project ${created.name} created.`);
    await projects.reset();
  })) : [];
  view.append(
    toolbar(add, el('a', { href: archived ? '/ui/projects' : '/ui/projects?archived=1' }, archived ? 'Hide archived' : 'Show archived')),
    addSlot, projects.box);
  await projects.load();
}

async function pageProject(view, id) {
  const h1 = heading(view, 'Project');
  const path = `/v1/organization/projects/${enc(id)}`;
  const body = el('div');
  view.append(body);

  async function draw(project) {
    projectNames.set(project.id, project.name);
    retitle(h1, project.name);
    const editable = can.admin && project.status === 'active';
    body.replaceChildren(
      details([
        ['Id', el('code', {}, project.id)],
        ['Status', badge(project.status)],
        ['Created', when(project.created_at)],
        project.archived_at && ['Archived', when(project.archived_at)],
        ['Models', joined(project.models) || 'any'],
        ['Client addresses', joined(project.allowed_ips) || 'anywhere'],
        ['Rotate keys older than', project.max_key_age_seconds ? `${project.max_key_age_seconds / 86400} days` : 'no rotation policy'],
      ]),
      toolbar(
        el('a', { href: `/ui/keys?project_id=${enc(project.id)}` }, 'Keys of this project'),
        el('a', { href: `/ui/service-accounts?project=${enc(project.id)}` }, 'Service accounts')),
      editable && section('Edit', form('edit-project-form', [
        { name: 'name', label: 'Name', required: true, value: project.name },
        { name: 'models', label: 'Models', type: 'list', value: project.models, hint: 'Empty: any model.' },
        { name: 'allowed_ips', label: 'Client addresses', type: 'list', value: project.allowed_ips, hint: 'Empty: anywhere.' },
        { name: 'max_key_age_days', label: 'Rotate keys older than (days)', type: 'number', min: 1,
          value: project.max_key_age_seconds && project.max_key_age_seconds / 86400 },
      ], 'Save changes', async (v) => {
        const changes = {
          name: v.name,
          models: v.models,
          allowed_ips: v.allowed_ips || [],
          max_key_age_seconds: v.max_key_age_days && Math.round(v.max_key_age_days * 86400),
        };
        await draw(await api(path, { method: 'POST', body: changes }));
        notice('Saved.');
      })),
      await limitsEditor(project),
      await membersSection(project, editable));
  }

  await draw(await api(path));
}

// A project's budget and per-model rate limits; the project page and the
// limits page both edit them here.
async function limitsEditor(project, onChange) {
  const box = el('section', { class: 'panel' });
  const base = `/v1/organization/projects/${enc(project.id)}`;
  const editorSlot = el('div');
  const saved = async (text) => {
    notice(text);
    await draw();
    if (onChange) await onChange();
  };
  const edit = (entry) => {
    editorSlot.replaceChildren(form('rate-limit-form', [
      { name: 'model', label: 'Model pattern', required: true, value: entry ? entry.model : '*', hint: '* covers all models together.' },
      ...limitFields(entry),
    ], 'Save limits', async (v) => {
      await api(`${base}/rate_limits/${enc(`rl-${v.model}`)}`, { method: 'POST', body: limitValues(v) });
      await saved(`Rate limits for ${v.model} saved.`);
    }));
    $('rate-limit-form-model').focus();
  };

  async function draw() {
    const limits = (await api(`${base}/rate_limits`)).data;
    editorSlot.replaceChildren();
    box.replaceChildren(
      el('h2', {}, `Budget and rate limits: ${project.name}`),
      can.admin
        ? form('budget-form', [
          { name: 'monthly_budget_usd', label: 'Monthly budget (USD)', type: 'money', value: project.monthly_budget_usd, hint: 'Empty: no budget.' },
          { name: 'budget_alert_percent', label: 'Alert at % of budget', type: 'number', min: 1, max: 100, value: project.budget_alert_percent },
        ], 'Save budget', async (v) => {
          const change = { monthly_budget_usd: v.monthly_budget_usd };
          if (v.monthly_budget_usd != null && v.budget_alert_percent != null) change.budget_alert_percent = v.budget_alert_percent;
          project = await api(base, { method: 'POST', body: change });
          await saved('Budget saved.');
        })
        : details([['Monthly budget', budgetText(project)]]),
      table([
        ['Model pattern', (r) => el('code', {}, r.model)],
        ['Limits', (r) => limitsText(r)],
        can.admin && ['', (r) => button('Edit', () => edit(r), { id: `edit-${r.id}` })],
      ], limits, 'No rate limits: only the keys\' own limits apply.'),
      can.admin && toolbar(button('Add a rate limit', () => edit(null), { id: 'add-rate-limit' })),
      editorSlot);
  }

  await draw();
  return box;
}

const PROJECT_ROLES = ['member', 'owner'];

// Adds a user to a project: the project page's own, or one picked on the users page.
async function addMemberForm(id, project, done) {
  const [people, projects] = await Promise.all([
    api('/v1/organization/users', { query: { limit: 100 } }),
    project ? [project] : projectChoices(),
  ]);
  return form(id, [
    { name: 'user_id', label: 'User', type: 'select', options: people.data.map((u) => [u.id, `${u.name} (${u.email})`]) },
    !project && { name: 'project_id', label: 'Project', type: 'select', options: projectOptions(projects) },
    { name: 'role', label: 'Role in the project', type: 'select', options: PROJECT_ROLES },
  ], 'Add to project', async (v) => {
    const projectId = project ? project.id : v.project_id;
    await api(`/v1/organization/projects/${enc(projectId)}/users`, { method: 'POST', body: { user_id: v.user_id, role: v.role } });
    await done(projectId);
  });
}

async function membersSection(project, editable) {
  const base = `/v1/organization/projects/${enc(project.id)}/users`;
  const members = paged((after) => api(base, { query: { after, limit: PAGE_SIZE } }), (rows) => table([
    ['Name', (u) => u.name],
    ['Email', (u) => u.email],
    ['Role', (u) => (editable
      ? roleEditor(u.role, PROJECT_ROLES, (role) => api(`${base}/${enc(u.id)}`, { method: 'POST', body: { role } }), `member-role-${u.id}`)
      : u.role)],
    ['Added', (u) => when(u.added_at)],
    editable && ['', (u) => confirmButton('Remove', async () => {
      await api(`${base}/${enc(u.id)}`, { method: 'DELETE' });
      await members.load();
    }, { id: `remove-member-${u.id}` })],
  ], rows, 'No members.'), 'members');
  const [add, addSlot] = editable ? disclosure('Add a member', 'add-member', (close) => addMemberForm('add-member-form', project, async () => {
    close();
    await members.reset();
  })) : [];
  await members.load();
  return section('Members', toolbar(add), addSlot, members.box);
}

// ---------------------------------------------------------------- service accounts

async function pageServiceAccounts(view) {
  heading(view, 'Service accounts');
  const projects = await projectChoices();
  const chosen = new URLSearchParams(location.search).get('project') || (projects[0] && projects[0].id);
  if (!chosen) {
    view.append(el('p', { class: 'empty' }, 'No projects yet.'));
    return;
  }
  const picker = bare(form('sa-project-form', [
    { name: 'project', id: 'sa-project', label: 'Project', type: 'select', value: chosen, options: projectOptions(projects) },
  ], 'Show', (v) => setQuery(v)));
  picker.addEventListener('change', () => picker.requestSubmit());
  const base = `/v1/organization/projects/${enc(chosen)}/service_accounts`;
  const revealSlot = el('div');
  const accounts = paged((after) => api(base, { query: { after, limit: PAGE_SIZE } }), (rows) => table([
    ['Name', (sa) => sa.name],
    ['Id', (sa) => el('code', {}, sa.id)],
    ['Role', (sa) => sa.role],
    ['Created', (sa) => when(sa.created_at)],
    can.write && ['', (sa) => confirmButton('Delete', async () => {
      await api(`${base}/${enc(sa.id)}`, { method: 'DELETE' });
      notice(`Service account ${sa.name} deleted; its keys are revoked.`);
      await accounts.load();
    }, { id: `delete-${sa.id}` })],
  ], rows, 'No service accounts in this project.'));
  const [add, addSlot] = can.write ? disclosure('New service account', 'new-service-account', (close) => form('create-sa-form', [
    { name: 'name', label: 'Name', required: true },
    { name: 'prefix', label: 'Key prefix', placeholder: 'sk-svc-', hint: 'Empty: the default prefix.' },
  ], 'Create', async (v) => {
    const created = await api(base, { method: 'POST', body: v });
    close();
    if (created.api_key) {
      keyProjects.set(created.api_key.id, chosen);
      showSecret(revealSlot, created.api_key.value);
    }
    await accounts.reset();
  })) : [];
  view.append(picker, toolbar(add), addSlot, revealSlot, accounts.box);
  await accounts.load();
}

// ---------------------------------------------------------------- admin keys and users

async function pageAdminKeys(view) {
  heading(view, 'Admin keys');
  const keys = paged((after) => api('/v1/organization/admin_api_keys', { query: { after, limit: PAGE_SIZE } }), (rows) => table([
    ['Name', (k) => k.name],
    ['Key', (k) => el('code', {}, k.redacted_value)],
    ['Owner', (k) => k.owner && `${k.owner.type.replace('_', ' ')} ${k.owner.name}`],
    ['Created', (k) => when(k.created_at)],
    ['Expires', (k) => (k.expires_at ? when(k.expires_at) : 'never')],
    ['Last used', (k) => (k.last_used_at ? when(k.last_used_at) : 'never')],
    can.admin && ['', (k) => confirmButton('Revoke', async () => {
      await api(`/v1/organization/admin_api_keys/${enc(k.id)}`, { method: 'DELETE' });
      notice(`Admin key ${k.name} revoked.`);
      await keys.load();
    }, { id: `revoke-${k.id}` })],
  ], rows, 'No admin keys.'));
  const revealSlot = el('div');
  const [add, addSlot] = can.admin ? disclosure('New admin key', 'new-admin-key', (close) => form('create-admin-key-form', [
    { name: 'name', label: 'Name', required: true },
    { name: 'expires_in_days', label: 'Expires after (days)', type: 'number', min: 1, max: 365, hint: 'Empty: never.' },
  ], 'Create admin key', async (v) => {
    const body = { name: v.name, expires_in_seconds: v.expires_in_days && Math.round(v.expires_in_days * 86400) };
    const created = await api('/v1/organization/admin_api_keys', { method: 'POST', body });
    close();
    showSecret(revealSlot, created.value);
    await keys.reset();
  })) : [];
  view.append(toolbar(add), addSlot, revealSlot, keys.box);
  await keys.load();
}

const ORG_ROLES = ['owner', 'reader', 'member'];

async function pageUsers(view) {
  heading(view, 'Users');
  const userPath = (u) => `/v1/organization/users/${enc(u.id)}`;
  const users = paged((after) => api('/v1/organization/users', { query: { after, limit: PAGE_SIZE } }), (rows) => table([
    ['Name', (u) => u.name],
    ['Email', (u) => u.email],
    ['Role', (u) => (can.admin
      ? roleEditor(u.role, ORG_ROLES, (role) => api(userPath(u), { method: 'POST', body: { role } }), `role-${u.id}`)
      : u.role)],
    ['Added', (u) => when(u.added_at)],
    can.admin && ['', (u) => confirmButton('Remove', async () => {
      await api(userPath(u), { method: 'DELETE' });
      notice(`User ${u.name} removed; the keys they owned are revoked.`);
      await users.load();
    }, { id: `remove-${u.id}` })],
  ], rows, 'No users yet.'));
  const [add, addSlot] = can.admin ? disclosure('New user', 'new-user', (close) => form('create-user-form', [
    { name: 'name', label: 'Name', required: true },
    { name: 'email', label: 'Email', type: 'email', required: true },
    { name: 'role', label: 'Role', type: 'select', options: ORG_ROLES, value: 'reader' },
  ], 'Add user', async (v) => {
    await api('/v1/organization/users', { method: 'POST', body: v });
    close();
    await users.reset();
  })) : [];
  const [join, joinSlot] = can.admin ? disclosure('Add a user to a project', 'add-to-project', (close) =>
    addMemberForm('add-to-project-form', null, (projectId) => {
      close();
      notice(`Added to ${projectNames.get(projectId) || projectId}.`);
    })) : [];
  view.append(toolbar(add, join), addSlot, joinSlot, users.box);
  await users.load();
}

// ---------------------------------------------------------------- usage

// Group name in the page's address -> the API's `group_by` value.
const GROUPS = { key: ['api_key_id', 'Key'], prefix: ['prefix', 'Prefix'], project: ['project_id', 'Project'], model: ['model', 'Model'] };
const METRICS = { requests: 'Requests', tokens: 'Tokens', cost: 'Cost (USD)' };

// Every bucket of the range, following `next_page` (the range is bounded, so is this).
async function allBuckets(path, query) {
  const buckets = [];
  for (let page = null; ;) {
    const answer = await api(path, { query: { ...query, page } });
    buckets.push(...answer.data);
    if (!answer.has_more) return buckets;
    page = answer.next_page;
  }
}

function csv(rows) {
  const cell = (v) => {
    let text = v == null ? '' : String(v);
    // A leading = + - @ (or a tab or carriage return before one) would run as a formula in a spreadsheet.
    if (typeof v === 'string' && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
    return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  };
  return `${rows.map((row) => row.map(cell).join(',')).join('\r\n')}\r\n`;
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
  const link = el('a', { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

const upsert = (map, key, make) => (map.has(key) ? map.get(key) : map.set(key, make()).get(key));

async function pageUsage(view) {
  heading(view, 'Usage');
  const params = new URLSearchParams(location.search);
  const group = GROUPS[params.get('group')] ? params.get('group') : 'key';
  const metric = METRICS[params.get('metric')] ? params.get('metric') : 'requests';
  const [dimension, groupLabel] = GROUPS[group];
  const range = rangeOf();
  const choices = bare(form('usage-view', [
    { name: 'group', id: 'group-by', label: 'Group by', type: 'select', value: group, options: Object.entries(GROUPS).map(([k, [, label]]) => [k, label]) },
    { name: 'metric', id: 'metric', label: 'Chart', type: 'select', value: metric, options: Object.entries(METRICS) },
  ], 'Show', (v) => setQuery(v)));
  choices.addEventListener('change', () => choices.requestSubmit());
  const exportButton = el('button', { type: 'button', id: 'export-csv', disabled: true }, 'Export CSV');
  view.append(rangePicker(range), choices, toolbar(exportButton));

  // Costs come in days only; tokens and requests by the hour for short ranges.
  const hourly = range.end - range.start <= 2 * 86400;
  const query = { start_time: range.start, end_time: range.end, group_by: dimension };
  const [usage, costs] = await Promise.all([
    allBuckets('/v1/organization/usage/completions', { ...query, bucket_width: hourly ? '1h' : '1d', limit: hourly ? 48 : 31 }),
    allBuckets('/v1/organization/costs', { ...query, bucket_width: '1d', limit: 180 }),
  ]);
  // Costs name the model `line_item`.
  const groupOf = (r) => r[dimension] ?? r.line_item ?? '(none)';
  const lines = new Map();
  const totals = new Map();
  const line = (b, g) => upsert(lines, `${b.start_time}/${b.end_time}/${g}`, () => ({ start: b.start_time, end: b.end_time, group: g }));
  const total = (g) => upsert(totals, g, () => ({ group: g, requests: 0, input: 0, output: 0, tokens: 0, cost: 0 }));
  for (const b of usage) {
    for (const r of b.results) {
      Object.assign(line(b, groupOf(r)), {
        requests: r.num_model_requests, input: r.input_tokens, cached: r.input_cached_tokens, output: r.output_tokens,
      });
      const t = total(groupOf(r));
      t.requests += r.num_model_requests;
      t.input += r.input_tokens;
      t.output += r.output_tokens;
      t.tokens += r.input_tokens + r.output_tokens;
    }
  }
  for (const b of costs) {
    for (const r of b.results) {
      line(b, groupOf(r)).cost = r.amount.value;
      total(groupOf(r)).cost += r.amount.value;
    }
  }

  const ranked = [...totals.values()].sort((a, b) => b[metric] - a[metric]);
  // The Usage API names keys by id only: look up the names of those shown.
  const keyNames = new Map();
  if (group === 'key') {
    await Promise.all(ranked.slice(0, 20).map(async (t) => {
      const found = await api('/v1/organization/api_keys', { query: { q: t.group, limit: 1 } }).catch(() => null);
      const key = found && found.data.find((k) => k.id === t.group);
      if (key) {
        keyNames.set(t.group, key.name);
        keyProjects.set(key.id, key.project_id);
      }
    }));
  }
  const label = (g) => {
    if (group === 'project') return projectNames.get(g) || g;
    if (group === 'key' && keyNames.has(g)) return `${keyNames.get(g)} (${g})`;
    return g;
  };
  const top = ranked.slice(0, 6).map((t) => t.group);
  const seriesOf = (r) => (top.includes(groupOf(r)) ? groupOf(r) : 'Other');
  const value = { requests: (r) => r.num_model_requests, tokens: (r) => r.input_tokens + r.output_tokens, cost: (r) => r.amount.value }[metric];
  const source = metric === 'cost' ? costs : usage;
  const names = ranked.length > top.length ? [...top, 'Other'] : top;

  exportButton.disabled = false;
  exportButton.addEventListener('click', () => {
    const rows = [...lines.values()].sort((a, b) => a.start - b.start || a.end - b.end || String(a.group).localeCompare(b.group));
    const iso = (t) => new Date(t * 1000).toISOString();
    download(`keygate-usage-by-${group}.csv`, csv([
      ['bucket_start', 'bucket_end', dimension, 'name', 'requests', 'input_tokens', 'cached_input_tokens', 'output_tokens', 'cost_usd'],
      ...rows.map((l) => [iso(l.start), iso(l.end), l.group, group === 'key' ? keyNames.get(l.group) ?? '' : label(l.group), l.requests, l.input, l.cached, l.output, l.cost]),
    ]));
  });

  view.append(
    section(`${METRICS[metric]} by ${groupLabel.toLowerCase()}`, ranked.length
      ? chart(source.map((b) => b.start_time), names.map((g) => ({
        label: label(g),
        values: source.map((b) => b.results.filter((r) => seriesOf(r) === g).reduce((sum, r) => sum + value(r), 0)),
      })))
      : el('p', { class: 'empty' }, 'No usage in this range.')),
    section('Totals', table([
      [groupLabel, (t) => (group === 'key' && t.group !== '(none)' ? keyLink(t.group, keyNames.get(t.group)) : group === 'project' ? projectLink(t.group) : t.group)],
      ['Requests', (t) => count(t.requests)],
      ['Input tokens', (t) => count(t.input)],
      ['Output tokens', (t) => count(t.output)],
      ['Cost', (t) => money(t.cost)],
    ], ranked, 'No usage in this range.')));
}

// ---------------------------------------------------------------- alerts, audit, explain

async function pageAlerts(view) {
  heading(view, 'Alerts');
  const alerts = paged(async (after) => {
    const page = await api('/v1/organization/alerts', { query: { after, limit: PAGE_SIZE } });
    for (const a of page.data) if (a.project_id) keyProjects.set(a.api_key_id, a.project_id);
    return page;
  }, (rows) => table([
    ['Raised', (a) => when(a.created_at)],
    ['Severity', (a) => badge(a.severity)],
    ['Kind', (a) => a.kind],
    ['Key', (a) => keyLink(a.api_key_id, a.api_key_name)],
    ['Project', (a) => projectLink(a.project_id)],
    ['Message', (a) => a.message],
    ['Webhook', (a) => a.delivery && [a.delivery.status, a.delivery.last_error && ` (${a.delivery.last_error})`]],
    ['Acknowledged', (a) => (a.acknowledged_at ? [when(a.acknowledged_at), a.acknowledged_by && ` by ${who(a.acknowledged_by)}`] : 'no')],
    can.write && ['', (a) => el('span', { class: 'inline' },
      !a.acknowledged_at && button('Acknowledge', async () => {
        await api(`/v1/organization/alerts/${enc(a.id)}/acknowledge`, { method: 'POST' });
        await alerts.load();
      }, { id: `ack-${a.id}` }),
      a.project_id && button('Suspend key', async () => {
        await api(`/v1/organization/projects/${enc(a.project_id)}/api_keys/${enc(a.api_key_id)}/suspend`, { method: 'POST' });
        notice(`Key ${a.api_key_name || a.api_key_id} suspended.`);
      }, { id: `suspend-${a.id}`, class: 'danger' }))],
  ], rows, 'No alerts.'));
  view.append(alerts.box);
  await alerts.load();
}

const AUDIT_TYPES = [
  'api_key.created', 'api_key.updated', 'api_key.deleted', 'project.created', 'project.updated', 'project.archived',
  'rate_limit.updated', 'service_account.created', 'service_account.deleted', 'user.added', 'user.updated', 'user.deleted',
];

function actorText(actor) {
  if (!actor) return 'keygate';
  const key = actor.api_key || {};
  const person = (key.user && key.user.email) || (actor.session && actor.session.user && actor.session.user.email);
  return person || key.name || key.id || actor.type;
}

async function pageAudit(view) {
  heading(view, 'Audit log');
  const params = new URLSearchParams(location.search);
  const filters = Object.fromEntries(['type', 'project', 'from', 'to'].map((name) => [name, params.get(name)]));
  const entries = paged(async (after) => {
    const page = await api('/v1/organization/audit_logs', { query: {
      after,
      limit: PAGE_SIZE,
      'event_types[]': filters.type,
      'project_ids[]': filters.project,
      'effective_at[gte]': filters.from,
      'effective_at[lte]': filters.to && Number(filters.to) + 86399,
    } });
    for (const e of page.data.filter((entry) => entry.project)) {
      projectNames.set(e.project.id, e.project.name);
      if (e.type.startsWith('api_key.') && e[e.type]) keyProjects.set(e[e.type].id, e.project.id);
    }
    return page;
  }, (rows) => table([
    ['Time', (e) => when(e.effective_at)],
    ['Event', (e) => e.type],
    ['By', (e) => actorText(e.actor)],
    ['Project', (e) => e.project && projectLink(e.project.id)],
    ['Object', (e) => {
      const id = e[e.type] && e[e.type].id;
      return id && e.type.startsWith('api_key.') && e.project ? keyLink(id) : id;
    }],
    ['Details', (e) => el('code', { class: 'json' }, JSON.stringify(e[e.type] || {}))],
  ], rows, 'No events match.'));
  view.append(filterForm('audit-filters', [
    { name: 'type', label: 'Event type', value: filters.type, suggestions: AUDIT_TYPES, placeholder: 'api_key.created' },
    { name: 'project', label: 'Project id', value: filters.project, placeholder: 'proj_…' },
    { name: 'from', label: 'From', type: 'date', value: filters.from },
    { name: 'to', label: 'To', type: 'date', value: filters.to },
  ], filters, entries), entries.box);
  await entries.load();
}

async function pageExplain(view) {
  heading(view, 'Explain a refused request');
  const result = el('div', { id: 'explain-result', 'aria-live': 'polite' });
  const explain = async (id) => {
    result.replaceChildren();
    history.replaceState(null, '', `/ui/explain${qs({ id })}`);
    const r = await api(`/v1/organization/requests/${enc(id)}`);
    if (r.key && r.project_id) keyProjects.set(r.key.id, r.project_id);
    result.replaceChildren(
      el('h2', {}, reasonText(r.reason)),
      el('p', { class: 'explanation' }, r.explanation),
      details([
        ['Request', el('code', {}, r.id)],
        ['Time', when(r.created_at)],
        ['Answer', `HTTP ${r.status}`],
        ['Call', `${r.method} ${r.path}`],
        ['Client address', r.client_ip],
        ['Key', r.key && [keyLink(r.key.id, r.key.name), ` (${r.key.prefix}…)`]],
        ['Project', projectLink(r.project_id)],
        ['Reason label', el('code', {}, r.reason)],
      ]));
  };
  const initial = new URLSearchParams(location.search).get('id');
  view.append(
    el('p', {}, 'Paste the x-request-id of a refused request to read why keygate refused it. Callers only ever see a generic message.'),
    form('explain', [{ name: 'id', id: 'explain-id', label: 'Request id', required: true, value: initial, placeholder: 'req_…' }],
      'Explain', (v) => explain(v.id)),
    result);
  if (initial) await explain(initial);
}

// ---------------------------------------------------------------- limits

async function pageLimits(view) {
  heading(view, 'Limits and budgets');
  const ofKeys = new URLSearchParams(location.search).get('of') === 'keys';
  const tab = (href, text, current) => el('a', { href, 'aria-current': current && 'page' }, text);
  view.append(el('nav', { class: 'tabs', 'aria-label': 'Limits of' },
    tab('/ui/limits', 'Projects', !ofKeys), tab('/ui/limits?of=keys', 'Keys', ofKeys)));
  if (ofKeys) {
    const keys = paged(
      async (after) => rememberKeys(await api('/v1/organization/api_keys', { query: { after, limit: PAGE_SIZE, status: 'active' } })),
      (rows) => table([
        ['Key', (k) => keyLink(k.id, k.name)],
        ['Project', (k) => projectLink(k.project_id)],
        ['Rate limits', (k) => limitsText(k.rate_limits)],
        ['Monthly budget', (k) => budgetText(k)],
        can.write && ['', (k) => el('a', { href: `/ui/keys/${enc(k.id)}#edit-key-form` }, 'Edit')],
      ], rows, 'No active keys.'),
    );
    view.append(keys.box);
    await keys.load();
    return;
  }
  const editor = el('div');
  const projects = paged(async (after) => {
    const page = rememberProjects(await api('/v1/organization/projects', { query: { after, limit: PAGE_SIZE } }));
    const limits = await Promise.all(page.data.map((p) => api(`/v1/organization/projects/${enc(p.id)}/rate_limits`)));
    return { ...page, data: page.data.map((project, i) => ({ project, limits: limits[i].data })) };
  }, (rows) => table([
    ['Project', (r) => projectLink(r.project.id)],
    ['Monthly budget', (r) => budgetText(r.project)],
    ['Rate limits', (r) => (r.limits.length ? r.limits.map((l) => el('div', {}, `${l.model}: ${limitsText(l)}`)) : 'none')],
    can.admin && ['', (r) => button('Edit', async () => {
      editor.replaceChildren(await limitsEditor(r.project, () => projects.load()));
      editor.scrollIntoView({ block: 'nearest' });
    }, { id: `edit-limits-${r.project.id}` })],
  ], rows, 'No projects.'));
  view.append(projects.box, editor);
  await projects.load();
}

// ---------------------------------------------------------------- routing

function pageNotFound(view) {
  heading(view, 'Page not found');
  view.append(el('p', {}, 'There is no such page. ', el('a', { href: '/ui' }, 'Go to the overview.')));
}

const ROUTES = [
  ['', pageOverview],
  ['keys', pageKeys],
  ['keys/:id', pageKey],
  ['projects', pageProjects],
  ['projects/:id', pageProject],
  ['service-accounts', pageServiceAccounts],
  ['admin-keys', pageAdminKeys],
  ['users', pageUsers],
  ['usage', pageUsage],
  ['alerts', pageAlerts],
  ['audit', pageAudit],
  ['explain', pageExplain],
  ['limits', pageLimits],
];

function route(path) {
  const parts = path.replace(/^\/ui\/?/, '').split('/').filter(Boolean);
  for (const [pattern, page] of ROUTES) {
    const want = pattern.split('/').filter(Boolean);
    const args = [];
    const fits = want.length === parts.length
      && want.every((w, i) => (w.startsWith(':') ? args.push(decodeURIComponent(parts[i])) : w === parts[i]));
    if (fits) return [page, args];
  }
  return [pageNotFound, []];
}

function markCurrent() {
  const area = location.pathname.split('/')[2] || '';
  for (const link of document.querySelectorAll('#nav a')) {
    const current = (link.getAttribute('href').split('/')[2] || '') === area;
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function render(moveFocus) {
  for (const u of charts) u.destroy();
  charts = [];
  clearMessages();
  markCurrent();
  const view = el('div', { class: 'view' });
  main.querySelector(':scope > .view').replaceWith(view);
  if (moveFocus) {
    main.focus();
    window.scrollTo(0, 0);
  }
  try {
    const [page, args] = route(location.pathname);
    await page(view, ...args);
    const target = location.hash && $(location.hash.slice(1));
    if (target) target.scrollIntoView();
  } catch (error) {
    if (error.status === 404) view.append(el('p', { class: 'empty' }, 'Not found, or not yours to see.'));
    showError(error, view);
  }
}

function go(url, replace) {
  history[replace ? 'replaceState' : 'pushState'](null, '', url);
  document.body.classList.remove('nav-open');
  $('menu').setAttribute('aria-expanded', 'false');
  render(!replace);
}

document.addEventListener('click', (event) => {
  const link = event.target.closest('a[href^="/ui"]');
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(link.href);
  // Pages the server renders itself.
  if (/^\/ui\/(sign-in|sign-out|sso|assets)/.test(url.pathname)) return;
  event.preventDefault();
  go(url.pathname + url.search + url.hash);
});

window.addEventListener('popstate', () => render(true));

async function signOut() {
  try {
    await api('/ui/sign-out', { method: 'POST' });
  } finally {
    location.assign('/ui/sign-in');
  }
}

function setUpNav() {
  if (session.role === 'member') {
    for (const item of document.querySelectorAll('#nav [data-org]')) item.remove();
  }
  const person = session.user ? session.user.name || session.user.email : session.admin_key && `admin key ${session.admin_key.name}`;
  $('who').replaceChildren(el('span', {}, person || 'signed in'), ' ', badge(session.role));
  $('sign-out').addEventListener('click', busy($('sign-out'), signOut));
  $('menu').addEventListener('click', () => {
    const open = document.body.classList.toggle('nav-open');
    $('menu').setAttribute('aria-expanded', String(open));
  });
}

async function start() {
  try {
    session = await api('/ui/api/session');
  } catch (error) {
    showError(error);
    return;
  }
  can.write = session.role !== 'reader';
  can.admin = session.role === 'owner';
  // Names for the project ids that lists and usage carry. Only cosmetic: if
  // this fails, pages show ids.
  await projectChoices().catch(() => null);
  setUpNav();
  render(false);
}

start();
