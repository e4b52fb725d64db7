import type { NetAddr } from './addr.js';
import type { MrDesc } from './desc.js';

/** Host memory the caller already owns. Kept alive by the engine until unregistered. */
export type HostMemory = ArrayBuffer | SharedArrayBuffer | ArrayBufferView;

/** A CUDA device region (see the GPU memory guide; backends without GPU support reject it with `UNSUPPORTED`). */
export interface CudaMemory {
  cuda: { ptr: bigint; length: number; device: number };
}

/**
 * What to register: a byte count (the engine allocates page-aligned host memory, exposed as
 * {@link MrHandle.buffer}), existing host memory, or a CUDA region.
 */
export type MemorySource = number | HostMemory | CudaMemory;

/**
 * The device-memory operations an engine needs to stage CUDA regions through pinned host memory,
 * where its NICs cannot reach GPU memory directly. `cudaMemoryOps()` of `@trellis/cuda`
 * implements them with the CUDA runtime; pass it as the backend's `gpu` option.
 */
export interface GpuMemoryOps {
  /** Page-locked host memory of `bytes` (zeroed), released when the ArrayBuffer is collected. */
  allocHost(bytes: number): ArrayBuffer;
  /**
   * Copy byte ranges between device memory at `devicePtr` (on `device`) and `host` (memory from
   * {@link GpuMemoryOps.allocHost}). `ranges` holds triples (device offset, host offset, bytes).
   * Resolves once every byte has arrived; rejects with the CUDA error.
   */
  copy(
    dir: 'toHost' | 'toDevice',
    device: number,
    devicePtr: bigint,
    host: ArrayBuffer,
    ranges: Float64Array,
  ): Promise<void>;
  /**
   * The device allocation that holds `ptr` (its device, base address and size); throws when `ptr`
   * is not CUDA device memory. Optional: with it, CUDA regions are checked before they register.
   */
  pointerRange?(ptr: bigint): { device: number; base: bigint; size: number };
  /**
   * The same-host lane (optional: without these and the three below, GPU memory of peers on one
   * host moves through the NICs). `ipcExport` gives the 64-byte CUDA IPC handle of the allocation whose base is
   * `base`; `ipcOpen` maps a peer's handle into this process (its base here), `ipcClose` unmaps.
   */
  ipcExport?(device: number, base: bigint): Uint8Array;
  ipcOpen?(device: number, handle: Uint8Array): bigint;
  ipcClose?(device: number, mapped: bigint): void;
  /**
   * A signal word for {@link GpuMemoryOps.enqueueDeviceCopy}: 8 bytes of page-locked host memory
   * that a GPU stream can store to, zeroed. The engine's worker polls it.
   */
  allocSignal?(): GpuSignal;
  /**
   * Enqueue device-to-device copies on the lane stream of `device` (one stream per device, in
   * order) and, after them, store `value` into `signal`'s word: once the word reads `value`, every
   * byte of these copies is in place. `triples` holds (destination address, source address,
   * bytes), each address this process's device memory or a peer's mapped by `ipcOpen`. Returns
   * at once; throws when the copies cannot be enqueued.
   */
  enqueueDeviceCopy?(device: number, triples: BigUint64Array, signal: GpuSignal, value: bigint): void;
  /** Resolve once the lane stream of `device` has drained; reject with its CUDA error. */
  drainDeviceCopies?(device: number): Promise<void>;
}

/** A 64-bit word a GPU stream stores to and the engine's worker reads (see {@link GpuMemoryOps.allocSignal}). */
export interface GpuSignal {
  /** The word as this process's JavaScript and the engine's worker read it. */
  readonly word: BigUint64Array;
  /** Its address for the GPU. */
  readonly devicePtr: bigint;
}

/**
 * The device work of a `MoeAllToAll` (`@trellis/moe`) on CUDA memory. `cudaMoeOps()` of `@trellis/cuda`
 * implements it; every call completes its work before it returns.
 */
