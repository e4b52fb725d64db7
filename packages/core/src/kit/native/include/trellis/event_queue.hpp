// Trellis native engine kit — the event queue to JS and its doorbell.
//
// The worker's parts push what happened (settled operations, registrations, immediate counts,
// messages, watch changes, released operations) into one Events batch; flush() rings JS once per
// batch, and JS takes the whole batch with drain(). Latency mode: JS may also poll (ready(), then
// drain() from its own loop); while it polls, no doorbell is rung (a ring would only wake an event
// loop that finds nothing), and the first flush after it stops polling rings for what is left.
//
// Immediate arrivals ring on demand. A target fed tens of thousands of immediates a second would
// otherwise wake its event loop for every batch the worker polls, and those wake-ups (and the lock
// they take against the worker's pushes) cost the target more CPU than the transfer. So an arrival
// batch rings at once only where JS waits for it — JS arms, per immediate value, how many more
// arrivals its first waiter needs (arm()) — and otherwise joins the batch quietly, rung at most
// `arrival_us` later or when the worker goes idle, whichever is first. So do the successes of a
// batch's writes other than the batch's last to settle (push_quiet; see OpTable::join): JS settles
// the batch when its last write does. Everything else (settled operations, registrations,
// messages, watch changes) rings as before.
//
// Touches nothing but the batch, its lock and the notify callback: no domains, no operations.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <iterator>
#include <mutex>
#include <unordered_map>
#include <thread>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "trace.hpp"

namespace trellis {

class EventQueue {
 public:
  using Notify = std::function<void()>;

  // `notify` rings JS (any thread); `doorbell_us`: ring at most once per this many µs (0: as soon
  // as JS drained the last batch).
  // `quiet_us`: after a poll from JS, ring no doorbell for this long.
  // `arrival_us`: arrivals no JS waiter needs ring at most this many µs late (0: at once, as
  // everything else).
  EventQueue(Notify notify, uint32_t doorbell_us, uint32_t quiet_us = kPollQuietUs, uint32_t arrival_us = 0)
      : notify_(std::move(notify)), doorbell_us_(doorbell_us), quiet_us_(quiet_us), arrival_us_(arrival_us) {}

  // Ring no doorbell while JS polls more often than this (capped at the worker's idle spin, so a
  // worker that goes idle right after has already rung).
  static constexpr uint32_t kPollQuietUs = 100;

  // Worker: JS asked to cancel an operation; if it was already reported quietly, its record is
  // made ready at this turn's flush and rung for (within doorbell_us, if set) rather than up to
  // arrival_us later (its deadline is JS's to keep).
  void hurry() { hurry_ = true; }

  // Worker: add to the batch (`f` gets the Events). Staged on the worker's side and handed over
  // under the lock once per loop turn, by flush(): a turn that settles many operations takes the
  // lock JS drains under once, not once per operation.
  template <typename F>
  void push(F&& f) {
    f(staged_);
    staged_dirty_ = true;
    staged_loud_ = true;
  }

  // Worker: add to the batch without ringing for it: it is taken with the next batch anything else
  // rings for, or rings at most arrival_us later (as quiet arrivals), when the worker goes idle, or
  // at a hurry(). Nor is it
  // marked ready before then: a JS loop spinning on poll() is not stopped for it either.
  template <typename F>
  void push_quiet(F&& f) {
    f(staged_);
    staged_dirty_ = true;
  }

  // Worker: one poll's immediate arrivals, (imm, count) per value. They ring at once where they
  // complete what an armed value needs (see arm()), else at most arrival_us later.
  //
  // `shared(imm)`: JS reads this value's arrivals from a word the worker stored before this call
  // (DomainGroup::share_imm), so its records tell JS nothing new: a batch of nothing else, needed
  // by no waiter, is not marked ready either — a JS loop spinning on poll() would otherwise stop
  // to take every such record (a callback into JS, about a µs) just as it sees the word. It is
  // taken with the next batch, or marked ready when it rings (at most arrival_us later).
  template <typename Shared>
  void push_arrivals(const std::unordered_map<uint32_t, uint32_t>& batch, Shared&& shared) {
    bool urgent = arrival_us_ == 0;
    bool visible = urgent;
    {
      std::lock_guard<std::mutex> g(mu_);
      for (const auto& [imm, count] : batch) {
        // One entry per value until JS drains (a quiet batch gathers many polls), a new one only
        // where a count would pass 2^32-1.
        Pending& p = pending_[imm];
        if (p.total && events_.imms[p.entry].second <= UINT32_MAX - count) {
          events_.imms[p.entry].second += count;
        } else {
          p.entry = events_.imms.size();
          events_.imms.emplace_back(imm, count);
        }
        p.total += count;
        if (!visible && !shared(imm)) visible = true;
        if (needs_.empty()) continue;
        auto it = needs_.find(imm);
        if (it == needs_.end()) continue;
        if (it->second <= count) {
          needs_.erase(it);
          urgent = visible = true;
        } else {
          it->second -= count;
        }
      }
      if (visible) ready_.store(true, std::memory_order_release);
    }
    if (urgent) {
      dirty_ = true;
    } else {
      ring_lazily();
    }
  }

