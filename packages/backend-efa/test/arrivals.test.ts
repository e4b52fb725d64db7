// Immediate arrivals wake the event loop on demand (arrivalBatchUs): a wait is woken by the arrival
// it needs, arrivals nobody waits for reach value/total within arrivalBatchUs or when the worker
// goes idle, and pollUntil sees them at once — for values counted through batches alone. The first
// 64 values an engine's immCounter is asked for also have a word the worker keeps at their
// arrivals, which value, total, take and wait read: those see arrivals at once, with the event loop
// still not woken for them. The receivers here spin for a minute after activity (idleSpinUs) so
// that nothing but the wake-ups under test can hand arrivals to JavaScript.
import { TrellisError } from '@trellis/core';
import { assertBytes, outcome, pattern, sleep } from '@trellis/core/conformance';
import { describe, expect, it } from 'vitest';
import { createEngine } from '../src/index.js';
import { openEngine } from './open-engines.js';

const engine = openEngine;

/** Poll `done` every millisecond until it holds; fail after `ms`. */
async function until(done: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await sleep(1);
  }
}

const MINUTE_US = 60_000_000;

/** Take the engine's 64 shared words (values 1000..1063), so later values count through batches alone. */
function takeSharedWords(e: { immCounter(imm: number): unknown }): void {
  for (let v = 1000; v < 1064; v++) e.immCounter(v);
}

