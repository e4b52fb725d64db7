// GPU tests: they run where a GPU is visible (the device machine: scripts/device-gpu-tests.sh runs
// the same scripts), and are skipped with the reason everywhere else.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { cudaInfo, DeviceBuffer, mappedWatcherMemory, noGpuReason } from '../src/index.js';

const reason = noGpuReason();
const script = (f: string) => fileURLToPath(new URL(`./gpu/${f}`, import.meta.url));

describe('@trellis/cuda without a GPU', () => {
  it('loads, reports why there is no GPU, and every GPU call fails with UNSUPPORTED saying so', () => {
    const i = cudaInfo();
    expect(typeof i.built).toBe('boolean');
    if (!reason) return; // a GPU is here: the tests below run instead
    expect(i.devices).toEqual([]);
    expect(reason).toMatch(/^(no usable GPU: |@trellis\/cuda was built without CUDA|no GPU visible)/);
    expect(() => DeviceBuffer.alloc(1024)).toThrow(/^DeviceBuffer\.alloc: /);
    try {
      mappedWatcherMemory();
    } catch (e) {
      expect((e as { code: string }).code).toMatch(/^(UNSUPPORTED|PROVIDER_ERROR)$/);
    }
  });
});

describe.skipIf(reason !== undefined)(`GPU (${reason ?? 'visible'})`, () => {
  it('CUDA IPC: another process imports 64 MiB and sees every byte', () => {
    const out = JSON.parse(
      execFileSync(process.execPath, [script('ipc.mjs')], { encoding: 'utf8' })
        .trim()
        .split('\n')
        .pop()!,
    );
    expect(out.child).toEqual({ imported: 64 << 20, bad: 0 });
  });
  it('the GPU watcher: a kernel increments the word 200 times; each increment reaches the callback and an immediate', () => {
    const out = JSON.parse(
      execFileSync(process.execPath, [script('watcher.mjs'), '200'], { encoding: 'utf8' })
        .trim()
        .split('\n')
        .pop()!,
    );
    expect([out.n, out.final]).toEqual([200, 400]);
  });
  it('an immediate means its bytes are visible: the same-host lane (and, with libfabric FI_HMEM, the direct path) — 0 stale rounds', () => {
    // The direct variants need a libfabric built with CUDA (scripts/device-direct.sh builds one in).
    const variants = process.env.TRELLIS_LIBFABRIC_DIR
      ? 'lane,lane-reuse,direct,direct-reuse'
      : 'lane,lane-reuse';
    const out = execFileSync(
      process.execPath,
      [script('visibility.mjs'), '500', '4096,1048576,16777216', variants],
      {
        encoding: 'utf8',
        timeout: 240_000,
      },
    );
    const rows = out
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l));
    expect(rows.length).toBe(3 * variants.split(',').length);
    for (const r of rows)
      expect([r.variant, r.size, r.staleRounds, r.staleBytes]).toEqual([r.variant, r.size, 0, 0]);
  });

  it('the staged path between two processes (one GPU each where two exist): every byte checked on the device', () => {
    const out = JSON.parse(
      execFileSync(process.execPath, [script('staged.mjs')], { encoding: 'utf8', timeout: 240_000 })
        .trim()
        .split('\n')
        .pop()!,
    );
    expect(out.path).toEqual(['staged', 'staged']);
    expect([out.child.single, out.child.paged, out.writeBack.bad]).toEqual([0, 0, 0]);
    expect(out.child.imms).toEqual([2, 256]);
    expect(out.writeBack.imms).toBe(2);
    const N = 64 << 20;
    expect(out.child.gpu).toEqual({
      directRegions: 0,
      stagedRegions: 1,
      stagedToHostBytes: 0,
      stagedToDeviceBytes: N + 256 * 65536,
      stagedWrites: 0,
      laneWrites: 0,
      laneBytes: 0,
      laneFallbacks: 0,
    });
    expect(out.parentGpu.stagedToHostBytes).toBe(N + 256 * 65536 + 8 * N);
    expect(out.parentGpu.stagedToDeviceBytes).toBe(N);
    expect(out.parentGpu.stagedWrites).toBe(2 + 8);
    expect(out.nicPaths).toEqual(['staged', 'staged']);
  });
});
