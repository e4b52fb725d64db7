// KvLayout and KV streaming over the loopback fabric in random delivery order: every byte, cancels
// and deadlines.
import {
  createLoopbackFabric,
  type LoopbackFabric,
  type RecvMessage,
  type TransferEngine,
} from '@trellis/core';
import { outcome } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { KvLayout, type KvLayoutSpec, KvStreamReceiver, KvStreamSender } from '../src/index.js';
import { encodeCancel } from '../src/protocol.js';
import {
  checkKv,
  pickPages,
  poolFull,
  Rng,
  randomChunks,
  randomLayouts,
  runPrefill,
  tailOf,
} from './helpers.js';

/** What `f` throws, as `CODE: message` ('ok' if nothing). */
function msg(f: () => unknown): string {
  try {
    f();
    return 'ok';
  } catch (e) {
    return `${(e as { code: string }).code}: ${(e as Error).message}`;
  }
}

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function setup(
  opts: {
    nics?: number;
    seed?: number;
    prefill?: KvLayoutSpec;
    decode?: KvLayoutSpec;
    rx?: object;
    tx?: object;
  } = {},
) {
  const fabric: LoopbackFabric = createLoopbackFabric({ nics: opts.nics ?? 1, seed: opts.seed ?? 1 });
  const pe: TransferEngine = fabric.createEngine();
  const de: TransferEngine = fabric.createEngine();
  const base: KvLayoutSpec = {
    layers: 4,
    tokensPerPage: 4,
    pages: 64,
    tensors: [
      { name: 'k', bytesPerToken: 16 },
      { name: 'v', bytesPerToken: 16 },
    ],
  };
  const tx = await KvStreamSender.create({
    engine: pe,
    layout: opts.prefill ?? base,
    maxTailBytes: 4096,
    ...opts.tx,
  });
  const rx = await KvStreamReceiver.create({
    engine: de,
    layout: opts.decode ?? base,
    maxTailBytes: 4096,
    ...opts.rx,
  });
  cleanup.push(async () => {
    await tx.close();
    await rx.close();
    await fabric.close();
  });
  return { fabric, pe, de, tx, rx };
}

describe('KvLayout', () => {
  it('layerSegments refuses a layer that is not an integer in [0, layers)', () => {
    const l = new KvLayout({
      layers: 3,
      tokensPerPage: 4,
      pages: 8,
      tensors: [{ name: 'k', bytesPerToken: 8 }],
    });
    expect(l.layerSegments(2)).toHaveLength(l.segmentsPerLayer);
    for (const bad of [-1, 3, 1.5, Number.NaN])
      expect(msg(() => l.layerSegments(bad))).toBe(
        `OUT_OF_RANGE: KvLayout.layerSegments: layer ${String(bad)} is not an integer in [0, 3)`,
      );
  });
  it('computes segments for layer-major, heads-before-pages and page-major caches', () => {
    const tensors = [
      { name: 'k', bytesPerToken: 8, heads: 2 },
      { name: 'v', bytesPerToken: 8, heads: 2 },
    ];
    const lm = new KvLayout({ layers: 2, tokensPerPage: 4, pages: 10, tensors });
    expect(lm.segments.map((s) => [s.layer, s.tensor, s.head, s.offset, s.stride, s.pageBytes])).toEqual([
      [0, 0, 0, 0, 32, 32],
      [0, 1, 0, 320, 32, 32],
      [1, 0, 0, 640, 32, 32],
      [1, 1, 0, 960, 32, 32],
    ]);
    expect([lm.bytesPerPage, lm.regionBytes, lm.bytesPerToken]).toEqual([128, 1280, 32]);
    const hb = new KvLayout({ layers: 1, tokensPerPage: 4, pages: 10, tensors, headsBeforePages: true });
    expect(hb.segments.map((s) => [s.tensor, s.head, s.offset, s.stride, s.pageBytes, s.tokenBytes])).toEqual(
      [
        [0, 0, 0, 16, 16, 4],
        [0, 1, 160, 16, 16, 4],
        [1, 0, 320, 16, 16, 4],
        [1, 1, 480, 16, 16, 4],
      ],
    );
    const pm = new KvLayout({ layers: 2, tokensPerPage: 4, pages: 10, tensors, order: 'page-major' });
    expect(pm.segments.map((s) => [s.offset, s.stride])).toEqual([
      [0, 128],
      [32, 128],
      [64, 128],
      [96, 128],
    ]);
    // Pool size and order do not change what both sides must agree on.
    expect(pm.fingerprint).toBe(lm.fingerprint);
    expect(hb.fingerprint).not.toBe(lm.fingerprint);
    expect([lm.pagesFor(9), lm.partialBytes(9), lm.partialBytes(8)]).toEqual([3, 32, 0]);
  });

  it('rejects bad layouts with a message that says what to fix', () => {
    const err = (spec: unknown) => {
      try {
        new KvLayout(spec as KvLayoutSpec);
        return 'ok';
      } catch (e) {
        return `${(e as { code: string }).code}: ${(e as Error).message}`;
      }
    };
    const t = [{ name: 'k', bytesPerToken: 8 }];
    expect(err({ layers: 0, tokensPerPage: 4, pages: 1, tensors: t })).toBe(
      'INVALID_ARGUMENT: KvLayout: layers must be a positive integer, got 0',
    );
    expect(err({ layers: 1, tokensPerPage: 4, pages: 1, tensors: [] })).toBe(
      'INVALID_ARGUMENT: KvLayout: tensors must list at least one tensor per layer (K and V, or one MLA latent)',
    );
    expect(
      err({ layers: 1, tokensPerPage: 4, pages: 1, tensors: [{ name: 'k', bytesPerToken: 9, heads: 2 }] }),
    ).toBe("INVALID_ARGUMENT: KvLayout: tensors[0] ('k'): bytesPerToken 9 does not split into 2 equal heads");
    expect(err({ layers: 1, tokensPerPage: 4, pages: 1, tensors: [t[0], t[0]] })).toBe(
      "INVALID_ARGUMENT: KvLayout: tensor name 'k' appears twice",
    );
    expect(
      err({ layers: 1, tokensPerPage: 4, pages: 1, tensors: t, order: 'page-major', headsBeforePages: true }),
    ).toBe(
      'INVALID_ARGUMENT: KvLayout: headsBeforePages applies to layer-major layouts (in page-major a page already holds its heads together)',
    );
    for (const v of ['false', 1, null])
      expect(err({ layers: 1, tokensPerPage: 4, pages: 1, tensors: t, headsBeforePages: v })).toBe(
        `INVALID_ARGUMENT: KvLayout: headsBeforePages must be true or false, got ${JSON.stringify(v)}`,
      );
    expect(err({ layers: 1, tokensPerPage: 4, pages: 2 ** 31, tensors: t })).toBe(
      'INVALID_ARGUMENT: KvLayout: pages must be at most 268435456 (2^28; page numbers travel as 32-bit words), got 2147483648',
    );
    const ok = new KvLayout({ layers: 1, tokensPerPage: 4, pages: 1, tensors: t });
    for (const tokens of [-1, 1.5, Number.NaN, '4'])
      for (const f of ['pagesFor', 'partialBytes'] as const)
        expect(msg(() => ok[f](tokens as number))).toBe(
          `OUT_OF_RANGE: KvLayout.${f}: tokens must be a non-negative integer, got ${String(tokens)}`,
        );
    expect([ok.pagesFor(0), ok.partialBytes(0)]).toEqual([0, 0]);
    expect(err({ layers: 1, tokensPerPage: 4, pages: 1, tensors: t, order: 'tokens' })).toBe(
      `INVALID_ARGUMENT: KvLayout: order must be 'layer-major' or 'page-major', got "tokens"`,
    );
  });
});