for (const provider of ['shm', 'tcp'] as const) {
  describe(`provider=${provider}`, () => {
    // Busy polling off and on (explicitly: its default depends on the host's CPUs): while the loop
    // polls for a wait it takes every arrival, but once the wait is met it stops, and arrivals
    // nobody waits for stay quiet — also where a ring overtaken by a poll comes late.
    for (const busyPollUs of [0, 2000])
      it(`a wait is woken by the arrival it needs; arrivals nobody waits for stay with the worker until a wait, a poll or arrivalBatchUs (busyPollUs ${busyPollUs})`, async () => {
        const rx = await engine({ provider, arrivalBatchUs: MINUTE_US, idleSpinUs: MINUTE_US, busyPollUs });
        const tx = await engine({ provider, sameHostLane: false, busyPollUs });
        const n = 200;
        const dst = await rx.registerMemory(n * 64, { remote: true });
        const src = await tx.registerMemory(n * 64);
        src.buffer!.set(pattern(n * 64, 5));

        // A waiter armed before anything arrives is woken by its 200th arrival.
        const c = rx.immCounter(5);
        const all = c.wait(n, { timeoutMs: 20_000 });
        await Promise.all(
          Array.from({ length: n }, (_, i) =>
            tx.submitSingleWrite({
              src,
              srcOffset: i * 64,
              length: 64,
              dst: dst.desc,
              dstOffset: i * 64,
              imm: 5,
            }),
          ),
        );
        await all;
        assertBytes(dst.buffer!, src.buffer!, 'the 200 writes');
        expect([c.value, c.total]).toEqual([0, n]);

        // Arrivals nobody waits for, of a value with a shared word: JavaScript is not woken for
        // them (no ring), and the counter reads them from the word at once.
        const shared = rx.immCounter(4);
        const rung = rx.stats().events!.rung;
        await Promise.all(Array.from({ length: 4 }, () => tx.submitImm({ dst: rx.address, imm: 4 })));
        await until(() => rx.stats().nics[0]!.immsReceived === n + 4);
        expect(rx.stats().events!.rung).toBe(rung);
        expect([shared.value, shared.total]).toEqual([4, 4]);
        expect(shared.take(4)).toBe(true);
        expect([shared.value, shared.total]).toEqual([0, 4]);

        // Arrivals nobody waits for, of a value without a word: the worker counts them,
        // JavaScript is not woken for them and does not see them yet.
        takeSharedWords(rx);
        const q = rx.immCounter(6);
        await Promise.all(Array.from({ length: 10 }, () => tx.submitImm({ dst: rx.address, imm: 6 })));
        await until(() => rx.stats().nics[0]!.immsReceived === n + 14);
        expect([q.value, q.total]).toEqual([0, 0]);

        // A wait for arrivals already counted natively rings for them at once.
        await q.wait(10, { timeoutMs: 20_000 });
        expect([q.value, q.total]).toEqual([0, 10]);

        // Latency mode takes quiet arrivals as soon as they are counted.
        await Promise.all(Array.from({ length: 3 }, () => tx.submitImm({ dst: rx.address, imm: 6 })));
        await until(() => rx.stats().nics[0]!.immsReceived === n + 17);
        expect(q.total).toBe(10);
        await rx.pollUntil(() => q.take(3), { timeoutMs: 20_000 });
        expect([q.value, q.total]).toEqual([0, 13]);
        expect([shared.value, shared.total]).toEqual([0, 4]);
        expect(rx.stats().nics[0]!.immsReceived).toBe(n + 17);
        expect(tx.stats().ops).toMatchObject({
          submitted: n + 17,
          completed: n + 17,
          failed: 0,
          inFlight: 0,
        });
      }, 60_000);

    it('a wait on a shared value whose earlier arrivals were read from the word is rung for once, when its need is met', async () => {
      const rx = await engine({ provider, arrivalBatchUs: MINUTE_US, idleSpinUs: MINUTE_US, busyPollUs: 0 });
      const tx = await engine({ provider, sameHostLane: false });
      const c = rx.immCounter(20);
      await Promise.all([
        tx.submitImm({ dst: rx.address, imm: 20 }),
        tx.submitImm({ dst: rx.address, imm: 20 }),
      ]);
      await until(() => rx.stats().nics[0]!.immsReceived === 2);
      // Read from the word; their records are still in the worker's batch (quiet, a minute).
      expect(c.total).toBe(2);
      const rung = rx.stats().events!.rung;
      // Two more needed: the records already counted must not meet the need the worker is told.
      const waited = c.wait(4, { timeoutMs: 20_000 });
      await sleep(50);
      expect(rx.stats().events!.rung).toBe(rung);
      await Promise.all([
        tx.submitImm({ dst: rx.address, imm: 20 }),
        tx.submitImm({ dst: rx.address, imm: 20 }),
      ]);
      await waited;
      expect(rx.stats().events!.rung).toBe(rung + 1);
      expect([c.value, c.total]).toEqual([0, 4]);
    }, 60_000);

    it('a first waiter that leaves (abort, timeout) hands the wake-up to the one behind it', async () => {
      const rx = await engine({ provider, arrivalBatchUs: MINUTE_US, idleSpinUs: MINUTE_US });
      const tx = await engine({ provider, sameHostLane: false });
      // Counted through batches alone (no shared word): a wait's wake-up is a ring.
      takeSharedWords(rx);
      const c = rx.immCounter(7);
      const ac = new AbortController();
      const big = c.wait(100, { signal: ac.signal });
      const small = c.wait(2, { timeoutMs: 20_000 });
      // Its outcome is taken at once: it may time out while the lines below wait.
      const late = outcome(c.wait(50, { timeoutMs: 100 }));
      ac.abort();
      const err = await big.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TrellisError);
      expect(err).toMatchObject({
        code: 'ABORTED',
        message: 'immCounter(7).wait(100): aborted with 0 of 100 credits available',
      });
      await Promise.all([
        tx.submitImm({ dst: rx.address, imm: 7 }),
        tx.submitImm({ dst: rx.address, imm: 7 }),
      ]);
      await small;
      expect(await late).toBe(
        'TIMEOUT: immCounter(7).wait(50): timed out after 100 ms with 0 of 50 credits available',
      );
      // The two arrivals went to `small`; `late` took none.
      expect([c.value, c.total]).toEqual([0, 2]);
      // Nobody waits now: a further arrival stays with the worker.
      await tx.submitImm({ dst: rx.address, imm: 7 });
      await until(() => rx.stats().nics[0]!.immsReceived === 3);
      expect(c.total).toBe(2);
      await c.wait(1, { timeoutMs: 20_000 });
      expect([c.value, c.total]).toEqual([0, 3]);
    }, 60_000);

    for (const arrivalBatchUs of [0, 2000, undefined]) {
      it(`arrivals nobody waits for reach value and total by themselves (arrivalBatchUs ${arrivalBatchUs ?? 'default'}${arrivalBatchUs === undefined ? ', the worker going idle' : ', the worker spinning'})`, async () => {
        const rx = await engine(
          arrivalBatchUs === undefined ? { provider } : { provider, arrivalBatchUs, idleSpinUs: MINUTE_US },
        );
        const tx = await engine({ provider, sameHostLane: false });
        await Promise.all(Array.from({ length: 5 }, () => tx.submitImm({ dst: rx.address, imm: 8 })));
        const c = rx.immCounter(8);
        await until(() => c.total === 5);
        expect([c.value, c.total]).toEqual([5, 5]);
        expect(rx.stats().nics[0]!.immsReceived).toBe(5);
      }, 60_000);
    }
  });
}

describe('arrivalBatchUs: checked before the engine exists', () => {
  it('refuses values the worker would read wrapped (above 2^32-1)', async () => {
    const err = await createEngine({ provider: 'shm', arrivalBatchUs: 2 ** 32 }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: 'createEngine: arrivalBatchUs must be at most 4294967295, got 4294967296',
    });
    const cpu = await createEngine({ provider: 'shm', cpu: 2 ** 31 }).catch((e: unknown) => e);
    expect(cpu).toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: 'createEngine: cpu must be at most 2147483647, got 2147483648',
    });
  });

  for (const bad of [-1, 1.5, Number.NaN, '100']) {
    it(`refuses ${JSON.stringify(bad) ?? String(bad)}`, async () => {
      const err = await createEngine({ provider: 'shm', arrivalBatchUs: bad as number }).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TrellisError);
      expect(err).toMatchObject({
        code: 'INVALID_ARGUMENT',
        message: `createEngine: arrivalBatchUs must be an integer >= 0, got ${typeof bad === 'number' ? bad : JSON.stringify(bad)}`,
      });
    });
  }
});
