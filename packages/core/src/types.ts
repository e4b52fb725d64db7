// The transfer contract (DESIGN §1): TransferEngine first, then the requests, handles, options and
// statistics it names. Types only.
import type { NetAddr } from './addr.js';
import type { MrDesc } from './desc.js';

/**
 * The transfer contract every backend implements (DESIGN §1). Reliable and unordered: every
 * accepted operation is delivered exactly once or fails; no order holds between operations nor
 * between the shards of one. When an immediate is counted at the target, the bytes of that work
 * request are visible there — nothing more is implied.
 *
 * Every `submit*` returns a promise that settles exactly once: resolved when the source may be
 * reused and delivery is certain unless the peer fails; rejected with a `TrellisError`. Bad input
 * is rejected before anything is posted.
 */
export interface TransferEngine {
  /**
   * Backend kind, as in {@link NetAddr.kind}: `loopback`; backend-efa's `fi-tcp`, `fi-shm`, `fi-efa`
   * (by provider); backend-verbs' `ib-rc` (`rc-model` for its software model). Engines of different
   * kinds cannot reach each other.
   */
  readonly kind: string;
  /** This engine's address, to hand to peers. */
  readonly address: NetAddr;
  /** Number of NICs (1..4). */
  readonly nics: number;
  readonly limits: EngineLimits;
  /** True after {@link TransferEngine.close} began. */
  readonly closed: boolean;

  /**
   * Register memory for transfers. A size of 0 registers an empty region (its descriptor covers
   * no byte: any write into it is `OUT_OF_RANGE`).
   */
  registerMemory(src: MemorySource, opts?: RegisterOptions): Promise<MrHandle>;

  /**
   * Send a small message (at most `limits.maxMessageBytes`). Resolves once the provider completes
   * the send: on shm once the peer engine took it into one of its receive buffers (a stopped peer's
   * send settles `TIMEOUT`); on tcp (`ofi_rxm`) once it is on the peer's connection, which a stopped
   * peer's kernel still accepts. The peer's {@link TransferEngine.submitRecvs} callback gets it when
   * one runs: a native engine holds up to 1024 messages that arrive before any `submitRecvs`
   * (counted in `stats().recvDropped` beyond that). A message names the generation of `peer` it
   * is for: a process restarted at that address drops it (its `recvDropped`), though this resolves.
   */
  submitSend(peer: NetAddr, data: Uint8Array, opts?: OpOptions): Promise<void>;
  /**
   * Keep `count` receive buffers of `maxBytes` posted and call `onRecv` for each message.
   * Resolves when `signal` aborts or the engine closes.
   */
  submitRecvs(opts: RecvOptions, onRecv: (msg: RecvMessage) => void): Promise<void>;

  submitSingleWrite(req: SingleWriteRequest): Promise<void>;
  submitPagedWrites(req: PagedWritesRequest): Promise<void>;
  submitScatter(req: ScatterRequest): Promise<void>;
  submitBarrier(req: BarrierRequest): Promise<void>;
  submitImm(req: ImmRequest): Promise<void>;
  /**
   * Submit many operations in one call: writes and immediates of any kind, to any peers. Every
   * request is validated first, as its own `submit*` would; if any is bad, the call rejects —
   * naming the request's index and saying what to fix — and nothing is posted. Otherwise each
   * request becomes its own operation (its own deadline, cancellation and settlement, exactly once)
   * and native engines post all of them with one crossing into the addon — except that, unless
   * `opts.mergeWrites` is false, unsharded single writes (one work request each: `shards: 1`, or a
   * length `submitSingleWrite` would not shard) with no `signal` or `timeoutMs` of their own that
   * share their source handle, their destination descriptor (the same `MrDesc` object) and their
   * immediate travel as one operation (on lane 0, where each would go alone): one deadline and one
   * settlement for them all. Each still counts as one request in `stats().ops` and gets its own
   * `errors` entry; if their operation fails, every one of them reports that error (which of them
   * had landed is not known: treat each as a failed write whose bytes and immediate may or may not
   * have arrived — a retry may count an immediate twice at the target). Resolves once every
   * operation has settled, with each request's outcome; it never rejects after posting. `opts`
   * applies field by field: `opts.signal` to every request that sets no `signal` of its own,
   * `opts.timeoutMs` to every request that sets no `timeoutMs` of its own. As between separate
   * calls, no order holds between the operations of a batch. On native engines the batch wakes the
   * event loop about once, when its last write settles (see `arrivalBatchUs` of
   * `NativeEngineTuning`): its other writes' successes wait for that, for at most `arrivalBatchUs`,
   * or for their own deadline.
   */
  submitBatch(requests: readonly TransferRequest[], opts?: BatchOptions): Promise<BatchResult>;
  /**
   * Prepare writes from `req.src` to `req.dst` that will be posted many times with new offsets,
   * lengths and immediates: the source, the descriptor and the immediate are validated once, here
   * (as `submitSingleWrite` would check them), and each {@link PreparedWrites.post} then checks
   * only its ranges. The fastest way to post many small writes from JavaScript: one post of n
   * writes is one operation (one deadline, one settlement; on a native engine's NIC path, one
   * crossing into its addon), its writes packed from a `Float64Array`. Throws synchronously on bad
   * input.
   *
   * @example
   * ```ts
   * const writes = engine.prepareWrites({ src, dst: peerDesc, imm: 7 });
   * // Three 4 KiB writes: [srcOffset, dstOffset, length] each.
   * await writes.post(Float64Array.of(0, 0, 4096, 4096, 8192, 4096, 8192, 16384, 4096));
   * // The target counts 3 arrivals of immediate 7.
   * ```
   */
  prepareWrites(req: PreparedWritesRequest): PreparedWrites;

