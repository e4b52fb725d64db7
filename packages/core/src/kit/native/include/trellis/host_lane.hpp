// Trellis native engine kit — the host half of the same-host lane: host regions in shared
// mappings, and a copy thread.
//
// A remote host region the engine allocates lives in a POSIX shared-memory object
// (`/dev/shm/trellis-<pid>-<random>-<dev>`), so a writer on the same host can map it and copy into
// it with one memcpy instead of going through a provider (libfabric shm copies through its own
// buffers or the kernel). The owner unlinks the name when the region is unregistered; a writer
// that mapped it sees the link count drop to zero (fstat) and refuses to write there, as a NIC
// refuses a stale key. A writer that first looks after the unlink finds no such name: `<dev>`, the
// owner's /dev/shm device, tells that apart from a writer that sees another /dev/shm (a container
// of its own on the same host), which takes the provider instead.
//
// HostCopier: one thread per engine running memcpy jobs, in order within a queue (one per target
// region), the queues taking turns a slice at a time; after each job it stores the job's sequence
// number into its queue's 64-bit signal word with release semantics. The engine's worker
// polls that word (a quiet watch) and posts the write's immediates once it arrives — the same
// armed-write path as the GPU lane, with a CPU thread in place of a CUDA stream. Unmapping goes
// through the same queue, so a mapping is never removed under a copy.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <deque>
#include <map>
#include <ctime>
#include <mutex>
#include "random.hpp"
#include <string>
#include <thread>
#include <vector>

namespace trellis {

// A shared-memory object created for a region: its name and mapping, and an fd held open with a
// shared lock for as long as the region lives — the mark of a live owner (see shared_sweep).
struct SharedAlloc {
  std::string name;  // "/trellis-<pid>-<hex>-<dev hex>", as shm_open takes it
  void* addr = nullptr;
  size_t len = 0;
  int fd = -1;
};

// Objects left behind by owners that died without unlinking them (SIGKILL, a crash) hold host
// memory until reboot. Remove the ones no live process holds: an owner keeps a shared flock on its
// objects for their lifetime, and the kernel drops it when the owner dies, so an object on which an
// exclusive lock can be taken has no owner. Objects younger than a minute are left alone (their
// creator may not have locked them yet). Runs once per process, before its first object.
inline void shared_sweep() {
  DIR* d = opendir("/dev/shm");
  if (!d) return;
  time_t now = time(nullptr);
  while (dirent* e = readdir(d)) {
    if (std::strncmp(e->d_name, "trellis-", 8) != 0) continue;
    std::string name = std::string("/") + e->d_name;
    int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) continue;
    struct stat st {};
    if (fstat(fd, &st) == 0 && now - st.st_mtime > 60 && flock(fd, LOCK_EX | LOCK_NB) == 0) shm_unlink(name.c_str());
    close(fd);  // drops our lock too
  }
  closedir(d);
}

// The device of the /dev/shm this process sees (0 where it has none).
inline uint64_t shm_dir_dev() {
  struct stat st {};
  return stat("/dev/shm", &st) == 0 ? static_cast<uint64_t>(st.st_dev) : 0;
}

// The /dev/shm device a name was created on (its last field, hex), or 0 for a name without one.
inline uint64_t shared_name_dev(const std::string& name) {
  size_t dash = name.rfind('-');
  // "/trellis-<pid>-<16 hex>-<dev>": three dashes; older names have two and no device.
  if (dash == std::string::npos || std::count(name.begin(), name.end(), '-') != 3) return 0;
  return std::strtoull(name.c_str() + dash + 1, nullptr, 16);
}

// Create and map a shared-memory object of `len` bytes (zeroed by the kernel); false with `err`.
inline bool shared_alloc(size_t len, SharedAlloc* out, std::string* err) {
  static std::once_flag swept;
  std::call_once(swept, shared_sweep);
  char name[64];
  std::snprintf(name, sizeof name, "/trellis-%d-%08x%08x-%llx", static_cast<int>(getpid()), random_u32(), random_u32(),
                static_cast<unsigned long long>(shm_dir_dev()));
  int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    *err = std::string("shm_open: ") + std::strerror(errno);
    return false;
  }
  size_t size = len ? len : 1;
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    *err = std::string("ftruncate of the shared-memory object (is /dev/shm large enough?): ") + std::strerror(errno);
    close(fd);
    shm_unlink(name);
    return false;
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED || flock(fd, LOCK_SH) != 0) {
    *err = std::string(p == MAP_FAILED ? "mmap: " : "flock: ") + std::strerror(errno);
    if (p != MAP_FAILED) munmap(p, size);
    close(fd);
    shm_unlink(name);
    return false;
  }
  out->name = name;
  out->addr = p;
  out->len = size;
  out->fd = fd;
  return true;
}

// What a writer finds of a mapped region's owner before each write.
enum class SharedOwner : uint32_t {
  Alive = 0,         // the region is registered and its owner holds it
  Unregistered = 1,  // the owner unlinked the name (unregister, close)
  Gone = 2,          // the name is linked but nobody holds the owner's lock: the owner died
};

