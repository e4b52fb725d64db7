// The cross-process conformance suite on backend-efa (shm and tcp, 1 and 2 NICs: peers in other OS
// processes, killed, paused and handed bad descriptors), plus large transfers and the heartbeat.
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { MrDesc, NetAddr } from '@trellis/core';
import {
  BAD_DESCRIPTOR_CASE,
  defineCrossProcessSuite,
  fillXorshift as fill,
  HUNG_PEER_CASE,
  KILLED_PEER_ISOLATION_CASE,
  outcome,
  PeerProcess,
} from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { createEngine, fabricVersion } from '../src/index.js';

// The peer process imports the built package, as a user's process would.
const engineModule = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

for (const provider of ['shm', 'tcp'] as const) {
  for (const nics of [1, 2]) {
    // One NIC: as users get it (host writes between these processes take the same-host lane);
    // two: the lane off, every byte through the provider.
    const lane = nics === 1;
    defineCrossProcessSuite({
      name: `backend-efa provider=${provider} nics=${nics}${lane ? '' : ' sameHostLane=false'}`,
      engineModule,
      options: { provider, nics, opTimeoutMs: 3000, sameHostLane: lane },
      // The engine deadline (opTimeoutMs) plus polling and scheduling slack.
      killBoundMs: 3000 + 5000,
      // tcp refuses a bad key (REMOTE_ACCESS) and reconnects; so does shm on the 2.x we build.
      // libfabric 1.17's shm (Debian's) cannot keep one peer's fault from the others; the 2.x that
      // scripts/libfabric.sh builds (with our shm fix) runs every case.
      skip:
        provider === 'shm' && fabricVersion().startsWith('1.')
          ? {
              [BAD_DESCRIPTOR_CASE]:
                "libfabric 1.17's shm never completes a write through a key its target refuses, and the engine's later writes to every peer stall behind it (docs/security.md); libfabric 2.x with the fix scripts/libfabric.sh applies refuses it (REMOTE_ACCESS) and runs this case",
              // Seen in one of three fresh-clone runs: a peer SIGKILLed mid-transfer left a write to
              // the healthy peer posted past the engine deadline.
              [KILLED_PEER_ISOLATION_CASE]:
                "libfabric 1.17's shm can leave a healthy peer's write posted past the engine deadline when another peer is SIGKILLed mid-transfer (seen in 1 of 3 fresh-clone CI runs); 2.x runs this case",
              [HUNG_PEER_CASE]:
                "libfabric 1.17's shm stalls writes to every peer while one target process is stopped (its queue is never drained); 2.x runs this case",
            }
          : undefined,
    });
  }
}

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

describe('large transfers', () => {
  it('a 1 GiB region written across processes (shm) and verified', async () => {
    const engine = await createEngine({ provider: 'shm', nics: 2 });
    const peer = await PeerProcess.start(engineModule, { provider: 'shm', nics: 2 });
    cleanup.push(async () => {
      await peer.stop();
      await engine.close();
    });
    const size = 1 << 30;
    const { desc } = await peer.call<{ desc: string }>('register', { name: 'big', size, remote: true });
    const dst = MrDesc.parse(desc);
    const src = await engine.registerMemory(size);
    fill(src.buffer!, 99);
    const req = { src, length: size, dst, imm: 3 };
    await engine.submitSingleWrite(req);
    await peer.call('wait', {
      imm: 3,
      n: engine.expectedImms({ kind: 'single', ...req }),
      timeoutMs: 60_000,
    });
    const { sha256 } = await peer.call<{ sha256: string }>('sha256', { name: 'big' });
    expect(sha256).toBe(sha(src.buffer!));
  }, 120_000);

  it('10^5 pages in one paged write (tcp, 2 NICs), every page checked', async () => {
    const a = await createEngine({ provider: 'tcp', nics: 2 });
    const b = await createEngine({ provider: 'tcp', nics: 2 });
    cleanup.push(async () => {
      await a.close();
      await b.close();
    });
    const n = 100_000;
    const page = 64;
    const src = await a.registerMemory(n * page);
    const dst = await b.registerMemory(n * page, { remote: true });
    fill(src.buffer!, 3);
    const srcPages = Uint32Array.from({ length: n }, (_, i) => i);
    const dstPages = Uint32Array.from({ length: n }, (_, i) => (i * 7919) % n);
    const done = b.immCounter(4).wait(n, { timeoutMs: 60_000 });
    await a.submitPagedWrites({
      src,
      srcPages,
      srcStride: page,
      dst: dst.desc,
      dstPages,
      dstStride: page,
      pageBytes: page,
      imm: 4,
    });
    await done;
    for (let i = 0; i < n; i++) {
      const d = dstPages[i]! * page;
      expect(
        Buffer.compare(dst.buffer!.subarray(d, d + page), src.buffer!.subarray(i * page, (i + 1) * page)),
      ).toBe(0);
    }
    expect(a.stats().nics.map((x) => x.writeOps)).toEqual([n / 2, n / 2]);
  }, 120_000);
});

