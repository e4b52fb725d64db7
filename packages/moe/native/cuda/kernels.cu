// @trellis/moe's CUDA kernels (the optional CUDA target of its addon): indexed row copies, the
// fp32-accumulated combine, and the count/scan/pack/unpack/signal/wait kernels of the proxy-driven
// and GPU-driven modes. Launched by native/cuda/ops.cc; nothing here touches Node.
#include <cuda_runtime.h>

#include <cstdint>

#include "trellis/cuda_copy_rows.cuh"

namespace {

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
      // rows == nullptr: row_at holds absolute addresses (rows in more than one region).
      const uint8_t* r = rows ? rows + at : reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(at));
      const float v = row_fp32 ? reinterpret_cast<const float*>(r)[h] : bf16_to_f(reinterpret_cast<const uint16_t*>(r)[h]);
      acc = __fadd_rn(acc, __fmul_rn(w[size_t(t) * topk + k], v));
    }
    if (out_fp32)
      static_cast<float*>(out)[size_t(t) * hidden + h] = acc;
    else
      static_cast<uint16_t*>(out)[size_t(t) * hidden + h] = f_to_bf16(acc);
  }
}

// ---------------------------------------------------------------------------------------------
// MoE on the GPU with the native proxy: the instance's region and staging are page-locked host
// memory mapped into the device, so kernels store packed rows where the NIC reads them and read
// arrived rows where the NIC wrote them. Pairs are (token, k) slots of topk_ids, p = t·topk + k.
constexpr unsigned kMoeChunk = 1024;  // pairs per block of the counting kernel

// Per chunk of pairs: how many go to each expert, and each pair's rank among the chunk's pairs of
// its expert (in pair order: the order the CPU reference uses).
__global__ void moe_count(const int* ids, unsigned pairs, unsigned experts, int* chunk_counts, int* rank_in_chunk) {
  __shared__ int s_ids[kMoeChunk];
  extern __shared__ int s_counts[];
  const unsigned c = blockIdx.x;
  const unsigned p = c * kMoeChunk + threadIdx.x;
  for (unsigned e = threadIdx.x; e < experts; e += blockDim.x) s_counts[e] = 0;
  const int e = p < pairs ? ids[p] : -1;
  s_ids[threadIdx.x] = e;
  __syncthreads();
  if (e >= 0) {
    int r = 0;
    for (unsigned j = 0; j < threadIdx.x; j++) r += s_ids[j] == e;
    rank_in_chunk[p] = r;
    atomicAdd(&s_counts[e], 1);
  }
  __syncthreads();
  for (unsigned x = threadIdx.x; x < experts; x += blockDim.x) chunk_counts[size_t(c) * experts + x] = s_counts[x];
}

// One block: every expert's total (written to `counts_out`, staging byte 0: the routes), each
// chunk's base within its expert (in place of chunk_counts), and the exclusive prefix over experts
// (`first[e]`: the packed row where expert e's rows start — streams are in rank order, and a
// rank's experts are contiguous, so this is the row index in staging too).
__global__ void moe_scan(int* chunk_counts, unsigned chunks, unsigned experts, int* counts_out, int* first) {
  for (unsigned e = threadIdx.x; e < experts; e += blockDim.x) {
    int sum = 0;
    for (unsigned c = 0; c < chunks; c++) {
      const int n = chunk_counts[size_t(c) * experts + e];
      chunk_counts[size_t(c) * experts + e] = sum;
      sum += n;
    }
    counts_out[e] = sum;
    first[e] = sum;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int at = 0;
    for (unsigned e = 0; e < experts; e++) {
      const int n = first[e];
      first[e] = at;
      at += n;
    }
  }
  __threadfence_system();
}

template <typename V>
__device__ inline void copy_vec(uint8_t* d, const uint8_t* s, size_t bytes) {
  for (size_t i = threadIdx.x; i < bytes / sizeof(V); i += blockDim.x)
    reinterpret_cast<V*>(d)[i] = reinterpret_cast<const V*>(s)[i];
}
__device__ inline void copy_any(uint8_t* d, const uint8_t* s, size_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(d) | reinterpret_cast<uintptr_t>(s) | bytes;
  if ((a & 15) == 0) copy_vec<uint4>(d, s, bytes);
  else if ((a & 7) == 0) copy_vec<uint2>(d, s, bytes);
  else if ((a & 3) == 0) copy_vec<uint32_t>(d, s, bytes);
  else copy_vec<uint8_t>(d, s, bytes);
}

