// The CPU reference quantiser: bf16 → fp8 e4m3 (OCP "e4m3fn": bias 7, max 448, no infinities,
// NaN = 0x7f/0xff) with one fp32 scale per block of `block` consecutive elements of a row.
// scale = fp32(amax(block) / 448) (1 for an all-zero block); q = e4m3(fp32(x / scale)), rounded to
// nearest even and saturated to ±448. The GPU kernel must produce the same bytes.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The float value of a bf16 bit pattern. */
export function bf16ToF32(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0]!;
}

/** bf16 bits of `x`, rounded to nearest even (NaN stays NaN). */
export function f32ToBf16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7f800000) === 0x7f800000 && b & 0x7fffff) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

export const E4M3_MAX = 448;

/** The float value of an e4m3fn byte. */
export function e4m3ToF32(byte: number): number {
  const s = byte & 0x80 ? -1 : 1;
  const e = (byte >> 3) & 0xf;
  const m = byte & 7;
  if (e === 15 && m === 7) return Number.NaN;
  if (e === 0) return s * m * 2 ** -9; // subnormal: m/8 × 2^-6
  return s * (1 + m / 8) * 2 ** (e - 7);
}

/** e4m3fn byte of `x`: round to nearest even, saturate to ±448, NaN → 0x7f. */
export function f32ToE4m3(x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  let a = Math.abs(x);
  if (a >= E4M3_MAX) return sign | 0x7e; // 448
  if (a < 2 ** -6) {
    // Subnormal range: multiples of 2^-9.
    const q = roundEven(a * 2 ** 9);
    return sign | q; // q ≤ 8; 8 is the smallest normal (e=1, m=0) and encodes as 0x08 too
  }
  let e = Math.floor(Math.log2(a));
  // log2 can be off by one at powers of two.
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const m = roundEven((a / 2 ** e - 1) * 8);
  let ee = e + 7;
  let mm = m;
  if (mm === 8) {
    mm = 0;
    ee++;
  }
  a = (1 + mm / 8) * 2 ** (ee - 7);
  if (ee > 15 || (ee === 15 && mm === 7) || a > E4M3_MAX) return sign | 0x7e;
  return sign | (ee << 3) | mm;
}

function roundEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * Quantise `rows` rows of `cols` bf16 values (row `r` at `src[srcOffset + r*srcPitch ...]`, in
 * elements) into e4m3 bytes (`dst`, packed `rows × cols`) and fp32 scales (`scales`, packed
 * `rows × cols/block`). `cols` must be a multiple of `block`.
 */
export function quantizeRows(
  src: Uint16Array,
  srcOffset: number,
  srcPitch: number,
  rows: number,
  cols: number,
  block: number,
  dst: Uint8Array,
  scales: Float32Array,
): void {
  const blocks = cols / block;
  for (let r = 0; r < rows; r++) {
    const row = srcOffset + r * srcPitch;
    for (let b = 0; b < blocks; b++) {
      let amax = 0;
      for (let i = 0; i < block; i++) {
        const v = Math.abs(bf16ToF32(src[row + b * block + i]!));
        if (v > amax) amax = v;
      }
      // fp32 arithmetic throughout, as a kernel computes it.
      const scale = amax > 0 && Number.isFinite(amax) ? Math.fround(amax / E4M3_MAX) : 1;
      scales[r * blocks + b] = scale;
      for (let i = 0; i < block; i++)
        dst[r * cols + b * block + i] = f32ToE4m3(Math.fround(bf16ToF32(src[row + b * block + i]!) / scale));
    }
  }
}
