// `trellis demo`: a small cluster of processes on this host running every transfer kind (sweep,
// KV streaming, weight sync, MoE), each verified byte for byte, ending with a table.
import {
  createLoopbackFabric,
  lanesBetween,
  MrDesc,
  NetAddr,
  Prng,
  type TransferEngine,
} from '@trellis/core';

/** One verified step of the demo. */
export interface DemoRow {
  step: string;
  bytes: number;
  imms: number;
  ms: number;
  verified: boolean;
}

/** Options of {@link runDemo}. */
export interface DemoOptions {
  nics?: number;
  seed?: number;
  /** Progress lines go here. */
  log?: (line: string) => void;
}

function fill(b: Uint8Array, seed: number): void {
  new Prng(seed).fill(b);
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/**
 * Two loopback engines exchange addresses and descriptors over send/recv, then run every kind of
 * write, each verified byte for byte at the target and counted by immediates.
 */
export async function runDemo(opts: DemoOptions = {}): Promise<DemoRow[]> {
  const log = opts.log ?? (() => {});
  const fabric = createLoopbackFabric({ nics: opts.nics ?? 2, seed: opts.seed ?? 1 });
  const prefill = fabric.createEngine();
  const decode = fabric.createEngine();
  const rows: DemoRow[] = [];
  try {
    log(
      `fabric: loopback, ${prefill.nics} NIC(s) per engine, seed ${fabric.seed} (deliveries in random order)`,
    );
    // 1. decode posts receives; prefill sends its address; decode answers with a descriptor.
    const size = 8 << 20;
    const dst = await decode.registerMemory(size, { remote: true });
    const src = await prefill.registerMemory(size);
    fill(src.buffer!, 42);
    const descText = await handshake(prefill, decode, dst.desc);
    const desc = MrDesc.parse(descText);
    log(`handshake: prefill got decode's descriptor (${descText.length} chars) over send/recv`);

    const lanes = lanesBetween(prefill.nics, decode.nics);
    const step = async (
      name: string,
      imm: number,
      bytes: number,
      run: () => Promise<void>,
      check: () => boolean,
      n: number,
    ) => {
      const t0 = performance.now();
      const arrived = decode.immCounter(imm).wait(n, { timeoutMs: 10_000 });
      await run();
      await arrived;
      const row = { step: name, bytes, imms: n, ms: performance.now() - t0, verified: check() };
      rows.push(row);
      log(
        `${row.verified ? 'ok  ' : 'FAIL'} ${name}: ${bytes} bytes, ${n} imm(s) in ${row.ms.toFixed(1)} ms`,
      );
    };

    // 2. one 8 MiB write, sharded over the NICs
    const single = { src, length: size, dst: desc, imm: 1 };
    await step(
      'single write 8 MiB',
      1,
      size,
      () => prefill.submitSingleWrite(single),
      () => same(dst.buffer!, src.buffer!),
      prefill.expectedImms({ kind: 'single', ...single }),
    );

    // 3. 512 pages of 4 KiB in a shuffled page table
    fill(src.buffer!, 7);
    const pages = 512;
    const srcPages = Uint32Array.from({ length: pages }, (_, i) => i);
    const dstPages = Uint32Array.from({ length: pages }, (_, i) => (i * 37) % pages);
    const paged = {
      src,
      srcPages,
      srcStride: 4096,
      dst: desc,
      dstPages,
      dstStride: 4096,
      pageBytes: 4096,
      imm: 2,
    };
    await step(
      'paged writes 512 x 4 KiB',
      2,
      pages * 4096,
      () => prefill.submitPagedWrites(paged),
      () => {
        for (let i = 0; i < pages; i++) {
          const s = src.buffer!.subarray(i * 4096, (i + 1) * 4096);
          const d = dst.buffer!.subarray(dstPages[i]! * 4096, (dstPages[i]! + 1) * 4096);
          if (!same(s, d)) return false;
        }
        return true;
      },
      pages,
    );

    // 4. scatter of 4 slices, each sharded by bytes
    fill(src.buffer!, 9);
    const slice = 1 << 20;
    const targets = [0, 1, 2, 3].map((i) => ({
      dst: desc,
      srcOffset: i * slice,
      dstOffset: (3 - i) * slice,
      length: slice,
    }));
    const scatter = { src, targets, imm: 3, routing: 'bytes' as const };
    await step(
      'scatter 4 x 1 MiB (by bytes)',
      3,
      4 * slice,
      () => prefill.submitScatter(scatter),
      () =>
        targets.every((t) =>
          same(
            src.buffer!.subarray(t.srcOffset, t.srcOffset + slice),
            dst.buffer!.subarray(t.dstOffset, t.dstOffset + slice),
          ),
        ),
      prefill.expectedImms({ kind: 'scatter', ...scatter }),
    );

    // 5. barrier
    const group = prefill.addPeerGroup([decode.address]);
    await step(
      'barrier',
      4,
      0,
      () => prefill.submitBarrier({ group, imm: 4 }),
      () => decode.immCounter(4).total === 1,
      1,
    );
    // 6. an immediate alone
    await step(
      'immediate',
      5,
      0,
      () => prefill.submitImm({ dst: decode.address, imm: 5 }),
      () => decode.immCounter(5).total === 1,
      1,
    );

    // 7. a batch: 16 single writes of 4 KiB, one paged write of 8 pages and an immediate, one call
    fill(src.buffer!, 11);
    const k4 = 4096;
    const batch = [
      ...Array.from({ length: 16 }, (_, i) => ({
        kind: 'single' as const,
        src,
        srcOffset: i * k4,
        length: k4,
        dst: desc,
        dstOffset: (15 - i) * k4,
        imm: 6,
      })),
      {
        kind: 'paged' as const,
        src,
        srcPages: Uint32Array.from({ length: 8 }, (_, i) => 16 + i),
        srcStride: k4,
        dst: desc,
        dstPages: Uint32Array.from({ length: 8 }, (_, i) => 32 + 7 - i),
        dstStride: k4,
        pageBytes: k4,
        imm: 6,
      },
      { kind: 'imm' as const, dst: decode.address, imm: 6 },
    ];
    await step(
      'batch: 16 x 4 KiB + 8 pages + imm',
      6,
      24 * k4,
      async () => {
        const r = await prefill.submitBatch(batch);
        if (r.failed) throw r.errors.find((e) => e !== undefined);
      },
      () =>
        Array.from({ length: 16 }, (_, i) => i).every((i) =>
          same(
            src.buffer!.subarray(i * k4, (i + 1) * k4),
            dst.buffer!.subarray((15 - i) * k4, (16 - i) * k4),
          ),
        ) &&
        Array.from({ length: 8 }, (_, i) => i).every((i) =>
          same(
            src.buffer!.subarray((16 + i) * k4, (17 + i) * k4),
            dst.buffer!.subarray((39 - i) * k4, (40 - i) * k4),
          ),
        ),
      batch.reduce((n, r) => n + prefill.expectedImms(r), 0),
    );

    // 8. prepared writes: validated once, posted twice with new offsets (32 x 4 KiB each)
    fill(src.buffer!, 13);
    const prepared = prefill.prepareWrites({ src, dst: desc, imm: 7 });
    // [srcOffset, dstOffset, length] per write: write i of a post at `base` lands reversed.
    const offsets = (base: number) =>
      Float64Array.from({ length: 96 }, (_, j) => {
        const i = Math.floor(j / 3);
        return [base + i * k4, base + (31 - i) * k4, k4][j % 3]!;
      });
    await step(
      'prepared writes 2 posts x 32 x 4 KiB',
      7,
      64 * k4,
      async () => {
        await prepared.post(offsets(0));
        await prepared.post(offsets(64 * k4));
      },
      () =>
        [0, 64 * k4].every((base) =>
          Array.from({ length: 32 }, (_, i) => i).every((i) =>
            same(
              src.buffer!.subarray(base + i * k4, base + (i + 1) * k4),
              dst.buffer!.subarray(base + (31 - i) * k4, base + (32 - i) * k4),
            ),
          ),
        ),
      64,
    );
    log(`lanes used between the engines: ${lanes}`);
    const stats = prefill.stats();
    log(
      `prefill stats: ${stats.ops.completed} ops completed, ${stats.nics.map((n) => `nic${n.index} ${n.bytesWritten} B`).join(', ')}`,
    );
    return rows;
  } finally {
    await fabric.close();
  }
}

/** Decode listens; prefill sends its address; decode replies with the descriptor text. */
async function handshake(prefill: TransferEngine, decode: TransferEngine, desc: MrDesc): Promise<string> {
  const ac = new AbortController();
  const decodeSide = decode.submitRecvs({ maxBytes: 1024, count: 4, signal: ac.signal }, (m) => {
    const peer = NetAddr.parse(new TextDecoder().decode(m.data));
    void decode.submitSend(peer, new TextEncoder().encode(desc.toString()));
  });
  const got = new Promise<string>((resolve) => {
    void prefill.submitRecvs({ maxBytes: 1024, count: 1, signal: ac.signal }, (m) =>
      resolve(new TextDecoder().decode(m.data)),
    );
  });
  await prefill.submitSend(decode.address, new TextEncoder().encode(prefill.address.toString()));
  const text = await got;
  ac.abort();
  await decodeSide;
  return text;
}
