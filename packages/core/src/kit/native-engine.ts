// The JS side of every native backend: an EngineBase over the engine kit's N-API class
// (src/kit/native/include/trellis/napi_engine.hpp). A backend adds only how its addon is
// loaded and configured, and what its peers' NIC addresses look like.
import { constants as bufferConstants } from 'node:buffer';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { NetAddr } from '../addr.js';
import { HOST_MAPPING_DEVICE, MrDesc, type MrIpc, sharedHandle } from '../desc.js';
import type { GpuMemoryOps } from '../device.js';
import { type CallSite, TrellisError, type TrellisErrorCode } from '../errors.js';
import { autoShards } from '../imms.js';
import type {
  CudaMemory,
  EngineLimits,
  EnginePort,
  EventStats,
  FailoverOptions,
  GpuStats,
  HostLaneStats,
  ImmCounter,
  MemorySource,
  MrHandle,
  NicStats,
  PortOptions,
  PortStats,
  PortWindow,
  RegisterOptions,
  UvmWatcher,
  UvmWatcherCallback,
  WaitOptions,
} from '../types.js';
import { checkLimits, EngineBase, type GpuPath } from './engine-base.js';
import {
  ARRIVAL,
  BATCH_WRITE,
  COMPLETION,
  NIC_KEYS,
  NIC_STATS,
  PORT_STATS,
  PORT_WINDOW,
  POSTED_FLAG,
  REG_KEY,
  RUN,
} from './format.js';
import { SameHostLane, SHARED_OWNER } from './lane.js';
import { OpSlots } from './live-ops.js';
import type { PendingOp } from './pending-op.js';
import type { RecvPool, Region, RegionAlloc } from './region.js';
import { type StagedMemory, Stager } from './staging.js';
import type { Timer } from './timers.js';
import { failoverSettings } from './two-phase.js';
import { callUser } from './user.js';
import {
  checkCount,
  checkDst,
  checkImm,
  checkRange,
  type PagedPlan,
  type Plan,
  type ScatterPlan,
  type SinglePlan,
} from './validate.js';

/**
 * What a batch of events from the native worker (one doorbell) has besides the completions and
 * arrivals written into the event scratch (see {@link NativeEngine.bindEvents}); `ops` and `imms`
 * only when those could not go there. @internal
 */
export interface NativeEvents {
  // Each field is present only when the batch has some.
  /**
   * One {@link COMPLETION} record per settled op: op id, code index into the addon's `codeNames`
   * (plus {@link POSTED_FLAG} when it settled with work still posted), errno, nic + 1 (0: none).
   */
  ops?: Uint32Array;
  /** Ops reported with {@link POSTED_FLAG} whose posted work the provider has let go of since. */
  released?: Uint32Array;
  /** Messages of failed ops: [record index into ops, text, index, text, ...]. */
  messages?: Array<number | string>;
  /** Registrations done, and deregistrations (`dereg: true`: every NIC has closed the region's key). */
  regs?: Array<{ region: number; code: string; message: string; keys: BigUint64Array; dereg?: true }>;
  /** {@link ARRIVAL} records: (imm, count) */
  imms?: Uint32Array;
  recvs?: Uint8Array[];
  /** [watchId, value, previous, seen: ns of the monotonic clock] */
  watches?: Array<[number, bigint, bigint, bigint]>;
}

/**
 * How the addon hands JS a batch: `nOps` completion and `nImms` arrival records in the event scratch
 * (see {@link NativeEngine.bindEvents}), and the rest of the batch, if any, in `extra`. @internal
 */
export type NativeEventCallback = (nOps: number, nImms: number, extra: NativeEvents | undefined) => void;

/** The engine kit's N-API class: plain data in, events out. Validation lives in TypeScript. @internal */
export interface NativeEngine {
  addresses(): Uint8Array[];
  providers(): Array<{ provider: string; path: 'host' | 'direct' | 'staged'; device?: string }>;
  addPeer(id: number, addrs: readonly Uint8Array[]): void;
  alloc(length: number): ArrayBuffer;
  /** Host memory in a POSIX shared-memory object (the host half of the same-host lane). */
  allocShared(length: number): { buffer: ArrayBuffer; name: string };
  unlinkShared(name: string): void;
  mapShared(name: string): { id: number; base: bigint; length: number };
  /** 0: the owner holds the region; 1: it was unregistered (or is not mapped); 2: the owner died. */
  sharedOwner(id: number): number;
  unmapShared(id: number): void;
  hostCopy(queue: number, triples: BigUint64Array, signal: Uint8Array, value: bigint): void;
  addressOf(view: Uint8Array): bigint;
  register(id: number, view: Uint8Array, remote: boolean): void;
  /** Register CUDA device memory directly (only where every NIC's path is `direct`). */
  register(id: number, devicePtr: bigint, remote: boolean, bytes: number, device: number): void;
  deregister(id: number): void;
  /** Many writes in one call: {@link BATCH_WRITE} records, their runs one after another. */
  writeBatch(batch: Float64Array, runs: Float64Array, runKeys: BigUint64Array): void;
  /** The arrays {@link NativeEngine.writeBound} reads its runs from (kept referenced by the addon). */
  bindScratch(runs: Float64Array, runKeys: BigUint64Array): void;
  /**
   * Where each batch's completions and arrivals go: the event callback gets `(nOps, nImms, extra)`
   * and finds nOps {@link COMPLETION} records from index 0, then nImms {@link ARRIVAL} records
   * (kept referenced by the addon; read only inside the callback).
   */
  bindEvents(scratch: Uint32Array): void;
  /** The Uint32Array {@link NativeEngine.shareImm}'s words are in (kept referenced by the addon). */
  bindImmTotals(words: Uint32Array): void;
  /**
   * From now on the worker keeps word `slot` of the bound array at the arrivals of `imm` read from
   * the NICs since the engine started (mod 2^32), stored before the batch reporting them.
   */
  shareImm(imm: number, slot: number): void;
  /** write() of the first `runs` runs of the bound scratch, no pages, no trigger; imm < 0: none. */
  writeBound(op: number, region: number, imm: number, runs: number): void;
  write(
    op: number,
    region: number,
    hasImm: boolean,
    imm: number,
    runs: Float64Array,
    runKeys: BigUint64Array,
    pages?: {
      peer: number;
      lanes: number;
      srcPages: Uint32Array;
      dstPages: Uint32Array;
      srcStride: number;
      dstStride: number;
      srcOffset: number;
      dstOffset: number;
      pageBytes: number;
      keys: BigUint64Array;
    },
    /**
     * Arm the write on a watch instead of posting it now. `hold`: a cancel posts nothing but
     * settles the write only once the watch reaches `at` (the same-host lane's copy is done).
     */
    trigger?: { watch: number; at: bigint; hold?: boolean },
  ): void;
  send(op: number, peer: number, bytes: Uint8Array, lane?: number): void;
  /** Tear NIC `lane`'s endpoint down (fault injection). */
  failNic(lane: number): void;
  /** `force`: settle a held trigger now, without waiting for its watch. */
  cancel(op: number, code: 'TIMEOUT' | 'ABORTED', force?: boolean): void;
  /** `quiet`: the worker reports no changes of the word to JS (only triggers read it). */
  watch(id: number, word: Uint8Array, quiet?: boolean): void;
  unwatch(id: number): void;
  /** Watch `id` reads the arrivals of `imm` counted so far (for reactions: never reported to JS). */
  watchImm(id: number, imm: number): void;
  /** Arrivals of `imm` JS counted itself (control messages): reactions count them too. */
  countImm(imm: number, n: number): void;
  /** Latency mode: deliver the waiting batch now, through the events callback; false if none. */
  poll(): boolean;
  /**
   * Polling ended (the last pollUntil returned, or busy polling stopped): the worker's next flush
   * rings for what is left. Returns whether a flush held back its ring for a batch that is still
   * there because JS was polling: the caller takes it with poll() rather than wait for that ring.
   */
  endPoll(): boolean;
  /**
   * The first waiter on `imm` needs `need` more arrivals than JS was given (0: none waits): the
   * worker rings as soon as they are in; arrivals nobody waits for ring up to `arrivalBatchUs` late.
   */
  armImm(imm: number, need: number): void;
  /** One {@link NIC_STATS} record per NIC. */
  stats(): Float64Array;
  /**
   * Stop the worker and deliver its last batch; false when it did not stop within 3 s (stuck inside
   * the provider): it was then left behind as by {@link abandon}, and nothing was delivered.
   */
  close(): boolean;
  /** Fault injection for tests: the worker spends `ms` in one command, as if stuck in the provider. */
  stallWorker(ms: number): void;
  /** Worker loop iterations so far (-1 once closed). */
  heartbeat(): number;
  /** Detach a worker stuck inside the provider; the native engine is leaked on purpose. */
  abandon(): void;
  /** Open port `id` counting `imms`; returns the address of its trellis_port_v1. */
  openPort(id: number, imms: Uint32Array): bigint;
  /** One {@link PORT_WINDOW} record per window; one {@link NIC_KEYS} record each. */
  setPortWindows(id: number, windows: Float64Array, keys: BigUint64Array): void;
  /** A {@link PORT_STATS} record, then the count of each counted immediate. */
  portStats(id: number): Float64Array;
  /** Posts are refused from now on; its stats stay readable until {@link forgetPort}. */
  closePort(id: number): void;
  forgetPort(id: number): void;
}

/**
 * Calls through a port's C table (trellis/port.h) exactly as a native consumer makes them: every
 * engine-kit addon exports them (`portPost`, ...) for tests and tools.
 */
export interface NativePortCalls {
  /** 0, or TRELLIS_PORT_CLOSED (-1), _RANGE (-2), _NO_WINDOW (-3). */
  portPost(handle: bigint, window: number, src: number, dst: number, len: number): number;
  portCount(handle: bigint, slot: number): number;
  /** [settled, failed] */
  portSettled(handle: bigint): [number, number];
  /** "CODE: message" of the first failure, or undefined. */
  portError(handle: bigint): string | undefined;
  /** What error() returns: 0 when nothing failed, else 1 + the window of the first failed post. */
  portErrorWindow(handle: bigint): number;
  portWait(handle: bigint, seen: number, timeoutUs: number): number;
}

/**
 * What every engine-kit addon exports besides its engine class and its backend's own calls
 * (`TRELLIS_NAPI_MODULE` in napi_engine.hpp). @internal
 */
export interface NativeModuleCalls extends NativePortCalls {
  /** Names of completion codes by index: the native enum's one definition. */
  codeNames: readonly string[];
  /**
   * The work requests the worker would post for a packed write ({@link packWrite}), as
   * `WR_SHAPE` records in posting order. Posts nothing; for tests of the expansion.
   */
  expandWrite(runs: Float64Array, keys: BigUint64Array, pages?: PackedWrite['pages']): Float64Array;
  /**
   * The worker's command queues under a burst (tests): its first command held until `n` commands
   * from this thread (past the ring: they overflow) and `others` from another thread (started
   * once this thread has pushed n/4) are in, then `n` more. Whether this thread's were handled in
   * the order pushed, and how many of the other thread's came before the n/4 pushed ahead of them.
   */
  commandRingCheck(
    n: number,
    others: number,
  ): { inOrder: boolean; js: number; others: number; othersEarly: number; overflowed: number };
  /**
   * The worker's event queue driven against a polling JS thread (tests): whether a quiet record
   * published after a poll took a held batch turns ready within `arrivalBatchUs` while JS keeps
   * polling, whether a cancel's hurry readies it at the next flush, and whether it otherwise stays
   * quiet.
   */
  eventQueueCheck(): { afterPolledDrain: boolean; hurried: boolean; stayedQuiet: boolean };
}

