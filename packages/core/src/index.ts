/**
 * `@trellis/core` — what users of Trellis need: the transfer contract (`TransferEngine` and the
 * requests it takes), its errors, the `NetAddr`/`MrDesc` encodings, immediate counting, and the
 * loopback reference fabric. Backend authors build on `@trellis/core/kit`; backends are tested
 * with `@trellis/core/conformance`.
 *
 * @packageDocumentation
 */
export { MAX_NICS, NetAddr } from './addr.js';
export { HOST_MAPPING_DEVICE, MrDesc, type MrIpc, type MrParts, type NicKey } from './desc.js';
export type * from './device.js';
export {
  CallSite,
  captureCallSites,
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
/** The reserved heartbeat immediate (never wait on it) and the missed heartbeats that lose a peer. */
export { HEARTBEAT_IMM, HEARTBEAT_MISSES } from './kit/engine-base.js';
export { LoopbackEngine, type LoopbackEngineOptions } from './loopback/engine.js';
export {
  createLoopbackFabric,
  type FaultInjector,
  type LoopbackFabric,
  type LoopbackFabricOptions,
} from './loopback/fabric.js';
export { Prng } from './loopback/prng.js';
export type * from './types.js';