export interface MoeDeviceOps {
  alloc(device: number, bytes: number): bigint;
  free(device: number, ptr: bigint): void;
  upload(device: number, dst: bigint, src: Uint8Array): void;
  download(device: number, dst: Uint8Array, src: bigint): void;
  /** CUDA IPC: this process's handle for an allocation (hex), another's opened here, closed. Optional: without them every peer goes through the engine. */
  ipcExport?(device: number, ptr: bigint): string;
  ipcImport?(device: number, handle: string): bigint;
  ipcClose?(device: number, ptr: bigint): void;
  /** Row `i`: `bytes` bytes from `src + srcOffsets[i]` to `dst + dstOffsets[i]`. */
  copyRows(
    device: number,
    dst: bigint,
    dstOffsets: Float64Array,
    src: bigint,
    srcOffsets: Float64Array,
    bytes: number,
  ): void;
  /**
   * Token `t`'s output = Σ_k fp32(w[t,k] × row(t,k)) accumulated in fp32 in k order, where row(t,k)
   * is `hidden` elements of `rowDtype` at `rows + rowAt[t·topk + k]` (skipped when negative); written
   * at `out` as `outDtype` (bf16 rounded to nearest even).
   */
  combine(
    device: number,
    rows: bigint,
    rowAt: Float64Array,
    weights: Float32Array,
    topk: number,
    hidden: number,
    rowDtype: 'bf16' | 'fp32',
    out: bigint,
    outDtype: 'bf16' | 'fp32',
  ): void;
  /**
   * The kernels of a GPU instance driven by the native proxy (optional: without them such an
   * instance is refused). Its region and staging are page-locked host memory mapped into the
   * device, so the kernels store packed rows where the NIC reads them and read rows where it wrote.
   */
  proxy?: MoeProxyKernels;
  /**
   * The kernels of a GPU-driven NVLink instance (optional): every rank's region mapped through
   * CUDA IPC, kernels store rows into peers' regions and raise flags there; no engine per round.
   */
  direct?: MoeDirectKernels;
}

/**
 * What every MoE count-and-pack kernel call takes: the round's routing (host `ids`, copied to
 * `idsDev` in the pack's stream), the tokens and scales, the instance's scratch, the row layout,
 * and `rowAt` (where each slot's combine row will come back).
 */
export interface MoePackArgs {
  ids: Int32Array;
  idsDev: bigint;
  topk: number;
  experts: number;
  local: number;
  scratch: bigint;
  tokens: bigint;
  tokenBytes: number;
  scales: bigint;
  scaleBytes: number;
  rowStride: number;
  combineOff: number;
  outRow: number;
  rowAt: bigint;
}

/** The device work of a GPU-driven NVLink {@link MoeDeviceOps} instance (all ranks on one node). */
export interface MoeDirectKernels {
  /**
   * Dispatch-send, queued (returns at once): count and pack as {@link MoeProxyKernels.dispatchPack},
   * but every row is stored into its receiver's region (`peers`: a device array of W region bases)
   * at its private slot for rank `me`; then this rank's counts go into every peer's routes slot and
   * its flag in every peer's flag row (at `flagsOff`) is raised to `round`.
   */
  dispatch(
    device: number,
    a: MoePackArgs & {
      counts: bigint;
      peers: bigint;
      W: number;
      me: number;
      privOff: number;
      P: number;
      routesOff: number;
      flagsOff: number;
      round: bigint;
      /** Hybrid: rows for ranks whose `peers` entry is 0 go here (packed stream order, at `rowsBase`) for the proxy. */
      staging?: bigint;
      rowsBase?: number;
      /** Hybrid: per rank, the base `rowAt` is relative to (absolute addresses; rows return to two regions). */
      retBase?: bigint;
      /** Hybrid: the proxy's go word, raised after the signal. */
      go?: bigint;
    },
  ): void;
  /**
   * Wait on the device for every flag of this rank's row at `flagsOff` to reach `round` (a kernel;
   * `timedOut`, a mapped int, is set if `timeoutMs` passes). With `routes`, returns after the wait
   * with the routes copied out, true unless it timed out; without, the wait is only queued.
   */
  wait(
    device: number,
    a: {
      region: bigint;
      flagsOff: number;
      W: number;
      round: bigint;
      timeoutMs: number;
      timedOut: bigint;
      routes?: Uint8Array;
      routesOff?: number;
      /** The ranks to wait for (bit r); default all. */
      mask?: bigint;
    },
  ): boolean;
  /** Combine-send, queued: rows into each source's combine region through `peers`, then flags raised. */
  combine(
    device: number,
    a: {
      tableDev: bigint;
      W: number;
      L: number;
      rows: number;
      expertOut: bigint;
      outRow: number;
      peers: bigint;
      combineOff: number;
      me: number;
      flagsOff: number;
      round: bigint;
      /** Hybrid: per source, where its rows go (absolute; NVLink peers' combine areas or the proxy's staging). */
      dstBase?: bigint;
      /** Hybrid: the proxy's combine go word. */
      go?: bigint;
    },
  ): void;
}

