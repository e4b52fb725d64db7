// KvStreamReceiver: the decode side. Admits requests (allocates pages, sends the page table),
// counts layer arrivals and settles each request once: complete, failed or cancelled.
import { randomInt } from 'node:crypto';
import {
  autoShards,
  type GpuMemoryOps,
  lanesBetween,
  type MrHandle,
  type NetAddr,
  type RecvMessage,
  type TransferEngine,
  TrellisError,
} from '@trellis/core';
import { KvLayout, type KvLayoutSpec } from './layout.js';
import { PeerProbe } from './probe.js';
import {
  type AbortMsg,
  ACK_UNCERTAIN,
  ACK_UNKNOWN,
  type AckMsg,
  checkCreateOptions,
  checkFields,
  checkInt,
  checkRegion,
  decode,
  encodeCancel,
  encodeTable,
  isKvMessage,
  MsgType,
  quoteTag,
  RECEIVER_OPTIONS,
  receiveOwn,
  tableBytes,
} from './protocol.js';

// Request ids, unique across every receiver of this process (a prefill engine remembers the ids it
// finished per decode address, so a second receiver on the same engine must not reuse the first's),
// from a random base (so a second copy of this module, or a restarted receiver, starts elsewhere).
let nextRequestId = (BigInt(randomInt(1, 2 ** 47)) << 16n) | 1n;

const utf8 = new TextEncoder();

/** Options of {@link KvStreamReceiver.create}. */
export interface KvStreamReceiverOptions {
  /** The decode server's engine. */
  engine: TransferEngine;
  /** This side's KV cache layout (its `pages` is the pool size). */
  layout: KvLayoutSpec | KvLayout;
  /**
   * The KV cache, registered with `{remote: true}`. Default: registered here, `layout.regionBytes`
   * of host memory. A CUDA registration needs {@link KvStreamReceiverOptions.gpu}.
   */
  region?: MrHandle;
  /**
   * GPU memory operations (the ones the engine got, e.g. `cudaMemoryOps()`), for a CUDA `region`:
   * the last partial page of each segment is copied from its host tail slot onto the device with
   * them before the request is handed over.
   */
  gpu?: GpuMemoryOps;
  /** Largest opaque tail (hidden states, logits) a request may carry. Default 1 MiB. */
  maxTailBytes?: number;
  /** Requests in flight at once (counter slots and tail slots). Default 256. */
  maxRequests?: number;
  /** First immediate value of this receiver's slots; slot `s` uses `immBase + s`, and `immBase + maxRequests` probes. Default 0x4b560000. */
  immBase?: number;
  /** How often a prefill peer with requests in flight is probed for liveness. Default 1000 ms. */
  probeMs?: number;
  /**
   * After a prefill peer is found dead (a probe the provider failed), its requests' pages return
   * to the pool after this long. Default 2000 ms. A peer that only stopped answering (its probe
   * timed out: dead, hung or paused) is not trusted to have stopped writing: its requests' pages
   * return once it acknowledges their cancel, or after `quarantineMs`.
   */
  deadPeerGraceMs?: number;
  /** How long a cancelled request waits for the prefill side's acknowledgement. Default 10000 ms. */
  ackTimeoutMs?: number;
  /**
   * Pages and slot of a request whose fate is uncertain (no or an uncertain acknowledgement, or a
   * prefill peer that stopped answering and has not acknowledged the cancel) return after this
   * long. Default 60000 ms. A prefill process paused for longer than this that then resumes can
   * still write into pages given to other requests since: raise it where processes may be paused
   * longer (up to 2^31 − 1 ms).
   */
  quarantineMs?: number;
  /**
   * `own` (default): post a receive pool on the engine for kvstream's messages (others are
   * counted and dropped). `external`: the caller owns the engine's receives and passes every
   * message to {@link KvStreamReceiver.handleMessage}.
   */
  recv?: 'own' | 'external';
}

/** What {@link KvStreamReceiver.admit} takes. */
export interface KvAdmitRequest {
  /** The prefill server's engine address. */
  prefill: NetAddr;
  /** Prompt tokens whose KV the prefill side computes and streams: an integer, 1 to 2^32 − 1. */
  tokens: number;
  /** Bytes of the opaque tail (hidden states, logits) the prefill side sends with the last write. Default 0. */
  tailBytes?: number;
  /**
   * Your request id, given to the prefill side with the page table: a string of at most 65535
   * UTF-8 bytes, and short enough that the table fits one engine message (`maxMessageBytes`, 64 KiB
   * by default, less the pages' 4 bytes each and two descriptors).
   */
  tag?: string;
  /** Cancel the request (two-phase: pages return once the prefill side has stopped writing). */
  signal?: AbortSignal;
  /** Fail with `TIMEOUT` (and cancel, two-phase) if the KV is not complete by then. */
  timeoutMs?: number;
}

