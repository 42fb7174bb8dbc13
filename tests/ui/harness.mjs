// The harness for keygate's dashboard tests: a mock OpenAI upstream, a real
// OpenID provider and a `keygate serve` on free loopback ports, and Debian's
// chromium driven by playwright-core.
//
// Like tests/sdk/conftest.py, nothing here builds keygate: the binary comes
// from $KEYGATE_BIN (default: target/debug/keygate in this repository).
// Every process started here is stopped by its `stop()`, and, should a test
// file die without getting there, killed when the Node process exits.

import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { startOidcProvider } from './oidc.mjs';
import { fetchWithTimeout, freePort, poll } from './net.mjs';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const KEYGATE_BIN = process.env.KEYGATE_BIN || path.join(REPO_ROOT, 'target', 'debug', 'keygate');
export const CHROMIUM = process.env.KEYGATE_UI_CHROMIUM || '/usr/bin/chromium';
/** The Python with the openai SDK (scripts/test and scripts/ui-test make .venv). */
export const PYTHON = process.env.KEYGATE_UI_PYTHON || path.join(REPO_ROOT, '.venv', 'bin', 'python');
export const SCREENSHOT_DIR = process.env.KEYGATE_UI_SCREENSHOTS || path.join(REPO_ROOT, 'target', 'ui-screenshots');
/** keygate's log of each stack, kept after the run (target/ is outside git). */
export const LOG_DIR = path.join(REPO_ROOT, 'target', 'ui-test');

// The same bootstrap secrets as the Python SDK tests.
export const ADMIN_KEY = 'sk-admin-test-0123456789abcdefghijklmnopqrstuvwxyzABCDEF';
export const UPSTREAM_SECRET = 'sk-upstream-secret-for-tests';

const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;

// --- child processes ----------------------------------------------------------

const children = new Set();
process.on('exit', () => {
  for (const child of children) signalChild(child, 'SIGKILL');
});

/** Signals a child, or its whole process group when it was started as a group leader. */
function signalChild(child, signal) {
  try {
    if (child.group) process.kill(-child.pid, signal);
    else child.kill(signal);
  } catch { /* already gone */ }
}
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => process.exit(130));
}

// `group`: start the child as the leader of a process group of its own, and
// signal the whole group (an interpreter behind a wrapper script, such as a
// pyenv shim, is then stopped along with the wrapper).
function spawnTracked(command, args, { group = false, ...options }) {
  const child = spawn(command, args, { ...options, detached: group });
  child.group = group;
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

async function stopChild(child, { signal = 'SIGTERM', timeout = STOP_TIMEOUT_MS } = {}) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return child?.exitCode ?? null;
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  signalChild(child, signal);
  let timer;
  const timedOut = new Promise((resolve) => { timer = setTimeout(() => resolve('timeout'), timeout); });
  const first = await Promise.race([exited, timedOut]);
  clearTimeout(timer);
  if (first === 'timeout') {
    signalChild(child, 'SIGKILL');
    await exited;
    throw new Error(`process ${child.pid} (${child.spawnfile}) ignored ${signal} for ${timeout} ms; killed`);
  }
  return child.exitCode;
}

/** Environment without the caller's KEYGATE_* and OPENAI_* settings (they must not leak into a test). */
function cleanEnv(extra = {}) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KEYGATE_') && !k.startsWith('OPENAI_')));
  return { ...env, NO_COLOR: '1', ...extra };
}

export function makeWorkdir(label = 'keygate-ui') {
  return fs.mkdtempSync(path.join(os.tmpdir(), `${label}-`));
}

// --- the mock upstream (tests/sdk/mock_upstream.py, run as a process) ---------

/** Starts tests/sdk/mock_upstream.py on a free port; returns {url (with /v1), stop}. */
export async function startMockUpstream({ timeout = 15_000 } = {}) {
  // Standard library only: any python3 runs it.
  const python = fs.existsSync(PYTHON) ? PYTHON : 'python3';
  const child = spawnTracked(python, ['-u', path.join(REPO_ROOT, 'tests', 'sdk', 'mock_upstream.py'), '0'], {
    cwd: REPO_ROOT, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'], group: true,
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`mock upstream did not start within ${timeout} ms: ${err}`)), timeout);
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/mock upstream at (http:\/\/\S+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`mock upstream exited with ${code}: ${err}`)); });
  }).catch(async (e) => { await stopChild(child, { signal: 'SIGKILL' }); throw e; });
  child.stdout.resume();
  return {
    url,
    async stop() {
      const code = await stopChild(child);
      signalChild(child, 'SIGKILL'); // anything left in its group
      return code;
    },
  };
}

