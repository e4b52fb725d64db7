// Sharding rules (autoShards, shardRanges, lanesBetween) and countImms.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  autoShards,
  countImms,
  lanesBetween,
  MIN_SHARD_BYTES,
  SHARD_ALIGN,
  shardRanges,
} from '../src/index.js';

describe('sharding rules', () => {
  it('shardRanges covers [0, length) exactly, in order, with aligned boundaries (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1 << 30 }), fc.integer({ min: 1, max: 4 }), (length, shards) => {
        const r = shardRanges(length, shards);
        expect(r).toHaveLength(shards);
        let at = 0;
        for (const [off, len] of r) {
          expect(off).toBe(at);
          expect(len).toBeGreaterThanOrEqual(0);
          if (off < length && len > 0 && off + len < length) expect((off + len) % SHARD_ALIGN).toBe(0);
          at = off + len;
        }
        expect(at).toBe(length);
      }),
      { numRuns: 500 },
    );
  });

  it('auto-sharded writes have no empty shard (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1 << 26 }), fc.integer({ min: 1, max: 4 }), (length, lanes) => {
        const n = autoShards(length, lanes);
        expect(n).toBeGreaterThanOrEqual(1);
        expect(n).toBeLessThanOrEqual(lanes);
        if (length >= MIN_SHARD_BYTES)
          for (const [, len] of shardRanges(length, n)) expect(len).toBeGreaterThan(0);
      }),
    );
  });

  it('autoShards: one shard per MIN_SHARD_BYTES, capped by lanes', () => {
    expect(autoShards(0, 4)).toBe(1);
    expect(autoShards(MIN_SHARD_BYTES - 1, 4)).toBe(1);
    expect(autoShards(2 * MIN_SHARD_BYTES, 4)).toBe(2);
    expect(autoShards(100 * MIN_SHARD_BYTES, 4)).toBe(4);
    expect(autoShards(100 * MIN_SHARD_BYTES, 1)).toBe(1);
    expect(lanesBetween(4, 2)).toBe(2);
    expect(lanesBetween(1, 4)).toBe(1);
  });

  it('countImms for every shape', () => {
    expect(countImms({ kind: 'single', length: 1 << 20 }, 4)).toBe(0);
    expect(countImms({ kind: 'single', length: 1 << 20, imm: 1 }, 4)).toBe(4);
    expect(countImms({ kind: 'single', length: 1 << 20, imm: 1, shards: 2 }, 4)).toBe(2);
    expect(countImms({ kind: 'paged', pages: 77, imm: 0 }, 2)).toBe(77);
    expect(countImms({ kind: 'scatter', lengths: [1 << 20, 10], imm: 3 }, 4)).toBe(2);
    expect(countImms({ kind: 'scatter', lengths: [1 << 20, 10], imm: 3, routing: 'bytes' }, 4)).toBe(5);
    expect(countImms({ kind: 'scatter', lengths: [1 << 20, 10], imm: 3, routing: { nic: 1 } }, 4)).toBe(2);
    expect(countImms({ kind: 'barrier', imm: 3 }, 4)).toBe(1);
    expect(countImms({ kind: 'imm', imm: 3 }, 4)).toBe(1);
    expect(() => countImms({ kind: 'imm', imm: 3 }, 0)).toThrow(/lanes/);
  });

  it('countImms refuses shapes no request can have, saying which field (it used to count them)', () => {
    const err = (shape: unknown) => {
      try {
        countImms(shape as Parameters<typeof countImms>[0], 2);
      } catch (e) {
        return `${(e as { code: string }).code}: ${(e as Error).message}`;
      }
      return 'counted';
    };
    expect(err({ kind: 'imm', imm: 2 ** 32 })).toBe(
      'INVALID_ARGUMENT: countImms: imm must be an integer in 0..2^32-1, got 4294967296',
    );
    expect(err({ kind: 'single', length: 1, imm: -1 })).toBe(
      'INVALID_ARGUMENT: countImms: imm must be an integer in 0..2^32-1, got -1',
    );
    expect(err({ kind: 'single', length: -5, imm: 1 })).toBe(
      'INVALID_ARGUMENT: countImms: length must be an integer >= 0, got -5',
    );
    expect(err({ kind: 'single', length: 10, shards: 0, imm: 1 })).toBe(
      'INVALID_ARGUMENT: countImms: shards must be an integer >= 1, got 0',
    );
    expect(err({ kind: 'paged', pages: 1.5, imm: 1 })).toBe(
      'INVALID_ARGUMENT: countImms: pages must be an integer >= 0, got 1.5',
    );
    expect(err({ kind: 'scatter', lengths: [1, -1], imm: 1 })).toBe(
      'INVALID_ARGUMENT: countImms: lengths[1] must be an integer >= 0, got -1',
    );
    expect(err({ kind: 'barrier' })).toBe('INVALID_ARGUMENT: countImms: a barrier shape needs its imm');
    expect(err({ kind: 'nope', imm: 1 })).toBe('INVALID_ARGUMENT: countImms: unknown kind "nope"');
    // Without an immediate a valid shape counts 0, an invalid one is still refused.
    expect(err({ kind: 'paged', pages: -1 })).toBe(
      'INVALID_ARGUMENT: countImms: pages must be an integer >= 0, got -1',
    );
    expect(countImms({ kind: 'paged', pages: 3 }, 2)).toBe(0);
  });
});
