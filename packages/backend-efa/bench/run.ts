// `pnpm bench` — the SDK against the raw libfabric program (bench/rma_raw.c) making the same posts
// in the same process layout (initiator here, target in a child process), in the same run. The SDK
// column runs with the same-host lane off (sameHostLane: false), so both make the same posts;
// single writes are also timed with the lane on (the default between processes of one host: one
// memcpy into the target's shared region, immediates through the provider) and against
// bench/host_mapped.c (the same memcpy into a shared mapping from C, no provider at all).
// Single writes are also posted through `submitBatch` (batches of window/posts, `--posts` of them in
// flight, default 4: one crossing into the addon per batch, no promise per write) and as prepared
// writes (`prepareWrites(...).post` of window/posts writes each: one operation per post).
// Paged writes are also timed from the raw program's initiator into the SDK's target engine
// (`rma_raw … into`) and from the SDK's initiator into the raw program's target (`rma_raw …
// target`): which side of the pair a paged row's gap is on; single writes the same way with
// `--single into` (the raw initiator's single writes into the SDK's target engine) and
// `--single batch-to-raw` (the SDK's submitBatch column into the raw program's target).
//
// The immediate round trip is timed seven ways (see PingMode): awaiting, in latency mode
// (pollUntil), in synchronous latency loops (poll() + take()), both of these again with the
// engines' `driveInline` on (the JavaScript thread runs the engine's turns while it polls), against
// a peer answering by native reactions (submitOnImm), and with both sides answering by reactions.
//
//   node dist/bench/run.js [--providers shm,tcp] [--tests single,paged,rtt] [--quick] [--trials N]
//                          [--window N] [--posts N] [--sizes B,B] [--pages B,B] [--json out.json]
//                          [--single sdk,batch,prepared,lane,mapped,into,batch-to-raw]   (the single-write columns to run)
//                          [--rtt default,latency,sync,inline,inline-sync,reaction,native]  (the round-trip modes)
//                          [--ops N]   (single writes per trial; default 1 GiB / size, at most 200,000)
//                          [--pin <initiator CPUs>/<target CPUs>]   (e.g. 2,3/4,5: see below)
//
// --pin runs the initiators (this process, and the raw programs it starts) on the first CPU list
// and every target (the SDK's target engine, the raw programs' forked or spawned targets) on the
// second, through taskset (util-linux) and TRELLIS_BENCH_TARGET_CPUS: both pairs get the same CPUs,
// and no run's threads land on a core another run's are busy on by chance.
//
// Engine tuning from the environment (unset: the engine's default): TRELLIS_BENCH_SLEEP_US
// (maxSleepUs), _SPIN_US (idleSpinUs), _DOORBELL_US, _ARRIVAL_US (arrivalBatchUs), _BUSY_POLL_US
// and _DRIVE_INLINE=1 for both sides' engines (TRELLIS_BENCH_TARGET_SLEEP_US and so on: the target
// engine's alone, over the first); _MAX_INFLIGHT and _PEER_WINDOW for the initiator's.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  createEngine,
  type EfaEngine,
  fabricVersion,
  nativeAddonPath,
  type Provider,
} from '@trellis/backend-efa';
import { MrDesc, type MrHandle, type TransferRequest } from '@trellis/core';
import { mainThreadCpu } from './cpu.js';
import { type RawTarget, rawIntoArgs, rawTargetDesc } from './raw-address.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : dflt;
};
const PIN = opt('--pin', '');
if (PIN) {
  const m = /^(\d[\d,-]*)\/(\d[\d,-]*)$/.exec(PIN);
  if (!m) {
    console.error(
      `--pin: <initiator CPUs>/<target CPUs>, each a CPU list as taskset takes it (e.g. 2,3/4-5), got ${JSON.stringify(PIN)}`,
    );
    process.exit(2);
  }
  if (process.env.TRELLIS_BENCH_PINNED !== PIN) {
    // Run again on the initiator's CPUs; the targets pin themselves from the environment.
    const r = spawnSync(
      'taskset',
      ['-c', m[1]!, process.execPath, ...process.execArgv, process.argv[1]!, ...args],
      {
        stdio: 'inherit',
        env: { ...process.env, TRELLIS_BENCH_PINNED: PIN, TRELLIS_BENCH_TARGET_CPUS: m[2] },
      },
    );
    if (r.error) {
      console.error(`--pin needs taskset (util-linux): ${r.error.message}`);
      process.exit(2);
    }
    process.exit(r.status ?? 1);
  }
}
/** A target's command line: pinned to the target CPUs under --pin. */
const targetCmd = (cmd: string, argv: string[]): [string, string[]] => {
  const list = process.env.TRELLIS_BENCH_TARGET_CPUS;
  return list ? ['taskset', ['-c', list, cmd, ...argv]] : [cmd, argv];
};
const quick = args.includes('--quick');
const trials = Number(opt('--trials', quick ? '1' : '3'));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
/** Each trial of an SDK column over the raw run of the same trial (undefined for a column not run). */
const paired = (xs: number[], raw: number[]) => (xs.length ? xs.map((x, i) => x / raw[i]!) : undefined);
const providers = opt('--providers', 'shm,tcp').split(',') as Provider[];
const jsonOut = opt('--json', '');
const tests = new Set(opt('--tests', 'single,paged,rtt').split(','));
for (const t of tests)
  if (!['single', 'paged', 'rtt'].includes(t)) {
    console.error(`--tests: unknown test ${JSON.stringify(t)} (single, paged, rtt)`);
    process.exit(2);
  }
