// MrDesc: construction checks, binary and text encodings, and decoding of bad input.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_NICS, MrDesc, NetAddr, TrellisError } from '../src/index.js';

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const descArb = fc
  .tuple(
    fc.integer({ min: 1, max: MAX_NICS }),
    fc.boolean(),
    u64,
    fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
    fc.integer({ min: 0, max: 0xffff_ffff }),
    fc.boolean(),
  )
  .chain(([nics, remote, base, length, gen, staged]) =>
    fc
      .tuple(
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 40 }), { minLength: nics, maxLength: nics }),
        fc.array(fc.record({ addr: u64, rkey: u64 }), { minLength: nics, maxLength: nics }),
      )
      .map(
        ([addrs, keys]) =>
          new MrDesc(new NetAddr('verbs', gen, addrs), base, length, remote ? keys : [], staged),
      ),
  );

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return e instanceof TrellisError ? e.code : `non-trellis: ${String(e)}`;
  }
  return 'no error';
}

describe('MrDesc', () => {
  it('carries the staged flag in bit 7 of the key-count byte (bit 6: parts); other flag bits are refused', () => {
    const owner = new NetAddr('verbs', 1, [Uint8Array.of(1, 2)]);
    const plain = new MrDesc(owner, 4096n, 100, [{ addr: 1n, rkey: 2n }]);
    const staged = new MrDesc(owner, 4096n, 100, [{ addr: 1n, rkey: 2n }], true);
    expect([plain.staged, staged.staged, plain.equals(staged)]).toEqual([false, true, false]);
    const b = staged.toBytes();
    const at = b.length - 17; // the key-count byte precedes one (addr, rkey) pair
    expect(b[at]).toBe(0x81);
    expect(plain.toBytes()[at]).toBe(0x01);
    const bad = b.slice();
    bad[at] = 0x11;
    expect(() => MrDesc.fromBytes(bad)).toThrow(/^MrDesc: unknown flags 0x10 in the key count byte$/);
    bad[at] = 0x09;
    expect(() => MrDesc.fromBytes(bad)).toThrow(/^MrDesc: unknown flags 0x8 in the key count byte$/);
    // Bits 6 and 5 announce parts and the same-host lane: without the fields that follow, the
    // input is truncated.
    bad[at] = 0x41;
    expect(() => MrDesc.fromBytes(bad)).toThrow(/^MrDesc: truncated input/);
    bad[at] = 0x21;
    expect(() => MrDesc.fromBytes(bad)).toThrow(/^MrDesc: truncated input: reading ipc host id/);
  });

  it("carries a CUDA region's same-host lane (bit 5): host id, device, IPC handle, offset", () => {
    const owner = new NetAddr('fi-shm', 1, [Uint8Array.of(1, 2)]);
    const ipc = {
      host: Uint8Array.from({ length: 16 }, (_, i) => i + 1),
      device: 3,
      handle: Uint8Array.from({ length: 64 }, (_, i) => 255 - i),
      offset: 1n << 40n,
    };
    const d = new MrDesc(owner, 4096n, 100, [{ addr: 1n, rkey: 2n }], true, undefined, ipc);
    const b = d.toBytes();
    const at = b.length - 17 - (16 + 2 + 64 + 8);
    expect(b[at]).toBe(0x80 | 0x20 | 1);
    for (const back of [MrDesc.fromBytes(b), MrDesc.parse(d.toString())]) {
      expect(back.equals(d)).toBe(true);
      expect(back.staged).toBe(true);
      expect(back.ipc).toEqual(ipc);
    }
    // The descriptor holds its own copies: the caller's arrays can change afterwards.
    ipc.handle[0] = 0;
    expect(d.ipc!.handle[0]).toBe(255);
    expect(new MrDesc(owner, 4096n, 100, []).ipc).toBeUndefined();
    const bad = (over: object) => () =>
      new MrDesc(owner, 4096n, 100, [], false, undefined, { ...ipc, ...over } as typeof ipc);
    const msg =
      /^MrDesc: ipc needs a 16-byte host id, a device 0\.\.65535, a 64-byte handle and a u64 offset$/;
    expect(bad({ host: new Uint8Array(15) })).toThrow(msg);
    expect(bad({ handle: new Uint8Array(63) })).toThrow(msg);
    expect(bad({ device: -1 })).toThrow(msg);
    expect(bad({ device: 65536 })).toThrow(msg);
    expect(bad({ offset: -1n })).toThrow(msg);
    expect(() => new MrDesc(owner, 0n, 200, [], false, { bytes: 100, keys: [[]] }, ipc)).toThrow(
      /^MrDesc: a region in parts has no ipc lane$/,
    );
  });

  it('round-trips through bytes and text (property)', () => {
    fc.assert(
      fc.property(descArb, (d) => {
        for (const back of [MrDesc.fromBytes(d.toBytes()), MrDesc.parse(d.toString())]) {
          expect(back.equals(d)).toBe(true);
          expect(back.owner.equals(d.owner)).toBe(true);
          expect(back.base).toBe(d.base);
          expect(back.length).toBe(d.length);
          expect(back.staged).toBe(d.staged);
          expect(back.nics).toEqual(d.nics);
          expect(back.remote).toBe(d.remote);
          expect(back.kind).toBe('verbs');
        }
      }),
      { numRuns: 300 },
    );
  });

  it('every truncation is a DECODE_ERROR; random bytes only ever give TrellisErrors (property)', () => {
    fc.assert(
      fc.property(descArb, fc.nat(), (d, cut) => {
        const b = d.toBytes();
        expect(code(() => MrDesc.fromBytes(b.subarray(0, cut % b.length)))).toBe('DECODE_ERROR');
      }),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), (b) => {
        expect(['DECODE_ERROR', 'UNSUPPORTED_VERSION', 'no error']).toContain(
          code(() => MrDesc.fromBytes(b)),
        );
      }),
      { numRuns: 500 },
    );
  });

  it('single-byte mutations never crash the decoder (property)', () => {
    fc.assert(
      fc.property(descArb, fc.nat(), fc.integer({ min: 0, max: 255 }), (d, at, v) => {
        const b = d.toBytes();
        b[at % b.length] = v;
        expect(['DECODE_ERROR', 'UNSUPPORTED_VERSION', 'no error']).toContain(
          code(() => MrDesc.fromBytes(b)),
        );
      }),
      { numRuns: 1000 },
    );
  });

  it('rejects a length beyond 2^53, a key count that does not match the owner, and versions it does not read', () => {
    const owner = new NetAddr('efa', 1, [Uint8Array.of(1), Uint8Array.of(2)]);
    const d = new MrDesc(owner, 4096n, 100, [
      { addr: 1n, rkey: 2n },
      { addr: 3n, rkey: 4n },
    ]);
    const b = d.toBytes();
    const ownerLen = owner.toBytes().length;
    const lenAt = 3 + ownerLen + 8;
    const big = b.slice();
    new DataView(big.buffer).setBigUint64(lenAt, 1n << 60n, true);
    expect(() => MrDesc.fromBytes(big)).toThrow(/exceeds 2\^53-1/);
    const wrongCount = b.slice();
    wrongCount[lenAt + 8] = 1;
    expect(code(() => MrDesc.fromBytes(wrongCount))).toBe('DECODE_ERROR');
    const v2 = b.slice();
    v2[2] = 2;
    expect(code(() => MrDesc.fromBytes(v2))).toBe('UNSUPPORTED_VERSION');
    expect(code(() => MrDesc.parse('tmd2:AAAA'))).toBe('UNSUPPORTED_VERSION');
    expect(code(() => MrDesc.parse('nonsense'))).toBe('DECODE_ERROR');
    expect(code(() => MrDesc.parse(`tmd1:${'%'.repeat(8)}`))).toBe('DECODE_ERROR');
    // A NetAddr's bytes are not a descriptor.
    expect(() => MrDesc.fromBytes(owner.toBytes())).toThrow(/bad magic/);
  });

  it('the constructor validates its fields', () => {
    const owner = new NetAddr('efa', 1, [Uint8Array.of(1)]);
    expect(code(() => new MrDesc(owner, -1n, 1, []))).toBe('INVALID_ARGUMENT');
    expect(code(() => new MrDesc(owner, 1n << 64n, 1, []))).toBe('INVALID_ARGUMENT');
    expect(code(() => new MrDesc(owner, 0n, 1.5, []))).toBe('INVALID_ARGUMENT');
    expect(code(() => new MrDesc(owner, 0n, 2 ** 53, []))).toBe('INVALID_ARGUMENT');
    expect(
      code(
        () =>
          new MrDesc(owner, 0n, 1, [
            { addr: 0n, rkey: 0n },
            { addr: 0n, rkey: 0n },
          ]),
      ),
    ).toBe('INVALID_ARGUMENT');
    expect(code(() => new MrDesc(owner, 0n, 1, [{ addr: 0n, rkey: -1n }]))).toBe('INVALID_ARGUMENT');
    expect(code(() => new MrDesc('x' as never, 0n, 1, []))).toBe('INVALID_ARGUMENT');
  });
});
