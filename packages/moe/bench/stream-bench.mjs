// MoE dispatch + combine as a model's decode step runs them: MoeStream, routing in device memory,
// every phase queued on CUDA streams — replayed from CUDA graphs (one graph per phase pair) and
// queued call by call ("eager") — next to, in the same invocation, the GPU-driven MoeAllToAll
// (bench/gpu-bench.mjs --gpu-driven: one process per rank, a host synchronise inside each call) and
// NCCL all_to_all_single (bench/nccl_a2a.py; NCCL needs a GPU per rank, so it runs only when W GPUs
// are visible). MoeStream's ranks are instances of this process, rank r on GPU r % GPUs: on one GPU
// every rank shares it, each on its own stream, and the figures are those of ranks sharing a GPU.
//
// Times: GPU time from CUDA events recorded on each rank's stream around its dispatch (send+recv)
// and its combine (send+recv) — the clock nccl_a2a.py reads too — and host wall time from the first
// launch to the synchronise of every rank's stream. p50 and p99 over the timed iterations; GPU
// time is rank 0's (the max over ranks is in the JSON). Prints a table, then one JSON line.
//
//   node bench/stream-bench.mjs [--ranks 2] [--tokens 128] [--hidden 7168] [--topk 8] [--experts 256]
//                               [--iters 200] [--warmup 20] [--no-baselines]
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CudaEvent, CudaGraph, CudaStream, cudaInfo } from '@trellis/cuda';
import { cudaMoeOps, MoeStream } from '../dist/index.js';
import { pct, routing } from './common.mjs';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const T = Number(arg('tokens', 128));
const H = Number(arg('hidden', 7168));
const K = Number(arg('topk', 8));
const E = Number(arg('experts', 256));
const W = Number(arg('ranks', 2));
const iters = Number(arg('iters', 200));
const warmup = Number(arg('warmup', 20));
const baselines = !process.argv.includes('--no-baselines');
const info = cudaInfo();
const gpus = info.devices.length;
const here = dirname(fileURLToPath(import.meta.url));
const ops = cudaMoeOps();

const stat = (xs) => ({ p50: pct(xs, 50), p99: pct(xs, 99) });

function moeStream(mode) {
  const ranks = Array.from({ length: W }, (_, r) => {
    const device = gpus > 1 ? r % gpus : 0;
    const moe = MoeStream.create(
      {
        worldSize: W,
        rank: r,
        numExperts: E,
        topk: K,
        hidden: H,
        maxTokensPerRank: T,
        inDtype: 'fp8',
        outDtype: 'bf16',
        scales: true,
      },
      { ops, device },
    );
    const a = (n) => ops.alloc(device, n);
    const { ids, w } = routing(r, T, K, E);
    const b = {
      tokens: a(T * H),
      scales: a(T * (H / 128) * 4),
      ids: a(ids.byteLength),
      weights: a(w.byteLength),
      expertOut: a(W * T * K * H * 2),
      out: a(T * H * 2),
    };
    ops.upload(
      device,
      b.tokens,
      Uint8Array.from({ length: T * H }, (_, i) => (i * 131 + r) & 0xff),
    );
    ops.upload(device, b.scales, new Uint8Array(new Float32Array(T * (H / 128)).fill(1).buffer));
    ops.upload(device, b.ids, new Uint8Array(ids.buffer));
    ops.upload(device, b.weights, new Uint8Array(w.buffer));
    const stream = CudaStream.create({ device });
    const ev = () => CudaEvent.create({ device });
    return { r, device, moe, b, stream, e: [ev(), ev(), ev()] };
  });
  const descs = ranks.map((k) => k.moe.descriptor);
  for (const k of ranks) k.moe.connect(descs);
  const dispatch = (k) => {
    k.d = k.moe.dispatch(
      { numTokens: T, tokens: k.b.tokens, scales: k.b.scales, topkIds: k.b.ids, topkWeights: k.b.weights },
      k.stream,
    );
  };
  const combine = (k) => k.moe.combine({ expertOut: k.b.expertOut }, k.stream, { out: k.b.out });
  let run = { dispatch, combine };
  let graphs = [];
  if (mode === 'graph') {
    const gd = ranks.map((k) => CudaGraph.capture(k.stream, () => dispatch(k)));
    const gc = ranks.map((k) => CudaGraph.capture(k.stream, () => combine(k)));
    graphs = [...gd, ...gc];
    run = { dispatch: (k) => gd[k.r].launch(k.stream), combine: (k) => gc[k.r].launch(k.stream) };
  }
  const gpu = { d: ranks.map(() => []), c: ranks.map(() => []) };
  const wall = { d: [], c: [] };
  for (let i = 0; i < warmup + iters; i++) {
    const t0 = performance.now();
    for (const k of ranks) {
      k.e[0].record(k.stream);
      run.dispatch(k);
      k.e[1].record(k.stream);
    }
    for (const k of ranks) k.e[1].synchronize();
    const t1 = performance.now();
    for (const k of ranks) {
      run.combine(k);
      k.e[2].record(k.stream);
    }
    for (const k of ranks) k.e[2].synchronize();
    const t2 = performance.now();
    for (const k of ranks) k.moe.check();
    if (i < warmup) continue;
    wall.d.push(t1 - t0);
    wall.c.push(t2 - t1);
    for (const k of ranks) {
      gpu.d[k.r].push(k.e[1].elapsedMs(k.e[0]));
      gpu.c[k.r].push(k.e[2].elapsedMs(k.e[1]));
    }
  }
  const rows = new Int32Array(E / W);
  ops.download(ranks[0].device, new Uint8Array(rows.buffer), ranks[0].d.tokensPerExpert);
  for (const g of graphs) g.destroy();
  for (const k of ranks) {
    k.stream.synchronize();
    k.moe.close();
    for (const p of Object.values(k.b)) ops.free(k.device, p);
    for (const e of k.e) e.destroy();
    k.stream.destroy();
  }
  return {
    mode: `MoeStream ${mode}`,
    rowsReceived: rows.reduce((a, b) => a + b, 0),
    dispatchMs: stat(gpu.d[0]),
    combineMs: stat(gpu.c[0]),
    dispatchMsMaxRank: Math.max(...gpu.d.map((x) => pct(x, 50))),
    combineMsMaxRank: Math.max(...gpu.c.map((x) => pct(x, 50))),
    dispatchWallMs: stat(wall.d),
    combineWallMs: stat(wall.c),
  };
}

