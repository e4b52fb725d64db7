// @trellis/cuda's kernels: the GPU watcher's test kernel, the fill/verify pattern the GPU tests use,
// the fp8 quantiser (weightsync's device path), and the same-host lane's row copy and signal store.
// MoE's kernels live in @trellis/moe (native/cuda/kernels.cu).
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "trellis/cuda_copy_rows.cuh"

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

// Store `value` into a mapped host word after the work before it on the stream (the lane's signal).
__global__ void store_word(volatile unsigned long long* word, unsigned long long value) {
  __threadfence_system();
  *word = value;
  __threadfence_system();
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

// On a non-blocking stream of the current device (one per device, created once), with a counter
// allocated once: no implicit synchronisation with the legacy default stream anywhere.
extern "C" cudaError_t trellis_count_pattern_mismatches_unordered(const void* p, size_t n, uint32_t seed, size_t at,
                                                                  unsigned long long* out) {
  static cudaStream_t streams[64] = {};
  static unsigned long long* counters[64] = {};
  int dev = 0;
  cudaError_t rc = cudaGetDevice(&dev);
  if (rc != cudaSuccess) return rc;
  if (dev < 0 || dev >= 64) return cudaErrorInvalidDevice;
  if (!streams[dev]) {
    if ((rc = cudaStreamCreateWithFlags(&streams[dev], cudaStreamNonBlocking)) != cudaSuccess) return rc;
    if ((rc = cudaMalloc(&counters[dev], sizeof(unsigned long long))) != cudaSuccess) return rc;
  }
  cudaStream_t s = streams[dev];
  unsigned long long* d = counters[dev];
  if ((rc = cudaMemsetAsync(d, 0, sizeof *d, s)) != cudaSuccess) return rc;
  count_pattern_mismatches<<<256, 256, 0, s>>>(static_cast<const uint8_t*>(p), n, seed, at, d);
  if ((rc = cudaGetLastError()) != cudaSuccess) return rc;
  if ((rc = cudaMemcpyAsync(out, d, sizeof *out, cudaMemcpyDeviceToHost, s)) != cudaSuccess) return rc;
  return cudaStreamSynchronize(s);
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


// The same-host lane's signal: stored after the copies before it on the stream are done.
extern "C" cudaError_t trellis_store_signal(void* word, unsigned long long value, cudaStream_t s) {
  store_word<<<1, 1, 0, s>>>(static_cast<unsigned long long*>(word), value);
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_copy_rows(void* dst, const void* doff, const void* src, const void* soff, size_t n,
                                         size_t bytes, cudaStream_t s) {
  return trellis::cuda_kernels::launch_copy_rows(dst, doff, src, soff, n, bytes, s);
}
