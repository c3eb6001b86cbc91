// What the console's browser tests share: the environment, checks, axe-core, screenshots, and
// Chromium launched to accept only the test servers' own certificates besides real ones.

import { createRequire } from 'node:module';
import { readFileSync, mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

export function env(k) {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
}

export const artefacts = env('ARTEFACTS');
mkdirSync(artefacts, { recursive: true });

export const steps = [];
export function step(text) {
  steps.push(text);
  console.log(`console test: ${text}`);
}

export function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/** axe-core on the page as it is now; every violation is a failure, named with its nodes. */
export async function accessible(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => globalThis.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice'] },
    resultTypes: ['violations'],
  }));
  const problems = result.violations.map((v) => `${v.id} (${v.impact}): ${v.help}\n    ${v.nodes.map((n) => n.target.join(' ')).join('\n    ')}`);
  check(problems.length === 0, `axe-core on ${name}:\n  ${problems.join('\n  ')}`);
}

export async function photo(page, name) {
  await page.screenshot({ path: `${artefacts}/${name}.png`, fullPage: true });
}

/** The page once it has loaded, checked and photographed. */
export async function settled(page, name) {
  await page.waitForFunction(() => !document.getElementById('main').hasAttribute('aria-busy'));
  await accessible(page, name);
  await photo(page, name);
}

/**
 * Errors the console logs (a Content Security Policy or Trusted Types violation among them);
 * not those of other sites' pages the browser visits (the identity provider's).
 */
export function watchErrors(page, errors) {
  const origin = new URL(env('CONSOLE_URL')).origin;
  const ours = () => page.url().startsWith(origin);
  page.on('console', (m) => {
    if (m.type() === 'error' && ours()) errors.push(`console: ${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => {
    if (ours()) errors.push(`page error: ${e.message}`);
  });
}

/** Chromium, accepting the certificates whose public keys are in CONSOLE_SPKI (comma-separated). */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [`--ignore-certificate-errors-spki-list=${env('CONSOLE_SPKI')}`, '--no-sandbox', '--disable-dev-shm-usage'],
  });
}
