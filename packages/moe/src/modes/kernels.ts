// What the two GPU modes (GPU proxy, GPU-driven) pass their kernels alike: the count-and-pack
// arguments, the layout kernel's call that turns a round's arrived rows into its result, and the
// gather kernel's weighted sum. Argument building and kernel launches; buffers belong to the caller.
import type { MoePackArgs, MoeProxyKernels } from '../device.js';
import type { ExpertBlocks, Protocol, Round } from '../protocol.js';
import type { DispatchInput, DispatchResult, MoeMemory } from '../types.js';

/** The count-and-pack arguments both GPU modes share. @internal */
export function packArgs(
  p: Protocol,
  x: DispatchInput<MoeMemory>,
  b: { ids: bigint; scratch: bigint; rowAt: bigint },
): MoePackArgs {
  const c = p.c;
  return {
    ids: x.topkIds,
    idsDev: b.ids,
    topk: c.topk,
    experts: c.numExperts,
    local: p.localExperts,
    scratch: b.scratch,
    tokens: x.tokens as bigint,
    tokenBytes: p.tokenBytes,
    scales: p.scaleCount ? (x.scales as bigint) : 0n,
    scaleBytes: p.scaleCount * 4,
    rowStride: p.rowStride,
    combineOff: p.layout.combine,
    outRow: p.outRow,
    rowAt: b.rowAt,
  };
}

/**
 * Lay out what arrived in `region` per local expert with the layout kernel (the proxy's and the
 * GPU-driven modes share it), and return the round's result. @internal
 */
export function unpackOnDevice(
  p: Protocol,
  k: MoeProxyKernels,
  device: number,
  r: Round,
  table: Float64Array,
  tableDev: bigint,
  region: bigint,
  out: { expertX: bigint; expertScales: bigint },
  { tokensPerExpert, expertOffsets }: ExpertBlocks,
  srcBase?: bigint,
): DispatchResult<MoeMemory> {
  const c = p.c;
  k.unpack(device, {
    table,
    tableDev,
    W: c.worldSize,
    L: p.localExperts,
    rows: r.rows,
    region,
    privOff: p.layout.priv,
    P: c.maxPrivateTokens,
    rowStride: p.rowStride,
    tokenBytes: p.tokenBytes,
    scaleBytes: p.scaleCount * 4,
    expertX: out.expertX,
    expertScales: out.expertScales,
    ...(srcBase !== undefined ? { srcBase } : {}),
  });
  return {
    tokensPerExpert,
    expertOffsets,
    expertX: out.expertX,
    ...(p.scaleCount ? { expertScales: out.expertScales } : {}),
  };
}

/**
 * Sum each token's rows that came back in `region` (at `b.rowAt`, written by the pack kernel),
 * weighted by the round's top-k weights in fp32, with the gather kernel; returns `b.out`. @internal
 */
export function gatherOnDevice(
  p: Protocol,
  k: MoeProxyKernels,
  device: number,
  region: bigint,
  b: { rowAt: bigint; weights: bigint; out: bigint },
  r: Round,
  accumulate: 'out' | 'fp32',
): bigint {
  const c = p.c;
  k.gather(device, {
    region,
    rowAt: b.rowAt,
    weights: r.weights,
    weightsDev: b.weights,
    topk: c.topk,
    hidden: c.hidden,
    rowFp32: c.outDtype === 'fp32',
    out: b.out,
    outFp32: accumulate === 'fp32' || c.outDtype === 'fp32',
  });
  return b.out;
}
