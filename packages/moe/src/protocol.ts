// The protocol pieces every mode of MoeAllToAll shares, in one place: the config's defaults and
// checks, the buffer layout, the checks on a peer's routes, and the state of the round in flight
// (its counts, the offsets every rank computes alike from them, the rounds counter). Pure JS on
// host values: no engine, no memory of its own.
import { HEARTBEAT_IMM, TrellisError } from '@trellis/core';
import { show } from '@trellis/core/kit';
import type { ProxyLayout } from './proxy.js';
import type { DispatchInput, MoeConfig, MoeDeviceOptions, MoeDType } from './types.js';

/** Bytes per element. @internal */
export const ELEM: Record<MoeDType, number> = { fp8: 1, bf16: 2, fp32: 4 };

/** The longest proxy spin: a second of a core after each kick is already far past any use. */
const MAX_SPIN_US = 1_000_000;

/**
 * Every field of {@link MoeConfig}, and whether every rank must share it (its buffers are laid out
 * from it, so `connect` compares it across ranks) or it is this rank's own. A field added to
 * `MoeConfig` and not here fails to compile. @internal
 */
const FIELDS = {
  worldSize: 'shared',
  rank: 'own',
  nodeSize: 'shared',
  numExperts: 'shared',
  topk: 'shared',
  hidden: 'shared',
  maxTokensPerRank: 'shared',
  inDtype: 'shared',
  outDtype: 'shared',
  scales: 'shared',
  scaleBlock: 'shared',
  maxPrivateTokens: 'shared',
  immBase: 'shared',
  timeoutMs: 'own',
  proxy: 'own',
  proxySpinUs: 'own',
} as const satisfies Record<keyof MoeConfig, 'shared' | 'own'>;

/** Every field of {@link MoeConfig}. @internal */
export const CONFIG_KEYS = Object.keys(FIELDS) as (keyof MoeConfig)[];

/** The fields every rank must share, in the order a descriptor's config tag lists them. @internal */
export const SHARED_KEYS = CONFIG_KEYS.filter((k) => FIELDS[k] === 'shared');

/**
 * A key of `cfg` that is not in `known` (a misspelt option would otherwise be ignored and its
 * default used): an INVALID_ARGUMENT naming it and the keys there are. @internal
 */
export function checkKeys(who: string, cfg: unknown, known: readonly string[]): void {
  if (cfg === null || typeof cfg !== 'object')
    throw new TrellisError('INVALID_ARGUMENT', `${who}: config must be an object, got ${show(cfg)}`);
  for (const k of Object.keys(cfg))
    if (!known.includes(k))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `${who}: ${show(k)} is not a config field (the fields: ${known.join(', ')})`,
      );
}

