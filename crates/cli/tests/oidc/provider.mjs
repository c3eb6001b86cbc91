// A local OpenID Connect provider for Pillarbox's OAuth2 tests: oidc-provider on loopback over
// TLS, with two clients (the mail client, public, for the code flow with PKCE and the device
// flow; the mail server, confidential, for introspection), short token lifetimes, and signing
// keys kept in a file so that a restarted provider can rotate them.
//
//   node provider.mjs --cert C --key K --keys FILE [--signing k2,k1] [--format jwt|opaque]
//                     [--ttl SECONDS] [--audience URI] [--port N] [--console-redirect URL]
//
// Prints `ready ISSUER` once it listens. Any name signs in (the development login form); the
// account's `email` and `preferred_username` claims are that name (and see extraTokenClaims).
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:https';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';

const { values: opt } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    keys: { type: 'string' },
    signing: { type: 'string', default: 'k1' },
    format: { type: 'string', default: 'jwt' },
    ttl: { type: 'string', default: '60' },
    'refresh-ttl': { type: 'string', default: '86400' },
    audience: { type: 'string', default: 'pop3://mail.test' },
    port: { type: 'string', default: '0' },
    'console-redirect': { type: 'string', default: '' },
  },
});

// Signing keys by id, made on first use and kept, so a restart can sign with a new one while
// still publishing (or no longer publishing) the old.
const store = existsSync(opt.keys) ? JSON.parse(readFileSync(opt.keys, 'utf8')) : {};
const kids = opt.signing.split(',').filter(Boolean);
for (const kid of kids) {
  if (!store[kid]) {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    store[kid] = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' };
  }
}
writeFileSync(opt.keys, JSON.stringify(store), { mode: 0o600 });

const server = createServer({ cert: readFileSync(opt.cert), key: readFileSync(opt.key) });
await new Promise((resolve) => server.listen(Number(opt.port), '127.0.0.1', resolve));
const issuer = `https://127.0.0.1:${server.address().port}`;
const ttl = Number(opt.ttl);

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'pillarbox-cli',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/'],
    },
    // The admin console (a web page: public, the code flow with PKCE), when its address is given.
    ...(opt['console-redirect'] ? [{
      client_id: 'pillarbox-console',
      application_type: 'web',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: [opt['console-redirect']],
    }] : []),
    {
      client_id: 'pillarbox-server',
      client_secret: 'server-secret-for-introspection',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  jwks: { keys: kids.map((kid) => store[kid]) },
  findAccount: async (_ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: id, preferred_username: id }),
  }),
  claims: { openid: ['sub'], email: ['email'], profile: ['preferred_username'] },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'pop'],
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => opt.audience,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => {
        if (resource !== opt.audience && resource !== 'pop3://elsewhere.test') {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: 'pop',
          audience: resource,
          accessTokenTTL: ttl,
          accessTokenFormat: opt.format,
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  // The admin API's claim: `admin@...` accounts are administrators, `viewer@...` ones may read
  // (among groups that are not Pillarbox's), everyone else has no such claim.
  extraTokenClaims: async (_ctx, token) => ({
    email: token.accountId,
    preferred_username: token.accountId,
    ...(token.accountId.startsWith('admin@') ? { pillarbox_admin: true } : {}),
    ...(token.accountId.startsWith('viewer@') ? { pillarbox_admin: ['staff', 'read'] } : {}),
  }),
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: ttl,
    RefreshToken: Number(opt['refresh-ttl']),
    DeviceCode: 600,
    Grant: 86400,
    Interaction: 600,
    Session: 86400,
  },
  pkce: { required: () => true },
  cookies: { keys: ['pillarbox-test-cookie-key'] },
});
provider.on('server_error', (_ctx, err) => console.error('server_error', err));
server.on('request', provider.callback());
process.stdout.write(`ready ${issuer}\n`);
// The test reads one line and closes the pipe: everything else goes to the log (stderr).
console.log = console.info = console.warn = console.error;
