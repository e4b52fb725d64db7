// LoopbackEngine: an EngineBase whose 'NICs' are the in-process loopback fabric (fabric.ts), with
// adversarial ordering and injected faults. The reference the conformance suite is written against.
import type { NetAddr } from '../addr.js';
import type { MrDesc } from '../desc.js';
import { TrellisError } from '../errors.js';
import { EngineBase } from '../kit/engine-base.js';
import type { PendingOp } from '../kit/pending-op.js';
import type { RecvPool, RegionAlloc } from '../kit/region.js';
import { callUser } from '../kit/user.js';
import { type Plan, type WorkRequest, workRequests } from '../kit/validate.js';
import type {
  EngineLimits,
  FailoverOptions,
  MemorySource,
  NicStats,
  UvmWatcher,
  UvmWatcherCallback,
} from '../types.js';

/** A delivery scheduled on the fabric; cancelled ones never run. */
export interface WireEvent {
  run: () => void;
  cancelled: boolean;
}

/**
 * What an engine needs of the fabric it lives on (fabric.ts implements it): descriptors and keys
 * for its regions, its peers by address, and deliveries in the fabric's order. @internal
 */
export interface LoopbackWire {
  desc(engine: LoopbackEngine, regionId: number, length: number, rkeys: bigint[] | undefined): MrDesc;
  resolve(addr: NetAddr, op: string): LoopbackEngine;
  rkey(): bigint;
  schedule(run: () => void): WireEvent;
}

/** Options of `fabric.createEngine`. */
export interface LoopbackEngineOptions {
  /** NICs of this engine (1..4); default: the fabric's. */
  nics?: number;
  /** Limits; defaults: 64 KiB messages. */
  limits?: Partial<EngineLimits>;
  /** Watcher poll interval in ms (the loopback watcher polls, as a native thread would spin). Default 1. */
  watcherPollMs?: number;
  /** Liveness probes, as the native engines' `heartbeatMs` (default 0: off). */
  heartbeatMs?: number;
  /** Probe idle peers too, as the native engines' `heartbeatIdle` (default false). */
  heartbeatIdle?: boolean;
  /** NIC failover with exactly-once immediates, as the native engines' `failover` (default off). */
  failover?: FailoverOptions | boolean;
}

interface HostRegion {
  id: number;
  bytes: Uint8Array;
  length: number;
  rkeys: bigint[] | undefined;
}

/** One operation's in-flight work. */
interface OpFlight {
  op: PendingOp;
  /** Work requests not yet landed (their events can still be dropped). */
  unlanded: Set<{ cancelled: boolean }>;
  /** Work requests a silent NIC swallowed: they never land nor complete (a cancellation drops them). */
  swallowed: number;
  outstanding: number;
  error: TrellisError | undefined;
}

interface QueuedMessage {
  from: LoopbackEngine;
  data: Uint8Array;
  op: PendingOp;
  lane: number;
}

function newNicStats(index: number): NicStats {
  return {
    index,
    provider: 'loopback',
    path: 'host',
    up: true,
    bytesWritten: 0,
    writeOps: 0,
    bytesSent: 0,
    sendOps: 0,
    bytesReceived: 0,
    recvOps: 0,
    immsReceived: 0,
    errors: 0,
  };
}

/** An engine on a loopback fabric. Create with `fabric.createEngine()`. */
export class LoopbackEngine extends EngineBase {
  readonly kind = 'loopback';
  readonly nics: number;
  dead = false;
  private readonly regionsByKey: Array<Map<bigint, HostRegion>>;
  private nextRegion = 1;
  private readonly flights = new Map<PendingOp, OpFlight>();
  private readonly recvPools: RecvPool[] = [];
  private poolCursor = 0;
  private readonly unexpected: QueuedMessage[] = [];
  private readonly nicUp: boolean[];
  private readonly nicCounters: NicStats[];
  private readonly pollMs: number;

  /** @internal */
  constructor(
    /** @internal */
    readonly fabric: LoopbackWire,
    readonly engineId: number,
    readonly address: NetAddr,
    opts: LoopbackEngineOptions,
  ) {
    super(opts.limits);
    this.nics = address.nics.length;
    this.regionsByKey = Array.from({ length: this.nics }, () => new Map());
    this.nicUp = new Array(this.nics).fill(true);
    this.nicCounters = Array.from({ length: this.nics }, (_, i) => newNicStats(i));
    this.pollMs = opts.watcherPollMs ?? 1;
    if (opts.heartbeatMs !== undefined) this.startHeartbeat(opts.heartbeatMs, opts.heartbeatIdle);
    this.lostCompletions = new Array(this.nics).fill(false);
    this.silentNics = new Array(this.nics).fill(false);
    this.configureFailover(opts.failover);
  }

