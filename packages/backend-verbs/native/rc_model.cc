// A software model of InfiniBand reliable-connected (RC) semantics behind the Verbs seam, for
// machines without an RDMA device. It is a small NIC in software, one per opened device:
//
//  - every open of "rcmN" is a distinct port with its own GID (RoCE v2, IPv4-mapped 127.x.y.z, so
//    a TCP handshake can bind it) or LID (TRELLIS_RC_MODEL_LINK=ib);
//  - a "NIC thread" per port moves data: it frames send-queue work requests into segments on a
//    Unix stream socket to the destination port (abstract namespace, so it works across
//    processes), and executes arriving segments against the local memory regions;
//  - RC rules: the QP state machine (posting outside RTS fails with EINVAL; modify_qp checks the
//    transition and its required attributes), in-order execution and completion per QP, ACKs,
//    receiver-not-ready NAKs with min_rnr_timer / rnr_retry (7 = forever) and go-back-N
//    retransmission, remote access errors on a bad rkey, missing REMOTE_WRITE or an out-of-bounds
//    range (both QPs go to the error state, later work requests flush), local protection errors
//    on a bad lkey, retry-exceeded after timeout × (retry_cnt + 1) when the responder is gone or
//    not ready, CQ overrun (the CQ errors, its QPs go to the error state), ENOMEM when the send
//    queue or an SRQ is full, completion channels with an fd.
//
//  - GPU memory: a region from reg_dmabuf_mr is device memory at its iova (the dma-buf itself is
//    not used). The NIC thread gathers from it and scatters into it with the CUDA driver
//    (cuMemcpyAsync + cuStreamSynchronize, by unified address), so a completion or an immediate
//    comes after the bytes are in GPU memory, as with GPUDirect RDMA and a flush. Without a CUDA
//    driver it refuses such regions (EOPNOTSUPP), as a NIC without GPUDirect would.
//
// It does not model packets, PSN wrap, atomics, reads, UD/UC or memory windows.
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include "trellis/random.hpp"
#include <thread>
#include <unordered_map>

#include "trellis/cuda_driver.hpp"
#include "verbs_api.hpp"

namespace trellis_verbs {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kSegment = 256 * 1024;       // bytes per frame: large writes interleave between QPs
constexpr size_t kOutHigh = 4 * 1024 * 1024;  // stop framing while a connection has this much queued
constexpr int kDevices = 4;

// ---------------------------------------------------------------------------------------- wire
enum FrameType : uint8_t { kData = 1, kAck = 2, kNak = 3 };
enum FrameFlags : uint16_t { kFirst = 1, kLast = 2, kHasImm = 4 };
enum Syndrome : uint32_t { kRnr = 1, kRemoteAccess = 2, kInvalidRequest = 3 };

struct Frame {
  uint8_t type;
  uint8_t opcode;  // ibv_wr_opcode
  uint16_t flags;
  uint32_t src_qpn, dst_qpn, psn;
  uint32_t rkey, imm;  // imm in network order, as the verbs API carries it
  uint32_t syndrome;   // NAK: Syndrome; RNR NAK: the responder's min_rnr_timer in the high byte
  uint32_t pad;
  uint64_t raddr;      // this segment's target address
  uint64_t len;        // payload bytes following this header
  uint64_t total;      // the whole message's length
};
static_assert(sizeof(Frame) == 56, "frame header layout");

// IB's encoding of the RNR timer (C9-146), in µs.
uint32_t rnr_us(uint8_t t) {
  static const uint32_t table[32] = {655360, 10,  20,  30,  40,  60,   80,   120,  160,  240,  320,
                                     480,    640, 960, 1280, 1920, 2560, 3840, 5120, 7680, 10240, 15360,
                                     20480, 30720, 40960, 61440, 81920, 122880, 163840, 245760, 327680, 491520};
  return table[t & 31];
}

// ------------------------------------------------------------------------------------- objects
struct Port;

struct MPd {
  ibv_pd pd;
  Port* port;
  bool thread = false;
};

struct MMr {
  ibv_mr mr;
  int access;
  bool device = false;  // GPU memory (reg_dmabuf_mr): copied with the CUDA driver
};

struct MChannel {
  ibv_comp_channel ch;
  std::deque<ibv_cq*> pending;
};

struct MCq {
  ibv_cq cq;
  Port* port;
  int cap;
  std::deque<ibv_wc> q;
  bool armed = false;
  bool overrun = false;
  MChannel* ch = nullptr;
};

struct RecvWr {
  uint64_t wr_id;
  std::vector<ibv_sge> sge;
};

struct MSrq {
  ibv_srq srq;
  uint32_t max_wr, max_sge;
  std::deque<RecvWr> q;
};

struct SendWr {
  uint64_t wr_id;
  ibv_wr_opcode opcode;
  bool signaled;
  std::vector<ibv_sge> sge;
  uint64_t len;
  uint64_t raddr;
  uint32_t rkey, imm;
  uint32_t psn;
  uint32_t rnr_tries = 0;
  uint32_t retries = 0;
  bool sent = false;  // every segment framed
  Clock::time_point sent_at{};
};

struct Conn {
  int fd = -1;
  bool outgoing = false;
  bool connected = false;
  std::string key;  // remote port, for outgoing
  std::vector<uint8_t> out;
  size_t out_off = 0;
  // Reading: a header, then its payload into `sink` (or discarded when null).
  Frame hdr{};
  size_t hdr_got = 0;
  uint8_t* sink = nullptr;
  uint64_t left = 0;
  bool in_payload = false;
  bool accepted = false;  // the current DATA frame is executed (else its payload is discarded)
  std::vector<uint8_t> scratch;
  uint8_t* device_dst = nullptr;  // a write into GPU memory: read into scratch, then copied here
};

struct MQp {
  ibv_qp qp;
  Port* port;
  MCq* scq;
  MCq* rcq;
  MSrq* srq;
  ibv_qp_cap cap;
  std::deque<RecvWr> rq;
  int access = 0;
  uint8_t timeout = 14, retry_cnt = 7, rnr_retry = 7, min_rnr_timer = 12;
  std::string dest;  // remote port key
  uint32_t dqpn = 0, sq_psn = 0, rq_psn = 0;
  // requester
  std::deque<SendWr> sq;
  size_t next_tx = 0;
  uint64_t tx_off = 0;
  Clock::time_point hold_until{};  // RNR back-off or retransmission wait
  // responder
  bool nak_wait = false;  // after an RNR NAK: drop until the NAK'd PSN comes again
  bool have_recv = false;
  RecvWr cur_recv;  // the receive a multi-segment SEND is filling
  uint64_t recv_off = 0;
};

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; i++) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

