// MoeAllToAll against the CPU reference over the loopback fabric, and routes from a peer checked
// before they size anything.
import { createLoopbackFabric, type TransferEngine } from '@trellis/core';
import { outcome } from '@trellis/core/conformance';
import { describe, expect, it } from 'vitest';
import {
  combineAsF32 as asF32,
  type DispatchInput,
  syntheticExpert as expertCompute,
  syntheticInputs as inputs,
  MoeAllToAll,
  type MoeConfig,
  type Routing,
  referenceCombine,
  referenceDispatch,
} from '../src/index.js';

async function world(cfg: Omit<MoeConfig, 'rank'>, nics: number, seed: number) {
  const fabric = createLoopbackFabric({ nics, seed });
  const engines: TransferEngine[] = Array.from({ length: cfg.worldSize }, () => fabric.createEngine());
  const moes = await Promise.all(engines.map((e, rank) => MoeAllToAll.create(e, { ...cfg, rank })));
  for (const m of moes) m.connect(moes.map((x) => x.descriptor));
  return { fabric, moes };
}

/** One round on every rank: dispatch (send then recv), expert compute, combine; checked against the reference. */
async function round(moes: MoeAllToAll[], cfg: MoeConfig, ins: DispatchInput[], split: boolean) {
  if (split) await Promise.all(moes.map((m, r) => m.dispatch(ins[r], { send: true, recv: false })));
  const res = await Promise.all(
    moes.map((m, r) => m.dispatch(split ? undefined : ins[r], split ? { send: false, recv: true } : {})),
  );
  for (const [r, d] of res.entries()) {
    const want = referenceDispatch(cfg, ins, r);
    expect(d!.tokensPerExpert).toEqual(want.tokensPerExpert);
    expect(d!.expertOffsets).toEqual(want.expertOffsets);
    expect(Buffer.from(d!.expertX).equals(Buffer.from(want.expertX))).toBe(true);
    expect(d!.expertScales).toEqual(want.expertScales);
  }
  const outs = res.map((d) => expertCompute(cfg, d!));
  const got = await Promise.all(
    moes.map((m, r) => m.combine({ expertOut: outs[r]! }, { accumulate: 'fp32' })),
  );
  for (const [r, g] of got.entries()) expect(asF32(cfg, g!)).toEqual(referenceCombine(cfg, ins, outs, r));
  return res;
}

