// Planner-only projection: the schedule for a large model config, without moving a byte. Prints
// bytes per sender, receiver and link, and the schedule's transfer-time lower bound at a given
// per-GPU bandwidth: max(busiest sender, busiest receiver) / bandwidth.
//
//   node dist/bench/project.js [--layers 61] [--experts 384] [--hidden 7168] [--expert-ffn 2048]
//        [--trainers 256] [--inference 128] [--tp 8] [--gbps 400] [--nics 1]
//
// The model: per layer four dense hidden×hidden projections (q, k, v, o) and `experts` experts of
// three hidden×ffn matrices (gate, up, down), bf16. Trainers: dense FSDP dim-0 shards over every
// rank, experts placed whole round-robin (EP). Inference: dense TP (`--tp`, rows) replicated over
// inference/tp data-parallel groups, q/k/v fused into qkv and gate/up into gate_up, experts placed
// whole round-robin (EP) and quantised to fp8 e4m3 with 128-element blocks.
import {
  type InferenceTensorSpec,
  type Placement,
  planWeightSync,
  range,
  type TensorSpec,
} from '@trellis/weightsync';

const args = process.argv.slice(2);
const num = (name: string, d: number) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : d;
};
const layers = num('--layers', 61);
const experts = num('--experts', 384);
const hidden = num('--hidden', 7168);
const ffn = num('--expert-ffn', 2048);
const T = num('--trainers', 256);
const I = num('--inference', 128);
const tp = num('--tp', 8);
const gbps = num('--gbps', 400);
const nics = num('--nics', 1);

const model: TensorSpec[] = [];
const placements: Record<string, Placement> = {};
const inf: InferenceTensorSpec[] = [];
const dp = I / tp;
const tpGroups: Placement = { split: 'rows', ranks: range(tp).map((t) => range(dp).map((g) => g * tp + t)) };
let e = 0;
for (let l = 0; l < layers; l++) {
  for (const n of ['q', 'k', 'v', 'o']) {
    const name = `l${l}.${n}`;
    model.push({ name, shape: [hidden, hidden], dtype: 'bf16' });
    placements[name] = { split: 'rows', ranks: range(T).map((r) => [r]) };
  }
  inf.push({ name: `l${l}.qkv`, parts: ['q', 'k', 'v'].map((n) => `l${l}.${n}`), placement: tpGroups });
  inf.push({ name: `l${l}.o`, placement: { split: 'cols', ranks: tpGroups.ranks } });
  for (let x = 0; x < experts; x++, e++) {
    for (const [n, shape] of [
      ['gate', [ffn, hidden]],
      ['up', [ffn, hidden]],
      ['down', [hidden, ffn]],
    ] as const) {
      const name = `l${l}.e${x}.${n}`;
      model.push({ name, shape: [...shape], dtype: 'bf16' });
      placements[name] = { split: 'none', ranks: [[e % T]] };
    }
    const at = [[e % I]];
    inf.push({
      name: `l${l}.e${x}.gate_up`,
      parts: [`l${l}.e${x}.gate`, `l${l}.e${x}.up`],
      dtype: 'fp8e4m3',
      quantBlock: 128,
      placement: { split: 'none', ranks: at },
    });
    inf.push({
      name: `l${l}.e${x}.down`,
      dtype: 'fp8e4m3',
      quantBlock: 128,
      placement: { split: 'none', ranks: at },
    });
  }
}
const params = model.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
const t0 = performance.now();
const plan = planWeightSync(
  model,
  { ranks: T, placements },
  { ranks: I, tensors: inf },
  { senderNics: nics, maxOpBytes: Number.POSITIVE_INFINITY },
);
const planMs = performance.now() - t0;

const links = new Map<number, number>();
for (const op of plan.ops) links.set(op.src * I + op.dst, (links.get(op.src * I + op.dst) ?? 0) + op.bytes);
const stat = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { min: s[0]!, max: s[s.length - 1]!, mean: s.reduce((a, b) => a + b, 0) / s.length };
};
const gb = (b: number) => `${(b / 1e9).toFixed(2)} GB`;
const snd = stat(plan.bytesPerSender);
const rcv = stat(plan.bytesPerReceiver);
const lk = stat([...links.values()]);
const bw = (gbps * 1e9) / 8;
const bound = Math.max(snd.max, rcv.max) / bw;
console.log(
  `model: ${(params / 1e12).toFixed(3)}T parameters (${layers} layers, ${experts} experts of 3×${hidden}×${ffn}), bf16 on ${T} trainer GPUs → ${I} inference GPUs (TP${tp} dense, EP experts in fp8)`,
);
console.log(
  `plan: ${plan.ops.length} writes over ${links.size} sender→receiver links, planned in ${(planMs / 1000).toFixed(1)} s`,
);
console.log('');
console.log('| | min | mean | max |');
console.log('|---|---|---|---|');
console.log(`| bytes per trainer GPU (sent) | ${gb(snd.min)} | ${gb(snd.mean)} | ${gb(snd.max)} |`);
console.log(`| bytes per inference GPU (received) | ${gb(rcv.min)} | ${gb(rcv.mean)} | ${gb(rcv.max)} |`);
console.log(
  `| bytes per link (sender→receiver pair used) | ${gb(lk.min)} | ${gb(lk.mean)} | ${gb(lk.max)} |`,
);
console.log('');
console.log(
  `transfer-time lower bound at ${gbps} Gbps per GPU: max(busiest sender, busiest receiver) / bandwidth = ${gb(Math.max(snd.max, rcv.max))} / ${(bw / 1e9).toFixed(0)} GB/s = ${(bound * 1000).toFixed(0)} ms`,
);
