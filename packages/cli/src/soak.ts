// `trellis soak`: processes on this machine write to each other for minutes — single writes and
// scatters, some aborted or given an impossible deadline on purpose, some through a forged
// descriptor, every delivered byte checked by its receiver — while a random process is killed with
// SIGKILL now and then and replaced by a fresh one (a new engine generation). At the end every
// living process reports: operations submitted and settled (lost = the difference, which must be
// 0), outcomes by code, bytes written and verified, mismatches (must be 0), faults injected, RSS at
// its start and end, and every error it did not inject itself. An error that no kill or forgery
// explains (the peer was not killed around then, and the pair was not the forger's to its target)
// is an error between healthy peers: there must be none.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Provider } from '@trellis/backend-efa';
import { Prng } from '@trellis/core';
import { atInterrupt } from './exit-hooks.js';

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
  /**
   * Write through forged descriptors: each worker's first operation, then about 3 in 100, which the target
   * must refuse. Default: on for tcp; off for shm, which cannot refuse a bad key (docs/security.md).
   */
  forge?: boolean;
  /**
   * Host writes between these processes over the same-host lane (default true, as users get it);
   * false sends every byte through the provider, whose fault handling is then what is soaked.
   */
  sameHostLane?: boolean;
  log?: (line: string) => void;
}

/** What one process reported at the end. */
export interface SoakProcessReport {
  rank: number;
  /** 0 for the first process of this rank, one more for each replacement (after a kill or a crash). */
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
  faultsInjected: { aborted: number; deadline: number; forged: number };
  /** Outcomes of the forged writes: `REMOTE_ACCESS` unless the target died meanwhile. */
  forgedOutcomes: Record<string, number>;
  /** Errors the process did not inject: [time ms, peer rank (-1 unknown), code, what]. */
  errors: Array<[number, number, string, string]>;
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
  /**
   * One report per rank: the process alive at the end (a killed process cannot report; its
   * operations are not in these rows, its forgeries are in {@link SoakReport.wholeRun}).
   */
  processes: SoakProcessReport[];
  /** Sums over {@link SoakReport.processes}: each field is the sum of the rows' field. */
  totals: {
    submitted: number;
    settled: number;
    /** submitted − settled in the processes alive at the end: must be 0. */
    lost: number;
    outcomes: Record<string, number>;
    bytesWritten: number;
    verifiedBytes: number;
    mismatches: number;
    /** The rows' `faultsInjected`: aborted + deadline + forged. */
    faultsInjected: number;
    /** The rows' forged writes, and how they settled (the rows' `forgedOutcomes` summed). */
    forged: number;
    /** Of `forged`: refused with REMOTE_ACCESS (`forgedOutcomes.REMOTE_ACCESS`). */
    forgedRefused: number;
    /** Of `forged`: completed as if the key were good (`forgedOutcomes.OK`): must be 0. */
    forgedAccepted: number;
    forgedOutcomes: Record<string, number>;
    /** Errors no injected fault explains: between healthy peers (must be 0). */
    healthyErrors: number;
    /** The first few of them, as text. */
    healthySamples: string[];
  };
  /**
   * The whole run, killed processes included (every process logs its forgeries as it goes; a
   * count over the survivors alone can be 0 when the refused forgers were all killed later).
   */
  wholeRun: {
    /** Processes spawned: `procs` + kills + crashes. */
    spawned: number;
    kills: number;
    /** Forged writes, by every process spawned. */
    forged: number;
    /** Refused with REMOTE_ACCESS. A forgery cut off by its process's kill counts as forged, not refused. */
    forgedRefused: number;
    /**
     * Completed as if the key were good: must be 0. (Besides REMOTE_ACCESS a forgery may settle
     * CONNECTION_RESET — another forgery to the same target reset the connection under it — or,
     * around kills, PEER_LOST or TIMEOUT.)
     */
    forgedAccepted: number;
    /**
     * How every forged write settled, by code (`OK` = accepted), plus `cut off by a kill` for those
     * whose process was killed before they settled. Sums to `forged`.
     */
    forgedOutcomes: Record<string, number>;
  };
}

const workerPath = fileURLToPath(new URL('./soak-worker.js', import.meta.url));

