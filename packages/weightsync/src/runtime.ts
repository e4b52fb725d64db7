// WeightSyncSender and WeightSyncReceiver: run a plan each step — stage, write, count arrivals,
// flip the active weights — with deadlines, faults and GPU staging.
import {
  type CudaMemory,
  type MrDesc,
  type MrHandle,
  type NetAddr,
  type PeerGroup,
  type TransferEngine,
  TrellisError,
} from '@trellis/core';
import type { WeightSyncDeviceOps } from './device.js';
import type { Box } from './model.js';
import { checkedPlan, type PlanOp, type WeightSyncPlan } from './plan.js';
import { quantizeRows } from './quant.js';

const DEFAULT_IMM_BASE = 0x57530000; // "WS"
const stepImm = (base: number, step: number) => base + (step % 0x10000);
/** The highest immBase: step immediates run from immBase to immBase + 65535. */
const MAX_IMM_BASE = 0xffffffff - 0xffff;

function invalid(message: string): TrellisError {
  return new TrellisError('INVALID_ARGUMENT', message);
}

/** The options both create() take: an object, an engine, a plan, a rank, an immBase. */
function checkCreate(where: string, opts: unknown, ranksOf: (p: WeightSyncPlan) => number): WeightSyncPlan {
  if (opts === null || typeof opts !== 'object')
    throw invalid(`${where}: pass an options object {engine, plan, rank, ...}`);
  const fields =
    where === 'WeightSyncReceiver'
      ? ['engine', 'plan', 'rank', 'immBase', 'buffers']
      : ['engine', 'plan', 'rank', 'source', 'device', 'targets', 'stagingBytes', 'immBase'];
  // A typo or another side's option would be ignored in silence.
  for (const k in opts)
    if (!fields.includes(k))
      throw invalid(`${where}: ${JSON.stringify(k)} is not an option (they are ${fields.join(', ')})`);
  const o = opts as { engine?: unknown; plan?: unknown; rank?: unknown; immBase?: unknown };
  const e = o.engine as { registerMemory?: unknown } | null | undefined;
  if (e === null || typeof e !== 'object' || typeof e.registerMemory !== 'function')
    throw invalid(`${where}: engine must be a TransferEngine (createEngine())`);
  const plan = o.plan as WeightSyncPlan | null | undefined;
  if (
    plan === null ||
    typeof plan !== 'object' ||
    plan.format !== 'trellis-weightsync-plan' ||
    !Array.isArray(plan.ops)
  )
    throw invalid(
      `${where}: plan must be a WeightSyncPlan (planWeightSync(), or parsePlan() of its JSON text)`,
    );
  // A copy or an edited plan is re-derived from its layouts: buffers are sized from it.
  const checked = checkedPlan(where, plan);
  const ranks = ranksOf(checked);
  if (!Number.isInteger(o.rank) || (o.rank as number) < 0 || (o.rank as number) >= ranks)
    throw invalid(`${where}: rank must be 0..${ranks - 1}, got ${String(o.rank)}`);
  if (
    o.immBase !== undefined &&
    (!Number.isInteger(o.immBase) || (o.immBase as number) < 0 || (o.immBase as number) > MAX_IMM_BASE)
  )
    throw invalid(
      `${where}: immBase must be an integer in 0..${MAX_IMM_BASE} (steps use immBase to immBase + 65535), got ${String(o.immBase)}`,
    );
  return checked;
}

/** A step request of sync/expect: step, version, timeoutMs, signal (and onProgress) of the right kinds. */
function checkStep(where: string, req: unknown, shape: string): void {
  if (req === null || typeof req !== 'object') throw invalid(`${where}: pass ${shape}`);
  const fields = shape.replace(/[{}?\s]/g, '').split(',');
  for (const k in req)
    if (!fields.includes(k)) throw invalid(`${where}: ${JSON.stringify(k)} is not a field (pass ${shape})`);
  const r = req as { step?: unknown; timeoutMs?: unknown; signal?: unknown; onProgress?: unknown };
  if (!Number.isSafeInteger(r.step) || (r.step as number) < 0)
    throw invalid(`${where}: step must be a non-negative integer, got ${String(r.step)}`);
  if (
    r.timeoutMs !== undefined &&
    (!Number.isInteger(r.timeoutMs) || (r.timeoutMs as number) < 1 || (r.timeoutMs as number) > 0x7fffffff)
  )
    throw invalid(`${where}: timeoutMs must be an integer from 1 to 2^31 - 1, got ${String(r.timeoutMs)}`);
  if (r.signal !== undefined && !(r.signal instanceof AbortSignal))
    throw invalid(`${where}: signal must be an AbortSignal`);
  if (r.onProgress !== undefined && typeof r.onProgress !== 'function')
    throw invalid(`${where}: onProgress must be a function`);
}

/** Options of {@link WeightSyncReceiver.create}. */
export interface WeightSyncReceiverOptions {
  engine: TransferEngine;
  plan: WeightSyncPlan;
  /** This inference rank. */
  rank: number;
  /** Step `s` completes when `immBase + s % 65536` has arrived once from every trainer. Default 0x57530000. */
  immBase?: number;
  /**
   * The two weight buffers, registered by the caller with `{remote: true}` — e.g. CUDA memory the
   * inference engine serves from (`registerMemory({cuda})`). Default: two host buffers registered
   * here. Each must hold `plan.inferenceBytes[rank]`.
   */
  buffers?: readonly [MrHandle, MrHandle];
}

