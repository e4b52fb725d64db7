// @trellis/cuda: CUDA memory for Trellis — device allocations fit for RDMA, CUDA IPC export and
// import (a PyTorch process can hand its tensors to a Node agent), mapped pinned host words a
// kernel increments (the GPU watcher), and the kernels the tests use. Without CUDA at build time
// every call fails with that reason.
#include <dlfcn.h>
#include <napi.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#ifdef TRELLIS_HAVE_CUDA
#include <cuda_runtime.h>
extern "C" cudaError_t trellis_launch_increment_on_go(void* word, void* go, unsigned long long n, cudaStream_t s);
extern "C" cudaError_t trellis_launch_fill_pattern(void* p, size_t n, uint32_t seed, cudaStream_t s);
extern "C" cudaError_t trellis_launch_quantize_e4m3(const void* src, size_t src_offset, size_t src_pitch, unsigned rows,
                                                    unsigned cols, unsigned block, void* dst, void* scales, cudaStream_t s);
extern "C" cudaError_t trellis_count_pattern_mismatches(const void* p, size_t n, uint32_t seed, size_t at,
                                                        unsigned long long* out);
extern "C" cudaError_t trellis_count_pattern_mismatches_unordered(const void* p, size_t n, uint32_t seed, size_t at,
                                                        unsigned long long* out);
extern "C" cudaError_t trellis_copy_rows(void* dst, const void* doff, const void* src, const void* soff, size_t n,
                                         size_t bytes, cudaStream_t s);
extern "C" cudaError_t trellis_store_signal(void* word, unsigned long long value, cudaStream_t s);
#include <mutex>
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
#include <vector>
#endif

namespace {

Napi::Value fail(const Napi::Env& env, const std::string& what) {
  Napi::Error::New(env, what).ThrowAsJavaScriptException();
  return env.Undefined();
}

#ifdef TRELLIS_HAVE_CUDA
bool check(const Napi::Env& env, cudaError_t rc, const char* what) {
  if (rc == cudaSuccess) return true;
  Napi::Error::New(env, std::string(what) + ": " + cudaGetErrorName(rc) + " (" + cudaGetErrorString(rc) + ")")
      .ThrowAsJavaScriptException();
  return false;
}
uint64_t u64(const Napi::Value& v) {
  bool lossless = true;
  return v.As<Napi::BigInt>().Uint64Value(&lossless);
}
void* ptr(const Napi::Value& v) { return reinterpret_cast<void*>(static_cast<uintptr_t>(u64(v))); }
Napi::BigInt big(const Napi::Env& env, const void* p) { return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p))); }
bool set_device(const Napi::Env& env, const Napi::Value& v) {
  return check(env, cudaSetDevice(v.As<Napi::Number>().Int32Value()), "cudaSetDevice");
}
#endif

// info() → {built, error, runtimeVersion, driverVersion, devices: [...]}
Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
#ifndef TRELLIS_HAVE_CUDA
  o.Set("built", false);
  o.Set("error", "@trellis/cuda was built without CUDA (no nvcc at build time)");
  o.Set("devices", Napi::Array::New(env));
  return o;
#else
  o.Set("built", true);
  int rt = 0, drv = 0, n = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  o.Set("runtimeVersion", rt);
  o.Set("driverVersion", drv);
  cudaError_t rc = cudaGetDeviceCount(&n);
  Napi::Array devs = Napi::Array::New(env);
  if (rc != cudaSuccess) {
    o.Set("error", std::string("no usable GPU: ") + cudaGetErrorName(rc) + " (" + cudaGetErrorString(rc) + ")");
    n = 0;
  } else {
    o.Set("error", "");
  }
  for (int i = 0; i < n; i++) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    Napi::Object d = Napi::Object::New(env);
    char bus[32] = {};
    cudaDeviceGetPCIBusId(bus, sizeof bus, i);
    int rdma = 0, canMap = 0;
    cudaDeviceGetAttribute(&rdma, cudaDevAttrGPUDirectRDMASupported, i);
    cudaDeviceGetAttribute(&canMap, cudaDevAttrCanMapHostMemory, i);
    d.Set("index", i);
    d.Set("name", std::string(p.name));
    d.Set("pciBusId", std::string(bus));
    d.Set("memoryBytes", static_cast<double>(p.totalGlobalMem));
    d.Set("computeCapability", std::to_string(p.major) + "." + std::to_string(p.minor));
    d.Set("gpuDirectRdma", rdma != 0);
    d.Set("canMapHostMemory", canMap != 0);
    Napi::Array peers = Napi::Array::New(env);
    for (int j = 0, k = 0; j < n; j++) {
      int can = 0;
      if (j != i && cudaDeviceCanAccessPeer(&can, i, j) == cudaSuccess && can) peers.Set(k++, j);
    }
    d.Set("peerAccess", peers);
    devs.Set(devs.Length(), d);
  }
  o.Set("devices", devs);
  return o;
