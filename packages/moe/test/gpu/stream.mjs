// GPU: MoeStream — dispatch and combine queued on CUDA streams with routing in device memory, and
// captured in CUDA graphs. Ranks are MoeStream instances of this process (rank r on GPU r % GPUs:
// with one GPU every rank shares it, each on its own stream) and, last, two processes through CUDA
// IPC. Every round is checked against the CPU reference (referenceDispatch / referenceCombine from
// every rank's inputs): expertX and scales byte for byte, tokensPerExpert and expertOffsets value
// for value, combine outputs bit for bit. Checks, in order:
//   eager   — 3 rounds per config, phases split (send, recv) on each rank's stream, no host sync
//             between phases or ranks;
//   graph   — each rank's whole step (dispatch-send, dispatch-recv, combine-send, combine-recv)
//             captured once in a CUDA graph, replayed 100 times with new routing, tokens, scales,
//             weights and expert outputs written into the captured buffers before each replay;
//   faults  — bad input refused before anything is queued (numTokens, a short buffer, phase order,
//             a stream that is not one); a top-k id out of range reported by the kernel (that slot
//             dropped, the rest equal to the reference, the next round unaffected); a rank that
//             never arrives: the waiting rank's stream drains by its deadline, check() throws
//             TIMEOUT naming the rank, and so does every later call;
//   ipc     — two processes, 20 graph replays each, checked the same way.
// Prints one JSON line; exits non-zero when any byte, count or error differs.
import { fileURLToPath } from 'node:url';
import { CudaGraph, CudaStream, cudaInfo } from '@trellis/cuda';
import {
  cudaMoeOps,
  MoeStream,
  referenceCombine,
  referenceDispatch,
  syntheticExpert,
  syntheticInputs,
} from '../../dist/index.js';
import { toBf16 } from './bf16.mjs';
import { childWorld, parentWorld } from './world.mjs';

const ops = cudaMoeOps();
const gpus = cudaInfo().devices.length;
const devOf = (r) => (gpus > 1 ? r % gpus : 0);
const REPLAYS = Number(process.env.TRELLIS_REPLAYS ?? 100);

const CONFIGS = [
  {
    name: 'fp8+scales→bf16',
    numExperts: 32,
    topk: 8,
    hidden: 2048,
    maxTokensPerRank: 64,
    inDtype: 'fp8',
    outDtype: 'bf16',
    scales: true,
  },
  {
    name: 'bf16→fp32',
    numExperts: 16,
    topk: 4,
    hidden: 1024,
    maxTokensPerRank: 48,
    inDtype: 'bf16',
    outDtype: 'fp32',
  },
];

