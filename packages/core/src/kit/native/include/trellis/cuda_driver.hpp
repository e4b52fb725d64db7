// The few CUDA driver calls the native backends make, opened at run time (libcuda.so.1): an addon loads
// and serves host memory on machines without a GPU or a driver, and needs no CUDA headers to build.
//
// Used for GPU memory registered directly with the NICs:
//  - backend-efa's visibility fence: libfabric copies into GPU memory with cudaMemcpy (shm's CUDA
//    IPC protocol, the bounce buffers of tcp), which can return to the host before the bytes land.
//    An immediate that reports such a write is held until a CUDA event recorded after it on the
//    legacy default stream has completed (see FabricDomain::poll);
//  - dma-buf export of an allocation (cuMemGetHandleForAddressRange) for efa (FI_MR_DMABUF) and
//    for ibverbs (ibv_reg_dmabuf_mr), and the GPUDirect RDMA write flush for ibverbs.
#pragma once

#include <dlfcn.h>

#include <cstdint>
#include <mutex>
#include <string>

namespace trellis {

struct CudaDriver {
  using CUresult = int;
  using CUcontext = void*;
  using CUevent = void*;
  using CUstream = void*;
  using CUdevice = int;
  using CUdeviceptr = unsigned long long;

  static constexpr unsigned kEventDisableTiming = 0x2;
  static constexpr int kErrorNotReady = 600;
  static constexpr int kPointerAttributeMemoryType = 2;  // CU_POINTER_ATTRIBUTE_MEMORY_TYPE
  static constexpr int kPointerAttributeDeviceOrdinal = 9;
  static constexpr unsigned kMemoryTypeDevice = 2;
  static constexpr int kHandleTypeDmabufFd = 1;  // CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD
  static inline CUstream const kStreamLegacy = reinterpret_cast<CUstream>(0x1);

  CUresult (*cuInit)(unsigned) = nullptr;
  CUresult (*cuCtxGetCurrent)(CUcontext*) = nullptr;
  CUresult (*cuCtxSetCurrent)(CUcontext) = nullptr;
  CUresult (*cuDeviceGet)(CUdevice*, int) = nullptr;
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*cuEventCreate)(CUevent*, unsigned) = nullptr;
  CUresult (*cuEventRecord)(CUevent, CUstream) = nullptr;
  CUresult (*cuEventQuery)(CUevent) = nullptr;
  CUresult (*cuEventDestroy)(CUevent) = nullptr;
  CUresult (*cuStreamQuery)(CUstream) = nullptr;
  CUresult (*cuPointerGetAttribute)(void*, int, CUdeviceptr) = nullptr;
  CUresult (*cuMemGetAddressRange)(CUdeviceptr*, size_t*, CUdeviceptr) = nullptr;
  CUresult (*cuMemGetHandleForAddressRange)(void*, CUdeviceptr, size_t, int, unsigned long long) = nullptr;
  CUresult (*cuGetErrorString)(CUresult, const char**) = nullptr;
  CUresult (*cuMemAlloc)(CUdeviceptr*, size_t) = nullptr;
  CUresult (*cuMemFree)(CUdeviceptr) = nullptr;
  // GPUDirect RDMA: make the NIC's writes visible to the GPU's own work (CUDA >= 11.3).
  CUresult (*cuFlushGPUDirectRDMAWrites)(int target, int scope) = nullptr;
  static constexpr int kFlushTargetCurrentCtx = 0;
  static constexpr int kFlushToOwner = 100;
  // Copies by unified address (backend-verbs' RC model moving bytes to and from GPU memory).
  CUresult (*cuMemcpyAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream) = nullptr;
  CUresult (*cuStreamCreate)(CUstream*, unsigned) = nullptr;
  CUresult (*cuStreamSynchronize)(CUstream) = nullptr;
  static constexpr unsigned kStreamNonBlocking = 1;

  bool ok = false;
  std::string error;

  // Make `device`'s primary context (the CUDA runtime's) current on this thread; 0 or a CUresult.
  CUresult use_device(int device) {
    CUdevice dev = 0;
    CUcontext ctx = nullptr;
    CUresult r = cuDeviceGet(&dev, device);
    if (r == 0) r = cuDevicePrimaryCtxRetain(&ctx, dev);
    if (r == 0) r = cuCtxSetCurrent(ctx);
    return r;
  }

