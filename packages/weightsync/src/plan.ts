// planWeightSync: the static schedule of point-to-point writes from trainer ranks to inference
// ranks for a pair of layouts (boxes of tensors, fused and quantised targets). Pure computation.
import { TrellisError } from '@trellis/core';
import {
  type Box,
  checkPlacement,
  chunkBoxes,
  DTYPE_BYTES,
  type DType,
  dims2,
  type InferenceLayout,
  type InferenceTensorSpec,
  type Piece,
  type TensorSpec,
  type TrainerLayout,
} from './model.js';

/** One point-to-point write of the schedule: a box of a model tensor from a trainer rank to an inference rank. */
export interface PlanOp {
  /** Trainer rank that sends. */
  src: number;
  /** Inference rank that receives. */
  dst: number;
  /** The sender's NIC (lane) for this write. */
  nic: number;
  /** Inference tensor index and part (fused tensors have several). */
  tensor: number;
  part: number;
  /** Elements of the model tensor (the part), rows × cols. */
  box: Box;
  /** Byte offset of the box's first element in the sender's buffer, and elements per row there. */
  srcOffset: number;
  srcPitch: number;
  /** Byte offset of the box's first element in the receiver's buffer, and elements per row there. */
  dstOffset: number;
  dstPitch: number;
  srcElemBytes: number;
  dstElemBytes: number;
  /** Quantised destinations: block size, where the box's first scale goes, scales per row there. */
  quant?: { block: number; scaleOffset: number; scalePitch: number };
  /** Bytes this op puts at the receiver (data and scales). */
  bytes: number;
}

/** A static schedule, computed once for a pair of layouts. Plain data: `JSON.stringify` it. */
export interface WeightSyncPlan {
  format: 'trellis-weightsync-plan';
  version: 1;
  model: TensorSpec[];
  trainer: TrainerLayout;
  inference: {
    ranks: number;
    tensors: Required<Pick<InferenceTensorSpec, 'name' | 'parts' | 'placement'>>[] & InferenceTensorSpec[];
  };
  senderNics: number;
  /** The largest op's source bytes the plan was cut to (with the layouts, what re-derives it). */
  maxOpBytes: number;
  /** Bytes of each trainer rank's buffer (its chunks of every model tensor, in tensor order). */
  trainerBytes: number[];
  /** Bytes of each inference rank's weight buffer (one version). */
  inferenceBytes: number[];
  trainerPieces: Piece[][];
  inferencePieces: Piece[][];
  ops: PlanOp[];
  bytesPerSender: number[];
  bytesPerSenderNic: number[][];
  bytesPerReceiver: number[];
}

/** Options of {@link planWeightSync}. */
export interface PlanOptions {
  /** NICs per trainer rank to spread its writes over. Default 1. */
  senderNics?: number;
  /**
   * Split writes into pieces of at most this many source bytes, in whole rows: a row is never
   * split, so a row larger than this travels as one write of that row. Default 4 MiB.
   */
  maxOpBytes?: number;
}

const ALIGN = 64;
/** The most writes a plan may hold (a lower bound on its ops is checked before they are made). */
const MAX_WRITES = 1 << 24;
const align = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

function bad(msg: string): never {
  throw new TrellisError('INVALID_ARGUMENT', `planWeightSync: ${msg}`);
}

function intersect(a: Box, b: Box): Box | undefined {
  const r0 = Math.max(a.r0, b.r0);
  const r1 = Math.min(a.r1, b.r1);
  const c0 = Math.max(a.c0, b.c0);
  const c1 = Math.min(a.c1, b.c1);
  return r0 < r1 && c0 < c1 ? { r0, r1, c0, c1 } : undefined;
}

/**
 * Compute the schedule: which trainer rank writes which box of which tensor to which inference
 * rank and offset. Every byte of every inference rank's weights is written exactly once (replicas
 * each once); where several trainer ranks hold the same data, the sender with the fewest bytes so
 * far is chosen, and each sender's writes are spread over its NICs by bytes. The plan is plain
 * data, frozen (an edit throws `TypeError`): ship `JSON.stringify(plan)` and `parsePlan` it.
 */
