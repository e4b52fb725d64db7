// Trellis native engine kit — the worker: the engine's one native thread.
//
// It owns the thread (named, pinned), the command queues (a lock-free ring the JS thread pushes
// into, a locked queue for other threads: ports), the wake-up (an eventfd rung by a push while the
// worker blocks in epoll), the idle policy (spin after activity, then block in epoll or sleep with a
// doubling backoff) and the loop. What a loop turn does with commands,
// work requests and deadlines is its Body's (the Engine's); the only other thing it touches is the
// event queue, whose doorbell it rings once per turn.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "commands.hpp"
#include "event_queue.hpp"

#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#endif

namespace trellis {

class Worker {
 public:
  using clock = std::chrono::steady_clock;

  // What the loop drives, called on the worker thread only.
  class Body {
   public:
    // Nothing posted and nothing waiting to be posted: the worker may go idle.
    virtual bool idle() const = 0;
    // Nothing to poll besides the CQs (no watch word JS reads, no held trigger): it may block in epoll.
    virtual bool may_block() const = 0;
    // Right before blocking: every live domain's CQ is armed for its wait fd (fi_trywait).
    virtual bool try_wait() = 0;
    virtual void handle(Cmd& c) = 0;
    // Post, poll completions, read watch words: true if anything happened.
    virtual bool progress() = 0;
    // Every 5 ms.
    virtual void check_deadlines(clock::time_point now) = 0;
    // After the loop: report what is left, release every buffer.
    virtual void shutdown() = 0;
    // First thing on the worker thread.
    virtual void started() {}
    // Around a turn JS runs on its own thread (inline driving; see drive()).
    virtual void enter() {}
    virtual void leave() {}

   protected:
    ~Body() = default;
  };

  Worker(EventQueue& events, const EngineOptions& opts)
      : events_(events),
        cpu_(opts.cpu),
        idle_spin_us_(opts.idle_spin_us),
        max_sleep_us_(opts.max_sleep_us),
        inline_(opts.drive_inline) {
    ring_.reset(new Slot[kRing]);
  }
  ~Worker() { close_wait(); }

  // Start the loop over `body`. `wait_fds`: each domain's (-1: none). Returns "" or an error.
  std::string start(Body& body, const std::vector<int>& wait_fds) {
    setup_wait(wait_fds);
    Body* b = &body;
    thread_ = std::thread([this, b] { run(*b); });
#ifdef __linux__
    // Named and pinned from here, before start() returns, so both hold when the engine exists.
    pthread_setname_np(thread_.native_handle(), "trellis-engine");
    if (cpu_ >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpu_, &set);
      if (pthread_setaffinity_np(thread_.native_handle(), sizeof(set), &set) != 0) {
        return "cannot pin the engine's worker to CPU " + std::to_string(cpu_) + " (is it online and allowed?)";
      }
    }
#endif
    return "";
  }

  // The engine's own thread (JS), the only one that may: a command into the ring, in order with
  // every other of its commands. A lock and a cache line or two fewer than push(): the handoff of a
  // single write costs about 0.15 µs instead of 1.1–1.3 (a worker spinning on another core takes the
  // lock every turn JS pushed; docs/benchmarks.md). When the ring is full the command waits in an
  // overflow queue under the lock, and so does every later one until the worker took them all.
  void push_local(Cmd&& c, bool wake_now = true) {
    if (!overflow_.load(std::memory_order_relaxed)) {
      const uint64_t t = tail_.load(std::memory_order_relaxed);
      if (t - head_seen_ < kRing || (head_seen_ = head_.load(std::memory_order_acquire), t - head_seen_ < kRing)) {
        ring_[t % kRing].c = std::move(c);
        tail_.store(t + 1, std::memory_order_seq_cst);
        if (wake_now) wake_local();
        return;
      }
    }
    {
      std::lock_guard<std::mutex> g(cmd_mu_);
      overflowed_++;
      overflow_cmds_.push_back(std::move(c));
      overflow_.store(true, std::memory_order_relaxed);
      cmds_pending_.store(true, std::memory_order_release);
    }
    if (wake_now) wake_local();
  }

