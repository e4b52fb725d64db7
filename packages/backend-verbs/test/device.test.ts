// The conformance suite on a real RDMA device (ConnectX, InfiniBand or RoCE). It runs when
// ibv_get_device_list finds a device with an active port, and is skipped with the reason otherwise.
import { defineConformanceSuite, skipFaultCases } from '@trellis/core/conformance';
import { describe, it } from 'vitest';
import { createEngine, listDevices } from '../src/index.js';

const { devices, error } = listDevices(false);
const NO_FAULTS = 'needs the fault injector';

if (devices.length > 0) {
  defineConformanceSuite({
    name: `backend-verbs on ${devices[0]} (libibverbs)`,
    nics: 1,
    seed: 7,
    createGroup: async (size) => {
      const engines = await Promise.all(
        Array.from({ length: size }, () =>
          createEngine({ devices: [devices[0]!], handshakeHost: process.env.TRELLIS_HANDSHAKE_HOST }),
        ),
      );
      return { engines, close: async () => void (await Promise.all(engines.map((e) => e.close()))) };
    },
    skip: skipFaultCases(NO_FAULTS),
  });
} else {
  describe('backend-verbs on a real RDMA device (libibverbs)', () => {
    it.skip(`skipped: ${error || 'no RDMA device'}; runs when ibv_get_device_list finds one`, () => {});
  });
}
