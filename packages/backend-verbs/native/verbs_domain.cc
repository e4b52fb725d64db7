// VerbsDomain: see verbs_domain.hpp.
//
// Per peer, two RC QPs: one for messages (SEND, attached to the message SRQ whose buffers the
// engine posts) and one for writes (RDMA_WRITE and RDMA_WRITE_WITH_IMM, attached to an SRQ of
// zero-byte receives that immediates consume). Work requests are chained per QP and posted with one
// ibv_post_send per round (flush_posts). QPs are created on first use and connected through a TCP
// handshake with the peer's domain; posts made meanwhile are queued here. A QP that reports an
// error is moved to the error state (its work flushes), retired, and replaced on the next post.
#include "verbs_domain_impl.hpp"

namespace trellis_verbs {


std::vector<std::string> list_devices(bool model, std::string* err) {
  return (model ? rc_model() : real_verbs()).devices(err);
}

std::string VerbsDomain::describe() const {
  std::string s = facts_.device + " port " + std::to_string(facts_.port) + ", " + facts_.link;
  if (ib_) s += " LID " + std::to_string(facts_.lid);
  else s += " GID " + std::to_string(facts_.gid_index) + " (" + facts_.gid + ")";
  s += ", MTU " + std::to_string(facts_.mtu);
  if (facts_.thread_domain) s += ", thread domain";
  return s;
}

// ------------------------------------------------------------------------------------- setup
std::unique_ptr<VerbsDomain> VerbsDomain::open(const VerbsOptions& opts, std::string* err) {
  std::unique_ptr<VerbsDomain> d(new VerbsDomain());
  if (!d->setup(opts, err)) return nullptr;
  d->probe_dmabuf();
  return d;
}

// GPUDirect RDMA through dma-bufs needs the CUDA driver's export (CUDA >= 11.7), a kernel >= 5.12
// and a device/driver that takes ibv_reg_dmabuf_mr: try it once on a small allocation of device 0.
void VerbsDomain::probe_dmabuf() {
  trellis::CudaDriver& cu = trellis::CudaDriver::get();
  if (opts_.model) {
    // The RC model copies GPU memory with the CUDA driver itself: no dma-buf needed.
    dmabuf_ = cu.can_copy();
    return;
  }
  if (!cu.ok || !cu.cuMemAlloc || !cu.cuMemFree || !cu.cuMemGetHandleForAddressRange || cu.use_device(0) != 0) return;
  trellis::CudaDriver::CUdeviceptr p = 0;
  const size_t n = 2 << 20;
  if (cu.cuMemAlloc(&p, n) != 0) return;
  uint64_t offset = 0;
  int fd = cu.dmabuf(p, n, p, n, &offset);
  if (fd >= 0) {
    ibv_mr* mr = v_->reg_dmabuf_mr(use_pd_, offset, n, p, fd, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (mr) {
      dmabuf_ = true;
      v_->dereg_mr(mr);
    }
    close(fd);
  }
  cu.cuMemFree(p);
}

int VerbsDomain::reg_device(void* ptr, size_t len, int device, bool remote, trellis::LocalMr* out, std::string* msg) {
  if (!dmabuf_) {
    *msg = "this RDMA device or CUDA driver does not take GPU memory through dma-bufs";
    return -EOPNOTSUPP;
  }
  trellis::CudaDriver& cu = trellis::CudaDriver::get();
  auto p = static_cast<trellis::CudaDriver::CUdeviceptr>(reinterpret_cast<uintptr_t>(ptr));
  trellis::CudaDriver::CUdeviceptr base = 0;
  size_t size = 0;
  int cr = cu.use_device(device);
  if (cr == 0) cr = cu.cuMemGetAddressRange(&base, &size, p);
  if (cr != 0) {
    *msg = "the CUDA driver does not know this pointer on device " + std::to_string(device) + ": " + cu.str(cr);
    return -EINVAL;
  }
  if (p + len > base + size) {
    *msg = std::to_string(len) + " bytes from the pointer run past its allocation";
    return -EINVAL;
  }
  uint64_t offset = 0;
  // The RC model takes the device address itself (iova) and needs no dma-buf.
  int fd = opts_.model ? -1 : cu.dmabuf(p, len, base, size, &offset);
  if (fd < 0 && !opts_.model) {
    *msg = "cuMemGetHandleForAddressRange could not export a dma-buf for this range";
    return -EIO;
  }
  int access = IBV_ACCESS_LOCAL_WRITE | (remote ? IBV_ACCESS_REMOTE_WRITE : 0);
  if (opts_.relaxed_ordering) access |= IBV_ACCESS_RELAXED_ORDERING;
  ibv_mr* mr = v_->reg_dmabuf_mr(use_pd_, offset, len, p, fd, access);
  int e = errno;
  if (fd >= 0) close(fd);
  if (!mr) {
    *msg = std::string("ibv_reg_dmabuf_mr: ") + std::strerror(e);
    return -(e ? e : EIO);
  }
  out->handle = mr;
  out->desc = reinterpret_cast<void*>(static_cast<uintptr_t>(mr->lkey));
  out->rkey = mr->rkey;
  out->raddr = p;
  device_mrs_.push_back(mr);
  return 0;
}

bool VerbsDomain::setup(const VerbsOptions& opts, std::string* err) {
  opts_ = opts;
  v_ = opts.model ? &rc_model() : &real_verbs();
  facts_.verbs = v_->name();
  std::string name = opts.device;
  if (name.empty()) {
    // The index-th device with an active port.
    std::vector<std::string> devs = v_->devices(err);
    std::vector<std::string> active;
    for (auto& n : devs) {
      std::string e;
      ibv_context* c = v_->open_device(n, &e);
      if (!c) continue;
      ibv_port_attr pa{};
      if (v_->query_port(c, static_cast<uint8_t>(opts.port), &pa) == 0 && pa.state == IBV_PORT_ACTIVE)
        active.push_back(n);
      v_->close_device(c);
    }
    if (active.empty()) {
      if (err->empty())
        *err = opts.model ? "INVALID_ARGUMENT: the software RC model's devices (rcm0..) have port 1 only, not port " +
                                std::to_string(opts.port) + "; leave port out or pass 1"
                          : "no RDMA device has port " + std::to_string(opts.port) + " active";
      return false;
    }
    name = active[static_cast<size_t>(opts.index) % active.size()];
  }
  ctx_ = v_->open_device(name, err);
  if (!ctx_) return false;
  facts_.device = name;
  facts_.port = opts.port;
  if (v_->query_port(ctx_, static_cast<uint8_t>(opts.port), &port_attr_)) {
    *err = name + ": ibv_query_port(" + std::to_string(opts.port) + ") failed: " + std::strerror(errno);
    return false;
  }
  if (port_attr_.state != IBV_PORT_ACTIVE) {
    *err = name + " port " + std::to_string(opts.port) + " is not active (check the cable / link with ibv_devinfo)";
    return false;
  }
  ib_ = port_attr_.link_layer != IBV_LINK_LAYER_ETHERNET;
  facts_.link = ib_ ? "InfiniBand" : "RoCE";
  facts_.lid = port_attr_.lid;
  facts_.mtu = 128 << port_attr_.active_mtu;
  max_msg_ = port_attr_.max_msg_sz ? port_attr_.max_msg_sz : (1u << 30);
  // GID: an explicit index, else on RoCE a v2 GID (IPv4-mapped first), else index 0.
  int gi = opts.gid_index;
  if (gi < 0) {
    gi = 0;
    if (!ib_) {
      int best = -1, score = 0;
      for (int i = 0; i < port_attr_.gid_tbl_len; i++) {
        int t = v_->gid_type(ctx_, static_cast<uint8_t>(opts.port), i);
        if (t <= 0) continue;
        ibv_gid g{};
        if (v_->query_gid(ctx_, static_cast<uint8_t>(opts.port), i, &g)) continue;
        int s = t == 2 ? (ipv4_mapped(g) ? 3 : 2) : 1;
        if (s > score) {
          score = s;
          best = i;
        }
      }
      if (best < 0) {
        *err = name + ": no usable GID on port " + std::to_string(opts.port) + " (RoCE needs an IP address on the interface)";
        return false;
      }
      gi = best;
    }
  }
  if (gi >= port_attr_.gid_tbl_len || v_->query_gid(ctx_, static_cast<uint8_t>(opts.port), gi, &gid_)) {
    *err = name + ": GID index " + std::to_string(gi) + " does not exist on port " + std::to_string(opts.port);
    return false;
  }
  facts_.gid_index = gi;
  facts_.gid = gid_str(gid_);

  pd_ = v_->alloc_pd(ctx_);
  if (!pd_) {
    *err = name + ": ibv_alloc_pd failed: " + std::strerror(errno);
    return false;
  }
  use_pd_ = v_->alloc_thread_pd(ctx_, pd_);
  facts_.thread_domain = use_pd_ != nullptr;
  if (!use_pd_) use_pd_ = pd_;
  ch_ = v_->create_comp_channel(ctx_);
  int cqe = static_cast<int>(16384 + opts.imm_recvs + opts.msg_recvs + 1024);
  cq_ = ch_ ? v_->create_cq(ctx_, cqe, ch_) : nullptr;
  if (!cq_) {
    *err = name + ": creating a completion queue of " + std::to_string(cqe) + " entries failed: " + std::strerror(errno);
    return false;
  }
  ibv_srq_init_attr sa{};
  sa.attr.max_wr = opts.msg_recvs;
  sa.attr.max_sge = 1;
  msg_srq_ = v_->create_srq(use_pd_, &sa);
  sa.attr.max_wr = opts.imm_recvs;
  imm_srq_ = msg_srq_ ? v_->create_srq(use_pd_, &sa) : nullptr;
  if (!imm_srq_) {
    *err = name + ": creating shared receive queues failed: " + std::strerror(errno);
    return false;
  }
  imm_mr_ = v_->reg_mr(use_pd_, imm_sink_, sizeof imm_sink_, IBV_ACCESS_LOCAL_WRITE);
  if (!imm_mr_) {
    *err = name + ": ibv_reg_mr failed: " + std::strerror(errno);
    return false;
  }
  imm_to_post_ = opts.imm_recvs;
  repost_imm_recvs();

  // The handshake listener.
  if (!opts.handshake_host.empty()) {
    in_addr a{};
    if (inet_pton(AF_INET, opts.handshake_host.c_str(), &a) != 1) {
      *err = "handshakeHost must be an IPv4 address, got '" + opts.handshake_host + "'";
      return false;
    }
    hs_ip_ = a.s_addr;
  } else if (!ib_ && ipv4_mapped(gid_)) {
    std::memcpy(&hs_ip_, gid_.raw + 12, 4);
  } else {
    // The caller's to fix: core reads the code from the prefix.
    *err = "INVALID_ARGUMENT: " + name +
           ": set handshakeHost — an IPv4 address of this host that peers can reach (the GID has none" +
           std::string(ib_ ? ": InfiniBand)" : ")");
    return false;
  }
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = hs_ip_;
  sin.sin_port = htons(static_cast<uint16_t>(opts.handshake_port));
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&sin), sizeof sin) || listen(listen_fd_, 128)) {
    *err = "handshake listener on " + opts.handshake_host + ":" + std::to_string(opts.handshake_port) + ": " +
           std::strerror(errno);
    return false;
  }
  socklen_t sl = sizeof sin;
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sin), &sl);
  hs_port_ = sin.sin_port;
  hs_ep_ = epoll_create1(EPOLL_CLOEXEC);
  wait_ep_ = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  epoll_ctl(hs_ep_, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.fd = ch_->fd;
  epoll_ctl(wait_ep_, EPOLL_CTL_ADD, ch_->fd, &ev);
  ev.data.fd = hs_ep_;
  epoll_ctl(wait_ep_, EPOLL_CTL_ADD, hs_ep_, &ev);

  addr_.assign(kAddrLen, 0);
  addr_[0] = kAddrVersion;
  addr_[1] = ib_ ? 1 : 2;
  addr_[2] = static_cast<uint8_t>(opts.port);
  addr_[3] = static_cast<uint8_t>(port_attr_.active_mtu);
  put16(&addr_[4], port_attr_.lid);
  put16(&addr_[6], hs_port_);
  put32(&addr_[8], hs_ip_);
  put32(&addr_[12], trellis::random_u32());
  std::memcpy(&addr_[16], gid_.raw, 16);
  return true;
}

