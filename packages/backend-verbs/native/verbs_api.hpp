// The seam: every ibverbs call backend-verbs makes goes through this interface. Two
// implementations sit behind it — libibverbs itself (verbs_real.cc) and a software model of RC
// semantics (rc_model.cc) that runs where no RDMA device exists, across processes.
//
// Objects are libibverbs' own structs (ibv_qp, ibv_mr, ...) so the domain reads like verbs code:
// it may read their public fields (qp_num, lkey, rkey, ...), never call libibverbs on them directly.
#pragma once

#include <infiniband/verbs.h>

#include <memory>
#include <string>
#include <vector>

namespace trellis_verbs {

class Verbs {
 public:
  virtual ~Verbs() = default;
  // "libibverbs" or "rc-model".
  virtual const char* name() const = 0;
  // Names of the devices present; on failure an empty list and *err says why.
  virtual std::vector<std::string> devices(std::string* err) = 0;
  virtual ibv_context* open_device(const std::string& name, std::string* err) = 0;
  virtual int close_device(ibv_context* ctx) = 0;
  virtual int query_device(ibv_context* ctx, ibv_device_attr* attr) = 0;
  virtual int query_port(ibv_context* ctx, uint8_t port, ibv_port_attr* attr) = 0;
  virtual int query_gid(ibv_context* ctx, uint8_t port, int index, ibv_gid* gid) = 0;
  // 2 for a RoCE v2 GID, 1 for RoCE v1 / IB, 0 for an empty entry, negative errno on failure.
  virtual int gid_type(ibv_context* ctx, uint8_t port, int index) = 0;
  // PCI path of the device in sysfs ("" where there is none), for NIC-to-GPU affinity.
  virtual std::string pci_path(ibv_context* ctx) = 0;

  virtual ibv_pd* alloc_pd(ibv_context* ctx) = 0;
  // A parent domain over `pd` with a thread domain (single-threaded use, no locks in the driver);
  // nullptr where the device offers none.
  virtual ibv_pd* alloc_thread_pd(ibv_context* ctx, ibv_pd* pd) = 0;
  virtual int dealloc_pd(ibv_pd* pd) = 0;  // also frees a thread pd's thread domain
  virtual ibv_mr* reg_mr(ibv_pd* pd, void* addr, size_t len, int access) = 0;
  virtual ibv_mr* reg_dmabuf_mr(ibv_pd* pd, uint64_t offset, size_t len, uint64_t iova, int fd, int access) = 0;
  virtual int dereg_mr(ibv_mr* mr) = 0;

  virtual ibv_comp_channel* create_comp_channel(ibv_context* ctx) = 0;
  virtual int destroy_comp_channel(ibv_comp_channel* ch) = 0;
  virtual ibv_cq* create_cq(ibv_context* ctx, int cqe, ibv_comp_channel* ch) = 0;
  virtual int destroy_cq(ibv_cq* cq) = 0;
  virtual int req_notify_cq(ibv_cq* cq) = 0;
  // Consume one event from the channel (non-blocking channel fd: -EAGAIN when none).
  virtual int get_cq_event(ibv_comp_channel* ch, ibv_cq** cq) = 0;
  virtual void ack_cq_events(ibv_cq* cq, unsigned n) = 0;
  virtual int poll_cq(ibv_cq* cq, int n, ibv_wc* wc) = 0;

  virtual ibv_srq* create_srq(ibv_pd* pd, ibv_srq_init_attr* attr) = 0;
  virtual int destroy_srq(ibv_srq* srq) = 0;
  virtual int post_srq_recv(ibv_srq* srq, ibv_recv_wr* wr, ibv_recv_wr** bad) = 0;

  virtual ibv_qp* create_qp(ibv_pd* pd, ibv_qp_init_attr* attr) = 0;
  virtual int modify_qp(ibv_qp* qp, ibv_qp_attr* attr, int mask) = 0;
  virtual int destroy_qp(ibv_qp* qp) = 0;
  virtual int post_send(ibv_qp* qp, ibv_send_wr* wr, ibv_send_wr** bad) = 0;
  virtual int post_recv(ibv_qp* qp, ibv_recv_wr* wr, ibv_recv_wr** bad) = 0;
};

// libibverbs (opened at run time, verbs_lib.cc): the real devices.
Verbs& real_verbs();
// Why libibverbs could not be loaded, with what to install; empty when it was.
const std::string& verbs_library_error();
// The software RC model: devices "rcm0".."rcm3" in every process, reachable across processes.
Verbs& rc_model();

}  // namespace trellis_verbs
