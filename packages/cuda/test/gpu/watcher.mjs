// GPU watcher latency: a kernel increments an engine watcher's word (mapped pinned host memory)
// each time the host raises a "go" word; we time go → the watcher's JS callback, and go → an
// immediate posted from that callback arriving at a peer engine. Prints one JSON line.
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
const w = a.allocUvmWatcher((value) => {
  cb.push(us(now() - t0));
  native.push(us(w.seenAt - t0));
  void a.submitImm({ dst: b.address, imm: 9 });
  posted.push(us(now() - t0));
  resolveSeen?.(value);
});
launchIncrementOnGo(0, w.devicePtr, go.devicePtr, n);
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
  }),
);
w.close();
await a.close();
await b.close();
process.exit(0);
