// One process of the weightsync benchmark: a trainer or an inference rank on backend-efa.
// argv[2]: JSON {role, rank, provider, nics, config}; stdin/stdout: JSON lines (see run.ts).
import { createInterface } from 'node:readline';
import { createEngine, type Provider } from '@trellis/backend-efa';
import { countImms, lanesBetween, MrDesc, NetAddr } from '@trellis/core';
import { WeightSyncReceiver, WeightSyncSender } from '@trellis/weightsync';
import { type BenchConfig, benchPlan } from './model.js';

const { role, rank, provider, nics, config } = JSON.parse(process.argv[2]!) as {
  role: 'trainer' | 'inference';
  rank: number;
  provider: Provider;
  nics: number;
  config: BenchConfig;
};
const plan = benchPlan(config);
const engine = await createEngine({ provider, nics, opTimeoutMs: 600_000 });
const out = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
const now = () => performance.timeOrigin + performance.now();
const CHUNK = 64 << 20;
const GATHER_IMM = 0x47410000;
const BCAST_IMM = 0x42430000;
const totalBytes = plan.trainerBytes.reduce((a, b) => a + b, 0);

if (role === 'inference') {
  const rx = await WeightSyncReceiver.create({ engine, plan, rank });
  // The baseline's landing zone: the whole gathered model, broadcast from trainer 0.
  const full = await engine.registerMemory(totalBytes, { remote: true });
  out({
    addr: engine.address.toString(),
    descs: rx.descriptors().map((d) => d.toString()),
    full: full.desc.toString(),
  });
  for await (const line of createInterface({ input: process.stdin })) {
    const m = JSON.parse(line) as {
      exit?: boolean;
      sync?: { step: number; version: number };
      base?: { trainer0: string };
    };
    if (m.exit) break;
    if (m.sync) {
      await rx.expect({ ...m.sync, timeoutMs: 600_000 });
      out({ done: now() });
    }
    if (m.base) {
      // trainer 0 writes the whole model here in CHUNK-sized single writes.
      const lanes = lanesBetween(NetAddr.parse(m.base.trainer0).nics.length, engine.nics);
      let n = 0;
      for (let off = 0; off < totalBytes; off += CHUNK)
        n += countImms({ kind: 'single', length: Math.min(CHUNK, totalBytes - off), imm: BCAST_IMM }, lanes);
      await engine.immCounter(BCAST_IMM).wait(n, { timeoutMs: 600_000 });
      out({ done: now() });
    }
  }
} else {
  const source = new Uint8Array(plan.trainerBytes[rank]!);
  for (let i = 0; i < source.length; i += 4096) source[i] = (i >> 12) & 0xff;
  // Trainer 0 gathers everyone's weights for the baseline.
  const gather = rank === 0 ? await engine.registerMemory(totalBytes, { remote: true }) : undefined;
  const mine = await engine.registerMemory(source.length);
  mine.buffer!.set(source);
  out({ addr: engine.address.toString(), gather: gather?.desc.toString() });
  let tx: WeightSyncSender | undefined;
  for await (const line of createInterface({ input: process.stdin })) {
    const m = JSON.parse(line) as {
      exit?: boolean;
      targets?: string[][];
      sync?: { step: number; version: number };
      base?: { gather: string; full: string[]; peers: string[] };
    };
    if (m.exit) break;
    if (m.targets) {
      const targets = m.targets.map((t) => [MrDesc.parse(t[0]!), MrDesc.parse(t[1]!)] as const);
      tx = await WeightSyncSender.create({ engine, plan, rank, source, targets, stagingBytes: 64 << 20 });
      out({ ready: true });
    }
    if (m.sync) {
      const r = await tx!.sync({ ...m.sync, timeoutMs: 600_000 });
      out({ synced: r.bytes, ms: r.ms });
    }
    if (m.base) {
      const at = plan.trainerBytes.slice(0, rank).reduce((a, b) => a + b, 0);
      if (rank !== 0) {
        // Gather: this rank's weights into trainer 0's buffer.
        const dst = MrDesc.parse(m.base.gather);
        const w: Promise<void>[] = [];
        for (let off = 0; off < source.length; off += CHUNK)
          w.push(
            engine.submitSingleWrite({
              src: mine,
              srcOffset: off,
              length: Math.min(CHUNK, source.length - off),
              dst,
              dstOffset: at + off,
              imm: GATHER_IMM,
            }),
          );
        await Promise.all(w);
        out({ synced: source.length });
      } else {
        gather!.buffer!.set(source, 0);
        let n = 0;
        for (let r = 1; r < plan.trainer.ranks; r++) {
          const lanes = lanesBetween(NetAddr.parse(m.base.peers[r]!).nics.length, engine.nics);
          for (let off = 0; off < plan.trainerBytes[r]!; off += CHUNK)
            n += countImms(
              { kind: 'single', length: Math.min(CHUNK, plan.trainerBytes[r]! - off), imm: GATHER_IMM },
              lanes,
            );
        }
        await engine.immCounter(GATHER_IMM).wait(n, { timeoutMs: 600_000 });
        // Broadcast: the whole model to every inference rank.
        const w: Promise<void>[] = [];
        for (const f of m.base.full) {
          const dst = MrDesc.parse(f);
          for (let off = 0; off < totalBytes; off += CHUNK)
            w.push(
              engine.submitSingleWrite({
                src: gather!,
                srcOffset: off,
                length: Math.min(CHUNK, totalBytes - off),
                dst,
                dstOffset: off,
                imm: BCAST_IMM,
              }),
            );
        }
        await Promise.all(w);
        out({ synced: totalBytes * m.base.full.length });
      }
    }
  }
  await tx?.close();
}
await engine.close();
process.exit(0);
