// MoeAllToAll: MoE dispatch and combine across ranks. create() checks the config, lays out buffers
// and chooses the mode (host, host proxy, GPU proxy, GPU direct); dispatch/combine run it.
import {
  type MoeDeviceOps,
  type MoePackArgs,
  type MoeProxyKernels,
  MrDesc,
  type MrHandle,
  type PeerGroup,
  type PortStats,
  type TransferEngine,
  TrellisError,
} from '@trellis/core';
import { GpuDirect } from './gpu-direct.js';
import { GpuProxy, MappedMem } from './gpu-proxy.js';
import { DeviceMem, HostMem, type Mem } from './memory.js';
import { ProxyDriver } from './proxy.js';

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
  /**
   * Drive the network side of every round from the native proxy thread (`native/proxy.cc`):
   * routes, private, overflow and combine writes and the closing barrier are posted through an
   * engine port with no JavaScript turn between them; JavaScript packs, then waits once per phase.
   * Needs a native engine (backend-efa, backend-verbs) and the package's native build. Default false.
   */
  proxy?: boolean;
  /** Proxy: µs it spins on a go word before sleeping (default 200). */
  proxySpinUs?: number;
}

/** Where tokens and expert rows live: host memory, or CUDA memory (device pointers as bigint). */
export type MoeMemory = 'host' | 'device';
/** A buffer of the memory kind: a `Uint8Array` on the host, a device pointer on the GPU. */
export type MoeBuffer<M extends MoeMemory> = M extends 'device' ? bigint : Uint8Array;
/** Scales: a `Float32Array` on the host, a device pointer (fp32 values) on the GPU. */
export type MoeScales<M extends MoeMemory> = M extends 'device' ? bigint : Float32Array;

/** Dispatch input: this rank's tokens and their routing (the routing is host memory in both kinds). */
export interface DispatchInput<M extends MoeMemory = 'host'> {
  /** `numTokens × hidden` elements of `inDtype`, row-major. */
  tokens: MoeBuffer<M>;
  /** fp8 with scales: `numTokens × hidden/scaleBlock`. */
  scales?: MoeScales<M>;
  /** `numTokens × topk` expert ids (-1: no expert for that slot). */
  topkIds: Int32Array;
  /** `numTokens × topk` weights, used by combine. */
  topkWeights: Float32Array;
}

/**
 * What dispatch returns: this rank's experts' tokens, contiguous per expert. On the device the
 * buffers belong to the instance and hold until the next round's dispatch.
 */
export interface DispatchResult<M extends MoeMemory = 'host'> {
  /** Tokens received per local expert. */
  tokensPerExpert: Int32Array;
  /** Row offset of each local expert's block in `expertX`. */
  expertOffsets: Int32Array;
  /** Every local expert's tokens back to back: `Σ tokensPerExpert × hidden` elements of `inDtype`. */
  expertX: MoeBuffer<M>;
  /** fp8 with scales: the rows' scales, in the same order. */
  expertScales?: MoeScales<M>;
}

/** GPU placement of a {@link MoeAllToAll}: its buffers are CUDA memory on `device`. */
export interface MoeDeviceOptions {
  /** The device work (`cudaMoeOps()` from `@trellis/cuda`). */
  ops: MoeDeviceOps;
  device: number;
  /**
   * GPU-driven NVLink: every rank on one node (`nodeSize === worldSize`), each rank's region mapped
   * into the others through CUDA IPC. Kernels count and pack rows straight into the receivers'
   * private slots, write their routes there and raise a flag; receivers' kernels wait for the
   * flags; combine rows return the same way. The engine carries nothing per round. Every row has a
   * private place (`maxPrivateTokens` is taken as `maxTokensPerRank × topk`: no overflow step).
   * Every rank must use it. Default false.
   */
  gpuDriven?: boolean;
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
  /** Rows this rank received (and sends back in combine). */
  rows: number;
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
export class MoeAllToAll<M extends MoeMemory = 'host'> {
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
    private readonly region: MrHandle | undefined,
    private readonly staging: MrHandle | undefined,
    layout: MoeAllToAll['layout'],
    rowStride: number,
    private readonly mem: Mem,
    private readonly proxy?: ProxyDriver,
    private readonly gpu?: GpuProxy,
    private readonly direct?: GpuDirect,
  ) {
    this.config = config;
    this.localExperts = config.numExperts / config.worldSize;
    this.layout = layout;
    this.rowStride = rowStride;
    this.tokenBytes = config.hidden * ELEM[config.inDtype];
    this.scaleCount = config.scales ? config.hidden / config.scaleBlock : 0;
    this.outRow = config.hidden * ELEM[config.outDtype];
    if (direct) this.descriptor = direct.descriptor();
    else {
      mem.bind(region!, staging!);
      const ipc = mem.exportRegion();
      this.descriptor = ipc ? `${region!.desc.toString()} ${ipc}` : region!.desc.toString();
    }
    const b = config.immBase;
    this.imm = { route: b, dispatch: b + 1, combine: b + 2, barrier: b + 3 };
  }

  /**
   * Validate the config and register this rank's buffers, sized from it. With `device`, tokens,
   * expert rows and every buffer are CUDA memory on that GPU: rows are packed, laid out and
   * combined there by kernels, and the engine (created with GPU memory operations) moves them.
   */
  static async create(engine: TransferEngine, cfg: MoeConfig): Promise<MoeAllToAll<'host'>>;
  static async create(
    engine: TransferEngine,
    cfg: MoeConfig,
    device: MoeDeviceOptions,
  ): Promise<MoeAllToAll<'device'>>;
  static async create(
    engine: TransferEngine,
    cfg: MoeConfig,
    device?: MoeDeviceOptions,
  ): Promise<MoeAllToAll<'host'> | MoeAllToAll<'device'>> {
    // Check the config, lay the buffers out, then the mode's factory.
    const c = checkConfig(cfg, device);
    const l = layoutOf(c);
    if (!device) return MoeAllToAll.createHost(engine, c, l);
    if (device.gpuDriven) return MoeAllToAll.createGpuDriven(engine, c, l, device);
    if (c.proxy) return MoeAllToAll.createGpuProxy(engine, c, l, device);
    return MoeAllToAll.createDevice(engine, c, l, device);
  }

