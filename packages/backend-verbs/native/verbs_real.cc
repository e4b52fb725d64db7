// The seam over libibverbs: thin, one call each (the library itself is opened at run time: verbs_lib.cc).
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>

#include "verbs_api.hpp"

namespace trellis_verbs {
namespace {

std::string read_line(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  if (f) std::getline(f, s);
  return s;
}

class RealVerbs final : public Verbs {
 public:
  const char* name() const override { return "libibverbs"; }

  std::vector<std::string> devices(std::string* err) override {
    std::vector<std::string> out;
    if (!verbs_library_error().empty()) {
      *err = verbs_library_error();
      return out;
    }
    int n = 0;
    ibv_device** list = ibv_get_device_list(&n);
    if (!list) {
      *err = std::string("no RDMA device: ") +
             (errno == ENOSYS ? "this kernel has no RDMA support loaded (ibv_get_device_list: " : "(ibv_get_device_list: ") +
             std::strerror(errno) + ")";
      return out;
    }
    for (int i = 0; i < n; i++) out.emplace_back(ibv_get_device_name(list[i]));
    ibv_free_device_list(list);
    if (out.empty()) *err = "no RDMA device found (ibv_get_device_list returned none)";
    return out;
  }

  ibv_context* open_device(const std::string& name, std::string* err) override {
    if (!verbs_library_error().empty()) {
      *err = verbs_library_error();
      return nullptr;
    }
    int n = 0;
    ibv_device** list = ibv_get_device_list(&n);
    if (!list) {
      *err = std::string("no RDMA device (ibv_get_device_list: ") + std::strerror(errno) + ")";
      return nullptr;
    }
    ibv_context* ctx = nullptr;
    bool found = false;
    for (int i = 0; i < n; i++) {
      if (name == ibv_get_device_name(list[i])) {
        found = true;
        ctx = ibv_open_device(list[i]);
        if (!ctx) *err = "ibv_open_device(" + name + "): " + std::strerror(errno);
      }
    }
    ibv_free_device_list(list);
    if (!found) *err = "no RDMA device named '" + name + "'";
    return ctx;
  }

  int close_device(ibv_context* ctx) override { return ibv_close_device(ctx); }
  int query_device(ibv_context* ctx, ibv_device_attr* attr) override { return ibv_query_device(ctx, attr); }
  int query_port(ibv_context* ctx, uint8_t port, ibv_port_attr* attr) override {
    return ibv_query_port(ctx, port, attr);
  }
  int query_gid(ibv_context* ctx, uint8_t port, int index, ibv_gid* gid) override {
    return ibv_query_gid(ctx, port, index, gid);
  }
  int gid_type(ibv_context* ctx, uint8_t port, int index) override {
    ibv_gid gid{};
    if (ibv_query_gid(ctx, port, index, &gid)) return -errno;
    static const uint8_t zero[16] = {};
    if (std::memcmp(gid.raw, zero, 16) == 0) return 0;
    std::string t = read_line(std::string("/sys/class/infiniband/") + ibv_get_device_name(ctx->device) +
                              "/ports/" + std::to_string(port) + "/gid_attrs/types/" + std::to_string(index));
    return t.find("v2") != std::string::npos ? 2 : 1;
  }
  std::string pci_path(ibv_context* ctx) override {
    char buf[PATH_MAX];
    std::string p = std::string("/sys/class/infiniband/") + ibv_get_device_name(ctx->device) + "/device";
    return realpath(p.c_str(), buf) ? std::string(buf) : std::string();
  }

