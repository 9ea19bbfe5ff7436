// What every test file needs: the server under test (set by
// scripts/test-clients.sh), a plain GraphQL POST, and a headless Chromium.
// A missing setting fails the run: nothing is skipped.
import assert from 'node:assert/strict';
import http from 'node:http';
import { chromium } from 'playwright-core';

function required(name) {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run the client tests with scripts/test-clients.sh`);
  return value;
}

/** Base address of the tagbase server, e.g. `http://127.0.0.1:18080`. */
export const API = required('TAGBASE_URL').replace(/\/$/, '');
export const GRAPHQL = `${API}/graphql`;
/** Tokens of demo staff: `admin` (whole organisation) and `sz01.sales` (one store). */
export const TOKENS = { admin: required('TAGBASE_TOKEN_ADMIN'), sales: required('TAGBASE_TOKEN_SALES') };
/** The origin listed in the server's TAGBASE_CORS_ORIGINS, e.g. `http://localhost:18081`. */
export const ALLOWED_ORIGIN = required('TAGBASE_TEST_ALLOWED_ORIGIN');
export const CHROMIUM = process.env.TAGBASE_TEST_CHROMIUM || '/usr/bin/chromium';

export const bearer = (token) => ({ Authorization: `Bearer ${token}` });

/** POSTs one GraphQL request; answers `{ status, body }`. */
export async function post(query, { variables, token = TOKENS.admin } = {}) {
  const response = await fetch(GRAPHQL, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json', ...(token ? bearer(token) : {}) },
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(30_000),
  });
  return { status: response.status, body: await response.json() };
}

/** POSTs and expects data without errors. */
export async function data(query, options) {
  const { status, body } = await post(query, options);
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.errors, undefined, JSON.stringify(body.errors));
  return body.data;
}

/** The `extensions.code` of every error of a client error or a response body. */
export function codes(errors) {
  return (errors || []).map((error) => error.extensions?.code);
}

/**
 * Headless Chromium, Debian's, with the flags this closed network needs
 * (no background connections to outside hosts) and a fresh profile in
 * `profileDir`. Answers its one browser context.
 */
export async function launchChromium(profileDir) {
  return chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * A tiny static server on 127.0.0.1 (`port` 0: any free port) answering
 * every GET with `html`. Answers `{ origin, close }`; the origin uses the
 * name `localhost`, as a developer's front-end server would.
 */
export async function staticServer(port, html) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(html);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const origin = `http://localhost:${server.address().port}`;
  const close = () =>
    new Promise((resolve) => {
      server.close(resolve);
      // Chromium keeps (and pre-opens) connections that would hold close() for minutes.
      server.closeAllConnections();
    });
  return { origin, close };
}
