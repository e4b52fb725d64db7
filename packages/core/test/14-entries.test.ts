// The two entries of @trellis/core: the root is what users need; `@trellis/core/kit` is what backend
// authors need. This pins which names each exports, through the package's own `exports` map.
import { describe, expect, it } from 'vitest';

const KIT_ONLY = [
  'EngineBase',
  'NativeEngineBase',
  'PendingOp',
  'Region',
  'RecvPool',
  'ImmCounterTable',
  'loadNativeAddon',
  'installNativeAddon',
  'resolveNativeAddon',
  'addonCandidates',
  'prebuildTag',
  'nativeTuning',
  'packWrite',
  'workRequests',
  'callUser',
  'MSG_HEADER',
  'MAX_STAGED_BYTES',
];

describe('package entries', () => {
  it('the root exports the user API and none of the kit', async () => {
    const root = await import('@trellis/core');
    for (const name of [
      'NetAddr',
      'MrDesc',
      'TrellisError',
      'isTrellisError',
      'captureCallSites',
      'TRELLIS_ERROR_CODES',
      'createLoopbackFabric',
      'countImms',
      'autoShards',
      'lanesBetween',
      'HEARTBEAT_IMM',
      'HEARTBEAT_MISSES',
    ])
      expect(root, name).toHaveProperty(name);
    for (const name of KIT_ONLY) expect(root, name).not.toHaveProperty(name);
    expect(root.HEARTBEAT_IMM).toBe(0xffffffff);
  });

  it('@trellis/core/kit exports what a backend is built from', async () => {
    const kit = await import('@trellis/core/kit');
    for (const name of [...KIT_ONLY, 'HEARTBEAT_IMM', 'WR_SHAPE']) expect(kit, name).toHaveProperty(name);
    expect(typeof kit.NativeEngineBase).toBe('function');
    expect(Object.getPrototypeOf(kit.NativeEngineBase)).toBe(kit.EngineBase);
  });
});

describe('@trellis/core/peer-process', () => {
  it('exports PeerProcess, LineProcess and the child side without the test runner (the CLI runs peers with it)', async () => {
    const { readFileSync } = await import('node:fs');
    const entry = await import('@trellis/core/peer-process');
    expect(Object.keys(entry).sort()).toEqual(['LineProcess', 'PeerProcess', 'closeAndExit', 'followParent']);
    // What it loads: itself, the peer and child modules and Node's own — never vitest.
    for (const f of [
      '../dist/peer-process.js',
      '../dist/conformance/peer.js',
      '../dist/conformance/child.js',
    ]) {
      const text = readFileSync(new URL(f, import.meta.url), 'utf8');
      for (const m of text.matchAll(/from '([^']+)'/g)) expect(m[1], f).toMatch(/^(node:|\.)/);
    }
  });

  // An orphaned demo worker ran on for good: its engine's close() joined a native worker stuck
  // inside libfabric 1.17's shm, blocking the thread closeAndExit's own exit timer runs on.
  it('closeAndExit ends the process even when the close blocks its thread: exit 1 normally, SIGKILL from its own thread otherwise', async () => {
    const { spawn } = await import('node:child_process');
    const entry = new URL('../dist/peer-process.js', import.meta.url).href;
    const run = (close: string) =>
      new Promise<{ code: number | null; signal: string | null; out: string }>((resolve) => {
        const child = spawn(
          process.execPath,
          [
            '--input-type=module',
            '-e',
            `import { closeAndExit } from '${entry}'; console.log('closing'); await closeAndExit({ close: ${close} });`,
          ],
          { stdio: ['ignore', 'pipe', 'inherit'] },
        );
        let out = '';
        child.stdout.on('data', (d) => {
          out += String(d);
        });
        const guard = setTimeout(() => child.kill('SIGTERM'), 30_000);
        child.once('exit', (code, signal) => {
          clearTimeout(guard);
          resolve({ code, signal, out });
        });
      });
    expect(await run('async () => {}')).toEqual({ code: 1, signal: null, out: 'closing\n' });
    // A close that never returns the thread (60 s of spinning): the guard thread's SIGKILL ends it
    // (5 s in), not this test's SIGTERM (30 s in).
    const blocked = await run(
      '() => { const end = Date.now() + 60_000; while (Date.now() < end); return Promise.resolve(); }',
    );
    expect(blocked).toEqual({ code: null, signal: 'SIGKILL', out: 'closing\n' });
  }, 60_000);
});

describe('two copies of @trellis/core in one process', () => {
  it('errors of either copy are TrellisErrors of the other (instanceof and isTrellisError); subclasses and other errors are not', async () => {
    const { cpSync, mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { fileURLToPath, pathToFileURL } = await import('node:url');
    // A second copy of the built package, as a version skew would install it.
    const dir = mkdtempSync(join(tmpdir(), 'trellis-core-copy-'));
    try {
      cpSync(fileURLToPath(new URL('../dist', import.meta.url)), join(dir, 'dist'), { recursive: true });
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
      const a = await import('@trellis/core');
      const b = (await import(pathToFileURL(join(dir, 'dist/index.js')).href)) as typeof a;
      expect(b.TrellisError).not.toBe(a.TrellisError);
      const fromA = new a.TrellisError('PEER_LOST', 'from copy a');
      const fromB = new b.TrellisError('TIMEOUT', 'from copy b');
      expect(fromA instanceof b.TrellisError).toBe(true);
      expect(fromB instanceof a.TrellisError).toBe(true);
      expect(a.isTrellisError(fromB, 'TIMEOUT')).toBe(true);
      expect(b.isTrellisError(fromA, 'PEER_LOST')).toBe(true);
      expect(a.isTrellisError(fromB, 'PEER_LOST')).toBe(false);
      expect(fromB.withDetails({ peer: 'p' }) instanceof a.TrellisError).toBe(true);
      for (const other of [new Error('x'), { code: 'TIMEOUT', message: 'look-alike' }, null, 'TIMEOUT', 7])
        expect(other instanceof a.TrellisError).toBe(false);
      // A subclass keeps the prototype check: a plain TrellisError is not one.
      class Sub extends a.TrellisError {}
      expect(new Sub('INTERNAL', 's') instanceof Sub).toBe(true);
      expect(new Sub('INTERNAL', 's') instanceof b.TrellisError).toBe(true);
      expect(fromA instanceof Sub).toBe(false);
      // The brand is not an own, enumerable property: errors print and serialize as before.
      expect(Object.getOwnPropertySymbols(fromA)).toEqual([]);
      expect(Object.keys(JSON.parse(JSON.stringify(fromA))).sort()).toEqual(['code', 'name']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
