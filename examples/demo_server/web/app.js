// The demo page's logic: get an image (file, drop, paste, phone camera or a live video frame),
// POST it to /api/segment (SegFormer mode) or, with the prompts and threshold, to /api/zero_shot
// (zero-shot mode: a CLIPSeg), and draw the answer: the photo, the class colours over it, the
// legend and where the time went. /api/info says which modes the server has; with one, the mode
// switch stays hidden. Plain browser JavaScript, no dependencies.
'use strict';

const MAX_SIDE = 1024;        // photos are scaled down to this before upload
const LIVE_MAX_SIDE = 512;    // live frames are smaller, for frame rate
const $ = (id) => document.getElementById(id);

const ui = {
  stage: $('stage'), canvas: $('canvas'), video: $('video'), placeholder: $('placeholder'),
  fps: $('fps'), busy: $('busy'), legend: $('legend'), toast: $('toast'),
  opacity: $('opacity'), opacityValue: $('opacity-value'), liveButton: $('live-button'), liveLabel: $('live-label'),
  views: document.querySelectorAll('[data-view]'), modes: document.querySelectorAll('[data-mode]'),
  prompts: $('prompts'), threshold: $('threshold'), thresholdValue: $('threshold-value'),
};

// The latency panel's rows per mode: [key, label]; the server's share is split as the CLI's is.
const LATENCY_ROWS = {
  segment: [['upload', 'Upload'], ['server', 'Pre/post-processing'], ['model', 'Model'], ['render', 'Render']],
  zero_shot: [['upload', 'Upload'], ['preprocess', 'Preprocess'], ['vision', 'Vision tower'], ['text', 'Text'],
              ['decoder', 'Decoder'], ['postprocess', 'Post-process'], ['render', 'Render']],
};

const state = {
  view: 'overlay',
  opacity: 0.55,
  image: null,    // the photo as sent (canvas)
  mask: null,     // the colour mask (ImageBitmap), same size as the image
  live: null,     // {stream, running, frames, fps, last}
  busy: false,
  mode: 'segment', // or 'zero_shot'
  info: null,     // /api/info
  blob: null,     // the last photo sent, to run again when the mode or the prompts change
};

// ---- server -----------------------------------------------------------------------------------

async function loadInfo() {
  try {
    const info = await (await fetch('api/info')).json();
    state.info = info;
    const modes = info.modes || ['segment'];
    if (info.zero_shot) {
      ui.prompts.value = info.zero_shot.default_prompts;
      setThreshold(info.zero_shot.default_threshold);
    }
    ui.modes.forEach((b) => { b.hidden = !modes.includes(b.dataset.mode); });
    $('mode-switch').hidden = modes.length < 2;
    if (info.classes) $('all-classes').textContent = 'Model classes: ' + info.classes.map((c) => c.name).join(', ');
    $('health-dot').classList.add('ok');
    setMode(modes.includes('segment') ? 'segment' : 'zero_shot', false);
  } catch (e) {
    $('model-name').textContent = 'server unreachable';
    $('health-dot').classList.add('bad');
  }
}

const baseName = (path) => path.split('/').filter(Boolean).pop();

// The header's model line for the current mode.
function showModel() {
  const info = state.info;
  if (!info) return;
  if (state.mode === 'zero_shot') {
    const [h, w] = info.zero_shot.input_size;
    $('model-name').textContent = `${baseName(info.zero_shot.model)} · zero-shot · ${w}×${h}`;
  } else {
    const [h, w] = info.input_size;
    $('model-name').textContent = `${baseName(info.model)} · ${info.num_labels} classes · ${w}×${h}`;
  }
}

function setThreshold(v) {
  ui.threshold.value = String(v);
  ui.thresholdValue.textContent = Number(v).toFixed(2);
}

// Switches between the SegFormer and the zero-shot mode; runs the current photo again in the new one.
function setMode(mode, rerun = true) {
  state.mode = mode;
  document.body.dataset.mode = mode;
  ui.modes.forEach((b) => b.setAttribute('aria-checked', String(b.dataset.mode === mode)));
  $('zs-card').hidden = mode !== 'zero_shot';
  $('legend-title').textContent = mode === 'zero_shot' ? 'Prompts in this image' : 'Classes in this image';
  $('subtitle-model').textContent = mode === 'zero_shot' ? 'CLIPSeg zero-shot' : 'SegFormer';
  layoutLatency(mode);
  showModel();
  if (rerun && state.blob && !state.live) runOnce(state.image, state.blob);
}

