// keygate's web dashboard (/ui) end to end, in headless Debian chromium driven
// by playwright-core, against a running keygate with a real OpenID provider
// (issue #21's "Done means"; element ids from the dashboard contract).
//
// One keygate, provider and mock upstream serve the whole suite (started in
// `before`, stopped in `after`, whatever happened); the data every test needs
// is seeded through the Admin API first, so each test stands on its own.
// Screenshots of every page go to target/ui-screenshots/.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  ADMIN_KEY, DESKTOP, PHONE, SCREENSHOT_DIR,
  chatWithPythonSdk, launchBrowser, newContext, pageFetch, randomName, sessionOf, signInWithKey, startStack,
} from './harness.mjs';
import { fetchWithTimeout, poll } from './net.mjs';
import { completeProviderLogin } from './oidc.mjs';
import { act, assertNotVisible, reloadUntilText, waitForPlainText, waitForText } from './page.mjs';

// Login names at the OpenID provider -> what it says about them.
const ACCOUNTS = {
  olivia: { email: 'olivia@example.com', name: 'Olivia Owner' },
  rita: { email: 'rita@example.com', name: 'Rita Reader' },
  max: { email: 'max@example.com', name: 'Max Member' },
  // Known to the provider, not to keygate.
  stranger: { email: 'stranger@example.com', name: 'Sam Stranger' },
  // Olivia's address, but the provider has not verified it.
  unverified: { email: 'olivia@example.com', name: 'Not Olivia', email_verified: false },
};

// The Content-Security-Policy the contract puts on every /ui answer.
const CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

// Every page the dashboard has, by screenshot name ("key-detail" is filled in once a key exists).
const PAGES = [
  ['overview', '/ui'],
  ['keys', '/ui/keys'],
  ['key-detail', null],
  ['projects', '/ui/projects'],
  ['service-accounts', '/ui/service-accounts'],
  ['admin-keys', '/ui/admin-keys'],
  ['users', '/ui/users'],
  ['usage', '/ui/usage'],
  ['alerts', '/ui/alerts'],
  ['audit', '/ui/audit'],
  ['explain', '/ui/explain'],
  ['limits', '/ui/limits'],
];

// Write controls a reader must not be offered (contract ids).
const WRITE_CONTROLS = ['#new-key', '#create-key-form', '#rotate-key', '#suspend-key', '#resume-key', '#revoke-key', '#edit-key-form'];

