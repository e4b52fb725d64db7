// The host-driven modes' JS side of a round (HostRows: count and pack rows into staging, lay out
// what arrived per local expert, pack combine rows, sum them) and HostMode, where JS also posts
// every write through the engine. Both run on a Mem: host memory (HostMem, the CPU reference) or
// CUDA memory (DeviceMem's row-copy and combine kernels) take the same row lists, so CUDA memory
// driven from the host is this mode too, with another Mem. Touches its registered region and
// staging, the engine's immediate counters and peer group, and peers' regions over NVLink.
import { type MrHandle, type TransferEngine, TrellisError } from '@trellis/core';
import { DeviceMem, HostMem, type Mem } from '../memory.js';
import type { Protocol, Round } from '../protocol.js';
import type { DispatchInput, DispatchResult, MoeDeviceOptions, MoeMemory } from '../types.js';
import { RegionMode } from './region-mode.js';

/** The JS side of a round on a {@link Mem}: what HostMode and HostProxyMode share. @internal */
export class HostRows {
  constructor(
    private readonly p: Protocol,
    private readonly m: Mem,
    /** Bytes of the registered staging (combine rows go at its end). */
    private readonly stagingBytes: number,
  ) {}

  /**
   * Count this round's rows per expert and pack them into staging: this rank's routes at 0, then
   * every rank's rows (this rank's own too, for the local copy), each a header (token, k, local
   * expert), the token, its scales. Fills the round's `sent` and own counts; returns where each
   * rank's rows start.
   */
  pack(x: DispatchInput<MoeMemory>, r: Round): number[] {
    const p = this.p;
    const c = p.c;
    const W = c.worldSize;
    const n = r.numTokens;
    // Stream to each peer: rows ordered by (local expert, token, k).
    const sent: Array<Array<[number, number]>> = Array.from({ length: W }, () => []);
    const myCounts = new Int32Array(c.numExperts);
    const byExpert: Array<Array<[number, number]>> = Array.from({ length: c.numExperts }, () => []);
    for (let t = 0; t < n; t++)
      for (let k = 0; k < c.topk; k++) {
        const e = x.topkIds[t * c.topk + k]!;
        if (e < 0) continue;
        myCounts[e]!++;
        byExpert[e]!.push([t, k]);
      }
    for (let e = 0; e < c.numExperts; e++) sent[p.expertRank(e)]!.push(...byExpert[e]!);
    r.sent = sent;
    r.counts[c.rank]!.set(myCounts);
    const m = this.m;
    // Routes: my counts, once, in staging.
    m.put('staging', 0, new Uint8Array(myCounts.buffer));
    const packAt: number[] = [];
    const total = sent.reduce((a, rows) => a + rows.length, 0);
    const headers = new Uint8Array(total * 8);
    const hv = new DataView(headers.buffer);
    const hdrFrom = new Float64Array(total);
    const rowTo = new Float64Array(total);
    const tokFrom = new Float64Array(total);
    let at = p.rowsBase;
    let i = 0;
    for (let d = 0; d < W; d++) {
      packAt.push(at);
      for (const [t, k] of sent[d]!) {
        hv.setUint32(8 * i, t, true);
        hv.setUint16(8 * i + 4, k, true);
        hv.setUint16(8 * i + 6, x.topkIds[t * c.topk + k]! - d * p.localExperts, true);
        hdrFrom[i] = 8 * i;
        rowTo[i] = at;
        tokFrom[i] = t * p.tokenBytes;
        at += p.rowStride;
        i++;
      }
    }
    m.putRows('staging', rowTo, headers, hdrFrom, 8);
    m.rows('staging', plus(rowTo, 8), m.input(x.tokens), tokFrom, p.tokenBytes);
    if (p.scaleCount)
      m.rows(
        'staging',
        plus(rowTo, 8 + p.tokenBytes),
        m.input(x.scales!),
        Float64Array.from(sent.flatMap((rows) => rows.map(([t]) => t * p.scaleCount * 4))),
        p.scaleCount * 4,
      );
    return packAt;
  }

