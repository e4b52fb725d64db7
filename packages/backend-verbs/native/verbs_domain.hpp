// One RDMA NIC as a Trellis Domain, over the Verbs seam: RC queue pairs per peer, shared receive
// queues, WR chains, and a TCP handshake that connects QPs on first use.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "trellis/domain.hpp"
#include "verbs_api.hpp"

namespace trellis_verbs {

struct VerbsOptions {
  std::string device;          // device name; "" picks the `index`-th device with an active port
  int index = 0;               // which NIC of the engine this is
  bool model = false;          // the software RC model instead of libibverbs
  int port = 1;
  int gid_index = -1;          // -1: automatic (a RoCE v2 GID, IPv4-mapped first)
  std::string handshake_host;  // IPv4 address to listen on and advertise; "" = the RoCE v2 GID's
  int handshake_port = 0;      // 0: any
  uint8_t timeout = 14;        // local ACK timeout, 4.096 µs × 2^timeout (14: 67 ms)
  uint8_t retry_cnt = 7;
  uint8_t rnr_retry = 7;       // 7: retry forever
  uint8_t min_rnr_timer = 12;  // 0.64 ms
  uint32_t connect_timeout_ms = 5000;
  bool relaxed_ordering = true;
  uint32_t max_send_wr = 1024;  // per QP
  uint32_t imm_recvs = 2048;    // zero-byte receives kept posted for immediates
  uint32_t msg_recvs = 128;     // capacity of the message SRQ (the engine posts its buffers there)
};

// Facts of the device for stats and `trellis doctor`.
struct DeviceFacts {
  std::string verbs, device, link, gid;
  int port = 1, gid_index = 0, mtu = 0;
  uint16_t lid = 0;
  bool thread_domain = false;
};

std::vector<std::string> list_devices(bool model, std::string* err);

class VerbsDomain final : public trellis::Domain {
 public:
  static std::unique_ptr<VerbsDomain> open(const VerbsOptions& opts, std::string* err);
  ~VerbsDomain() override;

  std::string provider() const override { return v_->name() == std::string("rc-model") ? "rc-model" : "verbs"; }
  std::vector<uint8_t> address() const override { return addr_; }
  std::string describe() const override;
  int reg(void* ptr, size_t len, bool remote, trellis::LocalMr* out, std::string* msg) override;
  // GPU memory through a dma-buf (ibv_reg_dmabuf_mr) where the device and the CUDA driver take it:
  // probed once at open (see probe_dmabuf). Never run: no RDMA device exists where Trellis is
  // developed; the RC model does not take dma-bufs, so there CUDA regions are staged.
  std::string path() const override { return dmabuf_ ? "direct" : "host"; }
  int reg_device(void* ptr, size_t len, int device, bool remote, trellis::LocalMr* out, std::string* msg) override;
  void dereg(trellis::LocalMr& mr) override;
  int add_peer(const uint8_t* addr, size_t len, uint64_t* handle, std::string* msg) override;
  trellis::RemoteKey sink_of(const uint8_t*, size_t) const override { return {}; }
  int post_write(const trellis::WriteWr& wr) override;
  int post_send(uint64_t peer, const void* buf, size_t len, void* desc, void* ctx) override;
  int post_recv(void* buf, size_t len, void* desc, void* ctx) override;
  void flush_posts() override;
  int poll(std::vector<trellis::Completion>& out, int max) override;
  std::string strerror(int err) const override;
  trellis::Code classify(int err) const override;
  size_t max_msg_size() const override { return max_msg_; }
  int wait_fd() const override { return wait_ep_; }
  bool try_wait() override;

  const DeviceFacts& facts() const { return facts_; }
  // Queue pairs alive (connected, connecting or draining), for tests.
  size_t live_qps() const { return qps_.size(); }

 private:
  struct QpRec;
  struct Peer;
  struct HsConn;

  VerbsDomain() = default;
  bool setup(const VerbsOptions& opts, std::string* err);
  int make_qps(Peer& p, std::string* err);
  void connect_qps(Peer& p);
  int to_rts(ibv_qp* qp, uint32_t rqpn, uint32_t rpsn, const Peer& p, std::string* err);
  void retire_qps(Peer& p);
  void start_handshake(Peer& p);
  void handshake_failed(Peer& p, const std::string& why);
  void service_handshakes();
  void on_hs_readable(HsConn* c);
  bool hs_flush(HsConn* c);
  void close_hs(HsConn* c);
  Peer* peer_by_addr(const std::vector<uint8_t>& a, bool create);
  void drain_queued(Peer& p);
  int enqueue_write(Peer& p, const trellis::WriteWr& wr);
  int chain_write(Peer& p, const trellis::WriteWr& wr);
  int chain_send(Peer& p, const void* buf, size_t len, void* desc, void* ctx);
  void append(QpRec* q, ibv_send_wr w, const void* buf, size_t len, void* desc);
  void fail_chain(QpRec* q, const std::string& why);
  void map_wc(const ibv_wc& wc, std::vector<trellis::Completion>& out);
  void repost_imm_recvs();

  Verbs* v_ = nullptr;
  VerbsOptions opts_;
  bool dmabuf_ = false;               // CUDA memory registers through dma-bufs (probed at open)
  std::vector<void*> device_mrs_;     // ibv_mr* of GPU registrations: imms are flushed while any live
  void probe_dmabuf();
  DeviceFacts facts_;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;       // the protection domain
  ibv_pd* use_pd_ = nullptr;   // what objects are created on: a thread domain's parent pd where offered
  ibv_comp_channel* ch_ = nullptr;
  ibv_cq* cq_ = nullptr;
  ibv_srq* msg_srq_ = nullptr;
  ibv_srq* imm_srq_ = nullptr;
  ibv_mr* imm_mr_ = nullptr;
  uint8_t imm_sink_[64] = {};
  uint32_t imm_to_post_ = 0;
  ibv_port_attr port_attr_{};
  ibv_gid gid_{};
  bool ib_ = false;
  size_t max_msg_ = 1u << 30;
  std::vector<uint8_t> addr_;
  uint32_t hs_ip_ = 0;  // network order
  uint16_t hs_port_ = 0;
  int listen_fd_ = -1, hs_ep_ = -1, wait_ep_ = -1;
  uint32_t polls_ = 0;
  std::vector<std::unique_ptr<Peer>> peers_;
  std::map<std::vector<uint8_t>, size_t> peer_index_;
  std::unordered_map<uint32_t, std::unique_ptr<QpRec>> qps_;  // by qp_num, including retired ones
  std::vector<HsConn*> hs_conns_;
  std::vector<trellis::Completion> stash_;  // completions produced outside ibv_poll_cq
  std::vector<QpRec*> dirty_;               // QPs with a chain to post
  std::unordered_set<uint64_t> msg_recv_ids_;  // message receives posted, by wr_id
};

}  // namespace trellis_verbs
