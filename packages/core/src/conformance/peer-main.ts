// The peer process of the cross-process conformance suite: one engine from a backend module,
// driven by JSON lines on stdin, answering JSON lines on stdout. Started by PeerProcess.
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { NetAddr } from '../addr.js';
import { MrDesc } from '../desc.js';
import type { MrHandle, TransferEngine } from '../types.js';
import { closeAndExit, followParent } from './child.js';
import { fillXorshift } from './util.js';

followParent();
const [modulePath, optionsJson] = process.argv.slice(2);
const out = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
let engine: TransferEngine;
try {
  const mod = (await import(pathToFileURL(modulePath!).href)) as {
    createEngine(o: unknown): Promise<TransferEngine>;
  };
  engine = await mod.createEngine(JSON.parse(optionsJson!));
} catch (e) {
  // The parent says why it did not start (PeerProcess.start rejects with this), in one line.
  const err = e as { code?: string; message?: string };
  out({ failed: true, code: err.code ?? 'INTERNAL', message: err.message ?? String(e) });
  process.exit(1);
}
const regions = new Map<string, MrHandle>();
const received: Array<{ from: string; data: string }> = [];

void engine.submitRecvs({ maxBytes: engine.limits.maxMessageBytes, count: 16 }, (m) =>
  received.push({ from: m.from.toString(), data: Buffer.from(m.data).toString('hex') }),
);

type Args = Record<string, unknown>;

/** A background write loop (`loopStart` … `loopStop`): outcomes by code, errors never end it. */
let loop:
  | { stop: boolean; done: Promise<void>; outcomes: Record<string, number>; lastError: string }
  | undefined;
const handlers: Record<string, (a: Args) => Promise<unknown>> = {
  async register(a) {
    const h = await engine.registerMemory(a.size as number, { remote: a.remote as boolean });
    if (a.seed !== undefined) fillXorshift(h.buffer!, a.seed as number);
    regions.set(a.name as string, h);
    return { desc: h.desc.toString() };
  },
  async unregister(a) {
    await regions.get(a.name as string)!.unregister();
    regions.delete(a.name as string);
    return {};
  },
  async wait(a) {
    await engine.immCounter(a.imm as number).wait(a.n as number, { timeoutMs: a.timeoutMs as number });
    return { total: engine.immCounter(a.imm as number).total };
  },
  async sha256(a) {
    return {
      sha256: createHash('sha256')
        .update(regions.get(a.name as string)!.buffer!)
        .digest('hex'),
    };
  },
  async write(a) {
    const req = {
      src: regions.get(a.name as string)!,
      length: a.length as number,
      dst: MrDesc.parse(a.dst as string),
      imm: a.imm as number,
    };
    await engine.submitSingleWrite(req);
    return { imms: engine.expectedImms({ kind: 'single', ...req }) };
  },
  // Writes `length` bytes to `dst` over and over until loopStop. `viaNic` leaves the descriptor's
  // same-host section out, so the writes go through the provider even on one host.
  async loopStart(a) {
    const d = MrDesc.parse(a.dst as string);
    const dst = a.viaNic ? new MrDesc(d.owner, d.base, d.length, d.nics, d.staged, d.parts) : d;
    const src = regions.get(a.name as string)!;
    const l = { stop: false, done: Promise.resolve(), outcomes: {} as Record<string, number>, lastError: '' };
    l.done = (async () => {
      while (!l.stop) {
        let code = 'OK';
        try {
          await engine.submitSingleWrite({ src, length: a.length as number, dst, imm: a.imm as number });
        } catch (e) {
          const err = e as { code?: string; message?: string };
          code = err.code ?? 'non-trellis';
          l.lastError = `${code}: ${err.message}`;
          await new Promise((r) => setTimeout(r, 20));
        }
        l.outcomes[code] = (l.outcomes[code] ?? 0) + 1;
      }
    })();
    loop = l;
    return {};
  },
  async loopCount() {
    return { outcomes: { ...loop!.outcomes } };
  },
  async loopStop() {
    loop!.stop = true;
    await loop!.done;
    return { outcomes: loop!.outcomes, lastError: loop!.lastError, peers: engine.stats().peers };
  },
  async send(a) {
    await engine.submitSend(NetAddr.parse(a.to as string), Buffer.from(a.hex as string, 'hex'));
    return {};
  },
  async stats() {
    return { recvDropped: engine.stats().recvDropped };
  },
  async received() {
    return { messages: received.splice(0) };
  },
  async exit() {
    await engine.close();
    setImmediate(() => process.exit(0));
    return {};
  },
};

out({ ready: true, address: engine.address.toString(), pid: process.pid });
for await (const line of createInterface({ input: process.stdin })) {
  const { id, cmd, ...args } = JSON.parse(line) as { id: number; cmd: string } & Args;
  try {
    out({ id, ok: true, ...((await handlers[cmd]!(args)) as object) });
  } catch (e) {
    const err = e as { code?: string; message?: string };
    out({ id, ok: false, code: err.code, message: err.message });
  }
}
// stdin closed: the parent is gone (killed, interrupted).
await closeAndExit(engine);