/** One piece of an inference tensor on this rank, viewed in the active weights. */
export interface TensorView {
  part: string;
  /** Rows and columns of the model tensor (the part) this piece holds. */
  box: Box;
  data: Uint8Array;
  /** Quantised tensors: one fp32 scale per block of a row. */
  scales?: Float32Array;
}

/**
 * An inference rank's weights, double-buffered: step `N` producing version `v` is written into
 * buffer `v % 2`, never the one being served, and the rank switches to it only when every trainer's
 * barrier immediate for the step has arrived. A step that fails or misses its deadline leaves the
 * served weights as they were; retry it with the same `version` (and a new `step`) once every
 * trainer's `sync` for the failed step has settled.
 */
export class WeightSyncReceiver {
  readonly plan: WeightSyncPlan;
  readonly rank: number;
  readonly buffers: readonly [MrHandle, MrHandle];
  private active = 0;
  private readonly immBase: number;

  private constructor(
    private readonly engine: TransferEngine,
    plan: WeightSyncPlan,
    rank: number,
    buffers: [MrHandle, MrHandle],
    immBase: number,
  ) {
    this.plan = plan;
    this.rank = rank;
    this.buffers = buffers;
    this.immBase = immBase;
  }

  /** Register the two weight buffers (peers may write them). */
  static async create(opts: WeightSyncReceiverOptions): Promise<WeightSyncReceiver> {
    const plan = checkCreate('WeightSyncReceiver', opts, (p) => p.inference.ranks);
    const { rank } = opts;
    const size = Math.max(64, plan.inferenceBytes[rank]!);
    if (opts.buffers !== undefined) {
      if (!Array.isArray(opts.buffers) || opts.buffers.length !== 2)
        throw new TrellisError('INVALID_ARGUMENT', 'WeightSyncReceiver: buffers must be two MrHandles');
      for (const [i, b] of opts.buffers.entries()) {
        if (!b || typeof b !== 'object' || !('desc' in b) || !b.remote)
          throw new TrellisError(
            'INVALID_ARGUMENT',
            `WeightSyncReceiver: buffers[${i}] must be an MrHandle registered with {remote: true}`,
          );
        if (b.length < plan.inferenceBytes[rank]!)
          throw new TrellisError(
            'INVALID_ARGUMENT',
            `WeightSyncReceiver: buffers[${i}] is ${b.length} bytes; inference rank ${rank} needs ${plan.inferenceBytes[rank]}`,
          );
        // Trainers write where the descriptors say: another engine's region would take the bytes
        // and the barrier would arrive here, at an engine whose buffers never change.
        if (b.desc.owner.toString() !== opts.engine.address.toString())
          throw new TrellisError(
            'INVALID_DESCRIPTOR',
            `WeightSyncReceiver: buffers[${i}] is registered on another engine (${b.desc.owner}); register both on this receiver's engine (${opts.engine.address})`,
          );
      }
      if (opts.buffers[0].desc.toString() === opts.buffers[1].desc.toString())
        throw new TrellisError(
          'INVALID_ARGUMENT',
          'WeightSyncReceiver: buffers must be two distinct regions (version v is written into buffers[v % 2] while the other is served)',
        );
      const r = new WeightSyncReceiver(
        opts.engine,
        plan,
        rank,
        [opts.buffers[0], opts.buffers[1]],
        opts.immBase ?? DEFAULT_IMM_BASE,
      );
      r.ownsBuffers = false;
      return r;
    }
    const a = await opts.engine.registerMemory(size, { remote: true });
    const b = await opts.engine.registerMemory(size, { remote: true });
    return new WeightSyncReceiver(opts.engine, plan, rank, [a, b], opts.immBase ?? DEFAULT_IMM_BASE);
  }

  private ownsBuffers = true;

  /** The descriptors trainers write into: `[version % 2 === 0, version % 2 === 1]`. Give them to every trainer. */
  descriptors(): [MrDesc, MrDesc] {
    return [this.buffers[0].desc, this.buffers[1].desc];
  }

  /** The version being served (0 until the first step completes). */
  get version(): number {
    return this.active;
  }

