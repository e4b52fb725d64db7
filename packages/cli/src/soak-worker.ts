// One process of `trellis soak`: writes random-length patterns into its slot of every peer's
// landing region (single writes and scatters, some aborted or given a 1 ms deadline on purpose,
// some through a forged descriptor), and after each completed write tells the peer which pattern
// to check; checks what peers tell it. Every error it did not cause itself is recorded with its
// time and peer, so the parent can tell errors a fault explains from errors between healthy pairs.
// argv[2]: JSON {rank, provider, seed, slotBytes, forge, forgeLog}. stdin/stdout: JSON lines.
import { appendFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { createEngine, type Provider } from '@trellis/backend-efa';
import { MrDesc, type MrHandle, NetAddr, Prng, type TransferEngine, TrellisError } from '@trellis/core';
import { closeAndExit, followParent } from '@trellis/core/peer-process';

const cfg = JSON.parse(process.argv[2]!) as {
  rank: number;
  provider: Provider;
  seed: number;
  slotBytes: number;
  /** Forge a descriptor now and then (providers that refuse a bad key: tcp). */
  forge: boolean;
  /**
   * A file each forgery is appended to as it starts (`start target`) and ends (`start target end
   * code`), read by the parent whether this process was SIGKILLed or not.
   */
  forgeLog: string;
  sameHostLane: boolean;
};
followParent();
/** The parent is gone (stdin closed): nothing more is written to it, and the worker winds down. */
let orphaned = false;
const out = (o: object) => {
  if (!orphaned) process.stdout.write(`${JSON.stringify(o)}\n`);
};
/** A forgery's record; its file goes with the parent's temporary directory when interrupted. */
const logForge = (line: string) => {
  try {
    appendFileSync(cfg.forgeLog, line);
  } catch {
    // interrupted: the soak removed its directory
  }
};
const IMM = 0x50aa0000;
const MAX_PEERS = 64;

let engine: TransferEngine;
let land: MrHandle;
let src: MrHandle;
try {
  engine = await createEngine({
    provider: cfg.provider,
    nics: 2,
    opTimeoutMs: 3000,
    sameHostLane: cfg.sameHostLane,
  });
  land = await engine.registerMemory(MAX_PEERS * cfg.slotBytes, { remote: true });
  src = await engine.registerMemory(cfg.slotBytes);
} catch (e) {
  // The parent prints why, in one line.
  out({ failed: e instanceof TrellisError ? `${e.code}: ${e.message}` : String(e) });
  process.exit(1);
}
const rss0 = process.memoryUsage().rss;
const rng = new Prng(cfg.seed * 1000 + cfg.rank);

/** The byte `i` of the pattern writer `w` sends as its write number `seq`. */
const byte = (w: number, seq: number, i: number) => (Math.imul(w * 131 + seq, 2654435761) + i * 7) >>> 24;

const stats = {
  submitted: 0,
  settled: 0,
  outcomes: {} as Record<string, number>,
  bytesWritten: 0,
  verified: 0,
  verifiedBytes: 0,
  mismatches: 0,
  sendsFailed: 0,
  /** Checks a peer never answered (it died, or its answer was lost with it). */
  checksMissing: 0,
  faultsInjected: { aborted: 0, deadline: 0, forged: 0 },
  /** Outcomes of the forged writes (REMOTE_ACCESS expected unless the target died). */
  forgedOutcomes: {} as Record<string, number>,
  /** Errors this process did not inject: [time ms, peer rank (-1: unknown), code, what]. */
  errors: [] as Array<[number, number, string, string]>,
};
/** The rank behind an error's peer address (-1 when it names none this process knows). */
const rankOf = (e: unknown): number => {
  const peer = e instanceof TrellisError ? e.peer : undefined;
  return peer === undefined ? -1 : peers.findIndex((p) => p?.addr.toString() === peer);
};
const codeOf = (e: unknown) => (e instanceof TrellisError ? e.code : 'NON_TRELLIS');
const record = (e: unknown, what: string, rank = rankOf(e)) =>
  void stats.errors.push([Date.now(), rank, codeOf(e), what]);
let peers: Array<{ addr: NetAddr; desc: MrDesc } | null> = [];
let running = false;
let loop: Promise<void> | undefined;

/** Checks we wait for, by `${peer}:${seq}`: the writer does not touch that slot again until then. */
const checks = new Map<string, () => void>();
const enc = (o: object) => new TextEncoder().encode(JSON.stringify(o));

// Peers tell us which pattern now sits in their slot of our landing region; we check it and answer.
void engine.submitRecvs({ maxBytes: 256, count: 64 }, (m) => {
  const v = JSON.parse(new TextDecoder().decode(m.data)) as {
    from: number;
    seq: number;
    len?: number;
    checked?: boolean;
  };
  if (v.checked) {
    checks.get(`${v.from}:${v.seq}`)?.();
    return;
  }
  const len = v.len!;
  const at = v.from * cfg.slotBytes;
  const b = land.buffer!;
  let bad = 0;
  for (let i = 0; i < len; i++) if (b[at + i] !== byte(v.from, v.seq, i)) bad++;
  if (bad) stats.mismatches++;
  else {
    stats.verified++;
    stats.verifiedBytes += len;
  }
  void engine
    .submitSend(m.from, enc({ from: cfg.rank, seq: v.seq, checked: true }), { timeoutMs: 3000 })
    .catch((e: unknown) => {
      stats.sendsFailed++;
      record(e, 'check answer', v.from);
    });
});

async function op(seq: number): Promise<void> {
  const alive = peers.map((p, r) => (p && r !== cfg.rank ? r : -1)).filter((r) => r >= 0);
  if (!alive.length) {
    await new Promise((r) => setTimeout(r, 5));
    return;
  }
  const len = 1 + rng.below(cfg.slotBytes);
  const buf = src.buffer!;
  for (let i = 0; i < len; i++) buf[i] = byte(cfg.rank, seq, i);
  // A worker's first operation is a forgery (then about 3 in 100): every run, however short or
  // loaded the machine, shows refusals, and a replacement forges against peers that saw a kill.
  if (cfg.forge && seq === 1) {
    await forge(alive[rng.below(alive.length)]!, len);
    return;
  }
  // Faults of our own making: an abort at a random moment, or a deadline too short to make.
  const fault = rng.below(100);
  const ac = new AbortController();
  const opts: { signal?: AbortSignal; timeoutMs?: number } = {};
  if (fault < 10) {
    opts.signal = ac.signal;
    setTimeout(() => ac.abort(), rng.below(3));
    stats.faultsInjected.aborted++;
  } else if (fault < 15) {
    opts.timeoutMs = 1;
    stats.faultsInjected.deadline++;
  }
  if (cfg.forge && fault >= 15 && fault < 18) {
    await forge(alive[rng.below(alive.length)]!, len);
    return;
  }
  const scatter = rng.below(4) === 0 && alive.length > 1;
  const targets = scatter ? alive : [alive[rng.below(alive.length)]!];
  stats.submitted++;
  const p = scatter
    ? engine.submitScatter({
        src,
        targets: targets.map((q) => ({
          dst: peers[q]!.desc,
          srcOffset: 0,
          dstOffset: cfg.rank * cfg.slotBytes,
          length: len,
        })),
        imm: IMM + cfg.rank,
        ...opts,
      })
    : engine.submitSingleWrite({
        src,
        length: len,
        dst: peers[targets[0]!]!.desc,
        dstOffset: cfg.rank * cfg.slotBytes,
        imm: IMM + cfg.rank,
        ...opts,
      });
  let code = 'OK';
  try {
    await p;
    stats.bytesWritten += len * targets.length;
  } catch (e) {
    code = codeOf(e);
    if (!opts.signal && !opts.timeoutMs) record(e, scatter ? 'scatter' : 'write');
  }
  stats.settled++;
  stats.outcomes[code] = (stats.outcomes[code] ?? 0) + 1;
  if (code === 'TIMEOUT') {
    // It settled at its deadline, perhaps with work still posted that reads the source: the source
    // is reused only once nothing to those peers is in flight (the documented contract).
    await Promise.all(targets.map((q) => (peers[q] ? engine.quiesce(peers[q]!.addr) : undefined)));
  }
  if (code !== 'OK') return;
  // Delivered: each peer checks every byte against the pattern, and says so before we write again.
  const msg = enc({ from: cfg.rank, seq, len });
  await Promise.all(
    targets.map(async (q) => {
      const peer = peers[q];
      if (!peer) return;
      const key = `${q}:${seq}`;
      const checked = new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          checks.delete(key);
          stats.checksMissing++;
          stats.errors.push([Date.now(), q, 'CHECK_MISSING', 'check']);
          resolve();
        }, 3000);
        checks.set(key, () => {
          clearTimeout(t);
          checks.delete(key);
          resolve();
        });
      });
      try {
        await engine.submitSend(peer.addr, msg, { timeoutMs: 3000 });
      } catch (e) {
        stats.sendsFailed++;
        record(e, 'check request', q);
        // Nothing will answer a request that was never delivered.
        checks.get(key)?.();
      }
      await checked;
    }),
  );
}

