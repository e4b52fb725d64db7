// A minimal decode server: an HTTP control plane, a Trellis engine, and a KvStreamReceiver.
//   POST /generate {tokens} → admits the request (pages + page table to the prefill server), asks
//        the prefill server to run it, waits until the KV is complete (no "done" message: an
//        immediate counter), "decodes", returns the pages to the pool.
// Run: node dist-examples/decode-server.js [port] [prefill-url]
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { createEngine } from '@trellis/backend-efa';
import { NetAddr } from '@trellis/core';
import { KvStreamReceiver } from '@trellis/kvstream';
import { checksumKv, LAYOUT, readJson } from './shared.js';

const port = Number(process.argv[2] ?? 8200);
const prefillUrl = process.argv[3] ?? 'http://127.0.0.1:8100';
const engine = await createEngine({ provider: (process.env.TRELLIS_PROVIDER as 'shm' | 'tcp') ?? 'tcp' });
const kv = await KvStreamReceiver.create({ engine, layout: LAYOUT, maxTailBytes: 64 });
const prefill = NetAddr.parse(await (await fetch(`${prefillUrl}/address`)).text());

const server = createServer(async (req, res) => {
  try {
    if (req.method === 'POST' && req.url === '/generate') {
      const { tokens } = (await readJson(req)) as { tokens: number };
      const tag = randomUUID();
      const t0 = performance.now();
      const adm = kv.admit({ prefill, tokens, tailBytes: 64, tag, timeoutMs: 30_000 });
      const ran = fetch(`${prefillUrl}/prefill`, {
        method: 'POST',
        body: JSON.stringify({ tag, tokens, tailBytes: 64 }),
      });
      const ready = await adm.done; // every page of every layer and the tail are here
      const ms = performance.now() - t0;
      const sum = checksumKv(kv, tag, ready.pages, tokens);
      const hidden = new TextDecoder().decode(ready.tail).replace(/\.+$/, '');
      ready.release(); // a real server releases after decoding
      await ran;
      res.end(
        JSON.stringify({
          tag,
          tokens,
          pages: ready.pages.length,
          kvChecksum: sum,
          hidden,
          ms: Math.round(ms),
        }),
      );
      return;
    }
    res.statusCode = 404;
    res.end();
  } catch (e) {
    res.statusCode = 500;
    res.end(JSON.stringify({ error: e instanceof Error ? e.message : String(e) }));
  }
});
server.listen(port, '127.0.0.1', () => console.log(`decode server on :${port}, prefill at ${prefillUrl}`));
process.on('SIGTERM', async () => {
  server.close();
  await kv.close();
  await engine.close();
  process.exit(0);
});
