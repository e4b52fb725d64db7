// `pnpm --filter @trellis/weightsync bench` — weight sync of a synthetic bf16 model (2 GiB by
// default) from M trainer processes to K inference processes over backend-efa, against a baseline
// on the same engines in the same run: gather every shard to trainer 0, then trainer 0 broadcasts
// the whole model to every inference rank.
//
//   node dist/bench/run.js [--provider shm|tcp] [--trainers 4] [--inference 2] [--gib 2] [--trials 3] [--quick] [--json out.json]
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { type BenchConfig, benchPlan } from './model.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : dflt;
};
const quick = args.includes('--quick');
const provider = opt('--provider', 'shm');
const trainers = Number(opt('--trainers', '4'));
const inference = Number(opt('--inference', '2'));
const gib = Number(opt('--gib', quick ? '0.25' : '2'));
const trials = Number(opt('--trials', quick ? '1' : '3'));
const nics = Number(opt('--nics', '1'));
const jsonOut = opt('--json', '');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const cols = 4096;
const rows = 4096;
const tensors = Math.max(1, Math.round((gib * 2 ** 30) / (rows * cols * 2)));
const config: BenchConfig = { trainers, inference, tensors, rows, cols, senderNics: nics };
const plan = benchPlan(config);
const modelBytes = plan.trainerBytes.reduce((a, b) => a + b, 0);
const now = () => performance.timeOrigin + performance.now();

class Worker {
  private readonly lines: AsyncIterator<string>;
  constructor(readonly child: ChildProcess) {
    this.lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  }
  async next<T>(): Promise<T> {
    return JSON.parse((await this.lines.next()).value as string) as T;
  }
  send(o: object): void {
    this.child.stdin!.write(`${JSON.stringify(o)}\n`);
  }
}
const worker = (role: string, rank: number) =>
  new Worker(
    spawn(
      process.execPath,
      [
        fileURLToPath(new URL('./worker.js', import.meta.url)),
        JSON.stringify({ role, rank, provider, nics, config }),
      ],
      {
        stdio: ['pipe', 'pipe', 'inherit'],
      },
    ),
  );

const inf = Array.from({ length: inference }, (_, r) => worker('inference', r));
const tr = Array.from({ length: trainers }, (_, r) => worker('trainer', r));
const infInfo = await Promise.all(inf.map((w) => w.next<{ addr: string; descs: string[]; full: string }>()));
const trInfo = await Promise.all(tr.map((w) => w.next<{ addr: string; gather?: string }>()));
for (const w of tr) w.send({ targets: infInfo.map((i) => i.descs) });
await Promise.all(tr.map((w) => w.next()));

let step = 0;
async function runSync(): Promise<number> {
  step++;
  const t0 = now();
  for (const w of inf) w.send({ sync: { step, version: step } });
  for (const w of tr) w.send({ sync: { step, version: step } });
  const done = await Promise.all(inf.map((w) => w.next<{ done: number }>()));
  await Promise.all(tr.map((w) => w.next()));
  return Math.max(...done.map((d) => d.done)) - t0;
}
async function runBase(): Promise<number> {
  const t0 = now();
  for (const w of inf) w.send({ base: { trainer0: trInfo[0]!.addr } });
  for (const w of tr)
    w.send({
      base: { gather: trInfo[0]!.gather, full: infInfo.map((i) => i.full), peers: trInfo.map((t) => t.addr) },
    });
  const done = await Promise.all(inf.map((w) => w.next<{ done: number }>()));
  await Promise.all(tr.map((w) => w.next()));
  return Math.max(...done.map((d) => d.done)) - t0;
}

const ws: number[] = [];
const base: number[] = [];
for (let t = 0; t < trials; t++) {
  ws.push(await runSync());
  base.push(await runBase());
  process.stderr.write('.');
}
process.stderr.write('\n');
for (const w of [...inf, ...tr]) w.send({ exit: true });
await Promise.all([...inf, ...tr].map((w) => new Promise((r) => w.child.on('exit', r))));

const wsMs = median(ws);
const baseMs = median(base);
const perSender = Math.max(...plan.bytesPerSender);
const gb = (b: number, ms: number) => `${(b / ms / 1e6).toFixed(2)} GB/s`;
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
console.log(
  `weightsync over backend-efa ${provider === 'tcp' ? 'tcp;ofi_rxm' : provider}, ${trainers} trainer → ${inference} inference processes, ${nics} NIC(s) each, ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`,
);
console.log(
  `model: ${tensors} bf16 tensors of ${rows}x${cols} = ${mib(modelBytes)}; trainers FSDP (rows), inference TP (rows); median of ${trials}`,
);
console.log('');
console.log('| method | bytes moved | sync time | per sender (busiest) | ratio |');
console.log('|---|---|---|---|---|');
console.log(
  `| weightsync: point-to-point schedule | ${mib(modelBytes)} | ${wsMs.toFixed(0)} ms | ${gb(perSender, wsMs)} | ${(baseMs / wsMs).toFixed(2)}x faster |`,
);
console.log(
  `| baseline: gather to trainer 0, broadcast the model | ${mib(modelBytes - plan.trainerBytes[0]! + modelBytes * inference)} | ${baseMs.toFixed(0)} ms | ${gb(modelBytes * inference, baseMs)} (trainer 0 sends all) | 1.00x |`,
);
if (jsonOut)
  writeFileSync(
    jsonOut,
    JSON.stringify({ config, modelBytes, ws, base, bytesPerSender: plan.bytesPerSender }, null, 2),
  );