// One block per pair: its row = first[e] + its chunk's base + its rank in the chunk. The row is
// stored as header (token u32, k u16, local expert u16), token bytes, scales; `row_at[p]` gets the
// byte offset where the row's combine output will come back (or -1 for an empty slot).
// With `peers` (the GPU-driven NVLink mode), the row goes straight into its receiver's region —
// `peers[d]` is rank d's region mapped here — at its private slot for this rank (`priv_off`,
// `me`, `P` rows per source; the instance guarantees P covers every row), instead of staging.
__global__ void moe_pack(const int* ids, unsigned pairs, unsigned topk, unsigned experts, unsigned local,
                         const int* chunk_base, const int* rank_in_chunk, const int* first, const uint8_t* tokens,
                         size_t token_bytes, const uint8_t* scales, size_t scale_bytes, uint8_t* staging,
                         size_t rows_base, size_t row_stride, size_t combine_off, size_t out_row, long long* row_at,
                         uint8_t* const* peers, size_t priv_off, unsigned me, unsigned P, const long long* ret_base) {
  const unsigned p = blockIdx.x;
  if (p >= pairs) return;
  const int e = ids[p];
  if (e < 0) {
    if (threadIdx.x == 0) row_at[p] = -1;
    return;
  }
  const unsigned c = p / kMoeChunk;
  const size_t row = size_t(first[e]) + size_t(chunk_base[size_t(c) * experts + e]) + size_t(rank_in_chunk[p]);
  const unsigned t = p / topk;
  uint8_t* d;
  if (peers && peers[unsigned(e) / local]) {
    const unsigned dst = unsigned(e) / local;
    const size_t pos = row - size_t(first[dst * local]);  // position in the stream to dst
    d = peers[dst] + priv_off + (size_t(me) * P + pos) * row_stride;
  } else {
    d = staging + rows_base + row * row_stride;
  }
  if (threadIdx.x == 0) {
    reinterpret_cast<uint32_t*>(d)[0] = t;
    reinterpret_cast<uint16_t*>(d)[2] = uint16_t(p % topk);
    reinterpret_cast<uint16_t*>(d)[3] = uint16_t(unsigned(e) % local);
    // Where the row's combine output comes back: an offset in this rank's region, or (ret_base:
    // rows return into one of two regions) an absolute address.
    row_at[p] = (ret_base ? ret_base[unsigned(e) / local] : 0) + static_cast<long long>(combine_off + row * out_row);
  }
  copy_any(d + 8, tokens + size_t(t) * token_bytes, token_bytes);
  if (scale_bytes) copy_any(d + 8 + token_bytes, scales + size_t(t) * scale_bytes, scale_bytes);
  __threadfence_system();  // the rows reach host memory before the go word (next kernel) does
}

// Raise a go word in mapped host memory: the proxy thread starts the phase when it reads `value`.
__global__ void moe_raise(volatile unsigned long long* word, unsigned long long value) {
  __threadfence_system();
  *word = value;
  __threadfence_system();
}

// The receive-side layout, one table per round (int64): expert_off[L]; then per source s and local
// expert j: dst_base (row in the expert blocks), src_start (position in s's stream), n; then per
// source: overflow offset in the region, and its span start (rows) in the combine staging.
struct MoeTable {
  const long long* t;
  unsigned W, L;
  __device__ long long expert_off(unsigned j) const { return t[j]; }
  __device__ const long long* sj(unsigned s, unsigned j) const { return t + L + 3 * (size_t(s) * L + j); }
  __device__ long long overflow(unsigned s) const { return t[L + 3 * size_t(W) * L + s]; }
  __device__ long long span(unsigned s) const { return t[L + 3 * size_t(W) * L + W + s]; }
  // Row i of the expert blocks: its source and position in that source's stream.
  __device__ void origin(size_t i, unsigned* src, long long* pos) const {
    unsigned j = 0;
    while (j + 1 < L && expert_off(j + 1) <= static_cast<long long>(i)) j++;
    for (unsigned s = 0; s < W; s++) {
      const long long* x = sj(s, j);
      if (static_cast<long long>(i) >= x[0] && static_cast<long long>(i) < x[0] + x[2]) {
        *src = s;
        *pos = x[1] + (static_cast<long long>(i) - x[0]);
        return;
      }
    }
    *src = 0;
    *pos = -1;
  }
};

