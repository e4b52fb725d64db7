// Trellis native engine kit — the engine: one worker thread over a DomainGroup of 1–4 domains.
//
//   JS thread ──push(Cmd)──► command ring ────► worker: expand requests into work requests (lazily),
//                                                post with back-pressure, poll every CQ, count
//                                                immediates, settle operations
//   JS thread ◄──one doorbell per batch── event queue ◄──┘
//
// The JS side has validated every request (EngineBase); the worker trusts its input and checks
// only what it cannot know earlier: provider limits and completion status.
//
// Engine is the composition; each part has its header:
//   worker.hpp        the thread, its command queue, idle policy and loop (Engine is its Body)
//   event_queue.hpp   the events for JS and their doorbell
//   domain_group.hpp  the domains: peers, registrations, buffers, the backlog, posting, polling
//   op_table.hpp      operations: counts, first errors, cancels, deadlines, reports
//   watches.hpp       watch words and triggered writes
// Engine itself routes each command to its part, orders cancels and shutdown across them, and keeps
// the ports (opened from the N-API side) so that stop() can close them first.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "commands.hpp"
#include "domain.hpp"
#include "domain_group.hpp"
#include "event_queue.hpp"
#include "op_table.hpp"
#include "port_state.hpp"
#include "watches.hpp"
#include "worker.hpp"

namespace trellis {

class Engine final : private Worker::Body {
 public:
  using Notify = EventQueue::Notify;

  Engine(std::vector<std::unique_ptr<Domain>> domains, EngineOptions opts, Notify notify)
      : events_(std::move(notify), opts.doorbell_us, std::min(EventQueue::kPollQuietUs, opts.idle_spin_us),
                opts.arrival_us),
        worker_(events_, opts),
        ops_(events_, opts.op_timeout_ms),
        group_(std::move(domains), opts, ops_, events_, worker_.stopping()),
        watches_(ops_, group_, events_) {}

  ~Engine() {
    stop();
    worker_.close_wait();
  }

  // Register the receive and send bounce buffers and start the worker. Returns "" or an error.
  std::string start() {
    std::string err = group_.setup_buffers();
    if (!err.empty()) return err;
    return worker_.start(*this, group_.wait_fds());
  }

  size_t nics() const { return group_.size(); }
  Domain& domain(size_t i) { return group_.domain(i); }
  NicCounters& counters(size_t i) { return group_.counters(i); }

  // The JS thread: a write command to fill and push (reused; see WriteRecycler).
  WritePtr take_write() { return writes_.take(); }

  // The JS thread's commands (the worker's ring), in order. Inline driving, while JS polls: handled
  // on this thread at once (Worker::drive), the worker not woken for them.
  void push(Cmd&& c) {
    if (!worker_.drives_inline()) return worker_.push_local(std::move(c));
    worker_.push_local(std::move(c), false);
    drive_or_wake();
  }
  void push_all(std::vector<Cmd>& cs) {
    if (!worker_.drives_inline()) return worker_.push_all_local(cs);
    if (cs.empty()) return;
    for (auto& c : cs) worker_.push_local(std::move(c), false);
    drive_or_wake();
  }
  // Another thread's (a port's poster): the locked queue.
  void push_any(Cmd&& c) { worker_.push(std::move(c)); }

  // JS thread: take everything that happened since the last drain.
  Events drain(bool rung = false) { return events_.drain(rung); }

  // JS thread, latency mode: is anything waiting to be drained? Marks JS as polling (no doorbell
  // is rung while it keeps polling).
  // Inline driving: the poll runs the worker's turn here first (Worker::drive).
  bool poll_ready() {
    events_.polled();
    if (worker_.drives_inline()) worker_.drive(*this, true);
    return events_.ready();
  }
  bool end_poll() { return events_.unpolled(); }

  // JS thread: its first waiter on `imm` needs `need` more arrivals (0: none waits); see EventQueue.
  void arm_imm(uint32_t imm, uint64_t need) { events_.arm(imm, need); }

  // Loop iterations of the worker so far: a watchdog on the JS side sees a worker stuck inside
  // the provider (a peer that died holding a shared-memory lock wedges shm's fi_writemsg).
  uint64_t heartbeat() const { return worker_.heartbeat(); }

  // Give up on a worker stuck inside the provider: it is detached, never joined. The caller must
  // then leak this Engine (the thread may still hold pointers into it).
  void abandon() {
    close_ports();
    worker_.abandon();
    events_.mute();
  }

  // Fault injection for tests: the worker spends `ms` in one command, as if stuck in the provider.
  void stall(uint32_t ms) {
    Cmd c(CmdKind::Stall);
    c.len = ms;
    push(std::move(c));
  }

  // Tear NIC `lane` down (fault injection; see DomainGroup::fail_lane).
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
    p->detached.store(true, std::memory_order_release);
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
  // With a `limit` (not negative), a worker that has not stopped by then is left behind as by
  // abandon() and false returned: the caller must then leak this Engine.
  bool stop(std::chrono::milliseconds limit = std::chrono::milliseconds(-1)) {
    close_ports();
    if (worker_.stop(limit)) return true;
    events_.mute();
    return false;
  }

