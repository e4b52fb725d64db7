// GPU: MoE dispatch and combine between W processes, rank r on GPU r (W = the GPUs visible, or
// TRELLIS_RANKS; one GPU serves every rank where there is only one), tokens and expert rows in
// CUDA memory: packing, layout and the combine sum run as kernels (cudaMoeOps), the engines move staged regions. Every round is checked against the CPU
// reference (referenceDispatch / referenceCombine, computed from all ranks' inputs): expertX and
// scales byte for byte, combine outputs bit for bit. Two configs: fp8 tokens with scales and fp32
// outputs; bf16 tokens and bf16 outputs — each with nodeSize 1 (the engine's staged path between
// the GPUs), 2 (where W > 2: NVLink in pairs, the engine between pairs) and W (NVLink: kernels
// store into the peer's region through CUDA IPC, the engine carries only immediates). Prints one
// JSON line (rank 0, with every rank's report). Each config runs once more driven by the native
// proxy (GPU kernels for count+pack, layout and combine on mapped host memory).
import { fileURLToPath } from 'node:url';
import { createEngine } from '@trellis/backend-efa';
import { cudaInfo, cudaMemoryOps, DeviceBuffer } from '@trellis/cuda';
import {
  cudaMoeOps,
  MoeAllToAll,
  referenceCombine,
  referenceDispatch,
  syntheticExpert,
  syntheticInputs,
} from '../../dist/index.js';
import { toBf16 } from './bf16.mjs';
import { childWorld, parentWorld } from './world.mjs';

const provider = process.env.TRELLIS_PROVIDER ?? 'shm';
const W = Number(process.env.TRELLIS_RANKS ?? Math.max(2, cudaInfo().devices.length));
const CONFIGS = [
  {
    name: 'fp8+scales→fp32',
    worldSize: W,
    nodeSize: 1,
    numExperts: 8 * W,
    topk: 8,
    hidden: 4096,
    maxTokensPerRank: 128,
    inDtype: 'fp8',
    outDtype: 'fp32',
    scales: true,
    maxPrivateTokens: 64,
    accumulate: 'fp32',
  },
  {
    name: 'bf16→bf16',
    worldSize: W,
    nodeSize: 1,
    numExperts: 8 * W,
    topk: 4,
    hidden: 2048,
    maxTokensPerRank: 256,
    inDtype: 'bf16',
    outDtype: 'bf16',
    maxPrivateTokens: 32,
    accumulate: 'out',
  },
];
const ROUNDS = 3;

