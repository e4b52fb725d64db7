// Trellis native engine kit — the domain group: the engine's 1–4 domains (NICs, "lanes") and
// everything per domain.
//
// It owns the domains, their counters, the peers (a handle and a sink per lane) and registrations
// (a key per lane), the message buffers (receives on every lane, sends), the work-request contexts,
// and the backlog: write commands expanded lazily into work requests and posted with back-pressure
// (max in flight per domain, a window per peer and domain, a pause after EAGAIN). It polls every CQ,
// counts immediates (into a port that owns them, else per batch for JS) and hands completions to the
// op table. It touches the op table (through its interface), the event queue and ports' counts;
// nothing of the worker's thread or queue. Worker thread only, but for the accessors the N-API side
// reads (domain, counters).
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "commands.hpp"
#include "domain.hpp"
#include "event_queue.hpp"
#include "expand.hpp"
#include "op_table.hpp"
#include "port_state.hpp"

namespace trellis {

class DomainGroup {
 public:
  // `stopping`: the worker's stop flag (a receive is not posted again once it is set).
  DomainGroup(std::vector<std::unique_ptr<Domain>> domains, const EngineOptions& opts, OpTable& ops,
              EventQueue& events, const std::atomic<bool>& stopping)
      : domains_(std::move(domains)),
        opts_(opts),
        ops_(ops),
        events_(events),
        stopping_(stopping),
        nics_(domains_.size()),
        imms_seen_(domains_.size(), 0) {
    for (auto& d : domains_) {
      (void)d;
      inflight_.push_back(0);
    }
  }

  size_t size() const { return domains_.size(); }
  Domain& domain(size_t i) { return *domains_[i]; }
  NicCounters& counters(size_t i) { return nics_[i]; }

  // Every domain's wait fds (a -1: one of them has none).
  std::vector<int> wait_fds() const {
    std::vector<int> fds;
    for (auto& d : domains_)
      for (int fd : d->wait_fds()) fds.push_back(fd);
    return fds;
  }

  // Right before the worker blocks: every domain not torn down is ready to be waited on.
  bool try_wait() {
    for (size_t i = 0; i < domains_.size(); i++)
      if (!(lane_down(i) || domains_[i]->try_wait())) return false;
    return true;
  }

  // Nothing waiting to be posted and nothing in flight.
  bool idle() const {
    if (!backlog_.empty() || !send_backlog_.empty()) return false;
    for (auto n : inflight_)
      if (n) return false;
    return true;
  }

  // -------------------------------------------------------------------------------- setup
  // Register the receive and send bounce buffers and post the receives. Returns "" or an error.
  std::string setup_buffers() {
    // User messages travel on lane 0; engine control messages (failover) may take any lane, so
    // every domain has receives posted (the full pool on lane 0, a few on the others).
    for (auto& d : domains_) opts_.recv_bytes = std::min(opts_.recv_bytes, d->max_msg_size());
    for (size_t lane = 0; lane < domains_.size(); lane++) {
      uint32_t n = lane == 0 ? opts_.recv_count : std::min<uint32_t>(opts_.recv_count, 8);
      for (uint32_t i = 0; i < n; i++) {
        recvs_.push_back(std::make_unique<RecvBuf>());
        RecvBuf& r = *recvs_.back();
        r.lane = static_cast<uint8_t>(lane);
        r.bytes.resize(opts_.recv_bytes);
        std::string msg;
        int rc = domains_[lane]->reg(r.bytes.data(), r.bytes.size(), false, &r.mr, &msg);
        if (rc) return "registering receive buffers: " + msg;
        rc = domains_[lane]->post_recv(r.bytes.data(), r.bytes.size(), r.mr.desc, &r);
        if (rc) return "posting receive buffers: " + domains_[lane]->strerror(rc);
      }
    }
    sends_.resize(opts_.send_buffers);
    for (size_t i = 0; i < sends_.size(); i++) {
      auto& s = sends_[i];
      s.bytes.resize(opts_.recv_bytes);
      s.mrs.resize(domains_.size());
      for (size_t lane = 0; lane < domains_.size(); lane++) {
        std::string msg;
        int rc = domains_[lane]->reg(s.bytes.data(), s.bytes.size(), false, &s.mrs[lane], &msg);
        if (rc) return "registering send buffers: " + msg;
      }
      free_sends_.push_back(static_cast<int32_t>(i));
    }
    return "";
  }

