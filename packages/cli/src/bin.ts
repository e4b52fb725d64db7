#!/usr/bin/env node
// The `trellis` command: parses argv with node:util's parseArgs and runs demo, bench, soak or
// doctor (each in its own module). Usage text, exit codes and error printing live here:
//   0  done (and, where the command verifies, verified)
//   1  the command ran and found a failure (a byte differed, an operation was lost, a check failed)
//      or an error stopped it (one line; the stack with --debug)
//   2  a usage error: unknown command or flag, a missing or malformed value
import {
  accessSync,
  existsSync,
  constants as fsConstants,
  lstatSync,
  readlinkSync,
  statfsSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { constants as osConstants } from 'node:os';
import { dirname, resolve } from 'node:path';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { fabricVersion, type Provider } from '@trellis/backend-efa';
import { benchHeader, benchHtml, cliVersion, fmtSize, parseHostPort, runBench, serveBench } from './bench.js';
import { runClusterDemo } from './cluster.js';
import { runDemo } from './demo.js';
import { runDoctor } from './doctor.js';
import { runInterruptHooks } from './exit-hooks.js';
import { runSoak } from './soak.js';
import { table } from './table.js';

/** A mistake in the command line: printed with the command's usage, exit 2. */
class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>;
type Values = Record<string, string | boolean | undefined>;

interface Command {
  summary: string;
  usage: string;
  options: Options;
  run(v: Values): Promise<number>;
}

const out = (s: string) => process.stdout.write(s);
/** A progress line (`\r…`) is open on stderr: what is printed next starts on a line of its own. */
let progressOpen = false;
const err = (s: string) => {
  if (progressOpen && !s.startsWith('\r')) {
    process.stderr.write('\n');
    progressOpen = false;
  }
  process.stderr.write(s);
};

/** An integer flag: absent → `dflt`; present, decimal digits for an integer in [min, max]. */
function int(v: Values, name: string, dflt: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const s = v[name];
  if (s === undefined) return dflt;
  const n = Number(s);
  if (typeof s !== 'string' || !/^-?\d+$/.test(s) || n < min || n > max)
    throw new UsageError(`--${name} takes an integer from ${min} to ${max}, got ${JSON.stringify(s)}`);
  return n;
}

/** A file the command will write at the end: refused now if its directory cannot take it. */
function outFile(v: Values, name: string): string | undefined {
  const f = str(v, name);
  if (f === undefined) return undefined;
  if (f === '') throw new UsageError(`--${name} takes a file name, got ""`);
  if (/[\\/]$/.test(f))
    throw new UsageError(`--${name} ${JSON.stringify(f)}: names a directory (a trailing /): name a file`);
  // Where the write lands: through symbolic links (a dangling one too) to the file itself.
  let target = resolve(f);
  for (let hops = 0; hops < 40; hops++) {
    let link = false;
    try {
      link = lstatSync(target).isSymbolicLink();
    } catch {
      link = false;
    }
    if (!link) break;
    target = resolve(dirname(target), readlinkSync(target));
  }
  const dir = dirname(target);
  const notWritable = () =>
    new UsageError(`--${name} ${JSON.stringify(f)}: ${dir} is not a directory this process can write in`);
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    isDir = false;
  }
  if (!isDir) throw notWritable();
  // procfs and sysfs pass the access checks for root, and refuse the write only once the run is over.
  const kernelFs = new Map([
    [0x9fa0, '/proc'],
    [0x62656572, '/sys'],
  ]).get(statfsSync(dir).type);
  if (kernelFs)
    throw new UsageError(
      `--${name} ${JSON.stringify(f)}: is under ${kernelFs} (a kernel interface): name a file elsewhere`,
    );
  try {
    accessSync(dir, fsConstants.W_OK);
  } catch {
    throw notWritable();
  }
  if (existsSync(target)) {
    // An existing path is overwritten: it must be a file this process may write.
    let ok = false;
    try {
      ok = statSync(target).isFile();
      accessSync(target, fsConstants.W_OK);
    } catch {
      ok = false;
    }
    if (!ok)
      throw new UsageError(`--${name} ${JSON.stringify(f)}: exists and is not a file this process can write`);
  }
  return f;
}

