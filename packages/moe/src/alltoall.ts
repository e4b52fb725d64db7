import { MrDesc, type MrHandle, type PeerGroup, type TransferEngine, TrellisError } from '@trellis/core';

/** Element types of tokens and expert outputs. */
export type MoeDType = 'fp8' | 'bf16' | 'fp32';
const ELEM: Record<MoeDType, number> = { fp8: 1, bf16: 2, fp32: 4 };

/** What {@link MoeAllToAll.create} takes. */
export interface MoeConfig {
  worldSize: number;
  rank: number;
  /** Ranks per node (NVLink domain). The CPU reference moves every byte through the engine. */
  nodeSize: number;
  /** Experts in all; rank `r` holds experts `[r × E/W, (r+1) × E/W)`. */
  numExperts: number;
  topk: number;
  hidden: number;
  /** Most tokens any rank dispatches in one round. */
  maxTokensPerRank: number;
  inDtype: MoeDType;
  outDtype: Exclude<MoeDType, 'fp8'>;
  /** Per-token fp32 scales for fp8 tokens, one per `scaleBlock` elements of hidden (default 128). */
  scales?: boolean;
  scaleBlock?: number;
  /** Rows each peer may put in its private slot at a receiver before the overflow write. Default 64. */
  maxPrivateTokens?: number;
  /** First immediate value of this instance (4 consecutive values). Default 0x4d4f0000. */
  immBase?: number;
  /** Deadline of each phase's waits. Default 30000 ms. */
  timeoutMs?: number;
}

/** Dispatch input: this rank's tokens and their routing. */
export interface DispatchInput {
  /** `numTokens × hidden` elements of `inDtype`, row-major. */
  tokens: Uint8Array;
  /** fp8 with scales: `numTokens × hidden/scaleBlock`. */
  scales?: Float32Array;
  /** `numTokens × topk` expert ids (-1: no expert for that slot). */
  topkIds: Int32Array;
  /** `numTokens × topk` weights, used by combine. */
  topkWeights: Float32Array;
}

/** What dispatch returns: this rank's experts' tokens, contiguous per expert. */
export interface DispatchResult {
  /** Tokens received per local expert. */
  tokensPerExpert: Int32Array;
  /** Row offset of each local expert's block in `expertX`. */
  expertOffsets: Int32Array;
  /** Every local expert's tokens back to back: `Σ tokensPerExpert × hidden` elements of `inDtype`. */
  expertX: Uint8Array;
  /** fp8 with scales: the rows' scales, in the same order. */
  expertScales?: Float32Array;
}

/** Phases to run: split dispatch or combine into send and receive to overlap them with compute. */
export interface Phases {
  send?: boolean;
  recv?: boolean;
}

interface Round {
  numTokens: number;
  /** counts[src][expert]: (token, k) pairs `src` routes to `expert` this round. */
  counts: Int32Array[];
  weights: Float32Array;
  ids: Int32Array;
  /** Rows this rank sent to each peer, in stream order: [token, k] pairs. */
  sent: Array<Array<[number, number]>>;
  /** Per received row (expert-block order): source rank and position in that source's stream. */
  origin: Array<[number, number]>;
  dispatched: boolean;
}

/**
 * Expert-parallel dispatch and combine — the CPU reference that defines the results, over any
 * Trellis engine in host memory.
 *
 * Protocol of a round: every rank writes its token counts per expert to every peer (routes), and
 * at once the first `maxPrivateTokens` rows for each peer into that peer's private slot for it (one
 * write per peer, an immediate alone when it has none); once every peer's routes are in, every rank
 * computes the same overflow offsets and writes the rest in one more write per peer. The receiver
 * knows from the routes how many immediates to expect and lays its experts' tokens out
 * contiguously. Combine sends each row back to where it came from, into a region the source sized
 * from its own send counts; the source sums each token's rows weighted, in fp32. A barrier closes the
 * round, after which every buffer may be reused.
 */
export class MoeAllToAll {
  readonly config: Required<MoeConfig>;
  readonly localExperts: number;
  /** This rank's buffer descriptor, to give every peer (see {@link connect}). */
  readonly descriptor: string;

