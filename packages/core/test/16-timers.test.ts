// Timers: the engine's own timers on one Node timer, fired by the event loop or by runDue() from a
// loop that keeps the event loop from turning (pollUntil, poll()).
import { describe, expect, it } from 'vitest';
import { TrellisError } from '../src/index.js';
import { ImmCounterTable, Timers } from '../src/kit/index.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Spin (no event-loop turn) for `ms`, calling runDue as a polling loop does. */
function spin(t: Timers, ms: number): void {
  const end = performance.now() + ms;
  for (;;) {
    const now = performance.now();
    if (now >= t.next) t.runDue(now);
    if (now >= end) return;
  }
}

describe('Timers', () => {
  it('runDue fires what is due, earliest first, once each; cancel disarms; nothing fires early', () => {
    const t = new Timers();
    const fired: string[] = [];
    t.after(30, () => fired.push('c'));
    t.after(10, () => fired.push('a'));
    const b = t.after(20, () => fired.push('b'));
    const x = t.after(15, () => fired.push('x'));
    t.after(1000, () => fired.push('late'));
    expect(t.size).toBe(5);
    t.cancel(x);
    t.cancel(x); // twice: nothing
    t.cancel(undefined);
    expect(t.size).toBe(4);
    t.runDue();
    expect(fired).toEqual([]);
    spin(t, 40);
    expect(fired).toEqual(['a', 'b', 'c']);
    t.cancel(b); // fired already: nothing
    expect(t.size).toBe(1);
    t.clear();
    expect(t.size).toBe(0);
    expect(t.next).toBe(Number.POSITIVE_INFINITY);
  });

  it('fires from the event loop with no runDue, after its time', async () => {
    const t = new Timers();
    const t0 = performance.now();
    const at: number[] = [];
    t.after(25, () => at.push(performance.now() - t0));
    t.after(5, () => at.push(performance.now() - t0));
    await sleep(60);
    expect(at.length).toBe(2);
    expect(at[0]).toBeGreaterThanOrEqual(5);
    expect(at[1]).toBeGreaterThanOrEqual(25);
    expect(t.size).toBe(0);
  });

  it('a timer armed earlier than the Node timer re-arms it; one armed by a callback for now fires in the same runDue', async () => {
    const t = new Timers();
    const fired: string[] = [];
    t.after(500, () => fired.push('slow'));
    t.after(5, () => {
      fired.push('fast');
      t.after(0, () => fired.push('chained'));
    });
    await sleep(40);
    expect(fired).toEqual(['fast', 'chained']);
    t.clear();
  });

  it('every() repeats until cancelled; a loop that looks late fires it once for the periods it missed', async () => {
    const t = new Timers();
    let n = 0;
    const e = t.every(10, () => n++);
    const t0 = performance.now();
    const give = t0 + 5000;
    while (n < 3 && performance.now() < give) if (performance.now() >= t.next) t.runDue();
    expect(n).toBe(3);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(30);
    // A loop that looks only now, 100 ms late, fires it once, not ten times.
    const end = performance.now() + 100;
    while (performance.now() < end);
    t.runDue();
    expect(n).toBe(4);
    t.cancel(e);
    await sleep(30);
    expect(n).toBe(4);
    expect(t.size).toBe(0);
  });

  it('a callback that throws leaves the others armed', () => {
    const t = new Timers();
    const fired: string[] = [];
    t.after(1, () => {
      throw new Error('boom');
    });
    t.after(2, () => fired.push('after'));
    const end = performance.now() + 5;
    while (performance.now() < end);
    expect(() => t.runDue()).toThrow('boom');
    expect(t.size).toBe(1);
    t.runDue();
    expect(fired).toEqual(['after']);
  });

  it('many timers cancelled out of order: the rest fire once each, in the order they are due', () => {
    const t = new Timers();
    const fired: number[] = [];
    const all = Array.from({ length: 200 }, (_, i) => t.after(((i * 37) % 200) / 10, () => fired.push(i)));
    const due = all.map((x) => x.at);
    for (let i = 0; i < 200; i += 3) t.cancel(all[i]);
    spin(t, 25);
    expect([...fired].sort((x, y) => x - y)).toEqual(
      Array.from({ length: 200 }, (_, i) => i).filter((i) => i % 3 !== 0),
    );
    for (let k = 1; k < fired.length; k++) expect(due[fired[k]!]).toBeGreaterThanOrEqual(due[fired[k - 1]!]!);
  });

  it("an ImmCounterTable's wait times out from runDue while nothing turns the event loop", async () => {
    const timers = new Timers();
    const table = new ImmCounterTable(timers);
    let err: unknown;
    const w = table
      .get(9)
      .wait(1, { timeoutMs: 20 })
      .catch((e: unknown) => {
        err = e;
      });
    spin(timers, 30);
    await w;
    expect(err).toBeInstanceOf(TrellisError);
    expect((err as TrellisError).code).toBe('TIMEOUT');
    expect((err as TrellisError).message).toBe(
      'immCounter(9).wait(1): timed out after 20 ms with 0 of 1 credits available',
    );
  });
});