/** The device work of a GPU {@link MoeDeviceOps} instance driven by the native proxy. */
export interface MoeProxyKernels {
  /** Page-locked host memory mapped into the device (zeroed): `buffer` on the host, `devicePtr` for kernels. */
  allocMapped(bytes: number): { buffer: ArrayBuffer; devicePtr: bigint };
  /** Device scratch bytes {@link MoeProxyKernels.dispatchPack} needs for `pairs` (token, k) slots. */
  packScratchBytes(pairs: number, experts: number): number;
  /**
   * Dispatch-send, queued on the instance's stream (after the legacy default stream), returning
   * at once: count each expert's slots, write the counts at `staging` byte 0, pack every row (header
   * token u32, k u16, local expert u16; token bytes; scales) at `staging + rowsBase + row × rowStride`
   * in (expert, token, k) order, note in `rowAt[p]` where slot p's combine row will come back
   * (`combineOff + row × outRow`, -1 if empty), then raise the go word `go` to `round`.
   */
  dispatchPack(
    device: number,
    a: MoePackArgs & {
      staging: bigint;
      rowsBase: number;
      go: bigint;
      round: bigint;
    },
  ): void;
  /**
   * Dispatch-recv: lay the arrived rows out per local expert from the round's table (int64 on the
   * device at `tableDev`: expert offsets; per source and local expert its destination row, stream
   * position and count; per source its overflow offset and combine span). Returns when done.
   */
  unpack(
    device: number,
    a: {
      table: Float64Array;
      tableDev: bigint;
      W: number;
      L: number;
      rows: number;
      region: bigint;
      privOff: number;
      P: number;
      rowStride: number;
      tokenBytes: number;
      scaleBytes: number;
      expertX: bigint;
      expertScales: bigint;
      /** Per source, the region its rows arrived in (device array of W addresses), when not all in `region`. */
      srcBase?: bigint;
    },
  ): void;
  /** Combine-send, queued, returning at once: every output row to its source's span, then raise `go`. */
  combinePack(
    device: number,
    a: {
      tableDev: bigint;
      W: number;
      L: number;
      rows: number;
      expertOut: bigint;
      outRow: number;
      staging: bigint;
      combineBase: number;
      go: bigint;
      round: bigint;
    },
  ): void;
  /** Combine-recv: the weighted sum (as {@link MoeDeviceOps.combine}) over rows at `region + rowAt[p]`. Returns when done. */
  gather(
    device: number,
    a: {
      region: bigint;
      rowAt: bigint;
      weights: Float32Array;
      weightsDev: bigint;
      topk: number;
      hidden: number;
      rowFp32: boolean;
      out: bigint;
      outFp32: boolean;
    },
  ): void;
}

/**
 * The device work of a trainer whose weights are CUDA memory: staging slots in device memory,
 * packed row copies and the fp8 quantiser kernel. `cudaWeightOps()` of `@trellis/cuda` implements
 * it. Every call completes its work before it returns.
 */
export interface WeightSyncDeviceOps {
  alloc(device: number, bytes: number): bigint;
  free(device: number, ptr: bigint): void;
  /** Copy `rows` rows of `rowBytes` from `src` (rows `srcPitchBytes` apart) to `dst`, packed. */
  copyRows(
    device: number,
    dst: bigint,
    src: bigint,
    srcPitchBytes: number,
    rowBytes: number,
    rows: number,
  ): void;
  /** The fp8 quantiser: bf16 rows (pitch in elements) → e4m3 bytes packed `rows × cols` and fp32 scales. */
  quantizeE4m3(
    device: number,
    src: bigint,
    srcOffset: number,
    srcPitch: number,
    rows: number,
    cols: number,
    block: number,
    dst: bigint,
    scales: bigint,
  ): void;
}

