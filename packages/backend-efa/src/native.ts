// Loads the libfabric addon (trellis_efa.node) once, with an error that names what is missing, and
// types what it exports: the engine kit's NativeEngine, provider probes and library facts.
import {
  loadNativeAddon,
  type NativeEngine,
  type NativeEventCallback,
  type NativeEvents,
  type NativeModuleCalls,
  resolveNativeAddon,
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
  NativeEngine: new (opts: object, onEvents: NativeEventCallback) => NativeEngine;
  fabricVersion(): string;
  fabricLibrary(): string;
  probe(): ProviderProbe[];
}

let cached: Addon | undefined;

/** Load the addon once; failure says what is missing. */
export function addon(): Addon {
  // `$TRELLIS_EFA_ADDON` (a build of it elsewhere), else a build from source in build/Release, else
  // the prebuilt binary for this platform (package.json's trellisAddon names it). It opens
  // libfabric when first used.
  cached ??= loadNativeAddon<Addon>(import.meta.url, [
    'NativeEngine',
    'fabricVersion',
    'fabricLibrary',
    'probe',
  ]);
  return cached;
}

/** The addon file that is (or would be) loaded; undefined when there is none. */
export function addonPath(): string | undefined {
  return resolveNativeAddon(import.meta.url);
}
