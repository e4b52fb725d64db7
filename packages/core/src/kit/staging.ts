// The staged GPU path of the native engines: CUDA regions whose NICs cannot reach GPU memory
// (no FI_HMEM / dmabuf, or no RDMA NIC) are registered as a pinned host mirror. A write from a
// staged region copies its bytes device → host first; a write into one lands in the target's
// mirror and is followed by a LAND control message, on which the target copies host → device
// and answers ACK. Immediates of a staged write are raised only after every byte is in place: the
// writer sends them last (as imm writes, or as an IMM control message to a staged target, which
// counts them after its copies — the order a GPUDirect write-with-immediate gives).
//
// Work is cut into segments of at most STAGE_CHUNK bytes, and STAGE_DEPTH segments move at once:
// while one segment is on the wire the next is being copied off the device (the pipeline).
import type { NetAddr } from '../addr.js';
import type { MrDesc } from '../desc.js';
import type { GpuMemoryOps } from '../device.js';
import { CallSite, TrellisError, type TrellisErrorCode } from '../errors.js';
import { autoShards, countImms } from '../imms.js';
import type { PendingOp } from './pending-op.js';
import type { Region } from './region.js';
import type { Timer, Timers } from './timers.js';
import type { PagedPlan, Plan, ScatterPlan, ScatterPlanTarget, SinglePlan } from './validate.js';

/** Largest segment of a staged write. */
export const STAGE_CHUNK = 4 << 20;
/** Segments of one staged write in flight at once. */
export const STAGE_DEPTH = 4;

const LAND = 1;
const ACK = 2;
const IMM = 3;
/** Error codes a target may answer a LAND with. */
const ACK_CODES = new Set(['INVALID_DESCRIPTOR', 'OUT_OF_RANGE', 'INTERNAL']);

/** The device memory behind a staged region. @internal */
export interface StagedMemory {
  device: number;
  ptr: bigint;
  /** The pinned host mirror (registered with the NICs). */
  mirror: ArrayBuffer;
  length: number;
}

/** What the staging engine needs from the native engine. @internal */
export interface StagingHost {
  /** Set when this engine was given GPU memory operations (needed for its own staged regions). */
  readonly gpu: GpuMemoryOps | undefined;
  readonly opTimeoutMs: number;
  readonly maxMessageBytes: number;
  /** The engine's timers (its polling loops fire them too). */
  readonly timers: Timers;
  internalOp(site: CallSite, peer: NetAddr | undefined): PendingOp;
  /** Post a plan (no staging) as `op`. */
  postPlan(plan: Plan, op: PendingOp): void;
  /** Send a control message as `op`. */
  sendControl(peer: NetAddr, bytes: Uint8Array, op: PendingOp): void;
  cancelNative(op: PendingOp, reason: TrellisError): void;
  arrive(imm: number, count: number): void;
  lanesTo(peer: NetAddr): number;
  /** The staged region a LAND names (by its NIC-0 rkey). */
  stagedRegion(rkey: bigint): Region | undefined;
  stagedMemory(r: Region): StagedMemory | undefined;
}

interface Run {
  op: PendingOp;
  subs: Set<PendingOp>;
  acks: Set<number>;
  cancelled: TrellisError | undefined;
}

interface Landing {
  peer: NetAddr;
  dst: MrDesc;
  /** (dst offset, bytes) pairs */
  ranges: number[];
}

interface Segment {
  plan: Plan;
  /** (src offset, bytes) pairs to copy off the device first (staged sources). */
  src: number[];
  landings: Landing[];
}

/** Whether a plan reads or writes a staged region. @internal */
export function touchesStaged(plan: Plan): boolean {
  switch (plan.op) {
    case 'single':
    case 'paged':
      return (plan.src as Region).path === 'staged' || plan.dst.staged;
    case 'scatter':
      return (plan.src as Region).path === 'staged' || plan.targets.some((t) => t.dst.staged);
    default:
      return false;
  }
}

