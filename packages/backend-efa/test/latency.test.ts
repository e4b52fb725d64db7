// Latency mode (pollUntil) and reactions (submitOnImm) across processes: the benchmark's target
// (dist/bench/target.js, a user's process importing the built package) answers immediates awaiting,
// in a pollUntil loop, or by reactions armed ahead, and this process counts every answer once.
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MrDesc, NetAddr } from '@trellis/core';
import { afterEach, describe, expect, it } from 'vitest';
import { createEngine, type EfaEngine, type EfaEngineOptions } from '../src/index.js';

const targetJs = fileURLToPath(new URL('../dist/bench/target.js', import.meta.url));

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

/** The responder in its own process: its first line is its region's descriptor. */
async function responder(provider: 'shm' | 'tcp', driveInline = false) {
  const child: ChildProcess = spawn(
    process.execPath,
    [targetJs, JSON.stringify({ provider, size: 4096, nics: 1, spin: true, driveInline })],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async () => JSON.parse((await lines.next()).value as string) as Record<string, unknown>;
  const first = await next();
  cleanup.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
  });
  const send = (m: object) => child.stdin!.write(`${JSON.stringify(m)}\n`);
  const exited = () => new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const desc = MrDesc.parse(first.desc as string);
  return {
    child,
    desc,
    peer: desc.owner,
    next,
    send,
    exited,
    /** Tell it to exit; resolves with its exit code. */
    stop: () => {
      const exit = exited();
      send({ exit: true });
      return exit;
    },
  };
}

async function requester(
  provider: 'shm' | 'tcp',
  driveInline = false,
  opTimeoutMs?: number,
): Promise<EfaEngine> {
  // The same-host lane off: every write goes through the provider (and its NIC counters).
  const engine = await createEngine({
    provider,
    nics: 1,
    maxSleepUs: 0,
    driveInline,
    opTimeoutMs,
    sameHostLane: false,
  });
  cleanup.push(() => engine.close());
  return engine;
}

const rounds = 200;
for (const provider of ['shm', 'tcp'] as const) {
  describe(`provider=${provider}`, () => {
    const how = {
      latency: 'from a pollUntil loop',
      sync: 'from a synchronous poll() + take() loop',
      reaction: 'by reactions armed ahead',
      inline:
        'from a pollUntil loop, both engines with driveInline (each poll runs the engine on the JavaScript thread)',
      'inline-sync': 'from a synchronous poll() + take() loop, both engines with driveInline',
    } as const;
    for (const mode of ['latency', 'sync', 'reaction', 'inline', 'inline-sync'] as const) {
      it(`${rounds} round trips in latency mode, the peer answering ${how[mode]}: every answer arrives once`, async () => {
        const inline = mode === 'inline' || mode === 'inline-sync';
        const r = await responder(provider, inline);
        const engine = await requester(provider, inline);
        r.send({ pong: rounds, to: engine.address.toString(), mode });
        expect(await r.next()).toEqual({ ready: rounds });
        const back = engine.immCounter(3);
        const deadline = performance.now() + 20_000;
        for (let i = 0; i < rounds; i++) {
          const sent = engine.submitImm({ dst: r.peer, imm: 2 });
          if (mode === 'sync' || mode === 'inline-sync') {
            // No await: the answer is seen by take() (the shared word), or by a poll's batch.
            while (!back.take(1)) {
              engine.poll();
              if (performance.now() > deadline) throw new Error(`no answer ${i} within 20 s`);
            }
          } else {
            await engine.pollUntil(() => back.take(1), { timeoutMs: 10_000 });
          }
          await sent;
        }
        expect(await r.next()).toEqual({ done: rounds });
        expect(back.total).toBe(rounds);
        expect(back.value).toBe(0);
        const s = engine.stats();
        expect(s.ops.failed).toBe(0);
        expect(s.nics[0]!.immsReceived).toBe(rounds);
        expect(await r.stop()).toBe(0);
      }, 60_000);
    }

    it(`${rounds} round trips with both sides answering by reactions: no JavaScript per message, every answer once`, async () => {
      const r = await responder(provider);
      const engine = await requester(provider);
      r.send({ pong: rounds, to: engine.address.toString(), mode: 'native' });
      expect(await r.next()).toEqual({ ready: rounds });
      const back = engine.immCounter(3);
      const base = back.total;
      const armed: Promise<void>[] = [];
      for (let k = 1; k < rounds; k++)
        armed.push(engine.submitOnImm(3, base + k, { kind: 'imm', dst: r.peer, imm: 2, timeoutMs: 30_000 }));
      // Reactions armed, then the first ping.
      await new Promise((res) => setTimeout(res, 50));
      armed.push(engine.submitImm({ dst: r.peer, imm: 2 }));
      await engine.pollUntil(() => back.total >= base + rounds, { timeoutMs: 20_000 });
      await Promise.all(armed);
      expect(await r.next()).toEqual({ done: rounds });
      expect(back.total).toBe(base + rounds);
      expect(back.take(rounds)).toBe(true);
      expect(engine.stats().ops.failed).toBe(0);
      // A peer that stops answering: the reaction armed past its last answer times out, nothing posted.
      const late = engine.submitOnImm(3, base + rounds + 1, {
        kind: 'imm',
        dst: r.peer,
        imm: 2,
        timeoutMs: 100,
      });
      await expect(late).rejects.toMatchObject({ code: 'TIMEOUT' });
      expect(await r.stop()).toBe(0);
    }, 60_000);
  });
}

