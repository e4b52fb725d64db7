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
// Failures a stream-ordered instance's kernels report into its mapped error words (MoeErr).
enum : int { kErrNone = 0, kErrTimeoutDispatch = 1, kErrTimeoutCombine = 2, kErrRoutes = 3, kErrIds = 4 };
// The first failure wins: code, round, detail (rank, or pair index), value. Written with plain
// stores into mapped host memory (atomics there are not atomic for the host): `claim`, in device
// memory, picks the one reporter; the code goes last, after a system-scope fence.
struct MoeErr {
  int code;
  int detail;
  long long round;
  long long value;
};
__device__ inline void report(MoeErr* err, int* claim, int code, long long round, int detail, long long value) {
  if (!err || atomicCAS(claim, 0, 1) != 0) return;
  volatile MoeErr* e = err;
  e->detail = detail;
  e->round = round;
  e->value = value;
  __threadfence_system();
  e->code = code;
  __threadfence_system();
}

// The device state of a stream-ordered instance (MoeStream).
struct MoeStreamState {
  unsigned long long round;  // rounds begun (moe_scan counts them)
  int failed;                // a wait gave up or the routes were bad: later phases do nothing
  int total;                 // rows this rank received this round
  int claimed;               // a failure was reported (the first one is kept, in MoeErr 0)
  int claimed_ids;           // an id out of range was reported (the first one, in MoeErr 1: not fatal)
};

// An id a kernel may use: an expert of this config, or -1 (no expert). Anything else is reported
// (with `err`: device-resident routing the host never saw; in the second record — the round goes
// on, consistently on every rank, with the slot dropped) and treated as -1. Runs before the round
// is counted: the round reported is the one beginning.
__device__ inline int usable_id(int e, unsigned experts, unsigned p, MoeErr* err, MoeStreamState* st) {
  if (e >= -1 && e < static_cast<int>(experts)) return e;
  if (st && err) report(err + 1, &st->claimed_ids, kErrIds, static_cast<long long>(st->round + 1), static_cast<int>(p), e);
  return -1;
}

