// Conformance cases — reactions to immediates (submitOnImm), taking credits without waiting
// (ImmCounter.take) and latency mode (poll, pollUntil) where the engine has it.
import assert from 'node:assert/strict';
import { TrellisError } from '../../errors.js';
import type { ImmCounter } from '../../types.js';
import { assertBytes, bytesOf, rejects, SettleTracker, sleep, throws } from '../util.js';
import { assertNoExtra, type ConformanceCase, source, target, WAIT, withGroup } from './shared.js';

/** Poll (with timers) until `c` has seen `total` arrivals. */
async function totalReaches(c: ImmCounter, total: number, label: string): Promise<void> {
  const until = Date.now() + WAIT.timeoutMs;
  while (c.total < total) {
    if (Date.now() > until) assert.fail(`${label}: ${c.total} of ${total} arrivals`);
    await sleep(2);
  }
}

/**
 * The id of the reactions case. Like {@link LATENCY_MODE_CASE} it needs immediates in both
 * directions between two engines of one process (targets whose provider cannot do that skip it).
 */
export const REACTIONS_CASE =
  'reactions: submitOnImm posts when the arrivals of an immediate reach the total, not before; arrivals still count as credits; cancel, timeout and close settle it once with nothing posted; bad input refused';

/** The id of the latency-mode case (immediates both ways between two engines of one process). */
export const LATENCY_MODE_CASE =
  'latency mode: pollUntil delivers completions and arrivals without the event loop; TIMEOUT, CLOSED and bad input; absent where the engine has no worker to poll';

/** The id of the case: the engine's own deadlines fire while a latency loop spins. */
export const LATENCY_TIMERS_CASE =
  "latency mode: an operation's timeoutMs and a wait's timeout fire while pollUntil or a poll() loop spins (no event-loop turn runs)";

