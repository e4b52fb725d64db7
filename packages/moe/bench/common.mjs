// What the MoE benches share: the routing every rank dispatches and the percentiles they report.

/**
 * Rank `rank`'s routing for `tokens` tokens: top-`topk` distinct experts of `experts` per token,
 * uniformly at random (seeded per rank, so every run routes alike); weights in (0, 1).
 */
export function routing(rank, tokens, topk, experts) {
  let x = 0x9e3779b9 ^ (rank + 1);
  const rnd = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
  const ids = new Int32Array(tokens * topk);
  const w = new Float32Array(tokens * topk);
  for (let t = 0; t < tokens; t++) {
    const picked = new Set();
    while (picked.size < topk) picked.add(Math.floor(rnd() * experts));
    [...picked].forEach((e, k) => {
      ids[t * topk + k] = e;
      w[t * topk + k] = rnd();
    });
  }
  return { ids, w };
}

/** The p-th percentile of `xs` (nearest rank), to `digits` decimals. */
export const pct = (xs, p, digits = 4) =>
  +[...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))].toFixed(digits);
