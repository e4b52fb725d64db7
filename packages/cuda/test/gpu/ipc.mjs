// GPU: one process allocates and fills device memory and exports its CUDA IPC handle; a second
// process imports it and checks every byte. Prints one JSON line.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { DeviceBuffer, patternByte } from '../../dist/index.js';

const [, , role, handle, lengthArg] = process.argv;
if (role === 'import') {
  const length = Number(lengthArg);
  const b = DeviceBuffer.import(handle, { length });
  const host = b.read(new Uint8Array(length));
  let bad = 0;
  for (let i = 0; i < length; i++) if (host[i] !== patternByte(i, 77)) bad++;
  b.free();
  process.stdout.write(JSON.stringify({ imported: length, bad }));
} else {
  const length = 64 << 20;
  const b = DeviceBuffer.alloc(length);
  b.fillPattern(77);
  const r = spawnSync(
    process.execPath,
    [fileURLToPath(import.meta.url), 'import', b.ipcHandle(), String(length)],
    { encoding: 'utf8' },
  );
  b.free();
  const child = r.stdout ? JSON.parse(r.stdout) : null;
  console.log(JSON.stringify({ test: 'ipc', child, stderr: r.stderr.slice(-500) }));
  // Wrong or missing bytes fail the check (device-gpu-tests.sh counts exit codes).
  if (child?.bad !== 0 || child.imported !== length) process.exit(1);
}