  /**
   * Lay out what arrived in the region (every peer's routes and rows in) per local expert: expert
   * j's rows from source 0, 1, ... in stream order. A source's stream is ordered by local expert,
   * so its routes say which rows are expert j's.
   */
  layOut(r: Round): DispatchResult<MoeMemory> {
    const p = this.p;
    const c = p.c;
    const me = c.rank;
    const P = c.maxPrivateTokens;
    const L = p.localExperts;
    const { tokensPerExpert, expertOffsets } = p.blocks(r);
    const total = r.rows;
    const origin: Array<[number, number]> = new Array(total);
    const from = new Float64Array(total);
    const fill = new Int32Array(L);
    for (let s = 0; s < c.worldSize; s++) {
      let q = 0;
      for (let j = 0; j < L; j++)
        for (let i = 0; i < r.counts[s]![me * L + j]!; i++, q++) {
          const at =
            q < P ? p.layout.priv + (s * P + q) * p.rowStride : p.overflowAt(s, me) + (q - P) * p.rowStride;
          const row = expertOffsets[j]! + fill[j]!++;
          from[row] = at;
          origin[row] = [s, q];
        }
    }
    const m = this.m;
    const expertX = m.output('expertX', total * p.tokenBytes);
    m.rows(expertX, iota(total, p.tokenBytes), 'region', plus(from, 8), p.tokenBytes);
    let expertScales: unknown;
    if (p.scaleCount) {
      const sb = p.scaleCount * 4;
      const out = m.output('expertScales', total * sb);
      m.rows(out, iota(total, sb), 'region', plus(from, 8 + p.tokenBytes), sb);
      expertScales = m.asScales(out);
    }
    r.origin = origin;
    return {
      tokensPerExpert,
      expertOffsets,
      expertX: m.result(expertX),
      ...(expertScales !== undefined ? { expertScales } : {}),
    } as DispatchResult<MoeMemory>;
  }

  /**
   * Pack the expert outputs into staging's combine part, grouped by source in that source's stream
   * order; returns each source's span.
   */
  packCombine(out: Uint8Array | bigint, r: Round): Array<[number, number]> {
    const p = this.p;
    const W = p.c.worldSize;
    const bySrc: number[][] = Array.from({ length: W }, () => []);
    for (const [row, [s, q]] of r.origin.entries()) bySrc[s]![q] = row;
    const total = r.origin.length;
    const to = new Float64Array(total);
    const from = new Float64Array(total);
    const spans: Array<[number, number]> = [];
    let at = p.combineBase(this.stagingBytes);
    let i = 0;
    for (let s = 0; s < W; s++) {
      const start = at;
      for (const row of bySrc[s]!) {
        to[i] = at;
        from[i++] = row * p.outRow;
        at += p.outRow;
      }
      spans.push([start, at]);
    }
    this.m.rows('staging', to, this.m.input(out), from, p.outRow);
    return spans;
  }

  /**
   * Where each (token, k) row came back, then the weighted sum over k in order (fp32 throughout):
   * acc = fp32(acc + fp32(w_k × row_k)), k = 0 .. topk-1 — the order the kernel uses too.
   */
  sum(r: Round, accumulate: 'out' | 'fp32'): Uint8Array | Float32Array | bigint {
    const p = this.p;
    const c = p.c;
    const rowAt = new Float64Array(r.numTokens * c.topk).fill(-1);
    for (let d = 0; d < c.worldSize; d++) {
      const base = p.combineAt(c.rank, d);
      r.sent[d]!.forEach(([t, k], q) => {
        rowAt[t * c.topk + k] = base + q * p.outRow;
      });
    }
    return this.m.combine(rowAt, r.weights, r.numTokens, c.topk, c.hidden, c.outDtype, accumulate);
  }
}

/** The immediate values open instances (of any mode) count on each engine. */
const claimed = new WeakMap<TransferEngine, Set<number>>();

