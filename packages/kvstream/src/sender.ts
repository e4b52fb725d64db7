// KvStreamSender: the prefill side. Takes page tables from decode servers and writes each layer's
// pages as it is produced (paged writes, one immediate per page), with acks, aborts and deadlines.
import {
  type GpuMemoryOps,
  type MrHandle,
  type NetAddr,
  type RecvMessage,
  type TransferEngine,
  TrellisError,
  type UvmWatcher,
} from '@trellis/core';
import { KvLayout, type KvLayoutSpec } from './layout.js';
import { PeerProbe } from './probe.js';
import {
  ACK_UNCERTAIN,
  checkCreateOptions,
  checkFields,
  checkInt,
  checkRegion,
  decode,
  encodeAbort,
  encodeAck,
  isKvMessage,
  MsgType,
  quoteTag,
  receiveOwn,
  SENDER_OPTIONS,
  type TableMsg,
} from './protocol.js';

/** Options of {@link KvStreamSender.create}. */
export interface KvStreamSenderOptions {
  /** The prefill server's engine. */
  engine: TransferEngine;
  /** This side's KV cache layout (its `pages` is the pool size). */
  layout: KvLayoutSpec | KvLayout;
  /**
   * The KV cache the model writes. Default: registered here, `layout.regionBytes` of host memory.
   * A CUDA registration needs {@link KvStreamSenderOptions.gpu}.
   */
  region?: MrHandle;
  /**
   * GPU memory operations (the ones the engine got, e.g. `cudaMemoryOps()`), for a CUDA `region`:
   * the last partial page of each segment is copied off the device into the final write's
   * staging slot with them.
   */
  gpu?: GpuMemoryOps;
  /** Largest opaque tail a request may carry (sizes the staging slots for the final write). Default 1 MiB. */
  maxTailBytes?: number;
  /** Requests bound at once (staging slots). Default 256. */
  maxRequests?: number;
  /** The immediate this side probes decode peers with (they never wait on it). Default 0x4b55ffff. */
  probeImm?: number;
  /** How often a decode peer with requests in flight is probed for liveness. Default 1000 ms. */
  probeMs?: number;
  /** Page tables that arrive and are never bound are dropped after this long. Default 60000 ms. */
  unboundTimeoutMs?: number;
  /** `own` (default) posts a receive pool for kvstream's messages; `external`: call {@link KvStreamSender.handleMessage}. */
  recv?: 'own' | 'external';
}

/** A request whose page table arrived from a decode server. */
export interface KvIncomingRequest {
  readonly id: bigint;
  /** The decode side's request id (what it passed as `tag`). */
  readonly tag: string;
  readonly from: NetAddr;
  readonly tokens: number;
  /** Bytes of opaque tail the decode side expects in {@link KvSendStream.finish}. */
  readonly tailBytes: number;
}

/** Where a bound request's layer progress comes from. */
export interface KvProgress {
  /** The engine watcher: a producer (GPU kernel or host code) increments its word once per layer. */
  readonly watcher: UvmWatcher;
  /** Stop watching; streams still bound to it stop progressing. */
  close(): void;
}

/** What {@link KvStreamSender.bind} takes. */
export interface KvBindOptions {
  /** This side's pool pages holding the request's tokens, in token order (at least `pagesFor(tokens)`). */
  srcPages: Uint32Array;
  /** The progress word shared by a batch of requests; default: one of the stream's own (`stream.progress`). */
  progress?: KvProgress;
  /**
   * The stream's own deadline, in ms from `bind` (an integer, 1 to 2^31 - 1; default: none). If
   * the final write has not gone out by then — the page table never came, the producer never
   * finished, layers are still to run — the stream stops issuing writes, the decode side is told
   * (as for any failure it cannot see), and `done` rejects `TIMEOUT` once the writes in flight
   * have settled (each by the engine deadline, `opTimeoutMs`, at the latest); a page table that
   * comes after the deadline is refused at once. Once the final write is out, its own outcome
   * decides. A Node timer: it fires at an event-loop turn (not while a `pollUntil` loop spins).
   */
  timeoutMs?: number;
}

/** Counters of a sender. Each request bound is, once settled, one of completed, failed, cancelled, closed. */
export interface KvSenderStats {
  /** Page tables that arrived (bound or not). */
  tables: number;
  /** Requests {@link KvStreamSender.bind} took. */
  bound: number;
  /**
   * Streams whose `done` resolved: every write of theirs completed here. The decode side's outcome
   * is the one to act on — a cancel that races the final write can leave this side completed and
   * the decode side cancelled.
   */
  completed: number;
  /** Streams that failed: a write, a bad or late table, the stream's deadline, a dropped decode peer. */
  failed: number;
  /** Streams the decode side cancelled. */
  cancelled: number;
  /** Streams that {@link KvStreamSender.close} ended (`CLOSED`). */
  closed: number;
  /**
   * Page tables that ended without a bind: cancelled by the decode side, dropped after
   * `unboundTimeoutMs`, their decode peer dropped, or ended by `close()` (in none of the four
   * counts above, which are of bound requests).
   */
  unbound: number;
  /** Page writes that completed: each full page counts once per layer and segment (tensor, or tensor head). */
  pagesWritten: number;
  /** Bytes of the final writes that completed: each request's last partial page and its opaque tail. */
  tailBytesWritten: number;
  /** Decode peers dropped after a failed write or probe. */
  peersDropped: number;
  /**
   * ABORTs owed to decode peers that were dropped (their requests failed here with `PEER_LOST`)
   * and not delivered yet: they are sent again every `probeMs` for up to 10 minutes, so a decode
   * process that was only paused learns that its requests ended (it waited for its own deadline,
   * or for ever without one). See the README's failure section.
   */
  abortsOwed: number;
  /** Messages that were not kvstream's (with `recv: 'own'`). */
  foreignMessages: number;
  /**
   * kvstream messages this version cannot read: another protocol version, or cut short. The last
   * one's reason is {@link KvSenderStats.lastUnreadable} (`UNSUPPORTED: …` for another version).
   */
  unreadableMessages: number;
  /** Why the last unreadable kvstream message was refused (`CODE: message`), if any. */
  lastUnreadable?: string;
}

