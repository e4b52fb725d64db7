// The MoE service of examples/torch/moe_gate.py: two MoeStream ranks (EP2) in this process, each
// on its own stream (and GPU, where there are two), reading the model's tensors in place through
// one CUDA IPC mapping. Each rank's whole MoE layer — dispatch, the experts (here the identity:
// expertOut = expertX, bf16 in and out), combine into the model's output tensor — is captured once
// in a CUDA graph; per step each stream waits for torch's `ready` event, replays its graph and
// records `done` for torch to wait on. Reads JSON lines on stdin, writes JSON lines on stdout.
import { createInterface } from 'node:readline';
import { CudaEvent, CudaGraph, CudaStream, DeviceBuffer } from '@trellis/cuda';
import { cudaMoeOps, MoeStream } from '../../dist/index.js';

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const next = async () => JSON.parse((await lines.next()).value);
const say = (m) => process.stdout.write(`${JSON.stringify(m)}\n`);

const hello = await next();
const { W, T, H, E, K } = hello.shape;
const arena = DeviceBuffer.import(hello.arena, { offset: hello.base, length: hello.bytes, device: 0 });
const ready = CudaEvent.import(hello.ready, { device: 0 });
const ops = cudaMoeOps();
const ranks = Array.from({ length: W }, (_, r) => {
  const moe = MoeStream.create(
    {
      worldSize: W,
      rank: r,
      numExperts: E,
      topk: K,
      hidden: H,
      maxTokensPerRank: T,
      inDtype: 'bf16',
      outDtype: 'bf16',
    },
    { ops, device: 0 },
  );
  const stream = CudaStream.create({ device: 0 });
  const done = CudaEvent.create({ device: 0, interprocess: true });
  const at = (name) => arena.ptr + BigInt(hello.layout[r][name]);
  return { r, moe, stream, done, x: at('x'), ids: at('ids'), w: at('w'), out: at('out') };
});
const descs = ranks.map((k) => k.moe.descriptor);
for (const k of ranks) k.moe.connect(descs);
const graphs = ranks.map((k) =>
  CudaGraph.capture(k.stream, () => {
    const d = k.moe.dispatch({ numTokens: T, tokens: k.x, topkIds: k.ids, topkWeights: k.w }, k.stream);
    // The experts: identity (a grouped GEMM would read d.expertX / d.tokensPerExpert here).
    k.moe.combine({ expertOut: d.expertX }, k.stream, { out: k.out });
  }),
);
for (const k of ranks) k.done.record(k.stream); // recorded once before torch opens the handles
say({ done: ranks.map((k) => k.done.ipcHandle()), graphNodes: graphs.map((g) => g.nodes) });

for (;;) {
  const m = await next();
  if (m.quit) break;
  for (const [i, k] of ranks.entries()) {
    k.stream.wait(ready);
    graphs[i].launch(k.stream);
    k.done.record(k.stream);
  }
  say({ step: m.step });
}
for (const k of ranks) k.stream.synchronize();
const failure = ranks.map((k) => k.moe.failure?.message).find(Boolean) ?? null;
for (const g of graphs) g.destroy();
for (const k of ranks) {
  k.moe.close();
  k.done.destroy();
  k.stream.destroy();
}
ready.destroy();
arena.free();
say({ failure });
process.exit(0); // stdin stays open (the parent's pipe): leave without waiting for it