// The raw programs sit beside the addon in use (a build from source or the prebuilt binaries).
const binDir = dirname(nativeAddonPath() ?? fileURLToPath(new URL('../../build/Release/x', import.meta.url)));
const raw = join(binDir, 'rma_raw');
const mapped = join(binDir, 'host_mapped');
const targetJs = fileURLToPath(new URL('./target.js', import.meta.url));
const WINDOW = Number(opt('--window', '64'));
// submitBatch and prepared writes: POSTS calls in flight, window/POSTS writes each.
const POSTS = Number(opt('--posts', '4'));
const OPS = opt('--ops', '');
if (OPS !== '' && !(Number.isInteger(Number(OPS)) && Number(OPS) >= 64)) {
  console.error(`--ops: an integer >= 64 (single writes per trial), got ${OPS}`);
  process.exit(2);
}
if (!Number.isInteger(POSTS) || POSTS < 1 || POSTS > WINDOW) {
  console.error(`--posts: an integer in 1..${WINDOW} (the window), got ${opt('--posts', '4')}`);
  process.exit(2);
}
const SINGLE_COLS = ['sdk', 'batch', 'prepared', 'lane', 'mapped', 'into', 'batch-to-raw'];
const singleCols = new Set(opt('--single', 'sdk,batch,prepared,lane,mapped').split(','));
for (const c of singleCols)
  if (!SINGLE_COLS.includes(c)) {
    console.error(`--single: unknown column ${JSON.stringify(c)} (${SINGLE_COLS.join(', ')})`);
    process.exit(2);
  }

const PING_MODES = ['default', 'latency', 'sync', 'inline', 'inline-sync', 'reaction', 'native'] as const;
const rttModes = new Set(opt('--rtt', PING_MODES.join(',')).split(','));
for (const m of rttModes)
  if (!(PING_MODES as readonly string[]).includes(m)) {
    console.error(`--rtt: unknown mode ${JSON.stringify(m)} (${PING_MODES.join(', ')})`);
    process.exit(2);
  }

interface Row {
  provider: string;
  test: string;
  size: number;
  ops: number;
  sdk: number;
  raw: number;
  unit: 'GB/s' | 'Mops/s';
  /** Single writes: the SDK through submitBatch (`--posts` batches of window/posts in flight). */
  batch?: number;
  /** Single writes: the SDK through prepared writes (`--posts` posts of window/posts writes in flight). */
  prepared?: number;
  /** Single writes: the initiator's JavaScript-thread CPU µs per write, by SDK column (median). */
  cpu?: { sdk?: number; batch?: number; prepared?: number };
  /** Single writes: the SDK with the same-host lane, and the raw shared-mapping memcpy. */
  lane?: number;
  mapped?: number;
  /**
   * The raw program's initiator writing into the SDK's target engine (the same writes): with the
   * raw column, which side of the pair the SDK's gap is on. Paged rows always; single writes with
   * `--single into`.
   */
  rawIntoSdk?: number;
  /**
   * The SDK's initiator writing into the raw program's target: the initiator side alone. Paged rows
   * always (submitPagedWrites); single writes with `--single batch-to-raw` (submitBatch).
   */
  sdkIntoRaw?: number;
  /**
   * Each trial's SDK column over the raw program's run of the same trial (SDK and raw alternate),
   * by column: how far the trials spread, which the medians hide.
   */
  paired?: {
    sdk?: number[];
    batch?: number[];
    prepared?: number[];
    rawIntoSdk?: number[];
    sdkIntoRaw?: number[];
  };
}

