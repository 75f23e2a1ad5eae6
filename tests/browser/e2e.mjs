// End-to-end test of the demo page: starts demo_server, opens the page in headless Debian Chromium
// (driven by playwright-core), uploads a street photo, waits for the overlay, checks the legend,
// the latency panel (its six parts: decode, model, post-process, encode, network, render, adding
// up to the end-to-end time), that the page colours the label map the server sends exactly as the
// server's own colour mask, the view toggles, the download button (a PNG of the overlay), the
// example scenes, that a bad upload shows an error, the phone wording ("tap", not "drop"), runs
// the live mode on Chromium's fake camera, and saves screenshots (laptop, phone and live). The server also
// has a CLIPSeg: the zero-shot mode is switched on, prompts typed and run, the legend must list
// them with their shares, the latency panel the same six parts with the model's (text, vision
// tower, decoder) under it, and the colours; the live camera runs in that mode too; a server with only a CLIPSeg shows
// only that mode. Then serves on all interfaces, where an access token is asked: opening the
// printed ?token= address must just work (the page's own requests carry the token in a cookie),
// and requests without it get 401.
//
//   node e2e.mjs --server build/examples/demo_server [--model DIR] [--zero-shot-model DIR] [--image street.jpg] [--out DIR]
//
// --model (or $SEGML_DEMO_MODEL): the checkpoint to serve; default a random tiny model (the test is
// about the page, not the predictions). --zero-shot-model (or $SEGML_DEMO_ZERO_SHOT_MODEL): the
// CLIPSeg folder; default a random reduced one (demo_server --zero-shot-random-init tiny). --image (or $SEGML_DEMO_IMAGE): default the first CamVid val
// image in ../shared/data/camvid, else a synthetic scene from runs/synthetic-scenes (written by
// examples/finetune_sidewalk), else tests/data/street_375x500.png. --out: where the screenshots go.
// Exit code 77 (ctest: skipped) when chromium or node_modules/playwright-core is missing.
import {spawn} from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const SKIP = 77;
const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const CHROMIUM = process.env.SEGML_CHROMIUM || '/usr/bin/chromium';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

function skip(why) {
  console.log(`SKIPPED: ${why}`);
  process.exit(SKIP);
}

function firstImage(dir) {
  if (!fs.existsSync(dir)) return null;
  const files = fs.readdirSync(dir).filter((f) => /\.(jpe?g|png)$/i.test(f)).sort();
  return files.length ? path.join(dir, files[0]) : null;
}

function pickImage() {
  const given = arg('image', process.env.SEGML_DEMO_IMAGE);
  if (given) return given;
  return firstImage(path.resolve(repo, '..', 'shared', 'data', 'camvid', 'val', 'images')) ||
         firstImage(path.join(repo, 'runs', 'synthetic-scenes', 'val', 'images')) ||
         path.join(repo, 'tests', 'data', 'street_375x500.png');
}

const freePort = () => new Promise((resolve, reject) => {
  const srv = net.createServer();
  srv.once('error', reject);
  srv.listen(0, '127.0.0.1', () => {
    const {port} = srv.address();
    srv.close(() => resolve(port));
  });
});

async function waitForHealth(url, server, timeoutMs) {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (server.exitCode !== null) throw new Error(`demo_server exited with code ${server.exitCode}`);
    try {
      const r = await fetch(`${url}/healthz`);
      if (r.ok) return;
    } catch (e) { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`demo_server did not answer /healthz within ${timeoutMs / 1000} s`);
}

function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
  console.log(`ok - ${message}`);
}

