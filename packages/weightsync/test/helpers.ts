// Test helpers for weightsync: seeded models and layouts, trainer sources and the expected inference
// weights.
import { Prng } from '@trellis/core';
import {
  DTYPE_BYTES,
  f32ToBf16,
  type InferenceLayout,
  type InferenceTensorSpec,
  type Placement,
  quantizeRows,
  type TensorSpec,
  type TrainerLayout,
  type WeightSyncPlan,
} from '../src/index.js';

export class Rng extends Prng {
  int(lo: number, hi: number): number {
    return lo + this.below(hi - lo + 1);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.below(xs.length)]!;
  }
}

/** The value of element (r, c) of model tensor `t` (varied signs and magnitudes). */
export function value(t: number, r: number, c: number): number {
  const h = Math.imul(t * 7919 + r * 104729 + c * 1299709 + 17, 0x9e3779b1) >>> 0;
  const mag = 2 ** ((h % 24) - 12);
  return (h & 1 ? -1 : 1) * mag * (1 + ((h >>> 8) % 1000) / 1000);
}

/** The bytes of element (r, c) of tensor `t` in its dtype. */
export function elemBytes(
  spec: TensorSpec,
  t: number,
  r: number,
  c: number,
  out: Uint8Array,
  at: number,
): void {
  const v = value(t, r, c);
  const dv = new DataView(out.buffer, out.byteOffset);
  if (spec.dtype === 'fp32') dv.setFloat32(at, v, true);
  else dv.setUint16(at, f32ToBf16(v), true); // bf16 (fp16 tensors hold bf16 bits here: only bytes matter)
}

/** Each trainer rank's weights, filled from {@link value}. */
export function trainerSources(plan: WeightSyncPlan): Uint8Array[] {
  return plan.trainerPieces.map((pieces, r) => {
    const buf = new Uint8Array(plan.trainerBytes[r]!);
    for (const p of pieces) {
      const spec = plan.model[p.tensor]!;
      const w = p.box.c1 - p.box.c0;
      for (let row = p.box.r0; row < p.box.r1; row++)
        for (let c = p.box.c0; c < p.box.c1; c++)
          elemBytes(
            spec,
            p.tensor,
            row,
            c,
            buf,
            p.offset + ((row - p.box.r0) * w + (c - p.box.c0)) * p.elemBytes,
          );
    }
    return buf;
  });
}

/** What each inference rank's weights must hold, built from the layouts alone (not from the ops). */
export function expectedInference(plan: WeightSyncPlan): Uint8Array[] {
  return plan.inferencePieces.map((pieces, r) => {
    const buf = new Uint8Array(plan.inferenceBytes[r]!);
    for (const p of pieces) {
      const t = plan.inference.tensors[p.tensor]!;
      const mt = plan.model.findIndex((m) => m.name === t.parts![p.part]);
      const spec = plan.model[mt]!;
      const rows = p.box.r1 - p.box.r0;
      const w = p.box.c1 - p.box.c0;
      if (t.dtype !== 'fp8e4m3') {
        for (let row = 0; row < rows; row++)
          for (let c = 0; c < w; c++)
            elemBytes(spec, mt, p.box.r0 + row, p.box.c0 + c, buf, p.offset + (row * w + c) * p.elemBytes);
        continue;
      }
      // Reference: quantise the piece's rows as a whole (blocks never straddle pieces).
      const src = new Uint16Array(rows * w);
      for (let row = 0; row < rows; row++)
        for (let c = 0; c < w; c++) src[row * w + c] = f32ToBf16(value(mt, p.box.r0 + row, p.box.c0 + c));
      const scales = new Float32Array(rows * (w / t.quantBlock!));
      quantizeRows(src, 0, w, rows, w, t.quantBlock!, buf.subarray(p.offset, p.offset + rows * w), scales);
      new Uint8Array(buf.buffer, buf.byteOffset + p.scaleOffset!, scales.byteLength).set(
        new Uint8Array(scales.buffer),
      );
    }
    return buf;
  });
}

