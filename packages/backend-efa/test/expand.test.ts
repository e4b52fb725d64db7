// The plan → work-request expansion exists in two languages: workRequests (core's validate.ts) says
// what a plan means, and the engine kit's worker (wr_shape and wr_next in expand.hpp) is what posts.
// This checks on random plans of every kind that the addon, handed what packWrite packs (as
// NativeEngineBase.postPlan hands it), expands them into exactly the work requests workRequests
// lists: same order, peer, lane, length, offsets, and the same zero-byte writes into the sink.

import { MrDesc, type MrHandle, NetAddr } from '@trellis/core';
import { type Plan, packWrite, type WorkRequest, WR_SHAPE, workRequests } from '@trellis/core/kit';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { addon } from '../src/native.js';

const SRC = { key: 7 } as unknown as MrHandle;

function peerOf(i: number, lanes: number): NetAddr {
  return new NetAddr(
    'fi-test',
    1,
    Array.from({ length: lanes }, (_, l) => Uint8Array.of(i, l)),
  );
}

function descOf(owner: NetAddr, seed: number): MrDesc {
  return new MrDesc(
    owner,
    BigInt(seed) << 20n,
    2 ** 40,
    owner.nics.map((_, l) => ({ addr: BigInt(seed * 4096 + l * 64), rkey: BigInt(seed * 16 + l + 1) })),
  );
}

// A world of 1..4 peers, each reached on 1..4 lanes.
const world = fc
  .array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 4 })
  .map((lanes) => lanes.map((l, i) => ({ peer: peerOf(i, l), lanes: l, dst: descOf(peerOf(i, l), i + 1) })));
type Peer = { peer: NetAddr; lanes: number; dst: MrDesc };

const off = fc.integer({ min: 0, max: 1 << 24 });
const imm = fc.option(fc.integer({ min: 0, max: 0xfffffffe }), { nil: undefined });

function planOf(w: Peer[]): fc.Arbitrary<Plan> {
  const p = fc.constantFrom(...w);
  const single = fc
    .record({ t: p, length: fc.integer({ min: 0, max: 1 << 21 }), so: off, dof: off, imm, extra: fc.nat(40) })
    .chain((r) =>
      fc.integer({ min: 1, max: r.t.lanes + r.extra }).map(
        (shards): Plan => ({
          op: 'single',
          peer: r.t.peer,
          src: SRC,
          srcOffset: r.so,
          length: r.length,
          dst: r.t.dst,
          dstOffset: r.dof,
          imm: r.imm,
          shards,
          lanes: r.t.lanes,
        }),
      ),
    );
  const paged = fc
    .record({
      t: p,
      pages: fc.array(fc.tuple(fc.nat(5000), fc.nat(5000)), { maxLength: 60 }),
      ss: fc.integer({ min: 0, max: 1 << 16 }),
      ds: fc.integer({ min: 0, max: 1 << 16 }),
      so: off,
      dof: off,
      pageBytes: fc.integer({ min: 0, max: 1 << 16 }),
      imm,
    })
    .map(
      (r): Plan => ({
        op: 'paged',
        peer: r.t.peer,
        src: SRC,
        srcPages: Uint32Array.from(r.pages.map((x) => x[0])),
        srcStride: r.ss,
        srcOffset: r.so,
        dst: r.t.dst,
        dstPages: Uint32Array.from(r.pages.map((x) => x[1])),
        dstStride: r.ds,
        dstOffset: r.dof,
        pageBytes: r.pageBytes,
        imm: r.imm,
        lanes: r.t.lanes,
      }),
    );
  const target = fc.record({ t: p, so: off, dof: off, length: fc.integer({ min: 0, max: 1 << 20 }) });
  const scatter = fc
    .record({
      targets: fc.array(target, { maxLength: 8 }),
      imm,
      kind: fc.constantFrom('peers', 'bytes', 'nic'),
    })
    .chain((r) => {
      const minLanes = Math.min(4, ...r.targets.map((t) => t.t.lanes));
      return fc.tuple(fc.integer({ min: 0, max: minLanes - 1 }), fc.nat(7)).map(
        ([nic, lane0]): Plan => ({
          op: 'scatter',
          src: SRC,
          targets: r.targets.map((t) => ({
            peer: t.t.peer,
            dst: t.t.dst,
            srcOffset: t.so,
            dstOffset: t.dof,
            length: t.length,
            lanes: t.t.lanes,
          })),
          imm: r.imm,
          routing: r.kind === 'nic' ? { nic } : (r.kind as 'peers' | 'bytes'),
          // Where prepared writes rotate it (routing 'peers' reads it; the others ignore it).
          ...(lane0 ? { lane0 } : {}),
        }),
      );
    });
  const member = p.chain((t) => fc.nat(t.lanes - 1).map((lane) => ({ t, lane })));
  const barrier = fc.record({ members: fc.array(member, { maxLength: 6 }), imm: fc.nat(0xfffffffe) }).map(
    (r): Plan => ({
      op: 'barrier',
      peers: r.members.map((m) => m.t.peer),
      imm: r.imm,
      lanes: r.members.map((m) => m.lane),
    }),
  );
  const immPlan = fc
    .record({ m: member, imm: fc.nat(0xfffffffe) })
    .map((r): Plan => ({ op: 'imm', peer: r.m.t.peer, imm: r.imm, lane: r.m.lane }));
  const wr = fc
    .record({
      m: member,
      so: off,
      dof: off,
      length: fc.integer({ min: 0, max: 1 << 20 }),
      withDst: fc.boolean(),
    })
    .map(
      (r): WorkRequest => ({
        lane: r.m.lane,
        peer: r.m.t.peer,
        dst: r.withDst ? r.m.t.dst : undefined,
        srcOffset: r.withDst ? r.so : 0,
        dstOffset: r.withDst ? r.dof : 0,
        length: r.withDst ? r.length : 0,
        imm: undefined,
      }),
    );
  const runs = fc.record({ runs: fc.array(wr, { maxLength: 8 }), imm }).map(
    (r): Plan => ({
      op: 'runs',
      src: r.runs.some((x) => x.dst) ? SRC : undefined,
      runs: r.runs.map((x) => ({ ...x, imm: r.imm })),
      imm: r.imm,
    }),
  );
  return fc.oneof(single, paged, scatter, barrier, immPlan, runs);
}

