// Generated from packages/core/src/kit/format.ts by `pnpm run gen:format` (packages/core): do not
// edit. The engine kit's JS↔addon packing format: each struct is one record kind, kStride numbers
// long, with the index of each field.
#pragma once

#include <cstddef>
#include <cstdint>

namespace trellis::format {

// A completion's code word carries this bit when the op settled with work still posted.
constexpr uint32_t kPostedFlag = 0x100;

// Shards of a write are cut at multiples of this many bytes (SHARD_ALIGN of the contract).
constexpr uint64_t kShardAlign = 64;

// Uint32Array, events.ops: one record per settled operation (code = index into the addon's codeNames, plus POSTED_FLAG; nic = NIC index + 1, 0 for none).
struct Completion {
  static constexpr size_t kStride = 4;
  static constexpr size_t kId = 0;
  static constexpr size_t kCode = 1;
  static constexpr size_t kErrno = 2;
  static constexpr size_t kNic = 3;
};

// BigUint64Array, events.regs[].keys: one record per NIC of a new registration.
struct RegKey {
  static constexpr size_t kStride = 2;
  static constexpr size_t kAddr = 0;
  static constexpr size_t kKey = 1;
};

// Uint32Array, events.imms: immediates counted since the last batch, one record per distinct value.
struct Arrival {
  static constexpr size_t kStride = 2;
  static constexpr size_t kImm = 0;
  static constexpr size_t kCount = 1;
};

// Float64Array, write(): one record per run of a write (zero = 1 for an immediate-only run).
struct Run {
  static constexpr size_t kStride = 8;
  static constexpr size_t kPeer = 0;
  static constexpr size_t kLane0 = 1;
  static constexpr size_t kLanes = 2;
  static constexpr size_t kShards = 3;
  static constexpr size_t kSrcOff = 4;
  static constexpr size_t kDstOff = 5;
  static constexpr size_t kLen = 6;
  static constexpr size_t kZero = 7;
};

// Float64Array, writeBatch(): one record per write of the batch; its runs follow the previous writes' runs in the run and nicKeys arrays.
struct BatchWrite {
  static constexpr size_t kStride = 5;
  static constexpr size_t kOp = 0;
  static constexpr size_t kRegion = 1;
  static constexpr size_t kHasImm = 2;
  static constexpr size_t kImm = 3;
  static constexpr size_t kRuns = 4;
};

// BigUint64Array, write() and setPortWindows(): a destination's address and remote key on each of 4 NICs.
struct NicKeys {
  static constexpr size_t kStride = 8;
  static constexpr size_t kAddr0 = 0;
  static constexpr size_t kRkey0 = 1;
  static constexpr size_t kAddr1 = 2;
  static constexpr size_t kRkey1 = 3;
  static constexpr size_t kAddr2 = 4;
  static constexpr size_t kRkey2 = 5;
  static constexpr size_t kAddr3 = 6;
  static constexpr size_t kRkey3 = 7;
};

// Float64Array, stats(): one record per NIC.
struct NicStats {
  static constexpr size_t kStride = 8;
  static constexpr size_t kBytesWritten = 0;
  static constexpr size_t kWriteOps = 1;
  static constexpr size_t kBytesSent = 2;
  static constexpr size_t kSendOps = 3;
  static constexpr size_t kBytesReceived = 4;
  static constexpr size_t kRecvOps = 5;
  static constexpr size_t kImmsReceived = 6;
  static constexpr size_t kErrors = 7;
};

// Float64Array, setPortWindows(): one record per window of a port (its keys in a nicKeys record).
struct PortWindow {
  static constexpr size_t kStride = 10;
  static constexpr size_t kPeer = 0;
  static constexpr size_t kLane = 1;
  static constexpr size_t kLanes = 2;
  static constexpr size_t kRegion = 3;
  static constexpr size_t kSrcOff = 4;
  static constexpr size_t kSrcLen = 5;
  static constexpr size_t kDstOff = 6;
  static constexpr size_t kDstLen = 7;
  static constexpr size_t kHasImm = 8;
  static constexpr size_t kImm = 9;
};

// Float64Array, expandWrite() (tests): one record per work request a write expands into, in posting order (keyed = 0 for a zero-byte write into the peer's sink).
struct WrShape {
  static constexpr size_t kStride = 6;
  static constexpr size_t kPeer = 0;
  static constexpr size_t kLane = 1;
  static constexpr size_t kSrcOff = 2;
  static constexpr size_t kDstOff = 3;
  static constexpr size_t kLen = 4;
  static constexpr size_t kKeyed = 5;
};

// Float64Array, portStats(): one record, then one count per counted immediate (in openPort's order).
struct PortStats {
  static constexpr size_t kStride = 3;
  static constexpr size_t kPosted = 0;
  static constexpr size_t kSettled = 1;
  static constexpr size_t kFailed = 2;
};

}  // namespace trellis::format
