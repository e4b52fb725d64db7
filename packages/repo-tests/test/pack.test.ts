// The build-from-source fallback, as users meet it where no prebuilt binary serves: pack
// @trellis/core, backend-efa and kvstream, install the tarballs into a fresh project outside the
// workspace with TRELLIS_BUILD_FROM_SOURCE=1 (the addon builds there, with cmake-js and the registry's
// node-addon-api), and run a transfer with them. release.test.ts installs the prebuilt binaries.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'trellis-pack-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tgz = join(dir, 'tgz');
let tarballs: string[] = [];

describe('packages as users install them', () => {
  it('pnpm pack → npm install with TRELLIS_BUILD_FROM_SOURCE=1 in a fresh project builds the addon from source and moves bytes', () => {
    mkdirSync(tgz);
    for (const p of ['core', 'backend-efa', 'kvstream'])
      execFileSync('pnpm', ['pack', '--pack-destination', tgz], {
        cwd: join(root, 'packages', p),
        stdio: 'pipe',
        // The workspace build made dist/ already: prepack's rebuild would rewrite files other
        // suites are importing at the same time.
        env: { ...process.env, npm_config_ignore_scripts: 'true' },
      });
    tarballs = readdirSync(tgz).sort();
    expect(tarballs).toEqual([
      'trellis-backend-efa-0.1.0.tgz',
      'trellis-core-0.1.0.tgz',
      'trellis-kvstream-0.1.0.tgz',
    ]);
    // Each ships its license, its README and its build (prepack builds before packing).
    for (const t of tarballs) {
      const files = execFileSync('tar', ['tzf', join(tgz, t)], { encoding: 'utf8' }).split('\n');
      for (const f of [
        'package/LICENSE',
        'package/README.md',
        'package/dist/index.js',
        'package/dist/index.d.ts',
      ])
        expect(files, `${t}: ${f}`).toContain(f);
    }
    const app = join(dir, 'app');
    mkdirSync(app);
    writeFileSync(
      join(app, 'package.json'),
      JSON.stringify({ name: 'app', version: '1.0.0', type: 'module', private: true }),
    );
    execFileSync('npm', ['install', '--no-audit', '--no-fund', ...tarballs.map((t) => join(tgz, t))], {
      cwd: app,
      stdio: 'pipe',
      env: { ...process.env, TRELLIS_BUILD_FROM_SOURCE: '1' },
    });
    expect(readdirSync(join(app, 'node_modules/@trellis/backend-efa/build/Release'))).toContain(
      'trellis_efa.node',
    );
    writeFileSync(
      join(app, 'transfer.mjs'),
      `import { createEngine } from '@trellis/backend-efa';
import { KvLayout } from '@trellis/kvstream';
const a = await createEngine({ provider: 'tcp', nics: 2 });
const b = await createEngine({ provider: 'tcp', nics: 2 });
const src = await a.registerMemory(1 << 20);
const dst = await b.registerMemory(1 << 20, { remote: true });
src.buffer.fill(0x5a);
const req = { src, length: 1 << 20, dst: dst.desc, imm: 3 };
await a.submitSingleWrite(req);
await b.immCounter(3).wait(a.expectedImms({ kind: 'single', ...req }));
const layout = new KvLayout({ layers: 2, tokensPerPage: 16, pages: 8, tensors: [{ name: 'k', bytesPerToken: 64 }] });
console.log(JSON.stringify({ ok: dst.buffer.every((x) => x === 0x5a), regionBytes: layout.regionBytes }));
await a.close();
await b.close();
`,
    );
    const out = execFileSync(process.execPath, ['transfer.mjs'], { cwd: app, encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual({ ok: true, regionBytes: 16384 });
  }, 300_000);

  it('a source build that cannot succeed fails the install, saying what to install and what to run again', () => {
    expect(tarballs.length).toBe(3);
    const app = join(dir, 'app-broken');
    mkdirSync(app);
    writeFileSync(
      join(app, 'package.json'),
      JSON.stringify({ name: 'app-broken', version: '1.0.0', type: 'module', private: true }),
    );
    // No C++ compiler where CMake is told to look: the build from source cannot work.
    const r = spawnSync('npm', ['install', '--no-audit', '--no-fund', ...tarballs.map((t) => join(tgz, t))], {
      cwd: app,
      encoding: 'utf8',
      env: { ...process.env, TRELLIS_BUILD_FROM_SOURCE: '1', CXX: '/nonexistent/c++' },
      timeout: 240_000,
    });
    expect(r.status, r.stdout).not.toBe(0);
    const err = r.stderr;
    expect(err).toContain('@trellis/backend-efa: building the native addon from source failed');
    expect(err).toContain('apt install cmake g++ libfabric-dev');
    expect(err).toContain('dnf install cmake gcc-c++ libfabric-devel');
    expect(err).toContain('Then: npm rebuild @trellis/backend-efa');
  }, 300_000);
});
