/*
 * The raw baselines open libfabric at run time, as the addon does (native/fabric_lib.cc): the same
 * library, found the same way ($TRELLIS_LIBFABRIC_DIR, else libfabric.so.1 from the loader's search
 * path, else /opt/amazon/efa), so a prebuilt program measures whichever libfabric the SDK uses.
 * Include after the rdma headers; call fabric_dl_open() first.
 */
#ifndef TRELLIS_FABRIC_DL_H
#define TRELLIS_FABRIC_DL_H
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "../native/fabric_search.h"

static __typeof__(fi_getinfo) *p_fi_getinfo;
static __typeof__(fi_freeinfo) *p_fi_freeinfo;
static __typeof__(fi_dupinfo) *p_fi_dupinfo;
static __typeof__(fi_fabric) *p_fi_fabric;
static __typeof__(fi_strerror) *p_fi_strerror;

static void fabric_dl_open(const char *prog) {
  const char *dir = getenv(TRELLIS_FABRIC_ENV);
  void *h = NULL;
  char path[4096];
  for (int i = 0; i < TRELLIS_FABRIC_CANDIDATES && !h; i++) {
    if (dir && *dir)
      snprintf(path, sizeof path, "%s%s", dir, trellis_fabric_under_prefix[i]);
    else
      snprintf(path, sizeof path, "%s", trellis_fabric_default[i]);
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  }
  if (!h) {
    fprintf(stderr, "%s: libfabric.so.1 could not be loaded (%s)\n", prog, dlerror());
    exit(1);
  }
  p_fi_getinfo = (__typeof__(fi_getinfo) *)dlsym(h, "fi_getinfo");
  p_fi_freeinfo = (__typeof__(fi_freeinfo) *)dlsym(h, "fi_freeinfo");
  p_fi_dupinfo = (__typeof__(fi_dupinfo) *)dlsym(h, "fi_dupinfo");
  p_fi_fabric = (__typeof__(fi_fabric) *)dlsym(h, "fi_fabric");
  p_fi_strerror = (__typeof__(fi_strerror) *)dlsym(h, "fi_strerror");
  if (!p_fi_getinfo || !p_fi_freeinfo || !p_fi_dupinfo || !p_fi_fabric || !p_fi_strerror) {
    fprintf(stderr, "%s: the libfabric loaded lacks fi_getinfo, fi_freeinfo, fi_dupinfo, fi_fabric or fi_strerror\n", prog);
    exit(1);
  }
}

#define fi_getinfo (*p_fi_getinfo)
#define fi_freeinfo (*p_fi_freeinfo)
#define fi_fabric (*p_fi_fabric)
#define fi_strerror (*p_fi_strerror)
#undef fi_allocinfo
#define fi_allocinfo() p_fi_dupinfo(NULL)
#endif
