// Streams, events and graphs of @trellis/cuda: what is refused before the runtime is called (every
// machine), and, where no GPU is visible, that creating one fails with the reason. On GPUs they
// are exercised by @trellis/moe's test/gpu/stream.mjs (graph capture and replay, events timing).
import { TrellisError } from '@trellis/core';
import { describe, expect, it } from 'vitest';
import {
  CudaEvent,
  CudaGraph,
  CudaStream,
  DeviceBuffer,
  enablePeerAccess,
  launchIncrementOnGo,
  memcpyDevice,
  noGpuReason,
  quantizeE4m3,
  synchronize,
} from '../src/index.js';

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

  it('DeviceBuffer, synchronize, the test kernel and the quantiser refuse bad arguments before calling CUDA', async () => {
    const msg = (f: () => unknown): string => {
      try {
        f();
        return 'none';
      } catch (e) {
        return e instanceof TrellisError ? `${e.code}: ${e.message}` : String(e);
      }
    };
    const h = '00'.repeat(64);
    expect(msg(() => DeviceBuffer.alloc(1024, { device: -1 }))).toBe(
      'INVALID_ARGUMENT: DeviceBuffer.alloc: device must be a GPU ordinal >= 0, got -1',
    );
    expect(code(() => DeviceBuffer.alloc(1024, { device: 1.5 }))).toBe('INVALID_ARGUMENT');
    expect(code(() => DeviceBuffer.alloc(0))).toBe('INVALID_ARGUMENT');
    expect(msg(() => DeviceBuffer.import(h, { length: -1 }))).toBe(
      'INVALID_ARGUMENT: DeviceBuffer.import: length must be a positive integer, got -1',
    );
    expect(code(() => DeviceBuffer.import(h, { length: 0 }))).toBe('INVALID_ARGUMENT');
    expect(msg(() => DeviceBuffer.import(h, { length: 64, offset: -1 }))).toBe(
      'INVALID_ARGUMENT: DeviceBuffer.import: offset must be a non-negative integer, got -1',
    );
    expect(msg(() => DeviceBuffer.import(h, { length: 64, device: -1 }))).toBe(
      'INVALID_ARGUMENT: DeviceBuffer.import: device must be a GPU ordinal >= 0, got -1',
    );
    expect(msg(() => DeviceBuffer.import(h, undefined as unknown as { length: number }))).toMatch(
      /^INVALID_ARGUMENT: DeviceBuffer\.import: pass \{length\}/,
    );
    expect(msg(() => DeviceBuffer.import(undefined as unknown as string, { length: 64 }))).toMatch(
      /^INVALID_ARGUMENT: DeviceBuffer\.import: the handle must be a string of hex digits/,
    );
    expect(code(() => DeviceBuffer.import('zz'.repeat(64), { length: 64 }))).toBe('INVALID_ARGUMENT');
    expect(msg(() => DeviceBuffer.import(`0163${h}`, { length: 64 }))).toBe(
      "INVALID_ARGUMENT: DeviceBuffer.import: a 66-byte handle is PyTorch's only when it starts with version byte 2, this one starts with 1",
    );
    expect(msg(() => DeviceBuffer.import('00'.repeat(10), { length: 64 }))).toBe(
      "INVALID_ARGUMENT: DeviceBuffer.import: a CUDA IPC handle is 64 bytes (128 hex digits; PyTorch's is 66), got 10",
    );
    expect(msg(() => synchronize(-1))).toBe(
      'INVALID_ARGUMENT: synchronize: device must be a GPU ordinal >= 0, got -1',
    );
    expect(code(() => launchIncrementOnGo(-1, 1n, 2n, 1))).toBe('INVALID_ARGUMENT');
    expect(msg(() => launchIncrementOnGo(0, 0 as unknown as bigint, 2n, 1))).toMatch(
      /^INVALID_ARGUMENT: launchIncrementOnGo: wordDevicePtr must be a device pointer/,
    );
    expect(msg(() => launchIncrementOnGo(0, 1n, 2n, -1))).toBe(
      'INVALID_ARGUMENT: launchIncrementOnGo: n must be a non-negative integer, got -1',
    );
    expect(code(() => quantizeE4m3(-1, 1n, 0, 0, 1, 16, 16, 2n, 3n))).toBe('INVALID_ARGUMENT');
    expect(msg(() => CudaEvent.import('zz'))).toBe(
      "INVALID_ARGUMENT: CudaEvent.import: a CUDA IPC event handle is 64 bytes (128 hex digits), got 'zz' (not hex digits)",
    );
    const rejected = async (p: Promise<unknown>) =>
      p.then(
        () => 'none',
        (e: unknown) => (e instanceof TrellisError ? `${e.code}: ${e.message}` : String(e)),
      );
    expect(await rejected(memcpyDevice(-1, new BigUint64Array(3)))).toBe(
      'INVALID_ARGUMENT: memcpyDevice: device must be a GPU ordinal >= 0, got -1',
    );
    expect(await rejected(memcpyDevice(0, new BigUint64Array(2)))).toBe(
      'INVALID_ARGUMENT: memcpyDevice: triples must be a BigUint64Array of (destination, source, bytes) triples, got 2 values (not a multiple of 3)',
    );
    expect(await rejected(memcpyDevice(0, [1, 2, 3] as unknown as BigUint64Array))).toMatch(
      /^INVALID_ARGUMENT: memcpyDevice: triples must be a BigUint64Array/,
    );
    if (reason)
      // No GPU here: a well-formed call fails with the reason, as every GPU call does.
      expect(await rejected(memcpyDevice(0, new BigUint64Array(3)))).toMatch(/^UNSUPPORTED: memcpyDevice: /);
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

  it.skipIf(reason === undefined)(
    `without a GPU, a wrapped stream's calls fail naming the method called (${reason ?? ''})`,
    async () => {
      const s = CudaStream.wrap(0n);
      expect(code(() => s.done())).toMatch(/^(UNSUPPORTED|PROVIDER_ERROR)$/);
      // drained() polls done(): its error said CudaStream.done.
      const e = await s.drained().then(
        () => undefined,
        (x: Error) => x,
      );
      expect(e?.message).toMatch(/^CudaStream\.drained: /);
    },
  );
});
