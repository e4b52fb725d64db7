// Trellis native engine kit — what crosses into and out of the engine: the commands JS pushes (a
// write's runs and pages, sends, registrations, cancels, watches), the events the worker reports
// (completions, registrations, immediate counts, messages, watch changes), counters and options.
// Plain data; no threads, no providers.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "domain.hpp"

namespace trellis {

// One destination run of a write request: `shards` work requests cut from [src_off, src_off+len)
// onto lanes lane0, lane0+1, ... (mod lanes). Single writes and scatter targets are runs; so are
// barrier members and immediates (zero = true: no bytes, the peer's sink as destination).
struct Run {
  uint32_t peer = 0;
  uint8_t lane0 = 0;
  uint8_t lanes = 1;
  uint32_t shards = 1;
  uint64_t src_off = 0;
  uint64_t dst_off = 0;
  uint64_t len = 0;
  bool zero = false;
  RemoteKey keys[4];
};

// A write's runs: one inline (a single write, an immediate: no allocation of their own), more in a
// vector. The part of std::vector's interface the kit uses.
class RunList {
 public:
  RunList() = default;
  RunList(const RunList&) = default;
  RunList& operator=(const RunList&) = default;
  // A moved-from list is empty (the defaults would leave its count with no runs behind it).
  RunList(RunList&& o) noexcept : one_(o.one_), more_(std::move(o.more_)), n_(o.n_) { o.clear_moved(); }
  RunList& operator=(RunList&& o) noexcept {
    one_ = o.one_;
    more_ = std::move(o.more_);
    n_ = o.n_;
    o.clear_moved();
    return *this;
  }

  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  Run* data() { return n_ <= 1 ? &one_ : more_.data(); }
  const Run* data() const { return n_ <= 1 ? &one_ : more_.data(); }
  Run& operator[](size_t i) { return data()[i]; }
  const Run& operator[](size_t i) const { return data()[i]; }
  Run* begin() { return data(); }
  Run* end() { return data() + n_; }
  const Run* begin() const { return data(); }
  const Run* end() const { return data() + n_; }
  // New runs are value-initialised, as std::vector's.
  void resize(size_t n) {
    if (n <= 1) {
      if (n == 1) one_ = n_ == 0 ? Run{} : (*this)[0];
      more_.clear();
    } else if (n_ <= 1) {
      more_.assign(n, Run{});
      if (n_ == 1) more_[0] = one_;
    } else {
      more_.resize(n);
    }
    n_ = n;
  }
  void push_back(const Run& r) {
    if (n_ == 0) {
      one_ = r;
    } else {
      if (n_ == 1) {
        more_.clear();
        more_.push_back(one_);
      }
      more_.push_back(r);
    }
    n_++;
  }
  // Give back the memory of more than `keep` runs (a reused command keeps no giant list alive).
  void shed(size_t keep) {
    if (more_.capacity() > keep && n_ <= 1) std::vector<Run>().swap(more_);
  }

