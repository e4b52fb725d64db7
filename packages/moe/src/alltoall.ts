// MoeAllToAll: MoE dispatch and combine across ranks, the package's public class. create() checks
// the config, lays out buffers and opens the mode (modes/factory.ts: host, host proxy, GPU proxy,
// GPU direct); dispatch and combine check their inputs, run the phases and keep the round's state
// (protocol.ts), and leave every byte to the mode.
import { type PortStats, type TransferEngine, TrellisError } from '@trellis/core';
import { show } from '@trellis/core/kit';
import type { MoeDeviceOps } from './device.js';
import { createMode } from './modes/factory.js';
import type { MoeMode } from './modes/mode.js';
import { checkConfig, layoutOf, Protocol, SHARED_KEYS } from './protocol.js';
import type {
  DispatchInput,
  DispatchResult,
  MoeBuffer,
  MoeConfig,
  MoeDeviceOptions,
  MoeMemory,
  Phases,
} from './types.js';

export { checkRoutes } from './protocol.js';
export type {
  DispatchInput,
  DispatchResult,
  MoeBuffer,
  MoeConfig,
  MoeDeviceOptions,
  MoeDType,
  MoeMemory,
  MoeScales,
  Phases,
} from './types.js';

/**
 * Expert-parallel dispatch and combine — the CPU reference that defines the results, over any
 * Trellis engine in host memory.
 *
 * Protocol of a round: every rank writes its token counts per expert to every peer (routes), and
 * at once the first `maxPrivateTokens` rows for each peer into that peer's private slot for it (one
 * write per peer, an immediate alone when it has none); once every peer's routes are in, every rank
 * computes the same overflow offsets and writes the rest in one more write per peer. The receiver
 * knows from the routes how many immediates to expect and lays its experts' tokens out
 * contiguously. Combine sends each row back to where it came from, into a region the source sized
 * from its own send counts; the source sums each token's rows weighted, in fp32. A barrier closes the
 * round, after which every buffer may be reused.
 */
export class MoeAllToAll<M extends MoeMemory = 'host'> {
  readonly config: Required<MoeConfig>;
  readonly localExperts: number;
  /** This rank's buffer descriptor, to give every peer (see {@link connect}). */
  readonly descriptor: string;

  private combineSends: Promise<void> | undefined;

  private constructor(
    private readonly p: Protocol,
    private readonly mode: MoeMode,
    /** Gives this instance's immediate values back (claimImms), at close. */
    private readonly releaseImms: () => void,
    /** Where its tokens and expert rows live: what dispatch and combine take. */
    private readonly memory: MoeMemory,
  ) {
    this.config = p.c;
    this.localExperts = p.localExperts;
    this.descriptor = `${mode.descriptor} ${configTag(p.c)}/${p.c.rank}`;
  }

  /**
   * Validate the config and register this rank's buffers, sized from it. With `device`, tokens,
   * expert rows and every buffer are CUDA memory on that GPU: rows are packed, laid out and
   * combined there by kernels, and the engine (created with GPU memory operations) moves them.
   */
  static async create(engine: TransferEngine, cfg: MoeConfig): Promise<MoeAllToAll<'host'>>;
  static async create(
    engine: TransferEngine,
    cfg: MoeConfig,
    device: MoeDeviceOptions,
  ): Promise<MoeAllToAll<'device'>>;
  static async create(
    engine: TransferEngine,
    cfg: MoeConfig,
    device?: MoeDeviceOptions,
  ): Promise<MoeAllToAll<'host'> | MoeAllToAll<'device'>> {
    // Check the config, lay the buffers out, then the mode's factory.
    if (typeof engine !== 'object' || engine === null || typeof engine.registerMemory !== 'function')
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.create: engine must be a TransferEngine (a backend's createEngine()), got ${engine === null ? 'null' : typeof engine === 'object' ? 'an object without registerMemory' : typeof engine}`,
      );
    if (device !== undefined) checkDevice(device);
    const c = checkConfig(cfg, device);
    const p = new Protocol(c, layoutOf(c));
    const { mode, release } = await createMode(engine, p, device);
    return new MoeAllToAll(p, mode, release, device ? 'device' : 'host');
  }