  /** Host memory; the engine moves every row (posted from JS, or by the native proxy with `proxy`). */
  private static async createHost(
    engine: TransferEngine,
    c: Required<MoeConfig>,
    { layout, rowStride, stagingSize }: MoeLayout,
  ): Promise<MoeAllToAll<'host'>> {
    const region = await engine.registerMemory(Math.max(64, layout.size), { remote: true });
    const staging = await engine.registerMemory(stagingSize);
    let proxy: ProxyDriver | undefined;
    try {
      if (c.proxy)
        proxy = new ProxyDriver(engine, proxyLayout(c, layout, rowStride, stagingSize), new Uint8Array(64));
    } catch (e) {
      await region.unregister().catch(() => {});
      await staging.unregister().catch(() => {});
      throw e;
    }
    return new MoeAllToAll<'host'>(engine, c, region, staging, layout, rowStride, new HostMem(), proxy);
  }

  /** GPU-driven: kernels store rows over NVLink into peers' regions; hybrid with the proxy across nodes. */
  private static async createGpuDriven(
    engine: TransferEngine,
    c: Required<MoeConfig>,
    { layout, rowStride, stagingSize, rowsMax }: MoeLayout,
    device: MoeDeviceOptions,
  ): Promise<MoeAllToAll<'device'>> {
    const W = c.worldSize;
    const { routes, priv, combine, size } = layout;
    const gd = new GpuDirect(device.ops, device.device, {
      worldSize: W,
      rank: c.rank,
      nodeSize: c.nodeSize,
      numExperts: c.numExperts,
      localExperts: c.numExperts / W,
      rowsMax,
      maxTokens: c.maxTokensPerRank,
      tokenBytes: c.hidden * ELEM[c.inDtype],
      scaleBytes: c.scales ? (c.hidden / c.scaleBlock) * 4 : 0,
      hidden: c.hidden,
      rowStride,
      outRow: c.hidden * ELEM[c.outDtype],
      routes,
      priv,
      combine,
      size,
      timeoutMs: c.timeoutMs,
    });
    if (c.nodeSize < W) {
      // Hybrid: peers of other nodes through the proxy, from and into page-locked host memory
      // mapped into the device (kernels write it; the NIC reads and writes it).
      const k = device.ops.proxy!;
      const regs: MrHandle[] = [];
      try {
        const hostRegion = k.allocMapped(Math.max(64, size));
        const staging = k.allocMapped(stagingSize);
        const go = k.allocMapped(64);
        regs.push(await engine.registerMemory(new Uint8Array(hostRegion.buffer), { remote: true }));
        regs.push(await engine.registerMemory(new Uint8Array(staging.buffer)));
        const l = { ...proxyLayout(c, layout, rowStride, stagingSize), maxSleepUs: 50 };
        gd.hybrid = {
          hostRegion,
          staging,
          go,
          regionHandle: regs[0]!,
          stagingHandle: regs[1]!,
          proxy: new ProxyDriver(engine, l, new Uint8Array(go.buffer)),
          rowsBase: l.rowsBase,
          combineBase: l.combineBase,
        };
      } catch (e) {
        for (const r of regs) await r.unregister().catch(() => {});
        gd.free();
        throw e;
      }
    }
    return new MoeAllToAll<'device'>(
      engine,
      c,
      undefined,
      undefined,
      layout,
      rowStride,
      new MappedMem(gd),
      undefined,
      undefined,
      gd,
    );
  }

  /** GPU proxy: kernels count, pack, lay out and combine in mapped host memory; the native proxy posts. */
  private static async createGpuProxy(
    engine: TransferEngine,
    c: Required<MoeConfig>,
    { layout, rowStride, stagingSize, rowsMax }: MoeLayout,
    device: MoeDeviceOptions,
  ): Promise<MoeAllToAll<'device'>> {
    const W = c.worldSize;
    const { size } = layout;
    const gp = new GpuProxy(device.ops, device.device, {
      region: size,
      staging: stagingSize,
      worldSize: W,
      localExperts: c.numExperts / W,
      numExperts: c.numExperts,
      rowsMax,
      maxTokens: c.maxTokensPerRank,
      tokenBytes: c.hidden * ELEM[c.inDtype],
      scaleBytes: c.scales ? (c.hidden / c.scaleBlock) * 4 : 0,
      hidden: c.hidden,
    });
    const regs: MrHandle[] = [];
    try {
      regs.push(await engine.registerMemory(new Uint8Array(gp.region.buffer), { remote: true }));
      regs.push(await engine.registerMemory(new Uint8Array(gp.staging.buffer)));
      // Kernels raise the go words: the proxy polls them, so it sleeps briefly at most.
      const l = { ...proxyLayout(c, layout, rowStride, stagingSize), maxSleepUs: 50 };
      const proxy = new ProxyDriver(engine, l, new Uint8Array(gp.flags.buffer));
      return new MoeAllToAll<'device'>(
        engine,
        c,
        regs[0]!,
        regs[1]!,
        layout,
        rowStride,
        new MappedMem(gp),
        proxy,
        gp,
      );
    } catch (e) {
      for (const r of regs) await r.unregister().catch(() => {});
      gp.free();
      throw e;
    }
  }

