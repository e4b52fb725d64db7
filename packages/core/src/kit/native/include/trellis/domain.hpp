// Trellis native engine kit — the one interface a backend implements.
//
// A Domain is one NIC: it registers memory, posts writes / sends / receives, and polls its
// completion queue. Everything else (worker thread, command queue, sharding across NICs, the
// operation table, immediate counting, batching completions to JS) is in the kit's engine.hpp and
// the headers it composes (worker, domain_group, op_table, watches, event_queue), written once for
// every backend.
//
// All Domain methods are called from the engine's worker thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace trellis {

// Stable error codes shared with TypeScript (packages/core/src/errors.ts). The order here is the
// wire order in completion events: keep it in sync with CODE_NAMES below.
enum class Code : uint8_t {
  Ok = 0,
  InvalidArgument,
  OutOfRange,
  InvalidDescriptor,
  PeerLost,
  NicFailed,
  Closed,
  Timeout,
  Aborted,
  MessageTruncated,
  RemoteAccess,
  ResourceExhausted,
  Unsupported,
  ProviderError,
  Internal,
  UnknownPeer,
  // The connection to a live peer was torn down by an earlier failure on it (a refused key): this
  // work was cut off with it; operations fail so until the connection is rebuilt. Not a sign that the peer is gone.
  ConnectionReset,
};

constexpr int kCodeCount = static_cast<int>(Code::ConnectionReset) + 1;

inline const char* code_name(Code c) {
  static const char* names[] = {"OK",          "INVALID_ARGUMENT", "OUT_OF_RANGE",      "INVALID_DESCRIPTOR",
                                "PEER_LOST",   "NIC_FAILED",       "CLOSED",            "TIMEOUT",
                                "ABORTED",     "MESSAGE_TRUNCATED", "REMOTE_ACCESS",    "RESOURCE_EXHAUSTED",
                                "UNSUPPORTED", "PROVIDER_ERROR",   "INTERNAL",          "UNKNOWN_PEER",
                                "CONNECTION_RESET"};
  return names[static_cast<int>(c)];
}

// A registration on one domain.
struct LocalMr {
  void* handle = nullptr;  // backend's own (fid_mr*, ibv_mr*)
  void* desc = nullptr;    // local descriptor to pass with posts (fi_mr_desc, lkey)
  uint64_t rkey = 0;       // remote key
  uint64_t raddr = 0;      // RMA address of byte 0 as peers must name it (VA or 0 for offset-based)
};

// Where a write lands: RMA address of the destination's byte 0 on this lane, and its key.
struct RemoteKey {
  uint64_t addr = 0;
  uint64_t key = 0;
};

// One work request as a domain posts it.
struct WriteWr {
  uint64_t peer = 0;        // the domain's handle for the peer (fi_addr_t, QP index)
  const void* src = nullptr;
  void* src_desc = nullptr;
  uint64_t len = 0;
  uint64_t raddr = 0;       // absolute RMA address at the target
  uint64_t rkey = 0;
  bool has_imm = false;
  uint32_t imm = 0;
  void* ctx = nullptr;      // returned in the completion
};

enum class CompKind : uint8_t { Write, Send, Recv, RemoteWrite };

struct Completion {
  CompKind kind = CompKind::Write;
  void* ctx = nullptr;      // the posting context (Write, Send, Recv)
  bool has_imm = false;
  uint32_t imm = 0;
  uint64_t len = 0;         // bytes received (Recv)
  Code code = Code::Ok;     // Ok, or the failure
  int err = 0;              // provider errno (positive)
  std::string message;      // provider message on failure
};

class Domain {
 public:
  virtual ~Domain() = default;
  // Provider name as users know it: "efa", "shm", "tcp;ofi_rxm", "verbs", "rc-model".
  virtual std::string provider() const = 0;
  // Data path of this domain: "host", "direct" (GPUDirect), "staged".
  virtual std::string path() const { return "host"; }
  // The device in words for stats ("mlx5_0 port 1, RoCE v2 GID 3, MTU 4096"); "" if nothing to add.
  virtual std::string describe() const { return ""; }
  // Bytes a peer needs to reach this domain (endpoint name plus anything else, e.g. a sink key).
  virtual std::vector<uint8_t> address() const = 0;
  // Register [ptr, ptr+len). Returns 0 or a negative errno; on failure `msg` says why.
  virtual int reg(void* ptr, size_t len, bool remote, LocalMr* out, std::string* msg) = 0;
  // Register CUDA device memory [ptr, ptr+len) on `device` directly (GPUDirect: FI_HMEM, dma-buf).
  // Only called when path() is "direct". A domain that registers GPU memory must count an
  // immediate that lands there only once its bytes are visible in that memory (see poll()).
  virtual int reg_device(void* ptr, size_t len, int device, bool remote, LocalMr* out, std::string* msg) {
    (void)ptr, (void)len, (void)device, (void)remote, (void)out;
    *msg = provider() + " cannot register GPU memory";
    return -95;  // EOPNOTSUPP
  }
  virtual void dereg(LocalMr& mr) = 0;
  // Resolve a peer's address bytes (as produced by its address()) to a handle for posts.
  virtual int add_peer(const uint8_t* addr, size_t len, uint64_t* handle, std::string* msg) = 0;
  // Where a zero-byte write with an immediate lands at `peer` (a small sink every domain exposes).
  virtual RemoteKey sink_of(const uint8_t* addr, size_t len) const = 0;
  // Post. Return 0, -EAGAIN (retry after polling), or another negative errno (the WR failed).
  virtual int post_write(const WriteWr& wr) = 0;
  virtual int post_send(uint64_t peer, const void* buf, size_t len, void* desc, void* ctx) = 0;
  virtual int post_recv(void* buf, size_t len, void* desc, void* ctx) = 0;
  // Called after each round of posts: a backend that chains work requests (one doorbell for many,
  // as verbs WR lists do) posts the chains here. A failure then is reported through poll().
  virtual void flush_posts() {}
  // Append up to `max` completions; return how many (0 when idle), negative on a fatal error.
  virtual int poll(std::vector<Completion>& out, int max) = 0;
  // Text for a negative return of a post.
  virtual std::string strerror(int err) const = 0;
  // Map a provider errno (positive) to a Code.
  virtual Code classify(int err) const = 0;
  // Largest message this domain sends in one go.
  virtual size_t max_msg_size() const = 0;
  // Work requests the provider queues per endpoint, across all its peers (0: unknown, or per peer
  // as on an RC queue pair). The engine keeps each peer's window below it, so that a peer that stops
  // completing cannot take the whole endpoint queue and stall the others inside the provider.
  virtual uint32_t queue_depth() const { return 0; }
  // A file descriptor that becomes readable when the CQ has work, or -1 if the provider has none
  // (then the engine polls with short sleeps when idle).
  virtual int wait_fd() const { return -1; }
  // Every file descriptor the engine blocks on for this domain: one per CQ (a domain whose
  // endpoints complete into several CQs lists each). A -1 among them: the engine polls instead.
  virtual std::vector<int> wait_fds() const { return {wait_fd()}; }
  // Called right before blocking on wait_fd(): false if the CQ must be polled first (fi_trywait).
  virtual bool try_wait() { return false; }
  // Fault injection: release the data path (endpoint, completion queue) as a dead NIC would lose
  // it. The engine posts and polls nothing on this domain afterwards; registrations stay valid to
  // deregister. Default: nothing to release.
  virtual void teardown() {}
};

}  // namespace trellis
