// GPU test of kvstream: runs where a GPU is visible (the device machine: scripts/device-gpu-tests.sh
// runs the same script) and is skipped with the reason elsewhere.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { noGpuReason } from '@trellis/cuda';
import { describe, expect, it } from 'vitest';

const reason = noGpuReason();

describe.skipIf(reason !== undefined)(`kvstream on GPUs (${reason ?? 'visible'})`, () => {
  it('CUDA caches in two processes: every token of every page checked on the decode GPU', () => {
    const out = JSON.parse(
      execFileSync(process.execPath, [fileURLToPath(new URL('./gpu/kv.mjs', import.meta.url))], {
        encoding: 'utf8',
        timeout: 300_000,
      })
        .trim()
        .split('\n')
        .pop()!,
    );
    for (const r of out.results)
      expect([r.tag, r.bad, r.checked, r.tailOk]).toEqual([r.tag, 0, r.bytes, true]);
    expect(out.prefill.tx).toMatchObject({ completed: 3, failed: 0 });
  });
});