#endif
}

#ifdef TRELLIS_HAVE_CUDA
// alloc(device, bytes) → bigint device pointer (cudaMalloc: page-aligned, usable for GPUDirect RDMA)
Napi::Value Alloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  void* p = nullptr;
  if (!check(env, cudaMalloc(&p, static_cast<size_t>(info[1].As<Napi::Number>().Int64Value())), "cudaMalloc")) return env.Undefined();
  return big(env, p);
}
Napi::Value Free(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaFree(ptr(info[1])), "cudaFree");
  return env.Undefined();
}
// copy(device, dstPtr|Uint8Array, srcPtr|Uint8Array, bytes): host↔device, device↔device
Napi::Value Copy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  auto addr = [](const Napi::Value& v) -> void* {
    if (v.IsTypedArray()) {
      auto a = v.As<Napi::Uint8Array>();
      return a.Data();
    }
    return ptr(v);
  };
  size_t n = static_cast<size_t>(info[3].As<Napi::Number>().Int64Value());
  check(env, cudaMemcpy(addr(info[1]), addr(info[2]), n, cudaMemcpyDefault), "cudaMemcpy");
  return env.Undefined();
}
// ipcExport(device, ptr) → Uint8Array(64)
Napi::Value IpcExport(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  cudaIpcMemHandle_t h{};
  if (!check(env, cudaIpcGetMemHandle(&h, ptr(info[1])), "cudaIpcGetMemHandle")) return env.Undefined();
  auto out = Napi::Uint8Array::New(env, sizeof h);
  std::memcpy(out.Data(), &h, sizeof h);
  return out;
}
// ipcImport(device, Uint8Array(64)) → bigint pointer valid in this process
Napi::Value IpcImport(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  auto a = info[1].As<Napi::Uint8Array>();
  if (a.ByteLength() != sizeof(cudaIpcMemHandle_t)) return fail(env, "ipcImport: a CUDA IPC handle is 64 bytes");
  cudaIpcMemHandle_t h{};
  std::memcpy(&h, a.Data(), sizeof h);
  void* p = nullptr;
  if (!check(env, cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle")) return env.Undefined();
  return big(env, p);
}
Napi::Value IpcClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaIpcCloseMemHandle(ptr(info[1])), "cudaIpcCloseMemHandle");
  return env.Undefined();
}
// allocMapped(bytes) → {buffer: ArrayBuffer over pinned mapped host memory, devicePtr}
Napi::Value AllocMapped(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t n = static_cast<size_t>(info[0].As<Napi::Number>().Int64Value());
  void* h = nullptr;
  if (!check(env, cudaHostAlloc(&h, n, cudaHostAllocMapped | cudaHostAllocPortable), "cudaHostAlloc")) return env.Undefined();
  std::memset(h, 0, n);
  void* d = nullptr;
  if (!check(env, cudaHostGetDevicePointer(&d, h, 0), "cudaHostGetDevicePointer")) {
    cudaFreeHost(h);
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  // Freed when the ArrayBuffer is collected: every view of it must be gone first.
  o.Set("buffer", Napi::ArrayBuffer::New(env, h, n, [](Napi::Env, void* p) { cudaFreeHost(p); }));
  o.Set("devicePtr", big(env, d));
  return o;
}
// launchIncrementOnGo(device, wordDevicePtr, goDevicePtr, n): a kernel that adds 1 to *word each time *go reaches the next value
Napi::Value LaunchIncrementOnGo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, trellis_launch_increment_on_go(ptr(info[1]), ptr(info[2]), u64(info[3]), nullptr), "increment_on_go launch");
  return env.Undefined();
}
Napi::Value FillPattern(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  if (!check(env, trellis_launch_fill_pattern(ptr(info[1]), static_cast<size_t>(info[2].As<Napi::Number>().Int64Value()),
                                              info[3].As<Napi::Number>().Uint32Value(), nullptr),
             "fill_pattern launch"))
    return env.Undefined();
  check(env, cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return env.Undefined();
}
Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return env.Undefined();
}
// allocHost(bytes) → ArrayBuffer over zeroed page-locked host memory (cudaHostAlloc Portable): the
// mirror of a staged region, registered with the NICs and copied to and from the device by DMA.
Napi::Value AllocHost(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t n = static_cast<size_t>(info[0].As<Napi::Number>().Int64Value());
  void* h = nullptr;
  if (!check(env, cudaHostAlloc(&h, n ? n : 1, cudaHostAllocPortable), "cudaHostAlloc")) return env.Undefined();
  std::memset(h, 0, n);
  return Napi::ArrayBuffer::New(env, h, n, [](Napi::Env, void* p) { cudaFreeHost(p); });
}

