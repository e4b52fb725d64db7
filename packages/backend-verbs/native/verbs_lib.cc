// libibverbs, opened at run time. The addon links no libibverbs: one binary serves every rdma-core,
// and the addon (and the software RC model, which needs no RDMA at all) loads where none is
// installed. The functions libibverbs exports are defined here, hidden, as trampolines into the
// library, each bound to the symbol version these headers were written for; everything else in
// the verbs API (post, poll, notify, thread domains) is an inline call through the device's
// operation tables and needs no symbol.
#include <dlfcn.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <type_traits>

#include "verbs_api.hpp"

namespace trellis_verbs {

namespace {

struct Lib {
  void* handle = nullptr;
  std::string error;
};

const Lib& lib() {
  static const Lib l = [] {
    Lib out;
    out.handle = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!out.handle) {
      const char* e = dlerror();
      out.error = std::string("libibverbs.so.1 could not be loaded (") + (e ? e : "not found") +
                  "): install rdma-core's libibverbs (Debian/Ubuntu: apt install libibverbs1 ibverbs-providers; "
                  "RHEL/Fedora: dnf install libibverbs), or use the software RC model (createEngine({ model: true }))";
    }
    return out;
  }();
  return l;
}

void* sym(const char* name, const char* version) {
  const Lib& l = lib();
  if (!l.handle) return nullptr;
  void* p = dlvsym(l.handle, name, version);
  return p ? p : dlsym(l.handle, name);
}

template <typename R>
R unavailable() {
  errno = ENOSYS;
  if constexpr (std::is_pointer_v<R>)
    return nullptr;
  else
    return ENOSYS;
}

}  // namespace

const std::string& verbs_library_error() { return lib().error; }

}  // namespace trellis_verbs

using trellis_verbs::sym;
using trellis_verbs::unavailable;

// One trampoline: the function named `name`, version `ver`, with parameters `params` forwarded as `args`.
#define TRELLIS_IBV(ret, name, ver, params, args)                              \
  extern "C" ret(name) params {                                                \
    using F = ret(*) params;                                                   \
    static const F f = reinterpret_cast<F>(sym(#name, ver));                   \
    if (!f) return unavailable<ret>();                                         \
    return f args;                                                             \
  }

TRELLIS_IBV(ibv_device**, ibv_get_device_list, "IBVERBS_1.1", (int* n), (n))
TRELLIS_IBV(ibv_context*, ibv_open_device, "IBVERBS_1.1", (ibv_device * d), (d))
TRELLIS_IBV(const char*, ibv_get_device_name, "IBVERBS_1.1", (ibv_device * d), (d))
TRELLIS_IBV(int, ibv_close_device, "IBVERBS_1.1", (ibv_context * c), (c))
TRELLIS_IBV(int, ibv_query_device, "IBVERBS_1.1", (ibv_context * c, ibv_device_attr* a), (c, a))
TRELLIS_IBV(int, ibv_query_port, "IBVERBS_1.1", (ibv_context * c, uint8_t p, _compat_ibv_port_attr* a), (c, p, a))
TRELLIS_IBV(int, ibv_query_gid, "IBVERBS_1.1", (ibv_context * c, uint8_t p, int i, ibv_gid* g), (c, p, i, g))
TRELLIS_IBV(ibv_pd*, ibv_alloc_pd, "IBVERBS_1.1", (ibv_context * c), (c))
TRELLIS_IBV(int, ibv_dealloc_pd, "IBVERBS_1.1", (ibv_pd * p), (p))
TRELLIS_IBV(ibv_mr*, ibv_reg_mr, "IBVERBS_1.1", (ibv_pd * p, void* a, size_t n, int acc), (p, a, n, acc))
TRELLIS_IBV(ibv_mr*, ibv_reg_mr_iova2, "IBVERBS_1.8", (ibv_pd * p, void* a, size_t n, uint64_t iova, unsigned acc),
            (p, a, n, iova, acc))
TRELLIS_IBV(ibv_mr*, ibv_reg_dmabuf_mr, "IBVERBS_1.12",
            (ibv_pd * p, uint64_t off, size_t n, uint64_t iova, int fd, int acc), (p, off, n, iova, fd, acc))
TRELLIS_IBV(int, ibv_dereg_mr, "IBVERBS_1.1", (ibv_mr * m), (m))
TRELLIS_IBV(ibv_comp_channel*, ibv_create_comp_channel, "IBVERBS_1.0", (ibv_context * c), (c))
TRELLIS_IBV(int, ibv_destroy_comp_channel, "IBVERBS_1.0", (ibv_comp_channel * ch), (ch))
TRELLIS_IBV(ibv_cq*, ibv_create_cq, "IBVERBS_1.1", (ibv_context * c, int cqe, void* cc, ibv_comp_channel* ch, int v),
            (c, cqe, cc, ch, v))
TRELLIS_IBV(int, ibv_destroy_cq, "IBVERBS_1.1", (ibv_cq * cq), (cq))
TRELLIS_IBV(int, ibv_get_cq_event, "IBVERBS_1.1", (ibv_comp_channel * ch, ibv_cq** cq, void** cc), (ch, cq, cc))
TRELLIS_IBV(ibv_srq*, ibv_create_srq, "IBVERBS_1.1", (ibv_pd * p, ibv_srq_init_attr* a), (p, a))
TRELLIS_IBV(int, ibv_destroy_srq, "IBVERBS_1.1", (ibv_srq * s), (s))
TRELLIS_IBV(ibv_qp*, ibv_create_qp, "IBVERBS_1.1", (ibv_pd * p, ibv_qp_init_attr* a), (p, a))
TRELLIS_IBV(int, ibv_modify_qp, "IBVERBS_1.1", (ibv_qp * q, ibv_qp_attr* a, int m), (q, a, m))
TRELLIS_IBV(int, ibv_destroy_qp, "IBVERBS_1.1", (ibv_qp * q), (q))

extern "C" void ibv_free_device_list(ibv_device** list) {
  using F = void (*)(ibv_device**);
  static const F f = reinterpret_cast<F>(sym("ibv_free_device_list", "IBVERBS_1.1"));
  if (f) f(list);
}

extern "C" void ibv_ack_cq_events(ibv_cq* cq, unsigned int n) {
  using F = void (*)(ibv_cq*, unsigned int);
  static const F f = reinterpret_cast<F>(sym("ibv_ack_cq_events", "IBVERBS_1.1"));
  if (f) f(cq, n);
}

// The RC model reports the same statuses where no libibverbs is installed: then the number.
extern "C" const char* ibv_wc_status_str(ibv_wc_status s) {
  using F = const char* (*)(ibv_wc_status);
  static const F f = reinterpret_cast<F>(sym("ibv_wc_status_str", "IBVERBS_1.1"));
  if (f) return f(s);
  static thread_local char buf[48];
  snprintf(buf, sizeof buf, "work completion status %d", static_cast<int>(s));
  return buf;
}