// ------------------------------------------------------------------------------------ the port
struct Port {
  ibv_context ctx{};
  ibv_device dev{};
  std::string name;
  bool ib = false;
  ibv_gid gid[2]{};
  uint16_t lid = 0;
  std::string key;  // our address on the model's wire
  int listen_fd = -1, wake_fd = -1, ep = -1;
  std::thread thread;
  std::atomic<bool> stop{false};
  std::recursive_mutex mu;
  uint32_t next_qpn = 0x100, next_key = 0;
  std::unordered_map<uint32_t, MQp*> qps;
  std::unordered_map<uint32_t, MMr*> mrs;  // by rkey (== lkey)
  std::map<std::string, Conn*> out_conns;
  std::vector<Conn*> conns;

  static std::string key_of_gid(const ibv_gid& g) { return "g" + hex(g.raw, 16); }
  static std::string key_of_lid(uint16_t lid) { return "l" + std::to_string(lid); }

  bool open(const std::string& dev_name, bool ib_link, std::string* err) {
    name = dev_name;
    ib = ib_link;
    std::snprintf(dev.name, sizeof dev.name, "%s", dev_name.c_str());
    ctx.device = &dev;
    for (int attempt = 0; attempt < 16; attempt++) {
      uint32_t r = trellis::random_u32();
      // GID 0: link-local (RoCE v1 style); GID 1: RoCE v2, IPv4-mapped 127.x.y.z.
      std::memset(gid, 0, sizeof gid);
      gid[0].raw[0] = 0xfe;
      gid[0].raw[1] = 0x80;
      std::memcpy(gid[0].raw + 8, &r, 4);
      uint32_t pid = static_cast<uint32_t>(getpid());
      std::memcpy(gid[0].raw + 12, &pid, 4);
      gid[1].raw[10] = 0xff;
      gid[1].raw[11] = 0xff;
      gid[1].raw[12] = 127;
      gid[1].raw[13] = static_cast<uint8_t>(r >> 16);
      gid[1].raw[14] = static_cast<uint8_t>(r >> 8);
      gid[1].raw[15] = static_cast<uint8_t>(r | 1);  // never .0
      lid = static_cast<uint16_t>(1 + (r % 0xbffe));   // unicast LIDs
      key = ib ? key_of_lid(lid) : key_of_gid(gid[1]);
      listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      sockaddr_un a{};
      socklen_t alen = addr_of(key, &a);
      if (bind(listen_fd, reinterpret_cast<sockaddr*>(&a), alen) == 0 && listen(listen_fd, 64) == 0) break;
      ::close(listen_fd);
      listen_fd = -1;
    }
    if (listen_fd < 0) {
      *err = std::string("rc-model: cannot bind a port address: ") + std::strerror(errno);
      return false;
    }
    wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    ep = epoll_create1(EPOLL_CLOEXEC);
    watch(listen_fd, EPOLLIN, nullptr);
    watch(wake_fd, EPOLLIN, reinterpret_cast<Conn*>(1));
    thread = std::thread([this] { run(); });
    return true;
  }

  void close() {
    stop = true;
    wake();
    if (thread.joinable()) thread.join();
    for (auto* c : conns) {
      ::close(c->fd);
      delete c;
    }
    conns.clear();
    out_conns.clear();
    ::close(listen_fd);
    ::close(wake_fd);
    ::close(ep);
  }

