// Small network helpers shared by the harness and the tests.

import net from 'node:net';

/** A TCP port free on 127.0.0.1 right now (the caller binds it soon after). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** fetch with a deadline (ms). */
export async function fetchWithTimeout(url, init = {}, timeout = 10_000) {
  return fetch(url, { ...init, signal: AbortSignal.timeout(timeout) });
}

/** Calls fn until it returns a truthy value or `timeout` ms pass; returns that value. */
export async function poll(fn, { timeout = 10_000, interval = 100, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const why = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`${message}: not met within ${timeout} ms (last: ${why})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}
