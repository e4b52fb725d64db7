// `trellis soak`: processes on this machine write to each other for minutes — single writes and
// scatters, some aborted or given an impossible deadline on purpose, every delivered byte checked
// by its receiver — while a random process is killed with SIGKILL now and then and replaced by a
// fresh one (a new engine generation). At the end every living process reports: operations
// submitted and settled (lost = the difference, which must be 0), outcomes by code, bytes written
// and verified, mismatches (must be 0), faults injected, and RSS at its start and end.
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Provider } from '@trellis/backend-efa';
import { Prng } from '@trellis/core';

/** Options of {@link runSoak}. */
export interface SoakOptions {
  /** How long the processes run (default 1 minute). */
  seconds?: number;
  /** Processes (default 4). */
  procs?: number;
  /** libfabric provider (default tcp: it reports a killed peer as an error). */
  provider?: Provider;
  /** Mean seconds between process kills (default 10; 0: none). */
  killEveryS?: number;
  seed?: number;
  /** Largest write (default 64 KiB). */
  slotBytes?: number;
  log?: (line: string) => void;
}

/** What one process reported at the end. */
export interface SoakProcessReport {
  rank: number;
  generation: number;
  submitted: number;
  settled: number;
  outcomes: Record<string, number>;
  bytesWritten: number;
  verified: number;
  verifiedBytes: number;
  mismatches: number;
  sendsFailed: number;
  checksMissing: number;
  faultsInjected: { aborted: number; deadline: number };
  rssStart: number;
  rssEnd: number;
}

/** What {@link runSoak} returns. */
export interface SoakReport {
  seconds: number;
  provider: Provider;
  procs: number;
  kills: number;
  /** Processes that exited without being killed (must be 0). */
  crashes: number;
  processes: SoakProcessReport[];
  totals: {
    submitted: number;
    settled: number;
    /** submitted − settled in the processes alive at the end: must be 0. */
    lost: number;
    outcomes: Record<string, number>;
    bytesWritten: number;
    verifiedBytes: number;
    mismatches: number;
    faultsInjected: number;
  };
}

const workerPath = fileURLToPath(new URL('./soak-worker.js', import.meta.url));

class Proc {
  private readonly it: AsyncIterator<string>;
  exited = false;
  constructor(
    readonly child: ChildProcess,
    readonly rank: number,
    readonly generation: number,
  ) {
    this.it = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    child.once('exit', () => {
      this.exited = true;
    });
  }
  async next<T>(): Promise<T> {
    const r = await this.it.next();
    if (r.done) throw new Error(`soak process ${this.rank} exited (its error is above)`);
    return JSON.parse(r.value as string) as T;
  }
  send(o: object): void {
    if (!this.exited) this.child.stdin!.write(`${JSON.stringify(o)}\n`);
  }
}

/** Run the soak; resolves with the report (see {@link SoakReport}). */
export async function runSoak(opts: SoakOptions = {}): Promise<SoakReport> {
  const seconds = opts.seconds ?? 60;
  const procs = opts.procs ?? 4;
  const provider = opts.provider ?? 'tcp';
  const killEveryS = opts.killEveryS ?? 10;
  const seed = opts.seed ?? 1;
  const slotBytes = opts.slotBytes ?? 64 << 10;
  const log = opts.log ?? (() => {});
  if (!Number.isInteger(procs) || procs < 2 || procs > 64) throw new Error('soak: procs must be 2..64');
  const rng = new Prng(seed);
  let generation = 0;
  const start = async (rank: number) => {
    const p = new Proc(
      spawn(
        process.execPath,
        [workerPath, JSON.stringify({ rank, provider, seed: seed + generation, slotBytes })],
        {
          stdio: ['pipe', 'pipe', 'inherit'],
        },
      ),
      rank,
      generation++,
    );
    const hello = (await p.next<{ hello: { addr: string; desc: string } }>()).hello;
    return { p, hello };
  };
  const live = await Promise.all(Array.from({ length: procs }, (_, r) => start(r)));
  const table = () => live.map((x) => (x ? x.hello : null));
  const broadcast = async (peers: Array<{ addr: string; desc: string } | null>) => {
    for (const x of live) if (x) x.p.send({ peers });
    for (const x of live) if (x) await x.p.next();
  };
  await broadcast(table());
  for (const x of live) {
    x.p.send({ start: true });
    await x.p.next();
  }
  log(`soak: ${procs} processes over ${provider}, ${seconds} s, a kill every ~${killEveryS || '∞'} s`);
  let kills = 0;
  let crashes = 0;
  const until = Date.now() + seconds * 1000;
  while (Date.now() < until) {
    const wait =
      killEveryS > 0
        ? Math.min(until - Date.now(), (0.5 + rng.below(1000) / 1000) * killEveryS * 1000)
        : until - Date.now();
    await new Promise((r) => setTimeout(r, Math.max(0, wait)));
    // A process that died on its own is a crash: replace it too, and count it.
    for (const [r, x] of live.entries())
      if (x.p.exited) {
        crashes++;
        log(`soak: process ${r} exited on its own; replacing it`);
        live[r] = await start(r);
        await broadcast(table());
        live[r]!.p.send({ start: true });
        await live[r]!.p.next();
      }
    if (killEveryS <= 0 || Date.now() >= until) continue;
    const r = rng.below(procs);
    live[r]!.p.child.kill('SIGKILL');
    kills++;
    log(`soak: killed process ${r} (generation ${live[r]!.p.generation})`);
    await new Promise((res) => live[r]!.p.child.once('exit', res));
    const peers = table();
    peers[r] = null;
    for (const x of live) if (x && x.p.rank !== r) x.p.send({ peers });
    for (const x of live) if (x && x.p.rank !== r) await x.p.next();
    live[r] = await start(r);
    await broadcast(table());
    live[r]!.p.send({ start: true });
    await live[r]!.p.next();
  }
  const processes: SoakProcessReport[] = [];
  for (const x of live) x.p.send({ stop: true });
  for (const x of live) {
    const s = (await x.p.next<{ stats: Omit<SoakProcessReport, 'rank' | 'generation'> }>()).stats;
    processes.push({ rank: x.p.rank, generation: x.p.generation, ...s });
  }
  for (const x of live) x.p.send({ exit: true });
  await Promise.all(
    live.map((x) => (x.p.exited ? undefined : new Promise((r) => x.p.child.once('exit', r)))),
  );
  const outcomes: Record<string, number> = {};
  for (const p of processes)
    for (const [k, v] of Object.entries(p.outcomes)) outcomes[k] = (outcomes[k] ?? 0) + v;
  const sum = (f: (p: SoakProcessReport) => number) => processes.reduce((n, p) => n + f(p), 0);
  return {
    seconds,
    provider,
    procs,
    kills,
    crashes,
    processes,
    totals: {
      submitted: sum((p) => p.submitted),
      settled: sum((p) => p.settled),
      lost: sum((p) => p.submitted - p.settled),
      outcomes,
      bytesWritten: sum((p) => p.bytesWritten),
      verifiedBytes: sum((p) => p.verifiedBytes),
      mismatches: sum((p) => p.mismatches),
      faultsInjected: kills + sum((p) => p.faultsInjected.aborted + p.faultsInjected.deadline),
    },
  };
}
