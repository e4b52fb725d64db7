// NIC failover on real libfabric endpoints (tcp;ofi_rxm, 2 NICs, one process): a NIC torn down
// mid-stream (its endpoint and CQ closed: what was posted on it fails with its fate unknown) is
// routed around with every byte and every immediate count exact — the writer's NIC, or the
// target's (whose writers see no error: their work to it hangs until failover's attemptMs, or
// their connection to it resets); without failover the same teardown fails the work it carried
// with NIC_FAILED.
import { assertBytes, pattern, rejects, SettleTracker, sleep } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { createEngine, type EfaEngine } from '../src/index.js';

let engines: EfaEngine[] = [];
afterEach(async () => {
  await Promise.all(engines.map((e) => e.close()));
  engines = [];
});

async function pair(failover: boolean) {
  const opts = {
    provider: 'tcp',
    nics: 2,
    opTimeoutMs: 10_000,
    failover: failover && { cooldownMs: 60_000, attemptMs: 1000 },
    // The data must cross the NICs to be failed over (the same-host lane would copy it instead).
    sameHostLane: false,
  } as const;
  engines = [await createEngine(opts), await createEngine(opts)];
  return engines as [EfaEngine, EfaEngine];
}

describe('NIC failover on backend-efa (tcp, 2 NICs)', () => {
  for (const nic of [1, 0]) {
    it(`NIC ${nic} of the writer torn down under 32 writes: all resolve, bytes and immediate counts exact, the NIC marked down`, async () => {
      const [a, b] = await pair(true);
      const piece = 256 * 1024;
      const n = 32;
      const src = await a.registerMemory(piece * n);
      src.buffer!.set(pattern(piece * n, 11));
      const dst = await b.registerMemory(piece * n, { remote: true });
      const want = pattern(piece * n, 12);
      dst.buffer!.set(want);
      const imm = 0x6100;
      let expected = 0;
      const t = new SettleTracker();
      for (let i = 0; i < n; i++) {
        const req = {
          kind: 'single',
          src,
          srcOffset: i * piece,
          dstOffset: i * piece,
          length: piece,
          dst: dst.desc,
          imm,
        } as const;
        expected += b.expectedImms(req);
        t.track(a.submitSingleWrite(req));
        if (i === 3) a.failNic(nic);
      }
      t.track(a.submitImm({ dst: b.address, imm: imm + 1 }));
      await t.settled(30_000);
      expect(t.outcomes.every((o) => o === 'resolved')).toBe(true);
      await b.immCounter(imm).wait(expected, { timeoutMs: 10_000 });
      await b.immCounter(imm + 1).wait(1, { timeoutMs: 10_000 });
      await sleep(50);
      expect(b.immCounter(imm).total).toBe(expected);
      expect(b.immCounter(imm + 1).total).toBe(1);
      want.set(src.buffer!);
      assertBytes(dst.buffer!, want, 'after the teardown');
      const st = a.stats();
      expect(st.failover.nicsMarkedDown).toBe(1);
      expect(st.nics[nic]!.up).toBe(false);
      expect(st.nics[1 - nic]!.up).toBe(true);
      expect(st.failover.reposts).toBeGreaterThanOrEqual(3);
      expect(st.failover.controlImms).toBe(expected + 1);
      expect(b.stats().failover.duplicateImms).toBe(0);
      // Later work goes on the NIC that is up, with no re-post.
      const before = st.failover.reposts;
      await a.submitSingleWrite({ src, length: piece, dst: dst.desc, imm: imm + 2 });
      await b.immCounter(imm + 2).wait(1, { timeoutMs: 10_000 });
      expect(a.stats().failover.reposts).toBe(before);
    }, 60_000);
  }

  for (const nic of [1, 0]) {
    it(`NIC ${nic} of the target torn down under 32 writes: its share re-posted on the other, bytes and immediate counts exact, later work unharmed`, async () => {
      const [a, b] = await pair(true);
      const piece = 256 * 1024;
      const n = 32;
      const src = await a.registerMemory(piece * n);
      src.buffer!.set(pattern(piece * n, 21));
      const dst = await b.registerMemory(piece * n, { remote: true });
      dst.buffer!.set(pattern(piece * n, 22));
      const imm = 0x6300;
      let expected = 0;
      const t = new SettleTracker();
      for (let i = 0; i < n; i++) {
        const req = {
          kind: 'single',
          src,
          srcOffset: i * piece,
          dstOffset: i * piece,
          length: piece,
          dst: dst.desc,
          imm,
          shards: 2,
        } as const;
        expected += b.expectedImms(req);
        t.track(a.submitSingleWrite(req));
        if (i === 3) b.failNic(nic);
      }
      t.track(a.submitImm({ dst: b.address, imm: imm + 1 }));
      await t.settled(30_000);
      expect(t.outcomes).toEqual(new Array(n + 1).fill('resolved'));
      expect(expected).toBe(2 * n);
      await b.immCounter(imm).wait(expected, { timeoutMs: 10_000 });
      await b.immCounter(imm + 1).wait(1, { timeoutMs: 10_000 });
      await sleep(50);
      expect(b.immCounter(imm).total).toBe(expected);
      expect(b.immCounter(imm + 1).total).toBe(1);
      assertBytes(dst.buffer!, src.buffer!, 'after the target NIC died');
      const st = a.stats();
      // The writer learnt it from its own work (timeouts at attemptMs, or connection resets): the
      // path to b on that NIC is down, not a's NIC (its other peers keep it).
      expect(st.failover.pathsMarkedDown).toBe(1);
      expect(st.failover.nicsMarkedDown).toBe(0);
      expect(st.nics.map((x) => x.up)).toEqual([true, true]);
      expect(st.failover.reposts).toBeGreaterThanOrEqual(1);
      expect(st.failover.controlImms).toBe(expected + 1);
      expect(st.ops.completed).toBe(n + 1);
      expect(st.ops.failed).toBe(0);
      // The peer is not lost: later work goes on the NIC that is up, at once.
      const before = a.stats().failover.reposts;
      for (let k = 0; k < 4; k++)
        await a.submitSingleWrite({ src, length: piece, dst: dst.desc, imm: imm + 2 });
      await b.immCounter(imm + 2).wait(8, { timeoutMs: 10_000 });
      expect(a.stats().failover.reposts).toBe(before);
      expect(a.stats().ops.failed).toBe(0);
    }, 60_000);
  }

  it('failNic on shm is refused while another engine of this process is open (it would unmap queues under writes in flight)', async () => {
    const opts = { provider: 'shm', nics: 2, sameHostLane: false } as const;
    engines = [await createEngine(opts), await createEngine(opts)];
    const [a, b] = engines as [EfaEngine, EfaEngine];
    expect(() => b.failNic(1)).toThrow(
      /on shm, a NIC cannot be torn down while another engine of this process is open/,
    );
    expect(b.stats().nics.map((x) => x.up)).toEqual([true, true]);
    await a.close();
    engines = [b];
    b.failNic(1);
    expect(b.stats().nics.map((x) => x.up)).toEqual([true, false]);
  });

  it('without failover, work on the torn-down NIC fails once with NIC_FAILED; the other NIC still carries', async () => {
    const [a, b] = await pair(false);
    const src = await a.registerMemory(1 << 20);
    const dst = await b.registerMemory(1 << 20, { remote: true });
    expect(a.stats().nics.map((n) => n.up)).toEqual([true, true]);
    a.failNic(1);
    // stats say so (they said up: true while every operation on it failed).
    expect(a.stats().nics.map((n) => n.up)).toEqual([true, false]);
    const e = await rejects(
      a.submitImm({ dst: b.address, imm: 7, nic: 1 }),
      'NIC_FAILED',
      'imm on the torn-down NIC',
    );
    expect(e.nic).toBe(1);
    expect(e.message).toMatch(/NIC 1 was torn down/);
    await rejects(
      a.submitSingleWrite({ src, length: 1 << 20, dst: dst.desc, imm: 8, shards: 2 }),
      'NIC_FAILED',
      'a write sharded over both NICs',
    );
    await a.submitSingleWrite({ src, length: 1 << 20, dst: dst.desc, imm: 9, shards: 1 });
    await b.immCounter(9).wait(1, { timeoutMs: 10_000 });
    expect(() => a.failNic(2)).toThrow(/NIC 2 does not exist/);
  });

  it('reactions count immediates raised by control messages, including those that came before the first reaction', async () => {
    const [a, b] = await pair(true);
    const imm = 0x6200;
    const answer = imm + 1;
    // With failover every immediate reaches b in a control message; three before b reacts.
    for (let i = 0; i < 3; i++) await a.submitImm({ dst: b.address, imm });
    await b.immCounter(imm).wait(3, { timeoutMs: 10_000 });
    expect(b.immCounter(imm).total).toBe(3);
    const reaction = b.submitOnImm(imm, b.immCounter(imm).total + 1, {
      kind: 'imm',
      dst: a.address,
      imm: answer,
      timeoutMs: 10_000,
    });
    await sleep(50);
    expect(a.immCounter(answer).total).toBe(0);
    await a.submitImm({ dst: b.address, imm });
    await reaction;
    await a.immCounter(answer).wait(1, { timeoutMs: 10_000 });
    expect(a.stats().failover.controlImms).toBe(4);
    // The reaction itself went out from b's worker as a plain immediate: triggered operations are
    // not routed through the failover writer (see the core README).
    expect(b.stats().failover.controlImms).toBe(0);
    await sleep(50);
    expect(a.immCounter(answer).total).toBe(1);
  }, 60_000);
});
