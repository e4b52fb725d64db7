/**
 * Stable error codes. A code never changes meaning once published; new failure kinds get new codes.
 *
 * | code | meaning | what to do |
 * |---|---|---|
 * | `INVALID_ARGUMENT` | a request field has the wrong type or value (imm not a u32, shards out of 1..lanes, a non-integer offset) | fix the call; nothing was posted |
 * | `OUT_OF_RANGE` | an offset, length or page index falls outside its region | fix the range; nothing was posted |
 * | `INVALID_DESCRIPTOR` | a descriptor or handle belongs to another engine kind, another engine, was unregistered, or is not remotely accessible | exchange a fresh descriptor; register with `{remote: true}` |
 * | `DETACHED_BUFFER` | a registered `ArrayBuffer` was detached (transferred) or shrunk | keep registered buffers alive and fixed-size until unregistered |
 * | `DECODE_ERROR` | bytes or a string could not be decoded as a `NetAddr`, `MrDesc` or message (garbage, truncated, wrong magic) | pass the exact bytes produced by `toBytes()` / `toString()` |
 * | `UNSUPPORTED_VERSION` | an encoding from a newer (or unknown) format version | upgrade the reader |
 * | `UNKNOWN_PEER` | the peer address is not reachable from this engine (another fabric, never existed) | check the address exchange |
 * | `PEER_LOST` | the peer died or closed while the operation was pending, or before it was submitted | the operation's effect at the peer is unknown; re-establish and retry |
 * | `CONNECTION_RESET` | the connection to the peer was torn down by an earlier failure on it (another operation's refused key; a flushed queue pair), cutting this operation off; the peer is not known to be lost | retry with a short backoff: operations fail this way until the connection is rebuilt (tens of milliseconds on tcp here), then land |
 * | `NIC_FAILED` | the NIC (or its peer NIC) carrying part of the operation failed | retry; see `stats()` for the NIC's health |
 * | `CLOSED` | this engine (or the object used) was closed | do not use an engine after `close()` |
 * | `TIMEOUT` | a deadline (`timeoutMs`) passed | work it had posted may still land and read the source: `await engine.quiesce(peer)` before reusing the source |
 * | `ABORTED` | an `AbortSignal` fired | the operation's work requests can no longer touch memory when this is reported |
 * | `MESSAGE_TOO_LARGE` | a send exceeds the engine's `maxMessageBytes` | split the message or send a descriptor and write the bulk |
 * | `MESSAGE_TRUNCATED` | an incoming message was larger than the receive buffers posted for it | post receives with a larger `maxBytes` |
 * | `REMOTE_ACCESS` | the target rejected the write (bad rkey, out-of-bounds at the target) | the descriptor is stale or forged |
 * | `RESOURCE_EXHAUSTED` | a queue or table limit was reached | lower the concurrency or raise the limit option |
 * | `UNSUPPORTED` | the backend or provider lacks a capability the call needs | see `stats()` / `trellis doctor` |
 * | `PROVIDER_ERROR` | the provider reported an error not covered above; `errno` and `providerMessage` tell which | report it with the provider message |
 * | `INTERNAL` | a bug in Trellis | report it |
 */
export type TrellisErrorCode =
  | 'INVALID_ARGUMENT'
  | 'OUT_OF_RANGE'
  | 'INVALID_DESCRIPTOR'
  | 'DETACHED_BUFFER'
  | 'DECODE_ERROR'
  | 'UNSUPPORTED_VERSION'
  | 'UNKNOWN_PEER'
  | 'PEER_LOST'
  | 'CONNECTION_RESET'
  | 'NIC_FAILED'
  | 'CLOSED'
  | 'TIMEOUT'
  | 'ABORTED'
  | 'MESSAGE_TOO_LARGE'
  | 'MESSAGE_TRUNCATED'
  | 'REMOTE_ACCESS'
  | 'RESOURCE_EXHAUSTED'
  | 'UNSUPPORTED'
  | 'PROVIDER_ERROR'
  | 'INTERNAL';

/** Every code, in documentation order. */
export const TRELLIS_ERROR_CODES: readonly TrellisErrorCode[] = [
  'INVALID_ARGUMENT',
  'OUT_OF_RANGE',
  'INVALID_DESCRIPTOR',
  'DETACHED_BUFFER',
  'DECODE_ERROR',
  'UNSUPPORTED_VERSION',
  'UNKNOWN_PEER',
  'PEER_LOST',
  'CONNECTION_RESET',
  'NIC_FAILED',
  'CLOSED',
  'TIMEOUT',
  'ABORTED',
  'MESSAGE_TOO_LARGE',
  'MESSAGE_TRUNCATED',
  'REMOTE_ACCESS',
  'RESOURCE_EXHAUSTED',
  'UNSUPPORTED',
  'PROVIDER_ERROR',
  'INTERNAL',
];

/** Context attached to a {@link TrellisError}. Every field is optional. */
export interface TrellisErrorDetails {
  /** The backend's errno (a positive libfabric `FI_E*` or POSIX value), when the error came from the provider. */
  errno?: number;
  /**
   * The message the native worker reported with a failed completion: the provider's own text
   * (`fi_cq_strerror`, `ibv_wc_status_str`) where `errno` is set, Trellis's description (a deadline,
   * a closed engine) otherwise; `undefined` for errors found in JavaScript.
   */
  providerMessage?: string;
  /** The peer involved, in `NetAddr` string form. */
  peer?: string;
  /** The local NIC index involved. */
  nic?: number;
  /** The operation that failed (`submitSingleWrite`, ...). */
  op?: string;
  /** The underlying error. */
  cause?: unknown;
}

