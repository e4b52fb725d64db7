/*
 * Where Trellis looks for libfabric at run time, in order. Shared by the addon (fabric_lib.cc) and
 * the benchmark's raw C programs (bench/fabric_dl.h), so both measure the same library.
 *   With TRELLIS_FABRIC_ENV set (an install prefix): these under it, and nothing else.
 *   Otherwise: these names, the first through the dynamic loader's search path.
 */
#ifndef TRELLIS_FABRIC_SEARCH_H
#define TRELLIS_FABRIC_SEARCH_H
#define TRELLIS_FABRIC_ENV "TRELLIS_LIBFABRIC_DIR"
#define TRELLIS_FABRIC_CANDIDATES 3
static const char *const trellis_fabric_under_prefix[TRELLIS_FABRIC_CANDIDATES] = {
    "/lib/libfabric.so.1", "/lib64/libfabric.so.1", "/libfabric.so.1"};
static const char *const trellis_fabric_default[TRELLIS_FABRIC_CANDIDATES] = {
    "libfabric.so.1", "/opt/amazon/efa/lib64/libfabric.so.1", "/opt/amazon/efa/lib/libfabric.so.1"};
#endif