/** A request's KV, complete in this side's cache. */
export interface KvReady {
  /** Pool pages holding the request's KV, in token order (the last one possibly partial). */
  readonly pages: Uint32Array;
  readonly tokens: number;
  /** The opaque tail, copied out of the tail slot. */
  readonly tail: Uint8Array;
  /** Give the pages back to the pool (when decoding is done with them). Idempotent. */
  release(): void;
}

/** An admitted request. */
export interface KvAdmission {
  readonly id: bigint;
  readonly tag: string;
  /** Pool pages allocated to the request, in token order. */
  readonly pages: Uint32Array;
  /** Resolves when every page and the tail are in place; rejects with a TrellisError otherwise. */
  readonly done: Promise<KvReady>;
  /**
   * Cancel: the prefill side stops writing and acknowledges; then the pages return. Resolves once
   * they have (or are quarantined, see {@link KvStreamReceiverOptions.quarantineMs}). On a
   * request that completed, the pages are the caller's until `release()` of its {@link KvReady}:
   * `cancel()` then resolves only after that release (do not await it before releasing).
   */
  cancel(): Promise<void>;
}

/**
 * Counters of a receiver. Each request admitted is, once settled, one of completed, failed,
 * cancelled, closed.
 */
export interface KvReceiverStats {
  /** Requests {@link KvStreamReceiver.admit} took (a refused admit is not counted). */
  admitted: number;
  /** Requests whose `done` resolved. */
  completed: number;
  /**
   * Requests that failed from the other side or the transport: the prefill side aborted them, its
   * peer died or stopped answering, a write or the tail's copy failed.
   */
  failed: number;
  /**
   * Requests this side gave up on: `cancel()`, the request's `signal`, or its own `timeoutMs`
   * (a `TIMEOUT` counts here: it runs the same two-phase cancel).
   */
  cancelled: number;
  /**
   * Requests in flight when {@link KvStreamReceiver.close} ran (`CLOSED`). Their pages are not
   * returned to the pool (`freePages` and `quarantinedPages` stay as close() left them): the pool
   * is not used again.
   */
  closed: number;
  /** Pages in the pool now. `freePages + inUsePages + quarantinedPages` is the pool's size. */
  freePages: number;
  /**
   * Pages held by requests: streaming, cancelled and waiting for the prefill side's
   * acknowledgement, or ready and not yet released.
   */
  inUsePages: number;
  /** Counter slots free now (of `maxRequests`). */
  freeSlots: number;
  /**
   * Pages held back: those of a request whose fate was uncertain (they return after
   * `quarantineMs`), of an unanswering prefill peer's requests (until it acknowledges their cancel,
   * at most `quarantineMs`) and of a dead prefill peer's requests (after `deadPeerGraceMs`).
   */
  quarantinedPages: number;
  /** Messages on the engine that were not kvstream's (with `recv: 'own'`). */
  foreignMessages: number;
  /**
   * kvstream messages this version cannot read: another protocol version, or cut short. The last
   * one's reason is {@link KvReceiverStats.lastUnreadable} (`UNSUPPORTED: …` for another version).
   */
  unreadableMessages: number;
  /** Why the last unreadable kvstream message was refused (`CODE: message`), if any. */
  lastUnreadable?: string;
}

type Phase = 'streaming' | 'unpacking' | 'cancelling' | 'ready' | 'failed' | 'released';

interface Req {
  id: bigint;
  tag: string;
  slot: number;
  imm: number;
  pages: Uint32Array;
  tokens: number;
  tailBytes: number;
  expected: number;
  peer: NetAddr;
  peerKey: string;
  phase: Phase;
  waitAbort: AbortController;
  resolve: (r: KvReady) => void;
  reject: (e: TrellisError) => void;
  /** Settles the two-phase cancel (pages back or quarantined). */
  released: Promise<void>;
  onReleased: () => void;
  ackWait?: { resolve: (m: AckMsg | AbortMsg | undefined) => void; timer: NodeJS.Timeout };
  timer?: NodeJS.Timeout;
  userSignal?: AbortSignal;
  onUserAbort?: () => void;
}

