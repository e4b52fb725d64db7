// MoeStream's host side, with a device-ops double that records each kernel call instead of
// running it (no GPU here): what is refused before anything is queued, what each phase queues,
// how the kernels' error words become errors, and that close frees every allocation. The kernels
// themselves run on GPUs in test/gpu/stream.mjs (eager rounds, 100 graph replays, faults, IPC).
import { TrellisError } from '@trellis/core';
import { describe, expect, it } from 'vitest';
import { type MoeDeviceOps, MoeStream, type MoeStreamArgs, type MoeStreamConfig } from '../src/index.js';

const CFG: MoeStreamConfig = {
  worldSize: 2,
  rank: 0,
  numExperts: 8,
  topk: 2,
  hidden: 256,
  maxTokensPerRank: 16,
  inDtype: 'fp8',
  outDtype: 'bf16',
  scales: true,
};

function double() {
  let next = 0x10000n;
  const live = new Map<bigint, number>();
  const calls: Array<{ op: string; a: MoeStreamArgs }> = [];
  const mapped: ArrayBuffer[] = [];
  const uploads: Array<{ dst: bigint; bytes: Uint8Array }> = [];
  const imported: string[] = [];
  const rec = (op: string) => (_d: number, a: MoeStreamArgs) => {
    calls.push({ op, a });
  };
  const ops: MoeDeviceOps = {
    alloc: (_d, n) => {
      const p = next;
      next += BigInt(n + 4096);
      live.set(p, n);
      return p;
    },
    free: (_d, p) => {
      if (!live.delete(p)) throw new Error(`double free of ${p}`);
    },
    upload: (_d, dst, src) => uploads.push({ dst, bytes: src.slice() }),
    download: () => {},
    copyRows: () => {},
    combine: () => {},
    ipcExport: (_d, p) => p.toString(16).padStart(128, '0'),
    ipcImport: (_d, h) => {
      imported.push(h);
      return BigInt(`0x${h}`) + 0x1000000n;
    },
    ipcClose: () => {},
    proxy: {
      allocMapped: (n) => {
        const buffer = new ArrayBuffer(n);
        mapped.push(buffer);
        return { buffer, devicePtr: 0x7000000n + BigInt(mapped.length) };
      },
      packScratchBytes: (pairs, experts) => 4 * (pairs + experts * 2),
      dispatchPack: () => {},
      unpack: () => {},
      combinePack: () => {},
      gather: () => {},
    },
    stream: {
      sizes: () => ({ state: 24, err: 48 }),
      smCount: () => 132,
      dispatchSend: rec('dispatchSend'),
      dispatchRecv: rec('dispatchRecv'),
      combineSend: rec('combineSend'),
      combineRecv: rec('combineRecv'),
    },
    pointerRange: (p) => {
      for (const [base, size] of live)
        if (p >= base && p < base + BigInt(size)) return { device: 0, base, size };
      throw new Error('cudaPointerGetAttributes: cudaErrorInvalidValue');
    },
  };
  return { ops, live, calls, mapped, uploads, imported };
}

function code(f: () => unknown): string {
  try {
    f();
    return 'none';
  } catch (e) {
    return e instanceof TrellisError ? e.code : String(e);
  }
}
function message(f: () => unknown): string {
  try {
    f();
    return '';
  } catch (e) {
    return (e as Error).message;
  }
}

/** Two ranks of one process, connected, and each rank's input buffers. */
function world() {
  const d = double();
  const ranks = [0, 1].map((rank) => MoeStream.create({ ...CFG, rank }, { ops: d.ops, device: 0 }));
  const descs = ranks.map((m) => m.descriptor);
  for (const m of ranks) m.connect(descs);
  const a = (n: number) => d.ops.alloc(0, n);
  const x = {
    numTokens: 16,
    tokens: a(16 * 256),
    scales: a(16 * 2 * 4),
    topkIds: a(16 * 2 * 4),
    topkWeights: a(16 * 2 * 4),
  };
  const expertOut = a(2 * 16 * 2 * 256 * 2);
  return { d, ranks, x, expertOut };
}

