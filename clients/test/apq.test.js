// Automatic persisted queries as Apollo Client's persisted-query link speaks
// them: a hash alone first (miss: PersistedQueryNotFound), the link falls
// back and registers the query, and from then on the hash alone is enough.
import assert from 'node:assert/strict';
import { createHash, randomInt } from 'node:crypto';
import { test } from 'node:test';
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { PersistedQueryLink } from '@apollo/client/link/persisted-queries';
import { GRAPHQL, TOKENS, bearer } from './support.js';

const sha256 = (text) => createHash('sha256').update(text).digest('hex');

/** An Apollo client with the persisted-query link, recording what it sends and gets. */
function apolloClient(exchanges) {
  const http = new HttpLink({
    uri: GRAPHQL,
    headers: bearer(TOKENS.sales),
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      const answer = await response.clone().json();
      exchanges.push({ method: init.method, sent: JSON.parse(init.body), status: response.status, answer });
      return response;
    },
  });
  return new ApolloClient({ link: ApolloLink.from([new PersistedQueryLink({ sha256 }), http]), cache: new InMemoryCache() });
}

test('Apollo persisted-query link: hash-only miss, registration, then hash-only hit', { timeout: 120_000 }, async () => {
  // A query this run has never sent (the alias makes its hash new).
  const query = gql`
    query PersistedCustomers {
      customers(first: 2) { totalCount edges { node { id name } } }
      run${randomInt(1e9)}: __typename
    }
  `;

  const first = [];
  const registered = await apolloClient(first).query({ query, fetchPolicy: 'network-only' });
  assert.equal(registered.data.customers.edges.length, 2);
  assert.equal(first.length, 2, JSON.stringify(first));
  const [miss, registration] = first;
  assert.equal(miss.sent.query, undefined, 'the first request carries the hash alone');
  assert.equal(miss.answer.errors?.[0]?.message, 'PersistedQueryNotFound', JSON.stringify(miss.answer));
  // The link hashes the document it sends (Apollo's cache adds __typename
  // fields to it), so the hash is that of the registered text.
  const hash = miss.sent.extensions.persistedQuery.sha256Hash;
  assert.equal(hash, sha256(registration.sent.query));
  assert.match(registration.sent.query, /query PersistedCustomers/);
  assert.equal(registration.sent.extensions.persistedQuery.sha256Hash, hash);
  assert.equal(registration.status, 200);

  // Another client (a fresh cache, as another phone): the hash alone runs it.
  const second = [];
  const hit = await apolloClient(second).query({ query, fetchPolicy: 'network-only' });
  assert.deepEqual(hit.data.customers, registered.data.customers);
  assert.equal(second.length, 1, JSON.stringify(second));
  assert.equal(second[0].sent.query, undefined);
  assert.equal(second[0].sent.extensions.persistedQuery.sha256Hash, hash);
  assert.equal(second[0].answer.errors, undefined);
});

test('a hash that does not match its query is refused', { timeout: 120_000 }, async () => {
  const response = await fetch(GRAPHQL, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...bearer(TOKENS.sales) },
    body: JSON.stringify({
      query: '{ me { staff { login } } }',
      extensions: { persistedQuery: { version: 1, sha256Hash: sha256('{ something else }') } },
    }),
  });
  const body = await response.json();
  assert.equal(body.data ?? null, null, JSON.stringify(body));
  assert.ok(body.errors?.length, JSON.stringify(body));
  assert.equal(typeof body.errors[0].extensions?.code, 'string', JSON.stringify(body));
});
