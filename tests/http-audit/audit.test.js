// GraphQL over HTTP conformance: graphql-http's auditServer (the reference implementation's
// own checks, about 60 of them) against `checkout-gateway --demo`. Every requirement (MUST)
// and every recommendation (SHOULD) holds: no `error`, no `warn`. The only results allowed
// besides `ok` are the notices below, each a choice this gateway makes on purpose.
//
// Needs the binary: `cargo build` at the repository root, or CHECKOUT_GATEWAY_BIN=/path/to/it.

import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';

import { auditServer } from 'graphql-http';

import { startGateway } from '../support/gateway.js';

// A query in a GET URL runs only with a non-empty `apollo-require-preflight` (or
// `x-apollo-operation-name`) header: a page on another site can make a browser send a GET
// without a CORS preflight, and the answer would run with the browser's credentials (Apollo
// Router's CSRF prevention; README, Security). The audit's GETs send no such header, so these
// optional ("MAY") GET audits are refused with 400 and reported as notices. Every GET audit
// that expects a refusal (9C48: no mutation over GET) passes as it is.
const ALLOWED_NOTICES = new Map([
  ['5A70', 'MAY accept application/x-www-form-urlencoded formatted GET requests'],
  ['D6D5', 'MAY allow URL-encoded JSON string {variables} parameter in GETs when accepting application/graphql-response+json'],
  ['6A70', 'MAY allow URL-encoded JSON string {variables} parameter in GETs when accepting application/json'],
]);

let gateway;
before(async () => {
  gateway = await startGateway(['--demo']);
});
after(async () => {
  await gateway?.stop();
});

it('passes every GraphQL over HTTP audit of graphql-http, but the CSRF notices it names', async () => {
  const results = await auditServer({ url: `${gateway.base}/graphql`, fetchFn: fetch });
  const describe = (result) =>
    `${result.id} ${result.status}: ${result.name}${result.reason ? ` (${result.reason})` : ''}`;
  const unexpected = results.filter(
    (result) => result.status !== 'ok' && !(result.status === 'notice' && ALLOWED_NOTICES.has(result.id)),
  );
  assert.deepEqual(unexpected.map(describe), [], `unexpected results:\n${gateway.output()}`);
  // The audit ran whole, and each notice named here is still one (a notice that became `ok`
  // means the list, and the README, should lose it).
  assert.ok(results.length >= 50, `only ${results.length} audits ran`);
  const notices = results.filter((result) => result.status === 'notice').map((result) => result.id);
  assert.deepEqual(notices.sort(), [...ALLOWED_NOTICES.keys()].sort());
  for (const result of results.filter((result) => result.status === 'notice')) {
    assert.equal(result.name, ALLOWED_NOTICES.get(result.id));
  }
});
