/**
 * `@trellis/moe` — expert-parallel dispatch and combine for MoE layers over any Trellis engine.
 *
 * {@link MoeAllToAll} runs one protocol on host memory (the CPU reference that defines the
 * results) or on CUDA memory (this package's kernels, {@link cudaMoeOps}); the NVLink path and the
 * native host proxy build on the same protocol. {@link MoeStream} is the same NVLink protocol queued
 * on CUDA streams with device-resident routing, capturable in a CUDA graph.
 *
 * @packageDocumentation
 */

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
export { cudaMoeOps } from './cuda.js';
export type {
  MoeDeviceOps,
  MoeDirectKernels,
  MoePackArgs,
  MoeProxyKernels,
  MoeStreamArgs,
  MoeStreamKernels,
} from './device.js';
export { referenceCombine, referenceDispatch } from './reference.js';
export {
  MoeStream,
  type MoeStreamConfig,
  type MoeStreamDevice,
  type MoeStreamDispatch,
  type MoeStreamInput,
  type StreamHandle,
} from './stream.js';
export { combineAsF32, type Routing, syntheticExpert, syntheticInputs } from './synthetic.js';