  ibv_pd* alloc_pd(ibv_context* ctx) override { return ibv_alloc_pd(ctx); }
  ibv_pd* alloc_thread_pd(ibv_context* ctx, ibv_pd* pd) override {
    ibv_td_init_attr ta{};
    ibv_td* td = ibv_alloc_td(ctx, &ta);
    if (!td) return nullptr;
    ibv_parent_domain_init_attr pa{};
    pa.pd = pd;
    pa.td = td;
    ibv_pd* parent = ibv_alloc_parent_domain(ctx, &pa);
    if (!parent) {
      ibv_dealloc_td(td);
      return nullptr;
    }
    std::lock_guard<std::mutex> g(mu_);
    tds_.emplace_back(parent, td);
    return parent;
  }
  int dealloc_pd(ibv_pd* pd) override {
    int rc = ibv_dealloc_pd(pd);
    std::lock_guard<std::mutex> g(mu_);
    for (auto it = tds_.begin(); it != tds_.end(); ++it) {
      if (it->first == pd) {
        ibv_dealloc_td(it->second);
        tds_.erase(it);
        break;
      }
    }
    return rc;
  }
  ibv_mr* reg_mr(ibv_pd* pd, void* addr, size_t len, int access) override { return ibv_reg_mr(pd, addr, len, access); }
  ibv_mr* reg_dmabuf_mr(ibv_pd* pd, uint64_t offset, size_t len, uint64_t iova, int fd, int access) override {
    return ibv_reg_dmabuf_mr(pd, offset, len, iova, fd, access);
  }
  int dereg_mr(ibv_mr* mr) override { return ibv_dereg_mr(mr); }

  ibv_comp_channel* create_comp_channel(ibv_context* ctx) override {
    ibv_comp_channel* ch = ibv_create_comp_channel(ctx);
    if (ch) fcntl(ch->fd, F_SETFL, fcntl(ch->fd, F_GETFL) | O_NONBLOCK);
    return ch;
  }
  int destroy_comp_channel(ibv_comp_channel* ch) override { return ibv_destroy_comp_channel(ch); }
  ibv_cq* create_cq(ibv_context* ctx, int cqe, ibv_comp_channel* ch) override {
    return ibv_create_cq(ctx, cqe, nullptr, ch, 0);
  }
  int destroy_cq(ibv_cq* cq) override { return ibv_destroy_cq(cq); }
  int req_notify_cq(ibv_cq* cq) override { return ibv_req_notify_cq(cq, 0); }
  int get_cq_event(ibv_comp_channel* ch, ibv_cq** cq) override {
    void* ctx = nullptr;
    if (ibv_get_cq_event(ch, cq, &ctx)) return errno == EAGAIN ? -EAGAIN : -errno;
    return 0;
  }
  void ack_cq_events(ibv_cq* cq, unsigned n) override { ibv_ack_cq_events(cq, n); }
  int poll_cq(ibv_cq* cq, int n, ibv_wc* wc) override { return ibv_poll_cq(cq, n, wc); }

  ibv_srq* create_srq(ibv_pd* pd, ibv_srq_init_attr* attr) override { return ibv_create_srq(pd, attr); }
  int destroy_srq(ibv_srq* srq) override { return ibv_destroy_srq(srq); }
  int post_srq_recv(ibv_srq* srq, ibv_recv_wr* wr, ibv_recv_wr** bad) override {
    return ibv_post_srq_recv(srq, wr, bad);
  }

  ibv_qp* create_qp(ibv_pd* pd, ibv_qp_init_attr* attr) override { return ibv_create_qp(pd, attr); }
  int modify_qp(ibv_qp* qp, ibv_qp_attr* attr, int mask) override { return ibv_modify_qp(qp, attr, mask); }
  int destroy_qp(ibv_qp* qp) override { return ibv_destroy_qp(qp); }
  int post_send(ibv_qp* qp, ibv_send_wr* wr, ibv_send_wr** bad) override { return ibv_post_send(qp, wr, bad); }
  int post_recv(ibv_qp* qp, ibv_recv_wr* wr, ibv_recv_wr** bad) override { return ibv_post_recv(qp, wr, bad); }

 private:
  std::mutex mu_;  // engines open and close devices from any thread
  std::vector<std::pair<ibv_pd*, ibv_td*>> tds_;
};

}  // namespace

Verbs& real_verbs() {
  static RealVerbs v;
  return v;
}

}  // namespace trellis_verbs