async function main() {
  const serverBin = arg('server', process.env.SEGML_DEMO_SERVER);
  const outDir = path.resolve(arg('out', path.join(repo, 'build', 'demo_server_browser')));
  const model = arg('model', process.env.SEGML_DEMO_MODEL);
  const zeroShotModel = arg('zero-shot-model', process.env.SEGML_DEMO_ZERO_SHOT_MODEL);
  const zeroShotArgs = zeroShotModel ? ['--zero-shot-model', zeroShotModel] : ['--zero-shot-random-init', 'tiny'];
  if (!serverBin || !fs.existsSync(serverBin)) skip(`demo_server binary not found (--server ${serverBin})`);
  if (!fs.existsSync(CHROMIUM)) skip(`${CHROMIUM} not found (apt-get install chromium)`);
  let chromium;
  try {
    ({chromium} = await import('playwright-core'));
  } catch (e) {
    skip(`playwright-core is not installed (cd tests/browser && npm ci)`);
  }
  const image = pickImage();
  check(fs.existsSync(image), `test image ${image} exists`);
  fs.mkdirSync(outDir, {recursive: true});

  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const serverArgs = ['--host', '127.0.0.1', '--port', String(port), ...(model ? ['--model', model] : ['--random-init', 'tiny']),
                      ...zeroShotArgs];
  console.log(`starting ${serverBin} ${serverArgs.join(' ')}`);
  const server = spawn(serverBin, serverArgs, {stdio: ['ignore', 'inherit', 'inherit']});
  let browser;
  try {
    await waitForHealth(url, server, 60000);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
             '--disable-default-apps', '--no-first-run', '--disable-dev-shm-usage', '--disable-gpu',
             // A synthetic camera (a moving test pattern) for the live mode, without a permission prompt.
             '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'],
    });
    const context = await browser.newContext({viewport: {width: 1280, height: 860}});
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });

    // The page's answers, each with the server's own colour mask of the same upload added (mask=1).
    const answers = await watchAnswers(page);

    await page.goto(url);
    await page.waitForFunction(() => !document.getElementById('model-name').textContent.includes('connecting'));
    const modelText = await page.textContent('#model-name');
    check(/classes/.test(modelText), `header shows the model: "${modelText}"`);
    check(/drop/i.test(await page.textContent('#placeholder-title')), 'on a laptop the page says "drop"');
    check(await page.isDisabled('#download'), 'the download button waits for a result');

    // Upload the photo and wait for the overlay.
    console.log(`uploading ${image}`);
    await page.setInputFiles('#file-input', image);
    await page.waitForSelector('body[data-state="ready"]', {timeout: 120000});
    const canvas = await page.$eval('#canvas', (c) => ({hidden: c.hidden, w: c.width, h: c.height}));
    check(!canvas.hidden && canvas.w > 0 && canvas.h > 0, `overlay canvas is shown (${canvas.w}x${canvas.h})`);
    const legend = await page.$$eval('#legend li', (lis) => lis.map((li) => ({
      name: li.querySelector('.name')?.textContent, share: li.querySelector('.share')?.textContent,
      color: li.querySelector('.swatch')?.style.background,
    })));
    check(legend.length > 0 && legend.every((l) => l.name && l.share && l.color),
          `legend lists ${legend.length} classes: ${legend.map((l) => `${l.name} ${l.share}`).join(', ')}`);
    await checkLatencyPanel(page, []);

    // The page colours the label map it is sent exactly as the server colours it (mask=1).
    await checkColours(page, answers);

    // The download button saves the overlay as a PNG of the photo's size.
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
    const png = fs.readFileSync(await download.path());
    check(png.subarray(1, 4).toString() === 'PNG' && png.readUInt32BE(16) === canvas.w && png.readUInt32BE(20) === canvas.h,
          `the download button saves the overlay as a ${png.readUInt32BE(16)}x${png.readUInt32BE(20)} PNG ` +
          `(${download.suggestedFilename()}, ${png.length} bytes)`);

    // The view toggles and the opacity slider change the picture.
    const pixels = () => page.$eval('#canvas', (c) => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let sum = 0;
      for (let i = 0; i < d.length; i += 97) sum += d[i];
      return sum;
    });
    await page.click('[data-view="original"]');
    const original = await pixels();
    await page.click('[data-view="mask"]');
    const mask = await pixels();
    await page.click('[data-view="overlay"]');
    const overlay = await pixels();
    check(original !== mask && overlay !== mask && overlay !== original, 'original / overlay / mask views differ');
    await page.$eval('#opacity', (el) => { el.value = '80'; el.dispatchEvent(new Event('input')); });
    check((await pixels()) !== overlay, 'opacity slider changes the overlay');
    await page.$eval('#opacity', (el) => { el.value = '55'; el.dispatchEvent(new Event('input')); });

    const shot = path.join(outDir, 'demo_screenshot.png');
    await page.screenshot({path: shot, fullPage: true});
    console.log(`screenshot: ${shot}`);

    // A corrupt "JPEG" gets the server's 400 message in a toast; the page keeps its result.
    await page.setInputFiles('#file-input', {name: 'broken.jpg', mimeType: 'image/jpeg', buffer: Buffer.from('not really a jpeg')});
    await page.waitForSelector('#toast:not([hidden])', {timeout: 30000});
    const toast = await page.textContent('#toast');
    check(/not an image/.test(toast), `a corrupt upload shows the server's error: "${toast}"`);
    check((await page.$$('#legend li .name')).length === legend.length, 'the previous result stays on screen');

    // The example scenes: thumbnails that segment when clicked.
    const examples = await page.$$('#examples .example');
    check(examples.length >= 3, `${examples.length} example scenes are offered`);
    const beforeExample = await page.$eval('#size-info', (e) => e.textContent);
    await page.click('#examples .example:nth-child(2)');
    await page.waitForFunction((b) => document.getElementById('size-info').textContent !== b &&
                                      !document.body.classList.contains('is-busy'), beforeExample, {timeout: 120000});
    const exampleInfo = await page.textContent('#size-info');
    check(/^480×360 px/.test(exampleInfo) && (await page.$$('#legend li .name')).length > 0,
          `clicking an example scene segments it: "${exampleInfo}"`);

    // The phone layout: one column, the toolbar under the image; "tap" rather than "drop".
    const phone = await browser.newContext({viewport: {width: 390, height: 844}, deviceScaleFactor: 2, isMobile: true, hasTouch: true});
    const phonePage = await phone.newPage();
    await phonePage.goto(url);
    const phoneWords = await phonePage.textContent('#placeholder');
    check(/tap/i.test(phoneWords) && !/drop/i.test(phoneWords), `on a phone the page says "tap": "${phoneWords.trim().replace(/\s+/g, ' ')}"`);
    await phonePage.setInputFiles('#file-input', image);
    await phonePage.waitForSelector('body[data-state="ready"]', {timeout: 120000});
    const overflow = await phonePage.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `no horizontal scrolling on a 390 px wide phone (overflow ${overflow} px)`);
    const phoneShot = path.join(outDir, 'demo_screenshot_phone.png');
    await phonePage.screenshot({path: phoneShot, fullPage: true});
    console.log(`screenshot: ${phoneShot}`);

    // Live mode with Chromium's fake camera: frames keep coming and the FPS badge counts them.
    const live = await browser.newContext({viewport: {width: 1280, height: 860}, permissions: ['camera']});
    const livePage = await live.newPage();
    await livePage.goto(url);
    await livePage.click('#live-button');
    await livePage.waitForFunction(() => /^[\d.]+ fps$/.test(document.getElementById('fps').textContent), null,
                                   {timeout: 120000});
    const fps = await livePage.textContent('#fps');
    const liveClasses = await livePage.$$eval('#legend li .name', (els) => els.length);
    check(liveClasses > 0, `live camera mode segments frames: ${fps}, ${liveClasses} classes in the legend`);
    await livePage.screenshot({path: path.join(outDir, 'demo_screenshot_live.png')});
    await livePage.click('#live-button');
    check(await livePage.$eval('#fps', (el) => el.hidden), 'stopping the live mode hides the FPS badge');

    await checkZeroShot(browser, url, image, outDir, pageErrors);
    await checkZeroShotOnly(browser, serverBin, zeroShotArgs, image);

    const unexpected = pageErrors.filter((e) => !/status of 400/.test(e));  // the corrupt upload's 400
    check(unexpected.length === 0, `no errors in the page's console${unexpected.length ? `: ${unexpected.join('; ')}` : ''}`);

    await checkTokenFlow(browser, serverBin, model, image);
    console.log('PASS');
  } finally {
    if (browser) await browser.close();
    server.kill('SIGTERM');
  }
}

