// GPU → GPU writes between two processes (each its own GPU when two are visible), every path in one
// invocation, each counted done only when its bytes are visible at the target:
//   lane     — the engine's same-host lane (CUDA IPC copy on the writer's stream, imms after it);
//   direct   — the engine through libfabric with FI_HMEM (sameHostLane: false, gpuDirect: true;
//              on shm its bounce buffers), fenced imms;
//   staged   — the engine through pinned host mirrors (gpuDirect: false, sameHostLane: false);
//   memcpy   — baseline: cudaMemcpyAsync device → device into the peer's IPC-mapped buffer on one
//              stream, drained (no engine, no immediates);
//   raw      — baseline: backend-efa's bench/rma_raw_cuda, libfabric posts on CUDA memory (FI_HMEM,
//              FI_HMEM_DEVICE_ONLY: shm's CUDA IPC protocol) from C, its clock stopped when the
//              target has synchronised its device;
//   raw-plain — the same program registering as the engine does on shm (no FI_HMEM_DEVICE_ONLY:
//              bounce buffers): the same posts as `direct`, for the ratio the engine is held to;
// For each size, `reps` single writes (8 GiB, at most 400) are issued with `depth` in flight; the
// clock stops when the target has counted every immediate (it answers with one of its own). Paged
// writes (64 KiB pages) are measured the same way. Prints a table and one JSON line per row.
//   node test/gpu/write-bench.mjs [sizes=65536,1048576,16777216,67108864,268435456] [modes=lane,direct,raw,raw-plain,staged,memcpy]
import { execFileSync, spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createEngine } from '@trellis/backend-efa';
import { MrDesc } from '@trellis/core';
import { cudaInfo, cudaMemoryOps, DeviceBuffer, memcpyDevice } from '../../dist/index.js';

const provider = process.env.TRELLIS_PROVIDER ?? 'shm';
const IMM = 11;
const ACK = 12;
const PAGE = 64 << 10;
/**
 * Writes per measurement: 8 GiB where 400 writes reach it, at least 4 — long enough that one
 * round trip (the target's answer) and the first write's start are a small part of it.
 */
const repsFor = (size, most = 400) => Math.max(4, Math.min(most, Math.floor(2 ** 33 / size)));
/** Writes in flight per path (TRELLIS_BENCH_DEPTH, default 4). */
const DEPTH = Number(process.env.TRELLIS_BENCH_DEPTH ?? 4);

function engineOpts(mode) {
  const base = { provider, gpu: cudaMemoryOps(), maxSleepUs: 0 };
  if (mode === 'lane') return base;
  if (mode === 'direct') return { ...base, sameHostLane: false, gpuDirect: true };
  return { ...base, sameHostLane: false, gpuDirect: false };
}

async function target() {
  const [device, maxSize, mode] = [Number(process.argv[3]), Number(process.argv[4]), process.argv[5]];
  const e = await createEngine(engineOpts(mode));
  const buf = DeviceBuffer.alloc(maxSize, { device });
  const mr = await e.registerMemory({ cuda: { ptr: buf.ptr, length: maxSize, device } }, { remote: true });
  const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
  say({ desc: mr.desc.toString(), path: mr.path, ipc: buf.ipcHandle() });
  for await (const line of createInterface({ input: process.stdin })) {
    const m = JSON.parse(line);
    if (m.cmd === 'exit') break;
    await e.immCounter(IMM).wait(m.imms, { timeoutMs: 120_000 });
    await e.submitImm({ dst: MrDesc.parse(m.ack), imm: ACK });
  }
  await e.close();
  buf.free();
  process.exit(0);
}

