// Loads the libfabric addon (trellis_efa.node) once, with an error that names what is missing, and
// types what it exports: the engine kit's NativeEngine, provider probes and library facts.
import {
  loadNativeAddon,
  type NativeEngine,
  type NativeEvents,
  type NativeModuleCalls,
} from '@trellis/core/kit';

export type { NativeEngine, NativeEvents };

/** What `fi_getinfo` says of one provider on this host. */
export interface ProviderProbe {
  provider: string;
  fabric: string;
  domain: string;
  rma: boolean;
  remoteCqData: boolean;
  hmem: boolean;
  /** Empty when the provider is usable. */
  error: string;
}

export interface Addon extends NativeModuleCalls {
  NativeEngine: new (opts: object, onEvents: (e: NativeEvents) => void) => NativeEngine;
  fabricVersion(): string;
  fabricLibrary(): string;
  probe(): ProviderProbe[];
}

let cached: Addon | undefined;

/** Load the addon once; failure says what is missing. */
export function addon(): Addon {
  cached ??= loadNativeAddon<Addon>(
    import.meta.url,
    // TRELLIS_EFA_ADDON: an addon built elsewhere, e.g. against another libfabric (scripts/run test
    // builds one against libfabric 2.x and runs this package's tests with it).
    process.env.TRELLIS_EFA_ADDON || '../build/Release/trellis_efa.node',
    '@trellis/backend-efa',
    [
      [
        /libfabric\.so/,
        'libfabric is not installed: on Debian/Ubuntu `apt install libfabric1` (and libfabric-dev to build)',
      ],
    ],
    'install libfabric-dev, cmake and a C++ compiler',
  );
  return cached;
}