  static socklen_t addr_of(const std::string& key, sockaddr_un* a) {
    a->sun_family = AF_UNIX;
    std::string path = "trellis-rc-model/" + key;
    a->sun_path[0] = 0;  // abstract namespace: nothing to clean up, gone with the process
    std::memcpy(a->sun_path + 1, path.data(), path.size());
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + path.size());
  }

  void watch(int fd, uint32_t events, Conn* c) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  void rewatch(Conn* c) {
    epoll_event ev{};
    ev.events = EPOLLIN | (c->out.size() > c->out_off || !c->connected ? static_cast<uint32_t>(EPOLLOUT) : 0u);
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
  }
  void wake() {
    uint64_t one = 1;
    ssize_t r = ::write(wake_fd, &one, sizeof one);
    (void)r;
  }

  // ------------------------------------------------------------------------------ completions
  void push_cqe(MCq* cq, const ibv_wc& wc) {
    if (cq->overrun) return;
    if (static_cast<int>(cq->q.size()) >= cq->cap) {
      // CQ overrun: the CQ is in error and every QP feeding it goes to the error state.
      cq->overrun = true;
      for (auto& [n, qp] : qps) {
        (void)n;
        if (qp->scq == cq || qp->rcq == cq) set_error(qp);
      }
      return;
    }
    cq->q.push_back(wc);
    if (cq->armed && cq->ch) {
      cq->armed = false;
      cq->ch->pending.push_back(&cq->cq);
      uint64_t one = 1;
      ssize_t r = ::write(cq->ch->ch.fd, &one, sizeof one);
      (void)r;
    }
  }

  void complete_send(MQp* qp, const SendWr& w, ibv_wc_status st) {
    if (st == IBV_WC_SUCCESS && !w.signaled) return;
    ibv_wc wc{};
    wc.wr_id = w.wr_id;
    wc.status = st;
    wc.opcode = w.opcode == IBV_WR_SEND || w.opcode == IBV_WR_SEND_WITH_IMM ? IBV_WC_SEND : IBV_WC_RDMA_WRITE;
    wc.qp_num = qp->qp.qp_num;
    wc.byte_len = static_cast<uint32_t>(w.len);
    wc.vendor_err = st == IBV_WC_SUCCESS ? 0 : 0x4d;  // "M"odel
    push_cqe(qp->scq, wc);
  }

  // Error state: outstanding send WRs flush (the first with `first`, if given), the QP stops.
  void set_error(MQp* qp, ibv_wc_status first = IBV_WC_WR_FLUSH_ERR) {
    bool was_err = qp->qp.state == IBV_QPS_ERR;
    qp->qp.state = IBV_QPS_ERR;
    if (was_err && qp->sq.empty()) return;
    bool head = true;
    while (!qp->sq.empty()) {
      SendWr w = std::move(qp->sq.front());
      qp->sq.pop_front();
      w.signaled = true;  // errors always complete
      complete_send(qp, w, head ? first : IBV_WC_WR_FLUSH_ERR);
      head = false;
    }
    qp->next_tx = 0;
    qp->tx_off = 0;
    if (!qp->srq) {
      while (!qp->rq.empty()) {
        ibv_wc wc{};
        wc.wr_id = qp->rq.front().wr_id;
        wc.status = IBV_WC_WR_FLUSH_ERR;
        wc.opcode = IBV_WC_RECV;
        wc.qp_num = qp->qp.qp_num;
        qp->rq.pop_front();
        push_cqe(qp->rcq, wc);
      }
    }
  }

  // ------------------------------------------------------------------------------ connections
  Conn* conn_to(const std::string& k) {
    auto it = out_conns.find(k);
    if (it != out_conns.end()) return it->second;
    Conn* c = new Conn;
    c->outgoing = true;
    c->key = k;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    socklen_t alen = addr_of(k, &a);
    int rc = connect(c->fd, reinterpret_cast<sockaddr*>(&a), alen);
    c->connected = rc == 0;
    if (rc != 0 && errno != EINPROGRESS && errno != EAGAIN) {
      // Nobody there: keep the dead connection so the QPs time out and retry (and reconnect).
      ::close(c->fd);
      c->fd = -1;
    } else {
      watch(c->fd, EPOLLIN | EPOLLOUT, c);
      conns.push_back(c);
    }
    out_conns[k] = c;
    return c;
  }

  void drop_conn(Conn* c) {
    if (c->fd >= 0) {
      epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, nullptr);
      ::close(c->fd);
    }
    conns.erase(std::remove(conns.begin(), conns.end(), c), conns.end());
    if (c->outgoing) out_conns.erase(c->key);
    delete c;
  }

  void send_frame(Conn* c, const Frame& f, const void* payload = nullptr, size_t n = 0) {
    if (c->fd < 0) return;
    auto* h = reinterpret_cast<const uint8_t*>(&f);
    c->out.insert(c->out.end(), h, h + sizeof f);
    if (n) c->out.insert(c->out.end(), static_cast<const uint8_t*>(payload), static_cast<const uint8_t*>(payload) + n);
  }

  // ------------------------------------------------------------------------------ requester
  MMr* local_mr(uint32_t lkey) {
    auto it = mrs.find(lkey);
    return it == mrs.end() ? nullptr : it->second;
  }

  // Copy [off, off+n) of the WR's gather list into dst; false on a bad lkey (local protection).
  bool gather(const SendWr& w, uint64_t off, uint64_t n, uint8_t* dst) {
    uint64_t pos = 0;
    for (auto& s : w.sge) {
      MMr* mr = local_mr(s.lkey);
      auto base = reinterpret_cast<uint64_t>(mr ? mr->mr.addr : nullptr);
      if (!mr || s.addr < base || s.addr + s.length > base + mr->mr.length) return false;
      uint64_t a = std::max(off, pos), b = std::min(off + n, pos + s.length);
      if (a < b) {
        const void* from = reinterpret_cast<const void*>(s.addr + (a - pos));
        if (!mr->device) std::memcpy(dst + (a - off), from, b - a);
        else if (trellis::CudaDriver::get().copy(dst + (a - off), from, b - a) != 0) return false;
      }
      pos += s.length;
    }
    return true;
  }

  void transmit(MQp* qp, Clock::time_point now) {
    if (qp->qp.state != IBV_QPS_RTS || qp->next_tx >= qp->sq.size() || now < qp->hold_until) return;
    Conn* c = conn_to(qp->dest);
    while (qp->next_tx < qp->sq.size() && (c->fd < 0 || c->out.size() - c->out_off < kOutHigh)) {
      SendWr& w = qp->sq[qp->next_tx];
      uint64_t n = std::min<uint64_t>(kSegment, w.len - qp->tx_off);
      Frame f{};
      f.type = kData;
      f.opcode = static_cast<uint8_t>(w.opcode);
      f.flags = static_cast<uint16_t>((qp->tx_off == 0 ? kFirst : 0) | (qp->tx_off + n == w.len ? kLast : 0) |
                                      (w.opcode == IBV_WR_RDMA_WRITE_WITH_IMM || w.opcode == IBV_WR_SEND_WITH_IMM ? kHasImm : 0));
      f.src_qpn = qp->qp.qp_num;
      f.dst_qpn = qp->dqpn;
      f.psn = w.psn;
      f.rkey = w.rkey;
      f.imm = w.imm;
      f.raddr = w.raddr + qp->tx_off;
      f.len = n;
      f.total = w.len;
      size_t at = c->out.size();
      if (c->fd >= 0) {
        c->out.resize(at + sizeof f + n);
        std::memcpy(c->out.data() + at, &f, sizeof f);
        if (!gather(w, qp->tx_off, n, c->out.data() + at + sizeof f)) {
          c->out.resize(at);
          set_error(qp, IBV_WC_LOC_PROT_ERR);
          return;
        }
      } else if (!gather(w, qp->tx_off, 0, nullptr)) {
        set_error(qp, IBV_WC_LOC_PROT_ERR);
        return;
      }
      qp->tx_off += n;
      if (qp->tx_off >= w.len) {
        w.sent = true;
        w.sent_at = now;
        qp->next_tx++;
        qp->tx_off = 0;
      }
    }
    if (c->fd >= 0) rewatch(c);
  }

  void on_ack(MQp* qp, uint32_t psn) {
    while (!qp->sq.empty() && static_cast<int32_t>(psn - qp->sq.front().psn) >= 0 && qp->sq.front().sent) {
      // Off the queue before completing: a completion can overrun the CQ and flush the queue.
      SendWr w = std::move(qp->sq.front());
      qp->sq.pop_front();
      if (qp->next_tx) qp->next_tx--;
      complete_send(qp, w, IBV_WC_SUCCESS);
    }
  }

  // Go back to the WR with `psn` and send it (and everything after it) again after `delay`.
  void rewind(MQp* qp, size_t idx, Clock::time_point until) {
    qp->next_tx = idx;
    qp->tx_off = 0;
    for (size_t i = idx; i < qp->sq.size(); i++) qp->sq[i].sent = false;
    qp->hold_until = until;
  }

  void on_nak(MQp* qp, const Frame& f, Clock::time_point now) {
    size_t idx = 0;
    while (idx < qp->sq.size() && qp->sq[idx].psn != f.psn) idx++;
    if (idx >= qp->sq.size()) return;  // stale
    on_ack(qp, f.psn - 1);
    idx = 0;
    switch (f.syndrome & 0xff) {
      case kRnr: {
        SendWr& w = qp->sq[idx];
        if (qp->rnr_retry != 7 && ++w.rnr_tries > qp->rnr_retry) {
          set_error(qp, IBV_WC_RNR_RETRY_EXC_ERR);
          return;
        }
        rewind(qp, idx, now + std::chrono::microseconds(rnr_us(static_cast<uint8_t>(f.syndrome >> 24))));
        break;
      }
      case kRemoteAccess: set_error(qp, IBV_WC_REM_ACCESS_ERR); break;
      default: set_error(qp, IBV_WC_REM_INV_REQ_ERR); break;
    }
  }

  // Local ACK timeout: nothing heard for a sent WR within 4.096 µs × 2^timeout.
  void check_timeouts(MQp* qp, Clock::time_point now) {
    if (qp->qp.state != IBV_QPS_RTS || qp->sq.empty() || !qp->sq.front().sent || qp->timeout == 0) return;
    SendWr& w = qp->sq.front();
    auto limit = std::chrono::nanoseconds(static_cast<uint64_t>(4096) << std::min<uint8_t>(qp->timeout, 31));
    if (now - w.sent_at < limit) return;
    if (++w.retries > qp->retry_cnt) {
      set_error(qp, IBV_WC_RETRY_EXC_ERR);
      return;
    }
    // The connection may be gone (the peer restarted): reconnect on the retransmission.
    auto it = out_conns.find(qp->dest);
    if (it != out_conns.end() && it->second->fd < 0) {
      delete it->second;
      out_conns.erase(it);
    }
    rewind(qp, 0, now);
  }

  // ------------------------------------------------------------------------------ responder
  static bool in_mr(MMr* mr, uint64_t addr, uint64_t len) {
    auto base = reinterpret_cast<uint64_t>(mr->mr.addr);
    return addr >= base && addr + len >= addr && addr + len <= base + mr->mr.length;
  }

  bool take_recv(MQp* qp, RecvWr* out) {
    std::deque<RecvWr>& q = qp->srq ? qp->srq->q : qp->rq;
    if (q.empty()) return false;
    *out = std::move(q.front());
    q.pop_front();
    return true;
  }

  void reply(Conn* c, MQp* qp, const Frame& in, FrameType t, uint32_t syndrome) {
    Frame f{};
    f.type = t;
    f.src_qpn = qp ? qp->qp.qp_num : in.dst_qpn;
    f.dst_qpn = in.src_qpn;
    f.psn = in.psn;
    f.syndrome = syndrome;
    send_frame(c, f);
    rewatch(c);
  }

  // A DATA header arrived: decide where its payload goes (c->sink), or NAK and discard it.
  void on_data_header(Conn* c) {
    Frame& f = c->hdr;
    c->sink = nullptr;
    c->device_dst = nullptr;
    c->left = f.len;
    c->accepted = false;
    auto it = qps.find(f.dst_qpn);
    MQp* qp = it == qps.end() ? nullptr : it->second;
    // A QP that is not ready (or gone) drops silently: the requester times out and retries.
    if (!qp || (qp->qp.state != IBV_QPS_RTR && qp->qp.state != IBV_QPS_RTS)) return;
    if (static_cast<int32_t>(f.psn - qp->rq_psn) < 0) {
      // A duplicate of a message already executed (its ACK was lost): ACK it again, do nothing.
      if (f.flags & kLast) reply(c, qp, f, kAck, 0);
      return;
    }
    if (qp->nak_wait) {
      if (f.psn != qp->rq_psn || !(f.flags & kFirst)) return;
      qp->nak_wait = false;
    }
    if (f.psn != qp->rq_psn) return;  // out of sequence (after a NAK): dropped
    bool send = f.opcode == IBV_WR_SEND || f.opcode == IBV_WR_SEND_WITH_IMM;
    if (!send) {
      auto m = mrs.find(f.rkey);
      if (f.len || f.total) {
        if (m == mrs.end() || !(m->second->access & IBV_ACCESS_REMOTE_WRITE) || !in_mr(m->second, f.raddr, f.len)) {
          reply(c, qp, f, kNak, kRemoteAccess);
          set_error(qp);
          return;
        }
      }
      if ((f.flags & kLast) && (f.flags & kHasImm) && !take_recv(qp, &qp->cur_recv)) {
        reply(c, qp, f, kNak, kRnr | (static_cast<uint32_t>(qp->min_rnr_timer) << 24));
        qp->nak_wait = true;
        return;
      }
      if ((f.flags & kLast) && (f.flags & kHasImm)) qp->have_recv = true;
      c->sink = f.len ? reinterpret_cast<uint8_t*>(f.raddr) : nullptr;
      if (f.len && m->second->device) {
        c->scratch.resize(f.len);
        c->device_dst = c->sink;
        c->sink = c->scratch.data();
      }
      c->accepted = true;
    } else {
      if (f.flags & kFirst) {
        if (!take_recv(qp, &qp->cur_recv)) {
          reply(c, qp, f, kNak, kRnr | (static_cast<uint32_t>(qp->min_rnr_timer) << 24));
          qp->nak_wait = true;
          return;
        }
        qp->have_recv = true;
        qp->recv_off = 0;
        uint64_t room = 0;
        for (auto& s : qp->cur_recv.sge) room += s.length;
        if (f.total > room) {
          ibv_wc wc{};
          wc.wr_id = qp->cur_recv.wr_id;
          wc.status = IBV_WC_LOC_LEN_ERR;
          wc.opcode = IBV_WC_RECV;
          wc.qp_num = qp->qp.qp_num;
          qp->have_recv = false;
          push_cqe(qp->rcq, wc);
          reply(c, qp, f, kNak, kInvalidRequest);
          set_error(qp);
          return;
        }
      }
      if (!qp->have_recv) return;
      c->accepted = true;
      // Scatter into the receive's list; a single SGE (the common case) is read in place.
      if (qp->cur_recv.sge.size() == 1) {
        c->sink = reinterpret_cast<uint8_t*>(qp->cur_recv.sge[0].addr) + qp->recv_off;
      } else {
        c->scratch.resize(f.len);
        c->sink = c->scratch.data();
      }
    }
  }

  // The whole payload of a DATA frame is in place.
  void on_data_done(Conn* c) {
    Frame& f = c->hdr;
    if (!c->accepted) return;
    c->accepted = false;
    if (c->device_dst) {
      // Into GPU memory before anything is acknowledged or completed.
      uint8_t* to = c->device_dst;
      c->device_dst = nullptr;
      if (trellis::CudaDriver::get().copy(to, c->scratch.data(), f.len) != 0) {
        auto q = qps.find(f.dst_qpn);
        reply(c, q == qps.end() ? nullptr : q->second, f, kNak, kRemoteAccess);
        if (q != qps.end()) set_error(q->second);
        return;
      }
    }
    auto it = qps.find(f.dst_qpn);
    if (it == qps.end()) return;  // destroyed meanwhile
    MQp* qp = it->second;
    bool send = f.opcode == IBV_WR_SEND || f.opcode == IBV_WR_SEND_WITH_IMM;
    if (send && qp->have_recv && c->sink == c->scratch.data() && f.len) {
      uint64_t pos = 0;
      for (auto& s : qp->cur_recv.sge) {
        uint64_t a = std::max(qp->recv_off, pos), b = std::min(qp->recv_off + f.len, pos + s.length);
        if (a < b) std::memcpy(reinterpret_cast<void*>(s.addr + (a - pos)), c->scratch.data() + (a - qp->recv_off), b - a);
        pos += s.length;
      }
    }
    if (send) qp->recv_off += f.len;
    if (!(f.flags & kLast)) return;
    if (qp->have_recv) {
      ibv_wc wc{};
      wc.wr_id = qp->cur_recv.wr_id;
      wc.status = IBV_WC_SUCCESS;
      wc.opcode = send ? IBV_WC_RECV : IBV_WC_RECV_RDMA_WITH_IMM;
      wc.qp_num = qp->qp.qp_num;
      wc.src_qp = f.src_qpn;
      wc.byte_len = static_cast<uint32_t>(f.total);
      if (f.flags & kHasImm) {
        wc.wc_flags = IBV_WC_WITH_IMM;
        wc.imm_data = f.imm;
      }
      qp->have_recv = false;
      push_cqe(qp->rcq, wc);
    }
    qp->rq_psn++;
    reply(c, qp, f, kAck, 0);
  }

  void on_readable(Conn* c) {
    for (;;) {
      if (!c->in_payload) {
        ssize_t r = ::read(c->fd, reinterpret_cast<uint8_t*>(&c->hdr) + c->hdr_got, sizeof(Frame) - c->hdr_got);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
          drop_conn(c);
          return;
        }
        if (r < 0) return;
        c->hdr_got += static_cast<size_t>(r);
        if (c->hdr_got < sizeof(Frame)) continue;
        c->hdr_got = 0;
        Frame f = c->hdr;
        if (f.type == kData) {
          on_data_header(c);
          c->in_payload = true;
          if (c->left == 0) {
            c->in_payload = false;
            on_data_done(c);
          }
        } else {
          auto it = qps.find(f.dst_qpn);
          if (it != qps.end() && it->second->qp.state == IBV_QPS_RTS) {
            if (f.type == kAck) on_ack(it->second, f.psn);
            else on_nak(it->second, f, Clock::now());
          }
        }
        continue;
      }
      uint8_t discard[65536];
      uint8_t* dst = c->sink ? c->sink + (c->hdr.len - c->left) : discard;
      size_t want = c->sink ? c->left : std::min<uint64_t>(c->left, sizeof discard);
      ssize_t r = ::read(c->fd, dst, want);
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        drop_conn(c);
        return;
      }
      if (r < 0) return;
      c->left -= static_cast<uint64_t>(r);
      if (c->left == 0) {
        c->in_payload = false;
        on_data_done(c);
      }
    }
  }

  void on_writable(Conn* c) {
    c->connected = true;
    while (c->out_off < c->out.size()) {
      ssize_t w = ::send(c->fd, c->out.data() + c->out_off, c->out.size() - c->out_off, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN || errno == EINTR) break;
        // The remote port is gone: forget what was queued; the QPs time out.
        c->out.clear();
        c->out_off = 0;
        drop_conn(c);
        return;
      }
      c->out_off += static_cast<size_t>(w);
    }
    if (c->out_off == c->out.size()) {
      c->out.clear();
      c->out_off = 0;
    } else if (c->out_off > (1u << 20)) {
      c->out.erase(c->out.begin(), c->out.begin() + static_cast<long>(c->out_off));
      c->out_off = 0;
    }
    rewatch(c);
  }

  void run() {
    epoll_event evs[32];
    while (!stop.load()) {
      int n = epoll_wait(ep, evs, 32, 1);
      std::lock_guard<std::recursive_mutex> g(mu);
      for (int i = 0; i < n; i++) {
        Conn* c = static_cast<Conn*>(evs[i].data.ptr);
        if (c == nullptr) {
          int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd >= 0) {
            Conn* in = new Conn;
            in->fd = fd;
            in->connected = true;
            watch(fd, EPOLLIN, in);
            conns.push_back(in);
          }
          continue;
        }
        if (c == reinterpret_cast<Conn*>(1)) {
          uint64_t v;
          ssize_t r = ::read(wake_fd, &v, sizeof v);
          (void)r;
          continue;
        }
        if (std::find(conns.begin(), conns.end(), c) == conns.end()) continue;  // dropped this round
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
        if (std::find(conns.begin(), conns.end(), c) == conns.end()) continue;
        if (evs[i].events & EPOLLOUT) on_writable(c);
      }
      auto now = Clock::now();
      for (auto& [qpn, qp] : qps) {
        (void)qpn;
        check_timeouts(qp, now);
        transmit(qp, now);
      }
      for (auto* c : std::vector<Conn*>(conns))
        if (c->out.size() > c->out_off) on_writable(c);
    }
  }
};

