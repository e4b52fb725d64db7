/**
 * `@trellis/core/faults` — a fault harness for any engine. {@link withFaults} wraps a
 * `TransferEngine` (loopback, backend-efa, backend-verbs) and injects, at the API boundary, the
 * failures a fabric produces: operations delayed (and so reordered), dropped (failed without being
 * posted, so their bytes and immediates never arrive), a NIC failed, a peer killed. Seeded: the
 * same seed and the same calls inject the same faults. Every operation still settles exactly once.
 *
 * ```ts
 * const e = withFaults(await createEngine({ provider: 'tcp' }), { seed: 7 });
 * e.faults.delay([0, 5]);        // every submit waits 0–5 ms: completions reorder
 * e.faults.drop(0.01);           // 1% of operations fail with PROVIDER_ERROR, nothing posted
 * e.faults.killPeer(peer);       // operations to `peer` fail with PEER_LOST from now on
 * ```
 *
 * The loopback fabric's own injector (`fabric.faults`) works below the API (per work request, per
 * NIC); this harness works above it, so it fits native engines too.
 *
 * @packageDocumentation
 */
import type { NetAddr } from './addr.js';
import { TrellisError, type TrellisErrorCode } from './errors.js';
import { Prng } from './loopback/prng.js';
import type {
  BarrierRequest,
  BatchOptions,
  BatchResult,
  EngineLimits,
  EngineStats,
  ImmCounter,
  ImmRequest,
  MemorySource,
  MrHandle,
  OpOptions,
  PagedWritesRequest,
  PeerGroup,
  PreparedPostOptions,
  PreparedWrites,
  PreparedWritesRequest,
  RecvMessage,
  RecvOptions,
  RegisterOptions,
  ScatterRequest,
  SingleWriteRequest,
  TransferEngine,
  TransferRequest,
  UvmWatcher,
  UvmWatcherCallback,
  WaitOptions,
} from './types.js';

/** Faults injected so far, by kind. */
export interface InjectedFaults {
  delayed: number;
  dropped: number;
  nicFailed: number;
  peerKilled: number;
}

/** The controls of a {@link FaultyEngine}. */
export interface FaultControls {
  /** Delay every submit by a random time in `[lo, hi]` ms before it is posted (undefined: none). */
  delay(range: readonly [number, number] | undefined): void;
  /** Fail this fraction (0..1) of submits with `code` (default PROVIDER_ERROR), nothing posted. */
  drop(probability: number, code?: TrellisErrorCode): void;
  /** Fail every submit with NIC_FAILED naming `nic` (undefined: restore). */
  failNic(nic: number | undefined): void;
  /** Fail every submit to or with `peer` with PEER_LOST from now on. */
  killPeer(peer: NetAddr): void;
  /** Stop injecting (killed peers stay killed). */
  heal(): void;
  /** What was injected so far. */
  readonly injected: Readonly<InjectedFaults>;
}

/** A `TransferEngine` with a fault harness in front (see {@link withFaults}). */
export interface FaultyEngine extends TransferEngine {
  readonly faults: FaultControls;
  /** The wrapped engine. */
  readonly inner: TransferEngine;
}

/** Wrap `engine` with a seeded fault harness (no faults until one is switched on). */
export function withFaults(engine: TransferEngine, opts: { seed?: number } = {}): FaultyEngine {
  return new Harness(engine, opts.seed ?? 1);
}

class Harness implements FaultyEngine {
  readonly faults: FaultControls;
  private readonly rng: Prng;
  private range: readonly [number, number] | undefined;
  private dropP = 0;
  private dropCode: TrellisErrorCode = 'PROVIDER_ERROR';
  private nic: number | undefined;
  private readonly dead = new Set<string>();
  private readonly counts: InjectedFaults = { delayed: 0, dropped: 0, nicFailed: 0, peerKilled: 0 };

