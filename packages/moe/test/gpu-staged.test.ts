// MoeAllToAll on device memory, with HostGpu standing in for the CUDA runtime and a device-ops
// double that does the kernels' work in JS on its memory (no GPU here): real libfabric engines
// moving staged regions, the device path's row lists and combine order checked against the CPU
// reference. On GPUs, test/gpu/moe.mjs runs the same with cudaMoeOps() — the real kernels.
import { createEngine } from '@trellis/backend-efa';
import { HostGpu } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import {
  combineAsF32,
  MoeAllToAll,
  type MoeConfig,
  type MoeDeviceOps,
  referenceCombine,
  referenceDispatch,
  syntheticExpert,
  syntheticInputs,
} from '../src/index.js';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function deviceOps(gpu: HostGpu, ipc = false): MoeDeviceOps & { calls: Record<string, number> } {
  const calls = { copyRows: 0, combine: 0 };
  // One process: a "handle" is the pointer itself, valid in every engine here.
  const ipcOps = ipc
    ? {
        ipcExport: (_d: number, p: bigint) => p.toString(16),
        ipcImport: (_d: number, h: string) => BigInt(`0x${h}`),
        ipcClose: () => {},
      }
    : {};
  const bf16 = (b: number) => new Float32Array(Uint32Array.of(b << 16).buffer)[0]!;
  return {
    calls,
    ...ipcOps,
    alloc: (_d, n) => gpu.alloc(n),
    free: (_d, p) => gpu.free(p),
    upload: (_d, dst, src) => gpu.at(dst).set(src),
    download: (_d, dst, src) => dst.set(gpu.at(src).subarray(0, dst.length)),
    copyRows(_d, dst, dOff, src, sOff, bytes) {
      calls.copyRows++;
      for (let i = 0; i < dOff.length; i++)
        gpu.at(dst + BigInt(dOff[i]!)).set(gpu.at(src + BigInt(sOff[i]!)).subarray(0, bytes));
    },
    combine(_d, rows, rowAt, w, topk, hidden, rowDtype, out, outDtype) {
      calls.combine++;
      const tokens = rowAt.length / topk;
      const o = new DataView(gpu.at(out).buffer, gpu.at(out).byteOffset);
      for (let t = 0; t < tokens; t++)
        for (let h = 0; h < hidden; h++) {
          let acc = 0;
          for (let k = 0; k < topk; k++) {
            const at = rowAt[t * topk + k]!;
            if (at < 0) continue;
            const r = gpu.at(rows + BigInt(at));
            const dv = new DataView(r.buffer, r.byteOffset);
            const v = rowDtype === 'fp32' ? dv.getFloat32(h * 4, true) : bf16(dv.getUint16(h * 2, true));
            acc = Math.fround(acc + Math.fround(w[t * topk + k]! * v));
          }
          if (outDtype === 'fp32') o.setFloat32((t * hidden + h) * 4, acc, true);
          else throw new Error('the test reads fp32 outputs');
        }
    },
  };
}

