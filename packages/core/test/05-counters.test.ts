// ImmCounterTable: credit semantics, waiter order, deadlines and aborts.
import { describe, expect, it } from 'vitest';
import { TrellisError } from '../src/index.js';
import { ImmCounterTable } from '../src/kit/index.js';

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    return e instanceof TrellisError ? e.code : String(e);
  }
}

describe('ImmCounterTable (credit semantics)', () => {
  it('arrivals before a wait are credits; a wait takes exactly n', async () => {
    const t = new ImmCounterTable();
    t.arrive(7, 5);
    const c = t.get(7);
    await c.wait(3);
    expect([c.value, c.total]).toEqual([2, 5]);
    await c.wait(2);
    expect(c.value).toBe(0);
    expect(t.totalArrivals()).toBe(5);
  });

  it('a big waiter at the head is served before a small one behind it (FIFO, no starvation)', async () => {
    const t = new ImmCounterTable();
    const c = t.get(1);
    const order: string[] = [];
    const big = c.wait(3).then(() => order.push('big'));
    const small = c.wait(1).then(() => order.push('small'));
    t.arrive(1, 1);
    await Promise.resolve();
    expect(order).toEqual([]);
    t.arrive(1, 3);
    await Promise.all([big, small]);
    expect(order).toEqual(['big', 'small']);
    expect(c.value).toBe(0);
  });

  it('a head waiter that times out lets the ones behind it through', async () => {
    const t = new ImmCounterTable();
    const c = t.get(1);
    t.arrive(1, 1);
    const big = c.wait(5, { timeoutMs: 5 });
    const small = c.wait(1);
    expect(await code(big)).toBe('TIMEOUT');
    expect(await code(small)).toBe('resolved');
    expect(c.value).toBe(0);
  });

  it('abort and close reject waiters without taking credits; later waits reject CLOSED', async () => {
    const t = new ImmCounterTable();
    const c = t.get(2);
    const ac = new AbortController();
    const w = c.wait(1, { signal: ac.signal });
    ac.abort();
    expect(await code(w)).toBe('ABORTED');
    const w2 = c.wait(4);
    t.arrive(2, 3);
    t.close(new TrellisError('CLOSED', 'closed'));
    expect(await code(w2)).toBe('CLOSED');
    expect(c.value).toBe(3);
    expect(await code(c.wait(1))).toBe('CLOSED');
  });

  it('validates n, timeoutMs and imm', async () => {
    const t = new ImmCounterTable();
    expect(await code(t.get(1).wait(1.5))).toBe('INVALID_ARGUMENT');
    expect(await code(t.get(1).wait(1, { timeoutMs: Number.NaN }))).toBe('INVALID_ARGUMENT');
    // A signal that is not an AbortSignal is refused at once (it used to throw later, from the timer).
    const bad = t.get(1).wait(1, { signal: 'nope' as unknown as AbortSignal, timeoutMs: 5 });
    expect(await bad.catch((e: TrellisError) => `${e.code}: ${e.message}`)).toBe(
      'INVALID_ARGUMENT: immCounter(1).wait: signal must be an AbortSignal',
    );
    expect(await code(t.get(1).wait(1, null as unknown as object))).toBe('INVALID_ARGUMENT');
    await new Promise((r) => setTimeout(r, 20)); // no timer left to throw
    expect(t.get(1).value).toBe(0);
    expect(() => t.get(-1)).toThrow(TrellisError);
    expect(() => t.get(2 ** 32)).toThrow(/imm must be an integer in 0\.\.2\^32-1/);
  });

  it('many overlapping rounds: every round sees exactly its count', async () => {
    const t = new ImmCounterTable();
    const c = t.get(9);
    const rounds = Array.from({ length: 100 }, () => c.wait(8));
    for (let i = 0; i < 800; i++) t.arrive(9);
    await Promise.all(rounds);
    expect([c.value, c.total]).toEqual([0, 800]);
  });
});