/** Options of {@link TransferEngine.registerMemory}. */
export interface RegisterOptions {
  /** Let peers write into the region (the descriptor then carries rkeys). Default `false`. */
  remote?: boolean;
}

/** A local registration. Pass it as `src` of writes; hand `desc` to peers that write into it. */
export interface MrHandle {
  /** The descriptor to give peers (has no keys unless registered with `{remote: true}`). */
  readonly desc: MrDesc;
  /** Length in bytes. */
  readonly length: number;
  /** The registered host bytes; `undefined` for CUDA regions. */
  readonly buffer: Uint8Array | undefined;
  /**
   * How the NICs reach the memory: `host` memory, GPU memory registered `direct`ly (GPUDirect
   * RDMA), or GPU memory `staged` through a pinned host mirror of the same size.
   */
  readonly path: 'host' | 'direct' | 'staged';
  /** The device memory of a CUDA registration (as passed to `registerMemory`); `undefined` for host memory. */
  readonly cuda: CudaMemory['cuda'] | undefined;
  /** Whether peers may write into it. */
  readonly remote: boolean;
  /** False once unregistered. */
  readonly registered: boolean;
  /** Unregister: waits for this engine's pending operations that use the region to settle first. */
  unregister(): Promise<void>;
}

/** Deadline and cancellation, accepted by every `submit*` and by counter waits. */
export interface OpOptions {
  /** Abort the operation; it then rejects with `ABORTED` once none of its work can touch memory. */
  signal?: AbortSignal;
  /**
   * Reject with `TIMEOUT` after this many milliseconds, posted or not. Work already posted then
   * stays posted (it may still land, and still read the source): the operation's regions stay in
   * use and {@link TransferEngine.quiesce} for its peer waits until the provider lets go of it (at
   * the latest at the engine deadline); reuse the source only after that. `stats().ops.held`.
   */
  timeoutMs?: number;
}

/** One contiguous write, sharded by bytes across NICs. */
export interface SingleWriteRequest extends OpOptions {
  src: MrHandle;
  /** Default 0. */
  srcOffset?: number;
  length: number;
  dst: MrDesc;
  /** Default 0. */
  dstOffset?: number;
  /** Immediate delivered with every shard; counted at the target. */
  imm?: number;
  /** Number of shards (1..lanes). Default: `autoShards(length, lanes)`. */
  shards?: number;
}

/** Many equal pages: page `i` goes from `srcOffset + srcPages[i]*srcStride` to `dstOffset + dstPages[i]*dstStride`. */
export interface PagedWritesRequest extends OpOptions {
  src: MrHandle;
  srcPages: Uint32Array;
  srcStride: number;
  srcOffset?: number;
  dst: MrDesc;
  dstPages: Uint32Array;
  dstStride: number;
  dstOffset?: number;
  pageBytes: number;
  /** Immediate delivered with every page (one work request per page). */
  imm?: number;
}

/** One destination of a scatter. */
export interface ScatterTarget {
  dst: MrDesc;
  srcOffset: number;
  dstOffset: number;
  length: number;
}

/**
 * How a scatter uses NICs:
 * - `'peers'` (default): each target is one work request; targets are spread round-robin over lanes.
 * - `'bytes'`: each target is sharded by bytes across lanes, like a single write.
 * - `{nic}`: every target on that one lane.
 */
export type ScatterRouting = 'peers' | 'bytes' | { nic: number };

/** One source, many destinations. */
export interface ScatterRequest extends OpOptions {
  src: MrHandle;
  targets: readonly ScatterTarget[];
  imm?: number;
  routing?: ScatterRouting;
}

/** A zero-byte write with an immediate to every member of a group. */
export interface BarrierRequest extends OpOptions {
  group: PeerGroup;
  imm: number;
  /**
   * Spread members over lanes (member j on lane j mod lanes) instead of pinning every immediate
   * to lane 0. Counts are the same either way: one arrival per member.
   */
  spread?: boolean;
}

/** An immediate alone. `dst` is the target engine (its address, or any descriptor it owns). */
export interface ImmRequest extends OpOptions {
  dst: NetAddr | MrDesc;
  imm: number;
  /** Lane to use; default 0. */
  nic?: number;
}