// Dispatch-recv: block per row of the expert blocks; copies its token (and scales) out of the
// private slot or the overflow region where it arrived.
// `src_base` (W addresses, or null): where each source's rows arrived, when not all in `region`.
__global__ void moe_unpack(MoeTable tab, const uint8_t* region, size_t priv_off, unsigned P, size_t row_stride,
                           size_t token_bytes, size_t scale_bytes, uint8_t* expert_x, uint8_t* expert_scales,
                           const long long* src_base) {
  const size_t i = blockIdx.x;
  unsigned s;
  long long p;
  tab.origin(i, &s, &p);
  if (p < 0) return;
  const size_t at = p < P ? priv_off + (size_t(s) * P + size_t(p)) * row_stride
                          : size_t(tab.overflow(s)) + size_t(p - P) * row_stride;
  const uint8_t* reg = src_base ? reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(src_base[s])) : region;
  copy_any(expert_x + i * token_bytes, reg + at + 8, token_bytes);
  if (scale_bytes) copy_any(expert_scales + i * scale_bytes, reg + at + 8 + token_bytes, scale_bytes);
}

// Combine-send: block per expert-output row; it goes to its source's span of the combine staging
// at its stream position (rows return in the order they were sent).
// With `peers`, rows go straight into each source's combine region (span(s) then holds the rows s
// sent to ranks before this one: where this rank's rows start there).
// `dst_base` (W addresses, or null): where each source's rows go (already at its combine area).
__global__ void moe_combine_pack(MoeTable tab, const uint8_t* expert_out, size_t out_row, uint8_t* staging,
                                 size_t combine_base, uint8_t* const* peers, const long long* dst_base) {
  const size_t i = blockIdx.x;
  unsigned s;
  long long p;
  tab.origin(i, &s, &p);
  if (p < 0) return;
  uint8_t* base = dst_base ? reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(dst_base[s]))
                 : peers  ? peers[s] + combine_base
                          : staging + combine_base;
  copy_any(base + size_t(tab.span(s) + p) * out_row, expert_out + i * out_row, out_row);
  __threadfence_system();
}

// GPU-driven NVLink: tell every peer this rank's phase is in its region. One block: copy this
// rank's counts (if any) into every peer's routes slot for it, fence, then raise flag `me` of
// every peer's flag row to `round`. Every store of the phase's kernels before this one is visible
// to the peers first (kernel order on the stream, and the system-scope fence).
__global__ void moe_signal(uint8_t* const* peers, unsigned W, unsigned me, const int* counts, unsigned experts,
                           size_t routes_off, size_t flags_off, unsigned long long round) {
  if (counts)
    for (unsigned d = 0; d < W; d++) {
      if (!peers[d]) continue;  // reached another way (the proxy)
      int* dst = reinterpret_cast<int*>(peers[d] + routes_off) + size_t(me) * experts;
      for (unsigned e = threadIdx.x; e < experts; e += blockDim.x) dst[e] = counts[e];
    }
  __threadfence_system();
  __syncthreads();
  if (threadIdx.x == 0)
    for (unsigned d = 0; d < W; d++) {
      if (!peers[d]) continue;
      volatile unsigned long long* f = reinterpret_cast<volatile unsigned long long*>(peers[d] + flags_off) + me;
      *f = round;
    }
  __threadfence_system();
}

