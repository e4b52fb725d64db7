// Model and layout descriptions for weight sync: tensors, dtypes and how a layout shards them
// across ranks. Pure data and checks.
import { TrellisError } from '@trellis/core';

/** Element types a tensor may have. `fp8e4m3` only as the inference-side result of quantisation. */
export type DType = 'fp32' | 'bf16' | 'fp16' | 'fp8e4m3';

export const DTYPE_BYTES: Record<DType, number> = { fp32: 4, bf16: 2, fp16: 2, fp8e4m3: 1 };

/** A named tensor of the model as the trainer holds it. */
export interface TensorSpec {
  name: string;
  shape: readonly number[];
  dtype: Exclude<DType, 'fp8e4m3'>;
}

/**
 * Where a tensor lives on one side. Every tensor is seen as 2-D: `rows = shape[0]`, `cols` = the
 * product of the other dimensions (1 for a vector).
 *
 * - `split: 'rows'` (FSDP's dim-0 shards, column-parallel TP) or `'cols'` (row-parallel TP): the
 *   tensor is cut into `ranks.length` near-equal chunks along that axis; chunk `i` lives on every
 *   rank of `ranks[i]` (one rank, or its data-parallel replicas).
 * - `split: 'none'`: one chunk, the whole tensor, on every rank of `ranks[0]` (an expert on its
 *   expert-parallel rank; a norm replicated on every TP rank).
 */
export interface Placement {
  split: 'rows' | 'cols' | 'none';
  ranks: readonly (readonly number[])[];
}

/** The trainer side: how many ranks, and where each model tensor lives. */
export interface TrainerLayout {
  ranks: number;
  placements: Readonly<Record<string, Placement>>;
}

/** One tensor as the inference side serves it. */
export interface InferenceTensorSpec {
  name: string;
  /**
   * The model tensors it is made of, concatenated along rows (projection fusion: `['q', 'k', 'v']`
   * → `qkv`; `['gate', 'up']` → `gate_up`). Default `[name]`. Parts must have equal `cols`. Under
   * a split placement each part is split the same way and a rank holds its chunks concatenated, as
   * a fused tensor-parallel projection does.
   */
  parts?: readonly string[];
  /** `fp8e4m3`: quantised on the trainer side with one fp32 scale per `quantBlock` elements of a row. Default: the model dtype. */
  dtype?: DType;
  /** Elements per scale block along a row (default 128); `cols` and every cols split must be multiples of it. */
  quantBlock?: number;
  placement: Placement;
}

/** The inference side: how many ranks and the tensors it serves. */
export interface InferenceLayout {
  ranks: number;
  tensors: readonly InferenceTensorSpec[];
}

/** A 2-D box of elements: rows [r0, r1), cols [c0, c1). */
export interface Box {
  r0: number;
  r1: number;
  c0: number;
  c1: number;
}

/** One chunk of a tensor on one rank, stored row-major and contiguous at `offset` in the rank's buffer. */
export interface Piece {
  /** Model tensor (trainer side) or inference tensor index. */
  tensor: number;
  /** Inference side: which part of a fused tensor (0 otherwise). */
  part: number;
  box: Box;
  offset: number;
  /** Bytes per element here. */
  elemBytes: number;
  /** Inference side, quantised tensors: where this piece's fp32 scales start (rows × cols/block). */
  scaleOffset?: number;
}

function bad(msg: string): never {
  throw new TrellisError('INVALID_ARGUMENT', `planWeightSync: ${msg}`);
}

export function dims2(shape: readonly number[]): { rows: number; cols: number } {
  if (!Array.isArray(shape) || shape.length === 0 || shape.some((d) => !Number.isSafeInteger(d) || d < 1))
    bad(`a shape must be a non-empty list of positive integers, got ${JSON.stringify(shape)}`);
  return { rows: shape[0]!, cols: shape.slice(1).reduce((a, b) => a * b, 1) };
}

/** The chunk boxes of a `rows × cols` tensor under `p` (near-equal: the first chunks get one more). */
export function chunkBoxes(p: Placement, rows: number, cols: number): Box[] {
  const n = p.ranks.length;
  const cut = (len: number) =>
    Array.from({ length: n }, (_, i) => {
      const base = Math.floor(len / n);
      const extra = len % n;
      const start = i * base + Math.min(i, extra);
      return [start, start + base + (i < extra ? 1 : 0)] as const;
    });
  if (p.split === 'none') return [{ r0: 0, r1: rows, c0: 0, c1: cols }];
  if (p.split === 'rows') return cut(rows).map(([a, b]) => ({ r0: a, r1: b, c0: 0, c1: cols }));
  return cut(cols).map(([a, b]) => ({ r0: 0, r1: rows, c0: a, c1: b }));
}

export function checkPlacement(where: string, p: Placement, ranks: number, rows: number, cols: number): void {
  if (!p || !['rows', 'cols', 'none'].includes(p.split))
    bad(`${where}: split must be 'rows', 'cols' or 'none'`);
  if (!Array.isArray(p.ranks) || p.ranks.length === 0) bad(`${where}: ranks must list at least one chunk`);
  if (p.split === 'none' && p.ranks.length !== 1)
    bad(`${where}: split 'none' has one chunk (ranks: [[...replicas]])`);
  const len = p.split === 'rows' ? rows : p.split === 'cols' ? cols : 1;
  if (p.ranks.length > len) bad(`${where}: ${p.ranks.length} chunks of a dimension of ${len}`);
  for (const [i, rs] of p.ranks.entries()) {
    if (!Array.isArray(rs) || rs.length === 0) bad(`${where}: chunk ${i} lives on no rank`);
    for (const r of rs)
      if (!Number.isInteger(r) || r < 0 || r >= ranks)
        bad(`${where}: chunk ${i} names rank ${r}; ranks are 0..${ranks - 1}`);
    if (new Set(rs).size !== rs.length) bad(`${where}: chunk ${i} names a rank twice`);
  }
}

/** Split rows (`'rows'`) or cols across `n` ranks, one chunk each: FSDP dim-0 shards, TP splits. */
export function shard(split: 'rows' | 'cols', ranks: readonly number[]): Placement {
  return { split, ranks: ranks.map((r) => [r]) };
}

/** The whole tensor on each of `ranks` (replicated), or on one rank (an expert under EP). */
export function whole(...ranks: number[]): Placement {
  return { split: 'none', ranks: [ranks] };
}

/** `n` consecutive ranks from `start`: `range(4)` → [0, 1, 2, 3]. */
export function range(n: number, start = 0): number[] {
  return Array.from({ length: n }, (_, i) => start + i);
}
