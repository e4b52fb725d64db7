/*
 * pin.h — the benchmark's --pin for the C baselines: a forked target (or rma_raw's `target`) pins
 * itself to the CPUs in TRELLIS_BENCH_TARGET_CPUS, as the SDK benchmark's target engine is pinned.
 */
#pragma once
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

/* TRELLIS_BENCH_TARGET_CPUS: a CPU list as taskset takes it ("2,4-5"); unset or empty: the caller
 * stays where its parent runs. A list that cannot be applied exits 1 with the reason. */
static void pin_target(void) {
  const char *list = getenv("TRELLIS_BENCH_TARGET_CPUS");
  if (!list || !*list) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (const char *p = list; *p;) {
    char *end;
    long lo = strtol(p, &end, 10), hi = lo;
    if (end == p) break;
    if (*end == '-') hi = strtol(end + 1, &end, 10);
    for (long c = lo; c <= hi && c < CPU_SETSIZE; c++) CPU_SET((int)c, &set);
    p = *end == ',' ? end + 1 : end;
    if (*end != ',' && *end) break;
  }
  if (sched_setaffinity(0, sizeof set, &set)) {
    perror("bench: sched_setaffinity (TRELLIS_BENCH_TARGET_CPUS)");
    exit(1);
  }
}
