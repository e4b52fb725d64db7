// The addon of @trellis/cuda (native/addon.cc): its calls' shapes, loaded on first use, and the
// wrapper that turns a native error into a TrellisError. Internal to the package.
import { TrellisError } from '@trellis/core';
import { loadNativeAddon } from '@trellis/core/kit';
import type { CudaInfo, CudaWeightOps } from './index.js';

/** The addon's calls. @internal */
export interface Addon {
  info(): CudaInfo;
  alloc(device: number, bytes: number): bigint;
  free(device: number, ptr: bigint): void;
  copy(device: number, dst: bigint | Uint8Array, src: bigint | Uint8Array, bytes: number): void;
  ipcExport(device: number, ptr: bigint): Uint8Array;
  ipcImport(device: number, handle: Uint8Array): bigint;
  ipcClose(device: number, ptr: bigint): void;
  allocMapped(bytes: number): { buffer: ArrayBuffer; devicePtr: bigint };
  launchIncrementOnGo(device: number, word: bigint, go: bigint, n: bigint): void;
  fillPattern(device: number, ptr: bigint, bytes: number, seed: number): void;
  synchronize(device: number): void;
  allocHost(bytes: number): ArrayBuffer;
  countPatternMismatches(
    device: number,
    ptr: bigint,
    bytes: number,
    seed: number,
    at: number,
    unordered: boolean,
  ): number;
  copyRows: CudaWeightOps['copyRows'];
  copyAsync(
    toDevice: boolean,
    device: number,
    ptr: bigint,
    host: ArrayBuffer,
    ranges: Float64Array,
  ): Promise<void>;
  quantizeE4m3: CudaWeightOps['quantizeE4m3'];
  copyDevice(device: number, triples: BigUint64Array): Promise<void>;
  laneEnqueue(device: number, triples: BigUint64Array, signal: bigint, value: bigint): void;
  laneDrain(device: number): Promise<void>;
  pointerRange(ptr: bigint): { device: number; base: bigint; size: number };
  streamCreate(device: number, nonBlocking: boolean): bigint;
  streamDestroy(device: number, stream: bigint): void;
  streamSynchronize(device: number, stream: bigint): void;
  streamQuery(device: number, stream: bigint): boolean;
  streamWaitEvent(device: number, stream: bigint, event: bigint): void;
  eventCreate(device: number, timing: boolean, interprocess: boolean): bigint;
  eventDestroy(device: number, event: bigint): void;
  eventRecord(device: number, event: bigint, stream: bigint): void;
  eventSynchronize(device: number, event: bigint): void;
  eventElapsed(device: number, start: bigint, end: bigint): number;
  eventIpcExport(device: number, event: bigint): Uint8Array;
  eventIpcImport(device: number, handle: Uint8Array): bigint;
  captureBegin(device: number, stream: bigint, mode: number): void;
  captureEnd(
    device: number,
    stream: bigint,
    instantiate: boolean,
  ): { exec: bigint; nodes: number } | undefined;
  graphLaunch(device: number, exec: bigint, stream: bigint): void;
  graphDestroy(device: number, exec: bigint): void;
  enablePeerAccess(device: number, peer: number): void;
}

let cached: Addon | undefined;
export function addon(): Addon {
  // $TRELLIS_CUDA_ADDON, else a build from source in build/Release, else the prebuilt binary.
  cached ??= loadNativeAddon<Addon>(import.meta.url, ['info']);
  return cached;
}

export function call<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw failed(what, e);
  }
}

/** `device` (default 0) as a GPU ordinal, or INVALID_ARGUMENT naming `what` — before the driver is asked. */
export function deviceOf(device: unknown, what: string): number {
  const d = device ?? 0;
  if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${what}: device must be a GPU ordinal >= 0, got ${typeof d === 'string' ? `'${d}'` : String(d)}`,
    );
  return d;
}

/** An addon call's failure: `UNSUPPORTED` where CUDA is missing (no GPU, no driver, built without it), else `PROVIDER_ERROR`. */
export function failed(what: string, e: unknown): TrellisError {
  const msg = e instanceof Error ? e.message : String(e);
  return new TrellisError(
    /without CUDA|no usable GPU|InsufficientDriver|NoDevice/.test(msg) ? 'UNSUPPORTED' : 'PROVIDER_ERROR',
    `${what}: ${msg}`,
    { cause: e },
  );
}
