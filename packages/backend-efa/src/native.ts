import { createRequire } from 'node:module';
import { type NativeEngine, type NativeEvents, TrellisError } from '@trellis/core';

export type { NativeEngine, NativeEvents };

export interface NativeEngineOptions {
  provider: string;
  nics: number;
  strict: boolean;
  iface?: string;
  cpu?: number;
  opTimeoutMs?: number;
  idleSpinUs?: number;
  maxSleepUs?: number;
  maxInflight?: number;
  doorbellUs?: number;
  recvBytes?: number;
}

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

export interface Addon {
  NativeEngine: new (opts: NativeEngineOptions, onEvents: (e: NativeEvents) => void) => NativeEngine;
  /** Names of completion codes by index: the native enum's one definition. */
  codeNames: readonly string[];
  fabricVersion(): string;
  probe(): ProviderProbe[];
}

let cached: Addon | undefined;

/** Load the addon once; failure says what is missing. */
export function addon(): Addon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  try {
    cached = require('../build/Release/trellis_efa.node') as Addon;
    return cached;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    let hint: string;
    if (/libfabric\.so/.test(msg)) {
      hint =
        'libfabric is not installed: on Debian/Ubuntu `apt install libfabric1` (and libfabric-dev to build)';
    } else if (/Cannot find module|no such file/i.test(msg)) {
      hint =
        'the native addon was not built: install libfabric-dev, cmake and a C++ compiler, then `pnpm rebuild @trellis/backend-efa`';
    } else {
      hint = 'the native addon failed to load';
    }
    throw new TrellisError('UNSUPPORTED', `@trellis/backend-efa: ${hint} (${msg})`, { cause: e });
  }
}
