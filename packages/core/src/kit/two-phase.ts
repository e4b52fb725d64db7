// The two-phase writer: data first, immediates after. Two users: NIC failover with exactly-once
// immediates, and regions registered in parts (work cut at part boundaries).
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
//      target, {imm, count, token}, which the target acknowledges ({token}, back on the NIC it came
//      by); a message not acknowledged within `attemptMs` (or whose send failed) is sent again, on
//      another NIC, with the same token, and the target counts each (sender, token) once.
//
// Data goes as one internal operation per (source registration, NIC), each with its own deadline
// (`attemptMs`, plus 1 ms per MiB it moves): a NIC that dies without an error — a target's port that
// stops answering, a connection that swallows what is sent — costs one attempt, and only that
// NIC's share of the data is re-posted. The target counts exactly what the request would have
// produced without failover (one per work request per target), so receivers need no change. A NIC
// with `maxErrors` errors within `windowMs` is down for `cooldownMs`; after that its next use is
// the probe.
import type { NetAddr } from '../addr.js';
import { CallSite, TrellisError } from '../errors.js';
import type { FailoverOptions, FailoverStats, MrHandle } from '../types.js';
import type { PendingOp } from './pending-op.js';
import type { PartedRegion, Region } from './region.js';
import { immediatesOf, type Plan, type RunsPlan, show, type WorkRequest, workRequests } from './validate.js';

/** First byte of a failover control message that raises immediates. @internal */
export const FAILOVER_IMM = 0x46;
/** First byte of a target's acknowledgement of a {@link FAILOVER_IMM} message. @internal */
export const FAILOVER_ACK = 0x47;
const MSG_BYTES = 20; // [type u8][lane u8][reserved u16][imm u32][count u32][token u64]
const ACK_BYTES = 12; // [type u8][lane u8][reserved u16][token u64]
/** Added to `attemptMs` per MiB an attempt moves (a floor of 1 GiB/s before a slow NIC counts as dead). */
const MS_PER_MIB = 1;
const REMEMBERED_TOKENS = 4096; // per sender

/** What failover needs from its engine. @internal */
export interface FailoverHost {
  readonly nics: number;
  lanesTo(peer: NetAddr): number;
  /** An internal operation; `regions` stay in use while it is (held past its deadline included). */
  internalOp(site: CallSite, peer: NetAddr | undefined, regions?: readonly Region[]): PendingOp;
  /** Post a plan as the backend would (data only: failover plans carry no immediates). */
  postPlan(plan: Plan, op: PendingOp): void;
  /** Send an engine control message to `peer` on `lane`. */
  postControl(peer: NetAddr, lane: number, bytes: Uint8Array, op: PendingOp): void;
  /** Count `count` arrivals of `imm` here. */
  arrive(imm: number, count: number): void;
  /** Run `fn` in `ms` (the engine's timers); returns a function that disarms it. */
  after(ms: number, fn: () => void): () => void;
  /**
   * Every path to `peer` is down while this engine's NICs are up: probe it on each NIC; a peer
   * that answers none is lost, one that answers has its paths back.
   */
  allPathsDown(peer: NetAddr): void;
}

interface Flight {
  user: PendingOp;
  /** Internal operations in flight (a data phase may post one per source registration). */
  subs: Set<PendingOp>;
  phase: 'data' | 'imms';
  /** NICs that failed this operation: its re-posts go elsewhere while another is up. */
  avoid: Set<number>;
  /** Settled (or its user's cancellation settled it while its immediates were being raised). */
  done: boolean;
  /** Stops the control messages still being raised (their timers and resends). */
  stops: Set<() => void>;
  /** Shares that settled with work still posted (held): the user's operation is held with them. */
  held: Set<PendingOp>;
}

/**
 * A work request cut at part boundaries (regions registered in parts): its source is the part's
 * own registration.
 */
interface Piece extends WorkRequest {
  src: MrHandle;
}

/**
 * The two-phase writer, with the engine's NIC health: data first, immediates after. Failover uses it
 * (re-posting on NICs that are up, raising immediates by de-duplicated control messages); so do
 * writes that touch regions registered in parts, whose work requests are cut at part boundaries
 * (their immediates then follow as immediate-only writes, one per original work request). @internal
 */
