// The device work a GPU MoeAllToAll needs (allocations, copies, CUDA IPC, and the kernels of the
// proxy-driven and GPU-driven modes). Interfaces only; `cudaMoeOps()` implements them with the
// CUDA target of this package's addon, and tests implement them over host memory.

/**
 * The device work of a `MoeAllToAll` on CUDA memory. {@link cudaMoeOps} (this package)
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
  /**
   * The kernels of a stream-ordered instance ({@link MoeStream}, optional): the GPU-driven NVLink
   * kernels queued on the caller's stream, with the round, the receive layout and every count kept
   * on the device.
   */
  stream?: MoeStreamKernels;
  /** The allocation holding a device pointer (to check a caller's buffers before queuing work). */
  pointerRange?(ptr: bigint): { device: number; base: bigint; size: number };
  /** Let `device`'s kernels reach `peer`'s memory in this process (ranks of one process on several GPUs). */
  enablePeerAccess?(device: number, peer: number): void;
}

/** Arguments of a stream-ordered kernel call: device pointers, sizes and offsets by name (see `native/cuda/ops.cc`). */
export type MoeStreamArgs = Readonly<Record<string, bigint | number | boolean>>;

/**
 * The device work of a {@link MoeStream}: each call queues kernels on `a.stream` (a `cudaStream_t`)
 * and returns; nothing is copied between host and device.
 */
export interface MoeStreamKernels {
  /** Bytes of an instance's device state and of its error words (mapped host memory). */
  sizes(): { state: number; err: number };
  /** Multiprocessors of `device` (the row kernels run a fixed grid, a multiple of it). */
  smCount(device: number): number;
  /** Count (ids checked), scan (round counted), pack into receivers' private slots, signal. */
  dispatchSend(device: number, a: MoeStreamArgs): void;
  /** Wait for every rank's dispatch flag, lay out the receive table, unpack into the expert blocks. */
  dispatchRecv(device: number, a: MoeStreamArgs): void;
  /** Every expert-output row into its source's combine region, signal. */
  combineSend(device: number, a: MoeStreamArgs): void;
  /** Wait for every rank's combine flag, then the weighted sum per token. */
  combineRecv(device: number, a: MoeStreamArgs): void;
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