export function planWeightSync(
  model: readonly TensorSpec[],
  trainer: TrainerLayout,
  inference: InferenceLayout,
  opts: PlanOptions = {},
): WeightSyncPlan {
  if (!Array.isArray(model as unknown) || model.length === 0)
    bad('model must be a non-empty list of tensors');
  if (trainer === null || typeof trainer !== 'object') bad('trainer must be a layout {ranks, placements}');
  if (trainer.placements === null || typeof trainer.placements !== 'object')
    bad('trainer.placements must be an object (tensor name → placement)');
  if (inference === null || typeof inference !== 'object' || !Array.isArray(inference.tensors as unknown))
    bad('inference must be a layout {ranks, tensors: [...]}');
  if (opts === null || typeof opts !== 'object') bad('opts must be an object {senderNics?, maxOpBytes?}');
  const senderNics = opts.senderNics ?? 1;
  const maxOpBytes = opts.maxOpBytes ?? 4 << 20;
  if (!Number.isInteger(senderNics) || senderNics < 1 || senderNics > 4)
    bad(`senderNics must be 1..4, got ${senderNics}`);
  if (!(maxOpBytes >= 1)) bad(`maxOpBytes must be >= 1, got ${maxOpBytes}`);
  if (!Number.isInteger(trainer?.ranks) || trainer.ranks < 1) bad('trainer.ranks must be a positive integer');
  if (!Number.isInteger(inference?.ranks) || inference.ranks < 1)
    bad('inference.ranks must be a positive integer');

  const byName = new Map<string, number>();
  const dims = model.map((t, i) => {
    if (typeof t?.name !== 'string' || !t.name) bad(`model[${i}] needs a name`);
    if (byName.has(t.name)) bad(`model tensor '${t.name}' appears twice`);
    if (!['fp32', 'bf16', 'fp16'].includes(t.dtype))
      bad(`model tensor '${t.name}': dtype must be fp32, bf16 or fp16, got ${t.dtype}`);
    byName.set(t.name, i);
    return dims2(t.shape);
  });
  // Sizes the schedule can address, and a number of writes it can hold, before anything is cut
  // (a tensor past 2^53 bytes, or one cut into billions of writes, would exhaust the heap).
  let writes = 0;
  for (const [i, t] of model.entries()) {
    const { rows, cols } = dims[i]!;
    const bytes = rows * cols * DTYPE_BYTES[t.dtype];
    if (!Number.isSafeInteger(bytes))
      bad(`model tensor '${t.name}' (${rows} × ${cols} ${t.dtype}) is past 2^53 bytes`);
    const rowBytes = cols * DTYPE_BYTES[t.dtype];
    writes += rowBytes >= maxOpBytes ? rows : Math.ceil(bytes / maxOpBytes);
  }
  if (writes > MAX_WRITES)
    bad(
      `the model cuts into about ${writes} writes of at most maxOpBytes (${maxOpBytes}) per trainer chunk; at most ${MAX_WRITES}: raise maxOpBytes`,
    );
  for (const [i, t] of model.entries()) {
    const p = trainer.placements[t.name];
    if (!p) bad(`the trainer layout has no placement for '${t.name}'`);
    checkPlacement(`trainer placement of '${t.name}'`, p, trainer.ranks, dims[i]!.rows, dims[i]!.cols);
  }
  // A placement of a tensor the model does not have is a misspelt name (its tensor would be left
  // at the default a caller thinks it overrode): refused.
  for (const name of Object.keys(trainer.placements))
    if (!byName.has(name)) bad(`the trainer layout places '${name}', which is not a model tensor`);

  // Inference tensors, resolved.
  const inf = inference.tensors.map((spec, k) => {
    if (typeof spec?.name !== 'string' || !spec.name) bad(`inference tensor ${k} needs a name`);
    const parts = (spec.parts ?? [spec.name]).map((n) => {
      const i = byName.get(n);
      if (i === undefined)
        bad(`inference tensor '${spec.name}' is made of '${n}', which is not a model tensor`);
      return i;
    });
    const cols = dims[parts[0]!]!.cols;
    for (const p of parts)
      if (dims[p]!.cols !== cols)
        bad(`inference tensor '${spec.name}': its parts must have equal columns to be fused along rows`);
    const srcType = model[parts[0]!]!.dtype;
    for (const p of parts)
      if (model[p]!.dtype !== srcType)
        bad(`inference tensor '${spec.name}': its parts have different dtypes`);
    const dtype: DType = spec.dtype ?? srcType;
    if (dtype !== srcType && !(dtype === 'fp8e4m3' && srcType === 'bf16'))
      bad(
        `inference tensor '${spec.name}': ${srcType} → ${dtype} is not a supported conversion (bf16 → fp8e4m3 is)`,
      );
    const block = spec.quantBlock ?? 128;
    const rows = parts.reduce((n, p) => n + dims[p]!.rows, 0);
    checkPlacement(`inference placement of '${spec.name}'`, spec.placement, inference.ranks, rows, cols);
    if (dtype === 'fp8e4m3') {
      if (!Number.isInteger(block) || block < 1)
        bad(`inference tensor '${spec.name}': quantBlock must be a positive integer`);
      if (cols % block)
        bad(`inference tensor '${spec.name}': ${cols} columns are not a multiple of quantBlock ${block}`);
      if (spec.placement.split === 'cols')
        for (const b of chunkBoxes(spec.placement, rows, cols))
          if (b.c0 % block)
            bad(
              `inference tensor '${spec.name}': a column split at ${b.c0} cuts a ${block}-element scale block`,
            );
      for (const p of parts) {
        const tp = trainer.placements[model[p]!.name]!;
        if (tp.split === 'cols')
          for (const b of chunkBoxes(tp, dims[p]!.rows, cols))
            if (b.c0 % block)
              bad(
                `'${model[p]!.name}' is split by the trainer at column ${b.c0}, inside a ${block}-element scale block of '${spec.name}'`,
              );
      }
    }
    return { spec, parts, dtype, block, cols, quant: dtype === 'fp8e4m3' };
  });

  // Trainer buffers: each rank's chunks of every model tensor, in tensor order.
  const trainerPieces: Piece[][] = Array.from({ length: trainer.ranks }, () => []);
  const trainerBytes = new Array<number>(trainer.ranks).fill(0);
  const trainerChunks = model.map((t, i) =>
    chunkBoxes(trainer.placements[t.name]!, dims[i]!.rows, dims[i]!.cols),
  );
  for (const [i, t] of model.entries()) {
    const p = trainer.placements[t.name]!;
    const eb = DTYPE_BYTES[t.dtype];
    trainerChunks[i]!.forEach((box, j) => {
      for (const r of p.ranks[j]!) {
        trainerPieces[r]!.push({ tensor: i, part: 0, box, offset: trainerBytes[r]!, elemBytes: eb });
        trainerBytes[r] = align(trainerBytes[r]! + (box.r1 - box.r0) * (box.c1 - box.c0) * eb);
      }
    });
  }

  // Inference buffers: per tensor chunk, each part's sub-chunk (data), then its scales.
  const inferencePieces: Piece[][] = Array.from({ length: inference.ranks }, () => []);
  const inferenceBytes = new Array<number>(inference.ranks).fill(0);
  for (const [k, t] of inf.entries()) {
    const pl = t.spec.placement;
    const eb = DTYPE_BYTES[t.dtype];
    const partChunks = t.parts.map((p) => chunkBoxes(pl, dims[p]!.rows, t.cols));
    pl.ranks.forEach((rs, i) => {
      for (const r of rs) {
        const mine: Piece[] = [];
        t.parts.forEach((_, pi) => {
          const box = partChunks[pi]![i]!;
          mine.push({ tensor: k, part: pi, box, offset: inferenceBytes[r]!, elemBytes: eb });
          inferenceBytes[r] = align(inferenceBytes[r]! + (box.r1 - box.r0) * (box.c1 - box.c0) * eb);
        });
        if (t.quant)
          for (const pc of mine) {
            pc.scaleOffset = inferenceBytes[r]!;
            inferenceBytes[r] = align(
              inferenceBytes[r]! + (pc.box.r1 - pc.box.r0) * ((pc.box.c1 - pc.box.c0) / t.block) * 4,
            );
          }
        inferencePieces[r]!.push(...mine);
      }
    });
  }

  // Candidate writes: each inference piece against the trainer chunks it overlaps.
  interface Cand {
    dst: number;
    piece: Piece;
    srcTensor: number;
    chunk: number;
    box: Box;
    srcs: readonly number[];
    bytes: number;
  }
  const cands: Cand[] = [];
  for (const [d, pieces] of inferencePieces.entries()) {
    for (const pc of pieces) {
      const t = inf[pc.tensor]!;
      const mt = t.parts[pc.part]!;
      const tp = trainer.placements[model[mt]!.name]!;
      trainerChunks[mt]!.forEach((sbox, j) => {
        const x = intersect(pc.box, sbox);
        if (!x) return;
        const w = x.c1 - x.c0;
        const srcRowBytes = w * DTYPE_BYTES[model[mt]!.dtype];
        const rowsPerOp = Math.max(1, Math.floor(maxOpBytes / srcRowBytes));
        for (let r = x.r0; r < x.r1; r += rowsPerOp) {
          const box = { r0: r, r1: Math.min(x.r1, r + rowsPerOp), c0: x.c0, c1: x.c1 };
          const rows = box.r1 - box.r0;
          const bytes = rows * w * pc.elemBytes + (t.quant ? rows * (w / t.block) * 4 : 0);
          cands.push({ dst: d, piece: pc, srcTensor: mt, chunk: j, box, srcs: tp.ranks[j]!, bytes });
        }
      });
    }
  }

  // Balance: biggest writes first, each to the least-loaded sender holding the data, then NIC.
  const order = cands.map((_, i) => i).sort((a, b) => cands[b]!.bytes - cands[a]!.bytes || a - b);
  const bytesPerSender = new Array<number>(trainer.ranks).fill(0);
  const bytesPerSenderNic = Array.from({ length: trainer.ranks }, () =>
    new Array<number>(senderNics).fill(0),
  );
  const bytesPerReceiver = new Array<number>(inference.ranks).fill(0);
  const ops: PlanOp[] = new Array(cands.length);
  for (const ci of order) {
    const c = cands[ci]!;
    let src = c.srcs[0]!;
    for (const s of c.srcs) if (bytesPerSender[s]! < bytesPerSender[src]!) src = s;
    const nics = bytesPerSenderNic[src]!;
    let nic = 0;
    for (let n = 1; n < senderNics; n++) if (nics[n]! < nics[nic]!) nic = n;
    bytesPerSender[src] = bytesPerSender[src]! + c.bytes;
    nics[nic] = nics[nic]! + c.bytes;
    bytesPerReceiver[c.dst] = bytesPerReceiver[c.dst]! + c.bytes;
    const sp = trainerPieces[src]!.find(
      (p) => p.tensor === c.srcTensor && p.box === trainerChunks[c.srcTensor]![c.chunk],
    )!;
    const sw = sp.box.c1 - sp.box.c0;
    const d = c.piece;
    const dw = d.box.c1 - d.box.c0;
    const t = inf[d.tensor]!;
    ops[ci] = {
      src,
      dst: c.dst,
      nic,
      tensor: d.tensor,
      part: d.part,
      box: c.box,
      srcOffset: sp.offset + ((c.box.r0 - sp.box.r0) * sw + (c.box.c0 - sp.box.c0)) * sp.elemBytes,
      srcPitch: sw,
      dstOffset: d.offset + ((c.box.r0 - d.box.r0) * dw + (c.box.c0 - d.box.c0)) * d.elemBytes,
      dstPitch: dw,
      srcElemBytes: sp.elemBytes,
      dstElemBytes: d.elemBytes,
      ...(t.quant
        ? {
            quant: {
              block: t.block,
              scaleOffset:
                d.scaleOffset! +
                ((c.box.r0 - d.box.r0) * (dw / t.block) + (c.box.c0 - d.box.c0) / t.block) * 4,
              scalePitch: dw / t.block,
            },
          }
        : {}),
      bytes: c.bytes,
    };
  }

  return sealPlan({
    format: 'trellis-weightsync-plan',
    version: 1,
    model: model.map((t) => ({ name: t.name, shape: [...t.shape], dtype: t.dtype })),
    trainer: { ranks: trainer.ranks, placements: { ...trainer.placements } },
    inference: {
      ranks: inference.ranks,
      tensors: inf.map((t) => ({
        ...t.spec,
        parts: t.parts.map((p) => model[p]!.name),
        dtype: t.dtype,
        ...(t.quant ? { quantBlock: t.block } : {}),
      })),
    },
    senderNics,
    maxOpBytes,
    trainerBytes,
    inferenceBytes,
    trainerPieces,
    inferencePieces,
    ops,
    bytesPerSender,
    bytesPerSenderNic,
    bytesPerReceiver,
  });
}

