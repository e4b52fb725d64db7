// GPU: kvstream between two processes whose KV caches are CUDA memory (prefill on GPU 0, decode on
// GPU 1 where two GPUs exist), on the staged path (no GPUDirect RDMA NIC on these machines). The
// prefill cache is filled by a kernel with a pattern; every token of every page of every segment
// that reaches the decode cache is checked on the decode GPU by a kernel. Prints one JSON line.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { NetAddr } from '@trellis/core';
import { cudaInfo, cudaMemoryOps, DeviceBuffer, patternByte } from '@trellis/cuda';
import { KvLayout, KvStreamReceiver, KvStreamSender } from '../../dist/index.js';

// TRELLIS_BACKEND=verbs: backend-verbs on its software RC model (GPU memory registered with the
// model, which copies it with the CUDA driver) instead of backend-efa.
const verbs = process.env.TRELLIS_BACKEND === 'verbs';
const { createEngine } = await import(verbs ? '@trellis/backend-verbs' : '@trellis/backend-efa');
const provider = verbs ? 'rc-model' : (process.env.TRELLIS_PROVIDER ?? 'shm');
// TRELLIS_GPU_PATH: lane (default: the same-host lane where it applies), direct (through the NICs,
// FI_HMEM where libfabric has it) or staged (pinned host mirrors) — for comparing the paths.
const gpuPath = process.env.TRELLIS_GPU_PATH ?? 'lane';
const pathOpts =
  gpuPath === 'staged'
    ? { sameHostLane: false, ...(verbs ? {} : { gpuDirect: false }) }
    : gpuPath === 'direct'
      ? { sameHostLane: false }
      : {};
const SEED = 31;
const spec = {
  layers: 8,
  tokensPerPage: 16,
  pages: 512,
  tensors: [
    { name: 'k', bytesPerToken: 1024, heads: 8 },
    { name: 'v', bytesPerToken: 1024, heads: 8 },
  ],
};
const layout = new KvLayout(spec);
const REQUESTS = [
  { tag: 'a', tokens: 1000, tail: 4096 },
  { tag: 'b', tokens: 2048, tail: 0 },
  { tag: 'c', tokens: 16 * 100 + 5, tail: 333 },
];
const tailOf = (tag, n) => Uint8Array.from({ length: n }, (_, i) => (tag.charCodeAt(0) * 7 + i) & 0xff);

// TRELLIS_HOST_GPU=1: HostGpu in place of CUDA (to run this flow where no GPU is).
const fake = process.env.TRELLIS_HOST_GPU === '1';
function hostBuffer(h, length) {
  const ptr = h.alloc(length);
  const bytes = h.bytes(ptr);
  return {
    ptr,
    length,
    fillPattern: (seed) => {
      for (let i = 0; i < length; i++) bytes[i] = patternByte(i, seed);
    },
    countPatternMismatches: (seed, off, n, at) => {
      let bad = 0;
      for (let i = 0; i < n; i++) if (bytes[off + i] !== patternByte(at + i, seed)) bad++;
      return bad;
    },
    free() {},
  };
}

async function setup(device) {
  // The conformance kit imports vitest: loaded only for the stand-in.
  const h = fake ? new (await import('@trellis/core/conformance')).HostGpu() : undefined;
  const gpu = h ? h.ops : cudaMemoryOps();
  const engine = await createEngine({
    ...(verbs ? { model: true } : { provider }),
    nics: 2,
    gpu,
    maxSleepUs: 0,
    ...pathOpts,
  });
  const buf = h ? hostBuffer(h, layout.regionBytes) : DeviceBuffer.alloc(layout.regionBytes, { device });
  return { gpu, engine, buf, device: h ? 0 : device };
}

