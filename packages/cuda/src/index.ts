/**
 * `@trellis/cuda` — CUDA memory for Trellis: device allocations fit for GPUDirect RDMA, CUDA IPC
 * export and import (so a PyTorch process can hand its KV cache or weights to a Node agent), and
 * mapped pinned host words that a kernel increments — the memory behind the GPU watcher.
 *
 * The addon loads without a GPU or a driver; {@link cudaInfo} says what is there, and every GPU
 * call fails with a `TrellisError` that says why.
 *
 * @packageDocumentation
 */
import { type GpuMemoryOps, TrellisError } from '@trellis/core';
import { show } from '@trellis/core/kit';
import { addon, call, deviceOf, failed } from './native.js';

/** What this host's CUDA offers. */
export interface CudaInfo {
  /** False when the addon was built without nvcc. */
  built: boolean;
  /** Empty when GPUs are usable; otherwise why not. */
  error: string;
  runtimeVersion?: number;
  driverVersion?: number;
  devices: Array<{
    index: number;
    name: string;
    pciBusId: string;
    memoryBytes: number;
    computeCapability: string;
    gpuDirectRdma: boolean;
    canMapHostMemory: boolean;
    /** Devices this one can access directly (NVLink or PCIe peer-to-peer). */
    peerAccess: number[];
  }>;
}

/** CUDA runtime and driver versions and the visible GPUs; never throws. */
export function cudaInfo(): CudaInfo {
  try {
    return addon().info();
  } catch (e) {
    return {
      built: false,
      error: `@trellis/cuda: the native addon did not load (${e instanceof Error ? e.message : String(e)})`,
      devices: [],
    };
  }
}

/** Why GPU work cannot run here, or `undefined` when a GPU is usable. */
export function noGpuReason(): string | undefined {
  const i = cudaInfo();
  if (i.error) return i.error;
  return i.devices.length ? undefined : 'no GPU visible';
}

/** A device allocation (or an imported one, from another process's IPC handle). */
export class DeviceBuffer {
  private released = false;
  private constructor(
    /** Device pointer, valid in this process. */
    readonly ptr: bigint,
    readonly length: number,
    readonly device: number,
    private readonly imported: boolean,
  ) {}

