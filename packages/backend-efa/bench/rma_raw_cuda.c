/*
 * rma_raw_cuda — the raw libfabric baseline for GPU → GPU writes: the posts backend-efa makes on
 * CUDA memory registered directly (fi_mr_regattr, FI_HMEM_CUDA, FI_HMEM_DEVICE_ONLY), without the
 * SDK. Needs a libfabric built with CUDA (FI_HMEM) and a GPU; CUDA is opened at run time
 * (libcudart.so), so it builds anywhere libfabric's headers are.
 *
 * Two processes (fork), each with a cudaMalloc'd region on its device (both 0 unless a second
 * device is given). The initiator keeps `window` single writes with remote CQ data in flight
 * (FI_REMOTE_CQ_DATA | FI_DELIVERY_COMPLETE | FI_COMPLETION, as the SDK posts them). The target
 * counts the remote CQ data, then waits until its device has finished every copy libfabric issued
 * (cudaDeviceSynchronize: shm's CUDA IPC copy is an asynchronous cudaMemcpy) and tells the
 * initiator over a pipe. Two clocks, both from the first post:
 *   seconds_visible   — until the target reports every byte visible (the figure to compare);
 *   seconds_completed — until the initiator's last completion (what a naive benchmark reports;
 *                       on shm it can run ahead of the bytes).
 *
 *   rma_raw_cuda <provider> <bytes> <ops> <window> [device_a] [device_b] [device-only|plain]
 * `plain` registers without FI_HMEM_DEVICE_ONLY — the posts backend-efa makes on shm, where shm then
 * moves the bytes through its bounce buffers instead of its CUDA IPC protocol.
 * Prints one JSON line.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include "fabric_dl.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(x)                                                                          \
  do {                                                                                    \
    int _rc = (int)(x);                                                                   \
    if (_rc) {                                                                            \
      fprintf(stderr, "rma_raw_cuda: %s failed: %s (%d)\n", #x, fi_strerror(-_rc), _rc); \
      exit(1);                                                                            \
    }                                                                                     \
  } while (0)

static int (*cuda_set_device)(int);
static int (*cuda_malloc)(void **, size_t);
static int (*cuda_memset)(void *, int, size_t);
static int (*cuda_device_synchronize)(void);

static void open_cuda(void) {
  void *h = dlopen("libcudart.so", RTLD_NOW | RTLD_GLOBAL);
  if (!h) {
    fprintf(stderr, "rma_raw_cuda: cannot open libcudart.so: %s\n", dlerror());
    exit(1);
  }
  cuda_set_device = (int (*)(int))dlsym(h, "cudaSetDevice");
  cuda_malloc = (int (*)(void **, size_t))dlsym(h, "cudaMalloc");
  cuda_memset = (int (*)(void *, int, size_t))dlsym(h, "cudaMemset");
  cuda_device_synchronize = (int (*)(void))dlsym(h, "cudaDeviceSynchronize");
  if (!cuda_set_device || !cuda_malloc || !cuda_memset || !cuda_device_synchronize) {
    fprintf(stderr, "rma_raw_cuda: libcudart.so lacks a needed symbol\n");
    exit(1);
  }
}

static void *device_alloc(int device, size_t n, int fill) {
  void *p = NULL;
  if (cuda_set_device(device) || cuda_malloc(&p, n) || cuda_memset(p, fill, n) || cuda_device_synchronize()) {
    fprintf(stderr, "rma_raw_cuda: cudaMalloc of %zu bytes on device %d failed\n", n, device);
    exit(1);
  }
  return p;
}

struct ep {
  struct fi_info *info;
  struct fid_fabric *fabric;
  struct fid_domain *domain;
  struct fid_av *av;
  struct fid_cq *cq;
  struct fid_ep *ep;
  char name[256];
  size_t namelen;
};

static void open_ep(struct ep *e, const char *prov) {
  struct fi_info *hints = fi_allocinfo();
  hints->caps = FI_MSG | FI_RMA | FI_SEND | FI_RECV | FI_WRITE | FI_REMOTE_WRITE | FI_HMEM;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->ep_attr->type = FI_EP_RDM;
  hints->domain_attr->mr_mode =
      FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT | FI_MR_HMEM;
  hints->domain_attr->threading = FI_THREAD_DOMAIN;
  hints->tx_attr->op_flags = FI_DELIVERY_COMPLETE;
  hints->fabric_attr->prov_name = strdup(prov);
  CHECK(fi_getinfo(FI_VERSION(1, 15), NULL, NULL, 0, hints, &e->info));
  fi_freeinfo(hints);
  CHECK(fi_fabric(e->info->fabric_attr, &e->fabric, NULL));
  CHECK(fi_domain(e->fabric, e->info, &e->domain, NULL));
  struct fi_av_attr av = {.type = FI_AV_TABLE};
  CHECK(fi_av_open(e->domain, &av, &e->av, NULL));
  struct fi_cq_attr cq = {.format = FI_CQ_FORMAT_DATA, .wait_obj = FI_WAIT_NONE};
  CHECK(fi_cq_open(e->domain, &cq, &e->cq, NULL));
  CHECK(fi_endpoint(e->domain, e->info, &e->ep, NULL));
  CHECK(fi_ep_bind(e->ep, &e->av->fid, 0));
  CHECK(fi_ep_bind(e->ep, &e->cq->fid, FI_TRANSMIT | FI_RECV));
  CHECK(fi_enable(e->ep));
  e->namelen = sizeof(e->name);
  CHECK(fi_getname(&e->ep->fid, e->name, &e->namelen));
}

static uint64_t reg_flags = FI_HMEM_DEVICE_ONLY;

static struct fid_mr *reg_cuda(struct ep *e, void *buf, size_t len, uint64_t access, int device) {
  struct fid_mr *mr;
  struct iovec iov = {buf, len};
  struct fi_mr_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.mr_iov = &iov;
  attr.iov_count = 1;
  attr.access = access;
  attr.requested_key = 1;
  attr.iface = FI_HMEM_CUDA;
  attr.device.cuda = device;
  CHECK(fi_mr_regattr(e->domain, &attr, reg_flags, &mr));
  if (e->info->domain_attr->mr_mode & FI_MR_ENDPOINT) {
    CHECK(fi_mr_bind(mr, &e->ep->fid, 0));
    CHECK(fi_mr_enable(mr));
  }
  return mr;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

struct hello {
  char name[256];
  size_t namelen;
  uint64_t addr, key;
};

int main(int argc, char **argv) {
  fabric_dl_open("rma_raw_cuda");
  if (argc < 5) {
    fprintf(stderr, "usage: rma_raw_cuda <provider> <bytes> <ops> <window> [device_a] [device_b] [device-only|plain]\n");
    return 2;
  }
  const char *prov = argv[1];
  size_t unit = strtoull(argv[2], NULL, 10);
  uint64_t ops = strtoull(argv[3], NULL, 10);
  uint64_t window = strtoull(argv[4], NULL, 10);
  int dev_a = argc > 5 ? atoi(argv[5]) : 0;
  int dev_b = argc > 6 ? atoi(argv[6]) : dev_a;
  if (argc > 7 && strcmp(argv[7], "plain") == 0) reg_flags = 0;
  open_cuda();
  int to_init[2], to_target[2];
  if (pipe(to_init) || pipe(to_target)) return 1;
  pid_t child = fork();
  if (child == 0) {
    /* target */
    struct ep e;
    void *buf = device_alloc(dev_b, unit, 0);
    open_ep(&e, prov);
    struct fid_mr *mr = reg_cuda(&e, buf, unit, FI_REMOTE_WRITE | FI_WRITE, dev_b);
    struct hello h = {.namelen = e.namelen,
                      .addr = (e.info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)buf : 0,
                      .key = fi_mr_key(mr)};
    memcpy(h.name, e.name, e.namelen);
    if (write(to_init[1], &h, sizeof h) != sizeof h) return 1;
    uint64_t seen = 0;
    struct fi_cq_data_entry c[64];
    while (seen < ops) {
      ssize_t n = fi_cq_read(e.cq, c, 64);
      if (n > 0) {
        for (ssize_t i = 0; i < n; i++)
          if (c[i].flags & FI_REMOTE_CQ_DATA) seen++;
      } else if (n != -FI_EAGAIN) {
        struct fi_cq_err_entry err = {0};
        fi_cq_readerr(e.cq, &err, 0);
        fprintf(stderr, "rma_raw_cuda target: cq error %s\n", fi_strerror(err.err));
        return 1;
      }
    }
    /* Every copy libfabric issued here has finished: the bytes are visible. */
    if (cuda_device_synchronize()) return 1;
    char done = 1;
    if (write(to_init[1], &done, 1) != 1) return 1;
    if (read(to_target[0], &done, 1) != 1) return 1;
    fi_close(&mr->fid);
    return 0;
  }
  /* initiator */
  void *buf = device_alloc(dev_a, unit, 7);
  struct ep e;
  open_ep(&e, prov);
  struct hello h;
  if (read(to_init[0], &h, sizeof h) != sizeof h) return 1;
  fi_addr_t peer;
  if (fi_av_insert(e.av, h.name, 1, &peer, 0, NULL) != 1) return 1;
  struct fid_mr *mr = reg_cuda(&e, buf, unit, FI_WRITE | FI_SEND, dev_a);
  void *desc = fi_mr_desc(mr);
  struct fi_context2 *ctx = calloc(window, sizeof *ctx);
  uint64_t posted = 0, completed = 0, inflight = 0;
  struct fi_cq_data_entry c[64];
  double t0 = now();
  while (completed < ops) {
    while (posted < ops && inflight < window) {
      struct iovec iov = {buf, unit};
      struct fi_rma_iov rma = {h.addr, unit, h.key};
      struct fi_msg_rma msg = {.msg_iov = &iov, .desc = &desc, .iov_count = 1, .addr = peer, .rma_iov = &rma,
                               .rma_iov_count = 1, .context = &ctx[posted % window], .data = 1};
      ssize_t rc = fi_writemsg(e.ep, &msg, FI_REMOTE_CQ_DATA | FI_DELIVERY_COMPLETE | FI_COMPLETION);
      if (rc == -FI_EAGAIN) break;
      if (rc) {
        fprintf(stderr, "rma_raw_cuda: fi_writemsg: %s\n", fi_strerror((int)-rc));
        return 1;
      }
      posted++;
      inflight++;
    }
    ssize_t n = fi_cq_read(e.cq, c, 64);
    if (n > 0) {
      completed += (uint64_t)n;
      inflight -= (uint64_t)n;
    } else if (n != -FI_EAGAIN) {
      struct fi_cq_err_entry err = {0};
      fi_cq_readerr(e.cq, &err, 0);
      fprintf(stderr, "rma_raw_cuda initiator: cq error %s\n", fi_strerror(err.err));
      return 1;
    }
  }
  double t1 = now();
  char done;
  if (read(to_init[0], &done, 1) != 1) return 1;
  double t2 = now();
  if (write(to_target[1], &done, 1) != 1) return 1;
  waitpid(child, NULL, 0);
  printf("{\"ops\":%llu,\"bytes\":%llu,\"seconds_visible\":%.9f,\"seconds_completed\":%.9f}\n", (unsigned long long)ops,
         (unsigned long long)(ops * unit), t2 - t0, t1 - t0);
  fi_close(&mr->fid);
  return 0;
}
