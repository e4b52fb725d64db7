// One process of `trellis demo`: a kvstream prefill server, a weightsync trainer or inference
// rank, or an MoE rank, on backend-efa. argv[2]: JSON {role, provider, ...}. stdin/stdout: JSON lines.
import { createInterface } from 'node:readline';
import { createEngine, type Provider } from '@trellis/backend-efa';
import { MrDesc } from '@trellis/core';
import { closeAndExit, followParent } from '@trellis/core/peer-process';
import { KvStreamSender } from '@trellis/kvstream';
import {
  combineAsF32,
  MoeAllToAll,
  referenceCombine,
  referenceDispatch,
  syntheticExpert,
  syntheticInputs,
} from '@trellis/moe';
import { f32ToBf16, quantizeRows, WeightSyncReceiver, WeightSyncSender } from '@trellis/weightsync';
import { DEMO_KV_LAYOUT, demoMoeConfig, demoWeightPlan, kvByte, weightValue } from './cluster-shared.js';

const cfg = JSON.parse(process.argv[2]!) as {
  role: string;
  provider: Provider;
  rank?: number;
  world?: number;
};
// Before the engine exists: a SIGTERM or SIGHUP while it is being made exits through process.exit
// too, which unlinks the shared-memory regions it has made so far.
followParent();
let parentGone = false;
let made: { close(): Promise<void> } | undefined;
// A failure: one line on stderr (the demo's parent says a process exited early, its error above),
// then the engine closed and exit 1. Not when the parent is going (Ctrl-C): the other workers'
// regions vanish first and this one's operations fail with them, a moment before its stdin ends.
process.on('uncaughtException', (e) => {
  setTimeout(() => {
    if (!parentGone)
      process.stderr.write(
        `trellis demo: the ${cfg.role} process failed: ${e instanceof Error ? e.message : String(e)}\n`,
      );
    if (made) void closeAndExit(made);
    else process.exit(1);
  }, 300);
});
const engine = await createEngine({ provider: cfg.provider, nics: 2, opTimeoutMs: 20_000 });
made = engine;
const out = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
// stdin closed: the demo's parent is gone (killed, interrupted). Close the engine (which unlinks its
// shared-memory regions) within a bound and exit rather than run on as an orphan.
process.stdin.once('end', () => {
  parentGone = true;
  void closeAndExit(engine);
});
const next = async <T>() => JSON.parse((await lines.next()).value as string) as T;

