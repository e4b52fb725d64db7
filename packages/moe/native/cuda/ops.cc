// The optional CUDA target of @trellis/moe's addon: the N-API calls behind `cudaMoeOps()` — the
// generic memory calls (shared with @trellis/cuda through the kit's cuda_napi.hpp), the indexed row
// copy and combine kernels, and the kernels of the proxy-driven and GPU-driven modes (kernels.cu).
// Built when CMake finds nvcc (TRELLIS_MOE_HAVE_CUDA); without it every call throws that reason.
#include <napi.h>

#include <cstdint>
#include <string>

#ifdef TRELLIS_MOE_HAVE_CUDA
#include <cuda_runtime.h>

#include <vector>

#include "trellis/cuda_napi.hpp"

extern "C" cudaError_t trellis_copy_rows(void* dst, const void* doff, const void* src, const void* soff, size_t n,
                                         size_t bytes, cudaStream_t s);
extern "C" cudaError_t trellis_moe_combine(const void* rows, const void* row_at, const void* w, unsigned tokens,
                                           unsigned topk, unsigned hidden, int row_fp32, void* out, int out_fp32,
                                           cudaStream_t s);
extern "C" size_t trellis_moe_pack_scratch(size_t pairs, size_t experts);
extern "C" cudaError_t trellis_moe_dispatch_pack(const int* ids, unsigned pairs, unsigned topk, unsigned experts,
                                                 unsigned local, void* scratch, const void* tokens, size_t token_bytes,
                                                 const void* scales, size_t scale_bytes, void* staging, size_t rows_base,
                                                 size_t row_stride, size_t combine_off, size_t out_row, long long* row_at,
                                                 void* go, unsigned long long round, cudaStream_t s);
extern "C" cudaError_t trellis_moe_unpack(const long long* table, unsigned W, unsigned L, size_t rows, const void* region,
                                          size_t priv_off, unsigned P, size_t row_stride, size_t token_bytes,
                                          size_t scale_bytes, void* expert_x, void* expert_scales,
                                          const long long* src_base, cudaStream_t s);
extern "C" cudaError_t trellis_moe_combine_pack(const long long* table, unsigned W, unsigned L, size_t rows,
                                                const void* expert_out, size_t out_row, void* staging,
                                                size_t combine_base, void* go, unsigned long long round,
                                                cudaStream_t s);
extern "C" cudaError_t trellis_moe_dispatch_direct(const int* ids, unsigned pairs, unsigned topk, unsigned experts,
                                                   unsigned local, void* scratch, const void* tokens, size_t token_bytes,
                                                   const void* scales, size_t scale_bytes, int* counts_out,
                                                   size_t row_stride, size_t combine_off, size_t out_row,
                                                   long long* row_at, void* const* peers, unsigned W, unsigned me,
                                                   size_t priv_off, unsigned P, size_t routes_off, size_t flags_off,
                                                   unsigned long long round, void* staging, size_t rows_base,
                                                   const long long* ret_base, void* go, cudaStream_t s);
extern "C" cudaError_t trellis_moe_wait(const void* region, size_t flags_off, unsigned W, unsigned long long round,
                                        unsigned long long timeout_ns, int* timed_out, unsigned long long mask,
                                        cudaStream_t s);
extern "C" cudaError_t trellis_moe_combine_direct(const long long* table, unsigned W, unsigned L, size_t rows,
                                                  const void* expert_out, size_t out_row, void* const* peers,
                                                  size_t combine_off, unsigned me, size_t flags_off,
                                                  unsigned long long round, const long long* dst_base, void* go,
                                                  cudaStream_t s);
extern "C" cudaError_t trellis_moe_st_dispatch_send(const int* ids, unsigned pairs, unsigned topk, unsigned experts,
                                                    unsigned local, void* scratch, const void* tokens,
                                                    size_t token_bytes, const void* scales, size_t scale_bytes,
                                                    int* counts_out, size_t row_stride, size_t combine_off,
                                                    size_t out_row, long long* row_at, void* const* peers, unsigned W,
                                                    unsigned me, size_t priv_off, unsigned P, size_t routes_off,
                                                    size_t flags_off, void* state, void* err, cudaStream_t s);
