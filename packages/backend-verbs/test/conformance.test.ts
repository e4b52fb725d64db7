import { defineConformanceSuite, groupOf, skipFaultCases } from '@trellis/core/conformance';
import { createEngine } from '../src/index.js';

const noFaults =
  'needs the fault injector; verbs failures are driven through the RC model in model.test.ts and with real processes in cross-process.test.ts';

for (const nics of [1, 2]) {
  defineConformanceSuite({
    name: `backend-verbs rc-model nics=${nics}`,
    nics,
    seed: nics,
    createGroup: groupOf(() => createEngine({ model: true, nics, opTimeoutMs: 10_000 })),
    skip: skipFaultCases(noFaults),
  });
}