describe('ImmCounterTable (needs told to a native worker)', () => {
  it('tells how many more arrivals the first waiter needs, after every change, and 0 once none waits', async () => {
    const t = new ImmCounterTable();
    const told: Array<[number, number]> = [];
    t.onNeed((imm, need) => told.push([imm, need]));
    const c = t.get(4);
    t.arrive(4, 1); // credits, nobody waits: nothing to tell
    expect(told).toEqual([]);
    const first = c.wait(3); // the head: needs 2 beyond the credit there
    const second = c.wait(2); // behind it: the head's need is unchanged, nothing told
    expect(told).toEqual([[4, 2]]);
    t.arrive(4, 1);
    expect(told).toEqual([
      [4, 2],
      [4, 1],
    ]);
    t.arrive(4, 2); // the head takes 3, the second has 1 of 2
    await first;
    expect(told.at(-1)).toEqual([4, 1]);
    t.arrive(4, 1);
    await second;
    expect(told.at(-1)).toEqual([4, 0]);
    expect([c.value, c.total]).toEqual([0, 5]);
    const n = told.length;
    t.arrive(4, 2); // nobody waits and 0 was told: nothing more
    await c.wait(2); // served from credits at once: no waiter queued, nothing told
    expect(told.length).toBe(n);
    // Another value is told on its own.
    const other = t.get(5).wait(1);
    expect(told.at(-1)).toEqual([5, 1]);
    t.arrive(5, 1);
    await other;
    expect(told.at(-1)).toEqual([5, 0]);
  });

  it('a head that leaves (abort, timeout) hands its place to the next waiter, whose need is told', async () => {
    const t = new ImmCounterTable();
    const told: Array<[number, number]> = [];
    t.onNeed((imm, need) => told.push([imm, need]));
    const c = t.get(1);
    const ac = new AbortController();
    const big = c.wait(100, { signal: ac.signal });
    const small = c.wait(2);
    expect(told).toEqual([[1, 100]]);
    ac.abort();
    expect(await code(big)).toBe('ABORTED');
    expect(told.at(-1)).toEqual([1, 2]);
    const late = c.wait(50, { timeoutMs: 5 });
    t.arrive(1, 2);
    await small;
    expect(told.at(-1)).toEqual([1, 50]);
    expect(await code(late)).toBe('TIMEOUT');
    expect(told.at(-1)).toEqual([1, 0]);
    expect(c.value).toBe(0);
  });
});

describe('ImmCounterTable: a shared word and batch records count the NIC arrivals once', () => {
  it('whichever source is ahead adds the difference; records behind the word add nothing', async () => {
    const t = new ImmCounterTable();
    const words = new Uint32Array(32);
    const c = t.get(3);
    // Two arrivals before the value was shared: the records bring them.
    t.arriveNic(3, 2);
    expect([c.value, c.total]).toEqual([2, 2]);
    // Shared at slot 16: the word starts at what was counted (2) until the worker stores its
    // count (2, then 5 after three more arrivals).
    words[16] = 77;
    t.share(3, words, 16);
    expect(words[16]).toBe(2);
    expect(c.total).toBe(2);
    words[16] = 5;
    expect(c.take(5)).toBe(true);
    expect([c.value, c.total]).toEqual([0, 5]);
    // The records of those three come later: nothing again.
    t.arriveNic(3, 3);
    expect([c.value, c.total]).toEqual([0, 5]);
    // A record ahead of the word (the word not read yet) counts; the word catching up adds nothing.
    t.arriveNic(3, 1);
    expect(c.total).toBe(6);
    words[16] = 6;
    expect(c.total).toBe(6);
    // Arrivals JS raised itself (control messages) are outside the NIC stream.
    t.arrive(3, 4);
    expect([c.value, c.total]).toEqual([5, 10]);
    words[16] = 7;
    expect([c.value, c.total]).toEqual([6, 11]);
    // A wait is met from the word alone.
    words[16] = 9;
    await c.wait(8);
    expect([c.value, c.total]).toEqual([0, 13]);
    expect(t.sync(3)).toBe(false);
    words[16] = 10;
    expect(t.sync(3)).toBe(true);
    expect(t.sync(99)).toBe(false);
  });

  it('the word wraps modulo 2^32; a word behind what was counted is ignored', () => {
    const t = new ImmCounterTable();
    const words = new Uint32Array(1);
    const c = t.get(4);
    t.share(4, words, 0);
    // The worker stores the word before it pushes the records.
    words[0] = 0xffffffff;
    t.arriveNic(4, 0xffffffff);
    expect(c.total).toBe(0xffffffff);
    words[0] = 0xfffffffe; // behind (stale): nothing
    expect(c.total).toBe(0xffffffff);
    words[0] = 2; // 0xffffffff + 3, wrapped
    expect(c.total).toBe(0x100000002);
    t.arriveNic(4, 3); // the records of those three
    expect(c.total).toBe(0x100000002);
    expect(c.take(0x100000002)).toBe(true);
    expect(c.value).toBe(0);
  });
});
