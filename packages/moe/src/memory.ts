// Where MoeAllToAll's bytes live. The protocol (routes, private slots, overflow, combine order) is
// one; its data movement runs on host memory (HostMem: the CPU reference) or on a GPU (DeviceMem:
// row-copy and combine kernels on CUDA memory). Both take the same row lists, so the GPU path is
// checked against the host path byte for byte.
import type { MrHandle } from '@trellis/core';
import { TrellisError } from '@trellis/core';
import type { MoeDeviceOps } from './device.js';

/** A buffer of the instance, or memory the caller passed in (host bytes or a device pointer). */
export type Ref = 'region' | 'staging' | Uint8Array | bigint;

/** @internal */
export interface Mem {
  bind(region: MrHandle, staging: MrHandle): void;
  /** The region's CUDA IPC handle, where peers of the node may store into it directly. */
  exportRegion(): string | undefined;
  /** Open a same-node peer's region from its handle; false where this memory cannot. */
  connectPeer(rank: number, ipc: string): boolean;
  /** Close what connectPeer opened. */
  disconnect(): void;
  /** Copy staging bytes straight into a connected peer's region (done on return). */
  toPeer(rank: number, dstOff: number, srcOff: number, len: number): void;
  checkTokens(tokens: unknown, bytes: number, scales: unknown, scaleCount: number): string | undefined;
  input(x: Uint8Array | Float32Array | bigint): Ref;
  put(dst: 'region' | 'staging', off: number, bytes: Uint8Array): void;
  get(src: 'region', off: number, len: number): Uint8Array;
  copy(
    dst: 'region' | 'staging',
    dstOff: number,
    src: 'region' | 'staging',
    srcOff: number,
    len: number,
  ): void;
  rows(dst: Ref, dstOffs: Float64Array, src: Ref, srcOffs: Float64Array, bytes: number): void;
  /** Rows from host bytes. */
  putRows(dst: 'staging', dstOffs: Float64Array, src: Uint8Array, srcOffs: Float64Array, bytes: number): void;
  output(name: 'expertX' | 'expertScales', bytes: number): Ref;
  result(r: Ref): Uint8Array | bigint;
  asScales(r: Ref): Float32Array | bigint;
  combine(
    rowAt: Float64Array,
    weights: Float32Array,
    numTokens: number,
    topk: number,
    hidden: number,
    rowDtype: 'bf16' | 'fp32',
    accumulate: 'out' | 'fp32',
  ): Uint8Array | Float32Array | bigint;
  free(): void;
}

/** The CPU reference's memory: host buffers, byte copies, the fp32 weighted sum in JS. @internal */
export class HostMem implements Mem {
  private region!: Uint8Array;
  private staging!: Uint8Array;

