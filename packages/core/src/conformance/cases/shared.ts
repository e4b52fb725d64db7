// What every conformance case shares: the engine group it runs on, its context, and the helpers
// that make targets, sources and checks. Imports the contract and the conformance utilities only.
import assert from 'node:assert/strict';
import type { FaultInjector } from '../../loopback/fabric.js';
import { Prng } from '../../loopback/prng.js';
import type { MrHandle, TransferEngine } from '../../types.js';
import { bytesOf, pattern, sleep } from '../util.js';

/** Engines that can reach each other, made fresh for one case. */
export interface EngineGroup {
  engines: TransferEngine[];
  /** Present when the target can inject faults. */
  faults?: FaultInjector;
  /** Close everything (engines already closed by the case are fine). */
  close(): Promise<void>;
}

export type GroupFactory = (size: number) => Promise<EngineGroup>;

export interface CaseContext {
  createGroup: GroupFactory;
  nics: number;
  seed: number;
}

/** One conformance case: its id (the vitest title) and its body. */
export interface ConformanceCase {
  id: string;
  run(ctx: CaseContext): Promise<void>;
}

export const WAIT = { timeoutMs: 15_000 };

export async function withGroup(
  ctx: CaseContext,
  size: number,
  fn: (g: EngineGroup, rng: Prng) => Promise<void>,
): Promise<void> {
  const g = await ctx.createGroup(size);
  try {
    await fn(g, new Prng(ctx.seed));
  } finally {
    await g.close();
  }
}

export function needFaults(g: EngineGroup): FaultInjector {
  if (!g.faults) throw new Error('this case needs fault injection: skip it for targets without it');
  return g.faults;
}

/** A region filled with a sentinel, so writes outside their range show up. */
export async function target(
  e: TransferEngine,
  length: number,
  seed: number,
): Promise<{ h: MrHandle; expect: Uint8Array }> {
  const h = await e.registerMemory(length, { remote: true });
  const init = pattern(length, seed ^ 0x5a5a);
  bytesOf(h).set(init);
  return { h, expect: init.slice() };
}

export async function source(e: TransferEngine, length: number, seed: number): Promise<MrHandle> {
  const h = await e.registerMemory(length);
  bytesOf(h).set(pattern(length, seed));
  return h;
}

/** After the expected arrivals, no extra one may show up. */
export async function assertNoExtra(e: TransferEngine, imm: number): Promise<void> {
  await sleep(20);
  assert.equal(e.immCounter(imm).value, 0, `imm ${imm}: unexpected extra arrivals`);
}

export function allSizes(rng: Prng): number[] {
  const fixed = [
    0,
    1,
    7,
    63,
    64,
    65,
    4095,
    4096,
    16383,
    16384,
    16385,
    3 * 16384 + 5,
    65536 + 13,
    262144 + 5,
    (1 << 20) + 3,
  ];
  for (let i = 0; i < 6; i++) fixed.push(rng.between(1, 300_000));
  return fixed;
}
