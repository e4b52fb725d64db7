/**
 * `@trellis/rendezvous` — how processes on many hosts find each other: publish and look up
 * `NetAddr` / `MrDesc` text by key, barrier a group, and watch a group's membership.
 *
 * {@link TcpStore} is the embedded default, a small key-value store hosted by one process (as
 * torch's TCPStore): `TcpStore.serve()` in one rank, `TcpStore.connect()` everywhere.
 * {@link EtcdRendezvous} does the same over an etcd cluster.
 *
 * @packageDocumentation
 */

import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { createInterface } from 'node:readline';
import { TrellisError } from '@trellis/core';
import {
  checkJoin,
  checkName,
  checkOptionalOptions,
  checkOptions,
  checkTimeoutMs,
  checkValue,
  onChangeOnce,
  shown,
} from './check.js';
import type { Rendezvous } from './rendezvous.js';

export type { Rendezvous } from './rendezvous.js';

interface Req {
  id: number;
  op: 'auth' | 'set' | 'get' | 'add' | 'join' | 'watch' | 'unwatch';
  key?: string;
  value?: string;
  member?: string;
  delta?: number;
  /** unwatch: the watch's request id. */
  watch?: number;
  /** auth: the shared secret. */
  token?: string;
  /** get: answer at once, `absent: true` when the key is not there (a get with `timeoutMs: 0`). */
  nowait?: boolean;
  /**
   * add: a barrier entry of a round of this many members. The store compares it with the round's
   * first entry's and sets `<key>/done`: `1` when the count reaches it, the two sizes when they
   * differ (the round then never releases). Its answer says `sized: true`.
   */
  size?: number;
}

/** The store's server: keys, waiters, counters and groups, in memory. */
class StoreServer {
  private readonly data = new Map<string, string>();
  private readonly waiters = new Map<string, Array<(v: string) => void>>();
  private readonly groups = new Map<string, Map<string, { value: string; sock: Socket }>>();
  private readonly watchers = new Map<string, Set<{ sock: Socket; id: number }>>();
  /** The size each barrier round's first entry gave, by the round's key. */
  private readonly sizes = new Map<string, number>();
  /** Every client connection open now, so that closing the store ends them. */
  private readonly socks = new Set<Socket>();

  constructor(
    readonly server: Server,
    /** sha256 of the shared secret clients must present first; undefined: none needed. */
    private readonly tokenHash: Buffer | undefined,
  ) {
    server.on('connection', (sock) => {
      this.socks.add(sock);
      sock.on('close', () => this.socks.delete(sock));
      this.client(sock);
    });
  }