const elem = { fp8: 1, bf16: 2, fp32: 4 };
const bytesOf = (a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/**
 * Every rank's inputs for one round, padded to maxTokensPerRank tokens (a captured graph has one
 * shape): padding tokens route nowhere (ids -1). `bad` puts an id out of range at rank 0's slot 3.
 */
function roundInputs(cfg, seed, routing) {
  const ins = syntheticInputs(cfg, seed, routing);
  const T = cfg.maxTokensPerRank;
  const sc = cfg.scales ? cfg.hidden / 128 : 0;
  return ins.map((x) => {
    const n = x.topkIds.length / cfg.topk;
    const tokens = new Uint8Array(T * cfg.hidden * elem[cfg.inDtype]);
    tokens.set(x.tokens);
    const scales = sc ? new Float32Array(T * sc).fill(1) : undefined;
    scales?.set(x.scales);
    const topkIds = new Int32Array(T * cfg.topk).fill(-1);
    topkIds.set(x.topkIds);
    const topkWeights = new Float32Array(T * cfg.topk);
    topkWeights.set(x.topkWeights);
    return { tokens, scales, topkIds, topkWeights, n };
  });
}

/** One rank: its instance, stream, and the device buffers a step reads (rewritten between replays). */
function makeRank(cfg, r, timeoutMs) {
  const device = devOf(r);
  const moe = MoeStream.create({ ...cfg, rank: r, timeoutMs }, { ops, device });
  const T = cfg.maxTokensPerRank;
  const a = (n) => ops.alloc(device, Math.max(64, n));
  const rowsCap = cfg.worldSize * T * cfg.topk;
  const b = {
    tokens: a(T * cfg.hidden * elem[cfg.inDtype]),
    scales: cfg.scales ? a(T * (cfg.hidden / 128) * 4) : undefined,
    ids: a(T * cfg.topk * 4),
    weights: a(T * cfg.topk * 4),
    expertOut: a(rowsCap * cfg.hidden * elem[cfg.outDtype]),
    out: a(T * cfg.hidden * elem[cfg.outDtype]),
  };
  return { r, device, moe, stream: CudaStream.create({ device }), b };
}

function upload(k, x, expertOut) {
  ops.upload(k.device, k.b.tokens, x.tokens);
  if (x.scales) ops.upload(k.device, k.b.scales, bytesOf(x.scales));
  ops.upload(k.device, k.b.ids, bytesOf(x.topkIds));
  ops.upload(k.device, k.b.weights, bytesOf(x.topkWeights));
  if (expertOut?.length) ops.upload(k.device, k.b.expertOut, expertOut);
}

const input = (cfg, k) => ({
  numTokens: cfg.maxTokensPerRank,
  tokens: k.b.tokens,
  scales: k.b.scales,
  topkIds: k.b.ids,
  topkWeights: k.b.weights,
});

/** The reference of one round at every rank: dispatch results and, from synthetic experts, combine outputs. */
function reference(cfg, ins) {
  const c0 = { ...cfg, rank: 0 };
  const want = ins.map((_, q) => referenceDispatch(c0, ins, q));
  const outs = want.map((w) => syntheticExpert(c0, w));
  return { want, outs, combined: ins.map((_, q) => referenceCombine(c0, ins, outs, q)) };
}

/** Bytes, counts and outputs of rank k's round that differ from the reference. */
function compare(cfg, k, d, ref) {
  const w = ref.want[k.r];
  const L = cfg.numExperts / cfg.worldSize;
  const bad = { x: 0, scales: 0, counts: 0, out: 0 };
  const tpe = new Int32Array(L);
  const off = new Int32Array(L);
  ops.download(k.device, bytesOf(tpe), d.tokensPerExpert);
  ops.download(k.device, bytesOf(off), d.expertOffsets);
  for (let j = 0; j < L; j++) {
    if (tpe[j] !== w.tokensPerExpert[j]) bad.counts++;
    if (off[j] !== w.expertOffsets[j]) bad.counts++;
  }
  const gx = new Uint8Array(w.expertX.length);
  if (gx.length) ops.download(k.device, gx, d.expertX);
  for (let i = 0; i < gx.length; i++) if (gx[i] !== w.expertX[i]) bad.x++;
  if (cfg.scales && w.expertScales.length) {
    const gs = new Uint8Array(w.expertScales.byteLength);
    ops.download(k.device, gs, d.expertScales);
    const ws = bytesOf(w.expertScales);
    for (let i = 0; i < gs.length; i++) if (gs[i] !== ws[i]) bad.scales++;
  }
  const ref32 = ref.combined[k.r];
  const fp32 = cfg.outDtype === 'fp32';
  const got = new Uint8Array(cfg.maxTokensPerRank * cfg.hidden * (fp32 ? 4 : 2));
  ops.download(k.device, got, k.b.out);
  const gv = new DataView(got.buffer);
  // Tokens past this rank's n route nowhere: their output is 0.
  for (let i = 0; i < cfg.maxTokensPerRank * cfg.hidden; i++) {
    const v = i < ref32.length ? ref32[i] : 0;
    const ok = fp32
      ? gv.getUint32(i * 4, true) === new Uint32Array(Float32Array.of(v).buffer)[0]
      : gv.getUint16(i * 2, true) === toBf16(v);
    if (!ok) bad.out++;
  }
  return bad;
}

const sum = (bads) => bads.reduce((a, b) => a + b.x + b.scales + b.counts + b.out, 0);

/** One step of rank k on its stream (what a graph captures). */
function step(cfg, k) {
  k.moe.dispatchSend(input(cfg, k), k.stream);
  const d = k.moe.dispatchRecv(k.stream);
  k.moe.combineSend({ expertOut: k.b.expertOut }, k.stream);
  k.moe.combineRecv(k.stream, { out: k.b.out });
  return d;
}

function connectAll(ks) {
  const descs = ks.map((k) => k.moe.descriptor);
  for (const k of ks) k.moe.connect(descs);
}

function closeAll(ks) {
  for (const k of ks) {
    k.stream.synchronize();
    k.moe.close();
    for (const p of Object.values(k.b)) if (p) ops.free(k.device, p);
    k.stream.destroy();
  }
}

/** Eager rounds and graph replays for one config with W ranks in this process. */
function inProcess(base, W) {
  const cfg = { ...base, worldSize: W };
  delete cfg.name;
  const ks = Array.from({ length: W }, (_, r) => makeRank(cfg, r, 20_000));
  connectAll(ks);
  const eager = [];
  for (let round = 0; round < 3; round++) {
    const ins = roundInputs({ ...cfg, rank: 0 }, 500 + round, round === 2 ? 'skewed' : 'random');
    const ref = reference(cfg, ins);
    for (const k of ks) upload(k, ins[k.r], ref.outs[k.r]);
    // Phase by phase across ranks, nothing synchronised in between: the device orders it.
    for (const k of ks) k.moe.dispatchSend(input(cfg, k), k.stream);
    const ds = ks.map((k) => k.moe.dispatchRecv(k.stream));
    for (const k of ks) k.moe.combineSend({ expertOut: k.b.expertOut }, k.stream);
    for (const k of ks) k.moe.combineRecv(k.stream, { out: k.b.out });
    for (const k of ks) k.stream.synchronize();
    for (const k of ks) k.moe.check();
    eager.push(...ks.map((k) => compare(cfg, k, ds[k.r], ref)));
  }
  // Capture each rank's step once; replay with new inputs in the same buffers.
  const ds = [];
  const graphs = ks.map((k) =>
    CudaGraph.capture(k.stream, () => {
      ds[k.r] = step(cfg, k);
    }),
  );
  const replays = [];
  const t0 = performance.now();
  for (let i = 0; i < REPLAYS; i++) {
    const routing = i % 10 === 9 ? 'skewed' : i % 10 === 8 ? 'empty-rank' : 'random';
    const ins = roundInputs({ ...cfg, rank: 0 }, 9000 + i, routing);
    const ref = reference(cfg, ins);
    for (const k of ks) upload(k, ins[k.r], ref.outs[k.r]);
    for (const k of ks) graphs[k.r].launch(k.stream);
    for (const k of ks) k.stream.synchronize();
    for (const k of ks) k.moe.check();
    replays.push(...ks.map((k) => compare(cfg, k, ds[k.r], ref)));
  }
  const ms = performance.now() - t0;
  const nodes = graphs.map((g) => g.nodes);
  for (const g of graphs) g.destroy();
  closeAll(ks);
  return {
    config: base.name,
    worldSize: W,
    devices: ks.map((k) => k.device),
    eagerRounds: 3,
    eagerBad: sum(eager),
    replays: REPLAYS,
    graphNodes: nodes,
    replayBad: sum(replays),
    rankRoundsChecked: replays.length,
    ms: Math.round(ms),
  };
}

/** Refusals, a bad id, a missing rank. */
function faults() {
  const cfg = { ...CONFIGS[0], worldSize: 2 };
  delete cfg.name;
  const out = {};
  const codeOf = (f) => {
    try {
      f();
      return 'none';
    } catch (e) {
      return e.code ?? String(e);
    }
  };
  // Refused before anything is queued.
  {
    const ks = [0, 1].map((r) => makeRank(cfg, r, 20_000));
    out.beforeConnect = codeOf(() => ks[0].moe.dispatchSend(input(cfg, ks[0]), ks[0].stream));
    out.badDescriptor = codeOf(() => ks[0].moe.connect([ks[0].moe.descriptor, 'moestream:nope']));
    connectAll(ks);
    const k = ks[0];
    out.numTokens = codeOf(() =>
      k.moe.dispatchSend({ ...input(cfg, k), numTokens: cfg.maxTokensPerRank + 1 }, k.stream),
    );
    const small = ops.alloc(k.device, 64);
    out.shortTokens = codeOf(() => k.moe.dispatchSend({ ...input(cfg, k), tokens: small }, k.stream));
    out.hostPointer = codeOf(() =>
      k.moe.dispatchSend({ ...input(cfg, k), topkIds: new Int32Array(8) }, k.stream),
    );
    out.badStream = codeOf(() => k.moe.dispatchSend(input(cfg, k), 'stream'));
    out.outOfOrder = codeOf(() => k.moe.combineSend({ expertOut: k.b.expertOut }, k.stream));
    ops.free(k.device, small);
    // A top-k id out of range: the kernel reports it and drops the slot; every other byte as the reference.
    const ins = roundInputs({ ...cfg, rank: 0 }, 77, 'random');
    const badIns = ins.map((x) => ({ ...x, topkIds: x.topkIds.slice() }));
    badIns[0].topkIds[3] = 999;
    const fixed = ins.map((x, r) => ({
      ...x,
      topkIds: r === 0 ? Int32Array.from(x.topkIds, (e, i) => (i === 3 ? -1 : e)) : x.topkIds,
    }));
    const ref = reference(cfg, fixed);
    for (const kk of ks) upload(kk, badIns[kk.r], ref.outs[kk.r]);
    const ds = ks.map((kk) => step(cfg, kk));
    for (const kk of ks) kk.stream.synchronize();
    out.badId = ks.map((kk) => kk.moe.failure?.code ?? 'none');
    out.badIdMessage = ks[0].moe.failure?.message;
    out.badIdBytes = sum(ks.map((kk) => compare(cfg, kk, ds[kk.r], ref)));
    out.checkAfterBadId = codeOf(() => k.moe.check());
    // Not fatal: the next round runs (the report stays until close).
    const ref2 = reference(cfg, ins);
    for (const kk of ks) upload(kk, ins[kk.r], ref2.outs[kk.r]);
    const ds2 = ks.map((kk) => step(cfg, kk));
    for (const kk of ks) kk.stream.synchronize();
    out.roundAfterBadIdBytes = sum(ks.map((kk) => compare(cfg, kk, ds2[kk.r], ref2)));
    closeAll(ks);
    out.afterClose = codeOf(() => k.moe.dispatchSend(input(cfg, k), k.stream));
  }
  // Rank 1 never arrives: rank 0's whole step drains by its deadlines and reports TIMEOUT.
  {
    const ks = [0, 1].map((r) => makeRank(cfg, r, 300));
    connectAll(ks);
    const ins = roundInputs({ ...cfg, rank: 0 }, 78, 'random');
    upload(ks[0], ins[0]);
    const t0 = performance.now();
    step(cfg, ks[0]);
    ks[0].stream.synchronize();
    out.missingRankMs = Math.round(performance.now() - t0);
    out.missingRank = ks[0].moe.failure?.code ?? 'none';
    out.missingRankMessage = ks[0].moe.failure?.message;
    out.afterTimeout = codeOf(() => ks[0].moe.dispatchSend(input(cfg, ks[0]), ks[0].stream));
    closeAll(ks);
  }
  const want = {
    beforeConnect: 'INVALID_ARGUMENT',
    badDescriptor: 'INVALID_DESCRIPTOR',
    numTokens: 'INVALID_ARGUMENT',
    shortTokens: 'OUT_OF_RANGE',
    hostPointer: 'INVALID_ARGUMENT',
    badStream: 'INVALID_ARGUMENT',
    outOfOrder: 'INVALID_ARGUMENT',
    checkAfterBadId: 'INVALID_ARGUMENT',
    afterTimeout: 'TIMEOUT',
    afterClose: 'CLOSED',
    missingRank: 'TIMEOUT',
  };
  out.ok =
    Object.entries(want).every(([k, v]) => out[k] === v) &&
    out.badId[0] === 'INVALID_ARGUMENT' &&
    out.badId[1] === 'none' &&
    out.badIdBytes === 0 &&
    out.roundAfterBadIdBytes === 0 &&
    /rank 1's dispatch/.test(out.missingRankMessage ?? '') &&
    out.missingRankMs < 5000;
  return out;
}

/** One rank of the two-process check: graph replays through CUDA IPC. */
async function ipcRank(io) {
  const cfg = { ...CONFIGS[0], worldSize: io.size };
  delete cfg.name;
  const k = makeRank(cfg, io.rank, 20_000);
  k.moe.connect(await io.exchange(k.moe.descriptor));
  let d;
  const g = CudaGraph.capture(k.stream, () => {
    d = step(cfg, k);
  });
  const bads = [];
  const n = Math.min(20, REPLAYS);
  for (let i = 0; i < n; i++) {
    const ins = roundInputs({ ...cfg, rank: 0 }, 4000 + i, i % 5 === 4 ? 'skewed' : 'random');
    const ref = reference(cfg, ins);
    upload(k, ins[k.r], ref.outs[k.r]);
    await io.exchange('ready'); // every rank's inputs are in place before any replay reads them
    g.launch(k.stream);
    k.stream.synchronize();
    k.moe.check();
    bads.push(compare(cfg, k, d, ref));
    await io.exchange('done'); // nobody rewrites inputs a peer's replay may still read
  }
  g.destroy();
  closeAll([k]);
  return { rank: io.rank, device: k.device, replays: n, bad: sum(bads) };
}

const watchdog = setTimeout(() => {
  console.error(`stream.mjs ${process.argv[2] ?? 'main'}: no result after 300 s`);
  process.exit(3);
}, 300_000);
watchdog.unref();
if (process.argv[2] === 'child') {
  const world = childWorld();
  await world.finish(await ipcRank(world));
} else {
  const results = [];
  for (const c of CONFIGS) for (const W of [2, 4]) results.push(inProcess(c, W));
  const f = faults();
  const world = parentWorld(fileURLToPath(import.meta.url), 2);
  const ipc = await world.gather(await ipcRank(world));
  const ok =
    results.every((x) => x.eagerBad === 0 && x.replayBad === 0) &&
    f.ok &&
    ipc.every((x) => x.bad === 0 && x.replays > 0);
  console.log(JSON.stringify({ test: 'moe-stream', gpus, ok, results, faults: f, ipc }));
  process.exit(ok ? 0 : 1);
}