/**
 * A target engine in a child process (`spin`: its worker never sleeps, for latency mode;
 * `driveInline`: the engine option).
 */
async function startTarget(provider: Provider, size: number, spin = false, driveInline = false) {
  const child = spawn(
    ...targetCmd(process.execPath, [
      targetJs,
      JSON.stringify({ provider, size, nics: 1, spin, driveInline }),
    ]),
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const first = JSON.parse((await lines.next()).value as string) as { desc: string };
  return {
    dst: MrDesc.parse(first.desc),
    /** Start the answering side; resolves once it is ready (reactions armed), with its end. */
    async pong(n: number, to: string, mode: PingMode): Promise<{ done: Promise<unknown> }> {
      child.stdin!.write(`${JSON.stringify({ pong: n, to, mode })}\n`);
      await lines.next();
      return { done: lines.next() };
    },
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

/** The initiator engine, created per trial and closed before the raw program runs. */
function initiator(
  provider: Provider,
  sameHostLane = false,
  spin = false,
  driveInline = false,
): Promise<EfaEngine> {
  const env = (name: string) => (process.env[name] ? Number(process.env[name]) : undefined);
  return createEngine({
    provider,
    nics: 1,
    sameHostLane,
    maxSleepUs: spin ? 0 : env('TRELLIS_BENCH_SLEEP_US'),
    idleSpinUs: env('TRELLIS_BENCH_SPIN_US'),
    doorbellUs: env('TRELLIS_BENCH_DOORBELL_US'),
    arrivalBatchUs: env('TRELLIS_BENCH_ARRIVAL_US'),
    busyPollUs: env('TRELLIS_BENCH_BUSY_POLL_US'),
    driveInline: driveInline || env('TRELLIS_BENCH_DRIVE_INLINE') === 1,
    maxInflight: env('TRELLIS_BENCH_MAX_INFLIGHT'),
    peerWindow: env('TRELLIS_BENCH_PEER_WINDOW'),
  });
}

/** The initiator's JavaScript-thread CPU µs per write of the last {@link sdkSingle} run. */
let lastCpuPerOp = 0;

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

/**
 * `ops` single writes of `size` bytes, at most `WINDOW` outstanding: through `submitSingleWrite`
 * (`'single'`, or `'lane'` with the same-host lane on), through `submitBatch` (`'batch'`:
 * batches of window/posts, `--posts` in flight — a new batch goes as soon as one settles, so with
 * the default 4 at least 3/4 of the window stays busy), or as prepared writes (`'prepared'`: posts
 * of window/posts writes, the same way). Returns the seconds the writes took.
 */
async function sdkSingle(
  provider: Provider,
  size: number,
  ops: number,
  how: 'single' | 'lane' | 'batch' | 'prepared' = 'single',
  /** Whose target: the SDK's engine in a child process, or the raw program's (`rma_raw … target`). */
  into: 'sdk' | 'raw' = 'sdk',
): Promise<number> {
  const engine = await initiator(provider, how === 'lane');
  const region = Math.max(size, 64 << 20);
  const t =
    into === 'raw'
      ? await rawTarget(providerName(provider), engine.kind, region, ops)
      : await startTarget(provider, region);
  const src = await engine.registerMemory(region);
  src.buffer!.fill(7);
  const slots = Math.floor(region / size);
  const arrived = 'expect' in t ? t.expect(ops) : t.arrived;
  const request = (i: number) => {
    const at = (i % slots) * size;
    return { src, srcOffset: at, length: size, dst: t.dst, dstOffset: at, imm: 1, shards: 1 };
  };
  let s: number;
  const cpu0 = mainThreadCpu();
  if (how === 'single' || how === 'lane')
    s = await windowed(ops, WINDOW, (i) => engine.submitSingleWrite(request(i)));
  else if (how === 'prepared') {
    const per = Math.floor(WINDOW / POSTS);
    const writes = engine.prepareWrites({ src, dst: t.dst, imm: 1 });
    let next = 0;
    const t0 = performance.now();
    const stream = async () => {
      const w = new Float64Array(3 * per);
      while (next < ops) {
        let k = 0;
        for (; k < per && next < ops; k++, next++) {
          const at = (next % slots) * size;
          w[3 * k] = at;
          w[3 * k + 1] = at;
          w[3 * k + 2] = size;
        }
        await writes.post(w, { count: k });
      }
    };
    await Promise.all(Array.from({ length: POSTS }, stream));
    s = (performance.now() - t0) / 1000;
  } else {
    const per = Math.floor(WINDOW / POSTS);
    let next = 0;
    const t0 = performance.now();
    const stream = async () => {
      while (next < ops) {
        const batch: TransferRequest[] = [];
        for (; batch.length < per && next < ops; next++) {
          const at = (next % slots) * size;
          // A literal, as a user's loop would build it (a spread of request() costs more than the call does per write).
          batch.push({
            kind: 'single',
            src,
            srcOffset: at,
            length: size,
            dst: t.dst,
            dstOffset: at,
            imm: 1,
            shards: 1,
          });
        }
        const r = await engine.submitBatch(batch);
        if (r.failed) throw r.errors.find((e) => e !== undefined);
      }
    };
    await Promise.all(Array.from({ length: POSTS }, stream));
    s = (performance.now() - t0) / 1000;
  }
  lastCpuPerOp = ((mainThreadCpu() - cpu0) / ops) * 1e6;
  await arrived;
  await src.unregister();
  await t.stop();
  // Closed before the raw run, so its worker takes no CPU from it.
  await engine.close();
  return s;
}

/** `calls` paged writes of pages 0..perCall-1 onto the same pages of `dst`, at once; their seconds. */
async function pagedCalls(
  engine: EfaEngine,
  src: MrHandle,
  dst: MrDesc,
  page: number,
  perCall: number,
  calls: number,
): Promise<number> {
  const pages = Uint32Array.from({ length: perCall }, (_, i) => i);
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: calls }, () =>
      engine.submitPagedWrites({
        src,
        srcPages: pages,
        srcStride: page,
        dst,
        dstPages: pages,
        dstStride: page,
        pageBytes: page,
        imm: 1,
      }),
    ),
  );
  return (performance.now() - t0) / 1000;
}