  /** `cudaMalloc` on `device`: page-aligned memory a NIC can register for GPUDirect RDMA. */
  static alloc(length: number, opts: { device?: number } = {}): DeviceBuffer {
    if (!Number.isSafeInteger(length) || length < 1)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `DeviceBuffer.alloc: length must be a positive integer, got ${length}`,
      );
    const device = deviceOf(opts?.device, 'DeviceBuffer.alloc');
    return new DeviceBuffer(
      call('DeviceBuffer.alloc', () => addon().alloc(device, length)),
      length,
      device,
      false,
    );
  }

  /**
   * Open another process's allocation from its IPC handle (hex, from {@link ipcHandle} or from
   * PyTorch's `untyped_storage()._share_cuda_()`). `offset` selects a tensor inside it.
   */
  static import(handle: string, opts: { length: number; device?: number; offset?: number }): DeviceBuffer {
    if (typeof handle !== 'string' || !/^([0-9a-f]{2})*$/i.test(handle))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `DeviceBuffer.import: the handle must be a string of hex digits (ipcHandle()'s, or PyTorch's _share_cuda_() handle as hex), got ${typeof handle === 'string' ? `'${handle.slice(0, 40)}'` : String(handle)}`,
      );
    if (opts === null || typeof opts !== 'object')
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'DeviceBuffer.import: pass {length} (the bytes to use, from offset), e.g. DeviceBuffer.import(h, { length: 1 << 20 })',
      );
    if (!Number.isSafeInteger(opts.length) || opts.length < 1)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `DeviceBuffer.import: length must be a positive integer, got ${show(opts.length)}`,
      );
    const offset = opts.offset ?? 0;
    if (!Number.isSafeInteger(offset) || offset < 0)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `DeviceBuffer.import: offset must be a non-negative integer, got ${show(opts.offset)}`,
      );
    const device = deviceOf(opts.device, 'DeviceBuffer.import');
    let bytes = Uint8Array.from(Buffer.from(handle, 'hex'));
    // PyTorch >= 2.5 prefixes the handle with a version byte (2) and a type: 'c' for a
    // cudaMalloc'd block (a cudaIpcMemHandle follows), 'e' for expandable segments.
    if (bytes.length === 66 && bytes[0] === 2) {
      if (bytes[1] !== 0x63)
        throw new TrellisError(
          'UNSUPPORTED',
          'DeviceBuffer.import: a PyTorch expandable-segments handle; export from a process with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False',
        );
      bytes = bytes.subarray(2);
    }
    if (bytes.length !== 64)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        bytes.length === 66
          ? `DeviceBuffer.import: a 66-byte handle is PyTorch's only when it starts with version byte 2, this one starts with ${bytes[0]}`
          : `DeviceBuffer.import: a CUDA IPC handle is 64 bytes (128 hex digits; PyTorch's is 66), got ${bytes.length}`,
      );
    const base = call('DeviceBuffer.import', () => addon().ipcImport(device, bytes));
    const b = new DeviceBuffer(base + BigInt(offset), opts.length, device, true);
    b.base = base;
    return b;
  }

  private base: bigint | undefined;

  /** This allocation's CUDA IPC handle, in hex, for another process to {@link import}. */
  ipcHandle(): string {
    this.alive('ipcHandle');
    return Buffer.from(
      call('DeviceBuffer.ipcHandle', () => addon().ipcExport(this.device, this.ptr)),
    ).toString('hex');
  }

  /** Copy `src` into the buffer at `offset`. */
  write(src: Uint8Array, offset = 0): void {
    this.range('write', offset, src.length);
    call('DeviceBuffer.write', () => addon().copy(this.device, this.ptr + BigInt(offset), src, src.length));
  }

  /** Copy `dst.length` bytes from `offset` into `dst`. */
  read(dst: Uint8Array, offset = 0): Uint8Array {
    this.range('read', offset, dst.length);
    call('DeviceBuffer.read', () => addon().copy(this.device, dst, this.ptr + BigInt(offset), dst.length));
    return dst;
  }

  /** Fill with the test pattern `byte i = (i × 2654435761 + seed) >> 13` by a kernel. */
  fillPattern(seed: number): void {
    this.alive('fillPattern');
    call('DeviceBuffer.fillPattern', () => addon().fillPattern(this.device, this.ptr, this.length, seed));
  }

  /**
   * Bytes of `[offset, offset + length)` that differ from the test pattern of `seed` — the pattern
   * as {@link fillPattern} wrote it at index `patternAt` onwards (default: `offset`) — counted by a
   * kernel, so the data is checked where it lives.
   *
   * By default the kernel runs on the legacy default stream, so it is ordered after every copy
   * this process issued there. `{unordered: true}` runs it on a non-blocking stream of its own,
   * ordered after nothing: it sees only bytes that are already visible in device memory — how a
   * consumer's own stream sees them (used to prove that an immediate means "bytes visible").
   */
  countPatternMismatches(
    seed: number,
    offset = 0,
    length = this.length - offset,
    patternAt = offset,
    opts: { unordered?: boolean } = {},
  ): number {
    this.range('countPatternMismatches', offset, length);
    return call('DeviceBuffer.countPatternMismatches', () =>
      addon().countPatternMismatches(
        this.device,
        this.ptr + BigInt(offset),
        length,
        seed,
        patternAt,
        opts.unordered === true,
      ),
    );
  }

  /** Free (or, when imported, close the IPC mapping). Idempotent. */
  free(): void {
    if (this.released) return;
    this.released = true;
    if (this.imported) call('DeviceBuffer.free', () => addon().ipcClose(this.device, this.base!));
    else call('DeviceBuffer.free', () => addon().free(this.device, this.ptr));
  }

  private alive(op: string): void {
    if (this.released) throw new TrellisError('CLOSED', `DeviceBuffer.${op}: the buffer was freed`);
  }
  private range(op: string, offset: number, n: number): void {
    this.alive(op);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + n > this.length)
      throw new TrellisError(
        'OUT_OF_RANGE',
        `DeviceBuffer.${op}: [${offset}, ${offset + n}) is outside the ${this.length}-byte buffer`,
      );
  }
}

/** The byte the test pattern has at index `i` (what {@link DeviceBuffer.fillPattern} writes). */
export function patternByte(i: number, seed: number): number {
  return Number(((BigInt(i) * 2654435761n + BigInt(seed)) & 0xffffffffn) >> 13n) & 0xff;
}

