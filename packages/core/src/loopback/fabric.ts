// The loopback fabric: engines in one process that reach each other through it, deliveries in a
// seeded random order, and the FaultInjector (kill a peer, fail a NIC, delay) the fault cases use.
import { MAX_NICS, NetAddr } from '../addr.js';
import { MrDesc } from '../desc.js';
import { TrellisError } from '../errors.js';
import { show } from '../kit/validate.js';
import type { TransferEngine } from '../types.js';
import { LoopbackEngine, type LoopbackEngineOptions, type LoopbackWire, type WireEvent } from './engine.js';
import { Prng } from './prng.js';

/** Faults the loopback fabric can inject. The same interface is implemented by other test harnesses. */
export interface FaultInjector {
  /**
   * Kill `engine` as if its process died: its own pending operations reject with `CLOSED`, every
   * pending and later operation of other engines to it rejects with `PEER_LOST`. Nothing hangs.
   */
  killPeer(engine: TransferEngine): void;
  /** Fail NIC `nic` of `engine`: work requests through it (either end) fail with `NIC_FAILED` until restored. */
  failNic(engine: TransferEngine, nic: number): void;
  restoreNic(engine: TransferEngine, nic: number): void;
  /** Delay every event by a random time in `[minMs, maxMs]`; `undefined` turns delays off. */
  setDelay(range: readonly [number, number] | undefined): void;
  /**
   * Work `engine` posts on NIC `nic` lands, but its completion reports `NIC_FAILED` (while `lost`):
   * the in-doubt failure of a NIC that died after the target saw the write. Optional.
   */
  loseCompletions?(engine: TransferEngine, nic: number, lost: boolean): void;
  /**
   * NIC `nic` of `engine` fails without an error (while `silent`): work requests through it (either
   * end) neither land nor complete — they settle only at a deadline or by cancellation — and
   * engine control messages sent through it are reported sent but never arrive. Optional.
   */
  silenceNic?(engine: TransferEngine, nic: number, silent: boolean): void;
}

/** Options of {@link createLoopbackFabric}. */
export interface LoopbackFabricOptions {
  /** Default NICs per engine (1..4). Default 1. */
  nics?: number;
  /** Seed of the delivery order and of rkeys. Default 1. */
  seed?: number;
  /** Deliver pending work in a seeded random order (default `true`); `false` delivers FIFO (debugging only). */
  reorder?: boolean;
  /** Faults active from the start. */
  faults?: { delayMs?: readonly [number, number] };
  /** Events processed per macrotask before yielding to I/O and timers. Default 64. */
  batch?: number;
}

/** An in-process fabric of engines that implements the whole contract, adversarially. */
export interface LoopbackFabric {
  readonly nics: number;
  readonly seed: number;
  /** Create an engine on this fabric. */
  createEngine(opts?: LoopbackEngineOptions): LoopbackEngine;
  readonly faults: FaultInjector;
  /** Events waiting to run (deliveries and completions). */
  readonly pending: number;
  /** Resolve once no event is pending (useful in tests after everything settled). */
  idle(): Promise<void>;
  /** Close every engine. */
  close(): Promise<void>;
}

type Event = WireEvent;

/** @internal Shared state of one fabric; engines reach each other through it. */
export class FabricCore implements LoopbackFabric, FaultInjector, LoopbackWire {
  readonly id: Uint8Array;
  readonly rng: Prng;
  private readonly engines = new Map<number, LoopbackEngine>();
  private nextEngine = 1;
  private queue: Event[] = [];
  private pumping = false;
  private delayed = 0;
  private delay: readonly [number, number] | undefined;
  private idleWaiters: Array<() => void> = [];
  private readonly reorder: boolean;
  private readonly batch: number;

  constructor(
    readonly nics: number,
    readonly seed: number,
    opts: LoopbackFabricOptions,
  ) {
    this.rng = new Prng(seed);
    this.id = new Uint8Array(8);
    // The fabric id is random per fabric (not seeded) so two fabrics never accept each other's addresses.
    crypto.getRandomValues(this.id);
    this.reorder = opts.reorder ?? true;
    this.batch = opts.batch ?? 64;
    this.delay = opts.faults?.delayMs;
  }

  get faults(): FaultInjector {
    return this;
  }

  get pending(): number {
    return this.queue.length + this.delayed;
  }

