// NetAddr: construction checks, binary and text encodings, and decoding of bad input.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_NICS, NetAddr, TrellisError } from '../src/index.js';

const kindArb = fc.stringMatching(/^[a-z][a-z0-9-]{0,31}$/);
const addrArb = fc
  .tuple(
    kindArb,
    fc.integer({ min: 0, max: 0xffff_ffff }),
    fc.array(fc.uint8Array({ minLength: 1, maxLength: 300 }), { minLength: 1, maxLength: MAX_NICS }),
  )
  .map(([k, g, n]) => new NetAddr(k, g, n));

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof TrellisError) return e.code;
    return `non-trellis: ${String(e)}`;
  }
  return 'no error';
}

describe('NetAddr', () => {
  it('round-trips through bytes and text (property)', () => {
    fc.assert(
      fc.property(addrArb, (a) => {
        const b = NetAddr.fromBytes(a.toBytes());
        const t = NetAddr.parse(a.toString());
        expect(b.equals(a)).toBe(true);
        expect(t.equals(a)).toBe(true);
        expect(t.kind).toBe(a.kind);
        expect(t.generation).toBe(a.generation);
        expect(t.nics.map((n) => [...n])).toEqual(a.nics.map((n) => [...n]));
        expect(JSON.parse(JSON.stringify({ a }))).toEqual({ a: a.toString() });
      }),
      { numRuns: 300 },
    );
  });

  it('every truncation of a valid encoding is a DECODE_ERROR (property)', () => {
    fc.assert(
      fc.property(addrArb, fc.nat(), (a, cut) => {
        const bytes = a.toBytes();
        const n = cut % bytes.length;
        expect(code(() => NetAddr.fromBytes(bytes.subarray(0, n)))).toBe('DECODE_ERROR');
      }),
      { numRuns: 300 },
    );
  });

  it('random bytes never throw anything but a TrellisError (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        const c = code(() => NetAddr.fromBytes(bytes));
        expect(['DECODE_ERROR', 'UNSUPPORTED_VERSION', 'no error']).toContain(c);
      }),
      { numRuns: 500 },
    );
  });

  it('rejects a wrong magic, a newer version, trailing bytes, a bad NIC count and an empty NIC address', () => {
    const good = new NetAddr('efa', 7, [Uint8Array.of(1, 2, 3)]).toBytes();
    const bad = (mut: (b: Uint8Array) => Uint8Array) => code(() => NetAddr.fromBytes(mut(good.slice())));
    const put = (i: number, v: number) => (b: Uint8Array) => {
      b[i] = v;
      return b;
    };
    expect(bad(put(0, 0x00))).toBe('DECODE_ERROR');
    expect(bad(put(2, 2))).toBe('UNSUPPORTED_VERSION');
    expect(bad((b) => Uint8Array.of(...b, 0))).toBe('DECODE_ERROR');
    // layout: magic(2) version(1) kindLen(1) "efa"(3) generation(4) nicCount(1)
    expect(bad(put(11, 0))).toBe('DECODE_ERROR');
    expect(bad(put(11, MAX_NICS + 1))).toBe('DECODE_ERROR');
    const empty = Uint8Array.of(...good.subarray(0, 12), 0, 0);
    expect(code(() => NetAddr.fromBytes(empty))).toBe('DECODE_ERROR');
    expect(code(() => NetAddr.fromBytes('abc' as never))).toBe('DECODE_ERROR');
  });

  it('messages say what is wrong', () => {
    expect(() => NetAddr.fromBytes(Uint8Array.of(0x54, 0x41, 1, 3))).toThrow(
      /truncated input: reading kind needs 3 byte\(s\) at offset 4/,
    );
    expect(() => NetAddr.fromBytes(Uint8Array.of(1, 2, 3))).toThrow(/bad magic 0x0102/);
    expect(() => NetAddr.fromBytes(Uint8Array.of(0x54, 0x41, 9))).toThrow(/version 9 is not supported/);
  });

  it('parse rejects garbage, another version, a kind mismatch and non-canonical base64', () => {
    const a = new NetAddr('shm', 1, [Uint8Array.of(9, 9)]);
    const [, , b64] = a.toString().split(':');
    expect(code(() => NetAddr.parse('hello'))).toBe('DECODE_ERROR');
    expect(code(() => NetAddr.parse(''))).toBe('DECODE_ERROR');
    expect(code(() => NetAddr.parse(`tna2:shm:${b64}`))).toBe('UNSUPPORTED_VERSION');
    expect(code(() => NetAddr.parse(`tna1:efa:${b64}`))).toBe('DECODE_ERROR');
    expect(code(() => NetAddr.parse(`tna1:shm:${b64}!`))).toBe('DECODE_ERROR');
    expect(code(() => NetAddr.parse(`tna1:shm:${b64}A`))).toBe('DECODE_ERROR');
    expect(code(() => NetAddr.parse(`tna1:shm:${b64!.slice(0, -2)}`))).toBe('DECODE_ERROR');
    expect(code(() => NetAddr.parse(42 as never))).toBe('DECODE_ERROR');
    expect(() => NetAddr.parse(`tna1:efa:${b64}`)).toThrow(
      /the text says kind "efa" but the bytes say "shm"/,
    );
  });

  it('the constructor validates kind, generation and NIC addresses', () => {
    expect(code(() => new NetAddr('EFA', 1, [Uint8Array.of(1)]))).toBe('INVALID_ARGUMENT');
    expect(code(() => new NetAddr('efa', -1, [Uint8Array.of(1)]))).toBe('INVALID_ARGUMENT');
    expect(code(() => new NetAddr('efa', 2 ** 32, [Uint8Array.of(1)]))).toBe('INVALID_ARGUMENT');
    expect(code(() => new NetAddr('efa', 1, []))).toBe('INVALID_ARGUMENT');
    expect(code(() => new NetAddr('efa', 1, Array(MAX_NICS + 1).fill(Uint8Array.of(1))))).toBe(
      'INVALID_ARGUMENT',
    );
    expect(code(() => new NetAddr('efa', 1, [new Uint8Array(0)]))).toBe('INVALID_ARGUMENT');
  });

  it('is immutable and copies its inputs', () => {
    const nic = Uint8Array.of(1, 2);
    const a = new NetAddr('efa', 1, [nic]);
    nic[0] = 9;
    expect(a.nics[0]![0]).toBe(1);
    expect(Object.isFrozen(a)).toBe(true);
    expect(Object.isFrozen(a.nics)).toBe(true);
  });

  it('equals compares generation; samePeer ignores it', () => {
    const a = new NetAddr('efa', 1, [Uint8Array.of(1)]);
    const b = new NetAddr('efa', 2, [Uint8Array.of(1)]);
    const c = new NetAddr('efa', 1, [Uint8Array.of(2)]);
    expect(a.equals(b)).toBe(false);
    expect(a.samePeer(b)).toBe(true);
    expect(a.samePeer(c)).toBe(false);
    expect(a.equals(new NetAddr('efa', 1, [Uint8Array.of(1)]))).toBe(true);
  });
});
