// Headless Chromium: a page on another origin calling the API (CORS), and the
// playground working with no network beyond the server.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ALLOWED_ORIGIN, API, GRAPHQL, TOKENS, launchChromium, staticServer } from './support.js';

const PAGE_HTML = '<!doctype html><html><head><meta charset="utf-8"><title>front end</title></head><body>front end</body></html>';

let browser;
let profile;
before(async () => {
  profile = mkdtempSync(path.join(tmpdir(), 'tagbase-chromium-'));
  browser = await launchChromium(profile);
});
after(async () => {
  await browser?.close();
  rmSync(profile, { recursive: true, force: true });
});

/** Runs `body` with a new page, closed afterwards. */
async function withPage(body) {
  const page = await browser.newPage();
  try {
    return await body(page);
  } finally {
    await page.close();
  }
}

/** From a page of `origin`, POSTs a query with a bearer token, as a front end's fetch would. */
async function callFromPage(origin) {
  return withPage(async (page) => {
    await page.goto(`${origin}/`);
    return await page.evaluate(
      async ({ url, token }) => {
        try {
          const response = await fetch(url, {
            method: 'POST',
            headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
            body: JSON.stringify({ query: '{ me { staff { login } } }' }),
          });
          return { status: response.status, requestId: response.headers.get('x-request-id'), body: await response.json() };
        } catch (error) {
          return { refused: String(error) };
        }
      },
      { url: GRAPHQL, token: TOKENS.sales },
    );
  });
}

/** A CORS preflight as a browser sends it for a JSON POST with a token. */
function preflight(origin) {
  return fetch(GRAPHQL, {
    method: 'OPTIONS',
    headers: {
      Origin: origin,
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'authorization,content-type',
    },
  });
}

describe('CORS (TAGBASE_CORS_ORIGINS)', () => {
  test('a page on a listed origin calls the API and gets data', { timeout: 120_000 }, async () => {
    const listed = await staticServer(Number(new URL(ALLOWED_ORIGIN).port), PAGE_HTML);
    try {
      assert.equal(listed.origin, ALLOWED_ORIGIN);
      const answer = await callFromPage(listed.origin);
      assert.equal(answer.refused, undefined, answer.refused);
      assert.equal(answer.status, 200);
      assert.deepEqual(answer.body, { data: { me: { staff: { login: 'sz01.sales' } } } });
      assert.ok(answer.requestId, 'x-request-id is exposed to the page');

      const response = await preflight(listed.origin);
      assert.ok(response.status >= 200 && response.status < 300, `preflight answered ${response.status}`);
      assert.equal(response.headers.get('access-control-allow-origin'), listed.origin);
      const allowed = (response.headers.get('access-control-allow-headers') || '').toLowerCase();
      assert.match(allowed, /authorization/);
      assert.match(allowed, /content-type/);
    } finally {
      await listed.close();
    }
  });

  test('a page on an unlisted origin is refused', { timeout: 120_000 }, async () => {
    const unlisted = await staticServer(0, PAGE_HTML);
    try {
      assert.notEqual(unlisted.origin, ALLOWED_ORIGIN);
      const answer = await callFromPage(unlisted.origin);
      assert.match(answer.refused ?? '', /Failed to fetch/, JSON.stringify(answer));
      const response = await preflight(unlisted.origin);
      assert.equal(response.headers.get('access-control-allow-origin'), null);
    } finally {
      await unlisted.close();
    }
  });
});

/**
 * Opens GraphiQL's docs pane and waits until it shows the schema; fails at
 * once, with what the server answered, when the schema fetch failed.
 */
async function openDocs(page) {
  await page.getByRole('button', { name: 'Show Documentation Explorer' }).click();
  const docs = page.locator('.graphiql-doc-explorer');
  const loaded = docs.getByRole('link', { name: 'Query', exact: true });
  const failed = docs.locator('.graphiql-doc-explorer-error');
  await loaded.or(failed).first().waitFor({ timeout: 30_000 });
  if (await failed.isVisible()) {
    const answer = await page.locator('.graphiql-response').innerText();
    assert.fail(`the playground could not load the schema: ${await failed.innerText()}; the server answered ${answer}`);
  }
  return docs;
}

