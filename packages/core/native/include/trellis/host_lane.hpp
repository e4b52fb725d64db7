// Trellis native engine kit — the host half of the same-host lane: host regions in shared
// mappings, and a copy thread.
//
// A remote host region the engine allocates lives in a POSIX shared-memory object
// (`/dev/shm/trellis-<pid>-<random>`), so a writer on the same host can map it and copy into it
// with one memcpy instead of going through a provider (libfabric shm copies through its own
// buffers or the kernel). The owner unlinks the name when the region is unregistered; a writer
// that mapped it sees the link count drop to zero (fstat) and refuses to write there, as a NIC
// refuses a stale key.
//
// HostCopier: one thread per engine running memcpy jobs in order; after each job it stores the
// job's sequence number into a 64-bit signal word with release semantics. The engine's worker
// polls that word (a quiet watch) and posts the write's immediates once it arrives — the same
// armed-write path as the GPU lane, with a CPU thread in place of a CUDA stream. Unmapping goes
// through the same queue, so a mapping is never removed under a copy.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace trellis {

// A shared-memory object created for a region: its name and mapping.
struct SharedAlloc {
  std::string name;  // "/trellis-<pid>-<hex>", as shm_open takes it
  void* addr = nullptr;
  size_t len = 0;
};

// Create and map a shared-memory object of `len` bytes (zeroed by the kernel); false with `err`.
inline bool shared_alloc(size_t len, SharedAlloc* out, std::string* err) {
  std::random_device rd;
  char name[64];
  std::snprintf(name, sizeof name, "/trellis-%d-%08x%08x", static_cast<int>(getpid()), rd(), rd());
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
  close(fd);
  if (p == MAP_FAILED) {
    *err = std::string("mmap: ") + std::strerror(errno);
    shm_unlink(name);
    return false;
  }
  out->name = name;
  out->addr = p;
  out->len = size;
  return true;
}

// A peer's region mapped here: the fd stays open for the link-count check.
struct SharedMapping {
  int fd = -1;
  void* addr = nullptr;
  size_t len = 0;
  // The owner has not unlinked it (its region is still registered).
  bool alive() const {
    struct stat st {};
    return fd >= 0 && fstat(fd, &st) == 0 && st.st_nlink > 0;
  }
};

inline bool shared_map(const std::string& name, SharedMapping* out, std::string* err) {
  if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos) {
    *err = "not a shared-memory object name";
    return false;
  }
  int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) {
    *err = std::string("shm_open ") + name + ": " + std::strerror(errno);
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

  // Copy each (dst, src, bytes) triple in order, then store `value` into `*signal` (release).
  void copy(std::vector<uint64_t> triples, volatile uint64_t* signal, uint64_t value) {
    push(Job{std::move(triples), signal, value, SharedMapping{}});
  }
  // Unmap (and close) `m` once every copy queued before has run.
  void unmap(SharedMapping m) { push(Job{{}, nullptr, 0, m}); }

 private:
  struct Job {
    std::vector<uint64_t> triples;
    volatile uint64_t* signal;
    uint64_t value;
    SharedMapping unmap;
  };
  void push(Job j) {
    {
      std::lock_guard<std::mutex> g(mu_);
      jobs_.push_back(std::move(j));
    }
    cv_.notify_one();
  }
  void run() {
    std::unique_lock<std::mutex> g(mu_);
    for (;;) {
      cv_.wait(g, [this] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, nothing left
      Job j = std::move(jobs_.front());
      jobs_.pop_front();
      g.unlock();
      for (size_t i = 0; i + 2 < j.triples.size(); i += 3)
        std::memcpy(reinterpret_cast<void*>(j.triples[i]), reinterpret_cast<const void*>(j.triples[i + 1]),
                    static_cast<size_t>(j.triples[i + 2]));
      if (j.signal) __atomic_store_n(j.signal, j.value, __ATOMIC_RELEASE);
      if (j.unmap.addr) {
        munmap(j.unmap.addr, j.unmap.len);
        close(j.unmap.fd);
      }
      g.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stop_ = false;
  std::thread thread_;  // last: started once the rest is initialised
};

}  // namespace trellis