 private:
  void clear_moved() {
    n_ = 0;
    more_.clear();
  }
  Run one_;
  std::vector<Run> more_;
  size_t n_ = 0;
};

// Paged writes: page i goes src_off + src_pages[i]*src_stride → dst_off + dst_pages[i]*dst_stride on lane i % lanes.
struct Pages {
  uint32_t peer = 0;
  uint8_t lanes = 1;
  std::vector<uint32_t> src_pages, dst_pages;
  uint64_t src_stride = 0, dst_stride = 0, src_off = 0, dst_off = 0, page_bytes = 0;
  RemoteKey keys[4];
};

struct PortState;

// Operation ids: JavaScript's are below 2^32; a port's posts are numbered from kPortOpBase; an
// operation JavaScript has let go of whose work the provider still holds is moved to an id from
// kLingerOpBase when a new operation takes its id (DomainGroup::make_room).
using OpId = uint64_t;
constexpr OpId kPortOpBase = OpId(1) << 40;
constexpr OpId kLingerOpBase = OpId(1) << 56;

struct WriteCmd;
class WriteRecycler;

// Deletes a WriteCmd — or, on its engine's worker thread, hands it back to the JS thread that took
// it from its WriteRecycler, for the next write (see there).
struct WriteCmdDelete {
  void operator()(WriteCmd* w) const;
};
using WritePtr = std::unique_ptr<WriteCmd, WriteCmdDelete>;

struct WriteCmd {
  WriteRecycler* home = nullptr;  // the recycler it came from (none: deleted when done)
  OpId op = 0;
  uint32_t region = 0;  // 0: no source region (zero-byte runs only)
  bool has_imm = false;
  uint32_t imm = 0;
  RunList runs;
  std::unique_ptr<Pages> pages;
  std::shared_ptr<PortState> port;  // posted through a port: settles there, not in JS
  uint32_t port_window = 0;         // the port's window it was posted on (named by port.h's error())
  // A member of a batch (writeBatch) of `group_size` writes, `group` != 0: its success is reported
  // quietly unless it is the batch's last to be reported (see OpTable::report).
  uint64_t group = 0;
  uint32_t group_size = 0;
  uint64_t total_wrs() const {
    uint64_t n = pages ? pages->src_pages.size() : 0;
    for (auto& r : runs) n += r.shards;
    return n;
  }
};

// A JS thread's write commands, reused: the JS thread takes one per write (a fresh one when none
// is spare) and the worker hands each back once it is done with it, through a ring one way and a
// ring back — no allocation per write on either thread, and no memory freed on one thread that
// the other allocated (glibc takes an arena lock for that). A command released on any other
// thread, or with the ring back full, is deleted.
class WriteRecycler {
 public:
  WriteRecycler() = default;
  WriteRecycler(const WriteRecycler&) = delete;
  WriteRecycler& operator=(const WriteRecycler&) = delete;
  ~WriteRecycler() {
    for (uint64_t i = head_.load(); i < tail_.load(); i++) delete spare_[i % kSpare];
  }

  // The JS thread: a command with no runs, pages or port, `home` this.
  WritePtr take() {
    const uint64_t h = head_.load(std::memory_order_relaxed);
    if (h != tail_seen_ || h != (tail_seen_ = tail_.load(std::memory_order_acquire))) {
      WriteCmd* w = spare_[h % kSpare];
      head_.store(h + 1, std::memory_order_release);
      return WritePtr(w);
    }
    WritePtr w(new WriteCmd());
    w->home = this;
    return w;
  }

  // The worker thread starts: commands released on it come back here.
  void bind_worker() { worker_home() = this; }

  // This thread runs the worker's turn for now (JS driving inline, see Worker::drive): commands
  // released on it come back to `r` until it is bound back to what this returns.
  static WriteRecycler* bind_thread(WriteRecycler* r) {
    WriteRecycler* was = worker_home();
    worker_home() = r;
    return was;
  }

  // Whether this thread is the worker of `r` (compares pointers only: `r` may be gone).
  static bool on_worker_of(const WriteRecycler* r) { return worker_home() == r; }

  // The worker thread of this recycler: keep `w` for take() if there is room; false: delete it.
  bool give_back(WriteCmd* w);

