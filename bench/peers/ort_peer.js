// ONNX Runtime peer of bench/peers: times SegFormer inference with onnxruntime-node (CPU).
//
//   node ort_peer.js WORK --threads 2 --warmup W --repeats R --json OUT [--save-logits F]
//
// Reads WORK/model.onnx and pixel_values from WORK/infer_input.safetensors (both written by
// torch_peer.py prepare), creates one session (intraOpNumThreads = --threads, interOpNumThreads 1,
// graphOptimizationLevel 'all', sequential execution) and times session.run. Writes the times and
// the configuration as JSON; with --save-logits also the logits as safetensors `logits`.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

// safetensors: u64 header length, JSON header, then the raw little-endian tensors.
function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (info.dtype !== 'F32') throw new Error(`${file}: ${name} is ${info.dtype}, only F32 is read here`);
    const [b, e] = info.data_offsets;
    const bytes = buf.subarray(8 + n + b, 8 + n + e);
    const data = new Float32Array(bytes.length / 4);
    Buffer.from(data.buffer).set(bytes);  // copy: the file offset need not be 4-byte aligned
    out[name] = { data, dims: info.shape };
  }
  return out;
}

function writeSafetensors(file, name, tensor) {
  const bytes = Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
  let header = JSON.stringify({ [name]: { dtype: 'F32', shape: tensor.dims, data_offsets: [0, bytes.length] } });
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

async function main() {
  const work = process.argv[2];
  const threads = Number(arg('--threads', '2'));
  const warmup = Number(arg('--warmup', '2'));
  const repeats = Number(arg('--repeats', '5'));
  const jsonOut = arg('--json');
  const saveLogits = arg('--save-logits');
  const spin = arg('--spin', '1');  // '0': intra-op threads sleep instead of spinning when idle

  const options = {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    executionProviders: ['cpu'],
    extra: { session: { intra_op: { allow_spinning: spin } } },
  };
  const session = await ort.InferenceSession.create(path.join(work, 'model.onnx'), options);
  const input = readSafetensors(path.join(work, 'infer_input.safetensors')).pixel_values;
  const feeds = { pixel_values: new ort.Tensor('float32', input.data, input.dims) };

  const first = await session.run(feeds);
  if (saveLogits) writeSafetensors(saveLogits, 'logits', first.logits);
  for (let i = 0; i < warmup; ++i) await session.run(feeds);
  const times = [];
  for (let i = 0; i < repeats; ++i) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const version = require('onnxruntime-node/package.json').version;
  const config = { onnxruntime_node: version, node: process.version, ...options };
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify({ times_ms: times, config }));
  console.log(`onnxruntime-node ${version}: median ${median(times).toFixed(1)} ms over ${repeats} runs`);
}

main().catch((e) => {
  console.error(`ort_peer: ${e.stack || e}`);
  process.exit(1);
});
