// `pnpm bench` — the SDK against the raw libfabric program (bench/rma_raw.c) making the same posts
// in the same process layout (initiator here, target in a child process), in the same run.
//
//   node dist/bench/run.js [--providers shm,tcp] [--quick] [--json out.json]
import { execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createEngine, type EfaEngine, fabricVersion, type Provider } from '@trellis/backend-efa';
import { MrDesc } from '@trellis/core';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : dflt;
};
const quick = args.includes('--quick');
const providers = opt('--providers', 'shm,tcp').split(',') as Provider[];
const jsonOut = opt('--json', '');
const raw = fileURLToPath(new URL('../../build/Release/rma_raw', import.meta.url));
const targetJs = fileURLToPath(new URL('./target.js', import.meta.url));
const WINDOW = 64;

interface Row {
  provider: string;
  test: string;
  size: number;
  ops: number;
  sdk: number;
  raw: number;
  unit: 'GB/s' | 'Mops/s';
}

/** A target engine in a child process. */
async function startTarget(provider: Provider, size: number) {
  const child = spawn(process.execPath, [targetJs, JSON.stringify({ provider, size, nics: 1 })], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const first = JSON.parse((await lines.next()).value as string) as { desc: string };
  return {
    dst: MrDesc.parse(first.desc),
    async expect(n: number) {
      child.stdin!.write(`${JSON.stringify({ expect: n })}\n`);
      await lines.next();
    },
    async stop() {
      child.stdin!.write(`${JSON.stringify({ exit: true })}\n`);
      await new Promise((r) => child.on('exit', r));
    },
  };
}

/** Keep `window` operations in flight until `ops` completed; seconds from first post to last completion. */
async function windowed(ops: number, window: number, submit: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  const lane = async () => {
    while (next < ops) await submit(next++);
  };
  await Promise.all(Array.from({ length: Math.min(window, ops) }, lane));
  return (performance.now() - t0) / 1000;
}

async function sdkSingle(engine: EfaEngine, provider: Provider, size: number, ops: number): Promise<number> {
  const region = Math.max(size, 64 << 20);
  const t = await startTarget(provider, region);
  const src = await engine.registerMemory(region);
  src.buffer!.fill(7);
  const slots = Math.floor(region / size);
  const arrived = t.expect(ops);
  const s = await windowed(ops, WINDOW, (i) =>
    engine.submitSingleWrite({
      src,
      srcOffset: (i % slots) * size,
      length: size,
      dst: t.dst,
      dstOffset: (i % slots) * size,
      imm: 1,
      shards: 1,
    }),
  );
  await arrived;
  await src.unregister();
  await t.stop();
  return s;
}

async function sdkPaged(
  engine: EfaEngine,
  provider: Provider,
  page: number,
  perCall: number,
  calls: number,
): Promise<number> {
  const t = await startTarget(provider, page * perCall);
  const src = await engine.registerMemory(page * perCall);
  const pages = Uint32Array.from({ length: perCall }, (_, i) => i);
  const arrived = t.expect(perCall * calls);
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: calls }, () =>
      engine.submitPagedWrites({
        src,
        srcPages: pages,
        srcStride: page,
        dst: t.dst,
        dstPages: pages,
        dstStride: page,
        pageBytes: page,
        imm: 1,
      }),
    ),
  );
  const s = (performance.now() - t0) / 1000;
  await arrived;
  await src.unregister();
  await t.stop();
  return s;
}

function rawRun(argv: string[]): { ops: number; bytes: number; seconds: number } {
  return JSON.parse(execFileSync(raw, argv, { encoding: 'utf8' })) as {
    ops: number;
    bytes: number;
    seconds: number;
  };
}

const rows: Row[] = [];
const sizes = quick ? [4096, 1 << 20] : [4096, 65536, 1 << 20, 16 << 20, 64 << 20];
const pageSizes = quick ? [4096] : [1024, 4096, 16384, 65536];
const perCall = quick ? 2000 : 10_000;
const calls = quick ? 2 : 5;
for (const provider of providers) {
  const engine = await createEngine({
    provider,
    nics: 1,
    maxSleepUs: Number(process.env.TRELLIS_BENCH_SLEEP_US ?? 1000),
  });
  const prov = engine.provider;
  for (const size of sizes) {
    const total = quick ? 64 << 20 : 512 << 20;
    const ops = Math.max(64, Math.min(20_000, Math.floor(total / size)));
    const sdk = await sdkSingle(engine, provider, size, ops);
    const r = rawRun([prov, 'single', String(size), String(ops), String(WINDOW)]);
    rows.push({
      provider: prov,
      test: 'single write',
      size,
      ops,
      sdk: (ops * size) / sdk / 1e9,
      raw: r.bytes / r.seconds / 1e9,
      unit: 'GB/s',
    });
    process.stderr.write('.');
  }
  for (const page of pageSizes) {
    const sdk = await sdkPaged(engine, provider, page, perCall, calls);
    const r = rawRun([prov, 'paged', String(page), String(perCall), String(calls), '1024']);
    const ops = perCall * calls;
    rows.push({
      provider: prov,
      test: `paged writes (${perCall} pages/call)`,
      size: page,
      ops,
      sdk: ops / sdk / 1e6,
      raw: r.ops / r.seconds / 1e6,
      unit: 'Mops/s',
    });
    process.stderr.write('.');
  }
  await engine.close();
}
process.stderr.write('\n');

const fmtSize = (n: number) => (n >= 1 << 20 ? `${n / (1 << 20)} MiB` : `${n / 1024} KiB`);
const header = ['provider', 'test', 'size', 'ops', 'SDK', 'raw C', 'SDK/raw'];
const table = rows.map((r) => [
  r.provider,
  r.test,
  fmtSize(r.size),
  String(r.ops),
  `${r.sdk.toFixed(3)} ${r.unit}`,
  `${r.raw.toFixed(3)} ${r.unit}`,
  `${(r.sdk / r.raw).toFixed(2)}x`,
]);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i]!.length)));
const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
console.log(
  `libfabric ${fabricVersion()}, ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, 1 NIC (domain), window ${WINDOW} (single) / 1024 (paged)`,
);
console.log(line(header));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const t of table) console.log(line(t));
if (jsonOut)
  writeFileSync(
    jsonOut,
    JSON.stringify(
      {
        machine: {
          cpus: cpus().length,
          model: cpus()[0]?.model,
          node: process.version,
          libfabric: fabricVersion(),
        },
        rows,
      },
      null,
      2,
    ),
  );
