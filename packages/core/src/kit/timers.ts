// The engine's own timers: operation deadlines (`timeoutMs`), wait and quiesce timeouts, probe
// back-offs, heartbeats, the watchdog. All of them on one Node timer (the earliest), and fired as
// well by the engine's polling loops — `pollUntil` and `poll()` run no event-loop turn, so a Node
// timer alone would not fire while a latency loop spins, and an operation would outlive its own
// deadline for as long as the loop ran.

/** One timer of a {@link Timers}: opaque to its users (pass it back to `cancel`). */
export interface Timer {
  /** When it is due (`performance.now()` ms). */
  at: number;
  /** Its place in the heap (-1: not armed). */
  i: number;
  readonly fn: () => void;
  /** Keeps the process alive while armed (as a Node timer that is not unref'd). */
  readonly keepAlive: boolean;
  /** Re-armed this many ms after each firing (0: once). */
  readonly every: number;
}

/**
 * A min-heap of timers behind one Node timer. `after`/`cancel` cost a heap push and removal
 * (no Node timer per operation); {@link Timers.runDue} fires what is due from any loop that keeps
 * the event loop from turning. Callbacks run on the JavaScript thread either way, once each.
 */
export class Timers {
  private readonly heap: Timer[] = [];
  private node: NodeJS.Timeout | undefined;
  /** When the Node timer fires (Infinity: none armed). It may fire before the earliest timer is due. */
  private nodeAt = Infinity;
  private alive = 0;
  private running = false;

  /** @param now - the clock, in ms (`performance.now` unless a test gives its own). */
  constructor(private readonly now: () => number = () => performance.now()) {}

  /** When the earliest timer is due (`performance.now()` ms; Infinity: none). */
  get next(): number {
    return this.heap.length ? this.heap[0]!.at : Number.POSITIVE_INFINITY;
  }

  /** Timers armed now. */
  get size(): number {
    return this.heap.length;
  }

  /** Run `fn` once, `ms` from now. `keepAlive` false: it does not keep the process alive. */
  after(ms: number, fn: () => void, keepAlive = true): Timer {
    const t: Timer = { at: this.now() + ms, i: -1, fn, keepAlive, every: 0 };
    this.push(t);
    return t;
  }

  /** Run `fn` every `ms` (> 0) until cancelled; it does not keep the process alive. */
  every(ms: number, fn: () => void): Timer {
    const t: Timer = { at: this.now() + ms, i: -1, fn, keepAlive: false, every: ms };
    this.push(t);
    return t;
  }

  /** Disarm `t` (nothing if it fired already, was cancelled, or is undefined). */
  cancel(t: Timer | undefined): void {
    if (!t || t.i < 0) return;
    this.removeAt(t.i);
    if (t.keepAlive && --this.alive === 0) this.node?.unref();
    // The Node timer stays armed for an earlier time (it finds nothing due, and re-arms): a
    // completion is not worth a clearTimeout and a setTimeout. An empty heap lets it go, so that
    // nothing keeps the process alive.
    if (!this.heap.length) this.disarmNode();
  }

  /**
   * Fire every timer due by `now`, earliest first (a timer armed by a callback for `now` or
   * earlier fires in the same call). Cheap when nothing is due: the polling loops call it
   * whenever `now >= next`.
   */
  runDue(now = this.now()): void {
    if (this.running) return;
    this.running = true;
    try {
      while (this.heap.length && this.heap[0]!.at <= now) {
        const t = this.heap[0]!;
        this.removeAt(0);
        if (t.every > 0) {
          // Keeps its phase; one a whole period late fires once and restarts a period from now.
          t.at = t.at + t.every > now ? t.at + t.every : now + t.every;
          this.insert(t);
        } else if (t.keepAlive && --this.alive === 0) {
          this.node?.unref();
        }
        try {
          t.fn();
        } catch (e) {
          // As from a Node timer: an uncaught exception (not one thrown out of the poll that ran
          // it), and the other timers still fire.
          queueMicrotask(() => {
            throw e;
          });
        }
      }
    } finally {
      this.running = false;
      this.armNode();
    }
  }

  /** Disarm everything (the engine closed): nothing fires from now on. */
  clear(): void {
    for (const t of this.heap) t.i = -1;
    this.heap.length = 0;
    this.alive = 0;
    this.disarmNode();
  }

  private push(t: Timer): void {
    this.insert(t);
    if (t.keepAlive && ++this.alive === 1) this.node?.ref();
    if (!this.running && t.at < this.nodeAt) this.armNode();
  }

  private readonly fire = (): void => {
    this.node = undefined;
    this.nodeAt = Number.POSITIVE_INFINITY;
    this.runDue();
  };

  /** The Node timer for the earliest timer, unless one fires before it already. */
  private armNode(): void {
    if (!this.heap.length) {
      this.disarmNode();
      return;
    }
    const at = this.heap[0]!.at;
    if (this.node && this.nodeAt <= at) return;
    if (this.node) clearTimeout(this.node);
    // Node fires a timer at whole milliseconds of its loop clock, possibly a little before `at`
    // by performance.now(): then nothing is due yet, and it is armed again for the rest (as it is
    // past Node's longest delay, about 24.8 days).
    const now = this.now();
    const ms = Math.min(2 ** 31 - 1, Math.max(1, Math.ceil(at - now)));
    this.node = setTimeout(this.fire, ms);
    this.nodeAt = Math.min(at, now + ms);
    if (this.alive === 0) this.node.unref();
  }

  private disarmNode(): void {
    if (this.node) clearTimeout(this.node);
    this.node = undefined;
    this.nodeAt = Number.POSITIVE_INFINITY;
  }

  private insert(t: Timer): void {
    const h = this.heap;
    t.i = h.length;
    h.push(t);
    this.up(t.i);
  }

  private removeAt(i: number): void {
    const h = this.heap;
    const t = h[i]!;
    const last = h.pop()!;
    t.i = -1;
    if (i < h.length) {
      h[i] = last;
      last.i = i;
      this.down(i);
      this.up(last.i);
    }
  }

  private up(i: number): void {
    const h = this.heap;
    const t = h[i]!;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const q = h[p]!;
      if (q.at <= t.at) break;
      h[i] = q;
      q.i = i;
      i = p;
    }
    h[i] = t;
    t.i = i;
  }

  private down(i: number): void {
    const h = this.heap;
    const n = h.length;
    const t = h[i]!;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && h[c + 1]!.at < h[c]!.at) c++;
      const q = h[c]!;
      if (q.at >= t.at) break;
      h[i] = q;
      q.i = i;
      i = c;
    }
    h[i] = t;
    t.i = i;
  }
}
