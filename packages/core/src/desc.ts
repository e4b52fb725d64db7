// MrDesc: the descriptor of a registered region (owner, address, length, a key per NIC, GPU and
// same-host facts) and its versioned binary/text encoding. Pure data; no I/O.
import { asBytes, MAX_NICS, NetAddr } from './addr.js';
import { ByteReader, ByteWriter, fromBase64Url, toBase64Url } from './codec.js';
import { TrellisError } from './errors.js';

const DESC_MAGIC = [0x54, 0x4d] as const; // "TM"
const DESC_VERSION = 1;
const U64_MAX = (1n << 64n) - 1n;
const STAGED_FLAG = 0x80;
const SPLIT_FLAG = 0x40;
const IPC_FLAG = 0x20;
const MAX_PARTS = 1 << 16;

/** Where NIC `i` of the owner exposes the region: the RMA address of offset 0 and the remote key. */
export interface NicKey {
  readonly addr: bigint;
  readonly rkey: bigint;
}

/**
 * A region registered in several parts (each at most the provider's largest registration): part
 * `p` covers bytes `[p × bytes, (p+1) × bytes)`; `keys[p - 1]` are part p's NIC keys (part 0's are
 * {@link MrDesc.nics}).
 */
export interface MrParts {
  readonly bytes: number;
  readonly keys: readonly (readonly NicKey[])[];
}

/**
 * A region's same-host lane: its owner's boot id (peers with the same one are on the same host),
 * and what a writer there maps to copy into it directly instead of going through the NICs. For a
 * CUDA region: the device, the CUDA IPC handle of the allocation that holds it and the region's
 * offset in that allocation (copies over NVLink/PCIe). For a host region the engine allocated:
 * `device` is {@link HOST_MAPPING_DEVICE} and `handle` holds the name of the POSIX shared-memory
 * object the region lives in (one memcpy by the writer).
 */
export interface MrIpc {
  /** `/proc/sys/kernel/random/boot_id` of the owner's host, as 16 bytes. */
  readonly host: Uint8Array;
  /** The CUDA device, or {@link HOST_MAPPING_DEVICE} for host memory in a shared mapping. */
  readonly device: number;
  /** 64-byte `cudaIpcMemHandle_t` of the allocation, or the shared-memory object's name (NUL-padded). */
  readonly handle: Uint8Array;
  /** Byte offset of the region's first byte in the allocation. */
  readonly offset: bigint;
}

/** {@link MrIpc.device} of a host region in a shared-memory object (not a CUDA device). */
export const HOST_MAPPING_DEVICE = 0xffff;

/** The 64-byte {@link MrIpc.handle} naming shared-memory object `name`. @internal */
export function sharedHandle(name: string): Uint8Array {
  const h = new Uint8Array(64);
  const b = new TextEncoder().encode(name);
  if (b.length > 63) throw new TrellisError('INTERNAL', `shared-memory object name too long: ${name}`);
  h.set(b);
  return h;
}

