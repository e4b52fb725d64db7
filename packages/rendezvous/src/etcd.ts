// EtcdRendezvous: the Rendezvous over etcd v3 (the etcd3 client), with members on a lease so a dead
// process leaves its groups when the lease expires.
import { randomUUID } from 'node:crypto';
import { TrellisError } from '@trellis/core';
import { ExponentialBackoff, type IBackoff, noop } from 'cockatiel';
import { Etcd3, EtcdLeaseInvalidError, type Lease, type WatchBuilder, type Watcher } from 'etcd3';
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

/**
 * The rendezvous over etcd (v3 API, through the `etcd3` client): keys live under `prefix`; group
 * members are keys on a lease kept alive by this process, so a member whose process dies leaves
 * when its lease expires (`leaseTtlS`).
 *
 * @example
 * ```ts
 * const rdv = await EtcdRendezvous.connect({ hosts: 'http://etcd0:2379', prefix: 'jobs/42/' });
 * await rdv.set(`addr/${rank}`, engine.address.toString());
 * ```
 */
export class EtcdRendezvous implements Rendezvous {
  private readonly watchers = new Set<Watcher>();
  private readonly rounds = new Map<string, number>();
  /**
   * This process's barrier entries: close() deletes those of rounds that released (by then —
   * also after this member's own call timed out), and a round's marker with its last entry.
   */
  private readonly entries: Array<{ prefix: string; entry: string; done: string }> = [];
  private closed = false;