  /** Device memory registered with the engine (direct or staged); kernels pack, lay out and combine. */
  private static async createDevice(
    engine: TransferEngine,
    c: Required<MoeConfig>,
    { layout, rowStride, stagingSize, rowsMax }: MoeLayout,
    device: MoeDeviceOptions,
  ): Promise<MoeAllToAll<'device'>> {
    const W = c.worldSize;
    const { size } = layout;
    const mem = new DeviceMem(device.ops, device.device, {
      expertX: W * rowsMax * c.hidden * ELEM[c.inDtype],
      expertScales: c.scales ? W * rowsMax * (c.hidden / c.scaleBlock) * 4 : 0,
      out: c.maxTokensPerRank * c.hidden * 4,
      headers: W * rowsMax * 8,
    });
    try {
      const r = mem.allocRegistered(Math.max(64, size));
      const st = mem.allocRegistered(stagingSize);
      const region = await engine.registerMemory(
        { cuda: { ptr: r, length: Math.max(64, size), device: device.device } },
        { remote: true },
      );
      const staging = await engine.registerMemory({
        cuda: { ptr: st, length: stagingSize, device: device.device },
      });
      return new MoeAllToAll<'device'>(engine, c, region, staging, layout, rowStride, mem);
    } catch (e) {
      mem.free();
      throw e;
    }
  }

