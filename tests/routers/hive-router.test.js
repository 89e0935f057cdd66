// checkout-gateway behind Hive Router 0.2.5 (crate hive-router, the Guild's Rust federation
// router), with the production settings: clients must authenticate (GATEWAY_AUTH=api-key), the
// router is admitted by GATEWAY_ROUTER_SECRET, and Hive Router is told to send
// `router-authorization` to this subgraph and to pass the client's `authorization` on.
//
// The supergraph is composed with @apollo/composition from `checkout-gateway schema` and the
// orders subgraph of tests/federation, and served by Hive Router from a file. Through the
// router: queries in both directions, an entity error that keeps its extensions.code while the
// other entities arrive, the router's Cache-Control following ours, the client's own key (passed
// on by the router) deciding its rights where the gateway trusts the router's identity
// (GATEWAY_ROUTER_TRUST_IDENTITY), and checkoutSessionUpdated
// with the router subscribing to this subgraph over WebSocket (the secret in connection_init),
// over SSE, and over HTTP callback (callback/1.0: the gateway POSTs each answer to the router's
// callback listener, allowed by GATEWAY_SUBSCRIPTION_CALLBACK_URLS). A signed
// Dodo webhook's change must reach the client within a second.
//
// Needs the gateway binary (`cargo build`, or CHECKOUT_GATEWAY_BIN) and Hive Router
// (HIVE_ROUTER_BIN, else scripts/hive-router.sh prints it, building it once: tens of minutes).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { composeServices } from '@apollo/composition';
import { parse } from 'graphql';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

import { startOrdersSubgraph, typeDefs as ordersTypeDefs } from '../federation/orders-subgraph.js';
import { arrivals } from '../support/arrivals.js';
import {
  DODO_SESSION_UPDATED as SUBSCRIPTION,
  dodoEnv,
  startDodo,
  webhookReachesSubscriber,
} from '../support/dodo.js';
import { BIN, startGateway, startProcess } from '../support/gateway.js';
import { freePort } from '../support/net.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const HIVE_ROUTER =
  process.env.HIVE_ROUTER_BIN ??
  execFileSync('bash', [resolve(REPO, 'scripts', 'hive-router.sh')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  }).trim();
// Fresh for each run: nothing here is a real credential.
const ROUTER_SECRET = randomBytes(24).toString('hex');
const CLIENT_KEY = randomBytes(32).toString('hex');
// A client that may read DHMAD's accounts only.
const LIMITED_KEY = randomBytes(32).toString('hex');
// What the router's clients send: a credential for the router's edge (a JWT, say), not a key
// the gateway knows. The router passes it on; the gateway admits the router by its secret and
// (GATEWAY_ROUTER_TRUST_IDENTITY off) answers it as the router.
const AS_CLIENT = { authorization: `Bearer edge-token-${randomBytes(16).toString('hex')}` };

/**
 * The router's configuration: production header rules, its own WebSocket endpoint on /ws for
 * clients, and how it subscribes to `checkout`: `http` (SSE, its default), `websocket`, or
 * `callback` (then `callbackPort`, where it listens for the subgraph's callbacks).
 */
function routerConfig({ port, mode, callbackPort }) {
  const subscriptions = { enabled: true };
  if (mode === 'websocket') subscriptions.websocket = { subgraphs: { checkout: {} } };
  if (mode === 'callback') {
    subscriptions.callback = {
      public_url: `http://127.0.0.1:${callbackPort}/callback`,
      listen: `127.0.0.1:${callbackPort}`,
      subgraphs: ['checkout'],
    };
  }
  return {
    log: { level: 'warn', format: 'text' },
    supergraph: { source: 'file', path: './supergraph.graphql' },
    http: { host: '127.0.0.1', port },
    websocket: { enabled: true, path: '/ws' },
    subscriptions,
    headers: {
      all: {
        request: [{ propagate: { named: 'authorization' } }],
        // Hive Router merges the subgraphs' Cache-Control only when told to.
        response: [{ propagate: { named: 'cache-control', algorithm: 'append' } }],
      },
      subgraphs: {
        checkout: { request: [{ insert: { name: 'router-authorization', value: ROUTER_SECRET } }] },
      },
    },
  };
}

