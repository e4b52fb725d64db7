/**
 * `@trellis/moe` — expert-parallel dispatch and combine for MoE layers over any Trellis engine.
 *
 * This version is the CPU reference that defines the results ({@link MoeAllToAll}); the CUDA
 * kernels, the NVLink path and the native host proxy build on the same protocol.
 *
 * @packageDocumentation
 */
export {
  type DispatchInput,
  type DispatchResult,
  MoeAllToAll,
  type MoeConfig,
  type MoeDType,
  type Phases,
} from './alltoall.js';
export { referenceCombine, referenceDispatch } from './reference.js';
export { combineAsF32, type Routing, syntheticExpert, syntheticInputs } from './synthetic.js';
