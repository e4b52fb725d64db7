// Conformance cases — Immediate counters (credits, overlapping rounds, waiter order) and two-sided
// send/recv.
import assert from 'node:assert/strict';
import type { TrellisError } from '../../errors.js';
import { autoShards, lanesBetween } from '../../imms.js';
import type { RecvMessage } from '../../types.js';
import { nicSum, pattern, rejects, sleep, throws } from '../util.js';
import { assertNoExtra, type ConformanceCase, source, target, WAIT, withGroup } from './shared.js';

export const MESSAGE_CASES: readonly ConformanceCase[] = [
  {
    id: 'counter: arrivals before the wait are credits; wait(0) resolves; the same object every time',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        for (let i = 0; i < 3; i++) await a!.submitImm({ dst: b!.address, imm: 11 });
        const c = b!.immCounter(11);
        assert.equal(c, b!.immCounter(11));
        // The arrivals may still be in the target's completion queue; wait() must take them either way.
        await c.wait(3, WAIT);
        assert.equal(c.value, 0);
        assert.equal(c.total, 3);
        await c.wait(0);
        assert.equal(c.imm, 11);
      }),
  },
  {
    id: 'counter: overlapping rounds — several rounds in flight, each wait takes exactly its credits',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 40_000, 1);
        const { h: dst } = await target(b!, 40_000, 2);
        const per = autoShards(40_000, lanesBetween(a!.nics, b!.nics));
        const c = b!.immCounter(12);
        const waits = [c.wait(per, WAIT), c.wait(per, WAIT), c.wait(per, WAIT)];
        const writes = [0, 1, 2].map(() =>
          a!.submitSingleWrite({ src, length: 40_000, dst: dst.desc, imm: 12 }),
        );
        await Promise.all([...writes, ...waits]);
        await assertNoExtra(b!, 12);
        assert.equal(c.total, 3 * per);
      }),
  },
  {
    id: 'counter: waiters are served in call order; timeout and abort take no credits',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const c = b!.immCounter(13);
        const order: number[] = [];
        const w1 = c.wait(2, WAIT).then(() => order.push(1));
        const w2 = c.wait(1, WAIT).then(() => order.push(2));
        await a!.submitImm({ dst: b!.address, imm: 13 });
        await sleep(20);
        assert.deepEqual(
          order,
          [],
          'one credit is not enough for the first waiter, and the second waits behind it',
        );
        await a!.submitImm({ dst: b!.address, imm: 13 });
        await a!.submitImm({ dst: b!.address, imm: 13 });
        await Promise.all([w1, w2]);
        assert.deepEqual(order, [1, 2]);
        await rejects(c.wait(1, { timeoutMs: 10 }), 'TIMEOUT', 'timeout');
        const ac = new AbortController();
        const w3 = c.wait(1, { signal: ac.signal });
        ac.abort();
        await rejects(w3, 'ABORTED', 'abort');
        const pre = new AbortController();
        pre.abort();
        await rejects(c.wait(0, { signal: pre.signal }), 'ABORTED', 'aborted before the wait');
        await a!.submitImm({ dst: b!.address, imm: 13 });
        await c.wait(1, WAIT);
        assert.equal(c.value, 0, 'the timed-out and aborted waits took nothing');
        await rejects(c.wait(-1), 'INVALID_ARGUMENT', 'negative n');
        throws(() => b!.immCounter(2 ** 32), 'INVALID_ARGUMENT', 'imm beyond u32');
      }),
  },
  // ---------------------------------------------------------------------------- send / recv
  {
    id: 'send/recv: messages of 0..maxBytes from several senders arrive intact, once each, with their sender',
    run: (ctx) =>
      withGroup(ctx, 3, async ({ engines: [a, b, c] }, rng) => {
        const got: RecvMessage[] = [];
        const maxBytes = a!.limits.maxMessageBytes;
        const sizes = [
          0,
          1,
          100,
          4096,
          maxBytes,
          ...Array.from({ length: 10 }, () => rng.between(0, maxBytes)),
        ];
        const total = sizes.length * 2;
        let resolveAll!: () => void;
        const all = new Promise<void>((r) => {
          resolveAll = r;
        });
        const ac = new AbortController();
        const pool = a!.submitRecvs({ maxBytes, count: 4, signal: ac.signal }, (m) => {
          got.push(m);
          if (got.length === total) resolveAll();
        });
        const sent: Array<{ from: string; data: Uint8Array }> = [];
        const sends: Promise<void>[] = [];
        for (const [i, size] of sizes.entries()) {
          for (const s of [b!, c!]) {
            const data = pattern(size, i * 2 + (s === b ? 0 : 1));
            sent.push({ from: s.address.toString(), data });
            sends.push(s.submitSend(a!.address, data));
          }
        }
        await Promise.all(sends);
        await all;
        const key = (from: string, d: Uint8Array): string => `${from}/${Buffer.from(d).toString('base64')}`;
        const want = sent.map((m) => key(m.from, m.data)).sort();
        const have = got.map((m) => key(m.from.toString(), m.data)).sort();
        assert.deepEqual(have, want);
        ac.abort();
        await pool;
        assert.equal(nicSum(a!, 'recvOps'), total);
        assert.equal(nicSum(a!, 'bytesReceived'), 2 * sizes.reduce((x, y) => x + y, 0));
      }),
  },
  {
    id: 'send/recv: a message sent before any receive is posted is delivered once one is',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const sent = b!.submitSend(a!.address, Uint8Array.of(1, 2, 3));
        await sleep(10);
        const got = new Promise<RecvMessage>((r) => {
          void a!.submitRecvs({ maxBytes: 16, count: 1 }, r);
        });
        const m = await got;
        await sent;
        assert.deepEqual([...m.data], [1, 2, 3]);
        assert.ok(m.from.equals(b!.address));
      }),
  },
  {
    id: 'send/recv: oversize sends are rejected before posting; oversize for the posted buffers reports MESSAGE_TRUNCATED',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const max = b!.limits.maxMessageBytes;
        const before = b!.stats().ops.submitted;
        const e = await rejects(
          b!.submitSend(a!.address, new Uint8Array(max + 1)),
          'MESSAGE_TOO_LARGE',
          'send > maxMessageBytes',
        );
        assert.match(e.message, /maxMessageBytes/);
        assert.equal(b!.stats().ops.submitted, before, 'nothing was posted');
        await rejects(
          a!.submitRecvs({ maxBytes: a!.limits.maxMessageBytes + 1, count: 1 }, () => {}),
          'INVALID_ARGUMENT',
          'maxBytes too big',
        );
        await rejects(
          a!.submitRecvs({ maxBytes: 8, count: 0 }, () => {}),
          'INVALID_ARGUMENT',
          'count 0',
        );
        const got: RecvMessage[] = [];
        const truncated = new Promise<TrellisError>((r) => {
          void a!.submitRecvs({ maxBytes: 8, count: 2, onError: r }, (m) => got.push(m));
        });
        const settled = b!.submitSend(a!.address, new Uint8Array(9)).then(
          () => 'resolved',
          (x: TrellisError) => x.code,
        );
        const err = await truncated;
        assert.equal(err.code, 'MESSAGE_TRUNCATED');
        assert.ok(['resolved', 'MESSAGE_TRUNCATED'].includes(await settled), 'the send settles');
        await b!.submitSend(a!.address, new Uint8Array(8).fill(7));
        for (let i = 0; i < 100 && got.length === 0; i++) await sleep(5);
        assert.equal(got.length, 1, 'the fitting message still arrives; the truncated one never does');
        assert.deepEqual([...got[0]!.data], [7, 7, 7, 7, 7, 7, 7, 7]);
        assert.equal(a!.stats().recvDropped, 1);
      }),
  },
  {
    id: 'send/recv: aborting the receive pool resolves its promise',
    run: (ctx) =>
      withGroup(ctx, 1, async ({ engines: [a] }) => {
        const ac = new AbortController();
        const p = a!.submitRecvs({ maxBytes: 8, count: 1, signal: ac.signal }, () => {});
        ac.abort();
        await p;
        const pre = new AbortController();
        pre.abort();
        await a!.submitRecvs({ maxBytes: 8, count: 1, signal: pre.signal }, () => {});
      }),
  },
];