  // A dma-buf file descriptor for the whole pages around [ptr, ptr + len) inside the allocation
  // [base, base + size): returns the fd (or -1) and the offset of `ptr` in it.
  int dmabuf(CUdeviceptr ptr, size_t len, CUdeviceptr base, size_t size, uint64_t* offset) {
    if (!cuMemGetHandleForAddressRange) return -1;
    const CUdeviceptr page = 1ull << 16;
    CUdeviceptr start = ptr & ~(page - 1);
    CUdeviceptr end = (ptr + len + page - 1) & ~(page - 1);
    if (start < base) start = base;
    if (end > base + size) end = base + size;
    int fd = -1;
    if (cuMemGetHandleForAddressRange(&fd, start, end - start, kHandleTypeDmabufFd, 0) != 0) return -1;
    *offset = ptr - start;
    return fd;
  }

  // The process-wide driver, opened on first use. `ok` false: `error` says why.
  static CudaDriver& get() {
    static CudaDriver d;
    static std::once_flag once;
    std::call_once(once, [] { d.open(); });
    return d;
  }

  std::string str(CUresult r) const {
    const char* s = nullptr;
    if (cuGetErrorString && cuGetErrorString(r, &s) == 0 && s) return std::string(s) + " (" + std::to_string(r) + ")";
    return "CUDA error " + std::to_string(r);
  }

  bool can_copy() const { return ok && cuMemcpyAsync && cuStreamCreate && cuStreamSynchronize; }

  // Copy `n` bytes between any two unified addresses (host or device memory of this process) on a
  // stream of this thread's, and wait until they are in place: a later reader on the host or on
  // any stream sees them. A context is made current on this thread first if none is. 0 or a CUresult.
  CUresult copy(void* dst, const void* src, size_t n) {
    thread_local CUstream stream = nullptr;
    if (!stream) {
      CUcontext ctx = nullptr;
      CUresult r = cuCtxGetCurrent(&ctx);
      if (r == 0 && !ctx) r = use_device(0);
      if (r == 0) r = cuStreamCreate(&stream, kStreamNonBlocking);
      if (r != 0) return r;
    }
    CUresult r = cuMemcpyAsync(static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(dst)),
                               static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(src)), n, stream);
    CUresult w = cuStreamSynchronize(stream);
    return r ? r : w;
  }

 private:
  template <typename F>
  bool sym(void* h, const char* name, F& f, bool required = true) {
    f = reinterpret_cast<F>(dlsym(h, name));
    if (!f && required) error = std::string("libcuda.so.1 has no ") + name;
    return f || !required;
  }
  void open() {
    void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
      error = "the CUDA driver (libcuda.so.1) is not installed";
      return;
    }
    bool all = sym(h, "cuInit", cuInit) && sym(h, "cuCtxGetCurrent", cuCtxGetCurrent) &&
               sym(h, "cuCtxSetCurrent", cuCtxSetCurrent) && sym(h, "cuDeviceGet", cuDeviceGet) &&
               sym(h, "cuDevicePrimaryCtxRetain", cuDevicePrimaryCtxRetain) &&
               sym(h, "cuEventCreate", cuEventCreate) && sym(h, "cuEventRecord", cuEventRecord) &&
               sym(h, "cuEventQuery", cuEventQuery) && sym(h, "cuEventDestroy_v2", cuEventDestroy) &&
               sym(h, "cuStreamQuery", cuStreamQuery) &&
               sym(h, "cuPointerGetAttribute", cuPointerGetAttribute) &&
               sym(h, "cuMemGetAddressRange_v2", cuMemGetAddressRange) &&
               sym(h, "cuGetErrorString", cuGetErrorString);
    sym(h, "cuMemGetHandleForAddressRange", cuMemGetHandleForAddressRange, false);
    sym(h, "cuMemAlloc_v2", cuMemAlloc, false);
    sym(h, "cuMemFree_v2", cuMemFree, false);
    sym(h, "cuFlushGPUDirectRDMAWrites", cuFlushGPUDirectRDMAWrites, false);
    sym(h, "cuMemcpyAsync", cuMemcpyAsync, false);
    sym(h, "cuStreamCreate", cuStreamCreate, false);
    sym(h, "cuStreamSynchronize", cuStreamSynchronize, false);
    if (!all) return;
    CUresult r = cuInit(0);
    if (r != 0) {
      error = "cuInit failed: " + str(r);
      return;
    }
    ok = true;
  }
};

}  // namespace trellis
