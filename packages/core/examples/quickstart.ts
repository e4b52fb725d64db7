// Quickstart: a "prefill" engine writes 64 pages into a "decode" engine's region with one paged
// write; decode knows from countImms how many immediates mean "all pages are here".
import { countImms, createLoopbackFabric, lanesBetween, MrDesc, NetAddr } from '@trellis/core';

// Two engines on an in-process fabric with 2 NICs each; deliveries come in a seeded random order.
const fabric = createLoopbackFabric({ nics: 2, seed: 7 });
const prefill = fabric.createEngine();
const decode = fabric.createEngine();

// Decode registers a target region peers may write into, and publishes its descriptor.
const kv = await decode.registerMemory(64 * 4096, { remote: true });
const descText = kv.desc.toString(); // send this to the peer any way you like
const addrText = prefill.address.toString(); // and this the other way

// Prefill: its own source memory, the peer's descriptor decoded from text.
const src = await prefill.registerMemory(64 * 4096);
src.buffer!.fill(0xab);
const dst = MrDesc.parse(descText);

// Decode knows how many immediates to expect without asking: 64 pages, one imm each.
const lanes = lanesBetween(NetAddr.parse(addrText).nics.length, decode.nics);
const expected = countImms({ kind: 'paged', pages: 64, imm: 7 }, lanes);
const complete = decode.immCounter(7).wait(expected, { timeoutMs: 5000 });

// 64 pages of 4 KiB, reversed at the target; one work request per page, spread over the NICs.
const srcPages = Uint32Array.from({ length: 64 }, (_, i) => i);
const dstPages = Uint32Array.from({ length: 64 }, (_, i) => 63 - i);
await prefill.submitPagedWrites({
  src,
  srcPages,
  srcStride: 4096,
  dst,
  dstPages,
  dstStride: 4096,
  pageBytes: 4096,
  imm: 7,
});
await complete;
console.log(`decode saw ${expected} immediates; every byte is 0xab: ${kv.buffer!.every((b) => b === 0xab)}`);

// Small control messages go two-sided.
const got = new Promise<string>((resolve) => {
  void decode.submitRecvs({ maxBytes: 256, count: 4 }, (m) => resolve(new TextDecoder().decode(m.data)));
});
await prefill.submitSend(decode.address, new TextEncoder().encode('layer 0 done'));
console.log(`decode received: ${await got}`);
console.log(
  prefill
    .stats()
    .nics.map((n) => `nic${n.index}: ${n.writeOps} writes, ${n.bytesWritten} bytes`)
    .join('; '),
);
await fabric.close();
