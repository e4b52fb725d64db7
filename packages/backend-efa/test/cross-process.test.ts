import { createHash } from 'node:crypto';
import { countImms, lanesBetween, MrDesc, NetAddr, type TrellisError } from '@trellis/core';
import { afterEach, describe, expect, it } from 'vitest';
import { createEngine, type EfaEngine } from '../src/index.js';
import { PeerProcess } from './peer.js';

function fill(buf: Uint8Array, seed: number): void {
  let x = seed >>> 0 || 1;
  for (let i = 0; i < buf.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = x;
  }
}
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function pair(
  provider: 'shm' | 'tcp',
  nics: number,
): Promise<{ engine: EfaEngine; peer: PeerProcess }> {
  const engine = await createEngine({ provider, nics, opTimeoutMs: 5000 });
  const peer = await PeerProcess.start({ provider, nics, opTimeoutMs: 5000 });
  cleanup.push(async () => {
    await peer.stop();
    await engine.close();
  });
  return { engine, peer };
}

describe.each([
  ['shm', 1],
  ['shm', 2],
  ['tcp', 1],
  ['tcp', 2],
] as const)('across two processes: %s with %i NIC(s)', (provider, nics) => {
  it('single, paged and scatter writes land byte-exact in the other process, counted by immediates', async () => {
    const { engine, peer } = await pair(provider, nics);
    const size = 4 << 20;
    const { desc } = await peer.call<{ desc: string }>('register', { name: 'kv', size, remote: true });
    const dst = MrDesc.parse(desc);
    expect(dst.owner.toString()).toBe(peer.address);
    const src = await engine.registerMemory(size);
    fill(src.buffer!, 11);
    const expected = new Uint8Array(size);
    const lanes = lanesBetween(engine.nics, dst.owner.nics.length);
    // 1 MiB single write at an unaligned offset
    await engine.submitSingleWrite({ src, srcOffset: 3, length: 1 << 20, dst, dstOffset: 5, imm: 1 });
    expected.set(src.buffer!.subarray(3, 3 + (1 << 20)), 5);
    // 1000 pages of 1 KiB, reversed, into the second MiB onwards
    const n = 1000;
    const srcPages = Uint32Array.from({ length: n }, (_, i) => i);
    const dstPages = Uint32Array.from({ length: n }, (_, i) => n - 1 - i);
    await engine.submitPagedWrites({
      src,
      srcPages,
      srcStride: 1024,
      srcOffset: 1 << 20,
      dst,
      dstPages,
      dstStride: 1024,
      dstOffset: 2 << 20,
      pageBytes: 1024,
      imm: 1,
    });
    for (let i = 0; i < n; i++)
      expected.set(
        src.buffer!.subarray((1 << 20) + i * 1024, (1 << 20) + (i + 1) * 1024),
        (2 << 20) + (n - 1 - i) * 1024,
      );
    // scatter of two slices by bytes
    const targets = [
      { dst, srcOffset: 0, dstOffset: 3 << 20, length: 100_000 },
      { dst, srcOffset: 200_000, dstOffset: (3 << 20) + 200_000, length: 300_000 },
    ];
    await engine.submitScatter({ src, targets, imm: 1, routing: 'bytes' });
    for (const t of targets)
      expected.set(src.buffer!.subarray(t.srcOffset, t.srcOffset + t.length), t.dstOffset);
    const imms =
      countImms({ kind: 'single', length: 1 << 20, imm: 1 }, lanes) +
      countImms({ kind: 'paged', pages: n, imm: 1 }, lanes) +
      countImms({ kind: 'scatter', lengths: [100_000, 300_000], routing: 'bytes', imm: 1 }, lanes);
    const { total } = await peer.call<{ total: number }>('wait', { imm: 1, n: imms, timeoutMs: 10_000 });
    expect(total).toBe(imms);
    const { sha256 } = await peer.call<{ sha256: string }>('sha256', { name: 'kv' });
    expect(sha256).toBe(sha(expected));
  });

  it('the other process writes into this one; messages go both ways with their sender', async () => {
    const { engine, peer } = await pair(provider, nics);
    const dst = await engine.registerMemory(1 << 20, { remote: true });
    await peer.call('register', { name: 'src', size: 1 << 20, seed: 5 });
    const { imms } = await peer.call<{ imms: number }>('write', {
      name: 'src',
      dst: dst.desc.toString(),
      length: 1 << 20,
      imm: 77,
    });
    await engine.immCounter(77).wait(imms, { timeoutMs: 10_000 });
    const want = new Uint8Array(1 << 20);
    fill(want, 5);
    expect(sha(dst.buffer!)).toBe(sha(want));

    const got = new Promise<{ from: NetAddr; data: Uint8Array }>((r) => {
      void engine.submitRecvs({ maxBytes: 1024, count: 2 }, r);
    });
    await peer.call('send', { to: engine.address.toString(), hex: 'cafe01' });
    const m = await got;
    expect(Buffer.from(m.data).toString('hex')).toBe('cafe01');
    expect(m.from.toString()).toBe(peer.address);
    await engine.submitSend(NetAddr.parse(peer.address), Uint8Array.of(0xbe, 0xef));
    let messages: Array<{ from: string; data: string }> = [];
    for (let i = 0; i < 200 && messages.length === 0; i++) {
      messages = (await peer.call<{ messages: typeof messages }>('received')).messages;
      if (!messages.length) await new Promise((r) => setTimeout(r, 10));
    }
    expect(messages).toEqual([{ from: engine.address.toString(), data: 'beef' }]);
  });
});

describe('across two processes: failures', () => {
  it.each(['shm', 'tcp'] as const)(
    '%s: a peer process killed mid-transfer — every pending operation settles, none hangs',
    async (provider) => {
      const engine = await createEngine({ provider, nics: 2, opTimeoutMs: 3000 });
      cleanup.push(() => engine.close());
      const peer = await PeerProcess.start({ provider, nics: 2 });
      const { desc } = await peer.call<{ desc: string }>('register', {
        name: 'kv',
        size: 16 << 20,
        remote: true,
      });
      const dst = MrDesc.parse(desc);
      const src = await engine.registerMemory(16 << 20);
      const outcomes: string[] = [];
      const ops: Promise<void>[] = [];
      for (let i = 0; i < 200; i++) {
        const p = engine.submitSingleWrite({ src, length: 16 << 20, dst, imm: 1 });
        ops.push(
          p.then(
            () => void outcomes.push('resolved'),
            (e: TrellisError) => void outcomes.push(e.code),
          ),
        );
      }
      peer.kill();
      const t0 = Date.now();
      await Promise.all(ops);
      const settledMs = Date.now() - t0;
      expect(outcomes).toHaveLength(200);
      for (const o of outcomes) expect(['resolved', 'PEER_LOST', 'TIMEOUT', 'PROVIDER_ERROR']).toContain(o);
      expect(outcomes.filter((o) => o !== 'resolved').length).toBeGreaterThan(0);
      // The documented bound: the engine deadline (opTimeoutMs) plus scheduling slack.
      expect(settledMs).toBeLessThan(3000 + 5000);
      expect(engine.stats().ops.inFlight).toBe(0);
    },
    30_000,
  );
});

describe('large transfers', () => {
  it('a 1 GiB region written across processes (shm) and verified', async () => {
    const { engine, peer } = await pair('shm', 2);
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