// The latency panel: the six parts, named, each filled, adding up to the end-to-end time; in the
// zero-shot mode the model's own parts (`subParts`) under it.
async function checkLatencyPanel(page, subParts) {
  const parts = ['decode', 'model', 'postprocess', 'encode', 'network', 'render'];
  const rows = await page.$$eval('.latency-list > div:not([hidden]):not(.sub):not(.total)', (els) => els.map((e) => ({
    label: e.querySelector('dt').textContent, value: e.querySelector('dd').textContent, id: e.querySelector('dd').id,
  })));
  check(rows.length === 6 && parts.every((p, i) => rows[i].id === `t-${p}`),
        `the latency panel shows six parts: ${rows.map((r) => `${r.label} ${r.value}`).join(', ')}`);
  const labels = rows.map((r) => r.label).join('|');
  check(/Decode \(server\)/.test(labels) && /Model/.test(labels) && /Post-process/.test(labels) && /Encode \(server\)/.test(labels) &&
        /Network/.test(labels) && /Render/.test(labels), 'named decode (server), model, post-process, encode (server), network, render');
  const ms = (t) => (/ ms$/.test(t) ? parseFloat(t) : NaN);
  const values = rows.map((r) => ms(r.value));
  const total = ms(await page.textContent('#t-total'));
  const sum = values.reduce((a, b) => a + b, 0);
  check(values.every((v) => v >= 0) && Math.abs(sum - total) <= 0.5 * (rows.length + 1),
        `the parts add up to the end-to-end time (${sum.toFixed(1)} vs ${total} ms)`);
  for (const sub of subParts) check(ms(await page.textContent(`#t-${sub}`)) >= 0, `the model's part "${sub}" is shown`);
}