// ------------------------------------------------------------------------------------ the seam
template <typename T, typename F>
T* outer(F* inner) {
  return reinterpret_cast<T*>(inner);  // the verbs struct is each model object's first member
}

int fail(int e) {
  errno = e;
  return e;
}

class RcModel final : public Verbs {
 public:
  const char* name() const override { return "rc-model"; }

  std::vector<std::string> devices(std::string*) override {
    std::vector<std::string> out;
    for (int i = 0; i < kDevices; i++) out.push_back("rcm" + std::to_string(i));
    return out;
  }

  ibv_context* open_device(const std::string& name, std::string* err) override {
    if (name.size() != 4 || name.compare(0, 3, "rcm") != 0 || name[3] < '0' || name[3] >= '0' + kDevices) {
      *err = "no rc-model device named '" + name + "' (rcm0..rcm" + std::to_string(kDevices - 1) + ")";
      return nullptr;
    }
    const char* link = std::getenv("TRELLIS_RC_MODEL_LINK");
    auto* p = new Port;
    if (!p->open(name, link && std::strcmp(link, "ib") == 0, err)) {
      delete p;
      return nullptr;
    }
    return &p->ctx;
  }

  static Port* port(ibv_context* ctx) { return outer<Port>(ctx); }

  int close_device(ibv_context* ctx) override {
    Port* p = port(ctx);
    p->close();
    delete p;
    return 0;
  }

