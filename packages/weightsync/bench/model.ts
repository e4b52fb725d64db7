// The synthetic model of the weightsync benchmark and the projection, and its shardings.
import { planWeightSync, range, shard, type TensorSpec, type WeightSyncPlan } from '@trellis/weightsync';

export interface BenchConfig {
  trainers: number;
  inference: number;
  /** Tensors of rows × cols bf16. */
  tensors: number;
  rows: number;
  cols: number;
  senderNics: number;
}

/** FSDP dim-0 shards over every trainer; tensor-parallel (rows) over every inference rank. */
export function benchPlan(c: BenchConfig): WeightSyncPlan {
  const model: TensorSpec[] = range(c.tensors).map((i) => ({
    name: `layer${i}.w`,
    shape: [c.rows, c.cols],
    dtype: 'bf16',
  }));
  return planWeightSync(
    model,
    {
      ranks: c.trainers,
      placements: Object.fromEntries(model.map((t) => [t.name, shard('rows', range(c.trainers))])),
    },
    {
      ranks: c.inference,
      tensors: model.map((t) => ({ name: t.name, placement: shard('rows', range(c.inference)) })),
    },
    { senderNics: c.senderNics, maxOpBytes: 16 << 20 },
  );
}
