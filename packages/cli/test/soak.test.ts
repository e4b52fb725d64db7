// A short run of `trellis soak` (the real command runs for minutes): processes writing to each
// other over tcp with aborts, impossible deadlines, forged descriptors and one SIGKILLed process
// replaced mid-run.
import { execFileSync } from 'node:child_process';
import { describe, it, expect as vexpect } from 'vitest';
// The built package: the soak starts its worker processes from dist/, as the `trellis` command does.
import { runSoak } from '../dist/soak.js';

// Every assertion names the run's totals: a failure on a loaded machine says what the run saw.
let seen = '';
const expect = (v: unknown) => vexpect(v, seen);
const run = async (o: Parameters<typeof runSoak>[0]) => {
  const r = await runSoak(o);
  seen = JSON.stringify({ kills: r.kills, crashes: r.crashes, totals: r.totals });
  return r;
};

describe('trellis soak (short)', () => {
  it('every operation settles, every delivered byte checks out, a killed peer is replaced', async () => {
    const r = await run({ seconds: 6, procs: 3, provider: 'tcp', killEveryS: 4, seed: 7 });
    // One kill or two, by how long the replacements take to start on this machine.
    expect(r.kills).toBeGreaterThanOrEqual(1);
    expect(r.crashes).toBe(0);
    expect(r.totals.lost).toBe(0);
    expect(r.totals.mismatches).toBe(0);
    expect(r.totals.settled).toBe(r.totals.submitted);
    expect(r.totals.submitted).toBeGreaterThan(0);
    expect(r.totals.verifiedBytes).toBeGreaterThan(0);
    // Every outcome is OK or one of the faults the run injects or causes.
    for (const code of Object.keys(r.totals.outcomes))
      expect([
        'OK',
        'ABORTED',
        'TIMEOUT',
        'PEER_LOST',
        'CONNECTION_RESET',
        'REMOTE_ACCESS',
        'PROVIDER_ERROR',
      ]).toContain(code);
    // Forged descriptors were refused, and nothing but a kill or a forgery caused an error.
    expect(r.totals.forged).toBeGreaterThan(0);
    expect(r.totals.healthySamples).toEqual([]);
    expect(r.totals.healthyErrors).toBe(0);
    for (const p of r.processes)
      for (const code of Object.keys(p.forgedOutcomes))
        expect(['REMOTE_ACCESS', 'PEER_LOST', 'CONNECTION_RESET', 'TIMEOUT']).toContain(code);
    // Counted over every process of the run, the killed ones included (their forgery logs): a
    // count over the survivors alone was 0 once, when the refused forgers were all killed later.
    const w = r.wholeRun;
    expect(w.kills).toBe(r.kills);
    expect(w.spawned).toBe(3 + r.kills + r.crashes);
    expect(w.forgedRefused).toBeGreaterThan(0);
    expect(w.forgedRefused).toBeLessThanOrEqual(w.forged);
    expect(w.forgedAccepted).toBe(0);
    // Every forgery is accounted for: by how it settled, or cut off by its process's kill.
    expect(Object.values(w.forgedOutcomes).reduce((a, b) => a + b, 0)).toBe(w.forged);
    expect(w.forgedOutcomes.REMOTE_ACCESS).toBe(w.forgedRefused);
    for (const code of Object.keys(w.forgedOutcomes))
      expect(['REMOTE_ACCESS', 'PEER_LOST', 'CONNECTION_RESET', 'TIMEOUT', 'cut off by a kill']).toContain(
        code,
      );
    // The survivors' forgeries are among the whole run's.
    expect(r.totals.forged).toBeLessThanOrEqual(w.forged);
    expect(r.totals.forgedRefused).toBeLessThanOrEqual(w.forgedRefused);
    sumsOfRows(r);
    expect(r.processes.map((p) => p.rank).sort()).toEqual([0, 1, 2]);
    // Generations count per rank: the killed ranks' replacements are 1 (or 2), the others 0.
    expect(r.processes.some((p) => p.generation >= 1)).toBe(true);
    expect(r.processes.reduce((n, p) => n + p.generation, 0)).toBe(r.kills + r.crashes);
  }, 60_000);

  it('without kills no peer is ever lost: a forgery resets only its own connection, scatters included', async () => {
    const r = await run({ seconds: 6, procs: 3, provider: 'tcp', killEveryS: 0, seed: 5 });
    expect(r.kills).toBe(0);
    expect(r.totals.lost).toBe(0);
    expect(r.totals.mismatches).toBe(0);
    // No kills: the whole run is the rows, and no forgery wrote.
    sumsOfRows(r);
    expect(r.wholeRun.spawned).toBe(3);
    expect(r.totals.forgedRefused).toBeGreaterThan(0);
    expect(r.totals.forgedAccepted).toBe(0);
    for (const k of ['forged', 'forgedRefused', 'forgedAccepted', 'forgedOutcomes'] as const)
      expect(r.wholeRun[k]).toEqual(r.totals[k]);
    for (const p of r.processes)
      for (const code of Object.keys(p.forgedOutcomes))
        expect(['REMOTE_ACCESS', 'CONNECTION_RESET']).toContain(code);
    expect(r.wholeRun.forgedOutcomes['cut off by a kill']).toBeUndefined();
    expect(r.totals.outcomes.PEER_LOST).toBeUndefined();
    expect(r.totals.healthySamples).toEqual([]);
  }, 60_000);

  it('a process that exits on its own is replaced at once, its peers told, and the run fails as crashed', async () => {
    // Killed from outside the soak (a crash, to it), with no kills of its own: the sleep to the
    // run's end once hid the crash until then, and its peers wrote to the dead rank all along.
    // Once every worker runs (the soak logs its start line then): a death while they start is
    // the soak's own error, not a crash it replaces.
    let started!: () => void;
    const running_ = new Promise<void>((r) => {
      started = r;
    });
    const running = run({
      seconds: 8,
      procs: 3,
      provider: 'tcp',
      killEveryS: 0,
      seed: 11,
      log: (l) => {
        if (l.includes('processes over')) started();
      },
    });
    await running_;
    await new Promise((r) => setTimeout(r, 1000));
    const workers = execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)], {
      encoding: 'utf8',
    })
      .split('\n')
      .filter((l) => l.includes('soak-worker.js'))
      .map((l) => Number(l.trim().split(/\s+/)[0]));
    expect(workers).toHaveLength(3);
    process.kill(workers[1]!, 'SIGKILL');
    const r = await running;
    expect(r.crashes).toBe(1);
    expect(r.kills).toBe(0);
    expect(r.wholeRun.spawned).toBe(4);
    const replaced = r.processes.filter((p) => p.generation === 1);
    expect(replaced).toHaveLength(1);
    // The replacement took part: its peers wrote to it and it checked their bytes.
    expect(replaced[0]!.verifiedBytes).toBeGreaterThan(0);
    expect(r.totals.lost).toBe(0);
    expect(r.totals.mismatches).toBe(0);
    // Its peers' errors around the crash are the crash's, not errors between healthy peers.
    expect(r.totals.healthySamples).toEqual([]);
    expect(r.totals.healthyErrors).toBe(0);
    sumsOfRows(r);
  }, 60_000);

  it('the same with the same-host lane off: every byte and every fault through tcp', async () => {
    const r = await run({
      seconds: 6,
      procs: 3,
      provider: 'tcp',
      killEveryS: 4,
      seed: 3,
      sameHostLane: false,
    });
    expect(r.kills).toBeGreaterThanOrEqual(1);
    expect(r.crashes).toBe(0);
    expect(r.totals.lost).toBe(0);
    expect(r.totals.settled).toBe(r.totals.submitted);
    expect(r.totals.mismatches).toBe(0);
    expect(r.totals.verifiedBytes).toBeGreaterThan(0);
    expect(r.totals.healthySamples).toEqual([]);
    expect(r.wholeRun.forgedRefused).toBeGreaterThan(0);
    expect(r.wholeRun.forgedAccepted).toBe(0);
    sumsOfRows(r);
  }, 60_000);
});