  // Shutdown: the work not yet posted goes (its sends' operations reported CLOSED).
  void drop_backlog() {
    backlog_.clear();
    for (auto& p : send_backlog_) ops_.fail_op(p.op, Code::Closed, 0, -1, kClosedPending);
    send_backlog_.clear();
  }

  // Shutdown: every buffer and region deregistered.
  void teardown_buffers() {
    for (auto& r : recvs_) domains_[r->lane]->dereg(r->mr);
    for (auto& s : sends_)
      for (size_t lane = 0; lane < s.mrs.size(); lane++) domains_[lane]->dereg(s.mrs[lane]);
    for (auto& [id, reg] : regions_) {
      (void)id;
      for (size_t i = 0; i < reg.mrs.size(); i++) domains_[i]->dereg(reg.mrs[i]);
    }
    regions_.clear();
  }

  // -------------------------------------------------------------------------------- commands
  void add_peer(Cmd& c) {
    Peer p;
    size_t lanes = std::min(domains_.size(), c.addrs.size());
    for (size_t i = 0; i < lanes; i++) {
      uint64_t h = 0;
      std::string msg;
      int rc = domains_[i]->add_peer(c.addrs[i].data(), c.addrs[i].size(), &h, &msg);
      if (rc) {
        p.code = Code::UnknownPeer;
        p.message = "cannot resolve the peer's NIC " + std::to_string(i) + " address: " + msg;
        break;
      }
      p.handles.push_back(h);
      p.sinks.push_back(domains_[i]->sink_of(c.addrs[i].data(), c.addrs[i].size()));
    }
    p.inflight.assign(domains_.size(), 0);
    peers_[c.id] = std::move(p);
  }

  void reg(Cmd& c) {
    RegDone ev{c.id, Code::Ok, "", {}};
    Region r{c.ptr, c.len, {}};
    for (size_t i = 0; i < domains_.size(); i++) {
      LocalMr mr;
      std::string msg;
      int rc = c.device >= 0 ? domains_[i]->reg_device(c.ptr, c.len, c.device, c.remote, &mr, &msg)
                             : domains_[i]->reg(c.ptr, c.len, c.remote, &mr, &msg);
      if (rc) {
        for (size_t j = 0; j < r.mrs.size(); j++) domains_[j]->dereg(r.mrs[j]);
        ev.code = rc == -ENOMEM ? Code::ResourceExhausted : rc == -EINVAL ? Code::InvalidArgument : Code::ProviderError;
        ev.message = "registering on NIC " + std::to_string(i) + ": " + msg;
        ev.keys.clear();
        events_.push([&](Events& e) { e.regs.push_back(std::move(ev)); });
        return;
      }
      r.mrs.push_back(mr);
      ev.keys.push_back(RemoteKey{mr.raddr, mr.rkey});
    }
    regions_[c.id] = std::move(r);
    events_.push([&](Events& e) { e.regs.push_back(std::move(ev)); });
  }

  // Close the region's registration on every NIC, then say so: the JavaScript side's unregister()
  // resolves on this reply, so a remote write through the old key fails from then on.
  void dereg(uint32_t id) {
    auto it = regions_.find(id);
    if (it != regions_.end()) {
      for (size_t i = 0; i < it->second.mrs.size(); i++) domains_[i]->dereg(it->second.mrs[i]);
      regions_.erase(it);
    }
    RegDone ev{id, Code::Ok, "", {}, true};
    events_.push([&](Events& e) { e.regs.push_back(std::move(ev)); });
  }

