#!/usr/bin/env node
import { runDemo } from './demo.js';
import { table } from './table.js';

const usage = `usage: trellis <command>

commands:
  demo [--nics N] [--seed S]   run every transfer between two loopback engines, verified byte for byte
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
      const rows = await runDemo({
        nics: flag(args, '--nics', 2),
        seed: flag(args, '--seed', 1),
        log: (l) => process.stdout.write(`  ${l}\n`),
      });
      process.stdout.write(
        `\n${table(
          ['step', 'bytes', 'imms', 'ms', 'verified'],
          rows.map((r) => [
            r.step,
            String(r.bytes),
            String(r.imms),
            r.ms.toFixed(1),
            r.verified ? 'yes' : 'NO',
          ]),
        )}\n`,
      );
      const ok = rows.every((r) => r.verified);
      process.stdout.write(ok ? '\ndemo: every byte verified\n' : '\ndemo: VERIFICATION FAILED\n');
      return ok ? 0 : 1;
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

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`trellis: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