/** How long an ABORT owed to a dropped decode peer is retried. */
const ABORT_OWED_MS = 10 * 60_000;
/** ABORTs owed at most (the oldest is given up beyond). */
const MAX_ABORTS_OWED = 8192;

interface Chunk {
  end: number;
  start: bigint; // progress value when declared; layer l is done at start + l + 1
  layersSent: number;
}

interface Stream {
  tag: string;
  table?: TableMsg;
  from?: NetAddr;
  fromKey?: string;
  srcPages?: Uint32Array;
  progress?: ProgressImpl;
  ownProgress: boolean;
  chunks: Chunk[];
  /** Full pages already written, per layer. */
  sentPages: Uint32Array;
  tail?: Uint8Array;
  finished: boolean;
  tailSent: boolean;
  inflight: number;
  delivered: number;
  uncertain: boolean;
  cancelled: boolean;
  failed?: TrellisError;
  settled: boolean;
  resolve: () => void;
  reject: (e: TrellisError) => void;
  done: Promise<void>;
  staging: number;
  unboundTimer?: NodeJS.Timeout;
  /** The bind's `timeoutMs`, while armed. */
  deadline?: NodeJS.Timeout;
  bound: boolean;
  /** Tell the decode side with an ABORT once settled (a failure it cannot see itself). */
  pendingAbort?: boolean;
}

class ProgressImpl implements KvProgress {
  readonly streams = new Set<Stream>();
  readonly watcher: UvmWatcher;
  constructor(engine: TransferEngine, onChange: (p: ProgressImpl) => void) {
    this.watcher = engine.allocUvmWatcher(() => onChange(this));
  }
  close(): void {
    this.watcher.close();
    this.streams.clear();
  }
}

/** The prefill side of one request: declare chunks as they start, hand over the tail at the end. */
export class KvSendStream {
  /** @internal */
  constructor(
    private readonly sender: KvStreamSender,
    private readonly s: Stream,
    /** The progress source this stream follows (its own unless one was given to bind). */
    readonly progress: KvProgress,
  ) {}

  /** The decode side's request id. */
  get tag(): string {
    return this.s.tag;
  }

  /**
   * Release the stream's own progress word (when it was not given one) once the producer will no
   * longer increment it. Done for you when the stream completes after {@link finish}; call it after
   * a cancelled or failed stream's producer has stopped. Idempotent.
   */
  close(): void {
    this.sender.closeStream(this.s);
  }

  /** Resolves when every write of the request completed; rejects if it failed or was cancelled. */
  get done(): Promise<void> {
    return this.s.done;
  }

  /**
   * Declare the next chunk of prefill: its tokens end at `endToken` (exclusive), and the next
   * `layers` increments of the progress word are its layers. Call it before the chunk's first
   * layer completes, and after the previous chunk's layers have all run (chunks are declared one
   * at a time); the last chunk ends at the request's `tokens`. Throws `INVALID_ARGUMENT` for an end
   * that does not grow, while the previous chunk has layers still to run, or after
   * {@link finish}; `OUT_OF_RANGE` past the tokens.
   */
  chunk(endToken: number): void {
    this.sender.declareChunk(this.s, endToken);
  }

  /**
   * Hand over the opaque tail (exactly `tailBytes`); the final write goes once the last layer is
   * done. The end of the stream, with a tail or without one: a stream whose producer never calls
   * it never sends its final write (it fails at its bind's `timeoutMs`, `finish() was not
   * called`). Call it after the last chunk (the one ending at the request's
   * `tokens`) is declared; `chunk()` after it throws. Throws `INVALID_ARGUMENT` when the page
   * table is here and the chunks do not reach its tokens; when the table comes later and they do
   * not, the stream fails with `INVALID_ARGUMENT` (and the decode side is told).
   */
  finish(tail: Uint8Array = new Uint8Array(0)): void {
    this.sender.finishStream(this.s, tail);
  }
}

/**
 * The prefill side of KV streaming: receives page tables from decode servers, and for each bound
 * request writes every layer's newly filled pages as soon as the layer's progress increment is
 * seen (paged writes with the request's immediate), then one single write with the last partial
 * page and the opaque tail.
 *
 * @example
 * ```ts
 * const tx = await KvStreamSender.create({ engine, layout });
 * tx.onRequest((r) => console.log('page table for', r.tag));
 * const stream = tx.bind(requestId, { srcPages });        // before or after its table arrives
 * stream.chunk(tokens);                                     // one chunk: the whole prompt
 * for (let l = 0; l < layers; l++) { runLayer(l); stream.progress.watcher.increment(); }
 * stream.finish(hiddenState);
 * await stream.done;
 * ```
 */
