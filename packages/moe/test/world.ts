// Helpers of the in-process backend-efa MoE tests: a world of ranks, one engine each (closed after
// each test of the importing file), and one whole round checked against the reference.
import { createEngine } from '@trellis/backend-efa';
import type { TransferEngine } from '@trellis/core';
import { afterEach, expect } from 'vitest';
import {
  combineAsF32,
  MoeAllToAll,
  type MoeConfig,
  referenceCombine,
  referenceDispatch,
  syntheticExpert,
  syntheticInputs,
} from '../src/index.js';

/** The engines of the last {@link world}, one per rank. */
export let engines: TransferEngine[] = [];
afterEach(async () => {
  await Promise.all(engines.map((e) => e.close()));
  engines = [];
});

/** One engine (`opTimeoutMs` its deadline) and one instance per rank of `cfg`, not connected yet. */
export async function ranks(cfg: Omit<MoeConfig, 'rank'>, provider: 'shm' | 'tcp', opTimeoutMs = 10_000) {
  engines = await Promise.all(
    Array.from({ length: cfg.worldSize }, () => createEngine({ provider, nics: 1, opTimeoutMs })),
  );
  return Promise.all(engines.map((e, rank) => MoeAllToAll.create(e, { ...cfg, rank })));
}

/** {@link ranks}, each connected to all. */
export async function world(cfg: Omit<MoeConfig, 'rank'>, provider: 'shm' | 'tcp', opTimeoutMs?: number) {
  const moes = await ranks(cfg, provider, opTimeoutMs);
  for (const m of moes) m.connect(moes.map((x) => x.descriptor));
  return moes;
}

/** One whole round (random routing, inputs from `seed`) on every rank, checked against the reference. */
export async function exactRound(moes: MoeAllToAll<'host'>[], cfg: MoeConfig, seed: number): Promise<void> {
  const ins = syntheticInputs(cfg, seed, 'random');
  const res = await Promise.all(moes.map((m, r) => m.dispatch(ins[r])));
  for (const [r, d] of res.entries()) {
    const ref = referenceDispatch(cfg, ins, r);
    expect(Buffer.compare(d!.expertX, ref.expertX)).toBe(0);
    expect(Array.from(d!.tokensPerExpert)).toEqual(Array.from(ref.tokensPerExpert));
  }
  const outs = res.map((d) => syntheticExpert(cfg, d!));
  const got = await Promise.all(
    moes.map((m, r) => m.combine({ expertOut: outs[r]! }, { accumulate: 'fp32' })),
  );
  for (const [r, g] of got.entries())
    expect(combineAsF32(cfg, g!)).toEqual(referenceCombine(cfg, ins, outs, r));
}
