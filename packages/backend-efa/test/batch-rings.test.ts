// A batch's writes (submitBatch) wake the event loop once, when the batch's last write settles: the
// worker reports the successes before it quietly, and they are taken with the last one's ring.
// Quiet records still ring within arrivalBatchUs, when the worker goes idle, or — where a member's
// own deadline passes while another member holds the batch — at once, with the member's true
// outcome. The engines under test here spin for a minute after activity (idleSpinUs) and have
// arrivalBatchUs of a minute, so that nothing but the ring under test hands records to JavaScript.
import { type MrDesc, type MrHandle, type TransferRequest, TrellisError } from '@trellis/core';
import { assertBytes, pattern, sleep } from '@trellis/core/conformance';
import { describe, expect, it } from 'vitest';
import { expectKv, hungPeer } from './hung-peer.js';
import { openEngine } from './open-engines.js';

const MINUTE_US = 60_000_000;

/** Poll `done` every millisecond until it holds; fail after `ms`. */
async function until(done: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await sleep(1);
  }
}

/** A writer whose worker rings only for what is under test: no idle wake-up, no lazy one for a minute, no busy polling. */
function quietWriter(provider: 'shm' | 'tcp') {
  return openEngine({
    provider,
    sameHostLane: false,
    arrivalBatchUs: MINUTE_US,
    idleSpinUs: MINUTE_US,
    busyPollUs: 0,
  });
}

/** The single write of slot `i` (`size` bytes at i × size) from `src` to the same place in `dst`. */
function slot(src: MrHandle, dst: MrDesc, i: number, size: number, imm?: number): TransferRequest {
  return { kind: 'single', src, srcOffset: i * size, length: size, dst, dstOffset: i * size, imm };
}