VerbsDomain::~VerbsDomain() {
  for (auto* c : hs_conns_) {
    ::close(c->fd);
    delete c;
  }
  for (auto& [n, q] : qps_) {
    (void)n;
    v_->destroy_qp(q->qp);
  }
  qps_.clear();
  if (imm_mr_) v_->dereg_mr(imm_mr_);
  if (imm_srq_) v_->destroy_srq(imm_srq_);
  if (msg_srq_) v_->destroy_srq(msg_srq_);
  if (cq_) v_->destroy_cq(cq_);
  if (ch_) v_->destroy_comp_channel(ch_);
  if (use_pd_ && use_pd_ != pd_) v_->dealloc_pd(use_pd_);
  if (pd_) v_->dealloc_pd(pd_);
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (hs_ep_ >= 0) ::close(hs_ep_);
  if (wait_ep_ >= 0) ::close(wait_ep_);
  if (ctx_) v_->close_device(ctx_);
}

void VerbsDomain::repost_imm_recvs() {
  while (imm_to_post_) {
    ibv_recv_wr wrs[32];
    uint32_t n = std::min<uint32_t>(imm_to_post_, 32);
    for (uint32_t i = 0; i < n; i++) {
      wrs[i] = ibv_recv_wr{};
      wrs[i].wr_id = kImmRecv;
      wrs[i].num_sge = 0;  // zero-byte: an immediate carries no payload
      wrs[i].next = i + 1 < n ? &wrs[i + 1] : nullptr;
    }
    ibv_recv_wr* bad = nullptr;
    int rc = v_->post_srq_recv(imm_srq_, wrs, &bad);
    uint32_t posted = n;
    if (rc) {
      posted = 0;
      for (ibv_recv_wr* w = wrs; w && w != bad; w = w->next) posted++;
    }
    imm_to_post_ -= posted;
    if (rc) break;
  }
}

