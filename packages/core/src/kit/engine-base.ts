// EngineBase: the JS half every engine shares — validation of every request into a plan, regions
// in parts and NIC failover, exactly-once settlement with deadlines and aborts, registrations,
// receive pools, immediate counters, peer liveness and stats. Backends implement the abstract
// hooks (post, registerRegion, send, ...); nothing here touches a NIC.
import { describe, type NetAddr } from '../addr.js';
import { MrDesc } from '../desc.js';
import { CallSite, invalid, TrellisError } from '../errors.js';
import { countImms, lanesBetween } from '../imms.js';
import type {
  BarrierRequest,
  BatchOptions,
  BatchResult,
  EngineLimits,
  EngineStats,
  EventStats,
  FailoverOptions,
  GpuStats,
  HostLaneStats,
  HostMemory,
  ImmCounter,
  ImmRequest,
  LibraryInfo,
  MemorySource,
  MrHandle,
  NicStats,
  OpOptions,
  PagedWritesRequest,
  PeerGroup,
  PreparedPostOptions,
  PreparedWrites,
  PreparedWritesRequest,
  RecvMessage,
  RecvOptions,
  RegisterOptions,
  ScatterRequest,
  SingleWriteRequest,
  TransferEngine,
  TransferRequest,
  UvmWatcher,
  UvmWatcherCallback,
  WaitOptions,
} from '../types.js';
import { ImmCounterTable } from './counters.js';
import { LiveOps, MAX_OP_ID } from './live-ops.js';
import { PendingOp } from './pending-op.js';
import { RecvPool, Region, type RegionAlloc } from './region.js';
import { touchesStaged } from './staging.js';
import { type Timer, Timers } from './timers.js';
import {
  FAILOVER_ACK,
  FAILOVER_IMM,
  type FailoverHost,
  noFailoverStats,
  TwoPhaseWriter,
} from './two-phase.js';
import { callUser } from './user.js';
import {
  BATCH_OPTION_FIELDS,
  checkCount,
  checkFields,
  checkImm,
  checkOpOptions,
  checkPeer,
  checkPrepared,
  checkSend,
  OP_OPTION_FIELDS,
  optionFields,
  type Plan,
  planBarrier,
  planImm,
  planPaged,
  planPrepared,
  planScatter,
  planSingle,
  type ScatterPlan,
  type ScatterPlanTarget,
  type SinglePlan,
  show,
  type ValidationContext,
} from './validate.js';

const REGISTER_FIELDS = optionFields('remote');
/** How long a peer whose every path failover gave up has to answer a probe. */
const PATHS_PROBE_MS = 2000;
const RECV_FIELDS = optionFields('maxBytes', 'count', 'signal', 'onError');

const DEFAULT_LIMITS: EngineLimits = {
  maxMessageBytes: 64 * 1024,
  maxRegionBytes: Number.MAX_SAFE_INTEGER,
  maxMrBytes: Number.MAX_SAFE_INTEGER,
};

/** The most `limits.maxMessageBytes` may be: every engine keeps receive buffers of that size posted. */
export const MAX_MESSAGE_BYTES = 4 << 20;
/** The least `limits.maxMrBytes` may be (one page: a region is cut into parts of this size). */
export const MIN_MR_BYTES = 4096;

/**
 * `limits` checked field by field (createEngine's `INVALID_ARGUMENT` naming the field): a receive
 * buffer size that would allocate gigabytes, or a part size that cuts a region into millions of
 * registrations, is refused here rather than hanging the engine. @internal
 */
export function checkLimits(limits: unknown): Partial<EngineLimits> {
  if (limits === undefined) return {};
  if (limits === null || typeof limits !== 'object' || Array.isArray(limits))
    throw new TrellisError('INVALID_ARGUMENT', `createEngine: limits must be an object, got ${show(limits)}`);
  const ranges: Record<keyof EngineLimits, [number, number]> = {
    maxMessageBytes: [1, MAX_MESSAGE_BYTES],
    maxRegionBytes: [1, Number.MAX_SAFE_INTEGER],
    maxMrBytes: [MIN_MR_BYTES, Number.MAX_SAFE_INTEGER],
  };
  for (const [k, v] of Object.entries(limits)) {
    const range = ranges[k as keyof EngineLimits];
    if (!range)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: limits has no field ${show(k)} (it takes ${Object.keys(ranges).join(', ')})`,
      );
    if (v === undefined) continue;
    const [lo, hi] = range;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < lo || v > hi)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: limits.${k} must be an integer in ${lo}..${hi}, got ${show(v)}`,
      );
  }
  return limits as Partial<EngineLimits>;
}

/**
 * The JS side every backend shares: validation at the edge, operation bookkeeping (exactly-once
 * settlement, deadlines, abort, close), regions, counters, peer groups and stats. A backend
 * implements the `protected abstract` methods — posting plans, sends, receives, cancellation — and
 * nothing else.
 */
/** A path a backend runs a plan on whole, outside the NICs' work requests. @internal */
export type GpuPath = 'lane' | 'staged';

export abstract class EngineBase implements TransferEngine, ValidationContext {
  abstract readonly kind: string;
  abstract readonly address: NetAddr;
  abstract readonly nics: number;
  readonly limits: EngineLimits;
  closed = false;

  /**
   * @internal The engine's own timers (operation deadlines, wait timeouts, probe back-offs,
   * heartbeats), which its polling loops fire as well as the event loop.
   */
  readonly timers = new Timers();
  protected readonly counters = new ImmCounterTable(this.timers);
  private readonly regions = new Set<Region>();
  private readonly ops = new LiveOps();
  private readonly groups = new Map<number, PeerGroup>();
  private readonly pools = new Set<RecvPool>();
  private readonly watchers = new Set<UvmWatcher>();
  private nextOpId = 1;
  private nextGroupId = 1;
  private counts = { submitted: 0, completed: 0, failed: 0, settledPosted: 0 };
  private closing: Promise<void> | undefined;
  protected recvDropped = 0;

  constructor(limits: Partial<EngineLimits> = {}) {
    this.limits = { ...DEFAULT_LIMITS, ...checkLimits(limits) };
  }

  // -- NIC failover -------------------------------------------------------------------------------

  /** NIC health and exactly-once re-posting, when the engine was created with `failover`. @internal */
  protected failover: TwoPhaseWriter | undefined;

  /** Turn failover on (backends call it from their options; `undefined`/`false`: off). */
  protected configureFailover(opts: FailoverOptions | boolean | undefined): void {
    if (opts === undefined || opts === false) return;
    // The writer checks the options (failoverSettings): 'yes' or {foo: 1} is refused there.
    this.failover = new TwoPhaseWriter(this.failoverHost(), opts === true ? {} : opts);
  }

  private failoverHost(): FailoverHost {
    return {
      nics: this.nics,
      lanesTo: (p) => this.lanesTo(p),
      internalOp: (site, peer, regions) => this.internalOp(site, peer, regions),
      postPlan: (plan, op) => this.post(plan, op),
      postControl: (peer, lane, bytes, op) => this.postControl(peer, lane, bytes, op),
      arrive: (imm, count) => {
        this.counters.arrive(imm, count);
        this.controlArrived(imm, count);
      },
      after: (ms, fn) => {
        const t = this.timers.after(ms, fn);
        return () => this.timers.cancel(t);
      },
      allPathsDown: (peer) => {
        void this.probePeer(peer, PATHS_PROBE_MS).then((alive) => {
          if (alive) this.failover?.pathsBack(peer);
          else if (!this.closed && !this.isLost(peer))
            this.markLost(
              peer,
              new TrellisError(
                'PEER_LOST',
                `the peer answered no probe on any NIC after failover gave up every path to it (attempts timed out or connections reset)`,
                { peer: peer.toString() },
              ),
            );
        });
      },
    };
  }

  /** The engine-wide deadline of an operation without its own (native engines' `opTimeoutMs`), if any. */
  protected engineDeadlineMs(): number | undefined {
    return undefined;
  }

  /** Throw if this engine cannot react to arrivals of `imm` (native: an open port counts them). */
  protected checkReaction(_imm: number, _op: string): void {}

  /** Immediates raised by a control message were counted (backends with native reactions count them too). */
  protected controlArrived(_imm: number, _count: number): void {}

  /**
   * Send an engine control message (not a user's: it never reaches receive pools) to `peer` on
   * NIC `lane`. Backends with failover support implement it.
   */
  protected postControl(_peer: NetAddr, _lane: number, _bytes: Uint8Array, op: PendingOp): void {
    op.fail(new TrellisError('UNSUPPORTED', 'this engine has no control messages'));
  }

  /** An engine control message of the base's (failover) arrived; false if it is not one. */
  /** @internal */
  onBaseControl(from: NetAddr, bytes: Uint8Array): boolean {
    if (bytes[0] !== FAILOVER_IMM && bytes[0] !== FAILOVER_ACK) return false;
    // Counted whether or not this engine fails over itself: the sender does.
    this.twoPhase().onMessage(from, bytes);
    return true;
  }

