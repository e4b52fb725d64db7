// N-API glue shared by the addons that link the CUDA runtime (@trellis/cuda, and the optional CUDA
// target of @trellis/moe): argument helpers that turn a CUDA error into a JS exception, and the
// generic memory calls both export — alloc, free, copy, CUDA IPC, mapped host memory, status.
// Include only where cuda_runtime.h is available; each addon registers what it needs.
#pragma once

#include <cuda_runtime.h>
#include <napi.h>

#include <dlfcn.h>

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

// ---- Streams, events and graphs: the handles a model's step is ordered and captured with. Handles
// travel as bigints (CUstream / CUevent / CUgraphExec are driver objects, so a handle made by one
// addon's runtime is good in another's on the same device).

// streamCreate(device, nonBlocking) → bigint
inline Napi::Value StreamCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  cudaStream_t s = nullptr;
  if (!check(env, cudaStreamCreateWithFlags(&s, info[1].ToBoolean() ? cudaStreamNonBlocking : cudaStreamDefault),
             "cudaStreamCreateWithFlags"))
    return env.Undefined();
  return big(env, s);
}
// streamDestroy(device, stream)
inline Napi::Value StreamDestroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaStreamDestroy(static_cast<cudaStream_t>(ptr(info[1]))), "cudaStreamDestroy");
  return env.Undefined();
}
// streamSynchronize(device, stream): blocks this thread until the stream drained
inline Napi::Value StreamSynchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaStreamSynchronize(static_cast<cudaStream_t>(ptr(info[1]))), "cudaStreamSynchronize");
  return env.Undefined();
}
// streamQuery(device, stream) → true when everything queued on it is done
inline Napi::Value StreamQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  cudaError_t rc = cudaStreamQuery(static_cast<cudaStream_t>(ptr(info[1])));
  if (rc == cudaErrorNotReady) return Napi::Boolean::New(env, false);
  if (!check(env, rc, "cudaStreamQuery")) return env.Undefined();
  return Napi::Boolean::New(env, true);
}
// streamWaitEvent(device, stream, event)
inline Napi::Value StreamWaitEvent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env,
        cudaStreamWaitEvent(static_cast<cudaStream_t>(ptr(info[1])), static_cast<cudaEvent_t>(ptr(info[2])), 0),
        "cudaStreamWaitEvent");
  return env.Undefined();
}
// eventCreate(device, timing, interprocess) → bigint (interprocess events cannot time)
inline Napi::Value EventCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  unsigned flags = info[1].ToBoolean() ? cudaEventDefault : cudaEventDisableTiming;
  if (info[2].ToBoolean()) flags = cudaEventDisableTiming | cudaEventInterprocess;
  cudaEvent_t e = nullptr;
  if (!check(env, cudaEventCreateWithFlags(&e, flags), "cudaEventCreateWithFlags")) return env.Undefined();
  return big(env, e);
}
// eventDestroy(device, event)
inline Napi::Value EventDestroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaEventDestroy(static_cast<cudaEvent_t>(ptr(info[1]))), "cudaEventDestroy");
  return env.Undefined();
}
// eventRecord(device, event, stream)
inline Napi::Value EventRecord(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaEventRecord(static_cast<cudaEvent_t>(ptr(info[1])), static_cast<cudaStream_t>(ptr(info[2]))),
        "cudaEventRecord");
  return env.Undefined();
}
// eventSynchronize(device, event)
inline Napi::Value EventSynchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaEventSynchronize(static_cast<cudaEvent_t>(ptr(info[1]))), "cudaEventSynchronize");
  return env.Undefined();
}
// eventElapsed(device, start, end) → ms between two completed, timing events
inline Napi::Value EventElapsed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  float ms = 0;
  if (!check(env,
             cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(ptr(info[1])), static_cast<cudaEvent_t>(ptr(info[2]))),
             "cudaEventElapsedTime"))
    return env.Undefined();
  return Napi::Number::New(env, ms);
}
// eventIpcExport(device, event) → Uint8Array(64) (an interprocess event)
inline Napi::Value EventIpcExport(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  cudaIpcEventHandle_t h{};
  if (!check(env, cudaIpcGetEventHandle(&h, static_cast<cudaEvent_t>(ptr(info[1]))), "cudaIpcGetEventHandle"))
    return env.Undefined();
  auto out = Napi::Uint8Array::New(env, sizeof h);
  std::memcpy(out.Data(), &h, sizeof h);
  return out;
}
// eventIpcImport(device, Uint8Array(64)) → bigint event of this process (destroy it with eventDestroy)
inline Napi::Value EventIpcImport(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  auto a = info[1].As<Napi::Uint8Array>();
  if (a.ByteLength() != sizeof(cudaIpcEventHandle_t)) return fail(env, "eventIpcImport: a CUDA IPC event handle is 64 bytes");
  cudaIpcEventHandle_t h{};
  std::memcpy(&h, a.Data(), sizeof h);
  cudaEvent_t e = nullptr;
  if (!check(env, cudaIpcOpenEventHandle(&e, h), "cudaIpcOpenEventHandle")) return env.Undefined();
  return big(env, e);
}
// captureBegin(device, stream, mode: 0 global | 1 thread-local | 2 relaxed)
inline Napi::Value CaptureBegin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  static const cudaStreamCaptureMode modes[] = {cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal,
                                                cudaStreamCaptureModeRelaxed};
  unsigned m = info[2].As<Napi::Number>().Uint32Value();
  check(env, cudaStreamBeginCapture(static_cast<cudaStream_t>(ptr(info[1])), modes[m < 3 ? m : 0]),
        "cudaStreamBeginCapture");
  return env.Undefined();
}
// captureEnd(device, stream, instantiate) → bigint graph exec (instantiate) — the graph itself is
// destroyed once instantiated; with instantiate false (a capture abandoned) → undefined
inline Napi::Value CaptureEnd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  cudaGraph_t g = nullptr;
  cudaError_t rc = cudaStreamEndCapture(static_cast<cudaStream_t>(ptr(info[1])), &g);
  if (!info[2].ToBoolean() || rc != cudaSuccess) {
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();  // clear a sticky-free capture error (invalidated capture) from this thread
    if (info[2].ToBoolean()) check(env, rc, "cudaStreamEndCapture");
    return env.Undefined();
  }
  cudaGraphExec_t x = nullptr;
  rc = cudaGraphInstantiate(&x, g, 0);
  size_t nodes = 0;
  cudaGraphGetNodes(g, nullptr, &nodes);
  cudaGraphDestroy(g);
  if (!check(env, rc, "cudaGraphInstantiate")) return env.Undefined();
  Napi::Object o = Napi::Object::New(env);
  o.Set("exec", big(env, x));
  o.Set("nodes", Napi::Number::New(env, double(nodes)));
  return o;
}
// graphLaunch(device, exec, stream)
inline Napi::Value GraphLaunch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaGraphLaunch(static_cast<cudaGraphExec_t>(ptr(info[1])), static_cast<cudaStream_t>(ptr(info[2]))),
        "cudaGraphLaunch");
  return env.Undefined();
}
// graphDestroy(device, exec)
inline Napi::Value GraphDestroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  check(env, cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(ptr(info[1]))), "cudaGraphExecDestroy");
  return env.Undefined();
}
// enablePeerAccess(device, peer): `device` may read and write `peer`'s memory (idempotent)
inline Napi::Value EnablePeerAccess(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!set_device(env, info[0])) return env.Undefined();
  cudaError_t rc = cudaDeviceEnablePeerAccess(info[1].As<Napi::Number>().Int32Value(), 0);
  if (rc == cudaErrorPeerAccessAlreadyEnabled) {
    cudaGetLastError();
    rc = cudaSuccess;
  }
  check(env, rc, "cudaDeviceEnablePeerAccess");
  return env.Undefined();
}

