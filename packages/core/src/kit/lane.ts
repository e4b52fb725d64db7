// The same-host lane of the native engines: a write from a CUDA region into a CUDA region of a peer
// on the same host (same boot id, named in the target's descriptor) does not go through the NICs.
// The writer maps the target's allocation through CUDA IPC (once per allocation) and enqueues the
// copy on the lane stream of its device — the copy engines over NVLink or PCIe; one kernel for
// paged and scatter patterns of equal pieces — followed by a store of the write's sequence number
// into a signal word of pinned host memory. The engine's worker polls that word: once it reads the
// sequence number, every byte is in the target's GPU memory, and the worker posts the immediates
// as zero-byte writes, one per work request of the original plan on its original NIC, so the
// target counts exactly what `expectedImms` promised and nothing before its bytes are there. No
// JS turn and no thread hop between the copy and the immediates. This is how NCCL's P2P
// transport, UCX's cuda_ipc and NIXL move bytes inside a node.
//
// Host memory takes the same lane between host regions: a remote region the target's engine
// allocated lives in a POSIX shared-memory object named in its descriptor; the writer maps it once
// and its engine's copy thread memcpys into it, then stores the sequence number — the same signal
// word and armed immediates, with a CPU thread in place of the CUDA stream (one copy, where
// libfabric shm copies through its own buffers). The owner unlinks the name when the region is
// unregistered: a writer then finds the link count at zero and fails with REMOTE_ACCESS before
// anything is posted, as a NIC refuses a stale key. An owner that dies without unlinking (SIGKILL,
// a crash) leaves the object behind, mapped here and writable: the writer finds the owner's lock
// free and fails the write with PEER_LOST (the peer is then lost), as a provider would.
//
// A write resolves once its immediates were delivered (or, without an immediate, once its copy
// is done): the source may be reused then. Cancellation (deadline, abort) cannot stop a copy the
// GPU (or the copy thread) has started, and no immediate is raised: an abort settles once the copy
// is done; the request's deadline settles it at once, TIMEOUT, while the op's regions stay in use
// until the copy is done (`stats().ops.held`, `quiesce`), as for a NIC write with work posted.
// A copy that fails on the GPU (the stream reports an error) never stores its signal: a cancelled
// operation finds that out by draining the stream, and fails with the CUDA error.
import { HOST_MAPPING_DEVICE, type MrDesc, type MrIpc, sharedName } from '../desc.js';
import type { GpuMemoryOps, GpuSignal } from '../device.js';
import { TrellisError } from '../errors.js';
import type { PendingOp } from './pending-op.js';
import type { Region } from './region.js';
import { immediatesOf, type Plan, type RunsPlan, workRequests } from './validate.js';

/** What the lane needs from its engine. @internal */
export interface LaneHost {
  readonly gpu: GpuMemoryOps | undefined;
  /** This host's boot id (16 bytes), or undefined where it cannot be read. */
  readonly hostId: Uint8Array | undefined;
  /** Let the worker watch `signal`'s word without telling JS of changes; its watch id. */
  watchSignal(signal: GpuSignal): number;
  /**
   * Post `plan` as `op` once the watch reads at least `value`. A cancel meanwhile posts nothing;
   * an abort settles `op` once the value is reached (the copy is done), a deadline at once (its
   * regions held until the value is reached).
   */
  armOnSignal(plan: Plan, op: PendingOp, watch: number, value: bigint): void;
  /** Settle a held operation now (its copy failed: the watch will never reach its value). */
  release(op: PendingOp, reason: TrellisError): void;
  /** The host half (shared-memory regions, the engine's copy thread); undefined: no host lane. */
  readonly host: HostLaneOps | undefined;
}

/** A mapped region's owner, as a writer finds it before each write. @internal */
export type SharedOwner = 'alive' | 'unregistered' | 'gone';

/** The native `sharedOwner` codes, by value. @internal */
export const SHARED_OWNER: readonly SharedOwner[] = ['alive', 'unregistered', 'gone'];