  /** The credit counter for `imm` (created on first use; the same object every time). */
  immCounter(imm: number): ImmCounter;
  /**
   * How many arrivals `request` produces at its target. For a scatter or barrier over several
   * peers pass `target` to count that peer's arrivals; with `target`, a request of any kind that
   * does not reach that peer counts 0 (so totalling `expectedImms(r, me)` over a mixed batch gives
   * what arrives at `me`). Receivers call it on a request of the same
   * shape (any `src`/`dst` with the right NIC counts work; see {@link countImms}) so both agree.
   */
  expectedImms(request: TransferRequest, target?: NetAddr): number;
  /** Resolve peers once, for scatter and barrier. */
  addPeerGroup(peers: readonly NetAddr[]): PeerGroup;
  /**
   * Call `cb` once for each peer the engine concludes is lost — an operation to it failed with
   * `PEER_LOST`, another generation of its endpoint was reached (its process restarted), or (with
   * `heartbeatMs`) it stopped answering; `reason.peer` names it. Every operation still in flight
   * to it (scatters and batches that include it too) is then cancelled with `PEER_LOST`, settling
   * once none of its work is posted — one whose work the provider still holds (a hung peer never
   * completes it) settles `TIMEOUT` at the engine deadline instead, its message naming the loss —
   * and from then on operations to that address are refused with `PEER_LOST` before anything is
   * posted; the restarted peer is reached at its new address. Lost is the engine's conclusion, not
   * the peer's death: a peer lost to heartbeats may be hung, and work the provider had posted to it
   * lands if it resumes (see {@link quiesce}). Returns a function removing the listener.
   */
  onPeerLost(cb: (peer: NetAddr, reason: import('./errors.js').TrellisError) => void): () => void;
  /**
   * Resolve once no operation of this engine to or with `peer` is in flight (at once if none),
   * counting operations that settled `TIMEOUT` with work still posted until the provider lets go
   * of it — or, on native engines, until the engine deadline (`opTimeoutMs`) passes, whichever is
   * first. Resolved by the provider letting go, nothing of this engine reads a source on that
   * peer's behalf any more. Resolved by the engine deadline, the engine has stopped waiting but the
   * provider may still hold the work: a peer that is hung rather than dead (SIGSTOP, a stalled
   * host) can still read the source when it resumes (seen on tcp and shm), even after `onPeerLost`
   * reported it (heartbeats conclude a hung peer lost; the provider keeps what it had posted). Where
   * that matters, reuse such a source only once the peer's process is known dead, or after this
   * engine is closed, which closes the provider's endpoints.
   */
  quiesce(peer: NetAddr, opts?: WaitOptions): Promise<void>;
  /** A host word that a producer increments; `onChange` runs on each observed change. */
  allocUvmWatcher(onChange: UvmWatcherCallback): UvmWatcher;
  /**
   * A triggered operation: validate and prepare `request` now, and post it — from the engine's
   * worker thread, with no JavaScript turn on native backends — the first time `watcher` reads at
   * least `value`, a `bigint` in 1..2^64-1 (at once if it already does; 0 is refused, as a
   * trigger that could never wait). This is how a GPU kernel, by incrementing a
   * watcher word, starts transfers with the latency of the worker seeing the word. Settles like any
   * `submit*`; aborted or timed out before it fired, it settles with nothing posted. Closing the
   * watcher first rejects it with `ABORTED`. Staged GPU regions cannot be triggered (`UNSUPPORTED`).
   */
  submitOnWatch(watcher: UvmWatcher, value: bigint, request: TransferRequest): Promise<void>;
  /**
   * A reaction to immediates: validate and prepare `request` now, and post it — from the engine's
   * worker thread, with no JavaScript turn on native backends — the first time the arrivals of
   * `imm` counted at this engine since it started ({@link ImmCounter.total}) reach `total` (at
   * once if they already have). `total` is an integer ≥ 1: a total of 0 would be reached before
   * any arrival — submit the request itself instead. Arrivals still reach `immCounter(imm)` as credits; a reaction only
   * reads the total. This is how a responder answers an immediate without waiting for its event
   * loop: arm one reaction per expected arrival (`total` = `immCounter(imm).total + k`), ahead of
   * time — before the peer can send, since a `total` read while arrivals come in can lag the
   * worker's count (see {@link ImmCounter.value}). Settles like any `submit*`, except that while it
   * is armed only its own `timeoutMs` (counted from now) applies, not the engine deadline
   * (`opTimeoutMs`): a reaction without one waits for its arrivals for as long as the engine is
   * open; once it fires, the posted request has the engine deadline as any other. Aborted or timed
   * out before it fired, it settles with nothing posted.
   * Immediates counted by an open {@link EnginePort} never reach the total. The same limits as
   * {@link TransferEngine.submitOnWatch}: no staged GPU regions, no regions in parts.
   */
  submitOnImm(imm: number, total: number, request: TransferRequest): Promise<void>;
  /**
   * Latency mode, native backends: deliver now, on this thread, what the engine's worker has
   * finished (settled operations, immediate arrivals, messages, watcher changes) instead of
   * waiting for the event loop to be woken for it. Returns whether anything was delivered.
   * Promise reactions of what it settles run at the next microtask checkpoint. While JavaScript
   * keeps polling (at least every 100 µs) the worker stops ringing the event loop; once it stops,
   * delivery goes back to the event loop. With the native engines' option `driveInline`, the
   * poll first runs the engine's loop turn on this thread (posts, completion-queue reads, arrival
   * counts), and submissions within 100 µs of a poll are posted before they return. Every 64th
   * poll also fires the engine's own timers that are due (operations' `timeoutMs`, waits'
   * timeouts): a loop of polls that never awaits still sees every deadline. Absent on the
   * loopback engine and on wrappers such as `withFaults`. Most callers want
   * {@link TransferEngine.pollUntil}.
   */
  poll?(): boolean;
  /**
   * Latency mode, native backends: spin on this thread — {@link TransferEngine.poll}, then yield
   * to microtasks only, so promise reactions run but timers and I/O do not — until `done()`
   * returns true. The engine's own timers still fire while it spins (an operation's `timeoutMs`,
   * a counter wait's or `quiesce`'s timeout, probes, heartbeats): every operation settles by its
   * deadline inside the loop; the application's `setTimeout`s wait for it to end. Costs one CPU core for as long as it spins (the engine's worker spins too while
   * operations are in flight). Rejects with `TIMEOUT` after `opts.timeoutMs` (default: the
   * engine's operation timeout; no timeout where that is 0), `ABORTED` if `opts.signal` is aborted (checked between polls),
   * `CLOSED` if the engine closes, and with whatever `done` throws. Once the last one returns, the
   * worker rings the event loop again, at its next loop turn, for whatever comes next. Absent
   * where `poll` is.
   *
   * @example
   * ```ts
   * const pong = engine.immCounter(3);
   * let settled = false;
   * let failed = false;
   * const sent = engine.submitImm({ dst: peer, imm: 2 });
   * sent.then(() => (settled = true), () => (failed = true));
   * // Both the answer and the ping's own completion (a promise awaited after the loop waits for
   * // the event loop to be woken for it); a failed ping ends the loop at once.
   * await engine.pollUntil!(() => failed || (settled && pong.take(1)), { timeoutMs: 1000 });
   * await sent; // rethrows the ping's error, if it failed
   * ```
   */
  pollUntil?(done: () => boolean, opts?: WaitOptions): Promise<void>;
  /**
   * Open a port for native code of another addon to post writes on this engine — from its own
   * thread, with no JavaScript turn per write — and to count the immediates `opts.count` without
   * JavaScript (see {@link EnginePort} and `trellis/port.h`). Native backends only: absent on the
   * loopback engine and on wrappers such as `withFaults`.
   */
  openPort?(opts: PortOptions): EnginePort;
  stats(): EngineStats;
  /**
   * Reject every pending operation with `CLOSED`, release every region. Idempotent. A native
   * engine waits at most 3 s for its worker thread to stop; a worker stuck inside the provider
   * (libfabric 1.17's shm after a peer died holding its lock) is then left behind — its thread
   * detached, its memory leaked on purpose — and the provider may go on reading a source of work
   * posted before the close until the process ends.
   */
  close(): Promise<void>;
}