/**
 * A tcp engine (same-host lane off, engine deadline `opTimeoutMs`) and a peer process with a region
 * of `bytes` (64 KiB by default) this engine has written to once: the connection is up, ready for
 * the peer to be killed.
 */
async function writtenTcpTarget(opTimeoutMs: number, bytes = 1 << 16) {
  const engine = await createEngine({ provider: 'tcp', sameHostLane: false, opTimeoutMs });
  cleanup.push(async () => {
    await engine.close();
  });
  const peer = await PeerProcess.start(engineModule, { provider: 'tcp', sameHostLane: false });
  const { desc } = await peer.call<{ desc: string }>('register', { name: 'kv', size: bytes, remote: true });
  const dst = MrDesc.parse(desc);
  const src = await engine.registerMemory(bytes);
  await engine.submitSingleWrite({ src, length: 1 << 16, dst, imm: 1 });
  return { engine, peer, dst, src };
}

describe('heartbeat', () => {
  it('a peer process SIGKILLed with writes in flight: the heartbeat loses it and every write settles, long before the engine deadline', async () => {
    const engine = await createEngine({ provider: 'tcp', heartbeatMs: 100, opTimeoutMs: 120_000 });
    const peer = await PeerProcess.start(engineModule, { provider: 'tcp' });
    cleanup.push(async () => {
      await engine.close();
    });
    const lost: string[] = [];
    engine.onPeerLost((p) => lost.push(p.toString()));
    const { desc } = await peer.call<{ desc: string }>('register', {
      name: 'kv',
      size: 16 << 20,
      remote: true,
    });
    const dst = MrDesc.parse(desc);
    const src = await engine.registerMemory(16 << 20);
    const outcomes: string[] = [];
    const ops = Array.from({ length: 100 }, () =>
      engine.submitSingleWrite({ src, length: 16 << 20, dst, imm: 1 }).then(
        () => void outcomes.push('resolved'),
        (e: { code: string }) => void outcomes.push(e.code),
      ),
    );
    peer.kill();
    await Promise.all(ops);
    expect(outcomes).toHaveLength(100);
    for (const o of outcomes) expect(['resolved', 'PEER_LOST', 'PROVIDER_ERROR']).toContain(o);
    expect(outcomes.some((o) => o !== 'resolved')).toBe(true);
    expect(lost).toEqual([dst.owner.toString()]);
    expect(engine.stats().ops.inFlight).toBe(0);
    await peer.exited;
  }, 30_000);

  // Heartbeats go behind the writes already queued to the peer (one order per peer): with more
  // bytes queued than a few intervals carry, each heartbeat times out while the writes ahead of it
  // complete. Those completions answer for the peer; before, three such timeouts lost a live peer
  // and failed every write still in flight with PEER_LOST.
  it('a live peer behind a long backlog: heartbeats that time out while its writes complete are no misses, and every write lands', async () => {
    const engine = await createEngine({
      provider: 'tcp',
      sameHostLane: false,
      heartbeatMs: 50,
      opTimeoutMs: 120_000,
    });
    const peer = await PeerProcess.start(engineModule, { provider: 'tcp', sameHostLane: false });
    cleanup.push(async () => {
      await engine.close();
      await peer.stop();
    });
    const lost: string[] = [];
    engine.onPeerLost((p) => lost.push(p.toString()));
    const size = 8 << 20;
    const { desc } = await peer.call<{ desc: string }>('register', { name: 'kv', size, remote: true });
    const dst = MrDesc.parse(desc);
    const src = await engine.registerMemory(size);
    src.buffer!.set(Uint8Array.from({ length: size }, (_, i) => (i * 131 + 7) & 0xff));
    // 3 GiB: seconds on loopback tcp, many times the three intervals that lost the peer before.
    const n = 384;
    const outcomes = await Promise.all(
      Array.from({ length: n }, () =>
        engine.submitSingleWrite({ src, length: size, dst }).then(
          () => 'resolved',
          (e: { code: string }) => e.code,
        ),
      ),
    );
    expect(outcomes.filter((o) => o !== 'resolved')).toEqual([]);
    expect(lost).toEqual([]);
    const { peers, ops } = engine.stats();
    expect(peers.lost).toBe(0);
    // Late heartbeats settled with their work still posted: the engine's own, never counted as
    // users' operations settled posted or held.
    expect(ops).toMatchObject({
      submitted: n,
      completed: n,
      inFlight: 0,
      failed: 0,
      settledPosted: 0,
      held: 0,
    });
    // Heartbeats did time out behind the backlog (what this test is about) and counted as late,
    // not as misses (a stall of a whole interval on a loaded machine may still miss one, never
    // three in a row: the peer is not lost).
    expect(peers.heartbeatsLate).toBeGreaterThan(0);
    expect(peers.heartbeatsMissed).toBeLessThan(peers.heartbeatsLate);
    expect(peers.heartbeats).toBeGreaterThanOrEqual(peers.heartbeatsLate + peers.heartbeatsMissed);
    const { sha256 } = await peer.call<{ sha256: string }>('sha256', { name: 'kv' });
    expect(sha256).toBe(sha(src.buffer!));
  }, 60_000);

  // tcp does not notice a peer that dies while nothing is in flight to it (its writes would wait
  // for their deadline); heartbeatIdle probes it anyway, as backend-efa's README says.
  it('a peer process SIGKILLed while idle: heartbeatIdle loses it within a few intervals, and writes to it are refused before posting', async () => {
    const engine = await createEngine({
      provider: 'tcp',
      sameHostLane: false,
      heartbeatMs: 100,
      heartbeatIdle: true,
      opTimeoutMs: 120_000,
    });
    const peer = await PeerProcess.start(engineModule, { provider: 'tcp' });
    cleanup.push(async () => {
      await engine.close();
    });
    const lost: string[] = [];
    engine.onPeerLost((p) => lost.push(p.toString()));
    const { desc } = await peer.call<{ desc: string }>('register', { name: 'kv', size: 4096, remote: true });
    const dst = MrDesc.parse(desc);
    const src = await engine.registerMemory(4096);
    await engine.submitSingleWrite({ src, length: 4096, dst, imm: 1 });
    const { sha256 } = await peer.call<{ sha256: string }>('sha256', { name: 'kv' });
    expect(sha256).toBe(sha(src.buffer!));
    const before = engine.stats().ops;
    peer.kill();
    await peer.exited;
    const t0 = Date.now();
    while (lost.length === 0 && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 20));
    expect(lost).toEqual([dst.owner.toString()]);
    expect(engine.stats().peers.lost).toBe(1);
    // Lost: refused before anything is posted, at once rather than at a deadline.
    const e = await engine
      .submitSingleWrite({ src, length: 4096, dst, timeoutMs: 60_000 })
      .catch((x: unknown) => x);
    expect((e as { code: string }).code).toBe('PEER_LOST');
    // Refused before posting, as bad input is: not counted as submitted.
    expect(engine.stats().ops).toMatchObject({
      submitted: before.submitted,
      completed: before.completed,
      failed: before.failed,
      inFlight: 0,
    });
  }, 30_000);

  it('refused keys reset the tcp connection under short heartbeats: a heartbeat cut off with it is one miss, not a death — the live peer is never lost', async () => {
    // A black box saw a live peer lost after one missed heartbeat (its probes all answered): the
    // heartbeat's own PEER_LOST (the connection torn down by the refused key) lost the peer at
    // once, past the three misses in a row.
    const engine = await createEngine({
      provider: 'tcp',
      sameHostLane: false,
      heartbeatMs: 50,
      heartbeatIdle: true,
      opTimeoutMs: 5000,
    });
    cleanup.push(async () => {
      await engine.close();
    });
    const peer = await PeerProcess.start(engineModule, { provider: 'tcp', sameHostLane: false });
    const { desc } = await peer.call<{ desc: string }>('register', {
      name: 'kv',
      size: 1 << 16,
      remote: true,
    });
    const dst = MrDesc.parse(desc);
    const forged = new MrDesc(
      dst.owner,
      dst.base,
      dst.length,
      dst.nics.map((k) => ({ addr: k.addr, rkey: k.rkey ^ 0x5a5a5an })),
    );
    const src = await engine.registerMemory(1 << 16);
    src.buffer!.fill(7);
    const lost: string[] = [];
    engine.onPeerLost((_p, why) => lost.push(why.message));
    await outcome(engine.submitSingleWrite({ src, length: 4096, dst }));
    for (let round = 0; round < 24 && !lost.length; round++) {
      const forgery = engine.submitSingleWrite({ src, length: 4096, dst: forged });
      const good = Array.from({ length: 8 }, (_, j) =>
        engine.submitSingleWrite({ src, srcOffset: j * 4096, length: 4096, dst, dstOffset: j * 4096 }),
      );
      await Promise.all([forgery, ...good].map(outcome));
      await new Promise((r) => setTimeout(r, 120));
    }
    // What lost it before: one heartbeat's own PEER_LOST (`heartbeat: … not connected`). Three
    // misses in a row may still lose it where the connection takes longer than three 50 ms
    // intervals to come (back): a loaded machine, libfabric 2.x's tcp — that is the documented rule.
    for (const why of lost) expect(why).toMatch(/did not answer 3 heartbeats of 50 ms/);
    if (lost.length) return;
    expect(engine.stats().peers.lost).toBe(0);
    // Still reachable, and the bytes land.
    await engine.submitSingleWrite({ src, length: 1 << 15, dst });
    const { sha256 } = await peer.call<{ sha256: string }>('sha256', { name: 'kv' });
    const want = new Uint8Array(1 << 16);
    want.fill(7, 0, 1 << 15);
    expect(sha256).toBe(sha(want));
  }, 60_000);

  it('an operation failing PEER_LOST loses the peer: every other operation still in flight to it settles PEER_LOST then, not at the engine deadline', async () => {
    const { engine, peer, dst, src } = await writtenTcpTarget(10_000, 64 << 20);
    let lostAt = 0;
    let reason: { code: string; peer?: string } | undefined;
    engine.onPeerLost((_p, why) => {
      lostAt = performance.now();
      reason = why;
    });
    const settled: Array<[string, number]> = [];
    const track = (p: Promise<void>) =>
      p.then(
        () => void settled.push(['resolved', performance.now()]),
        (e: { code: string }) => void settled.push([e.code, performance.now()]),
      );
    // Large writes on the socket when the peer dies: its kernel resets the connection, and the
    // provider fails what was on it (a write submitted only after the death may instead wait on a
    // connection being remade with no error at all, on tcp). That connection error starts a probe
    // (up to 2 s: the peer is lost when it stays unanswered).
    const big = Array.from({ length: 8 }, () =>
      track(engine.submitSingleWrite({ src, length: 64 << 20, dst, imm: 2 })),
    );
    peer.kill();
    await peer.exited;
    // Writes and immediates submitted meanwhile wait unposted behind the reconnect: before, they
    // waited for the engine deadline (TIMEOUT at 10 s).
    const ops = [
      ...big,
      ...Array.from({ length: 30 }, (_, i) =>
        track(
          engine.submitSingleWrite({
            src,
            srcOffset: i * 1024,
            length: 1024,
            dst,
            dstOffset: i * 1024,
            imm: 2,
          }),
        ),
      ),
      ...Array.from({ length: 10 }, () => track(engine.submitImm({ dst, imm: 3 }))),
    ];
    await Promise.all(ops);
    expect(reason?.code).toBe('PEER_LOST');
    expect(reason?.peer).toBe(dst.owner.toString());
    expect(settled).toHaveLength(48);
    // A large write done before the kill resolved; every other operation settled PEER_LOST.
    const failed = settled.filter(([code]) => code !== 'resolved');
    expect(failed.length).toBeGreaterThanOrEqual(40);
    for (const [code, at] of failed) {
      expect(code).toBe('PEER_LOST');
      // At the loss (each cancelled then), not at the 10 s engine deadline.
      expect(at - lostAt).toBeLessThan(1000);
    }
    expect(engine.stats().peers.lost).toBe(1);
    expect(engine.stats().ops.inFlight).toBe(0);
  }, 60_000);

  it('tcp: writes to a target SIGKILLed after a write settle PEER_LOST after an unanswered probe (or TIMEOUT), never CONNECTION_RESET', async () => {
    const { engine, peer, dst, src } = await writtenTcpTarget(3000);
    peer.kill();
    await peer.exited;
    const codes: string[] = [];
    for (let i = 0; i < 3; i++)
      codes.push(
        await engine.submitSingleWrite({ src, length: 4096, dst, imm: 1 }).then(
          () => 'resolved',
          (e: { code: string }) => e.code,
        ),
      );
    // A dead peer's connection error (the provider's ENOTCONN, reported as CONNECTION_RESET) is
    // probed: unanswered, the peer is lost and the rest are refused; where tcp reports nothing, the
    // engine deadline settles each write TIMEOUT.
    for (const c of codes) expect(['PEER_LOST', 'TIMEOUT']).toContain(c);
    const peers = engine.stats().peers;
    expect(peers.probesAnswered).toBe(0);
    if (codes.includes('PEER_LOST')) {
      expect(peers.lost).toBe(1);
      expect(peers.probes).toBeGreaterThanOrEqual(1);
    } else {
      expect(peers.lost).toBe(0);
    }
    expect(engine.stats().ops.inFlight).toBe(0);
  }, 30_000);
});

