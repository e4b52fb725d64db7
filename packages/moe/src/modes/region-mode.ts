// The modes whose region and staging are registered with the engine (host, host proxy, GPU proxy):
// descriptors of peers' regions, NVLink through CUDA IPC where the memory can, every peer's routes
// read back from this rank's region, and unregistering at close. The proxy modes' common part
// (ProxyRegionMode) hands the native proxy its windows and waits on its events. What is packed
// where, and who posts it, is each mode's.
import {
  MrDesc,
  type MrHandle,
  type PeerGroup,
  type PortStats,
  type TransferEngine,
  TrellisError,
} from '@trellis/core';
import type { Mem } from '../memory.js';
import type { Protocol, Round } from '../protocol.js';
import type { ProxyDriver } from '../proxy.js';
import type { DispatchInput, DispatchResult, MoeMemory } from '../types.js';
import type { MoeMode, MoePath } from './mode.js';

/** A mode over a registered region and staging. @internal */
export abstract class RegionMode implements MoeMode {
  readonly descriptor: string;
  paths: ReadonlyArray<MoePath> = [];
  protected peers: MrDesc[] = [];
  protected group: PeerGroup | undefined;
  /** This rank's own routes are read back from its region too (a kernel wrote them there). */
  protected readonly ownRoutesInRegion: boolean = false;

  constructor(
    protected readonly engine: TransferEngine,
    protected readonly p: Protocol,
    protected readonly region: MrHandle,
    protected readonly staging: MrHandle,
    protected readonly mem: Mem,
  ) {
    mem.bind(region, staging);
    const ipc = mem.exportRegion();
    this.descriptor = ipc ? `${region.desc.toString()} ${ipc}` : region.desc.toString();
  }

  get connected(): boolean {
    return this.peers.length > 0;
  }

  connect(descriptors: readonly string[]): void {
    const c = this.p.c;
    const parts = descriptors.map((d) => {
      if (typeof d !== 'string')
        throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.connect: descriptors must be strings');
      const [desc, ipc] = d.split(' ');
      return { desc: MrDesc.parse(desc!), ipc };
    });
    const mine = this.region.desc.kind;
    parts.forEach(({ desc }, r) => {
      if (desc.kind !== mine)
        throw new TrellisError(
          'INVALID_DESCRIPTOR',
          `MoeAllToAll.connect: descriptors[${r}] comes from a '${desc.kind}' engine but this rank's is a '${mine}' engine; every rank needs an engine of one kind`,
        );
    });
    this.mem.disconnect();
    this.peers = parts.map((p) => p.desc);
    this.paths = parts.map((p, r) => {
      if (r === c.rank) return 'self';
      const sameNode = Math.floor(r / c.nodeSize) === Math.floor(c.rank / c.nodeSize);
      return sameNode && p.ipc && this.mem.connectPeer(r, p.ipc) ? 'nvlink' : 'rdma';
    });
    const others = this.peers.filter((_, r) => r !== c.rank).map((d) => d.owner);
    this.group = others.length ? this.engine.addPeerGroup(others) : undefined;
    this.onConnect();
  }

  /** The end of connect, once peers and paths are set. */
  protected onConnect(): void {}

  checkTokens(tokens: unknown, bytes: number, scales: unknown, scaleCount: number): string | undefined {
    return this.mem.checkTokens(tokens, bytes, scales, scaleCount);
  }

  /** Resolve once every peer's routes are in this rank's region. */
  protected abstract routesArrived(): Promise<void>;

  /** Wait for every peer's routes, take them into the round (once per round). */
  protected routes(): Promise<void> {
    const p = this.p;
    p.routesIn ??= (async () => {
      const c = p.c;
      await this.routesArrived();
      const all = this.mem.get('region', p.layout.routes, c.worldSize * c.numExperts * 4);
      for (let s = 0; s < c.worldSize; s++)
        if (s !== c.rank || this.ownRoutesInRegion)
          p.takeRoutes(
            s,
            new Int32Array(all.buffer, all.byteOffset + s * c.numExperts * 4, c.numExperts),
            'sent',
          );
    })();
    return p.routesIn;
  }

  abstract dispatchSend(x: DispatchInput<MoeMemory>, r: Round): void;
  abstract dispatchRecv(r: Round): Promise<DispatchResult<MoeMemory>>;
  abstract combineSend(expertOut: Uint8Array | bigint, r: Round): Promise<void> | undefined;
  abstract combineRecv(
    r: Round,
    accumulate: 'out' | 'fp32',
    sends: () => Promise<void> | undefined,
  ): Promise<Uint8Array | Float32Array | bigint>;

  proxyStats(): PortStats | undefined {
    return undefined;
  }

  /** Stop what runs before the buffers go. */
  protected stop(): void {}

  /** Aborted by close(): the mode's waits on the engine settle then, not at their deadline. */
  protected readonly closing = new AbortController();

  async close(): Promise<void> {
    this.closing.abort();
    this.stop();
    if (!this.engine.closed) {
      await this.region.unregister().catch(() => {});
      await this.staging.unregister().catch(() => {});
    }
    this.mem.free();
  }
}

/**
 * A registered-region mode driven by the native proxy: it posts routes, rows, combine rows and the
 * barrier once a go word is raised; JS waits on its events. Rounds count from each connect. @internal
 */
export abstract class ProxyRegionMode extends RegionMode {
  constructor(
    engine: TransferEngine,
    p: Protocol,
    region: MrHandle,
    staging: MrHandle,
    mem: Mem,
    protected readonly proxy: ProxyDriver,
  ) {
    super(engine, p, region, staging, mem);
  }

  protected override onConnect(): void {
    this.p.rounds = 0;
    this.proxy.connect(this.peers, this.staging, this.region.buffer!, this.staging.buffer!);
  }

  protected routesArrived(): Promise<void> {
    return this.proxy.wait('dispatch', this.p.rounds);
  }

  async combineRecv(
    r: Round,
    accumulate: 'out' | 'fp32',
    sends: () => Promise<void> | undefined,
  ): Promise<Uint8Array | Float32Array | bigint> {
    await this.proxy.wait('combine', this.p.rounds);
    await sends();
    // The proxy closed the round (its barrier) before its combine event.
    return this.sum(r, accumulate);
  }

  /** Each token's rows that came back (all in), summed weighted. */
  protected abstract sum(r: Round, accumulate: 'out' | 'fp32'): Uint8Array | Float32Array | bigint;

  override proxyStats(): PortStats {
    return this.proxy.stats();
  }

  protected override stop(): void {
    this.proxy.close();
  }
}