  /**
   * Wait for step `step`, which writes `version` (the served version + 1): resolves once every
   * trainer's barrier has arrived, and from then on the rank serves it. Rejects with `TIMEOUT` /
   * `ABORTED` and keeps serving the previous version. A rank that serves nothing yet (version 0: a
   * new rank, or one replacing a rank that died, whose descriptors the trainers took with
   * {@link WeightSyncSender.replaceTarget}) takes any version >= 1 first — pass the version the
   * trainers' `sync` of that step writes — and version + 1 from then on, or the version it serves
   * again: the retry of a step that switched this rank although it failed on a trainer (another
   * inference rank died after its last write and before its barrier; the retry writes the same
   * bytes into the served buffer, and the rank keeps serving that version). Rejects
   * `INVALID_ARGUMENT` at once for a bad `step`, `version`, `timeoutMs` or `signal`, and `CLOSED`
   * once the receiver is closed (a pending one too).
   */
  async expect(req: {
    step: number;
    version: number;
    timeoutMs?: number;
    signal?: AbortSignal;
  }): Promise<void> {
    if (this.closeCtl.signal.aborted)
      throw new TrellisError('CLOSED', 'WeightSyncReceiver.expect: the receiver is closed');
    checkStep('WeightSyncReceiver.expect', req, '{step, version, timeoutMs?, signal?}');
    if (this.active === 0) {
      // A rank that has served nothing yet (new, or replacing one that died) joins at whatever
      // version the group writes next: it has no weights a write could tear.
      if (!Number.isSafeInteger(req.version) || req.version < 1)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `WeightSyncReceiver.expect: version must be an integer >= 1 (the version the trainers' sync writes), got ${req.version}`,
        );
    } else if (req.version !== this.active + 1 && req.version !== this.active)
      // The version it serves is taken too: the retry of a step that failed on the trainer after
      // its barrier had reached this rank (another inference rank died between its last write and
      // its barrier). The retry writes the same version's bytes into the served buffer again.
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `WeightSyncReceiver.expect: this rank serves version ${this.active}; the next step must write version ${this.active + 1} (or ${this.active} again, retrying the step that switched it), got ${req.version}`,
      );
    const closing = this.closeCtl.signal;
    const imm = stepImm(this.immBase, req.step);
    this.sweepFailed(imm, req.step);
    try {
      await this.engine.immCounter(imm).wait(this.plan.trainer.ranks, {
        timeoutMs: req.timeoutMs,
        signal: req.signal ? AbortSignal.any([req.signal, closing]) : closing,
      });
    } catch (e) {
      const err = e as TrellisError;
      if (closing.aborted && !req.signal?.aborted)
        throw new TrellisError(
          'CLOSED',
          `weight sync step ${req.step} (version ${req.version}) on inference rank ${this.rank}: the receiver was closed`,
          { cause: e },
        );
      // Its trainers' barriers may be here in part, or still arrive: none of them may count toward
      // a later step of the same immediate.
      this.failed.set(imm, req.step);
      throw new TrellisError(
        err.code ?? 'INTERNAL',
        `weight sync step ${req.step} (version ${req.version}) failed on inference rank ${this.rank}; still serving version ${this.active}: ${err.message}`,
        { cause: e },
      );
    }
    this.active = req.version;
  }

  /**
   * Steps whose {@link expect} failed here, by their immediate: barriers of such a step that
   * arrived (some trainers finished it) or arrive late are credits on that immediate, which step
   * `step + 65536` shares; left there, they would complete that step without those trainers' bytes.
   */
  private readonly failed = new Map<number, number>();

  /**
   * Before waiting for `step` (immediate `imm`): discard the credits of every failed step's
   * immediate — late barriers of theirs — except where `step` is that failed step, waited for
   * again (its credits are its own). A failed step whose immediate `step` shares is discarded one
   * last time and forgotten: credits there from now on are this step's (a trainer that was already
   * ahead of this call loses its barrier and the step times out — the safe way to fail). Entries
   * 32768 steps behind are forgotten: their late barriers were discarded long before.
   */
  private sweepFailed(imm: number, step: number): void {
    for (const [i, s] of this.failed) {
      if (i === imm && s === step) {
        this.failed.delete(i);
        continue;
      }
      const c = this.engine.immCounter(i);
      const v = c.value;
      if (v > 0) c.take(v);
      if (i === imm || Math.abs(step - s) >= 32768) this.failed.delete(i);
    }
  }

  /** The served weights' buffer (host or CUDA memory), and its version. */
  served(): { version: number; buffer: MrHandle } {
    return { version: this.active, buffer: this.buffers[this.active % 2]! };
  }

  /** The served weights: this rank's buffer for the active version (host buffers; see {@link served} for CUDA ones). */
  weights(): { version: number; bytes: Uint8Array } {
    const bytes = this.buffers[this.active % 2]!.buffer;
    if (!bytes)
      throw new TrellisError(
        'UNSUPPORTED',
        'WeightSyncReceiver.weights: the buffers are CUDA memory; use served().buffer.cuda and plan.inferencePieces',
      );
    return { version: this.active, bytes };
  }

  /** Views of inference tensor `name` on this rank, in the served weights. */
  tensor(name: string): TensorView[] {
    const k = this.plan.inference.tensors.findIndex((t) => t.name === name);
    if (k < 0)
      throw new TrellisError('INVALID_ARGUMENT', `WeightSyncReceiver.tensor: no inference tensor '${name}'`);
    const t = this.plan.inference.tensors[k]!;
    const buf = this.weights().bytes;
    return this.plan.inferencePieces[this.rank]!.filter((p) => p.tensor === k).map((p) => {
      const rows = p.box.r1 - p.box.r0;
      const w = p.box.c1 - p.box.c0;
      const v: TensorView = {
        part: t.parts![p.part]!,
        box: p.box,
        data: buf.subarray(p.offset, p.offset + rows * w * p.elemBytes),
      };
      if (p.scaleOffset !== undefined)
        v.scales = new Float32Array(buf.buffer, buf.byteOffset + p.scaleOffset, rows * (w / t.quantBlock!));
      return v;
    });
  }

  private readonly closeCtl = new AbortController();

  /**
   * Reject every pending {@link expect} with `CLOSED` (and any later one), and unregister the
   * buffers this receiver registered (not ones given as `buffers`). Idempotent.
   */
  async close(): Promise<void> {
    if (this.closeCtl.signal.aborted) return;
    this.closeCtl.abort();
    if (this.engine.closed || !this.ownsBuffers) return;
    for (const b of this.buffers) await b.unregister().catch(() => {});
  }
}

