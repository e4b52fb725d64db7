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

  it('the README shows examples/batch.ts verbatim, and it runs: a bad request refused, 33 posted, every byte in place', () => {
    const readme = readFileSync(`${root}/README.md`, 'utf8');
    expect(readme).toContain(readFileSync(`${root}/examples/batch.ts`, 'utf8').trim());
    const out = execFileSync(process.execPath, ['dist-examples/batch.js'], { cwd: root, encoding: 'utf8' });
    expect(out).toContain(
      'refused: submitBatch: requests[33] (single): dst: bytes [65536, 67584) fall outside the region of 65536 bytes',
    );
    expect(out).toContain('batch of 33: 0 failed; every byte in place: true');
  });

  it('the README shows examples/prepared.ts verbatim, and it runs: a bad post refused, 64 writes in one operation, every byte in place', () => {
    const readme = readFileSync(`${root}/README.md`, 'utf8');
    expect(readme).toContain(readFileSync(`${root}/examples/prepared.ts`, 'utf8').trim());
    const out = execFileSync(process.execPath, ['dist-examples/prepared.js'], {
      cwd: root,
      encoding: 'utf8',
    });
    expect(out).toContain(
      'refused: PreparedWrites.post: write 0 dst: bytes [1048476, 1052572) fall outside the region of 1048576 bytes',
    );
    expect(out).toContain('64 writes in one post: every byte in place: true; operations: 1');
  });
});
