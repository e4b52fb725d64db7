// ImmCounterTable: one credit counter per immediate value, which backends feed from their
// completion path and users wait on (in call order, with deadlines and aborts).
import { TrellisError } from '../errors.js';
import type { ImmCounter, WaitOptions } from '../types.js';
import { type Timer, Timers } from './timers.js';
import { checkFields, checkImm, checkOpOptions, OP_OPTION_FIELDS, show } from './validate.js';

interface Waiter {
  n: number;
  resolve: () => void;
  reject: (e: TrellisError) => void;
  cleanup: () => void;
}

/** A reaction armed on a total: `fire` runs once arrivals reach `at`. */
interface TotalTrigger {
  at: number;
  fire: () => void;
}

class Counter implements ImmCounter {
  available = 0;
  arrivals = 0;
  readonly waiters: Waiter[] = [];
  triggers: TotalTrigger[] = [];
  /** The need last told to the table's listener (0: none, or told none waits). */
  private armed = 0;
  /**
   * Latency mode (native engines): a word the engine's worker keeps equal to the arrivals of this
   * value read from its NICs (mod 2^32), stored before the batch that reports them is handed over,
   * so a poll of the counter sees an arrival with one load. See {@link ImmCounterTable.share}.
   */
  private sharedWords: Uint32Array | undefined;
  private sharedSlot = 0;
  /** NIC arrivals counted here (from batch records or the shared word), and the records' sum. */
  private nicSeen = 0;
  private nicBatched = 0;

  constructor(
    readonly imm: number,
    private readonly table: ImmCounterTable,
  ) {}

  get value(): number {
    this.sync();
    return this.available;
  }
  get total(): number {
    this.sync();
    return this.arrivals;
  }

  /** @internal Count the word's arrivals that no batch record has brought yet; whether there were any. */
  sync(): boolean {
    const words = this.sharedWords;
    if (!words) return false;
    // Modulo 2^32: the word wraps; a word behind what the records brought reads as a huge step
    // and is ignored (the records came first).
    const d = (Atomics.load(words, this.sharedSlot) - this.nicSeen) >>> 0;
    if (d === 0 || d >= 0x80000000) return false;
    this.nicSeen += d;
    this.arrive(d);
    return true;
  }

  /**
   * @internal Share `words[slot]` (see {@link Counter.sharedWords}). The word starts at what was
   * counted so far, until the worker stores its own count (never less): a word the worker has not
   * written yet must not read as arrivals.
   */
  share(words: Uint32Array, slot: number): void {
    Atomics.store(words, slot, this.nicSeen >>> 0);
    this.sharedWords = words;
    this.sharedSlot = slot;
  }

  /** @internal NIC arrivals counted from the word whose batch records have not come yet. */
  unreported(): number {
    return this.nicSeen - this.nicBatched;
  }

  /** @internal A batch's record of `count` NIC arrivals: only what the shared word did not bring. */
  arriveNic(count: number): void {
    this.nicBatched += count;
    const d = this.nicBatched - this.nicSeen;
    if (d <= 0) {
      // The word counted them already. The worker may have dropped the first waiter's need on
      // seeing these records still in its batch: tell it again.
      if (this.waiters.length) this.rearm();
      return;
    }
    this.nicSeen = this.nicBatched;
    this.arrive(d);
  }

  take(n = 1): boolean {
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `immCounter(${this.imm}).take: n must be a non-negative integer, got ${show(n)}`,
        { op: `immCounter(${this.imm}).take` },
      );
    const closed = this.table.closedError();
    if (closed) throw closed;
    if (this.available < n) this.sync();
    if (this.waiters.length > 0 || this.available < n) return false;
    this.available -= n;
    return true;
  }

  wait(n: number, opts: WaitOptions = {}): Promise<void> {
    const op = `immCounter(${this.imm}).wait`;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
      return Promise.reject(
        new TrellisError('INVALID_ARGUMENT', `${op}: n must be a non-negative integer, got ${show(n)}`, {
          op,
        }),
      );
    }
    try {
      if (typeof opts !== 'object' || opts === null)
        throw new TrellisError('INVALID_ARGUMENT', `${op}: opts must be an object ({timeoutMs?, signal?})`, {
          op,
        });
      checkFields(op, opts, OP_OPTION_FIELDS, 'its options');
      // A signal that is not an AbortSignal would throw later, from a timer (uncaught).
      checkOpOptions(op, opts);
    } catch (e) {
      return Promise.reject(e);
    }
    const closed = this.table.closedError();
    if (closed) return Promise.reject(closed);
    if (opts.signal?.aborted)
      return Promise.reject(new TrellisError('ABORTED', `${op}: aborted before waiting`, { op }));
    // Fast path: credits already there and nobody queued ahead.
    if (this.available < n) this.sync();
    if (this.waiters.length === 0 && this.available >= n) {
      this.available -= n;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      let timer: Timer | undefined;
      const onAbort = (): void => {
        this.remove(w);
        reject(
          new TrellisError(
            'ABORTED',
            `${op}(${n}): aborted with ${this.available} of ${n} credits available`,
            { op },
          ),
        );
      };
      const w: Waiter = {
        n,
        resolve,
        reject,
        cleanup: () => {
          this.table.timers.cancel(timer);
          opts.signal?.removeEventListener('abort', onAbort);
        },
      };
      if (opts.timeoutMs !== undefined) {
        timer = this.table.timers.after(opts.timeoutMs, () => {
          this.remove(w);
          reject(
            new TrellisError(
              'TIMEOUT',
              `${op}(${n}): timed out after ${opts.timeoutMs} ms with ${this.available} of ${n} credits available`,
              { op },
            ),
          );
        });
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(w);
      if (this.waiters.length === 1) this.rearm();
    });
  }

  private remove(w: Waiter): void {
    const i = this.waiters.indexOf(w);
    if (i >= 0) this.waiters.splice(i, 1);
    w.cleanup();
    // A large waiter leaving the head may unblock smaller ones behind it.
    this.drain();
  }

  arrive(count: number): void {
    this.available += count;
    this.arrivals += count;
    if (this.triggers.length) {
      const due = this.triggers.filter((t) => this.arrivals >= t.at);
      if (due.length) {
        this.triggers = this.triggers.filter((t) => this.arrivals < t.at);
        for (const t of due) t.fire();
      }
    }
    this.drain();
  }

  drain(): void {
    while (this.waiters.length > 0 && this.available >= this.waiters[0]!.n) {
      const w = this.waiters.shift()!;
      this.available -= w.n;
      w.cleanup();
      w.resolve();
    }
    this.rearm();
  }

  /**
   * Tell the table's listener how many more arrivals the first waiter needs (after any change to
   * the credits or the queue; 0 once nobody waits). Told again after every arrival while one
   * waits: arrivals JS raised itself (control messages) are not counted where the listener is.
   */
  private rearm(): void {
    const listen = this.table.needListener;
    if (!listen) return;
    const head = this.waiters[0];
    // A first waiter is one drain() could not serve: it needs at least one more arrival.
    const need = head ? head.n - this.available : 0;
    if (need === 0 && this.armed === 0) return;
    this.armed = need;
    listen(this.imm, need);
  }

  fail(err: TrellisError): void {
    for (const w of this.waiters.splice(0)) {
      w.cleanup();
      w.reject(err);
    }
  }
}

