/**
 * `@trellis/core` — the transfer contract every Trellis backend implements, its errors and
 * descriptors, the loopback reference fabric and the shared engine base.
 *
 * @packageDocumentation
 */
export { MAX_NICS, NetAddr } from './addr.js';
export { ImmCounterTable } from './counters.js';
export { HOST_MAPPING_DEVICE, MrDesc, type MrIpc, type MrParts, type NicKey } from './desc.js';
export {
  EngineBase,
  HEARTBEAT_IMM,
  HEARTBEAT_MISSES,
  PendingOp,
  RecvPool,
  Region,
  type RegionAlloc,
} from './engine-base.js';
export {
  CallSite,
  isTrellisError,
  TRELLIS_ERROR_CODES,
  TrellisError,
  type TrellisErrorCode,
  type TrellisErrorDetails,
} from './errors.js';
export {
  autoShards,
  countImms,
  type ImmShape,
  lanesBetween,
  MIN_SHARD_BYTES,
  SHARD_ALIGN,
  shardRanges,
} from './imms.js';
export { LoopbackEngine, type LoopbackEngineOptions } from './loopback/engine.js';
export {
  createLoopbackFabric,
  type FaultInjector,
  type LoopbackFabric,
  type LoopbackFabricOptions,
} from './loopback/fabric.js';
export { Prng } from './loopback/prng.js';
export {
  loadNativeAddon,
  MAX_STAGED_BYTES,
  MSG_HEADER,
  type NativeEngine,
  NativeEngineBase,
  type NativeEngineInit,
  type NativeEngineTuning,
  type NativeEvents,
  type NativePortCalls,
  nativeTuning,
} from './native-engine.js';
export type * from './types.js';
export { callUser } from './user.js';
export {
  type BarrierPlan,
  type ImmPlan,
  type PagedPlan,
  type Plan,
  type ScatterPlan,
  type ScatterPlanTarget,
  type SinglePlan,
  type ValidationContext,
  type WorkRequest,
  workRequests,
} from './validate.js';