/** `cfg` with defaults filled in, every field checked (a TrellisError naming the field). @internal */
export function checkConfig(
  cfg: MoeConfig,
  device?: MoeDeviceOptions,
  who = 'MoeAllToAll.create',
): Required<MoeConfig> {
  checkKeys(who, cfg, CONFIG_KEYS);
  const c: Required<MoeConfig> = {
    scales: false,
    scaleBlock: 128,
    maxPrivateTokens: 64,
    immBase: 0x4d4f0000,
    timeoutMs: 30_000,
    proxy: false,
    proxySpinUs: 200,
    ...cfg,
  };
  const int = (name: keyof MoeConfig, lo: number) => {
    const v = c[name] as number;
    if (!Number.isSafeInteger(v) || v < lo)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `${who}: ${name} must be an integer >= ${lo}, got ${show(v)}`,
      );
  };
  for (const k of [
    'worldSize',
    'nodeSize',
    'numExperts',
    'topk',
    'hidden',
    'maxTokensPerRank',
    'scaleBlock',
    'timeoutMs',
  ] as const)
    int(k, 1);
  int('rank', 0);
  int('proxySpinUs', 0);
  if (c.proxySpinUs > MAX_SPIN_US)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${who}: proxySpinUs must be at most ${MAX_SPIN_US} (1 s: the thread spins a core this long after each kick), got ${show(c.proxySpinUs)}`,
    );
  if (typeof c.scales !== 'boolean')
    throw new TrellisError('INVALID_ARGUMENT', `${who}: scales must be a boolean, got ${show(c.scales)}`);
  if (typeof c.proxy !== 'boolean')
    throw new TrellisError('INVALID_ARGUMENT', `${who}: proxy must be a boolean, got ${show(c.proxy)}`);
  int('maxPrivateTokens', 0);
  // Four consecutive 32-bit immediates, none of them the engines' heartbeat (HEARTBEAT_IMM).
  if (!Number.isSafeInteger(c.immBase) || c.immBase < 0 || c.immBase + 3 >= HEARTBEAT_IMM)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${who}: immBase must be an integer in 0..${HEARTBEAT_IMM - 4} (the instance uses immBase..immBase+3; ${HEARTBEAT_IMM} is the engines' heartbeat), got ${show(c.immBase)}`,
    );
  if (c.rank >= c.worldSize)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${who}: rank ${c.rank} is not below worldSize ${c.worldSize}`,
    );
  if (c.numExperts % c.worldSize)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${who}: numExperts ${c.numExperts} must be a multiple of worldSize ${c.worldSize}`,
    );
  if (c.topk > c.numExperts)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${who}: topk ${c.topk} is more than numExperts ${c.numExperts} (topk is how many of the numExperts experts each token is routed to)`,
    );
  if (c.worldSize % c.nodeSize)
    throw new TrellisError('INVALID_ARGUMENT', `${who}: worldSize must be a multiple of nodeSize`);
  if (!(c.inDtype in ELEM) || !(c.outDtype in ELEM) || c.outDtype === ('fp8' as string))
    throw new TrellisError('INVALID_ARGUMENT', `${who}: inDtype is fp8, bf16 or fp32; outDtype bf16 or fp32`);
  if (c.scales && (c.inDtype !== 'fp8' || c.hidden % c.scaleBlock))
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${who}: scales go with fp8 tokens and a hidden size that is a multiple of scaleBlock (${c.scaleBlock})`,
    );
  const rowsMax = c.maxTokensPerRank * c.topk; // rows one source can send to one receiver
  if (device?.gpuDriven) {
    if (c.proxy)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `${who}: gpuDriven runs its own proxy where nodeSize < worldSize; leave proxy unset`,
      );
    c.maxPrivateTokens = rowsMax; // every row has its private place: no overflow step
  }
  return c;
}

/** Offsets of a rank's region: routes, private slots, overflow, combine rows; its size. @internal */
export interface RegionLayout {
  routes: number;
  priv: number;
  overflow: number;
  combine: number;
  size: number;
}

/** Where everything lives in a rank's region and staging, from the config. @internal */
export interface MoeLayout {
  layout: RegionLayout;
  rowStride: number;
  /** Rows one source can send to one receiver. */
  rowsMax: number;
  stagingSize: number;
}

/** @internal */
export function layoutOf(c: Required<MoeConfig>): MoeLayout {
  const W = c.worldSize;
  const rowsMax = c.maxTokensPerRank * c.topk;
  const rowStride = align(
    8 + c.hidden * ELEM[c.inDtype] + (c.scales ? (c.hidden / c.scaleBlock) * 4 : 0),
    16,
  );
  const routes = 0;
  const priv = align(routes + W * c.numExperts * 4, 64);
  const overflow = priv + W * c.maxPrivateTokens * rowStride;
  const combine = align(overflow + W * Math.max(0, rowsMax - c.maxPrivateTokens) * rowStride, 64);
  const size = combine + rowsMax * c.hidden * ELEM[c.outDtype];
  // Staging: this round's routes, the rows going out to every peer, combine rows going back.
  // Routes, then every peer's rows, then the combine rows (at the end: see Protocol.combineBase).
  const stagingSize =
    align(c.numExperts * 4, 64) + W * rowsMax * rowStride + W * rowsMax * c.hidden * ELEM[c.outDtype];
  const layout = { routes, priv, overflow, combine, size };
  return { layout, rowStride, rowsMax, stagingSize };
}

