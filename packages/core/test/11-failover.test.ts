// NIC failover with exactly-once immediates, on the loopback fabric: a NIC that fails mid-stream is
// routed around, a failure whose work had in fact landed is not counted twice, every operation
// settles once, and the counters say what happened.
import { describe, expect, it } from 'vitest';
import { assertBytes, pattern, rejects, SettleTracker, sleep } from '../src/conformance/index.js';
import {
  createLoopbackFabric,
  type LoopbackFabric,
  type MrHandle,
  type TransferEngine,
} from '../src/index.js';

async function pair(fabric: LoopbackFabric, failover: object | boolean = { cooldownMs: 60_000 }) {
  const a = fabric.createEngine({ failover });
  const b = fabric.createEngine({ failover });
  return [a, b] as const;
}

async function target(e: TransferEngine, n: number, seed: number): Promise<[MrHandle, Uint8Array]> {
  const h = await e.registerMemory(n, { remote: true });
  const init = pattern(n, seed);
  h.buffer!.set(init);
  return [h, init.slice()];
}

describe('NIC failover (loopback fabric, 2 and 4 NICs)', () => {
  for (const nics of [2, 4]) {
    it(`${nics} NICs: a NIC that fails mid-stream is routed around — bytes, exact immediate counts, NIC marked down`, async () => {
      const fabric = createLoopbackFabric({ nics, seed: nics });
      const [a, b] = await pair(fabric);
      const n = 1 << 20;
      const src = await a.registerMemory(n);
      src.buffer!.set(pattern(n, 1));
      const [dst, want] = await target(b, n, 2);
      const pages = 64;
      const page = n / pages;
      const t = new SettleTracker();
      const imm = 0x5100;
      let expected = 0;
      // Single writes (sharded over every NIC), paged writes, a scatter, immediates alone.
      for (let i = 0; i < 8; i++) {
        const req = {
          kind: 'single',
          src,
          length: n / 8,
          srcOffset: (i * n) / 8,
          dst: dst.desc,
          dstOffset: (i * n) / 8,
          imm,
        } as const;
        expected += b.expectedImms(req);
        t.track(a.submitSingleWrite(req));
        if (i === 2) fabric.faults.failNic(b, nics - 1); // the target's last NIC dies mid-stream
      }
      const [dst2, want2] = await target(b, n, 5);
      const p = {
        kind: 'paged',
        src,
        dst: dst2.desc,
        srcPages: Uint32Array.from({ length: pages }, (_, i) => i),
        dstPages: Uint32Array.from({ length: pages }, (_, i) => pages - 1 - i),
        pageBytes: page,
        srcStride: page,
        dstStride: page,
        imm: imm + 1,
      } as const;
      const pagedCount = b.expectedImms(p);
      t.track(a.submitPagedWrites(p));
      t.track(a.submitImm({ dst: b.address, imm: imm + 2, nic: nics - 1 }));
      await t.settled(20_000);
      expect(t.outcomes.every((o) => o === 'resolved')).toBe(true);
      await b.immCounter(imm).wait(expected, { timeoutMs: 10_000 });
      await b.immCounter(imm + 1).wait(pagedCount, { timeoutMs: 10_000 });
      await b.immCounter(imm + 2).wait(1, { timeoutMs: 10_000 });
      await sleep(20);
      expect(b.immCounter(imm).total).toBe(expected);
      expect(b.immCounter(imm + 1).total).toBe(pagedCount);
      expect(b.immCounter(imm + 2).total).toBe(1);
      const s = src.buffer!;
      want.set(s);
      assertBytes(dst.buffer!, want, 'single writes after failover');
      for (let i = 0; i < pages; i++) want2.set(s.subarray(i * page, (i + 1) * page), (pages - 1 - i) * page);
      assertBytes(dst2.buffer!, want2, 'paged write (pages reversed) after failover');
      const st = a.stats();
      expect(st.failover.reposts).toBeGreaterThan(0);
      expect(st.failover.nicsMarkedDown).toBe(1);
      expect(st.nics[nics - 1]!.up).toBe(false);
      expect(st.failover.controlImms).toBe(expected + pagedCount + 1);
      expect(b.stats().failover.duplicateImms).toBe(0);
      // With the NIC down, new work goes on the others at once: no more re-posts.
      const before = a.stats().failover.reposts;
      await a.submitSingleWrite({ src, length: n, dst: dst.desc, imm: imm + 3 });
      expect(a.stats().failover.reposts).toBe(before);
      await fabric.close();
    });
  }

  it('a failure whose work had landed (lost completion) is not counted twice: the target drops the duplicate token', async () => {
    const fabric = createLoopbackFabric({ nics: 2, seed: 9 });
    const [a, b] = await pair(fabric, { maxErrors: 100, cooldownMs: 60_000 });
    const n = 256 * 1024;
    const src = await a.registerMemory(n);
    src.buffer!.set(pattern(n, 3));
    const [dst, want] = await target(b, n, 4);
    // Everything a sends on NIC 0 lands but reports NIC_FAILED; NIC 1 is healthy.
    fabric.faults.loseCompletions!(a, 0, true);
    const imm = 0x5200;
    let expected = 0;
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 20; i++) {
      const req = { kind: 'single', src, length: n, dst: dst.desc, imm } as const;
      expected += b.expectedImms(req);
      writes.push(a.submitSingleWrite(req));
      writes.push(a.submitImm({ dst: b.address, imm: imm + 1 }));
    }
    await Promise.all(writes);
    await b.immCounter(imm).wait(expected, { timeoutMs: 10_000 });
    await b.immCounter(imm + 1).wait(20, { timeoutMs: 10_000 });
    await sleep(20);
    expect(b.immCounter(imm).total).toBe(expected);
    expect(b.immCounter(imm + 1).total).toBe(20);
    want.set(src.buffer!);
    assertBytes(dst.buffer!, want, 'data');
    // Control messages sent on NIC 0 landed and reported failure: they were sent again on NIC 1,
    // and the target counted each token once.
    expect(b.stats().failover.duplicateImms).toBeGreaterThan(0);
    expect(a.stats().failover.reposts).toBeGreaterThan(0);
    await fabric.close();
  });

  it('every NIC down: the operation fails once with NIC_FAILED naming the peer; cancellation and deadlines still settle once', async () => {
    const fabric = createLoopbackFabric({ nics: 2, seed: 5 });
    const [a, b] = await pair(fabric, { maxErrors: 1, cooldownMs: 60_000, maxReposts: 5 });
    const src = await a.registerMemory(4096);
    const [dst] = await target(b, 4096, 6);
    fabric.faults.failNic(b, 0);
    fabric.faults.failNic(b, 1);
    const e = await rejects(
      a.submitSingleWrite({ src, length: 4096, dst: dst.desc, imm: 1 }),
      'NIC_FAILED',
      'no NIC left',
    );
    expect(e.message).toMatch(/every NIC to .* is down/);
    expect(b.immCounter(1).total).toBe(0);
    const st = a.stats();
    expect(st.failover.nicsMarkedDown).toBe(2);
    expect(st.nics.map((x) => x.up)).toEqual([false, false]);
    expect(st.ops.failed).toBe(1);
    // A fresh pair: delays, an abort mid-flight, a deadline — each settles once.
    const f2 = createLoopbackFabric({ nics: 2, seed: 6, faults: { delayMs: [1, 5] } });
    const [c, d] = await pair(f2);
    const s2 = await c.registerMemory(1 << 16);
    const [t2] = await target(d, 1 << 16, 7);
    const ac = new AbortController();
    const tr = new SettleTracker();
    tr.track(c.submitSingleWrite({ src: s2, length: 1 << 16, dst: t2.desc, imm: 2, signal: ac.signal }));
    tr.track(c.submitSingleWrite({ src: s2, length: 1 << 16, dst: t2.desc, imm: 3, timeoutMs: 1 }));
    ac.abort();
    await tr.settled(20_000);
    expect(tr.outcomes.every((o) => o === 'ABORTED' || o === 'TIMEOUT' || o === 'resolved')).toBe(true);
    await fabric.close();
    await f2.close();
  });

  it('a target NIC that fails without an error (silent) mid-stream: its share re-posted at attemptMs, every byte and immediate exact', async () => {
    const fabric = createLoopbackFabric({ nics: 2, seed: 21 });
    const [a, b] = await pair(fabric, { cooldownMs: 60_000, maxErrors: 1, attemptMs: 100 });
    const n = 1 << 20;
    const src = await a.registerMemory(n);
    src.buffer!.set(pattern(n, 31));
    const [dst, want] = await target(b, n, 32);
    const imm = 0x5300;
    let expected = 0;
    const t = new SettleTracker();
    for (let i = 0; i < 8; i++) {
      const req = {
        kind: 'single',
        src,
        length: n / 8,
        srcOffset: (i * n) / 8,
        dst: dst.desc,
        dstOffset: (i * n) / 8,
        imm,
        shards: 2,
      } as const;
      expected += b.expectedImms(req);
      t.track(a.submitSingleWrite(req));
      if (i === 2) fabric.faults.silenceNic!(b, 1, true);
    }
    t.track(a.submitImm({ dst: b.address, imm: imm + 1 }));
    await t.settled(20_000);
    expect(t.outcomes).toEqual(new Array(9).fill('resolved'));
    await sleep(20);
    expect(b.immCounter(imm).total).toBe(expected);
    expect(b.immCounter(imm + 1).total).toBe(1);
    want.set(src.buffer!);
    assertBytes(dst.buffer!, want, 'after a silent target NIC');
    const st = a.stats();
    // The writes caught on NIC 1 waited out their attempt; the path to b on NIC 1 was then down
    // for the rest — the path, not a's NIC (b's NIC failed: a's other peers keep NIC 1).
    expect(st.failover.attemptTimeouts).toBeGreaterThanOrEqual(1);
    expect(st.failover.pathsMarkedDown).toBe(1);
    expect(st.failover.nicsMarkedDown).toBe(0);
    expect(st.nics.map((x) => x.up)).toEqual([true, true]);
    expect(st.failover.controlImms).toBe(expected + 1);
    expect(st.ops.completed).toBe(9);
    expect(b.stats().failover.duplicateImms).toBe(0);
    await fabric.close();
  });

  it('a control message swallowed (sent, never arrived) is sent again on another NIC when no acknowledgement comes: counted once', async () => {
    const fabric = createLoopbackFabric({ nics: 2, seed: 22 });
    const [a, b] = await pair(fabric, { cooldownMs: 60_000, maxErrors: 1, attemptMs: 100 });
    // NIC 0 (the first a control message tries) loses what reaches b through it.
    fabric.faults.silenceNic!(b, 0, true);
    const imm = 0x5400;
    for (let i = 0; i < 3; i++) await a.submitImm({ dst: b.address, imm });
    await sleep(20);
    expect(b.immCounter(imm).total).toBe(3);
    const st = a.stats().failover;
    expect(st.attemptTimeouts).toBe(1); // the first; the path on NIC 0 was down for the next two
    expect(st.reposts).toBe(1);
    expect(st.controlImms).toBe(3);
    expect(st.pathsMarkedDown).toBe(1);
    expect(st.nicsMarkedDown).toBe(0);
    expect(b.stats().failover.duplicateImms).toBe(0);
    await fabric.close();
  });

  it('every NIC silent: the operation fails TIMEOUT after its attempts; a deadline or abort while its immediates are raised settles it at once', async () => {
    const fabric = createLoopbackFabric({ nics: 2, seed: 23 });
    const [a, b] = await pair(fabric, { cooldownMs: 60_000, maxErrors: 100, attemptMs: 50, maxReposts: 1 });
    fabric.faults.silenceNic!(b, 0, true);
    fabric.faults.silenceNic!(b, 1, true);
    const e = await rejects(a.submitImm({ dst: b.address, imm: 9 }), 'TIMEOUT', 'no acknowledgement');
    // maxReposts 1: two attempts, one per NIC.
    expect(e.message).toMatch(
      /acknowledged none of 2 control message\(s\) raising its immediates \(maxReposts 1\)/,
    );
    expect(e.message).toMatch(/failover\.attemptMs \(50 ms\)/);
    expect(a.stats().failover.attemptTimeouts).toBe(2);
    expect(a.stats().failover.pathsMarkedDown).toBe(2);
    // Both paths to b are down now: later immediates to it fail at once, naming the peer; a's NICs
    // are up (another peer of a is not harmed).
    const down = await rejects(a.submitImm({ dst: b.address, imm: 9 }), 'NIC_FAILED', 'paths down');
    expect(down.message).toMatch(/every path to .* is down \(failover gave each up/);
    expect(a.stats().nics.map((x) => x.up)).toEqual([true, true]);
    const c = fabric.createEngine({ failover: { cooldownMs: 60_000, attemptMs: 50 } });
    await a.submitImm({ dst: c.address, imm: 13 });
    expect(c.immCounter(13).total).toBe(1);
    // Every path to b given up while a's NICs are up: a probe on each NIC decides — b answers none
    // (its NICs are silent), so it is lost, and later work to it is refused PEER_LOST.
    const lost: string[] = [];
    a.onPeerLost((p, why) => lost.push(`${p.equals(b.address)} ${why.code}`));
    for (let i = 0; i < 100 && !lost.length; i++) await sleep(50);
    expect(lost).toEqual(['true PEER_LOST']);
    await rejects(a.submitImm({ dst: b.address, imm: 9 }), 'PEER_LOST', 'lost');
    // A fresh pair (paths up again at once: cooldownMs 0). The operation's own deadline comes
    // first: it settles then, saying the target may have counted.
    const f2 = createLoopbackFabric({ nics: 2, seed: 24 });
    const [a2, b2] = await pair(f2, { cooldownMs: 0, attemptMs: 50, maxReposts: 5 });
    f2.faults.silenceNic!(b2, 0, true);
    f2.faults.silenceNic!(b2, 1, true);
    const t0 = performance.now();
    const e2 = await rejects(
      a2.submitImm({ dst: b2.address, imm: 10, timeoutMs: 80 }),
      'TIMEOUT',
      'deadline',
    );
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(e2.message).toMatch(/while its immediates were being raised: the target may have counted them/);
    const ac = new AbortController();
    const p = a2.submitImm({ dst: b2.address, imm: 11, signal: ac.signal });
    await sleep(10);
    ac.abort();
    const e3 = await rejects(p, 'ABORTED', 'abort');
    expect(e3.message).toMatch(/the target may have counted them/);
    // Nothing more is sent for them once settled.
    const sent = a2.stats().failover.attemptTimeouts;
    await sleep(300);
    expect(a2.stats().failover.attemptTimeouts).toBe(sent);
    expect(b2.immCounter(10).total + b2.immCounter(11).total).toBe(0);
    // Restored: the engines carry on.
    f2.faults.silenceNic!(b2, 0, false);
    f2.faults.silenceNic!(b2, 1, false);
    await a2.submitImm({ dst: b2.address, imm: 12 });
    expect(b2.immCounter(12).total).toBe(1);
    await fabric.close();
    await f2.close();
  });

  it('bad options are refused at creation', () => {
    const fabric = createLoopbackFabric({ nics: 2 });
    expect(() => fabric.createEngine({ failover: { maxErrors: 0 } })).toThrow(
      /failover.maxErrors must be an integer >= 1/,
    );
    expect(() => fabric.createEngine({ failover: 'yes' as never })).toThrow(/failover must be a boolean/);
    expect(() => fabric.createEngine({ failover: { attemptMs: 0 } })).toThrow(
      /failover.attemptMs must be an integer >= 1, got 0/,
    );
    expect(() => fabric.createEngine({ failover: { windowMs: 0 } })).toThrow(
      /failover.windowMs must be an integer >= 1, got 0/,
    );
  });
});