  /**
   * Give every rank's descriptor (index = rank; this rank's own is ignored). On the GPU, a peer of
   * the same node (`nodeSize`) whose descriptor carries a CUDA IPC handle is reached over NVLink:
   * this rank's kernels store straight into its region, and only the immediates go through the
   * engine.
   */
  connect(descriptors: readonly string[]): void {
    const c = this.config;
    if (descriptors.length !== c.worldSize)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.connect: need ${c.worldSize} descriptors, got ${descriptors.length}`,
      );
    if (this.direct) {
      if (this.direct.hybrid && this.connected)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          'MoeAllToAll.connect: a hybrid GPU-driven instance connects once (create a new one to change peers)',
        );
      this.direct.connect(descriptors);
      this.paths = descriptors.map((_, r) =>
        r === c.rank ? 'self' : this.direct!.local(r) ? 'nvlink' : 'rdma',
      );
      this.connected = true;
      return;
    }
    const parts = descriptors.map((d) => {
      if (typeof d !== 'string')
        throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.connect: descriptors must be strings');
      const [desc, ipc] = d.split(' ');
      return { desc: MrDesc.parse(desc!), ipc };
    });
    this.mem.disconnect();
    this.peers = parts.map((p) => p.desc);
    this.paths = parts.map((p, r) => {
      if (r === c.rank) return 'self';
      const sameNode = Math.floor(r / c.nodeSize) === Math.floor(c.rank / c.nodeSize);
      return sameNode && p.ipc && this.mem.connectPeer(r, p.ipc) ? 'nvlink' : 'rdma';
    });
    const others = this.peers.filter((_, r) => r !== c.rank).map((d) => d.owner);
    this.group = others.length ? this.engine.addPeerGroup(others) : undefined;
    if (this.proxy) {
      this.rounds = 0;
      this.proxy.connect(this.peers, this.staging!, this.region!.buffer!, this.staging!.buffer!);
    }
  }

  /** Rounds started since connect (the proxy's round numbers; GPU-driven: since create). */
  private rounds = 0;
  /** connect() ran (GPU-driven instances keep no engine descriptors). */
  private connected = false;

  /**
   * What this instance did: rounds started since {@link connect}, and with the native proxy its
   * engine port's counters (writes and immediates it posted, settled and failed; arrivals of the
   * instance's four immediates — routes, dispatch, combine, barrier — that it counted).
   */
  stats(): { rounds: number; proxy?: PortStats } {
    const p = this.proxy ?? this.direct?.hybrid?.proxy;
    return { rounds: this.rounds, ...(p ? { proxy: p.stats() } : {}) };
  }

  /** How this rank reaches each rank (after {@link connect}): itself, NVLink (CUDA IPC), or the engine. */
  paths: ReadonlyArray<'self' | 'nvlink' | 'rdma'> = [];

  /**
   * Move `length` bytes of staging at `srcOffset` to rank `d`'s region at `dstOffset`, then count
   * one `imm` there: one engine write, or over NVLink a kernel store into the peer's region
   * (finished before the immediate is posted) and an immediate alone. An empty move is the
   * immediate alone, so counts never depend on the data.
   */
  private send(d: number, srcOffset: number, length: number, dstOffset: number, imm: number): Promise<void> {
    const dst = this.peers[d]!;
    if (this.paths[d] === 'nvlink') {
      try {
        if (length > 0) this.mem.toPeer(d, dstOffset, srcOffset, length);
      } catch (e) {
        return Promise.reject(e);
      }
      return this.engine.submitImm({ dst, imm });
    }
    if (length === 0) return this.engine.submitImm({ dst, imm });
    return this.engine.submitSingleWrite({
      src: this.staging!,
      srcOffset,
      length,
      dst,
      dstOffset,
      imm,
      shards: 1,
    });
  }

  private expertRank(e: number): number {
    return Math.floor(e / this.localExperts);
  }

  /**
   * Dispatch this rank's tokens to the experts they are routed to. With `{send: true, recv: false}`
   * it posts and returns at once (resolving to undefined); `{recv: true}` alone waits for and lays
   * out what arrived. Default: both.
   */
  async dispatch(
    input: DispatchInput<M> | undefined,
    phases: Phases = {},
  ): Promise<DispatchResult<M> | undefined> {
    const send = phases.send ?? true;
    const recv = phases.recv ?? true;
    if (!this.peers.length && !this.connected && this.config.worldSize > 1)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: connect() first');
    if (send) await this.dispatchSend(input!);
    if (!recv) return undefined;
    return this.dispatchRecv();
  }

  private checkInput(x: DispatchInput<M>): number {
    const c = this.config;
    const n = x.topkIds.length / c.topk;
    if (!Number.isInteger(n) || n > c.maxTokensPerRank)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.dispatch: topkIds holds ${x.topkIds.length} ids, not a multiple of topk ${c.topk} for at most ${c.maxTokensPerRank} tokens`,
      );
    const why = this.mem.checkTokens(
      x.tokens,
      n * this.tokenBytes,
      this.scaleCount ? x.scales : undefined,
      n * this.scaleCount,
    );
    if (why) throw new TrellisError('INVALID_ARGUMENT', `MoeAllToAll.dispatch: ${why}`);
    if (x.tokens instanceof Uint8Array && x.tokens.length !== n * this.tokenBytes)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.dispatch: tokens is ${x.tokens.length} bytes; ${n} tokens of ${c.hidden} ${c.inDtype} are ${n * this.tokenBytes}`,
      );
    if (x.topkWeights.length !== n * c.topk)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: topkWeights must match topkIds');
    if (this.scaleCount && x.scales instanceof Float32Array && x.scales.length !== n * this.scaleCount)
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

  private async dispatchSend(x: DispatchInput<M>): Promise<void> {
    if (this.round && !this.round.dispatched)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: the previous round has not finished');
    const c = this.config;
    const W = c.worldSize;
    const n = this.checkInput(x);
    const me = c.rank;
    if (this.gpu) return this.gpuDispatchSend(x, n);
    if (this.direct) return this.directDispatchSend(x, n);
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
    this.round = this.newRound(x, n, sent);
    this.round.counts[me]!.set(myCounts);
    const m = this.mem;
    // Routes: my counts, once, in staging.
    m.put('staging', 0, new Uint8Array(myCounts.buffer));
    // Pack every peer's rows (mine included, for the local copy): a header (token, k, local
    // expert), the token, its scales.
    const rowsBase = align(c.numExperts * 4, 64);
    const packAt: number[] = [];
    const total = sent.reduce((a, r) => a + r.length, 0);
    const headers = new Uint8Array(total * 8);
    const hv = new DataView(headers.buffer);
    const hdrFrom = new Float64Array(total);
    const rowTo = new Float64Array(total);
    const tokFrom = new Float64Array(total);
    let at = rowsBase;
    let i = 0;
    for (let d = 0; d < W; d++) {
      packAt.push(at);
      for (const [t, k] of sent[d]!) {
        hv.setUint32(8 * i, t, true);
        hv.setUint16(8 * i + 4, k, true);
        hv.setUint16(8 * i + 6, x.topkIds[t * c.topk + k]! - d * this.localExperts, true);
        hdrFrom[i] = 8 * i;
        rowTo[i] = at;
        tokFrom[i] = t * this.tokenBytes;
        at += this.rowStride;
        i++;
      }
    }
    m.putRows('staging', rowTo, headers, hdrFrom, 8);
    m.rows('staging', plus(rowTo, 8), m.input(x.tokens), tokFrom, this.tokenBytes);
    if (this.scaleCount)
      m.rows(
        'staging',
        plus(rowTo, 8 + this.tokenBytes),
        m.input(x.scales!),
        Float64Array.from(sent.flatMap((rows) => rows.map(([t]) => t * this.scaleCount * 4))),
        this.scaleCount * 4,
      );
    this.packAt = packAt;
    this.rounds++;
    if (this.proxy) {
      // The proxy posts routes, private and overflow rows (and this rank's own copies).
      this.proxy.go('dispatch', this.rounds);
      return;
    }
    const P = c.maxPrivateTokens;
    const posts: Promise<void>[] = [];
    for (let d = 0; d < W; d++) {
      const rows = sent[d]!.length;
      if (d === me) {
        // Local: my own rows land in my own private slot and overflow as a peer's would.
        m.copy('region', this.layout.routes + me * c.numExperts * 4, 'staging', 0, c.numExperts * 4);
        continue;
      }
      posts.push(
        this.send(d, 0, c.numExperts * 4, this.layout.routes + me * c.numExperts * 4, this.imm.route),
      );
      const priv = Math.min(rows, P);
      posts.push(
        this.send(
          d,
          packAt[d]!,
          priv * this.rowStride,
          this.layout.priv + me * P * this.rowStride,
          this.imm.dispatch,
        ),
      );
    }
    // Private rows for myself.
    const selfRows = sent[me]!.length;
    m.copy(
      'region',
      this.layout.priv + me * P * this.rowStride,
      'staging',
      packAt[me]!,
      Math.min(selfRows, P) * this.rowStride,
    );
    this.pendingSends = Promise.all(posts).then(() => this.sendOverflow());
    this.pendingSends.catch(() => {});
  }

  private packAt: number[] = [];
  private pendingSends: Promise<void> | undefined;
  private routesIn: Promise<void> | undefined;

  /** Wait for every peer's routes (once per round). */
  private routes(): Promise<void> {
    this.routesIn ??= (async () => {
      const c = this.config;
      if (this.proxy) await this.proxy.wait('dispatch', this.rounds);
      else await this.engine.immCounter(this.imm.route).wait(c.worldSize - 1, { timeoutMs: c.timeoutMs });
      const all = this.mem.get('region', this.layout.routes, c.worldSize * c.numExperts * 4);
      for (let s = 0; s < c.worldSize; s++)
        if (s !== c.rank || this.gpu) {
          // (on the GPU, this rank's own counts come from its kernel, through the region too)
          const counts = new Int32Array(all.buffer, all.byteOffset + s * c.numExperts * 4, c.numExperts);
          const why = checkRoutes(counts, c);
          if (why)
            throw new TrellisError(
              'DECODE_ERROR',
              `MoeAllToAll.dispatch: rank ${s} sent routes that do not fit this config (${why}); every rank must run the same config`,
            );
          this.round!.counts[s]!.set(counts);
        }
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
    for (let d = 0; d < c.worldSize; d++) {
      const extra = this.round!.sent[d]!.length - P;
      if (extra <= 0) continue;
      const src = this.packAt[d]! + P * this.rowStride;
      if (d === me) {
        this.mem.copy('region', this.overflowAt(me, me), 'staging', src, extra * this.rowStride);
        continue;
      }
      posts.push(this.send(d, src, extra * this.rowStride, this.overflowAt(me, d), this.imm.dispatch));
    }
    await Promise.all(posts);
  }

  private async dispatchRecv(): Promise<DispatchResult<M>> {
    const c = this.config;
    const me = c.rank;
    const r = this.round;
    if (!r || r.dispatched)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: recv without a send this round');
    if (this.direct) return this.directDispatchRecv(r);
    await this.routes();
    const P = c.maxPrivateTokens;
    // One private write from every peer, plus one overflow write from each that has more than P rows.
    if (!this.proxy) {
      let expected = 0;
      for (let s = 0; s < c.worldSize; s++)
        if (s !== me) expected += 1 + (this.rowsBetween(s, me) > P ? 1 : 0);
      await this.engine.immCounter(this.imm.dispatch).wait(expected, { timeoutMs: c.timeoutMs });
      await this.pendingSends; // my own overflow (self copy) is in place too
    }
    // Lay out per local expert: expert j's rows from source 0, 1, ... in stream order. A source's
    // stream is ordered by local expert, so its routes say which rows are expert j's.
    const L = this.localExperts;
    const tokensPerExpert = new Int32Array(L);
    for (let s = 0; s < c.worldSize; s++)
      for (let j = 0; j < L; j++) tokensPerExpert[j]! += r.counts[s]![me * L + j]!;
    const expertOffsets = new Int32Array(L);
    for (let j = 1; j < L; j++) expertOffsets[j] = expertOffsets[j - 1]! + tokensPerExpert[j - 1]!;
    const total = tokensPerExpert.reduce((a, b) => a + b, 0);
    r.rows = total;
    if (this.gpu) return this.gpuDispatchRecv(r, tokensPerExpert, expertOffsets);
    const origin: Array<[number, number]> = new Array(total);
    const from = new Float64Array(total);
    const fill = new Int32Array(L);
    for (let s = 0; s < c.worldSize; s++) {
      let p = 0;
      for (let j = 0; j < L; j++)
        for (let q = 0; q < r.counts[s]![me * L + j]!; q++, p++) {
          const at =
            p < P
              ? this.layout.priv + (s * P + p) * this.rowStride
              : this.overflowAt(s, me) + (p - P) * this.rowStride;
          const row = expertOffsets[j]! + fill[j]!++;
          from[row] = at;
          origin[row] = [s, p];
        }
    }
    const m = this.mem;
    const expertX = m.output('expertX', total * this.tokenBytes);
    m.rows(expertX, iota(total, this.tokenBytes), 'region', plus(from, 8), this.tokenBytes);
    let expertScales: unknown;
    if (this.scaleCount) {
      const sb = this.scaleCount * 4;
      const out = m.output('expertScales', total * sb);
      m.rows(out, iota(total, sb), 'region', plus(from, 8 + this.tokenBytes), sb);
      expertScales = m.asScales(out);
    }
    r.origin = origin;
    r.dispatched = true;
    return {
      tokensPerExpert,
      expertOffsets,
      expertX: m.result(expertX),
      ...(expertScales !== undefined ? { expertScales } : {}),
    } as DispatchResult<M>;
  }

  /**
   * Send every expert output row back to its token's rank and sum each token's rows weighted by
   * its top-k weights, in fp32. `expertOut` holds `outDtype` rows in the order dispatch returned
   * them. Resolves (with `recv`) to `numTokens × hidden` of `outDtype`, or of fp32 with `accumulate: 'fp32'`.
   */
  async combine(
    input: { expertOut: MoeBuffer<M> } | undefined,
    phases: Phases & { accumulate?: 'out' | 'fp32' } = {},
  ): Promise<(M extends 'device' ? bigint : Uint8Array | Float32Array) | undefined> {
    const send = phases.send ?? true;
    const recv = phases.recv ?? true;
    const r = this.round;
    if (!r?.dispatched)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.combine: dispatch this round first');
    const c = this.config;
    if (send) {
      if (
        input === undefined ||
        (input.expertOut instanceof Uint8Array
          ? input.expertOut.length !== r.rows * this.outRow
          : typeof input.expertOut !== 'bigint')
      )
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `MoeAllToAll.combine: expertOut must hold ${r.rows} rows of ${c.hidden} ${c.outDtype}`,
        );
      this.combineSends = this.combineSend(input.expertOut);
      this.combineSends.catch(() => {});
    }
    if (!recv) return undefined;
    return this.combineRecv(phases.accumulate ?? 'out') as Promise<
      M extends 'device' ? bigint : Uint8Array | Float32Array
    >;
  }

  private combineSends: Promise<void> | undefined;

  /** Where rows from `from` start in `to`'s combine region: after the rows `to` sent to ranks before `from`. */
  private combineAt(to: number, from: number): number {
    let rows = 0;
    for (let d = 0; d < from; d++) rows += this.rowsBetween(to, d);
    return this.layout.combine + rows * this.outRow;
  }

  private async combineSend(out: MoeBuffer<M>): Promise<void> {
    if (this.gpu) return this.gpuCombineSend(out as bigint);
    if (this.direct) return this.directCombineSend(out as bigint);
    const c = this.config;
    const me = c.rank;
    const r = this.round!;
    // Group rows by source, in that source's stream order.
    const bySrc: number[][] = Array.from({ length: c.worldSize }, () => []);
    for (const [row, [s, p]] of r.origin.entries()) bySrc[s]![p] = row;
    const base = this.staging!.length - c.worldSize * c.maxTokensPerRank * c.topk * this.outRow;
    const total = r.origin.length;
    const to = new Float64Array(total);
    const from = new Float64Array(total);
    const spans: Array<[number, number]> = [];
    let at = base;
    let i = 0;
    for (let s = 0; s < c.worldSize; s++) {
      const start = at;
      for (const row of bySrc[s]!) {
        to[i] = at;
        from[i++] = row * this.outRow;
        at += this.outRow;
      }
      spans.push([start, at]);
    }
    const m = this.mem;
    m.rows('staging', to, m.input(out), from, this.outRow);
    if (this.proxy) {
      this.proxy.go('combine', this.rounds);
      return;
    }
    const posts: Promise<void>[] = [];
    for (let s = 0; s < c.worldSize; s++) {
      const [start, end] = spans[s]!;
      if (s === me) {
        m.copy('region', this.combineAt(me, me), 'staging', start, end - start);
        continue;
      }
      posts.push(this.send(s, start, end - start, this.combineAt(s, me), this.imm.combine));
    }
    await Promise.all(posts);
  }

  private async combineRecv(accumulate: 'out' | 'fp32'): Promise<Uint8Array | Float32Array | bigint> {
    const c = this.config;
    const me = c.rank;
    const r = this.round!;
    if (this.direct) {
      await this.combineSends;
      return this.directCombineRecv(r, accumulate);
    }
    if (this.proxy) await this.proxy.wait('combine', this.rounds);
    else await this.engine.immCounter(this.imm.combine).wait(c.worldSize - 1, { timeoutMs: c.timeoutMs });
    await this.combineSends;
    if (this.gpu) return this.gpuCombineRecv(r, accumulate);
    // Where each (token, k) row came back, then the weighted sum over k in order (fp32 throughout):
    // acc = fp32(acc + fp32(w_k × row_k)), k = 0 .. topk-1 — the order the kernel uses too.
    const rowAt = new Float64Array(r.numTokens * c.topk).fill(-1);
    for (let d = 0; d < c.worldSize; d++) {
      const base = this.combineAt(me, d);
      r.sent[d]!.forEach(([t, k], p) => {
        rowAt[t * c.topk + k] = base + p * this.outRow;
      });
    }
    const result = this.mem.combine(rowAt, r.weights, r.numTokens, c.topk, c.hidden, c.outDtype, accumulate);
    // The round is closed by a barrier: after it every buffer may be reused by the next round (the
    // proxy closed it before its combine event).
    if (this.group && !this.proxy) {
      await this.engine.submitBarrier({ group: this.group, imm: this.imm.barrier, spread: true });
      await this.engine.immCounter(this.imm.barrier).wait(c.worldSize - 1, { timeoutMs: c.timeoutMs });
    }
    this.round = undefined;
    this.routesIn = undefined;
    return result;
  }

  /** A round as dispatch-send starts it (counts are filled as routes arrive). */
  private newRound(x: DispatchInput<M>, n: number, sent: Round['sent']): Round {
    const c = this.config;
    return {
      numTokens: n,
      counts: Array.from({ length: c.worldSize }, () => new Int32Array(c.numExperts)),
      weights: x.topkWeights,
      ids: x.topkIds,
      sent,
      origin: [],
      rows: 0,
      dispatched: false,
    };
  }

  /** The count-and-pack arguments both GPU modes share. */
  private packArgs(x: DispatchInput<M>, b: { ids: bigint; scratch: bigint; rowAt: bigint }): MoePackArgs {
    const c = this.config;
    return {
      ids: x.topkIds,
      idsDev: b.ids,
      topk: c.topk,
      experts: c.numExperts,
      local: this.localExperts,
      scratch: b.scratch,
      tokens: x.tokens as bigint,
      tokenBytes: this.tokenBytes,
      scales: this.scaleCount ? (x.scales as bigint) : 0n,
      scaleBytes: this.scaleCount * 4,
      rowStride: this.rowStride,
      combineOff: this.layout.combine,
      outRow: this.outRow,
      rowAt: b.rowAt,
    };
  }

  // -- the GPU driven by the native proxy: kernels on mapped host memory, go words raised by them

  private gpuDispatchSend(x: DispatchInput<M>, n: number): void {
    const c = this.config;
    const g = this.gpu!;
    this.round = this.newRound(x, n, []);
    this.rounds++;
    g.k.dispatchPack(g.device, {
      ...this.packArgs(x, g),
      staging: g.staging.devicePtr,
      rowsBase: align(c.numExperts * 4, 64),
      go: g.flags.devicePtr,
      round: BigInt(this.rounds),
    });
    this.proxy!.kick(); // its spin window starts now: a short kernel is seen without a sleep
  }

  private gpuDispatchRecv(
    r: Round,
    tokensPerExpert: Int32Array,
    expertOffsets: Int32Array,
  ): DispatchResult<M> {
    const c = this.config;
    const g = this.gpu!;
    const L = this.localExperts;
    const table = GpuProxy.table(r.counts, c.rank, L, expertOffsets, (s) => this.overflowAt(s, c.rank));
    return this.unpackOnDevice(
      g.k,
      g.device,
      r,
      table,
      g.table,
      g.region.devicePtr,
      g,
      tokensPerExpert,
      expertOffsets,
    );
  }

  /**
   * Lay out what arrived in `region` per local expert with the layout kernel (the proxy's and the
   * GPU-driven modes share it), and return the round's result.
   */
  private unpackOnDevice(
    k: MoeProxyKernels,
    device: number,
    r: Round,
    table: Float64Array,
    tableDev: bigint,
    region: bigint,
    out: { expertX: bigint; expertScales: bigint },
    tokensPerExpert: Int32Array,
    expertOffsets: Int32Array,
    srcBase?: bigint,
  ): DispatchResult<M> {
    const c = this.config;
    k.unpack(device, {
      table,
      tableDev,
      W: c.worldSize,
      L: this.localExperts,
      rows: r.rows,
      region,
      privOff: this.layout.priv,
      P: c.maxPrivateTokens,
      rowStride: this.rowStride,
      tokenBytes: this.tokenBytes,
      scaleBytes: this.scaleCount * 4,
      expertX: out.expertX,
      expertScales: out.expertScales,
      ...(srcBase !== undefined ? { srcBase } : {}),
    });
    r.dispatched = true;
    return {
      tokensPerExpert,
      expertOffsets,
      expertX: out.expertX,
      ...(this.scaleCount ? { expertScales: out.expertScales } : {}),
    } as DispatchResult<M>;
  }

  private gpuCombineSend(expertOut: bigint): void {
    const c = this.config;
    const g = this.gpu!;
    g.k.combinePack(g.device, {
      tableDev: g.table,
      W: c.worldSize,
      L: this.localExperts,
      rows: this.round!.rows,
      expertOut,
      outRow: this.outRow,
      staging: g.staging.devicePtr,
      combineBase: this.staging!.length - c.worldSize * c.maxTokensPerRank * c.topk * this.outRow,
      go: g.flags.devicePtr + 8n,
      round: BigInt(this.rounds),
    });
    this.proxy!.kick();
  }

  private gpuCombineRecv(r: Round, accumulate: 'out' | 'fp32'): bigint {
    const c = this.config;
    const g = this.gpu!;
    g.k.gather(g.device, {
      region: g.region.devicePtr,
      rowAt: g.rowAt,
      weights: r.weights,
      weightsDev: g.weights,
      topk: c.topk,
      hidden: c.hidden,
      rowFp32: c.outDtype === 'fp32',
      out: g.out,
      outFp32: accumulate === 'fp32' || c.outDtype === 'fp32',
    });
    this.round = undefined;
    this.routesIn = undefined;
    return g.out;
  }

  // -- GPU-driven NVLink: kernels store into peers' regions and raise flags there

  private directDispatchSend(x: DispatchInput<M>, n: number): void {
    const c = this.config;
    const d = this.direct!;
    this.round = this.newRound(x, n, []);
    this.rounds++;
    d.k.dispatch(d.device, {
      ...this.packArgs(x, d),
      counts: d.counts,
      peers: d.peers,
      W: c.worldSize,
      me: c.rank,
      privOff: this.layout.priv,
      P: c.maxPrivateTokens,
      routesOff: this.layout.routes,
      flagsOff: d.flagsOff,
      round: BigInt(this.rounds),
      ...(d.hybrid
        ? {
            counts: d.hybrid.staging.devicePtr, // staging byte 0: the routes the proxy posts
            staging: d.hybrid.staging.devicePtr,
            rowsBase: d.hybrid.rowsBase,
            retBase: d.retBase,
            go: d.hybrid.go.devicePtr,
          }
        : {}),
    });
    d.hybrid?.proxy.kick();
  }

  private async directDispatchRecv(r: Round): Promise<DispatchResult<M>> {
    const c = this.config;
    const d = this.direct!;
    const L = this.localExperts;
    if (d.hybrid) await d.hybrid.proxy.wait('dispatch', this.rounds);
    const routes = new Uint8Array(c.worldSize * c.numExperts * 4);
    d.wait('dispatch', this.rounds, routes);
    // Hybrid: the proxy's sources wrote their routes into the host region.
    const far = d.hybrid
      ? new Uint8Array(d.hybrid.hostRegion.buffer, this.layout.routes, routes.length)
      : undefined;
    for (let s = 0; s < c.worldSize; s++) {
      const from = far && !d.local(s) ? far : routes;
      const counts = new Int32Array(from.slice(s * c.numExperts * 4, (s + 1) * c.numExperts * 4).buffer);
      const why = checkRoutes(counts, c);
      if (why)
        throw new TrellisError(
          'DECODE_ERROR',
          `MoeAllToAll.dispatch: rank ${s} wrote routes that do not fit this config (${why}); every rank must run the same config`,
        );
      r.counts[s]!.set(counts);
    }
    const tokensPerExpert = new Int32Array(L);
    for (let s = 0; s < c.worldSize; s++)
      for (let j = 0; j < L; j++) tokensPerExpert[j]! += r.counts[s]![c.rank * L + j]!;
    const expertOffsets = new Int32Array(L);
    for (let j = 1; j < L; j++) expertOffsets[j] = expertOffsets[j - 1]! + tokensPerExpert[j - 1]!;
    r.rows = tokensPerExpert.reduce((a, b) => a + b, 0);
    return this.unpackOnDevice(
      d.shared,
      d.device,
      r,
      d.tableOf(r.counts, expertOffsets),
      d.table,
      d.region,
      d,
      tokensPerExpert,
      expertOffsets,
      d.hybrid ? d.srcBase : undefined,
    );
  }

  private directCombineSend(expertOut: bigint): void {
    const c = this.config;
    const d = this.direct!;
    d.k.combine(d.device, {
      tableDev: d.table,
      W: c.worldSize,
      L: this.localExperts,
      rows: this.round!.rows,
      expertOut,
      outRow: this.outRow,
      peers: d.peers,
      combineOff: this.layout.combine,
      me: c.rank,
      flagsOff: d.flagsOff + c.worldSize * 8,
      round: BigInt(this.rounds),
      ...(d.hybrid ? { dstBase: d.dstBase, go: d.hybrid.go.devicePtr + 8n } : {}),
    });
    d.hybrid?.proxy.kick();
  }

  private async directCombineRecv(r: Round, accumulate: 'out' | 'fp32'): Promise<bigint> {
    const c = this.config;
    const d = this.direct!;
    if (d.hybrid) await d.hybrid.proxy.wait('combine', this.rounds);
    d.wait('combine', this.rounds);
    d.shared.gather(d.device, {
      // Hybrid: rows came back into two regions; rowAt holds absolute addresses.
      region: d.hybrid ? 0n : d.region,
      rowAt: d.rowAt,
      weights: r.weights,
      weightsDev: d.weights,
      topk: c.topk,
      hidden: c.hidden,
      rowFp32: c.outDtype === 'fp32',
      out: d.out,
      outFp32: accumulate === 'fp32' || c.outDtype === 'fp32',
    });
    d.checkWait('combine', this.rounds);
    this.round = undefined;
    this.routesIn = undefined;
    return d.out;
  }

  /** Unregister this rank's buffers (and free them on the device). */
  async close(): Promise<void> {
    this.proxy?.close();
    const h = this.direct?.hybrid;
    if (h) {
      h.proxy.close();
      if (!this.engine.closed) {
        await h.regionHandle.unregister().catch(() => {});
        await h.stagingHandle.unregister().catch(() => {});
      }
    }
    if (!this.engine.closed) {
      await this.region?.unregister().catch(() => {});
      await this.staging?.unregister().catch(() => {});
    }
    this.mem.free();
  }
}

/** `cfg` with defaults filled in, every field checked (a TrellisError naming the field). */
function checkConfig(cfg: MoeConfig, device?: MoeDeviceOptions): Required<MoeConfig> {
  const c: Required<MoeConfig> = {
    scales: false,
    scaleBlock: 128,
    maxPrivateTokens: 64,
    immBase: 0x4d4f0000,
    timeoutMs: 30_000,
    proxy: false,
    proxySpinUs: 200,
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
  int('proxySpinUs', 0);
  if (typeof c.proxy !== 'boolean')
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `MoeAllToAll.create: proxy must be a boolean, got ${String(c.proxy)}`,
    );
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
  const rowsMax = c.maxTokensPerRank * c.topk; // rows one source can send to one receiver
  if (device?.gpuDriven) {
    if (c.proxy)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'MoeAllToAll.create: gpuDriven runs its own proxy where nodeSize < worldSize; leave proxy unset',
      );
    c.maxPrivateTokens = rowsMax; // every row has its private place: no overflow step
  }
  return c;
}

/** Where everything lives in a rank's region and staging, from the config. */
interface MoeLayout {
  layout: { routes: number; priv: number; overflow: number; combine: number; size: number };
  rowStride: number;
  /** Rows one source can send to one receiver. */
  rowsMax: number;
  stagingSize: number;
}

function layoutOf(c: Required<MoeConfig>): MoeLayout {
  const W = c.worldSize;
  const rowsMax = c.maxTokensPerRank * c.topk;
  const rowStride = align(
    8 + c.hidden * ELEM[c.inDtype] + (c.scales ? (c.hidden / c.scaleBlock) * 4 : 0),
    16,
  );
  const routes = 0;
  const priv = align(routes + W * c.numExperts * 4, 64);
  const overflow = priv + W * c.maxPrivateTokens * rowStride;
  const combine = align(overflow + W * Math.max(0, rowsMax - c.maxPrivateTokens) * rowStride, 64);
  const size = combine + rowsMax * c.hidden * ELEM[c.outDtype];
  // Staging: this round's routes, the rows going out to every peer, combine rows going back.
  // Routes, then every peer's rows, then the combine rows (at the end: see combineSend).
  const stagingSize =
    align(c.numExperts * 4, 64) + W * rowsMax * rowStride + W * rowsMax * c.hidden * ELEM[c.outDtype];
  const layout = { routes, priv, overflow, combine, size };
  return { layout, rowStride, rowsMax, stagingSize };
}

/**
 * Why a peer's routes (its row counts per expert) cannot be this round's, or undefined: counts are
 * laid out into buffers sized from the config, so they are checked before any offset is computed.
 * @internal
 */
export function checkRoutes(
  counts: Int32Array,
  c: Pick<Required<MoeConfig>, 'maxTokensPerRank' | 'topk'>,
): string | undefined {
  let total = 0;
  for (let e = 0; e < counts.length; e++) {
    const n = counts[e]!;
    if (n < 0) return `expert ${e}: ${n} rows`;
    total += n;
  }
  const most = c.maxTokensPerRank * c.topk;
  return total > most ? `${total} rows in all, more than maxTokensPerRank × topk = ${most}` : undefined;
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

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** The proxy's view of an instance's layout. */
function proxyLayout(
  c: Required<MoeConfig>,
  l: { routes: number; priv: number; overflow: number; combine: number; size: number },
  rowStride: number,
  stagingSize: number,
): ConstructorParameters<typeof ProxyDriver>[1] {
  const W = c.worldSize;
  const rowsMax = c.maxTokensPerRank * c.topk;
  const outRow = c.hidden * ELEM[c.outDtype];
  const b = c.immBase;
  return {
    worldSize: W,
    rank: c.rank,
    numExperts: c.numExperts,
    localExperts: c.numExperts / W,
    maxPrivateTokens: c.maxPrivateTokens,
    rowStride,
    outRow,
    ...l,
    rowsBase: align(c.numExperts * 4, 64),
    combineBase: stagingSize - W * rowsMax * outRow,
    rowsMax,
    timeoutMs: c.timeoutMs,
    spinUs: c.proxySpinUs,
    maxSleepUs: 1000,
    imm: { route: b, dispatch: b + 1, combine: b + 2, barrier: b + 3 },
  };
}