describe('the playground', () => {
  test('renders offline, loads the schema and runs a query', { timeout: 120_000 }, async () => {
    const server = new URL(API);
    const requested = [];
    const blocked = [];
    await withPage(async (page) => {
      // Everything but the tagbase server is cut off, as on an offline intranet.
      await page.route('**/*', (route) => {
        const url = new URL(route.request().url());
        if (url.host === server.host) return route.continue();
        blocked.push(url.href);
        return route.abort('internetdisconnected');
      });
      page.on('request', (request) => requested.push(request.url()));
      // The token handed over in the fragment (never sent to the server).
      await page.goto(`${API}/graphql#token=${TOKENS.sales}`);
      await page.locator('.graphiql-container').waitFor({ timeout: 30_000 });
      assert.ok(!page.url().includes('token='), 'the token leaves the address bar');
      assert.match(await page.locator('#tagbase-status').textContent(), /signed in/);

      // The docs pane lists the root types once the schema is in.
      const docs = await openDocs(page);
      await docs.getByRole('link', { name: 'Query', exact: true }).click();
      await docs.getByText('customers', { exact: true }).first().waitFor({ timeout: 10_000 });

      // Autocomplete offers the schema's fields.
      const editor = page.locator('.graphiql-query-editor .CodeMirror');
      await editor.evaluate((el) => {
        el.CodeMirror.setValue('{\n  \n}');
        el.CodeMirror.setCursor({ line: 1, ch: 2 });
        el.CodeMirror.focus();
      });
      await page.keyboard.type('custo');
      await page.locator('.CodeMirror-hints .CodeMirror-hint', { hasText: 'customers' }).first().waitFor({ timeout: 10_000 });
      await page.keyboard.press('Escape');

      // A query run from the page returns data.
      await editor.evaluate((el) => el.CodeMirror.setValue('{ customers(first: 2) { totalCount edges { node { name } } } }'));
      await page.locator('.graphiql-execute-button').click();
      const response = page.locator('.graphiql-response .CodeMirror');
      await page.waitForFunction(() => document.querySelector('.graphiql-response .CodeMirror')?.CodeMirror.getValue().includes('"data"'), null, { timeout: 30_000 });
      const result = JSON.parse(await response.evaluate((el) => el.CodeMirror.getValue()));
      assert.equal(result.errors, undefined, JSON.stringify(result.errors));
      assert.equal(result.data.customers.edges.length, 2);

      if (process.env.TAGBASE_TEST_SCREENSHOTS) {
        await page.screenshot({ path: path.join(process.env.TAGBASE_TEST_SCREENSHOTS, 'playground.png') });
      }
      assert.deepEqual(blocked, [], 'the playground asked for something beyond the server');
      const elsewhere = requested.filter((url) => /^https?:/.test(url) && new URL(url).host !== server.host);
      assert.deepEqual(elsewhere, []);
      assert.ok(requested.some((url) => url.includes('/playground/graphiql.min.js')));
    });
  });

  test('the token field signs in and is remembered', { timeout: 120_000 }, async () => {
    await withPage(async (page) => {
      await page.goto(`${API}/graphql`);
      const status = page.locator('#tagbase-status');
      await page.getByRole('button', { name: 'Forget' }).click();
      assert.match(await status.textContent(), /no token/);
      await page.getByLabel('Bearer token').fill(TOKENS.sales);
      await page.getByRole('button', { name: 'Use token' }).click();
      assert.match(await status.textContent(), /signed in/);

      await page.reload();
      assert.equal(await page.getByLabel('Bearer token').inputValue(), TOKENS.sales);
      await openDocs(page);
    });
  });
});
