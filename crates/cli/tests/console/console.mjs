// Drives Pillarbox's web console in a real browser (Debian's Chromium through playwright-core),
// as an administrator would: sign in with a token, see a failed login appear in the graph, find
// a user and change the quota, add a domain, end a live POP3 session, read the audit log; on a
// desk-sized screen and on a phone, by mouse and by keyboard. Every page is checked with axe-core
// (WCAG 2.2 A and AA) and photographed into the artefacts folder; any error the page logs (a
// Content Security Policy or Trusted Types violation among them) fails the run.
//
// Environment: CONSOLE_URL (https://127.0.0.1:PORT/), CONSOLE_TOKEN, CONSOLE_SPKI (the base64
// SHA-256 of the server certificate's public key: the only certificate the browser accepts
// besides real ones), POP3_PORT (for the failed login), ARTEFACTS (a folder), CHROMIUM.

import net from 'node:net';
import { env, step, steps, check, settled, photo, watchErrors, launch } from './common.mjs';

const url = env('CONSOLE_URL');
const token = env('CONSOLE_TOKEN');
const pop3Port = Number(env('POP3_PORT'));

/** A wrong password over POP3, as a guesser would send it. */
function failedLogin() {
  return new Promise((resolve, reject) => {
    const c = net.connect(pop3Port, '127.0.0.1');
    let said = '';
    let sent = 0;
    const timer = setTimeout(() => { c.destroy(); reject(new Error(`POP3 failed login: no answer (${said})`)); }, 30000);
    c.on('data', (d) => {
      said += d.toString();
      const lines = said.split('\r\n').filter(Boolean);
      if (sent === 0 && lines.length >= 1) { c.write('USER alice\r\n'); sent = 1; }
      else if (sent === 1 && lines.length >= 2) { c.write('PASS not-her-password\r\n'); sent = 2; }
      else if (sent === 2 && lines.length >= 3) {
        clearTimeout(timer);
        c.end('QUIT\r\n');
        resolve(lines[2]);
      }
    });
    c.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

const browser = await launch();
const errors = [];
try {
  // ---- At a desk, with a mouse.
  const desk = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-GB', timezoneId: 'UTC' });
  const page = await desk.newPage();
  watchErrors(page, errors);
  page.setDefaultTimeout(20000);

  const first = await page.goto(url);
  const headers = first.headers();
  check(headers['content-security-policy']?.includes("frame-ancestors 'none'"), 'the page may not be framed (CSP)');
  check(headers['content-security-policy']?.includes("script-src 'self'"), 'only the console\'s own script runs');
  check(headers['x-frame-options'] === 'DENY', 'X-Frame-Options: DENY');
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await settled(page, 'sign-in');
  step('the sign-in page is accessible');

  // A wrong token is refused, and says so.
  await page.getByLabel('Admin token').fill('pbx_000000000000_wrong');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'not valid' }).waitFor();
  errors.length = 0; // the refused request is logged by the browser as a failed load
  step('a wrong token is refused');

  await page.getByLabel('Admin token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Overview', level: 1 }).waitFor();
  await page.getByText('All parts are working.').waitFor();
  check(await page.evaluate(() => sessionStorage.length === 1 && localStorage.length === 0 && document.cookie === ''),
    'the token is kept by this tab only (no cookie, nothing in local storage)');
  await settled(page, 'overview');
  step('signed in; the overview shows the health and the graphs');

  // A failed login, then the graph brought up to date shows one more.
  const failedTotal = async () => Number(await page.locator('figure[data-series="failed_logins"]').getAttribute('data-total'));
  const before = await failedTotal();
  const answer = await failedLogin();
  check(answer.startsWith('-ERR'), `the wrong password is refused: ${answer}`);
  await page.getByRole('button', { name: 'Refresh' }).click();
  await page.waitForFunction((n) => Number(document.querySelector('figure[data-series="failed_logins"]').dataset.total) === n + 1, before);
  const label = await page.locator('figure[data-series="failed_logins"] svg').getAttribute('aria-label');
  check(/Failed logins: \d+ failed logins? in this time/.test(label), `the graph says what it shows: ${label}`);
  await photo(page, 'overview-after-failed-login');
  step(`a failed login appears in the graph (${before} -> ${before + 1})`);

  // Find a user, change the quota.
  await page.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: 'Users' }).click();
  await page.getByRole('heading', { name: 'Users', level: 1 }).waitFor();
  await page.getByLabel('Name contains').fill('ali');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.getByText('Users 1 to 1 of 1 matching.').waitFor();
  await settled(page, 'users-search');
  await page.getByRole('link', { name: 'alice', exact: true }).click();
  await page.getByRole('heading', { name: 'alice', level: 1 }).waitFor();
  await settled(page, 'user');
  await page.getByLabel('Size limit').fill('5MB');
  await page.getByRole('button', { name: 'Save quota' }).click();
  await page.getByRole('status').filter({ hasText: 'Quota of alice saved.' }).waitFor();
  await page.getByText('Storage used:').filter({ hasText: 'of 5.0 MB' }).waitFor();
  check((await page.locator('dl.facts').textContent()).includes('5.0 MB'), 'the new quota is shown');
  await photo(page, 'user-quota-saved');
  step('found alice and set her quota to 5MB');

  // A bad value is refused in the form, with the reason.
  await page.getByLabel('Size limit').fill('lots');
  await page.getByRole('button', { name: 'Save quota' }).click();
  await page.getByRole('alert').filter({ hasText: 'is not a size' }).waitFor();
  step('a size that cannot be read is refused with the reason');

  // Delete a user: asked once more, then done.
  await page.goto(`${url}#/users/bob`);
  await page.getByRole('heading', { name: 'bob', level: 1 }).waitFor();
  await page.getByRole('button', { name: 'Delete bob…' }).click();
  const really = page.getByRole('button', { name: 'Yes, delete bob' });
  check(await page.evaluate(() => document.activeElement.textContent === 'Yes, delete bob'), 'the confirmation has the focus');
  await photo(page, 'user-delete-confirm');
  await really.click();
  await page.getByRole('heading', { name: 'Users', level: 1 }).waitFor();
  await page.getByRole('status').filter({ hasText: 'Deleted bob' }).waitFor();
  step('deleted bob, after a confirmation');

  // Add a domain through its form.
  await page.getByRole('link', { name: 'Domains' }).click();
  await page.getByRole('heading', { name: 'Domains', level: 1 }).waitFor();
  await settled(page, 'domains');
  await page.getByLabel('Domain', { exact: true }).fill('example.com');
  await page.getByLabel('Quota per user').fill('1GB');
  await page.getByRole('button', { name: 'Add domain' }).click();
  await page.getByRole('heading', { name: 'example.com', level: 1 }).waitFor();
  await settled(page, 'domain');
  step('added the domain example.com');

  // End the live POP3 session the test holds open.
  await page.getByRole('link', { name: 'Sessions' }).click();
  await page.getByRole('heading', { name: 'Live sessions', level: 1 }).waitFor();
  const end = page.getByRole('button', { name: /^End alice's session from / });
  await end.waitFor();
  await settled(page, 'sessions');
  await end.click();
  await page.getByRole('status').filter({ hasText: "Ended alice's session" }).waitFor();
  step('ended alice\'s live POP3 session');

  await page.getByRole('link', { name: 'Storage' }).click();
  await page.getByRole('heading', { name: 'Storage', level: 1 }).waitFor();
  await page.getByRole('link', { name: 'alice' }).waitFor();
  await settled(page, 'storage');
  step('storage per user is shown');

  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.getByRole('heading', { name: 'Audit log', level: 1 }).waitFor();
  await page.getByRole('cell', { name: 'session.end' }).waitFor();
  await page.getByRole('cell', { name: 'user.quota' }).first().waitFor();
  await settled(page, 'audit');
  step('the audit log lists the changes');

  // Not framable: a page of another origin that frames the console shows nothing of it.
  const framer = await desk.newPage();
  await framer.setContent(`<iframe src="${url}" title="framed" width="800" height="600"></iframe>`);
  await framer.waitForTimeout(1500);
  const framed = framer.frames().find((f) => f !== framer.mainFrame());
  const shown = framed ? await framed.locator('#main, #nav').count().catch(() => 0) : 0;
  check(shown === 0, `the console is not shown inside another site's frame (${framed && framed.url()})`);
  await framer.close();
  step('the console refuses to be framed');

  // Signing out forgets the token.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await page.getByRole('alert').filter({ hasText: 'The token is forgotten by this tab' }).waitFor();
  check(await page.evaluate(() => sessionStorage.length === 0), 'signing out forgets the token');
  step('signing out forgets the token');
  check(errors.length === 0, `the page logged errors:\n${errors.join('\n')}`);
  await desk.close();

  // ---- On a phone, with the keyboard only.
  const phone = await browser.newContext({
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: 'en-GB', timezoneId: 'UTC',
  });
  const p = await phone.newPage();
  watchErrors(p, errors);
  p.setDefaultTimeout(20000);
  await p.goto(url);
  await p.getByRole('heading', { name: 'Sign in' }).waitFor();
  // The token field has the focus: type it and press Enter.
  await p.keyboard.type(token);
  await p.keyboard.press('Enter');
  await p.getByRole('heading', { name: 'Overview', level: 1 }).waitFor();
  await settled(p, 'phone-overview');
  const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `the overview fits a phone's width (${overflow} px too wide)`);
  // Keyboard: the skip link comes first and moves to the page's heading.
  await p.reload();
  await p.getByRole('heading', { name: 'Overview', level: 1 }).waitFor();
  await p.keyboard.press('Tab');
  check(await p.evaluate(() => document.activeElement.id === 'skip'), 'the first Tab reaches "Skip to content"');
  await p.keyboard.press('Enter');
  check(await p.evaluate(() => document.activeElement.tagName === 'H1'), 'the skip link moves to the heading');
  // Through the navigation to a user, by keyboard.
  await p.getByRole('link', { name: 'Users' }).focus();
  await p.keyboard.press('Enter');
  await p.getByRole('heading', { name: 'Users', level: 1 }).waitFor();
  check(await p.evaluate(() => document.activeElement.tagName === 'H1'), 'a new page moves the focus to its heading');
  await p.getByRole('link', { name: 'alice', exact: true }).focus();
  await p.keyboard.press('Enter');
  await p.getByRole('heading', { name: 'alice', level: 1 }).waitFor();
  await settled(p, 'phone-user');
  const userOverflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(userOverflow <= 0, `a user's page fits a phone's width (${userOverflow} px too wide)`);
  await p.getByRole('link', { name: 'Sessions' }).click();
  await p.getByRole('heading', { name: 'Live sessions', level: 1 }).waitFor();
  await settled(p, 'phone-sessions');
  step('on a phone, by keyboard: signed in, reached a user, every page fits');
  check(errors.length === 0, `the page logged errors:\n${errors.join('\n')}`);
  await phone.close();
  console.log(JSON.stringify({ ok: true, steps }));
} finally {
  await browser.close();
}
