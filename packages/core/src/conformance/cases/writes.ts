// Conformance cases — Writes: single (every size, shards, descriptors), registrations, paged,
// scatter, barrier and immediates.
import assert from 'node:assert/strict';
import { MrDesc } from '../../desc.js';
import { autoShards, lanesBetween } from '../../imms.js';
import type { ScatterRouting, ScatterTarget, TransferEngine } from '../../types.js';
import { assertBytes, bytesOf, nicSum, rejects, throws } from '../util.js';
import { allSizes, assertNoExtra, type ConformanceCase, source, target, WAIT, withGroup } from './shared.js';

export const WRITE_CASES: readonly ConformanceCase[] = [
  {
    id: 'single: every size incl. 0 and unaligned offsets lands byte-exact, imms = expectedImms',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }, rng) => {
        for (const [i, length] of allSizes(rng).entries()) {
          const srcOffset = rng.below(97);
          const dstOffset = rng.below(131);
          const src = await source(a!, srcOffset + length + rng.below(50), ctx.seed + i);
          const { h: dst, expect } = await target(b!, dstOffset + length + rng.below(50), ctx.seed + i);
          const imm = 1000 + i;
          const req = { src, srcOffset, length, dst: dst.desc, dstOffset, imm };
          const n = a!.expectedImms({ kind: 'single', ...req });
          assert.equal(
            n,
            autoShards(length, lanesBetween(a!.nics, b!.nics)),
            `length ${length}: expectedImms`,
          );
          const arrived = b!.immCounter(imm).wait(n, WAIT);
          await a!.submitSingleWrite(req);
          await arrived;
          expect.set(bytesOf(src).subarray(srcOffset, srcOffset + length), dstOffset);
          assertBytes(bytesOf(dst), expect, `length ${length} src+${srcOffset} dst+${dstOffset}`);
          await src.unregister();
          await dst.unregister();
        }
      }),
  },
  {
    id: 'single: explicit shards 1..lanes each produce exactly that many imms',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const lanes = lanesBetween(a!.nics, b!.nics);
        for (let shards = 1; shards <= lanes; shards++) {
          for (const length of [0, 5, 4096 * 3 + 1, 1 << 18]) {
            const src = await source(a!, length, shards * 7 + length);
            const { h: dst, expect } = await target(b!, length, length);
            const imm = 77 + shards;
            const req = { src, length, dst: dst.desc, imm, shards };
            assert.equal(a!.expectedImms({ kind: 'single', ...req }), shards);
            await a!.submitSingleWrite(req);
            await b!.immCounter(imm).wait(shards, WAIT);
            expect.set(bytesOf(src));
            assertBytes(bytesOf(dst), expect, `shards ${shards} length ${length}`);
            await assertNoExtra(b!, imm);
          }
        }
      }),
  },
  {
    id: 'single: without imm, bytes are visible when the promise resolves and no imm arrives',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 200_000, 3);
        const { h: dst, expect } = await target(b!, 200_000, 4);
        await a!.submitSingleWrite({ src, srcOffset: 10, length: 150_000, dst: dst.desc, dstOffset: 33 });
        expect.set(bytesOf(src).subarray(10, 150_010), 33);
        assertBytes(bytesOf(dst), expect, 'no-imm write');
        assert.equal(nicSum(b!, 'immsReceived'), 0);
      }),
  },
  {
    id: 'single: a descriptor decoded from bytes and from text works as the target',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 4096, 9);
        const { h: dst, expect } = await target(b!, 8192, 9);
        const viaBytes = MrDesc.fromBytes(dst.desc.toBytes());
        const viaText = MrDesc.parse(dst.desc.toString());
        await a!.submitSingleWrite({ src, length: 4096, dst: viaBytes, imm: 1 });
        await a!.submitSingleWrite({ src, length: 4096, dst: viaText, dstOffset: 4096, imm: 1 });
        await b!.immCounter(1).wait(2 * autoShards(4096, lanesBetween(a!.nics, b!.nics)), WAIT);
        expect.set(bytesOf(src), 0);
        expect.set(bytesOf(src), 4096);
        assertBytes(bytesOf(dst), expect, 'decoded descriptors');
      }),
  },
  {
    id: 'single: write to itself (own descriptor) works',
    run: (ctx) =>
      withGroup(ctx, 1, async ({ engines: [a] }) => {
        const src = await source(a!, 70_000, 12);
        const { h: dst, expect } = await target(a!, 70_000, 13);
        await a!.submitSingleWrite({ src, length: 70_000, dst: dst.desc, imm: 3 });
        await a!.immCounter(3).wait(autoShards(70_000, a!.nics), WAIT);
        expect.set(bytesOf(src));
        assertBytes(bytesOf(dst), expect, 'self write');
      }),
  },
  {
    id: 'register: byte count, ArrayBuffer, SharedArrayBuffer and an offset view all map the right bytes',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const ab = new ArrayBuffer(1000);
        const sab = new SharedArrayBuffer(1000);
        const backing = new Uint8Array(3000);
        const view = backing.subarray(1000, 2000);
        for (const [name, mem] of [
          ['ArrayBuffer', ab],
          ['SharedArrayBuffer', sab],
          ['view', view],
        ] as const) {
          const dst = await b!.registerMemory(mem, { remote: true });
          assert.equal(dst.length, 1000, name);
          const src = await source(a!, 1000, name.length);
          await a!.submitSingleWrite({ src, length: 1000, dst: dst.desc, imm: 9 });
          await b!.immCounter(9).wait(1, WAIT);
          const seen = name === 'view' ? backing.subarray(1000, 2000) : new Uint8Array(mem as ArrayBuffer);
          assertBytes(seen, bytesOf(src), name);
          await dst.unregister();
        }
        assert.ok(
          backing.subarray(0, 1000).every((x) => x === 0),
          'bytes before the view untouched',
        );
        assert.ok(
          backing.subarray(2000).every((x) => x === 0),
          'bytes after the view untouched',
        );
        const owned = await a!.registerMemory(12345);
        assert.equal(owned.length, 12345);
        assert.equal(owned.buffer?.length, 12345);
        assert.equal(owned.remote, false);
        assert.equal(owned.desc.remote, false, 'a local-only region has no rkeys');
      }),
  },
  // ---------------------------------------------------------------------------- paged writes
  {
    id: 'paged: random page tables, strides and offsets land byte-exact, one imm per page',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }, rng) => {
        for (const pageBytes of [1, 64, 4096 + 3, 32 * 1024]) {
          const pages = rng.between(1, 60);
          const srcStride = pageBytes + rng.below(40);
          const dstStride = pageBytes + rng.below(40);
          const srcOffset = rng.below(17);
          const dstOffset = rng.below(19);
          const srcSlots = pages + rng.below(8);
          const dstSlots = pages + rng.below(8);
          const src = await source(a!, srcOffset + srcSlots * srcStride, pageBytes);
          const { h: dst, expect } = await target(b!, dstOffset + dstSlots * dstStride, pageBytes);
          const perm = (n: number, k: number): Uint32Array => {
            const all = Array.from({ length: n }, (_, i) => i);
            for (let i = n - 1; i > 0; i--) {
              const j = rng.below(i + 1);
              [all[i], all[j]] = [all[j]!, all[i]!];
            }
            return Uint32Array.from(all.slice(0, k));
          };
          const srcPages = perm(srcSlots, pages);
          const dstPages = perm(dstSlots, pages);
          const imm = 500 + pageBytes;
          const req = {
            src,
            srcPages,
            srcStride,
            srcOffset,
            dst: dst.desc,
            dstPages,
            dstStride,
            dstOffset,
            pageBytes,
            imm,
          };
          assert.equal(a!.expectedImms({ kind: 'paged', ...req }), pages);
          const arrived = b!.immCounter(imm).wait(pages, WAIT);
          await a!.submitPagedWrites(req);
          await arrived;
          for (let i = 0; i < pages; i++) {
            const s = srcOffset + srcPages[i]! * srcStride;
            expect.set(bytesOf(src).subarray(s, s + pageBytes), dstOffset + dstPages[i]! * dstStride);
          }
          assertBytes(bytesOf(dst), expect, `pageBytes ${pageBytes}`);
          await assertNoExtra(b!, imm);
        }
      }),
  },
  {
    id: 'paged: pages at the very end of both regions',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const pageBytes = 1000;
        const stride = 1024;
        const src = await source(a!, 7 + 9 * stride + pageBytes, 1);
        const { h: dst, expect } = await target(b!, 3 + 4 * stride + pageBytes, 2);
        const req = {
          src,
          srcPages: Uint32Array.of(9, 0),
          srcStride: stride,
          srcOffset: 7,
          dst: dst.desc,
          dstPages: Uint32Array.of(4, 0),
          dstStride: stride,
          dstOffset: 3,
          pageBytes,
          imm: 4,
        };
        await a!.submitPagedWrites(req);
        await b!.immCounter(4).wait(2, WAIT);
        expect.set(bytesOf(src).subarray(7 + 9 * stride, 7 + 9 * stride + pageBytes), 3 + 4 * stride);
        expect.set(bytesOf(src).subarray(7, 7 + pageBytes), 3);
        assertBytes(bytesOf(dst), expect, 'end pages');
        assert.equal(
          bytesOf(dst).length,
          3 + 4 * stride + pageBytes,
          'the last page ends exactly at the region end',
        );
      }),
  },
  {
    id: 'paged: 10^4 pages in one call',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const n = 10_000;
        const pageBytes = 64;
        const src = await source(a!, n * pageBytes, 5);
        const { h: dst } = await target(b!, n * pageBytes, 6);
        const srcPages = Uint32Array.from({ length: n }, (_, i) => i);
        const dstPages = Uint32Array.from({ length: n }, (_, i) => n - 1 - i);
        const arrived = b!.immCounter(8).wait(n, WAIT);
        await a!.submitPagedWrites({
          src,
          srcPages,
          srcStride: pageBytes,
          dst: dst.desc,
          dstPages,
          dstStride: pageBytes,
          pageBytes,
          imm: 8,
        });
        await arrived;
        const s = bytesOf(src);
        const d = bytesOf(dst);
        for (let i = 0; i < n; i++) {
          assertBytes(
            d.subarray((n - 1 - i) * pageBytes, (n - i) * pageBytes),
            s.subarray(i * pageBytes, (i + 1) * pageBytes),
            `page ${i}`,
          );
        }
      }),
  },
  {
    id: 'paged: zero pages resolves and produces no imm',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 64, 1);
        const { h: dst } = await target(b!, 64, 1);
        const req = {
          src,
          srcPages: new Uint32Array(0),
          srcStride: 64,
          dst: dst.desc,
          dstPages: new Uint32Array(0),
          dstStride: 64,
          pageBytes: 64,
          imm: 2,
        };
        assert.equal(a!.expectedImms({ kind: 'paged', ...req }), 0);
        await a!.submitPagedWrites(req);
        await assertNoExtra(b!, 2);
      }),
  },
  {
    id: 'paged: the caller may reuse its page arrays as soon as the call returns',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 8 * 128, 1);
        const { h: dst, expect } = await target(b!, 8 * 128, 2);
        const srcPages = Uint32Array.of(0, 1, 2, 3);
        const dstPages = Uint32Array.of(4, 5, 6, 7);
        const p = a!.submitPagedWrites({
          src,
          srcPages,
          srcStride: 128,
          dst: dst.desc,
          dstPages,
          dstStride: 128,
          pageBytes: 128,
          imm: 6,
        });
        dstPages.fill(0);
        srcPages.fill(7);
        await p;
        await b!.immCounter(6).wait(4, WAIT);
        expect.set(bytesOf(src).subarray(0, 512), 512);
        assertBytes(bytesOf(dst), expect, 'pages as submitted');
      }),
  },
  // ---------------------------------------------------------------------------- scatter
  ...(['peers', 'bytes', 'nic'] as const).map(
    (kind): ConformanceCase => ({
      id: `scatter: routing '${kind}' to 3 peers with 2 targets each lands byte-exact, per-peer imms = expectedImms`,
      run: (ctx) =>
        withGroup(ctx, 4, async ({ engines }, rng) => {
          const [a, ...peers] = engines as [TransferEngine, ...TransferEngine[]];
          const routing: ScatterRouting = kind === 'nic' ? { nic: a.nics - 1 } : kind;
          const len = 100_000;
          const src = await source(a, 6 * len, 31);
          const dsts = await Promise.all(peers.map((p, i) => target(p, 4 * len, i)));
          const targets: ScatterTarget[] = [];
          peers.forEach((_, i) => {
            for (let k = 0; k < 2; k++) {
              const length = rng.between(0, len);
              // Targets of one peer never overlap, so the final bytes do not depend on order.
              targets.push({
                dst: dsts[i]!.h.desc,
                srcOffset: (2 * i + k) * len,
                dstOffset: 2 * k * len + rng.below(len),
                length,
              });
            }
          });
          const imm = 4242;
          const req = { src, targets, imm, routing };
          const expected = peers.map((p) => a.expectedImms({ kind: 'scatter', ...req }, p.address));
          peers.forEach((p, i) => {
            const mine = targets.filter((t) => t.dst.owner.equals(p.address));
            const lanes = lanesBetween(a.nics, p.nics);
            const want =
              kind === 'bytes' ? mine.reduce((n, t) => n + autoShards(t.length, lanes), 0) : mine.length;
            assert.equal(expected[i], want, `peer ${i} expectedImms`);
          });
          const arrived = peers.map((p, i) => p.immCounter(imm).wait(expected[i]!, WAIT));
          await a.submitScatter(req);
          await Promise.all(arrived);
          for (const t of targets) {
            const i = peers.findIndex((p) => t.dst.owner.equals(p.address));
            dsts[i]!.expect.set(bytesOf(src).subarray(t.srcOffset, t.srcOffset + t.length), t.dstOffset);
          }
          for (const [i, d] of dsts.entries()) assertBytes(bytesOf(d.h), d.expect, `peer ${i}`);
          for (const p of peers) await assertNoExtra(p, imm);
        }),
    }),
  ),
  {
    id: 'scatter: no targets resolves at once; expectedImms needs a target for multi-peer scatters',
    run: (ctx) =>
      withGroup(ctx, 3, async ({ engines: [a, b, c] }) => {
        const src = await source(a!, 64, 1);
        await a!.submitScatter({ src, targets: [], imm: 1 });
        const d1 = await b!.registerMemory(64, { remote: true });
        const d2 = await c!.registerMemory(64, { remote: true });
        const req = {
          kind: 'scatter' as const,
          src,
          targets: [
            { dst: d1.desc, srcOffset: 0, dstOffset: 0, length: 64 },
            { dst: d2.desc, srcOffset: 0, dstOffset: 0, length: 64 },
          ],
          imm: 1,
        };
        throws(() => a!.expectedImms(req), 'INVALID_ARGUMENT', 'multi-peer without target');
        assert.equal(a!.expectedImms(req, b!.address), 1);
        assert.equal(a!.expectedImms(req, c!.address), 1);
        assert.equal(a!.expectedImms(req, a!.address), 0);
      }),
  },
  // ---------------------------------------------------------------------------- barrier / imm
  {
    id: 'barrier: every member counts one arrival per round; overlapping rounds need no reset',
    run: (ctx) =>
      withGroup(ctx, 4, async ({ engines }) => {
        const [a, ...rest] = engines as [TransferEngine, ...TransferEngine[]];
        const group = a.addPeerGroup([...rest.map((e) => e.address), a.address]);
        assert.equal(group.peers.length, 4);
        const rounds = 5;
        const ps: Promise<void>[] = [];
        for (let r = 0; r < rounds; r++) ps.push(a.submitBarrier({ group, imm: 90 }));
        assert.equal(a.expectedImms({ kind: 'barrier', group, imm: 90 }, rest[0]!.address), 1);
        await Promise.all(ps);
        for (const e of engines) {
          for (let r = 0; r < rounds; r++) await e.immCounter(90).wait(1, WAIT);
          await assertNoExtra(e, 90);
          assert.equal(e.immCounter(90).total, rounds);
        }
        // Spread over lanes: member j on lane j mod lanes; still one arrival per member.
        const lane0Before = a.stats().nics[0]!.writeOps;
        await a.submitBarrier({ group, imm: 91, spread: true });
        for (const e of engines) await e.immCounter(91).wait(1, WAIT);
        const lanes = lanesBetween(a.nics, rest[0]!.nics);
        const onLane0 = group.peers.filter((_, j) => j % lanes === 0).length;
        assert.equal(a.stats().nics[0]!.writeOps - lane0Before, onLane0, 'spread barrier: writes on lane 0');
        await rejects(
          a.submitBarrier({ group, imm: 1, spread: 'yes' as never }),
          'INVALID_ARGUMENT',
          'spread flag',
        );
      }),
  },
  {
    id: 'imm: to an address and to a descriptor, on every NIC',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const dst = await b!.registerMemory(16, { remote: true });
        const lanes = lanesBetween(a!.nics, b!.nics);
        for (let nic = 0; nic < lanes; nic++) {
          await a!.submitImm({ dst: b!.address, imm: 0xffff_ffff, nic });
          await a!.submitImm({ dst: dst.desc, imm: 0, nic });
        }
        await b!.immCounter(0xffff_ffff).wait(lanes, WAIT);
        await b!.immCounter(0).wait(lanes, WAIT);
        assert.equal(a!.expectedImms({ kind: 'imm', dst: b!.address, imm: 5 }), 1);
        await assertNoExtra(b!, 0);
        assert.equal(nicSum(b!, 'immsReceived'), 2 * lanes);
        await rejects(
          a!.submitImm({ dst: b!.address, imm: 1, nic: lanes }),
          'INVALID_ARGUMENT',
          'nic out of range',
        );
      }),
  },
];