describe('a batch rings the event loop once', () => {
  for (const provider of ['shm', 'tcp'] as const)
    for (const merged of [false, true])
      it(`${provider}: 32 writes of one submitBatch ${merged ? '(one operation)' : '(mergeWrites: false, 32 operations)'} ring once, when the last settles; every byte lands, every write settles once`, async () => {
        const rx = await openEngine({ provider });
        const tx = await quietWriter(provider);
        const n = 32;
        const size = 4096;
        const dst = await rx.registerMemory(n * size, { remote: true });
        const src = await tx.registerMemory(n * size);
        src.buffer!.set(pattern(n * size, 3));
        // The first write to the peer (its address and connection) is not the batch's.
        await tx.submitSingleWrite({ src, length: 64, dst: dst.desc });
        const arrived = rx.immCounter(7);
        const before = { ...tx.stats().events! };
        const batch = Array.from({ length: n }, (_, i) => slot(src, dst.desc, i, size, 7));
        const r = await tx.submitBatch(batch, { mergeWrites: merged });
        expect(r).toEqual({ failed: 0, errors: new Array(n).fill(undefined) });
        const after = tx.stats().events!;
        expect(after.rung - before.rung).toBe(1);
        expect(after.polled - before.polled).toBe(0);
        expect(after.busyPolls - before.busyPolls).toBe(0);
        await arrived.wait(n, { timeoutMs: 20_000 });
        expect([arrived.value, arrived.total]).toEqual([0, n]);
        assertBytes(dst.buffer!, src.buffer!, 'the 32 batched writes');
        expect(tx.stats().ops).toMatchObject({
          submitted: n + 1,
          completed: n + 1,
          failed: 0,
          inFlight: 0,
          held: 0,
        });
      }, 60_000);

  it('tcp: a member written while another waits on a hung peer settles at its own deadline, with its true outcome (no ring before then)', async () => {
    const rx = await openEngine({ provider: 'tcp' });
    const tx = await quietWriter('tcp');
    const size = 4096;
    // The hung peer's write is larger than socket buffers hold: tcp cannot complete it while the
    // target is stopped (a small one can complete once the kernel has taken it).
    const big = 32 << 20;
    const { hung, stalled } = await hungPeer(big);
    const dst = await rx.registerMemory(size, { remote: true });
    const src = await tx.registerMemory(size + big);
    src.buffer!.set(pattern(size + big, 9));
    // Both peers connected before the batch.
    await tx.submitSingleWrite({ src, length: 64, dst: dst.desc });
    await tx.submitSingleWrite({ src, length: 64, dst: stalled });
    hung.pause(true);
    const base = tx.stats();
    let settled = false;
    const batch = tx
      .submitBatch([
        { kind: 'single', src, length: size, dst: dst.desc, imm: 4, timeoutMs: 300 },
        { kind: 'single', src, srcOffset: size, length: big, dst: stalled, imm: 4 },
      ])
      .finally(() => {
        settled = true;
      });
    // The healthy write lands at once; its completion is reported quietly (the batch's other write
    // is still posted) and reaches JavaScript only when its deadline asks the worker for it.
    await rx.immCounter(4).wait(1, { timeoutMs: 20_000 });
    await sleep(100);
    expect(tx.stats().ops.completed).toBe(base.ops.completed);
    expect(tx.stats().events!.rung).toBe(base.events!.rung);
    await until(() => tx.stats().ops.completed === base.ops.completed + 1);
    expect(tx.stats().ops).toMatchObject({ failed: base.ops.failed, inFlight: 1 });
    expect(settled).toBe(false);
    assertBytes(dst.buffer!, src.buffer!.subarray(0, size), 'the healthy peer');
    // Resumed, the hung peer takes its write; the batch settles with both written.
    hung.pause(false);
    const r = await batch;
    expect(r).toEqual({ failed: 0, errors: [undefined, undefined] });
    await expectKv(hung, src.buffer!.subarray(size));
    expect(tx.stats().ops).toMatchObject({
      submitted: base.ops.submitted + 2,
      completed: base.ops.completed + 2,
      failed: base.ops.failed,
      inFlight: 0,
    });
  }, 60_000);

  it('tcp: a member the target refuses (a stale descriptor) fails with REMOTE_ACCESS; the others, reported quietly, settle written', async () => {
    const rx = await openEngine({ provider: 'tcp' });
    const tx = await quietWriter('tcp');
    // The refused write's peer is another engine: tcp drops the connection a key was refused on,
    // failing what else was posted on it (CONNECTION_RESET), which is not what is tested here.
    const other = await openEngine({ provider: 'tcp' });
    const size = 4096;
    const dst = await rx.registerMemory(3 * size, { remote: true });
    const stale = await other.registerMemory(size, { remote: true });
    const src = await tx.registerMemory(4 * size);
    src.buffer!.set(pattern(4 * size, 5));
    await tx.submitSingleWrite({ src, length: 64, dst: dst.desc });
    await tx.submitSingleWrite({ src, length: 64, dst: stale.desc });
    // unregister() resolves once other's worker has closed the registration: the key is refused.
    await stale.unregister();
    const write = (i: number) => slot(src, dst.desc, i, size);
    const r = await tx.submitBatch([
      write(0),
      write(1),
      { kind: 'single', src, srcOffset: 3 * size, length: size, dst: stale.desc },
      write(2),
    ]);
    expect(r.errors.map((e) => e?.code)).toEqual([undefined, undefined, 'REMOTE_ACCESS', undefined]);
    expect(r.failed).toBe(1);
    expect([r.errors[0], r.errors[1], r.errors[3]]).toEqual([undefined, undefined, undefined]);
    expect(r.errors[2]).toBeInstanceOf(TrellisError);
    expect(r.errors[2]!.code).toBe('REMOTE_ACCESS');
    assertBytes(dst.buffer!, src.buffer!.subarray(0, 3 * size), 'the three written');
    expect(tx.stats().ops).toMatchObject({ submitted: 6, completed: 5, failed: 1, inFlight: 0 });
  }, 60_000);
  it("tcp: writes sharing a destination travel as one operation; past the batch deadline at a hung peer each fails TIMEOUT, counted per request, and the healthy peer's land", async () => {
    const rx = await openEngine({ provider: 'tcp' });
    const tx = await quietWriter('tcp');
    const size = 4096;
    // Two writes larger than socket buffers hold: tcp cannot complete them while the target is stopped.
    const big = 16 << 20;
    const { hung, stalled } = await hungPeer(2 * big);
    const dst = await rx.registerMemory(4 * size, { remote: true });
    const src = await tx.registerMemory(4 * size + 2 * big);
    src.buffer!.set(pattern(4 * size + 2 * big, 10));
    await tx.submitSingleWrite({ src, length: 64, dst: dst.desc });
    await tx.submitSingleWrite({ src, length: 64, dst: stalled });
    hung.pause(true);
    const base = tx.stats().ops;
    const arrived = rx.immCounter(9).wait(4, { timeoutMs: 20_000 });
    const stuck = (k: number): TransferRequest => ({
      kind: 'single',
      src,
      srcOffset: 4 * size + k * big,
      length: big,
      dst: stalled,
      dstOffset: k * big,
      imm: 9,
      shards: 1,
    });
    // Interleaved: four small writes to the healthy peer (one group), two to the hung one (another).
    const r = await tx.submitBatch(
      [slot(src, dst.desc, 0, size, 9), stuck(0), slot(src, dst.desc, 1, size, 9), stuck(1)].concat(
        slot(src, dst.desc, 2, size, 9),
        slot(src, dst.desc, 3, size, 9),
      ),
      { timeoutMs: 500 },
    );
    expect(r.failed).toBe(2);
    expect(r.errors.map((e) => e?.code)).toEqual([
      undefined,
      'TIMEOUT',
      undefined,
      'TIMEOUT',
      undefined,
      undefined,
    ]);
    for (const e of [r.errors[1]!, r.errors[3]!]) {
      expect(e).toBeInstanceOf(TrellisError);
      expect(e.op).toBe('submitBatch');
      expect(e.message).toMatch(/timed out after 500 ms/);
    }
    await arrived;
    assertBytes(dst.buffer!, src.buffer!.subarray(0, 4 * size), 'the four to the healthy peer');
    // Settled at the deadline with their work still posted: held (counted per request) until the
    // provider lets go of it, which it does once the peer runs again and takes the bytes.
    expect(tx.stats().ops).toMatchObject({
      submitted: base.submitted + 6,
      completed: base.completed + 4,
      failed: base.failed + 2,
      settledPosted: base.settledPosted + 2,
      held: 2,
      inFlight: 0,
    });
    hung.pause(false);
    await until(() => tx.stats().ops.held === 0);
    await expectKv(hung, src.buffer!.subarray(4 * size));
  }, 60_000);
});