extern "C" cudaError_t trellis_moe_st_dispatch_recv(const void* region, size_t flags_off, unsigned W, unsigned E,
                                                    unsigned L, unsigned me, unsigned P, size_t routes_off,
                                                    size_t priv_off, size_t row_stride, size_t token_bytes,
                                                    size_t scale_bytes, long long* table, int* tokens_per_expert,
                                                    int* expert_offsets, void* expert_x, void* expert_scales,
                                                    unsigned long long timeout_ns, unsigned grid, void* state,
                                                    void* err, cudaStream_t s);
extern "C" cudaError_t trellis_moe_st_combine_send(const long long* table, unsigned W, unsigned L,
                                                   const void* expert_out, size_t out_row, void* const* peers,
                                                   size_t combine_off, unsigned me, size_t flags_off, unsigned grid,
                                                   void* state, cudaStream_t s);
extern "C" cudaError_t trellis_moe_st_combine_recv(const void* region, size_t flags_off, unsigned W,
                                                   const long long* row_at, const float* weights, unsigned tokens,
                                                   unsigned topk, unsigned hidden, int row_fp32, void* out,
                                                   int out_fp32, unsigned long long timeout_ns, void* state, void* err,
                                                   cudaStream_t s);
extern "C" size_t trellis_moe_st_state_bytes();
extern "C" size_t trellis_moe_st_err_bytes();
#endif

