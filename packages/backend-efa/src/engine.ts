import { NativeEngineBase, type NativeEngineTuning, TrellisError } from '@trellis/core';
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
}

const PROVIDER_KIND: Record<string, string> = { efa: 'fi-efa', shm: 'fi-shm', 'tcp;ofi_rxm': 'fi-tcp' };

/** An engine on libfabric. Create it with {@link createEngine}. */
export class EfaEngine extends NativeEngineBase {
  /** @internal Use {@link createEngine}. */
  constructor(opts: EfaEngineOptions) {
    const nics = opts.nics ?? 1;
    if (!Number.isInteger(nics) || nics < 1 || nics > 4) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: nics must be an integer in 1..4, got ${String(nics)}`,
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
    super({
      backendName: '@trellis/backend-efa',
      nics,
      tuning: opts,
      addon: addon(),
      nativeOptions: { provider: provider === 'auto' ? '' : provider, nics, strict, iface: opts.iface },
      kindOf: (providers) => {
        const p = providers[0]!.provider;
        return PROVIDER_KIND[p] ?? `fi-${p.replace(/[^a-z0-9]/g, '')}`;
      },
    });
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
  return new EfaEngine(opts);
}
