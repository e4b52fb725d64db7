// The cross-process conformance suite on backend-verbs over the software RC model, 1 and 2 NICs.
import { fileURLToPath } from 'node:url';
import { defineCrossProcessSuite, HUNG_PEER_CASE } from '@trellis/core/conformance';

// The peer process imports the built package, as a user's process would.
const engineModule = fileURLToPath(new URL('../dist/index.js', import.meta.url));

for (const nics of [1, 2]) {
  defineCrossProcessSuite({
    name: `backend-verbs rc-model nics=${nics}${nics === 1 ? '' : ' sameHostLane=false'}`,
    engineModule,
    // One NIC: the same-host lane carries the data; two: every byte through the RC model.
    options: { model: true, nics, opTimeoutMs: 3000, sameHostLane: nics === 1 },
    // A killed peer stops acknowledging: the QP retries timeout (67 ms) x (retry_cnt 7 + 1), then
    // fails with IBV_WC_RETRY_EXC_ERR; the engine deadline (3 s) bounds anything else.
    killBoundMs: 3000 + 5000,
    skip: {
      [HUNG_PEER_CASE]:
        "the software RC model's NIC runs inside the target process, so stopping the process stops its NIC: the writer's retries run out (about 0.5 s) and the peer is lost, as a hung host would be. A real NIC keeps executing writes into a stopped process",
    },
  });
}
