// The kvstream control messages (two-sided sends between decode and prefill), in a versioned,
// compact little-endian binary form:
//
//   header   u32 magic 'KVS1' | u8 version | u8 type | u16 reserved | u64 request id
//   TABLE    decode → prefill: u32 imm | u32 tokens | u32 layout fingerprint | u32 tail bytes (opaque)
//            | u16 tail shards | u16 tag length | u32 page count | u32 tail offset
//            | u16 kv desc length | u16 tail desc length | u32 decode pool pages | u8 decode order
//            | u8 heads-before-pages | u16 reserved | tag utf-8 | kv MrDesc | tail MrDesc | u32 pages[]
//   CANCEL   decode → prefill: (header only)
//   ACK      prefill → decode: u32 delivered | u8 flags (1: uncertain, 2: unknown request)
//   ABORT    prefill → decode: u32 delivered | u8 flags | u16 code length | u16 message length | code | message
//
// A message that is not kvstream's (wrong magic) is left to the caller; one of a newer version is
// refused with a clear error.
import {
  MrDesc,
  type RecvMessage,
  type TransferEngine,
  TrellisError,
  type TrellisErrorCode,
} from '@trellis/core';

/**
 * A request's tag as error messages quote it: whole up to 64 characters, else its first 64 and
 * its length (tags may run to tens of kilobytes).
 */
export function quoteTag(tag: string): string {
  return tag.length <= 64 ? `'${tag}'` : `'${tag.slice(0, 64)}…' (${tag.length} characters)`;
}

export const MAGIC = 0x3153564b; // "KVS1"
export const VERSION = 1;

export const MsgType = { Table: 1, Cancel: 2, Ack: 3, Abort: 4 } as const;
export type MsgType = (typeof MsgType)[keyof typeof MsgType];

export const ACK_UNCERTAIN = 1;
export const ACK_UNKNOWN = 2;

export interface TableMsg {
  type: typeof MsgType.Table;
  id: bigint;
  /** The decode side's pool size and order, for the destination offsets. */
  dstPoolPages: number;
  dstOrder: 'layer-major' | 'page-major';
  dstHeadsBeforePages: boolean;
  imm: number;
  tokens: number;
  fingerprint: number;
  tailBytes: number;
  tailShards: number;
  tag: string;
  tailOffset: number;
  kv: MrDesc;
  tail: MrDesc;
  pages: Uint32Array;
}
export interface CancelMsg {
  type: typeof MsgType.Cancel;
  id: bigint;
}
export interface AckMsg {
  type: typeof MsgType.Ack;
  id: bigint;
  /** Immediates the prefill side's completed writes for this request produced at decode. */
  delivered: number;
  flags: number;
}
export interface AbortMsg {
  type: typeof MsgType.Abort;
  id: bigint;
  delivered: number;
  flags: number;
  code: TrellisErrorCode;
  message: string;
}
export type KvMsg = TableMsg | CancelMsg | AckMsg | AbortMsg;

const HEADER = 16;
const enc = new TextEncoder();
const fatalDecoder = new TextDecoder('utf-8', { fatal: true });
/** Strict UTF-8: a peer's text that is not UTF-8 is a malformed message, not an exception. */
const dec = {
  decode(b: Uint8Array): string {
    try {
      return fatalDecoder.decode(b);
    } catch {
      return malformed('a text field is not valid UTF-8');
    }
  },
};

function header(buf: Uint8Array, type: MsgType, id: bigint): DataView {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  v.setUint32(0, MAGIC, true);
  v.setUint8(4, VERSION);
  v.setUint8(5, type);
  v.setBigUint64(8, id, true);
  return v;
}

/**
 * The bytes {@link encodeTable} makes of a table with this tag (in UTF-8 bytes), descriptors
 * whose encodings take `descBytes` together, and this many pages: checked before a request takes
 * any page or slot.
 */
export function tableBytes(tagBytes: number, descBytes: number, pages: number): number {
  return HEADER + 40 + tagBytes + descBytes + 4 * pages;
}