  bind(region: MrHandle, staging: MrHandle): void {
    this.region = region.buffer!;
    this.staging = staging.buffer!;
  }
  exportRegion(): undefined {
    return undefined;
  }
  connectPeer(): boolean {
    return false;
  }
  disconnect(): void {}
  toPeer(): void {
    throw new TrellisError('INTERNAL', 'MoeAllToAll: no NVLink path in host memory');
  }
  checkTokens(tokens: unknown, _bytes: number, scales: unknown, _scaleCount?: number): string | undefined {
    if (!(tokens instanceof Uint8Array)) return 'tokens must be a Uint8Array (host memory)';
    if (scales !== undefined && !(scales instanceof Float32Array)) return 'scales must be a Float32Array';
    return undefined;
  }
  input(x: Uint8Array | Float32Array | bigint): Ref {
    if (x instanceof Uint8Array) return x;
    if (x instanceof Float32Array) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
    throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll: a device pointer given to a host instance');
  }
  private buf(r: Ref): Uint8Array {
    if (r === 'region') return this.region;
    if (r === 'staging') return this.staging;
    return r as Uint8Array;
  }
  put(dst: 'region' | 'staging', off: number, bytes: Uint8Array): void {
    this.buf(dst).set(bytes, off);
  }
  get(src: 'region', off: number, len: number): Uint8Array {
    return this.buf(src).slice(off, off + len);
  }
  copy(
    dst: 'region' | 'staging',
    dstOff: number,
    src: 'region' | 'staging',
    srcOff: number,
    len: number,
  ): void {
    this.buf(dst).set(this.buf(src).subarray(srcOff, srcOff + len), dstOff);
  }
  rows(dst: Ref, dstOffs: Float64Array, src: Ref, srcOffs: Float64Array, bytes: number): void {
    const d = this.buf(dst);
    const s = this.buf(src);
    for (let i = 0; i < dstOffs.length; i++) d.set(s.subarray(srcOffs[i]!, srcOffs[i]! + bytes), dstOffs[i]!);
  }
  putRows(
    dst: 'staging',
    dstOffs: Float64Array,
    src: Uint8Array,
    srcOffs: Float64Array,
    bytes: number,
  ): void {
    this.rows(dst, dstOffs, src, srcOffs, bytes);
  }
  output(_name: 'expertX' | 'expertScales', bytes: number): Ref {
    return new Uint8Array(bytes);
  }
  result(r: Ref): Uint8Array {
    return r as Uint8Array;
  }
  asScales(r: Ref): Float32Array {
    const b = r as Uint8Array;
    return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  }
  combine(
    rowAt: Float64Array,
    weights: Float32Array,
    numTokens: number,
    topk: number,
    hidden: number,
    rowDtype: 'bf16' | 'fp32',
    accumulate: 'out' | 'fp32',
  ): Uint8Array | Float32Array {
    const acc = new Float32Array(numTokens * hidden);
    const dv = new DataView(this.region.buffer, this.region.byteOffset);
    for (let t = 0; t < numTokens; t++)
      for (let k = 0; k < topk; k++) {
        const at = rowAt[t * topk + k]!;
        if (at < 0) continue;
        const w = weights[t * topk + k]!;
        for (let h = 0; h < hidden; h++) {
          const v =
            rowDtype === 'fp32' ? dv.getFloat32(at + h * 4, true) : bf16(dv.getUint16(at + h * 2, true));
          acc[t * hidden + h] = Math.fround(acc[t * hidden + h]! + Math.fround(w * v));
        }
      }
    if (accumulate === 'fp32') return acc;
    if (rowDtype === 'fp32') return new Uint8Array(acc.buffer);
    const out = new Uint8Array(numTokens * hidden * 2);
    const ov = new DataView(out.buffer);
    for (let i = 0; i < acc.length; i++) ov.setUint16(i * 2, toBf16(acc[i]!), true);
    return out;
  }
  free(): void {}
}

/** CUDA memory: every movement is a row-copy kernel, combine a kernel; routes come back to the host. @internal */
export class DeviceMem implements Mem {
  private region = 0n;
  private staging = 0n;
  private readonly owned: bigint[] = [];
  private readonly outputs: { expertX: bigint; expertScales: bigint; out: bigint; headers: bigint };
  private freed = false;

