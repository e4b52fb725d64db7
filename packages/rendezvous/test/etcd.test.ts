// EtcdRendezvous against a real etcd (Debian's etcd-server, installed by scripts/setup.sh), started
// here on free ports with a throw-away data directory.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { outcome } from '@trellis/core/conformance';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdRendezvous } from '../src/index.js';

let etcd: ChildProcess;
let url = '';
const dir = mkdtempSync(join(tmpdir(), 'trellis-etcd-'));
const open: EtcdRendezvous[] = [];

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** An etcd on free ports with its data under `dir` (`name`), answering once `connect` succeeds. */
async function startEtcd(
  name: string,
  ports?: { client: number; peer: number },
): Promise<{ proc: ChildProcess; url: string; ports: { client: number; peer: number } }> {
  const client = ports?.client ?? (await freePort());
  const peer = ports?.peer ?? (await freePort());
  const at = `http://127.0.0.1:${client}`;
  const proc = spawn(
    'etcd',
    [
      '--data-dir',
      join(dir, name),
      '--listen-client-urls',
      at,
      '--advertise-client-urls',
      at,
      '--listen-peer-urls',
      `http://127.0.0.1:${peer}`,
      '--initial-advertise-peer-urls',
      `http://127.0.0.1:${peer}`,
      '--initial-cluster',
      `default=http://127.0.0.1:${peer}`,
    ],
    { stdio: 'ignore' },
  );
  proc.on('error', (e) => {
    throw new Error(`cannot start etcd (install etcd-server: scripts/setup.sh does): ${e.message}`);
  });
  const end = Date.now() + 20_000;
  for (;;) {
    try {
      open.push(await EtcdRendezvous.connect({ hosts: at, timeoutMs: 1000 }));
      return { proc, url: at, ports: { client, peer } };
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** The child's exit code, or null when it had not exited within `ms` (it is SIGKILLed then). */
function exitCode(child: ChildProcess, ms: number): Promise<number | null> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(null);
    }, ms);
    child.once('exit', (c) => {
      clearTimeout(t);
      resolve(c);
    });
  });
}

beforeAll(async () => {
  ({ proc: etcd, url } = await startEtcd('data'));
}, 30_000);

afterAll(async () => {
  for (const r of open) await r.close();
  etcd?.kill('SIGTERM');
  await new Promise((r) => etcd?.once('exit', r));
  rmSync(dir, { recursive: true, force: true });
});

async function client(prefix: string, leaseTtlS = 10) {
  const r = await EtcdRendezvous.connect({ hosts: url, prefix, leaseTtlS });
  open.push(r);
  return r;
}

