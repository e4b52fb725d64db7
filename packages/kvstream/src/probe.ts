// PeerProbe: periodic immediates to the peers a side has work with, so a dead peer process is
// noticed by a side that only waits on counters.
import type { NetAddr, TransferEngine, TrellisError } from '@trellis/core';

/**
 * Liveness of the peers a side has work with: every `intervalMs`, an immediate (`imm`, which the
 * peer never waits on) to each; the first that fails reports the peer dead. A dead peer process is
 * otherwise invisible to a side that only waits on counters. A probe that times out while the
 * owner heard from the peer (`heard`: one of its writes to the peer completed) does not: queued
 * behind a backlog of bulk writes to a live peer (shm, several decode processes), a probe can
 * take longer than its deadline.
 */
export class PeerProbe {
  private readonly peers = new Map<
    string,
    { addr: NetAddr; refs: number; inflight: boolean; heard: number }
  >();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly engine: TransferEngine,
    private readonly imm: number,
    private readonly intervalMs: number,
    private readonly onDead: (peer: NetAddr, err: TrellisError) => void,
  ) {}

  add(peer: NetAddr): void {
    const key = peer.toString();
    const p = this.peers.get(key);
    if (p) p.refs++;
    else this.peers.set(key, { addr: peer, refs: 1, inflight: false, heard: 0 });
    if (!this.timer && !this.closed) {
      this.timer = setInterval(() => this.tick(), this.intervalMs);
      this.timer.unref();
    }
  }

  remove(peer: NetAddr): void {
    const key = peer.toString();
    const p = this.peers.get(key);
    if (!p) return;
    if (--p.refs <= 0) this.peers.delete(key);
    if (this.peers.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** An operation with `peer` completed: it was alive since the probes in flight were posted. */
  heard(peer: string): void {
    const p = this.peers.get(peer);
    if (p) p.heard++;
  }

  private tick(): void {
    for (const [key, p] of this.peers) {
      if (p.inflight) continue;
      p.inflight = true;
      const heard = p.heard;
      this.engine.submitImm({ dst: p.addr, imm: this.imm, timeoutMs: this.intervalMs * 4 }).then(
        () => {
          p.inflight = false;
        },
        (e: TrellisError) => {
          p.inflight = false;
          if (this.closed || this.engine.closed || this.peers.get(key) !== p) return;
          // Slow, not dead: the peer completed other work meanwhile (the next tick probes again).
          if (e.code === 'TIMEOUT' && p.heard !== heard) return;
          this.peers.delete(key);
          this.onDead(p.addr, e);
        },
      );
    }
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.peers.clear();
  }
}
