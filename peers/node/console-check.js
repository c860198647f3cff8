// Drives pinpost's operator console in headless Chromium (playwright-core, the system's
// browser): signs in with a token, looks up a number, waits for one delivery's row in one
// state, takes a screenshot, and prints what the page showed as one JSON line.
//
// node console-check.js <base url> <token> <msisdn> <delivery id> <state> <screenshot.png>
// The browser is $CHROMIUM, else /usr/bin/chromium.
'use strict';

const { chromium } = require('playwright-core');

const [base, token, msisdn, id, state, shot] = process.argv.slice(2);
if (!shot) {
  console.error('usage: console-check.js <base> <token> <msisdn> <id> <state> <png>');
  process.exit(2);
}
const WIDTH = 1280;
const HEIGHT = 900;

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
  });
  try {
    const context = await browser.newContext({
      viewport: { width: WIDTH, height: HEIGHT },
      deviceScaleFactor: 1,
    });
    const page = await context.newPage();
    const responses = [];
    const pending = [];
    page.on('response', (resp) => {
      if (!resp.url().includes('/v1/admin/')) return;
      pending.push(resp.text().then(
        (body) => responses.push({ url: resp.url(), status: resp.status(), body }),
        () => {},
      ));
    });
    const consoleMessages = [];
    page.on('console', (m) => consoleMessages.push(m.type() + ': ' + m.text()));
    page.on('pageerror', (e) => consoleMessages.push('pageerror: ' + e.message));

    const nav = await page.goto(base + '/console');
    const headers = nav.headers();
    await page.fill('#token', token);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#channels tbody tr[data-channel]', { timeout: 20000 });
    await page.fill('#lookup-q', msisdn);
    await page.click('#lookup-form button[type=submit]');
    const row = `#lookup tbody tr[data-id="${id}"][data-state="${state}"]`;
    await page.waitForSelector(row, { timeout: 20000 });
    await page.waitForSelector('#failures tbody tr', { timeout: 20000 });
    const table = await page.locator('#lookup').boundingBox();
    await page.screenshot({ path: shot });
    const text = await page.innerText('body');
    const html = await page.content();
    const stored = await page.evaluate(() => ({
      session: Object.keys(sessionStorage),
      local: Object.keys(localStorage),
    }));
    await Promise.all(pending);
    process.stdout.write(JSON.stringify({
      width: WIDTH,
      height: HEIGHT,
      csp: headers['content-security-policy'] || null,
      table,
      text,
      html,
      responses,
      console: consoleMessages,
      storage: stored,
    }) + '\n');
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
