// Random 32-bit values from the kernel (getrandom(2)), for names and sequence numbers that must
// not collide between processes. Not std::random_device: with the C++ runtime linked into the
// addon, libstdc++'s implementation would tie the binary to glibc 2.36 (arc4random).
#pragma once

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>

namespace trellis {

inline uint32_t random_u32() {
  uint32_t v = 0;
  if (getrandom(&v, sizeof v, 0) == static_cast<ssize_t>(sizeof v)) return v;
  // No entropy source (a seccomp filter refusing getrandom): the clock and the process id.
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t x = static_cast<uint64_t>(ts.tv_nsec) ^ (static_cast<uint64_t>(ts.tv_sec) << 20) ^
               (static_cast<uint64_t>(getpid()) << 40);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

}  // namespace trellis
