// Writes src/kit/native/include/trellis/format.hpp from the built src/kit/format.ts (run `pnpm run
// gen:format`, which builds first). test/13-pack-format.test.ts fails while the two differ.
import { writeFileSync } from 'node:fs';
import { formatHeader } from '../dist/kit/format.js';

const out = new URL('../src/kit/native/include/trellis/format.hpp', import.meta.url);
writeFileSync(out, formatHeader());
console.log(`wrote ${out.pathname}`);