const DEFAULT_IMM_BASE = 0x4b560000;

/**
 * The decode side of KV streaming. It owns a page pool over the KV cache: {@link admit} takes
 * pages and a counter slot, sends the page table to the prefill server, and resolves when exactly
 * the expected number of immediates has arrived — no "done" message. Pages return to the pool only
 * when no remote write can still land in them.
 *
 * @example
 * ```ts
 * const rx = await KvStreamReceiver.create({ engine, layout: { layers: 32, tokensPerPage: 16, pages: 4096,
 *   tensors: [{ name: 'k', bytesPerToken: 1024 }, { name: 'v', bytesPerToken: 1024 }] } });
 * const adm = rx.admit({ prefill: prefillAddr, tokens: prompt.length, tailBytes: 8192, tag: requestId });
 * const kv = await adm.done; // kv.pages hold the prompt's KV; kv.tail the hidden state
 * // ... decode ...
 * kv.release();
 * ```
 */
export class KvStreamReceiver {
  readonly layout: KvLayout;
  readonly engine: TransferEngine;
  readonly region: MrHandle;
  readonly tailRegion: MrHandle;
  private readonly gpu: GpuMemoryOps | undefined;
  readonly maxTailBytes: number;
  readonly maxRequests: number;
  readonly immBase: number;

  /** Free pages as a stack: the first `freeCount` entries. */
  private readonly freePageList: Uint32Array;
  private freeCount: number;
  private readonly freeSlotList: number[];
  private readonly tailSlotBytes: number;
  private readonly reqs = new Map<bigint, Req>();
  /** The encoded size of the page table's two descriptors (see admit). */
  private descBytes: number | undefined;
  private readonly probe: PeerProbe;
  private readonly recvAbort = new AbortController();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly opts: Required<
    Pick<KvStreamReceiverOptions, 'deadPeerGraceMs' | 'ackTimeoutMs' | 'quarantineMs'>
  >;
  private closed = false;
  private readonly counts = {
    admitted: 0,
    completed: 0,
    failed: 0,
    cancelled: 0,
    quarantinedPages: 0,
    foreignMessages: 0,
    unreadableMessages: 0,
    closed: 0,
  };
  private lastUnreadable: string | undefined;
  private readonly ownsRegion: boolean;

  private constructor(
    opts: KvStreamReceiverOptions,
    layout: KvLayout,
    region: MrHandle,
    tailRegion: MrHandle,
    tailSlotBytes: number,
    ownsRegion: boolean,
  ) {
    this.engine = opts.engine;
    this.layout = layout;
    this.region = region;
    this.tailRegion = tailRegion;
    this.tailSlotBytes = tailSlotBytes;
    this.ownsRegion = ownsRegion;
    this.gpu = opts.gpu;
    this.maxTailBytes = opts.maxTailBytes ?? 1 << 20;
    this.maxRequests = opts.maxRequests ?? 256;
    this.immBase = opts.immBase ?? DEFAULT_IMM_BASE;
    this.opts = {
      deadPeerGraceMs: opts.deadPeerGraceMs ?? 2000,
      ackTimeoutMs: opts.ackTimeoutMs ?? 10_000,
      quarantineMs: opts.quarantineMs ?? 60_000,
    };
    this.freePageList = new Uint32Array(layout.pages);
    for (let i = 0; i < layout.pages; i++) this.freePageList[i] = layout.pages - 1 - i;
    this.freeCount = layout.pages;
    this.freeSlotList = Array.from({ length: this.maxRequests }, (_, i) => this.maxRequests - 1 - i);
    this.probe = new PeerProbe(
      this.engine,
      this.immBase + this.maxRequests,
      opts.probeMs ?? 1000,
      (peer, err) => this.peerDead(peer, err),
    );
    if ((opts.recv ?? 'own') === 'own')
      receiveOwn(this.engine, this.recvAbort.signal, (m) => {
        if (!this.handleMessage(m)) this.counts.foreignMessages++;
      });
  }

