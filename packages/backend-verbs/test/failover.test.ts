// NIC failover on backend-verbs (the software RC model, 2 NICs, one process): a NIC failed under
// 32 writes with `failNic` (the engine stops posting to and polling it; work posted on it fails
// with NIC_FAILED, its fate at the target unknown) is routed around with exact counts.
import { assertBytes, pattern, SettleTracker, sleep } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { createEngine, type VerbsEngine } from '../src/index.js';

let engines: VerbsEngine[] = [];
afterEach(async () => {
  await Promise.all(engines.map((e) => e.close()));
  engines = [];
});

describe('NIC failover on backend-verbs (RC model, 2 NICs)', () => {
  it('NIC 1 of the writer failed under 32 writes: all resolve, bytes and immediate counts exact', async () => {
    // The lane off: the data must cross the NICs to be failed over.
    const opts = {
      model: true,
      nics: 2,
      opTimeoutMs: 10_000,
      failover: { cooldownMs: 60_000 },
      sameHostLane: false,
    } as const;
    engines = [await createEngine(opts), await createEngine(opts)];
    const [a, b] = engines as [VerbsEngine, VerbsEngine];
    const piece = 128 * 1024;
    const n = 32;
    const src = await a.registerMemory(piece * n);
    src.buffer!.set(pattern(piece * n, 21));
    const dst = await b.registerMemory(piece * n, { remote: true });
    const want = pattern(piece * n, 22);
    dst.buffer!.set(want);
    const imm = 0x6200;
    let expected = 0;
    const t = new SettleTracker();
    for (let i = 0; i < n; i++) {
      const req = {
        kind: 'single',
        src,
        srcOffset: i * piece,
        dstOffset: i * piece,
        length: piece,
        dst: dst.desc,
        imm,
      } as const;
      expected += b.expectedImms(req);
      t.track(a.submitSingleWrite(req));
      if (i === 3) a.failNic(1);
    }
    await t.settled(30_000);
    expect(t.outcomes.every((o) => o === 'resolved')).toBe(true);
    await b.immCounter(imm).wait(expected, { timeoutMs: 10_000 });
    await sleep(50);
    expect(b.immCounter(imm).total).toBe(expected);
    want.set(src.buffer!);
    assertBytes(dst.buffer!, want, 'after the failure');
    const st = a.stats();
    expect(st.failover.nicsMarkedDown).toBe(1);
    expect(st.nics[1]!.up).toBe(false);
    expect(st.failover.controlImms).toBe(expected);
  });
});
