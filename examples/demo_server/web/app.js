// The demo page's logic: get an image (file, drop, paste, phone camera, an example scene or a live
// video frame), POST it to /api/segment (SegFormer mode) or, with the prompts and threshold, to
// /api/zero_shot (zero-shot mode: a CLIPSeg), and draw the answer: the server sends the label map
// run-length encoded with its palette (label_map=1, see docs/demo.md); the page colours it, blends
// it over the photo, and can download that overlay as PNG. The legend, and where the time went:
// the server's parts (decode, model, post-process, encode) from its answer, the network (the round
// trip minus the server's time) and the rendering measured here. /api/info says which modes the
// server has; with one, the mode switch stays hidden. Plain browser JavaScript, no dependencies.
'use strict';

const MAX_SIDE = 1024;        // photos are scaled down to this before upload
// A phone or tablet: "tap" rather than "drop" (a touch screen is the primary pointer).
const TOUCH = window.matchMedia('(pointer: coarse)').matches;
const LIVE_MAX_SIDE = 512;    // live frames are smaller, for frame rate
const $ = (id) => document.getElementById(id);

const ui = {
  stage: $('stage'), canvas: $('canvas'), video: $('video'), placeholder: $('placeholder'),
  fps: $('fps'), busy: $('busy'), legend: $('legend'), toast: $('toast'),
  opacity: $('opacity'), opacityValue: $('opacity-value'), liveButton: $('live-button'), liveLabel: $('live-label'),
  views: document.querySelectorAll('[data-view]'), modes: document.querySelectorAll('[data-mode]'),
  prompts: $('prompts'), threshold: $('threshold'), thresholdValue: $('threshold-value'),
};

// The latency panel's rows: [key, label, title]; they add up to the end-to-end time. "queue" is shown
// only when a request waited for the model. In the zero-shot mode the model's row is split further
// (SUB_ROWS, indented, not added again).
const LATENCY_ROWS = [
  ['decode', 'Decode (server)', 'the server decodes the upload, resizes and normalises it for the model'],
  ['queue', 'Waiting for the model', 'other requests were using the model'],
  ['model', 'Model', 'the network itself, on the server'],
  ['postprocess', 'Post-process', 'upsampling the logits to the photo, per-pixel argmax, class shares'],
  ['encode', 'Encode (server)', 'the label map run-length encoded, base64'],
  ['network', 'Network', 'the round trip measured here minus the server\'s time: upload, download, JSON'],
  ['render', 'Render (browser)', 'decoding and colouring the label map, drawing it over the photo'],
];
const SUB_ROWS = {zero_shot: [['text', 'text'], ['vision', 'vision tower'], ['decoder', 'decoder']]};

