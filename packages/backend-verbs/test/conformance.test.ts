// The conformance suite on backend-verbs over the software RC model, 1 and 2 NICs, in one process.
import { defineConformanceSuite, groupOf, skipFaultCases } from '@trellis/core/conformance';
import { createEngine } from '../src/index.js';

const noFaults =
  'needs the fault injector; verbs failures are driven through the RC model in model.test.ts and with real processes in cross-process.test.ts';

// One NIC: as users get it (host writes between engines of this host take the same-host lane, the
// immediates through the model); two: the lane off, every byte through the RC model.
for (const nics of [1, 2]) {
  const sameHostLane = nics === 1;
  defineConformanceSuite({
    name: `backend-verbs rc-model nics=${nics}${sameHostLane ? '' : ' sameHostLane=false'}`,
    nics,
    seed: nics,
    createGroup: groupOf(() => createEngine({ model: true, nics, opTimeoutMs: 10_000, sameHostLane })),
    skip: skipFaultCases(noFaults),
  });
}

// driveInline: the JavaScript thread runs the engine's turns while it polls (busy polling on, so
// most of each case's work is posted and completed on it); the same cases, the same answers.
defineConformanceSuite({
  name: 'backend-verbs rc-model nics=1 driveInline busyPollUs=50',
  nics: 1,
  seed: 11,
  createGroup: groupOf(() =>
    createEngine({ model: true, nics: 1, opTimeoutMs: 10_000, driveInline: true, busyPollUs: 50 }),
  ),
  skip: skipFaultCases(noFaults),
});
