// A real OpenID provider (oidc-provider from npm) for keygate's dashboard tests.
//
// It serves plain http on loopback with one confidential client (`keygate`),
// the authorization code flow with PKCE required (S256: oidc-provider 9 knows
// no other method), scopes openid/email/profile and the claims keygate matches
// users by (email, email_verified, name), signed with an RSA key made at start.
// Sign-in uses the provider's built-in development interactions: a login form
// (any password) and then a consent page; `completeProviderLogin` below drives
// them in a Playwright page.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

import { freePort } from './net.mjs';

/**
 * Starts the provider.
 *
 * @param {object} opts
 * @param {string[]} opts.redirectUris  the client's registered redirect URIs
 * @param {Record<string, {email: string, name: string, email_verified?: boolean}>} opts.accounts
 *        login name -> claims (email_verified defaults to true)
 * @param {string} [opts.host]  the host name in the issuer URL: "127.0.0.1" (default) or
 *        "localhost" (another site than a keygate on 127.0.0.1, as a real provider is)
 * @param {string} [opts.clientAuthMethod]  how the client authenticates at the token endpoint:
 *        "client_secret_basic" (default) or "client_secret_post"
 * @returns {Promise<{issuer: string, clientId: string, clientSecret: string, port: number,
 *          events: {name: string, detail: object}[], stop: () => Promise<void>}>}
 */
export async function startOidcProvider({
  redirectUris,
  accounts,
  host = '127.0.0.1',
  clientAuthMethod = process.env.KEYGATE_UI_OIDC_AUTH_METHOD || 'client_secret_basic',
} = {}) {
  if (!redirectUris?.length) throw new Error('startOidcProvider: redirectUris is required');
  const port = await freePort();
  const issuer = `http://${host}:${port}`;
  const clientId = 'keygate';
  const clientSecret = `oidc-test-secret-${randomBytes(24).toString('hex')}`;

  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: `test-${randomBytes(4).toString('hex')}`, alg: 'RS256', use: 'sig' };

  const known = new Map(Object.entries(accounts ?? {}));
  // What happened, for tests to look at: authorization requests (their
  // parameters), token grants, and errors.
  const events = [];

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: redirectUris,
        response_types: ['code'],
        grant_types: ['authorization_code'],
        token_endpoint_auth_method: clientAuthMethod,
        id_token_signed_response_alg: 'RS256',
      },
    ],
    jwks: { keys: [signingKey] },
    scopes: ['openid', 'email', 'profile'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    // Put the scopes' claims in the ID token of the code flow too (by default
    // oidc-provider keeps them for the userinfo endpoint only): keygate reads
    // the verified email from the ID token.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    // Fixed lifetimes (seconds), which also keeps the provider from logging a
    // notice for each default it falls back to.
    ttl: { AuthorizationCode: 60, Interaction: 600, Session: 3600, Grant: 3600, AccessToken: 600, IdToken: 600 },
    features: {
      devInteractions: { enabled: true },
      // Nothing else: no registration, no introspection, no revocation.
    },
    // The provider's own cookies (its session and the interaction in progress);
    // over plain http they are set without `Secure` (ctx.secure is false).
    cookies: { keys: [randomBytes(32).toString('hex')] },
    async findAccount(_ctx, sub) {
      const account = known.get(sub);
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            email: account.email,
            email_verified: account.email_verified ?? true,
            name: account.name,
          };
        },
      };
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = `<!doctype html><title>oidc error</title><h1 id="oidc-error">${escapeHtml(out.error)}</h1><p>${escapeHtml(out.error_description ?? '')}</p>`;
    },
  });
  // Development interactions print a warning on every start; so be it.

  provider.on('authorization.accepted', (ctx) => {
    events.push({ name: 'authorization.accepted', detail: { ...ctx.oidc.params } });
  });
  provider.on('authorization.error', (_ctx, err) => {
    events.push({ name: 'authorization.error', detail: { error: err.error, description: err.error_description } });
  });
  provider.on('grant.success', (ctx) => {
    events.push({ name: 'grant.success', detail: { clientId: ctx.oidc.client?.clientId, accountId: ctx.oidc.entities?.Account?.accountId } });
  });
  provider.on('grant.error', (_ctx, err) => {
    events.push({ name: 'grant.error', detail: { error: err.error, description: err.error_description } });
  });
  provider.on('server_error', (_ctx, err) => {
    events.push({ name: 'server_error', detail: { message: String(err?.stack ?? err) } });
  });

  const server = http.createServer(provider.callback());
  const sockets = new Set();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });

  let stopped = false;
  return {
    issuer,
    clientId,
    clientSecret,
    port,
    events,
    async stop() {
      if (stopped) return;
      stopped = true;
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

/**
 * In a Playwright page that is on the provider (at its login or consent
 * page, or about to be redirected there), signs in as `login` and gives
 * consent, then waits until the browser has left the provider. Returns the
 * URL it left for.
 */
export async function completeProviderLogin(page, issuer, login, { timeout = 20_000 } = {}) {
  const deadline = Date.now() + timeout;
  const onProvider = () => page.url().startsWith(`${issuer}/`);
  // The redirect to the provider may still be in flight.
  await page.waitForURL((u) => u.href.startsWith(`${issuer}/`), { timeout });
  for (let step = 0; step < 4 && onProvider(); step++) {
    const left = Math.max(1, deadline - Date.now());
    const loginField = page.locator('input[name="login"]');
    const consent = page.locator('input[name="prompt"][value="consent"]');
    const error = page.locator('#oidc-error');
    await Promise.race([
      loginField.waitFor({ state: 'visible', timeout: left }),
      consent.waitFor({ state: 'attached', timeout: left }),
      error.waitFor({ state: 'attached', timeout: left }),
      page.waitForURL((u) => !u.href.startsWith(`${issuer}/`), { timeout: left }),
    ]).catch(() => {});
    if (!onProvider()) break;
    if (await error.count()) {
      throw new Error(`the OpenID provider answered an error: ${await page.locator('body').innerText()}`);
    }
    const before = page.url();
    if (await loginField.isVisible()) {
      await loginField.fill(login);
      await page.locator('input[name="password"]').fill('any password');
      await Promise.all([
        page.waitForURL((u) => u.href !== before, { timeout: left }),
        page.locator('button[type="submit"]').click(),
      ]);
    } else if (await consent.count()) {
      await Promise.all([
        page.waitForURL((u) => u.href !== before, { timeout: left }),
        page.locator('button[type="submit"]').click(),
      ]);
    } else if (Date.now() > deadline) {
      break;
    }
  }
  if (onProvider()) {
    throw new Error(`still on the OpenID provider after ${timeout} ms at ${page.url()}: ${(await page.locator('body').innerText().catch(() => '')).slice(0, 500)}`);
  }
  return page.url();
}
