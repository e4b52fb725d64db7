// backend-efa's own behaviour: providers and options (choice, checks, stats, library facts) and a
// peer that restarts.

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { MrDesc, type MrHandle, NetAddr, TrellisError } from '@trellis/core';
import { assertBytes, outcome, pattern, sleep } from '@trellis/core/conformance';
import { describe, expect, it } from 'vitest';
import { createEngine, type EfaEngine, fabricLibrary, fabricVersion, probeProviders } from '../src/index.js';
import { addon } from '../src/native.js';
import { hungPeer } from './hung-peer.js';
import { openEngine } from './open-engines.js';

const code = outcome;

const engine = openEngine;

describe('backend-efa: providers and options', () => {
  it('reports the libfabric version and what each provider offers on this host', () => {
    expect(fabricVersion()).toMatch(/^\d+\.\d+$/);
    // scripts/run test runs this suite against Debian's libfabric and against a 2.x build: each leg
    // names the version it must have loaded, so a leg can never quietly test the other library.
    if (process.env.TRELLIS_EXPECT_LIBFABRIC)
      expect(fabricVersion()).toBe(process.env.TRELLIS_EXPECT_LIBFABRIC);
    const probes = probeProviders();
    expect(probes.map((p) => p.provider)).toEqual(['efa', 'shm', 'tcp;ofi_rxm']);
    const shm = probes.find((p) => p.provider === 'shm')!;
    expect([shm.error, shm.rma, shm.remoteCqData]).toEqual(['', true, true]);
    // No EFA device exists on the machines this runs on; the probe says so instead of pretending.
    const efa = probes.find((p) => p.provider === 'efa')!;
    expect(efa.error).not.toBe('');
  });

  it('stats() names the libfabric in use and whether it takes GPU memory', async () => {
    const s = await engine({ provider: 'shm' });
    const lib = s.stats().library!;
    expect(lib.name).toBe('libfabric');
    expect(lib.version).toBe(fabricVersion());
    expect(lib.path).toBe(fabricLibrary());
    expect(lib.path).toMatch(/libfabric\.so/);
    // FI_HMEM for CUDA needs a libfabric built with CUDA; direct registration also needs a CUDA
    // driver, which the machines these tests run on in CI do not have.
    const probe = probeProviders().find((p) => p.provider === 'shm')!;
    expect(lib.hmem).toBe(probe.hmem);
    expect(lib.gpuDirect).toBe(s.stats().nics[0]!.path === 'direct');
    const off = await engine({ provider: 'shm', gpuDirect: false });
    expect([off.stats().library!.gpuDirect, off.stats().nics[0]!.path]).toEqual([false, 'host']);
    await expect(engine({ provider: 'shm', gpuDirect: 1 as unknown as boolean })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: 'createEngine: gpuDirect must be a boolean, got 1',
    });
  });

  it('names the provider and path of every NIC, and the kind by provider', async () => {
    const s = await engine({ provider: 'shm', nics: 2 });
    expect(s.kind).toBe('fi-shm');
    expect(s.provider).toBe('shm');
    expect(s.stats().nics.map((n) => [n.index, n.provider, n.path])).toEqual([
      [0, 'shm', 'host'],
      [1, 'shm', 'host'],
    ]);
    const t = await engine({ provider: 'tcp' });
    expect(t.kind).toBe('fi-tcp');
    expect(t.stats().nics[0]!.provider).toBe('tcp;ofi_rxm');
    expect(t.address.nics).toHaveLength(1);
  });

  it('a provider that is not there fails with UNSUPPORTED and says how to look', async () => {
    const msg = await code(createEngine({ provider: 'efa' }));
    expect(msg).toMatch(/^UNSUPPORTED: createEngine: libfabric provider 'efa' is not available/);
    expect(msg).toMatch(/fi_info -l/);
    // strict auto means efa or nothing: no silent fallback to tcp
    expect(await code(createEngine({ strict: true }))).toMatch(/^UNSUPPORTED: .*'efa'/);
  });

  it('auto falls back to tcp;ofi_rxm when there is no EFA (not strict)', async () => {
    const e = await engine({});
    expect(e.provider).toBe('tcp;ofi_rxm');
  });

  it('rejects bad options with INVALID_ARGUMENT', async () => {
    const loose = createEngine as unknown as (o: unknown) => Promise<unknown>;
    expect(await code(loose(null))).toBe(
      "INVALID_ARGUMENT: createEngine: pass an options object (e.g. {provider: 'tcp', nics: 1}) or nothing, got null",
    );
    expect(await code(loose('shm'))).toBe(
      `INVALID_ARGUMENT: createEngine: pass an options object (e.g. {provider: 'tcp', nics: 1}) or nothing, got "shm"`,
    );
    expect(await code(loose(5))).toBe(
      "INVALID_ARGUMENT: createEngine: pass an options object (e.g. {provider: 'tcp', nics: 1}) or nothing, got 5",
    );
    expect(await code(createEngine({ nics: 5 }))).toMatch(
      /^INVALID_ARGUMENT: createEngine: nics must be an integer in 1\.\.4/,
    );
    expect(await code(createEngine({ nics: 0 }))).toMatch(/^INVALID_ARGUMENT/);
    expect(await code(createEngine({ provider: 'verbs' as never }))).toMatch(
      /^INVALID_ARGUMENT: createEngine: provider must be/,
    );
    // Liveness options are checked before the engine exists: a refused heartbeatMs or failover
    // once left a running worker thread behind that no one could close (the process never exited).
    const index = fileURLToPath(new URL('../dist/index.js', import.meta.url));
    const script = `
      const m = await import(${JSON.stringify(index)});
      for (const o of [{ heartbeatMs: -1 }, { heartbeatMs: 1.5 }, { failover: 'yes' }, { nics: 2, failover: { maxErrors: 0 } }, { nics: 2, failover: { foo: 1 } }, { heartbeatIdle: true }])
        await m.createEngine({ provider: 'tcp', ...o }).then(() => console.log('created'), (e) => console.log(e.code + ': ' + e.message));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.signal).toBeNull(); // exited by itself: no worker left running
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual([
      'INVALID_ARGUMENT: createEngine: heartbeatMs must be an integer >= 0, got -1',
      'INVALID_ARGUMENT: createEngine: heartbeatMs must be an integer >= 0, got 1.5',
      'INVALID_ARGUMENT: createEngine: failover must be a boolean or an options object {maxErrors?, windowMs?, cooldownMs?, maxReposts?, attemptMs?}, got "yes"',
      'INVALID_ARGUMENT: createEngine: failover.maxErrors must be an integer >= 1, got 0',
      'INVALID_ARGUMENT: createEngine: "foo" is not a failover option (they are maxErrors, windowMs, cooldownMs, maxReposts, attemptMs)',
      'INVALID_ARGUMENT: createEngine: heartbeatIdle needs heartbeatMs (how often to probe); set both, or leave heartbeatIdle out',
    ]);
    // A misspelt option: refused, not ignored with its default used.
    expect(await code(createEngine({ provider: 'shm', bogus: 1 } as never))).toBe(
      'INVALID_ARGUMENT: createEngine: "bogus" is not an option of @trellis/backend-efa (its options: provider, nics, strict, iface, gpuDirect; the engine\'s: cpu, opTimeoutMs, idleSpinUs, maxSleepUs, maxInflight, peerWindow, doorbellUs, arrivalBatchUs, busyPollUs, driveInline, limits, watcherMemory, gpu, strictGpu, sameHostLane, heartbeatMs, heartbeatIdle, failover)',
    );
    // Names an object has by inheritance are not options either.
    expect(await code(createEngine({ provider: 'shm', constructor: 1 } as never))).toMatch(
      /^INVALID_ARGUMENT: createEngine: "constructor" is not an option of @trellis\/backend-efa/,
    );
    expect(await code(createEngine({ provider: 'shm', opTimeoutMS: 5 } as never))).toMatch(
      /^INVALID_ARGUMENT: createEngine: "opTimeoutMS" is not an option of @trellis\/backend-efa/,
    );
    // Tuning the worker cannot honour (a negative deadline used to be taken).
    expect(await code(createEngine({ provider: 'shm', opTimeoutMs: -1 }))).toBe(
      'INVALID_ARGUMENT: createEngine: opTimeoutMs must be an integer >= 0, got -1',
    );
    expect(await code(createEngine({ provider: 'shm', maxInflight: 0 }))).toBe(
      'INVALID_ARGUMENT: createEngine: maxInflight must be an integer >= 1, got 0',
    );
    expect(await code(createEngine({ provider: 'shm', idleSpinUs: 1.5 }))).toBe(
      'INVALID_ARGUMENT: createEngine: idleSpinUs must be an integer >= 0, got 1.5',
    );
    expect(await code(createEngine({ provider: 'shm', cpu: '1' as unknown as number }))).toBe(
      'INVALID_ARGUMENT: createEngine: cpu must be an integer >= 0, got "1"',
    );
    expect(await code(createEngine({ provider: 'shm', busyPollUs: -50 }))).toBe(
      'INVALID_ARGUMENT: createEngine: busyPollUs must be an integer >= 0, got -50',
    );
    // Limits: a part size of 0 looped registerMemory forever; a 1 GB message size allocated
    // receive buffers until the process died; a negative one was taken.
    const limits = (l: unknown) => code(createEngine({ provider: 'tcp', limits: l as never }));
    expect(await limits({ maxMrBytes: 0 })).toBe(
      'INVALID_ARGUMENT: createEngine: limits.maxMrBytes must be an integer in 4096..9007199254740991, got 0',
    );
    expect(await limits({ maxMrBytes: -5 })).toMatch(/^INVALID_ARGUMENT: createEngine: limits\.maxMrBytes /);
    expect(await limits({ maxMessageBytes: 1e9 })).toBe(
      'INVALID_ARGUMENT: createEngine: limits.maxMessageBytes must be an integer in 1..4194304, got 1000000000',
    );
    expect(await limits({ maxMessageBytes: -5 })).toMatch(
      /^INVALID_ARGUMENT: createEngine: limits\.maxMessageBytes /,
    );
    expect(await limits({ maxRegionBytes: 1.5 })).toBe(
      'INVALID_ARGUMENT: createEngine: limits.maxRegionBytes must be an integer in 1..9007199254740991, got 1.5',
    );
    expect(await limits({ maxMsgBytes: 100 })).toBe(
      'INVALID_ARGUMENT: createEngine: limits has no field "maxMsgBytes" (it takes maxMessageBytes, maxRegionBytes, maxMrBytes)',
    );
    expect(await limits(5)).toBe('INVALID_ARGUMENT: createEngine: limits must be an object, got 5');
    // The bounds themselves are taken.
    const e = await createEngine({ provider: 'tcp', limits: { maxMessageBytes: 4 << 20, maxMrBytes: 4096 } });
    expect(e.limits.maxMessageBytes).toBe(4 << 20);
    expect(e.limits.maxMrBytes).toBe(4096);
    await e.close();
  });

  it('busy polling (busyPollUs): batches taken by polls while something is awaited, no turns once nothing is; 0 turns it off', async () => {
    const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
    // Immediates from a to b, each awaited on both sides, b's wait pending before a sends (so b's
    // event loop busy polls while the immediate travels); `rounds` of them.
    const pingPong = async (a: EfaEngine, b: EfaEngine, rounds: number) => {
      const arrived = b.immCounter(5);
      for (let i = 0; i < rounds; i++) {
        const waited = arrived.wait(1);
        await pause(1);
        await a.submitImm({ dst: b.address, imm: 5 });
        await waited;
      }
      expect([arrived.total, arrived.value]).toEqual([rounds, 0]);
      expect(a.stats().ops).toMatchObject({ submitted: rounds, completed: rounds, failed: 0, inFlight: 0 });
    };
    // A 20 ms window: every immediate lands inside it, however late the timers of a loaded machine.
    const a = await engine({ provider: 'shm', busyPollUs: 20_000 });
    const b = await engine({ provider: 'shm', busyPollUs: 20_000 });
    // b's value 5 without a shared word (the first 64 values asked for take them), so its
    // arrivals reach the wait as batches a poll takes — what this part checks.
    for (let v = 1000; v < 1064; v++) b.immCounter(v);
    await pingPong(a, b, 50);
    // b polled while its wait was pending: the arrivals were taken by its turns, not rung for
    // (each one rung for only where no poll came for 100 µs).
    expect(b.stats().events!.polled).toBeGreaterThan(0);
    expect(b.stats().events!.busyPolls).toBeGreaterThan(0);
    // Nothing awaited any more: at most one window (20 ms) later no turn runs.
    await pause(100);
    const turns = [a.stats().events!.busyPolls, b.stats().events!.busyPolls];
    await pause(100);
    expect([a.stats().events!.busyPolls, b.stats().events!.busyPolls]).toEqual(turns);

    // A wait that outlasts the window: the loop stops polling and tells the worker what the wait
    // needs, so its arrival still rings at once — not a minute (arrivalBatchUs) later.
    const MINUTE_US = 60_000_000;
    const rx = await engine({
      provider: 'shm',
      busyPollUs: 1000,
      arrivalBatchUs: MINUTE_US,
      idleSpinUs: MINUTE_US,
    });
    const late = rx.immCounter(9).wait(1, { timeoutMs: 20_000 });
    await pause(50);
    const stopped = rx.stats().events!.busyPolls;
    await pause(50);
    expect(rx.stats().events!.busyPolls).toBe(stopped);
    const rung = rx.stats().events!.rung;
    await a.submitImm({ dst: rx.address, imm: 9 });
    await late;
    expect(rx.stats().events!.rung).toBe(rung + 1);

    // A wait that leaves (its timeout) while the loop polls: the worker was never told its need,
    // and is not left with one, so a later arrival of that value stays quiet (arrivalBatchUs): no
    // ring. The counter sees it through its shared word (one of the first 64 values asked for).
    const gone = rx.immCounter(13);
    expect(await code(gone.wait(1, { timeoutMs: 5 }))).toMatch(/^TIMEOUT: /);
    await pause(50);
    const seen = rx.stats().nics[0]!.immsReceived;
    const quiet = rx.stats().events!.rung;
    await a.submitImm({ dst: rx.address, imm: 13 });
    for (let i = 0; i < 2000 && rx.stats().nics[0]!.immsReceived === seen; i++) await pause(1);
    expect(rx.stats().nics[0]!.immsReceived).toBe(seen + 1);
    await pause(50);
    expect(rx.stats().events!.rung).toBe(quiet);
    expect([gone.value, gone.total]).toEqual([1, 1]);

    // An armed reaction is not something awaited: with a window of a minute, the loop still stops
    // polling as soon as only the reaction is left, and the reaction fires once its arrival comes.
    // (It answers to b, not to a: on libfabric 2.x's shm a write back to an engine of the same
    // process that wrote to this one never completes — backend-efa's README.)
    const rr = await engine({ provider: 'shm', busyPollUs: 60_000_000 });
    const answers = b.immCounter(12);
    const reaction = rr.submitOnImm(11, rr.immCounter(11).total + 1, {
      kind: 'imm',
      dst: b.address,
      imm: 12,
    });
    await pause(50);
    const idle = rr.stats().events!.busyPolls;
    await pause(50);
    expect(rr.stats().events!.busyPolls).toBe(idle);
    await a.submitImm({ dst: rr.address, imm: 11 });
    await reaction;
    await answers.wait(1, { timeoutMs: 20_000 });
    expect([answers.total, rr.immCounter(11).total]).toEqual([1, 1]);

    // pollUntil while busy polling is on: the loop's turns wait for it to return.
    const polled = b.immCounter(14);
    for (let i = 0; i < 20; i++) {
      const sent = a.submitImm({ dst: b.address, imm: 14 });
      await b.pollUntil(() => polled.take(1), { timeoutMs: 20_000 });
      await sent;
    }
    expect([polled.value, polled.total]).toEqual([0, 20]);

    const x = await engine({ provider: 'shm', busyPollUs: 0 });
    const y = await engine({ provider: 'shm', busyPollUs: 0 });
    await pingPong(x, y, 20);
    for (const e of [x, y]) {
      const ev = e.stats().events!;
      expect(ev.rung).toBeGreaterThan(0);
      expect([ev.polled, ev.busyPolls]).toEqual([0, 0]);
    }
  });

  it('a region too large to allocate is a TrellisError (RESOURCE_EXHAUSTED), not a plain Error', async () => {
    const e = await engine({ provider: 'shm' });
    const err = await e.registerMemory(2 ** 50).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(err).toBeInstanceOf(TrellisError);
    expect((err as TrellisError).code).toBe('RESOURCE_EXHAUSTED');
    expect((err as TrellisError).message).toMatch(
      /^registerMemory: could not allocate 1125899906842624 bytes of page-aligned host memory \(.*\); register less, or pass memory you allocated$/,
    );
    expect(e.stats().regions).toBe(0);
  });

  it('a write through a forged rkey on shm: 1.17 never completes it (it settles at its own deadline, its source held until the engine deadline); 2.x as built here refuses it; never a byte or an immediate', async () => {
    const a = await engine({ provider: 'shm', opTimeoutMs: 1500 });
    const b = await engine({ provider: 'shm' });
    const src = await a.registerMemory(4096);
    src.buffer!.fill(0xab);
    const dst = await b.registerMemory(4096, { remote: true });
    const d = dst.desc;
    const forged = new MrDesc(
      d.owner,
      d.base,
      d.length,
      d.nics.map((k) => ({ addr: k.addr, rkey: k.rkey ^ 0x5555n })),
    );
    const err = await a.submitSingleWrite({ src, length: 4096, dst: forged, imm: 1, timeoutMs: 300 }).then(
      () => undefined,
      (x: TrellisError) => x,
    );
    if (fabricVersion().startsWith('1.')) {
      // The request's 300 ms pass with the write still posted: it settles then, and says that the
      // provider may still read its source; the source stays in use until the engine deadline.
      expect(err?.code).toBe('TIMEOUT');
      expect(err?.message).toMatch(
        /^submitSingleWrite: timed out after 300 ms; 1 work request\(s\) were still posted: the provider may still read the source and write the target until they complete \(await engine\.quiesce\(peer\) before reusing the source\)$/,
      );
      expect(a.stats().ops).toEqual({
        submitted: 1,
        completed: 0,
        failed: 1,
        inFlight: 0,
        settledPosted: 1,
        held: 1,
      });
      // quiesce and unregister wait for the provider to let go — here the engine deadline.
      let quiesced = false;
      const q = a.quiesce(b.address).then(() => {
        quiesced = true;
      });
      await new Promise((r) => setTimeout(r, 50));
      expect(quiesced).toBe(false);
      await q;
      await src.unregister();
      expect(a.stats().ops).toEqual({
        submitted: 1,
        completed: 0,
        failed: 1,
        inFlight: 0,
        settledPosted: 1,
        held: 0,
      });
    } else {
      // libfabric 2.x as scripts/libfabric.sh builds it (with our shm fix) refuses the key.
      expect(err?.code).toBe('REMOTE_ACCESS');
      expect(a.stats().ops).toEqual({
        submitted: 1,
        completed: 0,
        failed: 1,
        inFlight: 0,
        settledPosted: 0,
        held: 0,
      });
    }
    await new Promise((r) => setTimeout(r, 100));
    expect(b.immCounter(1).total).toBe(0);
    expect(dst.buffer!.every((x) => x === 0)).toBe(true);
  });

  it('expectedImms names itself in its errors (it used to say submitPagedWrites:)', async () => {
    const e = await engine({ provider: 'shm' });
    const src = await e.registerMemory(4096);
    const dst = await e.registerMemory(8192, { remote: true });
    const req = {
      kind: 'paged' as const,
      src,
      srcPages: Uint32Array.of(9),
      srcStride: 4096,
      dst: dst.desc,
      dstPages: Uint32Array.of(0),
      dstStride: 4096,
      pageBytes: 4096,
      imm: 1,
    };
    expect(() => e.expectedImms(req)).toThrow(
      'expectedImms: src page 9: bytes [36864, 40960) fall outside the region of 4096 bytes',
    );
    expect(() => e.expectedImms({ kind: 'single', src, length: 5000, dst: dst.desc, imm: 1 })).toThrow(
      /^expectedImms: /,
    );
  });

  it('a descriptor from an engine of another provider is refused before posting', async () => {
    const s = await engine({ provider: 'shm' });
    const t = await engine({ provider: 'tcp' });
    const src = await s.registerMemory(64);
    const dst = await t.registerMemory(64, { remote: true });
    expect(await code(s.submitSingleWrite({ src, length: 64, dst: dst.desc, imm: 1 }))).toMatch(
      /^INVALID_DESCRIPTOR: submitSingleWrite: dst comes from a 'fi-tcp' engine but this is a 'fi-shm' engine/,
    );
    expect(s.stats().ops.submitted).toBe(0);
  });

  it('an address that is not a libfabric endpoint is an UNKNOWN_PEER', async () => {
    const s = await engine({ provider: 'shm' });
    const bogus = new NetAddr('fi-shm', 1, [Uint8Array.of(1, 2, 3)]);
    expect(await code(s.submitImm({ dst: bogus, imm: 1 }))).toMatch(
      /^UNKNOWN_PEER: .*not a libfabric endpoint address/,
    );
  });

  it('the engine deadline settles writes to a peer that never answers (tcp, nobody listening)', async () => {
    const a = await engine({ provider: 'tcp', opTimeoutMs: 1500 });
    const gone = await createEngine({ provider: 'tcp' });
    const dst = await gone.registerMemory(64, { remote: true });
    const desc = MrDesc.parse(dst.desc.toString());
    // Close the target in a way this process does not know about: forget it was closed here by
    // rebuilding its address with another generation, so only the wire can tell.
    await gone.close();
    const stale = new MrDesc(
      new NetAddr(desc.owner.kind, desc.owner.generation + 1, desc.owner.nics),
      desc.base,
      desc.length,
      desc.nics,
    );
    const src = await a.registerMemory(64);
    const t0 = Date.now();
    const outcome = await code(a.submitSingleWrite({ src, length: 64, dst: stale, imm: 1 }));
    expect(outcome).toMatch(/^(PEER_LOST|TIMEOUT|PROVIDER_ERROR): /);
    expect(Date.now() - t0).toBeLessThan(1500 + 3000);
    expect(a.stats().ops.inFlight).toBe(0);
  });

  it('holds at most 1024 messages while no receive pool is posted, dropping and counting the rest', async () => {
    const a = await engine({ provider: 'shm' });
    const b = await engine({ provider: 'shm' });
    await Promise.all(
      Array.from({ length: 1100 }, (_, i) => a.submitSend(b.address, Uint8Array.of(i & 255, i >> 8))),
    );
    for (let i = 0; i < 500 && b.stats().recvDropped < 76; i++) await new Promise((r) => setTimeout(r, 10));
    expect(b.stats().recvDropped).toBe(76);
    let got = 0;
    const ac = new AbortController();
    const pool = b.submitRecvs({ maxBytes: 64, count: 4, signal: ac.signal }, () => {
      got++;
    });
    expect(got).toBe(1024);
    ac.abort();
    await pool;
    expect(b.stats().nics[0]!.recvOps).toBe(1024);
  });

  it('names its worker thread and pins it to the CPU asked for', async () => {
    const { readdirSync, readFileSync } = await import('node:fs');
    const workers = () =>
      readdirSync('/proc/self/task')
        .map((t) => ({
          comm: readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim(),
          status: readFileSync(`/proc/self/task/${t}/status`, 'utf8'),
        }))
        .filter((t) => t.comm === 'trellis-engine');
    const before = workers().length;
    await engine({ provider: 'shm', cpu: 0 });
    expect(workers().length).toBe(before + 1);
    expect(workers().filter((t) => /Cpus_allowed_list:\s*0\s*$/m.test(t.status)).length).toBe(1);
    expect(await code(createEngine({ provider: 'shm', cpu: 4095 }))).toMatch(
      /^UNSUPPORTED: createEngine: cannot pin the engine's worker to CPU 4095/,
    );
  });
});

describe('backend-efa: a restarted peer', () => {
  it('once another generation of an endpoint is reached, the older one is reported lost and refused', async () => {
    const a = await engine({ provider: 'tcp' });
    const b = await engine({ provider: 'tcp' });
    const lost: Array<[string, string]> = [];
    a.onPeerLost((p, why) => lost.push([p.toString(), why.message]));
    await a.submitImm({ dst: b.address, imm: 3 });
    // The same endpoint answering as a new generation: what a process restarted on the same
    // address (a tcp port reused) looks like.
    const reborn = new NetAddr(b.address.kind, (b.address.generation ^ 1) >>> 0, b.address.nics);
    await a.submitImm({ dst: reborn, imm: 3 });
    await b.immCounter(3).wait(2, { timeoutMs: 5000 });
    expect(lost).toEqual([
      [
        b.address.toString(),
        `its endpoint was reached again as generation ${reborn.generation} (it restarted)`,
      ],
    ]);
    expect(await code(a.submitImm({ dst: b.address, imm: 3 }))).toMatch(
      /^PEER_LOST: submitImm: the peer .* was lost \(its endpoint was reached again as generation \d+ \(it restarted\)\); a restarted peer is a new address/,
    );
    await a.quiesce(reborn, { timeoutMs: 1000 });
    expect(lost).toHaveLength(1);
  });
});

describe('backend-efa: the operation table and the event scratch', () => {
  /** Write i: 256 bytes at i * 256 of src to the same place of dst, with `imm`. */
  const slotWrite = (a: EfaEngine, src: MrHandle, dst: MrHandle, i: number, imm: number) =>
    a.submitSingleWrite({ src, srcOffset: i * 256, length: 256, dst: dst.desc, dstOffset: i * 256, imm });

  it('operation ids wrap at 2^32 (completion records carry 32 bits), skipping one still armed; all settle', async () => {
    const a = await engine({ provider: 'shm' });
    const b = await engine({ provider: 'shm' });
    const src = await a.registerMemory(4096);
    const dst = await b.registerMemory(4096, { remote: true });
    for (let i = 0; i < 4096; i++) src.buffer![i] = (i * 7 + 3) & 0xff;
    const ids = a as unknown as { nextOpId: number };
    const write = (i: number) => slotWrite(a, src, dst, i, 9);
    // A reaction armed as id 2^32-2 stays with the worker across the wrap.
    ids.nextOpId = 2 ** 32 - 2;
    const armed = a.submitOnImm(77, 1, { kind: 'imm', dst: b.address, imm: 78 });
    await write(0); // id 2^32-1: ids wrap
    expect(ids.nextOpId).toBe(1);
    // Come round again: the armed id is skipped.
    ids.nextOpId = 2 ** 32 - 2;
    await write(1);
    expect(ids.nextOpId).toBe(1);
    await Promise.all(Array.from({ length: 14 }, (_, i) => write(i + 2)));
    expect(ids.nextOpId).toBe(15);
    expect([...dst.buffer!]).toEqual([...src.buffer!]);
    await b.immCounter(9).wait(16, { timeoutMs: 5000 });
    expect(b.immCounter(9).total).toBe(16);
    // The armed reaction still answers: its completion finds it by its id. (A third engine raises
    // it: b answering a in one process is the README's known libfabric 2.6.0 shm issue.)
    const c = await engine({ provider: 'shm' });
    await c.submitImm({ dst: a.address, imm: 77 });
    await armed;
    await b.immCounter(78).wait(1, { timeoutMs: 5000 });
    const s = a.stats().ops;
    expect(s.inFlight).toBe(0);
    expect(s.completed).toBe(17);
    expect(s.failed).toBe(0);
  });

  it("an id comes round while the worker still holds an operation JavaScript let go of (its write never completed): the new one settles on its own, the old one's late completion is swallowed", async () => {
    const a = await engine({ provider: 'tcp', opTimeoutMs: 1000, sameHostLane: false });
    const b = await engine({ provider: 'tcp' });
    // Larger than socket buffers hold: tcp cannot complete it while the target is stopped.
    const big = 16 << 20;
    const { hung, stalled } = await hungPeer(big);
    const src = await a.registerMemory(big);
    src.buffer!.set(pattern(big, 21));
    const dst = await b.registerMemory(4096, { remote: true });
    await a.submitSingleWrite({ src, length: 64, dst: stalled }); // connected
    hung.pause(true);
    const ids = a as unknown as { nextOpId: number };
    ids.nextOpId = 2 ** 32 - 1;
    // Its own deadline settles it with its work still posted (held); at the engine deadline JS lets
    // it go, while the worker keeps its entry until the provider completes the write.
    const old = await outcome(a.submitSingleWrite({ src, length: big, dst: stalled, timeoutMs: 100 }));
    expect(old).toMatch(/^TIMEOUT: /);
    expect(ids.nextOpId).toBe(1);
    const deadline = Date.now() + 10_000;
    while (a.stats().ops.held > 0 && Date.now() < deadline) await sleep(10);
    expect(a.stats().ops.held).toBe(0);
    // The same id again, to a healthy peer: before the worker moved the old entry aside, this write
    // joined it and was never reported (it settled TIMEOUT at the engine deadline).
    ids.nextOpId = 2 ** 32 - 1;
    await a.submitSingleWrite({ src, length: 4096, dst: dst.desc, imm: 5 });
    await b.immCounter(5).wait(1, { timeoutMs: 5000 });
    assertBytes(dst.buffer!, src.buffer!.subarray(0, 4096), 'the new write');
    // Resumed, the old write completes: every byte lands, and its completion reports nothing.
    hung.pause(false);
    let landed = false;
    const want = createHash('sha256').update(src.buffer!).digest('hex');
    for (let i = 0; i < 500 && !landed; i++) {
      landed = (await hung.call<{ sha256: string }>('sha256', { name: 'kv' })).sha256 === want;
      if (!landed) await sleep(20);
    }
    expect(landed).toBe(true);
    // Once more through the same id: nothing of the old operation is left to meet.
    ids.nextOpId = 2 ** 32 - 1;
    await a.submitSingleWrite({ src, srcOffset: 4096, length: 4096, dst: dst.desc, imm: 5 });
    await b.immCounter(5).wait(1, { timeoutMs: 5000 });
    assertBytes(dst.buffer!, src.buffer!.subarray(4096, 8192), 'the third write');
    await sleep(50);
    expect(a.stats().ops).toMatchObject({ submitted: 4, completed: 3, failed: 1, inFlight: 0, held: 0 });
  }, 60_000);

  it("the worker's command ring: a burst past it overflows and is still handled in order, beside another thread's commands", () => {
    // The worker's first command is held until all of these are pushed: 5,000 from this thread
    // (1,023 fit the ring, the rest overflow) and 2,000 from another thread, which starts once this
    // one has pushed 1,250 (all of which must be handled before any of its); then 5,000 more while
    // the worker catches up (some through the overflow still, the rest through the ring again).
    const r = addon().commandRingCheck(5000, 2000);
    expect(r).toEqual({ inOrder: true, js: 10_000, others: 2000, othersEarly: 0, overflowed: 5000 - 1023 });
  });

  it("the worker's event queue: a quiet record turns ready while JS keeps polling, at once when hurried, and not before", () => {
    // A batch member's quiet success published after JS's poll took a held batch: before the fix,
    // a JS loop that kept polling never saw it (the lazy deadline was checked only with no ring
    // owed), not even after a cancel hurried it.
    expect(addon().eventQueueCheck()).toEqual({ afterPolledDrain: true, hurried: true, stayedQuiet: true });
  });

  it('bursts of writes with a reaction armed and cancelled behind each: every write settles once, every cancel finds its reaction', async () => {
    const a = await engine({ provider: 'shm' });
    const b = await engine({ provider: 'shm' });
    const n = 6000;
    const src = await a.registerMemory(n * 256);
    const dst = await b.registerMemory(n * 256, { remote: true });
    for (let i = 0; i < n * 256; i++) src.buffer![i] = (i * 31 + 7) & 0xff;
    // submitBatch pushes its writes in one native loop (3,000 commands, past the ring's 1,024 when
    // the worker falls behind); the reaction's arming and its cancel follow in the same turn. A
    // cancel handled before its arming would find nothing, and the reaction would stay armed.
    const batches: Promise<{ failed: number }>[] = [];
    const cancelled: Promise<string>[] = [];
    for (let round = 0; round < 2; round++) {
      const reqs = Array.from({ length: n / 2 }, (_, k) => {
        const i = round * (n / 2) + k;
        return {
          kind: 'single' as const,
          src,
          srcOffset: i * 256,
          length: 256,
          dst: dst.desc,
          dstOffset: i * 256,
          imm: 21,
        };
      });
      batches.push(a.submitBatch(reqs));
      const ac = new AbortController();
      cancelled.push(
        a.submitOnImm(99, 1 + round, { kind: 'imm', dst: b.address, imm: 98, signal: ac.signal }).then(
          () => 'resolved',
          (e: TrellisError) => e.code,
        ),
      );
      ac.abort();
    }
    expect((await Promise.all(batches)).map((r) => r.failed)).toEqual([0, 0]);
    expect(await Promise.all(cancelled)).toEqual(['ABORTED', 'ABORTED']);
    await b.immCounter(21).wait(n, { timeoutMs: 10_000 });
    expect(b.immCounter(21).total).toBe(n);
    expect(b.immCounter(98).total).toBe(0);
    expect(Buffer.compare(dst.buffer!, src.buffer!)).toBe(0);
    const s = a.stats().ops;
    expect([s.completed, s.failed, s.inFlight]).toEqual([n, 2, 0]);
  });

  it('batches larger than the event scratch come in arrays of their own: every write settles, every arrival counts', async () => {
    const a = await engine({ provider: 'shm' });
    const b = await engine({ provider: 'shm' });
    // Scratches of one completion record / two arrival records: most batches overflow them.
    for (const e of [a, b]) {
      const small = new Uint32Array(4);
      const inner = e as unknown as {
        eventScratch: Uint32Array;
        native: { bindEvents(s: Uint32Array): void };
      };
      inner.eventScratch = small;
      inner.native.bindEvents(small);
    }
    const src = await a.registerMemory(1 << 16);
    const dst = await b.registerMemory(1 << 16, { remote: true });
    for (let i = 0; i < 1 << 16; i++) src.buffer![i] = (i * 13 + 1) & 0xff;
    const writes = Array.from({ length: 256 }, (_, i) => slotWrite(a, src, dst, i, 3 + (i % 3)));
    const results = await Promise.allSettled(writes);
    expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
    expect([...dst.buffer!]).toEqual([...src.buffer!]);
    for (const imm of [3, 4, 5]) await b.immCounter(imm).wait(imm === 3 ? 86 : 85, { timeoutMs: 5000 });
    expect([3, 4, 5].map((imm) => b.immCounter(imm).total)).toEqual([86, 85, 85]);
    const s = a.stats().ops;
    expect([s.submitted, s.completed, s.failed, s.inFlight]).toEqual([256, 256, 0, 0]);
  });

  // An interrupted demo worker on 1.17's shm spun for good: close() joined a worker stuck inside
  // the provider, without bound. The stall (fault injection) stands in for the stuck provider.
  it('close() leaves a worker that does not stop within 3 s behind: pending work fails CLOSED, the process goes on, a new engine works', async () => {
    // Through the provider (the same-host lane's copies are not the worker's).
    const a = await engine({ provider: 'shm', sameHostLane: false });
    const b = await engine({ provider: 'shm' });
    const src = await a.registerMemory(4096);
    const dst = await b.registerMemory(4096, { remote: true });
    src.buffer!.set(pattern(4096, 5));
    await slotWrite(a, src, dst, 0, 9); // the pair works
    (a as unknown as { native: { stallWorker(ms: number): void } }).native.stallWorker(8000);
    await sleep(300); // the worker is inside the stall
    const pending = slotWrite(a, src, dst, 1, 9); // behind the stall: never posted
    const t0 = Date.now();
    await a.close();
    const took = Date.now() - t0;
    // It waited for the worker (3 s), and returned long before the stall (8 s) would have ended.
    expect(took).toBeGreaterThanOrEqual(2900);
    expect(took).toBeLessThan(7000);
    expect(a.closed).toBe(true);
    expect(await outcome(pending)).toBe(
      'CLOSED: submitSingleWrite: the engine was closed with this operation pending',
    );
    expect(await outcome(a.registerMemory(64))).toMatch(/^CLOSED: /);
    // The stalled thread wakes up and shuts its engine down, muted: nothing rings the JS side that
    // close() released. Then a new engine writes to the same target.
    await sleep(6000);
    const c = await engine({ provider: 'shm', sameHostLane: false });
    const src2 = await c.registerMemory(4096);
    src2.buffer!.set(pattern(4096, 11));
    await c.submitSingleWrite({
      src: src2,
      srcOffset: 512,
      length: 256,
      dst: dst.desc,
      dstOffset: 512,
      imm: 9,
    });
    assertBytes(dst.buffer!.subarray(0, 256), src.buffer!.subarray(0, 256), 'before the stall');
    assertBytes(
      dst.buffer!.subarray(256, 512),
      new Uint8Array(256),
      'the write behind the stall (never posted)',
    );
    assertBytes(dst.buffer!.subarray(512, 768), src2.buffer!.subarray(512, 768), 'the new engine');
    assertBytes(dst.buffer!.subarray(768), new Uint8Array(4096 - 768), 'the rest');
    await b.immCounter(9).wait(2, { timeoutMs: 5000 });
    expect(b.immCounter(9).total).toBe(2);
  }, 30_000);
});