/** Any request whose target counts arrivals. Plain data, validated once at the edge. */
export type TransferRequest =
  | ({ kind: 'single' } & SingleWriteRequest)
  | ({ kind: 'paged' } & PagedWritesRequest)
  | ({ kind: 'scatter' } & ScatterRequest)
  | ({ kind: 'barrier' } & BarrierRequest)
  | ({ kind: 'imm' } & ImmRequest);

/** Peers resolved once for scatter and barrier. */
export interface PeerGroup {
  readonly id: number;
  readonly peers: readonly NetAddr[];
}

/** Options of {@link TransferEngine.submitRecvs}. */
export interface RecvOptions {
  /** Largest message each posted buffer accepts (at most the engine's `maxMessageBytes`). */
  maxBytes: number;
  /** Buffers kept posted (at least 1). */
  count: number;
  /** Stop receiving: the returned promise resolves once the buffers are withdrawn. */
  signal?: AbortSignal;
  /** Called for a message that could not be delivered (`MESSAGE_TRUNCATED`). Default: dropped and counted in stats. */
  onError?: (err: import('./errors.js').TrellisError) => void;
}

/** An incoming two-sided message. `data` is the caller's to keep. */
export interface RecvMessage {
  from: NetAddr;
  data: Uint8Array;
}

/** Options of {@link ImmCounter.wait}. */
export interface WaitOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/**
 * Arrivals of one immediate value at this engine, with credit semantics (a counting semaphore):
 * arrivals may come before the wait, `wait(n)` takes n credits when they are there, and rounds
 * overlap without resets. Waiters are served in the order they called `wait`.
 */
export interface ImmCounter {
  readonly imm: number;
  /** Credits available now (arrivals not yet taken by a wait). */
  readonly value: number;
  /** Total arrivals since the engine started. */
  readonly total: number;
  /** Resolve when `n` credits are available, taking them. Rejects `TIMEOUT`, `ABORTED` or `CLOSED` without taking any. */
  wait(n: number, opts?: WaitOptions): Promise<void>;
}

/** A 64-bit word a producer increments; the engine watches it and calls back on every observed change. */
export interface UvmWatcher {
  /** The word, as a one-element view over host memory the engine watches. */
  readonly word: BigUint64Array;
  /** The word's address, for a GPU kernel (host memory mapped into the device on GPU backends); 0n on the loopback fabric. */
  readonly devicePtr: bigint;
  /** Current value. */
  readonly value: bigint;
  /**
   * When the watching thread observed the change last reported to the callback, in ns of the
   * monotonic clock `process.hrtime.bigint()` reads (0n before the first change). Compare it with
   * the producer's own timestamp to measure the notification latency.
   */
  readonly seenAt: bigint;
  /** Host-side producer: add `n` (default 1) atomically and wake the watcher. */
  increment(n?: bigint): bigint;
  /** Stop watching. Idempotent. */
  close(): void;
}

/**
 * Called with each observed value and the previous one. Increments that land between two
 * observations coalesce into one call, so use `value`, not the number of calls.
 */
export type UvmWatcherCallback = (value: bigint, previous: bigint) => void;

/** Per-NIC counters. */
export interface NicStats {
  index: number;
  /** Provider behind the NIC, e.g. `loopback`, `efa`, `shm`, `tcp;ofi_rxm`. */
  provider: string;
  /** Data path: `host` memory, GPU memory `direct` (GPUDirect), or `staged` through host bounce buffers. */
  path: 'host' | 'direct' | 'staged';
  /** The device behind the NIC where the backend names one, e.g. `mlx5_0 port 1, RoCE v2 GID 3, MTU 4096`. */
  device?: string;
  up: boolean;
  bytesWritten: number;
  writeOps: number;
  bytesSent: number;
  sendOps: number;
  bytesReceived: number;
  recvOps: number;
  immsReceived: number;
  errors: number;
}

