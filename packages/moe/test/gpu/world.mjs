// A world of W Node processes on one host, one GPU each: rank 0 is this process, ranks 1..W-1 are
// children running the same script. `exchange(mine)` gathers one string from every rank (in rank
// order) through rank 0; `finish(result)` gathers every rank's result at rank 0.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

/** In a child: the rank and the world size from argv; the exchange over stdin/stdout. */
export function childWorld() {
  const rank = Number(process.argv[3]);
  const size = Number(process.argv[4]);
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  return {
    rank,
    size,
    async exchange(mine) {
      process.stdout.write(`${JSON.stringify({ mine })}\n`);
      return JSON.parse((await lines.next()).value).all;
    },
    async finish(result) {
      process.stdout.write(`${JSON.stringify({ done: result })}\n`);
      process.exit(0);
    },
  };
}

/** In rank 0: spawn ranks 1..size-1 (`script child <rank> <size> ...extra`). */
export function parentWorld(script, size, extra = []) {
  const kids = [];
  for (let r = 1; r < size; r++) {
    const kid = spawn(process.execPath, [script, 'child', String(r), String(size), ...extra], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    kids.push({ kid, lines: createInterface({ input: kid.stdout })[Symbol.asyncIterator]() });
  }
  const next = async (k) => {
    const v = (await k.lines.next()).value;
    if (v === undefined) throw new Error('a rank exited early');
    return JSON.parse(v);
  };
  return {
    rank: 0,
    size,
    async exchange(mine) {
      const all = [mine];
      for (const k of kids) all.push((await next(k)).mine);
      for (const k of kids) k.kid.stdin.write(`${JSON.stringify({ all })}\n`);
      return all;
    },
    async gather(result) {
      const all = [result];
      for (const k of kids) all.push((await next(k)).done);
      return all;
    },
  };
}
