/**
 * `@trellis/core/peer-process` — a Trellis engine in another OS process, driven over a pipe
 * ({@link PeerProcess}), and a child process spoken to in JSON lines ({@link LineProcess}): what
 * the cross-process tests, `trellis demo` and `trellis bench` run peers with; and, for the child's
 * side, {@link followParent} and {@link closeAndExit}. Unlike
 * `@trellis/core/conformance`, it needs no test runner.
 *
 * @packageDocumentation
 */
export { closeAndExit, followParent } from './conformance/child.js';
export { LineProcess, PeerProcess } from './conformance/peer.js';