/** What the host half of the lane needs from the native engine. @internal */
export interface HostLaneOps {
  /**
   * Map a same-host peer's shared-memory object; throws when it cannot be opened — an Error with
   * `unlinked: true` where the name is gone from the /dev/shm its owner created it on.
   */
  map(name: string): { id: number; base: bigint; length: number };
  /**
   * What the writer finds of the region's owner: it holds the region (`alive`), unregistered it
   * (its name unlinked), or died without unlinking it (`gone`: SIGKILL, a crash).
   */
  owner(id: number): SharedOwner;
  /** Unmap, after every copy queued so far. */
  unmap(id: number): void;
  /**
   * memcpy (dst, src, bytes) triples on the engine's copy thread, in order within `queue` (queues
   * take turns a slice at a time), then store `value` into `signal`.
   */
  copy(queue: number, triples: BigUint64Array, signal: GpuSignal, value: bigint): void;
  /** Where a view's first byte is in this process. */
  addressOf(view: Uint8Array): bigint;
}

/** Counters of the same-host lane (GPU ones in `stats().gpu`, host ones in `stats().hostLane`). */
export interface LaneCounters {
  writes: number;
  bytes: number;
  /** Writes that could have taken the lane but went through the NICs (a mapping failed). */
  fallbacks: number;
}

interface Mapping {
  device: number;
  base: bigint | undefined;
  /** Bytes mapped from `base` (the allocation's size), where known. */
  length: number | undefined;
  /** The host lane's mapping id. */
  id: number | undefined;
  error: string | undefined;
  /**
   * A host region's name is gone from the /dev/shm its owner created it on (unregistered, or its
   * owner exited): writes to it fail REMOTE_ACCESS, as to one unregistered after it was mapped.
   */
  unlinked?: boolean;
}

/** The signal key of the host copy thread (GPU signals are keyed by device). */
const HOST = -1;

/** The signal of one device's lane stream, as this engine uses it. */
interface Signal {
  device: number;
  signal: GpuSignal;
  watch: number;
  /** The sequence number of the last copy enqueued. */
  seq: bigint;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function hex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}

/** The same-host lane of one native engine. @internal */
export class SameHostLane {
  readonly counters: LaneCounters = { writes: 0, bytes: 0, fallbacks: 0 };
  readonly hostCounters: LaneCounters = { writes: 0, bytes: 0, fallbacks: 0 };
  /** Where each host source region's bytes start in this process. */
  private readonly srcAddress = new WeakMap<Region, bigint>();
  /** Peer allocations mapped here, by device and handle. */
  private readonly mapped = new Map<string, Mapping>();
  /** The same, by descriptor (a caller reuses its MrDesc objects: no key to build per write). */
  private readonly byIpc = new WeakMap<MrIpc, Map<number, Mapping>>();
  /** By device for the GPU lane; by target mapping for the host lane (`h<mapping id>`). */
  private readonly signals = new Map<number | string, Signal>();
  /** Lane operations not yet settled, with the device whose stream runs their copy. */
  private readonly running = new Map<PendingOp, number>();

  constructor(private readonly host: LaneHost) {}

  /** The lane's mapping of a peer's allocation: opened on first use, kept until close. */
  private mapping(ipc: MrIpc, device: number): Mapping {
    let mine = this.byIpc.get(ipc);
    const hit = mine?.get(device);
    if (hit) return hit;
    const key = `${device}:${hex(ipc.handle)}`;
    let m = this.mapped.get(key);
    if (!m) {
      m = { device, base: undefined, length: undefined, id: undefined, error: undefined, unlinked: false };
      try {
        if (device === HOST) {
          const h = this.host.host!.map(sharedName(ipc.handle));
          m.base = h.base;
          m.length = h.length;
          m.id = h.id;
        } else {
          const gpu = this.host.gpu!;
          m.base = gpu.ipcOpen!(device, ipc.handle);
          // Its size, so a descriptor that claims more than the allocation holds is refused.
          try {
            m.length = gpu.pointerRange?.(m.base).size;
          } catch {
            m.length = undefined;
          }
        }
      } catch (e) {
        m.error = e instanceof Error ? e.message : String(e);
        m.unlinked = device === HOST && (e as { unlinked?: unknown }).unlinked === true;
      }
      this.mapped.set(key, m);
    }
    if (!mine) {
      mine = new Map();
      this.byIpc.set(ipc, mine);
    }
    mine.set(device, m);
    return m;
  }

  private sameHost(d: MrDesc): boolean {
    const id = this.host.hostId;
    return d.ipc !== undefined && id !== undefined && sameBytes(d.ipc.host, id);
  }

