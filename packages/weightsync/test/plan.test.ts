// planWeightSync: schedules for random models and shardings, checked box by box.
import { describe, expect, it } from 'vitest';
import {
  checkPlanCoverage,
  parsePlan,
  planWeightSync,
  range,
  shard,
  type WeightSyncPlan,
  whole,
} from '../src/index.js';
import { quantizeRows } from '../src/quant.js';
import { diffWeights, expectedInference, Rng, randomSetup, trainerSources } from './helpers.js';

/** Run a plan in memory, as the runtime does (stage rows, convert, place), without an engine. */
function simulate(plan: WeightSyncPlan, sources: Uint8Array[]): Uint8Array[] {
  const out = plan.inferenceBytes.map((n) => new Uint8Array(n));
  for (const op of plan.ops) {
    const rows = op.box.r1 - op.box.r0;
    const w = op.box.c1 - op.box.c0;
    const src = sources[op.src]!;
    const dst = out[op.dst]!;
    if (!op.quant) {
      for (let r = 0; r < rows; r++) {
        const s = op.srcOffset + r * op.srcPitch * op.srcElemBytes;
        dst.set(src.subarray(s, s + w * op.srcElemBytes), op.dstOffset + r * op.dstPitch * op.dstElemBytes);
      }
      continue;
    }
    const q = new Uint8Array(rows * w);
    const scales = new Float32Array(rows * (w / op.quant.block));
    quantizeRows(
      new Uint16Array(src.buffer, src.byteOffset + op.srcOffset),
      0,
      op.srcPitch,
      rows,
      w,
      op.quant.block,
      q,
      scales,
    );
    const sb = new Uint8Array(scales.buffer);
    const sw = (w / op.quant.block) * 4;
    for (let r = 0; r < rows; r++) {
      dst.set(q.subarray(r * w, (r + 1) * w), op.dstOffset + r * op.dstPitch);
      dst.set(sb.subarray(r * sw, (r + 1) * sw), op.quant.scaleOffset + r * op.quant.scalePitch * 4);
    }
  }
  return out;
}

