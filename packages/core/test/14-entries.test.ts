// The two entries of @trellis/core: the root is what users need; `@trellis/core/kit` is what backend
// authors need. This pins which names each exports, through the package's own `exports` map.
import { describe, expect, it } from 'vitest';

const KIT_ONLY = [
  'EngineBase',
  'NativeEngineBase',
  'PendingOp',
  'Region',
  'RecvPool',
  'ImmCounterTable',
  'loadNativeAddon',
  'nativeTuning',
  'packWrite',
  'workRequests',
  'callUser',
  'MSG_HEADER',
  'MAX_STAGED_BYTES',
];

describe('package entries', () => {
  it('the root exports the user API and none of the kit', async () => {
    const root = await import('@trellis/core');
    for (const name of [
      'NetAddr',
      'MrDesc',
      'TrellisError',
      'isTrellisError',
      'captureCallSites',
      'TRELLIS_ERROR_CODES',
      'createLoopbackFabric',
      'countImms',
      'autoShards',
      'lanesBetween',
      'HEARTBEAT_IMM',
      'HEARTBEAT_MISSES',
    ])
      expect(root, name).toHaveProperty(name);
    for (const name of KIT_ONLY) expect(root, name).not.toHaveProperty(name);
    expect(root.HEARTBEAT_IMM).toBe(0xffffffff);
  });

  it('@trellis/core/kit exports what a backend is built from', async () => {
    const kit = await import('@trellis/core/kit');
    for (const name of [...KIT_ONLY, 'HEARTBEAT_IMM', 'WR_SHAPE']) expect(kit, name).toHaveProperty(name);
    expect(typeof kit.NativeEngineBase).toBe('function');
    expect(Object.getPrototypeOf(kit.NativeEngineBase)).toBe(kit.EngineBase);
  });
});
