// `trellis demo`: a small cluster of processes on this machine over the best local libfabric
// provider, running every system end to end, each result verified byte for byte.
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createEngine, type EfaEngine, type Provider, probeProviders } from '@trellis/backend-efa';
import { MrDesc, NetAddr, Prng } from '@trellis/core';
import { PeerProcess } from '@trellis/core/peer-process';
import { KvStreamReceiver } from '@trellis/kvstream';
import { DEMO_KV_LAYOUT, kvByte } from './cluster-shared.js';

/** One verified step of the cluster demo. */
export interface ClusterRow {
  step: string;
  processes: number;
  bytes: number;
  ms: number;
  verified: boolean;
  detail: string;
}

/** Options of {@link runClusterDemo}. */
export interface ClusterDemoOptions {
  /** libfabric provider: default the best local one (shm, else tcp). */
  provider?: Provider;
  log?: (line: string) => void;
}

/** The best provider for processes of one host: shm where it offers RMA with CQ data, else tcp. */
export function bestLocalProvider(): Provider {
  const shm = probeProviders().find((p) => p.provider === 'shm');
  return shm && !shm.error && shm.rma && shm.remoteCqData ? 'shm' : 'tcp';
}

const worker = fileURLToPath(new URL('./cluster-worker.js', import.meta.url));

