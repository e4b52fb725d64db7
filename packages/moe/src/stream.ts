// MoeStream: dispatch and combine as a model's decode step calls them — routing already on the GPU
// (top-k ids and weights where a gating kernel left them), every phase queued on the caller's CUDA
// stream, nothing read back to the host, every launch of a fixed shape so the step replays from a
// CUDA graph. The GPU-driven NVLink protocol of gpu-direct.ts (each rank's region mapped into the
// others; rows stored into receivers' private slots; flags holding round numbers), with the round
// counted on the device and the receive layout computed there (native/cuda/kernels.cu, moe_layout).
// Touches its device buffers, CUDA IPC mappings and mapped error words; no engine.
import { randomBytes } from 'node:crypto';
import { TrellisError } from '@trellis/core';
import type { MoeDeviceOps, MoeStreamKernels } from './device.js';
import { align, CONFIG_KEYS, checkConfig, checkKeys, layoutOf, Protocol } from './protocol.js';
import type { MoeConfig } from './types.js';

/** What {@link MoeStream.create} takes: an {@link MoeConfig} whose ranks are all on one node. */
export type MoeStreamConfig = Omit<
  MoeConfig,
  'nodeSize' | 'maxPrivateTokens' | 'immBase' | 'proxy' | 'proxySpinUs'
>;

// nodeSize is taken where it equals worldSize (create checks).
const NOT_STREAM: readonly string[] = ['maxPrivateTokens', 'immBase', 'proxy', 'proxySpinUs'];
/** Every field of {@link MoeStreamConfig}. */
const STREAM_KEYS = CONFIG_KEYS.filter((k) => !NOT_STREAM.includes(k));

/** A CUDA stream: its `cudaStream_t` as a bigint, or an object with one (`CudaStream` of `@trellis/cuda`). */
export type StreamHandle = bigint | { readonly handle: bigint };

/** One step's input, all device pointers (the buffers may be rewritten between graph replays). */
export interface MoeStreamInput {
  /** Tokens this rank dispatches, `0..maxTokensPerRank` (fixed per captured graph; pad with ids of -1). */
  numTokens: number;
  /** `numTokens × hidden` elements of `inDtype`. */
  tokens: bigint;
  /** fp8 with scales: `numTokens × hidden/scaleBlock` fp32. */
  scales?: bigint;
  /** `numTokens × topk` int32 expert ids (-1: no expert), as the gating kernel left them. */
  topkIds: bigint;
  /** `numTokens × topk` fp32 weights (read by combine-recv). */
  topkWeights: bigint;
}

/** Where dispatch-recv leaves this rank's experts' tokens: device buffers of the instance, the same every round. */
export interface MoeStreamDispatch {
  /** The rows, contiguous per local expert (`Σ tokensPerExpert` rows of `hidden × inDtype` bytes). */
  expertX: bigint;
  /** fp8 with scales: the rows' scales, in the same order. */
  expertScales?: bigint;
  /** int32 × localExperts: rows per local expert (device memory, valid once the phase has run). */
  tokensPerExpert: bigint;
  /** int32 × localExperts: each local expert's first row in `expertX` (device memory). */
  expertOffsets: bigint;
  /** Rows `expertX` (and an `expertOut` given to combine) must hold at most: `worldSize × maxTokensPerRank × topk`. */
  rowsCapacity: number;
}

/** Where a stream-ordered instance's buffers live and which kernels it runs. */
export interface MoeStreamDevice {
  /** `cudaMoeOps()`. */
  ops: MoeDeviceOps;
  device: number;
}

/** A process-unique token in descriptors: ranks of one process use each other's pointers directly. */
const PROCESS = randomBytes(8).toString('hex');
type Phase = 'idle' | 'sent' | 'received' | 'combineSent';
const NEXT: Record<Phase, string> = {
  idle: 'dispatchSend',
  sent: 'dispatchRecv',
  received: 'combineSend',
  combineSent: 'combineRecv',
};

