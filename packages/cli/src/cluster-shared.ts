// What the demo's processes agree on: layouts, plans and the data they are checked against.
import type { KvLayoutSpec } from '@trellis/kvstream';
import type { MoeConfig } from '@trellis/moe';
import { planWeightSync, range, shard, type WeightSyncPlan, whole } from '@trellis/weightsync';

/** kvstream: 8 layers, K and V of 256 B per token, 16 tokens per page, 512 pages. */
export const DEMO_KV_LAYOUT: KvLayoutSpec = {
  layers: 8,
  tokensPerPage: 16,
  pages: 512,
  tensors: [
    { name: 'k', bytesPerToken: 256 },
    { name: 'v', bytesPerToken: 256 },
  ],
};

/** The byte token `t` of segment `seg` holds for request `tag` once prefill has computed it. */
export function kvByte(tag: string, seg: number, t: number, b: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < tag.length; i++) h = Math.imul(h ^ tag.charCodeAt(i), 0x01000193);
  return (h + seg * 31 + t * 7 + b * 3) & 0xff;
}

/**
 * weightsync: a 4-layer model of ~34 MiB in bf16 on 3 trainer ranks (FSDP) to 2 inference ranks
 * (TP2, q/k/v fused into qkv, the MLP's up projection quantised to fp8 e4m3).
 */
export function demoWeightPlan(): WeightSyncPlan {
  const model = [];
  const placements: Record<string, ReturnType<typeof shard>> = {};
  const tensors = [];
  for (let l = 0; l < 4; l++) {
    for (const [n, rows, cols] of [
      ['q', 1024, 1024],
      ['k', 256, 1024],
      ['v', 256, 1024],
      ['o', 1024, 1024],
      ['up', 2048, 1024],
      ['down', 1024, 2048],
    ] as const) {
      const name = `l${l}.${n}`;
      model.push({ name, shape: [rows, cols], dtype: 'bf16' as const });
      placements[name] = shard('rows', range(3));
    }
    tensors.push({
      name: `l${l}.qkv`,
      parts: ['q', 'k', 'v'].map((n) => `l${l}.${n}`),
      placement: shard('rows', range(2)),
    });
    tensors.push({ name: `l${l}.o`, placement: shard('cols', range(2)) });
    tensors.push({
      name: `l${l}.up`,
      dtype: 'fp8e4m3' as const,
      quantBlock: 128,
      placement: shard('rows', range(2)),
    });
    tensors.push({ name: `l${l}.down`, placement: whole(0, 1) });
  }
  return planWeightSync(model, { ranks: 3, placements }, { ranks: 2, tensors }, { senderNics: 2 });
}

/** The value of element (r, c) of model tensor `t`. */
export function weightValue(t: number, r: number, c: number): number {
  const h = Math.imul(t * 7919 + r * 104729 + c * 1299709 + 17, 0x9e3779b1) >>> 0;
  return (h & 1 ? -1 : 1) * 2 ** ((h % 16) - 8) * (1 + ((h >>> 8) % 1000) / 1000);
}

/** moe: 64 experts over the ranks, top-8, hidden 1024 bf16, up to 128 tokens per rank. */
export function demoMoeConfig(world: number): Omit<MoeConfig, 'rank'> {
  return {
    worldSize: world,
    nodeSize: 1,
    numExperts: 64 - (64 % world),
    topk: 8,
    hidden: 1024,
    maxTokensPerRank: 128,
    inDtype: 'bf16',
    outDtype: 'bf16',
    maxPrivateTokens: 32,
  };
}