/** The key secret a data-plane call with `key` gets: status of GET /v1/models. */
async function keyStatus(gw, key) {
  const r = await fetchWithTimeout(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
  return r.status;
}

describe('keygate dashboard', { timeout: 15 * 60_000 }, () => {
  let stack;
  let gw;
  let op;
  let browser;
  let ownerState; // storageState of an admin-key session (owner)
  const seed = {};
  const secrets = new Set([ADMIN_KEY]); // never rendered outside the one-time reveal
  const contexts = new Set();

  async function context(opts = {}) {
    const c = await newContext(browser, { allowOrigins: [gw.url, op.issuer], watchOrigin: gw.url, ...opts });
    contexts.add(c);
    return c;
  }

  async function closeContext(c) {
    contexts.delete(c);
    const problems = c.problems;
    await c.close().catch(() => {});
    assert.deepEqual(problems, [], 'no uncaught errors, CSP violations or requests to other origins');
  }

  async function ownerPage(opts = {}) {
    const c = await context({ storageState: ownerState, ...opts });
    return { c, page: await c.newPage() };
  }

  async function open(page, uiPath) {
    const r = await page.goto(`${gw.url}${uiPath}`);
    await page.locator('#main h1').first().waitFor();
    return r;
  }

  /** From the sign-in page through the provider back to keygate, as `login`. */
  async function signInWithSso(page, login, { next, expectSignedIn = true } = {}) {
    await page.goto(`${gw.url}/ui/sign-in${next ? `?next=${encodeURIComponent(next)}` : ''}`);
    await page.locator('#sign-in-sso').click();
    await completeProviderLogin(page, op.issuer, login);
    if (expectSignedIn) {
      // Past the callback (which may answer with a page that moves on by itself).
      await page.waitForURL((u) => u.origin === gw.url && !u.pathname.startsWith('/ui/sso/') && !u.pathname.startsWith('/ui/sign-in'), { timeout: 15_000 });
    }
    await page.waitForLoadState('load');
  }

  async function assertNoSecretsIn(page) {
    const html = await page.content();
    for (const s of secrets) assert.ok(!html.includes(s), `a secret is rendered on ${page.url()}`);
  }

  before(async () => {
    stack = await startStack({ accounts: ACCOUNTS, label: 'dashboard' });
    ({ gw, op } = stack);

    seed.alpha = await gw.createProject('Alpha team');
    seed.beta = await gw.createProject('Beta team');
    seed.alphaKey = await gw.createKey(seed.alpha.id, 'alpha-service');
    seed.betaKey = await gw.createKey(seed.beta.id, 'beta-private-service');
    for (const k of [seed.alphaKey, seed.betaKey]) secrets.add(k.value);
    seed.olivia = await gw.createUser(ACCOUNTS.olivia.name, ACCOUNTS.olivia.email, 'owner');
    seed.rita = await gw.createUser(ACCOUNTS.rita.name, ACCOUNTS.rita.email, 'reader');
    seed.max = await gw.createUser(ACCOUNTS.max.name, ACCOUNTS.max.email, 'member');
    await gw.addProjectUser(seed.alpha.id, seed.max.id, 'member');

    browser = await launchBrowser();
    const c = await context();
    const page = await c.newPage();
    await signInWithKey(page, gw, ADMIN_KEY);
    ownerState = await c.storageState();
    contexts.delete(c);
    await c.close();
  }, { timeout: 120_000 });

  after(async () => {
    for (const c of contexts) await c.close().catch(() => {});
    await browser?.close().catch(() => {});
    await stack?.stop();
  }, { timeout: 60_000 });

  test('signed-out access redirects to sign-in', { timeout: 60_000 }, async () => {
    for (const p of ['/ui', '/ui/keys', `/ui/keys/${seed.alphaKey.id}`, '/ui/usage', '/ui/audit']) {
      const r = await fetchWithTimeout(`${gw.url}${p}`, { redirect: 'manual' });
      assert.equal(r.status, 303, `${p} signed out`);
      const to = new URL(r.headers.get('location'), gw.url);
      assert.equal(to.pathname, '/ui/sign-in', `${p} -> ${to}`);
      assert.equal(to.searchParams.get('next'), p);
    }
    const session = await fetchWithTimeout(`${gw.url}/ui/api/session`, { redirect: 'manual' });
    assert.equal(session.status, 401);
    const admin = await fetchWithTimeout(`${gw.url}/v1/organization/projects`);
    assert.equal(admin.status, 401);

    const c = await context();
    const page = await c.newPage();
    const r = await page.goto(`${gw.url}/ui/keys`);
    assert.equal(new URL(page.url()).pathname, '/ui/sign-in');
    assert.equal(new URL(page.url()).searchParams.get('next'), '/ui/keys');
    assert.equal(r.headers()['content-security-policy'], CSP);
    await page.locator('form#sign-in-key[method="post"][action="/ui/sign-in"]').waitFor();
    assert.equal(await page.locator('#key').getAttribute('type'), 'password');
    assert.equal(await page.locator('input[type="hidden"][name="next"]').inputValue(), '/ui/keys');
    await page.locator('#sign-in-submit').waitFor();
    const sso = new URL(await page.locator('#sign-in-sso').getAttribute('href'), gw.url);
    assert.equal(sso.pathname, '/ui/sso/start');
    assert.equal(sso.searchParams.get('next'), '/ui/keys');
    await closeContext(c);
  });

  test('sign in with an admin key (and a wrong one), then sign out', { timeout: 60_000 }, async () => {
    const c = await context();
    const page = await c.newPage();
    await page.goto(`${gw.url}/ui/sign-in`);
    await page.locator('#key').fill('sk-admin-wrong-0123456789abcdefghijklmnopqrstuvwxyz');
    const [wrong] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${gw.url}/ui/sign-in` && r.request().method() === 'POST'),
      page.locator('#sign-in-submit').click(),
    ]);
    assert.equal(wrong.status(), 401);
    await page.locator('#sign-in-error[role="alert"]').waitFor();
    assert.equal((await c.cookies()).filter((k) => k.name === 'keygate_session').length, 0);

    // Signed out, /ui/keys leads to the sign-in page and back.
    await page.goto(`${gw.url}/ui/keys`);
    assert.equal(new URL(page.url()).pathname, '/ui/sign-in');
    await signInWithKey(page, gw, ADMIN_KEY);
    assert.equal(new URL(page.url()).pathname, '/ui/keys');
    await page.locator('#main h1').first().waitFor();
    await waitForText(page.locator('#main'), 'alpha-service');

    const cookie = (await c.cookies()).find((k) => k.name === 'keygate_session');
    assert.ok(cookie, 'a keygate_session cookie');
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Strict');
    assert.equal(cookie.path, '/');
    assert.equal(cookie.secure, false, 'no Secure over plain http');

    const s = await sessionOf(page);
    assert.equal(s.status, 200);
    assert.equal(s.body.object, 'dashboard.session');
    assert.equal(s.body.role, 'owner');
    assert.equal(s.body.user, null);
    assert.ok(s.body.admin_key?.id?.startsWith('key_'), JSON.stringify(s.body));
    assert.deepEqual(s.body.projects, []);
    assert.ok(s.body.csrf_token?.length >= 16);
    assert.equal(s.body.sso, true);
    assert.ok(s.body.expires_at >= s.body.idle_expires_at && s.body.idle_expires_at > Date.now() / 1000);

    // The nav: every page, who is signed in (here an admin key, as owner), and a sign-out button.
    await waitForText(page.locator('nav'), /owner/i);
    for (const [, p] of PAGES) if (p) assert.equal(await page.locator(`nav a[href="${p}"]`).count() > 0, true, `nav links ${p}`);
    await assertNoSecretsIn(page);

    await Promise.all([
      page.waitForURL((u) => u.pathname === '/ui/sign-in', { timeout: 10_000 }),
      page.locator('#sign-out').click(),
    ]);
    assert.equal((await c.cookies()).filter((k) => k.name === 'keygate_session' && k.value).length, 0, 'cookie cleared');
    // The old cookie is dead on the server too.
    const replay = await context();
    await replay.addCookies([cookie]);
    const again = await replay.newPage();
    await again.goto(`${gw.url}/ui`);
    assert.equal(new URL(again.url()).pathname, '/ui/sign-in');
    await closeContext(replay);
    await closeContext(c);
  });

  test('sign in through OpenID Connect; unknown and unverified emails are refused', { timeout: 90_000 }, async () => {
    const c = await context();
    const page = await c.newPage();
    const eventsBefore = op.events.length;
    await signInWithSso(page, 'olivia', { next: '/ui/usage' });
    assert.equal(new URL(page.url()).pathname, '/ui/usage');
    await page.locator('#main h1').first().waitFor();
    const s = await sessionOf(page);
    assert.equal(s.status, 200);
    assert.equal(s.body.role, 'owner');
    assert.equal(s.body.user?.id, seed.olivia.id);
    assert.equal(s.body.user?.email, ACCOUNTS.olivia.email);
    assert.equal(s.body.admin_key, null);
    // The authorization request keygate made: code flow, PKCE S256, state, nonce, openid + email.
    const auth = op.events.slice(eventsBefore).find((e) => e.name === 'authorization.accepted');
    assert.ok(auth, `keygate's authorization request was accepted: ${JSON.stringify(op.events.slice(eventsBefore))}`);
    assert.equal(auth.detail.response_type, 'code');
    assert.equal(auth.detail.code_challenge_method, 'S256');
    assert.ok(auth.detail.code_challenge && auth.detail.state && auth.detail.nonce, JSON.stringify(auth.detail));
    assert.ok(auth.detail.scope.split(' ').includes('openid') && auth.detail.scope.split(' ').includes('email'), auth.detail.scope);
    assert.ok(op.events.slice(eventsBefore).some((e) => e.name === 'grant.success'), 'keygate redeemed the code');

    // A change made in this session is audited under Olivia.
    const name = randomName('sso-made');
    const made = await pageFetch(page, 'POST', '/v1/organization/projects', { body: { name }, csrf: true });
    assert.equal(made.status, 200, JSON.stringify(made.body));
    const audit = await poll(async () => {
      const r = await gw.adminOk('GET', `/v1/organization/audit_logs?event_types[]=project.created&limit=20`);
      return r.data.find((e) => JSON.stringify(e).includes(made.body.id));
    }, { message: 'the project.created audit event' });
    const actor = JSON.stringify(audit.actor);
    assert.ok(actor.includes(seed.olivia.id) || actor.includes(ACCOUNTS.olivia.email), `audited under Olivia: ${actor}`);
    await closeContext(c);

    for (const [login, status] of [['stranger', 403], ['unverified', null]]) {
      const c2 = await context();
      const p2 = await c2.newPage();
      const callback = p2.waitForResponse((r) => r.url().startsWith(`${gw.url}/ui/sso/callback`), { timeout: 30_000 });
      await signInWithSso(p2, login, { expectSignedIn: false });
      const r = await callback;
      if (status) assert.equal(r.status(), status, `${login}: callback status`);
      else assert.ok(r.status() >= 400, `${login}: callback status ${r.status()}`);
      await p2.locator('#sign-in-error[role="alert"]').waitFor();
      assert.equal((await sessionOf(p2)).status, 401, `${login} has no session`);
      await closeContext(c2);
    }
  });

  test('create a key, see it once, gone after reload; use it with the openai SDK; see it in Usage and Overview', { timeout: 150_000 }, async () => {
    const { c, page } = await ownerPage();
    await c.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: gw.url });
    const name = randomName('ui-created');
    await open(page, '/ui/keys');
    await page.locator('#new-key').click();
    const form = page.locator('#create-key-form');
    await form.waitFor();
    const projectSelect = form.locator('select[name="project_id"], select[name="project"]').first();
    assert.equal(await projectSelect.count(), 1, '#create-key-form has a project select (name="project_id")');
    await projectSelect.selectOption(seed.alpha.id);
    await form.locator('[name="name"]').fill(name);
    await form.locator('button[type="submit"], button:not([type]), input[type="submit"]').first().click();

    const reveal = page.locator('#key-reveal');
    await reveal.waitFor();
    const secret = (await page.locator('#key-value').innerText()).trim();
    assert.match(secret, /^sk-[A-Za-z0-9_-]{20,}$/);
    assert.match(await reveal.innerText(), /not be shown again|won.t be shown again|only (be shown )?once|shown once/i);
    await page.locator('#copy-key').click();
    assert.equal(await poll(async () => (await page.evaluate(() => navigator.clipboard.readText())) === secret && secret, { timeout: 5_000, message: 'the copy button copies the secret' }), secret);

    const listed = await gw.adminOk('GET', `/v1/organization/projects/${seed.alpha.id}/api_keys?limit=100`);
    const key = listed.data.find((k) => k.name === name);
    assert.ok(key, `the key exists in ${seed.alpha.id}`);
    const [head, last4] = key.redacted_value.split('...');
    assert.ok(secret.startsWith(head) && secret.endsWith(last4), `${key.redacted_value} is the redaction of the secret shown`);

    await page.reload();
    await page.locator('#main h1').first().waitFor();
    await waitForText(page.locator('#main'), name);
    await assertNotVisible(page, '#key-reveal');
    assert.ok(!(await page.content()).includes(secret), 'the secret is gone after reload');
    await waitForText(page.locator('#main'), key.redacted_value);
    secrets.add(secret);

    // The openai Python SDK, with the new key.
    const out = await chatWithPythonSdk(gw, secret);
    assert.equal(out.content, 'Hello from the mock upstream!');
    assert.ok(out.request_id, 'x-request-id');
    await poll(async () => {
      const u = await gw.adminOk('GET', `/v1/organization/usage/completions?start_time=${Math.floor(Date.now() / 1000) - 3600}&group_by=api_key_id&api_key_ids=${key.id}`);
      return u.data.flatMap((b) => b.results).some((r) => r.api_key_id === key.id && r.num_model_requests >= 1);
    }, { timeout: 20_000, message: 'the request in the Usage API' });

    // Usage: grouped by key, the key is there; the CSV export carries it too.
    const byKey = async () => {
      const select = page.locator('#group-by, #main select:has(option[value="api_key_id"]), #main select:has(option[value="key"])').first();
      const radio = page.locator('#main input[type="radio"][value="api_key_id"], #main input[type="radio"][value="key"]').first();
      if (await select.count()) {
        const value = (await select.locator('option[value="api_key_id"]').count()) ? 'api_key_id' : 'key';
        await select.selectOption(value);
      } else if (await radio.count()) {
        await radio.check();
      }
    };
    await reloadUntilText(page, `${gw.url}/ui/usage`, new RegExp(`${name}|${key.id}`), { prepare: byKey });
    await page.locator('#range').waitFor();
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 10_000 }), page.locator('#export-csv').click()]);
    const csv = fs.readFileSync(await download.path(), 'utf8');
    assert.ok(csv.split('\n').length >= 2 && /,/.test(csv.split('\n')[0]), `a CSV with a header row: ${csv.slice(0, 200)}`);
    assert.ok(csv.includes(key.id) || csv.includes(name), `the CSV names the key: ${csv.slice(0, 500)}`);

    // Overview: among the top keys.
    await reloadUntilText(page, `${gw.url}/ui`, name);
    await assertNoSecretsIn(page);
    await closeContext(c);
  });

  test('rotate (with grace), suspend, resume and revoke a key from the UI', { timeout: 120_000 }, async () => {
    const key = await gw.createKey(seed.alpha.id, randomName('lifecycle'));
    secrets.add(key.value);
    const { c, page } = await ownerPage();
    await open(page, `/ui/keys/${key.id}`);
    await waitForText(page.locator('#main'), key.name);
    await waitForText(page.locator('#main'), key.redacted_value);
    await page.locator('#edit-key-form').waitFor();
    await assertNoSecretsIn(page);

    // Rotate with an hour of grace: the new secret shows once, both work meanwhile.
    const grace = { selectors: ['#rotate-grace', 'input[name="grace_period_seconds"]', 'input[name="grace"]'], value: 3600 };
    const rotated = await act(page, '#rotate-key', [grace]);
    assert.ok(rotated.filled[0], 'rotating asks for the grace period in seconds (#rotate-grace)');
    await page.locator('#key-reveal').waitFor();
    const fresh = (await page.locator('#key-value').innerText()).trim();
    assert.match(fresh, /^sk-/);
    assert.notEqual(fresh, key.value);
    secrets.add(fresh);
    assert.equal(await keyStatus(gw, fresh), 200, 'the new secret works');
    assert.equal(await keyStatus(gw, key.value), 200, 'the old one still works during the grace period');
    const after = await gw.getKey(seed.alpha.id, key.id);
    assert.ok(after.previous_secret_expires_at - after.rotated_at >= 3500, JSON.stringify(after));
    await page.reload();
    await page.locator('#main h1').first().waitFor();
    assert.ok(!(await page.content()).includes(fresh), 'the rotated secret is gone after reload');

    await act(page, '#suspend-key');
    await poll(async () => (await gw.getKey(seed.alpha.id, key.id)).state === 'suspended', { message: 'suspended' });
    await waitForText(page.locator('#main'), /suspended/i);
    assert.equal(await keyStatus(gw, fresh), 401);
    await act(page, '#resume-key');
    await poll(async () => (await gw.getKey(seed.alpha.id, key.id)).state === 'active', { message: 'resumed' });
    assert.equal(await keyStatus(gw, fresh), 200);

    const reason = 'pasted into a public chat (UI test)';
    const revoked = await act(page, '#revoke-key', [{ selectors: ['#revoke-reason', 'input[name="reason"]', 'textarea[name="reason"]'], value: reason }]);
    assert.ok(revoked.filled[0], 'revoking asks for a reason');
    const gone = await poll(async () => {
      const k = await gw.getKey(seed.alpha.id, key.id);
      return k.state === 'revoked' && k;
    }, { message: 'revoked' });
    assert.equal(gone.revoke_reason, reason);
    await waitForText(page.locator('#main'), /revoked/i);
    assert.equal(await keyStatus(gw, fresh), 401);
    assert.equal(await keyStatus(gw, key.value), 401);
    await closeContext(c);
  });

  test('explain a failed request id', { timeout: 90_000 }, async () => {
    const key = await gw.createKey(seed.alpha.id, randomName('explained'));
    secrets.add(key.value);
    await gw.adminOk('DELETE', `/v1/organization/projects/${seed.alpha.id}/api_keys/${key.id}?reason=${encodeURIComponent('test revocation')}`);

    const { c, page } = await ownerPage();
    await open(page, '/ui/explain');
    const failing = async (bearer) => page.evaluate(async (b) => {
      const r = await fetch('/v1/models', { headers: { authorization: `Bearer ${b}` } });
      return { status: r.status, requestId: r.headers.get('x-request-id') };
    }, bearer);
    const revokedCall = await failing(key.value);
    assert.equal(revokedCall.status, 401);
    assert.ok(revokedCall.requestId);
    const badCall = await failing('sk-this-is-not-a-keygate-key-0123456789');
    assert.equal(badCall.status, 401);
    assert.ok(badCall.requestId);

    const revokedWhy = await gw.explain(revokedCall.requestId);
    assert.equal(revokedWhy.reason, 'revoked');
    const badWhy = await gw.explain(badCall.requestId);

    const result = page.locator('#explain-result');
    for (const [call, why] of [[badCall, badWhy], [revokedCall, revokedWhy]]) {
      await page.locator('#explain-id').fill(call.requestId);
      await page.locator('#explain-submit').click();
      await waitForPlainText(result, why.explanation);
    }
    // The revoked key's explanation links to the key.
    const link = result.locator(`a[href="/ui/keys/${key.id}"]`);
    await link.waitFor();
    await Promise.all([page.waitForURL((u) => u.pathname === `/ui/keys/${key.id}`), link.click()]);
    await waitForText(page.locator('#main'), key.name);

    // An id with nothing recorded: the API's message in an alert.
    await open(page, '/ui/explain');
    await page.locator('#explain-id').fill('req_0123456789abcdef0123456789abcdef');
    await page.locator('#explain-submit').click();
    await waitForText(page.locator('[role="alert"]'), /No refusal is recorded|not (been )?found|invalid/i);
    await closeContext(c);
  });

  test('a project member sees only their project, and cannot reach another project\'s key by URL or API', { timeout: 90_000 }, async () => {
    const c = await context();
    const page = await c.newPage();
    await signInWithSso(page, 'max');
    const s = await sessionOf(page);
    assert.equal(s.status, 200);
    assert.equal(s.body.role, 'member');
    assert.equal(s.body.user?.id, seed.max.id);
    assert.deepEqual(s.body.projects.map((p) => p.id), [seed.alpha.id]);

    await open(page, '/ui/keys');
    await waitForText(page.locator('#main'), 'alpha-service');
    assert.ok(!(await page.locator('#main').innerText()).includes('beta-private-service'), 'no key of Beta team listed');
    for (const p of ['/ui/users', '/ui/admin-keys', '/ui/audit']) {
      await assertNotVisible(page, `nav a[href="${p}"]`);
    }
    await open(page, '/ui/projects');
    await waitForText(page.locator('#main'), 'Alpha team');
    assert.ok(!(await page.locator('#main').innerText()).includes('Beta team'), 'Beta team not listed');

    // By URL: the other project's key is not found.
    await open(page, `/ui/keys/${seed.betaKey.id}`);
    await waitForText(page.locator('#main'), /not found/i);
    assert.ok(!(await page.locator('#main').innerText()).includes('beta-private-service'));

    // By Admin API call with the session cookie: 404, reads and writes alike.
    const bp = `/v1/organization/projects/${seed.beta.id}`;
    for (const [method, p, csrf] of [
      ['GET', `${bp}/api_keys/${seed.betaKey.id}`, false],
      ['GET', bp, false],
      ['GET', `${bp}/api_keys`, false],
      ['POST', `${bp}/api_keys/${seed.betaKey.id}/suspend`, true],
      ['DELETE', `${bp}/api_keys/${seed.betaKey.id}`, true],
    ]) {
      const r = await pageFetch(page, method, p, { csrf });
      assert.equal(r.status, 404, `${method} ${p}: ${JSON.stringify(r.body)}`);
      assert.ok(r.body.error?.message, 'an OpenAI error envelope');
    }
    assert.equal((await gw.getKey(seed.beta.id, seed.betaKey.id)).state, 'active');
    const all = await pageFetch(page, 'GET', '/v1/organization/api_keys?limit=100');
    assert.equal(all.status, 200);
    assert.ok(all.body.data.some((k) => k.id === seed.alphaKey.id));
    assert.ok(!all.body.data.some((k) => k.project_id === seed.beta.id), 'no Beta key in the org-wide list');
    const projects = await pageFetch(page, 'GET', '/v1/organization/projects?limit=100');
    assert.deepEqual(projects.body.data.map((p) => p.id), [seed.alpha.id]);
    const org = await pageFetch(page, 'GET', '/v1/organization/users');
    assert.ok(org.status === 403 || org.status === 404, `org-wide users: ${org.status}`);

    // Their own project's keys they manage.
    const own = await pageFetch(page, 'POST', `/v1/organization/projects/${seed.alpha.id}/api_keys`, { body: { name: randomName('member-made') }, csrf: true });
    assert.equal(own.status, 200, JSON.stringify(own.body));
    secrets.add(own.body.value);
    await assertNoSecretsIn(page);
    await closeContext(c);
  });

  test('a reader sees everything and cannot change anything', { timeout: 90_000 }, async () => {
    const c = await context();
    const page = await c.newPage();
    await signInWithSso(page, 'rita');
    const s = await sessionOf(page);
    assert.equal(s.body.role, 'reader');

    await open(page, '/ui/keys');
    await waitForText(page.locator('#main'), 'alpha-service');
    await waitForText(page.locator('#main'), 'beta-private-service');
    for (const sel of WRITE_CONTROLS) await assertNotVisible(page, sel);
    await open(page, `/ui/keys/${seed.alphaKey.id}`);
    await waitForText(page.locator('#main'), 'alpha-service');
    for (const sel of WRITE_CONTROLS) await assertNotVisible(page, sel);
    await open(page, '/ui/alerts');
    await assertNotVisible(page, '#main [id^="ack-"]');
    await assertNotVisible(page, '#main [id^="suspend-"]');

    const kp = `/v1/organization/projects/${seed.alpha.id}/api_keys`;
    for (const [method, p, body] of [
      ['POST', kp, { name: 'reader-made' }],
      ['POST', `${kp}/${seed.alphaKey.id}`, { name: 'renamed-by-reader' }],
      ['POST', `${kp}/${seed.alphaKey.id}/rotate`, {}],
      ['POST', `${kp}/${seed.alphaKey.id}/suspend`, undefined],
      ['DELETE', `${kp}/${seed.alphaKey.id}`, undefined],
      ['POST', '/v1/organization/projects', { name: 'reader-project' }],
      ['POST', `/v1/organization/projects/${seed.alpha.id}/archive`, undefined],
      ['POST', '/v1/organization/users', { name: 'Eve', email: 'eve@example.com', role: 'owner' }],
      ['POST', `/v1/organization/users/${seed.rita.id}`, { role: 'owner' }],
      ['POST', '/v1/organization/admin_api_keys', { name: 'reader-admin-key' }],
      ['POST', `/v1/organization/projects/${seed.alpha.id}/users`, { user_id: seed.rita.id, role: 'owner' }],
    ]) {
      const r = await pageFetch(page, method, p, { body, csrf: true });
      assert.equal(r.status, 403, `${method} ${p}: ${JSON.stringify(r.body)}`);
      assert.ok(r.body.error?.message, 'an OpenAI error envelope');
    }
    const k = await gw.getKey(seed.alpha.id, seed.alphaKey.id);
    assert.equal(k.state, 'active');
    assert.equal(k.name, 'alpha-service');
    assert.equal((await gw.adminOk('GET', `/v1/organization/users/${seed.rita.id}`)).role, 'reader');
    await closeContext(c);
  });

  test('a state-changing request without its CSRF token is refused', { timeout: 60_000 }, async () => {
    const { c, page } = await ownerPage();
    await open(page, '/ui');
    const name = randomName('csrf-less');
    for (const csrf of [false, 'not-the-token']) {
      const r = await pageFetch(page, 'POST', '/v1/organization/projects', { body: { name }, csrf });
      assert.equal(r.status, 403, `csrf=${csrf}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error?.code, 'csrf_token_invalid');
      assert.equal(r.body.error?.type, 'invalid_request_error');
      assert.match(r.body.error?.message, /CSRF/);
    }
    const del = await pageFetch(page, 'DELETE', `/v1/organization/projects/${seed.alpha.id}/api_keys/${seed.alphaKey.id}`);
    assert.equal(del.status, 403);
    // A plain HTML form (what a forged cross-site form would send) is refused too.
    const form = await page.evaluate(async () => {
      const r = await fetch('/v1/organization/projects', { method: 'POST', credentials: 'same-origin', body: new URLSearchParams({ name: 'form-made' }) });
      return r.status;
    });
    assert.ok(form === 403 || form === 400 || form === 415, `form POST: ${form}`);
    const out = await pageFetch(page, 'POST', '/ui/sign-out');
    assert.equal(out.status, 403, 'sign-out without the token');
    assert.equal((await sessionOf(page)).status, 200, 'still signed in');

    const projects = await gw.adminOk('GET', '/v1/organization/projects?limit=100');
    assert.ok(!projects.data.some((p) => p.name === name || p.name === 'form-made'), 'nothing was created');
    assert.equal((await gw.getKey(seed.alpha.id, seed.alphaKey.id)).state, 'active');
    // With the token, the same call works.
    const ok = await pageFetch(page, 'POST', '/v1/organization/projects', { body: { name }, csrf: true });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    await closeContext(c);
  });

  test('screenshots of every page at 1280x800 and 375x812, light and dark', { timeout: 300_000 }, async () => {
    fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
    // A refused request for the Explain page to show.
    const failed = await fetchWithTimeout(`${gw.url}/v1/models`, { headers: { authorization: 'Bearer sk-not-a-real-key-for-the-screenshot' } });
    const requestId = failed.headers.get('x-request-id');
    await gw.explain(requestId);
    const pages = PAGES.map(([n, p]) => [n, p ?? `/ui/keys/${seed.alphaKey.id}`]);
    const looks = {};
    for (const [size, viewport] of [['desktop', DESKTOP], ['phone', PHONE]]) {
      for (const scheme of ['light', 'dark']) {
        const { c, page } = await ownerPage({ viewport, colorScheme: scheme, isMobile: size === 'phone' });
        for (const [name, uiPath] of pages) {
          const r = await open(page, uiPath);
          assert.equal(r.status(), 200, `${uiPath}`);
          assert.equal(r.headers()['content-security-policy'], CSP, `CSP on ${uiPath}`);
          if (name === 'explain') {
            await page.locator('#explain-id').fill(requestId);
            await page.locator('#explain-submit').click();
            await page.locator('#explain-result').waitFor();
          }
          await page.waitForLoadState('networkidle', { timeout: 5_000 }).catch(() => {});
          await assertNoSecretsIn(page);
          const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
          assert.ok(overflow <= 1, `${uiPath} at ${viewport.width}px scrolls sideways by ${overflow}px`);
          await page.screenshot({ path: path.join(SCREENSHOT_DIR, `${name}-${size}-${scheme}.png`) });
          if (name === 'overview') {
            looks[`${size}-${scheme}`] = await page.evaluate(() => {
              const st = (el) => getComputedStyle(el);
              return [st(document.documentElement).backgroundColor, st(document.body).backgroundColor, st(document.body).color].join(' | ');
            });
            if (size === 'phone') {
              // The nav collapses to a menu button.
              await page.locator('#menu').waitFor();
              await page.locator('#menu').click();
              await page.locator('nav a[href="/ui/keys"]').first().waitFor({ state: 'visible' });
            } else if (scheme === 'light') {
              // Keyboard: Tab reaches a link or button, with a visible focus indicator.
              await page.evaluate(() => document.activeElement?.blur());
              await page.keyboard.press('Tab');
              const focus = await page.evaluate(() => {
                const el = document.activeElement;
                const st = getComputedStyle(el);
                return { tag: el.tagName, outline: st.outlineStyle, width: st.outlineWidth, shadow: st.boxShadow };
              });
              assert.ok(['A', 'BUTTON', 'INPUT', 'SELECT'].includes(focus.tag), `Tab focuses ${focus.tag}`);
              assert.ok((focus.outline !== 'none' && focus.width !== '0px') || focus.shadow !== 'none', `visible focus: ${JSON.stringify(focus)}`);
            }
          }
        }
        await closeContext(c);
      }
    }
    assert.notEqual(looks['desktop-light'], looks['desktop-dark'], 'dark differs from light');
    assert.notEqual(looks['phone-light'], looks['phone-dark'], 'dark differs from light');

    for (const [size, viewport] of [['desktop', DESKTOP], ['phone', PHONE]]) {
      for (const scheme of ['light', 'dark']) {
        const c = await context({ viewport, colorScheme: scheme, isMobile: size === 'phone' });
        const page = await c.newPage();
        await page.goto(`${gw.url}/ui/sign-in`);
        await page.locator('#sign-in-key').waitFor();
        await page.screenshot({ path: path.join(SCREENSHOT_DIR, `sign-in-${size}-${scheme}.png`) });
        await closeContext(c);
      }
    }
    const expected = [...PAGES.map(([n]) => n), 'sign-in'].flatMap((n) => ['desktop', 'phone'].flatMap((s) => ['light', 'dark'].map((m) => `${n}-${s}-${m}.png`)));
    for (const f of expected) assert.ok(fs.statSync(path.join(SCREENSHOT_DIR, f)).size > 1000, f);
  });

  test('failed sign-ins are throttled like failed keys', { timeout: 60_000 }, async () => {
    // Last: it spends this address's failure allowance for a minute.
    let throttled = null;
    for (let i = 0; i < 40 && throttled === null; i++) {
      const r = await fetchWithTimeout(`${gw.url}/ui/sign-in`, {
        method: 'POST', redirect: 'manual',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ key: `sk-admin-wrong-${i}-0123456789abcdefghijklmnopqrstuvwxyz`, next: '/ui' }),
      });
      await r.arrayBuffer();
      if (r.status === 429) throttled = i;
      else assert.equal(r.status, 401, `attempt ${i}`);
    }
    assert.notEqual(throttled, null, 'a 429 within 40 failed sign-ins');
  });
});

describe('single sign-on with the provider on another site than keygate', { timeout: 180_000 }, () => {
  // keygate on 127.0.0.1, the provider on localhost: as with a real provider,
  // the redirect back to /ui/sso/callback is a cross-site navigation, where a
  // browser sends no SameSite=Strict cookie (of the sign-in in progress, or of
  // a session set by a 303 on the way back).
  let stack;
  let browser;

  before(async () => {
    stack = await startStack({ accounts: { olivia: ACCOUNTS.olivia }, oidcHost: 'localhost', label: 'cross-site-sso' });
    await stack.gw.createUser(ACCOUNTS.olivia.name, ACCOUNTS.olivia.email, 'owner');
    browser = await launchBrowser();
  }, { timeout: 120_000 });

  after(async () => {
    await browser?.close().catch(() => {});
    await stack?.stop();
  }, { timeout: 60_000 });

  test('sign in through a provider on localhost lands signed in', { timeout: 60_000 }, async () => {
    const { gw, op } = stack;
    const c = await newContext(browser, { allowOrigins: [gw.url, op.issuer], watchOrigin: gw.url });
    try {
      const page = await c.newPage();
      await page.goto(`${gw.url}/ui/keys`);
      await page.locator('#sign-in-sso').click();
      await completeProviderLogin(page, op.issuer, 'olivia');
      await page.waitForURL((u) => u.origin === gw.url && (u.pathname === '/ui/keys' || u.pathname === '/ui/sign-in'), { timeout: 15_000 });
      assert.equal(new URL(page.url()).pathname, '/ui/keys',
        'back from a provider on another site, the browser landed on the sign-in page: on that cross-site '
        + 'navigation (and on a 303 that follows it) Chromium sends no SameSite=Strict cookie; keep the sign-in '
        + 'state in a Lax cookie (or server-side by `state`) and answer the callback with a page that moves on to '
        + '`next` by itself (<meta http-equiv="refresh">, allowed by the CSP), so that the session cookie goes with a same-site request');
      await page.locator('#main h1').first().waitFor();
      const s = await sessionOf(page);
      assert.equal(s.status, 200);
      assert.equal(s.body.user?.email, ACCOUNTS.olivia.email);
      // A reload (which Chromium still counts as the cross-site navigation) keeps the page.
      await page.reload();
      await page.locator('#main h1').first().waitFor();
      assert.equal(new URL(page.url()).pathname, '/ui/keys');
      assert.deepEqual(c.problems, []);
    } finally {
      await c.close().catch(() => {});
    }
  });
});
