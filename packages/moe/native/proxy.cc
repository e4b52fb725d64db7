// @trellis/moe native proxy: one thread per MoeAllToAll that runs the network side of every round
// — routes, private and overflow writes, combine writes, the closing barrier — through an engine
// port (trellis/port.h), with no JavaScript turn between steps.
//
// It starts a phase when a go word in host memory reaches the round number: JavaScript writes it
// (and kicks the thread) after packing on the CPU; a CUDA kernel writes it into mapped host memory
// after packing on the GPU, and the thread sees it by polling. It tells JavaScript once per phase
// (dispatch received; combine received and barrier closed) through a thread-safe function.
//
// Memory: the instance's region and staging are host memory (on the GPU path, page-locked memory
// mapped into the device), so the thread reads routes and copies this rank's own rows with memcpy.
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "trellis/port.h"

namespace {

using Clock = std::chrono::steady_clock;

// Config, in the order of the Float64Array JavaScript passes.
struct Config {
  uint32_t W, me, E, L, P;
  uint64_t row_stride, out_row;
  uint64_t routes, priv, overflow, combine;  // region offsets
  uint64_t rows_base, combine_base;          // staging offsets
  uint64_t rows_max;                         // maxTokensPerRank × topk
  uint32_t timeout_ms;
  uint32_t spin_us, max_sleep_us;
};
constexpr size_t kConfigFields = 17;

// Window kinds per peer: the JS side gives 5 windows for every rank but this one, in rank order.
enum Win : uint32_t { kRoute = 0, kPriv, kOverflow, kCombine, kBarrier, kWins };
// Counted immediates by slot.
enum Slot : uint32_t { kRouteImm = 0, kDispatchImm, kCombineImm, kBarrierImm };
// Words of the flags block (u64 each).
enum Flag : uint32_t { kDispatchGo = 0, kCombineGo = 1 };

struct Failure {
  std::string code, message;
};

class Proxy : public Napi::ObjectWrap<Proxy> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "MoeProxy",
                       {InstanceMethod("kick", &Proxy::Kick), InstanceMethod("close", &Proxy::Close),
                        InstanceMethod("rounds", &Proxy::Rounds), InstanceMethod("consumed", &Proxy::Consumed)});
  }

  // new MoeProxy(port: bigint, config: Float64Array, region: Uint8Array, staging: Uint8Array,
  //              flags: Uint8Array (≥ 16 bytes, 8-aligned), onEvent(kind, round, code?, message?),
  //              remote?: Uint8Array (W; 1 = reached through this proxy; absent: every peer))
  explicit Proxy(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Proxy>(info) {
    Napi::Env env = info.Env();
    bool lossless = true;
    port_ = reinterpret_cast<const trellis_port_v1*>(
        static_cast<uintptr_t>(info[0].As<Napi::BigInt>().Uint64Value(&lossless)));
    if (!port_ || port_->version != TRELLIS_PORT_VERSION || port_->size < sizeof(trellis_port_v1)) {
      Napi::Error::New(env, "MoeProxy: the engine port has another ABI version; rebuild @trellis/moe against this @trellis/core")
          .ThrowAsJavaScriptException();
      return;
    }
    Napi::Float64Array c = info[1].As<Napi::Float64Array>();
    if (c.ElementLength() != kConfigFields) {
      Napi::Error::New(env, "MoeProxy: config has the wrong length").ThrowAsJavaScriptException();
      return;
    }
    const double* v = c.Data();
    cfg_ = Config{uint32_t(v[0]),  uint32_t(v[1]),  uint32_t(v[2]),  uint32_t(v[3]),  uint32_t(v[4]),  uint64_t(v[5]),
                  uint64_t(v[6]),  uint64_t(v[7]),  uint64_t(v[8]),  uint64_t(v[9]),  uint64_t(v[10]), uint64_t(v[11]),
                  uint64_t(v[12]), uint64_t(v[13]), uint32_t(v[14]), uint32_t(v[15]), uint32_t(v[16])};
    Napi::Uint8Array region = info[2].As<Napi::Uint8Array>();
    Napi::Uint8Array staging = info[3].As<Napi::Uint8Array>();
    Napi::Uint8Array flags = info[4].As<Napi::Uint8Array>();
    region_ = region.Data();
    region_len_ = region.ByteLength();
    staging_ = staging.Data();
    staging_len_ = staging.ByteLength();
    if (flags.ByteLength() < 16 || reinterpret_cast<uintptr_t>(flags.Data()) % 8) {
      Napi::Error::New(env, "MoeProxy: flags must be at least 16 bytes, 8-byte aligned").ThrowAsJavaScriptException();
      return;
    }
    flags_ = reinterpret_cast<volatile uint64_t*>(flags.Data());
    // Keep the memory alive while the thread may touch it.
    refs_ = Napi::Persistent(Napi::Object::New(env));
    refs_.Set("region", region);
    refs_.Set("staging", staging);
    refs_.Set("flags", flags);
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[5].As<Napi::Function>(), "trellis-moe-proxy", 0, 1);
    counts_.assign(size_t(cfg_.W) * cfg_.E, 0);
    // Hybrid instances: peers of this node are reached over NVLink by kernels; the proxy serves
    // the others only, and this rank's own rows are not its business.
    if (info.Length() > 6 && info[6].IsTypedArray()) {
      Napi::Uint8Array r = info[6].As<Napi::Uint8Array>();
      remote_.assign(r.Data(), r.Data() + r.ByteLength());
      if (remote_.size() != cfg_.W) {
        Napi::Error::New(env, "MoeProxy: remote must hold one byte per rank").ThrowAsJavaScriptException();
        return;
      }
    }
    for (uint32_t d = 0; d < cfg_.W; d++)
      if (d != cfg_.me && Remote(d)) nremote_++;
    // Counts are cumulative over the port's life. This thread's rounds start after what earlier
    // threads of the instance consumed (info[7], from their consumed(); 0 for the first): never
    // from a snapshot of the counts, which would swallow a peer's first immediates if they arrived
    // before this connect. Every post of earlier threads has settled (each round ends waiting for
    // its own), so a snapshot of the settlements is exact.
    if (info.Length() > 7 && info[7].IsTypedArray()) {
      Napi::Float64Array b = info[7].As<Napi::Float64Array>();
      for (uint32_t s = 0; s < 4 && s < b.ElementLength(); s++) base_[s] = static_cast<uint64_t>(b[s]);
    }
    for (uint32_t s = 0; s < 4; s++) consumed_[s].store(base_[s]);
    base_settled_ = port_->settled(port_->self, nullptr);
    thread_ = std::thread([this] { Run(); });
#ifdef __linux__
    pthread_setname_np(thread_.native_handle(), "trellis-moe");
#endif
  }

  ~Proxy() override { Stop(); }

 private:
  // ------------------------------------------------------------------------------ JS calls
  Napi::Value Kick(const Napi::CallbackInfo& info) {
    {
      std::lock_guard<std::mutex> g(mu_);
      kicked_ = true;
    }
    cv_.notify_one();
    return info.Env().Undefined();
  }

  // close(): stop the thread (whatever round it is in) and wait for it. Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Stop();
    return info.Env().Undefined();
  }

  // rounds() → [dispatch rounds completed, combine rounds completed]
  // consumed() → Float64Array [routes, dispatch, combine, barrier]: arrivals this instance's rounds
  // have used so far (what the next thread after a new connect starts from).
  Napi::Value Consumed(const Napi::CallbackInfo& info) {
    Napi::Float64Array a = Napi::Float64Array::New(info.Env(), 4);
    for (uint32_t s = 0; s < 4; s++) a[s] = static_cast<double>(consumed_[s].load());
    return a;
  }

  Napi::Value Rounds(const Napi::CallbackInfo& info) {
    Napi::Array a = Napi::Array::New(info.Env(), 2);
    a.Set(0u, Napi::Number::New(info.Env(), double(dispatched_.load())));
    a.Set(1u, Napi::Number::New(info.Env(), double(combined_.load())));
    return a;
  }

  void Stop() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
      stop_seen_.store(true, std::memory_order_release);
    }
    cv_.notify_one();
    thread_.join();
    tsfn_.Release();
    refs_.Reset();
  }

  // ------------------------------------------------------------------------------ events
  void Emit(const char* kind, uint64_t round, Failure* f = nullptr) {
    struct Ev {
      std::string kind;
      double round;
      std::string code, message;
    };
    auto* ev = new Ev{kind, double(round), f ? f->code : "", f ? f->message : ""};
    napi_status st = tsfn_.NonBlockingCall(ev, [](Napi::Env env, Napi::Function cb, Ev* e) {
      if (e->code.empty())
        cb.Call({Napi::String::New(env, e->kind), Napi::Number::New(env, e->round)});
      else
        cb.Call({Napi::String::New(env, e->kind), Napi::Number::New(env, e->round), Napi::String::New(env, e->code),
                 Napi::String::New(env, e->message)});
      delete e;
    });
    if (st != napi_ok) delete ev;
  }

  // ------------------------------------------------------------------------------ waiting
  bool stopping() {
    std::lock_guard<std::mutex> g(mu_);
    return stop_;
  }

  // Wait for a go word to reach `round`: no deadline (the caller decides when a phase starts).
  // A kick (JavaScript launched the work that raises the word, or raised it itself) opens a hot
  // window: spin for spin_us, then sleep 8 µs doubling up to max_sleep_us. Outside hot windows
  // (20 ms after the last kick) sleeps grow to 1 ms, so an idle instance costs little CPU. A kick
  // ends a sleep at once. Returns false when stopping.
  bool WaitFlag(Flag f, uint64_t round) {
    auto kicked_at = Clock::now();
    uint32_t sleep_us = 8;
    for (;;) {
      if (__atomic_load_n(&flags_[f], __ATOMIC_ACQUIRE) >= round) return true;
      auto now = Clock::now();
      if (now - kicked_at < std::chrono::microseconds(cfg_.spin_us)) {
        // A close while spinning ends the spin at once (close joins this thread on the JS thread).
        if (stop_seen_.load(std::memory_order_acquire)) return false;
        std::this_thread::yield();
        continue;
      }
      std::unique_lock<std::mutex> g(mu_);
      if (stop_) return false;
      cv_.wait_for(g, std::chrono::microseconds(sleep_us), [&] { return stop_ || kicked_; });
      if (stop_) return false;
      if (kicked_) {
        kicked_ = false;
        kicked_at = Clock::now();
        sleep_us = 8;
        continue;
      }
      const bool hot = Clock::now() - kicked_at < std::chrono::milliseconds(20);
      sleep_us = std::min(sleep_us * 2, hot ? std::max<uint32_t>(cfg_.max_sleep_us, 8) : 1000u);
    }
  }

  // Wait for counted immediate `slot` to reach `n` (cumulative), with the phase deadline; false
  // with `fail` set on timeout, stop, or a failed post of this rank.
  bool WaitCount(Slot slot, uint64_t n, const char* what, Failure* fail) {
    auto deadline = Clock::now() + std::chrono::milliseconds(cfg_.timeout_ms);
    uint64_t seen = 0;
    for (;;) {
      if (PostFailed(fail)) return false;
      uint64_t have = port_->count(port_->self, slot) - base_[slot];
      if (have >= n) {
        consumed_[slot].store(base_[slot] + n);
        return true;
      }
      if (stopping()) {
        *fail = {"CLOSED", "the instance was closed during the round"};
        return false;
      }
      if (Clock::now() > deadline) {
        // This round's share of the cumulative counts: what earlier rounds took is not owed now.
        const uint64_t before = std::min(consumed_[slot].load() - base_[slot], std::min(have, n));
        *fail = {"TIMEOUT", std::string("timed out after ") + std::to_string(cfg_.timeout_ms) + " ms waiting for " + what +
                                " (" + std::to_string(have - before) + " of " + std::to_string(n - before) + " arrivals)"};
        return false;
      }
      seen = port_->wait(port_->self, seen, 1000);
    }
  }

  // Wait until every post of this rank settled (its source bytes may then be reused).
  bool WaitPosts(Failure* fail) {
    auto deadline = Clock::now() + std::chrono::milliseconds(cfg_.timeout_ms);
    uint64_t seen = 0;
    for (;;) {
      if (PostFailed(fail)) return false;
      if (port_->settled(port_->self, nullptr) - base_settled_ >= posted_) return true;
      if (Clock::now() > deadline) {
        *fail = {"TIMEOUT", "timed out waiting for this rank's writes to complete"};
        return false;
      }
      seen = port_->wait(port_->self, seen, 1000);
    }
  }

  bool PostFailed(Failure* fail) {
    uint64_t failed = 0;
    port_->settled(port_->self, &failed);
    if (!failed) return false;
    char buf[512];
    buf[0] = 0;
    // error() returns 1 + the window of the first failed post: windows go kWins per peer, in rank
    // order without this rank (Window()), so the rank written to is known.
    const int w = port_->error(port_->self, buf, sizeof buf);
    std::string to;
    if (w > 0) {
      const uint32_t i = uint32_t(w - 1) / kWins;
      to = " to rank " + std::to_string(i < cfg_.me ? i : i + 1);
    }
    std::string s(buf);
    auto colon = s.find(": ");
    *fail = {colon == std::string::npos ? "PROVIDER_ERROR" : s.substr(0, colon),
             "a write of the round" + to + " failed: " + (colon == std::string::npos ? s : s.substr(colon + 2))};
    return true;
  }

  // ------------------------------------------------------------------------------ posting
  uint32_t Window(uint32_t peer, Win w) const { return (peer < cfg_.me ? peer : peer - 1) * kWins + w; }

  bool Post(uint32_t peer, Win w, uint64_t src, uint64_t dst, uint64_t len, Failure* fail) {
    int rc = port_->post(port_->self, Window(peer, w), src, dst, len);
    if (rc == TRELLIS_PORT_OK) {
      posted_++;
      return true;
    }
    *fail = rc == TRELLIS_PORT_CLOSED ? Failure{"CLOSED", "the engine was closed"}
                                      : Failure{"INTERNAL", "a post outside its window (" + std::to_string(rc) + ")"};
    return false;
  }

  bool Remote(uint32_t d) const { return remote_.empty() || remote_[d] != 0; }
  bool Hybrid() const { return !remote_.empty(); }

  int32_t Count(uint32_t src, uint32_t expert) const { return counts_[size_t(src) * cfg_.E + expert]; }

  uint64_t RowsBetween(uint32_t src, uint32_t dst) const {
    uint64_t n = 0;
    for (uint32_t j = 0; j < cfg_.L; j++) n += uint64_t(Count(src, dst * cfg_.L + j));
    return n;
  }

  uint64_t OverflowAt(uint32_t src, uint32_t dst) const {
    uint64_t rows = 0;
    for (uint32_t s = 0; s < src; s++) {
      uint64_t r = RowsBetween(s, dst);
      rows += r > cfg_.P ? r - cfg_.P : 0;
    }
    return cfg_.overflow + rows * cfg_.row_stride;
  }

  // ------------------------------------------------------------------------------ the rounds
  void Run() {
    const Config& c = cfg_;
    uint64_t dispatch_expected = 0;  // cumulative dispatch immediates
    for (uint64_t round = 1;; round++) {
      Failure fail;
      if (!WaitFlag(kDispatchGo, round)) return;
      if (!Dispatch(round, &dispatch_expected, &fail)) return Fatal(round, &fail);
      dispatched_.store(round);
      Emit("dispatch", round);
      if (!WaitFlag(kCombineGo, round)) return;
      if (!Combine(round, &fail)) return Fatal(round, &fail);
      combined_.store(round);
      Emit("combine", round);
      (void)c;
    }
  }

  void Fatal(uint64_t round, Failure* f) {
    if (f->code == "CLOSED" && stopping()) return;  // closed on purpose: JS settles its waits
    Emit("error", round, f);
  }

  // Counts are laid out into buffers sized from the config: checked before any offset is used.
  bool CheckRoutes(uint32_t s, Failure* fail) {
    const Config& c = cfg_;
    uint64_t total = 0;
    for (uint32_t e = 0; e < c.E; e++) {
      int32_t n = Count(s, e);
      if (n < 0) {
        *fail = {"DECODE_ERROR", "rank " + std::to_string(s) + " sent routes that do not fit this config (expert " +
                                     std::to_string(e) + ": " + std::to_string(n) + " rows); every rank must run the same config"};
        return false;
      }
      total += uint64_t(n);
    }
    if (total > c.rows_max) {
      *fail = {"DECODE_ERROR", "rank " + std::to_string(s) + " sent routes that do not fit this config (" + std::to_string(total) +
                                   " rows in all, more than maxTokensPerRank × topk = " + std::to_string(c.rows_max) +
                                   "); every rank must run the same config"};
      return false;
    }
    return true;
  }

  bool Dispatch(uint64_t round, uint64_t* expected, Failure* fail) {
    const Config& c = cfg_;
    const uint64_t route_bytes = uint64_t(c.E) * 4;
    // My counts per expert (staging byte 0), written by the packer before the go word.
    std::memcpy(&counts_[size_t(c.me) * c.E], staging_, route_bytes);
    if (!CheckRoutes(c.me, fail)) return false;
    // Where each peer's rows start in staging: streams in rank order, rows of (expert, token, k).
    std::vector<uint64_t> pack_at(c.W);
    uint64_t at = c.rows_base;
    for (uint32_t d = 0; d < c.W; d++) {
      pack_at[d] = at;
      at += RowsBetween(c.me, d) * c.row_stride;
    }
    for (uint32_t d = 0; d < c.W; d++) {
      uint64_t rows = RowsBetween(c.me, d);
      uint64_t priv = std::min<uint64_t>(rows, c.P) * c.row_stride;
      if (d == c.me ? Hybrid() : !Remote(d)) continue;
      if (d == c.me) {
        std::memcpy(region_ + c.routes + uint64_t(c.me) * route_bytes, staging_, route_bytes);
        std::memcpy(region_ + c.priv + uint64_t(c.me) * c.P * c.row_stride, staging_ + pack_at[d], priv);
        continue;
      }
      if (!Post(d, kRoute, 0, 0, route_bytes, fail)) return false;
      if (!Post(d, kPriv, pack_at[d] - c.rows_base, 0, priv, fail)) return false;
    }
    if (!WaitCount(kRouteImm, round * nremote_, "every peer's routes", fail)) return false;
    for (uint32_t s = 0; s < c.W; s++) {
      if (s == c.me || !Remote(s)) continue;
      std::memcpy(&counts_[size_t(s) * c.E], region_ + c.routes + uint64_t(s) * route_bytes, route_bytes);
      if (!CheckRoutes(s, fail)) return false;
    }
    // Overflow: every rank computes the same offsets from the same routes.
    for (uint32_t d = 0; d < c.W; d++) {
      uint64_t rows = RowsBetween(c.me, d);
      if (rows <= c.P || (d == c.me ? Hybrid() : !Remote(d))) continue;
      uint64_t src = pack_at[d] + uint64_t(c.P) * c.row_stride;
      uint64_t len = (rows - c.P) * c.row_stride;
      uint64_t dst = OverflowAt(c.me, d);
      if (d == c.me) {
        std::memcpy(region_ + dst, staging_ + src, len);
        continue;
      }
      if (!Post(d, kOverflow, src - c.rows_base, dst - c.overflow, len, fail)) return false;
    }
    for (uint32_t s = 0; s < c.W; s++)
      if (s != c.me && Remote(s)) *expected += 1 + (RowsBetween(s, c.me) > c.P ? 1 : 0);
    return WaitCount(kDispatchImm, *expected, "the dispatched rows", fail);
  }

  bool Combine(uint64_t round, Failure* fail) {
    const Config& c = cfg_;
    // Rows go back to each source s in its stream order, from spans laid out by source.
    uint64_t at = c.combine_base;
    for (uint32_t s = 0; s < c.W; s++) {
      // Hybrid: only the proxy's sources have spans in staging (the kernels lay them out so).
      if (s == c.me ? Hybrid() : !Remote(s)) continue;
      uint64_t len = RowsBetween(s, c.me) * c.out_row;
      uint64_t rows_before = 0;  // rows s sent to ranks before me: where mine start in its region
      for (uint32_t d = 0; d < c.me; d++) rows_before += RowsBetween(s, d);
      uint64_t dst = c.combine + rows_before * c.out_row;
      if (s == c.me)
        std::memcpy(region_ + dst, staging_ + at, len);
      else if (!Post(s, kCombine, at - c.combine_base, dst - c.combine, len, fail))
        return false;
      at += len;
    }
    if (!WaitCount(kCombineImm, round * nremote_, "the combined rows", fail)) return false;
    // The barrier closes the round: every rank has every row it is owed.
    for (uint32_t d = 0; d < c.W; d++)
      if (d != c.me && Remote(d) && !Post(d, kBarrier, 0, 0, 0, fail)) return false;
    if (!WaitCount(kBarrierImm, round * nremote_, "the closing barrier", fail)) return false;
    return WaitPosts(fail);
  }

  Config cfg_{};
  const trellis_port_v1* port_ = nullptr;
  uint8_t* region_ = nullptr;
  uint8_t* staging_ = nullptr;
  size_t region_len_ = 0, staging_len_ = 0;
  volatile uint64_t* flags_ = nullptr;
  std::vector<int32_t> counts_;  // [src][expert] of the current round
  std::vector<uint8_t> remote_;  // hybrid: 1 for peers this proxy serves (empty: all)
  uint32_t nremote_ = 0;
  uint64_t posted_ = 0;
  uint64_t base_[4] = {0, 0, 0, 0};
  std::atomic<uint64_t> consumed_[4];
  uint64_t base_settled_ = 0;
  std::atomic<uint64_t> dispatched_{0}, combined_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false, kicked_ = false;
  std::atomic<bool> stop_seen_{false};  // stop_, for the spin loop to read without the lock
  std::thread thread_;
  Napi::ThreadSafeFunction tsfn_;
  Napi::ObjectReference refs_;
};

}  // namespace

namespace trellis_moe {
void register_cuda(Napi::Env env, Napi::Object exports);  // native/cuda/ops.cc
}

namespace {

// The addon: the proxy, and the CUDA calls of `cudaMoeOps()` (which say so when built without CUDA).
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("MoeProxy", Proxy::Init(env));
  trellis_moe::register_cuda(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(NODE_GYP_MODULE_NAME, Init)
