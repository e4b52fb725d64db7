/*
 * host_mapped — the other way two processes of one host could move host memory: the target's
 * region is a shared mapping the writer maps too, and a write is one memcpy into it followed by a
 * release store of a counter the target polls (what a "mapped region" lane would do, with no
 * provider in between). The figure to hold libfabric shm against (`rma_raw shm single`): same
 * sizes, same window of writes in flight, the clock from the first copy until the target has seen
 * the last one.
 *
 * Two processes (fork). The region holds `window` slots of `bytes`; write i goes to slot
 * i % window once the target has seen write i - window (so no slot is overwritten before its
 * write was seen), then publishes written = i + 1. The target spins on `written` and publishes
 * what it has seen.
 *
 *   host_mapped <bytes> <ops> <window>
 * Prints one JSON line: {"ops":N,"bytes":B,"seconds":S}.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pin.h"

struct control {
  _Alignas(64) _Atomic uint64_t written;
  _Alignas(64) _Atomic uint64_t seen;
  _Alignas(64) _Atomic uint64_t go;
};

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: host_mapped <bytes> <ops> <window>\n");
    return 2;
  }
  size_t unit = strtoull(argv[1], NULL, 10);
  uint64_t ops = strtoull(argv[2], NULL, 10);
  uint64_t window = strtoull(argv[3], NULL, 10);
  if (!unit || !ops || !window) return 2;
  struct control *ctl = mmap(NULL, sizeof *ctl, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  uint8_t *region = mmap(NULL, unit * window, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (ctl == MAP_FAILED || region == MAP_FAILED) return 1;
  memset(region, 0, unit * window);  // resident before the clock starts, as a registered region is
  pid_t child = fork();
  if (child == 0) {
    /* target: count writes as they are published */
    pin_target();
    atomic_store_explicit(&ctl->go, 1, memory_order_release);
    uint64_t seen = 0;
    while (seen < ops) {
      uint64_t w = atomic_load_explicit(&ctl->written, memory_order_acquire);
      if (w != seen) {
        seen = w;
        atomic_store_explicit(&ctl->seen, seen, memory_order_release);
      }
    }
    _exit(0);
  }
  uint8_t *src = malloc(unit);
  if (!src) return 1;
  for (size_t i = 0; i < unit; i++) src[i] = (uint8_t)(i * 31 + 7);
  while (!atomic_load_explicit(&ctl->go, memory_order_acquire)) {
  }
  double t0 = now();
  for (uint64_t i = 0; i < ops; i++) {
    while (i >= window && atomic_load_explicit(&ctl->seen, memory_order_acquire) < i - window + 1) {
    }
    memcpy(region + (i % window) * unit, src, unit);
    atomic_store_explicit(&ctl->written, i + 1, memory_order_release);
  }
  while (atomic_load_explicit(&ctl->seen, memory_order_acquire) < ops) {
  }
  double s = now() - t0;
  waitpid(child, NULL, 0);
  /* Every slot holds the source (a check that the copies happened). */
  for (uint64_t k = 0; k < (ops < window ? ops : window); k++)
    if (memcmp(region + k * unit, src, unit) != 0) {
      fprintf(stderr, "host_mapped: slot %llu differs\n", (unsigned long long)k);
      return 1;
    }
  printf("{\"ops\":%llu,\"bytes\":%llu,\"seconds\":%.9f}\n", (unsigned long long)ops,
         (unsigned long long)(ops * unit), s);
  return 0;
}
