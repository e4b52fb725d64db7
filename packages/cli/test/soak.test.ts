// A short run of `trellis soak` (the real command runs for minutes): processes writing to each
// other over tcp with aborts, impossible deadlines, forged descriptors and one SIGKILLed process
// replaced mid-run.
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
    expect(r.totals.forgedRefused).toBeGreaterThan(0);
    expect(r.totals.forgedRefused).toBeLessThanOrEqual(r.totals.forged);
    expect(r.totals.forgedAccepted).toBe(0);
    // Every forgery is accounted for: by how it settled, or cut off by its process's kill.
    expect(Object.values(r.totals.forgedOutcomes).reduce((a, b) => a + b, 0)).toBe(r.totals.forged);
    expect(r.totals.forgedOutcomes.REMOTE_ACCESS).toBe(r.totals.forgedRefused);
    for (const code of Object.keys(r.totals.forgedOutcomes))
      expect(['REMOTE_ACCESS', 'PEER_LOST', 'CONNECTION_RESET', 'TIMEOUT', 'cut off by a kill']).toContain(
        code,
      );
    expect(r.processes.map((p) => p.rank).sort()).toEqual([0, 1, 2]);
    expect(r.processes.some((p) => p.generation >= 3)).toBe(true);
  }, 60_000);

  it('without kills no peer is ever lost: a forgery resets only its own connection, scatters included', async () => {
    const r = await run({ seconds: 6, procs: 3, provider: 'tcp', killEveryS: 0, seed: 5 });
    expect(r.kills).toBe(0);
    expect(r.totals.lost).toBe(0);
    expect(r.totals.mismatches).toBe(0);
    // No kills: the logs' counts are the processes' own, and no forgery wrote.
    expect(r.totals.forgedRefused).toBeGreaterThan(0);
    expect(r.totals.forgedAccepted).toBe(0);
    expect(r.totals.forged).toBe(r.processes.reduce((n, p) => n + p.faultsInjected.forged, 0));
    expect(r.totals.forgedRefused).toBe(
      r.processes.reduce((n, p) => n + (p.forgedOutcomes.REMOTE_ACCESS ?? 0), 0),
    );
    for (const p of r.processes)
      for (const code of Object.keys(p.forgedOutcomes))
        expect(['REMOTE_ACCESS', 'CONNECTION_RESET']).toContain(code);
    expect(Object.values(r.totals.forgedOutcomes).reduce((a, b) => a + b, 0)).toBe(r.totals.forged);
    expect(r.totals.forgedOutcomes['cut off by a kill']).toBeUndefined();
    expect(r.totals.outcomes.PEER_LOST).toBeUndefined();
    expect(r.totals.healthySamples).toEqual([]);
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
    expect(r.totals.forgedRefused).toBeGreaterThan(0);
    expect(r.totals.forgedAccepted).toBe(0);
  }, 60_000);
});
