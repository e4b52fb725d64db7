// kvstream's examples (a prefill and a decode server) run as the README shows them.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('examples', () => {
  it('the prefill and decode servers (two processes, HTTP control plane) move verified KV', () => {
    const out = execFileSync(process.execPath, ['dist-examples/run.js'], {
      cwd: root,
      encoding: 'utf8',
      timeout: 60_000,
    });
    for (const [tokens, pages] of [
      [100, 7],
      [16, 1],
      [777, 49],
      [1, 1],
    ])
      expect(out).toMatch(
        new RegExp(
          `generate\\(${tokens} tokens\\): ${pages} pages, KV ok, tail "hidden-state-of-…", \\d+ ms`,
        ),
      );
  });
});
