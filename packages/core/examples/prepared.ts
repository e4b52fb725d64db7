// prepareWrites: the source, destination and immediate are checked once; each post then sends
// many writes — [srcOffset, dstOffset, length] triples in a Float64Array — as one operation.
import { createLoopbackFabric } from '@trellis/core';

const fabric = createLoopbackFabric({ nics: 2, seed: 5 });
const [writer, reader] = [fabric.createEngine(), fabric.createEngine()];
const dst = await reader.registerMemory(1 << 20, { remote: true });
const src = await writer.registerMemory(1 << 20);
src.buffer!.set(Uint8Array.from({ length: 1 << 20 }, (_, i) => (i * 7) & 0xff));

const writes = writer.prepareWrites({ src, dst: dst.desc, imm: 9 });
// 64 blocks of 4 KiB, gathered from every other block of the source, packed side by side.
const list = new Float64Array(3 * 64);
for (let i = 0; i < 64; i++) list.set([2 * i * 4096, i * 4096, 4096], 3 * i);

// A range outside the destination refuses the post, naming the write, before anything is posted.
const bad = Float64Array.of(0, (1 << 20) - 100, 4096);
const refused = await writes.post(bad).catch((e: Error) => e.message);
console.log(`refused: ${refused}`);

const arrived = reader.immCounter(9).wait(64, { timeoutMs: 5000 }); // one arrival per write
await writes.post(list);
await arrived;
const ok = Array.from({ length: 64 }, (_, i) => i).every((i) =>
  dst.buffer!.subarray(i * 4096, (i + 1) * 4096).every((v, o) => v === (((2 * i * 4096 + o) * 7) & 0xff)),
);
console.log(`64 writes in one post: every byte in place: ${ok}; operations: ${writer.stats().ops.submitted}`);
await fabric.close();
