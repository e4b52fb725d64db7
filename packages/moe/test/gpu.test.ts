// GPU test of moe: runs where a GPU is visible (the device machine: scripts/device-gpu-tests.sh runs
// the same script) and is skipped with the reason elsewhere.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { noGpuReason } from '@trellis/cuda';
import { describe, expect, it } from 'vitest';

const reason = noGpuReason();

describe.skipIf(reason !== undefined)(`moe on GPUs (${reason ?? 'visible'})`, () => {
  it('one process per GPU, tokens in CUDA memory: dispatch and combine equal the CPU reference bit for bit', () => {
    const out = JSON.parse(
      execFileSync(process.execPath, [fileURLToPath(new URL('./gpu/moe.mjs', import.meta.url))], {
        encoding: 'utf8',
        timeout: 300_000,
      })
        .trim()
        .split('\n')
        .pop()!,
    );
    for (const r of out.ranks)
      for (const c of r.report) {
        const want = c.paths.map((_: string, q: number) =>
          q === r.rank
            ? 'self'
            : Math.floor(q / c.nodeSize) === Math.floor(r.rank / c.nodeSize)
              ? 'nvlink'
              : 'rdma',
        );
        expect([c.config, c.nodeSize, c.paths]).toEqual([c.config, c.nodeSize, want]);
        expect([c.config, c.badX, c.badScales, c.badOut]).toEqual([c.config, 0, 0, 0]);
      }
  });
  it('MoeStream: stream-ordered rounds and 100 CUDA-graph replays with new routing equal the reference; faults settle by their deadlines', () => {
    const out = JSON.parse(
      execFileSync(process.execPath, [fileURLToPath(new URL('./gpu/stream.mjs', import.meta.url))], {
        encoding: 'utf8',
        timeout: 300_000,
      })
        .trim()
        .split('\n')
        .pop()!,
    );
    for (const r of out.results)
      expect([r.config, r.worldSize, r.eagerBad, r.replayBad, r.replays]).toEqual([
        r.config,
        r.worldSize,
        0,
        0,
        100,
      ]);
    expect(out.faults.ok).toBe(true);
    expect(out.ipc.map((x: { bad: number }) => x.bad)).toEqual([0, 0]);
  });
});