/** The staged path of one native engine: the writer's pipeline and the target's copies. @internal */
export class Stager {
  private readonly runs = new Map<PendingOp, Run>();
  private readonly acks = new Map<
    number,
    { resolve: () => void; reject: (e: TrellisError) => void; timer: Timer | undefined }
  >();
  private nextSeq = 1;
  readonly counters = { toHostBytes: 0, toDeviceBytes: 0, writes: 0, immsRaised: 0 };

  constructor(private readonly host: StagingHost) {}

  /** Run `plan` through the staged path; settles `op` once. */
  start(plan: SinglePlan | PagedPlan | ScatterPlan, op: PendingOp): void {
    const run: Run = { op, subs: new Set(), acks: new Set(), cancelled: undefined };
    this.runs.set(op, run);
    this.work(plan, run).then(
      () => {
        this.runs.delete(op);
        if (run.cancelled) op.fail(run.cancelled);
        else {
          this.counters.writes += op.weight;
          op.complete();
        }
      },
      (e: unknown) => {
        this.runs.delete(op);
        op.fail(run.cancelled ?? asTrellis(e));
      },
    );
  }

  /** Cancel a staged operation; false if `op` is not one. */
  cancel(op: PendingOp, reason: TrellisError): boolean {
    const run = this.runs.get(op);
    if (!run) return false;
    run.cancelled ??= reason;
    for (const s of run.subs) this.host.cancelNative(s, reason);
    for (const seq of run.acks) this.settleAck(seq, reason);
    return true;
  }

  /** Fail what waits on the peer's answers (the engine is closing). */
  close(): void {
    const err = new TrellisError('CLOSED', 'the engine was closed with this operation pending');
    for (const seq of [...this.acks.keys()]) this.settleAck(seq, err);
  }

  private async work(plan: SinglePlan | PagedPlan | ScatterPlan, run: Run): Promise<void> {
    const src = plan.src as Region;
    const staged = src.path === 'staged' ? this.host.stagedMemory(src) : undefined;
    const segments = segmentsOf(plan);
    let next = 0;
    let failure: unknown;
    const lane = async (): Promise<void> => {
      while (next < segments.length && failure === undefined && !run.cancelled) {
        const seg = segments[next++]!;
        try {
          if (staged && seg.src.length) await this.toHost(staged, seg.src);
          if (run.cancelled) return;
          await this.sub(run, (op) => this.host.postPlan(seg.plan, op), undefined);
          await Promise.all(seg.landings.map((l) => this.land(run, l)));
        } catch (e) {
          failure ??= e;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(STAGE_DEPTH, segments.length) }, lane));
    if (run.cancelled) throw run.cancelled;
    if (failure !== undefined) throw failure;
    if (plan.imm !== undefined) await this.immTail(plan, run);
  }

  private async toHost(m: StagedMemory, pairs: number[]): Promise<void> {
    const ranges = new Float64Array((pairs.length / 2) * 3);
    let bytes = 0;
    for (let i = 0, j = 0; i < pairs.length; i += 2, j += 3) {
      ranges[j] = pairs[i]!;
      ranges[j + 1] = pairs[i]!;
      ranges[j + 2] = pairs[i + 1]!;
      bytes += pairs[i + 1]!;
    }
    await this.host.gpu!.copy('toHost', m.device, m.ptr, m.mirror, ranges);
    this.counters.toHostBytes += bytes;
  }

  /** Post one internal operation of `run`; resolves or rejects with it. */
  private sub(run: Run, post: (op: PendingOp) => void, peer: NetAddr | undefined): Promise<void> {
    const op = this.host.internalOp(run.op.callsite, peer);
    run.subs.add(op);
    const done = op.promise.finally(() => run.subs.delete(op));
    if (run.cancelled) op.fail(run.cancelled);
    else {
      try {
        post(op);
      } catch (e) {
        op.fail(asTrellis(e));
      }
    }
    return done;
  }