  /** Per NIC: it fails without an error (fault injection: a port that stops answering). */
  private readonly silentNics: boolean[];

  /** @internal */
  setNicSilent(nic: number, silent: boolean): void {
    this.checkNic(nic);
    this.silentNics[nic] = silent;
  }

  /** Whether `lane` to `peer` is silent at either end (what goes through it vanishes). */
  private silentTo(peer: NetAddr, lane: number): boolean {
    if (this.silentNics[lane]) return true;
    try {
      return this.fabric.resolve(peer, 'silent').silentNics[lane] === true;
    } catch {
      return false;
    }
  }

  /** Per NIC: work lands but its completion reports NIC_FAILED (fault injection: the in-doubt failure). */
  private readonly lostCompletions: boolean[];

  /** A fault's NIC index must be one of this engine's. */
  private checkNic(nic: number): void {
    if (!Number.isInteger(nic) || nic < 0 || nic >= this.nics)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `faults: NIC ${nic} does not exist on an engine with ${this.nics} NIC(s)`,
      );
  }

  /** @internal */
  setLostCompletions(nic: number, lost: boolean): void {
    this.checkNic(nic);
    this.lostCompletions[nic] = lost;
  }

  private lostCompletion(lane: number, op: string): TrellisError | undefined {
    return this.lostCompletions[lane]
      ? new TrellisError('NIC_FAILED', `${op}: NIC ${lane} lost the completion (the work may have landed)`, {
          nic: lane,
          op,
        })
      : undefined;
  }

  /** Engine control messages: delivered to the target's base (never a receive pool), on `lane`. */
  protected override postControl(peer: NetAddr, lane: number, bytes: Uint8Array, op: PendingOp): void {
    const name = op.callsite.op;
    const data = bytes.slice();
    this.fabric.schedule(() => {
      let err: TrellisError | undefined;
      try {
        const target = this.fabric.resolve(peer, name);
        err = this.laneError(target, lane, name);
        // A silent NIC takes the message and loses it: the sender sees it sent.
        if (!err && !this.silentTo(peer, lane)) {
          target.onBaseControl(this.address, data);
          err = this.lostCompletion(lane, name);
        }
      } catch (e) {
        err = e as TrellisError;
      }
      this.fabric.schedule(() => {
        if (err) {
          this.nicCounters[lane]!.errors++;
          op.fail(err);
        } else op.complete();
      });
    });
  }

  // -- regions ----------------------------------------------------------------------------------

  protected async registerRegion(src: MemorySource, remote: boolean, op: string): Promise<RegionAlloc> {
    let bytes: Uint8Array;
    if (typeof src === 'number') bytes = new Uint8Array(src);
    else if (src instanceof ArrayBuffer || src instanceof SharedArrayBuffer) bytes = new Uint8Array(src);
    else if (ArrayBuffer.isView(src)) bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    else
      throw new TrellisError(
        'UNSUPPORTED',
        `${op}: the loopback fabric has host memory only; CUDA regions need a GPU backend`,
        { op },
      );
    const id = this.nextRegion++;
    const rkeys = remote ? Array.from({ length: this.nics }, () => this.fabric.rkey()) : undefined;
    const region: HostRegion = { id, bytes, length: bytes.length, rkeys };
    for (const [i, k] of (rkeys ?? []).entries()) this.regionsByKey[i]!.set(k, region);
    return {
      desc: this.fabric.desc(this, id, bytes.length, rkeys),
      bytes,
      length: bytes.length,
      key: region,
    };
  }

  protected async deregisterRegion(key: unknown): Promise<void> {
    const r = key as HostRegion;
    for (const [i, k] of (r.rkeys ?? []).entries()) this.regionsByKey[i]!.delete(k);
  }

  // -- reachability and faults ------------------------------------------------------------------

  protected checkReachable(peer: NetAddr, op: string): void {
    this.fabric.resolve(peer, op);
  }

  /** @internal Abrupt death (fault injection). */
  kill(): void {
    if (this.dead || this.closed) return;
    this.dead = true;
    void this.close();
  }

  /** @internal */
  setNicUp(nic: number, up: boolean): void {
    this.checkNic(nic);
    this.nicUp[nic] = up;
    this.nicCounters[nic]!.up = up;
  }

  private laneError(target: LoopbackEngine, lane: number, op: string): TrellisError | undefined {
    if (!this.nicUp[lane])
      return new TrellisError('NIC_FAILED', `${op}: local NIC ${lane} is down`, { nic: lane, op });
    if (!target.nicUp[lane]) {
      return new TrellisError('NIC_FAILED', `${op}: the peer's NIC ${lane} is down`, {
        nic: lane,
        op,
        peer: target.address.toString(),
      });
    }
    return undefined;
  }

  // -- writes -----------------------------------------------------------------------------------

  protected post(plan: Plan, op: PendingOp): void {
    const wrs = workRequests(plan);
    const src =
      plan.op === 'single' || plan.op === 'paged' || plan.op === 'scatter' || plan.op === 'runs'
        ? plan.src?.buffer
        : undefined;
    const flight: OpFlight = {
      op,
      unlanded: new Set(),
      swallowed: 0,
      outstanding: wrs.length,
      error: undefined,
    };
    if (wrs.length === 0) {
      op.complete();
      return;
    }
    this.flights.set(op, flight);
    const name = op.callsite.op;
    for (const wr of wrs) {
      const ev = this.fabric.schedule(() => {
        flight.unlanded.delete(ev);
        if (this.silentTo(wr.peer, wr.lane)) {
          flight.swallowed++;
          return;
        }
        const err = this.land(wr, src, name) ?? this.lostCompletion(wr.lane, name);
        // The completion is a separate event: the sender learns of delivery later, in random order.
        this.fabric.schedule(() => this.completeWr(flight, wr, err));
      });
      flight.unlanded.add(ev);
    }
  }

  /** Deliver one work request at its target. Returns the error, if it failed. */
  private land(wr: WorkRequest, src: Uint8Array | undefined, op: string): TrellisError | undefined {
    let target: LoopbackEngine;
    try {
      target = this.fabric.resolve(wr.peer, op);
    } catch (e) {
      return e as TrellisError;
    }
    const nicErr = this.laneError(target, wr.lane, op);
    if (nicErr) return nicErr;
    if (wr.dst) {
      const region = target.regionsByKey[wr.lane]!.get(wr.dst.nics[wr.lane]!.rkey);
      const end = wr.dstOffset + wr.length;
      if (!region || end > region.length) {
        return new TrellisError(
          'REMOTE_ACCESS',
          `${op}: the target refused the write (${region ? `bytes [${wr.dstOffset}, ${end}) outside its ${region.length}-byte region` : 'unknown or deregistered rkey'})`,
          { nic: wr.lane, op, peer: wr.peer.toString() },
        );
      }
      if (wr.length > 0)
        region.bytes.set(src!.subarray(wr.srcOffset, wr.srcOffset + wr.length), wr.dstOffset);
    }
    const tn = target.nicCounters[wr.lane]!;
    if (wr.imm !== undefined) {
      tn.immsReceived++;
      target.counters.arrive(wr.imm, 1);
    }
    return undefined;
  }

  private completeWr(flight: OpFlight, wr: WorkRequest, err: TrellisError | undefined): void {
    const nic = this.nicCounters[wr.lane]!;
    if (err) {
      nic.errors++;
      flight.error ??= err;
    } else {
      nic.writeOps++;
      nic.bytesWritten += wr.length;
    }
    if (--flight.outstanding > 0) return;
    this.flights.delete(flight.op);
    if (flight.op.cancelReason) flight.op.fail(flight.op.cancelReason);
    else if (flight.error) flight.op.fail(flight.error);
    else flight.op.complete();
  }

  /** Triggered operations not yet posted, and how to disarm each. */
  private readonly armed = new Map<PendingOp, () => void>();

  protected postOnImm(plan: Plan, op: PendingOp, imm: number, total: number): void {
    let fired = false;
    const disarm = this.counters.onTotal(imm, total, () => {
      fired = true;
      this.armed.delete(op);
      // Settled first (closed, or its deadline came): nothing is posted.
      if (!op.settled) this.post(plan, op);
    });
    if (!fired) this.armed.set(op, disarm);
  }

  protected postOnWatch(plan: Plan, op: PendingOp, watcher: UvmWatcher, value: bigint): void {
    if (!(watcher instanceof PollingWatcher))
      throw new TrellisError('INVALID_ARGUMENT', 'submitOnWatch: the watcher is not one of this engine');
    this.armed.set(op, () => watcher.disarm(op));
    watcher.arm(
      value,
      op,
      () => {
        this.armed.delete(op);
        this.post(plan, op);
      },
      (reason) => {
        this.armed.delete(op);
        op.fail(reason);
      },
    );
  }

  cancelOp(op: PendingOp, reason: TrellisError): void {
    const disarm = this.armed.get(op);
    if (disarm) {
      // Armed, never posted: nothing of it can touch memory.
      this.armed.delete(op);
      disarm();
      op.fail(reason);
      return;
    }
    const flight = this.flights.get(op);
    if (!flight) {
      this.cancelSend(op, reason);
      return;
    }
    // Dropping a work request that has not landed is exact: it can no longer touch memory.
    let dropped = 0;
    for (const ev of flight.unlanded) {
      ev.cancelled = true;
      dropped++;
    }
    flight.unlanded.clear();
    // What a silent NIC swallowed never lands either.
    dropped += flight.swallowed;
    flight.swallowed = 0;
    flight.outstanding -= dropped;
    if (dropped > 0 || flight.outstanding === 0) {
      this.flights.delete(op);
      op.fail(reason);
    }
    // Otherwise every work request landed: the pending completions resolve the op.
  }

  // -- send / recv ------------------------------------------------------------------------------

  /** Sends in flight: the delivery event, and the target once the message sits in its unexpected queue. */
  private readonly sends = new Map<PendingOp, { ev: { cancelled: boolean }; queuedAt?: LoopbackEngine }>();

  protected postSend(peer: NetAddr, data: Uint8Array, op: PendingOp): void {
    const lane = 0;
    const ev = this.fabric.schedule(() => {
      let target: LoopbackEngine;
      try {
        target = this.fabric.resolve(peer, op.callsite.op);
      } catch (e) {
        this.finishSend(op, lane, data.length, e as TrellisError);
        return;
      }
      const err = this.laneError(target, lane, op.callsite.op);
      if (err) this.finishSend(op, lane, data.length, err);
      else target.receive({ from: this, data, op, lane });
    });
    this.sends.set(op, { ev });
  }

  private cancelSend(op: PendingOp, reason: TrellisError): void {
    const s = this.sends.get(op);
    if (!s) return;
    if (s.queuedAt) {
      if (!s.queuedAt.dropUnexpected(op)) return; // already delivered: its completion resolves it
    } else {
      s.ev.cancelled = true;
    }
    this.sends.delete(op);
    op.fail(reason);
  }

  /** @internal Remove a queued message of a cancelled send; false if it was already delivered. */
  dropUnexpected(op: PendingOp): boolean {
    const i = this.unexpected.findIndex((m) => m.op === op);
    if (i < 0) return false;
    this.unexpected.splice(i, 1);
    return true;
  }

  /** @internal Called by the sender's event: a message arrives here. */
  receive(m: QueuedMessage): void {
    if (this.recvPools.length === 0) {
      // No buffer posted yet: held as an unexpected message (as libfabric RDM providers do) until one is.
      this.unexpected.push(m);
      const s = m.from.sends.get(m.op);
      if (s) s.queuedAt = this;
      return;
    }
    const s = m.from.sends.get(m.op);
    if (s) s.queuedAt = undefined;
    const pool = this.recvPools[this.poolCursor++ % this.recvPools.length]!;
    const nic = this.nicCounters[m.lane]!;
    // The sender's completion follows delivery, in random order with everything else.
    const done = (): void => {
      m.from.fabric.schedule(() => m.from.finishSend(m.op, m.lane, m.data.length, undefined));
    };
    if (m.data.length > pool.maxBytes) {
      this.recvDropped++;
      nic.errors++;
      done();
      const onError = pool.onError;
      if (onError)
        callUser(() =>
          onError(
            new TrellisError(
              'MESSAGE_TRUNCATED',
              `submitRecvs: a ${m.data.length}-byte message from ${m.from.address.toString()} exceeds the ${pool.maxBytes}-byte receive buffers; it was dropped`,
              { peer: m.from.address.toString(), nic: m.lane },
            ),
          ),
        );
      return;
    }
    nic.recvOps++;
    nic.bytesReceived += m.data.length;
    done();
    callUser(() => pool.onRecv({ from: m.from.address, data: m.data }));
  }

  /** @internal */
  finishSend(op: PendingOp, lane: number, bytes: number, err: TrellisError | undefined): void {
    this.sends.delete(op);
    const nic = this.nicCounters[lane]!;
    if (err) {
      nic.errors++;
      op.fail(err);
    } else {
      nic.sendOps++;
      nic.bytesSent += bytes;
      op.complete();
    }
  }

  protected postRecvs(pool: RecvPool): void {
    this.recvPools.push(pool);
    const waiting = this.unexpected.splice(0);
    for (const m of waiting) this.fabric.schedule(() => this.receive(m));
  }

  protected cancelRecvs(pool: RecvPool): void {
    const i = this.recvPools.indexOf(pool);
    if (i >= 0) this.recvPools.splice(i, 1);
    pool.end();
  }

  // -- watcher ----------------------------------------------------------------------------------

  protected createWatcher(onChange: UvmWatcherCallback, onClose: (w: UvmWatcher) => void): UvmWatcher {
    return new PollingWatcher(onChange, onClose, this.pollMs);
  }

  // -- lifecycle and stats ----------------------------------------------------------------------

  protected async shutdown(): Promise<void> {
    // Nothing of this engine may land after close: drop every work request not yet landed.
    for (const flight of this.flights.values()) {
      for (const ev of flight.unlanded) ev.cancelled = true;
    }
    this.flights.clear();
    for (const s of this.sends.values()) s.ev.cancelled = true;
    this.sends.clear();
    const err = new TrellisError(
      'PEER_LOST',
      `submitSend: the peer ${this.dead ? 'was killed' : 'closed'} before taking the message`,
      {
        peer: this.address.toString(),
      },
    );
    for (const m of this.unexpected.splice(0)) m.from.finishSend(m.op, m.lane, 0, err);
    for (const pool of this.recvPools.splice(0)) pool.end();
    for (const m of this.regionsByKey) m.clear();
    if (this.dead) {
      for (const op of this.pendingOps()) {
        op.fail(new TrellisError('CLOSED', `${op.callsite.op}: this engine was killed by fault injection`));
      }
    }
  }

  protected nicStats(): NicStats[] {
    return this.nicCounters.map((n) => ({ ...n }));
  }
}

