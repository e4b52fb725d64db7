// The device-memory interfaces a CUDA implementation (`@trellis/cuda`) provides to engines and
// systems: staging and the same-host lane (GpuMemoryOps), MoE's kernels (MoeDeviceOps) and
// weightsync's (WeightSyncDeviceOps). Interfaces only; nothing here touches a GPU.

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
