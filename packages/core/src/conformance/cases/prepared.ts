// Conformance cases — Prepared writes: prepareWrites validates the source, destination and
// immediate once; each post is one operation of many writes, packed from a Float64Array, whose
// target counts one arrival per write; bad input is refused naming the write, before anything is
// posted; a lost peer costs only its own posts.
import assert from 'node:assert/strict';
import { TrellisError } from '../../errors.js';
import { lanesBetween } from '../../imms.js';
import { assertBytes, bytesOf, nicSum, rejects, throws } from '../util.js';
import { assertNoExtra, type ConformanceCase, source, target, WAIT, withGroup } from './shared.js';

export const PREPARED_CASES: readonly ConformanceCase[] = [
  {
    id: 'prepared: posts of many writes land byte-exact, one arrival per write, one operation per post; imm per post',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 256 * 1024, 11);
        const { h: dst, expect } = await target(b!, 256 * 1024, 12);
        const s = bytesOf(src);
        const writes = a!.prepareWrites({ src, dst: dst.desc, imm: 601 });
        assert.equal(writes.src, src);
        assert.equal(writes.dst, dst.desc);
        assert.equal(writes.imm, 601);
        assert.equal(a!.prepareWrites({ src, dst: dst.desc, imm: null }).imm, undefined);
        // 100 writes of varied sizes to disjoint places, in one Float64Array.
        const w = new Float64Array(3 * 100);
        let at = 0;
        for (let i = 0; i < 100; i++) {
          const len = 1 + ((i * 613) % 1500);
          w.set([(i * 977) % (128 * 1024), at, len], 3 * i);
          at += len + 7;
        }
        // 100 writes, then 3 (a plain array) and 2 (a prefix) with the prepared immediate.
        const counted601 = b!.immCounter(601).wait(105, WAIT);
        const before = a!.stats().ops;
        await writes.post(w);
        // A plain array, a prefix (count), this post's own immediate, and none at all.
        const tail = 200 * 1024;
        await writes.post([0, tail, 100, 500, tail + 100, 200, 9, tail + 300, 1]);
        await writes.post(Float64Array.of(1000, tail + 400, 50, 2000, tail + 450, 50, 7, 7, 7), { count: 2 });
        const counted602 = b!.immCounter(602).wait(3, WAIT);
        await writes.post(Float64Array.of(3000, tail + 500, 64, 3100, tail + 564, 64, 3200, tail + 628, 0), {
          imm: 602,
        });
        await writes.post(Float64Array.of(4000, tail + 700, 32), { imm: null });
        await writes.post(new Float64Array(0));
        const after = a!.stats().ops;
        assert.equal(after.submitted - before.submitted, 6, 'one operation per post');
        assert.equal(after.completed - before.completed, 6);
        await counted601;
        await counted602;
        await assertNoExtra(b!, 601);
        await assertNoExtra(b!, 602);
        at = 0;
        for (let i = 0; i < 100; i++) {
          const len = 1 + ((i * 613) % 1500);
          const from = (i * 977) % (128 * 1024);
          expect.set(s.subarray(from, from + len), at);
          at += len + 7;
        }
        for (const [from, to, len] of [
          [0, tail, 100],
          [500, tail + 100, 200],
          [9, tail + 300, 1],
          [1000, tail + 400, 50],
          [2000, tail + 450, 50],
          [3000, tail + 500, 64],
          [3100, tail + 564, 64],
          [4000, tail + 700, 32],
        ] as const)
          expect.set(s.subarray(from, from + len), to);
        assertBytes(bytesOf(dst), expect, 'target');
        // Posts of one write each go round the NIC pairs: each post starts where the last ended.
        const lanes = lanesBetween(a!.nics, b!.nics);
        const one = a!.prepareWrites({ src, dst: dst.desc, imm: 603 });
        const lane0Before = a!.stats().nics[0]!.writeOps;
        for (let k = 0; k < 2 * lanes; k++) await one.post(Float64Array.of(k, tail + 800 + k, 1));
        await b!.immCounter(603).wait(2 * lanes, WAIT);
        assert.equal(a!.stats().nics[0]!.writeOps - lane0Before, 2, 'one post in every `lanes` on lane 0');
      }),
  },
  {
    id: 'prepared: bad input is refused naming the field or the write, before anything is posted',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 4096, 13);
        const { h: dst, expect } = await target(b!, 4096, 14);
        throws(() => a!.prepareWrites(null as never), 'INVALID_ARGUMENT', 'no request');
        throws(() => a!.prepareWrites({ src, dst: 'x' as never }), 'INVALID_ARGUMENT', 'dst not an MrDesc');
        throws(() => a!.prepareWrites({ src: {} as never, dst: dst.desc }), 'INVALID_ARGUMENT', 'src');
        throws(() => a!.prepareWrites({ src, dst: dst.desc, imm: -1 }), 'INVALID_ARGUMENT', 'imm');
        const local = await b!.registerMemory(64);
        throws(() => a!.prepareWrites({ src, dst: local.desc }), 'INVALID_DESCRIPTOR', 'dst not remote');
        const writes = a!.prepareWrites({ src, dst: dst.desc, imm: 611 });
        const before = a!.stats().ops.submitted;
        const cases: Array<[unknown, object | null | undefined, string, RegExp]> = [
          ['nope', undefined, 'INVALID_ARGUMENT', /writes must be a Float64Array/],
          [Float64Array.of(0, 0), undefined, 'INVALID_ARGUMENT', /not a multiple of 3/],
          [Float64Array.of(0, 0, 1), { count: 2 }, 'INVALID_ARGUMENT', /count 2 needs 6 numbers/],
          [Float64Array.of(0, 0, 1), { count: -1 }, 'INVALID_ARGUMENT', /count must be/],
          [
            Float64Array.of(0, 0, 1, -5, 0, 1),
            undefined,
            'INVALID_ARGUMENT',
            /writes\[3\] \(write 1's srcOffset\)/,
          ],
          [Float64Array.of(0, 0.5, 1), undefined, 'INVALID_ARGUMENT', /writes\[1\] \(write 0's dstOffset\)/],
          [[0, 0, 'x'], undefined, 'INVALID_ARGUMENT', /writes\[2\] \(write 0's length\)/],
          [Float64Array.of(0, 0, 1, 0, 0, 1, 4000, 0, 100), undefined, 'OUT_OF_RANGE', /write 2 src/],
          [Float64Array.of(0, 4090, 7), undefined, 'OUT_OF_RANGE', /write 0 dst/],
          [Float64Array.of(2 ** 53 - 1, 0, 2), undefined, 'OUT_OF_RANGE', /overflows/],
          [Float64Array.of(0, 0, 1), { imm: 2 ** 32 }, 'INVALID_ARGUMENT', /imm must be/],
          [Float64Array.of(0, 0, 1), { timeoutMs: -1 }, 'INVALID_ARGUMENT', /timeoutMs/],
          [Float64Array.of(0, 0, 1), { signal: 'x' }, 'INVALID_ARGUMENT', /signal/],
          [Float64Array.of(0, 0, 1), null, 'INVALID_ARGUMENT', /opts must be an object/],
        ];
        for (const [w, opts, code, message] of cases) {
          const e = await rejects(writes.post(w as never, opts as never), code as never, String(message));
          assert.match(e.message, /^PreparedWrites\.post: /);
          assert.match(e.message, message);
          assert.equal(e.op, 'PreparedWrites.post');
        }
        // A source unregistered since prepareWrites is refused at the post.
        const gone = await source(a!, 64, 15);
        const stale = a!.prepareWrites({ src: gone, dst: dst.desc });
        await gone.unregister();
        await rejects(stale.post(Float64Array.of(0, 0, 8)), 'INVALID_DESCRIPTOR', 'unregistered src');
        assert.equal(a!.stats().ops.submitted, before, 'nothing was submitted');
        assert.equal(nicSum(b!, 'immsReceived'), 0, 'nothing arrived');
        assertBytes(bytesOf(dst), expect, 'target untouched');
      }),
  },
  {
    id: 'prepared: a post to a closed peer fails PEER_LOST alone; an aborted post settles ABORTED; after close CLOSED',
    run: (ctx) =>
      withGroup(ctx, 3, async ({ engines: [a, b, c] }) => {
        const src = await source(a!, 8192, 16);
        const { h: db, expect: eb } = await target(b!, 8192, 17);
        const dc = await c!.registerMemory(8192, { remote: true });
        const toB = a!.prepareWrites({ src, dst: db.desc, imm: 621 });
        const toC = a!.prepareWrites({ src, dst: dc.desc, imm: 622 });
        await c!.close();
        const arrived = b!.immCounter(621).wait(4, WAIT);
        const [ok, lost] = await Promise.allSettled([
          toB.post(Float64Array.of(0, 0, 1000, 1000, 1000, 1000)),
          toC.post(Float64Array.of(0, 0, 1000)),
          toB.post(Float64Array.of(2000, 2000, 3000, 5000, 5000, 3192)),
        ]);
        assert.equal(ok!.status, 'fulfilled');
        assert.equal(lost!.status, 'rejected');
        const e = (lost as PromiseRejectedResult).reason as TrellisError;
        assert.ok(e instanceof TrellisError);
        assert.equal(e.code, 'PEER_LOST');
        assert.equal(e.op, 'PreparedWrites.post');
        await arrived;
        eb.set(bytesOf(src), 0);
        assertBytes(bytesOf(db), eb, 'healthy peer');
        const ac = new AbortController();
        ac.abort();
        const before = a!.stats().ops;
        await rejects(toB.post(Float64Array.of(0, 0, 8), { signal: ac.signal }), 'ABORTED', 'aborted');
        const after = a!.stats().ops;
        assert.equal(after.submitted - before.submitted, 1);
        assert.equal(after.failed - before.failed, 1);
        await assertNoExtra(b!, 621);
        await a!.close();
        throws(() => a!.prepareWrites({ src, dst: db.desc }), 'CLOSED', 'prepare after close');
        await rejects(toB.post(Float64Array.of(0, 0, 8)), 'CLOSED', 'post after close');
      }),
  },
];