// --------------------------------------------------------------------------------- memory
int VerbsDomain::reg(void* ptr, size_t len, bool remote, trellis::LocalMr* out, std::string* msg) {
  int access = IBV_ACCESS_LOCAL_WRITE | (remote ? IBV_ACCESS_REMOTE_WRITE : 0);
  if (opts_.relaxed_ordering) access |= IBV_ACCESS_RELAXED_ORDERING;
  ibv_mr* mr = v_->reg_mr(use_pd_, ptr, len, access);
  if (!mr) {
    int e = errno;
    *msg = std::string("ibv_reg_mr: ") + std::strerror(e) +
           (e == ENOMEM || e == EPERM ? " (is the locked-memory limit high enough? ulimit -l unlimited)" : "");
    return -(e ? e : EIO);
  }
  out->handle = mr;
  out->desc = reinterpret_cast<void*>(static_cast<uintptr_t>(mr->lkey));
  out->rkey = mr->rkey;
  out->raddr = reinterpret_cast<uint64_t>(ptr);
  return 0;
}

void VerbsDomain::dereg(trellis::LocalMr& mr) {
  auto it = std::find(device_mrs_.begin(), device_mrs_.end(), mr.handle);
  if (it != device_mrs_.end()) device_mrs_.erase(it);
  if (mr.handle) v_->dereg_mr(static_cast<ibv_mr*>(mr.handle));
  mr.handle = nullptr;
}

