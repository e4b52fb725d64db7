/*
 * rma_raw — the baseline for `pnpm bench`: the same libfabric posts the SDK makes, without the SDK.
 *
 * Two processes (fork): the child is the target (RDM endpoint, a region registered for remote
 * writes, a CQ polled for remote CQ data); the parent is the initiator and keeps `window` writes
 * in flight with fi_writemsg(FI_REMOTE_CQ_DATA | FI_DELIVERY_COMPLETE | FI_COMPLETION), exactly the
 * flags the Trellis FabricDomain uses. Addresses and keys travel over a pipe.
 *
 *   rma_raw <provider> single <bytes> <ops> <window>
 *   rma_raw <provider> paged <page_bytes> <pages_per_call> <calls> <window>
 *   rma_raw <provider> pingpong <iterations>
 *   rma_raw <provider> into <name_hex> <addr> <key> <page_bytes> <pages_per_call> <calls> <window> [<ops>]
 *   rma_raw <provider> target <region_bytes> <arrivals>
 *
 * The target side (the forked child, or `target`) pins itself to TRELLIS_BENCH_TARGET_CPUS when
 * that is set (a CPU list, as taskset takes it: the SDK benchmark's --pin).
 * TRELLIS_BENCH_RAW_SRC=shm: the initiator writes from a POSIX shared-memory object mapped
 * MAP_SHARED, as the engine allocates a region registered with {remote: true}, instead of
 * aligned_alloc memory.
 *
 * Prints one JSON line: {"ops":N,"bytes":B,"seconds":S}. Timing covers the first post to the last
 * initiator completion, as the SDK benchmark does. pingpong: each side answers an immediate with
 * an immediate (a 1-byte write with remote CQ data: shm never completes empty writes); prints
 * {"iterations":N,"median_us":M,"p99_us":P}.
 *
 * into: no child; the initiator alone, writing paged-mode writes (imm 1 each) into a target that
 * is already there — the SDK benchmark's target engine, whose endpoint name (hex), region address
 * and key it passes — so the SDK's target side is measured under the raw program's initiator.
 * With <ops>, that many writes cycling over the pages_per_call pages (the single-write test's
 * writes: pages_per_call = its region / its size) instead of calls × pages_per_call.
 */
#define _GNU_SOURCE
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include "fabric_dl.h"
#include "pin.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>