it('a reaction to an immediate an open port counts is refused before anything is armed', async () => {
  const engine = await requester('tcp');
  const port = engine.openPort!({ count: [9] });
  await expect(
    engine.submitOnImm(9, 1, { kind: 'imm', dst: NetAddr.parse(engine.address.toString()), imm: 1 }),
  ).rejects.toMatchObject({
    code: 'INVALID_ARGUMENT',
    message: expect.stringMatching(/counted by an open port/),
  });
  port.close();
});

it('pollUntil without a timeoutMs on an engine with opTimeoutMs 0 has no deadline (0 is none, not 0 ms)', async () => {
  const engine = await createEngine({ provider: 'tcp', nics: 1, opTimeoutMs: 0 });
  cleanup.push(() => engine.close());
  const t0 = performance.now();
  await engine.pollUntil!(() => performance.now() - t0 >= 200);
  expect(performance.now() - t0).toBeGreaterThanOrEqual(200);
  // Its own timeoutMs still bounds it, 0 included.
  await expect(engine.pollUntil!(() => false, { timeoutMs: 0 })).rejects.toMatchObject({
    code: 'TIMEOUT',
    message: 'pollUntil: done() still false after 0 ms',
  });
  await expect(engine.pollUntil!(() => false, { timeoutMs: 20 })).rejects.toMatchObject({ code: 'TIMEOUT' });
  await expect(engine.pollUntil!(() => true, { timeoutMs: Number.POSITIVE_INFINITY })).rejects.toMatchObject({
    code: 'INVALID_ARGUMENT',
    message: 'pollUntil: timeoutMs must be a finite number >= 0',
  });
});

describe('driveInline: the JavaScript thread runs the engine while it polls', () => {
  /** `n` pings from a pollUntil loop, each answered once. */
  async function pings(engine: EfaEngine, peer: NetAddr, n: number) {
    const back = engine.immCounter(3);
    for (let i = 0; i < n; i++) {
      const sent = engine.submitImm({ dst: peer, imm: 2 });
      await engine.pollUntil(() => back.take(1), { timeoutMs: 10_000 });
      await sent;
    }
  }

  for (const provider of ['shm', 'tcp'] as const) {
    it(`${provider}: once the loop ends the worker takes over: a write submitted after it settles with no poll, and its immediate arrives once`, async () => {
      const r = await responder(provider);
      const engine = await requester(provider, true);
      r.send({ pong: 20, to: engine.address.toString(), mode: 'default' });
      expect(await r.next()).toEqual({ ready: 20 });
      await pings(engine, r.peer, 20);
      expect(await r.next()).toEqual({ done: 20 });
      // No poll from here on: the worker (asleep while JS polled) must post, complete and ring.
      r.send({ expect: 3 });
      const src = await engine.registerMemory(4096);
      src.buffer!.fill(9);
      for (let i = 0; i < 3; i++)
        await engine.submitSingleWrite({
          src,
          srcOffset: 0,
          length: 4096,
          dst: r.desc,
          dstOffset: 0,
          imm: 1,
        });
      expect(await r.next()).toEqual({ done: 3 });
      const s = engine.stats();
      expect(s.ops.failed).toBe(0);
      expect(s.ops.completed).toBe(23);
      expect(s.nics[0]!.writeOps).toBe(23);
      expect(s.nics[0]!.bytesWritten).toBe(3 * 4096);
      expect(s.nics[0]!.immsReceived).toBe(20);
      expect(await r.stop()).toBe(0);
    }, 60_000);
  }

  it('tcp: a peer killed mid-exchange costs only its own ping (settled by its deadline); another peer answers on', async () => {
    const dead = await responder('tcp');
    const live = await responder('tcp');
    const engine = await requester('tcp', true, 2000);
    for (const r of [dead, live]) {
      r.send({ pong: 10, to: engine.address.toString(), mode: 'latency' });
      expect(await r.next()).toEqual({ ready: 10 });
    }
    await pings(engine, dead.peer, 5);
    await pings(engine, live.peer, 5);
    const gone = dead.exited();
    dead.child.kill('SIGKILL');
    await gone;
    let settled = false;
    const lost = engine.submitImm({ dst: dead.peer, imm: 2 });
    const outcome = lost.then(
      () => 'OK',
      (e: { code: string }) => e.code,
    );
    void outcome.then(() => (settled = true));
    // Polling all along: the ping settles by its own deadline (2 s, then a liveness probe of up to
    // 2 s where the provider reported a connection error), with no event-loop turn: the probe's
    // timers fire inside the loop. The bound is a hang guard.
    await engine.pollUntil(() => settled, { timeoutMs: 15_000 });
    expect(['PEER_LOST', 'CONNECTION_RESET', 'TIMEOUT']).toContain(await outcome);
    await pings(engine, live.peer, 5);
    expect(await live.next()).toEqual({ done: 10 });
    const s = engine.stats();
    expect(s.ops.failed).toBe(1);
    expect(s.ops.completed).toBe(15);
    expect(await live.stop()).toBe(0);
  }, 90_000);

  it('createEngine refuses a driveInline that is not a boolean, and driveInline with gpu', async () => {
    await expect(
      createEngine({ provider: 'tcp', driveInline: 'yes' as unknown as boolean }),
    ).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: 'createEngine: driveInline must be a boolean, got "yes"',
    });
    await expect(
      createEngine({ provider: 'tcp', driveInline: true, gpu: {} as NonNullable<EfaEngineOptions['gpu']> }),
    ).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/^createEngine: driveInline cannot be combined with gpu/),
    });
  });
});

