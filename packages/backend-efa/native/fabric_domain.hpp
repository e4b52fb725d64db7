// One libfabric NIC as a Trellis Domain: RDM endpoint, AV, CQ in FI_CQ_FORMAT_DATA.
#pragma once

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "trellis/domain.hpp"

namespace trellis_efa {

struct FabricOptions {
  std::string provider;   // "efa", "shm", "tcp;ofi_rxm", or "" for auto
  bool strict = false;    // refuse any fallback
  std::string iface;      // optional: source address / interface for tcp
  int index = 0;          // which of the provider's domains (NICs) to open; wraps around
  bool hmem = true;       // ask for FI_HMEM (GPU memory registered directly) where the provider offers it
};

// What fi_getinfo found for a provider, for `trellis doctor` and error messages.
struct ProviderProbe {
  std::string provider, fabric, domain;
  bool rma = false, remote_cq_data = false, hmem = false;
  std::string error;
};

std::vector<ProviderProbe> probe_providers();
// "major.minor" of the libfabric loaded at run time (fi_version()).
std::string fabric_version();
// libfabric was built with CUDA (FI_HMEM_CUDA): its CUDA parameters exist.
bool fabric_has_cuda();
// The file the libfabric in use was loaded from (which install: Debian's, /opt/amazon/efa, ...).
std::string fabric_library();

class FabricDomain final : public trellis::Domain {
 public:
  // Open a domain; on failure returns nullptr and sets *err to a message that says what is missing.
  static std::unique_ptr<FabricDomain> open(const FabricOptions& opts, std::string* err);
  ~FabricDomain() override;

  std::string provider() const override { return provider_; }
  std::vector<uint8_t> address() const override;
  std::string path() const override { return hmem_ ? "direct" : "host"; }
  int reg(void* ptr, size_t len, bool remote, trellis::LocalMr* out, std::string* msg) override;
  int reg_device(void* ptr, size_t len, int device, bool remote, trellis::LocalMr* out, std::string* msg) override;
  void dereg(trellis::LocalMr& mr) override;
  int add_peer(const uint8_t* addr, size_t len, uint64_t* handle, std::string* msg) override;
  trellis::RemoteKey sink_of(const uint8_t* addr, size_t len) const override;
  int post_write(const trellis::WriteWr& wr) override;
  int post_send(uint64_t peer, const void* buf, size_t len, void* desc, void* ctx) override;
  int post_recv(void* buf, size_t len, void* desc, void* ctx) override;
  int poll(std::vector<trellis::Completion>& out, int max) override;
  std::string strerror(int err) const override;
  trellis::Code classify(int err) const override;
  size_t max_msg_size() const override { return max_msg_; }
  uint32_t queue_depth() const override { return queue_depth_; }
  int wait_fd() const override { return wait_fd_; }
  std::vector<int> wait_fds() const override {
    if (!in_cq_) return {wait_fd_};
    return {wait_fd_, in_wait_fd_};
  }
  bool try_wait() override;
  void teardown() override;

 private:
  FabricDomain() = default;
  static bool shm_opened();
  bool shm_counted_ = false;  // an shm domain: its close is deferred (see ~FabricDomain)
  std::string provider_;
  fi_info* info_ = nullptr;
  fid_fabric* fabric_ = nullptr;
  fid_domain* domain_ = nullptr;
  fid_av* av_ = nullptr;
  fid_cq* cq_ = nullptr;     // ep_'s: completions of what this engine posts (and, alone, of everything)
  fid_cq* in_cq_ = nullptr;  // in_ep_'s, where it exists: arrivals and receives
  // Work posted on ep_ whose completion has not been read: while 0, cq_ is read only now and then.
  uint64_t out_open_ = 0;
  uint32_t out_idle_polls_ = 0;
  static constexpr uint32_t kOutIdlePolls = 64;
  uint32_t in_empty_ = 0, in_skip_ = 0;
  static constexpr uint32_t kInEmptyReads = 16, kInSkip = 4;
  int in_wait_fd_ = -1;  // in_cq_'s wait fd, as wait_fd_ is cq_'s (-1: none)
  fid_ep* ep_ = nullptr;     // initiates: writes and sends go out here
  // Where peers write and send to, on connection-based providers (tcp): its own endpoint, so the
  // pair's two directions travel on two connections. tcp answers a refused key by tearing down the
  // connection it came on, cancelling everything on it; apart, that costs only the refused
  // writer's own operations to this peer, never this engine's operations to that writer.
  // nullptr elsewhere (ep_ then does both). It completes into its own CQ, in_cq_ (see poll).
  fid_ep* in_ep_ = nullptr;
  fid_ep* rx_ep() const { return in_ep_ ? in_ep_ : ep_; }
  std::vector<uint8_t> name_;
  uint64_t mr_mode_ = 0;
  uint64_t next_key_ = 1;
  size_t max_msg_ = 0;
  uint32_t queue_depth_ = 0;
  uint64_t write_flags_ = 0;
  bool zero_needs_byte_ = false;
  bool hmem_ = false;      // the provider took FI_HMEM: CUDA memory registers directly
  int device_regs_ = 0;    // live registrations of GPU memory: while > 0, immediates are fenced
  // Immediates held until the bytes of their writes are visible in GPU memory: a CUDA event
  // recorded on the legacy default stream after libfabric's copies, and the completions behind it.
  struct Fence {
    void* event = nullptr;
    std::vector<trellis::Completion> held;
  };
  std::deque<Fence> fences_;
  std::vector<void*> device_mrs_;  // fid_mr* of GPU registrations
  std::vector<void*> spare_events_;
  bool fence(std::vector<trellis::Completion>& held);
  int poll_cq(fid_cq* cq, std::vector<trellis::Completion>& out, int max);
  void release_fences(std::vector<trellis::Completion>& out);
  int wait_fd_ = -1;  // provider quirk: see post_write
  // The sink: a small region every peer may write zero-byte immediates into.
  std::vector<uint8_t> sink_;
  trellis::LocalMr sink_mr_;
  std::unordered_map<std::string, fi_addr_t> peers_;
};

}  // namespace trellis_efa
