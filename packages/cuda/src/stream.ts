// Streams, events and graphs: the CUDA handles a model's step is ordered, timed and captured with
// (`cudaStream_t`, `cudaEvent_t`, `cudaGraphExec_t` as bigints, so they pass to any addon's kernels
// on the same device — @trellis/moe's stream-ordered MoE takes them). Thin wrappers over the
// runtime calls in the kit's cuda_napi.hpp; no state beyond the handles.
import { TrellisError } from '@trellis/core';
import { show } from '@trellis/core/kit';
import { addon, call, deviceOf } from './native.js';

/**
 * A CUDA stream. Kernels and copies queued on one stream run in order; work on different streams
 * may overlap. {@link handle} is the `cudaStream_t` other addons take.
 */
export class CudaStream {
  private destroyed = false;
  private constructor(
    /** The `cudaStream_t`, as a bigint (`0n`: the legacy default stream). */
    readonly handle: bigint,
    readonly device: number,
    private readonly owned: boolean,
  ) {}

  /**
   * A new stream on `device` (default 0). `nonBlocking: true` (the default) does not synchronise
   * with the legacy default stream; `false` makes a blocking stream, ordered after work queued there.
   */
  static create(opts: { device?: number; nonBlocking?: boolean } = {}): CudaStream {
    const device = deviceOf(opts.device, 'CudaStream.create');
    return new CudaStream(
      call('CudaStream.create', () => addon().streamCreate(device, opts.nonBlocking !== false)),
      device,
      true,
    );
  }

  /** A stream made elsewhere (another addon, the legacy default stream `0n`); {@link destroy} leaves it alone. */
  static wrap(handle: bigint, opts: { device?: number } = {}): CudaStream {
    if (typeof handle !== 'bigint' || handle < 0n)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `CudaStream.wrap: handle must be a bigint cudaStream_t, got ${show(handle)}`,
      );
    return new CudaStream(handle, deviceOf(opts.device, 'CudaStream.wrap'), false);
  }

  /** Block this thread until everything queued on the stream has run. */
  synchronize(): void {
    this.alive('synchronize');
    call('CudaStream.synchronize', () => addon().streamSynchronize(this.device, this.handle));
  }

  /** Whether everything queued on the stream has run (`cudaStreamQuery`); never blocks. */
  done(): boolean {
    return this.query('done');
  }

  /** {@link done}, its errors named after the method the caller called. */
  private query(method: 'done' | 'drained'): boolean {
    this.alive(method);
    return call(`CudaStream.${method}`, () => addon().streamQuery(this.device, this.handle));
  }

  /**
   * Resolves once the stream has drained, polling {@link done} from timers so the event loop keeps
   * running (a poll every `pollMs`, default 0: each turn of the loop). Rejects with `TIMEOUT` after
   * `timeoutMs` (default: never).
   */
  async drained(opts: { pollMs?: number; timeoutMs?: number } = {}): Promise<void> {
    const until = opts.timeoutMs === undefined ? Infinity : Date.now() + opts.timeoutMs;
    while (!this.query('drained')) {
      if (Date.now() > until)
        throw new TrellisError(
          'TIMEOUT',
          `CudaStream.drained: the stream did not drain within ${opts.timeoutMs} ms`,
        );
      await new Promise((r) => (opts.pollMs ? setTimeout(r, opts.pollMs) : setImmediate(r)));
    }
  }

  /** Make work queued on this stream from now on wait for `event` (recorded here or in another process). */
  wait(event: CudaEvent): void {
    this.alive('wait');
    call('CudaStream.wait', () => addon().streamWaitEvent(this.device, this.handle, event.handle));
  }

  /** Record `event` (default: a new timing event) at this point of the stream; returns it. */
  record(event: CudaEvent = CudaEvent.create({ device: this.device })): CudaEvent {
    return event.record(this);
  }

  /** Destroy the stream (work queued on it still runs). Idempotent; a wrapped stream is left alone. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    if (this.owned) call('CudaStream.destroy', () => addon().streamDestroy(this.device, this.handle));
  }

  private alive(op: string): void {
    if (this.destroyed) throw new TrellisError('CLOSED', `CudaStream.${op}: the stream was destroyed`);
  }
}

/**
 * A CUDA event: a point in a stream to wait for, time from, or hand to another process
 * (`interprocess: true`, `cudaIpcGetEventHandle`): PyTorch's `torch.cuda.Event(interprocess=True)`
 * and this class open each other's handles, so a Node process and a PyTorch process order their
 * streams on one GPU without a host synchronise.
 */
export class CudaEvent {
  private destroyed = false;
  private constructor(
    /** The `cudaEvent_t`, as a bigint. */
    readonly handle: bigint,
    readonly device: number,
    /** Whether {@link elapsedMs} works with it (interprocess events do not time). */
    readonly timing: boolean,
  ) {}

  /** A new event; `timing` (default true) unless `interprocess` (which cannot time). */
  static create(opts: { device?: number; timing?: boolean; interprocess?: boolean } = {}): CudaEvent {
    const device = deviceOf(opts.device, 'CudaEvent.create');
    const interprocess = opts.interprocess === true;
    const timing = !interprocess && opts.timing !== false;
    return new CudaEvent(
      call('CudaEvent.create', () => addon().eventCreate(device, timing, interprocess)),
      device,
      timing,
    );
  }