/** Options every native engine understands (the engine kit's `EngineOptions`). */
export interface NativeEngineTuning {
  /** Pin the engine's worker thread to this CPU. */
  cpu?: number;
  /**
   * Engine-owned deadline of every operation in ms (default 30000; 0: none). A provider may retry
   * a dead peer forever; past this the operation rejects with `TIMEOUT`.
   */
  opTimeoutMs?: number;
  /** Keep polling this long after the last activity (default 1000 µs). */
  idleSpinUs?: number;
  /**
   * Then sleep between polls, 8 µs at first and doubling up to this (default 1000 µs; 0: spin
   * always, lowest latency, one core). Where every NIC's CQ has a wait fd (tcp, verbs) an idle
   * worker instead blocks on it. On shm a writer's progress needs the target to poll, so a target
   * that sleeps slows its writers: a target fed in bursts wants a longer `idleSpinUs` or
   * `maxSleepUs: 0`.
   */
  maxSleepUs?: number;
  /** Most work requests in flight per NIC (default 1024). */
  maxInflight?: number;
  /**
   * Most writes in flight to one peer per NIC (default a quarter of `maxInflight`, 256). A peer
   * that stops completing (hung, dead, or a provider stuck on it) holds at most this many of the
   * NIC's slots until its operations' deadlines; other peers' writes keep the rest. At most
   * `maxInflight`.
   */
  peerWindow?: number;
  /**
   * Wake JS at most once per this many µs (default 0: as soon as the last batch was taken). A few
   * tens of µs make batches larger and leave more CPU to the worker when JS shares few cores. A
   * `wait` armed for arrivals already counted wakes JS at once regardless (see `arrivalBatchUs`).
   */
  doorbellUs?: number;
  /**
   * Immediate arrivals that do not complete what a `wait` needs reach an `ImmCounter`'s `value`
   * and `total` about this many µs after the worker counts them at most (default 1000; 0: every
   * batch of arrivals wakes the event loop at once) — on values without a shared word (the first
   * 64 values `immCounter` is asked for read theirs at once; see `ImmCounter.value`) — sooner
   * where anything else wakes it or the worker goes to sleep idle, or while the event loop busy
   * polls (`busyPollUs`). The arrival that
   * completes the first waiter's count wakes it at once whatever this is, and `pollUntil` sees
   * every arrival at once. Without it a target fed tens of thousands of immediates a second spends
   * a core waking its event loop for counts nobody is waiting for yet. The same bound holds for the
   * writes of a `submitBatch` that succeed before the batch's last one settles: they are taken with
   * the last one's wake-up (one per batch), or within this many µs if it is slow (also while JS
   * polls), or at once — within `doorbellUs`, if set — when one of them is cancelled or its own
   * `timeoutMs` passes.
   */
  arrivalBatchUs?: number;
  /**
   * Busy polling from the event loop: after each submission, each batch of completions and each new
   * `wait` on an immediate counter (and the batch that completes one), while operations are in
   * flight (armed reactions and watch triggers aside) or a `wait` is pending, the JavaScript thread
   * polls the engine from `setImmediate` for up to this many µs instead of sleeping until the
   * worker rings it (default 50 where `os.availableParallelism()` is 8 or more, else 0: see
   * {@link defaultBusyPollUs}; 0: off, batches reach JavaScript when the worker rings). Waking a
   * sleeping event loop costs about 8 µs on a 16-core Xeon host — most of an immediate round trip
   * on one host — and the worker's ring costs it a system call. A turn of the spinning loop polls
   * for up to 20 µs and ends at the first batch, so a batch is seen within about a µs of the
   * worker pushing it, and other I/O and timers still run between turns. The price is the
   * thread's CPU while it waits: at most this long after the last event, and only while something
   * is awaited (`stats().events.busyPolls` counts the turns). Unlike `pollUntil` (latency mode),
   * the event loop keeps turning.
   */
  busyPollUs?: number;
  /**
   * Latency mode on the JavaScript thread (default false). While JavaScript polls
   * (`poll`, `pollUntil`, and busy polling), each poll runs the worker's loop turn on the
   * JavaScript thread itself — its commands handled and posted, the completion queues read, arrivals
   * counted — and so does each submission made within 100 µs of a poll: the work request is posted
   * before the call returns. The worker thread sleeps meanwhile and takes over again once no poll has
   * come for 100 µs (work submitted or landing after the loop ends waits up to that long for it).
   * A latency loop then hands nothing between threads (docs/benchmarks.md has the figures).
   *
   * The cost: the provider is called on the JavaScript thread. A provider call that never returns
   * — libfabric 1.17's shm wedges `fi_writemsg` on a peer that died holding its lock — then hangs
   * the JavaScript thread rather than the worker (which the engine would give up on; see
   * `stats().events`), and a poll is slower when there is work to do (it does it). Not with `gpu`
   * (GPU copies are ordered on the worker thread's CUDA context): `createEngine` rejects both
   * together with `INVALID_ARGUMENT`, as it does a value that is not a boolean.
   * Use it for a loop that spins on `pollUntil` / `poll` anyway; leave it off for streams of writes.
   */
  driveInline?: boolean;
  limits?: Partial<EngineLimits>;
  /**
   * Where each watcher's 64-bit word lives. Default: a SharedArrayBuffer (host producers). For a
   * GPU producer pass memory a kernel can write — `mappedWatcherMemory` from `@trellis/cuda` —
   * and give the kernel the watcher's `devicePtr`.
   */
  watcherMemory?: () => { word: BigUint64Array; devicePtr: bigint };
  /**
   * GPU memory operations (`cudaMemoryOps()` from `@trellis/cuda`): needed to register CUDA
   * regions. Where the NICs cannot reach GPU memory directly the engine stages through pinned
   * host mirrors with them (see {@link MrHandle.path} and `stats().gpu`).
   */
  gpu?: GpuMemoryOps;
  /** Refuse CUDA regions that cannot be registered directly instead of staging them. Default false. */
  strictGpu?: boolean;
  /**
   * The same-host lane: writes to regions of engines on the same host (same boot id) skip the
   * provider. Between CUDA regions: CUDA IPC copies on a stream of the engine's own (needs `gpu`
   * operations with IPC; `cudaMemoryOps()` has them). Between host regions: remote regions the
   * engine allocates (`registerMemory(n, {remote: true})`) live in POSIX shared-memory objects
   * (`/dev/shm/trellis-<pid>-<random>-<dev>`), and a writer on the host memcpys into them on a copy
   * thread. Either way the immediates go through the provider once the bytes are in place. `false`:
   * every write through the NICs, and no shared-memory objects. Default true.
   */
  sameHostLane?: boolean;
  /**
   * Probe peers with operations in flight every this many ms (an immediate of value
   * `HEARTBEAT_IMM`); three misses in a row and the peer is lost — `onPeerLost`, and its operations
   * cancelled with `PEER_LOST`. A heartbeat that times out while another operation to the peer
   * completes (it waited behind the peer's own backlog) is no miss. Default 0: off (the engine
   * deadline `opTimeoutMs` still bounds every operation).
   */
  heartbeatMs?: number;
  /**
   * With `heartbeatMs`, probe every peer this engine has reached, idle ones too, so a dead idle
   * peer is reported through `onPeerLost` within three to four intervals instead of at its next
   * operation. Default false (probes go only to peers with operations in flight). Without
   * `heartbeatMs` it is refused (`INVALID_ARGUMENT`).
   */
  heartbeatIdle?: boolean;
  /**
   * NIC failover with exactly-once immediates (engines with more than one NIC; with one there is
   * no other NIC to re-post on): see {@link FailoverOptions}. Default off. A key that is not a
   * failover option is refused (`INVALID_ARGUMENT`), as are the other liveness options' bad values
   * — all before the engine exists.
   */
  failover?: FailoverOptions | boolean;
}

/** Busy polling: the most one event-loop turn polls for before it lets the loop go on (ms). */
const BUSY_TURN_MS = 0.02;
/**
 * Immediate values whose NIC arrivals the worker also keeps in a word JS reads (the first this
 * many values `immCounter` is asked for), one 64-byte line each.
 */
const SHARED_IMMS = 64;
const SHARED_IMM_STRIDE = 16;

/**
 * {@link NativeEngineTuning.busyPollUs} by default: 50 µs where `os.availableParallelism()` (the
 * CPUs this process may run on) is 8 or more, else 0. With fewer, the engines' worker threads and
 * the event loops of a few processes already share the cores, and a spinning event loop takes the
 * CPU they need (on a 2-core VM busy polling made the shm immediate round trip five times slower,
 * 28.8 → 144.6 µs).
 */
export function defaultBusyPollUs(): number {
  return availableParallelism() >= 8 ? 50 : 0;
}

/** Every field of {@link NativeEngineTuning} (one added there and not here fails to compile). */
const TUNING_KEYS: Record<keyof NativeEngineTuning, true> = {
  cpu: true,
  opTimeoutMs: true,
  idleSpinUs: true,
  maxSleepUs: true,
  maxInflight: true,
  peerWindow: true,
  doorbellUs: true,
  arrivalBatchUs: true,
  busyPollUs: true,
  driveInline: true,
  limits: true,
  watcherMemory: true,
  gpu: true,
  strictGpu: true,
  sameHostLane: true,
  heartbeatMs: true,
  heartbeatIdle: true,
  failover: true,
};

/** A key of `opts` that is neither the backend's option nor the engine's tuning: INVALID_ARGUMENT naming it. */
function checkOptionKeys(backend: string, opts: object, own: readonly string[]): void {
  for (const k of Object.keys(opts))
    if (!Object.hasOwn(TUNING_KEYS, k) && !own.includes(k))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: ${JSON.stringify(k)} is not an option of ${backend} (its options: ${own.join(', ')}; the engine's: ${Object.keys(TUNING_KEYS).join(', ')})`,
      );
}

