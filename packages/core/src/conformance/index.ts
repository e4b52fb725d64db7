/**
 * `@trellis/core/conformance` — the one suite every backend passes, as libfabric's fabtests are
 * one suite for every provider. Call {@link defineConformanceSuite} inside a vitest test file with a
 * factory of engine groups; it registers one vitest case per contract clause. Cases a backend
 * cannot run go in `skip` with a reason, and are reported as skipped with that reason.
 *
 * Nothing in the suite relies on ordering: every check waits on a counter, a promise or a message.
 *
 * @packageDocumentation
 */
import { describe, it } from 'vitest';
import type { TransferEngine } from '../types.js';
import { CASES, type ConformanceCaseId, type GroupFactory } from './cases.js';

export { UNREGISTERED_WRITE_CASE } from './cases/lifecycle.js';
export { LATENCY_MODE_CASE, LATENCY_TIMERS_CASE, REACTIONS_CASE } from './cases/reactions.js';
export type { CaseContext, EngineGroup, GroupFactory } from './cases.js';
export { CASES as CONFORMANCE_CASES, type ConformanceCase, type ConformanceCaseId } from './cases.js';
export {
  BAD_DESCRIPTOR_CASE,
  type CrossProcessTarget,
  defineCrossProcessSuite,
  HUNG_PEER_CASE,
  KILLED_PEER_ISOLATION_CASE,
  MESSAGE_ISOLATION_CASE,
} from './cross.js';
export { type FuzzTally, fuzzBytes, fuzzText } from './fuzz.js';
export { HostGpu } from './host-gpu.js';
export { LineProcess, PeerProcess } from './peer.js';
export { definePortSuite, type PortCalls } from './port.js';
export {
  assertBytes,
  fillXorshift,
  outcome,
  pattern,
  rejects,
  SettleTracker,
  sleep,
  throws,
} from './util.js';

/**
 * A {@link GroupFactory} from an engine factory: `size` engines made by `make`, closed together.
 * `createGroup: groupOf(() => createEngine({ provider: 'shm', nics: 2 }))`.
 */
export function groupOf(make: () => Promise<TransferEngine>): GroupFactory {
  return async (size) => {
    const engines = await Promise.all(Array.from({ length: size }, make));
    return {
      engines,
      close: async () => {
        await Promise.all(engines.map((e) => e.close()));
      },
    };
  };
}

/**
 * The cases that drive the loopback fabric's fault injector (kill a peer, fail a NIC, delay). A
 * real backend skips them with its own reason (and tests its failures with real processes):
 * `skip: skipFaultCases('...')`.
 */
export function skipFaultCases(reason: string): Partial<Record<ConformanceCaseId, string>> {
  return Object.fromEntries(
    CASES.filter((c) => c.id.startsWith('faults: ')).map((c) => [c.id, reason]),
  ) as Partial<Record<ConformanceCaseId, string>>;
}

/** What {@link defineConformanceSuite} needs. */
export interface ConformanceTarget {
  /** Shown in the vitest names, e.g. `loopback nics=2 seed=3`. */
  name: string;
  /** NICs per engine in the groups `createGroup` makes. */
  nics: number;
  /** Seed for the suite's own random sizes and page tables. */
  seed?: number;
  /** Make `size` engines that can reach each other, fresh for each case. */
  createGroup: GroupFactory;
  /** Cases this target cannot run, each with the reason reported in the skip. */
  skip?: Partial<Record<ConformanceCaseId, string>>;
  /** Per-case timeout (default 30 s). */
  timeoutMs?: number;
}

/** Register the conformance cases for `target` in the current vitest file. */
export function defineConformanceSuite(target: ConformanceTarget): void {
  describe(`conformance: ${target.name}`, () => {
    for (const c of CASES) {
      const reason = target.skip?.[c.id];
      if (reason !== undefined) {
        it.skip(`${c.id} — skipped: ${reason}`, () => {});
        continue;
      }
      it(
        c.id,
        async () => {
          await c.run({ createGroup: target.createGroup, nics: target.nics, seed: target.seed ?? 1 });
        },
        target.timeoutMs ?? 30_000,
      );
    }
  });
}
