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

// Paged writes: page i goes src_off + src_pages[i]*src_stride → dst_off + dst_pages[i]*dst_stride on lane i % lanes.
struct Pages {
  uint32_t peer = 0;
  uint8_t lanes = 1;
  std::vector<uint32_t> src_pages, dst_pages;
  uint64_t src_stride = 0, dst_stride = 0, src_off = 0, dst_off = 0, page_bytes = 0;
  RemoteKey keys[4];
};

struct PortState;

// Operation ids: JavaScript's are below 2^32; a port's posts are numbered from kPortOpBase.
using OpId = uint64_t;
constexpr OpId kPortOpBase = OpId(1) << 40;

struct WriteCmd {
  OpId op = 0;
  uint32_t region = 0;  // 0: no source region (zero-byte runs only)
  bool has_imm = false;
  uint32_t imm = 0;
  std::vector<Run> runs;
  std::unique_ptr<Pages> pages;
  std::shared_ptr<PortState> port;  // posted through a port: settles there, not in JS
  uint64_t total_wrs() const {
    uint64_t n = pages ? pages->src_pages.size() : 0;
    for (auto& r : runs) n += r.shards;
    return n;
  }
};

enum class CmdKind : uint8_t { AddPeer, Register, Deregister, Write, ArmWrite, Send, Cancel, AddWatch, RemoveWatch, AddPort, RemovePort, FailNic,
                             WatchImm, CountImm };

struct Cmd {
  explicit Cmd(CmdKind k) : kind(k) {}
  CmdKind kind;
  uint32_t id = 0;  // peer id, region id, op id, watch id
  std::vector<std::vector<uint8_t>> addrs;  // AddPeer: one per NIC
  void* ptr = nullptr;                      // Register / AddWatch
  size_t len = 0;                           // Register: bytes; CountImm: arrivals
  int device = -1;                          // Register: a CUDA device (GPU memory), or -1 (host)
  bool remote = false;
  std::unique_ptr<WriteCmd> write;
  uint32_t peer = 0;                        // Send
  std::vector<uint8_t> data;
  Code code = Code::Ok;                     // Cancel: the reason
  uint64_t at = 0;                          // ArmWrite: post `write` once watch `id` reads >= at;
                                            // WatchImm / CountImm: the immediate value
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
};

}  // namespace trellis
