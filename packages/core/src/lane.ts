// The same-host lane of the native engines: a write from a CUDA region into a CUDA region of a peer
// on the same host (same boot id, named in the target's descriptor) does not go through the NICs.
// The writer maps the target's allocation through CUDA IPC (once per allocation), copies on a
// stream of the engine's own — the copy engines, over NVLink or PCIe — and, once the stream has
// drained (every byte is in the target's GPU memory), raises the immediates as zero-byte writes,
// one per work request of the original plan on its original NIC, so the target counts exactly
// what `expectedImms` promised and counts nothing before its bytes are there. This is how NCCL's
// P2P transport, UCX's cuda_ipc and NIXL move bytes inside a node.
//
// A write resolves once the copy has drained and the immediates were delivered: the source may be
// reused then. Cancellation (deadline, abort) cannot stop a copy the GPU has started; the operation
// then fails once the copy is done, and no immediate is raised.
import type { NetAddr } from './addr.js';
import type { MrDesc, MrIpc } from './desc.js';
import type { PendingOp, Region } from './engine-base.js';
import { CallSite, TrellisError } from './errors.js';
import type { GpuMemoryOps } from './types.js';
import { type Plan, type RunsPlan, type WorkRequest, workRequests } from './validate.js';

/** What the lane needs from its engine. @internal */
export interface LaneHost {
  readonly gpu: GpuMemoryOps | undefined;
  /** This host's boot id (16 bytes), or undefined where it cannot be read. */
  readonly hostId: Uint8Array | undefined;
  internalOp(site: CallSite, peer: NetAddr | undefined): PendingOp;
  postPlan(plan: Plan, op: PendingOp): void;
}

/** Counters of the same-host lane, in `stats().gpu`. */
export interface LaneCounters {
  writes: number;
  bytes: number;
  /** Peer allocations mapped through CUDA IPC (each once). */
  mappings: number;
  /** Writes that could have taken the lane but went through the NICs (a mapping failed). */
  fallbacks: number;
}

interface Mapping {
  device: number;
  base: bigint | undefined;
  error: string | undefined;
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
  readonly counters: LaneCounters = { writes: 0, bytes: 0, mappings: 0, fallbacks: 0 };
  /** Peer allocations mapped here, by device and handle. */
  private readonly mapped = new Map<string, Mapping>();
  private readonly running = new Map<PendingOp, { cancelled: TrellisError | undefined }>();

  constructor(private readonly host: LaneHost) {}

  /** The lane's mapping of a peer's allocation: opened on first use, kept until close. */
  private mapping(ipc: MrIpc, device: number): Mapping {
    const key = `${device}:${hex(ipc.handle)}`;
    let m = this.mapped.get(key);
    if (!m) {
      m = { device, base: undefined, error: undefined };
      try {
        m.base = this.host.gpu!.ipcOpen!(device, ipc.handle);
        this.counters.mappings++;
      } catch (e) {
        m.error = e instanceof Error ? e.message : String(e);
      }
      this.mapped.set(key, m);
    }
    return m;
  }

  private sameHost(d: MrDesc): boolean {
    const id = this.host.hostId;
    return d.ipc !== undefined && id !== undefined && sameBytes(d.ipc.host, id);
  }

  /** Whether `plan` moves between CUDA regions on this host, and the lane can carry it. */
  takes(plan: Plan): boolean {
    const gpu = this.host.gpu;
    if (!gpu?.copyDevice || !gpu.ipcOpen) return false;
    if (plan.op !== 'single' && plan.op !== 'paged' && plan.op !== 'scatter') return false;
    const src = plan.src as Region;
    if (!src.cuda) return false;
    const dsts = plan.op === 'scatter' ? plan.targets.map((t) => t.dst) : [plan.dst];
    for (const d of dsts) {
      if (!this.sameHost(d)) return false;
      const m = this.mapping(d.ipc!, src.cuda.device);
      if (m.base === undefined) {
        this.counters.fallbacks++;
        return false;
      }
    }
    return true;
  }

  /** Run `plan` (one that {@link takes}) as `op`; settles `op` once. */
  start(plan: Plan, op: PendingOp): void {
    const run = { cancelled: undefined as TrellisError | undefined };
    this.running.set(op, run);
    this.work(plan, op, run).then(
      () => {
        this.running.delete(op);
        if (run.cancelled) op.fail(run.cancelled);
        else op.complete();
      },
      (e: unknown) => {
        this.running.delete(op);
        op.fail(
          run.cancelled ??
            (e instanceof TrellisError
              ? e
              : new TrellisError(
                  'PROVIDER_ERROR',
                  `${op.callsite.op}: the same-host lane's copy failed: ${e instanceof Error ? e.message : String(e)}`,
                  { op: op.callsite.op },
                )),
        );
      },
    );
  }

  /** Ask a lane operation to stop; false if `op` is not one. It settles once its copy is done. */
  cancel(op: PendingOp, reason: TrellisError): boolean {
    const run = this.running.get(op);
    if (!run) return false;
    run.cancelled ??= reason;
    return true;
  }

  private async work(plan: Plan, op: PendingOp, run: { cancelled: TrellisError | undefined }): Promise<void> {
    const src =
      plan.op === 'single' || plan.op === 'paged' || plan.op === 'scatter' ? (plan.src as Region) : undefined;
    const cuda = src!.cuda!;
    const wrs = workRequests(plan);
    const copies = wrs.filter((w) => w.dst !== undefined && w.length > 0);
    const triples = new BigUint64Array(3 * copies.length);
    let bytes = 0;
    copies.forEach((w, i) => {
      const d = w.dst!;
      const m = this.mapping(d.ipc!, cuda.device);
      triples[3 * i] = m.base! + d.ipc!.offset + BigInt(w.dstOffset);
      triples[3 * i + 1] = cuda.ptr + BigInt(w.srcOffset);
      triples[3 * i + 2] = BigInt(w.length);
      bytes += w.length;
    });
    if (copies.length) await this.host.gpu!.copyDevice!(cuda.device, triples);
    if (run.cancelled) return;
    this.counters.writes++;
    this.counters.bytes += bytes;
    if (plan.imm === undefined) return;
    // The immediates, after the bytes: one zero-byte write per original work request, each on its
    // own NIC, so the target counts what expectedImms promised.
    const imm = plan.imm;
    const runs: WorkRequest[] = wrs.map((w) => ({
      lane: w.lane,
      peer: w.peer,
      dst: undefined,
      srcOffset: 0,
      dstOffset: 0,
      length: 0,
      imm,
    }));
    const sub = this.host.internalOp(new CallSite(op.callsite.op), op.peer);
    const raised: RunsPlan = { op: 'runs', src: undefined, runs, imm };
    this.host.postPlan(raised, sub);
    await sub.promise;
  }

  /** Unmap every peer allocation (the engine is closing). */
  close(): void {
    for (const m of this.mapped.values()) {
      if (m.base === undefined) continue;
      try {
        this.host.gpu!.ipcClose?.(m.device, m.base);
      } catch {
        // The peer's allocation may be gone already; nothing to release then.
      }
    }
    this.mapped.clear();
  }
}