  /**
   * The path of every submitted plan, in this order and only here:
   * 1. a source registered in parts → the two-phase writer (work cut at part boundaries, the
   *    immediates raised after the data);
   * 2. a path the backend runs whole, outside the NICs' work requests ({@link gpuPath}: the
   *    same-host lane, staged GPU copies) → {@link postGpu};
   * 3. failover on and the plan its kind → the failover writer (re-posts on NICs that are up);
   * 4. the backend's {@link post}.
   */
  private route(p: Plan, op: PendingOp): void {
    if (!this.routeAround(p, op)) this.post(p, op);
  }

  /** Steps 1–3 of {@link route}: true when one of them took the plan, false when it is {@link post}'s. */
  private routeAround(p: Plan, op: PendingOp): boolean {
    if (inParts(p)) this.twoPhase().start(p, op, (p as unknown as { src: Region }).src.parted);
    else {
      const gpu = this.gpuPath(p);
      if (gpu) this.postGpu(gpu, p, op);
      else if (this.failover?.handles(p)) {
        // Failover's operation is JavaScript's alone (its shares are internal operations): the
        // engine deadline, which bounds what the backend posts, bounds it here.
        const d = this.engineDeadlineMs();
        if (!op.hasDeadline && d !== undefined)
          op.arm({ timeoutMs: d }, `the engine deadline (opTimeoutMs ${d}) passed`);
        this.failover.start(p, op);
      } else return false;
    }
    return true;
  }

  /**
   * Post the plans of a batch that the routing gives to {@link post}, in order. By default one
   * {@link post} each; a native backend packs them into one call into its addon. A plan that cannot
   * be posted fails its own op (never the others').
   */
  protected postMany(plans: readonly Plan[], ops: readonly PendingOp[]): void {
    for (let i = 0; i < plans.length; i++) this.guard(ops[i]!, () => this.post(plans[i]!, ops[i]!));
  }

  /**
   * A path the backend runs `plan` on whole, or undefined for the NICs. The base knows one: staged
   * GPU regions, which move through their own protocol (never failover's).
   */
  protected gpuPath(plan: Plan): GpuPath | undefined {
    return touchesStaged(plan) ? 'staged' : undefined;
  }

  /** Run `plan` on the path {@link gpuPath} named; settle `op` once. */
  protected postGpu(_path: GpuPath, plan: Plan, op: PendingOp): void {
    this.post(plan, op);
  }

  /** @internal Called by {@link PendingOp.requestCancel}. */
  cancelRequested(op: PendingOp, reason: TrellisError): void {
    if (this.failover?.cancel(op)) return;
    if (this.partsWriter?.cancel(op)) return;
    this.cancelOp(op, reason);
  }

  private partsWriter: TwoPhaseWriter | undefined;

  /** The two-phase writer for regions in parts: failover's when it is on, else one without failover. */
  private twoPhase(): TwoPhaseWriter {
    if (this.failover) return this.failover;
    this.partsWriter ??= new TwoPhaseWriter(this.failoverHost(), undefined);
    return this.partsWriter;
  }

  // -- backend hooks -----------------------------------------------------------------------------

  /** Allocate or pin `src` and register it on every NIC. */
  protected abstract registerRegion(src: MemorySource, remote: boolean, op: string): Promise<RegionAlloc>;
  /** Deregister; called only when no pending local operation uses the region. */
  protected abstract deregisterRegion(key: unknown): Promise<void>;
  /** Throw `UNKNOWN_PEER` (or `PEER_LOST`) if `peer` cannot be reached; called before posting. */
  protected abstract checkReachable(peer: NetAddr, op: string): void;
  /** Post a validated plan; settle `op` when all its work requests finished. */
  protected abstract post(plan: Plan, op: PendingOp): void;
  /**
   * Post `plan` as `op` the first time `watcher` reads at least `value`; cancelling `op` before
   * then settles it with nothing posted; closing the watcher fails it with ABORTED.
   */
  protected abstract postOnWatch(plan: Plan, op: PendingOp, watcher: UvmWatcher, value: bigint): void;
  /**
   * Post `plan` as `op` the first time the arrivals of `imm` counted here reach `total`;
   * cancelling `op` before then settles it with nothing posted.
   */
  protected abstract postOnImm(plan: Plan, op: PendingOp, imm: number, total: number): void;
  /** Post a send; settle `op` once delivered. */
  protected abstract postSend(peer: NetAddr, data: Uint8Array, op: PendingOp): void;
  /** Start delivering messages into `pool`. */
  protected abstract postRecvs(pool: RecvPool): void;
  /** Withdraw the pool's buffers; end it when none can be written any more. */
  protected abstract cancelRecvs(pool: RecvPool): void;
  /**
   * Cancel `op`: drop its work requests that were not posted, and fail it with `reason` only once
   * none of them can still touch memory.
   */
  abstract cancelOp(op: PendingOp, reason: TrellisError): void;
  /** Create a watcher. */
  protected abstract createWatcher(
    onChange: UvmWatcherCallback,
    onClose: (w: UvmWatcher) => void,
  ): UvmWatcher;
  /** Tear the backend down; pending operations are failed by the base afterwards. */
  protected abstract shutdown(): Promise<void>;
  /** Per-NIC counters. */
  protected abstract nicStats(): NicStats[];

  // -- ValidationContext ------------------------------------------------------------------------

  get maxMessageBytes(): number {
    return this.limits.maxMessageBytes;
  }

  checkHandle(h: MrHandle, op: string, field: string): number {
    if (!(h instanceof Region)) {
      throw invalid(
        'INVALID_ARGUMENT',
        op,
        `${field} must be an MrHandle from registerMemory(), got ${describe(h)}`,
      );
    }
    if (!this.regions.has(h)) {
      throw invalid(
        'INVALID_DESCRIPTOR',
        op,
        h.registered
          ? `${field} was registered with another engine; register it with this one`
          : `${field} was unregistered`,
      );
    }
    h.checkAlive(op);
    return h.length;
  }

  group(g: PeerGroup): PeerGroup | undefined {
    const mine = this.groups.get(g.id);
    return mine === g ? mine : undefined;
  }

  // -- public API -------------------------------------------------------------------------------

  async registerMemory(src: MemorySource, opts: RegisterOptions = {}): Promise<MrHandle> {
    const op = 'registerMemory';
    this.throwIfClosed(op);
    if (typeof opts !== 'object' || opts === null)
      throw invalid('INVALID_ARGUMENT', op, 'options must be an object');
    checkFields(op, opts, REGISTER_FIELDS, 'its options');
    if (opts.remote !== undefined && typeof opts.remote !== 'boolean')
      throw invalid('INVALID_ARGUMENT', op, 'remote must be a boolean');
    const remote = opts.remote ?? false;
    let length: number;
    if (typeof src === 'number') {
      length = checkCount(op, 'size', src);
    } else if (src instanceof ArrayBuffer || src instanceof SharedArrayBuffer) {
      length = src.byteLength;
      if (length === 0 && src instanceof ArrayBuffer && isDetached(src)) {
        throw invalid(
          'DETACHED_BUFFER',
          op,
          'the ArrayBuffer is detached (it was transferred); register a live buffer',
        );
      }
      if (isResizable(src)) throw resizableError(op);
    } else if (ArrayBuffer.isView(src)) {
      length = src.byteLength;
      if (src.buffer instanceof ArrayBuffer && isDetached(src.buffer)) {
        throw invalid(
          'DETACHED_BUFFER',
          op,
          "the view's ArrayBuffer is detached (it was transferred); register a live buffer",
        );
      }
      if (isResizable(src.buffer)) throw resizableError(op);
    } else if (typeof src === 'object' && src !== null && 'cuda' in src) {
      const c = (src as { cuda: unknown }).cuda as { ptr?: unknown; length?: unknown; device?: unknown };
      if (typeof c !== 'object' || c === null)
        throw invalid('INVALID_ARGUMENT', op, 'cuda must be an object {ptr, length, device}');
      if (typeof c.ptr !== 'bigint' || c.ptr <= 0n || c.ptr >= 1n << 64n)
        throw invalid(
          'INVALID_ARGUMENT',
          op,
          `cuda.ptr must be a non-zero device address as a bigint, got ${describe(c.ptr)}`,
        );
      if (!Number.isInteger(c.device) || (c.device as number) < 0)
        throw invalid(
          'INVALID_ARGUMENT',
          op,
          `cuda.device must be a CUDA device ordinal (an integer >= 0), got ${describe(c.device)}`,
        );
      length = checkCount(op, 'cuda.length', c.length);
      if (length === 0) throw invalid('INVALID_ARGUMENT', op, 'cuda.length must be at least 1');
    } else {
      throw invalid(
        'INVALID_ARGUMENT',
        op,
        `src must be a byte count, an ArrayBuffer, a SharedArrayBuffer, a typed array or {cuda}, got ${describe(src)}`,
      );
    }
    if (length > this.limits.maxRegionBytes) {
      throw invalid(
        'OUT_OF_RANGE',
        op,
        `region of ${length} bytes exceeds this engine's maxRegionBytes ${this.limits.maxRegionBytes}`,
      );
    }
    if (length > this.limits.maxMrBytes && !(typeof src === 'object' && src !== null && 'cuda' in src))
      return this.registerParts(src as number | HostMemory, length, remote, op);
    const a = await this.registerRegion(src, remote, op);
    if (this.closed) {
      await this.deregisterRegion(a.key);
      throw new TrellisError('CLOSED', `${op}: the engine was closed during registration`, { op });
    }
    const region = new Region(this, a.desc, a.length, a.bytes, remote, a.key, src, a.path ?? 'host');
    this.regions.add(region);
    return region;
  }

