// A short run of `trellis soak` (the real command runs for minutes): processes writing to each
// other over tcp with aborts, impossible deadlines and one SIGKILLed process replaced mid-run.
import { describe, expect, it } from 'vitest';
// The built package: the soak starts its worker processes from dist/, as the `trellis` command does.
import { runSoak } from '../dist/soak.js';

describe('trellis soak (short)', () => {
  it('every operation settles, every delivered byte checks out, a killed peer is replaced', async () => {
    const r = await runSoak({ seconds: 6, procs: 3, provider: 'tcp', killEveryS: 4, seed: 7 });
    expect([r.kills, r.crashes]).toEqual([1, 0]);
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
    expect(r.processes.map((p) => p.rank).sort()).toEqual([0, 1, 2]);
    expect(r.processes.some((p) => p.generation >= 3)).toBe(true);
  }, 60_000);
});