/** Compare only the bytes that belong to weights (padding between pieces is not written). */
export function diffWeights(plan: WeightSyncPlan, rank: number, got: Uint8Array, want: Uint8Array): string {
  let bad = 0;
  let first = '';
  for (const p of plan.inferencePieces[rank]!) {
    const t = plan.inference.tensors[p.tensor]!;
    const rows = p.box.r1 - p.box.r0;
    const w = p.box.c1 - p.box.c0;
    const ranges: Array<[number, number, string]> = [
      [p.offset, rows * w * p.elemBytes, `${t.name}/${t.parts![p.part]}`],
    ];
    if (p.scaleOffset !== undefined)
      ranges.push([p.scaleOffset, rows * (w / t.quantBlock!) * 4, `${t.name} scales`]);
    for (const [at, n, what] of ranges)
      for (let i = at; i < at + n; i++)
        if (got[i] !== want[i]) {
          if (!bad) first = `${what} at byte ${i - at}: ${got[i]} != ${want[i]}`;
          bad++;
        }
  }
  return bad ? `inference rank ${rank}: ${bad} bytes differ, first ${first}` : 'ok';
}

/**
 * A random model and a pair of shardings: FSDP/TP/EP/replicated on the trainer, TP/EP/replicated
 * on inference, some projections fused, some bf16 tensors quantised to fp8 (block 16).
 */
export function randomSetup(rng: Rng, trainers: number, inferences: number) {
  const block = 16;
  const model: TensorSpec[] = [];
  const inf: InferenceTensorSpec[] = [];
  const tp: Record<string, Placement> = {};
  const trainerPlacement = (rows: number, cols: number, quantised: boolean): Placement => {
    const kind = rng.int(0, 3);
    if (kind === 0 || rows < trainers) {
      // EP-style: one rank, or replicated on a few.
      const n = rng.int(1, Math.min(3, trainers));
      const start = rng.int(0, trainers - n);
      return { split: 'none', ranks: [Array.from({ length: n }, (_, i) => start + i)] };
    }
    if (kind === 3 && !quantised && cols >= 2) {
      // TP column split, replicated over 2 data-parallel groups when there are enough ranks.
      const n = Math.min(cols, Math.max(1, Math.floor(trainers / 2)));
      return {
        split: 'cols',
        ranks: Array.from({ length: n }, (_, i) => (trainers >= 2 * n ? [i, i + n] : [i])),
      };
    }
    // FSDP: rows over every rank.
    return { split: 'rows', ranks: Array.from({ length: Math.min(rows, trainers) }, (_, i) => [i]) };
  };
  const inferencePlacement = (rows: number, cols: number, quantised: boolean): Placement => {
    const kind = rng.int(0, 2);
    if (kind === 0 || rows < inferences)
      return {
        split: 'none',
        ranks: [
          rng.int(0, 1) ? [rng.int(0, inferences - 1)] : Array.from({ length: inferences }, (_, i) => i),
        ],
      };
    if (kind === 1 && cols >= inferences && (!quantised || (cols / block) % inferences === 0))
      return { split: 'cols', ranks: Array.from({ length: inferences }, (_, i) => [i]) };
    return { split: 'rows', ranks: Array.from({ length: inferences }, (_, i) => [i]) };
  };
  const n = rng.int(2, 6);
  for (let i = 0; i < n; i++) {
    const fused = rng.int(0, 2) === 0;
    const quant = rng.int(0, 2) === 0;
    const cols = quant ? block * rng.int(1, 4) : rng.int(1, 40);
    const dtype = quant ? 'bf16' : rng.pick(['bf16', 'fp32'] as const);
    const partNames = fused ? [`t${i}.a`, `t${i}.b`, `t${i}.c`].slice(0, rng.int(2, 3)) : [`t${i}`];
    let rows = 0;
    for (const name of partNames) {
      const r = rng.int(1, 30);
      rows += r;
      const shape = cols === 1 && rng.int(0, 1) ? [r] : [r, cols];
      model.push({
        name,
        shape: cols > 1 && rng.int(0, 1) && cols % 2 === 0 ? [r, 2, cols / 2] : shape,
        dtype,
      });
      tp[name] = trainerPlacement(r, cols, quant);
    }
    inf.push({
      name: fused ? `t${i}.fused` : `t${i}`,
      parts: partNames,
      ...(quant ? { dtype: 'fp8e4m3' as const, quantBlock: block } : {}),
      placement: inferencePlacement(Math.min(rows, ...partNames.map(() => rows)), cols, quant),
    });
  }
  const trainer: TrainerLayout = { ranks: trainers, placements: tp };
  const inference: InferenceLayout = { ranks: inferences, tensors: inf };
  return { model, trainer, inference };
}

export { DTYPE_BYTES };
