// `trellis bench`: single writes of a sweep of sizes from this process into a target process over
// backend-efa (any provider) or backend-verbs, each size timed over a window of writes and verified by hash at the
// target; a table, JSON, and a self-contained HTML report with a bandwidth-versus-size chart.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, hostname } from 'node:os';
import { createEngine, fabricVersion, type Provider } from '@trellis/backend-efa';
import { createEngine as createVerbsEngine, listDevices } from '@trellis/backend-verbs';
import type { TransferEngine } from '@trellis/core';
import { MrDesc, Prng, TrellisError } from '@trellis/core';
import { PeerProcess } from '@trellis/core/peer-process';
import { TcpStore } from '@trellis/rendezvous';

/** Options of {@link runBench}. */
export interface BenchOptions {
  /** `efa` (libfabric, default) or `verbs` (ibverbs; its software RC model where no device exists). */
  backend?: 'efa' | 'verbs';
  provider?: Provider;
  nics?: number;
  /** Write sizes in bytes. Default 4 KiB … 64 MiB by powers of 4. */
  sizes?: number[];
  /** Bytes moved per size (at least one write). Default 256 MiB. */
  bytesPerSize?: number;
  /** Writes per size at most (small sizes move fewer bytes). Default 65536. */
  maxWritesPerSize?: number;
  /** Writes in flight. Default 32. */
  window?: number;
  /** Progress: called after each size with (done, total). */
  progress?: (done: number, total: number) => void;
  /** Write into a target on another host started with `trellis bench --serve` (its `host:port`). Default: a target process here. */
  connect?: string;
  /** How long to keep trying to reach `connect` (default 30 000 ms). */
  connectTimeoutMs?: number;
  /** Progress lines (connecting, connected). */
  log?: (line: string) => void;
}

/** Where the writes land: a process here, or one on another host behind a rendezvous store. */
interface Target {
  register(name: string, size: number): Promise<string>;
  wait(imm: number, n: number): Promise<void>;
  sha256(name: string): Promise<string>;
  stop(): Promise<void>;
}

async function localTarget(backend: 'efa' | 'verbs', engineOptions: object): Promise<Target> {
  const engineModule = createRequire(import.meta.url).resolve(
    backend === 'verbs' ? '@trellis/backend-verbs' : '@trellis/backend-efa',
  );
  const peer = await PeerProcess.start(engineModule, engineOptions);
  return {
    register: async (name, size) =>
      (await peer.call<{ desc: string }>('register', { name, size, remote: true })).desc,
    wait: async (imm, n) => void (await peer.call('wait', { imm, n, timeoutMs: 120_000 })),
    sha256: async (name) => (await peer.call<{ sha256: string }>('sha256', { name })).sha256,
    stop: () => peer.stop(),
  };
}

/** `HOST:PORT` with a port from 1 to 65535, or `undefined` if `s` is not one. */
export function parseHostPort(s: string): { host: string; port: number } | undefined {
  const m = /^(.+):(\d+)$/.exec(s);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) return undefined;
  return { host: m[1]!, port: Number(m[2]) };
}

/** The client side of a two-host run: requests go through the serving host's store. */
async function remoteTarget(hostPort: string, timeoutMs: number, log: (l: string) => void): Promise<Target> {
  const at = parseHostPort(hostPort);
  if (!at)
    throw new TrellisError('INVALID_ARGUMENT', `--connect takes HOST:PORT, got ${JSON.stringify(hostPort)}`);
  log(`connecting to ${hostPort} (giving up after ${timeoutMs / 1000} s)…`);
  const store = await TcpStore.connect({ ...at, timeoutMs });
  // A member of the serving side's group for as long as this connection lives: a client that dies
  // leaves it, and the server stops instead of waiting for its next request for ever.
  await store.join(CLIENTS, 'client', String(process.pid));
  log(`connected to ${hostPort}`);
  let seq = 0;
  const ask = async (req: object) => {
    const id = ++seq;
    await store.set(`bench/req/${id}`, JSON.stringify(req));
    return JSON.parse(await store.get(`bench/res/${id}`, { timeoutMs: 180_000 })) as Record<string, string>;
  };
  return {
    register: async (name, size) => (await ask({ op: 'register', name, size })).desc!,
    wait: async (imm, n) => void (await ask({ op: 'wait', imm, n })),
    sha256: async (name) => (await ask({ op: 'sha256', name })).sha256!,
    stop: async () => {
      await ask({ op: 'exit' });
      await store.close();
    },
  };
}

/** The store group a `--connect` client joins while it runs. */
const CLIENTS = 'bench/clients';

/**
 * The serving side of a two-host run (`trellis bench --serve`): a target engine and a rendezvous
 * store on `port`; one client's requests are served until it says exit. Resolves then; rejects
 * `PEER_LOST` when the client goes away (its connection to the store closes) before it says exit.
 */