// Sends an image blob to the current mode's endpoint, returns {result, networkMs} or throws with the
// server's message.
async function segment(blob) {
  const t0 = performance.now();
  let response;
  if (state.mode === 'zero_shot') {
    const form = new FormData();
    form.append('image', blob, 'image.jpg');
    form.append('prompts', ui.prompts.value);
    response = await fetch(`api/zero_shot?overlay=0&mask=1&threshold=${encodeURIComponent(ui.threshold.value)}`,
                           {method: 'POST', body: form});
  } else {
    response = await fetch('api/segment?overlay=0&mask=1', {
      method: 'POST', body: blob, headers: {'Content-Type': blob.type || 'application/octet-stream'},
    });
  }
  let body;
  try {
    body = await response.json();
  } catch (e) {
    throw new Error(`server answered ${response.status} without JSON`);
  }
  if (!response.ok) {
    const err = new Error(body.error || `HTTP ${response.status}`);
    err.status = response.status;
    throw err;
  }
  const roundTrip = performance.now() - t0;
  return {result: body, networkMs: Math.max(0, roundTrip - body.timings_ms.total)};
}

// ---- images -----------------------------------------------------------------------------------

// Any drawable (ImageBitmap, video) -> a canvas of at most maxSide px.
function toCanvas(source, width, height, maxSide) {
  const scale = Math.min(1, maxSide / Math.max(width, height));
  const canvas = document.createElement('canvas');
  canvas.width = Math.max(1, Math.round(width * scale));
  canvas.height = Math.max(1, Math.round(height * scale));
  canvas.getContext('2d').drawImage(source, 0, 0, canvas.width, canvas.height);
  return canvas;
}

const toJpeg = (canvas, quality) => new Promise((resolve, reject) =>
  canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('could not encode the image'))), 'image/jpeg', quality));

async function base64ToBitmap(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return createImageBitmap(new Blob([bytes], {type: 'image/png'}));
}

// ---- one photo --------------------------------------------------------------------------------

async function segmentFile(file) {
  if (!file) return;
  if (state.live) stopLive();
  if (file.type && !file.type.startsWith('image/')) {
    toast(`“${file.name}” is not an image.`);
    return;
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);  // browsers apply the EXIF orientation here
  } catch (e) {
    // The browser cannot decode it (e.g. HEIC on some browsers): let the server try the raw bytes.
    return runOnce(null, file);
  }
  const canvas = toCanvas(bitmap, bitmap.width, bitmap.height, MAX_SIDE);
  bitmap.close?.();
  return runOnce(canvas, await toJpeg(canvas, 0.92));
}

async function runOnce(canvas, blob) {
  state.blob = blob;
  setBusy(true);
  try {
    const {result, networkMs} = await segment(blob);
    const t0 = performance.now();
    state.mask = await base64ToBitmap(result.mask_png);
    state.image = canvas || (await fallbackImage(blob, result));
    draw();
    const renderMs = performance.now() - t0;
    showResult(result, networkMs, renderMs, blob.size);
    document.body.dataset.state = 'ready';
  } catch (e) {
    toast(e.message);
    document.body.dataset.state = state.image ? 'ready' : 'empty';
  } finally {
    setBusy(false);
  }
}

// When the browser could not decode the upload itself, show the mask alone.
async function fallbackImage(blob, result) {
  try {
    const bmp = await createImageBitmap(blob);
    return toCanvas(bmp, bmp.width, bmp.height, MAX_SIDE);
  } catch (e) {
    setView('mask');
    const c = document.createElement('canvas');
    c.width = result.width;
    c.height = result.height;
    return c;
  }
}

// ---- drawing ----------------------------------------------------------------------------------

function draw() {
  if (!state.image) return;
  const {canvas} = ui;
  const w = state.image.width, h = state.image.height;
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext('2d');
  ctx.globalAlpha = 1;
  ctx.clearRect(0, 0, w, h);
  if (state.view !== 'mask') ctx.drawImage(state.image, 0, 0, w, h);
  if (state.mask && state.view !== 'original') {
    ctx.globalAlpha = state.view === 'mask' ? 1 : state.opacity;
    ctx.drawImage(state.mask, 0, 0, w, h);
    ctx.globalAlpha = 1;
  }
  canvas.hidden = false;
  ui.placeholder.hidden = true;
}