describe('planWeightSync', () => {
  it('property: over random models and shardings every destination byte is written exactly once, with the right bytes', () => {
    for (let trial = 0; trial < 60; trial++) {
      const rng = new Rng(trial + 1);
      const m = rng.int(1, 6);
      const k = rng.int(1, 5);
      const { model, trainer, inference } = randomSetup(rng, m, k);
      const plan = planWeightSync(model, trainer, inference, {
        senderNics: rng.int(1, 3),
        maxOpBytes: rng.int(16, 4096),
      });
      expect(checkPlanCoverage(plan)).toEqual([]);
      const got = simulate(plan, trainerSources(plan));
      const want = expectedInference(plan);
      for (let d = 0; d < k; d++) expect(diffWeights(plan, d, got[d]!, want[d]!)).toBe('ok');
      // Round-trips through JSON unchanged.
      expect(parsePlan(JSON.stringify(plan))).toEqual(plan);
    }
  });

  it('balances replicated data across senders and each sender across its NICs', () => {
    // 4 trainers = 2 TP shards x 2 data-parallel replicas; 1 inference rank holds everything.
    const model = Array.from({ length: 8 }, (_, i) => ({
      name: `w${i}`,
      shape: [256, 512],
      dtype: 'bf16' as const,
    }));
    const placements = Object.fromEntries(
      model.map((t) => [
        t.name,
        {
          split: 'cols' as const,
          ranks: [
            [0, 2],
            [1, 3],
          ],
        },
      ]),
    );
    const plan = planWeightSync(
      model,
      { ranks: 4, placements },
      { ranks: 1, tensors: model.map((t) => ({ name: t.name, placement: whole(0) })) },
      { senderNics: 2, maxOpBytes: 32 << 10 },
    );
    expect(checkPlanCoverage(plan)).toEqual([]);
    const total = 8 * 256 * 512 * 2;
    expect(plan.bytesPerSender.reduce((a, b) => a + b)).toBe(total);
    // Every replica pair shares its data evenly; each sender's NICs carry equal halves.
    expect(plan.bytesPerSender).toEqual([total / 4, total / 4, total / 4, total / 4]);
    for (const nics of plan.bytesPerSenderNic) expect(nics).toEqual([total / 8, total / 8]);
  });

  it('fuses q, k, v into qkv under TP: each inference rank holds its q, k and v rows back to back', () => {
    const model = ['q', 'k', 'v'].map((n) => ({ name: n, shape: [8, 4], dtype: 'fp32' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 2, placements: Object.fromEntries(model.map((t) => [t.name, shard('rows', range(2))])) },
      { ranks: 2, tensors: [{ name: 'qkv', parts: ['q', 'k', 'v'], placement: shard('rows', range(2)) }] },
    );
    expect(plan.inferencePieces[1]!.map((p) => [p.part, p.box.r0, p.box.r1, p.offset])).toEqual([
      [0, 4, 8, 0],
      [1, 4, 8, 64],
      [2, 4, 8, 128],
    ]);
    expect(plan.inferenceBytes).toEqual([192, 192]);
  });

  it('refuses layouts it cannot serve, saying why', () => {
    const model = [{ name: 'w', shape: [4, 32], dtype: 'bf16' as const }];
    const err = (f: () => unknown) => {
      try {
        f();
        return 'ok';
      } catch (e) {
        return (e as Error).message;
      }
    };
    const tr = { ranks: 2, placements: { w: shard('rows', range(2)) } };
    expect(err(() => planWeightSync(model, { ranks: 2, placements: {} }, { ranks: 1, tensors: [] }))).toBe(
      "planWeightSync: the trainer layout has no placement for 'w'",
    );
    // A placement for a tensor the model lacks (a misspelt name) was ignored.
    expect(
      err(() =>
        planWeightSync(
          model,
          { ranks: 2, placements: { w: shard('rows', range(2)), W: whole(0) } },
          { ranks: 1, tensors: [{ name: 'w', placement: whole(0) }] },
        ),
      ),
    ).toBe("planWeightSync: the trainer layout places 'W', which is not a model tensor");
    expect(
      err(() =>
        planWeightSync(model, tr, {
          ranks: 1,
          tensors: [{ name: 'x', parts: ['nope'], placement: whole(0) }],
        }),
      ),
    ).toBe("planWeightSync: inference tensor 'x' is made of 'nope', which is not a model tensor");
    expect(
      err(() =>
        planWeightSync(model, tr, {
          ranks: 2,
          tensors: [
            { name: 'w', dtype: 'fp8e4m3', quantBlock: 16, placement: shard('cols', [0, 1, 0].slice(0, 2)) },
          ],
        }),
      ),
    ).toBe('ok');
    expect(
      err(() =>
        planWeightSync(model, tr, {
          ranks: 3,
          tensors: [{ name: 'w', dtype: 'fp8e4m3', quantBlock: 16, placement: shard('cols', range(3)) }],
        }),
      ),
    ).toBe("planWeightSync: inference tensor 'w': a column split at 11 cuts a 16-element scale block");
    expect(
      err(() =>
        planWeightSync(
          model,
          { ranks: 2, placements: { w: shard('cols', range(2)) } },
          { ranks: 1, tensors: [{ name: 'w', dtype: 'fp8e4m3', quantBlock: 32, placement: whole(0) }] },
        ),
      ),
    ).toBe(
      "planWeightSync: 'w' is split by the trainer at column 16, inside a 32-element scale block of 'w'",
    );
    expect(
      err(() =>
        planWeightSync(
          model,
          { ranks: 2, placements: { w: shard('rows', [0, 5]) } },
          { ranks: 1, tensors: [] },
        ),
      ),
    ).toBe("planWeightSync: trainer placement of 'w': chunk 1 names rank 5; ranks are 0..1");
    // Not layouts at all: said, not a TypeError.
    const loose = planWeightSync as unknown as (...a: unknown[]) => unknown;
    expect(err(() => loose(null, tr, { ranks: 1, tensors: [] }))).toBe(
      'planWeightSync: model must be a non-empty list of tensors',
    );
    expect(err(() => loose(model, null, { ranks: 1, tensors: [] }))).toBe(
      'planWeightSync: trainer must be a layout {ranks, placements}',
    );
    expect(err(() => loose(model, { ranks: 2 }, { ranks: 1, tensors: [] }))).toBe(
      'planWeightSync: trainer.placements must be an object (tensor name → placement)',
    );
    expect(err(() => loose(model, tr, { ranks: 1 }))).toBe(
      'planWeightSync: inference must be a layout {ranks, tensors: [...]}',
    );
    // Past what a plan can address or hold: refused before anything is cut (these exhausted the heap).
    const huge = (shape: number[]) => [{ name: 'w', shape, dtype: 'bf16' as const }];
    const one = { ranks: 1, placements: { w: whole(0) } };
    expect(err(() => planWeightSync(huge([2 ** 27, 2 ** 27]), one, { ranks: 1, tensors: [] }))).toBe(
      "planWeightSync: model tensor 'w' (134217728 × 134217728 bf16) is past 2^53 bytes",
    );
    expect(err(() => planWeightSync(huge([2 ** 40, 2 ** 9]), one, { ranks: 1, tensors: [] }))).toBe(
      'planWeightSync: the model cuts into about 268435456 writes of at most maxOpBytes (4194304) per trainer chunk; at most 16777216: raise maxOpBytes',
    );
    expect(err(() => parsePlan('{"format":"trellis-weightsync-plan","version":2}'))).toBe(
      'parsePlan: plan version 2; this @trellis/weightsync reads version 1',
    );
  });
});