/** Engine-wide counters from {@link TransferEngine.stats}. */
export interface EngineStats {
  kind: string;
  nics: NicStats[];
  ops: OpStats;
  regions: number;
  registeredBytes: number;
  recvDropped: number;
  /** Peers this engine has addressed, and what it concluded about their liveness. */
  peers: PeerStats;
  /** GPU memory: regions by path, and the bytes the staged path copied each way. */
  gpu: GpuStats;
  /** NIC failover (all zero when the engine runs without `failover`). */
  failover: FailoverStats;
  /** The transport library under a native engine (absent for the loopback fabric). */
  library?: LibraryInfo;
  /** Host memory over the same-host lane (native engines; absent for the loopback fabric). */
  hostLane?: HostLaneStats;
}

/** Operation counters of {@link EngineStats}. */
export interface OpStats {
  submitted: number;
  completed: number;
  failed: number;
  /** Submitted and not yet settled. */
  inFlight: number;
  /**
   * Operations that settled at their own deadline (`timeoutMs`) with work requests still posted.
   * Their late completions are swallowed: the promise has settled `TIMEOUT`.
   */
  settledPosted: number;
  /**
   * Of those, the ones whose posted work the provider has not let go of yet (at most until the
   * engine deadline `opTimeoutMs`): their regions stay in use (`unregister` waits) and their peers'
   * in-flight counts keep them (`quiesce` waits), since the source may still be read.
   */
  held: number;
}

/** Peer liveness counters of {@link EngineStats}. */
export interface PeerStats {
  /** Peer addresses (engine generations) this engine has addressed. */
  known: number;
  /** Of those, the ones concluded lost (`onPeerLost` was called for each). */
  lost: number;
  /**
   * Probes sent after a provider reported a connection error as a possible death, and how many
   * were answered: each answered probe turned that error into `CONNECTION_RESET` instead of
   * `PEER_LOST` (the peer lives; only the connection was reset).
   */
  probes: number;
  probesAnswered: number;
}

/**
 * The host half of the same-host lane: writes between host regions of engines on one host copied
 * by the writer's copy thread into the target's shared-memory region, not through the provider.
 */
export interface HostLaneStats {
  /** Writes (and their bytes) this engine copied over the lane. */
  writes: number;
  bytes: number;
  /** Writes to a same-host shared region that went through the provider (mapping it failed). */
  fallbacks: number;
  /** Remote host regions of this engine in shared-memory objects (writers on this host map them). */
  sharedRegions: number;
  /** Remote host regions that fell back to plain memory because /dev/shm refused the object. */
  sharedAllocFailures: number;
}

/** The transport library a native engine runs on, as loaded at run time. */
export interface LibraryInfo {
  /** `libfabric` or `libibverbs`. */
  name: string;
  /** Its version as the library reports it (libfabric: `fi_version()`, e.g. `1.17` or `2.6`). */
  version: string;
  /** The file it was loaded from (which install: Debian's, `/opt/amazon/efa`, a 2.x build). */
  path: string;
  /** The engine's provider offers GPU memory (libfabric `FI_HMEM`) on this library. */
  hmem: boolean;
  /** CUDA regions register directly with the NICs (`hmem` and a CUDA driver, not turned off). */
  gpuDirect: boolean;
}

/**
 * NIC failover (engine option `failover`, for engines with more than one NIC). With it, no
 * immediate rides on a write: data goes as plain writes on the NICs that are up, a NIC-attributed
 * failure re-posts the data on the others, and once every byte is delivered the immediates are
 * raised by one control message per target that the target counts once per token — exactly-once
 * even when a failed work request had in fact delivered. See docs/architecture.md.
 */
export interface FailoverOptions {
  /** Errors on one NIC within `windowMs` that mark it down. Default 3. */
  maxErrors?: number;
  /** Default 1000 ms. */
  windowMs?: number;
  /** How long a NIC stays down; its next use after that is the probe. Default 5000 ms. */
  cooldownMs?: number;
  /** Re-posts of one operation (data or its immediates) before it fails. Default 3. */
  maxReposts?: number;
}

/** Counters of NIC failover. */
export interface FailoverStats {
  /** Data or control messages posted again after a NIC-attributed failure. */
  reposts: number;
  /** Times a NIC was marked down. */
  nicsMarkedDown: number;
  /** Immediates this engine raised at targets through control messages. */
  controlImms: number;
  /** Immediates a target received again under a token it had counted (dropped, not counted). */
  duplicateImms: number;
}

