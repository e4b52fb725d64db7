import assert from 'node:assert/strict';
import { NetAddr } from '../addr.js';
import { MrDesc } from '../desc.js';
import { TrellisError } from '../errors.js';
import { autoShards, lanesBetween } from '../imms.js';
import type { FaultInjector } from '../loopback/fabric.js';
import { Prng } from '../loopback/prng.js';
import type { MrHandle, RecvMessage, ScatterRouting, ScatterTarget, TransferEngine } from '../types.js';
import { assertBytes, bytesOf, nicSum, pattern, rejects, SettleTracker, sleep, throws } from './util.js';

/** Engines that can reach each other, made fresh for one case. */
export interface EngineGroup {
  engines: TransferEngine[];
  /** Present when the target can inject faults. */
  faults?: FaultInjector;
  /** Close everything (engines already closed by the case are fine). */
  close(): Promise<void>;
}

export type GroupFactory = (size: number) => Promise<EngineGroup>;

export interface CaseContext {
  createGroup: GroupFactory;
  nics: number;
  seed: number;
}

/** One conformance case: its id (the vitest title) and its body. */
export interface ConformanceCase {
  id: string;
  run(ctx: CaseContext): Promise<void>;
}

const WAIT = { timeoutMs: 15_000 };

async function withGroup(
  ctx: CaseContext,
  size: number,
  fn: (g: EngineGroup, rng: Prng) => Promise<void>,
): Promise<void> {
  const g = await ctx.createGroup(size);
  try {
    await fn(g, new Prng(ctx.seed));
  } finally {
    await g.close();
  }
}

function needFaults(g: EngineGroup): FaultInjector {
  if (!g.faults) throw new Error('this case needs fault injection: skip it for targets without it');
  return g.faults;
}

/** A region filled with a sentinel, so writes outside their range show up. */
async function target(
  e: TransferEngine,
  length: number,
  seed: number,
): Promise<{ h: MrHandle; expect: Uint8Array }> {
  const h = await e.registerMemory(length, { remote: true });
  const init = pattern(length, seed ^ 0x5a5a);
  bytesOf(h).set(init);
  return { h, expect: init.slice() };
}

async function source(e: TransferEngine, length: number, seed: number): Promise<MrHandle> {
  const h = await e.registerMemory(length);
  bytesOf(h).set(pattern(length, seed));
  return h;
}

/** After the expected arrivals, no extra one may show up. */
async function assertNoExtra(e: TransferEngine, imm: number): Promise<void> {
  await sleep(20);
  assert.equal(e.immCounter(imm).value, 0, `imm ${imm}: unexpected extra arrivals`);
}

function allSizes(rng: Prng): number[] {
  const fixed = [
    0,
    1,
    7,
    63,
    64,
    65,
    4095,
    4096,
    16383,
    16384,
    16385,
    3 * 16384 + 5,
    65536 + 13,
    262144 + 5,
    (1 << 20) + 3,
  ];
  for (let i = 0; i < 6; i++) fixed.push(rng.between(1, 300_000));
  return fixed;
}