  // JS thread: its first waiter on `imm` needs `need` more arrivals than JS has been given (0: none
  // waits). Arrivals already in the batch count; if they are enough, the doorbell rings now (even
  // while JS polls or within doorbell_us of the last ring: the arrivals were pushed quietly, and
  // nothing else would ring for them before arrival_us).
  void arm(uint32_t imm, uint64_t need) {
    bool ring = false;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (need == 0) {
        needs_.erase(imm);
      } else {
        auto p = pending_.find(imm);
        const uint64_t pending = p == pending_.end() ? 0 : p->second.total;
        if (pending >= need) {
          needs_.erase(imm);
          if (!doorbell_.load(std::memory_order_acquire)) {
            doorbell_.store(true, std::memory_order_release);
            ring = true;
          }
        } else {
          needs_[imm] = need - pending;
        }
      }
    }
    if (ring) call_notify();
  }

  // JS thread, latency mode: anything to drain? (No lock: one atomic load.)
  bool ready() const { return ready_.load(std::memory_order_acquire); }

  // JS thread, latency mode: JS is polling now; hold the doorbell for quiet_us.
  void polled() {
    last_poll_ns_.store(now_ns(), std::memory_order_relaxed);
  }

  // JS thread: JS stopped polling (pollUntil returned, busy polling stopped). The next flush rings
  // for what is left at once instead of quiet_us after the last poll: a completion that lands just
  // after the loop ended (its operation awaited next) costs one event-loop wake-up, not 100 µs.
  // Returns whether a flush held back a ring because JS was polling: JS takes that batch itself
  // now rather than sleep until the worker's next flush rings for it. (A flush racing this call
  // reads the stamp again after marking: see flush.)
  bool unpolled() {
    last_poll_ns_.store(0, std::memory_order_seq_cst);
    return held_.exchange(false, std::memory_order_seq_cst);
  }