  int query_device(ibv_context*, ibv_device_attr* a) override {
    std::memset(a, 0, sizeof *a);
    std::snprintf(a->fw_ver, sizeof a->fw_ver, "rc-model");
    a->max_mr_size = ~0ull;
    a->max_qp = 1 << 16;
    a->max_qp_wr = 16384;
    a->max_sge = 16;
    a->max_cq = 1 << 16;
    a->max_cqe = 1 << 22;
    a->max_mr = 1 << 20;
    a->max_pd = 1 << 16;
    a->max_srq = 1 << 16;
    a->max_srq_wr = 16384;
    a->max_srq_sge = 16;
    a->phys_port_cnt = 1;
    return 0;
  }

  int query_port(ibv_context* ctx, uint8_t port_num, ibv_port_attr* a) override {
    if (port_num != 1) return fail(EINVAL);
    Port* p = port(ctx);
    std::memset(a, 0, sizeof *a);
    a->state = IBV_PORT_ACTIVE;
    a->max_mtu = IBV_MTU_4096;
    a->active_mtu = p->ib ? IBV_MTU_4096 : IBV_MTU_1024;
    a->gid_tbl_len = 2;
    a->max_msg_sz = 1u << 31;
    a->lid = p->ib ? p->lid : 0;
    a->link_layer = p->ib ? IBV_LINK_LAYER_INFINIBAND : IBV_LINK_LAYER_ETHERNET;
    return 0;
  }

