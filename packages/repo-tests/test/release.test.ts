// The release as users meet it: a local registry (Verdaccio, from npm), every @trellis package
// published to it by scripts/release.sh (prebuilt linux-x64 binaries included; linux-arm64 is
// built and loaded under qemu by prebuild-arm64.test.ts), then @trellis/backend-efa and
// @trellis/kvstream (and @trellis/core, whose MrDesc and NetAddr the programs use) installed from it
// with npm and with pnpm into clean folders outside the workspace — no compiler runs there: the prebuilt binary serves — and a transfer between two
// processes run from each folder.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const here = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'trellis-release-'));
const version = JSON.parse(readFileSync(join(root, 'packages/core/package.json'), 'utf8')).version as string;
let registry = '';
let verdaccio: ChildProcess | undefined;
const npmrc = join(dir, 'npmrc');

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

// Every command here reads the registry and its token from this file only. pnpm's package metadata
// cache is this run's own: it is keyed by registry host and port, and a port an earlier run's
// registry had used made `pnpm publish` skip the packages that run had installed ("already
// published", from the stale cache) — a flake seen in CI.
const env = () => ({
  ...process.env,
  npm_config_userconfig: npmrc,
  npm_config_registry: registry,
  npm_config_cache_dir: join(dir, 'pnpm-cache'),
});

beforeAll(async () => {
  const port = await freePort();
  registry = `http://127.0.0.1:${port}/`;
  writeFileSync(
    join(dir, 'verdaccio.yaml'),
    [
      `storage: ${join(dir, 'storage')}`,
      'auth:',
      `  htpasswd: { file: ${join(dir, 'htpasswd')}, max_users: 10 }`,
      // Everything but @trellis comes from npm through the registry (cmake-js, node-addon-api).
      'uplinks:',
      '  npmjs: { url: https://registry.npmjs.org/, timeout: 60s }',
      'packages:',
      // @trellis only from here: never the public registry's packages of that name.
      "  '@trellis/*': { access: $all, publish: $authenticated }",
      "  '**': { access: $all, proxy: npmjs }",
      'log: { type: stdout, format: pretty, level: error }',
      '',
    ].join('\n'),
  );
  const bin = join(here, 'node_modules/verdaccio/bin/verdaccio');
  // Verdaccio 6 needs Node 22 or later: scripts/node.sh fetches one where this Node is older.
  const node =
    Number(process.versions.node.split('.')[0]) >= 22
      ? process.execPath
      : execFileSync('bash', [join(root, 'scripts/node.sh'), '22'], { encoding: 'utf8' }).trim();
  verdaccio = spawn(node, [bin, '--config', join(dir, 'verdaccio.yaml'), '--listen', `127.0.0.1:${port}`], {
    stdio: 'inherit',
  });
  let exited: number | null | undefined;
  verdaccio.once('exit', (code) => {
    exited = code;
  });
  for (let i = 0; ; i++) {
    if (exited !== undefined) throw new Error(`verdaccio exited (${exited}) before it listened`);
    try {
      if ((await fetch(`${registry}-/ping`)).ok) break;
    } catch {
      // not listening yet
    }
    if (i > 150) throw new Error('verdaccio did not start within 30 s');
    await new Promise((r) => setTimeout(r, 200));
  }
  // A user to publish as (what `npm adduser` does), and its token in a private npmrc.
  const res = await fetch(`${registry}-/user/org.couchdb.user:trellis`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'trellis', password: 'release-test-only', type: 'user', roles: [] }),
  });
  expect(res.status).toBe(201);
  const { token } = (await res.json()) as { token: string };
  writeFileSync(npmrc, `registry=${registry}\n//127.0.0.1:${port}/:_authToken=${token}\n`);
}, 60_000);

