import { createRequire } from 'node:module';
import { type NativeEngine, type NativeEvents, TrellisError } from '@trellis/core';

/** Options the addon's factory reads (see native/addon.cc). */
export interface NativeVerbsOptions {
  model: boolean;
  nics: number;
  devices?: string[];
  port?: number;
  gidIndex?: number;
  handshakeHost?: string;
  handshakePort?: number;
  timeout?: number;
  retryCnt?: number;
  rnrRetry?: number;
  minRnrTimer?: number;
  connectTimeoutMs?: number;
  relaxedOrdering?: boolean;
  maxSendWr?: number;
  immRecvs?: number;
  cpu?: number;
  opTimeoutMs?: number;
  idleSpinUs?: number;
  maxSleepUs?: number;
  maxInflight?: number;
  doorbellUs?: number;
  recvBytes?: number;
}

export interface Addon {
  NativeEngine: new (opts: NativeVerbsOptions, onEvents: (e: NativeEvents) => void) => NativeEngine;
  /** Names of completion codes by index: the native enum's one definition. */
  codeNames: readonly string[];
  devices(model: boolean): { devices: string[]; error: string };
  /** Drive the RC model directly through the seam (tests). */
  modelScenario(name: string): Record<string, unknown>;
}

let cached: Addon | undefined;

/** Load the addon once; failure says what is missing. */
export function addon(): Addon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  try {
    cached = require('../build/Release/trellis_verbs.node') as Addon;
    return cached;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    let hint: string;
    if (/libibverbs\.so/.test(msg)) {
      hint =
        'libibverbs is not installed: on Debian/Ubuntu `apt install libibverbs1 ibverbs-providers` (rdma-core)';
    } else if (/Cannot find module|no such file/i.test(msg)) {
      hint =
        'the native addon was not built: install libibverbs-dev, cmake and a C++ compiler, then `pnpm rebuild @trellis/backend-verbs`';
    } else {
      hint = 'the native addon failed to load';
    }
    throw new TrellisError('UNSUPPORTED', `@trellis/backend-verbs: ${hint} (${msg})`, { cause: e });
  }
}