/** Host memory the caller already owns. Kept alive by the engine until unregistered. */
export type HostMemory = ArrayBuffer | SharedArrayBuffer | ArrayBufferView;

/** A CUDA device region (see the GPU memory guide; backends without GPU support reject it with `UNSUPPORTED`). */
export interface CudaMemory {
  cuda: { ptr: bigint; length: number; device: number };
}

/**
 * What to register: a byte count (the engine allocates page-aligned host memory, exposed as
 * {@link MrHandle.buffer}), existing host memory, or a CUDA region.
 */
export type MemorySource = number | HostMemory | CudaMemory;

/** Options of {@link TransferEngine.registerMemory}. */
export interface RegisterOptions {
  /** Let peers write into the region (the descriptor then carries rkeys). Default `false`. */
  remote?: boolean;
}

/** A local registration. Pass it as `src` of writes; hand `desc` to peers that write into it. */
export interface MrHandle {
  /** The descriptor to give peers (has no keys unless registered with `{remote: true}`). */
  readonly desc: MrDesc;
  /** Length in bytes. */
  readonly length: number;
  /** The registered host bytes; `undefined` for CUDA regions. */
  readonly buffer: Uint8Array | undefined;
  /**
   * How the NICs reach the memory: `host` memory, GPU memory registered `direct`ly (GPUDirect
   * RDMA), or GPU memory `staged` through a pinned host mirror of the same size.
   */
  readonly path: 'host' | 'direct' | 'staged';
  /** The device memory of a CUDA registration (as passed to `registerMemory`); `undefined` for host memory. */
  readonly cuda: CudaMemory['cuda'] | undefined;
  /** Whether peers may write into it. */
  readonly remote: boolean;
  /** False once unregistered. */
  readonly registered: boolean;
  /**
   * Unregister: waits for this engine's pending operations that use the region to settle first,
   * then for the registration to be closed on every NIC (and the same-host lane's shared name to
   * be unlinked). Once it resolves, a peer's write through the old descriptor is refused
   * (`REMOTE_ACCESS` at the writer, where the provider reports refusals: tcp, verbs, libfabric 2.x's
   * shm as `scripts/libfabric.sh` builds it; libfabric 1.17's shm never completes it, see
   * docs/security.md) and the memory is the caller's again. A closed engine resolves at once.
   */
  unregister(): Promise<void>;
}