/**
 * Memory for an engine's watcher word that a kernel can increment: pinned host memory mapped into
 * every device (`cudaHostAlloc(Mapped | Portable)`). Pass it as `watcherMemory` to `createEngine`;
 * the watcher's `devicePtr` is then the address a kernel writes.
 */
export function mappedWatcherMemory(): { word: BigUint64Array; devicePtr: bigint } {
  const m = call('mappedWatcherMemory', () => addon().allocMapped(8));
  return { word: new BigUint64Array(m.buffer, 0, 1), devicePtr: m.devicePtr };
}

/**
 * Test and benchmark kernel: each time the host raises `go` (a mapped word) to the next value, add
 * 1 to `word` (a mapped word), `n` times. Returns at once; the kernel runs on the default stream.
 */
export function launchIncrementOnGo(
  device: number,
  wordDevicePtr: bigint,
  goDevicePtr: bigint,
  n: number,
): void {
  const d = deviceOf(device, 'launchIncrementOnGo');
  for (const [k, v] of Object.entries({ wordDevicePtr, goDevicePtr }))
    if (typeof v !== 'bigint' || v <= 0n)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `launchIncrementOnGo: ${k} must be a device pointer (a bigint, e.g. mappedWatcherMemory().devicePtr), got ${show(v)}`,
      );
  if (!Number.isSafeInteger(n) || n < 0)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `launchIncrementOnGo: n must be a non-negative integer, got ${n}`,
    );
  call('launchIncrementOnGo', () => addon().launchIncrementOnGo(d, wordDevicePtr, goDevicePtr, BigInt(n)));
}

/** Wait for the device's work to finish. */
export function synchronize(device = 0): void {
  const d = deviceOf(device, 'synchronize');
  call('synchronize', () => addon().synchronize(d));
}

/**
 * The GPU memory operations an engine needs for CUDA regions, on the CUDA runtime: each region is
 * checked against its allocation (`cuMemGetAddressRange`) before it registers; pinned host mirrors
 * (`cudaHostAlloc`) and copies between them and device memory for the staged path
 * (`cudaMemcpyAsync` on a stream per worker thread, off the JS thread); and the same-host lane —
 * CUDA IPC handles in descriptors, peers' allocations mapped once, device-to-device copies enqueued
 * on one lane stream per device followed by a store into the engine's signal word, which the
 * engine's worker polls before it raises any immediate. Pass as the `gpu` option of a
 * backend's `createEngine`:
 *
 * ```ts
 * const engine = await createEngine({ provider: 'efa', gpu: cudaMemoryOps() });
 * const kv = DeviceBuffer.alloc(1 << 30);
 * const h = await engine.registerMemory({ cuda: { ptr: kv.ptr, length: kv.length, device: 0 } }, { remote: true });
 * ```
 */
export function cudaMemoryOps(): GpuMemoryOps {
  const why = noGpuReason();
  if (why) throw new TrellisError('UNSUPPORTED', `cudaMemoryOps: ${why}`);
  return {
    allocHost: (bytes) => call('cudaMemoryOps.allocHost', () => addon().allocHost(bytes)),
    copy: async (dir, device, devicePtr, host, ranges) => {
      try {
        await addon().copyAsync(dir === 'toDevice', device, devicePtr, host, ranges);
      } catch (e) {
        throw new TrellisError(
          'PROVIDER_ERROR',
          `cudaMemoryOps.copy ${dir}: ${e instanceof Error ? e.message : String(e)}`,
          {
            cause: e,
          },
        );
      }
    },
    pointerRange: (ptr) => call('cudaMemoryOps.pointerRange', () => addon().pointerRange(ptr)),
    ipcExport: (device, base) => call('cudaMemoryOps.ipcExport', () => addon().ipcExport(device, base)),
    ipcOpen: (device, handle) => call('cudaMemoryOps.ipcOpen', () => addon().ipcImport(device, handle)),
    ipcClose: (device, mapped) => call('cudaMemoryOps.ipcClose', () => addon().ipcClose(device, mapped)),
    allocSignal: () => {
      const m = call('cudaMemoryOps.allocSignal', () => addon().allocMapped(8));
      return { word: new BigUint64Array(m.buffer, 0, 1), devicePtr: m.devicePtr };
    },
    enqueueDeviceCopy: (device, triples, signal, value) =>
      call('cudaMemoryOps.enqueueDeviceCopy', () =>
        addon().laneEnqueue(device, triples, signal.devicePtr, value),
      ),
    drainDeviceCopies: async (device) => {
      try {
        await addon().laneDrain(device);
      } catch (e) {
        throw new TrellisError(
          'PROVIDER_ERROR',
          `cudaMemoryOps.drainDeviceCopies: ${e instanceof Error ? e.message : String(e)}`,
          { cause: e },
        );
      }
    },
  };
}

