// kvstream across two OS processes over backend-efa (shm and tcp;ofi_rxm): real one-sided writes
// with immediates, a real progress watcher thread, and real process deaths.
import { fileURLToPath } from 'node:url';
import { createEngine, type EfaEngine } from '@trellis/backend-efa';
import { NetAddr } from '@trellis/core';
import { LineProcess, outcome } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { type KvLayoutSpec, KvStreamReceiver, KvStreamSender } from '../src/index.js';
import { checkKv, computeLayer, poolFull, tailOf } from './helpers.js';

const fixture = fileURLToPath(new URL('./fixtures/peer.mjs', import.meta.url));

/** A kvstream peer process (test/fixtures/peer.mjs); its first line is its engine address. */
async function startPeer(cfg: object): Promise<{ peer: LineProcess; addr: NetAddr }> {
  const peer = new LineProcess(fixture, [JSON.stringify(cfg)]);
  const first = (await peer.next((m) => 'addr' in m)) as { addr: string };
  return { peer, addr: NetAddr.parse(first.addr) };
}

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => {});
  cleanup = [];
});

const layout: KvLayoutSpec = {
  layers: 8,
  tokensPerPage: 16,
  pages: 256,
  tensors: [
    { name: 'k', bytesPerToken: 256 },
    { name: 'v', bytesPerToken: 256 },
  ],
};

async function decodeSide(
  provider: 'shm' | 'tcp',
  opts: object = {},
): Promise<{ engine: EfaEngine; rx: KvStreamReceiver }> {
  const engine = await createEngine({ provider, nics: 2, opTimeoutMs: 5000 });
  const rx = await KvStreamReceiver.create({
    engine,
    layout: { ...layout, order: 'page-major' },
    maxTailBytes: 8192,
    ...opts,
  });
  cleanup.push(async () => {
    await rx.close();
    await engine.close();
  });
  return { engine, rx };
}

