// tagbase through graphql-request and urql, each with its default settings
// (urql sends queries as GET): cursor paging both ways, a mutation with
// variables, and errors read by `extensions.code`.
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { describe, test } from 'node:test';
import { Client, fetchExchange, gql as urqlGql } from '@urql/core';
import { ClientError, GraphQLClient, gql } from 'graphql-request';
import { GRAPHQL, TOKENS, bearer, codes } from './support.js';

const asAdmin = new GraphQLClient(GRAPHQL, { headers: bearer(TOKENS.admin) });
const asSales = new GraphQLClient(GRAPHQL, { headers: bearer(TOKENS.sales) });

/** An urql client with its defaults, recording the HTTP method of each request. */
function urqlClient(token) {
  const methods = [];
  const client = new Client({
    url: GRAPHQL,
    exchanges: [fetchExchange],
    fetchOptions: () => ({ headers: bearer(token) }),
    fetch: (url, init) => {
      methods.push(init?.method ?? 'GET');
      return fetch(url, init);
    },
  });
  return { client, methods };
}

/** Runs `request` and answers the ClientError it must throw. */
async function refused(request) {
  try {
    await request;
  } catch (error) {
    assert.ok(error instanceof ClientError, `expected a GraphQL error, got ${error}`);
    return error;
  }
  assert.fail('the request succeeded');
}

const PAGE = gql`
  query CustomerPage($first: Int, $after: String, $last: Int, $before: String) {
    customers(first: $first, after: $after, last: $last, before: $before) {
      totalCount
      edges { cursor node { id name } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
`;
const ids = (page) => page.edges.map((edge) => edge.node.id);

describe('cursor paging (graphql-request)', () => {
  test('pages customers forward with first/after and back with last/before', { timeout: 120_000 }, async () => {
    const forward = [];
    let after = null;
    for (let i = 0; i < 3; i += 1) {
      const { customers } = await asAdmin.request(PAGE, { first: 5, after });
      assert.equal(customers.edges.length, 5);
      assert.ok(customers.pageInfo.hasNextPage);
      assert.equal(customers.pageInfo.startCursor, customers.edges[0].cursor);
      assert.equal(customers.pageInfo.endCursor, customers.edges[4].cursor);
      forward.push(customers);
      after = customers.pageInfo.endCursor;
    }
    assert.equal(new Set(forward.flatMap(ids)).size, 15, 'forward pages overlap');

    // Back from the third page: the same pages, in the same order.
    const second = (await asAdmin.request(PAGE, { last: 5, before: forward[2].pageInfo.startCursor })).customers;
    assert.deepEqual(ids(second), ids(forward[1]));
    assert.equal(second.pageInfo.hasPreviousPage, true);
    const first = (await asAdmin.request(PAGE, { last: 5, before: second.pageInfo.startCursor })).customers;
    assert.deepEqual(ids(first), ids(forward[0]));
    assert.equal(first.pageInfo.hasPreviousPage, false);
    assert.equal(first.totalCount, forward[0].totalCount);
  });

  test('last without before is the final page', { timeout: 120_000 }, async () => {
    const { customers: tail } = await asSales.request(PAGE, { last: 3 });
    assert.equal(tail.edges.length, 3);
    assert.equal(tail.pageInfo.hasPreviousPage, tail.totalCount > 3);
    // Nothing follows the final page going forward.
    const { customers: after } = await asSales.request(PAGE, { first: 5, after: tail.pageInfo.endCursor });
    assert.deepEqual(after.edges, []);
    assert.equal(after.pageInfo.hasNextPage, false);
  });
});

