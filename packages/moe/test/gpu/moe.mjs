// GPU: MoE dispatch and combine between two processes, rank 0 on GPU 0 and rank 1 on GPU 1 where
// two GPUs exist, tokens and expert rows in CUDA memory: packing, layout and the combine sum run as
// kernels (cudaMoeOps), the engines move staged regions. Every round is checked against the CPU
// reference (referenceDispatch / referenceCombine, computed from all ranks' inputs): expertX and
// scales byte for byte, combine outputs bit for bit. Two configs: fp8 tokens with scales and fp32
// outputs; bf16 tokens and bf16 outputs — each with nodeSize 1 (the engine's staged path between
// the GPUs) and nodeSize 2 (NVLink: kernels store into the peer's region through CUDA IPC, the
// engine carries only immediates). Prints one JSON line per process (the parent's last).
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createEngine } from '@trellis/backend-efa';
import { cudaInfo, cudaMemoryOps, cudaMoeOps, DeviceBuffer } from '@trellis/cuda';
import {
  MoeAllToAll,
  referenceCombine,
  referenceDispatch,
  syntheticExpert,
  syntheticInputs,
} from '../../dist/index.js';

const provider = process.env.TRELLIS_PROVIDER ?? 'shm';
const CONFIGS = [
  {
    name: 'fp8+scales→fp32',
    worldSize: 2,
    nodeSize: 1,
    numExperts: 16,
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
    worldSize: 2,
    nodeSize: 1,
    numExperts: 16,
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

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function toBf16(x) {
  f32[0] = x;
  const b = u32[0];
  if ((b & 0x7f800000) === 0x7f800000 && b & 0x7fffff) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

async function rank(r, device, io) {
  const engine = await createEngine({ provider, nics: 2, gpu: cudaMemoryOps(), maxSleepUs: 0 });
  const ops = cudaMoeOps();
  const report = [];
  for (const spec of CONFIGS.flatMap((c) => [1, 2].map((nodeSize) => ({ ...c, nodeSize })))) {
    const { name, accumulate, ...base } = spec;
    const cfg = { ...base, rank: r };
    const moe = await MoeAllToAll.create(engine, cfg, { ops, device });
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
    report.push({ config: name, nodeSize: cfg.nodeSize, paths, rows, badX, badScales, badOut, ms });
  }
  const gpu = engine.stats().gpu;
  await engine.close();
  return { rank: r, device, report, gpu };
}

if (process.argv[2] === 'child') {
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const io = {
    async exchange(mine) {
      process.stdout.write(`${JSON.stringify({ desc: mine })}\n`);
      return JSON.parse((await lines.next()).value).descs;
    },
  };
  const out = await rank(1, Number(process.argv[3]), io);
  process.stdout.write(`${JSON.stringify({ done: out })}\n`);
  process.exit(0);
} else {
  const peerDevice = cudaInfo().devices.length > 1 ? 1 : 0;
  const kid = spawn(process.execPath, [fileURLToPath(import.meta.url), 'child', String(peerDevice)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const replies = createInterface({ input: kid.stdout })[Symbol.asyncIterator]();
  const next = async () => JSON.parse((await replies.next()).value);
  const io = {
    async exchange(mine) {
      const theirs = (await next()).desc;
      const descs = [mine, theirs];
      kid.stdin.write(`${JSON.stringify({ descs })}\n`);
      return descs;
    },
  };
  const watchdog = setTimeout(() => {
    console.error('moe.mjs: no result after 150 s');
    process.exit(3);
  }, 150_000);
  watchdog.unref();
  const mine = await rank(0, 0, io);
  const theirs = (await next()).done;
  console.log(JSON.stringify({ test: 'moe-gpu', provider, ranks: [mine, theirs] }));
  process.exit(0);
}
