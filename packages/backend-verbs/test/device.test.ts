// The conformance suite on a real RDMA device (ConnectX, InfiniBand or RoCE). It runs when
// ibv_get_device_list finds a device, and is skipped with the reason otherwise. On InfiniBand set
// TRELLIS_HANDSHAKE_HOST to an address of this host (the handshake needs one; RoCE takes the GID's).
import { defineConformanceSuite, groupOf, skipFaultCases } from '@trellis/core/conformance';
import { describe, it } from 'vitest';
import { createEngine, listDevices } from '../src/index.js';

const { devices, error } = listDevices(false);

if (devices.length > 0) {
  defineConformanceSuite({
    name: `backend-verbs on ${devices[0]} (libibverbs)`,
    nics: 1,
    seed: 7,
    createGroup: groupOf(() =>
      createEngine({ devices: [devices[0]!], handshakeHost: process.env.TRELLIS_HANDSHAKE_HOST }),
    ),
    skip: skipFaultCases('needs the fault injector'),
  });
} else {
  describe('backend-verbs on a real RDMA device (libibverbs)', () => {
    it.skip(`skipped: ${error || 'no RDMA device'}; runs when ibv_get_device_list finds one`, () => {});
  });
}