#define CHECK(x)                                                                             \
  do {                                                                                       \
    int _rc = (int)(x);                                                                      \
    if (_rc) {                                                                               \
      fprintf(stderr, "rma_raw: %s failed: %s (%d)\n", #x, fi_strerror(-_rc), _rc);        \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

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
  hints->caps = FI_MSG | FI_RMA | FI_SEND | FI_RECV | FI_WRITE | FI_REMOTE_WRITE;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->ep_attr->type = FI_EP_RDM;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
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

static struct fid_mr *reg(struct ep *e, void *buf, size_t len, uint64_t access) {
  struct fid_mr *mr;
  static uint64_t next_key = 1; /* a provider that takes requested keys needs them distinct */
  CHECK(fi_mr_reg(e->domain, buf, len, access, 0, next_key++, 0, &mr, NULL));
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

/* Wait for one remote-CQ-data arrival; other completions (our own writes) are drained on the way. */
static void wait_imm(struct ep *e) {
  struct fi_cq_data_entry c;
  for (;;) {
    ssize_t n = fi_cq_read(e->cq, &c, 1);
    if (n == 1 && (c.flags & FI_REMOTE_CQ_DATA)) return;
    if (n < 0 && n != -FI_EAGAIN) {
      struct fi_cq_err_entry err = {0};
      fi_cq_readerr(e->cq, &err, 0);
      fprintf(stderr, "rma_raw pingpong: cq error %s\n", fi_strerror(err.err));
      exit(1);
    }
  }
}

static void send_imm(struct ep *e, fi_addr_t peer, void *buf, void *desc, struct hello *h, struct fi_context2 *ctx) {
  struct iovec iov = {buf, 1};
  struct fi_rma_iov rma = {h->addr, 1, h->key};
  struct fi_msg_rma msg = {.msg_iov = &iov, .desc = &desc, .iov_count = 1, .addr = peer, .rma_iov = &rma, .rma_iov_count = 1, .context = ctx, .data = 2};
  ssize_t rc;
  while ((rc = fi_writemsg(e->ep, &msg, FI_REMOTE_CQ_DATA | FI_DELIVERY_COMPLETE | FI_COMPLETION)) == -FI_EAGAIN) {
    struct fi_cq_data_entry c;
    fi_cq_read(e->cq, &c, 0);
  }
  if (rc) {
    fprintf(stderr, "rma_raw pingpong: fi_writemsg: %s\n", fi_strerror((int)-rc));
    exit(1);
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int pingpong(const char *prov, uint64_t iters) {
  int to_init[2], to_target[2];
  if (pipe(to_init) || pipe(to_target)) return 1;
  pid_t child = fork();
  if (child == 0) pin_target();
  struct ep e;
  open_ep(&e, prov);
  void *buf = aligned_alloc(4096, 4096);
  memset(buf, 0, 4096);
  struct fid_mr *mr = reg(&e, buf, 4096, FI_REMOTE_WRITE | FI_WRITE);
  struct hello mine = {.namelen = e.namelen, .addr = (e.info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)buf : 0, .key = fi_mr_key(mr)};
  memcpy(mine.name, e.name, e.namelen);
  struct hello theirs;
  int out = child == 0 ? to_init[1] : to_target[1];
  int in = child == 0 ? to_target[0] : to_init[0];
  if (write(out, &mine, sizeof mine) != sizeof mine || read(in, &theirs, sizeof theirs) != sizeof theirs) return 1;
  fi_addr_t peer;
  if (fi_av_insert(e.av, theirs.name, 1, &peer, 0, NULL) != 1) return 1;
  void *desc = fi_mr_desc(mr);
  struct fi_context2 ctx;
  double *rtt = calloc(iters, sizeof *rtt);
  for (uint64_t i = 0; i < iters + 100; i++) { /* 100 warm-up rounds */
    if (child == 0) {
      wait_imm(&e);
      send_imm(&e, peer, buf, desc, &theirs, &ctx);
    } else {
      double t0 = now();
      send_imm(&e, peer, buf, desc, &theirs, &ctx);
      wait_imm(&e);
      if (i >= 100) rtt[i - 100] = (now() - t0) * 1e6;
    }
  }
  if (child == 0) {
    char done;
    if (read(in, &done, 1) != 1) return 1; /* keep the endpoint until the initiator is done */
    return 0;
  }
  char done = 1;
  if (write(out, &done, 1) != 1) return 1;
  waitpid(child, NULL, 0);
  qsort(rtt, iters, sizeof *rtt, cmp_double);
  printf("{\"iterations\":%llu,\"median_us\":%.3f,\"p99_us\":%.3f}\n", (unsigned long long)iters, rtt[iters / 2], rtt[(iters * 99) / 100]);
  return 0;
}

/* The initiator: `ops` writes of `unit` bytes (imm 1 each) cycling over a `region`-byte buffer into
 * the peer's region at raddr/rkey, `window` in flight. Returns the seconds from the first post to
 * the last completion. */
/* The target: poll the CQ until `want` writes with remote CQ data have arrived (exits on a CQ
 * error). Returns the count. */
static uint64_t count_arrivals(struct ep *e, uint64_t want) {
  uint64_t seen = 0;
  struct fi_cq_data_entry c[64];
  while (seen < want) {
    ssize_t n = fi_cq_read(e->cq, c, 64);
    if (n > 0) {
      for (ssize_t i = 0; i < n; i++)
        if (c[i].flags & FI_REMOTE_CQ_DATA) seen++;
    } else if (n != -FI_EAGAIN) {
      struct fi_cq_err_entry err = {0};
      fi_cq_readerr(e->cq, &err, 0);
      fprintf(stderr, "rma_raw target: cq error %s\n", fi_strerror(err.err));
      exit(1);
    }
  }
  return seen;
}

/* The initiator's source: private memory (aligned_alloc), or with TRELLIS_BENCH_RAW_SRC=shm a
 * POSIX shared-memory object mapped MAP_SHARED, as the engine allocates a region registered with
 * {remote: true} (so the two kinds of source can be compared under the same initiator). */
static void *src_alloc(size_t len) {
  const char *kind = getenv("TRELLIS_BENCH_RAW_SRC");
  if (!kind || strcmp(kind, "shm") != 0) return aligned_alloc(4096, len);
  char name[64];
  snprintf(name, sizeof name, "/trellis-bench-raw-%d", (int)getpid());
  int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0 || ftruncate(fd, (off_t)len) != 0) {
    fprintf(stderr, "rma_raw: shm_open/ftruncate %s: %s\n", name, strerror(errno));
    exit(1);
  }
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  shm_unlink(name);
  close(fd);
  if (p == MAP_FAILED) {
    fprintf(stderr, "rma_raw: mmap: %s\n", strerror(errno));
    exit(1);
  }
  return p;
}

static double initiate(struct ep *e, fi_addr_t peer, uint64_t raddr, uint64_t rkey, size_t unit, size_t region,
                       uint64_t ops, uint64_t window) {
  void *buf = src_alloc(region);
  memset(buf, 7, region);
  struct fid_mr *mr = reg(e, buf, region, FI_WRITE | FI_SEND);
  void *desc = fi_mr_desc(mr);
  struct fi_context2 *ctx = calloc(window, sizeof *ctx);
  uint64_t posted = 0, completed = 0, inflight = 0;
  size_t slots = region / unit;
  struct fi_cq_data_entry c[64];
  double t0 = now();
  while (completed < ops) {
    while (posted < ops && inflight < window) {
      uint64_t slot = posted % slots;
      struct iovec iov = {(char *)buf + slot * unit, unit};
      struct fi_rma_iov rma = {raddr + slot * unit, unit, rkey};
      struct fi_msg_rma msg = {.msg_iov = &iov, .desc = &desc, .iov_count = 1, .addr = peer, .rma_iov = &rma,
                               .rma_iov_count = 1, .context = &ctx[posted % window], .data = 1};
      ssize_t rc = fi_writemsg(e->ep, &msg, FI_REMOTE_CQ_DATA | FI_DELIVERY_COMPLETE | FI_COMPLETION);
      if (rc == -FI_EAGAIN) break;
      if (rc) {
        fprintf(stderr, "rma_raw: fi_writemsg: %s\n", fi_strerror((int)-rc));
        exit(1);
      }
      posted++;
      inflight++;
    }
    ssize_t n = fi_cq_read(e->cq, c, 64);
    if (n > 0) {
      completed += (uint64_t)n;
      inflight -= (uint64_t)n;
    } else if (n != -FI_EAGAIN) {
      struct fi_cq_err_entry err = {0};
      fi_cq_readerr(e->cq, &err, 0);
      fprintf(stderr, "rma_raw initiator: cq error %s\n", fi_strerror(err.err));
      exit(1);
    }
  }
  double t1 = now();
  fi_close(&mr->fid);
  return t1 - t0;
}

static int into(int argc, char **argv) {
  (void)argc;
  const char *hex = argv[3];
  size_t namelen = strlen(hex) / 2;
  unsigned char name[256];
  if (namelen == 0 || namelen > sizeof name || strlen(hex) % 2) {
    fprintf(stderr, "rma_raw into: the endpoint name must be 1..256 bytes of hex\n");
    return 2;
  }
  for (size_t i = 0; i < namelen; i++)
    if (sscanf(hex + 2 * i, "%2hhx", &name[i]) != 1) {
      fprintf(stderr, "rma_raw into: the endpoint name must be hex\n");
      return 2;
    }
  uint64_t raddr = strtoull(argv[4], NULL, 10), rkey = strtoull(argv[5], NULL, 10);
  size_t unit = strtoull(argv[6], NULL, 10);
  uint64_t per_call = strtoull(argv[7], NULL, 10);
  uint64_t ops = strtoull(argv[8], NULL, 10) * per_call, window = strtoull(argv[9], NULL, 10);
  if (argc == 11) ops = strtoull(argv[10], NULL, 10);
  struct ep e;
  open_ep(&e, argv[1]);
  fi_addr_t peer;
  if (fi_av_insert(e.av, name, 1, &peer, 0, NULL) != 1) {
    fprintf(stderr, "rma_raw into: fi_av_insert refused the endpoint name\n");
    return 1;
  }
  double seconds = initiate(&e, peer, raddr, rkey, unit, unit * per_call, ops, window);
  printf("{\"ops\":%llu,\"bytes\":%llu,\"seconds\":%.9f}\n", (unsigned long long)ops, (unsigned long long)(ops * unit), seconds);
  return 0;
}

static int target(int argc, char **argv) {
  (void)argc;
  pin_target();
  size_t region = strtoull(argv[3], NULL, 10);
  uint64_t want = strtoull(argv[4], NULL, 10);
  struct ep e;
  open_ep(&e, argv[1]);
  void *buf = aligned_alloc(4096, region ? region : 4096);
  memset(buf, 0, region ? region : 4096);
  struct fid_mr *mr = reg(&e, buf, region ? region : 4096, FI_REMOTE_WRITE | FI_WRITE);
  void *sink = aligned_alloc(4096, 4096);
  memset(sink, 0, 4096);
  struct fid_mr *smr = reg(&e, sink, 64, FI_REMOTE_WRITE | FI_WRITE);
  int virt = (e.info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0;
  printf("{\"name\":\"");
  for (size_t i = 0; i < e.namelen; i++) printf("%02x", (unsigned char)e.name[i]);
  printf("\",\"addr\":\"%llu\",\"key\":\"%llu\",\"sinkAddr\":\"%llu\",\"sinkKey\":\"%llu\"}\n",
         (unsigned long long)(virt ? (uint64_t)(uintptr_t)buf : 0), (unsigned long long)fi_mr_key(mr),
         (unsigned long long)(virt ? (uint64_t)(uintptr_t)sink : 0), (unsigned long long)fi_mr_key(smr));
  fflush(stdout);
  uint64_t seen = count_arrivals(&e, want);
  struct fi_cq_data_entry c[64];
  /* FNV-1a of the region, so a caller can check the bytes that landed. */
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < region; i++) h = (h ^ ((unsigned char *)buf)[i]) * 1099511628211ull;
  printf("{\"arrivals\":%llu,\"fnv1a\":\"%llu\"}\n", (unsigned long long)seen, (unsigned long long)h);
  fflush(stdout);
  /* Keep the endpoint progressing (the initiator's last acknowledgements) until stdin closes. */
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  for (uint64_t spin = 0;; spin++) {
    fi_cq_read(e.cq, c, 64);
    if ((spin & 1023) == 0) {
      char b[64];
      ssize_t r = read(0, b, sizeof b);
      if (r == 0 || (r < 0 && errno != EAGAIN)) break;
    }
  }
  fi_close(&smr->fid);
  fi_close(&mr->fid);
  return 0;
}

int main(int argc, char **argv) {
  fabric_dl_open("rma_raw");
  if ((argc == 10 || argc == 11) && strcmp(argv[2], "into") == 0) return into(argc, argv);
  if (argc == 5 && strcmp(argv[2], "target") == 0) return target(argc, argv);
  if (argc == 4 && strcmp(argv[2], "pingpong") == 0) return pingpong(argv[1], strtoull(argv[3], NULL, 10));
  if (argc < 6) {
    fprintf(stderr, "usage: rma_raw <provider> single <bytes> <ops> <window>\n"
                    "       rma_raw <provider> paged <page_bytes> <pages_per_call> <calls> <window>\n");
    return 2;
  }
  const char *prov = argv[1];
  int paged = strcmp(argv[2], "paged") == 0;
  size_t unit = strtoull(argv[3], NULL, 10);
  uint64_t ops, per_call = 1, window;
  if (paged) {
    per_call = strtoull(argv[4], NULL, 10);
    ops = strtoull(argv[5], NULL, 10) * per_call;
    window = argc > 6 ? strtoull(argv[6], NULL, 10) : 1024;
  } else {
    ops = strtoull(argv[4], NULL, 10);
    window = strtoull(argv[5], NULL, 10);
  }
  /* The same region size the SDK benchmark uses: writes cycle over it. */
  size_t region = paged ? unit * per_call : (unit < (64u << 20) ? (64u << 20) : unit);
  int to_init[2], to_target[2];
  if (pipe(to_init) || pipe(to_target)) return 1;
  pid_t child = fork();
  if (child == 0) {
    /* target */
    pin_target();
    struct ep e;
    open_ep(&e, prov);
    void *buf = aligned_alloc(4096, region);
    memset(buf, 0, region);
    struct fid_mr *mr = reg(&e, buf, region, FI_REMOTE_WRITE | FI_WRITE);
    struct hello h = {.namelen = e.namelen, .addr = (e.info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)buf : 0, .key = fi_mr_key(mr)};
    memcpy(h.name, e.name, e.namelen);
    if (write(to_init[1], &h, sizeof h) != sizeof h) return 1;
    count_arrivals(&e, ops);
    char done = 1;
    if (write(to_init[1], &done, 1) != 1) return 1;
    /* Keep the endpoint alive until the initiator has its completions. */
    if (read(to_target[0], &done, 1) != 1) return 1;
    fi_close(&mr->fid);
    return 0;
  }
  /* initiator */
  struct ep e;
  open_ep(&e, prov);
  struct hello h;
  if (read(to_init[0], &h, sizeof h) != sizeof h) return 1;
  fi_addr_t peer;
  if (fi_av_insert(e.av, h.name, 1, &peer, 0, NULL) != 1) return 1;
  double seconds = initiate(&e, peer, h.addr, h.key, unit, region, ops, window);
  char done;
  if (read(to_init[0], &done, 1) != 1) return 1;
  if (write(to_target[1], &done, 1) != 1) return 1;
  waitpid(child, NULL, 0);
  printf("{\"ops\":%llu,\"bytes\":%llu,\"seconds\":%.9f}\n", (unsigned long long)ops, (unsigned long long)(ops * unit), seconds);
  return 0;
}
