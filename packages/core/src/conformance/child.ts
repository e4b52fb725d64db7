// The lifetime policy of a child process driven over its stdin (peer-main, the CLI's workers): it
// lives as long as its parent does, and leaves no shared-memory regions behind when it goes.
import { Worker } from 'node:worker_threads';

/**
 * Call first in a child process driven over its stdin by a parent that owns the interrupts (a
 * `trellis` command, a test): SIGINT (Ctrl-C reaches the whole process group) is left to the
 * parent, whose exit closes this process's stdin; SIGTERM and SIGHUP exit through `process.exit`,
 * on which a native engine unlinks its shared regions (a default death would leave them in
 * /dev/shm); a write to a parent that died (EPIPE) is ignored. End the stdin loop with
 * {@link closeAndExit}.
 */
export function followParent(): void {
  process.on('SIGINT', () => {});
  for (const [sig, n] of [
    ['SIGTERM', 15],
    ['SIGHUP', 1],
  ] as const)
    process.on(sig, () => process.exit(128 + n));
  process.stdout.on('error', () => {});
}

/**
 * The parent is gone (stdin closed): close `engine` (which unlinks its shared regions) within 3 s
 * and exit 1, rather than run on as an orphan. A close that blocks this thread itself — a native
 * engine whose worker is stuck inside the provider (libfabric 1.17's shm with a dead peer) cannot
 * be joined — is ended by a thread of its own: 5 s after the call the process is SIGKILLed (its
 * shared regions are then left to the next Trellis process's cleanup of dead processes' regions).
 */
export async function closeAndExit(engine: { close(): Promise<void> }): Promise<never> {
  setTimeout(() => process.exit(1), 3000).unref();
  // The timer above runs on this thread, so it cannot end a close that blocks it.
  new Worker(`setTimeout(() => process.kill(${process.pid}, 'SIGKILL'), 5000);`, { eval: true }).unref();
  await engine.close().catch(() => {});
  process.exit(1);
}
