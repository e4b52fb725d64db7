// cudaMoeOps(): MoeDeviceOps over the CUDA target of this package's addon (native/cuda/ops.cc and
// kernels.cu). Loads the addon on first use; touches nothing else. Without a GPU or without nvcc at
// build time it throws UNSUPPORTED with the reason.
import { TrellisError } from '@trellis/core';
import { loadNativeAddon } from '@trellis/core/kit';
import type { MoeDeviceOps, MoeDirectKernels, MoeProxyKernels, MoeStreamKernels } from './device.js';

/** The addon's CUDA calls (see native/cuda/ops.cc). */
interface CudaAddon {
  cudaStatus(): { error: string; devices: number };
  alloc(device: number, bytes: number): bigint;
  free(device: number, ptr: bigint): void;
  copy(device: number, dst: bigint | Uint8Array, src: bigint | Uint8Array, bytes: number): void;
  ipcExport(device: number, ptr: bigint): Uint8Array;
  ipcImport(device: number, handle: Uint8Array): bigint;
  ipcClose(device: number, ptr: bigint): void;
  allocMapped(bytes: number): { buffer: ArrayBuffer; devicePtr: bigint };
  copyRowsIndexed: MoeDeviceOps['copyRows'];
  moeCombine(
    device: number,
    rows: bigint,
    rowAt: Float64Array,
    weights: Float32Array,
    topk: number,
    hidden: number,
    rowFp32: boolean,
    out: bigint,
    outFp32: boolean,
  ): void;
  moePackScratch(pairs: number, experts: number): number;
  moeDispatchPack: MoeProxyKernels['dispatchPack'];
  moeUnpack: MoeProxyKernels['unpack'];
  moeCombinePack: MoeProxyKernels['combinePack'];
  moeGather: MoeProxyKernels['gather'];
  moeDispatchDirect: MoeDirectKernels['dispatch'];
  moeWaitFlags: MoeDirectKernels['wait'];
  moeCombineDirect: MoeDirectKernels['combine'];
  moeStreamSizes(): { state: number; err: number };
  moeSmCount(device: number): number;
  moeStDispatchSend: MoeStreamKernels['dispatchSend'];
  moeStDispatchRecv: MoeStreamKernels['dispatchRecv'];
  moeStCombineSend: MoeStreamKernels['combineSend'];
  moeStCombineRecv: MoeStreamKernels['combineRecv'];
  pointerRange(ptr: bigint): { device: number; base: bigint; size: number };
  enablePeerAccess(device: number, peer: number): void;
}

let cached: CudaAddon | undefined;
let loadError: string | undefined;
function addon(): CudaAddon {
  if (!cached) throw new TrellisError('UNSUPPORTED', `cudaMoeOps: ${loadError ?? 'the addon is not loaded'}`);
  return cached;
}

/** Why this package's CUDA target cannot run GPU work here, or `undefined` when it can. */
function noGpuReason(): string | undefined {
  if (!cached && !loadError) {
    try {
      cached = loadNativeAddon<CudaAddon>(import.meta.url, ['cudaStatus', 'MoeProxy']);
    } catch (e) {
      loadError = e instanceof Error ? e.message : String(e);
    }
  }
  if (loadError) return loadError;
  return addon().cudaStatus().error || undefined;
}

function call<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new TrellisError(
      /without CUDA|no usable GPU|InsufficientDriver|NoDevice/.test(msg) ? 'UNSUPPORTED' : 'PROVIDER_ERROR',
      `${what}: ${msg}`,
      { cause: e },
    );
  }
}

/**
 * The device work of an {@link MoeAllToAll} on CUDA memory (`ops` of its `device` option), from the
 * CUDA target of this package's addon: allocations, uploads and downloads, CUDA IPC (the NVLink path between ranks of
 * a node), the row-copy kernel that packs, lays out and gathers rows by index lists (and stores
 * into a peer GPU's region over NVLink), and the combine kernel (fp32 weighted sum in top-k order, the
 * CPU reference's rounding). Each call returns once its work is done.
 */
