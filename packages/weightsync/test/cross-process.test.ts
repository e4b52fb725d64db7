// Weight sync between OS processes on backend-efa: M trainer processes → K inference processes.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LineProcess } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { planWeightSync, range, shard, type WeightSyncPlan, whole } from '../src/index.js';
import { diffWeights, expectedInference, Rng, randomSetup, trainerSources } from './helpers.js';

const fixture = fileURLToPath(new URL('./fixtures/peer.mjs', import.meta.url));

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => {});
  cleanup = [];
});

async function cluster(plan: WeightSyncPlan, provider: 'shm' | 'tcp', stagingBytes: number) {
  const dir = mkdtempSync(join(tmpdir(), 'trellis-ws-'));
  cleanup.push(async () => rmSync(dir, { recursive: true, force: true }));
  const planFile = join(dir, 'plan.json');
  writeFileSync(planFile, JSON.stringify(plan));
  const sources = trainerSources(plan);
  const start = (cfg: object) => {
    const p = new LineProcess(fixture, [JSON.stringify({ provider, planFile, outDir: dir, ...cfg })]);
    cleanup.push(() => p.stop());
    return p;
  };
  const inf = range(plan.inference.ranks).map((rank) => start({ role: 'inference', rank }));
  const tr = range(plan.trainer.ranks).map((rank) => {
    const sourceFile = join(dir, `trainer-${rank}.bin`);
    writeFileSync(sourceFile, sources[rank]!);
    return start({ role: 'trainer', rank, sourceFile });
  });
  const descs = await Promise.all(inf.map(async (p) => (await p.next((m) => 'descs' in m)).descs));
  for (const t of tr) t.send({ targets: descs, stagingBytes });
  await Promise.all(tr.map((t) => t.next((m) => 'ready' in m)));
  const weights = (d: number) => new Uint8Array(readFileSync(join(dir, `inference-${d}.bin`)));
  return { inf, tr, weights, start };
}