// ----------------------------------------------------------------------------------- peers
VerbsDomain::Peer* VerbsDomain::peer_by_addr(const std::vector<uint8_t>& a, bool create) {
  auto it = peer_index_.find(a);
  if (it != peer_index_.end()) return peers_[it->second].get();
  if (!create) return nullptr;
  auto p = std::make_unique<Peer>();
  p->index = peers_.size();
  p->addr = a;
  p->link = a[1];
  p->port = a[2];
  p->mtu = a[3];
  p->lid = get16(&a[4]);
  p->hs_port = get16(&a[6]);
  p->ip = get32(&a[8]);
  std::memcpy(p->gid.raw, &a[16], 16);
  p->psn = trellis::random_u32() & 0xffffff;
  peer_index_[a] = p->index;
  peers_.push_back(std::move(p));
  return peers_.back().get();
}

int VerbsDomain::add_peer(const uint8_t* addr, size_t len, uint64_t* handle, std::string* msg) {
  if (len != kAddrLen || addr[0] != kAddrVersion) {
    *msg = "not a verbs NIC address (version " + std::to_string(len ? addr[0] : 0) + ", " + std::to_string(len) + " bytes)";
    return -EINVAL;
  }
  if ((addr[1] == 1) != ib_) {
    *msg = std::string("the peer's NIC is on ") + (addr[1] == 1 ? "InfiniBand" : "RoCE") + " and this one on " +
           (ib_ ? "InfiniBand" : "RoCE");
    return -EINVAL;
  }
  Peer* p = peer_by_addr(std::vector<uint8_t>(addr, addr + len), true);
  *handle = p->index;
  return 0;
}