/**
 * Expert-parallel dispatch and combine queued on CUDA streams, for ranks that share a node (NVLink
 * or one GPU): no host synchronisation, no host-side routing work and no engine inside a call, so
 * a decode step that contains them can be captured in a CUDA graph and replayed with new routing.
 *
 * ```ts
 * const moe = MoeStream.create({ worldSize, rank, numExperts: 256, topk: 8, hidden: 7168,
 *   maxTokensPerRank: 128, inDtype: 'fp8', outDtype: 'bf16', scales: true },
 *   { ops: cudaMoeOps(), device: 0 });
 * moe.connect(descriptorsOfEveryRank);               // moe.descriptor from each rank, in rank order
 * const stream = CudaStream.create();                // @trellis/cuda
 * const graph = CudaGraph.capture(stream, () => {
 *   moe.dispatchSend({ numTokens: 128, tokens, scales, topkIds, topkWeights }, stream);
 *   const d = moe.dispatchRecv(stream);              // d.expertX, d.tokensPerExpert: device memory
 *   groupedGemm(d, expertOut, stream);               // your kernels, same stream
 *   moe.combineSend({ expertOut }, stream);
 *   moe.combineRecv(stream, { out });
 * });
 * for (;;) { gate(topkIds, topkWeights); graph.launch(stream); }
 * ```
 *
 * Every phase of one instance must run in order on the device: on one stream, or on several with
 * events between them. A rank that does not arrive makes the waiting kernel give up after
 * `timeoutMs` and mark the instance failed (its later phases then do nothing and finish at once);
 * {@link check} and every later call throw it: `TIMEOUT`, or `DECODE_ERROR` (a peer's counts do not
 * fit the config). A top-k id that is not an expert is dropped (nothing out of bounds is read or
 * written), the round goes on, and {@link check} reports it as `INVALID_ARGUMENT`.
 */
export class MoeStream {
  /** This rank's descriptor: give it to every rank's {@link connect}. */
  readonly descriptor: string;
  /** The checked config (defaults filled in). */
  readonly config: Readonly<Required<MoeConfig>>;
  private readonly p: Protocol;
  private readonly k: MoeStreamKernels;
  private readonly owned: bigint[] = [];
  private readonly opened = new Map<number, bigint>();
  private readonly region: bigint;
  private readonly flagsOff: number;
  private readonly scratch: bigint;
  private readonly rowAt: bigint;
  private readonly counts: bigint;
  private readonly table: bigint;
  private readonly peers: bigint;
  private readonly state: bigint;
  private readonly errWords: { buffer: ArrayBuffer; devicePtr: bigint };
  /** The two error records (kernels' MoeErr, 24 bytes each) as code/detail and round/value. */
  private readonly errInt: Int32Array;
  private readonly errBig: BigInt64Array;
  private readonly result: MoeStreamDispatch;
  private readonly out: bigint;
  private readonly grid: number;
  private phase: Phase = 'idle';
  private weights = 0n;
  private numTokens = 0;
  private connected = false;
  private closed = false;