export async function serveBench(opts: {
  provider?: Provider;
  nics?: number;
  port?: number;
  log?: (l: string) => void;
}): Promise<void> {
  const provider = opts.provider ?? 'tcp';
  const store = await TcpStore.serve({ port: opts.port ?? 29600 });
  const engine = await createEngine({ provider, nics: opts.nics ?? 1 });
  const regions = new Map<string, Awaited<ReturnType<typeof engine.registerMemory>>>();
  opts.log?.(
    `serving on port ${store.port} (${provider === 'tcp' ? 'tcp;ofi_rxm' : provider}); run: trellis bench --connect <this host>:${store.port} --provider ${provider}`,
  );
  let joined = false;
  let gone: (e: TrellisError) => void = () => {};
  const clientGone = new Promise<never>((_, reject) => {
    gone = reject;
  });
  clientGone.catch(() => {});
  const unwatch = await store.join(CLIENTS, 'server', String(process.pid), (members) => {
    if ('client' in members) joined = true;
    else if (joined)
      gone(
        new TrellisError(
          'PEER_LOST',
          'bench --serve: the client went away (its connection to this store closed) before it said exit',
        ),
      );
  });
  const orGone = <T>(p: Promise<T>): Promise<T> => Promise.race([p, clientGone]);
  try {
    for (let id = 1; ; id++) {
      const req = JSON.parse(await orGone(store.get(`bench/req/${id}`))) as {
        op: string;
        name: string;
        size: number;
        imm: number;
        n: number;
      };
      let res: object = {};
      if (req.op === 'register') {
        const h = await engine.registerMemory(req.size, { remote: true });
        regions.set(req.name, h);
        res = { desc: h.desc.toString() };
      } else if (req.op === 'wait')
        await orGone(engine.immCounter(req.imm).wait(req.n, { timeoutMs: 120_000 }));
      else if (req.op === 'sha256') {
        const h = regions.get(req.name)!;
        res = { sha256: sha(h.buffer!) };
        await h.unregister();
        regions.delete(req.name);
      }
      await store.set(`bench/res/${id}`, JSON.stringify(res));
      if (req.op === 'exit') break;
    }
  } finally {
    unwatch();
    await engine.close();
    await new Promise((r) => setTimeout(r, 200)); // let the last answer reach the client
    await store.close();
  }
}

/** One measured size. */
export interface BenchRow {
  size: number;
  writes: number;
  seconds: number;
  /** Gigabytes per second: 10^9 bytes a second (the table's GB/s column), not gigabits. */
  gbps: number;
  verified: boolean;
}

/** The whole run. */
export interface BenchResult {
  provider: string;
  nics: number;
  /** libfabric's version; `null` with `--backend verbs`, which does not use libfabric. */
  libfabric: string | null;
  /** CPUs of this host, e.g. `16 x Intel(R) Xeon(R) Processor`. */
  host: string;
  /** This host's name. */
  hostname: string;
  /** When the run ended (ISO 8601). */
  time: string;
  /** Versions: the Trellis CLI, Node and libfabric (`null` with `--backend verbs`). */
  versions: { trellis: string; node: string; libfabric: string | null };
  rows: BenchRow[];
}