describe('kvstream over the loopback fabric (random delivery order)', () => {
  for (const nics of [1, 2]) {
    it(`random layouts, page tables and chunkings arrive byte-exact (nics=${nics})`, async () => {
      for (let trial = 0; trial < 6; trial++) {
        const rng = new Rng(100 * nics + trial);
        const layouts = randomLayouts(rng);
        const { tx, rx, pe } = await setup({
          nics,
          seed: trial + 1,
          prefill: layouts.prefill,
          decode: layouts.decode,
        });
        const tokens = rng.int(1, 5 * layouts.prefill.tokensPerPage + 3);
        const tailBytes = rng.int(0, 1) ? rng.int(1, 300) : 0;
        const srcPages = pickPages(rng, tx.layout.pages, tx.layout.pagesFor(tokens));
        const adm = rx.admit({ prefill: pe.address, tokens, tailBytes, tag: `r${trial}` });
        expect(adm.pages.length).toBe(rx.layout.pagesFor(tokens));
        const stream = tx.bind(`r${trial}`, { srcPages });
        const tail = tailOf(trial, tailBytes);
        await runPrefill(tx, stream, trial, srcPages, randomChunks(rng, tokens), tail);
        const kv = await adm.done;
        await stream.done;
        checkKv(rx.layout, rx.region.buffer!, trial, kv.pages, tokens);
        expect(kv.tail).toEqual(tail);
        expect(kv.tokens).toBe(tokens);
        kv.release();
        expect(poolFull(rx)).toBe(true);
        const full = Math.floor(tokens / tx.layout.tokensPerPage);
        expect(tx.stats()).toMatchObject({
          tables: 1,
          bound: 1,
          completed: 1,
          failed: 0,
          pagesWritten: full * tx.layout.segments.length,
        });
        expect(rx.stats()).toMatchObject({ admitted: 1, completed: 1, failed: 0, cancelled: 0 });
        for (const c of cleanup.splice(0).reverse()) await c();
      }
    });
  }

  it('many concurrent requests, one progress word per batch, bound before and after their tables', async () => {
    const { tx, rx, pe } = await setup({
      seed: 9,
      decode: {
        layers: 4,
        tokensPerPage: 4,
        pages: 400,
        order: 'page-major',
        tensors: [
          { name: 'k', bytesPerToken: 16 },
          { name: 'v', bytesPerToken: 16 },
        ],
      },
      prefill: {
        layers: 4,
        tokensPerPage: 4,
        pages: 400,
        tensors: [
          { name: 'k', bytesPerToken: 16 },
          { name: 'v', bytesPerToken: 16 },
        ],
      },
    });
    const rng = new Rng(5);
    const n = 24;
    const progress = tx.createProgress();
    const reqs = Array.from({ length: n }, (_, i) => ({
      i,
      tokens: rng.int(1, 40),
      tail: tailOf(i, rng.int(0, 64)),
    }));
    let next = 0;
    const srcFor = reqs.map((r) => {
      const p = Uint32Array.from({ length: tx.layout.pagesFor(r.tokens) }, () => next++);
      return p;
    });
    const streams = reqs.map((r) =>
      r.i % 2 === 0 ? tx.bind(`q${r.i}`, { srcPages: srcFor[r.i]!, progress }) : undefined,
    );
    const adms = reqs.map((r) =>
      rx.admit({ prefill: pe.address, tokens: r.tokens, tailBytes: r.tail.length, tag: `q${r.i}` }),
    );
    await new Promise((r) => setTimeout(r, 5));
    const all = reqs.map((r) => streams[r.i] ?? tx.bind(`q${r.i}`, { srcPages: srcFor[r.i]!, progress }));
    // One batch: every request is one chunk; the batch's layers advance together.
    for (const [i, s] of all.entries()) s.chunk(reqs[i]!.tokens);
    for (let l = 0; l < tx.layout.layers; l++) {
      for (const r of reqs) {
        const { computeLayer } = await import('./helpers.js');
        computeLayer(tx.layout, tx.region.buffer!, r.i, srcFor[r.i]!, l, 0, r.tokens);
      }
      progress.watcher.increment();
      await new Promise((r) => setImmediate(r));
    }
    for (const [i, s] of all.entries()) s.finish(reqs[i]!.tail);
    const kvs = await Promise.all(adms.map((a) => a.done));
    await Promise.all(all.map((s) => s.done));
    for (const [i, kv] of kvs.entries()) {
      checkKv(rx.layout, rx.region.buffer!, i, kv.pages, reqs[i]!.tokens);
      expect(kv.tail).toEqual(reqs[i]!.tail);
      kv.release();
    }
    expect(poolFull(rx)).toBe(true);
    expect(rx.stats()).toMatchObject({ admitted: n, completed: n });
    expect(tx.stats()).toMatchObject({ tables: n, bound: n, completed: n });
    progress.close();
  });

  it('a second receiver on the same decode engine, after the first closed: its requests stream too', async () => {
    const { tx, rx, pe, de } = await setup();
    const layout = rx.layout;
    for (let round = 0; round < 3; round++) {
      const r = round === 0 ? rx : await KvStreamReceiver.create({ engine: de, layout, maxTailBytes: 4096 });
      const tokens = 10;
      const srcPages = Uint32Array.from({ length: tx.layout.pagesFor(tokens) }, (_, i) => i + 8 * round);
      const adm = r.admit({
        prefill: pe.address,
        tokens,
        tailBytes: 0,
        tag: `again${round}`,
        timeoutMs: 10_000,
      });
      const stream = tx.bind(`again${round}`, { srcPages });
      await runPrefill(tx, stream, round, srcPages, [tokens], new Uint8Array(0));
      const kv = await adm.done;
      await stream.done;
      checkKv(r.layout, r.region.buffer!, round, kv.pages, tokens);
      kv.release();
      await r.close();
    }
    expect(tx.stats()).toMatchObject({ tables: 3, completed: 3, failed: 0 });
  });

  it('create without an engine is refused with INVALID_ARGUMENT', async () => {
    const layout = { layers: 1, tokensPerPage: 4, pages: 4, tensors: [{ name: 'k', bytesPerToken: 16 }] };
    const rxCreate = KvStreamReceiver.create as unknown as (o: unknown) => Promise<unknown>;
    const txCreate = KvStreamSender.create as unknown as (o: unknown) => Promise<unknown>;
    expect(await outcome(rxCreate({ layout }))).toBe(
      'INVALID_ARGUMENT: KvStreamReceiver.create: engine must be a TransferEngine (createEngine())',
    );
    expect(await outcome(txCreate({ layout }))).toBe(
      'INVALID_ARGUMENT: KvStreamSender.create: engine must be a TransferEngine (createEngine())',
    );
    expect(await outcome(rxCreate(null))).toBe(
      'INVALID_ARGUMENT: KvStreamReceiver.create: pass an options object {engine, layout, ...}',
    );
    // A recv mode that is neither: refused before anything is registered or received.
    const engine = createLoopbackFabric({ nics: 1 }).createEngine();
    cleanup.push(() => engine.close());
    expect(await outcome(rxCreate({ engine, layout, recv: 'mine' }))).toBe(
      "INVALID_ARGUMENT: KvStreamReceiver.create: recv must be 'own' or 'external', got 'mine'",
    );
    expect(await outcome(txCreate({ engine, layout, recv: true }))).toBe(
      "INVALID_ARGUMENT: KvStreamSender.create: recv must be 'own' or 'external', got true",
    );
    // A key that is not an option (a typo, or the other side's option): refused, naming it.
    expect(await outcome(rxCreate({ engine, layout, probeImm: 7 }))).toBe(
      'INVALID_ARGUMENT: KvStreamReceiver.create: "probeImm" is not an option (they are engine, layout, region, gpu, maxTailBytes, maxRequests, immBase, probeMs, deadPeerGraceMs, ackTimeoutMs, quarantineMs, recv)',
    );
    expect(await outcome(txCreate({ engine, layout, maxRequest: 8 }))).toBe(
      'INVALID_ARGUMENT: KvStreamSender.create: "maxRequest" is not an option (they are engine, layout, region, gpu, maxTailBytes, maxRequests, probeImm, probeMs, unboundTimeoutMs, recv)',
    );
    expect(engine.stats()).toMatchObject({ regions: 0 });
    // A region of another engine (peers' writes would land where this side never looks), or not
    // an MrHandle at all: refused before anything is registered.
    const other = createLoopbackFabric({ nics: 1 }).createEngine();
    cleanup.push(() => other.close());
    const foreign = await other.registerMemory(4096, { remote: true });
    expect(await outcome(rxCreate({ engine, layout, region: foreign }))).toBe(
      `INVALID_DESCRIPTOR: KvStreamReceiver: region is registered on another engine (${other.address}); register it on this engine (${engine.address})`,
    );
    expect(await outcome(txCreate({ engine, layout, region: foreign }))).toBe(
      `INVALID_DESCRIPTOR: KvStreamSender: region is registered on another engine (${other.address}); register it on this engine (${engine.address})`,
    );
    expect(await outcome(rxCreate({ engine, layout, region: { length: 4096 } }))).toBe(
      'INVALID_ARGUMENT: KvStreamReceiver: region must be an MrHandle (engine.registerMemory())',
    );
    const gone = await engine.registerMemory(4096, { remote: true });
    await gone.unregister();
    expect(await outcome(rxCreate({ engine, layout, region: gone }))).toBe(
      'INVALID_DESCRIPTOR: KvStreamReceiver: region was unregistered',
    );
    expect(engine.stats()).toMatchObject({ regions: 0 });
  });

  it('refuses what the pool or the slots cannot hold, and bad input, before sending anything', async () => {
    const { rx, pe, tx } = await setup({ rx: { maxRequests: 1 } });
    expect(msg(() => rx.admit({ prefill: pe.address, tokens: 1000 }))).toBe(
      'RESOURCE_EXHAUSTED: KvStreamReceiver.admit: 1000 tokens need 250 pages, more than the whole pool (64 pages): no request this long can be admitted here',
    );
    // Huge: the pool named, not the page table's size (it once said INVALID_ARGUMENT, a 4 GB table).
    expect(msg(() => rx.admit({ prefill: pe.address, tokens: 2 ** 32 - 1 }))).toBe(
      'RESOURCE_EXHAUSTED: KvStreamReceiver.admit: 4294967295 tokens need 1073741824 pages, more than the whole pool (64 pages): no request this long can be admitted here',
    );
    expect(msg(() => rx.admit({ prefill: pe.address, tokens: 0 }))).toBe(
      'INVALID_ARGUMENT: KvStreamReceiver.admit: tokens must be an integer in 1..4294967295, got 0',
    );
    expect(msg(() => rx.admit({ prefill: pe.address, tokens: 4, tailBytes: 5000 }))).toBe(
      'INVALID_ARGUMENT: KvStreamReceiver.admit: tailBytes must be an integer in 0..4096, got 5000',
    );
    // A tag too long for the page table's message takes no page and no slot (it used to keep one of each).
    const before = rx.stats();
    expect(msg(() => rx.admit({ prefill: pe.address, tokens: 4, tag: 'x'.repeat(70_000) }))).toBe(
      'INVALID_ARGUMENT: KvStreamReceiver.admit: tag is 70000 UTF-8 bytes (at most 65535, and less with the page table it travels in: see maxMessageBytes)',
    );
    expect(msg(() => rx.admit({ prefill: pe.address, tokens: 4, tag: 'é'.repeat(32_767) }))).toMatch(
      /^INVALID_ARGUMENT: KvStreamReceiver\.admit: the page table is \d+ bytes, over the engine's 65536-byte messages \(a shorter tag, fewer pages per request, or larger pages\)$/,
    );
    expect(msg(() => rx.admit({ prefill: pe.address, tokens: 4, tag: 42 as unknown as string }))).toBe(
      'INVALID_ARGUMENT: KvStreamReceiver.admit: tag must be a string, got number',
    );
    // Not a request object, or a signal that is not an AbortSignal: refused, nothing taken (a bad
    // signal used to throw a TypeError after the pages and the slot were taken).
    const loose = rx as unknown as { admit(r: unknown): unknown };
    expect(msg(() => loose.admit(null))).toBe(
      'INVALID_ARGUMENT: KvStreamReceiver.admit: pass a request object {prefill, tokens, tailBytes?, tag?, timeoutMs?, signal?}',
    );
    for (const signal of [{}, 'abort', 42, null])
      expect(msg(() => loose.admit({ prefill: pe.address, tokens: 4, signal }))).toBe(
        'INVALID_ARGUMENT: KvStreamReceiver.admit: signal must be an AbortSignal',
      );
    expect(msg(() => loose.admit({ prefill: pe.address, tokens: 4, timeout: 5 }))).toBe(
      'INVALID_ARGUMENT: KvStreamReceiver.admit: "timeout" is not a field of an admit request (they are prefill, tokens, tailBytes, tag, signal, timeoutMs)',
    );
    expect(msg(() => tx.bind('x', { srcPages: Uint32Array.of(0), tailBytes: 4 } as never))).toBe(
      'INVALID_ARGUMENT: KvStreamSender.bind: "tailBytes" is not a bind option (they are srcPages, progress, timeoutMs)',
    );
    expect(rx.stats()).toEqual(before);
    expect(poolFull(rx)).toBe(true);
    const a = rx.admit({ prefill: pe.address, tokens: 4, tag: 'one' });
    expect(msg(() => rx.admit({ prefill: pe.address, tokens: 4 }))).toBe(
      'RESOURCE_EXHAUSTED: KvStreamReceiver.admit: all 1 request slots are in use (maxRequests)',
    );
    expect(msg(() => tx.bind('x', { srcPages: Uint32Array.of(64) }))).toBe(
      'OUT_OF_RANGE: KvStreamSender.bind: srcPages holds page 64; the pool has 64',
    );
    await a.cancel();
    expect(poolFull(rx)).toBe(true);
  });

  it("a layout that does not match fails the request with the prefill side's reason; pages return", async () => {
    const { rx, pe } = await setup({
      decode: { layers: 3, tokensPerPage: 4, pages: 32, tensors: [{ name: 'k', bytesPerToken: 16 }] },
    });
    const a = rx.admit({ prefill: pe.address, tokens: 9, tag: 'm' });
    expect(await outcome(a.done)).toMatch(
      /^INVALID_ARGUMENT: kvstream request 'm': the prefill side aborted: the decode layout \(fingerprint [0-9a-f]+\) does not match the prefill layout \([0-9a-f]+\): layers, tokens per page and tensors must agree$/,
    );
    await new Promise((r) => setTimeout(r, 20));
    expect(poolFull(rx)).toBe(true);
  });

  it('a layout that does not match fails the prefill stream too, bound before its table or after; both counted failed', async () => {
    const { rx, pe, tx } = await setup({
      decode: { layers: 3, tokensPerPage: 4, pages: 32, tensors: [{ name: 'k', bytesPerToken: 16 }] },
    });
    const reason =
      /^INVALID_ARGUMENT: kvstream request 'b': the decode layout \(fingerprint [0-9a-f]+\) does not match the prefill layout \([0-9a-f]+\): layers, tokens per page and tensors must agree$/;
    const before = tx.stats();
    // Bound first: it fails when the table comes.
    const early = tx.bind('b', { srcPages: Uint32Array.of(0, 1, 2) });
    const a = rx.admit({ prefill: pe.address, tokens: 9, tag: 'b' });
    expect(await outcome(a.done)).toMatch(
      /^INVALID_ARGUMENT: kvstream request 'b': the prefill side aborted/,
    );
    expect(await outcome(early.done)).toMatch(reason);
    // The table first: the bind that comes later fails at once.
    const b = rx.admit({ prefill: pe.address, tokens: 9, tag: 'c' });
    expect(await outcome(b.done)).toMatch(
      /^INVALID_ARGUMENT: kvstream request 'c': the prefill side aborted/,
    );
    const late = tx.bind('c', { srcPages: Uint32Array.of(0, 1, 2), timeoutMs: 60_000 });
    expect(await outcome(late.done)).toMatch(
      /^INVALID_ARGUMENT: kvstream request 'c': the decode layout \(fingerprint [0-9a-f]+\) does not match/,
    );
    expect(tx.stats().failed - before.failed).toBe(2);
    expect(tx.stats().bound - before.bound).toBe(2);
    await new Promise((r) => setTimeout(r, 20));
    expect(poolFull(rx)).toBe(true);
  });
});

