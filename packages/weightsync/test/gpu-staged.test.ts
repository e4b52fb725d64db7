// Weight sync from CUDA weights into CUDA buffers on the staged path, with HostGpu standing in for
// the CUDA runtime and a device-ops double that runs the CPU reference quantiser on its memory (no
// GPU here). On GPUs, test/gpu/ws.mjs runs the same flow with cudaWeightOps() — the real kernel.
import { createEngine } from '@trellis/backend-efa';
import { HostGpu, outcome } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import {
  planWeightSync,
  quantizeRows,
  range,
  shard,
  type WeightSyncDeviceOps,
  WeightSyncReceiver,
  WeightSyncSender,
} from '../src/index.js';
import { diffWeights, expectedInference, trainerSources } from './helpers.js';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function hostDeviceOps(gpu: HostGpu): WeightSyncDeviceOps & { calls: Record<string, number> } {
  const calls = { copyRows: 0, quantizeE4m3: 0 };
  return {
    calls,
    alloc: (_d, bytes) => gpu.alloc(bytes),
    free: (_d, ptr) => gpu.free(ptr),
    copyRows(_d, dst, src, pitch, rowBytes, rows) {
      calls.copyRows++;
      const s = gpu.at(src);
      const d = gpu.at(dst);
      for (let r = 0; r < rows; r++) d.set(s.subarray(r * pitch, r * pitch + rowBytes), r * rowBytes);
    },
    quantizeE4m3(_d, src, srcOffset, srcPitch, rows, cols, block, dst, scales) {
      calls.quantizeE4m3++;
      const s = gpu.at(src);
      const u16 = new Uint16Array(s.buffer, s.byteOffset, Math.floor(s.length / 2));
      const sc = gpu.at(scales);
      quantizeRows(
        u16,
        srcOffset,
        srcPitch,
        rows,
        cols,
        block,
        gpu.at(dst),
        new Float32Array(sc.buffer, sc.byteOffset, (rows * cols) / block),
      );
    },
  };
}

describe('weightsync on CUDA memory (staged path, HostGpu)', () => {
  it('2 trainers → 2 inference ranks, bf16 and fp8 tensors, every byte in the device buffers', async () => {
    const model = range(4).map((i) => ({ name: `w${i}`, shape: [64, 128], dtype: 'bf16' as const }));
    const plan = planWeightSync(
      model,
      { ranks: 2, placements: Object.fromEntries(model.map((t) => [t.name, shard('rows', range(2))])) },
      {
        ranks: 2,
        tensors: model.map((t, i) => ({
          name: t.name,
          placement: shard('cols', range(2)),
          ...(i % 2 ? { dtype: 'fp8e4m3' as const, quantBlock: 32 } : {}),
        })),
      },
      { maxOpBytes: 4096 },
    );
    const gpu = new HostGpu();
    const dev = hostDeviceOps(gpu);
    const engines = await Promise.all(range(4).map(() => createEngine({ provider: 'shm', gpu: gpu.ops })));
    cleanup.push(() => Promise.all(engines.map((e) => e.close())).then(() => {}));
    const rxs = await Promise.all(
      range(2).map(async (rank) => {
        const e = engines[2 + rank]!;
        const reg = () => {
          const ptr = gpu.alloc(plan.inferenceBytes[rank]!);
          return e.registerMemory(
            { cuda: { ptr, length: plan.inferenceBytes[rank]!, device: 0 } },
            { remote: true },
          );
        };
        return WeightSyncReceiver.create({ engine: e, plan, rank, buffers: [await reg(), await reg()] });
      }),
    );
    const sources = trainerSources(plan);
    const targets = rxs.map((r) => r.descriptors());
    const without = await outcome(
      WeightSyncSender.create({
        engine: engines[0]!,
        plan,
        rank: 0,
        source: { cuda: { ptr: gpu.alloc(16), length: plan.trainerBytes[0]!, device: 0 } },
        targets,
      }),
    );
    expect(without).toMatch(/^INVALID_ARGUMENT: WeightSyncSender: a CUDA source needs device/);
    const txs = await Promise.all(
      range(2).map((rank) => {
        const ptr = gpu.alloc(sources[rank]!.length);
        gpu.bytes(ptr).set(sources[rank]!);
        return WeightSyncSender.create({
          engine: engines[rank]!,
          plan,
          rank,
          source: { cuda: { ptr, length: sources[rank]!.length, device: 0 } },
          device: dev,
          targets,
          stagingBytes: 8192,
        });
      }),
    );
    cleanup.push(async () => {
      for (const t of txs) await t.close();
    });
    const done = rxs.map((r) => r.expect({ step: 1, version: 1, timeoutMs: 20_000 }));
    const reports = await Promise.all(txs.map((t) => t.sync({ step: 1, version: 1 })));
    await Promise.all(done);
    const want = expectedInference(plan);
    for (const [d, r] of rxs.entries()) {
      const { version, buffer } = r.served();
      expect([version, buffer.path]).toEqual([1, 'staged']);
      expect(diffWeights(plan, d, gpu.bytes(buffer.cuda!.ptr), want[d]!)).toBe('ok');
      expect(() => r.weights()).toThrow(/^WeightSyncReceiver\.weights: the buffers are CUDA memory/);
    }
    const ops = plan.ops;
    expect(reports.reduce((n, x) => n + x.bytes, 0)).toBe(ops.reduce((n, o) => n + o.bytes, 0));
    // Every op was staged on the device: a row copy or the quantiser, once each.
    expect(dev.calls).toEqual({
      copyRows: ops.filter((o) => !o.quant).length,
      quantizeE4m3: ops.filter((o) => o.quant).length,
    });
    const gs = engines.map((e) => e.stats().gpu);
    expect(gs[2]!.stagedToDeviceBytes + gs[3]!.stagedToDeviceBytes).toBe(
      ops.reduce((n, o) => n + o.bytes, 0),
    );
  });
});
