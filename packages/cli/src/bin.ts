#!/usr/bin/env node
// The `trellis` command: parses argv and runs demo, bench, soak, cluster or doctor (each in its own
// module). Exit codes and usage text live here.
import { writeFileSync } from 'node:fs';
import type { Provider } from '@trellis/backend-efa';
import { benchHtml, fmtSize, runBench, serveBench } from './bench.js';
import { runClusterDemo } from './cluster.js';
import { runDemo } from './demo.js';
import { runDoctor } from './doctor.js';
import { runSoak } from './soak.js';
import { table } from './table.js';

const usage = `usage: trellis <command>

commands:
  demo [--provider shm|tcp]            a cluster of processes on this machine over libfabric: a
                                       transfer sweep, KV streaming, a weight sync, an MoE round —
                                       each verified byte for byte
  demo --loopback [--nics N] [--seed S] every transfer between two engines of the loopback fabric
  doctor [--json]                      what this host has and lacks for each backend, and a verdict
  bench [--backend efa|verbs] [--provider shm|tcp] [--nics N] [--sizes B,B,...] [--json FILE] [--html FILE]
                                       single writes into a second process, a sweep of sizes, verified
  bench --serve [--port P] [--provider tcp]      the target of a two-host run
  bench --connect HOST:PORT [--provider tcp] ... the writer of a two-host run
  soak [--seconds 60] [--procs 4] [--provider tcp|shm] [--kill-every 10] [--seed 1] [--no-forge] [--no-lane] [--json FILE]
                                       processes writing to each other with aborts, deadlines and
                                       SIGKILLed peers; every byte checked; exits 1 if an operation
                                       was lost, a byte differed or a process crashed
`;

