// Trellis native engine kit — the engine: one worker thread over a DomainGroup of 1–4 domains.
//
//   JS thread ──push(Cmd)──► command queue ──► worker: expand requests into work requests (lazily),
//                                                post with back-pressure, poll every CQ, count
//                                                immediates, settle operations
//   JS thread ◄──one doorbell per batch── event queue ◄──┘
//
// The JS side has validated every request (EngineBase); the worker trusts its input and checks
// only what it cannot know earlier: provider limits and completion status.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "commands.hpp"
#include "domain.hpp"
#include "expand.hpp"
#include "format.hpp"
#include "port.h"
#include "port_state.hpp"

#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#endif

namespace trellis {

class Engine {
 public:
  using Notify = std::function<void()>;

  Engine(std::vector<std::unique_ptr<Domain>> domains, EngineOptions opts, Notify notify)
      : domains_(std::move(domains)), opts_(opts), notify_(std::move(notify)), nics_(domains_.size()) {
    for (auto& d : domains_) {
      (void)d;
      inflight_.push_back(0);
    }
  }

  ~Engine() {
    stop();
#ifdef __linux__
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    if (event_fd_ >= 0) ::close(event_fd_);
#endif
  }

  // Register the receive and send bounce buffers and start the worker. Returns "" or an error.
  std::string start() {
    std::string err = setup_buffers();
    if (!err.empty()) return err;
    setup_wait();
    worker_ = std::thread([this] { run(); });
#ifdef __linux__
    // Named and pinned from here, before start() returns, so both hold when the engine exists.
    pthread_setname_np(worker_.native_handle(), "trellis-engine");
    if (opts_.cpu >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(opts_.cpu, &set);
      if (pthread_setaffinity_np(worker_.native_handle(), sizeof(set), &set) != 0) {
        return "cannot pin the engine's worker to CPU " + std::to_string(opts_.cpu) + " (is it online and allowed?)";
      }
    }
#endif
    return "";
  }

  size_t nics() const { return domains_.size(); }
  Domain& domain(size_t i) { return *domains_[i]; }
  NicCounters& counters(size_t i) { return nics_[i]; }

  void push(Cmd&& c) {
    {
      std::lock_guard<std::mutex> g(cmd_mu_);
      cmds_.push_back(std::move(c));
      cmds_pending_.store(true, std::memory_order_release);
    }
    wake();
  }

  // JS thread: take everything that happened since the last drain.
  Events drain() {
    std::lock_guard<std::mutex> g(ev_mu_);
    doorbell_.store(false, std::memory_order_release);
    Events out;
    std::swap(out, events_);
    return out;
  }

  // Loop iterations of the worker so far: a watchdog on the JS side sees a worker stuck inside
  // the provider (a peer that died holding a shared-memory lock wedges shm's fi_writemsg).
  uint64_t heartbeat() const { return heartbeat_.load(std::memory_order_relaxed); }

  // Give up on a worker stuck inside the provider: it is detached, never joined. The caller must
  // then leak this Engine (the thread may still hold pointers into it).
  void abandon() {
    close_ports();
    stopping_.store(true);
    if (worker_.joinable()) worker_.detach();
  }

  // Tear NIC `lane` down (fault injection; see fail_lane).
  void fail_nic(uint8_t lane) {
    Cmd c(CmdKind::FailNic);
    c.lane = lane;
    push(std::move(c));
  }

  // Ports: the N-API side opens them here so that stop() can close them first.
  void attach_port(const std::shared_ptr<PortState>& p) {
    {
      std::lock_guard<std::mutex> g(p->mu);
      p->engine = this;
    }
    std::lock_guard<std::mutex> g(ports_mu_);
    ports_.push_back(p);
    Cmd c(CmdKind::AddPort);
    c.port = p;
    push(std::move(c));
  }
  void detach_port(const std::shared_ptr<PortState>& p) {
    {
      std::lock_guard<std::mutex> g(p->mu);
      p->engine = nullptr;
    }
    p->changed();
    Cmd c(CmdKind::RemovePort);
    c.port = p;
    push(std::move(c));
  }