  // The JS thread: many commands (a batch of writes), in order, with one wake-up.
  void push_all_local(std::vector<Cmd>& cs) {
    if (cs.empty()) return;
    for (auto& c : cs) push_local(std::move(c), false);
    wake_local();
  }

  // Any thread (a port's poster): a command into the locked queue. Its order against the JS
  // thread's commands is the order the worker sees them in: everything JS pushed before a command
  // it handed to another thread is handled first.
  void push(Cmd&& c) {
    {
      std::lock_guard<std::mutex> g(cmd_mu_);
      cmds_.push_back(std::move(c));
      cmds_pending_.store(true, std::memory_order_release);
    }
    wake();
  }

  // The JS thread: its commands that went the locked way because the ring was full.
  uint64_t overflowed() const { return overflowed_; }

  // Inline driving (EngineOptions::drive_inline): JS's polls run the worker's turn on the JS
  // thread — its commands handled and posted there, the CQs polled there, the events flushed
  // there — and the worker stays away (asleep) until JS has not polled for kDriveLeaseUs. A latency
  // loop then pays no handoff between threads: no command crossing to another core, no arrival or
  // completion coming back from one, no cache lines of the table and the CQ moving between them.
  bool drives_inline() const { return inline_; }

  // The JS thread, inline driving: JS polls (`poll`) — or, `poll` false, JS pushed a command and
  // has polled within the lease — so run a turn here. False where it did not (not within the lease;
  // or the worker held the role for kDriveWaitUs: a long turn, or stuck inside the provider): the
  // worker then takes what JS pushed, and must be woken for it (wake_js()).
  bool drive(Body& body, bool poll) {
    if (stopping_.load(std::memory_order_relaxed)) return false;  // stopped: nothing runs turns any more
    const auto now = clock::now();
    if (poll) {
      drive_ns_.store(ns(now), std::memory_order_relaxed);
    } else if (!js_drives(now)) {
      return false;
    }
    if (!take_role(now)) return false;
    body.enter();
    turn(body, now);
    body.leave();
    role_.store(false, std::memory_order_release);
    return true;
  }

  // The JS thread: a command it pushed without waking the worker (push_local(c, false)) that its
  // drive() did not take: wake the worker for it.
  void wake_js() { wake_local(); }

  // Loop iterations so far (the engine's heartbeat).
  uint64_t heartbeat() const { return heartbeat_.load(std::memory_order_relaxed); }

  // Set once the worker is told to stop.
  const std::atomic<bool>& stopping() const { return stopping_; }

  // Stop the loop and join the thread (its Body's shutdown() runs last, on it), waiting at most
  // `limit` for the thread to end (no bound when negative). A thread still running then — stuck
  // inside the provider, or in a turn that does not end — is detached and false returned: the
  // caller must leak everything the thread may still touch (see abandon()).
  bool stop(std::chrono::milliseconds limit = std::chrono::milliseconds(-1)) {
    if (!thread_.joinable()) return true;
    {
      // Under the lock: a worker about to wait has either seen it or waits already (and is woken).
      std::lock_guard<std::mutex> g(cmd_mu_);
      stopping_.store(true);
    }
    wake();
    if (limit.count() >= 0) {
      std::unique_lock<std::mutex> g(exit_mu_);
      if (!exit_cv_.wait_for(g, limit, [this] { return exited_; })) {
        g.unlock();
        thread_.detach();
        return false;
      }
    }
    thread_.join();
    return true;
  }

  // Give up on a thread stuck inside the provider: detached, never joined.
  void abandon() {
    stopping_.store(true);
    if (thread_.joinable()) thread_.detach();
  }

  // Worker, in shutdown: hand each command pushed after the last batch to `f` (JS's in its order,
  // then the other threads'), and drop them.
  template <typename F>
  void discard(F&& f) {
    std::lock_guard<std::mutex> g(cmd_mu_);
    const uint64_t t = tail_.load(std::memory_order_acquire);
    for (; head_local_ < t; head_local_++) {
      Cmd c = std::move(ring_[head_local_ % kRing].c);
      f(c);
    }
    head_.store(head_local_, std::memory_order_release);
    for (auto& c : overflow_cmds_) f(c);
    overflow_cmds_.clear();
    for (auto& c : cmds_) f(c);
    cmds_.clear();
  }