// The staged path's copies: ranges of (device offset, host offset, bytes) between a device region
// and a pinned host buffer, on a libuv pool thread with its own stream; the promise settles when
// the stream has drained.
class CopyWorker : public Napi::AsyncWorker {
 public:
  CopyWorker(Napi::Env env, bool to_device, int device, uint64_t dev, Napi::ArrayBuffer host, std::vector<double> ranges)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), to_device_(to_device), device_(device),
        dev_(dev), host_(static_cast<uint8_t*>(host.Data())), ranges_(std::move(ranges)) {
    keep_ = Napi::Persistent(host);
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    auto fail = [&](cudaError_t rc, const char* what) {
      SetError(std::string(what) + ": " + cudaGetErrorName(rc) + " (" + cudaGetErrorString(rc) + ")");
    };
    cudaError_t rc = cudaSetDevice(device_);
    if (rc != cudaSuccess) return fail(rc, "cudaSetDevice");
    // One non-blocking stream per pool thread and device, created on first use.
    thread_local cudaStream_t streams[64] = {};
    if (device_ < 0 || device_ >= 64) return SetError("device ordinal out of range");
    cudaStream_t& st = streams[device_];
    if (!st && (rc = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking)) != cudaSuccess)
      return fail(rc, "cudaStreamCreate");
    for (size_t i = 0; i + 2 < ranges_.size(); i += 3) {
      auto* d = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(dev_)) + static_cast<size_t>(ranges_[i]);
      auto* h = host_ + static_cast<size_t>(ranges_[i + 1]);
      size_t n = static_cast<size_t>(ranges_[i + 2]);
      rc = to_device_ ? cudaMemcpyAsync(d, h, n, cudaMemcpyHostToDevice, st)
                      : cudaMemcpyAsync(h, d, n, cudaMemcpyDeviceToHost, st);
      if (rc != cudaSuccess) {
        cudaStreamSynchronize(st);
        return fail(rc, to_device_ ? "cudaMemcpyAsync host to device" : "cudaMemcpyAsync device to host");
      }
    }
    if ((rc = cudaStreamSynchronize(st)) != cudaSuccess) return fail(rc, "cudaStreamSynchronize");
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  bool to_device_;
  int device_;
  uint64_t dev_;
  uint8_t* host_;
  std::vector<double> ranges_;
  Napi::Reference<Napi::ArrayBuffer> keep_;
};

