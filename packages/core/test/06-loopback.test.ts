// The loopback fabric beyond the conformance suite: options, faults, and the heartbeat.
import { describe, expect, it } from 'vitest';
import { createLoopbackFabric, type LoopbackEngine, TrellisError } from '../src/index.js';

/** The order in which 64 single-page writes of one op land at the target, as seen through a watcher of bytes. */
async function arrivalOrder(seed: number, reorder = true): Promise<number[]> {
  const fabric = createLoopbackFabric({ seed, reorder });
  const a = fabric.createEngine();
  const b = fabric.createEngine();
  const src = await a.registerMemory(64);
  const dst = await b.registerMemory(64, { remote: true });
  src.buffer!.set(Array.from({ length: 64 }, (_, i) => i + 1));
  // One op per page, each with its own imm; record the order the counters fire.
  const order: number[] = [];
  const ps = [];
  for (let i = 0; i < 64; i++) {
    ps.push(
      b
        .immCounter(i)
        .wait(1)
        .then(() => order.push(i)),
    );
    ps.push(
      a.submitPagedWrites({
        src,
        srcPages: Uint32Array.of(i),
        srcStride: 1,
        dst: dst.desc,
        dstPages: Uint32Array.of(i),
        dstStride: 1,
        pageBytes: 1,
        imm: i,
      }),
    );
  }
  await Promise.all(ps);
  expect([...dst.buffer!]).toEqual([...src.buffer!]);
  await fabric.close();
  return order;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    return e instanceof TrellisError ? e.code : String(e);
  }
}