if (cfg.role === 'prefill') {
  // kvstream: bind each request the decode side announces, "compute" its layers, stream them.
  const tx = await KvStreamSender.create({ engine, layout: DEMO_KV_LAYOUT, maxTailBytes: 4096 });
  const L = tx.layout;
  let req = 0;
  let pageCursor = 0;
  tx.onRequest((r) => {
    const id = req++;
    const srcPages = Uint32Array.from({ length: L.pagesFor(r.tokens) }, () => pageCursor++ % L.pages);
    const stream = tx.bind(r.tag, { srcPages });
    void (async () => {
      const chunks = r.tokens > 1 ? [Math.ceil(r.tokens / 2), r.tokens] : [r.tokens];
      let from = 0;
      for (const end of chunks) {
        stream.chunk(end);
        for (let l = 0; l < L.layers; l++) {
          const per = L.segmentsPerLayer;
          L.layerSegments(l).forEach((s, i) => {
            for (let t = from; t < end; t++) {
              const at =
                s.offset +
                srcPages[Math.floor(t / L.tokensPerPage)]! * s.stride +
                (t % L.tokensPerPage) * s.tokenBytes;
              for (let b = 0; b < s.tokenBytes; b++)
                tx.region.buffer![at + b] = kvByte(r.tag, l * per + i, t, b);
            }
          });
          stream.progress.watcher.increment();
          await new Promise((res) => setTimeout(res, 2));
        }
        from = end;
      }
      void id;
      stream.finish(Uint8Array.from({ length: r.tailBytes }, (_, i) => kvByte(r.tag, 65535, i, 0)));
      await stream.done;
    })();
  });
  out({ addr: engine.address.toString() });
  await next<{ exit: true }>();
  await tx.close();
} else if (cfg.role === 'trainer' || cfg.role === 'inference') {
  const plan = demoWeightPlan();
  const rank = cfg.rank!;
  if (cfg.role === 'inference') {
    const rx = await WeightSyncReceiver.create({ engine, plan, rank });
    out({ descs: rx.descriptors().map((d) => d.toString()) });
    await next<{ go: true }>();
    const t0 = performance.now();
    await rx.expect({ step: 1, version: 1, timeoutMs: 60_000 });
    const syncMs = performance.now() - t0;
    // Check every byte against what the layouts say this rank holds.
    const buf = rx.weights().bytes;
    let bad = 0;
    for (const p of plan.inferencePieces[rank]!) {
      const t = plan.inference.tensors[p.tensor]!;
      const mt = plan.model.findIndex((m) => m.name === t.parts![p.part]);
      const rows = p.box.r1 - p.box.r0;
      const w = p.box.c1 - p.box.c0;
      const src = new Uint16Array(rows * w);
      for (let r = 0; r < rows; r++)
        for (let c = 0; c < w; c++) src[r * w + c] = f32ToBf16(weightValue(mt, p.box.r0 + r, p.box.c0 + c));
      if (t.dtype === 'fp8e4m3') {
        const q = new Uint8Array(rows * w);
        const scales = new Float32Array(rows * (w / t.quantBlock!));
        quantizeRows(src, 0, w, rows, w, t.quantBlock!, q, scales);
        for (let i = 0; i < q.length; i++) if (buf[p.offset + i] !== q[i]) bad++;
        const sb = new Uint8Array(scales.buffer);
        for (let i = 0; i < sb.length; i++) if (buf[p.scaleOffset! + i] !== sb[i]) bad++;
      } else {
        const sb = new Uint8Array(src.buffer);
        for (let i = 0; i < sb.length; i++) if (buf[p.offset + i] !== sb[i]) bad++;
      }
    }
    out({ syncMs, bytes: plan.inferenceBytes[rank], bad });
    await next<{ exit: true }>();
    await rx.close();
  } else {
    const source = new Uint8Array(plan.trainerBytes[rank]!);
    const dv = new DataView(source.buffer);
    for (const p of plan.trainerPieces[rank]!) {
      const w = p.box.c1 - p.box.c0;
      for (let r = p.box.r0; r < p.box.r1; r++)
        for (let c = p.box.c0; c < p.box.c1; c++)
          dv.setUint16(
            p.offset + ((r - p.box.r0) * w + (c - p.box.c0)) * 2,
            f32ToBf16(weightValue(p.tensor, r, c)),
            true,
          );
    }
    out({ ready: true });
    const { targets } = await next<{ targets: string[][] }>();
    const tx = await WeightSyncSender.create({
      engine,
      plan,
      rank,
      source,
      targets: targets.map((t) => [MrDesc.parse(t[0]!), MrDesc.parse(t[1]!)] as const),
      stagingBytes: 8 << 20,
    });
    out({ connected: true });
    await next<{ go: true }>();
    const r = await tx.sync({ step: 1, version: 1, timeoutMs: 60_000 });
    out({ synced: r.bytes });
    await next<{ exit: true }>();
    await tx.close();
  }
} else if (cfg.role === 'moe') {
  const mcfg = { ...demoMoeConfig(cfg.world!), rank: cfg.rank! };
  // The native proxy thread posts every write of the round through an engine port.
  const moe = await MoeAllToAll.create(engine, { ...mcfg, proxy: true });
  out({ descriptor: moe.descriptor });
  const { descriptors } = await next<{ descriptors: string[] }>();
  moe.connect(descriptors);
  const all = syntheticInputs(mcfg, 2026, 'random');
  const res = (await moe.dispatch(all[mcfg.rank]))!;
  const want = referenceDispatch(mcfg, all, mcfg.rank);
  const dispatchOk = Buffer.from(res.expertX).equals(Buffer.from(want.expertX));
  const outs = all.map((_, d) => syntheticExpert(mcfg, referenceDispatch(mcfg, all, d)));
  const got = combineAsF32(
    mcfg,
    (await moe.combine({ expertOut: syntheticExpert(mcfg, res) }, { accumulate: 'fp32' }))!,
  );
  const ref = referenceCombine(mcfg, all, outs, mcfg.rank);
  const port = moe.stats().proxy!;
  const combineOk =
    got.length === ref.length &&
    got.every((v, i) => Object.is(v, ref[i])) &&
    port.failed === 0 &&
    port.settled === port.posted;
  out({
    dispatchOk,
    combineOk,
    rows: res.expertX.length / mcfg.hidden / 2,
    tokens: all[mcfg.rank]!.topkIds.length / mcfg.topk,
  });
  await next<{ exit: true }>();
  await moe.close();
}
await engine.close();
process.exit(0);