int VerbsDomain::make_qps(Peer& p, std::string* err) {
  for (int k = 0; k < 2; k++) {
    ibv_qp_init_attr ia{};
    ia.send_cq = cq_;
    ia.recv_cq = cq_;
    ia.srq = k == 0 ? msg_srq_ : imm_srq_;
    ia.qp_type = IBV_QPT_RC;
    ia.cap.max_send_wr = opts_.max_send_wr;
    ia.cap.max_send_sge = 1;
    ia.sq_sig_all = 0;
    ibv_qp* qp = v_->create_qp(use_pd_, &ia);
    if (!qp) {
      *err = std::string("ibv_create_qp: ") + std::strerror(errno);
      return -errno;
    }
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = static_cast<uint8_t>(opts_.port);
    a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
    if (v_->modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
      *err = std::string("ibv_modify_qp(INIT): ") + std::strerror(errno);
      v_->destroy_qp(qp);
      return -EINVAL;
    }
    auto rec = std::make_unique<QpRec>();
    rec->qp = qp;
    rec->peer = p.index;
    rec->msg = k == 0;
    (k == 0 ? p.msg : p.wr) = rec.get();
    qps_[qp->qp_num] = std::move(rec);
  }
  return 0;
}

int VerbsDomain::to_rts(ibv_qp* qp, uint32_t rqpn, uint32_t rpsn, const Peer& p, std::string* err) {
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_RTR;
  a.path_mtu = static_cast<ibv_mtu>(std::min<int>(static_cast<int>(port_attr_.active_mtu), p.mtu ? static_cast<int>(p.mtu) : static_cast<int>(port_attr_.active_mtu)));
  a.dest_qp_num = rqpn;
  a.rq_psn = rpsn;
  a.max_dest_rd_atomic = 1;
  a.min_rnr_timer = opts_.min_rnr_timer;
  a.ah_attr.port_num = static_cast<uint8_t>(opts_.port);
  if (ib_) {
    a.ah_attr.dlid = p.lid;  // LID routing within the subnet
  } else {
    a.ah_attr.is_global = 1;
    a.ah_attr.grh.dgid = p.gid;
    a.ah_attr.grh.sgid_index = static_cast<uint8_t>(facts_.gid_index);
    a.ah_attr.grh.hop_limit = 64;
  }
  if (v_->modify_qp(qp, &a,
                    IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                        IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)) {
    *err = std::string("ibv_modify_qp(RTR): ") + std::strerror(errno);
    return -EINVAL;
  }
  a = ibv_qp_attr{};
  a.qp_state = IBV_QPS_RTS;
  a.sq_psn = p.psn;
  a.timeout = opts_.timeout;
  a.retry_cnt = opts_.retry_cnt;
  a.rnr_retry = opts_.rnr_retry;
  a.max_rd_atomic = 1;
  if (v_->modify_qp(qp, &a,
                    IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                        IBV_QP_MAX_QP_RD_ATOMIC)) {
    *err = std::string("ibv_modify_qp(RTS): ") + std::strerror(errno);
    return -EINVAL;
  }
  return 0;
}

