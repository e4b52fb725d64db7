// Validation of every request at the edge (types, ranges, descriptors, peers) into plans, and the
// expansion of a plan into work requests. Throws TrellisErrors naming the field; posts nothing.
import { describe, NetAddr } from '../addr.js';
import { MrDesc } from '../desc.js';
import { invalid, TrellisError } from '../errors.js';
import { autoShards, lanesBetween, shardRanges } from '../imms.js';
import type {
  BarrierRequest,
  ImmRequest,
  MrHandle,
  OpOptions,
  PagedWritesRequest,
  PeerGroup,
  ScatterRequest,
  ScatterRouting,
  SingleWriteRequest,
} from '../types.js';

/** What validation needs to know about the engine. */
export interface ValidationContext {
  readonly kind: string;
  readonly nics: number;
  readonly maxMessageBytes: number;
  /** Length of a live registration of this engine, or a thrown INVALID_DESCRIPTOR / DETACHED_BUFFER. */
  checkHandle(h: MrHandle, op: string, field: string): number;
  /** The group as registered with this engine, or undefined. */
  group(g: PeerGroup): PeerGroup | undefined;
}

/** A validated single write with defaults filled in. */
export interface SinglePlan {
  op: 'single';
  peer: NetAddr;
  src: MrHandle;
  srcOffset: number;
  length: number;
  dst: MrDesc;
  dstOffset: number;
  imm: number | undefined;
  shards: number;
  lanes: number;
}

export interface PagedPlan {
  op: 'paged';
  peer: NetAddr;
  src: MrHandle;
  srcPages: Uint32Array;
  srcStride: number;
  srcOffset: number;
  dst: MrDesc;
  dstPages: Uint32Array;
  dstStride: number;
  dstOffset: number;
  pageBytes: number;
  imm: number | undefined;
  lanes: number;
}

export interface ScatterPlanTarget {
  peer: NetAddr;
  dst: MrDesc;
  srcOffset: number;
  dstOffset: number;
  length: number;
  lanes: number;
}

export interface ScatterPlan {
  op: 'scatter';
  src: MrHandle;
  targets: ScatterPlanTarget[];
  imm: number | undefined;
  routing: ScatterRouting;
  /** Routing `'peers'`: target `i` on lane `(lane0 + i) mod lanes` (default 0; prepared writes rotate it). */
  lane0?: number;
}

export interface BarrierPlan {
  op: 'barrier';
  peers: readonly NetAddr[];
  imm: number;
  /** Lane of each member (0, or j mod lanes when spread). */
  lanes: number[];
}

export interface ImmPlan {
  op: 'imm';
  peer: NetAddr;
  imm: number;
  lane: number;
}

/**
 * Work requests placed by the engine itself, each on its lane: how failover re-posts the data of a
 * write on the NICs that are up, and how writes cut at part boundaries go. @internal
 */
export interface RunsPlan {
  op: 'runs';
  /** Absent when every run is an immediate alone. */
  src: MrHandle | undefined;
  runs: WorkRequest[];
  /** Carried by every run (then every run's `imm` is this value). */
  imm: number | undefined;
}

export type Plan = SinglePlan | PagedPlan | ScatterPlan | BarrierPlan | ImmPlan | RunsPlan;

/** One work request as the wire sees it: the unit that carries one immediate. */
export interface WorkRequest {
  lane: number;
  peer: NetAddr;
  /** Absent for zero-byte immediates (barrier, imm). */
  dst: MrDesc | undefined;
  srcOffset: number;
  dstOffset: number;
  length: number;
  imm: number | undefined;
}

// ---------------------------------------------------------------------------------------------
// scalar checks

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}

export function checkRequestObject(op: string, req: unknown): asserts req is Record<string, unknown> {
  if (!isObject(req))
    throw invalid('INVALID_ARGUMENT', op, `expected a request object, got ${describe(req)}`);
}

