// The kvstream control-message decoder under 10^5 random and mutated messages: each is decoded or
// refused with a TrellisError — a peer's bytes never throw anything else.
import { createLoopbackFabric, MrDesc } from '@trellis/core';
import { fuzzBytes } from '@trellis/core/conformance';
import { describe, expect, it } from 'vitest';
import { decode, encodeAbort, encodeAck, encodeCancel, encodeTable } from '../src/protocol.js';

describe('kvstream decode under 100000 fuzzed messages', () => {
  it('accepts or refuses with a TrellisError', async () => {
    const fabric = createLoopbackFabric({ nics: 2 });
    const e = fabric.createEngine();
    const kv = new MrDesc(e.address, 4096n, 1 << 20, [
      { addr: 4096n, rkey: 7n },
      { addr: 4096n, rkey: 9n },
    ]);
    const tail = new MrDesc(e.address, 65536n, 8192, [
      { addr: 65536n, rkey: 11n },
      { addr: 65536n, rkey: 13n },
    ]);
    const samples = [
      encodeTable({
        id: 0x123456789abcdefn,
        imm: 0x4b560007,
        tokens: 1037,
        fingerprint: 0xdeadbeef,
        tailBytes: 4096,
        tailShards: 2,
        tag: 'req-ü-42',
        tailOffset: 8192,
        dstPoolPages: 5000,
        dstOrder: 'page-major',
        dstHeadsBeforePages: false,
        kv,
        tail,
        pages: Uint32Array.of(5, 4999, 0, 17),
      }),
      encodeCancel(9n),
      encodeAck(9n, 123, 1),
      encodeAbort(9n, 5, 0, 'REMOTE_ACCESS', 'bad key'),
    ];
    const t = fuzzBytes(decode, samples, 100_000, 21);
    expect(t.accepted + t.refused).toBe(100_000);
    expect(t.refused).toBeGreaterThan(50_000);
    expect(t.accepted).toBeGreaterThan(0);
    await fabric.close();
  });
});