/** Deadline and cancellation, accepted by every `submit*` and by counter waits. */
export interface OpOptions {
  /**
   * Abort the operation; it then rejects with `ABORTED` once none of its work can touch memory
   * (it may still resolve if all its work had landed). Work already posted is waited for: if the
   * provider never completes it (a hung peer), the operation settles at the engine deadline
   * (native engines' `opTimeoutMs`) with `TIMEOUT`, its message saying it was aborted first.
   */
  signal?: AbortSignal;
  /**
   * Reject with `TIMEOUT` after this many milliseconds, posted or not (0: as soon as a 0 ms timer
   * fires — unlike the engine-wide `opTimeoutMs`, where 0 means no deadline). Work already
   * posted then stays posted (it may still land, and still read the source): the operation's
   * regions stay in use and {@link TransferEngine.quiesce} for its peer waits until the provider
   * lets go of it (at the latest at the engine deadline); reuse the source only after that.
   * `stats().ops.held`.
   */
  timeoutMs?: number;
}

/** One contiguous write, sharded by bytes across NICs. */
export interface SingleWriteRequest extends OpOptions {
  src: MrHandle;
  /** Default 0. */
  srcOffset?: number;
  length: number;
  dst: MrDesc;
  /** Default 0. */
  dstOffset?: number;
  /** Immediate delivered with every shard; counted at the target. */
  imm?: number;
  /** Number of shards (1..lanes). Default: `autoShards(length, lanes)`. */
  shards?: number;
}

/** Many equal pages: page `i` goes from `srcOffset + srcPages[i]*srcStride` to `dstOffset + dstPages[i]*dstStride`. */
export interface PagedWritesRequest extends OpOptions {
  src: MrHandle;
  srcPages: Uint32Array;
  srcStride: number;
  srcOffset?: number;
  dst: MrDesc;
  dstPages: Uint32Array;
  dstStride: number;
  dstOffset?: number;
  pageBytes: number;
  /** Immediate delivered with every page (one work request per page). */
  imm?: number;
}

/** One destination of a scatter. */
export interface ScatterTarget {
  dst: MrDesc;
  srcOffset: number;
  dstOffset: number;
  length: number;
}

/**
 * How a scatter uses NICs:
 * - `'peers'` (default): each target is one work request; targets are spread round-robin over lanes.
 * - `'bytes'`: each target is sharded by bytes across lanes, like a single write.
 * - `{nic}`: every target on that one lane.
 */
export type ScatterRouting = 'peers' | 'bytes' | { nic: number };

/** One source, many destinations. */
export interface ScatterRequest extends OpOptions {
  src: MrHandle;
  /** The destinations; an empty list posts nothing and resolves (unlike `addPeerGroup([])`, refused). */
  targets: readonly ScatterTarget[];
  imm?: number;
  routing?: ScatterRouting;
}

/** A zero-byte write with an immediate to every member of a group. */
export interface BarrierRequest extends OpOptions {
  group: PeerGroup;
  imm: number;
  /**
   * Spread members over lanes (member j on lane j mod lanes) instead of pinning every immediate
   * to lane 0. Counts are the same either way: one arrival per member.
   */
  spread?: boolean;
}

/** An immediate alone. `dst` is the target engine (its address, or any descriptor it owns). */
export interface ImmRequest extends OpOptions {
  dst: NetAddr | MrDesc;
  imm: number;
  /** Lane to use; default 0. */
  nic?: number;
}

/** Any request whose target counts arrivals. Plain data, validated once at the edge. */
export type TransferRequest =
  | ({ kind: 'single' } & SingleWriteRequest)
  | ({ kind: 'paged' } & PagedWritesRequest)
  | ({ kind: 'scatter' } & ScatterRequest)
  | ({ kind: 'barrier' } & BarrierRequest)
  | ({ kind: 'imm' } & ImmRequest);

