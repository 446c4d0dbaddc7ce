// Render an eval report.html in headless Chromium and print what rendered, as JSON.
// Usage: node tests/render_report.mjs <report.html> <screenshot.png>
// Any request other than the page itself and data: URIs is blocked and recorded.
import { chromium } from 'playwright-core';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const [htmlPath, screenshotPath] = process.argv.slice(2);
if (!htmlPath || !screenshotPath) {
  console.error('usage: node tests/render_report.mjs <report.html> <screenshot.png>');
  process.exit(2);
}
const pageUrl = pathToFileURL(resolve(htmlPath)).href;
const SELECTORS = [
  '#summary', '#metrics', '#offline', '#failures', '#question-types', '#paper', '#paper table',
  '#chart img', '#items', '.item',
];

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run',
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const consoleErrors = [];
  const pageErrors = [];
  const failedRequests = [];
  const blockedRequests = [];
  page.on('console', (msg) => { if (msg.type() === 'error') consoleErrors.push(msg.text()); });
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  page.on('requestfailed', (req) => {
    failedRequests.push(`${req.url().slice(0, 120)}: ${req.failure()?.errorText}`);
  });
  await page.route('**/*', (route) => {
    const url = route.request().url();
    if (url === pageUrl || url.startsWith('data:')) return route.continue();
    blockedRequests.push(url.slice(0, 200));
    return route.abort();
  });
  await page.goto(pageUrl, { waitUntil: 'load' });
  const found = await page.evaluate((selectors) => {
    const frames = [...document.querySelectorAll('.frames img')];
    const chart = document.querySelector('#chart img');
    return {
      title: document.title,
      elements: Object.fromEntries(selectors.map((s) => [s, document.querySelector(s) !== null])),
      items: document.querySelectorAll('.item').length,
      item_ids: [...document.querySelectorAll('.item')].map((el) => el.dataset.id),
      frame_images: frames.length,
      frame_images_loaded: frames.filter((img) => img.complete && img.naturalWidth > 0).length,
      placeholders: document.querySelectorAll('.frames.placeholder').length,
      chart_natural_width: chart ? chart.naturalWidth : 0,
      scripts: document.querySelectorAll('script').length,
      page_height: document.documentElement.scrollHeight,
    };
  }, SELECTORS);
  await page.screenshot({ path: screenshotPath, fullPage: true });
  console.log(JSON.stringify({
    ...found,
    console_errors: consoleErrors,
    page_errors: pageErrors,
    failed_requests: failedRequests,
    blocked_requests: blockedRequests,
  }));
} finally {
  await browser.close();
}
