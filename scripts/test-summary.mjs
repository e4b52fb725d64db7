// Sum the vitest JSON reports of every package into one closing line: "N passed, N failed, N skipped".
import { existsSync, readdirSync, readFileSync } from 'node:fs';

let passed = 0;
let failed = 0;
let skipped = 0;
const rows = [];
for (const dir of readdirSync('packages')) {
  const f = `packages/${dir}/test-results.json`;
  if (!existsSync(f)) continue;
  const r = JSON.parse(readFileSync(f, 'utf8'));
  const skip = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  rows.push(
    `  ${dir.padEnd(16)} ${String(r.numPassedTests).padStart(5)} passed ${String(r.numFailedTests).padStart(4)} failed ${String(skip).padStart(4)} skipped`,
  );
  passed += r.numPassedTests;
  failed += r.numFailedTests;
  skipped += skip;
}
if (rows.length === 0) {
  console.log('no test reports found');
  process.exit(1);
}
console.log(rows.join('\n'));
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
