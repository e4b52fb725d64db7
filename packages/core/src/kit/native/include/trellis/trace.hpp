// Trellis native engine kit — an opt-in timeline of the engine's steps, for finding where the
// microseconds of a small operation go (docs/benchmarks.md). Compiled in only with
// `-DTRELLIS_TRACE=ON` (cmake; the addon then marks every step); otherwise each mark is nothing.
//
// Each mark is one record, a tag and the steady clock in ns (CLOCK_MONOTONIC: the same clock in
// every process of a host, so two processes' timelines merge). Records go to one process-wide
// buffer of 4 Mi records (64 MiB) through an atomic index; those past its end are dropped. At exit
// the buffer is written to $TRELLIS_TRACE_DIR/trace-<pid>.txt (or /tmp), one "tag ns" line each,
// for scripts/trace-timeline.mjs.
//
// Tags: S JS hands a write to the worker (the crossing's entry), H the worker takes it from its
// queue, P the provider accepted its post, C its completion was read, A an immediate arrived,
// D a poll from JS found a batch (latency mode, busy polling), E that batch's JS callback returned,
// R the worker rang the event loop's doorbell, L the event loop ran a ring (marked also for a ring
// that finds nothing: a poll took its batch), M that ring's delivery returned. The buffer is written
// at exit while worker threads may still mark: its last records may be torn.
#pragma once

#ifdef TRELLIS_TRACE
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace trellis::trace {

struct Rec {
  uint64_t ns;
  char tag;
};

constexpr size_t kCap = size_t(1) << 22;

inline std::atomic<size_t>& next() {
  static std::atomic<size_t> n{0};
  return n;
}

void dump();

inline Rec* buffer() {
  static Rec* b = [] {
    auto* p = static_cast<Rec*>(std::calloc(kCap, sizeof(Rec)));
    std::atexit(dump);
    return p;
  }();
  return b;
}

inline void dump() {
  Rec* b = buffer();
  const char* dir = std::getenv("TRELLIS_TRACE_DIR");
  char path[512];
  std::snprintf(path, sizeof path, "%s/trace-%d.txt", dir && *dir ? dir : "/tmp", static_cast<int>(getpid()));
  FILE* f = std::fopen(path, "w");
  if (!f) return;
  size_t n = next().load();
  if (n > kCap) n = kCap;
  for (size_t i = 0; i < n; i++)
    if (b[i].tag) std::fprintf(f, "%c %llu\n", b[i].tag, static_cast<unsigned long long>(b[i].ns));
  std::fclose(f);
}

inline void mark(char tag) {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  Rec* b = buffer();
  size_t i = next().fetch_add(1, std::memory_order_relaxed);
  if (i < kCap) b[i] = Rec{uint64_t(t.tv_sec) * 1000000000ull + uint64_t(t.tv_nsec), tag};
}

}  // namespace trellis::trace

#define TRELLIS_TRACE_MARK(tag) ::trellis::trace::mark(tag)
#else
#define TRELLIS_TRACE_MARK(tag) ((void)0)
#endif
