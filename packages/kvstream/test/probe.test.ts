// PeerProbe: a probe that fails reports its peer dead, except a probe that times out while the
// owner heard from the peer (one of its writes to it completed): queued behind a backlog of bulk
// writes to a live peer (one prefill feeding several decode processes over shm), a probe can take
// longer than its deadline, and that peer is slow, not dead.
import { createLoopbackFabric, type TransferEngine, TrellisError } from '@trellis/core';
import { describe, expect, it } from 'vitest';
import { PeerProbe } from '../src/probe.js';

/** An engine whose probes (submitImm) settle as the test says. */
function fakeEngine() {
  const posted: Array<{ resolve: () => void; reject: (e: TrellisError) => void; timeoutMs?: number }> = [];
  const engine = {
    closed: false,
    submitImm(req: { timeoutMs?: number }) {
      return new Promise<void>((resolve, reject) =>
        posted.push({ resolve, reject, timeoutMs: req.timeoutMs }),
      );
    },
  } as unknown as TransferEngine;
  return { engine, posted };
}

const until = async (f: () => boolean) => {
  for (let i = 0; i < 2000 && !f(); i++) await new Promise((r) => setTimeout(r, 1));
  expect(f()).toBe(true);
};

describe('PeerProbe', () => {
  it('a probe timing out while the peer completed other work is not a death; one with no sign of life, or a non-timeout failure, is', async () => {
    const peer = createLoopbackFabric({ nics: 1, seed: 1 }).createEngine().address;
    const { engine, posted } = fakeEngine();
    const dead: string[] = [];
    const probe = new PeerProbe(engine, 7, 5, (p, e) =>
      dead.push(`${p.toString() === peer.toString()} ${e.code}`),
    );
    probe.add(peer);
    await until(() => posted.length === 1);
    // The probe's deadline is four intervals.
    expect(posted[0]!.timeoutMs).toBe(20);
    // Heard from meanwhile: slow, not dead; probed again.
    probe.heard(peer.toString());
    posted[0]!.reject(new TrellisError('TIMEOUT', 'submitImm: timed out after 20 ms'));
    await until(() => posted.length === 2);
    expect(dead).toEqual([]);
    // A probe that completes: nothing.
    posted[1]!.resolve();
    await until(() => posted.length === 3);
    expect(dead).toEqual([]);
    // Heard from before this probe was posted, not since: dead.
    posted[2]!.reject(new TrellisError('TIMEOUT', 'submitImm: timed out after 20 ms'));
    await until(() => dead.length === 1);
    expect(dead).toEqual(['true TIMEOUT']);
    // Dropped: not probed again.
    await new Promise((r) => setTimeout(r, 30));
    expect(posted.length).toBe(3);

    // A failure other than a timeout is a death even with work completing.
    probe.add(peer);
    await until(() => posted.length === 4);
    probe.heard(peer.toString());
    posted[3]!.reject(new TrellisError('PEER_LOST', 'gone'));
    await until(() => dead.length === 2);
    expect(dead).toEqual(['true TIMEOUT', 'true PEER_LOST']);
    probe.close();
  });
});
