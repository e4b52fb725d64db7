/* Trellis native engine kit — the engine port: a C ABI through which native code of another
 * addon (a proxy thread such as @trellis/moe's) posts writes on an engine and reads immediate
 * counts, with no JavaScript turn per step.
 *
 * JavaScript opens a port on an engine (`engine.openPort({count})`), gives it windows
 * (`port.setWindows([...])`: each a validated source range, destination range and immediate), and
 * hands `port.handle` — a pointer to a trellis_port_v1, as a bigint — to the native consumer. The
 * consumer then calls post() from any one thread; the engine's worker posts and completes the
 * work. The JavaScript side validated the windows; post() checks only that a sub-range lies
 * inside its window.
 *
 * Every post settles exactly once (counted in `settled`, failures also in `failed`, the first
 * failure's code and message kept). Immediates of the counted values never reach JavaScript's
 * immCounter: the port owns them from openPort on.
 *
 * Lifetime: the handle stays valid until port.close() on the JavaScript side resolves; the
 * consumer must have stopped calling it before that. Once the engine is closed, post() returns
 * TRELLIS_PORT_CLOSED and wait() returns at once.
 */
#ifndef TRELLIS_PORT_H
#define TRELLIS_PORT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRELLIS_PORT_VERSION 1u

/* post() results */
#define TRELLIS_PORT_OK 0
#define TRELLIS_PORT_CLOSED (-1)    /* the port or its engine is closed: nothing was posted */
#define TRELLIS_PORT_RANGE (-2)     /* the sub-range is outside the window: nothing was posted */
#define TRELLIS_PORT_NO_WINDOW (-3) /* no window of that index */

typedef struct trellis_port_v1 {
  uint32_t version; /* TRELLIS_PORT_VERSION */
  uint32_t size;    /* sizeof(trellis_port_v1) */
  void* self;
  /* Post `len` bytes from offset `src` of window `window`'s source range to offset `dst` of its
   * destination range, with the window's immediate. len 0: the immediate alone. Thread-safe. */
  int (*post)(void* self, uint32_t window, uint64_t src, uint64_t dst, uint64_t len);
  /* Arrivals so far of the port's counted immediate number `slot` (its index in `count`). */
  uint64_t (*count)(void* self, uint32_t slot);
  /* Posts settled so far; *failed (if not NULL) receives how many of them failed. */
  uint64_t (*settled)(void* self, uint64_t* failed);
  /* The first failure: its code name (e.g. "PEER_LOST") and message, written NUL-terminated into
   * buf (at most n bytes, "code: message"). Returns 0 when nothing failed, else 1 + the index of
   * the window that failed post was made on (so the consumer can name its destination). */
  int (*error)(void* self, char* buf, size_t n);
  /* Block until something the port counts changed since `seen` (a value it returned before; 0
   * at first) or `timeout_us` passed. Returns the current change sequence. */
  uint64_t (*wait)(void* self, uint64_t seen, uint32_t timeout_us);
} trellis_port_v1;

#ifdef __cplusplus
}
#endif

#endif