/** GPU memory counters of an engine (all zero on an engine without GPU regions). */
export interface GpuStats {
  /** CUDA regions registered directly (GPUDirect RDMA). */
  directRegions: number;
  /** CUDA regions staged through pinned host mirrors. */
  stagedRegions: number;
  /** Bytes copied device → host before being written (staged sources). */
  stagedToHostBytes: number;
  /** Bytes copied host → device after arriving (staged targets). */
  stagedToDeviceBytes: number;
  /** Staged writes this engine completed as the writer. */
  stagedWrites: number;
  /** Writes this engine made through the same-host lane (CUDA IPC copies, no NIC). */
  laneWrites: number;
  /** Bytes those writes copied. */
  laneBytes: number;
  /** Writes that could have taken the lane but went through the NICs (a peer's allocation could not be mapped). */
  laneFallbacks: number;
}

/** Static limits of an engine. */
export interface EngineLimits {
  /** Largest two-sided message. */
  maxMessageBytes: number;
  /** Largest region `registerMemory` accepts. */
  maxRegionBytes: number;
  /**
   * Largest region the provider registers at once. A host region above it is registered
   * transparently in parts of this size: its descriptor lists every part's keys (`MrDesc.parts`),
   * and writes to or from it are cut at part boundaries, their immediates raised once the data is
   * delivered (one per original work request, so receivers count as always). Default: no limit.
   */
  maxMrBytes: number;
}

/**
 * The transfer contract every backend implements (DESIGN §1). Reliable and unordered: every
 * accepted operation is delivered exactly once or fails; no order holds between operations nor
 * between the shards of one. When an immediate is counted at the target, the bytes of that work
 * request are visible there — nothing more is implied.
 *
 * Every `submit*` returns a promise that settles exactly once: resolved when the source may be
 * reused and delivery is certain unless the peer fails; rejected with a `TrellisError`. Bad input
 * is rejected before anything is posted.
 */
export interface TransferEngine {
  /** Backend kind: `loopback`, `efa`, `verbs`. */
  readonly kind: string;
  /** This engine's address, to hand to peers. */
  readonly address: NetAddr;
  /** Number of NICs (1..4). */
  readonly nics: number;
  readonly limits: EngineLimits;
  /** True after {@link TransferEngine.close} began. */
  readonly closed: boolean;

  /** Register memory for transfers. */
  registerMemory(src: MemorySource, opts?: RegisterOptions): Promise<MrHandle>;

  /** Send a small message (at most `limits.maxMessageBytes`). Resolves once delivered into a posted receive. */
  submitSend(peer: NetAddr, data: Uint8Array, opts?: OpOptions): Promise<void>;
  /**
   * Keep `count` receive buffers of `maxBytes` posted and call `onRecv` for each message.
   * Resolves when `signal` aborts or the engine closes.
   */
  submitRecvs(opts: RecvOptions, onRecv: (msg: RecvMessage) => void): Promise<void>;

  submitSingleWrite(req: SingleWriteRequest): Promise<void>;
  submitPagedWrites(req: PagedWritesRequest): Promise<void>;
  submitScatter(req: ScatterRequest): Promise<void>;
  submitBarrier(req: BarrierRequest): Promise<void>;
  submitImm(req: ImmRequest): Promise<void>;