async function sdkPaged(provider: Provider, page: number, perCall: number, calls: number): Promise<number> {
  const engine = await initiator(provider);
  const t = await startTarget(provider, page * perCall);
  const src = await engine.registerMemory(page * perCall);
  src.buffer!.fill(7); // as the raw program's memset: real pages, not the shared zero page
  const arrived = t.expect(perCall * calls);
  const s = await pagedCalls(engine, src, t.dst, page, perCall, calls);
  await arrived;
  await src.unregister();
  await t.stop();
  // Closed before the raw run, so its worker takes no CPU from it.
  await engine.close();
  return s;
}

/**
 * The raw program's initiator (`rma_raw … into`) writing the paged test's writes into an SDK target
 * engine: the target side of the SDK alone. Returns the seconds the writes took.
 */
async function rawIntoSdk(
  provider: Provider,
  prov: string,
  page: number,
  perCall: number,
  calls: number,
  window = 1024,
  ops = perCall * calls,
) {
  const t = await startTarget(provider, page * perCall);
  const arrived = t.expect(ops);
  const r = rawRun([
    prov,
    'into',
    ...rawIntoArgs(t.dst),
    String(page),
    String(perCall),
    String(calls),
    String(window),
    String(ops),
  ]);
  await arrived;
  await t.stop();
  return r.seconds;
}

/**
 * The SDK's initiator writing the paged test's writes into the raw program's target (`rma_raw …
 * target`): the initiator side of the SDK alone. Returns the seconds the writes took.
 */
async function sdkIntoRaw(provider: Provider, prov: string, page: number, perCall: number, calls: number) {
  const engine = await initiator(provider);
  const t = await rawTarget(prov, engine.kind, page * perCall, perCall * calls);
  const src = await engine.registerMemory(page * perCall);
  src.buffer!.fill(7);
  const s = await pagedCalls(engine, src, t.dst, page, perCall, calls);
  await t.arrived;
  await src.unregister();
  await engine.close();
  await t.stop();
  return s;
}

/**
 * The raw program's target (`rma_raw <prov> target <region> <want>`) as an engine of `kind` writes
 * to it: its region's `MrDesc`, a promise that resolves once it counted `want` arrivals (and
 * throws if it counted another number), and its stop.
 */