namespace trellis_moe {
namespace {

#ifdef TRELLIS_MOE_HAVE_CUDA
using trellis::cuda_napi::check;
using trellis::cuda_napi::fail;
using trellis::cuda_napi::num;
using trellis::cuda_napi::ptr;
using trellis::cuda_napi::set_device;
using trellis::cuda_napi::u64;

// Device scratch for the kernels' index arrays, one per device, grown on demand (JS thread only).
struct Scratch {
  void* p = nullptr;
  size_t n = 0;
};
Scratch scratch[64];
void* scratch_for(const Napi::Env& env, int device, size_t bytes) {
  if (device < 0 || device >= 64) {
    fail(env, "device ordinal out of range");
    return nullptr;
  }
  Scratch& s = scratch[device];
  if (s.n < bytes) {
    if (s.p) cudaFree(s.p);
    s.p = nullptr;
    s.n = 0;
    size_t want = bytes < (1u << 20) ? (1u << 20) : bytes * 2;
    if (!check(env, cudaMalloc(&s.p, want), "cudaMalloc (kernel scratch)")) return nullptr;
    s.n = want;
  }
  return s.p;
}

// copyRowsIndexed(device, dst, Float64Array dstOffsets, src, Float64Array srcOffsets, bytes)
Napi::Value CopyRowsIndexed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  auto d = info[2].As<Napi::Float64Array>();
  auto s = info[4].As<Napi::Float64Array>();
  size_t n = d.ElementLength();
  if (s.ElementLength() != n) return fail(env, "copyRows: dstOffsets and srcOffsets differ in length");
  size_t bytes = static_cast<size_t>(info[5].As<Napi::Number>().Int64Value());
  if (n == 0 || bytes == 0) return env.Undefined();
  std::vector<unsigned long long> off(2 * n);
  for (size_t i = 0; i < n; i++) {
    off[i] = static_cast<unsigned long long>(d[i]);
    off[n + i] = static_cast<unsigned long long>(s[i]);
  }
  void* dev = scratch_for(env, info[0].As<Napi::Number>().Int32Value(), off.size() * 8);
  if (!dev) return env.Undefined();
  if (!check(env, cudaMemcpy(dev, off.data(), off.size() * 8, cudaMemcpyHostToDevice), "cudaMemcpy (row offsets)"))
    return env.Undefined();
  auto* o = static_cast<unsigned long long*>(dev);
  if (!check(env, trellis_copy_rows(ptr(info[1]), o, ptr(info[3]), o + n, n, bytes, nullptr), "copy_rows launch"))
    return env.Undefined();
  check(env, cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return env.Undefined();
}

// moeCombine(device, rows, Float64Array rowAt, Float32Array weights, topk, hidden, rowFp32, out, outFp32)
Napi::Value MoeCombine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  auto at = info[2].As<Napi::Float64Array>();
  auto w = info[3].As<Napi::Float32Array>();
  unsigned topk = info[4].As<Napi::Number>().Uint32Value();
  unsigned hidden = info[5].As<Napi::Number>().Uint32Value();
  size_t n = at.ElementLength();
  if (topk == 0 || n % topk || w.ElementLength() != n) return fail(env, "moeCombine: rowAt and weights must hold tokens × topk values");
  std::vector<long long> rows(n);
  for (size_t i = 0; i < n; i++) rows[i] = static_cast<long long>(at[i]);
  size_t need = n * 8 + n * 4;
  void* dev = scratch_for(env, info[0].As<Napi::Number>().Int32Value(), need);
  if (!dev) return env.Undefined();
  auto* d_at = static_cast<long long*>(dev);
  auto* d_w = reinterpret_cast<float*>(static_cast<uint8_t*>(dev) + n * 8);
  if (!check(env, cudaMemcpy(d_at, rows.data(), n * 8, cudaMemcpyHostToDevice), "cudaMemcpy (rowAt)") ||
      !check(env, cudaMemcpy(d_w, w.Data(), n * 4, cudaMemcpyHostToDevice), "cudaMemcpy (weights)"))
    return env.Undefined();
  if (!check(env,
             trellis_moe_combine(ptr(info[1]), d_at, d_w, static_cast<unsigned>(n / topk), topk, hidden,
                                 info[6].ToBoolean() ? 1 : 0, ptr(info[7]), info[8].ToBoolean() ? 1 : 0, nullptr),
             "moe_combine launch"))
    return env.Undefined();
  check(env, cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return env.Undefined();
}

// ---- MoE with the native proxy: kernels on one stream per device, ordered after the legacy
// default stream (a blocking stream), so work the caller queued there comes first.
cudaStream_t moe_streams[64] = {};
cudaStream_t moe_stream(const Napi::Env& env, int device) {
  if (device < 0 || device >= 64) {
    fail(env, "device ordinal out of range");
    return nullptr;
  }
  if (!moe_streams[device] && !check(env, cudaStreamCreate(&moe_streams[device]), "cudaStreamCreate")) return nullptr;
  return moe_streams[device];
}

// An optional pointer field: 0n or absent → nullptr.
void* opt_ptr(const Napi::Object& a, const char* k) {
  return a.Has(k) && a.Get(k).IsBigInt() ? ptr(a.Get(k)) : nullptr;
}

// The moe kernels' calls: the device set, its moe stream, the argument object (info[1]).
bool moe_args(const Napi::CallbackInfo& info, cudaStream_t* st, Napi::Object* a) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return false;
  *st = moe_stream(env, info[0].As<Napi::Number>().Int32Value());
  if (!*st) return false;
  *a = info[1].As<Napi::Object>();
  return true;
}

// The round's topk ids (host Int32Array `ids`) to `dev`, on the stream; *pairs gets their count.
bool put_ids(const Napi::Env& env, const Napi::Object& a, int* dev, size_t* pairs, cudaStream_t st) {
  auto ids = a.Get("ids").As<Napi::Int32Array>();
  *pairs = ids.ElementLength();
  return *pairs == 0 ||
         check(env, cudaMemcpyAsync(dev, ids.Data(), *pairs * 4, cudaMemcpyHostToDevice, st), "cudaMemcpyAsync (topk ids)");
}

// moePackScratch(pairs, experts) → bytes of device scratch moeDispatchPack needs
Napi::Value MoePackScratch(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(trellis_moe_pack_scratch(num(info[0]), num(info[1]))));
}