describe('kvstream cancellation and deadlines (two-phase)', () => {
  const spec: KvLayoutSpec = {
    layers: 6,
    tokensPerPage: 4,
    pages: 64,
    tensors: [
      { name: 'k', bytesPerToken: 32 },
      { name: 'v', bytesPerToken: 32 },
    ],
  };
  const phases = [
    'right after admit',
    'table arrived, not bound',
    'mid-stream',
    'all layers done, before finish',
  ] as const;
  for (const phase of phases) {
    it(`cancel ${phase}: the request rejects ABORTED, prefill stops and acknowledges, every page returns`, async () => {
      const { rx, tx, pe } = await setup({ prefill: spec, decode: spec, seed: phases.indexOf(phase) + 3 });
      const srcPages = Uint32Array.from({ length: 10 }, (_, i) => i);
      const adm = rx.admit({ prefill: pe.address, tokens: 37, tailBytes: 100, tag: 'c' });
      let stream: ReturnType<typeof tx.bind> | undefined;
      if (phase !== 'right after admit') {
        await new Promise<void>((r) => tx.onRequest(() => r()));
        if (phase !== 'table arrived, not bound') {
          stream = tx.bind('c', { srcPages });
          await runPrefill(tx, stream, 1, srcPages, [20, 37], tailOf(1, 100), {
            stopAfterLayers: phase === 'mid-stream' ? 7 : 12,
          });
          await new Promise((r) => setTimeout(r, 5));
        }
      }
      // Admitted, its 10 pages held: in use, neither free nor quarantined.
      expect(rx.stats()).toMatchObject({
        freePages: rx.layout.pages - 10,
        inUsePages: 10,
        quarantinedPages: 0,
      });
      const cancelled = adm.cancel();
      expect(await outcome(adm.done)).toBe("ABORTED: kvstream request 'c': cancelled");
      // Waiting for the prefill's acknowledgement: still in use (they once showed in no counter).
      expect(rx.stats()).toMatchObject({
        freePages: rx.layout.pages - 10,
        inUsePages: 10,
        quarantinedPages: 0,
      });
      await cancelled;
      expect(poolFull(rx)).toBe(true);
      expect(rx.stats()).toMatchObject({ cancelled: 1, completed: 0, quarantinedPages: 0, inUsePages: 0 });
      if (stream)
        expect(await outcome(stream.done)).toBe(
          "ABORTED: kvstream request 'c': cancelled by the decode side",
        );
      // Nothing more is written: progress after the cancel issues no writes.
      const written = tx.stats().pagesWritten;
      stream?.progress.watcher.increment();
      await new Promise((r) => setTimeout(r, 10));
      expect(tx.stats().pagesWritten).toBe(written);
      // The slot serves the next request exactly.
      const again = rx.admit({ prefill: pe.address, tokens: 5, tag: 'next' });
      const s2 = tx.bind('next', { srcPages: Uint32Array.of(20, 21) });
      await runPrefill(tx, s2, 2, Uint32Array.of(20, 21), [5], new Uint8Array(0));
      const kv = await again.done;
      kv.release();
    });
  }

  it('cancel after completion changes nothing; a deadline cancels with TIMEOUT', async () => {
    const { rx, tx, pe } = await setup({ prefill: spec, decode: spec });
    const adm = rx.admit({ prefill: pe.address, tokens: 8, tag: 'd' });
    const s = tx.bind('d', { srcPages: Uint32Array.of(0, 1) });
    await runPrefill(tx, s, 3, Uint32Array.of(0, 1), [8], new Uint8Array(0));
    const kv = await adm.done;
    const c = adm.cancel();
    kv.release();
    await c;
    expect(poolFull(rx)).toBe(true);
    const slow = rx.admit({ prefill: pe.address, tokens: 8, tag: 'slow', timeoutMs: 30 });
    expect(await outcome(slow.done)).toBe("TIMEOUT: kvstream request 'slow': KV not complete within 30 ms");
    await slow.cancel();
    expect(poolFull(rx)).toBe(true);
    // A long tag is quoted by its first 64 characters and its length.
    const long = `${'x'.repeat(64)}${'y'.repeat(9936)}`;
    const slow2 = rx.admit({ prefill: pe.address, tokens: 8, tag: long, timeoutMs: 30 });
    expect(await outcome(slow2.done)).toBe(
      `TIMEOUT: kvstream request '${'x'.repeat(64)}…' (10000 characters): KV not complete within 30 ms`,
    );
    await slow2.cancel();
    // Both deadlines count as cancelled (the completed request cancelled after does not).
    expect(rx.stats()).toMatchObject({ completed: 1, cancelled: 2, failed: 0 });
    expect(poolFull(rx)).toBe(true);
    const ac = new AbortController();
    const ab = rx.admit({ prefill: pe.address, tokens: 8, tag: 'ab', signal: ac.signal });
    ac.abort();
    expect(await outcome(ab.done)).toBe("ABORTED: kvstream request 'ab': aborted");
  });

  it("a bind's own deadline: a stream whose table never comes, or whose producer never finishes, rejects TIMEOUT; the decode side is told; bad input is refused with nothing taken", async () => {
    const { rx, tx, pe } = await setup({ prefill: spec, decode: spec, tx: { maxRequests: 2 } });
    const pages = Uint32Array.of(0, 1);
    for (const bad of [0, 1.5, -1, 2 ** 31, '10'])
      expect(msg(() => tx.bind('bad', { srcPages: pages, timeoutMs: bad as number }))).toBe(
        `INVALID_ARGUMENT: KvStreamSender.bind: timeoutMs must be an integer in 1..2147483647, got ${typeof bad === 'string' ? '"10"' : bad}`,
      );
    expect(msg(() => tx.bind('bad', { srcPages: pages, progress: {} as never }))).toBe(
      'INVALID_ARGUMENT: KvStreamSender.bind: progress must come from createProgress()',
    );
    // Refused binds took nothing: 'bad' binds now, and so does one more (maxRequests 2), then no third.
    const ok = tx.bind('bad', { srcPages: pages });
    const orphan = tx.bind('orphan', { srcPages: pages, timeoutMs: 30 });
    expect(msg(() => tx.bind('third', { srcPages: pages }))).toBe(
      'RESOURCE_EXHAUSTED: KvStreamSender.bind: every staging slot is in use (maxRequests)',
    );
    // No page table ever comes for 'orphan'.
    expect(await outcome(orphan.done)).toBe(
      "TIMEOUT: kvstream request 'orphan': not done within 30 ms of bind (its page table never arrived)",
    );
    orphan.close();
    expect(tx.stats().bound).toBe(2);
    expect(tx.stats().failed).toBe(1);
    // Its table comes late: the decode side is told at once (not after unboundTimeoutMs).
    const lateAdm = rx.admit({ prefill: pe.address, tokens: 8, tag: 'orphan' });
    expect(await outcome(lateAdm.done)).toBe(
      "TIMEOUT: kvstream request 'orphan': the prefill side aborted: kvstream request 'orphan': not done within 30 ms of bind (its page table never arrived)",
    );
    await lateAdm.cancel();
    expect(poolFull(rx)).toBe(true);
    // The table of 'stall' is there before the bind; its producer never finishes.
    const arrived = new Promise<void>((r) => tx.onRequest((q) => q.tag === 'stall' && r()));
    const adm = rx.admit({ prefill: pe.address, tokens: 8, tag: 'stall' });
    await arrived;
    ok.close();
    const stall = tx.bind('stall', { srcPages: pages, timeoutMs: 40 });
    stall.chunk(8);
    expect(await outcome(stall.done)).toBe(
      "TIMEOUT: kvstream request 'stall': not done within 40 ms of bind (finish() was not called)",
    );
    expect(await outcome(adm.done)).toBe(
      "TIMEOUT: kvstream request 'stall': the prefill side aborted: kvstream request 'stall': not done within 40 ms of bind (finish() was not called)",
    );
    stall.close();
    expect(tx.stats().failed).toBe(2);
    await adm.cancel();
    expect(poolFull(rx)).toBe(true);
    // Every layer run, no tail expected, finish() never called: the stream waits for it and fails
    // at its deadline; the final write never went.
    const adm0 = rx.admit({ prefill: pe.address, tokens: 8, tailBytes: 0, tag: 'nofinish' });
    const nofinish = tx.bind('nofinish', { srcPages: pages, timeoutMs: 300 });
    await runPrefill(tx, nofinish, 5, pages, [8], new Uint8Array(0), { stopAfterLayers: tx.layout.layers });
    expect(await outcome(nofinish.done)).toBe(
      "TIMEOUT: kvstream request 'nofinish': not done within 300 ms of bind (finish() was not called)",
    );
    expect(await outcome(adm0.done)).toBe(
      "TIMEOUT: kvstream request 'nofinish': the prefill side aborted: kvstream request 'nofinish': not done within 300 ms of bind (finish() was not called)",
    );
    nofinish.close();
    expect(tx.stats()).toMatchObject({ completed: 0, failed: 3 });
    await adm0.cancel();
    expect(poolFull(rx)).toBe(true);
    // A stream done before its deadline: the deadline changes nothing.
    const adm2 = rx.admit({ prefill: pe.address, tokens: 8, tag: 'quick' });
    const quick = tx.bind('quick', { srcPages: pages, timeoutMs: 60_000 });
    await runPrefill(tx, quick, 6, pages, [8], new Uint8Array(0));
    const kv = await adm2.done;
    await quick.done;
    kv.release();
    expect(tx.stats().completed).toBe(1);
    expect(tx.stats().failed).toBe(3);
  });
});

