// The cost of one small write from JavaScript: two shm engines in one process (no child, no raw
// program: this measures the JS side, for profiling), `submitSingleWrite` from 64 loops against
// `submitBatch` (batches of 32 from two loops), 64 writes outstanding either way; alternating,
// `--trials` times each. Profile with `node --cpu-prof dist/bench/per-op.js --modes single`.
//
//   node dist/bench/per-op.js [--ops 200000] [--size 4096] [--trials 3] [--modes single,batch] [--provider shm]
import { cpus } from 'node:os';
import { createEngine, type Provider } from '@trellis/backend-efa';
import type { TransferRequest } from '@trellis/core';

const opt = (name: string, dflt: string) => {
  const i = process.argv.indexOf(name);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : dflt;
};
const ops = Number(opt('--ops', '200000'));
const size = Number(opt('--size', '4096'));
const trials = Number(opt('--trials', '3'));
const modes = opt('--modes', 'single,batch').split(',') as Array<'single' | 'batch'>;
const provider = opt('--provider', 'shm') as Provider;
const WINDOW = 64;
const REGION = 64 << 20;

const a = await createEngine({ provider, nics: 1, sameHostLane: false });
const b = await createEngine({ provider, nics: 1, sameHostLane: false });
const dst = await b.registerMemory(REGION, { remote: true });
const src = await a.registerMemory(REGION);
const slots = Math.floor(REGION / size);
const request = (k: number): TransferRequest & { kind: 'single' } => {
  const at = (k % slots) * size;
  return {
    kind: 'single',
    src,
    srcOffset: at,
    length: size,
    dst: dst.desc,
    dstOffset: at,
    imm: 1,
    shards: 1,
  };
};

async function run(mode: 'single' | 'batch', n: number): Promise<number> {
  let next = 0;
  const t0 = process.hrtime.bigint();
  if (mode === 'single') {
    const loop = async () => {
      while (next < n) await a.submitSingleWrite(request(next++));
    };
    await Promise.all(Array.from({ length: WINDOW }, loop));
  } else {
    const loop = async () => {
      while (next < n) {
        const batch: TransferRequest[] = [];
        for (; batch.length < WINDOW / 2 && next < n; next++) batch.push(request(next));
        const r = await a.submitBatch(batch);
        if (r.failed) throw r.errors.find((e) => e !== undefined);
      }
    };
    await Promise.all([loop(), loop()]);
  }
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const results = new Map<string, number[]>(modes.map((m) => [m, []]));
for (const m of modes) await run(m, Math.min(20_000, ops)); // warm-up
for (let t = 0; t < trials; t++) for (const m of modes) results.get(m)!.push(await run(m, ops));
await a.close();
await b.close();

const median = (v: number[]) => [...v].sort((x, y) => x - y)[Math.floor(v.length / 2)]!;
console.log(
  `${provider}, ${size} B writes, ${ops} per trial, 64 outstanding, median of ${trials}; ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}`,
);
console.log('| API | µs per write (median) | writes/s | trials (µs per write) |');
console.log('|---|---|---|---|');
for (const [m, secs] of results) {
  const us = secs.map((s) => (s / ops) * 1e6);
  console.log(
    `| ${m === 'single' ? 'submitSingleWrite' : 'submitBatch (32 per call)'} | ${median(us).toFixed(2)} | ${Math.round(ops / median(secs)).toLocaleString('en-US')} | ${us.map((u) => u.toFixed(2)).join(', ')} |`,
  );
}
