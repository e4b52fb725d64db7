// EfaEngine and createEngine: the libfabric backend's face — option checks, provider choice (efa,
// shm, tcp;ofi_rxm) and the peer address format, over NativeEngineBase of @trellis/core/kit. All
// work is done by the addon (native.ts).
import { type LibraryInfo, TrellisError } from '@trellis/core';
import { NativeEngineBase, type NativeEngineTuning, show } from '@trellis/core/kit';
import { addon } from './native.js';

/** Provider names accepted by {@link createEngine}. `tcp` is shorthand for `tcp;ofi_rxm`. */
export type Provider = 'auto' | 'efa' | 'shm' | 'tcp;ofi_rxm' | 'tcp';

/** Options of {@link createEngine}. The worker's tuning (`cpu`, `opTimeoutMs`, `idleSpinUs`, ...) is {@link NativeEngineTuning}. */
export interface EfaEngineOptions extends NativeEngineTuning {
  /**
   * libfabric provider. `auto` (default, or `TRELLIS_PROVIDER`): `efa` where present, otherwise
   * `tcp;ofi_rxm`. `shm` is the fastest between processes of one host and reaches no other host.
   */
  provider?: Provider;
  /** NICs (domains) this engine owns, 1..4. On shm and tcp several domains model several NICs. Default 1. */
  nics?: number;
  /** Refuse any fallback: `auto` means `efa` only. Default `false` (or `TRELLIS_STRICT=1`). */
  strict?: boolean;
  /** Source address or interface for tcp (`fi_getinfo` node). */
  iface?: string;
  /**
   * Register CUDA memory with the NICs directly (libfabric `FI_HMEM`: GPUDirect RDMA through a
   * dma-buf on efa) where the provider offers it and a CUDA driver is present. `false` asks
   * libfabric for host memory only, and CUDA regions are staged. Default: `true`, except on shm,
   * where GPU bytes would move through shm's bounce buffers (about 2 GB/s on an H200, slower than the
   * staged path) — GPU → GPU writes on one host take the same-host lane instead. (shm's CUDA IPC
   * protocol is not used: its writer completes before the copy has read the source.)
   */
  gpuDirect?: boolean;
}

/** {@link EfaEngineOptions}' own fields (one added there and not here fails to compile). */
const OWN_OPTIONS: Record<Exclude<keyof EfaEngineOptions, keyof NativeEngineTuning>, true> = {
  provider: true,
  nics: true,
  strict: true,
  iface: true,
  gpuDirect: true,
};

const PROVIDER_KIND: Record<string, string> = { efa: 'fi-efa', shm: 'fi-shm', 'tcp;ofi_rxm': 'fi-tcp' };

/** Engines of this process not seen closed yet (pruned as engines are made): `failNic` on shm asks. */
const openEngines = new Set<EfaEngine>();