afterAll(() => {
  verdaccio?.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

const RECEIVER = `import { createEngine } from '@trellis/backend-efa';
import { KvLayout } from '@trellis/kvstream';
const engine = await createEngine({ provider: 'tcp', nics: 2 });
const dst = await engine.registerMemory(1 << 20, { remote: true });
const told = new Promise((resolve) => {
  void engine.submitRecvs({ maxBytes: 256, count: 1 }, (m) => resolve(JSON.parse(new TextDecoder().decode(m.data))));
});
console.log(JSON.stringify({ addr: engine.address.toString(), desc: dst.desc.toString() }));
const { expected } = await told;
await engine.immCounter(3).wait(expected, { timeoutMs: 20000 });
const layout = new KvLayout({ layers: 2, tokensPerPage: 16, pages: 8, tensors: [{ name: 'k', bytesPerToken: 64 }] });
const wrong = dst.buffer.findIndex((b, i) => b !== (i * 7) % 251);
console.log(JSON.stringify({ expected, wrong, regionBytes: layout.regionBytes, addon: (await import('@trellis/backend-efa')).nativeAddonPath() }));
await engine.close();
`;

const SENDER = `import { createEngine } from '@trellis/backend-efa';
import { MrDesc, NetAddr } from '@trellis/core';
const [addr, desc] = process.argv.slice(2);
const engine = await createEngine({ provider: 'tcp', nics: 2 });
const src = await engine.registerMemory(1 << 20);
for (let i = 0; i < src.buffer.length; i++) src.buffer[i] = (i * 7) % 251;
const req = { src, length: 1 << 20, dst: MrDesc.parse(desc), imm: 3 };
await engine.submitSingleWrite(req);
const expected = engine.expectedImms({ kind: 'single', ...req });
await engine.submitSend(NetAddr.parse(addr), new TextEncoder().encode(JSON.stringify({ expected })));
await engine.close();
`;

// Receiver and sender in two processes of the app folder; the receiver's report.
async function transfer(app: string): Promise<Record<string, unknown>> {
  writeFileSync(join(app, 'receiver.mjs'), RECEIVER);
  writeFileSync(join(app, 'sender.mjs'), SENDER);
  const rx = spawn(process.execPath, ['receiver.mjs'], { cwd: app, stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let buf = '';
  const first = new Promise<string>((resolve, reject) => {
    rx.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i = buf.indexOf('\n');
      while (i >= 0) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        if (lines.length === 1) resolve(lines[0]!);
        i = buf.indexOf('\n');
      }
    });
    rx.once('exit', (code) => reject(new Error(`receiver exited ${code} before it was ready`)));
  });
  const exited = new Promise<number | null>((resolve) => rx.once('exit', resolve));
  const { addr, desc } = JSON.parse(await first) as { addr: string; desc: string };
  execFileSync(process.execPath, ['sender.mjs', addr, desc], { cwd: app, stdio: 'inherit', timeout: 60_000 });
  expect(await exited).toBe(0);
  return JSON.parse(lines[1]!) as Record<string, unknown>;
}

function app(name: string): string {
  const a = join(dir, name);
  mkdirSync(a);
  writeFileSync(
    join(a, 'package.json'),
    JSON.stringify({ name, version: '1.0.0', type: 'module', private: true }),
  );
  return a;
}

describe('a release through a local registry', () => {
  it('scripts/release.sh publishes every package, one version, with prebuilt binaries', () => {
    execFileSync(
      'bash',
      [join(root, 'scripts/release.sh'), '--registry', registry, '--skip-build', '--no-git-checks'],
      {
        cwd: root,
        stdio: 'inherit',
        env: { ...env(), TRELLIS_PREBUILD_ARCHES: 'x64' },
      },
    );
    const names = [
      'core',
      'backend-efa',
      'backend-verbs',
      'cuda',
      'kvstream',
      'weightsync',
      'moe',
      'rendezvous',
      'cli',
    ];
    for (const n of names) {
      const meta = JSON.parse(
        execFileSync('npm', ['view', `@trellis/${n}@${version}`, '--json'], { env: env(), encoding: 'utf8' }),
      ) as { version: string; dependencies?: Record<string, string>; dist: { tarball: string } };
      expect(meta.version, n).toBe(version);
      // workspace:* became the exact version of the one release.
      for (const [dep, range] of Object.entries(meta.dependencies ?? {}))
        if (dep.startsWith('@trellis/')) expect(range, `${n} → ${dep}`).toBe(version);
    }
  }, 900_000);

  it('npm install in a clean folder: no compiler runs, the prebuilt binary moves bytes between two processes; trellis starts', async () => {
    const a = app('npm-app');
    execFileSync(
      'npm',
      [
        'install',
        '--no-audit',
        '--no-fund',
        '@trellis/core',
        '@trellis/backend-efa',
        '@trellis/kvstream',
        '@trellis/cli',
      ],
      {
        cwd: a,
        stdio: 'inherit',
        env: env(),
      },
    );
    const pkg = join(a, 'node_modules/@trellis/backend-efa');
    expect(existsSync(join(pkg, 'prebuilds/linux-x64/trellis_efa.node'))).toBe(true);
    expect(existsSync(join(pkg, 'build')), 'the install compiled nothing').toBe(false);
    const report = await transfer(a);
    expect(report).toEqual({
      expected: expect.any(Number),
      wrong: -1,
      regionBytes: 16384,
      addon: join(pkg, 'prebuilds/linux-x64/trellis_efa.node'),
    });
    expect(report.expected).toBeGreaterThanOrEqual(1);
    // The command line starts from a plain install (it once needed vitest, which nothing installs).
    const trellis = join(a, 'node_modules/.bin/trellis');
    expect(execFileSync(trellis, ['--version'], { encoding: 'utf8' }).trim()).toBe(version);
    const doctor = JSON.parse(execFileSync(trellis, ['doctor', '--json'], { encoding: 'utf8' })) as {
      checks: Array<{ item: string; detail: string }>;
      verdicts: Array<{ backend: string; usable: boolean }>;
    };
    expect(doctor.checks.find((c) => c.item === 'addon')!.detail).toBe(
      join(pkg, 'prebuilds/linux-x64/trellis_efa.node'),
    );
    expect(doctor.verdicts.find((v) => v.backend === 'backend-efa')!.usable).toBe(true);
  }, 300_000);

  it('pnpm add in a clean folder (dependency build scripts blocked, as pnpm 10 does): the same', async () => {
    const a = app('pnpm-app');
    execFileSync('pnpm', ['add', '@trellis/core', '@trellis/backend-efa', '@trellis/kvstream'], {
      cwd: a,
      stdio: 'inherit',
      env: env(),
    });
    const pkg = join(a, 'node_modules/@trellis/backend-efa');
    expect(existsSync(join(pkg, 'build')), 'the install compiled nothing').toBe(false);
    const report = await transfer(a);
    expect(report.wrong).toBe(-1);
    expect(report.regionBytes).toBe(16384);
    expect(String(report.addon)).toMatch(/prebuilds\/linux-x64\/trellis_efa\.node$/);
  }, 300_000);
});