// --- keygate ----------------------------------------------------------------

export class Keygate {
  constructor({ workdir, port, upstreamUrl, configToml, adminKey = ADMIN_KEY }) {
    this.workdir = workdir;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.upstreamUrl = upstreamUrl;
    this.adminKey = adminKey;
    this.configPath = path.join(workdir, 'keygate.toml');
    this.stderrPath = path.join(workdir, 'stderr.log');
    fs.writeFileSync(this.configPath, configToml ?? '');
    this.proc = null;
  }

  async start() {
    try {
      fs.accessSync(KEYGATE_BIN, fs.constants.X_OK);
    } catch {
      throw new Error(`keygate binary not found or not executable: ${KEYGATE_BIN} (build it with cargo build, or set KEYGATE_BIN)`);
    }
    const out = fs.openSync(path.join(this.workdir, 'stdout.log'), 'w');
    const err = fs.openSync(this.stderrPath, 'w');
    try {
      this.proc = spawnTracked(KEYGATE_BIN, [
        'serve',
        '--listen', `127.0.0.1:${this.port}`,
        '--metrics-listen', 'off',
        '--database', `sqlite://${path.join(this.workdir, 'keygate.db')}`,
        '--upstream', this.upstreamUrl,
      ], {
        cwd: this.workdir,
        env: cleanEnv({
          KEYGATE_LOG: process.env.KEYGATE_TEST_LOG || 'info',
          KEYGATE_ADMIN_KEY: this.adminKey,
          KEYGATE_UPSTREAM_API_KEY: UPSTREAM_SECRET,
          KEYGATE_CONFIG: this.configPath,
        }),
        stdio: ['ignore', out, err],
      });
    } finally {
      fs.closeSync(out);
      fs.closeSync(err);
    }
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let last = 'no answer';
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        throw new Error(`keygate exited with ${this.proc.exitCode ?? this.proc.signalCode} before it was ready; stderr:\n${this.stderr()}`);
      }
      try {
        const r = await fetchWithTimeout(`${this.url}/readyz`, {}, 1_000);
        if (r.status === 200) return this;
        last = `/readyz answered ${r.status}`;
      } catch (e) {
        last = e.message;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    await this.stop().catch(() => {});
    throw new Error(`keygate not ready within ${READY_TIMEOUT_MS} ms (${last}); stderr:\n${this.stderr()}`);
  }

  async stop() {
    const proc = this.proc;
    this.proc = null;
    return stopChild(proc);
  }

  stderr() {
    try { return fs.readFileSync(this.stderrPath, 'utf8'); } catch { return ''; }
  }

  /** An Admin API call with a bearer admin key; returns {status, headers, body (parsed JSON or text)}. */
  async admin(method, apiPath, body, { key = this.adminKey, timeout = 10_000 } = {}) {
    const headers = { authorization: `Bearer ${key}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetchWithTimeout(`${this.url}${apiPath}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) }, timeout);
    const text = await r.text();
    let parsed = text;
    try { parsed = JSON.parse(text); } catch { /* not JSON */ }
    return { status: r.status, headers: r.headers, body: parsed };
  }

  /** An Admin API call that must answer 200; returns the JSON body. */
  async adminOk(method, apiPath, body) {
    const r = await this.admin(method, apiPath, body);
    if (r.status !== 200) throw new Error(`${method} ${apiPath} answered ${r.status}: ${JSON.stringify(r.body)}`);
    return r.body;
  }

  createProject(name, fields = {}) {
    return this.adminOk('POST', '/v1/organization/projects', { name, ...fields });
  }

  /** Issues a project key; the answer carries `value` (the secret). */
  createKey(projectId, name, fields = {}) {
    return this.adminOk('POST', `/v1/organization/projects/${projectId}/api_keys`, { name, ...fields });
  }

  getKey(projectId, keyId) {
    return this.adminOk('GET', `/v1/organization/projects/${projectId}/api_keys/${keyId}?include_revoked=true`);
  }

  /** role: owner | reader | member */
  createUser(name, email, role) {
    return this.adminOk('POST', '/v1/organization/users', { name, email, role });
  }

  addProjectUser(projectId, userId, role = 'member') {
    return this.adminOk('POST', `/v1/organization/projects/${projectId}/users`, { user_id: userId, role });
  }

  /** Polls the explain endpoint until the refusal is recorded (denials are written about a second later). */
  explain(requestId, timeout = 10_000) {
    return poll(async () => {
      const r = await this.admin('GET', `/v1/organization/requests/${encodeURIComponent(requestId)}`);
      return r.status === 200 ? r.body : false;
    }, { timeout, message: `explanation of ${requestId}` });
  }
}