describe('loopback fabric', () => {
  const fifo = Array.from({ length: 64 }, (_, i) => i);

  it('delivers in a seeded random order — never FIFO — and the same seed gives the same order', async () => {
    const one = await arrivalOrder(11);
    const again = await arrivalOrder(11);
    const other = await arrivalOrder(12);
    expect(one).not.toEqual(fifo);
    expect([...one].sort((x, y) => x - y)).toEqual(fifo);
    expect(again).toEqual(one);
    expect(other).not.toEqual(one);
  });

  it('reorder: false delivers FIFO (for debugging)', async () => {
    expect(await arrivalOrder(11, false)).toEqual(fifo);
  });

  it('completions also come back out of order', async () => {
    const fabric = createLoopbackFabric({ seed: 5 });
    const a = fabric.createEngine();
    const b = fabric.createEngine();
    const src = await a.registerMemory(16);
    const dst = await b.registerMemory(16, { remote: true });
    const done: number[] = [];
    await Promise.all(
      Array.from({ length: 32 }, (_, i) =>
        a.submitSingleWrite({ src, length: 16, dst: dst.desc }).then(() => done.push(i)),
      ),
    );
    expect(done).not.toEqual(Array.from({ length: 32 }, (_, i) => i));
    await fabric.close();
  });

  it('engines of two fabrics cannot reach each other', async () => {
    const f1 = createLoopbackFabric();
    const f2 = createLoopbackFabric();
    const a = f1.createEngine();
    const b = f2.createEngine();
    expect(await code(a.submitImm({ dst: b.address, imm: 1 }))).toBe('UNKNOWN_PEER');
    await Promise.all([f1.close(), f2.close()]);
  });

  it('validates its options and fault calls', () => {
    expect(() => createLoopbackFabric({ nics: 0 })).toThrow(/nics must be an integer in 1\.\.4/);
    expect(() => createLoopbackFabric({ nics: 5 })).toThrow(TrellisError);
    expect(() => createLoopbackFabric({ seed: 1.5 })).toThrow(/seed/);
    const f = createLoopbackFabric({ nics: 2 });
    expect(() => f.createEngine({ nics: 9 })).toThrow(/nics/);
    expect(() => f.createEngine(null as never)).toThrow(
      'createEngine: pass an options object (e.g. {nics: 2}) or nothing, got null',
    );
    const e = f.createEngine();
    expect(() => f.faults.failNic(e, 2)).toThrow(/NIC 2 does not exist/);
    expect(() => f.faults.setDelay([5, 1])).toThrow(/minMs <= maxMs/);
    const other = createLoopbackFabric().createEngine();
    expect(() => f.faults.killPeer(other)).toThrow(/not an engine of this loopback fabric/);
  });

  it('engines may have different NIC counts; lanes are the minimum', async () => {
    const f = createLoopbackFabric({ nics: 4 });
    const a = f.createEngine();
    const b = f.createEngine({ nics: 2 });
    expect([a.nics, b.nics]).toEqual([4, 2]);
    const src = await a.registerMemory(1 << 20);
    const dst = await b.registerMemory(1 << 20, { remote: true });
    src.buffer!.fill(3);
    const req = { src, length: 1 << 20, dst: dst.desc, imm: 1 };
    expect(a.expectedImms({ kind: 'single', ...req })).toBe(2);
    // With a target: that peer's arrivals — none where the request does not reach it.
    expect(a.expectedImms({ kind: 'single', ...req }, b.address)).toBe(2);
    expect(a.expectedImms({ kind: 'single', ...req }, a.address)).toBe(0);
    const paged = {
      kind: 'paged' as const,
      src,
      srcPages: Uint32Array.of(0, 1, 2),
      srcStride: 4096,
      dst: dst.desc,
      dstPages: Uint32Array.of(0, 1, 2),
      dstStride: 4096,
      pageBytes: 4096,
      imm: 1,
    };
    expect(a.expectedImms(paged, b.address)).toBe(a.expectedImms(paged));
    expect(a.expectedImms(paged, a.address)).toBe(0);
    await a.submitSingleWrite(req);
    await b.immCounter(1).wait(2);
    expect(dst.buffer!.every((x) => x === 3)).toBe(true);
    expect(a.stats().nics.map((n) => n.writeOps)).toEqual([1, 1, 0, 0]);
    expect(await code(a.submitSingleWrite({ ...req, shards: 3 }))).toBe('INVALID_ARGUMENT');
    await f.close();
  });

  it('CUDA memory is refused with UNSUPPORTED', async () => {
    const f = createLoopbackFabric();
    const e = f.createEngine();
    expect(await code(e.registerMemory({ cuda: { ptr: 0x1000n, length: 4096, device: 0 } }))).toBe(
      'UNSUPPORTED',
    );
    await f.close();
  });

  it('a forged rkey or an out-of-bounds descriptor is refused by the target with REMOTE_ACCESS', async () => {
    const f = createLoopbackFabric();
    const a = f.createEngine();
    const b = f.createEngine() as LoopbackEngine;
    const src = await a.registerMemory(64);
    const dst = await b.registerMemory(32, { remote: true });
    const { MrDesc } = await import('../src/index.js');
    const badKey = new MrDesc(dst.desc.owner, dst.desc.base, 32, [
      { addr: dst.desc.base, rkey: dst.desc.nics[0]!.rkey ^ 1n },
    ]);
    expect(await code(a.submitSingleWrite({ src, length: 8, dst: badKey, imm: 1 }))).toBe('REMOTE_ACCESS');
    const tooLong = new MrDesc(dst.desc.owner, dst.desc.base, 64, dst.desc.nics);
    expect(await code(a.submitSingleWrite({ src, length: 64, dst: tooLong, imm: 1 }))).toBe('REMOTE_ACCESS');
    await dst.unregister();
    expect(await code(a.submitSingleWrite({ src, length: 8, dst: dst.desc, imm: 1 }))).toBe('REMOTE_ACCESS');
    expect(b.immCounter(1).total).toBe(0);
    expect(a.stats().nics[0]!.errors).toBe(3);
    await f.close();
  });

  it('idle() resolves once nothing is pending; a throwing onRecv does not stall the fabric', async () => {
    const f = createLoopbackFabric();
    const a = f.createEngine();
    const b = f.createEngine();
    const errors: unknown[] = [];
    const onUncaught = (e: unknown) => errors.push(e);
    process.on('uncaughtException', onUncaught);
    try {
      const got: number[] = [];
      void b.submitRecvs({ maxBytes: 8, count: 1 }, (m) => {
        got.push(m.data[0]!);
        if (m.data[0] === 1) throw new Error('user bug');
      });
      await Promise.all([
        a.submitSend(b.address, Uint8Array.of(1)),
        a.submitSend(b.address, Uint8Array.of(2)),
      ]);
      await f.idle();
      expect(f.pending).toBe(0);
      expect(got.sort()).toEqual([1, 2]);
      await new Promise((r) => setImmediate(r));
      expect(errors.map(String)).toEqual(['Error: user bug']);
    } finally {
      process.off('uncaughtException', onUncaught);
      await f.close();
    }
  });

  it('a killed engine rejects its own pending operations and its queued incoming sends', async () => {
    const f = createLoopbackFabric({ seed: 3 });
    const a = f.createEngine();
    const b = f.createEngine();
    const toB = a.submitSend(b.address, Uint8Array.of(1)); // b has no receive posted: queued there
    await new Promise((r) => setTimeout(r, 5));
    const src = await b.registerMemory(1 << 20);
    const dst = await a.registerMemory(1 << 20, { remote: true });
    const fromB = b.submitSingleWrite({ src, length: 1 << 20, dst: dst.desc, imm: 1 });
    f.faults.killPeer(b);
    expect(await code(toB)).toBe('PEER_LOST');
    expect(await code(fromB)).toBe('CLOSED');
    expect(a.stats().ops).toEqual({
      submitted: 1,
      completed: 0,
      failed: 1,
      inFlight: 0,
      settledPosted: 0,
      held: 0,
    });
    await f.close();
  });
});