const state = {
  view: 'overlay',
  opacity: 0.55,
  image: null,    // the photo as sent (canvas)
  mask: null,     // the colour mask (canvas, transparent where nothing is coloured), same size as the image
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
    response = await fetch(`api/zero_shot?overlay=0&label_map=1&threshold=${encodeURIComponent(ui.threshold.value)}`,
                           {method: 'POST', body: form});
  } else {
    response = await fetch('api/segment?overlay=0&label_map=1', {
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

// The label map payload {encoding: 'rle-varint', width, height, data} -> Uint32Array of class ids:
// data is base64 of runs, each two LEB128 varints (the label, then the run's length).
function decodeLabelMap(payload) {
  if (payload.encoding !== 'rle-varint') throw new Error(`unknown label map encoding '${payload.encoding}'`);
  const bin = atob(payload.data);
  const n = payload.width * payload.height;
  const out = new Uint32Array(n);
  let i = 0, p = 0;
  const varint = () => {
    let v = 0, scale = 1, b;
    do {
      if (i >= bin.length) throw new Error('label map: truncated run');
      b = bin.charCodeAt(i++);
      v += (b & 0x7f) * scale;
      scale *= 128;
    } while (b & 0x80);
    return v;
  };
  while (i < bin.length) {
    const id = varint(), run = varint();
    if (run < 1 || p + run > n) throw new Error('label map: runs do not add up to its size');
    out.fill(id, p, p + run);
    p += run;
  }
  if (p !== n) throw new Error(`label map: ${p} of ${n} pixels`);
  return out;
}

// Class ids -> a canvas of their palette colours (RGBA), ids in `transparent` left clear.
function colourLabels(labels, width, height, palette, transparent = new Set()) {
  const lut = new Uint32Array(palette.length);  // RGBA packed as the canvas stores it (little-endian)
  palette.forEach(([r, g, b], id) => { lut[id] = transparent.has(id) ? 0 : ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; });
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(width, height);
  const px = new Uint32Array(img.data.buffer);
  for (let p = 0; p < labels.length; ++p) px[p] = lut[labels[p]] ?? 0;
  ctx.putImageData(img, 0, 0);
  return canvas;
}

// The answer's colour mask: zero-shot's "nothing" (id 0) stays uncoloured.
function maskOf(result) {
  const labels = decodeLabelMap(result.label_map);
  const transparent = result.prompts !== undefined ? new Set([0]) : new Set();
  return colourLabels(labels, result.label_map.width, result.label_map.height, result.palette, transparent);
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
    state.mask = maskOf(result);
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

// The photo and/or its mask as `view` shows them, on `canvas` (resized to the photo).
function compose(canvas, view) {
  const w = state.image.width, h = state.image.height;
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext('2d');
  ctx.globalAlpha = 1;
  ctx.clearRect(0, 0, w, h);
  if (view !== 'mask') ctx.drawImage(state.image, 0, 0, w, h);
  if (state.mask && view !== 'original') {
    ctx.imageSmoothingEnabled = false;  // label maps are not interpolated
    ctx.globalAlpha = view === 'mask' ? 1 : state.opacity;
    ctx.drawImage(state.mask, 0, 0, w, h);
    ctx.globalAlpha = 1;
    ctx.imageSmoothingEnabled = true;
  }
}

function draw() {
  if (!state.image) return;
  compose(ui.canvas, state.view);
  ui.canvas.hidden = false;
  ui.placeholder.hidden = true;
  $('download').disabled = !state.mask;
}

// The overlay (the photo with the colours at the current opacity) as a PNG file, made here.
function downloadOverlay() {
  if (!state.image || !state.mask) return;
  const canvas = document.createElement('canvas');
  compose(canvas, 'overlay');
  canvas.toBlob((blob) => {
    if (!blob) return toast('could not make the PNG');
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `segml-${state.mode === 'zero_shot' ? 'zero-shot' : 'segformer'}-overlay.png`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }, 'image/png');
}

const fmtMs = (ms) => (ms >= 100 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`);

// The latency panel's rows for `mode` (ids t-<key>), and the total.
function layoutLatency(mode) {
  const rows = [];
  for (const [key, label, title] of LATENCY_ROWS) {
    const div = document.createElement('div');
    div.innerHTML = `<dt><i class="c-${key}"></i></dt><dd id="t-${key}">–</dd>`;
    div.querySelector('dt').append(label);
    div.title = title;
    div.dataset.part = key;
    if (key === 'queue') div.hidden = true;
    rows.push(div);
    if (key === 'model')
      for (const [sub, subLabel] of SUB_ROWS[mode] || []) {
        const d = document.createElement('div');
        d.className = 'sub';
        d.innerHTML = `<dt></dt><dd id="t-${sub}">–</dd>`;
        d.querySelector('dt').append(subLabel);
        rows.push(d);
      }
  }
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

  // Latency: the server's parts as it reports them (they add up to its total), the network (the
  // round trip minus the server's total), the rendering here.
  const t = result.timings_ms;
  const mode = zeroShot ? 'zero_shot' : 'segment';
  if (!!document.getElementById('t-vision') !== zeroShot) layoutLatency(mode);
  const values = {decode: t.decode + t.preprocess, queue: t.queue, model: t.model, postprocess: t.postprocess,
                  encode: t.encode, network: networkMs, render: renderMs};
  const parts = LATENCY_ROWS.map(([key]) => [key, values[key]]).filter(([key, v]) => key !== 'queue' || v >= 0.5);
  const queueRow = document.querySelector('[data-part="queue"]');
  if (queueRow) queueRow.hidden = !(t.queue >= 0.5);
  const total = parts.reduce((s, [, v]) => s + v, 0);
  for (const [key, v] of parts) $(`t-${key}`).textContent = fmtMs(v);
  for (const [sub] of SUB_ROWS[mode] || []) $(`t-${sub}`).textContent = fmtMs(t[sub]);
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
      `${result.width}×${result.height} px, ${(bytes / 1024).toFixed(0)} KB sent, ` +
      `${(result.label_map.data.length / 1024).toFixed(0)} KB of labels back; model input ` +
      `${result.model_input[1]}×${result.model_input[0]}`;
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
      state.mask = maskOf(result);
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

// ---- example scenes ---------------------------------------------------------------------------

// The server's example photos (street scenes of segml's renderer) as buttons: a tap or click runs one.
async function loadExamples() {
  let examples = [];
  try {
    ({examples} = await (await fetch('api/examples')).json());
  } catch (e) {
    return;  // an older server: no examples
  }
  $('examples').replaceChildren(...examples.map((ex) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'example';
    b.title = ex.name;
    b.dataset.example = ex.id;
    const img = document.createElement('img');
    img.src = ex.url;
    img.alt = ex.name;
    img.width = 96;
    img.height = Math.round(96 * ex.height / ex.width);
    b.append(img);
    b.addEventListener('click', () => runExample(ex));
    return b;
  }));
  $('examples-row').hidden = examples.length === 0;
}

async function runExample(ex) {
  try {
    const r = await fetch(ex.url);
    if (!r.ok) throw new Error(`example ${ex.id}: HTTP ${r.status}`);
    const blob = await r.blob();
    await segmentFile(new File([blob], `example-${ex.id}.jpg`, {type: 'image/jpeg'}));
  } catch (e) {
    toast(e.message);
  }
}

// ---- wiring -----------------------------------------------------------------------------------

if (TOUCH) {
  document.body.classList.add('touch');
  $('placeholder-title').textContent = 'Tap here to choose a street photo';
  $('placeholder-more').textContent = 'or take a photo, go live with the camera, or tap an example below.';
  ui.stage.setAttribute('aria-label', 'Image: tap to choose a photo');
}
// The empty stage opens the file picker (a tap on a phone, a click elsewhere).
ui.stage.addEventListener('click', () => { if (!state.image && !state.live) $('file-input').click(); });
$('download').addEventListener('click', downloadOverlay);

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
loadExamples();
