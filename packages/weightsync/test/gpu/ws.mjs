// GPU: weight sync from a trainer process whose weights are CUDA memory (GPU 0) into an inference
// process whose two weight buffers are CUDA memory (GPU 1 where two GPUs exist), on the staged
// path. The trainer stages on its GPU (packed row copies, and the fp8 quantiser kernel for the
// quantised tensors). The reference is the CPU path in the trainer process: the same source bytes
// through the CPU quantiser into host buffers over the loopback fabric. Every byte of every piece
// the inference rank serves is compared with it. Prints one JSON line.
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createEngine } from '@trellis/backend-efa';
import { createLoopbackFabric, MrDesc } from '@trellis/core';
import { cudaInfo, cudaMemoryOps, cudaWeightOps, DeviceBuffer } from '@trellis/cuda';
import { f32ToBf16, planWeightSync, WeightSyncReceiver, WeightSyncSender, whole } from '../../dist/index.js';

const provider = process.env.TRELLIS_PROVIDER ?? 'shm';
// TRELLIS_GPU_PATH: lane (default: the same-host lane where it applies), direct (through the NICs,
// FI_HMEM where libfabric has it) or staged (pinned host mirrors) — for comparing the paths.
const gpuPath = process.env.TRELLIS_GPU_PATH ?? 'lane';
const pathOpts =
  gpuPath === 'staged'
    ? { sameHostLane: false, gpuDirect: false }
    : gpuPath === 'direct'
      ? { sameHostLane: false }
      : {};
const model = Array.from({ length: 6 }, (_, i) => ({ name: `w${i}`, shape: [2048, 4096], dtype: 'bf16' }));
const plan = planWeightSync(
  model,
  { ranks: 1, placements: Object.fromEntries(model.map((t) => [t.name, whole(0)])) },
  {
    ranks: 1,
    tensors: model.map((t, i) => ({
      name: t.name,
      placement: whole(0),
      ...(i % 2 ? { dtype: 'fp8e4m3', quantBlock: 128 } : {}),
    })),
  },
  { senderNics: 2 },
);

async function inference() {
  const device = Number(process.argv[3]);
  const out = process.argv[4];
  const engine = await createEngine({ provider, nics: 2, gpu: cudaMemoryOps(), maxSleepUs: 0, ...pathOpts });
  const size = plan.inferenceBytes[0];
  const bufs = [DeviceBuffer.alloc(size, { device }), DeviceBuffer.alloc(size, { device })];
  const handles = [];
  for (const b of bufs)
    handles.push(
      await engine.registerMemory({ cuda: { ptr: b.ptr, length: size, device } }, { remote: true }),
    );
  const rx = await WeightSyncReceiver.create({ engine, plan, rank: 0, buffers: handles });
  const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
  say({ addr: engine.address.toString(), descs: rx.descriptors().map((d) => d.toString()) });
  await rx.expect({ step: 1, version: 1, timeoutMs: 120_000 });
  const served = rx.served();
  const b = bufs[served.version % 2];
  const host = b.read(new Uint8Array(size));
  const { writeFileSync } = await import('node:fs');
  writeFileSync(out, host);
  say({ version: served.version, path: served.buffer.path, gpu: engine.stats().gpu });
  await rx.close();
  await engine.close();
  for (const x of bufs) x.free();
  process.exit(0);
}

async function trainer() {
  const peerDevice = cudaInfo().devices.length > 1 ? 1 : 0;
  const out = join(tmpdir(), `ws-gpu-${process.pid}.bin`);
  const kid = spawn(
    process.execPath,
    [fileURLToPath(import.meta.url), 'inference', String(peerDevice), out],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  const replies = createInterface({ input: kid.stdout })[Symbol.asyncIterator]();
  const next = async () => JSON.parse((await replies.next()).value);
  const hello = await next();

  // The source weights: bf16 values over many magnitudes, both signs.
  const source = new Uint8Array(plan.trainerBytes[0]);
  const u16 = new Uint16Array(source.buffer);
  let x = 2463534242;
  for (let i = 0; i < u16.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const r = (x >>> 0) / 2 ** 32;
    u16[i] = f32ToBf16((i & 1 ? -1 : 1) * 2 ** (r * 24 - 12));
  }

  // GPU path.
  const engine = await createEngine({ provider, nics: 2, gpu: cudaMemoryOps(), maxSleepUs: 0, ...pathOpts });
  const src = DeviceBuffer.alloc(source.length, { device: 0 });
  src.write(source);
  const tx = await WeightSyncSender.create({
    engine,
    plan,
    rank: 0,
    source: { cuda: { ptr: src.ptr, length: src.length, device: 0 } },
    device: cudaWeightOps(),
    targets: [hello.descs.map((d) => MrDesc.parse(d))],
  });
  const gpuReport = await tx.sync({ step: 1, version: 1, timeoutMs: 120_000 });
  const done = await next();
  const gpuStats = engine.stats().gpu;
  await tx.close();
  await engine.close();
  src.free();

  // CPU reference path: the same bytes, the CPU quantiser, host buffers (loopback fabric).
  const fabric = createLoopbackFabric({ seed: 1 });
  const te = fabric.createEngine();
  const re = fabric.createEngine();
  const rx = await WeightSyncReceiver.create({ engine: re, plan, rank: 0 });
  const ctx = await WeightSyncSender.create({
    engine: te,
    plan,
    rank: 0,
    source,
    targets: [rx.descriptors()],
  });
  const w = rx.expect({ step: 1, version: 1, timeoutMs: 120_000 });
  const cpuReport = await ctx.sync({ step: 1, version: 1 });
  await w;
  const want = rx.weights().bytes;
  const got = readFileSync(out);
  rmSync(out, { force: true });

  let bad = 0;
  let checked = 0;
  let firstBad;
  for (const p of plan.inferencePieces[0]) {
    const t = plan.inference.tensors[p.tensor];
    const rows = p.box.r1 - p.box.r0;
    const wd = p.box.c1 - p.box.c0;
    const ranges = [[p.offset, rows * wd * p.elemBytes, t.name]];
    if (p.scaleOffset !== undefined)
      ranges.push([p.scaleOffset, rows * (wd / t.quantBlock) * 4, `${t.name} scales`]);
    for (const [at, n, what] of ranges) {
      for (let i = at; i < at + n; i++)
        if (got[i] !== want[i]) {
          bad++;
          firstBad ??= { what, byte: i - at, got: got[i], want: want[i] };
        }
      checked += n;
    }
  }
  console.log(
    JSON.stringify({
      test: 'weightsync-gpu',
      provider,
      gpuPath,
      devices: [0, peerDevice],
      bytes: plan.ops.reduce((n, o) => n + o.bytes, 0),
      checked,
      bad,
      firstBad,
      inference: done,
      trainerGpu: gpuStats,
      gpuPathMs: +gpuReport.ms.total.toFixed(1),
      cpuReferenceMs: +cpuReport.ms.total.toFixed(1),
    }),
  );
  // Wrong or unchecked bytes fail the check (device-gpu-tests.sh counts exit codes).
  process.exit(bad === 0 && checked > 0 ? 0 : 1);
}

if (process.argv[2] === 'inference') await inference();
else await trainer();
