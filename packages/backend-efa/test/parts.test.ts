// Regions registered in parts on real libfabric registrations (`limits.maxMrBytes` 64 KiB, so a
// 1 MiB region is 16 fi_mr_reg calls): writes from and to them are cut at part boundaries, every
// byte and every immediate count exact.
import { assertBytes, HostGpu, pattern, rejects, sleep, throws } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { createEngine, type EfaEngine } from '../src/index.js';

let engines: EfaEngine[] = [];
afterEach(async () => {
  await Promise.all(engines.map((e) => e.close()));
  engines = [];
});

const M = 64 * 1024;

for (const provider of ['shm', 'tcp'] as const)
  describe(`regions in parts on backend-efa (${provider}, 2 NICs)`, () => {
    it('single writes across part boundaries (source and target boundaries apart), parted source and target', async () => {
      const opts = { provider, nics: 2, opTimeoutMs: 10_000, limits: { maxMrBytes: M } } as const;
      engines = [await createEngine(opts), await createEngine(opts)];
      const [a, b] = engines as [EfaEngine, EfaEngine];
      const n = 16 * M + 100;
      const src = await a.registerMemory(n);
      src.buffer!.set(pattern(n, 31));
      const dst = await b.registerMemory(n, { remote: true });
      const want = pattern(n, 32);
      dst.buffer!.set(want);
      expect(dst.desc.parts?.keys.length).toBe(16);
      const s = src.buffer!;
      const imm = 0x6300;
      let expected = 0;
      const ops: Promise<void>[] = [];
      // 8 writes of 1.5 parts each, offset so that source and target boundaries differ.
      for (let i = 0; i < 8; i++) {
        const length = M + M / 2;
        const srcOffset = i * 2 * M + 777;
        const dstOffset = i * 2 * M + 12_345;
        const req = { kind: 'single', src, srcOffset, length, dst: dst.desc, dstOffset, imm } as const;
        expected += b.expectedImms(req);
        ops.push(a.submitSingleWrite(req));
        want.set(s.subarray(srcOffset, srcOffset + length), dstOffset);
      }
      await Promise.all(ops);
      await b.immCounter(imm).wait(expected, { timeoutMs: 10_000 });
      await sleep(50);
      expect(b.immCounter(imm).total).toBe(expected);
      assertBytes(dst.buffer!, want, 'after the writes');
      await src.unregister();
      await dst.unregister();
      expect([a.stats().regions, b.stats().regions]).toEqual([0, 0]);
    });

    it('refused where the work cannot be cut: triggered writes, port windows, staged GPU regions', async () => {
      const gpu = new HostGpu();
      const opts = {
        provider,
        nics: 2,
        opTimeoutMs: 10_000,
        limits: { maxMrBytes: M },
        gpu: gpu.ops,
      } as const;
      engines = [await createEngine(opts), await createEngine(opts)];
      const [a, b] = engines as [EfaEngine, EfaEngine];
      const src = await a.registerMemory(4 * M);
      const dst = await b.registerMemory(4 * M, { remote: true });
      const w = a.allocUvmWatcher(() => {});
      const e = await rejects(
        a.submitOnWatch(w, 1n, { kind: 'single', src, length: 100, dst: dst.desc, imm: 1 }),
        'UNSUPPORTED',
        'triggered write with regions in parts',
      );
      expect(e.message).toMatch(/registered in parts/);
      w.close();
      const port = a.openPort!({ count: [] });
      throws(
        () => port.setWindows([{ src, dst: dst.desc }]),
        'UNSUPPORTED',
        'port window over regions in parts',
      );
      port.close();
      const dp = gpu.alloc(M / 2);
      const staged = await a.registerMemory({ cuda: { ptr: dp, length: M / 2, device: 0 } });
      await rejects(
        a.submitSingleWrite({ src: staged, length: 100, dst: dst.desc, imm: 2 }),
        'UNSUPPORTED',
        'staged source to a region in parts',
      );
      expect(a.stats().ops.inFlight).toBe(0);
    });
  });
