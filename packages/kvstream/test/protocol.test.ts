// kvstream's control messages: encodings, and decoding of bad and foreign input.
import { createLoopbackFabric, MrDesc } from '@trellis/core';
import { describe, expect, it } from 'vitest';
import {
  decode,
  encodeAbort,
  encodeAck,
  encodeCancel,
  encodeTable,
  isKvMessage,
  MsgType,
} from '../src/protocol.js';

describe('kvstream control messages', () => {
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

  it('a page table round-trips exactly', () => {
    const m = {
      id: 0x123456789abcdefn,
      imm: 0x4b560007,
      tokens: 1037,
      fingerprint: 0xdeadbeef,
      tailBytes: 4096,
      tailShards: 2,
      tag: 'req-ü-42',
      tailOffset: 8192,
      dstPoolPages: 5000,
      dstOrder: 'page-major' as const,
      dstHeadsBeforePages: false,
      kv,
      tail,
      pages: Uint32Array.of(5, 4999, 0, 17),
    };
    const bytes = encodeTable(m);
    expect(isKvMessage(bytes)).toBe(true);
    const d = decode(bytes);
    expect(d.type).toBe(MsgType.Table);
    if (d.type !== MsgType.Table) return;
    expect({ ...d, kv: d.kv.toString(), tail: d.tail.toString() }).toEqual({
      ...m,
      type: MsgType.Table,
      kv: kv.toString(),
      tail: tail.toString(),
    });
  });

  it('cancel, ack and abort round-trip', () => {
    expect(decode(encodeCancel(9n))).toEqual({ type: MsgType.Cancel, id: 9n });
    expect(decode(encodeAck(9n, 123, 1))).toEqual({ type: MsgType.Ack, id: 9n, delivered: 123, flags: 1 });
    expect(decode(encodeAbort(9n, 5, 0, 'REMOTE_ACCESS', 'bad key'))).toEqual({
      type: MsgType.Abort,
      id: 9n,
      delivered: 5,
      flags: 0,
      code: 'REMOTE_ACCESS',
      message: 'bad key',
    });
  });

  it('refuses malformed, truncated and newer-version messages with what is wrong', () => {
    const t = encodeTable({
      id: 1n,
      imm: 1,
      tokens: 1,
      fingerprint: 1,
      tailBytes: 0,
      tailShards: 1,
      tag: '',
      tailOffset: 0,
      dstPoolPages: 1,
      dstOrder: 'layer-major',
      dstHeadsBeforePages: false,
      kv,
      tail,
      pages: Uint32Array.of(0),
    });
    const msg = (b: Uint8Array) => {
      try {
        decode(b);
        return 'ok';
      } catch (e) {
        return `${(e as { code: string }).code}: ${(e as Error).message}`;
      }
    };
    expect(msg(t.subarray(0, t.length - 1))).toBe(
      `INVALID_ARGUMENT: kvstream: malformed control message: page table of ${t.length - 1} bytes, its fields say ${t.length}`,
    );
    expect(msg(new Uint8Array(8))).toBe(
      'INVALID_ARGUMENT: kvstream: malformed control message: 8 bytes, shorter than the 16-byte header',
    );
    const v2 = encodeCancel(1n);
    v2[4] = 2;
    expect(msg(v2)).toBe(
      'UNSUPPORTED: kvstream: a version 2 control message; this @trellis/kvstream speaks version 1 (upgrade both sides together)',
    );
    const bad = encodeCancel(1n);
    bad[5] = 99;
    expect(msg(bad)).toBe('INVALID_ARGUMENT: kvstream: malformed control message: unknown message type 99');
    expect(isKvMessage(new TextEncoder().encode('hello there'))).toBe(false);
  });
});
