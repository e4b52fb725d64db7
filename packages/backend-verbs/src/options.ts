// VerbsEngineOptions: what createEngine takes (engine.ts checks it; native.ts passes the addon its
// share). Types only.
import type { NativeEngineTuning } from '@trellis/core/kit';

/** Options of {@link createEngine}. The worker's tuning (`cpu`, `opTimeoutMs`, `idleSpinUs`, ...) is {@link NativeEngineTuning}. */
export interface VerbsEngineOptions extends NativeEngineTuning {
  /**
   * `true` (or `TRELLIS_VERBS_MODEL=1`): run on the software RC model instead of libibverbs — devices
   * `rcm0`..`rcm3`, present in every process, reachable across processes of one host. For tests and
   * development on machines without an RDMA device. Default `false`.
   */
  model?: boolean;
  /** NICs (devices) this engine owns, 1..4. Default: the length of `devices` where given, else 1. */
  nics?: number;
  /**
   * Device names, one per NIC (`['mlx5_0', 'mlx5_1']`; with `nics` too, exactly `nics` of them, else
   * `INVALID_ARGUMENT`). Default: the first `nics` devices whose port is active, in
   * `ibv_get_device_list` order (see {@link devicesNearGpu} for affinity).
   */
  devices?: string[];
  /** Port number on each device. Default 1. */
  port?: number;
  /**
   * GID index. Default: automatic — on RoCE a RoCE v2 GID, IPv4-mapped first; on InfiniBand LID
   * routing is used and the GID is only advertised.
   */
  gidIndex?: number;
  /**
   * IPv4 address this engine's handshake listener binds and advertises; peers connect to it once
   * per NIC to exchange queue-pair numbers. Default: on RoCE the IPv4 address in the chosen GID;
   * on InfiniBand it must be given (an IPoIB or management address peers can reach).
   */
  handshakeHost?: string;
  /** TCP port of the handshake listener. Default 0 (any free port; it travels in the NetAddr). */
  handshakePort?: number;
  /** QP local ACK timeout exponent: 4.096 µs × 2^timeout. Default 14 (67 ms). 0 waits forever. */
  timeout?: number;
  /** Transport retries before IBV_WC_RETRY_EXC_ERR (PEER_LOST). Default 7. */
  retryCnt?: number;
  /** Receiver-not-ready retries; 7 retries forever. Default 7. */
  rnrRetry?: number;
  /** Minimum RNR NAK timer, IB encoding (12: 0.64 ms). Default 12. */
  minRnrTimer?: number;
  /**
   * How long a QP handshake may take. Default 5000 ms. Operations queued behind a handshake that
   * gets no answer fail with `PEER_LOST` once the peer has also missed one liveness probe (itself
   * bounded by 2 s and by this): up to about `connectTimeoutMs + min(connectTimeoutMs, 2000)` after
   * they were posted, or sooner by their own `timeoutMs`.
   */
  connectTimeoutMs?: number;
  /** Register memory with IBV_ACCESS_RELAXED_ORDERING (ignored where unsupported). Default true. */
  relaxedOrdering?: boolean;
  /** Send-queue depth of each QP. Default 1024. */
  maxSendWr?: number;
  /** Zero-byte receives kept posted for immediates, per NIC. Default 2048. */
  immRecvs?: number;
}
