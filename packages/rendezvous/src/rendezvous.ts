// The Rendezvous interface every implementation offers (TcpStore in index.ts, EtcdRendezvous in
// etcd.ts). Types only.

/** What every rendezvous implementation offers. */
export interface Rendezvous {
  /** Publish `value` under `key` (replacing any earlier value). */
  set(key: string, value: string): Promise<void>;
  /**
   * The value under `key`, waiting until someone publishes it, at most `timeoutMs` (rejects
   * `TIMEOUT`). `timeoutMs: 0` looks once: the value if it is there now, else `TIMEOUT`; the look
   * waits for the store's answer up to `connect`'s `timeoutMs` (`TIMEOUT` past it).
   */
  get(key: string, opts?: { timeoutMs?: number }): Promise<string>;
  /** Resolve once `size` members have entered barrier `name` (each member calls it once). */
  barrier(name: string, size: number, opts?: { timeoutMs?: number }): Promise<void>;
  /**
   * Join `group` as `member` with `value` (e.g. its NetAddr) for as long as this connection lives;
   * `onChange` receives the full membership on every change, starting with the current one; what
   * changes nothing a watcher sees (a second join of a name with the same value, a member put back
   * under a new lease after an etcd outage) is not reported.
   * Returns a function that stops watching (the member stays in the group until this connection
   * ends: close the rendezvous to leave). A member name is one member: a second join of the same
   * name, from any process, replaces its value and takes it over — the name then leaves the group
   * when the second joiner's connection (etcd: lease) ends, not the first's. Give each process a
   * name of its own (its rank). On etcd, a member whose lease was lost while etcd was out of reach
   * is put back under a new lease once etcd answers again (unless its name was taken over).
   */
  join(
    group: string,
    member: string,
    value: string,
    onChange?: (members: Record<string, string>) => void,
  ): Promise<() => void>;
  close(): Promise<void>;
}
