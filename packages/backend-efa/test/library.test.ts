// How the addon finds libfabric: it links none (one binary for Debian's 1.17, the EFA installer's
// and 2.x) and opens it at run time — TRELLIS_LIBFABRIC_DIR alone when set, else the loader's search
// path — and where none loads, every entry point says what to install (UNSUPPORTED), in a process
// of its own (the library is opened once per process).
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { fabricLibrary, nativeAddonPath } from '../src/index.js';

const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));

// A child process with `env`: what createEngine, fabricVersion and probeProviders do there.
function inChild(env: Record<string, string>): Record<string, string> {
  const script = `
const efa = await import(${JSON.stringify(dist)});
const out = {};
for (const [k, f] of [['engine', () => efa.createEngine({ provider: 'tcp' })], ['version', () => efa.fabricVersion()],
  ['library', () => efa.fabricLibrary()], ['probe', () => efa.probeProviders()]]) {
  try {
    const v = await f();
    out[k] = k === 'engine' ? 'created ' + v.stats().library.path : typeof v === 'string' ? v : 'ok';
    if (k === 'engine') await v.close();
  } catch (e) { out[k] = e.code + ': ' + e.message; }
}
console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 60_000,
  });
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Record<string, string>;
}

describe('backend-efa: libfabric opened at run time', () => {
  it('the addon (and the raw programs beside it) link no libfabric', () => {
    const addon = nativeAddonPath()!;
    for (const f of [addon, join(dirname(addon), 'rma_raw')]) {
      const needed = execFileSync('readelf', ['-d', f], { encoding: 'utf8' })
        .split('\n')
        .filter((l) => l.includes('(NEEDED)'))
        .map((l) => /\[(.+)\]/.exec(l)![1]);
      expect(needed.length, f).toBeGreaterThan(0);
      for (const n of needed) expect(n, f).not.toMatch(/fabric|ibverbs|stdc\+\+/);
    }
  });

  it('TRELLIS_LIBFABRIC_DIR naming no install: every entry point fails with UNSUPPORTED and says to fix the prefix', () => {
    const out = inChild({ TRELLIS_LIBFABRIC_DIR: '/nonexistent/prefix' });
    for (const k of ['engine', 'version', 'library', 'probe']) {
      expect(out[k], k).toMatch(/^UNSUPPORTED: /);
      expect(out[k], k).toContain('no libfabric.so.1 under TRELLIS_LIBFABRIC_DIR=/nonexistent/prefix');
      expect(out[k], k).toContain('point it at a libfabric install prefix');
    }
  });

  it('TRELLIS_LIBFABRIC_DIR naming an install: that library, and no other, is the one in use', () => {
    // A prefix whose lib/ holds (a link to) the library this process loaded from the search path.
    const prefix = mkdtempSync(join(tmpdir(), 'trellis-fabric-'));
    try {
      mkdirSync(join(prefix, 'lib'));
      symlinkSync(fabricLibrary(), join(prefix, 'lib', 'libfabric.so.1'));
      const out = inChild({ TRELLIS_LIBFABRIC_DIR: prefix });
      expect(out.library).toBe(fabricLibrary());
      expect(out.engine).toBe(`created ${fabricLibrary()}`);
      expect(out.version).toMatch(/^\d+\.\d+$/);
      expect(out.probe).toBe('ok');
    } finally {
      rmSync(prefix, { recursive: true, force: true });
    }
  });

  // With no libfabric on the search path at all, the message says what to install: the system's
  // library cannot be hidden here, so that case runs where none exists — the linux-arm64 binary
  // under qemu (packages/repo-tests/test/prebuild-arm64.test.ts).
  it("a prefix whose libfabric.so.1 is not a library: the loader's own reason, naming the file", () => {
    const prefix = mkdtempSync(join(tmpdir(), 'trellis-fabric-'));
    try {
      mkdirSync(join(prefix, 'lib'));
      symlinkSync('/etc/hostname', join(prefix, 'lib', 'libfabric.so.1'));
      const out = inChild({ TRELLIS_LIBFABRIC_DIR: prefix });
      expect(out.engine).toMatch(/^UNSUPPORTED: /);
      expect(out.engine).toContain(`${prefix}/lib/libfabric.so.1`);
    } finally {
      rmSync(prefix, { recursive: true, force: true });
    }
  });
});

describe("backend-efa: the process's signals stay its own", () => {
  // Debian's libfabric 1.17 links Intel PSM's libinfinipath, whose handlers for SIGTERM, SIGINT,
  // SIGSEGV, SIGBUS, SIGILL and SIGABRT call exit(): a process with an engine hung on SIGTERM.
  const script = `
import { readFileSync } from 'node:fs';
const caught = () => readFileSync('/proc/self/status', 'utf8').match(/SigCgt:\\s*(\\w+)/)[1];
const before = caught();
const efa = await import(${JSON.stringify(dist)});
const e = await efa.createEngine({ provider: 'tcp' });
efa.probeProviders();
console.log(JSON.stringify({ before, after: caught() }));
setInterval(() => {}, 1000);`;
  for (const sig of ['SIGTERM', 'SIGINT'] as const)
    it(`${sig} ends a process with an open engine at once, by that signal; libfabric caught no new signal`, async () => {
      const { spawn } = await import('node:child_process');
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      await new Promise<void>((r) =>
        child.stdout!.on('data', (d) => {
          out += d;
          if (out.includes('\n')) r();
        }),
      );
      const { before, after } = JSON.parse(out) as { before: string; after: string };
      expect(after).toBe(before);
      const t0 = Date.now();
      const ended = new Promise<[number | null, string | null]>((r) => child.on('exit', (c, s) => r([c, s])));
      child.kill(sig);
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const [code, signal] = await ended;
      clearTimeout(timer);
      expect([code, signal]).toEqual([null, sig]);
      expect(Date.now() - t0).toBeLessThan(10_000);
    });
});