  /** Tell a staged target that `l.ranges` landed; resolves on its ACK (bytes on the device). */
  private async land(run: Run, l: Landing): Promise<void> {
    // As many ranges per message as the target's receive buffers take.
    const per = Math.max(1, Math.floor((this.host.maxMessageBytes - 32) / 16));
    const rkey = l.dst.nics[0]!.rkey;
    const parts: Promise<void>[] = [];
    for (let i = 0; i < l.ranges.length; i += 2 * per) {
      const pairs = l.ranges.slice(i, i + 2 * per);
      const seq = this.nextSeq++;
      const msg = new Uint8Array(17 + pairs.length * 8);
      const v = new DataView(msg.buffer);
      v.setUint8(0, LAND);
      v.setUint32(1, seq, true);
      v.setBigUint64(5, rkey, true);
      v.setUint32(13, pairs.length / 2, true);
      for (let k = 0; k < pairs.length; k++) v.setFloat64(17 + 8 * k, pairs[k]!, true);
      const acked = this.expectAck(run, seq, l.peer);
      parts.push(
        this.sub(run, (op) => this.host.sendControl(l.peer, msg, op), l.peer).then(
          () => acked,
          (e: unknown) => {
            this.settleAck(seq, undefined);
            throw e;
          },
        ),
      );
    }
    await Promise.all(parts);
  }

