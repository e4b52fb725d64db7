// Regions above the provider's largest registration (`limits.maxMrBytes`) are registered in parts,
// transparently: one handle, one descriptor listing every part's keys, and writes cut at part
// boundaries with their immediates raised once (one per original work request).
import { describe, expect, it } from 'vitest';
import { assertBytes, pattern, rejects, sleep } from '../src/conformance/index.js';
import {
  createLoopbackFabric,
  type LoopbackFabric,
  MrDesc,
  type MrHandle,
  Prng,
  type TransferEngine,
  type TrellisError,
} from '../src/index.js';

const M = 64 * 1024;

async function world(
  nics: number,
  failover: boolean,
  seed: number,
): Promise<[LoopbackFabric, TransferEngine, TransferEngine]> {
  const fabric = createLoopbackFabric({ nics, seed });
  const opts = { limits: { maxMrBytes: M }, ...(failover ? { failover: true } : {}) };
  return [fabric, fabric.createEngine(opts), fabric.createEngine(opts)];
}

async function target(e: TransferEngine, n: number, seed: number): Promise<[MrHandle, Uint8Array]> {
  const h = await e.registerMemory(n, { remote: true });
  const init = pattern(n, seed);
  h.buffer!.set(init);
  return [h, init.slice()];
}

describe('regions registered in parts (loopback, maxMrBytes 64 KiB)', () => {
  it('the descriptor lists every part; it round-trips; parts cover the region; unregister releases them all', async () => {
    const [fabric, a] = await world(2, false, 1);
    const h = await a.registerMemory(5 * M + 17, { remote: true });
    const d = h.desc;
    expect(d.parts?.bytes).toBe(M);
    expect(d.parts?.keys.length).toBe(5);
    expect(MrDesc.parse(d.toString()).equals(d)).toBe(true);
    expect([0, 1, 2, 3, 4, 5].map((p) => d.part(p).length)).toEqual([M, M, M, M, M, 17]);
    expect(new Set([0, 1, 2, 3, 4, 5].map((p) => d.part(p).nics[0]!.rkey)).size).toBe(6);
    // A part that is not there is refused by name (6 and 1.5 threw a TypeError; '1' was taken).
    for (const [p, shown] of [
      [6, '6'],
      [1.5, '1.5'],
      [-1, '-1'],
      ['1', '"1"'],
    ] as const) {
      const e = (() => {
        try {
          d.part(p as number);
        } catch (x) {
          return x as TrellisError;
        }
      })();
      expect(e?.code).toBe('INVALID_ARGUMENT');
      expect(e?.message).toBe(
        `MrDesc.part: p must be an integer in 0..5 (the region has 6 parts), got ${shown}`,
      );
    }
    expect(a.stats().regions).toBe(1);
    const local = await a.registerMemory(3 * M);
    expect(local.desc.remote).toBe(false);
    expect(local.desc.parts?.keys.length).toBe(2);
    await h.unregister();
    await local.unregister();
    expect(a.stats().regions).toBe(0);
    await fabric.close();
  });

  for (const [nics, failover] of [
    [1, false],
    [2, false],
    [4, false],
    [2, true],
  ] as const) {
    it(`${nics} NIC(s)${failover ? ', failover on' : ''}: random single, paged and scatter writes across part boundaries — every byte and every immediate count exact`, async () => {
      const [fabric, a, b] = await world(nics, failover, 10 + nics);
      const rng = new Prng(nics * 7 + (failover ? 1 : 0));
      const srcLen = 5 * M + 333;
      const src = await a.registerMemory(srcLen); // in parts, local only
      src.buffer!.set(pattern(srcLen, 3));
      const [big, wantBig] = await target(b, 8 * M + 5, 4); // in parts
      const [small, wantSmall] = await target(b, M / 2, 5); // one part
      const s = src.buffer!;
      const imm = 0x7700;
      let expected = 0;
      // Disjoint destination slots so concurrent writes cannot overlap.
      const slots = 16;
      const slot = Math.floor((8 * M + 5) / slots);
      const ops: Promise<void>[] = [];
      for (let i = 0; i < slots - 2; i++) {
        const length = 1 + rng.below(slot - 1);
        const srcOffset = rng.below(srcLen - length);
        const dstOffset = i * slot + rng.below(slot - length + 1);
        const req = { kind: 'single', src, srcOffset, length, dst: big.desc, dstOffset, imm } as const;
        expected += b.expectedImms(req);
        ops.push(a.submitSingleWrite(req));
        wantBig.set(s.subarray(srcOffset, srcOffset + length), dstOffset);
      }
      // Paged: 8 pages of 20000 bytes into the last two slots, reversed.
      const page = 20_000;
      const pages = Math.floor((2 * slot) / page);
      const dstBase = (slots - 2) * slot;
      const p = {
        kind: 'paged',
        src,
        srcOffset: 1000,
        srcPages: Uint32Array.from({ length: pages }, (_, i) => i),
        srcStride: page,
        dst: big.desc,
        dstOffset: dstBase,
        dstPages: Uint32Array.from({ length: pages }, (_, i) => pages - 1 - i),
        dstStride: page,
        pageBytes: page,
        imm: imm + 1,
      } as const;
      const pagedCount = b.expectedImms(p);
      ops.push(a.submitPagedWrites(p));
      for (let i = 0; i < pages; i++)
        wantBig.set(s.subarray(1000 + i * page, 1000 + (i + 1) * page), dstBase + (pages - 1 - i) * page);
      // Scatter from the parted source to a one-part target.
      const sc = {
        kind: 'scatter',
        src,
        targets: [
          { srcOffset: M - 100, length: 300, dst: small.desc, dstOffset: 0 },
          { srcOffset: 3 * M - 5, length: 10_000, dst: small.desc, dstOffset: 1000 },
        ],
        imm: imm + 2,
      } as const;
      const scatterCount = b.expectedImms(sc);
      ops.push(a.submitScatter(sc));
      wantSmall.set(s.subarray(M - 100, M + 200), 0);
      wantSmall.set(s.subarray(3 * M - 5, 3 * M - 5 + 10_000), 1000);
      await Promise.all(ops);
      await b.immCounter(imm).wait(expected, { timeoutMs: 10_000 });
      await b.immCounter(imm + 1).wait(pagedCount, { timeoutMs: 10_000 });
      await b.immCounter(imm + 2).wait(scatterCount, { timeoutMs: 10_000 });
      await sleep(20);
      expect([b.immCounter(imm).total, b.immCounter(imm + 1).total, b.immCounter(imm + 2).total]).toEqual([
        expected,
        pagedCount,
        scatterCount,
      ]);
      assertBytes(big.buffer!, wantBig, 'parted target');
      assertBytes(small.buffer!, wantSmall, 'one-part target');
      // Out of range is still refused before anything is posted.
      await rejects(
        a.submitSingleWrite({ src, length: 10, dst: big.desc, dstOffset: 8 * M, imm }),
        'OUT_OF_RANGE',
        'past the parted region',
      );
      await fabric.close();
    });
  }
});