/** The tcp endpoint (host:port, as the provider names it) of an address's first NIC. */
function endpoint(a: NetAddr): string {
  const nic = a.nics[0]!;
  return Buffer.from(nic.subarray(2, 2 + (nic[0]! | (nic[1]! << 8)))).toString('hex');
}

describe('a process restarted on the same tcp port', () => {
  // tcp addresses are host:port; a restarted process given its old port (here: a range of two
  // ports, as FI_TCP_PORT_LOW_RANGE/HIGH_RANGE pin them) answers at the old address. Region and
  // sink keys counted from 1 made the old process's descriptors and address valid in the new one:
  // writes and immediates meant for the dead process landed in it, resolving OK. Keys now start at
  // a random value per domain, so the new process refuses them.
  for (const lane of [false, true])
    it(`writes and immediates meant for the dead process are refused, none lands in the new one (sameHostLane ${lane})`, async () => {
      const engine = await createEngine({ provider: 'tcp', nics: 1, opTimeoutMs: 5000, sameHostLane: lane });
      const low = 20_000 + Math.floor(Math.random() * 20_000) * 2;
      const env = { low: process.env.FI_TCP_PORT_LOW_RANGE, high: process.env.FI_TCP_PORT_HIGH_RANGE };
      process.env.FI_TCP_PORT_LOW_RANGE = String(low);
      process.env.FI_TCP_PORT_HIGH_RANGE = String(low + 1);
      const peers: PeerProcess[] = [];
      cleanup.push(async () => {
        for (const p of peers) await p.stop();
        await engine.close();
      });
      try {
        const options = { provider: 'tcp', nics: 1, sameHostLane: lane };
        const old = await PeerProcess.start(engineModule, options);
        peers.push(old);
        const dst = MrDesc.parse(
          (await old.call<{ desc: string }>('register', { name: 'r', size: 4096, remote: true })).desc,
        );
        const src = await engine.registerMemory(4096);
        fill(src.buffer!, 5);
        await engine.submitSingleWrite({ src, length: 4096, dst, imm: 5 });
        await engine.submitImm({ dst: dst.owner, imm: 6 });
        await engine.submitSend(dst.owner, Buffer.from('for the old process'));
        expect((await old.call<{ total: number }>('wait', { imm: 5, n: 1, timeoutMs: 5000 })).total).toBe(1);
        expect((await old.call<{ total: number }>('wait', { imm: 6, n: 1, timeoutMs: 5000 })).total).toBe(1);
        old.kill();
        await old.exited;
        // The case needs the port back: the new process's tcp endpoint (host:port) is the old one's
        // (of the two ports, the provider may take the other: start again until it has the old).
        let reborn = await PeerProcess.start(engineModule, options);
        peers.push(reborn);
        for (let i = 0; i < 10 && endpoint(NetAddr.parse(reborn.address)) !== endpoint(dst.owner); i++) {
          await reborn.stop();
          reborn = await PeerProcess.start(engineModule, options);
          peers.push(reborn);
        }
        expect(endpoint(NetAddr.parse(reborn.address))).toBe(endpoint(dst.owner));
        // Its address differs in its sink's key: a new peer to this engine.
        expect(NetAddr.parse(reborn.address).samePeer(dst.owner)).toBe(false);
        const { sha256: before } = await (async () => {
          await reborn.call('register', { name: 'r', size: 4096, remote: true, seed: 9 });
          return reborn.call<{ sha256: string }>('sha256', { name: 'r' });
        })();
        const outcome = (p: Promise<unknown>) =>
          p.then(
            () => 'resolved',
            (e: { code: string }) => e.code,
          );
        // The immediate first: with the lane on, the write would find the old region gone and
        // lose the peer before the immediate reached the provider.
        // A message to the old address: sends carry no key, so it reaches the new process, which
        // drops it (it names the old generation) and counts it; it used to deliver it.
        await outcome(engine.submitSend(dst.owner, Buffer.from('for the old process')));
        const imm = await outcome(engine.submitImm({ dst: dst.owner, imm: 6 }));
        const write = await outcome(engine.submitSingleWrite({ src, length: 4096, dst, imm: 5 }));
        // Refused by the new process (a key it never gave out) or, once that is known, the peer lost.
        for (const c of [write, imm]) expect(['REMOTE_ACCESS', 'CONNECTION_RESET', 'PEER_LOST']).toContain(c);
        // Nothing landed: the new process's bytes and counts are as it made them.
        expect((await reborn.call<{ sha256: string }>('sha256', { name: 'r' })).sha256).toBe(before);
        expect((await reborn.call<{ total: number }>('wait', { imm: 5, n: 0, timeoutMs: 100 })).total).toBe(
          0,
        );
        expect((await reborn.call<{ total: number }>('wait', { imm: 6, n: 0, timeoutMs: 100 })).total).toBe(
          0,
        );
        expect(engine.stats().ops.inFlight).toBe(0);
        // Through its own address it takes messages (a fresh engine: a stale write's refusal may
        // have reset the connection this one shared with the old address).
        const fresh = await createEngine({ provider: 'tcp', nics: 1, opTimeoutMs: 5000, sameHostLane: lane });
        cleanup.push(() => fresh.close());
        await fresh.submitSend(NetAddr.parse(reborn.address), Buffer.from('for the new process'));
        let got: Array<{ data: string }> = [];
        for (let i = 0; i < 100 && got.length === 0; i++) {
          got = (await reborn.call<{ messages: Array<{ data: string }> }>('received')).messages;
          if (got.length === 0) await new Promise((r) => setTimeout(r, 20));
        }
        expect(got.map((m) => Buffer.from(m.data, 'hex').toString())).toEqual(['for the new process']);
        expect((await reborn.call<{ recvDropped: number }>('stats')).recvDropped).toBe(1);
      } finally {
        for (const [k, v] of [
          ['FI_TCP_PORT_LOW_RANGE', env.low],
          ['FI_TCP_PORT_HIGH_RANGE', env.high],
        ] as const)
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
      }
    }, 30_000);
});