/** What {@link TransferEngine.submitBatch} takes besides its requests. */
export interface BatchOptions extends OpOptions {
  /**
   * Let the batch's unsharded single writes that have no `signal` or `timeoutMs` of their own and
   * share source handle, destination `MrDesc` and immediate travel as one operation each group
   * (default true): cheaper per write, but they share one outcome. False: every request is its own
   * operation, and each write's outcome is exactly the one its provider reported.
   */
  mergeWrites?: boolean;
}

/** What {@link TransferEngine.submitBatch} resolves with once every operation has settled. */
export interface BatchResult {
  /** How many requests failed (0: every one completed). */
  readonly failed: number;
  /**
   * One entry per request, in order: `undefined` where the operation completed, else the
   * `TrellisError` it failed with (as its own `submit*` would have rejected).
   */
  readonly errors: readonly (import('./errors.js').TrellisError | undefined)[];
}

/** What {@link TransferEngine.prepareWrites} takes: the part of many writes that never changes. */
export interface PreparedWritesRequest {
  /** Source registration of this engine (host, CUDA or in parts: every path a write takes). */
  src: MrHandle;
  /** Destination: a peer's remote registration. */
  dst: MrDesc;
  /** Immediate each write carries unless a post names its own (default, or `null`: none). */
  imm?: number | null;
}

/** Options of one {@link PreparedWrites.post}. */
export interface PreparedPostOptions extends OpOptions {
  /** Post the first `count` writes of `writes` (default: all, `writes.length / 3`). */
  count?: number;
  /** The immediate of this post's writes instead of the prepared one; `null`: none. */
  imm?: number | null;
}

/**
 * Writes from one source to one destination, validated once by
 * {@link TransferEngine.prepareWrites} and posted many times.
 */
export interface PreparedWrites {
  readonly src: MrHandle;
  readonly dst: MrDesc;
  /** The prepared immediate (undefined: none). */
  readonly imm: number | undefined;
  /**
   * Post `writes` — `[srcOffset, dstOffset, length]` per write, in a `Float64Array` (or an array
   * of numbers) — as one operation. Each write is one work request and carries the immediate,
   * so the target counts one arrival per write, as for the same writes posted one by one. The
   * array is read before `post` returns: reuse it at once. Bad input (an offset that is not an
   * integer >= 0, a range outside `src` or `dst`, a source unregistered since, a count that does
   * not fit) rejects with the error
   * `submitSingleWrite` would give, naming the write, before anything is posted. Resolves once
   * every write completed; rejects with the first failure, like any `submit*` (no order holds
   * between the writes; a failed post may have delivered some of them). A post of no writes is
   * an operation that reaches no peer: it resolves once the engine has seen it. Writes are never
   * sharded (where one large write should use every NIC, `submitSingleWrite` shards it); they go
   * round the NIC pairs in turn, each post starting where the previous one ended.
   */
  post(writes: Float64Array | readonly number[], opts?: PreparedPostOptions): Promise<void>;
}

/** Peers resolved once for scatter and barrier. */
export interface PeerGroup {
  readonly id: number;
  readonly peers: readonly NetAddr[];
}

/** Options of {@link TransferEngine.submitRecvs}. */
export interface RecvOptions {
  /** Largest message each posted buffer accepts (at most the engine's `maxMessageBytes`). */
  maxBytes: number;
  /** Buffers kept posted (at least 1). */
  count: number;
  /** Stop receiving: the returned promise resolves once the buffers are withdrawn. */
  signal?: AbortSignal;
  /** Called for a message that could not be delivered (`MESSAGE_TRUNCATED`). Default: dropped and counted in stats. */
  onError?: (err: import('./errors.js').TrellisError) => void;
}

/** An incoming two-sided message. `data` is the caller's to keep. */
export interface RecvMessage {
  from: NetAddr;
  data: Uint8Array;
}

/** Options of {@link ImmCounter.wait}. */
export interface WaitOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/**
 * Arrivals of one immediate value at this engine, with credit semantics (a counting semaphore):
 * arrivals may come before the wait, `wait(n)` takes n credits when they are there, and rounds
 * overlap without resets. Waiters are served in the order they called `wait`.
 */
export interface ImmCounter {
  readonly imm: number;
  /**
   * Credits available now (arrivals not yet taken by a wait). On native engines, the first 64
   * values an engine's `immCounter` is asked for are counted in a word the engine's worker stores
   * as it reads each arrival from its NIC: `value`, `total`, `take` and `wait` of those see it at
   * once (one memory load: no poll, no event-loop turn). For other values, arrivals that do not
   * complete what the first `wait` needs (or come with none waiting) reach `value` and `total` up
   * to about `arrivalBatchUs` (default 1 ms) after the worker counted them; the one that completes
   * it wakes the wait at once, and {@link TransferEngine.pollUntil} sees every arrival at once.
   * Either way arrivals no wait needs do not wake the event loop at once (at most once per about
   * `arrivalBatchUs`, or when the worker goes idle).
   */
  readonly value: number;
  /** Total arrivals since the engine started (as up to date as {@link ImmCounter.value}). */
  readonly total: number;
  /** Resolve when `n` credits are available, taking them. Rejects `TIMEOUT`, `ABORTED` or `CLOSED` without taking any. */
  wait(n: number, opts?: WaitOptions): Promise<void>;
  /**
   * Take `n` (default 1) credits now if they are there and no `wait` is queued ahead; false
   * otherwise, taking none. Throws `CLOSED` once the engine is closed. For latency loops (see
   * {@link TransferEngine.pollUntil}).
   */
  take(n?: number): boolean;
}

