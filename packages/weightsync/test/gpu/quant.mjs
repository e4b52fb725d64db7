// GPU: the fp8 e4m3 quantiser kernel against the CPU reference of @trellis/weightsync, byte for
// byte (e4m3 bytes and fp32 scales), on random bf16 rows with a pitch, plus the edge values:
// zeros, subnormals, ±448 and beyond, ±inf, NaN, -0. Prints one JSON line.

import { DeviceBuffer, quantizeE4m3 } from '@trellis/cuda';
import { f32ToBf16, quantizeRows } from '../../dist/index.js';

const rows = 512;
const cols = 4096;
const pitch = cols + 128;
const block = 128;
const src = new Uint16Array(rows * pitch + 64);
let x = 12345;
const rnd = () => {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return (x >>> 0) / 2 ** 32;
};
for (let i = 0; i < src.length; i++) {
  // Magnitudes over 2^-20 .. 2^12, both signs: exercises subnormal outputs and saturation.
  src[i] = f32ToBf16((rnd() < 0.5 ? -1 : 1) * 2 ** (rnd() * 32 - 20));
}
// Edge rows: all zeros, a row of specials, a row with one huge value.
const edge = [
  0,
  0x8000,
  0x7f80,
  0xff80,
  0x7fc0,
  f32ToBf16(448),
  f32ToBf16(-449),
  f32ToBf16(2 ** -10),
  f32ToBf16(1e-30),
];
src.fill(0, 64, 64 + pitch);
for (let i = 0; i < cols; i++) src[64 + pitch + i] = edge[i % edge.length];
src[64 + 2 * pitch + 5] = f32ToBf16(3e38);

const want = new Uint8Array(rows * cols);
const wantScales = new Float32Array((rows * cols) / block);
quantizeRows(src, 64, pitch, rows, cols, block, want, wantScales);

const dSrc = DeviceBuffer.alloc(src.byteLength);
const dDst = DeviceBuffer.alloc(want.length);
const dScales = DeviceBuffer.alloc(wantScales.byteLength);
dSrc.write(new Uint8Array(src.buffer));
const t0 = performance.now();
quantizeE4m3(0, dSrc.ptr, 64, pitch, rows, cols, block, dDst.ptr, dScales.ptr);
const ms = performance.now() - t0;
const got = dDst.read(new Uint8Array(want.length));
const gotScales = new Float32Array(dScales.read(new Uint8Array(wantScales.byteLength)).buffer);
let badBytes = 0;
let firstBad;
for (let i = 0; i < want.length; i++)
  if (got[i] !== want[i]) {
    badBytes++;
    firstBad ??= { i, got: got[i], want: want[i], bf16: src[64 + Math.floor(i / cols) * pitch + (i % cols)] };
  }
let badScales = 0;
const gs = new Uint32Array(gotScales.buffer);
const ws = new Uint32Array(wantScales.buffer);
for (let i = 0; i < ws.length; i++) if (gs[i] !== ws[i]) badScales++;
for (const b of [dSrc, dDst, dScales]) b.free();
console.log(
  JSON.stringify({
    test: 'quant',
    rows,
    cols,
    block,
    bytes: want.length,
    badBytes,
    badScales,
    firstBad,
    kernelMs: +ms.toFixed(3),
  }),
);
// Wrong bytes fail the check (device-gpu-tests.sh counts exit codes).
if (badBytes || badScales) process.exit(1);
