// `trellis demo` as the README runs it: a cluster of processes over libfabric, every system verified.
import { describe, expect, it } from 'vitest';
// The built package: the demo starts its worker processes from dist/, as the `trellis` command does.
import { runClusterDemo } from '../dist/cluster.js';

describe('trellis demo (a cluster of processes over libfabric)', () => {
  it('runs the transfer sweep, kvstream, weightsync and an MoE round across processes, every byte verified', async () => {
    const lines: string[] = [];
    const rows = await runClusterDemo({ log: (l) => lines.push(l) });
    expect(rows.map((r) => [r.step, r.processes, r.verified])).toEqual([
      ['single write 4 KiB', 2, true],
      ['single write 1 MiB', 2, true],
      ['single write 64 MiB', 2, true],
      ['paged writes 10,000 x 4 KiB (reversed)', 2, true],
      ['kvstream: 4 requests, 8 layers, 2 chunks each', 2, true],
      ['weightsync: 3 trainers → 2 inference ranks', 5, true],
      ['moe: dispatch + combine (native proxy), 3 ranks', 3, true],
    ]);
    expect(lines[0]).toMatch(/^provider: (shm|tcp;ofi_rxm) \(libfabric\)/);
    expect(rows[3]!.bytes).toBe(10_000 * 4096);
  }, 120_000);
});
