// MoE dispatch + combine latency on W GPUs in W processes (rank r on GPU r; W = the GPUs visible,
// or --ranks): `MoeAllToAll` on CUDA memory, nodeSize W (NVLink through CUDA IPC, immediates
// through the engine) or 1 (every byte through the engine's staged path). Times are host wall-clock per call (each call
// returns with its GPU work done), median and p99 over the timed iterations. Prints one JSON line.
//
//   node bench/gpu-bench.mjs [--tokens 128] [--hidden 7168] [--topk 8] [--experts 256]
//                            [--node-size W] [--ranks W] [--iters 100] [--warmup 20] [--provider shm]
//                            [--gpu-driven] (kernels store into peers' regions over NVLink and raise
//                                            flags there; nodeSize = W; no engine per round)
//                            [--proxy]   (the native proxy: kernels on mapped host memory, every byte
//                                         through the engine, posted by the proxy thread)
import { fileURLToPath } from 'node:url';
import { createEngine } from '@trellis/backend-efa';
import { cudaInfo, cudaMemoryOps, DeviceBuffer } from '@trellis/cuda';
import { cudaMoeOps, MoeAllToAll } from '../dist/index.js';
import { childWorld, parentWorld } from '../test/gpu/world.mjs';
import { pct, routing } from './common.mjs';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const T = Number(arg('tokens', 128));
const H = Number(arg('hidden', 7168));
const K = Number(arg('topk', 8));
const E = Number(arg('experts', 256));
const gpus = cudaInfo().devices.length;
const W = Number(arg('ranks', Math.max(2, gpus)));
const nodeSize = Number(arg('node-size', W));
const iters = Number(arg('iters', 100));
const warmup = Number(arg('warmup', 20));
const provider = arg('provider', 'shm');
const proxy = process.argv.includes('--proxy');
const gpuDriven = process.argv.includes('--gpu-driven');

async function run(rank, device, exchange) {
  const engine = await createEngine({ provider, nics: 2, gpu: cudaMemoryOps(), maxSleepUs: 0 });
  const cfg = {
    worldSize: W,
    rank,
    nodeSize,
    numExperts: E,
    topk: K,
    hidden: H,
    maxTokensPerRank: T,
    inDtype: 'fp8',
    outDtype: 'bf16',
    scales: true,
    maxPrivateTokens: T * K,
    proxy,
  };
  const moe = await MoeAllToAll.create(engine, cfg, { ops: cudaMoeOps(), device, gpuDriven });
  moe.connect(await exchange(moe.descriptor));
  const tokens = DeviceBuffer.alloc(T * H, { device });
  tokens.fillPattern(rank + 1);
  const scales = DeviceBuffer.alloc(T * (H / 128) * 4, { device });
  scales.write(new Uint8Array(new Float32Array(T * (H / 128)).fill(1).buffer));
  const out = DeviceBuffer.alloc(W * T * K * H * 2, { device }); // expert outputs (zeros), max rows
  const { ids, w } = routing(rank, T, K, E);
  const dispatchMs = [];
  const combineMs = [];
  let rows = 0;
  for (let i = 0; i < warmup + iters; i++) {
    const t0 = performance.now();
    const d = await moe.dispatch({ tokens: tokens.ptr, scales: scales.ptr, topkIds: ids, topkWeights: w });
    const t1 = performance.now();
    await moe.combine({ expertOut: out.ptr });
    const t2 = performance.now();
    if (i >= warmup) {
      dispatchMs.push(t1 - t0);
      combineMs.push(t2 - t1);
    }
    rows = d.tokensPerExpert.reduce((a, b) => a + b, 0);
  }
  const res = {
    rank,
    device,
    paths: moe.paths,
    rowsReceived: rows,
    dispatchMs: { p50: pct(dispatchMs, 50, 3), p99: pct(dispatchMs, 99, 3) },
    combineMs: { p50: pct(combineMs, 50, 3), p99: pct(combineMs, 99, 3) },
  };
  await moe.close();
  await engine.close();
  for (const b of [tokens, scales, out]) b.free();
  return res;
}

if (process.argv[2] === 'child') {
  const world = childWorld();
  await world.finish(await run(world.rank, gpus > 1 ? world.rank % gpus : 0, (d) => world.exchange(d)));
} else {
  const world = parentWorld(fileURLToPath(import.meta.url), W, process.argv.slice(2));
  const mine = await run(0, 0, (d) => world.exchange(d));
  const ranks = await world.gather(mine);
  console.log(
    JSON.stringify({
      bench: 'moe-trellis',
      provider,
      worldSize: W,
      nodeSize,
      proxy,
      gpuDriven,
      tokens: T,
      hidden: H,
      topk: K,
      experts: E,
      iters,
      ranks,
    }),
  );
  process.exit(0);
}
