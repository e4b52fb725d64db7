// hostGpuOps: GpuMemoryOps over host memory with asynchronous, delayed copies, so the staged GPU
// path is tested where no GPU exists.
import type { GpuMemoryOps, GpuSignal } from '../device.js';
import { TrellisError } from '../errors.js';

/**
 * A stand-in for the CUDA runtime over host memory, for testing the staged GPU path where no GPU
 * exists (CI here). "Device" allocations are host buffers at fake device addresses; copies complete
 * asynchronously after a random delay, so a staged write that raised its immediate before the copy
 * to the device finished would be caught. The real implementation is `cudaMemoryOps()` of
 * `@trellis/cuda`, tested on GPUs with the same cases.
 */
export class HostGpu {
  private readonly mem = new Map<bigint, Uint8Array>();
  private next = 0x7f00_0000_0000n;
  /** Copies started, by direction. */
  readonly copies = { toHost: 0, toDevice: 0 };
  readonly ops: GpuMemoryOps;

  /** Copies the same-host lane made (device → device), and IPC handles opened. */
  readonly lane = { copies: 0, bytes: 0, opened: 0, closed: 0 };

  /** The lane stream: copies run in order after a random delay each; an error sticks, as in CUDA. */
  private stream: Promise<void> = Promise.resolve();
  private streamError: TrellisError | undefined;

  /**
   * `opts.lane`: also offer the same-host lane's operations (IPC handles naming allocations of this
   * HostGpu, opened in the same process; a stream of device → device copies, each after a random
   * delay, then the signal store), so engines of one process sharing this HostGpu move GPU → GPU
   * writes through the lane. A copy touching freed memory breaks the stream for good: later
   * copies never run, their signals never come, and draining rejects (as a CUDA stream would).
   */
  constructor(
    private readonly maxDelayMs = 3,
    opts: { lane?: boolean } = {},
  ) {
    this.ops = {
      allocHost: (bytes) => new ArrayBuffer(bytes),
      copy: (dir, device, devicePtr, host, ranges) => this.copy(dir, device, devicePtr, host, ranges),
      pointerRange: (ptr) => this.range(ptr),
      ...(opts.lane
        ? {
            ipcExport: (device: number, base: bigint) => this.ipcExport(device, base),
            ipcOpen: (device: number, handle: Uint8Array) => this.ipcOpen(device, handle),
            ipcClose: () => {
              this.lane.closed++;
            },
            allocSignal: (): GpuSignal => ({
              word: new BigUint64Array(new SharedArrayBuffer(8)),
              devicePtr: 0n,
            }),
            enqueueDeviceCopy: (device: number, triples: BigUint64Array, signal: GpuSignal, value: bigint) =>
              this.enqueue(device, triples, signal, value),
            drainDeviceCopies: (device: number) => this.drain(device),
          }
        : {}),
    };
  }

  private range(ptr: bigint): { device: number; base: bigint; size: number } {
    for (const [base, m] of this.mem)
      if (ptr >= base && ptr < base + BigInt(m.length)) return { device: 0, base, size: m.length };
    throw new TrellisError('INVALID_ARGUMENT', `HostGpu: 0x${ptr.toString(16)} is in no allocation`);
  }

  private ipcExport(device: number, base: bigint): Uint8Array {
    if (device !== 0 || !this.mem.has(base))
      throw new TrellisError('INVALID_ARGUMENT', `HostGpu: no allocation at 0x${base.toString(16)}`);
    const h = new Uint8Array(64);
    new DataView(h.buffer).setBigUint64(0, base, true);
    h.set([0x48, 0x47, 0x50, 0x55], 8); // "HGPU"
    return h;
  }

  private ipcOpen(device: number, handle: Uint8Array): bigint {
    const base = new DataView(handle.buffer, handle.byteOffset, 64).getBigUint64(0, true);
    if (device !== 0 || handle[8] !== 0x48 || !this.mem.has(base))
      throw new TrellisError(
        'PROVIDER_ERROR',
        'HostGpu: the IPC handle names no live allocation (cudaErrorInvalidValue)',
      );
    this.lane.opened++;
    return base;
  }

