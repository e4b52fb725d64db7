// Weight sync over the loopback fabric in random delivery order: every byte of every step.
import { createLoopbackFabric, type LoopbackFabric, type TransferEngine } from '@trellis/core';
import { outcome } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import {
  planWeightSync,
  range,
  shard,
  type WeightSyncPlan,
  WeightSyncReceiver,
  WeightSyncSender,
  whole,
} from '../src/index.js';
import { diffWeights, expectedInference, Rng, randomSetup, trainerSources } from './helpers.js';

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function cluster(
  plan: WeightSyncPlan,
  opts: { nics?: number; seed?: number; stagingBytes?: number } = {},
) {
  const fabric: LoopbackFabric = createLoopbackFabric({ nics: opts.nics ?? 1, seed: opts.seed ?? 1 });
  const tEng: TransferEngine[] = range(plan.trainer.ranks).map(() => fabric.createEngine());
  const iEng: TransferEngine[] = range(plan.inference.ranks).map(() => fabric.createEngine());
  const rxs = await Promise.all(
    iEng.map((engine, rank) => WeightSyncReceiver.create({ engine, plan, rank })),
  );
  const sources = trainerSources(plan);
  const targets = rxs.map((r) => r.descriptors());
  const txs = await Promise.all(
    tEng.map((engine, rank) =>
      WeightSyncSender.create({
        engine,
        plan,
        rank,
        source: sources[rank]!,
        targets,
        stagingBytes: opts.stagingBytes ?? 4096,
      }),
    ),
  );
  cleanup.push(() => fabric.close());
  return { fabric, tEng, iEng, rxs, txs, sources };
}

