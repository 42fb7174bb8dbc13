// Page helpers for the dashboard tests: waiting for text, asserting what is
// not offered, and pressing buttons whose action asks for details.

import assert from 'node:assert/strict';

import { poll } from './net.mjs';

/** Waits until `scope` (a locator) shows `text` (string or RegExp). */
export async function waitForText(scope, text, timeout = 10_000) {
  await scope.filter({ hasText: text }).first().waitFor({ state: 'visible', timeout });
}

/** Text as compared: no backticks (a page may show `x` as code), whitespace collapsed. */
export const plain = (t) => String(t).replace(/`/g, '').replace(/\s+/g, ' ').trim();

/** Waits until `scope` shows `text` once both are made plain. */
export async function waitForPlainText(scope, text, timeout = 10_000) {
  const want = plain(text);
  await poll(async () => plain(await scope.innerText()).includes(want), { timeout, message: `${want} shown` });
}

/** Loads `url` again and again until #main shows `text` (for data that is recorded a moment later). */
export async function reloadUntilText(page, url, text, { timeout = 30_000, prepare } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    await page.goto(url);
    await page.locator('#main h1').first().waitFor();
    if (prepare) await prepare();
    try {
      await waitForText(page.locator('#main'), text, Math.min(4_000, Math.max(500, deadline - Date.now())));
      return;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`${url} did not show ${text} within ${timeout} ms: ${e.message}`);
    }
  }
}

/** No element matching `selector` is visible (absent or hidden). */
export async function assertNotVisible(page, selector) {
  const all = page.locator(selector);
  const n = await all.count();
  for (let i = 0; i < n; i++) {
    assert.equal(await all.nth(i).isVisible(), false, `${selector} is visible on ${page.url()}`);
  }
}

/** Fills the first visible element among `selectors` inside `scope`; whether one was found. */
export async function fillFirstVisible(scope, selectors, value) {
  for (const selector of selectors) {
    const all = scope.locator(selector);
    const n = await all.count();
    for (let i = 0; i < n; i++) {
      if (await all.nth(i).isVisible()) {
        await all.nth(i).fill(String(value));
        return true;
      }
    }
  }
  return false;
}

/**
 * Clicks a button whose action may ask for details or confirmation: fields
 * ({selectors, value}) are filled where they are visible before the click, in
 * a browser prompt (window.prompt gets the first field's value; confirm() is
 * accepted), or in an in-page <dialog> that opens after the click (then its
 * confirming button is pressed). Returns how the details were given.
 */
export async function act(page, button, fields = []) {
  const filled = fields.map(() => false);
  const dialogs = [];
  const onDialog = async (d) => {
    dialogs.push(d.type());
    if (d.type() === 'prompt') {
      const i = filled.indexOf(false);
      if (i >= 0) filled[i] = 'prompt';
      await d.accept(i >= 0 ? String(fields[i].value) : '');
    } else {
      await d.accept();
    }
  };
  page.on('dialog', onDialog);
  try {
    for (const [i, f] of fields.entries()) {
      if (await fillFirstVisible(page, f.selectors, f.value)) filled[i] = 'field';
    }
    await page.locator(button).click();
    const dialog = page.locator('dialog[open]:not(:has(#key-reveal))').first();
    const opened = await dialog.waitFor({ state: 'visible', timeout: 1_500 }).then(() => true, () => false);
    if (opened) {
      for (const [i, f] of fields.entries()) {
        if (!filled[i] && (await fillFirstVisible(dialog, f.selectors, f.value))) filled[i] = 'dialog';
      }
      await dialog.locator('button[type="submit"]:not(#copy-key), button:not([type]):not(#copy-key)').filter({ hasNotText: /cancel|close|back/i }).first().click();
    }
  } finally {
    page.off('dialog', onDialog);
  }
  return { filled, dialogs };
}
