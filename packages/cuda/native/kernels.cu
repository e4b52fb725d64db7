// Small kernels the helpers and their tests need.
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

// Wait for *go to reach i (a host write into mapped memory), then add 1 to *word, n times. Each
// increment is made visible to the host before the next wait: the system-scope fence orders it.
__global__ void increment_on_go(volatile unsigned long long* word, volatile unsigned long long* go, unsigned long long n) {
  for (unsigned long long i = 1; i <= n; i++) {
    while (*go < i) {
    }
    __threadfence_system();
    atomicAdd(const_cast<unsigned long long*>(word), 1ull);
    __threadfence_system();
  }
}

__global__ void fill_pattern(uint8_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = static_cast<uint8_t>((i * 2654435761u + seed) >> 13);
}

// Count bytes of p[0..n) that differ from the pattern at index (i + at): verification on the device.
__global__ void count_pattern_mismatches(const uint8_t* p, size_t n, uint32_t seed, size_t at,
                                         unsigned long long* bad) {
  unsigned long long mine = 0;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    mine += p[i] != static_cast<uint8_t>(((i + at) * 2654435761u + seed) >> 13);
  if (mine) atomicAdd(bad, mine);
}

// One thread block per (row, scale block): amax of the block's bf16 values, scale = amax / 448 in
// fp32 (1 for an all-zero or non-finite amax), q = e4m3(x / scale) rounded to nearest even and
// saturated to ±448, NaN → 0x7f. The same arithmetic as the CPU reference (weightsync quant.ts).
__global__ void quantize_e4m3(const uint16_t* src, size_t src_offset, size_t src_pitch, unsigned cols, unsigned block,
                              uint8_t* dst, float* scales) {
  const unsigned blocks = cols / block;
  const unsigned row = blockIdx.x / blocks;
  const unsigned b = blockIdx.x % blocks;
  const uint16_t* in = src + src_offset + size_t(row) * src_pitch + size_t(b) * block;
  auto f = [](uint16_t bits) { return __uint_as_float(uint32_t(bits) << 16); };
  float m = 0.f;
  for (unsigned i = threadIdx.x; i < block; i += blockDim.x) {
    float v = fabsf(f(in[i]));
    if (v > m) m = v;  // NaN never compares greater: ignored, as on the CPU
  }
  __shared__ float red[256];
  red[threadIdx.x] = m;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s && red[threadIdx.x + s] > red[threadIdx.x]) red[threadIdx.x] = red[threadIdx.x + s];
    __syncthreads();
  }
  const float amax = red[0];
  const float scale = (amax > 0.f && isfinite(amax)) ? __fdiv_rn(amax, 448.f) : 1.f;
  if (threadIdx.x == 0) scales[size_t(row) * blocks + b] = scale;
  uint8_t* out = dst + size_t(row) * cols + size_t(b) * block;
  for (unsigned i = threadIdx.x; i < block; i += blockDim.x) {
    const float x = __fdiv_rn(f(in[i]), scale);
    out[i] = isnan(x) ? 0x7f : static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
  }
}

template <typename V>
__device__ inline void copy_as(uint8_t* d, const uint8_t* s, size_t bytes) {
  for (size_t i = threadIdx.x; i < bytes / sizeof(V); i += blockDim.x)
    reinterpret_cast<V*>(d)[i] = reinterpret_cast<const V*>(s)[i];
}

// Row i: `bytes` bytes from src + soff[i] to dst + doff[i], in the widest moves the alignment of
// both ends and the length allow (16, 8, 4 bytes, else bytes).
__global__ void copy_rows(uint8_t* dst, const unsigned long long* doff, const uint8_t* src,
                          const unsigned long long* soff, size_t n, size_t bytes) {
  for (size_t r = blockIdx.x; r < n; r += gridDim.x) {
    uint8_t* d = dst + doff[r];
    const uint8_t* s = src + soff[r];
    const uintptr_t a = reinterpret_cast<uintptr_t>(d) | reinterpret_cast<uintptr_t>(s) | bytes;
    if ((a & 15) == 0)
      copy_as<uint4>(d, s, bytes);
    else if ((a & 7) == 0)
      copy_as<uint2>(d, s, bytes);
    else if ((a & 3) == 0)
      copy_as<uint32_t>(d, s, bytes);
    else
      copy_as<uint8_t>(d, s, bytes);
  }
}

