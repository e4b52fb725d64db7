/**
 * `@trellis/weightsync` — point-to-point weight sync from trainer ranks to an inference fleet.
 *
 * {@link planWeightSync} turns the trainer's and the inference side's shardings (FSDP, TP, EP,
 * fused projections, fp8 quantisation) into a static schedule of writes, balanced by bytes per
 * sender and NIC. Each step, every trainer rank runs its part ({@link WeightSyncSender.sync}): stage,
 * convert, write straight into the inference ranks' inactive weight buffers, barrier. Inference ranks
 * switch versions when the barrier is complete ({@link WeightSyncReceiver.expect}).
 *
 * @packageDocumentation
 */

export type { WeightSyncDeviceOps } from './device.js';
export {
  type Box,
  chunkBoxes,
  DTYPE_BYTES,
  type DType,
  type InferenceLayout,
  type InferenceTensorSpec,
  type Piece,
  type Placement,
  range,
  shard,
  type TensorSpec,
  type TrainerLayout,
  whole,
} from './model.js';
export {
  checkPlanCoverage,
  type PlanOp,
  type PlanOptions,
  parsePlan,
  planWeightSync,
  type WeightSyncPlan,
} from './plan.js';
export { bf16ToF32, E4M3_MAX, e4m3ToF32, f32ToBf16, f32ToE4m3, quantizeRows } from './quant.js';
export {
  type SyncProgress,
  type SyncReport,
  type TensorView,
  WeightSyncReceiver,
  type WeightSyncReceiverOptions,
  WeightSyncSender,
  type WeightSyncSenderOptions,
} from './runtime.js';
