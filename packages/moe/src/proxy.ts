// The JS half of the native proxy (native/proxy.cc): loads the addon, gives the thread its engine
// port, windows and go words, and turns its per-phase events into promises.
import {
  type EnginePort,
  type MrDesc,
  type MrHandle,
  type PortStats,
  type PortWindow,
  type TransferEngine,
  TrellisError,
  type TrellisErrorCode,
} from '@trellis/core';
import { loadNativeAddon } from '@trellis/core/kit';

interface NativeProxy {
  kick(): void;
  close(): void;
  rounds(): [number, number];
  consumed(): Float64Array;
}
interface ProxyAddon {
  MoeProxy: new (
    port: bigint,
    config: Float64Array,
    region: Uint8Array,
    staging: Uint8Array,
    flags: Uint8Array,
    onEvent: (kind: string, round: number, code?: string, message?: string) => void,
    remote?: Uint8Array,
    bases?: Float64Array,
  ) => NativeProxy;
}

let addon: ProxyAddon | undefined;
function load(): ProxyAddon {
  if (addon) return addon;
  // $TRELLIS_MOE_ADDON, else a build from source in build/Release, else the prebuilt binary.
  addon = loadNativeAddon<ProxyAddon>(import.meta.url, ['MoeProxy', 'cudaStatus']);
  return addon;
}

/** Where a round's bytes sit, as the proxy needs them. @internal */
export interface ProxyLayout {
  worldSize: number;
  rank: number;
  numExperts: number;
  localExperts: number;
  maxPrivateTokens: number;
  rowStride: number;
  outRow: number;
  routes: number;
  priv: number;
  overflow: number;
  combine: number;
  size: number;
  rowsBase: number;
  combineBase: number;
  rowsMax: number;
  timeoutMs: number;
  spinUs: number;
  maxSleepUs: number;
  imm: { route: number; dispatch: number; combine: number; barrier: number };
}

const DISPATCH_GO = 0;
const COMBINE_GO = 1;

/**
 * One instance's proxy: an engine port counting the instance's four immediates, and (after
 * {@link connect}) the native thread. @internal
 */
export class ProxyDriver {
  private readonly port: EnginePort;
  private native: NativeProxy | undefined;
  private readonly words: BigUint64Array;
  private reached = { dispatch: 0, combine: 0 };
  private failure: TrellisError | undefined;
  private waiters: Array<{
    kind: 'dispatch' | 'combine';
    round: number;
    resolve: () => void;
    reject: (e: unknown) => void;
  }> = [];

  /**
   * @param flags host memory for the go words (at least 16 bytes, 8-aligned; page-locked and
   * mapped into the GPU when kernels write them)
   */
  constructor(
    private readonly engine: TransferEngine,
    private readonly layout: ProxyLayout,
    private readonly flags: Uint8Array,
  ) {
    load();
    if (typeof engine.openPort !== 'function')
      throw new TrellisError(
        'UNSUPPORTED',
        'MoeAllToAll: the native proxy needs a native engine (backend-efa or backend-verbs); this engine has no openPort',
      );
    const { imm } = layout;
    this.port = engine.openPort({ count: [imm.route, imm.dispatch, imm.combine, imm.barrier] });
    this.words = new BigUint64Array(flags.buffer, flags.byteOffset, 2);
    this.words.fill(0n);
  }

  /** Give the thread its windows (5 per peer) and start it; again after a new connect. */
  connect(
    peers: readonly MrDesc[],
    staging: MrHandle,
    regionBytes: Uint8Array,
    stagingBytes: Uint8Array,
    /** Hybrid instances: 1 for the ranks this proxy serves (the others are reached over NVLink). */
    remote?: Uint8Array,
  ): void {
    const L = this.layout;
    this.stop();
    const windows: PortWindow[] = [];
    const rowsLen = L.worldSize * L.rowsMax * L.rowStride;
    for (let d = 0; d < L.worldSize; d++) {
      if (d === L.rank) continue;
      const dst = peers[d]!;
      windows.push(
        {
          src: staging,
          srcOffset: 0,
          srcLength: L.numExperts * 4,
          dst,
          dstOffset: L.routes + L.rank * L.numExperts * 4,
          dstLength: L.numExperts * 4,
          imm: L.imm.route,
        },
        {
          src: staging,
          srcOffset: L.rowsBase,
          srcLength: rowsLen,
          dst,
          dstOffset: L.priv + L.rank * L.maxPrivateTokens * L.rowStride,
          dstLength: L.maxPrivateTokens * L.rowStride,
          imm: L.imm.dispatch,
        },
        {
          src: staging,
          srcOffset: L.rowsBase,
          srcLength: rowsLen,
          dst,
          dstOffset: L.overflow,
          dstLength: L.combine - L.overflow,
          imm: L.imm.dispatch,
        },
        {
          src: staging,
          srcOffset: L.combineBase,
          srcLength: staging.length - L.combineBase,
          dst,
          dstOffset: L.combine,
          dstLength: L.size - L.combine,
          imm: L.imm.combine,
        },
        { dst, imm: L.imm.barrier },
      );
    }
    this.port.setWindows(windows);
    this.words.fill(0n);
    this.reached = { dispatch: 0, combine: 0 };
    this.failure = undefined;
    const cfg = Float64Array.of(
      L.worldSize,
      L.rank,
      L.numExperts,
      L.localExperts,
      L.maxPrivateTokens,
      L.rowStride,
      L.outRow,
      L.routes,
      L.priv,
      L.overflow,
      L.combine,
      L.rowsBase,
      L.combineBase,
      L.rowsMax,
      L.timeoutMs,
      L.spinUs,
      L.maxSleepUs,
    );
    this.native = new (load().MoeProxy)(
      this.port.handle,
      cfg,
      regionBytes,
      stagingBytes,
      this.flags,
      (kind, round, code, message) => this.onEvent(kind, round, code, message),
      remote,
      this.consumed,
    );
  }