export class TwoPhaseWriter {
  private readonly opts: Required<FailoverOptions>;
  private readonly errors: number[][];
  private readonly downUntil: number[];
  private readonly flights = new Map<PendingOp, Flight>();
  private nextToken = 1n;
  private readonly seen = new Map<string, { set: Set<bigint>; order: bigint[] }>();
  /** Senders' tokens awaiting the target's acknowledgement. */
  private readonly acks = new Map<bigint, { peer: string; acked: () => void }>();
  readonly stats: FailoverStats = noFailoverStats();
  /**
   * Per peer and NIC: when the path is usable again, and its recent errors. A path fails where the
   * NIC does not — a target's NIC that died, a connection that swallows work — and costs only that
   * peer: one peer's death must not take a NIC down for the others.
   */
  private readonly paths = new Map<string, { until: number[]; errors: number[][] }>();
  /** Failover proper (health, re-posts, control-message immediates); false: two-phase writes only. */
  readonly enabled: boolean;

  /** @param opts failover's options, or undefined: two-phase writes only (regions in parts), no failover. */
  constructor(
    private readonly host: FailoverHost,
    opts: FailoverOptions | undefined,
  ) {
    this.enabled = opts !== undefined;
    this.opts = failoverSettings(opts ?? { maxReposts: 0 });
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
    const path = this.paths.get(peer.toString());
    const now = Date.now();
    for (let l = 0; l < this.host.lanesTo(peer); l++)
      if (!this.enabled || (this.isUp(l) && !(path && now < (path.until[l] ?? 0)))) out.push(l);
    const fresh = avoid?.size ? out.filter((l) => !avoid.has(l)) : out;
    return fresh.length ? fresh : out;
  }

  /** The first NIC to `peer` that is up (for probes), or undefined if none is. */
  probeLane(peer: NetAddr): number | undefined {
    const up = this.healthy(peer);
    if (up.length) return up[0];
    for (let l = 0; l < this.host.lanesTo(peer); l++) if (this.isUp(l)) return l;
    return undefined;
  }

  /**
   * Record a failure of the path to `peer` on NIC `lane` that is not the NIC's own: a share not
   * delivered or a message not acknowledged within `attemptMs` (`now`: down at once — the path did
   * nothing for that long), or a connection reset under it (down after `maxErrors` within
   * `windowMs`). Down for `cooldownMs`, for this peer only.
   */
  pathError(peer: NetAddr, lane: number, now: boolean): void {
    const key = peer.toString();
    let p = this.paths.get(key);
    if (!p) {
      p = { until: [], errors: [] };
      this.paths.set(key, p);
    }
    const t = Date.now();
    if ((p.until[lane] ?? 0) > t) return;
    const e = (p.errors[lane] ?? []).filter((x) => t - x < this.opts.windowMs);
    e.push(t);
    p.errors[lane] = e;
    if (now || e.length >= this.opts.maxErrors) {
      p.until[lane] = t + this.opts.cooldownMs;
      p.errors[lane] = [];
      this.stats.pathsMarkedDown++;
      const nicsUp = this.errors.some((_, i) => this.isUp(i));
      if (nicsUp && this.healthy(peer).length === 0) this.host.allPathsDown(peer);
    }
  }

  /** Why no NIC to the peer `key` is usable: the NICs are down, or only the paths to it. */
  private noneUp(key: string): string {
    return this.errors.some((_, i) => this.isUp(i))
      ? `every path to ${key} is down (failover gave each up: attempts timed out or connections reset; a probe of the peer decides whether it is lost)`
      : `every NIC to ${key} is down`;
  }

  /** `peer` answered a probe: its paths are usable again. */
  pathsBack(peer: NetAddr): void {
    this.paths.delete(peer.toString());
  }

  /** A failed attempt on `lane` to `peer`: the NIC's own error (NIC_FAILED, a provider error) or the path's. */
  private attemptFailed(peer: NetAddr, lane: number, e: TrellisError): void {
    if (e.code === 'TIMEOUT') this.pathError(peer, lane, true);
    else if (e.code === 'CONNECTION_RESET') this.pathError(peer, lane, false);
    else this.nicError(lane);
  }

  /** Whether failover takes this plan (more than one NIC, a write or an immediate, host memory). */
  handles(plan: Plan): boolean {
    return this.enabled && this.host.nics > 1 && plan.op !== 'runs';
  }

