import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

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
    let onReady!: () => void;
    this.ready = new Promise((r) => {
      onReady = r;
    });
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      const m = JSON.parse(line) as {
        id?: number;
        ok?: boolean;
        ready?: boolean;
        address?: string;
        pid?: number;
        message?: string;
        code?: string;
      };
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

  /** Start a peer whose engine is `(await import(engineModule)).createEngine(options)`. */
  static async start(engineModule: string, options: unknown): Promise<PeerProcess> {
    const p = new PeerProcess(engineModule, options);
    await Promise.race([
      p.ready,
      p.exited.then((c) =>
        Promise.reject(new Error(`the peer process exited with ${c} before it was ready`)),
      ),
    ]);
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
}
