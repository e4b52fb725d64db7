// NetAddr: a peer's serialisable address (kind, generation, one endpoint per NIC) and its versioned
// binary/text encoding. Pure data; no I/O.
import { ByteReader, ByteWriter, fromBase64Url, toBase64Url } from './codec.js';
import { TrellisError } from './errors.js';

/** Most NICs one engine may own. */
export const MAX_NICS = 4;
const ADDR_MAGIC = [0x54, 0x41] as const; // "TA"
const ADDR_VERSION = 1;
const KIND_RE = /^[a-z][a-z0-9-]{0,31}$/;

/**
 * A serialisable peer address: the backend kind, a generation (bumped when a peer restarts, so
 * stale descriptors can be refused) and one opaque endpoint address per NIC.
 *
 * Exchange it out of band (rendezvous, HTTP, a pipe) with {@link NetAddr.toString} or
 * {@link NetAddr.toBytes}, and rebuild it on the other side with {@link NetAddr.parse} or
 * {@link NetAddr.fromBytes}.
 *
 * @example
 * ```ts
 * const text = engine.address.toString();      // "tna1:loopback:VEEB..."
 * const peer = NetAddr.parse(text);
 * peer.equals(engine.address);                  // true
 * ```
 */
export class NetAddr {
  /** Backend kind, e.g. `loopback`, `fi-tcp`, `fi-shm`, `fi-efa`, `ib-rc` (see {@link TransferEngine.kind}). */
  readonly kind: string;
  /** Incarnation of the peer; a restarted peer gets a new one. */
  readonly generation: number;
  /** One opaque endpoint address per NIC (provider-specific bytes). */
  readonly nics: readonly Uint8Array[];
  private readonly text: string;

  constructor(kind: string, generation: number, nics: readonly Uint8Array[]) {
    if (!KIND_RE.test(kind)) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `NetAddr: kind ${JSON.stringify(kind)} must match ${KIND_RE}`,
      );
    }
    if (!Number.isInteger(generation) || generation < 0 || generation > 0xffff_ffff) {
      throw new TrellisError('INVALID_ARGUMENT', `NetAddr: generation ${generation} must be a u32`);
    }
    if (nics.length < 1 || nics.length > MAX_NICS) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `NetAddr: ${nics.length} NIC addresses; expected 1..${MAX_NICS}`,
      );
    }
    for (const [i, n] of nics.entries()) {
      if (!(n instanceof Uint8Array) || n.length === 0 || n.length > 0xffff) {
        throw new TrellisError('INVALID_ARGUMENT', `NetAddr: NIC ${i} address must be 1..65535 bytes`);
      }
    }
    this.kind = kind;
    this.generation = generation;
    this.nics = Object.freeze(nics.map((n) => n.slice()));
    this.text = `tna${ADDR_VERSION}:${this.kind}:${toBase64Url(this.toBytes())}`;
    Object.freeze(this);
  }

  /** Versioned binary form: magic "TA", version, kind, generation, NIC count, NIC addresses. */
  toBytes(): Uint8Array {
    const w = new ByteWriter().u8(ADDR_MAGIC[0]).u8(ADDR_MAGIC[1]).u8(ADDR_VERSION);
    w.str8(this.kind).u32(this.generation).u8(this.nics.length);
    for (const n of this.nics) w.blob16(n);
    return w.finish();
  }

  /** Decode {@link NetAddr.toBytes} output. Throws `DECODE_ERROR` or `UNSUPPORTED_VERSION`. */
  static fromBytes(bytes: Uint8Array): NetAddr {
    const r = new ByteReader(asBytes(bytes, 'NetAddr'), 'NetAddr');
    const a = NetAddr.read(r);
    r.end();
    return a;
  }

  /** @internal Read one address from a reader positioned at its magic (used inside other encodings). */
  static read(r: ByteReader): NetAddr {
    r.header(ADDR_MAGIC, ADDR_VERSION);
    const kind = r.str8('kind');
    if (!KIND_RE.test(kind))
      throw new TrellisError('DECODE_ERROR', `NetAddr: invalid kind ${JSON.stringify(kind)}`);
    const generation = r.u32('generation');
    const count = r.u8('NIC count');
    if (count < 1 || count > MAX_NICS) {
      throw new TrellisError('DECODE_ERROR', `NetAddr: NIC count ${count} is outside 1..${MAX_NICS}`);
    }
    const nics: Uint8Array[] = [];
    for (let i = 0; i < count; i++) {
      const n = r.blob16(`NIC ${i} address`);
      if (n.length === 0) throw new TrellisError('DECODE_ERROR', `NetAddr: NIC ${i} address is empty`);
      nics.push(n);
    }
    return new NetAddr(kind, generation, nics);
  }

  /** Text form `tna1:<kind>:<base64url of toBytes()>`, safe in URLs, JSON and environment variables. */
  toString(): string {
    return this.text;
  }

  /** Parse {@link NetAddr.toString} output. Throws `DECODE_ERROR` or `UNSUPPORTED_VERSION`. */
  static parse(text: string): NetAddr {
    if (typeof text !== 'string') throw new TrellisError('DECODE_ERROR', 'NetAddr.parse: expected a string');
    const m = /^tna(\d+):([^:]*):(.*)$/s.exec(text);
    if (!m) {
      throw new TrellisError(
        'DECODE_ERROR',
        `NetAddr.parse: ${preview(text)} is not of the form tna1:<kind>:<base64url>`,
      );
    }
    if (Number(m[1]) !== ADDR_VERSION) {
      throw new TrellisError(
        'UNSUPPORTED_VERSION',
        `NetAddr.parse: text version tna${m[1]} is not supported (expected tna${ADDR_VERSION})`,
      );
    }
    const addr = NetAddr.fromBytes(fromBase64Url(m[3]!, 'NetAddr'));
    if (addr.kind !== m[2]) {
      throw new TrellisError(
        'DECODE_ERROR',
        `NetAddr.parse: the text says kind ${JSON.stringify(m[2])} but the bytes say ${JSON.stringify(addr.kind)}`,
      );
    }
    return addr;
  }

  /** Same kind, generation and NIC addresses. */
  equals(other: NetAddr): boolean {
    return other instanceof NetAddr && this.toString() === other.toString();
  }

  /** Same peer regardless of generation (same kind and NIC addresses). */
  samePeer(other: NetAddr): boolean {
    if (other.kind !== this.kind || other.nics.length !== this.nics.length) return false;
    return this.nics.every((n, i) => bytesEqual(n, other.nics[i]!));
  }

  toJSON(): string {
    return this.toString();
  }
}

/** Coerce a Buffer/Uint8Array; reject anything else with DECODE_ERROR. */
export function asBytes(bytes: unknown, what: string): Uint8Array {
  if (bytes instanceof Uint8Array) return bytes;
  throw new TrellisError('DECODE_ERROR', `${what}: expected a Uint8Array, got ${describe(bytes)}`);
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'object';
  return typeof v;
}

function preview(s: string): string {
  return JSON.stringify(s.length > 40 ? `${s.slice(0, 40)}…` : s);
}
