// kvstream through the fault harness (@trellis/core/faults) on backend-efa engines: every
// operation of the prefill side delayed 0–3 ms (pages and the tail reorder), then its peer killed
// mid-request by the harness: the request fails on both sides with nothing left hanging.
import { createEngine } from '@trellis/backend-efa';
import { withFaults } from '@trellis/core/faults';
import { describe, expect, it } from 'vitest';
import { KvLayout, KvStreamReceiver, KvStreamSender } from '../src/index.js';

describe('kvstream under injected faults (fault harness, backend-efa shm)', () => {
  it('delays reorder pages and tail, bytes still exact; a killed decode peer fails the stream', async () => {
    const layout = new KvLayout({
      layers: 4,
      tokensPerPage: 8,
      pages: 64,
      tensors: [{ name: 'k', bytesPerToken: 32 }],
    });
    const pe = withFaults(await createEngine({ provider: 'shm' }), { seed: 5 });
    const de = await createEngine({ provider: 'shm' });
    const tx = await KvStreamSender.create({ engine: pe, layout });
    const rx = await KvStreamReceiver.create({ engine: de, layout });
    const kv = tx.region.buffer!;
    for (let i = 0; i < kv.length; i++) kv[i] = (i * 13) & 0xff;
    pe.faults.delay([0, 3]);
    const tokens = 8 * 5 + 3;
    const srcPages = Uint32Array.of(7, 1, 30, 12, 5, 44);
    const adm = rx.admit({ prefill: pe.address, tokens, tailBytes: 16, tag: 'f' });
    const s = tx.bind('f', { srcPages });
    s.chunk(tokens);
    for (let l = 0; l < layout.layers; l++) s.progress.watcher.increment();
    s.finish(Uint8Array.from({ length: 16 }, (_, i) => i));
    const got = await adm.done;
    await s.done;
    const dst = rx.region.buffer!;
    for (const [i, page] of got.pages.entries()) {
      const inPage = Math.min(8, tokens - 8 * i);
      for (const seg of layout.segments) {
        const n = inPage * seg.tokenBytes;
        const a = seg.offset + srcPages[i]! * seg.stride;
        const b = seg.offset + page * seg.stride;
        expect(Buffer.compare(dst.subarray(b, b + n), kv.subarray(a, a + n))).toBe(0);
      }
    }
    expect([...got.tail]).toEqual(Array.from({ length: 16 }, (_, i) => i));
    got.release();
    expect(pe.faults.injected.delayed).toBeGreaterThan(0);
    // The decode peer "dies" (as far as the prefill side can tell): the next request fails there.
    pe.faults.killPeer(de.address);
    const adm2 = rx.admit({ prefill: pe.address, tokens: 16, tag: 'g', timeoutMs: 2000 });
    const s2 = tx.bind('g', { srcPages: Uint32Array.of(3, 4) });
    s2.chunk(16);
    for (let l = 0; l < layout.layers; l++) s2.progress.watcher.increment();
    s2.finish();
    const [a2, b2] = await Promise.all([
      adm2.done.then(
        () => 'ok',
        (e: { code: string }) => e.code,
      ),
      s2.done.then(
        () => 'ok',
        (e: { code: string }) => e.code,
      ),
    ]);
    expect(b2).toBe('PEER_LOST');
    expect(a2).not.toBe('ok');
    await tx.close();
    await rx.close();
    await Promise.all([pe.close(), de.close()]);
  });
});