/** The brand of Trellis errors across copies of this module (`Symbol.for`: one per process). */
const ERROR_BRAND: unique symbol = Symbol.for('@trellis/core/TrellisError@1') as never;

/**
 * The one error class Trellis throws or rejects with. `code` is stable and meant for `switch`;
 * `message` is for people and says what to fix.
 *
 * @example
 * ```ts
 * try {
 *   await engine.submitSingleWrite(req);
 * } catch (e) {
 *   if (e instanceof TrellisError && e.code === 'PEER_LOST') reconnect(e.peer);
 *   else throw e;
 * }
 * ```
 *
 * `instanceof TrellisError` holds for errors made by any copy of `@trellis/core` loaded in the
 * process (a version skew that installs two copies still classifies errors).
 */
export class TrellisError extends Error {
  override readonly name = 'TrellisError';
  readonly code: TrellisErrorCode;
  readonly errno: number | undefined;
  readonly providerMessage: string | undefined;
  readonly peer: string | undefined;
  readonly nic: number | undefined;
  readonly op: string | undefined;

  constructor(code: TrellisErrorCode, message: string, details: TrellisErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    this.errno = details.errno;
    this.providerMessage = details.providerMessage;
    this.peer = details.peer;
    this.nic = details.nic;
    this.op = details.op;
  }

  /** A copy of this error with more context; fields already set are kept. */
  withDetails(details: TrellisErrorDetails): TrellisError {
    const e = new TrellisError(this.code, this.message, {
      errno: this.errno ?? details.errno,
      providerMessage: this.providerMessage ?? details.providerMessage,
      peer: this.peer ?? details.peer,
      nic: this.nic ?? details.nic,
      op: this.op ?? details.op,
      cause: this.cause ?? details.cause,
    });
    e.stack = this.stack;
    return e;
  }
}

// `instanceof TrellisError` holds for errors made by any copy of `@trellis/core` in the process (an
// application that ends up with two, e.g. through a version skew, still classifies errors): every
// copy puts one brand, registered with `Symbol.for`, on its errors' prototype, and TrellisError's
// Symbol.hasInstance reads it instead of the prototype chain. Subclasses keep the usual check.
// Versioned: a future error shape that is not compatible gets a new brand.
Object.defineProperty(TrellisError.prototype, ERROR_BRAND, { value: true });
Object.defineProperty(TrellisError, Symbol.hasInstance, {
  value: function hasInstance(this: unknown, x: unknown): boolean {
    if (this !== TrellisError) return Function.prototype[Symbol.hasInstance].call(this, x);
    return typeof x === 'object' && x !== null && (x as { [ERROR_BRAND]?: unknown })[ERROR_BRAND] === true;
  },
});

/** True when `e` is a {@link TrellisError}, optionally with the given code. */
export function isTrellisError(e: unknown, code?: TrellisErrorCode): e is TrellisError {
  return e instanceof TrellisError && (code === undefined || e.code === code);
}

let captureStacks = typeof process !== 'undefined' && process.env?.TRELLIS_CAPTURE_STACKS === '1';

/**
 * Whether operations capture the submitting call's stack (off unless the environment sets
 * `TRELLIS_CAPTURE_STACKS=1`). Capturing costs about a microsecond per operation — the largest
 * per-operation cost of a small write from JavaScript — so it is a debugging switch: with it on, an
 * error reported later (from a completion) carries the frames of the line that submitted the
 * operation, as sharp's do; with it off, such an error carries its code, `op`, `peer` and message,
 * and errors found while submitting (bad input, a closed engine) still point at the caller, since
 * they are made inside the call (and returned as a rejected promise: `submit*` never throws). Returns the previous setting. Applies to operations submitted
 * after the call, in every engine of this process.
 */
export function captureCallSites(on: boolean): boolean {
  const was = captureStacks;
  captureStacks = on;
  return was;
}

const sharedSites = new Map<string, CallSite>();

/**
 * The submitting call of an operation: its name always, and its stack when
 * {@link captureCallSites} is on, so that an error reported later points at the line that
 * submitted it.
 */
export class CallSite {
  private readonly stack: string | undefined;

  /**
   * The call site of an operation named `op`: while stacks are not captured, one shared instance
   * per name (it holds nothing but the name, so a small write allocates none); while they are, a
   * new one holding the caller's stack, as `new CallSite(op)`.
   */
  static of(op: string): CallSite {
    if (captureStacks) return new CallSite(op);
    let site = sharedSites.get(op);
    if (site === undefined) {
      site = new CallSite(op);
      sharedSites.set(op, site);
    }
    return site;
  }

  constructor(readonly op: string) {
    if (captureStacks) {
      const holder: { stack?: string } = {};
      Error.captureStackTrace(holder, CallSite);
      this.stack = holder.stack;
    }
  }

  /**
   * Turn `err` into a TrellisError for this operation; with a captured stack, its stack ends with
   * the submitting call's frames.
   */
  attach(err: unknown): TrellisError {
    const base =
      err instanceof TrellisError
        ? err.withDetails({ op: this.op })
        : new TrellisError('INTERNAL', `${this.op}: ${String(err)}`, { op: this.op, cause: err });
    if (this.stack !== undefined) {
      const frames = this.stack.split('\n').slice(1).join('\n');
      base.stack = `${base.name} [${base.code}]: ${base.message}\n${frames}`;
    }
    return base;
  }
}

/** Shorthand used by validators: build an error for `op`. */
export function invalid(code: TrellisErrorCode, op: string, message: string): TrellisError {
  return new TrellisError(code, `${op}: ${message}`, { op });
}
