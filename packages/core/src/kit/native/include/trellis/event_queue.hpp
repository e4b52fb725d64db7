// Trellis native engine kit — the event queue to JS and its doorbell.
//
// The worker's parts push what happened (settled operations, registrations, immediate counts,
// messages, watch changes, released operations) into one Events batch; flush() rings JS once per
// batch, and JS takes the whole batch with drain(). Touches nothing but the batch, its lock and the
// notify callback: no domains, no operations.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <utility>

#include "commands.hpp"

namespace trellis {

class EventQueue {
 public:
  using Notify = std::function<void()>;

  // `notify` rings JS (any thread); `doorbell_us`: ring at most once per this many µs (0: as soon
  // as JS drained the last batch).
  EventQueue(Notify notify, uint32_t doorbell_us) : notify_(std::move(notify)), doorbell_us_(doorbell_us) {}

  // Worker: add to the batch under its lock (`f` gets the Events).
  template <typename F>
  void push(F&& f) {
    std::lock_guard<std::mutex> g(mu_);
    f(events_);
    dirty_ = true;
  }

  // Worker, once per loop turn. One doorbell per batch: ring only when JS has drained everything
  // rung before.
  void flush() {
    // Nothing new since the last flush: either JS already has a doorbell pending (its drain takes
    // everything queued until then) or there is nothing to deliver.
    if (!dirty_) return;
    if (doorbell_us_) {
      auto now = std::chrono::steady_clock::now();
      if (now - last_ring_ < std::chrono::microseconds(doorbell_us_)) return;  // stays dirty
      last_ring_ = now;
    }
    dirty_ = false;
    bool ring = false;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!events_.empty() && !doorbell_.load(std::memory_order_acquire)) {
        doorbell_.store(true, std::memory_order_release);
        ring = true;
      }
    }
    if (ring) notify_();
  }

  // JS thread: take everything that happened since the last drain.
  Events drain() {
    std::lock_guard<std::mutex> g(mu_);
    doorbell_.store(false, std::memory_order_release);
    Events out;
    std::swap(out, events_);
    return out;
  }

 private:
  Notify notify_;
  uint32_t doorbell_us_;
  bool dirty_ = false;  // worker-only
  std::chrono::steady_clock::time_point last_ring_{};

  std::mutex mu_;
  Events events_;
  std::atomic<bool> doorbell_{false};
};

}  // namespace trellis