/** A record of field names, for {@link checkFields}. @internal */
export function optionFields(...names: string[]): Record<string, true> {
  const o: Record<string, true> = Object.create(null);
  for (const n of names) o[n] = true;
  return o;
}
/** Field names of a request kind (plus `kind`, which batches and triggers use, and the op options). */
const fields = (...names: string[]) => optionFields('kind', 'signal', 'timeoutMs', ...names);
const SINGLE_FIELDS = fields('src', 'srcOffset', 'length', 'dst', 'dstOffset', 'imm', 'shards');
const PAGED_FIELDS = fields(
  'src',
  'srcPages',
  'srcStride',
  'srcOffset',
  'dst',
  'dstPages',
  'dstStride',
  'dstOffset',
  'pageBytes',
  'imm',
);
const SCATTER_FIELDS = fields('src', 'targets', 'imm', 'routing');
const TARGET_FIELDS = optionFields('dst', 'srcOffset', 'dstOffset', 'length');
const ROUTING_FIELDS = optionFields('nic');
const BARRIER_FIELDS = fields('group', 'imm', 'spread');
const IMM_FIELDS = fields('dst', 'imm', 'nic');
const POST_FIELDS = optionFields('count', 'imm', 'signal', 'timeoutMs');
/** `signal` and `timeoutMs`: the options of sends, waits and `quiesce`. @internal */
export const OP_OPTION_FIELDS = optionFields('signal', 'timeoutMs');
const PREPARED_REQUEST_FIELDS = optionFields('src', 'dst', 'imm');
/** `submitBatch`'s options. @internal */
export const BATCH_OPTION_FIELDS = optionFields('mergeWrites', 'signal', 'timeoutMs');

/**
 * Refuse a key that is not a field of the request (a typo, or a field of another kind — `nic` on a
 * single write, `timeout` for `timeoutMs`): silently ignored, it would do something else than the
 * caller meant.
 */
export function checkFields(op: string, req: object, known: Record<string, true>, what: string): void {
  for (const k in req)
    if (known[k] !== true)
      throw invalid(
        'INVALID_ARGUMENT',
        op,
        `${JSON.stringify(k)} is not a field of ${what} (its fields: ${Object.keys(known)
          .filter((f) => f !== 'kind')
          .join(', ')})`,
      );
}

/** A request's `kind`, where it has one, must be the call's (`kind: 'paged'` on a single write is a mistake). */
function checkKind(op: string, req: object, kind: string): void {
  const k = (req as { kind?: unknown }).kind;
  if (k !== undefined && k !== kind)
    throw invalid(
      'INVALID_ARGUMENT',
      op,
      `kind is ${show(k)}, but this call takes a ${JSON.stringify(kind)} request`,
    );
}

/** A non-negative safe integer, or the default when undefined. */
export function checkCount(op: string, field: string, v: unknown, dflt?: number): number {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw invalid(
      'INVALID_ARGUMENT',
      op,
      `${field} must be a non-negative integer below 2^53, got ${show(v)}`,
    );
  }
  return v;
}

export function checkImm(op: string, v: unknown, required: boolean): number | undefined {
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffff_ffff) {
    throw invalid('INVALID_ARGUMENT', op, `imm must be an integer in 0..2^32-1, got ${show(v)}`);
  }
  return v;
}

export function checkOpOptions(op: string, o: OpOptions): void {
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) {
    throw invalid('INVALID_ARGUMENT', op, 'signal must be an AbortSignal');
  }
  if (
    o.timeoutMs !== undefined &&
    (typeof o.timeoutMs !== 'number' || !(o.timeoutMs >= 0) || !Number.isFinite(o.timeoutMs))
  ) {
    throw invalid('INVALID_ARGUMENT', op, `timeoutMs must be a finite number >= 0, got ${show(o.timeoutMs)}`);
  }
}

/** `offset + length <= limit`, with overflow past 2^53 reported as OUT_OF_RANGE. */
export function checkRange(op: string, what: string, offset: number, length: number, limit: number): void {
  const end = offset + length;
  if (!Number.isSafeInteger(end)) {
    throw invalid('OUT_OF_RANGE', op, `${what}: offset ${offset} + length ${length} overflows 2^53`);
  }
  if (end > limit) {
    throw invalid(
      'OUT_OF_RANGE',
      op,
      `${what}: bytes [${offset}, ${end}) fall outside the region of ${limit} bytes`,
    );
  }
}