async function rawTarget(prov: string, kind: string, region: number, want: number) {
  const child = spawn(raw, [prov, 'target', String(region), String(want)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const t = JSON.parse((await lines.next()).value as string) as RawTarget;
  return {
    dst: rawTargetDesc(kind, t, region),
    arrived: lines.next().then((l) => {
      const done = JSON.parse(l.value as string) as { arrivals: number };
      if (done.arrivals !== want)
        throw new Error(`rma_raw target counted ${done.arrivals} arrivals, expected ${want}`);
    }),
    async stop() {
      child.stdin!.end();
      await new Promise((r) => child.on('exit', r));
    },
  };
}

function rawRun<T = { ops: number; bytes: number; seconds: number }>(argv: string[]): T {
  return JSON.parse(execFileSync(raw, argv, { encoding: 'utf8' })) as T;
}

/**
 * How the immediate round trip is driven. `default`: both sides await (the event loop delivers
 * completions and arrivals). `latency`: both sides spin in `pollUntil` and both workers never sleep
 * (`maxSleepUs: 0`). `sync`: as `latency`, but both loops are synchronous — `poll()` until
 * `take(1)` succeeds, then `submitImm` without awaiting it (its completion is reaped by later
 * polls). `inline` and `inline-sync`: `latency` and `sync` with both engines' `driveInline` on: each
 * poll runs the engine's turn on the JavaScript thread, and each submitImm within 100 µs of a poll
 * is posted before it returns. `reaction`: the initiator as in `latency`; the target answers by native
 * reactions armed ahead (`submitOnImm`), with no JavaScript per answer. `native`: both sides
 * answer by reactions, so no JavaScript runs per message at all: the engine's floor, timed as the
 * whole exchange over its round trips (a mean: no p99).
 */
type PingMode = (typeof PING_MODES)[number];

/** Immediate round trip: submitImm to the target, which answers with an immediate; median and p99 in µs. */
async function sdkPingPong(
  provider: Provider,
  iters: number,
  mode: PingMode = 'default',
): Promise<{ median: number; p99: number }> {
  const spin = mode !== 'default';
  const inline = mode === 'inline' || mode === 'inline-sync';
  const engine = await initiator(provider, false, spin, inline);
  const t = await startTarget(provider, 4096, spin, inline);
  const warm = 100;
  const { done } = await t.pong(iters + warm, engine.address.toString(), mode);
  const back = engine.immCounter(3);
  const rtt: number[] = [];
  if (mode === 'native') {
    // Arrival k of imm 3 answers with imm 2; the first imm 2 goes from here.
    const base = back.total;
    const rounds = iters + warm;
    const armed: Promise<void>[] = [];
    for (let k = 1; k < rounds; k++)
      armed.push(
        engine.submitOnImm(3, base + k, { kind: 'imm', dst: t.dst.owner, imm: 2, timeoutMs: 600_000 }),
      );
    // The arming commands reach the worker before the exchange starts.
    await new Promise((r) => setTimeout(r, 100));
    const t0 = performance.now();
    armed.push(engine.submitImm({ dst: t.dst.owner, imm: 2 }));
    await engine.pollUntil!(() => back.total >= base + rounds, { timeoutMs: 600_000 });
    const mean = ((performance.now() - t0) * 1000) / rounds;
    await Promise.all(armed);
    back.take(rounds);
    await done;
    await t.stop();
    await engine.close();
    return { median: mean, p99: Number.NaN };
  }
  // sync: each immediate's own completion is reaped by later polls and awaited at the end.
  const unsettled: Promise<void>[] = [];
  for (let i = 0; i < iters + warm; i++) {
    const t0 = performance.now();
    if (mode === 'sync' || mode === 'inline-sync') {
      unsettled.push(engine.submitImm({ dst: t.dst.owner, imm: 2 }));
      while (!back.take(1)) engine.poll!();
    } else if (spin) {
      // Poll until both the answer and this immediate's own completion are in: awaiting the
      // completion after the loop would wait for the event loop to be woken for it.
      let settled = false;
      let failed = false;
      const sent = engine.submitImm({ dst: t.dst.owner, imm: 2 });
      sent.then(
        () => {
          settled = true;
        },
        () => {
          failed = true;
        },
      );
      await engine.pollUntil!(() => failed || (settled && back.take(1)), { timeoutMs: 60_000 });
      await sent;
    } else {
      await engine.submitImm({ dst: t.dst.owner, imm: 2 });
      await back.wait(1);
    }
    if (i >= warm) rtt.push((performance.now() - t0) * 1000);
  }
  await Promise.all(unsettled);
  await done;
  await t.stop();
  // Closed before the raw run, so its worker takes no CPU from it.
  await engine.close();
  rtt.sort((a, b) => a - b);
  return { median: rtt[Math.floor(iters / 2)]!, p99: rtt[Math.floor((iters * 99) / 100)]! };
}

type Lat = { median: number; p99: number };
const latency: Array<{
  provider: string;
  sdk: Lat;
  poll: Lat;
  sync: Lat;
  inline: Lat;
  inlineSync: Lat;
  reaction: Lat;
  native: Lat;
  raw: Lat;
}> = [];

const rows: Row[] = [];
const providerName = (p: Provider) => (p === 'tcp' ? 'tcp;ofi_rxm' : p);
const sizes = opt('--sizes', '')
  ? opt('--sizes', '').split(',').map(Number)
  : quick
    ? [4096, 1 << 20]
    : [4096, 65536, 1 << 20, 16 << 20, 64 << 20];
const pageSizes = opt('--pages', '')
  ? opt('--pages', '').split(',').map(Number)
  : quick
    ? [4096]
    : [1024, 4096, 16384, 65536];
const perCall = quick ? 2000 : 10_000;
const calls = quick ? 2 : 5;
for (const provider of providers) {
  const prov = providerName(provider);
  for (const size of tests.has('single') ? sizes : []) {
    // Long enough to measure the steady state: 20,000 writes of 4 KiB (the default before) took
    // about 25 ms, mostly the start (idle workers waking, code not yet optimised); see
    // docs/benchmarks.md.
    const total = quick ? 64 << 20 : 1 << 30;
    const ops = OPS ? Number(OPS) : Math.max(64, Math.min(200_000, Math.floor(total / size)));
    // SDK and raw alternate, `trials` times each; the table shows the median of each.
    const sdkT: number[] = [];
    const rawT: number[] = [];
    const laneT: number[] = [];
    const mappedT: number[] = [];
    const batchT: number[] = [];
    const preparedT: number[] = [];
    const cpuT = { sdk: [] as number[], batch: [] as number[], prepared: [] as number[] };
    const intoT: number[] = [];
    const fromT: number[] = [];
    const gbps = async (how: 'single' | 'lane' | 'batch' | 'prepared', into: 'sdk' | 'raw' = 'sdk') =>
      (ops * size) / (await sdkSingle(provider, size, ops, how, into)) / 1e9;
    const slots = Math.floor(Math.max(size, 64 << 20) / size);
    for (let t = 0; t < trials; t++) {
      if (singleCols.has('sdk')) {
        sdkT.push(await gbps('single'));
        cpuT.sdk.push(lastCpuPerOp);
      }
      if (singleCols.has('batch')) {
        batchT.push(await gbps('batch'));
        cpuT.batch.push(lastCpuPerOp);
      }
      if (singleCols.has('prepared')) {
        preparedT.push(await gbps('prepared'));
        cpuT.prepared.push(lastCpuPerOp);
      }
      const r = rawRun([prov, 'single', String(size), String(ops), String(WINDOW)]);
      rawT.push(r.bytes / r.seconds / 1e9);
      // The same writes (`slots` of `size` over the 64 MiB region, cycling) from the raw initiator
      // into the SDK's target, and from the SDK's submitBatch into the raw target.
      if (singleCols.has('into'))
        intoT.push((ops * size) / (await rawIntoSdk(provider, prov, size, slots, 1, WINDOW, ops)) / 1e9);
      if (singleCols.has('batch-to-raw')) fromT.push(await gbps('batch', 'raw'));
      if (singleCols.has('lane')) laneT.push(await gbps('lane'));
      if (singleCols.has('mapped')) {
        const m = JSON.parse(
          execFileSync(mapped, [String(size), String(ops), String(WINDOW)], { encoding: 'utf8' }),
        );
        mappedT.push(m.bytes / m.seconds / 1e9);
      }
    }
    const med = (xs: number[]) => (xs.length ? median(xs) : undefined);
    rows.push({
      provider: prov,
      test: 'single write',
      size,
      ops,
      sdk: med(sdkT) ?? Number.NaN,
      raw: median(rawT),
      unit: 'GB/s',
      batch: med(batchT),
      prepared: med(preparedT),
      cpu: { sdk: med(cpuT.sdk), batch: med(cpuT.batch), prepared: med(cpuT.prepared) },
      lane: med(laneT),
      mapped: med(mappedT),
      rawIntoSdk: med(intoT),
      sdkIntoRaw: med(fromT),
      paired: {
        sdk: paired(sdkT, rawT),
        batch: paired(batchT, rawT),
        prepared: paired(preparedT, rawT),
        rawIntoSdk: paired(intoT, rawT),
        sdkIntoRaw: paired(fromT, rawT),
      },
    });
    process.stderr.write('.');
  }
  for (const page of tests.has('paged') ? pageSizes : []) {
    const ops = perCall * calls;
    const sdkT: number[] = [];
    const rawT: number[] = [];
    const intoT: number[] = [];
    const fromT: number[] = [];
    for (let t = 0; t < trials; t++) {
      sdkT.push(ops / (await sdkPaged(provider, page, perCall, calls)) / 1e6);
      const r = rawRun([prov, 'paged', String(page), String(perCall), String(calls), '1024']);
      rawT.push(r.ops / r.seconds / 1e6);
      intoT.push(ops / (await rawIntoSdk(provider, prov, page, perCall, calls)) / 1e6);
      fromT.push(ops / (await sdkIntoRaw(provider, prov, page, perCall, calls)) / 1e6);
    }
    rows.push({
      provider: prov,
      test: `paged writes (${perCall} pages/call)`,
      size: page,
      ops,
      sdk: median(sdkT),
      raw: median(rawT),
      unit: 'Mops/s',
      rawIntoSdk: median(intoT),
      sdkIntoRaw: median(fromT),
      paired: { sdk: paired(sdkT, rawT), rawIntoSdk: paired(intoT, rawT), sdkIntoRaw: paired(fromT, rawT) },
    });
    process.stderr.write('.');
  }
  if (!tests.has('rtt')) continue;
  const iters = quick ? 500 : 5000;
  const skipped: Lat = { median: Number.NaN, p99: Number.NaN };
  const ping = async (mode: PingMode) => {
    if (!rttModes.has(mode)) return skipped;
    const x = await sdkPingPong(provider, iters, mode);
    process.stderr.write(`[${prov} round trip, ${mode}: ${x.median.toFixed(1)} µs]`);
    return x;
  };
  const lat = await ping('default');
  const poll = await ping('latency');
  const sync = await ping('sync');
  const inline = await ping('inline');
  const inlineSync = await ping('inline-sync');
  const reaction = await ping('reaction');
  const native = await ping('native');
  const r = rawRun<{ median_us: number; p99_us: number }>([prov, 'pingpong', String(iters)]);
  latency.push({
    provider: prov,
    sdk: lat,
    poll,
    sync,
    inline,
    inlineSync,
    reaction,
    native,
    raw: { median: r.median_us, p99: r.p99_us },
  });
  process.stderr.write('.');
}
process.stderr.write('\n');

const fmtSize = (n: number) => (n >= 1 << 20 ? `${n / (1 << 20)} MiB` : `${n / 1024} KiB`);
const header = [
  'provider',
  'test',
  'size',
  'ops',
  'SDK',
  'raw C',
  'SDK/raw',
  'SDK, submitBatch',
  'batch/raw',
  'SDK, prepared',
  'prepared/raw',
  'SDK, same-host lane',
  'raw C, mapped memcpy',
];
const table = rows.map((r) => [
  r.provider,
  r.test,
  fmtSize(r.size),
  String(r.ops),
  Number.isNaN(r.sdk) ? '–' : `${r.sdk.toFixed(3)} ${r.unit}`,
  `${r.raw.toFixed(3)} ${r.unit}`,
  Number.isNaN(r.sdk) ? '–' : `${(r.sdk / r.raw).toFixed(2)}x`,
  r.batch === undefined ? '–' : `${r.batch.toFixed(3)} ${r.unit}`,
  r.batch === undefined ? '–' : `${(r.batch / r.raw).toFixed(2)}x`,
  r.prepared === undefined ? '–' : `${r.prepared.toFixed(3)} ${r.unit}`,
  r.prepared === undefined ? '–' : `${(r.prepared / r.raw).toFixed(2)}x`,
  r.lane === undefined ? '–' : `${r.lane.toFixed(3)} ${r.unit}`,
  r.mapped === undefined ? '–' : `${r.mapped.toFixed(3)} ${r.unit}`,
]);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i]!.length)));
const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
console.log(
  `libfabric ${fabricVersion()}, ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, 1 NIC (domain), window ${WINDOW} (single; batch and prepared: ${POSTS} calls of ${Math.floor(WINDOW / POSTS)}) / 1024 (paged), median of ${trials} trial(s)${PIN ? `, pinned ${PIN} (initiators/targets)` : ''}`,
);
console.log(line(header));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const t of table) console.log(line(t));
if (rows.some((r) => r.rawIntoSdk !== undefined || r.sdkIntoRaw !== undefined)) {
  console.log('');
  console.log(
    "Which side of the pair the gap is on: the raw program's initiator into the SDK's target engine, and the SDK's initiator into the raw program's target (median of the same trials; single writes: the SDK's initiator through submitBatch):",
  );
  console.log(
    '| provider | test | size | raw C → raw C | raw C → SDK target | / raw | SDK → raw C target | / raw | SDK → SDK target | / raw |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  const cell = (x: number | undefined, r: Row) =>
    x === undefined || Number.isNaN(x) ? '– | –' : `${x.toFixed(3)} ${r.unit} | ${(x / r.raw).toFixed(2)}x`;
  for (const r of rows)
    if (r.rawIntoSdk !== undefined || r.sdkIntoRaw !== undefined)
      console.log(
        `| ${r.provider} | ${r.test} | ${fmtSize(r.size)} | ${r.raw.toFixed(3)} ${r.unit} | ${cell(r.rawIntoSdk, r)} | ${cell(r.sdkIntoRaw, r)} | ${cell(r.test === 'single write' ? r.batch : r.sdk, r)} |`,
      );
}
if (rows.some((r) => r.cpu)) {
  console.log('');
  console.log(
    "The initiator's JavaScript thread, CPU µs per single write (/proc schedstat; median of the same trials):",
  );
  console.log('| provider | size | SDK | SDK, submitBatch | SDK, prepared |');
  console.log('|---|---|---|---|---|');
  const c = (x: number | undefined) => (x === undefined ? '–' : x.toFixed(2));
  for (const r of rows)
    if (r.cpu)
      console.log(
        `| ${r.provider} | ${fmtSize(r.size)} | ${c(r.cpu.sdk)} | ${c(r.cpu.batch)} | ${c(r.cpu.prepared)} |`,
      );
}
if (trials > 1 && rows.some((r) => r.paired)) {
  console.log('');
  console.log(
    "Each trial's ratio to the raw program's run of the same trial (the two alternate), lowest to highest:",
  );
  console.log(
    '| provider | test | size | SDK | SDK, submitBatch | SDK, prepared | raw C → SDK target | SDK → raw C target |',
  );
  console.log('|---|---|---|---|---|---|---|---|');
  const spread = (xs: number[] | undefined) =>
    xs?.length
      ? [...xs]
          .sort((a, b) => a - b)
          .map((x) => x.toFixed(2))
          .join(' ')
      : '–';
  for (const r of rows)
    if (r.paired)
      console.log(
        `| ${r.provider} | ${r.test} | ${fmtSize(r.size)} | ${spread(r.paired.sdk)} | ${spread(r.paired.batch)} | ${spread(r.paired.prepared)} | ${spread(r.paired.rawIntoSdk)} | ${spread(r.paired.sdkIntoRaw)} |`,
      );
}
if (latency.length) {
  console.log('');
  console.log(
    '| provider | immediate round trip (submitImm → peer answers with an immediate) | median | p99 | median / raw |',
  );
  console.log('|---|---|---|---|---|');
}
const us = (x: number) => `${x.toFixed(1)} µs`;
for (const l of latency) {
  const rows: Array<[string, Lat]> = [
    ['SDK, default (both sides await)', l.sdk],
    ['SDK, latency mode (both sides pollUntil, workers spin)', l.poll],
    ['SDK, latency mode, synchronous loops (poll() + take(), workers spin)', l.sync],
    ['SDK, latency mode, driveInline (both sides pollUntil)', l.inline],
    ['SDK, latency mode, driveInline, synchronous loops', l.inlineSync],
    ['SDK, latency mode, peer answers by native reaction (submitOnImm)', l.reaction],
    ['SDK, both sides answer by native reactions (mean over the exchange)', l.native],
    ['raw C (fi_writemsg + fi_cq_read spin)', l.raw],
  ];
  for (const [what, x] of rows) {
    if (Number.isNaN(x.median)) continue; // a mode --rtt left out
    console.log(
      `| ${l.provider} | ${what} | ${us(x.median)} | ${Number.isNaN(x.p99) ? '–' : us(x.p99)} | ${(x.median / l.raw.median).toFixed(1)}x |`,
    );
  }
}
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
          ...(PIN ? { pin: PIN } : {}),
        },
        rows,
        latency,
      },
      null,
      2,
    ),
  );
