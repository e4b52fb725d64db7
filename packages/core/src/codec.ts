// Little-endian byte writer/reader and base64url, shared by the versioned encodings of NetAddr and
// MrDesc. Every short read is a DECODE_ERROR naming what was being read.
import { TrellisError } from './errors.js';

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

/** Little-endian byte writer for the versioned encodings. Grows as needed. */
export class ByteWriter {
  private buf = new Uint8Array(64);
  private view = new DataView(this.buf.buffer);
  private pos = 0;

  private reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): this {
    this.reserve(1);
    this.view.setUint8(this.pos, v);
    this.pos += 1;
    return this;
  }
  u16(v: number): this {
    this.reserve(2);
    this.view.setUint16(this.pos, v, true);
    this.pos += 2;
    return this;
  }
  u32(v: number): this {
    this.reserve(4);
    this.view.setUint32(this.pos, v, true);
    this.pos += 4;
    return this;
  }
  u64(v: bigint): this {
    this.reserve(8);
    this.view.setBigUint64(this.pos, v, true);
    this.pos += 8;
    return this;
  }
  bytes(v: Uint8Array): this {
    this.reserve(v.length);
    this.buf.set(v, this.pos);
    this.pos += v.length;
    return this;
  }
  /** A u16 length followed by the bytes. */
  blob16(v: Uint8Array): this {
    return this.u16(v.length).bytes(v);
  }
  /** A u8 length followed by UTF-8. */
  str8(s: string): this {
    const b = textEncoder.encode(s);
    if (b.length > 255)
      throw new TrellisError('INVALID_ARGUMENT', `string too long to encode (${b.length} > 255 bytes)`);
    return this.u8(b.length).bytes(b);
  }
  finish(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }
}

/** Bounds-checked reader: every short read is a DECODE_ERROR naming what was being read. */
export class ByteReader {
  private readonly view: DataView;
  pos = 0;

  constructor(
    private readonly buf: Uint8Array,
    private readonly what: string,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  private need(n: number, field: string): void {
    if (this.pos + n > this.buf.length) {
      throw new TrellisError(
        'DECODE_ERROR',
        `${this.what}: truncated input: reading ${field} needs ${n} byte(s) at offset ${this.pos}, but only ${this.buf.length - this.pos} remain`,
      );
    }
  }
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  u8(field: string): number {
    this.need(1, field);
    return this.view.getUint8(this.pos++);
  }
  u16(field: string): number {
    this.need(2, field);
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  u32(field: string): number {
    this.need(4, field);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  u64(field: string): bigint {
    this.need(8, field);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }
  bytes(n: number, field: string): Uint8Array {
    this.need(n, field);
    const v = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  blob16(field: string): Uint8Array {
    return this.bytes(this.u16(`${field} length`), field);
  }
  str8(field: string): string {
    const b = this.bytes(this.u8(`${field} length`), field);
    try {
      return textDecoder.decode(b);
    } catch {
      throw new TrellisError('DECODE_ERROR', `${this.what}: ${field} is not valid UTF-8`);
    }
  }
  /** The magic bytes and version; throws DECODE_ERROR / UNSUPPORTED_VERSION. */
  header(magic: readonly [number, number], supported: number): number {
    const m0 = this.u8('magic');
    const m1 = this.u8('magic');
    if (m0 !== magic[0] || m1 !== magic[1]) {
      throw new TrellisError(
        'DECODE_ERROR',
        `${this.what}: bad magic 0x${hex2(m0)}${hex2(m1)} (expected 0x${hex2(magic[0])}${hex2(magic[1])}): these bytes are not a ${this.what}`,
      );
    }
    const version = this.u8('version');
    if (version !== supported) {
      throw new TrellisError(
        'UNSUPPORTED_VERSION',
        `${this.what}: encoding version ${version} is not supported (this build reads version ${supported})`,
      );
    }
    return version;
  }
  end(): void {
    if (this.pos !== this.buf.length) {
      throw new TrellisError(
        'DECODE_ERROR',
        `${this.what}: ${this.buf.length - this.pos} trailing byte(s) after offset ${this.pos}`,
      );
    }
  }
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

const B64URL = /^[A-Za-z0-9_-]*$/;

/** base64url without padding. */
export function toBase64Url(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url');
}

/** Strict base64url decode: Node's decoder silently skips bad characters, this one refuses them. */
export function fromBase64Url(s: string, what: string): Uint8Array {
  if (!B64URL.test(s) || s.length % 4 === 1) {
    throw new TrellisError('DECODE_ERROR', `${what}: not valid base64url text`);
  }
  const b = Buffer.from(s, 'base64url');
  if (b.toString('base64url') !== s) {
    throw new TrellisError('DECODE_ERROR', `${what}: not canonical base64url text`);
  }
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}