// A peer's region mapped here: the fd stays open for the owner checks.
struct SharedMapping {
  int fd = -1;
  void* addr = nullptr;
  size_t len = 0;
  // An owner holds a shared flock on its object from creation, and unlinks the name before it lets
  // the lock go (unregister, close, garbage collection); the kernel drops the lock when the owner
  // dies without unlinking (SIGKILL, a crash). So: the lock is probed first, the link count read
  // after — a free lock with the name still linked after it means the owner died. (A probe that
  // meets another process's probe or shared_sweep reads as alive, and the next write looks again.)
  SharedOwner owner() const {
    if (fd < 0) return SharedOwner::Unregistered;
    bool free_lock = flock(fd, LOCK_EX | LOCK_NB) == 0;
    if (free_lock) flock(fd, LOCK_UN);
    struct stat st {};
    if (fstat(fd, &st) != 0 || st.st_nlink == 0) return SharedOwner::Unregistered;
    return free_lock ? SharedOwner::Gone : SharedOwner::Alive;
  }
};

// Map a same-host peer's region; false with `err`, and `*unlinked` set when the name is gone from
// the very /dev/shm its owner created it on (the region was unregistered, or its owner exited).
inline bool shared_map(const std::string& name, SharedMapping* out, std::string* err, bool* unlinked = nullptr) {
  if (unlinked) *unlinked = false;
  if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos) {
    *err = "not a shared-memory object name";
    return false;
  }
  int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) {
    int e = errno;
    *err = std::string("shm_open ") + name + ": " + std::strerror(e);
    uint64_t dev = shared_name_dev(name);
    if (unlinked && e == ENOENT && dev != 0 && dev == shm_dir_dev()) *unlinked = true;
    return false;
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size <= 0) {
    *err = std::string("fstat ") + name + ": " + std::strerror(errno);
    close(fd);
    return false;
  }
  void* p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    *err = std::string("mmap ") + name + ": " + std::strerror(errno);
    close(fd);
    return false;
  }
  out->fd = fd;
  out->addr = p;
  out->len = static_cast<size_t>(st.st_size);
  return true;
}

class HostCopier {
 public:
  HostCopier() : thread_([this] { run(); }) {}
  ~HostCopier() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();  // after every queued job
  }

  // Copy each (dst, src, bytes) triple in order, then store `value` into `*signal` (release). Jobs
  // of one `queue` run in order; queues take turns a slice at a time, so one target's large writes
  // do not hold another's back.
  void copy(uint64_t queue, std::vector<uint64_t> triples, volatile uint64_t* signal, uint64_t value) {
    push(queue, Job{std::move(triples), signal, value, SharedMapping{}});
  }
  // Unmap (and close) `m` once every copy queued before on `queue` has run.
  void unmap(uint64_t queue, SharedMapping m) { push(queue, Job{{}, nullptr, 0, m}); }

  // Bytes a queue copies before the next queue's turn.
  static constexpr size_t kSlice = 1 << 20;

 private:
  struct Job {
    std::vector<uint64_t> triples;
    volatile uint64_t* signal;
    uint64_t value;
    SharedMapping unmap;
    size_t at = 0;    // the triple in progress
    size_t done = 0;  // bytes of it copied
  };
  void push(uint64_t queue, Job j) {
    {
      std::lock_guard<std::mutex> g(mu_);
      queues_[queue].push_back(std::move(j));
      pending_++;
    }
    cv_.notify_one();
  }
  // One slice of the front job of `q`; true when that job is finished.
  static bool step(Job& j) {
    size_t budget = kSlice;
    while (j.at + 2 < j.triples.size() && budget > 0) {
      size_t n = static_cast<size_t>(j.triples[j.at + 2]);
      size_t take = std::min(n - j.done, budget);
      std::memcpy(reinterpret_cast<uint8_t*>(j.triples[j.at]) + j.done,
                  reinterpret_cast<const uint8_t*>(j.triples[j.at + 1]) + j.done, take);
      j.done += take;
      budget -= take;
      if (j.done == n) {
        j.at += 3;
        j.done = 0;
      }
    }
    if (j.at + 2 < j.triples.size()) return false;
    if (j.signal) __atomic_store_n(j.signal, j.value, __ATOMIC_RELEASE);
    if (j.unmap.addr) {
      munmap(j.unmap.addr, j.unmap.len);
      close(j.unmap.fd);
    }
    return true;
  }
  void run() {
    std::unique_lock<std::mutex> g(mu_);
    uint64_t last = 0;
    bool any = false;
    for (;;) {
      cv_.wait(g, [this] { return stop_ || pending_ > 0; });
      if (pending_ == 0) return;  // stopping, nothing left
      // The next queue after the last one served (round robin by key).
      auto it = any ? queues_.upper_bound(last) : queues_.begin();
      if (it == queues_.end()) it = queues_.begin();
      last = it->first;
      any = true;
      Job* j = &it->second.front();
      g.unlock();
      bool finished = step(*j);
      g.lock();
      if (finished) {
        auto q = queues_.find(last);
        q->second.pop_front();
        pending_--;
        if (q->second.empty()) queues_.erase(q);
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, std::deque<Job>> queues_;  // deque: the front job stays put while others are pushed
  size_t pending_ = 0;
  bool stop_ = false;
  std::thread thread_;  // last: started once the rest is initialised
};

}  // namespace trellis
