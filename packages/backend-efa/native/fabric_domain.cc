#include "fabric_domain.hpp"

#include <algorithm>

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <strings.h>
#include <atomic>
#include <mutex>
#include "trellis/random.hpp"

#include "fabric_lib.hpp"
#include "trellis/cuda_driver.hpp"

namespace trellis_efa {

using trellis::CudaDriver;
using trellis::Code;
using trellis::CompKind;
using trellis::Completion;

namespace {

constexpr uint32_t kApiVersion = FI_VERSION(1, 15);

std::string fi_err(int rc) { return std::string(FabricLib::get().strerror(rc < 0 ? -rc : rc)) + " (" + std::to_string(rc) + ")"; }

// shm names its shared-memory region after the process id by default. A process killed with
// SIGKILL leaves its region in /dev/shm, and a later process that gets the same pid cannot enable
// its endpoint (EBUSY). Trellis names regions trellis_<pid>_<random>_<n> instead, and removes
// those of processes that no longer exist.
uint64_t shm_nonce() {
  static const uint64_t nonce = trellis::random_u32() ^ (static_cast<uint64_t>(trellis::random_u32()) << 32);
  return nonce;
}

// A process that exits without closing its engines (process.exit(), a signal handler that exits)
// unlinks its own endpoints' regions on the way out: libfabric's destructors do not, and the sweep
// above runs only when the next Trellis process opens an shm endpoint.
void unlink_own_shm() {
  char prefix[64];
  snprintf(prefix, sizeof prefix, "trellis_%d_%016llx_", static_cast<int>(getpid()),
           static_cast<unsigned long long>(shm_nonce()));
  const size_t n = strlen(prefix);
  DIR* d = opendir("/dev/shm");
  if (!d) return;
  while (dirent* e = readdir(d)) {
    if (strncmp(e->d_name, prefix, n) != 0) continue;
    std::string path = std::string("/dev/shm/") + e->d_name;
    unlink(path.c_str());
  }
  closedir(d);
}

std::string shm_name() {
  static std::atomic<unsigned> counter{0};
  static std::once_flag hooked;
  std::call_once(hooked, [] { std::atexit(unlink_own_shm); });
  const uint64_t nonce = shm_nonce();
  char buf[96];
  snprintf(buf, sizeof buf, "fi_shm://trellis_%d_%016llx_%u", static_cast<int>(getpid()),
           static_cast<unsigned long long>(nonce), counter.fetch_add(1));
  return buf;
}

void sweep_stale_shm() {
  DIR* d = opendir("/dev/shm");
  if (!d) return;
  while (dirent* e = readdir(d)) {
    int pid = 0;
    if (sscanf(e->d_name, "trellis_%d_", &pid) != 1 || pid <= 0) continue;
    if (kill(pid, 0) == 0 || errno != ESRCH) continue;
    std::string path = std::string("/dev/shm/") + e->d_name;
    unlink(path.c_str());
  }
  closedir(d);
}

fi_info* make_hints(const std::string& prov, bool delivery_complete, bool hmem = false) {
  fi_info* h = FabricLib::get().dupinfo(nullptr);  // fi_allocinfo()
  h->caps = FI_MSG | FI_RMA | FI_SEND | FI_RECV | FI_WRITE | FI_REMOTE_WRITE | (hmem ? FI_HMEM : 0);
  // Contexts are 64 bytes reserved at the start of every posting context (see domain_group.hpp).
  h->mode = FI_CONTEXT | FI_CONTEXT2;
  h->ep_attr->type = FI_EP_RDM;
  h->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT | (hmem ? FI_MR_HMEM : 0);
  h->domain_attr->threading = FI_THREAD_DOMAIN;
  h->tx_attr->op_flags = delivery_complete ? FI_DELIVERY_COMPLETE : 0;
  if (!prov.empty()) h->fabric_attr->prov_name = strdup(prov.c_str());
  if (prov == "shm") {
    std::string name = shm_name();
    h->addr_format = FI_ADDR_STR;
    h->src_addr = strdup(name.c_str());
    h->src_addrlen = name.size() + 1;
  }
  return h;
}

}  // namespace

std::string fabric_version() {
  const FabricLib& lib = FabricLib::get();
  if (!lib.ok) return "";
  uint32_t v = lib.version();
  return std::to_string(FI_MAJOR(v)) + "." + std::to_string(FI_MINOR(v));
}

std::string fabric_library() { return FabricLib::get().path; }

bool fabric_has_cuda() {
  // libfabric defines its CUDA parameters only when built with CUDA (Debian's 1.17 is not; its shm
  // still reports FI_HMEM, for system memory alone).
  static const bool has = [] {
    fi_param* params = nullptr;
    int count = 0;
    const FabricLib& lib = FabricLib::get();
    if (!lib.ok || lib.getparams(&params, &count) != 0) return false;
    bool found = false;
    for (int i = 0; i < count; i++)
      if (params[i].name && strcasecmp(params[i].name, "FI_HMEM_CUDA_USE_GDRCOPY") == 0) found = true;
    lib.freeparams(params);
    return found;
  }();
  return has;
}

std::vector<ProviderProbe> probe_providers() {
  std::vector<ProviderProbe> out;
  for (const char* p : {"efa", "shm", "tcp;ofi_rxm"}) {
    ProviderProbe pr;
    pr.provider = p;
    fi_info* info = nullptr;
    // With FI_HMEM first (GPU memory registered directly), then without.
    int rc = -FI_ENODATA;
    for (bool hmem : {true, false}) {
      fi_info* hints = make_hints(p, false, hmem);
      rc = FabricLib::get().getinfo(kApiVersion, nullptr, nullptr, 0, hints, &info);
      FabricLib::get().freeinfo(hints);
      if (rc == 0) break;
    }
    if (rc) {
      pr.error = fi_err(rc);
    } else {
      pr.fabric = info->fabric_attr->name ? info->fabric_attr->name : "";
      pr.domain = info->domain_attr->name ? info->domain_attr->name : "";
      pr.rma = (info->caps & FI_RMA) != 0;
      pr.remote_cq_data = info->domain_attr->cq_data_size >= 4;
      pr.hmem = (info->caps & FI_HMEM) != 0 && fabric_has_cuda();
      FabricLib::get().freeinfo(info);
    }
    out.push_back(pr);
  }
  return out;
}

std::unique_ptr<FabricDomain> FabricDomain::open(const FabricOptions& opts, std::string* err) {
  const FabricLib& lib = FabricLib::get();
  if (!lib.ok) {
    *err = lib.error;
    return nullptr;
  }
  if (lib.version() < kApiVersion) {
    *err = "libfabric " + fabric_version() + " is too old: Trellis needs >= 1.15 (Debian 12: apt install libfabric1)";
    return nullptr;
  }
  std::unique_ptr<FabricDomain> d(new FabricDomain());
  if (opts.provider == "shm") {
    static std::once_flag swept;
    std::call_once(swept, sweep_stale_shm);
  }
  fi_info* info = nullptr;
  int rc = 0;
  // Prefer delivery-complete writes (the bytes are at the target when the write completes); a
  // provider without it completes at transmit and the promise contract is then weaker.
  // FI_HMEM first (CUDA memory then registers directly: shm's CUDA IPC, GPUDirect on efa), where
  // the library was built with it (Debian's 1.17 was not); host memory works either way.
  // Only where it can serve CUDA memory: FI_HMEM changes how some providers move host bytes too.
  const bool want_hmem = opts.hmem && fabric_has_cuda() && CudaDriver::get().ok;
  for (bool hmem : {want_hmem, false}) {
    for (bool dc : {true, false}) {
      fi_info* hints = make_hints(opts.provider, dc, hmem);
      rc = lib.getinfo(kApiVersion, opts.iface.empty() ? nullptr : opts.iface.c_str(), nullptr, 0, hints, &info);
      lib.freeinfo(hints);
      if (rc == 0) {
        d->write_flags_ = dc ? FI_DELIVERY_COMPLETE : 0;
        break;
      }
    }
    if (rc == 0 || !want_hmem) break;
  }
  if (rc) {
    *err = "libfabric provider '" + opts.provider + "' is not available with RDM endpoints, FI_RMA and FI_REMOTE_CQ_DATA: " +
           fi_err(rc) + " (see `fi_info -l` for the providers on this host)";
    return nullptr;
  }
  // One info per domain (NIC); pick the opts.index-th of the first provider found.
  std::vector<fi_info*> list;
  for (fi_info* i = info; i; i = i->next) {
    if (list.empty() || std::strcmp(i->fabric_attr->prov_name, list[0]->fabric_attr->prov_name) == 0) list.push_back(i);
  }
  fi_info* chosen = list[static_cast<size_t>(opts.index) % list.size()];
  if (chosen->domain_attr->cq_data_size < 4) {
    *err = "provider '" + std::string(chosen->fabric_attr->prov_name) + "' carries only " +
           std::to_string(chosen->domain_attr->cq_data_size) + " bytes of remote CQ data; 4 are needed for immediates";
    lib.freeinfo(info);
    return nullptr;
  }
  d->info_ = lib.dupinfo(chosen);
  lib.freeinfo(info);
  d->provider_ = d->info_->fabric_attr->prov_name;
  d->mr_mode_ = d->info_->domain_attr->mr_mode;
  d->max_msg_ = d->info_->ep_attr->max_msg_size;
  d->queue_depth_ = d->info_->tx_attr ? static_cast<uint32_t>(std::min<size_t>(d->info_->tx_attr->size, 1u << 30)) : 0;
  d->zero_needs_byte_ = d->provider_ == "shm";
  // Keys this domain asks for (providers that take requested keys: tcp and shm) start at a random
  // value. tcp addresses are host:port and a restarted process can get its old ports back; with
  // keys counted from 1 its regions had the keys of the old process's (and its sink the old
  // sink's), so writes and immediates meant for the dead process landed in the new one. Now they
  // are refused (REMOTE_ACCESS). Random high 32 bits, the low ones counted.
  if (!(d->mr_mode_ & FI_MR_PROV_KEY) && d->info_->domain_attr->mr_key_size >= 8) {
    uint64_t hi = 0;
    while (!hi) hi = trellis::random_u32() & 0x7fffffffu;  // below 2^63: a signed reading stays positive
    d->next_key_ = (hi << 32) | 1;
  }
  // GPU memory registers directly only where the provider took FI_HMEM and a CUDA driver exists
  // (the fence below needs it); elsewhere CUDA regions are staged by the engine.
  d->hmem_ = (d->info_->caps & FI_HMEM) != 0 && fabric_has_cuda() && CudaDriver::get().ok;

  auto fail = [&](const char* what, int r) -> std::unique_ptr<FabricDomain> {
    *err = std::string(what) + " failed on provider '" + d->provider_ + "': " + fi_err(r);
    return nullptr;
  };
  if ((rc = lib.fabric(d->info_->fabric_attr, &d->fabric_, nullptr))) return fail("fi_fabric", rc);
  if ((rc = fi_domain(d->fabric_, d->info_, &d->domain_, nullptr))) return fail("fi_domain", rc);
  fi_av_attr av_attr{};
  av_attr.type = FI_AV_TABLE;
  if ((rc = fi_av_open(d->domain_, &av_attr, &d->av_, nullptr))) return fail("fi_av_open", rc);
  // A CQ with a file descriptor lets an idle engine block instead of polling; not every
  // provider has one (then FI_WAIT_NONE and the engine polls with short sleeps).
  auto open_cq = [&](fid_cq** cq, int* fd, bool want_fd) -> int {
    fi_cq_attr cq_attr{};
    cq_attr.format = FI_CQ_FORMAT_DATA;
    cq_attr.size = 0;
    if (want_fd) {
      cq_attr.wait_obj = FI_WAIT_FD;
      if (fi_cq_open(d->domain_, &cq_attr, cq, nullptr) == 0) {
        if (fi_control(&(*cq)->fid, FI_GETWAIT, fd) == 0 && *fd >= 0) return 0;
        fi_close(&(*cq)->fid);
        *cq = nullptr;
      }
    }
    *fd = -1;
    cq_attr.wait_obj = FI_WAIT_NONE;
    return fi_cq_open(d->domain_, &cq_attr, cq, nullptr);
  };
  if ((rc = open_cq(&d->cq_, &d->wait_fd_, true))) return fail("fi_cq_open", rc);
  auto open_ep = [&](fid_ep** ep, fid_cq* cq) -> int {
    int r;
    if ((r = fi_endpoint(d->domain_, d->info_, ep, nullptr))) return r;
    if ((r = fi_ep_bind(*ep, &d->av_->fid, 0))) return r;
    if ((r = fi_ep_bind(*ep, &cq->fid, FI_TRANSMIT | FI_RECV))) return r;
    return fi_enable(*ep);
  };
  if ((rc = open_ep(&d->ep_, d->cq_))) return fail("opening the endpoint", rc);
  // Connection-based providers get a second endpoint for what peers send here (see in_ep_). Not
  // where registrations bind to one endpoint (FI_MR_ENDPOINT): remote keys must serve both.
  if (d->provider_.find("tcp") != std::string::npos && !(d->mr_mode_ & FI_MR_ENDPOINT)) {
    if ((rc = open_cq(&d->in_cq_, &d->in_wait_fd_, d->wait_fd_ >= 0))) return fail("fi_cq_open", rc);
    if ((rc = open_ep(&d->in_ep_, d->in_cq_))) return fail("opening the target endpoint", rc);
  }
  size_t len = 0;
  fid* named = &d->rx_ep()->fid;
  fi_getname(named, nullptr, &len);
  d->name_.resize(len);
  if ((rc = fi_getname(named, d->name_.data(), &len))) return fail("fi_getname", rc);
  d->name_.resize(len);
  d->sink_.assign(64, 0);
  std::string msg;
  if ((rc = d->reg(d->sink_.data(), d->sink_.size(), true, &d->sink_mr_, &msg))) {
    *err = "registering the immediate sink: " + msg;
    return nullptr;
  }
  if (d->provider_ == "shm") d->shm_counted_ = shm_opened();
  return d;
}

namespace {
// libfabric's shm provider hands endpoints of one process each other's region pointers directly
// (its ep_name_list) instead of mapping them, and unmaps a region when its endpoint closes: a
// peer endpoint of the same process still progressing a response or a return into it then reads
// and writes unmapped memory (a segfault in fi_cq_read). So an shm endpoint's resources are kept
// until no shm domain of this process is open any more, then closed together.
struct Held {
  fid_ep* ep;
  fid_ep* in_ep;
  fid_mr* sink_mr;
  fid_av* av;
  fid_cq* cq;
  fid_cq* in_cq;
  fid_domain* domain;
  fid_fabric* fabric;
  fi_info* info;
  std::vector<uint8_t> sink;
};
std::mutex g_shm_mu;
int g_shm_open = 0;
std::vector<Held>& shm_held() {
  static std::vector<Held> v;
  return v;
}
void close_held(Held& h) {
  if (h.ep) fi_close(&h.ep->fid);
  if (h.in_ep) fi_close(&h.in_ep->fid);
  if (h.sink_mr) fi_close(&h.sink_mr->fid);
  if (h.av) fi_close(&h.av->fid);
  if (h.cq) fi_close(&h.cq->fid);
  if (h.in_cq) fi_close(&h.in_cq->fid);
  if (h.domain) fi_close(&h.domain->fid);
  if (h.fabric) fi_close(&h.fabric->fid);
  if (h.info) FabricLib::get().freeinfo(h.info);
}
}  // namespace

bool FabricDomain::shm_opened() {
  std::lock_guard<std::mutex> g(g_shm_mu);
  g_shm_open++;
  return true;
}

FabricDomain::~FabricDomain() {
  if (!fences_.empty() || !spare_events_.empty()) {
    CudaDriver& cu = CudaDriver::get();
    for (auto& f : fences_) cu.cuEventDestroy(f.event);
    for (void* e : spare_events_) cu.cuEventDestroy(e);
  }
  Held h{ep_,     in_ep_,  static_cast<fid_mr*>(sink_mr_.handle), av_, cq_, in_cq_, domain_,
         fabric_, info_, std::move(sink_)};
  if (!shm_counted_) {
    close_held(h);
    return;
  }
  std::vector<Held> release;
  {
    std::lock_guard<std::mutex> g(g_shm_mu);
    shm_held().push_back(std::move(h));
    if (--g_shm_open == 0) release.swap(shm_held());
  }
  for (auto& r : release) close_held(r);
}

// [u16 name length][endpoint name][u64 sink address][u64 sink key]
std::vector<uint8_t> FabricDomain::address() const {
  std::vector<uint8_t> a(2 + name_.size() + 16);
  uint16_t n = static_cast<uint16_t>(name_.size());
  std::memcpy(a.data(), &n, 2);
  std::memcpy(a.data() + 2, name_.data(), name_.size());
  std::memcpy(a.data() + 2 + name_.size(), &sink_mr_.raddr, 8);
  std::memcpy(a.data() + 10 + name_.size(), &sink_mr_.rkey, 8);
  return a;
}

trellis::RemoteKey FabricDomain::sink_of(const uint8_t* addr, size_t len) const {
  trellis::RemoteKey k;
  uint16_t n = 0;
  if (len < 2) return k;
  std::memcpy(&n, addr, 2);
  if (len < 2u + n + 16u) return k;
  std::memcpy(&k.addr, addr + 2 + n, 8);
  std::memcpy(&k.key, addr + 10 + n, 8);
  return k;
}

int FabricDomain::reg(void* ptr, size_t len, bool remote, trellis::LocalMr* out, std::string* msg) {
  if (len == 0) {  // nothing to register; zero-byte writes go to the peer's sink
    *out = trellis::LocalMr{};
    return 0;
  }
  uint64_t access = FI_SEND | FI_RECV | FI_WRITE | FI_READ;
  if (remote) access |= FI_REMOTE_WRITE | FI_REMOTE_READ;
  fid_mr* mr = nullptr;
  int rc = fi_mr_reg(domain_, ptr, len, access, 0, next_key_++, 0, &mr, nullptr);
  if (rc) {
    *msg = "fi_mr_reg of " + std::to_string(len) + " bytes: " + fi_err(rc);
    return rc;
  }
  if (mr_mode_ & FI_MR_ENDPOINT) {
    if ((rc = fi_mr_bind(mr, &ep_->fid, 0)) || (rc = fi_mr_enable(mr))) {
      fi_close(&mr->fid);
      *msg = "fi_mr_bind/enable: " + fi_err(rc);
      return rc;
    }
  }
  out->handle = mr;
  out->desc = fi_mr_desc(mr);
  out->rkey = fi_mr_key(mr);
  out->raddr = (mr_mode_ & FI_MR_VIRT_ADDR) ? reinterpret_cast<uint64_t>(ptr) : 0;
  return 0;
}

int FabricDomain::reg_device(void* ptr, size_t len, int device, bool remote, trellis::LocalMr* out, std::string* msg) {
  if (!hmem_) {
    *msg = "provider '" + provider_ + "' of libfabric " + fabric_version() + " does not offer FI_HMEM";
    return -FI_EOPNOTSUPP;
  }
  if (len == 0) {
    *out = trellis::LocalMr{};
    return 0;
  }
  CudaDriver& cu = CudaDriver::get();
  // The pointer must be device memory of `device`: libfabric would otherwise register it as
  // whatever it finds (or fault in its copies).
  unsigned type = 0;
  int ordinal = -1;
  auto p = static_cast<CudaDriver::CUdeviceptr>(reinterpret_cast<uintptr_t>(ptr));
  if (cu.cuPointerGetAttribute(&type, CudaDriver::kPointerAttributeMemoryType, p) != 0 ||
      type != CudaDriver::kMemoryTypeDevice) {
    char hex[32];
    snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(p));
    *msg = std::string(hex) + " is not CUDA device memory (cudaMalloc'd, or imported through CUDA IPC)";
    return -FI_EINVAL;
  }
  cu.cuPointerGetAttribute(&ordinal, CudaDriver::kPointerAttributeDeviceOrdinal, p);
  if (ordinal != device) {
    *msg = "the memory is on CUDA device " + std::to_string(ordinal) + ", not " + std::to_string(device);
    return -FI_EINVAL;
  }
  // The device's primary context (the CUDA runtime's) current on this worker thread: the calls
  // below need one, and libfabric's copies progressed here then run in it, where fence() records.
  int cr = cu.use_device(device);
  if (cr != 0) {
    *msg = "could not make CUDA device " + std::to_string(device) + "'s context current: " + cu.str(cr);
    return -FI_EIO;
  }
  CudaDriver::CUdeviceptr base = 0;
  size_t size = 0;
  if ((cr = cu.cuMemGetAddressRange(&base, &size, p)) != 0) {
    *msg = "cuMemGetAddressRange: " + cu.str(cr);
    return -FI_EINVAL;
  }
  if (p + len > base + size) {
    *msg = std::to_string(len) + " bytes from the pointer run past its allocation (" + std::to_string(base + size - p) +
           " bytes left in it)";
    return -FI_EINVAL;
  }
  uint64_t access = FI_SEND | FI_RECV | FI_WRITE | FI_READ;
  if (remote) access |= FI_REMOTE_WRITE | FI_REMOTE_READ;
  iovec iov{ptr, len};
  fi_mr_attr attr{};
  attr.access = access;
  attr.requested_key = next_key_++;
  attr.iface = FI_HMEM_CUDA;
  attr.device.cuda = device;
  uint64_t flags = 0;
  int rc = -FI_ENOSYS;
  fid_mr* mr = nullptr;
#ifdef FI_MR_DMABUF
  // efa takes GPU memory as a dma-buf (the kernel's peer-memory path, no nvidia-peermem needed).
  // Never run here: no EFA device exists on the machines Trellis is developed on.
  if (provider_ == "efa") {
    uint64_t offset = 0;
    int fd = cu.dmabuf(p, len, base, size, &offset);
    if (fd >= 0) {
      fi_mr_dmabuf dmabuf{fd, offset, len, ptr};
      attr.dmabuf = &dmabuf;
      attr.iov_count = 1;
      rc = fi_mr_regattr(domain_, &attr, FI_MR_DMABUF, &mr);
      close(fd);
    }
  }
#endif
  if (!mr) {
    attr.mr_iov = &iov;
    attr.iov_count = 1;
    // Not on shm: there FI_HMEM_DEVICE_ONLY selects its CUDA IPC protocol, whose copy runs at the
    // target and is asynchronous — the writer's completion (and so "the source may be reused")
    // comes back before the copy has read the source. Measured: weightsync, whose pipeline reuses
    // its device staging as soon as a write resolves, delivered 4,182,840 wrong bytes that way.
    // Without the flag shm moves GPU bytes through its bounce buffers, the writer copying them out
    // synchronously. GPU → GPU writes between processes of one host take the same-host lane anyway.
    flags = provider_ == "shm" ? 0 : FI_HMEM_DEVICE_ONLY;
    rc = fi_mr_regattr(domain_, &attr, flags, &mr);
  }
  if (rc) {
    *msg = "fi_mr_regattr of " + std::to_string(len) + " bytes of CUDA device " + std::to_string(device) +
           " memory: " + fi_err(rc);
    return rc;
  }
  if (mr_mode_ & FI_MR_ENDPOINT) {
    if ((rc = fi_mr_bind(mr, &ep_->fid, 0)) || (rc = fi_mr_enable(mr))) {
      fi_close(&mr->fid);
      *msg = "fi_mr_bind/enable: " + fi_err(rc);
      return rc;
    }
  }
  out->handle = mr;
  out->desc = fi_mr_desc(mr);
  out->rkey = fi_mr_key(mr);
  out->raddr = (mr_mode_ & FI_MR_VIRT_ADDR) ? reinterpret_cast<uint64_t>(ptr) : 0;
  device_mrs_.push_back(mr);
  device_regs_++;
  return 0;
}

