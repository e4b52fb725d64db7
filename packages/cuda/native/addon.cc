// @trellis/cuda: CUDA memory for Trellis — device allocations fit for RDMA, CUDA IPC export and
// import (a PyTorch process can hand its tensors to a Node agent), mapped pinned host words a
// kernel increments (the GPU watcher), and the kernels the tests use. Without CUDA at build time
// every call fails with that reason.
#include <napi.h>

#include <cstdint>
#include <cstring>
#include <string>

#ifdef TRELLIS_HAVE_CUDA
#include <cuda_runtime.h>
extern "C" cudaError_t trellis_launch_increment_on_go(void* word, void* go, unsigned long long n, cudaStream_t s);
extern "C" cudaError_t trellis_launch_fill_pattern(void* p, size_t n, uint32_t seed, cudaStream_t s);
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
#else
  for (const char* n : {"alloc", "free", "copy", "ipcExport", "ipcImport", "ipcClose", "allocMapped", "launchIncrementOnGo", "fillPattern", "synchronize"})
    exports.Set(n, Napi::Function::New(env, NoCuda));
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(NODE_GYP_MODULE_NAME, Init)
