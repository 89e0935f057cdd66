// A second, deliberately small Federation v2 subgraph: it owns `Order`, and each order refers to
// one of checkout-gateway's sessions by that entity's account key (`account id`): an order knows
// which of the merchant's accounts took the payment. (Declaring `provider` here too would let a
// query planner route through the smaller `provider id` key, to the provider's default account.) It also contributes a
// field, `order`, to checkout-gateway's `CheckoutSession` entity, so a query can travel in both
// directions through the Apollo Gateway:
//
//   orders -> checkoutSession { status ... }   (session fields come from checkout-gateway)
//   checkoutSession -> order { id total }      (order fields come from here, by the session's key)
//
// The orders point at the fixture sessions that `checkout-gateway --demo` serves, including ones
// that fail (FORBIDDEN, NOT_FOUND), so the test can see how entity errors cross the gateway.
//
// Run on its own with `node orders-subgraph.js` (PORT, default 4002) to try it against a mesh.

import { pathToFileURL } from 'node:url';

import { ApolloServer } from '@apollo/server';
import { ApolloServerPluginInlineTraceDisabled } from '@apollo/server/plugin/disabled';
import { startStandaloneServer } from '@apollo/server/standalone';
import { buildSubgraphSchema } from '@apollo/subgraph';
import { parse } from 'graphql';

export const typeDefsSource = /* GraphQL */ `
  extend schema
    @link(url: "https://specs.apollo.dev/federation/v2.3", import: ["@key"])

  type Query {
    orders: [Order!]!
    order(id: ID!): Order
  }

  type Order @key(fields: "id") {
    id: ID!
    "Amount in minor units (cents)."
    total: Int!
    "The checkout session that paid for this order; resolved by checkout-gateway."
    checkoutSession: CheckoutSession
  }

  "checkout-gateway's entity. This subgraph knows only its account key, and adds the order it paid for."
  type CheckoutSession @key(fields: "account id") {
    account: String!
    id: ID!
    order: Order
  }
`;

export const typeDefs = parse(typeDefsSource);

// Ids of checkout-gateway's demo fixtures (see `checkout-gateway --demo`).
export const DHMAD_COMPLETED = 'd4a1e000-0000-4000-8000-000000000002';
export const DHMAD_OPEN = 'd4a1e000-0000-4000-8000-000000000001';
export const DHMAD_FORBIDDEN = 'd4a1e000-0000-4000-8000-000000000403';

/** @type {{id: string, total: number, session: {account: string, id: string} | null}[]} */
export const ORDERS = [
  { id: 'ord_1001', total: 4200, session: { account: 'dodo', id: 'cks_demo_succeeded' } },
  { id: 'ord_1002', total: 1500, session: { account: 'dodo', id: 'cks_demo_open' } },
  { id: 'ord_1003', total: 999, session: { account: 'dodo', id: 'cks_demo_failed' } },
  { id: 'ord_1004', total: 2500, session: { account: 'dhmad', id: DHMAD_COMPLETED } },
  { id: 'ord_1005', total: 1200, session: { account: 'dhmad', id: DHMAD_OPEN } },
  { id: 'ord_1006', total: 700, session: { account: 'dodo', id: 'cks_err_403' } },
  { id: 'ord_1007', total: 300, session: { account: 'dhmad', id: DHMAD_FORBIDDEN } },
  { id: 'ord_1008', total: 100, session: { account: 'dodo', id: 'cks_missing' } },
  // A second order on the same unreadable session: the gateway sends both representations in one
  // `_entities` call, and each must get its own null and its own error.
  { id: 'ord_1010', total: 650, session: { account: 'dodo', id: 'cks_err_403' } },
  // Paid through the demo's second Dodo account (test mode): the same id there is another session.
  { id: 'ord_1011', total: 875, session: { account: 'dodo_test', id: 'cks_demo_succeeded' } },
  // An account checkout-gateway does not have: an UNKNOWN_ACCOUNT error for this order alone.
  { id: 'ord_1012', total: 25, session: { account: 'dodo_retired', id: 'cks_demo_succeeded' } },
  // An order paid some other way: no session, so the gateway must not ask checkout-gateway.
  { id: 'ord_1009', total: 50, session: null },
];

const orderById = (id) => ORDERS.find((o) => o.id === id) ?? null;

// Both key fields matter: the same id in another account is another session.
const orderBySession = ({ account, id }) =>
  ORDERS.find((o) => o.session && o.session.account === account && o.session.id === id) ?? null;

export const resolvers = {
  Query: {
    orders: () => ORDERS,
    order: (_parent, { id }) => orderById(id),
  },
  Order: {
    __resolveReference: ({ id }) => orderById(id),
    // Only the key goes back; the gateway fetches everything else from checkout-gateway.
    checkoutSession: (order) =>
      order.session && { __typename: 'CheckoutSession', ...order.session },
  },
  CheckoutSession: {
    __resolveReference: (ref) => ({ account: ref.account, id: ref.id }),
    order: (session) => orderBySession(session),
  },
};

/**
 * Start the orders subgraph on 127.0.0.1.
 * @param {{port?: number}} [options] port 0 (default) lets the OS pick a free one.
 * @returns {Promise<{url: string, stop: () => Promise<void>}>}
 */
export async function startOrdersSubgraph({ port = 0 } = {}) {
  const server = new ApolloServer({
    schema: buildSubgraphSchema({ typeDefs, resolvers }),
    // No federated tracing: nothing reads it here, and it would log a line on start.
    plugins: [ApolloServerPluginInlineTraceDisabled()],
  });
  const { url } = await startStandaloneServer(server, { listen: { host: '127.0.0.1', port } });
  return { url, stop: () => server.stop() };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { url } = await startOrdersSubgraph({ port: Number(process.env.PORT ?? 4002) });
  console.log(`orders subgraph ready at ${url}`);
}