  constructor(
    readonly inner: TransferEngine,
    seed: number,
  ) {
    this.rng = new Prng(seed);
    const self = this;
    this.faults = {
      delay(range) {
        if (range !== undefined && !(range.length === 2 && range[0] >= 0 && range[1] >= range[0]))
          throw new TrellisError(
            'INVALID_ARGUMENT',
            'faults.delay: range must be [lo, hi] with 0 <= lo <= hi',
          );
        self.range = range;
      },
      drop(p, code = 'PROVIDER_ERROR') {
        if (!(p >= 0 && p <= 1))
          throw new TrellisError('INVALID_ARGUMENT', 'faults.drop: probability must be in 0..1');
        self.dropP = p;
        self.dropCode = code;
      },
      failNic(nic) {
        if (nic !== undefined && !(Number.isInteger(nic) && nic >= 0 && nic < inner.nics))
          throw new TrellisError('INVALID_ARGUMENT', `faults.failNic: nic must be 0..${inner.nics - 1}`);
        self.nic = nic;
      },
      killPeer(peer) {
        self.dead.add(peer.toString());
      },
      heal() {
        self.range = undefined;
        self.dropP = 0;
        self.nic = undefined;
      },
      get injected() {
        return { ...self.counts };
      },
    };
  }

  get kind(): string {
    return this.inner.kind;
  }
  get address(): NetAddr {
    return this.inner.address;
  }
  get nics(): number {
    return this.inner.nics;
  }
  get limits(): EngineLimits {
    return this.inner.limits;
  }
  get closed(): boolean {
    return this.inner.closed;
  }

