// Signs `login` in at the provider through the authorization code flow
// (with PKCE), the way a browser would, using the provider's development
// login and consent pages, and prints the JWT access token for tagbase.
// Usage: node get-token.mjs <issuer> <login>
import { createHash, randomBytes } from 'node:crypto';

const [issuer, login] = process.argv.slice(2);
if (!issuer || !login) {
  console.error('usage: node get-token.mjs <issuer> <login>');
  process.exit(2);
}
const client = { id: 'tagbase-test', secret: 'tagbase-test-secret', redirect: 'http://127.0.0.1/callback' };
const cookies = new Map();

async function request(url, options = {}) {
  const headers = { ...(options.headers ?? {}) };
  if (cookies.size) headers.cookie = [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  const response = await fetch(new URL(url, issuer), { ...options, headers, redirect: 'manual' });
  for (const cookie of response.headers.getSetCookie()) {
    const [pair] = cookie.split(';');
    const at = pair.indexOf('=');
    cookies.set(pair.slice(0, at), pair.slice(at + 1));
  }
  return response;
}

function location(response, step) {
  const to = response.headers.get('location');
  if (!to) throw new Error(`${step}: expected a redirect, got ${response.status}`);
  return to;
}

const verifier = randomBytes(32).toString('base64url');
const challenge = createHash('sha256').update(verifier).digest('base64url');
const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
const authorize = new URL(discovery.authorization_endpoint);
authorize.search = new URLSearchParams({
  client_id: client.id,
  response_type: 'code',
  redirect_uri: client.redirect,
  scope: 'openid api',
  resource: 'urn:tagbase',
  code_challenge: challenge,
  code_challenge_method: 'S256',
  state: randomBytes(8).toString('hex'),
}).toString();

let next = location(await request(authorize), 'authorize');
let code;
for (let step = 0; step < 10 && !code; step += 1) {
  if (next.startsWith(client.redirect)) {
    code = new URL(next).searchParams.get('code');
    break;
  }
  if (next.includes('/interaction/')) {
    const page = await request(next);
    const html = await page.text();
    const prompt = html.includes('name="prompt" value="login"') ? 'login' : 'consent';
    const form = prompt === 'login' ? { prompt, login, password: 'any' } : { prompt };
    const submitted = await request(next, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(form).toString(),
    });
    next = location(submitted, `interaction ${prompt}`);
  } else {
    next = location(await request(next), 'resume');
  }
}
if (!code) throw new Error('the provider never redirected back with a code');

const tokens = await fetch(discovery.token_endpoint, {
  method: 'POST',
  headers: {
    'content-type': 'application/x-www-form-urlencoded',
    authorization: `Basic ${Buffer.from(`${client.id}:${client.secret}`).toString('base64')}`,
  },
  body: new URLSearchParams({
    grant_type: 'authorization_code',
    code,
    redirect_uri: client.redirect,
    code_verifier: verifier,
    resource: 'urn:tagbase',
  }).toString(),
});
const body = await tokens.json();
if (!tokens.ok || !body.access_token) throw new Error(`token endpoint: ${tokens.status} ${JSON.stringify(body)}`);
if (body.access_token.split('.').length !== 3) throw new Error('the access token is not a JWT');
console.log(body.access_token);
