// Where the initiator's time goes in the synchronous latency loop (docs/benchmarks.md): the
// benchmark's target (packages/backend-efa/dist/bench/target.js) answers each immediate from a
// synchronous poll() + take() loop, and this process times, per round trip, its own submitImm call
// and its wait — then the same submitImm in a tight loop of 64 at a time, and 2,000 steps of plain
// JavaScript both ways (is the CPU slower inside the loop, or the call?). After a build:
//   node scripts/bench/latency-loop.mjs
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../packages/backend-efa/', import.meta.url));
const { createEngine } = await import(`${root}dist/index.js`);
const { MrDesc } = await import(`${root}node_modules/@trellis/core/dist/index.js`);
const N = 5000,
  WARM = 200;
const engine = await createEngine({ provider: 'shm', nics: 1, maxSleepUs: 0 });
const child = spawn(
  process.execPath,
  [`${root}dist/bench/target.js`, JSON.stringify({ provider: 'shm', size: 4096, nics: 1, spin: true })],
  { stdio: ['pipe', 'pipe', 'inherit'] },
);
const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
const first = JSON.parse((await lines.next()).value);
const dst = MrDesc.parse(first.desc).owner;
child.stdin.write(`${JSON.stringify({ pong: N + WARM, to: engine.address.toString(), mode: 'sync' })}\n`);
await lines.next();
const back = engine.immCounter(3);
const sub = [],
  wait = [],
  rtt = [],
  polls = [],
  work = [];
let sink = 0;
const busy = () => {
  let x = 0;
  for (let k = 0; k < 2000; k++) x = (x * 31 + k) | 0;
  sink ^= x;
};
for (let k = 0; k < 10000; k++) busy();
const tb = performance.now();
for (let k = 0; k < 10000; k++) busy();
const tight = (performance.now() - tb) / 10000;
const sent = [];
for (let i = 0; i < N + WARM; i++) {
  const tw = performance.now();
  busy();
  const t0 = performance.now();
  if (i >= WARM) work.push(t0 - tw);
  sent.push(engine.submitImm({ dst, imm: 2 }));
  const t1 = performance.now();
  let n = 0;
  while (!back.take(1)) {
    engine.poll();
    n++;
  }
  const t2 = performance.now();
  if (i >= WARM) {
    sub.push(t1 - t0);
    wait.push(t2 - t1);
    rtt.push(t2 - t0);
    polls.push(n);
  }
}
await Promise.all(sent);
await lines.next();
const med = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
};
const p90 = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length * 0.9)];
};
console.log(
  `rtt ${(med(rtt) * 1000).toFixed(2)} us (p90 ${(p90(rtt) * 1000).toFixed(2)}); submitImm call ${(med(sub) * 1000).toFixed(2)} us (p90 ${(p90(sub) * 1000).toFixed(2)}); wait ${(med(wait) * 1000).toFixed(2)} us; polls per wait ${med(polls)}`,
);
console.log(
  `2000-step JS loop: ${(tight * 1000).toFixed(2)} us in a tight loop, ${(med(work) * 1000).toFixed(2)} us inside the latency loop`,
);
// submitImm in a tight loop: 64 at a time, awaited.
let inCall = 0;
const M = 20000;
for (let r = 0; r < 2; r++) {
  inCall = 0;
  for (let i = 0; i < M; i += 64) {
    const ps = [];
    const s0 = performance.now();
    for (let j = 0; j < 64; j++) ps.push(engine.submitImm({ dst, imm: 9 }));
    inCall += performance.now() - s0;
    await Promise.all(ps);
  }
}
console.log(
  `submitImm call in a tight loop (64 at a time): ${((inCall * 1000) / M).toFixed(2)} us; sink ${sink & 1}`,
);
child.stdin.write('{"exit":true}\n');
await engine.close();
process.exit(0);