 private:
  // Inline driving: what JS just pushed (unwoken) runs in a turn here, or the worker is woken for it.
  void drive_or_wake() {
    if (!worker_.drive(*this, false)) worker_.wake_js();
  }

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

  // -------------------------------------------------------------------------------- the worker's body
  void started() override { writes_.bind_worker(); }
  // JS runs a turn: the commands it releases come back to its recycler, as the worker's do.
  void enter() override { js_home_ = WriteRecycler::bind_thread(&writes_); }
  void leave() override { WriteRecycler::bind_thread(js_home_); }
  bool idle() const override { return group_.idle(); }
  bool may_block() const override { return !watches_.polled(); }
  bool try_wait() override { return group_.try_wait(); }

  // A command dropped unrun (stopping): a port's write settles CLOSED in its port (JS settles its own).
  static void drop(Cmd& c) {
    if ((c.kind == CmdKind::Write || c.kind == CmdKind::ArmWrite) && c.write && c.write->port)
      c.write->port->settle(Code::Closed, kClosedPending, c.write->port_window);
  }

  void handle(Cmd& c) override {
    if (worker_.stopping().load(std::memory_order_relaxed)) {
      // Stopping: nothing new is posted — what close() reports CLOSED never lands later (a worker
      // left behind in a long command would otherwise post the ones after it, close() long returned).
      switch (c.kind) {
        case CmdKind::Write:
        case CmdKind::ArmWrite:
        case CmdKind::Send:
        case CmdKind::Stall:
          return drop(c);
        default:
          break;
      }
    }
    switch (c.kind) {
      case CmdKind::AddPeer: group_.add_peer(c); break;
      case CmdKind::Register: group_.reg(c); break;
      case CmdKind::Deregister: group_.dereg(c.id); break;
      case CmdKind::Write:
        TRELLIS_TRACE_MARK('H');
        group_.write(std::move(c.write));
        break;
      case CmdKind::ArmWrite: watches_.arm(c.id, c.at, std::move(c.write), c.hold); break;
      case CmdKind::Send: group_.send(c.id, c.peer, std::move(c.data), c.lane); break;
      case CmdKind::Cancel: cancel(c.id, c.code, c.hold); break;
      case CmdKind::FailNic: group_.fail_lane(c.lane); break;
      case CmdKind::Stall: std::this_thread::sleep_for(std::chrono::milliseconds(c.len)); break;
      case CmdKind::AddWatch: watches_.add(c.id, c.ptr, c.quiet); break;
      case CmdKind::AddPort: group_.add_port(c.port); break;
      case CmdKind::RemovePort: group_.remove_port(c.port); break;
      case CmdKind::RemoveWatch: watches_.remove(c.id); break;
      case CmdKind::WatchImm: watches_.add(c.id, group_.imm_total(static_cast<uint32_t>(c.at)), true); break;
      case CmdKind::CountImm: group_.count_imm(static_cast<uint32_t>(c.at), c.len); break;
      case CmdKind::ShareImm: group_.share_imm(static_cast<uint32_t>(c.at), static_cast<uint32_t*>(c.ptr)); break;
    }
  }

  // `force`: settle a held trigger now (its GPU work failed: the value will never come).
  void cancel(OpId op, Code why, bool force) {
    // A batch member reported quietly (OpTable::join) is not pending here any more, but JS has yet
    // to take its record: its deadline passed, so that record rings now.
    events_.hurry();
    if (watches_.cancel(op, why, force)) return;
    ops_.cancel(op, why, [&] { return group_.drop_unposted(op); });
  }

  bool progress() override {
    bool active = group_.progress();
    if (!watches_.empty() && watches_.check()) active = true;
    // A held trigger waits on a GPU stream, which rings no fd: poll it at full rate.
    if (watches_.held()) active = true;
    return active;
  }

  void check_deadlines(std::chrono::steady_clock::time_point now) override {
    // Its work not yet posted goes, messages too: a message to a peer that never takes it (dead,
    // its connection never made) would otherwise be tried again on every turn for good.
    ops_.check_deadlines(now, [&](OpId op) { return group_.drop_unposted(op); });
  }

  void shutdown() override {
    // Drain what the providers will still tell us for a short while, then report the rest CLOSED.
    group_.drop_backlog();
    watches_.fail_all(Code::Closed, kClosedPending);
    // Port posts pushed after the worker's last batch: they settle too (JS ops are settled by
    // the JS side when close() returns).
    worker_.discard(drop);
    ops_.close_all();
    group_.teardown_buffers();
    events_.flush();
  }

  // First, so it outlives every command the other parts may still hold.
  WriteRecycler writes_;
  EventQueue events_;
  Worker worker_;
  OpTable ops_;
  DomainGroup group_;
  Watches watches_;
  std::mutex ports_mu_;
  std::vector<std::weak_ptr<PortState>> ports_;
  WriteRecycler* js_home_ = nullptr;  // JS's recycler binding outside a turn it drives
};

}  // namespace trellis