// Streams, events, graphs and peer access, under their JS names.
inline void register_streams(Napi::Env env, Napi::Object exports) {
  exports.Set("streamCreate", Napi::Function::New(env, StreamCreate));
  exports.Set("streamDestroy", Napi::Function::New(env, StreamDestroy));
  exports.Set("streamSynchronize", Napi::Function::New(env, StreamSynchronize));
  exports.Set("streamQuery", Napi::Function::New(env, StreamQuery));
  exports.Set("streamWaitEvent", Napi::Function::New(env, StreamWaitEvent));
  exports.Set("eventCreate", Napi::Function::New(env, EventCreate));
  exports.Set("eventDestroy", Napi::Function::New(env, EventDestroy));
  exports.Set("eventRecord", Napi::Function::New(env, EventRecord));
  exports.Set("eventSynchronize", Napi::Function::New(env, EventSynchronize));
  exports.Set("eventElapsed", Napi::Function::New(env, EventElapsed));
  exports.Set("eventIpcExport", Napi::Function::New(env, EventIpcExport));
  exports.Set("eventIpcImport", Napi::Function::New(env, EventIpcImport));
  exports.Set("captureBegin", Napi::Function::New(env, CaptureBegin));
  exports.Set("captureEnd", Napi::Function::New(env, CaptureEnd));
  exports.Set("graphLaunch", Napi::Function::New(env, GraphLaunch));
  exports.Set("graphDestroy", Napi::Function::New(env, GraphDestroy));
  exports.Set("enablePeerAccess", Napi::Function::New(env, EnablePeerAccess));
}

// pointerRange(ptr) → {device, base, size}: the allocation holding a device pointer (CUDA driver's
// cuMemGetAddressRange, opened at run time like the rest of the driver).
inline Napi::Value PointerRange(const Napi::CallbackInfo& info) {
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
#if CUDART_VERSION < 12000
  cudaFree(nullptr);  // the device's primary context, current on this thread (CUDA 12's cudaSetDevice does it,
                      // and stays legal while a stream on this thread is being captured into a graph)
#endif
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

// The generic memory calls above, under their JS names.
inline void register_memory(Napi::Env env, Napi::Object exports) {
  exports.Set("alloc", Napi::Function::New(env, Alloc));
  exports.Set("free", Napi::Function::New(env, Free));
  exports.Set("copy", Napi::Function::New(env, Copy));
  exports.Set("ipcExport", Napi::Function::New(env, IpcExport));
  exports.Set("ipcImport", Napi::Function::New(env, IpcImport));
  exports.Set("ipcClose", Napi::Function::New(env, IpcClose));
  exports.Set("allocMapped", Napi::Function::New(env, AllocMapped));
  exports.Set("pointerRange", Napi::Function::New(env, PointerRange));
}

}  // namespace trellis::cuda_napi