describe('weight sync across processes on backend-efa', () => {
  for (const [m, k, provider] of [
    [4, 2, 'shm'],
    [3, 5, 'tcp'],
  ] as const) {
    it(`${m} trainer processes → ${k} inference processes (${provider}), fused and fp8 tensors: every byte verified`, async () => {
      const rng = new Rng(31 * m + k);
      const { model, trainer, inference } = randomSetup(rng, m, k);
      const plan = planWeightSync(model, trainer, inference, { senderNics: 2, maxOpBytes: 256 });
      const { inf, tr, weights } = await cluster(plan, provider, 4096);
      for (const p of inf) p.send({ expect: { step: 1, version: 1, timeoutMs: 30_000 } });
      for (const t of tr) t.send({ sync: { step: 1, version: 1 } });
      for (const t of tr)
        expect(await t.next((x) => x.synced === 1)).toMatchObject({ synced: 1, outcome: 'resolved' });
      for (const p of inf)
        expect(await p.next((x) => x.expected === 1)).toEqual({
          expected: 1,
          outcome: 'resolved',
          version: 1,
        });
      const want = expectedInference(plan);
      for (let d = 0; d < k; d++) expect(diffWeights(plan, d, weights(d), want[d]!)).toBe('ok');
    }, 120_000);
  }

  it('a trainer process killed mid-sync: the step fails on the inference processes, which keep serving version 1 (tcp)', async () => {
    const model = range(8).map((i) => ({ name: `w${i}`, shape: [512, 1024], dtype: 'bf16' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 3, placements: Object.fromEntries(model.map((t) => [t.name, shard('rows', range(3))])) },
      { ranks: 2, tensors: model.map((t) => ({ name: t.name, placement: whole(0, 1) })) },
      { maxOpBytes: 64 << 10 },
    );
    const { inf, tr, weights } = await cluster(plan, 'tcp', 128 << 10);
    for (const p of inf) p.send({ expect: { step: 1, version: 1, timeoutMs: 30_000 } });
    for (const t of tr) t.send({ sync: { step: 1, version: 1 } });
    for (const p of inf) expect((await p.next((x) => x.expected === 1)).outcome).toBe('resolved');
    for (const t of tr) await t.next((x) => x.synced === 1);
    const v1 = expectedInference(plan);
    // Version 2 with new weights; trainer 1 dies after its first bytes land.
    for (const t of tr) t.send({ flip: true });
    for (const p of inf) p.send({ expect: { step: 2, version: 2, timeoutMs: 3000 } });
    for (const t of tr) t.send({ sync: { step: 2, version: 2 } });
    await tr[1]!.next((x) => typeof x.progress === 'number');
    tr[1]!.child.kill('SIGKILL');
    for (const [d, p] of inf.entries()) {
      const r = await p.next((x) => x.expected === 2);
      expect(r.version).toBe(1);
      expect(r.outcome).toMatch(
        new RegExp(
          `^TIMEOUT: weight sync step 2 \\(version 2\\) failed on inference rank ${d}; still serving version 1: `,
        ),
      );
      expect(diffWeights(plan, d, weights(d), v1[d]!)).toBe('ok');
    }
  }, 120_000);

  it('an inference process SIGKILLed and replaced by a new one: trainers replaceTarget, the new rank joins at version 2 (tcp)', async () => {
    const model = range(4).map((i) => ({ name: `w${i}`, shape: [256, 512], dtype: 'bf16' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 2, placements: Object.fromEntries(model.map((t) => [t.name, shard('rows', range(2))])) },
      { ranks: 2, tensors: model.map((t) => ({ name: t.name, placement: shard('cols', range(2)) })) },
      { maxOpBytes: 32 << 10 },
    );
    const { inf, tr, weights, start } = await cluster(plan, 'tcp', 128 << 10);
    for (const p of inf) p.send({ expect: { step: 1, version: 1, timeoutMs: 30_000 } });
    for (const t of tr) t.send({ sync: { step: 1, version: 1 } });
    for (const p of inf) expect((await p.next((x) => x.expected === 1)).outcome).toBe('resolved');
    for (const t of tr) expect((await t.next((x) => x.synced === 1)).outcome).toBe('resolved');
    inf[1]!.child.kill('SIGKILL');
    const fresh = start({ role: 'inference', rank: 1 });
    const descs = (await fresh.next((m) => 'descs' in m)).descs;
    for (const t of tr) {
      t.send({ replace: { rank: 1, descs } });
      expect(await t.next((x) => x.replaced === 1)).toEqual({ replaced: 1, outcome: 'resolved' });
    }
    for (const p of [inf[0]!, fresh]) p.send({ expect: { step: 2, version: 2, timeoutMs: 30_000 } });
    for (const t of tr) t.send({ sync: { step: 2, version: 2 } });
    for (const t of tr) expect((await t.next((x) => x.synced === 2)).outcome).toBe('resolved');
    for (const p of [inf[0]!, fresh])
      expect(await p.next((x) => x.expected === 2)).toMatchObject({ outcome: 'resolved', version: 2 });
    const want = expectedInference(plan);
    for (let d = 0; d < 2; d++) expect(diffWeights(plan, d, weights(d), want[d]!)).toBe('ok');
  }, 120_000);
  it("a hung inference rank (SIGSTOP): sync rejects at its own timeoutMs, not the engine's deadline; the next sync waits for the held writes, then lands every byte (tcp)", async () => {
    const model = range(4).map((i) => ({ name: `w${i}`, shape: [256, 512], dtype: 'bf16' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 1, placements: Object.fromEntries(model.map((t) => [t.name, whole(0)])) },
      { ranks: 2, tensors: model.map((t) => ({ name: t.name, placement: shard('cols', range(2)) })) },
      { maxOpBytes: 32 << 10 },
    );
    // The processes' engines have opTimeoutMs 5000 (fixtures/peer.mjs).
    const { inf, tr, weights } = await cluster(plan, 'tcp', 64 << 10);
    const [t] = tr as [(typeof tr)[0]];
    for (const p of inf) p.send({ expect: { step: 1, version: 1, timeoutMs: 30_000 } });
    t.send({ sync: { step: 1, version: 1 } });
    for (const p of inf) expect((await p.next((x) => x.expected === 1)).outcome).toBe('resolved');
    expect((await t.next((x) => x.synced === 1)).outcome).toBe('resolved');
    inf[1]!.child.kill('SIGSTOP');
    try {
      // Writes to the stopped rank are posted and never complete: the step fails at its 1500 ms,
      // not at the engine's 5000 (it used to wait for the engine to let go of them).
      t.send({ sync: { step: 2, version: 2, timeoutMs: 1500 } });
      const failed = await t.next((x) => x.synced === 2);
      expect(failed.outcome).toMatch(/^TIMEOUT: weight sync step 2 on trainer rank 0: /);
      expect(failed.ms).toBeLessThan(5000);
      // Those writes still read staging until the engine lets go of them: a sync that cannot wait
      // that long fails naming why, before staging anything.
      t.send({ sync: { step: 3, version: 2, timeoutMs: 300 } });
      expect((await t.next((x) => x.synced === 3)).outcome).toBe(
        "TIMEOUT: weight sync step 3 on trainer rank 0: deadline passed waiting for the previous step's writes to settle (a hung inference rank holds them until the engine deadline, opTimeoutMs; they read the staging this step reuses)",
      );
    } finally {
      inf[1]!.child.kill('SIGCONT');
    }
    // The retry waits for them, then writes every byte.
    for (const p of inf) p.send({ expect: { step: 4, version: 2, timeoutMs: 30_000 } });
    t.send({ flip: true });
    t.send({ sync: { step: 4, version: 2, timeoutMs: 30_000 } });
    expect((await t.next((x) => x.synced === 4)).outcome).toBe('resolved');
    for (const p of inf)
      expect(await p.next((x) => x.expected === 4)).toMatchObject({ outcome: 'resolved', version: 2 });
    // bf16 tensors are copied as they are: version 2's bytes are version 1's flipped.
    const v1 = expectedInference(plan);
    const v2 = v1.map((b) => b.map((x) => x ^ 0xff));
    for (let d = 0; d < 2; d++) expect(diffWeights(plan, d, weights(d), v2[d]!)).toBe('ok');

    // The caller's signal with writes held by the stopped rank: rejected at once (it waited for
    // the engine deadline too).
    inf[1]!.child.kill('SIGSTOP');
    try {
      t.send({ flip: true });
      t.send({ sync: { step: 5, version: 3, abortAfterMs: 800 } });
      const aborted = await t.next((x) => x.synced === 5);
      expect(aborted.outcome).toBe('ABORTED: weight sync step 5 on trainer rank 0: aborted by its signal');
      expect(aborted.ms).toBeLessThan(5000);
    } finally {
      inf[1]!.child.kill('SIGCONT');
    }
    for (const p of inf) p.send({ expect: { step: 6, version: 3, timeoutMs: 30_000 } });
    t.send({ sync: { step: 6, version: 3, timeoutMs: 30_000 } });
    expect((await t.next((x) => x.synced === 6)).outcome).toBe('resolved');
    for (const p of inf)
      expect(await p.next((x) => x.expected === 6)).toMatchObject({ outcome: 'resolved', version: 3 });
    for (let d = 0; d < 2; d++) expect(diffWeights(plan, d, weights(d), v1[d]!)).toBe('ok');
  }, 120_000);
});