  constructor(
    private readonly ops: MoeDeviceOps,
    private readonly device: number,
    sizes: { expertX: number; expertScales: number; out: number; headers: number },
  ) {
    this.outputs = {
      expertX: this.alloc(Math.max(64, sizes.expertX)),
      expertScales: sizes.expertScales ? this.alloc(sizes.expertScales) : 0n,
      out: this.alloc(Math.max(64, sizes.out)),
      headers: this.alloc(Math.max(64, sizes.headers)),
    };
  }
  private alloc(bytes: number): bigint {
    const p = this.ops.alloc(this.device, bytes);
    this.owned.push(p);
    return p;
  }
  /** Device memory for a buffer the engine registers. */
  allocRegistered(bytes: number): bigint {
    return this.alloc(bytes);
  }
  bind(region: MrHandle, staging: MrHandle): void {
    this.region = region.cuda!.ptr;
    this.staging = staging.cuda!.ptr;
  }
  private readonly peerRegions = new Map<number, bigint>();
  exportRegion(): string | undefined {
    return this.ops.ipcExport && this.ops.ipcImport
      ? this.ops.ipcExport(this.device, this.region)
      : undefined;
  }
  connectPeer(rank: number, ipc: string): boolean {
    if (!this.ops.ipcImport) return false;
    this.peerRegions.set(rank, this.ops.ipcImport(this.device, ipc));
    return true;
  }
  disconnect(): void {
    for (const p of this.peerRegions.values()) this.ops.ipcClose?.(this.device, p);
    this.peerRegions.clear();
  }
  toPeer(rank: number, dstOff: number, srcOff: number, len: number): void {
    const peer = this.peerRegions.get(rank);
    if (peer === undefined)
      throw new TrellisError('INTERNAL', `MoeAllToAll: rank ${rank} is not connected over NVLink`);
    this.contiguous(peer, dstOff, this.staging, srcOff, len);
  }
  checkTokens(tokens: unknown, _bytes: number, scales: unknown, scaleCount: number): string | undefined {
    if (typeof tokens !== 'bigint') return 'tokens must be a device pointer (bigint) for a GPU instance';
    if (scaleCount && typeof scales !== 'bigint')
      return 'scales must be a device pointer (bigint) for a GPU instance';
    return undefined;
  }
  input(x: Uint8Array | Float32Array | bigint): Ref {
    if (typeof x !== 'bigint')
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll: host memory given to a GPU instance');
    return x;
  }
  private ptr(r: Ref): bigint {
    if (r === 'region') return this.region;
    if (r === 'staging') return this.staging;
    return r as bigint;
  }
  put(dst: 'region' | 'staging', off: number, bytes: Uint8Array): void {
    this.ops.upload(this.device, this.ptr(dst) + BigInt(off), bytes);
  }
  get(src: 'region', off: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.ops.download(this.device, out, this.ptr(src) + BigInt(off));
    return out;
  }
  copy(
    dst: 'region' | 'staging',
    dstOff: number,
    src: 'region' | 'staging',
    srcOff: number,
    len: number,
  ): void {
    this.contiguous(this.ptr(dst), dstOff, this.ptr(src), srcOff, len);
  }
  /** One contiguous move, cut into 64 KiB rows so the kernel spreads it over many blocks. */
  private contiguous(dst: bigint, dstOff: number, src: bigint, srcOff: number, len: number): void {
    if (len <= 0) return;
    const CH = 64 << 10;
    const n = Math.floor(len / CH);
    if (n > 0) {
      const d = new Float64Array(n);
      const s = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        d[i] = dstOff + i * CH;
        s[i] = srcOff + i * CH;
      }
      this.ops.copyRows(this.device, dst, d, src, s, CH);
    }
    const rest = len - n * CH;
    if (rest > 0)
      this.ops.copyRows(
        this.device,
        dst,
        Float64Array.of(dstOff + n * CH),
        src,
        Float64Array.of(srcOff + n * CH),
        rest,
      );
  }
  rows(dst: Ref, dstOffs: Float64Array, src: Ref, srcOffs: Float64Array, bytes: number): void {
    if (dstOffs.length && bytes)
      this.ops.copyRows(this.device, this.ptr(dst), dstOffs, this.ptr(src), srcOffs, bytes);
  }
  putRows(
    dst: 'staging',
    dstOffs: Float64Array,
    src: Uint8Array,
    srcOffs: Float64Array,
    bytes: number,
  ): void {
    if (!dstOffs.length) return;
    // The packed host rows go up once, then a kernel scatters them.
    this.ops.upload(this.device, this.outputs.headers, src);
    this.ops.copyRows(this.device, this.ptr(dst), dstOffs, this.outputs.headers, srcOffs, bytes);
  }

  output(name: 'expertX' | 'expertScales', _bytes: number): Ref {
    return this.outputs[name];
  }
  result(r: Ref): bigint {
    return r as bigint;
  }
  asScales(r: Ref): bigint {
    return r as bigint;
  }
  combine(
    rowAt: Float64Array,
    weights: Float32Array,
    _numTokens: number,
    topk: number,
    hidden: number,
    rowDtype: 'bf16' | 'fp32',
    accumulate: 'out' | 'fp32',
  ): bigint {
    const outDtype = accumulate === 'fp32' || rowDtype === 'fp32' ? 'fp32' : 'bf16';
    if (rowAt.length)
      this.ops.combine(
        this.device,
        this.region,
        rowAt,
        weights,
        topk,
        hidden,
        rowDtype,
        this.outputs.out,
        outDtype,
      );
    return this.outputs.out;
  }
  free(): void {
    if (this.freed) return;
    this.freed = true;
    this.disconnect();
    for (const p of this.owned) this.ops.free(this.device, p);
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
export function bf16(bits: number): number {
  u32[0] = bits << 16;
  return f32[0]!;
}
export function toBf16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7f800000) === 0x7f800000 && b & 0x7fffff) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}