  // Close the epoll and event fds (once the thread is stopped).
  void close_wait() {
#ifdef __linux__
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    if (event_fd_ >= 0) ::close(event_fd_);
    epoll_fd_ = event_fd_ = -1;
#endif
  }

 private:
  void run(Body& body) {
    body.started();
    auto last_active = clock::now();
    bool was_driven = false;
    while (!stopping_.load(std::memory_order_relaxed)) {
      heartbeat_.fetch_add(1, std::memory_order_relaxed);
      auto now = clock::now();
      if (inline_) {
        // JS runs the turns while it polls: keep off its lines (the CQ's, the table's) until it stops.
        if (js_drives(now)) {
          wait_driven(now);
          was_driven = true;
          continue;
        }
        if (!try_role()) {
          std::this_thread::yield();  // JS is in a turn (a long one, say): look again
          continue;
        }
        if (was_driven) {
          // JS stopped polling: what it left in flight is the worker's now. Spin as after activity
          // (idleSpinUs) rather than resume the backoff of before the loop.
          was_driven = false;
          last_active = now;
          sleep_us_ = kFirstSleepUs;
        }
      }
      if (max_sleep_us_ && body.idle() && now - last_active > std::chrono::microseconds(idle_spin_us_)) {
        events_.flush(true);  // quiet arrivals too: nothing rings while it waits
        wait_idle(body);  // lets the role go before it blocks: take it again (unless JS drives now)
        now = clock::now();
        if (inline_ && !holds_role_ && (js_drives(now) || !try_role())) continue;
      }
      if (turn(body, now)) {
        last_active = now;
        sleep_us_ = kFirstSleepUs;
      }
      drop_role();
    }
    // JS is inside stop() (or abandoned us): nothing drives; the role is free or ours.
    if (inline_ && !holds_role_) {
      while (!try_role()) std::this_thread::yield();
    }
    body.shutdown();
    drop_role();
    {
      std::lock_guard<std::mutex> g(exit_mu_);
      exited_ = true;
    }
    exit_cv_.notify_all();
  }

  // One turn, by the worker or by JS driving (holding the role where inline): the commands, then
  // posts and completions, deadlines every 5 ms, and one flush of the events. Whether anything
  // happened.
  bool turn(Body& body, clock::time_point now) {
    bool active = false;
    // The lock is taken only when a command went the locked way (another thread's, or JS's
    // with the ring full): a spinning worker stays off it.
    uint64_t split = UINT64_MAX;
    if (cmds_pending_.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> g(cmd_mu_);
      batch_.swap(cmds_);
      if (!overflow_cmds_.empty()) {
        // JS's overflow comes after what it put in the ring before (nothing went into the ring
        // while it overflowed), and before what it puts there from now on.
        overflow_batch_.swap(overflow_cmds_);
        split = tail_.load(std::memory_order_acquire);
        overflow_.store(false, std::memory_order_relaxed);
      }
      cmds_pending_.store(false, std::memory_order_relaxed);
    }
    // Read after the lock: a port's post is handled after what JS pushed before handing it over.
    const uint64_t tail = tail_.load(std::memory_order_acquire);
    if (split != UINT64_MAX) {
      active |= take_ring(body, split);
      for (auto& c : overflow_batch_) body.handle(c);
      overflow_batch_.clear();
      active = true;
    }
    active |= take_ring(body, tail);
    for (auto& c : batch_) {
      body.handle(c);
      active = true;
    }
    batch_.clear();
    if (body.progress()) active = true;
    if (now - last_deadline_check_ > std::chrono::milliseconds(5)) {
      body.check_deadlines(now);
      last_deadline_check_ = now;
    }
    events_.flush();
    return active;
  }

  // -------------------------------------------------------------------------------- inline driving
  // The role: whoever holds it runs turns (the worker, or JS in drive()). A flag, not a mutex: the
  // worker only ever tries it, and JS spins at most kDriveWaitUs, so nobody sleeps on it and
  // letting it go costs a store.
  bool grab_role() { return !role_.load(std::memory_order_relaxed) && !role_.exchange(true, std::memory_order_acquire); }
  // The worker: the role, if free now.
  bool try_role() { return holds_role_ = grab_role(); }
  // The JS thread: the role, waiting up to kDriveWaitUs for a turn of the worker's to end.
  bool take_role(clock::time_point now) {
    for (uint32_t spins = 0;; spins++) {
      if (grab_role()) return true;
      if ((spins & 255) == 255 && clock::now() - now > std::chrono::microseconds(kDriveWaitUs)) return false;
    }
  }

