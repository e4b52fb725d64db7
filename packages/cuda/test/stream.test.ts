// Streams, events and graphs of @trellis/cuda: what is refused before the runtime is called (every
// machine), and, where no GPU is visible, that creating one fails with the reason. On GPUs they
// are exercised by @trellis/moe's test/gpu/stream.mjs (graph capture and replay, events timing).
import { TrellisError } from '@trellis/core';
import { describe, expect, it } from 'vitest';
import { CudaEvent, CudaGraph, CudaStream, enablePeerAccess, noGpuReason } from '../src/index.js';

const reason = noGpuReason();
function code(f: () => unknown): string {
  try {
    f();
    return 'none';
  } catch (e) {
    return e instanceof TrellisError ? e.code : String(e);
  }
}

describe('CudaStream, CudaEvent, CudaGraph', () => {
  it('refuse bad arguments before calling CUDA', () => {
    expect(code(() => CudaStream.create({ device: -1 }))).toBe('INVALID_ARGUMENT');
    expect(code(() => CudaStream.wrap(-1n))).toBe('INVALID_ARGUMENT');
    expect(code(() => CudaStream.wrap(1 as unknown as bigint))).toBe('INVALID_ARGUMENT');
    expect(code(() => CudaEvent.import('abcd'))).toBe('INVALID_ARGUMENT');
    expect(code(() => CudaEvent.import('zz'.repeat(64)))).toBe('INVALID_ARGUMENT');
    expect(code(() => CudaEvent.create({ device: 1.5 }))).toBe('INVALID_ARGUMENT');
    expect(code(() => CudaGraph.capture(CudaStream.wrap(0n), () => {}))).toBe('INVALID_ARGUMENT');
    expect(code(() => CudaGraph.capture({ handle: 5n } as unknown as CudaStream, () => {}))).toBe(
      'INVALID_ARGUMENT',
    );
    expect(code(() => enablePeerAccess(0, -2))).toBe('INVALID_ARGUMENT');
    expect(code(() => enablePeerAccess(0, 0))).toBe('none'); // a device reaches itself
  });

  it('a wrapped stream is never destroyed by Trellis; a destroyed one is refused', () => {
    const s = CudaStream.wrap(0n);
    s.destroy();
    expect(code(() => s.synchronize())).toBe('CLOSED');
  });

  it.skipIf(reason === undefined)(
    `without a GPU, creating one fails with the reason (${reason ?? ''})`,
    () => {
      expect(code(() => CudaStream.create())).toMatch(/^(UNSUPPORTED|PROVIDER_ERROR)$/);
      expect(code(() => CudaEvent.create())).toMatch(/^(UNSUPPORTED|PROVIDER_ERROR)$/);
    },
  );
});
