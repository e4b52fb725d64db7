// @trellis/cuda's cudaWeightOps() satisfies this package's WeightSyncDeviceOps without either
// package importing the other (checked at compile time by the lint step), and where no GPU is
// usable it refuses with UNSUPPORTED and the reason.

import { TrellisError } from '@trellis/core';
import { type CudaWeightOps, cudaWeightOps, noGpuReason } from '@trellis/cuda';
import { describe, expect, it } from 'vitest';
import type { WeightSyncDeviceOps } from '../src/index.js';

// Both directions: the two declarations describe the same calls.
const asWeightSync: (o: CudaWeightOps) => WeightSyncDeviceOps = (o) => o;
const asCuda: (o: WeightSyncDeviceOps) => CudaWeightOps = (o) => o;
const reason = noGpuReason();

describe('cudaWeightOps as WeightSyncDeviceOps', () => {
  it.skipIf(reason === undefined)(
    `refuses with UNSUPPORTED and the reason (${reason ?? 'a GPU is usable'})`,
    () => {
      let err: unknown;
      try {
        asWeightSync(cudaWeightOps());
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(TrellisError);
      expect((err as TrellisError).code).toBe('UNSUPPORTED');
      expect((err as TrellisError).message).toBe(`cudaWeightOps: ${reason}`);
    },
  );

  it.skipIf(reason !== undefined)('returns the four calls weightsync makes', () => {
    const ops = asCuda(asWeightSync(cudaWeightOps()));
    expect(Object.keys(ops).sort()).toEqual(['alloc', 'copyRows', 'free', 'quantizeE4m3']);
  });
});