// Move a peer's QPs to the error state (their outstanding work flushes) and forget them; they are
// destroyed once drained. The next post to the peer connects new ones.
void VerbsDomain::retire_qps(Peer& p) {
  for (QpRec** r : {&p.msg, &p.wr}) {
    QpRec* q = *r;
    *r = nullptr;
    if (!q) continue;
    q->retired = true;
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_ERR;
    v_->modify_qp(q->qp, &a, IBV_QP_STATE);
    if (!q->chain.empty()) fail_chain(q, "the connection to the peer was reset before this was posted");
    if (q->outstanding == 0) {
      v_->destroy_qp(q->qp);
      qps_.erase(q->qp->qp_num);
    }
  }
  p.state = Peer::Idle;
  p.rmsg = p.rwr = 0;
  p.psn = trellis::random_u32() & 0xffffff;
}

// --------------------------------------------------------------------------------- posting
int VerbsDomain::enqueue_write(Peer& p, const trellis::WriteWr& wr) {
  Queued q;
  q.wr = wr;
  p.queued.push_back(q);
  if (p.state == Peer::Idle) start_handshake(p);
  return 0;
}

int VerbsDomain::chain_write(Peer& p, const trellis::WriteWr& wr) {
  QpRec* q = p.wr;
  if (q->outstanding >= opts_.max_send_wr) return -EAGAIN;
  ibv_send_wr w{};
  w.wr_id = reinterpret_cast<uint64_t>(wr.ctx);
  w.opcode = wr.has_imm ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
  w.send_flags = IBV_SEND_SIGNALED;
  w.imm_data = htonl(wr.imm);
  w.wr.rdma.remote_addr = wr.raddr;
  w.wr.rdma.rkey = static_cast<uint32_t>(wr.rkey);
  append(q, w, wr.src, wr.len, wr.src_desc);
  return 0;
}

// Add a WR (with its one gather entry, none for zero bytes) to the QP's chain for flush_posts().
void VerbsDomain::append(QpRec* q, ibv_send_wr w, const void* buf, size_t len, void* desc) {
  ibv_sge s{};
  if (len) {
    s.addr = reinterpret_cast<uint64_t>(buf);
    s.length = static_cast<uint32_t>(len);
    s.lkey = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(desc));
    w.num_sge = 1;
  }
  q->chain.push_back(w);
  q->sges.push_back(s);
  if (q->chain.size() == 1) dirty_.push_back(q);
  q->outstanding++;
}

int VerbsDomain::chain_send(Peer& p, const void* buf, size_t len, void* desc, void* ctx) {
  QpRec* q = p.msg;
  if (q->outstanding >= opts_.max_send_wr) return -EAGAIN;
  ibv_send_wr w{};
  w.wr_id = reinterpret_cast<uint64_t>(ctx);
  w.opcode = IBV_WR_SEND;
  w.send_flags = IBV_SEND_SIGNALED;
  append(q, w, buf, len, desc);
  return 0;
}

void VerbsDomain::drain_queued(Peer& p) {
  while (!p.queued.empty() && p.state == Peer::Connected) {
    Queued& q = p.queued.front();
    int rc = q.send ? chain_send(p, q.buf, q.len, q.desc, q.ctx) : chain_write(p, q.wr);
    if (rc == -EAGAIN) break;  // retried from poll()
    p.queued.pop_front();
  }
  flush_posts();
}

int VerbsDomain::post_write(const trellis::WriteWr& wr) {
  if (wr.peer >= peers_.size()) return -EINVAL;
  Peer& p = *peers_[wr.peer];
  if (p.state != Peer::Connected || !p.queued.empty()) return enqueue_write(p, wr);
  return chain_write(p, wr);
}

int VerbsDomain::post_send(uint64_t peer, const void* buf, size_t len, void* desc, void* ctx) {
  if (peer >= peers_.size()) return -EINVAL;
  Peer& p = *peers_[peer];
  if (p.state != Peer::Connected || !p.queued.empty()) {
    Queued q;
    q.send = true;
    q.buf = buf;
    q.len = len;
    q.desc = desc;
    q.ctx = ctx;
    p.queued.push_back(q);
    if (p.state == Peer::Idle) start_handshake(p);
    return 0;
  }
  return chain_send(p, buf, len, desc, ctx);
}