  /**
   * Whether `plan` moves between CUDA regions on this host, and the lane can carry it. `posting`:
   * the write is being posted now (a mapping that fails is then counted as a fallback).
   */
  takes(plan: Plan, posting = false): boolean {
    if (plan.op !== 'single' && plan.op !== 'paged' && plan.op !== 'scatter') return false;
    const src = plan.src as Region;
    let device: number;
    if (src.cuda) {
      const gpu = this.host.gpu;
      if (!gpu?.enqueueDeviceCopy || !gpu.allocSignal || !gpu.ipcOpen) return false;
      device = src.cuda.device;
    } else {
      if (!this.host.host || !src.buffer || src.parted) return false;
      device = HOST;
    }
    if (plan.op === 'scatter') {
      if (plan.targets.length === 0) return false;
      for (const t of plan.targets) if (!this.carries(t.dst, device, posting)) return false;
      return true;
    }
    return this.carries(plan.dst, device, posting);
  }

  private carries(d: MrDesc, device: number, posting: boolean): boolean {
    if (!this.sameHost(d)) return false;
    // GPU to GPU, host to host: a host region never takes a GPU copy, nor the reverse.
    if ((device === HOST) !== (d.ipc!.device === HOST_MAPPING_DEVICE)) return false;
    const m = this.mapping(d.ipc!, device);
    // A region gone before this writer first mapped it: the lane refuses it (start), as one
    // unregistered since — the provider would only meet a stale key (shm 1.17 never answers one).
    if (m.unlinked) return true;
    // The mapping must hold all the descriptor claims (a forged length must not send a copy past it).
    if (m.base !== undefined && (m.length === undefined || Number(d.ipc!.offset) + d.length <= m.length))
      return true;
    if (posting) (device === HOST ? this.hostCounters : this.counters).fallbacks++;
    return false;
  }

  private signal(device: number, queue?: number): Signal {
    const key = device === HOST ? `h${queue}` : device;
    let s = this.signals.get(key);
    if (!s) {
      const signal: GpuSignal =
        device === HOST
          ? { word: new BigUint64Array(new SharedArrayBuffer(8)), devicePtr: 0n }
          : this.host.gpu!.allocSignal!();
      s = { device, signal, watch: this.host.watchSignal(signal), seq: Atomics.load(signal.word, 0) };
      this.signals.set(key, s);
    }
    return s;
  }