// Wait until every rank's flag in this rank's flag row reached `round` (this rank's own too: its
// signal kernel raised it). Gives up after `timeout_ns`, setting *timed_out.
__global__ void moe_wait(const uint8_t* region, size_t flags_off, unsigned W, unsigned long long round,
                         unsigned long long timeout_ns, int* timed_out, unsigned long long mask) {
  const volatile unsigned long long* f = reinterpret_cast<const volatile unsigned long long*>(region + flags_off);
  unsigned long long start;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  for (unsigned s = 0; s < W; s++)
    while ((mask >> s & 1ull) && f[s] < round) {
      unsigned long long now;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
      if (now - start > timeout_ns) {
        *timed_out = 1;
        return;
      }
    }
  __threadfence_system();
}

}  // namespace

// Scratch of moe_dispatch_pack for `pairs` pairs and `experts` experts (ints).
extern "C" size_t trellis_moe_pack_scratch(size_t pairs, size_t experts) {
  const size_t chunks = (pairs + kMoeChunk - 1) / kMoeChunk;
  return 4 * (pairs + (chunks ? chunks : 1) * experts + experts);
}

extern "C" cudaError_t trellis_moe_dispatch_pack(const int* ids, unsigned pairs, unsigned topk, unsigned experts,
                                                 unsigned local, void* scratch, const void* tokens, size_t token_bytes,
                                                 const void* scales, size_t scale_bytes, void* staging, size_t rows_base,
                                                 size_t row_stride, size_t combine_off, size_t out_row, long long* row_at,
                                                 void* go, unsigned long long round, cudaStream_t s) {
  const unsigned chunks = (pairs + kMoeChunk - 1) / kMoeChunk;
  int* rank_in_chunk = static_cast<int*>(scratch);
  int* chunk_counts = rank_in_chunk + pairs;
  int* first = chunk_counts + size_t(chunks ? chunks : 1) * experts;
  int* counts_out = static_cast<int*>(staging);  // routes: staging byte 0
  if (chunks) moe_count<<<chunks, kMoeChunk, experts * sizeof(int), s>>>(ids, pairs, experts, chunk_counts, rank_in_chunk);
  else cudaMemsetAsync(chunk_counts, 0, experts * sizeof(int), s);
  moe_scan<<<1, 1024, 0, s>>>(chunk_counts, chunks ? chunks : 1, experts, counts_out, first);
  if (pairs)
    moe_pack<<<pairs, 128, 0, s>>>(ids, pairs, topk, experts, local, chunk_counts, rank_in_chunk, first,
                                   static_cast<const uint8_t*>(tokens), token_bytes, static_cast<const uint8_t*>(scales),
                                   scale_bytes, static_cast<uint8_t*>(staging), rows_base, row_stride, combine_off, out_row,
                                   row_at, nullptr, 0, 0, 0, nullptr);
  moe_raise<<<1, 1, 0, s>>>(static_cast<unsigned long long*>(go), round);
  return cudaGetLastError();
}

