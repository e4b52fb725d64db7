import { defineConformanceSuite, skipFaultCases } from '@trellis/core/conformance';
import { createEngine, type VerbsEngineOptions } from '../src/index.js';

const noFaults =
  'needs the fault injector; verbs failures are driven through the RC model in model.test.ts and with real processes in cross-process.test.ts';

for (const nics of [1, 2]) {
  const opts: VerbsEngineOptions = { model: true, nics, opTimeoutMs: 10_000 };
  defineConformanceSuite({
    name: `backend-verbs rc-model nics=${nics}`,
    nics,
    seed: nics,
    createGroup: async (size) => {
      const engines = await Promise.all(Array.from({ length: size }, () => createEngine(opts)));
      return {
        engines,
        close: async () => {
          await Promise.all(engines.map((e) => e.close()));
        },
      };
    },
    skip: skipFaultCases(noFaults),
  });
}
