// The GPU-driven mode (`gpuDriven`): kernels store rows into same-node peers' regions over NVLink
// and raise flags there (GpuDirect's buffers and CUDA IPC mappings); the engine carries nothing per
// round. Hybrid (nodeSize < worldSize): ranks of other nodes through the native proxy, from and
// into page-locked host memory mapped into the device. Touches its GpuDirect buffers, the hybrid's
// host memory and registrations, and the proxy it owns.
import { type MrHandle, type PortStats, type TransferEngine, TrellisError } from '@trellis/core';
import { GpuDirect } from '../gpu-direct.js';
import { MappedMem } from '../gpu-proxy.js';
import type { Protocol, Round } from '../protocol.js';
import { ProxyDriver } from '../proxy.js';
import type { DispatchInput, DispatchResult, MoeDeviceOptions, MoeMemory } from '../types.js';
import { gatherOnDevice, packArgs, unpackOnDevice } from './kernels.js';
import type { MoeMode, MoePath } from './mode.js';

/** Kernels store over NVLink into peers' regions; hybrid with the proxy across nodes. @internal */
export class GpuDirectMode implements MoeMode {
  readonly descriptor: string;
  paths: ReadonlyArray<MoePath> = [];
  /** connect() ran (GPU-driven instances keep no engine descriptors). */
  connected = false;
  private readonly mem: MappedMem;

  private constructor(
    private readonly engine: TransferEngine,
    private readonly p: Protocol,
    private readonly d: GpuDirect,
  ) {
    this.mem = new MappedMem(d);
    this.descriptor = d.descriptor();
  }

  static async create(engine: TransferEngine, p: Protocol, device: MoeDeviceOptions): Promise<GpuDirectMode> {
    const c = p.c;
    const W = c.worldSize;
    const { routes, priv, combine, size } = p.layout;
    const gd = new GpuDirect(device.ops, device.device, {
      worldSize: W,
      rank: c.rank,
      nodeSize: c.nodeSize,
      numExperts: c.numExperts,
      localExperts: p.localExperts,
      rowsMax: p.rowsMax,
      maxTokens: c.maxTokensPerRank,
      tokenBytes: p.tokenBytes,
      scaleBytes: p.scaleCount * 4,
      hidden: c.hidden,
      rowStride: p.rowStride,
      outRow: p.outRow,
      routes,
      priv,
      combine,
      size,
      timeoutMs: c.timeoutMs,
    });
    if (c.nodeSize < W) {
      // Hybrid: peers of other nodes through the proxy, from and into page-locked host memory
      // mapped into the device (kernels write it; the NIC reads and writes it).
      const k = device.ops.proxy!;
      const regs: MrHandle[] = [];
      try {
        const hostRegion = k.allocMapped(Math.max(64, size));
        const staging = k.allocMapped(p.stagingSize);
        const go = k.allocMapped(64);
        regs.push(await engine.registerMemory(new Uint8Array(hostRegion.buffer), { remote: true }));
        regs.push(await engine.registerMemory(new Uint8Array(staging.buffer)));
        const l = p.proxyLayout(50);
        gd.hybrid = {
          hostRegion,
          staging,
          go,
          regionHandle: regs[0]!,
          stagingHandle: regs[1]!,
          proxy: new ProxyDriver(engine, l, new Uint8Array(go.buffer)),
          rowsBase: l.rowsBase,
          combineBase: l.combineBase,
        };
      } catch (e) {
        for (const r of regs) await r.unregister().catch(() => {});
        gd.free();
        throw e;
      }
    }
    return new GpuDirectMode(engine, p, gd);
  }

