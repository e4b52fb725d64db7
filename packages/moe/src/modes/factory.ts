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
    return { mode: await pick(engine, p, device), release };
  } catch (e) {
    release();
    throw e;
  }
}

/** The mode for this placement: host or device memory, and who posts. */
function pick(engine: TransferEngine, p: Protocol, device?: MoeDeviceOptions): Promise<MoeMode> {
  if (!device) return p.c.proxy ? HostProxyMode.create(engine, p) : HostMode.create(engine, p);
  if (device.gpuDriven) return GpuDirectMode.create(engine, p, device);
  if (p.c.proxy) return GpuProxyMode.create(engine, p, device);
  return HostMode.createOnDevice(engine, p, device);
}