  // Accept a write into the op table and the backlog (or report it failed at once).
  void write(WritePtr w) {
    OpState st;
    st.outstanding = w->total_wrs();
    st.deadline = ops_.deadline();
    st.port = w->port;
    st.port_window = w->port_window;
    ops_.join(st, w->group, w->group_size);
    OpId op = w->op;
    // A peer that could not be resolved fails the operation before anything is posted.
    auto check_peer = [&](uint32_t id) -> bool {
      auto it = peers_.find(id);
      if (it == peers_.end()) {
        st.code = Code::Internal;
        st.message = "unknown peer id " + std::to_string(id);
        return false;
      }
      if (it->second.code != Code::Ok) {
        st.code = it->second.code;
        st.message = it->second.message;
        return false;
      }
      return true;
    };
    bool ok = true;
    for (auto& r : w->runs) ok = ok && check_peer(r.peer);
    if (w->pages) ok = ok && check_peer(w->pages->peer);
    if (ok && w->region && !regions_.count(w->region)) {
      ok = false;
      st.code = Code::InvalidDescriptor;
      st.message = "the source region is not registered";
    }
    if (!ok || st.outstanding == 0) {
      ops_.report(op, st, st.code, 0, -1, st.message);
      return;
    }
    make_room(op);
    Gen g;
    g.st = &ops_.add(op, std::move(st));
    if (w->region) g.region = &regions_.find(w->region)->second;
    g.cmd = std::move(w);
    g.at = wr_first(*g.cmd);
    backlog_.push_back(std::move(g));
  }

  // Accept a message into the op table and the send backlog (or report it failed at once).
  void send(OpId op, uint32_t peer, std::vector<uint8_t> data, uint8_t lane) {
    OpState st;
    st.outstanding = 1;
    st.deadline = ops_.deadline();
    auto it = peers_.find(peer);
    if (it == peers_.end() || it->second.code != Code::Ok) {
      ops_.report(op, st, it == peers_.end() ? Code::Internal : it->second.code, 0, 0,
                  it == peers_.end() ? "unknown peer id" : it->second.message);
      return;
    }
    if (data.size() > opts_.recv_bytes) {
      ops_.report(op, st, Code::InvalidArgument, 0, 0, "message larger than the engine's buffers");
      return;
    }
    if (lane >= it->second.handles.size()) {
      ops_.report(op, st, Code::InvalidArgument, 0, -1, "no NIC " + std::to_string(lane) + " to this peer");
      return;
    }
    make_room(op);
    ops_.add(op, std::move(st));
    send_backlog_.push_back(PendingSend{op, peer, std::move(data), lane});
  }

  // JavaScript's operation ids are 32 bits and wrap after 2^32. It skips every id it still holds,
  // but it lets go of an operation at the engine deadline even when the provider never completes
  // the operation's work request (libfabric 1.17's shm with a refused key, a peer hung for good),
  // and the entry stays here until the provider does. A new operation of that id moves the old
  // entry, and every work request of it, to an id of its own beyond JavaScript's first: the old
  // one's late completion then finds the old entry (and is swallowed: it was reported), and the
  // new one's its own.
  void make_room(OpId op) {
    if (!ops_.find(op)) return;
    OpId moved = kLingerOpBase + lingering_++;
    ops_.rename(op, moved);
    for (auto& block : ctx_blocks_)
      for (int i = 0; i < 1024; i++)
        if (block[i].live && block[i].op == op) block[i].op = moved;
    for (auto& g : backlog_)
      if (g.cmd && g.cmd->op == op) g.cmd->op = moved;
    for (auto& s : send_backlog_)
      if (s.op == op) s.op = moved;
  }

  // Immediates a port counts are routed to it (and never reach JS).
  void add_port(const std::shared_ptr<PortState>& port) {
    for (size_t i = 0; i < port->imms.size(); i++) port_imms_[port->imms[i]] = PortCount{port, &port->counts[i]};
  }
  void remove_port(const std::shared_ptr<PortState>& port) {
    for (auto it = port_imms_.begin(); it != port_imms_.end();) {
      if (it->second.port == port) it = port_imms_.erase(it);
      else ++it;
    }
  }