export function encodeTable(m: Omit<TableMsg, 'type'>): Uint8Array {
  const tag = enc.encode(m.tag);
  const kv = m.kv.toBytes();
  const tail = m.tail.toBytes();
  if (tag.length > 0xffff)
    throw new TrellisError('INVALID_ARGUMENT', `kvstream: tag is ${tag.length} bytes (at most 65535)`);
  const buf = new Uint8Array(tableBytes(tag.length, kv.length + tail.length, m.pages.length));
  const v = header(buf, MsgType.Table, m.id);
  v.setUint32(16, m.imm, true);
  v.setUint32(20, m.tokens, true);
  v.setUint32(24, m.fingerprint, true);
  v.setUint32(28, m.tailBytes, true);
  v.setUint16(32, m.tailShards, true);
  v.setUint16(34, tag.length, true);
  v.setUint32(36, m.pages.length, true);
  v.setUint32(40, m.tailOffset, true);
  v.setUint16(44, kv.length, true);
  v.setUint16(46, tail.length, true);
  v.setUint32(48, m.dstPoolPages, true);
  v.setUint8(52, m.dstOrder === 'page-major' ? 1 : 0);
  v.setUint8(53, m.dstHeadsBeforePages ? 1 : 0);
  let at = HEADER + 40;
  buf.set(tag, at);
  at += tag.length;
  buf.set(kv, at);
  at += kv.length;
  buf.set(tail, at);
  at += tail.length;
  for (let i = 0; i < m.pages.length; i++, at += 4) v.setUint32(at, m.pages[i]!, true);
  return buf;
}

export function encodeCancel(id: bigint): Uint8Array {
  const buf = new Uint8Array(HEADER);
  header(buf, MsgType.Cancel, id);
  return buf;
}

export function encodeAck(id: bigint, delivered: number, flags: number): Uint8Array {
  const buf = new Uint8Array(HEADER + 8);
  const v = header(buf, MsgType.Ack, id);
  v.setUint32(16, delivered, true);
  v.setUint8(20, flags);
  return buf;
}

export function encodeAbort(
  id: bigint,
  delivered: number,
  flags: number,
  code: TrellisErrorCode,
  message: string,
): Uint8Array {
  const c = enc.encode(code);
  const m = enc.encode(message.slice(0, 4000));
  const buf = new Uint8Array(HEADER + 12 + c.length + m.length);
  const v = header(buf, MsgType.Abort, id);
  v.setUint32(16, delivered, true);
  v.setUint8(20, flags);
  v.setUint16(22, c.length, true);
  v.setUint16(24, m.length, true);
  buf.set(c, HEADER + 12);
  buf.set(m, HEADER + 12 + c.length);
  return buf;
}

/** True when `data` starts with kvstream's magic (whatever its version). */
export function isKvMessage(data: Uint8Array): boolean {
  return data.length >= 4 && new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true) === MAGIC;
}

function malformed(why: string): never {
  throw new TrellisError('INVALID_ARGUMENT', `kvstream: malformed control message: ${why}`);
}

/** Decode a kvstream message; throws a TrellisError saying what is wrong with it. */
export function decode(data: Uint8Array): KvMsg {
  if (data.length < HEADER) malformed(`${data.length} bytes, shorter than the ${HEADER}-byte header`);
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (v.getUint32(0, true) !== MAGIC) malformed('not a kvstream message (bad magic)');
  const version = v.getUint8(4);
  if (version !== VERSION)
    throw new TrellisError(
      'UNSUPPORTED',
      `kvstream: a version ${version} control message; this @trellis/kvstream speaks version ${VERSION} (upgrade both sides together)`,
    );
  const type = v.getUint8(5);
  const id = v.getBigUint64(8, true);
  switch (type) {
    case MsgType.Table: {
      if (data.length < HEADER + 40) malformed('truncated page table');
      const tagLen = v.getUint16(34, true);
      const n = v.getUint32(36, true);
      const kvLen = v.getUint16(44, true);
      const tailLen = v.getUint16(46, true);
      const want = HEADER + 40 + tagLen + kvLen + tailLen + 4 * n;
      if (data.length !== want) malformed(`page table of ${data.length} bytes, its fields say ${want}`);
      let at = HEADER + 40;
      const tag = dec.decode(data.subarray(at, at + tagLen));
      at += tagLen;
      const kv = MrDesc.fromBytes(data.subarray(at, at + kvLen));
      at += kvLen;
      const tail = MrDesc.fromBytes(data.subarray(at, at + tailLen));
      at += tailLen;
      const pages = new Uint32Array(n);
      for (let i = 0; i < n; i++, at += 4) pages[i] = v.getUint32(at, true);
      return {
        type: MsgType.Table,
        id,
        imm: v.getUint32(16, true),
        tokens: v.getUint32(20, true),
        fingerprint: v.getUint32(24, true),
        tailBytes: v.getUint32(28, true),
        tailShards: v.getUint16(32, true),
        tag,
        tailOffset: v.getUint32(40, true),
        dstPoolPages: v.getUint32(48, true),
        dstOrder: v.getUint8(52) === 1 ? 'page-major' : 'layer-major',
        dstHeadsBeforePages: v.getUint8(53) === 1,
        kv,
        tail,
        pages,
      };
    }
    case MsgType.Cancel:
      if (data.length !== HEADER) malformed('cancel with a body');
      return { type: MsgType.Cancel, id };
    case MsgType.Ack:
      if (data.length !== HEADER + 8) malformed('ack of the wrong size');
      return { type: MsgType.Ack, id, delivered: v.getUint32(16, true), flags: v.getUint8(20) };
    case MsgType.Abort: {
      if (data.length < HEADER + 12) malformed('truncated abort');
      const cl = v.getUint16(22, true);
      const ml = v.getUint16(24, true);
      if (data.length !== HEADER + 12 + cl + ml) malformed('abort of the wrong size');
      const code = dec.decode(data.subarray(HEADER + 12, HEADER + 12 + cl)) as TrellisErrorCode;
      const message = dec.decode(data.subarray(HEADER + 12 + cl));
      return {
        type: MsgType.Abort,
        id,
        delivered: v.getUint32(16, true),
        flags: v.getUint8(20),
        code,
        message,
      };
    }
    default:
      return malformed(`unknown message type ${type}`);
  }
}

