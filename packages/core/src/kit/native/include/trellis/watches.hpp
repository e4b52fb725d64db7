// Trellis native engine kit — watches and triggered writes.
//
// A watch is a 64-bit word in JS (or GPU-written) memory that the worker reads every loop turn; a
// change is reported to JS (unless the watch is quiet). A triggered write is armed on a watch and
// posted by the worker, with no JS turn, once the word reaches its value. It touches the op table
// (to report triggers that never post), the domain group (to post the ones that do) and the event
// queue. Worker thread only.
#pragma once

#include <cstdint>
#include <ctime>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "commands.hpp"
#include "domain_group.hpp"
#include "event_queue.hpp"
#include "op_table.hpp"
#include "trace.hpp"

namespace trellis {

class Watches {
 public:
  Watches(OpTable& ops, DomainGroup& group, EventQueue& events) : ops_(ops), group_(group), events_(events) {}

  bool empty() const { return watches_.empty(); }
  // A trigger with hold is armed: it waits on a GPU stream, which rings no fd.
  bool held() const { return held_ != 0; }
  // Something here must be read by polling: a watch that reports to JS, or a held trigger.
  bool polled() const { return loud_watches_ != 0 || held_ != 0; }

  void add(uint32_t id, void* word, bool quiet) {
    auto it = watches_.find(id);
    if (it == watches_.end()) {
      if (!quiet) loud_watches_++;
      watches_.emplace(id, Watch{static_cast<volatile uint64_t*>(word), 0, quiet, {}});
      return;
    }
    if (it->second.quiet && !quiet) loud_watches_++;
    if (!it->second.quiet && quiet) loud_watches_--;
    it->second.word = static_cast<volatile uint64_t*>(word);
    it->second.quiet = quiet;
  }

  // The watch goes, and its armed triggers fail ABORTED.
  void remove(uint32_t id) {
    auto it = watches_.find(id);
    if (it == watches_.end()) return;
    if (!it->second.quiet) loud_watches_--;
    Triggers armed = std::move(it->second.triggers);
    watches_.erase(it);
    for (auto& [at, t] : armed) {
      (void)at;
      forget(t);
      settle(t, Code::Aborted, "the watcher was closed before it reached the trigger value");
    }
  }

  // A triggered write: posted by this thread, with no JS turn, the first time the watch word reads
  // at least `at` (at once if it already does).
  void arm(uint32_t watch, uint64_t at, WritePtr w, bool hold) {
    auto it = watches_.find(watch);
    if (it == watches_.end()) {
      ops_.report_unopened(w->op, Code::Aborted, "the watcher was closed before the write was armed");
      return;
    }
    uint64_t v = __atomic_load_n(it->second.word, __ATOMIC_ACQUIRE);
    if (v >= at) {
      group_.write(std::move(w));
      return;
    }
    OpId op = w->op;
    auto t = it->second.triggers.emplace(at, Trigger{std::move(w), hold, Code::Ok});
    by_op_[op] = Where{watch, t};
    if (hold) held_++;
  }

  // JS cancels `op`: false if no trigger is armed for it. `force`: settle a held trigger now (its
  // GPU work failed: the value will never come).
  bool cancel(OpId op, Code why, bool force) {
    auto f = by_op_.find(op);
    if (f == by_op_.end()) return false;
    Trigger& t = f->second.at->second;
    if (t.hold && !force) {
      // Work of this operation is still running (a GPU stream's copy, the copy thread's): post
      // nothing. An abort settles when it is done; the request's own deadline settles it now, as it
      // does a NIC write with work posted, and the op's regions stay JS's until the value comes
      // (`released`).
      if (t.cancelled == Code::Ok) {
        t.cancelled = why;
        if (why == Code::Timeout) {
          t.reported = true;
          ops_.report_unopened(op, why,
                               "the same-host lane's copy was still running: it may still read the source and write the "
                               "target until it is done (await engine.quiesce(peer) before reusing the source)",
                               true);
        }
      }
      return true;
    }
    // Armed, never posted (or its copy failed and will never signal): nothing of it touches memory.
    Where where = f->second;
    Trigger gone = std::move(t);
    forget(gone);
    watches_.at(where.watch).triggers.erase(where.at);
    settle(gone, why, "");
    return true;
  }

