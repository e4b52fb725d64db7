// The benchmark's raw program writing into an SDK target engine (`rma_raw <provider> into …`, the
// paged rows' "raw C → SDK target" column): a C program that knows only libfabric reaches an
// engine's region from the address its descriptor carries, every byte lands, and the engine counts
// every immediate — on shm and tcp (where the engine's target endpoint has a CQ of its own). And the
// other way (`rma_raw <provider> target`, "SDK → raw C target"): an engine writes into the raw
// program's region from an address and descriptor built from what the program prints.
import { execFile, spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { type RawTarget, rawIntoArgs, rawTargetDesc } from '../bench/raw-address.js';
import { createEngine, type EfaEngine, nativeAddonPath } from '../src/index.js';

const run = promisify(execFile);
const rawProgram = join(dirname(nativeAddonPath()!), 'rma_raw');
const fabricName = { shm: 'shm', tcp: 'tcp;ofi_rxm' } as const;

let engine: EfaEngine | undefined;
afterEach(async () => {
  await engine?.close();
  engine = undefined;
});

describe('backend-efa: the raw program writes into an SDK target', () => {
  for (const provider of ['shm', 'tcp'] as const) {
    it(`${provider}: every page lands and every immediate is counted`, async () => {
      engine = await createEngine({ provider, opTimeoutMs: 10_000 });
      const page = 4096;
      const perCall = 64;
      const calls = 3;
      const region = await engine.registerMemory(page * perCall, { remote: true });
      region.buffer!.fill(0);
      const counter = engine.immCounter(1);
      const { stdout } = await run(
        rawProgram,
        [
          fabricName[provider],
          'into',
          ...rawIntoArgs(region.desc),
          String(page),
          String(perCall),
          String(calls),
          '16',
        ],
        { timeout: 30_000 },
      );
      const out = JSON.parse(stdout) as { ops: number; bytes: number };
      expect(out.ops).toBe(perCall * calls);
      expect(out.bytes).toBe(perCall * calls * page);
      // Each of the perCall pages was written `calls` times, one immediate 1 each.
      await counter.wait(perCall * calls, { timeoutMs: 10_000 });
      expect(counter.total).toBe(perCall * calls);
      const buf = region.buffer!;
      let wrong = 0;
      for (let i = 0; i < buf.length; i++) if (buf[i] !== 7) wrong++;
      expect(wrong).toBe(0);
      const nicStats = engine.stats().nics[0]!;
      expect(nicStats.immsReceived).toBe(perCall * calls);
      expect(nicStats.errors).toBe(0);
    });
  }

  for (const provider of ['shm', 'tcp'] as const) {
    it(`${provider}: the engine writes into the raw program's target; every arrival counted, every byte landed`, async () => {
      engine = await createEngine({ provider, sameHostLane: false, opTimeoutMs: 10_000 });
      const page = 4096;
      const pages = 64;
      const calls = 3;
      const child = spawn(
        rawProgram,
        [fabricName[provider], 'target', String(page * pages), String(pages * calls)],
        {
          stdio: ['pipe', 'pipe', 'inherit'],
        },
      );
      const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
      const t = JSON.parse((await lines.next()).value as string) as RawTarget;
      const dst = rawTargetDesc(engine.kind, t, page * pages);
      const src = await engine.registerMemory(page * pages);
      for (let i = 0; i < src.buffer!.length; i++) src.buffer![i] = (i * 131 + (i >> 12)) & 0xff;
      const order = Uint32Array.from({ length: pages }, (_, i) => i);
      for (let c = 0; c < calls; c++)
        await engine.submitPagedWrites({
          src,
          srcPages: order,
          srcStride: page,
          dst,
          dstPages: order,
          dstStride: page,
          pageBytes: page,
          imm: 1,
        });
      const done = JSON.parse((await lines.next()).value as string) as { arrivals: number; fnv1a: string };
      let h = 0xcbf29ce484222325n;
      for (const b of src.buffer!) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
      expect(done.arrivals).toBe(pages * calls);
      expect(done.fnv1a).toBe(h.toString());
      expect(engine.stats().ops).toMatchObject({
        submitted: calls,
        completed: calls,
        failed: 0,
        inFlight: 0,
      });
      child.stdin!.end();
      await new Promise((r) => child.on('exit', r));
    });
  }

  it('a name that is not hex: the program says what is wrong and exits 2', async () => {
    const err = await run(rawProgram, ['tcp;ofi_rxm', 'into', 'zz', '0', '0', '4096', '1', '1', '1']).catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect((err as { code: number }).code).toBe(2);
    expect((err as { stderr: string }).stderr).toContain('rma_raw into: the endpoint name must be hex');
  });
});