/** A 64-bit word a producer increments; the engine watches it and calls back on every observed change. */
export interface UvmWatcher {
  /** The word, as a one-element view over host memory the engine watches. */
  readonly word: BigUint64Array;
  /** The word's address, for a GPU kernel (host memory mapped into the device on GPU backends); 0n on the loopback fabric. */
  readonly devicePtr: bigint;
  /** Current value. */
  readonly value: bigint;
  /**
   * When the watching thread observed the change last reported to the callback, in ns of the
   * monotonic clock `process.hrtime.bigint()` reads (0n before the first change). Compare it with
   * the producer's own timestamp to measure the notification latency.
   */
  readonly seenAt: bigint;
  /** Host-side producer: add `n` (default 1) atomically and wake the watcher. */
  increment(n?: bigint): bigint;
  /** Stop watching. Idempotent. */
  close(): void;
}

/**
 * Called with each observed value and the previous one. Increments that land between two
 * observations coalesce into one call, so use `value`, not the number of calls.
 */
export type UvmWatcherCallback = (value: bigint, previous: bigint) => void;

/** Per-NIC counters. */
export interface NicStats {
  index: number;
  /** Provider behind the NIC, e.g. `loopback`, `efa`, `shm`, `tcp;ofi_rxm`. */
  provider: string;
  /** Data path: `host` memory, GPU memory `direct` (GPUDirect), or `staged` through host bounce buffers. */
  path: 'host' | 'direct' | 'staged';
  /** The device behind the NIC where the backend names one, e.g. `mlx5_0 port 1, RoCE v2 GID 3, MTU 4096`. */
  device?: string;
  /** False once the NIC was torn down (`failNic`) or, with failover, marked down. */
  up: boolean;
  /**
   * Bytes this engine wrote through the NIC's provider. Writes that took the same-host lane
   * count in `writeOps` but not here: their bytes are in `stats().hostLane.bytes` (or `gpu.laneBytes`).
   */
  bytesWritten: number;
  writeOps: number;
  bytesSent: number;
  sendOps: number;
  bytesReceived: number;
  recvOps: number;
  immsReceived: number;
  errors: number;
}

/** Engine-wide counters from {@link TransferEngine.stats}. */
export interface EngineStats {
  kind: string;
  nics: NicStats[];
  ops: OpStats;
  regions: number;
  registeredBytes: number;
  /**
   * Messages this engine received and could not hand to a `submitRecvs` callback: larger than the
   * receiving pool's `maxBytes`, malformed, (native engines) beyond 1024 arriving before any
   * `submitRecvs` ran, or sent to another generation of this address (a dead predecessor whose
   * tcp port this process was given).
   */
  recvDropped: number;
  /** Peers this engine has addressed, and what it concluded about their liveness. */
  peers: PeerStats;
  /** GPU memory: regions by path, and the bytes the staged path copied each way. */
  gpu: GpuStats;
  /** NIC failover (all zero when the engine runs without `failover`). */
  failover: FailoverStats;
  /** The transport library under a native engine (absent for the loopback fabric). */
  library?: LibraryInfo;
  /** Host memory over the same-host lane (native engines; absent for the loopback fabric). */
  hostLane?: HostLaneStats;
  /** How completions and arrivals reached JavaScript (native engines; absent for the loopback fabric). */
  events?: EventStats;
}

/**
 * How a native engine's completions and arrivals reached JavaScript: each batch the worker pushed
 * was taken either by the event loop after the worker rang it, or by a poll (busy polling,
 * `pollUntil`, `poll()`) with no ring at all.
 */
export interface EventStats {
  /** Batches the event loop took after a ring (each ring woke it, unless it was busy anyway). */
  rung: number;
  /** Batches a poll took (busy polling, `pollUntil`, `poll()`). */
  polled: number;
  /**
   * Event-loop turns spent busy polling (`busyPollUs`): each polls until a batch comes, for at most
   * 20 µs of the JavaScript thread.
   */
  busyPolls: number;
}