// moeDispatchPack(device, {ids: Int32Array, idsDev, topk, experts, local, scratch, tokens, tokenBytes, scales,
//   scaleBytes, staging, rowsBase, rowStride, combineOff, outRow, rowAt, go, round}) — returns at once
Napi::Value MoeDispatchPack(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!moe_args(info, &st, &a)) return env.Undefined();
  int* ids_dev = static_cast<int*>(ptr(a.Get("idsDev")));
  size_t pairs = 0;
  if (!put_ids(env, a, ids_dev, &pairs, st)) return env.Undefined();
  check(env,
        trellis_moe_dispatch_pack(ids_dev, unsigned(pairs), unsigned(num(a.Get("topk"))), unsigned(num(a.Get("experts"))),
                                  unsigned(num(a.Get("local"))), ptr(a.Get("scratch")), ptr(a.Get("tokens")),
                                  num(a.Get("tokenBytes")), ptr(a.Get("scales")), num(a.Get("scaleBytes")),
                                  ptr(a.Get("staging")), num(a.Get("rowsBase")), num(a.Get("rowStride")),
                                  num(a.Get("combineOff")), num(a.Get("outRow")),
                                  static_cast<long long*>(ptr(a.Get("rowAt"))), ptr(a.Get("go")),
                                  u64(a.Get("round")), st),
        "moe dispatch pack launch");
  return env.Undefined();
}

// The receive table to the device (int64), on the stream.
bool put_table(const Napi::Env& env, const Napi::Value& v, void* dev, cudaStream_t st) {
  auto t = v.As<Napi::Float64Array>();
  std::vector<long long> x(t.ElementLength());
  for (size_t i = 0; i < x.size(); i++) x[i] = static_cast<long long>(t[i]);
  // From pageable memory: returns once the bytes are staged, so `x` may go.
  return check(env, cudaMemcpyAsync(dev, x.data(), x.size() * 8, cudaMemcpyHostToDevice, st), "cudaMemcpyAsync (table)");
}

// moeUnpack(device, {table: Float64Array, tableDev, W, L, rows, region, privOff, P, rowStride, tokenBytes,
//   scaleBytes, expertX, expertScales}) — returns when the expert blocks are in place
Napi::Value MoeUnpack(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!moe_args(info, &st, &a)) return env.Undefined();
  void* table = ptr(a.Get("tableDev"));
  if (!put_table(env, a.Get("table"), table, st)) return env.Undefined();
  if (!check(env,
             trellis_moe_unpack(static_cast<const long long*>(table), unsigned(num(a.Get("W"))), unsigned(num(a.Get("L"))),
                                num(a.Get("rows")), ptr(a.Get("region")), num(a.Get("privOff")), unsigned(num(a.Get("P"))),
                                num(a.Get("rowStride")), num(a.Get("tokenBytes")), num(a.Get("scaleBytes")),
                                ptr(a.Get("expertX")), ptr(a.Get("expertScales")),
                                static_cast<const long long*>(opt_ptr(a, "srcBase")), st),
             "moe unpack launch"))
    return env.Undefined();
  check(env, cudaStreamSynchronize(st), "cudaStreamSynchronize");
  return env.Undefined();
}

// moeCombinePack(device, {tableDev, W, L, rows, expertOut, outRow, staging, combineBase, go, round}) — at once
Napi::Value MoeCombinePack(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!moe_args(info, &st, &a)) return env.Undefined();
  check(env,
        trellis_moe_combine_pack(static_cast<const long long*>(ptr(a.Get("tableDev"))), unsigned(num(a.Get("W"))),
                                 unsigned(num(a.Get("L"))), num(a.Get("rows")), ptr(a.Get("expertOut")),
                                 num(a.Get("outRow")), ptr(a.Get("staging")), num(a.Get("combineBase")), ptr(a.Get("go")),
                                 u64(a.Get("round")), st),
        "moe combine pack launch");
  return env.Undefined();
}