describe('shared arrival words (immCounter of a native engine)', () => {
  async function pair() {
    const a = await createEngine({ provider: 'shm', nics: 1, sameHostLane: false });
    cleanup.push(() => a.close());
    const b = await createEngine({ provider: 'shm', nics: 1, sameHostLane: false });
    cleanup.push(() => b.close());
    return { a, b, to: NetAddr.parse(b.address.toString()) };
  }
  /** Spin on `take(1)` with no poll and no event-loop turn; whether it succeeded within 10 s. */
  function spinTake(c: { take(n?: number): boolean }): boolean {
    const deadline = performance.now() + 10_000;
    while (performance.now() < deadline) if (c.take(1)) return true;
    return false;
  }

  it('take() sees an arrival with no poll and no event-loop turn; the batch that reports it later adds nothing', async () => {
    const { a, b, to } = await pair();
    const c = b.immCounter(5);
    for (let k = 1; k <= 3; k++) {
      const sent = a.submitImm({ dst: to, imm: 5 });
      expect(spinTake(c)).toBe(true);
      expect(c.total).toBe(k);
      expect(c.value).toBe(0);
      await sent;
    }
    // The batches that report the three arrivals reach JS (rung, or polled) and count nothing again.
    await new Promise((r) => setTimeout(r, 50));
    b.poll();
    expect(c.total).toBe(3);
    expect(c.value).toBe(0);
    expect(b.stats().nics[0]!.immsReceived).toBe(3);
    // Through waits (batches) and the word together: each arrival once.
    await Promise.all([a.submitImm({ dst: to, imm: 5 }), a.submitImm({ dst: to, imm: 5 })]);
    await c.wait(2, { timeoutMs: 10_000 });
    expect(c.total).toBe(5);
    expect(c.value).toBe(0);
    expect(c.take(1)).toBe(false);
  });

  it('arrivals before the counter was first asked for count once; values past the first 64 count through batches alone', async () => {
    const { a, b, to } = await pair();
    // Two arrivals of 6 before anyone asked for its counter.
    await Promise.all([a.submitImm({ dst: to, imm: 6 }), a.submitImm({ dst: to, imm: 6 })]);
    await new Promise((r) => setTimeout(r, 50));
    const six = b.immCounter(6);
    expect(six.total).toBe(2);
    const sent = a.submitImm({ dst: to, imm: 6 });
    expect(spinTake(six)).toBe(true);
    await sent;
    expect(six.total).toBe(3);
    // 62 more values take the rest of the 64 words; the 65th asked for has none.
    for (let v = 100; v < 162; v++) b.immCounter(v);
    const late = b.immCounter(7);
    await Promise.all([a.submitImm({ dst: to, imm: 7 }), a.submitImm({ dst: to, imm: 7 })]);
    await late.wait(2, { timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 50));
    b.poll();
    expect(late.total).toBe(2);
    expect(late.value).toBe(0);
    expect(six.total).toBe(3);
    expect(b.stats().nics[0]!.immsReceived).toBe(5);
  });
});
