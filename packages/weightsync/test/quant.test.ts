// fp8 e4m3 and bf16 conversions against their definitions.
import { describe, expect, it } from 'vitest';
import { bf16ToF32, e4m3ToF32, f32ToBf16, f32ToE4m3, quantizeRows } from '../src/index.js';
import { Rng } from './helpers.js';

// The straightforward implementation: every finite e4m3 value, pick the nearest; a tie goes to the
// even code (mantissa LSB 0); beyond 448 saturate.
const table = Array.from({ length: 128 }, (_, b) => b).filter((b) => b !== 0x7f);
function nearest(x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.min(Math.abs(x), 448);
  let best = 0;
  for (const b of table) {
    const d = Math.abs(e4m3ToF32(b) - a);
    const db = Math.abs(e4m3ToF32(best) - a);
    if (d < db || (d === db && (b & 1) === 0 && (best & 1) === 1)) best = b;
  }
  return sign | best;
}

describe('fp8 e4m3 and bf16 conversions', () => {
  it('decodes the e4m3 grid: 0, subnormals, normals, 448, NaN', () => {
    expect([0x00, 0x01, 0x07, 0x08, 0x38, 0x7e, 0xfe].map(e4m3ToF32)).toEqual([
      0,
      2 ** -9,
      7 * 2 ** -9,
      2 ** -6,
      1,
      448,
      -448,
    ]);
    expect(Number.isNaN(e4m3ToF32(0x7f))).toBe(true);
  });

  it('encodes every value as the nearest e4m3 (ties to even, saturating), like the brute-force search', () => {
    const rng = new Rng(3);
    const xs = [
      0,
      -0,
      1,
      -1,
      448,
      449,
      1e9,
      -1e9,
      2 ** -10,
      2 ** -9,
      3 * 2 ** -10,
      0.0009765625,
      240,
      232,
      248,
      464,
      480,
    ];
    for (const b of table) {
      const v = e4m3ToF32(b);
      xs.push(v, -v);
      // Midpoints between neighbours exercise ties.
      const next = table.find((c) => e4m3ToF32(c) > v);
      if (next !== undefined) xs.push((v + e4m3ToF32(next)) / 2);
    }
    for (let i = 0; i < 20000; i++) xs.push((rng.u32() / 2 ** 32 - 0.5) * 2 ** rng.int(-14, 10));
    const wrong = xs.filter((x) => f32ToE4m3(x) !== nearest(x));
    expect(wrong.slice(0, 5).map((x) => `${x}: ${f32ToE4m3(x)} vs ${nearest(x)}`)).toEqual([]);
    expect(f32ToE4m3(Number.NaN)).toBe(0x7f);
  });

  it('bf16 rounds to nearest even and round-trips', () => {
    expect(f32ToBf16(1)).toBe(0x3f80);
    expect(bf16ToF32(0x3f80)).toBe(1);
    expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80); // a tie: stays even
    expect(f32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82); // a tie: rounds up to even
    expect(bf16ToF32(f32ToBf16(-3.140625))).toBe(-3.140625);
  });

  it('quantizeRows: per-block scale amax/448 and codes of x/scale, against a direct computation', () => {
    const rng = new Rng(9);
    const rows = 5;
    const cols = 64;
    const block = 16;
    const pitch = 80;
    const src = new Uint16Array(rows * pitch);
    for (let i = 0; i < src.length; i++)
      src[i] = f32ToBf16((rng.u32() / 2 ** 32 - 0.5) * 2 ** rng.int(-8, 8));
    src.fill(0, pitch, pitch + 16); // an all-zero block: scale 1, codes 0
    const q = new Uint8Array(rows * cols);
    const scales = new Float32Array(rows * (cols / block));
    quantizeRows(src, 0, pitch, rows, cols, block, q, scales);
    for (let r = 0; r < rows; r++)
      for (let b = 0; b < cols / block; b++) {
        const vals = Array.from({ length: block }, (_, i) => bf16ToF32(src[r * pitch + b * block + i]!));
        const amax = Math.max(...vals.map(Math.abs));
        const scale = amax === 0 ? 1 : Math.fround(amax / 448);
        expect(scales[r * (cols / block) + b]).toBe(scale);
        for (let i = 0; i < block; i++)
          expect(q[r * cols + b * block + i]).toBe(nearest(Math.fround(vals[i]! / scale)));
        // The block's largest magnitude maps to ±448 exactly.
        if (amax > 0)
          expect(
            vals.some(
              (v, i) => Math.abs(e4m3ToF32(q[r * cols + b * block + i]!)) === 448 && Math.abs(v) === amax,
            ),
          ).toBe(true);
      }
  });
});
