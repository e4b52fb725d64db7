// TcpStore: set/get, barriers, membership, and the shared-secret token.

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { outcome } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { TcpStore } from '../src/index.js';

let open: TcpStore[] = [];
afterEach(async () => {
  for (const s of open.reverse()) await s.close();
  open = [];
});
async function cluster(n: number) {
  const host = await TcpStore.serve({ host: '127.0.0.1' });
  const clients = await Promise.all(
    Array.from({ length: n }, () => TcpStore.connect({ host: '127.0.0.1', port: host.port! })),
  );
  open.push(host, ...clients);
  return { host, clients };
}

/** A Node process that imports the built TcpStore and runs `body` (stdout piped, stderr shown). */
function storeProcess(body: string) {
  const dist = new URL('../dist/index.js', import.meta.url).href;
  return spawn(
    process.execPath,
    ['--input-type=module', '-e', `import { TcpStore } from '${dist}';\n${body}`],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
}

describe('TcpStore', () => {
  it('publishes and looks up; a get waits for the key; a missing key times out', async () => {
    const { host, clients } = await cluster(2);
    const waiting = clients[0]!.get('addr/1');
    await clients[1]!.set('addr/1', 'tna1:fi-shm:AAAA');
    expect(await waiting).toBe('tna1:fi-shm:AAAA');
    expect(await host.get('addr/1')).toBe('tna1:fi-shm:AAAA');
    await clients[0]!.set('addr/1', 'replaced');
    expect(await clients[1]!.get('addr/1')).toBe('replaced');
    expect(await outcome(clients[0]!.get('nobody', { timeoutMs: 50 }))).toBe(
      "TIMEOUT: TcpStore.get('nobody'): nothing within 50 ms",
    );
  });

  it('a barrier releases everyone once all members entered, round after round', async () => {
    const { host, clients } = await cluster(2);
    const all = [host, ...clients];
    for (let round = 0; round < 3; round++) {
      const order: number[] = [];
      const first = all.slice(0, 2).map((s, i) => s.barrier('step', 3).then(() => order.push(i)));
      await new Promise((r) => setTimeout(r, 20));
      expect(order).toEqual([]); // two of three are in: nobody leaves
      await all[2]!.barrier('step', 3);
      await Promise.all(first);
      expect(order.sort()).toEqual([0, 1]);
    }
  });

  it('members that pass different sizes are all refused and the round never releases (the last to enter decided it once)', async () => {
    const host = await TcpStore.serve({ port: 0, host: '127.0.0.1' });
    const [a, b, c] = await Promise.all(
      [0, 1, 2].map(() => TcpStore.connect({ host: '127.0.0.1', port: host.port! })),
    );
    try {
      const refused = (name: string, size: number, first: number, other: number) =>
        `INVALID_ARGUMENT: TcpStore.barrier('${name}'): round 1's members passed different sizes (${first}, then ${other}; this one ${size}): the round does not release — every member of a barrier passes the same size`;
      // 3 then 2: once both were released with 2 entered. 2 then 3: once both timed out.
      for (const [name, first, then] of [
        ['m1', 3, 2],
        ['m2', 2, 3],
      ] as const) {
        const pa = outcome(a!.barrier(name, first, { timeoutMs: 3000 }));
        await new Promise((r) => setTimeout(r, 50));
        const pb = outcome(b!.barrier(name, then, { timeoutMs: 3000 }));
        expect(await pa).toBe(refused(name, first, first, then));
        expect(await pb).toBe(refused(name, then, first, then));
        // A member entering the spoilt round later is refused too, whatever its size.
        expect(await outcome(c!.barrier(name, first, { timeoutMs: 3000 }))).toBe(
          refused(name, first, first, then),
        );
      }
      // The next round, with one size, releases.
      await Promise.all([a!, b!, c!].map((s) => s.barrier('m1', 3, { timeoutMs: 3000 })));
    } finally {
      await Promise.all([a!, b!, c!].map((s) => s.close()));
      await host.close();
    }
  });

  it('a host that closes as soon as its own barrier released still releases the other members (in other processes)', async () => {
    for (let trial = 0; trial < 5; trial++) {
      const host = await TcpStore.serve({ host: '127.0.0.1' });
      const kids = [0, 1].map(() =>
        storeProcess(
          `const s = await TcpStore.connect({ host: '127.0.0.1', port: ${host.port} });
           console.log('in');
           try { await s.barrier('b', 3); console.log('released'); } catch (e) { console.log(e.code); }
           process.exit(0);`,
        ),
      );
      const last = kids.map(
        (k) =>
          new Promise<string>((r) => {
            let o = '';
            k.stdout!.on('data', (d) => {
              o += d;
            });
            k.on('exit', () => r(o.trim().split('\n').at(-1)!));
          }),
      );
      await Promise.all(kids.map((k) => new Promise((r) => k.stdout!.once('data', r))));
      await host.barrier('b', 3);
      await host.close();
      expect(await Promise.all(last)).toEqual(['released', 'released']);
    }
  }, 60_000);

  it('membership: joins are seen by watchers; a member whose process dies leaves its groups', async () => {
    const { host, clients } = await cluster(1);
    const seen: Array<Record<string, string>> = [];
    await host.join('decode', 'd0', 'addr-d0', (m) => seen.push(m));
    await clients[0]!.join('decode', 'd1', 'addr-d1');
    // A member in another process, killed.
    const child = storeProcess(
      `const s = await TcpStore.connect({ host: '127.0.0.1', port: ${host.port} });
       await s.join('decode', 'd2', 'addr-d2');
       console.log('joined');
       setInterval(() => {}, 1000);`,
    );
    await new Promise<void>((r) => child.stdout!.once('data', () => r()));
    const has = (m: Record<string, string>) => Object.keys(m).sort().join(',');
    await new Promise((r) => setTimeout(r, 20));
    expect(seen.map(has)).toEqual(['d0', 'd0,d1', 'd0,d1,d2']);
    child.kill('SIGKILL');
    await new Promise((r) => child.on('exit', r));
    await new Promise((r) => setTimeout(r, 100));
    expect(seen.map(has).at(-1)).toBe('d0,d1');
    expect(seen.at(-1)).toEqual({ d0: 'addr-d0', d1: 'addr-d1' });
    // A join that changes nothing a watcher sees (the same name and value again) is not reported.
    const before = seen.length;
    await clients[0]!.join('decode', 'd1', 'addr-d1');
    await new Promise((r) => setTimeout(r, 50));
    expect(seen.length).toBe(before);
    // A second join of a name takes it over: its value, and its lease (the name leaves with the
    // second joiner's connection, while the first's still lives).
    const other = await TcpStore.connect({ host: '127.0.0.1', port: host.port! });
    await other.join('decode', 'd1', 'addr-d1b');
    await new Promise((r) => setTimeout(r, 50));
    expect(seen.at(-1)).toEqual({ d0: 'addr-d0', d1: 'addr-d1b' });
    await other.close();
    await new Promise((r) => setTimeout(r, 100));
    expect(seen.at(-1)).toEqual({ d0: 'addr-d0' });
  });

  it('a missing or malformed options argument is refused with INVALID_ARGUMENT, not a TypeError', async () => {
    const connect = TcpStore.connect as unknown as (o: unknown) => Promise<TcpStore>;
    const serve = TcpStore.serve as unknown as (o: unknown) => Promise<TcpStore>;
    expect(await outcome(connect(undefined))).toBe(
      'INVALID_ARGUMENT: TcpStore.connect: pass an options object {host, port, timeoutMs?, token?}, got undefined',
    );
    expect(await outcome(connect(null))).toBe(
      'INVALID_ARGUMENT: TcpStore.connect: pass an options object {host, port, timeoutMs?, token?}, got null',
    );
    expect(await outcome(connect('127.0.0.1:29500'))).toBe(
      'INVALID_ARGUMENT: TcpStore.connect: pass an options object {host, port, timeoutMs?, token?}, got string',
    );
    expect(await outcome(serve(null))).toBe(
      'INVALID_ARGUMENT: TcpStore.serve: pass an options object {port?, host?, token?}, got null',
    );
    expect(await outcome(serve({ host: 7 }))).toBe(
      'INVALID_ARGUMENT: TcpStore.serve: host must be a non-empty string',
    );
    // A key that is not an option (a typo would be ignored): refused before anything listens.
    expect(await outcome(connect({ host: '127.0.0.1', port: 1, timeout: 5 }))).toBe(
      'INVALID_ARGUMENT: TcpStore.connect: "timeout" is not an option (pass an options object {host, port, timeoutMs?, token?})',
    );
    expect(await outcome(serve({ port: 0, secret: 'x' }))).toBe(
      'INVALID_ARGUMENT: TcpStore.serve: "secret" is not an option (pass an options object {port?, host?, token?})',
    );
  });

  it('get, barrier, set and join refuse bad arguments with INVALID_ARGUMENT before anything reaches the store', async () => {
    const { host, clients } = await cluster(1);
    const c = clients[0]!;
    const any = c as unknown as {
      get(k: string, o: unknown): Promise<string>;
      barrier(n: string, s: number, o: unknown): Promise<void>;
      set(k: string, v: unknown): Promise<void>;
      join(g: string, m: unknown, v: unknown, f?: unknown): Promise<() => void>;
    };
    const opts = 'pass an options object {timeoutMs?}';
    expect(await outcome(any.get('k', null))).toBe(`INVALID_ARGUMENT: TcpStore.get: ${opts}, got null`);
    expect(await outcome(any.get('k', 5))).toBe(`INVALID_ARGUMENT: TcpStore.get: ${opts}, got number`);
    expect(await outcome(any.get('k', []))).toBe(`INVALID_ARGUMENT: TcpStore.get: ${opts}, got an array`);
    expect(await outcome(any.barrier('b', 1, null))).toBe(
      `INVALID_ARGUMENT: TcpStore.barrier: ${opts}, got null`,
    );
    expect(await outcome(any.get('k', { timeout: 5 }))).toBe(
      `INVALID_ARGUMENT: TcpStore.get: "timeout" is not an option (${opts})`,
    );
    // Keys and names: the argument named (it once said only "a key is a non-empty string").
    const name = (op: string, what: string, got: string) =>
      `INVALID_ARGUMENT: TcpStore.${op}: ${what} must be a non-empty string of at most 1024 characters, got ${got}`;
    expect(await outcome(any.get('', {}))).toBe(name('get', 'key', '""'));
    expect(await outcome(any.set('x'.repeat(1025), 'v'))).toBe(name('set', 'key', '1025 characters'));
    expect(await outcome(any.barrier('', 1, {}))).toBe(name('barrier', 'name', '""'));
    expect(await outcome(any.join(7 as unknown as string, 'm', 'v'))).toBe(name('join', 'group', '7'));
    expect(await outcome(any.set('k', 5))).toBe('INVALID_ARGUMENT: TcpStore.set: value must be a string');
    expect(await outcome(any.join('g', '', 'v'))).toBe(
      'INVALID_ARGUMENT: TcpStore.join: member must be a non-empty string of at most 1024 characters, got ""',
    );
    expect(await outcome(any.join('g', 'm', 5))).toBe(
      'INVALID_ARGUMENT: TcpStore.join: value must be a string',
    );
    expect(await outcome(any.join('g', 'm', 'v', 'not a function'))).toBe(
      "INVALID_ARGUMENT: TcpStore.join: onChange must be a function (called with the group's members), or left out",
    );
    // None of them joined or set anything: a watcher sees only itself, and 'k' is unset.
    const seen: Array<Record<string, string>> = [];
    const stop = await host.join('g', 'host', 'h', (m) => seen.push(m));
    expect(seen.at(-1)).toEqual({ host: 'h' });
    stop();
    expect(await outcome(host.get('k', { timeoutMs: 50 }))).toBe(
      "TIMEOUT: TcpStore.get('k'): nothing within 50 ms",
    );
  });

  it('a host that stops answering (SIGSTOP): every call settles by its deadline; close() settles pending calls CLOSED; timeoutMs 0 looks once', async () => {
    const child = storeProcess(
      `const s = await TcpStore.serve({ host: '127.0.0.1', token: 'tk' });
       await s.set('there', 'v');
       process.stdout.write(s.port + '\\n');
       setInterval(() => {}, 1000);`,
    );
    try {
      // (A string, not console.log of a number: with FORCE_COLOR, as under nx, that is coloured.)
      const port = Number(
        await new Promise<string>((r) => child.stdout!.once('data', (d) => r(String(d).trim()))),
      );
      const c = await TcpStore.connect({ host: '127.0.0.1', port, token: 'tk', timeoutMs: 400 });
      open.push(c);
      expect(await c.get('there', { timeoutMs: 0 })).toBe('v');
      expect(await outcome(c.get('absent', { timeoutMs: 0 }))).toBe(
        "TIMEOUT: TcpStore.get('absent'): not published (timeoutMs 0: looked once)",
      );
      child.kill('SIGSTOP');
      const t0 = Date.now();
      expect(
        await Promise.all([
          outcome(c.get('k', { timeoutMs: 200 })),
          outcome(c.barrier('b', 2, { timeoutMs: 200 })),
          // No timeoutMs: the entry is still bounded by connect's timeoutMs.
          outcome(c.barrier('b2', 2)),
          outcome(c.set('k', 'v')),
          outcome(c.join('g', 'm', 'v')),
          outcome(TcpStore.connect({ host: '127.0.0.1', port, token: 'tk', timeoutMs: 300 })),
          // timeoutMs 0 looks once; the look waits for the store's answer up to connect's timeoutMs.
          outcome(c.get('there', { timeoutMs: 0 })),
        ]),
      ).toEqual([
        "TIMEOUT: TcpStore.get('k'): nothing within 200 ms",
        "TIMEOUT: TcpStore.barrier('b'): round 1 not complete within 200 ms (the store had not answered this member's entry)",
        "PEER_LOST: TcpStore.barrier('b2'): the store did not answer within 400 ms (connect's timeoutMs); it may still apply the request",
        "PEER_LOST: TcpStore.set('k'): the store did not answer within 400 ms (connect's timeoutMs); it may still apply the request",
        "PEER_LOST: TcpStore.join('g'): the store did not answer within 400 ms (connect's timeoutMs); it may still apply the request",
        `TIMEOUT: TcpStore.connect: the store at 127.0.0.1:${port} took the connection and did not answer the token's check within 300 ms`,
        "TIMEOUT: TcpStore.get('there'): timeoutMs 0 looks once, and the store did not answer the look within 400 ms (connect's timeoutMs)",
      ]);
      expect(Date.now() - t0).toBeLessThan(3000);
      // A call pending when the client closes settles CLOSED, not PEER_LOST.
      const pending = outcome(c.get('never'));
      await c.close();
      expect(await pending).toBe('CLOSED: TcpStore: closed');
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a port that takes the connection and drops it (a proxy before the store is up) is dialled again until the store answers, or TIMEOUT', async () => {
    // Accepts and closes every connection, then gives its port to a store 600 ms later.
    const dropper = createServer((sock) => sock.destroy());
    await new Promise<void>((r) => dropper.listen(0, '127.0.0.1', () => r()));
    const port = (dropper.address() as { port: number }).port;
    let store: TcpStore | undefined;
    setTimeout(() => {
      dropper.close(() => {
        void TcpStore.serve({ host: '127.0.0.1', port, token: 'tk' }).then((s) => {
          store = s;
          open.push(s);
        });
      });
    }, 600);
    const c = await TcpStore.connect({ host: '127.0.0.1', port, token: 'tk', timeoutMs: 10_000 });
    open.push(c);
    await c.set('k', 'v');
    expect(await store!.get('k')).toBe('v');
    // Without a store ever: TIMEOUT at the deadline, saying what it met.
    const dropper2 = createServer((sock) => sock.destroy());
    await new Promise<void>((r) => dropper2.listen(0, '127.0.0.1', () => r()));
    const port2 = (dropper2.address() as { port: number }).port;
    try {
      for (const token of ['tk', undefined])
        expect(
          await outcome(TcpStore.connect({ host: '127.0.0.1', port: port2, token, timeoutMs: 400 })),
        ).toBe(
          `TIMEOUT: TcpStore.connect: no store at 127.0.0.1:${port2} within 400 ms (the connection was taken and dropped before a store answered)`,
        );
    } finally {
      dropper2.close();
    }
  });

  it('connecting to nothing fails with TIMEOUT and says where it looked', async () => {
    expect(await outcome(TcpStore.connect({ host: '127.0.0.1', port: 1, timeoutMs: 200 }))).toMatch(
      /^TIMEOUT: TcpStore\.connect: no store at 127\.0\.0\.1:1 within 200 ms \(connect ECONNREFUSED/,
    );
  });
});

describe('TcpStore with a shared-secret token', () => {
  it('serves only clients that present the token; others are refused with REMOTE_ACCESS', async () => {
    const host = await TcpStore.serve({ host: '127.0.0.1', token: 's3cret' });
    open.push(host);
    const port = host.port!;
    const good = await TcpStore.connect({ host: '127.0.0.1', port, token: 's3cret' });
    open.push(good);
    await good.set('addr/0', 'x');
    expect(await host.get('addr/0')).toBe('x');
    expect(await outcome(TcpStore.connect({ host: '127.0.0.1', port, token: 'guess' }))).toBe(
      'REMOTE_ACCESS: TcpStore.connect: authenticating to the store: TcpStore: the store refused the request: the token does not match the store',
    );
    // Without the token: turned away at connect (its first request is refused).
    expect(await outcome(TcpStore.connect({ host: '127.0.0.1', port }))).toBe(
      'REMOTE_ACCESS: TcpStore.connect: the store refused the request: this store needs a token; connect with {token}',
    );
    // Nothing the refused clients sent reached the store.
    expect(await outcome(host.get('addr/1', { timeoutMs: 50 }))).toBe(
      "TIMEOUT: TcpStore.get('addr/1'): nothing within 50 ms",
    );
    expect(await outcome(TcpStore.serve({ token: '' }))).toBe(
      'INVALID_ARGUMENT: TcpStore.serve: token must be a non-empty string',
    );
    // A token to a store that has none: one side is configured wrong (it was taken, and the
    // client believed its store guarded).
    const open2 = await TcpStore.serve({ host: '127.0.0.1' });
    open.push(open2);
    expect(await outcome(TcpStore.connect({ host: '127.0.0.1', port: open2.port!, token: 's3cret' }))).toBe(
      'REMOTE_ACCESS: TcpStore.connect: authenticating to the store: TcpStore: the store refused the request: this store has no token; connect without one, or serve the store with {token}',
    );
  });

  it('a store that goes away: pending requests and every later one fail PEER_LOST at once (none left unsettled)', async () => {
    const { host, clients } = await cluster(1);
    const c = clients[0]!;
    await c.set('k', 'v');
    // Its outcome is taken before the host closes: the rejection comes while close() runs.
    const pending = outcome(c.get('never'));
    await host.close();
    expect(await pending).toBe('PEER_LOST: TcpStore: the connection to the store was lost');
    // Requested after the loss: refused at once, not left waiting for an answer that cannot come
    // (a set has no deadline; a get's own would have turned it into TIMEOUT).
    const t0 = Date.now();
    expect(await outcome(c.set('k2', 'v'))).toBe(
      "PEER_LOST: TcpStore.set('k2'): the connection to the store was lost earlier; connect again (TcpStore.connect) once it is back",
    );
    expect(await outcome(c.get('k', { timeoutMs: 5000 }))).toBe(
      "PEER_LOST: TcpStore.get('k'): the connection to the store was lost earlier; connect again (TcpStore.connect) once it is back",
    );
    expect(Date.now() - t0).toBeLessThan(5000);
    await c.close();
    expect(await outcome(c.set('k3', 'v'))).toBe('CLOSED: TcpStore: closed');
  });

  it('refuses bad ports and deadlines at once, and names the barrier that timed out', async () => {
    expect(await outcome(TcpStore.connect({ host: '127.0.0.1', port: 70000 }))).toBe(
      'INVALID_ARGUMENT: TcpStore.connect: port must be an integer in 1..65535, got 70000',
    );
    expect(await outcome(TcpStore.serve({ port: -1 }))).toBe(
      'INVALID_ARGUMENT: TcpStore.serve: port must be an integer in 0..65535, got -1',
    );
    // A string is shown quoted: "0" is not the number 0.
    expect(await outcome(TcpStore.serve({ port: '0' as unknown as number }))).toBe(
      'INVALID_ARGUMENT: TcpStore.serve: port must be an integer in 0..65535, got "0"',
    );
    // connect's timeoutMs bounds connecting and every later set's answer: 0 would allow none.
    expect(await outcome(TcpStore.connect({ host: '127.0.0.1', port: 1, timeoutMs: 0 }))).toBe(
      "INVALID_ARGUMENT: TcpStore.connect: timeoutMs must be > 0 (it bounds connecting and each later set's or join's answer), got 0",
    );
    expect(await outcome(TcpStore.connect({ host: '127.0.0.1', port: 1, timeoutMs: -1 }))).toBe(
      'INVALID_ARGUMENT: TcpStore.connect: timeoutMs must be a finite number > 0, got -1',
    );
    // A port already in use: the argument's fault, with what to do.
    const taken = await TcpStore.serve({ host: '127.0.0.1' });
    const inUse = await outcome(TcpStore.serve({ host: '127.0.0.1', port: taken.port }));
    expect(inUse).toMatch(
      /^INVALID_ARGUMENT: TcpStore\.serve: cannot listen on 127\.0\.0\.1:\d+: listen EADDRINUSE/,
    );
    expect(inUse).toMatch(/\(give another port, or 0 for any free one, or a host address of this machine\)$/);
    await taken.close();
    const { clients } = await cluster(2);
    expect(await outcome(clients[0]!.get('k', { timeoutMs: -5 }))).toBe(
      'INVALID_ARGUMENT: TcpStore.get: timeoutMs must be a finite number >= 0, got -5',
    );
    expect(await outcome(clients[0]!.barrier('b', 2, { timeoutMs: Number.NaN }))).toBe(
      'INVALID_ARGUMENT: TcpStore.barrier: timeoutMs must be a finite number >= 0, got NaN',
    );
    expect(await outcome(clients[0]!.get('k', { timeoutMs: '5' as unknown as number }))).toBe(
      'INVALID_ARGUMENT: TcpStore.get: timeoutMs must be a finite number >= 0, got "5"',
    );
    expect(await outcome(clients[0]!.barrier('b', '2' as unknown as number))).toBe(
      'INVALID_ARGUMENT: TcpStore.barrier: size must be a positive integer, got "2"',
    );
    expect(await outcome(clients[0]!.barrier('b', 2, { timeoutMs: 50 }))).toBe(
      "TIMEOUT: TcpStore.barrier('b'): round 1 not complete within 50 ms (1 of 2 had entered when this one did)",
    );
  });

  it('a port that answers with something else is dropped, not crashed on', async () => {
    const { createServer } = await import('node:net');
    const server = createServer((s) => s.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as { port: number }).port;
    // Dialled again (it may be a proxy before the store is up) until timeoutMs, then TIMEOUT
    // saying what answered.
    expect(await outcome(TcpStore.connect({ host: '127.0.0.1', port, timeoutMs: 400 }))).toBe(
      `TIMEOUT: TcpStore.connect: no store at 127.0.0.1:${port} within 400 ms (the connection was taken and dropped before a store answered: what answered is not a store (it sent "HTTP/1.1 400 Bad Request"))`,
    );
    server.close();
  });
});
