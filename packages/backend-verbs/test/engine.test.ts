// backend-verbs' own behaviour: devices, options and stats; connections (handshake, reconnect after
// a QP error, back-pressure).
import { createServer, type Server } from 'node:net';
import { MrDesc, NetAddr } from '@trellis/core';
import { fillXorshift, outcome } from '@trellis/core/conformance';
import { afterEach, describe, expect, it } from 'vitest';
import { createEngine, listDevices, type VerbsEngine } from '../src/index.js';

const code = outcome;

const open: VerbsEngine[] = [];
const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((e) => e.close()));
  for (const s of servers.splice(0)) s.close();
});
async function engine(opts: Parameters<typeof createEngine>[0] = {}): Promise<VerbsEngine> {
  const e = await createEngine({ model: true, ...opts });
  open.push(e);
  return e;
}

/** `addr` with NIC 0's handshake endpoint replaced (and a fresh nonce, so it is a new peer). */
function withHandshake(addr: NetAddr, port: number, ip = [127, 0, 0, 1]): NetAddr {
  const nic = Uint8Array.from(addr.nics[0]!);
  nic[6] = port >> 8;
  nic[7] = port & 0xff;
  nic.set(ip, 8);
  nic[12] = nic[12]! ^ 0xff;
  return new NetAddr(addr.kind, addr.generation, [nic]);
}

/** A TCP port that accepts connections and never answers. */
async function silentPort(): Promise<number> {
  const s = createServer(() => {});
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return (s.address() as { port: number }).port;
}

const devices = listDevices(false);