/** Write a result file named by --flag; a failure says so (the results are on stdout) and returns false. */
function writeResult(flag: string, f: string, text: string): boolean {
  try {
    writeFileSync(f, text);
    return true;
  } catch (e) {
    err(
      `trellis: could not write --${flag} ${JSON.stringify(f)} (${(e as Error).message}); the results are above\n`,
    );
    return false;
  }
}

/** The largest write `trellis bench` takes: the target hashes its region as one Node buffer. */
const MAX_SIZE = 2 ** 31 - 1;

/** A flag whose value is one of `choices`. */
function oneOf<T extends string>(v: Values, name: string, choices: readonly T[], dflt: T): T {
  const s = v[name];
  if (s === undefined) return dflt;
  if (!choices.includes(s as T))
    throw new UsageError(`--${name} is one of ${choices.join(', ')}, got ${JSON.stringify(s)}`);
  return s as T;
}

const str = (v: Values, name: string) => v[name] as string | undefined;

const commands: Record<string, Command> = {
  demo: {
    summary: 'a cluster of processes on this machine, every transfer verified byte for byte',
    usage: `usage: trellis demo [--provider shm|tcp]
       trellis demo --loopback [--nics N] [--seed S]

  A cluster of processes on this machine over libfabric: a transfer sweep, KV streaming, a weight
  sync and an MoE round, each verified byte for byte. --loopback runs every transfer kind — single,
  paged, scatter, barrier, immediate, a batch and prepared writes — between two engines of the
  in-process loopback fabric instead (no libfabric needed).

  --provider shm|tcp   the libfabric provider (default shm where it offers RMA, else tcp)
  --loopback           the loopback fabric
  --nics N             NICs per loopback engine, 1-4 (default 2)
  --seed S             the loopback fabric's seed (default 1)
`,
    options: {
      provider: { type: 'string' },
      loopback: { type: 'boolean' },
      nics: { type: 'string' },
      seed: { type: 'string' },
    },
    async run(v) {
      if (v.loopback) {
        if (v.provider !== undefined) throw new UsageError('--provider does not apply to --loopback');
        return loopbackDemo(int(v, 'nics', 2, 1, 4), int(v, 'seed', 1));
      }
      if (v.nics !== undefined || v.seed !== undefined)
        throw new UsageError('--nics and --seed apply to --loopback only');
      // Default: the best provider here (shm where it offers RMA with CQ data, else tcp).
      const provider =
        v.provider === undefined ? undefined : oneOf(v, 'provider', ['shm', 'tcp'] as const, 'shm');
      const t0 = performance.now();
      const rows = await runClusterDemo({ provider, log: (l) => out(`  ${l}\n`) });
      const mib = (b: number) =>
        b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : `${(b / 1024).toFixed(1)} KiB`;
      out(
        `\n${table(
          ['step', 'processes', 'bytes', 'ms', 'verified'],
          rows.map((r) => [
            r.step,
            String(r.processes),
            mib(r.bytes),
            r.ms.toFixed(1),
            r.verified ? 'yes' : 'NO',
          ]),
        )}\n`,
      );
      const ok = rows.every((r) => r.verified);
      out(
        ok
          ? `\ndemo: every byte verified (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`
          : '\ndemo: VERIFICATION FAILED\n',
      );
      return ok ? 0 : 1;
    },
  },

  doctor: {
    summary: 'what this host has and lacks for each backend, and a verdict',
    usage: `usage: trellis doctor [--backend efa|verbs] [--json]

  Checks the host, libfabric, ibverbs and CUDA, and says for each backend whether it is usable here.
  Exits 1 when the named backend is not usable (without --backend: when none is).

  --backend efa|verbs  the backend whose verdict sets the exit code
  --json               the report as JSON
`,
    options: { backend: { type: 'string' }, json: { type: 'boolean' } },
    async run(v) {
      const backend =
        v.backend === undefined ? undefined : oneOf(v, 'backend', ['efa', 'verbs'] as const, 'efa');
      const r = await runDoctor();
      if (v.json) out(`${JSON.stringify(r, null, 2)}\n`);
      else {
        out(
          `${table(
            ['area', 'item', 'status', 'detail'],
            r.checks.map((c) => [c.area, c.item, c.status, c.detail]),
          )}\n\n`,
        );
        for (const x of r.verdicts)
          out(`${x.usable ? '[usable]    ' : '[not usable]'} ${x.backend}: ${x.verdict}\n`);
      }
      const usable = backend
        ? r.verdicts.some((x) => x.backend === `backend-${backend}` && x.usable)
        : r.verdicts.some((x) => x.usable);
      return usable ? 0 : 1;
    },
  },

  bench: {
    summary: 'single writes into a second process (or host), a sweep of sizes, verified',
    usage: `usage: trellis bench [--backend efa|verbs] [--provider shm|tcp] [--nics N] [--sizes B,B,...]
                     [--json FILE] [--html FILE]
       trellis bench --serve [--port P] [--provider tcp] [--nics N]
       trellis bench --connect HOST:PORT [--timeout S] [--provider tcp] [--nics N] [--sizes ...]

  Single writes of each size into a target, every byte verified (by sha256 at the target). The
  target is a second process here, or with --connect the one another host runs with --serve.

  --backend efa|verbs  the backend (default efa; verbs uses its software RC model without a device)
  --provider shm|tcp   the libfabric provider (default shm here, tcp with --serve and --connect)
  --nics N             NICs per engine, 1-4 (default 1)
  --sizes B,B,...      write sizes in bytes, 1 to 2147483647 (default 4 KiB to 64 MiB by powers
                       of 4); each size moves 256 MiB, in 65536 writes at most
  --json FILE          write the results (with versions, host and time) as JSON
  --html FILE          write a self-contained HTML report
  --serve              be the target of a two-host run
  --port P             the port --serve listens on (default 29600; 0: any free one, printed)
  --connect HOST:PORT  write into the target another host serves
  --timeout S          seconds to keep trying to reach --connect (default 30)
`,
    options: {
      backend: { type: 'string' },
      provider: { type: 'string' },
      nics: { type: 'string' },
      sizes: { type: 'string' },
      json: { type: 'string' },
      html: { type: 'string' },
      serve: { type: 'boolean' },
      port: { type: 'string' },
      connect: { type: 'string' },
      timeout: { type: 'string' },
    },
    async run(v) {
      const remote = Boolean(v.serve || v.connect !== undefined);
      const provider = oneOf(v, 'provider', ['shm', 'tcp'] as const, remote ? 'tcp' : 'shm') as Provider;
      const nics = int(v, 'nics', 1, 1, 4);
      if (v.serve) {
        if (v.connect !== undefined) throw new UsageError('--serve and --connect exclude each other');
        // The serving side takes what the client asks for: these are the client's to give.
        for (const f of ['sizes', 'json', 'html', 'backend', 'timeout'])
          if (v[f] !== undefined)
            throw new UsageError(
              `--${f} applies to the writing side, not to --serve (pass it with --connect)`,
            );
        await serveBench({
          provider,
          nics,
          port: int(v, 'port', 29600, 0, 65535),
          log: (l) => out(`${l}\n`),
        });
        return 0;
      }
      if (v.port !== undefined) throw new UsageError('--port applies to --serve only');
      if (v.timeout !== undefined && v.connect === undefined)
        throw new UsageError('--timeout applies to --connect only');
      if (v.connect !== undefined && !parseHostPort(String(v.connect)))
        throw new UsageError(
          `--connect takes HOST:PORT (a port from 1 to 65535), got ${JSON.stringify(v.connect)}`,
        );
      const sizesText = str(v, 'sizes')?.split(',');
      const sizes = sizesText?.map((x) => Number(x));
      if (sizesText?.some((x) => !/^\d+$/.test(x) || Number(x) < 1 || Number(x) > MAX_SIZE))
        throw new UsageError(
          `--sizes is a comma-separated list of byte counts from 1 to ${MAX_SIZE} (decimal digits), got ${JSON.stringify(v.sizes)}`,
        );
      const backend = oneOf(v, 'backend', ['efa', 'verbs'] as const, 'efa');
      if (backend === 'verbs' && v.provider !== undefined)
        throw new UsageError('--provider applies to --backend efa (libfabric) only');
      const json = outFile(v, 'json');
      const html = outFile(v, 'html');
      const r = await runBench({
        backend,
        provider,
        nics,
        sizes,
        connect: str(v, 'connect'),
        connectTimeoutMs: int(v, 'timeout', 30, 1, 86_400) * 1000,
        log: (l) => err(`${l}\n`),
        progress: (done, total) => {
          const bar = '#'.repeat(Math.round((20 * done) / total)).padEnd(20, '.');
          err(`\r  [${bar}] ${done}/${total} sizes`);
          progressOpen = done !== total;
          if (done === total) err('\n');
        },
      });
      out(`${benchHeader(r)}\n\n`);
      out(
        `${table(
          ['size', 'writes', 'seconds', 'GB/s', 'verified'],
          r.rows.map((x) => [
            fmtSize(x.size),
            String(x.writes),
            x.seconds.toFixed(3),
            x.gbps.toFixed(3),
            x.verified ? 'yes' : 'NO',
          ]),
        )}\n`,
      );
      const wrote = [
        json === undefined || writeResult('json', json, JSON.stringify(r, null, 2)),
        html === undefined || writeResult('html', html, benchHtml(r)),
      ];
      return r.rows.every((x) => x.verified) && wrote.every(Boolean) ? 0 : 1;
    },
  },

  soak: {
    summary: 'processes writing to each other with aborts, deadlines and SIGKILLed peers',
    usage: `usage: trellis soak [--seconds 60] [--procs 4] [--provider tcp|shm] [--kill-every 10] [--seed 1]
                    [--no-forge] [--no-lane] [--json FILE]

  Processes writing to each other with aborts, deadlines, forged descriptors and SIGKILLed peers
  (restarted); every byte checked. Exits 1 if an operation was lost, a byte differed, a process
  crashed, a forged write completed (or none was refused) or healthy peers saw errors.

  --seconds S        how long (default 60)
  --procs N          processes, 2-64 (default 4)
  --provider tcp|shm the libfabric provider (default tcp)
  --kill-every S     SIGKILL a process every S seconds, 0 for never (default 10)
  --seed N           the workload's seed (default 1)
  --no-forge         no forged descriptors
  --no-lane          the same-host lane off (every byte through the provider)
  --json FILE        write the results as JSON
`,
    options: {
      seconds: { type: 'string' },
      procs: { type: 'string' },
      provider: { type: 'string' },
      'kill-every': { type: 'string' },
      seed: { type: 'string' },
      'no-forge': { type: 'boolean' },
      'no-lane': { type: 'boolean' },
      json: { type: 'string' },
    },
    async run(v) {
      const provider = oneOf(v, 'provider', ['tcp', 'shm'] as const, 'tcp');
      const killEveryS = int(v, 'kill-every', 10);
      const json = outFile(v, 'json');
      const seconds = int(v, 'seconds', 60, 1);
      const procs = int(v, 'procs', 4, 2, 64);
      if (provider === 'shm' && killEveryS > 0 && /^1\./.test(fabricVersion()))
        // Known: a SIGKILLed shm peer can stall the survivors' engines on libfabric 1.x (the
        // kvstream README) — the soak would report errors between healthy peers for it.
        throw new UsageError(
          `--provider shm with kills needs libfabric 2.x: on libfabric ${fabricVersion()} a killed shm peer can stall the engines of the processes that survive it; use --provider tcp, --kill-every 0, or TRELLIS_LIBFABRIC_DIR=<a libfabric 2.x install>`,
        );
      const r = await runSoak({
        seconds,
        procs,
        provider,
        killEveryS,
        seed: int(v, 'seed', 1),
        ...(v['no-forge'] ? { forge: false } : {}),
        ...(v['no-lane'] ? { sameHostLane: false } : {}),
        log: (l) => err(`${l}\n`),
      });
      const mb = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
      out(
        `${table(
          [
            'process',
            'gen',
            'ops',
            'settled',
            'lost',
            'outcomes',
            'bytes written',
            'bytes verified',
            'mismatches',
            'RSS start → end',
          ],
          r.processes.map((p) => [
            String(p.rank),
            String(p.generation),
            String(p.submitted),
            String(p.settled),
            String(p.submitted - p.settled),
            Object.entries(p.outcomes)
              .map(([k, n]) => `${k} ${n}`)
              .join(', '),
            mb(p.bytesWritten),
            mb(p.verifiedBytes),
            String(p.mismatches),
            `${mb(p.rssStart)} → ${mb(p.rssEnd)}`,
          ]),
        )}\n\n`,
      );
      const t = r.totals;
      const w = r.wholeRun;
      const fi = (k: 'aborted' | 'deadline') => r.processes.reduce((n, p) => n + p.faultsInjected[k], 0);
      out(
        `${r.seconds} s, ${r.procs} processes over ${r.provider}. The processes alive at the end (the table): ` +
          `${t.submitted} operations, ${t.settled} settled, ${t.lost} lost; ` +
          `${mb(t.bytesWritten)} written, ${mb(t.verifiedBytes)} verified, ${t.mismatches} mismatches; ` +
          `faults injected: ${t.faultsInjected} (${fi('aborted')} aborts, ${fi('deadline')} impossible deadlines, ${t.forged} forged descriptors: ${t.forgedRefused} refused, ${t.forgedAccepted} accepted${forgedRest(t.forgedOutcomes)}). ` +
          `The whole run (${w.spawned} processes, killed ones included): processes killed ${w.kills}, ${w.forged} forged descriptors, ${w.forgedRefused} refused, ${w.forgedAccepted} accepted${forgedRest(w.forgedOutcomes)}; ` +
          `crashes: ${r.crashes}; errors between healthy peers: ${t.healthyErrors}\n`,
      );
      for (const line of t.healthySamples) out(`  healthy-pair error: ${line}\n`);
      const wrote = json === undefined || writeResult('json', json, JSON.stringify(r, null, 2));
      // A forgery must never write; besides REMOTE_ACCESS it may settle CONNECTION_RESET (another
      // forgery reset the connection under it) or, around kills, PEER_LOST or TIMEOUT.
      const forgedOk = w.forgedAccepted === 0 && (w.forged === 0 || w.forgedRefused > 0);
      return t.lost === 0 &&
        t.mismatches === 0 &&
        r.crashes === 0 &&
        t.healthyErrors === 0 &&
        forgedOk &&
        wrote
        ? 0
        : 1;
    },
  },
};