  // Drop the work of `op` not yet posted (writes, then sends): how many work requests that was.
  uint64_t drop_unposted(OpId op) {
    uint64_t dropped = drop_unposted_writes(op);
    for (auto s = send_backlog_.begin(); s != send_backlog_.end();) {
      if (s->op == op) {
        dropped++;
        s = send_backlog_.erase(s);
      } else {
        ++s;
      }
    }
    return dropped;
  }

  // Drop the writes of `op` not yet posted: how many work requests that was.
  uint64_t drop_unposted_writes(OpId op) {
    uint64_t dropped = 0;
    for (auto g = backlog_.begin(); g != backlog_.end();) {
      if (g->cmd->op == op) {
        dropped += wr_remaining(*g->cmd, g->at);
        g = backlog_.erase(g);
      } else {
        ++g;
      }
    }
    return dropped;
  }

  // -------------------------------------------------------------------------------- torn-down NICs
  // Fault injection with the real thing: the domain's endpoint and CQ are closed (the provider
  // forgets what was posted), every work request still posted on it fails with NIC_FAILED — its
  // fate at the target unknown, as when a NIC dies — and later posts on it fail at once.
  void fail_lane(size_t lane) {
    if (lane >= domains_.size() || lane_down(lane)) return;
    down_.resize(domains_.size(), false);
    down_[lane] = true;
    domains_[lane]->teardown();
    for (auto& block : ctx_blocks_)
      for (int i = 0; i < 1024; i++) {
        WrCtx* c = &block[i];
        if (!c->live || c->lane != lane) continue;
        inflight_[lane]--;
        release_peer_slot(*c);
        if (c->kind == CompKind::Send) free_sends_.push_back(c->send_buf);
        OpId op = c->op;
        ctx_free(c);
        wr_failed(op, static_cast<uint8_t>(lane), Code::NicFailed, ENETDOWN, down_message(lane), true);
      }
  }

  // -------------------------------------------------------------------------------- a loop turn
  // Post from the backlog, then poll every CQ. Returns true if anything was posted or completed.
  bool progress() {
    bool active = false;
    // After EAGAIN, retry posting only once a completion was reaped or a few polls passed: a
    // worker that hammers a full queue takes the lock its peer needs to drain it (shm).
    // Stopping: nothing more is posted (see Engine::handle).
    if ((eagain_backoff_ == 0 || --eagain_backoff_ == 0) && !stopping_.load(std::memory_order_relaxed)) {
      if (pump()) active = true;
    }
    if (poll_all()) {
      active = true;
      eagain_backoff_ = 0;
    }
    return active;
  }

 private:
  // Every posting context starts with 64 bytes the provider may use (libfabric FI_CONTEXT2).
  struct alignas(8) ProviderCtx {
    void* p[8];
  };
  struct WrCtx {
    ProviderCtx pctx;
    OpId op;
    uint8_t lane;
    CompKind kind;
    uint64_t len;
    int32_t send_buf;  // index of the send buffer, or -1
    WrCtx* next_free;
    bool live = false;  // posted and not completed (a torn-down NIC fails these itself)
    uint32_t peer = kNoPeer;  // whose window it holds a slot of (writes)
  };
  static constexpr uint32_t kNoPeer = 0xffffffffu;
  struct Region {
    void* ptr;
    size_t len;
    std::vector<LocalMr> mrs;
  };
  struct Peer {
    std::vector<uint64_t> handles;
    std::vector<RemoteKey> sinks;
    // Writes posted to this peer and not completed, per domain: bounded by the peer window, so a
    // peer that stops completing holds only its own slots of the domain's queue.
    std::vector<uint32_t> inflight;
    Code code = Code::Ok;
    std::string message;
  };
  struct Gen {  // lazy work-request generator over one command
    WritePtr cmd;
    OpState* st = nullptr;  // stable: unordered_map nodes do not move
    Region* region = nullptr;  // resolved once per command, not per work request
    Peer* peer = nullptr;      // the current run's (or the pages') peer
    uint32_t peer_id = UINT32_MAX;
    WrCursor at;
  };
  struct RecvBuf {
    ProviderCtx pctx;
    std::vector<uint8_t> bytes;
    LocalMr mr;
    uint8_t lane = 0;
  };
  struct SendBuf {
    std::vector<uint8_t> bytes;
    std::vector<LocalMr> mrs;  // one per domain: a message may go out on any lane
  };
  struct PendingSend {
    OpId op;
    uint32_t peer;
    std::vector<uint8_t> data;
    uint8_t lane = 0;
  };
  struct PortCount {
    std::shared_ptr<PortState> port;
    std::atomic<uint64_t>* count;
  };