__global__ void moe_count(const int* ids, unsigned pairs, unsigned experts, int* chunk_counts, int* rank_in_chunk,
                          MoeErr* err, MoeStreamState* st) {
  __shared__ int s_ids[kMoeChunk];
  extern __shared__ int s_counts[];
  const unsigned c = blockIdx.x;
  const unsigned p = c * kMoeChunk + threadIdx.x;
  for (unsigned e = threadIdx.x; e < experts; e += blockDim.x) s_counts[e] = 0;
  const int e = p < pairs ? usable_id(ids[p], experts, p, err, st) : -1;
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

// Exclusive prefix sum of a[0..n) in shared memory, in place, by the whole block (every thread
// calls it); `part` is shared scratch of blockDim.x ints. Returns the total.
__device__ int block_exclusive_scan(int* a, unsigned n, int* part) {
  const unsigned per = (n + blockDim.x - 1) / blockDim.x;
  const unsigned lo = min(n, threadIdx.x * per), hi = min(n, lo + per);
  int sum = 0;
  for (unsigned i = lo; i < hi; i++) sum += a[i];
  part[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned off = 1; off < blockDim.x; off <<= 1) {  // Hillis-Steele over the threads' sums
    const int v = threadIdx.x >= off ? part[threadIdx.x - off] : 0;
    __syncthreads();
    part[threadIdx.x] += v;
    __syncthreads();
  }
  int at = part[threadIdx.x] - sum;
  for (unsigned i = lo; i < hi; i++) {
    const int x = a[i];
    a[i] = at;
    at += x;
  }
  const int total = part[blockDim.x - 1];
  __syncthreads();
  return total;
}

// Shared memory of moe_scan with `experts` experts and `threads` threads.
constexpr size_t scan_smem(unsigned experts, unsigned threads) { return (size_t(experts) + threads) * sizeof(int); }

// One block: every expert's total (written to `counts_out`, staging byte 0: the routes), each
// chunk's base within its expert (in place of chunk_counts), and the exclusive prefix over experts
// (`first[e]`: the packed row where expert e's rows start — streams are in rank order, and a
// rank's experts are contiguous, so this is the row index in staging too). The prefix runs in
// shared memory across the block.
// With `round` (a stream-ordered instance): thread 0 also counts the round on the device.
__global__ void moe_scan(int* chunk_counts, unsigned chunks, unsigned experts, int* counts_out, int* first,
                         unsigned long long* round) {
  extern __shared__ int sh_scan[];
  int* tot = sh_scan;
  int* part = sh_scan + experts;
  if (round && threadIdx.x == 0) *round += 1;
  for (unsigned e = threadIdx.x; e < experts; e += blockDim.x) {
    int sum = 0;
    for (unsigned c = 0; c < chunks; c++) {
      const int n = chunk_counts[size_t(c) * experts + e];
      chunk_counts[size_t(c) * experts + e] = sum;
      sum += n;
    }
    counts_out[e] = sum;
    tot[e] = sum;
  }
  __syncthreads();
  block_exclusive_scan(tot, experts, part);
  for (unsigned e = threadIdx.x; e < experts; e += blockDim.x) first[e] = tot[e];
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
  if (e < 0 || e >= static_cast<int>(experts)) {  // moe_count reported ids out of range
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
  // The table copied into the block's shared memory `sh` (every thread of the block calls it).
  __device__ MoeTable shared(long long* sh) const {
    const size_t n = L + 3 * size_t(W) * L + 2 * size_t(W);
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) sh[i] = t[i];
    __syncthreads();
    return MoeTable{sh, W, L};
  }
  // Row i of the expert blocks: its source and position in that source's stream.
  __device__ void origin(size_t i, unsigned* src, long long* pos) const {
    // The last expert whose block starts at or before i (blocks are in expert order; empty ones
    // share their start with the next).
    unsigned lo = 0, hi = L - 1;
    while (lo < hi) {
      const unsigned mid = (lo + hi + 1) / 2;
      if (expert_off(mid) <= static_cast<long long>(i)) lo = mid;
      else hi = mid - 1;
    }
    const unsigned j = lo;
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
                           const long long* src_base, const int* total) {
  extern __shared__ long long sh_table[];
  if (total) tab = tab.shared(sh_table);  // stream-ordered: every row of the grid reads the table
  const size_t n = total ? static_cast<size_t>(*total) : gridDim.x;
  for (size_t i = blockIdx.x; i < n; i += gridDim.x) {
  unsigned s;
  long long p;
  tab.origin(i, &s, &p);
  if (p < 0) continue;
  const size_t at = p < P ? priv_off + (size_t(s) * P + size_t(p)) * row_stride
                          : size_t(tab.overflow(s)) + size_t(p - P) * row_stride;
  const uint8_t* reg = src_base ? reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(src_base[s])) : region;
  copy_any(expert_x + i * token_bytes, reg + at + 8, token_bytes);
  if (scale_bytes) copy_any(expert_scales + i * scale_bytes, reg + at + 8 + token_bytes, scale_bytes);
  }
}

// Combine-send: block per expert-output row; it goes to its source's span of the combine staging
// at its stream position (rows return in the order they were sent).
// With `peers`, rows go straight into each source's combine region (span(s) then holds the rows s
// sent to ranks before this one: where this rank's rows start there).
// `dst_base` (W addresses, or null): where each source's rows go (already at its combine area).
__global__ void moe_combine_pack(MoeTable tab, const uint8_t* expert_out, size_t out_row, uint8_t* staging,
                                 size_t combine_base, uint8_t* const* peers, const long long* dst_base,
                                 const int* total) {
  extern __shared__ long long sh_table[];
  if (total) tab = tab.shared(sh_table);
  const size_t n = total ? static_cast<size_t>(*total) : gridDim.x;
  for (size_t i = blockIdx.x; i < n; i += gridDim.x) {
  unsigned s;
  long long p;
  tab.origin(i, &s, &p);
  if (p < 0) continue;
  uint8_t* base = dst_base ? reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(dst_base[s]))
                 : peers  ? peers[s] + combine_base
                          : staging + combine_base;
  copy_any(base + size_t(tab.span(s) + p) * out_row, expert_out + i * out_row, out_row);
  }
  __threadfence_system();
}

