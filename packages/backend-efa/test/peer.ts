import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { EfaEngineOptions } from '../src/index.js';

const fixture = fileURLToPath(new URL('./fixtures/peer.mjs', import.meta.url));

/** A Trellis engine in another OS process, driven over a pipe. */
export class PeerProcess {
  readonly child: ChildProcess;
  address = '';
  pid = 0;
  private nextId = 1;
  private readonly waiting = new Map<
    number,
    { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }
  >();
  private readonly ready: Promise<void>;
  exited: Promise<number | null>;

  constructor(opts: EfaEngineOptions) {
    this.child = spawn(process.execPath, [fixture, JSON.stringify(opts)], {
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
      else w.reject(Object.assign(new Error(m.message), { code: m.code }));
    });
    this.child.on('exit', () => {
      for (const w of this.waiting.values()) w.reject(new Error('peer process exited'));
      this.waiting.clear();
    });
  }

  static async start(opts: EfaEngineOptions): Promise<PeerProcess> {
    const p = new PeerProcess(opts);
    await Promise.race([
      p.ready,
      p.exited.then((c) => Promise.reject(new Error(`peer exited with ${c} before it was ready`))),
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

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    await this.call('exit').catch(() => {});
    await this.exited;
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}
