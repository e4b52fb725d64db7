/**
 * `@trellis/backend-verbs` — the Trellis transfer contract over ibverbs reliable-connected queue
 * pairs (NVIDIA ConnectX, InfiniBand or RoCE), with a software model of RC semantics for machines
 * without an RDMA device.
 *
 * @packageDocumentation
 */
import { readdirSync, readFileSync, realpathSync } from 'node:fs';
import { addon, addonPath } from './native.js';

export { createEngine, VerbsEngine, type VerbsEngineOptions } from './engine.js';

/**
 * Names of the RDMA devices `ibv_get_device_list` finds (`model: true`: the software model's
 * `rcm0`..`rcm3`), and why there are none when the list is empty.
 */
export function listDevices(model = false): { devices: string[]; error: string } {
  return addon().devices(model);
}

/**
 * The native addon file in use: a build from source (`build/Release/trellis_verbs.node`) where one
 * exists, else the prebuilt binary for this platform (`prebuilds/linux-x64/trellis_verbs.node`), or
 * `$TRELLIS_VERBS_ADDON`. Undefined when there is none.
 */
export function nativeAddonPath(): string | undefined {
  return addonPath();
}

/**
 * RDMA devices ordered by PCI distance to GPU `gpu` (GPUs numbered in PCI bus order, as CUDA does
 * with `CUDA_DEVICE_ORDER=PCI_BUS_ID`): pass the first `nics` to `createEngine({ devices })` so a
 * GPU's transfers use the NICs behind its own PCIe switch. Reads sysfs; returns `[]` where there
 * is no sysfs, no NVIDIA GPU with that index, or no RDMA device.
 */
export function devicesNearGpu(gpu: number, sysfs = '/sys'): string[] {
  const list = (dir: string) => {
    try {
      return readdirSync(dir);
    } catch {
      return [];
    }
  };
  const read = (f: string) => {
    try {
      return readFileSync(f, 'utf8').trim();
    } catch {
      return '';
    }
  };
  const real = (f: string) => {
    try {
      return realpathSync(f);
    } catch {
      return '';
    }
  };
  const gpus = list(`${sysfs}/bus/pci/devices`)
    .filter((d) => {
      const base = `${sysfs}/bus/pci/devices/${d}`;
      return read(`${base}/vendor`) === '0x10de' && /^0x03/.test(read(`${base}/class`));
    })
    .sort();
  const g = gpus[gpu];
  if (!g) return [];
  const gpuPath = real(`${sysfs}/bus/pci/devices/${g}`).split('/');
  const nics = list(`${sysfs}/class/infiniband`).map((name) => {
    const path = real(`${sysfs}/class/infiniband/${name}/device`).split('/');
    let common = 0;
    while (common < path.length && common < gpuPath.length && path[common] === gpuPath[common]) common++;
    // Hops up from the NIC to the common ancestor and down to the GPU.
    return { name, distance: path.length - common + (gpuPath.length - common) };
  });
  return nics.sort((a, b) => a.distance - b.distance || a.name.localeCompare(b.name)).map((n) => n.name);
}
