// Trellis native engine kit — a port's shared state (port.h): windows, counts of the immediates it
// owns, settlements and the first error. Shared by the engine's worker, the N-API side and the
// consumer's thread; the C table over it is port_abi.hpp.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "commands.hpp"
#include "port.h"

namespace trellis {

class Engine;

// A port (port.h): native code of another addon posts sub-ranges of validated windows and reads
// counts of the immediates the port owns. Shared by the engine's worker (counts, settlements),
// the N-API side (open, windows, close) and the consumer's thread (post, count, wait).
struct PortState {
  struct Window {
    WriteCmd tmpl;  // one run: the window's start offsets; its len is the source range's length
    uint64_t src_len = 0, dst_len = 0;
  };
  trellis_port_v1 api{};
  std::mutex mu;              // engine, windows, error
  Engine* engine = nullptr;   // null once the port or the engine is closed
  // Set by close() on the JS thread before the worker hears of it: from then on its immediates go
  // to JS, even those the worker reads before it handles the removal.
  std::atomic<bool> detached{false};
  std::vector<Window> windows;
  std::vector<uint32_t> imms;  // counted values, by slot
  std::unique_ptr<std::atomic<uint64_t>[]> counts;
  std::atomic<uint64_t> posted{0}, settled{0}, failed{0}, seq{1};
  std::string error;  // "CODE: message" of the first failure
  uint32_t error_window = 0;  // the window that failure was posted on
  std::mutex wait_mu;
  std::condition_variable wait_cv;
  std::atomic<uint32_t> waiters{0};
  std::weak_ptr<PortState> self_ref;  // for posts to hold the port

  explicit PortState(std::vector<uint32_t> counted) : imms(std::move(counted)), counts(new std::atomic<uint64_t>[imms.size() ? imms.size() : 1]) {
    for (size_t i = 0; i < (imms.size() ? imms.size() : 1); i++) counts[i].store(0);
  }
  void changed() {
    seq.fetch_add(1, std::memory_order_acq_rel);
    if (waiters.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> g(wait_mu);
      wait_cv.notify_all();
    }
  }
  void settle(Code code, const std::string& msg, uint32_t window) {
    if (code != Code::Ok) {
      std::lock_guard<std::mutex> g(mu);
      if (error.empty()) {
        error = std::string(code_name(code)) + ": " + (msg.empty() ? "failed" : msg);
        error_window = window;
      }
      failed.fetch_add(1, std::memory_order_relaxed);
    }
    settled.fetch_add(1, std::memory_order_release);
    changed();
  }
};

}  // namespace trellis
