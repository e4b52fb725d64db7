// Registrations and receive pools as an engine tracks them: what every backend's regions have in
// common (use counts that hold an unregister until in-flight operations let go, the caller's memory
// kept alive). Imports only the contract; the engine reaches back through RegionOwner.
import type { MrDesc } from '../desc.js';
import { invalid, type TrellisError } from '../errors.js';
import type { CudaMemory, MrHandle, RecvMessage } from '../types.js';

/** What a {@link Region} asks of the engine that owns it. */
export interface RegionOwner {
  unregister(region: Region): Promise<void>;
}

/** A registration in parts: the part registrations and their size. @internal */
export interface PartedRegion {
  readonly partBytes: number;
  readonly partRegions: readonly MrHandle[];
}

/** What a backend returns for a new registration. */
export interface RegionAlloc {
  desc: MrDesc;
  /** Host bytes, when the region is host memory. */
  bytes: Uint8Array | undefined;
  length: number;
  /** Backend's own handle for the registration. */
  key: unknown;
  /** How the NICs reach it (default `host`). */
  path?: 'host' | 'direct' | 'staged';
}

/** A live registration as the engine tracks it. */
export class Region implements MrHandle {
  registered = true;
  /** Pending operations of this engine that read or write it. */
  users = 0;
  private drained: (() => void) | undefined;

  constructor(
    private readonly engine: RegionOwner,
    readonly desc: MrDesc,
    readonly length: number,
    readonly buffer: Uint8Array | undefined,
    readonly remote: boolean,
    readonly key: unknown,
    /** The caller's memory, held so it stays alive while registered. */
    readonly owner: unknown,
    readonly path: 'host' | 'direct' | 'staged' = 'host',
    /** A region registered in parts: the part registrations (internal regions) and their size. */
    readonly parted?: PartedRegion,
  ) {
    const c = (owner as Partial<CudaMemory> | null)?.cuda;
    this.cuda =
      typeof owner === 'object' && owner !== null && c
        ? Object.freeze({ ptr: c.ptr, length: c.length, device: c.device })
        : undefined;
  }

  readonly cuda: CudaMemory['cuda'] | undefined;

  /** Throws DETACHED_BUFFER when host memory went away under the registration. */
  checkAlive(op: string): void {
    if (this.buffer && this.buffer.byteLength !== this.length) {
      throw invalid(
        'DETACHED_BUFFER',
        op,
        `registered buffer of ${this.length} bytes is now ${this.buffer.byteLength} bytes (detached or resized); keep registered memory alive and fixed-size until unregister()`,
      );
    }
  }

  use(): void {
    this.users++;
  }
  release(): void {
    if (--this.users === 0 && this.drained) {
      const d = this.drained;
      this.drained = undefined;
      d();
    }
  }
  idle(): Promise<void> {
    if (this.users === 0) return Promise.resolve();
    return new Promise((r) => {
      const prev = this.drained;
      this.drained = () => {
        prev?.();
        r();
      };
    });
  }

  unregister(): Promise<void> {
    return this.engine.unregister(this);
  }
}

/** A receive pool as the engine tracks it. */
export class RecvPool {
  done = false;
  private resolveFn!: () => void;
  private rejectFn!: (e: unknown) => void;
  readonly promise: Promise<void>;
  constructor(
    readonly maxBytes: number,
    readonly count: number,
    readonly onRecv: (msg: RecvMessage) => void,
    readonly onError: ((err: TrellisError) => void) | undefined,
  ) {
    this.promise = new Promise((res, rej) => {
      this.resolveFn = res;
      this.rejectFn = rej;
    });
  }
  end(err?: TrellisError): void {
    if (this.done) return;
    this.done = true;
    if (err) this.rejectFn(err);
    else this.resolveFn();
  }
}
