// The engine-port suite on backend-verbs over the software RC model, 1 and 2 NICs.
import { definePortSuite, groupOf } from '@trellis/core/conformance';
import { createEngine } from '../src/index.js';
import { addon } from '../src/native.js';

for (const nics of [1, 2])
  definePortSuite(
    `backend-verbs rc-model nics=${nics}`,
    groupOf(() => createEngine({ model: true, nics, opTimeoutMs: 10_000 })),
    addon(),
    { targetCompletes: true },
  );