describe('EtcdRendezvous on a real etcd', () => {
  it('publishes and looks up; a get waits for the key; a missing key times out', async () => {
    const [a, b] = [await client('t1/'), await client('t1/')];
    const waiting = a.get('addr/1');
    await b.set('addr/1', 'tna1:fi-shm:AAAA');
    expect(await waiting).toBe('tna1:fi-shm:AAAA');
    await a.set('addr/1', 'replaced');
    expect(await b.get('addr/1')).toBe('replaced');
    expect(await outcome(a.get('nobody', { timeoutMs: 100 }))).toBe(
      "TIMEOUT: EtcdRendezvous.get('nobody'): not published within 100 ms",
    );
    // timeoutMs 0 looks once: the value when it is there, TIMEOUT when not.
    expect(await a.get('addr/1', { timeoutMs: 0 })).toBe('replaced');
    expect(await outcome(a.get('nobody', { timeoutMs: 0 }))).toBe(
      "TIMEOUT: EtcdRendezvous.get('nobody'): not published (timeoutMs 0: looked once)",
    );
  });

  it('a barrier releases everyone once all members entered, round after round', async () => {
    const all = [await client('t2/'), await client('t2/'), await client('t2/')];
    for (let round = 0; round < 2; round++) {
      const done: number[] = [];
      const first = all.slice(0, 2).map((s, i) => s.barrier('step', 3).then(() => done.push(i)));
      await new Promise((r) => setTimeout(r, 100));
      expect(done).toEqual([]);
      await all[2]!.barrier('step', 3);
      await Promise.all(first);
      expect(done.sort()).toEqual([0, 1]);
    }
  });

  it('members that pass different sizes are all refused and the round never releases; released rounds leave no records once every member closed', async () => {
    const [a, b, c] = [await client('t2s/'), await client('t2s/'), await client('t2s/')];
    // Round 1: a enters for 3, b for 2 — both refused (b's entry would otherwise have released
    // itself with 2 entered while a waited for 3), and so is c, entering later for 3.
    const pa = outcome(a.barrier('m', 3, { timeoutMs: 3000 }));
    await new Promise((r) => setTimeout(r, 100));
    const pb = outcome(b.barrier('m', 2, { timeoutMs: 3000 }));
    const refused = (size: number, other: number) =>
      `INVALID_ARGUMENT: EtcdRendezvous.barrier('m'): round 1's members passed different sizes (this one ${size}, another ${other}): the round does not release — every member of a barrier passes the same size`;
    expect(await pa).toBe(refused(3, 2));
    expect(await pb).toBe(refused(2, 3));
    expect(await outcome(c.barrier('m', 3, { timeoutMs: 3000 }))).toBe(refused(3, 2));
    // The next round, with one size, releases.
    await Promise.all([a, b, c].map((s) => s.barrier('m', 3, { timeoutMs: 5000 })));
    await Promise.all([a, b, c].map((s) => s.barrier('n', 3, { timeoutMs: 5000 })));
    // a's call times out; its entry still counts, and b's entry then releases the round.
    expect(await outcome(a.barrier('p', 2, { timeoutMs: 100 }))).toBe(
      "TIMEOUT: EtcdRendezvous.barrier('p'): not all 2 members within 100 ms",
    );
    await b.barrier('p', 2, { timeoutMs: 5000 });
    const raw = new Etcd3({ hosts: url });
    try {
      const keys = async () => (await raw.getAll().prefix('t2s/__barrier/').keys()).sort();
      // Round 1 of 'm' (refused) keeps its three entries; rounds that released keep theirs
      // until their members close.
      expect((await keys()).filter((k) => k.startsWith('t2s/__barrier/m/1/'))).toHaveLength(3);
      expect((await keys()).filter((k) => k.startsWith('t2s/__barrier/n/1/'))).toHaveLength(4);
      await a.close();
      expect((await keys()).filter((k) => k.startsWith('t2s/__barrier/n/1/'))).toHaveLength(3);
      await Promise.all([b.close(), c.close()]);
      // Every released round's entries and marker are gone — also the entry of a member whose
      // own call timed out before its round released; the refused round's stay (counted).
      expect(await keys()).toEqual((await keys()).filter((k) => k.startsWith('t2s/__barrier/m/1/')));
      expect(await keys()).toHaveLength(3);
    } finally {
      raw.close();
    }
  });

  it('a watcher is told of changes only: a join of the same name and value again is not one', async () => {
    const [a, b] = [await client('t2w/'), await client('t2w/')];
    const seen: Array<Record<string, string>> = [];
    await a.join('g', 'a', 'va', (m) => seen.push(m));
    await b.join('g', 'b', 'vb');
    const until = async (n: number) => {
      const end = Date.now() + 3000;
      while (seen.length < n && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    };
    await until(2);
    await b.join('g', 'b', 'vb');
    await b.join('g', 'b', 'vb2');
    await until(3);
    await new Promise((r) => setTimeout(r, 300));
    expect(seen).toEqual([{ a: 'va' }, { a: 'va', b: 'vb' }, { a: 'va', b: 'vb2' }]);
  });

  it('membership: joins are seen by watchers; a member whose process dies leaves when its lease expires', async () => {
    const a = await client('t3/');
    const seen: string[] = [];
    await a.join('decode', 'd0', 'addr-d0', (m) => seen.push(Object.keys(m).sort().join(',')));
    const child = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { EtcdRendezvous } from '${new URL('../dist/index.js', import.meta.url).href}';
         const r = await EtcdRendezvous.connect({ hosts: '${url}', prefix: 't3/', leaseTtlS: 2 });
         await r.join('decode', 'd1', 'addr-d1');
         console.log('joined');
         setInterval(() => {}, 1000);`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((r) => child.stdout!.once('data', () => r()));
    const until = async (want: string, ms: number) => {
      const end = Date.now() + ms;
      while (seen.at(-1) !== want && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      return seen.at(-1);
    };
    expect(await until('d0,d1', 5000)).toBe('d0,d1');
    child.kill('SIGKILL');
    // The lease (2 s) expires without keep-alives; etcd deletes the key and the watcher sees it.
    expect(await until('d0', 10_000)).toBe('d0');
  }, 30_000);

  it('bad options are refused with INVALID_ARGUMENT before anything is dialled', async () => {
    const connect = EtcdRendezvous.connect as unknown as (o: unknown) => Promise<EtcdRendezvous>;
    expect(await outcome(connect(undefined))).toBe(
      'INVALID_ARGUMENT: EtcdRendezvous.connect: pass an options object {hosts, prefix?, leaseTtlS?, timeoutMs?}, got undefined',
    );
    expect(await outcome(connect({ hosts: ['127.0.0.1:2379'], ttl: 5 }))).toBe(
      'INVALID_ARGUMENT: EtcdRendezvous.connect: "ttl" is not an option (pass an options object {hosts, prefix?, leaseTtlS?, timeoutMs?})',
    );
    for (const hosts of [
      undefined,
      '',
      [],
      [''],
      2379,
      'notaurl',
      'ftp://127.0.0.1:1',
      'http://',
      ['http://127.0.0.1:1', 'bad url'],
    ])
      expect(await outcome(connect({ hosts })), JSON.stringify(hosts)).toBe(
        `INVALID_ARGUMENT: EtcdRendezvous.connect: hosts must be an http:// or https:// URL or a non-empty array of them (e.g. 'http://etcd0:2379'), got ${JSON.stringify(hosts)}`,
      );
    expect(await outcome(connect({ hosts: 'http://127.0.0.1:1', prefix: 3 }))).toBe(
      'INVALID_ARGUMENT: EtcdRendezvous.connect: prefix must be a string',
    );
    expect(await outcome(connect({ hosts: 'http://127.0.0.1:1', leaseTtlS: 0.5 }))).toBe(
      'INVALID_ARGUMENT: EtcdRendezvous.connect: leaseTtlS must be an integer number of seconds >= 1, got 0.5',
    );
    expect(await outcome(connect({ hosts: 'http://127.0.0.1:1', timeoutMs: -1 }))).toBe(
      'INVALID_ARGUMENT: EtcdRendezvous.connect: timeoutMs must be a finite number > 0, got -1',
    );
  });

  it("get and barrier keep their timeoutMs when etcd stops answering, set and join connect's; close() settles pending ones and refuses later ones with CLOSED", async () => {
    const [a, b] = [await client('t5/'), await client('t5/')];
    const c = await EtcdRendezvous.connect({ hosts: url, prefix: 't5/', timeoutMs: 400 });
    open.push(c);
    etcd.kill('SIGSTOP');
    try {
      const t0 = Date.now();
      const got = await Promise.all([
        outcome(a.get('k', { timeoutMs: 300 })),
        outcome(a.barrier('b', 2, { timeoutMs: 300 })),
        outcome(c.set('k', 'v')),
        outcome(c.join('g', 'm', 'v', () => {})),
        // No timeoutMs of its own: entering the round is bounded by connect's, as a set is.
        outcome(c.barrier('b2', 2)),
        // timeoutMs 0 looks once; the look waits for etcd's answer up to connect's timeoutMs.
        outcome(c.get('k', { timeoutMs: 0 })),
        // Connecting to an etcd that takes the connection and does not answer: bounded too.
        outcome(EtcdRendezvous.connect({ hosts: url, timeoutMs: 500 })),
      ]);
      expect(got).toEqual([
        "TIMEOUT: EtcdRendezvous.get('k'): etcd did not answer within 300 ms",
        "TIMEOUT: EtcdRendezvous.barrier('b'): etcd did not answer this member's entry within 300 ms",
        "PEER_LOST: EtcdRendezvous.set('k'): etcd did not answer (connect's timeoutMs) within 400 ms",
        "PEER_LOST: EtcdRendezvous.join('g'): etcd did not answer (connect's timeoutMs) within 400 ms",
        "PEER_LOST: EtcdRendezvous.barrier('b2'): etcd did not answer (connect's timeoutMs) within 400 ms",
        "TIMEOUT: EtcdRendezvous.get('k'): timeoutMs 0 looks once, and etcd did not answer the look (connect's timeoutMs) within 400 ms",
        `PEER_LOST: EtcdRendezvous.connect: etcd at ${url} does not answer (no answer within 500 ms)`,
      ]);
      expect(Date.now() - t0).toBeLessThan(5000);
      // close() does not wait on an etcd that does not answer past connect's timeoutMs.
      const t1 = Date.now();
      await c.close();
      expect(Date.now() - t1).toBeLessThan(3000);
    } finally {
      etcd.kill('SIGCONT');
    }
    const pending = [outcome(b.get('never')), outcome(b.barrier('c', 2))];
    await new Promise((r) => setTimeout(r, 100));
    await b.close();
    expect(await Promise.all(pending)).toEqual([
      'CLOSED: EtcdRendezvous: closed',
      'CLOSED: EtcdRendezvous: closed',
    ]);
    expect(
      await Promise.all([
        outcome(b.get('k', { timeoutMs: 100 })),
        outcome(b.barrier('d', 1)),
        outcome(b.set('k', 'v')),
        outcome(b.join('g', 'm', 'v')),
      ]),
    ).toEqual([
      'CLOSED: EtcdRendezvous.get: closed',
      'CLOSED: EtcdRendezvous.barrier: closed',
      'CLOSED: EtcdRendezvous.set: closed',
      'CLOSED: EtcdRendezvous.join: closed',
    ]);
  });

  it('a value etcd refuses as too large fails INVALID_ARGUMENT, and the client goes on at once', async () => {
    const a = await client('t6/');
    const big = 'v'.repeat(2 << 20);
    // Three in a row: the etcd3 client's default circuit breaker then stopped every call for 5 s.
    for (let i = 0; i < 3; i++)
      expect(await outcome(a.set('big', big))).toMatch(
        /^INVALID_ARGUMENT: EtcdRendezvous\.set\('big'\): etcd refused the request as too large \(its --max-request-bytes, 1\.5 MiB by default\)/,
      );
    await a.set('small', 'y');
    expect(await a.get('small', { timeoutMs: 0 })).toBe('y');
    await a.barrier('after', 1, { timeoutMs: 2000 });
    // Keys and names: the argument named.
    const name = (op: string, what: string, got: string) =>
      `INVALID_ARGUMENT: EtcdRendezvous.${op}: ${what} must be a non-empty string of at most 1024 characters, got ${got}`;
    expect(await outcome(a.get(''))).toBe(name('get', 'key', '""'));
    expect(await outcome(a.set('x'.repeat(1025), 'v'))).toBe(name('set', 'key', '1025 characters'));
    expect(await outcome(a.barrier('', 1))).toBe(name('barrier', 'name', '""'));
    expect(await outcome(a.join('', 'm', 'v'))).toBe(name('join', 'group', '""'));
  });

  it('etcd SIGKILLed: a look fails TIMEOUT, waits name the broken stream, and the process exits after close()', async () => {
    // An etcd of its own, SIGKILLed here once the child's waits are out.
    const own = await startEtcd('outage');
    const child = spawn(
      process.execPath,
      [new URL('./etcd-outage-child.mjs', import.meta.url).pathname, own.url],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    let out = '';
    child.stdout!.on('data', (d) => {
      out += String(d);
      if (out.startsWith('waiting\n') && own.proc.exitCode === null && !own.proc.killed) {
        own.proc.kill('SIGKILL');
        own.proc.once('exit', () => child.stdin!.end('killed\n'));
      }
    });
    // Before, a watch opened while etcd was down was never cancelled: the process stayed up for good.
    const code = await exitCode(child, 20_000);
    expect(code).toBe(0);
    const r = JSON.parse(out.slice('waiting\n'.length)) as { look: string; late: string; waited: string[] };
    expect(r.look).toMatch(
      /^TIMEOUT: EtcdRendezvous\.get\('have'\): timeoutMs 0 looks once, and etcd did not answer the look \(connect's timeoutMs\): etcd failed \(14 UNAVAILABLE/,
    );
    expect(r.late).toBe("TIMEOUT: EtcdRendezvous.get('other'): etcd did not answer within 300 ms");
    expect(r.waited).toEqual([
      expect.stringMatching(
        /^TIMEOUT: EtcdRendezvous\.get\('never'\): not published, and etcd stopped answering \(its watch stream broke: .+\) within 1500 ms$/,
      ),
      expect.stringMatching(
        /^TIMEOUT: EtcdRendezvous\.barrier\('b'\): not all 2 members, and etcd stopped answering \(its watch stream broke: .+\) within 1500 ms$/,
      ),
    ]);
  }, 40_000);

  it('etcd hung (SIGSTOP) with a member, its watch and a wait open: close() settles the wait CLOSED, and the process exits by itself', async () => {
    // Before, the calls open on the hung etcd's connection kept the process up for good: the
    // client now gives a connection up after an unanswered HTTP/2 ping (every 10 s, 3 s to answer).
    const own = await startEtcd('hung');
    const dist = new URL('../dist/index.js', import.meta.url).href;
    const child = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { EtcdRendezvous } from '${dist}';
        const r = await EtcdRendezvous.connect({ hosts: '${own.url}', prefix: 'h/', leaseTtlS: 2, timeoutMs: 1000 });
        await r.join('g', 'm', 'v', () => {});
        const wait = r.get('never', { timeoutMs: 60000 }).then((v) => 'ok ' + v, (e) => e.code + ': ' + e.message);
        process.stdout.write('ready\\n');
        process.stdin.once('data', async () => {
          process.stdin.destroy();
          await r.close();
          process.stdout.write('closed ' + (await wait) + '\\n');
        });`,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    let out = '';
    let stoppedAt = 0;
    child.stdout!.on('data', (d) => {
      out += String(d);
      if (out === 'ready\n') {
        own.proc.kill('SIGSTOP');
        stoppedAt = Date.now();
        child.stdin!.write('stopped\n');
      }
    });
    try {
      const code = await exitCode(child, 30_000);
      const took = Date.now() - stoppedAt;
      expect(out).toBe('ready\nclosed CLOSED: EtcdRendezvous: closed\n');
      expect(code).toBe(0);
      // close() waits 1 s (connect's timeoutMs); the connection is given up within 13 s of the hang.
      expect(took).toBeLessThan(20_000);
    } finally {
      own.proc.kill('SIGCONT');
      own.proc.kill('SIGKILL');
    }
  }, 40_000);

  it('a member whose lease was lost while etcd was down is put back under a new lease, and still leaves on close()', async () => {
    // An etcd of its own, SIGKILLed for longer than twice the member's 1 s lease (the client gives
    // the lease up), then restarted on the same data and ports: etcd keeps the old lease alive for
    // one more TTL after its restart, then expires it — the member must be on a new lease by then.
    const first = await startEtcd('relet');
    const exited = (p: ChildProcess) => new Promise((r) => p.once('exit', r));
    const member = await EtcdRendezvous.connect({
      hosts: first.url,
      prefix: 'rl/',
      leaseTtlS: 1,
      timeoutMs: 1000,
    });
    await member.join('g', 'm0', 'v0');
    // A name of the member's taken over by another joiner, who then left: it must stay gone.
    await member.join('g', 'x', 'vA');
    const taker = await EtcdRendezvous.connect({
      hosts: first.url,
      prefix: 'rl/',
      leaseTtlS: 1,
      timeoutMs: 1000,
    });
    await taker.join('g', 'x', 'vB');
    await taker.close();
    const gone = exited(first.proc);
    first.proc.kill('SIGKILL');
    await gone;
    await new Promise((r) => setTimeout(r, 3500));
    const again = await startEtcd('relet', first.ports);
    const restarted = Date.now();
    const watcher = await EtcdRendezvous.connect({ hosts: again.url, prefix: 'rl/', leaseTtlS: 10 });
    let seen: Record<string, string> = {};
    await watcher.join('g', 'w', 'x', (m) => {
      seen = m;
    });
    try {
      // Well past the old lease's expiry (its TTL, at least etcd's minimum of about 1.5 s, from the restart).
      await new Promise((r) => setTimeout(r, Math.max(0, restarted + 5000 - Date.now())));
      expect(seen).toEqual({ m0: 'v0', w: 'x' });
      await new Promise((r) => setTimeout(r, 2500)); // the new lease is kept alive
      expect(seen).toEqual({ m0: 'v0', w: 'x' });
      await member.close(); // revokes the new lease: the member leaves at once
      const end = Date.now() + 5000;
      while ('m0' in seen && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      expect(seen).toEqual({ w: 'x' });
    } finally {
      await member.close();
      await watcher.close();
      const down = exited(again.proc);
      again.proc.kill('SIGKILL');
      await down;
    }
  }, 40_000);

  it('an etcd that is not there fails with PEER_LOST', async () => {
    expect(await outcome(EtcdRendezvous.connect({ hosts: 'http://127.0.0.1:1', timeoutMs: 500 }))).toMatch(
      /^PEER_LOST: EtcdRendezvous\.connect: etcd at http:\/\/127\.0\.0\.1:1 does not answer/,
    );
  });
});