/**
 * Why a peer's routes (its row counts per expert) cannot be this round's, or undefined: counts are
 * laid out into buffers sized from the config, so they are checked before any offset is computed.
 * @internal
 */
export function checkRoutes(
  counts: Int32Array,
  c: Pick<Required<MoeConfig>, 'maxTokensPerRank' | 'topk'>,
): string | undefined {
  let total = 0;
  for (let e = 0; e < counts.length; e++) {
    const n = counts[e]!;
    if (n < 0) return `expert ${e}: ${n} rows`;
    total += n;
  }
  const most = c.maxTokensPerRank * c.topk;
  return total > most ? `${total} rows in all, more than maxTokensPerRank × topk = ${most}` : undefined;
}

/** One round, from dispatch's send to combine's receive. @internal */
export interface Round {
  numTokens: number;
  /** counts[src][expert]: (token, k) pairs `src` routes to `expert` this round. */
  counts: Int32Array[];
  weights: Float32Array;
  ids: Int32Array;
  /** Rows this rank sent to each peer, in stream order: [token, k] pairs (modes that pack in JS). */
  sent: Array<Array<[number, number]>>;
  /** Per received row (expert-block order): source rank and position in that source's stream. */
  origin: Array<[number, number]>;
  /** Rows this rank received (and sends back in combine). */
  rows: number;
  dispatched: boolean;
  /** Phases begun this round, so one out of order (a second send, a recv before its send) is refused. */
  dispatchRecvBegun?: boolean;
  combineSent?: boolean;
  combineRecvBegun?: boolean;
}

/** This rank's local experts' rows this round and where each expert's block starts. @internal */
export interface ExpertBlocks {
  tokensPerExpert: Int32Array;
  expertOffsets: Int32Array;
}

/**
 * The shared state of one instance: the checked config, the sizes and offsets derived from it, the
 * round in flight and the rounds counter. MoeAllToAll starts and ends rounds; its mode reads the
 * offsets and fills the round's counts. @internal
 */
export class Protocol {
  readonly localExperts: number;
  readonly tokenBytes: number;
  /** fp32 scales per token (0 without scales). */
  readonly scaleCount: number;
  /** Bytes of one combine row (`hidden` of `outDtype`). */
  readonly outRow: number;
  readonly layout: RegionLayout;
  readonly rowStride: number;
  readonly rowsMax: number;
  readonly stagingSize: number;
  /** Where the packed rows start in staging (after this rank's routes). */
  readonly rowsBase: number;
  readonly imm: { route: number; dispatch: number; combine: number; barrier: number };
  /** The round in flight. */
  round: Round | undefined;
  /** Every peer's routes of this round, read once (modes that read them from a registered region). */
  routesIn: Promise<void> | undefined;
  /** Rounds started since connect (the proxy's round numbers; without a proxy: since create). */
  rounds = 0;

  constructor(
    readonly c: Required<MoeConfig>,
    l: MoeLayout,
  ) {
    this.localExperts = c.numExperts / c.worldSize;
    this.tokenBytes = c.hidden * ELEM[c.inDtype];
    this.scaleCount = c.scales ? c.hidden / c.scaleBlock : 0;
    this.outRow = c.hidden * ELEM[c.outDtype];
    this.layout = l.layout;
    this.rowStride = l.rowStride;
    this.rowsMax = l.rowsMax;
    this.stagingSize = l.stagingSize;
    this.rowsBase = align(c.numExperts * 4, 64);
    const b = c.immBase;
    this.imm = { route: b, dispatch: b + 1, combine: b + 2, barrier: b + 3 };
  }