  /**
   * Give every rank's descriptor (index = rank; this rank's slot must hold its own, else the list
   * is taken to be in another order and refused). On the GPU, a peer of
   * the same node (`nodeSize`) whose descriptor carries a CUDA IPC handle is reached over NVLink:
   * this rank's kernels store straight into its region, and only the immediates go through the
   * engine.
   */
  connect(descriptors: readonly string[]): void {
    const c = this.config;
    if (this.closed) throw new TrellisError('CLOSED', 'MoeAllToAll.connect: the instance was closed');
    if (!Array.isArray(descriptors))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.connect: descriptors must be an array of every rank's moe.descriptor (index = rank), got ${descriptors === null ? 'null' : typeof descriptors}`,
      );
    if (descriptors.length !== c.worldSize)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.connect: need ${c.worldSize} descriptors, got ${descriptors.length}`,
      );
    // Every rank's descriptor carries what its buffers were laid out from: ranks whose configs
    // differ (a maxPrivateTokens of 2 against 6 moves every overflow row) would write each other's
    // rows to the wrong places and no check later could tell.
    const own = configTag(c);
    const modeDescriptors = descriptors.map((d, r) => {
      if (typeof d !== 'string')
        throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.connect: descriptors must be strings');
      const at = d.lastIndexOf(' ');
      const last = at < 0 ? '' : d.slice(at + 1);
      // The last word: `moecfg:<the shared fields>/<rank>`. One cut short (no rank, fields missing)
      // is not a descriptor rather than a config that differs.
      const m = /^(moecfg:[^/]*)\/(\d+)$/.exec(last);
      if (!m || m[1]!.split(',').length !== SHARED_KEYS.length)
        throw new TrellisError(
          'INVALID_DESCRIPTOR',
          last.startsWith('moecfg:')
            ? `MoeAllToAll.connect: descriptors[${r}] is not a whole MoeAllToAll descriptor (cut short, or from another version): give each rank's moe.descriptor as it is`
            : `MoeAllToAll.connect: descriptors[${r}] is not a MoeAllToAll descriptor (give each rank's moe.descriptor)`,
        );
      const tag = m[1]!;
      if (tag !== own)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `MoeAllToAll.connect: rank ${r}'s config differs from this rank's (${tagDiff(tag, own)}): every rank needs the same ${SHARED_KEYS.slice(0, -1).join(', ')} and ${SHARED_KEYS.at(-1)}`,
        );
      // Each rank's own: two processes configured with one rank would both take its rows.
      if (Number(m[2]) !== r)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `MoeAllToAll.connect: descriptors[${r}] is rank ${m[2]}'s descriptor (index = rank: rank r's moe.descriptor at r; a list in another order, or two processes given one rank)`,
        );
      return d.slice(0, at);
    });
    // This rank's slot holds its own descriptor: a list in another order (ranks counted from 1, a
    // peer's list sorted differently) would send every rank's rows to the wrong place.
    if (descriptors[c.rank] !== this.descriptor)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.connect: descriptors[${c.rank}] is not this rank's descriptor (index = rank: rank r's moe.descriptor at r)`,
      );
    try {
      this.mode.connect(modeDescriptors);
    } finally {
      // The paths as far as the mode got (a connect that fails after setting them keeps them).
      this.paths = this.mode.paths;
    }
  }

  /**
   * What this instance did: rounds started since it was created (with the native proxy: since the
   * last {@link connect}, which starts its thread afresh), and with the native proxy its
   * engine port's counters (writes and immediates it posted, settled and failed; arrivals of the
   * instance's four immediates — routes, dispatch, combine, barrier — that it counted).
   */
  stats(): { rounds: number; proxy?: PortStats } {
    const proxy = this.mode.proxyStats();
    return { rounds: this.p.rounds, ...(proxy ? { proxy } : {}) };
  }

  /** How this rank reaches each rank (after {@link connect}): itself, NVLink (CUDA IPC), or the engine. */
  paths: ReadonlyArray<'self' | 'nvlink' | 'rdma'> = [];

  /**
   * Dispatch this rank's tokens to the experts they are routed to. With `{send: true, recv: false}`
   * (or `{recv: false}`) it posts and returns at once (resolving to undefined); `{send: false,
   * recv: true}` (or `{send: false}`) waits for and lays out what arrived. A phase left out runs:
   * `{recv: true}` alone is both. Default: both.
   */
  async dispatch(
    input: DispatchInput<M> | undefined,
    phases: Phases = {},
  ): Promise<DispatchResult<M> | undefined> {
    const { send, recv } = checkPhases('MoeAllToAll.dispatch', phases, false);
    this.throwIfFailed('dispatch');
    if (!this.mode.connected && this.config.worldSize > 1)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: connect() first');
    if (send) {
      if (typeof input !== 'object' || input === null)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `MoeAllToAll.dispatch: input must be {tokens, topkIds, topkWeights${this.p.scaleCount ? ', scales' : ''}} when sending, got ${input === null ? 'null' : typeof input}`,
        );
      await this.dispatchSend(input);
    }
    if (!recv) return undefined;
    return this.dispatchRecv();
  }

  /**
   * The error that failed this instance, once a phase failed after anything was posted (a peer
   * that does not arrive by `timeoutMs`, a write that fails, a peer's routes that do not fit):
   * the ranks no longer agree on where the next round's data goes, so every later `dispatch` and
   * `combine` rejects with its code at once; close the instance and create and connect a new one
   * on every rank. Bad input refused before anything is posted does not fail it.
   */
  get failure(): TrellisError | undefined {
    return this.failed;
  }

  private failed: TrellisError | undefined;
  private closed = false;

  /**
   * Record the first failure after posting (see {@link MoeAllToAll.failure}); returns `e`, or
   * `CLOSED` once close() has run (a pending phase's wait, aborted then, fails that way).
   */
  private fail(e: unknown): unknown {
    if (this.closed) e = new TrellisError('CLOSED', 'MoeAllToAll: closed', { cause: e });
    if (!this.failed)
      this.failed =
        e instanceof TrellisError
          ? e
          : new TrellisError('INTERNAL', `MoeAllToAll: ${String(e)}`, { cause: e });
    return e;
  }

  private throwIfFailed(op: 'dispatch' | 'combine'): void {
    if (this.closed) throw new TrellisError('CLOSED', `MoeAllToAll.${op}: the instance was closed`);
    const f = this.failed;
    if (f)
      throw new TrellisError(
        f.code,
        `MoeAllToAll.${op}: this instance failed in an earlier phase (${f.message}); the ranks no longer agree on the round — close it and create and connect a new one on every rank`,
        { cause: f },
      );
  }

  private checkInput(x: DispatchInput<M>): number {
    const c = this.config;
    const p = this.p;
    if (!(x.topkIds instanceof Int32Array))
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: topkIds must be an Int32Array');
    if (!(x.topkWeights instanceof Float32Array))
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: topkWeights must be a Float32Array');
    const n = x.topkIds.length / c.topk;
    if (!Number.isInteger(n))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.dispatch: topkIds holds ${x.topkIds.length} ids, not a multiple of topk ${c.topk}`,
      );
    if (n > c.maxTokensPerRank)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.dispatch: ${n} tokens (topkIds holds ${x.topkIds.length} ids, ${c.topk} per token) is more than maxTokensPerRank ${c.maxTokensPerRank}`,
      );
    if (p.scaleCount && x.scales === undefined)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.dispatch: this instance was created with scales: true: input.scales must hold ${n * p.scaleCount} values (${p.scaleCount} per token)`,
      );
    const why = this.mode.checkTokens(
      x.tokens,
      n * p.tokenBytes,
      p.scaleCount ? x.scales : undefined,
      n * p.scaleCount,
    );
    if (why) throw new TrellisError('INVALID_ARGUMENT', `MoeAllToAll.dispatch: ${why}`);
    if (x.tokens instanceof Uint8Array && x.tokens.length !== n * p.tokenBytes)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.dispatch: tokens is ${x.tokens.length} bytes; ${n} tokens of ${c.hidden} ${c.inDtype} are ${n * p.tokenBytes}`,
      );
    if (x.topkWeights.length !== n * c.topk)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: topkWeights must match topkIds');
    if (p.scaleCount && x.scales instanceof Float32Array && x.scales.length !== n * p.scaleCount)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `MoeAllToAll.dispatch: scales must hold ${n * p.scaleCount} values (${p.scaleCount} per token)`,
      );
    for (const e of x.topkIds)
      if (e < -1 || e >= c.numExperts)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `MoeAllToAll.dispatch: expert id ${e} is outside 0..${c.numExperts - 1} (or -1)`,
        );
    return n;
  }

  private async dispatchSend(x: DispatchInput<M>): Promise<void> {
    const r = this.p.round;
    if (r && !r.dispatched)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: the previous round has not finished');
    // Its combine reuses this round's buffers and counts: a new dispatch now would send peers
    // rows where they expect combine output.
    if (r)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        "MoeAllToAll.dispatch: this round's combine has not finished; combine before the next dispatch",
      );
    const n = this.checkInput(x);
    try {
      this.mode.dispatchSend(x as DispatchInput<MoeMemory>, this.p.begin(x, n));
    } catch (e) {
      throw this.fail(e);
    }
  }

  private async dispatchRecv(): Promise<DispatchResult<M>> {
    const r = this.p.round;
    if (!r || r.dispatched)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.dispatch: recv without a send this round');
    if (r.dispatchRecvBegun)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        "MoeAllToAll.dispatch: this round's recv phase is already pending; await it",
      );
    r.dispatchRecvBegun = true;
    const result = await this.mode.dispatchRecv(r).catch((e: unknown) => {
      throw this.fail(e);
    });
    r.dispatched = true;
    return result as DispatchResult<M>;
  }

  /**
   * Send every expert output row back to its token's rank and sum each token's rows weighted by
   * its top-k weights, in fp32. `expertOut` holds `outDtype` rows in the order dispatch returned
   * them. Resolves (with `recv`) to `numTokens × hidden` of `outDtype`, or of fp32 with `accumulate: 'fp32'`.
   */
  async combine(
    input: { expertOut: MoeBuffer<M> } | undefined,
    phases: Phases & { accumulate?: 'out' | 'fp32' } = {},
  ): Promise<(M extends 'device' ? bigint : Uint8Array | Float32Array) | undefined> {
    const { send, recv } = checkPhases('MoeAllToAll.combine', phases, true);
    this.throwIfFailed('combine');
    const r = this.p.round;
    if (!r?.dispatched)
      throw new TrellisError('INVALID_ARGUMENT', 'MoeAllToAll.combine: dispatch this round first');
    const c = this.config;
    // The order of a round's combine: one send, then one recv (in one call or two).
    if (send && r.combineSent)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        "MoeAllToAll.combine: this round's send phase already ran; the next phase is combine's recv ({recv: true})",
      );
    if (recv && !send && !r.combineSent)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        "MoeAllToAll.combine: recv without a send this round; run combine's send phase first",
      );
    if (recv && r.combineRecvBegun)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        "MoeAllToAll.combine: this round's recv phase is already pending; await it",
      );
    if (send) {
      const why = this.checkOut(input, r.rows);
      if (why) throw new TrellisError('INVALID_ARGUMENT', `MoeAllToAll.combine: ${why}`);
      r.combineSent = true;
      this.combineSends = this.combineSend(input!.expertOut);
      this.combineSends.catch((e: unknown) => this.fail(e));
    }
    if (!recv) return undefined;
    r.combineRecvBegun = true;
    return this.combineRecv(phases.accumulate ?? 'out') as Promise<
      M extends 'device' ? bigint : Uint8Array | Float32Array
    >;
  }

  /** Why `input` is not this round's expert output (`rows` rows in this instance's memory), or undefined. */
  private checkOut(input: unknown, rows: number): string | undefined {
    if (typeof input !== 'object' || input === null)
      return `input must be an object {expertOut}, got ${show(input)}`;
    const out = (input as { expertOut?: unknown }).expertOut;
    const got =
      out === null ? 'null' : typeof out === 'object' ? (out.constructor?.name ?? 'object') : typeof out;
    if (this.memory === 'device')
      return typeof out === 'bigint'
        ? undefined
        : `expertOut must be a device pointer (bigint) for a GPU instance, got ${got}`;
    if (!(out instanceof Uint8Array)) return `expertOut must be a Uint8Array (host memory), got ${got}`;
    const want = rows * this.p.outRow;
    const c = this.config;
    return out.length === want
      ? undefined
      : `expertOut is ${out.length} bytes; ${rows} rows of ${c.hidden} ${c.outDtype} are ${want}`;
  }

  private async combineSend(out: MoeBuffer<M>): Promise<void> {
    return this.mode.combineSend(out, this.p.round!);
  }

  private async combineRecv(accumulate: 'out' | 'fp32'): Promise<Uint8Array | Float32Array | bigint> {
    const result = await this.mode
      .combineRecv(this.p.round!, accumulate, () => this.combineSends)
      .catch((e: unknown) => {
        throw this.fail(e);
      });
    // Closed (by a barrier, or the mode's own flags): every buffer may be reused by the next round.
    this.p.end();
    return result;
  }

  /**
   * Unregister this rank's buffers (and free them on the device). A phase pending now rejects
   * `CLOSED` (at once: its waits are aborted), as does every later `dispatch` and `combine`. Idempotent.
   *
   * Resolves once the engine has let go of every write this rank posted from its buffers: at once
   * normally, but after a peer died with this rank's writes to it still posted, only at the
   * engine's deadline (`opTimeoutMs`, 30 s by default) — the provider may read the buffers until
   * then, so they are not freed earlier. An engine created with a lower `opTimeoutMs` recovers sooner.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.mode.close();
    } finally {
      this.releaseImms();
    }
  }
}

/** {@link SHARED_KEYS}'s values, as the last word of a descriptor. */
function configTag(c: Required<MoeConfig>): string {
  return `moecfg:${SHARED_KEYS.map((k) => String(c[k])).join(',')}`;
}

/** Where two config tags differ: `maxPrivateTokens 2 there, 6 here`. */
function tagDiff(there: string, here: string): string {
  const a = there.slice('moecfg:'.length).split(',');
  const b = here.slice('moecfg:'.length).split(',');
  const diff = SHARED_KEYS.flatMap((n, i) =>
    a[i] === b[i] ? [] : [`${n} ${a[i] ?? '?'} there, ${b[i]} here`],
  );
  return diff.length ? diff.join('; ') : 'a tag this version does not read';
}

/**
 * The phases argument of dispatch and combine: left out, or an object whose `send` and `recv` are
 * booleans where given (at least one of them true) and, for combine, `accumulate` 'out' or 'fp32'.
 */
function checkPhases(op: string, phases: unknown, combine: boolean): { send: boolean; recv: boolean } {
  if (phases === undefined) return { send: true, recv: true };
  if (typeof phases !== 'object' || phases === null || Array.isArray(phases))
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: phases must be an object {send?, recv?${combine ? ', accumulate?' : ''}} or left out, got ${phases === null ? 'null' : Array.isArray(phases) ? 'an array' : typeof phases}`,
    );
  const p = phases as { send?: unknown; recv?: unknown; accumulate?: unknown };
  for (const k of ['send', 'recv'] as const)
    if (p[k] !== undefined && typeof p[k] !== 'boolean')
      throw new TrellisError('INVALID_ARGUMENT', `${op}: phases.${k} must be a boolean, got ${typeof p[k]}`);
  if (combine && p.accumulate !== undefined && p.accumulate !== 'out' && p.accumulate !== 'fp32')
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: phases.accumulate must be 'out' or 'fp32', got ${JSON.stringify(p.accumulate)}`,
    );
  // A phase left out runs (`{recv: true}` alone is both phases; `{send: false}` receives only).
  const send = (p.send as boolean | undefined) ?? true;
  const recv = (p.recv as boolean | undefined) ?? true;
  if (!send && !recv)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: phases {send: false, recv: false} runs nothing; leave one true`,
    );
  return { send, recv };
}

