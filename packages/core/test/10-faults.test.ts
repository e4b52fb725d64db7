// @trellis/core/faults: the fault harness (withFaults) over loopback engines.
import { describe, expect, it } from 'vitest';
import { outcome } from '../src/conformance/util.js';
import { withFaults } from '../src/faults.js';
import { createLoopbackFabric } from '../src/index.js';

async function pair(seed = 1) {
  const fabric = createLoopbackFabric({ seed: 2 });
  const a = withFaults(fabric.createEngine(), { seed });
  const b = fabric.createEngine();
  const src = await a.registerMemory(4096);
  src.buffer!.fill(7);
  const dst = await b.registerMemory(64 * 4096, { remote: true });
  return { fabric, a, b, src, dst };
}

describe('@trellis/core/faults: the fault harness', () => {
  it('delays reorder operations; every one settles once and lands', async () => {
    const { fabric, a, b, src, dst } = await pair();
    a.faults.delay([0, 20]);
    const order: number[] = [];
    await Promise.all(
      Array.from({ length: 32 }, (_, i) =>
        a
          .submitSingleWrite({ src, length: 4096, dst: dst.desc, dstOffset: i * 4096, imm: 9 })
          .then(() => order.push(i)),
      ),
    );
    expect(order).toHaveLength(32);
    expect(order).not.toEqual([...order].sort((x, y) => x - y)); // reordered
    await b.immCounter(9).wait(32, { timeoutMs: 5000 });
    expect(dst.buffer!.subarray(0, 32 * 4096).every((x) => x === 7)).toBe(true);
    expect(a.faults.injected).toEqual({ delayed: 32, dropped: 0, nicFailed: 0, peerKilled: 0 });
    await fabric.close();
  });

  it('a delayed prepared post reads the writes as they were at the call, though the caller reuses the array at once', async () => {
    const { fabric, a, b, src, dst } = await pair();
    src.buffer!.set(Uint8Array.from({ length: 4096 }, (_, i) => i & 0xff));
    a.faults.delay([5, 20]);
    const writes = a.prepareWrites({ src, dst: dst.desc, imm: 13 });
    const w = new Float64Array(3 * 4);
    const posts: Promise<void>[] = [];
    for (let p = 0; p < 8; p++) {
      // Post p: 4 writes of 1 KiB from source quarter k to block 4p + k; then the array is overwritten.
      for (let k = 0; k < 4; k++) w.set([k * 1024, (4 * p + k) * 1024, 1024], 3 * k);
      posts.push(writes.post(w));
    }
    w.fill(0);
    await Promise.all(posts);
    await b.immCounter(13).wait(32, { timeoutMs: 5000 });
    for (let blk = 0; blk < 32; blk++) {
      const got = dst.buffer!.subarray(blk * 1024, (blk + 1) * 1024);
      const want = src.buffer!.subarray((blk % 4) * 1024, ((blk % 4) + 1) * 1024);
      expect(Buffer.from(got).equals(Buffer.from(want))).toBe(true);
    }
    expect(a.faults.injected).toEqual({ delayed: 8, dropped: 0, nicFailed: 0, peerKilled: 0 });
    a.faults.killPeer(b.address);
    await expect(writes.post(Float64Array.of(0, 0, 8))).rejects.toMatchObject({ code: 'PEER_LOST' });
    expect(b.immCounter(13).total).toBe(32);
    await fabric.close();
  });

  it('drops fail operations before they are posted: nothing of them arrives; the same seed drops the same ones', async () => {
    const run = async (seed: number) => {
      const { fabric, a, b, src, dst } = await pair(seed);
      a.faults.drop(0.3);
      const codes = await Promise.all(
        Array.from({ length: 64 }, (_, i) =>
          outcome(a.submitSingleWrite({ src, length: 4096, dst: dst.desc, dstOffset: i * 4096, imm: 5 })),
        ),
      );
      const landed = codes.filter((c) => c === 'resolved').length;
      await b.immCounter(5).wait(landed, { timeoutMs: 5000 });
      await new Promise((r) => setTimeout(r, 20));
      expect(b.immCounter(5).total).toBe(landed);
      for (const [i, c] of codes.entries())
        expect(
          dst.buffer!.subarray(i * 4096, (i + 1) * 4096).every((x) => x === (c === 'resolved' ? 7 : 0)),
        ).toBe(true);
      expect(a.faults.injected.dropped).toBe(64 - landed);
      await fabric.close();
      return codes;
    };
    const first = await run(11);
    expect(
      first
        .filter((c) => c !== 'resolved')
        .every((c) => /^PROVIDER_ERROR: submitSingleWrite: dropped by the fault harness$/.test(c)),
    ).toBe(true);
    expect(first.some((c) => c !== 'resolved')).toBe(true);
    expect(await run(11)).toEqual(first);
  });

  it('a failed NIC and a killed peer fail operations with NIC_FAILED and PEER_LOST; heal restores', async () => {
    const { fabric, a, b, src, dst } = await pair();
    a.faults.failNic(0);
    expect(await outcome(a.submitImm({ dst: b.address, imm: 1 }))).toBe(
      'NIC_FAILED: submitImm: NIC 0 failed (fault harness)',
    );
    a.faults.heal();
    await a.submitImm({ dst: b.address, imm: 1 });
    a.faults.killPeer(b.address);
    expect(await outcome(a.submitSingleWrite({ src, length: 8, dst: dst.desc }))).toMatch(
      /^PEER_LOST: submitSingleWrite: the peer .* was killed by the fault harness$/,
    );
    expect(await outcome(a.submitSend(b.address, Uint8Array.of(1)))).toMatch(/^PEER_LOST: /);
    expect(a.faults.injected).toEqual({ delayed: 0, dropped: 0, nicFailed: 1, peerKilled: 2 });
    expect(() => a.faults.drop(2)).toThrow(/probability must be in 0\.\.1/);
    await fabric.close();
  });

  it('an operation aborted while delayed settles ABORTED and is never posted', async () => {
    const { fabric, a, b, src, dst } = await pair();
    a.faults.delay([50, 50]);
    const ac = new AbortController();
    const p = a.submitSingleWrite({ src, length: 4096, dst: dst.desc, imm: 3, signal: ac.signal });
    ac.abort();
    expect(await outcome(p)).toBe(
      'ABORTED: submitSingleWrite: aborted by its AbortSignal (before it was posted)',
    );
    await new Promise((r) => setTimeout(r, 80));
    expect(b.immCounter(3).total).toBe(0);
    await fabric.close();
  });
});
