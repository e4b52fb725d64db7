// PeerProbe: periodic immediates to the peers a side has work with, so a dead peer process is
// noticed by a side that only waits on counters.
import type { NetAddr, TransferEngine, TrellisError } from '@trellis/core';

/**
 * Liveness of the peers a side has work with: every `intervalMs`, an immediate (`imm`, which the
 * peer never waits on) to each; the first that fails reports the peer dead. A dead peer process is
 * otherwise invisible to a side that only waits on counters.
 */
export class PeerProbe {
  private readonly peers = new Map<string, { addr: NetAddr; refs: number; inflight: boolean }>();
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
    else this.peers.set(key, { addr: peer, refs: 1, inflight: false });
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

  private tick(): void {
    for (const [key, p] of this.peers) {
      if (p.inflight) continue;
      p.inflight = true;
      this.engine.submitImm({ dst: p.addr, imm: this.imm, timeoutMs: this.intervalMs * 4 }).then(
        () => {
          p.inflight = false;
        },
        (e: TrellisError) => {
          p.inflight = false;
          if (this.closed || this.engine.closed || this.peers.get(key) !== p) return;
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
