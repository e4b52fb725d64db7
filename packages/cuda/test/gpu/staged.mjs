// GPU: the staged path between two processes, each with its own GPU when two are visible. The
// parent (GPU 0) and a child (GPU 1) register cudaMalloc'd regions with backend-efa engines
// (`gpu: cudaMemoryOps()`); every CUDA region is staged through pinned host mirrors, since
// the engines are made with gpuDirect: false and sameHostLane: false. Checked: a single write, paged writes and a write back,
// with immediates counted only once the bytes are on the device — verified there by a kernel
// counting mismatches against the fill pattern. Also times staged single writes against a plain
// cudaMemcpy D2H + H2D of the same bytes (the copies the staged path adds). Prints one JSON line.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createEngine } from '@trellis/backend-efa';
import { MrDesc } from '@trellis/core';
import { cudaInfo, cudaMemoryOps, DeviceBuffer } from '../../dist/index.js';

const provider = process.env.TRELLIS_PROVIDER ?? 'shm';
const N = 64 << 20;
const PAGE = 64 << 10;
const PAGES = 256;

async function child() {
  const device = Number(process.argv[3]);
  const e = await createEngine({
    provider,
    nics: 2,
    gpu: cudaMemoryOps(),
    maxSleepUs: 0,
    gpuDirect: false,
    sameHostLane: false,
  });
  const buf = DeviceBuffer.alloc(2 * N, { device });
  const mr = await e.registerMemory({ cuda: { ptr: buf.ptr, length: buf.length, device } }, { remote: true });
  const host = await e.registerMemory(N, { remote: true });
  const lines = createInterface({ input: process.stdin });
  const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
  say({
    addr: e.address.toString(),
    desc: mr.desc.toString(),
    hostDesc: host.desc.toString(),
    path: mr.path,
  });
  for await (const line of lines) {
    const m = JSON.parse(line);
    if (m.cmd === 'check') {
      // The single write: [0, N) holds pattern seed 5 from index 0. The pages: page i of [N, 2N)
      // at dst page 2i+1 holds the pattern of seed 9 at src page (i*37) % PAGES.
      await e.immCounter(1).wait(m.single, { timeoutMs: 60_000 });
      const single = buf.countPatternMismatches(5, 0, N, 0);
      await e.immCounter(2).wait(m.pages, { timeoutMs: 60_000 });
      let paged = 0;
      for (let i = 0; i < PAGES; i++)
        paged += buf.countPatternMismatches(9, N + (2 * i + 1) * PAGE, PAGE, ((i * 37) % PAGES) * PAGE);
      say({ single, paged, imms: [e.immCounter(1).total, e.immCounter(2).total], gpu: e.stats().gpu });
    } else if (m.cmd === 'writeBack') {
      // Fill [0, N) with seed 13 and write it into the parent's region, with an immediate.
      buf.fillPattern(13);
      await e.submitSingleWrite({ src: mr, length: N, dst: MrDesc.parse(m.desc), imm: 3 });
      say({ wroteBack: true, gpu: e.stats().gpu });
    } else if (m.cmd === 'bench') {
      await e.immCounter(4).wait(m.n, { timeoutMs: 120_000 });
      say({ benchDone: true });
    } else if (m.cmd === 'exit') {
      await e.close();
      buf.free();
      process.exit(0);
    }
  }
}

