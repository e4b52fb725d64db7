// The cost of one small write from JavaScript: two shm engines in one process (no child, no raw
// program: this measures the JS side, for profiling), `submitSingleWrite` from 64 loops against
// `submitBatch` and prepared writes (`prepareWrites(...).post`, 32 writes per call from two loops),
// 64 writes outstanding either way; alternating, `--trials` times each. Besides the wall time per
// write it reports the time spent inside the submitting calls (building the requests and the call,
// until it returns: validation, bookkeeping, packing, the crossing into the addon) and the
// JavaScript thread's own CPU time per write (the main thread's time on the CPU from
// /proc/self/task/<pid>/schedstat: settling and event-loop wake-ups included, the target engine's
// counting of its arrivals too, as it shares the thread). Neither counts what the engines' worker
// threads and the provider take: on a machine with few cores the wall time mostly measures how the
// spinning threads share them. Profile with
// `node --cpu-prof dist/bench/per-op.js --modes single`.
//
//   node dist/bench/per-op.js [--ops 200000] [--size 4096] [--trials 3] [--modes single,batch,prepared] [--provider shm]
import { cpus } from 'node:os';
import { createEngine, type Provider } from '@trellis/backend-efa';
import type { TransferRequest } from '@trellis/core';
import { mainThreadCpu } from './cpu.js';

const opt = (name: string, dflt: string) => {
  const i = process.argv.indexOf(name);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : dflt;
};
const ops = Number(opt('--ops', '200000'));
const size = Number(opt('--size', '4096'));
const trials = Number(opt('--trials', '3'));
const modes = opt('--modes', 'single,batch,prepared').split(',') as Mode[];
const provider = opt('--provider', 'shm') as Provider;
type Mode = 'single' | 'batch' | 'prepared';
const WINDOW = 64;
const REGION = 64 << 20;

// TRELLIS_BENCH_ARRIVAL_US sets arrivalBatchUs (0: the target's arrivals wake this thread per batch).
const arrival = process.env.TRELLIS_BENCH_ARRIVAL_US;
const busy = process.env.TRELLIS_BENCH_BUSY_POLL_US;
const tuning = {
  arrivalBatchUs: arrival ? Number(arrival) : undefined,
  busyPollUs: busy ? Number(busy) : undefined,
};
const a = await createEngine({ provider, nics: 1, sameHostLane: false, ...tuning });
const b = await createEngine({ provider, nics: 1, sameHostLane: false, ...tuning });
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

const prepared = modes.includes('prepared') ? a.prepareWrites({ src, dst: dst.desc, imm: 1 }) : undefined;

/**
 * Wall seconds, main-thread CPU seconds, seconds inside the submitting calls (building the request
 * and the call itself, until it returns its promise) and the writer's event-loop wake-ups (the
 * worker's rings it took: `stats().events.rung`) of `n` writes.
 */
type Run = { wall: number; cpu: number; call: number; rung: number };

async function run(mode: Mode, n: number): Promise<Run> {
  let next = 0;
  let call = 0;
  const rung0 = a.stats().events!.rung;
  const c0 = mainThreadCpu();
  const t0 = process.hrtime.bigint();
  if (mode === 'single') {
    const loop = async () => {
      while (next < n) {
        const t = performance.now();
        const p = a.submitSingleWrite(request(next++));
        call += performance.now() - t;
        await p;
      }
    };
    await Promise.all(Array.from({ length: WINDOW }, loop));
  } else if (mode === 'prepared') {
    const loop = async () => {
      const w = new Float64Array(3 * (WINDOW / 2));
      while (next < n) {
        const t = performance.now();
        let k = 0;
        for (; k < WINDOW / 2 && next < n; k++, next++) {
          const at = (next % slots) * size;
          w[3 * k] = at;
          w[3 * k + 1] = at;
          w[3 * k + 2] = size;
        }
        const p = prepared!.post(w, { count: k });
        call += performance.now() - t;
        await p;
      }
    };
    await Promise.all([loop(), loop()]);
  } else {
    const loop = async () => {
      while (next < n) {
        const t = performance.now();
        const batch: TransferRequest[] = [];
        for (; batch.length < WINDOW / 2 && next < n; next++) batch.push(request(next));
        const p = a.submitBatch(batch);
        call += performance.now() - t;
        const r = await p;
        if (r.failed) throw r.errors.find((e) => e !== undefined);
      }
    };
    await Promise.all([loop(), loop()]);
  }
  return {
    wall: Number(process.hrtime.bigint() - t0) / 1e9,
    cpu: mainThreadCpu() - c0,
    call: call / 1000,
    rung: a.stats().events!.rung - rung0,
  };
}

const results = new Map<string, Run[]>(modes.map((m) => [m, []]));
for (const m of modes) await run(m, Math.min(20_000, ops)); // warm-up
for (let t = 0; t < trials; t++) for (const m of modes) results.get(m)!.push(await run(m, ops));
await a.close();
await b.close();

const median = (v: number[]) => [...v].sort((x, y) => x - y)[Math.floor(v.length / 2)]!;
console.log(
  `${provider}, ${size} B writes, ${ops} per trial, 64 outstanding, median of ${trials}; ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}`,
);
console.log(
  '| API | µs per write (median) | writes/s | trials (µs per write) | µs in the submitting call per write (median) | JS thread CPU µs per write (median) | trials (CPU µs per write) | wake-ups per 100 writes (median) |',
);
console.log('|---|---|---|---|---|---|---|---|');
const names = {
  single: 'submitSingleWrite',
  batch: 'submitBatch (32 per call)',
  prepared: 'prepareWrites + post (32 per call)',
};
for (const [m, runs] of results) {
  const us = runs.map((r) => (r.wall / ops) * 1e6);
  const cpu = runs.map((r) => (r.cpu / ops) * 1e6);
  const call = runs.map((r) => (r.call / ops) * 1e6);
  const rings = runs.map((r) => (r.rung / ops) * 100);
  console.log(
    `| ${names[m as Mode]} | ${median(us).toFixed(2)} | ${Math.round(ops / median(runs.map((r) => r.wall))).toLocaleString('en-US')} | ${us.map((u) => u.toFixed(2)).join(', ')} | ${median(call).toFixed(2)} | ${median(cpu).toFixed(2)} | ${cpu.map((u) => u.toFixed(2)).join(', ')} | ${median(rings).toFixed(1)} |`,
  );
}