  /**
   * Run a user operation in two phases. `parts` cuts its work requests where the source region
   * (`src`) or a destination descriptor is registered in parts.
   */
  start(plan: Plan, user: PendingOp, src?: PartedRegion): void {
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
    const srcHandle =
      plan.op === 'single' || plan.op === 'paged' || plan.op === 'scatter' ? plan.src : undefined;
    const data = cut(
      wrs.filter((w) => w.dst !== undefined && w.length > 0),
      srcHandle,
      src,
    );
    const flight: Flight = {
      user,
      subs: new Set(),
      phase: 'data',
      avoid: new Set(),
      done: false,
      stops: new Set(),
      held: new Set(),
    };
    this.flights.set(user, flight);
    const finish = (err?: TrellisError) => {
      if (flight.done) return;
      flight.done = true;
      this.flights.delete(user);
      // A share given up with its work still posted (its deadline came first) may still read the
      // source: the user's operation is held with it (regions in use, `quiesce` waits) until the
      // provider lets go of every such share.
      if (flight.held.size) {
        user.hold();
        for (const sub of flight.held)
          sub.onLetGo = () => {
            flight.held.delete(sub);
            if (!flight.held.size) user.letGo();
          };
      }
      if (err) user.fail(err);
      else if (user.cancelReason && flight.phase === 'data') user.fail(user.cancelReason);
      else user.complete();
    };
    const raise = () => {
      flight.phase = 'imms';
      const targets = [...imms.values()];
      if (!targets.length || plan.imm === undefined) return finish();
      if (!this.enabled) {
        // Immediate-only writes, one per original work request, each on its original lane.
        this.postSub(flight, immediatesOf(wrs, plan.imm), undefined, finish, (e) => finish(e));
        return;
      }
      let left = targets.length;
      let failed: TrellisError | undefined;
      for (const t of targets)
        this.sendImms(t.peer, plan.imm, t.count, flight, (err) => {
          failed ??= err;
          if (--left === 0) finish(failed);
        });
    };
    // The data phase: one internal operation per (source registration, NIC). One that fails on a
    // NIC (an error the NIC caused, a connection reset under it, its own deadline) has its share
    // re-posted on the NICs still up; the immediates go once every share is delivered.
    let reposts = 0;
    let open = 1; // the posting below, until it has posted everything
    let failed: TrellisError | undefined;
    const settled = () => {
      if (--open > 0) return;
      if (user.cancelReason) return finish(user.cancelReason);
      if (failed) return finish(failed);
      raise();
    };
    const post = (pieces: readonly Piece[]) => {
      const groups = new Map<MrHandle, Map<number, Piece[]>>();
      const byPeer = new Map<string, number[]>();
      let i = 0;
      for (const w of pieces) {
        let lane = w.lane;
        if (this.enabled) {
          const k = w.peer.toString();
          let lanes = byPeer.get(k);
          if (!lanes) {
            lanes = this.healthy(w.peer, flight.avoid);
            byPeer.set(k, lanes);
          }
          if (!lanes.length) {
            failed ??= new TrellisError(
              'NIC_FAILED',
              `${user.callsite.op}: ${this.noneUp(k)} (failover found none to re-post on)`,
              { op: user.callsite.op, peer: k },
            );
            continue;
          }
          lane = lanes[i++ % lanes.length]!;
        }
        let bySrc = groups.get(w.src);
        if (!bySrc) {
          bySrc = new Map();
          groups.set(w.src, bySrc);
        }
        const list = bySrc.get(lane) ?? [];
        list.push({ ...w, lane });
        bySrc.set(lane, list);
      }
      for (const [h, byLane] of groups)
        for (const [lane, list] of byLane) {
          open++;
          const runs = list.map(({ src: _src, ...wr }) => ({ ...wr, imm: undefined }));
          const bytes = list.reduce((n, w) => n + w.length, 0);
          const deadline = this.enabled
            ? this.opts.attemptMs + Math.ceil((bytes / 2 ** 20) * MS_PER_MIB)
            : undefined;
          this.postSub(flight, { op: 'runs', src: h, runs, imm: undefined }, deadline, settled, (e, sub) => {
            const peer = list[0]!.peer;
            const retry = !user.cancelReason && this.retryable(e, sub);
            if (retry) {
              if (e.code === 'TIMEOUT') this.stats.attemptTimeouts++;
              this.attemptFailed(peer, lane, e);
              flight.avoid.add(lane);
            }
            if (retry && reposts < this.opts.maxReposts) {
              reposts++;
              this.stats.reposts++;
              post(list);
            } else
              failed ??=
                retry && e.code === 'TIMEOUT'
                  ? new TrellisError(
                      'TIMEOUT',
                      `${user.callsite.op}: a share of its data was not delivered within failover.attemptMs (${this.opts.attemptMs} ms, plus 1 ms per MiB) on ${reposts + 1} attempt(s) (maxReposts ${this.opts.maxReposts}); whether it landed is unknown`,
                      { peer: peer.toString() },
                    )
                  : e;
            settled();
          });
        }
    };
    if (user.cancelReason) {
      finish(user.cancelReason);
      return;
    }
    post(data);
    settled();
  }