/** Refuse tuning numbers the worker cannot honour (a negative deadline, a fractional CPU, ...). */
function checkTuning(t: NativeEngineTuning): void {
  // The worker reads them as 32-bit integers (cpu: signed): larger ones would wrap.
  const U32 = 0xffff_ffff;
  const fields: Array<[keyof NativeEngineTuning, number, number]> = [
    ['cpu', 0, 0x7fff_ffff],
    ['opTimeoutMs', 0, U32],
    ['idleSpinUs', 0, U32],
    ['maxSleepUs', 0, U32],
    ['maxInflight', 1, U32],
    ['peerWindow', 1, U32],
    ['doorbellUs', 0, U32],
    ['arrivalBatchUs', 0, U32],
    ['busyPollUs', 0, U32],
    ['heartbeatMs', 0, U32],
  ];
  for (const [k, min, max] of fields) {
    const v = t[k];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: ${k} must be an integer >= ${min}, got ${typeof v === 'number' ? v : JSON.stringify(v)}`,
      );
    if (v > max)
      throw new TrellisError('INVALID_ARGUMENT', `createEngine: ${k} must be at most ${max}, got ${v}`);
  }
  // The liveness options too, before the engine (and its worker thread) exists: one refused after
  // it left a running worker no one could close, and the process never exited.
  if (t.heartbeatIdle !== undefined && typeof t.heartbeatIdle !== 'boolean')
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `createEngine: heartbeatIdle must be a boolean, got ${JSON.stringify(t.heartbeatIdle)}`,
    );
  if (t.heartbeatIdle && !t.heartbeatMs)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      'createEngine: heartbeatIdle needs heartbeatMs (how often to probe); set both, or leave heartbeatIdle out',
    );
  if (t.failover !== undefined) failoverSettings(t.failover);
  if (t.driveInline !== undefined && typeof t.driveInline !== 'boolean')
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `createEngine: driveInline must be a boolean, got ${JSON.stringify(t.driveInline)}`,
    );
  if (t.driveInline && t.gpu)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      'createEngine: driveInline cannot be combined with gpu (GPU copies are ordered on the worker thread): drop one',
    );
  const max = t.maxInflight ?? 1024;
  if (t.peerWindow !== undefined && t.peerWindow > max)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `createEngine: peerWindow (${t.peerWindow}) must be at most maxInflight (${max})`,
    );
}

/** The {@link NativeEngineTuning} fields of `opts`, as the engine kit's N-API class reads them. @internal */
export function nativeTuning(
  opts: NativeEngineTuning,
): Omit<
  NativeEngineTuning,
  | 'limits'
  | 'watcherMemory'
  | 'gpu'
  | 'strictGpu'
  | 'sameHostLane'
  | 'heartbeatMs'
  | 'heartbeatIdle'
  | 'failover'
  | 'busyPollUs'
> {
  return {
    cpu: opts.cpu,
    opTimeoutMs: opts.opTimeoutMs,
    idleSpinUs: opts.idleSpinUs,
    maxSleepUs: opts.maxSleepUs,
    maxInflight: opts.maxInflight,
    peerWindow: opts.peerWindow,
    doorbellUs: opts.doorbellUs,
    arrivalBatchUs: opts.arrivalBatchUs,
    driveInline: opts.driveInline,
  };
}

let bootId: Uint8Array | null | undefined;
/**
 * This host's boot id (`/proc/sys/kernel/random/boot_id`) as 16 bytes: engines with the same one
 * share a host, so their CUDA regions can reach each other through CUDA IPC. Undefined where it
 * cannot be read (then no region offers the same-host lane).
 */
export function hostBootId(): Uint8Array | undefined {
  if (bootId === undefined) {
    bootId = null;
    try {
      const text = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().replace(/-/g, '');
      if (/^[0-9a-f]{32}$/i.test(text))
        bootId = Uint8Array.from(text.match(/../g)!, (h) => Number.parseInt(h, 16));
    } catch {
      // Not Linux, or /proc is not mounted: no lane.
    }
  }
  return bootId ?? undefined;
}

/**
 * Largest staged CUDA region: its pinned host mirror is one typed array, so this runtime's largest
 * (`buffer.constants.MAX_LENGTH`: 2^53 - 1 bytes on Node 22 and 24; 2^32 on Node 20).
 */
export const MAX_STAGED_BYTES = bufferConstants.MAX_LENGTH;

/** Room for the sender's NetAddr and the destination generation in front of every message. @internal */
export const MSG_HEADER = 2048;
/** How long a peer has to answer the probe that decides whether a connection error was its death. */
const PROBE_MS = 2000;
const MAX_UNEXPECTED = 1024; // messages held while no receive pool is posted

/**
 * Engines of this process that were closed. A write to one would reach memory its provider has
 * unmapped (shm maps peers' queues into this process), so it is refused up front with PEER_LOST.
 * Peers in other processes are detected through provider errors and the engine deadline.
 */
const closedInProcess = new Set<string>();

/**
 * Engines of this process with shared host regions (POSIX shared-memory objects under /dev/shm):
 * a process that exits without closing them (`process.exit()`, a signal handler that exits) unlinks
 * their names on its way out, so they do not outlive it. (One that dies of a signal leaves them to
 * the next Trellis process's sweep.)
 */
const unlinkAtExit = new Set<() => void>();
let exitHooked = false;
function unlinkOnExit(f: () => void): void {
  if (!exitHooked) {
    exitHooked = true;
    process.on('exit', () => {
      for (const g of unlinkAtExit) {
        try {
          g();
        } catch {
          // exiting: best effort
        }
      }
    });
  }
  unlinkAtExit.add(f);
}

interface PendingReg {
  resolve: (keys: BigUint64Array) => void;
  reject: (e: TrellisError) => void;
}

/** How a backend hands its addon to {@link NativeEngineBase} (for authors of native backends). */
export interface NativeEngineInit {
  /** Package name, for messages (`@trellis/backend-efa`). */
  backendName: string;
  nics: number;
  /** The caller's worker options and limits (maxMessageBytes defaults to 64 KiB). */
  tuning: NativeEngineTuning;
  /** The loaded addon: its engine class and the names of completion codes by index. */
  addon: {
    NativeEngine: new (opts: object, onEvents: NativeEventCallback) => NativeEngine;
    codeNames: readonly string[];
  };
  /** What the backend's domain factory reads (provider, devices, ...); tuning is added here. */
  nativeOptions: object;
  /** Appended to the message when the addon refuses to create the engine. */
  unsupportedHint?: string;
  /**
   * The backend's own option names (besides {@link NativeEngineTuning}'s): with it, any other key
   * of `tuning` is refused (a misspelt option would otherwise be ignored and its default used).
   */
  optionKeys?: readonly string[];
  /** The engine kind for the providers the addon opened (`fi-shm`, `ib-rc`, ...). */
  kindOf(providers: ReadonlyArray<{ provider: string }>): string;
}

/**
 * The shared JS half of the native backends (backend-efa, backend-verbs): settles operations from
 * the worker's packed completion batches, frames messages with the sender's address, keeps the
 * watchdog and the stats. A backend subclass supplies its addon through {@link NativeEngineInit}
 * and says what a valid NIC address of its kind looks like.
 */
export abstract class NativeEngineBase extends EngineBase {
  readonly kind: string;
  readonly address: NetAddr;
  readonly nics: number;
  /** The provider behind NIC 0 (`shm`, `tcp;ofi_rxm`, `efa`, `verbs`, `rc-model`). */
  readonly provider: string;

  /** @internal */
  protected readonly native: NativeEngine;
  protected readonly backendName: string;
  private readonly codeNames: readonly string[];
  protected readonly providers: Array<{
    provider: string;
    path: 'host' | 'direct' | 'staged';
    device?: string;
  }>;
  private readonly inflight = new OpSlots();
  private readonly regs = new Map<number, PendingReg>();
  /** Deregistrations the worker has not yet confirmed: settled by its reply, or by close(). */
  private readonly deregs = new Map<number, () => void>();
  private readonly peerIds = new Map<string, number>();
  private readonly headerBytes: Uint8Array;
  private readonly recvPools: RecvPool[] = [];
  private poolCursor = 0;
  private readonly unexpected: Uint8Array[] = [];
  private readonly watches = new Map<
    number,
    { cb: UvmWatcherCallback; closed: boolean; word: BigUint64Array; seenAt: bigint }
  >();
  private readonly watcherMemory: NativeEngineTuning['watcherMemory'];
  private readonly watcherIds = new WeakMap<UvmWatcher, number>();
  private nextRegion = 1;
  private nextPeer = 1;
  private nextWatch = 1;
  private finalStats: Float64Array | undefined;
  private readonly opTimeoutMs: number;
  /** When each in-flight op was posted, for the watchdog. */
  private watchdog: Timer | undefined;
  private lastBeat = -1;
  private lastBeatAt = 0;
  private abandoned = false;
  /** Message counters kept here: the native ones include the sender header. */
  private readonly msgStats = { bytesSent: 0, sendOps: 0, bytesReceived: 0, recvOps: 0 };
  private readonly sendBytes = new Map<number, number>();
  /** The frame header of engine control messages: the address length's top bit set. */
  private readonly controlHeader: Uint8Array;
  private readonly gpu: GpuMemoryOps | undefined;
  private readonly strictGpu: boolean;
  private readonly stager: Stager;
  private readonly lane: SameHostLane;
  /** Remote host regions this engine allocates live in shared-memory objects (the lane's host half). */
  private readonly sharedHostRegions: boolean;
  /** Their names, by native region id, unlinked when the region is unregistered or the engine closes. */
  private readonly sharedNames = new Map<number, string>();
  private sharedAllocFailures = 0;
  /** Operations settled with work still posted, until the worker says the provider let go. */
  private readonly held = new Map<number, PendingOp>();
  /** Operations whose connection error waits for a probe of their peer (see `settleLost`). */
  private readonly awaitingProbe = new Map<PendingOp, TrellisError>();
  /** Staged regions by native id, and (remote ones) by NIC-0 rkey for incoming landings. */
  private readonly staged = new Map<number, StagedMemory>();
  private readonly stagedByRkey = new Map<bigint, Region>();

  protected constructor(init: NativeEngineInit) {
    if (init.optionKeys) checkOptionKeys(init.backendName, init.tuning, init.optionKeys);
    checkTuning(init.tuning);
    const limits = { maxMessageBytes: 64 * 1024, ...checkLimits(init.tuning.limits) };
    super(limits);
    this.backendName = init.backendName;
    this.codeNames = init.addon.codeNames;
    const options = {
      ...init.nativeOptions,
      ...nativeTuning(init.tuning),
      recvBytes: limits.maxMessageBytes + MSG_HEADER,
    };
    // An addon built from an older engine kit (a stale build/Release, or $TRELLIS_<NAME>_ADDON
    // naming an old binary) lacks calls this one makes on every write: refuse it by name.
    const proto = init.addon.NativeEngine.prototype as unknown as Record<string, unknown>;
    const missing = ['bindScratch', 'bindEvents', 'writeBound', 'endPoll', 'armImm', 'shareImm'].filter(
      (m) => typeof proto[m] !== 'function',
    );
    if (missing.length)
      throw new TrellisError(
        'UNSUPPORTED',
        `createEngine: the native addon of ${init.backendName} predates this @trellis/core (it lacks ${missing.join(', ')}); rebuild it (pnpm run build:native) or install matching versions of the packages`,
      );
    try {
      this.native = new init.addon.NativeEngine(options, (nOps, nImms, e) => this.onEvents(nOps, nImms, e));
      this.native.bindEvents(this.eventScratch);
      this.native.bindImmTotals(this.immTotals);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      // The options' fault, as the native side found it (it says so by a prefix): no hint about
      // what this host lacks.
      if (why.includes('INVALID_ARGUMENT: '))
        throw new TrellisError('INVALID_ARGUMENT', `createEngine: ${why.replace('INVALID_ARGUMENT: ', '')}`, {
          cause: e,
        });
      throw new TrellisError('UNSUPPORTED', `createEngine: ${why}${init.unsupportedHint ?? ''}`, {
        cause: e,
      });
    }
    // Arrivals ring the event loop at once only where a wait needs them (see arrivalBatchUs; with
    // 0 every batch rings, and needs are not worth telling). Busy polling goes on while one waits,
    // and while it does the worker is not told: the loop's polls take every arrival, rung for or
    // not, and the needs are told when it stops (tellNeeds).
    this.tellsNeeds = init.tuning.arrivalBatchUs !== 0;
    this.busyPollMs = (init.tuning.busyPollUs ?? defaultBusyPollUs()) / 1000;
    this.counters.onNeed((imm, need) => {
      if (need > 0) {
        // A new wait, or one still short after arrivals: only a new one starts the window.
        const fresh = !this.immNeeds.has(imm);
        this.immNeeds.set(imm, need);
        if (fresh) this.kickBusyPoll();
      } else if (this.immNeeds.delete(imm)) this.needMet = true;
      if (!this.busyPolling) this.tellNeed(imm, need);
    });
    this.opTimeoutMs = init.tuning.opTimeoutMs ?? 30_000;
    this.watcherMemory = init.tuning.watcherMemory;
    this.providers = this.native.providers();
    this.provider = this.providers[0]!.provider;
    this.nics = init.nics;
    this.kind = init.kindOf(this.providers);
    // A fresh generation per engine: a restarted process is a new peer.
    const gen = crypto.getRandomValues(new Uint32Array(1))[0]!;
    this.address = new NetAddr(this.kind, gen, this.native.addresses());
    const ab = this.address.toBytes();
    this.headerBytes = new Uint8Array(2 + ab.length);
    new DataView(this.headerBytes.buffer).setUint16(0, ab.length, true);
    this.headerBytes.set(ab, 2);
    this.controlHeader = this.headerBytes.slice();
    this.controlHeader[1]! |= 0x80;
    this.gpu = init.tuning.gpu;
    this.strictGpu = init.tuning.strictGpu === true;
    if (init.tuning.sameHostLane !== undefined && typeof init.tuning.sameHostLane !== 'boolean')
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `createEngine: sameHostLane must be a boolean, got ${JSON.stringify(init.tuning.sameHostLane)}`,
      );
    this.stager = new Stager({
      gpu: this.gpu,
      opTimeoutMs: this.opTimeoutMs,
      maxMessageBytes: limits.maxMessageBytes,
      timers: this.timers,
      internalOp: (site: CallSite, peer: NetAddr | undefined) => this.internalOp(site, peer),
      postPlan: (plan: Plan, op: PendingOp) => this.postPlan(plan, op),
      sendControl: (peer: NetAddr, bytes: Uint8Array, op: PendingOp) =>
        this.sendFramed(peer, bytes, op, true),
      cancelNative: (op: PendingOp, reason: TrellisError) => this.cancelOp(op, reason),
      arrive: (imm: number, count: number) => this.counters.arrive(imm, count),
      lanesTo: (peer: NetAddr) => this.lanesTo(peer),
      stagedRegion: (rkey: bigint) => this.stagedByRkey.get(rkey),
      stagedMemory: (r: Region) => this.staged.get(r.key as number),
    });
    this.lane = new SameHostLane({
      gpu: init.tuning.sameHostLane === false ? undefined : this.gpu,
      hostId: hostBootId(),
      watchSignal: (signal) => {
        const id = this.nextWatch++;
        this.native.watch(id, new Uint8Array(signal.word.buffer, signal.word.byteOffset, 8), true);
        return id;
      },
      armOnSignal: (plan, op, watch, at) => this.postPlan(plan, op, { watch, at, hold: true }),
      release: (op, reason) =>
        this.native.cancel(op.id, reason.code === 'TIMEOUT' ? 'TIMEOUT' : 'ABORTED', true),
      host:
        init.tuning.sameHostLane === false
          ? undefined
          : {
              map: (name) => this.native.mapShared(name),
              owner: (id) => SHARED_OWNER[this.native.sharedOwner(id)] ?? 'unregistered',
              unmap: (id) => this.native.unmapShared(id),
              copy: (queue, triples, signal, value) =>
                this.native.hostCopy(
                  queue,
                  triples,
                  new Uint8Array(signal.word.buffer, signal.word.byteOffset, 8),
                  value,
                ),
              addressOf: (view) => this.native.addressOf(view),
            },
    });
    this.sharedHostRegions = init.tuning.sameHostLane !== false && hostBootId() !== undefined;
    if (init.tuning.heartbeatMs !== undefined)
      this.startHeartbeat(init.tuning.heartbeatMs, init.tuning.heartbeatIdle);
    this.configureFailover(init.tuning.failover);
  }

  /**
   * Why `nic` (one NIC's bytes of a peer's NetAddr of this engine's kind) cannot be a peer address
   * of this backend, as a phrase (`is not a libfabric endpoint address`), or `undefined` if it can.
   */
  protected abstract checkNicAddress(nic: Uint8Array): string | undefined;

  // -- events from the worker (one call per batch) ------------------------------------------------

  private onEvents(nOps: number, nImms: number, e: NativeEvents | undefined): void {
    if (this.polling) this.eventCounts.polled++;
    else this.eventCounts.rung++;
    if (e?.regs) this.onRegs(e.regs);
    const s = this.eventScratch;
    const opsEnd = nOps * COMPLETION.stride;
    if (nImms) this.onArrivals(s, opsEnd, opsEnd + nImms * ARRIVAL.stride);
    if (e?.imms) this.onArrivals(e.imms, 0, e.imms.length);
    if (nOps) this.onOps(s, opsEnd, e?.messages);
    if (e) this.onExtraEvents(e);
    // A batch of nothing but arrivals no wait was completed by (a stream into a large wait) does
    // not extend busy polling: the wait is told to the worker once polling stops, which rings when
    // the last of them is in.
    if (nOps || e || this.needMet) this.kickBusyPoll();
    this.needMet = false;
  }

  /**
   * Completions and arrivals come in this scratch, bound to the addon once, so a batch allocates
   * nothing: 4096 completion records, more than a worker turn reports (a larger batch comes in
   * arrays of its own).
   */
  private readonly eventScratch = new Uint32Array(4096 * COMPLETION.stride);

  /** The words the worker keeps at shared values' NIC arrivals (see ImmCounterTable.share). */
  private readonly immTotals = new Uint32Array(SHARED_IMMS * SHARED_IMM_STRIDE);
  /** Values shared so far, by word. */
  private readonly sharedImms = new Map<number, number>();

  /**
   * The counter of `imm`. The first 64 values asked for are also counted in a word
   * the worker writes, so that `take`, `value` and `total` see an arrival with one load — before
   * any batch reaches JavaScript (no poll, no event-loop turn).
   */
  override immCounter(imm: number): ImmCounter {
    const c = super.immCounter(imm);
    if (!this.closed && !this.sharedImms.has(imm) && this.sharedImms.size < SHARED_IMMS) {
      const slot = this.sharedImms.size * SHARED_IMM_STRIDE;
      this.sharedImms.set(imm, slot);
      // The word starts at what JS counted, before the worker is told: the worker's first store
      // (never less) must not be overwritten by this one.
      this.counters.share(imm, this.immTotals, slot);
      this.native.shareImm(imm, slot);
    }
    return c;
  }

  /** A batch's completions when they did not fit the scratch, and everything but arrivals and registrations. */
  private onExtraEvents(e: NativeEvents): void {
    if (e.ops) this.onOps(e.ops, e.ops.length, e.messages);
    if (e.released)
      for (const id of e.released) {
        const op = this.held.get(id);
        this.held.delete(id);
        op?.letGo();
      }
    if (e.recvs) for (const m of e.recvs) this.deliver(m);
    if (e.watches) this.onWatches(e.watches);
  }

  private onRegs(regs: NonNullable<NativeEvents['regs']>): void {
    for (const r of regs) {
      if (r.dereg) {
        const done = this.deregs.get(r.region);
        this.deregs.delete(r.region);
        done?.();
        continue;
      }
      const p = this.regs.get(r.region);
      if (!p) continue;
      this.regs.delete(r.region);
      if (r.code === 'OK') p.resolve(r.keys);
      else
        p.reject(
          new TrellisError(r.code as TrellisErrorCode, `registerMemory: ${r.message}`, {
            op: 'registerMemory',
          }),
        );
    }
  }

  /** The arrival records in `imms[from, end)`. */
  private onArrivals(imms: Uint32Array, from: number, end: number): void {
    for (let i = from; i < end; i += ARRIVAL.stride)
      this.counters.arriveNic(imms[i + ARRIVAL.imm]!, imms[i + ARRIVAL.count]!);
  }

  /** The completion records in `ops[0, end)`. */
  private onOps(ops: Uint32Array, end: number, failures: NativeEvents['messages']): void {
    let messages: Map<number, string> | undefined;
    if (failures?.length) {
      messages = new Map();
      for (let i = 0; i < failures.length; i += 2)
        messages.set(failures[i] as number, failures[i + 1] as string);
    }
    for (let i = 0; i < end; i += COMPLETION.stride) {
      const id = ops[i + COMPLETION.id]!;
      const op = this.inflight.get(id);
      if (!op) continue;
      this.inflight.delete(id);
      if (this.triggerIds.size) this.triggerIds.delete(id);
      const word = ops[i + COMPLETION.code]!;
      const code = this.codeNames[word & ~POSTED_FLAG] ?? 'INTERNAL';
      if (word & POSTED_FLAG) {
        // Its deadline came first: it settles now; what it posted may still read its source, so
        // its regions and its place in the peer's in-flight count stay until `released`.
        op.hold();
        this.held.set(id, op);
      }
      const sent = this.sendBytes.size ? this.sendBytes.get(id) : undefined;
      if (sent !== undefined) {
        this.sendBytes.delete(id);
        if (code === 'OK') {
          this.msgStats.sendOps++;
          this.msgStats.bytesSent += sent;
        }
      }
      if (code === 'OK') {
        // Evidence of life for a probe running now (see EngineBase.probePeer).
        this.heardFrom(op);
        op.complete();
        continue;
      }
      if (op.cancelReason && (code === 'ABORTED' || code === 'TIMEOUT')) {
        const note = op.held ? messages?.get(i / COMPLETION.stride) : undefined;
        op.fail(note ? new TrellisError('TIMEOUT', `${op.cancelReason.message}; ${note}`) : op.cancelReason);
        continue;
      }
      const message = messages?.get(i / COMPLETION.stride) ?? '';
      const errno = ops[i + COMPLETION.errno]!;
      const nic = ops[i + COMPLETION.nic]! - 1;
      const text =
        message || (code === 'CLOSED' ? 'the engine was closed with this operation pending' : code);
      const details = {
        errno: errno || undefined,
        providerMessage: message || undefined,
        nic: nic >= 0 ? nic : undefined,
      };
      const err = new TrellisError(code as TrellisErrorCode, `${op.callsite.op}: ${text}`, details);
      // A connection error says nothing yet about the peer: a probe tells a live peer (the
      // connection was torn down under it, e.g. after a refused key) from a dead one.
      const peers =
        (code === 'PEER_LOST' || code === 'CONNECTION_RESET') && !op.liveness ? this.peersOf(op) : [];
      if (peers.length && code === 'PEER_LOST')
        this.settleLost(
          op,
          peers,
          err,
          () =>
            new TrellisError(
              'CONNECTION_RESET',
              `${op.callsite.op}: cut off with a connection that was reset; the peer answered a probe afterwards, so it is not lost; retry with a short backoff (operations to it fail this way until the connection is rebuilt) — ${text}`,
              details,
            ),
        );
      else if (peers.length)
        this.settleLost(
          op,
          peers,
          new TrellisError(
            'PEER_LOST',
            `${op.callsite.op}: cut off with a broken connection, and the peer did not answer a probe afterwards — ${lostText(text)}`,
            details,
          ),
          () => err,
        );
      else op.fail(err);
    }
  }

  private onWatches(changes: NonNullable<NativeEvents['watches']>): void {
    for (const [id, value, prev, seen] of changes) {
      const w = this.watches.get(id);
      if (!w || w.closed) continue;
      w.seenAt = seen;
      callUser(() => w.cb(value, prev));
    }
  }

  // -- regions ----------------------------------------------------------------------------------

  protected async registerRegion(src: MemorySource, remote: boolean, op: string): Promise<RegionAlloc> {
    let view: Uint8Array;
    let cuda: CudaMemory['cuda'] | undefined;
    let shared: MrIpc | undefined;
    let sharedName: string | undefined;
    if (typeof src === 'number') {
      // A remote region the engine allocates lives in a shared-memory object, so writers on this
      // host copy into it directly (the same-host lane); where /dev/shm refuses, plain memory.
      const a = remote && this.sharedHostRegions ? this.tryAllocShared(src) : undefined;
      if (a) {
        view = new Uint8Array(a.buffer);
        sharedName = a.name;
        shared = {
          host: hostBootId()!,
          device: HOST_MAPPING_DEVICE,
          handle: sharedHandle(a.name),
          offset: 0n,
        };
      } else
        try {
          view = new Uint8Array(this.native.alloc(src));
        } catch (e) {
          throw new TrellisError(
            'RESOURCE_EXHAUSTED',
            `${op}: could not allocate ${src} bytes of page-aligned host memory (${e instanceof Error ? e.message : String(e)}); register less, or pass memory you allocated`,
            { op, cause: e },
          );
        }
    } else if (src instanceof ArrayBuffer || src instanceof SharedArrayBuffer) view = new Uint8Array(src);
    else if (ArrayBuffer.isView(src)) view = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    else {
      cuda = (src as CudaMemory).cuda;
      this.checkCuda(cuda, op);
      if (this.direct) return this.registerDirect(cuda, remote);
      view = this.stagingMirror(cuda, op);
    }
    const id = this.nextRegion++;
    if (sharedName !== undefined) {
      this.sharedNames.set(id, sharedName);
      unlinkOnExit(this.unlinkAll);
    }
    let keys: BigUint64Array;
    try {
      keys = await new Promise<BigUint64Array>((resolve, reject) => {
        this.regs.set(id, { resolve, reject });
        this.native.register(id, view, remote);
      });
    } catch (e) {
      this.unlinkShared(id);
      throw e;
    }
    const nics = remote ? nicKeysOf(keys, this.nics) : [];
    const desc = new MrDesc(
      this.address,
      keys.length ? keys[REG_KEY.addr]! : 0n,
      view.length,
      nics,
      cuda !== undefined,
      undefined,
      cuda && remote ? this.ipcOf(cuda) : shared,
    );
    if (!cuda) return { desc, bytes: view, length: view.length, key: id };
    this.staged.set(id, {
      device: cuda.device,
      ptr: cuda.ptr,
      mirror: view.buffer as ArrayBuffer,
      length: view.length,
    });
    return { desc, bytes: undefined, length: view.length, key: id, path: 'staged' };
  }

  /** Why this engine's NICs do not register GPU memory directly (for error messages). Backends say more. */
  protected noDirectReason(): string {
    return 'its NICs do not take GPU memory (no GPUDirect registration)';
  }

  /** Every NIC registers GPU memory directly (libfabric with FI_HMEM and a CUDA driver). */
  private get direct(): boolean {
    return this.providers.every((p) => p.path === 'direct');
  }

  /**
   * A CUDA region registered with the NICs themselves (libfabric `fi_mr_regattr` with
   * `FI_HMEM_CUDA`; a dma-buf on efa). The domains hold every immediate that lands in GPU memory
   * until its bytes are visible there, so counters mean what they mean for host memory.
   */
  private async registerDirect(c: CudaMemory['cuda'], remote: boolean): Promise<RegionAlloc> {
    const id = this.nextRegion++;
    const keys = await new Promise<BigUint64Array>((resolve, reject) => {
      this.regs.set(id, { resolve, reject });
      this.native.register(id, c.ptr, remote, c.length, c.device);
    });
    const nics = remote ? nicKeysOf(keys, this.nics) : [];
    const desc = new MrDesc(
      this.address,
      c.ptr,
      c.length,
      nics,
      false,
      undefined,
      remote ? this.ipcOf(c) : undefined,
    );
    return { desc, bytes: undefined, length: c.length, key: id, path: 'direct' };
  }

  /**
   * Check a CUDA region against its allocation before anything registers it (when the GPU
   * operations can tell): device memory, on the device named, wholly inside one allocation.
   */
  private checkCuda(c: CudaMemory['cuda'], op: string): void {
    if (!this.gpu?.pointerRange) return;
    let r: { device: number; base: bigint; size: number };
    try {
      r = this.gpu.pointerRange(c.ptr);
    } catch (e) {
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `${op}: cuda.ptr 0x${c.ptr.toString(16)} is not CUDA device memory (${e instanceof Error ? e.message : String(e)}); pass a pointer from cudaMalloc or a CUDA IPC import`,
        { op },
      );
    }
    if (r.device !== c.device)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `${op}: cuda.ptr 0x${c.ptr.toString(16)} is memory of CUDA device ${r.device}, not of cuda.device ${c.device}`,
        { op },
      );
    const left = r.base + BigInt(r.size) - c.ptr;
    if (BigInt(c.length) > left)
      throw new TrellisError(
        'OUT_OF_RANGE',
        `${op}: cuda.length ${c.length} runs past the allocation that holds cuda.ptr (${left} bytes from the pointer to its end)`,
        { op },
      );
  }

  /** The same-host lane of a remote CUDA region: its allocation's IPC handle and this host's id. */
  private ipcOf(c: CudaMemory['cuda']): MrIpc | undefined {
    const host = hostBootId();
    if (!host || !this.gpu?.pointerRange || !this.gpu.ipcExport) return undefined;
    try {
      const r = this.gpu.pointerRange(c.ptr);
      const handle = this.gpu.ipcExport(c.device, r.base);
      return { host, device: c.device, handle, offset: c.ptr - r.base };
    } catch {
      // Memory CUDA cannot share (e.g. from a pool without IPC): writers reach it through the NICs.
      return undefined;
    }
  }

  /**
   * The pinned host mirror of a CUDA region whose NICs cannot reach GPU memory (a libfabric
   * without FI_HMEM, such as Debian's 1.17; no CUDA driver; an RDMA model): the staged path.
   */
  private stagingMirror(c: CudaMemory['cuda'], op: string): Uint8Array {
    const why = `${this.backendName} (provider ${this.provider}) cannot register GPU memory directly here: ${this.noDirectReason()}`;
    if (this.strictGpu)
      throw new TrellisError('UNSUPPORTED', `${op}: ${why}, and strictGpu refuses the staged path`, { op });
    if (!this.gpu)
      throw new TrellisError(
        'UNSUPPORTED',
        `${op}: CUDA memory needs GPU memory operations: pass gpu: cudaMemoryOps() (from @trellis/cuda) to createEngine; ${why}, so the engine stages through pinned host memory`,
        { op },
      );
    // The mirror is one Uint8Array for the NICs: the runtime's largest typed array bounds it.
    if (c.length > MAX_STAGED_BYTES)
      throw new TrellisError(
        'OUT_OF_RANGE',
        `${op}: a staged CUDA region is at most ${MAX_STAGED_BYTES} bytes on Node ${process.versions.node} (its largest typed array, which the region's pinned host mirror must be); register ${c.length} bytes as several regions`,
        { op },
      );
    let mirror: ArrayBuffer;
    try {
      mirror = this.gpu.allocHost(c.length);
    } catch (e) {
      throw new TrellisError(
        'RESOURCE_EXHAUSTED',
        `${op}: could not allocate the ${c.length}-byte pinned host mirror of a staged CUDA region: ${e instanceof Error ? e.message : String(e)}`,
        { op, cause: e },
      );
    }
    if (!(mirror instanceof ArrayBuffer) || mirror.byteLength !== c.length)
      throw new TrellisError(
        'INTERNAL',
        `${op}: gpu.allocHost(${c.length}) did not return an ArrayBuffer of that size`,
        { op },
      );
    return new Uint8Array(mirror);
  }

  override async registerMemory(src: MemorySource, opts?: RegisterOptions): Promise<MrHandle> {
    const h = await super.registerMemory(src, opts);
    if (h.path === 'staged' && h.desc.remote) this.stagedByRkey.set(h.desc.nics[0]!.rkey, h as Region);
    return h;
  }

  /** Shared memory for a remote host region, or undefined where /dev/shm refuses (plain memory then). */
  private tryAllocShared(length: number): { buffer: ArrayBuffer; name: string } | undefined {
    try {
      return this.native.allocShared(length);
    } catch {
      this.sharedAllocFailures++;
      return undefined;
    }
  }

  /** Every shared host region's name (closing, or the process exiting). */
  private readonly unlinkAll = (): void => {
    for (const id of [...this.sharedNames.keys()]) this.unlinkShared(id);
  };

  /** A shared host region's name is unlinked when it is unregistered: writers that mapped it stop. */
  private unlinkShared(id: number): void {
    const name = this.sharedNames.get(id);
    if (name === undefined) return;
    this.sharedNames.delete(id);
    this.native.unlinkShared(name);
  }

  protected async deregisterRegion(key: unknown): Promise<void> {
    const id = key as number;
    this.unlinkShared(id);
    if (this.staged.delete(id)) {
      for (const [k, r] of this.stagedByRkey) if (r.key === id) this.stagedByRkey.delete(k);
    }
    if (this.closed) return;
    // Resolved when the worker has closed the registration on every NIC (or the engine closes): from
    // then on a remote write through the region's old key fails, so its memory may be reused.
    await new Promise<void>((resolve) => {
      this.deregs.set(id, resolve);
      this.native.deregister(id);
    });
  }

  // -- peers ------------------------------------------------------------------------------------

  protected checkReachable(peer: NetAddr, op: string): void {
    if (closedInProcess.has(peer.toString())) {
      throw new TrellisError('PEER_LOST', `${op}: the peer (an engine of this process) was closed`, {
        op,
        peer: peer.toString(),
      });
    }
    this.peerId(peer, op);
  }

  /** The native id of a peer, adding it on first use (the worker resolves it in order). */
  private peerId(peer: NetAddr, op: string): number {
    const key = peer.toString();
    let id = this.peerIds.get(key);
    if (id !== undefined) return id;
    for (const [i, nic] of peer.nics.entries()) {
      const why = this.checkNicAddress(nic);
      if (why) throw new TrellisError('UNKNOWN_PEER', `${op}: NIC ${i} of ${key} ${why}`, { op, peer: key });
    }
    id = this.nextPeer++;
    this.peerIds.set(key, id);
    this.native.addPeer(id, peer.nics);
    return id;
  }

  // -- posting ----------------------------------------------------------------------------------

  // Scratch arrays for the write command: the addon copies them synchronously, so one pair serves
  // every call (no per-operation allocation). Grown for requests with many runs.
  private boundRuns: Float64Array | undefined;
  private boundKeys: BigUint64Array | undefined;
  private readonly writeScratch: WriteScratch = {
    runs: new Float64Array(RUN.stride * 8),
    keys: new BigUint64Array(NIC_KEYS.stride * 8),
  };
  private readonly writePeers: WritePeers = {
    peerId: (peer, op) => this.peerId(peer, op),
    lanesTo: (peer) => this.lanesTo(peer),
  };

  protected post(plan: Plan, op: PendingOp): void {
    this.postPlan(plan, op);
  }

  /** Writes to a peer on this host take the lane (whatever failover would do with NICs); staged GPU regions their copies. */
  protected override gpuPath(plan: Plan): GpuPath | undefined {
    // With failover, writes go through the NICs, where it re-posts them: the lane's immediates
    // are posted by the worker on one NIC, outside failover.
    if (!this.failover?.handles(plan) && this.lane.takes(plan, true)) return 'lane';
    return super.gpuPath(plan);
  }

  protected override engineDeadlineMs(): number | undefined {
    return this.opTimeoutMs > 0 ? this.opTimeoutMs : undefined;
  }

  protected override postGpu(path: GpuPath, plan: Plan, op: PendingOp): void {
    if (path === 'lane') this.lane.start(plan, op);
    else this.stager.start(plan as SinglePlan | PagedPlan | ScatterPlan, op);
  }

  /** The native watch reading each reacted-to immediate's arrivals, by immediate value. */
  private readonly immWatches = new Map<number, number>();

  protected override checkReaction(imm: number, op: string): void {
    for (const p of this.ports.values())
      if (p.counted.includes(imm))
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `${op}: immediate ${imm} is counted by an open port, so its arrivals never reach the total a reaction reads; react to another immediate or close the port first`,
          { op },
        );
  }

  protected postOnImm(plan: Plan, op: PendingOp, imm: number, total: number): void {
    let watch = this.immWatches.get(imm);
    if (watch === undefined) {
      watch = this.nextWatch++;
      this.native.watchImm(watch, imm);
      this.immWatches.set(imm, watch);
    }
    this.postPlan(plan, op, { watch, at: BigInt(total) });
  }

  protected override controlArrived(imm: number, count: number): void {
    // Every one, reacted to yet or not: the native total must equal immCounter(imm).total, which
    // a reaction armed later reads its threshold from.
    if (!this.closed) this.native.countImm(imm, count);
  }

  poll(): boolean {
    if (this.closed) return false;
    const got = this.pollNative();
    // A loop of synchronous polls runs no event-loop turn: the engine's own timers (deadlines,
    // wait timeouts) are looked at every 64th poll instead — after what this poll delivered, so a
    // completion already in wins over a deadline, as in pollUntil.
    if ((++this.polls & 63) === 0 && !this.closed && performance.now() >= this.timers.next)
      this.timers.runDue();
    return got;
  }

  /** poll() calls so far (mod 2^31). */
  private polls = 0;

  /**
   * native.poll(), its deliveries counted as polled; then the shared words of the values a wait
   * needs (their arrivals are not marked ready for a poll: see ImmCounterTable.share). Whether a
   * batch was delivered or a word counted anything.
   */
  private pollNative(): boolean {
    this.polling = true;
    try {
      let got = this.native.poll();
      if (this.immNeeds.size) {
        let synced = false;
        for (const imm of this.immNeeds.keys()) if (this.counters.sync(imm)) synced = true;
        if (synced) {
          got = true;
          // A wait met from a word: as for a batch that meets one (onEvents).
          if (this.needMet) {
            this.needMet = false;
            this.kickBusyPoll();
          }
        }
      }
      return got;
    } finally {
      this.polling = false;
    }
  }

  /**
   * Polling stopped: the worker rings again for what comes next, and a batch it held back its ring
   * for while JS polled is taken now (else the worker's next flush rings for it).
   */
  private endPoll(): void {
    // A poll stamps the time (the worker holds its ring while JS polls): one that finds nothing
    // ends polling again, or the worker would hold what comes next for another 100 µs.
    while (this.native.endPoll())
      if (!this.pollNative()) {
        this.native.endPoll();
        return;
      }
  }

  // -- busy polling (busyPollUs) ------------------------------------------------------------------

  /** busyPollUs in ms (0: off). */
  private readonly busyPollMs: number;
  /** Immediate values a `wait` is pending on, and how many more arrivals it needs (from the counters). */
  private readonly immNeeds = new Map<number, number>();
  /** Immediate values the worker was told a need (> 0) of and not told 0 since. */
  private readonly needsTold = new Set<number>();
  /** The worker rings on demand for arrivals (arrivalBatchUs is not 0): needs are worth telling. */
  private readonly tellsNeeds: boolean;

  /** Tell the worker a need (see EventQueue::arm), where that is worth doing. */
  private tellNeed(imm: number, need: number): void {
    if (!this.tellsNeeds || this.closed) return;
    if (need > 0) this.needsTold.add(imm);
    else if (!this.needsTold.delete(imm)) return;
    // The worker counts the records still in its batch towards the need; those of arrivals the
    // shared word already brought were counted here: add them back, or it rings early.
    this.native.armImm(imm, need > 0 ? need + this.counters.unreported(imm) : 0);
  }

  /** Busy polling stopped: tell the worker the needs as they are now. */
  private tellNeeds(): void {
    for (const imm of this.needsTold) if (!this.immNeeds.has(imm)) this.tellNeed(imm, 0);
    for (const [imm, need] of this.immNeeds) this.tellNeed(imm, need);
  }

  /** A busy-poll turn is scheduled. */
  private busyPolling = false;
  /** Something happened since the last turn: the window runs from now again. */
  private busyKicked = false;
  private busyUntil = 0;
  /** Inside native.poll(): deliveries are counted as polled, not rung. */
  private polling = false;
  /** A wait's need went to 0 (met, or the waiter left) in the batch being delivered. */
  private needMet = false;
  private readonly eventCounts = { rung: 0, polled: 0, busyPolls: 0 };

  /** An event or a submission: (re)start the busy-poll window, if anything is awaited. */
  private kickBusyPoll(): void {
    if (this.busyPollMs === 0) return;
    this.busyKicked = true;
    if (this.busyPolling || this.closed || !this.awaited()) return;
    this.busyPolling = true;
    setImmediate(this.busyPollTurn);
  }

  /**
   * Something is awaited: operations in flight (but for triggered ones: a reaction or a watch may
   * be armed long before it fires), or a wait on arrivals.
   */
  private awaited(): boolean {
    return this.inflight.size > this.triggerIds.size || this.immNeeds.size > 0;
  }

  /** Ids of triggered operations (submitOnImm, submitOnWatch) in the table. */
  private readonly triggerIds = new Set<number>();

  private readonly busyPollTurn = (): void => {
    let again = false;
    try {
      again = this.busyPollStep();
    } finally {
      // Also where a delivery threw: polling stops (a later event starts it again), and the worker
      // is told the needs, so no wait is left without its ring.
      if (!again) {
        this.busyPolling = false;
        if (!this.closed) {
          this.tellNeeds();
          if (this.pollers === 0) this.endPoll();
        }
      }
    }
  };

  /** One busy-poll turn; true if another is scheduled. */
  private busyPollStep(): boolean {
    if (this.closed) return false;
    // Whether anything is awaited is asked as a turn starts: a batch the last turn delivered has
    // had its promise reactions run by now (a wait that follows an operation's completion is armed).
    if (this.awaited()) {
      this.eventCounts.busyPolls++;
      let now = performance.now();
      if (this.busyKicked) {
        this.busyKicked = false;
        this.busyUntil = now + this.busyPollMs;
      }
      // pollUntil, where one runs, polls already (and ends polling itself). Else poll for up to
      // BUSY_TURN_MS within this turn — a poll takes a fraction of a µs, a loop turn a few — and
      // end the turn at the first batch, so that its promise reactions run at once.
      if (this.pollers === 0) {
        const end = Math.min(this.busyUntil, now + BUSY_TURN_MS);
        while (!this.pollNative()) {
          now = performance.now();
          if (now >= end) break;
        }
      }
      // A batch delivered (kicked again) or time left: another turn.
      if (this.busyKicked || now < this.busyUntil) {
        setImmediate(this.busyPollTurn);
        return true;
      }
    }
    return false;
  }

  async pollUntil(done: () => boolean, opts: WaitOptions = {}): Promise<void> {
    const op = 'pollUntil';
    if (typeof done !== 'function')
      throw new TrellisError('INVALID_ARGUMENT', `${op}: done must be a function returning a boolean`, {
        op,
      });
    const own = opts.timeoutMs;
    if (own !== undefined && (typeof own !== 'number' || !(own >= 0) || !Number.isFinite(own)))
      throw new TrellisError('INVALID_ARGUMENT', `${op}: timeoutMs must be a finite number >= 0`, { op });
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal))
      throw new TrellisError('INVALID_ARGUMENT', `${op}: signal must be an AbortSignal`, { op });
    // Without a timeoutMs of its own, the engine's operation timeout — none where that is 0.
    const timeoutMs = own ?? (this.opTimeoutMs > 0 ? this.opTimeoutMs : Number.POSITIVE_INFINITY);
    const deadline = performance.now() + timeoutMs;
    this.pollers++;
    try {
      for (let spins = 1; ; spins++) {
        if (done()) return;
        if (this.closed) throw new TrellisError('CLOSED', `${op}: the engine was closed`, { op });
        if (opts.signal?.aborted) throw new TrellisError('ABORTED', `${op}: aborted`, { op });
        // Reactions of what a poll settled run at this await (a microtask: no event-loop turn).
        const got = this.pollNative();
        if ((spins & 63) === 0) {
          // No event-loop turn runs while this loop spins, so no Node timer fires: the engine's
          // own (operations' deadlines, waits' timeouts, probes, heartbeats, the watchdog) fire here.
          const now = performance.now();
          if (now >= this.timers.next) this.timers.runDue(now);
          if (!got && now > deadline)
            throw new TrellisError('TIMEOUT', `${op}: done() still false after ${timeoutMs} ms`, { op });
        }
        await undefined;
      }
    } finally {
      // What lands from now on (an operation's completion awaited after the loop) is rung for at
      // its next loop turn, not once the worker has seen no poll for 100 µs — unless another
      // pollUntil still polls.
      if (--this.pollers === 0 && !this.closed) this.endPoll();
    }
  }

  /** pollUntil loops running now (they may interleave at their awaits). */
  private pollers = 0;

  protected postOnWatch(plan: Plan, op: PendingOp, watcher: UvmWatcher, value: bigint): void {
    const watch = this.watcherIds.get(watcher);
    if (watch === undefined)
      throw new TrellisError('INVALID_ARGUMENT', 'submitOnWatch: the watcher is not one of this engine');
    this.postPlan(plan, op, { watch, at: value });
  }

  protected override allocBytes(length: number): Uint8Array {
    return new Uint8Array(this.native.alloc(length));
  }

  /** A batch's plain writes (paged ones, which carry their page lists, go one by one): one call. */
  protected override postMany(plans: readonly Plan[], ops: readonly PendingOp[]): void {
    const b = this.batchScratch;
    let nb = 0;
    let nr = 0;
    for (let i = 0; i < plans.length; i++) {
      const plan = plans[i]!;
      const op = ops[i]!;
      if (plan.op === 'paged') {
        this.guard(op, () => this.postPlan(plan, op));
        continue;
      }
      // As guard(), without a closure per write, and packed straight into the batch's arrays
      // (no views and no record per write): this loop is most of submitBatch's cost per write.
      if (op.cancelReason) {
        op.fail(op.cancelReason);
        continue;
      }
      // Its runs go straight after the batch's earlier writes' (packRuns grows the arrays).
      let count: number;
      try {
        count = packRuns(plan, b, this.writePeers, op.callsite.op, nr);
      } catch (e) {
        this.failUnposted(op, e);
        continue;
      }
      if ((nb + 1) * BATCH_WRITE.stride > b.batch.length)
        b.batch = grow(b.batch, (nb + 1) * BATCH_WRITE.stride);
      const at = nb * BATCH_WRITE.stride;
      const batch = b.batch;
      batch[at + BATCH_WRITE.op] = op.id;
      batch[at + BATCH_WRITE.region] = b.region ?? 0;
      batch[at + BATCH_WRITE.hasImm] = plan.imm !== undefined ? 1 : 0;
      batch[at + BATCH_WRITE.imm] = plan.imm ?? 0;
      batch[at + BATCH_WRITE.runs] = count;
      b.ops[nb] = op;
      nb++;
      nr += count;
      this.track(op);
    }
    if (!nb) return;
    try {
      this.native.writeBatch(
        b.batch.subarray(0, nb * BATCH_WRITE.stride),
        b.runs.subarray(0, nr * RUN.stride),
        b.keys.subarray(0, nr * NIC_KEYS.stride),
      );
    } catch (e) {
      // Nothing of the batch reached the worker: each of its ops fails as its own post would.
      const err = e instanceof TrellisError ? e : new TrellisError('INTERNAL', String(e), { cause: e });
      for (let i = 0; i < nb; i++) {
        const op = b.ops[i]!;
        this.inflight.delete(op.id);
        op.fail(err);
      }
    } finally {
      b.ops.length = 0;
    }
  }

  private readonly batchScratch: WriteScratch & { ops: PendingOp[]; batch: Float64Array } = {
    ops: [],
    batch: new Float64Array(BATCH_WRITE.stride * 64),
    runs: new Float64Array(RUN.stride * 64),
    keys: new BigUint64Array(NIC_KEYS.stride * 64),
  };

  /** Post a plan as work requests (the staged path posts its segments through here), or arm it. */
  private postPlan(plan: Plan, op: PendingOp, trigger?: { watch: number; at: bigint; hold?: boolean }): void {
    const s = this.writeScratch;
    const n = packRuns(plan, s, this.writePeers, op.callsite.op);
    // An armed trigger may wait long for its word: nothing to busy poll for (see awaited()). A
    // same-host lane copy's signal (`hold`) comes within the copy's time: that is awaited.
    if (trigger && !trigger.hold) this.triggerIds.add(op.id);
    this.track(op);
    try {
      this.postTracked(plan, op, s, n, trigger);
    } catch (e) {
      // Nothing reached the worker: the op fails unposted (the caller's guard), and leaves the table.
      this.inflight.delete(op.id);
      this.triggerIds.delete(op.id);
      throw e;
    }
  }

  /** postPlan's crossing, once its runs are packed into `s` and the op is tracked. */
  private postTracked(
    plan: Plan,
    op: PendingOp,
    s: WriteScratch,
    n: number,
    trigger: { watch: number; at: bigint; hold?: boolean } | undefined,
  ): void {
    if (!s.pages && !trigger) {
      // The common case: the runs are already in the scratch the addon reads (bound again when
      // packRuns grew it), so only four numbers cross.
      if (s.runs !== this.boundRuns || s.keys !== this.boundKeys) {
        this.native.bindScratch(s.runs, s.keys);
        this.boundRuns = s.runs;
        this.boundKeys = s.keys;
      }
      this.native.writeBound(op.id, s.region ?? 0, plan.imm ?? -1, n);
      return;
    }
    this.native.write(
      op.id,
      s.region ?? 0,
      plan.imm !== undefined,
      plan.imm ?? 0,
      s.runs.subarray(0, RUN.stride * n),
      s.keys.subarray(0, NIC_KEYS.stride * n),
      s.pages,
      trigger,
    );
  }

  protected postSend(peer: NetAddr, data: Uint8Array, op: PendingOp): void {
    this.sendFramed(peer, data, op, false);
  }

  protected override postControl(peer: NetAddr, lane: number, bytes: Uint8Array, op: PendingOp): void {
    this.sendFramed(peer, bytes, op, true, lane);
  }

  /**
   * Fault injection: tear NIC `nic` down as if it died — its endpoint and completion queue are
   * closed, work still posted on it fails with `NIC_FAILED` (whether it reached the target is
   * unknown, as with a real failure), later work on it fails at once. Irreversible for this engine.
   */
  failNic(nic: number): void {
    if (!Number.isInteger(nic) || nic < 0 || nic >= this.nics)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `failNic: NIC ${String(nic)} does not exist on an engine with ${this.nics} NIC(s)`,
      );
    this.throwIfClosed('failNic');
    this.native.failNic(nic);
    this.failedNics.add(nic);
  }

  /** NICs torn down by {@link failNic}: `stats().nics[i].up` is false for them. */
  private readonly failedNics = new Set<number>();

  /**
   * Frame `data` with this engine's address (marked as a control message or not) and the
   * generation of the engine it is for, and send it. The receiver drops a message for another
   * generation: a process restarted at its predecessor's tcp host:port is reached through the old
   * address, and must not take what was sent to the dead one.
   */
  private sendFramed(peer: NetAddr, data: Uint8Array, op: PendingOp, control: boolean, lane = 0): void {
    const id = this.peerId(peer, op.callsite.op);
    const header = control ? this.controlHeader : this.headerBytes;
    const framed = new Uint8Array(header.length + 4 + data.length);
    framed.set(header, 0);
    new DataView(framed.buffer).setUint32(header.length, peer.generation, true);
    framed.set(data, header.length + 4);
    this.track(op);
    if (!control) this.sendBytes.set(op.id, data.length);
    this.native.send(op.id, id, framed, lane);
  }

  protected override opIdInUse(id: number): boolean {
    return this.inflight.has(id) || this.held.has(id) || this.sendBytes.has(id);
  }

  private track(op: PendingOp): void {
    this.inflight.set(op);
    op.postedAt = Date.now();
    this.kickBusyPoll();
    if (!this.watchdog && this.opTimeoutMs > 0) {
      this.watchdog = this.timers.every(250, () => this.checkWorker());
    }
  }

  /**
   * The watchdog. A healthy worker reports every operation by its deadline (opTimeoutMs). If one
   * is a second past it and the worker has not turned its loop for a second, the worker is stuck
   * inside the provider — shm's fi_writemsg spins forever on a lock that a killed peer process
   * held. Nothing can unstick it: every pending operation fails with PEER_LOST and the engine is
   * abandoned (its thread detached, its memory leaked on purpose). Create a new engine.
   */
  private checkWorker(): void {
    if (this.closed) return;
    const now = Date.now();
    const beat = this.native.heartbeat();
    if (beat !== this.lastBeat) {
      this.lastBeat = beat;
      this.lastBeatAt = now;
      return;
    }
    let overdue = false;
    for (const op of this.inflight.values()) {
      if (now - op.postedAt > this.opTimeoutMs + 1000) {
        overdue = true;
        break;
      }
    }
    if (!overdue || now - this.lastBeatAt < 1000) return;
    this.abandoned = true;
    const err = new TrellisError(
      'PEER_LOST',
      `the engine's worker has been stuck inside provider '${this.providers[0]?.provider}' for ${now - this.lastBeatAt} ms with operations past their deadline (a peer process probably died holding a shared-memory lock); the engine was abandoned — create a new one`,
    );
    for (const op of this.inflight.values()) {
      op.fail(err);
    }
    this.inflight.clear();
    this.triggerIds.clear();
    void this.close();
  }

  /**
   * A provider's connection error (`PEER_LOST`, or `CONNECTION_RESET`: work cut off with a
   * connection torn down earlier) marks the peer lost only if the peer then fails to answer a
   * probe: libfabric's tcp tears a connection down after a refused key as after a death, and a live
   * peer must not be written off for it, nor a dead one retried as if it were live. The operation
   * fails `CONNECTION_RESET` when the peer answers, `PEER_LOST` (and the peer is lost) when it does
   * not. The wait is bounded by the probe's
   * deadline and by the operation's own: a cancel or deadline settles it at once.
   */
  private settleLost(op: PendingOp, peers: NetAddr[], err: TrellisError, reset: () => TrellisError): void {
    const lost = peers.find((p) => this.isLost(p));
    if (lost || this.closed) {
      op.fail(lost && peers.length > 1 ? err.withDetails({ peer: lost.toString() }) : err);
      return;
    }
    this.awaitingProbe.set(op, err);
    // An operation with several peers (a scatter, a barrier): the provider names none, so each is
    // probed; the first that does not answer is the lost one.
    void Promise.all(peers.map((p) => this.probePeer(p, PROBE_MS))).then((answers) => {
      const dead = peers.find((_, i) => !answers[i]);
      if (!this.awaitingProbe.delete(op)) {
        // The operation settled meanwhile (its deadline, or failover gave its share up): the
        // verdict still stands — a peer that answered no probe is lost.
        if (dead && !this.closed) this.peerFailed(op, err.withDetails({ peer: dead.toString() }));
        return;
      }
      if (dead) {
        op.fail(peers.length > 1 ? err.withDetails({ peer: dead.toString() }) : err);
        return;
      }
      op.fail(reset());
    });
  }

  cancelOp(op: PendingOp, reason: TrellisError): void {
    const waiting = this.awaitingProbe.get(op);
    if (waiting) {
      // Its work is done (failed); only the probe's verdict was pending.
      this.awaitingProbe.delete(op);
      op.fail(reason);
      return;
    }
    if (this.stager.cancel(op, reason)) return;
    if (!this.inflight.has(op.id)) return;
    this.native.cancel(op.id, reason.code === 'TIMEOUT' ? 'TIMEOUT' : 'ABORTED');
    this.lane.cancelling(op, reason);
  }

  // -- receive ----------------------------------------------------------------------------------

  /**
   * Whether message `m` (its sender's address `n` bytes long) was sent to this engine's generation;
   * if not — or it is too short to say — it is dropped and counted (`recvDropped`).
   */
  private forMe(m: Uint8Array, n: number): boolean {
    const at = 2 + n;
    if (
      m.length >= at + 4 &&
      new DataView(m.buffer, m.byteOffset).getUint32(at, true) === this.address.generation
    )
      return true;
    this.recvDropped++;
    return false;
  }

  private deliver(m: Uint8Array): void {
    if (m.length >= 2 && m[1]! & 0x80) {
      // An engine control message (the staged GPU path): never a user's.
      const n = m[0]! | ((m[1]! & 0x7f) << 8);
      if (!this.forMe(m, n)) return;
      try {
        const from = NetAddr.fromBytes(m.subarray(2, 2 + n));
        const body = m.subarray(2 + n + 4);
        if (!this.onBaseControl(from, body)) this.stager.onControl(from, body);
      } catch {
        this.recvDropped++;
      }
      return;
    }
    if (this.recvPools.length === 0) {
      // No pool yet: the provider already took the message; hold it until one is posted, up to a
      // bound (a peer must not grow this process's memory without limit).
      if (this.unexpected.length < MAX_UNEXPECTED) this.unexpected.push(m);
      else this.recvDropped++;
      return;
    }
    const n = m.length >= 2 ? m[0]! | (m[1]! << 8) : 0;
    if (!this.forMe(m, n)) return;
    let from: NetAddr;
    try {
      from = NetAddr.fromBytes(m.subarray(2, 2 + n));
    } catch {
      this.recvDropped++;
      return;
    }
    const data = m.slice(2 + n + 4);
    const pool = this.recvPools[this.poolCursor++ % this.recvPools.length]!;
    if (data.length > pool.maxBytes) {
      this.recvDropped++;
      const onError = pool.onError;
      if (onError) {
        callUser(() =>
          onError(
            new TrellisError(
              'MESSAGE_TRUNCATED',
              `submitRecvs: a ${data.length}-byte message from ${from.toString()} exceeds the ${pool.maxBytes}-byte receive buffers; it was dropped`,
              { peer: from.toString() },
            ),
          ),
        );
      }
      return;
    }
    this.msgStats.recvOps++;
    this.msgStats.bytesReceived += data.length;
    callUser(() => pool.onRecv({ from, data }));
  }

  protected postRecvs(pool: RecvPool): void {
    this.recvPools.push(pool);
    for (const m of this.unexpected.splice(0)) this.deliver(m);
  }

  protected cancelRecvs(pool: RecvPool): void {
    const i = this.recvPools.indexOf(pool);
    if (i >= 0) this.recvPools.splice(i, 1);
    pool.end();
  }

  // -- watcher ----------------------------------------------------------------------------------

  protected createWatcher(onChange: UvmWatcherCallback, onClose: (w: UvmWatcher) => void): UvmWatcher {
    const id = this.nextWatch++;
    // GPU producers need the word in memory a kernel can write (see NativeEngineTuning.watcherMemory).
    const mem = this.watcherMemory?.();
    const word = mem ? mem.word : new BigUint64Array(new SharedArrayBuffer(8));
    if (!(word instanceof BigUint64Array) || word.length < 1)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'allocUvmWatcher: watcherMemory() must return {word: BigUint64Array, devicePtr}',
      );
    // The state keeps the memory alive while the worker may still read it.
    const state = { cb: onChange, closed: false, word, seenAt: 0n };
    this.watches.set(id, state);
    this.native.watch(id, new Uint8Array(word.buffer, word.byteOffset, 8));
    const native = this.native;
    const watches = this.watches;
    const engine = this;
    const w: UvmWatcher = {
      word,
      devicePtr: mem?.devicePtr ?? 0n,
      get value() {
        return Atomics.load(word, 0);
      },
      get seenAt() {
        return state.seenAt;
      },
      increment(n = 1n) {
        if (state.closed) throw new TrellisError('CLOSED', 'UvmWatcher.increment: the watcher is closed');
        return Atomics.add(word, 0, n) + n;
      },
      close() {
        if (state.closed) return;
        state.closed = true;
        watches.delete(id);
        if (!engine.closed) native.unwatch(id);
        onClose(this);
      },
    };
    this.watcherIds.set(w, id);
    return w;
  }

  // -- ports ------------------------------------------------------------------------------------

  private readonly ports = new Map<number, EnginePort>();
  private nextPort = 1;

  openPort(opts: PortOptions): EnginePort {
    const op = 'openPort';
    this.throwIfClosed(op);
    const count = opts?.count;
    if (!Array.isArray(count) || count.length > 64)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `${op}: count must be an array of at most 64 immediate values`,
      );
    const taken = new Set<number>();
    for (const p of this.ports.values()) for (const v of p.counted) taken.add(v);
    for (const v of count) {
      checkImm(op, v, true);
      if (taken.has(v))
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `${op}: immediate ${v} is counted twice (by this port or by another open port of this engine)`,
        );
      taken.add(v);
    }
    const id = this.nextPort++;
    const counted = Object.freeze([...count]);
    const handle = this.native.openPort(id, Uint32Array.from(counted));
    let closed = false;
    // The source regions of its windows; once it is closed with posted writes unsettled, in use
    // (their unregister waits) until those have settled.
    let sources: Region[] = [];
    let held: Region[] = [];
    const read = (): PortStats => {
      const s = this.native.portStats(id);
      if (s)
        last = {
          posted: s[PORT_STATS.posted]!,
          settled: s[PORT_STATS.settled]!,
          failed: s[PORT_STATS.failed]!,
          counts: Array.from(s.subarray(PORT_STATS.stride)),
        };
      return last;
    };
    const letGo = () => {
      this.portDrains.delete(letGo);
      for (const r of held) r.release();
      held = [];
      if (!this.closed) this.native.forgetPort(id);
    };
    const port: EnginePort = {
      handle,
      counted,
      get closed() {
        return closed;
      },
      setWindows: (windows: readonly PortWindow[]) => {
        if (closed || this.closed)
          throw new TrellisError('CLOSED', 'EnginePort.setWindows: the port or its engine is closed');
        const [w, k, srcs] = this.portWindows(windows);
        this.native.setPortWindows(id, w, k);
        sources = srcs;
      },
      stats: (): PortStats => (closed || this.closed ? last : read()),
      close: () => {
        if (closed) return;
        closed = true;
        this.ports.delete(id);
        if (this.closed) return;
        this.native.closePort(id);
        // Writes it posted may still be with the provider (a hung peer): its windows' sources stay
        // in use until they settle — at the latest at the engine deadline, as any write's.
        const s = read();
        if (s.settled >= s.posted) {
          letGo();
          return;
        }
        held = sources.filter((r) => r.registered);
        for (const r of held) r.use();
        this.portDrains.add(letGo);
        const until =
          this.opTimeoutMs > 0 ? performance.now() + this.opTimeoutMs + 1000 : Number.POSITIVE_INFINITY;
        const check = () => {
          if (!this.portDrains.has(letGo)) return; // the engine closed meanwhile
          const now = read();
          if (now.settled >= now.posted || performance.now() >= until) letGo();
          else this.timers.after(10, check);
        };
        this.timers.after(10, check);
      },
    };
    let last: PortStats = { posted: 0, settled: 0, failed: 0, counts: counted.map(() => 0) };
    this.ports.set(id, port);
    return port;
  }

  /**
   * Ports closed with posted writes not all settled: each lets its windows' source regions go. The
   * engine's close lets every one go (nothing is read once the worker has stopped).
   */
  private readonly portDrains = new Set<() => void>();

  /** Validate windows as write requests are validated; pack them for the addon, with their sources. */
  private portWindows(windows: readonly PortWindow[]): [Float64Array, BigUint64Array, Region[]] {
    const op = 'EnginePort.setWindows';
    if (!Array.isArray(windows))
      throw new TrellisError('INVALID_ARGUMENT', `${op}: windows must be an array`);
    const w = new Float64Array(PORT_WINDOW.stride * windows.length);
    const k = new BigUint64Array(NIC_KEYS.stride * windows.length);
    const srcs: Region[] = [];
    windows.forEach((win, i) => {
      const field = `windows[${i}]`;
      if (typeof win !== 'object' || win === null)
        throw new TrellisError('INVALID_ARGUMENT', `${op}: ${field} must be a window object`);
      const dst = checkDst(this, op, `${field}.dst`, win.dst);
      const peer = dst.owner;
      this.checkReachable(peer, op);
      const lanes = Math.min(this.nics, peer.nics.length);
      const nic = checkCount(op, `${field}.nic`, win.nic, 0);
      if (nic >= lanes)
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `${op}: ${field}.nic must be below ${lanes} (the NIC pairs to this peer), got ${nic}`,
        );
      const dstOffset = checkCount(op, `${field}.dstOffset`, win.dstOffset, 0);
      const dstLength = checkCount(
        op,
        `${field}.dstLength`,
        win.dstLength,
        Math.max(0, dst.length - dstOffset),
      );
      checkRange(op, `${field}.dst`, dstOffset, dstLength, dst.length);
      let region = 0;
      let srcOffset = 0;
      let srcLength = 0;
      if (win.src !== undefined) {
        const srcLen = this.checkHandle(win.src, op, `${field}.src`);
        const r = win.src as unknown as Region;
        if (r.parted || dst.parts)
          throw new TrellisError(
            'UNSUPPORTED',
            `${op}: ${field} names a region registered in parts (over limits.maxMrBytes); a port window needs regions of one part`,
          );
        if (r.path === 'staged' || dst.staged)
          throw new TrellisError(
            'UNSUPPORTED',
            `${op}: ${field} touches a staged GPU region; a port posts host memory only (see docs/gpu.md)`,
          );
        region = r.key as number;
        if (!srcs.includes(r)) srcs.push(r);
        srcOffset = checkCount(op, `${field}.srcOffset`, win.srcOffset, 0);
        srcLength = checkCount(op, `${field}.srcLength`, win.srcLength, Math.max(0, srcLen - srcOffset));
        checkRange(op, `${field}.src`, srcOffset, srcLength, srcLen);
      }
      const imm = checkImm(op, win.imm, false);
      const at = PORT_WINDOW.stride * i;
      w[at + PORT_WINDOW.peer] = this.peerId(peer, op);
      w[at + PORT_WINDOW.lane] = nic;
      w[at + PORT_WINDOW.lanes] = lanes;
      w[at + PORT_WINDOW.region] = region;
      w[at + PORT_WINDOW.srcOff] = srcOffset;
      w[at + PORT_WINDOW.srcLen] = srcLength;
      w[at + PORT_WINDOW.dstOff] = dstOffset;
      w[at + PORT_WINDOW.dstLen] = dstLength;
      w[at + PORT_WINDOW.hasImm] = imm === undefined ? 0 : 1;
      w[at + PORT_WINDOW.imm] = imm ?? 0;
      packNicKeys(k, NIC_KEYS.stride * i, dst);
    });
    return [w, k, srcs];
  }

  // -- lifecycle --------------------------------------------------------------------------------

  protected async shutdown(): Promise<void> {
    closedInProcess.add(this.address.toString());
    this.stager.close();
    await this.lane.close();
    this.unlinkAll();
    unlinkAtExit.delete(this.unlinkAll);
    // Open ports stay allocated (a consumer may still hold their handle); the worker's stop makes
    // every later post fail with TRELLIS_PORT_CLOSED.
    this.timers.cancel(this.watchdog);
    this.finalStats = this.native.stats();
    // Synchronous: the worker stops, and its last batch (pending ops as CLOSED) is delivered here.
    // A stuck worker cannot be joined: it is abandoned instead — also when close() finds it stuck
    // (the native close waits at most 3 s for it, then leaves it behind; what is pending fails CLOSED).
    if (this.abandoned) this.native.abandon();
    else if (!this.native.close()) this.abandoned = true;
    // The worker has stopped and the provider is closed: nothing it held is read any more.
    for (const op of this.held.values()) op.letGo();
    this.held.clear();
    for (const letGo of [...this.portDrains]) letGo();
    for (const p of this.regs.values())
      p.reject(new TrellisError('CLOSED', 'registerMemory: the engine was closed'));
    this.regs.clear();
    // The provider is closed: every registration with it is gone.
    for (const done of this.deregs.values()) done();
    this.deregs.clear();
    for (const pool of this.recvPools.splice(0)) pool.end();
  }

  protected override eventStats(): EventStats {
    return { ...this.eventCounts };
  }

  protected override hostLaneStats(): HostLaneStats {
    const c = this.lane.hostCounters;
    return {
      writes: c.writes,
      bytes: c.bytes,
      fallbacks: c.fallbacks,
      sharedRegions: this.sharedNames.size,
      sharedAllocFailures: this.sharedAllocFailures,
    };
  }

  protected override gpuStats(): GpuStats {
    const g = super.gpuStats();
    const c = this.stager.counters;
    return {
      ...g,
      stagedToHostBytes: c.toHostBytes,
      stagedToDeviceBytes: c.toDeviceBytes,
      stagedWrites: c.writes,
      laneWrites: this.lane.counters.writes,
      laneBytes: this.lane.counters.bytes,
      laneFallbacks: this.lane.counters.fallbacks,
    };
  }

  protected nicStats(): NicStats[] {
    const s = this.finalStats ?? this.native.stats();
    // GPU memory on these NICs travels through host mirrors once a staged region exists.
    const staged = this.staged.size > 0;
    return this.providers.map((p, i) => ({
      index: i,
      provider: p.provider,
      path: staged && p.path === 'host' ? 'staged' : p.path,
      ...(p.device ? { device: p.device } : {}),
      up: !this.failedNics.has(i),
      bytesWritten: s[NIC_STATS.stride * i + NIC_STATS.bytesWritten]!,
      writeOps: s[NIC_STATS.stride * i + NIC_STATS.writeOps]!,
      // Messages travel on NIC 0.
      bytesSent: i === 0 ? this.msgStats.bytesSent : 0,
      sendOps: i === 0 ? this.msgStats.sendOps : 0,
      bytesReceived: i === 0 ? this.msgStats.bytesReceived : 0,
      recvOps: i === 0 ? this.msgStats.recvOps : 0,
      // Immediates a staged target counted after its copies arrive as control messages.
      immsReceived:
        s[NIC_STATS.stride * i + NIC_STATS.immsReceived]! + (i === 0 ? this.stager.counters.immsRaised : 0),
      errors: s[NIC_STATS.stride * i + NIC_STATS.errors]!,
    }));
  }
}