  /**
   * Hold the lane stream (a GPU busy with other work): copies enqueued from now on wait until the
   * returned function is called. For deadline and abort tests of lane writes.
   */
  holdLane(): () => void {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    this.stream = this.stream.then(() => gate);
    return release;
  }

  private enqueue(device: number, triples: BigUint64Array, signal: GpuSignal, value: bigint): void {
    if (device !== 0) throw new TrellisError('INTERNAL', `HostGpu: no device ${device}`);
    if (this.streamError) throw this.streamError;
    const work = triples.slice();
    this.stream = this.stream.then(async () => {
      if (this.streamError) return;
      await new Promise((r) => setTimeout(r, Math.random() * this.maxDelayMs));
      try {
        for (let i = 0; i < work.length; i += 3) {
          const n = Number(work[i + 2]!);
          const dst = this.at(work[i]!);
          const src = this.at(work[i + 1]!);
          if (n > dst.length || n > src.length)
            throw new TrellisError('INTERNAL', 'HostGpu: copy out of bounds');
          dst.set(src.subarray(0, n));
          this.lane.copies++;
          this.lane.bytes += n;
        }
      } catch (e) {
        this.streamError = new TrellisError(
          'PROVIDER_ERROR',
          `HostGpu: the lane stream failed (cudaErrorIllegalAddress): ${e instanceof Error ? e.message : String(e)}`,
        );
        return;
      }
      Atomics.store(signal.word, 0, value);
    });
  }

  private async drain(device: number): Promise<void> {
    if (device !== 0) throw new TrellisError('INTERNAL', `HostGpu: no device ${device}`);
    await this.stream;
    if (this.streamError) throw this.streamError;
  }

  /** A "device" allocation of `bytes`; its address for `{cuda: {ptr}}`. */
  alloc(bytes: number): bigint {
    const p = this.next;
    this.next += BigInt(bytes + 4096) & ~4095n;
    this.mem.set(p, new Uint8Array(bytes));
    return p;
  }

  /** The bytes of an allocation (what a kernel would read). */
  bytes(ptr: bigint): Uint8Array {
    const m = this.mem.get(ptr);
    if (!m) throw new Error(`HostGpu: no allocation at 0x${ptr.toString(16)}`);
    return m;
  }

  /** The bytes from `ptr` (anywhere inside an allocation) to the allocation's end. */
  at(ptr: bigint): Uint8Array {
    for (const [base, m] of this.mem)
      if (ptr >= base && ptr < base + BigInt(m.length)) return m.subarray(Number(ptr - base));
    throw new TrellisError('INTERNAL', `HostGpu: 0x${ptr.toString(16)} is in no allocation`);
  }

  /** Release an allocation (later copies to or from it fail, as on a GPU). */
  free(ptr: bigint): void {
    this.mem.delete(ptr);
  }

  private async copy(
    dir: 'toHost' | 'toDevice',
    device: number,
    devicePtr: bigint,
    host: ArrayBuffer,
    ranges: Float64Array,
  ): Promise<void> {
    this.copies[dir]++;
    const dev = this.mem.get(devicePtr);
    if (!dev || device !== 0)
      throw new TrellisError(
        'INTERNAL',
        `HostGpu: no allocation at 0x${devicePtr.toString(16)} on device ${device}`,
      );
    await new Promise((r) => setTimeout(r, Math.random() * this.maxDelayMs));
    const h = new Uint8Array(host);
    for (let i = 0; i < ranges.length; i += 3) {
      const d = ranges[i]!;
      const o = ranges[i + 1]!;
      const n = ranges[i + 2]!;
      if (d + n > dev.length || o + n > h.length)
        throw new TrellisError('INTERNAL', 'HostGpu: copy out of bounds');
      if (dir === 'toHost') h.set(dev.subarray(d, d + n), o);
      else dev.set(h.subarray(o, o + n), d);
    }
  }
}
