#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Runs ONNX models in ONNX Runtime (CPU) on a raw float32 input and reports outputs and timings.
//
//   node tools/ort/run.js --model m.onnx [--model m2.onnx ...] --input x.f32 --shape 2,3,32,32
//        [--output y.f32] [--warmup 3] [--repeat 20] [--threads 2] [--optimized opt.onnx]
//        [--settle 50] [--loads 1]
//   node tools/ort/run.js --model a.onnx --model b.onnx --input random --shapes 16,8,32,32;16,4
//
// --input random gives every model its own seeded random input, of its shape in --shapes (one per
// model, ';'-separated): per-layer timing tables time layers of different shapes in one process.
//
// With several models the timed runs are interleaved in blocks (up to 10 rounds of every model), so
// a change in the machine's load affects all of them alike and their ratios stay fair.
// Prints one JSON object: {"results": [{"output_shape": [...], "median_ms": ..., "p90_ms": ...,
// "times_ms": [...]}, ...]}, one entry per model in order. --output gets the first model's output.
// --optimized saves the first model as ONNX Runtime optimised it (which kernels it chose: e.g.
// QLinearConv for an int8 QDQ model). Input and output files are little-endian float32 arrays (what pocketflow's tests and bench write).
'use strict';
const fs = require('fs');
const path = require('path');

function parseArgs(argv) {
  const args = {warmup: 0, repeat: 1, threads: 0, model: []};
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (argv[i + 1] === undefined) throw new Error(`missing value for --${key}`);
    if (key === 'model') {
      args.model.push(argv[i + 1]);
    } else {
      args[key] = argv[i + 1];
    }
  }
  if (!args.input) throw new Error('--input is required');
  if (!args.shape && !args.shapes) throw new Error('--shape (or --shapes) is required');
  if (args.model.length === 0) throw new Error('--model is required');
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
  const parse = (text) => text.split(',').map(Number);
  const shapes = args.shapes ? args.shapes.split(';').map(parse) : args.model.map(() => parse(args.shape));
  if (shapes.length !== args.model.length) {
    throw new Error(`${shapes.length} shapes for ${args.model.length} models`);
  }
  const inputs = shapes.map((shape) => {
    const count = shape.reduce((a, b) => a * b, 1);
    if (args.input === 'random') {
      let state = 12345;  // a fixed LCG: the same inputs every run
      const data = new Float32Array(count);
      for (let i = 0; i < count; ++i) {
        state = (Math.imul(state, 1103515245) + 12345) >>> 0;
        data[i] = state / 4294967296 - 0.5;
      }
      return data;
    }
    const bytes = fs.readFileSync(args.input);
    const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
    if (data.length !== count) throw new Error(`input has ${data.length} floats, shape needs ${count}`);
    return data;
  });
  const options = {executionProviders: ['cpu'], graphOptimizationLevel: 'all'};
  if (Number(args.threads) > 0) {
    options.intraOpNumThreads = Number(args.threads);
    options.interOpNumThreads = 1;
  }
  // Sessions are created `loads` times (default 1), models interleaved; load_ms is the median
  // time of InferenceSession.create (reading, optimising and preparing the model).
  const sessions = [];
  const loadTimes = args.model.map(() => []);
  const loads = Number(args.loads || 1);
  if (!Number.isInteger(loads) || loads < 1) throw new Error(`--loads ${args.loads}: expected a positive integer`);
  for (let r = 0; r < loads; ++r) {
    for (const [k, model] of args.model.entries()) {
      const o = k === 0 && args.optimized ? {...options, optimizedModelFilePath: args.optimized} : options;
      const t0 = process.hrtime.bigint();
      const session = await ort.InferenceSession.create(model, o);
      loadTimes[k].push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (sessions[k]) await sessions[k].release();  // time each load with one session alive
      sessions[k] = session;
    }
  }
  const feeds = sessions.map((s, k) => ({[s.inputNames[0]]: new ort.Tensor('float32', inputs[k], shapes[k])}));
  const outputs = sessions.map(() => null);
  for (let k = 0; k < sessions.length; ++k) {
    for (let i = 0; i < Number(args.warmup); ++i) outputs[k] = await sessions[k].run(feeds[k]);
  }
  // Interleaved in blocks: each session's worker threads spin for a while after a run (ORT's
  // default, kept because it is what deployments see), so switching sessions on every run would
  // time one model against the spinning threads of another (measured: 18 ms became 46-52 ms). In
  // each block a model first runs untimed for 50 ms, while the previous model's threads go idle,
  // then its share of the timed runs.
  const repeat = Math.max(1, Number(args.repeat));
  const settle = BigInt(Math.round(1e6 * (args.settle === undefined ? 50 : Number(args.settle))));
  const blocks = sessions.length > 1 ? Math.min(repeat, 10) : 1;
  const times = sessions.map(() => []);
  for (let b = 0; b < blocks; ++b) {
    const runs = Math.floor(repeat / blocks) + (b < repeat % blocks ? 1 : 0);
    for (let k = 0; k < sessions.length; ++k) {
      if (sessions.length > 1) {
        const start = process.hrtime.bigint();
        do {
          outputs[k] = await sessions[k].run(feeds[k]);
        } while (process.hrtime.bigint() - start < settle);  // 50 ms of untimed runs by default
      }
      for (let i = 0; i < runs; ++i) {
        const t0 = process.hrtime.bigint();
        outputs[k] = await sessions[k].run(feeds[k]);
        times[k].push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
    }
  }
  const results = sessions.map((s, k) => {
    const out = outputs[k][s.outputNames[0]];
    if (k === 0 && args.output) {
      const f = Float32Array.from(out.data);
      fs.writeFileSync(args.output, Buffer.from(f.buffer));
    }
    const sorted = [...times[k]].sort((a, b) => a - b);
    const pick = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
    const loadSorted = [...loadTimes[k]].sort((a, b) => a - b);
    return {output_shape: out.dims, median_ms: pick(0.5), p90_ms: pick(0.9), times_ms: times[k],
            load_ms: loadSorted[Math.floor(loadSorted.length / 2)]};
  });
  console.log(JSON.stringify({results}));
}

main().catch((e) => {
  console.error(`ort-run: ${e.message}`);
  process.exit(2);
});
