// The same-host lane over real libfabric endpoints, with HostGpu (its lane operations on) standing
// in for CUDA: GPU → GPU writes between engines of one host are device copies followed by the
// immediates, never NIC writes. The same lane runs on GPUs in packages/cuda/test/gpu/visibility.mjs
// and write-bench.mjs.
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync, statSync, utimesSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { HOST_MAPPING_DEVICE, MrDesc } from '@trellis/core';
import { fillXorshift, HostGpu, outcome, PeerProcess } from '@trellis/core/conformance';
import { describe, expect, it } from 'vitest';
import type { EfaEngine, EfaEngineOptions } from '../src/index.js';
import { closeOpenEngines, openEngine } from './open-engines.js';

function engine(opts: EfaEngineOptions): Promise<EfaEngine> {
  return openEngine({ provider: 'tcp', nics: 2, ...opts });
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

describe('backend-efa: the same-host lane (HostGpu in place of CUDA)', () => {
  it('single, paged and scatter writes between CUDA regions are device copies; immediates exact, no NIC bytes', async () => {
    const gpu = new HostGpu(3, { lane: true });
    const a = await engine({ gpu: gpu.ops });
    const b = await engine({ gpu: gpu.ops });
    const c = await engine({ gpu: gpu.ops });
    const n = 1 << 20;
    const sp = gpu.alloc(n);
    fillXorshift(gpu.bytes(sp), 3);
    const bp = gpu.alloc(2 * n);
    const cp = gpu.alloc(n);
    const src = await a.registerMemory({ cuda: { ptr: sp, length: n, device: 0 } });
    // A region that starts inside its allocation: the lane adds the offset.
    const dst = await b.registerMemory({ cuda: { ptr: bp + 4096n, length: n, device: 0 } }, { remote: true });
    const dst2 = await c.registerMemory({ cuda: { ptr: cp, length: n, device: 0 } }, { remote: true });
    expect(dst.desc.ipc).toMatchObject({ device: 0, offset: 4096n });
    expect(MrDesc.parse(dst.desc.toString()).ipc).toEqual(dst.desc.ipc);
    // A local-only region has no keys and no lane.
    expect(src.desc.ipc).toBeUndefined();

    const single = { src, srcOffset: 100, length: n - 200, dst: dst.desc, dstOffset: 50, imm: 9 };
    await a.submitSingleWrite(single);
    await b.immCounter(9).wait(b.expectedImms({ kind: 'single', ...single }), { timeoutMs: 5000 });
    const got = gpu.bytes(bp).subarray(4096);
    expect(Buffer.compare(got.subarray(50, n - 150), gpu.bytes(sp).subarray(100, n - 100))).toBe(0);
    expect(got.subarray(0, 50).every((x) => x === 0)).toBe(true);

    const page = 4096;
    const paged = {
      src,
      srcPages: Uint32Array.of(5, 1, 7),
      srcStride: page,
      dst: dst2.desc,
      dstPages: Uint32Array.of(0, 9, 3),
      dstStride: page,
      pageBytes: page,
      imm: 10,
    };
    await a.submitPagedWrites(paged);
    await c.immCounter(10).wait(c.expectedImms({ kind: 'paged', ...paged }), { timeoutMs: 5000 });
    for (const [s, d] of [
      [5, 0],
      [1, 9],
      [7, 3],
    ] as const)
      expect(
        Buffer.compare(
          gpu.bytes(cp).subarray(d * page, (d + 1) * page),
          gpu.bytes(sp).subarray(s * page, (s + 1) * page),
        ),
      ).toBe(0);

    const scatter = {
      src,
      targets: [
        { dst: dst.desc, srcOffset: 0, dstOffset: n - 1000, length: 1000 },
        { dst: dst2.desc, srcOffset: 1000, dstOffset: n - 500, length: 500 },
      ],
      imm: 11,
    };
    await a.submitScatter(scatter);
    expect(b.expectedImms({ kind: 'scatter', ...scatter }, b.address)).toBe(1);
    expect(c.expectedImms({ kind: 'scatter', ...scatter }, c.address)).toBe(1);
    await b.immCounter(11).wait(1, { timeoutMs: 5000 });
    await c.immCounter(11).wait(1, { timeoutMs: 5000 });
    expect(Buffer.compare(got.subarray(n - 1000, n), gpu.bytes(sp).subarray(0, 1000))).toBe(0);
    expect(Buffer.compare(gpu.bytes(cp).subarray(n - 500), gpu.bytes(sp).subarray(1000, 1500))).toBe(0);

    // Counters: exactly the promised immediates, no more.
    expect([
      b.immCounter(9).total,
      c.immCounter(10).total,
      b.immCounter(11).total,
      c.immCounter(11).total,
    ]).toEqual([b.expectedImms({ kind: 'single', ...single }), 3, 1, 1]);
    const sa = a.stats();
    expect(sa.gpu).toMatchObject({
      laneWrites: 3,
      laneBytes: n - 200 + 3 * page + 1500,
      laneFallbacks: 0,
      stagedWrites: 0,
      stagedToHostBytes: 0,
    });
    // No data crossed a NIC; only the zero-byte immediates (one per work request) did.
    expect(sum(sa.nics.map((x) => x.bytesWritten))).toBe(0);
    expect(sum(sa.nics.map((x) => x.writeOps))).toBe(b.expectedImms({ kind: 'single', ...single }) + 3 + 2);
    expect(b.stats().gpu.stagedToDeviceBytes).toBe(0);
    expect(gpu.lane.opened).toBe(2); // each target allocation mapped once
    expect(sa.ops).toEqual({ submitted: 3, completed: 3, failed: 0, inFlight: 0, settledPosted: 0, held: 0 });
  });

  it('sameHostLane: false, another host, or an allocation that cannot be mapped: the write goes through the NICs', async () => {
    const gpu = new HostGpu(1, { lane: true });
    const a = await engine({ gpu: gpu.ops, sameHostLane: false });
    const a2 = await engine({ gpu: gpu.ops });
    const b = await engine({ gpu: gpu.ops });
    const n = 64 << 10;
    const sp = gpu.alloc(n);
    fillXorshift(gpu.bytes(sp), 5);
    const bp = gpu.alloc(n);
    const dst = await b.registerMemory({ cuda: { ptr: bp, length: n, device: 0 } }, { remote: true });
    const src = await a.registerMemory({ cuda: { ptr: sp, length: n, device: 0 } });
    await a.submitSingleWrite({ src, length: n, dst: dst.desc, imm: 1 });
    await b.immCounter(1).wait(b.expectedImms({ kind: 'single', src, length: n, dst: dst.desc, imm: 1 }));
    expect(Buffer.compare(gpu.bytes(bp), gpu.bytes(sp))).toBe(0);
    expect(a.stats().gpu).toMatchObject({ laneWrites: 0, stagedWrites: 1, stagedToHostBytes: n });

    // The same region as seen from another host: its host id differs, so no lane.
    const ipc = dst.desc.ipc!;
    const far = new MrDesc(dst.desc.owner, dst.desc.base, n, dst.desc.nics, true, undefined, {
      ...ipc,
      host: ipc.host.map((x) => x ^ 0xff),
    });
    const src2 = await a2.registerMemory({ cuda: { ptr: sp, length: n, device: 0 } });
    gpu.bytes(bp).fill(0);
    await a2.submitSingleWrite({ src: src2, length: n, dst: far, imm: 2 });
    await b.immCounter(2).wait(1);
    expect(Buffer.compare(gpu.bytes(bp), gpu.bytes(sp))).toBe(0);
    expect(a2.stats().gpu).toMatchObject({ laneWrites: 0, laneFallbacks: 0, stagedWrites: 1 });

    // A handle that names no live allocation cannot be mapped: counted as a fallback, and the
    // write takes the NICs (here it then lands in the staged mirror).
    const gone = new MrDesc(dst.desc.owner, dst.desc.base, n, dst.desc.nics, true, undefined, {
      ...ipc,
      handle: new Uint8Array(64),
    });
    await a2.submitSingleWrite({ src: src2, length: n, dst: gone, imm: 3 });
    await b.immCounter(3).wait(1);
    expect(a2.stats().gpu).toMatchObject({ laneWrites: 0, laneFallbacks: 1, stagedWrites: 2 });
  });

  it('an abort during the copy fails the write with ABORTED once the copy is done; a deadline at the deadline, its regions held until then; no immediate', async () => {
    const gpu = new HostGpu(40, { lane: true });
    const a = await engine({ gpu: gpu.ops });
    const b = await engine({ gpu: gpu.ops });
    const n = 4096;
    const src = await a.registerMemory({ cuda: { ptr: gpu.alloc(n), length: n, device: 0 } });
    const dst = await b.registerMemory(
      { cuda: { ptr: gpu.alloc(n), length: n, device: 0 } },
      { remote: true },
    );
    const ctl = new AbortController();
    const p = a.submitSingleWrite({ src, length: n, dst: dst.desc, imm: 4, signal: ctl.signal });
    ctl.abort();
    expect(await outcome(p)).toBe('ABORTED: submitSingleWrite: aborted by its AbortSignal');
    // Settled only once the copy had run: nothing of it touches memory after the promise settles.
    expect(gpu.lane.copies).toBe(1);
    await new Promise((r) => setTimeout(r, 100));
    expect(b.immCounter(4).total).toBe(0);
    expect(a.stats().gpu.laneWrites).toBe(0);
    expect(a.stats().ops).toEqual({
      submitted: 1,
      completed: 0,
      failed: 1,
      inFlight: 0,
      settledPosted: 0,
      held: 0,
    });

    // A deadline that passes during the copy (the stream is busy): TIMEOUT at the deadline, as for
    // a NIC write with work posted; the write's regions stay held until the copy is done, and no
    // immediate is raised.
    const release = gpu.holdLane();
    const t0 = performance.now();
    const q = a.submitSingleWrite({ src, length: n, dst: dst.desc, imm: 4, timeoutMs: 50 });
    expect(await outcome(q)).toBe(
      "TIMEOUT: submitSingleWrite: timed out after 50 ms; the same-host lane's copy was still running: it may still read the source and write the target until it is done (await engine.quiesce(peer) before reusing the source)",
    );
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(gpu.lane.copies).toBe(1); // this write's copy has not run
    expect(a.stats().ops).toEqual({
      submitted: 2,
      completed: 0,
      failed: 2,
      inFlight: 0,
      settledPosted: 1,
      held: 1,
    });
    const quiet = a.quiesce(b.address);
    release();
    await quiet;
    expect(gpu.lane.copies).toBe(2);
    expect(a.stats().ops).toMatchObject({ failed: 2, inFlight: 0, held: 0 });
    await new Promise((r) => setTimeout(r, 100));
    expect(b.immCounter(4).total).toBe(0);
  });

  it('many writes in flight keep their order on the lane stream; without an immediate a write resolves once its bytes are in place', async () => {
    const gpu = new HostGpu(2, { lane: true });
    const a = await engine({ gpu: gpu.ops });
    const b = await engine({ gpu: gpu.ops });
    const n = 64 << 10;
    const slots = 16;
    const sp = gpu.alloc(n * slots);
    fillXorshift(gpu.bytes(sp), 21);
    const dp = gpu.alloc(n * slots);
    const src = await a.registerMemory({ cuda: { ptr: sp, length: n * slots, device: 0 } });
    const dst = await b.registerMemory({ cuda: { ptr: dp, length: n * slots, device: 0 } }, { remote: true });
    // Each write lands in its own slot; each one's bytes are checked when its promise resolves.
    const checks = Array.from({ length: slots }, (_, i) =>
      a
        .submitSingleWrite({ src, srcOffset: i * n, length: n, dst: dst.desc, dstOffset: i * n })
        .then(() =>
          Buffer.compare(
            gpu.bytes(dp).subarray(i * n, (i + 1) * n),
            gpu.bytes(sp).subarray(i * n, (i + 1) * n),
          ),
        ),
    );
    expect(await Promise.all(checks)).toEqual(new Array(slots).fill(0));
    // Then the same slots again, with an immediate each: the target counts them all.
    gpu.bytes(dp).fill(0);
    const per = b.expectedImms({ kind: 'single', src, length: n, dst: dst.desc, imm: 5 });
    await Promise.all(
      Array.from({ length: slots }, (_, i) =>
        a.submitSingleWrite({ src, srcOffset: i * n, length: n, dst: dst.desc, dstOffset: i * n, imm: 5 }),
      ),
    );
    await b.immCounter(5).wait(per * slots, { timeoutMs: 5000 });
    expect(Buffer.compare(gpu.bytes(dp), gpu.bytes(sp))).toBe(0);
    expect(b.immCounter(5).total).toBe(per * slots);
    expect(a.stats().gpu).toMatchObject({
      laneWrites: 2 * slots,
      laneBytes: 2 * slots * n,
      laneFallbacks: 0,
    });
    expect(a.stats().ops).toEqual({
      submitted: 2 * slots,
      completed: 2 * slots,
      failed: 0,
      inFlight: 0,
      settledPosted: 0,
      held: 0,
    });
    // One copy per piece: a write cut into shards for the NICs is one copy on the lane.
    expect(gpu.lane.copies).toBe(2 * slots);
  });

  it('a copy that fails on the GPU settles its write with the CUDA error by its deadline; the engine still serves NIC writes', async () => {
    const gpu = new HostGpu(5, { lane: true });
    const a = await engine({ gpu: gpu.ops });
    const b = await engine({ gpu: gpu.ops });
    const n = 4096;
    const sp = gpu.alloc(n);
    const src = await a.registerMemory({ cuda: { ptr: sp, length: n, device: 0 } });
    const dst = await b.registerMemory(
      { cuda: { ptr: gpu.alloc(n), length: n, device: 0 } },
      { remote: true },
    );
    // The source allocation is freed behind the engine's back: the copy faults, the stream breaks
    // and its signal never comes (as cudaErrorIllegalAddress would on a GPU).
    gpu.free(sp);
    const t0 = performance.now();
    const p = a.submitSingleWrite({ src, length: n, dst: dst.desc, imm: 6, timeoutMs: 300 });
    expect(await outcome(p)).toMatch(
      /^PROVIDER_ERROR: submitSingleWrite: the same-host lane's copy failed: HostGpu: the lane stream failed \(cudaErrorIllegalAddress\): /,
    );
    expect(performance.now() - t0).toBeLessThan(3000);
    // The broken stream refuses new copies at once, before anything is armed.
    expect(await outcome(a.submitSingleWrite({ src, length: n, dst: dst.desc, imm: 6 }))).toMatch(
      /^PROVIDER_ERROR: .*the lane stream failed/,
    );
    expect(b.immCounter(6).total).toBe(0);
    // Host memory still moves (over the host lane, its immediates through the NICs).
    const hs = await a.registerMemory(n);
    hs.buffer!.fill(7);
    const hd = await b.registerMemory(n, { remote: true });
    await a.submitSingleWrite({ src: hs, length: n, dst: hd.desc, imm: 8 });
    await b.immCounter(8).wait(b.expectedImms({ kind: 'single', src: hs, length: n, dst: hd.desc, imm: 8 }));
    expect(hd.buffer!.every((x) => x === 7)).toBe(true);
    expect(a.stats().ops).toEqual({
      submitted: 3,
      completed: 1,
      failed: 2,
      inFlight: 0,
      settledPosted: 0,
      held: 0,
    });
  });

  it('CUDA regions are checked against their allocation before anything registers', async () => {
    const gpu = new HostGpu(1, { lane: true });
    const a = await engine({ gpu: gpu.ops });
    const p = gpu.alloc(8192);
    const reg = (cuda: { ptr: bigint; length: number; device: number }) => a.registerMemory({ cuda });
    await expect(reg({ ptr: 0x1234n, length: 16, device: 0 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(
        /^registerMemory: cuda\.ptr 0x1234 is not CUDA device memory \(HostGpu: 0x1234 is in no allocation\); pass a pointer from cudaMalloc or a CUDA IPC import$/,
      ),
    });
    await expect(reg({ ptr: p, length: 16, device: 1 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: `registerMemory: cuda.ptr 0x${p.toString(16)} is memory of CUDA device 0, not of cuda.device 1`,
    });
    await expect(reg({ ptr: p + 4096n, length: 4097, device: 0 })).rejects.toMatchObject({
      code: 'OUT_OF_RANGE',
      message:
        'registerMemory: cuda.length 4097 runs past the allocation that holds cuda.ptr (4096 bytes from the pointer to its end)',
    });
    expect(a.stats().regions).toBe(0);
    await expect(reg({ ptr: p + 4096n, length: 4096, device: 0 })).resolves.toMatchObject({ path: 'staged' });
    await expect(engine({ gpu: gpu.ops, sameHostLane: 'yes' as unknown as boolean })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: 'createEngine: sameHostLane must be a boolean, got "yes"',
    });
  });
});

describe('backend-efa: the same-host lane for host memory (shared-memory regions, the copy thread)', () => {
  const mine = () => readdirSync('/dev/shm').filter((f) => f.startsWith(`trellis-${process.pid}-`));

  it('single, paged and scatter writes between host regions are one copy each; immediates exact; no NIC bytes', async () => {
    const a = await engine({});
    const b = await engine({});
    const n = 1 << 20;
    const src = await a.registerMemory(n);
    fillXorshift(src.buffer!, 7);
    const dst = await b.registerMemory(2 * n, { remote: true });
    // Remote regions the engine allocates are shared-memory objects named in their descriptor.
    expect(dst.desc.ipc?.device).toBe(HOST_MAPPING_DEVICE);
    expect(MrDesc.parse(dst.desc.toString()).ipc).toEqual(dst.desc.ipc);
    expect(src.desc.ipc).toBeUndefined();
    expect(b.stats().hostLane).toMatchObject({ sharedRegions: 1, sharedAllocFailures: 0 });

    const single = { src, srcOffset: 3, length: n - 3, dst: dst.desc, dstOffset: n, imm: 1 };
    await a.submitSingleWrite(single);
    const per = b.expectedImms({ kind: 'single', ...single });
    await b.immCounter(1).wait(per, { timeoutMs: 5000 });
    expect(Buffer.compare(dst.buffer!.subarray(n, 2 * n - 3), src.buffer!.subarray(3))).toBe(0);
    expect(dst.buffer!.subarray(0, n).every((x) => x === 0)).toBe(true);

    const paged = {
      src,
      srcPages: Uint32Array.of(9, 0, 4),
      srcStride: 4096,
      dst: dst.desc,
      dstPages: Uint32Array.of(1, 2, 3),
      dstStride: 4096,
      pageBytes: 4096,
      imm: 2,
    };
    await a.submitPagedWrites(paged);
    await b.immCounter(2).wait(3, { timeoutMs: 5000 });
    for (const [s, d] of [
      [9, 1],
      [0, 2],
      [4, 3],
    ] as const)
      expect(
        Buffer.compare(
          dst.buffer!.subarray(d * 4096, (d + 1) * 4096),
          src.buffer!.subarray(s * 4096, (s + 1) * 4096),
        ),
      ).toBe(0);
    const scatter = {
      src,
      targets: [
        { dst: dst.desc, srcOffset: 0, dstOffset: 100_000, length: 777 },
        { dst: dst.desc, srcOffset: 5000, dstOffset: 200_000, length: 1 },
      ],
      imm: 3,
    };
    await a.submitScatter(scatter);
    await b
      .immCounter(3)
      .wait(b.expectedImms({ kind: 'scatter', ...scatter }, b.address), { timeoutMs: 5000 });
    expect(Buffer.compare(dst.buffer!.subarray(100_000, 100_777), src.buffer!.subarray(0, 777))).toBe(0);
    expect(dst.buffer![200_000]).toBe(src.buffer![5000]);

    const sa = a.stats();
    expect(sa.hostLane).toEqual({
      writes: 3,
      bytes: n - 3 + 3 * 4096 + 778,
      fallbacks: 0,
      sharedRegions: 0,
      sharedAllocFailures: 0,
    });
    expect(sum(sa.nics.map((x) => x.bytesWritten))).toBe(0);
    expect(sum(sa.nics.map((x) => x.writeOps))).toBe(per + 3 + 2);
    expect([b.immCounter(1).total, b.immCounter(2).total, b.immCounter(3).total]).toEqual([per, 3, 2]);
    expect(sa.ops).toEqual({ submitted: 3, completed: 3, failed: 0, inFlight: 0, settledPosted: 0, held: 0 });
  });

  it('lane writes are counted as they settle (a batch too: hostLane agrees with ops when it resolves) and are busy polled for', async () => {
    // A 20 ms window: every copy's signal comes inside it, however late the timers of a loaded machine.
    const a = await engine({ busyPollUs: 20_000 });
    const b = await engine({});
    const src = await a.registerMemory(1 << 16);
    fillXorshift(src.buffer!, 11);
    const dst = await b.registerMemory(1 << 16, { remote: true });
    const write = (i: number, len: number, imm?: number) => ({
      kind: 'single' as const,
      src,
      srcOffset: i * len,
      length: len,
      dst: dst.desc,
      dstOffset: i * len,
      imm,
    });
    for (const mergeWrites of [true, false]) {
      dst.buffer!.fill(0);
      const before = a.stats();
      const results = await a.submitBatch(
        Array.from({ length: 20 }, (_, i) => write(i, 1000)),
        { mergeWrites },
      );
      // At once, before any other turn of the loop: every write counted, in both places.
      const after = a.stats();
      expect(results.failed).toBe(0);
      expect(after.ops.completed - before.ops.completed).toBe(20);
      expect(after.hostLane!.writes - before.hostLane!.writes).toBe(20);
      expect(after.hostLane!.bytes - before.hostLane!.bytes).toBe(20_000);
      expect(Buffer.compare(dst.buffer!.subarray(0, 20_000), src.buffer!.subarray(0, 20_000))).toBe(0);
    }
    // Single writes awaited one at a time: the copy's signal is awaited, so the loop busy polls for
    // it (a lane write used to count as an armed trigger, which is not).
    const ev0 = a.stats().events!;
    for (let i = 0; i < 30; i++) await a.submitSingleWrite(write(i % 16, 4096));
    const ev = a.stats().events!;
    expect(ev.busyPolls - ev0.busyPolls).toBeGreaterThan(0);
    expect(ev.polled - ev0.polled).toBeGreaterThan(0);
    expect(a.stats().hostLane!.writes).toBe(40 + 30);
    expect(Buffer.compare(dst.buffer!, src.buffer!)).toBe(0);
  });

  it('a target region unregistered after the writer mapped it: REMOTE_ACCESS before anything is posted; a fresh one works', async () => {
    const a = await engine({});
    const b = await engine({});
    const src = await a.registerMemory(4096);
    src.buffer!.fill(5);
    const old = await b.registerMemory(4096, { remote: true });
    await a.submitSingleWrite({ src, length: 4096, dst: old.desc, imm: 1 });
    await b.immCounter(1).wait(b.expectedImms({ kind: 'single', src, length: 4096, dst: old.desc, imm: 1 }));
    const before = sum(a.stats().nics.map((x) => x.writeOps));
    await old.unregister();
    expect(await outcome(a.submitSingleWrite({ src, length: 4096, dst: old.desc, imm: 1 }))).toBe(
      'REMOTE_ACCESS: submitSingleWrite: the target region was unregistered (its owner on this host released it); get a fresh descriptor from the peer',
    );
    expect(sum(a.stats().nics.map((x) => x.writeOps))).toBe(before);
    const fresh = await b.registerMemory(4096, { remote: true });
    await a.submitSingleWrite({ src, length: 4096, dst: fresh.desc, imm: 2 });
    await b
      .immCounter(2)
      .wait(b.expectedImms({ kind: 'single', src, length: 4096, dst: fresh.desc, imm: 2 }));
    expect(fresh.buffer!.every((x) => x === 5)).toBe(true);
    expect(a.stats().ops).toEqual({
      submitted: 3,
      completed: 2,
      failed: 1,
      inFlight: 0,
      settledPosted: 0,
      held: 0,
    });
  });

  it('a target region unregistered before the writer ever used it: REMOTE_ACCESS before anything is posted, no fallback to the provider', async () => {
    // shm on libfabric 1.17 never answers a write with a stale key: the provider must not get it.
    for (const provider of ['shm', 'tcp'] as const) {
      const a = await engine({ provider });
      const b = await engine({ provider });
      const src = await a.registerMemory(4096);
      src.buffer!.fill(6);
      const gone = await b.registerMemory(4096, { remote: true });
      // The name ends with the device of the /dev/shm it was made on (this one).
      const name = new TextDecoder().decode(gone.desc.ipc!.handle).replace(/\0+$/, '');
      expect(name).toMatch(
        new RegExp(`^/trellis-${process.pid}-[0-9a-f]{16}-${statSync('/dev/shm').dev.toString(16)}$`),
      );
      await gone.unregister();
      const before = a.stats();
      const msg =
        "REMOTE_ACCESS: submitSingleWrite: the target region is gone from this host's /dev/shm (its owner unregistered it, or exited); get a fresh descriptor from the peer";
      expect(await outcome(a.submitSingleWrite({ src, length: 4096, dst: gone.desc, imm: 3 }))).toBe(msg);
      // Again (the failed mapping is kept), and in a batch beside a good write, which lands.
      expect(await outcome(a.submitSingleWrite({ src, length: 4096, dst: gone.desc, imm: 3 }))).toBe(msg);
      const good = await b.registerMemory(4096, { remote: true });
      const r = await a.submitBatch([
        { kind: 'single', src, length: 4096, dst: gone.desc, imm: 3 },
        { kind: 'single', src, length: 4096, dst: good.desc, imm: 4 },
      ]);
      expect(r.failed).toBe(1);
      expect(r.errors[0]?.code).toBe('REMOTE_ACCESS');
      expect(r.errors[1]).toBeUndefined();
      await b
        .immCounter(4)
        .wait(b.expectedImms({ kind: 'single', src, length: 4096, dst: good.desc, imm: 4 }), {
          timeoutMs: 5000,
        });
      expect(good.buffer!.every((x) => x === 6)).toBe(true);
      const after = a.stats();
      expect(after.hostLane!.fallbacks - before.hostLane!.fallbacks).toBe(0);
      expect(after.hostLane!.writes - before.hostLane!.writes).toBe(1);
      expect(b.immCounter(3).value).toBe(0);
      expect(after.ops.failed - before.ops.failed).toBe(3);
      expect(after.ops.completed - before.ops.completed).toBe(1);
      // Nothing went to the provider but the good write's immediates.
      expect(sum(after.nics.map((x) => x.writeOps)) - sum(before.nics.map((x) => x.writeOps))).toBe(
        b.expectedImms({ kind: 'single', src, length: 4096, dst: good.desc, imm: 4 }),
      );
    }
  });

  it('a descriptor claiming more than the shared object holds goes through the NICs; sameHostLane: false shares nothing; names are gone after close', async () => {
    const a = await engine({});
    const b = await engine({});
    const src = await a.registerMemory(8192);
    src.buffer!.fill(9);
    const dst = await b.registerMemory(8192, { remote: true });
    const ipc = dst.desc.ipc!;
    // The same object, claimed longer than it is (a forged length must never send a copy past it).
    const long = new MrDesc(dst.desc.owner, dst.desc.base, 8192, dst.desc.nics, false, undefined, {
      ...ipc,
      offset: 4096n,
    });
    await a.submitSingleWrite({ src, length: 4096, dst: long, imm: 1 });
    await b.immCounter(1).wait(b.expectedImms({ kind: 'single', src, length: 4096, dst: long, imm: 1 }));
    expect(dst.buffer!.subarray(0, 4096).every((x) => x === 9)).toBe(true);
    expect(a.stats().hostLane).toMatchObject({ writes: 0, fallbacks: 1 });
    expect(sum(a.stats().nics.map((x) => x.bytesWritten))).toBe(4096);

    const c = await engine({ sameHostLane: false });
    const plain = await c.registerMemory(4096, { remote: true });
    expect(plain.desc.ipc).toBeUndefined();
    expect(c.stats().hostLane).toMatchObject({ sharedRegions: 0 });
    expect(mine().length).toBeGreaterThan(0);
    await closeOpenEngines();
    expect(mine()).toEqual([]);
  });
});

describe('backend-efa: the same-host lane to an owner that died', () => {
  it('a SIGKILLed owner: writes with and without an immediate fail PEER_LOST before anything is copied, the peer is lost once; a live owner is still written', async () => {
    const engineModule = fileURLToPath(new URL('../dist/index.js', import.meta.url));
    const owner = await PeerProcess.start(engineModule, { provider: 'tcp', nics: 1 });
    try {
      const a = await openEngine({ provider: 'tcp' });
      const live = await openEngine({ provider: 'tcp' });
      const lost: string[] = [];
      a.onPeerLost((p, why) => lost.push(`${p.toString()} ${why.code}`));
      const { desc } = await owner.call<{ desc: string }>('register', {
        name: 'kv',
        size: 1 << 16,
        remote: true,
      });
      const dst = MrDesc.parse(desc);
      expect(dst.ipc?.device).toBe(HOST_MAPPING_DEVICE); // a shared region: the lane takes it
      const src = await a.registerMemory(1 << 16);
      fillXorshift(src.buffer!, 3);
      const liveDst = await live.registerMemory(4096, { remote: true });
      // The writer maps the region with its first write; both kinds land.
      await a.submitSingleWrite({ src, length: 4096, dst });
      await a.submitSingleWrite({ src, length: 4096, dst, dstOffset: 4096, imm: 1 });
      const copies = a.stats().hostLane!.writes;
      expect(copies).toBe(2);
      owner.kill();
      await owner.exited;
      // The object outlives its owner (nobody unlinked it) and stays mapped here: without the owner
      // check the copy would "land" in memory nobody reads.
      const noImm = await outcome(a.submitSingleWrite({ src, length: 4096, dst, dstOffset: 8192 }));
      expect(noImm).toBe(
        'PEER_LOST: submitSingleWrite: the target process on this host died (its shared region has no owner any more); the peer is lost',
      );
      expect(lost).toEqual([`${dst.owner.toString()} PEER_LOST`]);
      // Lost now: refused at once, with or without an immediate, nothing copied.
      for (const imm of [undefined, 2]) {
        const o = await outcome(a.submitSingleWrite({ src, length: 4096, dst, imm }));
        expect(o).toMatch(
          /^PEER_LOST: submitSingleWrite: the peer .* was lost \(submitSingleWrite: the target process on this host died/,
        );
      }
      expect(a.stats().hostLane!.writes).toBe(copies);
      expect(lost.length).toBe(1);
      // Another owner on this host is unaffected.
      await a.submitSingleWrite({ src, length: 4096, dst: liveDst.desc, imm: 3 });
      await live.immCounter(3).wait(1, { timeoutMs: 5000 });
      expect(Buffer.compare(liveDst.buffer!, src.buffer!.subarray(0, 4096))).toBe(0);
    } finally {
      await owner.stop();
    }
  });
});

describe('backend-efa: shared-memory objects of owners that died are removed', () => {
  it('a process that exits with its engine open (process.exit) unlinks its shared regions on the way out', () => {
    const index = fileURLToPath(new URL('../dist/index.js', import.meta.url));
    const script = `
      const m = await import(${JSON.stringify(index)});
      const e = await m.createEngine({ provider: 'tcp' });
      await e.registerMemory(1 << 20, { remote: true });
      await e.registerMemory(4096, { remote: true });
      const { readdirSync } = await import('node:fs');
      process.stdout.write(String(readdirSync('/dev/shm').filter((n) => n.startsWith('trellis-' + process.pid + '-')).length));
      process.exit(3);
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.status).toBe(3);
    expect(r.stdout.trim()).toBe('2'); // two regions while it ran
    expect(readdirSync('/dev/shm').filter((n) => n.startsWith(`trellis-${r.pid}-`))).toEqual([]);
  });

  it("a process that exits with shm engines open (process.exit, as on SIGTERM) unlinks libfabric's endpoint regions on the way out", () => {
    const index = fileURLToPath(new URL('../dist/index.js', import.meta.url));
    const script = `
      const m = await import(${JSON.stringify(index)});
      const a = await m.createEngine({ provider: 'shm' });
      const b = await m.createEngine({ provider: 'shm', nics: 2 });
      await a.registerMemory(1 << 20, { remote: true });
      const { readdirSync } = await import('node:fs');
      process.stdout.write(String(readdirSync('/dev/shm').filter((n) => n.startsWith('trellis_' + process.pid + '_')).length));
      process.on('SIGTERM', () => process.exit(143));
      process.kill(process.pid, 'SIGTERM');
      setInterval(() => {}, 1000);
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.status).toBe(143);
    // One region per endpoint: an engine of one NIC and one of two.
    expect(Number(r.stdout.trim())).toBeGreaterThanOrEqual(3);
    expect(readdirSync('/dev/shm').filter((n) => n.startsWith(`trellis_${r.pid}_`))).toEqual([]);
  });

  it('a SIGKILLed owner leaves its regions in /dev/shm; the next process to create one removes them, never a live owner', async () => {
    const dist = new URL('../dist/index.js', import.meta.url).href;
    // A process that registers a remote region, prints its name, then waits to be killed.
    const owner = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const { createEngine } = await import(${JSON.stringify(dist)});
         const e = await createEngine({ provider: 'tcp' });
         const r = await e.registerMemory(1 << 20, { remote: true });
         const h = r.desc.ipc.handle; console.log(new TextDecoder().decode(h.subarray(0, h.indexOf(0))));
         setInterval(() => {}, 1000);`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const [line] = (await once(createInterface({ input: owner.stdout! }), 'line')) as [string];
    const dead = `/dev/shm${line}`;
    expect(existsSync(dead)).toBe(true);
    // A live engine's region must survive the sweep.
    const live = await engine({});
    const kept = await live.registerMemory(4096, { remote: true });
    const keptPath = `/dev/shm${sharedNameOf(kept.desc)}`;
    owner.kill('SIGKILL');
    await once(owner, 'exit');
    expect(existsSync(dead)).toBe(true); // nobody unlinked it
    // Old enough for the sweep (objects younger than a minute are left alone), like the live one.
    const old = new Date(Date.now() - 120_000);
    utimesSync(dead, old, old);
    utimesSync(keptPath, old, old);
    // A new process creates its first shared region: the sweep runs first.
    const sweeper = spawnSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const { createEngine } = await import(${JSON.stringify(dist)});
         const e = await createEngine({ provider: 'tcp' });
         await e.registerMemory(4096, { remote: true });
         await e.close();`,
      ],
      { encoding: 'utf8' },
    );
    expect(sweeper.status).toBe(0);
    expect(existsSync(dead)).toBe(false);
    expect(existsSync(keptPath)).toBe(true);
  });
});

function sharedNameOf(d: MrDesc): string {
  const h = d.ipc!.handle;
  return new TextDecoder().decode(h.subarray(0, h.indexOf(0)));
}