/** What the addon says it would post, one object per work request. */
function expand(plan: Plan, w: Peer[]) {
  const ids = new Map(w.map((p, i) => [p.peer.toString(), i + 1]));
  const lanes = new Map(w.map((p) => [p.peer.toString(), p.lanes]));
  const packed = packWrite(
    plan,
    { runs: new Float64Array(8), keys: new BigUint64Array(8) },
    { peerId: (p) => ids.get(p.toString())!, lanesTo: (p) => lanes.get(p.toString())! },
    'test',
  );
  const out = addon().expandWrite(packed.runs, packed.keys, packed.pages);
  expect(packed.region).toBe(
    plan.op === 'barrier' || plan.op === 'imm' || (plan.op === 'runs' && !plan.src) ? 0 : 7,
  );
  const shapes = [];
  for (let i = 0; i < out.length; i += WR_SHAPE.stride) {
    const keyed = out[i + WR_SHAPE.keyed] === 1;
    shapes.push({
      peer: out[i + WR_SHAPE.peer],
      lane: out[i + WR_SHAPE.lane],
      len: out[i + WR_SHAPE.len],
      keyed,
      ...(keyed ? { srcOff: out[i + WR_SHAPE.srcOff], dstOff: out[i + WR_SHAPE.dstOff] } : {}),
    });
  }
  return { shapes, ids };
}

/** What workRequests says the plan means, in the same terms. */
function expected(plan: Plan, ids: Map<string, number>) {
  return workRequests(plan).map((r) => {
    const keyed = r.dst !== undefined && r.length > 0;
    return {
      peer: ids.get(r.peer.toString()),
      lane: r.lane,
      len: keyed ? r.length : 0,
      keyed,
      ...(keyed ? { srcOff: r.srcOffset, dstOff: r.dstOffset } : {}),
    };
  });
}

describe('plan → work-request expansion: JS (workRequests) and the engine kit worker agree', () => {
  it('on random single, paged, scatter, barrier, imm and runs plans', () => {
    let wrs = 0;
    const kinds = new Set<string>();
    fc.assert(
      fc.property(
        world.chain((w) => planOf(w).map((plan) => ({ w, plan }))),
        ({ w, plan }) => {
          const { shapes, ids } = expand(plan, w);
          expect(shapes).toEqual(expected(plan, ids));
          wrs += shapes.length;
          kinds.add(plan.op);
        },
      ),
      { numRuns: 600, seed: 0x7e11 },
    );
    expect([...kinds].sort()).toEqual(['barrier', 'imm', 'paged', 'runs', 'scatter', 'single']);
    expect(wrs).toBeGreaterThan(2000);
  });

  it('edges: shards past the bytes are empty writes into the sink; 0 pages and 0 targets expand to nothing', () => {
    const t = { peer: peerOf(0, 2), lanes: 2, dst: descOf(peerOf(0, 2), 1) };
    const w = [t];
    // 100 bytes in 4 shards of 64 (the shard size rounds up to SHARD_ALIGN): two carry the bytes,
    // two are empty writes into the sink (they still carry the immediate).
    const single: Plan = {
      op: 'single',
      peer: t.peer,
      src: SRC,
      srcOffset: 5,
      length: 100,
      dst: t.dst,
      dstOffset: 9,
      imm: 3,
      shards: 4,
      lanes: 2,
    };
    const { shapes } = expand(single, w);
    expect(shapes).toEqual([
      { peer: 1, lane: 0, len: 64, keyed: true, srcOff: 5, dstOff: 9 },
      { peer: 1, lane: 1, len: 36, keyed: true, srcOff: 69, dstOff: 73 },
      { peer: 1, lane: 0, len: 0, keyed: false },
      { peer: 1, lane: 1, len: 0, keyed: false },
    ]);
    const paged: Plan = {
      op: 'paged',
      peer: t.peer,
      src: SRC,
      srcPages: new Uint32Array(),
      srcStride: 64,
      srcOffset: 0,
      dst: t.dst,
      dstPages: new Uint32Array(),
      dstStride: 64,
      dstOffset: 0,
      pageBytes: 64,
      imm: 1,
      lanes: 2,
    };
    expect(expand(paged, w).shapes).toEqual([]);
    expect(expand({ op: 'scatter', src: SRC, targets: [], imm: 1, routing: 'peers' }, w).shapes).toEqual([]);
  });
});