/** Write `dst`'s address and remote key on each of its NICs as a {@link NIC_KEYS} record at `at`. */
function packNicKeys(keys: BigUint64Array, at: number, dst: MrDesc | undefined): void {
  for (let l = 0; l < 4; l++) {
    const k = dst?.nics[l];
    keys[at + NIC_KEYS.addr0 + 2 * l] = k ? k.addr : 0n;
    keys[at + NIC_KEYS.rkey0 + 2 * l] = k ? k.rkey : 0n;
  }
}

/** The {@link REG_KEY} records of a new registration, one per NIC. */
function nicKeysOf(keys: BigUint64Array, nics: number): Array<{ addr: bigint; rkey: bigint }> {
  return Array.from({ length: nics }, (_, i) => ({
    addr: keys[REG_KEY.stride * i + REG_KEY.addr]!,
    rkey: keys[REG_KEY.stride * i + REG_KEY.key]!,
  }));
}

/** Scratch arrays a write is packed into: reused across calls, grown as needed. @internal */
export interface WriteScratch {
  runs: Float64Array;
  keys: BigUint64Array;
  /** Set by {@link packRuns}: the source region's id (0: none). */
  region?: number;
  /** Set by {@link packRuns}: a paged write's pages (undefined otherwise). */
  pages?: PackedWrite['pages'];
}