/** Hive Router over `supergraph` in a temporary folder, ready (its /readiness answers 200). */
async function startHiveRouter(supergraph, mode, callbackPort) {
  const dir = mkdtempSync(join(tmpdir(), `hive-router-${mode}-`));
  const port = await freePort();
  writeFileSync(join(dir, 'supergraph.graphql'), supergraph);
  // JSON is YAML: the router reads this as its YAML config.
  writeFileSync(join(dir, 'router.config.yaml'), JSON.stringify(routerConfig({ port, mode, callbackPort }), null, 2));
  // Nothing else: Hive Router takes many settings from the environment (PORT, LOG_LEVEL,
  // HIVE_CDN_*, APOLLO_KEY, …), none of which may come from the test's own.
  const env = { PATH: process.env.PATH, ROUTER_CONFIG_FILE_PATH: join(dir, 'router.config.yaml') };
  const base = `http://127.0.0.1:${port}`;
  const router = await startProcess(`hive-router (${mode})`, HIVE_ROUTER, [], {
    env,
    cwd: dir,
    readyUrl: `${base}/readiness`,
    timeoutMs: 30_000,
  });
  return {
    graphql: `${base}/graphql`,
    ws: `ws://127.0.0.1:${port}/ws`,
    output: router.output,
    async stop() {
      await router.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** POSTs a GraphQL request with `headers`; the status, the Cache-Control and the parsed body. */
async function post(url, query, headers) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json', ...headers },
    body: JSON.stringify({ query }),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = { text };
  }
  return { status: response.status, cacheControl: response.headers.get('cache-control'), body };
}

/** `checkoutSessionUpdated(id)` through the router's WebSocket, as a graphql-ws client. */
function subscribeOverWebSocket(router, id) {
  const client = createClient({
    url: router.ws,
    webSocketImpl: WebSocket,
    retryAttempts: 0,
    // The router passes the connection's headers on (`websocket.headers.source: connection`).
    connectionParams: AS_CLIENT,
  });
  const results = arrivals();
  client.subscribe(
    { query: SUBSCRIPTION, variables: { id } },
    {
      next: (result) => results.push(result),
      // GraphQL errors (an array), a close event, or an Error.
      error: (error) => {
        const message = String(error?.reason ?? error?.message ?? error);
        results.push({ errors: Array.isArray(error) ? error : [{ message }] });
      },
      complete: () => {},
    },
  );
  return { ...results, close: () => client.dispose() };
}

/** `checkoutSessionUpdated(id)` through the router over SSE (a POST asking for text/event-stream). */
function subscribeOverSse(router, id) {
  const results = arrivals();
  const stop = new AbortController();
  (async () => {
    const response = await fetch(router.graphql, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream', ...AS_CLIENT },
      body: JSON.stringify({ query: SUBSCRIPTION, variables: { id } }),
      signal: stop.signal,
    });
    if (response.status !== 200) {
      results.push({ errors: [{ message: `HTTP ${response.status}: ${await response.text()}` }] });
      return;
    }
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of response.body) {
      buffer += decoder.decode(chunk, { stream: true }).replaceAll('\r\n', '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const lines = buffer.slice(0, end).split('\n');
        buffer = buffer.slice(end + 2);
        const field = (name) =>
          lines.filter((line) => line.startsWith(`${name}:`)).map((line) => line.slice(name.length + 1).trim());
        const data = field('data').join('\n');
        if (field('event')[0] === 'next' && data) results.push(JSON.parse(data));
      }
    }
  })().catch((error) => {
    if (!stop.signal.aborted) results.push({ errors: [{ message: `SSE: ${error.message}` }] });
  });
  return { ...results, close: () => stop.abort() };
}