const cases: ConformanceCase[] = [
  // ---------------------------------------------------------------------------- single writes
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
  // ---------------------------------------------------------------------------- counters
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
  // ---------------------------------------------------------------------------- bad input
  {
    id: 'bounds: out-of-range offsets, lengths and pages reject with OUT_OF_RANGE before anything is posted',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 1000, 1);
        const { h: dst, expect } = await target(b!, 1000, 2);
        const before = a!.stats().ops.submitted;
        const bad: Array<[string, Promise<void>]> = [
          ['src end', a!.submitSingleWrite({ src, srcOffset: 1, length: 1000, dst: dst.desc, imm: 1 })],
          ['dst end', a!.submitSingleWrite({ src, length: 10, dst: dst.desc, dstOffset: 991, imm: 1 })],
          [
            'overflow',
            a!.submitSingleWrite({
              src,
              srcOffset: Number.MAX_SAFE_INTEGER,
              length: 1,
              dst: dst.desc,
              imm: 1,
            }),
          ],
          ['length past both', a!.submitSingleWrite({ src, length: 1001, dst: dst.desc, imm: 1 })],
          [
            'src page',
            a!.submitPagedWrites({
              src,
              srcPages: Uint32Array.of(0, 10),
              srcStride: 100,
              dst: dst.desc,
              dstPages: Uint32Array.of(0, 1),
              dstStride: 100,
              pageBytes: 100,
              imm: 1,
            }),
          ],
          [
            'dst page',
            a!.submitPagedWrites({
              src,
              srcPages: Uint32Array.of(0),
              srcStride: 100,
              dst: dst.desc,
              dstPages: Uint32Array.of(9),
              dstStride: 100,
              dstOffset: 1,
              pageBytes: 100,
              imm: 1,
            }),
          ],
          [
            'page index overflow',
            a!.submitPagedWrites({
              src,
              srcPages: Uint32Array.of(0xffff_ffff),
              srcStride: 2 ** 40,
              dst: dst.desc,
              dstPages: Uint32Array.of(0),
              dstStride: 100,
              pageBytes: 100,
              imm: 1,
            }),
          ],
          [
            'scatter src',
            a!.submitScatter({
              src,
              targets: [{ dst: dst.desc, srcOffset: 900, dstOffset: 0, length: 101 }],
              imm: 1,
            }),
          ],
          [
            'scatter dst',
            a!.submitScatter({
              src,
              targets: [{ dst: dst.desc, srcOffset: 0, dstOffset: 999, length: 2 }],
              imm: 1,
            }),
          ],
        ];
        for (const [label, p] of bad) {
          const e = await rejects(p, 'OUT_OF_RANGE', label);
          assert.match(e.message, /^submit\w+: /, `${label}: the message names the call`);
        }
        assert.equal(a!.stats().ops.submitted, before, 'nothing was posted');
        await sleep(20);
        assert.equal(b!.immCounter(1).total, 0, 'no imm arrived');
        assertBytes(bytesOf(dst), expect, 'target untouched');
      }),
  },
  {
    id: 'bad input: wrong types and values reject with INVALID_ARGUMENT and a message naming the field',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 1000, 1);
        const dst = await b!.registerMemory(1000, { remote: true });
        const lanes = lanesBetween(a!.nics, b!.nics);
        const base = { src, length: 10, dst: dst.desc };
        const paged = {
          src,
          srcPages: Uint32Array.of(0),
          srcStride: 10,
          dst: dst.desc,
          dstPages: Uint32Array.of(0),
          dstStride: 10,
          pageBytes: 10,
        };
        const bad: Array<[RegExp, () => Promise<void>]> = [
          [/imm/, () => a!.submitSingleWrite({ ...base, imm: -1 })],
          [/imm/, () => a!.submitSingleWrite({ ...base, imm: 2 ** 32 })],
          [/imm/, () => a!.submitSingleWrite({ ...base, imm: 1.5 })],
          [/shards/, () => a!.submitSingleWrite({ ...base, shards: 0 })],
          [/shards/, () => a!.submitSingleWrite({ ...base, shards: lanes + 1 })],
          [/length/, () => a!.submitSingleWrite({ ...base, length: -1 })],
          [/length/, () => a!.submitSingleWrite({ ...base, length: Number.NaN })],
          [/srcOffset/, () => a!.submitSingleWrite({ ...base, srcOffset: 0.5 })],
          [/dstOffset/, () => a!.submitSingleWrite({ ...base, dstOffset: 2 ** 53 })],
          [/src must be an MrHandle/, () => a!.submitSingleWrite({ ...base, src: {} as MrHandle })],
          [
            /dst must be an MrDesc/,
            () => a!.submitSingleWrite({ ...base, dst: dst.desc.toString() as unknown as MrDesc }),
          ],
          [/request object/, () => a!.submitSingleWrite(null as never)],
          [/timeoutMs/, () => a!.submitSingleWrite({ ...base, timeoutMs: -5 })],
          [/signal/, () => a!.submitSingleWrite({ ...base, signal: {} as AbortSignal })],
          [/equal/, () => a!.submitPagedWrites({ ...paged, dstPages: Uint32Array.of(0, 1) })],
          [/Uint32Array/, () => a!.submitPagedWrites({ ...paged, srcPages: [0] as unknown as Uint32Array })],
          [/srcStride/, () => a!.submitPagedWrites({ ...paged, srcStride: 5 })],
          [/pageBytes/, () => a!.submitPagedWrites({ ...paged, pageBytes: 0 })],
          [/routing/, () => a!.submitScatter({ src, targets: [], routing: 'random' as never })],
          [/routing\.nic/, () => a!.submitScatter({ src, targets: [], routing: { nic: a!.nics } })],
          [/targets/, () => a!.submitScatter({ src, targets: 'x' as never })],
          [/group/, () => a!.submitBarrier({ group: { id: 999, peers: [] }, imm: 1 })],
          [/imm/, () => a!.submitBarrier({ group: a!.addPeerGroup([b!.address]), imm: undefined as never })],
          [/dst must be a NetAddr/, () => a!.submitImm({ dst: 'nope' as never, imm: 1 })],
          [/data must be a Uint8Array/, () => a!.submitSend(b!.address, 'text' as never)],
        ];
        const before = a!.stats().ops.submitted;
        for (const [re, call] of bad) {
          const e = await rejects(call(), 'INVALID_ARGUMENT', String(re));
          assert.match(e.message, re);
        }
        assert.equal(a!.stats().ops.submitted, before);
        throws(() => a!.addPeerGroup([]), 'INVALID_ARGUMENT', 'empty group');
        throws(() => a!.allocUvmWatcher(5 as never), 'INVALID_ARGUMENT', 'watcher callback');
        await rejects(a!.registerMemory(-1), 'INVALID_ARGUMENT', 'negative size');
        await rejects(a!.registerMemory('big' as never), 'INVALID_ARGUMENT', 'string source');
        await rejects(a!.registerMemory(10, { remote: 'yes' as never }), 'INVALID_ARGUMENT', 'remote flag');
      }),
  },
  {
    id: "descriptors: another engine kind, a local-only region, another engine's handle, an unregistered handle",
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 100, 1);
        const dst = await b!.registerMemory(100, { remote: true });
        const foreignOwner = new NetAddr('x-foreign', 1, b!.address.nics);
        const foreign = new MrDesc(foreignOwner, dst.desc.base, 100, dst.desc.nics);
        let e = await rejects(
          a!.submitSingleWrite({ src, length: 1, dst: foreign, imm: 1 }),
          'INVALID_DESCRIPTOR',
          'foreign kind',
        );
        assert.match(e.message, /x-foreign/);
        const local = await b!.registerMemory(100);
        e = await rejects(
          a!.submitSingleWrite({ src, length: 1, dst: local.desc, imm: 1 }),
          'INVALID_DESCRIPTOR',
          'local-only',
        );
        assert.match(e.message, /remote: true/);
        const bsrc = await source(b!, 100, 2);
        e = await rejects(
          a!.submitSingleWrite({ src: bsrc, length: 1, dst: dst.desc, imm: 1 }),
          'INVALID_DESCRIPTOR',
          'other engine handle',
        );
        assert.match(e.message, /another engine/);
        await src.unregister();
        assert.equal(src.registered, false);
        e = await rejects(
          a!.submitSingleWrite({ src, length: 1, dst: dst.desc, imm: 1 }),
          'INVALID_DESCRIPTOR',
          'unregistered',
        );
        assert.match(e.message, /unregistered/);
        await rejects(a!.submitImm({ dst: foreignOwner, imm: 1 }), 'INVALID_DESCRIPTOR', 'foreign address');
        await sleep(10);
        assert.equal(b!.immCounter(1).total, 0);
      }),
  },
  {
    id: 'descriptors: an unknown peer rejects with UNKNOWN_PEER before posting',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const fake = new NetAddr(
          a!.kind,
          b!.address.generation,
          b!.address.nics.map((n) => n.map((x) => x ^ 0xa5)),
        );
        const before = a!.stats().ops.submitted;
        await rejects(a!.submitImm({ dst: fake, imm: 1 }), 'UNKNOWN_PEER', 'imm');
        await rejects(a!.submitSend(fake, Uint8Array.of(1)), 'UNKNOWN_PEER', 'send');
        const src = await source(a!, 10, 1);
        const dst = await b!.registerMemory(10, { remote: true });
        const forged = new MrDesc(fake, dst.desc.base, 10, dst.desc.nics);
        await rejects(
          a!.submitSingleWrite({ src, length: 10, dst: forged, imm: 1 }),
          'UNKNOWN_PEER',
          'write',
        );
        throws(() => a!.addPeerGroup([b!.address, fake]), 'UNKNOWN_PEER', 'group');
        assert.equal(a!.stats().ops.submitted, before);
      }),
  },
  {
    id: 'descriptors: a detached or shrunk registered buffer rejects with DETACHED_BUFFER; a resizable one is refused',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const ab = new ArrayBuffer(256);
        const src = await a!.registerMemory(ab);
        const dst = await b!.registerMemory(256, { remote: true });
        structuredClone(ab, { transfer: [ab] });
        assert.equal(ab.byteLength, 0);
        const e = await rejects(
          a!.submitSingleWrite({ src, length: 16, dst: dst.desc, imm: 1 }),
          'DETACHED_BUFFER',
          'detached',
        );
        assert.match(e.message, /detached/);
        const gone = new ArrayBuffer(8);
        structuredClone(gone, { transfer: [gone] });
        await rejects(a!.registerMemory(gone), 'DETACHED_BUFFER', 'register detached');
        // A resizable buffer could shrink under the NIC: refused, as a buffer or through a view.
        const resizable = new (ArrayBuffer as unknown as new (n: number, o: object) => ArrayBuffer)(64, {
          maxByteLength: 128,
        });
        const r1 = await rejects(a!.registerMemory(resizable), 'INVALID_ARGUMENT', 'resizable');
        assert.match(r1.message, /resizable/);
        await rejects(
          a!.registerMemory(new Uint8Array(resizable, 8, 8)),
          'INVALID_ARGUMENT',
          'view of resizable',
        );
        assert.equal(a!.stats().regions, 1);
      }),
  },
  // ---------------------------------------------------------------------------- errors
  {
    id: "errors: a rejection carries code, op, peer and the submitting call's stack",
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 10, 1);
        const dst = await b!.registerMemory(10, { remote: true });
        await b!.close();
        const e = await rejects(
          a!.submitSingleWrite({ src, length: 10, dst: dst.desc, imm: 1 }),
          'PEER_LOST',
          'closed peer',
        );
        assert.ok(e instanceof TrellisError);
        assert.equal(e.op, 'submitSingleWrite');
        assert.equal(e.peer, b!.address.toString());
        assert.match(e.stack ?? '', /cases\.(ts|js)/, 'the stack points at the submitting code');
        assert.match(e.stack ?? '', /PEER_LOST/);
      }),
  },
  // ---------------------------------------------------------------------------- close, cancel, faults
  {
    id: 'close: operations in flight settle exactly once; later calls reject CLOSED; close is idempotent',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 1 << 20, 1);
        const dst = await b!.registerMemory(1 << 20, { remote: true });
        const t = new SettleTracker();
        for (let i = 0; i < 50; i++) {
          t.track(a!.submitSingleWrite({ src, length: 1 << 20, dst: dst.desc, imm: 2 }));
          t.track(
            a!.submitPagedWrites({
              src,
              srcPages: Uint32Array.of(1, 2, 3),
              srcStride: 4096,
              dst: dst.desc,
              dstPages: Uint32Array.of(3, 2, 1),
              dstStride: 4096,
              pageBytes: 4096,
              imm: 3,
            }),
          );
          t.track(a!.submitSend(b!.address, Uint8Array.of(i)));
        }
        const waiting = a!.immCounter(1).wait(1);
        await Promise.all([a!.close(), a!.close()]);
        await t.settled(10_000);
        for (const o of t.outcomes) assert.ok(o === 'resolved' || o === 'CLOSED', `outcome ${o}`);
        await rejects(waiting, 'CLOSED', 'counter wait');
        assert.equal(a!.closed, true);
        await rejects(a!.submitSingleWrite({ src, length: 1, dst: dst.desc }), 'CLOSED', 'write after close');
        await rejects(a!.registerMemory(10), 'CLOSED', 'register after close');
        await rejects(a!.submitSend(b!.address, Uint8Array.of(1)), 'CLOSED', 'send after close');
        await rejects(a!.immCounter(1).wait(1), 'CLOSED', 'wait after close');
        throws(() => a!.addPeerGroup([b!.address]), 'CLOSED', 'group after close');
        const s = a!.stats();
        assert.equal(s.ops.inFlight, 0);
        assert.equal(s.ops.completed + s.ops.failed, 150);
        assert.equal(s.ops.failed, t.count('CLOSED'));
        await a!.close();
      }),
  },
  {
    id: 'close: operations to a peer that closed reject with PEER_LOST',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 4096, 1);
        const dst = await b!.registerMemory(4096, { remote: true });
        await b!.close();
        await rejects(
          a!.submitSingleWrite({ src, length: 4096, dst: dst.desc, imm: 1 }),
          'PEER_LOST',
          'write',
        );
        await rejects(a!.submitSend(b!.address, Uint8Array.of(1)), 'PEER_LOST', 'send');
        await rejects(a!.submitImm({ dst: b!.address, imm: 1 }), 'PEER_LOST', 'imm');
      }),
  },
  {
    id: 'cancel: an already-aborted signal rejects ABORTED and nothing lands',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 4096, 1);
        const { h: dst, expect } = await target(b!, 4096, 2);
        const ac = new AbortController();
        ac.abort();
        await rejects(
          a!.submitSingleWrite({ src, length: 4096, dst: dst.desc, imm: 1, signal: ac.signal }),
          'ABORTED',
          'write',
        );
        await rejects(a!.submitSend(b!.address, Uint8Array.of(1), { signal: ac.signal }), 'ABORTED', 'send');
        await sleep(20);
        assert.equal(b!.immCounter(1).total, 0);
        assertBytes(bytesOf(dst), expect, 'nothing landed');
      }),
  },
  {
    id: 'cancel: abort and timeout mid-flight settle every operation once, as success or ABORTED/TIMEOUT',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 1 << 16, 1);
        const dst = await b!.registerMemory(1 << 16, { remote: true });
        const t = new SettleTracker();
        const ac = new AbortController();
        const pages = Uint32Array.from({ length: 256 }, (_, i) => i);
        for (let i = 0; i < 20; i++) {
          t.track(
            a!.submitPagedWrites({
              src,
              srcPages: pages,
              srcStride: 256,
              dst: dst.desc,
              dstPages: pages,
              dstStride: 256,
              pageBytes: 256,
              imm: 5,
              signal: ac.signal,
            }),
          );
          t.track(
            a!.submitPagedWrites({
              src,
              srcPages: pages,
              srcStride: 256,
              dst: dst.desc,
              dstPages: pages,
              dstStride: 256,
              pageBytes: 256,
              imm: 5,
              timeoutMs: 0,
            }),
          );
        }
        ac.abort();
        await t.settled(10_000);
        for (const o of t.outcomes) assert.ok(['resolved', 'ABORTED', 'TIMEOUT'].includes(o), `outcome ${o}`);
        assert.equal(a!.stats().ops.inFlight, 0);
        // Every arrival belongs to a page of an operation; none is counted twice.
        await sleep(20);
        const total = b!.immCounter(5).total;
        assert.ok(total <= 40 * 256, `arrivals ${total} <= pages posted`);
        assert.equal(total % 1, 0);
        const resolved = t.count('resolved');
        assert.ok(
          total >= resolved * 256,
          `every resolved op's ${256} pages arrived (${total} >= ${resolved * 256})`,
        );
      }),
  },
  {
    id: 'unregister: waits for pending operations that use the region',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 1 << 18, 1);
        const { h: dst, expect } = await target(b!, 1 << 18, 2);
        const w = a!.submitSingleWrite({ src, length: 1 << 18, dst: dst.desc, imm: 1 });
        let wDone = false;
        void w.then(() => {
          wDone = true;
        });
        await src.unregister();
        assert.equal(wDone, true, 'the write settled before unregister resolved');
        await b!.immCounter(1).wait(autoShards(1 << 18, lanesBetween(a!.nics, b!.nics)), WAIT);
        expect.set(pattern(1 << 18, 1));
        assertBytes(bytesOf(dst), expect, 'write completed');
      }),
  },
  {
    id: 'faults: a peer killed mid-transfer — every pending operation to it settles with PEER_LOST, later ones too',
    run: (ctx) =>
      withGroup(ctx, 3, async (g) => {
        const faults = needFaults(g);
        const [a, b, c] = g.engines as [TransferEngine, TransferEngine, TransferEngine];
        const src = await source(a, 1 << 18, 1);
        const db = await b.registerMemory(1 << 18, { remote: true });
        const dc = await c.registerMemory(1 << 18, { remote: true });
        const toB = new SettleTracker();
        const toC = new SettleTracker();
        for (let i = 0; i < 30; i++) {
          toB.track(a.submitSingleWrite({ src, length: 1 << 18, dst: db.desc, imm: 1 }));
          toB.track(a.submitSend(b.address, Uint8Array.of(i)));
          toC.track(a.submitSingleWrite({ src, length: 1 << 18, dst: dc.desc, imm: 1 }));
        }
        faults.killPeer(b);
        await toB.settled(10_000);
        await toC.settled(10_000);
        for (const o of toB.outcomes)
          assert.ok(o === 'resolved' || o === 'PEER_LOST', `to the dead peer: ${o}`);
        assert.ok(toB.count('PEER_LOST') > 0, 'the kill hit operations in flight');
        assert.equal(toC.count('resolved'), 30, 'the live peer is unaffected');
        await rejects(
          a.submitSingleWrite({ src, length: 10, dst: db.desc, imm: 1 }),
          'PEER_LOST',
          'after the kill',
        );
        await rejects(b.submitImm({ dst: a.address, imm: 1 }), 'CLOSED', 'the killed engine itself');
        await c.immCounter(1).wait(30 * autoShards(1 << 18, lanesBetween(a.nics, c.nics)), WAIT);
      }),
  },
  {
    id: 'faults: a killed peer is reported once through onPeerLost; quiesce(peer) resolves when nothing to it is in flight',
    run: (ctx) =>
      withGroup(ctx, 3, async (g) => {
        const faults = needFaults(g);
        const [a, b, c] = g.engines as [TransferEngine, TransferEngine, TransferEngine];
        const lost: string[] = [];
        const off = a.onPeerLost((p, why) => {
          assert.equal(why.code, 'PEER_LOST');
          lost.push(p.toString());
        });
        const src = await source(a, 1 << 18, 1);
        const db = await b.registerMemory(1 << 18, { remote: true });
        const t = new SettleTracker();
        for (let i = 0; i < 20; i++)
          t.track(a.submitSingleWrite({ src, length: 1 << 18, dst: db.desc, imm: 1 }));
        const quiet = a.quiesce(b.address);
        faults.killPeer(b);
        await quiet;
        assert.equal(
          t.outcomes.filter((o) => o === 'pending').length,
          0,
          'quiesce resolved with nothing in flight',
        );
        await t.settled(10_000);
        if (t.count('PEER_LOST') > 0) assert.deepEqual(lost, [b.address.toString()], 'reported once');
        await rejects(a.submitImm({ dst: b.address, imm: 1 }), 'PEER_LOST', 'after the loss');
        assert.deepEqual(lost, [b.address.toString()], 'still once');
        // An idle peer quiesces at once; a removed listener hears nothing more.
        await a.quiesce(c.address, { timeoutMs: 1000 });
        off();
      }),
  },
  {
    id: 'faults: a failed NIC fails the work requests it carries with NIC_FAILED; restored, it carries again',
    run: (ctx) =>
      withGroup(ctx, 2, async (g) => {
        const faults = needFaults(g);
        const [a, b] = g.engines as [TransferEngine, TransferEngine];
        const lanes = lanesBetween(a.nics, b.nics);
        const nic = lanes - 1;
        const src = await source(a, 1 << 18, 1);
        const { h: dst, expect } = await target(b, 1 << 18, 2);
        faults.failNic(b, nic);
        const e = await rejects(
          a.submitImm({ dst: b.address, imm: 1, nic }),
          'NIC_FAILED',
          'imm on the failed NIC',
        );
        assert.equal(e.nic, nic);
        await rejects(
          a.submitSingleWrite({ src, length: 1 << 18, dst: dst.desc, imm: 2, shards: lanes }),
          'NIC_FAILED',
          'sharded write',
        );
        assert.ok(a.stats().nics[nic]!.errors > 0, 'the NIC error is counted');
        if (lanes > 1) await a.submitImm({ dst: b.address, imm: 3, nic: 0 });
        faults.restoreNic(b, nic);
        await a.submitSingleWrite({ src, length: 1 << 18, dst: dst.desc, imm: 4, shards: lanes });
        await b.immCounter(4).wait(lanes, WAIT);
        expect.set(bytesOf(src));
        assertBytes(bytesOf(dst), expect, 'after restore');
        if (lanes > 1) await b.immCounter(3).wait(1, WAIT);
      }),
  },
  {
    id: 'faults: random delays do not change results',
    run: (ctx) =>
      withGroup(ctx, 2, async (g, rng) => {
        const faults = needFaults(g);
        const [a, b] = g.engines as [TransferEngine, TransferEngine];
        faults.setDelay([0, 5]);
        try {
          const src = await source(a, 300_000, 1);
          const { h: dst, expect } = await target(b, 300_000, 2);
          const ps: Promise<void>[] = [];
          let n = 0;
          for (let i = 0; i < 10; i++) {
            const off = i * 30_000;
            const length = rng.between(0, 30_000);
            ps.push(
              a.submitSingleWrite({ src, srcOffset: off, length, dst: dst.desc, dstOffset: off, imm: 6 }),
            );
            n += autoShards(length, lanesBetween(a.nics, b.nics));
            expect.set(bytesOf(src).subarray(off, off + length), off);
          }
          await Promise.all(ps);
          await b.immCounter(6).wait(n, WAIT);
          assertBytes(bytesOf(dst), expect, 'delayed writes');
        } finally {
          faults.setDelay(undefined);
        }
      }),
  },
  // ---------------------------------------------------------------------------- stats, watcher, workload
  {
    id: 'stats: bytes, work requests, imms and operation counts are exact',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 100_000, 1);
        const dst = await b!.registerMemory(100_000, { remote: true });
        const lanes = lanesBetween(a!.nics, b!.nics);
        await a!.submitSingleWrite({ src, length: 100_000, dst: dst.desc, imm: 1 });
        await a!.submitPagedWrites({
          src,
          srcPages: Uint32Array.of(0, 1, 2),
          srcStride: 1000,
          dst: dst.desc,
          dstPages: Uint32Array.of(5, 6, 7),
          dstStride: 1000,
          pageBytes: 1000,
          imm: 1,
        });
        const ac = new AbortController();
        let received!: () => void;
        const got = new Promise<void>((r) => {
          received = r;
        });
        const pool = b!.submitRecvs({ maxBytes: 64, count: 1, signal: ac.signal }, () => received());
        await a!.submitSend(b!.address, new Uint8Array(10));
        // The sender's completion says nothing about when the receiver's callback runs.
        await got;
        const n = autoShards(100_000, lanes) + 3;
        await b!.immCounter(1).wait(n, WAIT);
        const sa = a!.stats();
        assert.equal(sa.kind, a!.kind);
        assert.equal(sa.nics.length, a!.nics);
        // Between engines of one host the data may take the same-host lane (one copy into the
        // target's shared region); its immediates still go through the NICs, one per work request.
        const laneBytes = sa.hostLane?.bytes ?? 0;
        assert.ok(laneBytes === 0 || laneBytes === 103_000, `lane bytes ${laneBytes}`);
        assert.equal(sa.hostLane?.writes ?? 0, laneBytes ? 2 : 0);
        assert.equal(nicSum(a!, 'bytesWritten'), 103_000 - laneBytes);
        assert.equal(nicSum(a!, 'writeOps'), n);
        assert.equal(nicSum(b!, 'immsReceived'), n);
        assert.equal(sa.regions, 1);
        assert.equal(sa.registeredBytes, 100_000);
        assert.equal(b!.stats().registeredBytes, 100_000);
        for (const nic of sa.nics) {
          assert.equal(typeof nic.provider, 'string');
          assert.equal(nic.path, 'host');
          assert.equal(nic.up, true);
          assert.equal(nic.errors, 0);
        }
        assert.deepEqual(sa.ops, {
          submitted: 3,
          completed: 3,
          failed: 0,
          inFlight: 0,
          settledPosted: 0,
          held: 0,
        });
        assert.equal(nicSum(a!, 'bytesSent'), 10);
        assert.equal(nicSum(a!, 'sendOps'), 1);
        assert.equal(nicSum(b!, 'bytesReceived'), 10);
        assert.equal(nicSum(b!, 'recvOps'), 1);
        ac.abort();
        await pool;
      }),
  },
  {
    id: "watcher: a host producer's increments are observed, coalesced by value, and stop after close",
    run: (ctx) =>
      withGroup(ctx, 1, async ({ engines: [a] }) => {
        const seen: Array<[bigint, bigint]> = [];
        let reached!: () => void;
        const target5 = new Promise<void>((r) => {
          reached = r;
        });
        const seenAt: bigint[] = [];
        const w = a!.allocUvmWatcher((v, prev) => {
          seen.push([v, prev]);
          seenAt.push(w.seenAt);
          if (v === 5n) reached();
        });
        assert.equal(w.value, 0n);
        assert.equal(w.seenAt, 0n);
        const before = process.hrtime.bigint();
        for (let i = 0; i < 5; i++) w.increment();
        await target5;
        const after = process.hrtime.bigint();
        assert.equal(w.value, 5n);
        // Each call sees when its change was observed, on the process.hrtime clock, in order.
        for (const [i, t] of seenAt.entries()) {
          assert.ok(t >= before && t <= after, `seenAt ${t} outside [${before}, ${after}]`);
          if (i) assert.ok(t >= seenAt[i - 1]!);
        }
        // Calls chain: each one's previous is the last one's value, strictly increasing, ending at 5.
        let last = 0n;
        for (const [v, prev] of seen) {
          assert.equal(prev, last);
          assert.ok(v > prev);
          last = v;
        }
        assert.equal(last, 5n);
        w.close();
        const n = seen.length;
        Atomics.add(w.word, 0, 1n);
        await sleep(20);
        assert.equal(seen.length, n, 'no callback after close');
        w.close();
      }),
  },
  {
    id: 'triggered: a write armed on a watcher is posted when the word reaches the value, not before; cancel and close settle it once with nothing posted',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const n = 64 * 1024;
        const src = await source(a!, n, 31);
        const dst = await target(b!, 3 * n, 32);
        const imm = 0x7101;
        const w = a!.allocUvmWatcher(() => {});
        const t = new SettleTracker();
        const fired = a!.submitOnWatch(w, 3n, { kind: 'single', src, length: n, dst: dst.h.desc, imm });
        t.track(fired);
        const ac = new AbortController();
        const aborted = a!.submitOnWatch(w, 10n, {
          kind: 'single',
          src,
          length: n,
          dst: dst.h.desc,
          dstOffset: n,
          imm,
          signal: ac.signal,
        });
        t.track(aborted);
        const closed = a!.submitOnWatch(w, 20n, {
          kind: 'single',
          src,
          length: n,
          dst: dst.h.desc,
          dstOffset: 2 * n,
          imm,
        });
        t.track(closed);
        const settledCount = () => t.outcomes.filter((o) => o !== 'pending').length;
        w.increment();
        w.increment();
        await sleep(30);
        assert.equal(settledCount(), 0, 'nothing settles before the word reaches a value');
        assertBytes(bytesOf(dst.h), dst.expect, 'before the trigger');
        assert.equal(b!.immCounter(imm).total, 0);
        w.increment(); // 3: the first write goes out
        await fired;
        const expected = b!.expectedImms({ kind: 'single', src, length: n, dst: dst.h.desc, imm });
        await b!.immCounter(imm).wait(expected, { timeoutMs: 10_000 });
        dst.expect.set(bytesOf(src), 0);
        assertBytes(bytesOf(dst.h), dst.expect, 'after the trigger');
        ac.abort();
        await rejects(aborted, 'ABORTED', 'aborted before its value');
        w.increment(10n); // 13: past 10 (the aborted write must not go out), below 20
        await sleep(30);
        w.close();
        const e = await rejects(closed, 'ABORTED', 'watcher closed before its value');
        assert.match(e.message, /watcher was closed/);
        await assertNoExtra(b!, imm);
        assertBytes(bytesOf(dst.h), dst.expect, 'nothing of the cancelled writes landed');
        // A value already reached fires at once; an immediate alone can be triggered too.
        const w2 = a!.allocUvmWatcher(() => {});
        w2.increment(5n);
        await a!.submitOnWatch(w2, 5n, { kind: 'imm', dst: b!.address, imm: imm + 1 });
        await b!.immCounter(imm + 1).wait(1, { timeoutMs: 10_000 });
        // Bad input is refused before anything is armed.
        await rejects(
          a!.submitOnWatch(w2, 0n, { kind: 'imm', dst: b!.address, imm }),
          'INVALID_ARGUMENT',
          'value 0',
        );
        await rejects(
          a!.submitOnWatch(w, 30n, { kind: 'imm', dst: b!.address, imm }),
          'INVALID_ARGUMENT',
          'closed watcher',
        );
        const other = b!.allocUvmWatcher(() => {});
        await rejects(
          a!.submitOnWatch(other, 1n, { kind: 'imm', dst: b!.address, imm }),
          'INVALID_ARGUMENT',
          "another engine's watcher",
        );
        await rejects(
          a!.submitOnWatch(w2, 9n, { kind: 'single', src, length: n + 1, dst: dst.h.desc }),
          'OUT_OF_RANGE',
          'a bad request',
        );
        other.close();
        w2.close();
        await t.settled(1000);
        assert.deepEqual(t.outcomes, ['resolved', 'ABORTED', 'ABORTED']);
      }),
  },
  {
    id: 'liveness: quiesce(peer) waits for the operations to that peer only, at once when idle; bad input refused',
    run: (ctx) =>
      withGroup(ctx, 3, async ({ engines: [a, b, c] }) => {
        const src = await source(a!, 1 << 16, 3);
        const db = await b!.registerMemory(1 << 16, { remote: true });
        await a!.quiesce(b!.address, { timeoutMs: 1000 });
        const t = new SettleTracker();
        for (let i = 0; i < 16; i++)
          t.track(a!.submitSingleWrite({ src, length: 1 << 16, dst: db.desc, imm: 2 }));
        await a!.quiesce(b!.address, { timeoutMs: 10_000 });
        assert.equal(t.outcomes.filter((o) => o === 'pending').length, 0);
        await t.settled(1000);
        assert.equal(t.count('resolved'), 16);
        await a!.quiesce(c!.address);
        await rejects(a!.quiesce('x' as never), 'INVALID_ARGUMENT', 'not an address');
      }),
  },
  {
    id: 'registration: 0-byte regions (allocated and empty buffers, local and remote) register, carry 0-length writes, refuse 1 byte',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src0 = await a!.registerMemory(0);
        const srcEmpty = await a!.registerMemory(new ArrayBuffer(0));
        const dst0 = await b!.registerMemory(0, { remote: true });
        const dstEmpty = await b!.registerMemory(new Uint8Array(0), { remote: true });
        for (const h of [src0, srcEmpty, dst0, dstEmpty]) assert.equal(h.length, 0);
        assert.equal(dst0.desc.remote, true);
        assert.equal(src0.desc.remote, false);
        const imm = 0x7201;
        await a!.submitSingleWrite({ src: src0, length: 0, dst: dst0.desc, imm });
        await a!.submitSingleWrite({ src: srcEmpty, length: 0, dst: dstEmpty.desc, imm });
        const n = b!.expectedImms({ kind: 'single', src: src0, length: 0, dst: dst0.desc, imm });
        await b!.immCounter(imm).wait(2 * n, WAIT);
        await rejects(
          a!.submitSingleWrite({ src: src0, length: 1, dst: dst0.desc, imm }),
          'OUT_OF_RANGE',
          '1 byte from a 0-byte source',
        );
        const one = await source(a!, 1, 9);
        await rejects(
          a!.submitSingleWrite({ src: one, length: 1, dst: dst0.desc, imm }),
          'OUT_OF_RANGE',
          '1 byte into a 0-byte region',
        );
        for (const h of [src0, srcEmpty, dst0, dstEmpty]) await h.unregister();
        await assertNoExtra(b!, imm);
      }),
  },
  {
    id: 'workload: a random mix of every operation settles exactly once and lands exactly',
    run: (ctx) =>
      withGroup(ctx, 3, async ({ engines }, rng) => {
        const [a, b, c] = engines as [TransferEngine, TransferEngine, TransferEngine];
        const slot = 8192;
        const slots = 64;
        const src = await source(a, slot * slots, 77);
        const tb = await target(b, slot * slots, 1);
        const tc = await target(c, slot * slots, 2);
        const group = a.addPeerGroup([b.address, c.address]);
        const t = new SettleTracker();
        const want = new Map<TransferEngine, number>([
          [b, 0],
          [c, 0],
        ]);
        // Each destination slot is written at most once, so the final bytes are well defined.
        const free = new Map([
          [b, Array.from({ length: slots }, (_, i) => i)],
          [c, Array.from({ length: slots }, (_, i) => i)],
        ]);
        const take = (e: TransferEngine): number | undefined => {
          const f = free.get(e)!;
          return f.length ? f.splice(rng.below(f.length), 1)[0] : undefined;
        };
        for (let i = 0; i < 60; i++) {
          const e = rng.below(2) ? b : c;
          const tg = e === b ? tb : tc;
          const s = rng.below(slots);
          const kind = rng.below(4);
          if (kind === 0) {
            const d = take(e);
            if (d === undefined) continue;
            const length = rng.between(0, slot);
            const req = { src, srcOffset: s * slot, length, dst: tg.h.desc, dstOffset: d * slot, imm: 7 };
            want.set(e, want.get(e)! + a.expectedImms({ kind: 'single', ...req }));
            tg.expect.set(bytesOf(src).subarray(s * slot, s * slot + length), d * slot);
            t.track(a.submitSingleWrite(req));
          } else if (kind === 1) {
            const d = take(e);
            if (d === undefined) continue;
            const req = {
              src,
              srcPages: Uint32Array.of(s),
              srcStride: slot,
              dst: tg.h.desc,
              dstPages: Uint32Array.of(d),
              dstStride: slot,
              pageBytes: slot,
              imm: 7,
            };
            want.set(e, want.get(e)! + 1);
            tg.expect.set(bytesOf(src).subarray(s * slot, (s + 1) * slot), d * slot);
            t.track(a.submitPagedWrites(req));
          } else if (kind === 2) {
            t.track(a.submitBarrier({ group, imm: 7 }));
            want.set(b, want.get(b)! + 1);
            want.set(c, want.get(c)! + 1);
          } else {
            t.track(a.submitImm({ dst: e.address, imm: 7 }));
            want.set(e, want.get(e)! + 1);
          }
        }
        await t.settled(15_000);
        assert.equal(t.count('resolved'), t.outcomes.length, `all resolved: ${t.outcomes.join(',')}`);
        await b.immCounter(7).wait(want.get(b)!, WAIT);
        await c.immCounter(7).wait(want.get(c)!, WAIT);
        await assertNoExtra(b, 7);
        await assertNoExtra(c, 7);
        assertBytes(bytesOf(tb.h), tb.expect, 'peer b');
        assertBytes(bytesOf(tc.h), tc.expect, 'peer c');
      }),
  },
];

export const CASES: readonly ConformanceCase[] = cases;

/** The id of a conformance case (its title). */
export type ConformanceCaseId = string;
