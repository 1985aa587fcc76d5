#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Runs an ONNX model in ONNX Runtime (CPU) on a raw float32 input and reports outputs and timings.
//
//   node tools/ort/run.js --model m.onnx --input x.f32 --shape 2,3,32,32 [--output y.f32]
//        [--warmup 3] [--repeat 20] [--threads 2]
//
// Prints one JSON object: {"output_shape": [...], "median_ms": ..., "p90_ms": ..., "times_ms": [...]}.
// Input and output files are little-endian float32 arrays (what pocketflow's tests and bench write).
'use strict';
const fs = require('fs');
const path = require('path');

function parseArgs(argv) {
  const args = {warmup: 0, repeat: 1, threads: 0};
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (argv[i + 1] === undefined) throw new Error(`missing value for --${key}`);
    args[key] = argv[i + 1];
  }
  for (const k of ['model', 'input', 'shape']) {
    if (!args[k]) throw new Error(`--${k} is required`);
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv);
  let ort;
  try {
    ort = require(path.join(__dirname, 'node_modules', 'onnxruntime-node'));
  } catch (e) {
    throw new Error('onnxruntime-node is not installed: run tools/setup.sh --ort');
  }
  const shape = args.shape.split(',').map(Number);
  const bytes = fs.readFileSync(args.input);
  const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  const count = shape.reduce((a, b) => a * b, 1);
  if (data.length !== count) throw new Error(`input has ${data.length} floats, shape needs ${count}`);
  const options = {executionProviders: ['cpu'], graphOptimizationLevel: 'all'};
  if (Number(args.threads) > 0) {
    options.intraOpNumThreads = Number(args.threads);
    options.interOpNumThreads = 1;
  }
  const session = await ort.InferenceSession.create(args.model, options);
  const feeds = {[session.inputNames[0]]: new ort.Tensor('float32', data, shape)};
  let result;
  for (let i = 0; i < Number(args.warmup); ++i) result = await session.run(feeds);
  const times = [];
  for (let i = 0; i < Math.max(1, Number(args.repeat)); ++i) {
    const t0 = process.hrtime.bigint();
    result = await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const out = result[session.outputNames[0]];
  if (args.output) {
    const f = Float32Array.from(out.data);
    fs.writeFileSync(args.output, Buffer.from(f.buffer));
  }
  const sorted = [...times].sort((a, b) => a - b);
  const pick = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  console.log(JSON.stringify({output_shape: out.dims, median_ms: pick(0.5), p90_ms: pick(0.9), times_ms: times}));
}

main().catch((e) => {
  console.error(`ort-run: ${e.message}`);
  process.exit(2);
});
