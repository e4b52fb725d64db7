// Trellis native engine kit — the C table of a port (trellis_port_v1 of port.h) over PortState and
// the Engine: post a sub-range of a window, read counts, settlements, the first error, wait.
#pragma once

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>

#include "engine.hpp"
#include "port_state.hpp"

namespace trellis {

namespace port_abi {

inline int post(void* self, uint32_t window, uint64_t src, uint64_t dst, uint64_t len) {
  static std::atomic<uint64_t> next{0};
  auto* p = static_cast<PortState*>(self);
  std::unique_lock<std::mutex> g(p->mu);
  if (!p->engine) return TRELLIS_PORT_CLOSED;
  if (window >= p->windows.size()) return TRELLIS_PORT_NO_WINDOW;
  const PortState::Window& win = p->windows[window];
  if (len && (src > win.src_len || len > win.src_len - src || dst > win.dst_len || len > win.dst_len - dst))
    return TRELLIS_PORT_RANGE;
  WritePtr w(new WriteCmd());
  w->op = kPortOpBase + next.fetch_add(1, std::memory_order_relaxed);
  w->region = len ? win.tmpl.region : 0;
  w->has_imm = win.tmpl.has_imm;
  w->imm = win.tmpl.imm;
  w->runs.push_back(win.tmpl.runs[0]);
  Run& r = w->runs[0];
  r.src_off += src;
  r.dst_off += dst;
  r.len = len;
  r.zero = len == 0;
  w->port = p->self_ref.lock();
  w->port_window = window;
  Cmd c(CmdKind::Write);
  c.write = std::move(w);
  p->posted.fetch_add(1, std::memory_order_relaxed);
  // Under the port's lock: stop() nulls `engine` under it before stopping the worker, so this
  // command is either handled or settled CLOSED by the worker's shutdown.
  p->engine->push_any(std::move(c));
  return TRELLIS_PORT_OK;
}

inline uint64_t count(void* self, uint32_t slot) {
  auto* p = static_cast<PortState*>(self);
  return slot < p->imms.size() ? p->counts[slot].load(std::memory_order_acquire) : 0;
}

inline uint64_t settled(void* self, uint64_t* failed) {
  auto* p = static_cast<PortState*>(self);
  uint64_t n = p->settled.load(std::memory_order_acquire);
  if (failed) *failed = p->failed.load(std::memory_order_acquire);
  return n;
}

inline int error(void* self, char* buf, size_t n) {
  auto* p = static_cast<PortState*>(self);
  std::lock_guard<std::mutex> g(p->mu);
  if (p->error.empty()) return 0;
  if (buf && n) {
    size_t k = std::min(n - 1, p->error.size());
    std::memcpy(buf, p->error.data(), k);
    buf[k] = 0;
  }
  return static_cast<int>(p->error_window) + 1;
}

inline uint64_t wait(void* self, uint64_t seen, uint32_t timeout_us) {
  auto* p = static_cast<PortState*>(self);
  uint64_t now = p->seq.load(std::memory_order_acquire);
  if (now != seen) return now;
  {
    std::lock_guard<std::mutex> g(p->mu);
    if (!p->engine) return now;
  }
  p->waiters.fetch_add(1, std::memory_order_acq_rel);
  {
    std::unique_lock<std::mutex> g(p->wait_mu);
    p->wait_cv.wait_for(g, std::chrono::microseconds(timeout_us),
                        [&] { return p->seq.load(std::memory_order_acquire) != seen; });
  }
  p->waiters.fetch_sub(1, std::memory_order_acq_rel);
  return p->seq.load(std::memory_order_acquire);
}

}  // namespace port_abi

// A port with its C table filled in; `self_ref` keeps it alive while posts are in flight.
inline std::shared_ptr<PortState> make_port(std::vector<uint32_t> counted) {
  auto p = std::make_shared<PortState>(std::move(counted));
  p->self_ref = p;
  p->api.version = TRELLIS_PORT_VERSION;
  p->api.size = sizeof(trellis_port_v1);
  p->api.self = p.get();
  p->api.post = port_abi::post;
  p->api.count = port_abi::count;
  p->api.settled = port_abi::settled;
  p->api.error = port_abi::error;
  p->api.wait = port_abi::wait;
  return p;
}

}  // namespace trellis
