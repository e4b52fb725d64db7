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
#include <memory>
#include <unordered_map>
#include <vector>

#include "commands.hpp"
#include "domain_group.hpp"
#include "event_queue.hpp"
#include "op_table.hpp"

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
    if (!watches_.count(id) && !quiet) loud_watches_++;
    watches_[id] = Watch{static_cast<volatile uint64_t*>(word), 0, quiet};
  }

  // The watch goes, and its armed triggers fail ABORTED.
  void remove(uint32_t id) {
    auto it = watches_.find(id);
    if (it != watches_.end() && !it->second.quiet) loud_watches_--;
    if (it != watches_.end()) watches_.erase(it);
    fail_triggers([&](const Trigger& t) { return t.watch == id; }, Code::Aborted,
                  "the watcher was closed before it reached the trigger value");
  }

  // A triggered write: posted by this thread, with no JS turn, the first time the watch word reads
  // at least `at` (at once if it already does).
  void arm(uint32_t watch, uint64_t at, std::unique_ptr<WriteCmd> w, bool hold) {
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
    triggers_.push_back(Trigger{watch, at, std::move(w), hold, Code::Ok});
    if (hold) held_++;
  }

  // JS cancels `op`: false if no trigger is armed for it. `force`: settle a held trigger now (its
  // GPU work failed: the value will never come).
  bool cancel(OpId op, Code why, bool force) {
    for (auto t = triggers_.begin(); t != triggers_.end(); ++t) {
      if (t->w->op != op) continue;
      if (t->hold && !force) {
        // Work of this operation is still running on the GPU: post nothing, settle when it is done.
        if (t->cancelled == Code::Ok) t->cancelled = why;
        return true;
      }
      // Armed, never posted: nothing of it can touch memory.
      ops_.report_unopened(op, why, "");
      drop_trigger(t);
      return true;
    }
    return false;
  }

  // Shutdown: every armed trigger fails with `code`.
  void fail_all(Code code, const char* msg) {
    fail_triggers([](const Trigger&) { return true; }, code, msg);
  }

  // Read every watch word: report changes, post (or settle) the triggers reached. True if any changed.
  bool check() {
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
        if (!w.quiet) events_.push([&](Events& e) { e.watches.push_back(WatchChange{wid, v, prev, seen}); });
        any = true;
        // Triggered writes of this watch whose value is reached go out now, in arming order
        // (settled instead when they were cancelled while held).
        for (auto t = triggers_.begin(); t != triggers_.end();) {
          if (t->watch == wid && v >= t->at) {
            std::unique_ptr<WriteCmd> cmd = std::move(t->w);
            Code cancelled = t->cancelled;
            t = drop_trigger(t);
            if (cancelled != Code::Ok) {
              ops_.report_unopened(cmd->op, cancelled, "");
            } else {
              group_.write(std::move(cmd));
            }
          } else {
            ++t;
          }
        }
      }
    }
    return any;
  }

 private:
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

  // A trigger leaves the list: posted, settled cancelled, or failed.
  std::vector<Trigger>::iterator drop_trigger(std::vector<Trigger>::iterator t) {
    if (t->hold) held_--;
    return triggers_.erase(t);
  }

  template <typename Pred>
  void fail_triggers(Pred pred, Code code, const char* msg) {
    for (auto t = triggers_.begin(); t != triggers_.end();) {
      if (pred(*t)) {
        ops_.report_unopened(t->w->op, code, msg);
        t = drop_trigger(t);
      } else {
        ++t;
      }
    }
  }

  OpTable& ops_;
  DomainGroup& group_;
  EventQueue& events_;
  std::unordered_map<uint32_t, Watch> watches_;
  std::vector<Trigger> triggers_;
  size_t held_ = 0;          // triggers with hold: while any is armed the worker polls without sleeping
  size_t loud_watches_ = 0;  // watches that report changes to JS
};

}  // namespace trellis