  /**
   * Stop listening and end every client's connection (their pending requests fail `PEER_LOST`);
   * resolves once closed. Replies already written go first (a barrier that released here releases
   * its other members too): each connection is ended, and destroyed only if it outlives a second.
   */
  close(): Promise<void> {
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const s of this.socks) {
      s.end();
      setTimeout(() => s.destroy(), 1000).unref();
    }
    return closed;
  }

  private client(sock: Socket): void {
    sock.setNoDelay(true);
    const reply = (o: object) => {
      if (!sock.destroyed) sock.write(`${JSON.stringify(o)}\n`);
    };
    let authed = this.tokenHash === undefined;
    readLines(sock, (line) => {
      let r: Req;
      try {
        r = JSON.parse(line) as Req;
      } catch {
        sock.destroy();
        return;
      }
      if (typeof r !== 'object' || r === null) {
        sock.destroy();
        return;
      }
      if (r.op === 'auth') {
        if (this.tokenHash === undefined) {
          // A client that means to authenticate to a store that asks for nothing: one of the two
          // is configured wrong, and the client would believe its store is guarded.
          reply({
            id: r.id,
            ok: false,
            error: 'this store has no token; connect without one, or serve the store with {token}',
            closing: true,
          });
          sock.end();
          return;
        }
        authed ||= typeof r.token === 'string' && timingSafeEqual(sha256(r.token), this.tokenHash);
        if (authed) reply({ id: r.id, ok: true });
        else {
          reply({ id: r.id, ok: false, error: 'the token does not match the store', closing: true });
          sock.end();
        }
        return;
      }
      if (!authed) {
        // A store with a token serves nothing to a client that has not presented it.
        reply({
          id: r.id,
          ok: false,
          error: 'this store needs a token; connect with {token}',
          closing: true,
        });
        sock.end();
        return;
      }
      if (typeof r.key !== 'string') {
        reply({ id: r.id, ok: false, error: 'a request needs a string key' });
        return;
      }
      switch (r.op) {
        case 'set':
          this.put(r.key!, r.value!);
          reply({ id: r.id, ok: true });
          break;
        case 'get': {
          const v = this.data.get(r.key!);
          if (v !== undefined) reply({ id: r.id, ok: true, value: v });
          else if (r.nowait) reply({ id: r.id, ok: true, absent: true });
          else {
            const list = this.waiters.get(r.key!) ?? [];
            list.push((value) => reply({ id: r.id, ok: true, value }));
            this.waiters.set(r.key!, list);
          }
          break;
        }
        case 'add': {
          const n = Number(this.data.get(r.key!) ?? '0') + (r.delta ?? 1);
          this.put(r.key!, String(n));
          if (typeof r.size === 'number' && this.data.get(`${r.key}/done`) === undefined) {
            // A barrier entry of a round not yet ended: its sizes compared, and its release, here
            // (one place, in order). A round whose members disagree on its size never releases;
            // each is told. A round that ended (released or refused) stays as it ended.
            const first = this.sizes.get(r.key!) ?? r.size;
            this.sizes.set(r.key!, first);
            if (first !== r.size) this.put(`${r.key}/done`, `${first} ${r.size}`);
            else if (n === r.size) this.put(`${r.key}/done`, '1');
          }
          reply({ id: r.id, ok: true, value: String(n), sized: typeof r.size === 'number' });
          break;
        }
        case 'join': {
          const g = this.groups.get(r.key!) ?? new Map();
          this.groups.set(r.key!, g);
          g.set(r.member!, { value: r.value!, sock });
          reply({ id: r.id, ok: true });
          this.notify(r.key!);
          break;
        }
        case 'watch': {
          const w = this.watchers.get(r.key!) ?? new Set();
          this.watchers.set(r.key!, w);
          w.add({ sock, id: r.id });
          reply({ id: r.id, ok: true, members: this.members(r.key!) });
          break;
        }
        case 'unwatch':
          for (const w of this.watchers.get(r.key!) ?? [])
            if (w.sock === sock && w.id === r.watch) this.watchers.get(r.key!)!.delete(w);
          reply({ id: r.id, ok: true });
          break;
      }
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      // A member's connection is its lease: gone, it leaves every group.
      for (const [name, g] of this.groups) {
        let changed = false;
        for (const [m, e] of g)
          if (e.sock === sock) {
            g.delete(m);
            changed = true;
          }
        if (changed) this.notify(name);
      }
      for (const w of this.watchers.values()) for (const e of w) if (e.sock === sock) w.delete(e);
    });
  }

  private put(key: string, value: string): void {
    this.data.set(key, value);
    for (const w of this.waiters.get(key) ?? []) w(value);
    this.waiters.delete(key);
  }

  private members(group: string): Record<string, string> {
    return Object.fromEntries(
      [...(this.groups.get(group) ?? new Map()).entries()].map(([m, e]) => [m, e.value]),
    );
  }

  private notify(group: string): void {
    const members = this.members(group);
    for (const w of this.watchers.get(group) ?? [])
      if (!w.sock.destroyed) w.sock.write(`${JSON.stringify({ event: w.id, members })}\n`);
  }
}

/**
 * A rendezvous over a small TCP key-value store hosted by one process. Every process (the host
 * included) talks to it through a client; a member's connection is its lease in a group.
 *
 * @example
 * ```ts
 * const store = rank === 0 ? await TcpStore.serve({ port: 29500 }) : await TcpStore.connect({ host: 'node0', port: 29500 });
 * await store.set(`addr/${rank}`, engine.address.toString());
 * const peer = NetAddr.parse(await store.get(`addr/${(rank + 1) % world}`));
 * await store.barrier('ready', world);
 * ```
 */