// Device-to-device copies, one cudaMemcpyAsync per (dst, src, bytes) triple on a libuv pool thread
// with a non-blocking stream of its own per device; the promise settles once that stream has
// drained (memcpyDevice: the benchmarks' hardware baseline).
class DeviceCopyWorker : public Napi::AsyncWorker {
 public:
  DeviceCopyWorker(Napi::Env env, int device, std::vector<uint64_t> triples)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), device_(device),
        triples_(std::move(triples)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    auto fail = [&](cudaError_t rc, const char* what) {
      SetError(std::string(what) + ": " + cudaGetErrorName(rc) + " (" + cudaGetErrorString(rc) + ")");
    };
    cudaError_t rc = cudaSetDevice(device_);
    if (rc != cudaSuccess) return fail(rc, "cudaSetDevice");
    thread_local cudaStream_t streams[64] = {};
    if (device_ < 0 || device_ >= 64) return SetError("device ordinal out of range");
    cudaStream_t& st = streams[device_];
    if (!st && (rc = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking)) != cudaSuccess)
      return fail(rc, "cudaStreamCreate");
    for (size_t i = 0; i + 2 < triples_.size(); i += 3) {
      rc = cudaMemcpyAsync(reinterpret_cast<void*>(triples_[i]), reinterpret_cast<const void*>(triples_[i + 1]),
                           static_cast<size_t>(triples_[i + 2]), cudaMemcpyDeviceToDevice, st);
      if (rc != cudaSuccess) {
        cudaStreamSynchronize(st);
        return fail(rc, "cudaMemcpyAsync device to device");
      }
    }
    if ((rc = cudaStreamSynchronize(st)) != cudaSuccess) return fail(rc, "cudaStreamSynchronize");
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int device_;
  std::vector<uint64_t> triples_;
};

// copyDevice(device, BigUint64Array triples) → Promise
Napi::Value CopyDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto t = info[1].As<Napi::BigUint64Array>();
  std::vector<uint64_t> triples(t.Data(), t.Data() + t.ElementLength());
  auto* w = new DeviceCopyWorker(env, info[0].As<Napi::Number>().Int32Value(), std::move(triples));
  auto p = w->promise();
  w->Queue();
  return p;
}

// The same-host lane's stream, one per device for the whole process: copies are enqueued in order
// from the JS thread (no thread hop), each write followed by a store of its sequence number into
// the engine's signal word (mapped pinned host memory) that the engine's worker polls. Many equal
// pieces of at most kKernelRowBytes (paged writes, scatters of equal rows) are one gather/scatter
// kernel instead of a copy each; its row addresses sit in a ring of mapped pinned slots the kernel
// reads directly, each slot reused only after the event recorded behind its kernel has passed.
struct LaneStream {
  static constexpr size_t kSlots = 32;
  struct Slot {
    unsigned long long* host = nullptr;
    size_t capacity = 0;  // addresses
    cudaEvent_t done = nullptr;
    bool used = false;
  };
  cudaStream_t stream = nullptr;
  Slot slots[kSlots];
  size_t next = 0;
};
constexpr size_t kKernelRows = 8;
constexpr uint64_t kKernelRowBytes = 1 << 20;
std::mutex g_lane_mu;
LaneStream g_lane[64];

std::string cuda_error(cudaError_t rc, const char* what) {
  return std::string(what) + ": " + cudaGetErrorName(rc) + " (" + cudaGetErrorString(rc) + ")";
}

