// Where a same-host lane write's time goes: two processes (the target is write-bench.mjs's), one
// size. Per write, in µs, with 1, 4 and 16 in flight (DEPTHS): lane writes without and with an
// immediate, immediates alone, 4 KiB host writes; then the lane stream alone, without the engine:
// the signal store, the enqueue (copy + signal) from JS, enqueue and drain, enqueue and spin on the
// signal per write, and memcpyDevice (one cudaMemcpyAsync per copy, one drain). ONLY=1 REPS=n runs
// the first column only (for a CPU profile: node --cpu-prof).
//   node test/gpu/lane-probe.mjs [size=1048576]
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { createEngine } from '@trellis/backend-efa';
import { MrDesc } from '@trellis/core';
import { cudaMemoryOps, DeviceBuffer, memcpyDevice } from '../../dist/index.js';

const bench = new URL('./write-bench.mjs', import.meta.url).pathname;
const size = Number(process.argv[2] ?? 1 << 20);
const kid = spawn(process.execPath, [bench, 'target', '0', String(size), 'lane'], {
  stdio: ['pipe', 'pipe', 'inherit'],
});
const it = createInterface({ input: kid.stdout })[Symbol.asyncIterator]();
const hello = JSON.parse((await it.next()).value);
const dst = MrDesc.parse(hello.desc);
const e = await createEngine({
  provider: process.env.TRELLIS_PROVIDER ?? 'shm',
  gpu: cudaMemoryOps(),
  maxSleepUs: 0,
});
const src = DeviceBuffer.alloc(size);
const mr = await e.registerMemory({ cuda: { ptr: src.ptr, length: size, device: 0 } });
const host = await e.registerMemory(4096);
async function timed(n, depth, f) {
  const t0 = performance.now();
  const inflight = new Set();
  for (let i = 0; i < n; i++) {
    const p = f().then(() => inflight.delete(p));
    inflight.add(p);
    if (inflight.size >= depth) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  return ((performance.now() - t0) * 1000) / n;
}
for (const depth of (process.env.DEPTHS ?? '1,4,16').split(',').map(Number)) {
  await e.submitSingleWrite({ src: mr, length: size, dst });
  const REPS = Number(process.env.REPS ?? 200);
  const noimm = await timed(REPS, depth, () => e.submitSingleWrite({ src: mr, length: size, dst }));
  if (process.env.ONLY) {
    console.log(JSON.stringify({ size, depth, noimm }));
    continue;
  }
  const imm = await timed(200, depth, () => e.submitSingleWrite({ src: mr, length: size, dst, imm: 77 }));
  const only = await timed(200, depth, () => e.submitImm({ dst, imm: 78 }));
  const hostw = await timed(200, depth, () => e.submitSingleWrite({ src: host, length: 4096, dst }));
  console.log(JSON.stringify({ size, depth, usPerWrite: { noimm, imm, immOnly: only, host4k: hostw } }));
}
if (process.env.ONLY) {
  kid.kill();
  await e.close();
  process.exit(0);
}
const ops = cudaMemoryOps();
const sig = ops.allocSignal();
const peer = DeviceBuffer.import(hello.ipc, { length: size, device: 0 });
const tr = BigUint64Array.of(peer.ptr, src.ptr, BigInt(size));
for (let round = 0; round < 3; round++) {
  let t0 = performance.now();
  for (let i = 1; i <= 200; i++) ops.enqueueDeviceCopy(0, tr, sig, BigInt(round * 1000 + i));
  const enq = ((performance.now() - t0) * 1000) / 200;
  await ops.drainDeviceCopies(0);
  const total = ((performance.now() - t0) * 1000) / 200;
  // Poll the signal from JS like the worker would: per write, enqueue then spin until the word moves.
  t0 = performance.now();
  for (let i = 1; i <= 200; i++) {
    const v = BigInt(round * 1000 + 500 + i);
    ops.enqueueDeviceCopy(0, tr, sig, v);
    while (Atomics.load(sig.word, 0) < v);
  }
  const spin = ((performance.now() - t0) * 1000) / 200;
  t0 = performance.now();
  const none = new BigUint64Array(0);
  for (let i = 1; i <= 200; i++) ops.enqueueDeviceCopy(0, none, sig, BigInt(round * 1000 + 800 + i));
  const sigOnly = ((performance.now() - t0) * 1000) / 200;
  await ops.drainDeviceCopies(0);
  const all = new BigUint64Array(600);
  for (let i = 0; i < 200; i++) all.set(tr, 3 * i);
  t0 = performance.now();
  await memcpyDevice(0, all);
  const mc = ((performance.now() - t0) * 1000) / 200;
  console.log(
    JSON.stringify({
      size,
      round,
      usPerCopy: {
        signalOnly: sigOnly,
        enqueueOnly: enq,
        enqueueAndDrain: total,
        enqueueSpinEach: spin,
        memcpy200: mc,
      },
    }),
  );
}
kid.kill();
await e.close();
process.exit(0);
