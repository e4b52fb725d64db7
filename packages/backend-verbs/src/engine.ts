// VerbsEngine and createEngine: the ibverbs RC backend's face — option checks and device choice
// (real HCAs, or the software RC model with `model: true`), over NativeEngineBase of
// @trellis/core/kit. All work is done by the addon (native.ts).
import { isIPv4 } from 'node:net';
import { TrellisError } from '@trellis/core';
import { NativeEngineBase, type NativeEngineTuning, show } from '@trellis/core/kit';
import { addon, type NativeVerbsOptions } from './native.js';
import type { VerbsEngineOptions } from './options.js';

export type { VerbsEngineOptions } from './options.js';

const num = (name: string, v: unknown, lo: number, hi: number): void => {
  if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi)) {
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `createEngine: ${name} must be an integer in ${lo}..${hi}, got ${show(v)}`,
    );
  }
};

const shown = (v: unknown): string =>
  typeof v === 'string' ? `'${v}'` : Array.isArray(v) ? JSON.stringify(v) : String(v);

/** {@link VerbsEngineOptions}' own fields (one added there and not here fails to compile). */
const OWN_OPTIONS: Record<Exclude<keyof VerbsEngineOptions, keyof NativeEngineTuning>, true> = {
  model: true,
  nics: true,
  devices: true,
  port: true,
  gidIndex: true,
  handshakeHost: true,
  handshakePort: true,
  timeout: true,
  retryCnt: true,
  rnrRetry: true,
  minRnrTimer: true,
  connectTimeoutMs: true,
  relaxedOrdering: true,
  maxSendWr: true,
  immRecvs: true,
};

/** An engine on ibverbs RC queue pairs (or the software RC model). Create it with {@link createEngine}. */
export class VerbsEngine extends NativeEngineBase {
  /** True when this engine runs on the software RC model, not on an RDMA device. */
  readonly model: boolean;

  /** @internal Use {@link createEngine}. */
  constructor(opts: VerbsEngineOptions) {
    for (const name of ['model', 'relaxedOrdering'] as const) {
      const v = opts[name];
      if (v !== undefined && typeof v !== 'boolean')
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `createEngine: ${name} must be true or false, got ${shown(v)}`,
        );
    }
    if (
      opts.devices !== undefined &&
      (!Array.isArray(opts.devices) ||
        opts.devices.length === 0 ||
        opts.devices.some((d) => typeof d !== 'string' || d === ''))
    ) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: devices must be a non-empty array of device names (e.g. ['mlx5_0']), got ${shown(opts.devices)}`,
      );
    }
    // One device per NIC: without `nics` the list says how many.
    const nics = opts.nics ?? opts.devices?.length ?? 1;
    num('nics', nics, 1, 4);
    if (opts.devices !== undefined && opts.devices.length !== nics)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: devices names one device per NIC: ${opts.devices.length} names for nics: ${nics} — pass ${nics} names, or leave nics out`,
      );
    if (
      opts.handshakeHost !== undefined &&
      (typeof opts.handshakeHost !== 'string' || !isIPv4(opts.handshakeHost))
    )
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: handshakeHost must be an IPv4 address (e.g. '10.0.0.5'), got ${shown(opts.handshakeHost)}`,
      );
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
    const model = opts.model ?? process.env.TRELLIS_VERBS_MODEL === '1';
    super({
      backendName: '@trellis/backend-verbs',
      nics,
      tuning: opts,
      optionKeys: Object.keys(OWN_OPTIONS),
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
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `createEngine: pass an options object (e.g. {devices: ['mlx5_0']}) or nothing, got ${opts === null ? 'null' : Array.isArray(opts) ? 'an array' : JSON.stringify(opts)}`,
    );
  return new VerbsEngine(opts);
}
