// MoE rounds through the fault harness (@trellis/core/faults) on backend-efa engines: every
// operation delayed by a random 0–3 ms, so writes, immediates and barriers reorder across ranks.
import { createEngine } from '@trellis/backend-efa';
import { withFaults } from '@trellis/core/faults';
import { describe, expect, it } from 'vitest';
import { MoeAllToAll } from '../src/index.js';
import { exactRound } from './world.js';

describe('MoeAllToAll under injected delays (fault harness, backend-efa shm)', () => {
  it('3 ranks, two rounds: dispatch and combine still equal the reference', async () => {
    const cfg = {
      worldSize: 3,
      nodeSize: 1,
      numExperts: 6,
      topk: 2,
      hidden: 64,
      maxTokensPerRank: 12,
      inDtype: 'bf16',
      outDtype: 'fp32',
      maxPrivateTokens: 3,
    } as const;
    const engines = await Promise.all(
      [1, 2, 3].map(async (seed) => withFaults(await createEngine({ provider: 'shm' }), { seed })),
    );
    for (const e of engines) e.faults.delay([0, 3]);
    const moes = await Promise.all(engines.map((e, rank) => MoeAllToAll.create(e, { ...cfg, rank })));
    for (const m of moes) m.connect(moes.map((x) => x.descriptor));
    for (let round = 0; round < 2; round++) await exactRound(moes, { ...cfg, rank: 0 }, 70 + round);
    expect(engines.every((e) => e.faults.injected.delayed > 0)).toBe(true);
    for (const m of moes) await m.close();
    await Promise.all(engines.map((e) => e.close()));
  });
});