class Proc {
  private readonly it: AsyncIterator<string>;
  exited = false;
  exitedAt = 0;
  constructor(
    readonly child: ChildProcess,
    readonly rank: number,
    readonly generation: number,
  ) {
    this.it = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    child.stdin!.on('error', () => {}); // EPIPE: it died first (next() says so)
    child.once('exit', () => {
      this.exited = true;
      this.exitedAt = Date.now();
    });
  }
  async next<T>(): Promise<T> {
    const r = await this.it.next();
    if (r.done) throw new Error(`soak process ${this.rank} exited (its error is above)`);
    const m = JSON.parse(r.value as string) as T & { failed?: string };
    if (m.failed !== undefined) throw new Error(`soak process ${this.rank}: ${m.failed}`);
    return m;
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
  const forge = opts.forge ?? provider !== 'shm';
  const sameHostLane = opts.sameHostLane ?? true;
  // Each process appends its forgeries to a file of its own, so those of killed processes count too.
  if (!Number.isInteger(procs) || procs < 2 || procs > 64) throw new Error('soak: procs must be 2..64');
  const logDir = mkdtempSync(join(tmpdir(), 'trellis-soak-'));
  const unhook = atInterrupt(() => rmSync(logDir, { recursive: true, force: true }));
  // Every worker started, to end on the way out whatever happens (its stdin closes: it closes its
  // engine and exits).
  const children: ChildProcess[] = [];
  try {
    return await soak();
  } finally {
    unhook();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.stdin?.end();
    rmSync(logDir, { recursive: true, force: true });
  }

  async function soak(): Promise<SoakReport> {
    const forgeLogs: Array<{ rank: number; path: string }> = [];
    /** When each kill happened, by rank. */
    const killedAt: Array<[number, number]> = [];
    const log = opts.log ?? (() => {});
    const rng = new Prng(seed);
    // Processes spawned so far (each one's seed and forgery log), and each rank's generation: 0 for
    // the first process of that rank, one more for each replacement.
    let spawns = 0;
    const generations = new Array<number>(procs).fill(-1);
    const start = async (rank: number) => {
      const spawn_ = spawns++;
      const generation = ++generations[rank]!;
      const forgeLog = join(logDir, `forges-${spawn_}`);
      writeFileSync(forgeLog, '');
      forgeLogs.push({ rank, path: forgeLog });
      const p = new Proc(
        spawn(
          process.execPath,
          [
            workerPath,
            JSON.stringify({
              rank,
              provider,
              seed: seed + spawn_,
              slotBytes,
              forge,
              forgeLog,
              sameHostLane,
            }),
          ],
          {
            stdio: ['pipe', 'pipe', 'inherit'],
          },
        ),
        rank,
        generation,
      );
      children.push(p.child);
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
    const t0 = Date.now();
    const until = Date.now() + seconds * 1000;
    // The sleep between kills ends early when a process exits on its own: it is replaced at once
    // (its peers would otherwise write to it, failing, for the rest of the run).
    let wake: (() => void) | undefined;
    const watch = (x: { p: Proc }) => x.p.child.once('exit', () => wake?.());
    for (const x of live) watch(x);
    /** Tell the others rank `r` is gone, start its replacement, give everyone the new table. */
    const replace = async (r: number) => {
      unlinkShared(live[r]!.p.child.pid);
      const peers = table();
      peers[r] = null;
      for (const x of live) if (x && x.p.rank !== r) x.p.send({ peers });
      for (const x of live) if (x && x.p.rank !== r) await x.p.next();
      live[r] = await start(r);
      watch(live[r]!);
      await broadcast(table());
      live[r]!.p.send({ start: true });
      await live[r]!.p.next();
    };
    while (Date.now() < until) {
      const wait =
        killEveryS > 0
          ? Math.min(until - Date.now(), (0.5 + rng.below(1000) / 1000) * killEveryS * 1000)
          : until - Date.now();
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(0, wait));
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
      wake = undefined;
      // A process that died on its own is a crash: replace it too, and count it. Its peers' errors
      // around it are its (as a kill's are); the crash itself fails the run.
      for (const [r, x] of live.entries())
        if (x.p.exited) {
          crashes++;
          killedAt.push([x.p.exitedAt, r]);
          log(`soak: process ${r} exited on its own; replacing it`);
          await replace(r);
        }
      if (killEveryS <= 0 || Date.now() >= until) continue;
      const r = rng.below(procs);
      killedAt.push([Date.now(), r]);
      live[r]!.p.child.kill('SIGKILL');
      kills++;
      log(`soak: killed process ${r} (generation ${live[r]!.p.generation})`);
      await new Promise((res) => (live[r]!.p.exited ? res(undefined) : live[r]!.p.child.once('exit', res)));
      await replace(r);
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
    // An error is explained by a kill of its peer (or of any peer, when it names none) from shortly
    // before to the engine deadline plus a check's wait after; or by a forgery: the forger's own
    // work to its target around the refused write (the refusal resets that one connection), and the
    // target's checks the forger's answers were cut off from.
    const DEADLINE = 3000;
    const CHECK_WAIT = 3000;
    // Forgeries by [forger rank, start, end, target]; one cut short by a kill ends at the deadline.
    const forges: Array<[number, number, number, number]> = [];
    // Forgeries and their refusals by every process, killed ones included (a count over the
    // survivors alone can be 0 when the processes that were refused were killed later).
    let forgedAll = 0;
    let refusedAll = 0;
    let acceptedAll = 0;
    const forgedEnds: Record<string, number> = {};
    for (const { rank, path } of forgeLogs) {
      const ends = new Map<string, number>();
      const lines = readFileSync(path, 'utf8').split('\n').filter(Boolean);
      for (const l of lines) {
        const [a, q, b, code] = l.split(' ');
        if (b) ends.set(`${a} ${q}`, Number(b));
        if (!b) forgedAll++;
        if (code === 'REMOTE_ACCESS') refusedAll++;
        if (code === 'OK') acceptedAll++;
        if (b && code) forgedEnds[code] = (forgedEnds[code] ?? 0) + 1;
      }
      for (const l of lines) {
        const [a, q, b] = l.split(' ');
        if (!b) forges.push([rank, Number(a), ends.get(`${a} ${q}`) ?? Number(a) + DEADLINE, Number(q)]);
      }
    }
    /** A missing check is noticed a check's wait after the answer that was cut off. */
    const late = (code: string) => (code === 'CHECK_MISSING' ? CHECK_WAIT + 500 : 0);
    const explained = (at: number, rank: number, peer: number, code: string) =>
      killedAt.some(
        ([t, r]) => (peer === r || peer < 0) && at >= t - 500 && at <= t + DEADLINE + CHECK_WAIT + 1000,
      ) ||
      forges.some(
        ([f, t0, t1, q]) =>
          at >= t0 - 50 &&
          at <= t1 + 1000 + late(code) &&
          ((f === rank && (q === peer || peer < 0)) ||
            (rank === q && peer === f && code === 'CHECK_MISSING')),
      );
    const healthy: string[] = [];
    for (const p of processes)
      for (const [at, peer, code, what] of p.errors)
        if (!explained(at, p.rank, peer, code))
          healthy.push(
            `process ${p.rank} (gen ${p.generation}): ${what} to/from ${peer} failed ${code} at +${at - t0} ms`,
          );
    const forgedOutcomes: Record<string, number> = {};
    for (const p of processes)
      for (const [k, v] of Object.entries(p.forgedOutcomes)) forgedOutcomes[k] = (forgedOutcomes[k] ?? 0) + v;
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
        faultsInjected: sum(
          (p) => p.faultsInjected.aborted + p.faultsInjected.deadline + p.faultsInjected.forged,
        ),
        forged: sum((p) => p.faultsInjected.forged),
        forgedRefused: forgedOutcomes.REMOTE_ACCESS ?? 0,
        forgedAccepted: forgedOutcomes.OK ?? 0,
        forgedOutcomes,
        healthyErrors: healthy.length,
        healthySamples: healthy.slice(0, 10),
      },
      wholeRun: {
        spawned: spawns,
        kills,
        forged: forgedAll,
        forgedRefused: refusedAll,
        forgedAccepted: acceptedAll,
        forgedOutcomes: withCutOff(forgedEnds, forgedAll),
      },
    };
  }
}

/**
 * Remove the shared-memory objects (`/dev/shm/trellis-<pid>-*`: the regions of its engine) of a
 * worker this soak SIGKILLed: it could not unlink them itself, and another process would sweep them
 * only a minute later.
 */
function unlinkShared(pid: number | undefined): void {
  if (pid === undefined) return;
  let names: string[];
  try {
    names = readdirSync('/dev/shm');
  } catch {
    return;
  }
  for (const n of names) if (n.startsWith(`trellis-${pid}-`)) rmSync(join('/dev/shm', n), { force: true });
}

/** `ends` (how forged writes settled, by code) plus those that never settled, cut off by a kill. */
function withCutOff(ends: Record<string, number>, forged: number): Record<string, number> {
  const cut = forged - Object.values(ends).reduce((a, b) => a + b, 0);
  return cut > 0 ? { ...ends, 'cut off by a kill': cut } : { ...ends };
}