// moeGather(device, {region, rowAt, weights: Float32Array, weightsDev, topk, hidden, rowFp32, out, outFp32})
// — the weighted sum of each token's returned rows; returns when `out` holds it
Napi::Value MoeGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!moe_args(info, &st, &a)) return env.Undefined();
  auto w = a.Get("weights").As<Napi::Float32Array>();
  unsigned topk = unsigned(num(a.Get("topk")));
  size_t n = w.ElementLength();
  if (topk == 0 || n % topk) return fail(env, "moeGather: weights must hold tokens × topk values");
  void* wd = ptr(a.Get("weightsDev"));
  if (n && !check(env, cudaMemcpyAsync(wd, w.Data(), n * 4, cudaMemcpyHostToDevice, st), "cudaMemcpyAsync (weights)"))
    return env.Undefined();
  if (!check(env,
             trellis_moe_combine(ptr(a.Get("region")), ptr(a.Get("rowAt")), wd, unsigned(n / topk), topk,
                                 unsigned(num(a.Get("hidden"))), a.Get("rowFp32").ToBoolean() ? 1 : 0, ptr(a.Get("out")),
                                 a.Get("outFp32").ToBoolean() ? 1 : 0, st),
             "moe_combine launch"))
    return env.Undefined();
  check(env, cudaStreamSynchronize(st), "cudaStreamSynchronize");
  return env.Undefined();
}

// ---- GPU-driven NVLink (every rank's region mapped here through CUDA IPC; no engine per round)

// moeDispatchDirect(device, {ids, idsDev, topk, experts, local, scratch, tokens, tokenBytes, scales, scaleBytes,
//   counts, rowStride, combineOff, outRow, rowAt, peers, W, me, privOff, P, routesOff, flagsOff, round}) — at once
Napi::Value MoeDispatchDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!moe_args(info, &st, &a)) return env.Undefined();
  int* ids_dev = static_cast<int*>(ptr(a.Get("idsDev")));
  size_t pairs = 0;
  if (!put_ids(env, a, ids_dev, &pairs, st)) return env.Undefined();
  check(env,
        trellis_moe_dispatch_direct(
            ids_dev, unsigned(pairs), unsigned(num(a.Get("topk"))), unsigned(num(a.Get("experts"))),
            unsigned(num(a.Get("local"))), ptr(a.Get("scratch")), ptr(a.Get("tokens")), num(a.Get("tokenBytes")),
            ptr(a.Get("scales")), num(a.Get("scaleBytes")), static_cast<int*>(ptr(a.Get("counts"))),
            num(a.Get("rowStride")), num(a.Get("combineOff")), num(a.Get("outRow")),
            static_cast<long long*>(ptr(a.Get("rowAt"))), static_cast<void* const*>(ptr(a.Get("peers"))),
            unsigned(num(a.Get("W"))), unsigned(num(a.Get("me"))), num(a.Get("privOff")), unsigned(num(a.Get("P"))),
            num(a.Get("routesOff")), num(a.Get("flagsOff")), u64(a.Get("round")), opt_ptr(a, "staging"),
            a.Has("rowsBase") ? num(a.Get("rowsBase")) : 0, static_cast<const long long*>(opt_ptr(a, "retBase")),
            opt_ptr(a, "go"), st),
        "moe dispatch direct launch");
  return env.Undefined();
}