const usage = `usage: trellis <command> [options]

commands:
${Object.entries(commands)
  .map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`)
  .join('\n')}

  trellis <command> --help   a command's options
  trellis --version          this CLI's version
  --debug (any command)      print the stack of an error
`;

async function loopbackDemo(nics: number, seed: number): Promise<number> {
  const rows = await runDemo({ nics, seed, log: (l) => out(`  ${l}\n`) });
  out(
    `\n${table(
      ['step', 'bytes', 'imms', 'ms', 'verified'],
      rows.map((r) => [r.step, String(r.bytes), String(r.imms), r.ms.toFixed(1), r.verified ? 'yes' : 'NO']),
    )}\n`,
  );
  const ok = rows.every((r) => r.verified);
  out(ok ? '\ndemo: every byte verified\n' : '\ndemo: VERIFICATION FAILED\n');
  return ok ? 0 : 1;
}

/** Runs `argv`; returns the exit code. Prints usage errors itself. */
async function main(argv: string[], debug: { on: boolean }): Promise<number> {
  debug.on = argv.includes('--debug');
  const [first, ...rest] = argv;
  if (first === undefined) {
    err(usage);
    return 2;
  }
  if (first === '--version' || first === '-v') {
    const extra = rest.filter((a) => a !== '--debug');
    if (extra.length) {
      err(`trellis: --version takes no arguments, got ${JSON.stringify(extra[0])}\n`);
      return 2;
    }
    out(`${cliVersion()}\n`);
    return 0;
  }
  if (first === '--help' || first === '-h' || first === 'help') {
    const topic = first === 'help' ? rest[0] : undefined;
    if (topic !== undefined && !commands[topic]) {
      err(`trellis: unknown command ${JSON.stringify(topic)}\n\n${usage}`);
      return 2;
    }
    out(topic ? commands[topic]!.usage : usage);
    return 0;
  }
  const cmd = commands[first];
  if (!cmd) {
    err(`trellis: unknown command ${JSON.stringify(first)}\n\n${usage}`);
    return 2;
  }
  let values: Values;
  try {
    // A negative number after a flag that takes a value (`--seconds -3`) is that flag's value,
    // so that the flag's own check says what is wrong with it (parseArgs would call it ambiguous).
    const args: string[] = [];
    for (let i = 0; i < rest.length; i++) {
      const a = rest[i]!;
      const next = rest[i + 1];
      const takesValue = a.startsWith('--') && cmd.options[a.slice(2)]?.type === 'string';
      if (takesValue && next !== undefined && /^-\.?\d/.test(next)) {
        args.push(`${a}=${next}`);
        i++;
      } else args.push(a);
    }
    const parsed = parseArgs({
      args,
      options: { ...cmd.options, help: { type: 'boolean', short: 'h' }, debug: { type: 'boolean' } },
      strict: true,
      allowPositionals: false,
    });
    values = parsed.values as Values;
  } catch (e) {
    // parseArgs' own messages name the flag (unknown option, missing value, unexpected argument).
    err(`trellis ${first}: ${(e as Error).message}\n\n${cmd.usage}`);
    return 2;
  }
  if (values.help) {
    out(cmd.usage);
    return 0;
  }
  try {
    return await cmd.run(values);
  } catch (e) {
    if (e instanceof UsageError) {
      err(`trellis ${first}: ${e.message}\n\n${cmd.usage}`);
      return 2;
    }
    throw e;
  }
}

// Interrupted: the hooks remove what only this process knows of; child processes see their stdin
// close and close their engines themselves.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const)
  process.on(sig, () => {
    if (progressOpen) process.stderr.write('\n');
    runInterruptHooks();
    process.exit(128 + osConstants.signals[sig]);
  });

const debug = { on: false };
main(process.argv.slice(2), debug).then(
  (code) => process.exit(code),
  (e: unknown) => {
    const text = e instanceof Error ? (debug.on ? (e.stack ?? e.message) : e.message) : String(e);
    if (progressOpen) process.stderr.write('\n'); // not glued to a progress line
    process.stderr.write(`trellis: ${text}${debug.on ? '' : ' (--debug for the stack)'}\n`);
    process.exit(1);
  },
);

/** The forged writes neither refused (REMOTE_ACCESS) nor accepted (OK), by how they settled. */
function forgedRest(outcomes: Record<string, number>): string {
  const rest = Object.entries(outcomes).filter(([k]) => k !== 'REMOTE_ACCESS' && k !== 'OK');
  return rest.length ? `, ${rest.map(([k, n]) => `${n} ${k}`).join(', ')}` : '';
}