describe('kvstream control messages this version cannot read', () => {
  it('another protocol version or a cut-short message: counted as unreadable with its reason, not as foreign; handleMessage returns true', async () => {
    const { rx, pe, tx, de } = await setup();
    const v2 = encodeCancel(7n);
    v2[4] = 2;
    const short = encodeCancel(7n).subarray(0, 12);
    for (const side of [rx, tx]) {
      const from = side === rx ? pe.address : de.address;
      expect(side.handleMessage({ from, data: v2 } as RecvMessage)).toBe(true);
      expect(side.stats()).toMatchObject({
        unreadableMessages: 1,
        foreignMessages: 0,
        lastUnreadable:
          'UNSUPPORTED: kvstream: a version 2 control message; this @trellis/kvstream speaks version 1 (upgrade both sides together)',
      });
      expect(side.handleMessage({ from, data: short } as RecvMessage)).toBe(true);
      expect(side.stats()).toMatchObject({
        unreadableMessages: 2,
        foreignMessages: 0,
        lastUnreadable:
          'INVALID_ARGUMENT: kvstream: malformed control message: 12 bytes, shorter than the 16-byte header',
      });
      // Not kvstream's: left to the caller.
      expect(side.handleMessage({ from, data: new TextEncoder().encode('hello there') } as RecvMessage)).toBe(
        false,
      );
    }
  });
});