void FabricDomain::dereg(trellis::LocalMr& mr) {
  if (mr.handle) {
    for (auto it = device_mrs_.begin(); it != device_mrs_.end(); ++it) {
      if (*it == mr.handle) {
        device_mrs_.erase(it);
        device_regs_--;
        break;
      }
    }
    fi_close(&static_cast<fid_mr*>(mr.handle)->fid);
  }
  mr = trellis::LocalMr{};
}

// Record a CUDA event after every copy libfabric has issued so far, on the legacy default stream
// of the context its copies run in (the CUDA runtime's primary context of the current device of
// the thread that progressed them — this worker, or a provider thread — device 0 unless someone
// called cudaSetDevice there). False if no event could be recorded: then the completions are
// released at once: either the stream is idle (every copy issued so far has finished), or no
// event could be made (then the copy that cudaMemcpy made had to be synchronous to get here).
bool FabricDomain::fence(std::vector<Completion>& held) {
  CudaDriver& cu = CudaDriver::get();
  CudaDriver::CUcontext ctx = nullptr;
  if (cu.cuCtxGetCurrent(&ctx) != 0 || !ctx) {
    CudaDriver::CUdevice dev = 0;
    if (cu.cuDeviceGet(&dev, 0) != 0 || cu.cuDevicePrimaryCtxRetain(&ctx, dev) != 0 || cu.cuCtxSetCurrent(ctx) != 0)
      return false;
  }
  // Nothing pending on the legacy stream (a host-side query, no GPU command): every copy issued
  // so far has finished, so the immediates can go at once. Saves an event round trip through the
  // GPU — which, with other processes' contexts on the same GPU, waits for a time slice.
  if (cu.cuStreamQuery(CudaDriver::kStreamLegacy) == 0) return false;
  void* ev = nullptr;
  if (!spare_events_.empty()) {
    ev = spare_events_.back();
    spare_events_.pop_back();
  } else if (cu.cuEventCreate(&ev, CudaDriver::kEventDisableTiming) != 0) {
    return false;
  }
  if (cu.cuEventRecord(ev, CudaDriver::kStreamLegacy) != 0) {
    cu.cuEventDestroy(ev);
    return false;
  }
  fences_.push_back(Fence{ev, std::move(held)});
  return true;
}