/** Options of {@link WeightSyncSender.create}. */
export interface WeightSyncSenderOptions {
  engine: TransferEngine;
  plan: WeightSyncPlan;
  /** This trainer rank. */
  rank: number;
  /**
   * This trainer rank's weights, laid out as `plan.trainerPieces[rank]` says: host memory, or CUDA
   * memory (then staging is device memory too, and `device` does the copies and quantisation).
   */
  source: Uint8Array | CudaMemory;
  /** For a CUDA `source`: the device operations (`cudaWeightOps()` from `@trellis/cuda`). */
  device?: WeightSyncDeviceOps;
  /**
   * Per inference rank, its two weight buffers: `targets[r]` is rank `r`'s
   * `WeightSyncReceiver.descriptors()`, in rank order. Buffers of one size cannot say whose they
   * are: given in another order, each rank is written another rank's weights (the same buffers
   * listed for two ranks are refused).
   */
  targets: ReadonlyArray<readonly [MrDesc, MrDesc]>;
  /** Staging memory: what may be staged and in flight at once (the memory watermark). Default 64 MiB. */
  stagingBytes?: number;
  immBase?: number;
}

/** What one {@link WeightSyncSender.sync} did. */
export interface SyncReport {
  step: number;
  version: number;
  bytes: number;
  writes: number;
  /** Wall time of the step, and the time spent in each stage (stages overlap, so they do not add up). */
  ms: { total: number; copy: number; transform: number; rdma: number; barrier: number };
}

/** Progress of a step: bytes at receivers so far, of the total. */
export interface SyncProgress {
  step: number;
  bytesDone: number;
  bytesTotal: number;
}

/**
 * A trainer rank's side of weight sync. Each {@link sync} runs this rank's part of the schedule
 * through a bounded pipeline — copy or quantise into registered staging (at most `stagingBytes` in
 * flight), RDMA writes into every inference rank's inactive buffer, then one barrier immediate to
 * every inference rank. No message per tensor; no gather, no broadcast.
 */
export class WeightSyncSender {
  readonly plan: WeightSyncPlan;
  readonly rank: number;
  private readonly ops: PlanOp[];
  private readonly slotBytes: number;
  private readonly freeSlots: number[];
  private readonly waiters: Array<() => boolean> = [];
  private group: PeerGroup;
  private readonly targetPeers: NetAddr[];
  private readonly targets: Array<readonly [MrDesc, MrDesc]>;
  private readonly immBase: number;
  private readonly iota = new Map<number, Uint32Array>();
  private busy = false;
  /**
   * Set while writes of a failed step may still be posted (a hung inference rank holds them until
   * the engine deadline): they read staging, so the next step stages nothing before it settles.
   */
  private drain: Promise<void> | undefined;

  private constructor(
    private readonly engine: TransferEngine,
    plan: WeightSyncPlan,
    rank: number,
    private readonly source: Uint8Array | CudaMemory['cuda'],
    targets: ReadonlyArray<readonly [MrDesc, MrDesc]>,
    private readonly staging: MrHandle,
    slotBytes: number,
    slots: number,
    immBase: number,
  ) {
    this.plan = plan;
    this.rank = rank;
    this.ops = plan.ops.filter((o) => o.src === rank);
    this.slotBytes = slotBytes;
    this.freeSlots = Array.from({ length: slots }, (_, i) => slots - 1 - i);
    this.targets = [...targets];
    this.targetPeers = targets.map((t) => t[0].owner);
    this.group = engine.addPeerGroup(this.targetPeers);
    this.immBase = immBase;
  }

