// Linked into every Trellis addon. The C++ runtime is linked in statically (TrellisAddon.cmake), and
// GCC 12's libstdc++.a names arc4random (glibc 2.36) from std::random_device, which string code
// drags in even though no Trellis code calls it. Defining it here, hidden, keeps the addon loadable
// on glibc 2.34 and 2.35 (RHEL 9, Amazon Linux 2023, Ubuntu 22.04), with the kernel's randomness.
#include <cstdint>

#include "trellis/random.hpp"

extern "C" __attribute__((visibility("hidden"))) uint32_t arc4random(void) { return trellis::random_u32(); }