function child(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: join(here, '..'), encoding: 'utf8', timeout: 300_000 });
  const line = r.stdout
    ?.trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .pop();
  if (r.status !== 0 || !line)
    return { error: `${cmd} exited ${r.status ?? r.signal}: ${(r.stderr ?? '').slice(-400)}` };
  return JSON.parse(line);
}

const results = [moeStream('graph'), moeStream('eager')];
const shape = [
  '--tokens',
  T,
  '--hidden',
  H,
  '--topk',
  K,
  '--experts',
  E,
  '--iters',
  Math.min(iters, 100),
].map(String);
if (baselines) {
  const gd = child(process.execPath, [
    join(here, 'gpu-bench.mjs'),
    '--gpu-driven',
    '--ranks',
    String(W),
    ...shape,
  ]);
  results.push(
    gd.error
      ? { mode: 'MoeAllToAll gpuDriven', error: gd.error }
      : {
          mode: 'MoeAllToAll gpuDriven (host wall per call, sync inside)',
          rowsReceived: gd.ranks[0].rowsReceived,
          dispatchWallMs: gd.ranks[0].dispatchMs,
          combineWallMs: gd.ranks[0].combineMs,
        },
  );
  if (gpus >= W) {
    const n = child('python3', [join(here, 'nccl_a2a.py'), '--ranks', String(W), ...shape]);
    results.push(
      n.error
        ? { mode: 'NCCL all_to_all_single', error: n.error }
        : {
            mode: `NCCL all_to_all_single (NCCL ${n.nccl})`,
            rowsReceived: n.ranks[0].rowsReceived,
            dispatchMs: n.ranks[0].dispatchMs,
            combineMs: n.ranks[0].combineMs,
            dispatchWallMs: n.ranks[0].dispatchWallMs,
            combineWallMs: n.ranks[0].combineWallMs,
          },
    );
  } else {
    results.push({
      mode: 'NCCL all_to_all_single',
      error: `not run: NCCL needs one GPU per rank (${W} ranks, ${gpus} GPU${gpus === 1 ? '' : 's'} visible)`,
    });
  }
}

const us = (x) => (x ? `${(x.p50 * 1000).toFixed(1)} / ${(x.p99 * 1000).toFixed(1)}` : '—');
const where =
  gpus >= W ? `${W} ranks on ${W} GPUs` : `${W} ranks sharing ${gpus} GPU${gpus === 1 ? '' : 's'}`;
console.log(
  `MoE decode step, ${where} (${info.devices[0]?.name ?? 'no GPU'}): ${T} tokens/rank, hidden ${H}, top-${K} of ${E}, fp8+scales in, bf16 out`,
);
console.log(
  'µs, p50 / p99 (rank 0)           | dispatch GPU  | combine GPU   | dispatch wall | combine wall  | rows',
);
for (const r of results) {
  if (r.error) {
    console.log(`${r.mode.padEnd(33)}| ${r.error}`);
    continue;
  }
  console.log(
    `${r.mode.padEnd(33)}| ${us(r.dispatchMs).padEnd(14)}| ${us(r.combineMs).padEnd(14)}| ${us(r.dispatchWallMs).padEnd(14)}| ${us(r.combineWallMs).padEnd(14)}| ${r.rowsReceived}`,
  );
}
console.log(
  JSON.stringify({
    bench: 'moe-stream',
    worldSize: W,
    gpus,
    device: info.devices[0]?.name,
    tokens: T,
    hidden: H,
    topk: K,
    experts: E,
    iters,
    results,
  }),
);
