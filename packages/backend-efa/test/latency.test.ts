// Latency mode (pollUntil) and reactions (submitOnImm) across processes: the benchmark's target
// (dist/bench/target.js, a user's process importing the built package) answers immediates awaiting,
// in a pollUntil loop, or by reactions armed ahead, and this process counts every answer once.
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MrDesc, NetAddr } from '@trellis/core';
import { afterEach, describe, expect, it } from 'vitest';
import { createEngine, type EfaEngine } from '../src/index.js';

const targetJs = fileURLToPath(new URL('../dist/bench/target.js', import.meta.url));

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

/** The responder in its own process: its first line is its region's descriptor. */
async function responder(provider: 'shm' | 'tcp') {
  const child: ChildProcess = spawn(
    process.execPath,
    [targetJs, JSON.stringify({ provider, size: 4096, nics: 1, spin: true })],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async () => JSON.parse((await lines.next()).value as string) as Record<string, unknown>;
  const first = await next();
  cleanup.push(async () => {
    if (child.exitCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
  });
  return {
    peer: MrDesc.parse(first.desc as string).owner,
    next,
    send: (m: object) => child.stdin!.write(`${JSON.stringify(m)}\n`),
    exited: () => new Promise<number | null>((r) => child.once('exit', (code) => r(code))),
  };
}

async function requester(provider: 'shm' | 'tcp'): Promise<EfaEngine> {
  const engine = await createEngine({ provider, nics: 1, maxSleepUs: 0 });
  cleanup.push(() => engine.close());
  return engine;
}

const rounds = 200;
for (const provider of ['shm', 'tcp'] as const) {
  describe(`provider=${provider}`, () => {
    for (const mode of ['latency', 'reaction'] as const) {
      it(`${rounds} round trips in latency mode, the peer answering ${mode === 'latency' ? 'from a pollUntil loop' : 'by reactions armed ahead'}: every answer arrives once`, async () => {
        const r = await responder(provider);
        const engine = await requester(provider);
        r.send({ pong: rounds, to: engine.address.toString(), mode });
        expect(await r.next()).toEqual({ ready: rounds });
        const back = engine.immCounter(3);
        for (let i = 0; i < rounds; i++) {
          const sent = engine.submitImm({ dst: r.peer, imm: 2 });
          await engine.pollUntil(() => back.take(1), { timeoutMs: 10_000 });
          await sent;
        }
        expect(await r.next()).toEqual({ done: rounds });
        expect(back.total).toBe(rounds);
        expect(back.value).toBe(0);
        const s = engine.stats();
        expect(s.ops.failed).toBe(0);
        expect(s.nics[0]!.immsReceived).toBe(rounds);
        const exit = r.exited();
        r.send({ exit: true });
        expect(await exit).toBe(0);
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
      const exit = r.exited();
      r.send({ exit: true });
      expect(await exit).toBe(0);
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
