// The target process of the SDK benchmark: an engine with a region registered for remote writes.
// stdin/stdout JSON lines: {"expect": n} → counts n arrivals of imm 1 → {"done": n};
// {"pong": n, "to": addr, "mode": m} → {"ready": n} once it can answer, {"done": n} after n answers.
import { createInterface } from 'node:readline';
import { createEngine, type Provider } from '@trellis/backend-efa';
import { NetAddr } from '@trellis/core';

/** `TRELLIS_BENCH_TARGET_X` (this target engine alone) over `TRELLIS_BENCH_X` (both engines). */
function envNumber(name: string): number | undefined {
  const v = process.env[name.replace('TRELLIS_BENCH_', 'TRELLIS_BENCH_TARGET_')] ?? process.env[name];
  return v === undefined || v === '' ? undefined : Number(v);
}

const { provider, size, nics, spin, driveInline } = JSON.parse(process.argv[2]!) as {
  provider: Provider;
  size: number;
  nics: number;
  /** Latency mode: the worker never sleeps (maxSleepUs 0). */
  spin?: boolean;
  /** The engine option: its polls run the engine's turn on this thread. */
  driveInline?: boolean;
};
const engine = await createEngine({
  provider,
  nics,
  // The engine's defaults unless the environment overrides them (see docs/benchmarks.md).
  maxSleepUs: spin ? 0 : envNumber('TRELLIS_BENCH_SLEEP_US'),
  idleSpinUs: envNumber('TRELLIS_BENCH_SPIN_US'),
  doorbellUs: envNumber('TRELLIS_BENCH_DOORBELL_US'),
  arrivalBatchUs: envNumber('TRELLIS_BENCH_ARRIVAL_US'),
  busyPollUs: envNumber('TRELLIS_BENCH_BUSY_POLL_US'),
  driveInline: driveInline || envNumber('TRELLIS_BENCH_DRIVE_INLINE') === 1,
});
const region = await engine.registerMemory(size, { remote: true });
// Touched before anything is timed, as the raw program's target memsets its buffer: first writes
// into fresh pages fault them in, a cost of the memory, not of the path being measured.
region.buffer!.fill(0);
process.stdout.write(`${JSON.stringify({ desc: region.desc.toString() })}\n`);
for await (const line of createInterface({ input: process.stdin })) {
  const m = JSON.parse(line) as {
    expect?: number;
    exit?: boolean;
    pong?: number;
    to?: string;
    mode?: 'default' | 'latency' | 'sync' | 'inline' | 'inline-sync' | 'reaction' | 'native';
  };
  if (m.pong !== undefined) {
    // Answer every immediate 2 with an immediate 3, m.pong times: awaiting each (default), in a
    // latency loop (pollUntil), or by native reactions armed ahead (no JavaScript per answer).
    const peer = NetAddr.parse(m.to!);
    const ready = () => process.stdout.write(`${JSON.stringify({ ready: m.pong })}\n`);
    const c = engine.immCounter(2);
    // As the initiator's pings: no per-operation timeoutMs (a JS timer per answer; the engine
    // deadline, opTimeoutMs, still bounds each one). Reactions armed ahead wait up to the whole
    // exchange, so they carry one.
    const answer = { kind: 'imm', dst: peer, imm: 3 } as const;
    if (m.mode === 'reaction' || m.mode === 'native') {
      const base = c.total;
      const armed: Promise<void>[] = [];
      for (let k = 1; k <= m.pong; k++)
        armed.push(engine.submitOnImm(2, base + k, { ...answer, timeoutMs: 600_000 }));
      // Armed before the first ping can come: totals count from here.
      ready();
      await Promise.all(armed);
      await c.wait(m.pong);
    } else if (m.mode === 'sync' || m.mode === 'inline-sync') {
      // No await in the loop: spin on poll() until the counter has an arrival, answer, repeat.
      const sent: Promise<void>[] = [];
      ready();
      for (let i = 0; i < m.pong; i++) {
        while (!c.take(1)) engine.poll!();
        sent.push(engine.submitImm(answer));
      }
      await Promise.all(sent);
    } else if (m.mode === 'latency' || m.mode === 'inline') {
      // Each answer's own completion is reaped by later polls (as the raw program drains it on
      // its way to the next arrival); all of them are awaited at the end.
      const sent: Promise<void>[] = [];
      ready();
      for (let i = 0; i < m.pong; i++) {
        await engine.pollUntil!(() => c.take(1), { timeoutMs: 60_000 });
        sent.push(engine.submitImm(answer));
      }
      await Promise.all(sent);
    } else {
      ready();
      for (let i = 0; i < m.pong; i++) {
        await c.wait(1);
        await engine.submitImm(answer);
      }
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
