// Conformance cases — Stats, watchers, triggered writes, liveness, 0-byte registrations and the
// random workload.
import assert from 'node:assert/strict';
import { autoShards, lanesBetween } from '../../imms.js';
import type { TransferEngine } from '../../types.js';
import { assertBytes, bytesOf, nicSum, rejects, SettleTracker, sleep } from '../util.js';
import { assertNoExtra, type ConformanceCase, source, target, WAIT, withGroup } from './shared.js';

export const OBSERVE_CASES: readonly ConformanceCase[] = [
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
        const zero = await rejects(
          a!.submitOnWatch(w2, 0n, { kind: 'imm', dst: b!.address, imm }),
          'INVALID_ARGUMENT',
          'value 0',
        );
        // The value named, not its type (it said "got bigint").
        if (!zero.message.endsWith('value must be a bigint in 1..2^64-1, got 0n'))
          throw new Error(`value 0: the message does not name it: ${zero.message}`);
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
