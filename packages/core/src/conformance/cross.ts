// The cross-process conformance suite: engines in separate OS processes (conformance/peer.ts)
// written to, killed (SIGKILL), paused (SIGSTOP) and handed bad descriptors, with every byte and
// error code checked. Backends run it with defineCrossProcessSuite.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, it } from 'vitest';
import { NetAddr } from '../addr.js';
import { MrDesc } from '../desc.js';
import { TrellisError } from '../errors.js';
import { countImms, lanesBetween } from '../imms.js';
import type { TransferEngine } from '../types.js';
import { PeerProcess } from './peer.js';
import { fillXorshift } from './util.js';

/** What {@link defineCrossProcessSuite} needs. */
export interface CrossProcessTarget {
  /** Shown in the vitest names. */
  name: string;
  /** Absolute path of an ESM module exporting `createEngine(options): Promise<TransferEngine>` (the backend's built entry). */
  engineModule: string;
  /** Options for `createEngine`, the same in this process and in the peer process (JSON-serialisable). */
  options: Record<string, unknown>;
  /**
   * Every operation to a killed peer process must settle within this many ms (the backend's
   * documented bound, e.g. its engine deadline plus slack).
   */
  killBoundMs: number;
  /** Cases this target cannot run, with the reason shown in the skip. */
  skip?: Partial<Record<string, string>>;
}

/** The id of the case where one peer dies while another is written (targets that cannot isolate skip it by this id). */
export const KILLED_PEER_ISOLATION_CASE =
  'a peer SIGKILLed mid-stream while a healthy peer is written: the healthy one sees no error, every operation settles once';

/** The id of the bad-descriptor case (targets whose provider cannot refuse a key skip it by this id). */
export const BAD_DESCRIPTOR_CASE =
  'a forged key, a forged length and a stale descriptor: REMOTE_ACCESS for that write only; later writes work; a healthy peer sees nothing';

/** The id of the case where messages wait for a dead peer while others go to a healthy one. */
export const MESSAGE_ISOLATION_CASE =
  "messages to a peer SIGKILLed before they were sent hold back no message to a healthy peer: those arrive in order before the dead peer's settle";

/** The id of the case where one peer hangs (SIGSTOP) while another is written. */
export const HUNG_PEER_CASE =
  'a peer that hangs (SIGSTOP) holds only its own window: the healthy peer is written meanwhile, the hung one settles TIMEOUT, and resumed it is written again';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** The messages `p` received since the last call, with their sender (hex data). */
const receivedBy = async (p: PeerProcess) =>
  (await p.call<{ messages: Array<{ from: string; data: string }> }>('received')).messages;

/**
 * Write to a healthy peer over and over until `stopped()`, counting successes with `ok`. The first
 * failure is recorded in `errors` and ends the loop (after a pause), so a failing engine cannot spin
 * it on rejected promises and starve the test's own timers.
 */
async function healthyLoop(
  write: () => Promise<void>,
  h: { stopped: () => boolean; ok: () => void; errors: string[] },
): Promise<void> {
  while (!h.stopped()) {
    try {
      await write();
      h.ok();
    } catch (e) {
      h.errors.push(e instanceof TrellisError ? `${e.code}: ${e.message}` : String(e));
      await new Promise((r) => setTimeout(r, 50));
      return;
    }
  }
}

/**
 * The conformance cases that need two OS processes: writes in both directions verified by hash,
 * messages with their sender, and a peer process killed mid-transfer. Descriptors and addresses
 * cross the process boundary as text over a pipe, as they would between hosts.
 */