/**
 * Take an instance's four immediate values on `engine`: refused (INVALID_ARGUMENT) while another
 * open instance counts one of them, in any mode (each would take the other's arrivals). Arrivals
 * already credited to them are dropped: an earlier instance's failed round can leave some, and
 * the new instance must count only its own rounds'. Returns the release for close(). @internal
 */
export function claimImms(engine: TransferEngine, p: Protocol): () => void {
  const values = [p.imm.route, p.imm.dispatch, p.imm.combine, p.imm.barrier];
  let mine = claimed.get(engine);
  if (!mine) {
    mine = new Set();
    claimed.set(engine, mine);
  }
  for (const v of values)
    if (mine.has(v))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.create: immediate ${v} (immBase ${p.c.immBase}..${p.c.immBase + 3}) is counted by another open MoeAllToAll on this engine; give each instance its own four values, or close the other first`,
      );
  for (const v of values) {
    mine.add(v);
    const counter = engine.immCounter(v);
    const stale = counter.value;
    if (stale > 0) counter.take(stale);
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    for (const v of values) mine.delete(v);
  };
}

/** Host memory registered for an instance: its region (peers write it) and its staging. @internal */
export async function registerHost(
  engine: TransferEngine,
  p: Protocol,
): Promise<{ region: MrHandle; staging: MrHandle }> {
  const region = await engine.registerMemory(Math.max(64, p.layout.size), { remote: true });
  const staging = await engine.registerMemory(p.stagingSize);
  return { region, staging };
}

/**
 * Driven from JS: it packs (HostRows) and posts every write through the engine — routes and
 * private rows at once, overflow once the peers' routes say where, combine rows, the closing
 * barrier — and counts immediates. On host memory it is the CPU reference; on CUDA memory
 * (DeviceMem) the same protocol, with kernels moving the rows and NVLink stores to same-node peers.
 * @internal
 */
export class HostMode extends RegionMode {
  private readonly rows = new HostRows(this.p, this.mem, this.staging.length);
  private packAt: number[] = [];
  private pendingSends: Promise<void> | undefined;
  /** Gives the instance's immediate values back (close). */
  /**
   * Aborted, with the error, when a write of this round fails: the round's waits for arrivals then
   * fail with that error at once, not at `timeoutMs` (a new one each round).
   */
  private writeFailed = new AbortController();

  /** Host memory; the engine moves every row. */
  static async create(engine: TransferEngine, p: Protocol): Promise<HostMode> {
    const { region, staging } = await registerHost(engine, p);
    return new HostMode(engine, p, region, staging, new HostMem());
  }

  /** Device memory registered with the engine (direct or staged); kernels pack, lay out and combine. */
  static async createOnDevice(
    engine: TransferEngine,
    p: Protocol,
    device: MoeDeviceOptions,
  ): Promise<HostMode> {
    const c = p.c;
    const W = c.worldSize;
    const mem = new DeviceMem(device.ops, device.device, {
      expertX: W * p.rowsMax * p.tokenBytes,
      expertScales: c.scales ? W * p.rowsMax * p.scaleCount * 4 : 0,
      out: c.maxTokensPerRank * c.hidden * 4,
      headers: W * p.rowsMax * 8,
    });
    try {
      const size = Math.max(64, p.layout.size);
      const r = mem.allocRegistered(size);
      const st = mem.allocRegistered(p.stagingSize);
      const region = await engine.registerMemory(
        { cuda: { ptr: r, length: size, device: device.device } },
        { remote: true },
      );
      const staging = await engine.registerMemory({
        cuda: { ptr: st, length: p.stagingSize, device: device.device },
      });
      return new HostMode(engine, p, region, staging, mem);
    } catch (e) {
      mem.free();
      throw e;
    }
  }

  protected routesArrived(): Promise<void> {
    const c = this.p.c;
    return this.arrivals('routes', this.p.imm.route, c.worldSize - 1);
  }

  /**
   * Wait for `n` arrivals of `imm` this round, by the config's `timeoutMs` (a TIMEOUT naming what
   * was missing) or until close() (the wait is aborted).
   */
  private async arrivals(what: string, imm: number, n: number): Promise<void> {
    const c = this.p.c;
    const counter = this.engine.immCounter(imm);
    const failed = this.writeFailed.signal;
    try {
      await counter.wait(n, {
        timeoutMs: c.timeoutMs,
        signal: AbortSignal.any([this.closing.signal, failed]),
      });
    } catch (e) {
      // A write of the round failed: the phase fails with that error (the instance's failure).
      if (failed.aborted && !this.closing.signal.aborted) throw failed.reason;
      if (e instanceof TrellisError && e.code === 'TIMEOUT')
        throw new TrellisError(
          'TIMEOUT',
          `MoeAllToAll (host, round ${this.p.rounds}): timed out after ${c.timeoutMs} ms waiting for every peer's ${what} (${counter.value} of ${n} arrivals)`,
          { cause: e },
        );
      // The engine closed under the wait (CLOSED): say whose wait it was.
      if (e instanceof TrellisError && e.code === 'CLOSED' && !this.closing.signal.aborted)
        throw new TrellisError(
          'CLOSED',
          `MoeAllToAll (host, round ${this.p.rounds}): the engine was closed while waiting for every peer's ${what}`,
          { cause: e },
        );
      throw e;
    }
  }

  /**
   * Move `length` bytes of staging at `srcOffset` to rank `d`'s region at `dstOffset`, then count
   * one `imm` there: one engine write, or over NVLink a kernel store into the peer's region
   * (finished before the immediate is posted) and an immediate alone. An empty move is the
   * immediate alone, so counts never depend on the data.
   */
  private send(d: number, srcOffset: number, length: number, dstOffset: number, imm: number): Promise<void> {
    const dst = this.peers[d]!;
    // Each post has the phase's deadline (timeoutMs), not only the engine's (opTimeoutMs): a write
    // to a peer that died mid-round (one the provider never completes: shm on libfabric 1.x) fails
    // the phase by timeoutMs, as an arrival that never comes does.
    const timeoutMs = this.p.c.timeoutMs;
    let posted: Promise<void>;
    if (this.paths[d] === 'nvlink') {
      try {
        if (length > 0) this.mem.toPeer(d, dstOffset, srcOffset, length);
      } catch (e) {
        return Promise.reject(e);
      }
      posted = this.engine.submitImm({ dst, imm, timeoutMs });
    } else if (length === 0) {
      posted = this.engine.submitImm({ dst, imm, timeoutMs });
    } else {
      posted = this.engine.submitSingleWrite({
        src: this.staging,
        srcOffset,
        length,
        dst,
        dstOffset,
        imm,
        shards: 1,
        timeoutMs,
      });
    }
    const round = this.writeFailed;
    return posted.catch((e: unknown) => {
      const err = this.postFailed(e, `a write to rank ${d}`);
      if (!round.signal.aborted) round.abort(err);
      throw err;
    });
  }

  /** A post's failure, said as the round's: `MoeAllToAll (host, round 2): a write to rank 1 failed: …`. */
  private postFailed(e: unknown, what: string): unknown {
    if (!(e instanceof TrellisError)) return e;
    return new TrellisError(
      e.code,
      `MoeAllToAll (host, round ${this.p.rounds}): ${what} failed: ${e.message}`,
      { cause: e, peer: e.peer, nic: e.nic },
    );
  }

  dispatchSend(x: DispatchInput<MoeMemory>, r: Round): void {
    const p = this.p;
    const c = p.c;
    const me = c.rank;
    const m = this.mem;
    const packAt = this.rows.pack(x, r);
    this.packAt = packAt;
    p.rounds++;
    this.writeFailed = new AbortController();
    const P = c.maxPrivateTokens;
    const routesAt = p.layout.routes + me * c.numExperts * 4;
    const posts: Promise<void>[] = [];
    for (let d = 0; d < c.worldSize; d++) {
      if (d === me) {
        // Local: my own rows land in my own private slot and overflow as a peer's would.
        m.copy('region', routesAt, 'staging', 0, c.numExperts * 4);
        continue;
      }
      posts.push(this.send(d, 0, c.numExperts * 4, routesAt, p.imm.route));
      const priv = Math.min(r.sent[d]!.length, P);
      posts.push(
        this.send(d, packAt[d]!, priv * p.rowStride, p.layout.priv + me * P * p.rowStride, p.imm.dispatch),
      );
    }
    // Private rows for myself.
    m.copy(
      'region',
      p.layout.priv + me * P * p.rowStride,
      'staging',
      packAt[me]!,
      Math.min(r.sent[me]!.length, P) * p.rowStride,
    );
    this.pendingSends = Promise.all(posts).then(() => this.sendOverflow());
    this.pendingSends.catch(() => {});
  }

  /** Once every peer's routes are in: the rows past each private slot, where they say. */
  private async sendOverflow(): Promise<void> {
    const p = this.p;
    const me = p.c.rank;
    const P = p.c.maxPrivateTokens;
    await this.routes();
    const posts: Promise<void>[] = [];
    for (let d = 0; d < p.c.worldSize; d++) {
      const extra = p.round!.sent[d]!.length - P;
      if (extra <= 0) continue;
      const src = this.packAt[d]! + P * p.rowStride;
      if (d === me) {
        this.mem.copy('region', p.overflowAt(me, me), 'staging', src, extra * p.rowStride);
        continue;
      }
      posts.push(this.send(d, src, extra * p.rowStride, p.overflowAt(me, d), p.imm.dispatch));
    }
    await Promise.all(posts);
  }

  async dispatchRecv(r: Round): Promise<DispatchResult<MoeMemory>> {
    const p = this.p;
    const c = p.c;
    await this.routes();
    // One private write from every peer, plus one overflow write from each that has more than P rows.
    let expected = 0;
    for (let s = 0; s < c.worldSize; s++)
      if (s !== c.rank) expected += 1 + (p.rowsBetween(s, c.rank) > c.maxPrivateTokens ? 1 : 0);
    await this.arrivals('rows', p.imm.dispatch, expected);
    await this.pendingSends; // my own overflow (self copy) is in place too
    return this.rows.layOut(r);
  }

  async combineSend(expertOut: Uint8Array | bigint, r: Round): Promise<void> {
    const p = this.p;
    const me = p.c.rank;
    const spans = this.rows.packCombine(expertOut, r);
    const posts: Promise<void>[] = [];
    for (let s = 0; s < p.c.worldSize; s++) {
      const [start, end] = spans[s]!;
      if (s === me) {
        this.mem.copy('region', p.combineAt(me, me), 'staging', start, end - start);
        continue;
      }
      posts.push(this.send(s, start, end - start, p.combineAt(s, me), p.imm.combine));
    }
    await Promise.all(posts);
  }

  async combineRecv(
    r: Round,
    accumulate: 'out' | 'fp32',
    sends: () => Promise<void> | undefined,
  ): Promise<Uint8Array | Float32Array | bigint> {
    const c = this.p.c;
    await this.arrivals('combine rows', this.p.imm.combine, c.worldSize - 1);
    await sends();
    const result = this.rows.sum(r, accumulate);
    // The round is closed by a barrier: after it every buffer may be reused by the next round.
    if (this.group) {
      await this.engine
        .submitBarrier({ group: this.group, imm: this.p.imm.barrier, spread: true, timeoutMs: c.timeoutMs })
        .catch((e: unknown) => {
          throw this.postFailed(e, 'the end-of-round barrier');
        });
      await this.arrivals('end-of-round barrier', this.p.imm.barrier, c.worldSize - 1);
    }
    return result;
  }
}

/** `xs[i] + d` */
function plus(xs: Float64Array, d: number): Float64Array {
  const out = new Float64Array(xs.length);
  for (let i = 0; i < xs.length; i++) out[i] = xs[i]! + d;
  return out;
}

/** `[0, step, 2 step, ...]` of length n */
function iota(n: number, step: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = i * step;
  return out;
}
