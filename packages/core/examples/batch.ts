// submitBatch: one call posts 32 small writes to two peers and an immediate; every request is
// checked before any is posted, and each one's outcome comes back in order.
import { createLoopbackFabric, type TransferRequest } from '@trellis/core';

const fabric = createLoopbackFabric({ nics: 2, seed: 3 });
const writer = fabric.createEngine();
const [a, b] = [fabric.createEngine(), fabric.createEngine()];
const [da, db] = [
  await a.registerMemory(64 * 1024, { remote: true }),
  await b.registerMemory(64 * 1024, { remote: true }),
];
const src = await writer.registerMemory(64 * 1024);
src.buffer!.set(Uint8Array.from({ length: 64 * 1024 }, (_, i) => i & 0xff));

const requests: TransferRequest[] = [];
for (let i = 0; i < 32; i++) {
  const dst = i % 2 ? db : da;
  requests.push({
    kind: 'single',
    src,
    srcOffset: i * 2048,
    length: 2048,
    dst: dst.desc,
    dstOffset: i * 2048,
    imm: 1,
  });
}
requests.push({ kind: 'imm', dst: b.address, imm: 2 });

// One bad request refuses the whole batch before anything is posted.
const bad = { kind: 'single' as const, src, length: 2048, dst: da.desc, dstOffset: 64 * 1024 };
const refused = await writer.submitBatch([...requests, bad]).catch((e: Error) => e.message);
console.log(`refused: ${refused}`);

const arrived = [
  a.immCounter(1).wait(16, { timeoutMs: 5000 }),
  b.immCounter(1).wait(16, { timeoutMs: 5000 }),
];
const result = await writer.submitBatch(requests);
await Promise.all(arrived);
const ok = [da, db].every((d, k) =>
  Array.from({ length: 16 }, (_, j) => 2 * j + k).every((i) =>
    d.buffer!.subarray(i * 2048, (i + 1) * 2048).every((v, o) => v === ((i * 2048 + o) & 0xff)),
  ),
);
console.log(`batch of ${requests.length}: ${result.failed} failed; every byte in place: ${ok}`);
await fabric.close();