/**
 * The immediate-counter table: one credit counter per immediate value. Backends call
 * {@link ImmCounterTable.arrive} from their completion path (once per batch and value, not per work
 * request); users reach counters through `engine.immCounter(imm)`.
 */
export class ImmCounterTable {
  /**
   * @param timers - where waits' timeouts are armed: the engine's, which its polling loops fire
   * too (a table of its own by default).
   */
  constructor(readonly timers: Timers = new Timers()) {}

  private readonly counters = new Map<number, Counter>();
  private closeErr: TrellisError | undefined;
  /** @internal */
  needListener: ((imm: number, need: number) => void) | undefined;

  /**
   * Call `listener(imm, need)` whenever the first waiter on a counter needs `need` more arrivals
   * than it has (and with 0 once none waits): native engines wake their event loop for arrivals
   * only where they are needed.
   */
  onNeed(listener: (imm: number, need: number) => void): void {
    this.needListener = listener;
  }

  /** The counter for `imm`, created on first use. */
  get(imm: number): ImmCounter {
    checkImm('immCounter', imm, true);
    return this.counter(imm);
  }

  /** The counter of a checked `imm`, created on first use. */
  private counter(imm: number): Counter {
    let c = this.counters.get(imm);
    if (!c) {
      c = new Counter(imm, this);
      this.counters.set(imm, c);
    }
    return c;
  }

  /** Record `count` arrivals of `imm`. */
  arrive(imm: number, count = 1): void {
    this.counter(imm).arrive(count);
  }

  /**
   * Record a native batch's `count` arrivals of `imm` read from the NICs — the stream a shared
   * word counts too (see {@link ImmCounterTable.share}): only what the word has not brought yet
   * counts. Arrivals counted otherwise (control messages, the same-host lane) go to `arrive`.
   */
  arriveNic(imm: number, count: number): void {
    this.counter(imm).arriveNic(count);
  }

  /**
   * Latency mode, native engines: from now on `words[slot]` is kept by the engine's worker at the
   * arrivals of `imm` read from its NICs since the engine started (mod 2^32), stored before the
   * batch that reports them; the counter reads it (one load) whenever it has too few credits, so a
   * spinning `take` sees an arrival without a poll. Either source may come first; each arrival
   * counts once.
   */
  share(imm: number, words: Uint32Array, slot: number): void {
    this.counter(imm).share(words, slot);
  }

  /** NIC arrivals of `imm` counted from its shared word whose batch records have not come yet. */
  unreported(imm: number): number {
    return this.counters.get(imm)?.unreported() ?? 0;
  }

  /** Count what `imm`'s shared word holds beyond what was counted; whether it held any. */
  sync(imm: number): boolean {
    return this.counters.get(imm)?.sync() ?? false;
  }

  /**
   * Run `fire` once the total arrivals of `imm` reach `at` (at once if they have). Returns a
   * function that disarms it. Engines without a native thread implement reactions with it.
   */
  onTotal(imm: number, at: number, fire: () => void): () => void {
    const c = this.get(imm) as Counter;
    if (c.arrivals >= at) {
      fire();
      return () => {};
    }
    const t: TotalTrigger = { at, fire };
    c.triggers.push(t);
    return () => {
      c.triggers = c.triggers.filter((x) => x !== t);
    };
  }

  /** Total arrivals over every value. */
  totalArrivals(): number {
    let n = 0;
    for (const c of this.counters.values()) n += c.arrivals;
    return n;
  }

  closedError(): TrellisError | undefined {
    return this.closeErr;
  }

  /** Reject every waiter with `err`; later waits reject with it too. */
  close(err: TrellisError): void {
    this.closeErr = err;
    for (const c of this.counters.values()) c.fail(err);
  }
}
