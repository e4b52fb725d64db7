// The buffers of a GPU instance driven by the native proxy (its rounds: modes/gpu-proxy-mode.ts):
// the region and staging are page-locked host memory mapped into the device (registered with the
// engine as host memory), kernels count, pack, lay out and combine on the GPU, and the go words are
// raised by the kernels themselves — the JS thread launches and waits once per phase, the proxy
// thread posts every write. Touches device memory and mapped host memory it allocates.
import { TrellisError } from '@trellis/core';
import type { MoeDeviceOps, MoeProxyKernels } from './device.js';
import { HostMem, type Ref } from './memory.js';

/** Sizes a GPU proxy instance allocates from. @internal */
export interface GpuProxySizes {
  region: number;
  staging: number;
  worldSize: number;
  localExperts: number;
  numExperts: number;
  rowsMax: number;
  maxTokens: number;
  tokenBytes: number;
  scaleBytes: number;
  hidden: number;
}

/** The buffers and kernels of one GPU proxy instance. @internal */
export class GpuProxy {
  readonly k: MoeProxyKernels;
  readonly region: { buffer: ArrayBuffer; devicePtr: bigint };
  readonly staging: { buffer: ArrayBuffer; devicePtr: bigint };
  readonly flags: { buffer: ArrayBuffer; devicePtr: bigint };
  readonly ids: bigint;
  readonly rowAt: bigint;
  readonly scratch: bigint;
  readonly table: bigint;
  readonly weights: bigint;
  readonly expertX: bigint;
  readonly expertScales: bigint;
  readonly out: bigint;
  private readonly owned: bigint[] = [];
  private freed = false;

  constructor(
    private readonly ops: MoeDeviceOps,
    readonly device: number,
    s: GpuProxySizes,
  ) {
    if (!ops.proxy)
      throw new TrellisError(
        'UNSUPPORTED',
        'MoeAllToAll.create: these device ops have no proxy kernels (use cudaMoeOps() of @trellis/moe)',
      );
    this.k = ops.proxy;
    this.region = this.k.allocMapped(Math.max(64, s.region));
    this.staging = this.k.allocMapped(s.staging);
    this.flags = this.k.allocMapped(64);
    try {
      const W = s.worldSize;
      const L = s.localExperts;
      this.ids = this.alloc(s.rowsMax * 4);
      this.rowAt = this.alloc(s.rowsMax * 8);
      this.scratch = this.alloc(this.k.packScratchBytes(s.rowsMax, s.numExperts));
      this.table = this.alloc((L + 3 * W * L + 2 * W) * 8);
      this.weights = this.alloc(s.rowsMax * 4);
      this.expertX = this.alloc(W * s.rowsMax * s.tokenBytes);
      this.expertScales = s.scaleBytes ? this.alloc(W * s.rowsMax * s.scaleBytes) : 0n;
      this.out = this.alloc(s.maxTokens * s.hidden * 4);
    } catch (e) {
      this.free();
      throw e;
    }
  }

  private alloc(bytes: number): bigint {
    const p = this.ops.alloc(this.device, Math.max(64, bytes));
    this.owned.push(p);
    return p;
  }

  /**
   * The receive table of a round (see {@link MoeProxyKernels.unpack}) from every source's counts
   * for this rank's experts.
   */
  static table(
    counts: readonly Int32Array[],
    me: number,
    L: number,
    expertOffsets: Int32Array,
    overflowAt: (s: number) => number,
  ): Float64Array {
    const W = counts.length;
    const t = new Float64Array(L + 3 * W * L + 2 * W);
    t.set(expertOffsets, 0);
    const filled = new Float64Array(L);
    let span = 0;
    for (let s = 0; s < W; s++) {
      let pos = 0;
      for (let j = 0; j < L; j++) {
        const n = counts[s]![me * L + j]!;
        const at = L + 3 * (s * L + j);
        t[at] = expertOffsets[j]! + filled[j]!;
        t[at + 1] = pos;
        t[at + 2] = n;
        filled[j]! += n;
        pos += n;
      }
      t[L + 3 * W * L + s] = overflowAt(s);
      t[L + 3 * W * L + W + s] = span;
      span += pos;
    }
    return t;
  }

  free(): void {
    if (this.freed) return;
    this.freed = true;
    for (const p of this.owned) this.ops.free(this.device, p);
  }
}

/**
 * The memory of a GPU proxy instance: host reads of the mapped region (routes), device pointers
 * for tokens. The packing and layout are the proxy kernels', not this class's. @internal
 */
export class MappedMem extends HostMem {
  constructor(private readonly gp: { free(): void }) {
    super();
  }
  override checkTokens(tokens: unknown, _bytes: number, scales: unknown, scaleCount = 0): string | undefined {
    if (typeof tokens !== 'bigint') return 'tokens must be a device pointer (bigint) for a GPU instance';
    if (scaleCount && typeof scales !== 'bigint')
      return 'scales must be a device pointer (bigint) for a GPU instance';
    return undefined;
  }
  override input(x: Uint8Array | Float32Array | bigint): Ref {
    if (typeof x !== 'bigint')
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll: host memory given to a GPU instance');
    return x;
  }
  override free(): void {
    this.gp.free();
  }
}