void FabricDomain::release_fences(std::vector<Completion>& out) {
  CudaDriver& cu = CudaDriver::get();
  while (!fences_.empty()) {
    Fence& f = fences_.front();
    int r = cu.cuEventQuery(f.event);
    if (r == CudaDriver::kErrorNotReady) break;
    // Done (or the context failed: the immediates are released rather than lost; the copy's own
    // error, if any, was reported by libfabric).
    for (auto& c : f.held) out.push_back(std::move(c));
    spare_events_.push_back(f.event);
    fences_.pop_front();
  }
}

int FabricDomain::add_peer(const uint8_t* addr, size_t len, uint64_t* handle, std::string* msg) {
  uint16_t n = 0;
  if (len < 2 || (std::memcpy(&n, addr, 2), len != 2u + n + 16u)) {
    *msg = "malformed libfabric NIC address (" + std::to_string(len) + " bytes)";
    return -FI_EINVAL;
  }
  std::string key(reinterpret_cast<const char*>(addr + 2), n);
  auto it = peers_.find(key);
  if (it != peers_.end()) {
    *handle = it->second;
    return 0;
  }
  fi_addr_t fa = FI_ADDR_UNSPEC;
  int rc = fi_av_insert(av_, addr + 2, 1, &fa, 0, nullptr);
  if (rc != 1) {
    *msg = "fi_av_insert: " + (rc < 0 ? fi_err(rc) : std::string("address not accepted by provider '") + provider_ + "'");
    return rc < 0 ? rc : -FI_EINVAL;
  }
  peers_.emplace(std::move(key), fa);
  *handle = fa;
  return 0;
}