/** An engine on libfabric. Create it with {@link createEngine}. */
export class EfaEngine extends NativeEngineBase {
  private gpuDirectOff = false;
  /** @internal Use {@link createEngine}. */
  constructor(opts: EfaEngineOptions) {
    const nics = opts.nics ?? 1;
    if (!Number.isInteger(nics) || nics < 1 || nics > 4) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: nics must be an integer in 1..4, got ${show(nics)}`,
      );
    }
    let provider: string = opts.provider ?? (process.env.TRELLIS_PROVIDER as Provider | undefined) ?? 'auto';
    if (provider === 'tcp') provider = 'tcp;ofi_rxm';
    if (!['auto', 'efa', 'shm', 'tcp;ofi_rxm'].includes(provider)) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: provider must be auto, efa, shm or tcp, got ${JSON.stringify(provider)}`,
      );
    }
    const strict = opts.strict ?? process.env.TRELLIS_STRICT === '1';
    if (opts.gpuDirect !== undefined && typeof opts.gpuDirect !== 'boolean')
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: gpuDirect must be a boolean, got ${JSON.stringify(opts.gpuDirect)}`,
      );
    super({
      backendName: '@trellis/backend-efa',
      nics,
      tuning: opts,
      optionKeys: Object.keys(OWN_OPTIONS),
      addon: addon(),
      nativeOptions: {
        provider: provider === 'auto' ? '' : provider,
        nics,
        strict,
        iface: opts.iface,
        hmem: opts.gpuDirect ?? provider !== 'shm',
      },
      kindOf: (providers) => {
        const p = providers[0]!.provider;
        return PROVIDER_KIND[p] ?? `fi-${p.replace(/[^a-z0-9]/g, '')}`;
      },
    });
    this.gpuDirectOff = opts.gpuDirect === false || (opts.gpuDirect === undefined && provider === 'shm');
    for (const e of openEngines) if (e.closed) openEngines.delete(e);
    openEngines.add(this);
  }

  /**
   * Fault injection: tear NIC `nic` down (see the core's `failNic`). Refused on `shm` while another
   * engine of this process is open: shm maps the queues of a peer in the same process straight
   * into its writers, and tearing the endpoint down unmaps them under writes in flight (a crash,
   * not a NIC failure). Fail a NIC of an shm engine from a process of its own.
   */
  override failNic(nic: number): void {
    if (this.provider === 'shm' && [...openEngines].some((e) => e !== this && !e.closed))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `failNic: on shm, a NIC cannot be torn down while another engine of this process is open (shm maps a same-process peer's queues into its writers, and the teardown would unmap them under writes in flight); run the engine whose NIC fails in a process of its own`,
      );
    super.failNic(nic);
  }

  private libInfo: LibraryInfo | undefined;

  protected override libraryInfo(): LibraryInfo {
    if (!this.libInfo) {
      const a = addon();
      const probe = a.probe().find((p) => p.provider === this.provider);
      this.libInfo = {
        name: 'libfabric',
        version: a.fabricVersion(),
        path: a.fabricLibrary(),
        hmem: probe?.hmem === true,
        gpuDirect: this.providers.every((p) => p.path === 'direct'),
      };
    }
    return this.libInfo;
  }

  protected override noDirectReason(): string {
    const info = this.libraryInfo();
    const lib = `libfabric ${info.version} (${info.path})`;
    if (!info.hmem)
      return `${lib} does not offer FI_HMEM for provider ${this.provider} (Debian's libfabric 1.17 is built without it; use a libfabric 2.x built with CUDA, such as the EFA installer's: set TRELLIS_LIBFABRIC_DIR to its prefix, or put its lib/ on LD_LIBRARY_PATH)`;
    return `${lib} offers FI_HMEM, but ${this.gpuDirectOff ? 'gpuDirect is off (the default on shm; pass gpuDirect: true for its bounce-buffer path)' : 'no CUDA driver (libcuda.so.1) could be loaded'}`;
  }

  protected checkNicAddress(nic: Uint8Array): string | undefined {
    // [u16 name length][name][u64 sink addr][u64 sink key]: anything else is not a libfabric peer.
    const n = nic.length >= 2 ? nic[0]! | (nic[1]! << 8) : -1;
    return n <= 0 || nic.length !== 2 + n + 16 ? 'is not a libfabric endpoint address' : undefined;
  }
}

/**
 * Create an engine on libfabric.
 *
 * @example
 * ```ts
 * import { createEngine } from '@trellis/backend-efa';
 * const engine = await createEngine({ provider: 'shm', nics: 2 });
 * console.log(engine.address.toString(), engine.stats().nics.map((n) => n.provider));
 * ```
 */
export async function createEngine(opts: EfaEngineOptions = {}): Promise<EfaEngine> {
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `createEngine: pass an options object (e.g. {provider: 'tcp', nics: 1}) or nothing, got ${opts === null ? 'null' : Array.isArray(opts) ? 'an array' : JSON.stringify(opts)}`,
    );
  return new EfaEngine(opts);
}