  static async create(opts: WeightSyncSenderOptions): Promise<WeightSyncSender> {
    const plan = checkCreate('WeightSyncSender', opts, (p) => p.trainer.ranks);
    const { rank } = opts;
    if (
      opts.stagingBytes !== undefined &&
      (!Number.isSafeInteger(opts.stagingBytes) || opts.stagingBytes < 1)
    )
      throw invalid(
        `WeightSyncSender: stagingBytes must be a positive integer, got ${String(opts.stagingBytes)}`,
      );
    const cuda = opts.source instanceof Uint8Array ? undefined : (opts.source as CudaMemory)?.cuda;
    if (cuda !== undefined) {
      if (
        typeof cuda.ptr !== 'bigint' ||
        !Number.isInteger(cuda.device) ||
        cuda.length < plan.trainerBytes[rank]!
      )
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `WeightSyncSender: source.cuda must be {ptr: bigint, length >= ${plan.trainerBytes[rank]}, device} (trainer rank ${rank}'s weights)`,
        );
      if (cuda.ptr % 4n !== 0n)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          'WeightSyncSender: source.cuda.ptr must be 4-byte aligned',
        );
      if (!opts.device)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          'WeightSyncSender: a CUDA source needs device (cudaWeightOps() from @trellis/cuda) for its copies and quantisation',
        );
    } else if (!(opts.source instanceof Uint8Array) || opts.source.length < plan.trainerBytes[rank]!)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `WeightSyncSender: source must be a Uint8Array of at least ${plan.trainerBytes[rank]} bytes (trainer rank ${rank}'s weights), or {cuda}`,
      );
    if (opts.source instanceof Uint8Array && opts.source.byteOffset % 4 !== 0)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'WeightSyncSender: source must start 4-byte aligned (bf16/fp32 views)',
      );
    if (!Array.isArray(opts.targets) || opts.targets.length !== plan.inference.ranks)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `WeightSyncSender: targets must list all ${plan.inference.ranks} inference ranks' buffers`,
      );
    for (const [d, t] of opts.targets.entries()) checkTarget('WeightSyncSender', plan, d, t);
    // The same buffers listed for two ranks: one of them would be written the other's weights.
    // (Buffers cannot say whose rank they are: listing every rank's own in rank order is the
    // caller's to get right.)
    for (const [d, t] of opts.targets.entries())
      for (let e = 0; e < d; e++)
        if (t.some((x: MrDesc) => opts.targets[e]!.some((y) => y.equals(x))))
          throw new TrellisError(
            'INVALID_ARGUMENT',
            `WeightSyncSender: targets[${d}] and targets[${e}] list the same buffers; targets[r] must be inference rank r's own (its receiver's descriptors())`,
          );
    const need = plan.ops
      .filter((o) => o.src === rank)
      .reduce((m, o) => Math.max(m, align(stageBytes(o))), 64);
    const staging = Math.max(opts.stagingBytes ?? 64 << 20, need);
    const slots = Math.max(1, Math.floor(staging / need));
    let handle: MrHandle;
    if (cuda) {
      // Staging on the device: the copies and the quantiser run there, and the engine moves it.
      const ptr = opts.device!.alloc(cuda.device, slots * need);
      try {
        handle = await opts.engine.registerMemory({
          cuda: { ptr, length: slots * need, device: cuda.device },
        });
      } catch (e) {
        opts.device!.free(cuda.device, ptr);
        throw e;
      }
    } else handle = await opts.engine.registerMemory(slots * need);
    const tx = new WeightSyncSender(
      opts.engine,
      plan,
      rank,
      cuda ?? (opts.source as Uint8Array),
      opts.targets,
      handle,
      need,
      slots,
      opts.immBase ?? DEFAULT_IMM_BASE,
    );
    tx.device = opts.device;
    return tx;
  }

  private device: WeightSyncDeviceOps | undefined;

  /** Bytes this rank writes per step. */
  get bytesPerStep(): number {
    return this.ops.reduce((n, o) => n + o.bytes, 0);
  }

  /**
   * Write inference rank `rank`'s weights into new buffers from the next step on: a rank that was
   * replaced (its process died and a new one took its place, with a new engine and receiver) gives
   * its {@link WeightSyncReceiver.descriptors} to every trainer, each calls this between steps, and
   * the new rank's first `expect` takes the version the group writes next. Throws
   * `INVALID_ARGUMENT` while a {@link sync} runs on this rank, for a rank outside the plan, or for
   * descriptors that are not two of that rank's size with one owner, or that are another
   * inference rank's buffers.
   */
  replaceTarget(rank: number, descriptors: readonly [MrDesc, MrDesc]): void {
    if (this.busy)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'WeightSyncSender.replaceTarget: a step is running on this rank; replace targets between steps',
      );
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.plan.inference.ranks)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `WeightSyncSender.replaceTarget: rank must be 0..${this.plan.inference.ranks - 1}, got ${rank}`,
      );
    checkTarget('WeightSyncSender.replaceTarget', this.plan, rank, descriptors);
    // Another rank's buffers (of the same size, so the checks above pass) would take this rank's
    // writes over the weights that rank serves.
    for (const [d, t] of this.targets.entries())
      if (d !== rank && t.some((x) => descriptors.some((y) => y.equals(x))))
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `WeightSyncSender.replaceTarget: those are inference rank ${d}'s buffers; give rank ${rank}'s own (its receiver's descriptors())`,
        );
    const owner = descriptors[0].owner;
    const peers = this.targetPeers.map((p, d) => (d === rank ? owner : p));
    // Resolved before anything changes: an owner this engine cannot reach is refused here.
    const group = this.engine.addPeerGroup(peers);
    this.targets[rank] = [descriptors[0], descriptors[1]];
    this.targetPeers[rank] = owner;
    this.group = group;
  }

  /**
   * The versions the inference ranks may serve, as far as this trainer knows: the last version it
   * synced, and any whose `sync` failed after its barrier went out (it may have reached some
   * ranks). Undefined until its first successful `sync`: then any version goes.
   */
  private mayServe: Set<number> | undefined;

  /**
   * Write this rank's part of step `step` into every inference rank's buffer for `version`, then
   * signal the step's barrier. Rejects on a failed write, the deadline (`timeoutMs`) or `signal`;
   * the inference ranks then keep their served weights. Rejects `INVALID_ARGUMENT` before anything
   * is written for a `step`, `version`, `timeoutMs` (an integer from 1 to 2^31 - 1), `signal` or
   * `onProgress` of the wrong kind, while another `sync` runs on this rank, and for a `version` that
   * skips one: after a successful `sync` of version `v` the next writes `v + 1` (or `v` again, a
   * retry) — version `v + 2` would go into the buffer the ranks serve; `CLOSED` after
   * {@link close}.
   */
  async sync(req: {
    step: number;
    version: number;
    timeoutMs?: number;
    signal?: AbortSignal;
    onProgress?: (p: SyncProgress) => void;
  }): Promise<SyncReport> {
    if (this.closed) throw new TrellisError('CLOSED', 'WeightSyncSender.sync: the sender is closed');
    checkStep('WeightSyncSender.sync', req, '{step, version, timeoutMs?, signal?, onProgress?}');
    if (!Number.isSafeInteger(req.version) || req.version < 1)
      throw invalid(`WeightSyncSender.sync: version must be an integer >= 1, got ${String(req.version)}`);
    const may = this.mayServe;
    if (may && ![...may].some((v) => req.version === v || req.version === v + 1)) {
      const served = [...may].sort((a, b) => a - b);
      throw invalid(
        `WeightSyncSender.sync: the inference ranks serve version ${served.join(' or ')} as far as this trainer knows; version ${req.version} would be written into buffers[${req.version % 2}], which they may be serving — sync version ${served.map((v) => v + 1).join(' or ')} next (or the served version again, retrying the step that switched them)`,
      );
    }
    if (this.busy)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'WeightSyncSender.sync: a step is already running on this rank',
      );
    this.busy = true;
    const t0 = performance.now();
    const deadline = req.timeoutMs === undefined ? undefined : t0 + req.timeoutMs;
    const abort = new AbortController();
    const onAbort = () => abort.abort();
    const ms = { total: 0, copy: 0, transform: 0, rdma: 0, barrier: 0 };
    const total = this.bytesPerStep;
    let done = 0;
    let writes = 0;
    let failure: TrellisError | undefined;
    let firstWrite = 0;
    let lastDone = 0;
    const inflight = new Set<Promise<void>>();
    let barrier = false;
    const left = () => (deadline === undefined ? undefined : Math.max(1, deadline - performance.now()));
    const stopped = new Promise<void>((resolve) =>
      abort.signal.addEventListener('abort', () => resolve(), { once: true }),
    );
    try {
      req.signal?.addEventListener('abort', onAbort, { once: true });
      if (req.signal?.aborted) throw new TrellisError('ABORTED', 'aborted by its signal');
      if (this.drain) await this.waitDrain(deadline, abort.signal);
      for (const op of this.ops) {
        if (failure) break;
        if (req.signal?.aborted) throw new TrellisError('ABORTED', 'aborted by its signal');
        const slot = await this.acquire(deadline, abort.signal);
        if (failure) {
          this.release(slot);
          break;
        }
        const base = slot * this.slotBytes;
        const s0 = performance.now();
        const dataBytes = this.stage(op, base);
        const s1 = performance.now();
        if (op.quant) ms.transform += s1 - s0;
        else ms.copy += s1 - s0;
        const dst = this.targets[op.dst]![req.version % 2]!;
        if (!firstWrite) firstWrite = performance.now();
        const parts = this.writes(op, base, dataBytes, dst, abort.signal, left());
        writes += parts.length;
        const p = Promise.all(parts).then(
          () => {
            done += op.bytes;
            lastDone = performance.now();
            req.onProgress?.({ step: req.step, bytesDone: done, bytesTotal: total });
          },
          (e: unknown) => {
            failure ??= e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e));
            abort.abort();
          },
        );
        const tracked = p.finally(() => {
          inflight.delete(tracked);
          this.release(slot);
        });
        inflight.add(tracked);
      }
      // Until every write settles — or one fails, or the caller aborts: writes posted to a hung rank
      // settle only at the engine deadline once aborted, and the step does not wait for them (the
      // next one does, before it stages anything: see `drain`).
      await Promise.race([Promise.all(inflight), stopped]);
      if (failure) throw failure;
      if (abort.signal.aborted) throw new TrellisError('ABORTED', 'aborted by its signal');
      ms.rdma = firstWrite ? lastDone - firstWrite : 0;
      const b0 = performance.now();
      barrier = true;
      // Every inference rank counts one barrier per trainer, whether or not this rank wrote to it.
      const sent = this.engine.submitBarrier({
        group: this.group,
        imm: stepImm(this.immBase, req.step),
        timeoutMs: left(),
        signal: abort.signal,
        spread: true,
      });
      const tracked = sent.then(
        () => {},
        (e: unknown) => {
          failure ??= e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e));
          abort.abort();
        },
      );
      inflight.add(tracked);
      await Promise.race([tracked, stopped]);
      if (failure) throw failure;
      if (abort.signal.aborted) throw new TrellisError('ABORTED', 'aborted by its signal');
      ms.barrier = performance.now() - b0;
    } catch (e) {
      // The first failed write is the cause, else what threw here (the deadline while waiting for
      // a staging slot, the caller's signal); what the abort below cuts off afterwards is not.
      const err = failure ?? (e as TrellisError);
      // Its barrier may have reached some inference ranks, which then serve this version.
      if (barrier) this.mayServe?.add(req.version);
      abort.abort();
      // A write that failed or was cut off may still be posted and reading its staging slot (a
      // hung rank's provider holds it until the engine deadline): the next step stages nothing
      // until every write of this one settled and the engine let go of everything sent to the
      // targets. This step rejects now — at its own deadline, its first failed write or its
      // signal — rather than at the engine's deadline.
      const writes = [...inflight];
      const drain = Promise.allSettled(writes)
        .then(() => Promise.allSettled(this.targetPeers.map((p) => this.engine.quiesce(p))))
        .then(() => {
          if (this.drain === drain) this.drain = undefined;
        });
      this.drain = drain;
      throw new TrellisError(
        err.code ?? 'INTERNAL',
        `weight sync step ${req.step} on trainer rank ${this.rank}: ${err.message}`,
        {
          cause: e,
        },
      );
    } finally {
      req.signal?.removeEventListener('abort', onAbort);
      this.busy = false;
    }
    ms.total = performance.now() - t0;
    this.mayServe = new Set([req.version]);
    return { step: req.step, version: req.version, bytes: done, writes, ms };
  }

  /** Copy or quantise the op's rows into staging at `base`, packed; returns the data bytes (scales follow). */
  private stage(op: PlanOp, base: number): number {
    const rows = op.box.r1 - op.box.r0;
    const w = op.box.c1 - op.box.c0;
    if (!(this.source instanceof Uint8Array)) return this.stageOnDevice(op, base, rows, w, this.source);
    const buf = this.staging.buffer!;
    const src = this.source;
    if (!op.quant) {
      const rowBytes = w * op.dstElemBytes;
      if (w === op.srcPitch) buf.set(src.subarray(op.srcOffset, op.srcOffset + rows * rowBytes), base);
      else
        for (let r = 0; r < rows; r++) {
          const at = op.srcOffset + r * op.srcPitch * op.srcElemBytes;
          buf.set(src.subarray(at, at + rowBytes), base + r * rowBytes);
        }
      return rows * rowBytes;
    }
    const data = rows * w;
    const u16 = new Uint16Array(src.buffer, src.byteOffset + op.srcOffset, (rows - 1) * op.srcPitch + w);
    const scales = new Float32Array(
      buf.buffer,
      buf.byteOffset + base + align4(data),
      rows * (w / op.quant.block),
    );
    quantizeRows(u16, 0, op.srcPitch, rows, w, op.quant.block, buf.subarray(base, base + data), scales);
    return data;
  }

  /** {@link stage} for a CUDA source: a packed row copy or the quantiser kernel, into device staging. */
  private stageOnDevice(op: PlanOp, base: number, rows: number, w: number, src: CudaMemory['cuda']): number {
    const dev = this.device!;
    const stagingPtr = this.staging.cuda!.ptr + BigInt(base);
    const from = src.ptr + BigInt(op.srcOffset);
    if (!op.quant) {
      const rowBytes = w * op.dstElemBytes;
      dev.copyRows(src.device, stagingPtr, from, op.srcPitch * op.srcElemBytes, rowBytes, rows);
      return rows * rowBytes;
    }
    const data = rows * w;
    dev.quantizeE4m3(
      src.device,
      from,
      0,
      op.srcPitch,
      rows,
      w,
      op.quant.block,
      stagingPtr,
      stagingPtr + BigInt(align4(data)),
    );
    return data;
  }

  /** The writes of one staged op: data rows (one write if contiguous at the receiver, else one page per row), then scales. */
  private writes(
    op: PlanOp,
    base: number,
    dataBytes: number,
    dst: MrDesc,
    signal: AbortSignal,
    timeoutMs: number | undefined,
  ): Promise<void>[] {
    const rows = op.box.r1 - op.box.r0;
    const w = op.box.c1 - op.box.c0;
    const out: Promise<void>[] = [];
    const strided = (srcOff: number, rowBytes: number, dstOff: number, dstPitchBytes: number) => {
      if (rows === 1 || rowBytes === dstPitchBytes)
        return this.engine.submitSingleWrite({
          src: this.staging,
          srcOffset: srcOff,
          length: rows * rowBytes,
          dst,
          dstOffset: dstOff,
          signal,
          timeoutMs,
        });
      const pages = this.pages(rows);
      return this.engine.submitPagedWrites({
        src: this.staging,
        srcPages: pages,
        srcStride: rowBytes,
        srcOffset: srcOff,
        dst,
        dstPages: pages,
        dstStride: dstPitchBytes,
        dstOffset: dstOff,
        pageBytes: rowBytes,
        signal,
        timeoutMs,
      });
    };
    out.push(strided(base, w * op.dstElemBytes, op.dstOffset, op.dstPitch * op.dstElemBytes));
    if (op.quant)
      out.push(
        strided(
          base + align4(dataBytes),
          (w / op.quant.block) * 4,
          op.quant.scaleOffset,
          op.quant.scalePitch * 4,
        ),
      );
    return out;
  }

  private pages(n: number): Uint32Array {
    let p = this.iota.get(n);
    if (!p) {
      p = Uint32Array.from({ length: n }, (_, i) => i);
      this.iota.set(n, p);
    }
    return p;
  }

  /** Wait for {@link drain} until `deadline` or `signal`: TIMEOUT / ABORTED naming why. */
  private waitDrain(deadline: number | undefined, signal: AbortSignal): Promise<void> {
    return bounded(
      this.drain!,
      deadline,
      signal,
      "deadline passed waiting for the previous step's writes to settle (a hung inference rank holds them until the engine deadline, opTimeoutMs; they read the staging this step reuses)",
    );
  }

  /** A free staging slot, waiting (first come, first served) until `deadline` or `signal`. */
  private acquire(deadline: number | undefined, signal: AbortSignal): Promise<number> {
    const s = this.freeSlots.pop();
    if (s !== undefined) return Promise.resolve(s);
    let gaveUp = false;
    let give!: (slot: number) => void;
    const got = new Promise<number>((resolve) => {
      give = resolve;
    });
    // A waiter that gave up declines, and `release` hands the slot to the next one.
    this.waiters.push(() => {
      if (gaveUp) return false;
      give(this.freeSlots.pop()!);
      return true;
    });
    return bounded(got, deadline, signal, 'deadline passed waiting for staging memory', () => {
      gaveUp = true;
    });
  }

  private release(slot: number): void {
    this.freeSlots.push(slot);
    while (this.waiters.length && !this.waiters.shift()!()) {}
  }

  private closed = false;

  /**
   * Unregister the staging memory (and free it on the device for a CUDA source); later
   * {@link sync} calls reject with `CLOSED`. Call it between steps.
   */
  async close(): Promise<void> {
    this.closed = true;
    if (!this.engine.closed) await this.staging.unregister().catch(() => {});
    const c = this.staging.cuda;
    if (c && this.device && !this.freed) {
      this.freed = true;
      this.device.free(c.device, c.ptr);
    }
  }
  private freed = false;
}