describe('MoeAllToAll (CPU reference) over the loopback fabric', () => {
  const base = {
    nodeSize: 1,
    topk: 4,
    hidden: 32,
    maxTokensPerRank: 24,
    inDtype: 'bf16',
    outDtype: 'bf16',
  } as const;
  const cases: Array<[string, number, number, Routing, number]> = [
    ['2 ranks, random routing', 2, 8, 'random', 64],
    ['3 ranks, random routing, overflow beyond 3 private rows', 3, 12, 'random', 3],
    ['4 ranks, skewed: every token to expert 0', 4, 16, 'skewed', 4],
    ['4 ranks, one rank with no tokens', 4, 8, 'empty-rank', 5],
  ];
  for (const [name, W, E, routing, P] of cases) {
    it(`${name}: dispatch and combine equal the reference, three rounds in a row`, async () => {
      const cfg = { ...base, worldSize: W, numExperts: E, maxPrivateTokens: P } as const;
      const { fabric, moes } = await world(cfg, 2, W);
      for (let i = 0; i < 3; i++)
        await round(
          moes,
          { ...cfg, rank: 0 },
          inputs({ ...cfg, rank: 0 }, 100 * W + i, routing),
          i % 2 === 1,
        );
      await fabric.close();
    });
  }

  it('fp8 tokens with per-token scales, fp32 outputs', async () => {
    const cfg = {
      worldSize: 3,
      nodeSize: 1,
      numExperts: 6,
      topk: 2,
      hidden: 256,
      maxTokensPerRank: 10,
      inDtype: 'fp8',
      outDtype: 'fp32',
      scales: true,
      maxPrivateTokens: 2,
    } as const;
    const { fabric, moes } = await world(cfg, 1, 5);
    await round(moes, { ...cfg, rank: 0 }, inputs({ ...cfg, rank: 0 }, 7, 'random'), false);
    await fabric.close();
  });

  it('refuses bad configs and inputs before sending anything', async () => {
    const fabric = createLoopbackFabric();
    const e = fabric.createEngine();
    const cfg = {
      worldSize: 2,
      rank: 0,
      nodeSize: 1,
      numExperts: 3,
      topk: 2,
      hidden: 8,
      maxTokensPerRank: 4,
      inDtype: 'bf16',
      outDtype: 'bf16',
    } as const;
    expect(await outcome(MoeAllToAll.create(e, cfg))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: numExperts 3 must be a multiple of worldSize 2',
    );
    expect(await outcome(MoeAllToAll.create(e, { ...cfg, numExperts: 2, topk: 3 }))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: topk 3 is more than numExperts 2 (topk is how many of the numExperts experts each token is routed to)',
    );
    for (const immBase of [-1, 1.5, 2 ** 32, 0xfffffffc])
      expect(await outcome(MoeAllToAll.create(e, { ...cfg, numExperts: 4, immBase }))).toBe(
        `INVALID_ARGUMENT: MoeAllToAll.create: immBase must be an integer in 0..4294967291 (the instance uses immBase..immBase+3; 4294967295 is the engines' heartbeat), got ${immBase}`,
      );
    // A misspelt field is refused, not ignored for its default; so is a config that is no object.
    expect(
      await outcome(MoeAllToAll.create(e, { ...cfg, numExperts: 4, maxPrivateToken: 2 } as MoeConfig)),
    ).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: "maxPrivateToken" is not a config field (the fields: worldSize, rank, nodeSize, numExperts, topk, hidden, maxTokensPerRank, inDtype, outDtype, scales, scaleBlock, maxPrivateTokens, immBase, timeoutMs, proxy, proxySpinUs)',
    );
    expect(await outcome(MoeAllToAll.create(e, null as unknown as MoeConfig))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: config must be an object, got null',
    );
    // scales: "no" was taken (as true), and copied into the descriptor as it was.
    expect(await outcome(MoeAllToAll.create(e, { ...cfg, numExperts: 4, scales: 'no' as never }))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: scales must be a boolean, got "no"',
    );
    expect(await outcome(MoeAllToAll.create(e, { ...cfg, numExperts: 4, proxySpinUs: 2 ** 31 }))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: proxySpinUs must be at most 1000000 (1 s: the thread spins a core this long after each kick), got 2147483648',
    );
    // Device options are checked before anything is allocated (these threw TypeErrors, or took a
    // misspelt gpuDriven for a mode without it).
    const devOut = (d: unknown) => outcome(MoeAllToAll.create(e, { ...cfg, numExperts: 4 }, d as never));
    expect(await devOut({ ops: undefined, device: 0 })).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: device.ops must be device ops (cudaMoeOps() of @trellis/moe), got undefined',
    );
    expect(await devOut({ ops: {}, device: 0 })).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: device.ops must be device ops (cudaMoeOps() of @trellis/moe); these lack alloc, free, upload, download, copyRows, combine',
    );
    const basic = Object.fromEntries(
      ['alloc', 'free', 'upload', 'download', 'copyRows', 'combine'].map((f) => [f, () => {}]),
    );
    expect(await devOut({ ops: basic, device: -1 })).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: device.device must be a GPU ordinal (an integer >= 0), got -1',
    );
    expect(await devOut({ ops: basic, device: '0' })).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: device.device must be a GPU ordinal (an integer >= 0), got "0"',
    );
    expect(await devOut({ ops: basic, device: 0, gpuDirven: true })).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: "gpuDirven" is not a device option (they are ops, device, gpuDriven)',
    );
    expect(await devOut(7)).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.create: device options must be an object {ops, device, gpuDriven?}, got 7',
    );
    const m = await MoeAllToAll.create(e, { ...cfg, numExperts: 4 });
    const m1 = await MoeAllToAll.create(fabric.createEngine(), { ...cfg, rank: 1, numExperts: 4 });
    for (const x of [m, m1]) x.connect([m.descriptor, m1.descriptor]);
    const none = { tokens: new Uint8Array(0), topkIds: new Int32Array(0), topkWeights: new Float32Array(0) };
    const x = { tokens: new Uint8Array(16), topkIds: Int32Array.of(0, 9), topkWeights: new Float32Array(2) };
    expect(await outcome(m.dispatch(x))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.dispatch: expert id 9 is outside 0..3 (or -1)',
    );
    expect(await outcome(m.dispatch({ ...x, tokens: new Uint8Array(3), topkIds: Int32Array.of(0, 1) }))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.dispatch: tokens is 3 bytes; 1 tokens of 8 bf16 are 16',
    );
    // Ids of another type (a fractional one among them): refused, the instance still usable.
    const loose = (o: object) => o as unknown as typeof x;
    expect(await outcome(m.dispatch(loose({ ...x, topkIds: Float32Array.of(0, 1.5) })))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.dispatch: topkIds must be an Int32Array',
    );
    expect(
      await outcome(m.dispatch(loose({ ...x, topkIds: Int32Array.of(0, 1), topkWeights: [1, 1] }))),
    ).toBe('INVALID_ARGUMENT: MoeAllToAll.dispatch: topkWeights must be a Float32Array');
    // The phases argument: an object of booleans, or left out (null is not "left out").
    const good = { ...x, topkIds: Int32Array.of(0, 1) };
    const phases = (v: unknown) => v as { send?: boolean; recv?: boolean };
    expect(await outcome(m.dispatch(good, phases(null)))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.dispatch: phases must be an object {send?, recv?} or left out, got null',
    );
    expect(await outcome(m.dispatch(good, phases(5)))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.dispatch: phases must be an object {send?, recv?} or left out, got number',
    );
    expect(await outcome(m.dispatch(good, phases({ send: 'yes' })))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.dispatch: phases.send must be a boolean, got string',
    );
    expect(await outcome(m.dispatch(good, { send: false, recv: false }))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.dispatch: phases {send: false, recv: false} runs nothing; leave one true',
    );
    // Phases out of order: a second recv while one is pending. A phase left out runs: `{recv:
    // false}` sends only, `{send: false}` receives only.
    expect(await m.dispatch(good, { recv: false })).toBeUndefined();
    const recv0 = m.dispatch(undefined, { send: false });
    expect(await outcome(m.dispatch(undefined, { recv: true, send: false }))).toBe(
      "INVALID_ARGUMENT: MoeAllToAll.dispatch: this round's recv phase is already pending; await it",
    );
    const [d, d1] = await Promise.all([recv0, m1.dispatch(none)]);
    // combine's input and phases, checked the same way; the round still open after each refusal.
    expect(await outcome(m.combine(null as unknown as { expertOut: Uint8Array }))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.combine: input must be an object {expertOut}, got null',
    );
    const rows = d!.expertX.length / 16;
    // What was given, named: a device pointer to a host instance (it once failed the instance
    // from inside the send), another typed array, a wrong size.
    expect(await outcome(m.combine({ expertOut: 0x1000n as unknown as Uint8Array }))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.combine: expertOut must be a Uint8Array (host memory), got bigint',
    );
    expect(await outcome(m.combine({ expertOut: new Float32Array(rows * 4) as unknown as Uint8Array }))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.combine: expertOut must be a Uint8Array (host memory), got Float32Array',
    );
    expect(await outcome(m.combine({ expertOut: new Uint8Array(rows * 16 - 1) }))).toBe(
      `INVALID_ARGUMENT: MoeAllToAll.combine: expertOut is ${rows * 16 - 1} bytes; ${rows} rows of 8 bf16 are ${rows * 16}`,
    );
    const out = { expertOut: new Uint8Array(d!.expertX.length) };
    expect(await outcome(m.combine(out, phases(null)))).toBe(
      'INVALID_ARGUMENT: MoeAllToAll.combine: phases must be an object {send?, recv?, accumulate?} or left out, got null',
    );
    expect(await outcome(m.combine(out, { accumulate: 'f16' as 'fp32' }))).toBe(
      `INVALID_ARGUMENT: MoeAllToAll.combine: phases.accumulate must be 'out' or 'fp32', got "f16"`,
    );
    // combine's recv before its send; a second send (which once sent the rows twice and gave the
    // peer's next round another round's values).
    expect(await outcome(m.combine(undefined, { send: false, recv: true }))).toBe(
      "INVALID_ARGUMENT: MoeAllToAll.combine: recv without a send this round; run combine's send phase first",
    );
    expect(await outcome(m.combine(out, { send: true, recv: false }))).toBe('resolved');
    expect(await outcome(m.combine(out, { send: true, recv: false }))).toBe(
      "INVALID_ARGUMENT: MoeAllToAll.combine: this round's send phase already ran; the next phase is combine's recv ({recv: true})",
    );
    expect(await outcome(m.combine(out))).toBe(
      "INVALID_ARGUMENT: MoeAllToAll.combine: this round's send phase already ran; the next phase is combine's recv ({recv: true})",
    );
    const recvC = m.combine(undefined, { send: false, recv: true });
    expect(await outcome(m.combine(undefined, { send: false, recv: true }))).toBe(
      "INVALID_ARGUMENT: MoeAllToAll.combine: this round's recv phase is already pending; await it",
    );
    const [c0] = await Promise.all([recvC, m1.combine({ expertOut: new Uint8Array(d1!.expertX.length) })]);
    expect((c0 as Uint8Array).length).toBe(16);
    // The instance took no harm: the next round runs, with the values of the reference.
    const ins = [good, none];
    const [r0, r1] = await Promise.all([m.dispatch(good), m1.dispatch(none)]);
    const full = { ...cfg, numExperts: 4 };
    for (const [r, got] of [r0, r1].entries())
      expect(Buffer.from(got!.expertX).equals(Buffer.from(referenceDispatch(full, ins, r).expertX))).toBe(
        true,
      );
    const outs = [expertCompute(full, r0!), expertCompute(full, r1!)];
    const [g0] = await Promise.all([
      m.combine({ expertOut: outs[0]! }, { accumulate: 'fp32' }),
      m1.combine({ expertOut: outs[1]! }, { accumulate: 'fp32' }),
    ]);
    expect(asF32(full, g0!)).toEqual(referenceCombine(full, ins, outs, 0));
    // Ranks whose configs differ (here only maxPrivateTokens) are refused at connect: their overflow
    // rows would land at offsets the other rank does not read.
    const e2 = fabric.createEngine();
    const [p, q] = await Promise.all([
      MoeAllToAll.create(fabric.createEngine(), { ...cfg, numExperts: 4, maxPrivateTokens: 2 }),
      MoeAllToAll.create(e2, { ...cfg, rank: 1, numExperts: 4, maxPrivateTokens: 6 }),
    ]);
    expect(await outcome(Promise.resolve().then(() => p.connect([p.descriptor, q.descriptor])))).toBe(
      "INVALID_ARGUMENT: MoeAllToAll.connect: rank 1's config differs from this rank's (maxPrivateTokens 6 there, 2 here): every rank needs the same worldSize, nodeSize, numExperts, topk, hidden, maxTokensPerRank, inDtype, outDtype, scales, scaleBlock, maxPrivateTokens and immBase",
    );
    // Not an array; a list in another order (this rank's slot holds the peer's descriptor).
    expect(await outcome(Promise.resolve().then(() => p.connect('x' as unknown as string[])))).toBe(
      "INVALID_ARGUMENT: MoeAllToAll.connect: descriptors must be an array of every rank's moe.descriptor (index = rank), got string",
    );
    // (An engine each: two open instances on one engine may not share immediate values.)
    const q2 = await MoeAllToAll.create(fabric.createEngine(), {
      ...cfg,
      rank: 1,
      numExperts: 4,
      maxPrivateTokens: 2,
    });
    expect(await outcome(Promise.resolve().then(() => p.connect([q2.descriptor, p.descriptor])))).toBe(
      "INVALID_ARGUMENT: MoeAllToAll.connect: descriptors[0] is rank 1's descriptor (index = rank: rank r's moe.descriptor at r; a list in another order, or two processes given one rank)",
    );
    expect(
      await outcome(Promise.resolve().then(() => p.connect([p.descriptor, q.descriptor.split(' ')[0]!]))),
    ).toBe(
      "INVALID_DESCRIPTOR: MoeAllToAll.connect: descriptors[1] is not a MoeAllToAll descriptor (give each rank's moe.descriptor)",
    );
    // Cut short: not a descriptor, rather than a config that differs.
    for (const cut of [2, 5, 30])
      expect(
        await outcome(Promise.resolve().then(() => p.connect([p.descriptor, q2.descriptor.slice(0, -cut)]))),
      ).toBe(
        "INVALID_DESCRIPTOR: MoeAllToAll.connect: descriptors[1] is not a whole MoeAllToAll descriptor (cut short, or from another version): give each rank's moe.descriptor as it is",
      );
    // Two processes given one rank: the second rank-0 descriptor in rank 1's slot is refused.
    const twin = await MoeAllToAll.create(fabric.createEngine(), {
      ...cfg,
      rank: 0,
      numExperts: 4,
      maxPrivateTokens: 2,
    });
    expect(await outcome(Promise.resolve().then(() => p.connect([p.descriptor, twin.descriptor])))).toBe(
      "INVALID_ARGUMENT: MoeAllToAll.connect: descriptors[1] is rank 0's descriptor (index = rank: rank r's moe.descriptor at r; a list in another order, or two processes given one rank)",
    );
    expect(await outcome(Promise.resolve().then(() => p.connect([p.descriptor, q2.descriptor])))).toBe(
      'resolved',
    );
    await fabric.close();
  });
});

