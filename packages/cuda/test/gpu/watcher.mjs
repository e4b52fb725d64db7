// GPU watcher latency: a kernel increments an engine watcher's word (mapped pinned host memory)
// each time the host raises a "go" word. Phase 1 times go → the native worker's observation, → the
// watcher's JS callback, → an immediate posted from that callback arriving at a peer engine.
// Phase 2 arms the immediate on the watcher instead (submitOnWatch: the worker posts it, no JS
// turn) and times go → its arrival. Prints one JSON line.
import { createEngine } from '@trellis/backend-efa';
import { launchIncrementOnGo, mappedWatcherMemory, synchronize } from '../../dist/index.js';

const n = Number(process.argv[2] ?? 2000);
const a = await createEngine({ provider: 'shm', watcherMemory: mappedWatcherMemory, maxSleepUs: 0 });
const b = await createEngine({ provider: 'shm', maxSleepUs: 0 });
const go = mappedWatcherMemory();
// One clock for all: process.hrtime (CLOCK_MONOTONIC), which the native worker stamps too.
const now = () => process.hrtime.bigint();
const us = (ns) => Number(ns) / 1000;
let t0 = 0n;
let resolveSeen;
const native = [];
const cb = [];
const posted = [];
const imm = [];
let phase = 1;
const w = a.allocUvmWatcher((value) => {
  if (phase !== 1) return;
  cb.push(us(now() - t0));
  native.push(us(w.seenAt - t0));
  void a.submitImm({ dst: b.address, imm: 9 });
  posted.push(us(now() - t0));
  resolveSeen?.(value);
});
launchIncrementOnGo(0, w.devicePtr, go.devicePtr, 2 * n);
const counter = b.immCounter(9);
for (let i = 1; i <= n; i++) {
  const seen = new Promise((r) => (resolveSeen = r));
  t0 = now();
  Atomics.store(go.word, 0, BigInt(i));
  const v = await seen;
  if (v !== BigInt(i)) throw new Error(`watcher saw ${v}, expected ${i}`);
  await counter.wait(1);
  imm.push(us(now() - t0));
}
// Phase 2: the same immediate, armed on the watcher before each go.
phase = 2;
const triggered = [];
const counter2 = b.immCounter(10);
for (let i = n + 1; i <= 2 * n; i++) {
  const done = a.submitOnWatch(w, BigInt(i), { kind: 'imm', dst: b.address, imm: 10 });
  t0 = now();
  Atomics.store(go.word, 0, BigInt(i));
  await counter2.wait(1);
  triggered.push(us(now() - t0));
  await done;
}
synchronize(0);
const pct = (xs, p) => [...xs].sort((x, y) => x - y)[Math.floor((xs.length * p) / 100)];
console.log(
  JSON.stringify({
    test: 'watcher',
    n,
    final: Number(w.value),
    nativeSeenUs: { p50: pct(native, 50), p99: pct(native, 99) },
    callbackUs: { p50: pct(cb, 50), p99: pct(cb, 99) },
    immSubmittedUs: { p50: pct(posted, 50), p99: pct(posted, 99) },
    immArrivedUs: { p50: pct(imm, 50), p99: pct(imm, 99) },
    triggeredImmArrivedUs: { p50: pct(triggered, 50), p99: pct(triggered, 99) },
  }),
);
w.close();
await a.close();
await b.close();
process.exit(0);
