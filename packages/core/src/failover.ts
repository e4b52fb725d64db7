// NIC failover with exactly-once immediates (issue 10, item 3).
//
// The difficulty: a work request that fails may still have delivered its bytes and its immediate
// (the NIC died after the target saw the write, before the sender saw the completion), and an
// RDMA immediate carries no identity a target could de-duplicate by. So with failover on, an
// operation never lets an immediate ride on a write:
//
//   1. its data goes as plain writes (no immediates) on the NICs that are up;
//   2. a NIC-attributed failure marks an error on that NIC and re-posts all of the data on the NICs
//      still up — idempotent (the same bytes to the same place) and safe, because no immediate has
//      told the target the bytes are there yet;
//   3. once every byte is delivered, the sender raises the immediates with one control message per
//      target, {imm, count, token}; a message whose fate is unknown is sent again, on another NIC,
//      with the same token, and the target counts each (sender, token) once.
//
// The target counts exactly what the request would have produced without failover (one per
// work request per target), so receivers need no change. A NIC with `maxErrors` errors within
// `windowMs` is down for `cooldownMs`; after that its next use is the probe.
import type { NetAddr } from './addr.js';
import type { PendingOp } from './engine-base.js';
import { CallSite, TrellisError } from './errors.js';
import type { FailoverOptions, FailoverStats } from './types.js';
import { type Plan, type RunsPlan, type WorkRequest, workRequests } from './validate.js';

/** First byte of a failover control message. @internal */
export const FAILOVER_IMM = 0x46;
const MSG_BYTES = 20; // [type u8][pad u8][reserved u16][imm u32][count u32][token u64]
const REMEMBERED_TOKENS = 4096; // per sender

/** What failover needs from its engine. @internal */
export interface FailoverHost {
  readonly nics: number;
  lanesTo(peer: NetAddr): number;
  internalOp(site: CallSite, peer: NetAddr | undefined): PendingOp;
  /** Post a plan as the backend would (data only: failover plans carry no immediates). */
  postPlan(plan: Plan, op: PendingOp): void;
  /** Send an engine control message to `peer` on `lane`. */
  postControl(peer: NetAddr, lane: number, bytes: Uint8Array, op: PendingOp): void;
  /** Count `count` arrivals of `imm` here. */
  arrive(imm: number, count: number): void;
}

interface Flight {
  user: PendingOp;
  current: PendingOp | undefined;
  phase: 'data' | 'imms';
  /** NICs that failed this operation: its re-posts go elsewhere while another is up. */
  avoid: Set<number>;
}

/** Per-engine NIC health and the failover state machine. @internal */
export class Failover {
  private readonly opts: Required<FailoverOptions>;
  private readonly errors: number[][];
  private readonly downUntil: number[];
  private readonly flights = new Map<PendingOp, Flight>();
  private nextToken = 1n;
  private readonly seen = new Map<string, { set: Set<bigint>; order: bigint[] }>();
  readonly stats: FailoverStats = { reposts: 0, nicsMarkedDown: 0, controlImms: 0, duplicateImms: 0 };

