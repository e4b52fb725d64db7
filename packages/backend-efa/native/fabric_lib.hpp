// libfabric, opened at run time. The addon links no libfabric: one binary serves Debian's 1.17, the
// EFA installer's and any 2.x, and loads (and says what to install) where none is present.
//
// Only eight functions are exported symbols; everything else in libfabric's API is an inline call
// through the objects' operation tables. The addon is compiled against the oldest headers it
// supports (1.15+) and asks for that API version in fi_getinfo, so the library keeps to the
// structure layouts of that version (they only ever grow at the end).
#pragma once

#include <rdma/fabric.h>
#include <rdma/fi_errno.h>

#include <string>

namespace trellis_efa {

struct FabricLib {
  bool ok = false;
  // Why it could not be loaded, with what to install; empty when ok.
  std::string error;
  // The file it was loaded from (its real path).
  std::string path;

  decltype(&::fi_getinfo) getinfo = nullptr;
  decltype(&::fi_freeinfo) freeinfo = nullptr;
  decltype(&::fi_dupinfo) dupinfo = nullptr;
  decltype(&::fi_fabric) fabric = nullptr;
  decltype(&::fi_strerror) strerror = nullptr;
  decltype(&::fi_version) version = nullptr;
  decltype(&::fi_getparams) getparams = nullptr;
  decltype(&::fi_freeparams) freeparams = nullptr;

  // Loaded once, on first use: $TRELLIS_LIBFABRIC_DIR (an install prefix: its lib/ or lib64/) when
  // set and nothing else; otherwise libfabric.so.1 from the loader's search path (LD_LIBRARY_PATH,
  // ld.so.cache), then the EFA installer's /opt/amazon/efa.
  static const FabricLib& get();
};

}  // namespace trellis_efa