describe('MoeStream (host side, kernels recorded)', () => {
  it('refuses ops without stream kernels, bad configs and a nodeSize other than worldSize', () => {
    const { ops } = double();
    const { stream: _s, ...noStream } = ops;
    expect(code(() => MoeStream.create(CFG, { ops: noStream, device: 0 }))).toBe('UNSUPPORTED');
    expect(message(() => MoeStream.create({ ...CFG, topk: 0 }, { ops, device: 0 }))).toBe(
      'MoeStream.create: topk must be an integer >= 1, got 0',
    );
    expect(code(() => MoeStream.create({ ...CFG, numExperts: 7 }, { ops, device: 0 }))).toBe(
      'INVALID_ARGUMENT',
    );
    expect(code(() => MoeStream.create(CFG, { ops, device: -1 }))).toBe('INVALID_ARGUMENT');
    expect(
      message(() => MoeStream.create({ ...CFG, nodeSize: 1 } as MoeStreamConfig, { ops, device: 0 })),
    ).toMatch(/every rank must be on this node/);
    // Fields of MoeAllToAll only, and misspelt ones, are refused by name.
    for (const [k, v] of [
      ['proxy', true],
      ['immBase', 0],
      ['maxPrivateTokens', 4],
      ['timeOutMs', 5],
    ] as const)
      expect(message(() => MoeStream.create({ ...CFG, [k]: v } as MoeStreamConfig, { ops, device: 0 }))).toBe(
        `MoeStream.create: "${k}" is not a config field (the fields: worldSize, rank, nodeSize, numExperts, topk, hidden, maxTokensPerRank, inDtype, outDtype, scales, scaleBlock, timeoutMs)`,
      );
    const same = MoeStream.create({ ...CFG, nodeSize: CFG.worldSize } as MoeStreamConfig, { ops, device: 0 });
    expect(same.config.nodeSize).toBe(CFG.worldSize);
    same.close();
  });

  it('connects ranks of one process by pointer, others through CUDA IPC; refuses bad descriptors', () => {
    const d = double();
    const a = MoeStream.create(CFG, { ops: d.ops, device: 0 });
    const b = MoeStream.create({ ...CFG, rank: 1 }, { ops: d.ops, device: 0 });
    expect(code(() => a.connect([a.descriptor]))).toBe('INVALID_ARGUMENT');
    expect(code(() => a.connect([a.descriptor, 'gpu:abc']))).toBe('INVALID_DESCRIPTOR');
    expect(message(() => a.connect([b.descriptor, b.descriptor]))).toMatch(
      /descriptor 0 is not this instance's/,
    );
    // Another process's rank: same format, another process token.
    const other = b.descriptor.replace(/:([0-9a-f]{16}):/, ':0123456789abcdef:');
    a.connect([a.descriptor, other]);
    expect(d.imported).toHaveLength(1);
    expect(code(() => a.connect([a.descriptor, other]))).toBe('INVALID_ARGUMENT');
    b.connect([a.descriptor, b.descriptor]);
    expect(d.imported).toHaveLength(1); // rank 0 of this process: by pointer
    const peers = d.uploads.at(-1)!;
    const bases = new BigUint64Array(peers.bytes.buffer);
    expect(bases[0]).toBe(BigInt(`0x${a.descriptor.split(':')[3]}`));
    expect(bases[1]).toBe(BigInt(`0x${b.descriptor.split(':')[3]}`));
    a.close();
    b.close();
  });

  it('queues each phase once, in order, with the layout the kernels need; refuses bad input before queuing', () => {
    const { d, ranks, x, expertOut } = world();
    const m = ranks[0]!;
    const s = 0x5000n;
    d.calls.length = 0;
    expect(message(() => m.dispatchRecv(s))).toBe(
      'MoeStream.dispatchRecv: out of order; the next phase of this round is dispatchSend',
    );
    expect(code(() => m.dispatchSend({ ...x, numTokens: 17 }, s))).toBe('INVALID_ARGUMENT');
    expect(code(() => m.dispatchSend({ ...x, numTokens: 1.5 }, s))).toBe('INVALID_ARGUMENT');
    expect(code(() => m.dispatchSend({ ...x, tokens: 0n }, s))).toBe('INVALID_ARGUMENT');
    expect(message(() => m.dispatchSend({ ...x, topkIds: 0x1234n }, s))).toMatch(
      /topkIds \(0x1234\) is not device memory/,
    );
    const short = d.ops.alloc(0, 64);
    expect(message(() => m.dispatchSend({ ...x, tokens: short }, s))).toBe(
      `MoeStream.dispatchSend: tokens needs 4096 bytes from 0x${short.toString(16)}, but its allocation ends 64 bytes after it`,
    );
    expect(code(() => m.dispatchSend({ ...x, topkWeights: short + 32n }, s))).toBe('OUT_OF_RANGE');
    expect(code(() => m.dispatchSend(x, 'stream' as unknown as bigint))).toBe('INVALID_ARGUMENT');
    expect(d.calls).toHaveLength(0);
    m.dispatchSend(x, { handle: s });
    expect(d.calls).toHaveLength(1);
    const send = d.calls[0]!.a;
    expect(send).toMatchObject({
      stream: s,
      ids: x.topkIds,
      pairs: 32,
      topk: 2,
      experts: 8,
      local: 4,
      W: 2,
      me: 0,
      P: 32,
    });
    expect(code(() => m.dispatchSend(x, s))).toBe('INVALID_ARGUMENT');
    const r = m.dispatchRecv(s);
    expect(r.rowsCapacity).toBe(2 * 16 * 2);
    expect(d.calls[1]).toMatchObject({
      op: 'dispatchRecv',
      a: { tokensPerExpert: r.tokensPerExpert, expertX: r.expertX, grid: 64 },
    });
    expect(code(() => m.combineSend({ expertOut: short }, s))).toBe('OUT_OF_RANGE');
    m.combineSend({ expertOut }, s);
    expect(d.calls[2]!.a).toMatchObject({ expertOut, table: d.calls[1]!.a.table });
    const out = m.combineRecv(s);
    expect(d.calls[3]!.a).toMatchObject({
      out,
      weights: x.topkWeights,
      tokens: 16,
      hidden: 256,
      outFp32: false,
    });
    expect(d.calls.map((c) => c.op)).toEqual(['dispatchSend', 'dispatchRecv', 'combineSend', 'combineRecv']);
    // The next round starts from dispatchSend again.
    m.dispatch(x, s);
    expect(d.calls).toHaveLength(6);
    for (const k of ranks) k.close();
  });

  it("turns the kernels' error records into errors: fatal ones stop the instance, a bad id does not", () => {
    const cases: Array<[number, number, number, bigint, bigint, string, RegExp]> = [
      [
        0,
        1,
        1,
        5n,
        4n,
        'TIMEOUT',
        /round 5: rank 1's dispatch did not arrive within 30000 ms \(it is at round 4/,
      ],
      [0, 2, 1, 6n, 5n, 'TIMEOUT', /rank 1's combine did not arrive/],
      [
        0,
        3,
        1,
        7n,
        99n,
        'DECODE_ERROR',
        /rank 1 wrote routes that do not fit this config \(99 rows for this rank, at most maxTokensPerRank × topk = 32/,
      ],
      [
        1,
        4,
        5,
        8n,
        999n,
        'INVALID_ARGUMENT',
        /topkIds\[5\] \(token 2, k 1\) is 999, not an expert in \[0, 8\) or -1; the slot was dropped/,
      ],
    ];
    for (const [record, c, detail, round, value, want, msg] of cases) {
      const { d, ranks, x } = world();
      const m = ranks[0]!;
      expect(m.failure).toBeUndefined();
      m.check();
      const words = d.mapped[0]!;
      expect(words.byteLength).toBeGreaterThanOrEqual(48);
      new BigInt64Array(words, record * 24 + 8, 2).set([round, value]);
      new Int32Array(words, record * 24, 2).set([c, detail]);
      expect(m.failure?.code).toBe(want);
      expect(m.failure?.message).toMatch(msg);
      expect(code(() => m.check())).toBe(want);
      // Fatal: every later call throws it. A bad id: rounds go on, check() keeps reporting it.
      expect(code(() => m.dispatchSend(x, 1n))).toBe(record === 0 ? want : 'none');
      m.close();
      expect(m.failure).toBeUndefined();
      expect(code(() => m.dispatchSend(x, 1n))).toBe('CLOSED');
      ranks[1]!.close();
    }
  });

  it('a fatal failure outranks a bad id reported before it', () => {
    const { d, ranks } = world();
    const words = d.mapped[0]!;
    new Int32Array(words, 24, 2).set([4, 0]);
    expect(ranks[0]!.failure?.code).toBe('INVALID_ARGUMENT');
    new Int32Array(words, 0, 2).set([1, 1]);
    expect(ranks[0]!.failure?.code).toBe('TIMEOUT');
    for (const m of ranks) m.close();
  });

  it('close frees every allocation it made, once', () => {
    const d = double();
    const before = d.live.size;
    const m = MoeStream.create(CFG, { ops: d.ops, device: 0 });
    expect(d.live.size).toBeGreaterThan(before);
    m.close();
    m.close();
    expect(d.live.size).toBe(before);
  });
});
