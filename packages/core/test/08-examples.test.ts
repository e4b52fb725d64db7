// The README's quickstart: shown verbatim in the README, and run against the built package.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('examples', () => {
  it('the README shows examples/quickstart.ts verbatim', () => {
    const readme = readFileSync(`${root}/README.md`, 'utf8');
    const example = readFileSync(`${root}/examples/quickstart.ts`, 'utf8');
    expect(readme).toContain(example.trim());
  });

  it('examples/quickstart.ts runs against the built package and prints verified results', () => {
    // Runs the compiled example as a user would run it: importing '@trellis/core' from dist.
    const out = execFileSync(process.execPath, ['dist-examples/quickstart.js'], {
      cwd: root,
      encoding: 'utf8',
    });
    expect(out).toContain('decode saw 64 immediates; every byte is 0xab: true');
    expect(out).toContain('decode received: layer 0 done');
    expect(out).toMatch(/nic0: 32 writes, 131072 bytes; nic1: 32 writes, 131072 bytes/);
  });
});
