// Test helpers for kvstream: seeded layouts and pages, the expected KV bytes, and a prefill driver.
import { Prng } from '@trellis/core';

/** A seeded PRNG with inclusive integer ranges. */
export class Rng extends Prng {
  int(lo: number, hi: number): number {
    return lo + this.below(hi - lo + 1);
  }
}

import { expect } from 'vitest';
import type { KvLayout, KvLayoutSpec, KvSendStream, KvStreamReceiver, KvStreamSender } from '../src/index.js';

/** A random pair of compatible layouts (same layers, tokens per page, tensors; own pool size and order). */
export function randomLayouts(rng: Rng): { prefill: KvLayoutSpec; decode: KvLayoutSpec } {
  const layers = rng.int(1, 6);
  const tokensPerPage = rng.int(1, 8);
  const hbp = rng.int(0, 1) === 1;
  const tensors = Array.from({ length: rng.int(1, 3) }, (_, i) => {
    const heads = hbp ? rng.int(1, 3) : 1;
    return { name: `t${i}`, bytesPerToken: heads * 4 * rng.int(1, 6), heads };
  });
  const order = () =>
    (hbp ? 'layer-major' : rng.int(0, 1) === 1 ? 'page-major' : 'layer-major') as KvLayoutSpec['order'];
  return {
    prefill: {
      layers,
      tokensPerPage,
      tensors,
      pages: rng.int(40, 80),
      order: order(),
      headsBeforePages: hbp,
    },
    decode: { layers, tokensPerPage, tensors, pages: rng.int(40, 80), order: order(), headsBeforePages: hbp },
  };
}

/** Distinct pool pages, shuffled. */
export function pickPages(rng: Rng, pool: number, n: number): Uint32Array {
  const all = Array.from({ length: pool }, (_, i) => i);
  for (let i = all.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return Uint32Array.from(all.slice(0, n));
}

/** The byte a (request, layer, segment, token, byte) holds once "computed". */
export function kvByte(req: number, seg: number, token: number, b: number): number {
  return (req * 131 + seg * 31 + token * 7 + b * 3 + 1) & 0xff;
}

/** "Compute" layer `l` for tokens [from, to): write its bytes into the prefill cache. */
export function computeLayer(
  layout: KvLayout,
  buf: Uint8Array,
  req: number,
  srcPages: Uint32Array,
  l: number,
  from: number,
  to: number,
): void {
  const per = layout.segmentsPerLayer;
  layout.layerSegments(l).forEach((s, i) => {
    const seg = l * per + i;
    for (let t = from; t < to; t++) {
      const at =
        s.offset +
        srcPages[Math.floor(t / layout.tokensPerPage)]! * s.stride +
        (t % layout.tokensPerPage) * s.tokenBytes;
      for (let b = 0; b < s.tokenBytes; b++) buf[at + b] = kvByte(req, seg, t, b);
    }
  });
}

/** Every token of every segment at decode holds what prefill computed. */
export function checkKv(
  layout: KvLayout,
  buf: Uint8Array,
  req: number,
  pages: Uint32Array,
  tokens: number,
): void {
  let bad = 0;
  let first = '';
  layout.segments.forEach((s, seg) => {
    for (let t = 0; t < tokens; t++) {
      const at =
        s.offset +
        pages[Math.floor(t / layout.tokensPerPage)]! * s.stride +
        (t % layout.tokensPerPage) * s.tokenBytes;
      for (let b = 0; b < s.tokenBytes; b++) {
        if (buf[at + b] !== kvByte(req, seg, t, b)) {
          if (!bad)
            first = `segment ${seg} token ${t} byte ${b}: ${buf[at + b]} != ${kvByte(req, seg, t, b)}`;
          bad++;
        }
      }
    }
  });
  expect(bad === 0 ? 'ok' : `${bad} bytes differ, first at ${first}`).toBe('ok');
}

export const tailOf = (req: number, n: number) =>
  Uint8Array.from({ length: n }, (_, i) => (req * 17 + i * 5) & 0xff);

/**
 * Run the prefill side of one request: `chunks` token boundaries, layer by layer (compute, then
 * increment the progress word), yielding between layers; then finish with the tail.
 */
export async function runPrefill(
  tx: KvStreamSender,
  stream: KvSendStream,
  req: number,
  srcPages: Uint32Array,
  chunks: number[],
  tail: Uint8Array,
  opts: { between?: () => Promise<void>; stopAfterLayers?: number } = {},
): Promise<void> {
  let from = 0;
  let layersRun = 0;
  for (const end of chunks) {
    stream.chunk(end);
    for (let l = 0; l < tx.layout.layers; l++) {
      if (opts.stopAfterLayers !== undefined && layersRun >= opts.stopAfterLayers) return;
      computeLayer(tx.layout, tx.region.buffer!, req, srcPages, l, from, end);
      stream.progress.watcher.increment();
      layersRun++;
      await (opts.between ?? (() => new Promise<void>((r) => setImmediate(r))))();
    }
    from = end;
  }
  if (opts.stopAfterLayers !== undefined && layersRun >= opts.stopAfterLayers) return;
  stream.finish(tail);
}

/** Random increasing chunk ends finishing at `tokens`. */
export function randomChunks(rng: Rng, tokens: number): number[] {
  const n = rng.int(1, Math.min(4, tokens));
  const cuts = new Set<number>();
  while (cuts.size < n - 1) cuts.add(rng.int(1, tokens - 1));
  return [...[...cuts].sort((a, b) => a - b), tokens];
}

export function poolFull(rx: KvStreamReceiver): boolean {
  const s = rx.stats();
  return s.freePages === rx.layout.pages && s.freeSlots === rx.maxRequests;
}
