// A real OpenID Connect provider (oidc-provider, OpenID-certified) for
// tagbase's sign-in test. Usage: node provider.mjs <port>
//
// - issuer http://127.0.0.1:<port>
// - client `tagbase-test` / secret `tagbase-test-secret`, authorization
//   code flow with PKCE, redirect to http://127.0.0.1/callback
// - any login is an account whose `sub` is that login (the dev
//   interactions accept any password): `sz01.sales` is the demo salesperson
// - resource `urn:tagbase` gets RS256 JWT access tokens with audience
//   `tagbase-api`, so tagbase can verify them against the JWKS
// - signing keys are generated at start (RS256 and ES256)
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node provider.mjs <port>');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

function jwk(type, options, alg, kid) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, kid, use: 'sig' };
}

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'tagbase-test',
      client_secret: 'tagbase-test-secret',
      redirect_uris: ['http://127.0.0.1/callback'],
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
  ],
  jwks: {
    keys: [
      jwk('rsa', { modulusLength: 2048 }, 'RS256', 'test-rs256'),
      jwk('ec', { namedCurve: 'P-256' }, 'ES256', 'test-es256'),
    ],
  },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return { sub: id, preferred_username: id }; } };
  },
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:tagbase',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: 'tagbase-api',
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  pkce: { required: () => true },
  // The issuer is plain HTTP on loopback: allow it for this test only.
  clientBasedCORS: () => true,
});
provider.proxy = false;

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
