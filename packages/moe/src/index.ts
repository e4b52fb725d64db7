/**
 * `@trellis/moe` — expert-parallel dispatch and combine for MoE layers over any Trellis engine.
 *
 * {@link MoeAllToAll} runs one protocol on host memory (the CPU reference that defines the
 * results) or on CUDA memory (row-copy and combine kernels, `cudaMoeOps()` of `@trellis/cuda`);
 * the NVLink path and the native host proxy build on the same protocol.
 *
 * @packageDocumentation
 */

/** The device work of a GPU instance (defined in core, where `@trellis/cuda` implements it). */
export type { MoeDeviceOps } from '@trellis/core';
export {
  type DispatchInput,
  type DispatchResult,
  MoeAllToAll,
  type MoeBuffer,
  type MoeConfig,
  type MoeDeviceOptions,
  type MoeDType,
  type MoeMemory,
  type MoeScales,
  type Phases,
} from './alltoall.js';
export { referenceCombine, referenceDispatch } from './reference.js';
export { combineAsF32, type Routing, syntheticExpert, syntheticInputs } from './synthetic.js';