describe('a mutation with variables (graphql-request)', () => {
  const CREATE = gql`
    mutation Create($input: CreateCustomerInput!) {
      createCustomer(input: $input) { customer { id name city phone version orgUnit { id } } }
    }
  `;
  const UPDATE = gql`
    mutation Update($input: UpdateCustomerInput!) {
      updateCustomer(input: $input) { customer { id city version } }
    }
  `;

  test('creates and updates a customer; a stale version answers CONFLICT', { timeout: 120_000 }, async () => {
    const { me } = await asSales.request(gql`{ me { roles { orgUnit { id } } } }`);
    const orgUnitId = me.roles[0].orgUnit.id;
    const name = `客户端测试-${randomInt(1e9)}`;
    const { createCustomer } = await asSales.request(CREATE, {
      input: { orgUnitId, name, phone: `139${String(randomInt(1e8)).padStart(8, '0')}`, city: '深圳' },
    });
    const created = createCustomer.customer;
    assert.equal(created.name, name);
    assert.equal(created.city, '深圳');
    assert.equal(created.orgUnit.id, orgUnitId);

    const { updateCustomer } = await asSales.request(UPDATE, {
      input: { id: created.id, version: created.version, city: '广州' },
    });
    assert.equal(updateCustomer.customer.city, '广州');
    assert.equal(updateCustomer.customer.version, created.version + 1);

    const stale = await refused(asSales.request(UPDATE, { input: { id: created.id, version: created.version, city: '佛山' } }));
    assert.deepEqual(codes(stale.response.errors), ['CONFLICT']);

    // urql (a GET) reads what the mutation wrote.
    const { client } = urqlClient(TOKENS.sales);
    const read = await client
      .query(urqlGql`query One($id: ID!) { customer(id: $id) { city version } }`, { id: created.id })
      .toPromise();
    assert.equal(read.error, undefined, String(read.error));
    assert.deepEqual(read.data.customer, { city: '广州', version: created.version + 1 });
  });
});

describe('errors carry extensions.code', () => {
  test('no token: UNAUTHENTICATED with HTTP 401', { timeout: 120_000 }, async () => {
    const error = await refused(new GraphQLClient(GRAPHQL).request(gql`{ me { staff { login } } }`));
    assert.equal(error.response.status, 401);
    assert.deepEqual(codes(error.response.errors), ['UNAUTHENTICATED']);
  });

  test('a customer outside the caller\'s scope: NOT_FOUND', { timeout: 120_000 }, async () => {
    const { me } = await asSales.request(gql`{ me { roles { orgUnit { id } } } }`);
    const mine = new Set(me.roles.map((role) => role.orgUnit.id));
    const { customers } = await asAdmin.request(gql`{ customers(first: 100) { edges { node { id orgUnit { id } } } } }`);
    const elsewhere = customers.edges.find((edge) => !mine.has(edge.node.orgUnit.id));
    assert.ok(elsewhere, 'the demo has customers of other stores');
    const error = await refused(asSales.request(gql`query One($id: ID!) { customer(id: $id) { name } }`, { id: elsewhere.node.id }));
    assert.deepEqual(codes(error.response.errors), ['NOT_FOUND']);
  });

  test('an invalid document: VALIDATION', { timeout: 120_000 }, async () => {
    const error = await refused(asAdmin.request('{ customers { noSuchField } }'));
    assert.deepEqual(codes(error.response.errors), ['VALIDATION']);
  });
});

describe('urql with its defaults', () => {
  test('sends queries as GET and gets data', { timeout: 120_000 }, async () => {
    const { client, methods } = urqlClient(TOKENS.sales);
    const result = await client
      .query(urqlGql`query Few($first: Int) { customers(first: $first) { totalCount edges { node { id name } } } }`, { first: 3 })
      .toPromise();
    assert.equal(result.error, undefined, String(result.error));
    assert.equal(result.data.customers.edges.length, 3);
    assert.ok(result.data.customers.totalCount >= 3);
    assert.deepEqual(methods, ['GET']);
  });

  test('reads a GraphQL error by code over GET', { timeout: 120_000 }, async () => {
    const { client, methods } = urqlClient(TOKENS.sales);
    const result = await client.query(urqlGql`{ customers { noSuchField } }`, {}).toPromise();
    assert.ok(result.error, 'an error');
    assert.deepEqual(codes(result.error.graphQLErrors), ['VALIDATION']);
    assert.deepEqual(methods, ['GET']);
  });
});
