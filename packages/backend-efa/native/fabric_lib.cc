#include "fabric_lib.hpp"

#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>

#include <vector>

#include "fabric_search.h"

namespace trellis_efa {

namespace {

constexpr const char* kInstallHint =
    "install libfabric (Debian/Ubuntu: apt install libfabric1; RHEL/Fedora: dnf install libfabric; AWS: the EFA "
    "installer, /opt/amazon/efa), or set TRELLIS_LIBFABRIC_DIR to the prefix of a libfabric install";

// The host process's signals are not the library's. Some providers' libraries install handlers
// as libfabric loads or initialises them — Intel PSM's libinfinipath, which Debian's libfabric 1.17
// links, takes SIGTERM, SIGINT, SIGSEGV, SIGBUS, SIGILL and SIGABRT with a handler that calls exit():
// a process with an engine then hung on SIGTERM (exit() from the handler crashed in the exit
// handlers, and the handler's second exit() waited on the first one's lock for ever), and Node's
// own handlers (stdio reset on SIGINT/SIGTERM, V8's WebAssembly traps on SIGSEGV) were replaced.
// Every disposition a call into libfabric changes is put back as it returns.
class SignalGuard {
 public:
  SignalGuard() {
    for (int s = 1; s < NSIG; s++) ok_[s] = s != SIGKILL && s != SIGSTOP && sigaction(s, nullptr, &saved_[s]) == 0;
  }
  ~SignalGuard() {
    for (int s = 1; s < NSIG; s++) {
      struct sigaction now {};
      if (!ok_[s] || sigaction(s, nullptr, &now) != 0) continue;
      if (now.sa_sigaction != saved_[s].sa_sigaction || now.sa_flags != saved_[s].sa_flags)
        sigaction(s, &saved_[s], nullptr);
    }
  }
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;

 private:
  struct sigaction saved_[NSIG] {};
  bool ok_[NSIG] = {};
};

decltype(&::fi_getinfo) real_getinfo = nullptr;
decltype(&::fi_getparams) real_getparams = nullptr;

// fi_getinfo and fi_getparams initialise the providers on their first call (fi_ini).
int guarded_getinfo(uint32_t version, const char* node, const char* service, uint64_t flags,
                    const struct fi_info* hints, struct fi_info** info) {
  SignalGuard g;
  return real_getinfo(version, node, service, flags, hints, info);
}

int guarded_getparams(struct fi_param** params, int* count) {
  SignalGuard g;
  return real_getparams(params, count);
}

template <typename F>
void bind(void* h, const char* name, F* out, std::string* missing) {
  // The library's default version of each symbol: its newest structure layout, whose leading
  // fields are the ones these headers know.
  *out = reinterpret_cast<F>(dlsym(h, name));
  if (!*out) *missing += (missing->empty() ? "" : ", ") + std::string(name);
}

FabricLib load() {
  FabricLib lib;
  std::vector<std::string> candidates;
  const char* dir = getenv(TRELLIS_FABRIC_ENV);
  bool explicit_dir = dir && *dir;
  for (int i = 0; i < TRELLIS_FABRIC_CANDIDATES; i++)
    candidates.push_back(explicit_dir ? std::string(dir) + trellis_fabric_under_prefix[i] : trellis_fabric_default[i]);
  void* h = nullptr;
  std::string tried;
  for (auto& c : candidates) {
    SignalGuard g;  // libraries' constructors run here
    h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h) break;
    const char* e = dlerror();
    tried += (tried.empty() ? "" : "; ") + std::string(e ? e : c);
  }
  if (!h) {
    lib.error = explicit_dir ? "no libfabric.so.1 under TRELLIS_LIBFABRIC_DIR=" + std::string(dir) + " (" + tried +
                                   "): point it at a libfabric install prefix (the folder holding lib/libfabric.so.1)"
                             : "libfabric.so.1 could not be loaded (" + tried + "): " + kInstallHint;
    return lib;
  }
  std::string missing;
  bind(h, "fi_getinfo", &lib.getinfo, &missing);
  bind(h, "fi_freeinfo", &lib.freeinfo, &missing);
  bind(h, "fi_dupinfo", &lib.dupinfo, &missing);
  bind(h, "fi_fabric", &lib.fabric, &missing);
  bind(h, "fi_strerror", &lib.strerror, &missing);
  bind(h, "fi_version", &lib.version, &missing);
  bind(h, "fi_getparams", &lib.getparams, &missing);
  bind(h, "fi_freeparams", &lib.freeparams, &missing);
  Dl_info info{};
  if (lib.version && dladdr(reinterpret_cast<void*>(lib.version), &info) && info.dli_fname) {
    char real[PATH_MAX];
    lib.path = realpath(info.dli_fname, real) ? real : info.dli_fname;
  }
  if (!missing.empty()) {
    lib.error = "the libfabric at " + lib.path + " lacks " + missing + ": " + kInstallHint + " (1.15 or later)";
    return lib;
  }
  real_getinfo = lib.getinfo;
  real_getparams = lib.getparams;
  lib.getinfo = guarded_getinfo;
  lib.getparams = guarded_getparams;
  lib.ok = true;
  // Kept open for the life of the process: providers' threads and memory hooks live in it.
  return lib;
}

}  // namespace

const FabricLib& FabricLib::get() {
  static const FabricLib lib = load();
  return lib;
}

}  // namespace trellis_efa