int FabricDomain::post_write(const trellis::WriteWr& wr) {
  // Zero-byte writes (immediates alone) still name a registered local buffer: some providers
  // (shm) never complete a write with an empty iov.
  iovec iov{wr.len ? const_cast<void*>(wr.src) : static_cast<void*>(sink_.data()), wr.len};
  void* desc = wr.len ? wr.src_desc : sink_mr_.desc;
  fi_rma_iov rma{wr.raddr, wr.len, wr.rkey};
  if (wr.len == 0 && zero_needs_byte_) {
    // shm never completes a zero-byte write; a zero-byte work request always targets the peer's
    // scratch sink, so one byte from our sink to it is harmless.
    iov.iov_len = 1;
    rma.len = 1;
  }
  fi_msg_rma msg{};
  msg.msg_iov = &iov;
  msg.desc = &desc;
  msg.iov_count = 1;
  msg.addr = wr.peer;
  msg.rma_iov = &rma;
  msg.rma_iov_count = 1;
  msg.context = wr.ctx;
  msg.data = wr.imm;
  uint64_t flags = FI_COMPLETION | write_flags_ | (wr.has_imm ? FI_REMOTE_CQ_DATA : 0);
  ssize_t rc = fi_writemsg(ep_, &msg, flags);
  if (rc == 0) out_open_++;
  return rc == -FI_EAGAIN ? -EAGAIN : static_cast<int>(rc);
}

