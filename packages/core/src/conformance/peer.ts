// PeerProcess: a Trellis engine in a child process (peer-main.ts), driven over a pipe; kill() and
// pause() make the faults the cross-process suite needs.
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { TrellisError, type TrellisErrorCode } from '../errors.js';

const main = fileURLToPath(new URL('./peer-main.js', import.meta.url));

/**
 * A Trellis engine in another OS process, created by `createEngine(options)` of a backend module
 * and driven over a pipe: addresses and descriptors travel as text, as between real hosts.
 */
export class PeerProcess {
  readonly child: ChildProcess;
  /** The peer engine's address (`NetAddr` text). */
  address = '';
  pid = 0;
  readonly exited: Promise<number | null>;
  private nextId = 1;
  private readonly waiting = new Map<
    number,
    { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }
  >();
  private readonly ready: Promise<void>;

  private constructor(engineModule: string, options: unknown) {
    this.child = spawn(process.execPath, [main, engineModule, JSON.stringify(options)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.exited = new Promise((r) => this.child.on('exit', (code) => r(code)));
    // EPIPE: the child died first; its calls reject as it exits.
    this.child.stdin!.on('error', () => {});
    let onReady!: () => void;
    let onFailed!: (e: Error) => void;
    this.ready = new Promise((r, j) => {
      onReady = r;
      onFailed = j;
    });
    this.ready.catch(() => {});
    // After its stdout has ended: a startup failure it reported there has rejected `ready` first.
    this.child.on('close', (code) =>
      onFailed(new Error(`the peer process exited with ${code} before it was ready`)),
    );
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      const m = JSON.parse(line) as {
        id?: number;
        ok?: boolean;
        ready?: boolean;
        address?: string;
        pid?: number;
        message?: string;
        code?: string;
        failed?: boolean;
      };
      if (m.failed) {
        onFailed(new TrellisError(m.code as TrellisErrorCode, `peer: ${m.message}`));
        return;
      }
      if (m.ready) {
        this.address = m.address!;
        this.pid = m.pid!;
        onReady();
        return;
      }
      const w = this.waiting.get(m.id!);
      if (!w) return;
      this.waiting.delete(m.id!);
      if (m.ok) w.resolve(m as Record<string, unknown>);
      else w.reject(Object.assign(new Error(`peer: ${m.code}: ${m.message}`), { code: m.code }));
    });
    this.child.on('exit', () => {
      for (const w of this.waiting.values()) w.reject(new Error('the peer process exited'));
      this.waiting.clear();
    });
  }

  /**
   * Start a peer whose engine is `(await import(engineModule)).createEngine(options)`. Rejects
   * with the peer's own error (its code, the message prefixed `peer: `) when that fails.
   */
  static async start(engineModule: string, options: unknown): Promise<PeerProcess> {
    const p = new PeerProcess(engineModule, options);
    await p.ready;
    return p;
  }

  call<T = Record<string, unknown>>(cmd: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: Record<string, unknown>) => void, reject });
      this.child.stdin!.write(`${JSON.stringify({ id, cmd, ...args })}\n`);
    });
  }

  /** Close the peer's engine and wait for the process to exit. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    await this.call('exit').catch(() => {});
    await this.exited;
  }

  /** SIGKILL: the peer dies without closing anything. */
  kill(): void {
    this.child.kill('SIGKILL');
  }

  /** SIGSTOP (`true`) or SIGCONT (`false`): the peer hangs, or resumes where it stopped. */
  pause(stopped: boolean): void {
    this.child.kill(stopped ? 'SIGSTOP' : 'SIGCONT');
  }
}

/**
 * A Node script in another OS process that speaks JSON lines: send it objects on stdin, wait for
 * the first line on stdout matching a predicate. For cross-process tests of the systems on top
 * (kvstream, weightsync, moe), whose peers are their own scripts.
 */
export class LineProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  private readonly lines: string[] = [];
  private wake: Array<() => void> = [];

  constructor(script: string, args: readonly string[] = []) {
    this.child = spawn(process.execPath, [script, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.child.stdin!.on('error', () => {}); // EPIPE: it died first
    createInterface({ input: this.child.stdout! }).on('line', (l) => {
      this.lines.push(l);
      for (const w of this.wake.splice(0)) w();
    });
    this.exited = new Promise((r) => this.child.on('exit', () => r()));
  }

  send(o: object): void {
    this.child.stdin!.write(`${JSON.stringify(o)}\n`);
  }

  /** The first line (seen or to come) whose JSON matches `pred`, taken out of the queue. */
  async next(
    pred: (m: Record<string, unknown>) => boolean,
    timeoutMs = 60_000,
  ): Promise<Record<string, unknown>> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const i = this.lines.findIndex((l) => pred(JSON.parse(l) as Record<string, unknown>));
      if (i >= 0) return JSON.parse(this.lines.splice(i, 1)[0]!) as Record<string, unknown>;
      if (Date.now() > end)
        throw new Error(
          `LineProcess: no matching line within ${timeoutMs} ms; last lines: ${this.lines.slice(-5).join(' | ')}`,
        );
      await new Promise<void>((r) => {
        this.wake.push(r);
        setTimeout(r, 100);
      });
    }
  }

  /** Ask it to exit (`{exit: true}`), then kill it if it has not within 5 s. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.send({ exit: true });
      await Promise.race([this.exited, new Promise((r) => setTimeout(r, 5000))]);
      this.child.kill('SIGKILL');
    }
    await this.exited;
  }
}