export class TcpStore implements Rendezvous {
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (m: Record<string, unknown>) => void; reject: (e: TrellisError) => void }
  >();
  private readonly events = new Map<number, (members: Record<string, string>) => void>();
  private closed = false;
  /** The connection to the store closed: later requests fail at once (nothing would answer them). */
  private lost = false;
  /** Why the store turned this client away (a token it needs, or a wrong one): later requests fail so. */
  private refused: string | undefined;
  private barriers = new Map<string, number>();
  /** What answered on the port sent a line that is not the store's. */
  private notStore: string | undefined;

  private constructor(
    private readonly sock: Socket,
    /** How long a request that does not wait for others (set, add, join, auth) waits for the store's answer. */
    private readonly answerMs: number,
    private readonly server?: StoreServer,
  ) {
    readLines(sock, (line) => {
      let m: Record<string, unknown> | null = null;
      try {
        m = JSON.parse(line) as Record<string, unknown> | null;
      } catch {
        // not JSON: handled below
      }
      if (typeof m !== 'object' || m === null) {
        // Not a store: whatever answered on this port is not spoken to again.
        this.notStore ??= `what answered is not a store (it sent ${JSON.stringify(line.slice(0, 40))})`;
        sock.destroy();
        return;
      }
      if (typeof m.event === 'number') {
        this.events.get(m.event)?.(m.members as Record<string, string>);
        return;
      }
      const p = this.pending.get(m.id as number);
      this.pending.delete(m.id as number);
      if (m.ok === false) {
        const why = `TcpStore: the store refused the request: ${String(m.error)}`;
        // A refusal that ends the connection (a token's): say so to every later request.
        if (m.closing === true) this.refused = why;
        p?.reject(new TrellisError('REMOTE_ACCESS', why));
      } else p?.resolve(m);
    });
    sock.on('close', () => {
      this.lost = true;
      for (const p of this.pending.values())
        p.reject(
          this.refused
            ? new TrellisError('REMOTE_ACCESS', this.refused)
            : new TrellisError(
                'PEER_LOST',
                `TcpStore: the connection to the store was lost${this.notStore ? ` (${this.notStore})` : ''}`,
              ),
        );
      this.pending.clear();
    });
    sock.on('error', () => {});
  }

  /**
   * Host the store on `port` (0: any; see {@link port}) and connect to it. With `token`, every
   * client must present the same shared secret before the store serves it (see docs/security.md:
   * the store hands out engine addresses and descriptors, which are capabilities).
   */
  static async serve(opts: { port?: number; host?: string; token?: string } = {}): Promise<TcpStore> {
    checkOptions('TcpStore.serve', opts, '{port?, host?, token?}');
    if (opts.host !== undefined && (typeof opts.host !== 'string' || opts.host.length === 0))
      throw new TrellisError('INVALID_ARGUMENT', 'TcpStore.serve: host must be a non-empty string');
    if (opts.token !== undefined && (typeof opts.token !== 'string' || opts.token.length === 0))
      throw new TrellisError('INVALID_ARGUMENT', 'TcpStore.serve: token must be a non-empty string');
    if (opts.port !== undefined && (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `TcpStore.serve: port must be an integer in 0..65535, got ${shown(opts.port)}`,
      );
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        // A port in use or not ours to take, a host not on this machine: the arguments' fault.
        const taken =
          e.code === 'EADDRINUSE' ||
          e.code === 'EACCES' ||
          e.code === 'EADDRNOTAVAIL' ||
          e.code === 'ENOTFOUND';
        reject(
          new TrellisError(
            taken ? 'INVALID_ARGUMENT' : 'UNSUPPORTED',
            `TcpStore.serve: cannot listen on ${opts.host ?? '0.0.0.0'}:${opts.port ?? 0}: ${e.message}${taken ? ' (give another port, or 0 for any free one, or a host address of this machine)' : ''}`,
          ),
        );
      });
      server.listen(opts.port ?? 0, opts.host ?? '0.0.0.0', () => resolve());
    });
    const store = new StoreServer(server, opts.token === undefined ? undefined : sha256(opts.token));
    const port = (server.address() as { port: number }).port;
    const sock = await dial('127.0.0.1', port, 5000);
    const s = new TcpStore(sock, 30_000, store);
    if (opts.token !== undefined) await s.hello('TcpStore.serve', opts.token, 10_000, 10_000);
    return s;
  }

  /**
   * Connect to a store hosted elsewhere, retrying until `timeoutMs` (default 30 s) while it
   * starts. Pass the store's `token` if it has one (checked within the same `timeoutMs`); a wrong
   * one fails with `REMOTE_ACCESS`. Later, a `set` or `join` the store does not answer within
   * `timeoutMs` fails `PEER_LOST` (the store may still apply it once it answers again).
   */
  static async connect(opts: {
    host: string;
    port: number;
    timeoutMs?: number;
    token?: string;
  }): Promise<TcpStore> {
    checkOptions('TcpStore.connect', opts, '{host, port, timeoutMs?, token?}');
    if (opts.token !== undefined && (typeof opts.token !== 'string' || opts.token.length === 0))
      throw new TrellisError('INVALID_ARGUMENT', 'TcpStore.connect: token must be a non-empty string');
    if (typeof opts.host !== 'string' || opts.host.length === 0)
      throw new TrellisError('INVALID_ARGUMENT', 'TcpStore.connect: host must be a non-empty string');
    if (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `TcpStore.connect: port must be an integer in 1..65535, got ${shown(opts.port)}`,
      );
    if (opts.timeoutMs === 0)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        "TcpStore.connect: timeoutMs must be > 0 (it bounds connecting and each later set's or join's answer), got 0",
      );
    checkTimeoutMs('TcpStore.connect', opts.timeoutMs, true);
    const limit = opts.timeoutMs ?? 30_000;
    const deadline = Date.now() + limit;
    // Connected once the store answered (the token's check, or a look at one key): a port that
    // takes the connection and drops it (a proxy before the store is up, a store restarting) is
    // dialled again until timeoutMs, as one that refuses it is.
    // Set once a connection was taken and dropped: '' or what answered instead of a store.
    let dropped: string | undefined;
    const droppedError = () =>
      new TrellisError(
        'TIMEOUT',
        `TcpStore.connect: no store at ${opts.host}:${opts.port} within ${limit} ms (the connection was taken and dropped before a store answered${dropped})`,
      );
    for (;;) {
      let sock: Socket;
      try {
        sock = await dial(opts.host, opts.port, limit, deadline);
      } catch (e) {
        throw dropped !== undefined ? droppedError() : e;
      }
      const s = new TcpStore(sock, limit);
      try {
        await s.hello(
          'TcpStore.connect',
          opts.token,
          Math.max(deadline - Date.now(), 1),
          limit,
          ` at ${opts.host}:${opts.port}`,
        );
        return s;
      } catch (e) {
        if (!(e instanceof TrellisError) || e.code !== 'PEER_LOST') throw e;
        dropped = s.notStore ? `: ${s.notStore}` : '';
        const left = deadline - Date.now();
        if (left <= 0) throw droppedError();
        await new Promise((r) => setTimeout(r, Math.min(100, left)));
      }
    }
  }

  /**
   * The store's first answer: the token's check (with `token`), else a look at one key.
   * `timeoutMs` is what is left of `limitMs`, the caller's whole deadline. A connection lost
   * before the answer rejects `PEER_LOST` as it is (the caller dials again); other failures close
   * this client and say what connecting met.
   */
  private async hello(
    op: string,
    token: string | undefined,
    timeoutMs: number,
    limitMs: number,
    /** Where the store is, for the timeout's message: ` at host:port`. */
    at = '',
  ): Promise<void> {
    try {
      if (token !== undefined) await this.request({ op: 'auth', key: '', token }, timeoutMs);
      else await this.request({ op: 'get', key: '__trellis/hello', nowait: true }, timeoutMs);
    } catch (e) {
      await this.close();
      const err = e as TrellisError;
      if (err.code === 'PEER_LOST') throw err;
      throw new TrellisError(
        err.code ?? 'INTERNAL',
        err.code === 'TIMEOUT'
          ? `${op}: the store${at} took the connection and did not answer ${token !== undefined ? "the token's check" : 'a first request'} within ${limitMs} ms`
          : token !== undefined
            ? `${op}: authenticating to the store: ${err.message}`
            : `${op}: ${err.message.replace(/^TcpStore: /, '')}`,
      );
    }
  }

  /** The port the store listens on (hosting side). */
  get port(): number | undefined {
    return this.server ? (this.server.server.address() as { port: number }).port : undefined;
  }

  /**
   * Send `r`; with `timeoutMs`, reject `TIMEOUT` if no answer comes by then. `answered`: a request
   * the store answers at once (set, add, join): bounded by connect's `timeoutMs` as well, past which
   * the store is taken as not answering (`PEER_LOST`). `label` names the call in those errors.
   */
  private request(
    r: Omit<Req, 'id'>,
    timeoutMs?: number,
    answered = false,
    label = `${r.op}('${r.key}')`,
  ): Promise<Record<string, unknown>> {
    if (this.closed) return Promise.reject(new TrellisError('CLOSED', 'TcpStore: closed'));
    if (this.refused) return Promise.reject(new TrellisError('REMOTE_ACCESS', this.refused));
    if (this.lost)
      return Promise.reject(
        new TrellisError(
          'PEER_LOST',
          `TcpStore.${r.op}('${r.key}'): the connection to the store was lost earlier; connect again (TcpStore.connect) once it is back`,
        ),
      );
    const id = this.nextId++;
    const ownFirst = timeoutMs !== undefined && (!answered || timeoutMs < this.answerMs);
    const limit = ownFirst ? timeoutMs : answered ? this.answerMs : undefined;
    return new Promise((resolve, reject) => {
      const timer =
        limit === undefined
          ? undefined
          : setTimeout(() => {
              this.pending.delete(id);
              reject(
                ownFirst
                  ? new TrellisError('TIMEOUT', `TcpStore.${label}: nothing within ${limit} ms`)
                  : new TrellisError(
                      'PEER_LOST',
                      `TcpStore.${label}: the store did not answer within ${limit} ms (connect's timeoutMs); it may still apply the request`,
                    ),
              );
            }, limit);
      this.pending.set(id, {
        resolve: (m) => {
          if (timer) clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          if (timer) clearTimeout(timer);
          reject(e);
        },
      });
      this.sock.write(`${JSON.stringify({ id, ...r })}\n`);
    });
  }

  async set(key: string, value: string): Promise<void> {
    checkName('TcpStore.set', 'key', key);
    checkValue('TcpStore.set', value);
    await this.request({ op: 'set', key, value }, undefined, true);
  }

  async get(key: string, opts: { timeoutMs?: number } = {}): Promise<string> {
    checkName('TcpStore.get', 'key', key);
    checkOptionalOptions('TcpStore.get', opts, '{timeoutMs?}');
    opts ??= {};
    checkTimeoutMs('TcpStore.get', opts.timeoutMs);
    if (opts.timeoutMs === 0) {
      // Look once: the value if it is there now, else TIMEOUT (no race with a 0 ms timer). The look
      // waits for the store's answer up to connect's timeoutMs (TIMEOUT too: a read changes nothing).
      let m: Record<string, unknown>;
      try {
        m = await this.request({ op: 'get', key, nowait: true }, this.answerMs);
      } catch (e) {
        if (e instanceof TrellisError && e.code === 'TIMEOUT')
          throw new TrellisError(
            'TIMEOUT',
            `TcpStore.get('${key}'): timeoutMs 0 looks once, and the store did not answer the look within ${this.answerMs} ms (connect's timeoutMs)`,
          );
        throw e;
      }
      if (m.absent === true)
        throw new TrellisError('TIMEOUT', `TcpStore.get('${key}'): not published (timeoutMs 0: looked once)`);
      return m.value as string;
    }
    return (await this.request({ op: 'get', key }, opts.timeoutMs)).value as string;
  }

  async barrier(name: string, size: number, opts: { timeoutMs?: number } = {}): Promise<void> {
    checkName('TcpStore.barrier', 'name', name);
    if (!Number.isInteger(size) || size < 1)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `TcpStore.barrier: size must be a positive integer, got ${shown(size)}`,
      );
    checkOptionalOptions('TcpStore.barrier', opts, '{timeoutMs?}');
    opts ??= {};
    checkTimeoutMs('TcpStore.barrier', opts.timeoutMs);
    // Rounds of one barrier name: the n-th call of this process joins round n.
    const round = (this.barriers.get(name) ?? 0) + 1;
    this.barriers.set(name, round);
    const key = `__barrier/${name}/${round}`;
    // The wait for the round's end goes to the store before this member is counted (one
    // connection, requests in order): the round cannot complete without the store holding every
    // member's wait, so a host that closes as soon as its own barrier released still answers them.
    const done = this.request({ op: 'get', key: `${key}/done` }, opts.timeoutMs);
    done.catch(() => {});
    // The entry and the release share the barrier's deadline.
    const end = opts.timeoutMs === undefined ? undefined : Date.now() + opts.timeoutMs;
    const left = () => (end === undefined ? undefined : Math.max(end - Date.now(), 0));
    let n: number | undefined;
    try {
      const label = `barrier('${name}')`;
      const entry = await this.request({ op: 'add', key, delta: 1, size }, left(), true, label);
      n = Number(entry.value);
      // A store of an earlier version does not release rounds itself (nor compare their sizes).
      if (entry.sized !== true && n === size)
        await this.request({ op: 'set', key: `${key}/done`, value: '1' }, left(), true, label);
      const released = (await done).value as string;
      if (released !== '1') {
        const [first, other] = released.split(' ');
        throw new TrellisError(
          'INVALID_ARGUMENT',
          `TcpStore.barrier('${name}'): round ${round}'s members passed different sizes (${first}, then ${other}; this one ${size}): the round does not release — every member of a barrier passes the same size`,
        );
      }
    } catch (e) {
      // Say which barrier, not the internal key it waits on.
      if (e instanceof TrellisError && e.code === 'TIMEOUT')
        throw new TrellisError(
          'TIMEOUT',
          `TcpStore.barrier('${name}'): round ${round} not complete within ${opts.timeoutMs} ms (${n === undefined ? "the store had not answered this member's entry" : `${n} of ${size} had entered when this one did`})`,
        );
      throw e;
    }
  }

  async join(
    group: string,
    member: string,
    value: string,
    onChange?: (members: Record<string, string>) => void,
  ): Promise<() => void> {
    checkName('TcpStore.join', 'group', group);
    checkJoin('TcpStore.join', member, value, onChange);
    await this.request({ op: 'join', key: group, member, value }, undefined, true);
    if (!onChange) return () => {};
    // The watch's request id names its events; listen before asking so none is missed.
    const id = this.nextId;
    let current: Record<string, string> | undefined;
    // A second join of a name with the same value changes nothing a watcher sees: not reported.
    const deliver = onChangeOnce(onChange);
    this.events.set(id, (m) => {
      current = m;
      deliver(m);
    });
    const r = await this.request({ op: 'watch', key: group }, undefined, true);
    if (current === undefined) deliver(r.members as Record<string, string>);
    return () => {
      this.events.delete(id);
      void this.request({ op: 'unwatch', key: group, watch: id }).catch(() => {});
    };
  }

  /**
   * Close this client (pending and later requests reject `CLOSED`). On the hosting side this also ends the
   * store: every other client's pending and later requests fail `PEER_LOST`.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Pending requests settle CLOSED now, not PEER_LOST when the connection then goes.
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(new TrellisError('CLOSED', 'TcpStore: closed'));
    this.sock.end();
    this.sock.destroy();
    // The host's close ends the store: every client's pending and later requests fail PEER_LOST.
    if (this.server) await this.server.close();
  }
}

/** Call `onLine` with each line `sock` reads. */
function readLines(sock: Socket, onLine: (line: string) => void): void {
  // readline re-emits its input's errors: the socket's are handled on the socket (and its
  // 'close'), so the interface's must not go unhandled (an ECONNRESET would crash the process).
  const lines = createInterface({ input: sock });
  lines.on('error', () => {});
  lines.on('line', onLine);
}

/** Dial `host:port` until `end` (default `timeoutMs` from now); `timeoutMs` names the bound in errors. */
async function dial(
  host: string,
  port: number,
  timeoutMs: number,
  end = Date.now() + timeoutMs,
): Promise<Socket> {
  let last = '';
  while (Date.now() < end) {
    try {
      // Each attempt within what is left: a host that drops the SYN does not hold it for minutes.
      return await new Promise<Socket>((resolve, reject) => {
        const timer = setTimeout(
          () => {
            s.destroy();
            reject(new Error('no answer to the connection'));
          },
          Math.max(end - Date.now(), 1),
        );
        const s = tcpConnect({ host, port }, () => {
          clearTimeout(timer);
          s.setNoDelay(true);
          resolve(s);
        });
        s.once('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
      });
    } catch (e) {
      last = e instanceof Error ? e.message : String(e);
      const left = end - Date.now();
      if (left > 0) await new Promise((r) => setTimeout(r, Math.min(100, left)));
    }
  }
  throw new TrellisError(
    'TIMEOUT',
    `TcpStore.connect: no store at ${host}:${port} within ${timeoutMs} ms${last ? ` (${last})` : ''}`,
  );
}

export { EtcdRendezvous } from './etcd.js';

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}