  // The worker: let the role go, if it holds it.
  void drop_role() {
    if (!holds_role_) return;
    holds_role_ = false;
    role_.store(false, std::memory_order_release);
  }

  static int64_t ns(clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  }

  // JS polled within the lease.
  bool js_drives(clock::time_point now) const {
    const int64_t at = drive_ns_.load(std::memory_order_relaxed);
    return at != 0 && ns(now) - at < int64_t(kDriveLeaseUs) * 1000;
  }

  // The worker while JS drives: sleep until the lease would run out (a push of another thread's,
  // JS's fallback wake or stop() wakes it earlier). JS's turns take every command meanwhile.
  void wait_driven(clock::time_point now) {
    const int64_t left = int64_t(kDriveLeaseUs) * 1000 - (ns(now) - drive_ns_.load(std::memory_order_relaxed));
    if (left <= 0) return;
    std::unique_lock<std::mutex> g(cmd_mu_);
    if (stopping_.load()) return;
    sleeping_.store(true, std::memory_order_seq_cst);
    cmd_cv_.wait_for(g, std::chrono::nanoseconds(left));
    sleeping_.store(false, std::memory_order_relaxed);
  }

  // Handle the ring's commands up to `end` (moved out of their slots, so a slot holds nothing once
  // taken), then tell JS the slots are free.
  bool take_ring(Body& body, uint64_t end) {
    if (head_local_ >= end) return false;
    for (; head_local_ < end; head_local_++) {
      Cmd c = std::move(ring_[head_local_ % kRing].c);
      body.handle(c);
    }
    head_.store(head_local_, std::memory_order_release);
    return true;
  }

  bool ring_empty() const { return tail_.load(std::memory_order_seq_cst) == head_local_; }

  // After a push of JS's (its tail stored sequentially consistent, or its overflow under the lock):
  // wake a worker that blocks or sleeps. It marks itself first and then looks at the ring and the
  // overflow again, both sequentially consistent or under the lock, so either it sees the command or
  // this sees the mark.
  void wake_local() {
    ring_eventfd();
    if (sleeping_.load(std::memory_order_seq_cst)) {
      // The worker holds the lock from its mark until it waits: taking it here means it waits now.
      std::lock_guard<std::mutex> g(cmd_mu_);
      cmd_cv_.notify_one();
    }
  }

  // -------------------------------------------------------------------------------- idling
  // With a wait fd on every domain (tcp), an idle worker blocks in epoll on the CQs and an eventfd
  // that push() rings: no CPU when idle, no added latency. Otherwise (shm, efa) it sleeps at most
  // max_sleep_us between polls.
  void setup_wait(const std::vector<int>& wait_fds) {
#ifdef __linux__
    for (int fd : wait_fds)
      if (fd < 0) return;
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epoll_fd_ < 0 || event_fd_ < 0) return;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = event_fd_;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &ev);
    for (int fd : wait_fds) {
      ev.data.fd = fd;
      epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    }
    use_epoll_ = true;
#else
    (void)wait_fds;