// Enqueue `n` triples and the signal store on device's lane stream; "" or what failed.
std::string lane_enqueue(int device, const uint64_t* t, size_t n, void* signal, uint64_t value) {
  std::lock_guard<std::mutex> g(g_lane_mu);
  cudaError_t rc = cudaSetDevice(device);
  if (rc != cudaSuccess) return cuda_error(rc, "cudaSetDevice");
  LaneStream& lane = g_lane[device];
  if (!lane.stream && (rc = cudaStreamCreateWithFlags(&lane.stream, cudaStreamNonBlocking)) != cudaSuccess)
    return cuda_error(rc, "cudaStreamCreate");
  cudaStream_t st = lane.stream;
  bool uniform = n >= kKernelRows && t[2] <= kKernelRowBytes;
  for (size_t i = 1; uniform && i < n; i++) uniform = t[3 * i + 2] == t[2];
  if (uniform) {
    LaneStream::Slot& slot = lane.slots[lane.next++ % LaneStream::kSlots];
    if (slot.used && (rc = cudaEventSynchronize(slot.done)) != cudaSuccess) return cuda_error(rc, "cudaEventSynchronize");
    if (slot.capacity < 2 * n) {
      if (slot.host) cudaFreeHost(slot.host);
      slot.host = nullptr;
      slot.capacity = 0;
      if ((rc = cudaHostAlloc(&slot.host, 2 * n * sizeof *slot.host, cudaHostAllocMapped | cudaHostAllocPortable)) !=
          cudaSuccess)
        return cuda_error(rc, "cudaHostAlloc");
      slot.capacity = 2 * n;
    }
    if (!slot.done && (rc = cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming)) != cudaSuccess)
      return cuda_error(rc, "cudaEventCreate");
    for (size_t i = 0; i < n; i++) {
      slot.host[i] = t[3 * i];
      slot.host[n + i] = t[3 * i + 1];
    }
    // Absolute addresses, as row offsets from base 0.
    if ((rc = trellis_copy_rows(nullptr, slot.host, nullptr, slot.host + n, n, static_cast<size_t>(t[2]), st)) !=
        cudaSuccess)
      return cuda_error(rc, "copy_rows launch");
    if ((rc = cudaEventRecord(slot.done, st)) != cudaSuccess) return cuda_error(rc, "cudaEventRecord");
    slot.used = true;
  } else {
    for (size_t i = 0; i < n; i++) {
      rc = cudaMemcpyAsync(reinterpret_cast<void*>(t[3 * i]), reinterpret_cast<const void*>(t[3 * i + 1]),
                           static_cast<size_t>(t[3 * i + 2]), cudaMemcpyDeviceToDevice, st);
      if (rc != cudaSuccess) return cuda_error(rc, "cudaMemcpyAsync device to device");
    }
  }
  // The signal: a stream memory operation where the driver has them (no kernel launch), else a
  // one-thread kernel. Both run after the copies before them and make their bytes visible first.
  using WriteValue64 = int (*)(cudaStream_t, unsigned long long, unsigned long long, unsigned);
  static WriteValue64 write_value = [] {
    void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    return h ? reinterpret_cast<WriteValue64>(dlsym(h, "cuStreamWriteValue64_v2")) : nullptr;
  }();
  static bool use_write_value = !std::getenv("TRELLIS_LANE_SIGNAL_KERNEL");
  if (write_value && use_write_value) {
    if (write_value(st, reinterpret_cast<uintptr_t>(signal), value, 0) == 0) return "";
    use_write_value = false;  // not supported here: the kernel from now on
  }
  if ((rc = trellis_store_signal(signal, value, st)) != cudaSuccess) return cuda_error(rc, "signal launch");
  return "";
}

// laneEnqueue(device, BigUint64Array triples, signalDevicePtr, value: bigint)
Napi::Value LaneEnqueue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int device = info[0].As<Napi::Number>().Int32Value();
  if (device < 0 || device >= 64) return fail(env, "device ordinal out of range");
  auto t = info[1].As<Napi::BigUint64Array>();
  std::string err = lane_enqueue(device, t.Data(), t.ElementLength() / 3, ptr(info[2]), u64(info[3]));
  if (!err.empty()) return fail(env, err);
  return env.Undefined();
}

