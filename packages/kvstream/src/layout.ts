// KvLayout: where a paged KV cache keeps its bytes (layers, pages, tensors, order) and how a
// layer's pages map to byte ranges. Pure computation.
import { TrellisError } from '@trellis/core';

/** One tensor of a layer's KV cache: K, V, or an MLA-style compressed latent. */
export interface KvTensorSpec {
  /** For messages (`k`, `v`, `latent`). */
  name: string;
  /** Bytes of this tensor per token in one layer (heads × head dim × dtype bytes). */
  bytesPerToken: number;
  /**
   * Heads, for `headsBeforePages` layouts, where each head's pages are contiguous: the tensor's
   * bytes per token split evenly into `heads` blocks, each written as its own run of pages.
   * Default 1.
   */
  heads?: number;
}

/**
 * Where a paged KV cache keeps its bytes. Both sides of a stream describe their own cache with
 * the same `layers`, `tokensPerPage` and `tensors`; `pages` (the pool size) and `order` may differ.
 *
 * - `layer-major` (vLLM-style `[layer][tensor][page][token][…]`): each (layer, tensor) is a block
 *   of `pages` pages; with `headsBeforePages`, `[layer][tensor][head][page][token][…]`.
 * - `page-major` (`[page][layer][tensor][token][…]`): a page holds every layer.
 */
export interface KvLayoutSpec {
  layers: number;
  tokensPerPage: number;
  tensors: readonly KvTensorSpec[];
  /** Pages in this side's pool. */
  pages: number;
  /** Default `layer-major`. */
  order?: 'layer-major' | 'page-major';
  /** Layer-major only: each head's pages are contiguous (see {@link KvTensorSpec.heads}). Default false. */
  headsBeforePages?: boolean;
}

/** One run of pages a layer writes: `pageBytes` at `offset + page * stride` for each page. */
export interface KvSegment {
  layer: number;
  tensor: number;
  head: number;
  offset: number;
  stride: number;
  /** Bytes of this segment in one full page. */
  pageBytes: number;
  /** Bytes per token (pageBytes / tokensPerPage). */
  tokenBytes: number;
}

const MAX_BYTES = Number.MAX_SAFE_INTEGER;
/** The largest pool a layout describes: 2^28 pages (a free list of them is 1 GiB). */
const MAX_PAGES = 2 ** 28;

function bad(message: string): never {
  throw new TrellisError('INVALID_ARGUMENT', `KvLayout: ${message}`);
}

function posInt(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1)
    bad(`${name} must be a positive integer, got ${String(v)}`);
  return v;
}

function checkTokens(where: string, tokens: unknown): void {
  if (typeof tokens !== 'number' || !Number.isSafeInteger(tokens) || tokens < 0)
    throw new TrellisError(
      'OUT_OF_RANGE',
      `KvLayout.${where}: tokens must be a non-negative integer, got ${String(tokens)}`,
    );
}

/** A validated KV cache layout: segment offsets and strides, region size, fingerprint. */
export class KvLayout {
  readonly layers: number;
  readonly tokensPerPage: number;
  readonly pages: number;
  readonly order: 'layer-major' | 'page-major';
  readonly headsBeforePages: boolean;
  readonly tensors: readonly Required<KvTensorSpec>[];
  /** Every segment, layer by layer: `segments.length / layers` per layer. */
  readonly segments: readonly KvSegment[];
  /** Bytes of one page across every layer and tensor. */
  readonly bytesPerPage: number;
  /** Bytes of the whole cache (`pages × bytesPerPage`). */
  readonly regionBytes: number;
  /** Bytes per token across every layer and tensor (what a partial page's tokens cost in a tail). */
  readonly bytesPerToken: number;