  // Shutdown: every armed trigger fails with `code`.
  void fail_all(Code code, const char* msg) {
    for (auto& [id, w] : watches_) {
      (void)id;
      Triggers armed = std::move(w.triggers);
      w.triggers.clear();
      for (auto& [at, t] : armed) {
        (void)at;
        forget(t);
        settle(t, code, msg);
      }
    }
  }

  // Read every watch word: report changes, post (or settle) the triggers reached. True if any
  // changed. Each watch's triggers are kept by value, so a change costs the triggers it reaches
  // (and a lookup), not a pass over every armed one: a responder may arm thousands ahead.
  bool check() {
    bool any = false;
    for (auto& [id, w] : watches_) {
      uint64_t v = __atomic_load_n(w.word, __ATOMIC_ACQUIRE);
      if (v == w.last) continue;
      uint64_t prev = w.last;
      w.last = v;
      uint32_t wid = id;
      if (!w.quiet) {
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t seen = uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
        events_.push([&](Events& e) { e.watches.push_back(WatchChange{wid, v, prev, seen}); });
      }
      any = true;
      // Triggered writes whose value is reached go out now, by value and then in arming order
      // (settled instead when they were cancelled while held).
      while (!w.triggers.empty() && w.triggers.begin()->first <= v) {
        auto t = w.triggers.begin();
        Trigger done = std::move(t->second);
        WritePtr cmd = std::move(done.w);
        if (done.hold) held_--;
        by_op_.erase(cmd->op);
        w.triggers.erase(t);
        if (done.cancelled != Code::Ok) {
          if (done.reported)
            ops_.released(cmd->op);  // settled at its deadline: its copy is done now
          else
            ops_.report_unopened(cmd->op, done.cancelled, "");
        } else {
          TRELLIS_TRACE_MARK('T');
          group_.write(std::move(cmd));
        }
      }
    }
    return any;
  }

 private:
  // A triggered write. `hold`: the watch value means "work that reads or writes memory of this
  // operation is done" (the same-host lane: a GPU stream stores it after its copies). A cancel
  // then drops what would be posted but settles the operation only once the value is reached, so
  // no operation settles while a copy of it is still running.
  struct Trigger {
    WritePtr w;
    bool hold = false;
    Code cancelled = Code::Ok;
    bool reported = false;  // settled (TIMEOUT) while held: JS keeps its regions until `released`
  };
  // By trigger value; equal values keep their arming order.
  using Triggers = std::multimap<uint64_t, Trigger>;
  struct Watch {
    volatile uint64_t* word;
    uint64_t last;
    bool quiet = false;  // no change events for JS: only its triggers read it
    Triggers triggers;
  };
  struct Where {
    uint32_t watch;
    Triggers::iterator at;
  };

  // A trigger leaves the books (its watch's list is the caller's to erase from).
  void forget(const Trigger& t) {
    if (t.hold) held_--;
    by_op_.erase(t.w->op);
  }
  // A trigger that will not post settles with `code` — or, already settled at its deadline, lets
  // JS release what it held.
  void settle(const Trigger& t, Code code, const char* msg) {
    if (t.reported)
      ops_.released(t.w->op);
    else
      ops_.report_unopened(t.w->op, code, msg);
  }

  OpTable& ops_;
  DomainGroup& group_;
  EventQueue& events_;
  std::unordered_map<uint32_t, Watch> watches_;
  std::unordered_map<OpId, Where> by_op_;  // each armed trigger, for cancel
  size_t held_ = 0;          // triggers with hold: while any is armed the worker polls without sleeping
  size_t loud_watches_ = 0;  // watches that report changes to JS
};

}  // namespace trellis
