// The device work a weight-sync trainer needs when its weights are CUDA memory. Interface only;
// `cudaWeightOps()` of `@trellis/cuda` satisfies it (structurally: neither package imports the other).

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