  private constructor(
    cfg: MoeStreamConfig,
    private readonly ops: MoeDeviceOps,
    /** The GPU this rank's buffers and kernels are on. */
    readonly device: number,
  ) {
    checkKeys('MoeStream.create', cfg, STREAM_KEYS);
    const c = checkConfig(
      { ...cfg, nodeSize: cfg.worldSize },
      { ops, device, gpuDriven: true },
      'MoeStream.create',
    );
    this.config = c;
    this.p = new Protocol(c, layoutOf(c));
    this.k = ops.stream!;
    const p = this.p;
    const W = c.worldSize;
    const L = p.localExperts;
    const sizes = this.k.sizes();
    this.flagsOff = align(p.layout.size, 64);
    const cap = W * p.rowsMax;
    try {
      this.region = this.alloc(this.flagsOff + 2 * W * 8);
      ops.upload(device, this.region + BigInt(this.flagsOff), new Uint8Array(2 * W * 8)); // rounds count from 1
      this.scratch = this.alloc(ops.proxy!.packScratchBytes(p.rowsMax, c.numExperts));
      this.rowAt = this.alloc(p.rowsMax * 8);
      this.counts = this.alloc(c.numExperts * 4);
      this.table = this.alloc((L + 3 * W * L + 2 * W) * 8);
      this.peers = this.alloc(W * 8);
      this.state = this.alloc(sizes.state);
      ops.upload(device, this.state, new Uint8Array(sizes.state));
      const tokensPerExpert = this.alloc(L * 4);
      const expertOffsets = this.alloc(L * 4);
      const expertX = this.alloc(cap * p.tokenBytes);
      const expertScales = p.scaleCount ? this.alloc(cap * p.scaleCount * 4) : 0n;
      this.result = {
        expertX,
        ...(p.scaleCount ? { expertScales } : {}),
        tokensPerExpert,
        expertOffsets,
        rowsCapacity: cap,
      };
      this.out = this.alloc(c.maxTokensPerRank * p.outRow);
      this.errWords = ops.proxy!.allocMapped(Math.max(64, sizes.err));
      this.errInt = new Int32Array(this.errWords.buffer, 0, 12);
      this.errBig = new BigInt64Array(this.errWords.buffer, 0, 6);
    } catch (e) {
      this.free();
      throw e;
    }
    // Row kernels run a fixed grid (a graph replays one shape) and loop over the rows received.
    this.grid = Math.max(1, Math.min(cap, 4 * this.k.smCount(device)));
    const ipc = ops.ipcExport!(device, this.region);
    this.descriptor = `moestream:${ipc}:${PROCESS}:${this.region.toString(16)}:${device}`;
  }

