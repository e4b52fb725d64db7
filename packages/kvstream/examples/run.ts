// Start the prefill and decode servers as two Node processes, send a few requests to decode, print
// what came back, stop both. `node dist-examples/run.js`
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const here = (f: string) => fileURLToPath(new URL(f, import.meta.url));
function start(script: string, args: string[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, [here(script), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.stdout!.once('data', (d: Buffer) => {
      process.stdout.write(`[${script}] ${d}`);
      resolve(child);
    });
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code}`)));
  });
}

const prefill = await start('./prefill-server.js', ['18100']);
const decode = await start('./decode-server.js', ['18200', 'http://127.0.0.1:18100']);
try {
  const prompts = [100, 16, 777, 1];
  const results = await Promise.all(
    prompts.map(async (tokens) => {
      const r = await fetch('http://127.0.0.1:18200/generate', {
        method: 'POST',
        body: JSON.stringify({ tokens }),
      });
      return (await r.json()) as Record<string, unknown>;
    }),
  );
  for (const r of results)
    console.log(
      `generate(${r.tokens} tokens): ${r.pages} pages, KV ${r.kvChecksum}, tail "${String(r.hidden).slice(0, 16)}…", ${r.ms} ms`,
    );
} finally {
  prefill.kill('SIGTERM');
  decode.kill('SIGTERM');
}