  // Stop the worker: every operation still pending is reported CLOSED, every buffer released.
  void stop() {
    close_ports();
    if (!worker_.joinable()) return;
    stopping_.store(true);
    wake();
    worker_.join();
  }

 private:
  // No port posts anything once this returns (post() checks `engine` under the port's lock).
  void close_ports() {
    std::vector<std::weak_ptr<PortState>> ports;
    {
      std::lock_guard<std::mutex> g(ports_mu_);
      ports.swap(ports_);
    }
    for (auto& w : ports)
      if (auto p = w.lock()) {
        {
          std::lock_guard<std::mutex> g(p->mu);
          p->engine = nullptr;
        }
        p->changed();
      }
  }

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
  struct OpState {
    uint64_t outstanding = 0;  // work requests not yet completed (posted or not)
    uint64_t posted_open = 0;  // posted and not completed
    Code code = Code::Ok;
    int err = 0;
    int nic = -1;
    std::string message;
    Code cancel = Code::Ok;
    bool reported = false;
    bool posted_at_report = false;  // reported with work still posted: tell JS when it is let go
    std::chrono::steady_clock::time_point deadline;
    std::shared_ptr<PortState> port;
  };
  struct Region;
  struct Peer;
  struct Gen {  // lazy work-request generator over one command
    std::shared_ptr<WriteCmd> cmd;
    OpState* st = nullptr;  // stable: unordered_map nodes do not move
    Region* region = nullptr;  // resolved once per command, not per work request
    Peer* peer = nullptr;      // the current run's (or the pages') peer
    uint32_t peer_id = UINT32_MAX;
    WrCursor at;
  };
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
  struct Watch {
    volatile uint64_t* word;
    uint64_t last;
    bool quiet = false;  // no change events for JS: only its triggers read it
  };
  // A triggered write. `hold`: the watch value means "work that reads or writes memory of this
  // operation is done" (the same-host lane: a GPU stream stores it after its copies). A cancel
  // then drops what would be posted but settles the operation only once the value is reached, so
  // no operation settles while a copy of it is still running.
  struct Trigger {
    uint32_t watch;
    uint64_t at;
    std::unique_ptr<WriteCmd> w;
    bool hold = false;
    Code cancelled = Code::Ok;
  };
  std::vector<Trigger> triggers_;
  size_t held_ = 0;        // triggers with hold: while any is armed the worker polls without sleeping
  size_t loud_watches_ = 0;  // watches that report changes to JS
  struct PendingSend {
    OpId op;
    uint32_t peer;
    std::vector<uint8_t> data;
    uint8_t lane = 0;
  };

  // -------------------------------------------------------------------------------- setup
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

  // -------------------------------------------------------------------------------- worker
  void run() {
    using clock = std::chrono::steady_clock;
    auto last_active = clock::now();
    auto last_deadline_check = clock::now();
    std::vector<Cmd> batch;
    while (!stopping_.load(std::memory_order_relaxed)) {
      heartbeat_.fetch_add(1, std::memory_order_relaxed);
      bool active = false;
      auto now = clock::now();
      if (opts_.max_sleep_us && idle() && now - last_active > std::chrono::microseconds(opts_.idle_spin_us)) {
        wait_idle();
        now = clock::now();
      }
      // The lock is taken only when JS pushed something: a spinning worker stays off it.
      if (cmds_pending_.load(std::memory_order_acquire)) {
        std::lock_guard<std::mutex> g(cmd_mu_);
        batch.swap(cmds_);
        cmds_pending_.store(false, std::memory_order_relaxed);
      }
      for (auto& c : batch) {
        handle(c);
        active = true;
      }
      batch.clear();
      // After EAGAIN, retry posting only once a completion was reaped or a few polls passed: a
      // worker that hammers a full queue takes the lock its peer needs to drain it (shm).
      if (eagain_backoff_ == 0 || --eagain_backoff_ == 0) {
        if (pump()) active = true;
      }
      if (poll_all()) {
        active = true;
        eagain_backoff_ = 0;
      }
      if (!watches_.empty() && check_watches()) active = true;
      // A held trigger waits on a GPU stream, which rings no fd: poll it at full rate.
      if (held_) active = true;
      if (now - last_deadline_check > std::chrono::milliseconds(5)) {
        check_deadlines(now);
        last_deadline_check = now;
      }
      if (active) {
        last_active = now;
        sleep_us_ = kFirstSleepUs;
      }
      flush();

    }
    shutdown();
  }