  /**
   * Whether a failed internal operation of failover is worth posting again on another NIC: an
   * error its NIC caused, a connection reset under it (the peer answered a probe: it lives), or its
   * own deadline (`attemptMs`: the NIC swallowed the work without an error).
   */
  private retryable(e: TrellisError, sub: PendingOp): boolean {
    if (!this.enabled) return false;
    if (e.code === 'TIMEOUT') return sub.cancelReason?.code === 'TIMEOUT';
    return nicAttributed(e) || e.code === 'CONNECTION_RESET';
  }

  /** Post one plan of a two-phase operation as an internal operation, with a deadline of its own if given. */
  private postSub(
    flight: Flight,
    plan: RunsPlan,
    timeoutMs: number | undefined,
    ok: () => void,
    failed: (e: TrellisError, sub: PendingOp) => void,
  ): void {
    // The user's regions stay in use while the sub is: one given up at its deadline may still be
    // read by the provider after the user's operation settled.
    const sub = this.host.internalOp(
      new CallSite(flight.user.callsite.op),
      flight.user.peer,
      flight.user.regions,
    );
    flight.subs.add(sub);
    sub.promise.then(
      () => {
        flight.subs.delete(sub);
        ok();
      },
      (e: TrellisError) => {
        flight.subs.delete(sub);
        if (sub.held) flight.held.add(sub);
        failed(e, sub);
      },
    );
    if (timeoutMs !== undefined) sub.arm({ timeoutMs });
    try {
      this.host.postPlan(plan, sub);
    } catch (e) {
      sub.fail(e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e)));
    }
  }

  /**
   * Raise `count` of `imm` at `peer`: one control message, which the target acknowledges; sent
   * again with the same token, on another NIC, when its send fails on a NIC or no acknowledgement
   * comes within `attemptMs`.
   */
  private sendImms(
    peer: NetAddr,
    imm: number,
    count: number,
    flight: Flight,
    done: (err?: TrellisError) => void,
  ): void {
    const token = this.nextToken++;
    const op = flight.user.callsite.op;
    const key = peer.toString();
    let attempts = 0;
    let over = false;
    let disarm: (() => void) | undefined;
    const limit = this.opts.maxReposts + 1;
    const end = (err?: TrellisError) => {
      if (over) return;
      over = true;
      disarm?.();
      disarm = undefined;
      this.acks.delete(token);
      flight.stops.delete(stop);
      if (!err) this.stats.controlImms += count;
      done(err);
    };
    this.acks.set(token, { peer: key, acked: () => end() });
    const stop = () => end(flight.user.cancelReason);
    flight.stops.add(stop);
    const again = (lane: number, e: TrellisError) => {
      disarm?.();
      disarm = undefined;
      this.attemptFailed(peer, lane, e);
      flight.avoid.add(lane);
      if (attempts >= limit) return end(e);
      this.stats.reposts++;
      attempt();
    };
    const attempt = () => {
      // The user's cancellation settled the operation while its immediates were being raised:
      // nothing more is sent (what was sent may still be counted).
      if (flight.done) return end(flight.user.cancelReason);
      const lanes = this.healthy(peer, flight.avoid);
      if (!lanes.length)
        return end(
          new TrellisError('NIC_FAILED', `${op}: ${this.noneUp(key)}; its immediates could not be raised`, {
            peer: key,
          }),
        );
      const lane = lanes[0]!;
      const mine = ++attempts;
      const msg = new Uint8Array(MSG_BYTES);
      const v = new DataView(msg.buffer);
      v.setUint8(0, FAILOVER_IMM);
      v.setUint8(1, lane);
      v.setUint32(4, imm, true);
      v.setUint32(8, count, true);
      v.setBigUint64(12, token, true);
      const sub = this.host.internalOp(new CallSite(op), peer);
      disarm = this.host.after(this.opts.attemptMs, () => {
        disarm = undefined;
        if (over || mine !== attempts) return;
        this.stats.attemptTimeouts++;
        const e = new TrellisError(
          'TIMEOUT',
          `${op}: ${key} acknowledged none of ${attempts} control message(s) raising its immediates (maxReposts ${this.opts.maxReposts}), each given failover.attemptMs (${this.opts.attemptMs} ms) on a NIC that was up; whether it counted them is unknown`,
          { peer: key },
        );
        sub.requestCancel(e);
        again(lane, e);
      });
      sub.promise.then(
        () => {
          // Sent: the acknowledgement settles it (or the deadline sends it again).
        },
        (e: TrellisError) => {
          if (over || mine !== attempts) return;
          if (!nicAttributed(e) && e.code !== 'CONNECTION_RESET') return end(e);
          again(lane, e);
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

  /**
   * A control message arrived. Immediates: counted unless this (sender, token) was counted, and
   * acknowledged either way. An acknowledgement: settles the sender's wait for that token.
   */
  onMessage(from: NetAddr, bytes: Uint8Array): void {
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.length === ACK_BYTES && bytes[0] === FAILOVER_ACK) {
      const w = this.acks.get(v.getBigUint64(4, true));
      if (w && w.peer === from.toString()) w.acked();
      return;
    }
    if (bytes.length !== MSG_BYTES || bytes[0] !== FAILOVER_IMM) return;
    const lane = v.getUint8(1);
    const imm = v.getUint32(4, true);
    const count = v.getUint32(8, true);
    const token = v.getBigUint64(12, true);
    const key = from.toString();
    let s = this.seen.get(key);
    if (!s) {
      s = { set: new Set(), order: [] };
      this.seen.set(key, s);
    }
    if (s.set.has(token)) this.stats.duplicateImms += count;
    else {
      s.set.add(token);
      s.order.push(token);
      if (s.order.length > REMEMBERED_TOKENS) s.set.delete(s.order.shift()!);
      this.host.arrive(imm, count);
    }
    this.ack(from, lane, token);
  }

  /**
   * Acknowledge `token` to `to`: on the NIC its message came by (that path works), else — where
   * posting there fails at once — on the others in turn. A lost acknowledgement costs the sender
   * one attempt: it sends the message again, and it is acknowledged again.
   */
  private ack(to: NetAddr, lane: number, token: bigint): void {
    const msg = new Uint8Array(ACK_BYTES);
    const v = new DataView(msg.buffer);
    v.setUint8(0, FAILOVER_ACK);
    v.setUint8(1, lane);
    v.setBigUint64(4, token, true);
    const n = this.host.lanesTo(to);
    const order = [lane, ...Array.from({ length: n }, (_, i) => i).filter((i) => i !== lane)].filter(
      (i) => i < n,
    );
    const next = (k: number): void => {
      const l = order[k];
      if (l === undefined) return;
      const op = this.host.internalOp(new CallSite('failoverAck'), to);
      op.promise.then(
        () => {},
        (e: TrellisError) => {
          if (nicAttributed(e)) next(k + 1);
        },
      );
      op.arm({ timeoutMs: this.opts.attemptMs });
      try {
        this.host.postControl(to, l, msg, op);
      } catch (e) {
        op.fail(e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e)));
      }
    };
    next(0);
  }

  /**
   * Cancellation of a user operation under failover: in the data phase, cancel what is posted (the
   * operation then fails with the reason once it settles); once immediates are being raised it
   * fails now with the reason, saying its immediates may have been counted (a raised immediate
   * cannot be taken back), and nothing more is sent. True if the operation was failover's.
   */
  cancel(user: PendingOp): boolean {
    const f = this.flights.get(user);
    if (!f) return false;
    const reason = user.cancelReason!;
    if (f.phase === 'data') for (const sub of f.subs) sub.requestCancel(reason);
    else {
      f.done = true;
      this.flights.delete(user);
      user.fail(
        new TrellisError(
          reason.code,
          `${reason.message}, while its immediates were being raised: the target may have counted them`,
          reason.peer === undefined ? {} : { peer: reason.peer },
        ),
      );
      for (const stop of [...f.stops]) stop();
    }
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

/**
 * Work requests cut where a region in parts has a part boundary: at the source (`parts` of the
 * source registration) and at each destination (its descriptor's `parts`). Every piece names its
 * source registration and a destination part's own descriptor.
 */
function cut(
  wrs: readonly WorkRequest[],
  src: MrHandle | undefined,
  parts: PartedRegion | undefined,
): Piece[] {
  const out: Piece[] = [];
  for (const w of wrs) {
    const d = w.dst!;
    const dp = d.parts;
    if (!parts && !dp) {
      out.push({ ...w, src: src! });
      continue;
    }
    let so = w.srcOffset;
    let doff = w.dstOffset;
    let left = w.length;
    while (left > 0) {
      const sPart = parts ? Math.floor(so / parts.partBytes) : 0;
      const sEnd = parts ? (sPart + 1) * parts.partBytes : Number.MAX_SAFE_INTEGER;
      const dPart = dp ? Math.floor(doff / dp.bytes) : 0;
      const dEnd = dp ? (dPart + 1) * dp.bytes : Number.MAX_SAFE_INTEGER;
      const take = Math.min(left, sEnd - so, dEnd - doff);
      out.push({
        ...w,
        src: parts ? parts.partRegions[sPart]! : src!,
        srcOffset: parts ? so - sPart * parts.partBytes : so,
        dst: dp ? d.part(dPart) : d,
        dstOffset: dp ? doff - dPart * dp.bytes : doff,
        length: take,
      });
      so += take;
      doff += take;
      left -= take;
    }
  }
  return out;
}

/** Failover's counters, all zero (an engine without failover reports these). @internal */
export function noFailoverStats(): FailoverStats {
  return {
    reposts: 0,
    nicsMarkedDown: 0,
    controlImms: 0,
    duplicateImms: 0,
    attemptTimeouts: 0,
    pathsMarkedDown: 0,
  };
}

/** Every field of {@link FailoverOptions} (one added there and not here fails to compile). */
const FAILOVER_KEYS: Record<keyof FailoverOptions, true> = {
  maxErrors: true,
  windowMs: true,
  cooldownMs: true,
  maxReposts: true,
  attemptMs: true,
};

/**
 * `createEngine`'s `failover` option as settings, or an INVALID_ARGUMENT saying what is wrong: not
 * a boolean or an object, a key that is not an option, a value that is not a whole number (at
 * least 1 for `maxErrors`, `windowMs` and `attemptMs`). Checked before an engine is created. @internal
 */
export function failoverSettings(opts: FailoverOptions | boolean): Required<FailoverOptions> {
  if (opts !== true && opts !== false && (typeof opts !== 'object' || opts === null || Array.isArray(opts)))
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `createEngine: failover must be a boolean or an options object {maxErrors?, windowMs?, cooldownMs?, maxReposts?, attemptMs?}, got ${show(opts)}`,
    );
  const o = typeof opts === 'object' ? opts : {};
  for (const k of Object.keys(o))
    if (!Object.hasOwn(FAILOVER_KEYS, k))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: ${JSON.stringify(k)} is not a failover option (they are ${Object.keys(FAILOVER_KEYS).join(', ')})`,
      );
  const settings = {
    maxErrors: o.maxErrors ?? 3,
    windowMs: o.windowMs ?? 1000,
    cooldownMs: o.cooldownMs ?? 5000,
    maxReposts: o.maxReposts ?? 3,
    attemptMs: o.attemptMs ?? 5000,
  };
  for (const [k, v] of Object.entries(settings)) {
    const min = k === 'maxErrors' || k === 'attemptMs' || k === 'windowMs' ? 1 : 0;
    if (!Number.isSafeInteger(v) || v < min)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: failover.${k} must be an integer >= ${min}, got ${show(v)}`,
      );
  }
  return settings;
}
