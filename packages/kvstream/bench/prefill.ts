// The prefill process of the kvstream benchmark: a synthetic prefill whose layers "compute" by
// sleeping `layerMs` (the CPU is free, as it is while a GPU computes), then bump the progress word.
// argv[2]: JSON {provider, nics, layout}; stdin/stdout: JSON lines.
import { createInterface } from 'node:readline';
import { createEngine, type Provider } from '@trellis/backend-efa';
import { type KvLayoutSpec, KvStreamSender } from '@trellis/kvstream';

const cfg = JSON.parse(process.argv[2]!) as {
  provider: Provider;
  nics: number;
  layout: KvLayoutSpec;
  maxTailBytes: number;
};
const engine = await createEngine({ provider: cfg.provider, nics: cfg.nics });
const tx = await KvStreamSender.create({ engine, layout: cfg.layout, maxTailBytes: cfg.maxTailBytes });
tx.region.buffer!.fill(0x5a);
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
process.stdout.write(`${JSON.stringify({ addr: engine.address.toString() })}\n`);

for await (const line of createInterface({ input: process.stdin })) {
  const m = JSON.parse(line) as {
    exit?: boolean;
    run?: { tag: string; tokens: number; layerMs: number; mode: 'stream' | 'after'; tailBytes: number };
  };
  if (m.exit) break;
  if (!m.run) continue;
  const { tag, tokens, layerMs, mode, tailBytes } = m.run;
  const srcPages = Uint32Array.from({ length: tx.layout.pagesFor(tokens) }, (_, i) => i);
  const stream = tx.bind(tag, { srcPages });
  stream.chunk(tokens);
  const t0 = now();
  const inc: number[] = [];
  for (let l = 0; l < tx.layout.layers; l++) {
    await sleep(layerMs);
    // Streaming: each layer's pages go as soon as it is done. Baseline: nothing until prefill ends.
    if (mode === 'stream') {
      stream.progress.watcher.increment();
      inc.push(now());
    }
  }
  if (mode === 'after') {
    stream.progress.watcher.increment(BigInt(tx.layout.layers));
    inc.push(now());
  }
  const tEnd = inc[inc.length - 1]!;
  stream.finish(new Uint8Array(tailBytes).fill(7));
  await stream.done;
  process.stdout.write(`${JSON.stringify({ tag, t0, tEnd, tWritten: now() })}\n`);
}
await tx.close();
await engine.close();
process.exit(0);