/** The TOML keygate is started with: the dashboard's OpenID Connect settings. */
export function dashboardConfig({ issuer, clientId, clientSecret, redirectUrl }) {
  // JSON strings are valid TOML basic strings for these ASCII values.
  const s = JSON.stringify;
  return [
    '[dashboard.oidc]',
    `issuer = ${s(issuer)}`,
    `client_id = ${s(clientId)}`,
    `client_secret = ${s(clientSecret)}`,
    `redirect_url = ${s(redirectUrl)}`,
    '',
  ].join('\n');
}

/**
 * Starts a mock upstream, an OpenID provider (with `accounts`: login name ->
 * {email, name, email_verified?}) whose client redirects to keygate's
 * /ui/sso/callback, and keygate configured for both. `oidcHost` names the
 * provider's host in its issuer URL ("127.0.0.1", or "localhost" to put it on
 * another site than keygate). Returns {gw, op, mock, stop}.
 */
export async function startStack({ accounts = {}, oidcHost = '127.0.0.1', label = 'dashboard' } = {}) {
  const started = [];
  const stopAll = async () => {
    const errors = [];
    for (const s of started.reverse()) {
      try { await s.stop(); } catch (e) { errors.push(e); }
    }
    if (errors.length) throw errors[0];
  };
  try {
    const mock = await startMockUpstream();
    started.push(mock);
    const port = await freePort();
    const redirectUrl = `http://127.0.0.1:${port}/ui/sso/callback`;
    const op = await startOidcProvider({ redirectUris: [redirectUrl], accounts, host: oidcHost });
    started.push(op);
    const workdir = makeWorkdir(`keygate-ui-${label}`);
    const gw = new Keygate({
      workdir, port, upstreamUrl: mock.url,
      configToml: dashboardConfig({ issuer: op.issuer, clientId: op.clientId, clientSecret: op.clientSecret, redirectUrl }),
    });
    started.push({
      stop: async () => {
        try {
          await gw.stop();
        } finally {
          try {
            fs.mkdirSync(LOG_DIR, { recursive: true });
            fs.copyFileSync(gw.stderrPath, path.join(LOG_DIR, `${label}-keygate.log`));
          } catch { /* no log to keep */ }
          if (!process.env.KEYGATE_UI_KEEP) fs.rmSync(workdir, { recursive: true, force: true });
        }
      },
    });
    await gw.start();
    return { gw, op, mock, stop: stopAll };
  } catch (e) {
    await stopAll().catch(() => {});
    throw e;
  }
}

// --- the browser --------------------------------------------------------------