describe('routes from a peer are checked before they size anything', () => {
  it('refuses negative counts and more rows than the config allows, under 100000 fuzzed routes', async () => {
    const { checkRoutes } = await import('../src/alltoall.js');
    const cfg = {
      worldSize: 2,
      rank: 0,
      nodeSize: 1,
      numExperts: 8,
      topk: 2,
      hidden: 8,
      maxTokensPerRank: 16,
      inDtype: 'bf16',
      outDtype: 'bf16',
      scales: false,
      scaleBlock: 128,
      maxPrivateTokens: 4,
      immBase: 0,
      timeoutMs: 1000,
    } as const;
    expect(checkRoutes(Int32Array.of(4, 4, 4, 4, 4, 4, 4, 4), cfg)).toBeUndefined();
    expect(checkRoutes(Int32Array.of(4, 4, 4, 4, 4, 4, 4, 5), cfg)).toBe(
      '33 rows in all, more than maxTokensPerRank × topk = 32',
    );
    expect(checkRoutes(Int32Array.of(0, -1, 0, 0, 0, 0, 0, 0), cfg)).toBe('expert 1: -1 rows');
    const { fuzzBytes } = await import('@trellis/core/conformance');
    let accepted = 0;
    fuzzBytes(
      (b) => {
        const c = new Int32Array(8);
        new Uint8Array(c.buffer).set(b.subarray(0, 32));
        if (checkRoutes(c, cfg) === undefined) {
          accepted++;
          expect(c.every((n) => n >= 0) && c.reduce((a, n) => a + n, 0) <= 32).toBe(true);
        }
      },
      [new Uint8Array(Int32Array.of(4, 4, 4, 4, 4, 4, 4, 4).buffer), new Uint8Array(32)],
      100_000,
      41,
    );
    expect(accepted).toBeGreaterThan(0);
  });
});
