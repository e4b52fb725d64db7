/**
 * `@trellis/backend-efa` — the Trellis transfer contract over libfabric: the `efa` provider on
 * AWS, `shm` and `tcp;ofi_rxm` on any Linux machine.
 *
 * @packageDocumentation
 */
export { createEngine, EfaEngine, type EfaEngineOptions, type Provider } from './engine.js';
export type { ProviderProbe } from './native.js';

import { addon, type ProviderProbe } from './native.js';

/** The libfabric version loaded at run time, e.g. `1.17`. */
export function fabricVersion(): string {
  return addon().fabricVersion();
}

/** The file the libfabric in use was loaded from, e.g. `/usr/lib/x86_64-linux-gnu/libfabric.so.1.18.2`. */
export function fabricLibrary(): string {
  return addon().fabricLibrary();
}

/** What `fi_getinfo` reports for `efa`, `shm` and `tcp;ofi_rxm` on this host. */
export function probeProviders(): ProviderProbe[] {
  return addon().probe();
}