/**
 * Copy device memory to device memory with one `cudaMemcpyAsync` per (destination, source, bytes)
 * triple on a non-blocking stream of a libuv pool thread, resolved once the stream has drained:
 * the copy engines' own rate, for benchmarks to compare against (the engine's same-host lane
 * enqueues its copies on a stream of its own and copies many small equal pieces with one kernel).
 */
export async function memcpyDevice(device: number, triples: BigUint64Array): Promise<void> {
  const d = deviceOf(device, 'memcpyDevice');
  if (!(triples instanceof BigUint64Array) || triples.length % 3 !== 0)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `memcpyDevice: triples must be a BigUint64Array of (destination, source, bytes) triples, got ${
        triples instanceof BigUint64Array ? `${triples.length} values (not a multiple of 3)` : String(triples)
      }`,
    );
  try {
    await addon().copyDevice(d, triples);
  } catch (e) {
    throw failed('memcpyDevice', e);
  }
}

/**
 * The weight-sync fp8 quantiser as a CUDA kernel: `rows` rows of `cols` bf16 values (row `r` at
 * element `srcOffset + r × srcPitch` of `src`) → e4m3 bytes packed `rows × cols` at `dst` and one
 * fp32 scale per `block` elements at `scales`. Byte-for-byte the CPU reference
 * (`quantizeRows` of `@trellis/weightsync`): scale = fp32(amax / 448), round to nearest even,
 * saturate to ±448. Synchronous.
 */
export function quantizeE4m3(
  device: number,
  src: bigint,
  srcOffset: number,
  srcPitch: number,
  rows: number,
  cols: number,
  block: number,
  dst: bigint,
  scales: bigint,
): void {
  for (const [k, v] of Object.entries({ srcOffset, srcPitch, rows, cols, block }))
    if (!Number.isSafeInteger(v) || v < 0)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `quantizeE4m3: ${k} must be a non-negative integer, got ${v}`,
      );
  if (block < 1 || block > 4096 || cols % block !== 0)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `quantizeE4m3: cols ${cols} must be a multiple of block ${block} (1..4096)`,
    );
  const d = deviceOf(device, 'quantizeE4m3');
  if (rows === 0) return;
  call('quantizeE4m3', () =>
    addon().quantizeE4m3(d, src, srcOffset, srcPitch, rows, cols, block, dst, scales),
  );
}

/**
 * What {@link cudaWeightOps} returns: the shape of `WeightSyncDeviceOps` in `@trellis/weightsync`
 * (declared here too, so neither package imports the other; a weightsync test checks they agree).
 */
export interface CudaWeightOps {
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
  /** The fp8 quantiser ({@link quantizeE4m3}). */
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

/**
 * The device work of a weight-sync trainer whose weights are CUDA memory (`device` of
 * `WeightSyncSender.create` in `@trellis/weightsync`): staging allocations, packed row copies
 * (`cudaMemcpy2D`) and the fp8 quantiser kernel ({@link quantizeE4m3}). Each call returns once
 * its work is done.
 */
export function cudaWeightOps(): CudaWeightOps {
  const why = noGpuReason();
  if (why) throw new TrellisError('UNSUPPORTED', `cudaWeightOps: ${why}`);
  return {
    alloc: (device, bytes) => call('cudaWeightOps.alloc', () => addon().alloc(device, bytes)),
    free: (device, ptr) => call('cudaWeightOps.free', () => addon().free(device, ptr)),
    copyRows: (device, dst, src, srcPitchBytes, rowBytes, rows) => {
      if (rows > 0 && rowBytes > 0)
        call('cudaWeightOps.copyRows', () =>
          addon().copyRows(device, dst, src, srcPitchBytes, rowBytes, rows),
        );
    },
    quantizeE4m3,
  };
}

export { type CaptureMode, CudaEvent, CudaGraph, CudaStream, enablePeerAccess } from './stream.js';