describe('backend-verbs: devices, options and stats', () => {
  it('the model offers rcm0..rcm3; each NIC names its device, port, link, GID and MTU', async () => {
    expect(listDevices(true)).toEqual({ devices: ['rcm0', 'rcm1', 'rcm2', 'rcm3'], error: '' });
    const e = await engine({ nics: 2 });
    expect([e.kind, e.provider, e.model, e.nics]).toEqual(['rc-model', 'rc-model', true, 2]);
    const nics = e.stats().nics;
    expect(nics.map((n) => [n.index, n.provider, n.path])).toEqual([
      [0, 'rc-model', 'host'],
      [1, 'rc-model', 'host'],
    ]);
    expect(nics[0]!.device).toMatch(
      /^rcm0 port 1, RoCE GID 1 \(::ffff:127\.\d+\.\d+\.\d+\), MTU 1024, thread domain$/,
    );
    expect(nics[1]!.device).toMatch(/^rcm1 port 1, RoCE GID 1 /);
    expect(e.address.nics.map((n) => n.length)).toEqual([32, 32]);
  });

  it('InfiniBand link (TRELLIS_RC_MODEL_LINK=ib): LID routing; without handshakeHost it says what to set', async () => {
    process.env.TRELLIS_RC_MODEL_LINK = 'ib';
    try {
      expect(await code(createEngine({ model: true }))).toMatch(
        /^INVALID_ARGUMENT: createEngine: NIC 0: rcm0: set handshakeHost — an IPv4 address of this host that peers can reach \(the GID has none: InfiniBand\)$/,
      );
      const a = await engine({ handshakeHost: '127.0.0.1' });
      const b = await engine({ handshakeHost: '127.0.0.1' });
      expect(a.stats().nics[0]!.device).toMatch(/^rcm0 port 1, InfiniBand LID \d+, MTU 4096/);
      const src = await a.registerMemory(4096);
      const dst = await b.registerMemory(4096, { remote: true });
      fillXorshift(src.buffer!, 3);
      await a.submitSingleWrite({ src, length: 4096, dst: dst.desc, imm: 4 });
      await b.immCounter(4).wait(1);
      expect(dst.buffer).toEqual(src.buffer);
      // A RoCE engine cannot reach an InfiniBand one.
      delete process.env.TRELLIS_RC_MODEL_LINK;
      const roce = await engine();
      expect(await code(roce.submitImm({ dst: a.address, imm: 1 }))).toMatch(
        /^UNKNOWN_PEER: submitImm: cannot resolve the peer's NIC 0 address: the peer's NIC is on InfiniBand and this one on RoCE/,
      );
    } finally {
      delete process.env.TRELLIS_RC_MODEL_LINK;
    }
  });

  it('rejects bad options with INVALID_ARGUMENT before opening a device, each with a message', async () => {
    expect(await code((createEngine as unknown as (o: unknown) => Promise<unknown>)(null))).toBe(
      "INVALID_ARGUMENT: createEngine: pass an options object (e.g. {devices: ['mlx5_0']}) or nothing, got null",
    );
    expect(await code(createEngine({ model: true, nics: 5 }))).toBe(
      'INVALID_ARGUMENT: createEngine: nics must be an integer in 1..4, got 5',
    );
    expect(await code(createEngine({ model: true, timeout: 32 }))).toBe(
      'INVALID_ARGUMENT: createEngine: timeout must be an integer in 0..31, got 32',
    );
    expect(await code(createEngine({ model: true, retryCnt: 8 }))).toBe(
      'INVALID_ARGUMENT: createEngine: retryCnt must be an integer in 0..7, got 8',
    );
    expect(await code(createEngine({ model: true, devices: 'rcm0' as never }))).toBe(
      "INVALID_ARGUMENT: createEngine: devices must be a non-empty array of device names (e.g. ['mlx5_0']), got 'rcm0'",
    );
    expect(await code(createEngine({ model: true, devices: [] }))).toBe(
      "INVALID_ARGUMENT: createEngine: devices must be a non-empty array of device names (e.g. ['mlx5_0']), got []",
    );
    // One name per NIC: more or fewer than nics is refused; without nics the list says how many.
    expect(await code(createEngine({ model: true, devices: ['rcm0', 'rcm1', 'rcm2'], nics: 1 }))).toBe(
      'INVALID_ARGUMENT: createEngine: devices names one device per NIC: 3 names for nics: 1 — pass 1 names, or leave nics out',
    );
    expect(await code(createEngine({ model: true, devices: ['rcm0'], nics: 2 }))).toBe(
      'INVALID_ARGUMENT: createEngine: devices names one device per NIC: 1 names for nics: 2 — pass 2 names, or leave nics out',
    );
    const two = await createEngine({ model: true, devices: ['rcm2', 'rcm1'] });
    expect(two.nics).toBe(2);
    expect(two.stats().nics.map((n) => String(n.device).split(' ')[0])).toEqual(['rcm2', 'rcm1']);
    await two.close();
    // Checked before any device is opened, on the model and on libibverbs alike.
    for (const model of [true, false]) {
      expect(await code(createEngine({ model, handshakeHost: 'localhost' }))).toBe(
        "INVALID_ARGUMENT: createEngine: handshakeHost must be an IPv4 address (e.g. '10.0.0.5'), got 'localhost'",
      );
      expect(await code(createEngine({ model, handshakeHost: '::1' }))).toBe(
        "INVALID_ARGUMENT: createEngine: handshakeHost must be an IPv4 address (e.g. '10.0.0.5'), got '::1'",
      );
      expect(await code(createEngine({ model, relaxedOrdering: 1 as never }))).toBe(
        'INVALID_ARGUMENT: createEngine: relaxedOrdering must be true or false, got 1',
      );
    }
    // A misspelt option: refused, not ignored with its default used.
    expect(await code(createEngine({ model: true, retryCount: 3 } as never))).toMatch(
      /^INVALID_ARGUMENT: createEngine: "retryCount" is not an option of @trellis\/backend-verbs \(its options: model, nics, devices, port, gidIndex, handshakeHost, handshakePort, timeout, retryCnt, rnrRetry, minRnrTimer, connectTimeoutMs, relaxedOrdering, maxSendWr, immRecvs; the engine's: cpu, /,
    );
    // A port the model's devices lack: the caller's to fix, named as the model's.
    expect(await code(createEngine({ model: true, port: 2 }))).toBe(
      "INVALID_ARGUMENT: createEngine: NIC 0: the software RC model's devices (rcm0..) have port 1 only, not port 2; leave port out or pass 1",
    );
    expect(await code(createEngine({ model: 'yes' as never }))).toBe(
      "INVALID_ARGUMENT: createEngine: model must be true or false, got 'yes'",
    );
    expect(await code(createEngine({ model: true, devices: ['mlx5_0'] }))).toBe(
      "UNSUPPORTED: createEngine: NIC 0: no rc-model device named 'mlx5_0' (rcm0..rcm3)",
    );
  });

  it.skipIf(devices.devices.length > 0)(
    'without an RDMA device, libibverbs mode fails with UNSUPPORTED and points at the model',
    async () => {
      const msg = await code(createEngine({}));
      expect(msg).toMatch(/^UNSUPPORTED: createEngine: NIC 0: no RDMA device/);
      expect(msg).toMatch(/createEngine\(\{ model: true \}\)/);
    },
  );
});

describe('backend-verbs: connections', () => {
  it('a refused handshake fails the queued operations with PEER_LOST and says where it connected', async () => {
    const a = await engine({ connectTimeoutMs: 2000 });
    const b = await engine();
    const port = await silentPort();
    servers[0]!.close(); // now nothing listens there
    await new Promise((r) => setTimeout(r, 50));
    const dead = withHandshake(b.address, port);
    const msgs = await Promise.all([
      code(a.submitImm({ dst: dead, imm: 1 })),
      code(a.submitImm({ dst: dead, imm: 2 })),
    ]);
    for (const m of msgs)
      expect(m).toMatch(
        new RegExp(
          `^PEER_LOST: submitImm: connecting queue pairs to the peer failed: connect to 127\\.0\\.0\\.1:${port}: Connection refused$`,
        ),
      );
    expect(a.stats().ops).toMatchObject({ failed: 2, completed: 0 });
  });

  it('a handshake that gets no answer fails after connectTimeoutMs; closing meanwhile rejects with CLOSED', async () => {
    const a = await engine({ connectTimeoutMs: 300 });
    const b = await engine();
    const silent = withHandshake(b.address, await silentPort());
    expect(await code(a.submitImm({ dst: silent, imm: 1 }))).toBe(
      'PEER_LOST: submitImm: connecting queue pairs to the peer failed: no answer within 300 ms (connectTimeoutMs)',
    );
    const c = await createEngine({ model: true, connectTimeoutMs: 60_000 });
    const pending = code(c.submitImm({ dst: withHandshake(b.address, await silentPort()), imm: 1 }));
    await new Promise((r) => setTimeout(r, 50));
    await c.close();
    expect(await pending).toBe('CLOSED: submitImm: the engine was closed with this operation pending');
  });

  it('a bad rkey fails with REMOTE_ACCESS; the connection is rebuilt and the next write to that peer lands', async () => {
    const a = await engine({ nics: 2 });
    const b = await engine({ nics: 2 });
    const src = await a.registerMemory(1 << 16);
    const dst = await b.registerMemory(1 << 16, { remote: true });
    fillXorshift(src.buffer!, 11);
    const forged = new MrDesc(
      dst.desc.owner,
      dst.desc.base,
      dst.desc.length,
      dst.desc.nics.map((n) => ({ addr: n.addr, rkey: n.rkey ^ 0x5a5a00n })),
    );
    expect(await code(a.submitSingleWrite({ src, length: 4096, dst: forged, imm: 1 }))).toMatch(
      /^REMOTE_ACCESS: submitSingleWrite: the peer refused the write: bad rkey, no remote-write access, or out of its region \(IBV_WC_REM_ACCESS_ERR\)/,
    );
    const req = { src, length: 1 << 16, dst: dst.desc, imm: 2 };
    await a.submitSingleWrite(req);
    await b.immCounter(2).wait(a.expectedImms({ kind: 'single', ...req }));
    expect(dst.buffer).toEqual(src.buffer);
    // And the other direction over the rebuilt queue pairs.
    const back = await b.registerMemory(64);
    const land = await a.registerMemory(64, { remote: true });
    back.buffer!.fill(9);
    await b.submitSingleWrite({ src: back, length: 64, dst: land.desc, imm: 3 });
    await a.immCounter(3).wait(1);
    expect([...land.buffer!]).toEqual(new Array(64).fill(9));
  });

  it('a send queue of 4 WRs: 300 concurrent writes back-pressure and all land', async () => {
    // The lane off: the writes must cross the (model) NIC to back-pressure its send queue.
    const a = await engine({ maxSendWr: 4, sameHostLane: false });
    const b = await engine();
    const n = 300;
    const src = await a.registerMemory(n * 4096);
    const dst = await b.registerMemory(n * 4096, { remote: true });
    fillXorshift(src.buffer!, 21);
    await Promise.all(
      Array.from({ length: n }, (_, i) =>
        a.submitSingleWrite({
          src,
          srcOffset: i * 4096,
          length: 4096,
          dst: dst.desc,
          dstOffset: i * 4096,
          imm: 5,
          shards: 1,
        }),
      ),
    );
    await b.immCounter(5).wait(n);
    expect(dst.buffer).toEqual(src.buffer);
    expect(a.stats().nics[0]).toMatchObject({ writeOps: n, bytesWritten: n * 4096, errors: 0 });
  });

  it('receiver not ready: 16 immediate receives against 2000 immediates — RNR retries deliver every one', async () => {
    const a = await engine();
    const b = await engine({ immRecvs: 16 });
    await Promise.all(Array.from({ length: 2000 }, () => a.submitImm({ dst: b.address, imm: 8 })));
    await b.immCounter(8).wait(2000);
    expect(b.immCounter(8).value).toBe(0);
    expect(b.stats().nics[0]).toMatchObject({ immsReceived: 2000, errors: 0 });
  });
});
