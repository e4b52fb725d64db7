// A GPU instance driven by the native proxy: kernels count, pack, lay out and combine in
// page-locked host memory mapped into the device (GpuProxy's buffers, registered with the engine as
// host memory) and raise the proxy's go words themselves; the proxy thread posts every write and JS
// launches, then waits once per phase. Touches its GpuProxy buffers, their registrations and the
// proxy it owns.
import type { MrHandle, TransferEngine } from '@trellis/core';
import { GpuProxy, MappedMem } from '../gpu-proxy.js';
import type { Protocol, Round } from '../protocol.js';
import { ProxyDriver } from '../proxy.js';
import type { DispatchInput, DispatchResult, MoeDeviceOptions, MoeMemory } from '../types.js';
import { gatherOnDevice, packArgs, unpackOnDevice } from './kernels.js';
import { ProxyRegionMode } from './region-mode.js';

/** CUDA tokens, kernels on mapped host memory, the native proxy posts. @internal */
export class GpuProxyMode extends ProxyRegionMode {
  // This rank's own counts come from its kernel, through the region too.
  protected override readonly ownRoutesInRegion = true;

  private constructor(
    engine: TransferEngine,
    p: Protocol,
    region: MrHandle,
    staging: MrHandle,
    proxy: ProxyDriver,
    private readonly g: GpuProxy,
  ) {
    super(engine, p, region, staging, new MappedMem(g), proxy);
  }

  static async create(engine: TransferEngine, p: Protocol, device: MoeDeviceOptions): Promise<GpuProxyMode> {
    const c = p.c;
    const gp = new GpuProxy(device.ops, device.device, {
      region: p.layout.size,
      staging: p.stagingSize,
      worldSize: c.worldSize,
      localExperts: p.localExperts,
      numExperts: c.numExperts,
      rowsMax: p.rowsMax,
      maxTokens: c.maxTokensPerRank,
      tokenBytes: p.tokenBytes,
      scaleBytes: p.scaleCount * 4,
      hidden: c.hidden,
    });
    const regs: MrHandle[] = [];
    try {
      regs.push(await engine.registerMemory(new Uint8Array(gp.region.buffer), { remote: true }));
      regs.push(await engine.registerMemory(new Uint8Array(gp.staging.buffer)));
      // Kernels raise the go words: the proxy polls them, so it sleeps briefly at most.
      const proxy = new ProxyDriver(engine, p.proxyLayout(50), new Uint8Array(gp.flags.buffer));
      return new GpuProxyMode(engine, p, regs[0]!, regs[1]!, proxy, gp);
    } catch (e) {
      for (const r of regs) await r.unregister().catch(() => {});
      gp.free();
      throw e;
    }
  }

  dispatchSend(x: DispatchInput<MoeMemory>, _r: Round): void {
    const p = this.p;
    const g = this.g;
    p.rounds++;
    g.k.dispatchPack(g.device, {
      ...packArgs(p, x, g),
      staging: g.staging.devicePtr,
      rowsBase: p.rowsBase,
      go: g.flags.devicePtr,
      round: BigInt(p.rounds),
    });
    this.proxy.kick(); // its spin window starts now: a short kernel is seen without a sleep
  }

  async dispatchRecv(r: Round): Promise<DispatchResult<MoeMemory>> {
    const p = this.p;
    const g = this.g;
    const me = p.c.rank;
    await this.routes();
    const blocks = p.blocks(r);
    const table = GpuProxy.table(r.counts, me, p.localExperts, blocks.expertOffsets, (s) =>
      p.overflowAt(s, me),
    );
    return unpackOnDevice(p, g.k, g.device, r, table, g.table, g.region.devicePtr, g, blocks);
  }

  combineSend(expertOut: Uint8Array | bigint, r: Round): undefined {
    const p = this.p;
    const g = this.g;
    g.k.combinePack(g.device, {
      tableDev: g.table,
      W: p.c.worldSize,
      L: p.localExperts,
      rows: r.rows,
      expertOut: expertOut as bigint,
      outRow: p.outRow,
      staging: g.staging.devicePtr,
      combineBase: p.combineBase(this.staging.length),
      go: g.flags.devicePtr + 8n,
      round: BigInt(p.rounds),
    });
    this.proxy.kick();
  }

  protected sum(r: Round, accumulate: 'out' | 'fp32'): bigint {
    const g = this.g;
    return gatherOnDevice(this.p, g.k, g.device, g.region.devicePtr, g, r, accumulate);
  }
}