/** How the engine names a peer to its addon, and how many lanes reach it. @internal */
export interface WritePeers {
  peerId(peer: NetAddr, op: string): number;
  lanesTo(peer: NetAddr): number;
}

/** The arguments of {@link NativeEngine.write} a plan packs into. @internal */
export interface PackedWrite {
  region: number;
  runs: Float64Array;
  keys: BigUint64Array;
  pages: Parameters<NativeEngine['write']>[6];
}

/**
 * Pack a plan into the addon's write records ({@link RUN} and {@link NIC_KEYS} records, or the pages
 * object): the JS half of a write the worker expands into work requests (`wr_shape` in expand.hpp;
 * backend-efa's test/expand.test.ts checks, on random plans, that the expansion of what this packs
 * is {@link workRequests} of the plan). Returns how many runs it packed, from run `base` of
 * `scratch`'s arrays (growing them, the runs before `base` kept); sets `scratch.region` and
 * `scratch.pages`. @internal
 */
export function packRuns(plan: Plan, scratch: WriteScratch, peers: WritePeers, op: string, base = 0): number {
  let n = base;
  const runCount =
    plan.op === 'scatter'
      ? plan.targets.length
      : plan.op === 'barrier'
        ? plan.peers.length
        : plan.op === 'runs'
          ? plan.runs.length
          : 1;
  if ((base + runCount) * RUN.stride > scratch.runs.length) {
    if (base === 0) {
      scratch.runs = new Float64Array(RUN.stride * runCount);
      scratch.keys = new BigUint64Array(NIC_KEYS.stride * runCount);
    } else {
      // The runs before `base` are kept (a batch's earlier writes).
      scratch.runs = grow(scratch.runs, (base + runCount) * RUN.stride);
      scratch.keys = grow(scratch.keys, (base + runCount) * NIC_KEYS.stride);
    }
  }
  const runs = scratch.runs;
  const keys = scratch.keys;
  let region = 0;
  let pages: PackedWrite['pages'];
  switch (plan.op) {
    case 'single':
      region = (plan.src as Region).key as number;
      putRun(
        scratch,
        n++,
        peers.peerId(plan.peer, op),
        0,
        plan.lanes,
        plan.shards,
        plan.srcOffset,
        plan.dstOffset,
        plan.length,
        plan.dst,
      );
      break;
    case 'paged': {
      region = (plan.src as Region).key as number;
      const k = new BigUint64Array(NIC_KEYS.stride);
      packNicKeys(k, 0, plan.dst);
      pages = {
        peer: peers.peerId(plan.peer, op),
        lanes: plan.lanes,
        srcPages: plan.srcPages,
        dstPages: plan.dstPages,
        srcStride: plan.srcStride,
        dstStride: plan.dstStride,
        srcOffset: plan.srcOffset,
        dstOffset: plan.dstOffset,
        pageBytes: plan.pageBytes,
        keys: k,
      };
      break;
    }
    case 'scatter': {
      region = (plan.src as Region).key as number;
      const routing = plan.routing;
      const targets = plan.targets;
      const lane0 = plan.lane0 ?? 0;
      for (let i = 0; i < targets.length; i++) {
        const t = targets[i]!;
        if (i > 0 && routing !== 'bytes' && t.dst === targets[i - 1]!.dst) {
          // The previous target's destination again (prepared writes and a batch's merged writes:
          // all of them): its peer id and keys are copied, not looked up and converted again.
          const at = RUN.stride * n;
          runs.copyWithin(at, at - RUN.stride, at);
          runs[at + RUN.lane0] = routing === 'peers' ? (lane0 + i) % t.lanes : routing.nic;
          runs[at + RUN.srcOff] = t.srcOffset;
          runs[at + RUN.dstOff] = t.dstOffset;
          runs[at + RUN.len] = t.length;
          const k = NIC_KEYS.stride * n++;
          keys.copyWithin(k, k - NIC_KEYS.stride, k);
        } else if (routing === 'bytes')
          putRun(
            scratch,
            n++,
            peers.peerId(t.peer, op),
            0,
            t.lanes,
            autoShards(t.length, t.lanes),
            t.srcOffset,
            t.dstOffset,
            t.length,
            t.dst,
          );
        else {
          const lane = routing === 'peers' ? (lane0 + i) % t.lanes : routing.nic;
          putRun(
            scratch,
            n++,
            peers.peerId(t.peer, op),
            lane,
            t.lanes,
            1,
            t.srcOffset,
            t.dstOffset,
            t.length,
            t.dst,
          );
        }
      }
      break;
    }
    case 'barrier':
      for (const [j, p] of plan.peers.entries())
        putRun(scratch, n++, peers.peerId(p, op), plan.lanes[j]!, peers.lanesTo(p), 1, 0, 0, 0, undefined);
      break;
    case 'imm':
      putRun(
        scratch,
        n++,
        peers.peerId(plan.peer, op),
        plan.lane,
        peers.lanesTo(plan.peer),
        1,
        0,
        0,
        0,
        undefined,
      );
      break;
    case 'runs':
      region = plan.src ? ((plan.src as Region).key as number) : 0;
      // Each on its own lane: lane0 = the lane, one shard.
      for (const r of plan.runs)
        putRun(
          scratch,
          n++,
          peers.peerId(r.peer, op),
          r.lane,
          peers.lanesTo(r.peer),
          1,
          r.srcOffset,
          r.dstOffset,
          r.length,
          r.dst,
        );
      break;
  }
  scratch.region = region;
  scratch.pages = pages;
  return n - base;
}

