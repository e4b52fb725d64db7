// cudaMoeOps (src/cuda.ts over the addon's CUDA target, native/cuda/): where no GPU is usable it
// refuses with UNSUPPORTED and the reason; where one is, its memory calls move every byte. The
// kernels are checked against the CPU reference on GPUs by test/gpu/moe.mjs (test/gpu.test.ts).
import { createRequire } from 'node:module';
import { TrellisError } from '@trellis/core';
import { describe, expect, it } from 'vitest';
import { cudaMoeOps } from '../src/index.js';

const addon = createRequire(import.meta.url)('../build/Release/trellis_moe.node') as {
  cudaStatus(): { error: string; devices: number };
};
const status = addon.cudaStatus();

describe('cudaMoeOps', () => {
  it('the addon exports every call cudaMoeOps makes, built with or without CUDA', () => {
    const names = Object.keys(addon).sort();
    expect(names).toEqual(
      [
        'MoeProxy',
        'allocMapped',
        'alloc',
        'copy',
        'copyRowsIndexed',
        'cudaStatus',
        'free',
        'ipcClose',
        'ipcExport',
        'ipcImport',
        'moeCombine',
        'moeCombineDirect',
        'moeCombinePack',
        'moeDispatchDirect',
        'moeDispatchPack',
        'moeGather',
        'moePackScratch',
        'moeUnpack',
        'moeWaitFlags',
        'moeSmCount',
        'moeStDispatchSend',
        'moeStDispatchRecv',
        'moeStCombineSend',
        'moeStCombineRecv',
        'moeStreamSizes',
        'pointerRange',
        'streamCreate',
        'streamDestroy',
        'streamSynchronize',
        'streamQuery',
        'streamWaitEvent',
        'eventCreate',
        'eventDestroy',
        'eventRecord',
        'eventSynchronize',
        'eventElapsed',
        'eventIpcExport',
        'eventIpcImport',
        'captureBegin',
        'captureEnd',
        'graphLaunch',
        'graphDestroy',
        'enablePeerAccess',
      ].sort(),
    );
  });

  it.skipIf(status.error === '')(
    `refuses with UNSUPPORTED and the reason (${status.error || 'a GPU is usable'})`,
    () => {
      let err: unknown;
      try {
        cudaMoeOps();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(TrellisError);
      expect((err as TrellisError).code).toBe('UNSUPPORTED');
      expect((err as TrellisError).message).toBe(`cudaMoeOps: ${status.error}`);
    },
  );

  it.skipIf(status.error !== '')(
    'moves bytes to the device and back, and offers the proxy and direct kernels',
    () => {
      const ops = cudaMoeOps();
      const src = Uint8Array.from({ length: 4096 }, (_, i) => (i * 7 + 3) & 0xff);
      const p = ops.alloc(0, src.length);
      try {
        ops.upload(0, p, src);
        const back = new Uint8Array(src.length);
        ops.download(0, back, p);
        expect(Buffer.compare(back, src)).toBe(0);
      } finally {
        ops.free(0, p);
      }
      expect(Object.keys(ops.proxy).sort()).toEqual(
        ['allocMapped', 'combinePack', 'dispatchPack', 'gather', 'packScratchBytes', 'unpack'].sort(),
      );
      expect(Object.keys(ops.direct).sort()).toEqual(['combine', 'dispatch', 'wait'].sort());
    },
  );
});
