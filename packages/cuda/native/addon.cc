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
#include <vector>

#include "trellis/cuda_napi.hpp"
#endif

namespace {

#ifdef TRELLIS_HAVE_CUDA
using trellis::cuda_napi::big;
using trellis::cuda_napi::check;
using trellis::cuda_napi::fail;
using trellis::cuda_napi::ptr;
using trellis::cuda_napi::set_device;
using trellis::cuda_napi::u64;
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
  Napi::Error::New(info.Env(), "@trellis/cuda was built without CUDA (no nvcc at build time)").ThrowAsJavaScriptException();
  return info.Env().Undefined();
}
#endif

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, Info));
#ifdef TRELLIS_HAVE_CUDA
  trellis::cuda_napi::register_memory(env, exports);
  trellis::cuda_napi::register_streams(env, exports);
  exports.Set("launchIncrementOnGo", Napi::Function::New(env, LaunchIncrementOnGo));
  exports.Set("fillPattern", Napi::Function::New(env, FillPattern));
  exports.Set("synchronize", Napi::Function::New(env, Synchronize));
  exports.Set("allocHost", Napi::Function::New(env, AllocHost));
  exports.Set("copyAsync", Napi::Function::New(env, CopyAsync));
  exports.Set("copyDevice", Napi::Function::New(env, CopyDevice));
  exports.Set("laneEnqueue", Napi::Function::New(env, LaneEnqueue));
  exports.Set("laneDrain", Napi::Function::New(env, LaneDrain));
  exports.Set("quantizeE4m3", Napi::Function::New(env, QuantizeE4m3));
  exports.Set("countPatternMismatches", Napi::Function::New(env, CountPatternMismatches));
  exports.Set("copyRows", Napi::Function::New(env, CopyRows));
#else
  for (const char* n : {"alloc", "free", "copy", "ipcExport", "ipcImport", "ipcClose", "allocMapped", "launchIncrementOnGo", "fillPattern", "synchronize",
                        "allocHost", "copyAsync", "quantizeE4m3", "countPatternMismatches", "copyRows", "copyDevice", "pointerRange", "laneEnqueue",
                        "laneDrain", "streamCreate", "streamDestroy", "streamSynchronize", "streamQuery",
                        "streamWaitEvent", "eventCreate", "eventDestroy", "eventRecord", "eventSynchronize", "eventElapsed",
                        "eventIpcExport", "eventIpcImport", "captureBegin", "captureEnd", "graphLaunch", "graphDestroy",
                        "enablePeerAccess"})
    exports.Set(n, Napi::Function::New(env, NoCuda));
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(NODE_GYP_MODULE_NAME, Init)