/** Host-memory watcher: polls the word (as the native thread spins on it) and is woken early by `increment`. */
class PollingWatcher implements UvmWatcher {
  readonly word: BigUint64Array;
  readonly devicePtr = 0n;
  private last = 0n;
  seenAt = 0n;
  private triggers: Array<{ at: bigint; op: PendingOp; fire: () => void; fail: (e: TrellisError) => void }> =
    [];
  private timer: NodeJS.Timeout | undefined;
  private kick: NodeJS.Immediate | undefined;
  private closed = false;

  constructor(
    private readonly onChange: UvmWatcherCallback,
    private readonly onClose: (w: UvmWatcher) => void,
    pollMs: number,
  ) {
    this.word = new BigUint64Array(new SharedArrayBuffer(8));
    this.timer = setInterval(() => this.check(), pollMs);
  }

  get value(): bigint {
    return Atomics.load(this.word, 0);
  }

  increment(n = 1n): bigint {
    if (this.closed) throw new TrellisError('CLOSED', 'UvmWatcher.increment: the watcher is closed');
    const v = Atomics.add(this.word, 0, n) + n;
    this.kick ??= setImmediate(() => {
      this.kick = undefined;
      this.check();
    });
    return v;
  }

  /** @internal Post `fire` the first time the word reads at least `at` (now if it does). */
  arm(at: bigint, op: PendingOp, fire: () => void, fail: (e: TrellisError) => void): void {
    if (Atomics.load(this.word, 0) >= at) fire();
    else this.triggers.push({ at, op, fire, fail });
  }

  /** @internal */
  disarm(op: PendingOp): void {
    this.triggers = this.triggers.filter((t) => t.op !== op);
  }

  private check(): void {
    if (this.closed) return;
    const v = Atomics.load(this.word, 0);
    if (v === this.last) return;
    const prev = this.last;
    this.last = v;
    this.seenAt = process.hrtime.bigint();
    const due = this.triggers.filter((t) => v >= t.at);
    if (due.length) this.triggers = this.triggers.filter((t) => v < t.at);
    for (const t of due) t.fire();
    callUser(() => this.onChange(v, prev));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.kick) clearImmediate(this.kick);
    const pending = this.triggers;
    this.triggers = [];
    for (const t of pending)
      t.fail(
        new TrellisError(
          'ABORTED',
          'submitOnWatch: the watcher was closed before it reached the trigger value',
        ),
      );
    this.onClose(this);
  }
}
