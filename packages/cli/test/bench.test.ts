import { describe, expect, it } from 'vitest';
import { benchHtml, runBench } from '../src/bench.js';

describe('trellis bench', () => {
  it('sweeps sizes into a second process, verifies each, and renders a self-contained HTML report', async () => {
    const progress: number[] = [];
    const r = await runBench({
      provider: 'tcp',
      sizes: [4096, 1 << 20],
      bytesPerSize: 4 << 20,
      progress: (d) => progress.push(d),
    });
    expect(r.rows.map((x) => [x.size, x.writes, x.verified])).toEqual([
      [4096, 1024, true],
      [1 << 20, 4, true],
    ]);
    expect(progress).toEqual([1, 2]);
    const html = benchHtml(r);
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).toContain('<svg');
    expect(html).toContain('<td>1 MiB</td><td>4</td>');
  }, 60_000);
});