async function rank(r, device, io) {
  const engine = await createEngine({ provider, nics: 2, gpu: cudaMemoryOps(), maxSleepUs: 0 });
  const ops = cudaMoeOps();
  const report = [];
  const nodeSizes = [...new Set([1, 2, W])].filter((n) => W % n === 0);
  const specs = CONFIGS.flatMap((c) => [
    ...nodeSizes.map((nodeSize) => ({ ...c, nodeSize, proxy: false })),
    // The native proxy: region and staging in mapped host memory, kernels count, pack, lay out
    // and combine there, the proxy thread posts every write (through the engine for every peer).
    { ...c, nodeSize: 1, proxy: true },
    // GPU-driven: kernels store into same-node peers' regions through CUDA IPC and raise flags
    // there; with nodeSize < W the other nodes' ranks go through the native proxy (hybrid).
    ...nodeSizes.map((nodeSize) => ({ ...c, nodeSize, proxy: false, gpuDriven: true })),
  ]);
  for (const spec of specs) {
    const { name, accumulate, gpuDriven, ...base } = spec;
    const cfg = { ...base, rank: r };
    const moe = await MoeAllToAll.create(engine, cfg, { ops, device, gpuDriven: gpuDriven === true });
    const descs = await io.exchange(moe.descriptor);
    moe.connect(descs);
    const paths = moe.paths;
    let badX = 0;
    let badScales = 0;
    let badOut = 0;
    let rows = 0;
    const ms = [];
    for (let round = 0; round < ROUNDS; round++) {
      const ins = syntheticInputs({ ...cfg, rank: 0 }, 1000 + round, round === 2 ? 'skewed' : 'random');
      const x = ins[r];
      const n = x.topkIds.length / cfg.topk;
      const tok = DeviceBuffer.alloc(Math.max(64, x.tokens.length), { device });
      tok.write(x.tokens);
      let sc;
      if (cfg.scales) {
        sc = DeviceBuffer.alloc(Math.max(64, x.scales.byteLength), { device });
        sc.write(new Uint8Array(x.scales.buffer, x.scales.byteOffset, x.scales.byteLength));
      }
      const t0 = performance.now();
      const d = await moe.dispatch({
        tokens: tok.ptr,
        scales: sc?.ptr,
        topkIds: x.topkIds,
        topkWeights: x.topkWeights,
      });
      const t1 = performance.now();
      const want = referenceDispatch({ ...cfg, rank: 0 }, ins, r);
      const total = want.tokensPerExpert.reduce((a, b) => a + b, 0);
      rows += total;
      const tb = cfg.hidden * (cfg.inDtype === 'fp8' ? 1 : 2);
      const gotX = new Uint8Array(total * tb);
      if (gotX.length) ops.download(device, gotX, d.expertX);
      for (let i = 0; i < gotX.length; i++) if (gotX[i] !== want.expertX[i]) badX++;
      if (cfg.scales && total) {
        const gs = new Uint8Array(want.expertScales.byteLength);
        ops.download(device, gs, d.expertScales);
        const ws = new Uint8Array(want.expertScales.buffer);
        for (let i = 0; i < gs.length; i++) if (gs[i] !== ws[i]) badScales++;
      }
      // Expert compute on the host (the synthetic expert), outputs uploaded to the device.
      const outs = ins.map((_, q) =>
        syntheticExpert({ ...cfg, rank: 0 }, referenceDispatch({ ...cfg, rank: 0 }, ins, q)),
      );
      const eo = DeviceBuffer.alloc(Math.max(64, outs[r].length), { device });
      eo.write(outs[r]);
      const t2 = performance.now();
      const outPtr = await moe.combine({ expertOut: eo.ptr }, { accumulate });
      const t3 = performance.now();
      ms.push({ dispatch: +(t1 - t0).toFixed(2), combine: +(t3 - t2).toFixed(2) });
      const ref = referenceCombine({ ...cfg, rank: 0 }, ins, outs, r);
      const fp32 = accumulate === 'fp32' || cfg.outDtype === 'fp32';
      const got = new Uint8Array(n * cfg.hidden * (fp32 ? 4 : 2));
      if (got.length) ops.download(device, got, outPtr);
      const gv = new DataView(got.buffer);
      for (let i = 0; i < ref.length; i++) {
        const ok = fp32
          ? gv.getUint32(i * 4, true) === new Uint32Array(Float32Array.of(ref[i]).buffer)[0]
          : gv.getUint16(i * 2, true) === toBf16(ref[i]);
        if (!ok) badOut++;
      }
      for (const b of [tok, sc, eo]) b?.free();
    }
    await moe.close();
    report.push({
      config: name,
      nodeSize: cfg.nodeSize,
      proxy: cfg.proxy,
      gpuDriven: gpuDriven === true,
      paths,
      rows,
      badX,
      badScales,
      badOut,
      ms,
    });
  }
  const gpu = engine.stats().gpu;
  await engine.close();
  return { rank: r, device, report, gpu };
}

const gpus = cudaInfo().devices.length;
const watchdog = setTimeout(() => {
  console.error(`moe.mjs rank ${process.argv[3] ?? 0}: no result after 240 s`);
  process.exit(3);
}, 240_000);
watchdog.unref();
if (process.argv[2] === 'child') {
  const world = childWorld();
  const out = await rank(world.rank, gpus > 1 ? world.rank % gpus : 0, world);
  await world.finish(out);
} else {
  const world = parentWorld(fileURLToPath(import.meta.url), W);
  const mine = await rank(0, 0, world);
  const ranks = await world.gather(mine);
  console.log(JSON.stringify({ test: 'moe-gpu', provider, worldSize: W, gpus, ranks }));
  // Wrong bytes in any rank's report fail the check (device-gpu-tests.sh counts exit codes).
  const reports = ranks.flatMap((r) => r.report);
  const ok = reports.length > 0 && reports.every((c) => c.badX === 0 && c.badScales === 0 && c.badOut === 0);
  process.exit(ok ? 0 : 1);
}
