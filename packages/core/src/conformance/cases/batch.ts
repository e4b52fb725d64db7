// Conformance cases — Batches: submitBatch posts writes and immediates of every kind, to several
// peers, in one call; validates all before posting any; settles each operation once and reports
// each outcome; one operation's failure costs only itself.
import assert from 'node:assert/strict';
import type { NetAddr } from '../../addr.js';
import { TrellisError } from '../../errors.js';
import type { TransferEngine, TransferRequest } from '../../types.js';
import { assertBytes, bytesOf, nicSum, rejects } from '../util.js';
import { assertNoExtra, type ConformanceCase, source, target, WAIT, withGroup } from './shared.js';

export const BATCH_CASES: readonly ConformanceCase[] = [
  {
    id: 'batch: single, paged, scatter, barrier and imm to two peers in one call land byte-exact, imms = expectedImms',
    run: (ctx) =>
      withGroup(ctx, 3, async ({ engines: [a, b, c] }) => {
        const src = await source(a!, 64 * 1024, 5);
        const { h: db, expect: eb } = await target(b!, 64 * 1024, 6);
        const { h: dc, expect: ec } = await target(c!, 64 * 1024, 7);
        const s = bytesOf(src);
        const group = a!.addPeerGroup([b!.address, c!.address]);
        const requests: TransferRequest[] = [];
        // 40 single writes of varied sizes alternating between the peers, then one of each other kind.
        for (let i = 0; i < 40; i++) {
          const dst = i % 2 ? dc : db;
          requests.push({
            kind: 'single',
            src,
            srcOffset: i * 97,
            length: 1 + i * 37,
            dst: dst.desc,
            dstOffset: i * 1000,
            imm: 500 + (i % 2),
          });
        }
        requests.push({
          kind: 'paged',
          src,
          srcPages: Uint32Array.of(3, 1, 2),
          srcStride: 512,
          srcOffset: 40_000,
          dst: db.desc,
          dstPages: Uint32Array.of(0, 2, 4),
          dstStride: 512,
          dstOffset: 50_000,
          pageBytes: 300,
          imm: 502,
        });
        requests.push({
          kind: 'scatter',
          src,
          targets: [
            { dst: db.desc, srcOffset: 60_000, dstOffset: 60_000, length: 1500 },
            { dst: dc.desc, srcOffset: 61_000, dstOffset: 60_000, length: 2500 },
          ],
          imm: 503,
        });
        requests.push({ kind: 'barrier', group, imm: 504 });
        requests.push({ kind: 'imm', dst: c!.address, imm: 505 });
        const want = new Map<string, Map<number, number>>([
          [b!.address.toString(), new Map()],
          [c!.address.toString(), new Map()],
        ]);
        // Single and paged writes and immediates reach one peer; scatters and barriers each.
        const reaches = (r: TransferRequest, peer: TransferEngine) =>
          r.kind === 'scatter' || r.kind === 'barrier'
            ? true
            : r.kind === 'imm'
              ? (r.dst as NetAddr).equals(peer.address)
              : r.dst === (peer === b ? db.desc : dc.desc);
        for (const r of requests)
          for (const peer of [b!, c!]) {
            if (!reaches(r, peer)) continue;
            const n = a!.expectedImms(r, peer.address);
            const m = want.get(peer.address.toString())!;
            const imm = (r as { imm: number }).imm;
            if (n) m.set(imm, (m.get(imm) ?? 0) + n);
          }
        const waits = [b!, c!].flatMap((peer) =>
          [...want.get(peer.address.toString())!].map(([imm, n]) => peer.immCounter(imm).wait(n, WAIT)),
        );
        const before = a!.stats().ops;
        const result = await a!.submitBatch(requests);
        assert.equal(result.failed, 0);
        assert.equal(result.errors.length, requests.length);
        assert.ok(result.errors.every((e) => e === undefined));
        await Promise.all(waits);
        const after = a!.stats().ops;
        assert.equal(after.submitted - before.submitted, requests.length, 'one operation per request');
        assert.equal(after.completed - before.completed, requests.length);
        for (let i = 0; i < 40; i++) (i % 2 ? ec : eb).set(s.subarray(i * 97, i * 97 + 1 + i * 37), i * 1000);
        for (const [k, page] of [3, 1, 2].entries())
          eb.set(s.subarray(40_000 + page * 512, 40_000 + page * 512 + 300), 50_000 + [0, 2, 4][k]! * 512);
        eb.set(s.subarray(60_000, 61_500), 60_000);
        ec.set(s.subarray(61_000, 63_500), 60_000);
        assertBytes(bytesOf(db), eb, 'peer b');
        assertBytes(bytesOf(dc), ec, 'peer c');
        for (const [peer, m] of [
          [b!, want.get(b!.address.toString())!],
          [c!, want.get(c!.address.toString())!],
        ] as const)
          for (const imm of m.keys()) await assertNoExtra(peer, imm);
      }),
  },
  {
    id: 'batch: one bad request refuses the whole batch, naming its index, before anything is posted',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 4096, 1);
        const { h: dst, expect } = await target(b!, 4096, 2);
        const before = a!.stats().ops.submitted;
        const good: TransferRequest = { kind: 'single', src, length: 100, dst: dst.desc, imm: 9 };
        const e = await rejects(
          a!.submitBatch([
            good,
            good,
            { kind: 'single', src, length: 100, dst: dst.desc, dstOffset: 4000, imm: 9 },
          ]),
          'OUT_OF_RANGE',
          'past the end',
        );
        assert.match(e.message, /^submitBatch: requests\[2\] \(single\): /);
        assert.equal(e.op, 'submitBatch');
        await rejects(
          a!.submitBatch([good, { kind: 'nope' } as unknown as TransferRequest]),
          'INVALID_ARGUMENT',
          'unknown kind',
        );
        await rejects(
          a!.submitBatch('x' as unknown as TransferRequest[]),
          'INVALID_ARGUMENT',
          'not an array',
        );
        await rejects(a!.submitBatch([good], { timeoutMs: -1 }), 'INVALID_ARGUMENT', 'bad timeoutMs');
        assert.equal(a!.stats().ops.submitted, before, 'nothing was submitted');
        assert.equal(nicSum(b!, 'immsReceived'), 0, 'nothing arrived');
        assertBytes(bytesOf(dst), expect, 'target untouched');
        const empty = await a!.submitBatch([]);
        assert.deepEqual([empty.failed, empty.errors.length], [0, 0]);
      }),
  },
  {
    id: 'batch: an operation to a closed peer fails alone; the others complete and every byte lands',
    run: (ctx) =>
      withGroup(ctx, 3, async ({ engines: [a, b, c] }) => {
        const src = await source(a!, 8192, 3);
        const { h: db, expect: eb } = await target(b!, 8192, 4);
        const dc = await c!.registerMemory(8192, { remote: true });
        await c!.close();
        const arrived = b!.immCounter(31).wait(4, WAIT);
        const result = await a!.submitBatch([
          { kind: 'single', src, length: 1000, dst: db.desc, imm: 31, shards: 1 },
          { kind: 'single', src, srcOffset: 1000, length: 1000, dst: dc.desc, imm: 32 },
          {
            kind: 'single',
            src,
            srcOffset: 2000,
            length: 1000,
            dst: db.desc,
            dstOffset: 2000,
            imm: 31,
            shards: 1,
          },
          { kind: 'imm', dst: b!.address, imm: 31 },
          {
            kind: 'single',
            src,
            srcOffset: 3000,
            length: 5000,
            dst: db.desc,
            dstOffset: 3000,
            imm: 31,
            shards: 1,
          },
        ]);
        assert.equal(result.failed, 1);
        assert.deepEqual(
          result.errors.map((e) => e?.code),
          [undefined, 'PEER_LOST', undefined, undefined, undefined],
        );
        const e = result.errors[1]!;
        assert.ok(e instanceof TrellisError);
        assert.equal(e.op, 'submitBatch');
        await arrived;
        eb.set(bytesOf(src).subarray(0, 1000), 0);
        eb.set(bytesOf(src).subarray(2000, 8000), 2000);
        assertBytes(bytesOf(db), eb, 'healthy peer');
      }),
  },
  {
    id: 'batch: an aborted signal settles every operation ABORTED, and per-request options win over the batch field by field',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 4096, 8);
        const { h: dst } = await target(b!, 4096, 9);
        const ac = new AbortController();
        ac.abort();
        const before = a!.stats().ops;
        const r = await a!.submitBatch(
          [
            { kind: 'single', src, length: 10, dst: dst.desc, imm: 41 },
            { kind: 'imm', dst: b!.address, imm: 41 },
          ],
          { signal: ac.signal },
        );
        assert.equal(r.failed, 2);
        assert.deepEqual(
          r.errors.map((e) => e?.code),
          ['ABORTED', 'ABORTED'],
        );
        const after = a!.stats().ops;
        assert.equal(after.submitted - before.submitted, 2);
        assert.equal(after.failed - before.failed, 2);
        // A request's own signal (not aborted) overrides the batch's aborted one.
        const own = new AbortController();
        const arrived = b!.immCounter(42).wait(1, WAIT);
        const r2 = await a!.submitBatch([{ kind: 'imm', dst: b!.address, imm: 42, signal: own.signal }], {
          signal: ac.signal,
        });
        assert.equal(r2.failed, 0);
        await arrived;
        // Field by field: a request with only a timeoutMs of its own still takes the batch's signal.
        const r3 = await a!.submitBatch([{ kind: 'imm', dst: b!.address, imm: 43, timeoutMs: 10_000 }], {
          signal: ac.signal,
        });
        assert.deepEqual(
          r3.errors.map((e) => e?.code),
          ['ABORTED'],
        );
        await assertNoExtra(b!, 43);
      }),
  },
  {
    id: 'batch: plain writes that share source, destination and immediate travel together yet count, land and fail per request',
    run: (ctx) =>
      withGroup(ctx, 3, async ({ engines: [a, b, c] }) => {
        const src = await source(a!, 64 * 1024, 11);
        const { h: db, expect: eb } = await target(b!, 64 * 1024, 12);
        const { h: dc, expect: ec } = await target(c!, 64 * 1024, 13);
        const s = bytesOf(src);
        // 48 unsharded writes of 1000 bytes, interleaved: to b with immediates 71 and 72, to c with
        // 73; every fourth has a timeoutMs of its own (so it is its own operation).
        const requests: TransferRequest[] = [];
        const want = new Map<number, number>();
        for (let i = 0; i < 48; i++) {
          const toC = i % 3 === 2;
          const imm = toC ? 73 : 71 + (i % 2);
          want.set(imm, (want.get(imm) ?? 0) + 1);
          requests.push({
            kind: 'single',
            src,
            srcOffset: i * 1024,
            length: 1000,
            dst: (toC ? dc : db).desc,
            dstOffset: i * 1024,
            imm,
            shards: 1,
            ...(i % 4 === 3 ? { timeoutMs: 10_000 } : {}),
          });
        }
        const waits = [...want].map(([imm, n]) => (imm === 73 ? c! : b!).immCounter(imm).wait(n, WAIT));
        const before = a!.stats().ops;
        const nicsBefore = a!.stats().nics.map((x) => x.writeOps);
        const result = await a!.submitBatch(requests, { timeoutMs: 10_000 });
        assert.equal(result.failed, 0);
        assert.equal(result.errors.length, 48);
        assert.ok(result.errors.every((e) => e === undefined));
        await Promise.all(waits);
        const after = a!.stats().ops;
        assert.equal(after.submitted - before.submitted, 48, 'counted per request');
        assert.equal(after.completed - before.completed, 48);
        assert.equal(after.failed - before.failed, 0);
        assert.equal(after.inFlight, before.inFlight);
        // Every write on lane 0, as each would go alone unsharded (one NIC's fault costs what it did).
        const nicsAfter = a!.stats().nics.map((x) => x.writeOps);
        for (let k = 1; k < nicsAfter.length; k++)
          assert.equal(nicsAfter[k], nicsBefore[k], `NIC ${k} write ops`);
        assert.ok(nicsAfter[0]! - nicsBefore[0]! >= 48, 'NIC 0 carried the 48 writes');
        for (let i = 0; i < 48; i++)
          (i % 3 === 2 ? ec : eb).set(s.subarray(i * 1024, i * 1024 + 1000), i * 1024);
        assertBytes(bytesOf(db), eb, 'peer b');
        assertBytes(bytesOf(dc), ec, 'peer c');
        for (const imm of [71, 72]) await assertNoExtra(b!, imm);
        await assertNoExtra(c!, 73);
        // Aborted before posting: every one of them fails ABORTED, counted per request, and
        // nothing reaches the peer.
        const ac = new AbortController();
        ac.abort();
        const plain = requests.filter(
          (r) => r.kind === 'single' && r.timeoutMs === undefined && r.dst === db.desc,
        );
        const r2 = await a!.submitBatch(plain, { signal: ac.signal });
        assert.equal(r2.failed, plain.length);
        for (const e of r2.errors) {
          assert.ok(e instanceof TrellisError);
          assert.equal(e.code, 'ABORTED');
          assert.equal(e.op, 'submitBatch');
          assert.match(e.message, /\(one of \d+ writes of this batch that travelled as one operation/);
        }
        const last = a!.stats().ops;
        assert.equal(last.submitted - after.submitted, plain.length);
        assert.equal(last.failed - after.failed, plain.length);
        assert.equal(last.inFlight, before.inFlight);
        for (const imm of [71, 72]) await assertNoExtra(b!, imm);
        assertBytes(bytesOf(db), eb, 'peer b after the aborted batch');
        // mergeWrites: false — the same writes, each its own operation, each its own error.
        const r3 = await a!.submitBatch(plain, { signal: ac.signal, mergeWrites: false });
        assert.equal(r3.failed, plain.length);
        assert.equal(new Set(r3.errors).size, plain.length, 'an error object per request');
        for (const e of r3.errors) assert.ok(e instanceof TrellisError && e.code === 'ABORTED');
        await assert.rejects(
          a!.submitBatch(plain, { mergeWrites: 'yes' as unknown as boolean }),
          (e: unknown) =>
            e instanceof TrellisError &&
            e.code === 'INVALID_ARGUMENT' &&
            /mergeWrites must be a boolean/.test(e.message),
        );
        for (const imm of [71, 72]) await assertNoExtra(b!, imm);
      }),
  },
];