  private constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
    private readonly leaseTtlS: number,
    /** How long a `set` or `join` waits for etcd to answer (connect's `timeoutMs`). */
    private readonly answerMs: number,
  ) {}

  /**
   * Connect, and check the cluster answers within `timeoutMs` (default 10 s). The same bound holds
   * for each later `set` and `join`: an etcd that does not answer one within it fails the call
   * `PEER_LOST` (`get` and `barrier` take their own `timeoutMs`).
   */
  static async connect(opts: {
    hosts: string | string[];
    prefix?: string;
    leaseTtlS?: number;
    timeoutMs?: number;
  }): Promise<EtcdRendezvous> {
    checkOptions('EtcdRendezvous.connect', opts, '{hosts, prefix?, leaseTtlS?, timeoutMs?}');
    const hosts = opts.hosts;
    const isUrl = (h: unknown) => {
      if (typeof h !== 'string') return false;
      try {
        const u = new URL(h);
        return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname.length > 0;
      } catch {
        return false;
      }
    };
    if (!isUrl(hosts) && !(Array.isArray(hosts) && hosts.length > 0 && hosts.every(isUrl)))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `EtcdRendezvous.connect: hosts must be an http:// or https:// URL or a non-empty array of them (e.g. 'http://etcd0:2379'), got ${JSON.stringify(hosts)}`,
      );
    if (opts.prefix !== undefined && typeof opts.prefix !== 'string')
      throw new TrellisError('INVALID_ARGUMENT', 'EtcdRendezvous.connect: prefix must be a string');
    if (opts.leaseTtlS !== undefined && (!Number.isInteger(opts.leaseTtlS) || opts.leaseTtlS < 1))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `EtcdRendezvous.connect: leaseTtlS must be an integer number of seconds >= 1, got ${shown(opts.leaseTtlS)}`,
      );
    if (
      opts.timeoutMs !== undefined &&
      (typeof opts.timeoutMs !== 'number' || !Number.isFinite(opts.timeoutMs) || opts.timeoutMs <= 0)
    )
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `EtcdRendezvous.connect: timeoutMs must be a finite number > 0, got ${shown(opts.timeoutMs)}`,
      );
    const limit = opts.timeoutMs ?? 10_000;
    const client = new Etcd3({
      hosts: opts.hosts,
      dialTimeout: limit,
      // An HTTP/2 ping every 10 s while calls are open (etcd refuses pings more often than every
      // 5 s), the connection given up after 3 s without an answer: an etcd that hangs, or a host
      // gone without a reset, fails what was open on it — watches redial, and after close() no
      // call is left holding the process open.
      grpcOptions: { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 3_000 },
      faultHandling: {
        // No per-host circuit breaker: the client's default one stopped every call for 5 s after
        // three failures (one oversized value was enough); each call here has its own deadline.
        host: () => noop,
        // Watches redial a lost etcd within a second (the default backs off to 30 s, and its
        // timer kept a closed client's process alive that long).
        // (etcd3 types this slot as a backoff; it takes the factory, as its own default is.)
        watchBackoff: new ExponentialBackoff({ maxDelay: 1000 }) as unknown as IBackoff<unknown>,
      },
    });
    // dialTimeout bounds the connection only: an etcd that accepts it and then does not answer
    // (stopped, overloaded) is bounded here.
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        client.maintenance.status(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${limit} ms`)), limit);
        }),
      ]);
    } catch (e) {
      client.close();
      throw new TrellisError(
        'PEER_LOST',
        `EtcdRendezvous.connect: etcd at ${String(opts.hosts)} does not answer (${e instanceof Error ? e.message : String(e)})`,
        {
          cause: e,
        },
      );
    } finally {
      clearTimeout(timer);
    }
    return new EtcdRendezvous(
      client,
      opts.prefix ?? 'trellis/',
      opts.leaseTtlS ?? 10,
      opts.timeoutMs ?? 10_000,
    );
  }

  private k(key: string): string {
    if (typeof key !== 'string' || key.length === 0 || key.length > 1024)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        'EtcdRendezvous: a key is a non-empty string of at most 1024 characters',
      );
    return this.prefix + key;
  }

  /** Requests waiting on etcd: rejected `CLOSED` by {@link close}. */
  private readonly pending = new Set<(e: TrellisError) => void>();

  private throwIfClosed(op: string): void {
    if (this.closed) throw new TrellisError('CLOSED', `EtcdRendezvous.${op}: closed`);
  }

  /**
   * `work` bounded by `timeoutMs` from the call (watch, reads and wait together: an etcd that stops
   * answering is a TIMEOUT too, or `code` where given) and by close() (CLOSED).
   */
  private bounded<T>(
    op: string,
    what: string | (() => string),
    timeoutMs: number | undefined,
    work: Promise<T>,
    code: 'TIMEOUT' | 'PEER_LOST' = 'TIMEOUT',
    /** The code when etcd fails the work (refused, unavailable): `PEER_LOST` unless given. */
    failCode: 'TIMEOUT' | 'PEER_LOST' = 'PEER_LOST',
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const off = () => {
        if (timer) clearTimeout(timer);
        this.pending.delete(done);
      };
      const done = (e: TrellisError) => {
        off();
        reject(e);
      };
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(
              () =>
                done(
                  new TrellisError(
                    code,
                    `EtcdRendezvous.${op}: ${typeof what === 'string' ? what : what()} within ${timeoutMs} ms`,
                  ),
                ),
              timeoutMs,
            );
      this.pending.add(done);
      work.then(
        (v) => {
          off();
          resolve(v);
        },
        (e: unknown) =>
          done(
            e instanceof TrellisError
              ? e
              : !this.closed && /request is too large|larger than max/.test(String(e))
                ? new TrellisError(
                    'INVALID_ARGUMENT',
                    `EtcdRendezvous.${op}: etcd refused the request as too large (its --max-request-bytes, 1.5 MiB by default): ${e instanceof Error ? e.message : String(e)}`,
                    { cause: e },
                  )
                : new TrellisError(
                    this.closed ? 'CLOSED' : failCode,
                    `EtcdRendezvous.${op}: ${this.closed ? 'closed' : `${failCode === 'TIMEOUT' && typeof what === 'string' ? `${what}: ` : ''}etcd failed (${e instanceof Error ? e.message : String(e)})`}`,
                    { cause: e },
                  ),
          ),
      );
    });
  }

  /**
   * A watch, tracked for close() from the moment it exists (not only once etcd confirmed it: an
   * etcd that is down never does), and its first confirmation. `lost` tells whether the watch's
   * stream to etcd broke since then and is not back.
   */
  private openWatch(b: WatchBuilder): {
    w: Watcher;
    connected: Promise<Watcher>;
    lost: () => string | undefined;
  } {
    const w = b.watcher();
    this.watchers.add(w);
    let lost: string | undefined;
    const connected = new Promise<Watcher>((resolve, reject) => {
      w.once('connected', () => resolve(w));
      w.once('error', reject);
    });
    connected.catch(() => {});
    w.on('error', () => {}); // a later stream error: the watch redials (see watchBackoff)
    w.on('disconnected', (e: unknown) => {
      lost = e instanceof Error ? e.message : String(e);
    });
    w.on('connected', () => {
      lost = undefined;
    });
    return { w, connected, lost: () => lost };
  }

  private dropWatch(w: Watcher): void {
    this.watchers.delete(w);
    void w.cancel().catch(() => {});
  }

  /**
   * Open a watch, run `body` with it, all {@link bounded}; the watch goes as soon as the call
   * settles. `what(lost)` words a timeout (`lost`: why the watch's stream to etcd broke, if it is
   * down at that moment).
   */
  private async watched<T>(
    op: string,
    what: (lost: string | undefined) => string,
    timeoutMs: number | undefined,
    builder: WatchBuilder,
    body: (w: Watcher) => Promise<T>,
    /** Bounds the watch's first confirmation by connect's timeoutMs (PEER_LOST), as a set is. */
    answerFirst = false,
  ): Promise<T> {
    const { w, connected, lost } = this.openWatch(builder);
    const work = (async () => {
      await (answerFirst ? this.answered(op, connected) : connected);
      return await body(w);
    })();
    try {
      return await this.bounded(op, () => what(lost()), timeoutMs, work);
    } finally {
      work.catch(() => {});
      this.dropWatch(w);
    }
  }

  async set(key: string, value: string): Promise<void> {
    this.throwIfClosed('set');
    checkName('EtcdRendezvous.set', 'key', key);
    const k = this.k(key);
    checkValue('EtcdRendezvous.set', value);
    await this.answered(`set('${key}')`, this.client.put(k).value(value).exec());
  }

  /** A call to etcd that must answer within connect's `timeoutMs` (else `PEER_LOST`). */
  private answered<T>(op: string, work: Promise<T>): Promise<T> {
    return this.bounded(op, `etcd did not answer (connect's timeoutMs)`, this.answerMs, work, 'PEER_LOST');
  }

  async get(key: string, opts: { timeoutMs?: number } = {}): Promise<string> {
    checkName('EtcdRendezvous.get', 'key', key);
    const k = this.k(key);
    checkOptionalOptions('EtcdRendezvous.get', opts, '{timeoutMs?}');
    opts ??= {};
    checkTimeoutMs('EtcdRendezvous.get', opts.timeoutMs);
    this.throwIfClosed('get');
    if (opts.timeoutMs === 0) {
      // Look once: the value if it is there now, else TIMEOUT (no race with a 0 ms timer). The look
      // waits for etcd's answer up to connect's timeoutMs (TIMEOUT too: a read changes nothing).
      const now = await this.bounded(
        `get('${key}')`,
        `timeoutMs 0 looks once, and etcd did not answer the look (connect's timeoutMs)`,
        this.answerMs,
        this.client.get(k).string(),
        'TIMEOUT',
        'TIMEOUT',
      );
      if (now === null)
        throw new TrellisError(
          'TIMEOUT',
          `EtcdRendezvous.get('${key}'): not published (timeoutMs 0: looked once)`,
        );
      return now;
    }
    // Watch first, then read: a put between the two is seen by one or the other. A timeout says
    // which it was: the key not there yet, or etcd not answering the read.
    let read = false;
    return this.watched(
      `get('${key}')`,
      (lost) =>
        !read
          ? 'etcd did not answer'
          : lost === undefined
            ? 'not published'
            : `not published, and etcd stopped answering (its watch stream broke: ${lost})`,
      opts.timeoutMs,
      this.client.watch().key(k),
      async (w) => {
        const now = await this.client.get(k).string();
        read = true;
        if (now !== null) return now;
        return await new Promise<string>((resolve) => w.on('put', (kv) => resolve(kv.value.toString())));
      },
    );
  }

  async barrier(name: string, size: number, opts: { timeoutMs?: number } = {}): Promise<void> {
    if (!Number.isInteger(size) || size < 1)
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `EtcdRendezvous.barrier: size must be a positive integer, got ${shown(size)}`,
      );
    checkName('EtcdRendezvous.barrier', 'name', name);
    checkOptionalOptions('EtcdRendezvous.barrier', opts, '{timeoutMs?}');
    opts ??= {};
    checkTimeoutMs('EtcdRendezvous.barrier', opts.timeoutMs);
    this.throwIfClosed('barrier');
    const round = (this.rounds.get(name) ?? 0) + 1;
    this.rounds.set(name, round);
    const p = this.k(`__barrier/${name}/${round}/`);
    // Members' entries are `<p><uuid>` = their size; `<p>=done` marks the round released (written
    // by whoever sees it complete, before it resolves), so a member closing afterwards may delete
    // its entry without a slower member of the round missing the release.
    const doneKey = `${p}=done`;
    const mine = p + randomUUID();
    let entered = false;
    await this.watched(
      `barrier('${name}')`,
      (lost) =>
        !entered
          ? "etcd did not answer this member's entry"
          : lost === undefined
            ? `not all ${size} members`
            : `not all ${size} members, and etcd stopped answering (its watch stream broke: ${lost})`,
      opts.timeoutMs,
      this.client.watch().prefix(p),
      (w) =>
        new Promise<void>((resolve, reject) => {
          let settled = false;
          const end = (e?: TrellisError) => {
            if (settled) return;
            settled = true;
            if (e) return reject(e);
            resolve();
          };
          // The round as etcd has it now: released, sizes that differ (refused: the round never
          // releases), or complete (released here).
          const check = async () => {
            const all = await this.client.getAll().prefix(p).strings();
            if (all[doneKey] !== undefined) return end();
            const sizes = Object.entries(all).map(([, v]) => v);
            const other = sizes.find((v) => v !== String(size));
            if (other !== undefined)
              return end(
                new TrellisError(
                  'INVALID_ARGUMENT',
                  `EtcdRendezvous.barrier('${name}'): round ${round}'s members passed different sizes (this one ${size}, another ${other}): the round does not release — every member of a barrier passes the same size`,
                ),
              );
            if (sizes.length >= size) {
              await this.client.put(doneKey).value('1').exec();
              end();
            }
          };
          // Listening before entering: no put of the round is missed while a check is out.
          w.on('put', (kv) => {
            if (kv.key.toString() === doneKey) end();
            else void check().catch(() => {});
          });
          const entry = this.client.put(mine).value(String(size)).exec();
          (opts.timeoutMs === undefined ? this.answered(`barrier('${name}')`, entry) : entry)
            .then(() => {
              entered = true;
              this.entries.push({ prefix: p, entry: mine, done: doneKey });
              return check();
            })
            .catch((e: unknown) =>
              end(
                e instanceof TrellisError
                  ? e
                  : new TrellisError('PEER_LOST', `EtcdRendezvous.barrier('${name}'): ${String(e)}`),
              ),
            );
        }),
      // Without a timeoutMs of its own, entering the round (the watch, the entry) is bounded by
      // connect's, as a set is (PEER_LOST); waiting for the others is not.
      opts.timeoutMs === undefined,
    );
  }

  async join(
    group: string,
    member: string,
    value: string,
    onChange?: (members: Record<string, string>) => void,
  ): Promise<() => void> {
    checkName('EtcdRendezvous.join', 'group', group);
    checkJoin('EtcdRendezvous.join', member, value, onChange);
    this.throwIfClosed('join');
    const p = this.k(`__group/${group}/`);
    const op = `join('${group}')`;
    const m: Member = {
      key: p + member,
      value,
      owner: this.k(`__owner/${group}/${member}`),
      joinId: randomUUID(),
      lease: this.client.lease(this.leaseTtlS, { autoKeepAlive: false }),
      lastRenewed: Date.now(),
    };
    m.lease.on('lost', () => {}); // this class keeps it alive and tells when it is lost
    // From now on close() revokes its lease (a join that fails or is cut short by close too).
    this.members.add(m);
    const id = await this.answered(op, m.lease.grant());
    // The member on its lease, and who holds the name now (no lease: it outlives an outage, so a
    // joiner whose lease was lost can tell whether the name was taken over meanwhile).
    await this.answered(
      op,
      this.client
        .if(m.owner, 'Version', '>', -1)
        .then(this.client.put(m.key).value(value).lease(id), this.client.put(m.owner).value(m.joinId))
        .commit(),
    );
    this.keepAlive(m);
    if (!onChange) return () => {};
    const members = async () => {
      const all = await this.client.getAll().prefix(p).strings();
      return Object.fromEntries(Object.entries(all).map(([k, v]) => [k.slice(p.length), v]));
    };
    const { w, connected } = this.openWatch(this.client.watch().prefix(p));
    let stopped = false;
    const stop = () => {
      stopped = true;
      this.dropWatch(w);
    };
    try {
      await this.answered(op, connected);
    } catch (e) {
      stop();
      throw e;
    }
    // Never after stop() or close(): a read that was on its way then is dropped. Nor a read older
    // than one already delivered (reads may answer out of order), nor the membership delivered
    // last again (a member put back under a new lease after an outage is a put, not a change).
    const deliver = onChangeOnce(onChange);
    let asked = 0;
    let delivered = 0;
    const read = (n: number, all: Record<string, string>) => {
      if (stopped || this.closed || n < delivered) return;
      delivered = n;
      deliver(all);
    };
    const refresh = () => {
      const n = ++asked;
      void members().then(
        (all) => read(n, all),
        () => {},
      );
    };
    w.on('put', refresh);
    w.on('delete', refresh);
    try {
      const n = ++asked;
      read(n, await this.answered(op, members()));
    } catch (e) {
      stop();
      throw e;
    }
    return stop;
  }

  /** Members this process joined, kept alive until close() revokes their leases. */
  private readonly members = new Set<Member>();

  /**
   * Keep a member's lease alive: one renewal every third of its TTL, each bounded (a renewal etcd
   * does not answer is given up, its stream cancelled, and tried again within half a second). The
   * lease is lost when etcd says it expired, or when no renewal was answered for a whole TTL (etcd
   * down, or this process cut off from it): the member is then put back (see {@link rejoin}).
   */
  private keepAlive(m: Member): void {
    const ttlMs = 1000 * this.leaseTtlS;
    const lease = m.lease;
    const beat = async (): Promise<void> => {
      m.timer = undefined;
      if (this.closed || m.lease !== lease) return;
      let renewed = false;
      let lost = false;
      try {
        await lease.keepaliveOnce({
          deadline: Date.now() + Math.min(this.answerMs, Math.max(500, ttlMs / 2)),
        });
        m.lastRenewed = Date.now();
        renewed = true;
      } catch (e) {
        lost = e instanceof EtcdLeaseInvalidError || Date.now() - m.lastRenewed >= ttlMs;
      }
      if (this.closed || m.lease !== lease) return;
      if (lost) {
        void this.rejoin(m);
        return;
      }
      m.timer = setTimeout(() => void beat(), renewed ? ttlMs / 3 : Math.min(500, ttlMs / 3));
    };
    m.timer = setTimeout(() => void beat(), ttlMs / 3);
  }

  /**
   * A member whose lease was lost is put back under a new lease, retried until etcd answers or
   * close() — over the lost lease's key (etcd keeps leases alive across its own restart, so the
   * key may still be there on it) or where the key is gone, and only while the name is still this
   * join's (never over another joiner's take-over). Watchers may see it leave and come back.
   */
  private async rejoin(m: Member): Promise<void> {
    const lost = m.lease;
    // No revoke: the member's key may still be on it, and is moved below (close() meanwhile
    // revokes it, which takes such a key with it).
    lost.release();
    const lostId = await lost.grant().catch(() => undefined);
    for (let delay = 100; !this.closed; delay = Math.min(2 * delay, 1000 * this.leaseTtlS)) {
      const lease = this.client.lease(this.leaseTtlS, { autoKeepAlive: false });
      lease.on('lost', () => {});
      try {
        const id = await this.answered('join (again)', lease.grant());
        const put = () => this.client.put(m.key).value(m.value).lease(id);
        const ours = () => this.client.if(m.owner, 'Value', '==', m.joinId);
        let done = false;
        if (lostId !== undefined)
          done = (
            await this.answered('join (again)', ours().and(m.key, 'Lease', '==', lostId).then(put()).commit())
          ).succeeded;
        if (!done)
          done = (
            await this.answered('join (again)', ours().and(m.key, 'Create', '==', 0).then(put()).commit())
          ).succeeded;
        if (!done || this.closed) {
          // Another joiner holds the name now: it is theirs (join's take-over rule). Or closed.
          void lease.revoke().catch(() => {});
          if (!done) this.members.delete(m);
          return;
        }
        m.lease = lease;
        m.lastRenewed = Date.now();
        this.keepAlive(m);
        return;
      } catch {
        void lease.revoke().catch(() => {});
        if (this.closed) return;
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const reject of [...this.pending]) reject(new TrellisError('CLOSED', 'EtcdRendezvous: closed'));
    // Watches cancelled and leases revoked (members leave at once rather than at their lease's
    // expiry) — as far as etcd answers within connect's timeoutMs: close() does not wait longer.
    for (const m of this.members) clearTimeout(m.timer);
    const tidy = Promise.allSettled([
      ...[...this.watchers].map((w) => w.cancel()),
      ...[...this.members].map((m) => m.lease.revoke()),
      // The names this process still holds: their holder's record goes with them.
      ...[...this.members].map((m) =>
        this.client.if(m.owner, 'Value', '==', m.joinId).then(this.client.delete().key(m.owner)).commit(),
      ),
      // Its entries of barrier rounds that released, and a round's marker with its last entry (of
      // two members closing at once, the later look sees both entries gone). Rounds that did not
      // release keep their entries: an entry stays counted.
      ...this.entries.map(async (b) => {
        if ((await this.client.get(b.done).string()) === null) return;
        await this.client.delete().key(b.entry).exec();
        const left = await this.client.getAll().prefix(b.prefix).keys();
        if (left.every((k) => k === b.done)) await this.client.delete().key(b.done).exec();
      }),
    ]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([tidy, new Promise((r) => (timer = setTimeout(r, this.answerMs)))]);
    clearTimeout(timer);
    this.client.close();
  }
}

/** A member this process joined (see EtcdRendezvous.join). */
interface Member {
  /** Its key in the group. */
  readonly key: string;
  readonly value: string;
  /** The key naming which join holds the name now (no lease). */
  readonly owner: string;
  /** This join's id, the owner key's value while the name is this join's. */
  readonly joinId: string;
  /** The lease its key is on now (a new one after a loss). */
  lease: Lease;
  /** When etcd last answered a renewal (or the lease was granted). */
  lastRenewed: number;
  timer?: ReturnType<typeof setTimeout>;
}
