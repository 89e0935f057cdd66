// checkoutSessionUpdated through a real router: Hive Gateway (npm @graphql-hive/gateway)
// composes this subgraph, a client subscribes through it with the graphql-ws client, the
// test sends the gateway a signed Dodo webhook, and the update arrives through the router.
//
// Hive Gateway subscribes to an HTTP subgraph with GraphQL over SSE: a GET with
// `Accept: text/event-stream` and no preflight header, which the subgraph's CSRF prevention
// refuses (a browser's EventSource sends exactly that). The router is configured to send
// `apollo-require-preflight` to this subgraph (`transportEntries.<name>.headers`); the second
// test shows the refusal without it.
//
// Needs the binary: `cargo build` at the repository root, or CHECKOUT_GATEWAY_BIN=/path/to/it.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { composeServices } from '@apollo/composition';
import { parse } from 'graphql';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

import { arrivals } from '../support/arrivals.js';
import { DODO_SESSION_UPDATED as SUBSCRIPTION, dodoEnv, sendPaymentWebhook, startDodo } from '../support/dodo.js';
import { freePort } from '../support/net.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const BIN = process.env.CHECKOUT_GATEWAY_BIN ?? resolve(REPO, 'target', 'debug', 'checkout-gateway');
const HIVE = resolve(HERE, 'node_modules', '.bin', 'hive-gateway');
const READY_TIMEOUT_MS = 60_000;

const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** Starts a child, keeping the tail of its output for failure messages. */
function start(command, args, options) {
  const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.output = '';
  const keep = (chunk) => {
    child.output = (child.output + chunk.toString()).slice(-16_384);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  return child;
}

async function stop(child) {
  if (!child || child.exitCode !== null) return;
  child.kill('SIGTERM');
  await Promise.race([new Promise((done) => child.once('exit', done)), sleep(5_000)]);
  child.kill('SIGKILL');
  children.delete(child);
}

/** Polls `url` until it answers 200. */
async function waitFor(url, child) {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`exited early (${child.exitCode}):\n${child.output}`);
    try {
      const response = await fetch(url);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error(`${url} not ready within ${READY_TIMEOUT_MS} ms:\n${child.output}`);
}

/** Hive Gateway over `supergraph`, with `transportEntries` for the checkout subgraph. */
async function startHive(supergraph, transportEntries) {
  const dir = mkdtempSync(join(tmpdir(), 'hive-'));
  writeFileSync(join(dir, 'supergraph.graphql'), supergraph);
  writeFileSync(
    join(dir, 'gateway.config.mjs'),
    `export const gatewayConfig = ${JSON.stringify({ supergraph: './supergraph.graphql', transportEntries })};\n`,
  );
  const port = await freePort();
  const child = start(HIVE, ['supergraph', '--port', String(port), '--host', '127.0.0.1'], {
    cwd: dir,
    env: { ...process.env, NODE_ENV: 'production' },
  });
  child.dir = dir;
  await waitFor(`http://127.0.0.1:${port}/healthcheck`, child);
  return { child, url: `ws://127.0.0.1:${port}/graphql` };
}

/** Subscribes through the router; returns the results as they come, and a way to stop. */
function subscribe(url, id) {
  const client = createClient({ url, webSocketImpl: WebSocket, retryAttempts: 0 });
  const results = arrivals();
  client.subscribe(
    { query: SUBSCRIPTION, variables: { id } },
    {
      next: (result) => results.push(result),
      error: (error) => results.push({ errors: [{ message: String(error?.message ?? error) }] }),
      complete: () => {},
    },
  );
  return { ...results, close: () => client.dispose() };
}

describe('checkoutSessionUpdated through Hive Gateway', () => {
  const sessions = new Map([['cks_router', null]]);
  let dodo;
  let gateway;
  let gatewayUrl;
  let supergraph;
  const hives = [];

  before(async () => {
    if (!existsSync(BIN)) throw new Error(`checkout-gateway binary not found at ${BIN}: run \`cargo build\``);
    dodo = await startDodo(sessions);
    const port = await freePort();
    gatewayUrl = `http://127.0.0.1:${port}`;
    gateway = start(BIN, [], {
      env: {
        ...process.env,
        GATEWAY_LISTEN: `127.0.0.1:${port}`,
        GATEWAY_AUTH: 'none',
        ...dodoEnv(dodo),
        RUST_LOG: 'warn',
      },
    });
    await waitFor(`${gatewayUrl}/readyz`, gateway);
    const sdl = readFileSync(resolve(REPO, 'schema.graphql'), 'utf8');
    const composed = composeServices([{ name: 'checkout', typeDefs: parse(sdl), url: `${gatewayUrl}/graphql` }]);
    assert.equal(composed.errors, undefined, JSON.stringify(composed.errors));
    supergraph = composed.supergraphSdl;
    assert.match(supergraph, /type Subscription/);
  });

  after(async () => {
    for (const hive of hives) {
      await stop(hive.child);
      rmSync(hive.child.dir, { recursive: true, force: true });
    }
    await stop(gateway);
    dodo?.close();
  });

  it('delivers a signed webhook’s change to a subscriber within a second', async () => {
    const hive = await startHive(supergraph, { checkout: { headers: [['apollo-require-preflight', 'true']] } });
    hives.push(hive);
    const subscription = subscribe(hive.url, 'cks_router');
    try {
      const first = await subscription.nth(0);
      assert.deepEqual(first.result.data.checkoutSessionUpdated, {
        __typename: 'CheckoutSession',
        id: 'cks_router',
        status: 'OPEN',
        providerStatus: null,
      });
      // The provider's state changes, then its webhook says so.
      sessions.set('cks_router', 'succeeded');
      const sent = await sendPaymentWebhook(gatewayUrl, 'payment.succeeded', 'cks_router', 'succeeded');
      const update = await subscription.nth(1, 5_000);
      assert.equal(update.result.data.checkoutSessionUpdated.status, 'COMPLETED', JSON.stringify(update.result));
      const took = update.at - sent;
      assert.ok(took < 1_000, `the update took ${took} ms`);
    } finally {
      subscription.close();
    }
  });

  it('refuses the router’s SSE request when the router does not send the preflight header', async () => {
    const hive = await startHive(supergraph, {});
    hives.push(hive);
    const subscription = subscribe(hive.url, 'cks_router');
    try {
      const first = await subscription.nth(0);
      const message = first.result.errors?.[0]?.message ?? '';
      assert.match(message, /apollo-require-preflight/, JSON.stringify(first.result));
      assert.equal(first.result.data?.checkoutSessionUpdated ?? null, null);
    } finally {
      subscription.close();
    }
  });
});
