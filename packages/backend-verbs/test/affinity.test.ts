// devicesNearGpu: which RDMA devices sit nearest a GPU (PCI distance), over fake sysfs trees.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { devicesNearGpu } from '../src/index.js';

// A sysfs tree with two PCIe roots: GPU 0 and mlx5_0 behind one switch on root 00, GPU 1 and
// mlx5_1 on root 80, and mlx5_2 directly on root 00.
const root = mkdtempSync(join(tmpdir(), 'trellis-sysfs-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function pciDevice(path: string, files: Record<string, string> = {}): string {
  const dir = join(root, 'devices', path);
  mkdirSync(dir, { recursive: true });
  for (const [k, v] of Object.entries(files)) writeFileSync(join(dir, k), `${v}\n`);
  return dir;
}
const bus = join(root, 'bus/pci/devices');
mkdirSync(bus, { recursive: true });
const gpu0 = pciDevice('pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:00.0', {
  vendor: '0x10de',
  class: '0x030200',
});
const gpu1 = pciDevice('pci0000:80/0000:80:01.0/0000:81:00.0', { vendor: '0x10de', class: '0x030200' });
const nvme = pciDevice('pci0000:00/0000:00:02.0', { vendor: '0x144d', class: '0x010802' });
const nic0 = pciDevice('pci0000:00/0000:00:01.0/0000:01:00.0/0000:03:00.0', {
  vendor: '0x15b3',
  class: '0x020700',
});
const nic1 = pciDevice('pci0000:80/0000:80:01.0/0000:82:00.0', { vendor: '0x15b3', class: '0x020700' });
const nic2 = pciDevice('pci0000:00/0000:00:03.0', { vendor: '0x15b3', class: '0x020700' });
symlinkSync(gpu0, join(bus, '0000:02:00.0'));
symlinkSync(gpu1, join(bus, '0000:81:00.0'));
symlinkSync(nvme, join(bus, '0000:00:02.0'));
for (const [name, dev] of [
  ['mlx5_0', nic0],
  ['mlx5_1', nic1],
  ['mlx5_2', nic2],
] as const) {
  mkdirSync(join(root, 'class/infiniband', name), { recursive: true });
  symlinkSync(dev, join(root, 'class/infiniband', name, 'device'));
}

describe('devicesNearGpu', () => {
  it('orders RDMA devices by PCIe distance to the GPU (GPUs in PCI bus order)', () => {
    expect(devicesNearGpu(0, root)).toEqual(['mlx5_0', 'mlx5_2', 'mlx5_1']);
    // Both of root 00's NICs cross the SMP interconnect; the one with fewer bridges comes first.
    expect(devicesNearGpu(1, root)).toEqual(['mlx5_1', 'mlx5_2', 'mlx5_0']);
  });

  it('returns [] for a GPU that does not exist or without sysfs', () => {
    expect(devicesNearGpu(2, root)).toEqual([]);
    expect(devicesNearGpu(0, join(root, 'nowhere'))).toEqual([]);
  });
});