/** The shared-memory object name in a host region's {@link MrIpc.handle}. @internal */
export function sharedName(handle: Uint8Array): string {
  const end = handle.indexOf(0);
  return new TextDecoder().decode(handle.subarray(0, end < 0 ? handle.length : end));
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
  /**
   * The region was registered in parts (it is larger than its owner's provider registers at once):
   * writers cut their work at part boundaries. Undefined for a region of one part.
   */
  readonly parts: MrParts | undefined;
  /** The same-host lane of a CUDA region (undefined for host memory, or without CUDA IPC). */
  readonly ipc: MrIpc | undefined;

  constructor(
    owner: NetAddr,
    base: bigint,
    length: number,
    nics: readonly NicKey[],
    staged = false,
    parts?: MrParts,
    ipc?: MrIpc,
  ) {
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
    const checkKeys = (keys: readonly NicKey[]) => {
      for (const k of keys) {
        if (
          typeof k.addr !== 'bigint' ||
          typeof k.rkey !== 'bigint' ||
          k.addr < 0n ||
          k.rkey < 0n ||
          k.addr > U64_MAX ||
          k.rkey > U64_MAX
        )
          throw new TrellisError('INVALID_ARGUMENT', 'MrDesc: NIC addr and rkey must be u64 bigints');
      }
    };
    if (parts !== undefined) {
      const n = parts.keys.length + 1;
      if (
        !Number.isSafeInteger(parts.bytes) ||
        parts.bytes < 1 ||
        n < 2 ||
        n > MAX_PARTS ||
        (n - 1) * parts.bytes >= length ||
        n * parts.bytes < length
      )
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `MrDesc: ${n} parts of ${String(parts.bytes)} bytes do not cover ${length} bytes exactly (2..${MAX_PARTS} parts, the last one non-empty)`,
        );
      if (staged) throw new TrellisError('INVALID_ARGUMENT', 'MrDesc: a staged region has one part');
      for (const k of parts.keys) {
        if (k.length !== nics.length)
          throw new TrellisError('INVALID_ARGUMENT', 'MrDesc: every part needs one key per NIC, as part 0');
        checkKeys(k);
      }
    }
    checkKeys(nics);
    if (ipc !== undefined) {
      if (
        !(ipc.host instanceof Uint8Array) ||
        ipc.host.length !== 16 ||
        !(ipc.handle instanceof Uint8Array) ||
        ipc.handle.length !== 64 ||
        !Number.isInteger(ipc.device) ||
        ipc.device < 0 ||
        ipc.device > 0xffff ||
        typeof ipc.offset !== 'bigint' ||
        ipc.offset < 0n ||
        ipc.offset > U64_MAX
      )
        throw new TrellisError(
          'INVALID_ARGUMENT',
          'MrDesc: ipc needs a 16-byte host id, a device 0..65535, a 64-byte handle and a u64 offset',
        );
      if (parts) throw new TrellisError('INVALID_ARGUMENT', 'MrDesc: a region in parts has no ipc lane');
    }
    this.owner = owner;
    this.base = base;
    this.length = length;
    this.nics = Object.freeze(nics.map((k) => Object.freeze({ addr: k.addr, rkey: k.rkey })));
    this.staged = staged === true;
    this.parts =
      parts === undefined
        ? undefined
        : Object.freeze({
            bytes: parts.bytes,
            keys: Object.freeze(
              parts.keys.map((k) =>
                Object.freeze(k.map((x) => Object.freeze({ addr: x.addr, rkey: x.rkey }))),
              ),
            ),
          });
    this.ipc =
      ipc === undefined
        ? undefined
        : Object.freeze({
            host: Uint8Array.from(ipc.host),
            device: ipc.device,
            handle: Uint8Array.from(ipc.handle),
            offset: ipc.offset,
          });
    Object.freeze(this);
  }

  /** The backend kind of the owner. */
  get kind(): string {
    return this.owner.kind;
  }

  /**
   * Part `p` of a region registered in parts, as a descriptor of its own (offset 0 = the part's
   * first byte); the region itself when it has one part (`p` 0). `INVALID_ARGUMENT` for a `p`
   * that is not an integer below the part count.
   */
  part(p: number): MrDesc {
    const n = this.parts ? this.parts.keys.length + 1 : 1;
    if (!Number.isSafeInteger(p) || p < 0 || p >= n)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MrDesc.part: p must be an integer in 0..${n - 1} (the region has ${n} part${n === 1 ? '' : 's'}), got ${typeof p === 'number' ? p : JSON.stringify(p)}`,
      );
    if (!this.parts) return this;
    const b = this.parts.bytes;
    return new MrDesc(
      this.owner,
      this.base + BigInt(p * b),
      Math.min(b, this.length - p * b),
      p === 0 ? this.nics : this.parts.keys[p - 1]!,
    );
  }

  /** True when the region accepts remote writes. */
  get remote(): boolean {
    return this.nics.length > 0;
  }

  /**
   * Versioned binary form: magic "TM", version, owner NetAddr, base, length, one byte of key count
   * (bits 0–2) and flags (bit 7: staged; bit 6: in parts; bit 5: same-host lane), keys; in parts,
   * then the part size (u64), the part count (u32) and the keys of parts 1.. in order; with the
   * lane, then the host id (16 bytes), the device (u16), the IPC handle (64 bytes), the offset (u64).
   */
  toBytes(): Uint8Array {
    const w = new ByteWriter().u8(DESC_MAGIC[0]).u8(DESC_MAGIC[1]).u8(DESC_VERSION);
    w.bytes(this.owner.toBytes())
      .u64(this.base)
      .u64(BigInt(this.length))
      .u8(
        this.nics.length |
          (this.staged ? STAGED_FLAG : 0) |
          (this.parts ? SPLIT_FLAG : 0) |
          (this.ipc ? IPC_FLAG : 0),
      );
    for (const k of this.nics) w.u64(k.addr).u64(k.rkey);
    if (this.parts) {
      w.u64(BigInt(this.parts.bytes)).u32(this.parts.keys.length + 1);
      for (const part of this.parts.keys) for (const k of part) w.u64(k.addr).u64(k.rkey);
    }
    if (this.ipc) w.bytes(this.ipc.host).u16(this.ipc.device).bytes(this.ipc.handle).u64(this.ipc.offset);
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
    if (countAndFlags & ~(STAGED_FLAG | SPLIT_FLAG | IPC_FLAG | 0x7))
      throw new TrellisError(
        'DECODE_ERROR',
        `MrDesc: unknown flags 0x${(countAndFlags & 0x18).toString(16)} in the key count byte`,
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
    let parts: MrParts | undefined;
    if (countAndFlags & SPLIT_FLAG) {
      const bytes = r.u64('part size');
      const n = r.u32('part count');
      if (bytes < 1n || bytes > BigInt(Number.MAX_SAFE_INTEGER) || n < 2 || n > MAX_PARTS)
        throw new TrellisError('DECODE_ERROR', `MrDesc: ${n} parts of ${bytes} bytes`);
      const keys: NicKey[][] = [];
      for (let p = 1; p < n; p++) {
        const k: NicKey[] = [];
        for (let i = 0; i < count; i++)
          k.push({ addr: r.u64(`part ${p} NIC ${i} addr`), rkey: r.u64(`part ${p} NIC ${i} rkey`) });
        keys.push(k);
      }
      parts = { bytes: Number(bytes), keys };
    }
    let ipc: MrIpc | undefined;
    if (countAndFlags & IPC_FLAG) {
      const host = r.bytes(16, 'ipc host id');
      const device = r.u16('ipc device');
      const handle = r.bytes(64, 'ipc handle');
      ipc = { host, device, handle, offset: r.u64('ipc offset') };
    }
    r.end();
    try {
      return new MrDesc(owner, base, Number(length), nics, (countAndFlags & STAGED_FLAG) !== 0, parts, ipc);
    } catch (e) {
      throw e instanceof TrellisError && e.code === 'INVALID_ARGUMENT'
        ? new TrellisError('DECODE_ERROR', e.message)
        : e;
    }
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