export async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: apt-get install -y chromium (scripts/ui-test does), or set KEYGATE_UI_CHROMIUM`);
  }
  return chromium.launch({ executablePath: CHROMIUM, headless: true, timeout: 30_000 });
}

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 375, height: 812 };

/**
 * A browser context that can reach only `allowOrigins` (keygate and the
 * provider: no CDN, no network), and that records, for the pages on
 * `watchOrigin`, every uncaught error, Content-Security-Policy violation and
 * attempt to reach another origin in `context.problems`.
 */
export async function newContext(browser, { allowOrigins = [], watchOrigin, viewport = DESKTOP, colorScheme = 'light', storageState, isMobile = false } = {}) {
  const context = await browser.newContext({
    viewport,
    colorScheme,
    storageState,
    isMobile,
    hasTouch: isMobile,
    deviceScaleFactor: 1,
    acceptDownloads: true,
    serviceWorkers: 'block',
  });
  context.setDefaultTimeout(10_000);
  context.setDefaultNavigationTimeout(15_000);
  const allowed = new Set(allowOrigins);
  const problems = [];
  context.problems = problems;
  const watched = (url) => watchOrigin && url?.startsWith(`${watchOrigin}/`);
  await context.route('**/*', (route) => {
    const req = route.request();
    const url = req.url();
    let origin = null;
    try { origin = new URL(url).origin; } catch { /* data: and the like */ }
    if (origin === null || origin === 'null' || allowed.has(origin)) return route.continue();
    const frameUrl = (() => { try { return req.frame().url(); } catch { return ''; } })();
    if (watched(frameUrl)) problems.push(`request to another origin from ${frameUrl}: ${url}`);
    return route.abort('blockedbyclient');
  });
  context.on('page', (page) => {
    page.on('pageerror', (error) => {
      if (watched(page.url())) problems.push(`uncaught error on ${page.url()}: ${error.message}`);
    });
    page.on('console', (msg) => {
      const text = msg.text();
      if (watched(page.url()) && msg.type() === 'error' && /Content Security Policy|Refused to (execute|apply|load|evaluate|connect)/i.test(text)) {
        problems.push(`CSP violation on ${page.url()}: ${text}`);
      }
    });
  });
  return context;
}

// --- signing in ------------------------------------------------------------------

/** On keygate's sign-in page (or on its way there), signs in with a key; waits to leave the sign-in page. */
export async function signInWithKey(page, gw, key, { next } = {}) {
  if (!page.url().startsWith(`${gw.url}/ui/sign-in`)) {
    await page.goto(`${gw.url}/ui/sign-in${next ? `?next=${encodeURIComponent(next)}` : ''}`);
  }
  await page.locator('#key').fill(key);
  await Promise.all([
    page.waitForURL((u) => !u.pathname.startsWith('/ui/sign-in'), { timeout: 15_000 }),
    page.locator('#sign-in-submit').click(),
  ]);
}

/** The session as the SPA sees it (GET /ui/api/session with the page's cookie): {status, body}. */
export function sessionOf(page) {
  return pageFetch(page, 'GET', '/ui/api/session');
}

/**
 * fetch() run inside the page (same origin, the session cookie). `csrf`:
 * true sends the session's csrf_token as x-csrf-token, false sends none, a
 * string sends that string. Returns {status, headers, body}.
 */
export async function pageFetch(page, method, apiPath, { body, csrf = false, headers = {} } = {}) {
  return page.evaluate(async ({ method, apiPath, body, csrf, headers }) => {
    const h = { ...headers };
    if (csrf === true) {
      const s = await fetch('/ui/api/session', { credentials: 'same-origin' });
      h['x-csrf-token'] = (await s.json()).csrf_token;
    } else if (typeof csrf === 'string') {
      h['x-csrf-token'] = csrf;
    }
    if (body !== undefined) h['content-type'] = 'application/json';
    const r = await fetch(apiPath, {
      method, credentials: 'same-origin', headers: h, redirect: 'manual',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    let parsed = text;
    try { parsed = JSON.parse(text); } catch { /* not JSON */ }
    return { status: r.status, headers: Object.fromEntries(r.headers.entries()), body: parsed };
  }, { method, apiPath, body, csrf, headers });
}

// --- the openai Python SDK -----------------------------------------------------------

const SDK_SCRIPT = `
import json, os, openai
client = openai.OpenAI(max_retries=0, timeout=10)
raw = client.chat.completions.with_raw_response.create(
    model=os.environ["KG_MODEL"], messages=[{"role": "user", "content": "hello from the dashboard test"}])
completion = raw.parse()
print(json.dumps({"request_id": raw.headers.get("x-request-id"), "content": completion.choices[0].message.content,
                  "usage": completion.usage.model_dump() if completion.usage else None}))
`;

/** One chat completion through the official openai Python SDK with `key`; returns {request_id, content, usage}. */
export function chatWithPythonSdk(gw, key, { model = 'gpt-4o', timeout = 30_000 } = {}) {
  if (!fs.existsSync(PYTHON)) {
    throw new Error(`${PYTHON} not found: scripts/ui-test (or scripts/test) makes .venv with the openai SDK; or set KEYGATE_UI_PYTHON`);
  }
  return new Promise((resolve, reject) => {
    const child = execFile(PYTHON, ['-c', SDK_SCRIPT], {
      timeout, killSignal: 'SIGKILL',
      env: cleanEnv({ OPENAI_API_KEY: key, OPENAI_BASE_URL: `${gw.url}/v1`, KG_MODEL: model }),
    }, (error, stdout, stderr) => {
      children.delete(child);
      if (error) return reject(new Error(`openai SDK call failed: ${error.message}\n${stderr}`));
      try { resolve(JSON.parse(stdout.trim().split('\n').pop())); } catch (e) { reject(new Error(`unexpected SDK output: ${stdout}\n${stderr}`)); }
    });
    children.add(child);
  });
}

export function randomName(label) {
  return `${label}-${randomBytes(3).toString('hex')}`;
}
