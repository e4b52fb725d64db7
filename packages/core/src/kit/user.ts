/**
 * Run a user callback from inside Trellis machinery (a delivery loop, a completion batch). An
 * exception surfaces as an uncaught error, as it would from an event emitter, instead of breaking
 * the loop that called it.
 */
export function callUser(fn: () => void): void {
  try {
    fn();
  } catch (e) {
    queueMicrotask(() => {
      throw e;
    });
  }
}
