// N-API glue shared by the addons that link the CUDA runtime (@trellis/cuda, and the optional CUDA
// target of @trellis/moe): argument helpers that turn a CUDA error into a JS exception, and the
// generic memory calls both export — alloc, free, copy, CUDA IPC, mapped host memory, status.
// Include only where cuda_runtime.h is available; each addon registers what it needs.
#pragma once

#include <cuda_runtime.h>
#include <napi.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace trellis::cuda_napi {

inline Napi::Value fail(const Napi::Env& env, const std::string& what) {
  Napi::Error::New(env, what).ThrowAsJavaScriptException();
  return env.Undefined();
}

// False (with the JS exception set: "what: cudaErrorName (description)") unless rc is cudaSuccess.
inline bool check(const Napi::Env& env, cudaError_t rc, const char* what) {
  if (rc == cudaSuccess) return true;
  Napi::Error::New(env, std::string(what) + ": " + cudaGetErrorName(rc) + " (" + cudaGetErrorString(rc) + ")")
      .ThrowAsJavaScriptException();
  return false;
}
inline uint64_t u64(const Napi::Value& v) {
  bool lossless = true;
  return v.As<Napi::BigInt>().Uint64Value(&lossless);
}
inline void* ptr(const Napi::Value& v) { return reinterpret_cast<void*>(static_cast<uintptr_t>(u64(v))); }
inline Napi::BigInt big(const Napi::Env& env, const void* p) {
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
}
inline size_t num(const Napi::Value& v) { return static_cast<size_t>(v.As<Napi::Number>().Int64Value()); }
inline bool set_device(const Napi::Env& env, const Napi::Value& v) {
  return check(env, cudaSetDevice(v.As<Napi::Number>().Int32Value()), "cudaSetDevice");
}

// status() → {error: '' when a GPU is usable, else why; devices: count}
inline Napi::Value Status(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  int n = 0;
  cudaError_t rc = cudaGetDeviceCount(&n);
  if (rc != cudaSuccess) {
    o.Set("error", std::string("no usable GPU: ") + cudaGetErrorName(rc) + " (" + cudaGetErrorString(rc) + ")");
    n = 0;
  } else {
    o.Set("error", n ? "" : "no GPU visible");
  }
  o.Set("devices", n);
  return o;
}
// alloc(device, bytes) → bigint device pointer (cudaMalloc: page-aligned, usable for GPUDirect RDMA)
inline Napi::Value Alloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  void* p = nullptr;
  if (!check(env, cudaMalloc(&p, num(info[1])), "cudaMalloc")) return env.Undefined();
  return big(env, p);
}
inline Napi::Value Free(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaFree(ptr(info[1])), "cudaFree");
  return env.Undefined();
}
// copy(device, dstPtr|Uint8Array, srcPtr|Uint8Array, bytes): host↔device, device↔device
inline Napi::Value Copy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  auto addr = [](const Napi::Value& v) -> void* {
    if (v.IsTypedArray()) return v.As<Napi::Uint8Array>().Data();
    return ptr(v);
  };
  check(env, cudaMemcpy(addr(info[1]), addr(info[2]), num(info[3]), cudaMemcpyDefault), "cudaMemcpy");
  return env.Undefined();
}
// ipcExport(device, ptr) → Uint8Array(64)
inline Napi::Value IpcExport(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  cudaIpcMemHandle_t h{};
  if (!check(env, cudaIpcGetMemHandle(&h, ptr(info[1])), "cudaIpcGetMemHandle")) return env.Undefined();
  auto out = Napi::Uint8Array::New(env, sizeof h);
  std::memcpy(out.Data(), &h, sizeof h);
  return out;
}
// ipcImport(device, Uint8Array(64)) → bigint pointer valid in this process
inline Napi::Value IpcImport(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  auto a = info[1].As<Napi::Uint8Array>();
  if (a.ByteLength() != sizeof(cudaIpcMemHandle_t)) return fail(env, "ipcImport: a CUDA IPC handle is 64 bytes");
  cudaIpcMemHandle_t h{};
  std::memcpy(&h, a.Data(), sizeof h);
  void* p = nullptr;
  if (!check(env, cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle"))
    return env.Undefined();
  return big(env, p);
}
inline Napi::Value IpcClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaIpcCloseMemHandle(ptr(info[1])), "cudaIpcCloseMemHandle");
  return env.Undefined();
}
// allocMapped(bytes) → {buffer: ArrayBuffer over pinned mapped host memory, devicePtr}
inline Napi::Value AllocMapped(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t n = num(info[0]);
  void* h = nullptr;
  if (!check(env, cudaHostAlloc(&h, n, cudaHostAllocMapped | cudaHostAllocPortable), "cudaHostAlloc"))
    return env.Undefined();
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

// The generic memory calls above, under their JS names.
inline void register_memory(Napi::Env env, Napi::Object exports) {
  exports.Set("alloc", Napi::Function::New(env, Alloc));
  exports.Set("free", Napi::Function::New(env, Free));
  exports.Set("copy", Napi::Function::New(env, Copy));
  exports.Set("ipcExport", Napi::Function::New(env, IpcExport));
  exports.Set("ipcImport", Napi::Function::New(env, IpcImport));
  exports.Set("ipcClose", Napi::Function::New(env, IpcClose));
  exports.Set("allocMapped", Napi::Function::New(env, AllocMapped));
}

}  // namespace trellis::cuda_napi
