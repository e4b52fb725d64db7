import { defineConformanceSuite, groupOf, skipFaultCases } from '@trellis/core/conformance';
import { createEngine, type EfaEngineOptions } from '../src/index.js';

const noFaults =
  'needs the fault injector; libfabric faults are tested with real processes in cross-process.test.ts';

for (const provider of ['shm', 'tcp'] as const) {
  for (const nics of [1, 2, 4]) {
    const opts: EfaEngineOptions = { provider, nics, opTimeoutMs: 10_000 };
    defineConformanceSuite({
      name: `backend-efa provider=${provider} nics=${nics}`,
      nics,
      seed: nics,
      createGroup: groupOf(() => createEngine(opts)),
      skip: skipFaultCases(noFaults),
    });
  }
}