// GPU-driven NVLink dispatch-send: count, scan (counts to `counts_out`, device memory), pack every
// row into its receiver's private slot through `peers` (a device array of W mapped region bases),
// then signal (counts into every peer's routes slot, flags raised).
// Hybrid (some peers reached by the proxy): `peers[d]` is null for them, their rows go to `staging`
// (at rows_base, packed stream order) for the proxy, `ret_base` says where each rank's combine rows
// come back, and `go` (mapped) is raised for the proxy after the signal.
extern "C" cudaError_t trellis_moe_dispatch_direct(const int* ids, unsigned pairs, unsigned topk, unsigned experts,
                                                   unsigned local, void* scratch, const void* tokens, size_t token_bytes,
                                                   const void* scales, size_t scale_bytes, int* counts_out,
                                                   size_t row_stride, size_t combine_off, size_t out_row,
                                                   long long* row_at, void* const* peers, unsigned W, unsigned me,
                                                   size_t priv_off, unsigned P, size_t routes_off, size_t flags_off,
                                                   unsigned long long round, void* staging, size_t rows_base,
                                                   const long long* ret_base, void* go, cudaStream_t s) {
  const unsigned chunks = (pairs + kMoeChunk - 1) / kMoeChunk;
  int* rank_in_chunk = static_cast<int*>(scratch);
  int* chunk_counts = rank_in_chunk + pairs;
  int* first = chunk_counts + size_t(chunks ? chunks : 1) * experts;
  if (chunks) moe_count<<<chunks, kMoeChunk, experts * sizeof(int), s>>>(ids, pairs, experts, chunk_counts, rank_in_chunk);
  else cudaMemsetAsync(chunk_counts, 0, experts * sizeof(int), s);
  moe_scan<<<1, 1024, 0, s>>>(chunk_counts, chunks ? chunks : 1, experts, counts_out, first);
  auto* bases = reinterpret_cast<uint8_t* const*>(peers);
  if (pairs)
    moe_pack<<<pairs, 128, 0, s>>>(ids, pairs, topk, experts, local, chunk_counts, rank_in_chunk, first,
                                   static_cast<const uint8_t*>(tokens), token_bytes, static_cast<const uint8_t*>(scales),
                                   scale_bytes, static_cast<uint8_t*>(staging), rows_base, row_stride, combine_off, out_row,
                                   row_at, bases, priv_off, me, P, ret_base);
  moe_signal<<<1, 256, 0, s>>>(bases, W, me, counts_out, experts, routes_off, flags_off, round);
  if (go) moe_raise<<<1, 1, 0, s>>>(static_cast<unsigned long long*>(go), round);
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_moe_wait(const void* region, size_t flags_off, unsigned W, unsigned long long round,
                                        unsigned long long timeout_ns, int* timed_out, unsigned long long mask,
                                        cudaStream_t s) {
  moe_wait<<<1, 1, 0, s>>>(static_cast<const uint8_t*>(region), flags_off, W, round, timeout_ns, timed_out, mask);
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_moe_combine_direct(const long long* table, unsigned W, unsigned L, size_t rows,
                                                  const void* expert_out, size_t out_row, void* const* peers,
                                                  size_t combine_off, unsigned me, size_t flags_off,
                                                  unsigned long long round, const long long* dst_base, void* go,
                                                  cudaStream_t s) {
  auto* bases = reinterpret_cast<uint8_t* const*>(peers);
  if (rows)
    moe_combine_pack<<<unsigned(rows), 128, 0, s>>>(MoeTable{table, W, L}, static_cast<const uint8_t*>(expert_out),
                                                    out_row, nullptr, combine_off, bases, dst_base);
  moe_signal<<<1, 32, 0, s>>>(bases, W, me, nullptr, 0, 0, flags_off, round);
  if (go) moe_raise<<<1, 1, 0, s>>>(static_cast<unsigned long long*>(go), round);
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_moe_unpack(const long long* table, unsigned W, unsigned L, size_t rows, const void* region,
                                          size_t priv_off, unsigned P, size_t row_stride, size_t token_bytes,
                                          size_t scale_bytes, void* expert_x, void* expert_scales,
                                          const long long* src_base, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  moe_unpack<<<unsigned(rows), 128, 0, s>>>(MoeTable{table, W, L}, static_cast<const uint8_t*>(region), priv_off, P,
                                            row_stride, token_bytes, scale_bytes, static_cast<uint8_t*>(expert_x),
                                            static_cast<uint8_t*>(expert_scales), src_base);
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_moe_combine_pack(const long long* table, unsigned W, unsigned L, size_t rows,
                                                const void* expert_out, size_t out_row, void* staging,
                                                size_t combine_base, void* go, unsigned long long round,
                                                cudaStream_t s) {
  if (rows)
    moe_combine_pack<<<unsigned(rows), 128, 0, s>>>(MoeTable{table, W, L}, static_cast<const uint8_t*>(expert_out),
                                                    out_row, static_cast<uint8_t*>(staging), combine_base, nullptr, nullptr);
  moe_raise<<<1, 1, 0, s>>>(static_cast<unsigned long long*>(go), round);
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

extern "C" cudaError_t trellis_copy_rows(void* dst, const void* doff, const void* src, const void* soff, size_t n,
                                         size_t bytes, cudaStream_t s) {
  return trellis::cuda_kernels::launch_copy_rows(dst, doff, src, soff, n, bytes, s);
}
