import { createRequire } from 'node:module';
import { TrellisError } from '@trellis/core';

/** One batch of events from the native worker (one doorbell). */
export interface NativeEvents {
  /** 4 u32 per settled op: op id, code index into `Addon.codeNames`, errno, nic + 1 (0: none). */
  ops: Uint32Array;
  /** Messages of failed ops: [index into ops / 4, text, index, text, ...]. */
  messages: Array<number | string>;
  regs: Array<{ region: number; code: string; message: string; keys: BigUint64Array }>;
  /** (imm, count) pairs */
  imms: Uint32Array;
  recvs: Uint8Array[];
  /** [watchId, value, previous] */
  watches: Array<[number, bigint, bigint]>;
}

/** The addon's engine class: plain data in, events out. Validation lives in TypeScript. */
export interface NativeEngine {
  addresses(): Uint8Array[];
  providers(): Array<{ provider: string; path: 'host' | 'direct' | 'staged' }>;
  addPeer(id: number, addrs: readonly Uint8Array[]): void;
  alloc(length: number): ArrayBuffer;
  register(id: number, view: Uint8Array, remote: boolean): void;
  deregister(id: number): void;
  write(
    op: number,
    region: number,
    hasImm: boolean,
    imm: number,
    runs: Float64Array,
    runKeys: BigUint64Array,
    pages?: {
      peer: number;
      lanes: number;
      srcPages: Uint32Array;
      dstPages: Uint32Array;
      srcStride: number;
      dstStride: number;
      srcOffset: number;
      dstOffset: number;
      pageBytes: number;
      keys: BigUint64Array;
    },
  ): void;
  send(op: number, peer: number, bytes: Uint8Array): void;
  cancel(op: number, code: 'TIMEOUT' | 'ABORTED'): void;
  watch(id: number, word: Uint8Array): void;
  unwatch(id: number): void;
  /** 8 numbers per NIC: bytesWritten, writeOps, bytesSent, sendOps, bytesReceived, recvOps, immsReceived, errors */
  stats(): Float64Array;
  close(): void;
  /** Worker loop iterations so far (-1 once closed). */
  heartbeat(): number;
  /** Detach a worker stuck inside the provider; the native engine is leaked on purpose. */
  abandon(): void;
}

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