// laneDrain(device) → Promise: settles once the device's lane stream has drained (its CUDA error).
class LaneDrainWorker : public Napi::AsyncWorker {
 public:
  LaneDrainWorker(Napi::Env env, int device)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), device_(device) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    cudaStream_t st;
    {
      std::lock_guard<std::mutex> g(g_lane_mu);
      st = g_lane[device_].stream;
    }
    if (!st) return;
    cudaError_t rc = cudaSetDevice(device_);
    if (rc == cudaSuccess) rc = cudaStreamSynchronize(st);
    if (rc != cudaSuccess) SetError(cuda_error(rc, "cudaStreamSynchronize"));
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int device_;
};
Napi::Value LaneDrain(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int device = info[0].As<Napi::Number>().Int32Value();
  if (device < 0 || device >= 64) return fail(env, "device ordinal out of range");
  auto* w = new LaneDrainWorker(env, device);
  auto p = w->promise();
  w->Queue();
  return p;
}

// pointerRange(ptr) → {device, base, size}: the allocation holding a device pointer (CUDA driver's
// cuMemGetAddressRange, opened at run time like the rest of the driver).
Napi::Value PointerRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* p = ptr(info[0]);
  cudaPointerAttributes a{};
  cudaError_t rc = cudaPointerGetAttributes(&a, p);
  if (rc != cudaSuccess) {
    cudaGetLastError();
    return fail(env, std::string("cudaPointerGetAttributes: ") + cudaGetErrorName(rc));
  }
  if (a.type != cudaMemoryTypeDevice) {
    const char* what = a.type == cudaMemoryTypeHost ? "page-locked host memory"
                       : a.type == cudaMemoryTypeManaged ? "managed memory"
                                                         : "not memory CUDA knows";
    return fail(env, std::string("the pointer is ") + what + ", not device memory");
  }
  if (!set_device(env, Napi::Number::New(env, a.device))) return env.Undefined();
  cudaFree(nullptr);  // the device's primary context, current on this thread
  using GetRange = int (*)(unsigned long long*, size_t*, unsigned long long);
  static GetRange get_range = [] {
    void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    return h ? reinterpret_cast<GetRange>(dlsym(h, "cuMemGetAddressRange_v2")) : nullptr;
  }();
  if (!get_range) return fail(env, "the CUDA driver has no cuMemGetAddressRange_v2");
  unsigned long long base = 0;
  size_t size = 0;
  int r = get_range(&base, &size, static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(p)));
  if (r != 0) return fail(env, "cuMemGetAddressRange failed (CUresult " + std::to_string(r) + ")");
  Napi::Object o = Napi::Object::New(env);
  o.Set("device", a.device);
  o.Set("base", Napi::BigInt::New(env, static_cast<uint64_t>(base)));
  o.Set("size", static_cast<double>(size));
  return o;
}

// copyAsync(toDevice, device, devicePtr, hostArrayBuffer, Float64Array ranges) → Promise
Napi::Value CopyAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto host = info[3].As<Napi::ArrayBuffer>();
  auto r = info[4].As<Napi::Float64Array>();
  std::vector<double> ranges(r.Data(), r.Data() + r.ElementLength());
  for (size_t i = 0; i + 2 < ranges.size(); i += 3)
    if (ranges[i + 1] < 0 || ranges[i + 2] < 0 || ranges[i + 1] + ranges[i + 2] > static_cast<double>(host.ByteLength()))
      return fail(env, "copyAsync: a range falls outside the host buffer");
  auto* w = new CopyWorker(env, info[0].ToBoolean(), info[1].As<Napi::Number>().Int32Value(), u64(info[2]), host,
                           std::move(ranges));
  auto p = w->promise();
  w->Queue();
  return p;
}

// quantizeE4m3(device, src, srcOffset, srcPitch, rows, cols, block, dst, scales): the fp8 quantiser
// (bf16 rows → e4m3 bytes + one fp32 scale per block), synchronous.
Napi::Value QuantizeE4m3(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  auto num = [&](int i) { return static_cast<size_t>(info[i].As<Napi::Number>().Int64Value()); };
  if (!check(env,
             trellis_launch_quantize_e4m3(ptr(info[1]), num(2), num(3), static_cast<unsigned>(num(4)),
                                          static_cast<unsigned>(num(5)), static_cast<unsigned>(num(6)), ptr(info[7]),
                                          ptr(info[8]), nullptr),
             "quantize_e4m3 launch"))
    return env.Undefined();
  check(env, cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return env.Undefined();
}
// copyRows(device, dst, src, srcPitch, rowBytes, rows): packed rows device → device (cudaMemcpy2D)
Napi::Value CopyRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  auto num = [&](int i) { return static_cast<size_t>(info[i].As<Napi::Number>().Int64Value()); };
  size_t row = num(4);
  check(env, cudaMemcpy2D(ptr(info[1]), row, ptr(info[2]), num(3), row, num(5), cudaMemcpyDeviceToDevice), "cudaMemcpy2D");
  return env.Undefined();
}

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
size_t num(const Napi::Value& v) { return static_cast<size_t>(v.As<Napi::Number>().Int64Value()); }

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