export function cudaMoeOps(): Required<MoeDeviceOps> {
  const why = noGpuReason();
  if (why) throw new TrellisError('UNSUPPORTED', `cudaMoeOps: ${why}`);
  return {
    alloc: (device, bytes) => call('cudaMoeOps.alloc', () => addon().alloc(device, bytes)),
    free: (device, ptr) => call('cudaMoeOps.free', () => addon().free(device, ptr)),
    upload: (device, dst, src) => {
      if (src.length) call('cudaMoeOps.upload', () => addon().copy(device, dst, src, src.length));
    },
    download: (device, dst, src) => {
      if (dst.length) call('cudaMoeOps.download', () => addon().copy(device, dst, src, dst.length));
    },
    ipcExport: (device, ptr) =>
      Buffer.from(call('cudaMoeOps.ipcExport', () => addon().ipcExport(device, ptr))).toString('hex'),
    ipcImport: (device, handle) =>
      call('cudaMoeOps.ipcImport', () =>
        addon().ipcImport(device, Uint8Array.from(Buffer.from(handle, 'hex'))),
      ),
    ipcClose: (device, ptr) => call('cudaMoeOps.ipcClose', () => addon().ipcClose(device, ptr)),
    copyRows: (device, dst, dstOffsets, src, srcOffsets, bytes) =>
      call('cudaMoeOps.copyRows', () =>
        addon().copyRowsIndexed(device, dst, dstOffsets, src, srcOffsets, bytes),
      ),
    combine: (device, rows, rowAt, weights, topk, hidden, rowDtype, out, outDtype) =>
      call('cudaMoeOps.combine', () =>
        addon().moeCombine(
          device,
          rows,
          rowAt,
          weights,
          topk,
          hidden,
          rowDtype === 'fp32',
          out,
          outDtype === 'fp32',
        ),
      ),
    proxy: {
      allocMapped: (bytes) => call('cudaMoeOps.proxy.allocMapped', () => addon().allocMapped(bytes)),
      packScratchBytes: (pairs, experts) => addon().moePackScratch(pairs, experts),
      dispatchPack: (device, a) =>
        call('cudaMoeOps.proxy.dispatchPack', () => addon().moeDispatchPack(device, a)),
      unpack: (device, a) => call('cudaMoeOps.proxy.unpack', () => addon().moeUnpack(device, a)),
      combinePack: (device, a) =>
        call('cudaMoeOps.proxy.combinePack', () => addon().moeCombinePack(device, a)),
      gather: (device, a) => call('cudaMoeOps.proxy.gather', () => addon().moeGather(device, a)),
    },
    direct: {
      dispatch: (device, a) => call('cudaMoeOps.direct.dispatch', () => addon().moeDispatchDirect(device, a)),
      wait: (device, a) => call('cudaMoeOps.direct.wait', () => addon().moeWaitFlags(device, a)),
      combine: (device, a) => call('cudaMoeOps.direct.combine', () => addon().moeCombineDirect(device, a)),
    },
    stream: {
      sizes: () => addon().moeStreamSizes(),
      smCount: (device) => call('cudaMoeOps.stream.smCount', () => addon().moeSmCount(device)),
      dispatchSend: (device, a) =>
        call('cudaMoeOps.stream.dispatchSend', () => addon().moeStDispatchSend(device, a)),
      dispatchRecv: (device, a) =>
        call('cudaMoeOps.stream.dispatchRecv', () => addon().moeStDispatchRecv(device, a)),
      combineSend: (device, a) =>
        call('cudaMoeOps.stream.combineSend', () => addon().moeStCombineSend(device, a)),
      combineRecv: (device, a) =>
        call('cudaMoeOps.stream.combineRecv', () => addon().moeStCombineRecv(device, a)),
    },
    pointerRange: (ptr) => call('cudaMoeOps.pointerRange', () => addon().pointerRange(ptr)),
    enablePeerAccess: (device, peer) =>
      call('cudaMoeOps.enablePeerAccess', () => addon().enablePeerAccess(device, peer)),
  };
}
