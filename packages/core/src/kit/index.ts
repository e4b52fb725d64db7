/**
 * `@trellis/core/kit` — the engine kit, for authors of backends: {@link EngineBase} (validation,
 * settlement, deadlines, failover, regions in parts) and {@link NativeEngineBase}, the JS half of a
 * native engine whose C++ half is the headers of `native/include/trellis` beside this module
 * (built into a backend's addon with `native/cmake/TrellisAddon.cmake`). Users of Trellis need
 * only `@trellis/core`.
 *
 * @packageDocumentation
 */

export {
  type AddonInstallSpec,
  addonCandidates,
  installNativeAddon,
  loadNativeAddon,
  prebuildTag,
  resolveNativeAddon,
} from './addon.js';
export { ImmCounterTable } from './counters.js';
export { EngineBase, type GpuPath, HEARTBEAT_IMM, HEARTBEAT_MISSES } from './engine-base.js';
export { WR_SHAPE } from './format.js';
export {
  defaultBusyPollUs,
  MAX_STAGED_BYTES,
  MSG_HEADER,
  type NativeEngine,
  NativeEngineBase,
  type NativeEngineInit,
  type NativeEngineTuning,
  type NativeEventCallback,
  type NativeEvents,
  type NativeModuleCalls,
  type NativePortCalls,
  nativeTuning,
  type PackedWrite,
  packWrite,
  type WritePeers,
  type WriteScratch,
} from './native-engine.js';
export { type OpOwner, PendingOp } from './pending-op.js';
export { type PartedRegion, RecvPool, Region, type RegionAlloc, type RegionOwner } from './region.js';
export { type Timer, Timers } from './timers.js';
export { callUser } from './user.js';
export {
  type BarrierPlan,
  type ImmPlan,
  type PagedPlan,
  type Plan,
  type RunsPlan,
  type ScatterPlan,
  type ScatterPlanTarget,
  type SinglePlan,
  show,
  type ValidationContext,
  type WorkRequest,
  workRequests,
} from './validate.js';
