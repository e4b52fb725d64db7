// The public shapes of MoeAllToAll: its config, what dispatch and combine take and return, and its
// GPU placement. Types only (alltoall.ts re-exports them); no code, no imports but device.ts's.
import type { MoeDeviceOps } from './device.js';

/** Element types of tokens and expert outputs. */
export type MoeDType = 'fp8' | 'bf16' | 'fp32';

/** What {@link MoeAllToAll.create} takes. */
export interface MoeConfig {
  worldSize: number;
  rank: number;
  /** Ranks per node (NVLink domain). The CPU reference moves every byte through the engine. */
  nodeSize: number;
  /** Experts in all; rank `r` holds experts `[r × E/W, (r+1) × E/W)`. */
  numExperts: number;
  topk: number;
  hidden: number;
  /** Most tokens any rank dispatches in one round. */
  maxTokensPerRank: number;
  inDtype: MoeDType;
  outDtype: Exclude<MoeDType, 'fp8'>;
  /** Per-token fp32 scales for fp8 tokens, one per `scaleBlock` elements of hidden (default 128). */
  scales?: boolean;
  scaleBlock?: number;
  /** Rows each peer may put in its private slot at a receiver before the overflow write. Default 64. */
  maxPrivateTokens?: number;
  /**
   * First immediate value of this instance (4 consecutive values, an integer in 0..2^32-5: the
   * last value, 2^32-1, is the engines' heartbeat). Default 0x4d4f0000.
   */
  immBase?: number;
  /** Deadline of each phase's waits. Default 30000 ms. */
  timeoutMs?: number;
  /**
   * Drive the network side of every round from the native proxy thread (`native/proxy.cc`):
   * routes, private, overflow and combine writes and the closing barrier are posted through an
   * engine port with no JavaScript turn between them; JavaScript packs, then waits once per phase.
   * Needs a native engine (backend-efa, backend-verbs) and the package's native build. Default false.
   */
  proxy?: boolean;
  /** Proxy: µs it spins on a go word before sleeping (default 200, at most 1000000). */
  proxySpinUs?: number;
}

/** Where tokens and expert rows live: host memory, or CUDA memory (device pointers as bigint). */
export type MoeMemory = 'host' | 'device';
/** A buffer of the memory kind: a `Uint8Array` on the host, a device pointer on the GPU. */
export type MoeBuffer<M extends MoeMemory> = M extends 'device' ? bigint : Uint8Array;
/** Scales: a `Float32Array` on the host, a device pointer (fp32 values) on the GPU. */
export type MoeScales<M extends MoeMemory> = M extends 'device' ? bigint : Float32Array;

/** Dispatch input: this rank's tokens and their routing (the routing is host memory in both kinds). */
export interface DispatchInput<M extends MoeMemory = 'host'> {
  /** `numTokens × hidden` elements of `inDtype`, row-major. */
  tokens: MoeBuffer<M>;
  /** fp8 with scales: `numTokens × hidden/scaleBlock`. */
  scales?: MoeScales<M>;
  /**
   * `numTokens × topk` expert ids (-1: no expert for that slot). An id may repeat among a token's
   * slots: the token then goes to that expert once per slot, and combine adds each slot's output
   * times that slot's weight.
   */
  topkIds: Int32Array;
  /**
   * `numTokens × topk` weights, used by combine: read when the round's combine runs, not copied at
   * dispatch (tokens, scales and ids are) — leave the array unchanged until then.
   */
  topkWeights: Float32Array;
}

/**
 * What dispatch returns: this rank's experts' tokens, contiguous per expert. On the device the
 * buffers belong to the instance and hold until the next round's dispatch.
 */
export interface DispatchResult<M extends MoeMemory = 'host'> {
  /** Tokens received per local expert. */
  tokensPerExpert: Int32Array;
  /** Row offset of each local expert's block in `expertX`. */
  expertOffsets: Int32Array;
  /** Every local expert's tokens back to back: `Σ tokensPerExpert × hidden` elements of `inDtype`. */
  expertX: MoeBuffer<M>;
  /** fp8 with scales: the rows' scales, in the same order. */
  expertScales?: MoeScales<M>;
}

/** GPU placement of a {@link MoeAllToAll}: its buffers are CUDA memory on `device`. */
export interface MoeDeviceOptions {
  /** The device work (`cudaMoeOps()` of this package). */
  ops: MoeDeviceOps;
  device: number;
  /**
   * GPU-driven NVLink: every rank on one node (`nodeSize === worldSize`), each rank's region mapped
   * into the others through CUDA IPC. Kernels count and pack rows straight into the receivers'
   * private slots, write their routes there and raise a flag; receivers' kernels wait for the
   * flags; combine rows return the same way. The engine carries nothing per round. Every row has a
   * private place (`maxPrivateTokens` is taken as `maxTokensPerRank × topk`: no overflow step).
   * Every rank must use it. Default false.
   */
  gpuDriven?: boolean;
}

/**
 * Phases to run: split dispatch or combine into send and receive to overlap them with compute.
 * A phase left out runs (default true): `{send: false}` receives only, `{recv: false}` sends only,
 * and `{recv: true}` alone runs both.
 */
export interface Phases {
  send?: boolean;
  recv?: boolean;
}
