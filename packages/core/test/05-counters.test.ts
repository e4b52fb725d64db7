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
