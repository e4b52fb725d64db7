// Small kernels the helpers and their tests need.
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

}  // namespace

extern "C" cudaError_t trellis_launch_increment_on_go(void* word, void* go, unsigned long long n, cudaStream_t s) {
  increment_on_go<<<1, 1, 0, s>>>(static_cast<unsigned long long*>(word), static_cast<unsigned long long*>(go), n);
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_launch_fill_pattern(void* p, size_t n, uint32_t seed, cudaStream_t s) {
  fill_pattern<<<128, 256, 0, s>>>(static_cast<uint8_t*>(p), n, seed);
  return cudaGetLastError();
}