export class KvStreamSender {
  readonly layout: KvLayout;
  readonly engine: TransferEngine;
  readonly region: MrHandle;
  private readonly gpu: GpuMemoryOps | undefined;
  readonly staging: MrHandle;
  readonly maxTailBytes: number;

  private readonly streams = new Map<string, Stream>();
  private readonly byId = new Map<string, Stream>(); // `${fromKey}#${id}`
  /** Cancels for tables not seen yet, and recently finished requests' delivered counts (for late cancels). */
  private readonly tombstones = new Map<string, { delivered: number; uncertain: boolean } | null>();
  /** Tags whose bind deadline passed before their page table came, and why: the table is refused at once. */
  private readonly expiredTags = new Map<string, string>();
  /** Tags whose page table was refused (a layout that does not match) before they were bound, and why. */
  private readonly refusedTags = new Map<string, string>();
  private readonly freeStaging: number[];
  private readonly stagingBytes: number;
  private readonly dstLayouts = new Map<string, KvLayout>();
  /** Own progress words of streams that ended early, until KvSendStream.close() or close(). */
  private readonly orphans = new Set<ProgressImpl>();
  private readonly listeners: Array<(r: KvIncomingRequest) => void> = [];
  private readonly probe: PeerProbe;
  private readonly recvAbort = new AbortController();
  private readonly unboundTimeoutMs: number;
  private readonly ownsRegion: boolean;
  private closed = false;
  private readonly counts = {
    tables: 0,
    bound: 0,
    completed: 0,
    failed: 0,
    cancelled: 0,
    pagesWritten: 0,
    tailBytesWritten: 0,
    peersDropped: 0,
    foreignMessages: 0,
    unreadableMessages: 0,
    closed: 0,
    unbound: 0,
  };
  private lastUnreadable: string | undefined;
  /** ABORTs owed to dropped decode peers, by `peer#id`: retried every probeMs until delivered or `until`. */
  private readonly owed = new Map<
    string,
    { to: NetAddr; data: Uint8Array; until: number; sending: boolean }
  >();
  private owedTimer: NodeJS.Timeout | undefined;
  private readonly probeMs: number;

  private constructor(
    opts: KvStreamSenderOptions,
    layout: KvLayout,
    region: MrHandle,
    staging: MrHandle,
    slotBytes: number,
  ) {
    this.engine = opts.engine;
    this.layout = layout;
    this.region = region;
    this.staging = staging;
    this.stagingBytes = slotBytes;
    this.ownsRegion = opts.region === undefined;
    this.gpu = opts.gpu;
    this.maxTailBytes = opts.maxTailBytes ?? 1 << 20;
    const slots = opts.maxRequests ?? 256;
    this.freeStaging = Array.from({ length: slots }, (_, i) => slots - 1 - i);
    this.unboundTimeoutMs = opts.unboundTimeoutMs ?? 60_000;
    this.probeMs = opts.probeMs ?? 1000;
    this.probe = new PeerProbe(this.engine, opts.probeImm ?? 0x4b55ffff, this.probeMs, (peer, e) =>
      this.dropPeer(
        peer.toString(),
        new TrellisError('PEER_LOST', `the decode peer is unreachable (${e.code}: ${e.message})`, {
          peer: peer.toString(),
          cause: e,
        }),
      ),
    );
    if ((opts.recv ?? 'own') === 'own')
      receiveOwn(this.engine, this.recvAbort.signal, (m) => {
        if (!this.handleMessage(m)) this.counts.foreignMessages++;
      });
  }