// moeWaitFlags(device, {region, flagsOff, W, round, timeoutMs, timedOut (mapped int), routes?: Uint8Array,
//   routesOff}) → true when every flag reached `round` (then `routes` holds the routes); false on timeout.
// With `routes`, returns after the wait and the copy; without, the wait is queued and this returns at once.
Napi::Value MoeWaitFlags(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!moe_args(info, &st, &a)) return env.Undefined();
  int* timed_out = static_cast<int*>(ptr(a.Get("timedOut")));
  *reinterpret_cast<volatile int*>(timed_out) = 0;
  const void* region = ptr(a.Get("region"));
  if (!check(env,
             trellis_moe_wait(region, num(a.Get("flagsOff")), unsigned(num(a.Get("W"))), u64(a.Get("round")),
                              static_cast<unsigned long long>(num(a.Get("timeoutMs"))) * 1000000ull, timed_out,
                              a.Has("mask") && a.Get("mask").IsBigInt() ? u64(a.Get("mask")) : ~0ull, st),
             "moe wait launch"))
    return env.Undefined();
  if (!a.Has("routes") || !a.Get("routes").IsTypedArray()) return Napi::Boolean::New(env, true);
  auto routes = a.Get("routes").As<Napi::Uint8Array>();
  if (!check(env,
             cudaMemcpyAsync(routes.Data(), static_cast<const uint8_t*>(region) + num(a.Get("routesOff")),
                             routes.ByteLength(), cudaMemcpyDeviceToHost, st),
             "cudaMemcpyAsync (routes)") ||
      !check(env, cudaStreamSynchronize(st), "cudaStreamSynchronize"))
    return env.Undefined();
  return Napi::Boolean::New(env, *reinterpret_cast<volatile int*>(timed_out) == 0);
}

// moeCombineDirect(device, {tableDev, W, L, rows, expertOut, outRow, peers, combineOff, me, flagsOff, round}) — at once
Napi::Value MoeCombineDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!moe_args(info, &st, &a)) return env.Undefined();
  check(env,
        trellis_moe_combine_direct(static_cast<const long long*>(ptr(a.Get("tableDev"))), unsigned(num(a.Get("W"))),
                                   unsigned(num(a.Get("L"))), num(a.Get("rows")), ptr(a.Get("expertOut")),
                                   num(a.Get("outRow")), static_cast<void* const*>(ptr(a.Get("peers"))),
                                   num(a.Get("combineOff")), unsigned(num(a.Get("me"))), num(a.Get("flagsOff")),
                                   u64(a.Get("round")), static_cast<const long long*>(opt_ptr(a, "dstBase")),
                                   opt_ptr(a, "go"), st),
        "moe combine direct launch");
  return env.Undefined();
}

// ---- Stream-ordered GPU-driven NVLink (MoeStream): every call queues kernels on the caller's stream
// (`stream`, a cudaStream_t as bigint) and returns; nothing is copied from or to the host.

// The caller's stream, with the device set.
bool st_args(const Napi::CallbackInfo& info, cudaStream_t* st, Napi::Object* a) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return false;
  *a = info[1].As<Napi::Object>();
  *st = static_cast<cudaStream_t>(ptr(a->Get("stream")));
  return true;
}

// moeStreamSizes() → {state, err}: bytes of an instance's device state and mapped error words
Napi::Value MoeStreamSizes(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("state", double(trellis_moe_st_state_bytes()));
  o.Set("err", double(trellis_moe_st_err_bytes()));
  return o;
}

// moeSmCount(device) → multiprocessors (the row kernels' fixed grid is a multiple of it)
Napi::Value MoeSmCount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int n = 0;
  if (!check(env, cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, info[0].As<Napi::Number>().Int32Value()),
             "cudaDeviceGetAttribute"))
    return env.Undefined();
  return Napi::Number::New(env, n);
}

