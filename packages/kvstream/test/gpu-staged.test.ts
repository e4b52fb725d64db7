// kvstream between CUDA caches on the staged path, with HostGpu standing in for the CUDA runtime
// (no GPU here): real libfabric endpoints, pages through the engines' staged writes, the last
// partial page packed off the "device" and unpacked onto it. The same flow runs on two GPUs in
// test/gpu/kv.mjs (scripts/device-gpu-tests.sh).
import { createEngine } from '@trellis/backend-efa';
import { fillXorshift, HostGpu, outcome } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { KvLayout, KvStreamReceiver, KvStreamSender } from '../src/index.js';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

describe('kvstream on CUDA caches (staged path, HostGpu)', () => {
  for (const provider of ['shm', 'tcp'] as const)
    it(`pages and the partial last page land on the decode device; the tail arrives in host memory (${provider})`, async () => {
      const gpu = new HostGpu();
      const pe = await createEngine({ provider: provider, nics: 2, gpu: gpu.ops });
      const de = await createEngine({ provider: provider, nics: 2, gpu: gpu.ops });
      cleanup.push(
        () => pe.close(),
        () => de.close(),
      );
      const spec = {
        layers: 3,
        tokensPerPage: 16,
        pages: 32,
        tensors: [
          { name: 'k', bytesPerToken: 64, heads: 2 },
          { name: 'v', bytesPerToken: 64, heads: 2 },
        ],
      };
      const layout = new KvLayout(spec);
      const sp = gpu.alloc(layout.regionBytes);
      const dp = gpu.alloc(layout.regionBytes);
      fillXorshift(gpu.bytes(sp), 99);
      const cuda = (ptr: bigint) => ({ cuda: { ptr, length: layout.regionBytes, device: 0 } });
      const sreg = await pe.registerMemory(cuda(sp));
      const dreg = await de.registerMemory(cuda(dp), { remote: true });
      expect(await outcome(KvStreamSender.create({ engine: pe, layout, region: sreg }))).toMatch(
        /^INVALID_ARGUMENT: KvStreamSender: region is CUDA memory; pass gpu/,
      );
      const tx = await KvStreamSender.create({ engine: pe, layout, region: sreg, gpu: gpu.ops });
      const rx = await KvStreamReceiver.create({ engine: de, layout, region: dreg, gpu: gpu.ops });
      cleanup.push(
        () => tx.close(),
        () => rx.close(),
      );
      const tokens = 5 * 16 + 7;
      const tail = Uint8Array.from({ length: 100 }, (_, i) => i * 3);
      const srcPages = Uint32Array.of(9, 2, 30, 4, 17, 11);
      const adm = rx.admit({ prefill: pe.address, tokens, tailBytes: tail.length, tag: 'g' });
      const stream = tx.bind('g', { srcPages });
      stream.chunk(tokens);
      for (let l = 0; l < layout.layers; l++) {
        stream.progress.watcher.increment();
        await new Promise((r) => setImmediate(r));
      }
      stream.finish(tail);
      const kv = await adm.done;
      await stream.done;
      expect(kv.tail).toEqual(tail);
      const s = gpu.bytes(sp);
      const d = gpu.bytes(dp);
      let bad = 0;
      let checked = 0;
      kv.pages.forEach((page, i) => {
        const inPage = Math.min(16, tokens - 16 * i);
        for (const seg of layout.segments) {
          const n = inPage * seg.tokenBytes;
          const a = seg.offset + srcPages[i]! * seg.stride;
          const b = seg.offset + page * seg.stride;
          if (Buffer.compare(s.subarray(a, a + n), d.subarray(b, b + n)) !== 0) bad++;
          checked += n;
        }
      });
      expect(bad).toBe(0);
      expect(checked).toBe(tokens * 128 * 3);
      // Full pages went through the engines' staged writes; the partial page through kvstream's own
      // copies and the host tail slot (not counted by the engines).
      const full = 5 * layout.segments.length;
      expect(tx.stats()).toMatchObject({
        completed: 1,
        failed: 0,
        pagesWritten: full,
        tailBytesWritten: 7 * 128 * 3 + 100,
      });
      const pageBytes = layout.segments[0]!.tokenBytes * 16;
      // One paged write per layer and tensor (6), each one staged segment.
      expect(pe.stats().gpu).toMatchObject({ stagedToHostBytes: full * pageBytes, stagedWrites: 6 });
      expect(de.stats().gpu).toMatchObject({ stagedToDeviceBytes: full * pageBytes, stagedWrites: 0 });
      // 6 segment copies each way, plus kvstream's pack (off the prefill device) and unpack (onto the decode one).
      expect(gpu.copies).toEqual({ toHost: 7, toDevice: 7 });
      kv.release();
    });
});
