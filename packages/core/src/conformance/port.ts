// The engine port (trellis/port.h) on a native backend: posts through the C table, native counts,
// settlement, range checks, failures and closing. Shared by every native backend's tests.
import assert from 'node:assert/strict';
import { describe, it } from 'vitest';
import type { NativePortCalls } from '../kit/native-engine.js';
import type { MrHandle, TransferEngine } from '../types.js';
import type { GroupFactory } from './cases.js';
import { assertBytes, pattern, SettleTracker, sleep, throws } from './util.js';

/** The addon's calls through a port's C table (exported by every engine-kit addon). */
export type PortCalls = NativePortCalls;

const OK = 0;
const CLOSED = -1;
const RANGE = -2;
const NO_WINDOW = -3;

function bytes(h: MrHandle): Uint8Array {
  return h.buffer!;
}

/** Wait through the port's own wait() until `done()` holds (15 s at most). */
async function until(calls: PortCalls, handle: bigint, done: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 15_000;
  let seen = 0;
  while (!done()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    seen = calls.portWait(handle, seen, 1000);
    await sleep(0); // let the JS side run (registrations, events)
  }
}

/**
 * Register the port cases for a native backend in the current vitest file. `targetCompletes`: the
 * backend's writes complete without the target engine's worker (RDMA NICs, the RC model) — a
 * stalled target then leaves nothing unsettled; libfabric's shm and tcp need the target's progress.
 */
