/**
 * `@trellis/backend-efa` — the Trellis transfer contract over libfabric: the `efa` provider on
 * AWS, `shm` and `tcp;ofi_rxm` on any Linux machine.
 *
 * @packageDocumentation
 */
export { createEngine, EfaEngine, type EfaEngineOptions, type Provider } from './engine.js';
export type { ProviderProbe } from './native.js';

import { TrellisError } from '@trellis/core';
import { addon, addonPath, type ProviderProbe } from './native.js';

// The library facts need libfabric itself, which the addon opens on first use: where it cannot,
// the addon's message says what to install.
function withLibrary<T>(f: () => T): T {
  addon();
  try {
    return f();
  } catch (e) {
    throw new TrellisError('UNSUPPORTED', `@trellis/backend-efa: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The libfabric version loaded at run time, e.g. `1.17`. libfabric is opened when first needed:
 * `$TRELLIS_LIBFABRIC_DIR/lib/libfabric.so.1` when that variable is set, else `libfabric.so.1` from
 * the loader's search path (`LD_LIBRARY_PATH`, the system's), else the EFA installer's
 * `/opt/amazon/efa`.
 *
 * @throws TrellisError `UNSUPPORTED` when no libfabric can be loaded (the message says what to install).
 */
export function fabricVersion(): string {
  return withLibrary(() => addon().fabricVersion());
}

/**
 * The file the libfabric in use was loaded from, e.g. `/usr/lib/x86_64-linux-gnu/libfabric.so.1.20.0`.
 *
 * @throws TrellisError `UNSUPPORTED` when no libfabric can be loaded.
 */
export function fabricLibrary(): string {
  return withLibrary(() => addon().fabricLibrary());
}

/**
 * What `fi_getinfo` reports for `efa`, `shm` and `tcp;ofi_rxm` on this host.
 *
 * @throws TrellisError `UNSUPPORTED` when no libfabric can be loaded.
 */
export function probeProviders(): ProviderProbe[] {
  return withLibrary(() => addon().probe());
}

/**
 * The native addon file in use: a build from source (`build/Release/trellis_efa.node`) where one
 * exists, else the prebuilt binary for this platform (`prebuilds/linux-x64/trellis_efa.node`), or
 * `$TRELLIS_EFA_ADDON`. Undefined when there is none (the first engine then says how to build it).
 * The benchmark's raw C programs sit in the same folder.
 */
export function nativeAddonPath(): string | undefined {
  return addonPath();
}