  /**
   * A stream-ordered instance on `device` (every rank of `cfg.worldSize` on this node). Allocates
   * its region, expert blocks and output once, sized from the config. Throws `INVALID_ARGUMENT` for
   * a bad config and `UNSUPPORTED` when `ops` lacks the stream kernels or CUDA IPC.
   */
  static create(cfg: MoeStreamConfig, device: MoeStreamDevice): MoeStream {
    const ops = device?.ops;
    if (!ops?.stream || !ops.proxy || !ops.ipcExport || !ops.ipcImport)
      throw new TrellisError(
        'UNSUPPORTED',
        'MoeStream.create: needs device ops with stream kernels and CUDA IPC (cudaMoeOps() of @trellis/moe)',
      );
    if (!Number.isSafeInteger(device.device) || device.device < 0)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeStream.create: device must be a GPU ordinal >= 0, got ${String(device.device)}`,
      );
    if (cfg && 'nodeSize' in cfg && (cfg as MoeConfig).nodeSize !== cfg.worldSize)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'MoeStream.create: every rank must be on this node (nodeSize = worldSize); across nodes use MoeAllToAll',
      );
    return new MoeStream(cfg, ops, device.device);
  }

  /** Rank `r`'s region mapped here, for every rank, in rank order (each rank's {@link descriptor}). Once per instance. */
  connect(descriptors: readonly string[]): void {
    this.alive('connect');
    const c = this.config;
    if (this.connected)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'MoeStream.connect: already connected (create a new instance to change peers)',
      );
    if (!Array.isArray(descriptors) || descriptors.length !== c.worldSize)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeStream.connect: give one descriptor per rank (${c.worldSize}), got ${Array.isArray(descriptors) ? descriptors.length : typeof descriptors}`,
      );
    const parsed = descriptors.map((d, r) => {
      const m =
        typeof d === 'string' ? /^moestream:([0-9a-f]{128}):([0-9a-f]{16}):([0-9a-f]+):(\d+)$/.exec(d) : null;
      if (!m)
        throw new TrellisError(
          'INVALID_DESCRIPTOR',
          `MoeStream.connect: rank ${r}'s descriptor is not a MoeStream descriptor (every rank must be a MoeStream of the same config)`,
        );
      return { ipc: m[1]!, process: m[2]!, ptr: BigInt(`0x${m[3]}`), device: Number(m[4]) };
    });
    if (parsed[c.rank]!.ptr !== this.region || parsed[c.rank]!.process !== PROCESS)
      throw new TrellisError(
        'INVALID_DESCRIPTOR',
        `MoeStream.connect: descriptor ${c.rank} is not this instance's (rank ${c.rank})`,
      );
    const bases = new BigUint64Array(c.worldSize);
    try {
      parsed.forEach((d, r) => {
        if (r === c.rank) bases[r] = this.region;
        else if (d.process === PROCESS) {
          // A rank of this process: its pointer works here once this device may reach its device.
          if (d.device !== this.device) this.ops.enablePeerAccess?.(this.device, d.device);
          bases[r] = d.ptr;
        } else {
          const p = this.ops.ipcImport!(this.device, d.ipc);
          this.opened.set(r, p);
          bases[r] = p;
        }
      });
      this.ops.upload(this.device, this.peers, new Uint8Array(bases.buffer));
    } catch (e) {
      this.unmap();
      throw e;
    }
    this.connected = true;
  }

  /**
   * Queue dispatch-send on `stream`: count the routing, count the round, store every row into its
   * receiver's private slot for this rank and raise this rank's flag there. Returns at once.
   */
  dispatchSend(x: MoeStreamInput, stream: StreamHandle): void {
    const s = this.begin('dispatchSend', 'idle', stream);
    const c = this.config;
    const p = this.p;
    const n = x?.numTokens;
    if (!Number.isSafeInteger(n) || n < 0 || n > c.maxTokensPerRank)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeStream.dispatchSend: numTokens must be an integer in [0, ${c.maxTokensPerRank}] (maxTokensPerRank), got ${String(n)}`,
      );
    const pairs = n * c.topk;
    this.buffer('dispatchSend', 'tokens', x.tokens, n * p.tokenBytes);
    if (p.scaleCount) this.buffer('dispatchSend', 'scales', x.scales, n * p.scaleCount * 4);
    this.buffer('dispatchSend', 'topkIds', x.topkIds, pairs * 4);
    this.buffer('dispatchSend', 'topkWeights', x.topkWeights, pairs * 4);
    this.k.dispatchSend(this.device, {
      stream: s,
      ids: x.topkIds,
      pairs,
      topk: c.topk,
      experts: c.numExperts,
      local: p.localExperts,
      scratch: this.scratch,
      tokens: x.tokens,
      tokenBytes: p.tokenBytes,
      scales: p.scaleCount ? x.scales! : 0n,
      scaleBytes: p.scaleCount * 4,
      counts: this.counts,
      rowStride: p.rowStride,
      combineOff: p.layout.combine,
      outRow: p.outRow,
      rowAt: this.rowAt,
      peers: this.peers,
      W: c.worldSize,
      me: c.rank,
      privOff: p.layout.priv,
      P: c.maxPrivateTokens,
      routesOff: p.layout.routes,
      flagsOff: this.flagsOff,
      state: this.state,
      err: this.errWords.devicePtr,
    });
    this.weights = x.topkWeights;
    this.numTokens = n;
    this.phase = 'sent';
  }

  /**
   * Queue dispatch-recv on `stream`: wait (on the device) for every rank's rows, lay them out per
   * local expert. Returns the instance's buffers at once; their contents are this round's once the
   * stream reaches them.
   */
  dispatchRecv(stream: StreamHandle): MoeStreamDispatch {
    const s = this.begin('dispatchRecv', 'sent', stream);
    const c = this.config;
    const p = this.p;
    const r = this.result;
    this.k.dispatchRecv(this.device, {
      stream: s,
      region: this.region,
      flagsOff: this.flagsOff,
      W: c.worldSize,
      E: c.numExperts,
      L: p.localExperts,
      me: c.rank,
      P: c.maxPrivateTokens,
      routesOff: p.layout.routes,
      privOff: p.layout.priv,
      rowStride: p.rowStride,
      tokenBytes: p.tokenBytes,
      scaleBytes: p.scaleCount * 4,
      table: this.table,
      tokensPerExpert: r.tokensPerExpert,
      expertOffsets: r.expertOffsets,
      expertX: r.expertX,
      expertScales: r.expertScales ?? 0n,
      timeoutMs: c.timeoutMs,
      grid: this.grid,
      state: this.state,
      err: this.errWords.devicePtr,
    });
    this.phase = 'received';
    return r;
  }

  /** {@link dispatchSend} then {@link dispatchRecv} on one stream. */
  dispatch(x: MoeStreamInput, stream: StreamHandle): MoeStreamDispatch {
    this.dispatchSend(x, stream);
    return this.dispatchRecv(stream);
  }

  /**
   * Queue combine-send on `stream`: every expert-output row (`expertOut`: rows in `expertX`'s
   * order, `hidden × outDtype` bytes each; its allocation must hold `rowsCapacity` rows) back to its
   * token's rank, then this rank's combine flag. Returns at once.
   */
  combineSend(x: { expertOut: bigint }, stream: StreamHandle): void {
    const s = this.begin('combineSend', 'received', stream);
    const c = this.config;
    const p = this.p;
    this.buffer('combineSend', 'expertOut', x?.expertOut, this.result.rowsCapacity * p.outRow);
    this.k.combineSend(this.device, {
      stream: s,
      table: this.table,
      W: c.worldSize,
      L: p.localExperts,
      expertOut: x.expertOut,
      outRow: p.outRow,
      peers: this.peers,
      combineOff: p.layout.combine,
      me: c.rank,
      flagsOff: this.flagsOff + c.worldSize * 8,
      grid: this.grid,
      state: this.state,
    });
    this.phase = 'combineSent';
  }

  /**
   * Queue combine-recv on `stream`: wait for every rank's rows, then each token's output
   * `Σ_k w·row` in fp32 in k order, as `outDtype`, into `out` (`numTokens × hidden`; default: the
   * instance's buffer). Returns the output pointer at once. The round is closed: the next
   * dispatchSend may follow on the stream.
   */
  combineRecv(stream: StreamHandle, opts: { out?: bigint } = {}): bigint {
    const s = this.begin('combineRecv', 'combineSent', stream);
    const c = this.config;
    const p = this.p;
    const out = opts.out ?? this.out;
    if (opts.out !== undefined) this.buffer('combineRecv', 'out', opts.out, this.numTokens * p.outRow);
    this.k.combineRecv(this.device, {
      stream: s,
      region: this.region,
      flagsOff: this.flagsOff + c.worldSize * 8,
      W: c.worldSize,
      rowAt: this.rowAt,
      weights: this.weights,
      tokens: this.numTokens,
      topk: c.topk,
      hidden: c.hidden,
      rowFp32: c.outDtype === 'fp32',
      out,
      outFp32: c.outDtype === 'fp32',
      timeoutMs: c.timeoutMs,
      state: this.state,
      err: this.errWords.devicePtr,
    });
    this.phase = 'idle';
    return out;
  }

  /** {@link combineSend} then {@link combineRecv} on one stream. */
  combine(x: { expertOut: bigint }, stream: StreamHandle, opts: { out?: bigint } = {}): bigint {
    this.combineSend(x, stream);
    return this.combineRecv(stream, opts);
  }

  /**
   * What the kernels reported, read from mapped host memory without synchronising: `undefined`
   * while nothing failed (as of the work the device has run so far). A fatal failure — `TIMEOUT`
   * (a rank did not arrive) or `DECODE_ERROR` (a peer's counts do not fit the config) — stays set:
   * the instance cannot continue, every later call throws it; close it and create another on every
   * rank. A top-k id out of range (`INVALID_ARGUMENT`, the first one) is not fatal: its slot was
   * dropped on every rank alike and rounds go on; it is reported here until close.
   */
  get failure(): TrellisError | undefined {
    return this.fatal() ?? this.decode(1);
  }

  /** The fatal failure the kernels reported, if any (the first error record). */
  private fatal(): TrellisError | undefined {
    return this.decode(0);
  }

  private decode(record: 0 | 1): TrellisError | undefined {
    if (this.closed) return undefined;
    const code = Atomics.load(this.errInt, record * 6);
    if (code <= 0) return undefined;
    const detail = this.errInt[record * 6 + 1]!;
    const round = this.errBig[record * 3 + 1]!;
    const value = this.errBig[record * 3 + 2]!;
    const c = this.config;
    switch (code) {
      case 1:
      case 2:
        return new TrellisError(
          'TIMEOUT',
          `MoeStream (rank ${c.rank}): round ${round}: rank ${detail}'s ${code === 1 ? 'dispatch' : 'combine'} did not arrive within ${c.timeoutMs} ms (it is at round ${value}; a rank is missing or behind; the instance cannot continue)`,
        );
      case 3:
        return new TrellisError(
          'DECODE_ERROR',
          `MoeStream (rank ${c.rank}): round ${round}: rank ${detail} wrote routes that do not fit this config (${value} rows for this rank, at most maxTokensPerRank × topk = ${this.p.rowsMax}, none negative); every rank must run the same config`,
        );
      case 4:
        return new TrellisError(
          'INVALID_ARGUMENT',
          `MoeStream (rank ${c.rank}): round ${round}: topkIds[${detail}] (token ${Math.floor(detail / c.topk)}, k ${detail % c.topk}) is ${value}, not an expert in [0, ${c.numExperts}) or -1; the slot was dropped (the first such id; rounds go on)`,
        );
      default:
        return new TrellisError('INTERNAL', `MoeStream (rank ${c.rank}): unknown device error ${code}`);
    }
  }

  /** Throw {@link failure} if the kernels reported one (call after synchronising the stream; a bad id's report stays until close). */
  check(): void {
    const f = this.failure;
    if (f) throw f;
  }

  /**
   * Free the instance's device memory and close its IPC mappings. Synchronise first: work queued
   * on a stream must not run after close. Peers must not use this rank afterwards. Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.free();
  }

  private begin(op: string, want: Phase, stream: StreamHandle): bigint {
    this.alive(op);
    if (!this.connected)
      throw new TrellisError('INVALID_ARGUMENT', `MoeStream.${op}: connect() every rank's descriptor first`);
    const f = this.fatal();
    if (f) throw f;
    if (this.phase !== want)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeStream.${op}: out of order; the next phase of this round is ${NEXT[this.phase]}`,
      );
    const s = typeof stream === 'bigint' ? stream : stream?.handle;
    if (typeof s !== 'bigint' || s < 0n)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeStream.${op}: stream must be a cudaStream_t (bigint) or a CudaStream, got ${typeof stream}`,
      );
    return s;
  }

  /** `ptr` must be device memory on this instance's GPU with `bytes` from it inside one allocation. */
  private buffer(op: string, name: string, ptr: unknown, bytes: number): void {
    if (typeof ptr !== 'bigint' || ptr <= 0n)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeStream.${op}: ${name} must be a device pointer (bigint), got ${typeof ptr}`,
      );
    if (!bytes || !this.ops.pointerRange) return;
    let r: { device: number; base: bigint; size: number };
    try {
      r = this.ops.pointerRange(ptr);
    } catch (e) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeStream.${op}: ${name} (0x${ptr.toString(16)}) is not device memory: ${e instanceof Error ? e.message : String(e)}`,
        { cause: e },
      );
    }
    const end = r.base + BigInt(r.size);
    if (ptr + BigInt(bytes) > end)
      throw new TrellisError(
        'OUT_OF_RANGE',
        `MoeStream.${op}: ${name} needs ${bytes} bytes from 0x${ptr.toString(16)}, but its allocation ends ${end - ptr} bytes after it`,
      );
  }

  private alive(op: string): void {
    if (this.closed) throw new TrellisError('CLOSED', `MoeStream.${op}: the instance was closed`);
  }

  private alloc(bytes: number): bigint {
    const p = this.ops.alloc(this.device, Math.max(64, bytes));
    this.owned.push(p);
    return p;
  }

  private unmap(): void {
    for (const p of this.opened.values()) this.ops.ipcClose?.(this.device, p);
    this.opened.clear();
  }

  private free(): void {
    this.unmap();
    for (const p of this.owned.splice(0)) this.ops.free(this.device, p);
  }
}
