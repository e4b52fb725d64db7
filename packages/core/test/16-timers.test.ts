// Timers: the engine's own timers on one Node timer, fired by the event loop or by runDue() from a
// loop that keeps the event loop from turning (pollUntil, poll()). The order and repetition cases
// run on a clock of their own (no dependence on scheduling); the Node-timer cases on real time.
import { describe, expect, it } from 'vitest';
import { TrellisError } from '../src/index.js';
import { ImmCounterTable, Timers } from '../src/kit/index.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Timers on a clock the test moves. */
function manual() {
  const clock = { now: 0 };
  return { clock, t: new Timers(() => clock.now) };
}

describe('Timers', () => {
  it('runDue fires what is due, earliest first, once each; cancel disarms; nothing fires early', () => {
    const { clock, t } = manual();
    const fired: string[] = [];
    t.after(30, () => fired.push('c'));
    t.after(10, () => fired.push('a'));
    const b = t.after(20, () => fired.push('b'));
    const x = t.after(15, () => fired.push('x'));
    t.after(1000, () => fired.push('late'));
    expect(t.size).toBe(5);
    expect(t.next).toBe(10);
    t.cancel(x);
    t.cancel(x); // twice: nothing
    t.cancel(undefined);
    expect(t.size).toBe(4);
    clock.now = 9.9;
    t.runDue();
    expect(fired).toEqual([]);
    clock.now = 20;
    t.runDue();
    expect(fired).toEqual(['a', 'b']);
    clock.now = 40;
    t.runDue();
    expect(fired).toEqual(['a', 'b', 'c']);
    t.cancel(b); // fired already: nothing
    expect(t.size).toBe(1);
    expect(t.next).toBe(1000);
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
    t.after(60_000, () => fired.push('slow'));
    t.after(5, () => {
      fired.push('fast');
      t.after(0, () => fired.push('chained'));
    });
    await sleep(40);
    expect(fired).toEqual(['fast', 'chained']);
    expect(t.size).toBe(1);
    t.clear();
  });

  it('every() repeats until cancelled; a loop that looks late fires it once for the periods it missed', () => {
    const { clock, t } = manual();
    let n = 0;
    const e = t.every(10, () => n++);
    for (const [now, want] of [
      [5, 0],
      [10, 1],
      [15, 1],
      [20, 2],
      [30, 3],
    ] as const) {
      clock.now = now;
      t.runDue();
      expect(n).toBe(want);
    }
    // 100 ms late: once, and the next is a period from now.
    clock.now = 130;
    t.runDue();
    expect(n).toBe(4);
    expect(t.next).toBe(140);
    t.cancel(e);
    clock.now = 1000;
    t.runDue();
    expect(n).toBe(4);
    expect(t.size).toBe(0);
  });

  it('a callback that throws does not stop the others; its error is uncaught, not thrown to the caller of runDue', async () => {
    const { clock, t } = manual();
    const fired: string[] = [];
    const boom = new Error('boom');
    t.after(1, () => {
      throw boom;
    });
    t.after(2, () => fired.push('after'));
    clock.now = 5;
    const uncaught = new Promise<unknown>((r) => process.once('uncaughtException', r));
    expect(() => t.runDue()).not.toThrow();
    expect(fired).toEqual(['after']);
    expect(t.size).toBe(0);
    expect(await uncaught).toBe(boom);
  });

  it('many timers cancelled out of order: the rest fire once each, in the order they are due', () => {
    const { clock, t } = manual();
    const fired: number[] = [];
    const due = (i: number) => ((i * 37) % 200) / 10; // 200 distinct times
    const all = Array.from({ length: 200 }, (_, i) => t.after(due(i), () => fired.push(i)));
    for (let i = 0; i < 200; i += 3) t.cancel(all[i]);
    for (clock.now = 0; clock.now <= 20; clock.now += 0.05) t.runDue();
    const want = Array.from({ length: 200 }, (_, i) => i)
      .filter((i) => i % 3 !== 0)
      .sort((x, y) => due(x) - due(y));
    expect(fired).toEqual(want);
    expect(t.size).toBe(0);
  });

  it("an ImmCounterTable's wait times out from runDue while nothing turns the event loop", async () => {
    const { clock, t } = manual();
    const table = new ImmCounterTable(t);
    let err: unknown;
    const w = table
      .get(9)
      .wait(1, { timeoutMs: 20 })
      .catch((e: unknown) => {
        err = e;
      });
    clock.now = 19;
    t.runDue();
    clock.now = 20;
    t.runDue();
    await w;
    expect(err).toBeInstanceOf(TrellisError);
    expect((err as TrellisError).code).toBe('TIMEOUT');
    expect((err as TrellisError).message).toBe(
      'immCounter(9).wait(1): timed out after 20 ms with 0 of 1 credits available',
    );
    expect(t.size).toBe(0);
  });
});