/** A value as an error message shows it: numbers as they are, strings quoted, objects by type. */
export function show(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return String(v);
  if (typeof v === 'string') return JSON.stringify(v.length > 20 ? `${v.slice(0, 20)}…` : v);
  return describe(v);
}

export function checkDst(ctx: ValidationContext, op: string, field: string, dst: unknown): MrDesc {
  if (!(dst instanceof MrDesc)) {
    throw invalid(
      'INVALID_ARGUMENT',
      op,
      `${field} must be an MrDesc (from a peer's handle.desc or MrDesc.parse), got ${describe(dst)}`,
    );
  }
  if (dst.kind !== ctx.kind) {
    throw invalid(
      'INVALID_DESCRIPTOR',
      op,
      `${field} comes from a '${dst.kind}' engine but this is a '${ctx.kind}' engine; descriptors only work between engines of one kind`,
    );
  }
  if (!dst.remote) {
    throw invalid(
      'INVALID_DESCRIPTOR',
      op,
      `${field} describes a region registered without remote access; register it with {remote: true} to write into it`,
    );
  }
  return dst;
}

export function checkPeer(ctx: ValidationContext, op: string, field: string, peer: unknown): NetAddr {
  if (!(peer instanceof NetAddr)) {
    throw invalid(
      'INVALID_ARGUMENT',
      op,
      `${field} must be a NetAddr (NetAddr.parse the peer's address), got ${describe(peer)}`,
    );
  }
  if (peer.kind !== ctx.kind) {
    throw invalid(
      'INVALID_DESCRIPTOR',
      op,
      `${field} is a '${peer.kind}' address but this is a '${ctx.kind}' engine`,
    );
  }
  return peer;
}