  int query_gid(ibv_context* ctx, uint8_t port_num, int index, ibv_gid* gid) override {
    if (port_num != 1 || index < 0 || index > 1) return fail(EINVAL);
    Port* p = port(ctx);
    *gid = p->ib && index == 1 ? ibv_gid{} : p->gid[index];
    return 0;
  }

  int gid_type(ibv_context* ctx, uint8_t port_num, int index) override {
    if (port_num != 1 || index < 0 || index > 1) return -EINVAL;
    if (port(ctx)->ib) return index == 0 ? 1 : 0;
    return index == 0 ? 1 : 2;
  }

  std::string pci_path(ibv_context*) override { return ""; }

  ibv_pd* alloc_pd(ibv_context* ctx) override {
    auto* pd = new MPd{};
    pd->pd.context = ctx;
    pd->port = port(ctx);
    return &pd->pd;
  }
  ibv_pd* alloc_thread_pd(ibv_context* ctx, ibv_pd* parent) override {
    (void)parent;
    auto* pd = new MPd{};
    pd->pd.context = ctx;
    pd->port = port(ctx);
    pd->thread = true;
    return &pd->pd;
  }
  int dealloc_pd(ibv_pd* pd) override {
    delete outer<MPd>(pd);
    return 0;
  }

  ibv_mr* reg_mr(ibv_pd* pd, void* addr, size_t len, int access) override {
    // As in libibverbs: remote write needs local write.
    if ((access & IBV_ACCESS_REMOTE_WRITE) && !(access & IBV_ACCESS_LOCAL_WRITE)) {
      errno = EINVAL;
      return nullptr;
    }
    Port* p = outer<MPd>(pd)->port;
    std::lock_guard<std::recursive_mutex> g(p->mu);
    auto* mr = new MMr{};
    mr->mr.context = pd->context;
    mr->mr.pd = pd;
    mr->mr.addr = addr;
    mr->mr.length = len;
    mr->access = access;
    // Keys: an index in the low 24 bits and a random-ish high byte, like a real key's variant.
    uint32_t idx = ++p->next_key & 0xffffff;
    mr->mr.lkey = mr->mr.rkey = idx | (static_cast<uint32_t>(reinterpret_cast<uintptr_t>(mr) >> 4) & 0xff) << 24;
    p->mrs[mr->mr.rkey] = mr;
    return &mr->mr;
  }
  ibv_mr* reg_dmabuf_mr(ibv_pd* pd, uint64_t, size_t len, uint64_t iova, int, int access) override {
    if (!trellis::CudaDriver::get().can_copy()) {
      errno = EOPNOTSUPP;
      return nullptr;
    }
    ibv_mr* mr = reg_mr(pd, reinterpret_cast<void*>(static_cast<uintptr_t>(iova)), len, access);
    if (mr) outer<MMr>(mr)->device = true;
    return mr;
  }
  int dereg_mr(ibv_mr* mr) override {
    Port* p = outer<MPd>(mr->pd)->port;
    std::lock_guard<std::recursive_mutex> g(p->mu);
    p->mrs.erase(mr->rkey);
    delete outer<MMr>(mr);
    return 0;
  }