  constructor(
    private readonly host: FailoverHost,
    opts: FailoverOptions,
  ) {
    this.opts = {
      maxErrors: opts.maxErrors ?? 3,
      windowMs: opts.windowMs ?? 1000,
      cooldownMs: opts.cooldownMs ?? 5000,
      maxReposts: opts.maxReposts ?? 3,
    };
    for (const [k, v] of Object.entries(this.opts))
      if (!Number.isSafeInteger(v) || v < (k === 'maxErrors' ? 1 : 0))
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `createEngine: failover.${k} must be an integer >= ${k === 'maxErrors' ? 1 : 0}, got ${String(v)}`,
        );
    this.errors = Array.from({ length: host.nics }, () => []);
    this.downUntil = new Array(host.nics).fill(0);
  }

  /** Whether NIC `i` is up (not inside a cooldown). */
  isUp(i: number): boolean {
    return Date.now() >= (this.downUntil[i] ?? 0);
  }

  /** Record an error on NIC `i`; true when it (now) is down. */
  nicError(i: number): boolean {
    if (i < 0 || i >= this.errors.length) return false;
    const now = Date.now();
    const e = this.errors[i]!.filter((t) => now - t < this.opts.windowMs);
    e.push(now);
    this.errors[i] = e;
    if (e.length >= this.opts.maxErrors && this.isUp(i)) {
      this.downUntil[i] = now + this.opts.cooldownMs;
      this.errors[i] = [];
      this.stats.nicsMarkedDown++;
    }
    return !this.isUp(i);
  }

  /**
   * Lanes to `peer` that are up, in order, without those that already failed this operation
   * (unless nothing else is left).
   */
  private healthy(peer: NetAddr, avoid?: ReadonlySet<number>): number[] {
    const out: number[] = [];
    for (let l = 0; l < this.host.lanesTo(peer); l++) if (this.isUp(l)) out.push(l);
    const fresh = avoid?.size ? out.filter((l) => !avoid.has(l)) : out;
    return fresh.length ? fresh : out;
  }

  /** Whether failover takes this plan (more than one NIC, a write or an immediate, host memory). */
  handles(plan: Plan): boolean {
    return this.host.nics > 1 && plan.op !== 'runs';
  }

  /** Run a user operation through failover. */
  start(plan: Plan, user: PendingOp): void {
    const wrs = workRequests(plan);
    // What the target counts: one per work request that carries the immediate, per peer.
    const imms = new Map<string, { peer: NetAddr; count: number }>();
    if (plan.imm !== undefined)
      for (const wr of wrs) {
        const k = wr.peer.toString();
        const t = imms.get(k) ?? { peer: wr.peer, count: 0 };
        t.count++;
        imms.set(k, t);
      }
    const data = wrs.filter((w) => w.dst !== undefined && w.length > 0);
    const flight: Flight = { user, current: undefined, phase: 'data', avoid: new Set() };
    this.flights.set(user, flight);
    const src = plan.op === 'single' || plan.op === 'paged' || plan.op === 'scatter' ? plan.src : undefined;
    const finish = (err?: TrellisError) => {
      this.flights.delete(user);
      if (err) user.fail(err);
      else if (user.cancelReason && flight.phase === 'data') user.fail(user.cancelReason);
      else user.complete();
    };
    const raise = () => {
      flight.phase = 'imms';
      const targets = [...imms.values()];
      if (!targets.length || plan.imm === undefined) return finish();
      let left = targets.length;
      let failed: TrellisError | undefined;
      for (const t of targets)
        this.sendImms(t.peer, plan.imm, t.count, flight, (err) => {
          failed ??= err;
          if (--left === 0) finish(failed);
        });
    };
    let reposts = 0;
    const postData = () => {
      if (user.cancelReason) return finish(user.cancelReason);
      if (!data.length) return raise();
      const runs: WorkRequest[] = [];
      const byPeer = new Map<string, number[]>();
      let i = 0;
      for (const w of data) {
        const k = w.peer.toString();
        let lanes = byPeer.get(k);
        if (!lanes) {
          lanes = this.healthy(w.peer, flight.avoid);
          byPeer.set(k, lanes);
        }
        if (!lanes.length)
          return finish(
            new TrellisError(
              'NIC_FAILED',
              `${user.callsite.op}: every NIC to ${k} is down (failover found none to re-post on)`,
              { op: user.callsite.op, peer: k },
            ),
          );
        runs.push({ ...w, lane: lanes[i++ % lanes.length]!, imm: undefined });
      }
      const sub = this.host.internalOp(new CallSite(user.callsite.op), user.peer);
      flight.current = sub;
      sub.promise.then(
        () => {
          flight.current = undefined;
          raise();
        },
        (e: TrellisError) => {
          flight.current = undefined;
          if (user.cancelReason) return finish(user.cancelReason);
          if (!nicAttributed(e) || reposts >= this.opts.maxReposts) return finish(e);
          this.nicError(e.nic);
          flight.avoid.add(e.nic);
          reposts++;
          this.stats.reposts++;
          postData();
        },
      );
      const runsPlan: RunsPlan = { op: 'runs', src: src!, runs, imm: undefined };
      try {
        this.host.postPlan(runsPlan, sub);
      } catch (e) {
        sub.fail(e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e)));
      }
    };
    postData();
  }

  /** Raise `count` of `imm` at `peer`: one control message, sent again with the same token until one is known delivered. */
  private sendImms(
    peer: NetAddr,
    imm: number,
    count: number,
    flight: Flight,
    done: (err?: TrellisError) => void,
  ): void {
    const token = this.nextToken++;
    const msg = new Uint8Array(MSG_BYTES);
    const v = new DataView(msg.buffer);
    v.setUint8(0, FAILOVER_IMM);
    v.setUint32(4, imm, true);
    v.setUint32(8, count, true);
    v.setBigUint64(12, token, true);
    let attempts = 0;
    const limit = (this.opts.maxReposts + 1) * this.host.nics;
    const attempt = (): void => {
      const lanes = this.healthy(peer, flight.avoid);
      if (!lanes.length) {
        done(
          new TrellisError(
            'NIC_FAILED',
            `${flight.user.callsite.op}: every NIC to ${peer.toString()} is down; its immediates could not be raised`,
            { peer: peer.toString() },
          ),
        );
        return;
      }
      const lane = lanes[0]!;
      attempts++;
      const sub = this.host.internalOp(new CallSite(flight.user.callsite.op), peer);
      flight.current = sub;
      sub.promise.then(
        () => {
          flight.current = undefined;
          this.stats.controlImms += count;
          done();
        },
        (e: TrellisError) => {
          flight.current = undefined;
          if (!nicAttributed(e) || attempts >= limit) return done(e);
          this.nicError(e.nic);
          flight.avoid.add(e.nic);
          this.stats.reposts++;
          attempt();
        },
      );
      try {
        this.host.postControl(peer, lane, msg, sub);
      } catch (e) {
        sub.fail(e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e)));
      }
    };
    attempt();
  }

  /** A control message arrived: count its immediates unless this (sender, token) was counted. */
  onMessage(from: NetAddr, bytes: Uint8Array): void {
    if (bytes.length !== MSG_BYTES || bytes[0] !== FAILOVER_IMM) return;
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const imm = v.getUint32(4, true);
    const count = v.getUint32(8, true);
    const token = v.getBigUint64(12, true);
    const key = from.toString();
    let s = this.seen.get(key);
    if (!s) {
      s = { set: new Set(), order: [] };
      this.seen.set(key, s);
    }
    if (s.set.has(token)) {
      this.stats.duplicateImms += count;
      return;
    }
    s.set.add(token);
    s.order.push(token);
    if (s.order.length > REMEMBERED_TOKENS) s.set.delete(s.order.shift()!);
    this.host.arrive(imm, count);
  }

  /**
   * Cancellation of a user operation under failover: in the data phase, cancel what is posted (the
   * operation then fails with the reason once it settles); once immediates are being raised it
   * finishes (a raised immediate cannot be taken back). True if the operation was failover's.
   */
  cancel(user: PendingOp): boolean {
    const f = this.flights.get(user);
    if (!f) return false;
    if (f.phase === 'data' && f.current) f.current.requestCancel(user.cancelReason!);
    return true;
  }
}

/** An error a NIC caused, with its index: worth re-posting elsewhere. */
function nicAttributed(e: unknown): e is TrellisError & { nic: number } {
  return (
    e instanceof TrellisError &&
    e.nic !== undefined &&
    (e.code === 'NIC_FAILED' || e.code === 'PROVIDER_ERROR')
  );
}
