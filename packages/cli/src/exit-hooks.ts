// Clean-up that must run when the `trellis` process is interrupted (SIGINT, SIGTERM, SIGHUP): bin.ts
// runs every hook, synchronously, then exits 128 + the signal's number. Child processes notice the
// parent's exit themselves (their stdin closes) and close their engines; the hooks remove what only
// the parent knows of (temporary directories, shared-memory objects of processes it SIGKILLed).
const hooks = new Set<() => void>();

/** Run `f` if the process is interrupted; the returned function unregisters it. @internal */
export function atInterrupt(f: () => void): () => void {
  hooks.add(f);
  return () => hooks.delete(f);
}

/** Run every hook (each at most once; one that throws does not stop the others). @internal */
export function runInterruptHooks(): void {
  for (const f of [...hooks]) {
    hooks.delete(f);
    try {
      f();
    } catch {
      // best effort: the process is exiting
    }
  }
}