  /** Validate the options, register the cache (unless given) and the tail slots, start receiving. */
  static async create(opts: KvStreamReceiverOptions): Promise<KvStreamReceiver> {
    checkCreateOptions('KvStreamReceiver.create', opts, RECEIVER_OPTIONS);
    const layout = opts.layout instanceof KvLayout ? opts.layout : new KvLayout(opts.layout);
    const maxTail = opts.maxTailBytes ?? 1 << 20;
    const maxReq = opts.maxRequests ?? 256;
    const immBase = opts.immBase ?? DEFAULT_IMM_BASE;
    checkInt('KvStreamReceiver.create', 'maxTailBytes', maxTail, 0, 0xffffffff);
    checkInt('KvStreamReceiver.create', 'maxRequests', maxReq, 1, 1 << 20);
    checkInt('KvStreamReceiver.create', 'immBase', immBase, 0, 0xffffffff - maxReq - 1);
    for (const k of ['probeMs', 'deadPeerGraceMs', 'ackTimeoutMs', 'quarantineMs'] as const)
      if (opts[k] !== undefined) checkInt('KvStreamReceiver.create', k, opts[k], 1, 2 ** 31 - 1);
    let region = opts.region;
    if (region !== undefined) checkRegion('KvStreamReceiver', opts.engine, region);
    if (region?.cuda && !opts.gpu)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'KvStreamReceiver: region is CUDA memory; pass gpu (the GpuMemoryOps the engine got, e.g. cudaMemoryOps()) to unpack its last partial pages',
      );
    if (region) {
      if (!region.remote)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          'KvStreamReceiver: region must be registered with {remote: true}',
        );
      if (region.length < layout.regionBytes)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `KvStreamReceiver: region is ${region.length} bytes; the layout needs ${layout.regionBytes}`,
        );
    } else region = await opts.engine.registerMemory(layout.regionBytes, { remote: true });
    // A tail slot holds the last partial page of every segment and the opaque tail.
    const slotBytes = align(layout.tokensPerPage * layout.bytesPerToken + maxTail, 64);
    const tails = await opts.engine.registerMemory(Math.max(64, slotBytes * maxReq), { remote: true });
    return new KvStreamReceiver(opts, layout, region, tails, slotBytes, opts.region === undefined);
  }

  /** Pages free in the pool now. */
  get freePages(): number {
    return this.freeCount;
  }

  /**
   * Admit a request: allocate its pages and a counter slot, and send the page table to the prefill
   * server. Throws `RESOURCE_EXHAUSTED` when the pool or the slots cannot hold it (nothing is
   * taken), `INVALID_ARGUMENT` for bad input, `ABORTED` when `signal` is aborted already, and
   * `CLOSED` once the receiver is closed — each before anything is taken or sent (the request is
   * not counted in {@link stats}).
   */
  admit(req: KvAdmitRequest): KvAdmission {
    if (this.closed) throw new TrellisError('CLOSED', 'KvStreamReceiver.admit: the receiver was closed');
    if (req === null || typeof req !== 'object')
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'KvStreamReceiver.admit: pass a request object {prefill, tokens, tailBytes?, tag?, timeoutMs?, signal?}',
      );
    checkFields(
      'KvStreamReceiver.admit',
      req,
      ['prefill', 'tokens', 'tailBytes', 'tag', 'signal', 'timeoutMs'],
      'a field of an admit request',
    );
    if (
      req.signal !== undefined &&
      (req.signal === null ||
        typeof req.signal !== 'object' ||
        typeof (req.signal as AbortSignal).addEventListener !== 'function' ||
        typeof (req.signal as AbortSignal).aborted !== 'boolean')
    )
      throw new TrellisError('INVALID_ARGUMENT', 'KvStreamReceiver.admit: signal must be an AbortSignal');
    checkInt('KvStreamReceiver.admit', 'tokens', req.tokens, 1, 0xffffffff);
    const tailBytes = req.tailBytes ?? 0;
    checkInt('KvStreamReceiver.admit', 'tailBytes', tailBytes, 0, this.maxTailBytes);
    if (req.timeoutMs !== undefined)
      checkInt('KvStreamReceiver.admit', 'timeoutMs', req.timeoutMs, 1, 2 ** 31 - 1);
    if (req.prefill === null || typeof req.prefill !== 'object' || !('kind' in req.prefill))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        "KvStreamReceiver.admit: prefill must be the prefill engine's NetAddr",
      );
    if (req.prefill.kind !== this.engine.address.kind)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvStreamReceiver.admit: the prefill engine is a '${req.prefill.kind}' engine, this one '${this.engine.address.kind}'`,
      );
    const tag = req.tag ?? '';
    if (typeof tag !== 'string')
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvStreamReceiver.admit: tag must be a string, got ${typeof tag}`,
      );
    const nPages = this.layout.pagesFor(req.tokens);
    if (nPages > this.layout.pages)
      throw new TrellisError(
        'RESOURCE_EXHAUSTED',
        `KvStreamReceiver.admit: ${req.tokens} tokens need ${nPages} pages, more than the whole pool (${this.layout.pages} pages): no request this long can be admitted here`,
      );
    // The page table must fit one message: checked before any page or slot is taken.
    const tagBytes = utf8.encode(tag).length;
    if (tagBytes > 0xffff)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvStreamReceiver.admit: tag is ${tagBytes} UTF-8 bytes (at most 65535, and less with the page table it travels in: see maxMessageBytes)`,
      );
    // The two descriptors never change: encoded once for their size.
    this.descBytes ??= this.region.desc.toBytes().length + this.tailRegion.desc.toBytes().length;
    const size = tableBytes(tagBytes, this.descBytes, nPages);
    if (size > this.engine.limits.maxMessageBytes)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `KvStreamReceiver.admit: the page table is ${size} bytes, over the engine's ${this.engine.limits.maxMessageBytes}-byte messages (a shorter tag, fewer pages per request, or larger pages)`,
      );
    if (nPages > this.freeCount)
      throw new TrellisError(
        'RESOURCE_EXHAUSTED',
        `KvStreamReceiver.admit: ${req.tokens} tokens need ${nPages} pages; ${this.freeCount} of ${this.layout.pages} are free`,
      );
    if (this.freeSlotList.length === 0)
      throw new TrellisError(
        'RESOURCE_EXHAUSTED',
        `KvStreamReceiver.admit: all ${this.maxRequests} request slots are in use (maxRequests)`,
      );
    if (req.signal?.aborted)
      throw new TrellisError('ABORTED', 'KvStreamReceiver.admit: aborted before admission');

    const slot = this.freeSlotList.pop()!;
    const pages = new Uint32Array(nPages);
    for (let i = 0; i < nPages; i++) pages[i] = this.freePageList[--this.freeCount]!;
    const imm = this.immBase + slot;
    const lanes = lanesBetween(req.prefill.nics.length, this.engine.nics);
    const full = Math.floor(req.tokens / this.layout.tokensPerPage);
    const tailLen = this.layout.partialBytes(req.tokens) + tailBytes;
    const tailShards = tailLen > 0 ? autoShards(tailLen, lanes) : 0;
    const expected =
      this.layout.layers * this.layout.segmentsPerLayer * full + (tailLen > 0 ? tailShards : 1);
    const id = nextRequestId++;

    let resolve!: (r: KvReady) => void;
    let reject!: (e: TrellisError) => void;
    const done = new Promise<KvReady>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    done.catch(() => {}); // the caller may only use cancel()
    let onReleased!: () => void;
    const released = new Promise<void>((r) => {
      onReleased = r;
    });
    const r: Req = {
      id,
      tag,
      slot,
      imm,
      pages,
      tokens: req.tokens,
      tailBytes,
      expected,
      peer: req.prefill,
      peerKey: req.prefill.toString(),
      phase: 'streaming',
      waitAbort: new AbortController(),
      resolve,
      reject,
      released,
      onReleased,
    };
    this.reqs.set(id, r);
    this.counts.admitted++;
    this.probe.add(req.prefill);

    if (req.timeoutMs !== undefined) {
      r.timer = setTimeout(
        () =>
          this.cancelReq(
            r,
            new TrellisError(
              'TIMEOUT',
              `kvstream request ${quoteTag(tag)}: KV not complete within ${req.timeoutMs} ms`,
            ),
          ),
        req.timeoutMs,
      );
    }
    if (req.signal) {
      r.userSignal = req.signal;
      r.onUserAbort = () =>
        this.cancelReq(r, new TrellisError('ABORTED', `kvstream request ${quoteTag(tag)}: aborted`));
      req.signal.addEventListener('abort', r.onUserAbort, { once: true });
    }

    const counter = this.engine.immCounter(imm);
    // Credits left on a slot are stale (a quarantined request's late arrivals): take them first.
    const stale = counter.value;
    const start = stale > 0 ? counter.wait(stale) : Promise.resolve();
    const table = encodeTable({
      id,
      imm,
      tokens: req.tokens,
      fingerprint: this.layout.fingerprint,
      tailBytes,
      tailShards,
      tag,
      tailOffset: slot * this.tailSlotBytes,
      dstPoolPages: this.layout.pages,
      dstOrder: this.layout.order,
      dstHeadsBeforePages: this.layout.headsBeforePages,
      kv: this.region.desc,
      tail: this.tailRegion.desc,
      pages,
    });
    void start
      .then(() => this.engine.submitSend(req.prefill, table))
      .then(
        () => counter.wait(expected, { signal: r.waitAbort.signal }),
        (e: unknown) => {
          // The table may not have arrived: treat the peer as unreachable for this request.
          throw wrap(e, `kvstream request ${quoteTag(tag)}: sending the page table failed`);
        },
      )
      .then(
        () => this.complete(r),
        (e: unknown) => {
          if (r.phase !== 'streaming') return; // cancelled, aborted or dead peer: handled there
          this.fail(r, wrap(e, `kvstream request ${quoteTag(tag)}`), 'grace');
        },
      );

    const self = this;
    return {
      id,
      tag,
      pages,
      done,
      cancel() {
        self.cancelReq(r, new TrellisError('ABORTED', `kvstream request ${quoteTag(tag)}: cancelled`));
        return r.released;
      },
    };
  }

  /** Every page of the request and its tail arrived: unpack the partial page, hand over. */
  private complete(r: Req): void {
    if (r.phase !== 'streaming') return;
    const cuda = this.region.cuda;
    if (cuda && this.gpu && r.tokens % this.layout.tokensPerPage > 0) {
      // The partial page goes from the host tail slot onto the device first. Every byte has
      // arrived: from here the request cannot be cancelled (its pages must not return to the pool
      // while the copy still writes one).
      this.finish(r, 'unpacking');
      const tb = this.tailRegion.buffer!;
      const { ranges } = this.partialPage(r);
      for (let i = 1; i < ranges.length; i += 3) ranges[i]! += tb.byteOffset;
      this.gpu.copy('toDevice', cuda.device, cuda.ptr, tb.buffer as ArrayBuffer, ranges).then(
        () => this.handOver(r),
        (e: unknown) => {
          r.phase = 'failed';
          this.counts.failed++;
          r.reject(wrap(e, `kvstream request ${quoteTag(r.tag)}: copying its last partial page to the GPU`));
          r.waitAbort.abort();
          this.quarantine(r, this.opts.deadPeerGraceMs);
        },
      );
      return;
    }
    this.handOver(r);
  }

  /**
   * Where the last partial page of each segment sits: (cache offset, offset in the tail region,
   * bytes) triples, and where the opaque tail starts after them in the request's tail slot.
   */
  private partialPage(r: Req): { ranges: Float64Array; tailAt: number } {
    const partial = r.tokens % this.layout.tokensPerPage;
    const segs = this.layout.segments;
    const ranges = new Float64Array(partial > 0 ? 3 * segs.length : 0);
    let at = r.slot * this.tailSlotBytes;
    if (partial > 0) {
      const last = r.pages[r.pages.length - 1]!;
      segs.forEach((s, i) => {
        const n = partial * s.tokenBytes;
        ranges[3 * i] = s.offset + last * s.stride;
        ranges[3 * i + 1] = at;
        ranges[3 * i + 2] = n;
        at += n;
      });
    }
    return { ranges, tailAt: at };
  }

  private handOver(r: Req): void {
    if (r.phase === 'unpacking') r.phase = 'ready';
    else if (r.phase === 'streaming') this.finish(r, 'ready');
    else return;
    // The slot's counter is exactly consumed: it may serve the next request now.
    this.freeSlotList.push(r.slot);
    const tail = this.unpackTail(r);
    this.counts.completed++;
    let released = false;
    r.resolve({
      pages: r.pages,
      tokens: r.tokens,
      tail,
      release: () => {
        if (released) return;
        released = true;
        this.returnPages(r.pages);
        r.phase = 'released';
        r.onReleased();
      },
    });
    this.reqs.delete(r.id);
  }

  /** Copy the last partial page's tokens from the tail slot into the request's last page; return the opaque tail. */
  private unpackTail(r: Req): Uint8Array {
    const tb = this.tailRegion.buffer;
    if (!tb) return new Uint8Array(0);
    const { ranges, tailAt } = this.partialPage(r);
    // A host cache takes its partial pages here; a CUDA one got them in complete().
    const kv = this.region.buffer;
    if (kv)
      for (let i = 0; i < ranges.length; i += 3)
        kv.set(tb.subarray(ranges[i + 1]!, ranges[i + 1]! + ranges[i + 2]!), ranges[i]!);
    return tb.slice(tailAt, tailAt + r.tailBytes);
  }

  /** Start the two-phase cancel of `r` with `reason` (the request's promise rejects with it). */
  private cancelReq(r: Req, reason: TrellisError): void {
    if (r.phase !== 'streaming') return;
    this.finish(r, 'cancelling');
    this.counts.cancelled++;
    r.reject(reason);
    r.waitAbort.abort();
    void (async () => {
      const ack = await this.awaitAck(r, () => this.engine.submitSend(r.peer, encodeCancel(r.id)));
      await this.settleAfterAck(r, ack);
    })();
  }

  /**
   * Send `send` and wait for the prefill side's ACK or ABORT for `r` (undefined on timeout, or when
   * the send fails unless `pastFailedSend`), at most `ms`.
   */
  private awaitAck(
    r: Req,
    send: () => Promise<void>,
    ms = this.opts.ackTimeoutMs,
    pastFailedSend = false,
  ): Promise<AckMsg | AbortMsg | undefined> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        r.ackWait = undefined;
        resolve(undefined);
      }, ms);
      timer.unref();
      r.ackWait = { resolve, timer };
      send().catch(() => {
        if (pastFailedSend) return;
        clearTimeout(timer);
        r.ackWait = undefined;
        resolve(undefined);
      });
    });
  }

  /**
   * `r`'s prefill peer stopped answering probes: dead, hung, or only paused (SIGSTOP, a debugger,
   * a stalled host) — and a paused prefill that resumes goes on writing into the pages it was
   * given. The request fails now; its pages and slot stay out of the pool until the prefill side
   * acknowledges the cancel sent now (it stopped writing: its completed writes' credits are taken,
   * as for any cancel), or for `quarantineMs`.
   */
  private abandon(r: Req, reason: TrellisError): void {
    this.finish(r, 'cancelling');
    this.counts.failed++;
    r.reject(reason);
    r.waitAbort.abort();
    this.counts.quarantinedPages += r.pages.length;
    void (async () => {
      const ack = await this.awaitAck(
        r,
        () => this.engine.submitSend(r.peer, encodeCancel(r.id)),
        this.opts.quarantineMs,
        true,
      );
      if (this.closed) return;
      this.counts.quarantinedPages -= r.pages.length;
      if (ack) await this.settleAfterAck(r, ack);
      else this.releaseNow(r);
    })();
  }

  /**
   * After the prefill side stopped: take exactly the credits its completed writes produced, then
   * return pages and slot — or quarantine them when that count is not known.
   */
  private async settleAfterAck(r: Req, ack: AckMsg | AbortMsg | undefined): Promise<void> {
    if (!ack || ack.flags & (ACK_UNCERTAIN | ACK_UNKNOWN)) {
      this.quarantine(r, this.opts.quarantineMs);
      return;
    }
    // Those arrivals are certain (delivery-complete writes): wait for them, bounded.
    try {
      await this.engine.immCounter(r.imm).wait(ack.delivered, { timeoutMs: this.opts.quarantineMs });
    } catch {
      this.quarantine(r, this.opts.quarantineMs);
      return;
    }
    this.releaseNow(r);
  }

  private releaseNow(r: Req): void {
    this.returnPages(r.pages);
    this.freeSlotList.push(r.slot);
    r.phase = 'released';
    this.reqs.delete(r.id);
    r.onReleased();
  }

  private quarantine(r: Req, ms: number): void {
    this.counts.quarantinedPages += r.pages.length;
    const t = setTimeout(() => {
      this.timers.delete(t);
      this.counts.quarantinedPages -= r.pages.length;
      this.releaseNow(r);
    }, ms);
    t.unref();
    this.timers.add(t);
  }

  private fail(r: Req, err: TrellisError, mode: 'grace' | 'quarantine'): void {
    if (r.phase !== 'streaming') return;
    this.finish(r, 'failed');
    this.counts.failed++;
    r.reject(err);
    r.waitAbort.abort();
    this.quarantine(r, mode === 'grace' ? this.opts.deadPeerGraceMs : this.opts.quarantineMs);
  }

  /** Leave the streaming phase: timers and listeners off. */
  private finish(r: Req, phase: Phase): void {
    r.phase = phase;
    if (r.timer) clearTimeout(r.timer);
    if (r.userSignal && r.onUserAbort) r.userSignal.removeEventListener('abort', r.onUserAbort);
    this.probe.remove(r.peer);
  }

  private returnPages(pages: Uint32Array): void {
    for (let i = pages.length - 1; i >= 0; i--) this.freePageList[this.freeCount++] = pages[i]!;
  }

  private peerDead(peer: NetAddr, err: TrellisError): void {
    const key = peer.toString();
    // A probe the provider failed is a death: writes of a dead process can land only within the
    // grace period. One that went unanswered may be a paused process (see abandon()).
    const unanswered = err.code === 'TIMEOUT';
    for (const r of [...this.reqs.values()]) {
      if (r.peerKey !== key) continue;
      const e = new TrellisError(
        'PEER_LOST',
        `kvstream request ${quoteTag(r.tag)}: the prefill peer is unreachable (${err.code}: ${err.message})${
          unanswered
            ? `; its pages stay out of the pool until it acknowledges the cancel (it may only be paused) or for quarantineMs (${this.opts.quarantineMs} ms)`
            : ''
        }`,
        { peer: key, cause: err },
      );
      if (r.phase === 'streaming') {
        if (unanswered) this.abandon(r, e);
        else this.fail(r, e, 'grace');
      } else if (r.ackWait && !unanswered) {
        clearTimeout(r.ackWait.timer);
        const w = r.ackWait;
        r.ackWait = undefined;
        w.resolve(undefined);
      }
    }
  }

  /**
   * Handle one message from the engine. Returns false if it is not kvstream's (with
   * `recv: 'external'`, route your other messages yourself).
   */
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
    if (m.type !== MsgType.Ack && m.type !== MsgType.Abort) return true;
    const r = this.reqs.get(m.id);
    if (!r || r.peerKey !== msg.from.toString()) return true;
    if (r.ackWait) {
      clearTimeout(r.ackWait.timer);
      const w = r.ackWait;
      r.ackWait = undefined;
      w.resolve(m);
      return true;
    }
    if (m.type === MsgType.Abort && r.phase === 'streaming') {
      // The prefill side gave up on the request (a write failed): fail it, then settle like a cancel.
      this.finish(r, 'cancelling');
      this.counts.failed++;
      r.reject(
        new TrellisError(
          m.code,
          `kvstream request ${quoteTag(r.tag)}: the prefill side aborted: ${m.message}`,
          {
            peer: r.peerKey,
          },
        ),
      );
      r.waitAbort.abort();
      void this.settleAfterAck(r, m);
    }
    return true;
  }

  /** Counters and pool occupancy. */
  stats(): KvReceiverStats {
    return {
      admitted: this.counts.admitted,
      completed: this.counts.completed,
      failed: this.counts.failed,
      cancelled: this.counts.cancelled,
      closed: this.counts.closed,
      freePages: this.freeCount,
      inUsePages: this.layout.pages - this.freeCount - this.counts.quarantinedPages,
      freeSlots: this.freeSlotList.length,
      quarantinedPages: this.counts.quarantinedPages,
      foreignMessages: this.counts.foreignMessages,
      unreadableMessages: this.counts.unreadableMessages,
      ...(this.lastUnreadable === undefined ? {} : { lastUnreadable: this.lastUnreadable }),
    };
  }

  /** Fail every request in flight with `CLOSED`, stop receiving, unregister what was registered here. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.probe.close();
    this.recvAbort.abort();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const told: Promise<void>[] = [];
    for (const r of this.reqs.values()) {
      if (r.phase === 'streaming') {
        this.finish(r, 'failed');
        this.counts.closed++;
        r.reject(new TrellisError('CLOSED', `kvstream request ${quoteTag(r.tag)}: the receiver was closed`));
        r.waitAbort.abort();
        // The prefill side is told (its engine may stay up for other receivers): its stream stops
        // writing and rejects as cancelled by the decode side.
        if (!this.engine.closed)
          told.push(this.engine.submitSend(r.peer, encodeCancel(r.id)).catch(() => {}));
      }
      if (r.ackWait) {
        clearTimeout(r.ackWait.timer);
        r.ackWait.resolve(undefined);
      }
      r.onReleased();
    }
    this.reqs.clear();
    await Promise.all(told);
    if (!this.engine.closed) {
      await this.tailRegion.unregister().catch(() => {});
      if (this.ownsRegion) await this.region.unregister().catch(() => {});
    }
  }
}

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

function wrap(e: unknown, what: string): TrellisError {
  if (e instanceof TrellisError)
    return new TrellisError(e.code, `${what}: ${e.message}`, { cause: e, peer: e.peer });
  return new TrellisError('INTERNAL', `${what}: ${String(e)}`, { cause: e });
}