function align(n: number): number {
  return Math.ceil(n / 64) * 64;
}
function align4(n: number): number {
  return Math.ceil(n / 4) * 4;
}

/** Staging bytes an op needs: packed data rows, then its scales. */
function stageBytes(op: PlanOp): number {
  const rows = op.box.r1 - op.box.r0;
  const w = op.box.c1 - op.box.c0;
  return align4(rows * w * op.dstElemBytes) + (op.quant ? rows * (w / op.quant.block) * 4 : 0);
}

/** One inference rank's pair of buffer descriptors: two MrDescs of one owner, each big enough. */
function checkTarget(op: string, plan: WeightSyncPlan, rank: number, t: unknown): void {
  const isDesc = (d: unknown) =>
    d !== null && typeof d === 'object' && 'owner' in d && typeof (d as MrDesc).length === 'number';
  if (!Array.isArray(t) || t.length !== 2 || !t.every(isDesc))
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: inference rank ${rank}'s target must be its two buffer descriptors (WeightSyncReceiver.descriptors())`,
    );
  const [a, b] = t as [MrDesc, MrDesc];
  if (a.owner.toString() !== b.owner.toString())
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: inference rank ${rank}'s two buffers belong to different engines (${a.owner} and ${b.owner})`,
    );
  if (a.nics.length === 0 || b.nics.length === 0)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: inference rank ${rank}'s buffers must be registered with {remote: true} (their descriptors carry no keys)`,
    );
  if (
    a.toString() === b.toString() ||
    a.nics.some((k, i) => k.rkey === b.nics[i]?.rkey && k.addr === b.nics[i]?.addr)
  )
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: inference rank ${rank}'s two buffers are the same region; give both of WeightSyncReceiver.descriptors() (version v is written into buffer v % 2 while the other is served)`,
    );
  for (const desc of [a, b])
    if (desc.length < plan.inferenceBytes[rank]!)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `${op}: inference rank ${rank}'s buffer is ${desc.length} bytes; the plan needs ${plan.inferenceBytes[rank]}`,
      );
}

/**
 * `p`, or a `TIMEOUT` (with `timeoutMessage`) at `deadline` or an `ABORTED` by `signal`, whichever
 * comes first; `onGiveUp` runs when it gives up. The timer and listener are gone once it settles.
 */
async function bounded<T>(
  p: Promise<T>,
  deadline: number | undefined,
  signal: AbortSignal,
  timeoutMessage: string,
  onGiveUp?: () => void,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  const gaveUp = new Promise<never>((_, reject) => {
    const giveUp = (e: TrellisError) => {
      onGiveUp?.();
      reject(e);
    };
    if (deadline !== undefined)
      timer = setTimeout(
        () => giveUp(new TrellisError('TIMEOUT', timeoutMessage)),
        Math.max(1, deadline - performance.now()),
      );
    onAbort = () => giveUp(new TrellisError('ABORTED', 'the step was aborted'));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([p, gaveUp]);
  } finally {
    if (timer) clearTimeout(timer);
    signal.removeEventListener('abort', onAbort!);
  }
}