  ibv_comp_channel* create_comp_channel(ibv_context* ctx) override {
    auto* ch = new MChannel{};
    ch->ch.context = ctx;
    ch->ch.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return &ch->ch;
  }
  int destroy_comp_channel(ibv_comp_channel* ch) override {
    ::close(ch->fd);
    delete outer<MChannel>(ch);
    return 0;
  }
  ibv_cq* create_cq(ibv_context* ctx, int cqe, ibv_comp_channel* ch) override {
    if (cqe < 1 || cqe > (1 << 22)) {
      errno = EINVAL;
      return nullptr;
    }
    auto* cq = new MCq{};
    cq->cq.context = ctx;
    cq->cq.cqe = cqe;
    cq->cq.channel = ch;
    cq->port = port(ctx);
    cq->cap = cqe;
    cq->ch = ch ? outer<MChannel>(ch) : nullptr;
    return &cq->cq;
  }
  int destroy_cq(ibv_cq* cq) override {
    delete outer<MCq>(cq);
    return 0;
  }
  int req_notify_cq(ibv_cq* cq) override {
    MCq* m = outer<MCq>(cq);
    std::lock_guard<std::recursive_mutex> g(m->port->mu);
    m->armed = true;
    return 0;
  }
  int get_cq_event(ibv_comp_channel* ch, ibv_cq** cq) override {
    MChannel* m = outer<MChannel>(ch);
    Port* p = outer<Port>(ch->context);
    std::lock_guard<std::recursive_mutex> g(p->mu);
    if (m->pending.empty()) {
      uint64_t v;
      ssize_t r = ::read(ch->fd, &v, sizeof v);
      (void)r;
      return -EAGAIN;
    }
    *cq = m->pending.front();
    m->pending.pop_front();
    if (m->pending.empty()) {
      uint64_t v;
      ssize_t r = ::read(ch->fd, &v, sizeof v);
      (void)r;
    }
    return 0;
  }
  void ack_cq_events(ibv_cq*, unsigned) override {}
  int poll_cq(ibv_cq* cq, int n, ibv_wc* wc) override {
    MCq* m = outer<MCq>(cq);
    std::lock_guard<std::recursive_mutex> g(m->port->mu);
    if (m->overrun) return -EOVERFLOW;
    int k = 0;
    while (k < n && !m->q.empty()) {
      wc[k++] = m->q.front();
      m->q.pop_front();
    }
    return k;
  }

  ibv_srq* create_srq(ibv_pd* pd, ibv_srq_init_attr* attr) override {
    if (attr->attr.max_wr < 1 || attr->attr.max_wr > 16384 || attr->attr.max_sge > 16) {
      errno = EINVAL;
      return nullptr;
    }
    auto* s = new MSrq{};
    s->srq.context = pd->context;
    s->srq.pd = pd;
    s->max_wr = attr->attr.max_wr;
    s->max_sge = std::max<uint32_t>(1, attr->attr.max_sge);
    return &s->srq;
  }
  int destroy_srq(ibv_srq* srq) override {
    delete outer<MSrq>(srq);
    return 0;
  }
  int post_srq_recv(ibv_srq* srq, ibv_recv_wr* wr, ibv_recv_wr** bad) override {
    MSrq* s = outer<MSrq>(srq);
    Port* p = outer<MPd>(srq->pd)->port;
    std::lock_guard<std::recursive_mutex> g(p->mu);
    for (; wr; wr = wr->next) {
      if (s->q.size() >= s->max_wr) {
        *bad = wr;
        return fail(ENOMEM);
      }
      if (static_cast<uint32_t>(wr->num_sge) > s->max_sge) {
        *bad = wr;
        return fail(EINVAL);
      }
      s->q.push_back(RecvWr{wr->wr_id, std::vector<ibv_sge>(wr->sg_list, wr->sg_list + wr->num_sge)});
    }
    return 0;
  }

  ibv_qp* create_qp(ibv_pd* pd, ibv_qp_init_attr* attr) override {
    if (attr->qp_type != IBV_QPT_RC) {
      errno = EOPNOTSUPP;
      return nullptr;
    }
    if (!attr->send_cq || !attr->recv_cq || attr->cap.max_send_wr < 1 || attr->cap.max_send_wr > 16384 ||
        attr->cap.max_send_sge > 16 || (!attr->srq && attr->cap.max_recv_wr > 16384)) {
      errno = EINVAL;
      return nullptr;
    }
    Port* p = outer<MPd>(pd)->port;
    std::lock_guard<std::recursive_mutex> g(p->mu);
    auto* q = new MQp{};
    q->port = p;
    q->qp.context = pd->context;
    q->qp.pd = pd;
    q->qp.send_cq = attr->send_cq;
    q->qp.recv_cq = attr->recv_cq;
    q->qp.srq = attr->srq;
    q->qp.qp_type = IBV_QPT_RC;
    q->qp.state = IBV_QPS_RESET;
    q->qp.qp_num = p->next_qpn++;
    q->scq = outer<MCq>(attr->send_cq);
    q->rcq = outer<MCq>(attr->recv_cq);
    q->srq = attr->srq ? outer<MSrq>(attr->srq) : nullptr;
    q->cap = attr->cap;
    q->cap.max_send_sge = std::max<uint32_t>(1, q->cap.max_send_sge);
    q->cap.max_recv_sge = std::max<uint32_t>(1, q->cap.max_recv_sge);
    p->qps[q->qp.qp_num] = q;
    return &q->qp;
  }