  /**
   * Host memory larger than the provider registers at once: one buffer, registered in parts of
   * `maxMrBytes`; one handle and one descriptor (listing every part's keys) for the whole.
   */
  private async registerParts(
    src: number | HostMemory,
    length: number,
    remote: boolean,
    op: string,
  ): Promise<MrHandle> {
    const M = this.limits.maxMrBytes;
    const view =
      typeof src === 'number'
        ? this.allocBytes(length)
        : src instanceof ArrayBuffer || src instanceof SharedArrayBuffer
          ? new Uint8Array(src)
          : new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    const allocs: RegionAlloc[] = [];
    try {
      for (let at = 0; at < length; at += M)
        allocs.push(await this.registerRegion(view.subarray(at, Math.min(length, at + M)), remote, op));
      if (this.closed)
        throw new TrellisError('CLOSED', `${op}: the engine was closed during registration`, { op });
    } catch (e) {
      for (const a of allocs) await this.deregisterRegion(a.key).catch(() => {});
      throw e;
    }
    const parts = allocs.map(
      (a) => new Region(this, a.desc, a.length, a.bytes, remote, a.key, a.bytes, a.path ?? 'host'),
    );
    const first = allocs[0]!.desc;
    const desc = new MrDesc(this.address, first.base, length, first.nics, false, {
      bytes: M,
      keys: allocs.slice(1).map((a) => a.desc.nics),
    });
    const region = new Region(this, desc, length, view, remote, parts, src, 'host', {
      partBytes: M,
      partRegions: parts,
    });
    this.regions.add(region);
    return region;
  }

  /** Host bytes for a region the engine allocates (native backends: page-aligned, off the JS heap). */
  protected allocBytes(length: number): Uint8Array {
    return new Uint8Array(length);
  }

  /** @internal Called by {@link Region.unregister}. */
  async unregister(r: Region): Promise<void> {
    if (!this.regions.has(r)) return;
    this.regions.delete(r);
    r.registered = false;
    await r.idle();
    if (this.closed) return;
    if (r.parted) for (const p of r.parted.partRegions) await this.deregisterRegion((p as Region).key);
    else await this.deregisterRegion(r.key);
  }

  submitSend(peer: NetAddr, data: Uint8Array, opts: OpOptions = {}): Promise<void> {
    const site = CallSite.of('submitSend');
    try {
      this.throwIfClosed(site.op);
      const p = checkSend(this, peer, data, opts);
      this.checkLive(p, site.op);
      this.checkReachable(p, site.op);
      const op = this.begin(site, p, [], opts, [p]);
      this.guard(op, () => this.postSend(p, data.slice(), op));
      return op.promise;
    } catch (e) {
      return Promise.reject(site.attach(e));
    }
  }

  submitRecvs(opts: RecvOptions, onRecv: (msg: RecvMessage) => void): Promise<void> {
    const site = CallSite.of('submitRecvs');
    try {
      this.throwIfClosed(site.op);
      if (typeof opts !== 'object' || opts === null)
        throw invalid('INVALID_ARGUMENT', site.op, 'options must be an object');
      checkFields(site.op, opts, RECV_FIELDS, 'its options');
      const maxBytes = checkCount(site.op, 'maxBytes', opts.maxBytes);
      const count = checkCount(site.op, 'count', opts.count);
      if (maxBytes > this.limits.maxMessageBytes) {
        throw invalid(
          'INVALID_ARGUMENT',
          site.op,
          `maxBytes ${maxBytes} exceeds maxMessageBytes ${this.limits.maxMessageBytes}`,
        );
      }
      if (count < 1) throw invalid('INVALID_ARGUMENT', site.op, 'count must be at least 1');
      if (typeof onRecv !== 'function')
        throw invalid('INVALID_ARGUMENT', site.op, 'onRecv must be a function');
      if (opts.onError !== undefined && typeof opts.onError !== 'function')
        throw invalid('INVALID_ARGUMENT', site.op, 'onError must be a function');
      checkOpOptions(site.op, { signal: opts.signal });
      const pool = new RecvPool(maxBytes, count, onRecv, opts.onError);
      if (opts.signal?.aborted) {
        pool.end();
        return pool.promise;
      }
      this.pools.add(pool);
      pool.promise.then(
        () => this.pools.delete(pool),
        () => this.pools.delete(pool),
      );
      opts.signal?.addEventListener('abort', () => this.cancelRecvs(pool), { once: true });
      this.postRecvs(pool);
      return pool.promise;
    } catch (e) {
      return Promise.reject(site.attach(e));
    }
  }

  submitSingleWrite(req: SingleWriteRequest): Promise<void> {
    return this.submit('submitSingleWrite', req, () => planSingle(this, req));
  }
  submitPagedWrites(req: PagedWritesRequest): Promise<void> {
    return this.submit('submitPagedWrites', req, () => planPaged(this, req));
  }
  submitScatter(req: ScatterRequest): Promise<void> {
    return this.submit('submitScatter', req, () => planScatter(this, req));
  }
  submitBarrier(req: BarrierRequest): Promise<void> {
    return this.submit('submitBarrier', req, () => planBarrier(this, req));
  }
  submitImm(req: ImmRequest): Promise<void> {
    return this.submit('submitImm', req, () => planImm(this, req));
  }