/** Plans made here (frozen, so unedited since): `checkedPlan` takes them as they are. */
const madeHere = new WeakSet<object>();

function sealPlan(plan: WeightSyncPlan): WeightSyncPlan {
  const freeze = (x: unknown): void => {
    if (x === null || typeof x !== 'object' || Object.isFrozen(x)) return;
    for (const v of Object.values(x)) freeze(v);
    Object.freeze(x);
  };
  freeze(plan);
  madeHere.add(plan);
  return plan;
}

/**
 * `plan` as a runtime may size buffers and write from: one `planWeightSync` or `parsePlan` made
 * (frozen: unedited) as it is; any other object (a copy, or one edited) re-derived from its layouts
 * as `parsePlan` does, and refused with `INVALID_ARGUMENT` naming `where` unless it matches.
 * @internal
 */
export function checkedPlan(where: string, plan: WeightSyncPlan): WeightSyncPlan {
  if (madeHere.has(plan)) return plan;
  try {
    return parsePlan(JSON.stringify(plan));
  } catch (e) {
    const why = e instanceof Error ? e.message.replace(/^parsePlan: /, '') : String(e);
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${where}: plan is not one planWeightSync() or parsePlan() made (${why})`,
    );
  }
}

/** Largest rank count and model size a parsed plan may declare (before anything is sized from them). */
const PARSE_LIMITS = { ranks: 1 << 16, tensors: 1 << 20 };

/**
 * Parse a plan saved with `JSON.stringify`. A plan is a pure function of its layouts, so it is
 * re-derived from them (`planWeightSync`) and must match exactly: a plan edited, truncated or
 * corrupted anywhere is refused with `INVALID_ARGUMENT` before any rank sizes a buffer or writes
 * from it. Refuses text that is not a weightsync plan (`INVALID_ARGUMENT`) and a plan of another
 * format version (`UNSUPPORTED`: it names the version found and the one this package reads).
 */
export function parsePlan(text: string): WeightSyncPlan {
  if (typeof text !== 'string') throw new TrellisError('INVALID_ARGUMENT', 'parsePlan: expected a string');
  let p: WeightSyncPlan;
  try {
    p = JSON.parse(text) as WeightSyncPlan;
  } catch (e) {
    throw new TrellisError('INVALID_ARGUMENT', `parsePlan: not JSON (${(e as Error).message})`);
  }
  if (typeof p !== 'object' || p === null || p.format !== 'trellis-weightsync-plan')
    throw new TrellisError('INVALID_ARGUMENT', 'parsePlan: not a weightsync plan');
  if (p.version !== 1)
    throw new TrellisError(
      'UNSUPPORTED',
      `parsePlan: plan version ${String(p.version)}; this @trellis/weightsync reads version 1`,
    );
  const malformed = (why: string) =>
    new TrellisError(
      'INVALID_ARGUMENT',
      `parsePlan: the plan is malformed: ${why}; re-plan with planWeightSync`,
    );
  const ranks = (x: unknown) =>
    Number.isInteger(x) && (x as number) >= 1 && (x as number) <= PARSE_LIMITS.ranks;
  if (!Array.isArray(p.model) || p.model.length > PARSE_LIMITS.tensors)
    throw malformed('model must be a list of tensors');
  if (typeof p.trainer !== 'object' || p.trainer === null || !ranks(p.trainer.ranks))
    throw malformed(`trainer.ranks must be 1..${PARSE_LIMITS.ranks}`);
  if (typeof p.trainer.placements !== 'object' || p.trainer.placements === null)
    throw malformed('trainer.placements must be an object');
  if (typeof p.inference !== 'object' || p.inference === null || !ranks(p.inference.ranks))
    throw malformed(`inference.ranks must be 1..${PARSE_LIMITS.ranks}`);
  if (!Array.isArray(p.inference.tensors) || p.inference.tensors.length > PARSE_LIMITS.tensors)
    throw malformed('inference.tensors must be a list');
  if (!Number.isSafeInteger(p.maxOpBytes) || p.maxOpBytes < 1)
    throw malformed('maxOpBytes must be a positive integer');
  let again: WeightSyncPlan;
  try {
    again = planWeightSync(
      p.model,
      p.trainer,
      { ranks: p.inference.ranks, tensors: p.inference.tensors },
      { senderNics: p.senderNics, maxOpBytes: p.maxOpBytes },
    );
  } catch (e) {
    throw malformed(`its layouts do not plan (${e instanceof Error ? e.message : String(e)})`);
  }
  if (JSON.stringify(again) !== JSON.stringify(p))
    throw malformed('the schedule does not match its layouts (edited or corrupted)');
  return again;
}

/**
 * Check the schedule covers every byte of every inference rank's weights exactly once (data and
 * scales, padding excluded) and writes nothing else. Returns the problems found (empty: sound).
 */
export function checkPlanCoverage(plan: WeightSyncPlan): string[] {
  const problems: string[] = [];
  for (let d = 0; d < plan.inference.ranks; d++) {
    const hits = new Uint8Array(plan.inferenceBytes[d]!);
    const want = new Uint8Array(plan.inferenceBytes[d]!);
    for (const pc of plan.inferencePieces[d]!) {
      const rows = pc.box.r1 - pc.box.r0;
      const w = pc.box.c1 - pc.box.c0;
      want.fill(1, pc.offset, pc.offset + rows * w * pc.elemBytes);
      if (pc.scaleOffset !== undefined) {
        const block = plan.inference.tensors[pc.tensor]!.quantBlock!;
        want.fill(1, pc.scaleOffset, pc.scaleOffset + rows * (w / block) * 4);
      }
    }
    for (const op of plan.ops) {
      if (op.dst !== d) continue;
      const rows = op.box.r1 - op.box.r0;
      const w = op.box.c1 - op.box.c0;
      for (let r = 0; r < rows; r++) {
        const at = op.dstOffset + r * op.dstPitch * op.dstElemBytes;
        for (let b = 0; b < w * op.dstElemBytes; b++) hits[at + b]!++;
        if (op.quant) {
          const s = op.quant.scaleOffset + r * op.quant.scalePitch * 4;
          for (let b = 0; b < (w / op.quant.block) * 4; b++) hits[s + b]!++;
        }
      }
    }
    let missing = 0;
    let twice = 0;
    let stray = 0;
    for (let i = 0; i < hits.length; i++) {
      if (want[i] && hits[i] === 0) missing++;
      else if (want[i] && hits[i]! > 1) twice++;
      else if (!want[i] && hits[i]) stray++;
    }
    if (missing || twice || stray)
      problems.push(
        `inference rank ${d}: ${missing} bytes never written, ${twice} written more than once, ${stray} written outside the weights`,
      );
  }
  return problems;
}
