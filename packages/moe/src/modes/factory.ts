// Which mode an instance runs, from its checked config and GPU placement: the one place the modes
// are told apart. Each mode's create() allocates and registers what it needs.
import type { TransferEngine } from '@trellis/core';
import type { Protocol } from '../protocol.js';
import type { MoeDeviceOptions } from '../types.js';
import { GpuDirectMode } from './gpu-direct-mode.js';
import { GpuProxyMode } from './gpu-proxy-mode.js';
import { HostMode } from './host-mode.js';
import { HostProxyMode } from './host-proxy-mode.js';
import type { MoeMode } from './mode.js';

/**
 * Host memory: JS packs, the engine (or with `proxy` the native proxy) posts. On a GPU: GPU-driven
 * NVLink with `gpuDriven`, kernels and the native proxy with `proxy`, else CUDA memory driven from
 * JS through the engine (HostMode on device memory). @internal
 */
export function createMode(engine: TransferEngine, p: Protocol, device?: MoeDeviceOptions): Promise<MoeMode> {
  if (!device) return p.c.proxy ? HostProxyMode.create(engine, p) : HostMode.create(engine, p);
  if (device.gpuDriven) return GpuDirectMode.create(engine, p, device);
  if (p.c.proxy) return GpuProxyMode.create(engine, p, device);
  return HostMode.createOnDevice(engine, p, device);
}
