// Decoder fuzzing for backends and systems: random and mutated inputs fed to a decoder, which must
// accept or refuse each with a TrellisError (never throw anything else).
import { TrellisError } from '../errors.js';
import { Prng } from '../loopback/prng.js';

/** How a decoder took an input: accepted it, or refused it with a TrellisError. */
export interface FuzzTally {
  runs: number;
  accepted: number;
  refused: number;
  /** Refusals by code. */
  codes: Record<string, number>;
}

/**
 * Feed `decode` `runs` inputs — random bytes, and valid `samples` mutated (bytes flipped, set to
 * 0x00/0xff/0x80, inserted, deleted, truncated, extended, spliced with another sample) — and
 * require that each is accepted or refused with a `TrellisError`. Any other exception is thrown
 * with the input that caused it (hex). Seeded: a failure reproduces.
 */
export function fuzzBytes(
  decode: (b: Uint8Array) => unknown,
  samples: readonly Uint8Array[],
  runs: number,
  seed = 1,
): FuzzTally {
  const rng = new Prng(seed);
  const t: FuzzTally = { runs, accepted: 0, refused: 0, codes: {} };
  for (let i = 0; i < runs; i++) {
    const input = i % 8 === 0 ? randomBytes(rng, rng.below(96)) : mutate(rng, samples);
    try {
      decode(input);
      t.accepted++;
    } catch (e) {
      if (!(e instanceof TrellisError))
        throw new Error(
          `fuzz run ${i} (seed ${seed}): a non-TrellisError for input ${Buffer.from(input).toString('hex')}: ${String(e)}`,
        );
      t.refused++;
      t.codes[e.code] = (t.codes[e.code] ?? 0) + 1;
    }
  }
  return t;
}

/** {@link fuzzBytes} for text decoders: mutates UTF-8 samples and decodes the (lossy) text. */
export function fuzzText(
  decode: (s: string) => unknown,
  samples: readonly string[],
  runs: number,
  seed = 1,
): FuzzTally {
  const enc = samples.map((s) => new TextEncoder().encode(s));
  return fuzzBytes((b) => decode(new TextDecoder().decode(b)), enc, runs, seed);
}

function randomBytes(rng: Prng, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = rng.below(256);
  return b;
}

function mutate(rng: Prng, samples: readonly Uint8Array[]): Uint8Array {
  let b: Uint8Array = Uint8Array.from(samples[rng.below(samples.length)]!);
  const edits = 1 + rng.below(3);
  for (let k = 0; k < edits; k++) {
    const at = b.length ? rng.below(b.length) : 0;
    switch (rng.below(8)) {
      case 0:
        if (b.length) b[at] = b[at]! ^ (1 << rng.below(8));
        break;
      case 1:
        if (b.length) b[at] = [0, 0xff, 0x80, 0x7f][rng.below(4)]!;
        break;
      case 2:
        b = concat(b.subarray(0, at), randomBytes(rng, 1 + rng.below(4)), b.subarray(at));
        break;
      case 3:
        b = concat(b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.below(4))));
        break;
      case 4:
        b = b.subarray(0, at);
        break;
      case 5:
        b = concat(b, randomBytes(rng, 1 + rng.below(16)));
        break;
      case 6: {
        const o = samples[rng.below(samples.length)]!;
        b = concat(b.subarray(0, at), o.subarray(rng.below(o.length + 1)));
        break;
      }
      default:
        if (b.length) b[at] = rng.below(256);
    }
  }
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
