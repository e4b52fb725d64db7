// A weight-sync step through the fault harness (@trellis/core/faults) on backend-efa engines: a
// trainer whose writes are all dropped fails its step, the inference rank times out and keeps
// serving the previous version; healed, the next step lands.
import { createEngine } from '@trellis/backend-efa';
import { withFaults } from '@trellis/core/faults';
import { describe, expect, it } from 'vitest';
import { planWeightSync, range, shard, WeightSyncReceiver, WeightSyncSender, whole } from '../src/index.js';
import { diffWeights, expectedInference, trainerSources } from './helpers.js';

describe('weightsync under injected faults (fault harness, backend-efa tcp)', () => {
  it('dropped writes fail the step everywhere; the served version stays; healed, the retry lands', async () => {
    const model = range(3).map((i) => ({ name: `w${i}`, shape: [32, 32], dtype: 'bf16' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 2, placements: Object.fromEntries(model.map((t) => [t.name, shard('rows', range(2))])) },
      { ranks: 1, tensors: model.map((t) => ({ name: t.name, placement: whole(0) })) },
      { maxOpBytes: 512 },
    );
    const tEng = await Promise.all(
      [1, 2].map(async (seed) => withFaults(await createEngine({ provider: 'tcp' }), { seed })),
    );
    const iEng = await createEngine({ provider: 'tcp' });
    const rx = await WeightSyncReceiver.create({ engine: iEng, plan, rank: 0 });
    const sources = trainerSources(plan);
    const txs = await Promise.all(
      tEng.map((engine, rank) =>
        WeightSyncSender.create({ engine, plan, rank, source: sources[rank]!, targets: [rx.descriptors()] }),
      ),
    );
    tEng[1]!.faults.drop(1);
    const waited = rx.expect({ step: 1, version: 1, timeoutMs: 500 }).then(
      () => 'ok',
      (e: { code: string }) => e.code,
    );
    const results = await Promise.all(
      txs.map((t) =>
        t.sync({ step: 1, version: 1 }).then(
          () => 'ok',
          (e: { code: string; message: string }) => `${e.code}: ${e.message}`,
        ),
      ),
    );
    expect(results[0]).toBe('ok');
    expect(results[1]).toMatch(
      /^PROVIDER_ERROR: weight sync step 1 on trainer rank 1: .*dropped by the fault harness$/,
    );
    expect(await waited).toBe('TIMEOUT');
    expect(rx.version).toBe(0);
    tEng[1]!.faults.heal();
    const again = rx.expect({ step: 2, version: 1, timeoutMs: 10_000 });
    await Promise.all(txs.map((t) => t.sync({ step: 2, version: 1 })));
    await again;
    expect(rx.version).toBe(1);
    expect(diffWeights(plan, 0, rx.weights().bytes, expectedInference(plan)[0]!)).toBe('ok');
    expect(tEng[1]!.faults.injected.dropped).toBeGreaterThan(0);
    for (const t of txs) await t.close();
    await rx.close();
    await Promise.all([...tEng.map((e) => e.close()), iEng.close()]);
  });
});