/** Operation counters of {@link EngineStats}. */
export interface OpStats {
  /**
   * Operations begun. A call refused before anything is posted — bad input, a closed engine, a
   * peer known lost or unreachable — is not counted (one whose `signal` is already aborted is: it
   * counts as submitted and failed, settling `ABORTED` with nothing posted); in a `submitBatch`, whose requests are all
   * checked for bad input first, a request to a lost peer is counted (and fails `PEER_LOST` alone).
   * These counters count a `submitBatch`'s writes that travel as one operation once per request
   * (as their own calls would), and one `prepareWrites` post once, however many writes it has.
   */
  submitted: number;
  completed: number;
  failed: number;
  /** Submitted and not yet settled. */
  inFlight: number;
  /**
   * Operations that settled with work requests still posted: at their own deadline (`timeoutMs`),
   * or at the engine deadline (`opTimeoutMs`, e.g. an abort waiting on a hung peer). Their late
   * completions are swallowed: the promise has settled `TIMEOUT`.
   */
  settledPosted: number;
  /**
   * Of those, the ones whose posted work the provider has not let go of yet, until at most the
   * engine deadline (`opTimeoutMs`): their regions stay in use (`unregister` waits) and their peers'
   * in-flight counts keep them (`quiesce` waits), since the source may still be read. Past the
   * engine deadline the engine stops counting them though a hung peer's provider may still hold
   * the work (see {@link TransferEngine.quiesce}).
   */
  held: number;
}

/** Peer liveness counters of {@link EngineStats}. */
export interface PeerStats {
  /** Peer addresses (engine generations) this engine has addressed. */
  known: number;
  /** Of those, the ones concluded lost (`onPeerLost` was called for each). */
  lost: number;
  /**
   * Probes sent after a provider reported a connection error as a possible death, and how many
   * were answered: each answered probe turned that error into `CONNECTION_RESET` instead of
   * `PEER_LOST` (the peer lives; only the connection was reset).
   */
  probes: number;
  probesAnswered: number;
  /** Heartbeats sent (engine option `heartbeatMs`). */
  heartbeats: number;
  /**
   * Of those, the ones that failed or went unanswered and counted as misses (three in a row to one
   * peer lose it). A heartbeat failed by a NIC while another NIC to the peer is up counts against
   * the NIC instead, and is in neither this nor `heartbeatsLate`.
   */
  heartbeatsMissed: number;
  /**
   * Heartbeats that timed out while another operation to the peer completed — they waited behind
   * the peer's own backlog — counted as answered, not as misses.
   */
  heartbeatsLate: number;
}

/**
 * The host half of the same-host lane: writes between host regions of engines on one host copied
 * by the writer's copy thread into the target's shared-memory region, not through the provider.
 */
export interface HostLaneStats {
  /** Writes (and their bytes) this engine copied over the lane (counted as `OpStats` counts operations). */
  writes: number;
  bytes: number;
  /** Writes to a same-host shared region that went through the provider (mapping it failed); one per operation, whatever its writes. */
  fallbacks: number;
  /** Remote host regions of this engine in shared-memory objects (writers on this host map them). */
  sharedRegions: number;
  /** Remote host regions that fell back to plain memory because /dev/shm refused the object. */
  sharedAllocFailures: number;
}

/** The transport library a native engine runs on, as loaded at run time. */
export interface LibraryInfo {
  /** `libfabric` or `libibverbs`. */
  name: string;
  /** Its version as the library reports it (libfabric: `fi_version()`, e.g. `1.17` or `2.6`). */
  version: string;
  /** The file it was loaded from (which install: Debian's, `/opt/amazon/efa`, a 2.x build). */
  path: string;
  /** The engine's provider offers GPU memory (libfabric `FI_HMEM`) on this library. */
  hmem: boolean;
  /** CUDA regions register directly with the NICs (`hmem` and a CUDA driver, not turned off). */
  gpuDirect: boolean;
}

/**
 * NIC failover (engine option `failover`, for engines with more than one NIC). With it, no
 * immediate rides on a write: data goes as plain writes on the NICs that are up, a NIC-attributed
 * failure re-posts the data on the others, and once every byte is delivered the immediates are
 * raised by one control message per target that the target counts once per token — exactly-once
 * even when a failed work request had in fact delivered. See docs/architecture.md.
 */
export interface FailoverOptions {
  /** Errors on one NIC within `windowMs` that mark it down. Default 3. */
  maxErrors?: number;
  /** The window `maxErrors` is counted in (at least 1). Default 1000 ms. */
  windowMs?: number;
  /** How long a NIC stays down; its next use after that is the probe. Default 5000 ms. */
  cooldownMs?: number;
  /** Re-posts of one operation (data or its immediates) before it fails. Default 3. */
  maxReposts?: number;
  /**
   * How long one attempt may take on a NIC before failover gives it up and re-posts elsewhere:
   * one NIC's share of an operation's data (plus 1 ms per MiB it moves), or a control message
   * raising immediates until the target acknowledges it. Catches a NIC that fails without an error
   * (a target's port that stops answering, a connection that swallows what is sent). Set it well
   * above the fabric's slowest time for one attempt: the writes of an attempt given up may still
   * land later (the same bytes to the same place, possibly after the immediates were raised).
   * Default 5000 ms.
   */
  attemptMs?: number;
}

