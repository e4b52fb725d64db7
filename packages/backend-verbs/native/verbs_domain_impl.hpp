// VerbsDomain's insides, shared by its two translation units: verbs_domain.cc (setup, memory,
// peers, posting, polling) and verbs_handshake.cc (the TCP handshake that connects QPs). Not a
// public header: nothing outside this addon includes it.
#pragma once

#include "verbs_domain.hpp"

#include "trellis/cuda_driver.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include "trellis/random.hpp"

namespace trellis_verbs {

using trellis::Code;
using trellis::Completion;
using trellis::CompKind;
using Clock = std::chrono::steady_clock;

namespace detail {
constexpr uint8_t kAddrVersion = 1;
constexpr size_t kAddrLen = 32;
constexpr uint32_t kMagic = 0x31485254;  // "TRH1"
constexpr uint8_t kReq = 1, kResp = 2, kErr = 3;
constexpr size_t kReqLen = 8 + kAddrLen + 12, kRespLen = 8 + 12;
constexpr uint64_t kImmRecv = 0;  // wr_id of the zero-byte receives for immediates

inline void put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline void put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline uint16_t get16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline std::string gid_str(const ibv_gid& g) {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(AF_INET6, g.raw, buf, sizeof buf);
  return buf;
}

inline bool ipv4_mapped(const ibv_gid& g) {
  static const uint8_t pre[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(g.raw, pre, 12) == 0;
}

inline Code classify_wc(ibv_wc_status s) {
  switch (s) {
    case IBV_WC_REM_ACCESS_ERR: return Code::RemoteAccess;
    // Flushed because an earlier work request on the queue pair failed: if the peer is gone, that
    // one says so (RETRY_EXC); after a refused key the pair is rebuilt on the next post.
    case IBV_WC_WR_FLUSH_ERR: return Code::ConnectionReset;
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RNR_RETRY_EXC_ERR:
    case IBV_WC_REM_ABORT_ERR:
    case IBV_WC_RESP_TIMEOUT_ERR: return Code::PeerLost;
    case IBV_WC_LOC_LEN_ERR:
    case IBV_WC_REM_INV_REQ_ERR: return Code::MessageTruncated;
    case IBV_WC_LOC_PROT_ERR:
    case IBV_WC_LOC_QP_OP_ERR: return Code::Internal;
    default: return Code::ProviderError;
  }
}

inline std::string wc_text(ibv_wc_status s) {
  switch (s) {
    case IBV_WC_REM_ACCESS_ERR: return "the peer refused the write: bad rkey, no remote-write access, or out of its region (IBV_WC_REM_ACCESS_ERR)";
    case IBV_WC_RETRY_EXC_ERR: return "no acknowledgement from the peer within timeout x (retry_cnt + 1): it is gone or unreachable (IBV_WC_RETRY_EXC_ERR)";
    case IBV_WC_RNR_RETRY_EXC_ERR: return "the peer had no receive posted for rnr_retry attempts (IBV_WC_RNR_RETRY_EXC_ERR)";
    case IBV_WC_WR_FLUSH_ERR: return "flushed: the queue pair went to the error state after an earlier failure on this connection (IBV_WC_WR_FLUSH_ERR)";
    case IBV_WC_REM_INV_REQ_ERR: return "the peer rejected the request: a message larger than its receive buffer (IBV_WC_REM_INV_REQ_ERR)";
    case IBV_WC_LOC_PROT_ERR: return "local protection error: a source buffer outside its registration (IBV_WC_LOC_PROT_ERR)";
    default: return std::string(ibv_wc_status_str(s));
  }
}
}  // namespace detail

struct VerbsDomain::QpRec {
  ibv_qp* qp = nullptr;
  size_t peer = 0;
  bool msg = false;
  bool retired = false;
  uint32_t outstanding = 0;  // posted or chained, not yet completed
  std::vector<ibv_send_wr> chain;
  std::vector<ibv_sge> sges;
};

struct Queued {
  bool send = false;
  trellis::WriteWr wr;
  const void* buf = nullptr;
  size_t len = 0;
  void* desc = nullptr;
  void* ctx = nullptr;
};

struct VerbsDomain::HsConn {
  int fd = -1;
  bool outgoing = false;
  size_t peer = 0;
  std::vector<uint8_t> in, out;
  size_t out_off = 0;
};

struct VerbsDomain::Peer {
  size_t index = 0;
  std::vector<uint8_t> addr;
  uint8_t link = 0, port = 1, mtu = 0;
  uint16_t lid = 0;
  uint32_t ip = 0;  // network order
  uint16_t hs_port = 0;
  ibv_gid gid{};
  QpRec* msg = nullptr;
  QpRec* wr = nullptr;
  enum State { Idle, Connecting, Connected } state = Idle;
  uint32_t rmsg = 0, rwr = 0, rpsn = 0;
  uint32_t psn = 0;
  std::deque<Queued> queued;
  HsConn* hs = nullptr;
  Clock::time_point hs_deadline{};
};

using namespace detail;

}  // namespace trellis_verbs