  submitBatch(requests: readonly TransferRequest[], opts: BatchOptions = {}): Promise<BatchResult> {
    const site = CallSite.of('submitBatch');
    try {
      const name = site.op;
      this.throwIfClosed(name);
      if (!Array.isArray(requests))
        throw invalid(
          'INVALID_ARGUMENT',
          name,
          `requests must be an array of TransferRequest, got ${describe(requests)}`,
        );
      if (typeof opts !== 'object' || opts === null)
        throw invalid('INVALID_ARGUMENT', name, `opts must be an object, got ${describe(opts)}`);
      checkOpOptions(name, opts);
      checkFields(name, opts, BATCH_OPTION_FIELDS, 'the batch options (opts)');
      if (opts.mergeWrites !== undefined && typeof opts.mergeWrites !== 'boolean')
        throw invalid(
          'INVALID_ARGUMENT',
          name,
          `opts.mergeWrites must be a boolean, got ${describe(opts.mergeWrites)}`,
        );
      // Everything is checked before anything is posted: one bad request refuses the batch.
      const n = requests.length;
      // A peer known lost or unreachable is not bad input: it costs only its own requests.
      const plans = new Array<Plan>(n);
      const peersOf = new Array<NetAddr[]>(n);
      const unreachable = new Array<TrellisError | undefined>(n);
      // Fields are checked on the first request of each kind (the hot path of small writes pays
      // for no more; requests of one kind are made by one piece of code).
      let fieldsChecked = '';
      for (let i = 0; i < n; i++) {
        const r = requests[i];
        try {
          if (typeof r !== 'object' || r === null)
            throw invalid(
              'INVALID_ARGUMENT',
              name,
              `expected a TransferRequest with a kind, got ${describe(r)}`,
            );
          const first = !fieldsChecked.includes(`${r.kind};`);
          if (first) fieldsChecked += `${r.kind};`;
          const p = this.planRequest(r, name, first);
          this.checkPlanInput(p, name);
          plans[i] = p;
          peersOf[i] = planPeers(p);
        } catch (e) {
          throw batchItemError(e, i, r);
        }
        try {
          this.checkPeers(peersOf[i]!, name);
        } catch (e) {
          unreachable[i] =
            e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e), { cause: e });
        }
      }
      if (n === 0) return Promise.resolve({ failed: 0, errors: [] });
      return new Promise<BatchResult>((resolve) => {
        const errors = new Array<TrellisError | undefined>(n).fill(undefined);
        let left = n;
        let failed = 0;
        // Plain writes with no options of their own that share a source, a destination and an
        // immediate travel as one operation each group (see mergeWrites), unless mergeWrites: false.
        const groups =
          n > 1 && opts.mergeWrites !== false ? mergeWrites(requests, plans, unreachable) : undefined;
        // What is posted, in request order (a group at its first member's place): its plan, its op
        // and the index of its (first) request.
        const posts: Array<{ plan: Plan; op: PendingOp; i: number }> = [];
        for (let i = 0; i < n; i++) {
          const g = groups ? groups.of[i]! : -1;
          if (g >= 0) {
            const members = groups!.members[g]!;
            if (members[0] !== i) continue;
            const plan = groupPlan(plans, members);
            const op = this.begin(
              site,
              plan.targets[0]!.peer,
              [plan.src as Region],
              opts,
              peersOf[i]!,
              (err) => {
                if (err) {
                  for (const m of members) errors[m] = memberError(err, members.length);
                  failed += members.length;
                }
                left -= members.length;
                if (left === 0) resolve({ failed, errors });
              },
              members.length,
            );
            posts.push({ plan, op, i });
            continue;
          }
          const r = requests[i]!;
          const own =
            r.signal === undefined && r.timeoutMs === undefined
              ? opts
              : { signal: r.signal ?? opts.signal, timeoutMs: r.timeoutMs ?? opts.timeoutMs };
          const peers = peersOf[i]!;
          const op = this.begin(
            site,
            peers.length === 1 ? peers[0] : undefined,
            planRegions(plans[i]!),
            own,
            peers,
            (err) => {
              if (err) {
                errors[i] = err;
                failed++;
              }
              if (--left === 0) resolve({ failed, errors });
            },
          );
          posts.push({ plan: plans[i]!, op, i });
        }
        // Plans another path takes (regions in parts, GPU paths, failover) go there one by one;
        // the rest are the backend's, posted together.
        const mine: Plan[] = [];
        const mineOps: PendingOp[] = [];
        for (const { plan: p, op, i } of posts) {
          // A group's members are all reachable (mergeWrites takes no other).
          const lost = unreachable[i];
          if (lost) op.fail(lost);
          else if (op.cancelReason) op.fail(op.cancelReason);
          else {
            // As guard(), without a closure per request.
            let routed = false;
            try {
              routed = this.routeAround(p, op);
            } catch (e) {
              failUnposted(op, e);
              continue;
            }
            if (!routed && !op.settled) {
              mine.push(p);
              mineOps.push(op);
            }
          }
        }
        if (mine.length) this.postMany(mine, mineOps);
      });
    } catch (e) {
      return Promise.reject(site.attach(e));
    }
  }

  prepareWrites(req: PreparedWritesRequest): PreparedWrites {
    this.throwIfClosed('prepareWrites');
    const t = checkPrepared(this, req);
    // Each post starts on the lane after the last one's last write, so posts of fewer writes than
    // NICs still spread over all of them.
    let lane0 = 0;
    const post = (writes: Float64Array | readonly number[], opts: PreparedPostOptions = {}): Promise<void> =>
      this.submit('PreparedWrites.post', opts, () => {
        const p = planPrepared(this, t, writes, opts, lane0);
        lane0 = (lane0 + p.targets.length) % t.lanes;
        return p;
      });
    return Object.freeze({ src: t.src, dst: t.dst, imm: t.imm, post });
  }

  /** The plan of a request of any kind (as its own `submit*` would make it). */
  private planRequest(request: TransferRequest, op: string, keys = true): Plan {
    switch (request.kind) {
      case 'single':
        return planSingle(this, request, op, keys);
      case 'paged':
        return planPaged(this, request, op, keys);
      case 'scatter':
        return planScatter(this, request, op, keys);
      case 'barrier':
        return planBarrier(this, request, op, keys);
      case 'imm':
        return planImm(this, request, op, keys);
      default:
        throw invalid(
          'INVALID_ARGUMENT',
          op,
          `unknown request kind ${JSON.stringify((request as { kind: unknown }).kind)} (one of single, paged, scatter, barrier, imm)`,
        );
    }
  }

  /** What every submit checks of a plan before anything is posted; returns its peers. */
  private checkPlan(p: Plan, name: string): NetAddr[] {
    const peers = planPeers(p);
    this.checkPeers(peers, name);
    this.checkPlanInput(p, name);
    return peers;
  }

  /** Each peer is neither lost nor unreachable (PEER_LOST, UNKNOWN_PEER). */
  private checkPeers(peers: readonly NetAddr[], name: string): void {
    for (const peer of peers) this.checkLive(peer, name);
    for (const peer of peers) this.checkReachable(peer, name);
  }

  /** The combinations of regions no path can carry. */
  private checkPlanInput(p: Plan, name: string): void {
    if (inParts(p) && touchesStaged(p))
      throw invalid(
        'UNSUPPORTED',
        name,
        'a staged GPU region cannot be written to or from a region registered in parts (over limits.maxMrBytes)',
      );
  }

  submitOnWatch(watcher: UvmWatcher, value: bigint, request: TransferRequest): Promise<void> {
    return this.submitArmed(
      'submitOnWatch',
      request,
      (op) => {
        if (!this.watchers.has(watcher))
          throw invalid(
            'INVALID_ARGUMENT',
            op,
            'watcher must be a live watcher of this engine (from its allocUvmWatcher, not closed)',
          );
        if (typeof value !== 'bigint' || value < 1n || value >= 1n << 64n)
          throw invalid(
            'INVALID_ARGUMENT',
            op,
            `value must be a bigint in 1..2^64-1, got ${typeof value === 'bigint' ? `${value}n` : describe(value)}`,
          );
      },
      (p, pending) => this.postOnWatch(p, pending, watcher, value),
    );
  }

  submitOnImm(imm: number, total: number, request: TransferRequest): Promise<void> {
    return this.submitArmed(
      'submitOnImm',
      request,
      (op) => {
        checkImm(op, imm, true);
        this.checkReaction(imm, op);
        if (typeof total !== 'number' || !Number.isSafeInteger(total) || total < 1)
          throw invalid(
            'INVALID_ARGUMENT',
            op,
            `total must be an integer >= 1 (arrivals of imm ${imm} since the engine started, as immCounter(${imm}).total counts them), got ${typeof total === 'number' ? total : describe(total)}`,
          );
      },
      (p, pending) => this.postOnImm(p, pending, imm, total),
    );
  }

  /** A triggered operation: its own checks, then the request planned as a submit would, then armed. */
  private submitArmed(
    name: string,
    request: TransferRequest,
    check: (op: string) => void,
    arm: (p: Plan, pending: PendingOp) => void,
  ): Promise<void> {
    const site = CallSite.of(name);
    try {
      const op = site.op;
      this.throwIfClosed(op);
      check(op);
      if (typeof request !== 'object' || request === null)
        throw invalid('INVALID_ARGUMENT', op, 'request must be a TransferRequest with a kind');
      const p = this.planRequest(request, op);
      if (touchesStaged(p))
        throw invalid(
          'UNSUPPORTED',
          op,
          'a staged GPU region needs device copies between the steps of a write, so it cannot be triggered; use a host or directly registered region',
        );
      if (inParts(p))
        throw invalid(
          'UNSUPPORTED',
          op,
          'a region registered in parts (over limits.maxMrBytes) needs its work cut and its immediates raised after the data, so it cannot be triggered; use regions of one part',
        );
      const peers = planPeers(p);
      this.checkPeers(peers, op);
      const regions = p.op === 'single' || p.op === 'paged' || p.op === 'scatter' ? [p.src as Region] : [];
      const pending = this.begin(site, peers.length === 1 ? peers[0] : undefined, regions, request, peers);
      this.guard(pending, () => arm(p, pending));
      return pending.promise;
    } catch (e) {
      return Promise.reject(site.attach(e));
    }
  }

  private submit(name: string, req: OpOptions, plan: () => Plan): Promise<void> {
    const site = CallSite.of(name);
    try {
      this.throwIfClosed(name);
      const p = plan();
      const peers = this.checkPlan(p, name);
      const op = this.begin(site, peers.length === 1 ? peers[0] : undefined, planRegions(p), req, peers);
      this.routeGuarded(p, op);
      return op.promise;
    } catch (e) {
      return Promise.reject(site.attach(e));
    }
  }

  /** Register a pending op, arm its deadline. */
  private begin(
    site: CallSite,
    peer: NetAddr | undefined,
    regions: Region[],
    opts: OpOptions,
    peers: readonly NetAddr[],
    onSettle?: (error: TrellisError | undefined) => void,
    weight = 1,
  ): PendingOp {
    const op = new PendingOp(this.takeOpId(), site, peer, regions, this, onSettle);
    this.ops.add(op);
    if (weight !== 1) {
      op.weight = weight;
      this.mergedExtra += weight - 1;
    }
    if (peers.length) {
      const keys = peers.map((p) => p.toString());
      op.peerKeys = keys;
      for (const k of keys) this.inFlightTo.set(k, (this.inFlightTo.get(k) ?? 0) + 1);
    }
    this.counts.submitted += weight;
    if (opts.signal?.aborted) {
      op.cancelReason = new TrellisError('ABORTED', `${site.op}: aborted before it was posted`);
    }
    op.arm(opts);
    if (opts.signal && !op.cancelReason) this.watchSignal(opts.signal, op);
    return op;
  }

  /**
   * One 'abort' listener per signal, however many operations share it: a request-scoped signal is
   * commonly passed to hundreds of operations.
   */
  private readonly signalOps = new WeakMap<AbortSignal, Set<PendingOp>>();

  private watchSignal(signal: AbortSignal, op: PendingOp): void {
    op.signal = signal;
    let set = this.signalOps.get(signal);
    if (!set) {
      const ops = new Set<PendingOp>();
      set = ops;
      this.signalOps.set(signal, ops);
      signal.addEventListener(
        'abort',
        () => {
          this.signalOps.delete(signal);
          for (const o of [...ops])
            o.requestCancel(new TrellisError('ABORTED', `${o.callsite.op}: aborted by its AbortSignal`));
        },
        { once: true },
      );
    }
    set.add(op);
  }

  /** Run a backend post; a synchronous throw fails the op (it was not posted). */
  protected guard(op: PendingOp, post: () => void): void {
    if (op.cancelReason) op.fail(op.cancelReason);
    else
      try {
        post();
      } catch (e) {
        failUnposted(op, e);
      }
  }

  /** What {@link guard} does when its post throws: the op fails, unposted. */
  protected failUnposted(op: PendingOp, e: unknown): void {
    failUnposted(op, e);
  }

  /** {@link guard} of `route(p, op)`, without a closure per operation (every single submit). */
  private routeGuarded(p: Plan, op: PendingOp): void {
    if (op.cancelReason) op.fail(op.cancelReason);
    else
      try {
        this.route(p, op);
      } catch (e) {
        failUnposted(op, e);
      }
  }

  /**
   * A backend's internal operation (a piece of a user operation, a control message): it settles
   * like any other but is not counted, not failed by close (the backend's shutdown settles it),
   * and holds no region (its user operation does).
   */
  protected internalOp(
    site: CallSite,
    peer: NetAddr | undefined,
    regions: readonly Region[] = [],
  ): PendingOp {
    const op = new PendingOp(this.takeOpId(), site, peer, regions, this);
    op.internal = true;
    return op;
  }

  /**
   * The next operation id. Ids are 32-bit where they cross to a worker and back (completion
   * records), so they wrap to 1 after {@link MAX_OP_ID}; from then on an id a backend still holds
   * (a long receive) is skipped.
   */
  private takeOpId(): number {
    for (;;) {
      const id = this.nextOpId;
      this.nextOpId = id >= MAX_OP_ID ? 1 : id + 1;
      if (id === MAX_OP_ID) this.opIdsWrapped = true;
      if (!this.opIdsWrapped || !this.opIdInUse(id)) return id;
    }
  }

  private opIdsWrapped = false;

  /** Whether the backend still holds an operation of this id (asked only once ids have wrapped). */
  protected opIdInUse(_id: number): boolean {
    return false;
  }

  // -- peer liveness ------------------------------------------------------------------------------

  private readonly inFlightTo = new Map<string, number>();
  /** Sweep the zero entries of {@link EngineBase.inFlightTo} once it holds more than this many. */
  private inFlightSweepAt = 1024;
  private readonly quiescers = new Map<string, Array<() => void>>();
  private readonly lost = new Map<string, TrellisError>();
  /** The last generation reached at each endpoint (kind and NIC addresses, generation left out). */
  private readonly generations = new Map<string, NetAddr>();
  private readonly peerLostListeners = new Set<(peer: NetAddr, reason: TrellisError) => void>();
  private readonly knownPeers = new Map<string, NetAddr>();

  /**
   * Call `cb` once for each peer this engine concludes is lost: an operation to it failed with
   * `PEER_LOST`, another generation of the same endpoint (the peer's process restarted) was
   * reached, or heartbeats went unanswered. Its operations in flight are cancelled with
   * `PEER_LOST` (see {@link TransferEngine.onPeerLost}). Returns a function that removes the listener.
   */
  onPeerLost(cb: (peer: NetAddr, reason: TrellisError) => void): () => void {
    if (typeof cb !== 'function') throw invalid('INVALID_ARGUMENT', 'onPeerLost', 'cb must be a function');
    this.peerLostListeners.add(cb);
    return () => this.peerLostListeners.delete(cb);
  }

  /**
   * Resolve once none of this engine's operations to or with `peer` is in flight (at once if none
   * is). New operations to the peer are not held back: quiesce first, stop submitting, then wait.
   */
  quiesce(peer: NetAddr, opts: WaitOptions = {}): Promise<void> {
    const op = 'quiesce';
    try {
      const p = checkPeer(this, op, 'peer', peer);
      checkFields(op, opts, OP_OPTION_FIELDS, 'its options');
      checkOpOptions(op, opts);
      const key = p.toString();
      if (!this.inFlightTo.get(key)) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        let timer: Timer | undefined;
        const done = () => {
          this.timers.cancel(timer);
          opts.signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        const give = (e: TrellisError) => {
          const list = this.quiescers.get(key);
          if (list)
            this.quiescers.set(
              key,
              list.filter((f) => f !== done),
            );
          this.timers.cancel(timer);
          reject(e);
        };
        const onAbort = () => give(new TrellisError('ABORTED', `${op}: aborted by its AbortSignal`));
        if (opts.timeoutMs !== undefined)
          timer = this.timers.after(opts.timeoutMs, () =>
            give(
              new TrellisError(
                'TIMEOUT',
                `${op}: operations to ${key} still in flight after ${opts.timeoutMs} ms`,
              ),
            ),
          );
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        const list = this.quiescers.get(key) ?? [];
        list.push(done);
        this.quiescers.set(key, list);
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private heartbeatTimer: Timer | undefined;
  private heartbeatMs = 0;
  private readonly probing = new Set<string>();
  private readonly misses = new Map<string, number>();
  /** Per peer: the NIC its heartbeats go on (moved to the next after a miss: one NIC of the peer may be dead). */
  private readonly beatLanes = new Map<string, number>();

  /**
   * Liveness probes (engine option `heartbeatMs`): every `ms`, one immediate ({@link HEARTBEAT_IMM})
   * to each peer this engine has operations in flight with. A peer whose probes fail or go
   * unanswered {@link HEARTBEAT_MISSES} times in a row (or once on each of its NICs, where it has
   * more: after a miss the next goes on its next NIC) is lost: reported through `onPeerLost`, and
   * every operation in flight to it is cancelled with `PEER_LOST` (settling once none of its work
   * can touch memory). Idle peers are not probed.
   */
  protected startHeartbeat(ms: number, idle = false): void {
    this.heartbeatIdle = idle === true;
    if (!Number.isInteger(ms) || ms < 0)
      throw invalid(
        'INVALID_ARGUMENT',
        'createEngine',
        `heartbeatMs must be a non-negative integer, got ${ms}`,
      );
    if (ms === 0) return;
    this.heartbeatMs = ms;
    this.heartbeatTimer = this.timers.every(ms, () => this.beat());
  }

  /** Probe every peer this engine has reached, not only those with operations in flight. */
  private heartbeatIdle = false;

  private beat(): void {
    if (this.closed) return;
    const keys = this.heartbeatIdle
      ? [...this.knownPeers.keys()]
      : [...this.inFlightTo].filter(([, n]) => n > 0).map(([k]) => k);
    for (const key of keys) this.heartbeatProbe(key);
  }

  /**
   * One heartbeat to the peer `key` (unless it is lost or a probe to it is out). A probe that runs
   * to its deadline unanswered is followed by the next at once, so a silent peer is lost after
   * {@link HEARTBEAT_MISSES} intervals of silence (plus up to one until the first tick); a probe
   * that fails early waits for the next tick, so a connection being rebuilt gets an interval.
   */
  private heartbeatProbe(key: string): void {
    if (this.closed || this.lost.has(key) || this.probing.has(key)) return;
    const peer = this.knownPeers.get(key);
    if (!peer) return;
    const op = this.internalOp(new CallSite('heartbeat'), peer);
    op.liveness = true;
    op.arm({ timeoutMs: this.heartbeatMs });
    // The NIC that last answered (failover's first up NIC to start with, or when it went down).
    let lane = this.beatLanes.get(key) ?? this.failover?.probeLane(peer) ?? 0;
    if (this.failover && !this.failover.isUp(lane)) lane = this.failover.probeLane(peer) ?? lane;
    this.probing.add(key);
    this.answeredDuringBeat.delete(key);
    op.promise.then(
      () => {
        this.probing.delete(key);
        this.answeredDuringBeat.delete(key);
        this.misses.delete(key);
      },
      (e: TrellisError) => {
        this.probing.delete(key);
        // With failover, a NIC's failure is the NIC's, not the peer's: while another NIC to the
        // peer is up, the next probe goes there.
        if (
          this.failover &&
          e.nic !== undefined &&
          (e.code === 'NIC_FAILED' || e.code === 'PROVIDER_ERROR')
        ) {
          this.failover.nicError(e.nic);
          if (this.failover.probeLane(peer) !== undefined) {
            this.answeredDuringBeat.delete(key);
            return;
          }
        }
        // A heartbeat queued behind the peer's own backlog can time out while that backlog
        // completes: the peer answered, so this is no miss (the next tick probes again).
        if (this.answeredDuringBeat.delete(key) && !this.closed) {
          this.probeCounts.heartbeatsLate++;
          this.misses.delete(key);
          return;
        }
        this.probeCounts.heartbeatsMissed++;
        // The next goes on the peer's next NIC: misses in a row on every NIC lose the peer.
        this.beatLanes.set(key, (lane + 1) % this.lanesTo(peer));
        const m = (this.misses.get(key) ?? 0) + 1;
        this.misses.set(key, m);
        if (m >= Math.max(HEARTBEAT_MISSES, this.lanesTo(peer))) this.unresponsive(peer, e);
        else if (e.code === 'TIMEOUT') this.heartbeatProbe(key);
      },
    );
    this.probeCounts.heartbeats++;
    this.guard(op, () => this.post({ op: 'imm', peer, imm: HEARTBEAT_IMM, lane }, op));
  }

  private unresponsive(peer: NetAddr, last: TrellisError): void {
    const key = peer.toString();
    const n = Math.max(HEARTBEAT_MISSES, this.lanesTo(peer));
    const err = new TrellisError(
      'PEER_LOST',
      `the peer did not answer ${n} heartbeats of ${this.heartbeatMs} ms (last: ${last.code})`,
      { peer: key },
    );
    this.markLost(peer, err);
  }

  private readonly probes = new Map<string, Promise<boolean>>();
  /** Peers with a probe running that an operation completed with since it started. */
  private readonly answeredDuringProbe = new Set<string>();
  /** Peers with a heartbeat out that an operation completed with since it was posted. */
  private readonly answeredDuringBeat = new Set<string>();

  /**
   * `op` completed: each of its peers with a probe or a heartbeat out has answered it. On a loaded
   * machine a probe can wait behind the peer's own backlog past its deadline while that backlog
   * completes: the peer is alive. Cheap while none is out (the completion path calls it for every
   * success).
   */
  protected heardFrom(op: PendingOp): void {
    if ((this.probes.size === 0 && this.probing.size === 0) || op.liveness) return;
    for (const k of op.peerKeys ?? (op.peer ? [op.peer.toString()] : [])) {
      if (this.probes.has(k)) this.answeredDuringProbe.add(k);
      if (this.probing.has(k)) this.answeredDuringBeat.add(k);
    }
  }

  private readonly probeCounts = {
    probes: 0,
    probesAnswered: 0,
    heartbeats: 0,
    heartbeatsMissed: 0,
    heartbeatsLate: 0,
  };

  /**
   * Whether `peer` answers now: one immediate ({@link HEARTBEAT_IMM}) that must complete within
   * `ms`. Concurrent callers for one peer share one probe. A backend asks before it reports a
   * provider's connection error as `PEER_LOST`: on tcp a refused key tears down the pair's only
   * connection, and the work it cuts off in the other direction fails exactly as if the peer had
   * died. A peer that answers was not lost (the next operation reconnected); one that does not is.
   */
  protected probePeer(peer: NetAddr, ms: number): Promise<boolean> {
    const key = peer.toString();
    const running = this.probes.get(key);
    if (running) return running;
    if (this.closed || this.lost.has(key)) return Promise.resolve(false);
    this.probeCounts.probes++;
    this.answeredDuringProbe.delete(key);
    const until = performance.now() + ms;
    // A probe cut off with the connection it tests (CONNECTION_RESET) says nothing yet: try again
    // on the next one, until the deadline. One that fails otherwise tries the peer's next NIC: a
    // peer is lost only when none of its NICs answers (one NIC of it may have died alone).
    const lanes = this.lanesTo(peer);
    const first = this.failover?.probeLane(peer) ?? 0;
    const attempt = async (): Promise<boolean> => {
      let tried = 0;
      let lane = first;
      for (;;) {
        const left = Math.round(until - performance.now());
        if (left <= 0 || this.closed) return false;
        const op = this.internalOp(new CallSite('probe'), peer);
        op.liveness = true;
        // With NICs left to try, each gets its share of the time (a dead NIC may only time out).
        op.arm({ timeoutMs: Math.max(1, Math.round(left / (lanes - tried))) });
        const on = lane;
        this.guard(op, () => this.post({ op: 'imm', peer, imm: HEARTBEAT_IMM, lane: on }, op));
        try {
          await op.promise;
          return true;
        } catch (e) {
          if (!(e instanceof TrellisError)) return false;
          if (e.code !== 'CONNECTION_RESET') {
            if (++tried >= lanes) return false;
            lane = (lane + 1) % lanes;
            continue;
          }
        }
        await new Promise<void>((r) => this.timers.after(20, r));
      }
    };
    const p = attempt().then((answered) => {
      this.probes.delete(key);
      // Another operation to the peer that completed meanwhile answers for the probe.
      const alive = answered || (!this.closed && this.answeredDuringProbe.has(key));
      this.answeredDuringProbe.delete(key);
      if (alive) this.probeCounts.probesAnswered++;
      return alive;
    });
    this.probes.set(key, p);
    return p;
  }

  /** The peers an operation in flight writes to or exchanges with (its own peer, or a scatter's). */
  protected peersOf(op: PendingOp): NetAddr[] {
    const keys = op.peerKeys ?? (op.peer ? [op.peer.toString()] : []);
    return keys.map((k) => this.knownPeers.get(k)).filter((p): p is NetAddr => p !== undefined);
  }

  /** Whether `peer` is known lost (its operations are refused with `PEER_LOST`). */
  protected isLost(peer: NetAddr): boolean {
    return this.lost.has(peer.toString());
  }

  /** Refuse a peer known lost, or an older generation of an endpoint a newer one of which was reached. */
  private checkLive(peer: NetAddr, op: string): void {
    const key = peer.toString();
    const why = this.lost.get(key);
    if (why)
      throw new TrellisError(
        'PEER_LOST',
        `${op}: the peer ${key} was lost (${why.message}); a restarted peer is a new address (a new generation)`,
        { op, peer: key },
      );
    // Known and not lost: it is its endpoint's current generation (a newer one would have lost it).
    if (this.knownPeers.has(key)) return;
    const ep = endpointKey(peer);
    const last = this.generations.get(ep);
    if (last && last.generation !== peer.generation) {
      // The endpoint answers as another generation now: the process behind `last` is gone.
      this.markLost(
        last,
        new TrellisError(
          'PEER_LOST',
          `its endpoint was reached again as generation ${peer.generation} (it restarted)`,
        ),
      );
    }
    this.generations.set(ep, peer);
    this.knownPeers.set(key, peer);
  }

  /**
   * The peer is lost, however that was learned (heartbeats, an operation's PEER_LOST, a restart
   * seen): reported once through `onPeerLost` (the reason naming the peer), and every operation
   * in flight to it — scatters and batches that include it too — is cancelled with `PEER_LOST`,
   * settling once none of its work can touch memory, rather than waiting out its deadline.
   */
  private markLost(peer: NetAddr, reason: TrellisError): void {
    const key = peer.toString();
    if (this.lost.has(key)) return;
    const why = reason.peer === key ? reason : reason.withDetails({ peer: key });
    this.lost.set(key, why);
    for (const cb of [...this.peerLostListeners]) callUser(() => cb(peer, why));
    // Each operation's own error: its name, then what lost the peer (without the name of the
    // operation that learned it: `submitImm: connecting queue pairs to the peer failed: …`).
    const body = why.message.replace(/^[A-Za-z][\w.]*: /, '');
    for (const op of this.ops.toArray()) {
      if (op.settled || !op.peerKeys?.includes(key)) continue;
      op.requestCancel(new TrellisError('PEER_LOST', `${op.callsite.op}: ${body}`, { peer: key }));
    }
  }

  /** @internal An operation to or with one or more peers failed with PEER_LOST. */
  peerFailed(op: PendingOp, err: TrellisError): void {
    const keys = err.peer ? [err.peer] : op.peer ? [op.peer.toString()] : [];
    for (const k of keys) {
      const p = this.knownPeers.get(k);
      if (p) this.markLost(p, err);
    }
  }

  /** @internal */
  opSettled(op: PendingOp, ok: boolean): void {
    if (op.held) {
      // The engine's own operations (heartbeats, probes) are not users' operations: not counted.
      if (!op.internal) {
        this.counts.settledPosted += op.weight;
        this.heldOps += op.weight;
      }
    } else {
      this.opLetGo(op);
    }
    if (op.internal) return;
    this.ops.delete(op);
    if (op.signal) this.signalOps.get(op.signal)?.delete(op);
    const w = op.weight;
    if (w !== 1) this.mergedExtra -= w - 1;
    if (ok) this.counts.completed += w;
    else this.counts.failed += w;
  }

  /** Operations settled with work posted that the provider has not let go of yet. */
  private heldOps = 0;
  /** The batch requests beyond one that live operations of merged writes stand for (see mergeWrites). */
  private mergedExtra = 0;

  /** @internal A held operation's posted work was let go of. */
  heldLetGo(op: PendingOp): void {
    if (!op.internal) this.heldOps -= op.weight;
    this.opLetGo(op);
  }

  /**
   * @internal Nothing of `op` is posted any more: its peers' in-flight counts drop (and `quiesce`
   * may resolve). At settlement, or later for an op that settled at its deadline with work posted.
   */
  opLetGo(op: PendingOp): void {
    const keys = op.peerKeys;
    if (keys) {
      op.peerKeys = undefined;
      for (const k of keys) {
        const n = (this.inFlightTo.get(k) ?? 1) - 1;
        // Kept at 0 rather than deleted: a peer written to again soon (every windowed sender)
        // costs no deletion and re-insertion per window. Zeros are swept once there are many.
        this.inFlightTo.set(k, n);
        if (n > 0) continue;
        if (this.quiescers.size) {
          const qs = this.quiescers.get(k);
          this.quiescers.delete(k);
          // After the settled operations' own promise reactions have run: at the next event-loop
          // turn, or at a polling loop's next look at the engine's timers, whichever comes first.
          if (qs?.length) {
            let fired = false;
            const fire = () => {
              if (fired) return;
              fired = true;
              this.timers.cancel(timer);
              for (const q of qs) q();
            };
            const timer = this.timers.after(0, fire, false);
            setImmediate(fire);
          }
        }
        if (this.inFlightTo.size > this.inFlightSweepAt) {
          for (const [key, count] of this.inFlightTo) if (count === 0) this.inFlightTo.delete(key);
          // Amortised: many peers with work in flight are not swept again until twice as many.
          this.inFlightSweepAt = Math.max(1024, 2 * this.inFlightTo.size);
        }
      }
    }
  }

  immCounter(imm: number): ImmCounter {
    return this.counters.get(imm);
  }

  expectedImms(request: TransferRequest, target?: NetAddr): number {
    const op = 'expectedImms';
    if (typeof request !== 'object' || request === null)
      throw invalid('INVALID_ARGUMENT', op, 'expected a request with a kind');
    // Counted from the request alone, so it gives the same answer on any engine: the sender's NIC
    // count comes from the source handle's owner, not from the engine asked.
    const ctx = this.shapeContext(request);
    switch (request.kind) {
      case 'single': {
        const p = planSingle(ctx, request, op);
        // A peer the request does not write to gets none of its arrivals (as for imm and scatter).
        if (target !== undefined && !checkPeer(this, op, 'target', target).equals(p.peer)) return 0;
        return countImms({ kind: 'single', length: p.length, shards: p.shards, imm: p.imm }, p.lanes);
      }
      case 'paged': {
        const p = planPaged(ctx, request, op);
        if (target !== undefined && !checkPeer(this, op, 'target', target).equals(p.peer)) return 0;
        return countImms({ kind: 'paged', pages: p.srcPages.length, imm: p.imm }, p.lanes);
      }
      case 'scatter': {
        const p = planScatter(ctx, request, op);
        const who = this.pickTarget(
          op,
          p.targets.map((t) => t.peer),
          target,
        );
        const mine = p.targets.filter((t) => t.peer.equals(who));
        const lanes = mine.length ? mine[0]!.lanes : 1;
        return countImms(
          { kind: 'scatter', lengths: mine.map((t) => t.length), routing: p.routing, imm: p.imm },
          lanes,
        );
      }
      case 'barrier': {
        const p = planBarrier(ctx, request, op);
        const who = this.pickTarget(op, p.peers, target);
        return p.peers.filter((x) => x.equals(who)).length;
      }
      case 'imm': {
        const p = planImm(ctx, request, op);
        if (target !== undefined && !checkPeer(this, op, 'target', target).equals(p.peer)) return 0;
        return 1;
      }
      default:
        throw invalid(
          'INVALID_ARGUMENT',
          op,
          `unknown request kind ${JSON.stringify((request as { kind: unknown }).kind)}`,
        );
    }
  }

  /** Validation context for counting: any engine's handle, the handle owner's NIC count. */
  private shapeContext(request: TransferRequest): ValidationContext {
    const src = (request as { src?: unknown }).src;
    const nics = src instanceof Region ? src.desc.owner.nics.length : this.nics;
    return {
      kind: this.kind,
      nics,
      maxMessageBytes: this.maxMessageBytes,
      checkHandle: (h, op, field) => {
        if (!(h instanceof Region))
          throw invalid(
            'INVALID_ARGUMENT',
            op,
            `${field} must be an MrHandle from registerMemory(), got ${describe(h)}`,
          );
        return h.length;
      },
      group: (g) => g,
    };
  }

  private pickTarget(op: string, peers: readonly NetAddr[], target: NetAddr | undefined): NetAddr {
    if (target !== undefined) return checkPeer(this, op, 'target', target);
    const u = uniquePeers(peers);
    if (u.length !== 1)
      throw invalid(
        'INVALID_ARGUMENT',
        op,
        `the request reaches ${u.length} peers; pass the target peer to count its arrivals`,
      );
    return u[0]!;
  }

  /** Lanes between this engine and `peer`. */
  lanesTo(peer: NetAddr): number {
    return lanesBetween(this.nics, peer.nics.length);
  }

  addPeerGroup(peers: readonly NetAddr[]): PeerGroup {
    const op = 'addPeerGroup';
    this.throwIfClosed(op);
    if (!Array.isArray(peers) || peers.length === 0)
      throw invalid('INVALID_ARGUMENT', op, 'peers must be a non-empty array of NetAddr');
    const resolved = peers.map((p, i) => checkPeer(this, op, `peers[${i}]`, p));
    for (const p of resolved) this.checkReachable(p, op);
    const g: PeerGroup = Object.freeze({ id: this.nextGroupId++, peers: Object.freeze(resolved) });
    this.groups.set(g.id, g);
    return g;
  }

  allocUvmWatcher(onChange: UvmWatcherCallback): UvmWatcher {
    this.throwIfClosed('allocUvmWatcher');
    if (typeof onChange !== 'function')
      throw invalid('INVALID_ARGUMENT', 'allocUvmWatcher', 'onChange must be a function');
    const w = this.createWatcher(onChange, (x) => this.watchers.delete(x));
    this.watchers.add(w);
    return w;
  }

  stats(): EngineStats {
    let registeredBytes = 0;
    for (const r of this.regions) registeredBytes += r.length;
    const f = this.failover;
    const w = f ?? this.partsWriter;
    const library = this.libraryInfo();
    const hostLane = this.hostLaneStats();
    const events = this.eventStats();
    return {
      kind: this.kind,
      nics: f ? this.nicStats().map((n) => ({ ...n, up: n.up && f.isUp(n.index) })) : this.nicStats(),
      failover: w ? { ...w.stats } : noFailoverStats(),
      ops: { ...this.counts, inFlight: this.ops.size + this.mergedExtra, held: this.heldOps },
      regions: this.regions.size,
      registeredBytes,
      recvDropped: this.recvDropped,
      peers: { known: this.knownPeers.size, lost: this.lost.size, ...this.probeCounts },
      gpu: this.gpuStats(),
      ...(library ? { library } : {}),
      ...(hostLane ? { hostLane } : {}),
      ...(events ? { events } : {}),
    };
  }

  /** How batches of events reached JavaScript, where a backend has a worker (the native engines). */
  protected eventStats(): EventStats | undefined {
    return undefined;
  }

  /** The host half of the same-host lane, where a backend has it (the native engines). */
  protected hostLaneStats(): HostLaneStats | undefined {
    return undefined;
  }

  /** The transport library under the engine, where a backend has one (libfabric, libibverbs). */
  protected libraryInfo(): LibraryInfo | undefined {
    return undefined;
  }

  /** GPU memory counters; backends with GPU support override it. */
  protected gpuStats(): GpuStats {
    let directRegions = 0;
    let stagedRegions = 0;
    for (const r of this.regions) {
      if (r.path === 'direct') directRegions++;
      else if (r.path === 'staged') stagedRegions++;
    }
    return {
      directRegions,
      stagedRegions,
      stagedToHostBytes: 0,
      stagedToDeviceBytes: 0,
      stagedWrites: 0,
      laneWrites: 0,
      laneBytes: 0,
      laneFallbacks: 0,
    };
  }

  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.closed = true;
    this.timers.cancel(this.heartbeatTimer);

    for (const w of [...this.watchers]) w.close();
    this.counters.close(
      new TrellisError('CLOSED', 'immCounter: the engine was closed (its waits and takes fail)'),
    );
    try {
      await this.shutdown();
    } finally {
      // Named as the native completions name it (`submitSingleWrite: …`).
      for (const op of this.ops.toArray())
        op.fail(
          new TrellisError('CLOSED', `${op.callsite.op}: the engine was closed with this operation pending`),
        );
      for (const pool of [...this.pools]) pool.end();
      for (const r of [...this.regions]) {
        r.registered = false;
        this.regions.delete(r);
      }
    }
  }

  protected throwIfClosed(op: string): void {
    if (this.closed) throw new TrellisError('CLOSED', `${op}: the engine is closed`, { op });
  }

  /** Pending operations (for backends that fail them on peer loss). */
  protected pendingOps(): Iterable<PendingOp> {
    return this.ops.toArray();
  }
}

/** The immediate value of liveness probes (engine option `heartbeatMs`): reserved, never waited on. */
export const HEARTBEAT_IMM = 0xffffffff;
/** Consecutive failed or unanswered probes after which a peer is lost. */
export const HEARTBEAT_MISSES = 3;

/** A peer's endpoint: its kind and NIC addresses, without the generation. */
function endpointKey(p: NetAddr): string {
  return `${p.kind}|${p.nics.map((n) => Buffer.from(n).toString('hex')).join(',')}`;
}

/** Whether a write touches a region registered in parts (its source, or any destination). */
function inParts(p: Plan): boolean {
  switch (p.op) {
    case 'single':
    case 'paged':
      return (p.src as Region).parted !== undefined || p.dst.parts !== undefined;
    case 'scatter':
      return (p.src as Region).parted !== undefined || p.targets.some((t) => t.dst.parts !== undefined);
    default:
      return false;
  }
}

/** How {@link mergeWrites} grouped a batch: `of[i]` is request i's group (-1: none). */
interface WriteGroups {
  of: Int32Array;
  /** Each group's members (two or more), in request order. */
  members: number[][];
}

/** Distinct (source, immediate) pairs looked for per destination in one batch; more go unmerged. */
const MAX_KEYS_PER_DST = 16;

/** A group being formed: its source and immediate, its first member, its group index once it has two. */
interface GroupKey {
  src: MrHandle;
  imm: number | undefined;
  first: number;
  group: number;
}

/**
 * The plain writes of a batch that can travel as one operation: unsharded single writes (one work
 * request each) with no `signal` or `timeoutMs` of their own, to a reachable peer, that share their
 * source handle, their destination descriptor (the same `MrDesc` object) and their immediate. Each
 * such group becomes one scatter operation — one id, one deadline, one settlement and one completion
 * record instead of one per write, which is most of what a small write costs beyond the provider's
 * post — and all of its members settle with its outcome. Undefined when nothing groups.
 */
function mergeWrites(
  requests: readonly TransferRequest[],
  plans: readonly Plan[],
  unreachable: readonly (TrellisError | undefined)[],
): WriteGroups | undefined {
  let out: WriteGroups | undefined;
  let byDst: Map<MrDesc, GroupKey[]> | undefined;
  // The last key matched: a run of writes with one destination looks nothing up.
  let last: GroupKey | undefined;
  let lastDst: MrDesc | undefined;
  for (let i = 0; i < plans.length; i++) {
    const p = plans[i]!;
    if (p.op !== 'single' || p.shards !== 1 || unreachable[i]) continue;
    const r = requests[i]!;
    if (r.signal !== undefined || r.timeoutMs !== undefined) continue;
    let key: GroupKey | undefined;
    if (last && lastDst === p.dst && last.src === p.src && last.imm === p.imm) key = last;
    else {
      byDst ??= new Map();
      let keys = byDst.get(p.dst);
      if (!keys) {
        keys = [];
        byDst.set(p.dst, keys);
      }
      for (const k of keys)
        if (k.src === p.src && k.imm === p.imm) {
          key = k;
          break;
        }
      if (!key) {
        // The first of its kind: a group starts once a second one comes.
        if (keys.length < MAX_KEYS_PER_DST) {
          last = { src: p.src, imm: p.imm, first: i, group: -1 };
          lastDst = p.dst;
          keys.push(last);
        }
        continue;
      }
    }
    last = key;
    lastDst = p.dst;
    out ??= { of: new Int32Array(plans.length).fill(-1), members: [] };
    if (key.group < 0) {
      key.group = out.members.length;
      out.members.push([key.first]);
      out.of[key.first] = key.group;
    }
    out.members[key.group]!.push(i);
    out.of[i] = key.group;
  }
  return out;
}

/**
 * The scatter plan a group of {@link mergeWrites} is posted as: every write on lane 0, where each
 * would have gone as its own unsharded single write (so a NIC's fault costs what it did).
 */
function groupPlan(plans: readonly Plan[], members: readonly number[]): ScatterPlan {
  const first = plans[members[0]!] as SinglePlan;
  const targets = new Array<ScatterPlanTarget>(members.length);
  for (let k = 0; k < members.length; k++) {
    const p = plans[members[k]!] as SinglePlan;
    targets[k] = {
      peer: p.peer,
      dst: p.dst,
      srcOffset: p.srcOffset,
      dstOffset: p.dstOffset,
      length: p.length,
      lanes: p.lanes,
    };
  }
  return { op: 'scatter', src: first.src, targets, imm: first.imm, routing: LANE_0 };
}

/** The routing of a group of merged writes (see {@link groupPlan}). */
const LANE_0 = Object.freeze({ nic: 0 });

/**
 * The error a member of a group of merged writes reports: the group's, saying it was one of `n`
 * (each member gets its own error object).
 */
function memberError(err: TrellisError, n: number): TrellisError {
  const e = new TrellisError(
    err.code,
    `${err.message} (one of ${n} writes of this batch that travelled as one operation and share its outcome)`,
    {
      errno: err.errno,
      providerMessage: err.providerMessage,
      peer: err.peer,
      nic: err.nic,
      op: err.op,
      cause: err.cause,
    },
  );
  e.stack = err.stack;
  return e;
}

/** The source region a plan reads (held in use until its op settles). */
function planRegions(p: Plan): Region[] {
  return p.op === 'single' || p.op === 'paged' || p.op === 'scatter' ? [p.src as Region] : [];
}

/** A batch request's validation error, labelled with its index and kind. */
function batchItemError(e: unknown, i: number, r: unknown): TrellisError {
  const kind = typeof r === 'object' && r !== null ? (r as { kind?: unknown }).kind : undefined;
  const label = `requests[${i}]${typeof kind === 'string' ? ` (${kind})` : ''}`;
  if (!(e instanceof TrellisError))
    return new TrellisError('INTERNAL', `submitBatch: ${label}: ${String(e)}`, { cause: e });
  const msg = e.message.startsWith('submitBatch: ') ? e.message.slice('submitBatch: '.length) : e.message;
  const out = new TrellisError(e.code, `submitBatch: ${label}: ${msg}`, {
    errno: e.errno,
    providerMessage: e.providerMessage,
    peer: e.peer,
    nic: e.nic,
    op: 'submitBatch',
    cause: e.cause,
  });
  out.stack = e.stack?.replace(/^[^\n]*/, `${out.name} [${out.code}]: ${out.message}`);
  return out;
}

function planPeers(p: Plan): NetAddr[] {
  switch (p.op) {
    case 'single':
    case 'paged':
    case 'imm':
      return [p.peer];
    case 'scatter':
      return uniquePeers(p.targets.map((t) => t.peer));
    case 'barrier':
      return uniquePeers(p.peers);
    case 'runs':
      return uniquePeers(p.runs.map((r) => r.peer));
  }
}

function uniquePeers(peers: readonly NetAddr[]): NetAddr[] {
  const seen = new Map<string, NetAddr>();
  for (const p of peers) seen.set(p.toString(), p);
  return [...seen.values()];
}

/** Resizable ArrayBuffers and growable SharedArrayBuffers: their length can change under a NIC. */
function isResizable(b: ArrayBufferLike): boolean {
  const x = b as { resizable?: boolean; growable?: boolean };
  return x.resizable === true || x.growable === true;
}

function resizableError(op: string): TrellisError {
  return invalid(
    'INVALID_ARGUMENT',
    op,
    'the buffer is resizable (or growable): its length could change under the NIC; register a fixed-length buffer (or a size, and let the engine allocate)',
  );
}

/** Whether an ArrayBuffer was detached (Node 20 lacks `ArrayBuffer.prototype.detached` on some builds). */
function isDetached(b: ArrayBuffer): boolean {
  const d = (b as { detached?: boolean }).detached;
  if (typeof d === 'boolean') return d;
  if (b.byteLength !== 0) return false;
  try {
    new Uint8Array(b);
    return false;
  } catch {
    return true;
  }
}

/** A post that threw synchronously: nothing of it was posted, so its op fails with that error. */
function failUnposted(op: PendingOp, e: unknown): void {
  op.fail(e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e), { cause: e }));
}
