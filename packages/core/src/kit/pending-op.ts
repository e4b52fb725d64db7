// One submitted operation: its promise, deadline, cancellation and the regions it holds. Settles
// exactly once. Imports only the contract and Region; the engine reaches back through OpOwner.
import type { NetAddr } from '../addr.js';
import { type CallSite, TrellisError } from '../errors.js';
import type { OpOptions } from '../types.js';
import type { LiveOps } from './live-ops.js';
import type { Region } from './region.js';
import type { Timer, Timers } from './timers.js';

const COMPLETED = Object.freeze({ error: undefined });

/** What a {@link PendingOp} tells the engine that owns it. */
export interface OpOwner {
  /** A deadline or abort asked for cancellation: the backend cancels what it posted. */
  cancelRequested(op: PendingOp, reason: TrellisError): void;
  /** The op settled (before its promise does). */
  opSettled(op: PendingOp, ok: boolean): void;
  /** A held op's posted work was let go of. */
  heldLetGo(op: PendingOp): void;
  /** The op failed PEER_LOST. */
  peerFailed(op: PendingOp, err: TrellisError): void;
  /** The engine's timers, which its polling loops fire too (the op's deadline is one). */
  readonly timers: Timers;
}

/**
 * One submitted operation. Settles exactly once: the first of {@link PendingOp.complete} and
 * {@link PendingOp.fail} wins; later calls are ignored.
 */
export class PendingOp {
  settled = false;
  /** A backend's own work for a user operation (not counted in stats; never handed to users). */
  internal = false;
  /** A heartbeat or probe: its own connection error is the answer, never probed again. */
  liveness = false;
  /** How many of the user's requests it stands for (a batch's merged writes: more than one). */
  weight = 1;
  private settledWith: { error: TrellisError | undefined } | undefined;
  private promiseOf: Promise<void> | undefined;
  private resolveFn: (() => void) | undefined;
  private rejectFn: ((e: unknown) => void) | undefined;
  private timer: Timer | undefined;
  /** The AbortSignal the op watches, if any. */
  signal: AbortSignal | undefined;
  /** @internal When a native backend handed it to its worker (Date.now(); its watchdog reads it). */
  postedAt = 0;
  /** Set when a deadline or abort asked for cancellation. */
  cancelReason: TrellisError | undefined;
  /** @internal In its engine's {@link LiveOps} (not settled yet). */
  live = false;
  /** @internal Its neighbours in its engine's {@link LiveOps}. */
  livePrev: PendingOp | undefined = undefined;
  /** @internal */
  liveNext: PendingOp | undefined = undefined;
  /** @internal The peers (their `NetAddr` text) it counts as in flight to until it is let go of. */
  peerKeys: string[] | undefined = undefined;
  /**
   * @internal Told as the op settles, before its engine's stats count it and its caller (or its
   * batch) hears: counters of a path (the same-host lane's) that must agree with `stats().ops`.
   */
  onFinish: ((ok: boolean) => void) | undefined = undefined;

  constructor(
    readonly id: number,
    readonly callsite: CallSite,
    readonly peer: NetAddr | undefined,
    readonly regions: readonly Region[],
    private readonly engine: OpOwner,
    /** Told the outcome once, when the op settles (a batch's ops use this instead of a promise). */
    private readonly onSettle?: (error: TrellisError | undefined) => void,
  ) {
    for (const r of regions) r.use();
  }

  /**
   * Settles with the op: resolves once it completed, rejects with its error. Made on first use, so
   * an op nobody awaits (one of a batch) costs no promise.
   */
  get promise(): Promise<void> {
    if (!this.promiseOf) {
      const s = this.settledWith;
      if (s) this.promiseOf = s.error ? Promise.reject(s.error) : Promise.resolve();
      else
        this.promiseOf = new Promise<void>((res, rej) => {
          this.resolveFn = res;
          this.rejectFn = rej;
        });
    }
    return this.promiseOf;
  }

  /**
   * Arm the deadline: when it passes, the backend is asked to cancel. (The engine watches the
   * AbortSignal, one listener per signal.) `why`: the TIMEOUT's text after the op's name (default
   * "timed out after N ms").
   */
  arm(opts: OpOptions, why?: string): void {
    if (opts.timeoutMs !== undefined) {
      this.armedAt = performance.now();
      this.timeoutMs = opts.timeoutMs;
      this.timer = this.engine.timers.after(opts.timeoutMs, () => {
        this.requestCancel(
          new TrellisError(
            'TIMEOUT',
            `${this.callsite.op}: ${why ?? `timed out after ${opts.timeoutMs} ms`}`,
          ),
        );
      });
    }
  }

  /** Whether a deadline is armed (its own `timeoutMs`). */
  get hasDeadline(): boolean {
    return this.timer !== undefined;
  }

  /** @internal Told when a held op is let go of (after the engine is). */
  onLetGo: (() => void) | undefined = undefined;

  private armedAt = 0;
  private timeoutMs: number | undefined;

  /** @internal Called by the engine when the op's signal aborts. */
  requestCancel(reason: TrellisError): void {
    if (this.settled || this.cancelReason) return;
    this.cancelReason = reason;
    this.engine.cancelRequested(this, reason);
  }

  /**
   * Settled with work still posted (its deadline passed first): the provider may still read its
   * regions and write its targets, so they stay in use and its peers' in-flight counts keep it
   * until `letGo()`.
   */
  held = false;

  /** @internal Before settling: keep regions and in-flight counts until {@link PendingOp.letGo}. */
  hold(): void {
    if (!this.settled) this.held = true;
  }

  /** @internal The provider let go of the op's posted work (or the engine gave up waiting). */
  letGo(): void {
    if (!this.held || !this.settled) return;
    this.held = false;
    for (const r of this.regions) r.release();
    this.engine.heldLetGo(this);
    this.onLetGo?.();
  }

  private finish(ok: boolean): boolean {
    if (this.settled) return false;
    this.settled = true;
    if (this.timer) this.engine.timers.cancel(this.timer);
    if (!this.held) for (const r of this.regions) r.release();
    this.onFinish?.(ok);
    this.engine.opSettled(this, ok);
    return true;
  }

  complete(): void {
    if (!this.finish(true)) return;
    this.settledWith = COMPLETED;
    this.onSettle?.(undefined);
    this.resolveFn?.();
  }

  fail(reason: TrellisError): void {
    if (!this.finish(false)) return;
    let err = reason;
    if (reason === this.cancelReason && reason.code === 'TIMEOUT' && this.timeoutMs !== undefined) {
      // It settles at its deadline (work still posted stays posted: see the held report), as soon
      // as the deadline's timer has run here and the worker has taken the work back: say how long
      // that really took when it is well past the deadline (a busy machine delays both).
      const ms = Math.round(performance.now() - this.armedAt);
      if (ms > this.timeoutMs + 100)
        err = new TrellisError(
          'TIMEOUT',
          `${this.callsite.op}: timed out after ${this.timeoutMs} ms; settled ${ms} ms after it was submitted (this event loop or the engine's worker acted on the deadline late: a busy machine)`,
        );
    }
    // A heartbeat's or a probe's own failure is judged by its caller (misses in a row; a probe's
    // answer): a connection reset under it is not yet the peer's death.
    if (err.code === 'PEER_LOST' && !this.liveness) this.engine.peerFailed(this, err);
    const e = this.callsite.attach(
      err.peer === undefined && this.peer ? err.withDetails({ peer: this.peer.toString() }) : err,
    );
    this.settledWith = { error: e };
    this.onSettle?.(e);
    this.rejectFn?.(e);
  }
}
