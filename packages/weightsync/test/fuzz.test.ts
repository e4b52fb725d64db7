// parsePlan under 10^5 mutated plans: a plan is re-derived from its layouts, so an edit either
// leaves a plan its layouts derive (whitespace; a consistent rename) or is refused with a
// TrellisError.
import { fuzzText } from '@trellis/core/conformance';
import { describe, expect, it } from 'vitest';
import { checkPlanCoverage, parsePlan, planWeightSync, shard, whole } from '../src/index.js';

describe('parsePlan under 100000 fuzzed plans', () => {
  it('accepts only plans their layouts derive; refuses the rest with a TrellisError', () => {
    const model = [
      { name: 'a', shape: [4, 8], dtype: 'bf16' as const },
      { name: 'b', shape: [6, 8], dtype: 'bf16' as const },
    ];
    const plan = planWeightSync(
      model,
      { ranks: 2, placements: { a: shard('rows', [0, 1]), b: whole(1) } },
      {
        ranks: 2,
        tensors: [
          { name: 'a', placement: shard('cols', [0, 1]), dtype: 'fp8e4m3', quantBlock: 4 },
          { name: 'b', placement: whole(0, 1) },
        ],
      },
      { senderNics: 2, maxOpBytes: 32 },
    );
    const text = JSON.stringify(plan);
    let consistent = 0;
    const t = fuzzText(
      (s) => {
        const p = parsePlan(s);
        // Anything accepted is a plan its own layouts derive (a no-op edit such as whitespace,
        // or a consistent one such as renaming an inference tensor), covering every byte once.
        expect(JSON.stringify(parsePlan(JSON.stringify(p)))).toBe(JSON.stringify(p));
        expect(checkPlanCoverage(p)).toEqual([]);
        consistent++;
      },
      [text, JSON.stringify(plan, null, 1)],
      100_000,
      31,
    );
    expect(t.accepted + t.refused).toBe(100_000);
    expect(consistent).toBe(t.accepted);
    expect(t.accepted).toBeGreaterThan(0);
    expect(Object.keys(t.codes).sort()).toEqual(
      Object.keys(t.codes).includes('UNSUPPORTED')
        ? ['INVALID_ARGUMENT', 'UNSUPPORTED']
        : ['INVALID_ARGUMENT'],
    );
    // An edit that keeps valid JSON and a valid layout is refused all the same.
    const edited = JSON.parse(text);
    edited.ops[0].dstOffset += 64;
    expect(() => parsePlan(JSON.stringify(edited))).toThrow(
      /^parsePlan: the plan is malformed: the schedule does not match its layouts \(edited or corrupted\)/,
    );
    // CPU-bound: about 5 s alone on 2 cores, several times that beside other work (not a speed check).
  }, 120_000);
});