describe('heartbeat (engine options heartbeatMs, heartbeatIdle)', () => {
  it('a peer that stops answering is lost after 3 missed probes; its operations settle with PEER_LOST', async () => {
    const { createLoopbackFabric: fabricOf } = await import('../src/index.js');
    const { HEARTBEAT_IMM } = await import('../src/kit/index.js');
    const fabric = fabricOf({ seed: 3 });
    const a = fabric.createEngine({ heartbeatMs: 20 });
    const b = fabric.createEngine();
    const lost: string[] = [];
    a.onPeerLost((p, why) => lost.push(`${p.toString() === b.address.toString()} ${why.message}`));
    const src = await a.registerMemory(4096);
    const dst = await b.registerMemory(4096, { remote: true });
    // Healthy: probes are answered, nothing is lost, the heartbeat's immediates arrive at b.
    const ok = a.submitSingleWrite({ src, length: 4096, dst: dst.desc, imm: 1 });
    await ok;
    // Every event now takes 10 s: the peer looks hung.
    fabric.faults.setDelay([10_000, 10_000]);
    // Settling at all shows the heartbeat: the delayed events alone would take 10 s, past the
    // test's own time limit.
    const outcomes = await Promise.all(
      Array.from({ length: 5 }, () =>
        a.submitSingleWrite({ src, length: 4096, dst: dst.desc, imm: 1 }).then(
          () => 'resolved',
          (e: { code: string }) => e.code,
        ),
      ),
    );
    expect(outcomes).toEqual(['PEER_LOST', 'PEER_LOST', 'PEER_LOST', 'PEER_LOST', 'PEER_LOST']);
    expect(lost).toHaveLength(1);
    expect(lost[0]).toMatch(/^true the peer did not answer 3 heartbeats of 20 ms \(last: TIMEOUT\)$/);
    expect(HEARTBEAT_IMM).toBe(0xffffffff);
    expect(a.stats().ops).toMatchObject({ inFlight: 0, failed: 5, completed: 1 });
    fabric.faults.setDelay(undefined);
    await fabric.close();
  });

  it('heartbeatIdle: a dead idle peer is reported within a few intervals; without it, not until the next operation', async () => {
    const { createLoopbackFabric: fabricOf } = await import('../src/index.js');
    const fabric = fabricOf({ seed: 4 });
    const idle = fabric.createEngine({ heartbeatMs: 20, heartbeatIdle: true });
    const busyOnly = fabric.createEngine({ heartbeatMs: 20 });
    const b = fabric.createEngine();
    const lost: string[] = [];
    idle.onPeerLost((p) => lost.push(`idle ${p.toString() === b.address.toString()}`));
    busyOnly.onPeerLost((p) => lost.push(`busyOnly ${p.toString() === b.address.toString()}`));
    await idle.submitImm({ dst: b.address, imm: 5 });
    await busyOnly.submitImm({ dst: b.address, imm: 5 });
    fabric.faults.killPeer(b);
    for (let i = 0; i < 100 && lost.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 100));
    expect(lost).toEqual(['idle true']);
    await fabric.close();
  });

  it('with failover, a NIC that fails is not a peer that died: probes move to a NIC that is up', async () => {
    const { createLoopbackFabric: fabricOf } = await import('../src/index.js');
    const fabric = fabricOf({ seed: 5, nics: 2 });
    const a = fabric.createEngine({ heartbeatMs: 10, heartbeatIdle: true, failover: { cooldownMs: 60_000 } });
    const b = fabric.createEngine();
    const lost: string[] = [];
    a.onPeerLost((p, why) => lost.push(`${p.toString()} ${why.message}`));
    await a.submitImm({ dst: b.address, imm: 6 });
    fabric.faults.failNic(b, 0);
    await new Promise((r) => setTimeout(r, 200));
    expect(lost).toEqual([]);
    expect(a.stats().nics.map((n) => n.up)).toEqual([false, true]);
    await a.submitImm({ dst: b.address, imm: 7 });
    await b.immCounter(7).wait(1, { timeoutMs: 5000 });
    await fabric.close();
  });

  it('refuses a bad heartbeatMs', async () => {
    const { createLoopbackFabric: fabricOf } = await import('../src/index.js');
    const fabric = fabricOf();
    expect(() => fabric.createEngine({ heartbeatMs: -1 })).toThrow(
      /^createEngine: heartbeatMs must be a non-negative integer, got -1$/,
    );
    await fabric.close();
  });
});