  connect(descriptors: readonly string[]): void {
    const c = this.p.c;
    const d = this.d;
    if (d.hybrid && this.connected)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'MoeAllToAll.connect: a hybrid GPU-driven instance connects once (create a new one to change peers)',
      );
    d.connect(descriptors);
    this.paths = descriptors.map((_, r) => (r === c.rank ? 'self' : d.local(r) ? 'nvlink' : 'rdma'));
    this.connected = true;
  }

  checkTokens(tokens: unknown, bytes: number, scales: unknown, scaleCount: number): string | undefined {
    return this.mem.checkTokens(tokens, bytes, scales, scaleCount);
  }

  dispatchSend(x: DispatchInput<MoeMemory>, _r: Round): void {
    const p = this.p;
    const c = p.c;
    const d = this.d;
    p.rounds++;
    d.k.dispatch(d.device, {
      ...packArgs(p, x, d),
      counts: d.counts,
      peers: d.peers,
      W: c.worldSize,
      me: c.rank,
      privOff: p.layout.priv,
      P: c.maxPrivateTokens,
      routesOff: p.layout.routes,
      flagsOff: d.flagsOff,
      round: BigInt(p.rounds),
      ...(d.hybrid
        ? {
            counts: d.hybrid.staging.devicePtr, // staging byte 0: the routes the proxy posts
            staging: d.hybrid.staging.devicePtr,
            rowsBase: d.hybrid.rowsBase,
            retBase: d.retBase,
            go: d.hybrid.go.devicePtr,
          }
        : {}),
    });
    d.hybrid?.proxy.kick();
  }

  async dispatchRecv(r: Round): Promise<DispatchResult<MoeMemory>> {
    const p = this.p;
    const c = p.c;
    const d = this.d;
    if (d.hybrid) await d.hybrid.proxy.wait('dispatch', p.rounds);
    const routes = new Uint8Array(c.worldSize * c.numExperts * 4);
    d.wait('dispatch', p.rounds, routes);
    // Hybrid: the proxy's sources wrote their routes into the host region.
    const far = d.hybrid
      ? new Uint8Array(d.hybrid.hostRegion.buffer, p.layout.routes, routes.length)
      : undefined;
    for (let s = 0; s < c.worldSize; s++) {
      const from = far && !d.local(s) ? far : routes;
      p.takeRoutes(
        s,
        new Int32Array(from.slice(s * c.numExperts * 4, (s + 1) * c.numExperts * 4).buffer),
        'wrote',
      );
    }
    const blocks = p.blocks(r);
    return unpackOnDevice(
      p,
      d.shared,
      d.device,
      r,
      d.tableOf(r.counts, blocks.expertOffsets),
      d.table,
      d.region,
      d,
      blocks,
      d.hybrid ? d.srcBase : undefined,
    );
  }

  combineSend(expertOut: Uint8Array | bigint, r: Round): undefined {
    const p = this.p;
    const c = p.c;
    const d = this.d;
    d.k.combine(d.device, {
      tableDev: d.table,
      W: c.worldSize,
      L: p.localExperts,
      rows: r.rows,
      expertOut: expertOut as bigint,
      outRow: p.outRow,
      peers: d.peers,
      combineOff: p.layout.combine,
      me: c.rank,
      flagsOff: d.flagsOff + c.worldSize * 8,
      round: BigInt(p.rounds),
      ...(d.hybrid ? { dstBase: d.dstBase, go: d.hybrid.go.devicePtr + 8n } : {}),
    });
    d.hybrid?.proxy.kick();
  }

  async combineRecv(
    r: Round,
    accumulate: 'out' | 'fp32',
    sends: () => Promise<void> | undefined,
  ): Promise<Uint8Array | Float32Array | bigint> {
    const p = this.p;
    const d = this.d;
    await sends();
    if (d.hybrid) await d.hybrid.proxy.wait('combine', p.rounds);
    d.wait('combine', p.rounds);
    // Hybrid: rows came back into two regions; rowAt holds absolute addresses.
    gatherOnDevice(p, d.shared, d.device, d.hybrid ? 0n : d.region, d, r, accumulate);
    d.checkWait('combine', p.rounds);
    return d.out;
  }

  proxyStats(): PortStats | undefined {
    return this.d.hybrid?.proxy.stats();
  }

  async close(): Promise<void> {
    const h = this.d.hybrid;
    if (h) {
      h.proxy.close();
      if (!this.engine.closed) {
        await h.regionHandle.unregister().catch(() => {});
        await h.stagingHandle.unregister().catch(() => {});
      }
    }
    this.mem.free();
  }
}