describe('checkout-gateway behind Hive Router 0.2.5, production settings', { timeout: 180_000 }, () => {
  // Dodo's sessions: one per subscription test, so that each starts OPEN.
  const sessions = new Map([
    ['cks_demo_succeeded', 'succeeded'],
    ['cks_demo_open', null],
    ['cks_err_403', { httpStatus: 403 }],
    ['cks_over_websocket', null],
    ['cks_over_sse', null],
    ['cks_over_callback', null],
  ]);
  const started = [];
  let dodo;
  let orders;
  let gateway;
  let supergraph;
  let overHttp;
  let overWebSocket;
  let overCallback;
  let callbackPort;
  let dir;
  /** Starts `start()`'s result now and stops it after the suite. */
  const keep = async (start) => {
    const thing = await start();
    started.push(thing);
    return thing;
  };

  before(async () => {
    dodo = await startDodo(sessions);
    // Where the callback-mode router listens: the gateway POSTs only under this prefix.
    callbackPort = await freePort();
    dir = mkdtempSync(join(tmpdir(), 'checkout-gateway-routers-'));
    started.push({ stop: async () => rmSync(dir, { recursive: true, force: true }) });
    gateway = await keep(() =>
      startWithClients({ GATEWAY_SUBSCRIPTION_CALLBACK_URLS: `http://127.0.0.1:${callbackPort}/callback` }),
    );
    orders = await keep(() => startOrdersSubgraph());
    supergraph = compose(gateway);
    overHttp = await keep(() => startHiveRouter(supergraph, 'http'));
    overWebSocket = await keep(() => startHiveRouter(supergraph, 'websocket'));
    overCallback = await keep(() => startHiveRouter(supergraph, 'callback', callbackPort));
  });

  /**
   * The gateway with the production settings: its clients by API key (CLIENT_KEY reads every
   * account, LIMITED_KEY DHMAD's only), the router admitted by ROUTER_SECRET; and `env`.
   */
  async function startWithClients(env) {
    const configFile = join(dir, `gateway-${randomBytes(4).toString('hex')}.toml`);
    const hash = (key) => createHash('sha256').update(key).digest('hex');
    writeFileSync(
      configFile,
      `[clients.mesh-client]\nkey_sha256 = "${hash(CLIENT_KEY)}"\naccounts = ["*"]\n` +
        `[clients.dhmad-dashboard]\nkey_sha256 = "${hash(LIMITED_KEY)}"\naccounts = ["provider:dhmad"]\n`,
    );
    return startGateway([], {
      GATEWAY_AUTH: 'api-key',
      GATEWAY_CONFIG: configFile,
      GATEWAY_ROUTER_SECRET: ROUTER_SECRET,
      ...dodoEnv(dodo),
      ...env,
    });
  }

  /** The supergraph of `checkout` (served by `gateway`) and the orders subgraph. */
  function compose(checkout) {
    const sdl = execFileSync(BIN, ['schema'], { encoding: 'utf8' });
    const composed = composeServices([
      { name: 'checkout', typeDefs: parse(sdl), url: `${checkout.base}/graphql` },
      { name: 'orders', typeDefs: ordersTypeDefs, url: orders.url },
    ]);
    assert.equal(composed.errors, undefined, JSON.stringify(composed.errors));
    return composed.supergraphSdl;
  }

  after(async () => {
    // Each independently: one that failed to stop must not leave the others running.
    await Promise.allSettled(started.reverse().map((thing) => thing.stop()));
    dodo?.close();
  });

  it('the gateway admits its own clients by key and the router by its secret, no one else', async () => {
    const query = '{ __typename }';
    assert.equal((await post(`${gateway.base}/graphql`, query, {})).status, 401);
    assert.equal((await post(`${gateway.base}/graphql`, query, AS_CLIENT)).status, 401);
    const client = await post(`${gateway.base}/graphql`, query, { authorization: `Bearer ${CLIENT_KEY}` });
    assert.equal(client.status, 200, JSON.stringify(client.body));
    const wrong = await post(`${gateway.base}/graphql`, query, { 'router-authorization': `${ROUTER_SECRET}x` });
    assert.equal(wrong.status, 401);
    const admitted = await post(`${gateway.base}/graphql`, query, { 'router-authorization': ROUTER_SECRET });
    assert.equal(admitted.status, 200, JSON.stringify(admitted.body));
  });

  it('orders -> session: the session fields come from checkout-gateway', async () => {
    const { status, body } = await post(
      overHttp.graphql,
      `{
        paid: order(id: "ord_1001") { id total checkoutSession { provider account id status providerStatus customerEmail } }
        open: order(id: "ord_1002") { id checkoutSession { id status providerStatus } }
      }`,
      AS_CLIENT,
    );
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    assert.deepEqual(body.data, {
      paid: {
        id: 'ord_1001',
        total: 4200,
        checkoutSession: {
          provider: 'DODO',
          account: 'dodo',
          id: 'cks_demo_succeeded',
          status: 'COMPLETED',
          providerStatus: 'succeeded',
          customerEmail: 'ana@example.com',
        },
      },
      open: { id: 'ord_1002', checkoutSession: { id: 'cks_demo_open', status: 'OPEN', providerStatus: null } },
    });
  });

  it('session -> order: the order comes from the orders subgraph, by our key', async () => {
    const { status, body } = await post(
      overHttp.graphql,
      `{
        checkoutSession(provider: DODO, id: "cks_demo_succeeded") {
          __typename
          ... on CheckoutSession { provider account id status order { id total } }
        }
      }`,
      AS_CLIENT,
    );
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    assert.deepEqual(body.data.checkoutSession, {
      __typename: 'CheckoutSession',
      provider: 'DODO',
      account: 'dodo',
      id: 'cks_demo_succeeded',
      status: 'COMPLETED',
      order: { id: 'ord_1001', total: 4200 },
    });
  });

  it('an entity that errors keeps its extensions.code while the others arrive', async () => {
    const { status, body } = await post(
      overHttp.graphql,
      `{
        paid: order(id: "ord_1001") { id checkoutSession { status } }
        refused: order(id: "ord_1006") { id total checkoutSession { status customerEmail } }
        open: order(id: "ord_1002") { id checkoutSession { status } }
      }`,
      AS_CLIENT,
    );
    assert.equal(status, 200, JSON.stringify(body));
    assert.deepEqual(body.data, {
      paid: { id: 'ord_1001', checkoutSession: { status: 'COMPLETED' } },
      refused: { id: 'ord_1006', total: 700, checkoutSession: null },
      open: { id: 'ord_1002', checkoutSession: { status: 'OPEN' } },
    });
    const context = JSON.stringify(body.errors, null, 2);
    assert.equal(body.errors?.length, 1, context);
    const [error] = body.errors;
    assert.equal(error.extensions?.code, 'FORBIDDEN', context);
    assert.equal(error.extensions?.provider, 'DODO', context);
    assert.deepEqual(error.path, ['refused', 'checkoutSession'], context);
  });

  it('the router’s Cache-Control follows ours, never more reusable', async () => {
    const session = `{ checkoutSession(provider: DODO, id: "cks_demo_succeeded") { ... on CheckoutSession { status } } }`;
    const refused = `{ checkoutSession(provider: DODO, id: "cks_err_403") { ... on CheckoutError { code } } }`;
    const asRouter = { 'router-authorization': ROUTER_SECRET };
    // Ours: this client may reuse the answer for the session's remaining lifetime...
    const ours = await post(`${gateway.base}/graphql`, session, asRouter);
    assert.match(ours.cacheControl ?? '', /^private, max-age=[1-9]\d*$/, JSON.stringify(ours.body));
    // ...which Hive Router 0.2.5 cannot say: its merge has no `private` output and turns it
    // into no-store (src/executor/headers/cache_control.rs), so nothing reuses a per-client answer.
    const theirs = await post(overHttp.graphql, session, AS_CLIENT);
    assert.equal(theirs.body.data?.checkoutSession?.status, 'COMPLETED', JSON.stringify(theirs.body));
    assert.equal(theirs.cacheControl, 'no-store, no-cache');
    // An answer that must not be reused (the provider refused; an error as data): no-store
    // from us, and from the router.
    const oursRefused = await post(`${gateway.base}/graphql`, refused, asRouter);
    assert.equal(oursRefused.cacheControl, 'no-store');
    const theirsRefused = await post(overHttp.graphql, refused, AS_CLIENT);
    assert.equal(theirsRefused.body.data?.checkoutSession?.code, 'FORBIDDEN', JSON.stringify(theirsRefused.body));
    assert.equal(theirsRefused.cacheControl, 'no-store, no-cache');
  });

  it('with GATEWAY_ROUTER_TRUST_IDENTITY the credential the router passes on decides the rights', async () => {
    // The router's `propagate: authorization` rule carries each client's own key to the
    // gateway, which (trusting the router) answers with that key's rights, not the router's.
    const trusting = await keep(() => startWithClients({ GATEWAY_ROUTER_TRUST_IDENTITY: 'true' }));
    const router = await keep(() => startHiveRouter(compose(trusting), 'http'));
    const query = `{ checkoutSession(provider: DODO, id: "cks_demo_succeeded") {
      __typename ... on CheckoutSession { status } ... on CheckoutError { code } } }`;
    const everything = await post(router.graphql, query, { authorization: `Bearer ${CLIENT_KEY}` });
    assert.equal(everything.body.data?.checkoutSession?.status, 'COMPLETED', JSON.stringify(everything.body));
    const dhmadOnly = await post(router.graphql, query, { authorization: `Bearer ${LIMITED_KEY}` });
    assert.equal(dhmadOnly.body.data?.checkoutSession?.code, 'ACCESS_DENIED', JSON.stringify(dhmadOnly.body));
  });

  /** How many subscription connections of `transport` the gateway has open now. */
  async function openConnections(transport) {
    const metrics = await (await fetch(`${gateway.base}/metrics`)).text();
    const line = metrics.split('\n').find((l) => l.startsWith(`checkout_gateway_subscription_connections{transport="${transport}"} `));
    return Number(line?.split(' ')[1] ?? 0);
  }

  /**
   * The router, subscribed over `transport` (checked once the first answer is in), delivers a
   * signed webhook's change to its client within 1 s.
   */
  async function webhookReachesTheClient(subscription, id, transport) {
    await webhookReachesSubscriber({
      subscription,
      id,
      sessions,
      gateway: gateway.base,
      arrived: async () =>
        assert.equal(await openConnections(transport), 1, `the router reached the gateway over ${transport}`),
    });
  }

  it('checkoutSessionUpdated: router -> subgraph over WebSocket, the secret in connection_init', async () => {
    const subscription = subscribeOverWebSocket(overWebSocket, 'cks_over_websocket');
    await webhookReachesTheClient(subscription, 'cks_over_websocket', 'websocket');
  });

  it('checkoutSessionUpdated: router -> subgraph over SSE', async () => {
    await webhookReachesTheClient(subscribeOverSse(overHttp, 'cks_over_sse'), 'cks_over_sse', 'sse');
  });

  it('checkoutSessionUpdated: router -> subgraph over HTTP callback (callback/1.0)', async () => {
    const subscription = subscribeOverSse(overCallback, 'cks_over_callback');
    await webhookReachesTheClient(subscription, 'cks_over_callback', 'callback');
  });
});
