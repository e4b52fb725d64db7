// loadNativeAddon refuses a file that is not the package's addon ($TRELLIS_<NAME>_ADDON naming
// another package's build, an out-of-date build) with UNSUPPORTED naming the file and what it lacks.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { isTrellisError, type TrellisError } from '../src/index.js';
import { loadNativeAddon } from '../src/kit/index.js';

const dir = mkdtempSync(join(tmpdir(), 'trellis-addon-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
mkdirSync(join(dir, 'dist'));
writeFileSync(
  join(dir, 'package.json'),
  JSON.stringify({
    name: '@example/native',
    trellisAddon: { name: 'example_native', needs: 'a C++ compiler', apt: 'g++', dnf: 'gcc-c++' },
  }),
);
// Stand-ins for addons (require loads a .js file as it loads a .node one).
writeFileSync(join(dir, 'other.js'), 'exports.NativeEngine = function () {}; exports.probe = () => [];');
writeFileSync(join(dir, 'right.js'), 'exports.NativeEngine = function () {}; exports.devices = () => ({});');
const from = pathToFileURL(join(dir, 'dist', 'native.js')).href;

function refusal(f: () => unknown): TrellisError {
  try {
    f();
  } catch (e) {
    if (isTrellisError(e)) return e;
    throw e;
  }
  throw new Error('expected a refusal');
}

describe('loadNativeAddon', () => {
  it('refuses a file that lacks the exports the package needs, naming the file, the variable and what is missing', () => {
    process.env.EXAMPLE_NATIVE_ADDON = join(dir, 'other.js');
    try {
      const e = refusal(() => loadNativeAddon(from, ['NativeEngine', 'devices']));
      expect(e.code).toBe('UNSUPPORTED');
      expect(e.message).toContain(join(dir, 'other.js'));
      expect(e.message).toContain('EXAMPLE_NATIVE_ADDON names it');
      expect(e.message).toContain('lacks devices');
      expect(e.message).not.toContain('NativeEngine,');
      expect(e.message).toContain('npm rebuild @example/native');
    } finally {
      delete process.env.EXAMPLE_NATIVE_ADDON;
    }
  });

  it('loads a file that has them', () => {
    process.env.EXAMPLE_NATIVE_ADDON = join(dir, 'right.js');
    try {
      const a = loadNativeAddon<{ devices(): object }>(from, ['NativeEngine', 'devices']);
      expect(typeof a.devices).toBe('function');
    } finally {
      delete process.env.EXAMPLE_NATIVE_ADDON;
    }
  });

  it('names a missing override file', () => {
    process.env.EXAMPLE_NATIVE_ADDON = join(dir, 'nowhere.node');
    try {
      const e = refusal(() => loadNativeAddon(from, ['NativeEngine']));
      expect(e.code).toBe('UNSUPPORTED');
      expect(e.message).toContain(`EXAMPLE_NATIVE_ADDON=${join(dir, 'nowhere.node')} does not exist`);
    } finally {
      delete process.env.EXAMPLE_NATIVE_ADDON;
    }
  });
});