export function defineCrossProcessSuite(target: CrossProcessTarget): void {
  describe(`conformance across processes: ${target.name}`, () => {
    let cleanup: Array<() => Promise<void>> = [];
    afterEach(async () => {
      for (const c of cleanup.reverse()) await c();
      cleanup = [];
    });

    const local = async (extra: Record<string, unknown> = {}): Promise<TransferEngine> => {
      const mod = (await import(pathToFileURL(target.engineModule).href)) as {
        createEngine(o: unknown): Promise<TransferEngine>;
      };
      const e = await mod.createEngine({ ...target.options, ...extra });
      cleanup.push(() => e.close());
      return e;
    };
    const peer = async (): Promise<PeerProcess> => {
      const p = await PeerProcess.start(target.engineModule, target.options);
      cleanup.push(() => p.stop());
      return p;
    };
    const test = (id: string, fn: () => Promise<void>, timeout = 60_000) => {
      const reason = target.skip?.[id];
      if (reason !== undefined) it.skip(`${id} — skipped: ${reason}`, () => {});
      else it(id, fn, timeout);
    };

    test('single, paged, scatter and prepared writes land byte-exact in the other process, counted by immediates', async () => {
      const engine = await local();
      const p = await peer();
      const size = 4 << 20;
      const { desc } = await p.call<{ desc: string }>('register', { name: 'kv', size, remote: true });
      const dst = MrDesc.parse(desc);
      assert.equal(dst.owner.toString(), p.address);
      const src = await engine.registerMemory(size);
      fillXorshift(src.buffer!, 11);
      const expected = new Uint8Array(size);
      const lanes = lanesBetween(engine.nics, dst.owner.nics.length);
      await engine.submitSingleWrite({ src, srcOffset: 3, length: 1 << 20, dst, dstOffset: 5, imm: 1 });
      expected.set(src.buffer!.subarray(3, 3 + (1 << 20)), 5);
      const n = 1000;
      const srcPages = Uint32Array.from({ length: n }, (_, i) => i);
      const dstPages = Uint32Array.from({ length: n }, (_, i) => n - 1 - i);
      await engine.submitPagedWrites({
        src,
        srcPages,
        srcStride: 1024,
        srcOffset: 1 << 20,
        dst,
        dstPages,
        dstStride: 1024,
        dstOffset: 2 << 20,
        pageBytes: 1024,
        imm: 1,
      });
      for (let i = 0; i < n; i++)
        expected.set(
          src.buffer!.subarray((1 << 20) + i * 1024, (1 << 20) + (i + 1) * 1024),
          (2 << 20) + (n - 1 - i) * 1024,
        );
      const targets = [
        { dst, srcOffset: 0, dstOffset: 3 << 20, length: 100_000 },
        { dst, srcOffset: 200_000, dstOffset: (3 << 20) + 200_000, length: 300_000 },
      ];
      await engine.submitScatter({ src, targets, imm: 1, routing: 'bytes' });
      for (const t of targets)
        expected.set(src.buffer!.subarray(t.srcOffset, t.srcOffset + t.length), t.dstOffset);
      // 200 prepared writes of 1000 bytes in one post: sources in reverse order, one arrival each.
      const triples = new Float64Array(3 * 200);
      for (let i = 0; i < 200; i++) triples.set([(199 - i) * 7919, (15 << 18) + i * 1300, 1000], 3 * i);
      await engine.prepareWrites({ src, dst, imm: 1 }).post(triples);
      for (let i = 0; i < 200; i++)
        expected.set(src.buffer!.subarray((199 - i) * 7919, (199 - i) * 7919 + 1000), (15 << 18) + i * 1300);
      const imms =
        countImms({ kind: 'single', length: 1 << 20, imm: 1 }, lanes) +
        countImms({ kind: 'paged', pages: n, imm: 1 }, lanes) +
        countImms({ kind: 'scatter', lengths: [100_000, 300_000], routing: 'bytes', imm: 1 }, lanes) +
        200;
      const { total } = await p.call<{ total: number }>('wait', { imm: 1, n: imms, timeoutMs: 20_000 });
      assert.equal(total, imms);
      const { sha256 } = await p.call<{ sha256: string }>('sha256', { name: 'kv' });
      assert.equal(sha256, sha(expected));
    });

    test('the other process writes into this one; messages go both ways with their sender', async () => {
      const engine = await local();
      const p = await peer();
      const dst = await engine.registerMemory(1 << 20, { remote: true });
      await p.call('register', { name: 'src', size: 1 << 20, seed: 5 });
      const { imms } = await p.call<{ imms: number }>('write', {
        name: 'src',
        dst: dst.desc.toString(),
        length: 1 << 20,
        imm: 77,
      });
      await engine.immCounter(77).wait(imms, { timeoutMs: 20_000 });
      const want = new Uint8Array(1 << 20);
      fillXorshift(want, 5);
      assert.equal(sha(dst.buffer!), sha(want));

      const got = new Promise<{ from: NetAddr; data: Uint8Array }>((r) => {
        void engine.submitRecvs({ maxBytes: 1024, count: 2 }, r);
      });
      await p.call('send', { to: engine.address.toString(), hex: 'cafe01' });
      const m = await got;
      assert.equal(Buffer.from(m.data).toString('hex'), 'cafe01');
      assert.equal(m.from.toString(), p.address);
      await engine.submitSend(NetAddr.parse(p.address), Uint8Array.of(0xbe, 0xef));
      let messages: Array<{ from: string; data: string }> = [];
      for (let i = 0; i < 400 && messages.length === 0; i++) {
        messages = (await p.call<{ messages: typeof messages }>('received')).messages;
        if (!messages.length) await new Promise((r) => setTimeout(r, 10));
      }
      assert.deepEqual(messages, [{ from: engine.address.toString(), data: 'beef' }]);
    });

    test('a peer process killed mid-transfer: every pending operation settles within the bound, none hangs', async () => {
      const engine = await local();
      const p = await PeerProcess.start(target.engineModule, target.options);
      const { desc } = await p.call<{ desc: string }>('register', {
        name: 'kv',
        size: 16 << 20,
        remote: true,
      });
      const dst = MrDesc.parse(desc);
      const src = await engine.registerMemory(16 << 20);
      const outcomes: string[] = [];
      const ops: Promise<void>[] = [];
      const settle = (op: Promise<void>) =>
        op.then(
          () => void outcomes.push('resolved'),
          (e: unknown) => void outcomes.push(e instanceof TrellisError ? e.code : 'non-trellis'),
        );
      const prepared = engine.prepareWrites({ src, dst, imm: 1 });
      const quarter = Float64Array.of(0, 0, 4 << 20, 4 << 20, 4 << 20, 4 << 20);
      for (let i = 0; i < 200; i++) {
        ops.push(settle(engine.submitSingleWrite({ src, length: 16 << 20, dst, imm: 1 })));
        // Every tenth, a prepared post of two 4 MiB writes too.
        if (i % 10 === 0) ops.push(settle(prepared.post(quarter)));
      }
      p.kill();
      const t0 = Date.now();
      await Promise.all(ops);
      const ms = Date.now() - t0;
      assert.equal(outcomes.length, 220);
      for (const o of outcomes)
        assert.ok(
          ['resolved', 'PEER_LOST', 'CONNECTION_RESET', 'TIMEOUT', 'PROVIDER_ERROR'].includes(o),
          `outcome ${o}`,
        );
      assert.ok(
        outcomes.some((o) => o !== 'resolved'),
        'the kill hit operations in flight',
      );
      assert.ok(ms < target.killBoundMs, `settled in ${ms} ms, bound ${target.killBoundMs} ms`);
      assert.equal(engine.stats().ops.inFlight, 0);
      await p.exited;
    });

    test(KILLED_PEER_ISOLATION_CASE, async () => {
      const engine = await local();
      const doomed = await PeerProcess.start(target.engineModule, target.options);
      const good = await peer();
      const lost: string[] = [];
      engine.onPeerLost((p) => lost.push(p.toString()));
      const size = 4 << 20;
      const reg = async (p: PeerProcess) =>
        MrDesc.parse((await p.call<{ desc: string }>('register', { name: 'kv', size, remote: true })).desc);
      const dying = await reg(doomed);
      const healthy = await reg(good);
      const src = await engine.registerMemory(size);
      fillXorshift(src.buffer!, 3);
      let stop = false;
      let healthyWrites = 0;
      const healthyErrors: string[] = [];
      const background = healthyLoop(
        () => engine.submitSingleWrite({ src, length: 256 << 10, dst: healthy, imm: 4 }),
        {
          stopped: () => stop,
          ok: () => void healthyWrites++,
          errors: healthyErrors,
        },
      );
      const outcomes: string[] = [];
      const doomedOps: Promise<void>[] = [];
      for (let i = 0; i < 100; i++)
        doomedOps.push(
          engine.submitSingleWrite({ src, length: size, dst: dying, imm: 1 }).then(
            () => void outcomes.push('resolved'),
            (e: unknown) => void outcomes.push(e instanceof TrellisError ? e.code : 'non-trellis'),
          ),
        );
      doomed.kill();
      const t0 = Date.now();
      await Promise.all(doomedOps);
      const ms = Date.now() - t0;
      // The healthy peer keeps being written for a while after the death.
      const after = healthyWrites;
      const t1 = Date.now();
      while (healthyWrites < after + 20 && Date.now() - t1 < 10_000)
        await new Promise((r) => setTimeout(r, 10));
      stop = true;
      await background;
      assert.equal(outcomes.length, 100, 'every write to the killed peer settled once');
      for (const o of outcomes)
        assert.ok(
          ['resolved', 'PEER_LOST', 'CONNECTION_RESET', 'TIMEOUT', 'PROVIDER_ERROR'].includes(o),
          `outcome ${o}`,
        );
      assert.ok(ms < target.killBoundMs, `settled in ${ms} ms, bound ${target.killBoundMs} ms`);
      assert.deepEqual(healthyErrors, [], 'the healthy peer saw no error');
      // Only the dead peer can have been written off, and only after it failed to answer a probe.
      assert.ok(
        lost.every((a) => a === doomed.address),
        `lost: ${lost.join(', ')}`,
      );
      const peers = engine.stats().peers;
      assert.equal(peers.lost, lost.length);
      if (outcomes.includes('PEER_LOST')) {
        assert.deepEqual(lost, [doomed.address], 'a PEER_LOST outcome marks its peer lost');
        assert.ok(
          peers.probes > peers.probesAnswered,
          `a probe of the dead peer went unanswered (${JSON.stringify(peers)})`,
        );
      }
      assert.ok(
        healthyWrites >= after + 20,
        `healthy writes went on after the death (${after} → ${healthyWrites})`,
      );
      const per = engine.expectedImms({ kind: 'single', src, length: 256 << 10, dst: healthy, imm: 4 });
      const st = await good.call<{ total: number }>('wait', {
        imm: 4,
        n: per * healthyWrites,
        timeoutMs: 10_000,
      });
      assert.equal(st.total, per * healthyWrites);
      assert.equal(engine.stats().ops.inFlight, 0);
      await doomed.exited;
    });

    test(MESSAGE_ISOLATION_CASE, async () => {
      const engine = await local();
      const doomed = await PeerProcess.start(target.engineModule, target.options);
      const good = await peer();
      const dead = NetAddr.parse(doomed.address);
      const healthy = NetAddr.parse(good.address);
      doomed.kill();
      await doomed.exited;
      // In the order they settle: the dead peer's messages (never taken: a connection that cannot
      // be made, a queue nobody drains) and the healthy peer's, each sent once the one before it
      // was delivered. A message to the dead peer must not hold back the others until its deadline.
      const settled: string[] = [];
      const doomedSends = Array.from({ length: 4 }, (_, i) =>
        engine.submitSend(dead, Uint8Array.of(0xd0 + i)).then(
          () => void settled.push('dead:resolved'),
          (e: unknown) => void settled.push(`dead:${e instanceof TrellisError ? e.code : String(e)}`),
        ),
      );
      for (let i = 0; i < 20; i++) {
        await engine.submitSend(healthy, Uint8Array.of(0xa0 + i));
        settled.push('healthy');
      }
      await Promise.all(doomedSends);
      const dead4 = settled.filter((s) => s.startsWith('dead:'));
      assert.equal(dead4.length, 4, 'every message to the dead peer settled once');
      for (const s of dead4)
        assert.ok(
          [
            'dead:resolved',
            'dead:PEER_LOST',
            'dead:CONNECTION_RESET',
            'dead:TIMEOUT',
            'dead:PROVIDER_ERROR',
          ].includes(s),
          `outcome ${s}`,
        );
      // A dead peer's message that waited for its deadline settled after every healthy one.
      const firstTimeout = settled.indexOf('dead:TIMEOUT');
      if (firstTimeout >= 0)
        assert.equal(
          settled.slice(firstTimeout).filter((s) => s === 'healthy').length,
          0,
          `a healthy message waited for the dead peer's deadline: ${settled.join(' ')}`,
        );
      const messages: Array<{ from: string; data: string }> = [];
      for (let i = 0; i < 400 && messages.length < 20; i++) {
        messages.push(...(await receivedBy(good)));
        if (messages.length < 20) await new Promise((r) => setTimeout(r, 10));
      }
      assert.deepEqual(
        messages,
        Array.from({ length: 20 }, (_, i) => ({
          from: engine.address.toString(),
          data: (0xa0 + i).toString(16),
        })),
      );
      assert.equal(engine.stats().ops.inFlight, 0);
    });

    test(HUNG_PEER_CASE, async () => {
      // A window of 64 work requests per NIC, so the hung peer's writes could take all of it; its
      // own window (a quarter) is what leaves the rest to the healthy peer.
      const engine = await local({ maxInflight: 64 });
      const hung = await peer();
      const good = await peer();
      const size = 1 << 20;
      const reg = async (p: PeerProcess) =>
        MrDesc.parse((await p.call<{ desc: string }>('register', { name: 'kv', size, remote: true })).desc);
      // Through the provider (a same-host lane copy needs nothing from the target process).
      const viaNic = (d: MrDesc) => new MrDesc(d.owner, d.base, d.length, d.nics, d.staged, d.parts);
      const stalled = viaNic(await reg(hung));
      const healthy = viaNic(await reg(good));
      const src = await engine.registerMemory(size);
      fillXorshift(src.buffer!, 11);
      await engine.submitSingleWrite({ src, length: 64 << 10, dst: stalled });
      hung.pause(true);
      try {
        const outcomes: string[] = [];
        const hungOps: Promise<void>[] = [];
        for (let i = 0; i < 200; i++)
          hungOps.push(
            engine.submitSingleWrite({ src, length: 64 << 10, dst: stalled, imm: 3 }).then(
              () => void outcomes.push('resolved'),
              (e: unknown) => void outcomes.push(e instanceof TrellisError ? e.code : 'non-trellis'),
            ),
          );
        // While the hung peer's writes wait for their deadline, the healthy peer's are taken: each
        // must land before a deadline shorter than the engine's (a healthy write queued behind the
        // hung ones would wait for theirs and fail TIMEOUT).
        const engineDeadline = (target.options.opTimeoutMs as number | undefined) ?? 30_000;
        const healthyErrors: string[] = [];
        for (let i = 0; i < 20; i++)
          await engine
            .submitSingleWrite({
              src,
              length: 64 << 10,
              dst: healthy,
              imm: 4,
              timeoutMs: Math.max(500, engineDeadline - 1000),
            })
            .catch(
              (e: unknown) =>
                void healthyErrors.push(e instanceof TrellisError ? `${e.code}: ${e.message}` : String(e)),
            );
        assert.deepEqual(healthyErrors, [], 'the healthy peer was written while the other hung');
        await Promise.all(hungOps);
        assert.equal(outcomes.length, 200, 'every write to the hung peer settled once');
        // TIMEOUT by the deadline, or what the transport reports first (an RC queue pair's retries
        // run out: the software model's NIC stops with its process, where a real NIC would not).
        // Whether any completes depends on the provider: one run on libfabric 2.x's shm saw all 200
        // resolve (other runs stalled until their deadline) — plausibly its CMA path, which copies
        // into the stopped process's memory without it. Either way the healthy peer was served.
        for (const o of outcomes)
          assert.ok(['resolved', 'TIMEOUT', 'CONNECTION_RESET'].includes(o), `outcome ${o}`);
      } finally {
        hung.pause(false);
      }
      // Resumed, the peer is written again.
      let o = 'TIMEOUT';
      for (let i = 0; i < 5 && o !== 'ok'; i++)
        o = await engine
          .submitSingleWrite({ src, length: 64 << 10, dst: stalled, imm: 5, timeoutMs: 10_000 })
          .then(
            () => 'ok',
            (e: unknown) => (e instanceof TrellisError ? e.code : 'non-trellis'),
          );
      assert.equal(o, 'ok', 'a write to the resumed peer');
      const per = engine.expectedImms({ kind: 'single', src, length: 64 << 10, dst: healthy, imm: 4 });
      const st = await good.call<{ total: number }>('wait', { imm: 4, n: 20 * per, timeoutMs: 10_000 });
      assert.equal(st.total, 20 * per);
      assert.equal(engine.stats().ops.inFlight, 0);
      assert.equal(engine.stats().peers.lost, 0);
    });

    test(BAD_DESCRIPTOR_CASE, async () => {
      const engine = await local();
      const bad = await peer();
      const good = await peer();
      const lost: string[] = [];
      engine.onPeerLost((p) => lost.push(p.toString()));
      const size = 1 << 20;
      const src = await engine.registerMemory(size);
      fillXorshift(src.buffer!, 5);
      const reg = async (p: PeerProcess, name: string) =>
        MrDesc.parse((await p.call<{ desc: string }>('register', { name, size, remote: true })).desc);
      // Through the provider: the lane section is left out, so the keys are what is checked.
      const viaNic = (d: MrDesc, nics = d.nics, length = d.length) =>
        new MrDesc(d.owner, d.base, length, nics, d.staged, d.parts);
      const target = viaNic(await reg(bad, 'kv'));
      const healthy = await reg(good, 'kv');
      // The forged-at peer writes back to this engine all along, through its provider: on tcp a
      // refusal resets the pair's one connection, and the writes it cuts off in this direction
      // must not make that peer write this (live) engine off as lost.
      const back = await engine.registerMemory(size, { remote: true });
      await bad.call('register', { name: 'src', size: 64 << 10, seed: 9 });
      await bad.call('loopStart', {
        name: 'src',
        length: 64 << 10,
        dst: back.desc.toString(),
        imm: 11,
        viaNic: true,
      });
      const backOk = async () =>
        (await bad.call<{ outcomes: Record<string, number> }>('loopCount', {})).outcomes.OK ?? 0;
      // The healthy peer is written all along; it must never see an error.
      let stop = false;
      let healthyWrites = 0;
      const healthyErrors: string[] = [];
      const background = healthyLoop(
        () => engine.submitSingleWrite({ src, length: 64 << 10, dst: healthy, imm: 7 }),
        {
          stopped: () => stop,
          ok: () => void healthyWrites++,
          errors: healthyErrors,
        },
      );
      const outcome = (p: Promise<void>) =>
        p.then(
          () => 'ok',
          (e: unknown) => (e instanceof TrellisError ? e.code : 'non-trellis'),
        );
      const write = (dst: MrDesc, offset = 0) =>
        outcome(
          engine.submitSingleWrite({ src, length: 4096, dst, dstOffset: offset, imm: 9, timeoutMs: 10_000 }),
        );
      // A valid write first, then each bad one followed by valid writes until one lands again
      // (the ones cut off with a connection the refusal tore down may fail CONNECTION_RESET).
      assert.equal(await write(target), 'ok');
      const recovered = async () => {
        for (let i = 0; i < 50; i++) {
          const o = await write(target);
          if (o === 'ok') return;
          assert.equal(o, 'CONNECTION_RESET', 'a valid write after a refused one');
          await new Promise((r) => setTimeout(r, 20));
        }
        assert.fail('valid writes to the peer never worked again');
      };
      const forgedKey = viaNic(
        target,
        target.nics.map((k) => ({ addr: k.addr, rkey: k.rkey ^ 0x5a5a00n })),
      );
      assert.equal(await write(forgedKey), 'REMOTE_ACCESS', 'forged rkey');
      await recovered();
      // The region claimed twice as long as it is: the write past its end is refused.
      assert.equal(
        await write(viaNic(target, target.nics, 2 * size), size),
        'REMOTE_ACCESS',
        'forged length',
      );
      await recovered();
      // Unregistered and registered again: the old descriptor is stale.
      await bad.call('unregister', { name: 'kv' });
      const fresh = viaNic(await reg(bad, 'kv2'));
      assert.equal(await write(target), 'REMOTE_ACCESS', 'stale descriptor');
      let o = 'CONNECTION_RESET';
      for (let i = 0; i < 50 && o === 'CONNECTION_RESET'; i++) {
        o = await write(fresh);
        if (o === 'CONNECTION_RESET') await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(o, 'ok', 'a fresh descriptor after the stale one');
      // The writes back keep landing after the last refusal.
      const before = await backOk();
      for (let i = 0; i < 500 && (await backOk()) < before + 10; i++)
        await new Promise((r) => setTimeout(r, 20));
      const reverse = await bad.call<{
        outcomes: Record<string, number>;
        lastError: string;
        peers: { lost: number; probes: number; probesAnswered: number };
      }>('loopStop', {});
      assert.ok(
        (reverse.outcomes.OK ?? 0) >= before + 10,
        `writes back went on after the refusals (${JSON.stringify(reverse.outcomes)})`,
      );
      for (const code of Object.keys(reverse.outcomes))
        assert.ok(['OK', 'CONNECTION_RESET'].includes(code), `a write back failed ${reverse.lastError}`);
      assert.equal(reverse.peers.lost, 0, 'the forged-at peer wrote no one off as lost');
      assert.equal(
        reverse.peers.probes - reverse.peers.probesAnswered,
        0,
        'every probe it sent was answered',
      );
      stop = true;
      await background;
      assert.deepEqual(healthyErrors, []);
      assert.ok(healthyWrites > 0);
      assert.deepEqual(lost, [], 'no peer was marked lost');
      assert.equal(engine.stats().ops.inFlight, 0);
      // Every healthy write's immediates were counted, no more.
      const per = engine.expectedImms({ kind: 'single', src, length: 64 << 10, dst: healthy, imm: 7 });
      const st = await good.call<{ total: number }>('wait', {
        imm: 7,
        n: per * healthyWrites,
        timeoutMs: 10_000,
      });
      assert.equal(st.total, per * healthyWrites);
    });
  });
}