int FabricDomain::post_send(uint64_t peer, const void* buf, size_t len, void* desc, void* ctx) {
  ssize_t rc = fi_send(ep_, buf, len, desc, peer, ctx);
  if (rc == 0) out_open_++;
  return rc == -FI_EAGAIN ? -EAGAIN : static_cast<int>(rc);
}

int FabricDomain::post_recv(void* buf, size_t len, void* desc, void* ctx) {
  ssize_t rc = fi_recv(rx_ep(), buf, len, desc, FI_ADDR_UNSPEC, ctx);
  return rc == -FI_EAGAIN ? -EAGAIN : static_cast<int>(rc);
}

int FabricDomain::poll(std::vector<Completion>& out, int max) {
  size_t before = out.size();
  if (!fences_.empty()) release_fences(out);
  int released = static_cast<int>(out.size() - before);
  int got = 0;
  if (in_cq_) {
    // Two endpoints (tcp): every read of a CQ runs its endpoint's progress (a system call), so the
    // initiating endpoint's CQ is read only while something posted there is open — a target that
    // only takes writes reads one CQ a turn, as a single-endpoint engine does — and every
    // kOutIdlePolls turns besides (its connections' housekeeping). While this engine's own writes
    // stream out and nothing has come in for kInEmptyReads reads, the target endpoint's CQ is read
    // every kInSkip-th turn.
    if (out_open_ == 0 || in_empty_ < kInEmptyReads || ++in_skip_ >= kInSkip) {
      in_skip_ = 0;
      int n = poll_cq(in_cq_, out, max);
      if (n < 0) return released ? released : n;
      got += n;
      in_empty_ = n > 0 ? 0 : in_empty_ + 1;
    }
    if (out_open_ > 0 || ++out_idle_polls_ >= kOutIdlePolls) {
      out_idle_polls_ = 0;
      int n = poll_cq(cq_, out, max);
      if (n > 0) got += n;
      else if (n < 0 && got == 0) return released ? released : n;  // got > 0: those go on to the fence
    }
  } else {
    got = poll_cq(cq_, out, max);
    if (got < 0) return released ? released : got;
  }
  // TRELLIS_EFA_NO_FENCE=1 turns the fence off: only for showing the gap it closes (cuda's
  // test/gpu/visibility.mjs); immediates can then be counted before their bytes are visible.
  static const bool no_fence = getenv("TRELLIS_EFA_NO_FENCE") && *getenv("TRELLIS_EFA_NO_FENCE") == '1';
  if (device_regs_ > 0 && got > 0 && !no_fence) {
    // Immediates of writes that may have landed in GPU memory wait for the fence.
    std::vector<Completion> held;
    size_t w = before + static_cast<size_t>(released);
    for (size_t i = w; i < out.size(); i++) {
      if (out[i].kind == CompKind::RemoteWrite && out[i].has_imm && out[i].code == Code::Ok)
        held.push_back(std::move(out[i]));
      else
        out[w++] = std::move(out[i]);
    }
    out.resize(w);
    if (!held.empty() && !fence(held))
      for (auto& c : held) out.push_back(std::move(c));
    if (!fences_.empty()) release_fences(out);
  }
  return static_cast<int>(out.size() - before);
}