export function definePortSuite(
  name: string,
  createGroup: GroupFactory,
  calls: PortCalls,
  opts: { targetCompletes?: boolean } = {},
): void {
  describe(`engine port: ${name}`, () => {
    it('posts sub-ranges of its windows from native code; counted immediates stay native; every post settles once', async () => {
      const g = await createGroup(2);
      try {
        const [a, b] = g.engines as [TransferEngine, TransferEngine];
        const immData = 0x70a1;
        const immAlone = 0x70a2;
        const immJs = 0x70a3;
        const rx = b.openPort!({ count: [immData, immAlone] });
        const tx = a.openPort!({ count: [] });
        const n = 64 * 1024;
        const src = await a.registerMemory(4096 + n);
        bytes(src).set(pattern(4096 + n, 7));
        const dst = await b.registerMemory(8192 + n, { remote: true });
        const expect = pattern(8192 + n, 8);
        bytes(dst).set(expect);
        tx.setWindows([
          { src, srcOffset: 4096, srcLength: n, dst: dst.desc, dstOffset: 8192, dstLength: n, imm: immData },
          { dst: dst.desc, imm: immAlone },
        ]);
        const h = tx.handle;
        assert.equal(calls.portPost(h, 0, 0, 0, 1000), OK);
        assert.equal(calls.portPost(h, 0, 5000, 10_000, 3000), OK);
        assert.equal(calls.portPost(h, 0, 0, n - 1, 1), OK); // the window's last byte
        assert.equal(calls.portPost(h, 1, 0, 0, 0), OK);
        assert.equal(calls.portPost(h, 0, 7, 9, 0), OK); // 0 bytes: its immediate alone
        // Out of the window, or no such window: refused, nothing posted.
        assert.equal(calls.portPost(h, 0, 0, n - 10, 11), RANGE);
        assert.equal(calls.portPost(h, 0, n - 10, 0, 11), RANGE);
        assert.equal(calls.portPost(h, 1, 0, 0, 1), RANGE, 'an immediate-only window carries no bytes');
        assert.equal(calls.portPost(h, 2, 0, 0, 0), NO_WINDOW);
        await until(calls, h, () => calls.portSettled(h)[0] === 5, 'five posts to settle');
        assert.deepEqual(calls.portSettled(h), [5, 0]);
        assert.equal(calls.portError(h), undefined);
        await until(
          calls,
          rx.handle,
          () => calls.portCount(rx.handle, 0) === 4 && calls.portCount(rx.handle, 1) === 1,
          'the target port to count 4 + 1 immediates',
        );
        const s = bytes(src);
        expect.set(s.subarray(4096, 4096 + 1000), 8192);
        expect.set(s.subarray(4096 + 5000, 4096 + 8000), 8192 + 10_000);
        expect[8192 + n - 1] = s[4096]!;
        assertBytes(bytes(dst), expect, 'port writes');
        // Counted immediates never reached JS; others still do.
        await a.submitImm({ dst: b.address, imm: immJs });
        await b.immCounter(immJs).wait(1, { timeoutMs: 10_000 });
        await sleep(20);
        assert.equal(b.immCounter(immData).total, 0);
        assert.equal(b.immCounter(immAlone).total, 0);
        assert.deepEqual(tx.stats(), { posted: 5, settled: 5, failed: 0, counts: [] });
        assert.deepEqual(rx.stats(), { posted: 0, settled: 0, failed: 0, counts: [4, 1] });
        // Closed, the target's port gives its immediates back to immCounter.
        rx.close();
        assert.equal(rx.closed, true);
        assert.equal(calls.portPost(h, 1, 0, 0, 0), OK);
        await b.immCounter(immAlone).wait(1, { timeoutMs: 10_000 });
        await until(calls, h, () => calls.portSettled(h)[0] === 6, 'the sixth post');
        tx.close();
      } finally {
        await g.close();
      }
    });

    it('a port closed with posted writes unsettled keeps their source in use: its unregister waits until they settle', async () => {
      const g = await createGroup(2);
      try {
        const [a, b] = g.engines as [TransferEngine, TransferEngine];
        const n = 4096;
        const imm = 0x70c1;
        const src = await a.registerMemory(n);
        bytes(src).set(pattern(n, 21));
        const dst = await b.registerMemory(n, { remote: true });
        const p = a.openPort!({ count: [] });
        p.setWindows([{ src, dst: dst.desc, imm }]);
        const h = p.handle;
        assert.equal(calls.portPost(h, 0, 0, 0, n), OK);
        await until(calls, h, () => calls.portSettled(h)[0] === 1, 'the first post');
        // The target's worker stops (as a hung peer's): what the port posts now does not complete.
        (b as unknown as { native: { stallWorker(ms: number): void } }).native.stallWorker(1500);
        await sleep(100);
        for (let i = 0; i < 4; i++) assert.equal(calls.portPost(h, 0, 0, 0, n), OK);
        if (opts.targetCompletes) {
          // The NIC completes them without the target's worker: nothing is left to hold.
          await until(calls, h, () => calls.portSettled(h)[0] === 5, 'the posts');
          p.close();
          const t = new SettleTracker();
          t.track(src.unregister());
          await sleep(100);
          assert.deepEqual(t.outcomes, ['resolved'], 'unregister of a closed port with nothing unsettled');
          await b.immCounter(imm).wait(5, { timeoutMs: 10_000 });
          assertBytes(bytes(dst), pattern(n, 21), 'the port writes');
          return;
        }
        await sleep(50);
        const open = p.stats();
        assert.equal(open.posted, 5);
        assert.ok(
          open.settled < 5,
          `the posts behind the stalled target settled early (${open.settled} of 5)`,
        );
        p.close();
        const t = new SettleTracker();
        const gone = src.unregister();
        t.track(gone);
        await sleep(300);
        assert.deepEqual(t.outcomes, ['pending'], "unregister waits for the closed port's writes");
        await gone;
        // It resolved once every post had settled, each once, none failed; every byte landed.
        assert.deepEqual(p.stats(), { posted: 5, settled: 5, failed: 0, counts: [] });
        await b.immCounter(imm).wait(5, { timeoutMs: 10_000 });
        assertBytes(bytes(dst), pattern(n, 21), 'the port writes');
      } finally {
        await g.close();
      }
    });

    it('a post that fails settles once as failed with its code; windows and counts are validated; a closed engine refuses posts', async () => {
      const g = await createGroup(2);
      try {
        const [a, b] = g.engines as [TransferEngine, TransferEngine];
        const dst = await b.registerMemory(4096, { remote: true });
        const src = await a.registerMemory(4096);
        throws(() => a.openPort!({ count: [1, 1] }), 'INVALID_ARGUMENT', 'an immediate counted twice');
        throws(() => a.openPort!({ count: [-1] }), 'INVALID_ARGUMENT', 'a bad immediate');
        const p = a.openPort!({ count: [0x70b1] });
        throws(() => a.openPort!({ count: [0x70b1] }), 'INVALID_ARGUMENT', 'counted by another port');
        throws(
          () => p.setWindows([{ src, srcOffset: 1, srcLength: 4096, dst: dst.desc }]),
          'OUT_OF_RANGE',
          'a source range past the region',
        );
        throws(
          () => p.setWindows([{ src, dst: dst.desc, dstOffset: 4000, dstLength: 97 }]),
          'OUT_OF_RANGE',
          'a destination range past the descriptor',
        );
        throws(() => p.setWindows([{ dst: dst.desc, nic: 9 }]), 'INVALID_ARGUMENT', 'a NIC the peer lacks');
        throws(() => p.setWindows([{ dst: 'nope' as never }]), 'INVALID_ARGUMENT', 'a bad descriptor');
        p.setWindows([
          { dst: dst.desc, imm: 0x70b3 },
          { src, dst: dst.desc, imm: 0x70b2 },
        ]);
        const h = p.handle;
        assert.equal(calls.portErrorWindow(h), 0, 'nothing failed yet');
        // The source region goes away: the worker fails the post, once, with its reason; error()
        // names the window it was posted on (1 + its index).
        await src.unregister();
        assert.equal(calls.portPost(h, 1, 0, 0, 64), OK);
        await until(calls, h, () => calls.portSettled(h)[0] === 1, 'the failed post to settle');
        assert.deepEqual(calls.portSettled(h), [1, 1]);
        assert.match(calls.portError(h) ?? '', /^INVALID_DESCRIPTOR: the source region is not registered/);
        assert.equal(calls.portErrorWindow(h), 2, 'the failure was posted on window 1');
        assert.deepEqual(p.stats(), { posted: 1, settled: 1, failed: 1, counts: [0] });
        // The engine closes: posts are refused, waits return at once.
        await a.close();
        assert.equal(calls.portPost(h, 0, 0, 0, 0), CLOSED);
        const t0 = Date.now();
        calls.portWait(h, calls.portWait(h, 0, 0), 2_000_000);
        assert.ok(Date.now() - t0 < 1000, 'wait on a closed engine returns at once');
        throws(() => p.setWindows([]), 'CLOSED', 'windows on a closed engine');
        p.close();
        p.close();
      } finally {
        await g.close();
      }
    });
  });
}