  bool lane_down(size_t lane) const { return lane < down_.size() && down_[lane]; }
  std::string down_message(size_t lane) const { return "NIC " + std::to_string(lane) + " was torn down"; }

  // A work request failed: counted on its NIC, then reported to the op table.
  void wr_failed(OpId op, uint8_t lane, Code code, int err, const std::string& msg, bool was_posted = false) {
    nics_[lane].errors.fetch_add(1, std::memory_order_relaxed);
    ops_.wr_failed(op, lane, code, err, msg, was_posted);
  }

  // -------------------------------------------------------------------------------- posting
  uint32_t max_inflight(size_t lane) const {
    (void)lane;
    return opts_.max_inflight ? opts_.max_inflight : 1024;
  }
  // Writes one peer may have posted on a domain: a quarter of the domain's window, and at most half
  // the provider's own endpoint queue, so a peer that stops completing holds only its own slots.
  uint32_t peer_window(size_t lane) const {
    if (opts_.peer_window) return opts_.peer_window;
    uint32_t w = max_inflight(lane) / 4;
    uint32_t depth = lane < domains_.size() ? domains_[lane]->queue_depth() : 0;
    if (depth) w = std::min(w, depth / 2);
    return std::max<uint32_t>(1, w);
  }
  void release_peer_slot(const WrCtx& c) {
    if (c.peer == kNoPeer) return;
    auto it = peers_.find(c.peer);
    if (it != peers_.end() && c.lane < it->second.inflight.size() && it->second.inflight[c.lane] > 0)
      it->second.inflight[c.lane]--;
  }

  WrCtx* ctx_alloc() {
    if (!free_ctx_) {
      auto block = std::make_unique<WrCtx[]>(1024);
      for (int i = 0; i < 1024; i++) {
        block[i].next_free = free_ctx_;
        free_ctx_ = &block[i];
      }
      ctx_blocks_.push_back(std::move(block));
    }
    WrCtx* c = free_ctx_;
    free_ctx_ = c->next_free;
    return c;
  }
  void ctx_free(WrCtx* c) {
    c->live = false;
    c->next_free = free_ctx_;
    free_ctx_ = c;
  }

