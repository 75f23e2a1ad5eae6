// tools/demo_screenshot.mjs: a screenshot of the demo page with a segmented example scene, for the
// README (called by tools/readme_pictures.sh; run it with node from the repository root).
//
//   node tools/demo_screenshot.mjs URL OUT.{png,jpg} [EXAMPLE]
//
// Opens URL (a running demo_server) in Debian's chromium through playwright-core (installed by
// `cd tests/browser && npm ci`), clicks example scene EXAMPLE (1-based, default 2), waits for the
// result and saves the 1280x860 viewport as OUT (JPEG, quality 85, when OUT ends in .jpg; else PNG).
// SEGML_CHROMIUM overrides the browser's path.
import {createRequire} from 'node:module';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'tests', 'browser', 'package.json'));
const {chromium} = require('playwright-core');

const [url, out, example = '2'] = process.argv.slice(2);
if (!url || !out) {
  console.error('usage: node tools/demo_screenshot.mjs URL OUT.{png,jpg} [EXAMPLE]');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.SEGML_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
});
try {
  const page = await (await browser.newContext({viewport: {width: 1280, height: 860}})).newPage();
  await page.goto(url);
  await page.waitForFunction(() => !document.getElementById('model-name').textContent.includes('connecting'));
  await page.waitForSelector('#examples .example');
  const before = await page.$eval('#size-info', (e) => e.textContent);
  await page.click(`#examples .example:nth-child(${Number(example)})`);
  await page.waitForFunction((b) => document.getElementById('size-info').textContent !== b &&
                                    !document.body.classList.contains('is-busy'), before, {timeout: 120000});
  await page.waitForTimeout(500);  // let the latency bar's transition finish
  const jpeg = /\.jpe?g$/i.test(out);
  await page.screenshot({path: out, fullPage: false, ...(jpeg ? {type: 'jpeg', quality: 85} : {})});
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
}