// GPU-driven NVLink: tell every peer this rank's phase is in its region. One block: copy this
// rank's counts (if any) into every peer's routes slot for it, fence, then raise flag `me` of
// every peer's flag row to `round`. Every store of the phase's kernels before this one is visible
// to the peers first (kernel order on the stream, and the system-scope fence).
// With `round_dev` (a stream-ordered instance), the round is read from the device instead.
__global__ void moe_signal(uint8_t* const* peers, unsigned W, unsigned me, const int* counts, unsigned experts,
                           size_t routes_off, size_t flags_off, unsigned long long round,
                           const unsigned long long* round_dev) {
  if (round_dev) round = *round_dev;
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

// ---------------------------------------------------------------------------------------------
// Stream-ordered GPU-driven NVLink (MoeStream): the same region, flags and kernels, with nothing
// taken from the host per call — the round is counted on the device (moe_scan), waits read it from
// there, and the receive layout (the table, tokens per expert, the rows received) is computed by
// moe_layout from the routes the peers wrote. Every launch has a fixed shape, so a decode step's
// kernels replay from a CUDA graph with new routing in the same buffers.
// Wait until every rank's flag in this rank's `flags_off` row reached the device round. Gives up
// after `timeout_ns` (reporting `code`) and marks the instance failed; a failed instance's waits
// return at once, so its later phases finish without blocking the stream.
__global__ void moe_wait_st(const uint8_t* region, size_t flags_off, unsigned W, MoeStreamState* st,
                            unsigned long long timeout_ns, MoeErr* err, int code) {
  if (st->failed) return;
  const unsigned long long round = st->round;
  const volatile unsigned long long* f = reinterpret_cast<const volatile unsigned long long*>(region + flags_off);
  unsigned long long start;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  for (unsigned s = 0; s < W; s++)
    while (f[s] < round) {
      unsigned long long now;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
      if (now - start > timeout_ns) {
        st->failed = 1;
        report(err, &st->claimed, code, static_cast<long long>(round), static_cast<int>(s),
               static_cast<long long>(f[s]));
        return;
      }
    }
  __threadfence_system();
}

// One block, after the dispatch wait: from the routes every source wrote into this region (W × E
// counts), this rank's receive table (MoeTable: expert starts; per source and local expert the
// destination row, the position in the source's stream, the count; overflow 0; per source where
// this rank's rows start in its stream, for combine), tokens per expert, expert offsets, and the
// rows received. Counts that do not fit the config (negative, more rows than a private slot holds)
// are reported; the instance is then failed and receives nothing.
__global__ void moe_layout(const uint8_t* region, size_t routes_off, unsigned W, unsigned E, unsigned L, unsigned me,
                           unsigned P, long long* table, int* tokens_per_expert, int* expert_offsets,
                           MoeStreamState* st, MoeErr* err) {
  // Shared: n(s, j) for every source and local expert, each source's rows for ranks before this
  // one, the experts' totals (then their starts), the scan's scratch. See layout_smem.
  extern __shared__ int sh_layout[];
  int* s_n = sh_layout;
  int* s_before = s_n + size_t(W) * L;
  int* s_tpe = s_before + W;
  int* part = s_tpe + L;
  __shared__ int bad;
  const int* r = reinterpret_cast<const int*>(region + routes_off);
  long long* expert_off = table;
  long long* sj = table + L;
  long long* overflow = table + L + 3 * size_t(W) * L;
  long long* span = overflow + W;
  if (threadIdx.x == 0) bad = st->failed ? -2 : -1;
  for (unsigned s = threadIdx.x; s < W; s += blockDim.x) s_before[s] = 0;
  for (unsigned i = threadIdx.x; i < W * L; i += blockDim.x)
    s_n[i] = r[size_t(i / L) * E + size_t(me) * L + i % L];
  __syncthreads();
  for (unsigned s = 0; s < W; s++) {  // rows s sent to ranks before this one: where ours start in its stream
    int sum = 0;
    for (unsigned e = threadIdx.x; e < me * L; e += blockDim.x) sum += r[size_t(s) * E + e];
    if (sum) atomicAdd(&s_before[s], sum);
  }
  // Per source: counts non-negative, the stream to this rank within its private slot.
  for (unsigned s = threadIdx.x; s < W; s += blockDim.x) {
    long long sum = 0;
    bool ok = true;
    for (unsigned j = 0; j < L; j++) {
      const int x = s_n[size_t(s) * L + j];
      ok = ok && x >= 0;
      sum += x;
    }
    if (!ok || sum > P) {
      atomicCAS(&bad, -1, static_cast<int>(s));
      report(err, &st->claimed, kErrRoutes, static_cast<long long>(st->round), static_cast<int>(s), sum);
    }
  }
  __syncthreads();
  if (bad != -1) {
    for (unsigned j = threadIdx.x; j < L; j += blockDim.x) {
      tokens_per_expert[j] = 0;
      expert_offsets[j] = 0;
    }
    if (threadIdx.x == 0) {
      st->failed = 1;
      st->total = 0;
    }
    return;
  }
  for (unsigned j = threadIdx.x; j < L; j += blockDim.x) {
    int sum = 0;
    for (unsigned s = 0; s < W; s++) sum += s_n[size_t(s) * L + j];
    s_tpe[j] = sum;
    tokens_per_expert[j] = sum;
  }
  __syncthreads();
  const int total = block_exclusive_scan(s_tpe, L, part);
  for (unsigned j = threadIdx.x; j < L; j += blockDim.x) {
    long long dst = s_tpe[j];
    expert_off[j] = dst;
    expert_offsets[j] = s_tpe[j];
    for (unsigned s = 0; s < W; s++) {
      const int n = s_n[size_t(s) * L + j];
      sj[3 * (size_t(s) * L + j)] = dst;
      sj[3 * (size_t(s) * L + j) + 2] = n;
      dst += n;
    }
  }
  if (threadIdx.x == 0) st->total = total;
  for (unsigned s = threadIdx.x; s < W; s += blockDim.x) {
    long long pos = 0;
    for (unsigned j = 0; j < L; j++) {
      sj[3 * (size_t(s) * L + j) + 1] = pos;
      pos += s_n[size_t(s) * L + j];
    }
    overflow[s] = 0;
    span[s] = s_before[s];
  }
}
// Shared memory of moe_layout.
constexpr size_t layout_smem(unsigned W, unsigned L, unsigned threads) {
  return (size_t(W) * L + W + L + threads) * sizeof(int);
}
// The receive table's entries (int64): see MoeTable.
__host__ __device__ constexpr size_t table_entries(unsigned W, unsigned L) { return L + 3 * size_t(W) * L + 2 * size_t(W); }

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
  if (chunks) moe_count<<<chunks, kMoeChunk, experts * sizeof(int), s>>>(ids, pairs, experts, chunk_counts, rank_in_chunk, nullptr, nullptr);
  else cudaMemsetAsync(chunk_counts, 0, experts * sizeof(int), s);
  moe_scan<<<1, 1024, scan_smem(experts, 1024), s>>>(chunk_counts, chunks ? chunks : 1, experts, counts_out, first, nullptr);
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
  if (chunks) moe_count<<<chunks, kMoeChunk, experts * sizeof(int), s>>>(ids, pairs, experts, chunk_counts, rank_in_chunk, nullptr, nullptr);
  else cudaMemsetAsync(chunk_counts, 0, experts * sizeof(int), s);
  moe_scan<<<1, 1024, scan_smem(experts, 1024), s>>>(chunk_counts, chunks ? chunks : 1, experts, counts_out, first, nullptr);
  auto* bases = reinterpret_cast<uint8_t* const*>(peers);
  if (pairs)
    moe_pack<<<pairs, 128, 0, s>>>(ids, pairs, topk, experts, local, chunk_counts, rank_in_chunk, first,
                                   static_cast<const uint8_t*>(tokens), token_bytes, static_cast<const uint8_t*>(scales),
                                   scale_bytes, static_cast<uint8_t*>(staging), rows_base, row_stride, combine_off, out_row,
                                   row_at, bases, priv_off, me, P, ret_base);
  moe_signal<<<1, 256, 0, s>>>(bases, W, me, counts_out, experts, routes_off, flags_off, round, nullptr);
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
                                                    out_row, nullptr, combine_off, bases, dst_base, nullptr);
  moe_signal<<<1, 32, 0, s>>>(bases, W, me, nullptr, 0, 0, flags_off, round, nullptr);
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
                                            static_cast<uint8_t*>(expert_scales), src_base, nullptr);
  return cudaGetLastError();
}