  /** The credit counter for `imm` (created on first use; the same object every time). */
  immCounter(imm: number): ImmCounter;
  /**
   * How many arrivals `request` produces at its target. For a scatter or barrier over several
   * peers pass `target` to count that peer's arrivals. Receivers call it on a request of the same
   * shape (any `src`/`dst` with the right NIC counts work; see {@link countImms}) so both agree.
   */
  expectedImms(request: TransferRequest, target?: NetAddr): number;
  /** Resolve peers once, for scatter and barrier. */
  addPeerGroup(peers: readonly NetAddr[]): PeerGroup;
  /**
   * Call `cb` once for each peer the engine concludes is lost — an operation to it failed with
   * `PEER_LOST`, or another generation of its endpoint was reached (its process restarted). From
   * then on operations to that address are refused with `PEER_LOST` before anything is posted; the
   * restarted peer is reached at its new address. Returns a function removing the listener.
   */
  onPeerLost(cb: (peer: NetAddr, reason: import('./errors.js').TrellisError) => void): () => void;
  /**
   * Resolve once no operation of this engine to or with `peer` is in flight (at once if none),
   * counting operations that settled `TIMEOUT` with work still posted until the provider lets go
   * of it: after it, nothing of this engine reads a source on that peer's behalf.
   */
  quiesce(peer: NetAddr, opts?: WaitOptions): Promise<void>;
  /** A host word that a producer increments; `onChange` runs on each observed change. */
  allocUvmWatcher(onChange: UvmWatcherCallback): UvmWatcher;
  /**
   * A triggered operation: validate and prepare `request` now, and post it — from the engine's
   * worker thread, with no JavaScript turn on native backends — the first time `watcher` reads at
   * least `value` (at once if it already does). This is how a GPU kernel, by incrementing a
   * watcher word, starts transfers with the latency of the worker seeing the word. Settles like any
   * `submit*`; aborted or timed out before it fired, it settles with nothing posted. Closing the
   * watcher first rejects it with `ABORTED`. Staged GPU regions cannot be triggered (`UNSUPPORTED`).
   */
  submitOnWatch(watcher: UvmWatcher, value: bigint, request: TransferRequest): Promise<void>;
  /**
   * Open a port for native code of another addon to post writes on this engine — from its own
   * thread, with no JavaScript turn per write — and to count the immediates `opts.count` without
   * JavaScript (see {@link EnginePort} and `trellis/port.h`). Native backends only: absent on the
   * loopback engine and on wrappers such as `withFaults`.
   */
  openPort?(opts: PortOptions): EnginePort;
  stats(): EngineStats;
  /** Reject every pending operation with `CLOSED`, release every region. Idempotent. */
  close(): Promise<void>;
}

/** What {@link TransferEngine.openPort} takes. */
export interface PortOptions {
  /**
   * Immediate values the port counts natively, by slot (index in this list). From now on their
   * arrivals are the port's: they no longer reach {@link TransferEngine.immCounter}. Open the port
   * before any peer can send them. At most 64 values, none counted by another open port.
   */
  count: readonly number[];
}

/**
 * One range pair a port's native consumer may post into: any sub-range of the source range to the
 * same-length sub-range of the destination range, counted by `imm` at the target. Without `src`
 * the window carries immediates alone (`dst` names the peer).
 */
export interface PortWindow {
  /** Source registration (host memory: staged CUDA regions cannot be posted natively). */
  src?: MrHandle;
  srcOffset?: number;
  /** Bytes of the source range; default: to the end of `src`. */
  srcLength?: number;
  dst: MrDesc;
  dstOffset?: number;
  /** Bytes of the destination range; default: to the end of `dst`. */
  dstLength?: number;
  imm?: number;
  /** The NIC pair the window's writes use (default 0; each post is one work request). */
  nic?: number;
}

/** Counters of an {@link EnginePort}. */
export interface PortStats {
  /** Posts accepted from the native consumer. */
  posted: number;
  /** Posts settled (completed or failed); equal to `posted` when nothing is in flight. */
  settled: number;
  failed: number;
  /** Arrivals of each counted immediate, by slot. */
  counts: number[];
}

/**
 * An engine port: the handle a native consumer (a proxy thread of another addon) posts through.
 * Every post settles exactly once into the port's counters; a failure keeps the first error's
 * code and message (`trellis_port_v1.error`). Posts to a peer are not seen by
 * {@link TransferEngine.quiesce} or `onPeerLost`: the consumer watches its own posts.
 */
export interface EnginePort {
  /** Address of the port's `trellis_port_v1` (trellis/port.h), for the native consumer. */
  readonly handle: bigint;
  /** The counted immediate values, by slot. */
  readonly counted: readonly number[];
  /**
   * Replace the windows (validated here, as a write request would be). Change them only while the
   * consumer is not posting.
   */
  setWindows(windows: readonly PortWindow[]): void;
  stats(): PortStats;
  /**
   * Close the port: posts are refused from now on, the counted immediates go back to
   * `immCounter`. The consumer must have stopped using `handle` before this is called.
   */
  close(): void;
  readonly closed: boolean;
}