/** Every field of `totals` is the sum of the rows' (a black box once found them unreconcilable). */
function sumsOfRows(r: Awaited<ReturnType<typeof runSoak>>): void {
  const rows = r.processes;
  const sum = (f: (p: (typeof rows)[number]) => number) => rows.reduce((n, p) => n + f(p), 0);
  const merge = (f: (p: (typeof rows)[number]) => Record<string, number>) => {
    const m: Record<string, number> = {};
    for (const p of rows) for (const [k, v] of Object.entries(f(p))) m[k] = (m[k] ?? 0) + v;
    return m;
  };
  const t = r.totals;
  expect(t.submitted).toBe(sum((p) => p.submitted));
  expect(t.settled).toBe(sum((p) => p.settled));
  expect(t.lost).toBe(sum((p) => p.submitted - p.settled));
  expect(t.outcomes).toEqual(merge((p) => p.outcomes));
  expect(t.bytesWritten).toBe(sum((p) => p.bytesWritten));
  expect(t.verifiedBytes).toBe(sum((p) => p.verifiedBytes));
  expect(t.mismatches).toBe(sum((p) => p.mismatches));
  const f = (p: (typeof rows)[number]) => p.faultsInjected;
  expect(t.faultsInjected).toBe(sum((p) => f(p).aborted + f(p).deadline + f(p).forged));
  expect(t.forged).toBe(sum((p) => f(p).forged));
  expect(t.forgedOutcomes).toEqual(merge((p) => p.forgedOutcomes));
  expect(Object.values(t.forgedOutcomes).reduce((a, b) => a + b, 0)).toBe(t.forged);
  expect(t.forgedRefused).toBe(t.forgedOutcomes.REMOTE_ACCESS ?? 0);
  expect(t.forgedAccepted).toBe(t.forgedOutcomes.OK ?? 0);
  // A forgery is an operation of its row: counted in its outcomes too.
  for (const [k, v] of Object.entries(t.forgedOutcomes)) expect(t.outcomes[k]).toBeGreaterThanOrEqual(v);
}
