// The conformance suite of @trellis/core/conformance on backend-efa: shm and tcp, 1, 2 and 4 NICs,
// in one process.
import { defineConformanceSuite, groupOf, skipFaultCases } from '@trellis/core/conformance';
import { createEngine, type EfaEngineOptions } from '../src/index.js';

const noFaults =
  'needs the fault injector; libfabric faults are tested with real processes in cross-process.test.ts';

// With 1 and 4 NICs the engines run as users get them: host writes between engines of this host
// take the same-host lane (data copied into the target's shared region, immediates through the
// provider). With 2 NICs the lane is off, so every byte goes through the provider.
for (const provider of ['shm', 'tcp'] as const) {
  for (const nics of [1, 2, 4]) {
    const lane = nics !== 2;
    const opts: EfaEngineOptions = { provider, nics, opTimeoutMs: 10_000, sameHostLane: lane };
    defineConformanceSuite({
      name: `backend-efa provider=${provider} nics=${nics}${lane ? '' : ' sameHostLane=false'}`,
      nics,
      seed: nics,
      createGroup: groupOf(() => createEngine(opts)),
      skip: skipFaultCases(noFaults),
    });
  }
}