  /** Run `post` through the faults: refuse, drop or delay it, else post it now. */
  private faulted(
    op: string,
    peers: ReadonlyArray<NetAddr | undefined>,
    opts: OpOptions,
    post: () => Promise<void>,
  ): Promise<void> {
    for (const p of peers)
      if (p && this.dead.has(p.toString())) {
        this.counts.peerKilled++;
        return Promise.reject(
          new TrellisError('PEER_LOST', `${op}: the peer ${p.toString()} was killed by the fault harness`, {
            op,
            peer: p.toString(),
          }),
        );
      }
    if (this.nic !== undefined) {
      this.counts.nicFailed++;
      return Promise.reject(
        new TrellisError('NIC_FAILED', `${op}: NIC ${this.nic} failed (fault harness)`, {
          op,
          nic: this.nic,
        }),
      );
    }
    if (this.dropP > 0 && this.rng.below(1_000_000) < this.dropP * 1_000_000) {
      this.counts.dropped++;
      return Promise.reject(new TrellisError(this.dropCode, `${op}: dropped by the fault harness`, { op }));
    }
    if (!this.range) return post();
    const [lo, hi] = this.range;
    const ms = lo + this.rng.below(hi - lo + 1);
    this.counts.delayed++;
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        clearTimeout(t);
        reject(
          new TrellisError('ABORTED', `${op}: aborted by its AbortSignal (before it was posted)`, { op }),
        );
      };
      const t = setTimeout(() => {
        opts.signal?.removeEventListener('abort', onAbort);
        post().then(resolve, reject);
      }, ms);
      if (opts.signal?.aborted) onAbort();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  registerMemory(src: MemorySource, opts?: RegisterOptions): Promise<MrHandle> {
    return this.inner.registerMemory(src, opts);
  }
  submitSend(peer: NetAddr, data: Uint8Array, opts: OpOptions = {}): Promise<void> {
    const copy = data instanceof Uint8Array ? data.slice() : data;
    return this.faulted('submitSend', [peer], opts ?? {}, () => this.inner.submitSend(peer, copy, opts));
  }
  submitRecvs(opts: RecvOptions, onRecv: (msg: RecvMessage) => void): Promise<void> {
    return this.inner.submitRecvs(opts, onRecv);
  }
  submitSingleWrite(req: SingleWriteRequest): Promise<void> {
    return this.faulted('submitSingleWrite', [req?.dst?.owner], req ?? {}, () =>
      this.inner.submitSingleWrite(req),
    );
  }
  submitPagedWrites(req: PagedWritesRequest): Promise<void> {
    return this.faulted('submitPagedWrites', [req?.dst?.owner], req ?? {}, () =>
      this.inner.submitPagedWrites(req),
    );
  }
  submitScatter(req: ScatterRequest): Promise<void> {
    const peers = Array.isArray(req?.targets) ? req.targets.map((t) => t?.dst?.owner) : [];
    return this.faulted('submitScatter', peers, req ?? {}, () => this.inner.submitScatter(req));
  }
  submitBarrier(req: BarrierRequest): Promise<void> {
    return this.faulted('submitBarrier', req?.group?.peers ?? [], req ?? {}, () =>
      this.inner.submitBarrier(req),
    );
  }
  submitImm(req: ImmRequest): Promise<void> {
    const dst = req?.dst as { owner?: NetAddr } | NetAddr | undefined;
    const peer = dst && 'owner' in dst && dst.owner ? dst.owner : (dst as NetAddr);
    return this.faulted('submitImm', [peer], req ?? {}, () => this.inner.submitImm(req));
  }
  /**
   * With no fault switched on, the inner engine's batch. Otherwise each request goes through its
   * own faulted submit and the outcomes are gathered: a fault then costs only the requests it hits
   * (a request the inner engine refuses as bad input becomes that request's outcome too).
   */
  submitBatch(requests: readonly TransferRequest[], opts: BatchOptions = {}): Promise<BatchResult> {
    const quiet = !this.range && this.dropP === 0 && this.nic === undefined && this.dead.size === 0;
    if (quiet || !Array.isArray(requests)) return this.inner.submitBatch(requests, opts);
    return Promise.all(
      requests.map((r) => {
        const req = { ...r, signal: r?.signal ?? opts?.signal, timeoutMs: r?.timeoutMs ?? opts?.timeoutMs };
        const p =
          req.kind === 'single'
            ? this.submitSingleWrite(req)
            : req.kind === 'paged'
              ? this.submitPagedWrites(req)
              : req.kind === 'scatter'
                ? this.submitScatter(req)
                : req.kind === 'barrier'
                  ? this.submitBarrier(req)
                  : this.submitImm(req as ImmRequest);
        return p.then(
          () => undefined,
          (e: unknown) =>
            e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e), { cause: e }),
        );
      }),
    ).then((errors) => ({ failed: errors.filter((e) => e !== undefined).length, errors }));
  }
  /** The inner engine's prepared writes; each post goes through the faults as one operation. */
  prepareWrites(req: PreparedWritesRequest): PreparedWrites {
    const inner = this.inner.prepareWrites(req);
    const post = (
      writes: Float64Array | readonly number[],
      opts: PreparedPostOptions = {},
    ): Promise<void> => {
      // A delayed post reads its writes later: copy them now, as the contract lets callers reuse them.
      const copy =
        writes instanceof Float64Array ? writes.slice() : Array.isArray(writes) ? [...writes] : writes;
      return this.faulted('PreparedWrites.post', [inner.dst.owner], opts ?? {}, () => inner.post(copy, opts));
    };
    return Object.freeze({ src: inner.src, dst: inner.dst, imm: inner.imm, post });
  }
  submitOnWatch(watcher: UvmWatcher, value: bigint, request: TransferRequest): Promise<void> {
    return this.inner.submitOnWatch(watcher, value, request);
  }
  submitOnImm(imm: number, total: number, request: TransferRequest): Promise<void> {
    return this.inner.submitOnImm(imm, total, request);
  }
  immCounter(imm: number): ImmCounter {
    return this.inner.immCounter(imm);
  }
  expectedImms(request: TransferRequest, target?: NetAddr): number {
    return this.inner.expectedImms(request, target);
  }
  addPeerGroup(peers: readonly NetAddr[]): PeerGroup {
    return this.inner.addPeerGroup(peers);
  }
  allocUvmWatcher(onChange: UvmWatcherCallback): UvmWatcher {
    return this.inner.allocUvmWatcher(onChange);
  }
  onPeerLost(cb: (peer: NetAddr, reason: TrellisError) => void): () => void {
    return this.inner.onPeerLost(cb);
  }
  quiesce(peer: NetAddr, opts?: WaitOptions): Promise<void> {
    return this.inner.quiesce(peer, opts);
  }
  stats(): EngineStats {
    return this.inner.stats();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
