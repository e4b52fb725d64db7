// What both example servers agree on, and a synthetic model.
import type { IncomingMessage } from 'node:http';
import type { KvLayoutSpec, KvStreamReceiver, KvStreamSender } from '@trellis/kvstream';

/** A small model: 8 layers, K and V of 2 heads × 64 dims in fp16, 16 tokens per page. */
export const LAYOUT: KvLayoutSpec = {
  layers: 8,
  tokensPerPage: 16,
  pages: 1024,
  tensors: [
    { name: 'k', bytesPerToken: 2 * 64 * 2 },
    { name: 'v', bytesPerToken: 2 * 64 * 2 },
  ],
};

export async function readJson(req: IncomingMessage): Promise<unknown> {
  let body = '';
  for await (const chunk of req) body += chunk;
  return JSON.parse(body);
}

/** The byte token `t` of segment `seg` holds for request `tag` (so decode can check what arrived). */
function value(tag: string, seg: number, t: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < tag.length; i++) h = Math.imul(h ^ tag.charCodeAt(i), 0x01000193);
  return (h + seg * 7 + t) & 0xff;
}

/** "Run" layer `l`: 2 ms of compute, then its KV for every token lands in the cache. */
export async function syntheticLayer(
  kv: KvStreamSender,
  tag: string,
  pages: Uint32Array,
  l: number,
  tokens: number,
) {
  await new Promise((r) => setTimeout(r, 2));
  const L = kv.layout;
  L.layerSegments(l).forEach((s, i) => {
    const seg = l * L.segmentsPerLayer + i;
    for (let t = 0; t < tokens; t++) {
      const at =
        s.offset + pages[Math.floor(t / L.tokensPerPage)]! * s.stride + (t % L.tokensPerPage) * s.tokenBytes;
      kv.region.buffer!.fill(value(tag, seg, t), at, at + s.tokenBytes);
    }
  });
}

/** Check the KV at decode against what the synthetic model wrote: "ok", or how many bytes differ. */
export function checksumKv(kv: KvStreamReceiver, tag: string, pages: Uint32Array, tokens: number): string {
  const L = kv.layout;
  let wrong = 0;
  L.segments.forEach((s, seg) => {
    for (let t = 0; t < tokens; t++) {
      const at =
        s.offset + pages[Math.floor(t / L.tokensPerPage)]! * s.stride + (t % L.tokensPerPage) * s.tokenBytes;
      for (let b = 0; b < s.tokenBytes; b++) if (kv.region.buffer![at + b] !== value(tag, seg, t)) wrong++;
    }
  });
  return wrong === 0 ? 'ok' : `${wrong} bytes differ`;
}
