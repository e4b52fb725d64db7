// The seam between MoeAllToAll and its modes: what one mode (who packs, who posts, where the rows
// live) does per round. MoeAllToAll keeps the protocol's checks and the round's state (protocol.ts);
// a mode moves the bytes. Interface only.
import type { PortStats } from '@trellis/core';
import type { Round } from '../protocol.js';
import type { DispatchInput, DispatchResult, MoeMemory } from '../types.js';

/** How this rank reaches a rank: itself, NVLink (CUDA IPC), or the engine. @internal */
export type MoePath = 'self' | 'nvlink' | 'rdma';

/**
 * One way of running rounds. Each phase method is called once per round, in order, with the round
 * MoeAllToAll started: it has checked the input and the round's state, and it marks the round
 * dispatched and ends it when the mode's receive resolves. @internal
 */
export interface MoeMode {
  /** This rank's buffer descriptor, to give every peer. */
  readonly descriptor: string;
  /** connect() went far enough that rounds may start. */
  readonly connected: boolean;
  /** How this rank reaches each rank, as of the last connect. */
  readonly paths: ReadonlyArray<MoePath>;
  /** Take every rank's descriptor (their count is checked). */
  connect(descriptors: readonly string[]): void;
  /** Why these tokens and scales are not this mode's memory, or undefined. */
  checkTokens(tokens: unknown, bytes: number, scales: unknown, scaleCount: number): string | undefined;
  /** Count and pack `x`'s rows and start them towards their experts' ranks. */
  dispatchSend(x: DispatchInput<MoeMemory>, r: Round): void;
  /** Wait for this round's rows and lay them out per local expert. */
  dispatchRecv(r: Round): Promise<DispatchResult<MoeMemory>>;
  /** Start the expert outputs back to their tokens' ranks; settles once they are posted. */
  combineSend(expertOut: Uint8Array | bigint, r: Round): Promise<void> | undefined;
  /** Wait for this rank's rows and for `sends()` (this rank's combineSend, read when needed), then sum them per token. */
  combineRecv(
    r: Round,
    accumulate: 'out' | 'fp32',
    sends: () => Promise<void> | undefined,
  ): Promise<Uint8Array | Float32Array | bigint>;
  /** The native proxy's engine-port counters, where the mode runs one. */
  proxyStats(): PortStats | undefined;
  /** Stop, unregister and free what the mode holds. */
  close(): Promise<void>;
}