extern "C" cudaError_t trellis_moe_combine_pack(const long long* table, unsigned W, unsigned L, size_t rows,
                                                const void* expert_out, size_t out_row, void* staging,
                                                size_t combine_base, void* go, unsigned long long round,
                                                cudaStream_t s) {
  if (rows)
    moe_combine_pack<<<unsigned(rows), 128, 0, s>>>(MoeTable{table, W, L}, static_cast<const uint8_t*>(expert_out),
                                                    out_row, static_cast<uint8_t*>(staging), combine_base, nullptr, nullptr,
                                                    nullptr);
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

// ---- Stream-ordered launchers (MoeStream). `st` and `err` are the instance's state (device) and
// error words (mapped host memory); `grid` the fixed block count of the row kernels.

// Dispatch-send: count (ids checked), scan (the round counted on the device), pack every row into
// its receiver's private slot for this rank, signal.
extern "C" cudaError_t trellis_moe_st_dispatch_send(const int* ids, unsigned pairs, unsigned topk, unsigned experts,
                                                    unsigned local, void* scratch, const void* tokens,
                                                    size_t token_bytes, const void* scales, size_t scale_bytes,
                                                    int* counts_out, size_t row_stride, size_t combine_off,
                                                    size_t out_row, long long* row_at, void* const* peers, unsigned W,
                                                    unsigned me, size_t priv_off, unsigned P, size_t routes_off,
                                                    size_t flags_off, void* state, void* err, cudaStream_t s) {
  auto* st = static_cast<MoeStreamState*>(state);
  auto* e = static_cast<MoeErr*>(err);
  const unsigned chunks = (pairs + kMoeChunk - 1) / kMoeChunk;
  int* rank_in_chunk = static_cast<int*>(scratch);
  int* chunk_counts = rank_in_chunk + pairs;
  int* first = chunk_counts + size_t(chunks ? chunks : 1) * experts;
  if (chunks)
    moe_count<<<chunks, kMoeChunk, experts * sizeof(int), s>>>(ids, pairs, experts, chunk_counts, rank_in_chunk, e, st);
  else cudaMemsetAsync(chunk_counts, 0, experts * sizeof(int), s);
  moe_scan<<<1, 1024, scan_smem(experts, 1024), s>>>(chunk_counts, chunks ? chunks : 1, experts, counts_out, first, &st->round);
  auto* bases = reinterpret_cast<uint8_t* const*>(peers);
  if (pairs)
    moe_pack<<<pairs, 128, 0, s>>>(ids, pairs, topk, experts, local, chunk_counts, rank_in_chunk, first,
                                   static_cast<const uint8_t*>(tokens), token_bytes, static_cast<const uint8_t*>(scales),
                                   scale_bytes, nullptr, 0, row_stride, combine_off, out_row, row_at, bases, priv_off,
                                   me, P, nullptr);
  moe_signal<<<1, 256, 0, s>>>(bases, W, me, counts_out, experts, routes_off, flags_off, 0, &st->round);
  return cudaGetLastError();
}

// Dispatch-recv: wait for every rank's dispatch flag, lay out the table from the routes, unpack.
extern "C" cudaError_t trellis_moe_st_dispatch_recv(const void* region, size_t flags_off, unsigned W, unsigned E,
                                                    unsigned L, unsigned me, unsigned P, size_t routes_off,
                                                    size_t priv_off, size_t row_stride, size_t token_bytes,
                                                    size_t scale_bytes, long long* table, int* tokens_per_expert,
                                                    int* expert_offsets, void* expert_x, void* expert_scales,
                                                    unsigned long long timeout_ns, unsigned grid, void* state,
                                                    void* err, cudaStream_t s) {
  auto* st = static_cast<MoeStreamState*>(state);
  auto* e = static_cast<MoeErr*>(err);
  const auto* reg = static_cast<const uint8_t*>(region);
  moe_wait_st<<<1, 1, 0, s>>>(reg, flags_off, W, st, timeout_ns, e, kErrTimeoutDispatch);
  moe_layout<<<1, 256, layout_smem(W, L, 256), s>>>(reg, routes_off, W, E, L, me, P, table, tokens_per_expert, expert_offsets, st, e);
  moe_unpack<<<grid, 128, table_entries(W, L) * 8, s>>>(MoeTable{table, W, L}, reg, priv_off, P, row_stride, token_bytes, scale_bytes,
                                  static_cast<uint8_t*>(expert_x), static_cast<uint8_t*>(expert_scales), nullptr,
                                  &st->total);
  return cudaGetLastError();
}

// Combine-send: every expert-output row into its source's combine region, signal.
extern "C" cudaError_t trellis_moe_st_combine_send(const long long* table, unsigned W, unsigned L,
                                                   const void* expert_out, size_t out_row, void* const* peers,
                                                   size_t combine_off, unsigned me, size_t flags_off, unsigned grid,
                                                   void* state, cudaStream_t s) {
  auto* st = static_cast<MoeStreamState*>(state);
  auto* bases = reinterpret_cast<uint8_t* const*>(peers);
  moe_combine_pack<<<grid, 128, table_entries(W, L) * 8, s>>>(MoeTable{table, W, L}, static_cast<const uint8_t*>(expert_out), out_row,
                                        nullptr, combine_off, bases, nullptr, &st->total);
  moe_signal<<<1, 32, 0, s>>>(bases, W, me, nullptr, 0, 0, flags_off, 0, &st->round);
  return cudaGetLastError();
}

// Combine-recv: wait for every rank's combine flag, then the weighted sum per token.
extern "C" cudaError_t trellis_moe_st_combine_recv(const void* region, size_t flags_off, unsigned W,
                                                   const long long* row_at, const float* weights, unsigned tokens,
                                                   unsigned topk, unsigned hidden, int row_fp32, void* out,
                                                   int out_fp32, unsigned long long timeout_ns, void* state, void* err,
                                                   cudaStream_t s) {
  auto* st = static_cast<MoeStreamState*>(state);
  moe_wait_st<<<1, 1, 0, s>>>(static_cast<const uint8_t*>(region), flags_off, W, st, timeout_ns,
                              static_cast<MoeErr*>(err), kErrTimeoutCombine);
  if (tokens)
    moe_combine<<<tokens, 256, 0, s>>>(static_cast<const uint8_t*>(region), row_at, weights, topk, hidden, row_fp32,
                                       out, out_fp32);
  return cudaGetLastError();
}

// Bytes of an instance's device state (MoeStreamState) and error words (MoeErr).
extern "C" size_t trellis_moe_st_state_bytes() { return sizeof(MoeStreamState); }
extern "C" size_t trellis_moe_st_err_bytes() { return 2 * sizeof(MoeErr); }
