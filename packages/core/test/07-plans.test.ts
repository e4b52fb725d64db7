// workRequests: how each kind of plan becomes work requests (the JS half of the expansion).
import { describe, expect, it } from 'vitest';
import { createLoopbackFabric, MIN_SHARD_BYTES } from '../src/index.js';
import { type Plan, workRequests } from '../src/kit/index.js';

describe('workRequests: how plans become work requests', async () => {
  const f = createLoopbackFabric({ nics: 4 });
  const a = f.createEngine();
  const b = f.createEngine({ nics: 2 });
  const src = await a.registerMemory(1 << 20);
  const dst = await b.registerMemory(1 << 20, { remote: true });
  const base = { peer: b.address, src, dst: dst.desc };

  it('a single write: shards round-robin over lanes, contiguous', () => {
    const p: Plan = {
      op: 'single',
      ...base,
      srcOffset: 10,
      length: 3 * MIN_SHARD_BYTES,
      dstOffset: 20,
      imm: 1,
      shards: 2,
      lanes: 2,
    };
    const w = workRequests(p);
    expect(w.map((x) => [x.lane, x.srcOffset, x.dstOffset, x.length])).toEqual([
      [0, 10, 20, 24576],
      [1, 10 + 24576, 20 + 24576, 24576],
    ]);
  });

  it('paged writes: one per page, lanes round-robin', () => {
    const p: Plan = {
      op: 'paged',
      ...base,
      srcPages: Uint32Array.of(3, 1, 2),
      srcStride: 100,
      srcOffset: 5,
      dstPages: Uint32Array.of(0, 9, 4),
      dstStride: 200,
      dstOffset: 7,
      pageBytes: 50,
      imm: 2,
      lanes: 2,
    };
    expect(workRequests(p).map((x) => [x.lane, x.srcOffset, x.dstOffset, x.length, x.imm])).toEqual([
      [0, 305, 7, 50, 2],
      [1, 105, 1807, 50, 2],
      [0, 205, 807, 50, 2],
    ]);
  });

  it('scatter: peers routing spreads targets, nic routing pins, bytes routing shards each target', () => {
    const t = (i: number, length: number) => ({
      peer: b.address,
      dst: dst.desc,
      srcOffset: i * 1000,
      dstOffset: i * 2000,
      length,
      lanes: 2,
    });
    const targets = [t(0, 10), t(1, 20), t(2, 2 * MIN_SHARD_BYTES)];
    expect(
      workRequests({ op: 'scatter', src, targets, imm: 1, routing: 'peers' }).map((x) => x.lane),
    ).toEqual([0, 1, 0]);
    expect(
      workRequests({ op: 'scatter', src, targets, imm: 1, routing: { nic: 1 } }).map((x) => x.lane),
    ).toEqual([1, 1, 1]);
    const bytes = workRequests({ op: 'scatter', src, targets, imm: 1, routing: 'bytes' });
    expect(bytes.map((x) => [x.lane, x.length])).toEqual([
      [0, 10],
      [0, 20],
      [0, MIN_SHARD_BYTES],
      [1, MIN_SHARD_BYTES],
    ]);
  });

  it('barrier and imm are zero-byte work requests without a destination region', () => {
    const w = workRequests({ op: 'barrier', peers: [a.address, b.address], imm: 4, lanes: [0, 1] });
    expect(w.map((x) => [x.length, x.dst, x.imm, x.lane])).toEqual([
      [0, undefined, 4, 0],
      [0, undefined, 4, 1],
    ]);
    expect(workRequests({ op: 'imm', peer: b.address, imm: 9, lane: 1 })).toEqual([
      { lane: 1, peer: b.address, dst: undefined, srcOffset: 0, dstOffset: 0, length: 0, imm: 9 },
    ]);
  });
});
