// GPU: an immediate means "its bytes are visible", for GPU memory registered directly.
//
// Two processes (each its own GPU when two are visible, else both on GPU 0). The writer fills a
// CUDA source with the pattern of round r by a kernel and writes it into the target's CUDA region
// with an immediate; the target, right after each counter wake-up, counts the bytes that differ
// from round r's pattern with a kernel on a non-blocking stream of its own (ordered after nothing:
// it sees only bytes already in device memory), then acknowledges with an immediate of its own.
// Variants:
//   lane         — the engine as shipped: GPU → GPU on one host takes the same-host lane (CUDA IPC
//                  copy on the writer's stream, immediates raised after it has drained);
//   lane-reuse   — as lane, and the writer overwrites its source the moment the write resolves (a
//                  resolved write promises the source may be reused: the target must see round r);
//   direct       — sameHostLane: false, gpuDirect: true: the write goes through libfabric (FI_HMEM;
//                  on shm its bounce buffers, the target's copy asynchronous), the immediate held by
//                  the engine's CUDA-event fence;
//   direct-reuse — as direct, with the source overwritten at once;
//   nofence      — as direct, the target's fence off (TRELLIS_EFA_NO_FENCE=1): shows the gap.
// TRELLIS_BACKEND=verbs: backend-verbs on its software RC model instead of backend-efa (variants
// lane, lane-reuse and direct, direct-reuse: through the model, which copies into and out of GPU
// memory with the CUDA driver before it acknowledges or completes; nofence has no meaning there).
// Prints one JSON line per size and variant: rounds, stale rounds, stale bytes.
//   node test/gpu/visibility.mjs [rounds=10000] [sizes=4096,65536,1048576,16777216] [variants=lane,lane-reuse,direct,direct-reuse,nofence]
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MrDesc } from '@trellis/core';
import { cudaInfo, cudaMemoryOps, DeviceBuffer } from '../../dist/index.js';

const verbs = process.env.TRELLIS_BACKEND === 'verbs';
const { createEngine } = await import(verbs ? '@trellis/backend-verbs' : '@trellis/backend-efa');
const provider = verbs ? 'rc-model' : (process.env.TRELLIS_PROVIDER ?? 'shm');
/** The backend's own options: the RC model, or libfabric with FI_HMEM asked for. */
const fabric = verbs ? { model: true } : { provider, gpuDirect: true };
const IMM = 7;
const ACK = 8;
const seedOf = (size, r) => (size * 31 + r * 7919) >>> 0;

async function target() {
  const device = Number(process.argv[3]);
  const maxSize = Number(process.argv[4]);
  const e = await createEngine({ ...fabric, gpu: cudaMemoryOps(), maxSleepUs: 0 });
  const buf = DeviceBuffer.alloc(maxSize, { device });
  const mr = await e.registerMemory({ cuda: { ptr: buf.ptr, length: maxSize, device } }, { remote: true });
  const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
  say({ addr: e.address.toString(), desc: mr.desc.toString(), path: mr.path, library: e.stats().library });
  for await (const line of createInterface({ input: process.stdin })) {
    const m = JSON.parse(line);
    if (m.cmd === 'exit') break;
    const ackTo = MrDesc.parse(m.ack);
    let stale = 0;
    let staleBytes = 0;
    for (let r = 0; r < m.rounds; r++) {
      await e.immCounter(IMM).wait(1, { timeoutMs: 30_000 });
      const bad = buf.countPatternMismatches(seedOf(m.size, r), 0, m.size, 0, { unordered: true });
      if (bad) {
        stale++;
        staleBytes += bad;
      }
      await e.submitImm({ dst: ackTo, imm: ACK });
    }
    say({ stale, staleBytes, gpu: e.stats().gpu });
  }
  await e.close();
  buf.free();
  process.exit(0);
}

async function start(device, maxSize, env) {
  const kid = spawn(
    process.execPath,
    [fileURLToPath(import.meta.url), 'target', String(device), String(maxSize)],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { ...process.env, ...env },
    },
  );
  const replies = createInterface({ input: kid.stdout })[Symbol.asyncIterator]();
  return {
    next: async () => JSON.parse((await replies.next()).value),
    send: (o) => kid.stdin.write(`${JSON.stringify(o)}\n`),
  };
}

async function writer() {
  const rounds = Number(process.argv[2] ?? 10_000);
  const sizes = (process.argv[3] ?? '4096,65536,1048576,16777216').split(',').map(Number);
  const variants = (process.argv[4] ?? 'lane,lane-reuse,direct,direct-reuse,nofence').split(',');
  const peerDevice = cudaInfo().devices.length > 1 ? 1 : 0;
  const maxSize = Math.max(...sizes);
  let failed = 0;
  for (const variant of variants) {
    const lane = variant.startsWith('lane');
    const e = await createEngine({ ...fabric, gpu: cudaMemoryOps(), maxSleepUs: 0, sameHostLane: lane });
    const ack = await e.registerMemory(64, { remote: true });
    const t = await start(peerDevice, maxSize, variant === 'nofence' ? { TRELLIS_EFA_NO_FENCE: '1' } : {});
    const hello = await t.next();
    const dst = MrDesc.parse(hello.desc);
    for (const size of sizes) {
      const src = DeviceBuffer.alloc(size, { device: 0 });
      const mr = await e.registerMemory({ cuda: { ptr: src.ptr, length: size, device: 0 } });
      t.send({ rounds, size, ack: ack.desc.toString() });
      const t0 = performance.now();
      for (let r = 0; r < rounds; r++) {
        src.fillPattern(seedOf(size, r));
        await e.submitSingleWrite({ src: mr, length: size, dst, imm: IMM });
        if (variant.endsWith('reuse')) src.fillPattern(0xdead0000 + r);
        await e.immCounter(ACK).wait(1, { timeoutMs: 30_000 });
      }
      const ms = performance.now() - t0;
      const res = await t.next();
      await mr.unregister();
      src.free();
      if (variant !== 'nofence' && res.stale) failed++;
      // The variant ran on the path it names: lane writes counted only for the lane variants.
      const laneWrites = e.stats().gpu.laneWrites;
      if (lane ? laneWrites === 0 : laneWrites !== 0) failed++;
      // Through the RC model, both regions must be registered with it directly (not staged).
      if (verbs && !lane && (mr.path !== 'direct' || hello.path !== 'direct')) failed++;
      console.log(
        JSON.stringify({
          test: 'visibility',
          provider,
          variant,
          devices: [0, peerDevice],
          paths: [mr.path, hello.path],
          library: hello.library,
          size,
          rounds,
          staleRounds: res.stale,
          staleBytes: res.staleBytes,
          usPerRound: +((ms * 1000) / rounds).toFixed(1),
          writerGpu: e.stats().gpu,
        }),
      );
    }
    t.send({ cmd: 'exit' });
    await e.close();
  }
  console.log(`visibility: ${failed} failing size/variant pairs (nofence is expected to show stale bytes)`);
  process.exit(failed ? 1 : 0);
}

if (process.argv[2] === 'target') await target();
else await writer();