int FabricDomain::poll_cq(fid_cq* cq, std::vector<Completion>& out, int max) {
  fi_cq_data_entry e[64];
  int want = max < 64 ? max : 64;
  ssize_t n = fi_cq_read(cq, e, static_cast<size_t>(want));
  if (n > 0) {
    if (cq == cq_) out_open_ -= std::min<uint64_t>(out_open_, static_cast<uint64_t>(n));
    for (ssize_t i = 0; i < n; i++) {
      Completion c;
      c.ctx = e[i].op_context;
      if (e[i].flags & FI_REMOTE_WRITE) {
        c.kind = CompKind::RemoteWrite;
        c.has_imm = (e[i].flags & FI_REMOTE_CQ_DATA) != 0;
        c.imm = static_cast<uint32_t>(e[i].data);
      } else if (e[i].flags & FI_RECV) {
        c.kind = CompKind::Recv;
        c.len = e[i].len;
      } else if (e[i].flags & FI_SEND) {
        c.kind = CompKind::Send;
      } else {
        c.kind = CompKind::Write;
      }
      out.push_back(std::move(c));
    }
    return static_cast<int>(n);
  }
  if (n == -FI_EAGAIN) return 0;
  if (n == -FI_EAVAIL) {
    fi_cq_err_entry err{};
    if (fi_cq_readerr(cq, &err, 0) != 1) return 0;
    if (cq == cq_ && out_open_ > 0) out_open_--;
    Completion c;
    c.ctx = err.op_context;
    if (err.flags & FI_REMOTE_WRITE) c.kind = CompKind::RemoteWrite;
    else if (err.flags & FI_RECV) c.kind = CompKind::Recv;
    else if (err.flags & FI_SEND) c.kind = CompKind::Send;
    else c.kind = CompKind::Write;
    c.err = err.err;
    c.code = classify(err.err);
    const char* pm = fi_cq_strerror(cq, err.prov_errno, err.err_data, nullptr, 0);
    c.message = std::string(FabricLib::get().strerror(err.err)) + (pm && *pm ? std::string(" — provider: ") + pm : "");
    if (provider_.find("tcp") != std::string::npos) {
      // tcp (under rxm) refuses a key or range it has no registration for by tearing the connection
      // down: the write is cancelled. The provider's errno says which: ENOENT from the target's
      // lookup (libfabric 1.x); with 2.x whatever the socket last said (EAGAIN, EINPROGRESS) — a
      // peer that died shows a connection error instead (ENOTCONN, ECONNRESET, EPIPE). Later writes
      // reconnect; those cut off with the old connection fail ENOTCONN. Neither means the peer is
      // gone. (Should a death ever look like a refusal, the next write's reconnect finds it.) The
      // torn connection carries only this engine's writes to that peer (see in_ep_), so what else
      // it cancels was this writer's own work to the refusing peer.
      auto dead = [](int e) {
        return e == ENOTCONN || e == ECONNRESET || e == EPIPE || e == ECONNREFUSED || e == ETIMEDOUT ||
               e == EHOSTUNREACH || e == ENETUNREACH || e == ECONNABORTED;
      };
      if (err.err == FI_ECANCELED && !dead(err.prov_errno)) {
        c.code = Code::RemoteAccess;
        c.message = "the target refused the key or range: no registration of its covers it (a forged descriptor, "
                    "or a stale one after the target unregistered or re-registered) — " + c.message;
      } else if (err.err == FI_ENOTCONN) {
        c.code = Code::ConnectionReset;
        c.message = "cut off with a connection an earlier failure tore down; the next operation reconnects — " + c.message;
      }
    }
    if (provider_ == "shm" && c.kind == CompKind::Write && err.err == FI_EIO) {
      // shm returns a write the target could not take with an error flag and no reason; the
      // target's one failure before any byte moves is the key check (the libfabric 2.x that
      // scripts/libfabric.sh builds carries our fix that reports it at all — unpatched 2.x shm
      // completes such a write as a success, 1.17 never completes it).
      c.code = Code::RemoteAccess;
      c.message = "the target refused the key or range: no registration of its covers it (a forged descriptor, "
                  "or a stale one after the target unregistered or re-registered) — " + c.message;
    }
    if (c.ctx == nullptr && c.kind != CompKind::RemoteWrite) c.kind = CompKind::RemoteWrite;
    out.push_back(std::move(c));
    return 1;
  }
  return static_cast<int>(n);
}