// The page's segmentation requests go out with mask=1 added, so each answer also holds the colour
// mask the server paints itself for the very upload the page sent; the page ignores it. Returns
// {last}: the last answer (its Response).
async function watchAnswers(page) {
  const answers = {last: null};
  await page.route(/\/api\/(segment|zero_shot)\?/, (route) => route.continue({url: `${route.request().url()}&mask=1`}));
  page.on('response', (r) => {
    if (/\/api\/(segment|zero_shot)\?/.test(r.url()) && r.status() === 200) answers.last = r;
  });
  return answers;
}

// The label map payload decoded here, independently of the page: base64 of runs, each two LEB128
// varints (the class id, the run's length).
function decodeRuns(payload) {
  const bytes = Buffer.from(payload.data, 'base64');
  const n = payload.width * payload.height;
  const out = new Uint32Array(n);
  let i = 0, p = 0;
  const varint = () => {
    let v = 0, scale = 1, b;
    do {
      if (i >= bytes.length) throw new Error('label map: truncated');
      b = bytes[i++];
      v += (b & 0x7f) * scale;
      scale *= 128;
    } while (b & 0x80);
    return v;
  };
  while (i < bytes.length) {
    const id = varint(), run = varint();
    if (run < 1 || p + run > n) throw new Error('label map: runs beyond its size');
    out.fill(id, p, p + run);
    p += run;
  }
  if (p !== n) throw new Error(`label map: ${p} of ${n} pixels`);
  return out;
}

