// Loads the ibverbs addon (trellis_verbs.node) once, with an error that names what is missing, and
// types what it exports: the engine kit's NativeEngine and the device listing.
import {
  loadNativeAddon,
  type NativeEngine,
  type NativeEngineTuning,
  type NativeEventCallback,
  type NativeModuleCalls,
  resolveNativeAddon,
} from '@trellis/core/kit';
import type { VerbsEngineOptions } from './options.js';

/** Options the addon's factory reads (see native/addon.cc). */
export interface NativeVerbsOptions
  extends Omit<VerbsEngineOptions, keyof NativeEngineTuning | 'model' | 'nics'> {
  model: boolean;
  nics: number;
}

export interface Addon extends NativeModuleCalls {
  NativeEngine: new (opts: object, onEvents: NativeEventCallback) => NativeEngine;
  devices(model: boolean): { devices: string[]; error: string };
}

let cached: Addon | undefined;

/** Load the addon once; failure says what is missing. */
export function addon(): Addon {
  // $TRELLIS_VERBS_ADDON, else a build from source in build/Release, else the prebuilt binary.
  // The addon opens libibverbs when first asked for a real device: without it, the RC model runs.
  cached ??= loadNativeAddon<Addon>(import.meta.url, ['NativeEngine', 'devices']);
  return cached;
}

/** The addon file that is (or would be) loaded; undefined when there is none. */
export function addonPath(): string | undefined {
  return resolveNativeAddon(import.meta.url);
}