  // Worker, once per loop turn (`idle`: before it blocks or sleeps, when quiet arrivals ring too).
  // One doorbell per batch: ring only when JS has drained everything rung before.
  void flush(bool idle = false) {
    if (staged_dirty_) publish();
    const bool hurry = hurry_;
    hurry_ = false;
    // Also while a ring is still owed (dirty_) because JS polls: its polls took what was ready,
    // and a quiet event published since must turn ready when due, or a JS loop that keeps polling
    // would never take it.
    if (lazy_ && (idle || hurry || std::chrono::steady_clock::now() >= lazy_due_)) {
      lazy_ = false;
      dirty_ = true;
      // Quiet events (shared values' arrivals, batch members) were not marked ready: a poll takes them now.
      ready_.store(true, std::memory_order_release);
    }
    // Nothing new since the last flush: either JS already has a doorbell pending (its drain takes
    // everything queued until then) or there is nothing to deliver.
    if (!dirty_) return;
    if (quiet_us_) {
      int64_t polled = last_poll_ns_.load(std::memory_order_seq_cst);
      if (polled && now_ns() - polled < int64_t(quiet_us_) * 1000) {
        // JS is polling: it takes the batch itself (stays dirty: rung once it stops). Marked held
        // under the lock, only while the batch is there: a drain clears the mark under it, so a
        // mark never outlives its batch to make endPoll take later, quiet arrivals early.
        {
          std::lock_guard<std::mutex> g(mu_);
          // (A batch not marked ready — shared values' quiet arrivals — is not one a poll takes.)
          if (!events_.empty() && ready_.load(std::memory_order_acquire)) held_.store(true, std::memory_order_seq_cst);
        }
        // Then the stamp again. JS stops polling by storing 0 and then reading held_ (unpolled()),
        // both sequentially consistent, as these two are: either JS saw the mark and takes the
        // batch, or this load sees the 0 and the ring goes ahead (a ring whose batch JS took
        // meanwhile finds nothing: see drain).
        if (last_poll_ns_.load(std::memory_order_seq_cst) != 0) return;
      }
    }
    if (doorbell_us_) {
      auto now = std::chrono::steady_clock::now();
      if (now - last_ring_ < std::chrono::microseconds(doorbell_us_)) return;  // stays dirty
      last_ring_ = now;
    }
    dirty_ = false;
    lazy_ = false;
    held_.store(false, std::memory_order_relaxed);
    bool ring = false;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!events_.empty() && !doorbell_.load(std::memory_order_acquire)) {
        doorbell_.store(true, std::memory_order_release);
        ring = true;
      }
    }
    if (ring) {
      TRELLIS_TRACE_MARK('R');
      call_notify();
    }
  }

  // JS thread: take everything that happened since the last drain. `rung`: for a ring, which
  // takes nothing once a poll drained the batch it rang for (a poll clears the doorbell): what
  // came since is left to its own ring, or to arrival_us if it rings for nothing (quiet arrivals).
  Events drain(bool rung = false) {
    std::lock_guard<std::mutex> g(mu_);
    if (rung && !doorbell_.load(std::memory_order_acquire)) return Events{};
    doorbell_.store(false, std::memory_order_release);
    ready_.store(false, std::memory_order_relaxed);
    held_.store(false, std::memory_order_relaxed);  // the batch a flush held back its ring for is taken
    Events out;
    std::swap(out, events_);
    pending_.clear();
    return out;
  }

  // The engine left its worker behind (stuck inside the provider): nothing calls notify any more,
  // and once this returns nothing is inside it (the JS side it reaches may then be freed).
  void mute() {
    muted_.store(true, std::memory_order_seq_cst);
    while (notifying_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  }

 private:
  // Ring JS (notify_) unless muted; mute() waits out a ring in progress.
  void call_notify() {
    notifying_.fetch_add(1, std::memory_order_seq_cst);
    if (!muted_.load(std::memory_order_seq_cst)) notify_();
    notifying_.fetch_sub(1, std::memory_order_release);
  }
  std::atomic<bool> muted_{false};
  std::atomic<uint32_t> notifying_{0};  // threads inside call_notify

  // Worker: what push() staged into the batch JS drains.
  void publish() {
    staged_dirty_ = false;
    const bool loud = staged_loud_;
    staged_loud_ = false;
    {
      std::lock_guard<std::mutex> g(mu_);
      append(events_.ops, staged_.ops);
      append(events_.regs, staged_.regs);
      append(events_.recvs, staged_.recvs);
      append(events_.watches, staged_.watches);
      append(events_.released, staged_.released);
      if (loud) ready_.store(true, std::memory_order_release);
    }
    if (loud) {
      dirty_ = true;
    } else {
      ring_lazily();
    }
  }

  // Worker: what is in the batch quietly rings within arrival_us (of the first such event).
  void ring_lazily() {
    if (lazy_) return;
    lazy_ = true;
    lazy_due_ = std::chrono::steady_clock::now() + std::chrono::microseconds(arrival_us_);
  }

  // Move `from`'s elements to the end of `to` and empty `from`.
  template <typename T>
  static void append(std::vector<T>& to, std::vector<T>& from) {
    if (from.empty()) return;
    if (to.empty()) {
      to.swap(from);
    } else {
      to.insert(to.end(), std::make_move_iterator(from.begin()), std::make_move_iterator(from.end()));
      from.clear();
    }
  }

  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  Notify notify_;
  uint32_t doorbell_us_;
  uint32_t quiet_us_;
  uint32_t arrival_us_;
  bool dirty_ = false;  // worker-only: the batch has something to ring for now
  Events staged_;              // worker-only: pushed since the last flush
  bool staged_dirty_ = false;  // worker-only
  bool staged_loud_ = false;   // worker-only: and something of it rings (push, not push_quiet)
  bool lazy_ = false;   // worker-only: and quiet events (arrivals, batch members), to ring for by lazy_due_
  std::chrono::steady_clock::time_point lazy_due_{};
  bool hurry_ = false;  // worker-only: ring for quiet events at the next flush (see hurry())
  std::chrono::steady_clock::time_point last_ring_{};

  std::mutex mu_;
  Events events_;
  std::atomic<bool> doorbell_{false};
  std::atomic<bool> ready_{false};         // events wait in the batch
  std::atomic<bool> held_{false};          // under mu_ when set: a flush held back its ring for the batch because JS polled
  std::atomic<int64_t> last_poll_ns_{0};   // steady clock of JS's last poll (0: never)
  std::unordered_map<uint32_t, uint64_t> needs_;  // under mu_: imm → arrivals its first JS waiter still needs
  struct Pending {
    size_t entry = 0;    // its entry in events_.imms
    uint64_t total = 0;  // arrivals of it in the batch
  };
  std::unordered_map<uint32_t, Pending> pending_;  // under mu_: the batch's arrivals by value
};

}  // namespace trellis
