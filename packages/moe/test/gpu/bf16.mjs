// The bf16 bits the kernels write for an fp32 value: round to nearest even; NaN made quiet with its
// payload's top bits (the CPU reference's conversion). The GPU scripts compare outputs with it.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
export function toBf16(x) {
  f32[0] = x;
  const b = u32[0];
  if ((b & 0x7f800000) === 0x7f800000 && b & 0x7fffff) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}
