// The row-copy kernel shared by the addons that build CUDA code (@trellis/cuda's same-host lane,
// @trellis/moe's indexed row copies): row i of `n` moves `bytes` bytes from src + soff[i] to
// dst + doff[i]. Device code; include from a .cu file only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace trellis::cuda_kernels {

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

// Launch copy_rows on stream `s` (returns at once; cudaGetLastError of the launch).
inline cudaError_t launch_copy_rows(void* dst, const void* doff, const void* src, const void* soff, size_t n,
                                    size_t bytes, cudaStream_t s) {
  if (n == 0 || bytes == 0) return cudaSuccess;
  unsigned blocks = n < 65535 ? unsigned(n) : 65535u;
  copy_rows<<<blocks, 256, 0, s>>>(static_cast<uint8_t*>(dst), static_cast<const unsigned long long*>(doff),
                                   static_cast<const uint8_t*>(src), static_cast<const unsigned long long*>(soff), n,
                                   bytes);
  return cudaGetLastError();
}

}  // namespace trellis::cuda_kernels
