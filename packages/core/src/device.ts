// The device-memory interface a CUDA implementation (`@trellis/cuda`) provides to engines:
// staging and the same-host lane (GpuMemoryOps). Interfaces only; nothing here touches a GPU.
// Systems own theirs: MoeDeviceOps lives in @trellis/moe, WeightSyncDeviceOps in @trellis/weightsync.

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
