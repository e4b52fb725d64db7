// Synthetic inputs and a deterministic expert, for tests, benchmarks and smoke checks: every rank
// can generate every rank's inputs from a seed and so check its own results against the reference.
import { Prng } from '@trellis/core';
import type { DispatchInput, DispatchResult, MoeConfig } from './alltoall.js';

export type Routing = 'random' | 'skewed' | 'empty-rank';

/** Synthetic routings for tests and benchmarks: random (distinct experts per token), skewed, one rank empty. */
/** Every rank's dispatch input for a seed: tokens, scales, ids (distinct per token), weights. */
export function syntheticInputs(cfg: MoeConfig, seed: number, routing: Routing): DispatchInput[] {
  const rng = new Prng(seed);
  const elem = { fp8: 1, bf16: 2, fp32: 4 }[cfg.inDtype];
  const sc = cfg.scales ? cfg.hidden / (cfg.scaleBlock ?? 128) : 0;
  return Array.from({ length: cfg.worldSize }, (_, r) => {
    const n = routing === 'empty-rank' && r === cfg.worldSize - 1 ? 0 : 1 + rng.below(cfg.maxTokensPerRank);
    const tokens = new Uint8Array(n * cfg.hidden * elem);
    for (let i = 0; i < tokens.length; i++) tokens[i] = rng.below(256);
    const scales = sc ? Float32Array.from({ length: n * sc }, () => (1 + rng.below(1000)) / 256) : undefined;
    const topkIds = new Int32Array(n * cfg.topk);
    const topkWeights = new Float32Array(n * cfg.topk);
    for (let t = 0; t < n; t++) {
      const chosen = new Set<number>();
      for (let k = 0; k < cfg.topk; k++) {
        let e: number;
        if (routing === 'skewed')
          e = k === 0 ? 0 : -1; // every token to expert 0
        else {
          do e = rng.below(cfg.numExperts);
          while (chosen.has(e));
          chosen.add(e);
        }
        topkIds[t * cfg.topk + k] = e;
        topkWeights[t * cfg.topk + k] = Math.fround((1 + rng.below(1000)) / 1000);
      }
    }
    return { tokens, ...(scales ? { scales } : {}), topkIds, topkWeights };
  });
}

/** A deterministic "expert": out[h] = (byte h of the row − 128) × (local expert + 1) / 64, in outDtype. */
export function syntheticExpert(cfg: MoeConfig, res: DispatchResult): Uint8Array {
  const elem = { fp8: 1, bf16: 2, fp32: 4 }[cfg.inDtype];
  const ob = cfg.outDtype === 'fp32' ? 4 : 2;
  const rows = res.expertX.length / (cfg.hidden * elem);
  const out = new Uint8Array(rows * cfg.hidden * ob);
  const dv = new DataView(out.buffer);
  let j = 0;
  for (let row = 0; row < rows; row++) {
    while (j + 1 < res.expertOffsets.length && row >= res.expertOffsets[j + 1]!) j++;
    for (let h = 0; h < cfg.hidden; h++) {
      const v = ((res.expertX[row * cfg.hidden * elem + h * elem]! - 128) * (j + 1)) / 64;
      if (ob === 4) dv.setFloat32((row * cfg.hidden + h) * 4, v, true);
      else dv.setUint16((row * cfg.hidden + h) * 2, bf16Bits(v), true);
    }
  }
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function bf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The combine result as fp32 (bf16 output widened). */
export function combineAsF32(cfg: MoeConfig, out: Uint8Array | Float32Array): Float32Array {
  if (out instanceof Float32Array) return out;
  if (cfg.outDtype === 'fp32') return new Float32Array(out.buffer, out.byteOffset, out.length / 4);
  const dv = new DataView(out.buffer, out.byteOffset);
  return Float32Array.from({ length: out.length / 2 }, (_, i) => {
    u32[0] = dv.getUint16(i * 2, true) << 16;
    return f32[0]!;
  });
}