// The canvas in the mask view against (1) the label map of the last answer coloured here by its
// palette ("nothing", id 0 of the zero-shot mode, transparent) and (2) the colour mask the server
// painted itself for the same upload: every pixel must match both, so the page decodes the label map
// and colours it exactly.
async function checkColours(page, answers) {
  check(answers.last !== null, 'the page\'s answer was seen');
  const answer = await answers.last.json();
  check(answer.label_map && answer.palette && answer.mask_png, 'it holds the label map, the palette and the server\'s mask');
  const labels = decodeRuns(answer.label_map);
  const zeroShot = answer.prompts !== undefined;
  const want = Buffer.alloc(labels.length * 4);
  for (let p = 0; p < labels.length; ++p) {
    if (zeroShot && labels[p] === 0) continue;
    const [r, g, b] = answer.palette[labels[p]];
    want[p * 4] = r;
    want[p * 4 + 1] = g;
    want[p * 4 + 2] = b;
    want[p * 4 + 3] = 255;
  }
  await page.click('[data-view="mask"]');
  const result = await page.evaluate(async ({wantB64, maskB64, w, h}) => {
    const decode = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const png = decode(maskB64);
    const bmp = await createImageBitmap(new Blob([png], {type: 'image/png'}),
                                        {premultiplyAlpha: 'none', colorSpaceConversion: 'none'});
    const ref = document.createElement('canvas');
    ref.width = bmp.width;
    ref.height = bmp.height;
    ref.getContext('2d').drawImage(bmp, 0, 0);
    const server = ref.getContext('2d').getImageData(0, 0, ref.width, ref.height).data;
    const mine = decode(wantB64);
    const shown = document.getElementById('canvas');
    if (shown.width !== w || shown.height !== h || bmp.width !== w || bmp.height !== h)
      return {size: `${shown.width}x${shown.height} shown, ${bmp.width}x${bmp.height} server mask, ${w}x${h} label map`};
    const got = shown.getContext('2d').getImageData(0, 0, w, h).data;
    const differ = (want) => {
      let n = 0;
      for (let i = 0; i < got.length; i += 4) {
        if (got[i + 3] === 0 && want[i + 3] === 0) continue;  // transparent either way ("nothing")
        if (got[i] !== want[i] || got[i + 1] !== want[i + 1] || got[i + 2] !== want[i + 2] || got[i + 3] !== want[i + 3]) ++n;
      }
      return n;
    };
    return {mine: differ(mine), server: differ(server)};
  }, {wantB64: want.toString('base64'), maskB64: answer.mask_png, w: answer.label_map.width, h: answer.label_map.height});
  check(result.mine === 0 && result.server === 0,
        `the page renders the ${answer.label_map.width}x${answer.label_map.height} label map to its palette's colours ` +
        `(${result.size || `${result.mine} pixels differ from the label map coloured here, ${result.server} from the server's mask`})`);
  await page.click('[data-view="overlay"]');
}

// The zero-shot mode on the server with both models: switch to it, type prompts, run them on a photo,
// check the legend (the prompts with their shares), the latency panel's split and the threshold;
// then the live camera in that mode.
async function checkZeroShot(browser, url, image, outDir, pageErrors) {
  const context = await browser.newContext({viewport: {width: 1280, height: 900}, permissions: ['camera']});
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
  const answers = await watchAnswers(page);
  await page.goto(url);
  await page.waitForFunction(() => !document.getElementById('model-name').textContent.includes('connecting'));
  check(await page.isVisible('#mode-switch'), 'with both models the mode switch is shown');
  check(await page.isHidden('#zs-card'), 'the SegFormer mode comes first: no prompt box');
  await page.click('[data-mode="zero_shot"]');
  check(await page.isVisible('#zs-card'), 'the zero-shot mode shows the prompt box');
  const defaults = await page.inputValue('#prompts');
  check(/road/.test(defaults) && /traffic light/.test(defaults), `the prompt box holds the street defaults: "${defaults}"`);
  check((await page.textContent('#threshold-value')) === '0.10', 'the threshold starts at 0.10');
  check(/zero-shot/.test(await page.textContent('#model-name')), 'the header names the zero-shot model');

  // A photo first (runs the defaults), then our own prompts with Run.
  await page.setInputFiles('#file-input', image);
  await page.waitForSelector('body[data-state="ready"]', {timeout: 180000});
  const prompts = ['road', 'sky', 'a parked car', 'tree'];
  await page.fill('#prompts', prompts.join('; '));
  const before = await page.$$eval('#legend li .name', (els) => els.map((e) => e.textContent).join('|'));
  await page.click('#zs-run');
  await page.waitForFunction((b) => [...document.querySelectorAll('#legend li .name')].map((e) => e.textContent).join('|') !== b,
                             before, {timeout: 180000});
  await page.waitForSelector('body:not(.is-busy)', {timeout: 180000});
  const legend = await page.$$eval('#legend li', (lis) => lis.map((li) => ({
    name: li.querySelector('.name')?.textContent, share: li.querySelector('.share')?.textContent,
  })));
  const names = legend.map((l) => l.name);
  check(prompts.every((p) => names.includes(p)) && names.includes('nothing') && legend.length === prompts.length + 1,
        `the legend lists the prompts and "nothing": ${legend.map((l) => `${l.name} ${l.share}`).join(', ')}`);
  const total = legend.reduce((s, l) => s + parseFloat(l.share), 0);
  check(legend.every((l) => /%$/.test(l.share)) && Math.abs(total - 100) < 2, `the shares add up to 100% (${total.toFixed(1)})`);
  await checkLatencyPanel(page, ['text', 'vision', 'decoder']);
  await checkColours(page, answers);
  const shot = path.join(outDir, 'demo_screenshot_zero_shot.png');
  await page.screenshot({path: shot, fullPage: true});
  console.log(`screenshot: ${shot}`);

  // A threshold of 0.9: more pixels are "nothing" (random or not, sigmoids rarely pass 0.9 everywhere).
  const nothingShare = async () => parseFloat(await page.$eval('#legend li.nothing .share', (e) => e.textContent));
  const lowNothing = await nothingShare();
  await page.$eval('#threshold', (el) => { el.value = '0.9'; el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); });
  await page.waitForFunction((v) => {
    const e = document.querySelector('#legend li.nothing .share');
    return e && parseFloat(e.textContent) !== v && !document.body.classList.contains('is-busy');
  }, lowNothing, {timeout: 180000}).catch(() => {});
  const highNothing = await nothingShare();
  check(highNothing >= lowNothing, `a higher threshold leaves more pixels to "nothing" (${lowNothing}% -> ${highNothing}%)`);

  // An empty prompt: the server's 400 message in a toast.
  await page.fill('#prompts', 'road;;car');
  await page.click('#zs-run');
  await page.waitForSelector('#toast:not([hidden])', {timeout: 30000});
  check(/prompt 2 is empty/.test(await page.textContent('#toast')), 'an empty prompt shows the server\'s error');

  // The live camera in the zero-shot mode, with the prompts of the box.
  await page.fill('#prompts', 'road; sky');
  await page.click('#live-button');
  await page.waitForFunction(() => /^[\d.]+ fps$/.test(document.getElementById('fps').textContent), null, {timeout: 180000});
  const liveNames = await page.$$eval('#legend li .name', (els) => els.map((e) => e.textContent));
  check(liveNames.includes('road') && liveNames.includes('sky') && liveNames.length === 3,
        `the live camera runs the prompts too: ${liveNames.join(', ')}`);
  await page.click('#live-button');
  await context.close();
}

