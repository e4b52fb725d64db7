// The CPU reference across 2–4 OS processes on backend-efa (shm, tcp): every rank checks its
// dispatch and combine results against the reference computed from every rank's inputs.
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const fixture = fileURLToPath(new URL('./fixtures/rank.mjs', import.meta.url));
let procs: ChildProcess[] = [];
afterEach(() => {
  for (const p of procs) p.kill('SIGKILL');
  procs = [];
});

async function run(
  provider: 'shm' | 'tcp',
  cfg: Record<string, unknown> & { worldSize: number },
  rounds: Array<{ seed: number; routing: string }>,
) {
  const ranks = Array.from({ length: cfg.worldSize }, (_, rank) => {
    const child = spawn(process.execPath, [fixture, JSON.stringify({ provider, cfg, rank })], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    procs.push(child);
    const it = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    return {
      child,
      next: async () => JSON.parse((await it.next()).value as string) as Record<string, unknown>,
    };
  });
  const descriptors = await Promise.all(ranks.map(async (r) => (await r.next()).descriptor));
  for (const r of ranks) r.child.stdin!.write(`${JSON.stringify({ descriptors })}\n`);
  const results: Array<Record<string, unknown>> = [];
  for (const round of rounds) {
    for (const r of ranks) r.child.stdin!.write(`${JSON.stringify({ round })}\n`);
    results.push(...(await Promise.all(ranks.map((r) => r.next()))));
  }
  for (const r of ranks) r.child.stdin!.write(`${JSON.stringify({ exit: true })}\n`);
  await Promise.all(ranks.map((r) => new Promise((res) => r.child.on('exit', res))));
  return results;
}

describe('MoE dispatch/combine across processes on backend-efa', () => {
  const cfg = {
    nodeSize: 1,
    topk: 4,
    hidden: 64,
    maxTokensPerRank: 32,
    inDtype: 'bf16',
    outDtype: 'bf16',
    maxPrivateTokens: 6,
  };
  for (const [provider, W, proxy] of [
    ['shm', 2, false],
    ['tcp', 3, false],
    ['shm', 4, false],
    ['shm', 2, true],
    ['tcp', 3, true],
    ['shm', 4, true],
  ] as const) {
    it(`${W} processes on ${provider}${proxy ? ', driven by the native proxy' : ''}: random, skewed, an empty rank, overflow past 6 private rows — all equal the reference`, async () => {
      const results = await run(provider, { ...cfg, worldSize: W, numExperts: 4 * W, proxy }, [
        { seed: 1, routing: 'random' },
        { seed: 2, routing: 'skewed' },
        { seed: 3, routing: 'empty-rank' },
        { seed: 4, routing: 'random' },
      ]);
      expect(results).toHaveLength(4 * W);
      for (const r of results) expect([r.dispatchOk, r.combineOk, r.proxyOk]).toEqual([true, true, true]);
    }, 120_000);
  }
});
