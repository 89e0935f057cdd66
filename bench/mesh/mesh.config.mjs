// Benchmark (k): GraphQL Mesh's JSON Schema source over Dodo's `GET /checkouts/{id}`, composed
// for Hive Gateway. The endpoint is the Dodo sandbox that bench/bench.py starts (DODO_URL), with
// its public demo key: the same upstream and the same session the gateway's rows (a) read.
import { defineConfig } from '@graphql-mesh/compose-cli';
import { loadJSONSchemaSubgraph } from '@omnigraph/json-schema';

if (!process.env.DODO_URL) throw new Error('DODO_URL (the Dodo sandbox base URL) is required');

export const composeConfig = defineConfig({
  output: process.env.SUPERGRAPH || 'supergraph.graphql',
  subgraphs: [
    {
      sourceHandler: loadJSONSchemaSubgraph('Dodo', {
        endpoint: process.env.DODO_URL,
        operationHeaders: { Authorization: 'Bearer demo_dodo_key' },
        operations: [
          {
            type: 'Query',
            field: 'checkout',
            path: '/checkouts/{args.id}',
            method: 'GET',
            argTypeMap: { id: { type: 'string', nullable: false } },
            responseTypeName: 'Checkout',
            // PROVIDERS.md's 200 body.
            responseSample: {
              id: 'cks_0Xa1',
              created_at: '2025-06-01T12:00:00Z',
              customer_email: 'ana@example.com',
              customer_name: 'Ana',
              payment_id: 'pay_9Qz',
              payment_status: 'succeeded',
            },
          },
        ],
      }),
    },
  ],
});