async function decode() {
  const device = Number(process.argv[3]);
  const { gpu, engine, buf } = await setup(device);
  const region = await engine.registerMemory(
    { cuda: { ptr: buf.ptr, length: buf.length, device } },
    { remote: true },
  );
  const rx = await KvStreamReceiver.create({ engine, layout, region, gpu });
  const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
  say({ addr: engine.address.toString() });
  for await (const line of createInterface({ input: process.stdin })) {
    const m = JSON.parse(line);
    if (m.cmd === 'exit') break;
    const adm = rx.admit({
      prefill: NetAddr.parse(m.prefill),
      tokens: m.tokens,
      tailBytes: m.tail,
      tag: m.tag,
    });
    say({ admitted: m.tag });
    where.step = `done ${m.tag}`;
    const kv = await adm.done;
    where.step = `check ${m.tag}`;
    let bad = 0;
    let checked = 0;
    kv.pages.forEach((page, i) => {
      const inPage = Math.min(layout.tokensPerPage, m.tokens - layout.tokensPerPage * i);
      for (const s of layout.segments) {
        const n = inPage * s.tokenBytes;
        bad += buf.countPatternMismatches(
          SEED,
          s.offset + page * s.stride,
          n,
          s.offset + m.srcPages[i] * s.stride,
        );
        checked += n;
      }
    });
    const want = tailOf(m.tag, m.tail);
    const tailOk = kv.tail.length === want.length && kv.tail.every((x, i) => x === want[i]);
    kv.release();
    say({ tag: m.tag, bad, checked, tailOk });
  }
  const stats = { rx: rx.stats(), gpu: engine.stats().gpu };
  await rx.close();
  await engine.close();
  buf.free();
  say({ done: true, stats });
  process.exit(0);
}

async function prefill() {
  const peerDevice = !fake && cudaInfo().devices.length > 1 ? 1 : 0;
  const kid = spawn(process.execPath, [fileURLToPath(import.meta.url), 'decode', String(peerDevice)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const replies = createInterface({ input: kid.stdout })[Symbol.asyncIterator]();
  const next = async () => JSON.parse((await replies.next()).value);
  const send = (o) => kid.stdin.write(`${JSON.stringify(o)}\n`);
  await next();
  const { gpu, engine, buf } = await setup(0);
  buf.fillPattern(SEED);
  const region = await engine.registerMemory({ cuda: { ptr: buf.ptr, length: buf.length, device: 0 } });
  const tx = await KvStreamSender.create({ engine, layout, region, gpu });
  const results = [];
  let next0 = 0;
  for (const r of REQUESTS) {
    const n = layout.pagesFor(r.tokens);
    // Source pages spread over the pool, in a scrambled order.
    const srcPages = Uint32Array.from({ length: n }, (_, i) => (next0 + i * 7) % layout.pages);
    next0 += 3;
    where.step = `admit ${r.tag}`;
    send({ cmd: 'admit', prefill: engine.address.toString(), ...r, srcPages: [...srcPages] });
    await next();
    where.step = `stream ${r.tag}`;
    const t0 = performance.now();
    const stream = tx.bind(r.tag, { srcPages });
    stream.chunk(r.tokens);
    for (let l = 0; l < layout.layers; l++) {
      stream.progress.watcher.increment();
      await new Promise((res) => setImmediate(res));
    }
    stream.finish(tailOf(r.tag, r.tail));
    await stream.done;
    const ms = performance.now() - t0;
    where.step = `result ${r.tag}`;
    where.tx = tx.stats();
    where.gpu = engine.stats().gpu;
    const got = await next();
    results.push({ ...got, tokens: r.tokens, ms: +ms.toFixed(2), bytes: r.tokens * 2048 * spec.layers });
  }
  send({ cmd: 'exit' });
  const end = await next();
  const stats = { tx: tx.stats(), gpu: engine.stats().gpu };
  await tx.close();
  await engine.close();
  buf.free();
  console.log(
    JSON.stringify({
      test: 'kvstream-gpu',
      provider,
      gpuPath,
      devices: [0, peerDevice],
      results,
      prefill: stats,
      decode: end.stats,
    }),
  );
  // Wrong, unchecked or missing bytes fail the check (device-gpu-tests.sh counts exit codes).
  const ok = results.every((r) => r.bad === 0 && r.checked === r.bytes && r.tailOk);
  process.exit(ok && results.length === REQUESTS.length ? 0 : 1);
}

// A hang says where it stood instead of running into the caller's limit.
const where = { step: 'start' };
const watchdog = setTimeout(() => {
  console.error(`kv.mjs ${process.argv[2] ?? 'prefill'}: no result after 120 s; ${JSON.stringify(where)}`);
  process.exit(3);
}, 120_000);
watchdog.unref();

if (process.argv[2] === 'decode') await decode();
else await prefill();