  createEngine(opts: LoopbackEngineOptions = {}): LoopbackEngine {
    if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: pass an options object (e.g. {nics: 2}) or nothing, got ${opts === null ? 'null' : Array.isArray(opts) ? 'an array' : JSON.stringify(opts)}`,
      );
    const nics = opts.nics ?? this.nics;
    if (!Number.isInteger(nics) || nics < 1 || nics > MAX_NICS) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: nics must be an integer in 1..${MAX_NICS}, got ${show(nics)}`,
      );
    }
    const engineId = this.nextEngine++;
    const nicAddrs: Uint8Array[] = [];
    for (let i = 0; i < nics; i++) {
      const b = new Uint8Array(13);
      b.set(this.id, 0);
      new DataView(b.buffer).setUint32(8, engineId, true);
      b[12] = i;
      nicAddrs.push(b);
    }
    const address = new NetAddr('loopback', 1, nicAddrs);
    const e = new LoopbackEngine(this, engineId, address, opts);
    this.engines.set(engineId, e);
    return e;
  }

  /** The live engine behind `addr`; throws UNKNOWN_PEER or PEER_LOST. */
  resolve(addr: NetAddr, op: string): LoopbackEngine {
    const first = addr.nics[0]!;
    const sameFabric = first.length === 13 && this.id.every((b, i) => first[i] === b);
    const id = sameFabric ? new DataView(first.buffer, first.byteOffset).getUint32(8, true) : -1;
    const e = this.engines.get(id);
    if (!sameFabric || !e?.address.samePeer(addr)) {
      throw new TrellisError(
        'UNKNOWN_PEER',
        `${op}: no engine with address ${addr.toString()} on this loopback fabric`,
        { op, peer: addr.toString() },
      );
    }
    if (e.address.generation !== addr.generation) {
      throw new TrellisError(
        'PEER_LOST',
        `${op}: the peer's address is of generation ${addr.generation}; it is now ${e.address.generation}`,
        { op, peer: addr.toString() },
      );
    }
    if (e.dead || e.closed) {
      throw new TrellisError('PEER_LOST', `${op}: the peer ${e.dead ? 'was killed' : 'closed'}`, {
        op,
        peer: addr.toString(),
      });
    }
    return e;
  }

  /** Queue `run`; it runs later, after a random choice among everything pending. */
  schedule(run: () => void): Event {
    const ev: Event = { run, cancelled: false };
    const d = this.delay;
    if (d && d[1] > 0) {
      this.delayed++;
      setTimeout(
        () => {
          this.delayed--;
          this.enqueue(ev);
        },
        this.rng.between(d[0], d[1]),
      );
    } else {
      this.enqueue(ev);
    }
    return ev;
  }

  private enqueue(ev: Event): void {
    this.queue.push(ev);
    if (!this.pumping) {
      this.pumping = true;
      setImmediate(() => this.pump());
    }
  }

  private pump(): void {
    let n = 0;
    while (this.queue.length > 0 && n < this.batch) {
      let ev: Event;
      if (this.reorder) {
        const i = this.rng.below(this.queue.length);
        ev = this.queue[i]!;
        this.queue[i] = this.queue[this.queue.length - 1]!;
        this.queue.pop();
      } else {
        ev = this.queue.shift()!;
      }
      if (ev.cancelled) continue;
      n++;
      try {
        ev.run();
      } catch (e) {
        // A bug in an event must not stall every other delivery; report it loudly.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
    if (this.queue.length > 0) {
      setImmediate(() => this.pump());
      return;
    }
    this.pumping = false;
    if (this.delayed === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  idle(): Promise<void> {
    if (this.pending === 0 && !this.pumping) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Random rkey for a new region. */
  rkey(): bigint {
    return this.rng.u64();
  }

  /** Build a descriptor for a region of `engine`. */
  desc(engine: LoopbackEngine, regionId: number, length: number, rkeys: bigint[] | undefined): MrDesc {
    const base = BigInt(regionId) << 32n;
    return new MrDesc(engine.address, base, length, rkeys ? rkeys.map((rkey) => ({ addr: base, rkey })) : []);
  }

  private mine(engine: TransferEngine, op: string): LoopbackEngine {
    if (!(engine instanceof LoopbackEngine) || engine.fabric !== this) {
      throw new TrellisError('INVALID_ARGUMENT', `${op}: not an engine of this loopback fabric`);
    }
    return engine;
  }

  killPeer(engine: TransferEngine): void {
    this.mine(engine, 'faults.killPeer').kill();
  }

  loseCompletions(engine: TransferEngine, nic: number, lost: boolean): void {
    this.mine(engine, 'faults.loseCompletions').setLostCompletions(nic, lost);
  }

  failNic(engine: TransferEngine, nic: number): void {
    this.mine(engine, 'faults.failNic').setNicUp(nic, false);
  }

  silenceNic(engine: TransferEngine, nic: number, silent: boolean): void {
    this.mine(engine, 'faults.silenceNic').setNicSilent(nic, silent);
  }

  restoreNic(engine: TransferEngine, nic: number): void {
    this.mine(engine, 'faults.restoreNic').setNicUp(nic, true);
  }

  setDelay(range: readonly [number, number] | undefined): void {
    if (range !== undefined && !(range.length === 2 && range[0] >= 0 && range[1] >= range[0])) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'faults.setDelay: expected [minMs, maxMs] with 0 <= minMs <= maxMs',
      );
    }
    this.delay = range;
  }

  async close(): Promise<void> {
    await Promise.all([...this.engines.values()].map((e) => e.close()));
  }
}

/**
 * Create an in-process fabric that implements the whole contract without hardware — the executable
 * specification. It is adversarial on purpose: every write is cut into per-NIC work requests that
 * land independently, and every pending delivery and completion runs in a seeded random order
 * (never FIFO), so code that leans on ordering fails here first.
 *
 * @example
 * ```ts
 * const fabric = createLoopbackFabric({ nics: 2, seed: 7 });
 * const a = fabric.createEngine();
 * const b = fabric.createEngine();
 * const src = await a.registerMemory(1 << 20);
 * const dst = await b.registerMemory(1 << 20, { remote: true });
 * src.buffer!.fill(42);
 * const done = b.immCounter(5).wait(b.expectedImms({ kind: 'single', src, length: 1 << 20, dst: dst.desc, imm: 5 }));
 * await a.submitSingleWrite({ src, length: 1 << 20, dst: dst.desc, imm: 5 });
 * await done; // dst.buffer is all 42
 * ```
 */
export function createLoopbackFabric(opts: LoopbackFabricOptions = {}): LoopbackFabric {
  const nics = opts.nics ?? 1;
  if (!Number.isInteger(nics) || nics < 1 || nics > MAX_NICS) {
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `createLoopbackFabric: nics must be an integer in 1..${MAX_NICS}, got ${show(nics)}`,
    );
  }
  const seed = opts.seed ?? 1;
  if (!Number.isInteger(seed))
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `createLoopbackFabric: seed must be an integer, got ${show(seed)}`,
    );
  return new FabricCore(nics, seed, opts);
}