class Worker {
  private readonly it: AsyncIterator<string>;
  constructor(readonly child: ChildProcess) {
    this.it = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    child.stdin!.on('error', () => {}); // EPIPE: it died first (next() says so)
  }
  static start(cfg: object): Worker {
    return new Worker(
      spawn(process.execPath, [worker, JSON.stringify(cfg)], { stdio: ['pipe', 'pipe', 'inherit'] }),
    );
  }
  async next<T>(): Promise<T> {
    const r = await this.it.next();
    if (r.done) throw new Error('a demo process exited early (its error is above)');
    return JSON.parse(r.value as string) as T;
  }
  send(o: object): void {
    this.child.stdin!.write(`${JSON.stringify(o)}\n`);
  }
  async exit(): Promise<void> {
    const gone = new Promise((r) => this.child.once('exit', r));
    if (this.child.exitCode === null) this.send({ exit: true });
    await gone;
  }
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const now = () => performance.now();

/** Run the cluster demo; rows in order: transfers, kvstream, weightsync, moe. */
export async function runClusterDemo(opts: ClusterDemoOptions = {}): Promise<ClusterRow[]> {
  const log = opts.log ?? (() => {});
  const provider = opts.provider ?? bestLocalProvider();
  const rows: ClusterRow[] = [];
  const add = (r: ClusterRow) => {
    rows.push(r);
    log(`${r.verified ? 'ok  ' : 'FAIL'} ${r.step}: ${r.detail}`);
  };
  log(
    `provider: ${provider === 'tcp' ? 'tcp;ofi_rxm' : provider} (libfabric), 2 NICs (domains) per engine, every process its own engine`,
  );
  await transfers(provider, add, log);
  await kvstream(provider, add, log);
  await weightsync(provider, add, log);
  await moe(provider, add, log);
  return rows;
}

async function transfers(provider: Provider, add: (r: ClusterRow) => void, log: (l: string) => void) {
  log('1/4 transfer sweep: this process writes into a target process');
  const engineModule = createRequire(import.meta.url).resolve('@trellis/backend-efa');
  const peer = await PeerProcess.start(engineModule, { provider, nics: 2 });
  const engine: EfaEngine = await createEngine({ provider, nics: 2 });
  try {
    for (const size of [4096, 1 << 20, 64 << 20]) {
      const name = `single-${size}`;
      const { desc } = await peer.call<{ desc: string }>('register', { name, size, remote: true });
      const src = await engine.registerMemory(size);
      new Prng(size).fill(src.buffer!);
      const req = { src, length: size, dst: MrDesc.parse(desc), imm: 11 };
      const t0 = now();
      await engine.submitSingleWrite(req);
      await peer.call('wait', {
        imm: 11,
        n: engine.expectedImms({ kind: 'single', ...req }),
        timeoutMs: 30_000,
      });
      const ms = now() - t0;
      const got = (await peer.call<{ sha256: string }>('sha256', { name })).sha256;
      const label = size >= 1 << 20 ? `${size >> 20} MiB` : `${size >> 10} KiB`;
      add({
        step: `single write ${label}`,
        processes: 2,
        bytes: size,
        ms,
        verified: got === sha(src.buffer!),
        detail: rate(size / ms / 1e6, 'GB/s', 'MB/s'),
      });
      await src.unregister();
    }
    const pages = 10_000;
    const pageBytes = 4096;
    const { desc } = await peer.call<{ desc: string }>('register', {
      name: 'paged',
      size: pages * pageBytes,
      remote: true,
    });
    const src = await engine.registerMemory(pages * pageBytes);
    new Prng(7).fill(src.buffer!);
    const srcPages = Uint32Array.from({ length: pages }, (_, i) => i);
    const dstPages = Uint32Array.from({ length: pages }, (_, i) => pages - 1 - i);
    const want = new Uint8Array(pages * pageBytes);
    for (let i = 0; i < pages; i++)
      want.set(src.buffer!.subarray(i * pageBytes, (i + 1) * pageBytes), (pages - 1 - i) * pageBytes);
    const t0 = now();
    await engine.submitPagedWrites({
      src,
      srcPages,
      srcStride: pageBytes,
      dst: MrDesc.parse(desc),
      dstPages,
      dstStride: pageBytes,
      pageBytes,
      imm: 12,
    });
    await peer.call('wait', { imm: 12, n: pages, timeoutMs: 30_000 });
    const ms = now() - t0;
    const got = (await peer.call<{ sha256: string }>('sha256', { name: 'paged' })).sha256;
    add({
      step: 'paged writes 10,000 x 4 KiB (reversed)',
      processes: 2,
      bytes: pages * pageBytes,
      ms,
      verified: got === sha(want),
      detail: `${rate(pages / ms / 1e3, 'Mpages/s', 'kpages/s')}, 10,000 immediates counted`,
    });
  } finally {
    await engine.close();
    await peer.stop();
  }
}

async function kvstream(provider: Provider, add: (r: ClusterRow) => void, log: (l: string) => void) {
  log('2/4 kvstream: a prefill process streams 4 requests layer by layer into this decode process');
  const prefill = Worker.start({ role: 'prefill', provider });
  const engine = await createEngine({ provider, nics: 2 });
  const rx = await KvStreamReceiver.create({
    engine,
    layout: DEMO_KV_LAYOUT,
    maxTailBytes: 4096,
    maxRequests: 8,
  });
  try {
    const addr = NetAddr.parse((await prefill.next<{ addr: string }>()).addr);
    const reqs = [2000, 777, 4096, 1].map((tokens, i) => ({ tokens, tag: `request-${i}`, tailBytes: 1024 }));
    const t0 = now();
    const ready = await Promise.all(
      reqs.map(
        (r) =>
          rx.admit({ prefill: addr, tokens: r.tokens, tailBytes: r.tailBytes, tag: r.tag, timeoutMs: 60_000 })
            .done,
      ),
    );
    const ms = now() - t0;
    const L = rx.layout;
    let bad = 0;
    let bytes = 0;
    for (const [i, kv] of ready.entries()) {
      const { tag, tokens } = reqs[i]!;
      L.segments.forEach((s, seg) => {
        for (let t = 0; t < tokens; t++) {
          const at =
            s.offset +
            kv.pages[Math.floor(t / L.tokensPerPage)]! * s.stride +
            (t % L.tokensPerPage) * s.tokenBytes;
          for (let b = 0; b < s.tokenBytes; b++)
            if (rx.region.buffer![at + b] !== kvByte(tag, seg, t, b)) bad++;
        }
      });
      for (let j = 0; j < kv.tail.length; j++) if (kv.tail[j] !== kvByte(tag, 65535, j, 0)) bad++;
      bytes += tokens * L.bytesPerToken + kv.tail.length;
      kv.release();
    }
    add({
      step: 'kvstream: 4 requests, 8 layers, 2 chunks each',
      processes: 2,
      bytes,
      ms,
      verified: bad === 0 && rx.freePages === L.pages,
      detail: `KV and tails byte-exact; every page back in the pool`,
    });
  } finally {
    await rx.close();
    await engine.close();
    await prefill.exit();
  }
}

async function weightsync(provider: Provider, add: (r: ClusterRow) => void, log: (l: string) => void) {
  log(
    '3/4 weightsync: 3 trainer processes write a 34 MiB model into 2 inference processes (TP2, fused qkv, fp8 MLP)',
  );
  const inf = [0, 1].map((rank) => Worker.start({ role: 'inference', provider, rank }));
  const tr = [0, 1, 2].map((rank) => Worker.start({ role: 'trainer', provider, rank }));
  try {
    const descs = await Promise.all(inf.map(async (w) => (await w.next<{ descs: string[] }>()).descs));
    await Promise.all(tr.map((w) => w.next()));
    for (const w of tr) w.send({ targets: descs });
    await Promise.all(tr.map((w) => w.next()));
    const t0 = now();
    for (const w of [...inf, ...tr]) w.send({ go: true });
    const results = await Promise.all(
      inf.map((w) => w.next<{ syncMs: number; bytes: number; bad: number }>()),
    );
    void t0;
    // From "go" to the step complete at the slower inference rank (its check of every byte comes after).
    const ms = Math.max(...results.map((r) => r.syncMs));
    const sent = await Promise.all(tr.map((w) => w.next<{ synced: number }>()));
    const bytes = sent.reduce((n, s) => n + s.synced, 0);
    add({
      step: 'weightsync: 3 trainers → 2 inference ranks',
      processes: 5,
      bytes,
      ms,
      verified: results.every((r) => r.bad === 0),
      detail: 'every weight byte and fp8 scale checked on both inference ranks',
    });
  } finally {
    await Promise.all([...inf, ...tr].map((w) => w.exit()));
  }
}

async function moe(provider: Provider, add: (r: ClusterRow) => void, log: (l: string) => void) {
  log('4/4 moe: one dispatch/combine round across 3 processes (native proxy thread posting every write)');
  const world = 3;
  const ranks = Array.from({ length: world }, (_, rank) =>
    Worker.start({ role: 'moe', provider, rank, world }),
  );
  try {
    const descriptors = await Promise.all(
      ranks.map(async (w) => (await w.next<{ descriptor: string }>()).descriptor),
    );
    const t0 = now();
    for (const w of ranks) w.send({ descriptors });
    const res = await Promise.all(
      ranks.map((w) => w.next<{ dispatchOk: boolean; combineOk: boolean; rows: number; tokens: number }>()),
    );
    const ms = now() - t0;
    const rows = res.reduce((n, r) => n + r.rows, 0);
    add({
      step: 'moe: dispatch + combine (native proxy), 3 ranks',
      processes: 3,
      bytes: rows * 1024 * 2 * 2,
      ms,
      verified: res.every((r) => r.dispatchOk && r.combineOk),
      detail: `${res.reduce((n, r) => n + r.tokens, 0)} tokens, ${rows} expert rows; equal to the reference on every rank`,
    });
  } finally {
    await Promise.all(ranks.map((w) => w.exit()));
  }
}

/**
 * `x` (in `big` units) with three significant digits, in `small` units (a thousandth) below 0.1:
 * a 4 KiB write timed with its control round trip runs at MB/s, not 0.00 GB/s.
 */
function rate(x: number, big: string, small: string): string {
  return x >= 0.1 ? `${x.toPrecision(3)} ${big}` : `${(x * 1e3).toPrecision(3)} ${small}`;
}