  // Post as much of the backlog as the queues take. Returns true if anything was posted.
  // Post from the backlog, in order per peer. A peer whose post the provider refuses for now
  // (EAGAIN: its connection being made, its queue full) is passed over for this round, and so are
  // the later requests to it, so one peer in trouble holds back only its own work.
  bool pump() {
    bool any = false;
    // What cannot go now is held back per (peer, NIC): a NIC whose queue or whose window to a peer
    // is full (a NIC that died without an error fills both) holds back only the work queued on it,
    // never another NIC's — failover re-posts a dead NIC's share on the others, which must go.
    blocked_.clear();
    uint32_t full = 0;  // NICs whose queue is full this round
    const uint32_t all = domains_.size() >= 32 ? ~0u : (1u << domains_.size()) - 1;
    for (auto it = backlog_.begin(); it != backlog_.end();) {
      // A close may have come while the provider held this thread in a post (stopping): no more.
      if (stopping_.load(std::memory_order_relaxed)) break;
      Gen& g = *it;
      WriteCmd& w = *g.cmd;
      WriteWr wr;
      const WrShape s = wr_shape(w, g.at);
      const uint8_t lane = s.lane;
      const uint32_t peer = s.peer;
      if (inflight_[lane] >= max_inflight(lane)) {
        full |= 1u << lane;
        if ((full & all) == all) break;
        ++it;
        continue;
      }
      const uint64_t held = (uint64_t(peer) << 8) | lane;
      if (std::find(blocked_.begin(), blocked_.end(), held) != blocked_.end()) {
        ++it;
        continue;
      }
      if (g.peer_id != peer) {
        g.peer = &peers_.find(peer)->second;
        g.peer_id = peer;
      }
      Peer& pr = *g.peer;
      if (pr.inflight[lane] >= peer_window(lane)) {
        // Its window on this NIC is full: later work to it on this NIC waits; the rest goes on.
        blocked_.push_back(held);
        ++it;
        continue;
      }
      wr.peer = pr.handles[lane];
      wr.len = s.len;
      if (s.keys && s.len) {
        wr.src = static_cast<const uint8_t*>(g.region->ptr) + s.src_off;
        wr.raddr = s.keys[lane].addr + s.dst_off;
        wr.rkey = s.keys[lane].key;
      } else {
        // Zero-byte work requests (immediates, barriers, empty shards) land in the peer's sink.
        wr.len = 0;
        wr.raddr = pr.sinks[lane].addr;
        wr.rkey = pr.sinks[lane].key;
        wr.src = nullptr;
      }
      wr.src_desc = wr.len && g.region ? g.region->mrs[lane].desc : nullptr;
      wr.has_imm = w.has_imm;
      wr.imm = w.imm;
      WrCtx* c = ctx_alloc();
      *c = WrCtx{{}, w.op, lane, CompKind::Write, wr.len, -1, nullptr};
      wr.ctx = c;
      TRELLIS_TRACE_MARK('W');
      int rc = lane_down(lane) ? -ENETDOWN : domains_[lane]->post_write(wr);
      if (rc == -EAGAIN) {
        ctx_free(c);
        eagain_backoff_ = 16;
        blocked_.push_back(held);  // poll, then continue where this peer stopped on this NIC
        ++it;
        continue;
      }
      any = true;
      if (rc) {
        ctx_free(c);
        if (rc == -ENETDOWN) wr_failed(w.op, lane, Code::NicFailed, ENETDOWN, down_message(lane));
        else wr_failed(w.op, lane, domains_[lane]->classify(-rc), -rc, domains_[lane]->strerror(rc));
      } else {
        TRELLIS_TRACE_MARK('P');
        inflight_[lane]++;
        pr.inflight[lane]++;
        c->peer = peer;
        g.st->posted_open++;
        c->live = true;
      }
      if (!wr_next(w, g.at)) continue;
      it = it == backlog_.begin() ? (backlog_.pop_front(), backlog_.begin()) : backlog_.erase(it);
    }
    // Messages, in order per (peer, NIC) — users' all go on NIC 0, so in order per peer: a peer whose
    // send the provider refuses for now (EAGAIN: its connection being made, or never to be made
    // when it died) holds back only its own messages on that NIC.
    send_blocked_.clear();
    full = 0;
    for (auto it = send_backlog_.begin(); it != send_backlog_.end() && !free_sends_.empty();) {
      PendingSend& s = *it;
      const uint8_t lane = s.lane;
      if (inflight_[lane] >= max_inflight(lane)) {
        full |= 1u << lane;
        if ((full & all) == all) break;
        ++it;
        continue;
      }
      const uint64_t held = (uint64_t(s.peer) << 8) | lane;
      if (std::find(send_blocked_.begin(), send_blocked_.end(), held) != send_blocked_.end()) {
        ++it;
        continue;
      }
      int32_t bi = free_sends_.back();
      SendBuf& b = sends_[bi];
      std::memcpy(b.bytes.data(), s.data.data(), s.data.size());
      WrCtx* c = ctx_alloc();
      *c = WrCtx{{}, s.op, lane, CompKind::Send, s.data.size(), bi, nullptr};
      int rc = lane_down(lane) ? -ENETDOWN
                               : domains_[lane]->post_send(peers_[s.peer].handles[lane], b.bytes.data(), s.data.size(),
                                                           b.mrs[lane].desc, c);
      if (rc == -EAGAIN) {
        ctx_free(c);
        eagain_backoff_ = 16;
        send_blocked_.push_back(held);
        ++it;
        continue;
      }
      any = true;
      if (rc) {
        ctx_free(c);
        if (rc == -ENETDOWN) wr_failed(s.op, lane, Code::NicFailed, ENETDOWN, down_message(lane));
        else wr_failed(s.op, lane, domains_[lane]->classify(-rc), -rc, domains_[lane]->strerror(rc));
      } else {
        free_sends_.pop_back();
        inflight_[lane]++;
        c->live = true;
        ops_.wr_posted(s.op);
      }
      it = it == send_backlog_.begin() ? (send_backlog_.pop_front(), send_backlog_.begin()) : send_backlog_.erase(it);
    }
    if (any)
      for (auto& d : domains_) d->flush_posts();
    return any;
  }