const fmtMs = (ms) => (ms >= 100 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`);

// The latency panel's rows for `mode` (ids t-<key>), and the total.
function layoutLatency(mode) {
  const rows = LATENCY_ROWS[mode].map(([key, label]) => {
    const div = document.createElement('div');
    div.innerHTML = `<dt><i class="c-${key}"></i></dt><dd id="t-${key}">–</dd>`;
    div.querySelector('dt').append(label);
    return div;
  });
  const total = document.createElement('div');
  total.className = 'total';
  total.innerHTML = '<dt>End to end</dt><dd id="t-total">–</dd>';
  document.querySelector('.latency-list').replaceChildren(...rows, total);
  $('latency-bar').replaceChildren();
}

function showResult(result, networkMs, renderMs, bytes) {
  const zeroShot = result.prompts !== undefined;
  // Legend: classes present (zero-shot: every prompt), largest share first.
  const entries = zeroShot
    ? [...result.classes, {id: 0, name: 'nothing', color: [60, 66, 76], share: result.nothing.share, nothing: true}]
    : result.classes;
  ui.legend.replaceChildren(...entries.map((c) => {
    const li = document.createElement('li');
    const pct = c.share * 100;
    const color = `rgb(${c.color.join(',')})`;
    li.innerHTML = `<span class="swatch"></span><span class="name"></span><span class="share"></span>` +
                   `<span class="share-bar"><span></span></span>`;
    li.querySelector('.swatch').style.background = color;
    li.querySelector('.name').textContent = c.name.replace(/_/g, ' ');
    li.querySelector('.share').textContent = pct >= 10 ? `${pct.toFixed(0)}%` : `${pct.toFixed(1)}%`;
    const bar = li.querySelector('.share-bar span');
    bar.style.width = `${Math.max(1, pct)}%`;
    bar.style.background = color;
    li.dataset.classId = c.id;
    if (c.nothing) li.classList.add('nothing');
    return li;
  }));

  // Latency: network (upload + download), the server's phases, render.
  const t = result.timings_ms;
  const mode = zeroShot ? 'zero_shot' : 'segment';
  if (!document.getElementById(zeroShot ? 't-vision' : 't-server')) layoutLatency(mode);
  const values = zeroShot
    ? {upload: networkMs, preprocess: t.decode + t.preprocess, vision: t.vision, text: t.text, decoder: t.decoder,
       postprocess: t.postprocess + t.encode, render: renderMs}
    : {upload: networkMs, server: t.total - t.model, model: t.model, render: renderMs};
  const parts = LATENCY_ROWS[mode].map(([key]) => [key, values[key]]);
  const total = parts.reduce((s, [, v]) => s + v, 0);
  for (const [key, v] of parts) $(`t-${key}`).textContent = fmtMs(v);
  $('t-total').textContent = fmtMs(total);
  $('latency-bar').replaceChildren(...parts.map(([name, v]) => {
    const span = document.createElement('span');
    span.className = `c-${name}`;
    span.style.flexGrow = String(Math.max(v, total * 0.01));
    span.title = `${name}: ${fmtMs(v)}`;
    return span;
  }));
  if (zeroShot) {
    const cached = result.classes.length && t.text - t.tokenize < 0.05 ? ' (cached prompts)' : '';
    const random = /^random-/.test(baseName(state.info?.zero_shot?.model || ''));
    $('zs-hint').textContent = `${result.prompts.length} prompts, threshold ${result.threshold.toFixed(2)}; ` +
        `text ${fmtMs(t.text)}${cached}.` + (random ? ' A random model: its masks are noise.' : '');
  }
  $('size-info').textContent =
      `${result.width}×${result.height} px, ${(bytes / 1024).toFixed(0)} KB sent; model input ` +
      `${result.model_input[1]}×${result.model_input[0]}` + (t.queue > 1 ? `; waited ${fmtMs(t.queue)} in the queue` : '');
}

function setView(view) {
  state.view = view;
  ui.views.forEach((b) => b.setAttribute('aria-checked', String(b.dataset.view === view)));
  ui.opacity.disabled = view !== 'overlay';
  draw();
}

function setBusy(busy) {
  state.busy = busy;
  ui.busy.hidden = !busy || !!state.live;
  document.body.classList.toggle('is-busy', busy);
}

let toastTimer = 0;
function toast(message) {
  ui.toast.textContent = message;
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 5000);
}

// ---- live camera ------------------------------------------------------------------------------

async function startLive() {
  if (!navigator.mediaDevices?.getUserMedia) {
    toast(window.isSecureContext
      ? 'This browser has no camera access.'
      : 'The live camera needs HTTPS (or localhost). Start demo_server with --tls-cert/--tls-key — see docs/demo.md. Photos still work.');
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: {facingMode: {ideal: 'environment'}, width: {ideal: 1280}, height: {ideal: 720}}, audio: false,
    });
  } catch (e) {
    toast(`Camera unavailable: ${e.message || e.name}`);
    return;
  }
  ui.video.srcObject = stream;
  await ui.video.play();
  state.live = {stream, running: true, fps: 0, last: 0};
  state.blob = null;  // the frames are not kept
  ui.liveButton.setAttribute('aria-pressed', 'true');
  ui.liveLabel.textContent = 'Stop live';
  ui.fps.hidden = false;
  ui.fps.textContent = '… fps';
  liveLoop(state.live);
}

function stopLive() {
  const live = state.live;
  if (!live) return;
  live.running = false;
  live.stream.getTracks().forEach((t) => t.stop());
  ui.video.srcObject = null;
  state.live = null;
  ui.liveButton.setAttribute('aria-pressed', 'false');
  ui.liveLabel.textContent = 'Live camera';
  ui.fps.hidden = true;
}

// One request in flight at a time: grab a frame, segment it, draw it, repeat.
async function liveLoop(live) {
  while (live.running) {
    const v = ui.video;
    if (!v.videoWidth) {
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    const frame = toCanvas(v, v.videoWidth, v.videoHeight, LIVE_MAX_SIDE);
    try {
      const blob = await toJpeg(frame, 0.8);
      const {result, networkMs} = await segment(blob);
      if (!live.running) break;
      const t0 = performance.now();
      state.mask = await base64ToBitmap(result.mask_png);
      state.image = frame;
      draw();
      showResult(result, networkMs, performance.now() - t0, blob.size);
      document.body.dataset.state = 'ready';
      const now = performance.now();
      if (live.last) {
        const fps = 1000 / (now - live.last);
        live.fps = live.fps ? 0.8 * live.fps + 0.2 * fps : fps;
        ui.fps.textContent = `${live.fps.toFixed(live.fps < 10 ? 1 : 0)} fps`;
      }
      live.last = now;
    } catch (e) {
      if (e.status === 503) {          // the server is busy: back off a little
        await new Promise((r) => setTimeout(r, 250));
      } else {
        toast(e.message);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }
}

// ---- wiring -----------------------------------------------------------------------------------

$('file-input').addEventListener('change', (e) => { segmentFile(e.target.files[0]); e.target.value = ''; });
$('camera-input').addEventListener('change', (e) => { segmentFile(e.target.files[0]); e.target.value = ''; });
ui.liveButton.addEventListener('click', () => (state.live ? stopLive() : startLive()));
ui.views.forEach((b) => b.addEventListener('click', () => setView(b.dataset.view)));
ui.modes.forEach((b) => b.addEventListener('click', () => { if (b.dataset.mode !== state.mode) setMode(b.dataset.mode); }));
ui.threshold.addEventListener('input', () => setThreshold(ui.threshold.value));
ui.threshold.addEventListener('change', () => { if (state.blob && !state.live) runOnce(state.image, state.blob); });
$('zs-run').addEventListener('click', () => {
  if (state.live) return;  // the live loop picks the new prompts up with its next frame
  if (!state.blob) toast('Choose a photo first (or go live with the camera): the prompts are run on it.');
  else runOnce(state.image, state.blob);
});
// Ctrl/Cmd+Enter in the prompt box runs the prompts.
ui.prompts.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $('zs-run').click(); }
});
ui.opacity.addEventListener('input', () => {
  state.opacity = ui.opacity.value / 100;
  ui.opacityValue.textContent = `${ui.opacity.value}%`;
  if (state.view !== 'overlay') setView('overlay');
  else draw();
});

// Drag and drop anywhere on the page; paste an image from the clipboard.
let dragDepth = 0;
window.addEventListener('dragenter', (e) => { e.preventDefault(); dragDepth++; document.body.classList.add('dragging'); });
window.addEventListener('dragleave', () => { if (--dragDepth <= 0) { dragDepth = 0; document.body.classList.remove('dragging'); } });
window.addEventListener('dragover', (e) => e.preventDefault());
window.addEventListener('drop', (e) => {
  e.preventDefault();
  dragDepth = 0;
  document.body.classList.remove('dragging');
  segmentFile(e.dataTransfer.files[0]);
});
window.addEventListener('paste', (e) => {
  const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith('image/'));
  if (item) segmentFile(item.getAsFile());
});
// Keyboard: 1/2/3 switch the view.
window.addEventListener('keydown', (e) => {
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
  const view = {1: 'original', 2: 'overlay', 3: 'mask'}[e.key];
  if (view) setView(view);
});

loadInfo();
