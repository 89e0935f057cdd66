// The gateway's GraphiQL in a real browser, offline: headless Chromium (Debian's `chromium`,
// driven by playwright-core) opens the page of `checkout-gateway --demo` with every request
// to another host blocked, runs a checkoutSession query through the page, and reads the
// answer from the page; then runs the README's subscription, pasted as a user would, and
// sees the session's answers arrive over the WebSocket. Screenshots are saved as CI
// artifacts (target/artifacts/graphiql.png, graphiql-subscription.png).
//
// Needs the binary: `cargo build` at the repository root, or CHECKOUT_GATEWAY_BIN=/path/to/it;
// and Chromium: CHROMIUM_BIN, else /usr/bin/chromium.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
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
// How long a `cks_live_…` sandbox session stays in each status: short, so the test sees the
// next one soon, and long enough that the page shows OPEN before it changes.
const DEMO_STEP_SECONDS = 4;

let gateway;
let base;
let browser;

before(async () => {
  assert.ok(existsSync(BIN), `checkout-gateway binary not found at ${BIN}: run \`cargo build\``);
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (Debian: apt-get install chromium)`);
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  gateway = spawn(BIN, ['--demo'], {
    env: {
      ...process.env,
      GATEWAY_LISTEN: `127.0.0.1:${port}`,
      GATEWAY_DEMO_STEP: `${DEMO_STEP_SECONDS}s`,
      RUST_LOG: 'warn',
    },
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

/** A page whose every request to another host is refused and recorded: it must need none. */
async function offlinePage() {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const blocked = [];
  const failed = [];
  const errors = [];
  await page.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === '127.0.0.1' || url.protocol === 'data:') return route.continue();
    blocked.push(route.request().url());
    return route.abort();
  });
  page.on('requestfailed', (request) => failed.push(request.url()));
  page.on('pageerror', (error) => errors.push(String(error)));
  return { page, blocked, failed, errors };
}

it('runs a checkoutSession query through GraphiQL with no request leaving the machine', async () => {
  const { page, blocked, failed, errors } = await offlinePage();

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

/** The subscription the README tells a user to paste into GraphiQL. */
function readmeSubscription() {
  const readme = readFileSync(resolve(REPO, 'README.md'), 'utf8');
  const start = readme.indexOf('paste this into GraphiQL');
  assert.ok(start >= 0, "the README's subscription for GraphiQL was not found");
  const block = /```graphql\n([\s\S]*?)```/.exec(readme.slice(start));
  assert.ok(block, "the README's subscription for GraphiQL was not found");
  assert.match(block[1], /^subscription \{\s+checkoutSessionUpdated\(provider: DODO, id: "cks_live_mine"\)/);
  return block[1];
}

it("runs the README's subscription through GraphiQL over the WebSocket: OPEN, then PROCESSING", async () => {
  const { page, blocked, failed, errors } = await offlinePage();
  const sockets = [];
  const subscribed = [];
  page.on('websocket', (socket) => {
    sockets.push(socket.url());
    socket.on('framesent', (frame) => {
      const message = JSON.parse(frame.payload);
      if (message.type === 'subscribe') subscribed.push(message.payload.query);
    });
  });
  const overHttp = [];
  page.on('request', (request) => {
    if (/checkoutSessionUpdated/.test(request.postData() ?? '')) overHttp.push(request.postData());
  });

  // A user who ran a named query before (GraphiQL also restores the last one it had): GraphiQL
  // keeps its operation name until it parses the editor again.
  const lookup = 'query Lookup { checkoutSession(provider: DODO, id: "cks_demo_open") { __typename } }';
  await page.goto(`${base}/graphql?query=${encodeURIComponent(lookup)}`, { waitUntil: 'load' });
  await page.waitForSelector('.graphiql-execute-button', { timeout: 20_000 });
  await page.click('.graphiql-execute-button');
  await page.locator('.result-window').getByText('"CheckoutSession"', { exact: true }).waitFor({ timeout: 20_000 });
  const subscription = readmeSubscription();
  // Pasted and run at once, in one task, as a user pressing Ctrl+Enter right after pasting:
  // GraphiQL parses the editor 100 ms after a change, and the page must not depend on it.
  await page.evaluate((text) => {
    document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(text);
    document.querySelector('.graphiql-execute-button').click();
  }, subscription);

  // The result pane's text once it shows `"status": "<wanted>"`, or an error (so that a failure
  // says why at once).
  const shows = async (wanted) => {
    await page.waitForFunction(
      (status) => {
        const text = document.querySelector('.result-window')?.innerText ?? '';
        return text.includes(`"status": "${status}"`) || text.includes('"errors"');
      },
      wanted,
      { timeout: 20_000 + DEMO_STEP_SECONDS * 1000 },
    );
    return page.locator('.result-window').innerText();
  };
  // The current answer first; then the sandbox moves the session on one step later and tells
  // the gateway by a signed webhook, and the page shows the new answer.
  const open = await shows('OPEN');
  assert.match(open, /"status": "OPEN"/);
  const processing = await shows('PROCESSING');
  assert.match(processing, /"status": "PROCESSING"/);
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: resolve(ARTIFACTS, 'graphiql-subscription.png'), fullPage: true });

  assert.match(open, /"providerStatus": null/);
  assert.match(processing, /"providerStatus": "processing"/);
  assert.match(processing, /"paymentId": "pay_live_mine"/);
  assert.deepEqual(overHttp, [], 'the subscription went over HTTP');
  assert.deepEqual(sockets, [`${base.replace('http:', 'ws:')}/ws`]);
  assert.deepEqual(subscribed, [subscription]);
  assert.deepEqual(blocked, [], 'the page asked another host for something');
  assert.deepEqual(failed.filter((url) => !blocked.includes(url)), []);
  assert.deepEqual(errors, []);
});