  int modify_qp(ibv_qp* qp, ibv_qp_attr* a, int mask) override {
    MQp* q = outer<MQp>(qp);
    Port* p = q->port;
    std::lock_guard<std::recursive_mutex> g(p->mu);
    if (!(mask & IBV_QP_STATE)) return fail(EINVAL);
    ibv_qp_state from = q->qp.state, to = a->qp_state;
    auto need = [&](int bits) { return (mask & bits) == bits; };
    if (to == IBV_QPS_ERR) {
      p->set_error(q);
      return 0;
    }
    if (to == IBV_QPS_RESET) {
      q->sq.clear();
      q->rq.clear();
      q->next_tx = q->tx_off = 0;
      q->nak_wait = q->have_recv = false;
      q->qp.state = IBV_QPS_RESET;
      return 0;
    }
    if (from == IBV_QPS_RESET && to == IBV_QPS_INIT) {
      if (!need(IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) || a->port_num != 1) return fail(EINVAL);
      q->access = static_cast<int>(a->qp_access_flags);
    } else if (from == IBV_QPS_INIT && to == IBV_QPS_RTR) {
      if (!need(IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
                IBV_QP_MIN_RNR_TIMER))
        return fail(EINVAL);
      if (p->ib) {
        if (a->ah_attr.dlid == 0) return fail(EINVAL);
        q->dest = Port::key_of_lid(a->ah_attr.dlid);
      } else {
        // RoCE is always routed by GID.
        if (!a->ah_attr.is_global) return fail(EINVAL);
        if (a->ah_attr.grh.sgid_index > 1) return fail(EINVAL);
        q->dest = Port::key_of_gid(a->ah_attr.grh.dgid);
      }
      q->dqpn = a->dest_qp_num;
      q->rq_psn = a->rq_psn;
      q->min_rnr_timer = a->min_rnr_timer;
    } else if (from == IBV_QPS_RTR && to == IBV_QPS_RTS) {
      if (!need(IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC))
        return fail(EINVAL);
      q->sq_psn = a->sq_psn;
      q->timeout = a->timeout;
      q->retry_cnt = a->retry_cnt;
      q->rnr_retry = a->rnr_retry;
    } else if (!(from == to && (to == IBV_QPS_RTS || to == IBV_QPS_INIT))) {
      return fail(EINVAL);
    }
    q->qp.state = to;
    return 0;
  }

  int destroy_qp(ibv_qp* qp) override {
    MQp* q = outer<MQp>(qp);
    Port* p = q->port;
    std::lock_guard<std::recursive_mutex> g(p->mu);
    p->qps.erase(qp->qp_num);
    delete q;
    return 0;
  }

  int post_send(ibv_qp* qp, ibv_send_wr* wr, ibv_send_wr** bad) override {
    MQp* q = outer<MQp>(qp);
    Port* p = q->port;
    std::lock_guard<std::recursive_mutex> g(p->mu);
    if (q->qp.state != IBV_QPS_RTS && q->qp.state != IBV_QPS_ERR) {
      *bad = wr;
      return fail(EINVAL);
    }
    bool any = false;
    for (; wr; wr = wr->next) {
      if (q->sq.size() >= q->cap.max_send_wr) {
        *bad = wr;
        if (any) p->wake();
        return fail(ENOMEM);
      }
      if (static_cast<uint32_t>(wr->num_sge) > q->cap.max_send_sge ||
          (wr->opcode != IBV_WR_RDMA_WRITE && wr->opcode != IBV_WR_RDMA_WRITE_WITH_IMM && wr->opcode != IBV_WR_SEND &&
           wr->opcode != IBV_WR_SEND_WITH_IMM)) {
        *bad = wr;
        if (any) p->wake();
        return fail(EINVAL);
      }
      SendWr w;
      w.wr_id = wr->wr_id;
      w.opcode = wr->opcode;
      w.signaled = (wr->send_flags & IBV_SEND_SIGNALED) || q->qp.state == IBV_QPS_ERR;
      w.sge.assign(wr->sg_list, wr->sg_list + wr->num_sge);
      w.len = 0;
      for (auto& s : w.sge) w.len += s.length;
      w.raddr = wr->wr.rdma.remote_addr;
      w.rkey = wr->wr.rdma.rkey;
      w.imm = wr->imm_data;
      w.psn = q->sq_psn++;
      if (q->qp.state == IBV_QPS_ERR) {
        p->complete_send(q, w, IBV_WC_WR_FLUSH_ERR);
        continue;
      }
      q->sq.push_back(std::move(w));
      any = true;
    }
    if (any) p->wake();
    return 0;
  }

  int post_recv(ibv_qp* qp, ibv_recv_wr* wr, ibv_recv_wr** bad) override {
    MQp* q = outer<MQp>(qp);
    std::lock_guard<std::recursive_mutex> g(q->port->mu);
    if (q->srq || q->qp.state == IBV_QPS_RESET) {
      *bad = wr;
      return fail(EINVAL);
    }
    for (; wr; wr = wr->next) {
      if (q->rq.size() >= q->cap.max_recv_wr) {
        *bad = wr;
        return fail(ENOMEM);
      }
      q->rq.push_back(RecvWr{wr->wr_id, std::vector<ibv_sge>(wr->sg_list, wr->sg_list + wr->num_sge)});
    }
    return 0;
  }
};

}  // namespace

Verbs& rc_model() {
  static RcModel m;
  return m;
}

}  // namespace trellis_verbs
