// The native proxy (native/proxy.cc) in one process on backend-efa: results equal the reference
// over several rounds and split phases, every write it posts settles, and its failures and
// closing settle every pending phase once with a clear error.
import { createLoopbackFabric } from '@trellis/core';
import { rejects, SettleTracker } from '@trellis/core/conformance';
import { describe, expect, it } from 'vitest';
import {
  combineAsF32,
  MoeAllToAll,
  type MoeDeviceOps,
  referenceCombine,
  referenceDispatch,
  syntheticExpert,
  syntheticInputs,
} from '../src/index.js';
import { engines, ranks, world } from './world.js';

const base = {
  nodeSize: 1,
  topk: 4,
  hidden: 32,
  maxTokensPerRank: 24,
  inDtype: 'bf16',
  outDtype: 'bf16',
  proxy: true,
} as const;

/** Device ops with the basic calls only: no proxy, stream or direct kernels, no CUDA IPC. */
const basicOps = {
  alloc: () => 0n,
  free: () => {},
  upload: () => {},
  download: () => {},
  copyRows: () => {},
  combine: () => {},
} as unknown as MoeDeviceOps;

describe('MoeAllToAll driven by the native proxy (backend-efa, one process)', () => {
  for (const [provider, W, P] of [
    ['shm', 3, 3],
    ['tcp', 2, 64],
  ] as const) {
    it(`${W} ranks on ${provider}, maxPrivateTokens ${P}: 4 rounds (whole and split phases) equal the reference`, async () => {
      const cfg = { ...base, worldSize: W, numExperts: 4 * W, maxPrivateTokens: P, rank: 0 };
      const moes = await world(cfg, provider);
      const routings = ['random', 'skewed', 'empty-rank', 'random'] as const;
      for (const [i, routing] of routings.entries()) {
        const ins = syntheticInputs(cfg, 100 + i, routing);
        const split = i % 2 === 1;
        if (split) await Promise.all(moes.map((m, r) => m.dispatch(ins[r], { send: true, recv: false })));
        const res = await Promise.all(
          moes.map((m, r) =>
            m.dispatch(split ? undefined : ins[r], split ? { recv: true, send: false } : {}),
          ),
        );
        for (const [r, d] of res.entries()) {
          const want = referenceDispatch(cfg, ins, r);
          expect(d!.tokensPerExpert).toEqual(want.tokensPerExpert);
          expect(Buffer.from(d!.expertX).equals(Buffer.from(want.expertX))).toBe(true);
        }
        const outs = res.map((d) => syntheticExpert(cfg, d!));
        if (split) await Promise.all(moes.map((m, r) => m.combine({ expertOut: outs[r]! }, { recv: false })));
        const got = await Promise.all(
          moes.map((m, r) =>
            m.combine(split ? undefined : { expertOut: outs[r]! }, { accumulate: 'fp32', send: !split }),
          ),
        );
        for (const [r, g] of got.entries())
          expect(combineAsF32(cfg, g!)).toEqual(referenceCombine(cfg, ins, outs, r));
      }
      for (const [r, m] of moes.entries()) {
        const s = m.stats();
        expect(s.rounds).toBe(4);
        expect(s.proxy!.failed).toBe(0);
        expect(s.proxy!.settled).toBe(s.proxy!.posted);
        // routes, combine and barrier: one per peer per round
        expect([s.proxy!.counts[0], s.proxy!.counts[2], s.proxy!.counts[3]]).toEqual([
          4 * (W - 1),
          4 * (W - 1),
          4 * (W - 1),
        ]);
        for (let i = 0; i < 4; i++) expect(engines[r]!.immCounter(0x4d4f0000 + i).total).toBe(0);
      }
      await Promise.all(moes.map((m) => m.close()));
    }, 60_000);
  }

  it('a peer that connects and dispatches first: its immediates, arrived before this rank connects, are counted (not swallowed)', async () => {
    const cfg = { ...base, worldSize: 2, numExperts: 8, maxPrivateTokens: 4, timeoutMs: 5000, rank: 0 };
    const moes = await ranks(cfg, 'shm');
    const descs = moes.map((m) => m.descriptor);
    const ins = syntheticInputs(cfg, 11, 'random');
    moes[1]!.connect(descs);
    const late = moes[1]!.dispatch(ins[1]);
    // Rank 1's routes reach rank 0's port before rank 0 has connected.
    for (let i = 0; i < 500 && moes[0]!.stats().proxy!.counts[0]! < 1; i++)
      await new Promise((r) => setTimeout(r, 2));
    expect(moes[0]!.stats().proxy!.counts[0]).toBe(1);
    moes[0]!.connect(descs);
    const res = await Promise.all([moes[0]!.dispatch(ins[0]), late]);
    for (const [r, d] of res.entries()) {
      const want = referenceDispatch(cfg, ins, r);
      expect(Buffer.from(d!.expertX).equals(Buffer.from(want.expertX))).toBe(true);
    }
    const outs = res.map((d) => syntheticExpert(cfg, d!));
    const got = await Promise.all(
      moes.map((m, r) => m.combine({ expertOut: outs[r]! }, { accumulate: 'fp32' })),
    );
    for (const [r, g] of got.entries())
      expect(combineAsF32(cfg, g!)).toEqual(referenceCombine(cfg, ins, outs, r));
    await Promise.all(moes.map((m) => m.close()));
  });

  it('a peer that never dispatches: the round fails once with TIMEOUT naming what was missing; close settles a pending phase with CLOSED', async () => {
    const cfg = { ...base, worldSize: 2, numExperts: 8, maxPrivateTokens: 4, timeoutMs: 300, rank: 0 };
    const moes = await world(cfg, 'shm');
    const ins = syntheticInputs(cfg, 7, 'random');
    const e = await rejects(moes[0]!.dispatch(ins[0]), 'TIMEOUT', 'dispatch without the peer');
    expect(e.message).toMatch(
      /native proxy, round 1\): timed out after 300 ms waiting for every peer's routes \(0 of 1 arrivals\)/,
    );
    // The failed instance says so again, it does not hang.
    await rejects(
      moes[0]!.dispatch(undefined, { send: false, recv: true }),
      'TIMEOUT',
      'recv after the failure',
    );
    // A phase pending when the instance closes settles once with CLOSED.
    const pending = moes[1]!.dispatch(ins[1]);
    const t = new SettleTracker();
    t.track(pending);
    await new Promise((r) => setTimeout(r, 50));
    expect(t.outcomes).toEqual(['pending']);
    await moes[1]!.close();
    await rejects(pending, 'CLOSED', 'pending dispatch at close');
    await moes[0]!.close();
  });

  it('is refused where it cannot run: a JS engine (no port); GPU-driven with the proxy option or without its kernels', async () => {
    const fabric = createLoopbackFabric({ nics: 1, seed: 1 });
    const e = fabric.createEngine();
    await rejects(
      MoeAllToAll.create(e, { ...base, worldSize: 1, rank: 0, numExperts: 4 }),
      'UNSUPPORTED',
      'loopback engine',
    );
    expect(e.stats().regions).toBe(0);
    await rejects(
      MoeAllToAll.create(e, { ...base, worldSize: 1, rank: 0, numExperts: 4 }, { ops: basicOps, device: 0 }),
      'UNSUPPORTED',
      'GPU instance',
    );
    await rejects(
      MoeAllToAll.create(e, { ...base, worldSize: 1, rank: 0, numExperts: 4, proxy: 'yes' as never }),
      'INVALID_ARGUMENT',
      'proxy not a boolean',
    );
    // GPU-driven: no proxy option (it runs its own across nodes), device ops with direct kernels and IPC.
    const gd = { ops: basicOps, device: 0, gpuDriven: true };
    await rejects(
      MoeAllToAll.create(e, { ...base, proxy: false, worldSize: 2, nodeSize: 1, rank: 0, numExperts: 4 }, gd),
      'UNSUPPORTED',
      'gpuDriven across nodes without its kernels',
    );
    await rejects(
      MoeAllToAll.create(e, { ...base, proxy: true, worldSize: 2, nodeSize: 2, rank: 0, numExperts: 4 }, gd),
      'INVALID_ARGUMENT',
      'gpuDriven with the proxy',
    );
    const noDirect = await rejects(
      MoeAllToAll.create(e, { ...base, proxy: false, worldSize: 2, nodeSize: 2, rank: 0, numExperts: 4 }, gd),
      'UNSUPPORTED',
      'gpuDriven without direct kernels',
    );
    expect(noDirect.message).toMatch(/gpuDriven needs device ops with direct kernels and CUDA IPC/);
    await e.close();
  });
});
