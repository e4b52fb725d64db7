// The repository's changesets must stay parseable: a formatter once turned single-package
// frontmatter into a Markdown heading, which `changeset version` silently cannot use.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const packages = new Set(
  readdirSync(join(root, 'packages')).map(
    (d) =>
      (JSON.parse(readFileSync(join(root, 'packages', d, 'package.json'), 'utf8')) as { name: string }).name,
  ),
);

describe('changesets', () => {
  it('every changeset has frontmatter naming existing packages with a bump, then a summary', () => {
    const dir = join(root, '.changeset');
    const files = readdirSync(dir).filter((f) => f.endsWith('.md') && f !== 'README.md');
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) {
      const text = readFileSync(join(dir, f), 'utf8');
      const m = /^---\n((?:"[^"]+": (?:major|minor|patch)\n)+)---\n\n\S/.exec(text);
      expect(m, `${f}: frontmatter`).not.toBeNull();
      for (const line of m![1]!.trim().split('\n')) {
        const name = /^"([^"]+)"/.exec(line)![1]!;
        expect(packages.has(name), `${f}: unknown package ${name}`).toBe(true);
      }
    }
  });
});
