// Helpers of the conformance cases: seeded patterns, byte comparison with the first differing
// offset, expected rejections, and a tracker that checks every operation settles exactly once.
import { TrellisError, type TrellisErrorCode } from '../errors.js';
import { Prng } from '../loopback/prng.js';
import type { MrHandle, TransferEngine } from '../types.js';

/** Fill with a seeded pattern (never all-zero, so a missed write shows). */
export function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  new Prng(seed).fill(b);
  return b;
}

/** Throw with the first differing offset instead of a megabyte diff. */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, label: string): void {
  if (actual.length !== expected.length) {
    throw new Error(`${label}: length ${actual.length} != expected ${expected.length}`);
  }
  if (Buffer.compare(actual, expected) === 0) return;
  let i = 0;
  while (actual[i] === expected[i]) i++;
  throw new Error(
    `${label}: first difference at byte ${i} of ${actual.length}: got ${actual[i]}, expected ${expected[i]}`,
  );
}

/** The host bytes of a handle (conformance runs on host memory). */
export function bytesOf(h: MrHandle): Uint8Array {
  if (!h.buffer) throw new Error('conformance: expected a host-memory region');
  return h.buffer;
}

/**
 * How `p` settled, as one comparable string: `resolved`, `CODE: message` for a TrellisError, or
 * `non-trellis: ...`. Tests assert on the whole text, so the code and the message are both checked.
 */
export async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    return e instanceof TrellisError ? `${e.code}: ${e.message}` : `non-trellis: ${String(e)}`;
  }
}

/** Await a promise that must reject with a TrellisError of `code`; returns the error. */
export async function rejects(
  p: Promise<unknown>,
  code: TrellisErrorCode,
  label = 'operation',
): Promise<TrellisError> {
  let settled = false;
  try {
    await p;
    settled = true;
  } catch (e) {
    if (!(e instanceof TrellisError))
      throw new Error(`${label}: rejected with a non-TrellisError: ${String(e)}`);
    if (e.code !== code) throw new Error(`${label}: expected code ${code}, got ${e.code}: ${e.message}`);
    return e;
  }
  if (settled) throw new Error(`${label}: resolved, expected a ${code} rejection`);
  throw new Error('unreachable');
}

/** Synchronous call that must throw a TrellisError of `code`. */
export function throws(fn: () => unknown, code: TrellisErrorCode, label = 'call'): TrellisError {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof TrellisError)) throw new Error(`${label}: threw a non-TrellisError: ${String(e)}`);
    if (e.code !== code) throw new Error(`${label}: expected code ${code}, got ${e.code}: ${e.message}`);
    return e;
  }
  throw new Error(`${label}: did not throw, expected ${code}`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Tracks that each promise settles exactly once, and how. */
export class SettleTracker {
  readonly outcomes: Array<'pending' | 'resolved' | TrellisErrorCode | 'non-trellis'> = [];
  private readonly all: Promise<unknown>[] = [];

  track(p: Promise<unknown>): Promise<unknown> {
    const i = this.outcomes.push('pending') - 1;
    const q = p.then(
      () => {
        if (this.outcomes[i] !== 'pending') throw new Error(`operation ${i} settled twice`);
        this.outcomes[i] = 'resolved';
      },
      (e: unknown) => {
        if (this.outcomes[i] !== 'pending') throw new Error(`operation ${i} settled twice`);
        this.outcomes[i] = e instanceof TrellisError ? e.code : 'non-trellis';
      },
    );
    this.all.push(q);
    return q;
  }

  /** Wait for all, failing if any is still pending after `ms`. */
  async settled(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const t = new Promise<never>((_, rej) => {
      timer = setTimeout(() => {
        const pending = this.outcomes.filter((o) => o === 'pending').length;
        rej(new Error(`${pending} of ${this.outcomes.length} operations did not settle within ${ms} ms`));
      }, ms);
    });
    try {
      await Promise.race([Promise.all(this.all), t]);
    } finally {
      clearTimeout(timer);
    }
  }

  count(o: string): number {
    return this.outcomes.filter((x) => x === o).length;
  }
}

/** Sum of a per-NIC stat over an engine's NICs. */
export function nicSum(
  e: TransferEngine,
  key:
    | 'bytesWritten'
    | 'writeOps'
    | 'immsReceived'
    | 'sendOps'
    | 'recvOps'
    | 'bytesSent'
    | 'bytesReceived'
    | 'errors',
): number {
  return e.stats().nics.reduce((n, s) => n + s[key], 0);
}

/** The xorshift pattern both sides of the cross-process suite fill with (cheap to regenerate anywhere). */
export function fillXorshift(buf: Uint8Array, seed: number): void {
  let x = seed >>> 0 || 1;
  for (let i = 0; i < buf.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = x;
  }
}
