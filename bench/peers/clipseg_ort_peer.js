// ONNX Runtime peer of bench/peers for CLIPSeg: times inference of the exported reference with
// onnxruntime-node (CPU).
//
//   node clipseg_ort_peer.js WORK --prompts P --way hf|batched --threads 2 --warmup W --repeats R
//                            --json OUT [--save-logits F] [--spin 0|1]
//
// Reads WORK/clipseg/model.onnx (inputs pixel_values, input_ids, attention_mask, dynamic batch) and
// WORK/clipseg/input.safetensors (both written by clipseg_torch_peer.py prepare); uses the first P
// prompts. One session (intraOpNumThreads = --threads, interOpNumThreads 1, graphOptimizationLevel
// 'all', sequential execution). One timed run covers all P prompts:
//   hf       P session.run calls on one (image, prompt) pair each (HF's usage, vision tower per prompt);
//   batched  one session.run on the image repeated P times with the P prompts.
// Writes the times and the configuration as JSON; with --save-logits the logits (P, 352, 352) as
// safetensors `logits`.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

// safetensors: u64 header length, JSON header, then the raw little-endian tensors (F32 and I64 here).
function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b, e] = info.data_offsets;
    const bytes = buf.subarray(8 + n + b, 8 + n + e);
    let data;
    if (info.dtype === 'F32') data = new Float32Array(bytes.length / 4);
    else if (info.dtype === 'I64') data = new BigInt64Array(bytes.length / 8);
    else throw new Error(`${file}: ${name} is ${info.dtype}, only F32 and I64 are read here`);
    Buffer.from(data.buffer).set(bytes);  // copy: the file offset need not be aligned
    out[name] = { data, dims: info.shape, type: info.dtype === 'F32' ? 'float32' : 'int64' };
  }
  return out;
}

function writeSafetensors(file, name, data, dims) {
  const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let header = JSON.stringify({ [name]: { dtype: 'F32', shape: dims, data_offsets: [0, bytes.length] } });
  header += ' '.repeat((8 - (header.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  fs.writeFileSync(file, Buffer.concat([len, Buffer.from(header, 'utf8'), bytes]));
}

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : 0.5 * (s[m - 1] + s[m]);
}

// Rows [first, first + count) of a (rows, cols) int64 tensor.
function rows(t, first, count) {
  const cols = t.dims[1];
  return new ort.Tensor('int64', t.data.slice(first * cols, (first + count) * cols), [count, cols]);
}

async function main() {
  const work = process.argv[2];
  const prompts = Number(arg('--prompts', '1'));
  const way = arg('--way', 'hf');
  const threads = Number(arg('--threads', '2'));
  const warmup = Number(arg('--warmup', '1'));
  const repeats = Number(arg('--repeats', '3'));
  const jsonOut = arg('--json');
  const saveLogits = arg('--save-logits');
  const spin = arg('--spin', '1');
  if (!['hf', 'batched'].includes(way)) throw new Error(`--way ${way}: expected hf or batched`);

  const options = {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    executionProviders: ['cpu'],
    extra: { session: { intra_op: { allow_spinning: spin } } },
  };
  const dir = path.join(work, 'clipseg');
  const session = await ort.InferenceSession.create(path.join(dir, 'model.onnx'), options);
  const input = readSafetensors(path.join(dir, 'input.safetensors'));
  const available = input.input_ids.dims[0];
  if (!(prompts >= 1 && prompts <= available)) throw new Error(`--prompts ${prompts}: expected 1..${available}`);
  const px = input.pixel_values;
  const image = new ort.Tensor('float32', px.data, px.dims);

  let feedsList;
  if (way === 'hf') {
    feedsList = [];
    for (let i = 0; i < prompts; ++i) {
      feedsList.push({ pixel_values: image, input_ids: rows(input.input_ids, i, 1),
                       attention_mask: rows(input.attention_mask, i, 1) });
    }
  } else {
    const plane = px.data.length;
    const repeated = new Float32Array(plane * prompts);
    for (let i = 0; i < prompts; ++i) repeated.set(px.data, i * plane);
    feedsList = [{ pixel_values: new ort.Tensor('float32', repeated, [prompts, ...px.dims.slice(1)]),
                   input_ids: rows(input.input_ids, 0, prompts),
                   attention_mask: rows(input.attention_mask, 0, prompts) }];
  }
  const runAll = async () => {
    const outs = [];
    for (const feeds of feedsList) outs.push((await session.run(feeds)).logits);
    return outs;
  };

  const first = await runAll();
  if (saveLogits) {
    const [h, w] = first[0].dims.slice(1);
    const all = new Float32Array(prompts * h * w);
    let offset = 0;
    for (const t of first) { all.set(t.data, offset); offset += t.data.length; }
    writeSafetensors(saveLogits, 'logits', all, [prompts, h, w]);
  }
  for (let i = 0; i < warmup; ++i) await runAll();
  const times = [];
  for (let i = 0; i < repeats; ++i) {
    const t0 = process.hrtime.bigint();
    await runAll();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const version = require('onnxruntime-node/package.json').version;
  const config = { onnxruntime_node: version, node: process.version, prompts, way, ...options };
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify({ times_ms: times, config }));
  console.log(`onnxruntime-node ${version} clipseg ${way} ${prompts} prompt(s): median ${median(times).toFixed(1)} ms`);
}

main().catch((e) => {
  console.error(`clipseg_ort_peer: ${e.stack || e}`);
  process.exit(1);
});