/** Counters of NIC failover. */
export interface FailoverStats {
  /** Data or control messages posted again after a NIC-attributed failure. */
  reposts: number;
  /** Times a NIC was marked down. */
  nicsMarkedDown: number;
  /** Immediates this engine raised at targets through control messages. */
  controlImms: number;
  /** Immediates a target received again under a token it had counted (dropped, not counted). */
  duplicateImms: number;
  /**
   * Attempts given up at `attemptMs` (data a NIC did not finish delivering, control messages the
   * target did not acknowledge) and re-posted or sent again on another NIC.
   */
  attemptTimeouts: number;
  /**
   * Times a path — this engine's NIC `i` to one peer — was marked down for `cooldownMs` while the
   * NIC itself stayed up: at once when an attempt on it timed out, or after `maxErrors` connection
   * resets within `windowMs`. It costs only that peer (its NIC may have died, or the peer itself:
   * one peer's fault never takes a NIC down for the others); `stats().nics[i].up` is the NIC's own.
   */
  pathsMarkedDown: number;
}

/** GPU memory counters of an engine (all zero on an engine without GPU regions). */
export interface GpuStats {
  /** CUDA regions registered directly (GPUDirect RDMA). */
  directRegions: number;
  /** CUDA regions staged through pinned host mirrors. */
  stagedRegions: number;
  /** Bytes copied device → host before being written (staged sources). */
  stagedToHostBytes: number;
  /** Bytes copied host → device after arriving (staged targets). */
  stagedToDeviceBytes: number;
  /** Staged writes this engine completed as the writer (counted as `OpStats` counts operations). */
  stagedWrites: number;
  /** Writes this engine made through the same-host lane (CUDA IPC copies, no NIC; counted as `OpStats` counts operations). */
  laneWrites: number;
  /** Bytes those writes copied. */
  laneBytes: number;
  /** Writes that could have taken the lane but went through the NICs (a peer's allocation could not be mapped); one per operation, whatever its writes. */
  laneFallbacks: number;
}

/** Static limits of an engine. */
export interface EngineLimits {
  /**
   * Largest two-sided message: 1 to 4 MiB (default 64 KiB). Native engines keep receive buffers of
   * this size posted (64 on the first NIC, 8 on each other), so memory grows with it.
   */
  maxMessageBytes: number;
  /** Largest region `registerMemory` accepts (an integer >= 1; default no limit). */
  maxRegionBytes: number;
  /**
   * Largest region the provider registers at once. A host region above it is registered
   * transparently in parts of this size: its descriptor lists every part's keys (`MrDesc.parts`),
   * and writes to or from it are cut at part boundaries, their immediates raised once the data is
   * delivered (one per original work request, so receivers count as always). At least 4096.
   * Default: no limit. `createEngine` refuses a field out of range, or one not listed here, with
   * `INVALID_ARGUMENT`.
   */
  maxMrBytes: number;
}

/** What {@link TransferEngine.openPort} takes. */
export interface PortOptions {
  /**
   * Immediate values the port counts natively, by slot (index in this list). From now on their
   * arrivals are the port's: they no longer reach {@link TransferEngine.immCounter}. Open the port
   * before any peer can send them. At most 64 values, none counted by another open port.
   */
  count: readonly number[];
}

/**
 * One range pair a port's native consumer may post into: any sub-range of the source range to the
 * same-length sub-range of the destination range, counted by `imm` at the target. Without `src`
 * the window carries immediates alone (`dst` names the peer).
 */
export interface PortWindow {
  /** Source registration (host memory: staged CUDA regions cannot be posted natively). */
  src?: MrHandle;
  srcOffset?: number;
  /** Bytes of the source range; default: to the end of `src`. */
  srcLength?: number;
  dst: MrDesc;
  dstOffset?: number;
  /** Bytes of the destination range; default: to the end of `dst`. */
  dstLength?: number;
  imm?: number;
  /** The NIC pair the window's writes use (default 0; each post is one work request). */
  nic?: number;
}

/** Counters of an {@link EnginePort}. */
export interface PortStats {
  /** Posts accepted from the native consumer. */
  posted: number;
  /** Posts settled (completed or failed); equal to `posted` when nothing is in flight. */
  settled: number;
  failed: number;
  /** Arrivals of each counted immediate, by slot. */
  counts: number[];
}

/**
 * An engine port: the handle a native consumer (a proxy thread of another addon) posts through.
 * Every post settles exactly once into the port's counters; a failure keeps the first error's
 * code and message (`trellis_port_v1.error`). Posts to a peer are not seen by
 * {@link TransferEngine.quiesce} or `onPeerLost`: the consumer watches its own posts.
 */
export interface EnginePort {
  /** Address of the port's `trellis_port_v1` (trellis/port.h), for the native consumer. */
  readonly handle: bigint;
  /** The counted immediate values, by slot. */
  readonly counted: readonly number[];
  /**
   * Replace the windows (validated here, as a write request would be). Change them only while the
   * consumer is not posting.
   */
  setWindows(windows: readonly PortWindow[]): void;
  stats(): PortStats;
  /**
   * Close the port: posts are refused from now on, the counted immediates go back to
   * `immCounter`. The consumer must have stopped using `handle` before this is called. Writes it
   * posted that have not settled yet (a hung peer's) keep its windows' source regions in use —
   * their `unregister` waits — until they settle, at the latest about the engine deadline
   * (`opTimeoutMs`) after this call: the provider may read the sources until then.
   */
  close(): void;
  readonly closed: boolean;
}
