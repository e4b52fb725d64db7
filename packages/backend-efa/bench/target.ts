// The target process of the SDK benchmark: an engine with a region registered for remote writes.
// stdin/stdout JSON lines: {"expect": n} → counts n arrivals of imm 1 → {"done": n}.
import { createInterface } from 'node:readline';
import { createEngine, type Provider } from '@trellis/backend-efa';
import { NetAddr } from '@trellis/core';

function envNumber(name: string): number | undefined {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : Number(v);
}

const { provider, size, nics } = JSON.parse(process.argv[2]!) as {
  provider: Provider;
  size: number;
  nics: number;
};
const engine = await createEngine({
  provider,
  nics,
  // The engine's defaults unless the environment overrides them (see docs/benchmarks.md).
  maxSleepUs: envNumber('TRELLIS_BENCH_SLEEP_US'),
  idleSpinUs: envNumber('TRELLIS_BENCH_SPIN_US'),
});
const region = await engine.registerMemory(size, { remote: true });
process.stdout.write(`${JSON.stringify({ desc: region.desc.toString() })}\n`);
for await (const line of createInterface({ input: process.stdin })) {
  const m = JSON.parse(line) as { expect?: number; exit?: boolean; pong?: number; to?: string };
  if (m.pong !== undefined) {
    // Answer every immediate 2 with an immediate 3, m.pong times.
    const peer = NetAddr.parse(m.to!);
    const c = engine.immCounter(2);
    for (let i = 0; i < m.pong; i++) {
      await c.wait(1);
      await engine.submitImm({ dst: peer, imm: 3 });
    }
    process.stdout.write(`${JSON.stringify({ done: m.pong })}\n`);
  }
  if (m.expect !== undefined) {
    await engine.immCounter(1).wait(m.expect);
    process.stdout.write(`${JSON.stringify({ done: m.expect })}\n`);
  }
  if (m.exit) break;
}
await engine.close();
process.exit(0);