// moeStDispatchSend(device, {stream, ids, pairs, topk, experts, local, scratch, tokens, tokenBytes, scales, scaleBytes,
//   counts, rowStride, combineOff, outRow, rowAt, peers, W, me, privOff, P, routesOff, flagsOff, state, err})
Napi::Value MoeStDispatchSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!st_args(info, &st, &a)) return env.Undefined();
  check(env,
        trellis_moe_st_dispatch_send(
            static_cast<const int*>(ptr(a.Get("ids"))), unsigned(num(a.Get("pairs"))), unsigned(num(a.Get("topk"))),
            unsigned(num(a.Get("experts"))), unsigned(num(a.Get("local"))), ptr(a.Get("scratch")), ptr(a.Get("tokens")),
            num(a.Get("tokenBytes")), opt_ptr(a, "scales"), num(a.Get("scaleBytes")),
            static_cast<int*>(ptr(a.Get("counts"))), num(a.Get("rowStride")), num(a.Get("combineOff")),
            num(a.Get("outRow")), static_cast<long long*>(ptr(a.Get("rowAt"))),
            static_cast<void* const*>(ptr(a.Get("peers"))), unsigned(num(a.Get("W"))), unsigned(num(a.Get("me"))),
            num(a.Get("privOff")), unsigned(num(a.Get("P"))), num(a.Get("routesOff")), num(a.Get("flagsOff")),
            ptr(a.Get("state")), ptr(a.Get("err")), st),
        "moe stream dispatch-send launch");
  return env.Undefined();
}

// moeStDispatchRecv(device, {stream, region, flagsOff, W, E, L, me, P, routesOff, privOff, rowStride, tokenBytes,
//   scaleBytes, table, tokensPerExpert, expertOffsets, expertX, expertScales, timeoutMs, grid, state, err})
Napi::Value MoeStDispatchRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!st_args(info, &st, &a)) return env.Undefined();
  check(env,
        trellis_moe_st_dispatch_recv(
            ptr(a.Get("region")), num(a.Get("flagsOff")), unsigned(num(a.Get("W"))), unsigned(num(a.Get("E"))),
            unsigned(num(a.Get("L"))), unsigned(num(a.Get("me"))), unsigned(num(a.Get("P"))), num(a.Get("routesOff")),
            num(a.Get("privOff")), num(a.Get("rowStride")), num(a.Get("tokenBytes")), num(a.Get("scaleBytes")),
            static_cast<long long*>(ptr(a.Get("table"))), static_cast<int*>(ptr(a.Get("tokensPerExpert"))),
            static_cast<int*>(ptr(a.Get("expertOffsets"))), ptr(a.Get("expertX")), opt_ptr(a, "expertScales"),
            static_cast<unsigned long long>(num(a.Get("timeoutMs"))) * 1000000ull, unsigned(num(a.Get("grid"))),
            ptr(a.Get("state")), ptr(a.Get("err")), st),
        "moe stream dispatch-recv launch");
  return env.Undefined();
}

// moeStCombineSend(device, {stream, table, W, L, expertOut, outRow, peers, combineOff, me, flagsOff, grid, state})
Napi::Value MoeStCombineSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!st_args(info, &st, &a)) return env.Undefined();
  check(env,
        trellis_moe_st_combine_send(static_cast<const long long*>(ptr(a.Get("table"))), unsigned(num(a.Get("W"))),
                                    unsigned(num(a.Get("L"))), ptr(a.Get("expertOut")), num(a.Get("outRow")),
                                    static_cast<void* const*>(ptr(a.Get("peers"))), num(a.Get("combineOff")),
                                    unsigned(num(a.Get("me"))), num(a.Get("flagsOff")), unsigned(num(a.Get("grid"))),
                                    ptr(a.Get("state")), st),
        "moe stream combine-send launch");
  return env.Undefined();
}

// moeStCombineRecv(device, {stream, region, flagsOff, W, rowAt, weights, tokens, topk, hidden, rowFp32, out, outFp32,
//   timeoutMs, state, err})
Napi::Value MoeStCombineRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t st;
  Napi::Object a;
  if (!st_args(info, &st, &a)) return env.Undefined();
  check(env,
        trellis_moe_st_combine_recv(ptr(a.Get("region")), num(a.Get("flagsOff")), unsigned(num(a.Get("W"))),
                                    static_cast<const long long*>(ptr(a.Get("rowAt"))),
                                    static_cast<const float*>(ptr(a.Get("weights"))), unsigned(num(a.Get("tokens"))),
                                    unsigned(num(a.Get("topk"))), unsigned(num(a.Get("hidden"))),
                                    a.Get("rowFp32").ToBoolean() ? 1 : 0, ptr(a.Get("out")),
                                    a.Get("outFp32").ToBoolean() ? 1 : 0,
                                    static_cast<unsigned long long>(num(a.Get("timeoutMs"))) * 1000000ull,
                                    ptr(a.Get("state")), ptr(a.Get("err")), st),
        "moe stream combine-recv launch");
  return env.Undefined();
}