/** Post a receive pool on `engine` for kvstream's messages (recv: 'own'), until `signal` aborts. */
export function receiveOwn(
  engine: TransferEngine,
  signal: AbortSignal,
  onMessage: (m: RecvMessage) => void,
): void {
  void engine
    .submitRecvs({ maxBytes: engine.limits.maxMessageBytes, count: 32, signal }, onMessage)
    .catch(() => {});
}

/** Throw INVALID_ARGUMENT `${where}: ${name} must be an integer in lo..hi` unless `v` is one. */
export function checkInt(where: string, name: string, v: unknown, lo: number, hi: number): void {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < lo || v > hi)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${where}: ${name} must be an integer in ${lo}..${hi}, got ${typeof v === 'string' ? JSON.stringify(v) : String(v)}`,
    );
}

/** A `create`'s options: an object whose `engine` is a TransferEngine (INVALID_ARGUMENT otherwise). */
/**
 * Refuse a key of `obj` that is not one of `fields` (a typo or another call's option would
 * otherwise be ignored in silence), naming it and the fields.
 */
export function checkFields(where: string, obj: object, fields: readonly string[], what: string): void {
  for (const k in obj)
    if (!fields.includes(k))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `${where}: ${JSON.stringify(k)} is not ${what} (they are ${fields.join(', ')})`,
      );
}

/** `KvStreamSender.create`'s options. */
export const SENDER_OPTIONS = [
  'engine',
  'layout',
  'region',
  'gpu',
  'maxTailBytes',
  'maxRequests',
  'probeImm',
  'probeMs',
  'unboundTimeoutMs',
  'recv',
] as const;
/** `KvStreamReceiver.create`'s options. */
export const RECEIVER_OPTIONS = [
  'engine',
  'layout',
  'region',
  'gpu',
  'maxTailBytes',
  'maxRequests',
  'immBase',
  'probeMs',
  'deadPeerGraceMs',
  'ackTimeoutMs',
  'quarantineMs',
  'recv',
] as const;

export function checkCreateOptions(where: string, opts: unknown, fields: readonly string[]): void {
  if (opts === null || typeof opts !== 'object')
    throw new TrellisError('INVALID_ARGUMENT', `${where}: pass an options object {engine, layout, ...}`);
  checkFields(where, opts, fields, 'an option');
  const engine = (opts as { engine?: unknown }).engine;
  if (
    engine === null ||
    typeof engine !== 'object' ||
    typeof (engine as { registerMemory?: unknown }).registerMemory !== 'function'
  )
    throw new TrellisError('INVALID_ARGUMENT', `${where}: engine must be a TransferEngine (createEngine())`);
  const recv = (opts as { recv?: unknown }).recv;
  if (recv !== undefined && recv !== 'own' && recv !== 'external')
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${where}: recv must be 'own' or 'external', got ${typeof recv === 'string' ? `'${recv}'` : String(recv)}`,
    );
}

/**
 * A region given to create: an `MrHandle` of this engine, still registered. Another engine's
 * region would take the peer's writes where this side never looks (or be refused at the first
 * write, mid-stream).
 */
export function checkRegion(where: string, engine: TransferEngine, region: unknown): void {
  const r = region as { desc?: { owner?: unknown }; registered?: unknown; length?: unknown } | null;
  if (
    r === null ||
    typeof r !== 'object' ||
    typeof r.desc?.owner !== 'object' ||
    typeof r.length !== 'number'
  )
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${where}: region must be an MrHandle (engine.registerMemory())`,
    );
  if (String(r.desc.owner) !== engine.address.toString())
    throw new TrellisError(
      'INVALID_DESCRIPTOR',
      `${where}: region is registered on another engine (${String(r.desc.owner)}); register it on this engine (${engine.address})`,
    );
  if (r.registered === false)
    throw new TrellisError('INVALID_DESCRIPTOR', `${where}: region was unregistered`);
}