  /**
   * Open another process's interprocess event from its handle, in hex: {@link ipcHandle}'s, or
   * `bytes(torch.cuda.Event(interprocess=True).ipc_handle()).hex()` from PyTorch.
   */
  static import(handle: string, opts: { device?: number } = {}): CudaEvent {
    const device = deviceOf(opts.device, 'CudaEvent.import');
    const bytes =
      typeof handle === 'string' && /^[0-9a-f]*$/i.test(handle) ? Buffer.from(handle, 'hex') : undefined;
    if (bytes?.length !== 64)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `CudaEvent.import: a CUDA IPC event handle is 64 bytes (128 hex digits), got ${bytes ? `${bytes.length} bytes` : typeof handle === 'string' ? `'${handle.slice(0, 40)}' (not hex digits)` : typeof handle}`,
      );
    return new CudaEvent(
      call('CudaEvent.import', () => addon().eventIpcImport(device, Uint8Array.from(bytes!))),
      device,
      false,
    );
  }

  /** Record the event at this point of `stream` (a {@link CudaStream} or a raw handle). */
  record(stream: CudaStream | bigint): this {
    this.alive('record');
    const s = typeof stream === 'bigint' ? stream : stream.handle;
    call('CudaEvent.record', () => addon().eventRecord(this.device, this.handle, s));
    return this;
  }

  /** Block this thread until the work before the event's last record has run. */
  synchronize(): void {
    this.alive('synchronize');
    call('CudaEvent.synchronize', () => addon().eventSynchronize(this.device, this.handle));
  }

  /** Milliseconds of GPU time from `start` to this event (both recorded and complete, both timing). */
  elapsedMs(start: CudaEvent): number {
    this.alive('elapsedMs');
    if (!this.timing || !start.timing)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'CudaEvent.elapsedMs: both events must be timing events (not interprocess)',
      );
    return call('CudaEvent.elapsedMs', () => addon().eventElapsed(this.device, start.handle, this.handle));
  }

  /** This interprocess event's handle, in hex, for {@link CudaEvent.import} in another process. */
  ipcHandle(): string {
    this.alive('ipcHandle');
    return Buffer.from(
      call('CudaEvent.ipcHandle', () => addon().eventIpcExport(this.device, this.handle)),
    ).toString('hex');
  }

  /** Destroy the event. Idempotent. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    call('CudaEvent.destroy', () => addon().eventDestroy(this.device, this.handle));
  }

  private alive(op: string): void {
    if (this.destroyed) throw new TrellisError('CLOSED', `CudaEvent.${op}: the event was destroyed`);
  }
}

/**
 * How strictly a capture guards against unsafe CUDA calls in other threads while it runs
 * (`cudaStreamCaptureMode`): `'thread-local'` (the default) only this thread's; `'global'` every
 * thread's; `'relaxed'` none.
 */
export type CaptureMode = 'global' | 'thread-local' | 'relaxed';
const MODES: Record<CaptureMode, number> = { global: 0, 'thread-local': 1, relaxed: 2 };

/**
 * An instantiated CUDA graph: the kernels and copies queued on a stream while `fn` ran, replayed
 * with one launch. Replays read and write the same addresses: new inputs go into the captured
 * buffers before each {@link launch}.
 */
export class CudaGraph {
  private destroyed = false;
  private constructor(
    /** The `cudaGraphExec_t`, as a bigint. */
    readonly handle: bigint,
    readonly device: number,
    /** Nodes (kernels, copies, memsets, event waits) the capture recorded. */
    readonly nodes: number,
  ) {}

  /**
   * Capture what `fn` queues on `stream` (which must be a created, non-default stream) and
   * instantiate it. If `fn` throws, the capture is ended and abandoned and the error rethrown.
   */
  static capture(stream: CudaStream, fn: () => void, opts: { mode?: CaptureMode } = {}): CudaGraph {
    const mode = opts.mode ?? 'thread-local';
    if (!(mode in MODES))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `CudaGraph.capture: mode is 'global', 'thread-local' or 'relaxed', got ${String(mode)}`,
      );
    if (!(stream instanceof CudaStream) || stream.handle === 0n)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'CudaGraph.capture: capture on a created CudaStream (not the legacy default stream)',
      );
    const a = addon();
    call('CudaGraph.capture', () => a.captureBegin(stream.device, stream.handle, MODES[mode]));
    try {
      fn();
    } catch (e) {
      try {
        a.captureEnd(stream.device, stream.handle, false);
      } catch {
        // the capture is gone either way; the caller's error is the one to report
      }
      throw e;
    }
    const g = call('CudaGraph.capture', () => a.captureEnd(stream.device, stream.handle, true))!;
    return new CudaGraph(g.exec, stream.device, g.nodes);
  }

  /** Queue one replay on `stream` (default: the legacy default stream). */
  launch(stream?: CudaStream): void {
    if (this.destroyed) throw new TrellisError('CLOSED', 'CudaGraph.launch: the graph was destroyed');
    call('CudaGraph.launch', () => addon().graphLaunch(this.device, this.handle, stream?.handle ?? 0n));
  }

  /** Destroy the instantiated graph (replays already queued still run). Idempotent. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    call('CudaGraph.destroy', () => addon().graphDestroy(this.device, this.handle));
  }
}

/**
 * Let `device`'s kernels read and write `peer`'s memory in this process (NVLink or PCIe
 * peer-to-peer; `cudaDeviceEnablePeerAccess`). Idempotent. Memory another process shares through
 * CUDA IPC needs no call: opening it enables access.
 */
export function enablePeerAccess(device: number, peer: number): void {
  const d = deviceOf(device, 'enablePeerAccess');
  const p = deviceOf(peer, 'enablePeerAccess');
  if (d === p) return;
  call('enablePeerAccess', () => addon().enablePeerAccess(d, p));
}
