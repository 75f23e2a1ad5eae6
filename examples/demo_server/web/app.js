// The demo page's logic: get an image (file, drop, paste, phone camera or a live video frame),
// POST it to /api/segment, and draw the answer: the photo, the class colours over it, the legend
// and where the time went. Plain browser JavaScript, no dependencies.
'use strict';

const MAX_SIDE = 1024;        // photos are scaled down to this before upload
const LIVE_MAX_SIDE = 512;    // live frames are smaller, for frame rate
const $ = (id) => document.getElementById(id);

const ui = {
  stage: $('stage'), canvas: $('canvas'), video: $('video'), placeholder: $('placeholder'),
  fps: $('fps'), busy: $('busy'), legend: $('legend'), toast: $('toast'),
  opacity: $('opacity'), opacityValue: $('opacity-value'), liveButton: $('live-button'), liveLabel: $('live-label'),
  views: document.querySelectorAll('[data-view]'),
};

const state = {
  view: 'overlay',
  opacity: 0.55,
  image: null,    // the photo as sent (canvas)
  mask: null,     // the colour mask (ImageBitmap), same size as the image
  live: null,     // {stream, running, frames, fps, last}
  busy: false,
};

// ---- server -----------------------------------------------------------------------------------

async function loadInfo() {
  try {
    const info = await (await fetch('api/info')).json();
    const [h, w] = info.input_size;
    $('model-name').textContent = `${info.model.split('/').filter(Boolean).pop()} · ${info.num_labels} classes · ${w}×${h}`;
    $('health-dot').classList.add('ok');
    $('all-classes').textContent = 'Model classes: ' + info.classes.map((c) => c.name).join(', ');
  } catch (e) {
    $('model-name').textContent = 'server unreachable';
    $('health-dot').classList.add('bad');
  }
}

// Sends an image blob, returns {result, uploadMs} or throws with the server's message.
async function segment(blob) {
  const t0 = performance.now();
  const response = await fetch('api/segment?overlay=0&mask=1', {
    method: 'POST', body: blob, headers: {'Content-Type': blob.type || 'application/octet-stream'},
  });
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

function showResult(result, networkMs, renderMs, bytes) {
  // Legend: classes present, largest share first.
  ui.legend.replaceChildren(...result.classes.map((c) => {
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
    return li;
  }));

  // Latency: network (upload + download), server pre/post-processing, model, render.
  const t = result.timings_ms;
  const server = t.total - t.model;
  const parts = [['upload', networkMs], ['server', server], ['model', t.model], ['render', renderMs]];
  const total = parts.reduce((s, [, v]) => s + v, 0);
  $('t-upload').textContent = fmtMs(networkMs);
  $('t-server').textContent = fmtMs(server);
  $('t-model').textContent = fmtMs(t.model);
  $('t-render').textContent = fmtMs(renderMs);
  $('t-total').textContent = fmtMs(total);
  $('latency-bar').replaceChildren(...parts.map(([name, v]) => {
    const span = document.createElement('span');
    span.className = `c-${name}`;
    span.style.flexGrow = String(Math.max(v, total * 0.01));
    span.title = `${name}: ${fmtMs(v)}`;
    return span;
  }));
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
  if (e.target instanceof HTMLInputElement) return;
  const view = {1: 'original', 2: 'overlay', 3: 'mask'}[e.key];
  if (view) setView(view);
});

loadInfo();
