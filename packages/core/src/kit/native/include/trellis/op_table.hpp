// Trellis native engine kit — the op table: every operation the worker has accepted and not yet
// let go of, and how each settles.
//
// An operation counts its work requests (outstanding, posted and not completed), keeps its first
// error, its cancel reason and its deadline, and is reported exactly once: into its port, or to JS
// through the event queue — and, when it was reported with work still posted, released later. It
// touches the event queue and ports' settlements only; work not yet posted is dropped by the
// caller's callback (the domain group owns the backlog). Worker thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "commands.hpp"
#include "event_queue.hpp"
#include "port_state.hpp"

namespace trellis {

constexpr const char* kClosedPending = "the engine was closed with this operation pending";

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
  uint32_t port_window = 0;
  uint64_t group = 0;  // the batch it was posted in (see OpTable::join), until it is reported
};

class OpTable {
 public:
  OpTable(EventQueue& events, uint32_t op_timeout_ms) : events_(events), op_timeout_ms_(op_timeout_ms) {}

  // The engine deadline of an operation accepted now.
  std::chrono::steady_clock::time_point deadline() const {
    if (!op_timeout_ms_) return std::chrono::steady_clock::time_point::max();
    return std::chrono::steady_clock::now() + std::chrono::milliseconds(op_timeout_ms_);
  }

  // Enter an operation (an existing entry of that id stays: move it first, DomainGroup::make_room).
  // The state's address is stable: unordered_map nodes do not move.
  OpState& add(OpId op, OpState&& st) { return ops_.emplace(op, std::move(st)).first->second; }

  // An entry of this id: one JavaScript let go of at the engine deadline whose work the provider
  // still holds, when a new operation comes with its id (JavaScript's ids wrap after 2^32).
  const OpState* find(OpId op) const {
    auto it = ops_.find(op);
    return it == ops_.end() ? nullptr : &it->second;
  }

  // Move entry `from` to id `to`; its state keeps its address (the node is moved, not copied).
  void rename(OpId from, OpId to) {
    auto node = ops_.extract(from);
    if (node.empty()) return;
    node.key() = to;
    ops_.insert(std::move(node));
  }

  // A work request of `op` was posted (a send's; a write's generator holds its OpState).
  void wr_posted(OpId op) {
    auto it = ops_.find(op);
    if (it != ops_.end()) it->second.posted_open++;
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

  void wr_failed(OpId op, uint8_t lane, Code code, int err, const std::string& msg, bool was_posted) {
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

  // `st` is a member of batch `group` of `size` writes (0: of none). JS settles a batch's promise
  // when its last member settles, so the members' successes before the last are reported quietly:
  // they join the batch JS drains next without ringing for it (EventQueue::push_quiet) — a batch of
  // 32 small writes wakes the event loop about once instead of once per few completions. A failure
  // rings as before; the last member's report rings for all of them. Call before `st` is reported.
  void join(OpState& st, uint64_t group, uint32_t size) {
    if (!group || size < 2) return;
    groups_.try_emplace(group, size);
    st.group = group;
  }

  void report(OpId op, OpState& st, Code code, int err, int nic, const std::string& msg, bool posted = false) {
    st.reported = true;
    st.posted_at_report = posted;
    bool quiet = false;
    if (st.group) {
      auto g = groups_.find(st.group);
      if (g != groups_.end() && --g->second == 0) {
        groups_.erase(g);
      } else if (g != groups_.end()) {
        quiet = code == Code::Ok;
      }
      st.group = 0;
    }
    if (st.port) {
      st.port->settle(code, msg, st.port_window);
      return;
    }
    auto add = [&](Events& e) { e.ops.push_back(OpDone{static_cast<uint32_t>(op), code, err, nic, msg, posted}); };
    if (quiet) {
      events_.push_quiet(add);
    } else {
      events_.push(add);
    }
  }

  // An operation that never entered the table (an armed trigger): reported as is. `posted`: work
  // of it still runs (a held trigger's copy); `released(op)` follows when it is done.
  void report_unopened(OpId op, Code code, const std::string& msg, bool posted = false) {
    OpState st;
    report(op, st, code, 0, -1, msg, posted);
  }
  // An operation reported with work still running (report_unopened's `posted`) let go of it.
  void released(OpId op) {
    events_.push([&](Events& e) { e.released.push_back(static_cast<uint32_t>(op)); });
  }

  // JS cancels `op`. `drop_unposted()` removes its work not yet posted and returns how many work
  // requests that was; called only for an operation still pending.
  template <typename Drop>
  void cancel(OpId op, Code why, Drop&& drop_unposted) {
    auto it = ops_.find(op);
    if (it == ops_.end() || it->second.reported) return;
    OpState& st = it->second;
    // Work not yet posted is dropped: it can never touch memory.
    uint64_t dropped = drop_unposted();
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

  // The engine's own deadline: a provider may return EAGAIN forever to a dead peer, or never
  // complete. Past it the op is reported TIMEOUT; its context stays until the provider lets go.
  // `drop_unposted(op)` removes the op's writes not yet posted and returns how many work requests
  // that was.
  template <typename Drop>
  void check_deadlines(std::chrono::steady_clock::time_point now, Drop&& drop_unposted) {
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
      st.outstanding -= drop_unposted(op);
      report(op, st, Code::Timeout, 0, -1,
             "the engine deadline (opTimeoutMs " + std::to_string(op_timeout_ms_) + ") passed with " +
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

  // Shutdown: every operation not yet reported is reported CLOSED; the table empties.
  void close_all() {
    for (auto& [id, st] : ops_) {
      if (!st.reported) report(id, st, Code::Closed, 0, -1, kClosedPending);
    }
    ops_.clear();
    groups_.clear();
  }

 private:
  // A late completion: the op was reported at its deadline with this work posted; the provider has
  // let go of the last of it now.
  void let_go(OpId op, OpState& st) {
    if (!st.posted_at_report || st.port) return;
    events_.push([&](Events& e) { e.released.push_back(static_cast<uint32_t>(op)); });
  }

  EventQueue& events_;
  const uint32_t op_timeout_ms_;
  std::unordered_map<OpId, OpState> ops_;
  std::unordered_map<uint64_t, uint32_t> groups_;  // batch → its members not yet reported
};

}  // namespace trellis
