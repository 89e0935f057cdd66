// checkout-gateway as an Apollo Federation v2 subgraph, proven with the real thing.
//
// 1. Composition: the committed schema.graphql and the orders subgraph's SDL compose with
//    @apollo/composition, and the supergraph's CheckoutSession carries fields of both.
// 2. End to end: the built binary runs in `--demo` mode, next to the orders subgraph
//    (orders-subgraph.js), behind an Apollo Gateway that builds its supergraph with
//    IntrospectAndCompose. Queries cross both subgraphs in both directions, and an entity error's
//    `extensions.code` survives the trip through the gateway.
//
// Needs the binary: `cargo build` at the repository root, or CHECKOUT_GATEWAY_BIN=/path/to/it.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { composeServices } from '@apollo/composition';
import { ApolloGateway, IntrospectAndCompose } from '@apollo/gateway';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { buildSchema, Kind, parse, print } from 'graphql';

import { startGateway } from '../support/gateway.js';
import {
  DHMAD_COMPLETED,
  DHMAD_OPEN,
  startOrdersSubgraph,
  typeDefs as ordersTypeDefs,
} from './orders-subgraph.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const COMMITTED_SDL = resolve(REPO, 'schema.graphql');

// --- helpers ------------------------------------------------------------------------------------

/** `checkout-gateway --demo` on a free port, once /readyz answers; `url` is its GraphQL endpoint. */
async function startCheckoutGateway() {
  const gateway = await startGateway(['--demo']);
  return { ...gateway, url: `${gateway.base}/graphql` };
}

/** POST a GraphQL request and return the parsed body; any HTTP status but 200 fails. */
async function graphql(url, query, variables) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `HTTP ${res.status} from ${url}: ${text}`);
  return JSON.parse(text);
}

/**
 * The shape of an SDL as a sorted list of facts: types, fields with argument and result types,
 * enum values, union members, keys. Federation plumbing (`_service`, `_entities`, `_Any`, ...)
 * and directive definitions are left out, so two printings of one schema compare equal.
 */
function sdlShape(sdl) {
  const facts = new Set();
  for (const def of parse(sdl).definitions) {
    if (!def.name || def.kind === Kind.DIRECTIVE_DEFINITION) continue;
    const name = def.name.value;
    if (name.startsWith('_')) continue;
    facts.add(`${def.kind.replace('_EXTENSION', '_DEFINITION')} ${name}`);
    for (const field of def.fields ?? []) {
      if (field.name.value.startsWith('_')) continue;
      const args = (field.arguments ?? []).map((a) => `${a.name.value}: ${print(a.type)}`);
      const type = print(field.type);
      facts.add(`${name}.${field.name.value}${args.length ? `(${args.join(', ')})` : ''}: ${type}`);
    }
    for (const value of def.values ?? []) facts.add(`${name}.${value.name.value}`);
    for (const member of def.types ?? []) facts.add(`${name} | ${member.name.value}`);
    for (const directive of def.directives ?? []) {
      if (directive.name.value === 'key') facts.add(`${name} ${print(directive)}`);
    }
  }
  return [...facts].sort();
}

/** `path.joined -> [[code, provider], ...]` over a response's errors. */
function errorsByPath(body) {
  const seen = new Map();
  for (const e of body.errors ?? []) {
    const path = (e.path ?? []).join('.');
    seen.set(path, [...(seen.get(path) ?? []), [e.extensions?.code, e.extensions?.provider]]);
  }
  return seen;
}

const hasKey = (typeDef, graph, key) =>
  typeDef.astNode.directives.some(
    (d) =>
      d.name.value === 'join__type' &&
      d.arguments.some((a) => a.name.value === 'graph' && a.value.value === graph) &&
      d.arguments.some((a) => a.name.value === 'key' && a.value.value === key),
  );

const joinGraphsOfField = (typeDef, field) =>
  typeDef
    .getFields()
    [field].astNode.directives.filter((d) => d.name.value === 'join__field')
    .map((d) => d.arguments.find((a) => a.name.value === 'graph')?.value.value)
    .filter(Boolean)
    .sort();

// --- composition (no binary needed) -------------------------------------------------------------

