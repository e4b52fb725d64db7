// `pnpm --filter @trellis/kvstream bench` — a synthetic prefill (in a child process) streams a
// model-shaped KV cache to decode (this process) over backend-efa, layer by layer, against a
// baseline that sends the whole KV after prefill ends, in the same run.
//
//   node dist/bench/run.js [--provider shm|tcp] [--nics N] [--layers 94] [--tokens 16384]
//        [--tokens-per-page 16] [--bytes-per-token 1024] [--layer-ms auto|N] [--tail-bytes 16384]
//
// --layer-ms auto (default) first measures the whole-KV transfer with no compute, then sets each
// layer's compute to 1.5x the per-layer transfer: the regime streaming is for (compute-bound). A
// compute time below the per-layer transfer makes the link the bottleneck and the tail a backlog.
//        [--trials 3] [--quick] [--json out.json]
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createEngine, type Provider } from '@trellis/backend-efa';
import { NetAddr } from '@trellis/core';
import { type KvLayoutSpec, KvStreamReceiver } from '@trellis/kvstream';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : dflt;
};
const quick = args.includes('--quick');
const provider = opt('--provider', 'shm') as Provider;
const nics = Number(opt('--nics', '1'));
const layers = Number(opt('--layers', quick ? '16' : '94'));
const tokens = Number(opt('--tokens', quick ? '2048' : '16384'));
const tpp = Number(opt('--tokens-per-page', '16'));
const bpt = Number(opt('--bytes-per-token', '1024'));
const layerMsArg = opt('--layer-ms', 'auto');
let layerMs = layerMsArg === 'auto' ? 0 : Number(layerMsArg);
const tailBytes = Number(opt('--tail-bytes', '16384'));
const trials = Number(opt('--trials', quick ? '1' : '3'));
const jsonOut = opt('--json', '');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

// K and V per layer; a page is tpp tokens: tpp × bpt × 2 bytes per page per layer.
const pages = Math.ceil(tokens / tpp);
const layout: KvLayoutSpec = {
  layers,
  tokensPerPage: tpp,
  pages,
  tensors: [
    { name: 'k', bytesPerToken: bpt },
    { name: 'v', bytesPerToken: bpt },
  ],
};
const pageBytes = tpp * bpt * 2;
const kvBytes = layers * pages * pageBytes;
const now = () => performance.timeOrigin + performance.now();

const engine = await createEngine({ provider, nics, opTimeoutMs: 120_000 });
const rx = await KvStreamReceiver.create({ engine, layout, maxTailBytes: tailBytes, maxRequests: 4 });
const child = spawn(
  process.execPath,
  [
    fileURLToPath(new URL('./prefill.js', import.meta.url)),
    JSON.stringify({ provider, nics, layout, maxTailBytes: tailBytes }),
  ],
  { stdio: ['pipe', 'pipe', 'inherit'] },
);
const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
const prefill = NetAddr.parse((JSON.parse((await lines.next()).value as string) as { addr: string }).addr);

async function once(mode: 'stream' | 'after', n: number) {
  const tag = `${mode}-${n}`;
  const adm = rx.admit({ prefill, tokens, tailBytes, tag, timeoutMs: 600_000 });
  child.stdin!.write(`${JSON.stringify({ run: { tag, tokens, layerMs, mode, tailBytes } })}\n`);
  const kv = await adm.done;
  const tDone = now();
  const r = JSON.parse((await lines.next()).value as string) as { t0: number; tEnd: number };
  kv.release();
  return { compute: r.tEnd - r.t0, tail: tDone - r.tEnd };
}

if (layerMsArg === 'auto') {
  const probe = await once('after', -1);
  layerMs = Math.max(1, Math.ceil((1.5 * probe.tail) / layers));
}
const rows: Record<'stream' | 'after', Array<{ compute: number; tail: number }>> = { stream: [], after: [] };
for (let t = 0; t < trials; t++) {
  rows.after.push(await once('after', t));
  rows.stream.push(await once('stream', t));
  process.stderr.write('.');
}
process.stderr.write('\n');
child.stdin!.write(`${JSON.stringify({ exit: true })}\n`);
await new Promise((r) => child.on('exit', r));
await rx.close();
await engine.close();

const xfer = median(rows.after.map((r) => r.tail)); // the whole KV after prefill ends
const perLayer = xfer / layers;
const tail = median(rows.stream.map((r) => r.tail));
const finalBytes = (tokens % tpp) * bpt * 2 * layers + tailBytes;
const finalEst = (finalBytes / kvBytes) * xfer;
const hidden = 1 - tail / xfer;
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
console.log(
  `kvstream over backend-efa ${provider === 'tcp' ? 'tcp;ofi_rxm' : provider}, ${nics} NIC(s), ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`,
);
console.log(
  `layout: ${layers} layers, ${tokens} tokens, ${tpp} tokens/page, ${pageBytes / 1024} KiB pages per layer (K+V), KV ${mib(kvBytes)}; tail ${tailBytes} B; compute ${layerMs} ms/layer (sleep${layerMsArg === 'auto' ? ', auto: 1.5x the per-layer transfer' : ''}); median of ${trials}`,
);
console.log('');
console.log(
  '| mode | prefill compute | last layer → KV complete at decode | transfer hidden behind compute |',
);
console.log('|---|---|---|---|');
console.log(
  `| baseline: whole KV after prefill ends | ${median(rows.after.map((r) => r.compute)).toFixed(1)} ms | ${xfer.toFixed(1)} ms | 0% |`,
);
console.log(
  `| kvstream: layer by layer | ${median(rows.stream.map((r) => r.compute)).toFixed(1)} ms | ${tail.toFixed(1)} ms | ${(hidden * 100).toFixed(1)}% |`,
);
console.log('');
console.log(
  `per-layer transfer (baseline transfer / layers): ${perLayer.toFixed(2)} ms; final write ${finalBytes} B ≈ ${finalEst.toFixed(3)} ms at the baseline's rate; aim: tail ≤ one layer + final write = ${(perLayer + finalEst).toFixed(2)} ms → ${tail <= perLayer + finalEst ? 'met' : 'not met'} (tail = ${(tail / perLayer).toFixed(2)} layers)`,
);
if (jsonOut)
  writeFileSync(
    jsonOut,
    JSON.stringify(
      {
        machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version },
        provider,
        nics,
        layout,
        layerMs,
        tailBytes,
        trials,
        rows,
        xfer,
        perLayer,
        tail,
        hidden,
      },
      null,
      2,
    ),
  );