  private expectAck(run: Run, seq: number, peer: NetAddr): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const ms = this.host.opTimeoutMs;
      // No deadline where the engine has none (opTimeoutMs 0).
      const timer =
        ms > 0
          ? this.host.timers.after(
              ms,
              () =>
                this.settleAck(
                  seq,
                  new TrellisError(
                    'TIMEOUT',
                    `${run.op.callsite.op}: the staged target ${peer.toString()} did not confirm its copy to GPU memory within ${ms} ms`,
                  ),
                ),
              false,
            )
          : undefined;
      this.acks.set(seq, {
        resolve: () => {
          run.acks.delete(seq);
          resolve();
        },
        reject: (e) => {
          run.acks.delete(seq);
          reject(e);
        },
        timer,
      });
      run.acks.add(seq);
    });
  }

  /** Resolve (err undefined) or reject the wait for ACK `seq`. */
  private settleAck(seq: number, err: TrellisError | undefined): void {
    const a = this.acks.get(seq);
    if (!a) return;
    this.acks.delete(seq);
    this.host.timers.cancel(a.timer);
    if (err) a.reject(err);
    else a.resolve();
  }

  /** The immediates, after every byte is in place at every target. */
  private async immTail(plan: SinglePlan | PagedPlan | ScatterPlan, run: Run): Promise<void> {
    const imm = plan.imm!;
    const per = new Map<string, { peer: NetAddr; n: number; staged: boolean }>();
    const add = (peer: NetAddr, n: number, staged: boolean) => {
      const k = peer.toString();
      const e = per.get(k);
      if (e) {
        e.n += n;
        e.staged ||= staged;
      } else per.set(k, { peer, n, staged });
    };
    if (plan.op === 'single')
      add(
        plan.peer,
        countImms({ kind: 'single', length: plan.length, shards: plan.shards, imm }, plan.lanes),
        plan.dst.staged,
      );
    else if (plan.op === 'paged')
      add(
        plan.peer,
        countImms({ kind: 'paged', pages: plan.srcPages.length, imm }, plan.lanes),
        plan.dst.staged,
      );
    else
      for (const t of plan.targets)
        add(
          t.peer,
          countImms({ kind: 'scatter', lengths: [t.length], routing: plan.routing, imm }, t.lanes),
          t.dst.staged,
        );
    const sends: Promise<void>[] = [];
    for (const { peer, n, staged } of per.values()) {
      if (staged) {
        const msg = new Uint8Array(9);
        const v = new DataView(msg.buffer);
        v.setUint8(0, IMM);
        v.setUint32(1, imm, true);
        v.setUint32(5, n, true);
        sends.push(this.sub(run, (op) => this.host.sendControl(peer, msg, op), peer));
      } else {
        const lanes = this.host.lanesTo(peer);
        for (let i = 0; i < n; i++)
          sends.push(
            this.sub(run, (op) => this.host.postPlan({ op: 'imm', peer, imm, lane: i % lanes }, op), peer),
          );
      }
    }
    await Promise.all(sends);
  }

  // -- the target side ----------------------------------------------------------------------------

  /** A control message from `from`. */
  onControl(from: NetAddr, data: Uint8Array): void {
    if (data.length < 1) return;
    const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
    try {
      switch (data[0]) {
        case LAND:
          void this.onLand(from, v);
          return;
        case ACK: {
          const seq = v.getUint32(1, true);
          const ok = v.getUint8(5) === 0;
          if (ok) this.settleAck(seq, undefined);
          else {
            const text = new TextDecoder().decode(data.subarray(6));
            const [c = '', ...rest] = text.split('\n');
            const code: TrellisErrorCode = ACK_CODES.has(c) ? (c as TrellisErrorCode) : 'INTERNAL';
            this.settleAck(
              seq,
              new TrellisError(code, `staged write: the target ${from.toString()} ${rest.join('\n')}`, {
                peer: from.toString(),
              }),
            );
          }
          return;
        }
        case IMM: {
          const n = v.getUint32(5, true);
          this.counters.immsRaised += n;
          this.host.arrive(v.getUint32(1, true), n);
          return;
        }
      }
    } catch {
      // A malformed control message (a peer of another version): ignored.
    }
  }

  private async onLand(from: NetAddr, v: DataView): Promise<void> {
    const seq = v.getUint32(1, true);
    const rkey = v.getBigUint64(5, true);
    const n = v.getUint32(13, true);
    let code = '';
    let why = '';
    const region = this.host.stagedRegion(rkey);
    const mem = region && this.host.stagedMemory(region);
    if (!region || !mem || v.byteLength < 17 + 16 * n) {
      code = 'INVALID_DESCRIPTOR';
      why = 'has no staged region for this descriptor (it was unregistered)';
    } else {
      const ranges = new Float64Array(3 * n);
      let bytes = 0;
      for (let i = 0; i < n; i++) {
        const off = v.getFloat64(17 + 16 * i, true);
        const len = v.getFloat64(25 + 16 * i, true);
        if (
          !(
            Number.isSafeInteger(off) &&
            Number.isSafeInteger(len) &&
            off >= 0 &&
            len >= 0 &&
            off + len <= mem.length
          )
        ) {
          code = 'OUT_OF_RANGE';
          why = `got a landing [${off}, +${len}) outside its ${mem.length}-byte region`;
          break;
        }
        ranges[3 * i] = off;
        ranges[3 * i + 1] = off;
        ranges[3 * i + 2] = len;
        bytes += len;
      }
      if (!code) {
        region.use();
        try {
          await this.host.gpu!.copy('toDevice', mem.device, mem.ptr, mem.mirror, ranges);
          this.counters.toDeviceBytes += bytes;
        } catch (e) {
          code = 'INTERNAL';
          why = `failed to copy the landed bytes to GPU memory: ${e instanceof Error ? e.message : String(e)}`;
        } finally {
          region.release();
        }
      }
    }
    const text = new TextEncoder().encode(code ? `${code}\n${why}` : '');
    const msg = new Uint8Array(6 + text.length);
    const w = new DataView(msg.buffer);
    w.setUint8(0, ACK);
    w.setUint32(1, seq, true);
    w.setUint8(5, code ? 1 : 0);
    msg.set(text, 6);
    const op = this.host.internalOp(new CallSite('stagedAck'), from);
    op.promise.catch(() => {
      // The writer went away: its operation fails on its side.
    });
    try {
      this.host.sendControl(from, msg, op);
    } catch (e) {
      op.fail(asTrellis(e));
    }
  }
}