  // -------------------------------------------------------------------------------- idling
  // With a wait fd on every domain (tcp), an idle worker blocks in epoll on the CQs and an eventfd
  // that push() rings: no CPU when idle, no added latency. Otherwise (shm, efa) it sleeps at most
  // max_sleep_us between polls.
  void setup_wait() {
#ifdef __linux__
    for (auto& d : domains_)
      if (d->wait_fd() < 0) return;
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epoll_fd_ < 0 || event_fd_ < 0) return;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = event_fd_;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &ev);
    for (auto& d : domains_) {
      ev.data.fd = d->wait_fd();
      epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, d->wait_fd(), &ev);
    }
    use_epoll_ = true;
#endif
  }

  void wake() {
#ifdef __linux__
    if (in_wait_.load(std::memory_order_seq_cst)) {
      uint64_t one = 1;
      ssize_t r = ::write(event_fd_, &one, sizeof one);
      (void)r;
    }
#endif
    cmd_cv_.notify_one();
  }

  void wait_idle() {
    std::unique_lock<std::mutex> g(cmd_mu_);
    if (!cmds_.empty() || stopping_.load()) return;
#ifdef __linux__
    if (use_epoll_ && loud_watches_ == 0 && held_ == 0) {
      in_wait_.store(true, std::memory_order_seq_cst);
      bool empty = cmds_.empty();
      g.unlock();
      bool can_block = empty;
      for (size_t i = 0; i < domains_.size(); i++) can_block = can_block && (lane_down(i) || domains_[i]->try_wait());
      if (can_block) {
        epoll_event evs[8];
        // Bounded so that deadlines are still checked.
        epoll_wait(epoll_fd_, evs, 8, 10);
        uint64_t drain;
        ssize_t r = ::read(event_fd_, &drain, sizeof drain);
        (void)r;
      }
      in_wait_.store(false, std::memory_order_seq_cst);
      return;
    }
#endif
    // Without a wait fd (shm, efa) incoming traffic is seen only by polling, and on shm the
    // sender's progress needs ours: sleep briefly at first, doubling while nothing happens, so a
    // short lull costs little latency and a long one little CPU.
    cmd_cv_.wait_for(g, std::chrono::microseconds(sleep_us_));
    sleep_us_ = std::min(sleep_us_ * 2, std::max<uint32_t>(opts_.max_sleep_us, kFirstSleepUs));
  }

  bool idle() const {
    if (!backlog_.empty() || !send_backlog_.empty()) return false;
    for (auto n : inflight_)
      if (n) return false;
    return true;
  }

  void shutdown() {
    // Drain what the providers will still tell us for a short while, then report the rest CLOSED.
    backlog_.clear();
    for (auto& p : send_backlog_) fail_op(p.op, Code::Closed, 0, -1, "the engine was closed with this operation pending");
    send_backlog_.clear();
    fail_triggers([](const Trigger&) { return true; }, Code::Closed, "the engine was closed with this operation pending");
    {
      // Port posts pushed after the worker's last batch: they settle too (JS ops are settled by
      // the JS side when close() returns).
      std::lock_guard<std::mutex> g(cmd_mu_);
      for (auto& c : cmds_)
        if (c.kind == CmdKind::Write && c.write && c.write->port) c.write->port->settle(Code::Closed, "the engine was closed with this operation pending");
      cmds_.clear();
    }
    for (auto& [id, st] : ops_) {
      if (!st.reported) report(id, st, Code::Closed, 0, -1, "the engine was closed with this operation pending");
    }
    ops_.clear();
    teardown_buffers();
    flush();
  }

  // -------------------------------------------------------------------------------- commands
  void handle(Cmd& c) {
    switch (c.kind) {
      case CmdKind::AddPeer: add_peer(c); break;
      case CmdKind::Register: reg(c); break;
      case CmdKind::Deregister: {
        auto it = regions_.find(c.id);
        if (it != regions_.end()) {
          for (size_t i = 0; i < it->second.mrs.size(); i++) domains_[i]->dereg(it->second.mrs[i]);
          regions_.erase(it);
        }
        break;
      }
      case CmdKind::Write: write(std::move(c.write)); break;
      case CmdKind::ArmWrite: arm(c.id, c.at, std::move(c.write), c.hold); break;
      case CmdKind::Send: send(c.id, c.peer, std::move(c.data), c.lane); break;
      case CmdKind::Cancel: cancel(c.id, c.code, c.hold); break;
      case CmdKind::FailNic: fail_lane(c.lane); break;
      case CmdKind::AddWatch:
        if (!watches_.count(c.id) && !c.quiet) loud_watches_++;
        watches_[c.id] = Watch{static_cast<volatile uint64_t*>(c.ptr), 0, c.quiet};
        break;
      case CmdKind::AddPort:
        for (size_t i = 0; i < c.port->imms.size(); i++) port_imms_[c.port->imms[i]] = PortCount{c.port, &c.port->counts[i]};
        break;
      case CmdKind::RemovePort:
        for (auto it = port_imms_.begin(); it != port_imms_.end();) {
          if (it->second.port == c.port) it = port_imms_.erase(it);
          else ++it;
        }
        break;
      case CmdKind::RemoveWatch: {
        auto it = watches_.find(c.id);
        if (it != watches_.end() && !it->second.quiet) loud_watches_--;
        if (it != watches_.end()) watches_.erase(it);
        fail_triggers([&](const Trigger& t) { return t.watch == c.id; }, Code::Aborted,
                      "the watcher was closed before it reached the trigger value");
        break;
      }
    }
  }

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
        push_event([&](Events& e) { e.regs.push_back(std::move(ev)); });
        return;
      }
      r.mrs.push_back(mr);
      ev.keys.push_back(RemoteKey{mr.raddr, mr.rkey});
    }
    regions_[c.id] = std::move(r);
    push_event([&](Events& e) { e.regs.push_back(std::move(ev)); });
  }

  void write(std::unique_ptr<WriteCmd> w) {
    OpState st;
    st.outstanding = w->total_wrs();
    st.deadline = deadline();
    st.port = w->port;
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
      report(op, st, st.code, 0, -1, st.message);
      return;
    }
    Gen g;
    g.st = &ops_.emplace(op, std::move(st)).first->second;
    if (w->region) g.region = &regions_.find(w->region)->second;
    g.cmd = std::shared_ptr<WriteCmd>(std::move(w));
    g.at = wr_first(*g.cmd);
    backlog_.push_back(std::move(g));
  }

  // A triggered write: posted by this thread, with no JS turn, the first time the watch word reads
  // at least `at` (at once if it already does).
  void arm(uint32_t watch, uint64_t at, std::unique_ptr<WriteCmd> w, bool hold) {
    auto it = watches_.find(watch);
    if (it == watches_.end()) {
      OpState st;
      report(w->op, st, Code::Aborted, 0, -1, "the watcher was closed before the write was armed");
      return;
    }
    uint64_t v = __atomic_load_n(it->second.word, __ATOMIC_ACQUIRE);
    if (v >= at) {
      write(std::move(w));
      return;
    }
    triggers_.push_back(Trigger{watch, at, std::move(w), hold, Code::Ok});
    if (hold) held_++;
  }

  // A trigger leaves the list: posted, settled cancelled, or failed.
  std::vector<Trigger>::iterator drop_trigger(std::vector<Trigger>::iterator t) {
    if (t->hold) held_--;
    return triggers_.erase(t);
  }

  template <typename Pred>
  void fail_triggers(Pred pred, Code code, const char* msg) {
    for (auto t = triggers_.begin(); t != triggers_.end();) {
      if (pred(*t)) {
        OpState st;
        report(t->w->op, st, code, 0, -1, msg);
        t = drop_trigger(t);
      } else {
        ++t;
      }
    }
  }

  void send(OpId op, uint32_t peer, std::vector<uint8_t> data, uint8_t lane) {
    OpState st;
    st.outstanding = 1;
    st.deadline = deadline();
    auto it = peers_.find(peer);
    if (it == peers_.end() || it->second.code != Code::Ok) {
      report(op, st, it == peers_.end() ? Code::Internal : it->second.code, 0, 0,
             it == peers_.end() ? "unknown peer id" : it->second.message);
      return;
    }
    if (data.size() > opts_.recv_bytes) {
      report(op, st, Code::InvalidArgument, 0, 0, "message larger than the engine's buffers");
      return;
    }
    if (lane >= it->second.handles.size()) {
      report(op, st, Code::InvalidArgument, 0, -1, "no NIC " + std::to_string(lane) + " to this peer");
      return;
    }
    ops_.emplace(op, std::move(st));
    send_backlog_.push_back(PendingSend{op, peer, std::move(data), lane});
  }

  // `force`: settle a held trigger now (its GPU work failed: the value will never come).
  void cancel(OpId op, Code why, bool force = false) {
    for (auto t = triggers_.begin(); t != triggers_.end(); ++t) {
      if (t->w->op != op) continue;
      if (t->hold && !force) {
        // Work of this operation is still running on the GPU: post nothing, settle when it is done.
        if (t->cancelled == Code::Ok) t->cancelled = why;
        return;
      }
      // Armed, never posted: nothing of it can touch memory.
      OpState st;
      report(op, st, why, 0, -1, "");
      drop_trigger(t);
      return;
    }
    auto it = ops_.find(op);
    if (it == ops_.end() || it->second.reported) return;
    OpState& st = it->second;
    // Work not yet posted is dropped: it can never touch memory.
    uint64_t dropped = 0;
    for (auto g = backlog_.begin(); g != backlog_.end();) {
      if (g->cmd->op == op) {
        dropped += wr_remaining(*g->cmd, g->at);
        g = backlog_.erase(g);
      } else {
        ++g;
      }
    }
    for (auto s = send_backlog_.begin(); s != send_backlog_.end();) {
      if (s->op == op) {
        dropped++;
        s = send_backlog_.erase(s);
      } else {
        ++s;
      }
    }
    st.outstanding -= dropped;
    st.cancel = why;
    if (st.outstanding == 0) {
      report(op, st, why, 0, -1, "");
      ops_.erase(it);
    } else if (why == Code::Timeout) {
      // The request's own deadline: it settles now. What is posted stays posted (its source may
      // still be read) until the provider lets go; JS keeps the op's regions and its place in the
      // peer's in-flight count until then (`released`).
      report(op, st, why, 0, -1,
             std::to_string(st.posted_open) +
                 " work request(s) were still posted: the provider may still read the source and write the target "
                 "until they complete (await engine.quiesce(peer) before reusing the source)",
             true);
    }
    // An abort settles with `why` when its posted work completes (or at the engine deadline): only
    // then is the source certainly no longer read.
  }

  // -------------------------------------------------------------------------------- torn-down NICs
  // Fault injection with the real thing: the domain's endpoint and CQ are closed (the provider
  // forgets what was posted), every work request still posted on it fails with NIC_FAILED — its
  // fate at the target unknown, as when a NIC dies — and later posts on it fail at once.
  bool lane_down(size_t lane) const { return lane < down_.size() && down_[lane]; }
  std::string down_message(size_t lane) const { return "NIC " + std::to_string(lane) + " was torn down"; }

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


  std::chrono::steady_clock::time_point deadline() const {
    if (!opts_.op_timeout_ms) return std::chrono::steady_clock::time_point::max();
    return std::chrono::steady_clock::now() + std::chrono::milliseconds(opts_.op_timeout_ms);
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
    blocked_.clear();
    for (auto it = backlog_.begin(); it != backlog_.end();) {
      Gen& g = *it;
      WriteCmd& w = *g.cmd;
      WriteWr wr;
      const WrShape s = wr_shape(w, g.at);
      const uint8_t lane = s.lane;
      const uint32_t peer = s.peer;
      if (inflight_[lane] >= max_inflight(lane)) break;
      if (std::find(blocked_.begin(), blocked_.end(), peer) != blocked_.end()) {
        ++it;
        continue;
      }
      if (g.peer_id != peer) {
        g.peer = &peers_.find(peer)->second;
        g.peer_id = peer;
      }
      Peer& pr = *g.peer;
      if (pr.inflight[lane] >= peer_window(lane)) {
        // Its window is full: later work to it waits; other peers' work goes on.
        blocked_.push_back(peer);
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
      int rc = lane_down(lane) ? -ENETDOWN : domains_[lane]->post_write(wr);
      if (rc == -EAGAIN) {
        ctx_free(c);
        eagain_backoff_ = 16;
        blocked_.push_back(peer);  // poll, then continue where this peer stopped
        ++it;
        continue;
      }
      any = true;
      if (rc) {
        ctx_free(c);
        if (rc == -ENETDOWN) wr_failed(w.op, lane, Code::NicFailed, ENETDOWN, down_message(lane));
        else wr_failed(w.op, lane, domains_[lane]->classify(-rc), -rc, domains_[lane]->strerror(rc));
      } else {
        inflight_[lane]++;
        pr.inflight[lane]++;
        c->peer = peer;
        g.st->posted_open++;
        c->live = true;
      }
      if (!wr_next(w, g.at)) continue;
      it = it == backlog_.begin() ? (backlog_.pop_front(), backlog_.begin()) : backlog_.erase(it);
    }
    while (!send_backlog_.empty() && !free_sends_.empty() && inflight_[send_backlog_.front().lane] < max_inflight(0)) {
      PendingSend& s = send_backlog_.front();
      const uint8_t lane = s.lane;
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
        break;
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
        auto it = ops_.find(s.op);
        if (it != ops_.end()) it->second.posted_open++;
      }
      send_backlog_.pop_front();
    }
    if (any)
      for (auto& d : domains_) d->flush_posts();
    return any;
  }

  // Move a generator to its next work request; true when the command is exhausted.
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
      push_event([&](Events& e) {
        for (auto& [imm, count] : imm_batch_) e.imms.emplace_back(imm, count);
      });
      imm_batch_.clear();
    }
    return any;
  }

  void complete(size_t lane, Completion& c) {
    NicCounters& nc = nics_[lane];
    switch (c.kind) {
      case CompKind::RemoteWrite:
        if (c.code == Code::Ok && c.has_imm) {
          nc.imms_received.fetch_add(1, std::memory_order_relaxed);
          if (!port_imms_.empty()) {
            auto it = port_imms_.find(c.imm);
            if (it != port_imms_.end()) {
              it->second.count->fetch_add(1, std::memory_order_release);
              it->second.port->changed();
              return;
            }
          }
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
          push_event([&](Events& e) { e.recvs.push_back(std::move(msg)); });
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
            nc.write_ops.fetch_add(1, std::memory_order_relaxed);
            nc.bytes_written.fetch_add(ctx->len, std::memory_order_relaxed);
          }
          wr_done(ctx->op);
        } else {
          wr_failed(ctx->op, ctx->lane, c.code, c.err, c.message, true);
        }
        ctx_free(ctx);
        return;
      }
    }
  }

  void wr_done(OpId op) {
    auto it = ops_.find(op);
    if (it == ops_.end()) return;
    OpState& st = it->second;
    st.posted_open--;
    if (--st.outstanding) return;
    if (!st.reported) {
      Code code = st.cancel != Code::Ok ? st.cancel : st.code;
      report(op, st, code, st.err, st.nic, st.message);
    } else {
      let_go(op, st);
    }
    ops_.erase(it);
  }

  // A late completion: the op was reported at its deadline with this work posted; the provider has
  // let go of the last of it now.
  void let_go(OpId op, OpState& st) {
    if (!st.posted_at_report || st.port) return;
    push_event([&](Events& e) { e.released.push_back(static_cast<uint32_t>(op)); });
  }

  void wr_failed(OpId op, uint8_t lane, Code code, int err, const std::string& msg, bool was_posted = false) {
    nics_[lane].errors.fetch_add(1, std::memory_order_relaxed);
    auto it = ops_.find(op);
    if (it == ops_.end()) return;
    OpState& st = it->second;
    // The first failure names the operation's, except that a refused key outranks the connection
    // errors it causes on the operation's other work requests.
    bool refusal = code == Code::RemoteAccess && (st.code == Code::PeerLost || st.code == Code::ConnectionReset);
    if (st.code == Code::Ok || refusal) {
      st.code = code;
      st.err = err;
      st.nic = lane;
      st.message = msg;
    }
    if (was_posted) st.posted_open--;
    if (--st.outstanding) return;
    if (!st.reported) report(op, st, st.cancel != Code::Ok ? st.cancel : st.code, st.err, st.nic, st.message);
    else let_go(op, st);
    ops_.erase(it);
  }

  void fail_op(OpId op, Code code, int err, int nic, const std::string& msg) {
    auto it = ops_.find(op);
    if (it == ops_.end()) return;
    if (!it->second.reported) report(op, it->second, code, err, nic, msg);
  }

  void report(OpId op, OpState& st, Code code, int err, int nic, const std::string& msg, bool posted = false) {
    st.reported = true;
    st.posted_at_report = posted;
    if (st.port) {
      st.port->settle(code, msg);
      return;
    }
    push_event([&](Events& e) { e.ops.push_back(OpDone{static_cast<uint32_t>(op), code, err, nic, msg, posted}); });
  }

  // The engine's own deadline: a provider may return EAGAIN forever to a dead peer, or never
  // complete. Past it the op is reported TIMEOUT; its context stays until the provider lets go.
  void check_deadlines(std::chrono::steady_clock::time_point now) {
    for (auto& [id, st] : ops_) {
      if (st.reported && st.posted_at_report && now >= st.deadline) {
        // Settled early with work posted, and the provider still holds it at the engine deadline
        // (one that never completes): let JS release what it held, as for any op past the deadline.
        let_go(id, st);
        st.posted_at_report = false;
        continue;
      }
      if (st.reported || now < st.deadline) continue;
      OpId op = id;
      cancel_unposted(op, st);
      report(op, st, Code::Timeout, 0, -1,
             "the engine deadline (opTimeoutMs " + std::to_string(opts_.op_timeout_ms) + ") passed with " +
                 std::to_string(st.posted_open) + " work request(s) still posted",
             st.posted_open > 0);
    }
    for (auto it = ops_.begin(); it != ops_.end();) {
      if (it->second.reported && it->second.outstanding == 0) {
        let_go(it->first, it->second);
        it = ops_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void cancel_unposted(OpId op, OpState& st) {
    for (auto g = backlog_.begin(); g != backlog_.end();) {
      if (g->cmd->op == op) {
        st.outstanding -= wr_remaining(*g->cmd, g->at);
        g = backlog_.erase(g);
      } else {
        ++g;
      }
    }
  }

  bool check_watches() {
    bool any = false;
    for (auto& [id, w] : watches_) {
      uint64_t v = __atomic_load_n(w.word, __ATOMIC_ACQUIRE);
      if (v != w.last) {
        uint64_t prev = w.last;
        w.last = v;
        uint32_t wid = id;
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t seen = uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
        if (!w.quiet) push_event([&](Events& e) { e.watches.push_back(WatchChange{wid, v, prev, seen}); });
        any = true;
        // Triggered writes of this watch whose value is reached go out now, in arming order
        // (settled instead when they were cancelled while held).
        for (auto t = triggers_.begin(); t != triggers_.end();) {
          if (t->watch == wid && v >= t->at) {
            std::unique_ptr<WriteCmd> cmd = std::move(t->w);
            Code cancelled = t->cancelled;
            t = drop_trigger(t);
            if (cancelled != Code::Ok) {
              OpState st;
              report(cmd->op, st, cancelled, 0, -1, "");
            } else {
              write(std::move(cmd));
            }
          } else {
            ++t;
          }
        }
      }
    }
    return any;
  }

  // -------------------------------------------------------------------------------- events
  template <typename F>
  void push_event(F&& f) {
    std::lock_guard<std::mutex> g(ev_mu_);
    f(events_);
    events_dirty_ = true;
  }

  // One doorbell per batch: ring only when JS has drained everything rung before.
  void flush() {
    // Nothing new since the last flush: either JS already has a doorbell pending (its drain takes
    // everything queued until then) or there is nothing to deliver.
    if (!events_dirty_) return;
    if (opts_.doorbell_us) {
      auto now = std::chrono::steady_clock::now();
      if (now - last_ring_ < std::chrono::microseconds(opts_.doorbell_us)) return;  // stays dirty
      last_ring_ = now;
    }
    events_dirty_ = false;
    bool ring = false;
    {
      std::lock_guard<std::mutex> g(ev_mu_);
      if (!events_.empty() && !doorbell_.load(std::memory_order_acquire)) {
        doorbell_.store(true, std::memory_order_release);
        ring = true;
      }
    }
    if (ring) notify_();
  }

  std::vector<std::unique_ptr<Domain>> domains_;
  EngineOptions opts_;
  Notify notify_;
  std::vector<NicCounters> nics_;
  std::vector<uint32_t> inflight_;

  std::mutex cmd_mu_;
  std::condition_variable cmd_cv_;
  std::vector<Cmd> cmds_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> in_wait_{false};
  std::atomic<bool> cmds_pending_{false};
  std::atomic<uint64_t> heartbeat_{0};
  bool events_dirty_ = false;     // worker-only
  std::chrono::steady_clock::time_point last_ring_{};
  std::thread worker_;
  int epoll_fd_ = -1, event_fd_ = -1;
  bool use_epoll_ = false;

  std::mutex ev_mu_;
  Events events_;
  std::atomic<bool> doorbell_{false};

  // worker-only state
  std::unordered_map<OpId, OpState> ops_;
  std::unordered_map<uint32_t, Region> regions_;
  std::unordered_map<uint32_t, Peer> peers_;
  std::unordered_map<uint32_t, Watch> watches_;
  std::unordered_map<uint32_t, uint32_t> imm_batch_;
  struct PortCount {
    std::shared_ptr<PortState> port;
    std::atomic<uint64_t>* count;
  };
  std::unordered_map<uint32_t, PortCount> port_imms_;  // immediates a port owns (never sent to JS)
  std::mutex ports_mu_;
  std::vector<std::weak_ptr<PortState>> ports_;
  std::deque<Gen> backlog_;
  std::vector<uint32_t> blocked_;  // peers passed over in the current pump round
  std::deque<PendingSend> send_backlog_;
  std::vector<std::unique_ptr<RecvBuf>> recvs_;
  std::vector<bool> down_;  // lanes torn down (fail_lane)  // stable addresses: posted as contexts
  std::vector<SendBuf> sends_;
  std::vector<int32_t> free_sends_;
  std::vector<std::unique_ptr<WrCtx[]>> ctx_blocks_;
  WrCtx* free_ctx_ = nullptr;
  std::vector<Completion> comps_;
  uint32_t eagain_backoff_ = 0;
  static constexpr uint32_t kFirstSleepUs = 8;
  uint32_t sleep_us_ = kFirstSleepUs;
};

}  // namespace trellis