/** The version of this package (`trellis --version`). */
export function cliVersion(): string {
  return (
    JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  ).version;
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

export async function runBench(opts: BenchOptions = {}): Promise<BenchResult> {
  const backend = opts.backend ?? 'efa';
  if (backend === 'verbs' && opts.connect)
    throw new TrellisError(
      'UNSUPPORTED',
      'trellis bench: two-host runs use backend efa (verbs on the model reaches only this host)',
    );
  const provider = opts.provider ?? 'shm';
  const nics = opts.nics ?? 1;
  const sizes = opts.sizes ?? [4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 16 << 20, 64 << 20];
  const total = opts.bytesPerSize ?? 256 << 20;
  const window = opts.window ?? 32;
  const maxWrites = opts.maxWritesPerSize ?? 65536;
  // verbs: the real devices where there are some, the software RC model otherwise.
  const model = backend === 'verbs' && listDevices(false).devices.length === 0;
  const engineOptions = backend === 'verbs' ? { model, nics } : { provider, nics };
  const peer = opts.connect
    ? await remoteTarget(opts.connect, opts.connectTimeoutMs ?? 30_000, opts.log ?? (() => {}))
    : await localTarget(backend, engineOptions);
  const engine: TransferEngine =
    backend === 'verbs' ? await createVerbsEngine(engineOptions) : await createEngine({ provider, nics });
  const rows: BenchRow[] = [];
  try {
    for (const [i, size] of sizes.entries()) {
      const writes = Math.max(1, Math.min(Math.ceil(total / size), maxWrites));
      // Slots cycle through the region; every slot is written at least once, so the whole target
      // region must equal the source afterwards.
      const slots = Math.max(1, Math.min(window, writes, Math.floor((256 << 20) / size)));
      const region = size * slots;
      const name = `bench-${size}`;
      const desc = await peer.register(name, region);
      const dst = MrDesc.parse(desc);
      const src = await engine.registerMemory(region);
      new Prng(size).fill(src.buffer!);
      const imm = 100 + i;
      let next = 0;
      let expected = 0;
      const t0 = performance.now();
      const lane = async () => {
        while (next < writes) {
          const k = next++;
          const slot = k % slots;
          const req = { src, srcOffset: slot * size, length: size, dst, dstOffset: slot * size, imm };
          expected += engine.expectedImms({ kind: 'single', ...req });
          await engine.submitSingleWrite(req);
        }
      };
      await Promise.all(Array.from({ length: Math.min(window, writes) }, lane));
      await peer.wait(imm, expected);
      const seconds = (performance.now() - t0) / 1000;
      // Every slot was written with the same bytes as the source slot: the target equals the source.
      const got = await peer.sha256(name);
      rows.push({
        size,
        writes,
        seconds,
        gbps: (writes * size) / seconds / 1e9,
        verified: got === sha(src.buffer!),
      });
      await src.unregister();
      opts.progress?.(i + 1, sizes.length);
    }
  } finally {
    await engine.close();
    await peer.stop();
  }
  return {
    provider:
      backend === 'verbs'
        ? model
          ? 'verbs (software RC model)'
          : 'verbs'
        : provider === 'tcp'
          ? 'tcp;ofi_rxm'
          : provider,
    nics,
    libfabric: backend === 'verbs' ? null : fabricVersion(),
    host: `${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}`,
    hostname: hostname(),
    time: new Date().toISOString(),
    versions: {
      trellis: cliVersion(),
      node: process.version,
      libfabric: backend === 'verbs' ? null : fabricVersion(),
    },
    rows,
  };
}

/** `64 MiB`, `4 KiB`, or bytes where the size is not a whole number of either. */
const fmtSize = (n: number) =>
  n >= 1 << 20 && n % (1 << 20) === 0
    ? `${n / (1 << 20)} MiB`
    : n >= 1024 && n % 1024 === 0
      ? `${n / 1024} KiB`
      : `${n} B`;

/** A self-contained HTML report: the table and an SVG chart of bandwidth versus size (log scale). */
export function benchHtml(r: BenchResult): string {
  const w = 640;
  const h = 320;
  const pad = 48;
  const maxG = Math.max(...r.rows.map((x) => x.gbps), 0.001);
  const xs = r.rows.map((_, i) => pad + ((w - 2 * pad) * i) / Math.max(1, r.rows.length - 1));
  const ys = r.rows.map((x) => h - pad - ((h - 2 * pad) * x.gbps) / maxG);
  const points = xs.map((x, i) => `${x.toFixed(1)},${ys[i]!.toFixed(1)}`).join(' ');
  const esc = (s: string) => s.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]!);
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>trellis bench</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>
</head><body>
<h1>trellis bench</h1>
<p>${esc(benchHeader(r))}</p>
<svg width="${w}" height="${h}" xmlns="http://www.w3.org/2000/svg">
<line x1="${pad}" y1="${h - pad}" x2="${w - pad}" y2="${h - pad}" stroke="#000"/>
<line x1="${pad}" y1="${pad}" x2="${pad}" y2="${h - pad}" stroke="#000"/>
<text x="${pad}" y="${pad - 8}" font-size="12">${maxG.toFixed(2)} GB/s</text>
<polyline fill="none" stroke="#2a6" stroke-width="2" points="${points}"/>
${r.rows.map((x, i) => `<circle cx="${xs[i]!.toFixed(1)}" cy="${ys[i]!.toFixed(1)}" r="3" fill="#2a6"/><text x="${xs[i]!.toFixed(1)}" y="${h - pad + 16}" font-size="11" text-anchor="middle">${fmtSize(x.size)}</text>`).join('\n')}
</svg>
<table><tr><th>size</th><th>writes</th><th>seconds</th><th>GB/s</th><th>verified</th></tr>
${r.rows.map((x) => `<tr><td>${fmtSize(x.size)}</td><td>${x.writes}</td><td>${x.seconds.toFixed(3)}</td><td>${x.gbps.toFixed(3)}</td><td>${x.verified ? 'yes' : 'NO'}</td></tr>`).join('\n')}
</table></body></html>
`;
}

export { fmtSize };

/** The line above a bench table: provider, NICs, libfabric's version where it is used, host. */
export function benchHeader(r: BenchResult): string {
  return `${r.provider}, ${r.nics} NIC(s), ${r.libfabric === null ? '' : `libfabric ${r.libfabric}, `}${r.host}`;
}