async function parent() {
  const info = cudaInfo();
  const peerDevice = info.devices.length > 1 ? 1 : 0;
  const kid = spawn(process.execPath, [fileURLToPath(import.meta.url), 'child', String(peerDevice)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const replies = createInterface({ input: kid.stdout })[Symbol.asyncIterator]();
  const next = async () => JSON.parse((await replies.next()).value);
  const send = (o) => kid.stdin.write(`${JSON.stringify(o)}\n`);
  const hello = await next();
  const dst = MrDesc.parse(hello.desc);

  const e = await createEngine({
    provider,
    nics: 2,
    gpu: cudaMemoryOps(),
    maxSleepUs: 0,
    gpuDirect: false,
    sameHostLane: false,
  });
  const src = DeviceBuffer.alloc(2 * N, { device: 0 });
  src.fillPattern(5);
  const mr = await e.registerMemory(
    { cuda: { ptr: src.ptr, length: src.length, device: 0 } },
    { remote: true },
  );
  // Single write of N bytes (pattern 5 from index 0) with immediate 1.
  const single = { src: mr, length: N, dst, imm: 1 };
  await e.submitSingleWrite(single);
  // Pages: [N, 2N) of the source holds pattern 9 from index 0 (filled into a scratch buffer and
  // copied there); page (i*37)%PAGES → dst page 2i+1 of [N, 2N).
  const scratch = DeviceBuffer.alloc(N, { device: 0 });
  scratch.fillPattern(9);
  const host = scratch.read(new Uint8Array(N));
  src.write(host, N);
  scratch.free();
  const paged = {
    src: mr,
    srcPages: Uint32Array.from({ length: PAGES }, (_, i) => (i * 37) % PAGES),
    srcStride: PAGE,
    srcOffset: N,
    dst,
    dstPages: Uint32Array.from({ length: PAGES }, (_, i) => 2 * i + 1),
    dstStride: PAGE,
    dstOffset: N,
    pageBytes: PAGE,
    imm: 2,
  };
  await e.submitPagedWrites(paged);
  send({
    cmd: 'check',
    single: e.expectedImms({ kind: 'single', ...single }),
    pages: e.expectedImms({ kind: 'paged', ...paged }),
  });
  const checked = await next();
  // The child writes back into [0, N) of this region.
  send({ cmd: 'writeBack', desc: mr.desc.toString() });
  const back = await next();
  await e.immCounter(3).wait(e.expectedImms({ kind: 'single', src: mr, length: N, dst: mr.desc, imm: 3 }), {
    timeoutMs: 60_000,
  });
  const backBad = src.countPatternMismatches(13, 0, N, 0);

  // Timing: staged single writes of N bytes, against the copies they add alone (D2H then H2D
  // through pinned host memory, one stream, no overlap).
  const reps = 8;
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) await e.submitSingleWrite({ src: mr, length: N, dst, imm: 4 });
  const stagedMs = (performance.now() - t0) / reps;
  // The same writes host → host on the same engines: the wire alone.
  const hostSrc = await e.registerMemory(N);
  const hostDst = MrDesc.parse(hello.hostDesc);
  const th = performance.now();
  for (let i = 0; i < reps; i++) await e.submitSingleWrite({ src: hostSrc, length: N, dst: hostDst, imm: 4 });
  const hostMs = (performance.now() - th) / reps;
  send({
    cmd: 'bench',
    n:
      reps * e.expectedImms({ kind: 'single', src: mr, length: N, dst, imm: 4 }) +
      reps * e.expectedImms({ kind: 'single', src: hostSrc, length: N, dst: hostDst, imm: 4 }),
  });
  await next();
  const ops = cudaMemoryOps();
  const pinned = ops.allocHost(N);
  const whole = Float64Array.of(0, 0, N);
  const t1 = performance.now();
  for (let i = 0; i < reps; i++) {
    await ops.copy('toHost', 0, src.ptr, pinned, whole);
    await ops.copy('toDevice', 0, src.ptr + BigInt(N), pinned, whole);
  }
  const copyMs = (performance.now() - t1) / reps;
  send({ cmd: 'exit' });
  const stats = e.stats();
  await e.close();
  src.free();
  console.log(
    JSON.stringify({
      test: 'staged',
      provider,
      devices: [0, peerDevice],
      path: [mr.path, hello.path],
      child: checked,
      writeBack: { bad: backBad, imms: e.immCounter(3).total, childGpu: back.gpu },
      parentGpu: stats.gpu,
      nicPaths: stats.nics.map((n) => n.path),
      bench: {
        bytes: N,
        hostWriteMs: +hostMs.toFixed(2),
        hostGBps: +(N / hostMs / 1e6).toFixed(2),
        stagedWriteMs: +stagedMs.toFixed(2),
        stagedGBps: +(N / stagedMs / 1e6).toFixed(2),
        d2hPlusH2dMs: +copyMs.toFixed(2),
        d2hPlusH2dGBps: +(N / copyMs / 1e6).toFixed(2),
      },
    }),
  );
  // Wrong bytes fail the check (device-gpu-tests.sh counts exit codes).
  if (checked.single !== 0 || checked.paged !== 0 || backBad !== 0) process.exit(1);
}

if (process.argv[2] === 'child') await child();
else await parent();
