// Headless Chromium (Debian's, through playwright-core) opens the SockJS test page pushgate serves
// and relays the page's events as JSON lines (driven by tests/sockjs/test_interop.py).
// Usage: node driver.js <page-url> <chromium-path> ; NODE_PATH names a node_modules with playwright-core.
'use strict';
const { chromium } = require('playwright-core');

const [pageUrl, executablePath] = process.argv.slice(2);
const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

(async () => {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    let finished;
    const done = new Promise((resolve) => { finished = resolve; });
    page.on('console', (msg) => {
      let event = null;
      try { event = JSON.parse(msg.text()); } catch (e) { return; }
      if (!event || !event.event) return;
      if (event.event === 'finished') { finished(); return; }
      print(event);
      if (event.event === 'error') finished();
    });
    await page.goto(pageUrl);
    await Promise.race([done, new Promise((_, reject) => setTimeout(() => reject(new Error('page timed out')), 20000))]);
  } finally {
    await browser.close();
  }
  print({ event: 'done' });
  process.exit(0);
})().catch((e) => { print({ event: 'error', message: String(e) }); process.exit(1); });