  // -------------------------------------------------------------------------------- completions
  bool poll_all() {
    bool any = false;
    for (size_t lane = 0; lane < domains_.size(); lane++) {
      if (lane_down(lane)) continue;
      comps_.clear();
      int n = domains_[lane]->poll(comps_, 64);
      if (n <= 0) continue;
      any = true;
      for (auto& c : comps_) complete(lane, c);
    }
    if (!imm_batch_.empty()) {
      // Shared totals first: JS may read them before it drains the batch (latency mode), and
      // takes whichever of the two it sees first (both count the same arrivals).
      if (!shared_imms_.empty())
        for (auto& [imm, count] : imm_batch_) {
          auto it = shared_imms_.find(imm);
          if (it == shared_imms_.end()) continue;
          it->second.nic += count;
          __atomic_store_n(it->second.word, static_cast<uint32_t>(it->second.nic), __ATOMIC_RELEASE);
        }
      events_.push_arrivals(imm_batch_, [this](uint32_t imm) { return shared_imms_.count(imm) != 0; });
      for (auto& [imm, count] : imm_batch_) imm_totals_[imm] += count;
      imm_batch_.clear();
      for (size_t lane = 0; lane < imms_seen_.size(); lane++)
        if (imms_seen_[lane]) {
          nics_[lane].imms_received.fetch_add(imms_seen_[lane], std::memory_order_release);
          imms_seen_[lane] = 0;
        }
    }
    return any;
  }

 public:
  // Arrivals of `imm` counted for JS since the engine started (the word a reaction's trigger
  // watches: see Watches). Its address is stable for the engine's life.
  uint64_t* imm_total(uint32_t imm) { return &imm_totals_[imm]; }
  // Arrivals JS counted itself (raised by a control message when a NIC failed): they count too.
  void count_imm(uint32_t imm, uint64_t n) {
    imm_totals_[imm] += n;
    js_counted_[imm] += n;
  }

  // Latency mode: keep `word` (JS memory, alive until the worker stops) equal to the arrivals of
  // `imm` read from the NICs since the engine started (mod 2^32) — what the arrival records of
  // every batch add up to — so JS sees an arrival with one load, before the batch reaches it.
  void share_imm(uint32_t imm, uint32_t* word) {
    auto t = imm_totals_.find(imm);
    auto j = js_counted_.find(imm);
    const uint64_t nic = (t == imm_totals_.end() ? 0 : t->second) - (j == js_counted_.end() ? 0 : j->second);
    SharedImm& sh = shared_imms_[imm];
    sh.word = word;
    sh.nic = nic;
    __atomic_store_n(word, static_cast<uint32_t>(nic), __ATOMIC_RELEASE);
  }

 private:

  void complete(size_t lane, Completion& c) {
    NicCounters& nc = nics_[lane];
    switch (c.kind) {
      case CompKind::RemoteWrite:
        if (c.code == Code::Ok && c.has_imm) {
          TRELLIS_TRACE_MARK('A');
          if (!port_imms_.empty()) {
            auto it = port_imms_.find(c.imm);
            if (it != port_imms_.end() && !it->second.port->detached.load(std::memory_order_acquire)) {
              nc.imms_received.fetch_add(1, std::memory_order_relaxed);
              it->second.count->fetch_add(1, std::memory_order_release);
              it->second.port->changed();
              return;
            }
          }
          imms_seen_[lane]++;
          imm_batch_[c.imm]++;
        } else if (c.code != Code::Ok) {
          nc.errors.fetch_add(1, std::memory_order_relaxed);
        }
        return;
      case CompKind::Recv: {
        auto* rb = static_cast<RecvBuf*>(c.ctx);
        if (c.code == Code::Ok) {
          nc.recv_ops.fetch_add(1, std::memory_order_relaxed);
          nc.bytes_received.fetch_add(c.len, std::memory_order_relaxed);
          std::vector<uint8_t> msg(rb->bytes.begin(), rb->bytes.begin() + static_cast<ptrdiff_t>(c.len));
          events_.push([&](Events& e) { e.recvs.push_back(std::move(msg)); });
        } else {
          nc.errors.fetch_add(1, std::memory_order_relaxed);
        }
        if (!stopping_.load() && !lane_down(rb->lane))
          domains_[rb->lane]->post_recv(rb->bytes.data(), rb->bytes.size(), rb->mr.desc, rb);
        return;
      }
      case CompKind::Write:
      case CompKind::Send: {
        auto* ctx = static_cast<WrCtx*>(c.ctx);
        inflight_[ctx->lane]--;
        release_peer_slot(*ctx);
        if (ctx->kind == CompKind::Send) free_sends_.push_back(ctx->send_buf);
        if (c.code == Code::Ok) {
          if (ctx->kind == CompKind::Send) {
            nc.send_ops.fetch_add(1, std::memory_order_relaxed);
            nc.bytes_sent.fetch_add(ctx->len, std::memory_order_relaxed);
          } else {
            TRELLIS_TRACE_MARK('C');
            nc.write_ops.fetch_add(1, std::memory_order_relaxed);
            nc.bytes_written.fetch_add(ctx->len, std::memory_order_relaxed);
          }
          ops_.wr_done(ctx->op);
        } else {
          wr_failed(ctx->op, ctx->lane, c.code, c.err, c.message, true);
        }
        ctx_free(ctx);
        return;
      }
    }
  }

  std::vector<std::unique_ptr<Domain>> domains_;
  EngineOptions opts_;  // recv_bytes: at most every domain's max_msg_size (setup_buffers)
  OpTable& ops_;
  EventQueue& events_;
  const std::atomic<bool>& stopping_;
  std::vector<NicCounters> nics_;
  // Per lane: arrivals for JS read by this poll, added to imms_received once the shared words are
  // stored (so the stat never runs ahead of a word: what it counts, a counter can already see).
  std::vector<uint64_t> imms_seen_;
  std::vector<uint32_t> inflight_;
  std::vector<bool> down_;  // lanes torn down (fail_lane)

  std::unordered_map<uint32_t, Region> regions_;
  std::unordered_map<uint32_t, Peer> peers_;
  std::unordered_map<uint32_t, uint32_t> imm_batch_;
  std::unordered_map<uint32_t, uint64_t> imm_totals_;  // element addresses are stable (node-based)
  std::unordered_map<uint32_t, PortCount> port_imms_;  // immediates a port owns (never sent to JS)
  std::unordered_map<uint32_t, uint64_t> js_counted_;   // of imm_totals_, what count_imm added
  struct SharedImm {
    uint32_t* word = nullptr;
    uint64_t nic = 0;  // arrivals read from the NICs since the engine started
  };
  std::unordered_map<uint32_t, SharedImm> shared_imms_;  // share_imm
  std::deque<Gen> backlog_;
  std::vector<uint64_t> blocked_;       // (peer << 8 | NIC): writes passed over in the current pump round
  std::vector<uint64_t> send_blocked_;  // and messages
  std::deque<PendingSend> send_backlog_;
  std::vector<std::unique_ptr<RecvBuf>> recvs_;  // stable addresses: posted as contexts
  std::vector<SendBuf> sends_;
  std::vector<int32_t> free_sends_;
  std::vector<std::unique_ptr<WrCtx[]>> ctx_blocks_;
  WrCtx* free_ctx_ = nullptr;
  std::vector<Completion> comps_;
  uint32_t eagain_backoff_ = 0;
  uint64_t lingering_ = 0;  // make_room's moves, ever
};

}  // namespace trellis
