// The `trellis` command line as users meet it: --version, per-command --help that runs nothing,
// usage errors (exit 2, one message naming the flag), runtime errors (exit 1, one line; the stack
// with --debug), and doctor's exit code following its verdicts.
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { fabricVersion } from '@trellis/backend-efa';
import { describe, expect, it } from 'vitest';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const version = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/** Many invocations at once (each starts a Node process that loads every package). */
function trellisAll(argss: string[][]) {
  return Promise.all(
    argss.map(
      (args) =>
        new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
          const c = spawn(process.execPath, [bin, ...args]);
          let stdout = '';
          let stderr = '';
          c.stdout.on('data', (d) => {
            stdout += d;
          });
          c.stderr.on('data', (d) => {
            stderr += d;
          });
          c.on('close', (code) => resolve({ code, stdout, stderr }));
        }),
    ),
  );
}

function trellis(...args: string[]) {
  return trellisEnv({}, ...args);
}

function trellisEnv(env: Record<string, string>, ...args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, ...env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('trellis', () => {
  it('--version prints the package version', () => {
    const r = trellis('--version');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${version}\n`);
    const extra = trellis('--version', 'extra');
    expect(extra.code).toBe(2);
    expect(extra.stderr).toBe('trellis: --version takes no arguments, got "extra"\n');
    expect(extra.stdout).toBe('');
  });

  it('no command: usage on stderr, exit 2; --help and help: usage on stdout, exit 0', () => {
    const none = trellis();
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/^usage: trellis <command>/);
    for (const h of [['--help'], ['help']]) {
      const r = trellis(...h);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^usage: trellis <command>/);
      for (const c of ['demo', 'doctor', 'bench', 'soak']) expect(r.stdout).toContain(`  ${c} `);
    }
  });

  for (const cmd of ['demo', 'bench', 'soak', 'doctor'])
    it(`${cmd} --help (and help ${cmd}, ${cmd} -h) print its usage and run nothing`, async () => {
      const variants = [
        [cmd, '--help'],
        [cmd, '-h'],
        cmd === 'soak' ? [cmd, '--seconds', '5', '--help'] : ['help', cmd],
      ];
      const [reference, ...rs] = await trellisAll([['help', cmd], ...variants]);
      expect(reference!.code).toBe(0);
      expect(reference!.stdout).toMatch(new RegExp(`^usage: trellis ${cmd}`));
      for (const [i, args] of variants.entries()) {
        const r = rs[i]!;
        expect(r.code, args.join(' ')).toBe(0);
        // The usage and nothing else: no table, no progress, nothing on stderr.
        expect(r.stdout, args.join(' ')).toBe(reference!.stdout);
        expect(r.stderr).toBe('');
      }
    }, 120_000);

  it('unknown commands and flags, missing and malformed values: exit 2 with one message naming them', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['dmeo'], /unknown command "dmeo"/],
      [['help', 'dmeo'], /unknown command "dmeo"/],
      [['demo', '--provder', 'shm'], /Unknown option '--provder'/],
      [['bench', '--sizes'], /--sizes <value>' argument missing/],
      [['bench', '--json', '--html', 'x.html'], /--json/],
      [
        ['bench', '--sizes', '4096,abc'],
        /--sizes is a comma-separated list of byte counts from 1 to 2147483647 \(decimal digits\), got "4096,abc"/,
      ],
      // Past Node's largest buffer (the target hashes its region as one), or not plain digits.
      [['bench', '--sizes', '2147483648'], /--sizes is a comma-separated list .*got "2147483648"/],
      [['bench', '--sizes', '1e3'], /--sizes is a comma-separated list .*got "1e3"/],
      [['bench', '--sizes', '0x1000'], /--sizes is a comma-separated list .*got "0x1000"/],
      [['soak', '--seconds', '1e2'], /--seconds takes an integer from 1 to .*got "1e2"/],
      // The writing side's options are refused where only the target runs; --provider with verbs.
      [['bench', '--serve', '--json', 'x.json'], /--json applies to the writing side, not to --serve/],
      [['bench', '--serve', '--sizes', '4096'], /--sizes applies to the writing side, not to --serve/],
      [['bench', '--serve', '--backend', 'verbs'], /--backend applies to the writing side, not to --serve/],
      [
        ['bench', '--backend', 'verbs', '--provider', 'tcp'],
        /--provider applies to --backend efa \(libfabric\) only/,
      ],
      // An output file that cannot be written is refused before the run.
      [
        ['bench', '--json', '/nonexistent/dir/x.json'],
        /--json "\/nonexistent\/dir\/x\.json": \/nonexistent\/dir is not a directory/,
      ],
      [
        ['soak', '--json', '/nonexistent/dir/x.json'],
        /--json "\/nonexistent\/dir\/x\.json": \/nonexistent\/dir is not a directory/,
      ],
      [['bench', '--html', '/tmp'], /--html "\/tmp": exists and is not a file this process can write/],
      [['bench', '--json', ''], /--json takes a file name, got ""/],
      [
        ['soak', '--json', '/tmp/new.json/'],
        /--json "\/tmp\/new\.json\/": names a directory \(a trailing \/\): name a file/,
      ],
      // procfs passes the access checks for root, and its write fails only after the run.
      [
        ['bench', '--json', '/proc/version'],
        /--json "\/proc\/version": is under \/proc \(a kernel interface\)/,
      ],
      [
        ['soak', '--json', '/sys/kernel/x.json'],
        /--json "\/sys\/kernel\/x\.json": is under \/sys \(a kernel interface\)/,
      ],
      [['bench', '--provider', 'efa0'], /--provider is one of shm, tcp, got "efa0"/],
      [['bench', '--nics', '9'], /--nics takes an integer from 1 to 4, got "9"/],
      [['bench', '--timeout', '5'], /--timeout applies to --connect only/],
      [['bench', '--serve', '--connect', 'h:1'], /--serve and --connect exclude each other/],
      [
        ['bench', '--connect', 'nohostport'],
        /--connect takes HOST:PORT \(a port from 1 to 65535\), got "nohostport"/,
      ],
      [['bench', '--connect', 'localhost:99999'], /--connect takes HOST:PORT .*got "localhost:99999"/],
      [['soak', '--seconds', 'ten'], /--seconds takes an integer from 1 to/],
      // A negative number is the flag's value, checked by the flag (not parseArgs' "ambiguous").
      [['soak', '--seconds', '-3'], /--seconds takes an integer from 1 to .*got "-3"/],
      [['bench', '--nics', '-1'], /--nics takes an integer from 1 to 4, got "-1"/],
      [['soak', 'extra'], /Unexpected argument 'extra'/],
      [['doctor', '--backend', 'rdma'], /--backend is one of efa, verbs, got "rdma"/],
      [['demo', '--loopback', '--provider', 'tcp'], /--provider does not apply to --loopback/],
    ];
    const results = await trellisAll(cases.map(([args]) => args));
    for (const [i, [args, message]] of cases.entries()) {
      const r = results[i]!;
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(message);
      expect(r.stderr, args.join(' ')).toMatch(/usage: trellis/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(r.stdout).toBe('');
    }
  }, 180_000);

  it('bench --connect to nothing: says where it connects, gives up after --timeout with one line (the stack only with --debug)', () => {
    const r = trellis('bench', '--connect', '127.0.0.1:1', '--timeout', '1');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/connecting to 127\.0\.0\.1:1 \(giving up after 1 s\)/);
    const last = r.stderr.trim().split('\n').at(-1)!;
    // The store's error names the deadline it was given: --timeout reached it.
    expect(last).toMatch(/^trellis: .*within 1000 ms.*\(--debug for the stack\)$/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    const d = trellis('bench', '--connect', '127.0.0.1:1', '--timeout', '1', '--debug');
    expect(d.code).toBe(1);
    expect(d.stderr).toMatch(/\n\s+at /);
  }, 120_000);

  it('doctor exits 0 when a backend is usable, 1 when the one named is not, as its verdicts say', () => {
    const j = trellis('doctor', '--json');
    const report = JSON.parse(j.stdout) as { verdicts: Array<{ backend: string; usable: boolean }> };
    expect(j.code).toBe(report.verdicts.some((v) => v.usable) ? 0 : 1);
    for (const b of ['efa', 'verbs']) {
      const usable = report.verdicts.find((v) => v.backend === `backend-${b}`)!.usable;
      const r = trellis('doctor', '--backend', b);
      expect(r.code, b).toBe(usable ? 0 : 1);
      expect(r.stdout).toMatch(new RegExp(`\\[(usable|not usable)\\]\\s+backend-${b}`));
    }
  }, 120_000);

  it('doctor names the addon file in use; where libfabric cannot be loaded, backend-efa is not usable and it says why (exit 1)', () => {
    const ok = JSON.parse(trellis('doctor', '--json').stdout) as {
      checks: Array<{ area: string; item: string; status: string; detail: string }>;
    };
    // The memlock limit, soft and hard named (once two bare numbers).
    const lock = ok.checks.find((c) => c.item === 'memlock limit')!;
    expect(lock.detail).toMatch(
      /^soft (unlimited|\d+ bytes( \([\d.]+ MiB\))?), hard (unlimited|\d+ bytes( \([\d.]+ MiB\))?) \(/,
    );
    const addon = ok.checks.find((c) => c.item === 'addon')!;
    expect(addon.status).toBe('ok');
    expect(addon.detail).toMatch(/trellis_efa\.node$/);
    const r = trellisEnv({ TRELLIS_LIBFABRIC_DIR: '/nonexistent' }, 'doctor', '--json', '--backend', 'efa');
    expect(r.code).toBe(1);
    const report = JSON.parse(r.stdout) as {
      checks: Array<{ area: string; item: string; status: string; detail: string }>;
      verdicts: Array<{ backend: string; usable: boolean; verdict: string }>;
    };
    const lib = report.checks.find((c) => c.area === 'libfabric' && c.item === 'library')!;
    expect(lib.status).toBe('missing');
    expect(lib.detail).toContain('no libfabric.so.1 under TRELLIS_LIBFABRIC_DIR=/nonexistent');
    const v = report.verdicts.find((x) => x.backend === 'backend-efa')!;
    expect(v).toEqual({ backend: 'backend-efa', usable: false, verdict: lib.detail });
  }, 120_000);

  it("a peer that cannot start: bench and soak print its error in one line (no child's stack), exit 1", () => {
    for (const args of [
      ['bench', '--sizes', '4096'],
      ['soak', '--seconds', '1', '--procs', '2'],
    ]) {
      const r = trellisEnv({ TRELLIS_LIBFABRIC_DIR: '/nonexistent' }, ...args);
      expect(r.code, args[0]).toBe(1);
      expect(r.stderr, args[0]).not.toMatch(/\n\s+at /);
      expect(r.stderr.trim().split('\n').at(-1), args[0]).toMatch(
        /^trellis: (peer|soak process \d): (UNSUPPORTED: )?createEngine: no libfabric\.so\.1 under TRELLIS_LIBFABRIC_DIR=\/nonexistent .*\(--debug for the stack\)$/,
      );
    }
  }, 120_000);

  it.skipIf(!fabricVersion().startsWith('1.'))(
    'soak --provider shm with kills on libfabric 1.x: exit 2, saying it needs 2.x (a killed shm peer stalls survivors there)',
    () => {
      const r = trellis('soak', '--provider', 'shm', '--seconds', '5');
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(
        /^trellis soak: --provider shm with kills needs libfabric 2\.x: on libfabric 1\.\d+ a killed shm peer can stall/,
      );
    },
  );

  for (const [cmd, args, ready, group] of [
    // Past its first size (libfabric is up: on Debian's 1.17 a signal during its first second of
    // initialisation meets Intel PSM's handler, which exits 1).
    ['bench', ['bench', '--sizes', '65536,4194304,16777216'], /\] 1\/3 sizes/, false],
    ['soak', ['soak', '--seconds', '60', '--procs', '3', '--kill-every', '0'], /soak: 3 processes/, false],
    // To the whole process group (a closed terminal, `kill -- -PGID`): the children get it too.
    ['bench', ['bench', '--sizes', '65536,4194304,16777216'], /\] 1\/3 sizes/, true],
    ['soak', ['soak', '--seconds', '60', '--procs', '3', '--kill-every', '0'], /soak: 3 processes/, true],
  ] as const)
    it(`SIGTERM during ${cmd}${group ? ' to its process group' : ''}: exit 143; its child processes exit and leave no /dev/shm region`, async () => {
      const c = spawn(process.execPath, [bin, ...args], { detached: group });
      let stderr = '';
      c.stderr.on('data', (d) => {
        stderr += d;
      });
      const closed = new Promise<number | null>((r) => c.on('close', (code) => r(code)));
      // Its workers are up (a bench's target answers before the first size; a soak says so).
      const children = (): number[] =>
        spawnSync('pgrep', ['-P', String(c.pid)], { encoding: 'utf8' })
          .stdout.split('\n')
          .filter(Boolean)
          .map(Number);
      const want = cmd === 'soak' ? 3 : 1;
      for (let i = 0; i < 300 && (children().length < want || !ready.test(stderr)); i++)
        await new Promise((r) => setTimeout(r, 100));
      const kids = children();
      expect(kids.length).toBe(want);
      await new Promise((r) => setTimeout(r, 500));
      if (group) process.kill(-c.pid!, 'SIGTERM');
      else c.kill('SIGTERM');
      expect(await closed, stderr).toBe(143);
      const alive = () => kids.filter((pid) => spawnSync('kill', ['-0', String(pid)]).status === 0);
      for (let i = 0; i < 100 && alive().length > 0; i++) await new Promise((r) => setTimeout(r, 100));
      expect(alive()).toEqual([]);
      const left = readdirSync('/dev/shm').filter((n) =>
        [c.pid, ...kids].some((pid) => n.startsWith(`trellis-${pid}-`)),
      );
      expect(left).toEqual([]);
    }, 60_000);
});