  /** Validate the options, register the cache (unless given) and the staging slots, start receiving. */
  static async create(opts: KvStreamSenderOptions): Promise<KvStreamSender> {
    checkCreateOptions('KvStreamSender.create', opts, SENDER_OPTIONS);
    const layout = opts.layout instanceof KvLayout ? opts.layout : new KvLayout(opts.layout);
    const maxTail = opts.maxTailBytes ?? 1 << 20;
    const slots = opts.maxRequests ?? 256;
    checkInt('KvStreamSender.create', 'maxTailBytes', maxTail, 0, 0xffffffff);
    checkInt('KvStreamSender.create', 'maxRequests', slots, 1, 1 << 20);
    for (const k of ['probeMs', 'unboundTimeoutMs'] as const)
      if (opts[k] !== undefined) checkInt('KvStreamSender.create', k, opts[k], 1, 2 ** 31 - 1);
    if (opts.probeImm !== undefined)
      checkInt('KvStreamSender.create', 'probeImm', opts.probeImm, 0, 0xffffffff);
    let region = opts.region;
    if (region !== undefined) checkRegion('KvStreamSender', opts.engine, region);
    if (region?.cuda && !opts.gpu)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'KvStreamSender: region is CUDA memory; pass gpu (the GpuMemoryOps the engine got, e.g. cudaMemoryOps()) to pack its last partial pages',
      );
    if (region) {
      if (region.length < layout.regionBytes)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `KvStreamSender: region is ${region.length} bytes; the layout needs ${layout.regionBytes}`,
        );
    } else region = await opts.engine.registerMemory(layout.regionBytes);
    const slotBytes = Math.ceil((layout.tokensPerPage * layout.bytesPerToken + maxTail) / 64) * 64;
    const staging = await opts.engine.registerMemory(Math.max(64, slotBytes * slots));
    return new KvStreamSender(opts, layout, region, staging, slotBytes);
  }

  /** Call `cb` for every page table that arrives (the decode side's `tag` names the request). */
  onRequest(cb: (r: KvIncomingRequest) => void): void {
    this.listeners.push(cb);
  }

  /** A progress word for a batch of requests that advance together (one increment per layer). */
  createProgress(): KvProgress {
    return new ProgressImpl(this.engine, (p) => this.onProgress(p));
  }

  /**
   * Bind the request the decode side tagged `tag` to this side's pages and a progress source. The
   * page table may arrive before or after; writes start once both are there. Throws
   * `INVALID_ARGUMENT` if the tag is bound already, `RESOURCE_EXHAUSTED` without a staging slot.
   */
  bind(tag: string, opts: KvBindOptions): KvSendStream {
    if (this.closed) throw new TrellisError('CLOSED', 'KvStreamSender.bind: the sender was closed');
    if (typeof tag !== 'string')
      throw new TrellisError('INVALID_ARGUMENT', 'KvStreamSender.bind: tag must be a string');
    if (!(opts?.srcPages instanceof Uint32Array))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'KvStreamSender.bind: srcPages must be a Uint32Array of pool pages',
      );
    checkFields('KvStreamSender.bind', opts, ['srcPages', 'progress', 'timeoutMs'], 'a bind option');
    for (const p of opts.srcPages)
      if (p >= this.layout.pages)
        throw new TrellisError(
          'OUT_OF_RANGE',
          `KvStreamSender.bind: srcPages holds page ${p}; the pool has ${this.layout.pages}`,
        );
    if (opts.timeoutMs !== undefined)
      checkInt('KvStreamSender.bind', 'timeoutMs', opts.timeoutMs, 1, 2 ** 31 - 1);
    if (opts.progress !== undefined && !(opts.progress instanceof ProgressImpl))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'KvStreamSender.bind: progress must come from createProgress()',
      );
    let s = this.streams.get(tag);
    if (s?.bound)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvStreamSender.bind: request ${quoteTag(tag)} is bound already`,
      );
    // Refused before anything changes: no stream entry, no slot, no progress word left behind.
    if (this.freeStaging.length === 0)
      throw new TrellisError(
        'RESOURCE_EXHAUSTED',
        'KvStreamSender.bind: every staging slot is in use (maxRequests)',
      );
    if (!s) {
      s = this.newStream(tag);
      this.streams.set(tag, s);
    }
    s.staging = this.freeStaging.pop()!;
    s.bound = true;
    this.expiredTags.delete(tag); // bound again: a table for it is this bind's
    s.srcPages = opts.srcPages;
    if (s.unboundTimer) clearTimeout(s.unboundTimer);
    const own = opts.progress === undefined;
    const progress = (opts.progress ?? this.createProgress()) as ProgressImpl;
    s.progress = progress;
    s.ownProgress = own;
    progress.streams.add(s);
    this.counts.bound++;
    const ms = opts.timeoutMs;
    if (ms !== undefined) {
      const stream = s;
      stream.deadline = setTimeout(() => this.expire(stream, ms), ms);
    }
    if (s.table) this.checkTable(s);
    const refused = this.refusedTags.get(tag);
    if (refused !== undefined && !s.table) {
      // Its page table came first and was refused (its layout does not match): it fails now.
      this.refusedTags.delete(tag);
      this.failStream(s, new TrellisError('INVALID_ARGUMENT', refused));
      this.maybeSettle(s);
    }
    return new KvSendStream(this, s, progress);
  }

  private newStream(tag: string): Stream {
    let resolve!: () => void;
    let reject!: (e: TrellisError) => void;
    const done = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    done.catch(() => {});
    return {
      tag,
      ownProgress: false,
      chunks: [],
      sentPages: new Uint32Array(this.layout.layers),
      finished: false,
      tailSent: false,
      inflight: 0,
      delivered: 0,
      uncertain: false,
      cancelled: false,
      settled: false,
      resolve,
      reject,
      done,
      staging: -1,
      bound: false,
    };
  }

  /** @internal */
  declareChunk(s: Stream, end: number): void {
    const tokens = s.table?.tokens;
    const last = s.chunks[s.chunks.length - 1];
    if (s.finished)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvSendStream.chunk: request ${quoteTag(s.tag)} is finished: declare every chunk before finish()`,
      );
    if (!Number.isSafeInteger(end) || end < 1)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvSendStream.chunk: endToken must be an integer >= 1 (the token the chunk ends before), got ${end}`,
      );
    if (last && end <= last.end)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvSendStream.chunk: endToken must grow from chunk to chunk, got ${end} after ${last.end}`,
      );
    if (tokens !== undefined && end > tokens)
      throw new TrellisError(
        'OUT_OF_RANGE',
        `KvSendStream.chunk: endToken ${end} is past the request's ${tokens} tokens`,
      );
    if (last && last.layersSent < this.layout.layers && this.layersDone(s, last) < this.layout.layers)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'KvSendStream.chunk: the previous chunk has layers still to run',
      );
    s.chunks.push({ end, start: s.progress!.watcher.value, layersSent: 0 });
  }

  /** @internal */
  closeStream(s: Stream): void {
    if (!s.ownProgress || !s.progress || !s.settled) return;
    this.orphans.delete(s.progress);
    s.progress.close();
  }

  /** @internal */
  finishStream(s: Stream, tail: Uint8Array): void {
    if (s.finished)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvSendStream.finish: request ${quoteTag(s.tag)} is finished already`,
      );
    if (!(tail instanceof Uint8Array))
      throw new TrellisError('INVALID_ARGUMENT', 'KvSendStream.finish: tail must be a Uint8Array');
    if (s.table && tail.length !== s.table.tailBytes)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvSendStream.finish: the decode side expects a ${s.table.tailBytes}-byte tail, got ${tail.length}`,
      );
    if (tail.length > this.maxTailBytes)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvSendStream.finish: a ${tail.length}-byte tail is over maxTailBytes (${this.maxTailBytes})`,
      );
    const end = declaredEnd(s);
    // (A stream that failed or was cancelled takes its producer's finish() as it comes.)
    if (s.table && end < s.table.tokens && !s.failed && !s.cancelled)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvSendStream.finish: request ${quoteTag(s.tag)} has ${s.table.tokens} tokens and its chunks end at token ${end}: declare the last chunk (chunk(${s.table.tokens})) before finish()`,
      );
    s.finished = true;
    s.tail = tail;
    this.pump(s);
  }

  private layersDone(s: Stream, c: Chunk): number {
    const v = s.progress ? s.progress.watcher.value : 0n;
    const n = v - c.start;
    return Number(n < 0n ? 0n : n > BigInt(this.layout.layers) ? BigInt(this.layout.layers) : n);
  }

  private onProgress(p: ProgressImpl): void {
    for (const s of p.streams) this.pump(s);
  }

  /** Issue whatever the stream's progress allows and has not been issued. */
  private pump(s: Stream): void {
    const t = s.table;
    if (!t || !s.bound || s.cancelled || s.failed || s.settled) return;
    const L = this.layout.layers;
    const dst = this.dstLayout(t);
    for (const c of s.chunks) {
      const done = this.layersDone(s, c);
      const full = Math.floor(Math.min(c.end, t.tokens) / this.layout.tokensPerPage);
      for (let l = c.layersSent; l < done; l++) {
        const from = s.sentPages[l]!;
        if (full > from) {
          s.sentPages[l] = full;
          this.writeLayer(s, t, dst, l, from, full);
        }
      }
      c.layersSent = Math.max(c.layersSent, done);
    }
    const lastChunk = s.chunks[s.chunks.length - 1];
    const allLayers = lastChunk !== undefined && lastChunk.end === t.tokens && lastChunk.layersSent === L;
    // The final write goes once the producer said so (finish()), tail or none: a stream whose
    // producer never finishes waits for it (and fails at its bind's deadline), as the README says.
    if (allLayers && !s.tailSent && s.finished) {
      s.tailSent = true;
      this.writeTail(s, t, dst);
    }
    this.maybeSettle(s);
  }

  private writeLayer(s: Stream, t: TableMsg, dst: KvLayout, l: number, from: number, to: number): void {
    const srcSegs = this.layout.layerSegments(l);
    const dstSegs = dst.layerSegments(l);
    const srcPages = s.srcPages!.subarray(from, to);
    const dstPages = t.pages.subarray(from, to);
    for (let i = 0; i < srcSegs.length; i++) {
      const a = srcSegs[i]!;
      const b = dstSegs[i]!;
      this.track(
        s,
        to - from,
        this.engine.submitPagedWrites({
          src: this.region,
          srcPages,
          srcStride: a.stride,
          srcOffset: a.offset,
          dst: t.kv,
          dstPages,
          dstStride: b.stride,
          dstOffset: b.offset,
          pageBytes: a.pageBytes,
          imm: t.imm,
        }),
        () => {
          this.counts.pagesWritten += to - from;
        },
      );
    }
  }

  /** Pack the last partial page of every segment and the opaque tail into staging; one write. */
  private writeTail(s: Stream, t: TableMsg, dst: KvLayout): void {
    const partial = t.tokens % this.layout.tokensPerPage;
    const len = dst.partialBytes(t.tokens) + t.tailBytes;
    if (len === 0) {
      this.track(s, 1, this.engine.submitImm({ dst: t.kv, imm: t.imm }));
      return;
    }
    const buf = this.staging.buffer;
    const kv = this.region.buffer;
    const cuda = this.region.cuda;
    const gpu = this.gpu;
    if (!buf || (!kv && !(cuda && gpu))) {
      this.failStream(
        s,
        new TrellisError(
          'UNSUPPORTED',
          'kvstream: the final write packs the cache: pass gpu for a CUDA cache (host memory otherwise)',
        ),
      );
      return;
    }
    // Pack the last partial page of every segment, then the opaque tail, into the staging slot:
    // byte copies from a host cache, one batch of device → host copies from a CUDA one.
    const base = s.staging * this.stagingBytes;
    let at = base;
    const ranges: number[] = [];
    if (partial > 0) {
      const last = s.srcPages![Math.floor(t.tokens / this.layout.tokensPerPage)]!;
      for (const seg of this.layout.segments) {
        const n = partial * seg.tokenBytes;
        const from = seg.offset + last * seg.stride;
        if (kv) buf.set(kv.subarray(from, from + n), at);
        else ranges.push(from, buf.byteOffset + at, n);
        at += n;
      }
    }
    if (s.tail?.length) buf.set(s.tail, at);
    const packed = ranges.length
      ? gpu!.copy('toHost', cuda!.device, cuda!.ptr, buf.buffer as ArrayBuffer, Float64Array.from(ranges))
      : Promise.resolve();
    this.track(
      s,
      t.tailShards,
      packed.then(async (): Promise<boolean> => {
        // Failed or cancelled while the tail was packed: it does not go out.
        if (s.failed || s.cancelled) return false;
        await this.engine.submitSingleWrite({
          src: this.staging,
          srcOffset: base,
          length: len,
          dst: t.tail,
          dstOffset: t.tailOffset,
          imm: t.imm,
          shards: t.tailShards,
        });
        return true;
      }),
      () => {
        this.counts.tailBytesWritten += len;
      },
    );
  }

  /** `p` settles with the write; `false`: it was never posted. */
  private track(s: Stream, imms: number, p: Promise<unknown>, onOk?: () => void): void {
    s.inflight++;
    p.then(
      (posted) => {
        s.inflight--;
        if (posted === false) {
          this.maybeSettle(s);
          return;
        }
        s.delivered += imms;
        if (s.fromKey) this.probe.heard(s.fromKey);
        onOk?.();
        this.maybeSettle(s);
      },
      (e: TrellisError) => {
        s.inflight--;
        s.uncertain = true;
        if (e.code === 'PEER_LOST' && s.fromKey) this.dropPeer(s.fromKey, e);
        else this.failStream(s, e);
        this.maybeSettle(s);
      },
    );
  }

  private failStream(s: Stream, e: TrellisError): void {
    if (s.failed || s.cancelled) return;
    s.failed = e;
    // Tell the decode side (it settles the request like a cancel) unless the peer is the problem.
    if (s.from && e.code !== 'PEER_LOST') {
      s.pendingAbort = true;
    }
  }

  /** Count how a stream ended: a bound one by its outcome, a page table never bound apart. */
  private count(s: Stream, outcome: 'cancelled' | 'failed' | 'closed'): void {
    if (s.bound) this.counts[outcome]++;
    else this.counts.unbound++;
  }

  /** Once nothing is in flight: resolve, acknowledge a cancel, or report a failure. */
  private maybeSettle(s: Stream): void {
    if (s.settled || s.inflight > 0) return;
    const t = s.table;
    if (s.cancelled) {
      this.settle(s);
      s.reject(
        new TrellisError('ABORTED', `kvstream request ${quoteTag(s.tag)}: cancelled by the decode side`),
      );
      this.count(s, 'cancelled');
      if (t && s.from) this.send(s.from, encodeAck(t.id, s.delivered, s.uncertain ? ACK_UNCERTAIN : 0));
      return;
    }
    if (s.failed) {
      this.settle(s);
      this.count(s, 'failed');
      s.reject(s.failed);
      // A dropped peer (PEER_LOST) may only be paused or cut off for a while: alive again, it would
      // wait for requests this side gave up, so it is owed the ABORT until it can be reached.
      const owed = s.failed.code === 'PEER_LOST';
      if (t && s.from && (s.pendingAbort || owed)) {
        const abort = encodeAbort(
          t.id,
          s.delivered,
          s.uncertain ? ACK_UNCERTAIN : 0,
          s.failed.code,
          s.failed.message,
        );
        if (s.pendingAbort) this.send(s.from, abort);
        else this.oweAbort(`${s.fromKey}#${t.id}`, s.from, abort);
      }
      return;
    }
    if (s.tailSent) {
      this.settle(s);
      this.counts.completed++;
      s.resolve();
    }
  }

  private settle(s: Stream): void {
    s.settled = true;
    this.streams.delete(s.tag);
    if (s.table && s.fromKey) {
      const key = `${s.fromKey}#${s.table.id}`;
      this.byId.delete(key);
      this.remember(key, { delivered: s.delivered, uncertain: s.uncertain || !!s.failed });
      this.probe.remove(s.from!);
    }
    if (s.staging >= 0) this.freeStaging.push(s.staging);
    s.staging = -1;
    if (s.progress) {
      s.progress.streams.delete(s);
      // The stream's own word is released once its producer is done with it: after finish() and
      // success here, otherwise by KvSendStream.close() (or the sender's close).
      if (s.ownProgress && s.finished && !s.failed && !s.cancelled) s.progress.close();
      else if (s.ownProgress) this.orphans.add(s.progress);
    }
    if (s.unboundTimer) clearTimeout(s.unboundTimer);
    if (s.deadline) clearTimeout(s.deadline);
    s.deadline = undefined;
  }

  private remember(key: string, v: { delivered: number; uncertain: boolean } | null): void {
    putBounded(this.tombstones, key, v);
  }

  private send(to: NetAddr, data: Uint8Array): void {
    this.engine.submitSend(to, data).catch(() => {});
  }

  /** Send `data` (an ABORT) to a dropped peer now, and again every probeMs until it is delivered or 10 minutes passed. */
  private oweAbort(key: string, to: NetAddr, data: Uint8Array): void {
    if (this.closed) return;
    if (this.owed.size >= MAX_ABORTS_OWED) this.owed.delete(this.owed.keys().next().value!);
    this.owed.set(key, { to, data, until: Date.now() + ABORT_OWED_MS, sending: false });
    this.payOwed();
    if (!this.owedTimer) {
      this.owedTimer = setInterval(() => this.payOwed(), this.probeMs);
      this.owedTimer.unref();
    }
  }

  private payOwed(): void {
    const now = Date.now();
    for (const [key, o] of this.owed) {
      if (o.sending) continue;
      if (now > o.until) {
        this.owed.delete(key);
        continue;
      }
      o.sending = true;
      this.engine.submitSend(o.to, o.data, { timeoutMs: this.probeMs * 4 }).then(
        () => {
          if (this.owed.get(key) === o) this.owed.delete(key);
          this.stopOwedTimer();
        },
        () => {
          o.sending = false;
        },
      );
    }
    this.stopOwedTimer();
  }

  private stopOwedTimer(): void {
    if (this.owed.size === 0 && this.owedTimer) {
      clearInterval(this.owedTimer);
      this.owedTimer = undefined;
    }
  }

  private dstLayout(t: TableMsg): KvLayout {
    const key = `${t.dstPoolPages}/${t.dstOrder}/${t.dstHeadsBeforePages}`;
    let l = this.dstLayouts.get(key);
    if (!l) {
      l = new KvLayout({
        layers: this.layout.layers,
        tokensPerPage: this.layout.tokensPerPage,
        tensors: this.layout.tensors,
        pages: t.dstPoolPages,
        order: t.dstOrder,
        headsBeforePages: t.dstHeadsBeforePages,
      });
      this.dstLayouts.set(key, l);
    }
    return l;
  }

  /** Checks once both the table and the binding are there. */
  private checkTable(s: Stream): void {
    const t = s.table!;
    const need = this.layout.pagesFor(t.tokens);
    let err: TrellisError | undefined;
    if (s.srcPages!.length < need)
      err = new TrellisError(
        'INVALID_ARGUMENT',
        `kvstream request ${quoteTag(s.tag)}: ${t.tokens} tokens need ${need} source pages; bind gave ${s.srcPages!.length}`,
      );
    else if (t.tailBytes > this.maxTailBytes)
      err = new TrellisError(
        'INVALID_ARGUMENT',
        `kvstream request ${quoteTag(s.tag)}: a ${t.tailBytes}-byte tail is over this sender's maxTailBytes (${this.maxTailBytes})`,
      );
    else if (s.tail && s.tail.length !== t.tailBytes)
      err = new TrellisError(
        'INVALID_ARGUMENT',
        `kvstream request ${quoteTag(s.tag)}: finish() gave a ${s.tail.length}-byte tail; the decode side expects ${t.tailBytes}`,
      );
    else if (s.finished && declaredEnd(s) < t.tokens)
      err = new TrellisError(
        'INVALID_ARGUMENT',
        `kvstream request ${quoteTag(s.tag)}: finish() came after chunks ending at token ${declaredEnd(s)}; the request has ${t.tokens} tokens`,
      );
    else
      for (const c of s.chunks)
        if (c.end > t.tokens)
          err = new TrellisError(
            'OUT_OF_RANGE',
            `kvstream request ${quoteTag(s.tag)}: a chunk ends at token ${c.end}, past the request's ${t.tokens}`,
          );
    if (err) {
      this.failStream(s, err);
      this.maybeSettle(s);
      return;
    }
    this.pump(s);
  }

  private onTable(t: TableMsg, from: NetAddr): void {
    const fromKey = from.toString();
    const key = `${fromKey}#${t.id}`;
    if (this.tombstones.has(key) || this.byId.has(key)) return; // cancelled before it arrived, or a duplicate
    this.counts.tables++;
    let s = this.streams.get(t.tag);
    if (s?.table) {
      // The tag is in use by another request: refuse this one.
      this.send(
        from,
        encodeAbort(
          t.id,
          0,
          0,
          'INVALID_ARGUMENT',
          `prefill already has a request tagged ${quoteTag(t.tag)} in flight`,
        ),
      );
      return;
    }
    if (t.fingerprint !== this.layout.fingerprint) {
      const why = `the decode layout (fingerprint ${t.fingerprint.toString(16)}) does not match the prefill layout (${this.layout.fingerprint.toString(16)}): layers, tokens per page and tensors must agree`;
      this.send(from, encodeAbort(t.id, 0, 0, 'INVALID_ARGUMENT', why));
      // This side's stream of the tag fails too: bound already, now; bound later, at its bind.
      const err = `kvstream request ${quoteTag(t.tag)}: ${why}`;
      if (s) {
        this.failStream(s, new TrellisError('INVALID_ARGUMENT', err));
        this.maybeSettle(s);
      } else putBounded(this.refusedTags, t.tag, err);
      return;
    }
    this.refusedTags.delete(t.tag); // a table for it that matches: a later bind is this one's
    const expired = s ? undefined : this.expiredTags.get(t.tag);
    if (expired !== undefined) {
      // Its bind's deadline passed before it came: the decode side hears so now.
      this.expiredTags.delete(t.tag);
      this.remember(key, { delivered: 0, uncertain: false });
      this.send(from, encodeAbort(t.id, 0, 0, 'TIMEOUT', expired));
      return;
    }
    if (!s) {
      s = this.newStream(t.tag);
      this.streams.set(t.tag, s);
      s.unboundTimer = setTimeout(() => {
        if (!s!.bound) this.dropUnbound(s!);
      }, this.unboundTimeoutMs);
      s.unboundTimer.unref();
    }
    s.table = t;
    s.from = from;
    s.fromKey = fromKey;
    this.byId.set(key, s);
    this.probe.add(from);
    const info: KvIncomingRequest = { id: t.id, tag: t.tag, from, tokens: t.tokens, tailBytes: t.tailBytes };
    for (const cb of this.listeners) cb(info);
    if (s.bound) this.checkTable(s);
  }

  /**
   * The bind's deadline passed with the stream unsettled. Once the final write is out, its fate
   * (bounded by the engine deadline) decides: failing then could report TIMEOUT for a request whose
   * every byte landed.
   */
  private expire(s: Stream, ms: number): void {
    s.deadline = undefined;
    if (s.settled || s.tailSent) return;
    const state = !s.table
      ? 'its page table never arrived'
      : !s.finished
        ? 'finish() was not called'
        : `the final write not yet sent, ${s.inflight} write(s) in flight`;
    const err = new TrellisError(
      'TIMEOUT',
      `kvstream request ${quoteTag(s.tag)}: not done within ${ms} ms of bind (${state})`,
    );
    if (!s.table) {
      // Its table, should it come later, is refused at once rather than after unboundTimeoutMs.
      putBounded(this.expiredTags, s.tag, err.message);
    }
    this.failStream(s, err);
    this.maybeSettle(s);
  }

  private dropUnbound(s: Stream): void {
    this.failStream(
      s,
      new TrellisError(
        'TIMEOUT',
        `kvstream request ${quoteTag(s.tag)}: never bound on the prefill side within ${this.unboundTimeoutMs} ms`,
      ),
    );
    this.maybeSettle(s);
  }

  private onCancel(id: bigint, from: NetAddr): void {
    const key = `${from.toString()}#${id}`;
    const s = this.byId.get(key);
    if (s) {
      s.cancelled = true;
      this.maybeSettle(s);
      return;
    }
    const past = this.tombstones.get(key);
    if (past === null) this.send(from, encodeAck(id, 0, 0));
    else if (past) this.send(from, encodeAck(id, past.delivered, past.uncertain ? ACK_UNCERTAIN : 0));
    else {
      // Never seen: remember, so a table still on its way is ignored; nothing was written.
      this.remember(key, null);
      // Exact unless this request finished more than 8192 requests ago and was forgotten.
      this.send(from, encodeAck(id, 0, 0));
    }
  }

  /** Drop every request of a decode peer (it died or cannot be reached). */
  private dropPeer(fromKey: string, e: TrellisError): void {
    let any = false;
    for (const s of [...this.streams.values()]) {
      if (s.fromKey !== fromKey || s.settled) continue;
      if (!s.failed) {
        any = true;
        s.failed = new TrellisError('PEER_LOST', `kvstream request ${quoteTag(s.tag)}: ${e.message}`, {
          peer: fromKey,
          cause: e,
        });
      }
      this.maybeSettle(s);
    }
    if (any) this.counts.peersDropped++;
  }

  /** Handle one engine message; false if it is not kvstream's. */
  handleMessage(msg: RecvMessage): boolean {
    if (!isKvMessage(msg.data)) return false;
    let m: ReturnType<typeof decode>;
    try {
      m = decode(msg.data);
    } catch (e) {
      this.counts.unreadableMessages++;
      this.lastUnreadable = e instanceof TrellisError ? `${e.code}: ${e.message}` : String(e);
      return true;
    }
    if (this.closed) return true;
    if (m.type === MsgType.Table) this.onTable(m, msg.from);
    else if (m.type === MsgType.Cancel) this.onCancel(m.id, msg.from);
    return true;
  }

  stats(): KvSenderStats {
    return {
      ...this.counts,
      abortsOwed: this.owed.size,
      ...(this.lastUnreadable === undefined ? {} : { lastUnreadable: this.lastUnreadable }),
    };
  }

  /**
   * Fail every bound request with `CLOSED` and tell each one's decode side (its `done` rejects
   * `CLOSED`; pages with writes still in flight are quarantined there), stop receiving,
   * unregister what was registered here.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.probe.close();
    this.recvAbort.abort();
    if (this.owedTimer) clearInterval(this.owedTimer);
    this.owedTimer = undefined;
    this.owed.clear();
    for (const p of this.orphans) p.close();
    this.orphans.clear();
    const told: Promise<void>[] = [];
    for (const s of [...this.streams.values()]) {
      if (s.settled) continue;
      const t = s.table;
      this.settle(s);
      const err = new TrellisError('CLOSED', `kvstream request ${quoteTag(s.tag)}: the sender was closed`);
      this.count(s, 'closed');
      s.reject(err);
      // The decode side is told, as for any failure it cannot see (its peer is still alive and
      // answers probes): writes still in flight may land, so their pages are uncertain.
      if (t && s.from && !this.engine.closed)
        told.push(
          this.engine
            .submitSend(
              s.from,
              encodeAbort(
                t.id,
                s.delivered,
                s.inflight > 0 || s.uncertain ? ACK_UNCERTAIN : 0,
                err.code,
                err.message,
              ),
            )
            .catch(() => {}),
        );
    }
    await Promise.all(told);
    if (!this.engine.closed) {
      await this.staging.unregister().catch(() => {});
      if (this.ownsRegion) await this.region.unregister().catch(() => {});
    }
  }
}

/** Where the chunks declared so far end (0 before the first). */
function declaredEnd(s: Stream): number {
  return s.chunks[s.chunks.length - 1]?.end ?? 0;
}

/** Set `k` in `m`, dropping the oldest entry past 8192 (recent history, not a log). */
function putBounded<K, V>(m: Map<K, V>, k: K, v: V): void {
  m.set(k, v);
  if (m.size > 8192) m.delete(m.keys().next().value!);
}