/** Cut a staged plan into segments (no immediates: those go last). */
function segmentsOf(plan: SinglePlan | PagedPlan | ScatterPlan): Segment[] {
  const out: Segment[] = [];
  switch (plan.op) {
    case 'single':
      for (const [off, len] of chunks(plan.length)) {
        const s = plan.srcOffset + off;
        const d = plan.dstOffset + off;
        out.push({
          plan: {
            ...plan,
            srcOffset: s,
            dstOffset: d,
            length: len,
            imm: undefined,
            shards: autoShards(len, plan.lanes),
          },
          src: [s, len],
          landings: plan.dst.staged ? [{ peer: plan.peer, dst: plan.dst, ranges: [d, len] }] : [],
        });
      }
      return out;
    case 'paged': {
      const per = Math.max(1, Math.min(1024, Math.floor(STAGE_CHUNK / Math.max(1, plan.pageBytes))));
      const n = plan.srcPages.length;
      for (let i = 0; i < n; i += per) {
        const sp = plan.srcPages.subarray(i, Math.min(n, i + per));
        const dp = plan.dstPages.subarray(i, Math.min(n, i + per));
        const src: number[] = [];
        const dst: number[] = [];
        for (let k = 0; k < sp.length; k++) {
          coalesce(src, plan.srcOffset + sp[k]! * plan.srcStride, plan.pageBytes);
          coalesce(dst, plan.dstOffset + dp[k]! * plan.dstStride, plan.pageBytes);
        }
        out.push({
          plan: { ...plan, srcPages: sp, dstPages: dp, imm: undefined },
          src,
          landings: plan.dst.staged ? [{ peer: plan.peer, dst: plan.dst, ranges: dst }] : [],
        });
      }
      return out;
    }
    case 'scatter': {
      // Targets (big ones cut into chunks) packed into segments of at most STAGE_CHUNK bytes.
      let cur: ScatterPlanTarget[] = [];
      let bytes = 0;
      const flush = () => {
        if (!cur.length) return;
        const src: number[] = [];
        const lands = new Map<MrDesc, Landing>();
        for (const t of cur) {
          coalesce(src, t.srcOffset, t.length);
          if (t.dst.staged) {
            let l = lands.get(t.dst);
            if (!l) {
              l = { peer: t.peer, dst: t.dst, ranges: [] };
              lands.set(t.dst, l);
            }
            coalesce(l.ranges, t.dstOffset, t.length);
          }
        }
        out.push({ plan: { ...plan, targets: cur, imm: undefined }, src, landings: [...lands.values()] });
        cur = [];
        bytes = 0;
      };
      for (const t of plan.targets) {
        for (const [off, len] of chunks(t.length)) {
          if (bytes + len > STAGE_CHUNK || cur.length >= 1024) flush();
          cur.push({ ...t, srcOffset: t.srcOffset + off, dstOffset: t.dstOffset + off, length: len });
          bytes += len;
        }
      }
      flush();
      return out;
    }
  }
}

/** [offset, length] pieces of at most STAGE_CHUNK covering `length` bytes (one empty piece for 0). */
function chunks(length: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let off = 0; off < length; off += STAGE_CHUNK) out.push([off, Math.min(STAGE_CHUNK, length - off)]);
  return out.length ? out : [[0, 0]];
}

/** Append (off, len) to pairs, merging with the last range when contiguous. */
function coalesce(pairs: number[], off: number, len: number): void {
  if (len === 0) return;
  const n = pairs.length;
  if (n && pairs[n - 2]! + pairs[n - 1]! === off) pairs[n - 1]! += len;
  else pairs.push(off, len);
}

function asTrellis(e: unknown): TrellisError {
  return e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e), { cause: e });
}
