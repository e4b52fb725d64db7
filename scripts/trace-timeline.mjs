#!/usr/bin/env node
// Where the microseconds of a small operation go: read the timelines a traced addon wrote
// (built with -DTRELLIS_TRACE=ON: packages/core/src/kit/native/include/trellis/trace.hpp) and print,
// per process, the time from each step to the next, and from one process's posts to the other's
// arrivals (the processes of one host share the clock).
//
//   node scripts/trace-timeline.mjs <dir with trace-<pid>.txt files>
//
// Steps (tags): S JS hands a write to the worker, H the worker takes it, P the provider accepted the
// post, C its completion was read, A an immediate arrived, D a poll from JS found a batch, E its
// callback returned, R the worker rang the doorbell, L the event loop took the batch, M its
// callback returned, T a reaction fires (its write handed to the posting queue), W the worker calls
// the provider's post.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: node scripts/trace-timeline.mjs <dir>');
  process.exit(2);
}
const procs = readdirSync(dir)
  .filter((f) => /^trace-\d+\.txt$/.test(f))
  .map((f) => {
    const recs = readFileSync(join(dir, f), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [tag, ns] = l.split(' ');
        return { tag, ns: BigInt(ns) };
      })
      .sort((a, b) => (a.ns < b.ns ? -1 : a.ns > b.ns ? 1 : 0));
    return { pid: f.slice(6, -4), recs };
  })
  .filter((p) => p.recs.length > 0);

const NAMES = {
  S: 'JS submits',
  H: 'worker takes it',
  P: 'post accepted',
  C: 'completion read',
  A: 'immediate arrives',
  D: 'JS poll finds it',
  E: 'poll callback done',
  R: 'doorbell rung',
  L: 'event loop takes it',
  M: 'loop callback done',
  T: 'a reaction fires',
  W: 'the worker posts',
};

/** Each `from` record paired with the first `to` record after it and before the next `from`. */
function pairs(from, to) {
  const out = [];
  let j = 0;
  for (let i = 0; i < from.length; i++) {
    const t = from[i].ns;
    const limit = i + 1 < from.length ? from[i + 1].ns : null;
    while (j < to.length && to[j].ns < t) j++;
    if (j < to.length && (limit === null || to[j].ns <= limit)) out.push(Number(to[j].ns - t) / 1000);
  }
  return out;
}

function stats(xs) {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(s.length * p))];
  return { n: s.length, p50: q(0.5), p90: q(0.9), p99: q(0.99) };
}

const byTag = (p, tag) => p.recs.filter((r) => r.tag === tag);
const row = (label, xs) => {
  const st = stats(xs);
  if (!st) return;
  console.log(`| ${label} | ${st.n} | ${st.p50.toFixed(2)} | ${st.p90.toFixed(2)} | ${st.p99.toFixed(2)} |`);
};

const WITHIN = [
  ['S', 'H'],
  ['H', 'P'],
  ['P', 'C'],
  ['A', 'D'],
  ['D', 'E'],
  ['E', 'S'],
  ['A', 'R'],
  ['R', 'L'],
  ['L', 'M'],
  ['M', 'S'],
  ['A', 'S'],
  ['A', 'T'],
  ['T', 'W'],
  ['H', 'W'],
  ['W', 'P'],
];
for (const p of procs) {
  const tally = new Map();
  for (const r of p.recs) tally.set(r.tag, (tally.get(r.tag) ?? 0) + 1);
  const counts = [...tally].map(([t, n]) => `${t} ${n}`).join(', ');
  console.log(`\nprocess ${p.pid}: ${counts}`);
  console.log('| from → to | pairs | median µs | p90 µs | p99 µs |');
  console.log('|---|---|---|---|---|');
  for (const [a, b] of WITHIN) row(`${a} ${NAMES[a]} → ${b} ${NAMES[b]}`, pairs(byTag(p, a), byTag(p, b)));
  for (const q of procs)
    if (q !== p) row(`P post accepted → A arrives in ${q.pid}`, pairs(byTag(p, 'P'), byTag(q, 'A')));
}
