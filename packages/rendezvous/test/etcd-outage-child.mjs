// A child process for etcd.test.ts: connected to the etcd at argv[2], which the parent SIGKILLs once
// this prints "waiting" (and says "killed" on stdin). Prints one JSON line of what each call settled
// with, closes the rendezvous, and must then exit on its own (the parent times it).
import { createInterface } from 'node:readline';
import { EtcdRendezvous } from '../dist/index.js';

const r = await EtcdRendezvous.connect({ hosts: process.argv[2], prefix: 'o/', timeoutMs: 2000 });
const outcome = (p) =>
  p.then(
    (v) => `ok ${v}`,
    (e) => `${e.code}: ${e.message}`,
  );
await r.set('have', 'x');
const waiting = [
  outcome(r.get('never', { timeoutMs: 1500 })),
  outcome(r.barrier('b', 2, { timeoutMs: 1500 })),
];
await new Promise((res) => setTimeout(res, 200));
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
process.stdout.write('waiting\n');
await lines.next(); // "killed"
const look = await outcome(r.get('have', { timeoutMs: 0 }));
const late = await outcome(r.get('other', { timeoutMs: 300 }));
const out = { look, late, waited: await Promise.all(waiting) };
lines.return?.();
await r.close();
console.log(JSON.stringify(out));