function checkLane(op: string, field: string, v: unknown, lanes: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= lanes) {
    throw invalid('INVALID_ARGUMENT', op, `${field} must be a NIC index in 0..${lanes - 1}, got ${show(v)}`);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// requests

/** `op` names the call in errors (`expectedImms` validates requests through these too). */
export function planSingle(
  ctx: ValidationContext,
  req: SingleWriteRequest,
  op = 'submitSingleWrite',
  keys = true,
): SinglePlan {
  checkRequestObject(op, req);
  if (keys) checkKind(op, req, 'single');
  if (keys) checkFields(op, req, SINGLE_FIELDS, 'a single write request');
  checkOpOptions(op, req);
  const srcLen = ctx.checkHandle(req.src, op, 'src');
  const dst = checkDst(ctx, op, 'dst', req.dst);
  const length = checkCount(op, 'length', req.length);
  const srcOffset = checkCount(op, 'srcOffset', req.srcOffset, 0);
  const dstOffset = checkCount(op, 'dstOffset', req.dstOffset, 0);
  const imm = checkImm(op, req.imm, false);
  checkRange(op, 'src', srcOffset, length, srcLen);
  checkRange(op, 'dst', dstOffset, length, dst.length);
  const lanes = lanesBetween(ctx.nics, dst.owner.nics.length);
  let shards: number;
  if (req.shards === undefined) shards = autoShards(length, lanes);
  else {
    if (
      typeof req.shards !== 'number' ||
      !Number.isInteger(req.shards) ||
      req.shards < 1 ||
      req.shards > lanes
    ) {
      throw invalid(
        'INVALID_ARGUMENT',
        op,
        `shards must be an integer in 1..${lanes} (the NIC pairs to this peer), got ${show(req.shards)}`,
      );
    }
    shards = req.shards;
  }
  return {
    op: 'single',
    peer: dst.owner,
    src: req.src,
    srcOffset,
    length,
    dst,
    dstOffset,
    imm,
    shards,
    lanes,
  };
}

/** Largest value in an index array, -1 when empty. */
function maxIndex(a: Uint32Array): number {
  let m = -1;
  for (let i = 0; i < a.length; i++) if (a[i]! > m) m = a[i]!;
  return m;
}

/** `op` names the call in errors (`expectedImms` validates requests through these too). */
export function planPaged(
  ctx: ValidationContext,
  req: PagedWritesRequest,
  op = 'submitPagedWrites',
  keys = true,
): PagedPlan {
  checkRequestObject(op, req);
  if (keys) checkKind(op, req, 'paged');
  if (keys) checkFields(op, req, PAGED_FIELDS, 'a paged writes request');
  checkOpOptions(op, req);
  const srcLen = ctx.checkHandle(req.src, op, 'src');
  const dst = checkDst(ctx, op, 'dst', req.dst);
  if (!(req.srcPages instanceof Uint32Array))
    throw invalid('INVALID_ARGUMENT', op, `srcPages must be a Uint32Array, got ${describe(req.srcPages)}`);
  if (!(req.dstPages instanceof Uint32Array))
    throw invalid('INVALID_ARGUMENT', op, `dstPages must be a Uint32Array, got ${describe(req.dstPages)}`);
  if (req.srcPages.length !== req.dstPages.length) {
    throw invalid(
      'INVALID_ARGUMENT',
      op,
      `srcPages has ${req.srcPages.length} entries but dstPages has ${req.dstPages.length}; they must be equal`,
    );
  }
  const pageBytes = checkCount(op, 'pageBytes', req.pageBytes);
  if (pageBytes === 0) throw invalid('INVALID_ARGUMENT', op, 'pageBytes must be > 0');
  const srcStride = checkCount(op, 'srcStride', req.srcStride);
  const dstStride = checkCount(op, 'dstStride', req.dstStride);
  if (srcStride < pageBytes)
    throw invalid(
      'INVALID_ARGUMENT',
      op,
      `srcStride ${srcStride} is smaller than pageBytes ${pageBytes}; pages would overlap`,
    );
  if (dstStride < pageBytes)
    throw invalid(
      'INVALID_ARGUMENT',
      op,
      `dstStride ${dstStride} is smaller than pageBytes ${pageBytes}; pages would overlap`,
    );
  const srcOffset = checkCount(op, 'srcOffset', req.srcOffset, 0);
  const dstOffset = checkCount(op, 'dstOffset', req.dstOffset, 0);
  const imm = checkImm(op, req.imm, false);
  const sMax = maxIndex(req.srcPages);
  const dMax = maxIndex(req.dstPages);
  if (sMax >= 0) checkRange(op, `src page ${sMax}`, srcOffset + sMax * srcStride, pageBytes, srcLen);
  if (dMax >= 0) checkRange(op, `dst page ${dMax}`, dstOffset + dMax * dstStride, pageBytes, dst.length);
  const lanes = lanesBetween(ctx.nics, dst.owner.nics.length);
  return {
    op: 'paged',
    peer: dst.owner,
    src: req.src,
    // Copied so that the caller may reuse its arrays as soon as the call returns.
    srcPages: req.srcPages.slice(),
    srcStride,
    srcOffset,
    dst,
    dstPages: req.dstPages.slice(),
    dstStride,
    dstOffset,
    pageBytes,
    imm,
    lanes,
  };
}

/** `op` names the call in errors (`expectedImms` validates requests through these too). */
export function planScatter(
  ctx: ValidationContext,
  req: ScatterRequest,
  op = 'submitScatter',
  keys = true,
): ScatterPlan {
  checkRequestObject(op, req);
  if (keys) checkKind(op, req, 'scatter');
  if (keys) checkFields(op, req, SCATTER_FIELDS, 'a scatter request');
  checkOpOptions(op, req);
  const srcLen = ctx.checkHandle(req.src, op, 'src');
  if (!Array.isArray(req.targets))
    throw invalid('INVALID_ARGUMENT', op, `targets must be an array, got ${describe(req.targets)}`);
  if (keys && isObject(req.targets[0]))
    checkFields(op, req.targets[0], TARGET_FIELDS, 'a scatter target (targets[0])');
  const imm = checkImm(op, req.imm, false);
  const routing: ScatterRouting = req.routing ?? 'peers';
  let nic: number | undefined;
  if (routing !== 'peers' && routing !== 'bytes') {
    if (isObject(routing) && 'nic' in routing) checkFields(op, routing, ROUTING_FIELDS, 'routing');
    if (!isObject(routing) || !('nic' in routing)) {
      throw invalid(
        'INVALID_ARGUMENT',
        op,
        `routing must be 'peers', 'bytes' or {nic}, got ${show(routing)}`,
      );
    }
    nic = checkLane(op, 'routing.nic', routing.nic, ctx.nics);
  }
  const targets: ScatterPlanTarget[] = req.targets.map((t, i) => {
    if (!isObject(t)) throw invalid('INVALID_ARGUMENT', op, `targets[${i}] must be an object`);
    const dst = checkDst(ctx, op, `targets[${i}].dst`, t.dst);
    const length = checkCount(op, `targets[${i}].length`, t.length);
    const srcOffset = checkCount(op, `targets[${i}].srcOffset`, t.srcOffset);
    const dstOffset = checkCount(op, `targets[${i}].dstOffset`, t.dstOffset);
    checkRange(op, `targets[${i}] src`, srcOffset, length, srcLen);
    checkRange(op, `targets[${i}] dst`, dstOffset, length, dst.length);
    const lanes = lanesBetween(ctx.nics, dst.owner.nics.length);
    if (nic !== undefined && nic >= lanes) {
      throw invalid(
        'INVALID_ARGUMENT',
        op,
        `routing.nic ${nic} is not usable for targets[${i}]: its owner has ${dst.owner.nics.length} NIC(s)`,
      );
    }
    return { peer: dst.owner, dst, srcOffset, dstOffset, length, lanes };
  });
  return { op: 'scatter', src: req.src, targets, imm, routing: nic === undefined ? routing : { nic } };
}

/** The half of prepared writes {@link planPrepared} reuses: checked once by `prepareWrites`. */
export interface PreparedTemplate {
  readonly src: MrHandle;
  readonly dst: MrDesc;
  readonly imm: number | undefined;
  /** NIC pairs between this engine and the destination's owner. */
  readonly lanes: number;
}

/** `prepareWrites`: the template every post of the prepared writes reuses. */
export function checkPrepared(
  ctx: ValidationContext,
  req: { src: MrHandle; dst: MrDesc; imm?: number | null },
  op = 'prepareWrites',
): PreparedTemplate {
  checkRequestObject(op, req);
  checkFields(op, req, PREPARED_REQUEST_FIELDS, 'a prepared writes request');
  ctx.checkHandle(req.src, op, 'src');
  const dst = checkDst(ctx, op, 'dst', req.dst);
  const imm = req.imm === null ? undefined : checkImm(op, req.imm, false);
  return { src: req.src, dst, imm, lanes: lanesBetween(ctx.nics, dst.owner.nics.length) };
}

const PREPARED_FIELDS = ['srcOffset', 'dstOffset', 'length'] as const;

/**
 * One post of prepared writes: the scatter plan (every target the prepared destination, write i on
 * lane (lane0 + i) mod lanes, one work request each) of `writes`' triples
 * `[srcOffset, dstOffset, length]`.
 */
export function planPrepared(
  ctx: ValidationContext,
  t: PreparedTemplate,
  writes: unknown,
  opts: { count?: unknown; imm?: unknown } & OpOptions,
  lane0 = 0,
  op = 'PreparedWrites.post',
): ScatterPlan {
  if (!(writes instanceof Float64Array) && !Array.isArray(writes))
    throw invalid(
      'INVALID_ARGUMENT',
      op,
      `writes must be a Float64Array (or an array of numbers) of [srcOffset, dstOffset, length] triples, got ${describe(writes)}`,
    );
  if (!isObject(opts))
    throw invalid(
      'INVALID_ARGUMENT',
      op,
      `opts must be an object ({count, imm, timeoutMs, signal}), got ${describe(opts)}`,
    );
  checkFields(op, opts, POST_FIELDS, 'its options');
  checkOpOptions(op, opts);
  const w = writes as ArrayLike<unknown>;
  let n: number;
  if (opts.count === undefined) {
    if (w.length % 3 !== 0)
      throw invalid(
        'INVALID_ARGUMENT',
        op,
        `writes has ${w.length} numbers, not a multiple of 3 ([srcOffset, dstOffset, length] per write); pass count to post a prefix`,
      );
    n = w.length / 3;
  } else {
    n = checkCount(op, 'count', opts.count);
    if (n * 3 > w.length)
      throw invalid('INVALID_ARGUMENT', op, `count ${n} needs ${n * 3} numbers but writes has ${w.length}`);
  }
  const imm = opts.imm === undefined ? t.imm : opts.imm === null ? undefined : checkImm(op, opts.imm, true);
  const srcLen = ctx.checkHandle(t.src, op, 'src');
  const dstLen = t.dst.length;
  const peer = t.dst.owner;
  const targets = new Array<ScatterPlanTarget>(n);
  for (let i = 0; i < n; i++) {
    const srcOffset = w[3 * i] as number;
    const dstOffset = w[3 * i + 1] as number;
    const length = w[3 * i + 2] as number;
    if (
      !(Number.isSafeInteger(srcOffset) && Number.isSafeInteger(dstOffset) && Number.isSafeInteger(length)) ||
      srcOffset < 0 ||
      dstOffset < 0 ||
      length < 0
    ) {
      for (let k = 0; k < 3; k++)
        checkCount(op, `writes[${3 * i + k}] (write ${i}'s ${PREPARED_FIELDS[k]})`, w[3 * i + k]);
    }
    // Over 2^53 the sums lose precision, and checkRange says so.
    if (!(srcOffset + length <= srcLen)) checkRange(op, `write ${i} src`, srcOffset, length, srcLen);
    if (!(dstOffset + length <= dstLen)) checkRange(op, `write ${i} dst`, dstOffset, length, dstLen);
    targets[i] = { peer, dst: t.dst, srcOffset, dstOffset, length, lanes: t.lanes };
  }
  return { op: 'scatter', src: t.src, targets, imm, routing: 'peers', lane0 };
}

/** `op` names the call in errors (`expectedImms` validates requests through these too). */
export function planBarrier(
  ctx: ValidationContext,
  req: BarrierRequest,
  op = 'submitBarrier',
  keys = true,
): BarrierPlan {
  checkRequestObject(op, req);
  if (keys) checkKind(op, req, 'barrier');
  if (keys) checkFields(op, req, BARRIER_FIELDS, 'a barrier request');
  checkOpOptions(op, req);
  const group = isObject(req.group) ? ctx.group(req.group as PeerGroup) : undefined;
  if (!group)
    throw invalid(
      'INVALID_ARGUMENT',
      op,
      "group must be a PeerGroup returned by this engine's addPeerGroup()",
    );
  const imm = checkImm(op, req.imm, true)!;
  if (req.spread !== undefined && typeof req.spread !== 'boolean')
    throw invalid('INVALID_ARGUMENT', op, 'spread must be a boolean');
  const lanes = group.peers.map((p, j) => (req.spread ? j % lanesBetween(ctx.nics, p.nics.length) : 0));
  return { op: 'barrier', peers: group.peers, imm, lanes };
}

/** `op` names the call in errors (`expectedImms` validates requests through these too). */
export function planImm(ctx: ValidationContext, req: ImmRequest, op = 'submitImm', keys = true): ImmPlan {
  checkRequestObject(op, req);
  if (keys) checkKind(op, req, 'imm');
  if (keys) checkFields(op, req, IMM_FIELDS, 'an immediate request');
  checkOpOptions(op, req);
  let peer: NetAddr;
  if (req.dst instanceof MrDesc) peer = checkDst(ctx, op, 'dst', req.dst).owner;
  else peer = checkPeer(ctx, op, 'dst', req.dst);
  const imm = checkImm(op, req.imm, true)!;
  const lanes = lanesBetween(ctx.nics, peer.nics.length);
  const lane = req.nic === undefined ? 0 : checkLane(op, 'nic', req.nic, lanes);
  return { op: 'imm', peer, imm, lane };
}

export function checkSend(
  ctx: ValidationContext,
  peer: unknown,
  data: unknown,
  opts: OpOptions | undefined,
): NetAddr {
  const op = 'submitSend';
  if (opts !== undefined && isObject(opts)) checkFields(op, opts, OP_OPTION_FIELDS, 'its options');
  const p = checkPeer(ctx, op, 'peer', peer);
  if (!(data instanceof Uint8Array))
    throw invalid('INVALID_ARGUMENT', op, `data must be a Uint8Array, got ${describe(data)}`);
  if (data.length > ctx.maxMessageBytes) {
    throw new TrellisError(
      'MESSAGE_TOO_LARGE',
      `${op}: message of ${data.length} bytes exceeds maxMessageBytes ${ctx.maxMessageBytes}; write bulk data with submitSingleWrite and send its descriptor instead`,
      { op, peer: p.toString() },
    );
  }
  if (opts !== undefined) checkOpOptions(op, opts);
  return p;
}

// ---------------------------------------------------------------------------------------------
// expansion into work requests (used by the loopback fabric and by software models)

/** The work requests a plan posts, in posting order (which the wire does not preserve). */
/**
 * The immediates of a plan alone: one zero-byte write per work request `wrs` of it, each on its
 * original NIC and to its original peer, so the target counts what `expectedImms` promised.
 */
export function immediatesOf(wrs: readonly WorkRequest[], imm: number): RunsPlan {
  const runs = wrs.map((w) => ({
    lane: w.lane,
    peer: w.peer,
    dst: undefined,
    srcOffset: 0,
    dstOffset: 0,
    length: 0,
    imm,
  }));
  return { op: 'runs', src: undefined, runs, imm };
}

export function workRequests(plan: Plan): WorkRequest[] {
  switch (plan.op) {
    case 'runs':
      return plan.runs;
    case 'single': {
      return shardRanges(plan.length, plan.shards).map(([off, len], i) => ({
        lane: i % plan.lanes,
        peer: plan.peer,
        dst: plan.dst,
        srcOffset: plan.srcOffset + off,
        dstOffset: plan.dstOffset + off,
        length: len,
        imm: plan.imm,
      }));
    }
    case 'paged': {
      const out: WorkRequest[] = new Array(plan.srcPages.length);
      for (let i = 0; i < plan.srcPages.length; i++) {
        out[i] = {
          lane: i % plan.lanes,
          peer: plan.peer,
          dst: plan.dst,
          srcOffset: plan.srcOffset + plan.srcPages[i]! * plan.srcStride,
          dstOffset: plan.dstOffset + plan.dstPages[i]! * plan.dstStride,
          length: plan.pageBytes,
          imm: plan.imm,
        };
      }
      return out;
    }
    case 'scatter': {
      const out: WorkRequest[] = [];
      plan.targets.forEach((t, i) => {
        if (plan.routing === 'bytes') {
          const shards = autoShards(t.length, t.lanes);
          shardRanges(t.length, shards).forEach(([off, len], s) => {
            out.push({
              lane: s % t.lanes,
              peer: t.peer,
              dst: t.dst,
              srcOffset: t.srcOffset + off,
              dstOffset: t.dstOffset + off,
              length: len,
              imm: plan.imm,
            });
          });
        } else {
          const lane = plan.routing === 'peers' ? ((plan.lane0 ?? 0) + i) % t.lanes : plan.routing.nic;
          out.push({
            lane,
            peer: t.peer,
            dst: t.dst,
            srcOffset: t.srcOffset,
            dstOffset: t.dstOffset,
            length: t.length,
            imm: plan.imm,
          });
        }
      });
      return out;
    }
    case 'barrier':
      return plan.peers.map((peer, j) => ({
        lane: plan.lanes[j]!,
        peer,
        dst: undefined,
        srcOffset: 0,
        dstOffset: 0,
        length: 0,
        imm: plan.imm,
      }));
    case 'imm':
      return [
        {
          lane: plan.lane,
          peer: plan.peer,
          dst: undefined,
          srcOffset: 0,
          dstOffset: 0,
          length: 0,
          imm: plan.imm,
        },
      ];
  }
}