function child(device, maxSize, mode) {
  const kid = spawn(
    process.execPath,
    [fileURLToPath(import.meta.url), 'target', String(device), String(maxSize), mode],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const replies = createInterface({ input: kid.stdout })[Symbol.asyncIterator]();
  return {
    next: async () => JSON.parse((await replies.next()).value),
    send: (o) => kid.stdin.write(`${JSON.stringify(o)}\n`),
  };
}

async function timed(reps, depth, submit) {
  const t0 = performance.now();
  const inflight = new Set();
  for (let i = 0; i < reps; i++) {
    const p = submit().then(() => inflight.delete(p));
    inflight.add(p);
    if (inflight.size >= depth) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  return t0;
}

async function main() {
  const sizes = (process.argv[2] ?? '65536,1048576,16777216,67108864,268435456').split(',').map(Number);
  const modes = (process.argv[3] ?? 'lane,direct,raw,raw-plain,staged,memcpy').split(',');
  const peerDevice = cudaInfo().devices.length > 1 ? 1 : 0;
  const maxSize = Math.max(...sizes);
  const rows = [];
  for (const mode of modes) {
    if (mode === 'raw' || mode === 'raw-plain') {
      const dir = dirname(createRequire(import.meta.url).resolve('@trellis/backend-efa/package.json'));
      const bin = process.env.TRELLIS_RAW_CUDA ?? join(dir, 'build/Release/rma_raw_cuda');
      for (const size of sizes) {
        const reps = repsFor(size);
        const out = JSON.parse(
          execFileSync(
            bin,
            [
              provider === 'tcp' ? 'tcp;ofi_rxm' : provider,
              String(size),
              String(reps),
              '4',
              '0',
              String(peerDevice),
              mode === 'raw' ? 'device-only' : 'plain',
            ],
            {
              encoding: 'utf8',
            },
          ),
        );
        rows.push({
          mode,
          kind: 'single',
          size,
          reps,
          ms: out.seconds_visible * 1e3,
          gbps: out.bytes / out.seconds_visible / 1e9,
        });
        if (mode === 'raw-plain') continue;
        rows.push({
          mode: 'raw-naive',
          kind: 'single',
          size,
          reps,
          ms: out.seconds_completed * 1e3,
          gbps: out.bytes / out.seconds_completed / 1e9,
        });
      }
      continue;
    }
    const t = child(peerDevice, maxSize, mode === 'memcpy' ? 'lane' : mode);
    const hello = await t.next();
    const dst = MrDesc.parse(hello.desc);
    const src = DeviceBuffer.alloc(maxSize, { device: 0 });
    src.fillPattern(3);
    if (mode === 'memcpy') {
      const peer = DeviceBuffer.import(hello.ipc, { length: maxSize, device: 0 });
      for (const size of sizes) {
        const reps = repsFor(size);
        const triples = new BigUint64Array(3 * reps);
        for (let i = 0; i < reps; i++) triples.set([peer.ptr, src.ptr, BigInt(size)], 3 * i);
        await memcpyDevice(0, triples.subarray(0, 3)); // warm-up
        const t0 = performance.now();
        await memcpyDevice(0, triples);
        const ms = performance.now() - t0;
        rows.push({ mode, kind: 'single', size, reps, ms, gbps: (size * reps) / ms / 1e6 });
      }
      peer.free();
    } else {
      const e = await createEngine(engineOpts(mode));
      const ack = await e.registerMemory(64, { remote: true });
      const mr = await e.registerMemory({ cuda: { ptr: src.ptr, length: maxSize, device: 0 } });
      const run = async (kind, size, reps, req) => {
        const per = e.expectedImms(req);
        await e.submitSingleWrite({ ...req, kind: undefined }); // warm-up (maps, connections)
        t.send({ imms: per, ack: ack.desc.toString() });
        await e.immCounter(ACK).wait(1, { timeoutMs: 120_000 });
        const submit = kind === 'single' ? () => e.submitSingleWrite(req) : () => e.submitPagedWrites(req);
        t.send({ imms: per * reps, ack: ack.desc.toString() });
        const t0 = await timed(reps, DEPTH, submit);
        await e.immCounter(ACK).wait(1, { timeoutMs: 120_000 });
        const ms = performance.now() - t0;
        rows.push({
          mode,
          kind,
          size,
          reps,
          ms,
          gbps: (size * reps) / ms / 1e6,
          path: [mr.path, hello.path],
        });
      };
      for (const size of sizes) {
        const reps = repsFor(size, mode === 'staged' ? 16 : 400);
        await run('single', size, reps, { kind: 'single', src: mr, length: size, dst, imm: IMM });
      }
      // Paged: 256 pages of 64 KiB (16 MiB) scattered over the destination.
      const pages = Math.min(256, Math.floor(maxSize / PAGE / 2));
      const paged = {
        kind: 'paged',
        src: mr,
        srcPages: Uint32Array.from({ length: pages }, (_, i) => i),
        srcStride: PAGE,
        dst,
        dstPages: Uint32Array.from({ length: pages }, (_, i) => 2 * i),
        dstStride: PAGE,
        pageBytes: PAGE,
        imm: IMM,
      };
      const per = e.expectedImms(paged);
      await e.submitPagedWrites(paged);
      t.send({ imms: per, ack: ack.desc.toString() });
      await e.immCounter(ACK).wait(1, { timeoutMs: 120_000 });
      const reps = mode === 'staged' ? 8 : 200;
      t.send({ imms: per * reps, ack: ack.desc.toString() });
      const t0 = await timed(reps, DEPTH, () => e.submitPagedWrites(paged));
      await e.immCounter(ACK).wait(1, { timeoutMs: 120_000 });
      const ms = performance.now() - t0;
      rows.push({
        mode,
        kind: 'paged64k',
        size: pages * PAGE,
        reps,
        ms,
        gbps: (pages * PAGE * reps) / ms / 1e6,
      });
      rows.at(-1).gpu = e.stats().gpu;
      await e.close();
    }
    t.send({ cmd: 'exit' });
    src.free();
  }
  const fmt = (n) => (n >= 1 << 20 ? `${n / (1 << 20)} MiB` : `${n / 1024} KiB`);
  console.log(
    `GPU → GPU writes, ${provider}, devices 0 → ${peerDevice}, ${cudaInfo().devices[0]?.name}, ${DEPTH} in flight`,
  );
  const cols = modes.flatMap((m) => (m === 'raw' ? ['raw', 'raw-naive'] : [m]));
  // The engine's libfabric path against the raw program making the same posts (shm: plain
  // registrations, bounce buffers), where both ran.
  for (const r of rows.filter((x) => x.mode === 'direct' && x.kind === 'single')) {
    const raw = rows.find((x) => x.mode === 'raw-plain' && x.size === r.size);
    if (raw) r.ofRawPlain = +(r.gbps / raw.gbps).toFixed(3);
  }
  console.log(`kind      size     ${cols.map((m) => m.padStart(10)).join('')}   (GB/s)`);
  const keys = [...new Set(rows.map((r) => `${r.kind}|${r.size}`))];
  for (const k of keys) {
    const [kind, size] = k.split('|');
    const cells = cols.map((m) => {
      const r = rows.find((x) => x.mode === m && `${x.kind}|${x.size}` === k);
      return (r ? r.gbps.toFixed(1) : '-').padStart(10);
    });
    console.log(`${kind.padEnd(9)} ${fmt(Number(size)).padEnd(8)} ${cells.join('')}`);
  }
  for (const r of rows) console.log(JSON.stringify({ test: 'write-bench', provider, ...r }));
  process.exit(0);
}

if (process.argv[2] === 'target') await target();
else await main();
