// The staged GPU path over the verbs domain (the software RC model here), with HostGpu standing in
// for CUDA: the same control messages and ordering as on backend-efa (see its staged.test.ts).
import { fillXorshift, HostGpu } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { createEngine, type VerbsEngine } from '../src/index.js';

const open: VerbsEngine[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((e) => e.close()));
});

describe('backend-verbs: staged CUDA regions (HostGpu in place of CUDA)', () => {
  it('staged → staged single write and paged writes: bytes on the device before the immediates', async () => {
    const gpu = new HostGpu();
    const a = await createEngine({ model: true, nics: 2, gpu: gpu.ops });
    const b = await createEngine({ model: true, nics: 2, gpu: gpu.ops });
    open.push(a, b);
    const n = 6 << 20;
    const sp = gpu.alloc(n);
    const dp = gpu.alloc(n);
    fillXorshift(gpu.bytes(sp), 21);
    const src = await a.registerMemory({ cuda: { ptr: sp, length: n, device: 0 } });
    const dst = await b.registerMemory({ cuda: { ptr: dp, length: n, device: 0 } }, { remote: true });
    const single = { src, length: n / 2, dst: dst.desc, imm: 7 };
    await a.submitSingleWrite(single);
    await b.immCounter(7).wait(b.expectedImms({ kind: 'single', ...single }), { timeoutMs: 10_000 });
    expect(Buffer.compare(gpu.bytes(dp).subarray(0, n / 2), gpu.bytes(sp).subarray(0, n / 2))).toBe(0);
    const pages = {
      src,
      srcPages: Uint32Array.of(5, 3, 4),
      srcStride: 1 << 20,
      dst: dst.desc,
      dstPages: Uint32Array.of(3, 4, 5),
      dstStride: 1 << 20,
      pageBytes: 1 << 20,
      imm: 8,
    };
    await a.submitPagedWrites(pages);
    await b.immCounter(8).wait(3, { timeoutMs: 10_000 });
    const s = gpu.bytes(sp);
    const d = gpu.bytes(dp);
    for (const [sp_, dp_] of [
      [5, 3],
      [3, 4],
      [4, 5],
    ] as const)
      expect(
        Buffer.compare(d.subarray(dp_ << 20, (dp_ + 1) << 20), s.subarray(sp_ << 20, (sp_ + 1) << 20)),
      ).toBe(0);
    expect(a.stats().gpu).toEqual({
      directRegions: 0,
      stagedRegions: 1,
      stagedToHostBytes: n / 2 + 3 * (1 << 20),
      stagedToDeviceBytes: 0,
      stagedWrites: 2,
      laneWrites: 0,
      laneBytes: 0,
      laneFallbacks: 0,
    });
    expect(b.stats().gpu.stagedToDeviceBytes).toBe(n / 2 + 3 * (1 << 20));
    expect([b.immCounter(7).total, b.immCounter(8).total]).toEqual([
      b.expectedImms({ kind: 'single', ...single }),
      3,
    ]);
  });
});
