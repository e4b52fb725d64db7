// A tcp peer in its own process that a test pauses (SIGSTOP), for writes the provider cannot
// complete meanwhile. Imported by test files only: its afterEach joins the importing file's hooks
// and resumes and stops every peer started since the last test.
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { MrDesc } from '@trellis/core';
import { PeerProcess } from '@trellis/core/conformance';
import { afterEach, expect } from 'vitest';
// Imported first, so that its afterEach (closing the test's engines) is registered before this
// file's and runs after it: vitest runs after-hooks in reverse. A paused peer is resumed before
// the engines that wrote to it close.
import './open-engines.js';

const engineModule = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const started: PeerProcess[] = [];

afterEach(async () => {
  for (const p of started.splice(0).reverse()) {
    p.pause(false);
    await p.stop();
  }
});

/**
 * A tcp peer in its own process with a remote region `kv` of `bytes`, and a descriptor of it that
 * goes through the provider (a same-host lane copy would need nothing from the target process), so
 * that writes larger than socket buffers hold cannot complete while it is paused. Resumed and
 * stopped after the test.
 */
export async function hungPeer(bytes: number): Promise<{ hung: PeerProcess; stalled: MrDesc }> {
  const hung = await PeerProcess.start(engineModule, { provider: 'tcp', nics: 1 });
  started.push(hung);
  const desc = await hung.call<{ desc: string }>('register', { name: 'kv', size: bytes, remote: true });
  const p = MrDesc.parse(desc.desc);
  return { hung, stalled: new MrDesc(p.owner, p.base, p.length, p.nics, p.staged, p.parts) };
}

/** The hung peer's region `kv` holds exactly `bytes`. */
export async function expectKv(hung: PeerProcess, bytes: Uint8Array): Promise<void> {
  const { sha256 } = await hung.call<{ sha256: string }>('sha256', { name: 'kv' });
  expect(sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
}