 private:
  static WriteRecycler*& worker_home() {
    static thread_local WriteRecycler* home = nullptr;
    return home;
  }
  static constexpr size_t kSpare = 1024;
  WriteCmd* spare_[kSpare] = {};
  alignas(64) std::atomic<uint64_t> tail_{0};  // the worker writes
  alignas(64) std::atomic<uint64_t> head_{0};  // the JS thread writes
  alignas(64) uint64_t tail_seen_ = 0;          // the JS thread's
  alignas(64) uint64_t head_seen_ = 0;          // the worker's
};

inline bool WriteRecycler::give_back(WriteCmd* w) {
  const uint64_t t = tail_.load(std::memory_order_relaxed);
  if (t - head_seen_ >= kSpare && t - (head_seen_ = head_.load(std::memory_order_acquire)) >= kSpare) return false;
  w->op = 0;
  w->region = 0;
  w->has_imm = false;
  w->imm = 0;
  w->group = 0;
  w->group_size = 0;
  w->runs.resize(0);
  w->runs.shed(64);
  w->pages.reset();
  w->port.reset();
  w->port_window = 0;
  spare_[t % kSpare] = w;
  tail_.store(t + 1, std::memory_order_release);
  return true;
}

inline void WriteCmdDelete::operator()(WriteCmd* w) const {
  if (w->home && WriteRecycler::on_worker_of(w->home) && w->home->give_back(w)) return;
  delete w;
}

enum class CmdKind : uint8_t { AddPeer, Register, Deregister, Write, ArmWrite, Send, Cancel, AddWatch, RemoveWatch, AddPort, RemovePort, FailNic,
                             WatchImm, CountImm, ShareImm, Stall };

struct Cmd {
  explicit Cmd(CmdKind k) : kind(k) {}
  CmdKind kind;
  uint32_t id = 0;  // peer id, region id, op id, watch id
  std::vector<std::vector<uint8_t>> addrs;  // AddPeer: one per NIC
  void* ptr = nullptr;                      // Register / AddWatch; ShareImm: the JS word
  size_t len = 0;                           // Register: bytes; CountImm: arrivals; Stall: ms
  int device = -1;                          // Register: a CUDA device (GPU memory), or -1 (host)
  bool remote = false;
  WritePtr write;
  uint32_t peer = 0;                        // Send
  std::vector<uint8_t> data;
  Code code = Code::Ok;                     // Cancel: the reason
  uint64_t at = 0;                          // ArmWrite: post `write` once watch `id` reads >= at;
                                            // WatchImm / CountImm / ShareImm: the immediate value
  bool hold = false;                        // ArmWrite: a cancel waits for the value (see Trigger);
                                            // Cancel: settle a held trigger at once
  bool quiet = false;                       // AddWatch: no change events for JS (the lane's signals)
  uint8_t lane = 0;                         // Send: the NIC; FailNic: the NIC torn down
  std::shared_ptr<PortState> port;          // AddPort / RemovePort
};

// Events for JS.
struct OpDone {
  uint32_t op;  // JavaScript's ids only: a port's posts settle into the port
  Code code;
  int err;
  int nic;
  std::string message;
  // Settled at its deadline with work requests still posted: the provider may still read the
  // source and write the target until `Events::released` names the op.
  bool posted = false;
};
struct RegDone {
  uint32_t region;
  Code code;
  std::string message;
  std::vector<RemoteKey> keys;  // per NIC
  // A deregistration's reply: every NIC has closed the region's registration (no key, code Ok).
  bool dereg = false;
};
struct WatchChange {
  uint32_t id;
  uint64_t value, prev;
  // When the worker saw the change: ns of CLOCK_MONOTONIC (the clock of Node's process.hrtime).
  uint64_t seen_ns;
};
struct Events {
  std::vector<OpDone> ops;
  std::vector<RegDone> regs;
  std::vector<std::pair<uint32_t, uint32_t>> imms;  // (imm, count): one entry per value per batch
  std::vector<std::vector<uint8_t>> recvs;
  std::vector<WatchChange> watches;
  // Operations reported with work still posted (OpDone::posted) whose work the provider has now let go.
  std::vector<uint32_t> released;
  bool empty() const {
    return ops.empty() && regs.empty() && imms.empty() && recvs.empty() && watches.empty() && released.empty();
  }
};

struct NicCounters {
  std::atomic<uint64_t> bytes_written{0}, write_ops{0}, bytes_sent{0}, send_ops{0}, bytes_received{0}, recv_ops{0},
      imms_received{0}, errors{0};
};

struct EngineOptions {
  int cpu = -1;                   // pin the worker to this CPU (-1: no pinning)
  uint32_t op_timeout_ms = 30000; // engine-owned deadline of every operation (0: none)
  uint32_t idle_spin_us = 1000;   // keep polling this long after the last activity
  uint32_t max_sleep_us = 1000;   // then sleep between polls, 8 µs doubling up to this (0: never sleep)
  uint32_t max_inflight = 0;      // per domain; 0: the provider's queue size
  uint32_t peer_window = 0;       // per peer and domain; 0: a quarter of max_inflight
  size_t recv_bytes = 64 * 1024 + 1024;
  uint32_t recv_count = 64;
  uint32_t send_buffers = 64;
  uint32_t doorbell_us = 0;       // ring JS at most once per this many µs (0: as soon as JS drained)
  uint32_t arrival_us = 1000;     // arrivals no JS waiter needs ring at most this late (0: at once)
  bool drive_inline = false;      // JS's polls (and its commands while it polls) run the worker's turn on its thread
};

}  // namespace trellis
