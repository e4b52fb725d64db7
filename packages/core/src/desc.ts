import { asBytes, MAX_NICS, NetAddr } from './addr.js';
import { ByteReader, ByteWriter, fromBase64Url, toBase64Url } from './codec.js';
import { TrellisError } from './errors.js';

const DESC_MAGIC = [0x54, 0x4d] as const; // "TM"
const DESC_VERSION = 1;
const U64_MAX = (1n << 64n) - 1n;
const STAGED_FLAG = 0x80;

/** Where NIC `i` of the owner exposes the region: the RMA address of offset 0 and the remote key. */
export interface NicKey {
  readonly addr: bigint;
  readonly rkey: bigint;
}

/**
 * A serialisable remote memory descriptor: the owner's address, the region's base address and
 * length, and one (address, rkey) per NIC of the owner. Holding a descriptor is the capability to
 * write into the region, so hand it only to peers that should.
 *
 * A region registered without `{remote: true}` has a descriptor with no keys; using it as a write
 * target fails with `INVALID_DESCRIPTOR`.
 */
export class MrDesc {
  /** The engine that owns the region. */
  readonly owner: NetAddr;
  /** The region's base virtual address in the owner (informational; RMA uses `nics[i].addr`). */
  readonly base: bigint;
  /** Length in bytes. */
  readonly length: number;
  /** One key per owner NIC, or none for a local-only region. */
  readonly nics: readonly NicKey[];
  /**
   * The region is GPU memory its owner stages through a pinned host mirror (no GPUDirect RDMA on
   * its NICs): writers land bytes in the mirror, and the owner copies them to the device before it
   * counts the immediate. Writers' engines handle this; callers see only a slower path.
   */
  readonly staged: boolean;

  constructor(owner: NetAddr, base: bigint, length: number, nics: readonly NicKey[], staged = false) {
    if (!(owner instanceof NetAddr))
      throw new TrellisError('INVALID_ARGUMENT', 'MrDesc: owner must be a NetAddr');
    if (typeof base !== 'bigint' || base < 0n || base > U64_MAX) {
      throw new TrellisError('INVALID_ARGUMENT', 'MrDesc: base must be a u64 bigint');
    }
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MrDesc: length ${length} must be a non-negative safe integer`,
      );
    }
    if (nics.length !== 0 && nics.length !== owner.nics.length) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MrDesc: ${nics.length} NIC keys for an owner with ${owner.nics.length} NICs (expected ${owner.nics.length}, or 0 for a local-only region)`,
      );
    }
    for (const k of nics) {
      if (
        typeof k.addr !== 'bigint' ||
        typeof k.rkey !== 'bigint' ||
        k.addr < 0n ||
        k.rkey < 0n ||
        k.addr > U64_MAX ||
        k.rkey > U64_MAX
      ) {
        throw new TrellisError('INVALID_ARGUMENT', 'MrDesc: NIC addr and rkey must be u64 bigints');
      }
    }
    this.owner = owner;
    this.base = base;
    this.length = length;
    this.nics = Object.freeze(nics.map((k) => Object.freeze({ addr: k.addr, rkey: k.rkey })));
    this.staged = staged === true;
    Object.freeze(this);
  }

  /** The backend kind of the owner. */
  get kind(): string {
    return this.owner.kind;
  }

  /** True when the region accepts remote writes. */
  get remote(): boolean {
    return this.nics.length > 0;
  }

  /**
   * Versioned binary form: magic "TM", version, owner NetAddr, base, length, one byte of key count
   * (bits 0–2) and flags (bit 7: staged), keys.
   */
  toBytes(): Uint8Array {
    const w = new ByteWriter().u8(DESC_MAGIC[0]).u8(DESC_MAGIC[1]).u8(DESC_VERSION);
    w.bytes(this.owner.toBytes())
      .u64(this.base)
      .u64(BigInt(this.length))
      .u8(this.nics.length | (this.staged ? STAGED_FLAG : 0));
    for (const k of this.nics) w.u64(k.addr).u64(k.rkey);
    return w.finish();
  }

  /** Decode {@link MrDesc.toBytes} output. Throws `DECODE_ERROR` or `UNSUPPORTED_VERSION`. */
  static fromBytes(bytes: Uint8Array): MrDesc {
    const r = new ByteReader(asBytes(bytes, 'MrDesc'), 'MrDesc');
    r.header(DESC_MAGIC, DESC_VERSION);
    const owner = NetAddr.read(r);
    const base = r.u64('base');
    const length = r.u64('length');
    if (length > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new TrellisError('DECODE_ERROR', `MrDesc: length ${length} exceeds 2^53-1`);
    }
    const countAndFlags = r.u8('NIC key count');
    if (countAndFlags & ~(STAGED_FLAG | 0x7))
      throw new TrellisError(
        'DECODE_ERROR',
        `MrDesc: unknown flags 0x${(countAndFlags & 0x78).toString(16)} in the key count byte`,
      );
    const count = countAndFlags & 0x7;
    if (count !== 0 && count !== owner.nics.length) {
      throw new TrellisError(
        'DECODE_ERROR',
        `MrDesc: ${count} NIC keys for an owner with ${owner.nics.length} NICs`,
      );
    }
    if (count > MAX_NICS)
      throw new TrellisError('DECODE_ERROR', `MrDesc: NIC key count ${count} > ${MAX_NICS}`);
    const nics: NicKey[] = [];
    for (let i = 0; i < count; i++) nics.push({ addr: r.u64(`NIC ${i} addr`), rkey: r.u64(`NIC ${i} rkey`) });
    r.end();
    return new MrDesc(owner, base, Number(length), nics, (countAndFlags & STAGED_FLAG) !== 0);
  }

  /** Text form `tmd1:<base64url of toBytes()>`. */
  toString(): string {
    return `tmd${DESC_VERSION}:${toBase64Url(this.toBytes())}`;
  }

  /** Parse {@link MrDesc.toString} output. */
  static parse(text: string): MrDesc {
    if (typeof text !== 'string') throw new TrellisError('DECODE_ERROR', 'MrDesc.parse: expected a string');
    const m = /^tmd(\d+):(.*)$/s.exec(text);
    if (!m) throw new TrellisError('DECODE_ERROR', 'MrDesc.parse: text is not of the form tmd1:<base64url>');
    if (Number(m[1]) !== DESC_VERSION) {
      throw new TrellisError(
        'UNSUPPORTED_VERSION',
        `MrDesc.parse: text version tmd${m[1]} is not supported (expected tmd${DESC_VERSION})`,
      );
    }
    return MrDesc.fromBytes(fromBase64Url(m[2]!, 'MrDesc'));
  }

  equals(other: MrDesc): boolean {
    return other instanceof MrDesc && this.toString() === other.toString();
  }

  toJSON(): string {
    return this.toString();
  }
}