/**
 * A write through a forged descriptor: the target's key with bits flipped, and no same-host
 * section (that would take the lane, where the shared-memory name is the capability), so the
 * provider's key check is what answers. The target must refuse it (REMOTE_ACCESS); nothing lands.
 */
async function forge(q: number, len: number): Promise<void> {
  const d = peers[q]!.desc;
  const dst = new MrDesc(
    d.owner,
    d.base,
    d.length,
    d.nics.map((k) => ({ addr: k.addr, rkey: k.rkey ^ 0x5a5a00n })),
    d.staged,
    d.parts,
  );
  stats.faultsInjected.forged++;
  stats.submitted++;
  const t0 = Date.now();
  logForge(`${t0} ${q}\n`);
  let code = 'OK';
  try {
    await engine.submitSingleWrite({ src, length: len, dst, dstOffset: cfg.rank * cfg.slotBytes });
  } catch (e) {
    code = codeOf(e);
  }
  logForge(`${t0} ${q} ${Date.now()} ${code}\n`);
  stats.settled++;
  stats.outcomes[code] = (stats.outcomes[code] ?? 0) + 1;
  stats.forgedOutcomes[code] = (stats.forgedOutcomes[code] ?? 0) + 1;
}

out({ hello: { addr: engine.address.toString(), desc: land.desc.toString() } });
for await (const line of createInterface({ input: process.stdin })) {
  const m = JSON.parse(line) as {
    peers?: Array<{ addr: string; desc: string } | null>;
    start?: boolean;
    stop?: boolean;
    exit?: boolean;
  };
  if (m.peers) {
    peers = m.peers.map((p) => (p ? { addr: NetAddr.parse(p.addr), desc: MrDesc.parse(p.desc) } : null));
    out({ ok: 'peers' });
  }
  if (m.start && !running) {
    running = true;
    loop = (async () => {
      for (let seq = 1; running; seq++) {
        await op(seq);
        // A turn of the event loop between operations: when every write fails at once (its peers
        // gone), the loop would run on promise callbacks alone and never see a signal, its stdin
        // closing or a stop.
        await new Promise((r) => setImmediate(r));
      }
    })();
    out({ ok: 'start' });
  }
  if (m.stop) {
    running = false;
    await loop;
    // Let the last checks arrive.
    await new Promise((r) => setTimeout(r, 200));
    out({
      stats: { ...stats, rssStart: rss0, rssEnd: process.memoryUsage().rss, engine: engine.stats().ops },
    });
  }
  if (m.exit) {
    await engine.close();
    process.exit(0);
  }
}
// stdin closed: the soak's parent is gone (killed, interrupted). Stop, close the engine (which
// unlinks its shared-memory regions) within a bound, and exit rather than run on as an orphan.
orphaned = true;
running = false;
await closeAndExit(engine);
