// Node side of torch_export.py: import the tensor and check it holds (i + 1024) * 7 + 3 as int32.
import { DeviceBuffer } from '../../dist/index.js';

const [, , handle, offset, length] = process.argv;
const b = DeviceBuffer.import(handle, { offset: Number(offset), length: Number(length) });
const host = b.read(new Uint8Array(Number(length)));
const v = new Int32Array(host.buffer);
let bad = 0;
for (let i = 0; i < v.length; i++) if (v[i] !== (i + 1024) * 7 + 3) bad++;
b.free();
process.stdout.write(JSON.stringify({ values: v.length, bad }));
