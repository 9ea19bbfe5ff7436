// The schema as a code generator sees it: fetched with graphql-js's standard
// introspection query, and every GraphQL operation in the README and docs/
// validated against it.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { test } from 'node:test';
import { Kind, buildClientSchema, getIntrospectionQuery, parse, validate } from 'graphql';
import { data } from './support.js';

const repo = new URL('../../', import.meta.url);

async function introspect() {
  return buildClientSchema(await data(getIntrospectionQuery()));
}

/** Every ```graphql block of the README and docs/*.md, with where it is. */
function documentedBlocks() {
  const files = ['README.md', ...readdirSync(new URL('docs/', repo)).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
  const blocks = [];
  for (const file of files) {
    const lines = readFileSync(new URL(file, repo), 'utf8').split('\n');
    for (let i = 0; i < lines.length; i += 1) {
      if (lines[i].trim() !== '```graphql') continue;
      const start = i + 1;
      let end = start;
      while (end < lines.length && lines[end].trim() !== '```') end += 1;
      blocks.push({ where: `${file}:${start}`, text: lines.slice(start, end).join('\n') });
      i = end;
    }
  }
  return blocks;
}

test('the standard introspection query of graphql-js is answered in full', { timeout: 120_000 }, async () => {
  const schema = await introspect();
  assert.equal(schema.getQueryType()?.name, 'Query');
  assert.equal(schema.getMutationType()?.name, 'Mutation');
  // Types are resolved all the way down (the nested `ofType`s), or
  // buildClientSchema would have thrown on the first list of non-nulls.
  assert.equal(String(schema.getQueryType().getFields().customers.type), 'CustomerConnection!');
  assert.equal(String(schema.getType('Customer').getFields().tags.type), '[CustomerTag!]!');
  assert.ok(schema.getQueryType().getFields().customers.description, 'descriptions come along');
});

test('every GraphQL operation in the README and docs/ is valid against the schema', { timeout: 120_000 }, async () => {
  const schema = await introspect();
  const blocks = documentedBlocks();
  assert.ok(blocks.length >= 5, `found only ${blocks.length} graphql blocks`);
  let operations = 0;
  const problems = [];
  for (const { where, text } of blocks) {
    let document;
    try {
      document = parse(text);
    } catch (error) {
      problems.push(`${where}: ${error.message}`);
      continue;
    }
    // A block may show several operations one after the other (a query,
    // then the mutation it prepares); each is checked as its own document.
    const fragments = document.definitions.filter((d) => d.kind === Kind.FRAGMENT_DEFINITION);
    for (const operation of document.definitions.filter((d) => d.kind === Kind.OPERATION_DEFINITION)) {
      operations += 1;
      const single = { kind: Kind.DOCUMENT, definitions: [operation, ...fragments] };
      for (const error of validate(schema, single)) {
        problems.push(`${where} (${operation.name?.value ?? operation.operation}): ${error.message}`);
      }
    }
  }
  assert.deepEqual(problems, []);
  assert.ok(operations >= blocks.length, `${operations} operations in ${blocks.length} blocks`);
});
