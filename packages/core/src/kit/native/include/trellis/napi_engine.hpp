// Trellis native engine kit — the N-API skin over Engine, shared by every native backend.
//
// A backend provides `Factory::create(const Napi::Object& opts, std::string* err)` returning its
// domains, and declares the module with TRELLIS_NAPI_MODULE(Factory). The TypeScript side
// (EngineBase subclass) owns validation and settlement; this class only moves plain data.
#pragma once

#include <napi.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>

#include <unordered_map>

#include "engine.hpp"
#include "format.hpp"
#include "host_lane.hpp"
#include "port_abi.hpp"

namespace trellis {

inline uint32_t u32(const Napi::Value& v) { return v.As<Napi::Number>().Uint32Value(); }
inline uint64_t u64(const Napi::Value& v) { return static_cast<uint64_t>(v.As<Napi::Number>().DoubleValue()); }

// A format::NicKeys record at `at`: a destination's address and remote key on each of 4 NICs.
inline void read_keys(const uint64_t* keys, size_t at, RemoteKey out[4]) {
  static_assert(format::NicKeys::kStride == 8 && format::NicKeys::kRkey3 == 7, "4 NICs of (addr, rkey)");
  for (size_t l = 0; l < 4; l++) {
    out[l].addr = keys[at + format::NicKeys::kAddr0 + 2 * l];
    out[l].key = keys[at + format::NicKeys::kRkey0 + 2 * l];
  }
}
inline void read_keys(const Napi::BigUint64Array& keys, size_t at, RemoteKey out[4]) {
  read_keys(keys.Data(), at, out);
}

// The runs (format::Run and format::NicKeys records at info[at], info[at+1]) and pages (an object at
// info[at+2], if any) of a write, as Write and expandWrite take them.
// Runs [first, first + n) of the run and nicKeys records into `w`.
inline void read_runs(const double* runs, const uint64_t* keys, size_t first, size_t n, WriteCmd& w) {
  using R = format::Run;
  w.runs.resize(n);
  for (size_t i = 0; i < n; i++) {
    Run& r = w.runs[i];
    const double* v = runs + R::kStride * (first + i);
    r.peer = static_cast<uint32_t>(v[R::kPeer]);
    r.lane0 = static_cast<uint8_t>(v[R::kLane0]);
    r.lanes = static_cast<uint8_t>(v[R::kLanes]);
    r.shards = static_cast<uint32_t>(v[R::kShards]);
    r.src_off = static_cast<uint64_t>(v[R::kSrcOff]);
    r.dst_off = static_cast<uint64_t>(v[R::kDstOff]);
    r.len = static_cast<uint64_t>(v[R::kLen]);
    r.zero = v[R::kZero] != 0;
    read_keys(keys, format::NicKeys::kStride * (first + i), r.keys);
  }
}
inline void read_runs(const Napi::Float64Array& runs, const Napi::BigUint64Array& keys, size_t first, size_t n,
                      WriteCmd& w) {
  read_runs(runs.Data(), keys.Data(), first, n, w);
}

inline void read_write(const Napi::CallbackInfo& info, size_t at, WriteCmd& w) {
  Napi::Float64Array runs = info[at].As<Napi::Float64Array>();
  Napi::BigUint64Array keys = info[at + 1].As<Napi::BigUint64Array>();
  read_runs(runs, keys, 0, runs.ElementLength() / format::Run::kStride, w);
  if (info.Length() > at + 2 && info[at + 2].IsObject()) {
    Napi::Object p = info[at + 2].As<Napi::Object>();
    auto pg = std::make_unique<Pages>();
    pg->peer = u32(p.Get("peer"));
    pg->lanes = static_cast<uint8_t>(u32(p.Get("lanes")));
    Napi::Uint32Array sp = p.Get("srcPages").As<Napi::Uint32Array>();
    Napi::Uint32Array dp = p.Get("dstPages").As<Napi::Uint32Array>();
    pg->src_pages.assign(sp.Data(), sp.Data() + sp.ElementLength());
    pg->dst_pages.assign(dp.Data(), dp.Data() + dp.ElementLength());
    pg->src_stride = u64(p.Get("srcStride"));
    pg->dst_stride = u64(p.Get("dstStride"));
    pg->src_off = u64(p.Get("srcOffset"));
    pg->dst_off = u64(p.Get("dstOffset"));
    pg->page_bytes = u64(p.Get("pageBytes"));
    read_keys(p.Get("keys").As<Napi::BigUint64Array>(), 0, pg->keys);
    w.pages = std::move(pg);
  }
}

// eventQueueCheck() (tests): an EventQueue driven as the worker and a polling JS thread drive it,
// for what a test through the provider cannot order deterministically. → {afterPolledDrain,
// hurried, stayedQuiet}: a quiet record published after JS's poll took a held batch turns ready
// within arrival_us while JS keeps polling (arrival_us 1 ms, tried for up to 2 s); with arrival_us
// a minute, a hurry() makes the next flush ready it; and without one it stays unready for 200
// flushes.
inline Napi::Value EventQueueCheck(const Napi::CallbackInfo& info) {
  auto record = [](uint32_t id) { return OpDone{id, Code::Ok, 0, -1, "", false}; };
  // Polls JS takes until the quiet record (id 2) is drained; -1: not within the tries.
  auto run = [&](uint32_t arrival_us, bool hurry, int tries) -> int {
    EventQueue q([] {}, 0, EventQueue::kPollQuietUs, arrival_us);
    q.polled();
    q.push([&](Events& e) { e.ops.push_back(record(1)); });
    q.flush();  // held: JS polls
    q.polled();
    if (!q.ready() || q.drain().ops.size() != 1) return -2;
    q.push_quiet([&](Events& e) { e.ops.push_back(record(2)); });
    q.flush();
    if (hurry) q.hurry();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < tries; i++) {
      q.polled();
      q.flush();
      if (q.ready()) {
        Events ev = q.drain();
        if (ev.ops.size() == 1 && ev.ops[0].op == 2) return i;
      }
      if (arrival_us < 60000000 && std::chrono::steady_clock::now() - t0 > std::chrono::seconds(2)) return -1;
      if (arrival_us < 60000000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return -1;
  };
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("afterPolledDrain", run(1000, false, 1 << 30) >= 0);
  out.Set("hurried", run(60000000, true, 1) == 0);
  out.Set("stayedQuiet", run(60000000, false, 200) == -1);
  return out;
}

// commandRingCheck(n, others) (tests): a Worker over a Body that records the order it is handed
// commands in. Its first command is held in the Body until JS's n commands (ids 1..n: past the
// ring's 1,024 slots, so they overflow) and `others` commands from another thread (as a port's
// poster pushes them), started once JS has pushed its first n/4, are in; then released, and n
// more JS commands follow while the worker catches up. → {inOrder, js, others, othersEarly,
// overflowed}: whether JS's 2n commands were handled in the order pushed, how many of them and of
// the other thread's were handled, how many of the other thread's were handled before the n/4 JS
// commands pushed ahead of them (must be 0), and how many of JS's overflowed.
inline Napi::Value CommandRingCheck(const Napi::CallbackInfo& info) {
  const uint32_t n = u32(info[0]);
  const uint32_t others = u32(info[1]);
  const uint32_t ahead = n / 4;
  constexpr uint32_t kOther = 1u << 30;
  struct Recorder final : Worker::Body {
    std::atomic<bool> holding{false}, release{false};
    std::atomic<uint64_t> seen{0};
    std::vector<uint32_t> js;
    uint32_t other = 0, early = 0;
    bool idle() const override { return false; }
    bool may_block() const override { return false; }
    bool try_wait() override { return false; }
    void handle(Cmd& c) override {
      if (c.id == 0) {
        holding.store(true);
        while (!release.load()) std::this_thread::yield();
      } else if (c.id >= kOther) {
        other++;
        if (js.size() < c.at) early++;  // c.at: the JS commands pushed before it
      } else {
        js.push_back(c.id);
      }
      seen.fetch_add(1, std::memory_order_release);
    }
    bool progress() override { return false; }
    void check_deadlines(std::chrono::steady_clock::time_point) override {}
    void shutdown() override {}
  } body;
  EventQueue events([] {}, 0);
  EngineOptions opts;
  Worker worker(events, opts);
  worker.start(body, {});
  auto cmd = [](uint32_t id, uint64_t at = 0) {
    Cmd c(CmdKind::Cancel);
    c.id = id;
    c.at = at;
    return c;
  };
  worker.push_local(cmd(0));
  while (!body.holding.load()) std::this_thread::yield();
  std::thread poster;
  for (uint32_t i = 1; i <= n; i++) {
    worker.push_local(cmd(i));
    if (i == ahead)
      poster = std::thread([&] {
        for (uint32_t k = 0; k < others; k++) worker.push(cmd(kOther + k, ahead));
      });
  }
  if (poster.joinable()) poster.join();
  const uint64_t overflowed = worker.overflowed();
  body.release.store(true);
  for (uint32_t i = n + 1; i <= 2 * n; i++) worker.push_local(cmd(i));
  while (body.seen.load(std::memory_order_acquire) < 1 + 2 * uint64_t(n) + others) std::this_thread::yield();
  worker.stop();
  bool in_order = body.js.size() == 2 * size_t(n);
  for (size_t i = 0; in_order && i < body.js.size(); i++) in_order = body.js[i] == i + 1;
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("inOrder", in_order);
  out.Set("js", static_cast<double>(body.js.size()));
  out.Set("others", static_cast<double>(body.other));
  out.Set("othersEarly", static_cast<double>(body.early));
  out.Set("overflowed", static_cast<double>(overflowed));
  return out;
}

// expandWrite(runs, runKeys, pages?) → format::WrShape records: the work requests the worker would
// post for this write, in order (the lane's key picks `keyed`). For tests of the expansion.
inline Napi::Value ExpandWrite(const Napi::CallbackInfo& info) {
  WriteCmd w;
  read_write(info, 0, w);
  using S = format::WrShape;
  Napi::Float64Array out = Napi::Float64Array::New(info.Env(), w.total_wrs() * S::kStride);
  size_t i = 0;
  for_each_wr(w, [&](const WrShape& s) {
    double* v = out.Data() + S::kStride * i++;
    v[S::kPeer] = s.peer;
    v[S::kLane] = s.lane;
    v[S::kSrcOff] = static_cast<double>(s.src_off);
    v[S::kDstOff] = static_cast<double>(s.dst_off);
    v[S::kLen] = static_cast<double>(s.len);
    v[S::kKeyed] = s.keys && s.len ? 1 : 0;
  });
  return out;
}

template <typename Factory>
class NapiEngine : public Napi::ObjectWrap<NapiEngine<Factory>> {
 public:
  static Napi::Function Init(Napi::Env env) {
    using W = NapiEngine<Factory>;
    return W::DefineClass(env, "NativeEngine",
                          {
                              W::InstanceMethod("addresses", &W::Addresses),
                              W::InstanceMethod("providers", &W::Providers),
                              W::InstanceMethod("addPeer", &W::AddPeer),
                              W::InstanceMethod("alloc", &W::Alloc),
                              W::InstanceMethod("allocShared", &W::AllocShared),
                              W::InstanceMethod("unlinkShared", &W::UnlinkShared),
                              W::InstanceMethod("mapShared", &W::MapShared),
                              W::InstanceMethod("sharedOwner", &W::SharedOwnerOf),
                              W::InstanceMethod("unmapShared", &W::UnmapShared),
                              W::InstanceMethod("hostCopy", &W::HostCopy),
                              W::InstanceMethod("addressOf", &W::AddressOf),
                              W::InstanceMethod("register", &W::Register),
                              W::InstanceMethod("deregister", &W::Deregister),
                              W::InstanceMethod("write", &W::Write),
                              W::InstanceMethod("writeBatch", &W::WriteBatch),
                              W::InstanceMethod("bindScratch", &W::BindScratch),
                              W::InstanceMethod("bindEvents", &W::BindEvents),
                              W::InstanceMethod("writeBound", &W::WriteBound),
                              W::InstanceMethod("send", &W::Send),
                              W::InstanceMethod("cancel", &W::Cancel),
                              W::InstanceMethod("watch", &W::Watch),
                              W::InstanceMethod("unwatch", &W::Unwatch),
                              W::InstanceMethod("watchImm", &W::WatchImm),
                              W::InstanceMethod("countImm", &W::CountImm),
                              W::InstanceMethod("bindImmTotals", &W::BindImmTotals),
                              W::InstanceMethod("shareImm", &W::ShareImm),
                              W::InstanceMethod("poll", &W::Poll),
                              W::InstanceMethod("endPoll", &W::EndPoll),
                              W::InstanceMethod("armImm", &W::ArmImm),
                              W::InstanceMethod("stats", &W::Stats),
                              W::InstanceMethod("close", &W::Close),
                              W::InstanceMethod("heartbeat", &W::Heartbeat),
                              W::InstanceMethod("abandon", &W::Abandon),
                              W::InstanceMethod("openPort", &W::OpenPort),
                              W::InstanceMethod("setPortWindows", &W::SetPortWindows),
                              W::InstanceMethod("portStats", &W::PortStats),
                              W::InstanceMethod("closePort", &W::ClosePort),
                              W::InstanceMethod("forgetPort", &W::ForgetPort),
                              W::InstanceMethod("failNic", &W::FailNic),
                              W::InstanceMethod("stallWorker", &W::StallWorker),
                          });
  }

  NapiEngine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NapiEngine<Factory>>(info) {
    Napi::Env env = info.Env();
    Napi::Object opts = info[0].As<Napi::Object>();
    std::string err;
    auto domains = Factory::create(opts, &err);
    if (!err.empty()) {
      Napi::Error::New(env, err).ThrowAsJavaScriptException();
      return;
    }
    EngineOptions eo;
    auto num = [&](const char* k, uint32_t dflt) {
      return opts.Has(k) && opts.Get(k).IsNumber() ? u32(opts.Get(k)) : dflt;
    };
    eo.cpu = opts.Has("cpu") && opts.Get("cpu").IsNumber() ? opts.Get("cpu").As<Napi::Number>().Int32Value() : -1;
    eo.op_timeout_ms = num("opTimeoutMs", eo.op_timeout_ms);
    eo.idle_spin_us = num("idleSpinUs", eo.idle_spin_us);
    eo.max_sleep_us = num("maxSleepUs", eo.max_sleep_us);
    eo.max_inflight = num("maxInflight", eo.max_inflight);
    eo.peer_window = num("peerWindow", eo.peer_window);
    eo.recv_bytes = num("recvBytes", static_cast<uint32_t>(eo.recv_bytes));
    eo.recv_count = num("recvCount", eo.recv_count);
    eo.send_buffers = num("sendBuffers", eo.send_buffers);
    eo.doorbell_us = num("doorbellUs", eo.doorbell_us);
    eo.arrival_us = num("arrivalBatchUs", eo.arrival_us);
    eo.drive_inline = opts.Has("driveInline") && opts.Get("driveInline").ToBoolean().Value();

    last_cb_ = Napi::Persistent(info[1].As<Napi::Function>());
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "trellis-events", 0, 1);
    engine_ = std::make_unique<Engine>(std::move(domains), eo, [this] {
      // Non-blocking: the doorbell is rung at most once per drained batch.
      tsfn_.NonBlockingCall([this](Napi::Env env, Napi::Function cb) {
        TRELLIS_TRACE_MARK('L');
        Deliver(env, cb, /*rung=*/true);
        TRELLIS_TRACE_MARK('M');
      });
    });
    err = engine_->start();
    if (!err.empty()) {
      engine_.reset();
      tsfn_.Release();
      Napi::Error::New(env, err).ThrowAsJavaScriptException();
    }
  }

  ~NapiEngine() override { Shutdown(); }

 private:
  void Shutdown() {
    StopHostLane();
    if (!engine_) return;
    if (!engine_->stop(kStopLimit)) return LeaveBehind();
    engine_.reset();
    tsfn_.Release();
  }

  // How long close() (and the finalizer) waits for the worker to stop: a healthy one stops within
  // milliseconds; one stuck inside the provider never does, and is left behind after this.
  static constexpr std::chrono::milliseconds kStopLimit{3000};

  // The worker was left behind (abandon(), or a stop that did not end): leak the engine and its
  // domains on purpose — freeing memory the thread may still touch would be worse. It no longer
  // rings JS (the engine muted its events); the shared arrival words it may store into stay alive.
  void LeaveBehind() {
    (void)engine_.release();
    tsfn_.Release();
    if (!totals_ref_.IsEmpty()) totals_ref_.SuppressDestruct();
  }

  // The host lane's copies finish (their signal words are JS memory, alive while this runs), then
  // every peer region mapped here is unmapped.
  void StopHostLane() {
    copier_.reset();
    for (auto& [id, m] : mappings_) {
      (void)id;
      munmap(m.addr, m.len);
      close(m.fd);
    }
    mappings_.clear();
  }

  bool Alive(const Napi::CallbackInfo& info) {
    if (engine_) return true;
    Napi::Error::New(info.Env(), "the native engine is closed").ThrowAsJavaScriptException();
    return false;
  }

  // JS thread: hand one batch of events to the TypeScript side: cb(nOps, nImms, extra). False if
  // there was none.
  //
  // Completions and arrivals — all a write-heavy or latency-critical batch has — go into the event
  // scratch JS bound (bindEvents): nOps format::Completion records, then nImms format::Arrival
  // records, and `extra` is undefined, so a batch allocates nothing on the JS heap. Everything else
  // (registrations, messages, failures' texts, watch changes, released ops) comes in `extra`, as
  // do completions and arrivals when the scratch is unbound, too small for the batch, or in use by
  // the delivery this one runs inside of (close() from a callback of one): then nOps and nImms are
  // 0 and `extra.ops` / `extra.imms` carry them in arrays of their own. `rung`: for a ring, which
  // finds nothing where a poll took its batch first (see EventQueue::drain).
  bool Deliver(Napi::Env env, Napi::Function cb, bool rung = false) {
    if (!engine_) return false;
    Events ev = engine_->drain(rung);
    if (ev.empty()) return false;
    using C = format::Completion;
    using A = format::Arrival;
    const bool scratch = events_ != nullptr && !delivering_ &&
                         ev.ops.size() * C::kStride + ev.imms.size() * A::kStride <= events_len_;
    struct Guard {
      bool& b;
      bool was;
      explicit Guard(bool& x) : b(x), was(x) { b = true; }
      ~Guard() { b = was; }
    } guard(delivering_);
    Napi::Object o;
    auto extra = [&]() -> Napi::Object& {
      if (o.IsEmpty()) o = Napi::Object::New(env);
      return o;
    };
    // Where `count` numbers of records go: the scratch from `at`, or an array of their own in
    // extra[key].
    auto records = [&](size_t count, size_t at, const char* key) -> uint32_t* {
      if (scratch) return events_ + at;
      Napi::Uint32Array arr = Napi::Uint32Array::New(env, count);
      extra().Set(key, arr);
      return arr.Data();
    };
    // Messages only for failures, as [record index, text] pairs. `released`: ids of ops reported
    // with kPostedFlag whose posted work the provider has let go of since.
    if (!ev.ops.empty()) {
      uint32_t* ops = records(ev.ops.size() * C::kStride, 0, "ops");
      Napi::Array failures;
      uint32_t nf = 0;
      for (size_t i = 0; i < ev.ops.size(); i++) {
        const OpDone& d = ev.ops[i];
        const size_t at = C::kStride * i;
        ops[at + C::kId] = d.op;
        ops[at + C::kCode] = static_cast<uint32_t>(d.code) | (d.posted ? format::kPostedFlag : 0u);
        ops[at + C::kErrno] = static_cast<uint32_t>(d.err);
        ops[at + C::kNic] = static_cast<uint32_t>(d.nic + 1);
        if (!d.message.empty()) {
          if (nf == 0) failures = Napi::Array::New(env);
          failures.Set(nf++, Napi::Number::New(env, static_cast<double>(i)));
          failures.Set(nf++, Napi::String::New(env, d.message));
        }
      }
      if (nf) extra().Set("messages", failures);
    }
    if (!ev.regs.empty()) {
      Napi::Array regs = Napi::Array::New(env, ev.regs.size());
      for (size_t i = 0; i < ev.regs.size(); i++) {
        const RegDone& r = ev.regs[i];
        Napi::Object x = Napi::Object::New(env);
        x.Set("region", r.region);
        x.Set("code", code_name(r.code));
        x.Set("message", r.message);
        if (r.dereg) x.Set("dereg", true);
        using K = format::RegKey;
        Napi::BigUint64Array keys = Napi::BigUint64Array::New(env, r.keys.size() * K::kStride);
        for (size_t k = 0; k < r.keys.size(); k++) {
          keys[K::kStride * k + K::kAddr] = r.keys[k].addr;
          keys[K::kStride * k + K::kKey] = r.keys[k].key;
        }
        x.Set("keys", keys);
        regs.Set(i, x);
      }
      extra().Set("regs", regs);
    }
    if (!ev.imms.empty()) {
      uint32_t* imms = records(ev.imms.size() * A::kStride, ev.ops.size() * C::kStride, "imms");
      for (size_t i = 0; i < ev.imms.size(); i++) {
        imms[A::kStride * i + A::kImm] = ev.imms[i].first;
        imms[A::kStride * i + A::kCount] = ev.imms[i].second;
      }
    }
    if (!ev.recvs.empty()) {
      Napi::Array recvs = Napi::Array::New(env, ev.recvs.size());
      for (size_t i = 0; i < ev.recvs.size(); i++) {
        recvs.Set(i, Napi::Buffer<uint8_t>::Copy(env, ev.recvs[i].data(), ev.recvs[i].size()));
      }
      extra().Set("recvs", recvs);
    }
    if (!ev.watches.empty()) {
      Napi::Array watches = Napi::Array::New(env, ev.watches.size());
      for (size_t i = 0; i < ev.watches.size(); i++) {
        Napi::Array a = Napi::Array::New(env, 4);
        a.Set(0u, ev.watches[i].id);
        a.Set(1u, Napi::BigInt::New(env, ev.watches[i].value));
        a.Set(2u, Napi::BigInt::New(env, ev.watches[i].prev));
        a.Set(3u, Napi::BigInt::New(env, ev.watches[i].seen_ns));
        watches.Set(i, a);
      }
      extra().Set("watches", watches);
    }
    if (!ev.released.empty()) {
      Napi::Uint32Array released = Napi::Uint32Array::New(env, ev.released.size());
      for (size_t i = 0; i < ev.released.size(); i++) released[i] = ev.released[i];
      extra().Set("released", released);
    }
    const double n_ops = scratch ? static_cast<double>(ev.ops.size()) : 0;
    const double n_imms = scratch ? static_cast<double>(ev.imms.size()) : 0;
    cb.Call({Napi::Number::New(env, n_ops), Napi::Number::New(env, n_imms),
             o.IsEmpty() ? env.Undefined() : static_cast<Napi::Value>(o)});
    return true;
  }

  // poll() → whether a batch was delivered. Latency mode: JS takes what the worker finished now,
  // from its own loop, instead of waiting for the doorbell to wake the event loop.
  Napi::Value Poll(const Napi::CallbackInfo& info) {
    // Not from inside a delivery (a callback it runs polled): that batch is still being handed over.
    bool delivered = false;
    if (engine_ && !delivering_ && engine_->poll_ready()) {
      TRELLIS_TRACE_MARK('D');
      delivered = Deliver(info.Env(), last_cb_.Value());
      TRELLIS_TRACE_MARK('E');
    }
    return Napi::Boolean::New(info.Env(), delivered);
  }

  // endPoll() → whether a batch waits already: JS stopped polling; the doorbell rings again for
  // whatever comes next, and JS takes what waits with poll() (no ring comes for it).
  Napi::Value EndPoll(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), engine_ && engine_->end_poll());
  }

  // armImm(imm, need): the first waiter on `imm` needs `need` more arrivals than JS was given (0:
  // none waits); the worker rings as soon as they are in (see EventQueue::arm).
  Napi::Value ArmImm(const Napi::CallbackInfo& info) {
    if (engine_) engine_->arm_imm(u32(info[0]), static_cast<uint64_t>(info[1].As<Napi::Number>().DoubleValue()));
    return info.Env().Undefined();
  }

  // watchImm(id, imm): watch `id` reads the arrivals of `imm` counted so far (quiet: only the
  // reactions armed on it read it).
  Napi::Value WatchImm(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Cmd c(CmdKind::WatchImm);
    c.id = u32(info[0]);
    c.at = u32(info[1]);
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  // bindImmTotals(words): the Uint32Array shareImm's words are in (kept referenced by the addon,
  // so the worker may write it until it stops).
  Napi::Value BindImmTotals(const Napi::CallbackInfo& info) {
    bind_words(info[0], totals_ref_, totals_, totals_len_);
    return info.Env().Undefined();
  }

  // A Uint32Array JS hands the addon for good: referenced (so it stays alive) and its data taken.
  static void bind_words(const Napi::Value& v, Napi::ObjectReference& ref, uint32_t*& data, size_t& len) {
    Napi::Uint32Array words = v.As<Napi::Uint32Array>();
    ref = Napi::Persistent(static_cast<Napi::Object>(words));
    data = words.Data();
    len = words.ElementLength();
  }

  // shareImm(imm, slot): the worker keeps word `slot` of the bound array equal to the arrivals of
  // `imm` read from the NICs since the engine started (mod 2^32). See DomainGroup::share_imm.
  Napi::Value ShareImm(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    const size_t slot = u32(info[1]);
    if (!totals_ || slot >= totals_len_) {
      Napi::Error::New(info.Env(), "shareImm: no bound word at that slot").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    Cmd c(CmdKind::ShareImm);
    c.at = u32(info[0]);
    c.ptr = totals_ + slot;
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  // countImm(imm, n): arrivals JS counted itself (control messages) count for reactions too.
  Napi::Value CountImm(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Cmd c(CmdKind::CountImm);
    c.at = u32(info[0]);
    c.len = u32(info[1]);
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  Napi::Value Addresses(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Napi::Array a = Napi::Array::New(info.Env(), engine_->nics());
    for (size_t i = 0; i < engine_->nics(); i++) {
      auto bytes = engine_->domain(i).address();
      a.Set(i, Napi::Buffer<uint8_t>::Copy(info.Env(), bytes.data(), bytes.size()));
    }
    return a;
  }

  Napi::Value Providers(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Napi::Array a = Napi::Array::New(info.Env(), engine_->nics());
    for (size_t i = 0; i < engine_->nics(); i++) {
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("provider", engine_->domain(i).provider());
      o.Set("path", engine_->domain(i).path());
      std::string d = engine_->domain(i).describe();
      if (!d.empty()) o.Set("device", d);
      a.Set(i, o);
    }
    return a;
  }

  // addPeer(id, addrs: Buffer[])
  Napi::Value AddPeer(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Cmd c(CmdKind::AddPeer);
    c.id = u32(info[0]);
    Napi::Array arr = info[1].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Uint8Array b = arr.Get(i).As<Napi::Uint8Array>();
      c.addrs.emplace_back(b.Data(), b.Data() + b.ByteLength());
    }
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  // alloc(length) → ArrayBuffer of page-aligned memory, freed when garbage-collected.
  Napi::Value Alloc(const Napi::CallbackInfo& info) {
    size_t len = static_cast<size_t>(u64(info[0]));
    void* p = nullptr;
    size_t size = len ? len : 1;
    if (posix_memalign(&p, 4096, size) != 0) {
      Napi::Error::New(info.Env(), "out of memory allocating " + std::to_string(len) + " bytes").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    std::memset(p, 0, size);
    return Napi::ArrayBuffer::New(info.Env(), p, len, [](Napi::Env, void* data) { std::free(data); });
  }

  // allocShared(length) → {buffer, name}: page-aligned memory in a POSIX shared-memory object a
  // same-host writer can map (see host_lane.hpp); unmapped (and unlinked) when garbage-collected.
  Napi::Value AllocShared(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    SharedAlloc a;
    std::string err;
    if (!shared_alloc(static_cast<size_t>(u64(info[0])), &a, &err)) {
      Napi::Error::New(env, err).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    auto* hint = new SharedAlloc(a);
    Napi::Object o = Napi::Object::New(env);
    o.Set("buffer", Napi::ArrayBuffer::New(
                        env, a.addr, static_cast<size_t>(u64(info[0])),
                        [](Napi::Env, void* data, SharedAlloc* h) {
                          munmap(data, h->len);
                          shm_unlink(h->name.c_str());
                          close(h->fd);  // and its lock
                          delete h;
                        },
                        hint));
    o.Set("name", a.name);
    return o;
  }

  // unlinkShared(name): the region is unregistered; writers that mapped it stop writing there.
  Napi::Value UnlinkShared(const Napi::CallbackInfo& info) {
    shm_unlink(info[0].As<Napi::String>().Utf8Value().c_str());
    return info.Env().Undefined();
  }

  // mapShared(name) → {id, base: bigint, length}: a same-host peer's region mapped here. Throws
  // an Error with `unlinked: true` where the name is gone from the /dev/shm it was created on.
  Napi::Value MapShared(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    SharedMapping m;
    std::string err;
    bool unlinked = false;
    if (!shared_map(info[0].As<Napi::String>().Utf8Value(), &m, &err, &unlinked)) {
      Napi::Error e = Napi::Error::New(env, err);
      if (unlinked) e.Set("unlinked", Napi::Boolean::New(env, true));
      e.ThrowAsJavaScriptException();
      return env.Undefined();
    }
    uint32_t id = next_mapping_++;
    mappings_[id] = m;
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", id);
    o.Set("base", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(m.addr))));
    o.Set("length", static_cast<double>(m.len));
    return o;
  }

  // sharedOwner(id) → 0 the owner holds the region, 1 it was unregistered (or is not mapped here),
  // 2 the owner died (SharedOwner).
  Napi::Value SharedOwnerOf(const Napi::CallbackInfo& info) {
    auto it = mappings_.find(u32(info[0]));
    SharedOwner o = it == mappings_.end() ? SharedOwner::Unregistered : it->second.owner();
    return Napi::Number::New(info.Env(), static_cast<uint32_t>(o));
  }

  // unmapShared(id): after every copy queued so far.
  Napi::Value UnmapShared(const Napi::CallbackInfo& info) {
    auto it = mappings_.find(u32(info[0]));
    if (it == mappings_.end()) return info.Env().Undefined();
    if (copier_) {
      copier_->unmap(it->first, it->second);
    } else {
      munmap(it->second.addr, it->second.len);
      close(it->second.fd);
    }
    mappings_.erase(it);
    return info.Env().Undefined();
  }

  // hostCopy(queue, triples: BigUint64Array, signal: Uint8Array (8 bytes), value: bigint): memcpy
  // each (dst, src, bytes) on the engine's copy thread, in order within `queue` (a mapping id),
  // then store `value` into the signal.
  Napi::Value HostCopy(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    uint64_t queue = u32(info[0]);
    auto t = info[1].As<Napi::BigUint64Array>();
    std::vector<uint64_t> triples(t.Data(), t.Data() + t.ElementLength());
    auto* word = reinterpret_cast<volatile uint64_t*>(info[2].As<Napi::Uint8Array>().Data());
    bool lossless = true;
    uint64_t value = info[3].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!copier_) copier_ = std::make_unique<HostCopier>();
    copier_->copy(queue, std::move(triples), word, value);
    return info.Env().Undefined();
  }

  // addressOf(view: Uint8Array) → bigint: where the view's first byte is in this process.
  Napi::Value AddressOf(const Napi::CallbackInfo& info) {
    return Napi::BigInt::New(info.Env(),
                             static_cast<uint64_t>(reinterpret_cast<uintptr_t>(info[0].As<Napi::Uint8Array>().Data())));
  }

  // register(id, view: Uint8Array, remote) | register(id, devicePtr: bigint, remote, bytes, device)
  Napi::Value Register(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Cmd c(CmdKind::Register);
    c.id = u32(info[0]);
    if (info[1].IsBigInt()) {
      // register(id, devicePtr: bigint, remote, bytes, device): CUDA memory registered directly.
      bool lossless = false;
      c.ptr = reinterpret_cast<void*>(info[1].As<Napi::BigInt>().Uint64Value(&lossless));
      c.len = static_cast<size_t>(info[3].As<Napi::Number>().Int64Value());
      c.device = info[4].As<Napi::Number>().Int32Value();
    } else {
      // A Uint8Array view (over an ArrayBuffer or a SharedArrayBuffer): its data pointer is the region.
      Napi::Uint8Array view = info[1].As<Napi::Uint8Array>();
      c.ptr = view.Data();
      c.len = view.ByteLength();
    }
    c.remote = info[2].As<Napi::Boolean>().Value();
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  Napi::Value Deregister(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Cmd c(CmdKind::Deregister);
    c.id = u32(info[0]);
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  // write(op, region, hasImm, imm, runs: format::Run records, runKeys: format::NicKeys records, pages?)
  // pages: {peer, lanes, srcPages, dstPages, srcStride, dstStride, srcOff, dstOff, pageBytes, keys: one NicKeys}
  Napi::Value Write(const Napi::CallbackInfo& info) {
    TRELLIS_TRACE_MARK('S');
    if (!Alive(info)) return info.Env().Undefined();
    WritePtr w = engine_->take_write();
    w->op = u32(info[0]);
    w->region = u32(info[1]);
    w->has_imm = info[2].As<Napi::Boolean>().Value();
    w->imm = u32(info[3]);
    read_write(info, 4, *w);
    // trigger?: {watch, at, hold?} — arm it on a watcher instead of posting now.
    bool armed = info.Length() > 7 && info[7].IsObject();
    Cmd c(armed ? CmdKind::ArmWrite : CmdKind::Write);
    if (armed) {
      Napi::Object t = info[7].As<Napi::Object>();
      c.id = u32(t.Get("watch"));
      bool lossless = true;
      c.at = t.Get("at").As<Napi::BigInt>().Uint64Value(&lossless);
      c.hold = t.Get("hold").ToBoolean().Value();
    }
    c.write = std::move(w);
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  // bindScratch(runs: Float64Array, runKeys: BigUint64Array): the arrays writeBound() reads its runs
  // from, kept referenced here (JS packs into them and rebinds when it grows them).
  Napi::Value BindScratch(const Napi::CallbackInfo& info) {
    Napi::Float64Array runs = info[0].As<Napi::Float64Array>();
    Napi::BigUint64Array keys = info[1].As<Napi::BigUint64Array>();
    bound_runs_ref_ = Napi::Persistent(static_cast<Napi::Object>(runs));
    bound_keys_ref_ = Napi::Persistent(static_cast<Napi::Object>(keys));
    bound_runs_ = runs.Data();
    bound_keys_ = keys.Data();
    bound_count_ = std::min(runs.ElementLength() / format::Run::kStride, keys.ElementLength() / format::NicKeys::kStride);
    return info.Env().Undefined();
  }

  // bindEvents(scratch: Uint32Array): where Deliver() puts completions and arrivals (see there),
  // kept referenced here. JS reads it only inside its event callback.
  Napi::Value BindEvents(const Napi::CallbackInfo& info) {
    bind_words(info[0], events_ref_, events_, events_len_);
    return info.Env().Undefined();
  }

  // writeBound(op, region, imm, runs): write() of the first `runs` runs of the bound scratch, with no
  // pages and no trigger; imm < 0: none. The single-write path: four numbers across N-API.
  Napi::Value WriteBound(const Napi::CallbackInfo& info) {
    TRELLIS_TRACE_MARK('S');
    if (!Alive(info)) return info.Env().Undefined();
    size_t n = u32(info[3]);
    if (n > bound_count_) {
      Napi::Error::New(info.Env(), "writeBound: more runs than the bound scratch holds").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    WritePtr w = engine_->take_write();
    w->op = u32(info[0]);
    w->region = u32(info[1]);
    double imm = info[2].As<Napi::Number>().DoubleValue();
    w->has_imm = imm >= 0;
    w->imm = w->has_imm ? static_cast<uint32_t>(imm) : 0;
    read_runs(bound_runs_, bound_keys_, 0, n, *w);
    Cmd c(CmdKind::Write);
    c.write = std::move(w);
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  // writeBatch(batch, runs, runKeys): many writes in one call (format::BatchWrite records; each
  // write's runs follow the previous one's), handed to the worker in order with one wake-up.
  Napi::Value WriteBatch(const Napi::CallbackInfo& info) {
    TRELLIS_TRACE_MARK('S');
    if (!Alive(info)) return info.Env().Undefined();
    using B = format::BatchWrite;
    Napi::Float64Array batch = info[0].As<Napi::Float64Array>();
    Napi::Float64Array runs = info[1].As<Napi::Float64Array>();
    Napi::BigUint64Array keys = info[2].As<Napi::BigUint64Array>();
    size_t n = batch.ElementLength() / B::kStride;
    std::vector<Cmd> cmds;
    cmds.reserve(n);
    size_t first = 0;
    // One group per call: its writes' successes ring JS once, with the last (OpTable::join).
    const uint64_t group = n > 1 ? ++groups_ : 0;
    for (size_t i = 0; i < n; i++) {
      const double* v = batch.Data() + B::kStride * i;
      WritePtr w = engine_->take_write();
      w->op = static_cast<uint32_t>(v[B::kOp]);
      w->region = static_cast<uint32_t>(v[B::kRegion]);
      w->has_imm = v[B::kHasImm] != 0;
      w->imm = static_cast<uint32_t>(v[B::kImm]);
      w->group = group;
      w->group_size = static_cast<uint32_t>(n);
      size_t count = static_cast<size_t>(v[B::kRuns]);
      read_runs(runs, keys, first, count, *w);
      first += count;
      Cmd c(CmdKind::Write);
      c.write = std::move(w);
      cmds.push_back(std::move(c));
    }
    engine_->push_all(cmds);
    return info.Env().Undefined();
  }

  // send(op, peer, bytes, lane = 0)
  Napi::Value Send(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Cmd c(CmdKind::Send);
    c.id = u32(info[0]);
    c.peer = u32(info[1]);
    c.lane = info.Length() > 3 && info[3].IsNumber() ? static_cast<uint8_t>(u32(info[3])) : 0;
    Napi::Uint8Array b = info[2].As<Napi::Uint8Array>();
    c.data.assign(b.Data(), b.Data() + b.ByteLength());
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  // cancel(op, "TIMEOUT"|"ABORTED", force = false)
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Cmd c(CmdKind::Cancel);
    c.id = u32(info[0]);
    c.code = info[1].As<Napi::String>().Utf8Value() == "TIMEOUT" ? Code::Timeout : Code::Aborted;
    c.hold = info.Length() > 2 && info[2].ToBoolean().Value();
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  // watch(id, view: Uint8Array of 8 bytes, quiet = false) — the worker reads it as a 64-bit word;
  // a quiet watch reports no changes to JS (only its triggers read it)
  Napi::Value Watch(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Cmd c(CmdKind::AddWatch);
    c.id = u32(info[0]);
    c.ptr = info[1].As<Napi::Uint8Array>().Data();
    c.quiet = info.Length() > 2 && info[2].ToBoolean().Value();
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  Napi::Value Unwatch(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Cmd c(CmdKind::RemoveWatch);
    c.id = u32(info[0]);
    engine_->push(std::move(c));
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    size_t n = engine_->nics();
    using S = format::NicStats;
    Napi::Float64Array a = Napi::Float64Array::New(info.Env(), n * S::kStride);
    for (size_t i = 0; i < n; i++) {
      NicCounters& c = engine_->counters(i);
      double* v = a.Data() + S::kStride * i;
      v[S::kBytesWritten] = static_cast<double>(c.bytes_written.load());
      v[S::kWriteOps] = static_cast<double>(c.write_ops.load());
      v[S::kBytesSent] = static_cast<double>(c.bytes_sent.load());
      v[S::kSendOps] = static_cast<double>(c.send_ops.load());
      v[S::kBytesReceived] = static_cast<double>(c.bytes_received.load());
      v[S::kRecvOps] = static_cast<double>(c.recv_ops.load());
      v[S::kImmsReceived] = static_cast<double>(c.imms_received.load());
      v[S::kErrors] = static_cast<double>(c.errors.load());
    }
    return a;
  }

  // openPort(id, imms: Uint32Array) → bigint: the address of the port's trellis_port_v1
  Napi::Value OpenPort(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    Napi::Uint32Array imms = info[1].As<Napi::Uint32Array>();
    auto p = make_port(std::vector<uint32_t>(imms.Data(), imms.Data() + imms.ElementLength()));
    engine_->attach_port(p);
    ports_[u32(info[0])] = p;
    return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(&p->api)));
  }

  // setPortWindows(id, windows: format::PortWindow records, keys: format::NicKeys records)
  Napi::Value SetPortWindows(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    auto it = ports_.find(u32(info[0]));
    if (it == ports_.end()) return info.Env().Undefined();
    Napi::Float64Array w = info[1].As<Napi::Float64Array>();
    Napi::BigUint64Array keys = info[2].As<Napi::BigUint64Array>();
    using W = format::PortWindow;
    std::vector<PortState::Window> wins(w.ElementLength() / W::kStride);
    for (size_t i = 0; i < wins.size(); i++) {
      const double* v = w.Data() + W::kStride * i;
      PortState::Window& x = wins[i];
      Run r;
      r.peer = static_cast<uint32_t>(v[W::kPeer]);
      r.lane0 = static_cast<uint8_t>(v[W::kLane]);
      r.lanes = static_cast<uint8_t>(v[W::kLanes]);
      r.shards = 1;
      x.tmpl.region = static_cast<uint32_t>(v[W::kRegion]);
      r.src_off = static_cast<uint64_t>(v[W::kSrcOff]);
      x.src_len = static_cast<uint64_t>(v[W::kSrcLen]);
      r.dst_off = static_cast<uint64_t>(v[W::kDstOff]);
      x.dst_len = static_cast<uint64_t>(v[W::kDstLen]);
      x.tmpl.has_imm = v[W::kHasImm] != 0;
      x.tmpl.imm = static_cast<uint32_t>(v[W::kImm]);
      read_keys(keys, format::NicKeys::kStride * i, r.keys);
      x.tmpl.runs.push_back(r);
    }
    std::lock_guard<std::mutex> g(it->second->mu);
    it->second->windows = std::move(wins);
    return info.Env().Undefined();
  }

  // portStats(id) → a format::PortStats record, then the count of each counted immediate
  Napi::Value PortStats(const Napi::CallbackInfo& info) {
    auto it = ports_.find(u32(info[0]));
    if (it == ports_.end()) return info.Env().Undefined();
    PortState& p = *it->second;
    using P = format::PortStats;
    Napi::Float64Array a = Napi::Float64Array::New(info.Env(), P::kStride + p.imms.size());
    a[P::kPosted] = static_cast<double>(p.posted.load());
    a[P::kSettled] = static_cast<double>(p.settled.load());
    a[P::kFailed] = static_cast<double>(p.failed.load());
    for (size_t i = 0; i < p.imms.size(); i++) a[P::kStride + i] = static_cast<double>(p.counts[i].load());
    return a;
  }

  // closePort(id): nothing posts through it afterwards; its immediates go back to JS counters. Its
  // stats stay readable (the writes it posted still settle) until forgetPort(id).
  Napi::Value ClosePort(const Napi::CallbackInfo& info) {
    auto it = ports_.find(u32(info[0]));
    if (it == ports_.end()) return info.Env().Undefined();
    if (engine_) engine_->detach_port(it->second);
    return info.Env().Undefined();
  }

  // forgetPort(id): a closed port's stats are no longer needed.
  Napi::Value ForgetPort(const Napi::CallbackInfo& info) {
    ports_.erase(u32(info[0]));
    return info.Env().Undefined();
  }

  // failNic(lane): tear the NIC's endpoint down (fault injection)
  Napi::Value FailNic(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    engine_->fail_nic(static_cast<uint8_t>(u32(info[0])));
    return info.Env().Undefined();
  }

  Napi::Value Heartbeat(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), engine_ ? static_cast<double>(engine_->heartbeat()) : -1.0);
  }

  // abandon(): the worker is stuck inside the provider. Detach it and leak the engine and its
  // domains on purpose: freeing memory the stuck thread may still touch would be worse.
  Napi::Value Abandon(const Napi::CallbackInfo& info) {
    if (engine_) {
      engine_->abandon();
      LeaveBehind();
    }
    return info.Env().Undefined();
  }

  // stallWorker(ms): fault injection for tests — the worker spends `ms` in one command.
  Napi::Value StallWorker(const Napi::CallbackInfo& info) {
    if (!Alive(info)) return info.Env().Undefined();
    engine_->stall(u32(info[0]));
    return info.Env().Undefined();
  }

  // close() → whether the worker stopped: pending operations are then reported CLOSED in a last
  // batch. False: it did not stop within kStopLimit (stuck inside the provider) and was left
  // behind; nothing is delivered (JS settles what is pending itself).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    StopHostLane();
    if (engine_) {
      if (!engine_->stop(kStopLimit)) {
        LeaveBehind();
        return Napi::Boolean::New(info.Env(), false);
      }
      // Deliver the last batch synchronously: the worker is gone, so nothing races it.
      Deliver(info.Env(), last_cb_.Value());
      engine_.reset();
      tsfn_.Release();
    }
    return Napi::Boolean::New(info.Env(), true);
  }

  std::unique_ptr<Engine> engine_;
  std::unordered_map<uint32_t, std::shared_ptr<PortState>> ports_;
  Napi::ThreadSafeFunction tsfn_;
  Napi::ObjectReference totals_ref_;  // bindImmTotals: the shared arrival totals
  uint32_t* totals_ = nullptr;
  size_t totals_len_ = 0;
  Napi::FunctionReference last_cb_;  // for poll() and the final synchronous delivery in close()
  // bindScratch(): the arrays writeBound() reads, referenced so that they stay alive.
  Napi::ObjectReference bound_runs_ref_, bound_keys_ref_;
  const double* bound_runs_ = nullptr;
  const uint64_t* bound_keys_ = nullptr;
  size_t bound_count_ = 0;
  uint64_t groups_ = 0;  // writeBatch calls so far: the last one's group id (JS thread)
  bool delivering_ = false;          // a batch is being handed to JS (poll() from inside it is a no-op)
  // bindEvents(): the scratch Deliver() writes completions and arrivals into.
  Napi::ObjectReference events_ref_;
  uint32_t* events_ = nullptr;
  size_t events_len_ = 0;
  // The host lane: the copy thread (started on first use) and the peer regions mapped here.
  std::unique_ptr<HostCopier> copier_;
  std::unordered_map<uint32_t, SharedMapping> mappings_;
  uint32_t next_mapping_ = 1;
};

// portPost / portCount / portSettled / portError / portErrorWindow / portWait: call a port through its C table,
// exactly as a native consumer does (tests and tools reach port.h from JavaScript this way).
inline const trellis_port_v1* port_of(const Napi::Value& v) {
  bool lossless = true;
  return reinterpret_cast<const trellis_port_v1*>(static_cast<uintptr_t>(v.As<Napi::BigInt>().Uint64Value(&lossless)));
}
inline void export_port_calls(Napi::Env env, Napi::Object exports) {
  exports.Set("portPost", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                const trellis_port_v1* p = port_of(info[0]);
                return Napi::Number::New(info.Env(), p->post(p->self, u32(info[1]), u64(info[2]), u64(info[3]), u64(info[4])));
              }));
  exports.Set("portCount", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                const trellis_port_v1* p = port_of(info[0]);
                return Napi::Number::New(info.Env(), static_cast<double>(p->count(p->self, u32(info[1]))));
              }));
  exports.Set("portSettled", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                const trellis_port_v1* p = port_of(info[0]);
                uint64_t failed = 0;
                uint64_t n = p->settled(p->self, &failed);
                Napi::Array a = Napi::Array::New(info.Env(), 2);
                a.Set(0u, Napi::Number::New(info.Env(), static_cast<double>(n)));
                a.Set(1u, Napi::Number::New(info.Env(), static_cast<double>(failed)));
                return a;
              }));
  exports.Set("portError", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                const trellis_port_v1* p = port_of(info[0]);
                char buf[512];
                if (!p->error(p->self, buf, sizeof buf)) return info.Env().Undefined();
                return Napi::String::New(info.Env(), buf);
              }));
  exports.Set("portErrorWindow", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                const trellis_port_v1* p = port_of(info[0]);
                return Napi::Number::New(info.Env(), p->error(p->self, nullptr, 0));
              }));
  exports.Set("portWait", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                const trellis_port_v1* p = port_of(info[0]);
                return Napi::Number::New(info.Env(), static_cast<double>(p->wait(p->self, u64(info[1]), u32(info[2]))));
              }));
}

}  // namespace trellis

// Declare the addon module of a backend.
#define TRELLIS_NAPI_MODULE(FACTORY)                                                    \
  static Napi::Object TrellisInit(Napi::Env env, Napi::Object exports) {              \
    exports.Set("NativeEngine", trellis::NapiEngine<FACTORY>::Init(env));              \
    /* completion codes travel as indices; this table is their one definition */        \
    Napi::Array names = Napi::Array::New(env, trellis::kCodeCount);                   \
    for (int i = 0; i < trellis::kCodeCount; i++)                                      \
      names.Set(i, trellis::code_name(static_cast<trellis::Code>(i)));                 \
    exports.Set("codeNames", names);                                                   \
    trellis::export_port_calls(env, exports);                                          \
    exports.Set("expandWrite", Napi::Function::New(env, trellis::ExpandWrite));        \
    exports.Set("commandRingCheck", Napi::Function::New(env, trellis::CommandRingCheck)); \
    exports.Set("eventQueueCheck", Napi::Function::New(env, trellis::EventQueueCheck)); \
    FACTORY::extend(env, exports);                                                     \
    return exports;                                                                    \
  }                                                                                    \
  NODE_API_MODULE(NODE_GYP_MODULE_NAME, TrellisInit)
