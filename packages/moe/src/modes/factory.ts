// Which mode an instance runs, from its checked config and GPU placement: the one place the modes
// are told apart. Each mode's create() allocates and registers what it needs.
import type { TransferEngine } from '@trellis/core';
import type { Protocol } from '../protocol.js';
import type { MoeDeviceOptions } from '../types.js';
import { GpuDirectMode } from './gpu-direct-mode.js';
import { GpuProxyMode } from './gpu-proxy-mode.js';
import { claimImms, HostMode } from './host-mode.js';
import { HostProxyMode } from './host-proxy-mode.js';
import type { MoeMode } from './mode.js';

/**
 * Host memory: JS packs, the engine (or with `proxy` the native proxy) posts. On a GPU: GPU-driven
 * NVLink with `gpuDriven`, kernels and the native proxy with `proxy`, else CUDA memory driven from
 * JS through the engine (HostMode on device memory). @internal
 */
export async function createMode(
  engine: TransferEngine,
  p: Protocol,
  device?: MoeDeviceOptions,
): Promise<{ mode: MoeMode; release: () => void }> {
  // Every mode's four immediate values are this instance's on the engine, whichever mode counts
  // them (JS counters, or a native proxy's port that takes them from JS): an overlap with another
  // open instance is refused here, for any pair of modes.
  const release = claimImms(engine, p);
  try {
    const mode = !device
      ? p.c.proxy
        ? await HostProxyMode.create(engine, p)
        : await HostMode.create(engine, p)
      : device.gpuDriven
        ? await GpuDirectMode.create(engine, p, device)
        : p.c.proxy
          ? await GpuProxyMode.create(engine, p, device)
          : await HostMode.createOnDevice(engine, p, device);
    return { mode, release };
  } catch (e) {
    release();
    throw e;
  }
}