  stats(): PortStats {
    return this.port.stats();
  }

  /** Host side of a go word: the packer wrote the round's bytes; start the phase. */
  go(phase: 'dispatch' | 'combine', round: number): void {
    if (!this.native)
      throw this.closed
        ? new TrellisError('CLOSED', 'MoeAllToAll: closed')
        : new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll: connect() first');
    this.words[phase === 'dispatch' ? DISPATCH_GO : COMBINE_GO] = BigInt(round);
    this.native.kick();
  }

  /** End the thread's sleep: a kernel is about to raise a go word (its spin window starts now). */
  kick(): void {
    this.native?.kick();
  }

  /** Resolve once the proxy finished `phase` of `round`. */
  wait(phase: 'dispatch' | 'combine', round: number): Promise<void> {
    if (this.closed) return Promise.reject(new TrellisError('CLOSED', 'MoeAllToAll: closed'));
    if (this.failure) return Promise.reject(this.failure);
    if (this.reached[phase] >= round) return Promise.resolve();
    return new Promise((resolve, reject) => {
      // The proxy keeps its own deadlines (timeoutMs) and reports them; this timer keeps the event
      // loop alive (the thread's events do not), notices the engine closing under a pending phase
      // (its port's posts are refused: nothing will come), and catches a proxy that never answers.
      const limit = 2 * this.layout.timeoutMs + 5000;
      const until = performance.now() + limit;
      const timer = setInterval(() => {
        let e: TrellisError | undefined;
        if (this.engine.closed)
          e = new TrellisError(
            'CLOSED',
            `MoeAllToAll: the engine was closed while ${phase} of round ${round} was pending (close the instance before its engine)`,
          );
        else if (performance.now() >= until)
          e = new TrellisError(
            'TIMEOUT',
            `MoeAllToAll: the native proxy did not finish ${phase} of round ${round} and reported nothing within ${limit} ms (its own deadline is timeoutMs ${this.layout.timeoutMs})`,
          );
        if (!e) return;
        this.waiters = this.waiters.filter((w) => w.resolve !== done);
        clearInterval(timer);
        reject(e);
      }, 50);
      const done = () => {
        clearInterval(timer);
        resolve();
      };
      this.waiters.push({
        kind: phase,
        round,
        resolve: done,
        reject: (e) => {
          clearInterval(timer);
          reject(e);
        },
      });
    });
  }

  private onEvent(kind: string, round: number, code?: string, message?: string): void {
    if (kind === 'error') {
      this.failure = new TrellisError(
        (code ?? 'INTERNAL') as TrellisErrorCode,
        `MoeAllToAll (native proxy, round ${round}): ${message}`,
      );
      for (const w of this.waiters.splice(0)) w.reject(this.failure);
      return;
    }
    const phase = kind as 'dispatch' | 'combine';
    this.reached[phase] = round;
    this.waiters = this.waiters.filter((w) => {
      if (w.kind !== phase || w.round > round) return true;
      w.resolve();
      return false;
    });
  }

  /** Arrivals earlier threads of this instance consumed: where the next one's rounds start. */
  private consumed: Float64Array = new Float64Array(4);

  private stop(): void {
    if (this.native) {
      this.native.close();
      this.consumed = this.native.consumed();
    }
    this.native = undefined;
  }

  private closed = false;

  /** Stop the thread, reject what waits (and every later wait), close the port. */
  close(): void {
    this.closed = true;
    this.stop();
    const e = new TrellisError('CLOSED', 'MoeAllToAll: closed');
    for (const w of this.waiters.splice(0)) w.reject(e);
    this.port.close();
  }
}
