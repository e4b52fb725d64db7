// Host memory driven by the native proxy (`proxy: true`): JS packs the round (HostRows) and raises
// a go word; the proxy thread posts routes, private, overflow and combine writes and the closing
// barrier through an engine port, and JS waits once per phase. Touches its registered host region
// and staging, and the proxy it owns.
import type { TransferEngine } from '@trellis/core';
import { HostMem } from '../memory.js';
import type { Protocol, Round } from '../protocol.js';
import { ProxyDriver } from '../proxy.js';
import type { DispatchInput, DispatchResult, MoeMemory } from '../types.js';
import { HostRows, registerHost } from './host-mode.js';
import { ProxyRegionMode } from './region-mode.js';

/** Host memory, JS packs, the native proxy posts. @internal */
export class HostProxyMode extends ProxyRegionMode {
  private readonly rows = new HostRows(this.p, this.mem, this.staging.length);

  static async create(engine: TransferEngine, p: Protocol): Promise<HostProxyMode> {
    const { region, staging } = await registerHost(engine, p);
    let proxy: ProxyDriver;
    try {
      proxy = new ProxyDriver(engine, p.proxyLayout(), new Uint8Array(64));
    } catch (e) {
      await region.unregister().catch(() => {});
      await staging.unregister().catch(() => {});
      throw e;
    }
    return new HostProxyMode(engine, p, region, staging, new HostMem(), proxy);
  }

  dispatchSend(x: DispatchInput<MoeMemory>, r: Round): void {
    this.rows.pack(x, r);
    // The proxy posts routes, private and overflow rows (and this rank's own copies).
    this.proxy.go('dispatch', ++this.p.rounds);
  }

  async dispatchRecv(r: Round): Promise<DispatchResult<MoeMemory>> {
    await this.routes();
    return this.rows.layOut(r);
  }

  combineSend(expertOut: Uint8Array | bigint, r: Round): undefined {
    this.rows.packCombine(expertOut, r);
    this.proxy.go('combine', this.p.rounds);
  }

  protected sum(r: Round, accumulate: 'out' | 'fp32'): Uint8Array | Float32Array | bigint {
    return this.rows.sum(r, accumulate);
  }
}