  private readonly rowStride: number;
  private readonly tokenBytes: number;
  private readonly scaleCount: number;
  private readonly outRow: number;
  private readonly layout: { routes: number; priv: number; overflow: number; combine: number; size: number };
  private peers: MrDesc[] = [];
  private group: PeerGroup | undefined;
  private round: Round | undefined;
  private readonly imm: { route: number; dispatch: number; combine: number; barrier: number };

  private constructor(
    private readonly engine: TransferEngine,
    config: Required<MoeConfig>,
    private readonly region: MrHandle,
    private readonly staging: MrHandle,
    layout: MoeAllToAll['layout'],
    rowStride: number,
  ) {
    this.config = config;
    this.localExperts = config.numExperts / config.worldSize;
    this.layout = layout;
    this.rowStride = rowStride;
    this.tokenBytes = config.hidden * ELEM[config.inDtype];
    this.scaleCount = config.scales ? config.hidden / config.scaleBlock : 0;
    this.outRow = config.hidden * ELEM[config.outDtype];
    this.descriptor = region.desc.toString();
    const b = config.immBase;
    this.imm = { route: b, dispatch: b + 1, combine: b + 2, barrier: b + 3 };
  }

  /** Validate the config and register this rank's buffers, sized from it. */
  static async create(engine: TransferEngine, cfg: MoeConfig): Promise<MoeAllToAll> {
    const c: Required<MoeConfig> = {
      scales: false,
      scaleBlock: 128,
      maxPrivateTokens: 64,
      immBase: 0x4d4f0000,
      timeoutMs: 30_000,
      ...cfg,
    };
    const int = (name: keyof MoeConfig, lo: number) => {
      const v = c[name] as number;
      if (!Number.isSafeInteger(v) || v < lo)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `MoeAllToAll.create: ${name} must be an integer >= ${lo}, got ${String(v)}`,
        );
    };
    for (const k of [
      'worldSize',
      'nodeSize',
      'numExperts',
      'topk',
      'hidden',
      'maxTokensPerRank',
      'scaleBlock',
      'timeoutMs',
    ] as const)
      int(k, 1);
    int('rank', 0);
    int('maxPrivateTokens', 0);
    if (c.rank >= c.worldSize)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.create: rank ${c.rank} is not below worldSize ${c.worldSize}`,
      );
    if (c.numExperts % c.worldSize)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.create: numExperts ${c.numExperts} must be a multiple of worldSize ${c.worldSize}`,
      );
    if (c.worldSize % c.nodeSize)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.create: worldSize must be a multiple of nodeSize`,
      );
    if (!(c.inDtype in ELEM) || !(c.outDtype in ELEM) || c.outDtype === ('fp8' as string))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'MoeAllToAll.create: inDtype is fp8, bf16 or fp32; outDtype bf16 or fp32',
      );
    if (c.scales && (c.inDtype !== 'fp8' || c.hidden % c.scaleBlock))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.create: scales go with fp8 tokens and a hidden size that is a multiple of scaleBlock (${c.scaleBlock})`,
      );
    const W = c.worldSize;
    const rowsMax = c.maxTokensPerRank * c.topk; // rows one source can send to one receiver
    const rowStride = align(
      8 + c.hidden * ELEM[c.inDtype] + (c.scales ? (c.hidden / c.scaleBlock) * 4 : 0),
      16,
    );
    const routes = 0;
    const priv = align(routes + W * c.numExperts * 4, 64);
    const overflow = priv + W * c.maxPrivateTokens * rowStride;
    const combine = align(overflow + W * Math.max(0, rowsMax - c.maxPrivateTokens) * rowStride, 64);
    const size = combine + rowsMax * c.hidden * ELEM[c.outDtype];
    const region = await engine.registerMemory(Math.max(64, size), { remote: true });
    // Staging: this round's routes, the rows going out to every peer, combine rows going back.
    const staging = await engine.registerMemory(
      Math.max(64, W * c.numExperts * 4 + W * rowsMax * rowStride + rowsMax * W * c.hidden * 4),
    );
    return new MoeAllToAll(engine, c, region, staging, { routes, priv, overflow, combine, size }, rowStride);
  }

  /** Give every rank's descriptor (index = rank; this rank's own is ignored). */
  connect(descriptors: readonly string[]): void {
    if (descriptors.length !== this.config.worldSize)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.connect: need ${this.config.worldSize} descriptors, got ${descriptors.length}`,
      );
    this.peers = descriptors.map((d) => MrDesc.parse(d));
    const others = this.peers.filter((_, r) => r !== this.config.rank).map((d) => d.owner);
    this.group = others.length ? this.engine.addPeerGroup(others) : undefined;
  }

  private expertRank(e: number): number {
    return Math.floor(e / this.localExperts);
  }

  /**
   * Dispatch this rank's tokens to the experts they are routed to. With `{send: true, recv: false}`
   * it posts and returns at once (resolving to undefined); `{recv: true}` alone waits for and lays
   * out what arrived. Default: both.
   */
  async dispatch(input: DispatchInput | undefined, phases: Phases = {}): Promise<DispatchResult | undefined> {
    const send = phases.send ?? true;
    const recv = phases.recv ?? true;
    if (!this.peers.length && this.config.worldSize > 1)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: connect() first');
    if (send) await this.dispatchSend(input!);
    if (!recv) return undefined;
    return this.dispatchRecv();
  }

  private checkInput(x: DispatchInput): number {
    const c = this.config;
    const n = x.topkIds.length / c.topk;
    if (!Number.isInteger(n) || n > c.maxTokensPerRank)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.dispatch: topkIds holds ${x.topkIds.length} ids, not a multiple of topk ${c.topk} for at most ${c.maxTokensPerRank} tokens`,
      );
    if (x.tokens.length !== n * this.tokenBytes)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.dispatch: tokens is ${x.tokens.length} bytes; ${n} tokens of ${c.hidden} ${c.inDtype} are ${n * this.tokenBytes}`,
      );
    if (x.topkWeights.length !== n * c.topk)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: topkWeights must match topkIds');
    if (this.scaleCount && x.scales?.length !== n * this.scaleCount)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.dispatch: scales must hold ${n * this.scaleCount} values (${this.scaleCount} per token)`,
      );
    for (const e of x.topkIds)
      if (e < -1 || e >= c.numExperts)
        throw new TrellisError(
          'OUT_OF_RANGE',
          `MoeAllToAll.dispatch: expert id ${e} is outside 0..${c.numExperts - 1} (or -1)`,
        );
    return n;
  }

  private async dispatchSend(x: DispatchInput): Promise<void> {
    if (this.round && !this.round.dispatched)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: the previous round has not finished');
    const c = this.config;
    const W = c.worldSize;
    const n = this.checkInput(x);
    const me = c.rank;
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
    for (let e = 0; e < c.numExperts; e++) sent[this.expertRank(e)]!.push(...byExpert[e]!);
    this.round = {
      numTokens: n,
      counts: Array.from({ length: W }, () => new Int32Array(c.numExperts)),
      weights: x.topkWeights,
      ids: x.topkIds,
      sent,
      origin: [],
      dispatched: false,
    };
    this.round.counts[me]!.set(myCounts);
    const sbuf = this.staging.buffer!;
    const rbuf = this.region.buffer!;
    // Routes: my counts, once, in staging.
    new Int32Array(sbuf.buffer, sbuf.byteOffset, c.numExperts).set(myCounts);
    // Pack every peer's rows (mine included, for the local copy).
    const rowsBase = align(c.numExperts * 4, 64);
    const packAt: number[] = [];
    let at = rowsBase;
    for (let d = 0; d < W; d++) {
      packAt.push(at);
      for (const [t, k] of sent[d]!) {
        this.packRow(sbuf, at, x, t, k, d);
        at += this.rowStride;
      }
    }
    this.packAt = packAt;
    const P = c.maxPrivateTokens;
    const posts: Promise<void>[] = [];
    for (let d = 0; d < W; d++) {
      const rows = sent[d]!.length;
      if (d === me) {
        // Local: my own rows land in my own private slot and overflow as a peer's would.
        rbuf.set(sbuf.subarray(0, c.numExperts * 4), this.layout.routes + me * c.numExperts * 4);
        continue;
      }
      const dst = this.peers[d]!;
      posts.push(
        this.engine.submitSingleWrite({
          src: this.staging,
          srcOffset: 0,
          length: c.numExperts * 4,
          dst,
          dstOffset: this.layout.routes + me * c.numExperts * 4,
          imm: this.imm.route,
          shards: 1,
        }),
      );
      const priv = Math.min(rows, P);
      posts.push(
        priv > 0
          ? this.engine.submitSingleWrite({
              src: this.staging,
              srcOffset: packAt[d]!,
              length: priv * this.rowStride,
              dst,
              dstOffset: this.layout.priv + me * P * this.rowStride,
              imm: this.imm.dispatch,
              shards: 1,
            })
          : this.engine.submitImm({ dst, imm: this.imm.dispatch }),
      );
    }
    // Private rows for myself.
    const selfRows = sent[me]!.length;
    rbuf.set(
      sbuf.subarray(packAt[me]!, packAt[me]! + Math.min(selfRows, P) * this.rowStride),
      this.layout.priv + me * P * this.rowStride,
    );
    this.pendingSends = Promise.all(posts).then(() => this.sendOverflow());
    this.pendingSends.catch(() => {});
  }

  private packAt: number[] = [];
  private pendingSends: Promise<void> | undefined;
  private routesIn: Promise<void> | undefined;

  private packRow(buf: Uint8Array, at: number, x: DispatchInput, t: number, k: number, d: number): void {
    const c = this.config;
    const v = new DataView(buf.buffer, buf.byteOffset);
    const e = x.topkIds[t * c.topk + k]!;
    v.setUint32(at, t, true);
    v.setUint16(at + 4, k, true);
    v.setUint16(at + 6, e - d * this.localExperts, true);
    buf.set(x.tokens.subarray(t * this.tokenBytes, (t + 1) * this.tokenBytes), at + 8);
    if (this.scaleCount) {
      const s = new Float32Array(buf.buffer, buf.byteOffset + at + 8 + this.tokenBytes, this.scaleCount);
      s.set(x.scales!.subarray(t * this.scaleCount, (t + 1) * this.scaleCount));
    }
  }

  /** Wait for every peer's routes (once per round). */
  private routes(): Promise<void> {
    this.routesIn ??= (async () => {
      const c = this.config;
      await this.engine.immCounter(this.imm.route).wait(c.worldSize - 1, { timeoutMs: c.timeoutMs });
      const rbuf = this.region.buffer!;
      for (let s = 0; s < c.worldSize; s++)
        if (s !== c.rank)
          this.round!.counts[s]!.set(
            new Int32Array(
              rbuf.buffer,
              rbuf.byteOffset + this.layout.routes + s * c.numExperts * 4,
              c.numExperts,
            ),
          );
    })();
    return this.routesIn;
  }

  /** Rows `src` sends to `dst` this round (from the routes). */
  private rowsBetween(src: number, dst: number): number {
    const cs = this.round!.counts[src]!;
    let n = 0;
    for (let j = 0; j < this.localExperts; j++) n += cs[dst * this.localExperts + j]!;
    return n;
  }

  /** Where `src`'s overflow rows start in `dst`'s overflow region (every rank computes the same). */
  private overflowAt(src: number, dst: number): number {
    const P = this.config.maxPrivateTokens;
    let rows = 0;
    for (let s = 0; s < src; s++) rows += Math.max(0, this.rowsBetween(s, dst) - P);
    return this.layout.overflow + rows * this.rowStride;
  }

  private async sendOverflow(): Promise<void> {
    const c = this.config;
    const me = c.rank;
    const P = c.maxPrivateTokens;
    await this.routes();
    const posts: Promise<void>[] = [];
    const sbuf = this.staging.buffer!;
    for (let d = 0; d < c.worldSize; d++) {
      const extra = this.round!.sent[d]!.length - P;
      if (extra <= 0) continue;
      const src = this.packAt[d]! + P * this.rowStride;
      if (d === me) {
        this.region.buffer!.set(sbuf.subarray(src, src + extra * this.rowStride), this.overflowAt(me, me));
        continue;
      }
      posts.push(
        this.engine.submitSingleWrite({
          src: this.staging,
          srcOffset: src,
          length: extra * this.rowStride,
          dst: this.peers[d]!,
          dstOffset: this.overflowAt(me, d),
          imm: this.imm.dispatch,
          shards: 1,
        }),
      );
    }
    await Promise.all(posts);
  }

  private async dispatchRecv(): Promise<DispatchResult> {
    const c = this.config;
    const me = c.rank;
    const r = this.round;
    if (!r || r.dispatched)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: recv without a send this round');
    await this.routes();
    const P = c.maxPrivateTokens;
    // One private write from every peer, plus one overflow write from each that has more than P rows.
    let expected = 0;
    for (let s = 0; s < c.worldSize; s++) if (s !== me) expected += 1 + (this.rowsBetween(s, me) > P ? 1 : 0);
    await this.engine.immCounter(this.imm.dispatch).wait(expected, { timeoutMs: c.timeoutMs });
    await this.pendingSends; // my own overflow (self copy) is in place too
    // Lay out per local expert: expert j's rows from source 0, 1, ... in stream order.
    const L = this.localExperts;
    const tokensPerExpert = new Int32Array(L);
    for (let s = 0; s < c.worldSize; s++)
      for (let j = 0; j < L; j++) tokensPerExpert[j]! += r.counts[s]![me * L + j]!;
    const expertOffsets = new Int32Array(L);
    for (let j = 1; j < L; j++) expertOffsets[j] = expertOffsets[j - 1]! + tokensPerExpert[j - 1]!;
    const total = tokensPerExpert.reduce((a, b) => a + b, 0);
    const expertX = new Uint8Array(total * this.tokenBytes);
    const expertScales = this.scaleCount ? new Float32Array(total * this.scaleCount) : undefined;
    const origin: Array<[number, number]> = new Array(total);
    const fill = new Int32Array(L);
    const rbuf = this.region.buffer!;
    for (let s = 0; s < c.worldSize; s++) {
      const n = this.rowsBetween(s, me);
      for (let p = 0; p < n; p++) {
        const at =
          p < P
            ? this.layout.priv + (s * P + p) * this.rowStride
            : this.overflowAt(s, me) + (p - P) * this.rowStride;
        const j = new DataView(rbuf.buffer, rbuf.byteOffset).getUint16(at + 6, true);
        const row = expertOffsets[j]! + fill[j]!++;
        expertX.set(rbuf.subarray(at + 8, at + 8 + this.tokenBytes), row * this.tokenBytes);
        if (expertScales)
          expertScales.set(
            new Float32Array(rbuf.buffer, rbuf.byteOffset + at + 8 + this.tokenBytes, this.scaleCount),
            row * this.scaleCount,
          );
        origin[row] = [s, p];
      }
    }
    r.origin = origin;
    r.dispatched = true;
    return { tokensPerExpert, expertOffsets, expertX, ...(expertScales ? { expertScales } : {}) };
  }

  /**
   * Send every expert output row back to its token's rank and sum each token's rows weighted by
   * its top-k weights, in fp32. `expertOut` holds `outDtype` rows in the order dispatch returned
   * them. Resolves (with `recv`) to `numTokens × hidden` of `outDtype`, or of fp32 with `accumulate: 'fp32'`.
   */
  async combine(
    input: { expertOut: Uint8Array } | undefined,
    phases: Phases & { accumulate?: 'out' | 'fp32' } = {},
  ): Promise<Uint8Array | Float32Array | undefined> {
    const send = phases.send ?? true;
    const recv = phases.recv ?? true;
    const r = this.round;
    if (!r?.dispatched)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.combine: dispatch this round first');
    const c = this.config;
    if (send) {
      if (input?.expertOut.length !== r.origin.length * this.outRow)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `MoeAllToAll.combine: expertOut must hold ${r.origin.length} rows of ${c.hidden} ${c.outDtype}`,
        );
      this.combineSends = this.combineSend(input.expertOut);
      this.combineSends.catch(() => {});
    }
    if (!recv) return undefined;
    return this.combineRecv(phases.accumulate ?? 'out');
  }

  private combineSends: Promise<void> | undefined;

  /** Where rows from `from` start in `to`'s combine region: after the rows `to` sent to ranks before `from`. */
  private combineAt(to: number, from: number): number {
    let rows = 0;
    for (let d = 0; d < from; d++) rows += this.rowsBetween(to, d);
    return this.layout.combine + rows * this.outRow;
  }

  private async combineSend(out: Uint8Array): Promise<void> {
    const c = this.config;
    const me = c.rank;
    const r = this.round!;
    // Group rows by source, in that source's stream order.
    const bySrc: number[][] = Array.from({ length: c.worldSize }, () => []);
    for (const [row, [s, p]] of r.origin.entries()) bySrc[s]![p] = row;
    const sbuf = this.staging.buffer!;
    const base = this.staging.length - c.worldSize * c.maxTokensPerRank * c.topk * this.outRow;
    let at = base;
    const posts: Promise<void>[] = [];
    for (let s = 0; s < c.worldSize; s++) {
      const rows = bySrc[s]!;
      const start = at;
      for (const row of rows) {
        sbuf.set(out.subarray(row * this.outRow, (row + 1) * this.outRow), at);
        at += this.outRow;
      }
      if (s === me) {
        this.region.buffer!.set(sbuf.subarray(start, at), this.combineAt(me, me));
        continue;
      }
      posts.push(
        rows.length
          ? this.engine.submitSingleWrite({
              src: this.staging,
              srcOffset: start,
              length: at - start,
              dst: this.peers[s]!,
              dstOffset: this.combineAt(s, me),
              imm: this.imm.combine,
              shards: 1,
            })
          : this.engine.submitImm({ dst: this.peers[s]!, imm: this.imm.combine }),
      );
    }
    await Promise.all(posts);
  }

  private async combineRecv(accumulate: 'out' | 'fp32'): Promise<Uint8Array | Float32Array> {
    const c = this.config;
    const me = c.rank;
    const r = this.round!;
    await this.engine.immCounter(this.imm.combine).wait(c.worldSize - 1, { timeoutMs: c.timeoutMs });
    await this.combineSends;
    // Where each (token, k) row came back, then the weighted sum over k in order (fp32 throughout):
    // acc = fp32(acc + fp32(w_k × row_k)), k = 0 .. topk-1 — the order a kernel must use too.
    const rowAt = new Int32Array(r.numTokens * c.topk).fill(-1);
    for (let d = 0; d < c.worldSize; d++) {
      const base = this.combineAt(me, d);
      r.sent[d]!.forEach(([t, k], p) => {
        rowAt[t * c.topk + k] = base + p * this.outRow;
      });
    }
    const acc = new Float32Array(r.numTokens * c.hidden);
    const rbuf = this.region.buffer!;
    const dv = new DataView(rbuf.buffer, rbuf.byteOffset);
    for (let t = 0; t < r.numTokens; t++)
      for (let k = 0; k < c.topk; k++) {
        const at = rowAt[t * c.topk + k]!;
        if (at < 0) continue;
        const w = r.weights[t * c.topk + k]!;
        for (let h = 0; h < c.hidden; h++) {
          const v =
            c.outDtype === 'fp32' ? dv.getFloat32(at + h * 4, true) : bf16(dv.getUint16(at + h * 2, true));
          acc[t * c.hidden + h] = Math.fround(acc[t * c.hidden + h]! + Math.fround(w * v));
        }
      }
    // The round is closed by a barrier: after it every buffer may be reused by the next round.
    if (this.group) {
      await this.engine.submitBarrier({ group: this.group, imm: this.imm.barrier, spread: true });
      await this.engine.immCounter(this.imm.barrier).wait(c.worldSize - 1, { timeoutMs: c.timeoutMs });
    }
    this.round = undefined;
    this.routesIn = undefined;
    if (accumulate === 'fp32' || c.outDtype === 'fp32')
      return accumulate === 'fp32' ? acc : new Uint8Array(acc.buffer);
    const out = new Uint8Array(r.numTokens * this.outRow);
    const ov = new DataView(out.buffer);
    for (let i = 0; i < acc.length; i++) ov.setUint16(i * 2, toBf16(acc[i]!), true);
    return out;
  }

  /** Unregister this rank's buffers. */
  async close(): Promise<void> {
    if (this.engine.closed) return;
    await this.region.unregister().catch(() => {});
    await this.staging.unregister().catch(() => {});
  }
}

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function bf16(bits: number): number {
  u32[0] = bits << 16;
  return f32[0]!;
}
function toBf16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7f800000) === 0x7f800000 && b & 0x7fffff) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}
