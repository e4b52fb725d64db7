// A GPU-driven NVLink instance: every rank of the world is on one node; each rank's region is
// mapped into every other through CUDA IPC. Kernels count, pack and store rows straight into the
// receivers' private slots, write their counts into the receivers' routes, and raise a flag there;
// a receiver's kernel waits for every flag, and rows go back the same way. No engine traffic and
// no JavaScript turn between the phases of the ranks: JS launches, and waits once per receive.
import type { MoeDeviceOps, MoeDirectKernels, MoeProxyKernels } from '@trellis/core';
import { TrellisError } from '@trellis/core';
import { GpuProxy } from './gpu-proxy.js';

/** Sizes and offsets a GPU-driven instance allocates from. @internal */
export interface GpuDirectLayout {
  worldSize: number;
  rank: number;
  numExperts: number;
  localExperts: number;
  rowsMax: number;
  maxTokens: number;
  tokenBytes: number;
  scaleBytes: number;
  hidden: number;
  rowStride: number;
  outRow: number;
  routes: number;
  priv: number;
  combine: number;
  /** The region's bytes before the flag rows. */
  size: number;
  timeoutMs: number;
}

/** @internal */
export class GpuDirect {
  readonly k: MoeDirectKernels;
  readonly region: bigint;
  /** Two flag rows of W u64 after the region's data: dispatch, then combine. */
  readonly flagsOff: number;
  readonly ids: bigint;
  readonly rowAt: bigint;
  readonly scratch: bigint;
  readonly table: bigint;
  readonly weights: bigint;
  readonly expertX: bigint;
  readonly expertScales: bigint;
  readonly out: bigint;
  readonly counts: bigint;
  readonly peers: bigint;
  private readonly timedOut: { buffer: ArrayBuffer; devicePtr: bigint };
  private readonly opened = new Map<number, bigint>();
  private readonly owned: bigint[] = [];
  private freed = false;

  constructor(
    private readonly ops: MoeDeviceOps,
    readonly device: number,
    private readonly l: GpuDirectLayout,
  ) {
    if (!ops.direct || !ops.proxy || !ops.ipcExport || !ops.ipcImport)
      throw new TrellisError(
        'UNSUPPORTED',
        'MoeAllToAll.create: gpuDriven needs device ops with direct kernels and CUDA IPC (cudaMoeOps() of @trellis/cuda)',
      );
    this.k = ops.direct;
    const W = l.worldSize;
    this.flagsOff = align(l.size, 64);
    try {
      this.region = this.alloc(this.flagsOff + 2 * W * 8);
      // The flags start at 0 (rounds count from 1); nothing else needs clearing.
      ops.upload(device, this.region + BigInt(this.flagsOff), new Uint8Array(2 * W * 8));
      this.ids = this.alloc(l.rowsMax * 4);
      this.rowAt = this.alloc(l.rowsMax * 8);
      this.scratch = this.alloc(ops.proxy.packScratchBytes(l.rowsMax, l.numExperts));
      this.table = this.alloc((l.localExperts + 3 * W * l.localExperts + 2 * W) * 8);
      this.weights = this.alloc(l.rowsMax * 4);
      this.expertX = this.alloc(W * l.rowsMax * l.tokenBytes);
      this.expertScales = l.scaleBytes ? this.alloc(W * l.rowsMax * l.scaleBytes) : 0n;
      this.out = this.alloc(l.maxTokens * l.hidden * 4);
      this.counts = this.alloc(l.numExperts * 4);
      this.peers = this.alloc(W * 8);
      this.timedOut = ops.proxy.allocMapped(64);
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

  /** The layout and combine kernels, shared with the proxy's GPU mode. */
  get shared(): MoeProxyKernels {
    return this.ops.proxy!;
  }

  /** This rank's descriptor: its region's IPC handle. */
  descriptor(): string {
    return `gpu:${this.ops.ipcExport!(this.device, this.region)}`;
  }

  /** Open every other rank's region and give the kernels the table of bases. */
  connect(descriptors: readonly string[]): void {
    this.disconnect();
    const bases = new BigUint64Array(this.l.worldSize);
    descriptors.forEach((d, r) => {
      if (r === this.l.rank) {
        bases[r] = this.region;
        return;
      }
      if (typeof d !== 'string' || !d.startsWith('gpu:'))
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `MoeAllToAll.connect: rank ${r}'s descriptor is not a GPU-driven instance's (every rank must be created with gpuDriven)`,
        );
      const p = this.ops.ipcImport!(this.device, d.slice(4));
      this.opened.set(r, p);
      bases[r] = p;
    });
    this.ops.upload(this.device, this.peers, new Uint8Array(bases.buffer));
  }

  private disconnect(): void {
    for (const p of this.opened.values()) this.ops.ipcClose?.(this.device, p);
    this.opened.clear();
  }

  /** The receive table with, per source, where this rank's combine rows start in its region. */
  tableOf(counts: readonly Int32Array[], expertOffsets: Int32Array): Float64Array {
    const { worldSize: W, rank: me, localExperts: L } = this.l;
    const t = GpuProxy.table(counts, me, L, expertOffsets, () => 0);
    for (let s = 0; s < W; s++) {
      let before = 0;
      for (let d = 0; d < me; d++) for (let j = 0; j < L; j++) before += counts[s]![d * L + j]!;
      t[L + 3 * W * L + W + s] = before;
    }
    return t;
  }

  /** Wait for a phase's flags; with `routes`, copy the routes out. Throws TIMEOUT. */
  wait(phase: 'dispatch' | 'combine', round: number, routes?: Uint8Array): void {
    const ok = this.k.wait(this.device, {
      region: this.region,
      flagsOff: this.flagsOff + (phase === 'combine' ? this.l.worldSize * 8 : 0),
      W: this.l.worldSize,
      round: BigInt(round),
      timeoutMs: this.l.timeoutMs,
      timedOut: this.timedOut.devicePtr,
      ...(routes ? { routes, routesOff: this.l.routes } : {}),
    });
    if (routes && !ok) throw this.timeout(phase, round);
  }

  /** After a queued wait and the work behind it: whether the wait gave up. */
  checkWait(phase: 'dispatch' | 'combine', round: number): void {
    if (new Int32Array(this.timedOut.buffer, 0, 1)[0]) throw this.timeout(phase, round);
  }

  private timeout(phase: string, round: number): TrellisError {
    return new TrellisError(
      'TIMEOUT',
      `MoeAllToAll (GPU-driven): round ${round}: not every rank's ${phase} arrived within ${this.l.timeoutMs} ms (a rank is missing or behind; the instance cannot continue)`,
    );
  }

  free(): void {
    if (this.freed) return;
    this.freed = true;
    this.disconnect();
    for (const p of this.owned) this.ops.free(this.device, p);
  }
}

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