  /** Start a round as dispatch-send does (counts are filled as routes arrive). */
  begin(x: Pick<DispatchInput, 'topkIds' | 'topkWeights'>, n: number): Round {
    const c = this.c;
    this.round = {
      numTokens: n,
      counts: Array.from({ length: c.worldSize }, () => new Int32Array(c.numExperts)),
      weights: x.topkWeights,
      ids: x.topkIds,
      sent: [],
      origin: [],
      rows: 0,
      dispatched: false,
    };
    return this.round;
  }

  /** The round is closed: every buffer may be reused. */
  end(): void {
    this.round = undefined;
    this.routesIn = undefined;
  }

  expertRank(e: number): number {
    return Math.floor(e / this.localExperts);
  }

  /** Take rank `s`'s routes into this round's counts, once checked against the config. */
  takeRoutes(s: number, counts: Int32Array, how: 'sent' | 'wrote'): void {
    const why = checkRoutes(counts, this.c);
    if (why)
      throw new TrellisError(
        'DECODE_ERROR',
        `MoeAllToAll.dispatch: rank ${s} ${how} routes that do not fit this config (${why}); every rank must run the same config`,
      );
    this.round!.counts[s]!.set(counts);
  }

  /** Rows `src` sends to `dst` this round (from the routes). */
  rowsBetween(src: number, dst: number): number {
    const cs = this.round!.counts[src]!;
    let n = 0;
    for (let j = 0; j < this.localExperts; j++) n += cs[dst * this.localExperts + j]!;
    return n;
  }

  /** Where `src`'s overflow rows start in `dst`'s overflow region (every rank computes the same). */
  overflowAt(src: number, dst: number): number {
    const P = this.c.maxPrivateTokens;
    let rows = 0;
    for (let s = 0; s < src; s++) rows += Math.max(0, this.rowsBetween(s, dst) - P);
    return this.layout.overflow + rows * this.rowStride;
  }

  /** Where rows from `from` start in `to`'s combine region: after the rows `to` sent to ranks before `from`. */
  combineAt(to: number, from: number): number {
    let rows = 0;
    for (let d = 0; d < from; d++) rows += this.rowsBetween(to, d);
    return this.layout.combine + rows * this.outRow;
  }

  /** Where combine rows going back start in a staging of `stagingBytes` (its last part). */
  combineBase(stagingBytes: number): number {
    return stagingBytes - this.c.worldSize * this.rowsMax * this.outRow;
  }

  /**
   * This rank's local experts' blocks from every source's routes: expert j's rows from source 0,
   * 1, ... back to back. Sets the round's row count.
   */
  blocks(r: Round): ExpertBlocks {
    const c = this.c;
    const L = this.localExperts;
    const tokensPerExpert = new Int32Array(L);
    for (let s = 0; s < c.worldSize; s++)
      for (let j = 0; j < L; j++) tokensPerExpert[j]! += r.counts[s]![c.rank * L + j]!;
    const expertOffsets = new Int32Array(L);
    for (let j = 1; j < L; j++) expertOffsets[j] = expertOffsets[j - 1]! + tokensPerExpert[j - 1]!;
    r.rows = tokensPerExpert.reduce((a, b) => a + b, 0);
    return { tokensPerExpert, expertOffsets };
  }

  /** The native proxy's view of this layout. */
  proxyLayout(maxSleepUs = 1000): ProxyLayout {
    const c = this.c;
    return {
      worldSize: c.worldSize,
      rank: c.rank,
      numExperts: c.numExperts,
      localExperts: this.localExperts,
      maxPrivateTokens: c.maxPrivateTokens,
      rowStride: this.rowStride,
      outRow: this.outRow,
      ...this.layout,
      rowsBase: this.rowsBase,
      combineBase: this.combineBase(this.stagingSize),
      rowsMax: this.rowsMax,
      timeoutMs: c.timeoutMs,
      spinUs: c.proxySpinUs,
      maxSleepUs,
      imm: this.imm,
    };
  }
}

/** @internal */
export function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