__device__ inline float bf16_to_f(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }
// Round to nearest even; NaN keeps its payload's top bits and is made quiet (as the CPU reference).
__device__ inline uint16_t f_to_bf16(float x) {
  uint32_t b = __float_as_uint(x);
  if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x7fffffu)) return uint16_t(((b >> 16) | 0x40u) & 0xffffu);
  return uint16_t(((b + 0x7fffu + ((b >> 16) & 1u)) >> 16) & 0xffffu);
}

// MoE combine: token t's output = Σ_k fp32(w[t,k] × row(t,k)) accumulated in fp32 in k order
// (no fused multiply-add: the same rounding as the CPU reference), rows skipped where rowAt < 0.
__global__ void moe_combine(const uint8_t* rows, const long long* row_at, const float* w, unsigned topk,
                            unsigned hidden, int row_fp32, void* out, int out_fp32) {
  const unsigned t = blockIdx.x;
  for (unsigned h = threadIdx.x; h < hidden; h += blockDim.x) {
    float acc = 0.f;
    for (unsigned k = 0; k < topk; k++) {
      const long long at = row_at[size_t(t) * topk + k];
      if (at < 0) continue;
      const float v = row_fp32 ? reinterpret_cast<const float*>(rows + at)[h]
                               : bf16_to_f(reinterpret_cast<const uint16_t*>(rows + at)[h]);
      acc = __fadd_rn(acc, __fmul_rn(w[size_t(t) * topk + k], v));
    }
    if (out_fp32)
      static_cast<float*>(out)[size_t(t) * hidden + h] = acc;
    else
      static_cast<uint16_t*>(out)[size_t(t) * hidden + h] = f_to_bf16(acc);
  }
}

}  // namespace

extern "C" cudaError_t trellis_launch_increment_on_go(void* word, void* go, unsigned long long n, cudaStream_t s) {
  increment_on_go<<<1, 1, 0, s>>>(static_cast<unsigned long long*>(word), static_cast<unsigned long long*>(go), n);
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_launch_fill_pattern(void* p, size_t n, uint32_t seed, cudaStream_t s) {
  fill_pattern<<<128, 256, 0, s>>>(static_cast<uint8_t*>(p), n, seed);
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_launch_quantize_e4m3(const void* src, size_t src_offset, size_t src_pitch, unsigned rows,
                                                    unsigned cols, unsigned block, void* dst, void* scales, cudaStream_t s) {
  if (block == 0 || cols % block != 0) return cudaErrorInvalidValue;
  unsigned threads = 32;
  while (threads < block && threads < 256) threads <<= 1;
  quantize_e4m3<<<rows * (cols / block), threads, 0, s>>>(static_cast<const uint16_t*>(src), src_offset, src_pitch, cols,
                                                          block, static_cast<uint8_t*>(dst), static_cast<float*>(scales));
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_count_pattern_mismatches(const void* p, size_t n, uint32_t seed, size_t at,
                                                        unsigned long long* out) {
  unsigned long long* d = nullptr;
  cudaError_t rc = cudaMalloc(&d, sizeof *d);
  if (rc != cudaSuccess) return rc;
  cudaMemset(d, 0, sizeof *d);
  count_pattern_mismatches<<<256, 256>>>(static_cast<const uint8_t*>(p), n, seed, at, d);
  rc = cudaGetLastError();
  if (rc == cudaSuccess) rc = cudaMemcpy(out, d, sizeof *out, cudaMemcpyDeviceToHost);
  cudaFree(d);
  return rc;
}

extern "C" cudaError_t trellis_copy_rows(void* dst, const void* doff, const void* src, const void* soff, size_t n,
                                         size_t bytes, cudaStream_t s) {
  if (n == 0 || bytes == 0) return cudaSuccess;
  unsigned blocks = n < 65535 ? unsigned(n) : 65535u;
  copy_rows<<<blocks, 256, 0, s>>>(static_cast<uint8_t*>(dst), static_cast<const unsigned long long*>(doff),
                                   static_cast<const uint8_t*>(src), static_cast<const unsigned long long*>(soff), n,
                                   bytes);
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_moe_combine(const void* rows, const void* row_at, const void* w, unsigned tokens,
                                           unsigned topk, unsigned hidden, int row_fp32, void* out, int out_fp32,
                                           cudaStream_t s) {
  if (tokens == 0) return cudaSuccess;
  moe_combine<<<tokens, 256, 0, s>>>(static_cast<const uint8_t*>(rows), static_cast<const long long*>(row_at),
                                     static_cast<const float*>(w), topk, hidden, row_fp32, out, out_fp32);
  return cudaGetLastError();
}