int VerbsDomain::post_recv(void* buf, size_t len, void* desc, void* ctx) {
  ibv_sge s{};
  s.addr = reinterpret_cast<uint64_t>(buf);
  s.length = static_cast<uint32_t>(len);
  s.lkey = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(desc));
  ibv_recv_wr w{};
  w.wr_id = reinterpret_cast<uint64_t>(ctx);
  w.sg_list = &s;
  w.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  int rc = v_->post_srq_recv(msg_srq_, &w, &bad);
  if (rc) return -(rc > 0 ? rc : EINVAL);
  msg_recv_ids_.insert(w.wr_id);
  return 0;
}

void VerbsDomain::fail_chain(QpRec* q, const std::string& why) {
  for (auto& w : q->chain) {
    Completion c;
    c.kind = w.opcode == IBV_WR_SEND ? CompKind::Send : CompKind::Write;
    c.ctx = reinterpret_cast<void*>(w.wr_id);
    c.code = Code::PeerLost;
    c.err = EIO;
    c.message = why;
    stash_.push_back(std::move(c));
    q->outstanding--;
  }
  q->chain.clear();
  q->sges.clear();
}

void VerbsDomain::flush_posts() {
  for (QpRec* q : dirty_) {
    if (q->chain.empty()) continue;
    size_t n = q->chain.size();
    for (size_t i = 0; i < n; i++) {
      q->chain[i].sg_list = q->chain[i].num_sge ? &q->sges[i] : nullptr;
      q->chain[i].next = i + 1 < n ? &q->chain[i + 1] : nullptr;
    }
    ibv_send_wr* bad = nullptr;
    int rc = v_->post_send(q->qp, q->chain.data(), &bad);
    if (rc) {
      // Everything from `bad` on was not posted: it fails here (nothing is lost or left hanging).
      size_t first = bad ? static_cast<size_t>(bad - q->chain.data()) : 0;
      q->chain.erase(q->chain.begin(), q->chain.begin() + static_cast<long>(first));
      q->sges.erase(q->sges.begin(), q->sges.begin() + static_cast<long>(first));
      fail_chain(q, std::string("ibv_post_send: ") + std::strerror(rc > 0 ? rc : EINVAL));
    }
    q->chain.clear();
    q->sges.clear();
  }
  dirty_.clear();
}

// --------------------------------------------------------------------------------- polling
void VerbsDomain::map_wc(const ibv_wc& wc, std::vector<Completion>& out) {
  Completion c;
  if (wc.status == IBV_WC_SUCCESS) {
    switch (wc.opcode) {
      case IBV_WC_RECV_RDMA_WITH_IMM:
        c.kind = CompKind::RemoteWrite;
        c.has_imm = true;
        c.imm = ntohl(wc.imm_data);
        imm_to_post_++;
        out.push_back(std::move(c));
        return;
      case IBV_WC_RECV:
        msg_recv_ids_.erase(wc.wr_id);
        c.kind = CompKind::Recv;
        c.ctx = reinterpret_cast<void*>(wc.wr_id);
        c.len = wc.byte_len;
        out.push_back(std::move(c));
        return;
      default: break;
    }
  }
  // A receive (only receives carry kImmRecv or a posted message buffer's id).
  if (wc.status != IBV_WC_SUCCESS && (wc.wr_id == kImmRecv || msg_recv_ids_.count(wc.wr_id))) {
    if (wc.wr_id == kImmRecv) {
      imm_to_post_++;
      c.kind = CompKind::RemoteWrite;
    } else {
      msg_recv_ids_.erase(wc.wr_id);
      c.kind = CompKind::Recv;
      c.ctx = reinterpret_cast<void*>(wc.wr_id);
    }
    c.code = classify_wc(wc.status);
    c.err = wc.status;
    c.message = wc_text(wc.status);
    out.push_back(std::move(c));
    return;
  }
  // A send-side completion: a write or a message.
  auto it = qps_.find(wc.qp_num);
  QpRec* q = it == qps_.end() ? nullptr : it->second.get();
  c.kind = q && q->msg ? CompKind::Send : CompKind::Write;
  c.ctx = reinterpret_cast<void*>(wc.wr_id);
  if (wc.status != IBV_WC_SUCCESS) {
    c.code = classify_wc(wc.status);
    c.err = wc.status;
    c.message = wc_text(wc.status) + " [vendor_err 0x" + [&] {
      char b[16];
      std::snprintf(b, sizeof b, "%x", wc.vendor_err);
      return std::string(b);
    }() + "]";
  }
  out.push_back(std::move(c));
  if (!q) return;
  if (q->outstanding) q->outstanding--;
  if (wc.status != IBV_WC_SUCCESS && !q->retired && q->peer < peers_.size()) {
    Peer& p = *peers_[q->peer];
    if (p.msg == q || p.wr == q) {
      retire_qps(p);  // destroys q already if nothing else is outstanding on it
      return;
    }
  }
  if (q->retired && q->outstanding == 0) {
    v_->destroy_qp(q->qp);
    qps_.erase(it);
  }
}

