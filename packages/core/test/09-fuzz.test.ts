// Decoders under 10^5 random and mutated inputs each: every input is accepted or refused with a
// TrellisError — never another exception, never a hang.
import { describe, expect, it } from 'vitest';
import { fuzzBytes, fuzzText } from '../src/conformance/fuzz.js';
import { MrDesc, NetAddr } from '../src/index.js';

const RUNS = 100_000;
const addrs = [
  new NetAddr('fi-shm', 7, [Uint8Array.of(1, 2, 3)]),
  new NetAddr('ib-rc', 0xffffffff, [new Uint8Array(32).fill(9), new Uint8Array(20).fill(4)]),
  new NetAddr('loopback', 1, [Uint8Array.of(0), Uint8Array.of(1), Uint8Array.of(2), Uint8Array.of(3)]),
];
const descs = [
  new MrDesc(addrs[0]!, 4096n, 1 << 20, []),
  new MrDesc(addrs[1]!, 0x7f0000000000n, 123, [
    { addr: 1n, rkey: 2n },
    { addr: (1n << 64n) - 1n, rkey: 77n },
  ]),
  new MrDesc(
    addrs[2]!,
    0n,
    0,
    [0, 1, 2, 3].map((i) => ({ addr: BigInt(i), rkey: BigInt(i * 3) })),
    true,
  ),
  // A region registered in 3 parts of 4 KiB (its descriptor carries every part's keys).
  new MrDesc(
    addrs[1]!,
    8192n,
    10_000,
    [
      { addr: 8192n, rkey: 5n },
      { addr: 8192n, rkey: 6n },
    ],
    false,
    {
      bytes: 4096,
      keys: [
        [
          { addr: 12288n, rkey: 7n },
          { addr: 12288n, rkey: 8n },
        ],
        [
          { addr: 16384n, rkey: 9n },
          { addr: 16384n, rkey: 10n },
        ],
      ],
    },
  ),
];

describe(`decoders under ${RUNS} fuzzed inputs each`, () => {
  it('NetAddr.fromBytes and NetAddr.parse', () => {
    const b = fuzzBytes(
      (x) => NetAddr.fromBytes(x),
      addrs.map((a) => a.toBytes()),
      RUNS,
      11,
    );
    expect(b.accepted + b.refused).toBe(RUNS);
    expect(b.refused).toBeGreaterThan(RUNS / 2);
    const t = fuzzText(
      (x) => NetAddr.parse(x),
      addrs.map((a) => a.toString()),
      RUNS,
      12,
    );
    expect(t.accepted + t.refused).toBe(RUNS);
    expect(Object.keys({ ...b.codes, ...t.codes }).sort()).toEqual(['DECODE_ERROR', 'UNSUPPORTED_VERSION']);
  });

  it('MrDesc.fromBytes and MrDesc.parse', () => {
    const b = fuzzBytes(
      (x) => MrDesc.fromBytes(x),
      descs.map((d) => d.toBytes()),
      RUNS,
      13,
    );
    expect(b.accepted + b.refused).toBe(RUNS);
    expect(b.refused).toBeGreaterThan(RUNS / 2);
    const t = fuzzText(
      (x) => MrDesc.parse(x),
      descs.map((d) => d.toString()),
      RUNS,
      14,
    );
    expect(t.accepted + t.refused).toBe(RUNS);
    expect(Object.keys({ ...b.codes, ...t.codes }).sort()).toEqual(['DECODE_ERROR', 'UNSUPPORTED_VERSION']);
  });

  it('an accepted mutation is a well-formed value: it re-encodes to bytes that decode to the same', () => {
    let checked = 0;
    fuzzBytes(
      (x) => {
        const d = MrDesc.fromBytes(x);
        expect(MrDesc.fromBytes(d.toBytes()).equals(d)).toBe(true);
        checked++;
      },
      descs.map((d) => d.toBytes()),
      20_000,
      15,
    );
    expect(checked).toBeGreaterThan(0);
  });
});
