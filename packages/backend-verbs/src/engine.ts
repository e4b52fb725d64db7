// VerbsEngine and createEngine: the ibverbs RC backend's face — option checks and device choice
// (real HCAs, or the software RC model with `model: true`), over NativeEngineBase of
// @trellis/core/kit. All work is done by the addon (native.ts).
import { TrellisError } from '@trellis/core';
import { NativeEngineBase, type NativeEngineTuning } from '@trellis/core/kit';
import { addon, type NativeVerbsOptions } from './native.js';

/** Options of {@link createEngine}. The worker's tuning (`cpu`, `opTimeoutMs`, `idleSpinUs`, ...) is {@link NativeEngineTuning}. */
export interface VerbsEngineOptions extends NativeEngineTuning {
  /**
   * `true` (or `TRELLIS_VERBS_MODEL=1`): run on the software RC model instead of libibverbs — devices
   * `rcm0`..`rcm3`, present in every process, reachable across processes of one host. For tests and
   * development on machines without an RDMA device. Default `false`.
   */
  model?: boolean;
  /** NICs (devices) this engine owns, 1..4. Default 1. */
  nics?: number;
  /**
   * Device names, one per NIC (`['mlx5_0', 'mlx5_1']`). Default: the first `nics` devices whose
   * port is active, in `ibv_get_device_list` order (see {@link devicesNearGpu} for affinity).
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
  /** How long a QP handshake may take before queued operations fail with PEER_LOST. Default 5000 ms. */
  connectTimeoutMs?: number;
  /** Register memory with IBV_ACCESS_RELAXED_ORDERING (ignored where unsupported). Default true. */
  relaxedOrdering?: boolean;
  /** Send-queue depth of each QP. Default 1024. */
  maxSendWr?: number;
  /** Zero-byte receives kept posted for immediates, per NIC. Default 2048. */
  immRecvs?: number;
}

const num = (name: string, v: unknown, lo: number, hi: number): void => {
  if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi)) {
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `createEngine: ${name} must be an integer in ${lo}..${hi}, got ${String(v)}`,
    );
  }
};

/** An engine on ibverbs RC queue pairs (or the software RC model). Create it with {@link createEngine}. */
export class VerbsEngine extends NativeEngineBase {
  /** True when this engine runs on the software RC model, not on an RDMA device. */
  readonly model: boolean;

  /** @internal Use {@link createEngine}. */
  constructor(opts: VerbsEngineOptions) {
    const nics = opts.nics ?? 1;
    num('nics', nics, 1, 4);
    num('port', opts.port, 1, 255);
    num('gidIndex', opts.gidIndex, 0, 255);
    num('handshakePort', opts.handshakePort, 0, 65535);
    num('timeout', opts.timeout, 0, 31);
    num('retryCnt', opts.retryCnt, 0, 7);
    num('rnrRetry', opts.rnrRetry, 0, 7);
    num('minRnrTimer', opts.minRnrTimer, 0, 31);
    num('connectTimeoutMs', opts.connectTimeoutMs, 1, 3_600_000);
    num('maxSendWr', opts.maxSendWr, 1, 16384);
    num('immRecvs', opts.immRecvs, 16, 16384);
    if (
      opts.devices !== undefined &&
      (!Array.isArray(opts.devices) || opts.devices.some((d) => typeof d !== 'string'))
    ) {
      throw new TrellisError('INVALID_ARGUMENT', 'createEngine: devices must be an array of device names');
    }
    const model = opts.model ?? process.env.TRELLIS_VERBS_MODEL === '1';
    super({
      backendName: '@trellis/backend-verbs',
      nics,
      tuning: opts,
      addon: addon(),
      nativeOptions: {
        model,
        nics,
        devices: opts.devices,
        port: opts.port,
        gidIndex: opts.gidIndex,
        handshakeHost: opts.handshakeHost,
        handshakePort: opts.handshakePort,
        timeout: opts.timeout,
        retryCnt: opts.retryCnt,
        rnrRetry: opts.rnrRetry,
        minRnrTimer: opts.minRnrTimer,
        connectTimeoutMs: opts.connectTimeoutMs,
        relaxedOrdering: opts.relaxedOrdering,
        maxSendWr: opts.maxSendWr,
        immRecvs: opts.immRecvs,
      } satisfies NativeVerbsOptions,
      unsupportedHint: model
        ? ''
        : ' (no RDMA device here? `createEngine({ model: true })` runs on the software RC model)',
      // The model's wire reaches only the model. (InfiniBand and RoCE NICs share the kind; their
      // addresses say which link they are on, and the native side refuses a mismatch.)
      kindOf: (providers) => (providers[0]?.provider === 'rc-model' ? 'rc-model' : 'ib-rc'),
    });
    this.model = model;
  }

  protected checkNicAddress(nic: Uint8Array): string | undefined {
    // [u8 version=1][u8 link][u8 port][u8 mtu][u16 lid][u16 hs port][u32 hs ip][u32 nonce][gid 16]
    if (nic.length !== 32 || nic[0] !== 1) return 'is not a verbs NIC address';
    const link = nic[1];
    if (link !== 1 && link !== 2) return 'names an unknown link layer';
    return undefined;
  }
}

/**
 * Create an engine on ibverbs RC queue pairs.
 *
 * @example
 * ```ts
 * import { createEngine } from '@trellis/backend-verbs';
 * const engine = await createEngine({ devices: ['mlx5_0', 'mlx5_1'], nics: 2 });
 * // Without an RDMA device (tests, laptops): the software RC model.
 * const modelled = await createEngine({ model: true });
 * ```
 */
export async function createEngine(opts: VerbsEngineOptions = {}): Promise<VerbsEngine> {
  return new VerbsEngine(opts);
}
