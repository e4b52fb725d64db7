// Trellis native engine kit — the worker's expansion of a write command into work requests, one at
// a time (a paged write of 10^5 pages never materialises). Pure functions over a WriteCmd.
#pragma once

#include <algorithm>
#include <cstdint>

#include "commands.hpp"
#include "format.hpp"

namespace trellis {

// Where a write command's expansion stands: shard `idx` of run `run`, or page `idx`.
struct WrCursor {
  size_t run = 0;
  uint64_t idx = 0;
  bool in_pages = false;
};

// One work request of a write command, before NIC resources are attached: the native half of the
// plan → work-request expansion. (The JS half is workRequests in validate.ts; backend-efa's
// test/expand.test.ts checks that the two agree on random plans, through expandWrite below.)
struct WrShape {
  uint32_t peer = 0;
  uint8_t lane = 0;
  uint64_t src_off = 0;  // from the source region's start
  uint64_t dst_off = 0;  // from the destination's address on the lane
  uint64_t len = 0;
  const RemoteKey* keys = nullptr;  // null: a zero-byte write into the peer's sink
};

inline WrShape wr_shape(const WriteCmd& w, const WrCursor& at) {
  WrShape s;
  if (!at.in_pages) {
    const Run& r = w.runs[at.run];
    s.lane = static_cast<uint8_t>((r.lane0 + at.idx) % r.lanes);
    s.peer = r.peer;
    if (!r.zero) {
      constexpr uint64_t a = format::kShardAlign;
      const uint64_t size = ((r.len + r.shards - 1) / r.shards + a - 1) / a * a;
      const uint64_t start = std::min(r.len, at.idx * size);
      s.len = std::min(r.len, start + size) - start;
      s.src_off = r.src_off + start;
      s.dst_off = r.dst_off + start;
      s.keys = r.keys;
    }
  } else {
    const Pages& p = *w.pages;
    s.lane = static_cast<uint8_t>(at.idx % p.lanes);
    s.peer = p.peer;
    s.len = p.page_bytes;
    s.src_off = p.src_off + p.src_pages[at.idx] * p.src_stride;
    s.dst_off = p.dst_off + p.dst_pages[at.idx] * p.dst_stride;
    s.keys = p.keys;
  }
  return s;
}

// The first work request of a command: its first run's, else its first page's.
inline WrCursor wr_first(const WriteCmd& w) {
  WrCursor c;
  c.in_pages = w.runs.empty();
  return c;
}

// Step to the next work request; true when the command has none left.
inline bool wr_next(const WriteCmd& w, WrCursor& c) {
  c.idx++;
  if (!c.in_pages) {
    if (c.idx < w.runs[c.run].shards) return false;
    c.idx = 0;
    if (++c.run < w.runs.size()) return false;
    if (!w.pages || w.pages->src_pages.empty()) return true;
    c.in_pages = true;
    return false;
  }
  return c.idx >= w.pages->src_pages.size();
}

// Work requests of the command from the cursor on, the cursor's own included.
inline uint64_t wr_remaining(const WriteCmd& w, const WrCursor& c) {
  uint64_t n = 0;
  if (!c.in_pages) {
    for (size_t r = c.run; r < w.runs.size(); r++) n += w.runs[r].shards;
    n -= c.idx;
    if (w.pages) n += w.pages->src_pages.size();
  } else if (w.pages) {
    n = w.pages->src_pages.size() - c.idx;
  }
  return n;
}

// Every work request of a command, in posting order (a command with none calls nothing).
template <typename F>
void for_each_wr(const WriteCmd& w, F&& f) {
  if (w.total_wrs() == 0) return;
  WrCursor c = wr_first(w);
  do f(wr_shape(w, c)); while (!wr_next(w, c));
}

}  // namespace trellis
