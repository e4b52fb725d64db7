// A failed phase fails the instance (host modes, with and without the native proxy, backend-efa shm
// in one process): after a rank that dispatched never combines, the others' combine fails TIMEOUT
// and every later dispatch and combine rejects at once with that code, posting nothing — before,
// the next dispatch resolved in milliseconds with another round's leftovers. Bad input refused
// before anything is posted does not fail it.
import { createEngine } from '@trellis/backend-efa';
import { rejects, SettleTracker } from '@trellis/core/conformance';
import { describe, expect, it } from 'vitest';
import { MoeAllToAll, referenceDispatch, syntheticExpert, syntheticInputs } from '../src/index.js';
import { engines, exactRound, world } from './world.js';

const base = {
  worldSize: 3,
  nodeSize: 1,
  numExperts: 6,
  topk: 2,
  hidden: 64,
  maxTokensPerRank: 12,
  inDtype: 'bf16',
  outDtype: 'fp32',
  maxPrivateTokens: 3,
  timeoutMs: 300,
} as const;

describe('MoeAllToAll: a failed phase fails the instance', () => {
  for (const proxy of [false, true])
    it(`a rank that dispatched and never combines: the others' combine fails TIMEOUT, then every later call rejects at once (proxy ${proxy})`, async () => {
      const cfg = { ...base, proxy, rank: 0 };
      const moes = await world(cfg, 'shm');
      await exactRound(moes, cfg, 11);
      expect(moes.map((m) => m.failure)).toEqual([undefined, undefined, undefined]);

      // Round 2: everyone dispatches; rank 2 then stops (as a process killed after its send).
      const ins = syntheticInputs(cfg, 12, 'random');
      const res = await Promise.all(moes.map((m, r) => m.dispatch(ins[r])));
      const outs = res.map((d) => syntheticExpert(cfg, d!));
      const failed = await Promise.all(
        [0, 1].map((r) => rejects(moes[r]!.combine({ expertOut: outs[r]! }), 'TIMEOUT', `rank ${r} combine`)),
      );
      for (const [r, e] of failed.entries()) expect(moes[r]!.failure).toBe(e);
      expect(moes[2]!.failure).toBeUndefined();
      // Without the proxy the message names the round and what was missing, not an internal counter.
      // With the proxy, this round's arrivals are counted, not every round's since connect.
      for (const e of failed)
        expect(e.message).toMatch(
          proxy
            ? /\(native proxy, round 2\): timed out after 300 ms waiting for the combined rows \(1 of 2 arrivals\)$/
            : /^MoeAllToAll \(host, round 2\): timed out after 300 ms waiting for every peer's combine rows \(1 of 2 arrivals\)$/,
        );

      // Round 3 on the survivors: refused at once with the failure's code, nothing posted.
      const next = syntheticInputs(cfg, 13, 'random');
      for (const r of [0, 1]) {
        const before = engines[r]!.stats().ops.submitted;
        const t0 = performance.now();
        const e = await rejects(
          moes[r]!.dispatch(next[r]),
          'TIMEOUT',
          `rank ${r} dispatch after the failure`,
        );
        expect(performance.now() - t0).toBeLessThan(cfg.timeoutMs);
        expect(e.message).toMatch(/^MoeAllToAll\.dispatch: this instance failed in an earlier phase \(/);
        expect(e.message).toMatch(/close it and create and connect a new one on every rank$/);
        expect(e.cause).toBe(moes[r]!.failure);
        await rejects(
          moes[r]!.combine({ expertOut: outs[r]! }),
          'TIMEOUT',
          `rank ${r} combine after the failure`,
        );
        expect(engines[r]!.stats().ops.submitted).toBe(before);
      }
      for (const m of moes) await m.close();
    });

  for (const proxy of [false, true])
    it(`recovery as documented — close every instance, create and connect new ones with the same config on the same engines — gives exact rounds (proxy ${proxy})`, async () => {
      const cfg = { ...base, proxy, rank: 0 };
      const moes = await world(cfg, 'shm');
      await exactRound(moes, cfg, 41);
      // Round 2: rank 2 sits it out; the others' routes and rows to it stay credited to its engine's
      // immediate counters, unconsumed (and their routes stay in its region).
      const ins = syntheticInputs(cfg, 42, 'random');
      await Promise.all([0, 1].map((r) => rejects(moes[r]!.dispatch(ins[r]), 'TIMEOUT', `rank ${r}`)));
      for (const m of moes) await m.close();
      const again = await Promise.all(engines.map((e, rank) => MoeAllToAll.create(e, { ...cfg, rank })));
      for (const m of again) m.connect(again.map((x) => x.descriptor));
      // A new instance counts its own rounds' arrivals only (it used to take the old round's
      // leftovers for its first round's: wrong rows, silently).
      for (const seed of [43, 44, 45]) await exactRound(again, cfg, seed);
      for (const m of again) await m.close();
    });

  for (const proxy of [false, true])
    it(`a write of the round that fails fails the pending phase at once with that error, naming the rank written to, not at timeoutMs (proxy ${proxy})`, async () => {
      const cfg = { ...base, timeoutMs: 20_000, proxy, rank: 0 };
      // Engine deadline 1.5 s, phase deadline 20 s.
      const moes = await world(cfg, 'shm', 1500);
      await exactRound(moes, cfg, 51);
      const ins = syntheticInputs(cfg, 52, 'random');
      const res = await Promise.all(moes.map((m, r) => m.dispatch(ins[r])));
      const outs = res.map((d) => syntheticExpert(cfg, d!));
      // Rank 2's engine goes as the others combine. Host mode: the engines see that an engine of this
      // process closed and refuse writes to it (PEER_LOST). The proxy posts through its port to the
      // provider, where libfabric 1.17 shm never completes them: they fail at the engine deadline
      // (TIMEOUT) — as any write to a peer that died without the engine learning it.
      await engines[2]!.close();
      const t0 = performance.now();
      const code = proxy ? 'TIMEOUT' : 'PEER_LOST';
      const failed = await Promise.all(
        [0, 1].map((r) => rejects(moes[r]!.combine({ expertOut: outs[r]! }), code, `rank ${r} combine`)),
      );
      expect(performance.now() - t0).toBeLessThan(cfg.timeoutMs);
      for (const [r, e] of failed.entries()) {
        expect(e).toBe(moes[r]!.failure);
        expect(e.message).toMatch(
          proxy
            ? /\(native proxy, round 2\): a write of the round to rank 2 failed: /
            : /^MoeAllToAll \(host, round 2\): a write to rank 2 failed: /,
        );
      }
      for (const m of moes) await m.close();
    });

  it('two open instances on one engine may not share an immediate value; closed, the values are free again', async () => {
    const cfg = { ...base, worldSize: 2, numExperts: 4, rank: 0 };
    const moes = await world(cfg, 'shm');
    const e = await rejects(
      MoeAllToAll.create(engines[0]!, { ...cfg, immBase: 0x4d4f0002 }),
      'INVALID_ARGUMENT',
      'overlapping immBase',
    );
    expect(e.message).toMatch(
      /^MoeAllToAll\.create: immediate 1297022978 \(immBase 1297022978\.\.1297022981\) is counted by another open MoeAllToAll on this engine; give each instance its own four values, or close the other first$/,
    );
    // Whatever the modes: an instance driven by the native proxy (whose port takes the values from
    // JS) beside one driven from JS was let through, and each took the other's arrivals.
    const viaProxy = await rejects(
      MoeAllToAll.create(engines[0]!, { ...cfg, proxy: true, immBase: 0x4d4f0003 }),
      'INVALID_ARGUMENT',
      'overlapping immBase, the other mode',
    );
    expect(viaProxy.message).toMatch(
      /^MoeAllToAll\.create: immediate 1297022979 .* is counted by another open MoeAllToAll on this engine/,
    );
    // Four values further on, it is another instance's to use.
    const other = await MoeAllToAll.create(engines[0]!, { ...cfg, immBase: 0x4d4f0004 });
    const otherProxy = await MoeAllToAll.create(engines[1]!, {
      ...cfg,
      rank: 1,
      proxy: true,
      immBase: 0x4d4f0008,
    });
    await rejects(
      MoeAllToAll.create(engines[1]!, { ...cfg, rank: 1, immBase: 0x4d4f000a }),
      'INVALID_ARGUMENT',
      'a JS-driven instance overlapping a proxy one',
    );
    await otherProxy.close();
    await other.close();
    await moes[0]!.close();
    const fresh = await MoeAllToAll.create(engines[0]!, cfg);
    fresh.connect([fresh.descriptor, moes[1]!.descriptor]);
    await fresh.close();
    await moes[1]!.close();
  });

  it("close does not wait out the proxy thread's spin (proxySpinUs 1 s: close blocked the event loop for it)", async () => {
    const cfg = { ...base, worldSize: 2, numExperts: 4, proxy: true, proxySpinUs: 1_000_000, rank: 0 };
    const moes = await world(cfg, 'shm');
    await exactRound(moes, cfg, 61);
    // Right after a round the thread spins on its go word for proxySpinUs.
    const t0 = performance.now();
    for (const m of moes) await m.close();
    expect(performance.now() - t0).toBeLessThan(900);
  });

  for (const proxy of [false, true])
    it(`close settles a pending phase with CLOSED at once, and every later dispatch and combine rejects CLOSED (proxy ${proxy})`, async () => {
      const cfg = { ...base, worldSize: 2, numExperts: 4, timeoutMs: 5000, proxy, rank: 0 };
      const moes = await world(cfg, 'shm');
      const ins = syntheticInputs(cfg, 21, 'random');
      // Rank 1 never dispatches: rank 0's dispatch waits for its routes.
      const pending = moes[0]!.dispatch(ins[0]);
      const t = new SettleTracker();
      t.track(pending);
      await new Promise((r) => setTimeout(r, 50));
      expect(t.outcomes).toEqual(['pending']);
      const t0 = performance.now();
      await moes[0]!.close();
      const e = await rejects(pending, 'CLOSED', 'pending dispatch at close');
      expect(e.message).toBe('MoeAllToAll: closed');
      expect(performance.now() - t0).toBeLessThan(cfg.timeoutMs);
      expect(t.outcomes).toEqual(['CLOSED']);
      const after = await rejects(moes[0]!.dispatch(ins[0]), 'CLOSED', 'dispatch after close');
      expect(after.message).toBe('MoeAllToAll.dispatch: the instance was closed');
      const c = await rejects(moes[0]!.combine(undefined), 'CLOSED', 'combine after close');
      expect(c.message).toBe('MoeAllToAll.combine: the instance was closed');
      const conn = await rejects(
        Promise.resolve().then(() => moes[0]!.connect(moes.map((m) => m.descriptor))),
        'CLOSED',
        'connect after close',
      );
      expect(conn.message).toBe('MoeAllToAll.connect: the instance was closed');
      // Closing again does nothing; the other rank is untouched and closes as usual.
      await moes[0]!.close();
      expect(moes[1]!.failure).toBeUndefined();
      await moes[1]!.close();
      await rejects(moes[1]!.dispatch(ins[1]), 'CLOSED', 'rank 1 dispatch after close');
    });

  for (const proxy of [false, true])
    it(`close in the same tick as dispatch settles it CLOSED at once; an engine closed under a pending phase settles it CLOSED (proxy ${proxy})`, async () => {
      const cfg = { ...base, worldSize: 2, numExperts: 4, timeoutMs: 5000, proxy, rank: 0 };
      const moes = await world(cfg, 'shm');
      const ins = syntheticInputs(cfg, 31, 'random');
      // The proxy mode once made this wait 2 × timeoutMs + 5 s: its wait began after close.
      const t0 = performance.now();
      const pending = moes[0]!.dispatch(ins[0]);
      const closing = moes[0]!.close();
      await rejects(pending, 'CLOSED', 'dispatch closed in its own tick');
      await closing;
      expect(performance.now() - t0).toBeLessThan(cfg.timeoutMs);
      // Rank 1 again, with a fresh instance on rank 0's engine: its dispatch waits for routes that
      // never come; the engine closes under it.
      const a = await MoeAllToAll.create(engines[0]!, cfg);
      a.connect([a.descriptor, moes[1]!.descriptor]);
      const waiting = a.dispatch(ins[0]);
      const t = new SettleTracker();
      t.track(waiting);
      await new Promise((r) => setTimeout(r, 50));
      expect(t.outcomes).toEqual(['pending']);
      const t1 = performance.now();
      await engines[0]!.close();
      const closed = await rejects(waiting, 'CLOSED', 'dispatch pending when its engine closed');
      expect(performance.now() - t1).toBeLessThan(cfg.timeoutMs);
      // The message says whose wait it was (host mode said `immCounter: the engine was closed`).
      expect(closed.message).toMatch(
        proxy
          ? /^MoeAllToAll: the engine was closed while dispatch of round 1 was pending/
          : /^MoeAllToAll \(host, round 1\): the engine was closed while waiting for every peer's routes$/,
      );
      await a.close();
      await moes[1]!.close();
    });

  it('bad input refused before anything is posted does not fail it: missing scales, too many tokens; the next good round is exact', async () => {
    const cfg = {
      ...base,
      worldSize: 2,
      numExperts: 4,
      hidden: 128,
      inDtype: 'fp8',
      outDtype: 'bf16',
      scales: true,
      rank: 0,
    } as const;
    const moes = await world(cfg, 'shm');
    const ins = syntheticInputs(cfg, 21, 'random');
    const before = engines[0]!.stats().ops.submitted;
    const noScales = { ...ins[0]!, scales: undefined };
    const e = await rejects(moes[0]!.dispatch(noScales), 'INVALID_ARGUMENT', 'no scales');
    expect(e.message).toMatch(
      /created with scales: true: input\.scales must hold \d+ values \(\d+ per token\)/,
    );
    const many = {
      ...ins[0]!,
      topkIds: new Int32Array((cfg.maxTokensPerRank + 1) * cfg.topk),
      topkWeights: new Float32Array((cfg.maxTokensPerRank + 1) * cfg.topk),
    };
    const e2 = await rejects(moes[0]!.dispatch(many), 'INVALID_ARGUMENT', 'too many tokens');
    expect(e2.message).toBe(
      `MoeAllToAll.dispatch: ${cfg.maxTokensPerRank + 1} tokens (topkIds holds ${(cfg.maxTokensPerRank + 1) * cfg.topk} ids, ${cfg.topk} per token) is more than maxTokensPerRank ${cfg.maxTokensPerRank}`,
    );
    await rejects(moes[0]!.dispatch(undefined), 'INVALID_ARGUMENT', 'no input with send');
    expect(engines[0]!.stats().ops.submitted).toBe(before);
    expect(moes[0]!.failure).toBeUndefined();
    const res = await Promise.all(moes.map((m, r) => m.dispatch(ins[r])));
    for (const [r, d] of res.entries())
      expect(Buffer.compare(d!.expertX, referenceDispatch(cfg, ins, r).expertX)).toBe(0);
    // A second dispatch before this round's combine: refused, nothing posted, not a failure.
    const mid = engines[0]!.stats().ops.submitted;
    const twice = await rejects(moes[0]!.dispatch(ins[0]), 'INVALID_ARGUMENT', 'dispatch before combine');
    expect(twice.message).toBe(
      "MoeAllToAll.dispatch: this round's combine has not finished; combine before the next dispatch",
    );
    expect(engines[0]!.stats().ops.submitted).toBe(mid);
    expect(moes[0]!.failure).toBeUndefined();
    const outs = res.map((d) => syntheticExpert(cfg, d!));
    await Promise.all(moes.map((m, r) => m.combine({ expertOut: outs[r]! })));
    expect(moes.map((m) => m.failure)).toEqual([undefined, undefined]);
    for (const m of moes) await m.close();
  });
});

describe('MoeAllToAll.connect: ranks on engines of different kinds', () => {
  it('is refused naming the rank whose descriptor comes from another kind of engine', async () => {
    const [shm, tcp] = await Promise.all([
      createEngine({ provider: 'shm', nics: 1 }),
      createEngine({ provider: 'tcp', nics: 1 }),
    ]);
    try {
      const cfg = { ...base, worldSize: 2, numExperts: 4 };
      const a = await MoeAllToAll.create(shm, { ...cfg, rank: 0 });
      const b = await MoeAllToAll.create(tcp, { ...cfg, rank: 1 });
      const e = await rejects(
        Promise.resolve().then(() => a.connect([a.descriptor, b.descriptor])),
        'INVALID_DESCRIPTOR',
        'a tcp rank among shm ones',
      );
      expect(e.message).toBe(
        "MoeAllToAll.connect: descriptors[1] comes from a 'fi-tcp' engine but this rank's is a 'fi-shm' engine; every rank needs an engine of one kind",
      );
      await a.close();
      await b.close();
    } finally {
      await Promise.all([shm.close(), tcp.close()]);
    }
  });
});
