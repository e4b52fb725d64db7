// A minimal prefill server: an HTTP control plane, a Trellis engine, and a KvStreamSender.
//   GET  /address          → this engine's NetAddr (decode servers send page tables to it)
//   POST /prefill {tag, tokens, tailBytes} → runs the (synthetic) model on the prompt, streaming
//        each layer's KV to whichever decode server admitted `tag`; answers when every write is done.
// Run: node dist-examples/prefill-server.js [port]   (TRELLIS_PROVIDER=shm|tcp picks the fabric)
import { createServer } from 'node:http';
import { createEngine } from '@trellis/backend-efa';
import { KvStreamSender } from '@trellis/kvstream';
import { LAYOUT, readJson, syntheticLayer } from './shared.js';

const port = Number(process.argv[2] ?? 8100);
const engine = await createEngine({ provider: (process.env.TRELLIS_PROVIDER as 'shm' | 'tcp') ?? 'tcp' });
const kv = await KvStreamSender.create({ engine, layout: LAYOUT });

// This server's own page allocator (a real server has its KV cache manager here).
const free = Array.from({ length: LAYOUT.pages }, (_, i) => i);

const server = createServer(async (req, res) => {
  try {
    if (req.method === 'GET' && req.url === '/address') {
      res.end(engine.address.toString());
      return;
    }
    if (req.method === 'POST' && req.url === '/prefill') {
      const { tag, tokens, tailBytes } = (await readJson(req)) as {
        tag: string;
        tokens: number;
        tailBytes: number;
      };
      const n = kv.layout.pagesFor(tokens);
      if (n > free.length) throw new Error(`prefill cache full (${n} pages needed, ${free.length} free)`);
      const srcPages = Uint32Array.from(free.splice(0, n));
      // Bind before or after the page table arrives: kvstream waits for both.
      const stream = kv.bind(tag, { srcPages });
      stream.chunk(tokens); // one chunk; call chunk() per chunk for chunked prefill
      for (let l = 0; l < kv.layout.layers; l++) {
        await syntheticLayer(kv, tag, srcPages, l, tokens); // "attention + MLP" writes layer l's KV
        stream.progress.watcher.increment(); // after the layer's attention output projection
      }
      // The opaque tail: here the "hidden state", exactly the size decode asked for.
      stream.finish(
        new TextEncoder().encode(`hidden-state-of-${tag}`.padEnd(tailBytes, '.').slice(0, tailBytes)),
      );
      await stream.done;
      free.push(...srcPages);
      res.end(JSON.stringify({ tag, ok: true }));
      return;
    }
    res.statusCode = 404;
    res.end();
  } catch (e) {
    res.statusCode = 500;
    res.end(JSON.stringify({ error: e instanceof Error ? e.message : String(e) }));
  }
});
server.listen(port, '127.0.0.1', () => console.log(`prefill server on :${port}, engine ${engine.kind}`));
process.on('SIGTERM', async () => {
  server.close();
  await kv.close();
  await engine.close();
  process.exit(0);
});