describe('kvstream across processes on backend-efa', () => {
  for (const provider of ['shm', 'tcp'] as const) {
    it(`prefill in another process streams 3 chunked requests; KV and tails byte-exact at decode (${provider})`, async () => {
      const { rx } = await decodeSide(provider);
      const { peer, addr } = await startPeer({ role: 'prefill', provider, nics: 2, layout });
      cleanup.push(() => peer.stop());
      const reqs = [
        { tag: 'a', tokens: 200, chunks: [64, 200], tail: 4096 },
        { tag: 'b', tokens: 33, chunks: [33], tail: 0 },
        { tag: 'c', tokens: 512, chunks: [100, 300, 512], tail: 8192 },
      ];
      let next = 0;
      const adms = reqs.map((r, i) => {
        const srcPages = Array.from({ length: Math.ceil(r.tokens / 16) }, () => (next++ * 7) % 256);
        const adm = rx.admit({ prefill: addr, tokens: r.tokens, tailBytes: r.tail, tag: r.tag });
        peer.send({
          run: { tag: r.tag, req: i, srcPages, chunks: r.chunks, tail: [...tailOf(i, r.tail)], layerMs: 1 },
        });
        return adm;
      });
      for (const [i, adm] of adms.entries()) {
        const kv = await adm.done;
        checkKv(rx.layout, rx.region.buffer!, i, kv.pages, reqs[i]!.tokens);
        expect(kv.tail).toEqual(tailOf(i, reqs[i]!.tail));
        kv.release();
      }
      for (const r of reqs)
        expect(await peer.next((m) => m.done === r.tag)).toEqual({ done: r.tag, outcome: 'resolved' });
      expect(poolFull(rx)).toBe(true);
    }, 60_000);
  }

  it('prefill process killed mid-stream: the decode request fails PEER_LOST, its pages return once no write of it can land (tcp)', async () => {
    // A death the provider reports (a failed probe) returns the pages after deadPeerGraceMs; one
    // seen only as an unanswered probe (as a paused process is) after quarantineMs.
    const { rx } = await decodeSide('tcp', { probeMs: 100, deadPeerGraceMs: 300, quarantineMs: 1500 });
    const { peer, addr } = await startPeer({ role: 'prefill', provider: 'tcp', nics: 2, layout });
    cleanup.push(() => peer.stop());
    const adm = rx.admit({ prefill: addr, tokens: 400, tag: 'k' });
    const srcPages = Array.from({ length: 25 }, (_, i) => i);
    peer.send({ run: { tag: 'k', req: 9, srcPages, chunks: [400], tail: [], layerMs: 200 } });
    await peer.next((m) => m.started === 'k');
    peer.child.kill('SIGKILL');
    const t0 = Date.now();
    expect(await outcome(adm.done)).toMatch(
      /^PEER_LOST: kvstream request 'k': the prefill peer is unreachable \(/,
    );
    const failedAfter = Date.now() - t0;
    expect(rx.stats()).toMatchObject({ freePages: 256 - 25, quarantinedPages: 25 });
    await new Promise((r) => setTimeout(r, 1700));
    expect(poolFull(rx)).toBe(true);
    expect(rx.stats().quarantinedPages).toBe(0);
    // Bounded by the probe's deadline (4 × probeMs) or the engine's (opTimeoutMs 5000), and slack.
    expect(failedAfter).toBeLessThan(100 + 5000 + 3000);
  }, 30_000);

  it('prefill process paused mid-stream (SIGSTOP): the request fails PEER_LOST, its pages stay out of the pool until the resumed prefill acknowledges the cancel (tcp)', async () => {
    const { rx } = await decodeSide('tcp', { probeMs: 100, quarantineMs: 60_000 });
    const { peer, addr } = await startPeer({ role: 'prefill', provider: 'tcp', nics: 2, layout });
    cleanup.push(async () => {
      peer.child.kill('SIGCONT');
      await peer.stop();
    });
    const adm = rx.admit({ prefill: addr, tokens: 400, tag: 'k' });
    const srcPages = Array.from({ length: 25 }, (_, i) => i);
    peer.send({ run: { tag: 'k', req: 9, srcPages, chunks: [400], tail: [], layerMs: 300 } });
    await peer.next((m) => m.started === 'k');
    peer.child.kill('SIGSTOP');
    expect(await outcome(adm.done)).toMatch(
      /^PEER_LOST: kvstream request 'k': the prefill peer is unreachable \(TIMEOUT: .*; its pages stay out of the pool until it acknowledges the cancel \(it may only be paused\) or for quarantineMs \(60000 ms\)$/,
    );
    // Paused, not dead: when it resumes it goes on writing into those 25 pages, so none of them
    // may go to another request meanwhile.
    await new Promise((r) => setTimeout(r, 1500));
    expect(rx.stats()).toMatchObject({ freePages: 256 - 25, quarantinedPages: 25, failed: 1 });
    peer.child.kill('SIGCONT');
    // Resumed: it reads the cancel, stops the stream and acknowledges; the pages come back.
    const t0 = Date.now();
    while (!poolFull(rx) && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 50));
    expect(rx.stats()).toMatchObject({ freePages: 256, quarantinedPages: 0 });
    expect(Date.now() - t0).toBeLessThan(20_000);
    const done = (await peer.next((m) => m.done === 'k')) as { outcome: string };
    // It stopped at the cancel, or had finished its last write before it read it.
    expect(done.outcome).toMatch(/^(resolved|ABORTED: kvstream request 'k': cancelled by the decode side)/);
  }, 40_000);

  it("decode process killed: the prefill side drops that peer's requests (tcp)", async () => {
    const engine = await createEngine({ provider: 'tcp', nics: 2, opTimeoutMs: 5000 });
    const tx = await KvStreamSender.create({ engine, layout, probeMs: 100 });
    cleanup.push(async () => {
      await tx.close();
      await engine.close();
    });
    const { peer } = await startPeer({ role: 'decode', provider: 'tcp', nics: 2, layout, probeMs: 100 });
    cleanup.push(() => peer.stop());
    const tables = new Promise<void>((r) => {
      let n = 0;
      tx.onRequest(() => ++n === 2 && r());
    });
    peer.send({ admit: { prefill: engine.address.toString(), tokens: 64, tag: 'x' } });
    peer.send({ admit: { prefill: engine.address.toString(), tokens: 64, tag: 'y' } });
    await tables;
    const pages = (k: number) => Uint32Array.from({ length: 4 }, (_, i) => 4 * k + i);
    const x = tx.bind('x', { srcPages: pages(0) });
    const y = tx.bind('y', { srcPages: pages(1) });
    x.chunk(64);
    computeLayer(tx.layout, tx.region.buffer!, 1, pages(0), 0, 0, 64);
    x.progress.watcher.increment();
    peer.child.kill('SIGKILL');
    expect(await outcome(x.done)).toMatch(/^PEER_LOST: kvstream request 'x': /);
    expect(await outcome(y.done)).toMatch(/^PEER_LOST: kvstream request 'y': /);
    expect(tx.stats()).toMatchObject({ tables: 2, bound: 2, completed: 0, failed: 2, peersDropped: 1 });
    x.close();
    y.close();
  }, 30_000);

  it('decode process paused (SIGSTOP) until the prefill drops it: resumed, its request without a timeoutMs learns from the ABORT the prefill owed it, and its pages return (tcp)', async () => {
    // A black box saw such a request wait for ever: the prefill answers the decode's probes, and
    // it had given the request up without telling (the peer was unreachable then).
    const engine = await createEngine({ provider: 'tcp', nics: 2, opTimeoutMs: 5000 });
    const tx = await KvStreamSender.create({ engine, layout, probeMs: 100 });
    cleanup.push(async () => {
      await tx.close();
      await engine.close();
    });
    const { peer } = await startPeer({
      role: 'decode',
      provider: 'tcp',
      nics: 2,
      layout,
      probeMs: 100,
      quarantineMs: 500,
    });
    cleanup.push(async () => {
      peer.child.kill('SIGCONT');
      await peer.stop();
    });
    const table = new Promise<void>((r) => tx.onRequest(() => r()));
    peer.send({ admit: { prefill: engine.address.toString(), tokens: 64, tag: 'p' } });
    await table;
    const pages = Uint32Array.from({ length: 4 }, (_, i) => i);
    const s = tx.bind('p', { srcPages: pages });
    s.chunk(64);
    computeLayer(tx.layout, tx.region.buffer!, 1, pages, 0, 0, 64);
    s.progress.watcher.increment();
    peer.child.kill('SIGSTOP');
    expect(await outcome(s.done)).toMatch(/^PEER_LOST: kvstream request 'p': /);
    expect(tx.stats()).toMatchObject({ bound: 1, failed: 1, peersDropped: 1 });
    s.close();
    await new Promise((r) => setTimeout(r, 300));
    peer.child.kill('SIGCONT');
    const failed = (await peer.next((m) => m.failed === 'p')) as { outcome: string };
    expect(failed.outcome).toMatch(
      /^PEER_LOST: kvstream request 'p': the prefill side aborted: kvstream request 'p': the decode peer is unreachable \(/,
    );
    // Delivered: nothing owed any more. The decode side's request counted failed, its pages back
    // after the quarantine of an uncertain request.
    const t0 = Date.now();
    while (tx.stats().abortsOwed > 0 && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 50));
    expect(tx.stats().abortsOwed).toBe(0);
    await new Promise((r) => setTimeout(r, 800));
    peer.send({ stats: true });
    const st = ((await peer.next((m) => 'stats' in m)) as { stats: Record<string, number> }).stats;
    expect(st).toMatchObject({ admitted: 1, completed: 0, failed: 1, cancelled: 0, closed: 0 });
    expect(st.freePages).toBe(256);
    expect(st.quarantinedPages).toBe(0);
  }, 60_000);
});