describe('composition of schema.graphql with the orders subgraph', () => {
  it('composes with no errors, and CheckoutSession holds both subgraphs\' fields', () => {
    const checkoutSdl = readFileSync(COMMITTED_SDL, 'utf8');
    assert.match(
      checkoutSdl,
      /@link\(\s*url:\s*"https:\/\/specs\.apollo\.dev\/federation\/v2\.\d+"/,
      'schema.graphql must declare Federation v2 with @link',
    );

    const result = composeServices([
      { name: 'checkout', url: 'http://checkout.invalid/graphql', typeDefs: parse(checkoutSdl) },
      { name: 'orders', url: 'http://orders.invalid/graphql', typeDefs: ordersTypeDefs },
    ]);
    assert.equal(
      result.errors,
      undefined,
      `composition errors:\n${(result.errors ?? []).map((e) => `- ${e.message}`).join('\n')}`,
    );

    const supergraph = buildSchema(result.supergraphSdl);
    const session = supergraph.getType('CheckoutSession');
    assert.ok(session, 'supergraph has CheckoutSession');

    // An entity of both subgraphs: checkout resolves both keys, orders refers by the account key.
    assert.ok(hasKey(session, 'CHECKOUT', 'provider id'), 'CheckoutSession @key(provider id) from checkout');
    assert.ok(hasKey(session, 'CHECKOUT', 'account id'), 'CheckoutSession @key(account id) from checkout');
    assert.ok(hasKey(session, 'ORDERS', 'account id'), 'CheckoutSession @key from orders');

    const fields = Object.keys(session.getFields());
    for (const f of ['provider', 'id', 'status', 'providerStatus', 'customerEmail', 'fetchedAt', 'details', 'order']) {
      assert.ok(fields.includes(f), `CheckoutSession.${f} in the supergraph (has ${fields})`);
    }
    // Who resolves what: session data from us, the order from the other subgraph, keys from both.
    assert.deepEqual(joinGraphsOfField(session, 'status'), ['CHECKOUT']);
    assert.deepEqual(joinGraphsOfField(session, 'customerEmail'), ['CHECKOUT']);
    assert.deepEqual(joinGraphsOfField(session, 'order'), ['ORDERS']);
    // Key fields shared by both carry no @join__field: either subgraph can resolve them.
    assert.deepEqual(joinGraphsOfField(session, 'id'), []);
    assert.deepEqual(joinGraphsOfField(session, 'account'), []);
    // `provider` is ours alone: orders refers by `account id` (account names are unique).
    assert.deepEqual(joinGraphsOfField(session, 'provider'), ['CHECKOUT']);

    const queryType = supergraph.getQueryType();
    const query = Object.keys(queryType.getFields());
    for (const f of ['checkoutSession', 'checkoutSessions', 'orders', 'order']) {
      assert.ok(query.includes(f), `Query.${f} in the supergraph (has ${query})`);
    }
    assert.deepEqual(joinGraphsOfField(queryType, 'checkoutSession'), ['CHECKOUT']);
    assert.deepEqual(joinGraphsOfField(queryType, 'orders'), ['ORDERS']);
    assert.ok(supergraph.getType('Order'), 'supergraph has Order');
  });
});

// --- end to end through an Apollo Gateway -------------------------------------------------------

describe('checkout-gateway --demo behind an Apollo Gateway (IntrospectAndCompose)', { timeout: 120_000 }, () => {
  let checkout;
  let orders;
  let server;
  let gatewayUrl;
  const query = (q, variables) => graphql(gatewayUrl, q, variables);

  before(async () => {
    // One at a time, so that `after` can stop whichever did start when the other fails.
    orders = await startOrdersSubgraph();
    checkout = await startCheckoutGateway();
    const gateway = new ApolloGateway({
      supergraphSdl: new IntrospectAndCompose({
        subgraphs: [
          { name: 'checkout', url: checkout.url },
          { name: 'orders', url: orders.url },
        ],
      }),
    });
    // No stack traces in error extensions: they would only clutter assertion messages.
    server = new ApolloServer({ gateway, includeStacktraceInErrorResponses: false });
    ({ url: gatewayUrl } = await startStandaloneServer(server, {
      listen: { host: '127.0.0.1', port: 0 },
    }));
  });

  after(async () => {
    // Each one independently: a failure to start one must not leave another running.
    await Promise.allSettled([server?.stop(), orders?.stop(), checkout?.stop()]);
  });

  it('serves a Federation v2 SDL from _service that matches the committed schema.graphql', async () => {
    const body = await graphql(checkout.url, '{ _service { sdl } }');
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    const live = body.data._service.sdl;
    assert.match(live, /@link\(\s*url:\s*"https:\/\/specs\.apollo\.dev\/federation\/v2\.\d+"/);
    assert.match(live, /type CheckoutSession @key\(fields: "provider id"\) @key\(fields: "account id"\)/);
    assert.deepEqual(sdlShape(live), sdlShape(readFileSync(COMMITTED_SDL, 'utf8')));
  });

  it('orders -> session: session fields come from checkout-gateway, errors stay per order', async () => {
    const body = await query(`{
      orders {
        id
        total
        checkoutSession { provider id status providerStatus customerEmail }
      }
    }`);
    const byId = Object.fromEntries(body.data.orders.map((o) => [o.id, o]));

    assert.deepEqual(byId.ord_1001.checkoutSession, {
      provider: 'DODO',
      id: 'cks_demo_succeeded',
      status: 'COMPLETED',
      providerStatus: 'succeeded',
      customerEmail: 'ana@example.com',
    });
    assert.equal(byId.ord_1002.checkoutSession.status, 'OPEN');
    assert.equal(byId.ord_1002.checkoutSession.providerStatus, null);
    assert.equal(byId.ord_1003.checkoutSession.status, 'FAILED');
    assert.equal(byId.ord_1004.checkoutSession.provider, 'DHMAD');
    assert.equal(byId.ord_1004.checkoutSession.id, DHMAD_COMPLETED);
    assert.equal(byId.ord_1004.checkoutSession.status, 'COMPLETED');
    assert.equal(byId.ord_1004.checkoutSession.providerStatus, 'completed');
    assert.equal(byId.ord_1005.checkoutSession.status, 'OPEN');
    assert.equal(byId.ord_1005.checkoutSession.providerStatus, 'pending');
    assert.equal(byId.ord_1009.checkoutSession, null, 'an order with no session stays null');

    // The sessions that cannot be read are null, each with a coded error at its own path, and
    // they did not take the rest of the list down with them.
    for (const id of ['ord_1006', 'ord_1007', 'ord_1008', 'ord_1010']) {
      assert.equal(byId[id].checkoutSession, null, `${id}.checkoutSession`);
      assert.equal(typeof byId[id].total, 'number', `${id} itself still resolves`);
    }
    const seen = errorsByPath(body);
    const at = (id) => `orders.${body.data.orders.findIndex((o) => o.id === id)}.checkoutSession`;
    const context = `errors: ${JSON.stringify(body.errors, null, 2)}`;
    assert.deepEqual(seen.get(at('ord_1006'))?.[0], ['FORBIDDEN', 'DODO'], context);
    assert.deepEqual(seen.get(at('ord_1007'))?.[0], ['FORBIDDEN', 'DHMAD'], context);
    assert.deepEqual(seen.get(at('ord_1008'))?.[0], ['NOT_FOUND', 'DODO'], context);
    // No error anywhere else (ord_1010 shares ord_1006's session; see the next test).
    const allowed = new Set(['ord_1006', 'ord_1007', 'ord_1008', 'ord_1010', 'ord_1012'].map(at));
    for (const path of seen.keys()) assert.ok(allowed.has(path), `unexpected error at ${path}; ${context}`);
  });

  it('orders -> session: two orders on one unreadable session each get exactly one error', async () => {
    // ord_1006 and ord_1010 both point at DODO cks_err_403, so the gateway sends the same
    // representation twice in one `_entities` call (it does not deduplicate). Each null needs
    // its own error at its own index; otherwise the gateway puts both errors on the first order
    // and the second order's null has no error at all.
    const body = await query('{ orders { id checkoutSession { status } } }');
    const at = (id) => `orders.${body.data.orders.findIndex((o) => o.id === id)}.checkoutSession`;
    const seen = errorsByPath(body);
    const context = `errors: ${JSON.stringify(body.errors, null, 2)}`;
    assert.deepEqual(seen.get(at('ord_1006')), [['FORBIDDEN', 'DODO']], context);
    assert.deepEqual(seen.get(at('ord_1010')), [['FORBIDDEN', 'DODO']], context);
    assert.deepEqual(seen.get(at('ord_1007')), [['FORBIDDEN', 'DHMAD']], context);
    assert.deepEqual(seen.get(at('ord_1008')), [['NOT_FOUND', 'DODO']], context);
    // An unknown account in an `account id` representation names no provider: none is known.
    assert.deepEqual(seen.get(at('ord_1012')), [['UNKNOWN_ACCOUNT', undefined]], context);
    assert.equal(body.errors.length, 5, context);
  });

  it('orders -> session by the account key: the named account answers', async () => {
    const body = await query(`{
      a: order(id: "ord_1001") { checkoutSession { provider account id status } }
      b: order(id: "ord_1011") { checkoutSession { provider account id status } }
    }`);
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    assert.deepEqual(body.data.a.checkoutSession,
      { provider: 'DODO', account: 'dodo', id: 'cks_demo_succeeded', status: 'COMPLETED' });
    assert.deepEqual(body.data.b.checkoutSession,
      { provider: 'DODO', account: 'dodo_test', id: 'cks_demo_succeeded', status: 'COMPLETED' });
  });

  it('session -> order by the account key: the same id in another account is another order', async () => {
    const body = await query(`{
      live: checkoutSession(provider: DODO, id: "cks_demo_succeeded") { ... on CheckoutSession { account order { id } } }
      test: checkoutSession(provider: DODO, id: "cks_demo_succeeded", account: "dodo_test") { ... on CheckoutSession { account order { id } } }
    }`);
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    assert.deepEqual(body.data, {
      live: { account: 'dodo', order: { id: 'ord_1001' } },
      test: { account: 'dodo_test', order: { id: 'ord_1011' } },
    });
  });

  it('session -> order: the order comes from the other subgraph, by our key', async () => {
    const body = await query(`{
      checkoutSession(provider: DODO, id: "cks_demo_succeeded") {
        __typename
        ... on CheckoutSession { provider id status order { id total } }
      }
    }`);
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    assert.deepEqual(body.data.checkoutSession, {
      __typename: 'CheckoutSession',
      provider: 'DODO',
      id: 'cks_demo_succeeded',
      status: 'COMPLETED',
      order: { id: 'ord_1001', total: 4200 },
    });
  });

  it('session -> order, batched: each ref finds its own order, provider included in the key', async () => {
    const body = await query(
      `query ($refs: [CheckoutSessionRef!]!) {
        checkoutSessions(refs: $refs) {
          __typename
          ... on CheckoutSession { provider id status order { id total } }
        }
      }`,
      {
        refs: [
          { provider: 'DHMAD', id: DHMAD_COMPLETED },
          { provider: 'DODO', id: 'cks_demo_open' },
          { provider: 'DHMAD', id: DHMAD_OPEN },
        ],
      },
    );
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    assert.deepEqual(
      body.data.checkoutSessions.map((s) => [s.__typename, s.provider, s.id, s.status, s.order?.id]),
      [
        ['CheckoutSession', 'DHMAD', DHMAD_COMPLETED, 'COMPLETED', 'ord_1004'],
        ['CheckoutSession', 'DODO', 'cks_demo_open', 'OPEN', 'ord_1002'],
        ['CheckoutSession', 'DHMAD', DHMAD_OPEN, 'OPEN', 'ord_1005'],
      ],
    );
  });

  it('an entity error keeps its extensions.code through the gateway (cks_err_403 -> FORBIDDEN)', async () => {
    const body = await query(`{
      order(id: "ord_1006") { id total checkoutSession { status customerEmail } }
    }`);
    assert.deepEqual(body.data.order, { id: 'ord_1006', total: 700, checkoutSession: null });
    assert.ok(Array.isArray(body.errors), 'the response carries errors');
    const forbidden = body.errors.filter((e) => e.extensions?.code === 'FORBIDDEN');
    assert.equal(forbidden.length, 1, `one FORBIDDEN error: ${JSON.stringify(body.errors, null, 2)}`);
    const [error] = forbidden;
    assert.equal(error.extensions.provider, 'DODO');
    assert.equal(error.extensions.serviceName, 'checkout', 'the gateway names the subgraph it came from');
    assert.deepEqual(error.path, ['order', 'checkoutSession']);
    assert.equal(typeof error.message, 'string');
    assert.ok(error.message.length > 0);
  });
});
