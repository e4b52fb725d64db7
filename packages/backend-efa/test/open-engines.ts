// Engines a test file opens through openEngine, closed after each test (or mid-test by
// closeOpenEngines). Imported by test files only: its afterEach joins the importing file's hooks.
import { afterEach } from 'vitest';
import { createEngine, type EfaEngine, type EfaEngineOptions } from '../src/index.js';

const open: EfaEngine[] = [];

/** Close every engine openEngine opened since the last close. */
export async function closeOpenEngines(): Promise<void> {
  await Promise.all(open.splice(0).map((e) => e.close()));
}

afterEach(closeOpenEngines);

/** createEngine, the engine closed after the test. */
export async function openEngine(opts: EfaEngineOptions): Promise<EfaEngine> {
  const e = await createEngine(opts);
  open.push(e);
  return e;
}
