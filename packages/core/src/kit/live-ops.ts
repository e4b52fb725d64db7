// The tables every operation enters and leaves: the engine's live operations (an intrusive list)
// and a backend's operations by id (a slot array). A small write enters and leaves each once, so
// they must cost no allocation and no rehashing per operation: a V8 Map or Set churned by one set
// and one delete per operation reallocates its table every few dozen operations (the deleted
// entries fill it), which a profile of 4 KiB writes showed as a twentieth of the JavaScript thread.
import type { PendingOp } from './pending-op.js';

/** Operation ids are 32-bit on the wire (completion records): they wrap to 1 after this. */
export const MAX_OP_ID = 0xffff_ffff;

/**
 * The engine's operations not yet settled, oldest first: a doubly linked list through the
 * operations themselves ({@link PendingOp.liveNext} / {@link PendingOp.livePrev}).
 */
export class LiveOps {
  private head: PendingOp | undefined;
  private tail: PendingOp | undefined;
  size = 0;

  add(op: PendingOp): void {
    if (op.live) return;
    op.live = true;
    op.livePrev = this.tail;
    op.liveNext = undefined;
    if (this.tail) this.tail.liveNext = op;
    else this.head = op;
    this.tail = op;
    this.size++;
  }

  delete(op: PendingOp): void {
    if (!op.live) return;
    op.live = false;
    const { livePrev: prev, liveNext: next } = op;
    if (prev) prev.liveNext = next;
    else this.head = next;
    if (next) next.livePrev = prev;
    else this.tail = prev;
    // A settled operation links to nothing: it keeps no neighbour alive.
    op.livePrev = op.liveNext = undefined;
    this.size--;
  }

  /** The operations now, oldest first (a copy: settling them while iterating is safe). */
  toArray(): PendingOp[] {
    const out = new Array<PendingOp>(this.size);
    let i = 0;
    for (let op = this.head; op; op = op.liveNext) out[i++] = op;
    return out;
  }
}

/**
 * A backend's operations handed to its worker, by id. Ids increase and operations mostly settle
 * in the order they were posted, so each goes into the slot `id mod size` and nearly always finds
 * it free; one whose slot an older operation still holds (a long receive, an operation stuck at a
 * dead peer) goes into a Map beside it. The slots grow (to at most 2^16) while that Map is more
 * than a few entries, so a window of operations larger than the slots stays off the Map.
 */
export class OpSlots {
  private slots: Array<PendingOp | undefined>;
  private mask: number;
  private readonly spill = new Map<number, PendingOp>();
  size = 0;

  constructor(bits = 8) {
    this.slots = new Array<PendingOp | undefined>(1 << bits).fill(undefined);
    this.mask = (1 << bits) - 1;
  }

  set(op: PendingOp): void {
    if (this.get(op.id) === op) return;
    const i = op.id & this.mask;
    if (this.slots[i] === undefined) this.slots[i] = op;
    else this.spill.set(op.id, op);
    this.size++;
    if (this.spill.size > 16 && this.slots.length < 1 << 16) this.grow();
  }

  get(id: number): PendingOp | undefined {
    const op = this.slots[id & this.mask];
    if (op !== undefined && op.id === id) return op;
    return this.spill.size ? this.spill.get(id) : undefined;
  }

  has(id: number): boolean {
    return this.get(id) !== undefined;
  }

  delete(id: number): boolean {
    const i = id & this.mask;
    const op = this.slots[i];
    if (op !== undefined && op.id === id) this.slots[i] = undefined;
    else if (!this.spill.delete(id)) return false;
    this.size--;
    return true;
  }

  /** The operations now (a copy). */
  values(): PendingOp[] {
    const out: PendingOp[] = [];
    for (const op of this.slots) if (op !== undefined) out.push(op);
    for (const op of this.spill.values()) out.push(op);
    return out;
  }

  clear(): void {
    this.slots.fill(undefined);
    this.spill.clear();
    this.size = 0;
  }

  /** Twice the slots; every operation is placed again (spilled ones move in where theirs is free). */
  private grow(): void {
    const all = this.values();
    const bits = Math.log2(this.slots.length) + 1;
    this.slots = new Array<PendingOp | undefined>(1 << bits).fill(undefined);
    this.mask = (1 << bits) - 1;
    this.spill.clear();
    this.size = 0;
    for (const op of all) this.set(op);
  }
}
