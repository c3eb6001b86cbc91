// Signing in to Pillarbox's web console through the identity provider (the code flow with PKCE),
// in Chromium: an administrator of the provider gets in; a person whose token has no admin claim
// is told so and stays out; the code never stays in the address bar. Each page is checked with
// axe-core and photographed.
//
// Environment: as console.mjs (CONSOLE_URL, CONSOLE_SPKI with the provider's key too,
// ARTEFACTS, CHROMIUM).

import { env, step, steps, check, settled, photo, watchErrors, launch } from './common.mjs';

const url = env('CONSOLE_URL');

/** Through the provider's sign-in and consent pages (oidc-provider's development forms). */
async function atProvider(page, login) {
  await page.waitForURL((u) => !u.toString().startsWith(url));
  await page.locator('input[name="login"]').fill(login);
  await page.locator('input[name="password"]').fill('any password: the test provider takes every one');
  await page.locator('button[type="submit"]').click();
  // The consent page, the first time a person meets the console's client.
  const consent = page.locator('button[type="submit"]', { hasText: /continue/i });
  if (await consent.count()) await consent.click();
}

const browser = await launch();
const errors = [];
try {
  const admin = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-GB', timezoneId: 'UTC' });
  const page = await admin.newPage();
  page.setDefaultTimeout(20000);
  watchErrors(page, errors);
  await page.goto(url);
  const go = page.getByRole('button', { name: /^Sign in at / });
  await go.waitFor();
  await settled(page, 'sign-in-with-provider');
  await go.click();
  await atProvider(page, 'admin@example.test');
  await page.getByRole('heading', { name: 'Overview', level: 1 }).waitFor();
  const actor = await page.locator('#actor').textContent();
  check(actor.startsWith('oauth2:admin@example.test'), `signed in as the provider's administrator: ${actor}`);
  check(!page.url().includes('code='), `the code left the address bar: ${page.url()}`);
  await settled(page, 'signed-in-through-provider');
  step('the provider\'s administrator signed in through the provider');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  check(errors.length === 0, `the page logged errors:\n${errors.join('\n')}`);
  await admin.close();

  // Someone else: a valid token without the admin claim.
  const other = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-GB', timezoneId: 'UTC' });
  const p = await other.newPage();
  p.setDefaultTimeout(20000);
  await p.goto(url);
  await p.getByRole('button', { name: /^Sign in at / }).click();
  await atProvider(p, 'carol@example.test');
  await p.getByRole('heading', { name: 'Sign in' }).waitFor();
  await p.getByRole('alert').filter({ hasText: 'grants no access' }).waitFor();
  check(await p.evaluate(() => sessionStorage.getItem('pillarbox.console.token') === null), 'no token is kept');
  check(!p.url().includes('code='), 'the code left the address bar');
  check(!(await p.getByRole('button', { name: 'Sign out' }).isVisible()), 'no "Sign out" for someone not signed in');
  await photo(p, 'provider-sign-in-refused');
  step('a token without the admin claim is refused, and the page says why');

  // A return that this tab did not start (a forged link with someone's code) is refused.
  await p.goto(`${url}?code=forged&state=forged`);
  await p.getByRole('alert').filter({ hasText: 'not started by this tab' }).waitFor();
  step('a sign-in this tab did not start is refused');
  await other.close();
  console.log(JSON.stringify({ ok: true, steps }));
} finally {
  await browser.close();
}
