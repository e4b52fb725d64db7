// GPU tests of weight sync: they run where a GPU is visible (the device machine:
// scripts/device-gpu-tests.sh runs the same scripts) and are skipped with the reason elsewhere.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { noGpuReason } from '@trellis/cuda';
import { describe, expect, it } from 'vitest';

const reason = noGpuReason();
const run = (f: string) =>
  JSON.parse(
    execFileSync(process.execPath, [fileURLToPath(new URL(`./gpu/${f}`, import.meta.url))], {
      encoding: 'utf8',
      timeout: 300_000,
    })
      .trim()
      .split('\n')
      .pop()!,
  );

describe.skipIf(reason !== undefined)(`weightsync on GPUs (${reason ?? 'visible'})`, () => {
  it('the fp8 quantiser kernel matches the CPU reference byte for byte', () => {
    const out = run('quant.mjs');
    expect([out.badBytes, out.badScales, out.firstBad]).toEqual([0, 0, undefined]);
  });
  it('CUDA weights → CUDA buffers in another process: every served byte equals the CPU path', () => {
    const out = run('ws.mjs');
    expect([out.bad, out.firstBad, out.checked]).toEqual([0, undefined, out.bytes]);
    expect(out.inference.version).toBe(1);
    expect(out.inference.gpu.stagedToDeviceBytes).toBe(out.bytes);
  });
});
