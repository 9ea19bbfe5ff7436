// Subscriptions through the `graphql-ws` client (graphql-transport-ws) over
// the `ws` WebSocket: a salesperson's tag change arrives with its sequence
// number, a resume with `afterSeq` after a disconnect gets exactly what was
// missed, and a bad token is refused with close code 4403.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { API, TOKENS, data } from './support.js';

const WS = `${API.replace(/^http/, 'ws')}/graphql/ws`;

const TAG_CHANGES = `subscription($after: Int, $t: [ID!]) {
  tagChanges(afterSeq: $after, tagIds: $t) { seq op customerId tagId }
}`;
const TAG = `mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }`;
const UNTAG = `mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) { removed } }`;

function client(token, on = {}) {
  return createClient({
    url: WS,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: `Bearer ${token}` },
    retryAttempts: 0,
    on,
  });
}

/** Collects `n` items of a subscription, then stops it. */
function take(wsClient, query, variables, n) {
  return new Promise((resolve, reject) => {
    const items = [];
    const timer = setTimeout(() => reject(new Error(`only ${items.length} of ${n} items arrived`)), 60_000);
    const dispose = wsClient.subscribe(
      { query, variables },
      {
        next: (result) => {
          if (result.errors) {
            clearTimeout(timer);
            reject(new Error(JSON.stringify(result.errors)));
            return;
          }
          items.push(result.data.tagChanges);
          if (items.length === n) {
            clearTimeout(timer);
            dispose();
            resolve(items);
          }
        },
        error: (error) => {
          clearTimeout(timer);
          reject(error);
        },
        complete: () => {},
      },
    );
  });
}

/** The sequence number in a TagEvent's global id (`TagEvent:<seq>`, base64url). */
function seqOf(globalId) {
  const [type, seq] = Buffer.from(globalId, 'base64url').toString('utf8').split(':');
  assert.equal(type, 'TagEvent');
  return Number(seq);
}

/** A customer of the salesperson's store, the 询价 tag, and the newest event of the pair. */
async function fixture() {
  const { customers } = await data(`{ customers(first: 1) { edges { node { id orgUnit { id } } } } }`, {
    token: TOKENS.sales,
  });
  const customer = customers.edges[0].node;
  const { tagLibrary } = await data(`query($u: ID!) { tagLibrary(orgUnitId: $u) { groups { name tags { id name } } } }`, {
    token: TOKENS.sales,
    variables: { u: customer.orgUnit.id },
  });
  const tag = tagLibrary.groups.find((g) => g.name === '活动').tags.find((t) => t.name === '询价');
  // Untag then tag: the customer's newest event is then ours.
  await data(UNTAG, { token: TOKENS.sales, variables: { c: [customer.id], t: [tag.id] } });
  await data(TAG, { token: TOKENS.sales, variables: { c: [customer.id], t: [tag.id] } });
  const { customer: history } = await data(`query($id: ID!) { customer(id: $id) { tagEvents(first: 1) { edges { node { id } } } } }`, {
    token: TOKENS.sales,
    variables: { id: customer.id },
  });
  return { customer: customer.id, tag: tag.id, seq: seqOf(history.tagEvents.edges[0].node.id) };
}

describe('subscriptions (graphql-ws)', () => {
  test('a change arrives with its seq, and a resume with afterSeq gets exactly what was missed', { timeout: 120_000 }, async () => {
    const { customer, tag, seq } = await fixture();
    const sales = client(TOKENS.sales);
    try {
      const live = take(sales, TAG_CHANGES, { after: seq, t: [tag] }, 1);
      await data(UNTAG, { token: TOKENS.sales, variables: { c: [customer], t: [tag] } });
      const [removed] = await live;
      assert.equal(removed.op, 'REMOVE');
      assert.equal(removed.customerId, customer);
      assert.ok(removed.seq > seq);
      // Disconnected meanwhile: two changes happen, then a resume.
      await data(TAG, { token: TOKENS.sales, variables: { c: [customer], t: [tag] } });
      await data(UNTAG, { token: TOKENS.sales, variables: { c: [customer], t: [tag] } });
      const missed = await take(sales, TAG_CHANGES, { after: removed.seq, t: [tag] }, 2);
      assert.deepEqual(missed.map((c) => c.op), ['ADD', 'REMOVE']);
      assert.ok(missed[0].seq > removed.seq && missed[1].seq > missed[0].seq, 'in order, none twice');
      await data(TAG, { token: TOKENS.sales, variables: { c: [customer], t: [tag] } });
    } finally {
      await sales.dispose();
    }
  });

  test('a bad token is refused with close code 4403', { timeout: 60_000 }, async () => {
    let closedWith;
    const refused = client('not-a-token', { closed: (event) => { closedWith = event.code; } });
    const error = await take(refused, TAG_CHANGES, {}, 1).then(
      () => assert.fail('subscribed with a bad token'),
      (e) => e,
    );
    assert.equal(error.code ?? closedWith, 4403);
    assert.equal(closedWith, 4403);
    await refused.dispose();
  });
});
