// The engine-port suite (native code posting through a port's C table) on backend-efa: shm and tcp,
// 1 and 2 NICs.
import { definePortSuite, groupOf } from '@trellis/core/conformance';
import { createEngine } from '../src/index.js';
import { addon } from '../src/native.js';

for (const provider of ['shm', 'tcp'] as const)
  for (const nics of [1, 2])
    definePortSuite(
      `backend-efa provider=${provider} nics=${nics}`,
      groupOf(() => createEngine({ provider, nics, opTimeoutMs: 10_000 })),
      addon(),
    );