describe('MoeAllToAll on device memory (staged path, HostGpu)', () => {
  for (const [W, nodeSize, ipc] of [
    [3, 1, false],
    [4, 2, true],
  ] as const)
    it(`${W} ranks, ${nodeSize} per node${ipc ? ' (NVLink inside a node)' : ''}, fp8 tokens with scales, overflow past 2 private rows: dispatch and combine equal the reference`, async () => {
      const cfg = {
        worldSize: W,
        nodeSize,
        numExperts: 2 * W,
        topk: 2,
        hidden: 256,
        maxTokensPerRank: 10,
        inDtype: 'fp8',
        outDtype: 'fp32',
        scales: true,
        maxPrivateTokens: 2,
      } as const;
      const gpu = new HostGpu();
      const ops = deviceOps(gpu, ipc);
      const engines = await Promise.all(
        Array.from({ length: W }, () => createEngine({ provider: 'shm', gpu: gpu.ops })),
      );
      cleanup.push(() => Promise.all(engines.map((e) => e.close())).then(() => {}));
      const moes = await Promise.all(
        engines.map((e, rank) => MoeAllToAll.create(e, { ...cfg, rank }, { ops, device: 0 })),
      );
      cleanup.push(() => Promise.all(moes.map((m) => m.close())).then(() => {}));
      for (const m of moes) m.connect(moes.map((x) => x.descriptor));
      expect(moes[0]!.paths).toEqual(ipc ? ['self', 'nvlink', 'rdma', 'rdma'] : ['self', 'rdma', 'rdma']);
      if (ipc) expect(moes[3]!.paths).toEqual(['rdma', 'rdma', 'nvlink', 'self']);
      const one: MoeConfig = { ...cfg, rank: 0 };
      for (let round = 0; round < 2; round++) {
        const ins = syntheticInputs(one, 40 + round, round ? 'skewed' : 'random');
        const dev = ins.map((x) => {
          const tokens = gpu.alloc(Math.max(1, x.tokens.length));
          gpu.bytes(tokens).set(x.tokens);
          const scales = gpu.alloc(Math.max(4, x.scales!.byteLength));
          gpu.bytes(scales).set(new Uint8Array(x.scales!.buffer, x.scales!.byteOffset, x.scales!.byteLength));
          return { ...x, tokens, scales };
        });
        const res = await Promise.all(moes.map((m, r) => m.dispatch(dev[r])));
        const outs: Uint8Array[] = [];
        for (const [r, d] of res.entries()) {
          const want = referenceDispatch(one, ins, r);
          const rows = want.tokensPerExpert.reduce((a, b) => a + b, 0);
          expect(d!.tokensPerExpert).toEqual(want.tokensPerExpert);
          expect(d!.expertOffsets).toEqual(want.expertOffsets);
          const x = gpu.at(d!.expertX).slice(0, rows * cfg.hidden);
          expect(Buffer.compare(x, want.expertX)).toBe(0);
          const sc = gpu.at(d!.expertScales!).slice(0, rows * 2 * 4);
          expect(new Float32Array(sc.buffer)).toEqual(want.expertScales);
          outs.push(
            syntheticExpert(one, {
              tokensPerExpert: d!.tokensPerExpert,
              expertOffsets: d!.expertOffsets,
              expertX: x,
            }),
          );
        }
        const outPtrs = outs.map((o) => {
          const p = gpu.alloc(Math.max(1, o.length));
          gpu.bytes(p).set(o);
          return p;
        });
        const got = await Promise.all(
          moes.map((m, r) => m.combine({ expertOut: outPtrs[r]! }, { accumulate: 'fp32' })),
        );
        for (const [r, p] of got.entries()) {
          const n = ins[r]!.topkIds.length / cfg.topk;
          const f = new Float32Array(gpu.at(p!).slice(0, n * cfg.hidden * 4).buffer);
          expect(combineAsF32(one, f)).toEqual(referenceCombine(one, ins, outs, r));
        }
      }
      // One combine kernel per rank and round (the rows moved by row-copy kernels are checked above).
      expect(ops.calls.combine).toBe(2 * W);
      for (const e of engines) expect(e.stats().gpu.stagedRegions).toBe(2);
      // NVLink peers get immediates alone through the engine: fewer staged writes than without.
      const writes = engines.map((e) => e.stats().gpu.stagedWrites);
      if (ipc) for (const w of writes) expect(w).toBeLessThan(2 * 3 * (W - 1));
    });

  it('a GPU instance refuses host tokens, and a host instance device pointers', async () => {
    const gpu = new HostGpu();
    const e = await createEngine({ provider: 'shm', gpu: gpu.ops });
    cleanup.push(() => e.close());
    const cfg = {
      worldSize: 1,
      rank: 0,
      nodeSize: 1,
      numExperts: 2,
      topk: 1,
      hidden: 8,
      maxTokensPerRank: 2,
      inDtype: 'bf16',
      outDtype: 'bf16',
    } as const;
    const m = await MoeAllToAll.create(e, cfg, { ops: deviceOps(gpu), device: 0 });
    const h = await MoeAllToAll.create(e, { ...cfg, immBase: 0x100 }); // its own immediates on e
    cleanup.push(
      () => m.close(),
      () => h.close(),
    );
    const ids = Int32Array.of(0);
    const w = Float32Array.of(1);
    await expect(
      m.dispatch({ tokens: new Uint8Array(16) as unknown as bigint, topkIds: ids, topkWeights: w }),
    ).rejects.toThrow(
      /^MoeAllToAll\.dispatch: tokens must be a device pointer \(bigint\) for a GPU instance$/,
    );
    await expect(
      h.dispatch({ tokens: 5n as unknown as Uint8Array, topkIds: ids, topkWeights: w }),
    ).rejects.toThrow(/^MoeAllToAll\.dispatch: tokens must be a Uint8Array \(host memory\)$/);
  });
});
