// The results MoE dispatch and combine must produce, computed directly from every rank's inputs
// in one process (no transport). MoeAllToAll, and later the CUDA kernels, are tested against these.
import type { DispatchInput, DispatchResult, MoeConfig } from './alltoall.js';

const ELEM = { fp8: 1, bf16: 2, fp32: 4 } as const;

/** What `rank` must receive from dispatch: per local expert, rows from source 0, 1, … in (token, k) order. */
export function referenceDispatch(
  cfg: MoeConfig,
  inputs: readonly DispatchInput[],
  rank: number,
): DispatchResult {
  const L = cfg.numExperts / cfg.worldSize;
  const tb = cfg.hidden * ELEM[cfg.inDtype];
  const sc = cfg.scales ? cfg.hidden / (cfg.scaleBlock ?? 128) : 0;
  const rows: Array<{ j: number; s: number; t: number }> = [];
  for (let j = 0; j < L; j++) {
    const e = rank * L + j;
    for (const [s, x] of inputs.entries()) {
      const n = x.topkIds.length / cfg.topk;
      for (let t = 0; t < n; t++)
        for (let k = 0; k < cfg.topk; k++) if (x.topkIds[t * cfg.topk + k] === e) rows.push({ j, s, t });
    }
  }
  const tokensPerExpert = new Int32Array(L);
  for (const r of rows) tokensPerExpert[r.j]!++;
  const expertOffsets = new Int32Array(L);
  for (let j = 1; j < L; j++) expertOffsets[j] = expertOffsets[j - 1]! + tokensPerExpert[j - 1]!;
  const expertX = new Uint8Array(rows.length * tb);
  const expertScales = sc ? new Float32Array(rows.length * sc) : undefined;
  rows.forEach((r, i) => {
    expertX.set(inputs[r.s]!.tokens.subarray(r.t * tb, (r.t + 1) * tb), i * tb);
    if (expertScales) expertScales.set(inputs[r.s]!.scales!.subarray(r.t * sc, (r.t + 1) * sc), i * sc);
  });
  return { tokensPerExpert, expertOffsets, expertX, ...(expertScales ? { expertScales } : {}) };
}

/**
 * What combine must return at `rank`: for each of its tokens, Σ_k w[t,k] × out(t,k) accumulated in
 * fp32 in k order (acc = fp32(acc + fp32(w × v))), where out(t,k) is the expert output row for
 * that token at the expert it went to. `expertOuts[d]` are rank d's outputs in its dispatch order.
 */
export function referenceCombine(
  cfg: MoeConfig,
  inputs: readonly DispatchInput[],
  expertOuts: readonly Uint8Array[],
  rank: number,
): Float32Array {
  const L = cfg.numExperts / cfg.worldSize;
  const ob = ELEM[cfg.outDtype];
  const row = cfg.hidden * ob;
  // Position of (source, token, expert) rows in each receiver's dispatch order.
  const pos = new Map<string, number>();
  for (let d = 0; d < cfg.worldSize; d++) {
    let i = 0;
    for (let j = 0; j < L; j++) {
      const e = d * L + j;
      for (const [s, x] of inputs.entries()) {
        const n = x.topkIds.length / cfg.topk;
        for (let t = 0; t < n; t++)
          for (let k = 0; k < cfg.topk; k++)
            if (x.topkIds[t * cfg.topk + k] === e) pos.set(`${s}/${t}/${k}`, i++);
      }
    }
  }
  const x = inputs[rank]!;
  const n = x.topkIds.length / cfg.topk;
  const acc = new Float32Array(n * cfg.hidden);
  for (let t = 0; t < n; t++)
    for (let k = 0; k < cfg.topk; k++) {
      const e = x.topkIds[t * cfg.topk + k]!;
      if (e < 0) continue;
      const d = Math.floor(e / L);
      const out = expertOuts[d]!;
      const dv = new DataView(out.buffer, out.byteOffset);
      const at = pos.get(`${rank}/${t}/${k}`)! * row;
      const w = x.topkWeights[t * cfg.topk + k]!;
      for (let h = 0; h < cfg.hidden; h++) {
        const v = ob === 4 ? dv.getFloat32(at + h * 4, true) : bf16(dv.getUint16(at + h * 2, true));
        acc[t * cfg.hidden + h] = Math.fround(acc[t * cfg.hidden + h]! + Math.fround(w * v));
      }
    }
  return acc;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function bf16(bits: number): number {
  u32[0] = bits << 16;
  return f32[0]!;
}