function flag(args: string[], name: string, dflt: number): number {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = Number(args[i + 1]);
  if (!Number.isInteger(v)) {
    process.stderr.write(`trellis: ${name} needs an integer\n`);
    process.exit(2);
  }
  return v;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...args] = argv;
  switch (cmd) {
    case 'demo': {
      if (args.includes('--loopback')) return loopbackDemo(args);
      const i = args.indexOf('--provider');
      const provider = i >= 0 ? (args[i + 1] as Provider) : undefined;
      if (provider !== undefined && provider !== 'shm' && provider !== 'tcp') {
        process.stderr.write('trellis demo: --provider is shm or tcp\n');
        return 2;
      }
      const t0 = performance.now();
      const rows = await runClusterDemo({ provider, log: (l) => process.stdout.write(`  ${l}\n`) });
      const mib = (b: number) =>
        b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : `${(b / 1024).toFixed(1)} KiB`;
      process.stdout.write(
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
      process.stdout.write(
        ok
          ? `\ndemo: every byte verified (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`
          : '\ndemo: VERIFICATION FAILED\n',
      );
      return ok ? 0 : 1;
    }
    case 'bench': {
      const opt = (name: string) => {
        const i = args.indexOf(name);
        return i >= 0 ? args[i + 1] : undefined;
      };
      if (args.includes('--serve')) {
        await serveBench({
          provider: (opt('--provider') ?? 'tcp') as Provider,
          nics: flag(args, '--nics', 1),
          port: flag(args, '--port', 29600),
          log: (l) => process.stdout.write(`${l}\n`),
        });
        return 0;
      }
      const provider = (opt('--provider') ?? (args.includes('--connect') ? 'tcp' : 'shm')) as Provider;
      if (provider !== 'shm' && provider !== 'tcp') {
        process.stderr.write('trellis bench: --provider is shm or tcp (efa where present)\n');
        return 2;
      }
      const sizes = opt('--sizes')?.split(',').map(Number);
      if (sizes?.some((n) => !Number.isInteger(n) || n < 1)) {
        process.stderr.write('trellis bench: --sizes is a comma-separated list of byte counts\n');
        return 2;
      }
      const backend = (opt('--backend') ?? 'efa') as 'efa' | 'verbs';
      if (backend !== 'efa' && backend !== 'verbs') {
        process.stderr.write('trellis bench: --backend is efa or verbs\n');
        return 2;
      }
      const r = await runBench({
        backend,
        provider,
        nics: flag(args, '--nics', 1),
        sizes,
        connect: opt('--connect'),
        progress: (done, total) => {
          const bar = '#'.repeat(Math.round((20 * done) / total)).padEnd(20, '.');
          process.stderr.write(`\r  [${bar}] ${done}/${total} sizes`);
          if (done === total) process.stderr.write('\n');
        },
      });
      process.stdout.write(`${r.provider}, ${r.nics} NIC(s), libfabric ${r.libfabric}, ${r.host}\n\n`);
      process.stdout.write(
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
      const json = opt('--json');
      if (json) writeFileSync(json, JSON.stringify(r, null, 2));
      const html = opt('--html');
      if (html) writeFileSync(html, benchHtml(r));
      return r.rows.every((x) => x.verified) ? 0 : 1;
    }
    case 'doctor': {
      const r = await runDoctor();
      if (args.includes('--json')) {
        process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
        return 0;
      }
      process.stdout.write(
        `${table(
          ['area', 'item', 'status', 'detail'],
          r.checks.map((c) => [c.area, c.item, c.status, c.detail]),
        )}\n\n`,
      );
      for (const v of r.verdicts)
        process.stdout.write(`${v.usable ? '[usable]    ' : '[not usable]'} ${v.backend}: ${v.verdict}\n`);
      return 0;
    }
    case 'soak': {
      const i = args.indexOf('--provider');
      const provider = (i >= 0 ? args[i + 1] : 'tcp') as Provider;
      const r = await runSoak({
        seconds: flag(args, '--seconds', 60),
        procs: flag(args, '--procs', 4),
        provider,
        killEveryS: flag(args, '--kill-every', 10),
        seed: flag(args, '--seed', 1),
        ...(args.includes('--no-forge') ? { forge: false } : {}),
        ...(args.includes('--no-lane') ? { sameHostLane: false } : {}),
        log: (l) => process.stderr.write(`${l}\n`),
      });
      const mb = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
      process.stdout.write(
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
              .map(([k, v]) => `${k} ${v}`)
              .join(', '),
            mb(p.bytesWritten),
            mb(p.verifiedBytes),
            String(p.mismatches),
            `${mb(p.rssStart)} → ${mb(p.rssEnd)}`,
          ]),
        )}\n\n`,
      );
      const t = r.totals;
      process.stdout.write(
        `${r.seconds} s, ${r.procs} processes over ${r.provider}: ${t.submitted} operations, ${t.settled} settled, ${t.lost} lost; ` +
          `${mb(t.bytesWritten)} written, ${mb(t.verifiedBytes)} verified, ${t.mismatches} mismatches; ` +
          `faults injected: ${t.faultsInjected} (${r.kills} processes killed, ${t.forged} forged descriptors, ${t.forgedRefused} refused); ` +
          `crashes: ${r.crashes}; errors between healthy peers: ${t.healthyErrors}\n`,
      );
      for (const line of t.healthySamples) process.stdout.write(`  healthy-pair error: ${line}\n`);
      const j = args.indexOf('--json');
      if (j >= 0 && args[j + 1]) writeFileSync(args[j + 1]!, JSON.stringify(r, null, 2));
      const forgedOk = t.forgedRefused === t.forged || r.kills > 0;
      return t.lost === 0 && t.mismatches === 0 && r.crashes === 0 && t.healthyErrors === 0 && forgedOk
        ? 0
        : 1;
    }
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(usage);
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`trellis: unknown command ${JSON.stringify(cmd)}\n${usage}`);
      return 2;
  }
}

async function loopbackDemo(args: string[]): Promise<number> {
  const rows = await runDemo({
    nics: flag(args, '--nics', 2),
    seed: flag(args, '--seed', 1),
    log: (l) => process.stdout.write(`  ${l}\n`),
  });
  process.stdout.write(
    `\n${table(
      ['step', 'bytes', 'imms', 'ms', 'verified'],
      rows.map((r) => [r.step, String(r.bytes), String(r.imms), r.ms.toFixed(1), r.verified ? 'yes' : 'NO']),
    )}\n`,
  );
  const ok = rows.every((r) => r.verified);
  process.stdout.write(ok ? '\ndemo: every byte verified\n' : '\ndemo: VERIFICATION FAILED\n');
  return ok ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`trellis: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
