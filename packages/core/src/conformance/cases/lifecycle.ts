// Conformance cases — Close, cancel, deadlines, unregister, and the fault-injector cases (killed
// peers, failed NICs, delays).
import assert from 'node:assert/strict';
import { autoShards, lanesBetween } from '../../imms.js';
import type { TransferEngine } from '../../types.js';
import { assertBytes, bytesOf, pattern, rejects, SettleTracker, sleep, throws } from '../util.js';
import { type ConformanceCase, needFaults, source, target, WAIT, withGroup } from './shared.js';

/**
 * The id of the case that writes through a descriptor after its region was unregistered (targets
 * whose provider cannot refuse a key skip it by this id).
 */
export const UNREGISTERED_WRITE_CASE =
  'unregister: once it resolves the old descriptor is refused (REMOTE_ACCESS) and the memory keeps its bytes';

export const LIFECYCLE_CASES: readonly ConformanceCase[] = [
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
    id: UNREGISTERED_WRITE_CASE,
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 4096, 4);
        // Memory the caller owns, so it stays readable after unregister.
        const mem = new Uint8Array(4096);
        const dst = await b!.registerMemory(mem, { remote: true });
        await a!.submitSingleWrite({ src, length: 4096, dst: dst.desc });
        assertBytes(mem, pattern(4096, 4), 'a write before unregister');
        mem.fill(0x5c);
        await dst.unregister();
        // No operation of b's in between: unregister() alone must have closed the key on every NIC.
        await rejects(
          a!.submitSingleWrite({ src, length: 4096, dst: dst.desc, timeoutMs: 10_000 }),
          'REMOTE_ACCESS',
          'a write through the unregistered descriptor',
        );
        assertBytes(mem, new Uint8Array(4096).fill(0x5c), 'memory after the refused write');
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
];
