// The test harness's own parts, without keygate: the OpenID provider answers
// discovery, insists on PKCE, and Debian's chromium (driven by playwright-core)
// completes its development login and consent against a redirect URI served
// here, getting a code that the token endpoint exchanges for an ID token
// carrying the verified email keygate matches users by.

import assert from 'node:assert/strict';
import { createHash, createPublicKey, randomBytes, verify } from 'node:crypto';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { completeProviderLogin, startOidcProvider } from './oidc.mjs';
import { launchBrowser, newContext } from './harness.mjs';
import { fetchWithTimeout, freePort } from './net.mjs';

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** A stand-in relying party: records what arrives at /callback. */
async function startRedirectTarget() {
  const port = await freePort();
  const hits = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, `http://127.0.0.1:${port}`);
    hits.push(url);
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>callback</title><p id="arrived">arrived</p>');
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    redirectUri: `http://127.0.0.1:${port}/callback`,
    hits,
    stop: () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(() => resolve()); }),
  };
}

function decodeJwt(token) {
  const [h, p, s] = token.split('.');
  return { header: JSON.parse(Buffer.from(h, 'base64url')), payload: JSON.parse(Buffer.from(p, 'base64url')), signingInput: `${h}.${p}`, signature: Buffer.from(s, 'base64url') };
}

describe('OpenID provider harness (no keygate needed)', { timeout: 90_000 }, () => {
  let rp;
  let op;
  let browser;
  const accounts = { alice: { email: 'alice@example.com', name: 'Alice Example' } };

  before(async () => {
    rp = await startRedirectTarget();
    op = await startOidcProvider({ redirectUris: [rp.redirectUri], accounts });
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await op?.stop();
    await rp?.stop();
  });

  test('discovery answers with code flow, S256 PKCE and the email claims', { timeout: 10_000 }, async () => {
    const r = await fetchWithTimeout(`${op.issuer}/.well-known/openid-configuration`);
    assert.equal(r.status, 200);
    const d = await r.json();
    assert.equal(d.issuer, op.issuer);
    for (const k of ['authorization_endpoint', 'token_endpoint', 'jwks_uri', 'userinfo_endpoint']) {
      assert.ok(d[k]?.startsWith(`${op.issuer}/`), `${k}: ${d[k]}`);
    }
    assert.deepEqual(d.code_challenge_methods_supported, ['S256']);
    assert.ok(d.response_types_supported.includes('code'));
    for (const s of ['openid', 'email', 'profile']) assert.ok(d.scopes_supported.includes(s), s);
    for (const c of ['email', 'email_verified', 'name']) assert.ok(d.claims_supported.includes(c), c);
    assert.ok(d.token_endpoint_auth_methods_supported.includes('client_secret_basic'));
    const jwks = await (await fetchWithTimeout(d.jwks_uri)).json();
    assert.equal(jwks.keys.length, 1);
    assert.equal(jwks.keys[0].kty, 'RSA');
    assert.equal(jwks.keys[0].d, undefined, 'the private part is not published');
  });

  test('an authorization request without PKCE is refused', { timeout: 10_000 }, async () => {
    const u = new URL(`${op.issuer}/auth`);
    u.search = new URLSearchParams({ client_id: op.clientId, redirect_uri: rp.redirectUri, response_type: 'code', scope: 'openid email', state: 's', nonce: 'n' });
    const r = await fetchWithTimeout(u, { redirect: 'manual' });
    assert.equal(r.status, 303);
    const back = new URL(r.headers.get('location'));
    assert.equal(back.origin + back.pathname, rp.redirectUri);
    assert.equal(back.searchParams.get('error'), 'invalid_request');
    assert.match(back.searchParams.get('error_description'), /PKCE/);
  });

  test('chromium completes the dev login and consent, and the code gives a signed ID token with the verified email', { timeout: 60_000 }, async () => {
    browser = await launchBrowser();
    const context = await newContext(browser, { allowOrigins: [op.issuer, new URL(rp.redirectUri).origin] });
    const page = await context.newPage();

    const verifier = b64url(randomBytes(32));
    const challenge = b64url(createHash('sha256').update(verifier).digest());
    const state = b64url(randomBytes(16));
    const nonce = b64url(randomBytes(16));
    const u = new URL(`${op.issuer}/auth`);
    u.search = new URLSearchParams({
      client_id: op.clientId, redirect_uri: rp.redirectUri, response_type: 'code', scope: 'openid email profile',
      state, nonce, code_challenge: challenge, code_challenge_method: 'S256',
    });
    await page.goto(u.href, { timeout: 15_000 });
    const landed = new URL(await completeProviderLogin(page, op.issuer, 'alice'));
    assert.equal(landed.origin + landed.pathname, rp.redirectUri);
    await page.locator('#arrived').waitFor({ timeout: 5_000 });
    const code = landed.searchParams.get('code');
    assert.ok(code, `a code came back: ${landed}`);
    assert.equal(landed.searchParams.get('state'), state);
    assert.equal(landed.searchParams.get('iss'), op.issuer);
    assert.equal(rp.hits.length, 1);
    assert.ok(op.events.some((e) => e.name === 'authorization.accepted' && e.detail.code_challenge === challenge));

    // The token endpoint: client_secret_basic, with the PKCE verifier.
    const token = await fetchWithTimeout(`${op.issuer}/token`, {
      method: 'POST',
      headers: {
        authorization: `Basic ${Buffer.from(`${encodeURIComponent(op.clientId)}:${encodeURIComponent(op.clientSecret)}`).toString('base64')}`,
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: rp.redirectUri, code_verifier: verifier }),
    });
    const tokens = await token.json();
    assert.equal(token.status, 200, JSON.stringify(tokens));
    assert.ok(tokens.id_token);
    const jwt = decodeJwt(tokens.id_token);
    assert.equal(jwt.header.alg, 'RS256');
    const { keys } = await (await fetchWithTimeout(`${op.issuer}/jwks`)).json();
    const jwk = keys.find((k) => k.kid === jwt.header.kid);
    assert.ok(jwk, 'the ID token names a published key');
    assert.ok(verify('sha256', Buffer.from(jwt.signingInput), createPublicKey({ key: jwk, format: 'jwk' }), jwt.signature), 'signature verifies');
    assert.equal(jwt.payload.iss, op.issuer);
    assert.equal(jwt.payload.aud, op.clientId);
    assert.equal(jwt.payload.nonce, nonce);
    assert.equal(jwt.payload.sub, 'alice');
    assert.equal(jwt.payload.email, 'alice@example.com');
    assert.equal(jwt.payload.email_verified, true);
    assert.equal(jwt.payload.name, 'Alice Example');

    // The code is single-use.
    const again = await fetchWithTimeout(`${op.issuer}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: rp.redirectUri, code_verifier: verifier, client_id: op.clientId, client_secret: op.clientSecret }),
    });
    assert.notEqual(again.status, 200);
    await context.close();
  });
});