int VerbsDomain::poll(std::vector<Completion>& out, int max) {
  if ((++polls_ & 63) == 0) service_handshakes();
  int produced = 0;
  if (!stash_.empty()) {
    produced += static_cast<int>(stash_.size());
    for (auto& c : stash_) out.push_back(std::move(c));
    stash_.clear();
  }
  ibv_wc wc[64];
  int want = std::min(max, 64);
  int n = v_->poll_cq(cq_, want, wc);
  if (n < 0) {
    Completion c;
    c.kind = CompKind::RemoteWrite;
    c.code = Code::NicFailed;
    c.err = -n;
    c.message = "ibv_poll_cq failed (" + std::string(std::strerror(-n)) + "): the completion queue is in error";
    out.push_back(std::move(c));
    return n;
  }
  size_t first = out.size();
  for (int i = 0; i < n; i++) map_wc(wc[i], out);
  if (!device_mrs_.empty()) {
    // An immediate may report bytes the NIC wrote into GPU memory: flush those writes to the GPU
    // before anyone counts it, so they are visible to its kernels and copies (what NCCL does with a
    // read or this call after a GPUDirect receive).
    for (size_t i = first; i < out.size(); i++) {
      if (out[i].kind == CompKind::RemoteWrite && out[i].has_imm) {
        auto& cu = trellis::CudaDriver::get();
        if (cu.cuFlushGPUDirectRDMAWrites)
          cu.cuFlushGPUDirectRDMAWrites(trellis::CudaDriver::kFlushTargetCurrentCtx, trellis::CudaDriver::kFlushToOwner);
        break;
      }
    }
  }
  if (imm_to_post_ >= 32 || (n == 0 && imm_to_post_)) repost_imm_recvs();
  return produced + n;
}

bool VerbsDomain::try_wait() {
  ibv_cq* ev = nullptr;
  unsigned events = 0;
  while (v_->get_cq_event(ch_, &ev) == 0) events++;
  if (events) v_->ack_cq_events(cq_, events);
  service_handshakes();
  if (v_->req_notify_cq(cq_)) return false;
  // Anything that arrived before the arm would not signal: look once more.
  ibv_wc wc[16];
  int n = v_->poll_cq(cq_, 16, wc);
  for (int i = 0; i < n; i++) map_wc(wc[i], stash_);
  if (imm_to_post_) repost_imm_recvs();
  if (n != 0 || !stash_.empty()) return false;
  for (auto& p : peers_)
    if (!p->queued.empty() || p->state == Peer::Connecting) return false;
  return true;
}

std::string VerbsDomain::strerror(int err) const { return std::strerror(err < 0 ? -err : err); }

Code VerbsDomain::classify(int err) const {
  switch (err) {
    case ECONNREFUSED:
    case ECONNRESET:
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case EIO: return Code::PeerLost;
    case ENOMEM: return Code::ResourceExhausted;
    case EINVAL: return Code::Internal;
    default: return Code::ProviderError;
  }
}

}  // namespace trellis_verbs
