// A Dodo Payments stand-in and its signed webhooks, for the Node suites that run the gateway
// behind a router (tests/subscriptions, tests/routers): plain Node, no dependencies, imported
// by relative path.

import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import http from 'node:http';

/** `checkoutSessionUpdated` for the Dodo session `$id`: its state, or its error's code. */
export const DODO_SESSION_UPDATED = `subscription($id: ID!) {
  checkoutSessionUpdated(provider: DODO, id: $id) {
    __typename
    ... on CheckoutSession { id status providerStatus }
    ... on CheckoutError { code }
  }
}`;

/** The API key the stand-in accepts (`DODO_PAYMENTS_API_KEY`). */
export const DODO_KEY = 'dodo_key_for_the_router_test';
/** A Standard Webhooks secret as Dodo's dashboard shows one (`DODO_PAYMENTS_WEBHOOK_KEY`). */
export const WEBHOOK_SECRET = `whsec_${Buffer.from('router-test-webhook-secret').toString('base64')}`;

/**
 * Dodo's `GET /checkouts/{id}` on 127.0.0.1, answering from `sessions` (the test changes
 * them): id → payment status (`null`: no payment yet), or `{ httpStatus }` for a refusal
 * such as 403. Unknown ids are 404. Resolves to the listening server.
 */
export function startDodo(sessions) {
  const server = http.createServer((request, response) => {
    const id = decodeURIComponent(request.url.replace(/^\/checkouts\//, ''));
    const refuse = (status, code, message) => {
      response.writeHead(status, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ code, message }));
    };
    if (request.headers.authorization !== `Bearer ${DODO_KEY}`) return refuse(401, 'UNAUTHORIZED');
    const status = sessions.get(id);
    if (status === undefined) return refuse(404, 'NOT_FOUND', 'Item not found');
    if (status?.httpStatus) return refuse(status.httpStatus, 'REFUSED', 'refused by the test');
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(
      JSON.stringify({
        id,
        created_at: '2025-06-01T12:00:00Z',
        customer_email: 'ana@example.com',
        customer_name: 'Ana',
        payment_id: status ? 'pay_router' : null,
        payment_status: status,
      }),
    );
  });
  return new Promise((ready) => server.listen(0, '127.0.0.1', () => ready(server)));
}

/** The gateway's environment for one Dodo account at the stand-in `dodo`, webhooks on. */
export function dodoEnv(dodo) {
  return {
    DODO_PAYMENTS_API_KEY: DODO_KEY,
    DODO_PAYMENTS_BASE_URL: `http://127.0.0.1:${dodo.address().port}`,
    DODO_PAYMENTS_WEBHOOK_KEY: WEBHOOK_SECRET,
  };
}

/**
 * Signs a delivery as Dodo does (Standard Webhooks) and posts it to the gateway at `gateway`
 * (its base URL): a `type` event whose payment belongs to checkout session `sessionId`.
 * Fails unless the gateway answers 200. Resolves to the moment it was sent (ms).
 */
export async function sendPaymentWebhook(gateway, type, sessionId, status) {
  const sent = Date.now();
  const data = { payment_id: 'pay_router', checkout_session_id: sessionId, status };
  const id = `msg_${randomUUID()}`;
  const timestamp = Math.floor(Date.now() / 1000);
  const body = JSON.stringify({ business_id: 'bus_router', type, timestamp: new Date().toISOString(), data });
  const key = Buffer.from(WEBHOOK_SECRET.slice('whsec_'.length), 'base64');
  const signature = createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64');
  const response = await fetch(`${gateway}/webhooks/dodo`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'webhook-id': id,
      'webhook-timestamp': String(timestamp),
      'webhook-signature': `v1,${signature}`,
    },
    body,
  });
  assert.equal(response.status, 200, await response.text());
  return sent;
}

/**
 * A subscription to Dodo session `id` through a router (`subscription`: `nth(i, timeoutMs)`
 * and `close()`, as tests/support/arrivals.js keeps them): its first answer is the session
 * OPEN; then the session changes at the stand-in (`sessions`), its signed webhook goes to the
 * gateway at `gateway` (its base URL), and the change must reach the subscriber within a
 * second. `arrived`, if given, runs once the first answer is in (to check how it came).
 * Closes the subscription however it ends.
 */
export async function webhookReachesSubscriber({ subscription, id, sessions, gateway, arrived }) {
  try {
    const first = await subscription.nth(0);
    assert.deepEqual(
      first.result.data?.checkoutSessionUpdated,
      { __typename: 'CheckoutSession', id, status: 'OPEN', providerStatus: null },
      JSON.stringify(first.result),
    );
    await arrived?.();
    sessions.set(id, 'succeeded');
    const sent = await sendPaymentWebhook(gateway, 'payment.succeeded', id, 'succeeded');
    const update = await subscription.nth(1, 5_000);
    assert.equal(update.result.data?.checkoutSessionUpdated?.status, 'COMPLETED', JSON.stringify(update.result));
    const took = update.at - sent;
    assert.ok(took < 1_000, `the update took ${took} ms`);
  } finally {
    subscription.close();
  }
}
