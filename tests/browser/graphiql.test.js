// The gateway's GraphiQL in a real browser, offline: headless Chromium (Debian's `chromium`,
// driven by playwright-core) opens the page of `checkout-gateway --demo` with every request
// to another host blocked, runs a checkoutSession query through the page, and reads the
// answer from the page. A screenshot is saved as a CI artifact
// (target/artifacts/graphiql.png).
//
// Needs the binary: `cargo build` at the repository root, or CHECKOUT_GATEWAY_BIN=/path/to/it;
// and Chromium: CHROMIUM_BIN, else /usr/bin/chromium.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { after, before, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { freePort } from '../support/net.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = process.env.CHECKOUT_GATEWAY_BIN ?? resolve(REPO, 'target', 'debug', 'checkout-gateway');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARTIFACTS = resolve(REPO, 'target', 'artifacts');

let gateway;
let base;
let browser;

before(async () => {
  assert.ok(existsSync(BIN), `checkout-gateway binary not found at ${BIN}: run \`cargo build\``);
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (Debian: apt-get install chromium)`);
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  gateway = spawn(BIN, ['--demo'], {
    env: { ...process.env, GATEWAY_LISTEN: `127.0.0.1:${port}`, RUST_LOG: 'warn' },
    stdio: 'ignore',
  });
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      if ((await fetch(`${base}/readyz`)).ok) break;
    } catch {
      // not yet
    }
    assert.ok(Date.now() < deadline, 'the gateway did not become ready');
    await sleep(100);
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
});

after(async () => {
  await browser?.close();
  gateway?.kill('SIGTERM');
});

it('runs a checkoutSession query through GraphiQL with no request leaving the machine', async () => {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const blocked = [];
  const failed = [];
  // Every request to another host is refused and recorded: the page must need none.
  await page.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === '127.0.0.1' || url.protocol === 'data:') return route.continue();
    blocked.push(route.request().url());
    return route.abort();
  });
  page.on('requestfailed', (request) => failed.push(request.url()));
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));

  const query = '{ checkoutSession(provider: DODO, id: "cks_demo_succeeded") { ... on CheckoutSession { id status providerStatus } } }';
  await page.goto(`${base}/graphql?query=${encodeURIComponent(query)}`, { waitUntil: 'load' });
  await page.waitForSelector('.graphiql-execute-button', { timeout: 20_000 });
  await page.click('.graphiql-execute-button');
  const result = page.locator('.result-window');
  await result.getByText('COMPLETED').first().waitFor({ timeout: 20_000 });
  const text = await result.innerText();
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: resolve(ARTIFACTS, 'graphiql.png'), fullPage: true });

  assert.match(text, /"status": "COMPLETED"/);
  assert.match(text, /"providerStatus": "succeeded"/);
  assert.deepEqual(blocked, [], 'the page asked another host for something');
  assert.deepEqual(failed.filter((url) => !blocked.includes(url)), []);
  assert.deepEqual(errors, []);
});