#else
Napi::Value NoCuda(const Napi::CallbackInfo& info) {
  Napi::Error::New(info.Env(), "@trellis/moe was built without CUDA (no nvcc at build time)").ThrowAsJavaScriptException();
  return info.Env().Undefined();
}
Napi::Value NoCudaStatus(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("error", "@trellis/moe was built without CUDA (no nvcc at build time)");
  o.Set("devices", 0);
  return o;
}
#endif

}  // namespace

// Adds the CUDA calls to the addon's exports (see src/cuda.ts for their JS side).
void register_cuda(Napi::Env env, Napi::Object exports) {
#ifdef TRELLIS_MOE_HAVE_CUDA
  exports.Set("cudaStatus", Napi::Function::New(env, trellis::cuda_napi::Status));
  trellis::cuda_napi::register_memory(env, exports);
  trellis::cuda_napi::register_streams(env, exports);
  exports.Set("moeStreamSizes", Napi::Function::New(env, MoeStreamSizes));
  exports.Set("moeSmCount", Napi::Function::New(env, MoeSmCount));
  exports.Set("moeStDispatchSend", Napi::Function::New(env, MoeStDispatchSend));
  exports.Set("moeStDispatchRecv", Napi::Function::New(env, MoeStDispatchRecv));
  exports.Set("moeStCombineSend", Napi::Function::New(env, MoeStCombineSend));
  exports.Set("moeStCombineRecv", Napi::Function::New(env, MoeStCombineRecv));
  exports.Set("copyRowsIndexed", Napi::Function::New(env, CopyRowsIndexed));
  exports.Set("moeCombine", Napi::Function::New(env, MoeCombine));
  exports.Set("moePackScratch", Napi::Function::New(env, MoePackScratch));
  exports.Set("moeDispatchPack", Napi::Function::New(env, MoeDispatchPack));
  exports.Set("moeUnpack", Napi::Function::New(env, MoeUnpack));
  exports.Set("moeCombinePack", Napi::Function::New(env, MoeCombinePack));
  exports.Set("moeGather", Napi::Function::New(env, MoeGather));
  exports.Set("moeDispatchDirect", Napi::Function::New(env, MoeDispatchDirect));
  exports.Set("moeWaitFlags", Napi::Function::New(env, MoeWaitFlags));
  exports.Set("moeCombineDirect", Napi::Function::New(env, MoeCombineDirect));
#else
  exports.Set("cudaStatus", Napi::Function::New(env, NoCudaStatus));
  for (const char* n : {"alloc", "free", "copy", "ipcExport", "ipcImport", "ipcClose", "allocMapped", "pointerRange",
                        "copyRowsIndexed", "moeCombine", "moePackScratch", "moeDispatchPack", "moeUnpack", "moeCombinePack", "moeGather", "moeDispatchDirect", "moeWaitFlags", "moeCombineDirect",
                        "moeStreamSizes", "moeSmCount", "moeStDispatchSend", "moeStDispatchRecv", "moeStCombineSend",
                        "moeStCombineRecv", "streamCreate", "streamDestroy", "streamSynchronize", "streamQuery",
                        "streamWaitEvent", "eventCreate", "eventDestroy", "eventRecord", "eventSynchronize",
                        "eventElapsed", "eventIpcExport", "eventIpcImport", "captureBegin", "captureEnd", "graphLaunch",
                        "graphDestroy", "enablePeerAccess"})
    exports.Set(n, Napi::Function::New(env, NoCuda));
#endif
}

}  // namespace trellis_moe