  constructor(spec: KvLayoutSpec) {
    if (spec === null || typeof spec !== 'object') bad('expected a layout object');
    this.layers = posInt('layers', spec.layers);
    this.tokensPerPage = posInt('tokensPerPage', spec.tokensPerPage);
    this.pages = posInt('pages', spec.pages);
    if (spec.pages > MAX_PAGES)
      bad(
        `pages must be at most ${MAX_PAGES} (2^28; page numbers travel as 32-bit words), got ${spec.pages}`,
      );
    const order = spec.order ?? 'layer-major';
    if (order !== 'layer-major' && order !== 'page-major')
      bad(`order must be 'layer-major' or 'page-major', got ${JSON.stringify(order)}`);
    this.order = order;
    if (spec.headsBeforePages !== undefined && typeof spec.headsBeforePages !== 'boolean')
      bad(`headsBeforePages must be true or false, got ${JSON.stringify(spec.headsBeforePages)}`);
    this.headsBeforePages = spec.headsBeforePages ?? false;
    if (this.headsBeforePages && order === 'page-major')
      bad(
        'headsBeforePages applies to layer-major layouts (in page-major a page already holds its heads together)',
      );
    if (!Array.isArray(spec.tensors) || spec.tensors.length === 0)
      bad('tensors must list at least one tensor per layer (K and V, or one MLA latent)');
    const names = new Set<string>();
    this.tensors = spec.tensors.map((t, i) => {
      if (typeof t?.name !== 'string' || t.name === '') bad(`tensors[${i}].name must be a non-empty string`);
      if (names.has(t.name)) bad(`tensor name '${t.name}' appears twice`);
      names.add(t.name);
      const bpt = posInt(`tensors[${i}].bytesPerToken`, t.bytesPerToken);
      const heads = t.heads === undefined ? 1 : posInt(`tensors[${i}].heads`, t.heads);
      if (bpt % heads !== 0)
        bad(`tensors[${i}] ('${t.name}'): bytesPerToken ${bpt} does not split into ${heads} equal heads`);
      return { name: t.name, bytesPerToken: bpt, heads };
    });
    this.bytesPerToken = this.layers * this.tensors.reduce((n, t) => n + t.bytesPerToken, 0);
    const perPageOneLayer = this.tensors.reduce((n, t) => n + t.bytesPerToken * this.tokensPerPage, 0);
    this.bytesPerPage = perPageOneLayer * this.layers;
    this.regionBytes = this.bytesPerPage * this.pages;
    if (!Number.isSafeInteger(this.regionBytes) || this.regionBytes > MAX_BYTES)
      bad(`the cache is too large to address (${this.regionBytes} bytes)`);

    const segs: KvSegment[] = [];
    let offset = 0;
    for (let l = 0; l < this.layers; l++) {
      for (const [ti, t] of this.tensors.entries()) {
        const tensorPageBytes = t.bytesPerToken * this.tokensPerPage;
        if (order === 'page-major') {
          segs.push({
            layer: l,
            tensor: ti,
            head: 0,
            offset,
            stride: this.bytesPerPage,
            pageBytes: tensorPageBytes,
            tokenBytes: t.bytesPerToken,
          });
          offset += tensorPageBytes;
        } else if (this.headsBeforePages) {
          const headTokenBytes = t.bytesPerToken / t.heads;
          for (let h = 0; h < t.heads; h++) {
            const pb = headTokenBytes * this.tokensPerPage;
            segs.push({
              layer: l,
              tensor: ti,
              head: h,
              offset,
              stride: pb,
              pageBytes: pb,
              tokenBytes: headTokenBytes,
            });
            offset += pb * this.pages;
          }
        } else {
          segs.push({
            layer: l,
            tensor: ti,
            head: 0,
            offset,
            stride: tensorPageBytes,
            pageBytes: tensorPageBytes,
            tokenBytes: t.bytesPerToken,
          });
          offset += tensorPageBytes * this.pages;
        }
      }
    }
    this.segments = segs;
  }

  /**
   * Segments of layer `l`, in the same order on both sides of a stream. Throws `OUT_OF_RANGE` for
   * a layer that is not an integer in `[0, layers)`.
   */
  layerSegments(l: number): readonly KvSegment[] {
    if (!Number.isInteger(l) || l < 0 || l >= this.layers)
      throw new TrellisError(
        'OUT_OF_RANGE',
        `KvLayout.layerSegments: layer ${String(l)} is not an integer in [0, ${this.layers})`,
      );
    const per = this.segments.length / this.layers;
    return this.segments.slice(l * per, (l + 1) * per);
  }

  /** Segments per layer (the same on both sides of compatible layouts). */
  get segmentsPerLayer(): number {
    return this.segments.length / this.layers;
  }

  /**
   * A 32-bit fingerprint of what both sides must agree on (layers, tokens per page, tensors and
   * how they split into segments). Pool size and order are each side's own business.
   */
  get fingerprint(): number {
    const text = JSON.stringify([
      this.layers,
      this.tokensPerPage,
      this.tensors.map((t) => [t.bytesPerToken, this.headsBeforePages ? t.heads : 1]),
    ]);
    let h = 0x811c9dc5;
    for (let i = 0; i < text.length; i++) {
      h ^= text.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return h >>> 0;
  }

  /**
   * Pages a request of `tokens` tokens needs (the last one possibly partial). Throws
   * `OUT_OF_RANGE` unless `tokens` is a non-negative safe integer.
   */
  pagesFor(tokens: number): number {
    checkTokens('pagesFor', tokens);
    return Math.ceil(tokens / this.tokensPerPage);
  }

  /**
   * Bytes the final write carries for a request: the last partial page's tokens in every segment.
   * Throws `OUT_OF_RANGE` unless `tokens` is a non-negative safe integer.
   */
  partialBytes(tokens: number): number {
    checkTokens('partialBytes', tokens);
    return (tokens % this.tokensPerPage) * this.bytesPerToken;
  }
}