describe('kvstream when a peer dies', () => {
  it('finish() ends the stream: refused before the chunks reach the tokens (table here), fails the stream when the table comes later; chunk() after it throws', async () => {
    const { rx, pe, tx } = await setup();
    const pages = Uint32Array.of(0, 1, 2);
    // The table is here: finish() with chunks short of the tokens throws; nothing is sent.
    const arrived = new Promise<void>((r) => tx.onRequest((q) => q.tag === 'short' && r()));
    const adm = rx.admit({ prefill: pe.address, tokens: 10, tag: 'short' });
    await arrived;
    const s = tx.bind('short', { srcPages: pages });
    // Not an integer: said so (it once said the end must grow).
    expect(msg(() => s.chunk(8.5))).toBe(
      'INVALID_ARGUMENT: KvSendStream.chunk: endToken must be an integer >= 1 (the token the chunk ends before), got 8.5',
    );
    expect(msg(() => s.finish())).toBe(
      "INVALID_ARGUMENT: KvSendStream.finish: request 'short' has 10 tokens and its chunks end at token 0: declare the last chunk (chunk(10)) before finish()",
    );
    s.chunk(4);
    expect(msg(() => s.finish())).toBe(
      "INVALID_ARGUMENT: KvSendStream.finish: request 'short' has 10 tokens and its chunks end at token 4: declare the last chunk (chunk(10)) before finish()",
    );
    // The stream goes on as if neither call was made.
    const src = tx.region.buffer!;
    for (let i = 0; i < src.length; i++) src[i] = (i * 7 + 3) & 0xff;
    for (let l = 0; l < tx.layout.layers; l++) s.progress.watcher.increment();
    s.chunk(10);
    for (let l = 0; l < tx.layout.layers; l++) s.progress.watcher.increment();
    s.finish();
    expect(msg(() => s.chunk(12))).toBe(
      "INVALID_ARGUMENT: KvSendStream.chunk: request 'short' is finished: declare every chunk before finish()",
    );
    const kv = await adm.done;
    await s.done;
    const dst = rx.region.buffer!;
    for (const [i, page] of kv.pages.entries()) {
      const inPage = Math.min(4, 10 - 4 * i);
      for (const seg of rx.layout.segments) {
        const n = inPage * seg.tokenBytes;
        const a = seg.offset + pages[i]! * seg.stride;
        const b = seg.offset + page * seg.stride;
        expect(Buffer.compare(dst.subarray(b, b + n), src.subarray(a, a + n))).toBe(0);
      }
    }
    kv.release();
    // Bound and finished before the table: the table shows the chunks fall short; the stream fails,
    // and the decode side is told.
    const early = tx.bind('early', { srcPages: pages });
    early.chunk(8);
    for (let l = 0; l < tx.layout.layers; l++) early.progress.watcher.increment();
    early.finish();
    const adm2 = rx.admit({ prefill: pe.address, tokens: 10, tag: 'early' });
    expect(await outcome(early.done)).toBe(
      "INVALID_ARGUMENT: kvstream request 'early': finish() came after chunks ending at token 8; the request has 10 tokens",
    );
    expect(await outcome(adm2.done)).toMatch(
      /^INVALID_ARGUMENT: kvstream request 'early': the prefill side (aborted|refused)[^:]*: kvstream request 'early': finish\(\) came after chunks ending at token 8; the request has 10 tokens$/,
    );
    early.close();
    await adm2.cancel();
    expect(poolFull(rx)).toBe(true);
    expect(tx.stats()).toMatchObject({ completed: 1, failed: 1 });
  });

  it('the prefill side closes its sender mid-stream: the decode request rejects CLOSED at once (its engine is alive and answers probes); pages return', async () => {
    const { rx, pe, tx } = await setup();
    const adm = rx.admit({ prefill: pe.address, tokens: 20, tag: 'x' });
    const arrived = new Promise<void>((r) => tx.onRequest((q) => q.tag === 'x' && r()));
    await arrived;
    const s = tx.bind('x', { srcPages: Uint32Array.of(0, 1, 2, 3, 4) });
    s.chunk(20);
    s.progress.watcher.increment();
    await new Promise((r) => setTimeout(r, 20));
    await tx.close();
    expect(await outcome(s.done)).toBe("CLOSED: kvstream request 'x': the sender was closed");
    expect(await outcome(adm.done)).toBe(
      "CLOSED: kvstream request 'x': the prefill side aborted: kvstream request 'x': the sender was closed",
    );
    for (let i = 0; i < 200 && !poolFull(rx); i++) await new Promise((r) => setTimeout(r, 10));
    expect(poolFull(rx)).toBe(true);
    expect(rx.stats()).toMatchObject({ admitted: 1, completed: 0, failed: 1, cancelled: 0, closed: 0 });
    // Closed streams are counted (bound = completed + failed + cancelled + closed once settled).
    expect(tx.stats()).toMatchObject({ bound: 1, completed: 0, failed: 0, cancelled: 0, closed: 1 });
  });

  it('page tables that end without a bind are counted apart from the bound requests (cancelled, closed)', async () => {
    const { rx, pe, tx } = await setup();
    const tables = new Promise<void>((r) => {
      let n = 0;
      tx.onRequest(() => ++n === 3 && r());
    });
    const a = rx.admit({ prefill: pe.address, tokens: 8, tag: 'a' });
    const b = rx.admit({ prefill: pe.address, tokens: 8, tag: 'b' });
    const c = rx.admit({ prefill: pe.address, tokens: 8, tag: 'c' });
    await tables;
    const s = tx.bind('c', { srcPages: Uint32Array.of(0, 1) });
    s.chunk(8);
    await a.cancel(); // never bound: the prefill acknowledges
    await tx.close(); // b unbound, c bound
    expect(await outcome(s.done)).toBe("CLOSED: kvstream request 'c': the sender was closed");
    s.close();
    // Each bound request is one of completed, failed, cancelled, closed; the others are unbound.
    expect(tx.stats()).toMatchObject({
      tables: 3,
      bound: 1,
      completed: 0,
      failed: 0,
      cancelled: 0,
      closed: 1,
      unbound: 2,
    });
    expect(await outcome(b.done)).toMatch(/^CLOSED: kvstream request 'b': the prefill side aborted: /);
    expect(await outcome(c.done)).toMatch(/^CLOSED: kvstream request 'c': the prefill side aborted: /);
  });

  it('the decode side closes its receiver mid-stream: the prefill stream is told and rejects ABORTED; the sender serves the next request', async () => {
    const { rx, pe, tx, de } = await setup();
    const adm = rx.admit({ prefill: pe.address, tokens: 20, tag: 'y' });
    const arrived = new Promise<void>((r) => tx.onRequest((q) => q.tag === 'y' && r()));
    await arrived;
    const pages = Uint32Array.of(0, 1, 2, 3, 4);
    const s = tx.bind('y', { srcPages: pages });
    s.chunk(20);
    s.progress.watcher.increment();
    await rx.close();
    expect(await outcome(adm.done)).toBe("CLOSED: kvstream request 'y': the receiver was closed");
    expect(await outcome(s.done)).toBe("ABORTED: kvstream request 'y': cancelled by the decode side");
    // Counted (admitted = completed + failed + cancelled + closed); cancel() resolves at once.
    expect(rx.stats()).toMatchObject({ admitted: 1, completed: 0, failed: 0, cancelled: 0, closed: 1 });
    await adm.cancel();
    s.close();
    // A new receiver on the same decode engine: the sender streams its request as before.
    const rx2 = await KvStreamReceiver.create({ engine: de, layout: rx.layout, maxTailBytes: 4096 });
    cleanup.push(() => rx2.close());
    const adm2 = rx2.admit({ prefill: pe.address, tokens: 8, tag: 'z' });
    const s2 = tx.bind('z', { srcPages: pages });
    await runPrefill(tx, s2, 3, pages, [8], new Uint8Array(0));
    const kv = await adm2.done;
    await s2.done;
    checkKv(rx2.layout, rx2.region.buffer!, 3, kv.pages, 8);
    kv.release();
    expect(tx.stats()).toMatchObject({ cancelled: 1, completed: 1 });
  });

  it('prefill killed mid-stream: the decode request fails PEER_LOST; its pages return only after the grace period', async () => {
    const { rx, tx, pe, fabric } = await setup({ rx: { probeMs: 20, deadPeerGraceMs: 150 } });
    const srcPages = Uint32Array.from({ length: 8 }, (_, i) => i);
    const adm = rx.admit({ prefill: pe.address, tokens: 30, tag: 'k' });
    const stream = tx.bind('k', { srcPages });
    await runPrefill(tx, stream, 4, srcPages, [30], new Uint8Array(0), { stopAfterLayers: 2 });
    fabric.faults.killPeer(pe);
    expect(await outcome(adm.done)).toMatch(
      /^PEER_LOST: kvstream request 'k': the prefill peer is unreachable \(PEER_LOST: /,
    );
    expect(rx.stats().quarantinedPages).toBe(8);
    expect(rx.stats().freePages).toBe(64 - 8);
    await new Promise((r) => setTimeout(r, 250));
    expect(rx.stats().quarantinedPages).toBe(0);
    expect(poolFull(rx)).toBe(true);
  });

  it('decode killed: the prefill side drops every request of that peer', async () => {
    const { rx, tx, pe, de, fabric } = await setup({ tx: { probeMs: 20 } });
    const pages = (k: number) => Uint32Array.from({ length: 3 }, (_, i) => 3 * k + i);
    rx.admit({ prefill: pe.address, tokens: 10, tag: 'a' });
    rx.admit({ prefill: pe.address, tokens: 10, tag: 'b' });
    const a = tx.bind('a', { srcPages: pages(0) });
    const b = tx.bind('b', { srcPages: pages(1) });
    await new Promise<void>((r) => {
      let n = 0;
      tx.onRequest(() => ++n === 2 && r());
    });
    await runPrefill(tx, a, 5, pages(0), [10], new Uint8Array(0), { stopAfterLayers: 1 });
    fabric.faults.killPeer(de);
    expect(await outcome(a.done)).toMatch(/^PEER_LOST: kvstream request 'a': /);
    expect(await outcome(b.done)).toMatch(/^PEER_LOST: kvstream request 'b': /);
    expect(tx.stats()).toMatchObject({ tables: 2, bound: 2, completed: 0, failed: 2, peersDropped: 1 });
  });
});

describe('kvstream under random delays (loopback fault injector)', () => {
  it('concurrent chunked streams with cancels mixed in: completed ones byte-exact, cancelled ones give every page back', async () => {
    const rng = new Rng(77);
    const layouts = randomLayouts(rng);
    layouts.prefill.pages = 200;
    layouts.decode.pages = 200;
    const { tx, rx, pe, fabric } = await setup({
      nics: 2,
      seed: 4,
      prefill: layouts.prefill,
      decode: layouts.decode,
    });
    fabric.faults.setDelay([0, 3]);
    let next = 0;
    const jobs = Array.from({ length: 10 }, async (_, i) => {
      const tokens = rng.int(1, 4 * tx.layout.tokensPerPage + 2);
      const tail = tailOf(i, rng.int(0, 50));
      const srcPages = Uint32Array.from({ length: tx.layout.pagesFor(tokens) }, () => next++);
      const adm = rx.admit({ prefill: pe.address, tokens, tailBytes: tail.length, tag: `z${i}` });
      const stream = tx.bind(`z${i}`, { srcPages });
      const cancelAt = i % 3 === 0 ? rng.int(0, tx.layout.layers) : -1;
      const between = async () => {
        await new Promise((r) => setTimeout(r, rng.int(0, 2)));
      };
      if (cancelAt >= 0) {
        void runPrefill(tx, stream, i, srcPages, randomChunks(rng, tokens), tail, {
          between,
          stopAfterLayers: cancelAt,
        });
        await new Promise((r) => setTimeout(r, rng.int(0, 5)));
        await adm.cancel();
        const o = await outcome(adm.done);
        // A cancel can lose the race with completion; either way the pool is whole at the end.
        if (o === 'resolved') (await adm.done).release();
        else expect(o).toBe(`ABORTED: kvstream request 'z${i}': cancelled`);
        stream.close();
        return;
      }
      await runPrefill(tx, stream, i, srcPages, randomChunks(rng, tokens), tail, { between });
      const kv = await adm.done;
      checkKv(rx.layout, rx.region.buffer!, i, kv.pages, tokens);
      expect(kv.tail).toEqual(tail);
      kv.release();
    });
    await Promise.all(jobs);
    fabric.faults.setDelay(undefined);
    expect(poolFull(rx)).toBe(true);
    expect(rx.stats().quarantinedPages).toBe(0);
  });
});