/**
 * The device options, before anything is allocated: an object of `ops` (with the calls every
 * device mode makes), a GPU ordinal and an optional boolean `gpuDriven`, nothing else (a misspelt
 * `gpuDriven` would run another mode). INVALID_ARGUMENT naming what is wrong.
 */
/** The members of {@link MoeDeviceOps} that are not optional (one left out here fails to compile). */
const REQUIRED_OPS: Record<RequiredKeys<MoeDeviceOps>, true> = {
  alloc: true,
  free: true,
  upload: true,
  download: true,
  copyRows: true,
  combine: true,
};
type RequiredKeys<T> = { [K in keyof T]-?: object extends Pick<T, K> ? never : K }[keyof T];

function checkDevice(device: unknown): void {
  const bad = (msg: string) => new TrellisError('INVALID_ARGUMENT', `MoeAllToAll.create: ${msg}`);
  if (device === null || typeof device !== 'object')
    throw bad(`device options must be an object {ops, device, gpuDriven?}, got ${show(device)}`);
  for (const k of Object.keys(device))
    if (k !== 'ops' && k !== 'device' && k !== 'gpuDriven')
      throw bad(`${show(k)} is not a device option (they are ops, device, gpuDriven)`);
  const d = device as { ops?: unknown; device?: unknown; gpuDriven?: unknown };
  const ops = d.ops as Record<string, unknown> | undefined;
  const missing = Object.keys(REQUIRED_OPS).filter((f) => typeof ops?.[f] !== 'function');
  if (ops === null || typeof ops !== 'object' || missing.length)
    throw bad(
      `device.ops must be device ops (cudaMoeOps() of @trellis/moe)${ops && typeof ops === 'object' ? `; these lack ${missing.join(', ')}` : `, got ${show(ops)}`}`,
    );
  if (!Number.isSafeInteger(d.device) || (d.device as number) < 0)
    throw bad(`device.device must be a GPU ordinal (an integer >= 0), got ${show(d.device)}`);
  if (d.gpuDriven !== undefined && typeof d.gpuDriven !== 'boolean')
    throw bad(`device.gpuDriven must be a boolean, got ${show(d.gpuDriven)}`);
}