#endif
  }

  // After a push under the lock (another thread's, or the stop flag).
  void wake() {
    ring_eventfd();
    cmd_cv_.notify_one();
  }

  // A worker blocked in epoll wakes on its eventfd.
  void ring_eventfd() {
#ifdef __linux__
    if (in_wait_.load(std::memory_order_seq_cst)) {
      uint64_t one = 1;
      ssize_t r = ::write(event_fd_, &one, sizeof one);
      (void)r;
    }
#endif
  }

  void wait_idle(Body& body) {
    std::unique_lock<std::mutex> g(cmd_mu_);
    if (!cmds_.empty() || !overflow_cmds_.empty() || stopping_.load()) return;  // a turn first
#ifdef __linux__
    if (use_epoll_ && body.may_block()) {
      in_wait_.store(true, std::memory_order_seq_cst);
      bool empty = cmds_.empty() && overflow_cmds_.empty() && ring_empty();
      g.unlock();
      bool can_block = empty && body.try_wait();
      drop_role();  // JS may drive while this blocks (its polls read the CQ: the fd may turn stale)
      if (can_block) {
        epoll_event evs[8];
        // Bounded so that deadlines are still checked.
        epoll_wait(epoll_fd_, evs, 8, 10);
        uint64_t drain;
        ssize_t r = ::read(event_fd_, &drain, sizeof drain);
        (void)r;
      }
      in_wait_.store(false, std::memory_order_seq_cst);
      return;
    }
#else
    (void)body;
#endif
    // Without a wait fd (shm, efa) incoming traffic is seen only by polling, and on shm the
    // sender's progress needs ours: sleep briefly at first, doubling while nothing happens, so a
    // short lull costs little latency and a long one little CPU.
    const uint64_t taken = head_local_;  // read while the role is held: a JS turn may move it next
    drop_role();
    sleeping_.store(true, std::memory_order_seq_cst);
    if (tail_.load(std::memory_order_seq_cst) == taken) cmd_cv_.wait_for(g, std::chrono::microseconds(sleep_us_));
    sleeping_.store(false, std::memory_order_relaxed);
    sleep_us_ = std::min(sleep_us_ * 2, std::max<uint32_t>(max_sleep_us_, kFirstSleepUs));
  }

  EventQueue& events_;
  const int cpu_;
  const uint32_t idle_spin_us_;
  const uint32_t max_sleep_us_;
  const bool inline_;

  std::mutex cmd_mu_;
  std::condition_variable cmd_cv_;
  std::vector<Cmd> cmds_;           // other threads' commands, under cmd_mu_
  std::vector<Cmd> overflow_cmds_;  // JS's while the ring was full, under cmd_mu_
  std::atomic<bool> stopping_{false};
  std::atomic<bool> sleeping_{false};  // the worker waits on cmd_cv_ (set under cmd_mu_)
  std::atomic<bool> in_wait_{false};
  std::atomic<bool> cmds_pending_{false};
  alignas(64) std::atomic<uint64_t> heartbeat_{0};  // apart from the flags JS reads on every push
  std::thread thread_;
  // Set by the thread as the last thing it does (stop()'s bounded wait).
  std::mutex exit_mu_;
  std::condition_variable exit_cv_;
  bool exited_ = false;
  int epoll_fd_ = -1, event_fd_ = -1;
  bool use_epoll_ = false;
  static constexpr uint32_t kFirstSleepUs = 8;
  // The JS thread's ring: single producer (JS), single consumer (the worker), slots reused.
  static constexpr size_t kRing = 1024;
  // Slots on lines of their own: the worker moving one out does not pull its neighbour from JS.
  struct alignas(64) Slot {
    Cmd c{CmdKind::Cancel};
  };
  std::unique_ptr<Slot[]> ring_;
  alignas(64) std::atomic<uint64_t> tail_{0};  // JS writes: the next slot it fills
  alignas(64) std::atomic<uint64_t> head_{0};  // the worker writes: the slots it has emptied
  alignas(64) uint64_t head_seen_ = 0;          // JS's last read of head_
  uint64_t overflowed_ = 0;                     // JS's: its commands pushed while the ring was full
  std::atomic<bool> overflow_{false};           // JS's commands go to overflow_cmds_ until the worker takes them
  alignas(64) uint64_t head_local_ = 0;         // the role holder's copy of head_ (the worker's, but for inline driving)
  std::vector<Cmd> batch_, overflow_batch_;      // the role holder's: a turn's commands that went the locked way
  clock::time_point last_deadline_check_ = clock::now();  // the role holder's (set here: JS may drive at once)
  uint32_t sleep_us_ = kFirstSleepUs;
  // Inline driving: the role (see try_role) and JS's last poll, apart from everything else.
  static constexpr uint32_t kDriveLeaseUs = EventQueue::kPollQuietUs;
  static constexpr uint32_t kDriveWaitUs = 2000;
  alignas(64) std::atomic<bool> role_{false};
  bool holds_role_ = false;                     // the worker's: it holds role_
  alignas(64) std::atomic<int64_t> drive_ns_{0};  // JS's: steady clock of its last poll (0: never)
};

}  // namespace trellis