  /** Run `plan` (one that {@link takes}) as `op`; settles `op` once. */
  start(plan: Plan, op: PendingOp): void {
    const src = (plan as { src: unknown }).src as Region;
    const cuda = src.cuda;
    const device = cuda ? cuda.device : HOST;
    let from0: bigint;
    if (cuda) from0 = cuda.ptr;
    else {
      let a = this.srcAddress.get(src);
      if (a === undefined) {
        a = this.host.host!.addressOf(src.buffer!);
        this.srcAddress.set(src, a);
      }
      from0 = a;
    }
    const wrs = workRequests(plan);
    // One copy per piece; pieces that continue the previous one on both sides (the shards a write
    // was cut into for the NICs) are one copy.
    const triples = new BigUint64Array(3 * wrs.length);
    let bytes = 0;
    let i = 0;
    // Host copies queue per target region (the first one's), so one target's writes never wait
    // behind another's (the copy thread serves the queues in turn).
    let queue: number | undefined;
    for (const w of wrs) {
      if (w.dst === undefined || w.length === 0) continue;
      const ipc = w.dst.ipc!;
      const m = this.mapping(ipc, device);
      if (m.unlinked) {
        op.fail(
          new TrellisError(
            'REMOTE_ACCESS',
            `${op.callsite.op}: the target region is gone from this host's /dev/shm (its owner unregistered it, or exited); get a fresh descriptor from the peer`,
            { op: op.callsite.op },
          ),
        );
        return;
      }
      queue ??= m.id;
      const owner = device === HOST ? this.host.host!.owner(m.id!) : 'alive';
      if (owner === 'unregistered') {
        op.fail(
          new TrellisError(
            'REMOTE_ACCESS',
            `${op.callsite.op}: the target region was unregistered (its owner on this host released it); get a fresh descriptor from the peer`,
            { op: op.callsite.op },
          ),
        );
        return;
      }
      if (owner === 'gone') {
        // Its memory outlives it (this mapping), so a copy would "land" where nobody reads.
        const peer = w.dst.owner.toString();
        op.fail(
          new TrellisError(
            'PEER_LOST',
            `${op.callsite.op}: the target process on this host died (its shared region has no owner any more); the peer is lost`,
            { op: op.callsite.op, peer },
          ),
        );
        return;
      }
      const to = m.base! + ipc.offset + BigInt(w.dstOffset);
      const from = from0 + BigInt(w.srcOffset);
      const n = BigInt(w.length);
      bytes += w.length;
      if (i > 0 && triples[i - 3]! + triples[i - 1]! === to && triples[i - 2]! + triples[i - 1]! === from) {
        triples[i - 1]! += n;
        continue;
      }
      triples[i++] = to;
      triples[i++] = from;
      triples[i++] = n;
    }
    const sig = this.signal(device, queue ?? 0);
    const seq = sig.seq + 1n;
    try {
      if (device === HOST) this.host.host!.copy(queue ?? 0, triples.subarray(0, i), sig.signal, seq);
      else this.host.gpu!.enqueueDeviceCopy!(device, triples.subarray(0, i), sig.signal, seq);
    } catch (e) {
      op.fail(
        e instanceof TrellisError
          ? e
          : new TrellisError(
              'PROVIDER_ERROR',
              `${op.callsite.op}: the same-host lane could not start its copy: ${e instanceof Error ? e.message : String(e)}`,
              { op: op.callsite.op },
            ),
      );
      return;
    }
    sig.seq = seq;
    // The immediates, after the bytes: one zero-byte write per original work request, each on its
    // own NIC, so the target counts what expectedImms promised. Without an immediate the armed
    // plan is empty: the worker settles it when the signal arrives.
    const raised: RunsPlan =
      plan.imm === undefined
        ? { op: 'runs', src: undefined, runs: [], imm: undefined }
        : immediatesOf(wrs, plan.imm);
    this.running.set(op, device);
    const counters = device === HOST ? this.hostCounters : this.counters;
    // Counted as the op settles (not on its promise: a batch's ops have none, and a batch resolves
    // before a promise's reactions would run), so `stats()` agrees with `stats().ops` at once.
    op.onFinish = (ok) => {
      this.running.delete(op);
      if (!ok) return;
      counters.writes += op.weight;
      counters.bytes += bytes;
    };
    this.host.armOnSignal(raised, op, sig.watch, seq);
  }

  /**
   * A lane operation is being cancelled (the worker settles it once its copy is done). In case the
   * copy failed on the GPU, which then never signals, drain the stream and fail `op` with the error.
   */
  cancelling(op: PendingOp, reason: TrellisError): void {
    const device = this.running.get(op);
    // A host copy cannot fail short of a crash: it always signals.
    if (device === undefined || device === HOST) return;
    this.host.gpu!.drainDeviceCopies?.(device).then(
      () => {},
      (e: unknown) => {
        // The copy will never signal: the worker drops the armed write (and, where the op already
        // settled at its deadline, lets its regions go).
        this.host.release(op, reason);
        if (op.settled) return;
        op.fail(
          new TrellisError(
            'PROVIDER_ERROR',
            `${op.callsite.op}: the same-host lane's copy failed: ${e instanceof Error ? e.message : String(e)}`,
            { op: op.callsite.op },
          ),
        );
      },
    );
  }

  /** Let every copy finish, then unmap every peer allocation (the engine is closing). */
  async close(): Promise<void> {
    const gpu = this.host.gpu;
    await Promise.all(
      [...this.signals.values()]
        .filter((s) => s.device !== HOST)
        .map((s) => gpu!.drainDeviceCopies?.(s.device).catch(() => {})),
    );
    for (const m of this.mapped.values()) {
      if (m.base === undefined) continue;
      try {
        // Host mappings go after the copies queued before them; GPU ones after the drain above.
        if (m.device === HOST) this.host.host!.unmap(m.id!);
        else gpu!.ipcClose?.(m.device, m.base);
      } catch {
        // The peer's allocation may be gone already; nothing to release then.
      }
    }
    this.mapped.clear();
  }
}
