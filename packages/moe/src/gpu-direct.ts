// The buffers of a GPU-driven NVLink instance (its rounds: modes/gpu-direct-mode.ts): every rank
// of the world is on one node; each rank's region is mapped into every other through CUDA IPC.
// Kernels count, pack and store rows straight into the receivers' private slots, write their counts
// into the receivers' routes, and raise a flag there; a receiver's kernel waits for every flag, and
// rows go back the same way. No engine traffic and no JavaScript turn between the phases of the
// ranks: JS launches, and waits once per receive. Touches device memory, IPC mappings, flags.
import type { MrHandle } from '@trellis/core';
import { MrDesc, TrellisError } from '@trellis/core';
import type { MoeDeviceOps, MoeDirectKernels, MoeProxyKernels } from './device.js';
import { GpuProxy } from './gpu-proxy.js';
import { align } from './protocol.js';
import type { ProxyDriver } from './proxy.js';

/** Sizes and offsets a GPU-driven instance allocates from. @internal */
export interface GpuDirectLayout {
  worldSize: number;
  rank: number;
  /** Ranks per node: peers of another node are the proxy's (hybrid) when below worldSize. */
  nodeSize: number;
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

/**
 * The host side of a hybrid instance: the region peers of other nodes write (page-locked, mapped
 * into the device), the staging the proxy posts from, the proxy's go words, and the proxy. @internal
 */
export interface HybridParts {
  hostRegion: { buffer: ArrayBuffer; devicePtr: bigint };
  staging: { buffer: ArrayBuffer; devicePtr: bigint };
  go: { buffer: ArrayBuffer; devicePtr: bigint };
  regionHandle: MrHandle;
  stagingHandle: MrHandle;
  proxy: ProxyDriver;
  rowsBase: number;
  combineBase: number;
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
  /** Per rank (device arrays of W addresses): where its rows arrive here, where rows for it come back here, where this rank's combine rows for it go. */
  readonly srcBase: bigint;
  readonly retBase: bigint;
  readonly dstBase: bigint;
  /** Hybrid: set once its host memory is registered. */
  hybrid: HybridParts | undefined;
  /** Ranks of this node (bit r), this one included: the flags the kernels wait for. */
  readonly localMask: bigint;
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
        'MoeAllToAll.create: gpuDriven needs device ops with direct kernels and CUDA IPC (cudaMoeOps() of @trellis/moe)',
      );
    this.k = ops.direct;
    const W = l.worldSize;
    let mask = 0n;
    for (let r = 0; r < W; r++) if (this.local(r)) mask |= 1n << BigInt(r);
    this.localMask = mask;
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
      this.srcBase = this.alloc(W * 8);
      this.retBase = this.alloc(W * 8);
      this.dstBase = this.alloc(W * 8);
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

  /** Whether rank `r` is on this rank's node. */
  local(r: number): boolean {
    return Math.floor(r / this.l.nodeSize) === Math.floor(this.l.rank / this.l.nodeSize);
  }

  /** This rank's descriptor: its region's IPC handle (hybrid: and its host region's descriptor). */
  descriptor(): string {
    const ipc = this.ops.ipcExport!(this.device, this.region);
    return this.hybrid ? `hyb:${this.hybrid.regionHandle.desc.toString()} ${ipc}` : `gpu:${ipc}`;
  }

  /** Open every other rank's region and give the kernels the table of bases. */
  connect(descriptors: readonly string[]): void {
    const W = this.l.worldSize;
    const h = this.hybrid;
    const prefix = h ? 'hyb:' : 'gpu:';
    const descs: MrDesc[] = [];
    for (const [r, d] of descriptors.entries()) {
      if (typeof d !== 'string' || !d.startsWith(prefix))
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `MoeAllToAll.connect: rank ${r}'s descriptor is not a GPU-driven${h ? ' hybrid' : ''} instance's (every rank must be created alike)`,
        );
      if (h) descs.push(MrDesc.parse(d.slice(4).split(' ')[0]!));
    }
    this.disconnect();
    const bases = new BigUint64Array(W);
    descriptors.forEach((d, r) => {
      if (r === this.l.rank) bases[r] = this.region;
      else if (this.local(r)) {
        const p = this.ops.ipcImport!(this.device, h ? d.slice(4).split(' ')[1]! : d.slice(4));
        this.opened.set(r, p);
        bases[r] = p;
      }
    });
    this.ops.upload(this.device, this.peers, new Uint8Array(bases.buffer));
    if (!h) return;
    // Where each rank's rows arrive here, where rows sent to it come back here, and where this
    // rank's combine rows for it go: NVLink peers' through the device region, the others' through
    // the host region and staging the proxy serves.
    const src = new BigUint64Array(W);
    const ret = new BigUint64Array(W);
    const dst = new BigUint64Array(W);
    const remote = new Uint8Array(W);
    for (let r = 0; r < W; r++) {
      const near = this.local(r);
      src[r] = near ? this.region : h.hostRegion.devicePtr;
      ret[r] = near ? this.region : h.hostRegion.devicePtr;
      dst[r] = near ? bases[r]! + BigInt(this.l.combine) : h.staging.devicePtr + BigInt(h.combineBase);
      remote[r] = near ? 0 : 1;
    }
    this.ops.upload(this.device, this.srcBase, new Uint8Array(src.buffer));
    this.ops.upload(this.device, this.retBase, new Uint8Array(ret.buffer));
    this.ops.upload(this.device, this.dstBase, new Uint8Array(dst.buffer));
    h.proxy.connect(
      descs,
      h.stagingHandle,
      new Uint8Array(h.hostRegion.buffer),
      new Uint8Array(h.staging.buffer),
      remote,
    );
  }

  private disconnect(): void {
    for (const p of this.opened.values()) this.ops.ipcClose?.(this.device, p);
    this.opened.clear();
  }

  /** The receive table with, per source, where this rank's combine rows start in its region. */
  tableOf(counts: readonly Int32Array[], expertOffsets: Int32Array): Float64Array {
    const { worldSize: W, rank: me, localExperts: L } = this.l;
    const t = GpuProxy.table(counts, me, L, expertOffsets, () => 0);
    let remoteSpan = 0;
    for (let s = 0; s < W; s++) {
      if (this.hybrid && !this.local(s)) {
        // The proxy's sources: spans in staging, in rank order, over its sources only.
        t[L + 3 * W * L + W + s] = remoteSpan;
        for (let j = 0; j < L; j++) remoteSpan += counts[s]![me * L + j]!;
        continue;
      }
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
      mask: this.localMask,
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