// Fault injection: close the endpoint (its peers' connections and everything posted on it) and
// the CQ, as a NIC that died takes them. The engine uses neither afterwards.
void FabricDomain::teardown() {
  if (ep_) fi_close(&ep_->fid);
  ep_ = nullptr;
  if (in_ep_) fi_close(&in_ep_->fid);
  in_ep_ = nullptr;
  if (cq_) fi_close(&cq_->fid);
  cq_ = nullptr;
  if (in_cq_) fi_close(&in_cq_->fid);
  in_cq_ = nullptr;
  wait_fd_ = -1;
  in_wait_fd_ = -1;
}

bool FabricDomain::try_wait() {
  if (wait_fd_ < 0 || (in_cq_ && in_wait_fd_ < 0) || !fences_.empty()) return false;
  fid* f[2] = {&cq_->fid, in_cq_ ? &in_cq_->fid : nullptr};
  return fi_trywait(fabric_, f, in_cq_ ? 2 : 1) == FI_SUCCESS;
}

std::string FabricDomain::strerror(int err) const { return provider_ + ": " + fi_err(err); }

Code FabricDomain::classify(int err) const {
  switch (err < 0 ? -err : err) {
    case FI_ECONNREFUSED:
    case FI_ECONNRESET:
    case FI_ENOTCONN:
    case FI_EHOSTUNREACH:
    case FI_ECONNABORTED:
    case FI_ENETUNREACH:
    case FI_ENETDOWN:
    case FI_ETIMEDOUT:
    case FI_EIO:
      return Code::PeerLost;
    case FI_EACCES:
    case FI_EKEYREJECTED:
    case FI_EPERM:
      return Code::RemoteAccess;
    case FI_ETRUNC:
    case FI_ETOOSMALL:
      return Code::MessageTruncated;
    case FI_ECANCELED:
      // The provider cancels work on a connection it tore down (rxm after a peer died); a
      // cancellation the caller asked for never reaches here (the engine settles those itself).
      return Code::PeerLost;
    case FI_ENOMEM:
      return Code::ResourceExhausted;
    default:
      return Code::ProviderError;
  }
}

}  // namespace trellis_efa