// countPatternMismatches(device, ptr, bytes, seed, at) → bytes that differ from the fill pattern
// (index i + at), counted by a kernel.
Napi::Value CountPatternMismatches(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  unsigned long long bad = 0;
  bool unordered = info.Length() > 5 && info[5].ToBoolean().Value();
  auto count = unordered ? trellis_count_pattern_mismatches_unordered : trellis_count_pattern_mismatches;
  if (!check(env,
             count(ptr(info[1]), static_cast<size_t>(info[2].As<Napi::Number>().Int64Value()),
                   info[3].As<Napi::Number>().Uint32Value(), static_cast<size_t>(info[4].As<Napi::Number>().Int64Value()),
                   &bad),
             "count_pattern_mismatches"))
    return env.Undefined();
  return Napi::Number::New(env, static_cast<double>(bad));
}
#else
Napi::Value NoCuda(const Napi::CallbackInfo& info) {
  return fail(info.Env(), "@trellis/cuda was built without CUDA (no nvcc at build time)");
}
#endif

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, Info));
#ifdef TRELLIS_HAVE_CUDA
  exports.Set("alloc", Napi::Function::New(env, Alloc));
  exports.Set("free", Napi::Function::New(env, Free));
  exports.Set("copy", Napi::Function::New(env, Copy));
  exports.Set("ipcExport", Napi::Function::New(env, IpcExport));
  exports.Set("ipcImport", Napi::Function::New(env, IpcImport));
  exports.Set("ipcClose", Napi::Function::New(env, IpcClose));
  exports.Set("allocMapped", Napi::Function::New(env, AllocMapped));
  exports.Set("launchIncrementOnGo", Napi::Function::New(env, LaunchIncrementOnGo));
  exports.Set("fillPattern", Napi::Function::New(env, FillPattern));
  exports.Set("synchronize", Napi::Function::New(env, Synchronize));
  exports.Set("allocHost", Napi::Function::New(env, AllocHost));
  exports.Set("copyAsync", Napi::Function::New(env, CopyAsync));
  exports.Set("copyDevice", Napi::Function::New(env, CopyDevice));
  exports.Set("laneEnqueue", Napi::Function::New(env, LaneEnqueue));
  exports.Set("laneDrain", Napi::Function::New(env, LaneDrain));
  exports.Set("pointerRange", Napi::Function::New(env, PointerRange));
  exports.Set("quantizeE4m3", Napi::Function::New(env, QuantizeE4m3));
  exports.Set("countPatternMismatches", Napi::Function::New(env, CountPatternMismatches));
  exports.Set("copyRows", Napi::Function::New(env, CopyRows));
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
  for (const char* n : {"alloc", "free", "copy", "ipcExport", "ipcImport", "ipcClose", "allocMapped", "launchIncrementOnGo", "fillPattern", "synchronize",
                        "allocHost", "copyAsync", "quantizeE4m3", "countPatternMismatches", "copyRows", "copyRowsIndexed", "moeCombine",
                        "moePackScratch", "moeDispatchPack", "moeUnpack", "moeCombinePack", "moeGather",
                        "moeDispatchDirect", "moeWaitFlags", "moeCombineDirect", "copyDevice", "pointerRange", "laneEnqueue",
                        "laneDrain"})
    exports.Set(n, Napi::Function::New(env, NoCuda));
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(NODE_GYP_MODULE_NAME, Init)
