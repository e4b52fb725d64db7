// A child process for etcd.test.ts: its own etcd, SIGKILLed mid-way. Prints one JSON line of what
// each call settled with, closes the rendezvous, and must then exit on its own (the parent times it).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EtcdRendezvous } from '../dist/index.js';

const freePort = async () => {
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const port = s.address().port;
  await new Promise((r) => s.close(r));
  return port;
};
const dir = mkdtempSync(join(tmpdir(), 'trellis-etcd-outage-'));
const [client, peer] = [await freePort(), await freePort()];
const url = `http://127.0.0.1:${client}`;
const etcd = spawn(
  'etcd',
  [
    '--data-dir',
    join(dir, 'data'),
    '--listen-client-urls',
    url,
    '--advertise-client-urls',
    url,
    '--listen-peer-urls',
    `http://127.0.0.1:${peer}`,
    '--initial-advertise-peer-urls',
    `http://127.0.0.1:${peer}`,
    '--initial-cluster',
    `default=http://127.0.0.1:${peer}`,
  ],
  { stdio: 'ignore' },
);
let r;
for (const end = Date.now() + 20_000; ; ) {
  try {
    r = await EtcdRendezvous.connect({ hosts: url, prefix: 'o/', timeoutMs: 2000 });
    break;
  } catch (e) {
    if (Date.now() > end) throw e;
    await new Promise((res) => setTimeout(res, 200));
  }
}
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
etcd.kill('SIGKILL');
await new Promise((res) => etcd.once('exit', res));
const look = await outcome(r.get('have', { timeoutMs: 0 }));
const late = await outcome(r.get('other', { timeoutMs: 300 }));
const out = { look, late, waited: await Promise.all(waiting) };
await r.close();
rmSync(dir, { recursive: true, force: true });
console.log(JSON.stringify(out));