// A server with only a CLIPSeg: the page has the zero-shot mode alone, no switch.
async function checkZeroShotOnly(browser, serverBin, zeroShotArgs, image) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const serverArgs = ['--host', '127.0.0.1', '--port', String(port), ...zeroShotArgs];
  console.log(`starting ${serverBin} ${serverArgs.join(' ')}`);
  const server = spawn(serverBin, serverArgs, {stdio: ['ignore', 'inherit', 'inherit']});
  try {
    await waitForHealth(url, server, 60000);
    const context = await browser.newContext({viewport: {width: 390, height: 844}, isMobile: true, hasTouch: true});
    const page = await context.newPage();
    await page.goto(url);
    await page.waitForFunction(() => !document.getElementById('model-name').textContent.includes('connecting'));
    check(await page.isHidden('#mode-switch') && await page.isVisible('#zs-card'),
          'with only a CLIPSeg the page is in the zero-shot mode, without a switch');
    await page.setInputFiles('#file-input', image);
    await page.waitForSelector('body[data-state="ready"]', {timeout: 180000});
    check((await page.$$('#legend li .name')).length === 10, 'and segments a photo with the 9 default prompts');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `no horizontal scrolling on a phone in the zero-shot mode (overflow ${overflow} px)`);
    await context.close();
  } finally {
    server.kill('SIGTERM');
  }
}

// Beyond loopback: the server prints an address with ?token=; a phone opening it gets the page, and
// the page's requests are authorised by the cookie that address sets. Without the token: 401.
async function checkTokenFlow(browser, serverBin, model, image) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const serverArgs = ['--host', '0.0.0.0', '--port', String(port), ...(model ? ['--model', model] : ['--random-init', 'tiny'])];
  console.log(`starting ${serverBin} ${serverArgs.join(' ')}`);
  const server = spawn(serverBin, serverArgs, {stdio: ['ignore', 'pipe', 'inherit']});
  let printed = '';
  server.stdout.on('data', (d) => { printed += d; process.stdout.write(d); });
  try {
    await waitForHealth(url, server, 60000);  // /healthz needs no token
    const token = (printed.match(/\?token=([A-Za-z0-9._~-]+)/) || [])[1];
    check(/WARNING: .*reachable from the network/.test(printed) && token, `it warns and prints the address with a token`);
    check((await fetch(`${url}/api/info`)).status === 401, 'a request without the token gets 401');
    check((await fetch(`${url}/api/info`, {headers: {Authorization: `Bearer ${token}`}})).status === 200,
          'a bearer token is accepted');
    const phone = await browser.newContext({viewport: {width: 390, height: 844}, isMobile: true, hasTouch: true});
    const page = await phone.newPage();
    await page.goto(`${url}/?token=${token}`);
    await page.waitForFunction(() => !document.getElementById('model-name').textContent.includes('connecting'));
    check(/classes/.test(await page.textContent('#model-name')), 'the page opened with ?token= loads the model info');
    await page.setInputFiles('#file-input', image);
    await page.waitForSelector('body[data-state="ready"]', {timeout: 120000});
    check((await page.$$('#legend li .name')).length > 0, 'and segments an upload (the cookie carries the token)');
    const cookie = (await phone.cookies()).find((c) => c.name === 'segml_token');
    check(cookie && cookie.httpOnly && cookie.sameSite === 'Strict', 'the token cookie is HttpOnly and SameSite=Strict');
    await phone.close();
  } finally {
    server.kill('SIGTERM');
  }
}

main().catch((e) => {
  console.error(`FAIL: ${e.stack || e}`);
  process.exit(1);
});