describe('weight sync over the loopback fabric (random delivery order)', () => {
  for (const [m, k] of [
    [4, 2],
    [3, 5],
  ] as const) {
    it(`${m} trainers → ${k} inference ranks, random shardings with fused and fp8 tensors: every byte verified`, async () => {
      for (let trial = 0; trial < 4; trial++) {
        const rng = new Rng(1000 * m + trial);
        const { model, trainer, inference } = randomSetup(rng, m, k);
        const plan = planWeightSync(model, trainer, inference, { senderNics: 2, maxOpBytes: 512 });
        const { rxs, txs } = await cluster(plan, { nics: 2, seed: trial + 1 });
        const want = expectedInference(plan);
        const done = rxs.map((r) => r.expect({ step: 1, version: 1, timeoutMs: 20_000 }));
        const reports = await Promise.all(txs.map((t) => t.sync({ step: 1, version: 1 })));
        await Promise.all(done);
        for (const [d, r] of rxs.entries()) {
          expect(r.version).toBe(1);
          expect(diffWeights(plan, d, r.weights().bytes, want[d]!)).toBe('ok');
        }
        expect(reports.reduce((n, r) => n + r.bytes, 0)).toBe(plan.ops.reduce((n, o) => n + o.bytes, 0));
        for (const c of cleanup.splice(0).reverse()) await c();
      }
    });
  }

  it('the served version switches only when the step is complete; staging is bounded; progress reaches the total', async () => {
    const model = range(6).map((i) => ({ name: `w${i}`, shape: [64, 64], dtype: 'bf16' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 2, placements: Object.fromEntries(model.map((t) => [t.name, shard('rows', range(2))])) },
      {
        ranks: 2,
        tensors: model.map((t, i) => ({
          name: t.name,
          placement: shard('cols', range(2)),
          ...(i % 2 ? { dtype: 'fp8e4m3' as const, quantBlock: 32 } : {}),
        })),
      },
      { maxOpBytes: 1024 },
    );
    const { rxs, txs, fabric } = await cluster(plan, { stagingBytes: 2048 });
    fabric.faults.setDelay([0, 2]);
    const want = expectedInference(plan);
    const before = rxs[0]!.weights();
    expect(before.version).toBe(0);
    const progress: number[] = [];
    const wait = Promise.all(rxs.map((r) => r.expect({ step: 7, version: 1, timeoutMs: 20_000 })));
    const reports = await Promise.all(
      txs.map((t, i) =>
        t.sync({ step: 7, version: 1, onProgress: i === 0 ? (p) => progress.push(p.bytesDone) : undefined }),
      ),
    );
    await wait;
    expect(progress[progress.length - 1]).toBe(txs[0]!.bytesPerStep);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
    for (const [d, r] of rxs.entries()) expect(diffWeights(plan, d, r.weights().bytes, want[d]!)).toBe('ok');
    for (const r of reports) {
      expect(r.writes).toBeGreaterThan(0);
      expect(Object.keys(r.ms)).toEqual(['total', 'copy', 'transform', 'rdma', 'barrier']);
    }
    // Views by tensor name: fp8 data with its scales.
    const v = rxs[1]!.tensor('w1');
    expect(v.map((x) => [x.part, x.box, x.data.length, x.scales?.length])).toEqual([
      ['w1', { r0: 0, r1: 64, c0: 32, c1: 64 }, 2048, 64],
    ]);
    // Version 2 goes into the other buffer; version 1 stays served until it completes.
    expect(rxs[0]!.weights().bytes).not.toBe(rxs[0]!.buffers[0].buffer);
    const wait2 = Promise.all(rxs.map((r) => r.expect({ step: 8, version: 2, timeoutMs: 20_000 })));
    await Promise.all(txs.map((t) => t.sync({ step: 8, version: 2 })));
    await wait2;
    expect(rxs[0]!.version).toBe(2);
    expect(rxs[0]!.weights().bytes).toBe(rxs[0]!.buffers[0].buffer);
  });

  it('bad input to create, sync and expect is refused before anything is written; a bad sync leaves the sender usable; close settles pending expects CLOSED', async () => {
    const model = [{ name: 'w', shape: [32, 64], dtype: 'bf16' as const }];
    const plan = planWeightSync(
      model,
      { ranks: 1, placements: { w: whole(0) } },
      { ranks: 1, tensors: [{ name: 'w', placement: whole(0) }] },
    );
    const { rxs, txs, tEng, iEng, sources, fabric } = await cluster(plan);
    const [rx, tx] = [rxs[0]!, txs[0]!];
    const loose = (f: unknown) => f as (o: unknown) => Promise<unknown>;
    const rxCreate = loose(WeightSyncReceiver.create);
    const txCreate = loose(WeightSyncSender.create);
    const engine = iEng[0]!;
    const ok = { engine, plan, rank: 0 };
    const cases: Array<[Promise<unknown>, string]> = [
      [
        rxCreate(undefined),
        'INVALID_ARGUMENT: WeightSyncReceiver: pass an options object {engine, plan, rank, ...}',
      ],
      [
        txCreate(null),
        'INVALID_ARGUMENT: WeightSyncSender: pass an options object {engine, plan, rank, ...}',
      ],
      [
        rxCreate({ ...ok, engine: {} }),
        'INVALID_ARGUMENT: WeightSyncReceiver: engine must be a TransferEngine (createEngine())',
      ],
      [
        rxCreate({ ...ok, plan: JSON.stringify(plan) }),
        'INVALID_ARGUMENT: WeightSyncReceiver: plan must be a WeightSyncPlan (planWeightSync(), or parsePlan() of its JSON text)',
      ],
      [
        // An edited copy: re-derived from its layouts, and refused before any buffer is sized.
        rxCreate({ ...ok, plan: { ...plan, inferenceBytes: [64] } }),
        'INVALID_ARGUMENT: WeightSyncReceiver: plan is not one planWeightSync() or parsePlan() made (the plan is malformed: the schedule does not match its layouts (edited or corrupted); re-plan with planWeightSync)',
      ],
      [rxCreate({ ...ok, rank: 1 }), 'INVALID_ARGUMENT: WeightSyncReceiver: rank must be 0..0, got 1'],
      [
        rxCreate({ ...ok, targets: [] }),
        'INVALID_ARGUMENT: WeightSyncReceiver: "targets" is not an option (they are engine, plan, rank, immBase, buffers)',
      ],
      [
        txCreate({ ...ok, buffer: null }),
        'INVALID_ARGUMENT: WeightSyncSender: "buffer" is not an option (they are engine, plan, rank, source, device, targets, stagingBytes, immBase)',
      ],
      [
        rxCreate({ ...ok, immBase: 2 ** 32 - 1 }),
        'INVALID_ARGUMENT: WeightSyncReceiver: immBase must be an integer in 0..4294901760 (steps use immBase to immBase + 65535), got 4294967295',
      ],
      [
        txCreate({ ...ok, engine: tEng[0], source: sources[0], targets: [rx.descriptors()], immBase: -5 }),
        'INVALID_ARGUMENT: WeightSyncSender: immBase must be an integer in 0..4294901760 (steps use immBase to immBase + 65535), got -5',
      ],
    ];
    // Buffers of another engine, or one region twice: refused (trainers' bytes would go where this
    // receiver never looks, or over the served version).
    const other = fabric.createEngine();
    const size = plan.inferenceBytes[0]!;
    const [x, y] = [
      await other.registerMemory(size, { remote: true }),
      await engine.registerMemory(size, { remote: true }),
    ];
    cases.push(
      [
        rxCreate({ ...ok, buffers: [x, y] }),
        `INVALID_DESCRIPTOR: WeightSyncReceiver: buffers[0] is registered on another engine (${other.address}); register both on this receiver's engine (${engine.address})`,
      ],
      [
        rxCreate({ ...ok, buffers: [y, y] }),
        'INVALID_ARGUMENT: WeightSyncReceiver: buffers must be two distinct regions (version v is written into buffers[v % 2] while the other is served)',
      ],
    );
    for (const [p, want] of cases) expect(await outcome(p)).toBe(want);
    // Plans are frozen; an unedited copy (structuredClone, JSON round trip) is taken.
    expect(Object.isFrozen(plan.inferencePieces[0]![0])).toBe(true);
    expect(() => {
      (plan.inferenceBytes as number[])[0] = 64;
    }).toThrow(TypeError);
    const copied = (await rxCreate({ ...ok, plan: structuredClone(plan) })) as WeightSyncReceiver;
    expect(copied.version).toBe(0);
    await copied.close();

    // sync: each bad field refused before a byte moves, and the sender is not left busy.
    const sync = loose(tx.sync.bind(tx));
    const bad: Array<[unknown, string]> = [
      [undefined, 'WeightSyncSender.sync: pass {step, version, timeoutMs?, signal?, onProgress?}'],
      [{ step: -1, version: 1 }, 'WeightSyncSender.sync: step must be a non-negative integer, got -1'],
      [{ step: 1, version: 0 }, 'WeightSyncSender.sync: version must be an integer >= 1, got 0'],
      [
        { step: 1, version: 1, timeoutMs: -1 },
        'WeightSyncSender.sync: timeoutMs must be an integer from 1 to 2^31 - 1, got -1',
      ],
      [{ step: 1, version: 1, signal: 'x' }, 'WeightSyncSender.sync: signal must be an AbortSignal'],
      [{ step: 1, version: 1, onProgress: 5 }, 'WeightSyncSender.sync: onProgress must be a function'],
      [
        { step: 1, version: 1, timeout: 5 },
        'WeightSyncSender.sync: "timeout" is not a field (pass {step, version, timeoutMs?, signal?, onProgress?})',
      ],
    ];
    for (const [req, want] of bad) expect(await outcome(sync(req))).toBe(`INVALID_ARGUMENT: ${want}`);
    const expectLoose = loose(rx.expect.bind(rx));
    expect(await outcome(expectLoose({ step: 1, version: 1, timeoutMs: 0 }))).toBe(
      'INVALID_ARGUMENT: WeightSyncReceiver.expect: timeoutMs must be an integer from 1 to 2^31 - 1, got 0',
    );
    expect(await outcome(expectLoose({ step: 1, version: 1, signal: {} }))).toBe(
      'INVALID_ARGUMENT: WeightSyncReceiver.expect: signal must be an AbortSignal',
    );
    expect(tEng[0]!.stats().ops.submitted).toBe(0);
    expect(rx.buffers[1].buffer!.every((b) => b === 0)).toBe(true);
    // The sender still runs a step, every byte verified.
    const want = expectedInference(plan);
    const got = rx.expect({ step: 1, version: 1, timeoutMs: 20_000 });
    await tx.sync({ step: 1, version: 1 });
    await got;
    expect(diffWeights(plan, 0, rx.weights().bytes, want[0]!)).toBe('ok');

    // close: a pending expect rejects CLOSED at once, and so does a later one; a closed sender too.
    const pending = rx.expect({ step: 2, version: 2 });
    await rx.close();
    expect(await outcome(pending)).toBe(
      'CLOSED: weight sync step 2 (version 2) on inference rank 0: the receiver was closed',
    );
    expect(await outcome(rx.expect({ step: 3, version: 2 }))).toBe(
      'CLOSED: WeightSyncReceiver.expect: the receiver is closed',
    );
    await tx.close();
    expect(await outcome(tx.sync({ step: 2, version: 2 }))).toBe(
      'CLOSED: WeightSyncSender.sync: the sender is closed',
    );
  });

  it('a step past its sync deadline rejects TIMEOUT (not the ABORTED of the writes it cut off); the served version stays', async () => {
    const model = range(6).map((i) => ({ name: `w${i}`, shape: [64, 64], dtype: 'bf16' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 1, placements: Object.fromEntries(model.map((t) => [t.name, whole(0)])) },
      { ranks: 1, tensors: model.map((t) => ({ name: t.name, placement: whole(0) })) },
      { maxOpBytes: 1024 },
    );
    // Two staging slots and writes that take 2 s each: the step waits for a slot past its deadline.
    const { rxs, txs, fabric } = await cluster(plan, { stagingBytes: 2048 });
    fabric.faults.setDelay([2000, 2000]);
    const r = await txs[0]!.sync({ step: 1, version: 1, timeoutMs: 300 }).then(
      () => 'ok',
      (e: { code: string; message: string }) => `${e.code}: ${e.message}`,
    );
    expect(r).toMatch(/^TIMEOUT: weight sync step 1 on trainer rank 0: /);
    expect(rxs[0]!.version).toBe(0);
  });

  it('a trainer killed mid-sync: the step fails on every inference rank, which keeps serving the previous version', async () => {
    const model = range(4).map((i) => ({ name: `w${i}`, shape: [128, 64], dtype: 'bf16' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 3, placements: Object.fromEntries(model.map((t) => [t.name, shard('rows', range(3))])) },
      { ranks: 2, tensors: model.map((t) => ({ name: t.name, placement: whole(0, 1) })) },
      { maxOpBytes: 512 },
    );
    const { rxs, txs, tEng, fabric, sources } = await cluster(plan, { stagingBytes: 1024 });
    // Version 1 completes.
    const w1 = Promise.all(rxs.map((r) => r.expect({ step: 1, version: 1, timeoutMs: 20_000 })));
    await Promise.all(txs.map((t) => t.sync({ step: 1, version: 1 })));
    await w1;
    const served = rxs.map((r) => Uint8Array.from(r.weights().bytes));
    // Version 2: new weights on every trainer; trainer 1 dies after its first writes.
    for (const s of sources) for (let i = 0; i < s.length; i++) s[i] = s[i]! ^ 0xff;
    const w2 = rxs.map((r) => outcome(r.expect({ step: 2, version: 2, timeoutMs: 300 })));
    const s2 = txs.map((t, i) =>
      outcome(
        t.sync({
          step: 2,
          version: 2,
          onProgress: i === 1 ? (p) => p.bytesDone > 0 && fabric.faults.killPeer(tEng[1]!) : undefined,
        }),
      ),
    );
    const results = await Promise.all(w2);
    for (const [d, o] of results.entries())
      expect(o).toBe(
        `TIMEOUT: weight sync step 2 (version 2) failed on inference rank ${d}; still serving version 1: immCounter(${0x57530002}).wait(3): timed out after 300 ms with 2 of 3 credits available`,
      );
    const senders = await Promise.all(s2);
    expect(senders[1]).toMatch(/^CLOSED: weight sync step 2 on trainer rank 1: /);
    expect([senders[0], senders[2]]).toEqual(['resolved', 'resolved']);
    for (const [d, r] of rxs.entries()) {
      expect(r.version).toBe(1);
      expect(r.weights().bytes).toEqual(served[d]);
    }
  });

  it('barriers of a failed step never count toward the later step that shares its immediate (step + 65536)', async () => {
    const model = range(2).map((i) => ({ name: `w${i}`, shape: [64, 64], dtype: 'bf16' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 2, placements: Object.fromEntries(model.map((t) => [t.name, shard('rows', range(2))])) },
      { ranks: 1, tensors: model.map((t) => ({ name: t.name, placement: whole(0) })) },
      { maxOpBytes: 512 },
    );
    const { rxs, txs, tEng } = await cluster(plan, { stagingBytes: 1024 });
    const rx = rxs[0]!;
    const w1 = rx.expect({ step: 1, version: 1, timeoutMs: 20_000 });
    await Promise.all(txs.map((t) => t.sync({ step: 1, version: 1 })));
    await w1;
    const v1 = Uint8Array.from(rx.weights().bytes);
    const aborted = AbortSignal.abort();
    // Step 2: trainer 0 is aborted before it writes anything; trainer 1's barrier arrives.
    const w2 = outcome(rx.expect({ step: 2, version: 2, timeoutMs: 300 }));
    expect(await outcome(txs[0]!.sync({ step: 2, version: 2, signal: aborted }))).toMatch(/^ABORTED: /);
    await txs[1]!.sync({ step: 2, version: 2 });
    expect(await w2).toMatch(
      /^TIMEOUT: weight sync step 2 \(version 2\) failed on inference rank 0; still serving version 1: .*with 1 of 2 credits available$/,
    );
    // Step 65538 shares step 2's immediate. Again only trainer 1 syncs: its one barrier must not
    // complete the step with the one left over from step 2.
    const w3 = outcome(rx.expect({ step: 65538, version: 2, timeoutMs: 300 }));
    expect(await outcome(txs[0]!.sync({ step: 65538, version: 2, signal: aborted }))).toMatch(/^ABORTED: /);
    await txs[1]!.sync({ step: 65538, version: 2 });
    expect(await w3).toMatch(
      /^TIMEOUT: weight sync step 65538 \(version 2\) failed on inference rank 0; still serving version 1: .*with 1 of 2 credits available$/,
    );
    expect(rx.version).toBe(1);
    expect(rx.weights().bytes).toEqual(v1);
    // A step that shares neither, with both trainers: version 2, every byte.
    const w4 = rx.expect({ step: 3, version: 2, timeoutMs: 20_000 });
    await Promise.all(txs.map((t) => t.sync({ step: 3, version: 2 })));
    await w4;
    expect(rx.version).toBe(2);
    expect(diffWeights(plan, 0, rx.weights().bytes, expectedInference(plan)[0]!)).toBe('ok');
    // A trainer that synced version 2 writes 3 next (or 2 again): version 4 would land in
    // buffers[0], the one the ranks serve, so it is refused before anything is written.
    const writes = tEng[0]!.stats().ops.submitted;
    expect(await outcome(txs[0]!.sync({ step: 4, version: 4 }))).toBe(
      'INVALID_ARGUMENT: WeightSyncSender.sync: the inference ranks serve version 2 as far as this trainer knows; version 4 would be written into buffers[0], which they may be serving — sync version 3 next (or the served version again, retrying the step that switched them)',
    );
    expect(tEng[0]!.stats().ops.submitted).toBe(writes);
    expect(rx.weights().bytes[0]).toBe(expectedInference(plan)[0]![0]);
  });

  it("an inference rank replaced after it died rejoins at the group's next version: trainers replaceTarget, every byte lands", async () => {
    const model = range(4).map((i) => ({ name: `w${i}`, shape: [128, 64], dtype: 'bf16' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 2, placements: Object.fromEntries(model.map((t) => [t.name, shard('rows', range(2))])) },
      { ranks: 2, tensors: model.map((t) => ({ name: t.name, placement: shard('cols', range(2)) })) },
      { maxOpBytes: 512 },
    );
    const { rxs, txs, iEng, tEng, sources, fabric } = await cluster(plan, { stagingBytes: 1024 });
    const want = expectedInference(plan);
    // One rank's buffers listed for two ranks: refused before anything is registered.
    await expect(
      WeightSyncSender.create({
        engine: tEng[0]!,
        plan,
        rank: 0,
        source: sources[0]!,
        targets: [rxs[0]!.descriptors(), rxs[0]!.descriptors()],
      }),
    ).rejects.toThrow(
      "WeightSyncSender: targets[1] and targets[0] list the same buffers; targets[r] must be inference rank r's own (its receiver's descriptors())",
    );
    for (const v of [1, 2]) {
      const w = Promise.all(rxs.map((r) => r.expect({ step: v, version: v, timeoutMs: 20_000 })));
      await Promise.all(txs.map((t) => t.sync({ step: v, version: v })));
      await w;
    }
    // Inference rank 1 dies; a new process (engine, receiver) takes its place, serving nothing.
    fabric.faults.killPeer(iEng[1]!);
    const engine = fabric.createEngine();
    const fresh = await WeightSyncReceiver.create({ engine, plan, rank: 1 });
    expect(fresh.version).toBe(0);
    // Bad input, refused before anything changes.
    expect(() => txs[0]!.replaceTarget(2, fresh.descriptors())).toThrow(
      'WeightSyncSender.replaceTarget: rank must be 0..1, got 2',
    );
    expect(() => txs[0]!.replaceTarget(1, [fresh.descriptors()[0]] as never)).toThrow(
      "WeightSyncSender.replaceTarget: inference rank 1's target must be its two buffer descriptors (WeightSyncReceiver.descriptors())",
    );
    expect(() => txs[0]!.replaceTarget(1, [fresh.descriptors()[0], rxs[0]!.descriptors()[1]])).toThrow(
      "WeightSyncSender.replaceTarget: inference rank 1's two buffers belong to different engines",
    );
    expect(() => txs[0]!.replaceTarget(1, [fresh.descriptors()[0], fresh.descriptors()[0]])).toThrow(
      "WeightSyncSender.replaceTarget: inference rank 1's two buffers are the same region",
    );
    const local0 = await engine.registerMemory(plan.inferenceBytes[1]!);
    const local1 = await engine.registerMemory(plan.inferenceBytes[1]!);
    expect(() => txs[0]!.replaceTarget(1, [local0.desc, local1.desc])).toThrow(
      "WeightSyncSender.replaceTarget: inference rank 1's buffers must be registered with {remote: true}",
    );
    await expect(fresh.expect(null as never)).rejects.toThrow(
      'WeightSyncReceiver.expect: pass {step, version, timeoutMs?, signal?}',
    );
    const small = await engine.registerMemory(64, { remote: true });
    const small2 = await engine.registerMemory(64, { remote: true });
    expect(() => txs[0]!.replaceTarget(1, [small.desc, small2.desc])).toThrow(
      `WeightSyncSender.replaceTarget: inference rank 1's buffer is 64 bytes; the plan needs ${plan.inferenceBytes[1]}`,
    );
    // Another rank's buffers (the same size) would take this rank's writes over that rank's weights.
    expect(() => txs[0]!.replaceTarget(1, rxs[0]!.descriptors())).toThrow(
      "WeightSyncSender.replaceTarget: those are inference rank 0's buffers; give rank 1's own (its receiver's descriptors())",
    );
    // Not while a step runs.
    const running = txs[0]!.sync({ step: 9, version: 3, timeoutMs: 5000 });
    expect(() => txs[0]!.replaceTarget(1, fresh.descriptors())).toThrow(
      'WeightSyncSender.replaceTarget: a step is running on this rank; replace targets between steps',
    );
    expect(await outcome(running)).toMatch(/^(PEER_LOST|CLOSED): weight sync step 9 on trainer rank 0: /);
    await txs[1]!.sync({ step: 9, version: 3, timeoutMs: 5000 }).catch(() => {});
    // Between steps: every trainer takes the new rank's buffers; the group writes version 3.
    for (const t of txs) t.replaceTarget(1, fresh.descriptors());
    const w3 = [rxs[0]!, fresh].map((r) => r.expect({ step: 3, version: 3, timeoutMs: 20_000 }));
    await Promise.all(txs.map((t) => t.sync({ step: 3, version: 3 })));
    await Promise.all(w3);
    expect(rxs[0]!.version).toBe(3);
    expect(fresh.version).toBe(3);
    expect(diffWeights(plan, 0, rxs[0]!.weights().bytes, want[0]!)).toBe('ok');
    expect(diffWeights(plan, 1, fresh.weights().bytes, want[1]!)).toBe('ok');
    // From then on the new rank follows the group one version at a time.
    await expect(fresh.expect({ step: 5, version: 5 })).rejects.toThrow(
      'WeightSyncReceiver.expect: this rank serves version 3; the next step must write version 4 (or 3 again, retrying the step that switched it), got 5',
    );
    const w4 = [rxs[0]!, fresh].map((r) => r.expect({ step: 4, version: 4, timeoutMs: 20_000 }));
    await Promise.all(txs.map((t) => t.sync({ step: 4, version: 4 })));
    await Promise.all(w4);
    expect(diffWeights(plan, 1, fresh.weights().bytes, want[1]!)).toBe('ok');
    // A retry of the version a rank serves already (a failed step whose barrier had reached it
    // before another rank died) is taken: the same bytes land in the served buffer again, and
    // the rank keeps serving that version, every byte still right.
    const retry = [rxs[0]!, fresh].map((r) => r.expect({ step: 6, version: 4, timeoutMs: 20_000 }));
    await Promise.all(txs.map((t) => t.sync({ step: 6, version: 4 })));
    await Promise.all(retry);
    expect([rxs[0]!.version, fresh.version]).toEqual([4, 4]);
    expect(diffWeights(plan, 0, rxs[0]!.weights().bytes, want[0]!)).toBe('ok');
    expect(diffWeights(plan, 1, fresh.weights().bytes, want[1]!)).toBe('ok');
    await expect(fresh.expect({ step: 7, version: 3 })).rejects.toThrow(
      'WeightSyncReceiver.expect: this rank serves version 4; the next step must write version 5 (or 4 again, retrying the step that switched it), got 3',
    );
  });
});