/** {@link packRuns}, as the arrays {@link NativeEngine.write} takes (views of `scratch`). @internal */
export function packWrite(plan: Plan, scratch: WriteScratch, peers: WritePeers, op: string): PackedWrite {
  const n = packRuns(plan, scratch, peers, op);
  return {
    region: scratch.region ?? 0,
    runs: scratch.runs.subarray(0, RUN.stride * n),
    keys: scratch.keys.subarray(0, NIC_KEYS.stride * n),
    pages: scratch.pages,
  };
}

/** One {@link RUN} record and its {@link NIC_KEYS} record, at index `n` of the scratch arrays. */
function putRun(
  s: WriteScratch,
  n: number,
  peer: number,
  lane0: number,
  lanes: number,
  shards: number,
  srcOff: number,
  dstOff: number,
  len: number,
  dst: MrDesc | undefined,
): void {
  const runs = s.runs;
  const at = RUN.stride * n;
  runs[at + RUN.peer] = peer;
  runs[at + RUN.lane0] = lane0;
  runs[at + RUN.lanes] = lanes;
  runs[at + RUN.shards] = shards;
  runs[at + RUN.srcOff] = srcOff;
  runs[at + RUN.dstOff] = dstOff;
  runs[at + RUN.len] = len;
  runs[at + RUN.zero] = dst ? 0 : 1;
  packNicKeys(s.keys, NIC_KEYS.stride * n, dst);
}

/** A copy of `a` with room for at least `n` elements (doubling). */
function grow<T extends Float64Array | BigUint64Array>(a: T, n: number): T {
  const out = new (a.constructor as new (n: number) => T)(Math.max(n, a.length * 2));
  out.set(a as never);
  return out;
}

/**
 * A connection error's text for a PEER_LOST: without the worker's guess, made before the probe,
 * that the next operation reconnects (the probe said otherwise).
 */
function lostText(text: string): string {
  const guess = '; the next operation reconnects — ';
  const at = text.indexOf(guess);
  return at < 0 ? text : text.slice(at + guess.length);
}
