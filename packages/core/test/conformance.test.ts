// The conformance suite on the loopback fabric: 1, 2 and 4 NICs, three delivery orders.
import { defineConformanceSuite } from '../src/conformance/index.js';
import { createLoopbackFabric } from '../src/index.js';

// The loopback fabric under three seeds (three different delivery orders) and 1, 2 and 4 NICs.
for (const nics of [1, 2, 4]) {
  for (const seed of [1, 2, 3]) {
    defineConformanceSuite({
      name: `loopback nics=${nics} seed=${seed}`,
      nics,
      seed,
      createGroup: async (size) => {
        const fabric = createLoopbackFabric({ nics, seed });
        const engines = Array.from({ length: size }, () => fabric.createEngine());
        return { engines, faults: fabric.faults, close: () => fabric.close() };
      },
    });
  }
}
