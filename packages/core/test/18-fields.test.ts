// A key that is not a field of its request is refused before anything is posted: silently ignored,
// it would do something else than the caller meant (`nic` on a single write does not pin it;
// `timeout` is no deadline).
import { describe, expect, it } from 'vitest';
import { rejects } from '../src/conformance/index.js';
import { createLoopbackFabric } from '../src/index.js';

describe('request fields', async () => {
  const f = createLoopbackFabric({ nics: 2 });
  const a = f.createEngine();
  const b = f.createEngine();
  const src = await a.registerMemory(1 << 16);
  const dst = await b.registerMemory(1 << 16, { remote: true });
  const group = a.addPeerGroup([b.address]);

  it('each submit refuses a key that is not one of its fields, naming the key and the fields', async () => {
    const e = await rejects(
      a.submitSingleWrite({ src, length: 4096, dst: dst.desc, nic: 1 } as never),
      'INVALID_ARGUMENT',
      'nic on a single write',
    );
    expect(e.message).toBe(
      'submitSingleWrite: "nic" is not a field of a single write request (its fields: signal, timeoutMs, src, srcOffset, length, dst, dstOffset, imm, shards)',
    );
    const cases: [Promise<unknown>, RegExp][] = [
      [
        a.submitSingleWrite({ src, length: 8, dst: dst.desc, timeout: 5 } as never),
        /"timeout" is not a field of a single write request/,
      ],
      [
        a.submitPagedWrites({
          src,
          dst: dst.desc,
          srcPages: new Uint32Array([0]),
          dstPages: new Uint32Array([0]),
          srcStride: 8,
          dstStride: 8,
          pageBytes: 8,
          shards: 2,
        } as never),
        /submitPagedWrites: "shards" is not a field of a paged writes request/,
      ],
      [
        a.submitScatter({
          src,
          targets: [{ dst: dst.desc, srcOffset: 0, dstOffset: 0, length: 8 }],
          nic: 0,
        } as never),
        /submitScatter: "nic" is not a field of a scatter request/,
      ],
      [
        a.submitScatter({
          src,
          targets: [{ dst: dst.desc, srcOffset: 0, dstOffset: 0, length: 8, imm: 3 }],
        } as never),
        /"imm" is not a field of a scatter target \(targets\[0\]\) \(its fields: dst, srcOffset, dstOffset, length\)/,
      ],
      [
        a.submitBarrier({ group, imm: 1, nic: 1 } as never),
        /submitBarrier: "nic" is not a field of a barrier request/,
      ],
      [
        a.submitImm({ dst: b.address, imm: 1, shards: 2 } as never),
        /submitImm: "shards" is not a field of an immediate request/,
      ],
      [
        a.submitBatch([{ kind: 'imm', dst: b.address, imm: 1 }], { merge: false } as never),
        /submitBatch: "merge" is not a field of the batch options \(opts\) \(its fields: mergeWrites, signal, timeoutMs\)/,
      ],
      [
        a.submitBatch([
          { kind: 'imm', dst: b.address, imm: 1 },
          { kind: 'single', src, length: 8, dst: dst.desc, nic: 1 } as never,
        ]),
        /submitBatch: requests\[1\] \(single\): "nic" is not a field of a single write request/,
      ],
    ];
    for (const [p, re] of cases) {
      const err = await rejects(p, 'INVALID_ARGUMENT', re.source);
      expect(err.message).toMatch(re);
    }
    expect(() => a.prepareWrites({ src, dst: dst.desc, nic: 1 } as never)).toThrow(
      /prepareWrites: "nic" is not a field of a prepared writes request/,
    );
    expect(() => a.expectedImms({ kind: 'single', src, length: 8, dst: dst.desc, imms: 1 } as never)).toThrow(
      /expectedImms: "imms" is not a field of a single write request/,
    );
    // Options of the other calls, and a kind or routing that is not the call's.
    const more: [Promise<unknown>, RegExp][] = [
      [
        a.submitSingleWrite({ kind: 'paged', src, length: 8, dst: dst.desc } as never),
        /submitSingleWrite: kind is "paged", but this call takes a "single" request/,
      ],
      [
        a.submitScatter({
          src,
          targets: [{ dst: dst.desc, srcOffset: 0, dstOffset: 0, length: 8 }],
          routing: { nic: 1, x: 1 },
        } as never),
        /submitScatter: "x" is not a field of routing/,
      ],
      [
        a.submitSend(b.address, new Uint8Array(4), { timeout: 5 } as never),
        /submitSend: "timeout" is not a field of its options/,
      ],
      [
        a.registerMemory(64, { remot: true } as never),
        /registerMemory: "remot" is not a field of its options/,
      ],
      [a.immCounter(1).wait(1, { timeout: 5 } as never), /wait: "timeout" is not a field of its options/],
      [a.quiesce(b.address, { timeout: 5 } as never), /quiesce: "timeout" is not a field of its options/],
      [
        b.submitRecvs({ maxbytes: 64, count: 1 } as never, () => {}),
        /submitRecvs: "maxbytes" is not a field of its options \(its fields: maxBytes, count, signal, onError\)/,
      ],
    ];
    for (const [p, re] of more) {
      const err = await rejects(p, 'INVALID_ARGUMENT', re.source);
      expect(err.message).toMatch(re);
    }
    const prepared = a.prepareWrites({ src, dst: dst.desc, imm: 1 });
    const pe = await rejects(prepared.post([0, 0, 8], { timeout: 10 } as never), 'INVALID_ARGUMENT', 'post');
    expect(pe.message).toMatch(
      /"timeout" is not a field of its options \(its fields: count, imm, signal, timeoutMs\)/,
    );
    // Nothing was posted, nothing counted.
    await f.idle();
    expect(a.stats().ops.completed + a.stats().ops.failed).toBe(0);
    expect(b.immCounter(1).total).toBe(0);
  });

  it('`kind` and the op options are fields of every request; a batch checks the first request of each kind', async () => {
    await a.submitSingleWrite({ kind: 'single', src, length: 8, dst: dst.desc, timeoutMs: 5000 } as never);
    await a.submitImm({ kind: 'imm', dst: b.address, imm: 2, signal: new AbortController().signal } as never);
    expect(b.immCounter(2).total).toBe(1);
    const r = await a.submitBatch(
      [{ kind: 'imm', dst: b.address, imm: 3 }, { kind: 'imm', dst: b.address, imm: 3, extra: 1 } as never],
      { mergeWrites: false },
    );
    expect(r.failed).toBe(0);
    expect(b.immCounter(3).total).toBe(2);
  });
});