export const REACTION_CASES: readonly ConformanceCase[] = [
  {
    id: REACTIONS_CASE,
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const n = 4096;
        const ping = 0x7201;
        const pong = 0x7202;
        const src = await source(b!, n, 41);
        const dst = await target(a!, 4 * n, 42);
        const pings = b!.immCounter(ping);
        const t = new SettleTracker();
        // b answers the second ping with a write into a's region.
        const reaction = b!.submitOnImm(ping, pings.total + 2, {
          kind: 'single',
          src,
          length: n,
          dst: dst.h.desc,
          imm: pong,
        });
        t.track(reaction);
        const ac = new AbortController();
        const aborted = b!.submitOnImm(ping, pings.total + 3, {
          kind: 'single',
          src,
          length: n,
          dst: dst.h.desc,
          dstOffset: n,
          imm: pong,
          signal: ac.signal,
        });
        t.track(aborted);
        const timedOut = b!.submitOnImm(ping, pings.total + 100, {
          kind: 'imm',
          dst: a!.address,
          imm: pong,
          timeoutMs: 50,
        });
        t.track(timedOut);
        const atClose = b!.submitOnImm(ping, pings.total + 100, {
          kind: 'single',
          src,
          length: n,
          dst: dst.h.desc,
          dstOffset: 2 * n,
          imm: pong,
        });
        t.track(atClose);
        await sleep(20);
        await a!.submitImm({ dst: b!.address, imm: ping });
        await totalReaches(pings, 1, 'first ping');
        await sleep(30);
        assert.equal(t.outcomes[0], 'pending', 'nothing fires before its total');
        assert.equal(a!.immCounter(pong).total, 0);
        assertBytes(bytesOf(dst.h), dst.expect, 'before the reaction');
        await a!.submitImm({ dst: b!.address, imm: ping });
        await reaction;
        await a!.immCounter(pong).wait(1, WAIT);
        dst.expect.set(bytesOf(src), 0);
        assertBytes(bytesOf(dst.h), dst.expect, 'after the reaction');
        // Reactions only read the total: both pings are still credits.
        assert.equal(pings.value, 2);
        await pings.wait(2, WAIT);
        ac.abort();
        await rejects(aborted, 'ABORTED', 'aborted before its total');
        await rejects(timedOut, 'TIMEOUT', 'timed out before its total');
        // Past the aborted reaction's total: it must not go out.
        await a!.submitImm({ dst: b!.address, imm: ping });
        await pings.wait(1, WAIT);
        await assertNoExtra(a!, pong);
        assertBytes(bytesOf(dst.h), dst.expect, 'nothing of the cancelled reactions landed');
        // A total already reached fires at once; an immediate alone can react too.
        await b!.submitOnImm(ping, 1, { kind: 'imm', dst: a!.address, imm: pong + 1 });
        await a!.immCounter(pong + 1).wait(1, WAIT);
        // Bad input is refused before anything is armed.
        await rejects(
          b!.submitOnImm(-1, 1, { kind: 'imm', dst: a!.address, imm: pong }),
          'INVALID_ARGUMENT',
          'imm -1',
        );
        const zero = await rejects(
          b!.submitOnImm(ping, 0, { kind: 'imm', dst: a!.address, imm: pong }),
          'INVALID_ARGUMENT',
          'total 0',
        );
        assert.match(zero.message, /total must be an integer >= 1 .*, got 0$/);
        await rejects(
          b!.submitOnImm(ping, 1.5, { kind: 'imm', dst: a!.address, imm: pong }),
          'INVALID_ARGUMENT',
          'total 1.5',
        );
        await rejects(
          b!.submitOnImm(ping, 10, { kind: 'single', src, length: n + 1, dst: dst.h.desc }),
          'OUT_OF_RANGE',
          'a bad request',
        );
        await rejects(b!.submitOnImm(ping, 10, null as never), 'INVALID_ARGUMENT', 'no request');
        await b!.close();
        await rejects(atClose, 'CLOSED', 'pending at close');
        // A closed engine's counters refuse waits and takes alike, naming neither.
        const closedTake = (() => {
          try {
            b!.immCounter(ping).take(1);
            return undefined;
          } catch (e) {
            return e as Error;
          }
        })();
        assert.equal(closedTake?.message, 'immCounter: the engine was closed (its waits and takes fail)');
        await t.settled(1000);
        assert.deepEqual(t.outcomes, ['resolved', 'ABORTED', 'TIMEOUT', 'CLOSED']);
        await assertNoExtra(a!, pong);
        assertBytes(bytesOf(dst.h), dst.expect, 'nothing landed at close');
      }),
  },
  {
    id: 'credits: take(n) takes n credits only when they are there and no wait is queued ahead; bad n refused',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const imm = 0x7301;
        const c = b!.immCounter(imm);
        assert.equal(c.take(), false, 'no credits yet');
        assert.equal(c.take(0), true, 'zero credits are always there');
        await a!.submitImm({ dst: b!.address, imm });
        await a!.submitImm({ dst: b!.address, imm });
        await totalReaches(c, 2, 'two arrivals');
        assert.equal(c.take(3), false, 'three of two');
        assert.equal(c.value, 2, 'a refused take takes nothing');
        assert.equal(c.take(2), true);
        assert.equal(c.value, 0);
        // A queued wait goes first.
        const waiting = c.wait(2, WAIT);
        await a!.submitImm({ dst: b!.address, imm });
        await totalReaches(c, 3, 'third arrival');
        assert.equal(c.value, 1);
        assert.equal(c.take(1), false, 'a wait is queued ahead');
        await a!.submitImm({ dst: b!.address, imm });
        await waiting;
        assert.equal(c.value, 0);
        for (const bad of [-1, 1.5, Number.NaN, '1'])
          throws(() => c.take(bad as number), 'INVALID_ARGUMENT', `take(${String(bad)})`);
        // A string is shown quoted: "got 1" would hide what was wrong.
        assert.match(throws(() => c.take('1' as never), 'INVALID_ARGUMENT').message, /got "1"$/);
        await assertNoExtra(b!, imm);
      }),
  },
  {
    id: LATENCY_MODE_CASE,
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        if (!a!.pollUntil || !a!.poll) {
          // The contract: both or neither.
          assert.equal(a!.poll, undefined);
          assert.equal(a!.pollUntil, undefined);
          return;
        }
        const imm = 0x7401;
        const back = imm + 1;
        const n = 64 * 1024;
        const src = await source(a!, n, 51);
        const dst = await target(b!, n, 52);
        const got = b!.immCounter(imm);
        // A write, spun for on both sides: the writer until its promise settled (a reaction run by
        // the microtask yields between polls), the target until its immediates are there.
        let settled = false;
        const w = a!.submitSingleWrite({ src, length: n, dst: dst.h.desc, imm, shards: 1 });
        w.then(() => {
          settled = true;
        });
        await b!.pollUntil!(() => got.take(1), WAIT);
        await a!.pollUntil(() => settled, WAIT);
        dst.expect.set(bytesOf(src));
        assertBytes(bytesOf(dst.h), dst.expect, 'the write');
        // Ping-pong in latency mode.
        for (let i = 0; i < 20; i++) {
          const p = a!.submitImm({ dst: b!.address, imm });
          await b!.pollUntil!(() => got.take(1), WAIT);
          const q = b!.submitImm({ dst: a!.address, imm: back });
          await a!.pollUntil(() => a!.immCounter(back).take(1), WAIT);
          await p;
          await q;
        }
        // Once polling stops, the event loop delivers again.
        await a!.submitImm({ dst: b!.address, imm });
        await got.wait(1, WAIT);
        assert.equal(typeof a!.poll(), 'boolean');
        const t0 = performance.now();
        const e = await rejects(
          a!.pollUntil(() => false, { timeoutMs: 30 }),
          'TIMEOUT',
          'never true',
        );
        assert.ok(performance.now() - t0 >= 30, 'not before its timeout');
        assert.match(e.message, /30 ms/);
        const boom = new Error('from done');
        await assert.rejects(
          a!.pollUntil(() => {
            throw boom;
          }),
          (x: unknown) => x === boom,
        );
        await rejects(a!.pollUntil(42 as never), 'INVALID_ARGUMENT', 'not a function');
        await rejects(
          a!.pollUntil(() => true, { timeoutMs: -1 }),
          'INVALID_ARGUMENT',
          'timeoutMs -1',
        );
        const ac = new AbortController();
        ac.abort();
        await rejects(
          a!.pollUntil(() => false, { signal: ac.signal }),
          'ABORTED',
          'aborted signal',
        );
        await assertNoExtra(b!, imm);
        await a!.close();
        assert.equal(a!.poll(), false, 'nothing to poll once closed');
        const closed = await rejects(
          a!.pollUntil(() => false),
          'CLOSED',
          'closed engine',
        );
        assert.ok(closed instanceof TrellisError);
      }),
  },
  {
    id: LATENCY_TIMERS_CASE,
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        if (!a!.pollUntil || !a!.poll) return; // no latency mode (the case above checks that)
        const imm = 0x7501;
        // Nothing below turns the event loop until the loops are over: this stays false, and no
        // Node timer can have fired the deadlines.
        let turned = false;
        setImmediate(() => {
          turned = true;
        });
        // A reaction armed on a total that never comes (50 ms), and a wait for an immediate that
        // never comes (60 ms): both settle TIMEOUT while pollUntil spins.
        const t = new SettleTracker();
        const t0 = performance.now();
        t.track(
          a!.submitOnImm(imm, a!.immCounter(imm).total + 100, {
            kind: 'imm',
            dst: b!.address,
            imm: imm + 1,
            timeoutMs: 50,
          }),
        );
        t.track(a!.immCounter(imm + 2).wait(1, { timeoutMs: 60 }));
        await a!.pollUntil(() => !t.outcomes.includes('pending'), { timeoutMs: 10_000 });
        const took = performance.now() - t0;
        assert.equal(turned, false, 'pollUntil turned the event loop');
        assert.deepEqual(t.outcomes, ['TIMEOUT', 'TIMEOUT'], 'the deadlines inside pollUntil');
        assert.ok(took >= 50, `settled before the deadlines (${took.toFixed(1)} ms)`);
        // A synchronous poll() loop (no await at all): the deadline fires from within poll().
        const failed = a!.stats().ops.failed;
        const spun = a!.submitOnImm(imm, a!.immCounter(imm).total + 100, {
          kind: 'imm',
          dst: b!.address,
          imm: imm + 1,
          timeoutMs: 30,
        });
        const until = performance.now() + 10_000;
        while (a!.stats().ops.failed === failed && performance.now() < until) a!.poll();
        assert.equal(turned, false, 'poll() turned the event loop');
        assert.equal(a!.stats().ops.failed, failed + 1, 'the deadline inside a poll() loop');
        await rejects(spun, 'TIMEOUT', 'the reaction polled past its deadline');
        await assertNoExtra(b!, imm + 1);
      }),
  },
];
