// `trellis bench`: the sweep on one host, across two processes through the rendezvous store, and on
// backend-verbs; every row's bytes verified.
import { describe, expect, it } from 'vitest';
import { benchHeader, benchHtml, runBench } from '../src/bench.js';

describe('trellis bench', () => {
  it('sweeps sizes into a second process, verifies each, and renders a self-contained HTML report', async () => {
    const progress: number[] = [];
    const r = await runBench({
      provider: 'tcp',
      sizes: [4096, 1 << 20],
      bytesPerSize: 4 << 20,
      progress: (d) => progress.push(d),
    });
    expect(r.rows.map((x) => [x.size, x.writes, x.verified])).toEqual([
      [4096, 1024, true],
      [1 << 20, 4, true],
    ]);
    expect(progress).toEqual([1, 2]);
    const html = benchHtml(r);
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).toContain('<svg');
    expect(html).toContain('<td>1 MiB</td><td>4</td>');
  }, 60_000);
});

/** `trellis bench --serve` on a free port, ready (it printed its first line); its stderr collected. */
async function serve() {
  const { spawn } = await import('node:child_process');
  const { createServer } = await import('node:net');
  const { fileURLToPath } = await import('node:url');
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
  const server = spawn(
    process.execPath,
    [bin, 'bench', '--serve', '--port', String(port), '--provider', 'tcp'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const out = { stderr: '' };
  server.stderr!.on('data', (d) => {
    out.stderr += d;
  });
  const exited = new Promise((r) => server.on('exit', r));
  await new Promise<void>((r) => server.stdout!.once('data', () => r()));
  return { spawn, bin, port, exited, out };
}

describe('trellis bench across hosts (here: two processes through the rendezvous store)', () => {
  it('--serve hosts the target and a store; --connect writes into it and verifies each size', async () => {
    const { port, exited } = await serve();
    const r = await runBench({
      provider: 'tcp',
      sizes: [4096, 1 << 20],
      bytesPerSize: 2 << 20,
      connect: `127.0.0.1:${port}`,
    });
    expect(r.rows.map((x) => [x.size, x.writes, x.verified])).toEqual([
      [4096, 512, true],
      [1 << 20, 2, true],
    ]);
    expect(await exited).toBe(0); // the server stops when the client is done
  }, 60_000);

  it('--serve whose client is SIGKILLed mid-run: says the client went away and exits 1 (it waited for ever)', async () => {
    const { spawn, bin, port, exited, out } = await serve();
    // A client with far more to write than it gets time for; killed once it has connected.
    const client = spawn(
      process.execPath,
      [bin, 'bench', '--connect', `127.0.0.1:${port}`, '--sizes', '4096,67108864'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let clientOut = '';
    await new Promise<void>((r) =>
      client.stderr!.on('data', (d) => {
        clientOut += d;
        if (clientOut.includes('connected to')) r();
      }),
    );
    await new Promise((r) => setTimeout(r, 500));
    client.kill('SIGKILL');
    expect(await exited).toBe(1);
    expect(out.stderr.trim()).toBe(
      'trellis: bench --serve: the client went away (its connection to this store closed) before it said exit (--debug for the stack)',
    );
  }, 60_000);
});

describe('trellis bench on backend-verbs', () => {
  it('runs the sweep over ibverbs RC (the software model where no device exists), verified', async () => {
    const r = await runBench({ backend: 'verbs', sizes: [65536], bytesPerSize: 1 << 20 });
    expect(r.rows.map((x) => [x.size, x.writes, x.verified])).toEqual([[65536, 16, true]]);
    expect(r.provider).toMatch(/^verbs/);
    // It does not use libfabric, and its header says none.
    expect(r.libfabric).toBeNull();
    expect(r.versions.libfabric).toBeNull();
    expect(benchHeader(r)).not.toContain('libfabric');
    expect(benchHeader(r)).toMatch(/^verbs( \(software RC model\))?, 1 NIC\(s\), \d+ x /);
  }, 60_000);
});
