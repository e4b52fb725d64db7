// The tables every operation passes through (kit/live-ops.ts), the 32-bit op ids' wrap, and the
// shared call sites.
import { describe, expect, it } from 'vitest';
import { CallSite, captureCallSites, createLoopbackFabric } from '../src/index.js';
import { LiveOps, MAX_OP_ID, OpSlots } from '../src/kit/live-ops.js';
import type { PendingOp } from '../src/kit/pending-op.js';

/** What the tables read of an operation: its id and the list links. */
const fakeOp = (id: number) =>
  ({ id, live: false, livePrev: undefined, liveNext: undefined }) as unknown as PendingOp;

describe('LiveOps', () => {
  it('keeps operations oldest first; deletes from the head, middle and tail unlink them', () => {
    const list = new LiveOps();
    const ops = [1, 2, 3, 4, 5].map(fakeOp);
    for (const op of ops) list.add(op);
    list.add(ops[2]!); // already in: no second entry
    expect(list.size).toBe(5);
    expect(list.toArray().map((o) => o.id)).toEqual([1, 2, 3, 4, 5]);
    list.delete(ops[2]!);
    list.delete(ops[0]!);
    list.delete(ops[4]!);
    list.delete(ops[4]!); // not in: nothing happens
    expect(list.size).toBe(2);
    expect(list.toArray().map((o) => o.id)).toEqual([2, 4]);
    for (const op of [ops[0]!, ops[2]!, ops[4]!]) {
      expect(op.live).toBe(false);
      expect(op.livePrev).toBeUndefined();
      expect(op.liveNext).toBeUndefined();
    }
    list.add(ops[0]!); // back in, at the tail
    expect(list.toArray().map((o) => o.id)).toEqual([2, 4, 1]);
    for (const op of list.toArray()) list.delete(op); // settling while walking a copy
    expect(list.size).toBe(0);
    expect(list.toArray()).toEqual([]);
  });
});

describe('OpSlots', () => {
  it('finds every operation by id, in its slot or spilled beside it, and forgets deleted ones', () => {
    const slots = new OpSlots(2); // 4 slots
    const ops = [1, 2, 5, 9, 3].map(fakeOp); // 5 and 9 share slot 1 with 1
    for (const op of ops) slots.set(op);
    slots.set(ops[0]!); // already in
    expect(slots.size).toBe(5);
    for (const op of ops) expect(slots.get(op.id)).toBe(op);
    expect(slots.get(13)).toBeUndefined(); // slot 1, not an op
    expect(slots.has(4)).toBe(false);
    expect(slots.delete(9)).toBe(true); // spilled
    expect(slots.delete(1)).toBe(true); // in its slot
    expect(slots.delete(1)).toBe(false);
    expect(slots.delete(13)).toBe(false);
    expect(slots.size).toBe(3);
    expect(slots.get(5)?.id).toBe(5);
    expect(
      slots
        .values()
        .map((o) => o.id)
        .sort((a, b) => a - b),
    ).toEqual([2, 3, 5]);
    slots.clear();
    expect(slots.size).toBe(0);
    expect(slots.get(5)).toBeUndefined();
  });

  it('grows while many operations spill, and keeps every one reachable', () => {
    const slots = new OpSlots(2);
    const ops = Array.from({ length: 300 }, (_, i) => fakeOp(i + 1));
    for (const op of ops) slots.set(op);
    expect(slots.size).toBe(300);
    for (const op of ops) expect(slots.get(op.id)).toBe(op);
    // Out of order, as completions of different peers come.
    for (let i = 299; i >= 0; i -= 2) expect(slots.delete(i + 1)).toBe(true);
    expect(slots.size).toBe(150);
    for (const op of ops) expect(slots.get(op.id)).toBe(op.id % 2 === 1 ? op : undefined);
  });

  it('takes ids near 2^32 (bitwise slots of ids above 2^31)', () => {
    const slots = new OpSlots(4);
    const ids = [MAX_OP_ID, MAX_OP_ID - 1, 2 ** 31, 2 ** 31 + 16, 1];
    const ops = ids.map(fakeOp);
    for (const op of ops) slots.set(op);
    for (const op of ops) expect(slots.get(op.id)).toBe(op);
    expect(slots.get(MAX_OP_ID - 16)).toBeUndefined();
  });
});

describe('operation ids', () => {
  it('wrap to 1 after 2^32-1, skipping ids still held, and every operation across the wrap settles', async () => {
    const fabric = createLoopbackFabric();
    const a = fabric.createEngine();
    const b = fabric.createEngine();
    const src = await a.registerMemory(64);
    const dst = await b.registerMemory(64, { remote: true });
    src.buffer!.set(Array.from({ length: 64 }, (_, i) => 200 - i));
    (a as unknown as { nextOpId: number }).nextOpId = MAX_OP_ID - 3;
    const writes = Array.from({ length: 8 }, (_, i) =>
      a.submitSingleWrite({ src, srcOffset: i * 8, length: 8, dst: dst.desc, dstOffset: i * 8, imm: 5 }),
    );
    await Promise.all(writes);
    expect([...dst.buffer!]).toEqual([...src.buffer!]);
    expect(b.immCounter(5).total).toBe(8);
    expect((a as unknown as { nextOpId: number }).nextOpId).toBe(5);
    expect(a.stats().ops.inFlight).toBe(0);
    expect(a.stats().ops.completed).toBe(8);
    await fabric.close();
  });
});

describe('CallSite.of', () => {
  it('shares one site per name while stacks are off, and makes one with the stack while they are on', () => {
    const was = captureCallSites(false);
    try {
      const s = CallSite.of('submitSingleWrite');
      expect(CallSite.of('submitSingleWrite')).toBe(s);
      expect(CallSite.of('submitImm')).not.toBe(s);
      expect(s.op).toBe('submitSingleWrite');
      captureCallSites(true);
      const t = CallSite.of('submitSingleWrite');
      expect(t).not.toBe(s);
      expect(CallSite.of('submitSingleWrite')).not.toBe(t);
      const err = t.attach(new Error('x'));
      expect(err.code).toBe('INTERNAL');
      expect(err.stack).toContain('15-live-ops.test');
    } finally {
      captureCallSites(was);
    }
  });
});
