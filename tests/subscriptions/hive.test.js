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
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { composeServices } from '@apollo/composition';
import { parse } from 'graphql';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

import { arrivals } from '../support/arrivals.js';
import {
  DODO_SESSION_UPDATED as SUBSCRIPTION,
  dodoEnv,
  startDodo,
  webhookReachesSubscriber,
} from '../support/dodo.js';
import { startGateway, startProcess } from '../support/gateway.js';
import { freePort } from '../support/net.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const HIVE = resolve(HERE, 'node_modules', '.bin', 'hive-gateway');

/** Hive Gateway over `supergraph`, with `transportEntries` for the checkout subgraph. */
async function startHive(supergraph, transportEntries) {
  const dir = mkdtempSync(join(tmpdir(), 'hive-'));
  writeFileSync(join(dir, 'supergraph.graphql'), supergraph);
  writeFileSync(
    join(dir, 'gateway.config.mjs'),
    `export const gatewayConfig = ${JSON.stringify({ supergraph: './supergraph.graphql', transportEntries })};\n`,
  );
  const port = await freePort();
  const hive = await startProcess('hive-gateway', HIVE, ['supergraph', '--port', String(port), '--host', '127.0.0.1'], {
    cwd: dir,
    env: { ...process.env, NODE_ENV: 'production' },
    readyUrl: `http://127.0.0.1:${port}/healthcheck`,
    timeoutMs: 60_000,
  });
  return {
    url: `ws://127.0.0.1:${port}/graphql`,
    async stop() {
      await hive.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
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
  let supergraph;
  const hives = [];

  before(async () => {
    dodo = await startDodo(sessions);
    gateway = await startGateway([], { GATEWAY_AUTH: 'none', ...dodoEnv(dodo) });
    const sdl = readFileSync(resolve(REPO, 'schema.graphql'), 'utf8');
    const composed = composeServices([{ name: 'checkout', typeDefs: parse(sdl), url: `${gateway.base}/graphql` }]);
    assert.equal(composed.errors, undefined, JSON.stringify(composed.errors));
    supergraph = composed.supergraphSdl;
    assert.match(supergraph, /type Subscription/);
  });

  after(async () => {
    // Each independently: one that failed to stop must not leave the others running.
    await Promise.allSettled([...hives.map((hive) => hive.stop()), gateway?.stop()]);
    dodo?.close();
  });

  it('delivers a signed webhook’s change to a subscriber within a second', async () => {
    const hive = await startHive(supergraph, { checkout: { headers: [['apollo-require-preflight', 'true']] } });
    hives.push(hive);
    const subscription = subscribe(hive.url, 'cks_router');
    await webhookReachesSubscriber({ subscription, id: 'cks_router', sessions, gateway: gateway.base });
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
